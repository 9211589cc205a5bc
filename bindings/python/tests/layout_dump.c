/* Prints the size and field offsets of the public parameter structs, so the
 * Python tests can check that the ctypes mirrors match the C compiler's
 * layout field by field. */
#include "attn.h"

#include <stddef.h>
#include <stdio.h>

#define SIZE(T, name) printf("%s sizeof %zu\n", name, sizeof(T))
#define FIELD(T, name, f) printf("%s %s %zu\n", name, #f, offsetof(T, f))

int main(void) {
  SIZE(attn_ctx_options, "CtxOptions");
  FIELD(attn_ctx_options, "CtxOptions", num_threads);
  FIELD(attn_ctx_options, "CtxOptions", alloc);
  FIELD(attn_ctx_options, "CtxOptions", free);
  FIELD(attn_ctx_options, "CtxOptions", alloc_user);
  SIZE(attn_softmax_params, "SoftmaxParams");
  FIELD(attn_softmax_params, "SoftmaxParams", scale);
  FIELD(attn_softmax_params, "SoftmaxParams", mask);
  FIELD(attn_softmax_params, "SoftmaxParams", bool_mask);
  SIZE(attn_sinusoidal_params, "SinusoidalParams");
  FIELD(attn_sinusoidal_params, "SinusoidalParams", layout);
  FIELD(attn_sinusoidal_params, "SinusoidalParams", base);
  FIELD(attn_sinusoidal_params, "SinusoidalParams", offset);
  FIELD(attn_sinusoidal_params, "SinusoidalParams", positions);
  SIZE(attn_rope_params, "RopeParams");
  FIELD(attn_rope_params, "RopeParams", style);
  FIELD(attn_rope_params, "RopeParams", rotary_dim);
  FIELD(attn_rope_params, "RopeParams", theta);
  FIELD(attn_rope_params, "RopeParams", offset);
  FIELD(attn_rope_params, "RopeParams", positions);
  SIZE(attn_sdpa_params, "SdpaParams");
  FIELD(attn_sdpa_params, "SdpaParams", scale);
  FIELD(attn_sdpa_params, "SdpaParams", softcap);
  FIELD(attn_sdpa_params, "SdpaParams", causal);
  FIELD(attn_sdpa_params, "SdpaParams", align);
  FIELD(attn_sdpa_params, "SdpaParams", window);
  FIELD(attn_sdpa_params, "SdpaParams", window_left);
  FIELD(attn_sdpa_params, "SdpaParams", window_right);
  FIELD(attn_sdpa_params, "SdpaParams", mask);
  FIELD(attn_sdpa_params, "SdpaParams", bool_mask);
  FIELD(attn_sdpa_params, "SdpaParams", kv_lens);
  FIELD(attn_sdpa_params, "SdpaParams", alibi_slopes);
  FIELD(attn_sdpa_params, "SdpaParams", sinks);
  FIELD(attn_sdpa_params, "SdpaParams", lse);
  FIELD(attn_sdpa_params, "SdpaParams", weights);
  FIELD(attn_sdpa_params, "SdpaParams", q_offsets);
  return 0;
}
