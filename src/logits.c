/* The logit pipeline's row helpers (logits.h). */
#include "logits.h"

#include <math.h>

void attn__logits_cap(float *z, int64_t n, float cap) {
  /* Divide rather than multiply by 1/cap: for a subnormal cap, 1/cap is inf
   * and a zero logit would give NaN. tanhf costs far more than the division. */
  for (int64_t j = 0; j < n; j++)
    z[j] = cap * tanhf(z[j] / cap);
}

void attn__logits_alibi(float *z, int64_t n, float slope, int64_t dist0) {
  for (int64_t j = 0; j < n; j++)
    z[j] += slope * (float)(dist0 + j);
}

void attn__logits_hide(float *z, int64_t n, const float *m, int64_t ms, const uint8_t *b,
                       int64_t bs) {
  if (m && ms == 1) /* branch-free, so the compiler vectorises it */
    for (int64_t j = 0; j < n; j++)
      z[j] = m[j] == -INFINITY ? -INFINITY : z[j];
  else if (m)
    for (int64_t j = 0; j < n; j++)
      if (m[j * ms] == -INFINITY)
        z[j] = -INFINITY;
  if (b)
    for (int64_t j = 0; j < n; j++)
      if (!b[j * bs])
        z[j] = -INFINITY;
}

void attn__logits_mask(float *z, int64_t n, const float *m, int64_t ms, const uint8_t *b,
                       int64_t bs) {
  if (m)
    for (int64_t j = 0; j < n; j++)
      z[j] += m[j * ms];
  attn__logits_hide(z, n, m, ms, b, bs);
}
