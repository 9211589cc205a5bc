/* Rotary embedding (RoPE) for use inside the library (rope.c): a layer
 * rotates its own q/k buffers through the same plan and run as attn_rope. */
#ifndef ATTN_ROPE_H
#define ATTN_ROPE_H

#include "angles.h"
#include "internal.h"

typedef struct {
  void *x; /* [B, H, L, D] view, rotated in place */
  int32_t xdt; /* F32, or F16/BF16: a row widened, rotated in float, rounded once back */
  int64_t B, H, L, D, xs[4];
  int64_t half;             /* rotated pairs per row: rotary_dim / 2 */
  bool interleaved;         /* pairs (2i, 2i+1), else (i, i + half) */
  double theta;             /* frequency base, > 1 */
  int64_t offset;           /* position of token 0 when positions is NULL */
  const int64_t *positions; /* [B, L] or NULL */
  bool inverse;             /* rotate by -angle: the backward (R^T = R(-t)) */
  const double *freqs;      /* half frequencies used instead of theta's (a scaled
                               RoPE: attn__rope_scaled_freqs), or NULL */
  double amplitude;         /* cos and sin times this (YaRN's attention factor); 0 = 1 */
  /* Filled by attn__rope_plan. Work items are (batch, item_blocks blocks of
   * T tokens) or, when every batch shares the positions, runs of blocks with
   * the batches looped inside. */
  int64_t T, n_blocks, n_items;
  int64_t item_blocks; /* consecutive blocks per item */
  bool share_batches;
  bool heads_outer; /* x's head stride exceeds its token stride */
  int32_t threads;
  size_t ws_bytes;
  /* Workspace, carved by the run. */
  double *inv_freq; /* half */
  attn_angles angles; /* over inv_freq; turns in the workspace */
  double *tables;   /* per worker: cos[T][ld], sin[T][ld] (ld = half, or
                       2 * half interleaved: one value per float, as
                       rotate_pairs reads them), 2 * half doubles carried
                       from block to block, the span row (2 * half), then
                       (half x) a row of D floats */
  size_t table_stride;
} attn_rope_problem;

/* Check style, rotary_dim and theta of prm (named `where` in messages) for
 * head dim D, and set p->half, p->interleaved and p->theta. */
attn_status attn__rope_config(attn_ctx *ctx, const char *where, const attn_rope_params *prm,
                              int64_t D, attn_rope_problem *p);
/* The rotation of keys placed by a KV cache (attn_kv_append, the decoder
 * layer): a zeroed p, then, when user (params.rope) is not NULL, read and
 * checked as attn__rope_config does for head dim D; offset and positions
 * must be unset, since the cache gives each new row its position. */
attn_status attn__rope_config_cached(attn_ctx *ctx, const attn_rope_params *user, int64_t D,
                                     attn_rope_problem *p);
/* The frequencies w[0..half) and the attention factor of a long-context
 * scaling, exactly as attn_rope_cache_fill computes them for tables of P
 * rows (rope_cache.c). Checks the params, named `where` in messages. */
attn_status attn__rope_scaled_freqs(attn_ctx *ctx, const char *where,
                                    const attn_rope_cache_params *prm, int64_t half, int64_t P,
                                    double *w, double *attention_factor);
/* Blocks, threads and the exact workspace (p->ws_bytes). */
void attn__rope_plan(const attn_ctx *ctx, attn_rope_problem *p);
/* Rotate: takes p->ws_bytes from the reserved workspace; no validation. */
void attn__rope_apply(attn_ctx *ctx, attn_rope_problem *p);

#endif
