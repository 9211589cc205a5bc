/* Every op on f16 / bf16 operands, against the float64 references of
 * tests/reference/ run on the same (rounded) inputs, widened exactly.
 *
 * Error bound. The library widens half inputs exactly, computes as for F32
 * (fp32 accumulation), and rounds a half output once, to nearest even. So a
 * result differs from the float64 reference by the F32 path's own error
 * plus at most half an ULP of the output type:
 *   |got - want| <= u |want| + tol_f32 * scale + tiny,
 * u = 2^-11 (f16) or 2^-8 (bf16), 0 for an F32 output; tol_f32 and scale as
 * the F32 suites use them (1e-5 of the row's magnitude for SDPA, 1e-6 for
 * softmax and the encodings); tiny = 2^-24 (f16 subnormal spacing). Measured
 * worst cases are printed. NaN/Inf behave as for F32: a NaN input reaches
 * its row, a masked entry is exactly 0, an all-masked row is zeros. */
#include "test_util.h"

#include "ref_half.h"
#include "ref_mha.h"
#include "ref_pool.h"
#include "ref_posenc.h"
#include "ref_sdpa.h"
#include "ref_softmax.h"

static const int32_t DTS[3] = {ATTN_DTYPE_F32, ATTN_DTYPE_F16, ATTN_DTYPE_BF16};

static const char *dname(int32_t dt) {
  return dt == ATTN_DTYPE_F16 ? "f16" : dt == ATTN_DTYPE_BF16 ? "bf16" : "f32";
}

/* Half an ULP, relative, of the output type. */
static double half_ulp(int32_t dt) {
  return dt == ATTN_DTYPE_F16 ? 0x1p-11 : dt == ATTN_DTYPE_BF16 ? 0x1p-8 : 0.0;
}

/* A host array of n values in type dt: `vals` rounded to dt (written back,
 * so vals holds exactly what the tensor holds), and a tensor wrapping it. */
typedef struct {
  void *data;
  attn_tensor *t;
  int32_t dt;
  size_t n;
} harr;

static void harr_make(harr *a, attn_ctx *ctx, int32_t dt, int32_t nd, const int64_t *dims,
                      float *vals) {
  size_t n = 1;
  for (int32_t i = 0; i < nd; i++)
    n *= (size_t)dims[i];
  size_t es = dt == ATTN_DTYPE_F32 ? 4 : 2;
  a->dt = dt;
  a->n = n;
  a->data = malloc(n * es);
  assert_non_null(a->data);
  for (size_t i = 0; i < n; i++) {
    if (dt == ATTN_DTYPE_F32) {
      ((float *)a->data)[i] = vals ? vals[i] : -777.0f;
      continue;
    }
    float v = vals ? vals[i] : -777.0f;
    uint16_t h = dt == ATTN_DTYPE_F16 ? ref_to_f16(tu_bits(v)) : ref_to_bf16(tu_bits(v));
    ((uint16_t *)a->data)[i] = h;
    if (vals)
      vals[i] = tu_float(dt == ATTN_DTYPE_F16 ? ref_from_f16(h) : ref_from_bf16(h));
  }
  assert_ok(attn_tensor_wrap(ctx, dt, nd, dims, NULL, a->data, n * es, &a->t));
}

static double harr_get(const harr *a, size_t i) {
  if (a->dt == ATTN_DTYPE_F32)
    return ((const float *)a->data)[i];
  uint16_t h = ((const uint16_t *)a->data)[i];
  return a->dt == ATTN_DTYPE_F16 ? ref_f16_value(h) : ref_bf16_value(h);
}

static void harr_free(harr *a) { free(a->data); }

/* got vs want under the bound above; returns the worst |err| / bound. */
static double check_all(const char *what, const harr *got, const double *want, double tol,
                        const double *scale) {
  double u = half_ulp(got->dt), worst = 0;
  int bad = 0;
  for (size_t i = 0; i < got->n; i++) {
    double g = harr_get(got, i), w = want[i];
    if (isnan(w) || isinf(w)) {
      if (!(isnan(w) ? isnan(g) : g == w) && bad++ < 5)
        print_error("%s [%zu]: got %.9g want %.9g\n", what, i, g, w);
      continue;
    }
    double bound = u * fabs(w) + tol * (scale ? scale[i] : 1.0) + 0x1p-24;
    double e = fabs(g - w) / bound;
    if (!(e <= 1.0)) {
      if (bad++ < 5)
        print_error("%s [%zu]: got %.9g want %.9g (err %.3g of the bound)\n", what, i, g, w, e);
    } else if (e > worst) {
      worst = e;
    }
  }
  if (bad)
    fail_msg("%s: %d elements outside the bound", what, bad);
  return worst;
}

/* ---------------- softmax ---------------- */

static void softmax_half(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(2);
  static const int64_t shapes[][2] = {{1, 1}, {3, 7}, {5, 33}, {4, 1000}, {64, 129}};
  tu_rng r = {7};
  double worst = 0;
  for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
    for (int xi = 0; xi < 3; xi++)
      for (int yi = 0; yi < 3; yi++)
        for (int log = 0; log < 2; log++) {
          if (xi == 0 && yi == 0)
            continue; /* the F32 suites */
          int64_t R = shapes[si][0], C = shapes[si][1];
          size_t n = (size_t)(R * C);
          float *xv = malloc(n * sizeof *xv), *mv = malloc(n * sizeof *mv);
          double *want = malloc(n * sizeof *want);
          tu_fill(&r, xv, n, -8, 8);
          tu_fill(&r, mv, n, -2, 2);
          int masked = (int)(tu_next(&r) % 2);
          harr x, y, m;
          int64_t dims[2] = {R, C};
          harr_make(&x, ctx, DTS[xi], 2, dims, xv);
          harr_make(&y, ctx, DTS[yi], 2, dims, NULL);
          harr_make(&m, ctx, ATTN_DTYPE_F32, 2, dims, mv);
          attn_softmax_params p;
          attn_softmax_params_init(&p);
          p.scale = 0.75f;
          p.mask = masked ? m.t : NULL;
          attn_status st = log ? attn_log_softmax(ctx, x.t, y.t, &p) : attn_softmax(ctx, x.t, y.t, &p);
          if (st != ATTN_OK)
            fail_msg("softmax %s -> %s: %s", dname(x.dt), dname(y.dt), attn_ctx_last_error(ctx));
          ref_view rx = {xv, 2, {R, C}, {C, 1}}, rm = {mv, 2, {R, C}, {C, 1}};
          ref_softmax(&rx, 0.75f, masked ? &rm : NULL, NULL, log, want);
          char what[96];
          snprintf(what, sizeof what, "%s %s -> %s [%lld, %lld]", log ? "log_softmax" : "softmax",
                   dname(x.dt), dname(y.dt), (long long)R, (long long)C);
          /* F32 tolerance of the suites: 1e-6 relative (softmax), and for
           * log-softmax 1e-6 of max(|want|, 1). */
          double *sc = malloc(n * sizeof *sc);
          for (size_t i = 0; i < n; i++)
            sc[i] = log ? fmax(fabs(want[i]), 1.0) : fabs(want[i]);
          double w = check_all(what, &y, want, 1e-6, sc);
          worst = fmax(worst, w);
          free(sc);
          harr_free(&x), harr_free(&y), harr_free(&m);
          free(xv), free(mv), free(want);
        }
  print_message("softmax: worst error %.3f of the bound\n", worst);
  attn_ctx_destroy(ctx);
}

/* In place on a half tensor, NaN and all-masked rows. */
static void softmax_half_edges(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  for (int di = 1; di < 3; di++) {
    int64_t dims[2] = {4, 6};
    float xv[24];
    for (int i = 0; i < 24; i++)
      xv[i] = (float)(i % 6) - 2.0f;
    xv[6 + 2] = NAN;      /* row 1: NaN */
    xv[12 + 3] = INFINITY; /* row 2: +inf: NaN (inf - inf) */
    uint8_t keep[24];
    for (int i = 0; i < 24; i++)
      keep[i] = i / 6 != 3; /* row 3 all masked */
    harr x;
    harr_make(&x, ctx, DTS[di], 2, dims, xv);
    attn_tensor *bm;
    assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_U8, 2, dims, NULL, keep, sizeof keep, &bm));
    attn_softmax_params p;
    attn_softmax_params_init(&p);
    p.bool_mask = bm;
    assert_ok(attn_softmax(ctx, x.t, x.t, &p)); /* in place */
    double row0 = 0;
    for (int j = 0; j < 6; j++) {
      row0 += harr_get(&x, (size_t)j);
      assert_true(isnan(harr_get(&x, 6 + (size_t)j)));
      assert_true(isnan(harr_get(&x, 12 + (size_t)j)));
      assert_true(harr_get(&x, 18 + (size_t)j) == 0.0);
    }
    assert_close(row0, 1.0, 6 * half_ulp(x.dt), 0);
    harr_free(&x);
  }
  attn_ctx_destroy(ctx);
}

/* ---------------- encodings ---------------- */

static void posenc_half(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(2);
  double worst = 0;
  for (int di = 1; di < 3; di++) {
    /* Sinusoidal table written in half. */
    int64_t L = 37, D = 64, dims[2] = {L, D};
    harr out;
    harr_make(&out, ctx, DTS[di], 2, dims, NULL);
    attn_sinusoidal_params sp;
    attn_sinusoidal_params_init(&sp);
    sp.offset = 1000;
    assert_ok(attn_sinusoidal(ctx, out.t, &sp));
    double pos[37], *want = malloc((size_t)(L * D) * sizeof *want);
    for (int l = 0; l < L; l++)
      pos[l] = 1000 + l;
    ref_sinusoidal(0, L, D, 10000, pos, want);
    worst = fmax(worst, check_all("sinusoidal", &out, want, 1e-6, NULL));
    /* Added in place to half x. */
    float *xv = malloc((size_t)(L * D) * sizeof *xv);
    tu_rng r = {3};
    tu_fill(&r, xv, (size_t)(L * D), -1, 1);
    harr x;
    harr_make(&x, ctx, DTS[di], 2, dims, xv);
    assert_ok(attn_sinusoidal_add(ctx, x.t, &sp));
    for (int64_t i = 0; i < L * D; i++)
      want[i] += xv[i];
    worst = fmax(worst, check_all("sinusoidal_add", &x, want, 1e-6, NULL));
    harr_free(&out), harr_free(&x);
    free(want), free(xv);

    /* RoPE in place on half x [B, H, L, D]. */
    int64_t B = 2, H = 3, RL = 19, RD = 32, rd[4] = {B, H, RL, RD};
    size_t n = (size_t)(B * H * RL * RD);
    float *rv = malloc(n * sizeof *rv);
    double *rw = malloc(n * sizeof *rw);
    tu_fill(&r, rv, n, -2, 2);
    harr rx;
    harr_make(&rx, ctx, DTS[di], 4, rd, rv);
    for (size_t i = 0; i < n; i++)
      rw[i] = rv[i];
    int64_t *pp = malloc((size_t)(B * RL) * sizeof *pp);
    for (int64_t i = 0; i < B * RL; i++)
      pp[i] = 5 + i;
    attn_rope_params rp;
    attn_rope_params_init(&rp);
    rp.positions = pp;
    assert_ok(attn_rope(ctx, rx.t, &rp));
    ref_rope(0, B, H, RL, RD, RD, 10000, pp, rw);
    /* F32 RoPE: rotation in double, one float rounding: 1e-6 of |x| <= 2. */
    worst = fmax(worst, check_all("rope", &rx, rw, 2e-6, NULL));
    harr_free(&rx);
    free(rv), free(rw), free(pp);
  }
  print_message("encodings: worst error %.3f of the bound\n", worst);
  attn_ctx_destroy(ctx);
}

/* ---------------- SDPA ---------------- */

typedef struct {
  const char *name;
  int64_t B, Hq, Hkv, Lq, Lk, D, Dv;
  int causal, bottom_right;
  int32_t qdt, kdt, vdt, odt;
  int blhd; /* q/k/v/out in [B, L, H, D] memory */
  int nan_k; /* 1 + a key made NaN */
} hcase;

static void fill_view(int64_t B, int64_t H, int64_t L, int64_t D, int blhd, int64_t *dims,
                      int64_t *st) {
  dims[0] = B, dims[1] = H, dims[2] = L, dims[3] = D;
  if (blhd) {
    st[0] = L * H * D, st[1] = D, st[2] = H * D, st[3] = 1;
  } else {
    st[0] = H * L * D, st[1] = L * D, st[2] = D, st[3] = 1;
  }
}

static void* halloc_vals(int32_t dt, size_t n, float *vals) {
  size_t es = dt == ATTN_DTYPE_F32 ? 4 : 2;
  void *p = malloc(n * es);
  assert_non_null(p);
  for (size_t i = 0; i < n; i++) {
    if (dt == ATTN_DTYPE_F32) {
      ((float *)p)[i] = vals ? vals[i] : -777.0f;
      continue;
    }
    float v = vals ? vals[i] : -777.0f;
    uint16_t h = dt == ATTN_DTYPE_F16 ? ref_to_f16(tu_bits(v)) : ref_to_bf16(tu_bits(v));
    ((uint16_t *)p)[i] = h;
    if (vals)
      vals[i] = tu_float(dt == ATTN_DTYPE_F16 ? ref_from_f16(h) : ref_from_bf16(h));
  }
  return p;
}

static double get_at(int32_t dt, const void *p, size_t i) {
  if (dt == ATTN_DTYPE_F32)
    return ((const float *)p)[i];
  uint16_t h = ((const uint16_t *)p)[i];
  return dt == ATTN_DTYPE_F16 ? ref_f16_value(h) : ref_bf16_value(h);
}

static double run_hcase(const hcase *c, attn_ctx *ctx) {
  int64_t B = c->B, Hq = c->Hq, Hkv = c->Hkv, Lq = c->Lq, Lk = c->Lk, D = c->D, Dv = c->Dv;
  size_t nq = (size_t)(B * Hq * Lq * D), nk = (size_t)(B * Hkv * Lk * D),
         nv = (size_t)(B * Hkv * Lk * Dv), no = (size_t)(B * Hq * Lq * Dv);
  tu_rng r = {(uint64_t)(Lq * 131 + Lk * 7 + D + c->qdt * 3 + c->kdt * 5 + c->odt * 11)};
  float *qv = malloc(nq * 4), *kv = malloc(nk * 4), *vv = malloc(nv * 4);
  tu_fill(&r, qv, nq, -1, 1);
  tu_fill(&r, kv, nk, -1, 1);
  tu_fill(&r, vv, nv, -1, 1);
  if (c->nan_k) /* key nan_k - 1 of every (b, h), in memory order of the layout */
    for (int64_t b = 0; b < B; b++)
      for (int64_t h = 0; h < Hkv; h++) {
        int64_t dims[4], st[4];
        fill_view(B, Hkv, Lk, D, c->blhd, dims, st);
        kv[b * st[0] + h * st[1] + (c->nan_k - 1) * st[2]] = NAN;
      }
  void *qp = halloc_vals(c->qdt, nq, qv), *kp = halloc_vals(c->kdt, nk, kv),
       *vp = halloc_vals(c->vdt, nv, vv), *op = halloc_vals(c->odt, no, NULL);
  int64_t dq[4], sq[4], dk[4], sk[4], dvd[4], sv[4], dout[4], so[4];
  fill_view(B, Hq, Lq, D, c->blhd, dq, sq);
  fill_view(B, Hkv, Lk, D, c->blhd, dk, sk);
  fill_view(B, Hkv, Lk, Dv, c->blhd, dvd, sv);
  fill_view(B, Hq, Lq, Dv, c->blhd, dout, so);
  size_t eq = c->qdt == 0 ? 4 : 2, ek = c->kdt == 0 ? 4 : 2, ev = c->vdt == 0 ? 4 : 2,
         eo = c->odt == 0 ? 4 : 2;
  attn_tensor *q, *k, *v, *o;
  assert_ok(attn_tensor_wrap(ctx, c->qdt, 4, dq, sq, qp, nq * eq, &q));
  assert_ok(attn_tensor_wrap(ctx, c->kdt, 4, dk, sk, kp, nk * ek, &k));
  assert_ok(attn_tensor_wrap(ctx, c->vdt, 4, dvd, sv, vp, nv * ev, &v));
  assert_ok(attn_tensor_wrap(ctx, c->odt, 4, dout, so, op, no * eo, &o));
  attn_sdpa_params p;
  attn_sdpa_params_init(&p);
  p.causal = c->causal;
  p.align = c->bottom_right ? ATTN_ALIGN_BOTTOM_RIGHT : ATTN_ALIGN_TOP_LEFT;
  if (attn_sdpa(ctx, q, k, v, o, &p) != ATTN_OK)
    fail_msg("%s: %s", c->name, attn_ctx_last_error(ctx));
  ref_sdpa_args a;
  memset(&a, 0, sizeof a);
  a.B = B, a.Hq = Hq, a.Hkv = Hkv, a.Lq = Lq, a.Lk = Lk, a.D = D, a.Dv = Dv;
  a.q = qv, a.k = kv, a.v = vv;
  memcpy(a.qs, sq, sizeof sq), memcpy(a.ks, sk, sizeof sk), memcpy(a.vs, sv, sizeof sv);
  a.causal = c->causal, a.bottom_right = c->bottom_right;
  double *want = malloc(no * sizeof *want), *mag = malloc(no * sizeof *mag);
  ref_sdpa(&a, want, mag, NULL, NULL);
  /* Compare in [B, Hq, Lq, Dv] order (the reference's), reading out through
   * its strides; the row's magnitude scales the F32 tolerance (1e-5). */
  double worst = 0, u = half_ulp(c->odt);
  int bad = 0;
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < Hq; h++)
      for (int64_t i = 0; i < Lq; i++) {
        size_t ri = (size_t)(((b * Hq + h) * Lq + i) * Dv);
        double scale = 1e-6;
        for (int64_t d = 0; d < Dv; d++)
          scale = fmax(scale, mag[ri + (size_t)d]);
        for (int64_t d = 0; d < Dv; d++) {
          double w = want[ri + (size_t)d];
          double g = get_at(c->odt, op, (size_t)(b * so[0] + h * so[1] + i * so[2] + d));
          if (isnan(w)) {
            if (!isnan(g) && bad++ < 5)
              print_error("%s: (%lld,%lld,%lld,%lld) got %g want NaN\n", c->name, (long long)b,
                          (long long)h, (long long)i, (long long)d, g);
            continue;
          }
          double bound = u * fabs(w) + 1e-5 * scale + 0x1p-24;
          double e = fabs(g - w) / bound;
          if (!(e <= 1)) {
            if (bad++ < 5)
              print_error("%s: (%lld,%lld,%lld,%lld) got %.9g want %.9g (%.3g of the bound)\n",
                          c->name, (long long)b, (long long)h, (long long)i, (long long)d, g, w,
                          e);
          } else if (e > worst) {
            worst = e;
          }
        }
      }
  if (bad)
    fail_msg("%s: %d outputs outside the bound", c->name, bad);
  attn_tensor_free(ctx, q), attn_tensor_free(ctx, k), attn_tensor_free(ctx, v),
      attn_tensor_free(ctx, o);
  free(qp), free(kp), free(vp), free(op), free(qv), free(kv), free(vv), free(want), free(mag);
  return worst;
}

#define F32 ATTN_DTYPE_F32
#define F16 ATTN_DTYPE_F16
#define BF16 ATTN_DTYPE_BF16

static void sdpa_half(void **state) {
  (void)state;
  static const hcase cases[] = {
      {"all f16", 1, 4, 2, 37, 53, 16, 16, 0, 0, F16, F16, F16, F16, 0, 0},
      {"all bf16 causal", 2, 4, 4, 70, 70, 32, 24, 1, 0, BF16, BF16, BF16, BF16, 0, 0},
      {"bf16 kv, f32 q/out, decode", 1, 8, 2, 1, 3000, 64, 64, 0, 0, F32, BF16, BF16, F32, 0, 0},
      {"f16 kv, f32 q/out, decode", 2, 8, 2, 1, 2100, 64, 64, 0, 0, F32, F16, F16, F32, 0, 0},
      {"f16 kv, 4 rows bottom-right", 1, 4, 1, 4, 600, 32, 32, 1, 1, F32, F16, F16, F32, 0, 0},
      {"f16 q, bf16 k, f32 v, bf16 out", 1, 2, 1, 20, 300, 8, 8, 0, 0, F16, BF16, F32, BF16, 0, 0},
      {"bf16 blhd", 1, 4, 2, 33, 300, 16, 16, 1, 0, BF16, BF16, BF16, BF16, 1, 0},
      {"f16 prefill 300", 1, 2, 2, 300, 300, 64, 64, 1, 0, F16, F16, F16, F16, 0, 0},
      {"f16 NaN key", 1, 2, 1, 9, 40, 8, 8, 1, 0, F16, F16, F16, F16, 0, 5},
      {"bf16 kv NaN key decode", 1, 4, 2, 1, 2500, 16, 16, 0, 0, F32, BF16, BF16, F32, 0, 1000},
  };
  double worst = 0;
  for (int t = 1; t <= 2; t++) {
    attn_ctx *ctx = tu_ctx(t);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
      worst = fmax(worst, run_hcase(&cases[i], ctx));
    attn_ctx_destroy(ctx);
  }
  print_message("sdpa: worst error %.3f of the bound\n", worst);
}

/* Packed variable-length sequences in half precision. */
static void varlen_half(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(2);
  int64_t cu[4] = {0, 5, 5, 21}, Tq = 21, Hq = 4, Hkv = 2, D = 16;
  for (int di = 1; di < 3; di++) {
    int32_t dt = DTS[di];
    size_t nq = (size_t)(Tq * Hq * D), nk = (size_t)(Tq * Hkv * D);
    tu_rng r = {99};
    float *qv = malloc(nq * 4), *kv = malloc(nk * 4), *vv = malloc(nk * 4);
    tu_fill(&r, qv, nq, -1, 1), tu_fill(&r, kv, nk, -1, 1), tu_fill(&r, vv, nk, -1, 1);
    harr q, k, v, o;
    int64_t dq[3] = {Tq, Hq, D}, dk[3] = {Tq, Hkv, D};
    harr_make(&q, ctx, dt, 3, dq, qv);
    harr_make(&k, ctx, dt, 3, dk, kv);
    harr_make(&v, ctx, dt, 3, dk, vv);
    harr_make(&o, ctx, dt, 3, dq, NULL);
    attn_sdpa_params p;
    attn_sdpa_params_init(&p);
    p.causal = 1;
    if (attn_sdpa_varlen(ctx, q.t, k.t, v.t, o.t, 3, cu, cu, &p) != ATTN_OK)
      fail_msg("varlen %s: %s", dname(dt), attn_ctx_last_error(ctx));
    double *want = calloc(nq, sizeof *want), *mag = calloc(nq, sizeof *mag),
           *sc = calloc(nq, sizeof *sc);
    for (int s = 0; s < 3; s++) {
      int64_t L = cu[s + 1] - cu[s];
      if (!L)
        continue;
      ref_sdpa_args a;
      memset(&a, 0, sizeof a);
      a.B = 1, a.Hq = Hq, a.Hkv = Hkv, a.Lq = L, a.Lk = L, a.D = D, a.Dv = D;
      a.q = qv + cu[s] * Hq * D, a.k = kv + cu[s] * Hkv * D, a.v = vv + cu[s] * Hkv * D;
      int64_t qs[4] = {0, D, Hq * D, 1}, ks[4] = {0, D, Hkv * D, 1};
      memcpy(a.qs, qs, sizeof qs), memcpy(a.ks, ks, sizeof ks), memcpy(a.vs, ks, sizeof ks);
      a.causal = 1;
      double *w = malloc((size_t)(Hq * L * D) * sizeof *w), *m = malloc((size_t)(Hq * L * D) * sizeof *m);
      ref_sdpa(&a, w, m, NULL, NULL);
      for (int64_t h = 0; h < Hq; h++)
        for (int64_t i = 0; i < L; i++) {
          double rs = 1e-6;
          for (int64_t d = 0; d < D; d++)
            rs = fmax(rs, m[(h * L + i) * D + d]);
          for (int64_t d = 0; d < D; d++) {
            size_t at = (size_t)(((cu[s] + i) * Hq + h) * D + d);
            want[at] = w[(h * L + i) * D + d];
            sc[at] = rs;
          }
        }
      free(w), free(m);
    }
    char what[32];
    snprintf(what, sizeof what, "varlen %s", dname(dt));
    check_all(what, &o, want, 1e-5, sc);
    harr_free(&q), harr_free(&k), harr_free(&v), harr_free(&o);
    free(qv), free(kv), free(vv), free(want), free(mag), free(sc);
  }
  attn_ctx_destroy(ctx);
}

/* Attention pooling over a bf16 / f16 sequence with f32 queries: the F32
 * pooling of the same (widened) values, bit for bit, since the half path
 * widens exactly and runs the same float computation. */
static void pool_attention_half(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(2);
  int64_t Hq = 4, M = 2, D = 16, B = 2, Hkv = 2, L = 300;
  size_t nq = (size_t)(Hq * M * D), nk = (size_t)(B * Hkv * L * D), no = (size_t)(B * Hq * M * D);
  tu_rng r = {5};
  float *qv = malloc(nq * 4), *kv = malloc(nk * 4), *vv = malloc(nk * 4), *o32 = malloc(no * 4),
        *oh = malloc(no * 4);
  tu_fill(&r, qv, nq, -1, 1), tu_fill(&r, kv, nk, -1, 1), tu_fill(&r, vv, nk, -1, 1);
  for (int di = 1; di < 3; di++) {
    harr q, k, v, kf, vf;
    int64_t dq[3] = {Hq, M, D}, dk[4] = {B, Hkv, L, D}, dout[4] = {B, Hq, M, D};
    harr_make(&q, ctx, ATTN_DTYPE_F32, 3, dq, qv);
    harr_make(&k, ctx, DTS[di], 4, dk, kv); /* kv, vv now hold the rounded values */
    harr_make(&v, ctx, DTS[di], 4, dk, vv);
    harr_make(&kf, ctx, ATTN_DTYPE_F32, 4, dk, kv);
    harr_make(&vf, ctx, ATTN_DTYPE_F32, 4, dk, vv);
    attn_tensor *of, *ohh;
    assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, dout, NULL, o32, no * 4, &of));
    assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, dout, NULL, oh, no * 4, &ohh));
    assert_ok(attn_pool_attention(ctx, q.t, kf.t, vf.t, of, NULL));
    if (attn_pool_attention(ctx, q.t, k.t, v.t, ohh, NULL) != ATTN_OK)
      fail_msg("pool_attention %s: %s", dname(DTS[di]), attn_ctx_last_error(ctx));
    assert_memory_equal(o32, oh, no * 4);
    harr_free(&q), harr_free(&k), harr_free(&v), harr_free(&kf), harr_free(&vf);
  }
  free(qv), free(kv), free(vv), free(o32), free(oh);
  attn_ctx_destroy(ctx);
}

/* The logits output (stage 0, scale * q.k for every key) from f16 / bf16
 * q and k, against float64 dot products of the rounded values; and the
 * masked stage's -inf at the causal keys. */
static void sdpa_logits_half(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(2);
  int64_t B = 2, H = 3, L = 70, D = 24;
  size_t nq = (size_t)(B * H * L * D), nl = (size_t)(B * H * L * L);
  tu_rng r = {11};
  float *qv = malloc(nq * 4), *kv = malloc(nq * 4), *vv = malloc(nq * 4), *lg = malloc(nl * 4);
  assert_true(qv && kv && vv && lg);
  for (int di = 1; di < 3; di++) {
    tu_fill(&r, qv, nq, -2, 2), tu_fill(&r, kv, nq, -2, 2), tu_fill(&r, vv, nq, -1, 1);
    harr q, k, v, o;
    int64_t dq[4] = {B, H, L, D}, dl[4] = {B, H, L, L};
    harr_make(&q, ctx, DTS[di], 4, dq, qv); /* qv, kv now hold the rounded values */
    harr_make(&k, ctx, DTS[di], 4, dq, kv);
    harr_make(&v, ctx, DTS[di], 4, dq, vv);
    harr_make(&o, ctx, ATTN_DTYPE_F32, 4, dq, NULL);
    attn_tensor *tl;
    assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, dl, NULL, lg, nl * 4, &tl));
    for (int stage = 0; stage < 3; stage += 2) {
      attn_sdpa_params p;
      attn_sdpa_params_init(&p);
      p.causal = 1, p.logits = tl, p.logits_stage = stage;
      if (attn_sdpa(ctx, q.t, k.t, v.t, o.t, &p) != ATTN_OK)
        fail_msg("logits %s: %s", dname(DTS[di]), attn_ctx_last_error(ctx));
      double worst = 0;
      for (int64_t bh = 0; bh < B * H; bh++)
        for (int64_t i = 0; i < L; i++)
          for (int64_t j = 0; j < L; j++) {
            double dot = 0, mag = 0;
            for (int64_t d = 0; d < D; d++) {
              double a = qv[(bh * L + i) * D + d], c = kv[(bh * L + j) * D + d];
              dot += a * c, mag += fabs(a * c);
            }
            double w = stage == 2 && j > i ? -INFINITY : dot / sqrt((double)D);
            double got = lg[(bh * L + i) * L + j];
            if (isinf(w)) {
              assert_true(got == w);
              continue;
            }
            double e = fabs(got - w) / (1e-6 * (double)D * mag + 1e-30);
            if (!(e <= 1))
              fail_msg("logits %s stage %d [%lld, %lld, %lld]: %.9g, want %.9g",
                       dname(DTS[di]), stage, (long long)bh, (long long)i, (long long)j, got, w);
            worst = e > worst ? e : worst;
          }
      print_message("logits from %s q, k (stage %d): worst error %.3g of the bound\n",
                    dname(DTS[di]), stage, worst);
    }
    harr_free(&q), harr_free(&k), harr_free(&v), harr_free(&o);
  }
  free(qv), free(kv), free(vv), free(lg);
  attn_ctx_destroy(ctx);
}

/* ---------------- pooling ---------------- */

/* Exact bits of a double rounded once to dt (dt half). */
static uint16_t round_bits(int32_t dt, double v) {
  return dt == ATTN_DTYPE_F16 ? ref_round_f16(v) : ref_round_bf16(v);
}

/* attn_pool and attn_pool_backward with x (dx), out (dout) and scores
 * (dscores) each F32, F16 or BF16, in every mode, with lengths and a keep
 * mask shared by the heads, against ref_pool / ref_pool_backward on the
 * rounded inputs. The library sums in double and rounds each output once;
 * the F32 suites' tolerance is 1e-6 of the sum of the magnitudes that made
 * an output. A sum of these half inputs is exact in double, so a half sum
 * output must be the exact sum rounded once, bit for bit (rounding through
 * a float first misses that at about one output in 2^13: pool_rounded_once
 * has such sums by construction). */
static void pool_half(void **state) {
  (void)state;
  static const int64_t shapes[][4] = {{1, 1, 1, 1}, {2, 3, 7, 5}, {3, 2, 33, 17},
                                      {2, 2, 300, 64}, {2, 2, 0, 3}};
  tu_rng r = {31};
  double worst = 0;
  long exact = 0;
  for (int32_t threads = 1; threads <= 2; threads++) {
    attn_ctx *ctx = tu_ctx(threads);
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
      for (int combo = 1; combo < 27; combo++) /* 0: all F32, the F32 suites */
        for (int mode = 0; mode < 4; mode++) {
          if (threads == 2 && combo % 5) /* two threads: a sample */
            continue;
          int32_t xdt = DTS[combo % 3], odt = DTS[combo / 3 % 3], sdt = DTS[combo / 9];
          int64_t B = shapes[si][0], H = shapes[si][1], L = shapes[si][2], D = shapes[si][3];
          size_t nx = (size_t)(B * H * L * D), no = (size_t)(B * H * D), ns = (size_t)(B * H * L);
          float *xv = malloc((nx + 1) * 4), *sv = malloc((ns + 1) * 4), *gv = malloc(no * 4);
          double *xd = malloc((nx + 1) * 8), *sd = malloc((ns + 1) * 8), *gd = malloc(no * 8);
          double *want = malloc(no * 8), *sc = malloc(no * 8), *dxw = malloc((nx + 1) * 8),
                 *dxs = malloc((nx + 1) * 8), *dsw = malloc((ns + 1) * 8),
                 *dss = malloc((ns + 1) * 8);
          uint8_t *keep = malloc((size_t)(B * L) + 1), *keep3 = malloc(ns + 1);
          int64_t *lengths = malloc((size_t)B * 8);
          assert_true(xv && sv && gv && xd && sd && gd && want && sc && dxw && dxs && dsw &&
                      dss && keep && keep3 && lengths);
          tu_fill(&r, xv, nx, -2, 2);
          tu_fill(&r, sv, ns, -3, 3);
          tu_fill(&r, gv, no, -1, 1);
          for (int64_t b = 0; b < B; b++)
            lengths[b] = L ? (int64_t)(tu_next(&r) % (uint64_t)(L + 1)) : 0;
          if (L > 2)
            lengths[0] = L; /* a whole sequence */
          for (int64_t i = 0; i < B * L; i++)
            keep[i] = tu_next(&r) % 5 != 0;
          for (size_t i = 0; i < ns; i++)
            if (tu_next(&r) % 17 == 0)
              sv[i] = -INFINITY; /* a score of weight 0 */
          int64_t dx4[4] = {B, H, L, D}, do3[3] = {B, H, D}, ds3[3] = {B, H, L}, dk[2] = {B, L};
          harr x, o, sco, g, dx, dsc;
          harr_make(&x, ctx, xdt, 4, dx4, xv); /* the *v arrays now hold the rounded values */
          harr_make(&o, ctx, odt, 3, do3, NULL);
          harr_make(&sco, ctx, sdt, 3, ds3, sv);
          harr_make(&g, ctx, odt, 3, do3, gv);
          harr_make(&dx, ctx, xdt, 4, dx4, NULL);
          harr_make(&dsc, ctx, sdt, 3, ds3, NULL);
          attn_tensor *tk;
          assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_U8, 2, dk, NULL, keep, (size_t)(B * L),
                                     &tk));
          attn_pool_params p;
          attn_pool_params_init(&p);
          p.mode = mode;
          p.lengths = lengths;
          p.keep = tk;
          p.scores = mode == ATTN_POOL_WEIGHTED ? sco.t : NULL;
          char what[128];
          snprintf(what, sizeof what, "pool mode %d [%lld, %lld, %lld, %lld] x %s out %s scores %s",
                   mode, (long long)B, (long long)H, (long long)L, (long long)D, dname(xdt),
                   dname(odt), dname(sdt));
          if (attn_pool(ctx, x.t, o.t, &p) != ATTN_OK)
            fail_msg("%s: %s", what, attn_ctx_last_error(ctx));
          if (attn_pool_backward(ctx, x.t, g.t, dx.t, p.scores ? dsc.t : NULL, &p) != ATTN_OK)
            fail_msg("%s backward: %s", what, attn_ctx_last_error(ctx));

          for (size_t i = 0; i < nx; i++)
            xd[i] = xv[i];
          for (size_t i = 0; i < ns; i++)
            sd[i] = sv[i];
          for (size_t i = 0; i < no; i++)
            gd[i] = gv[i];
          for (int64_t b = 0; b < B; b++)
            for (int64_t h = 0; h < H; h++)
              for (int64_t l = 0; l < L; l++)
                keep3[(b * H + h) * L + l] = l < lengths[b] && keep[b * L + l];
          ref_pool(mode, B, H, L, D, xd, keep3, sd, want);
          ref_pool_backward(mode, B, H, L, D, xd, keep3, sd, gd, dxw,
                            mode == ATTN_POOL_WEIGHTED ? dsw : NULL);
          /* Scales: the magnitudes behind each output (weights sum to 1). */
          for (int64_t bh = 0; bh < B * H; bh++) {
            double n = 0, xmax = 0, gsum = 0;
            for (int64_t l = 0; l < L; l++)
              n += keep3[bh * L + l];
            for (int64_t d = 0; d < D; d++) {
              double a = 0;
              gsum += fabs(gd[bh * D + d]);
              for (int64_t l = 0; l < L; l++)
                if (keep3[bh * L + l]) {
                  a += fabs(xd[(bh * L + l) * D + d]);
                  xmax = fmax(xmax, fabs(xd[(bh * L + l) * D + d]));
                }
              sc[bh * D + d] = mode == ATTN_POOL_MEAN && n ? a / n : a;
            }
            for (int64_t l = 0; l < L; l++) {
              for (int64_t d = 0; d < D; d++)
                dxs[(bh * L + l) * D + d] = fabs(gd[bh * D + d]);
              dss[bh * L + l] = 2 * gsum * xmax;
            }
          }
          worst = fmax(worst, check_all(what, &o, want, 1e-6, sc));
          if (mode == ATTN_POOL_SUM && odt != ATTN_DTYPE_F32 && xdt != ATTN_DTYPE_F32)
            for (size_t i = 0; i < no; i++, exact++)
              if (((uint16_t *)o.data)[i] != round_bits(odt, want[i]))
                fail_msg("%s [%zu]: bits %04x, the exact sum %.17g rounds to %04x", what, i,
                         ((uint16_t *)o.data)[i], want[i], round_bits(odt, want[i]));
          snprintf(what + strlen(what), sizeof what - strlen(what), " dx");
          worst = fmax(worst, check_all(what, &dx, dxw, 1e-6, dxs));
          if (p.scores) {
            snprintf(what + strlen(what) - 3, sizeof what - strlen(what) + 3, " dscores");
            worst = fmax(worst, check_all(what, &dsc, dsw, 1e-6, dss));
          }
          harr_free(&x), harr_free(&o), harr_free(&sco), harr_free(&g), harr_free(&dx),
              harr_free(&dsc);
          free(xv), free(sv), free(gv), free(xd), free(sd), free(gd), free(want), free(sc);
          free(dxw), free(dxs), free(dsw), free(dss), free(keep), free(keep3), free(lengths);
        }
    attn_ctx_destroy(ctx);
  }
  print_message("pool: worst error %.3f of the bound; %ld half sums bit-exact\n", worst, exact);
}

/* Rounded once: sums whose exact value lies just past a tie of the half
 * type, where a float in between lands on the tie and rounds to even (the
 * wrong way): f16 1 + 2^-11 + 2^-24 (float: 1 + 2^-11, a tie, -> 1; once:
 * 1 + 2^-10), bf16 1 + 2^-8 + 2^-40 (-> 1 + 2^-7); and the mean of them,
 * and the same just below, negative. */
static void pool_rounded_once(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  for (int di = 1; di < 3; di++) {
    int32_t dt = DTS[di];
    double t = dt == ATTN_DTYPE_F16 ? 0x1p-11 : 0x1p-8, e = dt == ATTN_DTYPE_F16 ? 0x1p-24 : 0x1p-40;
    /* x [1, 3, 2]: column 0 just above the tie, column 1 just below it, negated */
    float xv[6] = {1.0f, -1.0f, (float)t, -(float)t, (float)e, (float)e};
    int64_t xd[3] = {1, 3, 2}, od[2] = {1, 2};
    attn_tensor *tx = tu_wrap(ctx, xv, 6, 3, xd, NULL), *to = NULL;
    assert_ok(attn_tensor_new(ctx, dt, 2, od, &to));
    for (int mode = 0; mode < 2; mode++) {
      attn_pool_params p;
      attn_pool_params_init(&p);
      p.mode = mode;
      assert_ok(attn_pool(ctx, tx, to, &p));
      uint16_t got[2];
      memcpy(got, attn_tensor_data(to), sizeof got);
      double w0 = 1 + t + e, w1 = -1 - t + e;
      if (mode == 1)
        w0 /= 3, w1 /= 3;
      assert_int_equal(got[0], round_bits(dt, w0));
      assert_int_equal(got[1], round_bits(dt, w1));
      if (mode == 0) { /* the case is the one it claims: a float in between goes wrong */
        float f0 = (float)w0;
        uint16_t twice = dt == ATTN_DTYPE_F16 ? ref_to_f16(tu_bits(f0)) : ref_to_bf16(tu_bits(f0));
        assert_int_not_equal(twice, got[0]);
      }
    }
  }
  attn_ctx_destroy(ctx);
}

/* ---------------- attention layers ---------------- */

/* The decoder layer with BF16 weights (set, then read back as F32 and F16),
 * F16 x and a BF16 or F32 y, against the float64 layer (ref_mha_decoder)
 * on the rounded values; the F32 suites' tolerance, 1e-5 (1 + |want|). */
static void mha_half(void **state) {
  (void)state;
  enum { E = 32, HQ = 4, HKV = 2, DH = 8, T = 20 };
  attn_ctx *ctx = tu_ctx(2);
  tu_rng r = {41};
  static float wv[4][E * E], xv[T * E];
  const int64_t wd[4][2] = {{HQ * DH, E}, {HKV * DH, E}, {HKV * DH, E}, {E, HQ * DH}};
  attn_mha_decoder_params mp;
  attn_mha_decoder_params_init(&mp);
  mp.embed_dim = E, mp.num_heads = HQ, mp.num_kv_heads = HKV;
  attn_mha *m = NULL;
  assert_ok(attn_mha_create_decoder(ctx, &mp, &m));
  harr w[4];
  for (int i = 0; i < 4; i++) {
    tu_fill(&r, wv[i], (size_t)(wd[i][0] * wd[i][1]), -0.3f, 0.3f);
    harr_make(&w[i], ctx, ATTN_DTYPE_BF16, 2, wd[i], wv[i]); /* wv: the rounded values */
    if (attn_mha_set_weight(ctx, m, i, w[i].t) != ATTN_OK)
      fail_msg("set_weight bf16: %s", attn_ctx_last_error(ctx));
    /* read back: F32 is the widened value, F16 that value rounded once */
    harr back32, back16;
    harr_make(&back32, ctx, ATTN_DTYPE_F32, 2, wd[i], NULL);
    harr_make(&back16, ctx, ATTN_DTYPE_F16, 2, wd[i], NULL);
    assert_ok(attn_mha_get_weight(ctx, m, i, back32.t));
    assert_ok(attn_mha_get_weight(ctx, m, i, back16.t));
    for (size_t j = 0; j < back32.n; j++) {
      assert_true(((float *)back32.data)[j] == wv[i][j]);
      assert_int_equal(((uint16_t *)back16.data)[j], ref_to_f16(tu_bits(wv[i][j])));
    }
    harr_free(&back32), harr_free(&back16);
  }
  /* wrapping uses the memory as it is: F32 only */
  assert_int_equal(attn_mha_wrap_weight(ctx, m, 0, w[0].t), ATTN_ERR_UNSUPPORTED);
  tu_fill(&r, xv, T * E, -1, 1);
  int64_t xd[3] = {1, T, E};
  harr x;
  harr_make(&x, ctx, ATTN_DTYPE_F16, 3, xd, xv);
  ref_mha_args a;
  memset(&a, 0, sizeof a);
  a.E = E, a.Hq = HQ, a.Hkv = HKV, a.D = DH;
  a.wq = wv[0], a.wk = wv[1], a.wv = wv[2], a.wo = wv[3];
  double want[T * E], sc[T * E];
  ref_mha_decoder(&a, T, xv, want);
  for (int i = 0; i < T * E; i++)
    sc[i] = 1 + fabs(want[i]);
  double worst = 0;
  for (int yi = 0; yi < 2; yi++) {
    attn_kv_cache_params cp;
    attn_kv_cache_params_init(&cp);
    cp.batch = 1, cp.kv_heads = HKV, cp.head_dim = DH, cp.capacity = T;
    attn_kv_cache *kv = NULL;
    assert_ok(attn_kv_cache_create(ctx, &cp, &kv));
    harr y;
    harr_make(&y, ctx, yi ? ATTN_DTYPE_F32 : ATTN_DTYPE_BF16, 3, xd, NULL);
    if (attn_mha_forward(ctx, m, kv, x.t, y.t, NULL) != ATTN_OK)
      fail_msg("mha_forward f16 x: %s", attn_ctx_last_error(ctx));
    worst = fmax(worst, check_all(yi ? "mha f16 x -> f32 y" : "mha f16 x -> bf16 y", &y, want,
                                  1e-5, sc));
    harr_free(&y);
    attn_kv_cache_free(ctx, kv);
  }
  print_message("mha: worst error %.3f of the bound\n", worst);

  /* The PyTorch form, batch first, on the same values: F16 query, BF16
   * key / value, an F16 out, against its F32 forward on the widened values
   * (that F32 path is checked against torch and float64 in test_mha_torch). */
  attn_mha_torch_params tp;
  attn_mha_torch_params_init(&tp);
  tp.embed_dim = E, tp.num_heads = HQ, tp.batch_first = 1, tp.no_bias = 1;
  attn_mha *tm = NULL;
  assert_ok(attn_mha_create_torch(ctx, &tp, &tm));
  int64_t inw[2] = {3 * E, E};
  harr win;
  float inv[3 * E * E];
  tu_fill(&r, inv, 3 * E * E, -0.3f, 0.3f);
  harr_make(&win, ctx, ATTN_DTYPE_F16, 2, inw, inv);
  assert_ok(attn_mha_set_weight(ctx, tm, ATTN_MHA_IN_PROJ_WEIGHT, win.t));
  assert_ok(attn_mha_set_weight(ctx, tm, ATTN_MHA_O_WEIGHT, w[3].t));
  int64_t kd[3] = {1, T - 3, E};
  float kvv[(T - 3) * E];
  tu_fill(&r, kvv, (T - 3) * E, -1, 1);
  harr key, o16, o32;
  harr_make(&key, ctx, ATTN_DTYPE_BF16, 3, kd, kvv);
  harr_make(&o16, ctx, ATTN_DTYPE_F16, 3, xd, NULL);
  harr_make(&o32, ctx, ATTN_DTYPE_F32, 3, xd, NULL);
  attn_mha_torch_forward_params fp;
  attn_mha_torch_forward_params_init(&fp);
  if (attn_mha_torch_forward(ctx, tm, x.t, key.t, key.t, NULL, NULL, &fp, o16.t, NULL) !=
      ATTN_OK)
    fail_msg("mha_torch_forward half: %s", attn_ctx_last_error(ctx));
  assert_ok(attn_mha_torch_forward(ctx, tm, tu_wrap(ctx, xv, T * E, 3, xd, NULL),
                                   tu_wrap(ctx, kvv, (size_t)((T - 3) * E), 3, kd, NULL),
                                   tu_wrap(ctx, kvv, (size_t)((T - 3) * E), 3, kd, NULL), NULL,
                                   NULL, &fp, o32.t, NULL));
  double w32[T * E];
  for (int i = 0; i < T * E; i++)
    w32[i] = ((float *)o32.data)[i];
  check_all("mha_torch f16 query, bf16 key/value -> f16 out", &o16, w32, 1e-6, sc);
  harr_free(&win), harr_free(&key), harr_free(&o16), harr_free(&o32), harr_free(&x);
  for (int i = 0; i < 4; i++)
    harr_free(&w[i]);
  attn_ctx_destroy(ctx);
}

/* ---------------- RoPE from tables ---------------- */

/* attn_rope_cached on half x and/or y (and in place on half x), against the
 * float64 table rotation of the rounded x. */
static void rope_cached_half(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(2);
  enum { B = 2, H = 3, L = 7, D = 12, HALF = 5, P = 16 };
  tu_rng r = {23};
  float cosv[P * HALF], sinv[P * HALF];
  for (int p = 0; p < P; p++)
    for (int i = 0; i < HALF; i++) {
      double a = p * pow(100.0, -2.0 * i / (2 * HALF));
      cosv[p * HALF + i] = (float)cos(a), sinv[p * HALF + i] = (float)sin(a);
    }
  int64_t pos[B * L];
  for (int i = 0; i < B * L; i++)
    pos[i] = (i * 5 + 3) % P;
  int64_t td[2] = {P, HALF}, xd[4] = {B, H, L, D};
  double worst = 0;
  for (int xi = 0; xi < 3; xi++)
    for (int yi = 0; yi < 4; yi++) { /* yi = 3: in place */
      if (yi == 3 && xi == 0)
        continue;
      if (xi == 0 && yi == 0)
        continue;
      float xv[B * H * L * D];
      tu_fill(&r, xv, B * H * L * D, -2, 2);
      harr x, y;
      harr_make(&x, ctx, DTS[xi], 4, xd, xv);
      if (yi < 3)
        harr_make(&y, ctx, DTS[yi], 4, xd, NULL);
      attn_rope_cached_params rp;
      attn_rope_cached_params_init(&rp);
      rp.position_ids = pos;
      rp.style = (xi + yi) % 2 ? ATTN_ROPE_INTERLEAVED : ATTN_ROPE_HALF_SPLIT;
      if (attn_rope_cached(ctx, x.t, yi < 3 ? y.t : x.t, tu_wrap(ctx, cosv, P * HALF, 2, td, NULL),
                           tu_wrap(ctx, sinv, P * HALF, 2, td, NULL), &rp) != ATTN_OK)
        fail_msg("rope_cached %d -> %d: %s", xi, yi, attn_ctx_last_error(ctx));
      double want[B * H * L * D], cr[B * L * HALF], sr[B * L * HALF];
      for (int i = 0; i < B * H * L * D; i++)
        want[i] = xv[i];
      for (int t = 0; t < B * L; t++)
        for (int i = 0; i < HALF; i++)
          cr[t * HALF + i] = cosv[pos[t] * HALF + i], sr[t * HALF + i] = sinv[pos[t] * HALF + i];
      ref_rope_tables(rp.style == ATTN_ROPE_INTERLEAVED, B, H, L, D, HALF, cr, sr, want);
      char what[64];
      snprintf(what, sizeof what, "rope_cached %s -> %s", dname(DTS[xi]),
               yi < 3 ? dname(DTS[yi]) : "in place");
      worst = fmax(worst, check_all(what, yi < 3 ? &y : &x, want, 2e-6, NULL));
      harr_free(&x);
      if (yi < 3)
        harr_free(&y);
    }
  print_message("rope_cached: worst error %.3f of the bound\n", worst);
  attn_ctx_destroy(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(softmax_half), cmocka_unit_test(softmax_half_edges),
      cmocka_unit_test(posenc_half),  cmocka_unit_test(sdpa_half),
      cmocka_unit_test(varlen_half),  cmocka_unit_test(pool_attention_half),
      cmocka_unit_test(sdpa_logits_half),
      cmocka_unit_test(rope_cached_half),
      cmocka_unit_test(pool_half),
      cmocka_unit_test(pool_rounded_once),
      cmocka_unit_test(mha_half),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
