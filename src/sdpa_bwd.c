/* attn_sdpa_backward, attn_sdpa_varlen_backward: checks -> problem -> sdpa_bwd_tile.c. */
#include "check.h"
#include "sdpa_bwd.h"

#include <string.h>

/* The forward's parameter rules, and what only the backward adds. */
static attn_status check_params(attn_ctx *ctx, const attn_sdpa_params *p,
                                const attn_sdpa_backward_params *bp, int64_t B, int64_t Hq,
                                int64_t Lk, int64_t D) {
  attn_status st = attn__sdpa_check_params(ctx, p, B, Hq, Lk, D);
  if (st == ATTN_OK && bp->dsinks && !p->sinks)
    st = attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                    "bparams.dsinks is set but params.sinks is NULL (no sink to differentiate)");
  return st;
}

/* Head counts and dims, for the dense and the packed entry points: empty
 * batches and sequences are fine, empty heads are refused. */
static attn_status check_heads(attn_ctx *ctx, const attn_dims *d) {
  const int64_t *v = d->v;
  if (v[ATTN_SYM_D] == 0 || v[ATTN_SYM_DV] == 0 || v[ATTN_SYM_HQ] == 0 || v[ATTN_SYM_HKV] == 0)
    return attn__fail(ctx, ATTN_ERR_UNSUPPORTED,
                      "a head count or head dim of 0 (D = %lld, Dv = %lld, Hq = %lld, Hkv = "
                      "%lld): the backward takes empty batches and sequences only",
                      (long long)v[ATTN_SYM_D], (long long)v[ATTN_SYM_DV],
                      (long long)v[ATTN_SYM_HQ], (long long)v[ATTN_SYM_HKV]);
  return attn__sdpa_check_heads(ctx, v[ATTN_SYM_HQ], v[ATTN_SYM_HKV]);
}

static attn_status check(attn_ctx *ctx, const attn_tensor *q, const attn_tensor *k,
                         const attn_tensor *v, const attn_tensor *out, const attn_tensor *lse,
                         const attn_tensor *dout, attn_tensor *dq, attn_tensor *dk,
                         attn_tensor *dv, const attn_sdpa_params *params,
                         const attn_sdpa_backward_params *bparams, bool dq_inside,
                         attn_sdpa_bwd_problem *p) {
  attn_sdpa_params prm;
  attn_sdpa_params_init(&prm);
  attn_sdpa_backward_params bp;
  attn_sdpa_backward_params_init(&bp);
  attn_status st;
  if ((st = attn__read_params(ctx, &prm, sizeof prm, params)) != ATTN_OK ||
      (st = attn__read_params(ctx, &bp, sizeof bp, bparams)) != ATTN_OK)
    return st;
  enum { B = ATTN_SYM_B, HQ = ATTN_SYM_HQ, HKV = ATTN_SYM_HKV, LQ = ATTN_SYM_LQ,
         LK = ATTN_SYM_LK, D = ATTN_SYM_D, DV = ATTN_SYM_DV };
  const uint8_t opt_in = ATTN_OPND_OPTIONAL | ATTN_OPND_BROADCAST;
  int64_t ms[4] = {0}, bs[4] = {0};
  const attn_operand ops[] = {
      {ATTN_OPERAND("q", q, ATTN_DT_F32, 4, 4), .sym = {B, HQ, LQ, D}},
      {ATTN_OPERAND("k", k, ATTN_DT_F32, 4, 4), .sym = {B, HKV, LK, D}},
      {ATTN_OPERAND("v", v, ATTN_DT_F32, 4, 4), .sym = {B, HKV, LK, DV}},
      {ATTN_OPERAND("out", out, ATTN_DT_F32, 4, 4), .sym = {B, HQ, LQ, DV}},
      {ATTN_OPERAND("lse", lse, ATTN_DT_F32, 3, 3), .sym = {B, HQ, LQ}},
      {ATTN_OPERAND("dout", dout, ATTN_DT_F32, 4, 4), .sym = {B, HQ, LQ, DV}},
      {ATTN_OPERAND("params.mask", prm.mask, ATTN_DT_F32, 1, 4), .flags = opt_in,
       .bcast_nd = 4, .bcast = {B, HQ, LQ, LK}, .bstrides = ms},
      {ATTN_OPERAND("params.bool_mask", prm.bool_mask, ATTN_DT_U8, 1, 4), .flags = opt_in,
       .bcast_nd = 4, .bcast = {B, HQ, LQ, LK}, .bstrides = bs},
      /* dq_inside: dq is the caller's workspace, given after the plan */
      {ATTN_OPERAND("dq", dq, ATTN_DT_F32, 4, 4), .sym = {B, HQ, LQ, D},
       .flags = (uint8_t)(ATTN_OPND_OUTPUT | (dq_inside ? ATTN_OPND_OPTIONAL : 0))},
      {ATTN_OPERAND("dk", dk, ATTN_DT_F32, 4, 4), .sym = {B, HKV, LK, D},
       .flags = ATTN_OPND_OUTPUT},
      {ATTN_OPERAND("dv", dv, ATTN_DT_F32, 4, 4), .sym = {B, HKV, LK, DV},
       .flags = ATTN_OPND_OUTPUT},
      {ATTN_OPERAND("bparams.dmask", bp.dmask, ATTN_DT_F32, 4, 4), .sym = {B, HQ, LQ, LK},
       .flags = ATTN_OPND_OPTIONAL | ATTN_OPND_OUTPUT},
  };
  attn_dims d;
  if ((st = attn__check_operands(ctx, ops, (int)(sizeof ops / sizeof *ops), &d)) != ATTN_OK)
    return st;
  if ((st = check_heads(ctx, &d)) != ATTN_OK)
    return st;
  if ((st = check_params(ctx, &prm, &bp, d.v[B], d.v[HQ], d.v[LK], d.v[D])) != ATTN_OK)
    return st;
  /* Every leading dimension handed to BLAS must fit its int. */
  const attn_tensor *blas_ops[] = {q, k, v, dout, dq ? dq : q};
  const char *blas_names[] = {"q", "k", "v", "dout", "dq"};
  for (size_t t = 0; t < sizeof blas_ops / sizeof *blas_ops; t++)
    if (blas_ops[t]->strides[2] > INT32_MAX || d.v[D] > INT32_MAX || d.v[DV] > INT32_MAX)
      return attn__fail(ctx, ATTN_ERR_OVERFLOW,
                        "%s.strides[2] = %lld or a head dim exceeds what BLAS takes (2^31 - 1)",
                        blas_names[t], (long long)blas_ops[t]->strides[2]);
  memset(p, 0, sizeof *p);
  p->f.B = d.v[B], p->f.Hq = d.v[HQ], p->f.Hkv = d.v[HKV], p->f.G = p->f.Hq / p->f.Hkv;
  p->f.Lq = d.v[LQ], p->f.Lk = d.v[LK], p->f.D = d.v[D], p->f.Dv = d.v[DV];
  p->f.q = q->data, p->f.k = k->data, p->f.v = v->data, p->f.out = out->data, p->f.lse = lse->data; /* read only here */
  p->dout = dout->data, p->dq = dq ? dq->data : NULL, p->dk = dk->data, p->dv = dv->data;
  memcpy(p->f.qs, q->strides, sizeof p->f.qs);
  memcpy(p->f.ks, k->strides, sizeof p->f.ks);
  memcpy(p->f.vs, v->strides, sizeof p->f.vs);
  memcpy(p->f.os, out->strides, sizeof p->f.os);
  memcpy(p->f.lses, lse->strides, sizeof p->f.lses);
  memcpy(p->gs, dout->strides, sizeof p->gs);
  if (dq)
    memcpy(p->dqs, dq->strides, sizeof p->dqs);
  memcpy(p->dks, dk->strides, sizeof p->dks);
  memcpy(p->dvs, dv->strides, sizeof p->dvs);
  if (bp.dmask) {
    p->dmask = bp.dmask->data;
    memcpy(p->dms, bp.dmask->strides, sizeof p->dms);
  }
  p->dsinks = bp.dsinks;
  if (prm.mask) {
    p->f.mask = prm.mask->data;
    memcpy(p->f.ms, ms, sizeof ms);
  }
  if (prm.bool_mask) {
    p->f.bmask = prm.bool_mask->data;
    memcpy(p->f.bs, bs, sizeof bs);
  }
  p->f.kv_lens = prm.kv_lens;
  p->f.q_offsets = prm.q_offsets;
  attn__sdpa_fill_common(&p->f, &prm);
  return ATTN_OK;
}

/* Reserve the plan's workspace plus `more` bytes and, when dsinks is asked
 * for, the zeroed accumulator of its Hq sums (*acc; NULL without dsinks).
 * Only a caller's dsinks bounds Hq: an empty problem may claim 2^62 heads. */
static attn_status reserve(attn_ctx *ctx, const attn_sdpa_bwd_problem *p, size_t more,
                           double **acc) {
  size_t heads = p->dsinks ? (size_t)p->f.Hq : 0;
  attn_ws_layout l = {0};
  attn__ws_take(&l, heads, sizeof(double));
  size_t acc_bytes = l.used;
  attn__ws_take(&l, 1, p->ws_bytes);
  attn__ws_take(&l, 1, more);
  attn_status st = attn__ws_reserve(ctx, l.used);
  *acc = NULL;
  if (st == ATTN_OK && heads) {
    *acc = attn__ws_alloc(ctx, acc_bytes);
    memset(*acc, 0, heads * sizeof(double));
  }
  return st;
}

/* The caller's dsinks from the sums, in double until this one rounding. */
static void store_sinks(const attn_sdpa_bwd_problem *p, const double *acc) {
  if (p->dsinks)
    for (int64_t h = 0; h < p->f.Hq; h++)
      p->dsinks[h] = (float)acc[h];
}

void attn_sdpa_backward_params_init(attn_sdpa_backward_params *p) {
  if (!p)
    return;
  memset(p, 0, sizeof *p);
  p->struct_size = sizeof *p;
}

attn_status attn_sdpa_backward(attn_ctx *ctx, const attn_tensor *q, const attn_tensor *k,
                               const attn_tensor *v, const attn_tensor *out,
                               const attn_tensor *lse, const attn_tensor *dout, attn_tensor *dq,
                               attn_tensor *dk, attn_tensor *dv, const attn_sdpa_params *p,
                               const attn_sdpa_backward_params *bp) {
  attn_status st = attn__op_begin(ctx, "attn_sdpa_backward");
  if (st != ATTN_OK)
    return st;
  attn_sdpa_bwd_problem pr;
  if ((st = check(ctx, q, k, v, out, lse, dout, dq, dk, dv, p, bp, false, &pr)) == ATTN_OK) {
    attn__sdpa_bwd_plan(ctx, &pr);
    double *acc;
    if ((st = reserve(ctx, &pr, 0, &acc)) == ATTN_OK) {
      attn__sdpa_bwd_run(ctx, &pr, acc);
      store_sinks(&pr, acc);
    }
  }
  return attn__op_end(ctx, st);
}

attn_status attn__sdpa_backward_shared_q(attn_ctx *ctx, const attn_tensor *q,
                                         const attn_tensor *k, const attn_tensor *v,
                                         const attn_tensor *out, const attn_tensor *lse,
                                         const attn_tensor *dout, attn_tensor *dq_sum,
                                         attn_tensor *dk, attn_tensor *dv,
                                         const attn_sdpa_params *p) {
  attn_sdpa_bwd_problem pr;
  attn_status st = check(ctx, q, k, v, out, lse, dout, NULL, dk, dv, p, NULL, true, &pr);
  if (st != ATTN_OK)
    return st;
  attn__sdpa_bwd_plan(ctx, &pr);
  int64_t B = pr.f.B, Hq = pr.f.Hq, Lq = pr.f.Lq, D = pr.f.D;
  size_t dq_bytes;
  /* the per-batch dq: B * Hq * Lq * D floats, summed below */
  if (__builtin_mul_overflow((size_t)(B * Hq), (size_t)(Lq * D) * sizeof(float), &dq_bytes))
    dq_bytes = SIZE_MAX; /* refused by the reservation */
  double *acc;
  if ((st = reserve(ctx, &pr, attn__ws_round(dq_bytes), &acc)) != ATTN_OK)
    return st;
  pr.dq = attn__ws_alloc(ctx, attn__ws_round(dq_bytes));
  pr.dqs[0] = Hq * Lq * D, pr.dqs[1] = Lq * D, pr.dqs[2] = D, pr.dqs[3] = 1;
  attn__sdpa_bwd_run(ctx, &pr, acc);
  /* The sum over the batch, in batch order, in double until the store
   * (none without rows: queries of M = 0 may claim 2^62 heads). */
  float *o = dq_sum->data;
  for (int64_t h = 0; h < (attn__empty(dq_sum) ? 0 : Hq); h++)
    for (int64_t i = 0; i < Lq; i++)
      for (int64_t d = 0; d < D; d++) {
        double s = 0;
        for (int64_t b = 0; b < B; b++)
          s += pr.dq[b * pr.dqs[0] + h * pr.dqs[1] + i * pr.dqs[2] + d];
        o[h * dq_sum->strides[0] + i * dq_sum->strides[1] + d] = (float)s;
      }
  return ATTN_OK;
}

typedef struct {
  const attn_tensor *q, *k, *v, *out, *lse, *dout, *dq, *dk, *dv;
  const int64_t *cu_q, *cu_k;
  attn_sdpa_params prm;
  float *dsinks;
} varlen_args;

static attn_status varlen_check(attn_ctx *ctx, varlen_args *a, int32_t batch,
                                const attn_sdpa_params *params,
                                const attn_sdpa_backward_params *bparams) {
  attn_sdpa_params_init(&a->prm);
  attn_sdpa_backward_params bp;
  attn_sdpa_backward_params_init(&bp);
  attn_status st;
  if ((st = attn__read_params(ctx, &a->prm, sizeof a->prm, params)) != ATTN_OK ||
      (st = attn__read_params(ctx, &bp, sizeof bp, bparams)) != ATTN_OK)
    return st;
  if (batch < 0)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG, "batch = %d but must be >= 0", (int)batch);
  if (a->prm.mask || a->prm.bool_mask || a->prm.kv_lens || bp.dmask)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "params.mask, bool_mask, kv_lens and bparams.dmask must be NULL for "
                      "packed sequences");
  enum { HQ = ATTN_SYM_HQ, HKV = ATTN_SYM_HKV, D = ATTN_SYM_D, DV = ATTN_SYM_DV,
         TQ = ATTN_SYM_TQ, TK = ATTN_SYM_TK };
  const attn_operand ops[] = {
      {ATTN_OPERAND("q", a->q, ATTN_DT_F32, 3, 3), .sym = {TQ, HQ, D}},
      {ATTN_OPERAND("k", a->k, ATTN_DT_F32, 3, 3), .sym = {TK, HKV, D}},
      {ATTN_OPERAND("v", a->v, ATTN_DT_F32, 3, 3), .sym = {TK, HKV, DV}},
      {ATTN_OPERAND("out", a->out, ATTN_DT_F32, 3, 3), .sym = {TQ, HQ, DV}},
      {ATTN_OPERAND("lse", a->lse, ATTN_DT_F32, 2, 2), .sym = {HQ, TQ}},
      {ATTN_OPERAND("dout", a->dout, ATTN_DT_F32, 3, 3), .sym = {TQ, HQ, DV}},
      {ATTN_OPERAND("dq", a->dq, ATTN_DT_F32, 3, 3), .sym = {TQ, HQ, D},
       .flags = ATTN_OPND_OUTPUT},
      {ATTN_OPERAND("dk", a->dk, ATTN_DT_F32, 3, 3), .sym = {TK, HKV, D},
       .flags = ATTN_OPND_OUTPUT},
      {ATTN_OPERAND("dv", a->dv, ATTN_DT_F32, 3, 3), .sym = {TK, HKV, DV},
       .flags = ATTN_OPND_OUTPUT},
  };
  attn_dims d;
  if ((st = attn__check_operands(ctx, ops, (int)(sizeof ops / sizeof *ops), &d)) != ATTN_OK)
    return st;
  if ((st = check_heads(ctx, &d)) != ATTN_OK)
    return st;
  if ((st = attn__sdpa_check_offsets(ctx, "cu_seqlens_q", a->cu_q, batch, d.v[TQ])) != ATTN_OK ||
      (st = attn__sdpa_check_offsets(ctx, "cu_seqlens_k", a->cu_k, batch, d.v[TK])) != ATTN_OK ||
      (st = check_params(ctx, &a->prm, &bp, batch, d.v[HQ], d.v[TK], d.v[D])) != ATTN_OK)
    return st;
  const attn_tensor *blas_ops[] = {a->q, a->k, a->v, a->dout, a->dq};
  for (size_t t = 0; t < sizeof blas_ops / sizeof *blas_ops; t++)
    if (blas_ops[t]->strides[0] > INT32_MAX || d.v[D] > INT32_MAX || d.v[DV] > INT32_MAX)
      return attn__fail(ctx, ATTN_ERR_OVERFLOW,
                        "a token stride or head dim exceeds what BLAS takes (2^31 - 1)");
  a->dsinks = bp.dsinks;
  return ATTN_OK;
}

/* Sequence s of a packed batch as a B = 1 problem over [1, H, L, D] views. */
static void varlen_problem(const varlen_args *a, int32_t s, attn_sdpa_bwd_problem *p) {
  memset(p, 0, sizeof *p);
  p->f.B = 1, p->f.Hq = a->q->dims[1], p->f.Hkv = a->k->dims[1], p->f.G = p->f.Hq / p->f.Hkv;
  p->f.D = a->q->dims[2], p->f.Dv = a->v->dims[2];
  p->f.Lq = a->cu_q[s + 1] - a->cu_q[s];
  p->f.Lk = a->cu_k[s + 1] - a->cu_k[s];
  /* An empty range may start one past the last token: do not offset by it. */
  int64_t q0 = p->f.Lq ? a->cu_q[s] : 0, k0 = p->f.Lk ? a->cu_k[s] : 0;
  const attn_tensor *ts[8] = {a->q, a->k, a->v, a->out, a->dout, a->dq, a->dk, a->dv};
  int64_t *st[8] = {p->f.qs, p->f.ks, p->f.vs, p->f.os, p->gs, p->dqs, p->dks, p->dvs};
  for (int t = 0; t < 8; t++) {
    st[t][0] = 0;
    st[t][1] = ts[t]->strides[1];
    st[t][2] = ts[t]->strides[0];
    st[t][3] = 1;
  }
  p->f.q = (const float *)a->q->data + q0 * a->q->strides[0];
  p->f.k = (const float *)a->k->data + k0 * a->k->strides[0];
  p->f.v = (const float *)a->v->data + k0 * a->v->strides[0];
  p->f.out = (float *)a->out->data + q0 * a->out->strides[0]; /* read only */
  p->dout = (const float *)a->dout->data + q0 * a->dout->strides[0];
  p->dq = (float *)a->dq->data + q0 * a->dq->strides[0];
  p->dk = (float *)a->dk->data + k0 * a->dk->strides[0];
  p->dv = (float *)a->dv->data + k0 * a->dv->strides[0];
  p->f.lse = (float *)a->lse->data + q0 * a->lse->strides[1];
  p->f.lses[0] = 0, p->f.lses[1] = a->lse->strides[0], p->f.lses[2] = a->lse->strides[1];
  p->f.q_offsets = a->prm.q_offsets ? a->prm.q_offsets + s : NULL;
  p->dsinks = a->dsinks;
  attn__sdpa_fill_common(&p->f, &a->prm);
}

attn_status attn_sdpa_varlen_backward(attn_ctx *ctx, const attn_tensor *q, const attn_tensor *k,
                                      const attn_tensor *v, const attn_tensor *out,
                                      const attn_tensor *lse, const attn_tensor *dout,
                                      attn_tensor *dq, attn_tensor *dk, attn_tensor *dv,
                                      int32_t batch, const int64_t *cu_seqlens_q,
                                      const int64_t *cu_seqlens_k, const attn_sdpa_params *p,
                                      const attn_sdpa_backward_params *bp) {
  attn_status st = attn__op_begin(ctx, "attn_sdpa_varlen_backward");
  if (st != ATTN_OK)
    return st;
  varlen_args a = {q, k, v, out, lse, dout, dq, dk, dv, cu_seqlens_q, .cu_k = cu_seqlens_k};
  if ((st = varlen_check(ctx, &a, batch, p, bp)) != ATTN_OK)
    return attn__op_end(ctx, st);
  /* One problem per sequence, in order; the workspace is the largest plan. */
  size_t most = 0;
  attn_sdpa_bwd_problem pr;
  for (int32_t s = 0; s < batch; s++) {
    varlen_problem(&a, s, &pr);
    attn__sdpa_bwd_plan(ctx, &pr);
    most = pr.ws_bytes > most ? pr.ws_bytes : most;
  }
  pr.ws_bytes = most;
  /* No sequence (batch 0) left pr unset: the sink sums still go out, as 0. */
  pr.f.Hq = q->dims[1], pr.dsinks = a.dsinks;
  double *acc;
  if ((st = reserve(ctx, &pr, 0, &acc)) == ATTN_OK) {
    /* A sequence without queries still runs: its keys get zero gradients. */
    for (int32_t s = 0; s < batch; s++) {
      varlen_problem(&a, s, &pr);
      attn__sdpa_bwd_plan(ctx, &pr);
      attn__sdpa_bwd_run(ctx, &pr, acc);
    }
    store_sinks(&pr, acc);
  }
  return attn__op_end(ctx, st);
}
