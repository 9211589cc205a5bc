/* Gradients of softmax and log-softmax over the forward's axis: check ->
 * plan -> run, rows spread over the context's threads like the forward's.
 * Another axis than the last is swapped into the last place of the padded
 * 4-D views, so a "row" steps by its stride rather than by 1.
 *
 * Only y (the forward's output) is needed: softmax dz = y (dy - <y, dy>),
 * log-softmax dz = dy - exp(y) sum(dy), dx = scale * dz. The forward's
 * masks are in y already: a masked entry has y = 0 (log: -inf) and is a
 * constant of the forward, so it is left out of the row sum and gets
 * dz = 0, whatever its dy holds. The row sum is accumulated in double: it
 * is a dot product of a whole row, where float accumulation would lose
 * digits on long rows. dx may be dy itself: the sum is read before any
 * element is written. */
#include "check.h"

#include <math.h>
#include <string.h>

typedef struct {
  const float *y, *dy;
  float *dx, *dz; /* dz optional */
  int64_t dims[ATTN_MAX_DIMS];
  int64_t ys[ATTN_MAX_DIMS], gs[ATTN_MAX_DIMS], xs[ATTN_MAX_DIMS], zs[ATTN_MAX_DIMS];
  float scale;
  bool log;
  int64_t rows, rows_per_item;
  int32_t threads;
} softmax_bwd_problem;

/* As the forward (softmax.c): items of at least this many elements, and a
 * second thread only past this much work (the backward reads two rows and
 * writes one or two, about the forward's cost). */
#define ITEM_ELEMS 8192
#define THREAD_ELEMS 65536.0

static int64_t row_offset(const int64_t *strides, const int64_t idx[3]) {
  return idx[0] * strides[0] + idx[1] * strides[1] + idx[2] * strides[2];
}

static void one_row(const softmax_bwd_problem *p, int64_t r) {
  int64_t n = p->dims[3];
  int64_t idx[3] = {r / (p->dims[1] * p->dims[2]), r / p->dims[2] % p->dims[1], r % p->dims[2]};
  const float *y = p->y + row_offset(p->ys, idx), *dy = p->dy + row_offset(p->gs, idx);
  float *dx = p->dx + row_offset(p->xs, idx);
  float *dz = p->dz ? p->dz + row_offset(p->zs, idx) : NULL;
  int64_t ys = p->ys[3], gs = p->gs[3], xs = p->xs[3], zs = p->zs[3];
  float hidden = p->log ? -INFINITY : 0.0f;
  double sum = 0;
  for (int64_t j = 0; j < n; j++)
    if (y[j * ys] != hidden)
      sum += p->log ? (double)dy[j * gs] : (double)y[j * ys] * (double)dy[j * gs];
  float s = (float)sum;
  for (int64_t j = 0; j < n; j++) {
    float g = 0.0f, yj = y[j * ys];
    if (yj != hidden)
      g = p->log ? dy[j * gs] - expf(yj) * s : yj * (dy[j * gs] - s);
    if (dz)
      dz[j * zs] = g;
    dx[j * xs] = p->scale * g;
  }
}

static void rows_task(void *arg, int64_t item, int32_t worker) {
  (void)worker;
  const softmax_bwd_problem *p = arg;
  int64_t r0 = item * p->rows_per_item;
  int64_t r1 = r0 + p->rows_per_item < p->rows ? r0 + p->rows_per_item : p->rows;
  for (int64_t r = r0; r < r1; r++)
    one_row(p, r);
}

static attn_status check(attn_ctx *ctx, const attn_tensor *y, const attn_tensor *dy,
                         attn_tensor *dx, attn_tensor *dmask, const attn_softmax_params *params,
                         bool log, softmax_bwd_problem *p) {
  attn_softmax_params prm;
  attn_softmax_params_init(&prm);
  attn_status st = attn__read_params(ctx, &prm, sizeof prm, params);
  if (st != ATTN_OK)
    return st;
  if (!isfinite(prm.scale))
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "params.scale = %g but must be finite (0 means 1)", (double)prm.scale);

  const attn_operand ops[] = {
      {"y", y, ATTN_DT_F32, 1, ATTN_MAX_DIMS, .flags = 0},
      {"dy", dy, ATTN_DT_F32, 1, ATTN_MAX_DIMS, .like = ATTN_LIKE(0),
       .flags = ATTN_OPND_SAME_SHAPE},
      {"dx", dx, ATTN_DT_F32, 1, ATTN_MAX_DIMS, .like = ATTN_LIKE(1),
       .flags = ATTN_OPND_OUTPUT | ATTN_OPND_SAME_SHAPE | ATTN_OPND_INPLACE},
      {"dmask", dmask, ATTN_DT_F32, 1, ATTN_MAX_DIMS, .like = ATTN_LIKE(0),
       .flags = ATTN_OPND_OPTIONAL | ATTN_OPND_OUTPUT | ATTN_OPND_SAME_SHAPE},
  };
  if ((st = attn__check_operands(ctx, ops, 4, NULL)) != ATTN_OK)
    return st;
  memset(p, 0, sizeof *p);
  p->y = y->data;
  p->dy = dy->data;
  p->dx = dx->data;
  p->dz = dmask ? dmask->data : NULL;
  attn__pad_view(y, p->dims, p->ys);
  attn__pad_view(dy, NULL, p->gs);
  attn__pad_view(dx, NULL, p->xs);
  if (dmask)
    attn__pad_view(dmask, NULL, p->zs);
  if (prm.axis > 0 || prm.axis < -y->ndim)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "params.axis = %d but must be in -%d..-1 (counted from the end; 0 = the "
                      "last), as for the forward",
                      (int)prm.axis, (int)y->ndim);
  if (prm.axis != 0) { /* the padded views' axis 4 + axis becomes the last */
    int32_t a = ATTN_MAX_DIMS + prm.axis;
    int64_t *swap[5] = {p->dims, p->ys, p->gs, p->xs, p->zs};
    for (int i = 0; i < 5; i++) {
      int64_t t = swap[i][a];
      swap[i][a] = swap[i][3];
      swap[i][3] = t;
    }
  }
  p->scale = prm.scale == 0.0f ? 1.0f : prm.scale;
  p->log = log;
  return ATTN_OK;
}

static attn_status softmax_bwd(attn_ctx *ctx, const char *op, const attn_tensor *y,
                               const attn_tensor *dy, attn_tensor *dx, attn_tensor *dmask,
                               const attn_softmax_params *params, bool log) {
  attn_status st = attn__op_begin(ctx, op);
  if (st != ATTN_OK)
    return st;
  softmax_bwd_problem p;
  /* An empty tensor has no rows: nothing to compute. */
  if ((st = check(ctx, y, dy, dx, dmask, params, log, &p)) == ATTN_OK && !attn__empty(y)) {
    int64_t n = p.dims[3];
    p.rows = p.dims[0] * p.dims[1] * p.dims[2];
    p.threads = attn__threads_plan(ctx, (double)p.rows * (double)n, THREAD_ELEMS, 0);
    p.rows_per_item =
        attn__items_balanced(p.rows, n >= ITEM_ELEMS ? 1 : ITEM_ELEMS / n, p.threads);
    attn__parallel_for(ctx, p.threads, (p.rows + p.rows_per_item - 1) / p.rows_per_item,
                       rows_task, &p);
  }
  return attn__op_end(ctx, st);
}

attn_status attn_softmax_backward(attn_ctx *ctx, const attn_tensor *y, const attn_tensor *dy,
                                  attn_tensor *dx, attn_tensor *dmask,
                                  const attn_softmax_params *p) {
  return softmax_bwd(ctx, "attn_softmax_backward", y, dy, dx, dmask, p, false);
}

attn_status attn_log_softmax_backward(attn_ctx *ctx, const attn_tensor *y,
                                      const attn_tensor *dy, attn_tensor *dx,
                                      attn_tensor *dmask, const attn_softmax_params *p) {
  return softmax_bwd(ctx, "attn_log_softmax_backward", y, dy, dx, dmask, p, true);
}
