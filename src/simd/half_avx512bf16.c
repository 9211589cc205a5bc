/* f32 -> bf16 with AVX-512 BF16 (vcvtne2ps2bf16), for the avx512bf16 set:
 * the only file built with -mavx512bf16, called after cpu.c has seen it.
 * The instruction rounds to nearest even and quiets NaN as half.h does, but
 * it reads subnormal inputs as zero (DAZ, whatever MXCSR says): a block of
 * 32 holding one is converted by half.h instead, so the bits stay those of
 * every other set. Subnormal floats are rare in real data; the check costs
 * two mask tests per 32 elements. */
#include "half.h"
#include "kernels.h"

#include <immintrin.h>

/* Lanes whose exponent field is 0 and fraction is not: subnormals. */
static inline __mmask16 subnormal(__m512 v) {
  __m512i b = _mm512_castps_si512(v);
  return _mm512_test_epi32_mask(b, _mm512_set1_epi32(0x7fffff)) &
         (__mmask16)~_mm512_test_epi32_mask(b, _mm512_set1_epi32(0x7f800000));
}

void attn__f32_to_bf16_avx512bf16(const float *x, uint16_t *y, int64_t n) {
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m512 lo = _mm512_loadu_ps(x + i), hi = _mm512_loadu_ps(x + i + 16);
    if (subnormal(lo) | subnormal(hi)) {
      half_rows_f32_to_bf16(x + i, y + i, 32);
      continue;
    }
    __m512bh r = _mm512_cvtne2ps_pbh(hi, lo); /* lo fills the lower 16 lanes */
    _mm512_storeu_si512((void *)(y + i), (__m512i)r);
  }
  attn__f32_to_bf16_avx512(x + i, y + i, n - i);
}
