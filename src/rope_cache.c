/* RoPE frequencies with the long-context scalings, in double (transformers'
 * modeling_rope_utils is the reference for names and semantics): the tables
 * of attn_rope_cache_fill, and a layer's attn__rope_scaled_freqs. */
#include "check.h"
#include "rope.h"

#include <float.h>
#include <math.h>
#include <string.h>

/* A sin/cos pair costs tens of times a multiply-add. */
#define MIN_WORK_PER_THREAD 16384.0

static const double two_pi = 6.283185307179586476925286766559;

typedef struct {
  int32_t scaling;
  int64_t half; /* r / 2 */
  int64_t P;    /* table rows */
  double theta, factor, attention_factor;
  int64_t p0, seq_len;
  double beta_fast, beta_slow, mscale, mscale_all_dim;
  double low_ff, high_ff;
  const double *short_f, *long_f;
  bool truncate;
} freq_plan;

/* YaRN's inverse of the rotation count: the dim whose wavelength turns
 * `rotations` times over the original context. */
static double yarn_dim(double rotations, double r, double theta, double p0) {
  return r * log(p0 / (rotations * two_pi)) / (2.0 * log(theta));
}

static double yarn_mscale(double s, double k) { return s <= 1 ? 1.0 : 0.1 * k * log(s) + 1.0; }

/* The plan's attention factor: YaRN's mscale, LongRoPE's, else 1. */
static double plan_attention_factor(const freq_plan *f) {
  double s = f->factor;
  if (f->scaling == ATTN_ROPE_SCALING_YARN) {
    if (f->attention_factor)
      return f->attention_factor;
    if (f->mscale && f->mscale_all_dim)
      return yarn_mscale(s, f->mscale) / yarn_mscale(s, f->mscale_all_dim);
    return yarn_mscale(s, 1.0);
  }
  if (f->scaling == ATTN_ROPE_SCALING_LONGROPE) {
    if (f->attention_factor)
      return f->attention_factor;
    /* +Inf for P0 = 1 (ln P0 = 0): check_attention_factor refuses it where used. */
    return s <= 1 ? 1.0 : sqrt(1.0 + log(s) / log((double)f->p0));
  }
  return 1.0;
}

/* LongRoPE's sqrt(1 + ln s / ln P0) has no finite value for P0 = 1 and s > 1
 * (transformers divides by zero there): refused where the factor is used,
 * applied to the tables or returned; tables without it need no factor. */
static attn_status check_attention_factor(attn_ctx *ctx, const char *where, double af) {
  if (isfinite(af))
    return ATTN_OK;
  return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                    "%s.original_max_position = 1 but LongRoPE's attention factor "
                    "sqrt(1 + ln s / ln P0) needs P0 >= 2 when s > 1 (or give "
                    "attention_factor)", where);
}

/* Frequencies w[0..half) of the plan. */
static void plan_freqs(const freq_plan *f, double *w) {
  double r = 2.0 * (double)f->half, theta = f->theta, s = f->factor;
  if (f->scaling == ATTN_ROPE_SCALING_NTK)
    theta *= pow(s, r / (r - 2.0));
  if (f->scaling == ATTN_ROPE_SCALING_DYNAMIC_NTK) {
    double n = f->seq_len > f->p0 ? (double)f->seq_len : (double)f->p0;
    theta *= pow(s * n / (double)f->p0 - (s - 1.0), r / (r - 2.0));
  }
  for (int64_t i = 0; i < f->half; i++)
    w[i] = pow(theta, -(double)(2 * i) / r);
  switch (f->scaling) {
  case ATTN_ROPE_SCALING_LINEAR:
    for (int64_t i = 0; i < f->half; i++)
      w[i] /= s;
    break;
  case ATTN_ROPE_SCALING_YARN: {
    double p0 = (double)f->p0;
    double lo = yarn_dim(f->beta_fast, r, theta, p0), hi = yarn_dim(f->beta_slow, r, theta, p0);
    if (f->truncate) {
      lo = floor(lo);
      hi = ceil(hi);
    }
    lo = lo > 0 ? lo : 0;
    hi = hi < r - 1 ? hi : r - 1;
    if (lo == hi)
      hi += 0.001; /* as transformers: no division by zero */
    for (int64_t i = 0; i < f->half; i++) {
      double ramp = ((double)i - lo) / (hi - lo);
      ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
      w[i] = w[i] / s * ramp + w[i] * (1.0 - ramp);
    }
    break;
  }
  case ATTN_ROPE_SCALING_LLAMA3: {
    double p0 = (double)f->p0;
    double lo_wl = p0 / f->low_ff, hi_wl = p0 / f->high_ff;
    for (int64_t i = 0; i < f->half; i++) {
      double wl = two_pi / w[i];
      if (wl > lo_wl) {
        w[i] /= s;
      } else if (!(wl < hi_wl)) {
        double g = (p0 / wl - f->low_ff) / (f->high_ff - f->low_ff);
        w[i] = (1.0 - g) * w[i] / s + g * w[i];
      }
    }
    break;
  }
  case ATTN_ROPE_SCALING_LONGROPE: {
    const double *ext = f->seq_len > f->p0 ? f->long_f : f->short_f;
    for (int64_t i = 0; i < f->half; i++)
      w[i] /= ext[i];
    break;
  }
  default: break;
  }
}

typedef struct {
  float *cos, *sin;
  int64_t cs, ss; /* row strides */
  int64_t half, P, rows_per_item;
  const double *w;
  double scale; /* the attention factor when applied, else 1 */
} fill_problem;

static void fill_item(void *arg, int64_t item, int32_t worker) {
  (void)worker;
  const fill_problem *p = arg;
  int64_t p0 = item * p->rows_per_item;
  int64_t p1 = p0 + p->rows_per_item < p->P ? p0 + p->rows_per_item : p->P;
  for (int64_t pos = p0; pos < p1; pos++) {
    float *c = p->cos + pos * p->cs, *s = p->sin + pos * p->ss;
    for (int64_t i = 0; i < p->half; i++) {
      double a = (double)pos * p->w[i];
      c[i] = (float)(cos(a) * p->scale);
      s[i] = (float)(sin(a) * p->scale);
    }
  }
}

void attn_rope_cache_params_init(attn_rope_cache_params *p) {
  if (!p)
    return;
  memset(p, 0, sizeof *p);
  p->struct_size = sizeof *p;
}

/* Which fields each scaling reads; a field it ignores must stay 0, so a
 * parameter meant for another scaling is reported rather than dropped. */
enum { U_FACTOR = 1, U_P0 = 2, U_SEQ = 4, U_YARN = 8, U_AF = 16, U_LLAMA = 32, U_LONG = 64 };
static const unsigned scaling_uses[] = {
    [ATTN_ROPE_SCALING_NONE] = 0,
    [ATTN_ROPE_SCALING_LINEAR] = U_FACTOR,
    [ATTN_ROPE_SCALING_NTK] = U_FACTOR,
    [ATTN_ROPE_SCALING_DYNAMIC_NTK] = U_FACTOR | U_P0 | U_SEQ,
    [ATTN_ROPE_SCALING_YARN] = U_FACTOR | U_P0 | U_YARN | U_AF,
    [ATTN_ROPE_SCALING_LLAMA3] = U_FACTOR | U_P0 | U_LLAMA,
    [ATTN_ROPE_SCALING_LONGROPE] = U_FACTOR | U_P0 | U_SEQ | U_AF | U_LONG,
};

static bool pos_finite(double v) { return isfinite(v) && v > 0; }

static attn_status check_cache_params(attn_ctx *ctx, const char *where,
                                      const attn_rope_cache_params *c, freq_plan *f) {
  if (c->scaling < 0 || c->scaling > ATTN_ROPE_SCALING_LONGROPE)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "%s.scaling = %d is not an attn_rope_scaling (0..6)", where, (int)c->scaling);
  if (c->reserved_)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG, "%s.reserved_ = %d but must be 0", where,
                      (int)c->reserved_);
  unsigned uses = scaling_uses[c->scaling];
  struct {
    unsigned group;
    bool set;
    const char *name;
  } fields[] = {
      {U_FACTOR, c->factor != 0, "factor"},
      {U_P0, c->original_max_position != 0, "original_max_position"},
      {U_SEQ, c->seq_len != 0, "seq_len"},
      {U_YARN, c->beta_fast != 0, "beta_fast"},
      {U_YARN, c->beta_slow != 0, "beta_slow"},
      {U_YARN, c->mscale != 0, "mscale"},
      {U_YARN, c->mscale_all_dim != 0, "mscale_all_dim"},
      {U_YARN, c->yarn_no_truncate != 0, "yarn_no_truncate"},
      {U_AF, c->attention_factor != 0, "attention_factor"},
      {U_LLAMA, c->low_freq_factor != 0, "low_freq_factor"},
      {U_LLAMA, c->high_freq_factor != 0, "high_freq_factor"},
      {U_LONG, c->short_factors != NULL, "short_factors"},
      {U_LONG, c->long_factors != NULL, "long_factors"},
  };
  for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
    if (fields[i].set && !(uses & fields[i].group))
      return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                        "%s.%s is set but scaling %d does not use it (leave it 0)", where,
                        fields[i].name, (int)c->scaling);
  f->scaling = c->scaling;
  f->theta = c->theta == 0 ? 10000.0 : c->theta;
  if (!isfinite(f->theta) || !(f->theta > 1))
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "%s.theta = %g but must be finite and > 1 (0 = 10000)", where, c->theta);
  f->seq_len = c->seq_len == 0 ? f->P : c->seq_len;
  if (f->seq_len < 0)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG, "%s.seq_len = %lld but must be >= 0", where,
                      (long long)c->seq_len);
  if (uses & U_P0) {
    if (c->original_max_position <= 0)
      return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                        "%s.original_max_position = %lld but scaling %d needs it > 0", where,
                        (long long)c->original_max_position, (int)c->scaling);
    f->p0 = c->original_max_position;
  }
  f->factor = c->factor;
  /* LongRoPE's default P / P0 is 0 for an empty table: s <= 1, factor 1. */
  bool derived = c->scaling == ATTN_ROPE_SCALING_LONGROPE && c->factor == 0;
  if (derived)
    f->factor = (double)f->P / (double)f->p0;
  if ((uses & U_FACTOR) && !derived && !pos_finite(f->factor))
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "%s.factor = %g but scaling %d needs it finite and > 0", where, c->factor,
                      (int)c->scaling);
  f->attention_factor = c->attention_factor;
  if (c->attention_factor != 0 && !pos_finite(c->attention_factor))
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "%s.attention_factor = %g but must be finite and > 0 (0 = from "
                      "the formula)", where,
                      c->attention_factor);
  f->beta_fast = c->beta_fast == 0 ? 32.0 : c->beta_fast;
  f->beta_slow = c->beta_slow == 0 ? 1.0 : c->beta_slow;
  f->mscale = c->mscale, f->mscale_all_dim = c->mscale_all_dim;
  f->truncate = !c->yarn_no_truncate;
  /* mscale >= 0 keeps 0.1 mscale ln s + 1 >= 1, so the factor is finite. */
  if (!pos_finite(f->beta_fast) || !pos_finite(f->beta_slow) || !isfinite(c->mscale) ||
      !isfinite(c->mscale_all_dim) || c->mscale < 0 || c->mscale_all_dim < 0)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "%s.beta_fast = %g, beta_slow = %g must be finite and > 0, "
                      "mscale = %g and mscale_all_dim = %g finite and >= 0", where,
                      c->beta_fast, c->beta_slow, c->mscale, c->mscale_all_dim);
  f->low_ff = c->low_freq_factor == 0 ? 1.0 : c->low_freq_factor;
  f->high_ff = c->high_freq_factor == 0 ? 4.0 : c->high_freq_factor;
  if (!pos_finite(f->low_ff) || !isfinite(f->high_ff) || !(f->high_ff > f->low_ff))
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "%s.low_freq_factor = %g, high_freq_factor = %g but need 0 < low "
                      "< high (0 = 1 and 4)", where,
                      c->low_freq_factor, c->high_freq_factor);
  if (c->scaling == ATTN_ROPE_SCALING_LONGROPE) {
    const double *arrays[2] = {c->short_factors, c->long_factors};
    static const char *const names[2] = {"short_factors", "long_factors"};
    for (int a = 0; a < 2; a++) {
      if (!arrays[a])
        return attn__fail(ctx, ATTN_ERR_NULL_ARG,
                          "%s.%s is NULL but ATTN_ROPE_SCALING_LONGROPE needs r/2 = "
                          "%lld factors", where,
                          names[a], (long long)f->half);
      for (int64_t i = 0; i < f->half; i++)
        if (!pos_finite(arrays[a][i]))
          return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                            "%s.%s[%lld] = %g but must be finite and > 0", where, names[a],
                            (long long)i, arrays[a][i]);
    }
    f->short_f = c->short_factors, f->long_f = c->long_factors;
  }
  if ((c->scaling == ATTN_ROPE_SCALING_NTK || c->scaling == ATTN_ROPE_SCALING_DYNAMIC_NTK) &&
      f->half < 2)
    return attn__fail(ctx, ATTN_ERR_SHAPE,
                      "the rotary dim r = %lld but NTK scaling needs r > 2 (its exponent "
                      "is r/(r-2))",
                      (long long)(2 * f->half));
  return ATTN_OK;
}

/* Extreme but finite parameters (a factor of 1e-300, beta_fast near 0, an
 * attention factor of 1e300) can make a frequency, an angle or a scaled
 * table entry overflow: refuse them rather than write Inf or NaN. w NULL:
 * empty tables, no angles. */
static attn_status check_freqs(attn_ctx *ctx, const freq_plan *f, const double *w,
                               double scale) {
  double last = f->P > 0 ? (double)(f->P - 1) : 0.0;
  for (int64_t i = 0; w && i < f->half; i++)
    if (!isfinite(w[i]) || !isfinite(w[i] * last))
      return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                        "the scaled frequency of pair %lld is %g, whose angle at position "
                        "%lld is not finite: check factor, the betas and the per-dimension "
                        "factors",
                        (long long)i, w[i], (long long)(f->P > 0 ? f->P - 1 : 0));
  if (!(scale >= FLT_MIN && scale <= FLT_MAX))
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "the attention factor is %g: applied to float tables it would "
                      "overflow or underflow (it must lie in [%g, %g])",
                      scale, (double)FLT_MIN, (double)FLT_MAX);
  return ATTN_OK;
}

/* For a layer: positions are not bounded by a table, so the angles must be
 * finite at any int64 position. */
attn_status attn__rope_scaled_freqs(attn_ctx *ctx, const char *where,
                                    const attn_rope_cache_params *prm, int64_t half, int64_t P,
                                    double *w, double *attention_factor) {
  freq_plan f;
  memset(&f, 0, sizeof f);
  f.P = P;
  f.half = half;
  attn_status st = check_cache_params(ctx, where, prm, &f);
  if (st != ATTN_OK)
    return st;
  plan_freqs(&f, w);
  double af = plan_attention_factor(&f);
  if (prm->apply_attention_factor && (st = check_attention_factor(ctx, where, af)) != ATTN_OK)
    return st;
  f.P = INT64_MAX;
  if ((st = check_freqs(ctx, &f, w, prm->apply_attention_factor ? af : 1.0)) == ATTN_OK)
    *attention_factor = af;
  return st;
}

static attn_status cache_fill(attn_ctx *ctx, attn_tensor *cos_t, attn_tensor *sin_t,
                              const attn_rope_cache_params *params, double *attention_factor) {
  attn_rope_cache_params prm;
  attn_rope_cache_params_init(&prm);
  const attn_operand ops[] = {
      {ATTN_OPERAND("cos", cos_t, ATTN_DT_F32, 2, 2), .flags = ATTN_OPND_OUTPUT},
      {ATTN_OPERAND("sin", sin_t, ATTN_DT_F32, 2, 2), .like = ATTN_LIKE(0),
       .flags = ATTN_OPND_OUTPUT | ATTN_OPND_SAME_SHAPE},
  };
  attn_status st;
  if ((st = attn__read_params(ctx, &prm, sizeof prm, params)) != ATTN_OK ||
      (st = attn__check_operands(ctx, ops, 2, NULL)) != ATTN_OK)
    return st;
  freq_plan f;
  memset(&f, 0, sizeof f);
  f.P = cos_t->dims[0];
  f.half = cos_t->dims[1];
  if ((st = check_cache_params(ctx, "params", &prm, &f)) != ATTN_OK)
    return st;
  double af = plan_attention_factor(&f);
  if ((prm.apply_attention_factor || attention_factor) &&
      (st = check_attention_factor(ctx, "params", af)) != ATTN_OK)
    return st;
  if (attn__empty(cos_t)) { /* no angles (an empty table may claim 2^62 pairs): the factor */
    if ((st = check_freqs(ctx, &f, NULL, prm.apply_attention_factor ? af : 1.0)) == ATTN_OK &&
        attention_factor)
      *attention_factor = af;
    return st;
  }
  size_t bytes = (size_t)f.half * sizeof(double); /* less than the tables' own bytes */
  if ((st = attn__ws_reserve(ctx, bytes)) != ATTN_OK)
    return st;
  double *w = attn__ws_alloc(ctx, bytes);
  plan_freqs(&f, w);
  if ((st = check_freqs(ctx, &f, w, prm.apply_attention_factor ? af : 1.0)) != ATTN_OK)
    return st;

  fill_problem p;
  memset(&p, 0, sizeof p);
  p.cos = cos_t->data, p.sin = sin_t->data;
  p.cs = cos_t->strides[0], p.ss = sin_t->strides[0];
  p.half = f.half, p.P = f.P;
  int32_t threads =
      attn__threads_plan(ctx, (double)f.P * (double)f.half * 2, MIN_WORK_PER_THREAD, 0);
  p.rows_per_item = attn__items_balanced(f.P, 1024 / f.half, threads);
  int64_t items = (f.P + p.rows_per_item - 1) / p.rows_per_item;
  if (threads > items)
    threads = (int32_t)items;
  p.w = w;
  p.scale = prm.apply_attention_factor ? af : 1.0;
  attn__parallel_for(ctx, threads, items, fill_item, &p);
  if (attention_factor)
    *attention_factor = af;
  return ATTN_OK;
}

attn_status attn_rope_cache_fill(attn_ctx *ctx, attn_tensor *cos_t, attn_tensor *sin_t,
                                 const attn_rope_cache_params *params, double *attention_factor) {
  attn_status st = attn__op_begin(ctx, "attn_rope_cache_fill");
  if (st != ATTN_OK)
    return st;
  return attn__op_end(ctx, cache_fill(ctx, cos_t, sin_t, params, attention_factor));
}
