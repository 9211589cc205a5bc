/* Row kernels for AVX2 + FMA + F16C: the only file built with -mavx2 -mfma
 * -mf16c, and only called after cpu.c has seen them in CPUID and the YMM state enabled
 * by the OS (XGETBV). */
#include "exp_const.h"
#include "kernels.h"

#include <immintrin.h>

typedef __m256 vf;
typedef __m256 vm;
#define VW 8

static inline vf v_set1(float a) { return _mm256_set1_ps(a); }
static inline vf v_load(const float *p) { return _mm256_loadu_ps(p); }
static inline void v_store(float *p, vf v) { _mm256_storeu_ps(p, v); }
static inline vf v_load_part(const float *p, int64_t k, float fill) {
  float buf[VW];
  for (int64_t j = 0; j < VW; j++)
    buf[j] = j < k ? p[j] : fill;
  return _mm256_loadu_ps(buf);
}
static inline void v_store_part(float *p, int64_t k, vf v) {
  float buf[VW];
  _mm256_storeu_ps(buf, v);
  for (int64_t j = 0; j < k; j++)
    p[j] = buf[j];
}
static inline vf v_add(vf a, vf b) { return _mm256_add_ps(a, b); }
static inline vf v_sub(vf a, vf b) { return _mm256_sub_ps(a, b); }
static inline vf v_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
static inline vf v_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
#define V_FMA_FUSED
static inline vf v_min(vf a, vf b) { return _mm256_min_ps(a, b); }
static inline vf v_max(vf a, vf b) { return _mm256_max_ps(a, b); }
static inline vm v_nan(vf a) { return _mm256_cmp_ps(a, a, _CMP_UNORD_Q); }
static inline vm vm_or(vm a, vm b) { return _mm256_or_ps(a, b); }
static inline vm v_le(vf a, vf b) { return _mm256_cmp_ps(a, b, _CMP_LE_OQ); }
static inline vf v_clear(vm m, vf a) { return _mm256_andnot_ps(m, a); }
static inline vm v_eq(vf a, vf b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
static inline vf v_set_where(vm m, vf a, vf b) { return _mm256_blendv_ps(a, b, m); }
static inline vm v_zero_bytes(const uint8_t *b, int64_t k) {
  uint8_t t[VW] = {1, 1, 1, 1, 1, 1, 1, 1};
  for (int64_t j = 0; j < k; j++)
    t[j] = b[j];
  __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)t));
  return _mm256_castsi256_ps(_mm256_cmpeq_epi32(v, _mm256_setzero_si256()));
}
static inline int vm_any(vm a) { return _mm256_movemask_ps(a) != 0; }
static inline float v_hmax(vf a) {
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
  return _mm_cvtss_f32(h);
}
static inline float v_hsum(vf a) {
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
  return _mm_cvtss_f32(h);
}
static inline void v_stream(float *p, vf v) { _mm256_stream_ps(p, v); }
static inline void v_fence(void) { _mm_sfence(); }
#define VA 32
static inline vf v_pow2(vf p, vf t, vf nf) {
  (void)nf;
  __m256i n = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(EXP_MAGIC_BITS));
  __m256i n1 = _mm256_srai_epi32(n, 1);
  __m256i n2 = _mm256_sub_epi32(n, n1);
  __m256i bias = _mm256_set1_epi32(127);
  vf s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
  vf s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
  return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
}

typedef struct {
  __m256d d;
} vsum;
static inline vsum vsum_zero(void) { return (vsum){_mm256_setzero_pd()}; }
static inline void vsum_add(vsum *s, vf a) {
  s->d = _mm256_add_pd(s->d, _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(a)),
                                           _mm256_cvtps_pd(_mm256_extractf128_ps(a, 1))));
}
static inline double vsum_total(vsum s) {
  __m128d h = _mm_add_pd(_mm256_castpd256_pd128(s.d), _mm256_extractf128_pd(s.d, 1));
  return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
}

typedef __m256d vd;
#define VD 4
static inline vd vd_load(const double *p) { return _mm256_loadu_pd(p); }
static inline vd vd_lo(vf a) { return _mm256_cvtps_pd(_mm256_castps256_ps128(a)); }
static inline vd vd_hi(vf a) { return _mm256_cvtps_pd(_mm256_extractf128_ps(a, 1)); }
static inline vf v_from_vd(vd lo, vd hi) {
  return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm256_cvtpd_ps(lo)), _mm256_cvtpd_ps(hi), 1);
}
static inline vd vd_add(vd a, vd b) { return _mm256_add_pd(a, b); }
static inline vd vd_sub(vd a, vd b) { return _mm256_sub_pd(a, b); }
static inline vd vd_mul(vd a, vd b) { return _mm256_mul_pd(a, b); }
static inline vf v_swap_pairs(vf a) { return _mm256_permute_ps(a, 0xB1); }
/* out[i] = v_hsum(s_i) for four vectors. */
static inline void v_hsum4(vf s0, vf s1, vf s2, vf s3, float out[4]) {
  out[0] = v_hsum(s0), out[1] = v_hsum(s1), out[2] = v_hsum(s2), out[3] = v_hsum(s3);
}
/* VW 2-byte floats widened (F16C; bf16 is the upper half of an f32). */
static inline vf v_load_f16(const uint16_t *p) {
  return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}
static inline vf v_load_bf16(const uint16_t *p) {
  __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}

#include "rows_body.h"
#define GEMM_MR 6 /* 2 * 6 accumulators + 3 of the 16 vector registers */
#include "gemm_body.h"
#include "decode_body.h"

const attn_kernels attn__kernels_avx2 =
    ROWS_TABLE("avx2", attn__f32_to_f16_avx2, attn__f16_to_f32_avx2, attn__f32_to_bf16_avx2,
               attn__bf16_to_f32_avx2, gemm_nt, gemm_nn_acc, gemm_tn_acc, dec_qk, dec_pv);
