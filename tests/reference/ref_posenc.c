#include "ref_posenc.h"

#include <math.h>
#include <stdlib.h>

/* 1 / base^e written through exp and log, deliberately not as pow. */
static double inv_power(double base, double e) { return exp(-e * log(base)); }

void ref_sinusoidal(int layout, int64_t L, int64_t D, double base, const double *pos,
                    double *out) {
  int64_t h = D / 2;
  for (int64_t l = 0; l < L; l++) {
    double p = pos[l];
    for (int64_t j = 0; j < D; j++) {
      double v;
      if (layout == REF_PE_INTERLEAVED) {
        int64_t i = j / 2; /* columns 2i and 2i+1 share frequency i */
        double angle = p * inv_power(base, 2.0 * (double)i / (double)D);
        v = j % 2 == 0 ? sin(angle) : cos(angle);
      } else if (j >= 2 * h) {
        v = 0.0; /* the padding column of an odd D */
      } else {
        int64_t i = j < h ? j : j - h;
        double den = layout == REF_PE_SIN_COS_SHIFTED ? (double)(h - 1) : (double)h;
        double angle = p * inv_power(base, (double)i / den);
        int first_half = j < h;
        int is_sin = layout == REF_PE_COS_SIN ? !first_half : first_half;
        v = is_sin ? sin(angle) : cos(angle);
      }
      out[l * D + j] = v;
    }
  }
}

void ref_rope(int interleaved, int64_t B, int64_t H, int64_t L, int64_t D, int64_t r,
              double theta, const int64_t *pos, double *x) {
  for (int64_t b = 0; b < B; b++)
    for (int64_t hd = 0; hd < H; hd++)
      for (int64_t l = 0; l < L; l++) {
        double *v = x + ((b * H + hd) * L + l) * D;
        double p = (double)pos[b * L + l];
        for (int64_t i = 0; i < r / 2; i++) {
          double t = p * inv_power(theta, 2.0 * (double)i / (double)r);
          int64_t ja = interleaved ? 2 * i : i;
          int64_t jb = interleaved ? 2 * i + 1 : i + r / 2;
          double a = v[ja], c = v[jb];
          v[ja] = a * cos(t) - c * sin(t);
          v[jb] = a * sin(t) + c * cos(t);
        }
      }
}

/* start * ratio^k with start = ratio = 2^(-2^-(log2(n) - 3)), n a power of two. */
static void alibi_pow2(int64_t n, double max_bias, double *out) {
  double start = pow(2.0, -(max_bias / 8.0) * pow(2.0, -(log2((double)n) - 3.0)));
  double ratio = start;
  for (int64_t k = 0; k < n; k++)
    out[k] = start * pow(ratio, (double)k);
}

void ref_alibi_slopes(int64_t n, double max_bias, double *out) {
  int64_t closest = 1;
  while (closest * 2 <= n)
    closest *= 2;
  alibi_pow2(closest, max_bias, out);
  if (closest == n)
    return;
  double *twice = malloc((size_t)(2 * closest) * sizeof *twice);
  if (!twice)
    abort();
  alibi_pow2(2 * closest, max_bias, twice);
  for (int64_t k = 0; k < n - closest; k++)
    out[closest + k] = twice[2 * k];
  free(twice);
}
