/* The layers' linear maps (src/gemm.h, internal: this suite links the
 * library's objects, tests/CMakeLists.txt) against the float64 reference:
 * every (m, n, k) in {1, 3, 17, 63, 64, 65, 257, 1000}^3 up to a size
 * budget and a few with more than 1024 columns, with and without bias,
 * leading dimensions larger than the rows, C's padding left alone, one
 * weight or three stacked (the decoder's q, k, v), and contexts of 1 to 4
 * threads giving the same bits, with the weights packed per call or
 * beforehand (as a layer packs its owned weights: each element written
 * where attn__gemm_packed_at says, the rest zero): the same bits
 * either way too, except up to 8 rows, where unpacked weights take dot
 * products and packed ones their panels. ctest runs the
 * suite with each kernel set forced (sse2: the cblas_sgemm path). */
#include "test_util.h"

#include "gemm.h"
#include "ref_gemm.h"

#define SENTINEL 12345.0f
#define MAX_THREADS 4

static const int64_t dims[] = {1, 3, 17, 63, 64, 65, 257, 1000};
#define N_DIMS (int)(sizeof dims / sizeof dims[0])

static float *floats(size_t n) {
  float *p = malloc((n ? n : 1) * sizeof(float));
  assert_non_null(p);
  return p;
}

/* c = a w^T + bias on ctx (parts: n split into n_parts weights of w's
 * rows, each with its own bias slice); prepack: each part packed first, as
 * a layer packs its owned weights (zeros, then every element written at
 * attn__gemm_packed_at). */
static void run(attn_ctx *ctx, int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
                const float *w, int64_t ldw, const float *bias, int n_parts, float *c,
                int64_t ldc, bool prepack) {
  attn_gemm_problem p;
  memset(&p, 0, sizeof p);
  p.m = m, p.k = k, p.a = a, p.lda = lda, p.c = c, p.ldc = ldc, p.n_parts = n_parts;
  int64_t j = 0;
  for (int i = 0; i < n_parts; i++) {
    int64_t nj = i == n_parts - 1 ? n - j : n / n_parts;
    /* the middle part has no bias: a mix of both */
    p.part[i] = (attn_gemm_part){w + j * ldw, ldw, nj, bias && i != 1 ? bias + j : NULL, NULL};
    j += nj;
  }
  float *packed[ATTN_GEMM_MAX_PARTS] = {NULL};
  for (int i = 0; prepack && i < n_parts; i++) {
    const attn_gemm_part *pt = &p.part[i];
    size_t nf = attn__gemm_packed_floats(pt->n, k);
    packed[i] = floats(nf);
    memset(packed[i], 0, nf * sizeof(float));
    for (int64_t r = 0; r < pt->n; r++)
      for (int64_t kk = 0; kk <= k; kk++) {
        size_t at = attn__gemm_packed_at(pt->n, k, r, kk);
        if (at >= nf)
          fail_msg("n %lld k %lld: attn__gemm_packed_at(%lld, %lld) = %zu is past the %zu "
                   "packed floats", (long long)pt->n, (long long)k, (long long)r,
                   (long long)kk, at, nf);
        packed[i][at] = kk < k ? pt->w[r * ldw + kk] : pt->bias ? pt->bias[r] : 0.0f;
      }
    p.part[i].packed = packed[i];
  }
  attn__gemm_plan(ctx, &p);
  assert_ok(attn__ws_reserve(ctx, p.ws_bytes));
  attn__gemm_run(ctx, &p);
  assert_int_equal(attn__ws_mark(ctx), 0); /* its slices given back */
  for (int i = 0; i < n_parts; i++)
    free(packed[i]);
}

static void check_shape(attn_ctx **ctxs, int64_t m, int64_t n, int64_t k, bool with_bias,
                        int n_parts, uint64_t seed) {
  tu_rng rng = {seed};
  int64_t lda = k + 3, ldw = k + 5, ldc = n + 2;
  /* Exact sizes: the last row ends the buffer (ASan sees an over-read). */
  size_t na = (size_t)((m - 1) * lda + k), nw = (size_t)((n - 1) * ldw + k);
  size_t nc = (size_t)(m * ldc);
  float *a = floats(na), *w = floats(nw), *bias = floats((size_t)n), *c = floats(nc);
  float *cref[2] = {floats(nc), floats(nc)}; /* 1 thread: per call, packed beforehand */
  double *want = malloc((size_t)(m * n) * sizeof(double));
  double *mag = malloc((size_t)(m * n) * sizeof(double));
  assert_non_null(want);
  assert_non_null(mag);
  tu_fill(&rng, a, na, -1, 1);
  tu_fill(&rng, w, nw, -1, 1);
  tu_fill(&rng, bias, (size_t)n, -4, 4);
  ref_gemm(m, n, k, 1.0, a, lda, w, ldw, 1, want, mag);
  /* k roundings of the products' chain, one per slice of 256 added and one
   * for the bias (either order). */
  double u = 0x1p-24, bound = (double)(k + k / 256 + 3) * u;
  for (int t = 1; t <= MAX_THREADS; t++) {
    for (size_t i = 0; i < nc; i++)
      c[i] = (int64_t)(i % (size_t)ldc) < n ? NAN : SENTINEL; /* C is not read */
    /* t = 1 and 3: weights packed per call; 2 and 4: packed beforehand. */
    run(ctxs[t - 1], m, n, k, a, lda, w, ldw, with_bias ? bias : NULL, n_parts, c, ldc,
        t % 2 == 0);
    if (t > 2) {
      if (memcmp(c, cref[t % 2 == 0], nc * sizeof(float)))
        fail_msg("%lldx%lldx%lld bias %d parts %d: %d threads%s differ from 1 thread",
                 (long long)m, (long long)n, (long long)k, with_bias, n_parts, t,
                 t % 2 ? "" : " (weights packed beforehand)");
      continue;
    }
    memcpy(cref[t - 1], c, nc * sizeof(float));
    if (t == 2 && (m > 8 || !attn__gemm_packs()) && memcmp(c, cref[0], nc * sizeof(float)))
      fail_msg("%lldx%lldx%lld bias %d parts %d: weights packed beforehand differ from "
               "packed per call", (long long)m, (long long)n, (long long)k, with_bias, n_parts);
    int64_t part_n = n / n_parts;
    for (int64_t i = 0; i < m; i++)
      for (int64_t j = 0; j < ldc; j++) {
        float got = c[i * ldc + j];
        if (j >= n) {
          if (got != SENTINEL)
            fail_msg("%lldx%lldx%lld wrote c[%lld][%lld] past n", (long long)m, (long long)n,
                     (long long)k, (long long)i, (long long)j);
          continue;
        }
        bool biased = with_bias && !(n_parts > 1 && j >= part_n && j < 2 * part_n);
        double b = biased ? bias[j] : 0.0;
        double want_ij = want[i * n + j] + b, err = fabs((double)got - want_ij);
        double tol = bound * (mag[i * n + j] + fabs(b));
        if (!(err <= tol + 1e-30))
          fail_msg("%lldx%lldx%lld bias %d parts %d: c[%lld][%lld] = %.9g, want %.9g "
                   "(bound %.3g)",
                   (long long)m, (long long)n, (long long)k, with_bias, n_parts, (long long)i,
                   (long long)j, (double)got, want_ij, tol);
      }
  }
  free(a);
  free(w);
  free(bias);
  free(c);
  free(cref[0]);
  free(cref[1]);
  free(want);
  free(mag);
}

static void all_shapes(void **state) {
  (void)state;
  attn_ctx *ctxs[MAX_THREADS];
  for (int t = 0; t < MAX_THREADS; t++)
    ctxs[t] = tu_ctx(t + 1);
  uint64_t seed = 1;
  /* A budget of multiply-adds per shape keeps the suite quick (and usable
   * under the sanitizers); the largest shapes pass it with one small dim.
   * ATTN_TEST_LINEAR_BUDGET lowers it (valgrind: tests/CMakeLists.txt). */
  double budget = 6e6;
  const char *env = getenv("ATTN_TEST_LINEAR_BUDGET");
  if (env && atof(env) > 0)
    budget = atof(env);
  for (int im = 0; im < N_DIMS; im++)
    for (int in = 0; in < N_DIMS; in++)
      for (int ik = 0; ik < N_DIMS; ik++) {
        int64_t m = dims[im], n = dims[in], k = dims[ik];
        if ((double)m * (double)n * (double)k > budget)
          continue;
        check_shape(ctxs, m, n, k, (im + in + ik) % 2 == 0, 1, seed++);
        check_shape(ctxs, m, n, k, (im + in + ik) % 2 == 1, 1, seed++);
        if (n >= 3)
          check_shape(ctxs, m, n, k, true, 3, seed++);
      }
  /* More columns than gemm.c packs at once (1024), the few-row path too. */
  check_shape(ctxs, 65, 2100, 63, true, 3, seed++);
  check_shape(ctxs, 17, 1030, 257, false, 1, seed++);
  check_shape(ctxs, 3, 1500, 65, true, 3, seed++);
  for (int t = 0; t < MAX_THREADS; t++)
    attn_ctx_destroy(ctxs[t]);
}

/* Nothing to sum: C = bias (or 0), and an empty C is not touched. */
static void empty_dims(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(2);
  float a[1] = {0}, w[1] = {0}, bias[40], c[12 * 40];
  for (int j = 0; j < 40; j++)
    bias[j] = (float)j - 7.5f;
  for (int64_t m = 1; m <= 12; m += 11) {
    for (int i = 0; i < 12 * 40; i++)
      c[i] = NAN;
    run(ctx, m, 40, 0, a, 1, w, 1, bias, 1, c, 40, m > 1);
    for (int64_t i = 0; i < m; i++)
      for (int j = 0; j < 40; j++)
        assert_true(c[i * 40 + j] == bias[j]);
    run(ctx, m, 40, 0, a, 1, w, 1, NULL, 1, c, 40, m > 1);
    for (int64_t i = 0; i < m; i++)
      for (int j = 0; j < 40; j++)
        assert_true(c[i * 40 + j] == 0.0f);
  }
  c[0] = SENTINEL;
  run(ctx, 0, 40, 5, a, 5, w, 5, bias, 1, c, 40, false);
  run(ctx, 3, 0, 5, a, 5, w, 5, NULL, 1, c, 1, false);
  assert_true(c[0] == SENTINEL);
  attn_ctx_destroy(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(all_shapes),
      cmocka_unit_test(empty_dims),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
