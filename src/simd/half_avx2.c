/* Conversions between f32 and the 2-byte formats for the avx2 set (AVX2 +
 * FMA + F16C): the only file built with -mavx2 -mf16c, called after cpu.c
 * has seen all three and the YMM state. f16 goes through F16C, whose
 * rounding (nearest even, from the immediate, not MXCSR) and NaN rules are
 * those of half.h; bf16 is integer bit manipulation. Tails go through
 * half.h. */
#include "half.h"
#include "kernels.h"

#include <immintrin.h>

#define RNE (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)

static inline __m256i set1(uint32_t v) { return _mm256_set1_epi32((int)v); }

void attn__f32_to_f16_avx2(const float *x, uint16_t *y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128((__m128i *)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), RNE));
  half_rows_f32_to_f16(x + i, y + i, n - i);
}

void attn__f16_to_f32_avx2(const uint16_t *x, float *y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))));
  half_rows_f16_to_f32(x + i, y + i, n - i);
}

void attn__f32_to_bf16_avx2(const float *x, uint16_t *y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256i v = _mm256_castps_si256(_mm256_loadu_ps(x + i));
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(v, 16), set1(1));
    /* Arithmetic shifts: the 16-bit results arrive sign-extended, so the
     * signed saturation of packs leaves them alone. */
    __m256i r = _mm256_srai_epi32(_mm256_add_epi32(v, _mm256_add_epi32(lsb, set1(0x7fff))), 16);
    __m256i nan = _mm256_or_si256(_mm256_srai_epi32(v, 16), set1(0x40));
    __m256i is_nan =
        _mm256_cmpgt_epi32(_mm256_and_si256(v, set1(0x7fffffff)), set1(0x7f800000));
    r = _mm256_blendv_epi8(r, nan, is_nan);
    __m128i p = _mm_packs_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
    _mm_storeu_si128((__m128i *)(y + i), p);
  }
  half_rows_f32_to_bf16(x + i, y + i, n - i);
}

void attn__bf16_to_f32_avx2(const uint16_t *x, float *y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256i v = _mm256_slli_epi32(
        _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(x + i))), 16);
    __m256i is_nan =
        _mm256_cmpgt_epi32(_mm256_and_si256(v, set1(0x7fffffff)), set1(0x7f800000));
    v = _mm256_or_si256(v, _mm256_and_si256(is_nan, set1(0x400000)));
    _mm256_storeu_ps(y + i, _mm256_castsi256_ps(v));
  }
  half_rows_bf16_to_f32(x + i, y + i, n - i);
}
