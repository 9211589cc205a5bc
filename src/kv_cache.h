/* The KV cache's internal interface: storage (kv_cache.c, kv_edit.c) and
 * attention (kv_attend.c), for layers that own their buffers (mha_decoder.c), for the
 * context's teardown, and between those files. */
#ifndef ATTN_KV_CACHE_H
#define ATTN_KV_CACHE_H

#include "internal.h"
#include "sdpa.h"

/* Free every cache of a dying context. */
void attn__kv_destroy_all(attn_ctx *ctx);
/* cache is a live cache of ctx. */
attn_status attn__kv_check(attn_ctx *ctx, const attn_kv_cache *c);
/* Its shape and current lengths. */
void attn__kv_shape(const attn_kv_cache *c, int64_t *B, int64_t *H, int64_t *D, int64_t *Dv,
                    const int64_t **lens);
/* The cache's keys, values, lengths and (paged) block table as SDPA reads
 * them; valid until the cache next changes. */
void attn__kv_view(const attn_kv_cache *c, attn_kv_view *view);
/* True if t's bytes intersect the cache's keys or values. */
bool attn__kv_overlaps(const attn_kv_cache *c, const attn_tensor *t);
/* The cache's keys (i = 0) or values (i = 1): their first byte and extent. */
void attn__kv_memory(const attn_kv_cache *c, int i, const void **p, size_t *bytes);
/* Append rows 0..n_new[b]-1 (L when n_new is NULL) of kn / vn, strides of
 * [B, H, L, D]; every count is checked (range, capacity, pool) before
 * anything changes. */
attn_status attn__kv_append_rows(attn_ctx *ctx, attn_kv_cache *c, const float *kn,
                                 const int64_t *kns, const float *vn, const int64_t *vns,
                                 const int64_t *n_new, int64_t L);
/* For a layer that writes new rows in place (its projection's output):
 * with unpaged F32 storage, true, and key row j of sequence b, head h is at
 * *k + b * ks[0] + h * ks[1] + j * ks[2] (values likewise); else false.
 * Rows past a sequence's length become its own through
 * attn__kv_commit_rows, whose counts the caller checks first. */
bool attn__kv_rows(attn_kv_cache *c, float **k, int64_t *ks, float **v, int64_t *vs);
/* The counts of attn__kv_append_rows checked (nothing changes). */
attn_status attn__kv_check_rows(attn_ctx *ctx, attn_kv_cache *c, const int64_t *n_new,
                                int64_t L);
/* The next n_new[b] (L when n_new is NULL) rows of every sequence, written
 * in place (attn__kv_rows) and checked (attn__kv_check_rows), appended. */
void attn__kv_commit_rows(attn_kv_cache *c, const int64_t *n_new, int64_t L);
/* Shorten sequence b to len (<= its length): the rollback of a failed layer. */
void attn__kv_truncate_to(attn_kv_cache *c, int64_t b, int64_t len);
/* The workspace attn__kv_attend_rows will take once the cache's lengths are
 * `lens` (checking prm as it does). */
attn_status attn__kv_attend_ws(attn_ctx *ctx, const attn_kv_cache *c, const int64_t *lens,
                               const int64_t *qs, int64_t Hq, int64_t Lq, const int64_t *os,
                               const int64_t *n_new, const attn_sdpa_params *prm,
                               size_t *ws_bytes);
/* attn_kv_attend on raw strided q [B, Hq, Lq, D] and out [B, Hq, Lq, Dv]
 * (strides qs, os); the counts are checked here. */
attn_status attn__kv_attend_rows(attn_ctx *ctx, const attn_kv_cache *c, const float *q,
                                 const int64_t *qs, int64_t Hq, int64_t Lq, float *out,
                                 const int64_t *os, const int64_t *n_new,
                                 const attn_sdpa_params *prm);

#endif
