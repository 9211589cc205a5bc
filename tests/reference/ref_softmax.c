#include "ref_softmax.h"

#include <math.h>
#include <stdlib.h>

/* Offset of the element of `v` that index i (of a 4-axis target whose last
 * ndim axes v aligns with) reads, broadcasting dims of 1. */
static int64_t offset_of(const ref_view *v, const int64_t i[4]) {
  int64_t off = 0;
  for (int a = 0; a < v->ndim; a++) {
    int t = 4 - v->ndim + a;
    if (v->dims[a] != 1)
      off += i[t] * v->strides[a];
  }
  return off;
}

void ref_softmax(const ref_view *x, float scale, const ref_view *mask,
                 const ref_view *bool_mask, int log_out, double *out) {
  int64_t d[4] = {1, 1, 1, 1};
  for (int a = 0; a < x->ndim; a++)
    d[4 - x->ndim + a] = x->dims[a];
  int64_t n = d[3];
  double *z = malloc((size_t)n * sizeof *z);
  int64_t row = 0;
  int64_t i[4];
  for (i[0] = 0; i[0] < d[0]; i[0]++)
    for (i[1] = 0; i[1] < d[1]; i[1]++)
      for (i[2] = 0; i[2] < d[2]; i[2]++, row++) {
        double *y = out + row * n;
        int has_nan = 0;
        double m = -INFINITY;
        for (i[3] = 0; i[3] < n; i[3]++) {
          float xv = ((const float *)x->data)[offset_of(x, i)];
          float zf = xv * scale;
          if (mask)
            zf = zf + ((const float *)mask->data)[offset_of(mask, i)];
          if (bool_mask && !((const uint8_t *)bool_mask->data)[offset_of(bool_mask, i)])
            zf = -INFINITY;
          z[i[3]] = zf;
          if (isnan(z[i[3]]))
            has_nan = 1;
          else if (z[i[3]] > m)
            m = z[i[3]];
        }
        if (has_nan) {
          for (int64_t j = 0; j < n; j++)
            y[j] = NAN;
          continue;
        }
        if (m == -INFINITY) {
          for (int64_t j = 0; j < n; j++)
            y[j] = log_out ? -INFINITY : 0.0;
          continue;
        }
        double sum = 0;
        for (int64_t j = 0; j < n; j++)
          sum += exp(z[j] - m);
        for (int64_t j = 0; j < n; j++)
          y[j] = log_out ? (z[j] - m) - log(sum) : exp(z[j] - m) / sum;
      }
  free(z);
}

void ref_softmax_naive(const double *x, size_t n, double *y) {
  double sum = 0;
  for (size_t j = 0; j < n; j++)
    sum += exp(x[j]);
  for (size_t j = 0; j < n; j++)
    y[j] = exp(x[j]) / sum;
}
