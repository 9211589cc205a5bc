/* Row kernels chosen once at run time from the CPU's features (cpu.c).
 * They know nothing of handles: plain pointers and lengths, valid input.
 * Every kernel set computes exp the same way (src/simd/rows_body.h), so the
 * sets differ only in vector width and in the use of FMA. */
#ifndef ATTN_KERNELS_H
#define ATTN_KERNELS_H

#include <stdint.h>

typedef struct attn_kernels {
  const char *name; /* "sse2", "avx2", "avx512" ("scalar" off x86) */
  /* Largest of x[0..n), n >= 1; NaN if any x is NaN. */
  float (*row_max)(const float *x, int64_t n);
  /* y[i] = exp(x[i] - shift) for i < n (y may be x); returns the sum of the
   * y[i]. x[i] = -inf gives exactly 0; NaN propagates. shift is finite. */
  float (*exp_shift_sum)(const float *x, float *y, int64_t n, float shift);
  /* The sum exp_shift_sum would return, storing nothing (log-softmax keeps
   * its logits). Same shift rules. */
  float (*sum_exp_shift)(const float *x, int64_t n, float shift);
  /* y[i] = x[i] * s (y may be x). */
  void (*scale)(const float *x, float *y, int64_t n, float s);
  /* y[i] = x[i] * s + m[i], rounded after the product and after the sum
   * (never fused, so every set gives the same z). y may be x. */
  void (*scale_add)(const float *x, const float *m, float *y, int64_t n, float s);
  /* y[i] = (x[i] - a) - b, in that order (log-softmax: z - max - log sum).
   * y may be x. */
  void (*sub2)(const float *x, float *y, int64_t n, float a, float b);
} attn_kernels;

/* The kernel set for this CPU, probed once (thread-safe). */
const attn_kernels *attn__kernels(void);

/* The sets compiled into this build; cpu.c picks one. Each is only safe to
 * call on a CPU (and OS) with its instruction set. */
#if defined(ATTN_HAVE_X86_KERNELS)
extern const attn_kernels attn__kernels_sse2;
extern const attn_kernels attn__kernels_avx2;
extern const attn_kernels attn__kernels_avx512;
#else
extern const attn_kernels attn__kernels_scalar;
#endif

#endif
