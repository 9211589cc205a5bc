/* Float64 reference for pooling over the sequence axis and for rotary
 * embedding from cos/sin tables; plain loops, no code shared with src/. */
#ifndef ATTN_REF_POOL_H
#define ATTN_REF_POOL_H
#include <stdint.h>

enum { REF_POOL_SUM = 0, REF_POOL_MEAN = 1, REF_POOL_MAX = 2, REF_POOL_WEIGHTED = 3 };

/* x contiguous [B, H, L, D]; keep [B, H, L] (1 = keep, already combined with
 * lengths); scores [B, H, L] (weighted only). out [B, H, D]. A sequence with
 * nothing kept gives zeros; weighted with all kept scores -inf gives zeros;
 * a NaN or +inf kept score gives NaN. */
void ref_pool(int mode, int64_t B, int64_t H, int64_t L, int64_t D, const double *x,
              const uint8_t *keep, const double *scores, double *out);

/* Gradients of ref_pool for the same arguments, given dout [B, H, D]: dx
 * [B, H, L, D] and, weighted only, dscores [B, H, L] (per position, before
 * any broadcast reduction; may be NULL). From the chain rule:
 *   sum: dx_l = dout; mean: dout / count;
 *   max: per feature, dout goes to the first kept NaN, else to the first
 *        kept token equal to the maximum (the first kept one when all are
 *        -inf); 0 elsewhere;
 *   weighted: dx_l = w_l dout, dscores_l = w_l (dout . x_l - dout . out);
 *        a token of weight 0 gets 0 in both and is left out of out (so a
 *        NaN in its x reaches nothing).
 * Dropped tokens and sequences whose output is zeros get 0; a weighted NaN
 * sequence gets NaN at its kept tokens. */
void ref_pool_backward(int mode, int64_t B, int64_t H, int64_t L, int64_t D, const double *x,
                       const uint8_t *keep, const double *scores, const double *dout,
                       double *dx, double *dscores);

/* ONNX RotaryEmbedding on contiguous x [B, H, L, D] in place: cosr/sinr give
 * the table row of token (b, l) as cos[(b*L + l) * half + i]. */
void ref_rope_tables(int interleaved, int64_t B, int64_t H, int64_t L, int64_t D, int64_t half,
                     const double *cosr, const double *sinr, double *x);

#endif
