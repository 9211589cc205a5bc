/* The only file that talks to BLAS. */
#include "internal.h"

#include <cblas.h>
#include <stdio.h>

attn_status attn_blas_info(char *buf, size_t size) {
  if (!buf || !size)
    return ATTN_ERR_NULL_ARG;
  snprintf(buf, size, "OpenBLAS %s; core %s; %d threads; %s", openblas_get_config(),
           openblas_get_corename(), openblas_get_num_threads(),
           openblas_get_parallel() == 0   ? "sequential build"
           : openblas_get_parallel() == 1 ? "pthreads build"
                                          : "OpenMP build");
  return ATTN_OK;
}
