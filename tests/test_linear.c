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
 * products and packed ones their panels; parts written into heads of
 * their own rows (a KV cache's layout) hold the bits of the same product
 * into C. ctest runs the
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

static void run_problem(attn_ctx *ctx, attn_gemm_problem *pp, bool prepack);

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
    p.part[i] = (attn_gemm_part){
        .w = w + j * ldw, .ldw = ldw, .n = nj, .bias = bias && i != 1 ? bias + j : NULL};
    j += nj;
  }
  run_problem(ctx, &p, prepack);
}

/* Plan and run p on ctx, its parts packed first when prepack. */
static void run_problem(attn_ctx *ctx, attn_gemm_problem *pp, bool prepack) {
  attn_gemm_problem p = *pp;
  int64_t k = p.k;
  float *packed[ATTN_GEMM_MAX_PARTS] = {NULL};
  for (int i = 0; prepack && i < p.n_parts; i++) {
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
        packed[i][at] = kk < k ? pt->w[r * pt->ldw + kk] : pt->bias ? pt->bias[r] : 0.0f;
      }
    p.part[i].packed = packed[i];
  }
  attn__gemm_plan(ctx, &p);
  assert_ok(attn__ws_reserve(ctx, p.ws_bytes));
  attn__gemm_run(ctx, &p);
  assert_int_equal(attn__ws_mark(ctx), 0); /* its slices given back */
  for (int i = 0; i < p.n_parts; i++)
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

/* Three parts [nq | nkv | nkv] (a decoder's q, k, v), the last two with
 * out: their columns in heads of `head` columns, each head in rows of its
 * own (rows ldo apart, heads hs apart, as a KV cache). Every element has
 * the bits the same product writes into C (on 1 thread, with the weights
 * packed the same way), on 1 to 4 threads, and nothing else is written.
 * Without tile kernels (cblas_sgemm, a call per head) within the rounding
 * bound of the sums instead: the BLAS may sum a narrower product in
 * another order. */
static void check_heads(attn_ctx **ctxs, int64_t m, int64_t nq, int64_t nkv, int64_t k,
                        int64_t head, uint64_t seed) {
  tu_rng rng = {seed};
  int64_t n = nq + 2 * nkv, ldo = head + 3, hs = (m + 2) * ldo, heads = (nkv + head - 1) / head;
  size_t nout = (size_t)(heads * hs);
  float *a = floats((size_t)(m * k)), *w = floats((size_t)(n * k)), *bias = floats((size_t)n);
  float *crefs[2] = {floats((size_t)(m * n)), floats((size_t)(m * n))}; /* per call, packed */
  float *cq = floats((size_t)(m * nq));
  float *out[2] = {floats(nout), floats(nout)};
  tu_fill(&rng, a, (size_t)(m * k), -1, 1);
  tu_fill(&rng, w, (size_t)(n * k), -1, 1);
  tu_fill(&rng, bias, (size_t)n, -4, 4);
  double *want_ref = malloc((size_t)(m * n) * sizeof(double));
  double *mag = malloc((size_t)(m * n) * sizeof(double));
  assert_non_null(want_ref);
  assert_non_null(mag);
  ref_gemm(m, n, k, 1.0, a, k, w, k, 1, want_ref, mag);
  double bound = (double)(k + 3) * 0x1p-24;
  const int64_t part_n[3] = {nq, nkv, nkv};
  for (int t = 1; t <= MAX_THREADS; t++) {
    bool prepack = t % 2 == 0;
    float *cref = crefs[prepack];
    attn_gemm_problem p;
    memset(&p, 0, sizeof p);
    p.m = m, p.k = k, p.a = a, p.lda = k, p.n_parts = 3;
    for (int i = 0, j = 0; i < 3; j += (int)part_n[i++])
      p.part[i] = (attn_gemm_part){.w = w + j * k, .ldw = k, .n = part_n[i], .bias = bias + j};
    if (t <= 2) { /* the reference: everything in C, on 1 thread */
      p.c = cref, p.ldc = n;
      run_problem(ctxs[0], &p, prepack);
    }
    p.c = cq, p.ldc = nq;
    for (int i = 1; i < 3; i++) {
      for (size_t f = 0; f < nout; f++)
        out[i - 1][f] = SENTINEL;
      p.part[i].out = out[i - 1], p.part[i].ldo = ldo, p.part[i].head = head;
      p.part[i].head_stride = hs;
    }
    run_problem(ctxs[t - 1], &p, prepack);
    for (int64_t r = 0; r < m; r++)
      for (int64_t j = 0; j < nq; j++)
        if (memcmp(&cq[r * nq + j], &cref[r * n + j], sizeof(float)))
          fail_msg("m %lld head %lld, %d threads: q[%lld][%lld] differs", (long long)m,
                   (long long)head, t, (long long)r, (long long)j);
    for (int i = 1; i < 3; i++)
      for (int64_t h = 0; h < heads; h++)
        for (int64_t r = 0; r < m + 2; r++)
          for (int64_t d = 0; d < ldo; d++) {
            int64_t j = h * head + d;
            float got = out[i - 1][h * hs + r * ldo + d];
            bool mine = r < m && d < head && j < nkv;
            int64_t e = r * n + nq + (i - 1) * nkv + j;
            float want = mine ? cref[e] : SENTINEL;
            bool close = mine && !attn__gemm_packs() && /* e is in C only when mine */
                         fabs((double)got - (double)want) <=
                             2 * bound * (mag[e] + fabs(bias[e % n]));
            if (memcmp(&got, &want, sizeof got) && !close)
              fail_msg("m %lld head %lld, %d threads%s: part %d head %lld row %lld col %lld "
                       "= %.9g, want %.9g", (long long)m, (long long)head, t,
                       prepack ? " (packed)" : "", i, (long long)h, (long long)r, (long long)d,
                       (double)got, (double)want);
          }
  }
  free(a);
  free(w);
  free(bias);
  free(want_ref);
  free(mag);
  free(crefs[0]);
  free(crefs[1]);
  free(cq);
  free(out[0]);
  free(out[1]);
}

/* Heads inside a panel, across panels and whole panels; few rows (the dot
 * products) and many (the panels). */
static void head_outputs(void **state) {
  (void)state;
  attn_ctx *ctxs[MAX_THREADS];
  for (int t = 0; t < MAX_THREADS; t++)
    ctxs[t] = tu_ctx(t + 1);
  static const int64_t heads[] = {64, 20, 1, 33, 128};
  static const int64_t rows[] = {1, 5, 200};
  uint64_t seed = 500;
  for (int hi = 0; hi < 5; hi++)
    for (int ri = 0; ri < 3; ri++)
      check_heads(ctxs, rows[ri], 96, heads[hi] == 1 ? 7 : 2 * heads[hi], 65, heads[hi], seed++);
  check_heads(ctxs, 64, 64, 70, 300, 20, seed++); /* 2 slices deep, the last head partial */
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
      cmocka_unit_test(head_outputs),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
