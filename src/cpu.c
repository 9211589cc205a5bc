/* Placeholder until runtime dispatch lands: portable scalar kernels. */
#include "internal.h"
#include "kernels.h"

#include <math.h>

static float scalar_row_max(const float *x, int64_t n) {
  float m = x[0];
  for (int64_t i = 1; i < n; i++) {
    if (isnan(x[i]))
      return x[i];
    if (x[i] > m)
      m = x[i];
  }
  return m;
}

static float scalar_exp_shift_sum(const float *x, float *y, int64_t n, float shift) {
  float sum = 0;
  for (int64_t i = 0; i < n; i++) {
    y[i] = expf(x[i] - shift);
    sum += y[i];
  }
  return sum;
}

static const attn_kernels scalar = {"scalar", scalar_row_max, scalar_exp_shift_sum};

const attn_kernels *attn__kernels(void) { return &scalar; }

const char *attn_cpu_info(void) { return "cpu: not probed; kernels: scalar"; }
