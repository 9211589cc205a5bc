/* The kernel sets this CPU can run, for the suites that call the kernels
 * directly (test_exp, test_gemm, test_half: they link the kernel objects,
 * attn_simd, which the shared library hides). Chosen with the compiler's
 * own CPU check rather than the library's probe, asking each set for the
 * features src/cpu.c asks of it. */
#ifndef ATTN_TEST_KERNEL_SETS_H
#define ATTN_TEST_KERNEL_SETS_H

#include "simd/kernels.h"

#define TU_MAX_SETS 4

/* The runnable sets into out[TU_MAX_SETS], baseline first; returns how
 * many. bf16: the avx512bf16 set too (the avx512 set but for narrowing to
 * bf16). */
static inline int tu_kernel_sets(const attn_kernels **out, int bf16) {
  int n = 0;
#if defined(ATTN_HAVE_X86_KERNELS)
  __builtin_cpu_init();
  out[n++] = &attn__kernels_sse2;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c"))
    out[n++] = &attn__kernels_avx2;
  if (__builtin_cpu_supports("avx512f"))
    out[n++] = &attn__kernels_avx512;
  if (bf16 && __builtin_cpu_supports("avx512bf16"))
    out[n++] = &attn__kernels_avx512bf16;
#else
  (void)bf16;
  out[n++] = &attn__kernels_scalar;
#endif
  return n;
}

/* for (const attn_kernels *k ...) over the runnable sets (no avx512bf16)
 * that pass `keep`, an expression of k. */
#define TU_FOR_EACH_SET(k, keep)                                                         \
  const attn_kernels *tu_sets_[TU_MAX_SETS];                                             \
  int tu_nsets_ = tu_kernel_sets(tu_sets_, 0);                                           \
  for (int tu_i_ = 0; tu_i_ < tu_nsets_; tu_i_++)                                        \
    for (const attn_kernels *k = tu_sets_[tu_i_]; k && (keep); k = NULL)

#endif
