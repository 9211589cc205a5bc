#include "ref_pool.h"

#include <math.h>
#include <stdlib.h>

void ref_pool(int mode, int64_t B, int64_t H, int64_t L, int64_t D, const double *x,
              const uint8_t *keep, const double *scores, double *out) {
  double *w = malloc((size_t)(L > 0 ? L : 1) * sizeof *w);
  if (!w)
    abort();
  for (int64_t bh = 0; bh < B * H; bh++) {
    const double *xs = x + bh * L * D;
    const uint8_t *k = keep + bh * L;
    double *o = out + bh * D;
    int64_t count = 0;
    for (int64_t l = 0; l < L; l++)
      count += k[l] != 0;
    int nan_row = 0, zero_row = count == 0;
    if (mode == REF_POOL_WEIGHTED && !zero_row) {
      /* softmax written the textbook way over the kept scores */
      const double *s = scores + bh * L;
      double top = -INFINITY;
      for (int64_t l = 0; l < L; l++)
        if (k[l]) {
          if (isnan(s[l]) || s[l] == INFINITY)
            nan_row = 1;
          else if (s[l] > top)
            top = s[l];
        }
      if (!nan_row && top == -INFINITY)
        zero_row = 1;
      double total = 0;
      for (int64_t l = 0; l < L; l++) {
        w[l] = k[l] && !nan_row && !zero_row ? exp(s[l] - top) : 0;
        total += w[l];
      }
      for (int64_t l = 0; l < L; l++)
        w[l] = total > 0 ? w[l] / total : 0;
    }
    for (int64_t d = 0; d < D; d++) {
      if (nan_row) {
        o[d] = NAN;
        continue;
      }
      if (zero_row) {
        o[d] = 0;
        continue;
      }
      double acc = mode == REF_POOL_MAX ? -INFINITY : 0;
      int saw_nan = 0;
      for (int64_t l = 0; l < L; l++) {
        if (!k[l])
          continue;
        double v = xs[l * D + d];
        if (mode == REF_POOL_MAX) {
          if (isnan(v))
            saw_nan = 1;
          else if (v > acc)
            acc = v;
        } else if (mode == REF_POOL_WEIGHTED) {
          acc += w[l] * v;
        } else {
          acc += v;
        }
      }
      if (mode == REF_POOL_MEAN)
        acc /= (double)count;
      o[d] = saw_nan ? NAN : acc;
    }
  }
  free(w);
}

void ref_rope_tables(int interleaved, int64_t B, int64_t H, int64_t L, int64_t D, int64_t half,
                     const double *cosr, const double *sinr, double *x) {
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t l = 0; l < L; l++) {
        double *v = x + ((b * H + h) * L + l) * D;
        const double *c = cosr + (b * L + l) * half, *s = sinr + (b * L + l) * half;
        for (int64_t i = 0; i < half; i++) {
          /* ONNX: x1 = even or first-half entries, x2 = odd or second half */
          int64_t j1 = interleaved ? 2 * i : i, j2 = interleaved ? 2 * i + 1 : half + i;
          double x1 = v[j1], x2 = v[j2];
          v[j1] = c[i] * x1 - s[i] * x2;
          v[j2] = s[i] * x1 + c[i] * x2;
        }
      }
}

void ref_pool_backward(int mode, int64_t B, int64_t H, int64_t L, int64_t D, const double *x,
                       const uint8_t *keep, const double *scores, const double *dout,
                       double *dx, double *dscores) {
  double *w = malloc((size_t)(L > 0 ? L : 1) * sizeof *w);
  if (!w)
    abort();
  for (int64_t bh = 0; bh < B * H; bh++) {
    const double *xs = x + bh * L * D, *g = dout + bh * D, *s = scores ? scores + bh * L : NULL;
    const uint8_t *k = keep + bh * L;
    double *o = dx + bh * L * D, *ds = dscores ? dscores + bh * L : NULL;
    for (int64_t i = 0; i < L * D; i++)
      o[i] = 0;
    for (int64_t l = 0; ds && l < L; l++)
      ds[l] = 0;
    int64_t count = 0;
    for (int64_t l = 0; l < L; l++)
      count += k[l] != 0;
    if (count == 0)
      continue;
    if (mode == REF_POOL_SUM || mode == REF_POOL_MEAN) {
      for (int64_t l = 0; l < L; l++)
        for (int64_t d = 0; k[l] && d < D; d++)
          o[l * D + d] = mode == REF_POOL_SUM ? g[d] : g[d] / (double)count;
    } else if (mode == REF_POOL_MAX) {
      for (int64_t d = 0; d < D; d++) {
        int64_t pick = -1, first = -1;
        double top = -INFINITY;
        for (int64_t l = 0; l < L; l++)
          if (k[l] && !isnan(xs[l * D + d]) && xs[l * D + d] > top)
            top = xs[l * D + d];
        for (int64_t l = 0; l < L && pick < 0; l++)
          if (k[l] && isnan(xs[l * D + d]))
            pick = l;
        for (int64_t l = 0; l < L && pick < 0; l++)
          if (k[l] && xs[l * D + d] == top)
            pick = l;
        for (int64_t l = 0; l < L && first < 0; l++)
          if (k[l])
            first = l;
        o[(pick >= 0 ? pick : first) * D + d] = g[d];
      }
    } else {
      int nan_row = 0;
      double top = -INFINITY, total = 0;
      for (int64_t l = 0; l < L; l++)
        if (k[l]) {
          nan_row |= isnan(s[l]) || s[l] == INFINITY;
          top = s[l] > top ? s[l] : top;
        }
      if (nan_row) {
        for (int64_t l = 0; l < L; l++)
          if (k[l]) {
            for (int64_t d = 0; d < D; d++)
              o[l * D + d] = NAN;
            if (ds)
              ds[l] = NAN;
          }
        continue;
      }
      if (top == -INFINITY)
        continue;
      for (int64_t l = 0; l < L; l++) {
        w[l] = k[l] ? exp(s[l] - top) : 0;
        total += w[l];
      }
      /* dout . out, out summed over the tokens of nonzero weight */
      double gy = 0;
      for (int64_t l = 0; l < L; l++)
        for (int64_t d = 0; w[l] != 0 && d < D; d++)
          gy += g[d] * (w[l] / total) * xs[l * D + d];
      for (int64_t l = 0; l < L; l++) {
        double wl = w[l] / total;
        if (wl == 0)
          continue;
        double gx = 0;
        for (int64_t d = 0; d < D; d++) {
          o[l * D + d] = wl * g[d];
          gx += g[d] * xs[l * D + d];
        }
        if (ds)
          ds[l] = wl * (gx - gy);
      }
    }
  }
  free(w);
}
