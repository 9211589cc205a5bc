/* Softmax over rows, for use inside the library (softmax.c). */
#ifndef ATTN_SOFTMAX_H
#define ATTN_SOFTMAX_H

#include "internal.h"

/* Rows of a 4-axis view (leading axes of size 1 pad a smaller rank); axis 3
 * is the row, contiguous in x and y. y may be x (in place); the masks are
 * read broadcast through their strides (0 = broadcast). */
typedef struct {
  const float *x;
  float *y;
  const float *mask;    /* additive, or NULL */
  const uint8_t *bmask; /* keep-mask (0 hides), or NULL */
  int64_t dims[ATTN_MAX_DIMS];
  int64_t xs[ATTN_MAX_DIMS], ys[ATTN_MAX_DIMS], ms[ATTN_MAX_DIMS], bs[ATTN_MAX_DIMS];
  float scale; /* 1 = none */
  bool log;    /* log-softmax */
  /* Filled by attn__softmax_plan. */
  int64_t rows, rows_per_item;
  int32_t threads;
} attn_softmax_problem;

/* Threads and work items; softmax needs no workspace. */
void attn__softmax_plan(const attn_ctx *ctx, attn_softmax_problem *p);
/* Run a planned problem: no validation, no allocation. */
void attn__softmax_rows(attn_ctx *ctx, const attn_softmax_problem *p);

#endif
