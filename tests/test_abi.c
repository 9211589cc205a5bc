/* The stable ABI, from a caller's side.
 *
 * 1. _Static_asserts pin what 0.1.0 released: every parameter struct's
 *    field offsets and sizes, enum values, and that no struct ends in tail
 *    padding. Fields are only ever appended, so a later release must keep
 *    every line here true (abi/libattn.abi and tools/check-abi.sh check the
 *    binary side).
 * 2. The extensible parameter scheme: a caller compiled against an older,
 *    smaller struct (simulated with that older layout and its size) gets the
 *    documented defaults for the fields it does not know, and the library
 *    reads nothing past the caller's struct_size; a newer caller's unknown
 *    fields are accepted when zero and refused with ATTN_ERR_UNSUPPORTED,
 *    writing nothing, when not.
 * 3. Shared builds: a program linked against 0.1 gets the 0.1 _init
 *    functions of the structs that grew, which write nothing past 0.1's
 *    struct.
 * The exported-symbol check is tests/abi/check_symbols.sh. */
#include <stddef.h>

#include "test_util.h"

/* ---------------- 1. pinned layouts (LP64: x86-64, AArch64) ---------------- */
#if UINTPTR_MAX == UINT64_MAX
#define PIN(type, field, off, size)                                                        \
  _Static_assert(offsetof(type, field) == (off), #type "." #field " moved");              \
  _Static_assert(sizeof(((type *)0)->field) == (size), #type "." #field " changed size")
/* The last released field ends the struct: no tail padding, so a field
 * appended later never overlaps bytes an older caller left uninitialised. */
#define END(type, field, size)                                                              \
  _Static_assert(sizeof(type) >= (size), #type " shrank");                                  \
  _Static_assert(offsetof(type, field) + sizeof(((type *)0)->field) == (size),              \
                 #type " released with tail padding")

PIN(attn_ctx_options, struct_size, 0, 8);
PIN(attn_ctx_options, num_threads, 8, 4);
PIN(attn_ctx_options, reserved_, 12, 4);
PIN(attn_ctx_options, alloc, 16, 8);
PIN(attn_ctx_options, free, 24, 8);
PIN(attn_ctx_options, alloc_user, 32, 8);
END(attn_ctx_options, alloc_user, 40);

PIN(attn_softmax_params, struct_size, 0, 8);
PIN(attn_softmax_params, scale, 8, 4);
PIN(attn_softmax_params, reserved_, 12, 4);
PIN(attn_softmax_params, mask, 16, 8);
PIN(attn_softmax_params, bool_mask, 24, 8);
END(attn_softmax_params, bool_mask, 32);
PIN(attn_softmax_params, axis, 32, 4); /* 0.2 */
PIN(attn_softmax_params, reserved2_, 36, 4);
END(attn_softmax_params, reserved2_, 40);

PIN(attn_sinusoidal_params, struct_size, 0, 8);
PIN(attn_sinusoidal_params, layout, 8, 4);
PIN(attn_sinusoidal_params, reserved_, 12, 4);
PIN(attn_sinusoidal_params, base, 16, 8);
PIN(attn_sinusoidal_params, offset, 24, 8);
PIN(attn_sinusoidal_params, positions, 32, 8);
END(attn_sinusoidal_params, positions, 40);

PIN(attn_rope_params, struct_size, 0, 8);
PIN(attn_rope_params, style, 8, 4);
PIN(attn_rope_params, rotary_dim, 12, 4);
PIN(attn_rope_params, theta, 16, 8);
PIN(attn_rope_params, offset, 24, 8);
PIN(attn_rope_params, positions, 32, 8);
END(attn_rope_params, positions, 40);

PIN(attn_sdpa_params, struct_size, 0, 8);
PIN(attn_sdpa_params, scale, 8, 4);
PIN(attn_sdpa_params, softcap, 12, 4);
PIN(attn_sdpa_params, causal, 16, 4);
PIN(attn_sdpa_params, align, 20, 4);
PIN(attn_sdpa_params, window, 24, 4);
PIN(attn_sdpa_params, reserved_, 28, 4);
PIN(attn_sdpa_params, window_left, 32, 8);
PIN(attn_sdpa_params, window_right, 40, 8);
PIN(attn_sdpa_params, mask, 48, 8);
PIN(attn_sdpa_params, bool_mask, 56, 8);
PIN(attn_sdpa_params, kv_lens, 64, 8);
PIN(attn_sdpa_params, alibi_slopes, 72, 8);
PIN(attn_sdpa_params, sinks, 80, 8);
PIN(attn_sdpa_params, lse, 88, 8);
PIN(attn_sdpa_params, weights, 96, 8);
PIN(attn_sdpa_params, q_offsets, 104, 8); /* 0.2 */
END(attn_sdpa_params, q_offsets, 112);
PIN(attn_sdpa_params, logits, 112, 8); /* 0.2 */
PIN(attn_sdpa_params, logits_stage, 120, 4);
PIN(attn_sdpa_params, reserved2_, 124, 4);
END(attn_sdpa_params, reserved2_, 128);

/* Added in 0.2.0 (issue 11): pooling and rotary tables. */
PIN(attn_rope_cache_params, struct_size, 0, 8);
PIN(attn_rope_cache_params, scaling, 8, 4);
PIN(attn_rope_cache_params, apply_attention_factor, 12, 4);
PIN(attn_rope_cache_params, theta, 16, 8);
PIN(attn_rope_cache_params, factor, 24, 8);
PIN(attn_rope_cache_params, original_max_position, 32, 8);
PIN(attn_rope_cache_params, seq_len, 40, 8);
PIN(attn_rope_cache_params, beta_fast, 48, 8);
PIN(attn_rope_cache_params, beta_slow, 56, 8);
PIN(attn_rope_cache_params, mscale, 64, 8);
PIN(attn_rope_cache_params, mscale_all_dim, 72, 8);
PIN(attn_rope_cache_params, attention_factor, 80, 8);
PIN(attn_rope_cache_params, low_freq_factor, 88, 8);
PIN(attn_rope_cache_params, high_freq_factor, 96, 8);
PIN(attn_rope_cache_params, short_factors, 104, 8);
PIN(attn_rope_cache_params, long_factors, 112, 8);
PIN(attn_rope_cache_params, yarn_no_truncate, 120, 4);
PIN(attn_rope_cache_params, reserved_, 124, 4);
END(attn_rope_cache_params, reserved_, 128);

PIN(attn_rope_cached_params, struct_size, 0, 8);
PIN(attn_rope_cached_params, style, 8, 4);
PIN(attn_rope_cached_params, num_heads, 12, 4);
PIN(attn_rope_cached_params, position_ids, 16, 8);
END(attn_rope_cached_params, position_ids, 24);

PIN(attn_pool_params, struct_size, 0, 8);
PIN(attn_pool_params, mode, 8, 4);
PIN(attn_pool_params, reserved_, 12, 4);
PIN(attn_pool_params, lengths, 16, 8);
PIN(attn_pool_params, keep, 24, 8);
PIN(attn_pool_params, scores, 32, 8);
END(attn_pool_params, scores, 40);

PIN(attn_pool_attention_params, struct_size, 0, 8);
PIN(attn_pool_attention_params, scale, 8, 4);
PIN(attn_pool_attention_params, reserved_, 12, 4);
PIN(attn_pool_attention_params, lengths, 16, 8);
PIN(attn_pool_attention_params, keep, 24, 8);
PIN(attn_pool_attention_params, weights, 32, 8);
PIN(attn_pool_attention_params, lse, 40, 8);
END(attn_pool_attention_params, lse, 48);

/* Added in 0.2.0: the KV cache. */
PIN(attn_kv_cache_params, struct_size, 0, 8);
PIN(attn_kv_cache_params, layout, 8, 4);
PIN(attn_kv_cache_params, dtype, 12, 4);
PIN(attn_kv_cache_params, batch, 16, 8);
PIN(attn_kv_cache_params, kv_heads, 24, 8);
PIN(attn_kv_cache_params, head_dim, 32, 8);
PIN(attn_kv_cache_params, value_dim, 40, 8);
PIN(attn_kv_cache_params, capacity, 48, 8);
PIN(attn_kv_cache_params, block_size, 56, 8);
PIN(attn_kv_cache_params, num_blocks, 64, 8);
END(attn_kv_cache_params, num_blocks, 72);

PIN(attn_kv_cache_info, struct_size, 0, 8);
PIN(attn_kv_cache_info, layout, 8, 4);
PIN(attn_kv_cache_info, dtype, 12, 4);
PIN(attn_kv_cache_info, batch, 16, 8);
PIN(attn_kv_cache_info, kv_heads, 24, 8);
PIN(attn_kv_cache_info, head_dim, 32, 8);
PIN(attn_kv_cache_info, value_dim, 40, 8);
PIN(attn_kv_cache_info, capacity, 48, 8);
PIN(attn_kv_cache_info, block_size, 56, 8);
PIN(attn_kv_cache_info, num_blocks, 64, 8);
PIN(attn_kv_cache_info, free_blocks, 72, 8);
END(attn_kv_cache_info, free_blocks, 80);

PIN(attn_kv_append_params, struct_size, 0, 8);
PIN(attn_kv_append_params, rope, 8, 8);
END(attn_kv_append_params, rope, 16);
_Static_assert(ATTN_KV_CONTIGUOUS == 0 && ATTN_KV_PAGED == 1, "attn_kv_layout values are pinned");

PIN(attn_mha_decoder_params, struct_size, 0, 8);
PIN(attn_mha_decoder_params, embed_dim, 8, 8);
PIN(attn_mha_decoder_params, num_heads, 16, 8);
PIN(attn_mha_decoder_params, num_kv_heads, 24, 8);
PIN(attn_mha_decoder_params, head_dim, 32, 8);
PIN(attn_mha_decoder_params, qkv_bias, 40, 4);
PIN(attn_mha_decoder_params, out_bias, 44, 4);
PIN(attn_mha_decoder_params, rope, 48, 8);
PIN(attn_mha_decoder_params, scale, 56, 4);
PIN(attn_mha_decoder_params, softcap, 60, 4);
PIN(attn_mha_decoder_params, window, 64, 4);
PIN(attn_mha_decoder_params, reserved_, 68, 4);
PIN(attn_mha_decoder_params, window_left, 72, 8);
PIN(attn_mha_decoder_params, rope_scaling, 80, 8);
END(attn_mha_decoder_params, rope_scaling, 88);
_Static_assert(ATTN_MHA_Q_WEIGHT == 0 && ATTN_MHA_O_WEIGHT == 3 && ATTN_MHA_Q_BIAS == 4 &&
                   ATTN_MHA_O_BIAS == 7 && sizeof(attn_mha_weight) == 4,
               "attn_mha_weight values are pinned");
_Static_assert(sizeof(attn_kv_layout) == 4, "attn_kv_layout is int-sized");
_Static_assert(ATTN_MHA_IN_PROJ_WEIGHT == 8 && ATTN_MHA_IN_PROJ_BIAS == 9,
               "attn_mha_weight values are pinned (PyTorch form)");
PIN(attn_mha_torch_params, struct_size, 0, 8);
PIN(attn_mha_torch_params, embed_dim, 8, 8);
PIN(attn_mha_torch_params, num_heads, 16, 8);
PIN(attn_mha_torch_params, kdim, 24, 8);
PIN(attn_mha_torch_params, vdim, 32, 8);
PIN(attn_mha_torch_params, no_bias, 40, 4);
PIN(attn_mha_torch_params, batch_first, 44, 4);
PIN(attn_mha_torch_params, add_bias_kv, 48, 4);
PIN(attn_mha_torch_params, add_zero_attn, 52, 4);
END(attn_mha_torch_params, add_zero_attn, 56);
PIN(attn_mha_torch_forward_params, struct_size, 0, 8);
PIN(attn_mha_torch_forward_params, need_weights, 8, 4);
PIN(attn_mha_torch_forward_params, per_head_weights, 12, 4);
PIN(attn_mha_torch_forward_params, is_causal, 16, 4);
PIN(attn_mha_torch_forward_params, reserved_, 20, 4);
END(attn_mha_torch_forward_params, reserved_, 24);
/* 0.2.0 */
PIN(attn_sdpa_backward_params, struct_size, 0, 8);
PIN(attn_sdpa_backward_params, dmask, 8, 8);
PIN(attn_sdpa_backward_params, dsinks, 16, 8);
END(attn_sdpa_backward_params, dsinks, 24);
#endif

/* Enum values and sizes (int-sized through their 0x7fffffff sentinels). */
_Static_assert(ATTN_OK == 0 && ATTN_ERR_NULL_ARG == 1 && ATTN_ERR_INVALID_ARG == 2 &&
                   ATTN_ERR_SHAPE == 3 && ATTN_ERR_OVERFLOW == 4 && ATTN_ERR_NO_MEMORY == 5 &&
                   ATTN_ERR_UNSUPPORTED == 6 && ATTN_ERR_BAD_HANDLE == 7 &&
                   ATTN_ERR_ALIASING == 8 && ATTN_ERR_BUSY == 9,
               "attn_status values are pinned");
_Static_assert(ATTN_DTYPE_F32 == 0 && ATTN_DTYPE_U8 == 1, "attn_dtype values are pinned");
_Static_assert(ATTN_DTYPE_F16 == 2 && ATTN_DTYPE_BF16 == 3, "attn_dtype values are pinned (0.2)");
_Static_assert(ATTN_PE_INTERLEAVED == 0 && ATTN_PE_SIN_COS == 1 && ATTN_PE_SIN_COS_SHIFTED == 2 &&
                   ATTN_PE_COS_SIN == 3,
               "attn_pe_layout values are pinned");
_Static_assert(ATTN_ROPE_HALF_SPLIT == 0 && ATTN_ROPE_INTERLEAVED == 1,
               "attn_rope_style values are pinned");
_Static_assert(ATTN_ALIGN_TOP_LEFT == 0 && ATTN_ALIGN_BOTTOM_RIGHT == 1,
               "attn_align values are pinned");
_Static_assert(sizeof(attn_status) == 4 && sizeof(attn_dtype) == 4 &&
                   sizeof(attn_pe_layout) == 4 && sizeof(attn_rope_style) == 4 &&
                   sizeof(attn_align) == 4,
               "enums are int-sized");
_Static_assert(ATTN_MAX_DIMS == 4, "ATTN_MAX_DIMS is part of the ABI");
_Static_assert(ATTN_LOGITS_SCALED == 0 && ATTN_LOGITS_SOFTCAPPED == 1 && ATTN_LOGITS_MASKED == 2 &&
                   sizeof(attn_logits_stage) == 4,
               "attn_logits_stage values are pinned");
_Static_assert(ATTN_POOL_SUM == 0 && ATTN_POOL_MEAN == 1 && ATTN_POOL_MAX == 2 &&
                   ATTN_POOL_WEIGHTED == 3 && sizeof(attn_pool_mode) == 4,
               "attn_pool_mode values are pinned");
_Static_assert(ATTN_ROPE_SCALING_NONE == 0 && ATTN_ROPE_SCALING_LINEAR == 1 &&
                   ATTN_ROPE_SCALING_NTK == 2 && ATTN_ROPE_SCALING_DYNAMIC_NTK == 3 &&
                   ATTN_ROPE_SCALING_YARN == 4 && ATTN_ROPE_SCALING_LLAMA3 == 5 &&
                   ATTN_ROPE_SCALING_LONGROPE == 6 && sizeof(attn_rope_scaling) == 4,
               "attn_rope_scaling values are pinned");

/* ---------------- 2. older and newer callers ---------------- */

/* The caller's struct sits at the start of a buffer whose following bytes
 * are garbage: reading past struct_size would change the result or fault. */
#define ARENA 256
static unsigned char *arena_with(const void *caller_struct, size_t size) {
  static unsigned char arena[ARENA];
  memset(arena, 0xA5, sizeof arena);
  memcpy(arena, caller_struct, size);
  return arena;
}

static void fill(float *x, size_t n, uint64_t seed) {
  tu_rng r = {seed};
  tu_fill(&r, x, n, -1, 1);
}

/* attn_sdpa_params as a caller built against a header that ended after
 * `causal` would have it: its size includes 4 bytes of tail padding, which
 * _init (or memset, or a zero initializer) leaves at zero. */
typedef struct {
  size_t struct_size;
  float scale;
  float softcap;
  int32_t causal;
} sdpa_params_v0;

enum { B = 1, H = 2, L = 9, LK = 12, D = 8 };

/* attn_sdpa over fixed inputs (Lq = 9 < Lk = 12, so the causal alignment
 * matters) with the given parameter bytes. */
static void sdpa_with(const void *params, float *out) {
  static float q[B * H * L * D], k[B * H * LK * D], v[B * H * LK * D];
  fill(q, sizeof q / 4, 1);
  fill(k, sizeof k / 4, 2);
  fill(v, sizeof v / 4, 3);
  attn_ctx *ctx = tu_ctx(1);
  int64_t qd[4] = {B, H, L, D}, kd[4] = {B, H, LK, D};
  for (int i = 0; i < B * H * L * D; i++)
    out[i] = -777;
  attn_status st = attn_sdpa(ctx, tu_wrap(ctx, q, sizeof q / 4, 4, qd, NULL),
                             tu_wrap(ctx, k, sizeof k / 4, 4, kd, NULL),
                             tu_wrap(ctx, v, sizeof v / 4, 4, kd, NULL),
                             tu_wrap(ctx, out, B * H * L * D, 4, qd, NULL), params);
  if (st != ATTN_OK)
    fail_msg("attn_sdpa: %s: %s", attn_status_string(st), attn_ctx_last_error(ctx));
  attn_ctx_destroy(ctx);
}

static void sdpa_older_caller(void **state) {
  (void)state;
  float got[B * H * L * D], want[B * H * L * D];
  sdpa_params_v0 old;
  memset(&old, 0, sizeof old);
  old.struct_size = sizeof old;
  old.scale = 0.5f;
  old.causal = 1;
  sdpa_with(arena_with(&old, sizeof old), got);
  /* The same request through the current struct: the fields the old caller
   * does not know keep their documented defaults (top-left alignment, no
   * window, no masks, key lengths, ALiBi, sinks, no lse or weights). */
  attn_sdpa_params cur;
  attn_sdpa_params_init(&cur);
  cur.scale = 0.5f;
  cur.causal = 1;
  cur.align = ATTN_ALIGN_TOP_LEFT;
  sdpa_with(&cur, want);
  assert_memory_equal(got, want, sizeof got);
  /* ... and not some other value: bottom-right differs here (Lq < Lk). */
  cur.align = ATTN_ALIGN_BOTTOM_RIGHT;
  sdpa_with(&cur, want);
  assert_true(memcmp(got, want, sizeof got) != 0);
  /* Every older size the struct could have had, cut at a field boundary:
   * the library reads only what the size covers. */
  static const size_t cuts[] = {offsetof(attn_sdpa_params, scale),
                                offsetof(attn_sdpa_params, softcap),
                                offsetof(attn_sdpa_params, causal),
                                offsetof(attn_sdpa_params, align),
                                offsetof(attn_sdpa_params, window_left),
                                offsetof(attn_sdpa_params, mask),
                                offsetof(attn_sdpa_params, lse),
                                offsetof(attn_sdpa_params, q_offsets)}; /* 0.1's size */
  for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
    attn_sdpa_params p;
    attn_sdpa_params_init(&p);
    p.struct_size = cuts[i];
    sdpa_with(arena_with(&p, cuts[i]), got);
    attn_sdpa_params_init(&cur);
    sdpa_with(&cur, want);
    assert_memory_equal(got, want, sizeof got);
  }
}

static void sdpa_newer_caller(void **state) {
  (void)state;
  struct {
    attn_sdpa_params known;
    int64_t future_a;
    double future_b;
  } newer;
  memset(&newer, 0, sizeof newer);
  attn_sdpa_params_init(&newer.known);
  newer.known.struct_size = sizeof newer;
  newer.known.causal = 1;
  float got[B * H * L * D], want[B * H * L * D];
  sdpa_with(&newer, got); /* unknown fields zero: their defaults, fine */
  attn_sdpa_params cur;
  attn_sdpa_params_init(&cur);
  cur.causal = 1;
  sdpa_with(&cur, want);
  assert_memory_equal(got, want, sizeof got);

  /* A non-zero unknown field: refused, nothing written, a message. */
  newer.future_b = 1.5;
  attn_ctx *ctx = tu_ctx(1);
  float x[B * H * L * D], o[B * H * L * D];
  fill(x, sizeof x / 4, 9);
  for (int i = 0; i < B * H * L * D; i++)
    o[i] = -777;
  int64_t d[4] = {B, H, L, D};
  attn_tensor *t = tu_wrap(ctx, x, sizeof x / 4, 4, d, NULL);
  assert_status(attn_sdpa(ctx, t, t, t, tu_wrap(ctx, o, sizeof o / 4, 4, d, NULL),
                          &newer.known),
                ATTN_ERR_UNSUPPORTED);
  assert_error_mentions(ctx, "struct_size");
  for (int i = 0; i < B * H * L * D; i++)
    assert_true(o[i] == -777);
  /* Too small to hold struct_size itself. */
  attn_sdpa_params tiny;
  attn_sdpa_params_init(&tiny);
  tiny.struct_size = 4;
  assert_status(attn_sdpa(ctx, t, t, t, tu_wrap(ctx, o, sizeof o / 4, 4, d, NULL), &tiny),
                ATTN_ERR_INVALID_ARG);
  attn_ctx_destroy(ctx);
}

/* The other params structs: an older caller knowing only the first field
 * after struct_size, and a newer one with a non-zero unknown field. */
typedef struct {
  size_t struct_size;
  float scale;
} softmax_params_v0; /* 4 bytes of zero tail padding, like the v0 above */

static void softmax_callers(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  float x[3 * 5], y[3 * 5], want[3 * 5];
  fill(x, 15, 4);
  int64_t d[2] = {3, 5};
  attn_tensor *xt = tu_wrap(ctx, x, 15, 2, d, NULL), *yt = tu_wrap(ctx, y, 15, 2, d, NULL);
  softmax_params_v0 old;
  memset(&old, 0, sizeof old);
  old.struct_size = sizeof old;
  old.scale = 2;
  assert_ok(attn_softmax(ctx, xt, yt, (const attn_softmax_params *)arena_with(&old, sizeof old)));
  memcpy(want, y, sizeof y);
  attn_softmax_params p;
  attn_softmax_params_init(&p);
  p.scale = 2; /* no masks: the defaults */
  assert_ok(attn_softmax(ctx, xt, yt, &p));
  assert_memory_equal(y, want, sizeof y);
  /* A caller that knows nothing past struct_size: scale 1. */
  size_t only_size = sizeof(size_t);
  assert_ok(attn_log_softmax(ctx, xt, yt, (const attn_softmax_params *)arena_with(&only_size, 8)));
  memcpy(want, y, sizeof y);
  assert_ok(attn_log_softmax(ctx, xt, yt, NULL));
  assert_memory_equal(y, want, sizeof y);
  struct {
    attn_softmax_params known;
    int32_t future[2];
  } newer;
  memset(&newer, 0, sizeof newer);
  attn_softmax_params_init(&newer.known);
  newer.known.struct_size = sizeof newer;
  assert_ok(attn_softmax(ctx, xt, yt, &newer.known));
  newer.future[1] = 1;
  memcpy(want, y, sizeof y);
  assert_status(attn_softmax(ctx, xt, yt, &newer.known), ATTN_ERR_UNSUPPORTED);
  assert_memory_equal(y, want, sizeof y);
  attn_ctx_destroy(ctx);
}

typedef struct {
  size_t struct_size;
  int32_t layout;
} sinusoidal_params_v0;

typedef struct {
  size_t struct_size;
  int32_t style;
  int32_t rotary_dim;
} rope_params_v0; /* no padding: ends exactly after rotary_dim */

static void posenc_callers(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  float a[6 * 8], b[6 * 8];
  int64_t d[2] = {6, 8};
  attn_tensor *at = tu_wrap(ctx, a, 48, 2, d, NULL), *bt = tu_wrap(ctx, b, 48, 2, d, NULL);
  sinusoidal_params_v0 old;
  memset(&old, 0, sizeof old);
  old.struct_size = sizeof old;
  old.layout = ATTN_PE_SIN_COS;
  assert_ok(attn_sinusoidal(ctx, at, (const attn_sinusoidal_params *)arena_with(&old, sizeof old)));
  attn_sinusoidal_params p;
  attn_sinusoidal_params_init(&p);
  p.layout = ATTN_PE_SIN_COS; /* base 10000, offset 0, no positions */
  assert_ok(attn_sinusoidal(ctx, bt, &p));
  assert_memory_equal(a, b, sizeof a);

  float x[2 * 3 * 4 * 8], y[2 * 3 * 4 * 8];
  fill(x, sizeof x / 4, 5);
  memcpy(y, x, sizeof x);
  int64_t rd[4] = {2, 3, 4, 8};
  rope_params_v0 rold = {sizeof rold, ATTN_ROPE_INTERLEAVED, 4};
  assert_ok(attn_rope(ctx, tu_wrap(ctx, x, sizeof x / 4, 4, rd, NULL),
                      (const attn_rope_params *)arena_with(&rold, sizeof rold)));
  attn_rope_params rp;
  attn_rope_params_init(&rp);
  rp.style = ATTN_ROPE_INTERLEAVED;
  rp.rotary_dim = 4; /* theta 10000, offset 0, no positions */
  assert_ok(attn_rope(ctx, tu_wrap(ctx, y, sizeof y / 4, 4, rd, NULL), &rp));
  assert_memory_equal(x, y, sizeof x);

  struct {
    attn_rope_params known;
    double future;
  } newer;
  memset(&newer, 0, sizeof newer);
  attn_rope_params_init(&newer.known);
  newer.known.struct_size = sizeof newer;
  newer.future = -0.0; /* a set bit, even if it compares equal to zero */
  memcpy(y, x, sizeof x);
  assert_status(attn_rope(ctx, tu_wrap(ctx, y, sizeof y / 4, 4, rd, NULL), &newer.known),
                ATTN_ERR_UNSUPPORTED);
  assert_memory_equal(x, y, sizeof x);
  attn_ctx_destroy(ctx);
}

#ifdef ATTN_TEST_SYMBOL_VERSIONS
/* 3. What a program linked against 0.1 calls: the @ATTN_0 versions of the
 * _init functions of the structs that grew (src/compat.c). They must fill
 * 0.1's struct only, never the bytes after it (the caller's other
 * variables), and the library must then ignore whatever those bytes hold. */
void sdpa_params_init_0_1(attn_sdpa_params *p);
void softmax_params_init_0_1(attn_softmax_params *p);
__asm__(".symver sdpa_params_init_0_1, attn_sdpa_params_init@ATTN_0");
__asm__(".symver softmax_params_init_0_1, attn_softmax_params_init@ATTN_0");

/* 0.1's sizes: its structs ended after `weights` and `bool_mask` (PIN lines above). */
enum { SDPA_0_1 = 104, SOFTMAX_0_1 = 32 };

/* The bytes of p from `from` on still hold the 0xA5 they were set to: they
 * stand for the 0.1 caller's next variable. */
static void assert_guard(const void *p, size_t from, size_t size) {
  for (size_t i = from; i < size; i++)
    assert_int_equal(((const unsigned char *)p)[i], 0xA5);
}

static void linked_against_0_1(void **state) {
  (void)state;
  attn_sdpa_params s;
  memset(&s, 0xA5, sizeof s);
  sdpa_params_init_0_1(&s);
  assert_int_equal(s.struct_size, SDPA_0_1);
  assert_guard(&s, SDPA_0_1, sizeof s);
  s.causal = 1;
  float got[B * H * L * D], want[B * H * L * D];
  sdpa_with(&s, got);
  attn_sdpa_params cur;
  attn_sdpa_params_init(&cur);
  assert_int_equal(cur.struct_size, sizeof cur);
  cur.causal = 1;
  sdpa_with(&cur, want);
  assert_memory_equal(got, want, sizeof got);

  attn_softmax_params m;
  memset(&m, 0xA5, sizeof m);
  softmax_params_init_0_1(&m);
  assert_int_equal(m.struct_size, SOFTMAX_0_1);
  assert_true(m.scale == 1.0f);
  assert_guard(&m, SOFTMAX_0_1, sizeof m);
  attn_ctx *ctx = tu_ctx(1);
  float x[3 * 5], y[3 * 5], yw[3 * 5];
  fill(x, 15, 5);
  int64_t d[2] = {3, 5};
  attn_tensor *xt = tu_wrap(ctx, x, 15, 2, d, NULL), *yt = tu_wrap(ctx, y, 15, 2, d, NULL);
  assert_ok(attn_softmax(ctx, xt, yt, &m));
  memcpy(yw, y, sizeof y);
  assert_ok(attn_softmax(ctx, xt, yt, NULL));
  assert_memory_equal(y, yw, sizeof y);
  attn_ctx_destroy(ctx);
}
#endif

static void ctx_options_callers(void **state) {
  (void)state;
  struct {
    size_t struct_size;
    int32_t num_threads;
  } old; /* older options: no allocator fields; 4 bytes of zero padding */
  memset(&old, 0, sizeof old);
  old.struct_size = sizeof old;
  old.num_threads = 3;
  attn_ctx *ctx = NULL;
  assert_ok(attn_ctx_create(&ctx, (const attn_ctx_options *)arena_with(&old, sizeof old)));
  assert_int_equal(attn_ctx_num_threads(ctx), 3); /* and malloc/free, the default */
  attn_ctx_destroy(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(sdpa_older_caller),  cmocka_unit_test(sdpa_newer_caller),
      cmocka_unit_test(softmax_callers),    cmocka_unit_test(posenc_callers),
      cmocka_unit_test(ctx_options_callers),
#ifdef ATTN_TEST_SYMBOL_VERSIONS
      cmocka_unit_test(linked_against_0_1),
#endif
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
