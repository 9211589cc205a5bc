/* Float64 softmax reference: plain loops, no code shared with src/. */
#ifndef ATTN_REF_SOFTMAX_H
#define ATTN_REF_SOFTMAX_H

#include <stddef.h>
#include <stdint.h>

/* A strided view of caller memory: ndim (1..4) axes, outermost first,
 * strides in elements (0 = broadcast). */
typedef struct {
  const void *data;
  int ndim;
  int64_t dims[4];
  int64_t strides[4];
} ref_view;

/* Softmax (log-softmax when `log` is nonzero) over the last axis of the F32
 * view x, written contiguously (x's shape) into out.
 * z = (float)((float)(scale * x) + mask), the float rounding attn.h
 * defines, then z = -inf where bool_mask is 0; mask (F32) and bool_mask
 * (uint8) are NULL or broadcast to x by NumPy rules (aligned on the right,
 * each dim equal to x's or 1). The rest is float64:
 * y = exp(z - M) / sum exp(z - M), log: (z - M) - log(sum), M the row max.
 * A row with a NaN z gives NaN; a row whose z are all -inf gives 0 (log:
 * -inf); a +inf z gives NaN through inf - inf, as IEEE arithmetic does. */
void ref_softmax(const ref_view *x, float scale, const ref_view *mask,
                 const ref_view *bool_mask, int log, double *out);

/* The seed article's formula taken literally: y_i = e^{x_i} / sum_j e^{x_j},
 * no maximum subtracted (fine for small x). */
void ref_softmax_naive(const double *x, size_t n, double *y);

#endif
