/* Fuzz target: attn_softmax and attn_log_softmax. The input chooses the
 * shape (1..4 dims; rows long enough to reach the vector kernels' tails),
 * the axis (any, or out of range),
 * strides (padded, transposed, broadcast, overlapping), in-place or aliased
 * outputs, additive and boolean masks with broadcast shapes, the scale, the
 * struct size, and the data (+-FLT_MAX, subnormals, +-Inf, NaN anywhere).
 * Checks: inputs intact; on failure no output byte changes; on success only
 * y's elements change and every row whose z = scale*x + mask stays well
 * inside float range has the header's result: masked entries exactly 0
 * (log: -inf), an all-masked row zeros (-inf), a NaN or +inf z a NaN row,
 * otherwise values within rounding of a float64 softmax (which sums to 1). */
#include "fuzz_common.h"

#define MAX_ELEMS 200000

typedef struct {
  const fz_tensor *x, *y, *mask, *bmask;
  const float *x_before; /* x's buffer before the call (in place: y == x) */
  float scale;
  int log;
  int32_t ax; /* the softmax axis, 0..ndim-1 */
} sm_case;

static float x_at(const sm_case *c, const int64_t *idx) {
  int64_t off = 0;
  for (int32_t i = 0; i < c->x->ndim; i++)
    off += idx[i] * c->x->eff[i];
  /* x's bytes before the call, read as x's type */
  fz_tensor before = *c->x;
  before.buf = (unsigned char *)c->x_before;
  return fz_read(&before, off);
}

static float y_at(const sm_case *c, const int64_t *idx) {
  int64_t off = 0;
  for (int32_t i = 0; i < c->y->ndim; i++)
    off += idx[i] * c->y->eff[i];
  return fz_read(c->y, off);
}

static void check_rows(const sm_case *c) {
  int32_t nd = c->x->ndim;
  if (fz_numel(c->x) == 0)
    return; /* empty: fz_check_gaps saw that nothing was written */
  int32_t ax = c->ax;
  int64_t n = c->x->dims[ax], rows = fz_numel(c->x) / n;
  double *z = malloc((size_t)n * sizeof *z);
  unsigned char *masked = malloc((size_t)n);
  FZ_CHECK(z && masked, "malloc");
  for (int64_t r = 0; r < rows; r++) {
    int64_t idx[ATTN_MAX_DIMS] = {0};
    int64_t t = r;
    for (int32_t i = nd - 1; i >= 0; i--) {
      if (i == ax)
        continue;
      idx[i] = t % c->x->dims[i];
      t /= c->x->dims[i];
    }
    int tame = 1, nan_row = 0, any = 0;
    double M = -INFINITY, big = 0;
    for (int64_t j = 0; j < n; j++) {
      idx[ax] = j;
      masked[j] = 0;
      if (c->bmask && !((const uint8_t *)fz_data(c->bmask))[fz_bcast_offset(c->bmask, nd, idx)]) {
        masked[j] = 1; /* removed whatever x holds */
        continue;
      }
      double sx = (double)c->scale * (double)x_at(c, idx);
      double mv = 0;
      if (c->mask) {
        float f;
        memcpy(&f, (const unsigned char *)fz_data(c->mask) +
                       fz_bcast_offset(c->mask, nd, idx) * 4, 4);
        mv = f;
      }
      /* A -inf mask value removes the entry whatever x holds (header): an
       * x of +inf or NaN must not make sx + mv a NaN z here. A half x
       * makes this common: its data are floats rounded to the type, and
       * anything beyond the type's range (FLT_MAX, 1e30 in f16) is Inf. */
      if (mv == -INFINITY) {
        masked[j] = 1;
        continue;
      }
      /* Float overflow of scale*x or of the sum decides NaN vs -inf at the
       * edges (the header warns z is float): such rows are not judged. */
      if (isfinite(sx) && fabs(sx) > 1e37)
        tame = 0;
      if (isfinite(sx) && isfinite(mv) && fabs(sx) + fabs(mv) > 1e37)
        tame = 0;
      double zz = sx + mv;
      if (isnan(zz) || zz == INFINITY) {
        nan_row = 1;
        continue;
      }
      if (zz == -INFINITY) {
        masked[j] = 1;
        continue;
      }
      z[j] = zz;
      any = 1;
      big = fmax(big, fabs(zz));
      if (zz > M)
        M = zz;
    }
    if (!tame)
      continue;
    if (nan_row) {
      for (int64_t j = 0; j < n; j++) {
        idx[ax] = j;
        FZ_CHECK(isnan(y_at(c, idx)), "row %lld: a NaN or +inf z, but y[%lld] = %g",
                 (long long)r, (long long)j, (double)y_at(c, idx));
      }
      continue;
    }
    double s = 0;
    for (int64_t j = 0; j < n; j++)
      if (!masked[j])
        s += exp(z[j] - M);
    /* Rounding of z (float) shifts every z - M by up to ~2 ulp of the
     * largest |z|; the rest is the kernels' exp and the sum. */
    double rtol = 4e-7 * (big + 1) + 2e-7 * (double)n + 2e-6;
    double u = fz_half_ulp(c->y->dtype), atol = u ? 0x1p-24 : 0; /* a half y: one more rounding */
    double sum = 0, lerr = 0;
    for (int64_t j = 0; j < n; j++) {
      idx[ax] = j;
      double got = y_at(c, idx);
      if (!any || masked[j]) {
        double want = c->log ? -INFINITY : 0.0;
        FZ_CHECK(got == want, "row %lld: masked y[%lld] = %g, expected %g", (long long)r,
                 (long long)j, got, want);
        continue;
      }
      if (4e-7 * big > 1e-2) {
        /* z's float rounding (about 2 ulp of big, absolute) is no longer
         * small next to 1, so exp(z - M) is only known to lie within a
         * factor exp(4e-7 * big) (e.g. mask 1.4e22 plus x -3.4e10 rounds
         * to the mask alone): only the range is judged. */
        FZ_CHECK(c->log ? got <= 0 : got >= 0 && got <= 1,
                 "row %lld: y[%lld] = %.9g, out of range", (long long)r, (long long)j, got);
        continue;
      }
      if (c->log) {
        double want = z[j] - M - log(s);
        if (c->y->dtype == ATTN_DTYPE_F16 && fabs(want) > 65519) {
          /* Beyond f16's range the rounding goes to Inf (near the
           * threshold either side is fine). */
          FZ_CHECK(got == -INFINITY || fabs(got - want) <= 32 + rtol * fabs(want),
                   "row %lld: log_softmax y[%lld] = %.9g, reference %.9g (f16 range)",
                   (long long)r, (long long)j, got, want);
          sum += exp(got);
          continue;
        }
        FZ_CHECK(fabs(got - want) <= rtol * (1 + fabs(z[j]) + fabs(M)) + u * fabs(want) + atol,
                 "row %lld: log_softmax y[%lld] = %.9g, reference %.9g", (long long)r,
                 (long long)j, got, want);
        sum += exp(got);
        /* A half y rounds want relative to |want|: exp(got) is off by up
         * to a factor exp(u*|want|), more than u once |want| > 1. */
        lerr += exp(want) * expm1(u * fabs(want));
      } else {
        double want = exp(z[j] - M) / s;
        FZ_CHECK(fabs(got - want) <= (rtol + u) * want + 1e-37 + atol,
                 "row %lld: softmax y[%lld] = %.9g, reference %.9g (rtol %g)", (long long)r,
                 (long long)j, got, want, rtol);
        sum += got;
      }
    }
    if (any && big < 1e3)
      FZ_CHECK(fabs(sum - 1) <=
                   4e-7 * (double)n + 1e-5 + (c->log ? 2 : 1) * u + lerr + (double)n * atol,
               "row %lld sums to %.9g", (long long)r, sum);
  }
  free(z);
  free(masked);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fz_in in = {data, size};
  fz_alloc_state a = {0, 0, 0};
  attn_ctx *ctx = fz_ctx(&a, fz_chance(&in, 128) ? 2 : 1);
  int log = fz_u8(&in) & 1;
  int32_t nd = fz_chance(&in, 248) ? (int32_t)fz_range(&in, 1, 4) : (int32_t)fz_range(&in, -1, 6);
  int32_t ndim = nd >= 1 && nd <= 4 ? nd : 2;
  int64_t dims[ATTN_MAX_DIMS];
  for (int32_t i = 0; i < ATTN_MAX_DIMS; i++)
    dims[i] = fz_dim(&in, 5);
  if (fz_chance(&in, 20)) /* long rows: vector bodies and tails */
    dims[ndim - 1] = fz_range(&in, 6, 3000);
  fz_tensor x, y, mask, bmask;
  fz_tensor *pm = NULL, *pb = NULL;
  fz_make_tensor(&in, ctx, &x, fz_float_dtype(&in), ndim, dims, FZ_INPUT);
  uint8_t ymode = fz_u8(&in) % 8; /* 0: in place, 1: also try an aliased y */
  int in_place = ymode == 0 && x.t;
  size_t xes = fz_dtype_size(x.dtype);
  if (ymode == 1 && x.t && x.buf_bytes - x.offset > xes) {
    /* y: x's layout one element further on, overlapping x: must be refused
     * (or refused earlier, as not writable), and nothing written. */
    attn_tensor *ya = NULL;
    if (attn_tensor_wrap(ctx, x.dtype, ndim, dims, x.eff,
                         (unsigned char *)fz_data(&x) + xes, x.buf_bytes - x.offset - xes,
                         &ya) == ATTN_OK) {
      attn_status st = log ? attn_log_softmax(ctx, x.t, ya, NULL) : attn_softmax(ctx, x.t, ya, NULL);
      FZ_CHECK(st == ATTN_ERR_ALIASING || st == ATTN_ERR_INVALID_ARG,
               "an overlapping y gave %s", attn_status_string(st));
      FZ_CHECK(fz_unchanged(&x), "x written through an aliased y");
      attn_tensor_free(ctx, ya);
    }
  }
  int64_t ydims[ATTN_MAX_DIMS];
  memcpy(ydims, dims, sizeof ydims);
  if (fz_chance(&in, 6))
    ydims[fz_u8(&in) % ndim] = fz_dim(&in, 5);
  if (in_place)
    y = x;
  else
    fz_make_tensor(&in, ctx, &y, fz_float_dtype(&in), ndim, ydims, FZ_OUTPUT);
  for (int which = 0; which < 2; which++) {
    if (!fz_chance(&in, 64))
      continue;
    int32_t mnd = (int32_t)fz_range(&in, 1, ndim);
    int64_t md[ATTN_MAX_DIMS];
    for (int32_t i = 0; i < mnd; i++) {
      md[i] = fz_chance(&in, 128) ? 1 : dims[ndim - mnd + i];
      if (fz_chance(&in, 4))
        md[i] = fz_dim(&in, 5);
    }
    fz_tensor *m = which ? &bmask : &mask;
    fz_make_tensor(&in, ctx, m, which ? ATTN_DTYPE_U8 : ATTN_DTYPE_F32, mnd, md, FZ_INPUT);
    if (which)
      pb = m;
    else
      pm = m;
  }
  attn_softmax_params p, eff;
  attn_softmax_params_init(&p);
  if (fz_chance(&in, 80))
    p.scale = fz_chance(&in, 200) ? fz_float_mostly_small(&in) : fz_float(&in);
  if (fz_chance(&in, 3))
    p.reserved_ = 5;
  if (fz_chance(&in, 96)) /* mostly valid: 0 or -ndim..-1; sometimes anything */
    p.axis = fz_chance(&in, 230) ? -(int32_t)fz_range(&in, 0, ndim) : (int32_t)fz_range(&in, -6, 6);
  if (fz_chance(&in, 3))
    p.reserved2_ = 1;
  p.mask = pm ? pm->t : NULL;
  p.bool_mask = pb ? pb->t : NULL;
  unsigned char raw[sizeof p + 64];
  memset(raw, 0, sizeof raw);
  memcpy(raw, &p, sizeof p);
  const attn_softmax_params *pp = (const attn_softmax_params *)raw;
  int readable = 1;
  attn_softmax_params_init(&eff);
  if (fz_chance(&in, 16)) {
    pp = NULL;
  } else {
    size_t ss = fz_struct_size(&in, raw, sizeof p, sizeof raw);
    memcpy(raw, &ss, sizeof ss);
    readable = fz_effective_params(&eff, sizeof eff, raw, ss);
  }

  int64_t numel = x.t ? fz_numel(&x) : 0;
  if (numel <= MAX_ELEMS || !x.t) {
    float *x_before = malloc(x.buf_bytes ? x.buf_bytes : 1);
    FZ_CHECK(x_before, "malloc");
    memcpy(x_before, x.buf, x.buf_bytes);
    if (fz_chance(&in, 10))
      a.fail_at = a.allocs + 1;
    attn_status st = log ? attn_log_softmax(ctx, x.t, y.t, pp) : attn_softmax(ctx, x.t, y.t, pp);
    a.fail_at = 0;
    /* Inputs intact (x too, unless in place and successful). */
    if (!(in_place && st == ATTN_OK))
      FZ_CHECK(fz_unchanged(&x), "x was written (%s)", attn_status_string(st));
    if (pm)
      FZ_CHECK(fz_unchanged(pm), "mask was written");
    if (pb)
      FZ_CHECK(fz_unchanged(pb), "bool_mask was written");
    if (st != ATTN_OK) {
      FZ_CHECK(fz_unchanged(&y), "y was written by a failed call (%s)", attn_status_string(st));
      FZ_CHECK(attn_ctx_last_error(ctx)[0], "failure without a message");
      int known_valid = x.t && y.t && !x.exotic && !y.exotic && readable && eff.reserved_ == 0 &&
                        eff.reserved2_ == 0 && eff.axis <= 0 && eff.axis >= -ndim &&
                        isfinite(eff.scale) && memcmp(dims, ydims, sizeof dims) == 0 &&
                        !(in_place && x.has_strides) && (!pm || !pm->exotic) &&
                        (!pb || !pb->exotic);
      /* A half x or y takes a row buffer from the workspace: that may fail. */
      int allocates = x.dtype != ATTN_DTYPE_F32 || y.dtype != ATTN_DTYPE_F32;
      if (known_valid && !pm && !pb && !(allocates && st == ATTN_ERR_NO_MEMORY))
        FZ_CHECK(0, "valid call refused: %s: %s", attn_status_string(st),
                 attn_ctx_last_error(ctx));
    } else {
      FZ_CHECK(readable && eff.reserved_ == 0 && eff.reserved2_ == 0 && isfinite(eff.scale) &&
                   eff.axis <= 0 && eff.axis >= -ndim,
               "bad params accepted");
      fz_check_gaps(&y, "y");
      sm_case c = {&x, &y, eff.mask ? pm : NULL, eff.bool_mask ? pb : NULL, x_before,
                   eff.scale == 0 ? 1.0f : eff.scale, log,
                   eff.axis == 0 ? ndim - 1 : ndim + eff.axis};
      check_rows(&c);
    }
    free(x_before);
  }
  fz_tensor_release(&x);
  if (!in_place)
    fz_tensor_release(&y);
  if (pm)
    fz_tensor_release(pm);
  if (pb)
    fz_tensor_release(pb);
  fz_ctx_destroy(ctx, &a);
  return 0;
}
