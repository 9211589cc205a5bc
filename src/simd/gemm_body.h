/* The tile products of SDPA (and of its backward), written once over the vector vocabulary of
 * rows_body.h (v_set1 v_load v_store v_load_part v_store_part v_add v_mul
 * v_fma) and included after it by the ISA files that have FMA, with
 * GEMM_MR defined: the rows of C a micro-kernel keeps in registers
 * (2 * GEMM_MR accumulators of VW floats each, plus 3 vectors, must fit in
 * the register file).
 *
 * Why libattn has them instead of calling cblas_sgemm: the tiles are small
 * (128 x 256 x D), and a BLAS then costs what libattn cannot control: a
 * multi-threaded one splits every small product over its own threads while
 * libattn's workers wait, and a DYNAMIC_ARCH OpenBLAS that does not know the
 * CPU runs its oldest kernels (OpenBLAS 0.3.21 on a CPU newer than it: SSE3
 * "Prescott", a quarter of the AVX-512 rate). These kernels reach the rate
 * of a well-chosen BLAS on these shapes (bench/RESULTS.md).
 *
 * The order of every sum is fixed (k ascending, one FMA chain per element or,
 * for gemm_nt's few-row path, per lane), so a result depends only on the
 * operands and the shape: never on threads or alignment.
 * IEEE semantics as a BLAS: 0 * inf and 0 * NaN give NaN. */

#include <stdbool.h>

#define GEMM_NR (2 * VW) /* columns of C per micro-kernel: two vectors */
/* An ISA file may define GEMM_PACK_T (a divisor of GEMM_NR) and
 * gemm_pack_t(b, ldb, t, ldt): t[kk * ldt + j] = b[j * ldb + kk] for j, kk
 * below GEMM_PACK_T, a square block transposed in registers. */
#define GEMM_KC 256      /* depth of one packed panel of B^T (on the stack) */

/* The first n (1..VW) lanes at p; the others 0, not read. */
static inline vf gemm_load_n(const float *p, int64_t n) {
  return n >= VW ? v_load(p) : v_load_part(p, n, 0.0f);
}

/* C[0..mr, 0..nr) (=, or += when acc) alpha * sum over kk < k of
 * A[i, kk] B[kk, 0..nr), A rows lda apart, B rows ldb apart. full: nr is
 * GEMM_NR (every load and store whole). */
static inline __attribute__((always_inline)) void gemm_micro(int mr, bool full, int64_t nr,
                                                             int64_t k, const float *a,
                                                             int64_t lda, const float *b,
                                                             int64_t ldb, float alpha, bool acc,
                                                             float *c, int64_t ldc) {
  vf c0[GEMM_MR], c1[GEMM_MR];
#pragma GCC unroll 16
  for (int i = 0; i < mr; i++) {
    c0[i] = v_set1(0.0f);
    c1[i] = v_set1(0.0f);
  }
  for (int64_t kk = 0; kk < k; kk++) {
    const float *bk = b + kk * ldb;
    vf b0 = full ? v_load(bk) : gemm_load_n(bk, nr);
    vf b1 = full ? v_load(bk + VW) : nr > VW ? gemm_load_n(bk + VW, nr - VW) : v_set1(0.0f);
#pragma GCC unroll 16
    for (int i = 0; i < mr; i++) {
      vf av = v_set1(a[i * lda + kk]);
      c0[i] = v_fma(av, b0, c0[i]);
      c1[i] = v_fma(av, b1, c1[i]);
    }
  }
  vf al = v_set1(alpha);
#pragma GCC unroll 16
  for (int i = 0; i < mr; i++) {
    float *ci = c + i * ldc;
    vf r0 = v_mul(c0[i], al), r1 = v_mul(c1[i], al);
    if (full) {
      v_store(ci, acc ? v_add(v_load(ci), r0) : r0);
      v_store(ci + VW, acc ? v_add(v_load(ci + VW), r1) : r1);
      continue;
    }
    int64_t n0 = nr < VW ? nr : VW;
    v_store_part(ci, n0, acc ? v_add(gemm_load_n(ci, n0), r0) : r0);
    if (nr > VW)
      v_store_part(ci + VW, nr - VW, acc ? v_add(gemm_load_n(ci + VW, nr - VW), r1) : r1);
  }
}

/* One column panel (nr <= GEMM_NR columns) of C over all m rows. */
static void gemm_panel(int64_t m, int64_t nr, int64_t k, const float *a, int64_t lda,
                       const float *b, int64_t ldb, float alpha, bool acc, float *c,
                       int64_t ldc) {
  int64_t i = 0;
  if (nr == GEMM_NR) {
    for (; i + GEMM_MR <= m; i += GEMM_MR)
      gemm_micro(GEMM_MR, true, nr, k, a + i * lda, lda, b, ldb, alpha, acc, c + i * ldc, ldc);
  } else {
    for (; i + GEMM_MR <= m; i += GEMM_MR)
      gemm_micro(GEMM_MR, false, nr, k, a + i * lda, lda, b, ldb, alpha, acc, c + i * ldc,
                 ldc);
  }
  if (i == m)
    return;
  /* The last rows: one call with the remaining count as a constant. */
  a += i * lda;
  c += i * ldc;
  switch (m - i) {
#define GEMM_TAIL(R)                                                                          \
  case R:                                                                                     \
    if (nr == GEMM_NR)                                                                        \
      gemm_micro(R, true, nr, k, a, lda, b, ldb, alpha, acc, c, ldc);                         \
    else                                                                                      \
      gemm_micro(R, false, nr, k, a, lda, b, ldb, alpha, acc, c, ldc);                        \
    break;
    GEMM_TAIL(1)
    GEMM_TAIL(2)
    GEMM_TAIL(3)
    GEMM_TAIL(4)
    GEMM_TAIL(5)
#if GEMM_MR > 6
    GEMM_TAIL(6)
    GEMM_TAIL(7)
    GEMM_TAIL(8)
    GEMM_TAIL(9)
    GEMM_TAIL(10)
    GEMM_TAIL(11)
#endif
#undef GEMM_TAIL
  default:
    break;
  }
}

/* Rows of c that gemm_nt computes as dot products rather than through a
 * packed panel: below this, packing b^T costs more than the products (a
 * decode step has only its G query rows per head). */
#define GEMM_DOT_MAX_ROWS 8
#define GEMM_DOT_ROWS 4 /* rows per pass over b */

/* c[0..mr, j] = alpha a[i] . b[j] for every j < n: each dot product summed
 * in VW lanes (k ascending), then across the lanes by v_hsum; the order is
 * fixed by k alone. */
static inline __attribute__((always_inline)) void gemm_dot(int mr, int64_t n, int64_t k,
                                                           float alpha, const float *a,
                                                           int64_t lda, const float *b,
                                                           int64_t ldb, float *c, int64_t ldc) {
  int64_t tail = k % VW;
  for (int64_t j = 0; j < n; j++) {
    const float *bj = b + j * ldb;
    vf s[GEMM_DOT_ROWS];
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++)
      s[i] = v_set1(0.0f);
    for (int64_t kk = 0; kk < k - tail; kk += VW) {
      vf bv = v_load(bj + kk);
#pragma GCC unroll 4
      for (int i = 0; i < mr; i++)
        s[i] = v_fma(v_load(a + i * lda + kk), bv, s[i]);
    }
    if (tail) {
      vf bv = gemm_load_n(bj + k - tail, tail);
#pragma GCC unroll 4
      for (int i = 0; i < mr; i++)
        s[i] = v_fma(gemm_load_n(a + i * lda + k - tail, tail), bv, s[i]);
    }
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++)
      c[i * ldc + j] = alpha * v_hsum(s[i]);
  }
}

static void gemm_nt_dot(int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                        int64_t lda, const float *b, int64_t ldb, float *c, int64_t ldc) {
  for (int64_t i = 0; i < m; i += GEMM_DOT_ROWS) {
    const float *ai = a + i * lda;
    float *ci = c + i * ldc;
    switch (m - i < GEMM_DOT_ROWS ? m - i : GEMM_DOT_ROWS) {
    case 1: gemm_dot(1, n, k, alpha, ai, lda, b, ldb, ci, ldc); break;
    case 2: gemm_dot(2, n, k, alpha, ai, lda, b, ldb, ci, ldc); break;
    case 3: gemm_dot(3, n, k, alpha, ai, lda, b, ldb, ci, ldc); break;
    default: gemm_dot(4, n, k, alpha, ai, lda, b, ldb, ci, ldc); break;
    }
  }
}

/* c[m, n] = alpha a[m, k] b[n, k]^T. Each panel of GEMM_NR rows of b is
 * copied transposed (kk-major, zero-padded to GEMM_NR columns) to the stack,
 * GEMM_KC deep at a time; deeper products add the later slices into c. */
static void gemm_nt(int64_t m, int64_t n, int64_t k, float alpha, const float *a, int64_t lda,
                    const float *b, int64_t ldb, float *c, int64_t ldc) {
  if (m <= GEMM_DOT_MAX_ROWS) {
    gemm_nt_dot(m, n, k, alpha, a, lda, b, ldb, c, ldc);
    return;
  }
  float bt[GEMM_KC * GEMM_NR] __attribute__((aligned(64)));
  for (int64_t j0 = 0; j0 < n; j0 += GEMM_NR) {
    int64_t nr = n - j0 < GEMM_NR ? n - j0 : GEMM_NR;
    int64_t k0 = 0;
    do {
      int64_t kc = k - k0 < GEMM_KC ? k - k0 : GEMM_KC;
      int64_t kk0 = 0; /* depths packed by blocks */
#ifdef GEMM_PACK_T
      /* Whole panels in square blocks through the registers: one element
       * at a time, the copy cost a fifth of the product at 128 rows. */
      if (nr == GEMM_NR)
        for (; kk0 + GEMM_PACK_T <= kc; kk0 += GEMM_PACK_T)
          for (int64_t jb = 0; jb < GEMM_NR; jb += GEMM_PACK_T)
            gemm_pack_t(b + (j0 + jb) * ldb + k0 + kk0, ldb, bt + kk0 * GEMM_NR + jb, GEMM_NR);
#endif
      for (int64_t jj = 0; jj < GEMM_NR; jj++) {
        if (jj < nr) {
          const float *row = b + (j0 + jj) * ldb + k0;
          for (int64_t kk = kk0; kk < kc; kk++)
            bt[kk * GEMM_NR + jj] = row[kk];
        } else {
          for (int64_t kk = kk0; kk < kc; kk++)
            bt[kk * GEMM_NR + jj] = 0.0f;
        }
      }
      gemm_panel(m, nr, kc, a + k0, lda, bt, GEMM_NR, alpha, k0 > 0, c + j0, ldc);
      k0 += kc;
    } while (k0 < k);
  }
}

/* c[m, n] += a[m, k] b[k, n]. */
static void gemm_nn_acc(int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
                        const float *b, int64_t ldb, float *c, int64_t ldc) {
  for (int64_t j0 = 0; j0 < n; j0 += GEMM_NR)
    gemm_panel(m, n - j0 < GEMM_NR ? n - j0 : GEMM_NR, k, a, lda, b + j0, ldb, 1.0f, true,
               c + j0, ldc);
}

/* c[m, n] += a[k, m]^T b[k, n]. Blocks of GEMM_TM rows of a^T, GEMM_TK
 * deep, are copied to the stack (row-major) and multiplied as gemm_nn_acc;
 * deeper products add the later slices into c. The copy costs k * m moves
 * against k * m * n FMAs. */
#define GEMM_TM (4 * GEMM_MR)
#define GEMM_TK 128
static void gemm_tn_acc(int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
                        const float *b, int64_t ldb, float *c, int64_t ldc) {
  float at[GEMM_TM * GEMM_TK] __attribute__((aligned(64)));
  for (int64_t i0 = 0; i0 < m; i0 += GEMM_TM) {
    int64_t mr = m - i0 < GEMM_TM ? m - i0 : GEMM_TM;
    for (int64_t k0 = 0; k0 < k; k0 += GEMM_TK) {
      int64_t kc = k - k0 < GEMM_TK ? k - k0 : GEMM_TK;
      for (int64_t kk = 0; kk < kc; kk++) {
        const float *row = a + (k0 + kk) * lda + i0;
        for (int64_t i = 0; i < mr; i++)
          at[i * kc + kk] = row[i];
      }
      gemm_nn_acc(mr, n, kc, at, kc, b + k0 * ldb, ldb, c + i0 * ldc, ldc);
    }
  }
}
