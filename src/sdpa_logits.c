/* The logits output of attn_sdpa (ONNX Attention's qk_matmul_output): a pass
 * of its own, because the attention itself never forms the logits of keys
 * it hides (whole tiles are skipped) nor keeps any row past its tile. Only
 * a caller who asks for the [B, Hq, Lq, Lk] tensor pays for it.
 *
 * A work item is one (batch, query head, block of query rows): the scaled
 * products go to BLAS straight into the output rows when the strides allow
 * (row-major, leading dimensions within int), else are formed row by row;
 * then the stages are applied in the kernel's order, with the kernel's own
 * helpers: the soft-cap, ALiBi and the masks (logits.h), and -inf outside
 * the visible keys (attn__sdpa_visible_keys). */
#include "convert.h"
#include "logits.h"
#include "sdpa.h"
#include "simd/half.h"

#include <math.h>

#define LOGIT_ROWS 64

static bool blas_rows(int64_t stride, int64_t n, int64_t cols) {
  return n == 1 || (stride >= cols && stride <= INT32_MAX);
}

static void logits_item(void *arg, int64_t item, int32_t worker) {
  (void)worker;
  const attn_sdpa_problem *p = arg;
  int64_t n_blocks = (p->Lq + LOGIT_ROWS - 1) / LOGIT_ROWS;
  int64_t blk = item % n_blocks, bh = item / n_blocks;
  int64_t b = bh / p->Hq, h = bh % p->Hq, g = h / p->G;
  int64_t i0 = blk * LOGIT_ROWS, rows = p->Lq - i0 < LOGIT_ROWS ? p->Lq - i0 : LOGIT_ROWS;
  const void *q = attn__elem(p->q, p->qdt, b * p->qs[0] + h * p->qs[1] + i0 * p->qs[2]);
  const void *k = attn__elem(p->k, p->kdt, b * p->ks[0] + g * p->ks[1]);
  float *out = p->logits + b * p->lgs[0] + h * p->lgs[1] + i0 * p->lgs[2];
  if (p->qdt == ATTN_DTYPE_F32 && p->kdt == ATTN_DTYPE_F32 && blas_rows(p->qs[2], rows, p->D) &&
      blas_rows(p->ks[2], p->Lk, p->D) && blas_rows(p->lgs[2], rows, p->Lk)) {
    attn__sgemm_nt((int)rows, (int)p->Lk, (int)p->D, p->scale, q,
                   (int)(rows > 1 ? p->qs[2] : p->D), k, (int)(p->Lk > 1 ? p->ks[2] : p->D),
                   out, (int)(rows > 1 ? p->lgs[2] : p->Lk));
  } else {
    /* Other strides, or half q / k (widened exactly, one element at a time:
     * this output is for inspection and conformance, not the fast path). */
    for (int64_t r = 0; r < rows; r++)
      for (int64_t j = 0; j < p->Lk; j++) {
        float acc = 0;
        for (int64_t d = 0; d < p->D; d++)
          acc += attn__elem_value(q, p->qdt, r * p->qs[2] + d) *
                 attn__elem_value(k, p->kdt, j * p->ks[2] + d);
        out[r * p->lgs[2] + j] = p->scale * acc;
      }
  }
  if (p->logits_stage == ATTN_LOGITS_SCALED)
    return;
  for (int64_t r = 0; r < rows; r++) {
    float *z = out + r * p->lgs[2];
    int64_t i = i0 + r;
    if (p->softcap > 0)
      attn__logits_cap(z, p->Lk, p->softcap);
    if (p->logits_stage == ATTN_LOGITS_SOFTCAPPED)
      continue;
    if (p->alibi)
      attn__logits_alibi(z, p->Lk, p->alibi[h], -attn__sdpa_key_position(p, b, i));
    const float *m = p->mask ? p->mask + b * p->ms[0] + h * p->ms[1] + i * p->ms[2] : NULL;
    const uint8_t *bm = p->bmask ? p->bmask + b * p->bs[0] + h * p->bs[1] + i * p->bs[2] : NULL;
    attn__logits_mask(z, p->Lk, m, p->ms[3], bm, p->bs[3]);
    int64_t lo, hi;
    attn__sdpa_visible_keys(p, b, i, &lo, &hi);
    for (int64_t j = 0; j < p->Lk; j++)
      if (j < lo || j >= hi)
        z[j] = -INFINITY;
  }
}

void attn__sdpa_logits(attn_ctx *ctx, const attn_sdpa_problem *p) {
  int64_t items = p->B * p->Hq * ((p->Lq + LOGIT_ROWS - 1) / LOGIT_ROWS);
  double work = (double)p->B * (double)p->Hq * (double)p->Lq * (double)p->Lk * (double)p->D;
  int32_t threads = attn__threads_plan(ctx, work, 1 << 20, items);
  /* A multi-threaded BLAS would queue our workers' calls (sdpa_plan.c). */
  if (attn__blas_threads() > 1)
    threads = 1;
  attn__parallel_for(ctx, threads, items, logits_item, (void *)p);
}
