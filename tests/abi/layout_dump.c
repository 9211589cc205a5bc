/* The C compiler's view of attn.h for the bindings' layout tests: the size
 * and field offsets and sizes of every parameter struct and the value of
 * every enum constant, one per line:
 *   size attn_sdpa_params 136
 *   field attn_sdpa_params.scale 8 4
 *   const ATTN_ERR_SHAPE 3
 * bindings/rust/attn-sys/tests/layout.rs compiles and runs it (cc, header
 * only) and compares it with the Rust declarations; the Python binding's
 * tests (ctest builds it as attn_py_layout_dump) compare it with the ctypes
 * mirrors. A field appended to the header goes here too: both then fail
 * until they follow. */
#include "attn.h"

#include <stddef.h>
#include <stdio.h>

#define SIZE(T) printf("size %s %zu\n", #T, sizeof(T))
#define FIELD(T, f) printf("field %s.%s %zu %zu\n", #T, #f, offsetof(T, f), sizeof(((T *)0)->f))
#define CONST(c) printf("const %s %lld\n", #c, (long long)(c))

int main(void) {
  SIZE(attn_ctx_options);
  FIELD(attn_ctx_options, struct_size);
  FIELD(attn_ctx_options, num_threads);
  FIELD(attn_ctx_options, reserved_);
  FIELD(attn_ctx_options, alloc);
  FIELD(attn_ctx_options, free);
  FIELD(attn_ctx_options, alloc_user);
  SIZE(attn_softmax_params);
  FIELD(attn_softmax_params, struct_size);
  FIELD(attn_softmax_params, scale);
  FIELD(attn_softmax_params, reserved_);
  FIELD(attn_softmax_params, mask);
  FIELD(attn_softmax_params, bool_mask);
  FIELD(attn_softmax_params, axis);
  FIELD(attn_softmax_params, reserved2_);
  SIZE(attn_sinusoidal_params);
  FIELD(attn_sinusoidal_params, struct_size);
  FIELD(attn_sinusoidal_params, layout);
  FIELD(attn_sinusoidal_params, reserved_);
  FIELD(attn_sinusoidal_params, base);
  FIELD(attn_sinusoidal_params, offset);
  FIELD(attn_sinusoidal_params, positions);
  SIZE(attn_rope_params);
  FIELD(attn_rope_params, struct_size);
  FIELD(attn_rope_params, style);
  FIELD(attn_rope_params, rotary_dim);
  FIELD(attn_rope_params, theta);
  FIELD(attn_rope_params, offset);
  FIELD(attn_rope_params, positions);
  SIZE(attn_rope_cache_params);
  FIELD(attn_rope_cache_params, struct_size);
  FIELD(attn_rope_cache_params, scaling);
  FIELD(attn_rope_cache_params, apply_attention_factor);
  FIELD(attn_rope_cache_params, theta);
  FIELD(attn_rope_cache_params, factor);
  FIELD(attn_rope_cache_params, original_max_position);
  FIELD(attn_rope_cache_params, seq_len);
  FIELD(attn_rope_cache_params, beta_fast);
  FIELD(attn_rope_cache_params, beta_slow);
  FIELD(attn_rope_cache_params, mscale);
  FIELD(attn_rope_cache_params, mscale_all_dim);
  FIELD(attn_rope_cache_params, attention_factor);
  FIELD(attn_rope_cache_params, low_freq_factor);
  FIELD(attn_rope_cache_params, high_freq_factor);
  FIELD(attn_rope_cache_params, short_factors);
  FIELD(attn_rope_cache_params, long_factors);
  FIELD(attn_rope_cache_params, yarn_no_truncate);
  FIELD(attn_rope_cache_params, reserved_);
  SIZE(attn_rope_cached_params);
  FIELD(attn_rope_cached_params, struct_size);
  FIELD(attn_rope_cached_params, style);
  FIELD(attn_rope_cached_params, num_heads);
  FIELD(attn_rope_cached_params, position_ids);
  SIZE(attn_sdpa_params);
  FIELD(attn_sdpa_params, struct_size);
  FIELD(attn_sdpa_params, scale);
  FIELD(attn_sdpa_params, softcap);
  FIELD(attn_sdpa_params, causal);
  FIELD(attn_sdpa_params, align);
  FIELD(attn_sdpa_params, window);
  FIELD(attn_sdpa_params, reserved_);
  FIELD(attn_sdpa_params, window_left);
  FIELD(attn_sdpa_params, window_right);
  FIELD(attn_sdpa_params, mask);
  FIELD(attn_sdpa_params, bool_mask);
  FIELD(attn_sdpa_params, kv_lens);
  FIELD(attn_sdpa_params, alibi_slopes);
  FIELD(attn_sdpa_params, sinks);
  FIELD(attn_sdpa_params, lse);
  FIELD(attn_sdpa_params, weights);
  FIELD(attn_sdpa_params, q_offsets);
  FIELD(attn_sdpa_params, logits);
  FIELD(attn_sdpa_params, logits_stage);
  FIELD(attn_sdpa_params, reserved2_);
  SIZE(attn_sdpa_backward_params);
  FIELD(attn_sdpa_backward_params, struct_size);
  FIELD(attn_sdpa_backward_params, dmask);
  FIELD(attn_sdpa_backward_params, dsinks);
  SIZE(attn_pool_params);
  FIELD(attn_pool_params, struct_size);
  FIELD(attn_pool_params, mode);
  FIELD(attn_pool_params, reserved_);
  FIELD(attn_pool_params, lengths);
  FIELD(attn_pool_params, keep);
  FIELD(attn_pool_params, scores);
  SIZE(attn_pool_attention_params);
  FIELD(attn_pool_attention_params, struct_size);
  FIELD(attn_pool_attention_params, scale);
  FIELD(attn_pool_attention_params, reserved_);
  FIELD(attn_pool_attention_params, lengths);
  FIELD(attn_pool_attention_params, keep);
  FIELD(attn_pool_attention_params, weights);
  FIELD(attn_pool_attention_params, lse);
  SIZE(attn_kv_cache_params);
  FIELD(attn_kv_cache_params, struct_size);
  FIELD(attn_kv_cache_params, layout);
  FIELD(attn_kv_cache_params, dtype);
  FIELD(attn_kv_cache_params, batch);
  FIELD(attn_kv_cache_params, kv_heads);
  FIELD(attn_kv_cache_params, head_dim);
  FIELD(attn_kv_cache_params, value_dim);
  FIELD(attn_kv_cache_params, capacity);
  FIELD(attn_kv_cache_params, block_size);
  FIELD(attn_kv_cache_params, num_blocks);
  SIZE(attn_kv_cache_info);
  FIELD(attn_kv_cache_info, struct_size);
  FIELD(attn_kv_cache_info, layout);
  FIELD(attn_kv_cache_info, dtype);
  FIELD(attn_kv_cache_info, batch);
  FIELD(attn_kv_cache_info, kv_heads);
  FIELD(attn_kv_cache_info, head_dim);
  FIELD(attn_kv_cache_info, value_dim);
  FIELD(attn_kv_cache_info, capacity);
  FIELD(attn_kv_cache_info, block_size);
  FIELD(attn_kv_cache_info, num_blocks);
  FIELD(attn_kv_cache_info, free_blocks);
  SIZE(attn_kv_append_params);
  FIELD(attn_kv_append_params, struct_size);
  FIELD(attn_kv_append_params, rope);
  SIZE(attn_mha_decoder_params);
  FIELD(attn_mha_decoder_params, struct_size);
  FIELD(attn_mha_decoder_params, embed_dim);
  FIELD(attn_mha_decoder_params, num_heads);
  FIELD(attn_mha_decoder_params, num_kv_heads);
  FIELD(attn_mha_decoder_params, head_dim);
  FIELD(attn_mha_decoder_params, qkv_bias);
  FIELD(attn_mha_decoder_params, out_bias);
  FIELD(attn_mha_decoder_params, rope);
  FIELD(attn_mha_decoder_params, scale);
  FIELD(attn_mha_decoder_params, softcap);
  FIELD(attn_mha_decoder_params, window);
  FIELD(attn_mha_decoder_params, reserved_);
  FIELD(attn_mha_decoder_params, window_left);
  FIELD(attn_mha_decoder_params, rope_scaling);
  SIZE(attn_mha_torch_params);
  FIELD(attn_mha_torch_params, struct_size);
  FIELD(attn_mha_torch_params, embed_dim);
  FIELD(attn_mha_torch_params, num_heads);
  FIELD(attn_mha_torch_params, kdim);
  FIELD(attn_mha_torch_params, vdim);
  FIELD(attn_mha_torch_params, no_bias);
  FIELD(attn_mha_torch_params, batch_first);
  FIELD(attn_mha_torch_params, add_bias_kv);
  FIELD(attn_mha_torch_params, add_zero_attn);
  SIZE(attn_mha_torch_forward_params);
  FIELD(attn_mha_torch_forward_params, struct_size);
  FIELD(attn_mha_torch_forward_params, need_weights);
  FIELD(attn_mha_torch_forward_params, per_head_weights);
  FIELD(attn_mha_torch_forward_params, is_causal);
  FIELD(attn_mha_torch_forward_params, reserved_);
  CONST(ATTN_OK);
  CONST(ATTN_ERR_NULL_ARG);
  CONST(ATTN_ERR_INVALID_ARG);
  CONST(ATTN_ERR_SHAPE);
  CONST(ATTN_ERR_OVERFLOW);
  CONST(ATTN_ERR_NO_MEMORY);
  CONST(ATTN_ERR_UNSUPPORTED);
  CONST(ATTN_ERR_BAD_HANDLE);
  CONST(ATTN_ERR_ALIASING);
  CONST(ATTN_ERR_BUSY);
  CONST(ATTN_DTYPE_F32);
  CONST(ATTN_DTYPE_U8);
  CONST(ATTN_DTYPE_F16);
  CONST(ATTN_DTYPE_BF16);
  CONST(ATTN_PE_INTERLEAVED);
  CONST(ATTN_PE_SIN_COS);
  CONST(ATTN_PE_SIN_COS_SHIFTED);
  CONST(ATTN_PE_COS_SIN);
  CONST(ATTN_ROPE_HALF_SPLIT);
  CONST(ATTN_ROPE_INTERLEAVED);
  CONST(ATTN_ROPE_SCALING_NONE);
  CONST(ATTN_ROPE_SCALING_LINEAR);
  CONST(ATTN_ROPE_SCALING_NTK);
  CONST(ATTN_ROPE_SCALING_DYNAMIC_NTK);
  CONST(ATTN_ROPE_SCALING_YARN);
  CONST(ATTN_ROPE_SCALING_LLAMA3);
  CONST(ATTN_ROPE_SCALING_LONGROPE);
  CONST(ATTN_LOGITS_SCALED);
  CONST(ATTN_LOGITS_SOFTCAPPED);
  CONST(ATTN_LOGITS_MASKED);
  CONST(ATTN_ALIGN_TOP_LEFT);
  CONST(ATTN_ALIGN_BOTTOM_RIGHT);
  CONST(ATTN_POOL_SUM);
  CONST(ATTN_POOL_MEAN);
  CONST(ATTN_POOL_MAX);
  CONST(ATTN_POOL_WEIGHTED);
  CONST(ATTN_KV_CONTIGUOUS);
  CONST(ATTN_KV_PAGED);
  CONST(ATTN_MHA_Q_WEIGHT);
  CONST(ATTN_MHA_K_WEIGHT);
  CONST(ATTN_MHA_V_WEIGHT);
  CONST(ATTN_MHA_O_WEIGHT);
  CONST(ATTN_MHA_Q_BIAS);
  CONST(ATTN_MHA_K_BIAS);
  CONST(ATTN_MHA_V_BIAS);
  CONST(ATTN_MHA_O_BIAS);
  CONST(ATTN_MHA_IN_PROJ_WEIGHT);
  CONST(ATTN_MHA_IN_PROJ_BIAS);
  CONST(ATTN_MAX_DIMS);
  CONST(ATTN_VERSION_MAJOR);
  return 0;
}
