/* Float64 reference for the decoder attention layer (attn_mha_forward),
 * written from its definition in attn.h with plain loops; no code shared
 * with src/ or with the other references. */
#ifndef ATTN_REF_MHA_H
#define ATTN_REF_MHA_H
#include <stdint.h>

typedef struct ref_mha_args {
  int64_t E, Hq, Hkv, D;
  /* Row-major nn.Linear weights: wq [Hq*D, E], wk and wv [Hkv*D, E],
   * wo [E, Hq*D]; biases optional (NULL). */
  const float *wq, *wk, *wv, *wo, *bq, *bk, *bv, *bo;
  int rope;            /* rotary embedding on q and k */
  int interleaved;     /* pairs (2i, 2i+1), else (i, i + r/2) */
  int64_t rotary_dim;  /* r */
  double theta;
  const double *freqs; /* r/2 frequencies used instead of theta's (a scaling), or NULL */
  double amp;          /* rotated dims times this (an attention factor); 0 = 1 */
  double scale;        /* 0 = 1/sqrt(D) */
  double softcap;      /* 0 = off */
  int window;          /* keys j >= p - window_left only */
  int64_t window_left;
} ref_mha_args;

/* One sequence of T tokens x [T, E] at positions 0..T-1, causal:
 * y [T, E]. */
void ref_mha_decoder(const ref_mha_args *a, int64_t T, const float *x, double *y);
/* The same, only rows first, first + step, ... and T - 1 of y written (some
 * of the newest tokens). */
void ref_mha_decoder_rows(const ref_mha_args *a, int64_t T, int64_t first, int64_t step,
                          const float *x, double *y);

#endif
