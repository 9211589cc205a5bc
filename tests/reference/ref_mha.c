#include "ref_mha.h"

#include <math.h>
#include <stdlib.h>

/* out[t, o] = sum_e in[t, e] w[o, e] + b[o]. */
static void linear(int64_t T, int64_t in_dim, int64_t out_dim, const double *in,
                   const float *w, const float *b, double *out) {
  for (int64_t t = 0; t < T; t++)
    for (int64_t o = 0; o < out_dim; o++) {
      double s = b ? b[o] : 0.0;
      for (int64_t e = 0; e < in_dim; e++)
        s += in[t * in_dim + e] * (double)w[o * in_dim + e];
      out[t * out_dim + o] = s;
    }
}

/* Rotate each head vector of row t (H heads of D) by position t. */
static void rotate(const ref_mha_args *a, int64_t T, int64_t H, double *x) {
  int64_t r = a->rotary_dim;
  for (int64_t t = 0; t < T; t++)
    for (int64_t h = 0; h < H; h++) {
      double *v = x + (t * H + h) * a->D;
      for (int64_t i = 0; i < r / 2; i++) {
        double w = a->freqs ? a->freqs[i] : 1.0 / pow(a->theta, (double)(2 * i) / (double)r);
        double ang = (double)t * w, amp = a->amp != 0 ? a->amp : 1.0;
        int64_t ia = a->interleaved ? 2 * i : i, ib = a->interleaved ? 2 * i + 1 : i + r / 2;
        double p = v[ia], q = v[ib];
        v[ia] = amp * (p * cos(ang) - q * sin(ang));
        v[ib] = amp * (p * sin(ang) + q * cos(ang));
      }
    }
}

/* The row after t: t + step, the last row T - 1, then past it. */
static int64_t next_row(int64_t t, int64_t step, int64_t T) {
  return t + step < T || t == T - 1 ? t + step : T - 1;
}

void ref_mha_decoder(const ref_mha_args *a, int64_t T, const float *x, double *y) {
  ref_mha_decoder_rows(a, T, 0, 1, x, y);
}

void ref_mha_decoder_rows(const ref_mha_args *a, int64_t T, int64_t first, int64_t step,
                          const float *x, double *y) {
  int64_t E = a->E, D = a->D, hq = a->Hq * D, hkv = a->Hkv * D;
  double *xd = malloc((size_t)(T * E) * sizeof *xd);
  double *q = malloc((size_t)(T * hq) * sizeof *q);
  double *k = malloc((size_t)(T * hkv) * sizeof *k);
  double *v = malloc((size_t)(T * hkv) * sizeof *v);
  double *att = malloc((size_t)(T * hq) * sizeof *att);
  double *s = malloc((size_t)T * sizeof *s);
  for (int64_t i = 0; i < T * E; i++)
    xd[i] = x[i];
  linear(T, E, hq, xd, a->wq, a->bq, q);
  linear(T, E, hkv, xd, a->wk, a->bk, k);
  linear(T, E, hkv, xd, a->wv, a->bv, v);
  if (a->rope) {
    rotate(a, T, a->Hq, q);
    rotate(a, T, a->Hkv, k);
  }
  double scale = a->scale != 0 ? a->scale : 1.0 / sqrt((double)D);
  for (int64_t h = 0; h < a->Hq; h++) {
    int64_t g = h / (a->Hq / a->Hkv);
    for (int64_t t = first; t < T; t = next_row(t, step, T)) {
      int64_t lo = a->window && t - a->window_left > 0 ? t - a->window_left : 0;
      double mx = -INFINITY, sum = 0;
      for (int64_t j = lo; j <= t; j++) {
        double d = 0;
        for (int64_t e = 0; e < D; e++)
          d += q[t * hq + h * D + e] * k[j * hkv + g * D + e];
        d *= scale;
        if (a->softcap > 0)
          d = a->softcap * tanh(d / a->softcap);
        s[j] = d;
        mx = d > mx ? d : mx;
      }
      for (int64_t j = lo; j <= t; j++)
        sum += s[j] = exp(s[j] - mx);
      for (int64_t e = 0; e < D; e++) {
        double o = 0;
        for (int64_t j = lo; j <= t; j++)
          o += s[j] / sum * v[j * hkv + g * D + e];
        att[t * hq + h * D + e] = o;
      }
    }
  }
  for (int64_t t = first; t < T; t = next_row(t, step, T))
    linear(1, hq, E, att + t * hq, a->wo, a->bo, y + t * E);
  free(xd), free(q), free(k), free(v), free(att), free(s);
}
