/* Conversions between f32 and the 2-byte formats for plain SSE2 (every
 * x86-64): integer bit manipulation with the rules of half.h, 8 elements a
 * step, the tail through half.h itself. */
#include "half.h"
#include "kernels.h"

#include <emmintrin.h>

static inline __m128i set1(uint32_t v) { return _mm_set1_epi32((int)v); }

/* 32-bit lanes holding 16-bit values -> 8 packed 16-bit values. Shifting up
 * then arithmetically down sign-extends, so the signed saturation of packs
 * never changes a value. */
static inline __m128i pack16(__m128i lo, __m128i hi) {
  lo = _mm_srai_epi32(_mm_slli_epi32(lo, 16), 16);
  hi = _mm_srai_epi32(_mm_slli_epi32(hi, 16), 16);
  return _mm_packs_epi32(lo, hi);
}

static inline __m128i select(__m128i mask, __m128i yes, __m128i no) {
  return _mm_or_si128(_mm_and_si128(mask, yes), _mm_andnot_si128(mask, no));
}

static __m128i f32_to_f16_4(__m128i x) {
  __m128i sign = _mm_and_si128(_mm_srli_epi32(x, 16), set1(0x8000));
  __m128i a = _mm_and_si128(x, set1(0x7fffffff));
  __m128i odd = _mm_and_si128(_mm_srli_epi32(a, 13), set1(1));
  __m128i normal =
      _mm_srli_epi32(_mm_sub_epi32(_mm_add_epi32(a, _mm_add_epi32(odd, set1(0xfff))),
                                   set1(0x38000000)),
                     13);
  /* Below 2^-14 the f16 is a multiple of 2^-24: adding 0.5 (whose ULP is
   * 2^-24) rounds it there to nearest even, and the fraction bits of the
   * sum are the f16. This one float operation uses the default rounding
   * mode, as every op of the library does. */
  __m128i sub = _mm_sub_epi32(
      _mm_castps_si128(_mm_add_ps(_mm_castsi128_ps(a), _mm_set1_ps(0.5f))), set1(0x3f000000));
  __m128i nan = _mm_or_si128(set1(0x7e00), _mm_and_si128(_mm_srli_epi32(a, 13), set1(0x3ff)));
  __m128i r = select(_mm_cmplt_epi32(a, set1(0x38800000)), sub, normal);
  r = select(_mm_cmpgt_epi32(a, set1(0x477fffff)), set1(0x7c00), r);
  r = select(_mm_cmpgt_epi32(a, set1(0x7f800000)), nan, r);
  return _mm_or_si128(r, sign);
}

static __m128i f16_to_f32_4(__m128i h) {
  __m128i sign = _mm_slli_epi32(_mm_and_si128(h, set1(0x8000)), 16);
  __m128i o = _mm_slli_epi32(_mm_and_si128(h, set1(0x7fff)), 13);
  __m128i exp = _mm_and_si128(o, set1(0x0f800000));
  o = _mm_add_epi32(o, set1(0x38000000)); /* exponent bias 15 -> 127 */
  __m128i infnan = _mm_cmpeq_epi32(exp, set1(0x0f800000));
  __m128i quiet = _mm_andnot_si128(_mm_cmpeq_epi32(_mm_and_si128(h, set1(0x3ff)), set1(0)),
                                   set1(0x400000));
  __m128i big = _mm_or_si128(_mm_add_epi32(o, set1(0x38000000)), quiet);
  /* Zero and subnormals: 2^-14 * (1 + m/1024) - 2^-14 = m * 2^-24, exact. */
  __m128 small = _mm_sub_ps(_mm_castsi128_ps(_mm_add_epi32(o, set1(0x800000))),
                            _mm_castsi128_ps(set1(0x38800000)));
  o = select(infnan, big, o);
  o = select(_mm_cmpeq_epi32(exp, set1(0)), _mm_castps_si128(small), o);
  return _mm_or_si128(o, sign);
}

static __m128i f32_to_bf16_4(__m128i x) {
  __m128i lsb = _mm_and_si128(_mm_srli_epi32(x, 16), set1(1));
  __m128i r = _mm_srli_epi32(_mm_add_epi32(x, _mm_add_epi32(lsb, set1(0x7fff))), 16);
  __m128i nan = _mm_or_si128(_mm_srli_epi32(x, 16), set1(0x40));
  return select(_mm_cmpgt_epi32(_mm_and_si128(x, set1(0x7fffffff)), set1(0x7f800000)), nan,
                r);
}

static __m128i bf16_to_f32_4(__m128i x) { /* x: the bf16 already in the upper half */
  __m128i nan = _mm_cmpgt_epi32(_mm_and_si128(x, set1(0x7fffffff)), set1(0x7f800000));
  return _mm_or_si128(x, _mm_and_si128(nan, set1(0x400000)));
}

void attn__f32_to_f16_sse2(const float *x, uint16_t *y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m128i lo = f32_to_f16_4(_mm_castps_si128(_mm_loadu_ps(x + i)));
    __m128i hi = f32_to_f16_4(_mm_castps_si128(_mm_loadu_ps(x + i + 4)));
    _mm_storeu_si128((__m128i *)(y + i), pack16(lo, hi));
  }
  half_rows_f32_to_f16(x + i, y + i, n - i);
}

void attn__f16_to_f32_sse2(const uint16_t *x, float *y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m128i h = _mm_loadu_si128((const __m128i *)(x + i));
    __m128i z = _mm_setzero_si128();
    _mm_storeu_ps(y + i, _mm_castsi128_ps(f16_to_f32_4(_mm_unpacklo_epi16(h, z))));
    _mm_storeu_ps(y + i + 4, _mm_castsi128_ps(f16_to_f32_4(_mm_unpackhi_epi16(h, z))));
  }
  half_rows_f16_to_f32(x + i, y + i, n - i);
}

void attn__f32_to_bf16_sse2(const float *x, uint16_t *y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m128i lo = f32_to_bf16_4(_mm_castps_si128(_mm_loadu_ps(x + i)));
    __m128i hi = f32_to_bf16_4(_mm_castps_si128(_mm_loadu_ps(x + i + 4)));
    _mm_storeu_si128((__m128i *)(y + i), pack16(lo, hi));
  }
  half_rows_f32_to_bf16(x + i, y + i, n - i);
}

void attn__bf16_to_f32_sse2(const uint16_t *x, float *y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m128i h = _mm_loadu_si128((const __m128i *)(x + i));
    __m128i z = _mm_setzero_si128();
    _mm_storeu_ps(y + i, _mm_castsi128_ps(bf16_to_f32_4(_mm_unpacklo_epi16(z, h))));
    _mm_storeu_ps(y + i + 4, _mm_castsi128_ps(bf16_to_f32_4(_mm_unpackhi_epi16(z, h))));
  }
  half_rows_bf16_to_f32(x + i, y + i, n - i);
}
