/* Row kernels for SSE2, the x86-64 baseline: built with the library's own
 * flags, so this set runs on every x86-64 CPU. No FMA: v_fma rounds twice. */
#include "exp_const.h"
#include "kernels.h"

#include <emmintrin.h>
#include <string.h>

typedef __m128 vf;
typedef __m128 vm;
#define VW 4

static inline vf v_set1(float a) { return _mm_set1_ps(a); }
static inline vf v_load(const float *p) { return _mm_loadu_ps(p); }
static inline void v_store(float *p, vf v) { _mm_storeu_ps(p, v); }
static inline vf v_load_part(const float *p, int64_t k, float fill) {
  float buf[VW];
  for (int64_t j = 0; j < VW; j++)
    buf[j] = j < k ? p[j] : fill;
  return _mm_loadu_ps(buf);
}
static inline void v_store_part(float *p, int64_t k, vf v) {
  float buf[VW];
  _mm_storeu_ps(buf, v);
  for (int64_t j = 0; j < k; j++)
    p[j] = buf[j];
}
static inline vf v_add(vf a, vf b) { return _mm_add_ps(a, b); }
static inline vf v_sub(vf a, vf b) { return _mm_sub_ps(a, b); }
static inline vf v_mul(vf a, vf b) { return _mm_mul_ps(a, b); }
static inline vf v_fma(vf a, vf b, vf c) { return _mm_add_ps(_mm_mul_ps(a, b), c); }
static inline vf v_min(vf a, vf b) { return _mm_min_ps(a, b); }
static inline vf v_max(vf a, vf b) { return _mm_max_ps(a, b); }
static inline vm v_nan(vf a) { return _mm_cmpunord_ps(a, a); }
static inline vm vm_or(vm a, vm b) { return _mm_or_ps(a, b); }
static inline vm v_le(vf a, vf b) { return _mm_cmple_ps(a, b); }
static inline vf v_clear(vm m, vf a) { return _mm_andnot_ps(m, a); }
static inline vm v_eq(vf a, vf b) { return _mm_cmpeq_ps(a, b); }
static inline vf v_set_where(vm m, vf a, vf b) { return _mm_or_ps(_mm_and_ps(m, b), _mm_andnot_ps(m, a)); }
static inline vm v_zero_bytes(const uint8_t *b, int64_t k) {
  uint8_t t[VW] = {1, 1, 1, 1};
  for (int64_t j = 0; j < k; j++)
    t[j] = b[j];
  int32_t w;
  memcpy(&w, t, sizeof w);
  __m128i z = _mm_setzero_si128();
  __m128i v = _mm_unpacklo_epi16(_mm_unpacklo_epi8(_mm_cvtsi32_si128(w), z), z);
  return _mm_castsi128_ps(_mm_cmpeq_epi32(v, z));
}
static inline int vm_any(vm a) { return _mm_movemask_ps(a) != 0; }
static inline float v_hmax(vf a) {
  a = _mm_max_ps(a, _mm_movehl_ps(a, a));
  a = _mm_max_ss(a, _mm_shuffle_ps(a, a, 1));
  return _mm_cvtss_f32(a);
}
static inline void v_stream(float *p, vf v) { _mm_stream_ps(p, v); }
static inline void v_fence(void) { _mm_sfence(); }
#define VA 16
static inline vf v_pow2(vf p, vf t, vf nf) {
  (void)nf;
  __m128i n = _mm_sub_epi32(_mm_castps_si128(t), _mm_set1_epi32(EXP_MAGIC_BITS));
  __m128i n1 = _mm_srai_epi32(n, 1);
  __m128i n2 = _mm_sub_epi32(n, n1);
  __m128i bias = _mm_set1_epi32(127);
  vf s1 = _mm_castsi128_ps(_mm_slli_epi32(_mm_add_epi32(n1, bias), 23));
  vf s2 = _mm_castsi128_ps(_mm_slli_epi32(_mm_add_epi32(n2, bias), 23));
  return _mm_mul_ps(_mm_mul_ps(p, s1), s2);
}

typedef struct {
  __m128d d;
} vsum;
static inline vsum vsum_zero(void) { return (vsum){_mm_setzero_pd()}; }
static inline void vsum_add(vsum *s, vf a) {
  s->d = _mm_add_pd(s->d, _mm_add_pd(_mm_cvtps_pd(a), _mm_cvtps_pd(_mm_movehl_ps(a, a))));
}
static inline double vsum_total(vsum s) {
  return _mm_cvtsd_f64(_mm_add_sd(s.d, _mm_unpackhi_pd(s.d, s.d)));
}

typedef __m128d vd;
#define VD 2
static inline vd vd_load(const double *p) { return _mm_loadu_pd(p); }
static inline vd vd_lo(vf a) { return _mm_cvtps_pd(a); }
static inline vd vd_hi(vf a) { return _mm_cvtps_pd(_mm_movehl_ps(a, a)); }
static inline vf v_from_vd(vd lo, vd hi) { return _mm_movelh_ps(_mm_cvtpd_ps(lo), _mm_cvtpd_ps(hi)); }
static inline vd vd_add(vd a, vd b) { return _mm_add_pd(a, b); }
static inline vd vd_sub(vd a, vd b) { return _mm_sub_pd(a, b); }
static inline vd vd_mul(vd a, vd b) { return _mm_mul_pd(a, b); }
static inline vf v_swap_pairs(vf a) { return _mm_shuffle_ps(a, a, 0xB1); }

#include "rows_body.h"

const attn_kernels attn__kernels_sse2 =
    ROWS_TABLE("sse2", attn__f32_to_f16_sse2, attn__f16_to_f32_sse2, attn__f32_to_bf16_sse2,
               attn__bf16_to_f32_sse2, NULL, NULL, NULL, NULL, NULL); /* products: BLAS */
