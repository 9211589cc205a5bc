#include "ref_backward.h"

#include <math.h>
#include <stdlib.h>

void ref_softmax_backward(const ref_view *x, float scale, const ref_view *mask,
                          const ref_view *bool_mask, int log_out, const double *dy, double *dx,
                          double *dz) {
  int64_t rows = 1, n = x->dims[x->ndim - 1];
  for (int a = 0; a < x->ndim - 1; a++)
    rows *= x->dims[a];
  double *y = malloc((size_t)(rows * n) * sizeof *y);
  ref_softmax(x, scale, mask, bool_mask, log_out, y);
  for (int64_t r = 0; r < rows; r++) {
    const double *yr = y + r * n, *g = dy + r * n;
    double sum = 0;
    for (int64_t j = 0; j < n; j++) {
      double p = log_out ? exp(yr[j]) : yr[j];
      if (p != 0) /* visible (NaN included) */
        sum += log_out ? g[j] : p * g[j];
    }
    for (int64_t j = 0; j < n; j++) {
      double p = log_out ? exp(yr[j]) : yr[j];
      double d = 0;
      if (p != 0)
        d = log_out ? g[j] - p * sum : p * (g[j] - sum);
      if (dz)
        dz[r * n + j] = d;
      if (dx)
        dx[r * n + j] = (double)scale * d;
    }
  }
  free(y);
}

static void zero(double *x, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    x[i] = 0;
}

void ref_sdpa_backward(const ref_sdpa_args *a, const double *dout, double *dq, double *dk,
                       double *dv, double *dmask, double *dsinks) {
  int64_t B = a->B, Hq = a->Hq, Lq = a->Lq, Lk = a->Lk, D = a->D, Dv = a->Dv;
  int64_t group = Hq / a->Hkv;
  double scale = a->scale != 0 ? a->scale : 1.0 / sqrt((double)D);
  double *o = malloc((size_t)(Dv > 0 ? Dv : 1) * sizeof *o);
  double *w = malloc((size_t)Lk * sizeof *w);
  zero(dq, B * Hq * Lq * D);
  zero(dk, B * a->Hkv * Lk * D);
  zero(dv, B * a->Hkv * Lk * Dv);
  if (dsinks)
    zero(dsinks, Hq);
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < Hq; h++)
      for (int64_t i = 0; i < Lq; i++) {
        int64_t hk = h / group, r = (b * Hq + h) * Lq + i;
        double lse;
        ref_sdpa_row(a, b, h, i, o, NULL, &lse, w, NULL);
        const double *g = dout + r * Dv;
        const float *qi = a->q + b * a->qs[0] + h * a->qs[1] + i * a->qs[2];
        double *dqi = dq + r * D;
        /* Dsum = sum_j w_j dP_j, from the weights rather than from o. */
        double dsum = 0;
        for (int64_t j = 0; j < Lk; j++) {
          if (w[j] == 0)
            continue;
          const float *vj = a->v + b * a->vs[0] + hk * a->vs[1] + j * a->vs[2];
          double dp = 0;
          for (int64_t d = 0; d < Dv; d++)
            dp += g[d] * (double)vj[d * a->vs[3]];
          dsum += w[j] * dp;
        }
        for (int64_t j = 0; j < Lk; j++) {
          double ds = 0;
          if (w[j] != 0) {
            const float *kj = a->k + b * a->ks[0] + hk * a->ks[1] + j * a->ks[2];
            const float *vj = a->v + b * a->vs[0] + hk * a->vs[1] + j * a->vs[2];
            double *dkj = dk + ((b * a->Hkv + hk) * Lk + j) * D;
            double *dvj = dv + ((b * a->Hkv + hk) * Lk + j) * Dv;
            double dp = 0;
            for (int64_t d = 0; d < Dv; d++) {
              dp += g[d] * (double)vj[d * a->vs[3]];
              dvj[d] += w[j] * g[d];
            }
            ds = w[j] * (dp - dsum);
            double dx = ds;
            if (a->softcap > 0) {
              double dot = 0;
              for (int64_t d = 0; d < D; d++)
                dot += (double)qi[d * a->qs[3]] * (double)kj[d * a->ks[3]];
              double t = tanh(scale * dot / a->softcap);
              dx = ds * (1 - t * t);
            }
            for (int64_t d = 0; d < D; d++) {
              dqi[d] += scale * dx * (double)kj[d * a->ks[3]];
              dkj[d] += scale * dx * (double)qi[d * a->qs[3]];
            }
          }
          if (dmask)
            dmask[r * Lk + j] = ds;
        }
        if (dsinks && lse != -INFINITY)
          dsinks[h] -= exp((double)a->sinks[h] - lse) * dsum;
      }
  free(o);
  free(w);
}

void ref_rope_backward(int interleaved, int64_t B, int64_t H, int64_t L, int64_t D, int64_t r,
                       double theta, const int64_t *pos, double *x) {
  for (int64_t b = 0; b < B; b++)
    for (int64_t hd = 0; hd < H; hd++)
      for (int64_t l = 0; l < L; l++) {
        double *g = x + ((b * H + hd) * L + l) * D;
        double p = (double)pos[b * L + l];
        for (int64_t i = 0; i < r / 2; i++) {
          /* The forward's Jacobian on (a, b) is [[c, -s], [s, c]]; the
           * gradient goes through its transpose. */
          double t = p * pow(theta, -2.0 * (double)i / (double)r);
          int64_t ja = interleaved ? 2 * i : i;
          int64_t jb = interleaved ? 2 * i + 1 : i + r / 2;
          double ga = g[ja], gb = g[jb];
          g[ja] = cos(t) * ga + sin(t) * gb;
          g[jb] = -sin(t) * ga + cos(t) * gb;
        }
      }
}
