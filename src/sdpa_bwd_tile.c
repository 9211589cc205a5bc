/* SDPA backward: the kernel, its plan and run (entry points, checks: sdpa_bwd.c).
 *
 * FlashAttention-2 style: nothing of size Lq x Lk is stored; the logits are
 * recomputed tile by tile with the forward's visibility and logit pipeline
 * (logits.h), and the forward's log-sum-exp turns them straight into
 * weights P = exp(S - lse):
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
#include "logits.h"
#include "sdpa_bwd.h"

#include <math.h>
#include <string.h>

/* Query rows per block and keys per tile: each of the three Br x Bc tiles
 * (P, dS, the soft-cap factors) is 32 KiB, with the K and V tile beside
 * them in L2. */
#define BR 64
#define BC 128

typedef struct {
  float *p;   /* BR x BC: weights */
  float *ds;  /* BR x BC: dP, then dX */
  float *cap; /* BR x BC: cap'(x), with a soft-cap */
  float *dka; /* BC x D */
  float *dva; /* BC x Dv */
  /* Copies of the rows of q, dout (BR x D, BR x Dv) and K, V tiles (BC x D,
   * BC x Dv) whose row stride is below their length (gathered()); else NULL. */
  float *qg, *gg, *kg, *vg;
} bwd_work;

/* Row (a, b, c) of a [.., .., .., D] F32 view (the forward's problem holds
 * its tensors untyped: the backward takes F32 only). */
static const float *row_of(const void *base, const int64_t *s, int64_t a, int64_t b,
                           int64_t c) {
  return (const float *)base + a * s[0] + b * s[1] + c * s[2];
}

/* BLAS takes rows `ld` apart only for ld >= their length: an input's rows
 * that overlap (a stride 0 broadcast over the sequence, or a smaller one)
 * are copied first. One row is handed over with ld = its length. */
static bool gathered(int64_t stride, int64_t rows, int64_t cols) {
  return rows > 1 && stride < cols;
}

static float *gather_buf(attn_ws_layout *l, bool need, int64_t rows, int64_t cols) {
  return need ? attn__ws_take(l, (size_t)(rows * cols), sizeof(float)) : NULL;
}

/* rows x cols at x, `stride` apart, as BLAS can take them: in place (*ld
 * set), or copied into buf (given when gathered() holds). */
static const float *blas_rows(const float *x, int64_t stride, int64_t rows, int64_t cols,
                              float *buf, int64_t *ld) {
  if (!gathered(stride, rows, cols)) {
    *ld = rows > 1 ? stride : cols;
    return x;
  }
  for (int64_t r = 0; r < rows; r++)
    memcpy(buf + r * cols, x + r * stride, (size_t)cols * sizeof(float));
  *ld = cols;
  return buf;
}

static void work_layout(const attn_sdpa_bwd_problem *p, attn_ws_layout *l, bwd_work *w) {
  const attn_sdpa_problem *f = &p->f;
  w->p = attn__ws_take(l, BR * BC, sizeof(float));
  w->ds = attn__ws_take(l, BR * BC, sizeof(float));
  w->cap = f->softcap > 0 ? attn__ws_take(l, BR * BC, sizeof(float)) : NULL;
  w->dka = attn__ws_take(l, (size_t)(BC * f->D), sizeof(float));
  w->dva = attn__ws_take(l, (size_t)(BC * f->Dv), sizeof(float));
  w->qg = gather_buf(l, gathered(f->qs[2], f->Lq, f->D), BR, f->D);
  w->gg = gather_buf(l, gathered(p->gs[2], f->Lq, f->Dv), BR, f->Dv);
  w->kg = gather_buf(l, gathered(f->ks[2], f->Lk, f->D), BC, f->D);
  w->vg = gather_buf(l, gathered(f->vs[2], f->Lk, f->Dv), BC, f->Dv);
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
static void block(const attn_sdpa_bwd_problem *p, const bwd_work *w, int64_t b, int64_t h, int64_t i0,
                  int64_t rows, int64_t j0, int64_t n, const float *kt, int64_t ldk,
                  const float *vt, int64_t ldv, bool k_finite) {
  int64_t ldq, ldg, lddq = rows > 1 ? p->dqs[2] : p->f.D; /* dq's rows never overlap */
  const float *qb = blas_rows(row_of(p->f.q, p->f.qs, b, h, i0), p->f.qs[2], rows, p->f.D, w->qg, &ldq);
  const float *gb = blas_rows(p->dout + b * p->gs[0] + h * p->gs[1] + i0 * p->gs[2], p->gs[2], rows,
                              p->f.Dv, w->gg, &ldg);
  float *dqb = p->dq + b * p->dqs[0] + h * p->dqs[1] + i0 * p->dqs[2];
  attn__sgemm_nt((int)rows, (int)n, (int)p->f.D, p->f.scale, qb, (int)ldq, kt, (int)ldk, w->p, BC);
  attn__sgemm_nt((int)rows, (int)n, (int)p->f.Dv, 1.0f, gb, (int)ldg, vt, (int)ldv, w->ds, BC);
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
    float di = (float)dot(gb + r * ldg, row_of(p->f.out, p->f.os, b, h, i),
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
  if (attn__sdpa_all_finite(gb, rows, p->f.Dv, ldg))
    attn__sgemm_tn_acc((int)n, (int)p->f.Dv, (int)rows, w->p, BC, gb, (int)ldg, w->dva,
                       (int)p->f.Dv);
  else
    acc_tn_nonzero(w->p, rows, n, gb, ldg, p->f.Dv, w->dva);
  if (attn__sdpa_all_finite(qb, rows, p->f.D, ldq))
    attn__sgemm_tn_acc((int)n, (int)p->f.D, (int)rows, w->ds, BC, qb, (int)ldq, w->dka,
                       (int)p->f.D);
  else
    acc_tn_nonzero(w->ds, rows, n, qb, ldq, p->f.D, w->dka);
  if (k_finite)
    attn__sgemm_nn_acc((int)rows, (int)p->f.D, (int)n, w->ds, BC, kt, (int)ldk, dqb, (int)lddq);
  else
    acc_nn_nonzero(w->ds, rows, n, kt, ldk, p->f.D, dqb, lddq);
}

/* The query heads an item walks: none without query rows, as a q of 0
 * rows may claim 2^62 heads (its keys then get zero gradients), unless
 * dsinks (of Hq floats) takes each head's share, which is then 0. */
static int64_t heads_end(const attn_sdpa_bwd_problem *p, int64_t hk, bool sinks) {
  return p->f.Lq > 0 || (sinks && p->dsinks) ? (hk + 1) * p->f.G : hk * p->f.G;
}

/* Zero the item's dq rows and dmask rows; its share of dsinks. */
static void item_start(const attn_sdpa_bwd_problem *p, int64_t b, int64_t hk) {
  for (int64_t h = hk * p->f.G; h < heads_end(p, hk, true); h++) {
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
  const attn_sdpa_bwd_problem *p = arg;
  int64_t b = item / p->f.Hkv, hk = item % p->f.Hkv;
  attn_ws_layout l = {p->work + (size_t)worker * p->per_thread, 0};
  bwd_work w;
  work_layout(p, &l, &w);
  item_start(p, b, hk);
  for (int64_t j0 = 0; j0 < p->f.Lk; j0 += BC) {
    int64_t n = p->f.Lk - j0 < BC ? p->f.Lk - j0 : BC;
    int64_t ldk, ldv;
    const float *kt = blas_rows(row_of(p->f.k, p->f.ks, b, hk, j0), p->f.ks[2], n, p->f.D, w.kg, &ldk);
    const float *vt = blas_rows(row_of(p->f.v, p->f.vs, b, hk, j0), p->f.vs[2], n, p->f.Dv, w.vg, &ldv);
    memset(w.dka, 0, (size_t)(n * p->f.D) * sizeof(float));
    memset(w.dva, 0, (size_t)(n * p->f.Dv) * sizeof(float));
    bool kf = attn__sdpa_all_finite(kt, n, p->f.D, ldk);
    for (int64_t h = hk * p->f.G; h < heads_end(p, hk, false); h++)
      for (int64_t i0 = 0; i0 < p->f.Lq; i0 += BR) {
        int64_t rows = p->f.Lq - i0 < BR ? p->f.Lq - i0 : BR, lo0, hi0, lo1, hi1;
        attn__sdpa_visible_keys(&p->f, b, i0, &lo0, &hi0);
        attn__sdpa_visible_keys(&p->f, b, i0 + rows - 1, &lo1, &hi1);
        if (hi1 <= j0 || lo0 >= j0 + n) /* no row of the block sees the tile */
          continue;
        block(p, &w, b, h, i0, rows, j0, n, kt, ldk, vt, ldv, kf);
      }
    for (int64_t j = 0; j < n; j++) {
      memcpy(p->dk + b * p->dks[0] + hk * p->dks[1] + (j0 + j) * p->dks[2], w.dka + j * p->f.D,
             (size_t)p->f.D * sizeof(float));
      memcpy(p->dv + b * p->dvs[0] + hk * p->dvs[1] + (j0 + j) * p->dvs[2], w.dva + j * p->f.Dv,
             (size_t)p->f.Dv * sizeof(float));
    }
  }
}

void attn__sdpa_bwd_plan(const attn_ctx *ctx, attn_sdpa_bwd_problem *p) {
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

void attn__sdpa_bwd_run(attn_ctx *ctx, attn_sdpa_bwd_problem *p, double *sink_acc) {
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
