/* Rows of cos and sin of (origin + j) * freq[i], i < n, for integer rows
 * j >= 0: the angle tables of RoPE (rope.c, origin 0, j the position) and
 * of the sinusoidal encodings (posenc.c, origin the offset, j the row).
 *
 * Angles are formed and passed to sin/cos in double (a float angle at
 * position 1e6 is off by up to 0.03 rad). sin/cos cost tens of times a
 * multiply-add, so few rows come from them:
 *   - row 256 a (a "span" start): sin/cos, once per span a worker visits;
 *   - row 256 a + 16 b (an anchor): the span's row rotated by the turn of
 *     16 b rows, from the per-call table `turns` (made by rotations from
 *     one row's turn);
 *   - any other row: the row before it rotated by one row's turn, or, with
 *     no row before it at hand, its anchor's row turned forward row by row.
 * A row's values depend on j alone (the same operations whichever rows a
 * worker, block or chunk starts from), so any split gives the same bits.
 * Each rotation adds a few roundings of 2^-53 (some 35 rotations at most
 * reach any row, against the float output's 2^-24): the tables stay within
 * 6e-8 of the exact values. */
#ifndef ATTN_ANGLES_H
#define ATTN_ANGLES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ANGLE_ANCHOR 16                         /* rows per anchor */
#define ANGLE_SPAN (ANGLE_ANCHOR * ANGLE_ANCHOR) /* rows per sin/cos row */

typedef struct {
  int64_t n;          /* frequencies */
  const double *freq; /* n */
  double origin;      /* position of row 0 */
  double amp;         /* cos and sin times this (a scaled RoPE), else 1 */
  bool negate;        /* the angles' negatives (a backward rotation) */
  /* Filled by attn__angles_init from the workspace (attn__angles_doubles):
   * cos, then sin, of one row's turn (2n), then of 16 b rows' (2n each,
   * b < ANGLE_ANCHOR; b = 0 unused). */
  double *turns;
} attn_angles;

/* A worker's span row: cos c[n], sin s[n] of row span * ANGLE_SPAN. */
typedef struct {
  int64_t span; /* -1: none yet */
  double *c, *s;
} attn_angles_span;

/* Doubles of the per-call turns for n frequencies. */
size_t attn__angles_doubles(int64_t n);
/* Fill a->turns (which must point at attn__angles_doubles(a->n) doubles). */
void attn__angles_init(attn_angles *a);
/* cos and sin of position pos (not a row index) directly, times amp. */
void attn__angles_exact(const attn_angles *a, double pos, double *c, double *s);
/* Row j into (c, s). (cp, sp): row j - 1's values, or NULL when the caller
 * has none (they may be c and s themselves). hi: the worker's span row,
 * updated when j lies in another span. */
void attn__angles_row(const attn_angles *a, attn_angles_span *hi, int64_t j, const double *cp,
                      const double *sp, double *c, double *s);

#endif
