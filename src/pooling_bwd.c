/* Backward of attn_pool: dx (and the weighted mode's dscores) from x and
 * the incoming gradient dout; and of attn_pool_attention, through the SDPA
 * backward (at the end). The checks and the kept-token and weight
 * rules are the forward's (pool.h); a work item is one sequence of one
 * head, (b, h), as there. Every dx row of the item is written (zeros for
 * dropped tokens), reading x only at kept tokens. The per-token score
 * gradients go to a [B, H, L] double buffer and are summed into dscores
 * over its broadcast axes afterwards, in a fixed order: the bits do not
 * depend on the thread count. */
#include "check.h"
#include "pool.h"
#include "sdpa.h"

#include <math.h>
#include <string.h>

#define MIN_WORK_PER_THREAD 32768.0

typedef struct {
  pool_problem f; /* the forward's problem; f.out is dout (read only) */
  void *dx;
  int32_t dxdt;
  int64_t dxs[3]; /* strides of the [B, H, L, D] view of dx (last: 1) */
  double *ds;     /* [B, H, L] score gradients, or NULL */
} bwd_problem;

static void *dx_row(const bwd_problem *p, int64_t b, int64_t h, int64_t l) {
  return attn__elem(p->dx, p->dxdt, b * p->dxs[0] + h * p->dxs[1] + l * p->dxs[2]);
}

/* y[0..n) of dx's type = v, each rounded once. */
static void fill(const bwd_problem *p, void *y, double v) {
  for (int64_t d = 0; d < p->f.D; d++)
    attn__elem_store(y, p->dxdt, d, v);
}

/* max: dout[d] goes to the token the forward's output came from (its
 * strict comparison keeps the earliest of equal values; a NaN sticks at the
 * first), or to the first kept token when every value is -inf. */
static void max_item(const bwd_problem *p, int64_t b, int64_t h, const float *g,
                     const pool_scratch *s) {
  const pool_problem *f = &p->f;
  double *acc = s->acc;
  int64_t *idx = s->idx;
  for (int64_t d = 0; d < f->D; d++)
    acc[d] = -INFINITY, idx[d] = -1;
  int64_t first = -1;
  for (int64_t l = 0; l < f->L; l++) {
    if (!attn__pool_kept(f, b, h, l))
      continue;
    if (first < 0)
      first = l;
    const float *xt = attn__pool_token(f, b, h, l, s->row);
    for (int64_t d = 0; d < f->D; d++)
      if ((xt[d] > acc[d] || isnan(xt[d])) && !isnan(acc[d]))
        acc[d] = xt[d], idx[d] = l;
  }
  for (int64_t l = 0; l < f->L; l++) {
    void *o = dx_row(p, b, h, l);
    for (int64_t d = 0; d < f->D; d++)
      attn__elem_store(o, p->dxdt, d, (idx[d] < 0 ? first : idx[d]) == l ? g[d] : 0.0f);
  }
}

/* weighted: out = sum_l w_l x_l, so dx_l = w_l dout and, with
 * g_l = dout . x_l, dscores_l = w_l (g_l - sum_k w_k g_k). A token of
 * weight 0 gets 0 in both (its x is not read: 0 * inf would be NaN). */
static void weighted_item(const bwd_problem *p, int64_t b, int64_t h, const float *g,
                          const pool_scratch *s) {
  const pool_problem *f = &p->f;
  double *w = s->w;
  int64_t n = attn__pool_weights(f, b, h, w);
  double *ds = p->ds ? p->ds + (b * f->H + h) * f->L : NULL;
  double sum = 0;
  for (int64_t l = 0; l < f->L; l++) {
    void *o = dx_row(p, b, h, l);
    if (n < 0 && attn__pool_kept(f, b, h, l)) { /* a NaN sequence */
      fill(p, o, NAN);
      if (ds)
        ds[l] = NAN;
      continue;
    }
    double wl = n > 0 ? w[l] : 0.0;
    double gl = 0;
    if (wl != 0) {
      const float *xt = attn__pool_token(f, b, h, l, s->row);
      for (int64_t d = 0; d < f->D; d++) {
        attn__elem_store(o, p->dxdt, d, wl * g[d]);
        gl += (double)g[d] * (double)xt[d];
      }
      sum += wl * gl;
    } else {
      fill(p, o, 0.0);
    }
    if (ds)
      ds[l] = gl;
  }
  if (ds && n >= 0)
    for (int64_t l = 0; l < f->L; l++)
      ds[l] = n > 0 && w[l] != 0 ? w[l] * (ds[l] - sum) : 0.0;
}

static void bwd_item(void *arg, int64_t item, int32_t worker) {
  const bwd_problem *p = arg;
  const pool_problem *f = &p->f;
  int64_t b = item / f->H, h = item % f->H;
  pool_scratch s; /* no workspace (NULL) when its size is 0 */
  attn__pool_scratch(f, true, f->work ? f->work + f->work_stride * (size_t)worker : NULL, &s);
  const void *dout = attn__pool_out(f, b, h);
  const float *g = dout;
  if (f->odt != ATTN_DTYPE_F32) {
    attn__widen(attn__kernels(), f->odt, dout, s.g, f->D);
    g = s.g;
  }
  if (f->mode == ATTN_POOL_MAX) {
    max_item(p, b, h, g, &s);
    return;
  }
  if (f->mode == ATTN_POOL_WEIGHTED) {
    weighted_item(p, b, h, g, &s);
    return;
  }
  int64_t n = 0;
  for (int64_t l = 0; l < f->L; l++)
    n += attn__pool_kept(f, b, h, l);
  for (int64_t l = 0; l < f->L; l++) {
    void *o = dx_row(p, b, h, l);
    if (!attn__pool_kept(f, b, h, l))
      fill(p, o, 0.0);
    else if (f->mode == ATTN_POOL_MEAN)
      for (int64_t d = 0; d < f->D; d++)
        attn__elem_store(o, p->dxdt, d, (double)g[d] / (double)n);
    else
      attn__convert_row(attn__kernels(), f->odt, dout, p->dxdt, o, f->D);
  }
}

/* dscores[e] = the sum of ds over the [B, H, L] positions that read score
 * element e (every position along a broadcast axis of size 1); 0 for every
 * e when there is no position (ds NULL). */
static void store_dscores(const bwd_problem *p, const attn_tensor *dscores) {
  const pool_problem *f = &p->f;
  int64_t dims[3], st[3];
  attn__pool_token_view(dscores, dims, st);
  const int64_t full[3] = {f->B, f->H, f->L};
  int64_t span[3];
  for (int a = 0; a < 3; a++)
    span[a] = dims[a] == full[a] ? 1 : full[a]; /* a dim of 1 sums its axis */
  void *out = dscores->data;
  for (int64_t e0 = 0; e0 < dims[0]; e0++)
    for (int64_t e1 = 0; e1 < dims[1]; e1++)
      for (int64_t e2 = 0; e2 < dims[2]; e2++) {
        double s = 0;
        for (int64_t b = e0 * (span[0] == 1); p->ds && b < (span[0] == 1 ? e0 + 1 : span[0]); b++)
          for (int64_t h = e1 * (span[1] == 1); h < (span[1] == 1 ? e1 + 1 : span[1]); h++)
            for (int64_t l = e2 * (span[2] == 1); l < (span[2] == 1 ? e2 + 1 : span[2]); l++)
              s += p->ds[(b * f->H + h) * f->L + l];
        attn__elem_store(out, dscores->dtype, e0 * st[0] + e1 * st[1] + e2 * st[2], s);
      }
}

static attn_status pool_backward(attn_ctx *ctx, const attn_tensor *x, const attn_tensor *dout,
                                 attn_tensor *dx, attn_tensor *dscores,
                                 const attn_pool_params *params) {
  attn_pool_params prm;
  attn_pool_params_init(&prm);
  attn_status st = attn__read_params(ctx, &prm, sizeof prm, params);
  if (st != ATTN_OK)
    return st;
  if (dscores && !prm.scores)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "dscores is set but params.scores is NULL (only ATTN_POOL_WEIGHTED has "
                      "scores to differentiate)");
  /* after x, dout, keep, scores (0..3) */
  const attn_operand outs[] = {
      {ATTN_OPERAND("dx", dx, ATTN_DT_FLOAT, 3, 4),
       .flags = ATTN_OPND_OUTPUT | ATTN_OPND_SAME_SHAPE, .like = ATTN_LIKE(0)},
      {ATTN_OPERAND("dscores", dscores, ATTN_DT_FLOAT, 2, 3),
       .flags = ATTN_OPND_OPTIONAL | ATTN_OPND_OUTPUT | ATTN_OPND_SAME_SHAPE, .like = ATTN_LIKE(3)},
  };
  bwd_problem p;
  memset(&p, 0, sizeof p);
  if ((st = attn__pool_check(ctx, x, dout, "dout", 0, &prm, outs, 2, &p.f)) != ATTN_OK)
    return st;
  int32_t nd = x->ndim;
  p.dx = dx->data;
  p.dxdt = dx->dtype;
  if (!attn__empty(dx)) {
    p.dxs[0] = dx->strides[0];
    p.dxs[1] = nd == 4 ? dx->strides[1] : 0;
    p.dxs[2] = dx->strides[nd - 2];
  }
  if (attn__empty(dx) && (!dscores || attn__empty(dscores)))
    return ATTN_OK; /* nothing to write */
  /* No token: dx is empty and no dscores sum has a term (walking the B * H
   * sequences, up to 2^62 of them over broadcast inputs, would hang). */
  if (p.f.B == 0 || p.f.H == 0 || p.f.L == 0) {
    if (dscores)
      store_dscores(&p, dscores); /* p.ds is NULL: zeros */
    return ATTN_OK;
  }
  /* dx or dscores has elements, so B * H * L fits, unless only dscores
   * [B, L] has them and x's H is huge (D = 0): then the [B, H, L] score
   * buffer cannot exist. */
  int64_t items, tokens;
  if (__builtin_mul_overflow(p.f.B, p.f.H, &items) ||
      __builtin_mul_overflow(items, p.f.L, &tokens))
    return attn__fail(ctx, ATTN_ERR_NO_MEMORY,
                      "the score gradients of B * H * L = %lld * %lld * %lld tokens do not fit",
                      (long long)p.f.B, (long long)p.f.H, (long long)p.f.L);

  /* plan: per worker the scratch (pool.h); the score gradients of every token */
  int32_t threads = attn__threads_plan(
      ctx, (double)items * (double)(p.f.L + 1) * (double)(p.f.D + 1), MIN_WORK_PER_THREAD, items);
  pool_scratch sizing;
  size_t per = attn__pool_scratch(&p.f, true, NULL, &sizing), ds_bytes = 0, total;
  if (dscores && __builtin_mul_overflow((size_t)tokens, sizeof(double), &ds_bytes))
    ds_bytes = SIZE_MAX;
  if (__builtin_mul_overflow(per, (size_t)threads, &total) ||
      __builtin_add_overflow(total, ds_bytes, &total))
    total = SIZE_MAX; /* refused by the reservation */
  char *mem = NULL; /* sum and mean of F32 dout without dscores need none */
  if (total > 0) {
    if ((st = attn__ws_reserve(ctx, total)) != ATTN_OK)
      return st;
    mem = attn__ws_alloc(ctx, total);
  }

  /* run */
  p.f.work = mem;
  p.f.work_stride = per;
  p.ds = dscores && mem ? (double *)(mem + per * (size_t)threads) : NULL;
  attn__parallel_for(ctx, threads, items, bwd_item, &p);
  if (p.ds)
    store_dscores(&p, dscores);
  return ATTN_OK;
}

attn_status attn_pool_backward(attn_ctx *ctx, const attn_tensor *x, const attn_tensor *dout,
                               attn_tensor *dx, attn_tensor *dscores,
                               const attn_pool_params *params) {
  attn_status st = attn__op_begin(ctx, "attn_pool_backward");
  if (st != ATTN_OK)
    return st;
  return attn__op_end(ctx, pool_backward(ctx, x, dout, dx, dscores, params));
}

/* ---------------------------------------------------------------- attention pooling */

static attn_status pool_attention_backward(attn_ctx *ctx, const attn_tensor *queries,
                                           const attn_tensor *k, const attn_tensor *v,
                                           const attn_tensor *out, const attn_tensor *lse,
                                           const attn_tensor *dout, attn_tensor *dqueries,
                                           attn_tensor *dk, attn_tensor *dv,
                                           const attn_pool_attention_params *params) {
  /* Every operand once, so dqueries (which the SDPA check never sees) is
   * checked against all of them; shapes are SDPA's check. F32 only: the
   * SDPA backward's types. */
  const attn_operand more[] = {
      {ATTN_OPERAND("v", v, ATTN_DT_F32, 4, 4)},
      {ATTN_OPERAND("out", out, ATTN_DT_F32, 4, 4)},
      {ATTN_OPERAND("lse", lse, ATTN_DT_F32, 3, 3)},
      {ATTN_OPERAND("dout", dout, ATTN_DT_F32, 4, 4)},
      {ATTN_OPERAND("dqueries", dqueries, ATTN_DT_F32, 3, 3),
       .flags = ATTN_OPND_OUTPUT | ATTN_OPND_SAME_SHAPE, .like = ATTN_LIKE(0)},
      {ATTN_OPERAND("dk", dk, ATTN_DT_F32, 4, 4), .flags = ATTN_OPND_OUTPUT},
      {ATTN_OPERAND("dv", dv, ATTN_DT_F32, 4, 4), .flags = ATTN_OPND_OUTPUT},
  };
  attn_pool_attention_params prm;
  pool_attention_call c;
  attn_status st = attn__pool_attention_call(ctx, queries, k, ATTN_DT_F32, params, more,
                                             (int)(sizeof more / sizeof *more), &prm, &c);
  if (st != ATTN_OK)
    return st;
  ctx->op = "attn_pool_attention_backward (via attn_sdpa_backward)";
  return attn__sdpa_backward_shared_q(ctx, &c.q4, k, v, out, lse, dout, dqueries, dk, dv, &c.sp);
}

attn_status attn_pool_attention_backward(attn_ctx *ctx, const attn_tensor *queries,
                                         const attn_tensor *k, const attn_tensor *v,
                                         const attn_tensor *out, const attn_tensor *lse,
                                         const attn_tensor *dout, attn_tensor *dqueries,
                                         attn_tensor *dk, attn_tensor *dv,
                                         const attn_pool_attention_params *params) {
  attn_status st = attn__op_begin(ctx, "attn_pool_attention_backward");
  if (st != ATTN_OK)
    return st;
  return attn__op_end(ctx, pool_attention_backward(ctx, queries, k, v, out, lse, dout, dqueries,
                                                   dk, dv, params));
}
