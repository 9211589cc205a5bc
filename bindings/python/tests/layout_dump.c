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
  FIELD(attn_softmax_params, "SoftmaxParams", axis);
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
  FIELD(attn_sdpa_params, "SdpaParams", logits);
  FIELD(attn_sdpa_params, "SdpaParams", logits_stage);
  SIZE(attn_rope_cache_params, "RopeCacheParams");
  FIELD(attn_rope_cache_params, "RopeCacheParams", scaling);
  FIELD(attn_rope_cache_params, "RopeCacheParams", apply_attention_factor);
  FIELD(attn_rope_cache_params, "RopeCacheParams", theta);
  FIELD(attn_rope_cache_params, "RopeCacheParams", factor);
  FIELD(attn_rope_cache_params, "RopeCacheParams", original_max_position);
  FIELD(attn_rope_cache_params, "RopeCacheParams", seq_len);
  FIELD(attn_rope_cache_params, "RopeCacheParams", beta_fast);
  FIELD(attn_rope_cache_params, "RopeCacheParams", beta_slow);
  FIELD(attn_rope_cache_params, "RopeCacheParams", mscale);
  FIELD(attn_rope_cache_params, "RopeCacheParams", mscale_all_dim);
  FIELD(attn_rope_cache_params, "RopeCacheParams", attention_factor);
  FIELD(attn_rope_cache_params, "RopeCacheParams", low_freq_factor);
  FIELD(attn_rope_cache_params, "RopeCacheParams", high_freq_factor);
  FIELD(attn_rope_cache_params, "RopeCacheParams", short_factors);
  FIELD(attn_rope_cache_params, "RopeCacheParams", long_factors);
  FIELD(attn_rope_cache_params, "RopeCacheParams", yarn_no_truncate);
  FIELD(attn_rope_cache_params, "RopeCacheParams", reserved_);
  SIZE(attn_rope_cached_params, "RopeCachedParams");
  FIELD(attn_rope_cached_params, "RopeCachedParams", style);
  FIELD(attn_rope_cached_params, "RopeCachedParams", num_heads);
  FIELD(attn_rope_cached_params, "RopeCachedParams", position_ids);
  SIZE(attn_pool_params, "PoolParams");
  FIELD(attn_pool_params, "PoolParams", mode);
  FIELD(attn_pool_params, "PoolParams", reserved_);
  FIELD(attn_pool_params, "PoolParams", lengths);
  FIELD(attn_pool_params, "PoolParams", keep);
  FIELD(attn_pool_params, "PoolParams", scores);
  SIZE(attn_pool_attention_params, "PoolAttentionParams");
  FIELD(attn_pool_attention_params, "PoolAttentionParams", scale);
  FIELD(attn_pool_attention_params, "PoolAttentionParams", reserved_);
  FIELD(attn_pool_attention_params, "PoolAttentionParams", lengths);
  FIELD(attn_pool_attention_params, "PoolAttentionParams", keep);
  FIELD(attn_pool_attention_params, "PoolAttentionParams", weights);
  FIELD(attn_pool_attention_params, "PoolAttentionParams", lse);
  SIZE(attn_sdpa_backward_params, "SdpaBackwardParams");
  FIELD(attn_sdpa_backward_params, "SdpaBackwardParams", dmask);
  FIELD(attn_sdpa_backward_params, "SdpaBackwardParams", dsinks);
  SIZE(attn_mha_torch_params, "MhaTorchParams");
  FIELD(attn_mha_torch_params, "MhaTorchParams", embed_dim);
  FIELD(attn_mha_torch_params, "MhaTorchParams", num_heads);
  FIELD(attn_mha_torch_params, "MhaTorchParams", kdim);
  FIELD(attn_mha_torch_params, "MhaTorchParams", vdim);
  FIELD(attn_mha_torch_params, "MhaTorchParams", no_bias);
  FIELD(attn_mha_torch_params, "MhaTorchParams", batch_first);
  FIELD(attn_mha_torch_params, "MhaTorchParams", add_bias_kv);
  FIELD(attn_mha_torch_params, "MhaTorchParams", add_zero_attn);
  SIZE(attn_mha_torch_forward_params, "MhaTorchForwardParams");
  FIELD(attn_mha_torch_forward_params, "MhaTorchForwardParams", need_weights);
  FIELD(attn_mha_torch_forward_params, "MhaTorchForwardParams", per_head_weights);
  FIELD(attn_mha_torch_forward_params, "MhaTorchForwardParams", is_causal);
  FIELD(attn_mha_torch_forward_params, "MhaTorchForwardParams", reserved_);
  SIZE(attn_mha_decoder_params, "MhaDecoderParams");
  FIELD(attn_mha_decoder_params, "MhaDecoderParams", embed_dim);
  FIELD(attn_mha_decoder_params, "MhaDecoderParams", num_heads);
  FIELD(attn_mha_decoder_params, "MhaDecoderParams", num_kv_heads);
  FIELD(attn_mha_decoder_params, "MhaDecoderParams", head_dim);
  FIELD(attn_mha_decoder_params, "MhaDecoderParams", qkv_bias);
  FIELD(attn_mha_decoder_params, "MhaDecoderParams", out_bias);
  FIELD(attn_mha_decoder_params, "MhaDecoderParams", rope);
  FIELD(attn_mha_decoder_params, "MhaDecoderParams", scale);
  FIELD(attn_mha_decoder_params, "MhaDecoderParams", softcap);
  FIELD(attn_mha_decoder_params, "MhaDecoderParams", window);
  FIELD(attn_mha_decoder_params, "MhaDecoderParams", window_left);
  FIELD(attn_mha_decoder_params, "MhaDecoderParams", rope_scaling);
  return 0;
}
