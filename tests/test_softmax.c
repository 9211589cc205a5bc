/* Softmax and log-softmax: against the float64 reference (tests/reference/
 * ref_softmax.c) over many shapes and layouts, properties, masks, the
 * non-finite cases, threads, and bad input.
 *
 * Error norm, per element, with w the reference and g the result:
 *   softmax:     |g - w| <= 1e-6 * max(|w|, 1e-6 * max_row |w|)
 *   log-softmax: |g - w| <= 1e-6 * max(|w|, 1)
 * NaN must meet NaN, and an infinite w the same infinity. The floor in the
 * softmax norm is there because z - max is rounded to float before exp: an
 * entry e^-20 below the row's largest carries a relative error of ~20 ULPs
 * of its own, however exact the rest is; relative to the row it is < 1e-12.
 * Both norms hold with margin: the exp kernels are within ~1 ULP. */
#include "test_util.h"

#include <float.h>

#include "ref_common.h"
#include "ref_softmax.h"

typedef attn_status (*softmax_fn)(attn_ctx *, const attn_tensor *, attn_tensor *,
                                  const attn_softmax_params *);

/* ---- strided views ---- */

enum layout { CONTIGUOUS, PADDED, PERMUTED };

typedef struct {
  int ndim;
  int64_t dims[4], strides[4];
  size_t n_floats; /* buffer length */
  float *buf;
  attn_tensor *t;
} view;

static int64_t count_of(int ndim, const int64_t *dims) {
  int64_t c = 1;
  for (int i = 0; i < ndim; i++)
    c *= dims[i];
  return c;
}

/* A view of a fresh buffer: contiguous; rows padded (row stride = n + 3, so
 * gaps sit between rows); or outer axes stored in reversed order, with a gap
 * as well. Gaps hold a sentinel that must survive. */
static view make_view(attn_ctx *ctx, int ndim, const int64_t *dims, enum layout lay) {
  view v;
  memset(&v, 0, sizeof v);
  v.ndim = ndim;
  memcpy(v.dims, dims, (size_t)ndim * sizeof *dims);
  int64_t n = dims[ndim - 1];
  v.strides[ndim - 1] = 1;
  int64_t span = lay == CONTIGUOUS ? n : n + 3;
  if (lay == PERMUTED) {
    for (int a = 0; a < ndim - 1; a++) { /* axis 0 innermost among the outer ones */
      v.strides[a] = span;
      span *= dims[a];
    }
  } else {
    for (int a = ndim - 2; a >= 0; a--) {
      v.strides[a] = span;
      span *= dims[a];
    }
  }
  v.n_floats = (size_t)(ndim == 1 ? n : span) + 1;
  v.buf = malloc(v.n_floats * sizeof(float));
  for (size_t i = 0; i < v.n_floats; i++)
    v.buf[i] = 12345.0f;
  v.t = tu_wrap(ctx, v.buf, v.n_floats, ndim, v.dims, v.strides);
  return v;
}

static void free_view(attn_ctx *ctx, view *v) {
  assert_ok(attn_tensor_free(ctx, v->t));
  free(v->buf);
}

static ref_view as_ref(const view *v) {
  ref_view r;
  memset(&r, 0, sizeof r);
  r.data = v->buf;
  r.ndim = v->ndim;
  memcpy(r.dims, v->dims, sizeof r.dims);
  memcpy(r.strides, v->strides, sizeof r.strides);
  return r;
}

/* Pointer to the element at flat (row-major) index k of the view. */
static float *at(const view *v, int64_t k) {
  int64_t off = 0;
  for (int a = v->ndim - 1; a >= 0; a--) {
    off += (k % v->dims[a]) * v->strides[a];
    k /= v->dims[a];
  }
  return v->buf + off;
}

static void fill_view(tu_rng *r, const view *v, float lo, float hi) {
  int64_t c = count_of(v->ndim, v->dims);
  for (int64_t k = 0; k < c; k++)
    *at(v, k) = tu_uniform(r, lo, hi);
}

/* Every float outside the view's elements still holds the sentinel. */
static void assert_gaps_untouched(const view *v) {
  char *used = calloc(v->n_floats, 1);
  int64_t c = count_of(v->ndim, v->dims);
  for (int64_t k = 0; k < c; k++)
    used[at(v, k) - v->buf] = 1;
  for (size_t i = 0; i < v->n_floats; i++)
    if (!used[i] && v->buf[i] != 12345.0f)
      fail_msg("the float at %zu, outside the view, was written", i);
  free(used);
}

/* ---- the error norms ---- */

static int same_nonfinite(double g, double w) {
  if (isnan(w))
    return isnan(g);
  return g == w;
}

static void assert_matches(const view *y, const double *want, int log) {
  int64_t n = y->dims[y->ndim - 1], c = count_of(y->ndim, y->dims);
  for (int64_t r0 = 0; r0 < c; r0 += n) {
    double row_max = 0;
    for (int64_t j = 0; j < n; j++)
      if (isfinite(want[r0 + j]) && fabs(want[r0 + j]) > row_max)
        row_max = fabs(want[r0 + j]);
    for (int64_t j = 0; j < n; j++) {
      double w = want[r0 + j], g = *at(y, r0 + j);
      if (!isfinite(w)) {
        if (!same_nonfinite(g, w))
          fail_msg("row %lld, entry %lld: got %.9g but want %g", (long long)(r0 / n),
                   (long long)j, g, w);
        continue;
      }
      double floor = log ? 1.0 : 1e-6 * row_max;
      double tol = 1e-6 * (fabs(w) > floor ? fabs(w) : floor);
      if (!(fabs(g - w) <= tol))
        fail_msg("row %lld, entry %lld: got %.9g but want %.12g (|diff| %.3g > tol %.3g)",
                 (long long)(r0 / n), (long long)j, g, w, fabs(g - w), tol);
    }
  }
}

static void assert_rows_sum_to_one(const view *y) {
  int64_t n = y->dims[y->ndim - 1], c = count_of(y->ndim, y->dims);
  for (int64_t r0 = 0; r0 < c; r0 += n) {
    double s = 0;
    for (int64_t j = 0; j < n; j++)
      s += *at(y, r0 + j);
    if (!(fabs(s - 1.0) <= 1e-6))
      fail_msg("row %lld sums to %.9g", (long long)(r0 / n), s);
  }
}

/* ---- accuracy against the reference ---- */

static void seed_article_example(void **state) {
  (void)state;
  /* softmax([1, 2, 3, 4, 5]) as NumPy computes it in float64. */
  static const double numpy[5] = {0.011656230956039607, 0.031684920796124276,
                                  0.086128544436268717, 0.23412165725273662,
                                  0.63640864655883144};
  double xd[5] = {1, 2, 3, 4, 5}, naive[5];
  ref_softmax_naive(xd, 5, naive);
  for (int i = 0; i < 5; i++)
    assert_close(naive[i], numpy[i], 1e-14, 0);

  attn_ctx *ctx = tu_ctx(1);
  float x[5] = {1, 2, 3, 4, 5}, y[5];
  int64_t dims[1] = {5};
  attn_tensor *tx = tu_wrap(ctx, x, 5, 1, dims, NULL), *ty = tu_wrap(ctx, y, 5, 1, dims, NULL);
  assert_ok(attn_softmax(ctx, tx, ty, NULL));
  for (int i = 0; i < 5; i++)
    assert_close(y[i], naive[i], 1e-6, 0);
  assert_ok(attn_log_softmax(ctx, tx, ty, NULL));
  for (int i = 0; i < 5; i++)
    assert_close(y[i], log(naive[i]), 1e-6, 0);
  assert_ok(attn_softmax(ctx, tx, tx, NULL)); /* in place, as attn.h's example */
  for (int i = 0; i < 5; i++)
    assert_close(x[i], naive[i], 1e-6, 0);
  attn_ctx_destroy(ctx);
}

typedef struct {
  int ndim;
  int64_t dims[4];
} shape;

static const shape shapes[] = {
    {1, {1}},          {1, {7}},           {2, {13, 1}},     {2, {3, 31}},
    {2, {5, 16}},      {3, {2, 3, 97}},    {4, {2, 3, 5, 17}}, {4, {1, 2, 3, 64}},
    {2, {2, 32771}},   {1, {40000}},       {3, {3, 1, 257}},   {4, {2, 1, 3, 1}},
};

/* One case: x in `lay`, y either x itself or its own view in `lay`. */
static void check_case(attn_ctx *ctx, tu_rng *rng, const shape *s, enum layout lay,
                       int in_place, int log, float lo, float hi) {
  view x = make_view(ctx, s->ndim, s->dims, lay);
  fill_view(rng, &x, lo, hi);
  int64_t c = count_of(s->ndim, s->dims);
  double *want = malloc((size_t)c * sizeof *want);
  ref_view rx = as_ref(&x);
  ref_softmax(&rx, 1.0f, NULL, NULL, log, want);
  view y = in_place ? x : make_view(ctx, s->ndim, s->dims, lay);
  float *x_copy = malloc(x.n_floats * sizeof(float));
  memcpy(x_copy, x.buf, x.n_floats * sizeof(float));
  assert_ok((log ? attn_log_softmax : attn_softmax)(ctx, x.t, y.t, NULL));
  assert_matches(&y, want, log);
  if (!log)
    assert_rows_sum_to_one(&y);
  assert_gaps_untouched(&y);
  if (!in_place) {
    assert_memory_equal(x.buf, x_copy, x.n_floats * sizeof(float));
    free_view(ctx, &y);
  }
  free(x_copy);
  free(want);
  free_view(ctx, &x);
}

static void random_shapes_and_layouts(void **state) {
  (void)state;
  tu_rng rng = {42};
  for (int threads = 1; threads <= 2; threads++) {
    attn_ctx *ctx = tu_ctx(threads);
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
      for (int lay = CONTIGUOUS; lay <= PERMUTED; lay++)
        for (int in_place = 0; in_place <= 1; in_place++)
          for (int log = 0; log <= 1; log++)
            check_case(ctx, &rng, &shapes[i], (enum layout)lay, in_place, log, -10, 10);
    attn_ctx_destroy(ctx);
  }
}

/* Results of 8 MiB and more leave the last pass's stores past the caches
 * (softmax.c, STREAM_MIN_BYTES): the same reference, with rows that start
 * at every alignment (padded), in place or not. */
static void large_results(void **state) {
  (void)state;
  tu_rng rng = {43};
  static const shape big = {2, {2101, 1003}};
  for (int threads = 1; threads <= 2; threads++) {
    attn_ctx *ctx = tu_ctx(threads);
    for (int lay = CONTIGUOUS; lay <= PADDED; lay++)
      for (int in_place = 0; in_place <= 1; in_place++)
        check_case(ctx, &rng, &big, (enum layout)lay, in_place, 0, -10, 10);
    attn_ctx_destroy(ctx);
  }
}

/* The same rows give the same bits whether the call is large (streamed) or
 * small: the whole tensor against slices, masked and scaled, softmax and
 * log-softmax. Short rows
 * (softmax_rows) in slices of 100; long rows (their stores overlapped with
 * the next row's exponentials) one row per call, with a NaN row and a row
 * hidden whole among them, on 1 and 2 threads. */
static void large_results_match_small_calls(void **state) {
  (void)state;
  tu_rng rng = {44};
  static const int64_t cases[][3] = {{2101, 1003, 100}, {41, 60000, 1}}; /* R, N, slice */
  for (int ci = 0; ci < 2; ci++)
    for (int threads = 2 - ci; threads <= 2; threads++) {
      int64_t R = cases[ci][0], N = cases[ci][1], SLICE = cases[ci][2];
      size_t c = (size_t)(R * N);
      float *x = malloc(c * sizeof *x), *m = malloc(c * sizeof *m);
      float *y1 = malloc(c * sizeof *y1), *y2 = malloc(c * sizeof *y2);
      tu_fill(&rng, x, c, -20, 20);
      tu_fill(&rng, m, c, -3, 3);
      x[7 * N + N / 3] = NAN;
      for (int64_t j = 0; j < N; j++)
        m[9 * N + j] = -INFINITY;
      attn_ctx *ctx = tu_ctx(threads);
      for (int masked = 0; masked <= 1; masked++)
        for (int lg = 0; lg <= 1; lg++) { /* log-softmax streams too */
          softmax_fn op = lg ? attn_log_softmax : attn_softmax;
          attn_softmax_params p;
          attn_softmax_params_init(&p);
          int64_t d[2] = {R, N};
          if (masked) {
            p.mask = tu_wrap(ctx, m, c, 2, d, NULL);
            p.scale = 0.7f;
          }
          assert_ok(op(ctx, tu_wrap(ctx, x, c, 2, d, NULL), tu_wrap(ctx, y1, c, 2, d, NULL), &p));
          for (int64_t r = 0; r < R; r += SLICE) {
            int64_t ds[2] = {R - r < SLICE ? R - r : SLICE, N};
            size_t cs = (size_t)(ds[0] * N);
            if (masked)
              p.mask = tu_wrap(ctx, m + r * N, cs, 2, ds, NULL);
            assert_ok(op(ctx, tu_wrap(ctx, x + r * N, cs, 2, ds, NULL),
                         tu_wrap(ctx, y2 + r * N, cs, 2, ds, NULL), &p));
          }
          assert_memory_equal(y1, y2, c * sizeof *y1);
          assert_true(isnan(y1[7 * N]) &&
                      (masked ? y1[9 * N] == (lg ? -INFINITY : 0.0f) : !isnan(y1[9 * N])));
        }
      attn_ctx_destroy(ctx);
      free(x), free(m), free(y1), free(y2);
    }
}

static void wide_logit_ranges(void **state) {
  (void)state;
  /* Spreads where many entries underflow to 0 or sit at subnormals. */
  tu_rng rng = {7};
  attn_ctx *ctx = tu_ctx(1);
  shape s = {2, {4, 301}};
  const float ranges[][2] = {{-100, 100}, {-1e4f, 1e4f}, {1e30f, 1e30f + 1e24f}, {-3, -2},
                             {1000, 1001}};
  for (size_t i = 0; i < sizeof ranges / sizeof ranges[0]; i++)
    for (int log = 0; log <= 1; log++)
      check_case(ctx, &rng, &s, PADDED, 0, log, ranges[i][0], ranges[i][1]);
  attn_ctx_destroy(ctx);
}

static void log_softmax_is_log_of_softmax(void **state) {
  (void)state;
  tu_rng rng = {99};
  attn_ctx *ctx = tu_ctx(1);
  int64_t dims[2] = {3, 1000};
  view x = make_view(ctx, 2, dims, CONTIGUOUS), y = make_view(ctx, 2, dims, CONTIGUOUS);
  fill_view(&rng, &x, -30, 30);
  double *want = malloc(3000 * sizeof *want);
  ref_view rx = as_ref(&x);
  ref_softmax(&rx, 1.0f, NULL, NULL, 0, want);
  for (int i = 0; i < 3000; i++)
    want[i] = log(want[i]); /* float64 keeps e^-60 easily */
  assert_ok(attn_log_softmax(ctx, x.t, y.t, NULL));
  assert_matches(&y, want, 1);
  free(want);
  free_view(ctx, &x);
  free_view(ctx, &y);
  attn_ctx_destroy(ctx);
}

static void adding_a_constant_changes_nothing(void **state) {
  (void)state;
  /* x on a grid of 2^-10 in [-8, 8], c = 64: x + c and the z - max that
   * follow are exact, so the results must be identical, not just close. */
  tu_rng rng = {5};
  attn_ctx *ctx = tu_ctx(1);
  int64_t dims[2] = {6, 333};
  float *x = malloc(6 * 333 * sizeof *x), *xc = malloc(6 * 333 * sizeof *xc);
  float *y = malloc(6 * 333 * sizeof *y), *yc = malloc(6 * 333 * sizeof *yc);
  for (int i = 0; i < 6 * 333; i++) {
    x[i] = (float)((int)(tu_next(&rng) % 16384) - 8192) / 1024.0f;
    xc[i] = x[i] + 64.0f;
  }
  attn_tensor *tx = tu_wrap(ctx, x, 1998, 2, dims, NULL), *txc = tu_wrap(ctx, xc, 1998, 2, dims, NULL);
  attn_tensor *ty = tu_wrap(ctx, y, 1998, 2, dims, NULL), *tyc = tu_wrap(ctx, yc, 1998, 2, dims, NULL);
  for (int log = 0; log <= 1; log++) {
    softmax_fn f = log ? attn_log_softmax : attn_softmax;
    assert_ok(f(ctx, tx, ty, NULL));
    assert_ok(f(ctx, txc, tyc, NULL));
    assert_memory_equal(y, yc, 1998 * sizeof *y);
  }
  free(x), free(xc), free(y), free(yc);
  attn_ctx_destroy(ctx);
}

static void scale_parameter(void **state) {
  (void)state;
  tu_rng rng = {11};
  attn_ctx *ctx = tu_ctx(1);
  int64_t dims[3] = {2, 3, 45};
  view x = make_view(ctx, 3, dims, PADDED), y = make_view(ctx, 3, dims, PADDED);
  fill_view(&rng, &x, -4, 4);
  double *want = malloc(270 * sizeof *want);
  ref_view rx = as_ref(&x);
  const float scales[] = {0.125f, 3.7f, -1.5f, 1e-20f, 0.0f /* = 1 */};
  for (size_t i = 0; i < sizeof scales / sizeof scales[0]; i++)
    for (int log = 0; log <= 1; log++) {
      attn_softmax_params p;
      attn_softmax_params_init(&p);
      p.scale = scales[i];
      ref_softmax(&rx, scales[i] == 0.0f ? 1.0f : scales[i], NULL, NULL, log, want);
      assert_ok((log ? attn_log_softmax : attn_softmax)(ctx, x.t, y.t, &p));
      assert_matches(&y, want, log);
    }
  free(want);
  free_view(ctx, &x);
  free_view(ctx, &y);
  attn_ctx_destroy(ctx);
}

/* ---- masks ---- */

static attn_tensor *wrap_u8(attn_ctx *ctx, uint8_t *data, size_t n, int ndim,
                            const int64_t *dims) {
  attn_tensor *t = NULL;
  attn_status st = attn_tensor_wrap(ctx, ATTN_DTYPE_U8, ndim, dims, NULL, data, n, &t);
  if (st != ATTN_OK)
    fail_msg("wrap u8: %s", attn_ctx_last_error(ctx));
  return t;
}

static void masks_broadcast(void **state) {
  (void)state;
  tu_rng rng = {3};
  attn_ctx *ctx = tu_ctx(2);
  enum { B = 2, H = 3, L = 37 };
  int64_t xd[3] = {B, H, L};
  view x = make_view(ctx, 3, xd, PERMUTED), y = make_view(ctx, 3, xd, PADDED);
  fill_view(&rng, &x, -5, 5);
  double *want = malloc(B * H * L * sizeof *want);
  static const shape mshapes[] = {{3, {1, 1, L}}, {3, {B, 1, L}}, {1, {L}}, {2, {H, L}},
                                  {3, {B, H, L}}, {2, {H, 1}},    {3, {1, H, 1}}};
  float mbuf[B * H * L];
  uint8_t bbuf[B * H * L];
  for (size_t mi = 0; mi < sizeof mshapes / sizeof mshapes[0]; mi++) {
    const shape *ms = &mshapes[mi];
    int64_t mc = count_of(ms->ndim, ms->dims);
    for (int64_t k = 0; k < mc; k++) {
      uint64_t u = tu_next(&rng) % 4;
      mbuf[k] = u == 0 ? -INFINITY : tu_uniform(&rng, -3, 3);
      bbuf[k] = u == 1 ? 0 : (uint8_t)(1 + tu_next(&rng) % 255);
    }
    attn_tensor *m = tu_wrap(ctx, mbuf, (size_t)mc, ms->ndim, ms->dims, NULL);
    attn_tensor *bm = wrap_u8(ctx, bbuf, (size_t)mc, ms->ndim, ms->dims);
    ref_view rx = as_ref(&x);
    ref_view rm = {mbuf, ms->ndim, {0}, {0}}, rb = {bbuf, ms->ndim, {0}, {0}};
    int64_t st = 1;
    for (int a = ms->ndim - 1; a >= 0; a--) {
      rm.dims[a] = rb.dims[a] = ms->dims[a];
      rm.strides[a] = rb.strides[a] = st;
      st *= ms->dims[a];
    }
    for (int which = 0; which < 3; which++) /* additive, boolean, both */
      for (int log = 0; log <= 1; log++) {
        attn_softmax_params p;
        attn_softmax_params_init(&p);
        p.scale = 0.75f;
        p.mask = which != 1 ? m : NULL;
        p.bool_mask = which != 0 ? bm : NULL;
        ref_softmax(&rx, 0.75f, p.mask ? &rm : NULL, p.bool_mask ? &rb : NULL, log, want);
        assert_ok((log ? attn_log_softmax : attn_softmax)(ctx, x.t, y.t, &p));
        assert_matches(&y, want, log);
        /* Masked entries exactly 0 (log: -inf), including whole rows. */
        for (int64_t k = 0; k < B * H * L; k++) {
          int64_t i3[3] = {k / (H * L), k / L % H, k % L}, mk = 0;
          for (int a = 0; a < ms->ndim; a++) /* the mask's own index, broadcast */
            mk = mk * ms->dims[a] + (ms->dims[a] == 1 ? 0 : i3[3 - ms->ndim + a]);
          int masked = (p.mask && mbuf[mk] == -INFINITY) || (p.bool_mask && !bbuf[mk]);
          float g = *at(&y, k);
          if (masked && (log ? g != -INFINITY : g != 0.0f))
            fail_msg("mask %zu kind %d: entry %lld = %g but is masked", mi, which,
                     (long long)k, (double)g);
        }
      }
    assert_ok(attn_tensor_free(ctx, m));
    assert_ok(attn_tensor_free(ctx, bm));
  }
  assert_gaps_untouched(&y);
  free(want);
  free_view(ctx, &x);
  free_view(ctx, &y);
  attn_ctx_destroy(ctx);
}

static void all_masked_rows(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  enum { R = 4, N = 21 };
  int64_t dims[2] = {R, N}, mdims[2] = {R, 1};
  float x[R * N], y[R * N];
  tu_rng rng = {8};
  tu_fill(&rng, x, R * N, -2, 2);
  for (int j = 0; j < N; j++)
    x[2 * N + j] = -INFINITY; /* row 2: every x is -inf */
  uint8_t keep[R] = {1, 0, 1, 1};   /* row 1: removed by the bool mask */
  float add[R] = {0, 0, 0, -INFINITY}; /* row 3: removed by the additive mask */
  attn_tensor *tx = tu_wrap(ctx, x, R * N, 2, dims, NULL), *ty = tu_wrap(ctx, y, R * N, 2, dims, NULL);
  attn_softmax_params p;
  attn_softmax_params_init(&p);
  p.bool_mask = wrap_u8(ctx, keep, R, 2, mdims);
  p.mask = tu_wrap(ctx, add, R, 2, mdims, NULL);
  for (int log = 0; log <= 1; log++) {
    assert_ok((log ? attn_log_softmax : attn_softmax)(ctx, tx, ty, &p));
    for (int r = 1; r < R; r++)
      for (int j = 0; j < N; j++)
        if (log ? y[r * N + j] != -INFINITY : y[r * N + j] != 0.0f || signbit(y[r * N + j]))
          fail_msg("log %d, all-masked row %d entry %d = %g", log, r, j, (double)y[r * N + j]);
    double s = 0;
    for (int j = 0; j < N; j++)
      s += log ? exp(y[j]) : y[j];
    assert_close(s, 1.0, 1e-6, 0);
  }
  attn_ctx_destroy(ctx);
}

/* Rows of up to 4096 floats go a block at a time through the kernel set's
 * softmax_rows (softmax.c): row lengths around the vector widths and the
 * block bound, row counts that are no multiple of the work item and runs of
 * rows that end at an axis (x [B, H, L, n]), padded rows, masks per token
 * ([L, n]) or shared ([n]) with hidden NaN and +inf logits, rows hidden
 * whole, and a result large enough to be streamed; against the reference. */
static void short_row_blocks(void **state) {
  (void)state;
  tu_rng rng = {61};
  static const int lens[] = {1, 15, 16, 17, 64, 4096, 4097};
  static const int64_t outer[][3] = {{3, 5, 37}, {1, 2, 2049}, {4, 64, 128}};
  for (int threads = 1; threads <= 2; threads++) {
    attn_ctx *ctx = tu_ctx(threads);
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++)
      for (size_t oi = 0; oi < sizeof outer / sizeof outer[0]; oi++) {
        int64_t n = lens[li], L = n > 64 ? 7 : outer[oi][2];
        if ((oi == 2 && n != 64) || (oi > 0 && n > 64))
          continue; /* long rows and the streamed size once: keep the run short */
        int64_t d[4] = {n > 64 ? 1 : outer[oi][0], n > 64 ? 3 : outer[oi][1], L, n};
        int64_t c = d[0] * d[1] * L * n;
        enum layout lay = oi == 0 ? PADDED : CONTIGUOUS;
        view x = make_view(ctx, 4, d, lay), y = make_view(ctx, 4, d, lay);
        fill_view(&rng, &x, -20, 20);
        float *m = malloc((size_t)(L * n) * sizeof *m);
        uint8_t *keep = malloc((size_t)n), *finite_m = malloc((size_t)(L * n));
        for (int64_t i = 0; i < L * n; i++)
          m[i] = tu_next(&rng) % 5 == 0 ? -INFINITY : tu_uniform(&rng, -4, 4);
        for (int64_t j = 0; j < n; j++)
          keep[j] = tu_next(&rng) % 4 != 0;
        for (int64_t j = 0; j < n; j++) /* token 1: every entry hidden */
          m[n + j] = -INFINITY;
        /* The reference adds -inf to a NaN logit in IEEE arithmetic; the
         * library hides it (logits.h): the reference's boolean mask says so. */
        for (int64_t i = 0; i < L * n; i++)
          finite_m[i] = m[i] != -INFINITY;
        for (int64_t k = 0; k < c; k++) /* hidden entries hold NaN or +inf */
          if (m[k % (L * n)] == -INFINITY && !keep[k % n])
            *at(&x, k) = k % 2 ? NAN : INFINITY;
        int64_t md[2] = {L, n}, bd[1] = {n};
        attn_tensor *tm = tu_wrap(ctx, m, (size_t)(L * n), 2, md, NULL);
        attn_tensor *tb = wrap_u8(ctx, keep, (size_t)n, 1, bd);
        ref_view rx = as_ref(&x), rm = {m, 2, {L, n}, {n, 1}}, rb = {keep, 1, {n}, {1}};
        ref_view rf = {finite_m, 2, {L, n}, {n, 1}};
        double *want = malloc((size_t)c * sizeof *want);
        for (int masks = 3; masks >= 1; masks--) /* both, additive, boolean */
          for (int log = 0; log <= 1; log++) {
            attn_softmax_params p;
            attn_softmax_params_init(&p);
            p.scale = masks == 2 ? 1.0f : 0.625f;
            p.mask = masks & 1 ? tm : NULL;
            p.bool_mask = masks & 2 ? tb : NULL;
            ref_softmax(&rx, p.scale, p.mask ? &rm : NULL, p.bool_mask ? &rb : &rf, log, want);
            assert_ok((log ? attn_log_softmax : attn_softmax)(ctx, x.t, y.t, &p));
            assert_matches(&y, want, log);
          }
        assert_gaps_untouched(&y);
        assert_ok(attn_tensor_free(ctx, tm));
        assert_ok(attn_tensor_free(ctx, tb));
        free(want), free(m), free(keep), free(finite_m);
        free_view(ctx, &x);
        free_view(ctx, &y);
      }
    attn_ctx_destroy(ctx);
  }
}

/* ---- non-finite input ---- */

static void nan_reaches_its_row_only(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  enum { R = 3, N = 37 };
  int64_t dims[2] = {R, N}, mdims[1] = {N};
  float x[R * N], y[R * N];
  tu_rng rng = {21};
  for (int pos = 0; pos < N; pos++) { /* every lane, the vector tails included */
    tu_fill(&rng, x, R * N, -3, 3);
    x[N + pos] = NAN;
    attn_tensor *tx = tu_wrap(ctx, x, R * N, 2, dims, NULL), *ty = tu_wrap(ctx, y, R * N, 2, dims, NULL);
    for (int log = 0; log <= 1; log++) {
      assert_ok((log ? attn_log_softmax : attn_softmax)(ctx, tx, ty, NULL));
      for (int j = 0; j < N; j++) {
        assert_true(isnan(y[N + j]));
        assert_false(isnan(y[j]) || isnan(y[2 * N + j]));
      }
    }
    /* Removed by the bool mask: the NaN is not part of the row any more. */
    uint8_t keep[N];
    for (int j = 0; j < N; j++)
      keep[j] = j != pos;
    attn_softmax_params p;
    attn_softmax_params_init(&p);
    p.bool_mask = wrap_u8(ctx, keep, N, 1, mdims);
    assert_ok(attn_softmax(ctx, tx, ty, &p));
    assert_true(y[N + pos] == 0.0f);
    for (int j = 0; j < R * N; j++)
      assert_false(isnan(y[j]));
    /* An additive -inf hides it too (the header's promise, as in attn_sdpa),
     * although NaN + -inf is NaN in IEEE arithmetic. */
    float add[N];
    for (int j = 0; j < N; j++)
      add[j] = j == pos ? -INFINITY : 0.0f;
    p.bool_mask = NULL;
    p.mask = tu_wrap(ctx, add, N, 1, mdims, NULL);
    assert_ok(attn_softmax(ctx, tx, ty, &p));
    assert_true(y[N + pos] == 0.0f);
    for (int j = 0; j < R * N; j++)
      assert_false(isnan(y[j]));
    assert_ok(attn_log_softmax(ctx, tx, ty, &p));
    assert_true(y[N + pos] == -INFINITY);
    for (int j = 0; j < R * N; j++)
      assert_false(isnan(y[j]));
    /* Broadcast over the row (one mask value per row) and scaled. */
    float row_add[R] = {0.0f, -INFINITY, 0.0f};
    int64_t rdims[2] = {R, 1};
    p.mask = tu_wrap(ctx, row_add, R, 2, rdims, NULL);
    p.scale = 0.5f;
    assert_ok(attn_softmax(ctx, tx, ty, &p));
    for (int j = 0; j < N; j++)
      assert_true(y[N + j] == 0.0f);
    assert_false(isnan(y[0]) || isnan(y[2 * N]));
    attn_ctx_destroy(ctx);
    ctx = tu_ctx(1);
  }
  attn_ctx_destroy(ctx);
}

/* Run f on one row and compare with `want` exactly (NaN matches NaN). */
static void row_exact(attn_ctx *ctx, softmax_fn f, float scale, const float *in,
                      const float *want, int n) {
  float x[8], y[8];
  memcpy(x, in, (size_t)n * sizeof *x);
  int64_t dims[1] = {n};
  attn_tensor *tx = tu_wrap(ctx, x, (size_t)n, 1, dims, NULL), *ty = tu_wrap(ctx, y, (size_t)n, 1, dims, NULL);
  attn_softmax_params p;
  attn_softmax_params_init(&p);
  p.scale = scale;
  assert_ok(f(ctx, tx, ty, &p));
  for (int i = 0; i < n; i++)
    if (!(isnan(want[i]) ? isnan(y[i]) : y[i] == want[i]))
      fail_msg("entry %d = %.9g but want %.9g", i, (double)y[i], (double)want[i]);
  assert_ok(attn_tensor_free(ctx, tx));
  assert_ok(attn_tensor_free(ctx, ty));
}

static void huge_and_infinite_logits(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  const float inf = INFINITY, nan = NAN, big = FLT_MAX;
  /* Ties at 1e30: exp(0) = 1 twice, the others underflow. */
  row_exact(ctx, attn_softmax, 1, (float[]){1e30f, -1e30f, 0, 1e30f},
            (float[]){0.5f, 0, 0, 0.5f}, 4);
  row_exact(ctx, attn_log_softmax, 1, (float[]){1e30f, -1e30f, 0, 1e30f},
            (float[]){-(float)log(2.0), -2e30f - (float)log(2.0), -1e30f - (float)log(2.0),
                      -(float)log(2.0)},
            4);
  /* +-FLT_MAX: z - max = -2 FLT_MAX overflows to -inf, the nearest float. */
  row_exact(ctx, attn_softmax, 1, (float[]){big, -big, 0}, (float[]){1, 0, 0}, 3);
  row_exact(ctx, attn_log_softmax, 1, (float[]){big, -big, 0}, (float[]){0, -inf, -big}, 3);
  row_exact(ctx, attn_softmax, 1, (float[]){-big, -big}, (float[]){0.5f, 0.5f}, 2);
  /* -inf entries are masked; a row of them is all zeros (log: -inf). */
  row_exact(ctx, attn_softmax, 1, (float[]){-inf, 0, -inf, 0}, (float[]){0, 0.5f, 0, 0.5f}, 4);
  row_exact(ctx, attn_softmax, 1, (float[]){-inf, -inf, -inf}, (float[]){0, 0, 0}, 3);
  row_exact(ctx, attn_log_softmax, 1, (float[]){-inf, -inf}, (float[]){-inf, -inf}, 2);
  /* +inf: inf - inf is NaN, so the row is NaN (as IEEE and PyTorch). */
  row_exact(ctx, attn_softmax, 1, (float[]){inf, 0, 1}, (float[]){nan, nan, nan}, 3);
  row_exact(ctx, attn_log_softmax, 1, (float[]){0, inf}, (float[]){nan, nan}, 2);
  /* scale * x overflowing: to +inf makes the row NaN, to -inf masks. */
  row_exact(ctx, attn_softmax, 1e10f, (float[]){1e30f, 0}, (float[]){nan, nan}, 2);
  row_exact(ctx, attn_softmax, 1e10f, (float[]){-1e30f, 0}, (float[]){0, 1}, 2);
  row_exact(ctx, attn_softmax, -1e10f, (float[]){1e30f, 0, 1e30f}, (float[]){0, 1, 0}, 3);
  /* One entry: always 1 (log 0) when finite. */
  row_exact(ctx, attn_softmax, 1, (float[]){-big}, (float[]){1}, 1);
  row_exact(ctx, attn_log_softmax, 1, (float[]){big}, (float[]){0}, 1);
  attn_ctx_destroy(ctx);
}

/* ---- threads ---- */

static void threads_give_identical_results(void **state) {
  (void)state;
  tu_rng rng = {77};
  attn_ctx *c1 = tu_ctx(1), *c2 = tu_ctx(2);
  static const shape ss[] = {{2, {300, 333}}, {2, {3, 40000}}, {4, {2, 4, 16, 129}}, {1, {70000}}};
  for (size_t i = 0; i < sizeof ss / sizeof ss[0]; i++) {
    int64_t c = count_of(ss[i].ndim, ss[i].dims);
    float *x = malloc((size_t)c * sizeof *x), *y1 = malloc((size_t)c * sizeof *y1),
          *y2 = malloc((size_t)c * sizeof *y2), *m = malloc((size_t)ss[i].dims[ss[i].ndim - 1] * sizeof *m);
    tu_fill(&rng, x, (size_t)c, -20, 20);
    tu_fill(&rng, m, (size_t)ss[i].dims[ss[i].ndim - 1], -1, 1);
    int64_t mdims[1] = {ss[i].dims[ss[i].ndim - 1]};
    for (int log = 0; log <= 1; log++)
      for (int masked = 0; masked <= 1; masked++) {
        attn_softmax_params p1, p2;
        attn_softmax_params_init(&p1);
        attn_softmax_params_init(&p2);
        if (masked) {
          p1.mask = tu_wrap(c1, m, (size_t)mdims[0], 1, mdims, NULL);
          p2.mask = tu_wrap(c2, m, (size_t)mdims[0], 1, mdims, NULL);
          p1.scale = p2.scale = 0.3f;
        }
        softmax_fn f = log ? attn_log_softmax : attn_softmax;
        assert_ok(f(c1, tu_wrap(c1, x, (size_t)c, ss[i].ndim, ss[i].dims, NULL),
                    tu_wrap(c1, y1, (size_t)c, ss[i].ndim, ss[i].dims, NULL), &p1));
        assert_ok(f(c2, tu_wrap(c2, x, (size_t)c, ss[i].ndim, ss[i].dims, NULL),
                    tu_wrap(c2, y2, (size_t)c, ss[i].ndim, ss[i].dims, NULL), &p2));
        assert_memory_equal(y1, y2, (size_t)c * sizeof *y1);
      }
    free(x), free(y1), free(y2), free(m);
  }
  attn_ctx_destroy(c1);
  attn_ctx_destroy(c2);
}

/* ---- dispatch ---- */

static void cpu_info_names_the_kernels(void **state) {
  (void)state;
  const char *info = attn_cpu_info();
  assert_non_null(info);
  assert_true(strncmp(info, "cpu:", 4) == 0);
  assert_non_null(strstr(info, "; kernels: "));
  assert_ptr_equal(info, attn_cpu_info()); /* static, probed once */
#if defined(__x86_64__)
  /* ctest runs this suite once per forced set (ATTN_KERNELS); a set the CPU
   * has must be the one in use, and one it lacks must be refused. */
  const char *want = getenv("ATTN_KERNELS");
  if (want && *want) {
    __builtin_cpu_init();
    int has = !strcmp(want, "sse2") ||
              (!strcmp(want, "avx2") && __builtin_cpu_supports("avx2") &&
               __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) ||
              (!strcmp(want, "avx512") && __builtin_cpu_supports("avx512f")) ||
              (!strcmp(want, "avx512bf16") && __builtin_cpu_supports("avx512bf16"));
    char expect[64];
    snprintf(expect, sizeof expect, "kernels: %s", want);
    if (has && !strstr(info, expect))
      fail_msg("ATTN_KERNELS=%s but attn_cpu_info() = \"%s\"", want, info);
    if (!has && !strstr(info, "refused"))
      fail_msg("ATTN_KERNELS=%s (not runnable) but attn_cpu_info() = \"%s\"", want, info);
  }
#endif
  print_message("%s\n", info);
}

/* ---- parameters ---- */

static void params_init_and_sizes(void **state) {
  (void)state;
  attn_softmax_params_init(NULL); /* no-op */
  attn_softmax_params p;
  memset(&p, 0xab, sizeof p);
  attn_softmax_params_init(&p);
  assert_int_equal(p.struct_size, sizeof p);
  assert_true(p.scale == 1.0f);
  assert_int_equal(p.reserved_, 0);
  assert_null(p.mask);
  assert_null(p.bool_mask);

  attn_ctx *ctx = tu_ctx(1);
  float x[6] = {1, 2, 3, 4, 5, 6}, y0[6], y1[6];
  int64_t dims[2] = {2, 3};
  attn_tensor *tx = tu_wrap(ctx, x, 6, 2, dims, NULL);
  attn_tensor *t0 = tu_wrap(ctx, y0, 6, 2, dims, NULL), *t1 = tu_wrap(ctx, y1, 6, 2, dims, NULL);
  assert_ok(attn_softmax(ctx, tx, t0, NULL));
  /* Zero-filled with its size set: all defaults. */
  memset(&p, 0, sizeof p);
  p.struct_size = sizeof p;
  assert_ok(attn_softmax(ctx, tx, t1, &p));
  assert_memory_equal(y0, y1, sizeof y0);
  /* An older caller's struct ends before the masks: the bytes after it
   * (garbage here) are never read. */
  memset(&p, 0xff, sizeof p);
  p.struct_size = offsetof(attn_softmax_params, mask);
  p.scale = 1.0f;
  p.reserved_ = 0;
  assert_ok(attn_softmax(ctx, tx, t1, &p));
  assert_memory_equal(y0, y1, sizeof y0);
  /* A newer caller's struct whose extra fields are zero. */
  struct {
    attn_softmax_params p;
    uint64_t extra;
  } newer;
  memset(&newer, 0, sizeof newer);
  newer.p.struct_size = sizeof newer;
  assert_ok(attn_softmax(ctx, tx, t1, &newer.p));
  assert_memory_equal(y0, y1, sizeof y0);
  attn_ctx_destroy(ctx);
}

/* ---- bad input: the right status, a message naming the argument, and
 * nothing written ---- */

#define SENTINEL 777.0f

static void expect_fail(attn_ctx *ctx, softmax_fn f, const attn_tensor *x, attn_tensor *y,
                        const attn_softmax_params *p, attn_status want, const char *needle,
                        const float *watch, size_t n_watch) {
  float *before = malloc(n_watch * sizeof *before + 1);
  memcpy(before, watch, n_watch * sizeof *before);
  attn_status st = f(ctx, x, y, p);
  if (st != want)
    fail_msg("got %s, want %s (%s)", attn_status_string(st), attn_status_string(want),
             ctx ? attn_ctx_last_error(ctx) : "");
  if (ctx && needle)
    assert_error_mentions(ctx, needle);
  assert_memory_equal(before, watch, n_watch * sizeof *before);
  free(before);
}

static void bad_input(void **state) {
  (void)state;
  for (int log = 0; log <= 1; log++) {
    softmax_fn f = log ? attn_log_softmax : attn_softmax;
    const char *fname = log ? "attn_log_softmax" : "attn_softmax";
    attn_ctx *ctx = tu_ctx(1), *other = tu_ctx(1);
    /* One buffer holds x, y and the masks, so every call can be checked for
     * writing anything at all. */
    enum { N = 64 };
    float buf[N];
    for (int i = 0; i < N; i++)
      buf[i] = i < 10 ? (float)i : SENTINEL;
    uint8_t u8[16];
    memset(u8, 1, sizeof u8);
    int64_t d25[2] = {2, 5}, d26[2] = {2, 6}, d10[1] = {10}, d35[2] = {3, 5}, d5[1] = {5};
    int64_t d125[3] = {1, 2, 5}, zero_stride[2] = {0, 1}, wide[2] = {6, 1};
    attn_tensor *x = tu_wrap(ctx, buf, 10, 2, d25, NULL);
    attn_tensor *y = tu_wrap(ctx, buf + 16, 10, 2, d25, NULL);
    attn_tensor *x_u8 = wrap_u8(ctx, u8, 10, 2, d25);
    attn_tensor *y26 = tu_wrap(ctx, buf + 16, 12, 2, d26, NULL);
    attn_tensor *y10 = tu_wrap(ctx, buf + 16, 10, 1, d10, NULL);
    attn_tensor *y_bcast = tu_wrap(ctx, buf + 16, 5, 2, d25, zero_stride);
    attn_tensor *y_overlap = tu_wrap(ctx, buf + 5, 10, 2, d25, NULL);
    attn_tensor *y_restrided = tu_wrap(ctx, buf, 11, 2, d25, wide); /* same data, not same view */
    attn_tensor *m35 = tu_wrap(ctx, buf + 32, 15, 2, d35, NULL);
    attn_tensor *m125 = tu_wrap(ctx, buf + 32, 10, 3, d125, NULL);
    attn_tensor *m5 = tu_wrap(ctx, buf + 32, 5, 1, d5, NULL);
    attn_tensor *m_on_y = tu_wrap(ctx, buf + 16, 5, 1, d5, NULL);
    attn_tensor *b5 = wrap_u8(ctx, u8, 5, 1, d5);
    attn_tensor *x_other = tu_wrap(other, buf, 10, 2, d25, NULL);
    attn_softmax_params p;

#define FAIL(X, Y, P, ST, NEEDLE) expect_fail(ctx, f, X, Y, P, ST, NEEDLE, buf, N)
    expect_fail(NULL, f, x, y, NULL, ATTN_ERR_NULL_ARG, NULL, buf, N);
    FAIL(NULL, y, NULL, ATTN_ERR_NULL_ARG, "x is NULL");
    assert_error_mentions(ctx, fname);
    FAIL(x, NULL, NULL, ATTN_ERR_NULL_ARG, "y is NULL");
    FAIL(x_u8, y, NULL, ATTN_ERR_UNSUPPORTED, "x has dtype U8");
    FAIL(x, x_u8, NULL, ATTN_ERR_UNSUPPORTED, "y has dtype U8");
    FAIL(x_other, y, NULL, ATTN_ERR_BAD_HANDLE, "x was created from another context");
    FAIL(x, y26, NULL, ATTN_ERR_SHAPE, "y.shape[1] = 6");
    FAIL(x, y10, NULL, ATTN_ERR_SHAPE, "y has 1 dims");
    FAIL(x, y_bcast, NULL, ATTN_ERR_INVALID_ARG, "y.strides[0] = 0");
    FAIL(x, y_overlap, NULL, ATTN_ERR_ALIASING, "y overlaps x");
    FAIL(x, y_restrided, NULL, ATTN_ERR_ALIASING, "y overlaps x");

    attn_softmax_params_init(&p);
    p.mask = m35;
    FAIL(x, y, &p, ATTN_ERR_SHAPE, "params.mask.shape[0] = 3");
    p.mask = m125;
    FAIL(x, y, &p, ATTN_ERR_SHAPE, "params.mask has 3 dims");
    p.mask = b5;
    FAIL(x, y, &p, ATTN_ERR_UNSUPPORTED, "params.mask has dtype U8");
    p.mask = m_on_y;
    FAIL(x, y, &p, ATTN_ERR_ALIASING, "y overlaps params.mask");
    p.mask = NULL;
    p.bool_mask = m5;
    FAIL(x, y, &p, ATTN_ERR_UNSUPPORTED, "params.bool_mask has dtype F32");
    p.bool_mask = x_u8;
    FAIL(x, y10, &p, ATTN_ERR_SHAPE, "y has 1 dims"); /* shapes checked before masks */
    attn_tensor *b_wide = wrap_u8(ctx, u8, 6, 1, (int64_t[]){6});
    p.bool_mask = b_wide;
    FAIL(x, y, &p, ATTN_ERR_SHAPE, "params.bool_mask.shape[0] = 6");

    const float bad_scales[] = {NAN, INFINITY, -INFINITY};
    for (int i = 0; i < 3; i++) {
      attn_softmax_params_init(&p);
      p.scale = bad_scales[i];
      FAIL(x, y, &p, ATTN_ERR_INVALID_ARG, "params.scale");
    }
    attn_softmax_params_init(&p);
    p.reserved_ = 1;
    FAIL(x, y, &p, ATTN_ERR_INVALID_ARG, "params.reserved_");
    attn_softmax_params_init(&p);
    p.struct_size = 0;
    FAIL(x, y, &p, ATTN_ERR_INVALID_ARG, "struct_size = 0");
    struct {
      attn_softmax_params p;
      uint64_t extra;
    } newer;
    memset(&newer, 0, sizeof newer);
    attn_softmax_params_init(&newer.p);
    newer.p.struct_size = sizeof newer;
    newer.extra = 1;
    FAIL(x, y, &newer.p, ATTN_ERR_UNSUPPORTED, "struct_size");
#undef FAIL
    /* After all that, a good call still works and writes only y. */
    assert_ok(f(ctx, x, y, NULL));
    for (int i = 0; i < N; i++)
      if (i < 16 || i >= 26)
        assert_true(buf[i] == (i < 10 ? (float)i : SENTINEL));
    attn_ctx_destroy(other);
    attn_ctx_destroy(ctx);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(seed_article_example),
      cmocka_unit_test(random_shapes_and_layouts),
      cmocka_unit_test(large_results),
      cmocka_unit_test(large_results_match_small_calls),
      cmocka_unit_test(wide_logit_ranges),
      cmocka_unit_test(log_softmax_is_log_of_softmax),
      cmocka_unit_test(adding_a_constant_changes_nothing),
      cmocka_unit_test(scale_parameter),
      cmocka_unit_test(masks_broadcast),
      cmocka_unit_test(all_masked_rows),
      cmocka_unit_test(short_row_blocks),
      cmocka_unit_test(nan_reaches_its_row_only),
      cmocka_unit_test(huge_and_infinite_logits),
      cmocka_unit_test(threads_give_identical_results),
      cmocka_unit_test(cpu_info_names_the_kernels),
      cmocka_unit_test(params_init_and_sizes),
      cmocka_unit_test(bad_input),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
