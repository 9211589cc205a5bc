/* RoPE's rotation of pairs one at a time: the definition of the rounding
 * the vector kernels (rows_body.h) reproduce, and the whole of the scalar
 * set (rows_scalar.c). Products and sums in double, never fused (the
 * library builds as ISO C, so the compiler does not contract them), one
 * rounding to float at the end. */
#ifndef ATTN_ROTATE_TAIL_H
#define ATTN_ROTATE_TAIL_H

#include <stdint.h>

/* Split pairs (a[i], b[i]) for i in [i0, n). */
static inline void rotate_split_tail(float *restrict a, float *restrict b, const double *c,
                                     const double *s, int64_t i0, int64_t n) {
  for (int64_t i = i0; i < n; i++) {
    double u = a[i], v = b[i];
    a[i] = (float)(u * c[i] - v * s[i]);
    b[i] = (float)(u * s[i] + v * c[i]);
  }
}

/* Interleaved pairs (x[j], x[j+1]) for even j in [j0, 2n), tables per float
 * (kernels.h): u c + v (-s) and v c + u s round as u c - v s and u s + v c. */
static inline void rotate_pairs_tail(float *x, const double *cc, const double *ss, int64_t j0,
                                     int64_t n) {
  for (int64_t j = j0; j < 2 * n; j += 2) {
    double u = x[j], v = x[j + 1];
    x[j] = (float)(u * cc[j] + v * ss[j]);
    x[j + 1] = (float)(v * cc[j + 1] + u * ss[j + 1]);
  }
}

#endif
