/* Fuzz target: positional encodings (attn_sinusoidal, attn_sinusoidal_add,
 * attn_rope, attn_alibi_slopes). The input chooses the op, shapes, strides,
 * every parameter (layout/style enums out of range, base/theta/offset
 * NaN, Inf, huge or <= 1, explicit positions, rotary_dim odd or too large,
 * struct sizes) and the data. Checks: on failure nothing is written; on
 * success only the tensor's elements change and they match the header's
 * formulas computed here in float64 (positions within 1e6; beyond, values
 * stay in [-1, 1] for a table and rotations keep each pair's norm). */
#include "fuzz_common.h"

#define MAX_ELEMS 100000

/* The table entry (position pos, column j) as the header defines it. */
static double pe_value(int32_t layout, int64_t D, double base, double pos, int64_t j) {
  int64_t h = D / 2;
  double lb = log(base);
  switch (layout) {
  case ATTN_PE_INTERLEAVED: {
    int64_t i = j / 2;
    double w = exp(-(double)(2 * i) / (double)D * lb);
    return (j & 1) ? cos(pos * w) : sin(pos * w); /* odd D: the last column is a sin */
  }
  case ATTN_PE_SIN_COS:
  case ATTN_PE_SIN_COS_SHIFTED:
  case ATTN_PE_COS_SIN: {
    if (j >= 2 * h)
      return 0.0; /* odd D */
    int64_t i = j < h ? j : j - h;
    double e = layout == ATTN_PE_SIN_COS_SHIFTED ? (double)i / (double)(h - 1)
                                                 : (double)i / (double)h;
    double w = exp(-e * lb);
    int first = j < h;
    if (layout == ATTN_PE_COS_SIN)
      return first ? cos(pos * w) : sin(pos * w);
    return first ? sin(pos * w) : cos(pos * w);
  }
  default:
    return NAN;
  }
}

/* Element `off` of t read from buf (t's buffer now, or its snapshot). */
static float rdf(const fz_tensor *t, const unsigned char *buf, int64_t off) {
  fz_tensor view = *t;
  view.buf = (unsigned char *)buf;
  return fz_read(&view, off);
}

/* Sum of the data's offsets for index (a, b, c[, d]) of a 2..4-D tensor. */
static int64_t off3(const fz_tensor *t, int64_t b, int64_t l, int64_t j) {
  if (t->ndim == 2)
    return l * t->eff[0] + j * t->eff[1];
  return b * t->eff[0] + l * t->eff[1] + j * t->eff[2];
}

static void fuzz_sinusoidal(fz_in *in, attn_ctx *ctx, fz_alloc_state *a, int add) {
  int32_t nd = add ? (int32_t)fz_range(in, 2, 3) : 2;
  if (fz_chance(in, 6))
    nd = (int32_t)fz_range(in, 1, 4);
  int64_t dims[4];
  for (int i = 0; i < 4; i++)
    dims[i] = fz_dim(in, 9);
  if (fz_chance(in, 24))
    dims[nd - 1] = fz_range(in, 10, 300);
  if (fz_chance(in, 24) && nd >= 2)
    dims[nd - 2] = fz_range(in, 10, 2000);
  fz_tensor x;
  fz_make_tensor(in, ctx, &x, fz_float_dtype(in), nd, dims, add ? FZ_INPUT : FZ_OUTPUT);
  double u = fz_half_ulp(x.dtype); /* a half x: one more rounding */
  int64_t L = nd >= 2 ? dims[nd - 2] : 1, D = dims[nd - 1];
  double *positions = NULL;
  attn_sinusoidal_params p, eff;
  attn_sinusoidal_params_init(&p);
  p.layout = fz_enum(in, 4);
  if (fz_chance(in, 64))
    p.base = fz_chance(in, 200) ? (double)fz_range(in, 2, 20000) : fz_double(in);
  if (fz_chance(in, 64))
    p.offset = fz_chance(in, 200) ? (double)fz_range(in, -100, 5000) / 4 : fz_double(in);
  if (fz_chance(in, 3))
    p.reserved_ = 1;
  if (L >= 1 && L <= 100000 && fz_chance(in, 48)) {
    positions = malloc((size_t)L * sizeof *positions);
    FZ_CHECK(positions, "malloc");
    for (int64_t l = 0; l < L; l++)
      positions[l] = fz_chance(in, 250) ? (double)fz_range(in, -50, 100000) / 8 : fz_double(in);
    p.positions = positions;
  }
  unsigned char raw[sizeof p + 64];
  memset(raw, 0, sizeof raw);
  memcpy(raw, &p, sizeof p);
  size_t ss = fz_struct_size(in, raw, sizeof p, sizeof raw);
  memcpy(raw, &ss, sizeof ss);
  attn_sinusoidal_params_init(&eff);
  int readable = fz_effective_params(&eff, sizeof eff, raw, ss);
  double base = eff.base == 0 ? 10000.0 : eff.base;
  int valid_params = readable && eff.layout >= 0 && eff.layout <= 3 && eff.reserved_ == 0 &&
                     isfinite(base) && base > 1 && isfinite(eff.offset) &&
                     !(eff.layout == ATTN_PE_SIN_COS_SHIFTED && D < 4 && D > 0);
  if (valid_params && eff.positions)
    for (int64_t l = 0; l < L; l++)
      if (!isfinite(eff.positions[l]))
        valid_params = 0;

  if (!x.t || fz_numel(&x) <= MAX_ELEMS) {
    if (fz_chance(in, 10))
      a->fail_at = a->allocs + 1;
    attn_status st = add ? attn_sinusoidal_add(ctx, x.t, (const attn_sinusoidal_params *)raw)
                         : attn_sinusoidal(ctx, x.t, (const attn_sinusoidal_params *)raw);
    a->fail_at = 0;
    if (st != ATTN_OK) {
      FZ_CHECK(fz_unchanged(&x), "x written by a failed call (%s)", attn_status_string(st));
      FZ_CHECK(attn_ctx_last_error(ctx)[0], "no message");
      if (x.t && !x.exotic && !fz_broadcasts(&x) && valid_params && nd >= 2 &&
          nd <= (add ? 3 : 2))
        FZ_CHECK(st == ATTN_ERR_NO_MEMORY, "valid call refused: %s: %s",
                 attn_status_string(st), attn_ctx_last_error(ctx));
    } else {
      FZ_CHECK(valid_params && nd >= 2 && nd <= (add ? 3 : 2), "bad arguments accepted");
      fz_check_gaps(&x, "x");
      int64_t B = nd == 3 ? dims[0] : 1;
      for (int64_t b = 0; b < B && fz_numel(&x) > 0; b++)
        for (int64_t l = 0; l < L; l++) {
          double pos = eff.positions ? eff.positions[l] : eff.offset + (double)l;
          for (int64_t j = 0; j < D; j++) {
            int64_t o = off3(&x, b, l, j);
            double got = rdf(&x, x.buf, o);
            double pe = pe_value(eff.layout, D, base, pos, j);
            if (fabs(pos) <= 1e6) {
              double before = add ? rdf(&x, x.snap, o) : 0.0;
              double want = (double)(float)((float)before + (float)pe);
              if (!isfinite(before)) {
                FZ_CHECK(isnan(want) ? isnan(got) : got == want,
                         "b %lld l %lld j %lld: %g + pe = %g", (long long)b, (long long)l,
                         (long long)j, before, got);
                continue;
              }
              double tol = 2e-6 + 2.4e-7 * fabs(before) + u * fabs(before + pe);
              if (x.dtype == ATTN_DTYPE_F16 && fabs(before + pe) > 65504)
                continue; /* may round to Inf: right, and not this check's business */
              FZ_CHECK(fabs(got - (before + pe)) <= tol,
                       "b %lld l %lld j %lld pos %.17g layout %d base %g: got %.9g, expected "
                       "%.9g",
                       (long long)b, (long long)l, (long long)j, pos, (int)eff.layout, base, got,
                       before + pe);
            } else if (!add) {
              FZ_CHECK(fabs(got) <= 1.0, "table value %g outside [-1, 1]", got);
            }
          }
        }
    }
  }
  fz_tensor_release(&x);
  free(positions);
}

static void fuzz_rope(fz_in *in, attn_ctx *ctx, fz_alloc_state *a) {
  int32_t nd = fz_chance(in, 250) ? 4 : (int32_t)fz_range(in, 1, 3);
  int64_t dims[4];
  for (int i = 0; i < 4; i++)
    dims[i] = fz_dim(in, 5);
  if (fz_chance(in, 32))
    dims[3] = 2 * fz_range(in, 1, 80);
  if (fz_chance(in, 16)) /* up to three of angles.h's 256-position spans in one call */
    dims[2] = fz_range(in, 10, 600);
  fz_tensor x;
  fz_make_tensor(in, ctx, &x, fz_float_dtype(in), nd, dims, FZ_INPUT);
  int64_t B = dims[0], L = dims[2], D = dims[3];
  size_t es = fz_dtype_size(x.dtype);
  double hu = fz_half_ulp(x.dtype);
  attn_rope_params p, eff;
  attn_rope_params_init(&p);
  p.style = fz_enum(in, 2);
  if (fz_chance(in, 80))
    p.rotary_dim = fz_chance(in, 200) ? (int32_t)(2 * fz_range(in, 0, D / 2 > 0 ? D / 2 : 1))
                                      : (int32_t)fz_u32(in);
  if (fz_chance(in, 64))
    p.theta = fz_chance(in, 200) ? (double)fz_range(in, 2, 1000000) : fz_double(in);
  if (fz_chance(in, 64))
    p.offset = fz_chance(in, 200) ? fz_range(in, 0, 100000) : (int64_t)fz_u64(in);
  int64_t *positions = NULL;
  if (B >= 1 && L >= 1 && B <= 4096 && L <= 4096 && B * L <= 100000 && fz_chance(in, 48)) {
    positions = malloc((size_t)(B * L) * sizeof *positions);
    FZ_CHECK(positions, "malloc");
    for (int64_t i = 0; i < B * L; i++)
      positions[i] = fz_chance(in, 250) ? fz_range(in, 0, 200000) : (int64_t)fz_u64(in);
    p.positions = positions;
  }
  unsigned char raw[sizeof p + 64];
  memset(raw, 0, sizeof raw);
  memcpy(raw, &p, sizeof p);
  size_t ss = fz_struct_size(in, raw, sizeof p, sizeof raw);
  memcpy(raw, &ss, sizeof ss);
  attn_rope_params_init(&eff);
  int readable = fz_effective_params(&eff, sizeof eff, raw, ss);
  int64_t r = eff.rotary_dim == 0 ? D : eff.rotary_dim;
  double theta = eff.theta == 0 ? 10000.0 : eff.theta;
  int valid = readable && (eff.style == 0 || eff.style == 1) && r >= 0 && r <= D && !(r & 1) &&
              isfinite(theta) && theta > 1 && eff.offset >= 0 &&
              (L <= 0 || eff.positions || eff.offset <= INT64_MAX - (L - 1));
  if (valid && eff.positions)
    for (int64_t i = 0; i < B * L; i++)
      if (eff.positions[i] < 0)
        valid = 0;

  if (!x.t || fz_numel(&x) <= MAX_ELEMS) {
    if (fz_chance(in, 10))
      a->fail_at = a->allocs + 1;
    attn_status st = attn_rope(ctx, x.t, (const attn_rope_params *)raw);
    a->fail_at = 0;
    if (st != ATTN_OK) {
      FZ_CHECK(fz_unchanged(&x), "x written by a failed call (%s)", attn_status_string(st));
      FZ_CHECK(attn_ctx_last_error(ctx)[0], "no message");
      if (x.t && !x.exotic && !fz_broadcasts(&x) && valid && nd == 4)
        FZ_CHECK(st == ATTN_ERR_NO_MEMORY, "valid call refused: %s: %s",
                 attn_status_string(st), attn_ctx_last_error(ctx));
    } else {
      FZ_CHECK(valid && nd == 4, "bad arguments accepted");
      fz_check_gaps(&x, "x");
      int64_t H = dims[1], half = r / 2;
      for (int64_t b = 0; b < B && fz_numel(&x) > 0; b++)
        for (int64_t h = 0; h < H; h++)
          for (int64_t l = 0; l < L; l++) {
            int64_t row = b * x.eff[0] + h * x.eff[1] + l * x.eff[2];
            double pos = (double)(eff.positions ? eff.positions[b * L + l] : eff.offset + l);
            for (int64_t d = r; d < D; d++) /* untouched, bit for bit */
              FZ_CHECK(memcmp(x.buf + x.offset + (row + d) * (int64_t)es,
                              x.snap + x.offset + (row + d) * (int64_t)es, es) == 0,
                       "pass-through dim %lld changed", (long long)d);
            for (int64_t i = 0; i < half; i++) {
              int64_t ia = eff.style ? 2 * i : i, ib = eff.style ? 2 * i + 1 : i + half;
              double u = rdf(&x, x.snap, row + ia), v = rdf(&x, x.snap, row + ib);
              double ga = rdf(&x, x.buf, row + ia), gb = rdf(&x, x.buf, row + ib);
              if (!isfinite(u) || !isfinite(v) || fabs(u) > 1e37 || fabs(v) > 1e37)
                continue;
              if (pos <= 1e6) {
                double t = pos * exp(-(double)(2 * i) / (double)r * log(theta));
                double wa = u * cos(t) - v * sin(t), wb = u * sin(t) + v * cos(t);
                double tol = (2e-6 + hu) * (fabs(u) + fabs(v)) + 1e-37 + (hu ? 0x1p-24 : 0);
                if (x.dtype == ATTN_DTYPE_F16 && fmax(fabs(wa), fabs(wb)) > 65504)
                  continue; /* may round to Inf */
                FZ_CHECK(fabs(ga - wa) <= tol && fabs(gb - wb) <= tol,
                         "b %lld h %lld l %lld pair %lld pos %g: (%.9g, %.9g) -> (%.9g, %.9g), "
                         "expected (%.9g, %.9g)",
                         (long long)b, (long long)h, (long long)l, (long long)i, pos, u, v, ga, gb,
                         wa, wb);
              } else {
                double n0 = hypot(u, v), n1 = hypot(ga, gb);
                if (x.dtype == ATTN_DTYPE_F16 && n0 > 46000)
                  continue; /* a component may round to Inf */
                FZ_CHECK(fabs(n1 - n0) <= (1e-6 + 2 * hu) * n0 + 1e-37 + (hu ? 0x1p-23 : 0),
                         "rotation changed a norm: %g -> %g",
                         n0, n1);
              }
            }
          }
    }
  }
  fz_tensor_release(&x);
  free(positions);
}

static void fuzz_alibi(fz_in *in, attn_ctx *ctx) {
  int32_t n = fz_chance(in, 240) ? (int32_t)fz_range(in, 1, 300)
                                 : (int32_t)(fz_chance(in, 128) ? fz_range(in, -3, 0)
                                                                : (int32_t)fz_u32(in));
  double mb = fz_chance(in, 160) ? 0.0 : fz_chance(in, 128) ? (double)fz_range(in, 1, 64) / 4 : fz_double(in);
  int valid = n >= 1 && n <= (1 << 20) && ((mb == 0) || (isfinite(mb) && mb > 0));
  size_t count = n >= 1 && n <= (1 << 20) ? (size_t)n : 16;
  float *s = malloc(count * sizeof *s), *snap = malloc(count * sizeof *s);
  FZ_CHECK(s && snap, "malloc");
  for (size_t i = 0; i < count; i++)
    s[i] = -5.0f;
  memcpy(snap, s, count * sizeof *s);
  int null_out = fz_chance(in, 4);
  attn_status st = attn_alibi_slopes(ctx, n, mb, null_out ? NULL : s);
  if (null_out) {
    FZ_CHECK(st == ATTN_ERR_NULL_ARG, "slopes NULL gave %s", attn_status_string(st));
  } else if (!valid) {
    FZ_CHECK(st == ATTN_ERR_INVALID_ARG, "bad n_heads %d / max_bias %g gave %s", (int)n, mb,
             attn_status_string(st));
    FZ_CHECK(memcmp(s, snap, count * sizeof *s) == 0, "slopes written on failure");
  } else {
    FZ_CHECK(st == ATTN_OK, "valid alibi refused: %s", attn_ctx_last_error(ctx));
    double b = mb == 0 ? 8.0 : mb;
    int32_t p2 = 1;
    while (p2 * 2 <= n)
      p2 *= 2;
    double m0 = pow(2.0, -b / p2), m1 = pow(2.0, -b / (2.0 * p2));
    for (int32_t h = 0; h < n && h < 4096; h++) {
      double want = h < p2 ? pow(m0, h + 1) : pow(m1, 2 * (h - p2) + 1);
      FZ_CHECK(fabs((double)s[h] - want) <= 1e-6 * want + 1e-44,
               "n %d max_bias %g: slope[%d] = %.9g, expected %.9g", (int)n, b, (int)h,
               (double)s[h], want);
    }
  }
  free(s);
  free(snap);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fz_in in = {data, size};
  fz_alloc_state a = {0, 0, 0};
  attn_ctx *ctx = fz_ctx(&a, fz_chance(&in, 128) ? 2 : 1);
  switch (fz_u8(&in) % 4) {
  case 0: fuzz_sinusoidal(&in, ctx, &a, 0); break;
  case 1: fuzz_sinusoidal(&in, ctx, &a, 1); break;
  case 2: fuzz_rope(&in, ctx, &a); break;
  default: fuzz_alibi(&in, ctx); break;
  }
  fz_ctx_destroy(ctx, &a);
  return 0;
}
