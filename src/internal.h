/* Internal interfaces shared by the library's source files. Nothing here is
 * exported: the build uses -fvisibility=hidden and a version script. */
#ifndef ATTN_INTERNAL_H
#define ATTN_INTERNAL_H

#include "attn.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ATTN_CTX_MAGIC 0x41544e43u    /* "ATNC" */
#define ATTN_TENSOR_MAGIC 0x41544e54u /* "ATNT" */
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
  attn_tensor *tensors; /* every live tensor, doubly linked */
  void *scratch_block;  /* grows to its high-water mark, reused */
  void *scratch;        /* scratch_block aligned to ATTN_ALIGN */
  size_t scratch_size;
  attn_threadpool *pool; /* NULL when num_threads == 1 */
  char err[ATTN_ERR_LEN];
};

/* ---- errors (context.c) ---- */
/* Record a message in ctx (if not NULL) and return status. */
attn_status attn__fail(attn_ctx *ctx, attn_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- memory (context.c): the context's allocator ---- */
void *attn__alloc(attn_ctx *ctx, size_t size);
void attn__free(attn_ctx *ctx, void *p);
/* ATTN_ALIGN-aligned scratch of at least `size` bytes, valid until the next
 * call on ctx; NULL (and an error recorded for fn) when out of memory. */
void *attn__scratch(attn_ctx *ctx, const char *fn, size_t size);

/* ---- parameter structs (context.c) ---- */
/* Copy the caller's struct (size given by its first field) over the
 * defaults in `dst` (size dst_size). Fails if the caller's size is too small
 * to hold struct_size, or if it is larger and a byte past dst_size is
 * non-zero (a newer caller asks for something this library lacks). */
attn_status attn__read_params(attn_ctx *ctx, const char *fn, void *dst, size_t dst_size,
                              const void *src);

/* ---- validation (tensor.c) ---- */
size_t attn__dtype_size(int32_t dtype);
/* "F32", "U8", "F16", "BF16" or "unknown". */
const char *attn__dtype_name(int32_t dtype);
/* ctx non-NULL and alive. Returns ATTN_ERR_NULL_ARG / BAD_HANDLE. */
attn_status attn__check_ctx(const attn_ctx *ctx);
/* t non-NULL, alive, from ctx, of dtype (any if dtype < 0) and ndim within
 * [min_nd, max_nd]. */
attn_status attn__check_tensor(attn_ctx *ctx, const char *fn, const char *name,
                               const attn_tensor *t, int32_t dtype, int32_t min_nd,
                               int32_t max_nd);
/* t can be written: no zero strides, no two indices sharing an element. */
attn_status attn__check_writable(attn_ctx *ctx, const char *fn, const char *name,
                                 const attn_tensor *t);
/* a and b have the same ndim and dims. */
attn_status attn__check_same_shape(attn_ctx *ctx, const char *fn, const char *na,
                                   const attn_tensor *a, const char *nb,
                                   const attn_tensor *b);
/* True if the byte ranges spanned by a and b intersect. */
bool attn__overlap(const attn_tensor *a, const attn_tensor *b);
/* True if a and b are the same view of the same memory (an in-place call). */
bool attn__same_view(const attn_tensor *a, const attn_tensor *b);
/* Strides (in elements) that read `m` broadcast to the shape `dims` (ndim
 * axes) by NumPy rules: m's axes align on the right, each m dim equals the
 * target's or is 1 (stride 0); m may have fewer axes (missing = stride 0). */
attn_status attn__broadcast_strides(attn_ctx *ctx, const char *fn, const char *name,
                                    const attn_tensor *m, int32_t ndim,
                                    const int64_t *dims, int64_t *strides_out);

/* ---- threads (threadpool.c) ---- */
/* Body of a parallel loop: item in [0, n), worker in [0, num_threads). */
typedef void (*attn_task_fn)(void *arg, int64_t item, int32_t worker);
attn_status attn__threadpool_create(attn_ctx *ctx, int32_t workers, attn_threadpool **out);
void attn__threadpool_destroy(attn_ctx *ctx, attn_threadpool *pool);
/* Run fn for every item in [0, n) on up to `threads` threads (the caller's
 * included), each item exactly once, and return when all are done. */
void attn__parallel_for(attn_ctx *ctx, int32_t threads, int64_t n, attn_task_fn fn,
                        void *arg);
/* Threads worth using for `work` units when one thread should get at least
 * `min_per_thread` of them. */
int32_t attn__threads_for(const attn_ctx *ctx, double work, double min_per_thread);

/* ---- BLAS (blas.c, the only caller of cblas_sgemm) ---- */
/* Threads one BLAS call may start on its own (1 for a sequential BLAS). A
 * multi-threaded OpenBLAS serialises concurrent calls (OpenBLAS issue 4217,
 * measured in bench/BLAS-THREADING.md), so an op that calls BLAS from
 * several workers must use one worker when this is > 1. */
int32_t attn__blas_threads(void);
/* Row-major C[m, n] = alpha * A[m, k] * B[n, k]^T. */
void attn__sgemm_nt(int m, int n, int k, float alpha, const float *a, int lda, const float *b,
                    int ldb, float *c, int ldc);
/* Row-major C[m, n] += A[m, k] * B[k, n]. */
void attn__sgemm_nn_acc(int m, int n, int k, const float *a, int lda, const float *b, int ldb,
                        float *c, int ldc);

#endif
