/* Positional encodings: sinusoidal tables (four column layouts), rotary
 * embedding (RoPE) in place, and ALiBi slopes.
 *
 * Angles are formed and passed to sin/cos in double: a float angle at
 * position 1e6 is off by up to 0.03 rad, while the double one stays near
 * 1e-10, so the stored float is the correctly rounded value to within a few
 * 1e-8. Frequencies are computed once per call; sin/cos once per (position,
 * frequency) and reused across batches (sinusoidal_add) or heads (rope),
 * since a sin/cos pair costs far more than the multiply-adds that use it. */
#include "internal.h"

#include <math.h>
#include <string.h>

static size_t round_up(size_t n) { return (n + ATTN_ALIGN - 1) & ~(size_t)(ATTN_ALIGN - 1); }

/* A sin/cos pair costs tens of times an add, so a thread earns its wake-up
 * after about this many table entries or rotated elements. */
#define MIN_WORK_PER_THREAD 16384.0

/* ---------------------------------------------------------------- sinusoidal */

typedef struct {
  int32_t layout;
  int64_t B, L, D;   /* B = 1 for the table itself */
  float *x;          /* out (table) or x (add) */
  int64_t xs[3];     /* strides of [B, L, D] (xs[0] unused when B = 1) */
  bool add;
  double offset;
  const double *positions;
  const double *freq; /* n_freq frequencies */
  int64_t rows_per_item;
  float *rowbuf;      /* one row of D floats per worker */
  size_t rowbuf_stride; /* floats between workers' rows */
} sin_problem;

/* Frequencies of a layout; returns how many. Exponents are exact ratios of
 * integers, and the lowest frequency of the shifted layout is set to 1/base
 * directly, as documented (pow(base, -1) need not round the same way). */
static int64_t sin_freqs(int32_t layout, int64_t D, double base, double *freq) {
  int64_t h = D / 2;
  switch (layout) {
  case ATTN_PE_INTERLEAVED: {
    int64_t n = (D + 1) / 2;
    for (int64_t i = 0; i < n; i++)
      freq[i] = pow(base, -(double)(2 * i) / (double)D);
    return n;
  }
  case ATTN_PE_SIN_COS_SHIFTED:
    for (int64_t i = 0; i < h; i++)
      freq[i] = i == h - 1 ? 1.0 / base : pow(base, -(double)i / (double)(h - 1));
    return h;
  default: /* SIN_COS, COS_SIN */
    for (int64_t i = 0; i < h; i++)
      freq[i] = pow(base, -(double)i / (double)h);
    return h;
  }
}

/* One row of the table at position pos. */
static void sin_row(const sin_problem *p, double pos, float *row) {
  const double *w = p->freq;
  int64_t D = p->D, h = D / 2;
  switch (p->layout) {
  case ATTN_PE_INTERLEAVED:
    for (int64_t i = 0; i < h; i++) {
      double a = pos * w[i];
      row[2 * i] = (float)sin(a);
      row[2 * i + 1] = (float)cos(a);
    }
    if (D & 1)
      row[D - 1] = (float)sin(pos * w[h]);
    return;
  case ATTN_PE_COS_SIN:
    for (int64_t i = 0; i < h; i++) {
      double a = pos * w[i];
      row[i] = (float)cos(a);
      row[h + i] = (float)sin(a);
    }
    break;
  default: /* SIN_COS, SIN_COS_SHIFTED */
    for (int64_t i = 0; i < h; i++) {
      double a = pos * w[i];
      row[i] = (float)sin(a);
      row[h + i] = (float)cos(a);
    }
    break;
  }
  if (D & 1)
    row[D - 1] = 0.0f;
}

static void sin_item(void *arg, int64_t item, int32_t worker) {
  const sin_problem *p = arg;
  float *row = p->rowbuf + p->rowbuf_stride * (size_t)worker;
  int64_t l0 = item * p->rows_per_item;
  int64_t l1 = l0 + p->rows_per_item < p->L ? l0 + p->rows_per_item : p->L;
  for (int64_t l = l0; l < l1; l++) {
    double pos = p->positions ? p->positions[l] : p->offset + (double)l;
    sin_row(p, pos, row);
    for (int64_t b = 0; b < p->B; b++) {
      float *dst = p->x + b * p->xs[0] + l * p->xs[1];
      if (p->add)
        for (int64_t j = 0; j < p->D; j++)
          dst[j] += row[j];
      else
        memcpy(dst, row, (size_t)p->D * sizeof(float));
    }
  }
}

void attn_sinusoidal_params_init(attn_sinusoidal_params *p) {
  if (!p)
    return;
  memset(p, 0, sizeof *p);
  p->struct_size = sizeof *p;
}

static const char *layout_name(int32_t layout) {
  switch (layout) {
  case ATTN_PE_INTERLEAVED: return "ATTN_PE_INTERLEAVED";
  case ATTN_PE_SIN_COS: return "ATTN_PE_SIN_COS";
  case ATTN_PE_SIN_COS_SHIFTED: return "ATTN_PE_SIN_COS_SHIFTED";
  case ATTN_PE_COS_SIN: return "ATTN_PE_COS_SIN";
  default: return NULL;
  }
}

/* Shared body of attn_sinusoidal (add = false, x is [L, D]) and
 * attn_sinusoidal_add (add = true, x is [L, D] or [B, L, D]). */
static attn_status sinusoidal(attn_ctx *ctx, const char *fn, const char *name, attn_tensor *x,
                              const attn_sinusoidal_params *params, bool add) {
  attn_status st = attn__check_ctx(ctx);
  if (st != ATTN_OK)
    return st;
  attn_sinusoidal_params prm;
  attn_sinusoidal_params_init(&prm);
  if ((st = attn__read_params(ctx, fn, &prm, sizeof prm, params)) != ATTN_OK ||
      (st = attn__check_tensor(ctx, fn, name, x, ATTN_DTYPE_F32, 2, add ? 3 : 2)) != ATTN_OK)
    return st;
  int32_t nd = x->ndim;
  int64_t B = nd == 3 ? x->dims[0] : 1, L = x->dims[nd - 2], D = x->dims[nd - 1];
  if (!layout_name(prm.layout))
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "%s: params.layout = %d is not an attn_pe_layout (0..3)", fn,
                      (int)prm.layout);
  if (prm.reserved_)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG, "%s: params.reserved_ = %d but must be 0",
                      fn, (int)prm.reserved_);
  double base = prm.base == 0 ? 10000.0 : prm.base;
  if (!isfinite(base) || !(base > 1))
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "%s: params.base = %g but must be finite and > 1 (0 = 10000)", fn,
                      prm.base);
  if (!isfinite(prm.offset))
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG, "%s: params.offset = %g but must be finite",
                      fn, prm.offset);
  if (prm.layout == ATTN_PE_SIN_COS_SHIFTED && D < 4)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "%s: %s.shape[%d] = %lld but ATTN_PE_SIN_COS_SHIFTED needs D >= 4 (its "
                      "exponent divides by D/2 - 1)",
                      fn, name, (int)(nd - 1), (long long)D);
  if (prm.positions)
    for (int64_t l = 0; l < L; l++)
      if (!isfinite(prm.positions[l]))
        return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                          "%s: params.positions[%lld] = %g but positions must be finite", fn,
                          (long long)l, prm.positions[l]);
  if ((st = attn__check_writable(ctx, fn, name, x)) != ATTN_OK)
    return st;

  sin_problem p;
  memset(&p, 0, sizeof p);
  p.layout = prm.layout;
  p.B = B, p.L = L, p.D = D;
  p.x = x->data;
  p.xs[0] = nd == 3 ? x->strides[0] : 0;
  p.xs[1] = x->strides[nd - 2];
  p.xs[2] = 1;
  p.add = add;
  p.offset = prm.offset;
  p.positions = prm.positions;

  /* A sin or cos per table entry, plus a cheap add per element of x. */
  double work = (double)L * (double)D + (add ? (double)B * (double)L * (double)D / 16 : 0);
  int32_t threads = attn__threads_for(ctx, work, MIN_WORK_PER_THREAD);
  /* Items of at least ~1024 entries keep the shared counter off the profile,
   * and at least 4 per thread keep the threads balanced. */
  p.rows_per_item = 1024 / D > 1 ? 1024 / D : 1;
  if (threads > 1 && L / p.rows_per_item < 4 * (int64_t)threads)
    p.rows_per_item = L / (4 * (int64_t)threads) > 1 ? L / (4 * (int64_t)threads) : 1;
  int64_t n_items = (L + p.rows_per_item - 1) / p.rows_per_item;
  if (threads > n_items)
    threads = (int32_t)n_items;

  size_t freq_bytes = round_up((size_t)(D / 2 + 1) * sizeof(double));
  size_t row_bytes = round_up((size_t)D * sizeof(float));
  size_t total;
  if (__builtin_mul_overflow(row_bytes, (size_t)threads, &total) ||
      __builtin_add_overflow(total, freq_bytes, &total))
    return attn__fail(ctx, ATTN_ERR_OVERFLOW, "%s: workspace size overflows", fn);
  char *mem = attn__scratch(ctx, fn, total);
  if (!mem)
    return ATTN_ERR_NO_MEMORY;
  double *freq = (double *)mem;
  sin_freqs(prm.layout, D, base, freq);
  p.freq = freq;
  p.rowbuf = (float *)(mem + freq_bytes);
  p.rowbuf_stride = row_bytes / sizeof(float);
  attn__parallel_for(ctx, threads, n_items, sin_item, &p);
  return ATTN_OK;
}

attn_status attn_sinusoidal(attn_ctx *ctx, attn_tensor *out, const attn_sinusoidal_params *p) {
  return sinusoidal(ctx, "attn_sinusoidal", "out", out, p, false);
}

attn_status attn_sinusoidal_add(attn_ctx *ctx, attn_tensor *x, const attn_sinusoidal_params *p) {
  return sinusoidal(ctx, "attn_sinusoidal_add", "x", x, p, true);
}

/* ---------------------------------------------------------------- rotary */

typedef struct {
  float *x;
  int64_t B, H, L, D, xs[4];
  int64_t half; /* r / 2 */
  bool interleaved;
  int64_t offset;
  const int64_t *positions;
  const double *inv_freq; /* half */
  /* Work items are (batch, block of T tokens) or, when every batch shares
   * the positions, blocks of tokens with the batches looped inside. */
  int64_t T, n_blocks;
  bool share_batches;
  bool heads_outer; /* x's head stride exceeds its token stride */
  double *tables;   /* per worker: cos[T][half] then sin[T][half] */
  size_t table_stride;
} rope_problem;

/* Pairs (a[i], b[i]) rotated by angle i: a' = a c - b s, b' = a s + b c, in
 * double so the only rounding is the final store. For half-split pairs a
 * and b are two halves of a row and never overlap, hence restrict. */
static void rotate_split(float *restrict a, float *restrict b, const double *c, const double *s,
                         int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    double u = a[i], v = b[i];
    a[i] = (float)(u * c[i] - v * s[i]);
    b[i] = (float)(u * s[i] + v * c[i]);
  }
}

static void rotate_interleaved(float *x, const double *c, const double *s, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    double u = x[2 * i], v = x[2 * i + 1];
    x[2 * i] = (float)(u * c[i] - v * s[i]);
    x[2 * i + 1] = (float)(u * s[i] + v * c[i]);
  }
}

static void rotate_row(const rope_problem *p, float *row, const double *c, const double *s) {
  if (p->interleaved)
    rotate_interleaved(row, c, s, p->half);
  else
    rotate_split(row, row + p->half, c, s, p->half);
}

static void rope_item(void *arg, int64_t item, int32_t worker) {
  const rope_problem *p = arg;
  double *cosv = p->tables + p->table_stride * (size_t)worker;
  double *sinv = cosv + p->T * p->half;
  int64_t blk = item % p->n_blocks;
  int64_t b0 = p->share_batches ? 0 : item / p->n_blocks;
  int64_t b1 = p->share_batches ? p->B : b0 + 1;
  int64_t l0 = blk * p->T, nl = p->L - l0 < p->T ? p->L - l0 : p->T;
  for (int64_t b = b0; b < b1; b++) {
    if (b == b0 || p->positions) {
      for (int64_t t = 0; t < nl; t++) {
        int64_t l = l0 + t;
        double pos = (double)(p->positions ? p->positions[b * p->L + l] : p->offset + l);
        double *c = cosv + t * p->half, *s = sinv + t * p->half;
        for (int64_t i = 0; i < p->half; i++) {
          double a = pos * p->inv_freq[i];
          c[i] = cos(a);
          s[i] = sin(a);
        }
      }
    }
    float *xb = p->x + b * p->xs[0] + l0 * p->xs[2];
    /* Walk the rows in memory order so each head (or token) is one stream. */
    if (p->heads_outer) {
      for (int64_t h = 0; h < p->H; h++)
        for (int64_t t = 0; t < nl; t++)
          rotate_row(p, xb + h * p->xs[1] + t * p->xs[2], cosv + t * p->half,
                     sinv + t * p->half);
    } else {
      for (int64_t t = 0; t < nl; t++)
        for (int64_t h = 0; h < p->H; h++)
          rotate_row(p, xb + h * p->xs[1] + t * p->xs[2], cosv + t * p->half,
                     sinv + t * p->half);
    }
  }
}

void attn_rope_params_init(attn_rope_params *p) {
  if (!p)
    return;
  memset(p, 0, sizeof *p);
  p->struct_size = sizeof *p;
}

attn_status attn_rope(attn_ctx *ctx, attn_tensor *x, const attn_rope_params *params) {
  static const char fn[] = "attn_rope";
  attn_status st = attn__check_ctx(ctx);
  if (st != ATTN_OK)
    return st;
  attn_rope_params prm;
  attn_rope_params_init(&prm);
  if ((st = attn__read_params(ctx, fn, &prm, sizeof prm, params)) != ATTN_OK ||
      (st = attn__check_tensor(ctx, fn, "x", x, ATTN_DTYPE_F32, 4, 4)) != ATTN_OK)
    return st;
  int64_t B = x->dims[0], H = x->dims[1], L = x->dims[2], D = x->dims[3];
  if (prm.style != ATTN_ROPE_HALF_SPLIT && prm.style != ATTN_ROPE_INTERLEAVED)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "%s: params.style = %d is not an attn_rope_style (0 = half-split, 1 = "
                      "interleaved)",
                      fn, (int)prm.style);
  int64_t r = prm.rotary_dim;
  if (r == 0 && (D & 1))
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "%s: params.rotary_dim = 0 rotates all of x.shape[3] = %lld, which must "
                      "then be even (or set rotary_dim to an even value <= %lld)",
                      fn, (long long)D, (long long)D);
  if (r < 0 || r > D || (r & 1))
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "%s: params.rotary_dim = %lld but must be even and in 0..x.shape[3] = "
                      "%lld (0 = all)",
                      fn, (long long)r, (long long)D);
  if (r == 0)
    r = D;
  double theta = prm.theta == 0 ? 10000.0 : prm.theta;
  if (!isfinite(theta) || !(theta > 1))
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "%s: params.theta = %g but must be finite and > 1 (0 = 10000)", fn,
                      prm.theta);
  if (prm.offset < 0 || (!prm.positions && prm.offset > INT64_MAX - (L - 1)))
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "%s: params.offset = %lld but must be >= 0, with offset + L - 1 within "
                      "int64 (L = %lld)",
                      fn, (long long)prm.offset, (long long)L);
  if (prm.positions)
    for (int64_t i = 0; i < B * L; i++)
      if (prm.positions[i] < 0)
        return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                          "%s: params.positions[%lld] (batch %lld, token %lld) = %lld but "
                          "positions must be >= 0",
                          fn, (long long)i, (long long)(i / L), (long long)(i % L),
                          (long long)prm.positions[i]);
  if ((st = attn__check_writable(ctx, fn, "x", x)) != ATTN_OK)
    return st;

  rope_problem p;
  memset(&p, 0, sizeof p);
  p.x = x->data;
  p.B = B, p.H = H, p.L = L, p.D = D;
  memcpy(p.xs, x->strides, sizeof p.xs);
  p.half = r / 2;
  p.interleaved = prm.style == ATTN_ROPE_INTERLEAVED;
  p.offset = prm.offset;
  p.positions = prm.positions;
  /* Stride order decides the walk; a size-1 axis has no say. */
  p.heads_outer = H > 1 && (L == 1 || p.xs[1] >= p.xs[2]);

  /* A block's table (T tokens x r/2 cos and sin, doubles) stays within
   * 16 KiB so it sits in L1 next to the rows being rotated. */
  p.T = 1024 / p.half > 1 ? 1024 / p.half : 1;
  if (p.T > 16)
    p.T = 16;
  if (p.T > L)
    p.T = L;
  p.n_blocks = (L + p.T - 1) / p.T;
  double rotated = (double)B * (double)H * (double)L * (double)r;
  double trig = (double)(prm.positions ? B : 1) * (double)L * (double)p.half * 16;
  int32_t threads = attn__threads_for(ctx, rotated + trig, MIN_WORK_PER_THREAD);
  /* Without explicit positions every batch has the same table: compute it
   * once per block, unless that leaves too few items for the threads. */
  p.share_batches = !prm.positions && (B == 1 || p.n_blocks >= 2 * (int64_t)threads);
  int64_t n_items = p.share_batches ? p.n_blocks : B * p.n_blocks;
  if (threads > n_items)
    threads = (int32_t)n_items;

  size_t inv_bytes = round_up((size_t)p.half * sizeof(double));
  size_t table_bytes = round_up((size_t)(2 * p.T * p.half) * sizeof(double));
  size_t total;
  if (__builtin_mul_overflow(table_bytes, (size_t)threads, &total) ||
      __builtin_add_overflow(total, inv_bytes, &total))
    return attn__fail(ctx, ATTN_ERR_OVERFLOW, "%s: workspace size overflows", fn);
  char *mem = attn__scratch(ctx, fn, total);
  if (!mem)
    return ATTN_ERR_NO_MEMORY;
  double *inv = (double *)mem;
  for (int64_t i = 0; i < p.half; i++)
    inv[i] = pow(theta, -(double)(2 * i) / (double)r);
  p.inv_freq = inv;
  p.tables = (double *)(mem + inv_bytes);
  p.table_stride = table_bytes / sizeof(double);
  attn__parallel_for(ctx, threads, n_items, rope_item, &p);
  return ATTN_OK;
}

/* ---------------------------------------------------------------- ALiBi */

#define ALIBI_MAX_HEADS (1 << 20)

attn_status attn_alibi_slopes(attn_ctx *ctx, int32_t n_heads, double max_bias,
                              float *slopes) {
  static const char fn[] = "attn_alibi_slopes";
  attn_status st = attn__check_ctx(ctx);
  if (st != ATTN_OK)
    return st;
  if (!slopes)
    return attn__fail(ctx, ATTN_ERR_NULL_ARG, "%s: slopes is NULL", fn);
  if (n_heads < 1 || n_heads > ALIBI_MAX_HEADS)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG, "%s: n_heads = %d but must be in 1..%d", fn,
                      (int)n_heads, ALIBI_MAX_HEADS);
  double mb = max_bias == 0 ? 8.0 : max_bias;
  if (!isfinite(mb) || !(mb > 0))
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "%s: max_bias = %g but must be finite and > 0 (0 = 8)", fn, max_bias);
  int32_t n = 1;
  while (n <= n_heads / 2)
    n *= 2;
  /* m0^(h+1) written as one exp2: exact powers of two whenever the exponent
   * is an integer (n = 8, max_bias = 8 gives 2^-1 .. 2^-8 exactly), and no
   * error growing with h as repeated multiplication would have. */
  for (int32_t h = 0; h < n_heads; h++) {
    double e = h < n ? mb * (double)(h + 1) / (double)n
                     : mb * (double)(2 * (h - n) + 1) / (2.0 * (double)n);
    slopes[h] = (float)exp2(-e);
  }
  return ATTN_OK;
}
