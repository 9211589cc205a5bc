/* Rows between a tensor's element type and float, for the ops that compute
 * in float (F32 data is copied as is; F16/BF16 through the dispatched
 * kernels, rules in simd/half.h). */
#ifndef ATTN_CONVERT_H
#define ATTN_CONVERT_H

#include "internal.h"
#include "simd/half.h"
#include "simd/kernels.h"

#include <math.h>
#include <string.h>

/* Element `off` (in elements, may be negative) of a dt-typed array. */
static inline void *attn__elem(const void *base, int32_t dt, int64_t off) {
  return (char *)(uintptr_t)base + off * (int64_t)attn__dtype_size(dt);
}

/* Element i of an F32, F16 or BF16 array, as a float (exact). */
static inline float attn__elem_value(const void *base, int32_t dt, int64_t i) {
  if (dt == ATTN_DTYPE_F16)
    return half_f16_to_f32(((const uint16_t *)base)[i]);
  if (dt == ATTN_DTYPE_BF16)
    return half_bf16_to_f32(((const uint16_t *)base)[i]);
  return ((const float *)base)[i];
}

/* Element i of a dt-typed array = v, rounded once to nearest even. A half
 * type goes through a float rounded "to odd" (truncated, last bit set when
 * inexact): with 13 (f16) or 16 (bf16) more bits than the half type, that
 * float rounds to the same half as v itself would, so double -> float ->
 * half is not a double rounding. */
static inline void attn__elem_store(void *base, int32_t dt, int64_t i, double v) {
  float f = (float)v;
  if (dt == ATTN_DTYPE_F32) {
    ((float *)base)[i] = f;
    return;
  }
  if (!isnan(v) && (double)f != v) {
    uint32_t b = half_bits_of(f);
    if (fabs((double)f) > fabs(v))
      b--; /* toward zero: one step down in magnitude (Inf -> the largest float) */
    f = half_float_of(b | 1u);
  }
  ((uint16_t *)base)[i] = dt == ATTN_DTYPE_F16 ? half_f32_to_f16(f) : half_f32_to_bf16(f);
}

/* y[0..n) = x[0..n) of type dt, as floats (exact). n = 0 touches nothing
 * (x and y may then be NULL: an empty row's scratch). */
static inline void attn__widen(const attn_kernels *k, int32_t dt, const void *x, float *y,
                               int64_t n) {
  if (n <= 0)
    return;
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
