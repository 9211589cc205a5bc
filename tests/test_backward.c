/* Backward passes against the float64 reference (tests/reference/
 * ref_backward.c, itself checked against torch autograd and finite
 * differences by check_torch.py): softmax / log-softmax backward, RoPE
 * backward. */
#include "ref_backward.h"
#include "ref_common.h"
#include "ref_posenc.h"
#include "test_util.h"

typedef attn_status (*fwd_fn)(attn_ctx *, const attn_tensor *, attn_tensor *,
                              const attn_softmax_params *);
typedef attn_status (*bwd_fn)(attn_ctx *, const attn_tensor *, const attn_tensor *,
                              attn_tensor *, attn_tensor *, const attn_softmax_params *);

static attn_tensor *wrap(attn_ctx *ctx, int32_t dtype, int ndim, const int64_t *dims,
                         const int64_t *strides, void *data, size_t bytes) {
  attn_tensor *t;
  assert_ok(attn_tensor_wrap(ctx, dtype, ndim, dims, strides, data, bytes, &t));
  return t;
}

static ref_view rview(const void *data, int ndim, const int64_t *dims) {
  ref_view v = {data, ndim, {0}, {0}};
  int64_t s = 1;
  for (int a = ndim - 1; a >= 0; a--) {
    v.dims[a] = dims[a];
    v.strides[a] = s;
    s *= dims[a];
  }
  return v;
}

/* One softmax-backward case: x [rows.., n] contiguous, optional masks (mask
 * broadcast over the first axis), forward through the library, backward
 * through the library and the reference. dx is written in place over dy
 * when `inplace`. */
static void softmax_case(attn_ctx *ctx, tu_rng *rng, int log, int ndim, const int64_t *dims,
                         float scale, int masked, int inplace) {
  int64_t n = 1;
  for (int a = 0; a < ndim; a++)
    n *= dims[a];
  int64_t row = dims[ndim - 1], mn = n / dims[0];
  float *x = malloc((size_t)n * 4), *y = malloc((size_t)n * 4), *dy = malloc((size_t)n * 4);
  float *dx = malloc((size_t)n * 4), *dz = malloc((size_t)n * 4), *mask = malloc((size_t)mn * 4);
  uint8_t *bm = malloc((size_t)mn);
  double *wdy = malloc((size_t)n * 8), *wdx = malloc((size_t)n * 8), *wdz = malloc((size_t)n * 8);
  tu_fill(rng, x, (size_t)n, -4, 4);
  tu_fill(rng, dy, (size_t)n, -1, 1);
  tu_fill(rng, mask, (size_t)mn, -2, 2);
  for (int64_t i = 0; i < mn; i++) {
    bm[i] = tu_uniform(rng, 0, 1) < 0.85f;
    if (tu_uniform(rng, 0, 1) < 0.1f)
      mask[i] = -INFINITY;
  }
  if (masked && mn >= 2 * row) /* a row with every entry hidden */
    for (int64_t j = 0; j < row; j++)
      bm[row + j] = 0;
  attn_tensor *tx = wrap(ctx, ATTN_DTYPE_F32, ndim, dims, NULL, x, (size_t)n * 4);
  attn_tensor *ty = wrap(ctx, ATTN_DTYPE_F32, ndim, dims, NULL, y, (size_t)n * 4);
  attn_tensor *tdy = wrap(ctx, ATTN_DTYPE_F32, ndim, dims, NULL, dy, (size_t)n * 4);
  attn_tensor *tdx = inplace ? tdy : wrap(ctx, ATTN_DTYPE_F32, ndim, dims, NULL, dx, (size_t)n * 4);
  attn_tensor *tdz = wrap(ctx, ATTN_DTYPE_F32, ndim, dims, NULL, dz, (size_t)n * 4);
  attn_tensor *tm = wrap(ctx, ATTN_DTYPE_F32, ndim - 1, dims + 1, NULL, mask, (size_t)mn * 4);
  attn_tensor *tb = wrap(ctx, ATTN_DTYPE_U8, ndim - 1, dims + 1, NULL, bm, (size_t)mn);
  attn_softmax_params p;
  attn_softmax_params_init(&p);
  p.scale = scale;
  if (masked) {
    p.mask = tm;
    p.bool_mask = tb;
  }
  assert_ok((log ? attn_log_softmax : attn_softmax)(ctx, tx, ty, &p));
  /* NaN in dy where the forward hid an entry must not leak. */
  for (int64_t i = 0; i < n; i++) {
    if (y[i] == (log ? -INFINITY : 0.0f))
      dy[i] = NAN;
    wdy[i] = dy[i];
  }
  assert_ok((log ? attn_log_softmax_backward : attn_softmax_backward)(ctx, ty, tdy, tdx, tdz, &p));
  ref_view vx = rview(x, ndim, dims), vm = rview(mask, ndim - 1, dims + 1),
           vb = rview(bm, ndim - 1, dims + 1);
  /* The reference reads dy only where visible; give it zeros elsewhere. */
  for (int64_t i = 0; i < n; i++)
    if (isnan(wdy[i]))
      wdy[i] = 0;
  ref_softmax_backward(&vx, scale, masked ? &vm : NULL, masked ? &vb : NULL, log, wdy, wdx, wdz);
  const float *got = inplace ? dy : dx;
  /* dz_j = p_j (dy_j - s) is a difference of O(1) terms: judged absolutely
   * at a few float ulps of the row sum. */
  double tol = 2e-6 * (1 + sqrt((double)row));
  double ex = ref_max_rel_err(got, wdx, (size_t)n, 1.0), ez = ref_max_rel_err(dz, wdz, (size_t)n, 1.0);
  if (!(ex <= tol * fabs(scale) + 1e-7 && ez <= tol))
    fail_msg("%s backward n=%lld scale=%g masked=%d inplace=%d: err dx %g dz %g (tol %g)",
             log ? "log_softmax" : "softmax", (long long)n, (double)scale, masked, inplace, ex,
             ez, tol);
  for (int64_t i = 0; i < n; i++)
    if (wdz[i] == 0 && (got[i] != 0 || dz[i] != 0) && y[i] == (log ? -INFINITY : 0.0f))
      fail_msg("hidden entry %lld: dx %g dz %g, expected 0", (long long)i, (double)got[i],
               (double)dz[i]);
  attn_tensor *ts[] = {tx, ty, tdy, inplace ? NULL : tdx, tdz, tm, tb};
  for (size_t i = 0; i < sizeof ts / sizeof *ts; i++)
    assert_ok(attn_tensor_free(ctx, ts[i]));
  free(x), free(y), free(dy), free(dx), free(dz), free(mask), free(bm), free(wdy), free(wdx),
      free(wdz);
}

static void softmax_backward_matches_reference(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(2);
  tu_rng rng = {14};
  static const int64_t shapes[][4] = {
      {1, 1}, {3, 7}, {5, 1}, {2, 3, 13}, {4, 1000}, {2, 2, 3, 31}, {1, 4097}};
  static const int nds[] = {2, 2, 2, 3, 2, 4, 2};
  for (size_t s = 0; s < sizeof nds / sizeof *nds; s++)
    for (int log = 0; log < 2; log++)
      for (int masked = 0; masked < 2; masked++)
        for (int inplace = 0; inplace < 2; inplace++)
          softmax_case(ctx, &rng, log, nds[s], shapes[s], masked ? 0.5f : 1.0f, masked,
                       inplace);
  attn_ctx_destroy(ctx);
}

/* Strided views (a [B, L, H, D]-like transpose) give the contiguous result. */
static void softmax_backward_strided(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  tu_rng rng = {3};
  enum { A = 3, R = 4, N = 9 };
  float y[A * R * N], dy[A * R * N], dx[A * R * N], cdx[A * R * N];
  tu_fill(&rng, y, A * R * N, 0, 0.3f);
  tu_fill(&rng, dy, A * R * N, -1, 1);
  int64_t dims[3] = {A, R, N}, tdims[3] = {R, A, N}, ts[3] = {N, R * N, 1};
  attn_tensor *cy = wrap(ctx, ATTN_DTYPE_F32, 3, dims, NULL, y, sizeof y);
  attn_tensor *cdy = wrap(ctx, ATTN_DTYPE_F32, 3, dims, NULL, dy, sizeof dy);
  attn_tensor *cx = wrap(ctx, ATTN_DTYPE_F32, 3, dims, NULL, cdx, sizeof cdx);
  attn_tensor *sy = wrap(ctx, ATTN_DTYPE_F32, 3, tdims, ts, y, sizeof y);
  attn_tensor *sdy = wrap(ctx, ATTN_DTYPE_F32, 3, tdims, ts, dy, sizeof dy);
  attn_tensor *sx = wrap(ctx, ATTN_DTYPE_F32, 3, tdims, ts, dx, sizeof dx);
  for (int log = 0; log < 2; log++) {
    bwd_fn f = log ? attn_log_softmax_backward : attn_softmax_backward;
    assert_ok(f(ctx, cy, cdy, cx, NULL, NULL));
    assert_ok(f(ctx, sy, sdy, sx, NULL, NULL));
    assert_memory_equal(dx, cdx, sizeof dx);
  }
  attn_ctx_destroy(ctx);
}

/* Over another axis (params.axis, as the forward): the same bits as the
 * last-axis gradient of a transposed copy; a positive or too negative axis
 * is refused. */
static void softmax_backward_axis(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(2);
  tu_rng rng = {21};
  enum { A = 3, N = 11, R = 5 };
  static float x[A * N * R], y[A * N * R], dy[A * N * R], dx[A * N * R], dz[A * N * R];
  static float yt[A * R * N], dyt[A * R * N], dxt[A * R * N], dzt[A * R * N];
  tu_fill(&rng, x, A * N * R, -3, 3);
  tu_fill(&rng, dy, A * N * R, -1, 1);
  int64_t dims[3] = {A, N, R}, tdims[3] = {A, R, N};
  for (int log = 0; log < 2; log++) {
    attn_softmax_params p;
    attn_softmax_params_init(&p);
    p.axis = -2, p.scale = 0.75f;
    attn_tensor *tx = wrap(ctx, ATTN_DTYPE_F32, 3, dims, NULL, x, sizeof x);
    attn_tensor *ty = wrap(ctx, ATTN_DTYPE_F32, 3, dims, NULL, y, sizeof y);
    attn_tensor *tdy = wrap(ctx, ATTN_DTYPE_F32, 3, dims, NULL, dy, sizeof dy);
    attn_tensor *tdx = wrap(ctx, ATTN_DTYPE_F32, 3, dims, NULL, dx, sizeof dx);
    attn_tensor *tdz = wrap(ctx, ATTN_DTYPE_F32, 3, dims, NULL, dz, sizeof dz);
    assert_ok((log ? attn_log_softmax : attn_softmax)(ctx, tx, ty, &p));
    bwd_fn f = log ? attn_log_softmax_backward : attn_softmax_backward;
    assert_ok(f(ctx, ty, tdy, tdx, tdz, &p));
    for (int a = 0; a < A; a++)
      for (int n = 0; n < N; n++)
        for (int r = 0; r < R; r++) {
          yt[(a * R + r) * N + n] = y[(a * N + n) * R + r];
          dyt[(a * R + r) * N + n] = dy[(a * N + n) * R + r];
        }
    attn_tensor *uy = wrap(ctx, ATTN_DTYPE_F32, 3, tdims, NULL, yt, sizeof yt);
    attn_tensor *udy = wrap(ctx, ATTN_DTYPE_F32, 3, tdims, NULL, dyt, sizeof dyt);
    attn_tensor *udx = wrap(ctx, ATTN_DTYPE_F32, 3, tdims, NULL, dxt, sizeof dxt);
    attn_tensor *udz = wrap(ctx, ATTN_DTYPE_F32, 3, tdims, NULL, dzt, sizeof dzt);
    attn_softmax_params last = p;
    last.axis = 0;
    assert_ok(f(ctx, uy, udy, udx, udz, &last));
    for (int a = 0; a < A; a++)
      for (int n = 0; n < N; n++)
        for (int r = 0; r < R; r++) {
          assert_true(dx[(a * N + n) * R + r] == dxt[(a * R + r) * N + n]);
          assert_true(dz[(a * N + n) * R + r] == dzt[(a * R + r) * N + n]);
        }
    p.axis = 1;
    assert_status(f(ctx, ty, tdy, tdx, NULL, &p), ATTN_ERR_INVALID_ARG);
    assert_error_mentions(ctx, "params.axis = 1");
    p.axis = -4;
    assert_status(f(ctx, ty, tdy, tdx, NULL, &p), ATTN_ERR_INVALID_ARG);
    attn_tensor *ts[] = {tx, ty, tdy, tdx, tdz, uy, udy, udx, udz};
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++)
      assert_ok(attn_tensor_free(ctx, ts[i]));
  }
  attn_ctx_destroy(ctx);
}

/* Edge rows, exact: all hidden -> 0 whatever dy holds; NaN row -> NaN;
 * length 1 -> 0 (softmax of one entry is constant). */
static void softmax_backward_edges(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  int64_t d4[1] = {4}, d1[1] = {1};
  struct {
    int log;
    int64_t *dims;
    float y[4], dy[4], want[4];
  } rows[] = {
      {0, d4, {0, 0, 0, 0}, {NAN, INFINITY, 1, -2}, {0, 0, 0, 0}},
      {1, d4, {-INFINITY, -INFINITY, -INFINITY, -INFINITY}, {NAN, 1, 2, 3}, {0, 0, 0, 0}},
      {0, d4, {NAN, NAN, NAN, NAN}, {1, 1, 1, 1}, {NAN, NAN, NAN, NAN}},
      {1, d4, {NAN, NAN, NAN, NAN}, {1, 1, 1, 1}, {NAN, NAN, NAN, NAN}},
      {0, d1, {1}, {5}, {0}},
      {1, d1, {0}, {5}, {0}},
      /* one visible entry among hidden ones: its gradient is 0 too */
      {0, d4, {0, 1, 0, 0}, {NAN, 3, INFINITY, 1}, {0, 0, 0, 0}},
      {1, d4, {-INFINITY, 0, -INFINITY, -INFINITY}, {NAN, 3, 7, 1}, {0, 0, 0, 0}},
  };
  for (size_t r = 0; r < sizeof rows / sizeof *rows; r++) {
    float dx[4] = {7, 7, 7, 7}, dz[4] = {7, 7, 7, 7};
    size_t n = (size_t)rows[r].dims[0];
    attn_tensor *y = wrap(ctx, ATTN_DTYPE_F32, 1, rows[r].dims, NULL, rows[r].y, n * 4);
    attn_tensor *dy = wrap(ctx, ATTN_DTYPE_F32, 1, rows[r].dims, NULL, rows[r].dy, n * 4);
    attn_tensor *tx = wrap(ctx, ATTN_DTYPE_F32, 1, rows[r].dims, NULL, dx, n * 4);
    attn_tensor *tz = wrap(ctx, ATTN_DTYPE_F32, 1, rows[r].dims, NULL, dz, n * 4);
    assert_ok((rows[r].log ? attn_log_softmax_backward : attn_softmax_backward)(ctx, y, dy, tx,
                                                                              tz, NULL));
    for (size_t j = 0; j < n; j++) {
      float w = rows[r].want[j];
      if (isnan(w) ? !(isnan(dx[j]) && isnan(dz[j])) : (dx[j] != w || dz[j] != w))
        fail_msg("edge row %zu entry %zu: dx %g dz %g, expected %g", r, j, (double)dx[j],
                 (double)dz[j], (double)w);
    }
  }
  attn_ctx_destroy(ctx);
}

static void softmax_backward_bad_input(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  float a[12] = {0}, b[12] = {0}, c[12] = {0};
  int64_t d[2] = {3, 4}, d2[2] = {4, 3};
  attn_tensor *y = wrap(ctx, ATTN_DTYPE_F32, 2, d, NULL, a, sizeof a);
  attn_tensor *dy = wrap(ctx, ATTN_DTYPE_F32, 2, d, NULL, b, sizeof b);
  attn_tensor *dx = wrap(ctx, ATTN_DTYPE_F32, 2, d, NULL, c, sizeof c);
  attn_tensor *other = wrap(ctx, ATTN_DTYPE_F32, 2, d2, NULL, c, sizeof c);
  int64_t zs[2] = {0, 1};
  attn_tensor *bcast = wrap(ctx, ATTN_DTYPE_F32, 2, d, zs, c, sizeof c);
  assert_status(attn_softmax_backward(NULL, y, dy, dx, NULL, NULL), ATTN_ERR_NULL_ARG);
  assert_status(attn_softmax_backward(ctx, NULL, dy, dx, NULL, NULL), ATTN_ERR_NULL_ARG);
  assert_status(attn_softmax_backward(ctx, y, other, dx, NULL, NULL), ATTN_ERR_SHAPE);
  assert_non_null(strstr(attn_ctx_last_error(ctx), "attn_softmax_backward: dy"));
  assert_status(attn_softmax_backward(ctx, y, dy, other, NULL, NULL), ATTN_ERR_SHAPE);
  assert_status(attn_softmax_backward(ctx, y, dy, bcast, NULL, NULL), ATTN_ERR_INVALID_ARG);
  assert_status(attn_softmax_backward(ctx, y, dy, y, NULL, NULL), ATTN_ERR_ALIASING);
  assert_status(attn_log_softmax_backward(ctx, y, dy, dx, dx, NULL), ATTN_ERR_ALIASING);
  assert_status(attn_softmax_backward(ctx, y, dy, dx, dy, NULL), ATTN_ERR_ALIASING);
  attn_softmax_params p;
  attn_softmax_params_init(&p);
  p.scale = INFINITY;
  assert_status(attn_softmax_backward(ctx, y, dy, dx, NULL, &p), ATTN_ERR_INVALID_ARG);
  assert_non_null(strstr(attn_ctx_last_error(ctx), "params.scale"));
  for (int i = 0; i < 12; i++) /* nothing written on failure */
    assert_true(c[i] == 0);
  assert_ok(attn_softmax_backward(ctx, y, dy, dy, NULL, NULL)); /* in place */
  attn_ctx_destroy(ctx);
}

/* RoPE backward against the reference (the transposed Jacobian), for both
 * styles, partial rotary dims, explicit positions. */
static void rope_backward_matches_reference(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(2);
  tu_rng rng = {5};
  enum { B = 2, H = 3, L = 7 };
  static const int64_t Ds[][2] = {{8, 8}, {10, 6}, {64, 0}, {2, 2}};
  for (size_t s = 0; s < sizeof Ds / sizeof *Ds; s++)
    for (int inter = 0; inter < 2; inter++)
      for (int explicit_pos = 0; explicit_pos < 2; explicit_pos++) {
        int64_t D = Ds[s][0], r = Ds[s][1] ? Ds[s][1] : D, n = B * H * L * D;
        float *g = malloc((size_t)n * 4);
        double *want = malloc((size_t)n * 8);
        int64_t pos[B * L];
        for (int64_t i = 0; i < B * L; i++)
          pos[i] = explicit_pos ? (int64_t)(tu_next(&rng) % 5000) : 3 + i % L;
        tu_fill(&rng, g, (size_t)n, -1, 1);
        for (int64_t i = 0; i < n; i++)
          want[i] = g[i];
        int64_t dims[4] = {B, H, L, D};
        attn_tensor *t = wrap(ctx, ATTN_DTYPE_F32, 4, dims, NULL, g, (size_t)n * 4);
        attn_rope_params p;
        attn_rope_params_init(&p);
        p.style = inter ? ATTN_ROPE_INTERLEAVED : ATTN_ROPE_HALF_SPLIT;
        p.rotary_dim = (int32_t)Ds[s][1];
        if (explicit_pos)
          p.positions = pos;
        else
          p.offset = 3;
        assert_ok(attn_rope_backward(ctx, t, &p));
        ref_rope_backward(inter, B, H, L, D, r, 10000.0, pos, want);
        double e = ref_max_rel_err(g, want, (size_t)n, 1.0);
        if (!(e <= 1e-6))
          fail_msg("rope backward D=%lld r=%lld interleaved=%d: err %g", (long long)D,
                   (long long)r, inter, e);
        /* the forward undoes the backward (an orthogonal map) */
        assert_ok(attn_rope(ctx, t, &p));
        ref_rope(inter, B, H, L, D, r, 10000.0, pos, want);
        e = ref_max_rel_err(g, want, (size_t)n, 1.0);
        if (!(e <= 2e-6))
          fail_msg("rope forward after backward: err %g", e);
        assert_ok(attn_tensor_free(ctx, t));
        free(g);
        free(want);
      }
  int64_t bad[4] = {1, 1, 1, 3};
  float x[3];
  attn_tensor *t = wrap(ctx, ATTN_DTYPE_F32, 4, bad, NULL, x, sizeof x);
  assert_status(attn_rope_backward(ctx, t, NULL), ATTN_ERR_INVALID_ARG);
  assert_non_null(strstr(attn_ctx_last_error(ctx), "attn_rope_backward:"));
  attn_ctx_destroy(ctx);
}


/* ---- SDPA backward ---- */

typedef struct {
  const char *name;
  int64_t B, Hq, Hkv, Lq, Lk, D, Dv;
  float scale, softcap;
  int causal, bottom_right, window;
  int64_t wl, wr;
  int kv_lens, mask, bool_mask, alibi, sinks, dmask, blhd, q_offsets;
  /* q, k, v and dout read one row per head (row stride 0: broadcast over
   * the sequence); with one query or key, dq or dk and dv too. */
  int rows0;
} sdpa_case;

/* The forward through the library (out, lse), the backward through the
 * library and the reference; every gradient judged against the largest
 * reference value of its tensor. */
static void sdpa_case_run(attn_ctx *ctx, const sdpa_case *c, uint64_t seed, float *keep_dq) {
  tu_rng rng = {seed};
  int64_t B = c->B, Hq = c->Hq, Hkv = c->Hkv, Lq = c->Lq, Lk = c->Lk, D = c->D, Dv = c->Dv;
  int64_t nq = B * Hq * Lq * D, nk = B * Hkv * Lk * D, nv = B * Hkv * Lk * Dv,
          no = B * Hq * Lq * Dv, nm = B * Hq * Lq * Lk;
  float *q = malloc((size_t)nq * 4), *k = malloc((size_t)nk * 4), *v = malloc((size_t)nv * 4);
  float *o = malloc((size_t)no * 4), *g = malloc((size_t)no * 4), *lse = malloc((size_t)(B * Hq * Lq) * 4);
  float *dq = malloc((size_t)nq * 4), *dk = malloc((size_t)nk * 4), *dv = malloc((size_t)nv * 4);
  float *mask = malloc((size_t)nm * 4), *dm = malloc((size_t)nm * 4);
  uint8_t *bm = malloc((size_t)nm);
  double *wq = malloc((size_t)nq * 8), *wk = malloc((size_t)nk * 8), *wv = malloc((size_t)nv * 8);
  double *wg = malloc((size_t)no * 8), *wm = malloc((size_t)nm * 8), wsk[16];
  tu_fill(&rng, q, (size_t)nq, -1, 1);
  tu_fill(&rng, k, (size_t)nk, -1, 1);
  tu_fill(&rng, v, (size_t)nv, -1, 1);
  tu_fill(&rng, g, (size_t)no, -1, 1);
  tu_fill(&rng, mask, (size_t)nm, -1, 1);
  for (int64_t i = 0; i < nm; i++) {
    bm[i] = tu_uniform(&rng, 0, 1) < 0.8f;
    if (tu_uniform(&rng, 0, 1) < 0.15f)
      mask[i] = -INFINITY;
  }
  for (int64_t i = 0; i < no; i++)
    wg[i] = g[i];
  int64_t kv_lens[4] = {Lk, Lk > 2 ? Lk - 2 : 0, 0, 1}, q_offsets[4] = {3, -2, 0, Lk};
  float alibi[16], sinks[16], dsinks[16];
  for (int h = 0; h < Hq; h++) {
    alibi[h] = 1.0f / (float)(2 << h);
    sinks[h] = tu_uniform(&rng, -1, 1);
  }
  /* [B, L, H, D] layouts through strides, when asked */
  int64_t qd[4] = {B, Hq, Lq, D}, kd[4] = {B, Hkv, Lk, D}, vd[4] = {B, Hkv, Lk, Dv},
          od[4] = {B, Hq, Lq, Dv}, ld[3] = {B, Hq, Lq}, md[4] = {B, Hq, Lq, Lk};
  int64_t qs[4] = {Lq * Hq * D, D, Hq * D, 1}, ks[4] = {Lk * Hkv * D, D, Hkv * D, 1},
          vs[4] = {Lk * Hkv * Dv, Dv, Hkv * Dv, 1}, os[4] = {Lq * Hq * Dv, Dv, Hq * Dv, 1};
  int bl = c->blhd;
  if (c->rows0) { /* contiguous but for the row stride */
    int64_t q0[4] = {Hq * Lq * D, Lq * D, 0, 1}, k0[4] = {Hkv * Lk * D, Lk * D, 0, 1},
            v0[4] = {Hkv * Lk * Dv, Lk * Dv, 0, 1}, o0[4] = {Hq * Lq * Dv, Lq * Dv, 0, 1};
    memcpy(qs, q0, sizeof qs), memcpy(ks, k0, sizeof ks), memcpy(vs, v0, sizeof vs);
    memcpy(os, o0, sizeof os);
  }
  const int64_t *in_q = bl || c->rows0 ? qs : NULL, *in_k = bl || c->rows0 ? ks : NULL,
                *in_v = bl || c->rows0 ? vs : NULL, *in_g = bl || c->rows0 ? os : NULL;
  const int64_t *out_q = bl || (c->rows0 && Lq == 1) ? qs : NULL,
                *out_k = bl || (c->rows0 && Lk == 1) ? ks : NULL,
                *out_v = bl || (c->rows0 && Lk == 1) ? vs : NULL;
  attn_tensor *tq = wrap(ctx, ATTN_DTYPE_F32, 4, qd, in_q, q, (size_t)nq * 4);
  attn_tensor *tk = wrap(ctx, ATTN_DTYPE_F32, 4, kd, in_k, k, (size_t)nk * 4);
  attn_tensor *tv = wrap(ctx, ATTN_DTYPE_F32, 4, vd, in_v, v, (size_t)nv * 4);
  attn_tensor *to = wrap(ctx, ATTN_DTYPE_F32, 4, od, bl ? os : NULL, o, (size_t)no * 4);
  attn_tensor *tg = wrap(ctx, ATTN_DTYPE_F32, 4, od, in_g, g, (size_t)no * 4);
  attn_tensor *tl = wrap(ctx, ATTN_DTYPE_F32, 3, ld, NULL, lse, (size_t)(B * Hq * Lq) * 4);
  attn_tensor *tdq = wrap(ctx, ATTN_DTYPE_F32, 4, qd, out_q, dq, (size_t)nq * 4);
  attn_tensor *tdk = wrap(ctx, ATTN_DTYPE_F32, 4, kd, out_k, dk, (size_t)nk * 4);
  attn_tensor *tdv = wrap(ctx, ATTN_DTYPE_F32, 4, vd, out_v, dv, (size_t)nv * 4);
  attn_tensor *tm = wrap(ctx, ATTN_DTYPE_F32, 4, md, NULL, mask, (size_t)nm * 4);
  attn_tensor *tb = wrap(ctx, ATTN_DTYPE_U8, 4, md, NULL, bm, (size_t)nm);
  attn_tensor *tdm = wrap(ctx, ATTN_DTYPE_F32, 4, md, NULL, dm, (size_t)nm * 4);
  attn_sdpa_params p;
  attn_sdpa_params_init(&p);
  p.scale = c->scale;
  p.softcap = c->softcap;
  p.causal = c->causal;
  p.align = c->bottom_right ? ATTN_ALIGN_BOTTOM_RIGHT : ATTN_ALIGN_TOP_LEFT;
  p.window = c->window;
  p.window_left = c->wl;
  p.window_right = c->wr;
  p.mask = c->mask ? tm : NULL;
  p.bool_mask = c->bool_mask ? tb : NULL;
  p.kv_lens = c->kv_lens ? kv_lens : NULL;
  p.alibi_slopes = c->alibi ? alibi : NULL;
  p.sinks = c->sinks ? sinks : NULL;
  p.q_offsets = c->q_offsets ? q_offsets : NULL;
  p.lse = tl;
  assert_ok(attn_sdpa(ctx, tq, tk, tv, to, &p));
  attn_sdpa_backward_params bp;
  attn_sdpa_backward_params_init(&bp);
  bp.dmask = c->dmask ? tdm : NULL;
  bp.dsinks = c->sinks ? dsinks : NULL;
  assert_ok(attn_sdpa_backward(ctx, tq, tk, tv, to, tl, tg, tdq, tdk, tdv, &p, &bp));

  ref_sdpa_args a = {B, Hq, Hkv, Lq, Lk, D, Dv, q, k, v,
                     {0}, {0}, {0}, c->scale, c->softcap, c->causal, c->bottom_right,
                     c->window, c->wl, c->wr, c->mask ? mask : NULL, {Hq * Lq * Lk, Lq * Lk, Lk, 1},
                     c->bool_mask ? bm : NULL, {Hq * Lq * Lk, Lq * Lk, Lk, 1},
                     c->kv_lens ? kv_lens : NULL, c->alibi ? alibi : NULL,
                     c->sinks ? sinks : NULL, c->q_offsets ? q_offsets : NULL};
  memcpy(a.qs, in_q ? qs : (int64_t[4]){Hq * Lq * D, Lq * D, D, 1}, sizeof a.qs);
  memcpy(a.ks, in_k ? ks : (int64_t[4]){Hkv * Lk * D, Lk * D, D, 1}, sizeof a.ks);
  memcpy(a.vs, in_v ? vs : (int64_t[4]){Hkv * Lk * Dv, Lk * Dv, Dv, 1}, sizeof a.vs);
  /* dout in [B, H, L, D] order for the reference */
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < Hq; h++)
      for (int64_t i = 0; i < Lq; i++)
        for (int64_t d = 0; d < Dv; d++)
          wg[((b * Hq + h) * Lq + i) * Dv + d] =
              g[bl ? ((b * Lq + i) * Hq + h) * Dv + d
                   : ((b * Hq + h) * Lq + (c->rows0 ? 0 : i)) * Dv + d];
  ref_sdpa_backward(&a, wg, wq, wk, wv, wm, c->sinks ? wsk : NULL);
  struct {
    const char *n;
    const float *got;
    const double *want;
    int64_t count, H, L, Dd;
  } outs[] = {{"dq", dq, wq, nq, Hq, Lq, D},
              {"dk", dk, wk, nk, Hkv, Lk, D},
              {"dv", dv, wv, nv, Hkv, Lk, Dv},
              {"dmask", dm, wm, c->dmask ? nm : 0, 0, 0, 0}};
  for (size_t t = 0; t < 4; t++) {
    double big = 1e-3, worst = 0;
    for (int64_t i = 0; i < outs[t].count; i++)
      big = fmax(big, fabs(outs[t].want[i]));
    for (int64_t i = 0; i < outs[t].count; i++) {
      int64_t gi = i; /* the library's element for reference index i */
      if (bl && outs[t].H) {
        int64_t dd = i % outs[t].Dd, l = i / outs[t].Dd % outs[t].L,
                h = i / (outs[t].Dd * outs[t].L) % outs[t].H,
                b = i / (outs[t].Dd * outs[t].L * outs[t].H);
        gi = ((b * outs[t].L + l) * outs[t].H + h) * outs[t].Dd + dd;
      }
      double e = fabs((double)outs[t].got[gi] - outs[t].want[i]) / big;
      if (!(e <= worst))
        worst = isnan(e) ? INFINITY : e;
    }
    if (!(worst <= 2e-5 * sqrt((double)(Lq > Lk ? Lq : Lk))))
      fail_msg("sdpa backward %s: %s error %g (relative to max %g)", c->name, outs[t].n, worst,
               big);
  }
  if (c->sinks)
    for (int h = 0; h < Hq; h++)
      if (!tu_close(dsinks[h], wsk[h], 1e-4, 1e-5))
        fail_msg("sdpa backward %s: dsinks[%d] = %g, reference %g", c->name, h,
                 (double)dsinks[h], wsk[h]);
  if (keep_dq)
    memcpy(keep_dq, dq, (size_t)nq * 4);
  attn_tensor *ts[] = {tq, tk, tv, to, tg, tl, tdq, tdk, tdv, tm, tb, tdm};
  for (size_t i = 0; i < sizeof ts / sizeof *ts; i++)
    assert_ok(attn_tensor_free(ctx, ts[i]));
  void *bufs[] = {q, k, v, o, g, lse, dq, dk, dv, mask, dm, bm, wq, wk, wv, wg, wm};
  for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
    free(bufs[i]);
}

static const sdpa_case sdpa_cases[] = {
    {"plain", 2, 2, 2, 5, 7, 4, 4, .scale = 0},
    {"gqa", 1, 4, 2, 9, 11, 8, 8, .scale = 0},
    {"mqa", 2, 3, 1, 6, 5, 4, 4, .scale = 0},
    {"dv!=d", 1, 2, 2, 7, 9, 5, 3, .scale = 0},
    {"length 1", 1, 1, 1, 1, 1, 1, 1, .scale = 0},
    {"scale", 1, 2, 1, 4, 6, 8, 8, .scale = 0.3f},
    {"causal", 2, 2, 2, 70, 70, 16, 16, .causal = 1},
    {"causal lq>lk", 1, 2, 2, 9, 5, 4, 4, .causal = 1},
    {"causal br", 1, 2, 1, 5, 140, 8, 4, .causal = 1, .bottom_right = 1},
    {"causal br lq>lk (empty rows)", 1, 2, 2, 9, 4, 4, 4, .causal = 1, .bottom_right = 1},
    {"window", 1, 2, 2, 150, 150, 8, 8, .window = 1, .wl = 20, .wr = 3},
    {"kv_lens", 4, 2, 1, 6, 9, 4, 4, .kv_lens = 1},
    {"mask + dmask", 2, 2, 2, 6, 140, 4, 4, .mask = 1, .dmask = 1},
    {"bool mask", 2, 2, 1, 70, 9, 4, 4, .bool_mask = 1, .dmask = 1},
    {"alibi", 1, 4, 2, 8, 8, 4, 4, .alibi = 1, .causal = 1},
    {"softcap", 1, 2, 2, 7, 8, 8, 8, .softcap = 0.8f, .scale = 1.0f},
    {"sinks", 4, 2, 2, 6, 7, 4, 4, .sinks = 1, .kv_lens = 1},
    {"everything", 2, 4, 2, 67, 133, 12, 5, .scale = 0.9f, .softcap = 2.0f, .causal = 1,
     .window = 1, .wl = 40, .wr = 2, .mask = 1, .bool_mask = 1, .kv_lens = 1, .alibi = 1,
     .sinks = 1, .dmask = 1},
    {"q_offsets", 4, 2, 1, 9, 140, 4, 4, .causal = 1, .window = 1, .wl = 30, .wr = 1,
     .alibi = 1, .q_offsets = 1},
    {"causal br + kv_lens", 4, 2, 2, 6, 9, 4, 4, .causal = 1, .bottom_right = 1, .kv_lens = 1,
     .alibi = 1},
    {"[B, L, H, D] strides", 2, 4, 2, 66, 130, 8, 6, .causal = 1, .blhd = 1, .sinks = 1},
    /* Rows BLAS cannot take as they are (ATTN_KERNELS=sse2: cblas_sgemm wants
     * a leading dimension >= the row length, even for one row). */
    {"row stride 0", 2, 4, 2, 70, 140, 8, 6, .causal = 1, .alibi = 1, .rows0 = 1},
    {"one row, stride 0", 2, 2, 1, 1, 1, 5, 3, .sinks = 1, .rows0 = 1},
};

static void sdpa_backward_matches_reference(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(2);
  for (size_t c = 0; c < sizeof sdpa_cases / sizeof *sdpa_cases; c++)
    sdpa_case_run(ctx, &sdpa_cases[c], 100 + c, NULL);
  attn_ctx_destroy(ctx);
}

/* Same bits for 1, 2 and 3 threads. */
static void sdpa_backward_deterministic(void **state) {
  (void)state;
  const sdpa_case *c = &sdpa_cases[0];
  for (size_t i = 0; i < sizeof sdpa_cases / sizeof *sdpa_cases; i++)
    if (!strcmp(sdpa_cases[i].name, "everything"))
      c = &sdpa_cases[i];
  size_t nq = (size_t)(c->B * c->Hq * c->Lq * c->D);
  float *ref = malloc(nq * 4), *got = malloc(nq * 4);
  for (int32_t t = 1; t <= 3; t++) {
    attn_ctx *ctx = tu_ctx(t);
    sdpa_case_run(ctx, c, 7, t == 1 ? ref : got);
    if (t > 1)
      assert_memory_equal(ref, got, nq * 4);
    attn_ctx_destroy(ctx);
  }
  free(ref);
  free(got);
}

/* Packed sequences: each sequence's gradients equal the dense backward of
 * that sequence alone (B = 1), bit for bit; the sink gradient is their sum;
 * a sequence without queries gives its keys zeros. */
static void sdpa_varlen_backward_matches_dense(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(2);
  tu_rng rng = {77};
  enum { NB = 4, HQ = 4, HKV = 2, D = 8, DV = 6, TQ = 150, TK = 260 };
  const int64_t cu_q[NB + 1] = {0, 40, 40, 137, TQ}, cu_k[NB + 1] = {0, 70, 75, 200, TK};
  static float q[TQ * HQ * D], k[TK * HKV * D], v[TK * HKV * DV], o[TQ * HQ * DV],
      g[TQ * HQ * DV], lse[HQ * TQ], dq[TQ * HQ * D], dk[TK * HKV * D], dv[TK * HKV * DV];
  tu_fill(&rng, q, sizeof q / 4, -1, 1);
  tu_fill(&rng, k, sizeof k / 4, -1, 1);
  tu_fill(&rng, v, sizeof v / 4, -1, 1);
  tu_fill(&rng, g, sizeof g / 4, -1, 1);
  float sinks[HQ] = {0.5f, -1, 0, 2}, alibi[HQ] = {0.5f, 0.25f, 0.125f, 0.0625f}, ds[HQ];
  double ds_sum[HQ] = {0};
  int64_t qd[3] = {TQ, HQ, D}, kd[3] = {TK, HKV, D}, vd[3] = {TK, HKV, DV},
          od[3] = {TQ, HQ, DV}, ld[2] = {HQ, TQ};
  attn_tensor *tq = wrap(ctx, ATTN_DTYPE_F32, 3, qd, NULL, q, sizeof q),
              *tk = wrap(ctx, ATTN_DTYPE_F32, 3, kd, NULL, k, sizeof k),
              *tv = wrap(ctx, ATTN_DTYPE_F32, 3, vd, NULL, v, sizeof v),
              *to = wrap(ctx, ATTN_DTYPE_F32, 3, od, NULL, o, sizeof o),
              *tg = wrap(ctx, ATTN_DTYPE_F32, 3, od, NULL, g, sizeof g),
              *tl = wrap(ctx, ATTN_DTYPE_F32, 2, ld, NULL, lse, sizeof lse),
              *tdq = wrap(ctx, ATTN_DTYPE_F32, 3, qd, NULL, dq, sizeof dq),
              *tdk = wrap(ctx, ATTN_DTYPE_F32, 3, kd, NULL, dk, sizeof dk),
              *tdv = wrap(ctx, ATTN_DTYPE_F32, 3, vd, NULL, dv, sizeof dv);
  attn_sdpa_params p;
  attn_sdpa_params_init(&p);
  p.causal = 1;
  p.align = ATTN_ALIGN_BOTTOM_RIGHT;
  p.softcap = 3;
  p.sinks = sinks;
  p.alibi_slopes = alibi;
  p.lse = tl;
  assert_ok(attn_sdpa_varlen(ctx, tq, tk, tv, to, NB, cu_q, cu_k, &p));
  attn_sdpa_backward_params bp;
  attn_sdpa_backward_params_init(&bp);
  bp.dsinks = ds;
  for (size_t i = 0; i < sizeof dk / 4; i++)
    dk[i] = 777;
  assert_ok(attn_sdpa_varlen_backward(ctx, tq, tk, tv, to, tl, tg, tdq, tdk, tdv, NB, cu_q, cu_k,
                                      &p, &bp));
  for (int s = 0; s < NB; s++) {
    int64_t lq = cu_q[s + 1] - cu_q[s], lk = cu_k[s + 1] - cu_k[s];
    /* [1, H, L, D] strided views of the sequence */
    int64_t vq[4] = {1, HQ, lq ? lq : 1, D}, vk[4] = {1, HKV, lk ? lk : 1, D},
            vv[4] = {1, HKV, lk ? lk : 1, DV}, vo[4] = {1, HQ, lq ? lq : 1, DV},
            vl[3] = {1, HQ, lq ? lq : 1};
    if (!lq || !lk) {
      for (int64_t j = cu_k[s]; j < cu_k[s + 1]; j++)
        for (int c = 0; c < HKV * D; c++)
          assert_true(dk[j * HKV * D + c] == 0);
      continue;
    }
    int64_t sq[4] = {0, D, HQ * D, 1}, sk[4] = {0, D, HKV * D, 1}, sv[4] = {0, DV, HKV * DV, 1},
            so[4] = {0, DV, HQ * DV, 1}, sl[3] = {0, TQ, 1};
    float *eq = malloc((size_t)(lq * HQ * D) * 4), *ek = malloc((size_t)(lk * HKV * D) * 4),
          *ev = malloc((size_t)(lk * HKV * DV) * 4);
    int64_t eqd[4] = {1, HQ, lq, D}, ekd[4] = {1, HKV, lk, D}, evd[4] = {1, HKV, lk, DV};
    attn_tensor *aq = wrap(ctx, ATTN_DTYPE_F32, 4, vq, sq, q + cu_q[s] * HQ * D, (size_t)(lq * HQ * D) * 4);
    attn_tensor *ak = wrap(ctx, ATTN_DTYPE_F32, 4, vk, sk, k + cu_k[s] * HKV * D, (size_t)(lk * HKV * D) * 4);
    attn_tensor *av = wrap(ctx, ATTN_DTYPE_F32, 4, vv, sv, v + cu_k[s] * HKV * DV, (size_t)(lk * HKV * DV) * 4);
    attn_tensor *ao = wrap(ctx, ATTN_DTYPE_F32, 4, vo, so, o + cu_q[s] * HQ * DV, (size_t)(lq * HQ * DV) * 4);
    attn_tensor *ag = wrap(ctx, ATTN_DTYPE_F32, 4, vo, so, g + cu_q[s] * HQ * DV, (size_t)(lq * HQ * DV) * 4);
    attn_tensor *al = wrap(ctx, ATTN_DTYPE_F32, 3, vl, sl, lse + cu_q[s], sizeof lse - (size_t)cu_q[s] * 4);
    attn_tensor *eaq = wrap(ctx, ATTN_DTYPE_F32, 4, eqd, NULL, eq, (size_t)(lq * HQ * D) * 4);
    attn_tensor *eak = wrap(ctx, ATTN_DTYPE_F32, 4, ekd, NULL, ek, (size_t)(lk * HKV * D) * 4);
    attn_tensor *eav = wrap(ctx, ATTN_DTYPE_F32, 4, evd, NULL, ev, (size_t)(lk * HKV * DV) * 4);
    attn_sdpa_params ps = p;
    ps.lse = NULL;
    float dss[HQ];
    bp.dsinks = dss;
    assert_ok(attn_sdpa_backward(ctx, aq, ak, av, ao, al, ag, eaq, eak, eav, &ps, &bp));
    for (int h = 0; h < HQ; h++)
      ds_sum[h] += dss[h];
    for (int64_t i = 0; i < lq; i++)
      for (int h = 0; h < HQ; h++)
        assert_memory_equal(eq + (h * lq + i) * D, dq + ((cu_q[s] + i) * HQ + h) * D, D * 4);
    for (int64_t j = 0; j < lk; j++)
      for (int h = 0; h < HKV; h++) {
        assert_memory_equal(ek + (h * lk + j) * D, dk + ((cu_k[s] + j) * HKV + h) * D, D * 4);
        assert_memory_equal(ev + (h * lk + j) * DV, dv + ((cu_k[s] + j) * HKV + h) * DV, DV * 4);
      }
    attn_tensor *ts[] = {aq, ak, av, ao, ag, al, eaq, eak, eav};
    for (size_t t = 0; t < sizeof ts / sizeof *ts; t++)
      assert_ok(attn_tensor_free(ctx, ts[t]));
    free(eq), free(ek), free(ev);
  }
  for (int h = 0; h < HQ; h++)
    assert_close(ds[h], ds_sum[h], 1e-5, 1e-6);
  /* refused: a mask, dmask, bad offsets */
  int64_t bad_cu[NB + 1] = {0, 40, 30, 137, TQ};
  assert_status(attn_sdpa_varlen_backward(ctx, tq, tk, tv, to, tl, tg, tdq, tdk, tdv, NB, bad_cu,
                                          cu_k, &p, NULL),
                ATTN_ERR_INVALID_ARG);
  assert_non_null(strstr(attn_ctx_last_error(ctx), "attn_sdpa_varlen_backward: cu_seqlens_q"));
  bp.dmask = tdq;
  assert_status(attn_sdpa_varlen_backward(ctx, tq, tk, tv, to, tl, tg, tdq, tdk, tdv, NB, cu_q,
                                          cu_k, &p, &bp),
                ATTN_ERR_INVALID_ARG);
  attn_ctx_destroy(ctx);
}

/* No sequences (batch 0, as attn_sdpa_varlen takes): nothing to do, the sink
 * gradients (a sum over no rows) are 0; a negative batch is still refused. */
static void sdpa_varlen_backward_no_sequences(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(2);
  enum { HQ = 2, HKV = 1, D = 4 };
  float buf[8] = {0};
  int64_t qd[3] = {0, HQ, D}, kd[3] = {0, HKV, D}, ld[2] = {HQ, 0}, cu[1] = {0};
  attn_tensor *tq = wrap(ctx, ATTN_DTYPE_F32, 3, qd, NULL, buf, 0),
              *tk = wrap(ctx, ATTN_DTYPE_F32, 3, kd, NULL, buf, 0),
              *tl = wrap(ctx, ATTN_DTYPE_F32, 2, ld, NULL, buf, 0);
  attn_tensor *tdq = wrap(ctx, ATTN_DTYPE_F32, 3, qd, NULL, buf + 4, 0),
              *tdk = wrap(ctx, ATTN_DTYPE_F32, 3, kd, NULL, buf + 5, 0),
              *tdv = wrap(ctx, ATTN_DTYPE_F32, 3, kd, NULL, buf + 6, 0);
  float sinks[HQ] = {1, -1}, ds[HQ] = {5, 5};
  attn_sdpa_params p;
  attn_sdpa_params_init(&p);
  p.sinks = sinks;
  p.lse = tl;
  assert_ok(attn_sdpa_varlen(ctx, tq, tk, tk, tq, 0, cu, cu, &p));
  attn_sdpa_backward_params bp;
  attn_sdpa_backward_params_init(&bp);
  bp.dsinks = ds;
  assert_ok(attn_sdpa_varlen_backward(ctx, tq, tk, tk, tq, tl, tq, tdq, tdk, tdv, 0, cu, cu, &p,
                                      &bp));
  assert_true(ds[0] == 0 && ds[1] == 0);
  assert_ok(attn_sdpa_varlen_backward(ctx, tq, tk, tk, tq, tl, tq, tdq, tdk, tdv, 0, cu, cu, &p,
                                      NULL));
  ds[0] = ds[1] = 5;
  assert_status(attn_sdpa_varlen_backward(ctx, tq, tk, tk, tq, tl, tq, tdq, tdk, tdv, -1, cu, cu,
                                          &p, &bp),
                ATTN_ERR_INVALID_ARG);
  assert_true(ds[0] == 5 && ds[1] == 5);
  attn_ctx_destroy(ctx);
}

/* Bad input to attn_sdpa_backward: refused with a message, nothing written. */
static void sdpa_backward_bad_input(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  float a[2 * 3 * 4], b[2 * 3 * 4], c[2 * 3 * 4], l[6], dq[2 * 3 * 4];
  memset(a, 0, sizeof a), memset(b, 0, sizeof b), memset(c, 0, sizeof c), memset(l, 0, sizeof l);
  for (int i = 0; i < 24; i++)
    dq[i] = 5;
  int64_t d4[4] = {1, 2, 3, 4}, d3[3] = {1, 2, 3}, bad[4] = {1, 2, 3, 5};
  attn_tensor *t = wrap(ctx, ATTN_DTYPE_F32, 4, d4, NULL, a, sizeof a);
  attn_tensor *u = wrap(ctx, ATTN_DTYPE_F32, 4, d4, NULL, b, sizeof b);
  attn_tensor *o = wrap(ctx, ATTN_DTYPE_F32, 4, d4, NULL, c, sizeof c);
  attn_tensor *lt = wrap(ctx, ATTN_DTYPE_F32, 3, d3, NULL, l, sizeof l);
  attn_tensor *tq = wrap(ctx, ATTN_DTYPE_F32, 4, d4, NULL, dq, sizeof dq);
  float wrong[30];
  attn_tensor *tb = wrap(ctx, ATTN_DTYPE_F32, 4, bad, NULL, wrong, sizeof wrong);
  float x1[24], x2[24];
  attn_tensor *tk = wrap(ctx, ATTN_DTYPE_F32, 4, d4, NULL, x1, sizeof x1);
  attn_tensor *tv = wrap(ctx, ATTN_DTYPE_F32, 4, d4, NULL, x2, sizeof x2);
  assert_status(attn_sdpa_backward(NULL, t, t, t, t, lt, t, tq, tk, tv, NULL, NULL),
                ATTN_ERR_NULL_ARG);
  assert_status(attn_sdpa_backward(ctx, t, t, t, t, NULL, t, tq, tk, tv, NULL, NULL),
                ATTN_ERR_NULL_ARG);
  assert_status(attn_sdpa_backward(ctx, t, t, t, t, lt, t, tb, tk, tv, NULL, NULL),
                ATTN_ERR_SHAPE);
  assert_non_null(strstr(attn_ctx_last_error(ctx), "attn_sdpa_backward: dq"));
  assert_status(attn_sdpa_backward(ctx, t, u, o, t, lt, t, tq, tq, tv, NULL, NULL),
                ATTN_ERR_ALIASING);
  assert_status(attn_sdpa_backward(ctx, t, u, o, t, lt, t, tq, tk, t, NULL, NULL),
                ATTN_ERR_ALIASING);
  attn_sdpa_params p;
  attn_sdpa_params_init(&p);
  p.softcap = -1;
  assert_status(attn_sdpa_backward(ctx, t, u, o, t, lt, t, tq, tk, tv, &p, NULL),
                ATTN_ERR_INVALID_ARG);
  attn_sdpa_params_init(&p);
  attn_sdpa_backward_params bp;
  attn_sdpa_backward_params_init(&bp);
  float ds[2];
  bp.dsinks = ds;
  assert_status(attn_sdpa_backward(ctx, t, u, o, t, lt, t, tq, tk, tv, &p, &bp),
                ATTN_ERR_INVALID_ARG);
  assert_non_null(strstr(attn_ctx_last_error(ctx), "sinks"));
  for (int i = 0; i < 24; i++)
    assert_true(dq[i] == 5);
  assert_ok(attn_sdpa_backward(ctx, t, u, o, t, lt, t, tq, tk, tv, NULL, NULL));
  attn_ctx_destroy(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(softmax_backward_matches_reference),
      cmocka_unit_test(softmax_backward_strided),
      cmocka_unit_test(softmax_backward_axis),
      cmocka_unit_test(softmax_backward_edges),
      cmocka_unit_test(softmax_backward_bad_input),
      cmocka_unit_test(rope_backward_matches_reference),
      cmocka_unit_test(sdpa_backward_matches_reference),
      cmocka_unit_test(sdpa_backward_deterministic),
      cmocka_unit_test(sdpa_varlen_backward_matches_dense),
      cmocka_unit_test(sdpa_varlen_backward_no_sequences),
      cmocka_unit_test(sdpa_backward_bad_input),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
