/* KV cache storage, contiguous or paged: the handles (create, wrap, free,
 * info) and the view attention reads (kv_attend.c, through sdpa.c). What
 * happens to the contents (append, truncate, reset, copy, read back) is
 * kv_edit.c's; the handle's fields are in kv_store.h.
 *
 * Keys and values are stored as F32, F16 or BF16 (one dtype per cache):
 * rows are converted as they come in and go out (attn__convert_row, one
 * rounding), and attention reads the half rows in place, a tile at a time. */
#include "kv_store.h"
#include "check.h"

#include <string.h>
#if defined(__has_include)
#if __has_include(<valgrind/memcheck.h>)
#include <valgrind/memcheck.h>
#define ATTN_HAVE_MEMCHECK 1
#endif
#endif


#define DEFAULT_BLOCK_SIZE 16

/* ---- handles ---- */

/* Search the context's list rather than trust the pointer: a freed or
 * foreign handle is never dereferenced. */
attn_status attn__kv_check(attn_ctx *ctx, const attn_kv_cache *c) {
  if (!c)
    return attn__fail(ctx, ATTN_ERR_NULL_ARG, "cache is NULL");
  const attn_kv_cache *it = ctx->caches;
  while (it && it != c)
    it = it->next;
  if (!it)
    return attn__fail(ctx, ATTN_ERR_BAD_HANDLE,
                      "cache %p is not a live cache of this context (freed, or created "
                      "from another context)", (const void *)c);
  return ATTN_OK;
}

static void release(attn_ctx *ctx, attn_kv_cache *c) {
  c->magic = ATTN_DEAD_MAGIC;
  attn__free(ctx, c->data_block);
  attn__free(ctx, c->lens);
  attn__free(ctx, c->table);
  attn__free(ctx, c->refs);
  attn__free(ctx, c->free_stack);
  attn__free(ctx, c);
}

void attn__kv_destroy_all(attn_ctx *ctx) {
  attn_kv_cache *c = ctx->caches;
  while (c) {
    attn_kv_cache *next = c->next;
    release(ctx, c);
    c = next;
  }
  ctx->caches = NULL;
}

static attn_status kv_cache_free_impl(attn_ctx *ctx, attn_kv_cache *cache) {
  attn_status st;
  if (!cache)
    return ATTN_OK;
  if ((st = attn__kv_check(ctx, cache)) != ATTN_OK)
    return st;
  if (cache->prev)
    cache->prev->next = cache->next;
  else
    ctx->caches = cache->next;
  if (cache->next)
    cache->next->prev = cache->prev;
  release(ctx, cache);
  return ATTN_OK;
}

/* A zeroed handle with its lengths array, not yet linked into ctx. */
static attn_kv_cache *new_handle(attn_ctx *ctx, int64_t B) {
  attn_kv_cache *c = attn__alloc(ctx, sizeof *c);
  if (!c)
    return NULL;
  memset(c, 0, sizeof *c);
  c->magic = ATTN_KV_MAGIC;
  c->ctx = ctx;
  c->lens = attn__alloc(ctx, (size_t)B * sizeof *c->lens);
  if (!c->lens) {
    release(ctx, c);
    return NULL;
  }
  memset(c->lens, 0, (size_t)B * sizeof *c->lens);
  return c;
}

static void link_cache(attn_ctx *ctx, attn_kv_cache *c) {
  c->next = ctx->caches;
  if (ctx->caches)
    ctx->caches->prev = c;
  ctx->caches = c;
}

void attn_kv_cache_params_init(attn_kv_cache_params *p) {
  if (!p)
    return;
  memset(p, 0, sizeof *p);
  p->struct_size = sizeof *p;
}

/* n = a * b * c * d without overflow, as bytes of esz-byte elements. */
static bool product(int64_t a, int64_t b, int64_t c, int64_t d, size_t esz, size_t *bytes) {
  uint64_t n;
  return !__builtin_mul_overflow((uint64_t)a, (uint64_t)b, &n) &&
         !__builtin_mul_overflow(n, (uint64_t)c, &n) &&
         !__builtin_mul_overflow(n, (uint64_t)d, &n) &&
         !__builtin_mul_overflow(n, (uint64_t)esz, &n) &&
         n <= (uint64_t)PTRDIFF_MAX / 2 && !__builtin_add_overflow(n, 0, bytes);
}

static attn_status kv_cache_create_impl(attn_ctx *ctx, const attn_kv_cache_params *params,
                                 attn_kv_cache **out) {
  attn_status st;
  if (!params || !out)
    return attn__fail(ctx, ATTN_ERR_NULL_ARG, "%s is NULL", params ? "out" : "params");
  attn_kv_cache_params p;
  attn_kv_cache_params_init(&p);
  if ((st = attn__read_params(ctx, &p, sizeof p, params)) != ATTN_OK)
    return st;
  if (p.layout != ATTN_KV_CONTIGUOUS && p.layout != ATTN_KV_PAGED)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "params.layout = %d is not an attn_kv_layout (0 = contiguous, 1 = "
                      "paged)", (int)p.layout);
  if (p.dtype != ATTN_DTYPE_F32 && p.dtype != ATTN_DTYPE_F16 && p.dtype != ATTN_DTYPE_BF16)
    return attn__fail(ctx, ATTN_ERR_UNSUPPORTED,
                      "params.dtype = %d but a cache holds F32 (0), F16 (2) or BF16 (3)",
                      (int)p.dtype);
  size_t esz = attn__dtype_size(p.dtype);
  bool pg = p.layout == ATTN_KV_PAGED;
  if (p.value_dim == 0)
    p.value_dim = p.head_dim;
  if (pg && p.block_size == 0)
    p.block_size = DEFAULT_BLOCK_SIZE;
  const char *names[5] = {"batch", "kv_heads", "head_dim", "value_dim",
                          pg ? "num_blocks" : "capacity"};
  const int64_t vals[5] = {p.batch, p.kv_heads, p.head_dim, p.value_dim,
                           pg ? p.num_blocks : p.capacity};
  for (int i = 0; i < 5; i++)
    if (vals[i] < 1)
      return attn__fail(ctx, ATTN_ERR_INVALID_ARG, "params.%s = %lld but must be >= 1", names[i], (long long)vals[i]);
  if (pg && (p.block_size < 1 || p.num_blocks > INT32_MAX))
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "params.block_size = %lld must be >= 1 and num_blocks = %lld at "
                      "most 2^31 - 1", (long long)p.block_size, (long long)p.num_blocks);
  int64_t outer = pg ? p.num_blocks : p.batch, rows = pg ? p.block_size : p.capacity;
  size_t kb, vb, tb = 0, all;
  int64_t pool_tokens = 0;
  if (!product(outer, p.kv_heads, rows, p.head_dim, esz, &kb) ||
      !product(outer, p.kv_heads, rows, p.value_dim, esz, &vb) ||
      (pg && __builtin_mul_overflow(p.num_blocks, p.block_size, &pool_tokens)) ||
      __builtin_add_overflow(kb, vb, &all) || all > (size_t)PTRDIFF_MAX - 2 * ATTN_ALIGN)
    return attn__fail(ctx, ATTN_ERR_OVERFLOW, "the cache's size overflows");
  if (pg) {
    if (p.capacity == 0)
      p.capacity = pool_tokens;
    if (p.capacity < 0 || p.capacity > pool_tokens)
      return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                        "params.capacity = %lld but must be in 0..num_blocks * "
                        "block_size = %lld (0 = the whole pool)", (long long)p.capacity, (long long)pool_tokens);
    if (!product(p.batch, ceil_div(p.capacity, p.block_size), 1, 1, sizeof(int32_t), &tb))
      return attn__fail(ctx, ATTN_ERR_OVERFLOW, "the block tables' size overflows");
  }
  if (p.capacity > INT32_MAX)
    return attn__fail(ctx, ATTN_ERR_OVERFLOW,
                      "params.capacity = %lld exceeds what BLAS takes (2^31 - 1)", (long long)p.capacity);

  attn_kv_cache *c = new_handle(ctx, p.batch);
  if (!c)
    goto oom;
  c->layout = p.layout;
  c->dt = p.dtype, c->esz = esz;
  c->B = p.batch, c->H = p.kv_heads, c->D = p.head_dim, c->Dv = p.value_dim;
  c->cap = p.capacity;
  c->data_block = attn__alloc_large(ctx, all + 2 * ATTN_ALIGN);
  if (!c->data_block)
    goto oom;
  /* Both arrays start on a cache line. */
  uintptr_t base = ((uintptr_t)c->data_block + ATTN_ALIGN - 1) & ~(uintptr_t)(ATTN_ALIGN - 1);
  c->k = (char *)base;
  c->v = (char *)((base + kb + ATTN_ALIGN - 1) & ~(uintptr_t)(ATTN_ALIGN - 1));
  c->k_bytes = kb, c->v_bytes = vb;
  /* Written once now, in address order: the pages are then mapped in the
   * order attention reads them. Appends write the heads' K and V rows token
   * by token, and the pages they would first touch are handed out in that
   * interleaved order: reading one head's keys then jumps between scattered
   * physical pages (Lk = 32768, 8 heads, D = 128, bf16, 1 thread: 16.3 ms
   * a decode step against 12.5 over the same rows in pages touched in
   * order). It also keeps page faults out of the decode steps. */
  memset(c->data_block, 0, all + 2 * ATTN_ALIGN);
#ifdef ATTN_HAVE_MEMCHECK
  VALGRIND_MAKE_MEM_UNDEFINED(c->data_block, all + 2 * ATTN_ALIGN); /* rows before append */
#endif
  c->ks[2] = c->D, c->ks[1] = rows * c->D, c->ks[0] = c->H * c->ks[1];
  c->vs[2] = c->Dv, c->vs[1] = rows * c->Dv, c->vs[0] = c->H * c->vs[1];
  if (pg) {
    c->bs = p.block_size, c->n_blocks = p.num_blocks;
    c->max_blocks = ceil_div(c->cap, c->bs);
    c->table = attn__alloc(ctx, tb);
    c->refs = attn__alloc(ctx, (size_t)c->n_blocks * sizeof(int32_t));
    c->free_stack = attn__alloc(ctx, (size_t)c->n_blocks * sizeof(int32_t));
    if (!c->table || !c->refs || !c->free_stack)
      goto oom;
    memset(c->refs, 0, (size_t)c->n_blocks * sizeof(int32_t));
    /* Popped from the top: block 0 first, so fresh caches fill in order. */
    for (int64_t i = 0; i < c->n_blocks; i++)
      c->free_stack[i] = (int32_t)(c->n_blocks - 1 - i);
    c->n_free = c->n_blocks;
  }
  link_cache(ctx, c);
  *out = c;
  return ATTN_OK;
oom:
  if (c)
    release(ctx, c);
  return attn__fail(ctx, ATTN_ERR_NO_MEMORY, "cannot allocate the cache");
}

static attn_status kv_cache_wrap_impl(attn_ctx *ctx, const attn_tensor *k, const attn_tensor *v,
                               const int64_t *lens, attn_kv_cache **out) {
  attn_status st;
  if (!out)
    return attn__fail(ctx, ATTN_ERR_NULL_ARG, "out is NULL");
  if ((st = attn__check_tensor(ctx, "k", k, 4, ATTN_DT_FLOAT)) ||
      (st = attn__check_tensor(ctx, "v", v, 4, ATTN_DT_FLOAT)))
    return st;
  if (k->dtype != v->dtype)
    return attn__fail(ctx, ATTN_ERR_UNSUPPORTED,
                      "k has dtype %s but v has %s (a cache holds one dtype)",
                      attn__dtype_name(k->dtype), attn__dtype_name(v->dtype));
  for (int a = 0; a < 3; a++)
    if (v->dims[a] != k->dims[a])
      return attn__fail(ctx, ATTN_ERR_SHAPE,
                        "v.shape[%d] = %lld but k.shape[%d] = %lld (B, Hkv and capacity "
                        "must match)", a, (long long)v->dims[a], a, (long long)k->dims[a]);
  /* As attn_kv_cache_create: a head of no element would still be walked
   * per token (2^62 heads of D = 0), at the empty tensors' unchecked strides. */
  if (k->dims[1] < 1 || k->dims[3] < 1 || v->dims[3] < 1)
    return attn__fail(ctx, ATTN_ERR_SHAPE,
                      "k has shape [%lld, %lld, %lld, %lld] and v Dv = %lld but Hkv, D and "
                      "Dv must be >= 1", (long long)k->dims[0], (long long)k->dims[1],
                      (long long)k->dims[2], (long long)k->dims[3], (long long)v->dims[3]);
  if ((st = attn__check_writable(ctx, "k", k)) ||
      (st = attn__check_writable(ctx, "v", v)))
    return st;
  if (attn__overlap(k, v))
    return attn__fail(ctx, ATTN_ERR_ALIASING, "k and v overlap in memory");
  int64_t B = k->dims[0], cap = k->dims[2];
  size_t lens_bytes; /* an empty k (capacity 0) may claim 2^62 sequences */
  if (__builtin_mul_overflow((size_t)B, sizeof(int64_t), &lens_bytes))
    return attn__fail(ctx, ATTN_ERR_OVERFLOW,
                      "B = %lld sequences: their lengths (an int64 each) do not fit in memory",
                      (long long)B);
  if (cap > INT32_MAX || k->dims[3] > INT32_MAX || v->dims[3] > INT32_MAX)
    return attn__fail(ctx, ATTN_ERR_OVERFLOW,
                      "capacity or a head dim exceeds what BLAS takes (2^31 - 1)");
  if (lens)
    for (int64_t b = 0; b < B; b++)
      if (lens[b] < 0 || lens[b] > cap)
        return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                          "lens[%lld] = %lld but must be in 0..capacity = %lld", (long long)b, (long long)lens[b], (long long)cap);
  attn_kv_cache *c = new_handle(ctx, B);
  if (!c)
    return attn__fail(ctx, ATTN_ERR_NO_MEMORY, "cannot allocate the handle");
  c->layout = ATTN_KV_CONTIGUOUS;
  c->dt = k->dtype, c->esz = attn__dtype_size(k->dtype);
  c->B = B, c->H = k->dims[1], c->cap = cap, c->D = k->dims[3], c->Dv = v->dims[3];
  c->k = k->data, c->v = v->data;
  c->k_bytes = k->extent_bytes, c->v_bytes = v->extent_bytes;
  memcpy(c->ks, k->strides, sizeof c->ks);
  memcpy(c->vs, v->strides, sizeof c->vs);
  if (lens)
    memcpy(c->lens, lens, (size_t)B * sizeof *lens);
  link_cache(ctx, c);
  *out = c;
  return ATTN_OK;
}

static attn_status kv_cache_info_get_impl(attn_ctx *ctx, const attn_kv_cache *cache,
                                   attn_kv_cache_info *info, int64_t *lens) {
  attn_status st;
  if ((st = attn__kv_check(ctx, cache)) != ATTN_OK)
    return st;
  if (!info)
    return attn__fail(ctx, ATTN_ERR_NULL_ARG, "info is NULL");
  if (info->struct_size < sizeof(size_t))
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "info->struct_size = %zu; set it to sizeof(attn_kv_cache_info)", info->struct_size);
  attn_kv_cache_info all;
  memset(&all, 0, sizeof all);
  all.struct_size = info->struct_size;
  all.layout = cache->layout;
  all.dtype = cache->dt;
  all.batch = cache->B, all.kv_heads = cache->H, all.head_dim = cache->D;
  all.value_dim = cache->Dv, all.capacity = cache->cap;
  all.block_size = cache->bs, all.num_blocks = cache->n_blocks, all.free_blocks = cache->n_free;
  memcpy(info, &all, info->struct_size < sizeof all ? info->struct_size : sizeof all);
  if (lens)
    memcpy(lens, cache->lens, (size_t)cache->B * sizeof *lens);
  return ATTN_OK;
}

/* ---- the view SDPA reads (kv_attend.c) ---- */

void attn__kv_view(const attn_kv_cache *c, attn_kv_view *view) {
  *view = (attn_kv_view){.B = c->B, .Hkv = c->H, .D = c->D, .Dv = c->Dv, .dt = c->dt,
                         .k = c->k, .v = c->v, .lens = c->lens};
  memcpy(view->ks, c->ks, sizeof view->ks);
  memcpy(view->vs, c->vs, sizeof view->vs);
  if (paged(c)) {
    view->blocks = c->table;
    view->blocks_stride = c->max_blocks;
    view->block_size = c->bs;
  }
}

void attn__kv_memory(const attn_kv_cache *c, int i, const void **p, size_t *bytes) {
  *p = i ? c->v : c->k;
  *bytes = i ? c->v_bytes : c->k_bytes;
}

void attn__kv_shape(const attn_kv_cache *c, int64_t *B, int64_t *H, int64_t *D, int64_t *Dv,
                    const int64_t **lens) {
  *B = c->B, *H = c->H, *D = c->D, *Dv = c->Dv, *lens = c->lens;
}

/* ---- public entry points: the prologue, then the work above ---- */

attn_status attn_kv_cache_free(attn_ctx *ctx, attn_kv_cache *cache) {
  attn_status st = attn__op_begin(ctx, "attn_kv_cache_free");
  if (st != ATTN_OK)
    return st;
  return attn__op_end(ctx, kv_cache_free_impl(ctx, cache));
}

attn_status attn_kv_cache_create(attn_ctx *ctx, const attn_kv_cache_params *params,
                                 attn_kv_cache **out) {
  attn_status st = attn__op_begin(ctx, "attn_kv_cache_create");
  if (st != ATTN_OK)
    return st;
  return attn__op_end(ctx, kv_cache_create_impl(ctx, params, out));
}

attn_status attn_kv_cache_wrap(attn_ctx *ctx, const attn_tensor *k, const attn_tensor *v,
                               const int64_t *lens, attn_kv_cache **out) {
  attn_status st = attn__op_begin(ctx, "attn_kv_cache_wrap");
  if (st != ATTN_OK)
    return st;
  return attn__op_end(ctx, kv_cache_wrap_impl(ctx, k, v, lens, out));
}

attn_status attn_kv_cache_info_get(attn_ctx *ctx, const attn_kv_cache *cache,
                                   attn_kv_cache_info *info, int64_t *lens) {
  attn_status st = attn__op_begin(ctx, "attn_kv_cache_info_get");
  if (st != ATTN_OK)
    return st;
  return attn__op_end(ctx, kv_cache_info_get_impl(ctx, cache, info, lens));
}
