/* Private interface of attn_pool shared with its backward (pooling_bwd.c):
 * the checked problem (plain pointers and strides), which tokens are kept,
 * how a token is read, a worker's scratch, and the weighted mode's softmax
 * weights, each defined once. */
#ifndef ATTN_POOL_H
#define ATTN_POOL_H

#include "check.h"
#include "convert.h"
#include "internal.h"

typedef struct {
  int32_t mode;
  int64_t B, H, L, D; /* H = 1 for x [B, L, D] */
  const void *x;
  int32_t xdt;   /* F32, F16 or BF16, as out and scores (each its own) */
  int64_t xs[4]; /* strides of the [B, H, L, D] view */
  void *out;
  int32_t odt;
  int64_t os[3]; /* strides of the [B, H, D] view */
  const int64_t *lengths;
  const uint8_t *keep;
  int64_t ks[3]; /* strides of keep broadcast to [B, H, L] */
  const void *scores;
  int32_t sdt;
  int64_t ss[3];
  char *work;         /* workspace: work_stride bytes per worker (pool_scratch) */
  size_t work_stride;
} pool_problem;

static inline bool attn__pool_kept(const pool_problem *p, int64_t b, int64_t h, int64_t l) {
  if (p->lengths && l >= p->lengths[b])
    return false;
  return !p->keep || p->keep[b * p->ks[0] + h * p->ks[1] + l * p->ks[2]] != 0;
}

/* Token l of sequence (b, h) as D floats: x's row itself for F32, else
 * widened (exactly) into row[D]. */
static inline const float *attn__pool_token(const pool_problem *p, int64_t b, int64_t h,
                                            int64_t l, float *row) {
  const void *t = attn__elem(p->x, p->xdt, b * p->xs[0] + h * p->xs[1] + l * p->xs[2]);
  if (p->xdt == ATTN_DTYPE_F32)
    return t;
  attn__widen(attn__kernels(), p->xdt, t, row, p->D);
  return row;
}

/* The sequence (b, h)'s row of out (the backward's dout), in its type. */
static inline void *attn__pool_out(const pool_problem *p, int64_t b, int64_t h) {
  return attn__elem(p->out, p->odt, b * p->os[0] + h * p->os[1]);
}

/* A worker's scratch, carved from its work_stride bytes: sums (D doubles)
 * and, backward max, argmax indices (D); softmax weights (L doubles,
 * weighted); a half token widened (D floats), and, backward, a half dout
 * row widened (D floats). A NULL pointer is a buffer the problem does not
 * need. */
typedef struct {
  double *acc;
  int64_t *idx;
  double *w;
  float *row, *g;
} pool_scratch;

/* Bytes per worker of p's scratch (forward or backward); with base, also
 * carve it from base into s. One function for the plan and the run, so the
 * sizes cannot drift. */
size_t attn__pool_scratch(const pool_problem *p, bool backward, char *base, pool_scratch *s);

/* attn_pool's checks, shared with its backward: x, out (named out_name,
 * with out_flags: the forward writes it, the backward reads dout), keep and
 * scores from the read params prm, checked with the caller's `more`
 * operands appended (their `like` indices count x, out, keep, scores as 0..3);
 * then out's shape, mode, lengths, keep and scores; fills p (not its
 * workspace). */
attn_status attn__pool_check(attn_ctx *ctx, const attn_tensor *x, const attn_tensor *out,
                             const char *out_name, uint8_t out_flags,
                             const attn_pool_params *prm, const attn_operand *more, int n_more,
                             pool_problem *p);

/* A per-token tensor (keep, scores, dscores: [B, L] or [B, H, L]) as a
 * [B, H, L] view: a 2-D tensor's H axis has size 1 and stride 0. */
void attn__pool_token_view(const attn_tensor *t, int64_t dims[3], int64_t strides[3]);

/* Softmax weights of sequence (b, h)'s kept tokens into w[L] (dropped
 * tokens get 0); returns the count of kept tokens, 0 when the sequence
 * gives zeros (nothing kept, or every kept score -inf), -1 when it is NaN
 * (a NaN or +inf kept score). */
int64_t attn__pool_weights(const pool_problem *p, int64_t b, int64_t h, double *w);

/* attn_pool_attention's checks and SDPA call, shared with its backward:
 * reads params into prm; checks queries and k (of the types in dtypes)
 * and keep, with the caller's `more` operands appended (indices 3.. in
 * their `like`); then views
 * queries [Hq, M, D] as q [B, Hq, M, D] (batch stride 0), keep [B, L] as
 * the [B, 1, 1, L] boolean mask, and sets scale and lengths; checks
 * reserved_ and keep's shape. sp points into c: do not copy c. */
typedef struct {
  attn_tensor q4, keep4;
  attn_sdpa_params sp;
} pool_attention_call;

attn_status attn__pool_attention_call(attn_ctx *ctx, const attn_tensor *queries,
                                      const attn_tensor *k, uint32_t dtypes,
                                      const attn_pool_attention_params *params,
                                      const attn_operand *more, int n_more,
                                      attn_pool_attention_params *prm, pool_attention_call *c);

#endif
