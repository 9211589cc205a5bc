/* Conversions between f32 and the 2-byte formats for the avx512 set
 * (AVX-512F): the only file built with -mavx512f alone. f16 goes through
 * AVX-512F's own vcvtps2ph/vcvtph2ps (F16C rules: half.h's); bf16 is integer
 * bit manipulation, narrowed with vpmovdw. Tails go through half.h. */
#include "half.h"
#include "kernels.h"

#include <immintrin.h>

#define RNE (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)

static inline __m512i set1(uint32_t v) { return _mm512_set1_epi32((int)v); }

void attn__f32_to_f16_avx512(const float *x, uint16_t *y, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256((__m256i *)(y + i), _mm512_cvtps_ph(_mm512_loadu_ps(x + i), RNE));
  half_rows_f32_to_f16(x + i, y + i, n - i);
}

void attn__f16_to_f32_avx512(const uint16_t *x, float *y, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(y + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(x + i))));
  half_rows_f16_to_f32(x + i, y + i, n - i);
}

void attn__f32_to_bf16_avx512(const float *x, uint16_t *y, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512i v = _mm512_castps_si512(_mm512_loadu_ps(x + i));
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(v, 16), set1(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(v, _mm512_add_epi32(lsb, set1(0x7fff))), 16);
    __mmask16 nan = _mm512_cmpgt_epi32_mask(_mm512_and_si512(v, set1(0x7fffffff)),
                                            set1(0x7f800000));
    r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(v, 16), set1(0x40));
    _mm256_storeu_si256((__m256i *)(y + i), _mm512_cvtepi32_epi16(r));
  }
  half_rows_f32_to_bf16(x + i, y + i, n - i);
}

void attn__bf16_to_f32_avx512(const uint16_t *x, float *y, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512i v = _mm512_slli_epi32(
        _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(x + i))), 16);
    __mmask16 nan = _mm512_cmpgt_epi32_mask(_mm512_and_si512(v, set1(0x7fffffff)),
                                            set1(0x7f800000));
    v = _mm512_mask_or_epi32(v, nan, v, set1(0x400000));
    _mm512_storeu_ps(y + i, _mm512_castsi512_ps(v));
  }
  half_rows_bf16_to_f32(x + i, y + i, n - i);
}
