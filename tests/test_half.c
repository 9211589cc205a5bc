/* f16 / bf16: the conversion kernels of every set this CPU runs (called
 * directly, as test_exp does, plus the portable definition in
 * src/simd/half.h), and the public side: F16/BF16 tensors, attn_tensor_copy,
 * and the operands that stay F32 refusing 2-byte data.
 *
 * The expected bits come from tests/reference/ref_half.c (double
 * arithmetic: decode by ldexp, round by rint on the scaled value, encode by
 * frexp), sharing nothing with the library's integer code:
 * - widening: all 65536 patterns of each type;
 * - narrowing: every f32 whose upper 16 bits are any of the 65536 patterns,
 *   with lower 16 bits from a list that straddles the f16 rounding point
 *   (bit 13) and the bf16 one (bit 16): ties, one below, one above, plus
 *   random ones. f16 subnormal results round at bits 14..24, which the
 *   upper-16 sweep covers with exact ties (low bits 0);
 * - round trip half -> f32 -> half exact for every non-NaN pattern;
 * - a table of boundary cases with hand-written bits;
 * - with ATTN_TEST_EXHAUSTIVE=1, every one of the 2^32 f32 patterns.
 * ctest runs the suite again with ATTN_KERNELS forced to each set, which
 * attn_tensor_copy (the public path) then uses. */
#include "test_util.h"

#include <float.h>

#include "kernel_sets.h"
#include "ref_half.h"
#include "simd/half.h"

/* ---------------- the kernel sets ---------------- */

typedef struct {
  const char *name;
  void (*to_f16)(const float *, uint16_t *, int64_t);
  void (*from_f16)(const uint16_t *, float *, int64_t);
  void (*to_bf16)(const float *, uint16_t *, int64_t);
  void (*from_bf16)(const uint16_t *, float *, int64_t);
} cset;

static int sets(cset *out) {
  int n = 0;
  /* The portable definition the SIMD tails use. */
  out[n++] = (cset){"half.h", half_rows_f32_to_f16, half_rows_f16_to_f32,
                    half_rows_f32_to_bf16, half_rows_bf16_to_f32};
  const attn_kernels *ks[TU_MAX_SETS];
  int nk = tu_kernel_sets(ks, 1);
#if defined(ATTN_HAVE_X86_KERNELS)
  if (!__builtin_cpu_supports("avx512bf16"))
    print_message("avx512bf16 not on this CPU: that set is not tested\n");
#endif
  for (int i = 0; i < nk; i++)
    out[n++] = (cset){ks[i]->name, ks[i]->f32_to_f16, ks[i]->f16_to_f32, ks[i]->f32_to_bf16,
                      ks[i]->bf16_to_f32};
  return n;
}

/* Lower 16 bits paired with every upper 16: 0x1000 is the f16 tie at
 * bit 13, 0x8000 the bf16 tie at bit 16, with neighbours. */
static const uint16_t LOWS[] = {0x0000, 0x0001, 0x0fff, 0x1000, 0x1001, 0x1fff, 0x2000,
                                0x2fff, 0x3000, 0x3001, 0x7fff, 0x8000, 0x8001, 0x9000,
                                0xefff, 0xf000, 0xf001, 0xffff};
#define NRANDOM 4
#define PER_HIGH (sizeof LOWS / sizeof LOWS[0] + NRANDOM)
#define NSWEEP (65536 * PER_HIGH)

static float *sweep_input(void) {
  float *x = malloc(NSWEEP * sizeof *x);
  assert_non_null(x);
  tu_rng r = {0x5eed1234abcdull};
  size_t k = 0;
  for (uint32_t hi = 0; hi < 65536; hi++) {
    for (size_t j = 0; j < sizeof LOWS / sizeof LOWS[0]; j++)
      x[k++] = tu_float(hi << 16 | LOWS[j]);
    for (int j = 0; j < NRANDOM; j++)
      x[k++] = tu_float(hi << 16 | (uint32_t)(tu_next(&r) >> 48));
  }
  return x;
}

static void narrow_sweep(void **state) {
  (void)state;
  float *x = sweep_input();
  uint16_t *want16 = malloc(NSWEEP * 2), *wantb = malloc(NSWEEP * 2), *got = malloc(NSWEEP * 2);
  assert_true(want16 && wantb && got);
  for (size_t i = 0; i < NSWEEP; i++) {
    want16[i] = ref_to_f16(tu_bits(x[i]));
    wantb[i] = ref_to_bf16(tu_bits(x[i]));
  }
  cset s[6];
  int ns = sets(s);
  for (int si = 0; si < ns; si++) {
    /* One long row (odd length: the tail runs too), then rows of every
     * length up to 70 at odd offsets. */
    int64_t n = NSWEEP - 3;
    for (int fmt_i = 0; fmt_i < 2; fmt_i++) {
      void (*fn)(const float *, uint16_t *, int64_t) = fmt_i ? s[si].to_bf16 : s[si].to_f16;
      const uint16_t *want = fmt_i ? wantb : want16;
      memset(got, 0xa5, NSWEEP * 2);
      fn(x, got, n);
      for (int64_t off = 1, len = 0; len <= 70; off += len + 7, len++)
        fn(x + off, got + off, len);
      for (int64_t i = 0; i < n; i++)
        if (got[i] != want[i])
          fail_msg("%s: f32 %08x -> %s gives %04x, expected %04x", s[si].name,
                   tu_bits(x[i]), fmt_i ? "bf16" : "f16", got[i], want[i]);
      assert_int_equal(got[n], 0xa5a5); /* nothing written past the row */
    }
  }
  free(x), free(want16), free(wantb), free(got);
}

static void widen_all_and_round_trip(void **state) {
  (void)state;
  uint16_t *h = malloc(65536 * 2), *back = malloc(65536 * 2);
  float *y = malloc(65536 * sizeof *y);
  assert_true(h && back && y);
  for (uint32_t i = 0; i < 65536; i++)
    h[i] = (uint16_t)i;
  cset s[6];
  int ns = sets(s);
  for (int si = 0; si < ns; si++)
    for (int bf = 0; bf < 2; bf++) {
      const char *tn = bf ? "bf16" : "f16";
      (bf ? s[si].from_bf16 : s[si].from_f16)(h, y, 65536);
      for (uint32_t i = 0; i < 65536; i++) {
        uint32_t want = bf ? ref_from_bf16((uint16_t)i) : ref_from_f16((uint16_t)i);
        if (tu_bits(y[i]) != want)
          fail_msg("%s: %s %04x -> f32 %08x, expected %08x", s[si].name, tn, i,
                   tu_bits(y[i]), want);
      }
      (bf ? s[si].to_bf16 : s[si].to_f16)(y, back, 65536);
      for (uint32_t i = 0; i < 65536; i++) {
        if (isnan(y[i])) { /* comes back quiet, payload kept */
          uint16_t q = (uint16_t)(i | (bf ? 0x40u : 0x200u));
          if (back[i] != q)
            fail_msg("%s: %s NaN %04x came back as %04x, expected %04x", s[si].name, tn, i,
                     back[i], q);
        } else if (back[i] != i) {
          fail_msg("%s: %s %04x -> f32 -> %04x", s[si].name, tn, i, back[i]);
        }
      }
    }
  free(h), free(back), free(y);
}

/* Hand-written cases: f32 bits, expected f16, expected bf16. */
static const struct {
  uint32_t x;
  uint16_t f16, bf16;
  const char *what;
} CASES[] = {
    {0x00000000, 0x0000, 0x0000, "+0"},
    {0x80000000, 0x8000, 0x8000, "-0"},
    {0x3f800000, 0x3c00, 0x3f80, "1"},
    {0x477fe000, 0x7bff, 0x4780, "65504, f16 max finite"},
    {0x477fefff, 0x7bff, 0x4780, "just below 65520"},
    {0x477ff000, 0x7c00, 0x4780, "65520: f16 overflow threshold (tie to even = 65536)"},
    {0xc77ff000, 0xfc00, 0xc780, "-65520"},
    {0x47800000, 0x7c00, 0x4780, "65536"},
    {0x7f7fffff, 0x7c00, 0x7f80, "FLT_MAX: bf16 rounds past its max finite"},
    {0x7f7f7fff, 0x7c00, 0x7f7f, "below bf16's overflow midpoint"},
    {0x7f7f8000, 0x7c00, 0x7f80, "bf16 overflow midpoint (tie, odd below): Inf"},
    {0x7f800000, 0x7c00, 0x7f80, "+Inf"},
    {0xff800000, 0xfc00, 0xff80, "-Inf"},
    {0x7fc00000, 0x7e00, 0x7fc0, "quiet NaN"},
    {0x7f800001, 0x7e00, 0x7fc0, "signalling NaN, low payload: made quiet"},
    {0xffa12345, 0xff09, 0xffe1, "negative NaN with payload"},
    {0x33800000, 0x0001, 0x3380, "2^-24, smallest f16 subnormal"},
    {0x33000000, 0x0000, 0x3300, "2^-25: tie to even 0"},
    {0x33000001, 0x0001, 0x3300, "just above 2^-25"},
    {0x33c00000, 0x0002, 0x33c0, "1.5 * 2^-24: tie up to even 2"},
    {0x34200000, 0x0002, 0x3420, "2.5 * 2^-24: tie down to even 2"},
    {0x34400000, 0x0003, 0x3440, "3 * 2^-24: exact subnormal"},
    {0x33a00000, 0x0001, 0x33a0, "1.25 * 2^-24"},
    {0x387fc000, 0x03ff, 0x3880, "largest f16 subnormal"},
    {0x387fe000, 0x0400, 0x3880, "tie between the largest subnormal and 2^-14: even"},
    {0x38800000, 0x0400, 0x3880, "2^-14, smallest f16 normal"},
    {0x3f801000, 0x3c00, 0x3f80, "1 + 2^-11: f16 tie to even"},
    {0x3f803000, 0x3c02, 0x3f80, "1 + 3 * 2^-11: f16 tie to even (up)"},
    {0x3f801001, 0x3c01, 0x3f80, "just above the f16 tie"},
    {0x3f808000, 0x3c04, 0x3f80, "1 + 2^-8: bf16 tie to even"},
    {0x3f818000, 0x3c0c, 0x3f82, "1 + 3 * 2^-8: bf16 tie to even (up)"},
    {0x00000001, 0x0000, 0x0000, "smallest f32 subnormal"},
    {0x00008000, 0x0000, 0x0000, "bf16 tie at the bottom: even 0"},
    {0x00018000, 0x0000, 0x0002, "bf16 subnormal tie: up to even"},
    {0x807fffff, 0x8000, 0x8080, "largest negative f32 subnormal: bf16 rounds up to normal"},
};

static void boundary_cases(void **state) {
  (void)state;
  enum { N = sizeof CASES / sizeof CASES[0] };
  /* Laid out 40 apart so every case sits in a full vector of every set and
   * in the avx512bf16 block test (blocks of 32). */
  static float x[N * 40];
  static uint16_t y[N * 40];
  for (int i = 0; i < N * 40; i++)
    x[i] = 1.0f;
  for (int i = 0; i < N; i++) {
    x[i * 40 + 3] = tu_float(CASES[i].x);
    /* The reference agrees with the hand-written bits. */
    assert_int_equal(ref_to_f16(CASES[i].x), CASES[i].f16);
    assert_int_equal(ref_to_bf16(CASES[i].x), CASES[i].bf16);
  }
  cset s[6];
  int ns = sets(s);
  for (int si = 0; si < ns; si++)
    for (int bf = 0; bf < 2; bf++) {
      (bf ? s[si].to_bf16 : s[si].to_f16)(x, y, N * 40);
      for (int i = 0; i < N; i++) {
        uint16_t want = bf ? CASES[i].bf16 : CASES[i].f16;
        if (y[i * 40 + 3] != want)
          fail_msg("%s: %s (%08x) -> %s %04x, expected %04x", s[si].name, CASES[i].what,
                   CASES[i].x, bf ? "bf16" : "f16", y[i * 40 + 3], want);
      }
    }
}

/* Every f32 bit pattern through every set, against the reference: 2^32
 * inputs, minutes of CPU, so only with ATTN_TEST_EXHAUSTIVE=1 (run by hand
 * when a conversion kernel changes; the sweep above is the ctest one). */
static void narrow_exhaustive(void **state) {
  (void)state;
  const char *on = getenv("ATTN_TEST_EXHAUSTIVE");
  if (!on || strcmp(on, "1")) {
    skip();
    return;
  }
  enum { CH = 1 << 20 };
  float *x = malloc(CH * sizeof *x);
  uint16_t *w16 = malloc(CH * 2), *wb = malloc(CH * 2), *got = malloc(CH * 2);
  assert_true(x && w16 && wb && got);
  cset s[6];
  int ns = sets(s);
  for (uint64_t base = 0; base < (1ull << 32); base += CH) {
    for (uint32_t i = 0; i < CH; i++) {
      uint32_t b = (uint32_t)(base + i);
      x[i] = tu_float(b);
      w16[i] = ref_to_f16(b);
      wb[i] = ref_to_bf16(b);
    }
    for (int si = 0; si < ns; si++)
      for (int bf = 0; bf < 2; bf++) {
        (bf ? s[si].to_bf16 : s[si].to_f16)(x, got, CH);
        if (memcmp(got, bf ? wb : w16, CH * 2))
          for (uint32_t i = 0; i < CH; i++)
            if (got[i] != (bf ? wb : w16)[i])
              fail_msg("%s: f32 %08x -> %s %04x, expected %04x", s[si].name,
                       (uint32_t)(base + i), bf ? "bf16" : "f16", got[i], (bf ? wb : w16)[i]);
      }
  }
  print_message("all 2^32 f32 patterns agree in %d sets\n", ns);
  free(x), free(w16), free(wb), free(got);
}

/* ---------------- public API ---------------- */

static attn_ctx *new_ctx(void) {
  attn_ctx *ctx = NULL;
  assert_ok(attn_ctx_create(&ctx, NULL));
  return ctx;
}

static void half_tensors(void **state) {
  (void)state;
  attn_ctx *ctx = new_ctx();
  int64_t dims[2] = {3, 5};
  attn_tensor *t = NULL;
  assert_ok(attn_tensor_new(ctx, ATTN_DTYPE_F16, 2, dims, &t));
  assert_int_equal(attn_tensor_dtype(t), ATTN_DTYPE_F16);
  uint16_t buf[16] = {0};
  attn_tensor *w = NULL;
  /* 15 elements of 2 bytes: 30 bytes needed. */
  assert_status(attn_tensor_wrap(ctx, ATTN_DTYPE_BF16, 2, dims, NULL, buf, 29, &w),
                ATTN_ERR_INVALID_ARG);
  assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_BF16, 2, dims, NULL, buf, 30, &w));
  assert_int_equal(attn_tensor_dtype(w), ATTN_DTYPE_BF16);
  /* 2-byte alignment required. */
  assert_status(attn_tensor_wrap(ctx, ATTN_DTYPE_F16, 2, dims, NULL, (char *)buf + 1, 31, &w),
                ATTN_ERR_INVALID_ARG);
  assert_non_null(strstr(attn_ctx_last_error(ctx), "F16"));
  assert_status(attn_tensor_new(ctx, 4, 2, dims, &t), ATTN_ERR_INVALID_ARG);
  attn_ctx_destroy(ctx);
}

/* attn_tensor_copy through the dispatched set, every pair of float types,
 * strided and broadcast views, against the reference. */
static void copy_converts(void **state) {
  (void)state;
  attn_ctx *ctx = new_ctx();
  enum { R = 7, C = 37 };
  static float x[R][C];
  tu_rng r = {42};
  for (int i = 0; i < R; i++)
    for (int j = 0; j < C; j++)
      x[i][j] = tu_float((uint32_t)(tu_next(&r) >> 32)); /* any pattern, NaN included */
  x[0][0] = 65520.0f;
  x[0][1] = -0.0f;
  int64_t dims[2] = {R, C};
  attn_tensor *xf = NULL, *h = NULL, *b = NULL, *back = NULL, *hb = NULL;
  assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 2, dims, NULL, x, sizeof x, &xf));
  assert_ok(attn_tensor_new(ctx, ATTN_DTYPE_F16, 2, dims, &h));
  assert_ok(attn_tensor_new(ctx, ATTN_DTYPE_BF16, 2, dims, &b));
  assert_ok(attn_tensor_new(ctx, ATTN_DTYPE_F32, 2, dims, &back));
  assert_ok(attn_tensor_new(ctx, ATTN_DTYPE_BF16, 2, dims, &hb));
  assert_ok(attn_tensor_copy(ctx, xf, h));
  assert_ok(attn_tensor_copy(ctx, xf, b));
  const uint16_t *ph = attn_tensor_data(h), *pb = attn_tensor_data(b), *phb;
  for (int i = 0; i < R * C; i++) {
    uint32_t xb = tu_bits((&x[0][0])[i]);
    assert_int_equal(ph[i], ref_to_f16(xb));
    assert_int_equal(pb[i], ref_to_bf16(xb));
  }
  assert_ok(attn_tensor_copy(ctx, h, back));
  const float *pf = attn_tensor_data(back);
  for (int i = 0; i < R * C; i++)
    assert_int_equal(tu_bits(pf[i]), ref_from_f16(ph[i]));
  assert_ok(attn_tensor_copy(ctx, b, back));
  for (int i = 0; i < R * C; i++)
    assert_int_equal(tu_bits(pf[i]), ref_from_bf16(pb[i]));
  /* f16 -> bf16: one rounding of the (exact) f16 value. */
  assert_ok(attn_tensor_copy(ctx, h, hb));
  phb = attn_tensor_data(hb);
  for (int i = 0; i < R * C; i++)
    assert_int_equal(phb[i], ref_to_bf16(ref_from_f16(ph[i])));
  /* bf16 -> f16 likewise. */
  assert_ok(attn_tensor_copy(ctx, b, h));
  for (int i = 0; i < R * C; i++)
    assert_int_equal(ph[i], ref_to_f16(ref_from_bf16(pb[i])));
  /* Same type: a plain copy; the very same view: nothing to do. */
  assert_ok(attn_tensor_copy(ctx, b, hb));
  assert_memory_equal(phb, pb, R * C * 2);
  assert_ok(attn_tensor_copy(ctx, b, b));

  /* Strided source (every other column of a wider buffer, rows reversed
   * through the buffer layout) and a broadcast one (stride 0). */
  static uint16_t wide[R][2 * C];
  for (int i = 0; i < R; i++)
    for (int j = 0; j < 2 * C; j++)
      wide[i][j] = (uint16_t)(0x3c00 + i * 64 + j);
  int64_t d1[3] = {R, C, 1}, s1[3] = {2 * C, 1, 1};
  attn_tensor *sv = NULL, *out = NULL, *bc = NULL;
  assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_F16, 3, d1, s1, wide, sizeof wide, &sv));
  assert_ok(attn_tensor_new(ctx, ATTN_DTYPE_F32, 3, d1, &out));
  assert_ok(attn_tensor_copy(ctx, sv, out));
  const float *po = attn_tensor_data(out);
  for (int i = 0; i < R; i++)
    for (int j = 0; j < C; j++)
      assert_int_equal(tu_bits(po[i * C + j]), ref_from_f16(wide[i][j]));
  int64_t s0[3] = {0, 1, 1};
  assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_F16, 3, d1, s0, wide, sizeof wide, &bc));
  assert_ok(attn_tensor_copy(ctx, bc, out));
  for (int i = 0; i < R; i++)
    for (int j = 0; j < C; j++)
      assert_int_equal(tu_bits(po[i * C + j]), ref_from_f16(wide[0][j]));
  attn_ctx_destroy(ctx);
}

static void copy_refuses(void **state) {
  (void)state;
  attn_ctx *ctx = new_ctx();
  int64_t dims[2] = {4, 8}, other[2] = {4, 7};
  static uint16_t mem[64];
  attn_tensor *h = NULL, *f = NULL, *g = NULL, *u = NULL, *lo = NULL, *hi = NULL, *bc = NULL;
  assert_ok(attn_tensor_new(ctx, ATTN_DTYPE_F16, 2, dims, &h));
  assert_ok(attn_tensor_new(ctx, ATTN_DTYPE_F32, 2, dims, &f));
  assert_ok(attn_tensor_new(ctx, ATTN_DTYPE_F32, 2, other, &g));
  assert_ok(attn_tensor_new(ctx, ATTN_DTYPE_U8, 2, dims, &u));
  float *pf = attn_tensor_data(f);
  for (int i = 0; i < 32; i++)
    pf[i] = 7.0f;
  assert_status(attn_tensor_copy(NULL, h, f), ATTN_ERR_NULL_ARG);
  assert_status(attn_tensor_copy(ctx, NULL, f), ATTN_ERR_NULL_ARG);
  assert_status(attn_tensor_copy(ctx, h, NULL), ATTN_ERR_NULL_ARG);
  assert_status(attn_tensor_copy(ctx, h, g), ATTN_ERR_SHAPE);
  assert_status(attn_tensor_copy(ctx, u, f), ATTN_ERR_UNSUPPORTED);
  assert_non_null(strstr(attn_ctx_last_error(ctx), "U8"));
  assert_status(attn_tensor_copy(ctx, h, u), ATTN_ERR_UNSUPPORTED);
  /* Overlapping views of one buffer, different types or offsets. */
  assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_F16, 2, dims, NULL, mem, 64, &lo));
  assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_F16, 2, dims, NULL, mem + 8, 64, &hi));
  assert_status(attn_tensor_copy(ctx, lo, hi), ATTN_ERR_ALIASING);
  int64_t s0[2] = {0, 1};
  assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 2, dims, s0, pf, 32, &bc));
  assert_status(attn_tensor_copy(ctx, h, bc), ATTN_ERR_INVALID_ARG); /* output broadcasts */
  for (int i = 0; i < 32; i++)
    assert_true(pf[i] == 7.0f); /* nothing written */
  attn_ctx_destroy(ctx);
}

/* The operands that stay F32 refuse f16/bf16 (they would otherwise be read
 * or written as floats) and nothing is written: additive masks, and the
 * optional lse and weights outputs. (The ops' half data paths are in
 * test_half_ops.) */
static void ops_refuse_half(void **state) {
  (void)state;
  attn_ctx *ctx = new_ctx();
  for (int32_t dt = ATTN_DTYPE_F16; dt <= ATTN_DTYPE_BF16; dt++) {
    int64_t d2[2] = {4, 8}, d4[4] = {1, 2, 4, 8}, d3[3] = {1, 2, 4};
    attn_tensor *h2, *f2, *h4, *f4, *h3;
    assert_ok(attn_tensor_new(ctx, dt, 2, d2, &h2));
    assert_ok(attn_tensor_new(ctx, ATTN_DTYPE_F32, 2, d2, &f2));
    assert_ok(attn_tensor_new(ctx, dt, 4, d4, &h4));
    assert_ok(attn_tensor_new(ctx, ATTN_DTYPE_F32, 4, d4, &f4));
    assert_ok(attn_tensor_new(ctx, dt, 3, d3, &h3));
    uint16_t *hp = attn_tensor_data(h2), *hp4 = attn_tensor_data(h4);
    float *fp = attn_tensor_data(f2), *fp4 = attn_tensor_data(f4);
    for (int i = 0; i < 32; i++)
      hp[i] = hp4[i] = 0x1234, fp[i] = fp4[i] = 5.0f;
    attn_softmax_params sp;
    attn_softmax_params_init(&sp);
    sp.mask = h2;
    attn_sdpa_params qp;
    attn_sdpa_params_init(&qp);
#define REFUSED(call)                                                                    \
  do {                                                                                   \
    assert_status(call, ATTN_ERR_UNSUPPORTED);                                           \
    assert_non_null(strstr(attn_ctx_last_error(ctx), "must be F32"));                    \
  } while (0)
    REFUSED(attn_softmax(ctx, f2, f2, &sp));
    REFUSED(attn_log_softmax(ctx, f2, f2, &sp));
    qp.mask = h4;
    REFUSED(attn_sdpa(ctx, f4, f4, f4, f4, &qp));
    qp.mask = NULL;
    qp.weights = h4;
    REFUSED(attn_sdpa(ctx, f4, f4, f4, f4, &qp));
    qp.weights = NULL;
    qp.lse = h3;
    REFUSED(attn_sdpa(ctx, f4, f4, f4, f4, &qp));
#undef REFUSED
    for (int i = 0; i < 32; i++) {
      assert_int_equal(hp[i], 0x1234);
      assert_int_equal(hp4[i], 0x1234);
      assert_true(fp[i] == 5.0f && fp4[i] == 5.0f);
    }
  }
  attn_ctx_destroy(ctx);
}

/* ctest forces each set through ATTN_KERNELS; the public copy must then
 * use it (the name is in attn_cpu_info) and still give the reference bits
 * (copy_converts). */
static void forced_set_in_use(void **state) {
  (void)state;
  const char *want = getenv("ATTN_KERNELS");
  const char *info = attn_cpu_info();
  print_message("%s\n", info);
  if (!want || !*want)
    return;
#if defined(__x86_64__)
  __builtin_cpu_init();
  int has = !strcmp(want, "sse2") ||
            (!strcmp(want, "avx2") && __builtin_cpu_supports("avx2") &&
             __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) ||
            (!strcmp(want, "avx512") && __builtin_cpu_supports("avx512f")) ||
            (!strcmp(want, "avx512bf16") && __builtin_cpu_supports("avx512bf16"));
  char expect[64];
  snprintf(expect, sizeof expect, "kernels: %s", want);
  const char *at = strstr(info, expect);
  /* "kernels: avx512" must not be satisfied by "kernels: avx512bf16". */
  if (has && !(at && (at[strlen(expect)] == '\0' || at[strlen(expect)] == ' ')))
    fail_msg("ATTN_KERNELS=%s but attn_cpu_info() = \"%s\"", want, info);
  if (!has && !strstr(info, "refused"))
    fail_msg("ATTN_KERNELS=%s (not runnable) but attn_cpu_info() = \"%s\"", want, info);
#endif
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(boundary_cases),   cmocka_unit_test(widen_all_and_round_trip),
      cmocka_unit_test(narrow_sweep),     cmocka_unit_test(narrow_exhaustive),
      cmocka_unit_test(half_tensors),
      cmocka_unit_test(copy_converts),    cmocka_unit_test(copy_refuses),
      cmocka_unit_test(ops_refuse_half),  cmocka_unit_test(forced_set_in_use),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
