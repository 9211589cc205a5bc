/* The row kernels of every set this CPU can run, called directly: the
 * shared library hides them, so this suite links the kernel objects
 * (attn_simd in src/CMakeLists.txt) and chooses sets with the compiler's
 * own CPU check, not the library's probe. The public path through each set
 * is covered by test_softmax, which ctest also runs with ATTN_KERNELS forced.
 *
 * exp accuracy: ULP error = |got - exp((double)x)| / ulp(exp(x)), where
 * ulp(w) = 2^(e - 23) for w in [2^e, 2^(e+1)) with w a normal float, and
 * 2^-149 for a subnormal w. Asserted: <= 1.5 ULP for normal results and
 * <= 1 ULP for subnormal ones, over a sample of ~1e7 floats spread evenly
 * over the bit patterns of [-104, 89] plus 1e6 spread evenly in value.
 * Measured over every float in that range (2.24e9 values): at most 0.99 ULP
 * (sse2; subnormal results 0.75 ULP) and 0.91 ULP (avx2, avx512; subnormal
 * results 0.86 ULP); 99.2% (sse2) and 99.5% of the results are correctly
 * rounded. */
#include "test_util.h"

#include <float.h>

#include "kernel_sets.h"

#define FOR_EACH_SET(k) TU_FOR_EACH_SET(k, 1)

static double ulp_of(double w) {
  w = fabs(w);
  if (w < 0x1p-126)
    return 0x1p-149;
  int e;
  frexp(w, &e); /* w = f 2^e, f in [0.5, 1) */
  return ldexp(1.0, e - 24);
}

typedef struct {
  double normal, subnormal;
  float at_normal, at_subnormal;
  long count;
} ulp_stats;

static void measure(const attn_kernels *k, const float *x, float *y, int n, ulp_stats *s) {
  k->exp_shift_sum(x, y, n, 0.0f, NULL); /* x - 0 is x: this is exp itself */
  for (int i = 0; i < n; i++) {
    double w = exp((double)x[i]);
    s->count++;
    if (w > FLT_MAX) { /* rounds to +inf, or to FLT_MAX within an ULP */
      if (!(y[i] == INFINITY || (y[i] == FLT_MAX && w < 0x1.ffffffp127 * (1 + 0x1p-24))))
        fail_msg("%s: exp(%a) = %a but must overflow", k->name, (double)x[i], (double)y[i]);
      continue;
    }
    double e = fabs((double)y[i] - w) / ulp_of(w);
    if (isnan(e))
      e = INFINITY;
    if (w < 0x1p-126) {
      if (e > s->subnormal)
        s->subnormal = e, s->at_subnormal = x[i];
    } else if (e > s->normal) {
      s->normal = e, s->at_normal = x[i];
    }
  }
}

static void exp_ulp_error(void **state) {
  (void)state;
  enum { N = 4096 };
  float *x = malloc(N * sizeof *x), *y = malloc(N * sizeof *y);
  FOR_EACH_SET(k) {
    ulp_stats s = {0, 0, 0, 0, 0};
    int m = 0;
    /* Every 211th bit pattern of [0, 89] and of [-104, -0]. */
    for (int sign = 0; sign < 2; sign++) {
      uint32_t lim = tu_bits(sign ? 104.0f : 89.0f);
      for (uint32_t b = 0; b <= lim; b += 211) {
        x[m++] = tu_float(b | (sign ? 0x80000000u : 0));
        if (m == N)
          measure(k, x, y, m, &s), m = 0;
      }
    }
    /* Evenly in value, where bit patterns are sparse. */
    for (int i = 0; i <= 1000000; i++) {
      x[m++] = -104.0f + 193.0f * (float)i / 1e6f;
      if (m == N)
        measure(k, x, y, m, &s), m = 0;
    }
    measure(k, x, y, m, &s);
    print_message("%s: %ld values, max %.3f ULP (normal, at %a), %.3f ULP (subnormal, at %a)\n",
                  k->name, s.count, s.normal, (double)s.at_normal, s.subnormal,
                  (double)s.at_subnormal);
    if (!(s.normal <= 1.5))
      fail_msg("%s: %.3f ULP at x = %a", k->name, s.normal, (double)s.at_normal);
    if (!(s.subnormal <= 1.0))
      fail_msg("%s: %.3f ULP (subnormal) at x = %a", k->name, s.subnormal,
               (double)s.at_subnormal);
  }
  free(x);
  free(y);
}

static void exp_special_values(void **state) {
  (void)state;
  const float in[] = {-INFINITY, INFINITY, NAN, 0.0f, -0.0f, -104.0f, -200.0f, -FLT_MAX,
                      89.0f, 100.0f, FLT_MAX, 88.8f, -103.0f, 1e-30f, -1e-30f, 1.0f};
  enum { N = sizeof in / sizeof in[0] };
  FOR_EACH_SET(k) {
    float half = 0.5f, e_half;
    k->exp_shift_sum(&half, &e_half, 1, 0.0f, NULL);
    /* Each value in every lane position: as a vector, and as a tail. */
    for (int len = 1; len <= 21; len++)
      for (int i = 0; i < N; i++) {
        float x[21], y[21];
        for (int j = 0; j < len; j++)
          x[j] = 0.5f;
        int pos = (i * 7) % len;
        x[pos] = in[i];
        k->exp_shift_sum(x, y, len, 0.0f, NULL);
        float g = y[pos];
        switch (i) {
        case 0: case 5: case 6: case 7:
          if (g != 0.0f || signbit(g))
            fail_msg("%s: exp(%g) = %a, want +0", k->name, (double)in[i], (double)g);
          break;
        case 1: case 8: case 9: case 10: case 11:
          if (g != INFINITY)
            fail_msg("%s: exp(%g) = %a, want inf", k->name, (double)in[i], (double)g);
          break;
        case 2:
          assert_true(isnan(g));
          break;
        case 3: case 4: case 13: case 14:
          if (g != 1.0f)
            fail_msg("%s: exp(%g) = %a, want 1", k->name, (double)in[i], (double)g);
          break;
        default: /* -103 (subnormal result), 1 */
          if (!(g > 0 && fabs(g - exp((double)in[i])) <= 1.5 * ulp_of(exp((double)in[i]))))
            fail_msg("%s: exp(%g) = %a", k->name, (double)in[i], (double)g);
        }
        /* The other lanes are unaffected by the special one. */
        for (int j = 0; j < len; j++)
          if (j != pos && y[j] != e_half)
            fail_msg("%s: exp(0.5) in lane %d = %a next to exp(%g)", k->name, j,
                     (double)y[j], (double)in[i]);
      }
  }
}

static void row_max_kernel(void **state) {
  (void)state;
  tu_rng rng = {1};
  float x[1100];
  FOR_EACH_SET(k) {
    for (int n = 1; n <= 1100; n += n < 80 ? 1 : 97) {
      tu_fill(&rng, x, (size_t)n, -1e3f, 1e3f);
      float want = x[0];
      for (int i = 1; i < n; i++)
        want = x[i] > want ? x[i] : want;
      assert_true(k->row_max(x, n) == want);
      /* A NaN anywhere, the last (tail) lane included, gives NaN. */
      for (int pos = 0; pos < n; pos += n < 80 ? 1 : 13) {
        float keep = x[pos];
        x[pos] = NAN;
        if (!isnan(k->row_max(x, n)))
          fail_msg("%s: NaN at %d of %d was missed", k->name, pos, n);
        x[pos] = keep;
      }
      for (int i = 0; i < n; i++)
        x[i] = -INFINITY;
      assert_true(k->row_max(x, n) == -INFINITY);
      x[n - 1] = -FLT_MAX;
      assert_true(k->row_max(x, n) == -FLT_MAX);
    }
  }
}

static void exp_shift_sum_kernel(void **state) {
  (void)state;
  tu_rng rng = {2};
  enum { MAXN = 100003 };
  float *x = malloc((MAXN + 16) * sizeof *x), *y = malloc((MAXN + 16) * sizeof *y);
  float *y2 = malloc((MAXN + 16) * sizeof *y2);
  const int lens[] = {1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33, 63, 65, 255, 257, 1000, MAXN};
  FOR_EACH_SET(k) {
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
      int n = lens[li];
      tu_fill(&rng, x, (size_t)n, -30, 5);
      x[n / 2] = -INFINITY;
      float shift = 2.5f;
      for (int i = 0; i < n + 16; i++)
        y[i] = y2[i] = 777.0f;
      float s = k->exp_shift_sum(x, y, n, shift, NULL);
      double want_sum = 0;
      for (int i = 0; i < n; i++) {
        double w = exp((double)(x[i] - shift)); /* the kernel subtracts in float */
        want_sum += w;
        if (!(fabs(y[i] - w) <= 1.5 * ulp_of(w)))
          fail_msg("%s n=%d: y[%d] = %a, want %a", k->name, n, i, (double)y[i], w);
      }
      assert_true(y[n / 2] == 0.0f);
      for (int i = n; i < n + 16; i++) /* nothing past the row */
        assert_true(y[i] == 777.0f);
      /* The sum is of the stored values, to float64 accuracy or close. */
      double got_sum = 0;
      for (int i = 0; i < n; i++)
        got_sum += y[i];
      assert_close(s, got_sum, 1e-6, 0);
      assert_close(s, want_sum, 1e-6, 0);
      /* Without storing: the same sum, bit for bit. */
      assert_true(k->sum_exp_shift(x, n, shift) == s);
      /* In place: the same values. */
      memcpy(y2, x, (size_t)n * sizeof *x);
      assert_true(k->exp_shift_sum(y2, y2, n, shift, NULL) == s);
      assert_memory_equal(y, y2, (size_t)n * sizeof *y);
      /* NaN propagates to its entry and the sum. */
      x[n - 1] = NAN;
      assert_true(isnan(k->exp_shift_sum(x, y, n, shift, NULL)));
      assert_true(isnan(y[n - 1]));
      /* A shift of +inf: every entry and the sum are 0 (the lanes past a
       * row's end are computed at x = shift, inf - inf = NaN there, and
       * must be dropped). */
      tu_fill(&rng, x, (size_t)n, -30, 5);
      assert_true(k->exp_shift_sum(x, y, n, INFINITY, NULL) == 0.0f);
      for (int i = 0; i < n; i++)
        assert_true(y[i] == 0.0f);
      assert_true(k->sum_exp_shift(x, n, INFINITY) == 0.0f);
    }
  }
  free(x);
  free(y);
  free(y2);
}

/* exp_below_sum: exp_shift_sum's values and sum, bit for bit, for a
 * shift at or above the row's maximum (subnormal and zero results, -inf
 * and NaN entries included). */
static void exp_below_sum_kernel(void **state) {
  (void)state;
  tu_rng rng = {4};
  enum { MAXN = 1000 };
  float x[MAXN], y[MAXN + 16], y2[MAXN + 16];
  const int lens[] = {1, 2, 15, 16, 17, 31, 33, 255, 256, 257, MAXN};
  FOR_EACH_SET(k) {
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
      int n = lens[li];
      for (int pass = 0; pass < 4; pass++) {
        tu_fill(&rng, x, (size_t)n, -120, 20);
        float shift = k->row_max(x, n) + (pass == 2 ? 3.5f : 0.0f);
        if (pass == 1)
          x[n / 3] = -INFINITY;
        if (pass == 3)
          x[n - 1] = NAN;
        for (int i = 0; i < n + 16; i++)
          y[i] = y2[i] = 777.0f;
        float s = k->exp_shift_sum(x, y, n, shift, NULL);
        float s2 = k->exp_below_sum(x, y2, n, shift);
        assert_memory_equal(y, y2, (size_t)(n + 16) * sizeof *y);
        if (pass == 3)
          assert_true(isnan(s) && isnan(s2));
        else
          assert_true(s == s2);
      }
    }
  }
}

static void elementwise_kernels(void **state) {
  (void)state;
  tu_rng rng = {3};
  float x[80], m[80], y[96];
  FOR_EACH_SET(k) {
    for (int n = 1; n <= 80; n++) {
      tu_fill(&rng, x, (size_t)n, -1e3f, 1e3f);
      tu_fill(&rng, m, (size_t)n, -1, 1);
      float s = tu_uniform(&rng, -3, 3), a = tu_uniform(&rng, -10, 10), b = tu_uniform(&rng, 0, 5);
      /* Each result is one or two IEEE roundings, so equality is exact. */
      for (int i = 0; i < 96; i++)
        y[i] = 777.0f;
      k->scale(x, y, n, s);
      for (int i = 0; i < n; i++)
        assert_true(y[i] == x[i] * s);
      k->scale_add(x, m, y, n, s);
      for (int i = 0; i < n; i++) {
        float p = x[i] * s;
        assert_true(y[i] == p + m[i]);
      }
      k->sub2(x, y, n, a, b);
      for (int i = 0; i < n; i++) {
        float d = x[i] - a;
        assert_true(y[i] == d - b);
      }
      for (int i = n; i < 96; i++)
        assert_true(y[i] == 777.0f);
    }
  }
}

/* scale_stream: the values of scale at every alignment of y (its
 * non-temporal stores start at the first 64-byte boundary), nothing written
 * outside y. */
static void scale_stream_kernel(void **state) {
  (void)state;
  tu_rng rng = {5};
  float x[300];
  _Alignas(64) float y[340];
  FOR_EACH_SET(k) {
    for (int off = 0; off < 17; off++)
      for (int n = 1; n <= 300; n += n < 40 ? 1 : 37) {
        tu_fill(&rng, x, (size_t)n, -1e3f, 1e3f);
        float s = tu_uniform(&rng, -3, 3);
        for (int i = 0; i < 340; i++)
          y[i] = 777.0f;
        k->scale_stream(x, y + off, n, s);
        k->stream_fence();
        for (int i = 0; i < 340; i++)
          assert_true(y[i] == (i >= off && i < off + n ? x[i - off] * s : 777.0f));
      }
  }
}

/* RoPE's rotations: each output is the float rounding of a product
 * difference or sum formed in double (products and sum rounded separately,
 * as written here: this file is ISO C, so nothing is contracted into an
 * FMA); interleaved tables hold one value per float. */
static void rotate_kernels(void **state) {
  (void)state;
  tu_rng rng = {7};
  float a[70], b[70], x[140], a0[70] = {0}, b0[70] = {0}, x0[140] = {0};
  double c[70], s[70], cc[140], ss[140];
  FOR_EACH_SET(k) {
    for (int n = 1; n <= 70; n++) {
      tu_fill(&rng, a0, (size_t)n, -50, 50);
      tu_fill(&rng, b0, (size_t)n, -50, 50);
      for (int i = 0; i < n; i++) {
        double t = tu_uniform(&rng, -7, 7);
        c[i] = cos(t), s[i] = sin(t);
        cc[2 * i] = cc[2 * i + 1] = c[i];
        ss[2 * i] = -s[i], ss[2 * i + 1] = s[i];
        x0[2 * i] = a0[i], x0[2 * i + 1] = b0[i];
      }
      memcpy(a, a0, sizeof a), memcpy(b, b0, sizeof b), memcpy(x, x0, sizeof x);
      k->rotate_split(a, b, c, s, n);
      k->rotate_pairs(x, cc, ss, n);
      for (int i = 0; i < n; i++) {
        double u = a0[i], v = b0[i];
        double uc = u * c[i], vs = v * s[i], us = u * s[i], vc = v * c[i];
        float ea = (float)(uc - vs), eb = (float)(us + vc);
        assert_true(a[i] == ea && b[i] == eb);
        assert_true(x[2 * i] == ea && x[2 * i + 1] == eb);
      }
      for (int i = n; i < 70; i++)
        assert_true(a[i] == a0[i] && b[i] == b0[i] && x[2 * i] == x0[2 * i]);
    }
  }
}

/* softmax_rows against the row-at-a-time composition of the same set's
 * kernels (softmax.c before it: scale or scale_add, hiding, row_max,
 * exp_shift_sum, scale; log: sum_exp_shift, sub2), bit for bit, with the
 * hiding rule of logits.h written out here: rows of every length around the
 * vector widths, masks per row or shared (stride 0), hidden NaN and +inf
 * entries, all-hidden rows, NaN rows, the streamed form, several rows per
 * call. */
static void composed_row(const attn_kernels *k, const float *x, const float *m,
                         const uint8_t *b, float *y, int64_t n, float s, int lg) {
  float *z = malloc((size_t)n * sizeof *z);
  if (m)
    k->scale_add(x, m, z, n, s);
  else
    k->scale(x, z, n, s);
  for (int64_t i = 0; i < n; i++)
    if ((m && m[i] == -INFINITY) || (b && !b[i]))
      z[i] = -INFINITY;
  float mx = k->row_max(z, n);
  if (mx == -INFINITY || !(mx < INFINITY)) {
    for (int64_t i = 0; i < n; i++)
      y[i] = mx == -INFINITY ? (lg ? -INFINITY : 0.0f) : NAN;
  } else if (lg) {
    float sum = k->sum_exp_shift(z, n, mx);
    k->sub2(z, y, n, mx, (float)log((double)sum));
  } else {
    float sum = k->exp_shift_sum(z, z, n, mx, NULL);
    k->scale(z, y, n, (float)(1.0 / (double)sum));
  }
  free(z);
}

static void softmax_rows_kernel(void **state) {
  (void)state;
  tu_rng rng = {5};
  enum { R = 40, MAXN = 4097 }; /* several batches of softmax_rows (rows_body.h) */
  float *x = malloc(R * MAXN * sizeof *x), *m = malloc(R * MAXN * sizeof *m);
  float *y = malloc((R * MAXN + 16) * sizeof *y), *want = malloc(R * MAXN * sizeof *want);
  float *w = malloc(2 * MAXN * sizeof *w);
  uint8_t *b = malloc(R * MAXN);
  const int lens[] = {1,  2,  3,  4,  5,   7,   8,   9,   15,  16,   17,  31,
                      32, 33, 63, 64, 65, 255, 256, 257, 300, 1000, 4096, MAXN};
  FOR_EACH_SET(k) {
    if (!k->softmax_rows)
      continue;
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++)
      for (int mode = 0; mode < 16; mode++) {
        int n = lens[li], use_m = mode & 1, use_b = mode & 2, shared = mode & 4, log = mode & 8;
        float s = mode % 3 == 0 ? 1.0f : -0.37f * (float)(mode + 1);
        tu_fill(&rng, x, (size_t)(R * n), -30, 30);
        for (int i = 0; i < R * n; i++) {
          uint64_t u = tu_next(&rng) % 8;
          m[i] = u == 0 ? -INFINITY : tu_uniform(&rng, -5, 5);
          b[i] = u == 1 ? 0 : (uint8_t)(1 + u);
          if (u == 2 && (use_m || use_b)) /* hidden by m[i] = -inf or b[i] = 0, so never seen */
            m[i] = -INFINITY, b[i] = 0, x[i] = i % 2 ? NAN : INFINITY;
        }
        for (int j = 0; j < n; j++) { /* row 1: everything hidden, when masked */
          if (use_m && !shared)
            m[n + j] = -INFINITY;
          if (use_b && !shared)
            b[n + j] = 0;
        }
        if (R * n > 3 && !use_m && !use_b)
          x[3 * n + n / 2] = NAN; /* row 3 (unmasked): NaN */
        x[2 * n] = -INFINITY; /* row 2 starts with -inf */
        for (int r = 0; r < R; r++)
          composed_row(k, x + r * n, use_m ? m + (shared ? 0 : r * n) : NULL,
                       use_b ? b + (shared ? 0 : r * n) : NULL, want + r * n, n, s, log);
        for (int stream = 0; stream <= 1; stream++) {
          for (int i = 0; i < R * n + 16; i++)
            y[i] = 777.0f;
          attn_rows_job j = {x, y, use_m ? m : NULL, use_b ? b : NULL, n, n,
                             shared ? 0 : n, shared ? 0 : n, n, s, log, stream ? w : NULL,
                             stream ? x + R * n : NULL, NULL};
          k->softmax_rows(&j, R);
          for (int i = 0; i < R * n; i++)
            if (memcmp(&y[i], &want[i], sizeof(float)) != 0 && !(isnan(y[i]) && isnan(want[i])))
              fail_msg("%s n=%d mode %d stream %d: y[%d] = %a, want %a", k->name, n, mode,
                       stream, i, (double)y[i], (double)want[i]);
          for (int i = R * n; i < R * n + 16; i++) /* nothing past the rows */
            assert_true(y[i] == 777.0f);
        }
      }
  }
  free(x), free(m), free(y), free(want), free(w), free(b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(exp_ulp_error),      cmocka_unit_test(exp_special_values),
      cmocka_unit_test(row_max_kernel),     cmocka_unit_test(exp_shift_sum_kernel),
      cmocka_unit_test(exp_below_sum_kernel),
      cmocka_unit_test(elementwise_kernels), cmocka_unit_test(scale_stream_kernel),
      cmocka_unit_test(rotate_kernels),     cmocka_unit_test(softmax_rows_kernel),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
