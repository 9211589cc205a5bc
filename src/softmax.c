/* Softmax and log-softmax over the last axis. Validation first (nothing is
 * written on failure), then blocks of rows spread over the context's
 * threads; each row goes through the dispatched kernels (simd/kernels.h).
 *
 * A row needs no workspace: z = scale*x + mask is built in y's row (which
 * is contiguous and, in place, is x's own row, read before it is written),
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
#include "internal.h"
#include "simd/kernels.h"

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

typedef struct {
  const attn_kernels *k;
  const float *x;
  float *y;
  const float *mask;
  const uint8_t *bmask;
  /* Every view padded to 4 axes (leading dims 1); axis 3 is the row. */
  int64_t dims[ATTN_MAX_DIMS];
  int64_t xs[ATTN_MAX_DIMS], ys[ATTN_MAX_DIMS], ms[ATTN_MAX_DIMS], bs[ATTN_MAX_DIMS];
  int64_t rows, rows_per_item;
  float scale;
  bool log;
} sm_job;

static void fill(float *y, int64_t n, float v) {
  for (int64_t i = 0; i < n; i++)
    y[i] = v;
}

static void one_row(const sm_job *j, int64_t r) {
  const attn_kernels *k = j->k;
  int64_t n = j->dims[3];
  int64_t i2 = r % j->dims[2], t = r / j->dims[2];
  int64_t i1 = t % j->dims[1], i0 = t / j->dims[1];
  const float *x = j->x + i0 * j->xs[0] + i1 * j->xs[1] + i2 * j->xs[2];
  float *y = j->y + i0 * j->ys[0] + i1 * j->ys[1] + i2 * j->ys[2];
  const float *z = x;
  if (j->scale != 1.0f || j->mask || j->bmask) {
    if (j->mask) {
      const float *m = j->mask + i0 * j->ms[0] + i1 * j->ms[1] + i2 * j->ms[2];
      if (j->ms[3]) {
        k->scale_add(x, m, y, n, j->scale);
      } else { /* one mask value for the whole row */
        k->scale(x, y, n, j->scale);
        float c = m[0];
        for (int64_t i = 0; i < n; i++)
          y[i] += c;
      }
    } else {
      k->scale(x, y, n, j->scale);
    }
    if (j->bmask) {
      /* Removed entries are -inf whatever x holds there, NaN included. */
      const uint8_t *b = j->bmask + i0 * j->bs[0] + i1 * j->bs[1] + i2 * j->bs[2];
      if (!j->bs[3]) {
        if (!b[0])
          fill(y, n, -INFINITY);
      } else {
        for (int64_t i = 0; i < n; i++)
          if (!b[i])
            y[i] = -INFINITY;
      }
    }
    z = y;
  }
  float m = k->row_max(z, n);
  if (m == -INFINITY) {
    fill(y, n, j->log ? -INFINITY : 0.0f);
    return;
  }
  if (!(m < INFINITY)) {
    fill(y, n, NAN);
    return;
  }
  if (j->log) {
    float s = k->sum_exp_shift(z, n, m);
    k->sub2(z, y, n, m, (float)log((double)s));
  } else {
    float s = k->exp_shift_sum(z, y, n, m); /* s >= 1: the maximum gives exp(0) */
    k->scale(y, y, n, (float)(1.0 / (double)s));
  }
}

static void rows_task(void *arg, int64_t item, int32_t worker) {
  (void)worker;
  const sm_job *j = arg;
  int64_t r0 = item * j->rows_per_item;
  int64_t r1 = r0 + j->rows_per_item < j->rows ? r0 + j->rows_per_item : j->rows;
  for (int64_t r = r0; r < r1; r++)
    one_row(j, r);
}

/* The view's strides padded on the left to 4 axes. */
static void pad4(const attn_tensor *t, int64_t *dims, int64_t *strides) {
  int32_t shift = ATTN_MAX_DIMS - t->ndim;
  for (int32_t i = 0; i < ATTN_MAX_DIMS; i++) {
    if (dims)
      dims[i] = i < shift ? 1 : t->dims[i - shift];
    strides[i] = i < shift ? 0 : t->strides[i - shift];
  }
}

static attn_status check_mask(attn_ctx *ctx, const char *fn, const char *name,
                              const attn_tensor *m, int32_t dtype, const attn_tensor *x,
                              const attn_tensor *y, int64_t *strides4) {
  attn_status st = attn__check_tensor(ctx, fn, name, m, dtype, 1, ATTN_MAX_DIMS);
  if (st != ATTN_OK)
    return st;
  int64_t s[ATTN_MAX_DIMS];
  if ((st = attn__broadcast_strides(ctx, fn, name, m, x->ndim, x->dims, s)) != ATTN_OK)
    return st;
  if (attn__overlap(m, y))
    return attn__fail(ctx, ATTN_ERR_ALIASING,
                      "%s: y overlaps %s (rows written early would change the mask that "
                      "later rows read)",
                      fn, name);
  int32_t shift = ATTN_MAX_DIMS - x->ndim;
  for (int32_t i = 0; i < ATTN_MAX_DIMS; i++)
    strides4[i] = i < shift ? 0 : s[i - shift];
  return ATTN_OK;
}

static attn_status run(attn_ctx *ctx, const char *fn, const attn_tensor *x, attn_tensor *y,
                       const attn_softmax_params *p, bool log) {
  attn_status st = attn__check_ctx(ctx);
  if (st != ATTN_OK)
    return st;
  attn_softmax_params prm;
  attn_softmax_params_init(&prm);
  if ((st = attn__read_params(ctx, fn, &prm, sizeof prm, p)) != ATTN_OK)
    return st;
  if (prm.reserved_ != 0)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG, "%s: params.reserved_ = %d but must be 0",
                      fn, (int)prm.reserved_);
  if (!isfinite(prm.scale))
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "%s: params.scale = %g but must be finite (0 means 1)", fn,
                      (double)prm.scale);
  if ((st = attn__check_tensor(ctx, fn, "x", x, ATTN_DTYPE_F32, 1, ATTN_MAX_DIMS)) != ATTN_OK ||
      (st = attn__check_tensor(ctx, fn, "y", y, ATTN_DTYPE_F32, 1, ATTN_MAX_DIMS)) != ATTN_OK ||
      (st = attn__check_same_shape(ctx, fn, "x", x, "y", y)) != ATTN_OK ||
      (st = attn__check_writable(ctx, fn, "y", y)) != ATTN_OK)
    return st;
  if (!attn__same_view(x, y) && attn__overlap(x, y))
    return attn__fail(ctx, ATTN_ERR_ALIASING,
                      "%s: y overlaps x but is not the same view (in place means y == x, "
                      "same data, shape and strides)",
                      fn);
  sm_job j;
  memset(&j, 0, sizeof j);
  if (prm.mask &&
      (st = check_mask(ctx, fn, "params.mask", prm.mask, ATTN_DTYPE_F32, x, y, j.ms)) != ATTN_OK)
    return st;
  if (prm.bool_mask && (st = check_mask(ctx, fn, "params.bool_mask", prm.bool_mask,
                                        ATTN_DTYPE_U8, x, y, j.bs)) != ATTN_OK)
    return st;

  j.k = attn__kernels();
  j.x = x->data;
  j.y = y->data;
  j.mask = prm.mask ? prm.mask->data : NULL;
  j.bmask = prm.bool_mask ? prm.bool_mask->data : NULL;
  pad4(x, j.dims, j.xs);
  pad4(y, NULL, j.ys);
  j.scale = prm.scale == 0.0f ? 1.0f : prm.scale;
  j.log = log;
  /* y is writable and has x's shape, so this count fits in memory. */
  int64_t n = j.dims[3];
  j.rows = j.dims[0] * j.dims[1] * j.dims[2];
  int32_t threads = attn__threads_for(ctx, (double)j.rows * (double)n, THREAD_ELEMS);
  int64_t per = n >= ITEM_ELEMS ? 1 : ITEM_ELEMS / n;
  int64_t balanced = j.rows / (4 * (int64_t)threads);
  if (threads > 1 && per > balanced)
    per = balanced > 1 ? balanced : 1;
  j.rows_per_item = per;
  attn__parallel_for(ctx, threads, (j.rows + per - 1) / per, rows_task, &j);
  return ATTN_OK;
}

attn_status attn_softmax(attn_ctx *ctx, const attn_tensor *x, attn_tensor *y,
                         const attn_softmax_params *p) {
  return run(ctx, "attn_softmax", x, y, p, false);
}

attn_status attn_log_softmax(attn_ctx *ctx, const attn_tensor *x, attn_tensor *y,
                             const attn_softmax_params *p) {
  return run(ctx, "attn_log_softmax", x, y, p, true);
}
