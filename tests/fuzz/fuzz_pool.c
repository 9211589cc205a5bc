/* Fuzz target: pooling (attn_pool) and rotary tables (attn_rope_cache_fill,
 * attn_rope_cached). The input chooses the op, shapes, strides, every
 * parameter (modes and scalings out of range, lengths, masks and scores of
 * wrong shapes or dtypes, NaN/Inf factors, position ids out of range, struct
 * sizes), the data, and the pooling tensors' types (F32, F16, BF16).
 * Checks: on failure nothing is written; on success only the outputs'
 * elements change and they match the header's formulas computed here in
 * float64 from the values the tensors hold (half an ULP more for a half
 * output). */
#include "fuzz_common.h"

#define MAX_ELEMS 50000

/* Element off of a float tensor (F32, F16 or BF16) in buf (its buffer, or
 * the snapshot taken before the call), exactly. */
static double rd(const fz_tensor *t, const unsigned char *buf, int64_t off) {
  const unsigned char *p = buf + t->offset;
  if (t->dtype == ATTN_DTYPE_F32) {
    float v;
    memcpy(&v, p + off * 4, 4);
    return v;
  }
  uint16_t h;
  memcpy(&h, p + off * 2, 2);
  return t->dtype == ATTN_DTYPE_F16 ? ref_f16_value(h) : ref_bf16_value(h);
}

/* The float g rounded once to dt, as a result written in dt holds it. */
static double to_dt(int32_t dt, double g) {
  float f = (float)g;
  if (dt == ATTN_DTYPE_F32 || isnan(f))
    return f;
  uint32_t b;
  memcpy(&b, &f, 4);
  b = dt == ATTN_DTYPE_F16 ? ref_from_f16(ref_to_f16(b)) : ref_from_bf16(ref_to_bf16(b));
  memcpy(&f, &b, 4);
  return f;
}

/* A result of dt past its largest finite value (f16 65504, bf16
 * 0x1.fep127) may round to Inf; the bounds below are for the values it
 * holds. */
static int beyond(int32_t dt, double want) {
  return (dt == ATTN_DTYPE_F16 && fabs(want) > 65504) ||
         (dt == ATTN_DTYPE_BF16 && fabs(want) > 0x1.fep127);
}

/* Offset of token l of sequence (b, h) in a per-token table: [B, L] (h
 * ignored) or [B, H, L]; dims of 1 broadcast. */
static int64_t tok_off(const fz_tensor *t, int64_t b, int64_t h, int64_t l) {
  if (t->ndim == 2)
    return (t->dims[0] == 1 ? 0 : b) * t->eff[0] + (t->dims[1] == 1 ? 0 : l) * t->eff[1];
  return (t->dims[0] == 1 ? 0 : b) * t->eff[0] + (t->dims[1] == 1 ? 0 : h) * t->eff[1] +
         (t->dims[2] == 1 ? 0 : l) * t->eff[2];
}

static int kept_tok(const attn_pool_params *eff, const fz_tensor *kt, int64_t b, int64_t h,
                    int64_t l) {
  return (!eff->lengths || l < eff->lengths[b]) &&
         (!kt || ((const uint8_t *)fz_data(kt))[tok_off(kt, b, h, l)] != 0);
}

/* ---- attn_pool_backward ----
 * dout is the forward's out tensor (whatever it holds); dx has x's shape
 * (sometimes not), dscores scores' (sometimes without scores). Checks: on
 * failure nothing is written; on success dx is fully written, 0 at dropped
 * tokens, and matches the header's formulas per mode; dscores (when no axis
 * of scores is broadcast) is 0 at dropped tokens, NaN at the kept tokens of
 * a NaN sequence and sums to 0 over each sequence. */
static void fuzz_pool_backward(fz_in *in, attn_ctx *ctx, fz_alloc_state *a, const fz_tensor *x,
                               const fz_tensor *dout, const fz_tensor *kt_in,
                               const fz_tensor *st_in, const unsigned char *raw,
                               const attn_pool_params *eff, int readable) {
  int32_t nd = x->ndim;
  int64_t dims[4] = {1, 1, 1, 1};
  memcpy(dims, x->dims, (size_t)nd * sizeof *dims);
  if (fz_chance(in, 8)) {
    int64_t i = fz_range(in, 0, nd - 1); /* shape error */
    dims[i] = dims[i] < 1000 ? dims[i] + 1 : 1;
  }
  fz_tensor dx, ds;
  memset(&ds, 0, sizeof ds);
  fz_make_tensor(in, ctx, &dx, fz_float_dtype(in), nd, dims, FZ_OUTPUT);
  int want_ds = st_in->t ? fz_chance(in, 200) : fz_chance(in, 8);
  if (want_ds) {
    int64_t sd[3] = {x->dims[0], nd >= 2 ? x->dims[nd - 2] : 1, 1};
    fz_make_tensor(in, ctx, &ds, fz_float_dtype(in), st_in->t ? st_in->ndim : 2,
                   st_in->t ? st_in->dims : sd, FZ_OUTPUT);
  }
  if (dx.t && (!want_ds || ds.t) && fz_numel(x) <= MAX_ELEMS && fz_numel(&dx) <= MAX_ELEMS) {
    if (fz_chance(in, 10))
      a->fail_at = a->allocs + 1;
    attn_status st = attn_pool_backward(ctx, x->t, dout->t, dx.t, want_ds ? ds.t : NULL,
                                        (const attn_pool_params *)raw);
    a->fail_at = 0;
    if (st != ATTN_OK) {
      FZ_CHECK(fz_unchanged(&dx) && (!want_ds || fz_unchanged(&ds)),
               "dx or dscores written by a failed call (%s)", attn_status_string(st));
      FZ_CHECK(attn_ctx_last_error(ctx)[0], "no message");
    } else {
      FZ_CHECK(readable && eff->mode >= 0 && eff->mode <= 3 && !eff->reserved_ &&
                   (eff->mode == 3) == (eff->scores != NULL) && (nd == 3 || nd == 4) &&
                   (!want_ds || eff->scores),
               "bad arguments accepted");
      fz_check_gaps(&dx, "dx");
      if (want_ds)
        fz_check_gaps(&ds, "dscores");
      int64_t B = x->dims[0], H = nd == 4 ? x->dims[1] : 1, L = x->dims[nd - 2],
              D = x->dims[nd - 1];
      const fz_tensor *kt = eff->keep ? kt_in : NULL, *sc = eff->scores ? st_in : NULL;
      /* dscores judged per position only when scores broadcasts nothing */
      int ds_full = want_ds && !ds.exotic && (sc->ndim == 3 || H == 1) &&
                    sc->dims[0] == B && sc->dims[sc->ndim - 1] == L &&
                    (sc->ndim == 2 || sc->dims[1] == H);
      for (int64_t b = 0; b < B && !dx.exotic && fz_numel(&dx) > 0; b++)
        for (int64_t h = 0; h < H; h++) {
          int64_t n = 0;
          double m = -INFINITY, wsum = 0, dsum = 0, dmag = 0, gmag = 0;
          int nan_row = 0;
          for (int64_t l = 0; l < L; l++)
            if (kept_tok(eff, kt, b, h, l)) {
              n++;
              double v = sc ? rd(sc, sc->buf, tok_off(sc, b, h, l)) : 0;
              nan_row |= isnan(v) || v == INFINITY;
              m = v > m ? v : m;
            }
          for (int64_t l = 0; sc && !nan_row && m > -INFINITY && l < L; l++)
            if (kept_tok(eff, kt, b, h, l))
              wsum += exp(rd(sc, sc->buf, tok_off(sc, b, h, l)) - m);
          for (int64_t d = 0; d < D; d++) {
            double g = rd(dout, dout->buf,
                          b * dout->eff[0] + (nd == 4 ? h * dout->eff[1] + d * dout->eff[2]
                                                      : d * dout->eff[1]));
            int64_t winners = 0;
            for (int64_t l = 0; l < L; l++) {
              double got = rd(&dx, dx.buf,
                              b * dx.eff[0] + (nd == 4 ? h * dx.eff[1] : 0) + l * dx.eff[nd - 2] + d);
              if (!kept_tok(eff, kt, b, h, l)) {
                FZ_CHECK(got == 0, "dropped token b %lld h %lld l %lld: dx %g", (long long)b,
                         (long long)h, (long long)l, got);
                continue;
              }
              double want = g;
              if (eff->mode == 1)
                want = g / (double)n;
              if (eff->mode == 2) {
                double gr = to_dt(dx.dtype, g); /* dout rounded once to dx's type */
                FZ_CHECK(got == 0 || got == gr || (isnan(g) && isnan(got)), "max: dx %g, dout %g",
                         got, g);
                winners += got == gr && gr != 0;
                continue;
              }
              if (eff->mode == 3) {
                if (nan_row) {
                  FZ_CHECK(isnan(got), "NaN sequence: dx %g", got);
                  continue;
                }
                double w = m > -INFINITY ? exp(rd(sc, sc->buf, tok_off(sc, b, h, l)) - m) / wsum : 0;
                want = w * g;
                if (w != 0) /* the scale of g_l = dout . x_l, for the dscores sum */
                  gmag += w * fabs(g * rd(x, x->buf, b * x->eff[0] + (nd == 4 ? h * x->eff[1] : 0) +
                                                         l * x->eff[nd - 2] + d));
              }
              if (!isfinite(want) || beyond(dx.dtype, want))
                continue;
              FZ_CHECK(fabs(got - want) <= (1e-5 + fz_half_ulp(dx.dtype)) * fabs(want) +
                                               (fz_half_ulp(dx.dtype) ? 0x1p-24 : 1e-37),
                       "mode %d b %lld h %lld l %lld d %lld: dx %.9g, expected %.9g",
                       (int)eff->mode, (long long)b, (long long)h, (long long)l, (long long)d,
                       got, want);
            }
            if (eff->mode == 2 && to_dt(dx.dtype, g) != 0 && !isnan(g) && n > 0)
              FZ_CHECK(winners == 1, "max: %lld tokens got dout", (long long)winners);
          }
          for (int64_t l = 0; ds_full && l < L; l++) {
            double got = rd(&ds, ds.buf, tok_off(&ds, b, h, l));
            if (!kept_tok(eff, kt, b, h, l))
              FZ_CHECK(got == 0, "dropped token l %lld: dscores %g", (long long)l, got);
            else if (nan_row)
              FZ_CHECK(isnan(got), "NaN sequence: dscores %g", got);
            else
              dsum += got, dmag += fabs(got);
          }
          if (ds_full && !nan_row && isfinite(dmag) && dmag < 1e30 && isfinite(gmag) && gmag < 1e30)
            FZ_CHECK(fabs(dsum) <= (1e-4 + fz_half_ulp(ds.dtype)) * dmag + 1e-12 * gmag +
                                       (fz_half_ulp(ds.dtype) ? 0x1p-24 * (double)L : 1e-30),
                     "dscores sum to %g (magnitude %g)", dsum, dmag);
        }
    }
  }
  fz_tensor_release(&dx);
  if (want_ds)
    fz_tensor_release(&ds);
}

/* ---- attn_pool ---- */

static void fuzz_pool(fz_in *in, attn_ctx *ctx, fz_alloc_state *a) {
  int32_t nd = fz_chance(in, 240) ? (int32_t)fz_range(in, 3, 4) : (int32_t)fz_range(in, 1, 4);
  int64_t dims[4];
  for (int i = 0; i < 4; i++)
    dims[i] = fz_dim(in, 6);
  if (fz_chance(in, 24))
    dims[nd - 2 >= 0 ? nd - 2 : 0] = fz_range(in, 7, 300);
  int64_t B = dims[0], H = nd == 4 ? dims[1] : 1, L = nd >= 2 ? dims[nd - 2] : 1,
          D = dims[nd - 1];
  fz_tensor x, out, keep, scores;
  fz_make_tensor(in, ctx, &x, fz_float_dtype(in), nd, dims, FZ_INPUT);
  int64_t od[4] = {B, H, D, 1};
  if (nd == 3)
    od[1] = D;
  if (fz_chance(in, 8)) {
    int64_t i = fz_range(in, 0, 2); /* shape error */
    od[i] = od[i] < 1000 ? od[i] + 1 : 1;
  }
  int32_t ond = nd == 4 ? 3 : 2;
  if (fz_chance(in, 4))
    ond = (int32_t)fz_range(in, 1, 4);
  fz_make_tensor(in, ctx, &out, fz_float_dtype(in), ond, od, FZ_OUTPUT);
  attn_pool_params p, eff;
  attn_pool_params_init(&p);
  p.mode = fz_enum(in, 4);
  if (fz_chance(in, 3))
    p.reserved_ = 1;
  /* Per-token tensors: [B, L] or [B, H, L], dims sometimes 1 or wrong. */
  int has_keep = fz_chance(in, 96), has_scores = fz_chance(in, 200) ? p.mode == 3 : fz_chance(in, 128);
  int64_t td[3] = {B, H, L};
  int32_t tnd = nd == 4 && fz_chance(in, 128) ? 3 : 2;
  if (tnd == 2)
    td[1] = L;
  for (int i = 0; i < tnd; i++)
    if (fz_chance(in, 20))
      td[i] = fz_chance(in, 200) || td[i] > 1000 ? 1 : td[i] + 1;
  memset(&keep, 0, sizeof keep);
  memset(&scores, 0, sizeof scores);
  if (has_keep) {
    fz_make_tensor(in, ctx, &keep, fz_chance(in, 8) ? ATTN_DTYPE_F32 : ATTN_DTYPE_U8, tnd, td,
                   FZ_INPUT);
    p.keep = keep.t;
  }
  if (has_scores) {
    fz_make_tensor(in, ctx, &scores, fz_float_dtype(in), tnd, td, FZ_INPUT);
    p.scores = scores.t;
  }
  int64_t *lengths = NULL;
  if (B >= 1 && B <= 4096 && fz_chance(in, 80)) {
    lengths = malloc((size_t)B * sizeof *lengths);
    FZ_CHECK(lengths, "malloc");
    for (int64_t b = 0; b < B; b++)
      lengths[b] = fz_chance(in, 240) ? fz_range(in, 0, L) : (int64_t)fz_u64(in);
    p.lengths = lengths;
  }
  unsigned char raw[sizeof p + 64];
  memset(raw, 0, sizeof raw);
  memcpy(raw, &p, sizeof p);
  size_t ss = fz_struct_size(in, raw, sizeof p, sizeof raw);
  memcpy(raw, &ss, sizeof ss);
  attn_pool_params_init(&eff);
  int readable = fz_effective_params(&eff, sizeof eff, raw, ss);

  if (x.t && out.t && fz_numel(&x) <= MAX_ELEMS && fz_numel(&out) <= MAX_ELEMS) {
    if (fz_chance(in, 10))
      a->fail_at = a->allocs + 1;
    attn_status st = attn_pool(ctx, x.t, out.t, (const attn_pool_params *)raw);
    a->fail_at = 0;
    if (st != ATTN_OK) {
      FZ_CHECK(fz_unchanged(&out), "out written by a failed call (%s)", attn_status_string(st));
      FZ_CHECK(attn_ctx_last_error(ctx)[0], "no message");
    } else {
      FZ_CHECK(readable && eff.mode >= 0 && eff.mode <= 3 && !eff.reserved_ &&
                   (eff.mode == 3) == (eff.scores != NULL) && (nd == 3 || nd == 4),
               "bad arguments accepted");
      fz_check_gaps(&out, "out");
      /* Reference: per (b, h) over kept tokens, in double. */
      const fz_tensor *kt = eff.keep ? &keep : NULL, *st_ = eff.scores ? &scores : NULL;
      for (int64_t b = 0; b < B && fz_numel(&out) > 0; b++)
        for (int64_t h = 0; h < H; h++) {
          double m = -INFINITY, wsum = 0;
          int64_t n = 0;
          int nan_row = 0;
          /* tables are [B, L] (h ignored) or [B, H, L]; dims of 1 broadcast */
#define TOK_OFF(t, l) tok_off(t, b, h, l)
#define KEPT(l) kept_tok(&eff, kt, b, h, l)
          for (int64_t l = 0; l < L; l++)
            if (KEPT(l)) {
              n++;
              if (st_) {
                double s = rd(st_, st_->buf, TOK_OFF(st_, l));
                if (isnan(s) || s == INFINITY)
                  nan_row = 1;
                else if (s > m)
                  m = s;
              }
            }
          if (st_ && !nan_row && m > -INFINITY)
            for (int64_t l = 0; l < L; l++)
              if (KEPT(l))
                wsum += exp(rd(st_, st_->buf, TOK_OFF(st_, l)) - m);
          int zero = n == 0 || (st_ && !nan_row && m == -INFINITY);
          for (int64_t d = 0; d < D; d++) {
            int64_t oo = b * out.eff[0] + (nd == 4 ? h * out.eff[1] + d * out.eff[2] : d * out.eff[1]);
            double got = rd(&out, out.buf, oo);
            if (zero) {
              FZ_CHECK(got == 0, "b %lld h %lld d %lld: nothing kept but %g", (long long)b,
                       (long long)h, (long long)d, got);
              continue;
            }
            if (nan_row) {
              FZ_CHECK(isnan(got), "NaN score but %g", got);
              continue;
            }
            double acc = eff.mode == 2 ? -INFINITY : 0, mag = 0;
            int saw_nan = 0;
            for (int64_t l = 0; l < L; l++) {
              if (!KEPT(l))
                continue;
              int64_t xo = b * x.eff[0] + (nd == 4 ? h * x.eff[1] : 0) + l * x.eff[nd - 2] + d;
              double v = rd(&x, x.buf, xo);
              double w = st_ ? exp(rd(st_, st_->buf, TOK_OFF(st_, l)) - m) / wsum : 1.0;
              if (isnan(v) || isinf(v))
                saw_nan = 1;
              if (eff.mode == 2)
                acc = isnan(v) ? NAN : (isnan(acc) || !(v > acc) ? acc : v);
              else
                acc += w * v;
              mag += fabs(w * v);
            }
            if (eff.mode == 1)
              acc /= (double)n, mag /= (double)n;
            if (saw_nan || !isfinite(acc) || mag > 1e37 || beyond(out.dtype, acc))
              continue; /* infinities and NaN: covered by the edge tables */
            /* a half out: the double rounded once, half an ULP */
            double u = fz_half_ulp(out.dtype);
            FZ_CHECK(fabs(got - acc) <= 1e-5 * mag + u * fabs(acc) + (u ? 0x1p-25 : 1e-30),
                     "mode %d b %lld h %lld d %lld: got %.9g, expected %.9g", (int)eff.mode,
                     (long long)b, (long long)h, (long long)d, got, acc);
          }
        }
#undef KEPT
#undef TOK_OFF
    }
  }
  if (x.t && out.t && fz_chance(in, 128))
    fuzz_pool_backward(in, ctx, a, &x, &out, &keep, &scores, raw, &eff, readable);
  fz_tensor_release(&x);
  fz_tensor_release(&out);
  if (has_keep)
    fz_tensor_release(&keep);
  if (has_scores)
    fz_tensor_release(&scores);
  free(lengths);
}

/* ---- attn_rope_cache_fill ---- */

static void fuzz_cache_fill(fz_in *in, attn_ctx *ctx, fz_alloc_state *a) {
  int64_t dims[3] = {fz_dim(in, 40), fz_dim(in, 20), 1};
  int32_t nd = fz_chance(in, 245) ? 2 : (int32_t)fz_range(in, 1, 3);
  fz_tensor c, s;
  fz_make_tensor(in, ctx, &c, ATTN_DTYPE_F32, nd, dims, FZ_OUTPUT);
  if (fz_chance(in, 8))
    dims[1] = dims[1] < 1000 ? dims[1] + 1 : 1;
  fz_make_tensor(in, ctx, &s, ATTN_DTYPE_F32, nd, dims, FZ_OUTPUT);
  attn_rope_cache_params p;
  attn_rope_cache_params_init(&p);
  p.scaling = fz_enum(in, 7);
  double f[64];
  for (int i = 0; i < 64; i++)
    f[i] = fz_chance(in, 250) ? 1.0 + (double)fz_range(in, 0, 400) / 10 : fz_double(in);
#define MAYBE(field, good)                                                                    \
  if (fz_chance(in, 96))                                                                      \
  p.field = fz_chance(in, 220) ? (good) : fz_double(in)
  MAYBE(theta, (double)fz_range(in, 2, 1000000));
  MAYBE(factor, (double)fz_range(in, 1, 64) / 2);
  if (fz_chance(in, 128))
    p.original_max_position = fz_chance(in, 240) ? fz_range(in, 1, 9000) : (int64_t)fz_u64(in);
  if (fz_chance(in, 64))
    p.seq_len = fz_chance(in, 240) ? fz_range(in, 0, 20000) : (int64_t)fz_u64(in);
  MAYBE(beta_fast, (double)fz_range(in, 1, 64));
  MAYBE(beta_slow, (double)fz_range(in, 1, 4) / 2);
  MAYBE(mscale, (double)fz_range(in, 0, 8) / 4);
  MAYBE(mscale_all_dim, (double)fz_range(in, 0, 8) / 4);
  MAYBE(attention_factor, (double)fz_range(in, 0, 8) / 4);
  MAYBE(low_freq_factor, (double)fz_range(in, 1, 4));
  MAYBE(high_freq_factor, (double)fz_range(in, 1, 8));
#undef MAYBE
  if (fz_chance(in, 100))
    p.short_factors = dims[1] <= 64 ? f : NULL;
  if (fz_chance(in, 100))
    p.long_factors = dims[1] <= 64 ? f : NULL;
  p.apply_attention_factor = fz_chance(in, 128);
  p.yarn_no_truncate = fz_chance(in, 32);
  if (fz_chance(in, 3))
    p.reserved_ = 1;
  unsigned char raw[sizeof p + 64];
  memset(raw, 0, sizeof raw);
  memcpy(raw, &p, sizeof p);
  size_t ss = fz_struct_size(in, raw, sizeof p, sizeof raw);
  memcpy(raw, &ss, sizeof ss);
  attn_rope_cache_params eff;
  attn_rope_cache_params_init(&eff);
  int readable = fz_effective_params(&eff, sizeof eff, raw, ss);

  if (c.t && s.t && fz_numel(&c) <= MAX_ELEMS) {
    if (fz_chance(in, 10))
      a->fail_at = a->allocs + 1;
    double af = -99;
    attn_status st = attn_rope_cache_fill(ctx, c.t, s.t, (const attn_rope_cache_params *)raw,
                                          fz_chance(in, 32) ? NULL : &af);
    a->fail_at = 0;
    if (st != ATTN_OK) {
      FZ_CHECK(fz_unchanged(&c) && fz_unchanged(&s), "tables written by a failed call (%s)",
               attn_status_string(st));
      FZ_CHECK(af == -99, "attention factor written on failure");
      FZ_CHECK(attn_ctx_last_error(ctx)[0], "no message");
    } else {
      FZ_CHECK(readable && nd == 2 && eff.scaling >= 0 && eff.scaling <= 6, "bad arguments accepted");
      fz_check_gaps(&c, "cos");
      fz_check_gaps(&s, "sin");
      FZ_CHECK(af == -99 || (isfinite(af) && af > 0), "attention factor %g", af);
      double amp = eff.apply_attention_factor && af != -99 ? af : 1.0;
      int64_t P = dims[0], half = dims[1];
      double theta = eff.theta == 0 ? 10000 : eff.theta;
      for (int64_t pos = 0; pos < P && fz_numel(&c) > 0; pos++)
        for (int64_t i = 0; i < half; i++) {
          double cv = rd(&c, c.buf, pos * c.eff[0] + i), sv = rd(&s, s.buf, pos * s.eff[0] + i);
          if (eff.apply_attention_factor && af == -99)
            continue; /* amplitude unknown */
          FZ_CHECK(fabs(hypot(cv, sv) - amp) <= 1e-6 * amp, "pos %lld i %lld: |(c, s)| = %g, "
                   "expected %g", (long long)pos, (long long)i, hypot(cv, sv), amp);
          if (eff.scaling == ATTN_ROPE_SCALING_NONE) {
            double t = (double)pos * exp(-(2.0 * (double)i / (2.0 * (double)half)) * log(theta));
            FZ_CHECK(fabs(cv - cos(t)) <= 2e-7 && fabs(sv - sin(t)) <= 2e-7,
                     "default table: pos %lld i %lld: (%g, %g) vs angle %g", (long long)pos,
                     (long long)i, cv, sv, t);
          }
        }
    }
  }
  fz_tensor_release(&c);
  fz_tensor_release(&s);
}

/* ---- attn_rope_cached ---- */

static void fuzz_cached(fz_in *in, attn_ctx *ctx, fz_alloc_state *a) {
  int32_t nd = fz_chance(in, 240) ? (int32_t)fz_range(in, 3, 4) : (int32_t)fz_range(in, 1, 4);
  int64_t dims[4];
  for (int i = 0; i < 4; i++)
    dims[i] = fz_dim(in, 5);
  if (nd == 3 && dims[2] >= 1 && dims[2] <= 64 && fz_chance(in, 200))
    dims[2] = dims[2] * (int64_t)fz_range(in, 1, 4) * 2;
  int32_t heads = nd == 3 ? (int32_t)fz_range(in, 1, 4) : 0;
  if (fz_chance(in, 6))
    heads = (int32_t)fz_range(in, -1, 3);
  fz_tensor x, y, c, s;
  fz_make_tensor(in, ctx, &x, ATTN_DTYPE_F32, nd, dims, FZ_INPUT);
  int in_place = fz_chance(in, 64);
  if (!in_place)
    fz_make_tensor(in, ctx, &y, ATTN_DTYPE_F32, nd, dims, FZ_OUTPUT);
  int64_t B = dims[0], L = nd == 4 ? dims[2] : dims[1 < nd ? 1 : 0];
  int64_t Dh = nd == 4 ? dims[3] : (heads > 0 && nd == 3 ? dims[2] / heads : 1);
  int64_t half = fz_range(in, 1, Dh / 2 > 0 ? Dh / 2 : 1);
  if (fz_chance(in, 8))
    half = fz_range(in, 1, 40);
  int per_token = fz_chance(in, 64);
  int64_t td[3];
  int32_t tnd = per_token ? 3 : 2;
  if (per_token)
    td[0] = fz_chance(in, 128) ? 1 : B, td[1] = L, td[2] = half;
  else
    td[0] = fz_range(in, 1, 50), td[1] = half;
  fz_make_tensor(in, ctx, &c, ATTN_DTYPE_F32, tnd, td, FZ_INPUT);
  fz_make_tensor(in, ctx, &s, ATTN_DTYPE_F32, tnd, td, FZ_INPUT);
  attn_rope_cached_params p;
  attn_rope_cached_params_init(&p);
  p.style = fz_enum(in, 2);
  p.num_heads = heads;
  int64_t *pos = NULL;
  if (B >= 1 && L >= 1 && B <= 4096 && L <= 4096 && B * L <= 4096 && fz_chance(in, 128)) {
    pos = malloc((size_t)(B * L) * sizeof *pos);
    FZ_CHECK(pos, "malloc");
    for (int64_t i = 0; i < B * L; i++)
      pos[i] = fz_chance(in, 250) ? fz_range(in, 0, td[0] - 1) : (int64_t)fz_u64(in);
    p.position_ids = pos;
  }
  unsigned char raw[sizeof p + 64];
  memset(raw, 0, sizeof raw);
  memcpy(raw, &p, sizeof p);
  size_t ss = fz_struct_size(in, raw, sizeof p, sizeof raw);
  memcpy(raw, &ss, sizeof ss);
  attn_rope_cached_params eff;
  attn_rope_cached_params_init(&eff);
  int readable = fz_effective_params(&eff, sizeof eff, raw, ss);
  fz_tensor *out = in_place ? &x : &y;

  if (x.t && out->t && c.t && s.t && fz_numel(&x) <= MAX_ELEMS) {
    attn_status st = attn_rope_cached(ctx, x.t, out->t, c.t, s.t,
                                      (const attn_rope_cached_params *)raw);
    (void)a;
    if (st != ATTN_OK) {
      FZ_CHECK(fz_unchanged(out), "y written by a failed call (%s)", attn_status_string(st));
      FZ_CHECK(attn_ctx_last_error(ctx)[0], "no message");
    } else {
      FZ_CHECK(readable && (eff.style == 0 || eff.style == 1) && (nd == 3 || nd == 4),
               "bad arguments accepted");
      fz_check_gaps(out, "y");
      int64_t H = nd == 4 ? dims[1] : eff.num_heads, D = nd == 4 ? dims[3] : dims[2] / H;
      FZ_CHECK(2 * half <= D, "rotary dim %lld > D %lld accepted", (long long)(2 * half),
               (long long)D);
      for (int64_t b = 0; b < B && fz_numel(out) > 0; b++)
        for (int64_t h = 0; h < H; h++)
          for (int64_t l = 0; l < L; l++) {
            int64_t xo = nd == 4 ? b * x.eff[0] + h * x.eff[1] + l * x.eff[2]
                                 : b * x.eff[0] + l * x.eff[1] + h * D;
            int64_t yo = nd == 4 ? b * out->eff[0] + h * out->eff[1] + l * out->eff[2]
                                 : b * out->eff[0] + l * out->eff[1] + h * D;
            int64_t co, so;
            if (per_token) {
              co = (td[0] == 1 ? 0 : b) * c.eff[0] + l * c.eff[1];
              so = (td[0] == 1 ? 0 : b) * s.eff[0] + l * s.eff[1];
            } else {
              int64_t row = eff.position_ids ? eff.position_ids[b * L + l] : l;
              FZ_CHECK(row >= 0 && row < td[0], "row %lld accepted", (long long)row);
              co = row * c.eff[0], so = row * s.eff[0];
            }
            for (int64_t i = 0; i < half; i++) {
              int64_t ja = eff.style ? 2 * i : i, jb = eff.style ? 2 * i + 1 : i + half;
              double u = rd(&x, x.snap, xo + ja), v = rd(&x, x.snap, xo + jb);
              double ci = rd(&c, c.buf, co + i), si = rd(&s, s.buf, so + i);
              double wa = u * ci - v * si, wb = u * si + v * ci;
              double ga = rd(out, out->buf, yo + ja), gb = rd(out, out->buf, yo + jb);
              double mag = fabs(u * ci) + fabs(v * si) + fabs(u * si) + fabs(v * ci);
              if (!isfinite(mag) || mag > 1e37 || x.exotic)
                continue;
              FZ_CHECK(fabs(ga - wa) <= 1e-6 * mag + 1e-37 && fabs(gb - wb) <= 1e-6 * mag + 1e-37,
                       "b %lld h %lld l %lld i %lld: (%g, %g) expected (%g, %g)", (long long)b,
                       (long long)h, (long long)l, (long long)i, ga, gb, wa, wb);
            }
          }
    }
  }
  fz_tensor_release(&x);
  if (!in_place)
    fz_tensor_release(&y);
  fz_tensor_release(&c);
  fz_tensor_release(&s);
  free(pos);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fz_in in = {data, size};
  fz_alloc_state a = {0, 0, 0};
  attn_ctx *ctx = fz_ctx(&a, fz_chance(&in, 128) ? 2 : 1);
  switch (fz_u8(&in) % 3) {
  case 0: fuzz_pool(&in, ctx, &a); break;
  case 1: fuzz_cache_fill(&in, ctx, &a); break;
  default: fuzz_cached(&in, ctx, &a); break;
  }
  fz_ctx_destroy(ctx, &a);
  return 0;
}
