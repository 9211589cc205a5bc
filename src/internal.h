/* Internal interfaces shared by the library's source files. Nothing here is
 * exported: the build uses -fvisibility=hidden and a version script. */
#ifndef ATTN_INTERNAL_H
#define ATTN_INTERNAL_H

#include "attn.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ATTN_CTX_MAGIC 0x41544e43u    /* "ATNC" */
#define ATTN_TENSOR_MAGIC 0x41544e54u /* "ATNT" */
#define ATTN_KV_MAGIC 0x41544e4bu     /* "ATNK" */
#define ATTN_DEAD_MAGIC 0xdeadbeefu
#define ATTN_ERR_LEN 512
#define ATTN_ALIGN 64

typedef struct attn_threadpool attn_threadpool;

struct attn_tensor {
  uint32_t magic;
  int32_t dtype;
  int32_t ndim;
  bool owns_data;
  attn_ctx *ctx;
  void *data;
  void *block; /* allocation to release when owns_data */
  int64_t dims[ATTN_MAX_DIMS];
  int64_t strides[ATTN_MAX_DIMS];
  size_t extent_bytes; /* bytes from data to one past the last element */
  attn_tensor *prev, *next;
};

struct attn_ctx {
  uint32_t magic;
  int32_t num_threads;
  attn_alloc_fn alloc;
  attn_free_fn free;
  void *alloc_user;
  attn_tensor *tensors;  /* every live tensor, doubly linked */
  attn_tensor *freed, *freed_last; /* freed handles, oldest first, for reuse */
  attn_kv_cache *caches; /* every live KV cache (kv_cache.c), doubly linked */
  attn_mha *layers;      /* every live attention layer (mha.c), doubly linked */
  attn_threadpool *pool; /* NULL when num_threads == 1 */
  /* Set while a call runs (attn__op_begin/end): a second thread entering a
   * call on this context is refused with ATTN_ERR_BUSY. */
  atomic_int busy;
  const char *op; /* the public function running, for attn__fail's prefix */
  /* The workspace arena: one block kept at its high-water mark, handed out
   * as a stack of slices (see the workspace section below). */
  void *ws_block; /* allocation; ws = ws_block aligned to ATTN_ALIGN */
  char *ws;
  size_t ws_cap, ws_used;
  char err[ATTN_ERR_LEN];
};

/* ---- op prologue and errors (context.c) ---- */
/* Start a public call on ctx: ctx non-NULL and alive (ATTN_ERR_NULL_ARG /
 * BAD_HANDLE, no message), not in use by another thread (ATTN_ERR_BUSY, no
 * message: ctx->err belongs to the running call). On ATTN_OK the context is
 * marked in use and `op` prefixes every message; attn__op_end must follow. */
attn_status attn__op_begin(attn_ctx *ctx, const char *op);
/* End the call: release every workspace slice and the in-use mark.
 * Returns st, so `return attn__op_end(ctx, st);` ends a public function. */
attn_status attn__op_end(attn_ctx *ctx, attn_status st);
/* Record "op: message" in ctx (if not NULL) and return status. */
attn_status attn__fail(attn_ctx *ctx, attn_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- memory (context.c): the context's allocator ---- */
void *attn__alloc(attn_ctx *ctx, size_t size);
/* For large, long-lived blocks (the owned KV cache): as attn__alloc, but
 * with the default allocator on Linux the block starts on a 2 MiB boundary
 * and is advised for transparent huge pages before its first touch.
 * Released by attn__free. */
void *attn__alloc_large(attn_ctx *ctx, size_t size);
void attn__free(attn_ctx *ctx, void *p);

/* ---- workspace (context.c) ----
 * A plan sizes its workspace with an attn_ws_layout (NULL base: counting);
 * the public function reserves the total once (the only allocation of a
 * call); the run lays out the same buffers again on a slice (real base).
 * Because one function describes the layout for both, sizes cannot drift.
 * Slices are a stack: a nested user (a layer calling attn__sdpa_run) takes
 * its slice above the outer user's, which stays valid. */
typedef struct {
  char *base;  /* NULL while sizing */
  size_t used; /* bytes laid out so far; SIZE_MAX once a size overflowed,
                  which attn__ws_reserve then refuses */
} attn_ws_layout;
/* The next buffer of count * elem_size bytes, rounded up to ATTN_ALIGN
 * (NULL while sizing). */
void *attn__ws_take(attn_ws_layout *l, size_t count, size_t elem_size);
/* p rounded up to the next ATTN_ALIGN boundary. */
static inline void *attn__align_ptr(void *p) {
  return (void *)(((uintptr_t)p + ATTN_ALIGN - 1) & ~(uintptr_t)(ATTN_ALIGN - 1));
}
/* bytes rounded up to ATTN_ALIGN (also the stride of per-thread rows);
 * SIZE_MAX if that overflows. */
size_t attn__ws_round(size_t bytes);
/* Make room for `bytes` more than the slices now live. Grows the block only
 * when no slice is live (growing would move them); otherwise a shortfall is
 * a planning error. ATTN_ERR_NO_MEMORY / OVERFLOW with a message. */
attn_status attn__ws_reserve(attn_ctx *ctx, size_t bytes);
/* A layout function: describes a problem's buffers through attn__ws_take. */
typedef void (*attn_ws_layout_fn)(void *problem, attn_ws_layout *l);
/* Plan side: the bytes `layout` needs for `problem`. */
size_t attn__ws_size(attn_ws_layout_fn layout, void *problem);
/* Run side: take a slice of `bytes` (the planned size, within the
 * reservation) and lay the problem's buffers out on it. Returns the mark to
 * give to attn__ws_release when the run is done. */
size_t attn__ws_carve(attn_ctx *ctx, attn_ws_layout_fn layout, void *problem, size_t bytes);
/* A slice of `bytes` (ATTN_ALIGN-aligned) within the reservation; NULL if
 * the reservation is too small (a planning error). */
void *attn__ws_alloc(attn_ctx *ctx, size_t bytes);
size_t attn__ws_mark(const attn_ctx *ctx);
void attn__ws_release(attn_ctx *ctx, size_t mark);

/* ---- parameter structs (context.c) ---- */
/* Copy the caller's struct (size given by its first field) over the
 * defaults in `dst` (size dst_size). Fails if the caller's size is too small
 * to hold struct_size, or if it is larger and a byte past dst_size is
 * non-zero (a newer caller asks for something this library lacks). */
attn_status attn__read_params(attn_ctx *ctx, void *dst, size_t dst_size, const void *src);

/* ---- tensors and views (tensor.c) ---- */
size_t attn__dtype_size(int32_t dtype);
/* "F32", "U8", "F16", "BF16" or "unknown". */
const char *attn__dtype_name(int32_t dtype);
/* t can be written: no zero strides, no two indices sharing an element. */
attn_status attn__check_writable(attn_ctx *ctx, const char *name, const attn_tensor *t);
/* True if t has no element (a dim of 0). */
bool attn__empty(const attn_tensor *t);
/* True if the byte ranges spanned by a and b intersect. */
bool attn__overlap(const attn_tensor *a, const attn_tensor *b);
/* True if a and b are the same view of the same memory (an in-place call). */
bool attn__same_view(const attn_tensor *a, const attn_tensor *b);
/* Strides (in elements) that read `m` broadcast to the shape `dims` (ndim
 * axes) by NumPy rules: m's axes align on the right, each m dim equals the
 * target's or is 1 (stride 0); m may have fewer axes (missing = stride 0). */
attn_status attn__broadcast_strides(attn_ctx *ctx, const char *name, const attn_tensor *m,
                                    int32_t ndim, const int64_t *dims, int64_t *strides_out);

/* ---- the default thread count (cpu_count.c) ---- */
/* CPUs in the affinity mask, lowered to the cgroup CPU quota, at most max. */
int32_t attn__default_threads(int32_t max);
/* The CPU quota (rounded up) of the cgroup that `self_cgroup` (the format of
 * /proc/self/cgroup) names under `mount` (/sys/fs/cgroup), the smallest along
 * the path; cgroup v2 cpu.max or v1 cpu.cfs_quota_us. 0: no quota. */
int32_t attn__cgroup_cpus(const char *mount, const char *self_cgroup);

/* ---- threads (threadpool.c) ---- */
/* Body of a parallel loop: item in [0, n), worker in [0, num_threads). */
typedef void (*attn_task_fn)(void *arg, int64_t item, int32_t worker);
attn_status attn__threadpool_create(attn_ctx *ctx, int32_t workers, attn_threadpool **out);
void attn__threadpool_destroy(attn_ctx *ctx, attn_threadpool *pool);
/* Run fn for every item in [0, n) on up to `threads` threads (the caller's
 * included), each item exactly once, and return when all are done. */
void attn__parallel_for(attn_ctx *ctx, int32_t threads, int64_t n, attn_task_fn fn, void *arg);
/* The one thread planner: threads worth using for `work` units when one
 * thread should get at least `min_per_thread` of them, at most the
 * context's count and at most `items` (the work items there are; <= 0 for
 * no limit). The plan sizes per-thread workspace with this count. */
int32_t attn__threads_plan(const attn_ctx *ctx, double work, double min_per_thread, int64_t items);
/* Items of `per` units each over `n` units, shrunk so that `threads`
 * threads get at least 4 items each (balance); at least 1. */
int64_t attn__items_balanced(int64_t n, int64_t per, int32_t threads);

/* ---- BLAS (blas.c, the only caller of cblas_sgemm) ---- */
/* Threads one call of attn__sgemm_* may start on its own: 1 when the
 * products run on libattn's tile kernels (simd/gemm_body.h) or the BLAS is
 * sequential. A multi-threaded OpenBLAS serialises concurrent calls
 * (OpenBLAS issue 4217, measured in bench/BLAS-THREADING.md), so an op that
 * calls these from several workers must use one worker when this is > 1. */
int32_t attn__blas_threads(void);
/* Row-major C[m, n] = alpha * A[m, k] * B[n, k]^T. */
void attn__sgemm_nt(int m, int n, int k, float alpha, const float *a, int lda, const float *b,
                    int ldb, float *c, int ldc);
/* Row-major C[m, n] += A[m, k] * B[k, n]. */
void attn__sgemm_nn_acc(int m, int n, int k, const float *a, int lda, const float *b, int ldb,
                        float *c, int ldc);
/* Row-major C[m, n] += A[k, m]^T * B[k, n]. */
void attn__sgemm_tn_acc(int m, int n, int k, const float *a, int lda, const float *b, int ldb,
                        float *c, int ldc);

#endif
