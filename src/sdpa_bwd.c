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

#include <math.h>
#include <string.h>

/* Query rows per block and keys per tile: each of the three Br x Bc tiles
 * (P, dS, the soft-cap factors) is 32 KiB, with the K and V tile beside
 * them in L2. */
#define BR 64
#define BC 128
/* As the forward: |q_offsets[b]| bound keeping positions far from overflow. */
#define MAX_Q_OFFSET ((int64_t)1 << 60)

typedef struct {
  int64_t B, Hq, Hkv, G, Lq, Lk, D, Dv;
  const float *q, *k, *v, *o, *lse, *dout;
  float *dq, *dk, *dv, *dmask, *dsinks;
  int64_t qs[4], ks[4], vs[4], os[4], ls[3], gs[4], dqs[4], dks[4], dvs[4], dms[4];
  const float *mask;
  int64_t ms[4];
  const uint8_t *bmask;
  int64_t bs[4];
  const int64_t *kv_lens, *q_offsets;
  const float *alibi, *sinks;
  float scale, softcap;
  bool causal, window, bottom_right;
  int64_t wl, wr;
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

static void work_layout(const bwd_problem *p, attn_ws_layout *l, bwd_work *w) {
  w->p = attn__ws_take(l, BR * BC, sizeof(float));
  w->ds = attn__ws_take(l, BR * BC, sizeof(float));
  w->cap = p->softcap > 0 ? attn__ws_take(l, BR * BC, sizeof(float)) : NULL;
  w->dka = attn__ws_take(l, (size_t)(BC * p->D), sizeof(float));
  w->dva = attn__ws_take(l, (size_t)(BC * p->Dv), sizeof(float));
}

/* The forward's positions and visible ranges (attn.h, attn_sdpa_params). */
static int64_t key_position(const bwd_problem *p, int64_t b, int64_t i) {
  if (p->q_offsets)
    return p->q_offsets[b] + i;
  if (!p->bottom_right)
    return i;
  return i + (p->kv_lens ? p->kv_lens[b] : p->Lk) - p->Lq;
}

/* Keys visible to row i of batch b by position: [*lo, *hi), non-decreasing
 * in i (the block skipping relies on it). */
static void visible_keys(const bwd_problem *p, int64_t b, int64_t i, int64_t *lo, int64_t *hi) {
  int64_t ip = key_position(p, b, i);
  int64_t l = 0, h = p->kv_lens ? p->kv_lens[b] : p->Lk;
  if (p->causal && ip + 1 < h)
    h = ip + 1;
  if (p->window) {
    if (ip - p->wl > l)
      l = ip - p->wl;
    if (ip + p->wr + 1 < h)
      h = ip + p->wr + 1;
  }
  if (h < l)
    h = l;
  *lo = l < 0 ? 0 : l;
  *hi = h < 0 ? 0 : h;
}

static bool all_finite(const float *x, int64_t rows, int64_t cols, int64_t ld) {
  float acc = 0; /* x - x is 0 for finite x, NaN otherwise */
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < cols; c++)
      acc += x[r * ld + c] - x[r * ld + c];
  return acc == 0;
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
  const float *qb = p->q + b * p->qs[0] + h * p->qs[1] + i0 * p->qs[2];
  const float *gb = p->dout + b * p->gs[0] + h * p->gs[1] + i0 * p->gs[2];
  float *dqb = p->dq + b * p->dqs[0] + h * p->dqs[1] + i0 * p->dqs[2];
  attn__sgemm_nt((int)rows, (int)n, (int)p->D, p->scale, qb, (int)p->qs[2], kt, (int)p->ks[2],
                 w->p, BC);
  attn__sgemm_nt((int)rows, (int)n, (int)p->Dv, 1.0f, gb, (int)p->gs[2], vt, (int)p->vs[2],
                 w->ds, BC);
  for (int64_t r = 0; r < rows; r++) {
    int64_t i = i0 + r, lo, hi;
    visible_keys(p, b, i, &lo, &hi);
    int64_t a = lo - j0 < 0 ? 0 : (lo - j0 > n ? n : lo - j0);
    int64_t e = hi - j0 < a ? a : (hi - j0 > n ? n : hi - j0);
    float *s = w->p + r * BC, *ds = w->ds + r * BC, *cap = w->cap ? w->cap + r * BC : NULL;
    if (cap) {
      attn__logits_cap(s + a, e - a, p->softcap);
      for (int64_t j = a; j < e; j++) {
        float t = s[j] / p->softcap;
        cap[j] = 1.0f - t * t;
      }
    }
    if (p->alibi)
      attn__logits_alibi(s + a, e - a, p->alibi[h], j0 + a - key_position(p, b, i));
    attn__logits_mask(s + a, e - a,
                      p->mask ? p->mask + b * p->ms[0] + h * p->ms[1] + i * p->ms[2] +
                                    (j0 + a) * p->ms[3]
                              : NULL,
                      p->ms[3],
                      p->bmask ? p->bmask + b * p->bs[0] + h * p->bs[1] + i * p->bs[2] +
                                     (j0 + a) * p->bs[3]
                               : NULL,
                      p->bs[3]);
    float lse = p->lse[b * p->ls[0] + h * p->ls[1] + i * p->ls[2]];
    /* D_i from the forward's output: one dot product per row and tile, far
     * below the tile's products. */
    float di = (float)dot(gb + r * p->gs[2], p->o + b * p->os[0] + h * p->os[1] + i * p->os[2],
                          p->Dv);
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
      ds[j] = p->scale * g;
    }
  }
  if (all_finite(gb, rows, p->Dv, p->gs[2]))
    attn__sgemm_tn_acc((int)n, (int)p->Dv, (int)rows, w->p, BC, gb, (int)p->gs[2], w->dva,
                       (int)p->Dv);
  else
    acc_tn_nonzero(w->p, rows, n, gb, p->gs[2], p->Dv, w->dva);
  if (all_finite(qb, rows, p->D, p->qs[2]))
    attn__sgemm_tn_acc((int)n, (int)p->D, (int)rows, w->ds, BC, qb, (int)p->qs[2], w->dka,
                       (int)p->D);
  else
    acc_tn_nonzero(w->ds, rows, n, qb, p->qs[2], p->D, w->dka);
  if (k_finite)
    attn__sgemm_nn_acc((int)rows, (int)p->D, (int)n, w->ds, BC, kt, (int)p->ks[2], dqb,
                       (int)p->dqs[2]);
  else
    acc_nn_nonzero(w->ds, rows, n, kt, p->ks[2], p->D, dqb, p->dqs[2]);
}

/* Zero the item's dq rows and dmask rows; its share of dsinks. */
static void item_start(const bwd_problem *p, int64_t b, int64_t hk) {
  for (int64_t h = hk * p->G; h < (hk + 1) * p->G; h++) {
    double sink = 0;
    for (int64_t i = 0; i < p->Lq; i++) {
      memset(p->dq + b * p->dqs[0] + h * p->dqs[1] + i * p->dqs[2], 0,
             (size_t)p->D * sizeof(float));
      if (p->dmask) {
        float *m = p->dmask + b * p->dms[0] + h * p->dms[1] + i * p->dms[2];
        for (int64_t j = 0; j < p->Lk; j++)
          m[j * p->dms[3]] = 0.0f;
      }
      if (p->dsinks) {
        /* The sink is a logit with value 0 in the output: dS = -P_sink D_i. */
        float lse = p->lse[b * p->ls[0] + h * p->ls[1] + i * p->ls[2]];
        if (lse == -INFINITY)
          continue;
        double di = dot(p->dout + b * p->gs[0] + h * p->gs[1] + i * p->gs[2],
                        p->o + b * p->os[0] + h * p->os[1] + i * p->os[2], p->Dv);
        sink -= exp((double)p->sinks[h] - (double)lse) * di;
      }
    }
    if (p->dsinks)
      p->sink_parts[b * p->Hq + h] = sink;
  }
}

static void run_item(void *arg, int64_t item, int32_t worker) {
  const bwd_problem *p = arg;
  int64_t b = item / p->Hkv, hk = item % p->Hkv;
  attn_ws_layout l = {p->work + (size_t)worker * p->per_thread, 0};
  bwd_work w;
  work_layout(p, &l, &w);
  item_start(p, b, hk);
  for (int64_t j0 = 0; j0 < p->Lk; j0 += BC) {
    int64_t n = p->Lk - j0 < BC ? p->Lk - j0 : BC;
    const float *kt = p->k + b * p->ks[0] + hk * p->ks[1] + j0 * p->ks[2];
    const float *vt = p->v + b * p->vs[0] + hk * p->vs[1] + j0 * p->vs[2];
    memset(w.dka, 0, (size_t)(n * p->D) * sizeof(float));
    memset(w.dva, 0, (size_t)(n * p->Dv) * sizeof(float));
    bool kf = all_finite(kt, n, p->D, p->ks[2]);
    for (int64_t h = hk * p->G; h < (hk + 1) * p->G; h++)
      for (int64_t i0 = 0; i0 < p->Lq; i0 += BR) {
        int64_t rows = p->Lq - i0 < BR ? p->Lq - i0 : BR, lo0, hi0, lo1, hi1;
        visible_keys(p, b, i0, &lo0, &hi0);
        visible_keys(p, b, i0 + rows - 1, &lo1, &hi1);
        if (hi1 <= j0 || lo0 >= j0 + n) /* no row of the block sees the tile */
          continue;
        block(p, &w, b, h, i0, rows, j0, n, kt, vt, kf);
      }
    for (int64_t j = 0; j < n; j++) {
      memcpy(p->dk + b * p->dks[0] + hk * p->dks[1] + (j0 + j) * p->dks[2], w.dka + j * p->D,
             (size_t)p->D * sizeof(float));
      memcpy(p->dv + b * p->dvs[0] + hk * p->dvs[1] + (j0 + j) * p->dvs[2], w.dva + j * p->Dv,
             (size_t)p->Dv * sizeof(float));
    }
  }
}

/* Parameter checks (the forward's rules, attn.h). */
static attn_status check_params(attn_ctx *ctx, const attn_sdpa_params *p,
                                const attn_sdpa_backward_params *bp, int64_t B, int64_t Hq,
                                int64_t Lk) {
  if (!isfinite(p->scale))
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG, "params.scale = %g but must be finite",
                      (double)p->scale);
  if (!isfinite(p->softcap) || p->softcap < 0)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "params.softcap = %g but must be finite and >= 0 (0 = off)",
                      (double)p->softcap);
  if (p->align != ATTN_ALIGN_TOP_LEFT && p->align != ATTN_ALIGN_BOTTOM_RIGHT)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG, "params.align = %d is not an attn_align",
                      (int)p->align);
  if (p->reserved_)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG, "params.reserved_ must be 0");
  if (p->window && (p->window_left < 0 || p->window_right < 0))
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "params.window_left = %lld, window_right = %lld but both must be >= 0",
                      (long long)p->window_left, (long long)p->window_right);
  if (p->q_offsets) {
    if (p->align != ATTN_ALIGN_TOP_LEFT)
      return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                        "params.align = %d but must be ATTN_ALIGN_TOP_LEFT when "
                        "params.q_offsets is set", (int)p->align);
    for (int64_t b = 0; b < B; b++)
      if (p->q_offsets[b] < -MAX_Q_OFFSET || p->q_offsets[b] > MAX_Q_OFFSET)
        return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                          "params.q_offsets[%lld] = %lld but must be in -2^60..2^60",
                          (long long)b, (long long)p->q_offsets[b]);
  }
  if (p->kv_lens)
    for (int64_t b = 0; b < B; b++)
      if (p->kv_lens[b] < 0 || p->kv_lens[b] > Lk)
        return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                          "params.kv_lens[%lld] = %lld but must be in 0..Lk = %lld",
                          (long long)b, (long long)p->kv_lens[b], (long long)Lk);
  const float *arrays[2] = {p->alibi_slopes, p->sinks};
  const char *names[2] = {"alibi_slopes", "sinks"};
  for (int a = 0; a < 2; a++)
    if (arrays[a])
      for (int64_t h = 0; h < Hq; h++)
        if (!isfinite(arrays[a][h]))
          return attn__fail(ctx, ATTN_ERR_INVALID_ARG, "params.%s[%lld] = %g but must be finite",
                            names[a], (long long)h, (double)arrays[a][h]);
  if (bp->dsinks && !p->sinks)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "bparams.dsinks is set but params.sinks is NULL (no sink to differentiate)");
  return ATTN_OK;
}

/* The parameters every problem shares (after D, Lq, Lk are set). */
static void fill_common(bwd_problem *p, const attn_sdpa_params *prm) {
  p->alibi = prm->alibi_slopes;
  p->sinks = prm->sinks;
  p->scale = prm->scale != 0 ? prm->scale : (float)(1.0 / sqrt((double)p->D));
  p->softcap = prm->softcap;
  p->causal = prm->causal != 0;
  p->window = prm->window != 0;
  int64_t far = p->Lq + p->Lk + MAX_Q_OFFSET; /* longer extents reach every key all the same */
  p->wl = prm->window_left < far ? prm->window_left : far;
  p->wr = prm->window_right < far ? prm->window_right : far;
  p->bottom_right = prm->align == ATTN_ALIGN_BOTTOM_RIGHT;
}

static attn_status check(attn_ctx *ctx, const attn_tensor *q, const attn_tensor *k,
                         const attn_tensor *v, const attn_tensor *out, const attn_tensor *lse,
                         const attn_tensor *dout, attn_tensor *dq, attn_tensor *dk,
                         attn_tensor *dv, const attn_sdpa_params *params,
                         const attn_sdpa_backward_params *bparams, bwd_problem *p) {
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
      {ATTN_OPERAND("dq", dq, ATTN_DT_F32, 4, 4), .sym = {B, HQ, LQ, D},
       .flags = ATTN_OPND_OUTPUT},
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
  if (d.v[HQ] % d.v[HKV])
    return attn__fail(ctx, ATTN_ERR_SHAPE,
                      "q has %lld heads but k has %lld: the query heads must be a multiple "
                      "of the kv heads", (long long)d.v[HQ], (long long)d.v[HKV]);
  if ((st = check_params(ctx, &prm, &bp, d.v[B], d.v[HQ], d.v[LK])) != ATTN_OK)
    return st;
  /* Every leading dimension handed to BLAS must fit its int. */
  const attn_tensor *blas_ops[] = {q, k, v, dout, dq};
  const char *blas_names[] = {"q", "k", "v", "dout", "dq"};
  for (size_t t = 0; t < sizeof blas_ops / sizeof *blas_ops; t++)
    if (blas_ops[t]->strides[2] > INT32_MAX || d.v[D] > INT32_MAX || d.v[DV] > INT32_MAX)
      return attn__fail(ctx, ATTN_ERR_OVERFLOW,
                        "%s.strides[2] = %lld or a head dim exceeds what BLAS takes (2^31 - 1)",
                        blas_names[t], (long long)blas_ops[t]->strides[2]);
  memset(p, 0, sizeof *p);
  p->B = d.v[B], p->Hq = d.v[HQ], p->Hkv = d.v[HKV], p->G = p->Hq / p->Hkv;
  p->Lq = d.v[LQ], p->Lk = d.v[LK], p->D = d.v[D], p->Dv = d.v[DV];
  p->q = q->data, p->k = k->data, p->v = v->data, p->o = out->data, p->lse = lse->data;
  p->dout = dout->data, p->dq = dq->data, p->dk = dk->data, p->dv = dv->data;
  memcpy(p->qs, q->strides, sizeof p->qs);
  memcpy(p->ks, k->strides, sizeof p->ks);
  memcpy(p->vs, v->strides, sizeof p->vs);
  memcpy(p->os, out->strides, sizeof p->os);
  memcpy(p->ls, lse->strides, sizeof p->ls);
  memcpy(p->gs, dout->strides, sizeof p->gs);
  memcpy(p->dqs, dq->strides, sizeof p->dqs);
  memcpy(p->dks, dk->strides, sizeof p->dks);
  memcpy(p->dvs, dv->strides, sizeof p->dvs);
  if (bp.dmask) {
    p->dmask = bp.dmask->data;
    memcpy(p->dms, bp.dmask->strides, sizeof p->dms);
  }
  p->dsinks = bp.dsinks;
  if (prm.mask) {
    p->mask = prm.mask->data;
    memcpy(p->ms, ms, sizeof ms);
  }
  if (prm.bool_mask) {
    p->bmask = prm.bool_mask->data;
    memcpy(p->bs, bs, sizeof bs);
  }
  p->kv_lens = prm.kv_lens;
  p->q_offsets = prm.q_offsets;
  fill_common(p, &prm);
  return ATTN_OK;
}

/* Threads and the exact workspace: per-thread tiles, then the sink shares. */
static void plan(const attn_ctx *ctx, bwd_problem *p) {
  double flops = 10.0 * (double)p->B * (double)p->Hq * (double)p->Lq * (double)p->Lk *
                 (double)(p->D > p->Dv ? p->D : p->Dv);
  /* A multi-threaded BLAS serialises calls from several threads (blas.c). */
  p->threads = attn__blas_threads() > 1
                   ? 1
                   : attn__threads_plan(ctx, flops, 4e6, p->B * p->Hkv);
  attn_ws_layout l = {0};
  bwd_work w;
  work_layout(p, &l, &w);
  p->per_thread = attn__ws_round(l.used);
  attn_ws_layout all = {0};
  attn__ws_take(&all, (size_t)p->threads, p->per_thread);
  if (p->dsinks)
    attn__ws_take(&all, (size_t)(p->B * p->Hq), sizeof(double));
  p->ws_bytes = all.used;
}

/* Run a planned problem; the sink gradient is added to sink_acc[Hq]
 * (batches in order), so packed sequences can sum theirs. */
static void run(attn_ctx *ctx, bwd_problem *p, double *sink_acc) {
  size_t mark = attn__ws_mark(ctx);
  attn_ws_layout all = {attn__ws_alloc(ctx, p->ws_bytes), 0};
  p->work = attn__ws_take(&all, (size_t)p->threads, p->per_thread);
  if (p->dsinks)
    p->sink_parts = attn__ws_take(&all, (size_t)(p->B * p->Hq), sizeof(double));
  attn__parallel_for(ctx, p->threads, p->B * p->Hkv, run_item, p);
  if (p->dsinks)
    for (int64_t h = 0; h < p->Hq; h++)
      for (int64_t b = 0; b < p->B; b++)
        sink_acc[h] += p->sink_parts[b * p->Hq + h];
  attn__ws_release(ctx, mark);
}

/* The caller's dsinks from the sums, in double until this one rounding. */
static void store_sinks(const bwd_problem *p, const double *acc) {
  if (p->dsinks)
    for (int64_t h = 0; h < p->Hq; h++)
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
  if ((st = check(ctx, q, k, v, out, lse, dout, dq, dk, dv, p, bp, &pr)) == ATTN_OK) {
    plan(ctx, &pr);
    size_t acc_bytes = attn__ws_round((size_t)pr.Hq * sizeof(double));
    if ((st = attn__ws_reserve(ctx, acc_bytes + pr.ws_bytes)) == ATTN_OK) {
      double *acc = attn__ws_alloc(ctx, acc_bytes);
      memset(acc, 0, (size_t)pr.Hq * sizeof(double));
      run(ctx, &pr, acc);
      store_sinks(&pr, acc);
    }
  }
  return attn__op_end(ctx, st);
}

static attn_status check_offsets(attn_ctx *ctx, const char *name, const int64_t *cu, int32_t batch,
                                 int64_t total) {
  if (!cu)
    return attn__fail(ctx, ATTN_ERR_NULL_ARG, "%s is NULL", name);
  if (cu[0] != 0)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG, "%s[0] = %lld but must be 0", name,
                      (long long)cu[0]);
  for (int32_t b = 0; b < batch; b++)
    if (cu[b + 1] < cu[b])
      return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                        "%s[%d] = %lld < %s[%d] = %lld but offsets must not decrease", name,
                        (int)b + 1, (long long)cu[b + 1], name, (int)b, (long long)cu[b]);
  if (cu[batch] != total)
    return attn__fail(ctx, ATTN_ERR_SHAPE, "%s[%d] = %lld but must equal the token count %lld",
                      name, (int)batch, (long long)cu[batch], (long long)total);
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
  if (d.v[HQ] % d.v[HKV])
    return attn__fail(ctx, ATTN_ERR_SHAPE,
                      "q has %lld heads but k has %lld: the query heads must be a multiple "
                      "of the kv heads", (long long)d.v[HQ], (long long)d.v[HKV]);
  if ((st = check_offsets(ctx, "cu_seqlens_q", a->cu_q, batch, d.v[TQ])) != ATTN_OK ||
      (st = check_offsets(ctx, "cu_seqlens_k", a->cu_k, batch, d.v[TK])) != ATTN_OK ||
      (st = check_params(ctx, &a->prm, &bp, batch, d.v[HQ], d.v[TK])) != ATTN_OK)
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
  p->B = 1, p->Hq = a->q->dims[1], p->Hkv = a->k->dims[1], p->G = p->Hq / p->Hkv;
  p->D = a->q->dims[2], p->Dv = a->v->dims[2];
  p->Lq = a->cu_q[s + 1] - a->cu_q[s];
  p->Lk = a->cu_k[s + 1] - a->cu_k[s];
  /* An empty range may start one past the last token: do not offset by it. */
  int64_t q0 = p->Lq ? a->cu_q[s] : 0, k0 = p->Lk ? a->cu_k[s] : 0;
  const attn_tensor *ts[8] = {a->q, a->k, a->v, a->out, a->dout, a->dq, a->dk, a->dv};
  int64_t *st[8] = {p->qs, p->ks, p->vs, p->os, p->gs, p->dqs, p->dks, p->dvs};
  for (int t = 0; t < 8; t++) {
    st[t][0] = 0;
    st[t][1] = ts[t]->strides[1];
    st[t][2] = ts[t]->strides[0];
    st[t][3] = 1;
  }
  p->q = (const float *)a->q->data + q0 * a->q->strides[0];
  p->k = (const float *)a->k->data + k0 * a->k->strides[0];
  p->v = (const float *)a->v->data + k0 * a->v->strides[0];
  p->o = (const float *)a->out->data + q0 * a->out->strides[0];
  p->dout = (const float *)a->dout->data + q0 * a->dout->strides[0];
  p->dq = (float *)a->dq->data + q0 * a->dq->strides[0];
  p->dk = (float *)a->dk->data + k0 * a->dk->strides[0];
  p->dv = (float *)a->dv->data + k0 * a->dv->strides[0];
  p->lse = (const float *)a->lse->data + q0 * a->lse->strides[1];
  p->ls[0] = 0, p->ls[1] = a->lse->strides[0], p->ls[2] = a->lse->strides[1];
  p->q_offsets = a->prm.q_offsets ? a->prm.q_offsets + s : NULL;
  p->dsinks = a->dsinks;
  fill_common(p, &a->prm);
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
  size_t acc_bytes = attn__ws_round((size_t)pr.Hq * sizeof(double));
  if ((st = attn__ws_reserve(ctx, acc_bytes + most)) == ATTN_OK) {
    double *acc = attn__ws_alloc(ctx, acc_bytes);
    memset(acc, 0, (size_t)pr.Hq * sizeof(double));
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
