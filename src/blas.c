/* The only file that talks to BLAS. SDPA's two tile products go to
 * libattn's own kernels where the CPU has them (AVX2 + FMA, AVX-512:
 * simd/gemm_body.h says why), else to cblas_sgemm. */
#ifdef ATTN_BLAS_GENERIC
#define _GNU_SOURCE /* dladdr */
#endif
#include "internal.h"
#include "simd/kernels.h"

#include <cblas.h>
#include <stdio.h>
#include <string.h>

/* Appended to attn_blas_info's line: who computes SDPA's products. */
static void append_products(char *buf, size_t size) {
  size_t used = strlen(buf);
  const attn_kernels *kern = attn__kernels();
  if (kern->gemm_nt)
    snprintf(buf + used, size - used, "; SDPA products: libattn %s kernels", kern->name);
  else
    snprintf(buf + used, size - used, "; SDPA products: cblas_sgemm");
}

#ifdef ATTN_BLAS_GENERIC
/* A CBLAS other than OpenBLAS (ATTN_BLAS=Generic): the library that
 * provides cblas_sgemm is named from the loaded object, and its threading
 * is its own (set e.g. BLIS_NUM_THREADS or MKL_NUM_THREADS); libattn treats
 * it as single-threaded. */
#include <dlfcn.h>

attn_status attn_blas_info(char *buf, size_t size) {
  if (!buf || !size)
    return ATTN_ERR_NULL_ARG;
  void (*fn)(void) = (void (*)(void))cblas_sgemm;
  void *addr;
  memcpy(&addr, &fn, sizeof addr); /* ISO C has no function-to-object cast */
  Dl_info info;
  const char *where = dladdr(addr, &info) && info.dli_fname ? info.dli_fname : "unknown";
  snprintf(buf, size, "generic CBLAS: cblas_sgemm from %s; threads: the provider's own", where);
  append_products(buf, size);
  return ATTN_OK;
}

int32_t attn__blas_threads(void) { return 1; }
#else
attn_status attn_blas_info(char *buf, size_t size) {
  if (!buf || !size)
    return ATTN_ERR_NULL_ARG;
  snprintf(buf, size, "%s; core %s; %d threads; %s", openblas_get_config(),
           openblas_get_corename(), openblas_get_num_threads(),
           openblas_get_parallel() == 0   ? "sequential build"
           : openblas_get_parallel() == 1 ? "pthreads build"
                                          : "OpenMP build");
  append_products(buf, size);
  return ATTN_OK;
}

int32_t attn__blas_threads(void) {
  if (attn__kernels()->gemm_nt)
    return 1; /* libattn calls no BLAS on its hot paths */
  return openblas_get_parallel() == 0 ? 1 : openblas_get_num_threads();
}
#endif

void attn__sgemm_nt(int m, int n, int k, float alpha, const float *a, int lda, const float *b,
                    int ldb, float *c, int ldc) {
  const attn_kernels *kern = attn__kernels();
  if (kern->gemm_nt) {
    kern->gemm_nt(m, n, k, alpha, a, lda, b, ldb, c, ldc);
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, alpha, a, lda, b, ldb, 0.0f, c,
              ldc);
}

void attn__sgemm_nn_acc(int m, int n, int k, const float *a, int lda, const float *b, int ldb,
                        float *c, int ldc) {
  const attn_kernels *kern = attn__kernels();
  if (kern->gemm_nn) {
    kern->gemm_nn(m, n, k, a, lda, b, ldb, c, ldc);
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, a, lda, b, ldb, 1.0f, c,
              ldc);
}
