/* Positional encodings: sinusoidal tables (four column layouts) and ALiBi
 * slopes (RoPE is in rope.c).
 *
 * Angles are formed and passed to sin/cos in double (angles.h: sin/cos at
 * every 256th row, the rows between reached by rotations in double), so the
 * stored float is the correctly rounded value to within a few 1e-8.
 * Frequencies are computed once per call, each row reused across batches
 * (sinusoidal_add). */
#include "angles.h"
#include "check.h"
#include "convert.h"

#include <math.h>
#include <string.h>

/* A sin/cos pair costs tens of times an add, so a thread earns its wake-up
 * after about this many table entries. */
#define MIN_WORK_PER_THREAD 16384.0

/* Bytes of a batch's rows per work item, at most (balance may cut it). */
#define ITEM_BYTES (128 * 1024)
/* Distance of the prefetch ahead of each batch's rows: a page. */
#define AHEAD_BYTES 4096

/* ---------------------------------------------------------------- sinusoidal */

typedef struct {
  int32_t layout;
  int64_t B, L, D; /* B = 1 for the table itself */
  void *x;         /* out (table) or x (add) */
  int32_t xdt;     /* F32, or F16/BF16: rows computed in float, rounded once */
  int64_t xs[3];   /* strides of [B, L, D] (xs[0] unused when B = 1) */
  bool add;
  double offset;
  const double *positions;
  double base;
  /* Plan. */
  int32_t threads;
  int64_t rows_per_item, n_items;
  size_t ws_bytes;
  int64_t nf; /* frequencies of the layout */
  /* Workspace (sin_layout). */
  double *freq;         /* the layout's frequencies */
  attn_angles angles;   /* over freq, turns in the workspace */
  float *rowbuf;        /* per worker: one row of D floats (two adding to half x), */
  size_t rowbuf_stride; /* then cos and sin of the current row and of the
                           worker's span row (angles.h; nf doubles each) */
} sin_problem;

/* The workspace: frequencies, then a row per thread. Sizes it when l->base
 * is NULL, carves it otherwise. */
static void sin_layout(void *problem, attn_ws_layout *l) {
  sin_problem *p = problem;
  size_t rows = p->add && p->xdt != ATTN_DTYPE_F32 ? 2 : 1;
  size_t row_bytes = attn__ws_round(rows * (size_t)p->D * sizeof(float));
  p->rowbuf_stride =
      attn__ws_round(row_bytes + 4 * (size_t)p->nf * sizeof(double)) / sizeof(float);
  p->freq = attn__ws_take(l, (size_t)(p->D / 2 + 1), sizeof(double));
  p->angles.turns = attn__ws_take(l, attn__angles_doubles(p->nf), sizeof(double));
  p->rowbuf = attn__ws_take(l, (size_t)p->threads, p->rowbuf_stride * sizeof(float));
}

/* cos and sin at row l of every frequency, into (c, s), which hold row
 * l - 1's unless `first` (angles.h; explicit positions: sin and cos of
 * each). */
static void row_angles(const sin_problem *p, attn_angles_span *hi, int64_t l, bool first,
                       double *c, double *s) {
  if (p->positions)
    attn__angles_exact(&p->angles, p->positions[l], c, s);
  else
    attn__angles_row(&p->angles, hi, l, first ? NULL : c, s, c, s);
}

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

/* One row of the table from the cos and sin of its angles. */
static void sin_row(const sin_problem *p, const double *c, const double *s, float *row) {
  int64_t D = p->D, h = D / 2;
  switch (p->layout) {
  case ATTN_PE_INTERLEAVED:
    for (int64_t i = 0; i < h; i++) {
      row[2 * i] = (float)s[i];
      row[2 * i + 1] = (float)c[i];
    }
    if (D & 1)
      row[D - 1] = (float)s[h];
    return;
  case ATTN_PE_COS_SIN:
    for (int64_t i = 0; i < h; i++) {
      row[i] = (float)c[i];
      row[h + i] = (float)s[i];
    }
    break;
  default: /* SIN_COS, SIN_COS_SHIFTED */
    for (int64_t i = 0; i < h; i++) {
      row[i] = (float)s[i];
      row[h + i] = (float)c[i];
    }
    break;
  }
  if (D & 1)
    row[D - 1] = 0.0f;
}

static void sin_item(void *arg, int64_t item, int32_t worker) {
  const sin_problem *p = arg;
  const attn_kernels *k = attn__kernels();
  float *row = p->rowbuf + p->rowbuf_stride * (size_t)worker;
  size_t row_floats = attn__ws_round((p->add && p->xdt != ATTN_DTYPE_F32 ? 2 : 1) *
                                     (size_t)p->D * sizeof(float)) / sizeof(float);
  double *c = (double *)(row + row_floats), *s = c + p->nf;
  attn_angles_span hi = {-1, s + p->nf, s + 2 * p->nf};
  int64_t l0 = item * p->rows_per_item;
  int64_t l1 = l0 + p->rows_per_item < p->L ? l0 + p->rows_per_item : p->L;
  /* Adding, the row a page (AHEAD_BYTES) further on in each batch is
   * requested meanwhile: the batches' rows lie far apart, so a thread walks
   * B streams at once and the hardware prefetchers stop at each one's pages
   * (1 and 2 threads about 10 % less CPU time on [8, 4096, 128]). */
  size_t row_bytes = (size_t)p->D * attn__dtype_size(p->xdt);
  int64_t ahead = AHEAD_BYTES / (int64_t)row_bytes;
  ahead = ahead < 1 ? 1 : ahead;
  for (int64_t l = l0; l < l1; l++) {
    row_angles(p, &hi, l, l == l0, c, s);
    sin_row(p, c, s, row);
    for (int64_t b = 0; b < p->B; b++) {
      void *dst = attn__elem(p->x, p->xdt, b * p->xs[0] + l * p->xs[1]);
      if (p->add && l + ahead < p->L) {
        const char *pa = attn__elem(p->x, p->xdt, b * p->xs[0] + (l + ahead) * p->xs[1]);
        for (size_t o = 0; o < row_bytes; o += 64) /* a cache line each */
          __builtin_prefetch(pa + o, 1, 3);
      }
      if (!p->add) {
        attn__narrow(k, p->xdt, row, dst, p->D);
        continue;
      }
      /* x + row in float (scale_add: x * 1 + row, the same sum, vectorised),
       * rounded once back for a half x. */
      float *xf = p->xdt == ATTN_DTYPE_F32 ? dst : row + p->D;
      attn__widen(k, p->xdt, dst, xf, p->D);
      k->scale_add(xf, row, xf, p->D, 1.0f);
      attn__narrow(k, p->xdt, xf, dst, p->D);
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

/* Check: x is [L, D] (the table) or, adding, [L, D] or [B, L, D]. */
static attn_status sin_check(attn_ctx *ctx, const char *name, attn_tensor *x,
                             const attn_sinusoidal_params *params, bool add, sin_problem *p) {
  attn_sinusoidal_params prm;
  attn_sinusoidal_params_init(&prm);
  const attn_operand ops[] = {
      {ATTN_OPERAND(name, x, ATTN_DT_FLOAT, 2, add ? 3 : 2), .flags = ATTN_OPND_OUTPUT},
  };
  attn_status st;
  if ((st = attn__read_params(ctx, &prm, sizeof prm, params)) != ATTN_OK ||
      (st = attn__check_operands(ctx, ops, 1, NULL)) != ATTN_OK)
    return st;
  int32_t nd = x->ndim;
  int64_t B = nd == 3 ? x->dims[0] : 1, L = x->dims[nd - 2], D = x->dims[nd - 1];
  if (!layout_name(prm.layout))
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "params.layout = %d is not an attn_pe_layout (0..3)", (int)prm.layout);
  if (prm.reserved_)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG, "params.reserved_ = %d but must be 0",
                      (int)prm.reserved_);
  double base = prm.base == 0 ? 10000.0 : prm.base;
  if (!isfinite(base) || !(base > 1))
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "params.base = %g but must be finite and > 1 (0 = 10000)", prm.base);
  if (!isfinite(prm.offset))
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG, "params.offset = %g but must be finite",
                      prm.offset);
  if (prm.layout == ATTN_PE_SIN_COS_SHIFTED && D < 4 && D > 0)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "%s.shape[%d] = %lld but ATTN_PE_SIN_COS_SHIFTED needs D >= 4 (its "
                      "exponent divides by D/2 - 1)",
                      name, (int)(nd - 1), (long long)D);
  if (prm.positions)
    for (int64_t l = 0; l < L; l++)
      if (!isfinite(prm.positions[l]))
        return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                          "params.positions[%lld] = %g but positions must be finite", (long long)l,
                          prm.positions[l]);
  memset(p, 0, sizeof *p);
  p->layout = prm.layout;
  p->B = B, p->L = L, p->D = D;
  p->x = x->data;
  p->xdt = x->dtype;
  p->xs[0] = nd == 3 ? x->strides[0] : 0;
  p->xs[1] = x->strides[nd - 2];
  p->xs[2] = 1;
  p->add = add;
  p->offset = prm.offset;
  p->positions = prm.positions;
  p->base = base;
  return ATTN_OK;
}

static void sin_plan(const attn_ctx *ctx, sin_problem *p) {
  p->nf = p->layout == ATTN_PE_INTERLEAVED ? (p->D + 1) / 2 : p->D / 2;
  /* A sin or cos per table entry, plus a cheap add per element of x. */
  double work =
      (double)p->L * (double)p->D + (p->add ? (double)p->B * (double)p->L * (double)p->D / 16 : 0);
  p->threads = attn__threads_plan(ctx, work, MIN_WORK_PER_THREAD, 0);
  /* Items of ITEM_BYTES of rows (at least one): each thread walks long runs
   * of every batch's rows, which the prefetchers follow, and an item's first
   * row is the only one that may need sin/cos off an anchor (row_angles).
   * Items of 8 rows (4 KiB a batch, alternating between the threads) ran
   * 1.2-1.3x slower on 1 and 2 threads. */
  p->rows_per_item = attn__items_balanced(p->L, ITEM_BYTES / (p->D * (int64_t)sizeof(float)),
                                          p->threads);
  p->n_items = (p->L + p->rows_per_item - 1) / p->rows_per_item;
  if (p->threads > p->n_items)
    p->threads = (int32_t)p->n_items;
  p->ws_bytes = attn__ws_size(sin_layout, p);
}

static void sin_run(attn_ctx *ctx, sin_problem *p) {
  size_t mark = attn__ws_carve(ctx, sin_layout, p, p->ws_bytes);
  sin_freqs(p->layout, p->D, p->base, p->freq);
  p->angles.n = p->nf;
  p->angles.freq = p->freq;
  p->angles.origin = p->offset;
  p->angles.amp = 1;
  p->angles.negate = false;
  attn__angles_init(&p->angles);
  attn__parallel_for(ctx, p->threads, p->n_items, sin_item, p);
  attn__ws_release(ctx, mark);
}

static attn_status sinusoidal(attn_ctx *ctx, const char *op, const char *name, attn_tensor *x,
                              const attn_sinusoidal_params *params, bool add) {
  attn_status st = attn__op_begin(ctx, op);
  if (st != ATTN_OK)
    return st;
  sin_problem p;
  if ((st = sin_check(ctx, name, x, params, add, &p)) == ATTN_OK && !attn__empty(x)) {
    sin_plan(ctx, &p);
    if ((st = attn__ws_reserve(ctx, p.ws_bytes)) == ATTN_OK)
      sin_run(ctx, &p);
  }
  return attn__op_end(ctx, st);
}

attn_status attn_sinusoidal(attn_ctx *ctx, attn_tensor *out, const attn_sinusoidal_params *p) {
  return sinusoidal(ctx, "attn_sinusoidal", "out", out, p, false);
}

attn_status attn_sinusoidal_add(attn_ctx *ctx, attn_tensor *x, const attn_sinusoidal_params *p) {
  return sinusoidal(ctx, "attn_sinusoidal_add", "x", x, p, true);
}

/* ---------------------------------------------------------------- ALiBi */

#define ALIBI_MAX_HEADS (1 << 20)

static attn_status alibi_slopes(attn_ctx *ctx, int32_t n_heads, double max_bias, float *slopes) {
  if (!slopes)
    return attn__fail(ctx, ATTN_ERR_NULL_ARG, "slopes is NULL");
  if (n_heads < 1 || n_heads > ALIBI_MAX_HEADS)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG, "n_heads = %d but must be in 1..%d", (int)n_heads,
                      ALIBI_MAX_HEADS);
  double mb = max_bias == 0 ? 8.0 : max_bias;
  if (!isfinite(mb) || !(mb > 0))
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG, "max_bias = %g but must be finite and > 0 (0 = 8)",
                      max_bias);
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

attn_status attn_alibi_slopes(attn_ctx *ctx, int32_t n_heads, double max_bias, float *slopes) {
  attn_status st = attn__op_begin(ctx, "attn_alibi_slopes");
  if (st != ATTN_OK)
    return st;
  return attn__op_end(ctx, alibi_slopes(ctx, n_heads, max_bias, slopes));
}
