/* The KV cache handle's fields, shared by the cache's two files only:
 * kv_cache.c (handles, creation, the view attention reads) and kv_edit.c
 * (append, truncate, reset, copy, read back). Everything else goes
 * through kv_cache.h. */
#ifndef ATTN_KV_STORE_H
#define ATTN_KV_STORE_H

#include "kv_cache.h"


struct attn_kv_cache {
  uint32_t magic;
  int32_t layout;
  int32_t dt;                   /* dtype of keys and values */
  attn_ctx *ctx;
  attn_kv_cache *prev, *next;
  int64_t B, H, D, Dv, cap;
  int64_t *lens;                /* [B] */
  char *k, *v;                  /* contiguous: sequence 0; paged: block 0 */
  int64_t ks[3], vs[3];         /* element strides of (sequence or block, head, row) */
  size_t esz;                   /* bytes per element */
  void *data_block;             /* owned K and V memory, NULL when wrapped */
  size_t k_bytes, v_bytes;      /* extents from k and v (aliasing checks) */
  /* paged */
  int64_t bs, n_blocks, max_blocks;
  int32_t *table;               /* [B, max_blocks] */
  int32_t *refs;                /* [n_blocks] */
  int32_t *free_stack;          /* [n_blocks], n_free used from the bottom */
  int64_t n_free;
};

static inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

static inline bool paged(const attn_kv_cache *c) { return c->layout == ATTN_KV_PAGED; }

#endif
