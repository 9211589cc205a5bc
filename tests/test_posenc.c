/* Positional encodings: sinusoidal tables and their add helper, rotary
 * embedding, ALiBi slopes; against the float64 reference, by properties, and
 * with bad input. */
#include "test_util.h"

#include "ref_common.h"
#include "ref_posenc.h"

#define N_LAYOUTS 4
static const int32_t layouts[N_LAYOUTS] = {ATTN_PE_INTERLEAVED, ATTN_PE_SIN_COS,
                                           ATTN_PE_SIN_COS_SHIFTED, ATTN_PE_COS_SIN};

static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p)
    fail_msg("out of memory");
  return p;
}

/* max_i |got[i] - want[i]| */
static double max_abs_err(const float *got, const double *want, size_t n) {
  double worst = 0;
  for (size_t i = 0; i < n; i++) {
    double e = fabs((double)got[i] - want[i]);
    if (!(e <= worst))
      worst = isnan(e) ? INFINITY : e;
  }
  return worst;
}

/* ---------------------------------------------------------------- sinusoidal */

/* The table from the library, [L, D] contiguous; pos (the reference's
 * positions) filled from offset or positions. */
static void lib_table(attn_ctx *ctx, int32_t layout, int64_t L, int64_t D, double base,
                      double offset, const double *positions, float *out) {
  int64_t dims[2] = {L, D};
  attn_tensor *t = tu_wrap(ctx, out, (size_t)(L * D), 2, dims, NULL);
  attn_sinusoidal_params p;
  attn_sinusoidal_params_init(&p);
  p.layout = layout;
  p.base = base;
  p.offset = offset;
  p.positions = positions;
  attn_status st = attn_sinusoidal(ctx, t, &p);
  if (st != ATTN_OK)
    fail_msg("attn_sinusoidal: %s: %s", attn_status_string(st), attn_ctx_last_error(ctx));
  assert_ok(attn_tensor_free(ctx, t));
}

static double check_table(attn_ctx *ctx, int32_t layout, int64_t L, int64_t D, double base,
                          double offset, const double *positions, double tol) {
  float *got = xmalloc((size_t)(L * D) * sizeof *got);
  double *want = xmalloc((size_t)(L * D) * sizeof *want);
  double *pos = xmalloc((size_t)L * sizeof *pos);
  for (int64_t l = 0; l < L; l++)
    pos[l] = positions ? positions[l] : offset + (double)l;
  lib_table(ctx, layout, L, D, base, offset, positions, got);
  ref_sinusoidal(layout, L, D, base == 0 ? 10000 : base, pos, want);
  double err = max_abs_err(got, want, (size_t)(L * D));
  if (!(err <= tol))
    fail_msg("layout %d L %lld D %lld base %g offset %g: max abs error %.3g > %.3g", (int)layout,
             (long long)L, (long long)D, base, offset, err, tol);
  free(got);
  free(want);
  free(pos);
  return err;
}

static void sinusoidal_vs_reference(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  const int64_t Ds[] = {1, 2, 3, 4, 5, 7, 13, 128, 513};
  const int64_t Ls[] = {1, 300};
  const double bases[] = {0, 100, 1.5, 1e6};
  const double offsets[] = {0, 3.25, -7.5};
  for (int li = 0; li < N_LAYOUTS; li++)
    for (size_t di = 0; di < sizeof Ds / sizeof Ds[0]; di++) {
      if (layouts[li] == ATTN_PE_SIN_COS_SHIFTED && Ds[di] < 4)
        continue; /* refused; see sinusoidal_bad_input */
      for (size_t l = 0; l < sizeof Ls / sizeof Ls[0]; l++)
        for (size_t bi = 0; bi < sizeof bases / sizeof bases[0]; bi++)
          for (size_t oi = 0; oi < sizeof offsets / sizeof offsets[0]; oi++)
            check_table(ctx, layouts[li], Ls[l], Ds[di], bases[bi], offsets[oi], NULL, 2e-7);
    }
  attn_ctx_destroy(ctx);
}

/* Values worked out by hand from the layout definitions, so the reference
 * cannot share a misreading with the library. */
static void sinusoidal_known_values(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  float got[5];
  const double one = 1.0;
  /* D = 4, position 1, base 10000. Interleaved: w = 1, 10000^(-1/2). */
  lib_table(ctx, ATTN_PE_INTERLEAVED, 1, 4, 0, 0, &one, got);
  const double inter[4] = {sin(1), cos(1), sin(0.01), cos(0.01)};
  /* Concatenated: w = 10000^(-i/2) = 1, 0.01. */
  const double sincos[4] = {sin(1), sin(0.01), cos(1), cos(0.01)};
  /* Shifted: w = 10000^(-i/1) = 1, 1e-4. */
  const double shifted[4] = {sin(1), sin(1e-4), cos(1), cos(1e-4)};
  const double cossin[4] = {cos(1), cos(0.01), sin(1), sin(0.01)};
  for (int j = 0; j < 4; j++)
    assert_close(got[j], inter[j], 0, 1e-7);
  lib_table(ctx, ATTN_PE_SIN_COS, 1, 4, 0, 0, &one, got);
  for (int j = 0; j < 4; j++)
    assert_close(got[j], sincos[j], 0, 1e-7);
  lib_table(ctx, ATTN_PE_SIN_COS_SHIFTED, 1, 4, 0, 0, &one, got);
  for (int j = 0; j < 4; j++)
    assert_close(got[j], shifted[j], 0, 1e-7);
  lib_table(ctx, ATTN_PE_COS_SIN, 1, 4, 0, 0, &one, got);
  for (int j = 0; j < 4; j++)
    assert_close(got[j], cossin[j], 0, 1e-7);
  /* Odd D = 5 at position 2: interleaved ends with sin(2 * 10000^(-4/5)),
   * the concatenated layouts with an exact 0. */
  const double two = 2.0;
  lib_table(ctx, ATTN_PE_INTERLEAVED, 1, 5, 0, 0, &two, got);
  assert_close(got[4], sin(2 * pow(10000, -0.8)), 0, 1e-7);
  assert_close(got[2], sin(2 * pow(10000, -0.4)), 0, 1e-7);
  assert_close(got[3], cos(2 * pow(10000, -0.4)), 0, 1e-7);
  for (int li = 0; li < N_LAYOUTS; li++) {
    if (layouts[li] == ATTN_PE_INTERLEAVED)
      continue;
    lib_table(ctx, layouts[li], 1, 5, 0, 0, &two, got);
    assert_true(got[4] == 0.0f);
  }
  /* D = 1: interleaved is sin(p), the concatenated layouts are 0. */
  lib_table(ctx, ATTN_PE_INTERLEAVED, 1, 1, 0, 0, &two, got);
  assert_true(got[0] == (float)sin(2.0));
  lib_table(ctx, ATTN_PE_COS_SIN, 1, 1, 0, 0, &two, got);
  assert_true(got[0] == 0.0f);
  /* Position 0: sin columns 0, cos columns 1, exactly. */
  lib_table(ctx, ATTN_PE_INTERLEAVED, 1, 4, 0, 0, NULL, got);
  assert_true(got[0] == 0.0f && got[1] == 1.0f && got[2] == 0.0f && got[3] == 1.0f);
  attn_ctx_destroy(ctx);
}

/* fairseq / tensor2tensor: the lowest frequency is exactly 1/base. */
static void sinusoidal_shifted_lowest_frequency(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  float got[128];
  /* base 16, D = 8 (h = 4), position 16: the last frequency gives angle
   * 16 * (1/16) = 1 with no rounding at all. */
  const double p16 = 16.0;
  lib_table(ctx, ATTN_PE_SIN_COS_SHIFTED, 1, 8, 16, 0, &p16, got);
  assert_true(got[3] == (float)sin(1.0));
  assert_true(got[7] == (float)cos(1.0));
  /* The unshifted layout's lowest frequency is 16^(-3/4): angle 2. */
  lib_table(ctx, ATTN_PE_SIN_COS, 1, 8, 16, 0, &p16, got);
  assert_true(got[3] == (float)sin(2.0));
  /* base 10000, D = 128, position 12345: column 63 is sin(1.2345). */
  const double p = 12345.0;
  lib_table(ctx, ATTN_PE_SIN_COS_SHIFTED, 1, 128, 0, 0, &p, got);
  assert_close(got[63], sin(1.2345), 0, 6e-8);
  assert_close(got[127], cos(1.2345), 0, 6e-8);
  assert_true(got[0] == (float)sin(p) && got[64] == (float)cos(p));
  attn_ctx_destroy(ctx);
}

/* Positions up to 1e6 keep |error| < 1e-6: the angle is formed in double. */
static void sinusoidal_large_positions(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  tu_rng rng = {0x9e3779b97f4a7c15ull};
  const int64_t L = 257;
  double *pos = xmalloc((size_t)L * sizeof *pos);
  for (int64_t l = 0; l < L; l++) /* fractional, spread over [0, 1e6] */
    pos[l] = 1e6 * (double)(tu_next(&rng) >> 11) * 0x1p-53;
  pos[0] = 1e6;
  pos[1] = 999999.5;
  pos[2] = 0;
  const int64_t Ds[] = {7, 128, 513};
  double worst = 0;
  for (int li = 0; li < N_LAYOUTS; li++)
    for (size_t di = 0; di < sizeof Ds / sizeof Ds[0]; di++) {
      double e = check_table(ctx, layouts[li], L, Ds[di], 0, 0, pos, 1e-6);
      worst = e > worst ? e : worst;
    }
  /* Also through the offset, fractional, near 1e6. */
  for (int li = 0; li < N_LAYOUTS; li++)
    check_table(ctx, layouts[li], 64, 64, 0, 999936.75, NULL, 1e-6);
  print_message("sinusoidal, positions up to 1e6: max abs error %.3g\n", worst);
  free(pos);
  attn_ctx_destroy(ctx);
}

/* Chunks of a long sequence placed with offset give bit-identical rows to
 * the whole table (the cut and the rows either side of it lie in different
 * spans of angles.h); explicit positions give the whole table within the
 * rounding. */
static void sinusoidal_chunks_agree(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  enum { L = 700, D = 33, CUT = 300 };
  static float whole[L * D], parts[L * D], byp[L * D];
  double pos[L];
  for (int l = 0; l < L; l++)
    pos[l] = 5.5 + l;
  for (int li = 0; li < N_LAYOUTS; li++) {
    lib_table(ctx, layouts[li], L, D, 0, 5.5, NULL, whole);
    lib_table(ctx, layouts[li], CUT, D, 0, 5.5, NULL, parts);
    lib_table(ctx, layouts[li], L - CUT, D, 0, 5.5 + CUT, NULL, parts + CUT * D);
    lib_table(ctx, layouts[li], L, D, 0, 123.0 /* ignored */, pos, byp);
    assert_memory_equal(whole, parts, sizeof whole);
    for (int i = 0; i < L * D; i++)
      assert_close(byp[i], whole[i], 0, 1.2e-7);
  }
  attn_ctx_destroy(ctx);
}

/* A long table on 1 and 2 threads: identical, and right. */
static void sinusoidal_threads(void **state) {
  (void)state;
  attn_ctx *c1 = tu_ctx(1), *c2 = tu_ctx(2);
  const int64_t L = 5000, D = 64;
  float *a = xmalloc((size_t)(L * D) * sizeof *a), *b = xmalloc((size_t)(L * D) * sizeof *b);
  for (int li = 0; li < N_LAYOUTS; li++) {
    lib_table(c1, layouts[li], L, D, 0, 1.5, NULL, a);
    lib_table(c2, layouts[li], L, D, 0, 1.5, NULL, b);
    assert_memory_equal(a, b, (size_t)(L * D) * sizeof *a);
    check_table(c2, layouts[li], L, D, 0, 1.5, NULL, 2e-7);
  }
  /* Many short rows. */
  check_table(c2, ATTN_PE_INTERLEAVED, 100000, 3, 0, 0, NULL, 2e-7);
  free(a);
  free(b);
  attn_ctx_destroy(c1);
  attn_ctx_destroy(c2);
}

/* x [B, L, D] viewed inside a padded [L, B, D + PAD] buffer: the add helper
 * must follow the strides and leave the padding alone. */
static void check_add(attn_ctx *ctx, int32_t layout, int64_t B, int64_t L, int64_t D,
                      int ndim, int strided, const double *positions) {
  const int64_t PAD = 3;
  int64_t row = strided ? D + PAD : D;
  size_t n = (size_t)(B * L * row);
  float *buf = xmalloc(n * sizeof *buf), *orig = xmalloc(n * sizeof *orig);
  tu_rng rng = {(uint64_t)(B * 1000003 + L * 1009 + D * 7 + layout + 1)};
  tu_fill(&rng, buf, n, -2, 2);
  memcpy(orig, buf, n * sizeof *buf);
  int64_t dims3[3] = {B, L, D};
  int64_t strides3[3] = {strided ? row : L * D, strided ? B * row : D, 1};
  attn_tensor *x = ndim == 3 ? tu_wrap(ctx, buf, n, 3, dims3, strides3)
                             : tu_wrap(ctx, buf, n, 2, dims3 + 1, strides3 + 1);
  attn_sinusoidal_params p;
  attn_sinusoidal_params_init(&p);
  p.layout = layout;
  p.offset = 2.0;
  p.positions = positions;
  attn_status st = attn_sinusoidal_add(ctx, x, &p);
  if (st != ATTN_OK)
    fail_msg("attn_sinusoidal_add: %s", attn_ctx_last_error(ctx));
  double *table = xmalloc((size_t)(L * D) * sizeof *table);
  double *pos = xmalloc((size_t)L * sizeof *pos);
  for (int64_t l = 0; l < L; l++)
    pos[l] = positions ? positions[l] : 2.0 + (double)l;
  ref_sinusoidal(layout, L, D, 10000, pos, table);
  for (int64_t b = 0; b < B; b++)
    for (int64_t l = 0; l < L; l++)
      for (int64_t j = 0; j < row; j++) {
        size_t at = (size_t)(b * strides3[0] + l * strides3[1] + j);
        if (j >= D) {
          if (memcmp(&buf[at], &orig[at], sizeof *buf))
            fail_msg("padding at b %lld l %lld col %lld was written", (long long)b,
                     (long long)l, (long long)j);
          continue;
        }
        double want = (double)orig[at] + table[l * D + j];
        if (!tu_close(buf[at], want, 0, 5e-7))
          fail_msg("add layout %d [%lld, %lld, %lld] strided %d: x[%lld, %lld, %lld] = %.9g, "
                   "want %.9g",
                   (int)layout, (long long)B, (long long)L, (long long)D, strided,
                   (long long)b, (long long)l, (long long)j, (double)buf[at], want);
      }
  assert_ok(attn_tensor_free(ctx, x));
  free(buf);
  free(orig);
  free(table);
  free(pos);
}

static void sinusoidal_add(void **state) {
  (void)state;
  attn_ctx *c1 = tu_ctx(1), *c2 = tu_ctx(2);
  double pos[9] = {0, 1e6, 3.5, 17, 17, 2, 1, 0.25, 42};
  for (int li = 0; li < N_LAYOUTS; li++) {
    check_add(c1, layouts[li], 1, 9, 6, 2, 0, NULL);
    check_add(c1, layouts[li], 1, 9, 7, 2, 1, pos);
    check_add(c1, layouts[li], 3, 9, 13, 3, 0, NULL);
    check_add(c1, layouts[li], 3, 9, 8, 3, 1, pos);
    check_add(c2, layouts[li], 4, 600, 64, 3, 1, NULL);
    check_add(c2, layouts[li], 2, 1, 128, 3, 0, NULL);
  }
  attn_ctx_destroy(c1);
  attn_ctx_destroy(c2);
}

/* A zero-filled buffer posing as a handle: its tag does not match. */
static uint64_t fake_handle[256];

static void sinusoidal_bad_input(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1), *other = tu_ctx(1);
  enum { L = 6, D = 8, N = 64 };
  float buf[N], sentinel[N];
  for (int i = 0; i < N; i++)
    buf[i] = sentinel[i] = (float)i - 0.5f;
  int64_t dims2[2] = {L, D}, dims3[3] = {2, 3, D}, dims1[1] = {D}, dims4[4] = {1, 2, 3, D};
  attn_tensor *x = tu_wrap(ctx, buf, N, 2, dims2, NULL);
  attn_tensor *x3 = tu_wrap(ctx, buf, N, 3, dims3, NULL);
  attn_tensor *x1 = tu_wrap(ctx, buf, N, 1, dims1, NULL);
  attn_tensor *x4 = tu_wrap(ctx, buf, N, 4, dims4, NULL);
  attn_tensor *foreign = tu_wrap(other, buf, N, 2, dims2, NULL);
  attn_tensor *u8 = NULL;
  assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_U8, 2, dims2, NULL, buf, sizeof buf, &u8));
  int64_t bstrides[2] = {0, 1}, ostrides[2] = {4, 1}, three[2] = {L, 3};
  attn_tensor *bcast = NULL, *overlap = NULL, *narrow = NULL;
  assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 2, dims2, bstrides, buf, sizeof buf, &bcast));
  assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 2, dims2, ostrides, buf, sizeof buf, &overlap));
  narrow = tu_wrap(ctx, buf, N, 2, three, NULL);
  attn_sinusoidal_params p;
  double bad_pos[L] = {0, 1, 2, 3, 4, NAN};

  typedef attn_status (*sin_fn)(attn_ctx *, attn_tensor *, const attn_sinusoidal_params *);
  const sin_fn fns[2] = {attn_sinusoidal, attn_sinusoidal_add};
  for (int f = 0; f < 2; f++) {
    sin_fn fn = fns[f];
    const char *name = f ? "attn_sinusoidal_add" : "attn_sinusoidal";
    assert_status(fn(NULL, x, NULL), ATTN_ERR_NULL_ARG);
    assert_status(fn((attn_ctx *)fake_handle, x, NULL), ATTN_ERR_BAD_HANDLE);
    assert_status(fn(ctx, NULL, NULL), ATTN_ERR_NULL_ARG);
    assert_error_mentions(ctx, name);
    assert_status(fn(ctx, (attn_tensor *)fake_handle, NULL), ATTN_ERR_BAD_HANDLE);
    assert_status(fn(ctx, foreign, NULL), ATTN_ERR_BAD_HANDLE);
    assert_error_mentions(ctx, "another context");
    assert_status(fn(ctx, u8, NULL), ATTN_ERR_UNSUPPORTED);
    assert_error_mentions(ctx, "dtype");
    assert_status(fn(ctx, x1, NULL), ATTN_ERR_SHAPE);
    assert_status(fn(ctx, x4, NULL), ATTN_ERR_SHAPE);
    if (!f) {
      assert_status(fn(ctx, x3, NULL), ATTN_ERR_SHAPE);
      assert_error_mentions(ctx, "has 3 dims but must have 2");
    }
    attn_sinusoidal_params_init(&p);
    p.layout = 4;
    assert_status(fn(ctx, x, &p), ATTN_ERR_INVALID_ARG);
    assert_error_mentions(ctx, "params.layout = 4");
    p.layout = -1;
    assert_status(fn(ctx, x, &p), ATTN_ERR_INVALID_ARG);
    attn_sinusoidal_params_init(&p);
    p.reserved_ = 1;
    assert_status(fn(ctx, x, &p), ATTN_ERR_INVALID_ARG);
    const double bad_bases[] = {1, 0.5, -3, INFINITY, -INFINITY, NAN};
    for (size_t i = 0; i < sizeof bad_bases / sizeof bad_bases[0]; i++) {
      attn_sinusoidal_params_init(&p);
      p.base = bad_bases[i];
      assert_status(fn(ctx, x, &p), ATTN_ERR_INVALID_ARG);
      assert_error_mentions(ctx, "params.base");
    }
    const double bad_offsets[] = {INFINITY, -INFINITY, NAN};
    for (size_t i = 0; i < 3; i++) {
      attn_sinusoidal_params_init(&p);
      p.offset = bad_offsets[i];
      assert_status(fn(ctx, x, &p), ATTN_ERR_INVALID_ARG);
      assert_error_mentions(ctx, "params.offset");
    }
    attn_sinusoidal_params_init(&p);
    p.positions = bad_pos;
    assert_status(fn(ctx, x, &p), ATTN_ERR_INVALID_ARG);
    assert_error_mentions(ctx, "params.positions[5]");
    bad_pos[5] = INFINITY;
    assert_status(fn(ctx, x, &p), ATTN_ERR_INVALID_ARG);
    bad_pos[5] = NAN;
    attn_sinusoidal_params_init(&p);
    p.layout = ATTN_PE_SIN_COS_SHIFTED;
    assert_status(fn(ctx, narrow, &p), ATTN_ERR_INVALID_ARG);
    assert_error_mentions(ctx, "D >= 4");
    assert_status(fn(ctx, bcast, NULL), ATTN_ERR_INVALID_ARG);
    assert_error_mentions(ctx, "strides[0] = 0");
    assert_status(fn(ctx, overlap, NULL), ATTN_ERR_INVALID_ARG);
    assert_error_mentions(ctx, "overlaps");
    /* Parameter struct sizes: too small, and newer with a field set. */
    attn_sinusoidal_params_init(&p);
    p.struct_size = 0;
    assert_status(fn(ctx, x, &p), ATTN_ERR_INVALID_ARG);
    assert_error_mentions(ctx, "struct_size = 0");
    struct {
      attn_sinusoidal_params p;
      uint64_t later;
    } newer;
    memset(&newer, 0, sizeof newer);
    attn_sinusoidal_params_init(&newer.p);
    newer.p.struct_size = sizeof newer;
    newer.later = 1;
    assert_status(fn(ctx, x, &newer.p), ATTN_ERR_UNSUPPORTED);
    assert_memory_equal(buf, sentinel, sizeof buf); /* nothing written so far */
    newer.later = 0; /* a newer caller using only what this library knows */
    assert_ok(fn(ctx, x, &newer.p));
    memcpy(buf, sentinel, sizeof buf);
  }
  attn_ctx_destroy(ctx);
  attn_ctx_destroy(other);
}

/* ---------------------------------------------------------------- rotary */

typedef struct {
  int32_t style;
  int64_t B, H, L, D, r; /* r: what the library is told (0 = D) */
  double theta;          /* as passed (0 = 10000) */
  int64_t offset;
  const int64_t *positions;
} rope_case;

static attn_status lib_rope(attn_ctx *ctx, const rope_case *c, float *buf, size_t n,
                            const int64_t *strides) {
  int64_t dims[4] = {c->B, c->H, c->L, c->D};
  attn_tensor *t = tu_wrap(ctx, buf, n, 4, dims, strides);
  attn_rope_params p;
  attn_rope_params_init(&p);
  p.style = c->style;
  p.rotary_dim = (int32_t)c->r;
  p.theta = c->theta;
  p.offset = c->offset;
  p.positions = c->positions;
  attn_status st = attn_rope(ctx, t, &p);
  assert_ok(attn_tensor_free(ctx, t));
  return st;
}

/* Rotate random x with the library and the reference; return the error. */
static double check_rope(attn_ctx *ctx, const rope_case *c) {
  size_t n = (size_t)(c->B * c->H * c->L * c->D);
  float *x = xmalloc(n * sizeof *x);
  double *want = xmalloc(n * sizeof *want);
  tu_rng rng = {(uint64_t)(c->B * 7919 + c->H * 104729 + c->L * 31 + c->D * 3 + c->r + 1)};
  tu_fill(&rng, x, n, -1, 1);
  for (size_t i = 0; i < n; i++)
    want[i] = x[i];
  int64_t *pos = xmalloc((size_t)(c->B * c->L) * sizeof *pos);
  for (int64_t i = 0; i < c->B * c->L; i++)
    pos[i] = c->positions ? c->positions[i] : c->offset + i % c->L;
  attn_status st = lib_rope(ctx, c, x, n, NULL);
  if (st != ATTN_OK)
    fail_msg("attn_rope: %s", attn_ctx_last_error(ctx));
  ref_rope(c->style == ATTN_ROPE_INTERLEAVED, c->B, c->H, c->L, c->D, c->r ? c->r : c->D,
           c->theta ? c->theta : 10000, pos, want);
  double err = ref_max_rel_err(x, want, n, 1e-3);
  if (!(err <= 1e-6))
    fail_msg("rope style %d [%lld, %lld, %lld, %lld] r %lld theta %g offset %lld%s: error %.3g",
             (int)c->style, (long long)c->B, (long long)c->H, (long long)c->L, (long long)c->D,
             (long long)c->r, c->theta, (long long)c->offset,
             c->positions ? " (positions)" : "", err);
  free(x);
  free(want);
  free(pos);
  return err;
}

static void rope_vs_reference(void **state) {
  (void)state;
  attn_ctx *c1 = tu_ctx(1), *c2 = tu_ctx(2);
  const int64_t Ds[] = {2, 4, 6, 10, 64, 128};
  const double thetas[] = {0, 500000, 1.5};
  const int64_t shapes[][3] = {{1, 1, 1}, {2, 3, 17}};
  for (int32_t style = 0; style < 2; style++)
    for (size_t di = 0; di < sizeof Ds / sizeof Ds[0]; di++) {
      int64_t D = Ds[di];
      int64_t rs[3] = {0, D / 2 - (D / 2) % 2, 2};
      for (int ri = 0; ri < 3; ri++) {
        if (rs[ri] == 0 && ri)
          continue;
        for (size_t ti = 0; ti < 3; ti++)
          for (int si = 0; si < 2; si++)
            for (int64_t offset = 0; offset <= 13; offset += 13) {
              rope_case c = {style, shapes[si][0], shapes[si][1], shapes[si][2], D, rs[ri],
                             thetas[ti], offset, NULL};
              check_rope(si ? c2 : c1, &c);
            }
      }
    }
  /* Odd head dims with an even rotary part; the rest passes through. */
  const int64_t odd[][2] = {{5, 4}, {7, 2}, {9, 6}, {3, 2}};
  for (int32_t style = 0; style < 2; style++)
    for (int i = 0; i < 4; i++) {
      rope_case c = {style, 2, 2, 5, odd[i][0], odd[i][1], 0, 3, NULL};
      check_rope(c1, &c);
    }
  /* Long sequences on 2 threads: blocks shared by batches and not. */
  for (int32_t style = 0; style < 2; style++) {
    rope_case a = {style, 2, 4, 300, 64, 0, 0, 0, NULL};
    rope_case b = {style, 3, 2, 20, 64, 32, 0, 100, NULL};
    check_rope(c2, &a);
    check_rope(c2, &b);
  }
  attn_ctx_destroy(c1);
  attn_ctx_destroy(c2);
}

/* Explicit positions, different per batch, up to 1e6. */
static void rope_explicit_positions(void **state) {
  (void)state;
  attn_ctx *c1 = tu_ctx(1), *c2 = tu_ctx(2);
  enum { B = 3, L = 19 };
  int64_t pos[B * L];
  tu_rng rng = {42};
  for (int i = 0; i < B * L; i++)
    pos[i] = (int64_t)(tu_next(&rng) % 1000001);
  pos[0] = 1000000;
  pos[1] = 0;
  double worst = 0;
  for (int32_t style = 0; style < 2; style++)
    for (int64_t r = 0; r <= 32; r += 32) {
      rope_case c = {style, B, 2, L, 64, r, 0, 0, pos};
      double e = check_rope(c1, &c);
      worst = e > worst ? e : worst;
      c.theta = 1e6;
      check_rope(c2, &c);
    }
  print_message("rope, positions up to 1e6: max rel error %.3g\n", worst);
  attn_ctx_destroy(c1);
  attn_ctx_destroy(c2);
}

/* [B, H, L, D] and [B, L, H, D] (through permuted strides) and a padded
 * layout give bit-identical results; padding is never touched. */
static void rope_layouts_agree(void **state) {
  (void)state;
  attn_ctx *ctx1 = tu_ctx(1), *ctx2 = tu_ctx(2);
  enum { B = 2, H = 5, L = 37, D = 16, PAD = 3 };
  const size_t n = B * H * L * D, np = B * H * L * (D + PAD);
  float *bhld = xmalloc(n * sizeof(float)), *blhd = xmalloc(n * sizeof(float));
  float *padded = xmalloc(np * sizeof(float)), *sentinel = xmalloc(np * sizeof(float));
  int64_t pos[B * L];
  for (int i = 0; i < B * L; i++)
    pos[i] = (i * 7919) % 1000;
  const int64_t perm[4] = {L * H * D, D, H * D, 1};
  const int64_t pstr[4] = {H * L * (D + PAD), L * (D + PAD), D + PAD, 1};
  for (int variant = 0; variant < 8; variant++) {
    attn_ctx *ctx = variant & 4 ? ctx2 : ctx1;
    rope_case c = {variant & 1, B, H, L, D, 12, 0, 5, variant & 2 ? pos : NULL};
    tu_rng rng = {(uint64_t)variant + 99};
    tu_fill(&rng, bhld, n, -3, 3);
    tu_fill(&rng, padded, np, -3, 3);
    for (int b = 0; b < B; b++)
      for (int h = 0; h < H; h++)
        for (int l = 0; l < L; l++)
          for (int d = 0; d < D; d++) {
            float v = bhld[((b * H + h) * L + l) * D + d];
            blhd[((b * L + l) * H + h) * D + d] = v;
            padded[((b * H + h) * L + l) * (D + PAD) + d] = v;
          }
    memcpy(sentinel, padded, np * sizeof(float));
    assert_ok(lib_rope(ctx, &c, bhld, n, NULL));
    assert_ok(lib_rope(ctx, &c, blhd, n, perm));
    assert_ok(lib_rope(ctx, &c, padded, np, pstr));
    for (int b = 0; b < B; b++)
      for (int h = 0; h < H; h++)
        for (int l = 0; l < L; l++) {
          const float *want = &bhld[((b * H + h) * L + l) * D];
          assert_memory_equal(&blhd[((b * L + l) * H + h) * D], want, D * sizeof(float));
          size_t at = (size_t)((b * H + h) * L + l) * (D + PAD);
          assert_memory_equal(&padded[at], want, D * sizeof(float));
          assert_memory_equal(&padded[at + D], &sentinel[at + D], PAD * sizeof(float));
        }
  }
  free(bhld);
  free(blhd);
  free(padded);
  free(sentinel);
  attn_ctx_destroy(ctx1);
  attn_ctx_destroy(ctx2);
}

/* Rotations preserve each pair's norm; dims beyond r are untouched. */
static void rope_norm_and_pass_through(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  enum { B = 2, H = 3, L = 11, D = 22, R = 14 };
  const size_t n = B * H * L * D;
  float x[B * H * L * D], x0[B * H * L * D];
  int64_t pos[B * L];
  for (int i = 0; i < B * L; i++)
    pos[i] = 1000 * i + 3;
  for (int32_t style = 0; style < 2; style++) {
    tu_rng rng = {7 + (uint64_t)style};
    tu_fill(&rng, x, n, -4, 4);
    memcpy(x0, x, sizeof x);
    rope_case c = {style, B, H, L, D, R, 0, 0, pos};
    assert_ok(lib_rope(ctx, &c, x, n, NULL));
    for (size_t row = 0; row < n / D; row++) {
      const float *a = x + row * D, *a0 = x0 + row * D;
      for (int i = 0; i < R / 2; i++) {
        int ja = style ? 2 * i : i, jb = style ? 2 * i + 1 : i + R / 2;
        double before = hypot(a0[ja], a0[jb]), after = hypot(a[ja], a[jb]);
        assert_close(after, before, 1e-6, 0);
      }
      assert_memory_equal(a + R, a0 + R, (D - R) * sizeof(float));
      assert_memory_not_equal(a, a0, R * sizeof(float));
    }
  }
  attn_ctx_destroy(ctx);
}

/* Rotating by p then by q equals rotating by p + q; position 0 is the
 * identity, bit for bit. */
static void rope_composition_and_identity(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(2);
  enum { B = 2, H = 4, L = 9, D = 32 };
  const size_t n = B * H * L * D;
  float *x = xmalloc(n * sizeof(float)), *y = xmalloc(n * sizeof(float));
  float *x0 = xmalloc(n * sizeof(float));
  int64_t p[B * L], q[B * L], pq[B * L], zero[B * L];
  tu_rng rng = {2024};
  for (int i = 0; i < B * L; i++) {
    p[i] = (int64_t)(tu_next(&rng) % 100000);
    q[i] = (int64_t)(tu_next(&rng) % 100000);
    pq[i] = p[i] + q[i];
    zero[i] = 0;
  }
  for (int32_t style = 0; style < 2; style++) {
    tu_fill(&rng, x, n, -1, 1);
    memcpy(y, x, n * sizeof(float));
    memcpy(x0, x, n * sizeof(float));
    rope_case c = {style, B, H, L, D, 0, 0, 0, p};
    assert_ok(lib_rope(ctx, &c, x, n, NULL));
    c.positions = q;
    assert_ok(lib_rope(ctx, &c, x, n, NULL));
    c.positions = pq;
    assert_ok(lib_rope(ctx, &c, y, n, NULL));
    for (size_t i = 0; i < n; i++)
      assert_close(x[i], y[i], 0, 1e-5);
    /* Offsets compose too: offset 5 then offset 7 is offset 12. */
    memcpy(x, x0, n * sizeof(float));
    memcpy(y, x0, n * sizeof(float));
    rope_case d = {style, B, H, L, D, 16, 0, 5, NULL};
    assert_ok(lib_rope(ctx, &d, x, n, NULL));
    d.offset = 7;
    assert_ok(lib_rope(ctx, &d, x, n, NULL));
    /* Positions 2l + 12 after offsets 5 and 7: check against explicit. */
    int64_t both[B * L];
    for (int i = 0; i < B * L; i++)
      both[i] = 2 * (i % L) + 12;
    rope_case e = {style, B, H, L, D, 16, 0, 0, both};
    assert_ok(lib_rope(ctx, &e, y, n, NULL));
    for (size_t i = 0; i < n; i++)
      assert_close(x[i], y[i], 0, 1e-5);
    /* Identity. */
    memcpy(x, x0, n * sizeof(float));
    rope_case z = {style, B, H, L, D, 0, 0, 0, zero};
    assert_ok(lib_rope(ctx, &z, x, n, NULL));
    assert_memory_equal(x, x0, n * sizeof(float));
    rope_case z1 = {style, B, H, 1, D, 0, 0, 0, NULL}; /* offset 0, L = 1 */
    assert_ok(lib_rope(ctx, &z1, x, (size_t)(B * H * D), NULL));
    assert_memory_equal(x, x0, (size_t)(B * H * D) * sizeof(float));
  }
  free(x);
  free(y);
  free(x0);
  attn_ctx_destroy(ctx);
}

/* One and two threads give the same bits. */
static void rope_threads_agree(void **state) {
  (void)state;
  attn_ctx *c1 = tu_ctx(1), *c2 = tu_ctx(2);
  enum { B = 2, H = 4, L = 300, D = 64 };
  const size_t n = B * H * L * D;
  float *a = xmalloc(n * sizeof(float)), *b = xmalloc(n * sizeof(float));
  int64_t *pos = xmalloc(B * L * sizeof(int64_t));
  for (int i = 0; i < B * L; i++)
    pos[i] = 3 * i + 1;
  for (int variant = 0; variant < 4; variant++) {
    rope_case c = {variant & 1, B, H, L, D, 48, 0, 17, variant & 2 ? pos : NULL};
    tu_rng rng = {(uint64_t)variant + 5};
    tu_fill(&rng, a, n, -1, 1);
    memcpy(b, a, n * sizeof(float));
    assert_ok(lib_rope(c1, &c, a, n, NULL));
    assert_ok(lib_rope(c2, &c, b, n, NULL));
    assert_memory_equal(a, b, n * sizeof(float));
  }
  free(a);
  free(b);
  free(pos);
  attn_ctx_destroy(c1);
  attn_ctx_destroy(c2);
}

/* Consecutive positions are where the library saves trig calls (angles
 * stepped from anchors): a chunk of a long sequence, rotated alone with its
 * offset, gives the whole sequence's rows bit for bit, for chunks starting
 * anywhere; and long offsets that start between anchors match the float64
 * reference. */
static void rope_chunks_agree(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  enum { H = 2, L = 600, D = 64 };
  float *whole = xmalloc(H * L * D * sizeof(float)), *part = xmalloc(H * L * D * sizeof(float));
  /* Positions 5 + start: mid-anchor, on an anchor, on and either side of
   * a span start (256, 512), the last. */
  static const int64_t starts[] = {1, 11, 37, 70, 250, 251, 252, 300, 507, 599};
  for (int32_t style = 0; style < 2; style++)
    for (size_t si = 0; si < sizeof starts / sizeof *starts; si++) {
      int64_t s0 = starts[si], n = L - s0;
      tu_rng rng = {(uint64_t)(style * 10 + si + 1)};
      tu_fill(&rng, whole, H * L * D, -1, 1);
      for (int64_t h = 0; h < H; h++)
        memcpy(part + h * n * D, whole + (h * L + s0) * D, (size_t)(n * D) * sizeof(float));
      rope_case cw = {style, 1, H, L, D, 0, 0, 5, NULL};
      rope_case cp = {style, 1, H, n, D, 0, 0, 5 + s0, NULL};
      assert_ok(lib_rope(ctx, &cw, whole, H * L * D, NULL));
      assert_ok(lib_rope(ctx, &cp, part, (size_t)(H * n * D), NULL));
      for (int64_t h = 0; h < H; h++)
        assert_memory_equal(part + h * n * D, whole + (h * L + s0) * D,
                            (size_t)(n * D) * sizeof(float));
    }
  for (int32_t style = 0; style < 2; style++) {
    rope_case c = {style, 2, 3, 77, 128, 0, 0, 1000003, NULL};
    check_rope(ctx, &c);
    c.offset = 0;
    c.L = 300;
    check_rope(ctx, &c);
    c.offset = 1000003; /* several spans, far out */
    c.B = 1, c.H = 1, c.L = 1000;
    check_rope(ctx, &c);
  }
  free(whole);
  free(part);
  attn_ctx_destroy(ctx);
}

static void rope_bad_input(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1), *other = tu_ctx(1);
  enum { B = 2, H = 2, L = 3, D = 8, N = B * H * L * D };
  float buf[N], sentinel[N];
  for (int i = 0; i < N; i++)
    buf[i] = sentinel[i] = (float)i + 0.25f;
  int64_t dims[4] = {B, H, L, D}, dims3[3] = {B * H, L, D}, odd[4] = {B, H, L, 5};
  attn_tensor *x = tu_wrap(ctx, buf, N, 4, dims, NULL);
  attn_tensor *x3 = tu_wrap(ctx, buf, N, 3, dims3, NULL);
  attn_tensor *xodd = tu_wrap(ctx, buf, N, 4, odd, NULL);
  attn_tensor *foreign = tu_wrap(other, buf, N, 4, dims, NULL);
  attn_tensor *u8 = NULL, *bcast = NULL, *overlap = NULL;
  assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_U8, 4, dims, NULL, buf, sizeof buf, &u8));
  int64_t bstr[4] = {L * D, 0, D, 1}, ostr[4] = {H * L * D, L * D, 4, 1};
  assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, dims, bstr, buf, sizeof buf, &bcast));
  assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, dims, ostr, buf, sizeof buf, &overlap));
  attn_rope_params p;

  assert_status(attn_rope(NULL, x, NULL), ATTN_ERR_NULL_ARG);
  assert_status(attn_rope((attn_ctx *)fake_handle, x, NULL), ATTN_ERR_BAD_HANDLE);
  assert_status(attn_rope(ctx, NULL, NULL), ATTN_ERR_NULL_ARG);
  assert_error_mentions(ctx, "attn_rope: x is NULL");
  assert_status(attn_rope(ctx, (attn_tensor *)fake_handle, NULL), ATTN_ERR_BAD_HANDLE);
  assert_status(attn_rope(ctx, foreign, NULL), ATTN_ERR_BAD_HANDLE);
  assert_status(attn_rope(ctx, u8, NULL), ATTN_ERR_UNSUPPORTED);
  assert_status(attn_rope(ctx, x3, NULL), ATTN_ERR_SHAPE);
  assert_error_mentions(ctx, "has 3 dims but must have 4");
  attn_rope_params_init(&p);
  p.style = 2;
  assert_status(attn_rope(ctx, x, &p), ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "params.style = 2");
  const int32_t bad_r[] = {3, -2, D + 2, 1, INT32_MIN};
  for (size_t i = 0; i < sizeof bad_r / sizeof bad_r[0]; i++) {
    attn_rope_params_init(&p);
    p.rotary_dim = bad_r[i];
    assert_status(attn_rope(ctx, x, &p), ATTN_ERR_INVALID_ARG);
    assert_error_mentions(ctx, "params.rotary_dim");
  }
  assert_status(attn_rope(ctx, xodd, NULL), ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "must then be even");
  const double bad_theta[] = {1, 0.5, -10, INFINITY, NAN};
  for (size_t i = 0; i < sizeof bad_theta / sizeof bad_theta[0]; i++) {
    attn_rope_params_init(&p);
    p.theta = bad_theta[i];
    assert_status(attn_rope(ctx, x, &p), ATTN_ERR_INVALID_ARG);
    assert_error_mentions(ctx, "params.theta");
  }
  attn_rope_params_init(&p);
  p.offset = -1;
  assert_status(attn_rope(ctx, x, &p), ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "params.offset = -1");
  p.offset = INT64_MAX - 1; /* offset + L - 1 overflows */
  assert_status(attn_rope(ctx, x, &p), ATTN_ERR_INVALID_ARG);
  p.offset = INT64_MAX - (L - 1); /* the last position is INT64_MAX: fine */
  assert_ok(attn_rope(ctx, x, &p));
  memcpy(buf, sentinel, sizeof buf);
  int64_t pos[B * L] = {0, 1, 2, 3, 4, -1};
  attn_rope_params_init(&p);
  p.positions = pos;
  assert_status(attn_rope(ctx, x, &p), ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "params.positions[5] (batch 1, token 2) = -1");
  pos[5] = INT64_MIN;
  assert_status(attn_rope(ctx, x, &p), ATTN_ERR_INVALID_ARG);
  assert_status(attn_rope(ctx, bcast, NULL), ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "x.strides[1] = 0");
  assert_status(attn_rope(ctx, overlap, NULL), ATTN_ERR_INVALID_ARG);
  attn_rope_params_init(&p);
  p.struct_size = 4;
  assert_status(attn_rope(ctx, x, &p), ATTN_ERR_INVALID_ARG);
  struct {
    attn_rope_params p;
    double later;
  } newer;
  memset(&newer, 0, sizeof newer);
  attn_rope_params_init(&newer.p);
  newer.p.struct_size = sizeof newer;
  newer.later = 0.5;
  assert_status(attn_rope(ctx, x, &newer.p), ATTN_ERR_UNSUPPORTED);
  assert_error_mentions(ctx, "newer header");
  assert_memory_equal(buf, sentinel, sizeof buf);
  newer.later = 0;
  assert_ok(attn_rope(ctx, x, &newer.p));
  attn_ctx_destroy(ctx);
  attn_ctx_destroy(other);
}

/* ---------------------------------------------------------------- ALiBi */

static void alibi_eight_heads_exact(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  float s[8];
  assert_ok(attn_alibi_slopes(ctx, 8, 0, s));
  for (int h = 0; h < 8; h++)
    assert_true(s[h] == ldexpf(1.0f, -(h + 1)));
  assert_ok(attn_alibi_slopes(ctx, 8, 8, s));
  for (int h = 0; h < 8; h++)
    assert_true(s[h] == ldexpf(1.0f, -(h + 1)));
  /* One head: 2^-8. Sixteen: 2^-0.5 .. 2^-8. */
  assert_ok(attn_alibi_slopes(ctx, 1, 0, s));
  assert_true(s[0] == ldexpf(1.0f, -8));
  float s16[16];
  assert_ok(attn_alibi_slopes(ctx, 16, 0, s16));
  for (int h = 1; h < 16; h += 2)
    assert_true(s16[h] == ldexpf(1.0f, -(h + 1) / 2));
  attn_ctx_destroy(ctx);
}

static void check_alibi(attn_ctx *ctx, int32_t n, double max_bias) {
  float *got = xmalloc((size_t)n * sizeof *got);
  double *want = xmalloc((size_t)n * sizeof *want);
  assert_ok(attn_alibi_slopes(ctx, n, max_bias, got));
  ref_alibi_slopes(n, max_bias == 0 ? 8 : max_bias, want);
  double err = ref_max_rel_err(got, want, (size_t)n, 0x1p-1000);
  if (!(err <= 1e-7))
    fail_msg("alibi n %d max_bias %g: relative error %.3g", (int)n, max_bias, err);
  free(got);
  free(want);
}

static void alibi_vs_press_reference(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  const int32_t ns[] = {1, 2, 3, 4, 5, 6, 7, 12, 16, 24, 32, 40, 64, 96, 100};
  for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) {
    check_alibi(ctx, ns[i], 0);
    check_alibi(ctx, ns[i], 8);
  }
  /* Spot values of the reference list (Press et al.) for 12 heads: the 8
   * slopes of 8 heads, then 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5. */
  float s[12];
  assert_ok(attn_alibi_slopes(ctx, 12, 0, s));
  for (int h = 0; h < 8; h++)
    assert_true(s[h] == ldexpf(1.0f, -(h + 1)));
  for (int j = 0; j < 4; j++)
    assert_close(s[8 + j], pow(2.0, -0.5 - j), 6e-8, 0);
  const double biases[] = {4, 16, 0.5, 12.5};
  for (size_t b = 0; b < sizeof biases / sizeof biases[0]; b++)
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++)
      check_alibi(ctx, ns[i], biases[b]);
  check_alibi(ctx, 1 << 20, 0);
  check_alibi(ctx, (1 << 19) + 3, 0);
  attn_ctx_destroy(ctx);
}

static void alibi_bad_input(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  float s[4] = {-1, -2, -3, -4};
  const float sentinel[4] = {-1, -2, -3, -4};
  assert_status(attn_alibi_slopes(NULL, 4, 0, s), ATTN_ERR_NULL_ARG);
  assert_status(attn_alibi_slopes((attn_ctx *)fake_handle, 4, 0, s), ATTN_ERR_BAD_HANDLE);
  assert_status(attn_alibi_slopes(ctx, 4, 0, NULL), ATTN_ERR_NULL_ARG);
  assert_error_mentions(ctx, "attn_alibi_slopes: slopes is NULL");
  const int32_t bad_n[] = {0, -1, (1 << 20) + 1, INT32_MIN, INT32_MAX};
  for (size_t i = 0; i < sizeof bad_n / sizeof bad_n[0]; i++) {
    assert_status(attn_alibi_slopes(ctx, bad_n[i], 0, s), ATTN_ERR_INVALID_ARG);
    assert_error_mentions(ctx, "n_heads");
  }
  const double bad_bias[] = {-1, -INFINITY, INFINITY, NAN};
  for (size_t i = 0; i < sizeof bad_bias / sizeof bad_bias[0]; i++) {
    assert_status(attn_alibi_slopes(ctx, 4, bad_bias[i], s), ATTN_ERR_INVALID_ARG);
    assert_error_mentions(ctx, "max_bias");
  }
  assert_memory_equal(s, sentinel, sizeof s);
  attn_ctx_destroy(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(sinusoidal_vs_reference),
      cmocka_unit_test(sinusoidal_known_values),
      cmocka_unit_test(sinusoidal_shifted_lowest_frequency),
      cmocka_unit_test(sinusoidal_large_positions),
      cmocka_unit_test(sinusoidal_chunks_agree),
      cmocka_unit_test(sinusoidal_threads),
      cmocka_unit_test(sinusoidal_add),
      cmocka_unit_test(sinusoidal_bad_input),
      cmocka_unit_test(rope_vs_reference),
      cmocka_unit_test(rope_explicit_positions),
      cmocka_unit_test(rope_layouts_agree),
      cmocka_unit_test(rope_norm_and_pass_through),
      cmocka_unit_test(rope_composition_and_identity),
      cmocka_unit_test(rope_threads_agree),
      cmocka_unit_test(rope_chunks_agree),
      cmocka_unit_test(rope_bad_input),
      cmocka_unit_test(alibi_eight_heads_exact),
      cmocka_unit_test(alibi_vs_press_reference),
      cmocka_unit_test(alibi_bad_input),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
