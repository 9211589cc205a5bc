/* Portable row kernels for builds without the x86 sets (cpu.c uses them
 * off x86): plain loops over libm's expf. */
#include "half.h"
#include "kernels.h"
#include "rotate_tail.h"

#include <math.h>

static float row_max(const float *x, int64_t n) {
  float m = x[0];
  for (int64_t i = 0; i < n; i++) {
    if (isnan(x[i]))
      return NAN;
    if (x[i] > m)
      m = x[i];
  }
  return m;
}

static float exp_shift_sum(const float *x, float *y, int64_t n, float shift,
                           const float *ahead) {
  (void)ahead;
  double sum = 0;
  for (int64_t i = 0; i < n; i++) {
    y[i] = expf(x[i] - shift);
    sum += y[i];
  }
  return (float)sum;
}

static float sum_exp_shift(const float *x, int64_t n, float shift) {
  double sum = 0;
  for (int64_t i = 0; i < n; i++)
    sum += expf(x[i] - shift);
  return (float)sum;
}

static void scale(const float *x, float *y, int64_t n, float s) {
  for (int64_t i = 0; i < n; i++)
    y[i] = x[i] * s;
}

static void scale_stream(const float *x, float *y, int64_t n, float s) { scale(x, y, n, s); }

static void stream_fence(void) {}

static void scale_add(const float *x, const float *m, float *y, int64_t n, float s) {
  for (int64_t i = 0; i < n; i++) {
    float p = x[i] * s; /* a separate statement: never contracted into an FMA */
    y[i] = p + m[i];
  }
}

static void sub2(const float *x, float *y, int64_t n, float a, float b) {
  for (int64_t i = 0; i < n; i++) {
    float d = x[i] - a;
    y[i] = d - b;
  }
}

static void rotate_split(float *a, float *b, const double *c, const double *s, int64_t n) {
  rotate_split_tail(a, b, c, s, 0, n);
}

static void rotate_pairs(float *x, const double *cc, const double *ss, int64_t n) {
  rotate_pairs_tail(x, cc, ss, 0, n);
}

static float exp_sum_flush(const float *x, float *y, int64_t n, float shift, const float *ahead,
                           const float *pw, float *py, float ps) {
  if (pw)
    scale(pw, py, n, ps);
  return exp_shift_sum(x, y, n, shift, ahead);
}

static float exp_below_sum(const float *x, float *y, int64_t n, float shift) {
  return exp_shift_sum(x, y, n, shift, NULL);
}

/* No tile products: SDPA calls BLAS. */
const attn_kernels attn__kernels_scalar = {
    "scalar",  row_max, exp_shift_sum, sum_exp_shift, scale, scale_stream, stream_fence, scale_add,
    sub2, half_rows_f32_to_f16, half_rows_f16_to_f32, half_rows_f32_to_bf16, half_rows_bf16_to_f32,
    rotate_split, rotate_pairs, NULL, NULL, NULL, NULL, NULL, NULL, exp_sum_flush, exp_below_sum};
