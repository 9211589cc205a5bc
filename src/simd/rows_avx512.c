/* Row kernels for AVX-512F: the only file built with -mavx512f, and only
 * called after cpu.c has seen it in CPUID and the ZMM and opmask state
 * enabled by the OS (XGETBV). Row tails use masked loads and stores, which
 * never touch the lanes masked off. */
#include "exp_const.h"
#include "kernels.h"

#include <immintrin.h>
#include <math.h>

typedef __m512 vf;
typedef __mmask16 vm;
#define VW 16

static inline __mmask16 first_lanes(int64_t k) { return (__mmask16)((1u << k) - 1u); }
static inline vf v_set1(float a) { return _mm512_set1_ps(a); }
static inline vf v_load(const float *p) { return _mm512_loadu_ps(p); }
static inline void v_store(float *p, vf v) { _mm512_storeu_ps(p, v); }
static inline vf v_load_part(const float *p, int64_t k, float fill) {
  return _mm512_mask_loadu_ps(_mm512_set1_ps(fill), first_lanes(k), p);
}
static inline void v_store_part(float *p, int64_t k, vf v) {
  _mm512_mask_storeu_ps(p, first_lanes(k), v);
}
static inline vf v_add(vf a, vf b) { return _mm512_add_ps(a, b); }
static inline vf v_sub(vf a, vf b) { return _mm512_sub_ps(a, b); }
static inline vf v_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
static inline vf v_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
#define V_FMA_FUSED
static inline vf v_min(vf a, vf b) { return _mm512_min_ps(a, b); }
static inline vf v_max(vf a, vf b) { return _mm512_max_ps(a, b); }
static inline vm v_nan(vf a) { return _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q); }
static inline vm vm_or(vm a, vm b) { return (vm)(a | b); }
static inline vm v_le(vf a, vf b) { return _mm512_cmp_ps_mask(a, b, _CMP_LE_OQ); }
static inline vm v_eq(vf a, vf b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
static inline vf v_set_where(vm m, vf a, vf b) { return _mm512_mask_mov_ps(a, m, b); }
static inline vm v_zero_bytes(const uint8_t *b, int64_t k) {
  __m512i v;
  if (k == VW) {
    v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)b));
  } else {
    uint8_t t[VW];
    for (int64_t j = 0; j < VW; j++)
      t[j] = j < k ? b[j] : 1;
    v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)t));
  }
  return _mm512_cmpeq_epi32_mask(v, _mm512_setzero_si512());
}
static inline int vm_any(vm a) { return a != 0; }
static inline float v_hmax(vf a) { return _mm512_reduce_max_ps(a); }
static inline float v_hsum(vf a) { return _mm512_reduce_add_ps(a); }
static inline void v_stream(float *p, vf v) { _mm512_stream_ps(p, v); }
static inline void v_fence(void) { _mm_sfence(); }
#define VA 64
/* VSCALEFPS rounds p * 2^n once, as the two factors of the other sets do
 * (exp_const.h), so every set keeps the same bits; one instruction instead
 * of seven. Masked lanes are not computed, so they raise no underflow (and
 * take no microcode assist) whatever they hold; this set needs no v_pow2
 * or v_clear. */
#define V_POW2_MASKED
static inline vf v_pow2_clear(vm m, vf p, vf t, vf nf) {
  (void)t;
  return _mm512_maskz_scalef_ps((__mmask16)~m, p, nf);
}

typedef struct {
  __m512d d;
} vsum;
static inline vsum vsum_zero(void) { return (vsum){_mm512_setzero_pd()}; }
static inline void vsum_add(vsum *s, vf a) {
  __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1));
  s->d = _mm512_add_pd(s->d, _mm512_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(a)),
                                           _mm512_cvtps_pd(hi)));
}
/* Lanes i and i + 4, then i and i + 2, then the two (GCC's
 * _mm512_reduce_add_pd, written out so that every compiler sums in this
 * order, the one vsum_totals keeps). */
static inline double vsum_total(vsum s) {
  __m256d h = _mm256_add_pd(_mm512_castpd512_pd256(s.d), _mm512_extractf64x4_pd(s.d, 1));
  __m128d q = _mm_add_pd(_mm256_castpd256_pd128(h), _mm256_extractf128_pd(h, 1));
  return _mm_cvtsd_f64(q) + _mm_cvtsd_f64(_mm_unpackhi_pd(q, q));
}

typedef __m512d vd;
#define VD 8
static inline vd vd_load(const double *p) { return _mm512_loadu_pd(p); }
static inline vd vd_lo(vf a) { return _mm512_cvtps_pd(_mm512_castps512_ps256(a)); }
static inline vd vd_hi(vf a) {
  return _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
}
static inline vf v_from_vd(vd lo, vd hi) {
  __m512d l = _mm512_castps_pd(_mm512_castps256_ps512(_mm512_cvtpd_ps(lo)));
  return _mm512_castpd_ps(_mm512_insertf64x4(l, _mm256_castps_pd(_mm512_cvtpd_ps(hi)), 1));
}
static inline vd vd_add(vd a, vd b) { return _mm512_add_pd(a, b); }
static inline vd vd_sub(vd a, vd b) { return _mm512_sub_pd(a, b); }
static inline vd vd_mul(vd a, vd b) { return _mm512_mul_pd(a, b); }
static inline vf v_swap_pairs(vf a) { return _mm512_permute_ps(a, 0xB1); }
/* out[i] = the sum of the lanes of s_i, for four vectors at once: each
 * summed by the tree of v_hsum (halves, quarters, then pairs within a
 * quarter), with the shuffles shared. */
static inline void v_hsum4(vf s0, vf s1, vf s2, vf s3, float out[4]) {
  vf x0 = _mm512_add_ps(_mm512_shuffle_f32x4(s0, s1, 0x44), _mm512_shuffle_f32x4(s0, s1, 0xEE));
  vf x1 = _mm512_add_ps(_mm512_shuffle_f32x4(s2, s3, 0x44), _mm512_shuffle_f32x4(s2, s3, 0xEE));
  vf y = _mm512_add_ps(_mm512_shuffle_f32x4(x0, x1, 0x88), _mm512_shuffle_f32x4(x0, x1, 0xDD));
  y = _mm512_add_ps(y, _mm512_permute_ps(y, 0x4E));
  y = _mm512_add_ps(y, _mm512_permute_ps(y, 0xB1));
  float t[VW];
  _mm512_storeu_ps(t, y);
  out[0] = t[0], out[1] = t[4], out[2] = t[8], out[3] = t[12];
}
/* The sums of 16 vectors' lanes, each by v_hsum4's tree (the pattern of
 * v_hmax_rows below: the shuffles shared by all 16), transposed as 4 x 4:
 * out[4 * (k % 4) + k / 4] = v_hsum(v[k]). */
#define V_HSUM16T
static inline void v_hsum16t(const vf *v, float out[16]) {
  vf a[4], t[8];
  for (int i = 0; i < 8; i++) /* 256-bit halves: [v 2i: 8 lanes | v 2i+1: 8 lanes] */
    t[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                         _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
  for (int i = 0; i < 4; i++) /* 128-bit lane j: v 4i + j's 4 */
    a[i] = _mm512_add_ps(_mm512_shuffle_f32x4(t[2 * i], t[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(t[2 * i], t[2 * i + 1], 0xDD));
  for (int i = 0; i < 2; i++) { /* lanes e and e + 2 of each 4 */
    __m512d lo = _mm512_unpacklo_pd(_mm512_castps_pd(a[2 * i]), _mm512_castps_pd(a[2 * i + 1]));
    __m512d hi = _mm512_unpackhi_pd(_mm512_castps_pd(a[2 * i]), _mm512_castps_pd(a[2 * i + 1]));
    t[i] = _mm512_add_ps(_mm512_castpd_ps(lo), _mm512_castpd_ps(hi));
  }
  /* then the two: lane 4j + q holds v 4q + j */
  _mm512_storeu_ps(out, _mm512_add_ps(_mm512_shuffle_ps(t[0], t[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                      _mm512_shuffle_ps(t[0], t[1], _MM_SHUFFLE(3, 1, 3, 1))));
}
/* rows_body.h's batched horizontal steps, 16 rows at a time: each round
 * combines pairs of vectors, the halves (then quarters, pairs, lanes) of
 * one against those of the other, so a vector ends up holding one result
 * per row. The float64 sums keep vsum_total's tree (lanes i and i + 4, then
 * i and i + 2, then the two), so the bits are those of one row at a time. */
#define V_ROWS_REDUCE
static inline void v_hmax_rows(const vf *v, int64_t k, float *out) {
  vf a[16], t[8];
  if (k == 1) {
    out[0] = v_hmax(v[0]);
    return;
  }
  if (k <= 4) { /* the first two rounds on four vectors, then within each 128-bit lane */
    for (int i = 0; i < 4; i++)
      a[i] = i < k ? v[i] : v_set1(-INFINITY);
    for (int i = 0; i < 2; i++)
      t[i] = _mm512_max_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x44),
                           _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xEE));
    vf r = _mm512_max_ps(_mm512_shuffle_f32x4(t[0], t[1], 0x88),
                         _mm512_shuffle_f32x4(t[0], t[1], 0xDD));
    r = _mm512_max_ps(r, _mm512_permute_ps(r, 0x4E));
    r = _mm512_max_ps(r, _mm512_permute_ps(r, 0xB1));
    float o[16];
    _mm512_storeu_ps(o, r); /* lane 4j: row j */
    for (int64_t i = 0; i < k; i++)
      out[i] = o[4 * i];
    return;
  }
  for (int i = 0; i < 16; i++)
    a[i] = i < k ? v[i] : v_set1(-INFINITY);
  for (int i = 0; i < 8; i++) /* [row 2i: 8 lanes | row 2i+1: 8 lanes] */
    t[i] = _mm512_max_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x44),
                         _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xEE));
  for (int i = 0; i < 4; i++) /* 128-bit lane j: row 4i + j's 4 */
    a[i] = _mm512_max_ps(_mm512_shuffle_f32x4(t[2 * i], t[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(t[2 * i], t[2 * i + 1], 0xDD));
  for (int i = 0; i < 2; i++) { /* 128-bit lane j: rows 8i + j, 8i + 4 + j: 2 each */
    __m512d lo = _mm512_unpacklo_pd(_mm512_castps_pd(a[2 * i]), _mm512_castps_pd(a[2 * i + 1]));
    __m512d hi = _mm512_unpackhi_pd(_mm512_castps_pd(a[2 * i]), _mm512_castps_pd(a[2 * i + 1]));
    t[i] = _mm512_max_ps(_mm512_castpd_ps(lo), _mm512_castpd_ps(hi));
  }
  /* lane 4j + q: row 4q + j */
  vf r = _mm512_max_ps(_mm512_shuffle_ps(t[0], t[1], _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_ps(t[0], t[1], _MM_SHUFFLE(3, 1, 3, 1)));
  float o[16];
  _mm512_storeu_ps(o, r);
  for (int64_t i = 0; i < k; i++)
    out[i] = o[4 * (i % 4) + i / 4];
}
static inline void vsum_totals(const vsum *s, int64_t k, float *out) {
  __m512d a[16], t[8];
  if (k == 1) {
    out[0] = (float)vsum_total(s[0]);
    return;
  }
  if (k <= 4) { /* the same tree on four rows */
    for (int i = 0; i < 4; i++)
      a[i] = i < k ? s[i].d : _mm512_setzero_pd();
    for (int i = 0; i < 2; i++)
      t[i] = _mm512_add_pd(_mm512_shuffle_f64x2(a[2 * i], a[2 * i + 1], 0x44),
                           _mm512_shuffle_f64x2(a[2 * i], a[2 * i + 1], 0xEE));
    __m512d q = _mm512_add_pd(_mm512_shuffle_f64x2(t[0], t[1], 0x88),
                              _mm512_shuffle_f64x2(t[0], t[1], 0xDD));
    float o[8]; /* lane 2j: row j */
    _mm256_storeu_ps(o, _mm512_cvtpd_ps(_mm512_add_pd(_mm512_unpacklo_pd(q, q),
                                                      _mm512_unpackhi_pd(q, q))));
    for (int64_t i = 0; i < k; i++)
      out[i] = o[2 * i];
    return;
  }
  for (int i = 0; i < 16; i++)
    a[i] = i < k ? s[i].d : _mm512_setzero_pd();
  for (int i = 0; i < 8; i++) /* lanes i and i + 4: [row 2i: 4 | row 2i+1: 4] */
    t[i] = _mm512_add_pd(_mm512_shuffle_f64x2(a[2 * i], a[2 * i + 1], 0x44),
                         _mm512_shuffle_f64x2(a[2 * i], a[2 * i + 1], 0xEE));
  for (int i = 0; i < 4; i++) /* i and i + 2: 128-bit lane j: row 4i + j's 2 */
    a[i] = _mm512_add_pd(_mm512_shuffle_f64x2(t[2 * i], t[2 * i + 1], 0x88),
                         _mm512_shuffle_f64x2(t[2 * i], t[2 * i + 1], 0xDD));
  float o[16];
  for (int i = 0; i < 2; i++) /* the two: lane 2j + q: row 8i + 4q + j */
    _mm256_storeu_ps(o + 8 * i, _mm512_cvtpd_ps(_mm512_add_pd(_mm512_unpacklo_pd(a[2 * i], a[2 * i + 1]),
                                                              _mm512_unpackhi_pd(a[2 * i], a[2 * i + 1]))));
  for (int64_t i = 0; i < k; i++)
    out[i] = o[8 * (i / 8) + 2 * (i % 4) + (i % 8) / 4];
}
/* VW 2-byte floats widened (AVX-512F's vcvtph2ps; bf16 is the upper half
 * of an f32). */
static inline vf v_load_f16(const uint16_t *p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}
static inline vf v_load_bf16(const uint16_t *p) {
  __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}
/* 32 bf16 widened as two vectors, the even elements and the odd (bf16 is
 * the upper half of an f32: the even ones shifted up, the odd ones with the
 * lower half cleared): one 64-byte load and two ALU ops, where v_load_bf16
 * takes a widening move and a shift per 16. v_deal32 puts 32 floats in that
 * order in place ([even | odd]), v_undeal32 back. */
#define V_BF16_PAIRS
static inline void v_load_bf16_pairs(const uint16_t *p, vf *even, vf *odd) {
  __m512i w = _mm512_loadu_si512((const void *)p);
  *even = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  *odd = _mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32((int)0xffff0000u)));
}
static inline void v_deal32(float *c) {
  const __m512i ev = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i od = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
  vf a = _mm512_loadu_ps(c), b = _mm512_loadu_ps(c + 16);
  _mm512_storeu_ps(c, _mm512_permutex2var_ps(a, ev, b));
  _mm512_storeu_ps(c + 16, _mm512_permutex2var_ps(a, od, b));
}
static inline void v_undeal32(float *c) {
  const __m512i lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m512i hi = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
  vf a = _mm512_loadu_ps(c), b = _mm512_loadu_ps(c + 16);
  _mm512_storeu_ps(c, _mm512_permutex2var_ps(a, lo, b));
  _mm512_storeu_ps(c + 16, _mm512_permutex2var_ps(a, hi, b));
}

#include "rows_body.h"

/* gemm_body.h's packing of b^T, 16 x 16 at a time: rows of b loaded whole,
 * transposed by three rounds of shuffles (pairs of rows, then quads, then
 * 128-bit lanes), stored as rows of t. A copy: the values are unchanged. */
#define GEMM_PACK_T 16
static inline void gemm_pack_t(const float *b, int64_t ldb, float *t, int64_t ldt) {
  __m512 r[16], u[16];
  for (int i = 0; i < 16; i++)
    r[i] = _mm512_loadu_ps(b + i * ldb);
  for (int i = 0; i < 16; i += 2) { /* lane L: r[i][4L], r[i+1][4L], r[i][4L+1], ... */
    u[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    u[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) { /* r[i + c], lane L: column 4L + c of rows i..i+3 */
    __m512d a = _mm512_castps_pd(u[i]), b1 = _mm512_castps_pd(u[i + 1]);
    __m512d c = _mm512_castps_pd(u[i + 2]), d = _mm512_castps_pd(u[i + 3]);
    r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b1, d));
    r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b1, d));
  }
  for (int c = 0; c < 4; c++) { /* lanes of the four row quads: columns 4L + c */
    __m512 x0 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x44);
    __m512 x1 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xEE);
    __m512 x2 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x44);
    __m512 x3 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xEE);
    _mm512_storeu_ps(t + (0 + c) * ldt, _mm512_shuffle_f32x4(x0, x2, 0x88));
    _mm512_storeu_ps(t + (4 + c) * ldt, _mm512_shuffle_f32x4(x0, x2, 0xDD));
    _mm512_storeu_ps(t + (8 + c) * ldt, _mm512_shuffle_f32x4(x1, x3, 0x88));
    _mm512_storeu_ps(t + (12 + c) * ldt, _mm512_shuffle_f32x4(x1, x3, 0xDD));
  }
}

#define GEMM_MR 12 /* 2 * 12 accumulators + 3 of the 32 vector registers */
#include "gemm_body.h"
#include "decode_body.h"

const attn_kernels attn__kernels_avx512 =
    ROWS_TABLE("avx512", attn__f32_to_f16_avx512, attn__f16_to_f32_avx512,
               attn__f32_to_bf16_avx512, attn__bf16_to_f32_avx512, gemm_nt, gemm_nn_acc,
               gemm_tn_acc, dec_qk, dec_pv);
/* The same with f32 -> bf16 through AVX-512 BF16 (half_avx512bf16.c). */
const attn_kernels attn__kernels_avx512bf16 =
    ROWS_TABLE("avx512bf16", attn__f32_to_f16_avx512, attn__f16_to_f32_avx512,
               attn__f32_to_bf16_avx512bf16, attn__bf16_to_f32_avx512, gemm_nt, gemm_nn_acc,
               gemm_tn_acc, dec_qk, dec_pv);
