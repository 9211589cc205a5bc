/* Constants of the vectorised exp shared by every kernel set
 * (rows_body.h), with the reasoning behind them. */
#ifndef ATTN_EXP_CONST_H
#define ATTN_EXP_CONST_H

/* exp(x) for float x: x = n ln2 + r with n = rint(x / ln2), |r| <= ln2/2,
 * then exp(x) = 2^n (1 + r + r^2 q(r)).
 * - Clamping x to [-104, 89] keeps n in [-150, 128]: every x <= -104
 *   (-inf included) ends at exactly 0, since exp(-104) < 2^-150, half the
 *   smallest subnormal; every x >= 89 (+inf included) overflows to +inf.
 *   v_exp clears the result of those x <= -104 instead of scaling by
 *   2^-150 (the same +0, without the underflow that costs a microcode
 *   assist per vector on Intel cores): AVX-512 leaves those lanes out of
 *   its masked VSCALEFPS, the other sets compute them from 0. MINPS returns its second
 *   operand for a NaN and a NaN compares false, so NaN passes through the
 *   clamp and on through every step.
 * - n is rounded by adding 1.5 * 2^23 (t below): the float's low mantissa
 *   bits are then n itself, which v_pow2 reads back as an integer.
 * - ln2 is split: LN2_HI has 16 significant bits, so n * LN2_HI is exact for
 *   |n| < 2^8 and x - n * LN2_HI is exact (the two are within a factor 2);
 *   LN2_LO carries the next 24 bits.
 * - q: degree-4 fit of (e^r - 1 - r) / r^2 on |r| <= 0.347 (a little more
 *   than ln2/2, since n comes from a rounded product) weighted for the
 *   relative error of e^r: 4.4e-9 with these float coefficients, well under
 *   half an ULP. The last rounding is at 1, so the large terms are exact
 *   and the small ones carry their error at a smaller ULP: with FMA
 *   1 + r (1 + r q), two fused steps after q; without, 1 + (r + r^2 q)
 *   (that order keeps sse2 within 1 ULP, where the first would reach 1.17).
 * - 2^n is applied as two factors 2^(n>>1) and 2^(n - (n>>1)), each a
 *   normal float, so subnormal results are rounded once, by the last
 *   product.
 * Measured against exp() in double over every float in [-104, 89] (2.24e9
 * values): at most 0.99 ULP without FMA (sse2; 0.75 ULP for subnormal
 * results, 99.2% correctly rounded), 0.91 ULP with it (avx2, avx512; 0.86
 * ULP for subnormal results, 99.5% correctly rounded).
 * tests/test_exp.c asserts 1.5 ULP on a 1.2e7-value sample. */
#define EXP_HI 89.0f
#define EXP_LO -104.0f
#define EXP_LOG2E 1.44269502163f   /* 1/ln2 rounded to float */
#define EXP_MAGIC 12582912.0f      /* 1.5 * 2^23 */
#define EXP_MAGIC_BITS 0x4b400000  /* its bit pattern */
#define EXP_LN2_HI 0.693145751953125f /* 0x1.62e4p-1 */
#define EXP_LN2_LO 1.42860677e-06f    /* 0x1.7f7d1cp-20 */
#define EXP_C2 0x1.fffffcp-2f
#define EXP_C3 0x1.555490p-3f
#define EXP_C4 0x1.5558f6p-5f
#define EXP_C5 0x1.123a8ep-7f
#define EXP_C6 0x1.6a2318p-10f

#endif
