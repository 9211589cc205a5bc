/* SDPA's decode products: a few query rows (a decode step's query heads of
 * one KV head) against a run of K and V rows read in place in their stored
 * type (f32, or f16 / bf16 widened in registers: exact, so the same bits as
 * widening into a buffer first). Each K and V row is read from memory once,
 * for every query row at once: a decode step is bound by reading the cache,
 * and the generic products (gemm_body.h) would read half rows through a
 * widened copy and V in column panels.
 *
 * Written once over the vocabulary of rows_body.h plus
 *   v_load_f16(p), v_load_bf16(p)   VW 2-byte elements widened to floats
 *   v_hsum4(s0, s1, s2, s3, out)    out[i] = v_hsum(s_i), the same bits
 * and included after gemm_body.h (gemm_load_n) by the ISA files with FMA.
 *
 * Orders are fixed by the shape alone: a dot product sums VW lanes over k
 * ascending and then across the lanes by v_hsum's tree (four rows at once:
 * v_hsum4); an output element of dec_pv is
 * one FMA chain over the keys in order. Nothing depends on threads,
 * alignment or where a run of keys is cut (a paged cache's blocks). */

#include "half.h"

/* Rows of keys are read in memory order, and the hardware prefetchers stop
 * at each page boundary: the kernels request the row about DEC_AHEAD bytes
 * ahead in the stream of rows into L2 (prefetcht1: the L1 fill buffers stay
 * free for the loads), a line at a time. The stream goes on past the run at
 * `next` (a paged cache's next block), or with the same stride when next is
 * NULL. A prefetch never faults, so the address may lie past the run (formed
 * as an integer). */
#define DEC_AHEAD 4096

typedef struct {
  uintptr_t base, next; /* the run's first row; the next run's, or 0 */
  int64_t n, rows;      /* rows in the run; rows ahead */
  size_t stride;        /* bytes between rows */
} dec_stream;

static inline dec_stream dec_stream_of(const void *b, const void *next, int64_t n, int64_t k,
                                       int64_t ld, size_t size) {
  dec_stream s = {(uintptr_t)b, (uintptr_t)next, n, 1, (size_t)ld * size};
  if ((size_t)k * size < DEC_AHEAD)
    s.rows = DEC_AHEAD / ((int64_t)((size_t)k * size) + 1) + 1;
  return s;
}

/* Request the line at byte `off` of row j + rows ahead of the stream. */
static inline void dec_ahead(const dec_stream *s, int64_t j, size_t off) {
  int64_t r = j + s->rows;
  uintptr_t a = r < s->n || !s->next ? s->base + (uintptr_t)r * s->stride
                                     : s->next + (uintptr_t)(r - s->n) * s->stride;
  __builtin_prefetch((const void *)(a + off), 0, 2);
}

/* Whether the vector at element i of a row starts a new 64-byte line. */
static inline bool dec_line_start(int64_t i, size_t size) {
  return ((size_t)i * size) % 64 < (size_t)VW * size;
}

/* Query rows per pass over a K row (accumulators kept in registers). */
#define DEC_ROWS 4

/* VW elements of a row of type `e` from element i, widened; `left` < VW
 * reads only that many (the other lanes 0). */
static inline __attribute__((always_inline)) vf dec_load(int e, const void *row, int64_t i,
                                                         int64_t left) {
  if (e == ATTN_ELEM_F32)
    return gemm_load_n((const float *)row + i, left);
  const uint16_t *h = (const uint16_t *)row + i;
  if (left >= VW)
    return e == ATTN_ELEM_F16 ? v_load_f16(h) : v_load_bf16(h);
  float buf[VW] = {0};
  for (int64_t j = 0; j < left; j++)
    buf[j] = e == ATTN_ELEM_F16 ? half_f16_to_f32(h[j]) : half_bf16_to_f32(h[j]);
  return v_load(buf);
}

/* c[i * ldc] = alpha a[i] . b for i < mr: one K row b against mr query rows. */
static inline __attribute__((always_inline)) void dec_dot(int mr, int e, int64_t k, float alpha,
                                                          const float *a, int64_t lda,
                                                          const void *b, float *c, int64_t ldc,
                                                          const dec_stream *st, int64_t j) {
  size_t size = e == ATTN_ELEM_F32 ? 4 : 2;
  vf s[DEC_ROWS];
#pragma GCC unroll 4
  for (int i = 0; i < mr; i++)
    s[i] = v_set1(0.0f);
  int64_t kk = 0;
  for (; kk + VW <= k; kk += VW) {
    if (st && dec_line_start(kk, size))
      dec_ahead(st, j, (size_t)kk * size);
    vf bv = dec_load(e, b, kk, VW);
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++)
      s[i] = v_fma(v_load(a + i * lda + kk), bv, s[i]);
  }
  if (kk < k) {
    vf bv = dec_load(e, b, kk, k - kk);
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++)
      s[i] = v_fma(gemm_load_n(a + i * lda + kk, k - kk), bv, s[i]);
  }
  /* Every row's lanes summed by the same tree, however many rows share it. */
  vf zero = v_set1(0.0f);
  float t[DEC_ROWS];
  v_hsum4(s[0], mr > 1 ? s[1] : zero, mr > 2 ? s[2] : zero, mr > 3 ? s[3] : zero, t);
#pragma GCC unroll 4
  for (int i = 0; i < mr; i++)
    c[i * ldc] = alpha * t[i];
}

/* c[i, j] = alpha a[i] . b[j] for i < m, j < n; b rows ldb elements apart. */
static inline __attribute__((always_inline)) void dec_qk_e(int e, int64_t m, int64_t n,
                                                           int64_t k, float alpha, const float *a,
                                                           int64_t lda, const void *b,
                                                           int64_t ldb, const void *next,
                                                           float *c, int64_t ldc) {
  size_t size = e == ATTN_ELEM_F32 ? 4 : 2;
  dec_stream st = dec_stream_of(b, next, n, k, ldb, size);
  for (int64_t j = 0; j < n; j++) {
    const void *bj = (const char *)b + (size_t)(j * ldb) * size;
    for (int64_t i = 0; i < m; i += DEC_ROWS) {
      const float *ai = a + i * lda;
      float *ci = c + i * ldc + j;
      const dec_stream *sj = i == 0 ? &st : NULL; /* the first pass over row j prefetches */
      switch (m - i < DEC_ROWS ? m - i : DEC_ROWS) {
      case 1: dec_dot(1, e, k, alpha, ai, lda, bj, ci, ldc, sj, j); break;
      case 2: dec_dot(2, e, k, alpha, ai, lda, bj, ci, ldc, sj, j); break;
      case 3: dec_dot(3, e, k, alpha, ai, lda, bj, ci, ldc, sj, j); break;
      default: dec_dot(4, e, k, alpha, ai, lda, bj, ci, ldc, sj, j); break;
      }
    }
  }
}

/* Keys per step of dec_pv: their V rows are read together, and each
 * accumulator vector is loaded and stored once per step. */
#define DEC_KEYS 4

/* c[i, d] += sum over j < n of p[i, j] v[j, d] for i < m, d < dv, v rows ldv
 * elements apart; skip: a zero p[i, j] adds nothing (0 * inf is not taken). */
static inline __attribute__((always_inline)) void dec_pv_e(int e, int64_t m, int64_t n,
                                                           int64_t dv, const float *p,
                                                           int64_t ldp, const void *v,
                                                           int64_t ldv, const void *next,
                                                           float *c, int64_t ldc, bool skip) {
  size_t size = e == ATTN_ELEM_F32 ? 4 : 2;
  dec_stream st = dec_stream_of(v, next, n, dv, ldv, size);
#define DEC_ROW(j) ((const void *)((const char *)v + (size_t)((j) * ldv) * size))
  int64_t j = 0;
  if (!skip) {
    for (; j + DEC_KEYS <= n; j += DEC_KEYS) {
      for (int64_t d = 0; d < dv; d += VW) {
        int64_t left = dv - d;
        if (dec_line_start(d, size))
          for (int r = 0; r < DEC_KEYS; r++)
            dec_ahead(&st, j + r, (size_t)d * size);
        vf v0 = dec_load(e, DEC_ROW(j), d, left), v1 = dec_load(e, DEC_ROW(j + 1), d, left);
        vf v2 = dec_load(e, DEC_ROW(j + 2), d, left), v3 = dec_load(e, DEC_ROW(j + 3), d, left);
        for (int64_t i = 0; i < m; i++) {
          const float *pi = p + i * ldp + j;
          float *ci = c + i * ldc + d;
          vf acc = gemm_load_n(ci, left);
          acc = v_fma(v_set1(pi[0]), v0, acc);
          acc = v_fma(v_set1(pi[1]), v1, acc);
          acc = v_fma(v_set1(pi[2]), v2, acc);
          acc = v_fma(v_set1(pi[3]), v3, acc);
          if (left >= VW)
            v_store(ci, acc);
          else
            v_store_part(ci, left, acc);
        }
      }
    }
  }
  /* The last keys, and every key when zero weights are skipped: the same
   * FMA chain per element, one key at a time. */
  for (; j < n; j++) {
    for (int64_t d = 0; d < dv; d += VW) {
      int64_t left = dv - d;
      if (dec_line_start(d, size))
        dec_ahead(&st, j, (size_t)d * size);
      vf vj = dec_load(e, DEC_ROW(j), d, left);
      for (int64_t i = 0; i < m; i++) {
        float w = p[i * ldp + j];
        if (skip && w == 0)
          continue;
        float *ci = c + i * ldc + d;
        vf acc = v_fma(v_set1(w), vj, gemm_load_n(ci, left));
        if (left >= VW)
          v_store(ci, acc);
        else
          v_store_part(ci, left, acc);
      }
    }
  }
#undef DEC_ROW
}

static void dec_qk(int64_t m, int64_t n, int64_t k, float alpha, const float *a, int64_t lda,
                   const void *b, int be, int64_t ldb, const void *next, float *c, int64_t ldc) {
  switch (be) {
  case ATTN_ELEM_F16: dec_qk_e(ATTN_ELEM_F16, m, n, k, alpha, a, lda, b, ldb, next, c, ldc); break;
  case ATTN_ELEM_BF16: dec_qk_e(ATTN_ELEM_BF16, m, n, k, alpha, a, lda, b, ldb, next, c, ldc); break;
  default: dec_qk_e(ATTN_ELEM_F32, m, n, k, alpha, a, lda, b, ldb, next, c, ldc); break;
  }
}

static void dec_pv(int64_t m, int64_t n, int64_t dv, const float *p, int64_t ldp, const void *v,
                   int ve, int64_t ldv, const void *next, float *c, int64_t ldc, bool skip) {
  switch (ve) {
  case ATTN_ELEM_F16: dec_pv_e(ATTN_ELEM_F16, m, n, dv, p, ldp, v, ldv, next, c, ldc, skip); break;
  case ATTN_ELEM_BF16: dec_pv_e(ATTN_ELEM_BF16, m, n, dv, p, ldp, v, ldv, next, c, ldc, skip); break;
  default: dec_pv_e(ATTN_ELEM_F32, m, n, dv, p, ldp, v, ldv, next, c, ldc, skip); break;
  }
}
