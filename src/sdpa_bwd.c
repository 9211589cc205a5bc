/* Backward of scaled dot-product attention, FlashAttention-2 style: nothing
 * of size Lq x Lk is stored; the logits are recomputed tile by tile with the
 * forward's visibility and logit pipeline (logits.h), and the forward's
 * log-sum-exp turns them straight into weights P = exp(S - lse):
 *
 *   D_i = dout_i . out_i
 *   dV += P^T dout,  dP = dout V^T,  dS = P (dP - D)
 *   dX = scale * dS * cap'(.)   (cap' = 1 - tanh^2, with a soft-cap)
 *   dQ += dX K,  dK += dX^T Q
 *
 * every product through blas.c. A work item is (batch, kv head): it walks
 * the key tiles in order and, for each, every query head of the group and
 * every query block that sees the tile. dK and dV of the tile are summed in
 * the workspace (the group's heads included: grouped-query gradients) and
 * stored once; dQ rows are accumulated in dq itself, always by the item's
 * one thread in key-tile order. No atomics and no partial sums merged in
 * thread order: the bits do not depend on the thread count. The price is
 * parallelism over B * Hkv items only (see the header).
 *
 * A key with weight 0 is skipped by hand where the other operand of a
 * product holds a non-finite value (0 * NaN is NaN): a hidden key's NaN
 * never leaks, as in the forward. */
#include "check.h"
#include "logits.h"
#include "sdpa.h"

#include <math.h>
#include <string.h>

/* Query rows per block and keys per tile: each of the three Br x Bc tiles
 * (P, dS, the soft-cap factors) is 32 KiB, with the K and V tile beside
 * them in L2. */
#define BR 64
#define BC 128

/* The forward's problem (q, k, v, its out and lse as inputs, the logit and
 * visibility fields) and the backward's own operands. */
typedef struct {
  attn_sdpa_problem f;
  const float *dout;
  float *dq, *dk, *dv, *dmask, *dsinks;
  int64_t gs[4], dqs[4], dks[4], dvs[4], dms[4];
  /* plan */
  int32_t threads;
  size_t per_thread, ws_bytes;
  /* run */
  char *work;         /* threads * per_thread bytes */
  double *sink_parts; /* [B, Hq]: each item's share of dsinks */
} bwd_problem;

typedef struct {
  float *p;   /* BR x BC: weights */
  float *ds;  /* BR x BC: dP, then dX */
  float *cap; /* BR x BC: cap'(x), with a soft-cap */
  float *dka; /* BC x D */
  float *dva; /* BC x Dv */
} bwd_work;

/* Row (a, b, c) of a [.., .., .., D] F32 view (the forward's problem holds
 * its tensors untyped: the backward takes F32 only). */
static const float *row_of(const void *base, const int64_t *s, int64_t a, int64_t b,
                           int64_t c) {
  return (const float *)base + a * s[0] + b * s[1] + c * s[2];
}

static void work_layout(const bwd_problem *p, attn_ws_layout *l, bwd_work *w) {
  w->p = attn__ws_take(l, BR * BC, sizeof(float));
  w->ds = attn__ws_take(l, BR * BC, sizeof(float));
  w->cap = p->f.softcap > 0 ? attn__ws_take(l, BR * BC, sizeof(float)) : NULL;
  w->dka = attn__ws_take(l, (size_t)(BC * p->f.D), sizeof(float));
  w->dva = attn__ws_take(l, (size_t)(BC * p->f.Dv), sizeof(float));
}

/* y[n, d] += w[rows, n]^T x[rows, d], skipping zero weights. */
static void acc_tn_nonzero(const float *w, int64_t rows, int64_t n, const float *x, int64_t ldx,
                           int64_t d, float *y) {
  for (int64_t r = 0; r < rows; r++)
    for (int64_t j = 0; j < n; j++) {
      float wv = w[r * BC + j];
      if (wv != 0)
        for (int64_t c = 0; c < d; c++)
          y[j * d + c] += wv * x[r * ldx + c];
    }
}

/* y[rows, d] += w[rows, n] x[n, d], skipping zero weights. */
static void acc_nn_nonzero(const float *w, int64_t rows, int64_t n, const float *x, int64_t ldx,
                           int64_t d, float *y, int64_t ldy) {
  for (int64_t r = 0; r < rows; r++)
    for (int64_t j = 0; j < n; j++) {
      float wv = w[r * BC + j];
      if (wv != 0)
        for (int64_t c = 0; c < d; c++)
          y[r * ldy + c] += wv * x[j * ldx + c];
    }
}

static double dot(const float *a, const float *b, int64_t n) {
  double s = 0;
  for (int64_t d = 0; d < n; d++)
    s += (double)a[d] * (double)b[d];
  return s;
}

/* One query block (rows i0.., head h) against the key tile j0..j0+n: P, dS
 * and the three products into dq and the tile's dK / dV sums. */
static void block(const bwd_problem *p, const bwd_work *w, int64_t b, int64_t h, int64_t i0,
                  int64_t rows, int64_t j0, int64_t n, const float *kt, const float *vt,
                  bool k_finite) {
  const float *qb = row_of(p->f.q, p->f.qs, b, h, i0);
  const float *gb = p->dout + b * p->gs[0] + h * p->gs[1] + i0 * p->gs[2];
  float *dqb = p->dq + b * p->dqs[0] + h * p->dqs[1] + i0 * p->dqs[2];
  attn__sgemm_nt((int)rows, (int)n, (int)p->f.D, p->f.scale, qb, (int)p->f.qs[2], kt, (int)p->f.ks[2],
                 w->p, BC);
  attn__sgemm_nt((int)rows, (int)n, (int)p->f.Dv, 1.0f, gb, (int)p->gs[2], vt, (int)p->f.vs[2],
                 w->ds, BC);
  for (int64_t r = 0; r < rows; r++) {
    int64_t i = i0 + r, lo, hi;
    attn__sdpa_visible_keys(&p->f, b, i, &lo, &hi);
    int64_t a = lo - j0 < 0 ? 0 : (lo - j0 > n ? n : lo - j0);
    int64_t e = hi - j0 < a ? a : (hi - j0 > n ? n : hi - j0);
    float *s = w->p + r * BC, *ds = w->ds + r * BC, *cap = w->cap ? w->cap + r * BC : NULL;
    if (cap) {
      attn__logits_cap(s + a, e - a, p->f.softcap);
      for (int64_t j = a; j < e; j++) {
        float t = s[j] / p->f.softcap;
        cap[j] = 1.0f - t * t;
      }
    }
    if (p->f.alibi)
      attn__logits_alibi(s + a, e - a, p->f.alibi[h], j0 + a - attn__sdpa_key_position(&p->f, b, i));
    attn__logits_mask(s + a, e - a,
                      p->f.mask ? p->f.mask + b * p->f.ms[0] + h * p->f.ms[1] + i * p->f.ms[2] +
                                    (j0 + a) * p->f.ms[3]
                              : NULL,
                      p->f.ms[3],
                      p->f.bmask ? p->f.bmask + b * p->f.bs[0] + h * p->f.bs[1] + i * p->f.bs[2] +
                                     (j0 + a) * p->f.bs[3]
                               : NULL,
                      p->f.bs[3]);
    float lse = p->f.lse[b * p->f.lses[0] + h * p->f.lses[1] + i * p->f.lses[2]];
    /* D_i from the forward's output: one dot product per row and tile, far
     * below the tile's products. */
    float di = (float)dot(gb + r * p->gs[2], row_of(p->f.out, p->f.os, b, h, i),
                          p->f.Dv);
    float *dmrow = p->dmask ? p->dmask + b * p->dms[0] + h * p->dms[1] + i * p->dms[2] +
                                  j0 * p->dms[3]
                            : NULL;
    for (int64_t j = 0; j < n; j++) {
      /* lse = -inf: the forward saw nothing here (weights 0); lse NaN: a
       * NaN row, whose NaN reaches every visible key. */
      float pj = 0.0f;
      if (j >= a && j < e && s[j] != -INFINITY && lse != -INFINITY)
        pj = expf(s[j] - lse);
      float g = pj != 0 ? pj * (ds[j] - di) : 0.0f;
      if (dmrow)
        dmrow[j * p->dms[3]] = g;
      if (cap && pj != 0)
        g *= cap[j];
      s[j] = pj;
      ds[j] = p->f.scale * g;
    }
  }
  if (attn__sdpa_all_finite(gb, rows, p->f.Dv, p->gs[2]))
    attn__sgemm_tn_acc((int)n, (int)p->f.Dv, (int)rows, w->p, BC, gb, (int)p->gs[2], w->dva,
                       (int)p->f.Dv);
  else
    acc_tn_nonzero(w->p, rows, n, gb, p->gs[2], p->f.Dv, w->dva);
  if (attn__sdpa_all_finite(qb, rows, p->f.D, p->f.qs[2]))
    attn__sgemm_tn_acc((int)n, (int)p->f.D, (int)rows, w->ds, BC, qb, (int)p->f.qs[2], w->dka,
                       (int)p->f.D);
  else
    acc_tn_nonzero(w->ds, rows, n, qb, p->f.qs[2], p->f.D, w->dka);
  if (k_finite)
    attn__sgemm_nn_acc((int)rows, (int)p->f.D, (int)n, w->ds, BC, kt, (int)p->f.ks[2], dqb,
                       (int)p->dqs[2]);
  else
    acc_nn_nonzero(w->ds, rows, n, kt, p->f.ks[2], p->f.D, dqb, p->dqs[2]);
}

/* Zero the item's dq rows and dmask rows; its share of dsinks. */
static void item_start(const bwd_problem *p, int64_t b, int64_t hk) {
  for (int64_t h = hk * p->f.G; h < (hk + 1) * p->f.G; h++) {
    double sink = 0;
    for (int64_t i = 0; i < p->f.Lq; i++) {
      memset(p->dq + b * p->dqs[0] + h * p->dqs[1] + i * p->dqs[2], 0,
             (size_t)p->f.D * sizeof(float));
      if (p->dmask) {
        float *m = p->dmask + b * p->dms[0] + h * p->dms[1] + i * p->dms[2];
        for (int64_t j = 0; j < p->f.Lk; j++)
          m[j * p->dms[3]] = 0.0f;
      }
      if (p->dsinks) {
        /* The sink is a logit with value 0 in the output: dS = -P_sink D_i. */
        float lse = p->f.lse[b * p->f.lses[0] + h * p->f.lses[1] + i * p->f.lses[2]];
        if (lse == -INFINITY)
          continue;
        double di = dot(p->dout + b * p->gs[0] + h * p->gs[1] + i * p->gs[2],
                        row_of(p->f.out, p->f.os, b, h, i), p->f.Dv);
        sink -= exp((double)p->f.sinks[h] - (double)lse) * di;
      }
    }
    if (p->dsinks)
      p->sink_parts[b * p->f.Hq + h] = sink;
  }
}

static void run_item(void *arg, int64_t item, int32_t worker) {
  const bwd_problem *p = arg;
  int64_t b = item / p->f.Hkv, hk = item % p->f.Hkv;
  attn_ws_layout l = {p->work + (size_t)worker * p->per_thread, 0};
  bwd_work w;
  work_layout(p, &l, &w);
  item_start(p, b, hk);
  for (int64_t j0 = 0; j0 < p->f.Lk; j0 += BC) {
    int64_t n = p->f.Lk - j0 < BC ? p->f.Lk - j0 : BC;
    const float *kt = row_of(p->f.k, p->f.ks, b, hk, j0);
    const float *vt = row_of(p->f.v, p->f.vs, b, hk, j0);
    memset(w.dka, 0, (size_t)(n * p->f.D) * sizeof(float));
    memset(w.dva, 0, (size_t)(n * p->f.Dv) * sizeof(float));
    bool kf = attn__sdpa_all_finite(kt, n, p->f.D, p->f.ks[2]);
    for (int64_t h = hk * p->f.G; h < (hk + 1) * p->f.G; h++)
      for (int64_t i0 = 0; i0 < p->f.Lq; i0 += BR) {
        int64_t rows = p->f.Lq - i0 < BR ? p->f.Lq - i0 : BR, lo0, hi0, lo1, hi1;
        attn__sdpa_visible_keys(&p->f, b, i0, &lo0, &hi0);
        attn__sdpa_visible_keys(&p->f, b, i0 + rows - 1, &lo1, &hi1);
        if (hi1 <= j0 || lo0 >= j0 + n) /* no row of the block sees the tile */
          continue;
        block(p, &w, b, h, i0, rows, j0, n, kt, vt, kf);
      }
    for (int64_t j = 0; j < n; j++) {
      memcpy(p->dk + b * p->dks[0] + hk * p->dks[1] + (j0 + j) * p->dks[2], w.dka + j * p->f.D,
             (size_t)p->f.D * sizeof(float));
      memcpy(p->dv + b * p->dvs[0] + hk * p->dvs[1] + (j0 + j) * p->dvs[2], w.dva + j * p->f.Dv,
             (size_t)p->f.Dv * sizeof(float));
    }
  }
}

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
                         bwd_problem *p) {
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

/* Threads and the exact workspace: per-thread tiles, then the sink shares. */
static void plan(const attn_ctx *ctx, bwd_problem *p) {
  double flops = 10.0 * (double)p->f.B * (double)p->f.Hq * (double)p->f.Lq * (double)p->f.Lk *
                 (double)(p->f.D > p->f.Dv ? p->f.D : p->f.Dv);
  /* A multi-threaded BLAS serialises calls from several threads (blas.c). */
  p->threads = attn__blas_threads() > 1
                   ? 1
                   : attn__threads_plan(ctx, flops, 4e6, p->f.B * p->f.Hkv);
  attn_ws_layout l = {0};
  bwd_work w;
  work_layout(p, &l, &w);
  p->per_thread = attn__ws_round(l.used);
  attn_ws_layout all = {0};
  attn__ws_take(&all, (size_t)p->threads, p->per_thread);
  if (p->dsinks)
    attn__ws_take(&all, (size_t)(p->f.B * p->f.Hq), sizeof(double));
  p->ws_bytes = all.used;
}

/* Run a planned problem; the sink gradient is added to sink_acc[Hq]
 * (batches in order), so packed sequences can sum theirs. */
static void run(attn_ctx *ctx, bwd_problem *p, double *sink_acc) {
  size_t mark = attn__ws_mark(ctx);
  attn_ws_layout all = {attn__ws_alloc(ctx, p->ws_bytes), 0};
  p->work = attn__ws_take(&all, (size_t)p->threads, p->per_thread);
  if (p->dsinks)
    p->sink_parts = attn__ws_take(&all, (size_t)(p->f.B * p->f.Hq), sizeof(double));
  attn__parallel_for(ctx, p->threads, p->f.B * p->f.Hkv, run_item, p);
  if (p->dsinks)
    for (int64_t h = 0; h < p->f.Hq; h++)
      for (int64_t b = 0; b < p->f.B; b++)
        sink_acc[h] += p->sink_parts[b * p->f.Hq + h];
  attn__ws_release(ctx, mark);
}

/* The caller's dsinks from the sums, in double until this one rounding. */
static void store_sinks(const bwd_problem *p, const double *acc) {
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
  bwd_problem pr;
  if ((st = check(ctx, q, k, v, out, lse, dout, dq, dk, dv, p, bp, false, &pr)) == ATTN_OK) {
    plan(ctx, &pr);
    size_t acc_bytes = attn__ws_round((size_t)pr.f.Hq * sizeof(double));
    if ((st = attn__ws_reserve(ctx, acc_bytes + pr.ws_bytes)) == ATTN_OK) {
      double *acc = attn__ws_alloc(ctx, acc_bytes);
      memset(acc, 0, (size_t)pr.f.Hq * sizeof(double));
      run(ctx, &pr, acc);
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
  bwd_problem pr;
  attn_status st = check(ctx, q, k, v, out, lse, dout, NULL, dk, dv, p, NULL, true, &pr);
  if (st != ATTN_OK)
    return st;
  plan(ctx, &pr);
  int64_t B = pr.f.B, Hq = pr.f.Hq, Lq = pr.f.Lq, D = pr.f.D;
  size_t acc_bytes = attn__ws_round((size_t)Hq * sizeof(double)), dq_bytes, total;
  /* the per-batch dq: B * Hq * Lq * D floats, summed below */
  if (__builtin_mul_overflow((size_t)(B * Hq), (size_t)(Lq * D) * sizeof(float), &dq_bytes) ||
      __builtin_add_overflow(acc_bytes + pr.ws_bytes, attn__ws_round(dq_bytes), &total))
    total = SIZE_MAX; /* refused by the reservation */
  if ((st = attn__ws_reserve(ctx, total)) != ATTN_OK)
    return st;
  double *acc = attn__ws_alloc(ctx, acc_bytes);
  memset(acc, 0, (size_t)Hq * sizeof(double));
  pr.dq = attn__ws_alloc(ctx, attn__ws_round(dq_bytes));
  pr.dqs[0] = Hq * Lq * D, pr.dqs[1] = Lq * D, pr.dqs[2] = D, pr.dqs[3] = 1;
  run(ctx, &pr, acc);
  /* The sum over the batch, in batch order, in double until the store. */
  float *o = dq_sum->data;
  for (int64_t h = 0; h < Hq; h++)
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
  if (batch < 1)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG, "batch = %d but must be >= 1", (int)batch);
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
static void varlen_problem(const varlen_args *a, int32_t s, bwd_problem *p) {
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
  bwd_problem pr;
  for (int32_t s = 0; s < batch; s++) {
    varlen_problem(&a, s, &pr);
    plan(ctx, &pr);
    most = pr.ws_bytes > most ? pr.ws_bytes : most;
  }
  size_t acc_bytes = attn__ws_round((size_t)pr.f.Hq * sizeof(double));
  if ((st = attn__ws_reserve(ctx, acc_bytes + most)) == ATTN_OK) {
    double *acc = attn__ws_alloc(ctx, acc_bytes);
    memset(acc, 0, (size_t)pr.f.Hq * sizeof(double));
    /* A sequence without queries still runs: its keys get zero gradients. */
    for (int32_t s = 0; s < batch; s++) {
      varlen_problem(&a, s, &pr);
      plan(ctx, &pr);
      run(ctx, &pr, acc);
    }
    store_sinks(&pr, acc);
  }
  return attn__op_end(ctx, st);
}
