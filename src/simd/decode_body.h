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
 *   v_hsum16t(v, out) (optional)    out[4 (k % 4) + k / 4] = v_hsum(v[k])
 *   V_BF16_PAIRS (optional, VW 16): v_load_bf16_pairs(p, even, odd) 32 bf16
 *                                   widened as their even and odd elements,
 *                                   v_deal32(c) / v_undeal32(c) 32 floats
 *                                   put in that order and back, in place
 * and included after gemm_body.h (gemm_load_n) by the ISA files with FMA.
 *
 * Orders are fixed by the shape alone: a dot product sums VW lanes over k
 * ascending and then across the lanes by v_hsum's tree (four rows at once:
 * v_hsum4); an output element of dec_pv is one FMA chain over the keys in
 * order. How many keys a pass takes (two K rows, eight V rows) changes no
 * order. Nothing depends on threads, alignment or where a run of keys is
 * cut (a paged cache's blocks). */

#include "half.h"

/* Rows of keys are read in memory order, and the hardware prefetchers stop
 * at each page boundary: the kernels request the row about DEC_AHEAD bytes
 * ahead in the stream of rows into L2 (prefetcht1: the L1 fill buffers stay
 * free for the loads), a line at a time as the loads reach that line of
 * their own row (requesting whole rows at once was 7-16 % slower: the
 * requests come in bursts). The stream goes on past the run at
 * `next` (the rows the caller reads next: the next head's, block's, or the
 * other of K and V), with this run's stride, or on along the run when next
 * is NULL. A prefetch never faults, so the address may lie past the run (formed
 * as an integer). */
#define DEC_AHEAD 4096
/* 2-byte rows: 3 KiB ahead (12 rows of D = 128). 4 KiB ahead was 4-7 %
 * slower (bf16 / f16, Lk = 32768, 1 thread), 8 and 16 KiB 8 and 28 %:
 * requests in flight past what one core keeps going only wait. */
#define DEC_AHEAD_HALF 3072

typedef struct {
  uintptr_t base, next; /* the run's first row; the next run's, or 0 */
  int64_t n, rows;      /* rows in the run; rows ahead */
  size_t stride;        /* bytes between rows */
} dec_stream;

static inline dec_stream dec_stream_of(const void *b, const void *next, int64_t n, int64_t k,
                                       int64_t ld, size_t size) {
  dec_stream s = {(uintptr_t)b, (uintptr_t)next, n, 1, (size_t)ld * size};
  size_t ahead = size == 2 ? DEC_AHEAD_HALF : DEC_AHEAD;
  if ((size_t)k * size < ahead)
    s.rows = (int64_t)ahead / ((int64_t)((size_t)k * size) + 1) + 1;
  return s;
}

/* The address of row j + rows ahead of the stream (an integer: it may lie
 * past the run, and a prefetch never faults). */
static inline uintptr_t dec_ahead(const dec_stream *s, int64_t j) {
  int64_t r = j + s->rows;
  uintptr_t a = r < s->n || !s->next ? s->base + (uintptr_t)r * s->stride
                                     : s->next + (uintptr_t)(r - s->n) * s->stride;
  return a;
}

/* Whether the vector at element i of a row starts a new 64-byte line. */
static inline bool dec_line_start(int64_t i, size_t size) {
  return ((size_t)i * size) % 64 < (size_t)VW * size;
}

/* Query rows per pass over K rows (accumulators kept in registers), and K
 * rows per pass: each query vector loaded once for all of them (four with
 * 32 vector registers: 16 sums, 4 rows and a query vector; two with 16). */
#define DEC_ROWS 4
#define DEC_QKEYS (VW >= 16 ? 4 : 2)
/* Runs of at least this many keys are read as DEC_QKEYS spans at once
 * (dec_qk_e). */
#define DEC_SPREAD 64

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

/* c[i * ldc + t step] = alpha a[i] . b_t for i < mr, t < nk: nk K rows
 * (b_t at b + t step ldb elements) against mr query rows. */
static inline __attribute__((always_inline)) void dec_dot(int mr, int nk, int e, int64_t k,
                                                          float alpha, const float *a,
                                                          int64_t lda, const void *b,
                                                          int64_t ldb, int64_t step, float *c,
                                                          int64_t ldc, const uintptr_t *ahead) {
  size_t size = e == ATTN_ELEM_F32 ? 4 : 2;
  const void *bt[DEC_QKEYS];
  vf s[DEC_QKEYS][DEC_ROWS];
#pragma GCC unroll 4
  for (int t = 0; t < nk; t++) {
    bt[t] = (const char *)b + (size_t)(t * step * ldb) * size;
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++)
      s[t][i] = v_set1(0.0f);
  }
  /* F32 rows: each K row whole before the next, so the loads follow memory
   * order (0.96-0.98x the CPU time of a vector of each row in turn: f32
   * cache, 1 thread). Half rows (256 bytes) stay side by side: read whole
   * they showed no gain. */
  if (e == ATTN_ELEM_F32) {
#pragma GCC unroll 4
    for (int t = 0; t < nk; t++)
      for (int64_t kk = 0; kk < k; kk += VW) {
        int64_t left = k - kk >= VW ? VW : k - kk;
        if (dec_line_start(kk, size))
          __builtin_prefetch((const void *)(ahead[t] + (size_t)kk * size), 0, 2);
        vf bv = dec_load(e, bt[t], kk, left);
#pragma GCC unroll 4
        for (int i = 0; i < mr; i++)
          s[t][i] = v_fma(gemm_load_n(a + i * lda + kk, left), bv, s[t][i]);
      }
  } else {
    /* A 64-byte line of each row per step (whole vectors: one prefetch per
     * row and step, no tail test), then the last elements the same way in
     * vectors, partial at the end. The sums take the vectors in the same
     * order either way. */
    const int64_t line = 64 / 2;
    int64_t kk = 0;
    for (; kk + line <= k; kk += line) {
#pragma GCC unroll 4
      for (int t = 0; t < nk; t++)
        __builtin_prefetch((const void *)(ahead[t] + (size_t)kk * size), 0, 2);
#pragma GCC unroll 4
      for (int64_t o = kk; o < kk + line; o += VW) {
        vf bv[DEC_QKEYS];
#pragma GCC unroll 4
        for (int t = 0; t < nk; t++)
          bv[t] = dec_load(e, bt[t], o, VW);
#pragma GCC unroll 4
        for (int i = 0; i < mr; i++) {
          vf av = v_load(a + i * lda + o);
#pragma GCC unroll 4
          for (int t = 0; t < nk; t++)
            s[t][i] = v_fma(av, bv[t], s[t][i]);
        }
      }
    }
    for (; kk < k; kk += VW) {
      int64_t left = k - kk >= VW ? VW : k - kk;
      if (dec_line_start(kk, size))
#pragma GCC unroll 4
        for (int t = 0; t < nk; t++)
          __builtin_prefetch((const void *)(ahead[t] + (size_t)kk * size), 0, 2);
      vf bv[DEC_QKEYS];
#pragma GCC unroll 4
      for (int t = 0; t < nk; t++)
        bv[t] = dec_load(e, bt[t], kk, left);
#pragma GCC unroll 4
      for (int i = 0; i < mr; i++) {
        vf av = gemm_load_n(a + i * lda + kk, left);
#pragma GCC unroll 4
        for (int t = 0; t < nk; t++)
          s[t][i] = v_fma(av, bv[t], s[t][i]);
      }
    }
  }
  /* Every row's lanes summed by the same tree, however many rows and keys
   * share it. */
#ifdef V_HSUM16T
  if (mr == 4 && nk == 4) { /* r[4 i + t]: row i, key t */
    float r[16];
    v_hsum16t(&s[0][0], r);
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++)
#pragma GCC unroll 4
      for (int t = 0; t < 4; t++)
        c[i * ldc + t * step] = alpha * r[4 * i + t];
    return;
  }
#endif
  vf zero = v_set1(0.0f);
#pragma GCC unroll 4
  for (int t = 0; t < nk; t++) {
    float r[DEC_ROWS];
    v_hsum4(s[t][0], mr > 1 ? s[t][1] : zero, mr > 2 ? s[t][2] : zero, mr > 3 ? s[t][3] : zero,
            r);
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++)
      c[i * ldc + t * step] = alpha * r[i];
  }
}

/* c[i, j] = alpha a[i] . b[j] for i < m, j < n; b rows ldb elements apart.
 * Each K row is read by its first pass from memory (the later ones find it
 * in L1). */
static inline __attribute__((always_inline)) void dec_qk_e(int e, int64_t m, int64_t n,
                                                           int64_t k, float alpha, const float *a,
                                                           int64_t lda, const void *b,
                                                           int64_t ldb, const void *next,
                                                           float *c, int64_t ldc) {
  size_t size = e == ATTN_ELEM_F32 ? 4 : 2;
  dec_stream st = dec_stream_of(b, next, n, k, ldb, size);
  /* Long runs (a contiguous cache's tile): a pass takes one key from each
   * of DEC_QKEYS spans of q keys, so that as many streams of rows are read
   * at once: one stream leaves the core's misses in flight short of what
   * the memory system takes (1 thread, Lk = 32768: f32 12-15 %, f16 5-8 %
   * less CPU time, bf16 within noise). Each key's sum is the same. The
   * spans' first rows, which no stream ahead requested, are requested first
   * (without: f32 half the gain, bf16 3-4 % slower than one stream). The
   * keys past the spans, and short runs (a paged cache's blocks: spans of a
   * few blocks gained nothing), follow as below. */
  int64_t q = n >= DEC_SPREAD ? n / DEC_QKEYS : 0;
  for (int t = 1; q && t < DEC_QKEYS; t++)
    for (int64_t r = t * q; r < t * q + st.rows && r < (t + 1) * q; r++)
      for (size_t o = 0; o < (size_t)k * size; o += 64)
        __builtin_prefetch((const char *)b + (size_t)(r * ldb) * size + o, 0, 2);
  for (int64_t j = 0; j < q; j++) {
    const void *bj = (const char *)b + (size_t)(j * ldb) * size;
    uintptr_t ahead[DEC_QKEYS];
    for (int t = 0; t < DEC_QKEYS; t++)
      ahead[t] = dec_ahead(&st, j + t * q);
    for (int64_t i = 0; i < m; i += DEC_ROWS) {
      const float *ai = a + i * lda;
      float *ci = c + i * ldc + j;
      switch (m - i < DEC_ROWS ? (int)(m - i) : DEC_ROWS) {
      case 1: dec_dot(1, DEC_QKEYS, e, k, alpha, ai, lda, bj, ldb, q, ci, ldc, ahead); break;
      case 2: dec_dot(2, DEC_QKEYS, e, k, alpha, ai, lda, bj, ldb, q, ci, ldc, ahead); break;
      case 3: dec_dot(3, DEC_QKEYS, e, k, alpha, ai, lda, bj, ldb, q, ci, ldc, ahead); break;
      default: dec_dot(4, DEC_QKEYS, e, k, alpha, ai, lda, bj, ldb, q, ci, ldc, ahead); break;
      }
    }
  }
  for (int64_t j = q * DEC_QKEYS; j < n; j += DEC_QKEYS) {
    const void *bj = (const char *)b + (size_t)(j * ldb) * size;
    int nk = n - j < DEC_QKEYS ? (int)(n - j) : DEC_QKEYS;
    uintptr_t ahead[DEC_QKEYS];
    for (int t = 0; t < nk; t++)
      ahead[t] = dec_ahead(&st, j + t);
    for (int64_t i = 0; i < m; i += DEC_ROWS) {
      const float *ai = a + i * lda;
      float *ci = c + i * ldc + j;
      int mr = m - i < DEC_ROWS ? (int)(m - i) : DEC_ROWS;
      const uintptr_t *aj = ahead; /* later passes find the lines requested (cheap) */
      if (nk == DEC_QKEYS) {
        switch (mr) {
        case 1: dec_dot(1, DEC_QKEYS, e, k, alpha, ai, lda, bj, ldb, 1, ci, ldc, aj); break;
        case 2: dec_dot(2, DEC_QKEYS, e, k, alpha, ai, lda, bj, ldb, 1, ci, ldc, aj); break;
        case 3: dec_dot(3, DEC_QKEYS, e, k, alpha, ai, lda, bj, ldb, 1, ci, ldc, aj); break;
        default: dec_dot(4, DEC_QKEYS, e, k, alpha, ai, lda, bj, ldb, 1, ci, ldc, aj); break;
        }
      } else { /* the last keys, one at a time */
        for (int t = 0; t < nk; t++) {
          const void *bt = (const char *)bj + (size_t)(t * ldb) * size;
          const uintptr_t *at = aj + t;
          switch (mr) {
          case 1: dec_dot(1, 1, e, k, alpha, ai, lda, bt, ldb, 1, ci + t, ldc, at); break;
          case 2: dec_dot(2, 1, e, k, alpha, ai, lda, bt, ldb, 1, ci + t, ldc, at); break;
          case 3: dec_dot(3, 1, e, k, alpha, ai, lda, bt, ldb, 1, ci + t, ldc, at); break;
          default: dec_dot(4, 1, e, k, alpha, ai, lda, bt, ldb, 1, ci + t, ldc, at); break;
          }
        }
      }
    }
  }
}

/* Keys per step of dec_pv: their V rows are read (widened) once per step
 * for every query row, and each accumulator vector is loaded and stored
 * once per step. Within a step the accumulators of DEC_ROWS query rows by
 * DEC_VECS vectors stay in registers (16 of AVX-512's 32, 8 of AVX2's 16):
 * that many independent FMA chains, where one row's chain over the keys
 * would wait on each FMA's latency. */
#define DEC_KEYS 8
#define DEC_VECS (VW >= 16 ? 4 : 2)

/* One step of dec_pv over mr query rows and nv vectors of columns from d:
 * c[i, d..] += sum over r < DEC_KEYS of p[i, r] v_r[d..], in key order.
 * full: nv whole vectors; else one vector of the `left` columns left. */
static inline __attribute__((always_inline)) void dec_pv_step(int mr, int nv, bool full,
                                                              bool pairs, int e,
                                                              int64_t left, const float *p,
                                                              int64_t ldp, const void *v,
                                                              int64_t ldv, int64_t d, float *c,
                                                              int64_t ldc,
                                                              const uintptr_t *ahead) {
  size_t size = e == ATTN_ELEM_F32 ? 4 : 2;
  (void)pairs; /* without V_BF16_PAIRS, never set */
  vf acc[DEC_ROWS][DEC_VECS];
#pragma GCC unroll 4
  for (int i = 0; i < mr; i++)
#pragma GCC unroll 4
    for (int t = 0; t < nv; t++)
      acc[i][t] = gemm_load_n(c + i * ldc + d + t * VW, full ? VW : left);
#pragma GCC unroll 8
  for (int r = 0; r < DEC_KEYS; r++) {
    const void *row = (const char *)v + (size_t)(r * ldv) * size;
    vf vr[DEC_VECS];
#pragma GCC unroll 4
    for (int t = 0; t < nv; t++) {
      int64_t o = d + t * VW;
      if (ahead && dec_line_start(o, size))
        __builtin_prefetch((const void *)(ahead[r] + (size_t)o * size), 0, 2);
#ifdef V_BF16_PAIRS
      if (pairs) { /* columns in v_deal32's order, a line per two vectors */
        if (t % 2 == 0)
          v_load_bf16_pairs((const uint16_t *)row + o, &vr[t], &vr[t + 1]);
        continue;
      }
#endif
      vr[t] = dec_load(e, row, o, full ? VW : left);
    }
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++) {
      vf w = v_set1(p[i * ldp + r]);
#pragma GCC unroll 4
      for (int t = 0; t < nv; t++)
        acc[i][t] = v_fma(w, vr[t], acc[i][t]);
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < mr; i++)
#pragma GCC unroll 4
    for (int t = 0; t < nv; t++) {
      float *ci = c + i * ldc + d + t * VW;
      if (full || left >= VW)
        v_store(ci, acc[i][t]);
      else
        v_store_part(ci, left, acc[i][t]);
    }
}

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
#define DEC_STEP(nv, full, pairs, left)                                                          \
  switch (mr) {                                                                                  \
  case 1: dec_pv_step(1, nv, full, pairs, e, left, pj, ldp, vj, ldv, d, ci, ldc, aj); break;    \
  case 2: dec_pv_step(2, nv, full, pairs, e, left, pj, ldp, vj, ldv, d, ci, ldc, aj); break;    \
  case 3: dec_pv_step(3, nv, full, pairs, e, left, pj, ldp, vj, ldv, d, ci, ldc, aj); break;    \
  default: dec_pv_step(4, nv, full, pairs, e, left, pj, ldp, vj, ldv, d, ci, ldc, aj); break;   \
  }
  int64_t j = 0;
  /* BF16 rows of a long run (a contiguous cache's tile) are widened a line
   * at a time as even and odd elements (v_load_bf16_pairs: half the
   * conversion work), their columns' accumulators dealt into that order for
   * the run and back after it. Each column's FMA chain is the same: the same
   * bits. A paged cache's short blocks keep the plain loads (the dealing
   * would cost about what it saves). */
  bool pairs = false;
#ifdef V_BF16_PAIRS
  const int64_t wide = DEC_VECS * VW; /* columns per step of full vectors */
  int64_t dealt =
      e == ATTN_ELEM_BF16 && wide == 64 && !skip && n >= DEC_SPREAD ? dv / wide * wide : 0;
  pairs = dealt > 0;
  for (int64_t i = 0; i < m && pairs; i++)
    for (int64_t d = 0; d < dealt; d += 32)
      v_deal32(c + i * ldc + d);
#endif
  if (!skip) {
    for (; j + DEC_KEYS <= n; j += DEC_KEYS) {
      uintptr_t ahead[DEC_KEYS];
      for (int r = 0; r < DEC_KEYS; r++)
        ahead[r] = dec_ahead(&st, j + r);
      const void *vj = DEC_ROW(j);
      for (int64_t i = 0; i < m; i += DEC_ROWS) {
        int mr = m - i < DEC_ROWS ? (int)(m - i) : DEC_ROWS;
        const float *pj = p + i * ldp + j;
        float *ci = c + i * ldc;
        const uintptr_t *aj = i == 0 ? ahead : NULL; /* the first rows' pass prefetches */
        int64_t d = 0;
        if (pairs)
          for (; d + DEC_VECS * VW <= dv; d += DEC_VECS * VW)
            DEC_STEP(DEC_VECS, true, true, VW)
        else
          for (; d + DEC_VECS * VW <= dv; d += DEC_VECS * VW)
            DEC_STEP(DEC_VECS, true, false, VW)
        for (; d < dv; d += VW)
          DEC_STEP(1, false, false, dv - d)
      }
    }
  }
#ifdef V_BF16_PAIRS
  for (int64_t i = 0; i < m && pairs; i++)
    for (int64_t d = 0; d < dealt; d += 32)
      v_undeal32(c + i * ldc + d);
#endif
#undef DEC_STEP
  /* The last keys, and every key when zero weights are skipped: the same
   * FMA chain per element, one key at a time. */
  for (; j < n; j++) {
    uintptr_t ahead = dec_ahead(&st, j);
    for (int64_t d = 0; d < dv; d += VW) {
      int64_t left = dv - d;
      if (dec_line_start(d, size))
        __builtin_prefetch((const void *)(ahead + (size_t)d * size), 0, 2);
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
