/* Softmax and log-softmax over any axis (attn_softmax_params.axis): each
 * result is compared with the last-axis result of a transposed copy (the
 * axis moved to the end), which the row kernels compute; plus masks
 * broadcast against x, padded strides, in place, non-finite columns and bad
 * axes. */
#include "test_util.h"

static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p)
    fail_msg("out of memory");
  return p;
}

/* Row-major offset of idx in dims (nd axes). */
static int64_t flat(int32_t nd, const int64_t *dims, const int64_t *idx) {
  int64_t o = 0;
  for (int32_t i = 0; i < nd; i++)
    o = o * dims[i] + idx[i];
  return o;
}

static int next_index(int32_t nd, const int64_t *dims, int64_t *idx) {
  for (int32_t i = nd - 1; i >= 0; i--) {
    if (++idx[i] < dims[i])
      return 1;
    idx[i] = 0;
  }
  return 0;
}

/* One case: x of nd dims (contiguous, or with a padded outer stride), the
 * softmax over axis (a value from -nd..-1), an optional additive mask and
 * boolean mask given at full shape (materialised for the transposed copy). */
static void run_axis_case(int32_t nd, const int64_t *dims, int32_t axis, int log, int masks,
                          int padded, int in_place, int32_t threads, uint64_t seed) {
  tu_rng rng = {seed};
  int32_t a = nd + axis; /* from the front */
  int64_t n = 1;
  for (int32_t i = 0; i < nd; i++)
    n *= dims[i];
  /* x stored with its outermost stride padded by 3 elements when asked. */
  int64_t cst[4], st[4];
  cst[nd - 1] = 1;
  for (int32_t i = nd - 2; i >= 0; i--)
    cst[i] = cst[i + 1] * dims[i + 1];
  memcpy(st, cst, sizeof st);
  if (padded && nd >= 2)
    st[0] = cst[0] + 3;
  size_t store = (size_t)((dims[0] - 1) * st[0] + (nd >= 2 ? cst[0] : 1));
  float *x = xmalloc(store * sizeof *x), *y = xmalloc(store * sizeof *y);
  tu_fill(&rng, x, store, -4, 4);
  float *mask = xmalloc((size_t)n * sizeof *mask);
  uint8_t *keep = xmalloc((size_t)n);
  /* The additive mask is broadcast along axis 0 (shape [1, ...]) to test
   * broadcasting, with some -inf; the bool mask is full. */
  int64_t mdims[4];
  memcpy(mdims, dims, sizeof mdims);
  mdims[0] = 1;
  int64_t mn = n / dims[0];
  tu_fill(&rng, mask, (size_t)mn, -1, 1);
  for (int64_t i = 0; i < mn; i++)
    if (tu_next(&rng) % 7 == 0)
      mask[i] = -INFINITY;
  for (int64_t i = 0; i < n; i++)
    keep[i] = tu_next(&rng) % 5 != 0;
  if (n > 3)
    x[0] = NAN; /* one NaN: its column along the axis is NaN */

  /* The transposed copy: axes in order with `a` moved last. */
  int32_t perm[4], k = 0;
  for (int32_t i = 0; i < nd; i++)
    if (i != a)
      perm[k++] = i;
  perm[k] = a;
  int64_t tdims[4];
  for (int32_t i = 0; i < nd; i++)
    tdims[i] = dims[perm[i]];
  float *tx = xmalloc((size_t)n * sizeof *tx), *ty = xmalloc((size_t)n * sizeof *ty);
  float *tm = xmalloc((size_t)n * sizeof *tm);
  uint8_t *tk = xmalloc((size_t)n);
  int64_t idx[4] = {0, 0, 0, 0};
  do {
    int64_t tidx[4], off = 0, midx[4];
    for (int32_t i = 0; i < nd; i++) {
      tidx[i] = idx[perm[i]];
      off += idx[i] * st[i];
      midx[i] = i == 0 ? 0 : idx[i];
    }
    int64_t t = flat(nd, tdims, tidx);
    tx[t] = x[off];
    tm[t] = mask[flat(nd, mdims, midx)];
    tk[t] = keep[flat(nd, dims, idx)];
  } while (next_index(nd, dims, idx));

  attn_ctx *ctx = tu_ctx(threads);
  attn_softmax_params p;
  attn_softmax_params_init(&p);
  p.scale = 0.75f;
  /* reference: last axis of the transposed copy */
  attn_tensor *ttx = tu_wrap(ctx, tx, (size_t)n, nd, tdims, NULL);
  attn_tensor *tty = tu_wrap(ctx, ty, (size_t)n, nd, tdims, NULL);
  if (masks) {
    p.mask = tu_wrap(ctx, tm, (size_t)n, nd, tdims, NULL);
    attn_tensor *b = NULL;
    assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_U8, nd, tdims, NULL, tk, (size_t)n, &b));
    p.bool_mask = b;
  }
  assert_ok(log ? attn_log_softmax(ctx, ttx, tty, &p) : attn_softmax(ctx, ttx, tty, &p));
  /* the op: axis `axis` of x through its strides */
  attn_tensor *txx = tu_wrap(ctx, x, store, nd, dims, st);
  attn_tensor *tyy = in_place ? txx : tu_wrap(ctx, y, store, nd, dims, st);
  if (masks) {
    p.mask = tu_wrap(ctx, mask, (size_t)mn, nd, mdims, NULL);
    attn_tensor *b = NULL;
    assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_U8, nd, dims, NULL, keep, (size_t)n, &b));
    p.bool_mask = b;
  }
  p.axis = axis;
  attn_status s = log ? attn_log_softmax(ctx, txx, tyy, &p) : attn_softmax(ctx, txx, tyy, &p);
  if (s != ATTN_OK)
    fail_msg("axis %d: %s", (int)axis, attn_ctx_last_error(ctx));
  const float *out = in_place ? x : y;
  memset(idx, 0, sizeof idx);
  do {
    int64_t tidx[4], off = 0;
    for (int32_t i = 0; i < nd; i++) {
      tidx[i] = idx[perm[i]];
      off += idx[i] * st[i];
    }
    double want = ty[flat(nd, tdims, tidx)], got = out[off];
    int ok = isnan(want) ? isnan(got)
             : isinf(want) ? got == want
                           : fabs(got - want) <= 2e-6 * fabs(want) + (log ? 2e-6 : 1e-7);
    if (!ok)
      fail_msg("nd %d dims [%lld %lld %lld %lld] axis %d log %d masks %d padded %d in_place %d "
               "threads %d: element at offset %lld = %.9g, transposed last axis %.9g",
               (int)nd, (long long)dims[0], (long long)(nd > 1 ? dims[1] : 0),
               (long long)(nd > 2 ? dims[2] : 0), (long long)(nd > 3 ? dims[3] : 0), (int)axis,
               log, masks, padded, in_place, (int)threads, (long long)off, got, want);
  } while (next_index(nd, dims, idx));
  attn_ctx_destroy(ctx);
  free(x), free(y), free(mask), free(keep), free(tx), free(ty), free(tm), free(tk);
}

static void axis_vs_transposed_last_axis(void **state) {
  (void)state;
  const int64_t shapes[][5] = {/* nd, dims */
                               {2, 7, 5, 0, 0},   {2, 1, 300, 0, 0}, {3, 4, 9, 3, 0},
                               {3, 2, 1, 600, 0}, {4, 2, 3, 5, 7},   {4, 3, 17, 2, 260},
                               {1, 13, 0, 0, 0}};
  uint64_t seed = 1;
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
    int32_t nd = (int32_t)shapes[s][0];
    for (int32_t axis = -nd; axis <= -1; axis++)
      for (int v = 0; v < 8; v++)
        run_axis_case(nd, &shapes[s][1], axis, v & 1, (v >> 1) & 1, (v >> 2) & 1,
                      v == 6 || v == 3, v == 5 ? 3 : 1, seed++);
  }
}

/* axis 0 (the default) is the last axis; -1 names it too. */
static void axis_default_and_errors(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  float x[6] = {1, 2, 3, 4, 5, 6}, y1[6], y2[6];
  int64_t d[2] = {2, 3};
  attn_tensor *tx = tu_wrap(ctx, x, 6, 2, d, NULL), *t1 = tu_wrap(ctx, y1, 6, 2, d, NULL);
  attn_tensor *t2 = tu_wrap(ctx, y2, 6, 2, d, NULL);
  attn_softmax_params p;
  attn_softmax_params_init(&p);
  assert_ok(attn_softmax(ctx, tx, t1, &p));
  p.axis = -1;
  assert_ok(attn_softmax(ctx, tx, t2, &p));
  assert_memory_equal(y1, y2, sizeof y1);
  p.axis = -2; /* down the columns: softmax(1, 4) in each column */
  assert_ok(attn_softmax(ctx, tx, t2, &p));
  for (int c = 0; c < 3; c++) {
    assert_close(y2[c], 1.0 / (1.0 + exp(3.0)), 1e-6, 0);
    assert_close(y2[3 + c], 1.0 / (1.0 + exp(-3.0)), 1e-6, 0);
  }
  for (int i = 0; i < 6; i++)
    y2[i] = 9.0f;
  p.axis = 1;
  assert_status(attn_softmax(ctx, tx, t2, &p), ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "write i - ndim = -1");
  p.axis = -3;
  assert_status(attn_log_softmax(ctx, tx, t2, &p), ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "params.axis = -3");
  p.axis = -2;
  p.reserved2_ = 1;
  assert_status(attn_softmax(ctx, tx, t2, &p), ATTN_ERR_INVALID_ARG);
  for (int i = 0; i < 6; i++)
    assert_true(y2[i] == 9.0f);
  attn_ctx_destroy(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(axis_vs_transposed_last_axis),
      cmocka_unit_test(axis_default_and_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
