/* Softmax and log-softmax over the last axis: check (nothing is written on
 * failure) -> plan (threads, rows per item) -> run (attn__softmax_rows:
 * blocks of rows spread over the context's threads); each row goes through the dispatched kernels
 * (simd/kernels.h).
 *
 * A row needs no workspace: z = scale*x + mask is built in y's row (which
 * is contiguous and, in place, is x's own row, read before it is written)
 * by the logit pipeline (logits.h: a -inf mask value hides even a NaN x),
 * then the maximum, the exponentials and the normalisation run over it. A
 * plain call (scale 1, no masks) reads x directly and skips that pass.
 *
 * Non-finite z, all decided from the row maximum M:
 * - M = -inf: every entry is masked (-inf z): zeros, or -inf for log.
 * - M = NaN or +inf: the row is NaN. +inf - +inf is NaN in IEEE arithmetic
 *   (PyTorch gives the same); a +inf z comes from x = +inf or from
 *   scale*x + mask overflowing float, so callers who scale huge logits up
 *   should expect NaN rather than a silently saturated row.
 * - Otherwise M is finite and z - M <= 0: exp never overflows, the sum lies
 *   in [1, n], and a z - M that overflows to -inf (z = -FLT_MAX, M =
 *   FLT_MAX) gives 0 (log: -inf), the nearest float to the true result. */
#include "softmax.h"
#include "check.h"
#include "convert.h"
#include "logits.h"

#include <math.h>
#include <string.h>

void attn_softmax_params_init(attn_softmax_params *p) {
  if (!p)
    return;
  memset(p, 0, sizeof *p);
  p->struct_size = sizeof *p;
  p->scale = 1.0f;
}

/* Rows per work item: enough elements that handing out an item costs
 * little next to it, but at least a few items per thread for balance. */
#define ITEM_ELEMS 8192
/* Elements below which a second thread is not worth waking: one thread
 * does 0.8-2.6e9 elements/s (sse2 to avx512, [4096, 4096]), so this is
 * 25-80 microseconds of work, well above the cost of a wake-up. */
#define THREAD_ELEMS 65536.0
/* Streaming: a float row's z and exponentials live in the worker's row
 * (L1/L2) or in registers (short rows, log-softmax too) and only the final
 * pass writes y, with non-temporal stores. A
 * normal store first reads y's line from memory, so this moves 2 bytes of
 * memory traffic per byte of x where the plain passes move 3. Worth it when
 * y is too large to be read back from the cache anyway (bench/RESULTS.md);
 * the row bound keeps the worker's row within L2. */
#define STREAM_MIN_BYTES (8.0 * 1024 * 1024)
#define STREAM_MAX_ROW 65536
/* Distance of the prefetch ahead of short rows: a page. */
#define AHEAD_BYTES 4096

static void fill(float *y, int64_t n, float v) {
  for (int64_t i = 0; i < n; i++)
    y[i] = v;
}

/* A row's operands, located once per row. */
typedef struct {
  const float *m;   /* additive mask row, or NULL */
  const uint8_t *b; /* keep-mask row, or NULL */
} row_masks;

/* A streamed row whose exponentials wait in a worker row for their stores:
 * written during the next row's exponentials (exp_sum_flush) or by
 * flush_pending. */
typedef struct {
  const float *w; /* NULL: none */
  float *y;
  float inv;
} pending_row;

static void flush_pending(const attn_kernels *k, pending_row *p, int64_t n) {
  if (p->w)
    k->scale_stream(p->w, p->y, n, p->inv);
  p->w = NULL;
}

/* One float row: x in, y out (y may be x); w is a row of scratch floats
 * that may be y (then no streaming) or x (half rows: x is the worker's
 * row already). z = scale*x + mask is built in w, the exponentials go to
 * w, and the last pass writes y, or with `pend` (streaming) is left in
 * *pend to be written during the next row's exponentials.
 * ahead: the next row's x (or NULL), fetched during the exponentials. */
static void float_row(const attn_softmax_problem *j, const attn_kernels *k, const row_masks *rm,
                      const float *x, float *y, float *w, pending_row *pend, const float *ahead) {
  int64_t n = j->dims[3];
  const float *z = x;
  if (j->scale != 1.0f || rm->m || rm->b) {
    if (rm->m && j->ms[3] == 1) { /* the common layout: scale and add in one pass */
      k->scale_add(x, rm->m, w, n, j->scale);
      attn__logits_hide(w, n, rm->m, 1, rm->b, j->bs[3]);
    } else {
      k->scale(x, w, n, j->scale);
      attn__logits_mask(w, n, rm->m, j->ms[3], rm->b, j->bs[3]);
    }
    z = w;
  }
  float m = k->row_max(z, n);
  if (m == -INFINITY || !(m < INFINITY) || j->log) {
    if (pend)
      flush_pending(k, pend, n);
    if (m == -INFINITY)
      fill(y, n, j->log ? -INFINITY : 0.0f);
    else if (!(m < INFINITY))
      fill(y, n, NAN);
    else
      k->sub2(z, y, n, m, (float)log((double)k->sum_exp_shift(z, n, m)));
    return;
  }
  float s; /* s >= 1: the maximum gives exp(0) */
  if (pend && pend->w) {
    s = k->exp_sum_flush(z, w, n, m, ahead, pend->w, pend->y, pend->inv);
    pend->w = NULL;
  } else {
    s = k->exp_shift_sum(z, w, n, m, ahead);
  }
  float inv = (float)(1.0 / (double)s);
  if (pend) /* w is the worker's row, not y */
    *pend = (pending_row){w, y, inv};
  else
    k->scale(w, y, n, inv);
}

/* Rows [r0, r1) of the view through the kernel set's softmax_rows, a call
 * per run of rows that share axes 0 and 1 (constant strides within). */
static void block_rows(const attn_softmax_problem *j, const attn_kernels *k, float *buf,
                       int64_t r0, int64_t r1) {
  int64_t i2 = r0 % j->dims[2], t = r0 / j->dims[2];
  int64_t i1 = t % j->dims[1], i0 = t / j->dims[1];
  attn_rows_job job = {
      .ldx = j->xs[2], .ldy = j->ys[2], .ldm = j->ms[2], .ldb = j->bs[2], .n = j->dims[3],
      .scale = j->scale, .log = j->log, .w = j->stream ? buf : NULL,
      .x_end = j->packed && j->dims[3] * (int64_t)sizeof(float) < AHEAD_BYTES
                   ? (const float *)j->x + j->rows * j->dims[3]
                   : NULL};
  for (int64_t r = r0; r < r1;) {
    int64_t len = j->dims[2] - i2 < r1 - r ? j->dims[2] - i2 : r1 - r;
    job.x = (const float *)j->x + i0 * j->xs[0] + i1 * j->xs[1] + i2 * j->xs[2];
    job.y = (float *)j->y + i0 * j->ys[0] + i1 * j->ys[1] + i2 * j->ys[2];
    job.m = j->mask ? j->mask + i0 * j->ms[0] + i1 * j->ms[1] + i2 * j->ms[2] : NULL;
    job.b = j->bmask ? j->bmask + i0 * j->bs[0] + i1 * j->bs[1] + i2 * j->bs[2] : NULL;
    if ((i2 += len) == j->dims[2]) {
      i2 = 0;
      if (++i1 == j->dims[1])
        i1 = 0, i0++;
    }
    job.next = r + len < j->rows
                   ? (const float *)j->x + i0 * j->xs[0] + i1 * j->xs[1] + i2 * j->xs[2]
                   : NULL;
    k->softmax_rows(&job, len);
    r += len;
  }
}

static void rows_task(void *arg, int64_t item, int32_t worker) {
  const attn_softmax_problem *j = arg;
  const attn_kernels *k = attn__kernels();
  float *buf = j->rowbuf ? j->rowbuf + j->rowbuf_stride * (size_t)worker : NULL;
  int64_t n = j->dims[3];
  int64_t r0 = item * j->rows_per_item;
  int64_t r1 = r0 + j->rows_per_item < j->rows ? r0 + j->rows_per_item : j->rows;
  bool f32 = j->xdt == ATTN_DTYPE_F32 && j->ydt == ATTN_DTYPE_F32;
  if (f32 && j->block_rows && k->softmax_rows) {
    block_rows(j, k, buf, r0, r1);
    if (j->stream)
      k->stream_fence();
    return;
  }
  /* The view index of row r0, then stepped row by row. */
  int64_t i2 = r0 % j->dims[2], t = r0 / j->dims[2];
  int64_t i1 = t % j->dims[1], i0 = t / j->dims[1];
  pending_row pend = {NULL, NULL, 0};
  for (int64_t r = r0; r < r1; r++) {
    const void *x = attn__elem(j->x, j->xdt, i0 * j->xs[0] + i1 * j->xs[1] + i2 * j->xs[2]);
    void *y = attn__elem(j->y, j->ydt, i0 * j->ys[0] + i1 * j->ys[1] + i2 * j->ys[2]);
    row_masks rm = {
        j->mask ? j->mask + i0 * j->ms[0] + i1 * j->ms[1] + i2 * j->ms[2] : NULL,
        j->bmask ? j->bmask + i0 * j->bs[0] + i1 * j->bs[1] + i2 * j->bs[2] : NULL};
    if (++i2 == j->dims[2]) {
      i2 = 0;
      if (++i1 == j->dims[1])
        i1 = 0, i0++;
    }
    if (f32) {
      /* Fetched ahead: short rows laid end to end, the bytes a page
       * (AHEAD_BYTES) further on, where the hardware prefetchers stop;
       * else the next row. */
      const float *next = NULL;
      if (j->packed && n * (int64_t)sizeof(float) < AHEAD_BYTES)
        next = (r + 1) * n + AHEAD_BYTES / (int64_t)sizeof(float) <= j->rows * n
                   ? (const float *)x + AHEAD_BYTES / sizeof(float)
                   : NULL;
      else if (r + 1 < j->rows)
        next = (const float *)j->x + i0 * j->xs[0] + i1 * j->xs[1] + i2 * j->xs[2];
      /* streamed: the worker's two rows in turn, one waiting for its stores */
      float *w = j->stream ? buf + (r & 1) * (j->rowbuf_stride / 2) : y;
      float_row(j, k, &rm, x, y, w, j->stream ? &pend : NULL, next);
    } else {
      /* x widened into buf; the result computed in buf and rounded once
       * into y, or written straight to a float y. */
      const float *xf = x;
      if (j->xdt != ATTN_DTYPE_F32) {
        attn__widen(k, j->xdt, x, buf, n);
        xf = buf;
      }
      float *yf = j->ydt == ATTN_DTYPE_F32 ? y : buf;
      float_row(j, k, &rm, xf, yf, j->xdt != ATTN_DTYPE_F32 ? buf : yf, NULL, NULL);
      if (j->ydt != ATTN_DTYPE_F32)
        attn__narrow(k, j->ydt, yf, y, n);
    }
  }
  flush_pending(k, &pend, n);
  if (j->stream)
    k->stream_fence();
}

/* The workspace: a row of floats per thread when a row must be converted
 * or is streamed (two rows then). */
static void softmax_layout(void *problem, attn_ws_layout *l) {
  attn_softmax_problem *p = problem;
  bool half = p->xdt != ATTN_DTYPE_F32 || p->ydt != ATTN_DTYPE_F32;
  /* streamed: two rows (float_row's pending one and the next) */
  size_t rows = p->stream ? 2 : 1;
  p->rowbuf_stride =
      rows * (attn__ws_round((size_t)p->dims[3] * sizeof(float)) / sizeof(float));
  p->rowbuf = half || p->stream ? attn__ws_take(l, (size_t)p->threads, p->rowbuf_stride * sizeof(float))
                                : NULL;
}

/* ---- softmax along a strided axis ----
 * A work item is (block of up to COL_BLOCK columns of the last axis, index
 * of the other axes). Along the axis, each position's block of columns is
 * contiguous: it is widened (half) into a small buffer, scaled and masked
 * there by the same logit pipeline as a row (logits.h), and three passes
 * (maximum, sum of exponentials, output) run over the axis, so nothing of
 * the size of x is copied. */
#define COL_BLOCK 256

typedef struct {
  const attn_softmax_problem *p;
  int64_t n_blocks; /* blocks of the last axis */
} axis_job;

/* z for columns [c0, c0 + nc) at the view index idx[0..2]. */
static void axis_z(const attn_softmax_problem *p, const attn_kernels *k, const int64_t *idx,
                   int64_t c0, int64_t nc, float *z) {
  const void *x = attn__elem(p->x, p->xdt, idx[0] * p->xs[0] + idx[1] * p->xs[1] + idx[2] * p->xs[2] + c0);
  if (p->xdt == ATTN_DTYPE_F32) {
    k->scale(x, z, nc, p->scale);
  } else {
    attn__widen(k, p->xdt, x, z, nc);
    k->scale(z, z, nc, p->scale);
  }
  const float *m =
      p->mask ? p->mask + idx[0] * p->ms[0] + idx[1] * p->ms[1] + idx[2] * p->ms[2] + c0 * p->ms[3]
              : NULL;
  const uint8_t *b = p->bmask ? p->bmask + idx[0] * p->bs[0] + idx[1] * p->bs[1] +
                                    idx[2] * p->bs[2] + c0 * p->bs[3]
                              : NULL;
  attn__logits_mask(z, nc, m, p->ms[3], b, p->bs[3]);
}

static void axis_task(void *arg, int64_t item, int32_t worker) {
  (void)worker;
  const axis_job *job = arg;
  const attn_softmax_problem *p = job->p;
  const attn_kernels *k = attn__kernels();
  int32_t a = ATTN_MAX_DIMS - 1 - p->axis_back;
  int64_t blk = item % job->n_blocks, rest = item / job->n_blocks;
  int64_t c0 = blk * COL_BLOCK, nc = p->dims[3] - c0 < COL_BLOCK ? p->dims[3] - c0 : COL_BLOCK;
  /* The indices of axes 0..2 other than `a`, from `rest` (axis 2 fastest). */
  int64_t idx[3] = {0, 0, 0};
  for (int32_t ax = 2; ax >= 0; ax--)
    if (ax != a) {
      idx[ax] = rest % p->dims[ax];
      rest /= p->dims[ax];
    }
  float z[COL_BLOCK], mx[COL_BLOCK], sum[COL_BLOCK], out[COL_BLOCK];
  int64_t n = p->dims[a];
  for (int64_t c = 0; c < nc; c++)
    mx[c] = -INFINITY, sum[c] = 0;
  for (idx[a] = 0; idx[a] < n; idx[a]++) { /* maximum; NaN sticks */
    axis_z(p, k, idx, c0, nc, z);
    for (int64_t c = 0; c < nc; c++)
      if (z[c] > mx[c] || isnan(z[c]))
        mx[c] = isnan(mx[c]) ? mx[c] : z[c];
  }
  for (idx[a] = 0; idx[a] < n; idx[a]++) { /* sum of exp(z - max) over the finite-max columns */
    axis_z(p, k, idx, c0, nc, z);
    for (int64_t c = 0; c < nc; c++)
      if (mx[c] > -INFINITY && mx[c] < INFINITY)
        sum[c] += expf(z[c] - mx[c]);
  }
  for (int64_t c = 0; c < nc; c++) /* log-softmax subtracts log(sum); softmax multiplies */
    sum[c] = p->log ? (float)log((double)sum[c]) : (float)(1.0 / (double)sum[c]);
  for (idx[a] = 0; idx[a] < n; idx[a]++) {
    axis_z(p, k, idx, c0, nc, z);
    void *y = attn__elem(p->y, p->ydt, idx[0] * p->ys[0] + idx[1] * p->ys[1] + idx[2] * p->ys[2] + c0);
    float *yf = p->ydt == ATTN_DTYPE_F32 ? y : out;
    for (int64_t c = 0; c < nc; c++) {
      float m = mx[c];
      if (m == -INFINITY) /* everything masked */
        yf[c] = p->log ? -INFINITY : 0.0f;
      else if (!(m < INFINITY)) /* NaN, or +inf - +inf */
        yf[c] = NAN;
      else if (p->log)
        yf[c] = (z[c] - m) - sum[c];
      else
        yf[c] = expf(z[c] - m) * sum[c];
    }
    if (p->ydt != ATTN_DTYPE_F32)
      attn__narrow(k, p->ydt, yf, y, nc);
  }
}

void attn__softmax_plan(const attn_ctx *ctx, attn_softmax_problem *p) {
  if (p->axis_back) {
    /* Items: one per block of the last axis and index of the other axes;
     * no workspace (the blocks live on the worker's stack). */
    int64_t blocks = (p->dims[3] + COL_BLOCK - 1) / COL_BLOCK;
    p->rows = blocks * (p->dims[0] * p->dims[1] * p->dims[2] / p->dims[3 - p->axis_back]);
    p->rows_per_item = 1;
    p->threads = attn__threads_plan(ctx, (double)p->dims[0] * (double)p->dims[1] *
                                             (double)p->dims[2] * (double)p->dims[3] * 3,
                                    THREAD_ELEMS, p->rows);
    p->ws_bytes = 0;
    return;
  }
  int64_t n = p->dims[3];
  p->rows = p->dims[0] * p->dims[1] * p->dims[2];
  p->threads = attn__threads_plan(ctx, (double)p->rows * (double)n, THREAD_ELEMS, 0);
  p->packed = p->xs[2] == n && p->xs[1] == n * p->dims[2] && p->xs[0] == n * p->dims[2] * p->dims[1];
  p->stream = p->xdt == ATTN_DTYPE_F32 && p->ydt == ATTN_DTYPE_F32 &&
              n <= STREAM_MAX_ROW && (double)p->rows * (double)n * sizeof(float) >= STREAM_MIN_BYTES;
  /* Streamed rows: as many per item as balance allows, since each item's
   * last row (short rows: batch) has no next one to overlap its stores with,
   * its first waits for memory (the row before it went to the other
   * thread), and it ends with a fence. Items of 128 short rows of 64 floats
   * took about 10 % more CPU time than items of thousands. */
  p->rows_per_item = attn__items_balanced(
      p->rows, p->stream ? p->rows : n >= ITEM_ELEMS ? 1 : ITEM_ELEMS / n, p->threads);
  /* F32 rows of any length go a block at a time through the kernel set's
   * softmax_rows (the masks' vector form, no per-row calls) unless a mask's
   * columns are strided (broadcast along the row). */
  p->block_rows = (!p->mask || p->ms[3] == 1) && (!p->bmask || p->bs[3] == 1);
  p->ws_bytes = attn__ws_size(softmax_layout, p);
}

void attn__softmax_rows(attn_ctx *ctx, attn_softmax_problem *p) {
  if (p->axis_back) {
    axis_job job = {p, (p->dims[3] + COL_BLOCK - 1) / COL_BLOCK};
    attn__parallel_for(ctx, p->threads, p->rows, axis_task, &job);
    return;
  }
  size_t mark = attn__ws_carve(ctx, softmax_layout, p, p->ws_bytes);
  attn__parallel_for(ctx, p->threads, (p->rows + p->rows_per_item - 1) / p->rows_per_item,
                     rows_task, p);
  attn__ws_release(ctx, mark);
}

/* Check: operands and params -> problem. Nothing is written on failure. */
static attn_status check(attn_ctx *ctx, const attn_tensor *x, attn_tensor *y,
                         const attn_softmax_params *params, bool log, attn_softmax_problem *p) {
  attn_softmax_params prm;
  attn_softmax_params_init(&prm);
  attn_status st = attn__read_params(ctx, &prm, sizeof prm, params);
  if (st != ATTN_OK)
    return st;
  if (prm.reserved_ != 0)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG, "params.reserved_ = %d but must be 0",
                      (int)prm.reserved_);
  if (!isfinite(prm.scale))
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG, "params.scale = %g but must be finite (0 means 1)",
                      (double)prm.scale);
  if (prm.reserved2_ != 0)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG, "params.reserved2_ = %d but must be 0",
                      (int)prm.reserved2_);
  int64_t ms[ATTN_MAX_DIMS] = {0}, bs[ATTN_MAX_DIMS] = {0};
  const attn_operand ops[] = {
      {ATTN_OPERAND("x", x, ATTN_DT_FLOAT, 1, ATTN_MAX_DIMS)},
      {ATTN_OPERAND("y", y, ATTN_DT_FLOAT, 1, ATTN_MAX_DIMS), .like = ATTN_LIKE(0),
       .flags = ATTN_OPND_OUTPUT | ATTN_OPND_SAME_SHAPE | ATTN_OPND_INPLACE},
      {ATTN_OPERAND("params.mask", prm.mask, ATTN_DT_F32, 1, ATTN_MAX_DIMS), .like = ATTN_LIKE(0),
       .flags = ATTN_OPND_OPTIONAL | ATTN_OPND_BROADCAST, .bstrides = ms},
      {ATTN_OPERAND("params.bool_mask", prm.bool_mask, ATTN_DT_U8, 1, ATTN_MAX_DIMS),
       .like = ATTN_LIKE(0), .flags = ATTN_OPND_OPTIONAL | ATTN_OPND_BROADCAST, .bstrides = bs},
  };
  if ((st = attn__check_operands(ctx, ops, 4, NULL)) != ATTN_OK)
    return st;
  /* Counted from the end, so a zero-filled struct keeps the last axis; a
   * positive value would be read as NumPy's axis and silently differ. */
  if (prm.axis > 0 || prm.axis < -x->ndim)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "params.axis = %d but must be in -%d..-1 (counted from the end; 0 = the "
                      "last; for axis i from the front write i - ndim = %d)",
                      (int)prm.axis, (int)x->ndim, prm.axis > 0 ? (int)(prm.axis - x->ndim) : -1);
  memset(p, 0, sizeof *p);
  p->axis_back = prm.axis == 0 ? 0 : -1 - prm.axis;
  p->x = x->data;
  p->y = y->data;
  p->xdt = x->dtype, p->ydt = y->dtype;
  p->mask = prm.mask ? prm.mask->data : NULL;
  p->bmask = prm.bool_mask ? prm.bool_mask->data : NULL;
  attn__pad_view(x, p->dims, p->xs);
  attn__pad_view(y, NULL, p->ys);
  /* The masks' strides over x's axes, padded on the left like x's. */
  int32_t shift = ATTN_MAX_DIMS - x->ndim;
  for (int32_t i = 0; i < ATTN_MAX_DIMS; i++) {
    p->ms[i] = i < shift ? 0 : ms[i - shift];
    p->bs[i] = i < shift ? 0 : bs[i - shift];
  }
  p->scale = prm.scale == 0.0f ? 1.0f : prm.scale;
  p->log = log;
  return ATTN_OK;
}

static attn_status softmax(attn_ctx *ctx, const char *op, const attn_tensor *x, attn_tensor *y,
                           const attn_softmax_params *params, bool log) {
  attn_status st = attn__op_begin(ctx, op);
  if (st != ATTN_OK)
    return st;
  attn_softmax_problem p;
  /* An empty y: an empty result, as NumPy and PyTorch give. */
  if ((st = check(ctx, x, y, params, log, &p)) == ATTN_OK && !attn__empty(y)) {
    attn__softmax_plan(ctx, &p);
    if ((st = attn__ws_reserve(ctx, p.ws_bytes)) == ATTN_OK)
      attn__softmax_rows(ctx, &p);
  }
  return attn__op_end(ctx, st);
}

attn_status attn_softmax(attn_ctx *ctx, const attn_tensor *x, attn_tensor *y,
                         const attn_softmax_params *p) {
  return softmax(ctx, "attn_softmax", x, y, p, false);
}

attn_status attn_log_softmax(attn_ctx *ctx, const attn_tensor *x, attn_tensor *y,
                             const attn_softmax_params *p) {
  return softmax(ctx, "attn_log_softmax", x, y, p, true);
}
