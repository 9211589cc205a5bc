/* Pooling over the sequence axis: sum, mean, max and the softmax-weighted
 * average (attn_pool), and learned-query attention pooling through the SDPA
 * kernel (attn_pool_attention).
 *
 * attn_pool: check -> pool_problem (plain pointers and strides), plan
 * (threads, workspace), run. A work item is one sequence of one head, (b, h):
 * its D outputs are accumulated in double over the kept tokens, reading x
 * token by token (each token's row is contiguous), so a dropped token is
 * never read and a NaN reaches only the outputs of the rows that read it. */
#include "check.h"
#include "pool.h"
#include "sdpa.h"

#include <math.h>
#include <string.h>

/* A token costs a few flops per element; a thread earns its wake-up after
 * about this many elements read. */
#define MIN_WORK_PER_THREAD 32768.0

size_t attn__pool_scratch(const pool_problem *p, bool backward, char *base, pool_scratch *s) {
  attn_ws_layout l = {base, 0};
  size_t D = (size_t)p->D, L = (size_t)p->L;
  bool max = p->mode == ATTN_POOL_MAX, weighted = p->mode == ATTN_POOL_WEIGHTED;
  bool reads_x = !backward || max || weighted; /* sum and mean gradients do not read x */
  s->acc = !backward || max ? attn__ws_take(&l, D, sizeof(double)) : NULL;
  s->idx = backward && max ? attn__ws_take(&l, D, sizeof(int64_t)) : NULL;
  s->w = weighted ? attn__ws_take(&l, L, sizeof(double)) : NULL;
  s->row = reads_x && p->xdt != ATTN_DTYPE_F32 ? attn__ws_take(&l, D, sizeof(float)) : NULL;
  s->g = backward && p->odt != ATTN_DTYPE_F32 ? attn__ws_take(&l, D, sizeof(float)) : NULL;
  return l.used;
}

int64_t attn__pool_weights(const pool_problem *p, int64_t b, int64_t h, double *w) {
  int64_t s0 = b * p->ss[0] + h * p->ss[1];
  double m = -INFINITY;
  int64_t n = 0;
  for (int64_t l = 0; l < p->L; l++) {
    if (!attn__pool_kept(p, b, h, l))
      continue;
    double v = attn__elem_value(p->scores, p->sdt, s0 + l * p->ss[2]);
    if (isnan(v) || v == INFINITY)
      return -1; /* as softmax: NaN, or inf - inf */
    if (v > m)
      m = v;
    n++;
  }
  if (n == 0 || m == -INFINITY)
    return 0;
  double sum = 0;
  for (int64_t l = 0; l < p->L; l++) {
    w[l] = attn__pool_kept(p, b, h, l)
               ? exp((double)attn__elem_value(p->scores, p->sdt, s0 + l * p->ss[2]) - m)
               : 0.0;
    sum += w[l];
  }
  for (int64_t l = 0; l < p->L; l++)
    w[l] /= sum; /* sum >= 1: the maximum contributes exp(0) */
  return n;
}

static void pool_item(void *arg, int64_t item, int32_t worker) {
  const pool_problem *p = arg;
  int64_t b = item / p->H, h = item % p->H, D = p->D;
  pool_scratch s;
  attn__pool_scratch(p, false, p->work + p->work_stride * (size_t)worker, &s);
  double *acc = s.acc;
  void *o = attn__pool_out(p, b, h);
  int64_t n = 0;
  if (p->mode == ATTN_POOL_WEIGHTED) {
    n = attn__pool_weights(p, b, h, s.w);
    if (n < 0) {
      for (int64_t d = 0; d < D; d++)
        attn__elem_store(o, p->odt, d, NAN);
      return;
    }
  }
  for (int64_t d = 0; d < D; d++)
    acc[d] = p->mode == ATTN_POOL_MAX ? -INFINITY : 0.0;
  if (p->mode != ATTN_POOL_WEIGHTED || n > 0) {
    n = 0;
    for (int64_t l = 0; l < p->L; l++) {
      if (!attn__pool_kept(p, b, h, l))
        continue;
      const float *xt = attn__pool_token(p, b, h, l, s.row);
      n++;
      switch (p->mode) {
      case ATTN_POOL_MAX:
        /* NaN sticks: once acc is NaN no comparison replaces it. */
        for (int64_t d = 0; d < D; d++)
          if (xt[d] > acc[d] || isnan(xt[d]))
            acc[d] = isnan(acc[d]) ? acc[d] : xt[d];
        break;
      case ATTN_POOL_WEIGHTED:
        for (int64_t d = 0; d < D; d++)
          acc[d] += s.w[l] * xt[d];
        break;
      default:
        for (int64_t d = 0; d < D; d++)
          acc[d] += xt[d];
        break;
      }
    }
  }
  for (int64_t d = 0; d < D; d++) {
    double v = n == 0 ? 0.0 : acc[d];
    if (p->mode == ATTN_POOL_MEAN && n > 0)
      v /= (double)n;
    attn__elem_store(o, p->odt, d, v); /* the double rounded once to out's type */
  }
}

void attn_pool_params_init(attn_pool_params *p) {
  if (!p)
    return;
  memset(p, 0, sizeof *p);
  p->struct_size = sizeof *p;
}

void attn__pool_token_view(const attn_tensor *t, int64_t dims[3], int64_t strides[3]) {
  if (t->ndim == 2) {
    dims[0] = t->dims[0], dims[1] = 1, dims[2] = t->dims[1];
    strides[0] = t->strides[0], strides[1] = 0, strides[2] = t->strides[1];
  } else {
    memcpy(dims, t->dims, 3 * sizeof *dims);
    memcpy(strides, t->strides, 3 * sizeof *strides);
  }
}

/* A per-token tensor (keep or scores): [B, L] or, for 4-D x, [B, H, L]; each
 * dim equal to x's or 1. Writes its strides over the [B, H, L] view. */
static attn_status check_per_token(attn_ctx *ctx, const char *name, const attn_tensor *t,
                                   const pool_problem *p, int32_t x_ndim, int64_t *st3) {
  /* Handle, dtype and 2..3 dims were checked with the other operands. */
  if (t->ndim > x_ndim - 1)
    return attn__fail(ctx, ATTN_ERR_SHAPE, "%s has %d dims but must have 2..%d", name, (int)t->ndim,
                      (int)(x_ndim - 1));
  const int64_t want3[3] = {p->B, p->H, p->L};
  int64_t dims[3], strides[3];
  attn__pool_token_view(t, dims, strides);
  static const char *const axis[3] = {"B", "H", "L"};
  for (int a = 0; a < 3; a++) {
    if (dims[a] != want3[a] && dims[a] != 1)
      return attn__fail(ctx, ATTN_ERR_SHAPE,
                        "%s has %s = %lld but x has %lld (each dim must equal x's or be 1; "
                        "shape [B, L]%s)",
                        name, axis[a], (long long)dims[a], (long long)want3[a],
                        x_ndim == 4 ? " or [B, H, L]" : "");
    st3[a] = dims[a] == 1 || attn__empty(t) ? 0 : strides[a]; /* empty: never stepped */
  }
  return ATTN_OK;
}

attn_status attn__pool_check(attn_ctx *ctx, const attn_tensor *x, const attn_tensor *out,
                             const char *out_name, uint8_t out_flags,
                             const attn_pool_params *prm, const attn_operand *more, int n_more,
                             pool_problem *p) {
  attn_operand ops[8] = {
      {ATTN_OPERAND("x", x, ATTN_DT_FLOAT, 3, 4)},
      {ATTN_OPERAND(out_name, out, ATTN_DT_FLOAT, 2, 3), .flags = out_flags},
      {ATTN_OPERAND("params.keep", prm->keep, ATTN_DT_U8, 2, 3), .flags = ATTN_OPND_OPTIONAL},
      {ATTN_OPERAND("params.scores", prm->scores, ATTN_DT_FLOAT, 2, 3),
       .flags = ATTN_OPND_OPTIONAL},
  };
  int n = 4;
  for (int i = 0; i < n_more && n < 8; i++)
    ops[n++] = more[i];
  attn_status st = attn__check_operands(ctx, ops, n, NULL);
  if (st != ATTN_OK)
    return st;
  if (out->ndim != x->ndim - 1)
    return attn__fail(ctx, ATTN_ERR_SHAPE, "%s has %d dims but must have %d", out_name,
                      (int)out->ndim, (int)(x->ndim - 1));
  if (prm->mode < ATTN_POOL_SUM || prm->mode > ATTN_POOL_WEIGHTED)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "params.mode = %d is not an attn_pool_mode (0 sum, 1 mean, 2 max, 3 "
                      "weighted)",
                      (int)prm->mode);
  if (prm->reserved_)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG, "params.reserved_ = %d but must be 0",
                      (int)prm->reserved_);
  if ((prm->mode == ATTN_POOL_WEIGHTED) != (prm->scores != NULL))
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "params.scores is %s but mode is %d (scores are required by "
                      "ATTN_POOL_WEIGHTED and only by it)",
                      prm->scores ? "set" : "NULL", (int)prm->mode);

  memset(p, 0, sizeof *p);
  int32_t nd = x->ndim;
  p->mode = prm->mode;
  p->B = x->dims[0];
  p->H = nd == 4 ? x->dims[1] : 1;
  p->L = x->dims[nd - 2];
  p->D = x->dims[nd - 1];
  const int64_t want_out[3] = {p->B, p->H, p->D};
  for (int32_t a = 0; a < nd - 1; a++) {
    int64_t want = nd == 4 ? want_out[a] : (a == 0 ? p->B : p->D);
    if (out->dims[a] != want)
      return attn__fail(ctx, ATTN_ERR_SHAPE, "%s.shape[%d] = %lld but must be %lld (%s)", out_name,
                        (int)a, (long long)out->dims[a], (long long)want,
                        nd == 4 ? "[B, H, D] for x [B, H, L, D]" : "[B, D] for x [B, L, D]");
  }
  if (prm->lengths)
    for (int64_t b = 0; b < p->B; b++)
      if (prm->lengths[b] < 0 || prm->lengths[b] > p->L)
        return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                          "params.lengths[%lld] = %lld but must be in 0..L = %lld", (long long)b,
                          (long long)prm->lengths[b], (long long)p->L);
  if (prm->keep && (st = check_per_token(ctx, "params.keep", prm->keep, p, nd, p->ks)) != ATTN_OK)
    return st;
  if (prm->scores &&
      (st = check_per_token(ctx, "params.scores", prm->scores, p, nd, p->ss)) != ATTN_OK)
    return st;
  p->x = x->data;
  p->xdt = x->dtype;
  if (!attn__empty(x)) { /* an empty x (L = 0) is never read: its strides stay 0 */
    p->xs[0] = x->strides[0];
    p->xs[1] = nd == 4 ? x->strides[1] : 0;
    p->xs[2] = x->strides[nd - 2];
  }
  p->xs[3] = 1;
  p->out = out->data;
  p->odt = out->dtype;
  if (!attn__empty(out)) { /* likewise an empty out (D = 0; the backward's dout) */
    p->os[0] = out->strides[0];
    p->os[1] = nd == 4 ? out->strides[1] : 0;
  }
  p->os[2] = 1;
  p->lengths = prm->lengths;
  p->keep = prm->keep ? prm->keep->data : NULL;
  p->scores = prm->scores ? prm->scores->data : NULL;
  p->sdt = prm->scores ? prm->scores->dtype : ATTN_DTYPE_F32;
  return ATTN_OK;
}

static attn_status pool(attn_ctx *ctx, const attn_tensor *x, attn_tensor *out,
                        const attn_pool_params *params) {
  attn_pool_params prm;
  attn_pool_params_init(&prm);
  attn_status st = attn__read_params(ctx, &prm, sizeof prm, params);
  if (st != ATTN_OK)
    return st;
  pool_problem p;
  if ((st = attn__pool_check(ctx, x, out, "out", ATTN_OPND_OUTPUT, &prm, NULL, 0, &p)) != ATTN_OK)
    return st;
  if (attn__empty(out))
    return ATTN_OK; /* no sequence or no feature: nothing to write */

  /* plan */
  int64_t items = p.B * p.H;
  int32_t threads = attn__threads_plan(ctx, (double)items * (double)p.L * (double)p.D,
                                       MIN_WORK_PER_THREAD, items);
  pool_scratch sizing;
  size_t per = attn__pool_scratch(&p, false, NULL, &sizing), total;
  if (__builtin_mul_overflow(per, (size_t)threads, &total))
    total = SIZE_MAX; /* refused by the reservation */
  if ((st = attn__ws_reserve(ctx, total)) != ATTN_OK)
    return st;

  /* run */
  p.work = attn__ws_alloc(ctx, total);
  p.work_stride = per;
  attn__parallel_for(ctx, threads, items, pool_item, &p);
  return ATTN_OK;
}

attn_status attn_pool(attn_ctx *ctx, const attn_tensor *x, attn_tensor *out,
                      const attn_pool_params *params) {
  attn_status st = attn__op_begin(ctx, "attn_pool");
  if (st != ATTN_OK)
    return st;
  return attn__op_end(ctx, pool(ctx, x, out, params));
}

/* ---------------------------------------------------------------- attention pooling */

void attn_pool_attention_params_init(attn_pool_attention_params *p) {
  if (!p)
    return;
  memset(p, 0, sizeof *p);
  p->struct_size = sizeof *p;
}

/* A view of t with other dims and strides, valid for the duration of a call:
 * it is not in the context's tensor list and is never freed. */
static attn_tensor view_of(const attn_tensor *t, int32_t ndim, const int64_t *dims,
                           const int64_t *strides) {
  attn_tensor v = *t;
  v.ndim = ndim;
  memcpy(v.dims, dims, (size_t)ndim * sizeof *dims);
  memcpy(v.strides, strides, (size_t)ndim * sizeof *strides);
  v.prev = v.next = NULL;
  v.owns_data = false;
  return v;
}

attn_status attn__pool_attention_call(attn_ctx *ctx, const attn_tensor *queries,
                                      const attn_tensor *k, uint32_t dtypes,
                                      const attn_pool_attention_params *params,
                                      const attn_operand *more, int n_more,
                                      attn_pool_attention_params *prm, pool_attention_call *c) {
  attn_pool_attention_params_init(prm);
  attn_status st = attn__read_params(ctx, prm, sizeof *prm, params);
  if (st != ATTN_OK)
    return st;
  attn_operand ops[10] = {
      {ATTN_OPERAND("queries", queries, dtypes, 3, 3)},
      {ATTN_OPERAND("k", k, dtypes, 4, 4)},
      {ATTN_OPERAND("params.keep", prm->keep, ATTN_DT_U8, 2, 2), .flags = ATTN_OPND_OPTIONAL},
  };
  int n = 3;
  for (int i = 0; i < n_more && n < 10; i++)
    ops[n++] = more[i];
  if ((st = attn__check_operands(ctx, ops, n, NULL)) != ATTN_OK)
    return st;
  if (prm->reserved_)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG, "params.reserved_ = %d but must be 0",
                      (int)prm->reserved_);
  int64_t B = k->dims[0], L = k->dims[2];
  /* queries [Hq, M, D] as q [B, Hq, M, D] with a zero batch stride. */
  const int64_t qd[4] = {B, queries->dims[0], queries->dims[1], queries->dims[2]};
  const int64_t qs[4] = {0, queries->strides[0], queries->strides[1], 1};
  c->q4 = view_of(queries, 4, qd, qs);
  attn_sdpa_params_init(&c->sp);
  c->sp.scale = prm->scale;
  c->sp.kv_lens = prm->lengths;
  if (prm->keep) {
    if (prm->keep->dims[0] != B && prm->keep->dims[0] != 1)
      return attn__fail(ctx, ATTN_ERR_SHAPE,
                        "params.keep.shape[0] = %lld but must be B = %lld or 1",
                        (long long)prm->keep->dims[0], (long long)B);
    if (prm->keep->dims[1] != L)
      return attn__fail(ctx, ATTN_ERR_SHAPE,
                        "params.keep.shape[1] = %lld but must be L = k.shape[2] = %lld",
                        (long long)prm->keep->dims[1], (long long)L);
    /* [B, L] as the [B, 1, 1, L] mask SDPA broadcasts over heads and queries. */
    const int64_t kd[4] = {prm->keep->dims[0], 1, 1, L};
    const int64_t ks[4] = {prm->keep->strides[0], 0, 0, 1};
    c->keep4 = view_of(prm->keep, 4, kd, ks);
    c->sp.bool_mask = &c->keep4;
  }
  return ATTN_OK;
}

static attn_status pool_attention(attn_ctx *ctx, const attn_tensor *queries, const attn_tensor *k,
                                  const attn_tensor *v, attn_tensor *out,
                                  const attn_pool_attention_params *params) {
  attn_pool_attention_params prm;
  pool_attention_call c;
  attn_status st =
      attn__pool_attention_call(ctx, queries, k, ATTN_DT_FLOAT, params, NULL, 0, &prm, &c);
  if (st != ATTN_OK)
    return st;
  c.sp.weights = prm.weights;
  c.sp.lse = prm.lse;
  /* The rest is attn_sdpa's check and run; its messages name q (queries as
   * [B, Hq, M, D]) and bool_mask (keep as [B, 1, 1, L]), so say where they
   * come from. */
  ctx->op = "attn_pool_attention (via attn_sdpa)";
  return attn__sdpa(ctx, &c.q4, k, v, out, &c.sp);
}

attn_status attn_pool_attention(attn_ctx *ctx, const attn_tensor *queries, const attn_tensor *k,
                                const attn_tensor *v, attn_tensor *out,
                                const attn_pool_attention_params *params) {
  attn_status st = attn__op_begin(ctx, "attn_pool_attention");
  if (st != ATTN_OK)
    return st;
  return attn__op_end(ctx, pool_attention(ctx, queries, k, v, out, params));
}
