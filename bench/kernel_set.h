/* The kernel set libattn picked on this CPU, for the bench tools that call
 * its kernels directly (linked from attn_simd's objects: the library hides
 * them): the set attn_blas_info names ("SDPA products: libattn NAME
 * kernels"), or NULL when SDPA's products go to BLAS or the build has no x86
 * kernels. */
#ifndef ATTN_BENCH_KERNEL_SET_H
#define ATTN_BENCH_KERNEL_SET_H

#include "attn.h"
#include "simd/kernels.h"

#include <stdio.h>
#include <string.h>

static inline const attn_kernels *bench_kernel_set(void) {
#ifdef ATTN_HAVE_X86_KERNELS
  static const char tag[] = "SDPA products: libattn ";
  char info[512], want[64];
  attn_blas_info(info, sizeof info);
  const char *at = strstr(info, tag);
  if (!at || sscanf(at + strlen(tag), "%63s", want) != 1)
    return NULL;
  const attn_kernels *sets[] = {&attn__kernels_avx2, &attn__kernels_avx512,
                                &attn__kernels_avx512bf16};
  for (size_t i = 0; i < sizeof sets / sizeof sets[0]; i++)
    if (!strcmp(sets[i]->name, want))
      return sets[i];
#endif
  return NULL;
}

#endif
