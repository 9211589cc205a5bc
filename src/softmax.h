/* Softmax over rows, for use inside the library (softmax.c). */
#ifndef ATTN_SOFTMAX_H
#define ATTN_SOFTMAX_H

#include "internal.h"

/* Rows of a 4-axis view (leading axes of size 1 pad a smaller rank); axis 3
 * is the row, contiguous in x and y. y may be x (in place); the masks are
 * read broadcast through their strides (0 = broadcast). The softmax runs
 * along axis 3 - axis_back (the row by default). x and y are F32,
 * F16 or BF16 (xdt, ydt): a half row is widened into the worker's row
 * buffer, computed in float, and a half result rounded once into y. */
typedef struct {
  const void *x;
  void *y;
  int32_t xdt, ydt;
  const float *mask;    /* additive, or NULL */
  const uint8_t *bmask; /* keep-mask (0 hides), or NULL */
  int64_t dims[ATTN_MAX_DIMS];
  int64_t xs[ATTN_MAX_DIMS], ys[ATTN_MAX_DIMS], ms[ATTN_MAX_DIMS], bs[ATTN_MAX_DIMS];
  float scale; /* 1 = none */
  bool log;    /* log-softmax */
  int32_t axis_back; /* the softmax axis counted back from axis 3 of the view:
                        0 = axis 3, the contiguous row (so a zero-filled problem
                        is the row softmax); 1..3 = axis 2..0, strided, walked in
                        blocks of the last axis */
  /* Filled by attn__softmax_plan. */
  int64_t rows, rows_per_item;
  int32_t threads;
  bool packed;     /* x's rows lie end to end (row r at x + r * n) */
  bool stream;     /* F32 rows through a worker's row, y written past the caches */
  bool block_rows; /* F32 rows go a block at a time through softmax_rows
                      (kernels.h) when the set has it */
  size_t ws_bytes; /* a row of floats per thread when x or y is half or when
                      streaming, else 0 */
  /* Workspace, carved by the run. */
  float *rowbuf;
  size_t rowbuf_stride;
} attn_softmax_problem;

/* Threads, work items and the exact workspace (p->ws_bytes). */
void attn__softmax_plan(const attn_ctx *ctx, attn_softmax_problem *p);
/* Run a planned problem: takes p->ws_bytes from the reserved workspace; no
 * validation, no allocation. */
void attn__softmax_rows(attn_ctx *ctx, attn_softmax_problem *p);

#endif
