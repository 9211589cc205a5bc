/* Row kernels chosen once at run time from the CPU's features (cpu.c).
 * They know nothing of handles: plain pointers and lengths, valid input. */
#ifndef ATTN_KERNELS_H
#define ATTN_KERNELS_H

#include <stdint.h>

typedef struct attn_kernels {
  const char *name; /* "sse2", "avx2", "avx512" */
  /* Largest of x[0..n), n >= 1; NaN if any x is NaN. */
  float (*row_max)(const float *x, int64_t n);
  /* y[i] = exp(x[i] - shift) for i < n (y may be x); returns the sum of the
   * y[i]. x[i] = -inf gives exactly 0; NaN propagates. shift is finite. */
  float (*exp_shift_sum)(const float *x, float *y, int64_t n, float shift);
} attn_kernels;

/* The kernel set for this CPU, probed once (thread-safe). */
const attn_kernels *attn__kernels(void);

#endif
