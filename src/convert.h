/* Rows between a tensor's element type and float, for the ops that compute
 * in float (F32 data is copied as is; F16/BF16 through the dispatched
 * kernels, rules in simd/half.h). */
#ifndef ATTN_CONVERT_H
#define ATTN_CONVERT_H

#include "internal.h"
#include "simd/kernels.h"

#include <string.h>

/* Element `off` (in elements, may be negative) of a dt-typed array. */
static inline void *attn__elem(const void *base, int32_t dt, int64_t off) {
  return (char *)(uintptr_t)base + off * (int64_t)attn__dtype_size(dt);
}

/* y[0..n) = x[0..n) of type dt, as floats (exact). */
static inline void attn__widen(const attn_kernels *k, int32_t dt, const void *x, float *y,
                               int64_t n) {
  if (dt == ATTN_DTYPE_F16)
    k->f16_to_f32(x, y, n);
  else if (dt == ATTN_DTYPE_BF16)
    k->bf16_to_f32(x, y, n);
  else if (x != y)
    memcpy(y, x, (size_t)n * sizeof(float));
}

/* y[0..n) of type dt = x[0..n), rounded once to nearest even. */
static inline void attn__narrow(const attn_kernels *k, int32_t dt, const float *x, void *y,
                                int64_t n) {
  if (dt == ATTN_DTYPE_F16)
    k->f32_to_f16(x, y, n);
  else if (dt == ATTN_DTYPE_BF16)
    k->f32_to_bf16(x, y, n);
  else if (x != y)
    memcpy(y, x, (size_t)n * sizeof(float));
}

/* dst[0..n) of type dt = src[0..n) of type st (F32, F16 or BF16): copied
 * when the types agree, else rounded once (f16 <-> bf16 through f32, exact
 * in between). */
void attn__convert_row(const attn_kernels *k, int32_t st, const void *src, int32_t dt,
                       void *dst, int64_t n);

#endif
