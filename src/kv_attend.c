/* Attention of new queries against a KV cache (attn_kv_attend and the
 * layers' attn__kv_attend_rows): the operands are checked here, the cache
 * is handed to sdpa.c as an attn_kv_view (kv_cache.c builds it), and SDPA
 * reads its keys and values in place, half rows a tile at a time. */
#include "check.h"
#include "kv_cache.h"
#include "sdpa.h"

/* The attention of q (dtype qdt, strides qs) over the cache's view into out. */
static attn_status attend_rows(attn_ctx *ctx, const attn_kv_view *view, const void *q,
                               int32_t qdt, const int64_t *qs, int64_t Hq, int64_t Lq, void *out,
                               int32_t odt, const int64_t *os, const int64_t *n_new,
                               const attn_sdpa_params *prm) {
  for (int64_t b = 0; b < view->B; b++) {
    int64_t n = n_new ? n_new[b] : Lq;
    if (n < 0 || n > Lq || n > view->lens[b])
      return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                        "%s%lld] = %lld but must be in 0..min(Lq = %lld, the sequence's "
                        "length %lld)", n_new ? "n_new[" : "Lq (n_new NULL) for sequence [", (long long)b,
                        (long long)n, (long long)Lq, (long long)view->lens[b]);
  }
  return attn__sdpa_kv(ctx, q, qdt, qs, Hq, Lq, out, odt, os, view, n_new, prm);
}

static attn_status kv_attend_impl(attn_ctx *ctx, const attn_kv_cache *cache, const attn_tensor *q,
                           attn_tensor *out, const int64_t *n_new,
                           const attn_sdpa_params *params) {
  attn_status st;
  if ((st = attn__kv_check(ctx, cache)) != ATTN_OK)
    return st;
  attn_sdpa_params prm;
  attn_sdpa_params_init(&prm);
  const attn_kv_cache *c = cache;
  if ((st = attn__read_params(ctx, &prm, sizeof prm, params)) ||
      (st = attn__check_tensor(ctx, "q", q, 4, ATTN_DT_FLOAT)) ||
      (st = attn__check_tensor(ctx, "out", out, 4, ATTN_DT_FLOAT)))
    return st;
  attn_kv_view view;
  attn__kv_view(c, &view);
  const int64_t B = view.B, H = view.Hkv, D = view.D, Dv = view.Dv;
  int64_t Hq = q->dims[1], Lq = q->dims[2];
  if (q->dims[0] != B || q->dims[3] != D || Hq % H)
    return attn__fail(ctx, ATTN_ERR_SHAPE,
                      "q has shape [%lld, %lld, %lld, %lld] but the cache needs [B = %lld, "
                      "a multiple of Hkv = %lld, Lq, D = %lld]", (long long)q->dims[0], (long long)Hq, (long long)Lq,
                      (long long)q->dims[3], (long long)B, (long long)H, (long long)D);
  const int64_t want[4] = {B, Hq, Lq, Dv};
  for (int a = 0; a < 4; a++)
    if (out->dims[a] != want[a])
      return attn__fail(ctx, ATTN_ERR_SHAPE,
                        "out.shape[%d] = %lld but must be %lld ([B, Hq, Lq, Dv])", a,
                        (long long)out->dims[a], (long long)want[a]);
  if ((st = attn__check_writable(ctx, "out", out)))
    return st;
  if (attn__overlap(out, q) || attn__kv_overlaps(c, out))
    return attn__fail(ctx, ATTN_ERR_ALIASING, "out overlaps %s in memory", attn__overlap(out, q) ? "q" : "the cache");
  if (prm.lse) {
    if ((st = attn__check_tensor(ctx, "params.lse", prm.lse, 3, ATTN_DT_F32)))
      return st;
    if (attn__overlap(prm.lse, q) || attn__overlap(prm.lse, out) || attn__kv_overlaps(c, prm.lse))
      return attn__fail(ctx, ATTN_ERR_ALIASING,
                        "params.lse overlaps q, out or the cache in memory");
  }
  return attend_rows(ctx, &view, q->data, q->dtype, q->strides, Hq, Lq, out->data, out->dtype,
                     out->strides, n_new, &prm);
}

attn_status attn__kv_attend_rows(attn_ctx *ctx, const attn_kv_cache *c,
                                 const float *q, const int64_t *qs, int64_t Hq, int64_t Lq,
                                 float *out, const int64_t *os, const int64_t *n_new,
                                 const attn_sdpa_params *prm) {
  attn_kv_view view;
  attn__kv_view(c, &view);
  return attend_rows(ctx, &view, q, ATTN_DTYPE_F32, qs, Hq, Lq, out, ATTN_DTYPE_F32, os, n_new,
                     prm);
}

attn_status attn__kv_attend_ws(attn_ctx *ctx, const attn_kv_cache *c, const int64_t *lens,
                               const int64_t *qs, int64_t Hq, int64_t Lq, const int64_t *os,
                               const int64_t *n_new, const attn_sdpa_params *prm,
                               size_t *ws_bytes) {
  attn_kv_view view;
  attn__kv_view(c, &view);
  view.lens = lens;
  return attn__sdpa_kv_ws(ctx, qs, Hq, Lq, os, &view, n_new, prm, ws_bytes);
}

attn_status attn_kv_attend(attn_ctx *ctx, const attn_kv_cache *cache, const attn_tensor *q,
                           attn_tensor *out, const int64_t *n_new,
                           const attn_sdpa_params *params) {
  attn_status st = attn__op_begin(ctx, "attn_kv_attend");
  if (st != ATTN_OK)
    return st;
  return attn__op_end(ctx, kv_attend_impl(ctx, cache, q, out, n_new, params));
}
