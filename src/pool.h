/* Private interface of attn_pool shared with its backward (pooling_bwd.c):
 * the checked problem (plain pointers and strides), which tokens are kept,
 * and the weighted mode's softmax weights, each defined once. */
#ifndef ATTN_POOL_H
#define ATTN_POOL_H

#include "internal.h"

typedef struct {
  int32_t mode;
  int64_t B, H, L, D; /* H = 1 for x [B, L, D] */
  const float *x;
  int64_t xs[4]; /* strides of the [B, H, L, D] view */
  float *out;
  int64_t os[3]; /* strides of the [B, H, D] view */
  const int64_t *lengths;
  const uint8_t *keep;
  int64_t ks[3]; /* strides of keep broadcast to [B, H, L] */
  const float *scores;
  int64_t ss[3];
  /* workspace: per worker D doubles (sums) and L doubles (weights) */
  double *work;
  size_t work_stride; /* doubles per worker */
} pool_problem;

static inline bool attn__pool_kept(const pool_problem *p, int64_t b, int64_t h, int64_t l) {
  if (p->lengths && l >= p->lengths[b])
    return false;
  return !p->keep || p->keep[b * p->ks[0] + h * p->ks[1] + l * p->ks[2]] != 0;
}

static inline const float *attn__pool_token(const pool_problem *p, int64_t b, int64_t h,
                                            int64_t l) {
  return p->x + b * p->xs[0] + h * p->xs[1] + l * p->xs[2];
}

/* The checks of attn_pool after its operand checks (x, out and the
 * per-token tensors have their dtypes and ranks): out's shape (named
 * out_name), mode, lengths, keep and scores; fills p (not its workspace). */
attn_status attn__pool_problem(attn_ctx *ctx, const attn_tensor *x, const attn_tensor *out,
                               const char *out_name, const attn_pool_params *prm,
                               pool_problem *p);

/* Softmax weights of sequence (b, h)'s kept tokens into w[L] (dropped
 * tokens get 0); returns the count of kept tokens, 0 when the sequence
 * gives zeros (nothing kept, or every kept score -inf), -1 when it is NaN
 * (a NaN or +inf kept score). */
int64_t attn__pool_weights(const pool_problem *p, int64_t b, int64_t h, double *w);

/* attn_pool_attention's SDPA call, shared with its backward: queries
 * [Hq, M, D] as q [B, Hq, M, D] (batch stride 0), keep [B, L] as the
 * [B, 1, 1, L] boolean mask, scale and lengths; checks reserved_ and keep's
 * shape (the operands' dtypes and ranks are checked). sp points into c: do
 * not copy c. */
typedef struct {
  attn_tensor q4, keep4;
  attn_sdpa_params sp;
} pool_attention_call;

attn_status attn__pool_attention_call(attn_ctx *ctx, const attn_tensor *queries,
                                      const attn_tensor *k, const attn_pool_attention_params *prm,
                                      pool_attention_call *c);

#endif
