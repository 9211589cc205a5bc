/* Rows of angle tables for RoPE and the sinusoidal encodings (angles.h). */
#include "angles.h"

#include <math.h>
#include <string.h>

/* (c, s) = (c0, s0) rotated by (c1, s1): the angles add. Any of them may
 * be the same arrays. */
static void turn(const double *c0, const double *s0, const double *c1, const double *s1,
                 double *c, double *s, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    double cv = c0[i], sv = s0[i], ct = c1[i], st = s1[i];
    c[i] = cv * ct - sv * st;
    s[i] = sv * ct + cv * st;
  }
}

size_t attn__angles_doubles(int64_t n) { return (size_t)ANGLE_ANCHOR * 2 * (size_t)n; }

void attn__angles_init(attn_angles *a) {
  int64_t n = a->n;
  double *c1 = a->turns, *s1 = c1 + n; /* one row's turn */
  for (int64_t i = 0; i < n; i++) {
    c1[i] = cos(a->freq[i]);
    s1[i] = a->negate ? -sin(a->freq[i]) : sin(a->freq[i]);
  }
  /* 16 rows' turn: one row's, doubled four times; then its multiples. */
  double *c16 = a->turns + 2 * n, *s16 = c16 + n;
  turn(c1, s1, c1, s1, c16, s16, n);
  for (int d = 1; d < 4; d++)
    turn(c16, s16, c16, s16, c16, s16, n);
  for (int64_t b = 2; b < ANGLE_ANCHOR; b++) {
    double *cb = a->turns + 2 * n * b;
    turn(cb - 2 * n, cb - n, c16, s16, cb, cb + n, n);
  }
}

void attn__angles_exact(const attn_angles *a, double pos, double *c, double *s) {
  for (int64_t i = 0; i < a->n; i++) {
    double t = pos * a->freq[i];
    c[i] = cos(t) * a->amp;
    s[i] = (a->negate ? -sin(t) : sin(t)) * a->amp;
  }
}

/* Anchor row j (a multiple of ANGLE_ANCHOR). */
static void anchor_row(const attn_angles *a, attn_angles_span *hi, int64_t j, double *c,
                       double *s) {
  int64_t span = j / ANGLE_SPAN, b = j / ANGLE_ANCHOR % ANGLE_ANCHOR, n = a->n;
  if (hi->span != span) {
    attn__angles_exact(a, a->origin + (double)(span * ANGLE_SPAN), hi->c, hi->s);
    hi->span = span;
  }
  if (b == 0) {
    memcpy(c, hi->c, (size_t)n * sizeof *c);
    memcpy(s, hi->s, (size_t)n * sizeof *s);
  } else {
    const double *cb = a->turns + 2 * n * b;
    turn(hi->c, hi->s, cb, cb + n, c, s, n);
  }
}

void attn__angles_row(const attn_angles *a, attn_angles_span *hi, int64_t j, const double *cp,
                      const double *sp, double *c, double *s) {
  int64_t k = j % ANGLE_ANCHOR;
  const double *c1 = a->turns, *s1 = c1 + a->n;
  if (k == 0) {
    anchor_row(a, hi, j, c, s);
  } else if (cp) {
    turn(cp, sp, c1, s1, c, s, a->n);
  } else { /* from the anchor before it, as a run from there would */
    anchor_row(a, hi, j - k, c, s);
    for (int64_t t = 0; t < k; t++)
      turn(c, s, c1, s1, c, s, a->n);
  }
}
