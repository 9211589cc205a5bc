/* SDPA's tile products (src/simd/gemm_body.h) of every kernel set this CPU
 * can run that has them, called directly (the shared library hides them,
 * so this suite links the kernel objects, as test_exp does), against the
 * float64 reference (gemm_tn from A stored transposed): every row count around the micro-kernel heights (6,
 * 12), column counts around the panel widths (16, 32), depths across the
 * packing slice (256), leading dimensions larger than the rows, and C's
 * bytes outside the product left alone. The public path is test_sdpa, which
 * ctest also runs with each kernel set forced. */
#include "test_util.h"

#include "kernel_sets.h"
#include "ref_gemm.h"

/* Sets with products (the others leave them to BLAS: NULL both). */
#define FOR_EACH_GEMM_SET(k) TU_FOR_EACH_SET(k, k->gemm_nt != NULL)

#define SENTINEL 12345.0f

static float *floats(size_t n) {
  float *p = malloc((n ? n : 1) * sizeof(float));
  assert_non_null(p);
  return p;
}

/* One product of each kind at (m, n, k) with padded leading dimensions. */
static void check_shape(const attn_kernels *kern, int64_t m, int64_t n, int64_t k, uint64_t seed) {
  tu_rng rng = {seed};
  int64_t lda = k + 3, ldc = n + 2;
  int64_t ldb_t = k + 5, ldb_n = n + 7;
  /* Exact sizes: the last row ends the buffer (ASan sees an over-read). */
  size_t na = (size_t)((m - 1) * lda + k), nbt = (size_t)((n - 1) * ldb_t + k);
  size_t nbn = (size_t)((k - 1) * ldb_n + n), nc = (size_t)(m * ldc);
  float *a = floats(na), *bt = floats(nbt), *bn = floats(nbn), *c = floats(nc);
  float *c0 = floats(nc);
  double *want = malloc((size_t)(m * n) * sizeof(double));
  double *mag = malloc((size_t)(m * n) * sizeof(double));
  assert_non_null(want);
  assert_non_null(mag);
  tu_fill(&rng, a, na, -1, 1);
  tu_fill(&rng, bt, nbt, -1, 1);
  tu_fill(&rng, bn, nbn, -1, 1);
  /* Bound for a k-term FMA chain, plus one rounding each for alpha and the
   * final add. */
  double u = 0x1p-24, bound = (double)(k + 2) * u;

  /* gemm_nt: C is not read (NaN there must not leak), padding untouched. */
  for (size_t i = 0; i < nc; i++)
    c[i] = (int64_t)(i % (size_t)ldc) < n ? NAN : SENTINEL;
  kern->gemm_nt(m, n, k, 0.375f, a, lda, bt, ldb_t, c, ldc);
  ref_gemm(m, n, k, 0.375, a, lda, bt, ldb_t, 1, want, mag);
  for (int64_t i = 0; i < m; i++)
    for (int64_t j = 0; j < ldc; j++) {
      float got = c[i * ldc + j];
      if (j >= n) {
        if (got != SENTINEL)
          fail_msg("%s gemm_nt %lldx%lldx%lld wrote c[%lld][%lld] past n", kern->name,
                   (long long)m, (long long)n, (long long)k, (long long)i, (long long)j);
        continue;
      }
      double w = want[i * n + j], err = fabs((double)got - w);
      if (!(err <= bound * mag[i * n + j] + 1e-30))
        fail_msg("%s gemm_nt %lldx%lldx%lld c[%lld][%lld] = %.9g, want %.9g (bound %.3g)",
                 kern->name, (long long)m, (long long)n, (long long)k, (long long)i,
                 (long long)j, (double)got, w, bound * mag[i * n + j]);
    }

  /* gemm_nn: C += A B; gemm_tn: the same from A stored transposed. */
  tu_fill(&rng, c0, nc, -1, 1);
  for (size_t i = 0; i < nc; i++)
    if ((int64_t)(i % (size_t)ldc) >= n)
      c0[i] = SENTINEL;
  ref_gemm(m, n, k, 1.0, a, lda, bn, ldb_n, 0, want, mag);
  int64_t ldat = m + 4;
  size_t nat = (size_t)((k - 1) * ldat + m);
  float *at = floats(nat);
  for (int64_t i = 0; i < m; i++)
    for (int64_t kk = 0; kk < k; kk++)
      at[kk * ldat + i] = a[i * lda + kk];
  for (int tn = 0; tn < 2; tn++) {
    const char *what = tn ? "gemm_tn" : "gemm_nn";
    memcpy(c, c0, nc * sizeof(float));
    if (tn)
      kern->gemm_tn(m, n, k, at, ldat, bn, ldb_n, c, ldc);
    else
      kern->gemm_nn(m, n, k, a, lda, bn, ldb_n, c, ldc);
    for (int64_t i = 0; i < m; i++)
      for (int64_t j = 0; j < ldc; j++) {
        float got = c[i * ldc + j];
        if (j >= n) {
          if (got != SENTINEL)
            fail_msg("%s %s %lldx%lldx%lld wrote c[%lld][%lld] past n", kern->name, what,
                     (long long)m, (long long)n, (long long)k, (long long)i, (long long)j);
          continue;
        }
        double c_in = c0[i * ldc + j];
        double w = c_in + want[i * n + j], err = fabs((double)got - w);
        /* gemm_tn adds its slices of GEMM_TK (128) into c: a rounding more each */
        double b = (bound + (double)(tn * (k / 128)) * u) * (mag[i * n + j] + fabs(c_in));
        if (!(err <= b + 1e-30))
          fail_msg("%s %s %lldx%lldx%lld c[%lld][%lld] = %.9g, want %.9g (bound %.3g)",
                   kern->name, what, (long long)m, (long long)n, (long long)k, (long long)i,
                   (long long)j, (double)got, w, b);
      }
  }
  free(at);
  free(a);
  free(bt);
  free(bn);
  free(c);
  free(c0);
  free(want);
  free(mag);
}

static void shapes_around_blocks(void **state) {
  (void)state;
  static const int64_t ms[] = {1, 2, 5, 6, 7, 11, 12, 13, 25, 37};
  static const int64_t ns[] = {1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 65};
  /* k = 40: two 16-deep blocks of gemm_nt's register transpose (avx512)
   * and 8 depths packed one by one; 257: a full 256-deep slice, then 1. */
  static const int64_t ks[] = {1, 5, 40, 64, 257};
  uint64_t seed = 1;
  FOR_EACH_GEMM_SET(kern) {
    for (size_t a = 0; a < sizeof ms / sizeof *ms; a++)
      for (size_t b = 0; b < sizeof ns / sizeof *ns; b++)
        for (size_t c = 0; c < sizeof ks / sizeof *ks; c++)
          check_shape(kern, ms[a], ns[b], ks[c], seed++);
  }
}

/* SDPA's tiles (128 rows x 256 keys at D = 64, 128) and deep products that
 * take several packed slices. */
static void attention_tiles(void **state) {
  (void)state;
  FOR_EACH_GEMM_SET(kern) {
    check_shape(kern, 128, 256, 64, 101);
    check_shape(kern, 128, 256, 128, 102);
    check_shape(kern, 128, 128, 256, 103);
    check_shape(kern, 40, 100, 600, 104);
    check_shape(kern, 3, 4, 513, 105);
  }
}

/* The products do what a BLAS does with inf and NaN: 0 * inf is NaN (SDPA
 * relies on it to know when to skip hidden keys by hand). */
static void ieee_products(void **state) {
  (void)state;
  FOR_EACH_GEMM_SET(kern) {
    float a[2 * 3] = {0, 1, 2, 3, 4, 5};
    float b[3 * 2] = {INFINITY, 1, 1, 1, 1, 1}; /* nn: b[3][2]; nt: b[2][3] */
    float c[2 * 2] = {0, 0, 0, 0};
    kern->gemm_nn(2, 2, 3, a, 3, b, 2, c, 2);
    assert_true(isnan(c[0]));                    /* 0 * inf + ... */
    assert_true(c[2] == INFINITY);               /* 3 * inf + ... */
    assert_true(c[1] == 3.0f && c[3] == 12.0f); /* finite column */
    kern->gemm_nt(2, 2, 3, 1.0f, a, 3, b, 3, c, 2);
    assert_true(isnan(c[0]) && c[2] == INFINITY);
    assert_true(c[1] == 3.0f && c[3] == 12.0f);
    float at[3 * 2] = {0, 3, 1, 4, 2, 5}; /* a transposed: [3][2] */
    memset(c, 0, sizeof c);
    kern->gemm_tn(2, 2, 3, at, 2, b, 2, c, 2);
    assert_true(isnan(c[0]) && c[2] == INFINITY);
    assert_true(c[1] == 3.0f && c[3] == 12.0f);
  }
}

/* A result depends on the operands only: the same product from operands at
 * other addresses (alignment) is bit-identical. */
static void same_bits_at_any_alignment(void **state) {
  (void)state;
  const int64_t m = 29, n = 45, k = 70;
  FOR_EACH_GEMM_SET(kern) {
    tu_rng rng = {7};
    float *a = floats((size_t)(m * k + 8)), *b = floats((size_t)(n * k + 8));
    float *c1 = floats((size_t)(m * n)), *c2 = floats((size_t)(m * n + 8));
    tu_fill(&rng, a, (size_t)(m * k + 8), -1, 1);
    tu_fill(&rng, b, (size_t)(n * k + 8), -1, 1);
    for (int shift = 1; shift < 8; shift += 3) {
      memmove(a + shift, a, (size_t)(m * k) * sizeof(float));
      memmove(b + shift, b, (size_t)(n * k) * sizeof(float));
      kern->gemm_nt(m, n, k, 0.5f, a + shift, k, b + shift, k, c2 + shift, n);
      memmove(a, a + shift, (size_t)(m * k) * sizeof(float));
      memmove(b, b + shift, (size_t)(n * k) * sizeof(float));
      kern->gemm_nt(m, n, k, 0.5f, a, k, b, k, c1, n);
      assert_memory_equal(c1, c2 + shift, (size_t)(m * n) * sizeof(float));
    }
    free(a);
    free(b);
    free(c1);
    free(c2);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(shapes_around_blocks),
      cmocka_unit_test(attention_tiles),
      cmocka_unit_test(ieee_products),
      cmocka_unit_test(same_bits_at_any_alignment),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
