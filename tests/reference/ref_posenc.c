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

/* ---- long-context scalings of the rotary frequencies (moved from test_rope_cache.c) ---- */

/* theta^(-2i/r), not through the library's pow. */
static double base_freq(double theta, int64_t i, int64_t r) {
  return inv_power(theta, 2.0 * (double)i / (double)r);
}

double ref_rope_scaled_freqs(const ref_rope_scaling *c, int64_t half, double *w) {
  const double pi = 3.14159265358979323846;
  int64_t r = 2 * half;
  double s = c->factor, af = 1.0;
  for (int64_t i = 0; i < half; i++) {
    switch (c->scaling) {
    case REF_ROPE_LINEAR: /* position interpolation: p / s */
      w[i] = base_freq(c->theta, i, r) / s;
      break;
    case REF_ROPE_NTK: { /* base' = base * s^(r/(r-2)) */
      double base = c->theta * exp(log(s) * (double)r / (double)(r - 2));
      w[i] = base_freq(base, i, r);
      break;
    }
    case REF_ROPE_DYNAMIC_NTK: {
      double n = (double)(c->seq_len > c->p0 ? c->seq_len : c->p0);
      double ratio = s * n / (double)c->p0 - (s - 1.0);
      double base = c->theta * exp(log(ratio) * (double)r / (double)(r - 2));
      w[i] = base_freq(base, i, r);
      break;
    }
    case REF_ROPE_YARN: {
      /* The dim at which a wavelength fits `rot` times in p0:
       * 2 pi theta^(2d/r) = p0 / rot  =>  d = r ln(p0 / (2 pi rot)) / (2 ln theta). */
      double dlo = (double)r * log((double)c->p0 / (2 * pi * c->beta_fast)) / (2 * log(c->theta));
      double dhi = (double)r * log((double)c->p0 / (2 * pi * c->beta_slow)) / (2 * log(c->theta));
      if (c->truncate) {
        dlo = floor(dlo);
        dhi = ceil(dhi);
      }
      if (dlo < 0)
        dlo = 0;
      if (dhi > (double)(r - 1))
        dhi = (double)(r - 1);
      if (dhi == dlo)
        dhi += 0.001;
      double t = ((double)i - dlo) / (dhi - dlo);
      double gamma = t < 0 ? 0 : t > 1 ? 1 : t; /* 0: keep (extrapolate), 1: interpolate */
      double w0 = base_freq(c->theta, i, r);
      w[i] = gamma * (w0 / s) + (1 - gamma) * w0;
      break;
    }
    case REF_ROPE_LLAMA3: {
      double w0 = base_freq(c->theta, i, r);
      double wavelen = 2 * pi / w0;
      double lo = (double)c->p0 / c->low_ff, hi = (double)c->p0 / c->high_ff;
      if (wavelen < hi)
        w[i] = w0; /* high frequency: unchanged */
      else if (wavelen > lo)
        w[i] = w0 / s; /* low frequency: interpolated */
      else {
        double g = ((double)c->p0 / wavelen - c->low_ff) / (c->high_ff - c->low_ff);
        w[i] = (1 - g) * w0 / s + g * w0;
      }
      break;
    }
    case REF_ROPE_LONGROPE: {
      const double *f = c->seq_len > c->p0 ? c->long_f : c->short_f;
      w[i] = 1.0 / (f[i] * exp((2.0 * (double)i / (double)r) * log(c->theta)));
      break;
    }
    default:
      w[i] = base_freq(c->theta, i, r);
      break;
    }
  }
  if (c->scaling == REF_ROPE_YARN) {
    if (c->attention_factor > 0)
      af = c->attention_factor;
    else if (c->mscale != 0 && c->mscale_all_dim != 0)
      af = (s <= 1 ? 1 : 0.1 * c->mscale * log(s) + 1) /
           (s <= 1 ? 1 : 0.1 * c->mscale_all_dim * log(s) + 1);
    else
      af = s <= 1 ? 1 : 0.1 * log(s) + 1;
  }
  if (c->scaling == REF_ROPE_LONGROPE)
    af = c->attention_factor > 0 ? c->attention_factor
         : s <= 1               ? 1.0
                                : sqrt(1 + log(s) / log((double)c->p0));
  return af;
}
