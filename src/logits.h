/* The logit pipeline shared by softmax and SDPA, one row at a time:
 *
 *   z = cap(scale * x) + alibi + mask, then boolean masks
 *
 * with one definition of what hides a logit: an additive mask value of -inf
 * or a boolean mask value of 0 makes z = -inf whatever x holds (NaN and
 * +inf included), so a hidden entry never reaches the softmax. Visible
 * entries keep IEEE arithmetic (a NaN logit makes its row NaN). The scale is
 * applied by the caller (BLAS alpha in SDPA, the row kernels in softmax);
 * these helpers apply the rest in place on z[0..n). The softmax's block
 * kernel (simd/rows_body.h, z_vec) applies the same masks and hiding in
 * vector form; tests/test_exp.c holds it to these rules bit for bit. */
#ifndef ATTN_LOGITS_H
#define ATTN_LOGITS_H

#include <stdint.h>

/* z = cap * tanh(z / cap); cap > 0. */
void attn__logits_cap(float *z, int64_t n, float cap);
/* z[j] += slope * (dist0 + j): ALiBi, dist0 the first column's key
 * position minus the query's. */
void attn__logits_alibi(float *z, int64_t n, float slope, int64_t dist0);
/* The masks of one row: z[j] += m[j * ms], then attn__logits_hide. Either
 * mask may be NULL; a stride of 0 broadcasts one value over the row. */
void attn__logits_mask(float *z, int64_t n, const float *m, int64_t ms, const uint8_t *b,
                       int64_t bs);
/* What hides an entry, for a row whose additive mask is already added (by
 * attn__logits_mask, or fused into the scaling by a row kernel): z[j] =
 * -inf where m[j * ms] == -inf or b[j * bs] == 0. */
void attn__logits_hide(float *z, int64_t n, const float *m, int64_t ms, const uint8_t *b,
                       int64_t bs);

#endif
