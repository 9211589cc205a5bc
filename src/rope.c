/* Rotary position embedding (RoPE), in place: check -> plan -> run.
 *
 * Angles are formed and passed to sin/cos in double (angles.h); a
 * block of tokens' cos/sin table is computed once (stepped_angles) and
 * reused across heads (and across batches when they share positions); the
 * rotation itself is a dispatched kernel (simd/kernels.h, in double). */
#include "rope.h"
#include "check.h"
#include "convert.h"

#include <math.h>
#include <string.h>

/* A sin/cos pair costs tens of times an add, so a thread earns its wake-up
 * after about this many rotated elements. */
#define MIN_WORK_PER_THREAD 16384.0

/* Blocks per work item, at most: 16 blocks of 16 tokens of 128 floats are
 * 128 KiB per head, long enough runs for the prefetchers. */
#define ITEM_BLOCKS 16

/* Rows are rotated in memory order, and the hardware prefetchers stop at
 * each page: rotate_at requests the bytes a page ahead itself (RoPE ran
 * 1.3-1.6x faster per CPU second with it, bench/RESULTS.md). */
#define PREFETCH_BYTES 4096
/* A row's pairs rotated by the table row (c, s) through the dispatched
 * kernels (simd/kernels.h: products in double, one rounding to float). */
static void rotate_row(const attn_rope_problem *p, const attn_kernels *k, float *row,
                       const double *c, const double *s) {
  if (p->interleaved)
    k->rotate_pairs(row, c, s, p->half);
  else
    k->rotate_split(row, row + p->half, c, s, p->half);
}

/* The row at element offset `off` of x: rotated in place (F32), or widened
 * into buf, rotated, and rounded once back (F16/BF16). */
static void rotate_at(const attn_rope_problem *p, const attn_kernels *k, int64_t off,
                      const double *c, const double *s, float *buf) {
  void *row = attn__elem(p->x, p->xdt, off);
  if (p->xdt == ATTN_DTYPE_F32) {
    for (int64_t o = 0; o < 2 * p->half * (int64_t)sizeof(float); o += 64)
      __builtin_prefetch((char *)row + PREFETCH_BYTES + o, 1, 3);
    rotate_row(p, k, row, c, s);
    return;
  }
  int64_t r = 2 * p->half; /* dims past the rotary ones pass through untouched */
  attn__widen(k, p->xdt, row, buf, r);
  rotate_row(p, k, buf, c, s);
  attn__narrow(k, p->xdt, buf, row, r);
}

/* An interleaved row's table as rotate_pairs reads it: the half values of
 * c and s at the front of rows of 2 * half, spread in place to one per
 * float (back to front, so nothing is overwritten before it is read). */
static void spread_pairs(double *c, double *s, int64_t half) {
  for (int64_t i = half - 1; i >= 0; i--) {
    double cv = c[i], sv = s[i];
    c[2 * i] = c[2 * i + 1] = cv;
    s[2 * i] = -sv;
    s[2 * i + 1] = sv;
  }
}

/* The angles of the n consecutive positions from pos0 (rows of c and s,
 * ld apart; angles.h: any split into blocks, threads or chunks gives the
 * same bits). carry (2 * half doubles) holds position pos0 - 1's values
 * when `cont` (the previous block of the same item); on return it holds the
 * last row's. */
static void stepped_angles(const attn_rope_problem *p, attn_angles_span *hi, int64_t pos0,
                           int64_t n, double *c, double *s, int64_t ld, double *carry,
                           bool cont) {
  int64_t h = p->half;
  for (int64_t t = 0; t < n; t++) {
    const double *cp = t > 0 ? c + (t - 1) * ld : cont ? carry : NULL;
    const double *sp = t > 0 ? s + (t - 1) * ld : cont ? carry + h : NULL;
    attn__angles_row(&p->angles, hi, pos0 + t, cp, sp, c + t * ld, s + t * ld);
  }
  memcpy(carry, c + (n - 1) * ld, (size_t)h * sizeof(double));
  memcpy(carry + h, s + (n - 1) * ld, (size_t)h * sizeof(double));
}

/* Block blk of T tokens, for batches [b0, b1): its table, then its rows.
 * cont: the previous block was this worker's last (stepped_angles). */
static void rope_block(const attn_rope_problem *p, const attn_kernels *k, attn_angles_span *hi,
                       int64_t blk, int64_t b0, int64_t b1, double *cosv, double *sinv,
                       double *carry, bool cont, float *rowbuf) {
  int64_t ld = p->interleaved ? 2 * p->half : p->half; /* a token's table row */
  int64_t l0 = blk * p->T, nl = p->L - l0 < p->T ? p->L - l0 : p->T;
  for (int64_t b = b0; b < b1; b++) {
    if (p->positions || b == b0) {
      if (p->positions)
        for (int64_t t = 0; t < nl; t++)
          attn__angles_exact(&p->angles, (double)p->positions[b * p->L + l0 + t], cosv + t * ld,
                             sinv + t * ld);
      else
        stepped_angles(p, hi, p->offset + l0, nl, cosv, sinv, ld, carry, cont);
      if (p->interleaved)
        for (int64_t t = 0; t < nl; t++)
          spread_pairs(cosv + t * ld, sinv + t * ld, p->half);
    }
    int64_t xb = b * p->xs[0] + l0 * p->xs[2];
    /* Walk the rows in memory order so each head (or token) is one stream. */
    if (p->heads_outer) {
      for (int64_t h = 0; h < p->H; h++)
        for (int64_t t = 0; t < nl; t++)
          rotate_at(p, k, xb + h * p->xs[1] + t * p->xs[2], cosv + t * ld, sinv + t * ld, rowbuf);
    } else {
      for (int64_t t = 0; t < nl; t++)
        for (int64_t h = 0; h < p->H; h++)
          rotate_at(p, k, xb + h * p->xs[1] + t * p->xs[2], cosv + t * ld, sinv + t * ld, rowbuf);
    }
  }
}

/* An item: item_blocks consecutive blocks (of one batch, or of all when
 * they share positions), so a thread's rows of each head are contiguous and
 * its prefetches a page ahead land on its own rows, not on the next block,
 * which another thread would rotate. */
static void rope_item(void *arg, int64_t item, int32_t worker) {
  const attn_rope_problem *p = arg;
  const attn_kernels *k = attn__kernels();
  int64_t ld = p->interleaved ? 2 * p->half : p->half;
  double *cosv = p->tables + p->table_stride * (size_t)worker;
  double *sinv = cosv + p->T * ld;
  double *carry = sinv + p->T * ld;
  attn_angles_span hi = {-1, carry + 2 * p->half, carry + 3 * p->half};
  float *rowbuf = (float *)(carry + 4 * p->half);
  int64_t per_batch = (p->n_blocks + p->item_blocks - 1) / p->item_blocks;
  int64_t k0 = item % per_batch * p->item_blocks;
  int64_t k1 = k0 + p->item_blocks < p->n_blocks ? k0 + p->item_blocks : p->n_blocks;
  int64_t b0 = p->share_batches ? 0 : item / per_batch;
  int64_t b1 = p->share_batches ? p->B : b0 + 1;
  for (int64_t blk = k0; blk < k1; blk++)
    rope_block(p, k, &hi, blk, b0, b1, cosv, sinv, carry, blk > k0, rowbuf);
}

void attn_rope_params_init(attn_rope_params *p) {
  if (!p)
    return;
  memset(p, 0, sizeof *p);
  p->struct_size = sizeof *p;
}

attn_status attn__rope_config_cached(attn_ctx *ctx, const attn_rope_params *user, int64_t D,
                                     attn_rope_problem *p) {
  memset(p, 0, sizeof *p);
  if (!user)
    return ATTN_OK;
  attn_rope_params rp;
  attn_rope_params_init(&rp);
  attn_status st;
  if ((st = attn__read_params(ctx, &rp, sizeof rp, user)) ||
      (st = attn__rope_config(ctx, "params.rope", &rp, D, p)))
    return st;
  if (rp.offset || rp.positions)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "params.rope.offset and positions must be 0 and NULL (the cache "
                      "places each new key at its sequence's length)");
  return ATTN_OK;
}

attn_status attn__rope_config(attn_ctx *ctx, const char *where, const attn_rope_params *prm,
                              int64_t D, attn_rope_problem *p) {
  if (prm->style != ATTN_ROPE_HALF_SPLIT && prm->style != ATTN_ROPE_INTERLEAVED)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "%s.style = %d is not an attn_rope_style (0 = half-split, 1 = "
                      "interleaved)",
                      where, (int)prm->style);
  int64_t r = prm->rotary_dim;
  if (r == 0 && (D & 1))
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "%s.rotary_dim = 0 rotates all of the head dim %lld, which must then "
                      "be even (or set rotary_dim to an even value <= %lld)",
                      where, (long long)D, (long long)D);
  if (r < 0 || r > D || (r & 1))
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "%s.rotary_dim = %lld but must be even and in 0..%lld (the head dim; "
                      "0 = all)",
                      where, (long long)r, (long long)D);
  double theta = prm->theta == 0 ? 10000.0 : prm->theta;
  if (!isfinite(theta) || !(theta > 1))
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "%s.theta = %g but must be finite and > 1 (0 = 10000)", where,
                      prm->theta);
  p->half = (r == 0 ? D : r) / 2;
  p->interleaved = prm->style == ATTN_ROPE_INTERLEAVED;
  p->theta = theta;
  return ATTN_OK;
}

static attn_status rope_check(attn_ctx *ctx, attn_tensor *x, const attn_rope_params *params,
                              attn_rope_problem *p) {
  attn_rope_params prm;
  attn_rope_params_init(&prm);
  const attn_operand ops[] = {
      {ATTN_OPERAND("x", x, ATTN_DT_FLOAT, 4, 4), .flags = ATTN_OPND_OUTPUT}};
  attn_status st;
  if ((st = attn__read_params(ctx, &prm, sizeof prm, params)) != ATTN_OK ||
      (st = attn__check_operands(ctx, ops, 1, NULL)) != ATTN_OK)
    return st;
  int64_t B = x->dims[0], H = x->dims[1], L = x->dims[2], D = x->dims[3];
  memset(p, 0, sizeof *p);
  if ((st = attn__rope_config(ctx, "params", &prm, D, p)) != ATTN_OK)
    return st;
  if (prm.offset < 0 || (!prm.positions && L > 0 && prm.offset > INT64_MAX - (L - 1)))
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "params.offset = %lld but must be >= 0, with offset + L - 1 within "
                      "int64 (L = %lld)",
                      (long long)prm.offset, (long long)L);
  if (prm.positions)
    for (int64_t i = 0; i < B * L; i++)
      if (prm.positions[i] < 0)
        return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                          "params.positions[%lld] (batch %lld, token %lld) = %lld but "
                          "positions must be >= 0",
                          (long long)i, (long long)(i / L), (long long)(i % L),
                          (long long)prm.positions[i]);

  p->x = x->data;
  p->xdt = x->dtype;
  p->B = B, p->H = H, p->L = L, p->D = D;
  memcpy(p->xs, x->strides, sizeof p->xs);
  p->offset = prm.offset;
  p->positions = prm.positions;
  return ATTN_OK;
}

/* The workspace: inverse frequencies and the turns of angles.h, then a
 * cos/sin table per thread.
 * Sizes it when l->base is NULL, carves it otherwise. */
static void rope_layout(void *problem, attn_ws_layout *l) {
  attn_rope_problem *p = problem;
  /* cos[T][ld], sin[T][ld] (ld: half, or 2 * half interleaved), the
   * carry of stepped_angles (2 * half), the worker's span row (2 * half),
   * then for F16/BF16 a row of floats. */
  size_t row = p->xdt == ATTN_DTYPE_F32 ? 0 : (size_t)(2 * p->half) * sizeof(float);
  size_t ld = (size_t)(p->interleaved ? 2 * p->half : p->half);
  p->table_stride =
      attn__ws_round((2 * (size_t)p->T * ld + 4 * (size_t)p->half) * sizeof(double) + row) /
      sizeof(double);
  p->inv_freq = attn__ws_take(l, (size_t)p->half, sizeof(double));
  p->angles.turns = attn__ws_take(l, attn__angles_doubles(p->half), sizeof(double));
  p->tables = attn__ws_take(l, (size_t)p->threads, p->table_stride * sizeof(double));
}

void attn__rope_plan(const attn_ctx *ctx, attn_rope_problem *p) {
  /* Stride order decides the walk; a size-1 axis has no say. */
  p->heads_outer = p->H > 1 && (p->L == 1 || p->xs[1] >= p->xs[2]);
  /* A block's table (T tokens x a row of cos and of sin, doubles) stays
   * within 16 KiB so it sits in L1 next to the rows being rotated. */
  int64_t ld = p->interleaved ? 2 * p->half : p->half;
  p->T = 1024 / ld > 1 ? 1024 / ld : 1;
  if (p->T > 16)
    p->T = 16;
  if (p->T > p->L)
    p->T = p->L;
  p->n_blocks = (p->L + p->T - 1) / p->T;
  double rotated = (double)p->B * (double)p->H * (double)p->L * (double)(2 * p->half);
  double trig = (double)(p->positions ? p->B : 1) * (double)p->L * (double)p->half * 16;
  int32_t threads = attn__threads_plan(ctx, rotated + trig, MIN_WORK_PER_THREAD, 0);
  /* Without explicit positions every batch has the same table: compute it
   * once per block, unless that leaves too few items for the threads. */
  p->share_batches = !p->positions && (p->B == 1 || p->n_blocks >= 2 * (int64_t)threads);
  int64_t batch_items = p->share_batches ? 1 : p->B;
  p->item_blocks = attn__items_balanced(p->n_blocks * batch_items, ITEM_BLOCKS, threads);
  if (p->item_blocks > p->n_blocks)
    p->item_blocks = p->n_blocks;
  p->n_items = batch_items * ((p->n_blocks + p->item_blocks - 1) / p->item_blocks);
  p->threads = threads > p->n_items ? (int32_t)p->n_items : threads;
  p->ws_bytes = attn__ws_size(rope_layout, p);
}

void attn__rope_apply(attn_ctx *ctx, attn_rope_problem *p) {
  size_t mark = attn__ws_carve(ctx, rope_layout, p, p->ws_bytes);
  for (int64_t i = 0; i < p->half; i++)
    p->inv_freq[i] =
        p->freqs ? p->freqs[i] : pow(p->theta, -(double)(2 * i) / (double)(2 * p->half));
  p->angles.n = p->half;
  p->angles.freq = p->inv_freq;
  p->angles.origin = 0;
  p->angles.amp = p->amplitude == 0 ? 1 : p->amplitude;
  p->angles.negate = p->inverse; /* the backward rotates by -a */
  attn__angles_init(&p->angles);
  attn__parallel_for(ctx, p->threads, p->n_items, rope_item, p);
  attn__ws_release(ctx, mark);
}

/* The backward of a rotation is its transpose, the rotation by -angle. */
static attn_status rope(attn_ctx *ctx, const char *op, attn_tensor *x,
                        const attn_rope_params *params, bool inverse) {
  attn_status st = attn__op_begin(ctx, op);
  if (st != ATTN_OK)
    return st;
  attn_rope_problem p;
  if ((st = rope_check(ctx, x, params, &p)) == ATTN_OK && !attn__empty(x)) {
    p.inverse = inverse;
    attn__rope_plan(ctx, &p);
    if ((st = attn__ws_reserve(ctx, p.ws_bytes)) == ATTN_OK)
      attn__rope_apply(ctx, &p);
  }
  return attn__op_end(ctx, st);
}

attn_status attn_rope(attn_ctx *ctx, attn_tensor *x, const attn_rope_params *params) {
  return rope(ctx, "attn_rope", x, params, false);
}

attn_status attn_rope_backward(attn_ctx *ctx, attn_tensor *dx, const attn_rope_params *params) {
  return rope(ctx, "attn_rope_backward", dx, params, true);
}
