/* Context lifecycle, the op prologue (in-use flag, op name), the allocator,
 * the workspace arena, errors and version. */
#define _DEFAULT_SOURCE /* madvise, MADV_HUGEPAGE; posix_memalign */
#include "internal.h"
#include "kv_cache.h"
#include "mha.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#define ATTN_MAX_THREADS 1024

int32_t attn_version(void) { return ATTN_VERSION; }

const char *attn_version_string(void) { return ATTN_VERSION_STRING; }

/* One table, indexed by the pinned values; the assert keeps it complete. */
static const char *const status_names[] = {
    [ATTN_OK] = "ATTN_OK",
    [ATTN_ERR_NULL_ARG] = "ATTN_ERR_NULL_ARG",
    [ATTN_ERR_INVALID_ARG] = "ATTN_ERR_INVALID_ARG",
    [ATTN_ERR_SHAPE] = "ATTN_ERR_SHAPE",
    [ATTN_ERR_OVERFLOW] = "ATTN_ERR_OVERFLOW",
    [ATTN_ERR_NO_MEMORY] = "ATTN_ERR_NO_MEMORY",
    [ATTN_ERR_UNSUPPORTED] = "ATTN_ERR_UNSUPPORTED",
    [ATTN_ERR_BAD_HANDLE] = "ATTN_ERR_BAD_HANDLE",
    [ATTN_ERR_ALIASING] = "ATTN_ERR_ALIASING",
    [ATTN_ERR_BUSY] = "ATTN_ERR_BUSY",
};
_Static_assert(sizeof status_names / sizeof status_names[0] == ATTN_ERR_BUSY + 1,
               "every status has a name");

const char *attn_status_string(attn_status status) {
  if ((unsigned)status < sizeof status_names / sizeof status_names[0])
    return status_names[status];
  return "unknown status";
}

attn_status attn__fail(attn_ctx *ctx, attn_status status, const char *fmt, ...) {
  if (ctx) {
    int n = ctx->op ? snprintf(ctx->err, sizeof ctx->err, "%s: ", ctx->op) : 0;
    if (n < 0 || (size_t)n >= sizeof ctx->err)
      n = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx->err + n, sizeof ctx->err - (size_t)n, fmt, ap);
    va_end(ap);
  }
  return status;
}

attn_status attn__op_begin(attn_ctx *ctx, const char *op) {
  if (!ctx)
    return ATTN_ERR_NULL_ARG;
  if (ctx->magic != ATTN_CTX_MAGIC)
    return ATTN_ERR_BAD_HANDLE;
  /* Acquire pairs with the release in attn__op_end: the previous call's
   * writes to the context happen before this call's reads. */
  if (atomic_exchange_explicit(&ctx->busy, 1, memory_order_acquire))
    return ATTN_ERR_BUSY;
  ctx->op = op;
  return ATTN_OK;
}

attn_status attn__op_end(attn_ctx *ctx, attn_status st) {
  ctx->ws_used = 0;
  ctx->op = NULL;
  atomic_store_explicit(&ctx->busy, 0, memory_order_release);
  return st;
}

static void *default_alloc(void *user, size_t size) {
  (void)user;
  return malloc(size);
}

static void default_free(void *user, void *p) {
  (void)user;
  free(p);
}

void *attn__alloc(attn_ctx *ctx, size_t size) {
  return ctx->alloc(ctx->alloc_user, size ? size : 1);
}

/* With 4 KiB pages, a decode step over a 256 MiB cache walks 65536 page
 * table entries (and, in a VM, the host's as well); 2 MiB pages cut the TLB
 * misses 512-fold. Transparent huge pages are often in "madvise" mode, so
 * they must be asked for before the first touch. Only the default
 * allocator's memory is advised: a caller's allocator owns its policy.
 * (Lk = 32768, 8 heads, D = 128, 1 thread, reading K then V as a decode
 * step does: bf16 21.5 ms against 26.5 ms, f32 32.6 against 38.5.) */
#if defined(__linux__) && defined(MADV_HUGEPAGE)
#define ATTN_HUGE_PAGE ((size_t)2 << 20)
#endif

void *attn__alloc_large(attn_ctx *ctx, size_t size) {
#ifdef ATTN_HUGE_PAGE
  if (ctx->alloc == default_alloc && size >= ATTN_HUGE_PAGE) {
    void *p = NULL;
    if (posix_memalign(&p, ATTN_HUGE_PAGE, size))
      return NULL;
    (void)madvise(p, size, MADV_HUGEPAGE); /* advice: failing (old kernel, THP off) is harmless */
    return p; /* default_free frees it */
  }
#endif
  return attn__alloc(ctx, size);
}

void attn__free(attn_ctx *ctx, void *p) {
  if (p)
    ctx->free(ctx->alloc_user, p);
}

/* ---- workspace ---- */

size_t attn__ws_round(size_t bytes) {
  if (bytes > SIZE_MAX - (ATTN_ALIGN - 1))
    return SIZE_MAX; /* never fits: every caller then refuses it */
  return (bytes + ATTN_ALIGN - 1) & ~(size_t)(ATTN_ALIGN - 1);
}

void *attn__ws_take(attn_ws_layout *l, size_t count, size_t elem_size) {
  size_t bytes, end;
  if (__builtin_mul_overflow(count, elem_size, &bytes) ||
      (bytes = attn__ws_round(bytes)) == SIZE_MAX || __builtin_add_overflow(l->used, bytes, &end)) {
    l->used = SIZE_MAX;
    return NULL;
  }
  void *p = l->base ? l->base + l->used : NULL;
  l->used = end;
  return p;
}

attn_status attn__ws_reserve(attn_ctx *ctx, size_t bytes) {
  size_t need; /* rounded as attn__ws_alloc rounds, so a slice of `bytes` fits */
  if (__builtin_add_overflow(ctx->ws_used, attn__ws_round(bytes), &need) ||
      need > SIZE_MAX - ATTN_ALIGN)
    return attn__fail(ctx, ATTN_ERR_OVERFLOW, "the workspace size overflows");
  if (need <= ctx->ws_cap)
    return ATTN_OK;
  if (ctx->ws_used)
    return attn__fail(ctx, ATTN_ERR_NO_MEMORY,
                      "internal error: %zu bytes of workspace asked for while slices are "
                      "live (the outer plan must include them)",
                      bytes);
  void *block = attn__alloc(ctx, need + ATTN_ALIGN);
  if (!block)
    return attn__fail(ctx, ATTN_ERR_NO_MEMORY, "cannot allocate %zu bytes of workspace", need);
  attn__free(ctx, ctx->ws_block);
  ctx->ws_block = block;
  ctx->ws = attn__align_ptr(block);
  ctx->ws_cap = need;
  return ATTN_OK;
}

void *attn__ws_alloc(attn_ctx *ctx, size_t bytes) {
  bytes = attn__ws_round(bytes);
  if (!ctx->ws || bytes > ctx->ws_cap - ctx->ws_used)
    return NULL; /* nothing reserved yet, or more than was reserved */
  void *p = ctx->ws + ctx->ws_used;
  ctx->ws_used += bytes;
  return p;
}

size_t attn__ws_size(attn_ws_layout_fn layout, void *problem) {
  attn_ws_layout l = {NULL, 0};
  layout(problem, &l);
  return l.used;
}

size_t attn__ws_carve(attn_ctx *ctx, attn_ws_layout_fn layout, void *problem, size_t bytes) {
  size_t mark = ctx->ws_used;
  attn_ws_layout l = {attn__ws_alloc(ctx, bytes), 0};
  layout(problem, &l);
  return mark;
}

size_t attn__ws_mark(const attn_ctx *ctx) { return ctx->ws_used; }

void attn__ws_release(attn_ctx *ctx, size_t mark) { ctx->ws_used = mark; }

attn_status attn__read_params(attn_ctx *ctx, void *dst, size_t dst_size, const void *src) {
  if (!src)
    return ATTN_OK;
  size_t src_size;
  memcpy(&src_size, src, sizeof src_size);
  if (src_size < sizeof(size_t))
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "params.struct_size = %zu is too small (set it to sizeof the "
                      "struct, or call the _init function)",
                      src_size);
  if (src_size > dst_size) {
    const unsigned char *extra = (const unsigned char *)src + dst_size;
    for (size_t i = 0; i < src_size - dst_size; i++)
      if (extra[i])
        return attn__fail(ctx, ATTN_ERR_UNSUPPORTED,
                          "params.struct_size = %zu but this library (%s) knows %zu "
                          "bytes and byte %zu is set (built against a newer header?)",
                          src_size, ATTN_VERSION_STRING, dst_size, dst_size + i);
    src_size = dst_size;
  }
  memcpy(dst, src, src_size);
  return ATTN_OK;
}

void attn_ctx_options_init(attn_ctx_options *opts) {
  if (!opts)
    return;
  memset(opts, 0, sizeof *opts);
  opts->struct_size = sizeof *opts;
}

attn_status attn_ctx_create(attn_ctx **out, const attn_ctx_options *opts) {
  if (!out)
    return ATTN_ERR_NULL_ARG;
  attn_ctx_options o;
  attn_ctx_options_init(&o);
  attn_status st = attn__read_params(NULL, &o, sizeof o, opts);
  if (st != ATTN_OK)
    return st;
  if (o.num_threads < 0 || o.num_threads > ATTN_MAX_THREADS || o.reserved_ != 0)
    return ATTN_ERR_INVALID_ARG;
  if (!o.alloc != !o.free)
    return ATTN_ERR_INVALID_ARG;
  attn_alloc_fn alloc = o.alloc ? o.alloc : default_alloc;
  attn_free_fn free_fn = o.free ? o.free : default_free;

  attn_ctx *ctx = alloc(o.alloc_user, sizeof *ctx);
  if (!ctx)
    return ATTN_ERR_NO_MEMORY;
  memset(ctx, 0, sizeof *ctx);
  ctx->magic = ATTN_CTX_MAGIC;
  ctx->alloc = alloc;
  ctx->free = free_fn;
  ctx->alloc_user = o.alloc_user;
  atomic_init(&ctx->busy, 0);
  ctx->num_threads = o.num_threads ? o.num_threads : attn__default_threads(ATTN_MAX_THREADS);
  if (ctx->num_threads > 1) {
    st = attn__threadpool_create(ctx, ctx->num_threads - 1, &ctx->pool);
    if (st != ATTN_OK) {
      ctx->magic = ATTN_DEAD_MAGIC;
      free_fn(o.alloc_user, ctx);
      return st;
    }
  }
  *out = ctx;
  return ATTN_OK;
}

void attn_ctx_destroy(attn_ctx *ctx) {
  if (!ctx || ctx->magic != ATTN_CTX_MAGIC)
    return;
  attn__threadpool_destroy(ctx, ctx->pool);
  attn__mha_destroy_all(ctx);
  attn__kv_destroy_all(ctx);
  for (int list = 0; list < 2; list++) {
    attn_tensor *t = list ? ctx->freed : ctx->tensors;
    while (t) {
      attn_tensor *next = t->next;
      t->magic = ATTN_DEAD_MAGIC;
      if (t->owns_data)
        attn__free(ctx, t->block);
      attn__free(ctx, t);
      t = next;
    }
  }
  attn__free(ctx, ctx->ws_block);
  ctx->magic = ATTN_DEAD_MAGIC;
  attn_free_fn free_fn = ctx->free;
  void *user = ctx->alloc_user;
  free_fn(user, ctx);
}

const char *attn_ctx_last_error(const attn_ctx *ctx) {
  if (!ctx)
    return "attn_ctx_last_error: ctx is NULL";
  return ctx->err;
}

int32_t attn_ctx_num_threads(const attn_ctx *ctx) { return ctx ? ctx->num_threads : 0; }
