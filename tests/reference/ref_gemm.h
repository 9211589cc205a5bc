/* Float64 reference for the tile products: plain loops, no code shared with
 * src/. */
#ifndef ATTN_REF_GEMM_H
#define ATTN_REF_GEMM_H
#include <stdint.h>

/* want[i * n + j] = alpha * sum_kk a[i * lda + kk] * b(kk, j) and
 * mag[i * n + j] = |alpha| * sum_kk |a[i * lda + kk] * b(kk, j)| (for an
 * error bound), where b(kk, j) is b[j * ldb + kk] when trans_b, else
 * b[kk * ldb + j]. */
void ref_gemm(int64_t m, int64_t n, int64_t k, double alpha, const float *a, int64_t lda,
              const float *b, int64_t ldb, int trans_b, double *want, double *mag);

#endif
