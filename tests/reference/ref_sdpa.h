/* Float64 reference for scaled dot-product attention, written from the
 * definition in attn.h (attn_sdpa_params) with plain loops. Shares no code
 * with src/: every logit row is materialised in double. */
#ifndef ATTN_REF_SDPA_H
#define ATTN_REF_SDPA_H
#include <stdint.h>

/* One problem. Tensors are read through element strides of their
 * [B, H, L, D] views, so any layout (and broadcast, stride 0) can be given.
 * The masks are read at b*ms[0] + h*ms[1] + i*ms[2] + j*ms[3] with h the
 * query head: pass stride 0 on the axes a mask broadcasts over. */
typedef struct ref_sdpa_args {
  int64_t B, Hq, Hkv, Lq, Lk, D, Dv;
  const float *q, *k, *v;
  int64_t qs[4], ks[4], vs[4];
  double scale;   /* 0 = 1/sqrt(D) */
  double softcap; /* 0 = off */
  int causal;
  int bottom_right; /* i' = i + kv_lens[b] - Lq (kv_lens set) or i + Lk - Lq,
                       instead of i */
  int window;
  int64_t window_left, window_right;
  const float *mask; /* additive, optional */
  int64_t ms[4];
  const uint8_t *bool_mask; /* nonzero = attend, optional */
  int64_t bs[4];
  const int64_t *kv_lens;     /* [B], optional */
  const float *alibi_slopes;  /* [Hq], optional */
  const float *sinks;         /* [Hq], optional */
  const int64_t *q_offsets;   /* [B], optional: i' = q_offsets[b] + i (bottom_right
                                 then unused) */
} ref_sdpa_args;

/* Row i of query head h in batch b.
 *   out[Dv]  the output row (zeros when nothing is visible)
 *   mag[Dv]  sum_j w_j |v_j| per column: the size of the terms the output
 *            sums, which error norms divide by (optional)
 *   lse      log of the denominator, sink included; -inf when empty (optional)
 *   w[Lk]    weights, 0 where masked (optional)
 *   size     the largest |logit| over the visible keys (0 if none), the
 *            scale of float32 rounding in the weights (optional)
 * A visible NaN or +inf logit makes the row NaN (out, lse, visible weights).
 * Returns the number of visible keys. */
int64_t ref_sdpa_row(const ref_sdpa_args *a, int64_t b, int64_t h, int64_t i, double *out,
                     double *mag, double *lse, double *w, double *size);

/* Every row: out and mag [B, Hq, Lq, Dv], lse [B, Hq, Lq], w [B, Hq, Lq, Lk],
 * contiguous; mag, lse and w may be NULL. */
void ref_sdpa(const ref_sdpa_args *a, double *out, double *mag, double *lse, double *w);

#endif
