/* The only file that talks to BLAS. */
#include "internal.h"

#include <cblas.h>
#include <stdio.h>

attn_status attn_blas_info(char *buf, size_t size) {
  if (!buf || !size)
    return ATTN_ERR_NULL_ARG;
  snprintf(buf, size, "%s; core %s; %d threads; %s", openblas_get_config(),
           openblas_get_corename(), openblas_get_num_threads(),
           openblas_get_parallel() == 0   ? "sequential build"
           : openblas_get_parallel() == 1 ? "pthreads build"
                                          : "OpenMP build");
  return ATTN_OK;
}

int32_t attn__blas_threads(void) {
  return openblas_get_parallel() == 0 ? 1 : openblas_get_num_threads();
}

void attn__sgemm_nt(int m, int n, int k, float alpha, const float *a, int lda, const float *b,
                    int ldb, float *c, int ldc) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, alpha, a, lda, b, ldb, 0.0f, c,
              ldc);
}

void attn__sgemm_nn_acc(int m, int n, int k, const float *a, int lda, const float *b, int ldb,
                        float *c, int ldc) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, a, lda, b, ldb, 1.0f, c,
              ldc);
}
