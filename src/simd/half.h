/* The 2-byte float formats, one element at a time: the definition every
 * conversion kernel must reproduce bit for bit (the SIMD files use it for
 * their row tails; the portable set uses it for whole rows).
 *
 * f16 is IEEE-754 binary16 (1 sign, 5 exponent, 10 fraction bits); bf16 is
 * the upper half of a binary32 (1, 8, 7). Narrowing rounds to nearest, ties
 * to even, with IEEE overflow: an f32 at or beyond 65520 in magnitude (the
 * midpoint above f16's largest finite, 65504) becomes Inf, and so does one
 * that rounds past bf16's largest finite. Subnormal results are produced
 * (no flush to zero). Widening is exact.
 *
 * NaN in, quiet NaN out, sign kept, in every direction: the payload's
 * leading fraction bits are kept (as many as the narrower format holds: the
 * top 9 of an f32 payload in an f16, the top 6 in a bf16) and the quiet bit
 * is set. These are the rules of x86's F16C (vcvtps2ph, vcvtph2ps) and of
 * AVX-512 BF16 (vcvtne2ps2bf16), so the hardware sets need no fix-up for NaN.
 *
 * Written with integers only, so the result does not depend on the FPU's
 * rounding mode or flush-to-zero flags. */
#ifndef ATTN_SIMD_HALF_H
#define ATTN_SIMD_HALF_H

#include <stdint.h>
#include <string.h>

static inline uint32_t half_bits_of(float f) {
  uint32_t b;
  memcpy(&b, &f, sizeof b);
  return b;
}

static inline float half_float_of(uint32_t b) {
  float f;
  memcpy(&f, &b, sizeof f);
  return f;
}

static inline uint16_t half_f32_to_f16(float f) {
  uint32_t x = half_bits_of(f);
  uint32_t sign = (x >> 16) & 0x8000u, a = x & 0x7fffffffu;
  if (a > 0x7f800000u) /* NaN */
    return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
  if (a >= 0x47800000u) /* >= 65536, or Inf: beyond any rounding */
    return (uint16_t)(sign | 0x7c00u);
  if (a >= 0x38800000u) { /* >= 2^-14: a normal f16, or Inf after rounding */
    /* Round at bit 13; a carry moves into the exponent, which is right
     * (65520 and up carry into the Inf encoding). 0x38000000 rebiases the
     * exponent from 127 to 15. */
    uint32_t r = a + 0xfffu + ((a >> 13) & 1u);
    return (uint16_t)(sign | ((r - 0x38000000u) >> 13));
  }
  if (a <= 0x33000000u) /* <= 2^-25: half of the smallest subnormal ties to 0 */
    return (uint16_t)sign;
  /* Subnormal f16: the value in units of 2^-24, rounded to an integer.
   * Exponent field 102..112 here, so the shift is 14..24. */
  uint32_t e = a >> 23, m = (a & 0x7fffffu) | 0x800000u, shift = 126u - e;
  uint32_t q = m >> shift, rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
  q += rem > half || (rem == half && (q & 1u)); /* 0x400 is the smallest normal: right */
  return (uint16_t)(sign | q);
}

static inline float half_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0x1f) /* Inf, or NaN made quiet */
    return half_float_of(sign | 0x7f800000u | (m << 13) | (m ? 0x400000u : 0u));
  if (e)
    return half_float_of(sign | ((e + 112u) << 23) | (m << 13));
  if (!m)
    return half_float_of(sign);
  e = 113; /* subnormal: normalise; every f16 subnormal is a normal f32 */
  while (!(m & 0x400u)) {
    m <<= 1;
    e--;
  }
  return half_float_of(sign | (e << 23) | ((m & 0x3ffu) << 13));
}

static inline uint16_t half_f32_to_bf16(float f) {
  uint32_t x = half_bits_of(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) /* NaN: truncate, set the quiet bit */
    return (uint16_t)((x >> 16) | 0x40u);
  /* Round at bit 16; a carry into the exponent is right, up to Inf. */
  return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

static inline float half_bf16_to_f32(uint16_t h) {
  uint32_t x = (uint32_t)h << 16;
  if ((h & 0x7fffu) > 0x7f80u)
    x |= 0x400000u;
  return half_float_of(x);
}

/* Row loops over the above: the portable set, and the tails of the others. */
static inline void half_rows_f32_to_f16(const float *x, uint16_t *y, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    y[i] = half_f32_to_f16(x[i]);
}
static inline void half_rows_f16_to_f32(const uint16_t *x, float *y, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    y[i] = half_f16_to_f32(x[i]);
}
static inline void half_rows_f32_to_bf16(const float *x, uint16_t *y, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    y[i] = half_f32_to_bf16(x[i]);
}
static inline void half_rows_bf16_to_f32(const uint16_t *x, float *y, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    y[i] = half_bf16_to_f32(x[i]);
}

#endif
