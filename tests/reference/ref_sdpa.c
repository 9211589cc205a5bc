#include "ref_sdpa.h"

#include <math.h>
#include <stdlib.h>

/* The position among the keys of query row i of batch b (i' in attn.h). */
static int64_t position(const ref_sdpa_args *a, int64_t b, int64_t i) {
  if (a->q_offsets)
    return a->q_offsets[b] + i;
  if (!a->bottom_right)
    return i;
  int64_t keys = a->kv_lens ? a->kv_lens[b] : a->Lk; /* the last query sees the last key */
  return i + keys - a->Lq;
}

static int visible(const ref_sdpa_args *a, int64_t b, int64_t h, int64_t i, int64_t j) {
  int64_t ip = position(a, b, i);
  if (a->causal && j > ip)
    return 0;
  /* Written as distances so extents up to INT64_MAX cannot overflow. */
  if (a->window && (ip - j > a->window_left || j - ip > a->window_right))
    return 0;
  if (a->kv_lens && j >= a->kv_lens[b])
    return 0;
  if (a->bool_mask &&
      !a->bool_mask[b * a->bs[0] + h * a->bs[1] + i * a->bs[2] + j * a->bs[3]])
    return 0;
  if (a->mask && a->mask[b * a->ms[0] + h * a->ms[1] + i * a->ms[2] + j * a->ms[3]] == -INFINITY)
    return 0;
  return 1;
}

int64_t ref_sdpa_row(const ref_sdpa_args *a, int64_t b, int64_t h, int64_t i, double *out,
                     double *mag, double *lse, double *w, double *size) {
  int64_t Lk = a->Lk, hk = h / (a->Hq / a->Hkv);
  int64_t ip = position(a, b, i);
  double scale = a->scale != 0 ? a->scale : 1.0 / sqrt((double)a->D);
  double *s = malloc((size_t)(Lk > 0 ? Lk : 1) * sizeof *s);
  char *vis = malloc((size_t)(Lk > 0 ? Lk : 1));
  int64_t n_vis = 0;
  int bad = 0; /* a NaN or +inf logit */
  double biggest = 0;
  double m = a->sinks ? (double)a->sinks[h] : -INFINITY;
  const float *qi = a->q + b * a->qs[0] + h * a->qs[1] + i * a->qs[2];
  for (int64_t j = 0; j < Lk; j++) {
    vis[j] = (char)visible(a, b, h, i, j);
    if (!vis[j])
      continue;
    n_vis++;
    const float *kj = a->k + b * a->ks[0] + hk * a->ks[1] + j * a->ks[2];
    double dot = 0;
    for (int64_t d = 0; d < a->D; d++)
      dot += (double)qi[d * a->qs[3]] * (double)kj[d * a->ks[3]];
    double x = a->D > 0 ? scale * dot : 0.0; /* an empty dot product is 0 at any scale */
    if (a->softcap > 0)
      x = a->softcap * tanh(x / a->softcap);
    if (a->alibi_slopes)
      x += (double)a->alibi_slopes[h] * (double)(j - ip);
    if (a->mask)
      x += a->mask[b * a->ms[0] + h * a->ms[1] + i * a->ms[2] + j * a->ms[3]];
    s[j] = x;
    if (fabs(x) > biggest && x != -INFINITY)
      biggest = fabs(x);
    if (isnan(x) || x == INFINITY)
      bad = 1;
    else if (x > m)
      m = x;
  }
  for (int64_t d = 0; d < a->Dv; d++) {
    out[d] = 0;
    if (mag)
      mag[d] = 0;
  }
  double l = 0, row_lse;
  if (bad) {
    row_lse = NAN;
  } else if (m == -INFINITY) { /* nothing visible and no sink */
    row_lse = -INFINITY;
  } else {
    if (a->sinks)
      l += exp((double)a->sinks[h] - m);
    for (int64_t j = 0; j < Lk; j++)
      if (vis[j])
        l += exp(s[j] - m);
    row_lse = m + log(l);
  }
  for (int64_t j = 0; j < Lk; j++) {
    double wj = 0;
    if (vis[j])
      wj = bad ? NAN : exp(s[j] - row_lse);
    if (w)
      w[j] = wj;
    if (!vis[j])
      continue;
    const float *vj = a->v + b * a->vs[0] + hk * a->vs[1] + j * a->vs[2];
    for (int64_t d = 0; d < a->Dv; d++) {
      double x = vj[d * a->vs[3]];
      out[d] += wj * x;
      if (mag)
        mag[d] += wj * fabs(x);
    }
  }
  if (lse)
    *lse = row_lse;
  if (size)
    *size = biggest;
  free(s);
  free(vis);
  return n_vis;
}

void ref_sdpa(const ref_sdpa_args *a, double *out, double *mag, double *lse, double *w) {
  for (int64_t b = 0; b < a->B; b++)
    for (int64_t h = 0; h < a->Hq; h++)
      for (int64_t i = 0; i < a->Lq; i++) {
        int64_t r = (b * a->Hq + h) * a->Lq + i;
        ref_sdpa_row(a, b, h, i, out + r * a->Dv, mag ? mag + r * a->Dv : NULL,
                     lse ? lse + r : NULL, w ? w + r * a->Lk : NULL, NULL);
      }
}
