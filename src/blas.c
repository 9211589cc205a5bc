/* The only file that talks to BLAS. SDPA's tile products (the forward's
 * and the backward's) go to libattn's own kernels where the CPU has them
 * (AVX2 + FMA, AVX-512: simd/gemm_body.h says why), else to cblas_sgemm. */
#ifdef ATTN_BLAS_GENERIC
#define _GNU_SOURCE /* dladdr */
#endif
#include "internal.h"
#include "simd/kernels.h"

#include <cblas.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
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

/* No known limit on concurrent callers. */
static int32_t caller_limit(void) { return 0; }
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

/* OpenBLAS keeps per-thread buffers and thread metadata for 2 * MAX_THREADS
 * threads (its build's NUM_THREADS, named in its config string: 64 on
 * Debian), callers and its own workers together; past that it crashes or
 * hangs (about 200 concurrent callers on Debian 12). MAX_THREADS callers at
 * once stay within it; 32 if the config string does not say. */
static int32_t caller_limit(void) {
  const char *m = strstr(openblas_get_config(), "MAX_THREADS=");
  long n = m ? strtol(m + strlen("MAX_THREADS="), NULL, 10) : 0;
  return n > 0 && n < 4096 ? (int32_t)n : 32;
}
#endif

/* ---- the bound on threads inside the BLAS at once ----
 * Process-wide state, and the only such state besides the CPU probe: it
 * guards a process-wide resource (the BLAS's buffer table), which no
 * per-context object can. Contexts stay independent below the limit: a
 * call takes a slot with one atomic add; only past the limit does it wait
 * on the mutex for a slot to be given back. (A fork while other threads are
 * inside the BLAS leaves their slots taken in the child: it runs with fewer.) */
static pthread_once_t gate_once = PTHREAD_ONCE_INIT;
static int32_t gate_limit; /* 0: unbounded */
static atomic_int gate_inside, gate_waiting;
static pthread_mutex_t gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;

static void gate_init(void) { gate_limit = caller_limit(); }

static void gate_enter(void) {
  pthread_once(&gate_once, gate_init);
  if (!gate_limit || atomic_fetch_add(&gate_inside, 1) < gate_limit)
    return;
  atomic_fetch_sub(&gate_inside, 1);
  pthread_mutex_lock(&gate_mu);
  /* Registered as waiting before looking at the count (both seq_cst): a
   * leaving thread either sees this waiter or left before the look. */
  atomic_fetch_add(&gate_waiting, 1);
  for (;;) {
    int n = atomic_load(&gate_inside);
    if (n < gate_limit && atomic_compare_exchange_weak(&gate_inside, &n, n + 1))
      break;
    if (n >= gate_limit)
      pthread_cond_wait(&gate_cv, &gate_mu);
  }
  atomic_fetch_sub(&gate_waiting, 1);
  pthread_mutex_unlock(&gate_mu);
}

static void gate_leave(void) {
  if (!gate_limit)
    return;
  atomic_fetch_sub(&gate_inside, 1);
  if (atomic_load(&gate_waiting) > 0) {
    pthread_mutex_lock(&gate_mu);
    pthread_cond_signal(&gate_cv);
    pthread_mutex_unlock(&gate_mu);
  }
}

/* BLAS wants leading dimensions >= 1 even for an operand without elements:
 * products with an empty dim (a head dim D or Dv of 0) are done here, before
 * either path. */
void attn__sgemm_nt(int m, int n, int k, float alpha, const float *a, int lda, const float *b,
                    int ldb, float *c, int ldc) {
  if (m == 0 || n == 0)
    return;
  if (k == 0) { /* empty dot products */
    for (int r = 0; r < m; r++)
      memset(c + (size_t)r * (size_t)ldc, 0, (size_t)n * sizeof *c);
    return;
  }
  const attn_kernels *kern = attn__kernels();
  if (kern->gemm_nt) {
    kern->gemm_nt(m, n, k, alpha, a, lda, b, ldb, c, ldc);
    return;
  }
  gate_enter();
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, alpha, a, lda, b, ldb, 0.0f, c,
              ldc);
  gate_leave();
}

/* The kernel's accumulating product c += op(a) b, or cblas_sgemm's with op =
 * trans_a when the kernel set leaves it to BLAS (kernel NULL). */
static void sgemm_acc(void (*kernel)(int64_t, int64_t, int64_t, const float *, int64_t,
                                     const float *, int64_t, float *, int64_t),
                      enum CBLAS_TRANSPOSE trans_a, int m, int n, int k, const float *a, int lda,
                      const float *b, int ldb, float *c, int ldc) {
  if (m == 0 || n == 0 || k == 0)
    return; /* c += nothing */
  if (kernel) {
    kernel(m, n, k, a, lda, b, ldb, c, ldc);
    return;
  }
  gate_enter();
  cblas_sgemm(CblasRowMajor, trans_a, CblasNoTrans, m, n, k, 1.0f, a, lda, b, ldb, 1.0f, c, ldc);
  gate_leave();
}

void attn__sgemm_nn_acc(int m, int n, int k, const float *a, int lda, const float *b, int ldb,
                        float *c, int ldc) {
  sgemm_acc(attn__kernels()->gemm_nn, CblasNoTrans, m, n, k, a, lda, b, ldb, c, ldc);
}

void attn__sgemm_tn_acc(int m, int n, int k, const float *a, int lda, const float *b, int ldb,
                        float *c, int ldc) {
  sgemm_acc(attn__kernels()->gemm_tn, CblasTrans, m, n, k, a, lda, b, ldb, c, ldc);
}
