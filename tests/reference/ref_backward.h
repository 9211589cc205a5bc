/* Float64 reference for the backward passes, written from the chain rule on
 * the forward definitions in attn.h; no code shared with src/. The forward
 * quantities (weights, log-sum-exp) come from ref_softmax / ref_sdpa, every
 * gradient is formed here in double from materialised weights. */
#ifndef ATTN_REF_BACKWARD_H
#define ATTN_REF_BACKWARD_H
#include <stdint.h>

#include "ref_sdpa.h"
#include "ref_softmax.h"

/* Gradient of ref_softmax (log-softmax when `log`) for the same arguments,
 * given dy (contiguous, x's shape): dz, the gradient of the logits
 * z = scale*x + mask (also the gradient of an additive mask, before any
 * broadcast reduction), and dx = scale * dz, both contiguous and optional.
 * With p the softmax of the row:
 *   softmax:     dz_j = p_j (dy_j - sum_k p_k dy_k)
 *   log-softmax: dz_j = dy_j - p_j sum_k dy_k
 * where the sums run over the visible entries only: a hidden entry (p = 0)
 * is a constant of the forward, so it gets dz = 0 and its dy is ignored
 * (whatever it holds, NaN included). A row with nothing visible gives zeros;
 * a NaN row gives NaN. */
void ref_softmax_backward(const ref_view *x, float scale, const ref_view *mask,
                          const ref_view *bool_mask, int log, const double *dy, double *dx,
                          double *dz);

/* Gradients of ref_sdpa for the problem `a`, given dout (contiguous [B, Hq,
 * Lq, Dv]). Outputs contiguous: dq [B, Hq, Lq, D], dk [B, Hkv, Lk, D] and
 * dv [B, Hkv, Lk, Dv] (summed over the query heads of each kv group),
 * optional dmask [B, Hq, Lq, Lk] (gradient of the logit, i.e. of an additive
 * mask before broadcast reduction; 0 where hidden) and optional dsinks [Hq]
 * (summed over batches and rows). With w the weights and lse of a row:
 *   dP_j = dout . v_j,  Dsum = sum_j w_j dP_j,  dS_j = w_j (dP_j - Dsum)
 *   x_j = scale q.k_j; dx_j = dS_j (1 - tanh^2(x_j / softcap)) with softcap
 *   dq += scale sum_j dx_j k_j, dk_j += scale dx_j q, dv_j += w_j dout
 *   dsink = -exp(sink - lse) Dsum
 * A key with weight 0 (hidden, or underflowed) contributes nothing: rows
 * that see no key give zero gradients, and a NaN in a hidden k or v never
 * leaks. */
void ref_sdpa_backward(const ref_sdpa_args *a, const double *dout, double *dq, double *dk,
                       double *dv, double *dmask, double *dsinks);

/* Rotary embedding's backward: the inverse rotation (angle -t) in place on
 * contiguous x [B, H, L, D], arguments as ref_rope. */
void ref_rope_backward(int interleaved, int64_t B, int64_t H, int64_t L, int64_t D, int64_t r,
                       double theta, const int64_t *pos, double *x);

#endif
