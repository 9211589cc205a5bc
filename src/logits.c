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

static void fill(float *z, int64_t n, float v) {
  for (int64_t j = 0; j < n; j++)
    z[j] = v;
}

void attn__logits_mask(float *z, int64_t n, const float *m, int64_t ms, const uint8_t *b,
                       int64_t bs) {
  if (m && ms == 0) {
    float c = m[0];
    if (c == -INFINITY)
      fill(z, n, -INFINITY);
    else
      for (int64_t j = 0; j < n; j++)
        z[j] += c;
  } else if (m && ms == 1) {
    /* Branch-free, so the compiler can vectorise the common layout. */
    for (int64_t j = 0; j < n; j++)
      z[j] = m[j] == -INFINITY ? -INFINITY : z[j] + m[j];
  } else if (m) {
    for (int64_t j = 0; j < n; j++) {
      float mv = m[j * ms];
      z[j] = mv == -INFINITY ? -INFINITY : z[j] + mv;
    }
  }
  if (b && bs == 0) {
    if (!b[0])
      fill(z, n, -INFINITY);
  } else if (b) {
    for (int64_t j = 0; j < n; j++)
      if (!b[j * bs])
        z[j] = -INFINITY;
  }
}
