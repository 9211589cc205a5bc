/** @file attn.h
 * libattn — attention on the CPU: softmax kernels, positional encodings and
 * scaled dot-product attention behind one versioned C ABI.
 *
 * Overview
 * --------
 * Everything starts from a context (attn_ctx). It owns its allocator, its
 * thread count, its scratch memory, the text of the last error, and every
 * tensor created from it. Tensors are fp32 (masks: uint8; f16 and bf16
 * data tensors too, see attn_dtype), 1 to 4 dims,
 * axes outermost first (as NumPy and PyTorch), shapes and strides int64,
 * strides counted in elements with the innermost axis contiguous.
 *
 *     attn_ctx *ctx;
 *     attn_ctx_create(&ctx, NULL);                 // default options
 *     int64_t dims[2] = {2, 5};
 *     float buf[10] = {1, 2, 3, 4, 5, 0, 0, 0, 0, 0};
 *     attn_tensor *x;
 *     attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 2, dims, NULL, buf, sizeof buf, &x);
 *     attn_softmax(ctx, x, x, NULL);               // in place, defaults
 *     attn_ctx_destroy(ctx);                       // frees x's handle too
 *
 * Conventions
 * -----------
 * - Every fallible function returns attn_status; ATTN_OK is 0. On failure
 *   attn_ctx_last_error() gives a sentence naming the function, the argument,
 *   the observed value and the rule. Nothing aborts, prints or exits, and an
 *   op that fails writes nothing into its outputs.
 * - Results come back through a trailing `**out` written only on success.
 * - Each op takes a size-tagged parameter struct: set `struct_size`, or call
 *   the op's `_init()`; NULL means all defaults. A zero-filled struct with its
 *   size set means defaults too: every field's zero value is its default. The
 *   library reads only the fields the caller's size covers, so binaries built
 *   against an older header keep working; a newer caller's non-zero fields
 *   unknown to this library give ATTN_ERR_UNSUPPORTED.
 * - Threads: one context is used by one thread at a time; distinct contexts
 *   are independent. A call that finds another thread inside a call on the
 *   same context (an op, or a tensor new / wrap / free) returns ATTN_ERR_BUSY
 *   at once, changing nothing; the running call is not disturbed and
 *   attn_ctx_last_error() keeps describing it (the busy call writes no
 *   message). The only global state is a CPU feature probe initialised once
 *   and a bound on the threads inside OpenBLAS at once (its per-thread
 *   buffers are a process-wide resource). An op uses at most the context's
 *   thread count; a context starts num_threads - 1 worker threads when it is
 *   created (see attn_ctx_create()).
 * - fork(): a child process may keep using a context its parent created,
 *   also after the parent used it; the context starts its worker threads again
 *   in the child on first use. The library keeps no pointer the caller passed
 *   (tensor data aside: a wrapped tensor borrows its memory until freed)
 *   after a call returns: arrays such as kv_lens or positions are read
 *   during the call only.
 * - Enum-valued fields are int32_t in structs, so their size is fixed for FFI.
 *
 * Semantics shared by all ops (details per op below)
 * - A masked entry gets weight exactly 0; a row whose entries are all masked
 *   gives zeros (log-softmax: -inf; log-sum-exp: -inf), never NaN.
 * - A NaN in the input gives NaN in its row (errors are not hidden), unless
 *   a mask hides its entry (boolean 0 or additive -inf): a hidden entry never
 *   reaches the result.
 */
#ifndef ATTN_H
#define ATTN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** @name Export and version
 * @{ */
/** @def ATTN_API
 * Marks the functions libattn exports: default visibility on ELF targets,
 * dllexport/dllimport on Windows, nothing for a static library (define
 * ATTN_STATIC_DEFINE, which `pkg-config --cflags attn` and the CMake
 * target do for a static build). */
#if defined(ATTN_STATIC_DEFINE)
#  define ATTN_API
#elif defined(_WIN32)
#  ifdef ATTN_BUILDING
#    define ATTN_API __declspec(dllexport)
#  else
#    define ATTN_API __declspec(dllimport)
#  endif
#else
#  define ATTN_API __attribute__((visibility("default")))
#endif

/* The one source of truth for the version: CMake reads these three lines. */
#define ATTN_VERSION_MAJOR 0
#define ATTN_VERSION_MINOR 2
#define ATTN_VERSION_PATCH 6
/** @def ATTN_VERSION_MAJOR
 * Major version of this header; the library's SONAME (libattn.so.N) follows it. */
/** @def ATTN_VERSION_MINOR
 * Minor version of this header: features added; 0.x minors stay binary-compatible. */
/** @def ATTN_VERSION_PATCH
 * Patch version of this header: fixes only. */

#define ATTN_VERSION_NUMBER_(a, b, c) ((a) * 10000 + (b) * 100 + (c))
/** The header's version as one number: major*10000 + minor*100 + patch. */
#define ATTN_VERSION ATTN_VERSION_NUMBER_(ATTN_VERSION_MAJOR, ATTN_VERSION_MINOR, ATTN_VERSION_PATCH)
#define ATTN_STRINGIFY_(x) #x
#define ATTN_EXPAND_STRINGIFY_(x) ATTN_STRINGIFY_(x)
/** The header's version as "major.minor.patch". */
#define ATTN_VERSION_STRING                                                    \
  ATTN_EXPAND_STRINGIFY_(ATTN_VERSION_MAJOR) "." ATTN_EXPAND_STRINGIFY_(      \
      ATTN_VERSION_MINOR) "." ATTN_EXPAND_STRINGIFY_(ATTN_VERSION_PATCH)

/** The library's version as ATTN_VERSION encodes it; compare with the
 * header's ATTN_VERSION to detect a mismatch at run time.
 * @return major*10000 + minor*100 + patch of the linked library.
 * @since 0.1.0 */
ATTN_API int32_t attn_version(void);
/** The library's version as text.
 * @return "major.minor.patch" of the linked library (static storage).
 * @since 0.1.0 */
ATTN_API const char *attn_version_string(void);
/** @} */

/** @name Status codes
 * Values are pinned forever and only appended.
 * @{ */
/** The result of every fallible function: ATTN_OK (0) or an error code;
 * attn_ctx_last_error() has the sentence that explains an error. */
typedef enum attn_status {
  ATTN_OK = 0,                /**< success */
  ATTN_ERR_NULL_ARG = 1,      /**< a required pointer or handle was NULL */
  ATTN_ERR_INVALID_ARG = 2,   /**< a value is out of range (enum, scale, stride, ...) */
  ATTN_ERR_SHAPE = 3,         /**< tensor shapes do not fit together */
  ATTN_ERR_OVERFLOW = 4,      /**< a size product overflows, or exceeds what BLAS takes */
  ATTN_ERR_NO_MEMORY = 5,     /**< the allocator returned NULL, or (attn_ctx_create)
                                   the system could not start a worker thread */
  ATTN_ERR_UNSUPPORTED = 6,   /**< valid request this build does not do (dtype, newer field) */
  ATTN_ERR_BAD_HANDLE = 7,    /**< handle freed, corrupt, or from another context */
  ATTN_ERR_ALIASING = 8,      /**< an output overlaps an input in a way the op forbids */
  /** another thread is inside a call on the same context (a context serves
   * one call at a time; use one context per thread). The other call is not
   * disturbed and attn_ctx_last_error() keeps its message. @since 0.2.0 */
  ATTN_ERR_BUSY = 9,
  ATTN_STATUS_MAX_ = 0x7fffffff
} attn_status;

/** The name of a status code.
 * @param status any value.
 * @return its name ("ATTN_ERR_SHAPE"), or "unknown status" for a value not in
 *  the list. Static storage, never NULL.
 * @since 0.1.0 */
ATTN_API const char *attn_status_string(attn_status status);
/** @} */

/** @name Context
 * @{ */
/** Opaque context: allocator, thread count, scratch memory, last error and
 * the tensors created from it. Made by attn_ctx_create(). */
typedef struct attn_ctx attn_ctx;

/** Allocate `size` bytes (no alignment beyond malloc's is required); return
 * NULL on failure. */
typedef void *(*attn_alloc_fn)(void *user, size_t size);
/** Release a block from attn_alloc_fn; never called with NULL. */
typedef void (*attn_free_fn)(void *user, void *ptr);

/** Options for attn_ctx_create(). Zero in any field means its default. */
typedef struct attn_ctx_options {
  size_t struct_size;     /**< sizeof(attn_ctx_options) */
  int32_t num_threads;    /**< threads an op may use; 0 = the CPUs available to
                               the process: its affinity mask, lowered to its
                               cgroup's CPU quota (cgroup v2 cpu.max or v1
                               cpu.cfs_quota_us, rounded up); 1 = no worker
                               threads; max 1024 */
  int32_t reserved_;      /**< must be 0 */
  attn_alloc_fn alloc;    /**< custom allocator; NULL = malloc/free. Set both
                               alloc and free or neither. */
  attn_free_fn free;      /**< custom free, paired with alloc */
  void *alloc_user;       /**< passed to alloc and free as `user` */
} attn_ctx_options;

/** Fill `opts` with the defaults (and its struct_size).
 * @param[out] opts the options to fill; NULL is ignored.
 * @since 0.1.0 */
ATTN_API void attn_ctx_options_init(attn_ctx_options *opts);

/** Create a context.
 *
 * Cost: num_threads - 1 worker threads, started here and joined by
 * attn_ctx_destroy() (they sleep between ops; each has the default pthread
 * stack, mostly untouched), under 1 KiB for the context itself, and scratch
 * memory that grows to the largest amount one op needed and is reused (for
 * attn_sdpa a few tiles per thread, never the score matrix). A program with
 * one context per thread should give each num_threads = 1 (no workers), or
 * the threads multiply.
 * @param[out] out  receives the context; written only on success.
 * @param[in]  opts options, or NULL for the defaults.
 * @return ATTN_OK, ATTN_ERR_NULL_ARG (out NULL), ATTN_ERR_INVALID_ARG (bad
 *  option: negative or >1024 threads, alloc without free), ATTN_ERR_UNSUPPORTED
 *  (newer options), ATTN_ERR_NO_MEMORY (the allocator returned NULL, or a
 *  worker thread cannot be started: the system's limit on threads or on
 *  memory for their stacks; before 0.2.0 this was ATTN_ERR_INVALID_ARG).
 *  There is no context to hold a message yet.
 * @since 0.1.0 */
ATTN_API attn_status attn_ctx_create(attn_ctx **out, const attn_ctx_options *opts);

/** Destroy a context: join its worker threads, free every tensor created from
 * it and its scratch (and the KV caches and layers still alive in it). No
 * other thread may be inside a call on ctx or use it afterwards: unlike a
 * second call, which gets ATTN_ERR_BUSY, destruction is not detected.
 * @param[in] ctx the context; NULL is a no-op.
 * @since 0.1.0 */
ATTN_API void attn_ctx_destroy(attn_ctx *ctx);

/** The message of the most recent failed call on this context.
 * @param[in] ctx the context; NULL gives a static text.
 * @return the message ("" if no call failed), valid until the next call on
 *  the context.
 * @since 0.1.0 */
ATTN_API const char *attn_ctx_last_error(const attn_ctx *ctx);

/** The thread count an op on this context may use.
 * @param[in] ctx the context.
 * @return the count (>= 1); 0 for a NULL ctx.
 * @since 0.1.0 */
ATTN_API int32_t attn_ctx_num_threads(const attn_ctx *ctx);
/** @} */

/** @name Tensors
 * @{ */
/** Opaque tensor: dtype, 1..ATTN_MAX_DIMS dims, element strides and a data
 * pointer, owned by its context. Made by attn_tensor_new() or
 * attn_tensor_wrap(). */
typedef struct attn_tensor attn_tensor;

/** Element types.
 *
 * The 2-byte float types (@since 0.2.0) are stored as uint16_t bit patterns
 * in the platform's byte order. Conversions (attn_tensor_copy()) widen
 * exactly and narrow by rounding to nearest, ties to even, once; an f32
 * beyond the narrow type's range becomes +-Inf (for f16: |x| >= 65520, the
 * midpoint above the largest finite 65504); subnormal results are kept, not
 * flushed. NaN stays NaN in every direction: sign kept, quiet bit set, and
 * the payload's leading bits kept as far as they fit (an f32 payload loses
 * its low 13 bits in f16, its low 16 in bf16), as x86's F16C and AVX-512 BF16
 * instructions do. Every kernel set gives the same bits.
 * The ops read and write F16/BF16 data tensors (softmax and log-softmax x
 * and y, the sinusoidal table and x, RoPE's x, SDPA's q, k, v and out,
 * each on its own, so a bf16 KV cache goes with f32 queries): half inputs
 * are widened exactly, every computation and accumulation is in float, and
 * a half output is the float result rounded once, to nearest even. So a
 * half result is within half an ULP of its type (2^-11 relative for f16,
 * 2^-8 for bf16) of the F32 result computed from the same, already rounded,
 * inputs. Masks, lse and weights stay F32 (U8 masks); a half one is refused
 * with ATTN_ERR_UNSUPPORTED. */
typedef enum attn_dtype {
  ATTN_DTYPE_F32 = 0,  /**< IEEE-754 binary32: data, additive masks */
  ATTN_DTYPE_U8 = 1,   /**< uint8: boolean masks, nonzero = keep */
  ATTN_DTYPE_F16 = 2,  /**< IEEE-754 binary16 (1 sign, 5 exponent, 10 fraction bits) */
  ATTN_DTYPE_BF16 = 3, /**< bfloat16: the upper 16 bits of a binary32 (8 exponent, 7 fraction) */
  ATTN_DTYPE_MAX_ = 0x7fffffff
} attn_dtype;

/** The largest number of dimensions a tensor has. */
#define ATTN_MAX_DIMS 4

/** Create a tensor owning a new, zero-filled, contiguous buffer.
 * A dim of 0 gives an empty tensor (no element; its data pointer is still
 * valid and non-NULL). Every op accepts empty tensors and then writes
 * nothing, except where an output still has elements (see attn_sdpa()).
 * @param[in]  ctx   owner; the tensor lives until attn_tensor_free() or
 *                   attn_ctx_destroy().
 * @param[in]  dtype an attn_dtype value.
 * @param[in]  ndim  1..ATTN_MAX_DIMS.
 * @param[in]  dims  ndim sizes, each >= 0.
 * @param[out] out   receives the tensor; written only on success.
 * @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_INVALID_ARG (ndim, dtype or a
 *  dim < 0), ATTN_ERR_OVERFLOW (byte size overflows size_t, or the product
 *  of the dims, leaving out zeros, exceeds INT64_MAX: empty tensors too),
 *  ATTN_ERR_NO_MEMORY.
 * @since 0.1.0 */
ATTN_API attn_status attn_tensor_new(attn_ctx *ctx, int32_t dtype, int32_t ndim,
                                     const int64_t *dims, attn_tensor **out);

/** Wrap caller memory as a tensor, without copying. The caller keeps
 * ownership of `data` and must keep it alive while the tensor is used.
 * @param[in] ctx     owner of the handle (not of the memory).
 * @param[in] dtype   an attn_dtype value.
 * @param[in] ndim    1..ATTN_MAX_DIMS.
 * @param[in] dims    ndim sizes, each >= 0 (a 0 makes an empty tensor, which
 *  spans 0 bytes whatever its strides).
 * @param[in] strides ndim strides in elements, or NULL for contiguous. The
 *  innermost stride must be 1 (when that dim is > 1); others must be >= 0. A
 *  zero stride broadcasts (such a tensor may only be an input).
 * @param[in] data    the first element; must be aligned for dtype and
 *  non-NULL, also for an empty tensor (any valid pointer).
 * @param[in] size_bytes bytes available at data; the extent implied by dims
 *  and strides must fit, and the library never touches a byte outside it.
 * @param[out] out    receives the tensor; written only on success.
 * @return as attn_tensor_new(), plus ATTN_ERR_INVALID_ARG for bad strides,
 *  misalignment or an extent larger than size_bytes.
 * @since 0.1.0 */
ATTN_API attn_status attn_tensor_wrap(attn_ctx *ctx, int32_t dtype, int32_t ndim,
                                      const int64_t *dims, const int64_t *strides,
                                      void *data, size_t size_bytes,
                                      attn_tensor **out);

/** Free a tensor before its context is destroyed (for an owned buffer, the
 * buffer too; wrapped memory is left alone).
 * @param[in] ctx the context the tensor was created from.
 * @param[in] t   the tensor; NULL is a no-op returning ATTN_OK.
 * Cost: O(1). The handle's own memory stays with the context (for reuse by
 * the next attn_tensor_new() or attn_tensor_wrap()) until attn_ctx_destroy(),
 * so a second free of `t`, or a free through another live context, is
 * detected reading only memory the library owns. `t` must come from a
 * context that still exists.
 * @return ATTN_OK, ATTN_ERR_NULL_ARG (ctx NULL), ATTN_ERR_BAD_HANDLE (already
 *  freed, or created from another context).
 * @since 0.1.0 */
ATTN_API attn_status attn_tensor_free(attn_ctx *ctx, attn_tensor *t);

/** Copy a tensor's elements into another of the same shape, converting the
 * element type: any of F32, F16 and BF16 into any of them (rounding as
 * described at attn_dtype, once, so F16 -> BF16 is exact to the nearest
 * BF16), or U8 into U8. Between tensors of one type the bits are copied
 * unchanged (a signalling NaN stays signalling).
 * @param[in] ctx the context both tensors belong to.
 * @param[in] src the elements; zero strides (broadcast) allowed.
 * @param[out] dst receives them: same dims as src, distinct elements (no zero
 *  strides). It may be src itself (same view and dtype: nothing to do) but
 *  must not otherwise overlap it.
 * @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_BAD_HANDLE, ATTN_ERR_SHAPE
 *  (dims differ), ATTN_ERR_UNSUPPORTED (U8 with a float type),
 *  ATTN_ERR_INVALID_ARG (dst strides), ATTN_ERR_ALIASING (partial overlap).
 *  On failure dst is unchanged.
 * @since 0.2.0 */
ATTN_API attn_status attn_tensor_copy(attn_ctx *ctx, const attn_tensor *src, attn_tensor *dst);

/** The tensor's data.
 * @param[in] t a tensor, or NULL.
 * @return its first element; NULL for a NULL tensor. @since 0.1.0 */
ATTN_API void *attn_tensor_data(const attn_tensor *t);
/** The tensor's number of dimensions.
 * @param[in] t a tensor, or NULL.
 * @return 1..ATTN_MAX_DIMS; 0 for a NULL tensor. @since 0.1.0 */
ATTN_API int32_t attn_tensor_ndim(const attn_tensor *t);
/** The tensor's element type.
 * @param[in] t a tensor, or NULL.
 * @return an attn_dtype value; -1 for a NULL tensor. @since 0.1.0 */
ATTN_API int32_t attn_tensor_dtype(const attn_tensor *t);
/** The tensor's shape.
 * @param[in] t a tensor, or NULL.
 * @return ndim sizes, outermost first (owned by the tensor); NULL for a NULL
 *  tensor. @since 0.1.0 */
ATTN_API const int64_t *attn_tensor_dims(const attn_tensor *t);
/** The tensor's strides.
 * @param[in] t a tensor, or NULL.
 * @return ndim strides in elements (owned by the tensor); NULL for a NULL
 *  tensor. @since 0.1.0 */
ATTN_API const int64_t *attn_tensor_strides(const attn_tensor *t);
/** @} */

/** @name Softmax family
 * @{ */

/** Parameters of attn_softmax() and attn_log_softmax(). */
typedef struct attn_softmax_params {
  size_t struct_size;       /**< sizeof(attn_softmax_params) */
  float scale;              /**< multiplies x before the mask (1/temperature);
                                 0 = 1.0; must be finite */
  int32_t reserved_;        /**< must be 0 */
  const attn_tensor *mask;  /**< optional F32 additive mask, added after
                                 scaling; -inf masks an entry */
  const attn_tensor *bool_mask; /**< optional U8 mask, nonzero = keep */
  int32_t axis;             /**< the axis normalised, counted from the end:
                                 -1 = the last, -ndim = the first; 0 = the last
                                 (default). Positive values are refused (write
                                 axis - ndim). @since 0.2.0 */
  int32_t reserved2_;       /**< must be 0 */
} attn_softmax_params;

/** Fill `p` with the defaults (and its struct_size).
 * @param[out] p the parameters to fill; NULL is ignored.
 * @since 0.1.0 */
ATTN_API void attn_softmax_params_init(attn_softmax_params *p);

/** Softmax over the last axis, or over params.axis:
 *   z = scale*x + mask (entries where bool_mask == 0 removed),
 *   y = exp(z - max z) / sum exp(z - max z).
 * Over another axis the tensor is read and written through its strides,
 * without a transposed copy; the results equal those of the last axis of a
 * transposed copy to within float rounding of exp (libm's expf there, the
 * dispatched kernels on the last axis).
 * @param[in]  ctx the context (threads, scratch, error message).
 * @param[in]  x  F32, F16 or BF16, 1..4 dims, any strides.
 * @param[out] y  F32, F16 or BF16 (any of them, whatever x is), same shape as
 *  x, no zero strides. May be x itself (in place); any other overlap with x
 *  is ATTN_ERR_ALIASING.
 * @param[in]  p  NULL for defaults. Masks broadcast to x's shape by NumPy
 *  rules (aligned on the last axis; each mask dim equals x's or is 1).
 * Results: masked entries are exactly 0; a row with every entry masked (by
 * bool_mask or -inf) is all zeros; a NaN or +inf z makes the row NaN (IEEE
 * inf - inf, as PyTorch), an entry masked by bool_mask == 0 or by a -inf
 * in mask is removed whatever x holds (NaN included, as in attn_sdpa);
 * z is computed in float, so scale*x + mask may overflow to +-inf (to -inf:
 * a masked entry). Finite rows are stable up to |z| = FLT_MAX (z - max is
 * computed first).
 * @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_BAD_HANDLE, ATTN_ERR_UNSUPPORTED
 *  (dtype), ATTN_ERR_SHAPE, ATTN_ERR_INVALID_ARG (scale, y strides),
 *  ATTN_ERR_ALIASING, ATTN_ERR_NO_MEMORY.
 * Thread safety: uses up to the context's threads.
 * @since 0.1.0 */
ATTN_API attn_status attn_softmax(attn_ctx *ctx, const attn_tensor *x, attn_tensor *y,
                                  const attn_softmax_params *p);

/** Log-softmax over the last axis (or params.axis), computed as z - max z - log(sum exp(z - max z))
 * (not as log of softmax, so tiny probabilities keep their precision).
 * Masked entries are -inf; a row with every entry masked is all -inf.
 * Aliasing and errors as attn_softmax().
 * @param[in]  ctx the context.
 * @param[in]  x   F32, F16 or BF16, 1..4 dims, any strides.
 * @param[out] y   F32, F16 or BF16, x's shape; may be x itself (in place).
 * @param[in]  p   NULL for defaults; scale and masks as attn_softmax().
 * @return as attn_softmax(). @since 0.1.0 */
ATTN_API attn_status attn_log_softmax(attn_ctx *ctx, const attn_tensor *x, attn_tensor *y,
                                      const attn_softmax_params *p);
/** Gradient of attn_softmax(): from the forward's output y and the incoming
 * gradient dy, the gradient of x (and, on request, of the logits z =
 * scale*x + mask, which is the gradient of an additive mask). Per row:
 *   dz_j = y_j (dy_j - sum_k y_k dy_k),  dx_j = scale * dz_j,
 * the sum running over the entries with y_k != 0. An entry with y = 0 (a
 * masked one, or one whose weight underflowed) is a constant of the forward:
 * it gets dx = dz = 0 whatever dy holds there (NaN included), so the
 * gradient of a masked entry is exactly 0 and a row with every entry masked
 * gives zeros. A NaN in y (a NaN row of the forward) gives a NaN row.
 * Sums are accumulated in double.
 * @param[in]  ctx   the context.
 * @param[in]  y     F32, 1..4 dims, any strides: attn_softmax()'s output.
 * @param[in]  dy    F32, y's shape: the gradient of the loss w.r.t. y.
 * @param[out] dx    F32, y's shape, no zero strides. May be dy itself (in
 *  place); any other overlap with an operand is ATTN_ERR_ALIASING.
 * @param[out] dmask optional (NULL = not computed) F32, y's shape: dz. For
 *  a mask that was broadcast, the mask's gradient is dmask summed over the
 *  broadcast axes (the caller does that sum). Must not overlap anything.
 * @param[in]  p     the forward's parameters (NULL for defaults); only
 *  scale and axis are read (y already carries the masks), so the forward's
 *  struct can be passed as it is. (Before 0.2.0's release axis was ignored.)
 * @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_BAD_HANDLE, ATTN_ERR_BUSY,
 *  ATTN_ERR_UNSUPPORTED (dtype, newer params), ATTN_ERR_SHAPE,
 *  ATTN_ERR_INVALID_ARG (scale, axis, strides), ATTN_ERR_ALIASING.
 * Thread safety: uses up to the context's threads.
 * @since 0.2.0 */
ATTN_API attn_status attn_softmax_backward(attn_ctx *ctx, const attn_tensor *y,
                                           const attn_tensor *dy, attn_tensor *dx,
                                           attn_tensor *dmask, const attn_softmax_params *p);

/** Gradient of attn_log_softmax(): from its output y and dy, per row
 *   dz_j = dy_j - exp(y_j) sum_k dy_k,  dx_j = scale * dz_j,
 * the sum running over the entries with y_k != -inf. An entry with y = -inf
 * (masked) is a constant of the forward: dx = dz = 0 there and its dy is
 * ignored (PyTorch's autograd would add a masked entry's dy into the sum;
 * the two agree whenever dy is 0 on masked entries). An unmasked entry whose
 * y overflowed to -inf (a row whose finite logits span more than FLT_MAX) is
 * taken for a masked one, as y cannot tell them apart: it gets 0 and its dy
 * is left out of the sum (the exact gradient there is dy_j). A row with every
 * entry masked gives zeros; a NaN row gives NaN.
 * Parameters, aliasing and errors as attn_softmax_backward(), with y the
 * output of attn_log_softmax().
 * @param[in]  ctx   the context.
 * @param[in]  y     F32: attn_log_softmax()'s output.
 * @param[in]  dy    F32, y's shape.
 * @param[out] dx    F32, y's shape; may be dy itself.
 * @param[out] dmask optional F32, y's shape: dz.
 * @param[in]  p     the forward's parameters; only scale and axis are read.
 * @return as attn_softmax_backward(). @since 0.2.0 */
ATTN_API attn_status attn_log_softmax_backward(attn_ctx *ctx, const attn_tensor *y,
                                               const attn_tensor *dy, attn_tensor *dx,
                                               attn_tensor *dmask,
                                               const attn_softmax_params *p);
/** @} */

/** @name Positional encodings
 * @{ */

/** Column layouts of a sinusoidal table [L, D]. Let h = floor(D/2), p a
 * position and w_i a frequency. */
typedef enum attn_pe_layout {
  /** The paper (Vaswani et al.): PE[p, 2i] = sin(p w_i), PE[p, 2i+1] =
   * cos(p w_i), w_i = base^(-2i/D). Odd D: the last column is a sin. */
  ATTN_PE_INTERLEAVED = 0,
  /** Concatenated: PE[p, i] = sin(p w_i), PE[p, h+i] = cos(p w_i), w_i =
   * base^(-i/h). Odd D: the last column is 0. */
  ATTN_PE_SIN_COS = 1,
  /** As ATTN_PE_SIN_COS with w_i = base^(-i/(h-1)) (fairseq and
   * tensor2tensor; the lowest frequency is exactly 1/base; needs D >= 4). */
  ATTN_PE_SIN_COS_SHIFTED = 2,
  /** Diffusion timestep embedding: PE[p, i] = cos(p w_i), PE[p, h+i] =
   * sin(p w_i), w_i = base^(-i/h) (base = max period). Odd D: last column 0. */
  ATTN_PE_COS_SIN = 3,
  ATTN_PE_LAYOUT_MAX_ = 0x7fffffff
} attn_pe_layout;

/** Parameters of attn_sinusoidal() and attn_sinusoidal_add(). */
typedef struct attn_sinusoidal_params {
  size_t struct_size;       /**< sizeof(attn_sinusoidal_params) */
  int32_t layout;           /**< attn_pe_layout; 0 = interleaved */
  int32_t reserved_;        /**< must be 0 */
  double base;              /**< 0 = 10000; must be finite and > 1 */
  double offset;            /**< row l has position offset + l (may be
                                 fractional); must be finite */
  const double *positions;  /**< optional: L explicit positions (finite),
                                 used instead of offset + l */
} attn_sinusoidal_params;

/** Fill `p` with the defaults (and its struct_size).
 * @param[out] p the parameters to fill; NULL is ignored.
 * @since 0.1.0 */
ATTN_API void attn_sinusoidal_params_init(attn_sinusoidal_params *p);

/** Write the sinusoidal table into `out` [L, D] (F32, F16 or BF16, no zero strides, no
 * two indices sharing an element): row l holds position offset + l, or
 * positions[l]. Angles p * w_i are formed and passed to sin/cos in double,
 * so positions up to 1e6 stay within 1e-6 of the exact table.
 * @param[in]  ctx the context.
 * @param[out] out F32, F16 or BF16 [L, D], the table.
 * @param[in] p NULL for defaults (interleaved, base 10000, offset 0).
 * @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_BAD_HANDLE, ATTN_ERR_SHAPE
 *  (out not 2-D), ATTN_ERR_INVALID_ARG (layout, reserved_, base, offset, a
 *  non-finite position, D < 4 with ATTN_PE_SIN_COS_SHIFTED, out strides),
 *  ATTN_ERR_UNSUPPORTED (dtype, newer params), ATTN_ERR_NO_MEMORY.
 * Thread safety: uses up to the context's threads.
 * @since 0.1.0 */
ATTN_API attn_status attn_sinusoidal(attn_ctx *ctx, attn_tensor *out,
                                     const attn_sinusoidal_params *p);

/** Add the sinusoidal table to `x` in place: x [L, D] or [B, L, D] (every
 * batch gets the same table, positions index the L axis). x must have no
 * zero strides and no two indices sharing an element.
 * @param[in]     ctx the context.
 * @param[in,out] x   F32, F16 or BF16 [L, D] or [B, L, D].
 * @param[in]     p   NULL for defaults, as attn_sinusoidal().
 * @return as attn_sinusoidal() (ATTN_ERR_SHAPE: x not 2-D or 3-D). @since 0.1.0 */
ATTN_API attn_status attn_sinusoidal_add(attn_ctx *ctx, attn_tensor *x,
                                         const attn_sinusoidal_params *p);

/** Which pairs of a head vector rotary embedding rotates (r = rotary dim). */
typedef enum attn_rope_style {
  /** Half-split pairs (x[i], x[i + r/2]): GPT-NeoX, LLaMA (HF rotate_half). */
  ATTN_ROPE_HALF_SPLIT = 0,
  /** Interleaved pairs (x[2i], x[2i+1]): GPT-J, the RoFormer paper. */
  ATTN_ROPE_INTERLEAVED = 1,
  ATTN_ROPE_STYLE_MAX_ = 0x7fffffff
} attn_rope_style;

/** Parameters of attn_rope(). */
typedef struct attn_rope_params {
  size_t struct_size;       /**< sizeof(attn_rope_params) */
  int32_t style;            /**< attn_rope_style; 0 = half-split */
  int32_t rotary_dim;       /**< r: leading dims rotated, even, <= D; 0 = D
                                 (then D must be even); the rest pass through */
  double theta;             /**< base; 0 = 10000; finite and > 1 */
  int64_t offset;           /**< token l has position offset + l (>= 0) */
  const int64_t *positions; /**< optional [B, L] contiguous positions (>= 0),
                                 used instead of offset + l */
} attn_rope_params;

/** Fill `p` with the defaults (and its struct_size).
 * @param[out] p the parameters to fill; NULL is ignored.
 * @since 0.1.0 */
ATTN_API void attn_rope_params_init(attn_rope_params *p);

/** Rotary position embedding, in place on x [B, H, L, D] (F32, F16 or BF16, no zero
 * strides, no two indices sharing an element). For pair (a, b) at rotary
 * index i (0 <= i < r/2) and position p, with t = p * theta^(-2i/r):
 * a' = a cos t - b sin t, b' = a sin t + b cos t. Token l of batch b has
 * position positions[b*L + l] if set, else offset + l; dims r..D-1 are left
 * untouched. A [B, L, H, D] buffer is passed as the [B, H, L, D] view with
 * strides {L*H*D, D, H*D, 1}. Angles and the rotation are computed in
 * double, so the only rounding is the final store to float.
 * @param[in]     ctx the context.
 * @param[in,out] x   F32, F16 or BF16 [B, H, L, D], rotated in place.
 * @param[in] p NULL for defaults (half-split, r = D, theta 10000, offset 0).
 * @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_BAD_HANDLE, ATTN_ERR_SHAPE (not
 *  4-D), ATTN_ERR_INVALID_ARG (style, rotary_dim, theta, a negative offset or
 *  offset + L - 1 beyond int64, a negative position, strides),
 *  ATTN_ERR_UNSUPPORTED (dtype, newer params), ATTN_ERR_NO_MEMORY. Every
 *  position is checked before x is touched.
 * Thread safety: uses up to the context's threads.
 * @since 0.1.0 */
ATTN_API attn_status attn_rope(attn_ctx *ctx, attn_tensor *x, const attn_rope_params *p);

/** Long-context scalings of the rotary frequencies, as Hugging Face
 * transformers' modeling_rope_utils names them (rope_type). Let r be the
 * rotary dim, i in 0..r/2-1, w_i = theta^(-2i/r) the default frequency,
 * s the factor and P0 the original (pre-training) context length. */
typedef enum attn_rope_scaling {
  /** "default": w_i. Attention factor 1. */
  ATTN_ROPE_SCALING_NONE = 0,
  /** "linear" (position interpolation): w_i / s. */
  ATTN_ROPE_SCALING_LINEAR = 1,
  /** "ntk" (NTK-aware): theta replaced by theta * s^(r/(r-2)). */
  ATTN_ROPE_SCALING_NTK = 2,
  /** "dynamic" (dynamic NTK): theta replaced by theta * (s n / P0 - (s - 1))^(r/(r-2))
   * with n = max(seq_len, P0); n = P0 gives the default frequencies. */
  ATTN_ROPE_SCALING_DYNAMIC_NTK = 3,
  /** "yarn": with d(k) = r ln(P0 / (2 pi k)) / (2 ln theta), lo =
   * max(floor(d(beta_fast)), 0), hi = min(ceil(d(beta_slow)), r - 1) (no
   * floor/ceil when yarn_no_truncate), hi += 0.001 if hi == lo, ramp_i =
   * clamp((i - lo) / (hi - lo), 0, 1): (w_i / s) ramp_i + w_i (1 - ramp_i).
   * Attention factor: the given one,
   * else m(s, mscale) / m(s, mscale_all_dim) when both are set, else m(s, 1),
   * with m(s, k) = 0.1 k ln s + 1 for s > 1 and 1 otherwise. s is the given
   * factor: some transformers versions instead derive it as
   * max_position_embeddings / original_max_position_embeddings when the config
   * has the latter (later ones warn when the two differ); pass the s your
   * reference uses. */
  ATTN_ROPE_SCALING_YARN = 4,
  /** "llama3": with wavelength l_i = 2 pi / w_i, L_lo = P0 / low_freq_factor,
   * L_hi = P0 / high_freq_factor: w_i / s if l_i > L_lo; w_i if l_i < L_hi;
   * else (1 - g) w_i / s + g w_i with g = (P0 / l_i - low_freq_factor) /
   * (high_freq_factor - low_freq_factor). */
  ATTN_ROPE_SCALING_LLAMA3 = 5,
  /** "longrope": w_i / f_i with f = long_factors when seq_len > P0, else
   * short_factors. Attention factor: the given one, else 1 for s <= 1, else
   * sqrt(1 + ln s / ln P0), which has no value for P0 = 1 (transformers
   * divides by zero): ATTN_ERR_INVALID_ARG then where the factor is used
   * (applied, or asked for through attn_rope_cache_fill()'s
   * attention_factor); tables that do not use it are filled. */
  ATTN_ROPE_SCALING_LONGROPE = 6,
  ATTN_ROPE_SCALING_MAX_ = 0x7fffffff
} attn_rope_scaling;

/** Parameters of attn_rope_cache_fill(). Zero means the default in every
 * field; the fields a scaling does not use must be 0. */
typedef struct attn_rope_cache_params {
  size_t struct_size;          /**< sizeof(attn_rope_cache_params) */
  int32_t scaling;             /**< attn_rope_scaling; 0 = none */
  int32_t apply_attention_factor; /**< nonzero: cos and sin are multiplied by the
                                   attention factor (as transformers does);
                                   0: the tables are plain cos and sin and the
                                   factor is only returned */
  double theta;                /**< base; 0 = 10000; finite and > 1 */
  double factor;               /**< s: finite and > 0; required (non-zero) by
                                    linear, ntk, dynamic, yarn and llama3; LongRoPE:
                                    0 = max_position / original_max_position */
  int64_t original_max_position; /**< P0 (> 0): required by dynamic, yarn, llama3,
                                      longrope */
  int64_t seq_len;             /**< dynamic and longrope: the sequence length the
                                    tables serve; 0 = max_position (the table's rows) */
  double beta_fast;            /**< yarn: 0 = 32 */
  double beta_slow;            /**< yarn: 0 = 1 */
  double mscale;               /**< yarn: 0 = unset; else finite and > 0 */
  double mscale_all_dim;       /**< yarn: 0 = unset; else finite and > 0 */
  double attention_factor;     /**< yarn, longrope: 0 = from the formula; else > 0 */
  double low_freq_factor;      /**< llama3: 0 = 1 */
  double high_freq_factor;     /**< llama3: 0 = 4; must exceed low_freq_factor */
  const double *short_factors; /**< longrope: r/2 finite factors > 0 */
  const double *long_factors;  /**< longrope: r/2 finite factors > 0 */
  int32_t yarn_no_truncate;    /**< yarn: nonzero keeps lo and hi unrounded
                                    (transformers' truncate = False) */
  int32_t reserved_;           /**< must be 0 */
} attn_rope_cache_params;

/** Fill `p` with the defaults (and its struct_size).
 * @param[out] p the parameters to fill; NULL is ignored.
 * @since 0.2.0 */
ATTN_API void attn_rope_cache_params_init(attn_rope_cache_params *p);

/** Fill rotary cos/sin tables for attn_rope_cached(): cos[p, i] = a cos(p w_i),
 * sin[p, i] = a sin(p w_i) for p in 0..P-1, with w_i the frequencies of the
 * chosen scaling (attn_rope_scaling) and a the attention factor when
 * apply_attention_factor is set, else 1. Frequencies, angles and sin/cos are
 * computed in double (transformers computes them in float32, so tables agree
 * to float32 rounding of the angle, about 1e-7 * p).
 * @param[in]  ctx the context.
 * @param[out] cos F32 [P, r/2]: P = max_position, r = the rotary dim. No zero
 *                 strides; must not overlap sin.
 * @param[out] sin F32 [P, r/2], the same shape.
 * @param[in]  p   NULL for defaults (no scaling, theta 10000).
 * @param[out] attention_factor receives the attention factor (the YaRN mscale;
 *                 1 for the scalings that have none); may be NULL.
 * @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_BAD_HANDLE, ATTN_ERR_UNSUPPORTED
 *  (dtype, newer params), ATTN_ERR_SHAPE (not 2-D, shapes differ, r/2 < 2 for
 *  ntk/dynamic, whose exponent r/(r-2) needs r > 2), ATTN_ERR_INVALID_ARG (a
 *  parameter out of range or set for a scaling that does not use it, strides;
 *  also finite parameters so extreme that a frequency or an angle overflows,
 *  or an applied attention factor outside float's normal range, which would
 *  write Inf, NaN or 0 into the tables), ATTN_ERR_ALIASING, ATTN_ERR_NO_MEMORY.
 *  Nothing is written on failure. Empty tables (P or r/2 zero) have no angles:
 *  the call checks the parameters and gives the attention factor.
 * @since 0.2.0 */
ATTN_API attn_status attn_rope_cache_fill(attn_ctx *ctx, attn_tensor *cos, attn_tensor *sin,
                                          const attn_rope_cache_params *p,
                                          double *attention_factor);

/** Parameters of attn_rope_cached(). */
typedef struct attn_rope_cached_params {
  size_t struct_size;          /**< sizeof(attn_rope_cached_params) */
  int32_t style;               /**< attn_rope_style; 0 = half-split */
  int32_t num_heads;           /**< 3-D x [B, L, H*D]: the head count H (> 0);
                                    must be 0 for 4-D x */
  const int64_t *position_ids; /**< [B, L] contiguous row indices into 2-D
                                    caches (0 <= id < P); NULL: token l reads
                                    row l. Must be NULL with 3-D caches. */
} attn_rope_cached_params;

/** Fill `p` with the defaults (and its struct_size).
 * @param[out] p the parameters to fill; NULL is ignored.
 * @since 0.2.0 */
ATTN_API void attn_rope_cached_params_init(attn_rope_cached_params *p);

/** Rotary embedding from caller-given cos/sin tables, as ONNX
 * RotaryEmbedding-23 and transformers' apply_rotary_pos_emb: the tables are
 * arbitrary (need not be cos and sin of any angle). With c, s the table rows
 * of token (b, l) and r = 2 * (last dim of the tables), pair (a, b) at index i
 * (half-split: x[i], x[i + r/2]; interleaved: x[2i], x[2i+1]) becomes
 * (a c_i - b s_i, a s_i + b c_i); dims r..D-1 are copied unchanged. The
 * arithmetic is in double, so the only rounding is the final store.
 * @param[in]  ctx the context.
 * @param[in]  x   F32, F16 or BF16 [B, H, L, D] (a [B, L, H, D] buffer as the
 *                 view with strides {L*H*D, D, H*D, 1}), or [B, L, H*D] with
 *                 params.num_heads = H. A half row is widened exactly and
 *                 rotated as a float one.
 * @param[out] y   F32, F16 or BF16 (any, whatever x is: the float result
 *                 rounded once), x's shape, no zero strides; may be x itself (in place);
 *                 any other overlap with x or the tables is ATTN_ERR_ALIASING.
 * @param[in]  cos F32 [P, r/2] indexed by position_ids (or token index), or
 *                 [B|1, L, r/2] per token (ONNX without position_ids; a batch
 *                 dim of 1 is shared). r must be even and <= D.
 * @param[in]  sin F32, cos's shape.
 * @param[in]  p   NULL for defaults (half-split, 4-D x, row l for token l).
 * @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_BAD_HANDLE, ATTN_ERR_UNSUPPORTED
 *  (dtype, newer params), ATTN_ERR_SHAPE (dims, H*D != x.shape[2], r > D, L > P
 *  without position_ids), ATTN_ERR_INVALID_ARG (style, num_heads, a position id
 *  outside 0..P-1, position_ids with 3-D tables, y strides), ATTN_ERR_ALIASING,
 *  ATTN_ERR_NO_MEMORY. Every position id is checked before y is touched.
 * Thread safety: uses up to the context's threads.
 * @since 0.2.0 */
ATTN_API attn_status attn_rope_cached(attn_ctx *ctx, const attn_tensor *x, attn_tensor *y,
                                      const attn_tensor *cos, const attn_tensor *sin,
                                      const attn_rope_cached_params *p);

/** Gradient of attn_rope(), in place: the rotation is orthogonal, so the
 * gradient of its input is the inverse rotation (angle -t) of the gradient
 * of its output: for pair (a, b), a' = a cos t + b sin t, b' = -a sin t +
 * b cos t; dims r..D-1 pass through. Pass the forward's parameters.
 * @param[in]     ctx the context.
 * @param[in,out] dx  F32, F16 or BF16 [B, H, L, D] (as attn_rope()'s x): on
 *  entry the gradient w.r.t. the rotated x, on return the gradient w.r.t.
 *  the input x.
 * @param[in] p the forward's parameters (NULL for defaults).
 * @return as attn_rope(). @since 0.2.0 */
ATTN_API attn_status attn_rope_backward(attn_ctx *ctx, attn_tensor *dx,
                                        const attn_rope_params *p);

/** ALiBi slopes for n_heads heads (Press et al.): with n = 2^floor(log2 n_heads),
 * m0 = 2^(-max_bias/n), m1 = 2^(-max_bias/(2n)): slope[h] = m0^(h+1) for h < n,
 * else m1^(2(h-n)+1). With max_bias = 8 this is the reference list, for any
 * head count (for a non-power of two, the n slopes of n heads followed by
 * every other slope of 2n heads). Each slope is computed as one power of
 * two, so n = 8, max_bias = 8 gives 2^-1 .. 2^-8 exactly.
 * @param[in]  ctx      the context (for the error message).
 * @param[in]  n_heads  number of heads, 1 .. 1<<20.
 * @param[in]  max_bias 0 = 8; finite and > 0.
 * @param[out] slopes   n_heads floats; written only on success.
 * @return ATTN_OK, ATTN_ERR_NULL_ARG (ctx or slopes), ATTN_ERR_BAD_HANDLE,
 *  ATTN_ERR_INVALID_ARG (n_heads < 1 or > 1<<20, max_bias).
 * @since 0.1.0 */
ATTN_API attn_status attn_alibi_slopes(attn_ctx *ctx, int32_t n_heads, double max_bias,
                                       float *slopes);
/** @} */

/** @name Scaled dot-product attention
 * @{ */

/** Parameters of attn_sdpa() and attn_sdpa_varlen().
 *
 * Let i be a query row of batch b, j a key, and i' the row's position among
 * the keys: i' = q_offsets[b] + i when q_offsets is set; otherwise i
 * (top-left alignment), or i + n_b - Lq (bottom-right) with n_b = kv_lens[b]
 * when kv_lens is set and Lk otherwise, so that the last query row sits at
 * the last valid key of its sequence (FlashAttention's
 * flash_attn_with_kvcache with cache_seqlens). The logit of (i, j) is
 *   s = cap(scale * q_i . k_j) + slope_h * (j - i') + mask[i, j]
 * where cap(x) = softcap * tanh(x / softcap) when softcap > 0. Key j is
 * visible to row i unless: causal and j > i'; window and (j < i' - window_left
 * or j > i' + window_right); kv_lens and j >= kv_lens[b]; bool_mask is 0;
 * mask is -inf. Visible keys get softmax weights over the row, plus the sink
 * logit in the denominator when sinks is set.
 * Masks are applied after the soft-cap, so a masked -inf stays -inf.
 *
 * Mask broadcasting (mask and bool_mask alike), NumPy's rules: the mask's
 * 1 to 4 axes align on the right with [B, Hq, Lq, Lk]; each of its dims
 * equals the target's or is 1 (repeated along that axis); missing leading
 * axes repeat too. So [Lk] (one row for every query), [Lq, Lk], [B, 1, 1, Lk]
 * (a padding mask) and [Hq, Lq, Lk] are all accepted; any other dim is
 * ATTN_ERR_SHAPE. A mask may be a zero-stride view.
 *
 * ALiBi without causal: the bias slope_h * (j - i') is the same linear
 * function on both sides of i', so keys after i' (visible when causal is 0)
 * get a positive bias growing with distance, as the formula says. For the
 * symmetric form -slope_h * |j - i'| (bidirectional models), pass it as an
 * additive mask instead.
 *
 * The library keeps none of these pointers (kv_lens, alibi_slopes, sinks,
 * q_offsets, tensors) after the call returns. */
typedef struct attn_sdpa_params {
  size_t struct_size;            /**< sizeof(attn_sdpa_params) */
  float scale;                   /**< 0 = 1/sqrt(D); must be finite */
  float softcap;                 /**< 0 = off; > 0 soft-caps the scaled logits */
  int32_t causal;                /**< nonzero: key j visible only if j <= i' */
  int32_t align;                 /**< attn_align: where i' sits; 0 = top-left */
  int32_t window;                /**< nonzero: sliding window, extents below */
  int32_t reserved_;             /**< must be 0 */
  int64_t window_left;           /**< keys j >= i' - window_left (>= 0) */
  int64_t window_right;          /**< keys j <= i' + window_right (>= 0) */
  const attn_tensor *mask;       /**< F32 additive, broadcast to [B, Hq, Lq, Lk]
                                      (rules above) */
  const attn_tensor *bool_mask;  /**< U8, nonzero = attend, broadcast likewise */
  const int64_t *kv_lens;        /**< [B]: keys j >= kv_lens[b] ignored (0..Lk) */
  const float *alibi_slopes;     /**< [Hq]: ALiBi slope per query head (finite) */
  const float *sinks;            /**< [Hq]: sink logit per query head (finite) */
  attn_tensor *lse;              /**< optional out [B, Hq, Lq]: natural log of the
                                      softmax denominator (sink included);
                                      -inf for a row with nothing visible */
  attn_tensor *weights;          /**< optional out [B, Hq, Lq, Lk]: the
                                      attention weights (0 where masked) */
  /** [B] (attn_sdpa_varlen: [batch], one per sequence), optional: the
   * position among the keys of each sequence's first query row; row i sits
   * at i' = q_offsets[b] + i (ONNX Attention's past length, or any cache
   * layout). Values may be negative (rows before the first key) and must lie
   * in [-2^60, 2^60]. It replaces the alignment, so align must then be
   * ATTN_ALIGN_TOP_LEFT (ATTN_ERR_INVALID_ARG otherwise). It moves the
   * causal diagonal, the window and the ALiBi distances; it hides no key by
   * itself (kv_lens still does). @since 0.2.0 */
  const int64_t *q_offsets;
  /** optional out [B, Hq, Lq, Lk]: the logits at stage `logits_stage`, for
   * every key (ONNX Attention's qk_matmul_output). Materialised only when
   * set, by a separate pass over Q K^T (so an Lq x Lk buffer exists only
   * then); F32 whatever q and k are (half q or k take a slower scalar
   * pass); attn_sdpa_varlen refuses it. @since 0.2.0 */
  attn_tensor *logits;
  int32_t logits_stage; /**< attn_logits_stage; 0 = scaled Q K^T. @since 0.2.0 */
  int32_t reserved2_;   /**< must be 0 */
} attn_sdpa_params;

/** Which logits attn_sdpa_params.logits receives (ONNX Attention's
 * qk_matmul_output_mode 0, 1, 2; mode 3, the weights after softmax, is
 * attn_sdpa_params.weights). */
typedef enum attn_logits_stage {
  /** scale * q_i . k_j for every key, hidden or not (mode 0). */
  ATTN_LOGITS_SCALED = 0,
  /** cap(scale * q_i . k_j), after the soft-cap (mode 1; equal to
   * ATTN_LOGITS_SCALED when softcap is 0). */
  ATTN_LOGITS_SOFTCAPPED = 1,
  /** The logit s of attn_sdpa_params: after the soft-cap, ALiBi and the
   * additive mask, and -inf for every hidden key (causal, window, kv_lens,
   * boolean mask, -inf mask): what the softmax receives (mode 2). */
  ATTN_LOGITS_MASKED = 2,
  ATTN_LOGITS_STAGE_MAX_ = 0x7fffffff
} attn_logits_stage;

/** Alignment of the causal diagonal, the window and ALiBi when Lq != Lk. */
typedef enum attn_align {
  /** i' = i: query i sees keys j <= i (PyTorch is_causal, ONNX). */
  ATTN_ALIGN_TOP_LEFT = 0,
  /** i' = i + Lk - Lq, or i + kv_lens[b] - Lq with kv_lens: the last query
   * sees the last (valid) key (KV-cache decoding, FlashAttention >= 2.1). */
  ATTN_ALIGN_BOTTOM_RIGHT = 1,
  ATTN_ALIGN_MAX_ = 0x7fffffff
} attn_align;

/** Fill `p` with the defaults (and its struct_size).
 * @param[out] p the parameters to fill; NULL is ignored.
 * @since 0.1.0 */
ATTN_API void attn_sdpa_params_init(attn_sdpa_params *p);

/** Scaled dot-product attention O = softmax(S) V, S as in attn_sdpa_params.
 * @param[in]  ctx the context (threads, scratch, error message).
 * @param[in]  q   F32, F16 or BF16 [B, Hq, Lq, D] (each of q, k, v, out any of the
 *                 three: a half K/V cache with F32 queries reads half the bytes)
 * @param[in]  k   F32, F16 or BF16 [B, Hkv, Lk, D]; Hq must be a multiple of Hkv: query
 *                 head h reads kv head h / (Hq / Hkv) (grouped-query; Hkv = 1
 *                 is multi-query)
 * @param[in]  v   F32, F16 or BF16 [B, Hkv, Lk, Dv]
 * @param[out] out F32, F16 or BF16 [B, Hq, Lq, Dv], no zero strides, must not overlap
 *                 q, k, v or the masks (ATTN_ERR_ALIASING)
 * @param[in]  p   NULL for defaults; masks, options and the optional lse
 *                 and weights outputs (see attn_sdpa_params).
 *
 * A [B, L, H, D] buffer is passed as the [B, H, L, D] view with strides
 * {L*H*D, D, H*D, 1}; no copy is made.
 * Empty tensors: with B, Hq or Lq = 0 nothing is written; Lk = 0 gives
 * rows that see no key; D = 0 makes every dot product 0 (the logits are the
 * ALiBi and mask terms alone, whatever the scale); Dv = 0 leaves out empty
 * but lse and weights are computed. Hkv = 0 requires Hq = 0.
 * Results: a row with no visible key gives zeros (lse -inf, or the sink);
 * a NaN in q or k reaches the rows that see its key, a NaN in v the rows
 * that give its key a nonzero weight (a hidden key never leaks one), and a
 * +inf logit makes its row NaN (as in attn_softmax). The work takes O(tile)
 * memory per thread; an Lq x Lk buffer exists only if weights is requested.
 * @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_BAD_HANDLE, ATTN_ERR_UNSUPPORTED
 *  (dtype, newer params), ATTN_ERR_SHAPE (any mismatch), ATTN_ERR_INVALID_ARG
 *  (scale, softcap, align, window extents, kv_lens, strides),
 *  ATTN_ERR_ALIASING, ATTN_ERR_OVERFLOW (a dim too large for BLAS),
 *  ATTN_ERR_NO_MEMORY.
 * Thread safety: uses up to the context's threads; the result is the same
 * bits for any thread count (for a given BLAS thread setting: a threaded
 * OpenBLAS may round its products differently).
 * @since 0.1.0 */
ATTN_API attn_status attn_sdpa(attn_ctx *ctx, const attn_tensor *q, const attn_tensor *k,
                               const attn_tensor *v, attn_tensor *out,
                               const attn_sdpa_params *p);

/** Attention over packed variable-length sequences (as FlashAttention's
 * varlen entry point): sequence b holds query tokens cu_seqlens_q[b] to
 * cu_seqlens_q[b+1]-1 and key tokens cu_seqlens_k[b] to cu_seqlens_k[b+1]-1,
 * and attends only within itself.
 * @param[in]  ctx the context.
 * @param[in]  q   F32, F16 or BF16 [Tq, Hq, D]
 * @param[in]  k   F32, F16 or BF16 [Tk, Hkv, D]
 * @param[in]  v   F32, F16 or BF16 [Tk, Hkv, Dv]
 * @param[out] out F32, F16 or BF16 [Tq, Hq, Dv]
 * @param[in]  batch number of sequences (>= 0; 0 means no tokens)
 * @param[in]  cu_seqlens_q batch+1 query offsets, starting at 0,
 *             non-decreasing, ending at Tq.
 * @param[in]  cu_seqlens_k batch+1 key offsets, likewise, ending at Tk.
 * @param[in]  p as attn_sdpa(), except that mask, bool_mask, kv_lens and
 *             weights must be NULL, lse (if set) is [Hq, Tq], and q_offsets
 *             (if set) holds one offset per sequence: [batch].
 * @return as attn_sdpa(). @since 0.1.0 */
ATTN_API attn_status attn_sdpa_varlen(attn_ctx *ctx, const attn_tensor *q,
                                      const attn_tensor *k, const attn_tensor *v,
                                      attn_tensor *out, int32_t batch,
                                      const int64_t *cu_seqlens_q,
                                      const int64_t *cu_seqlens_k,
                                      const attn_sdpa_params *p);
/** @} */

/** @name Backward of scaled dot-product attention
 * @{ */

/** Optional outputs of attn_sdpa_backward(). Zero in any field means "not
 * computed". */
typedef struct attn_sdpa_backward_params {
  size_t struct_size;  /**< sizeof(attn_sdpa_backward_params) */
  attn_tensor *dmask;  /**< optional out F32 [B, Hq, Lq, Lk] (no broadcast):
                            dS, the gradient of each logit, which is the
                            gradient of an additive mask before its broadcast
                            axes are summed (the caller sums them); 0 where
                            the key is hidden. Needs no extra memory beyond
                            the tensor itself. */
  float *dsinks;       /**< optional out [Hq]: gradient of params.sinks,
                            summed over batches and rows; requires sinks */
} attn_sdpa_backward_params;

/** Fill `p` with the defaults (and its struct_size).
 * @param[out] p the parameters to fill; NULL is ignored.
 * @since 0.2.0 */
ATTN_API void attn_sdpa_backward_params_init(attn_sdpa_backward_params *p);

/** Gradients of attn_sdpa(): from q, k, v, the forward's output `out` and
 * log-sum-exp `lse` and the incoming gradient dout, the gradients dq, dk,
 * dv. With S the logits and P = exp(S - lse) the weights (recomputed tile by
 * tile exactly as the forward computes them, with the same visibility):
 *   D_i = dout_i . out_i,  dP = dout V^T,  dS = P (dP - D),
 *   dV = P^T dout,  dQ = scale * dX K,  dK = scale * dX^T Q,
 * where dX = dS, or dS (1 - tanh^2(scale q.k / softcap)) with a soft-cap
 * (the chain rule through the cap). Every product is a tile product, as in
 * attn_sdpa() (libattn's AVX2 / AVX-512 kernels, else cblas_sgemm); memory
 * is O(tile) per thread, never Lq x Lk (unless
 * dmask is requested, which is that size itself). Grouped-query heads: dk
 * and dv are summed over the query heads of each group. The sink's
 * gradient is -sum_i exp(sink - lse_i) D_i.
 * Results: a key that is hidden (or whose weight is 0) contributes nothing,
 * so a row with no visible key gives zero dq and adds nothing to dk and dv,
 * and a NaN in a hidden k or v never leaks; a NaN row of the forward (NaN
 * lse) gives NaN in dq and in the dk, dv rows of its visible keys.
 * Deterministic: the result does not depend on the thread count (each dq,
 * dk, dv row is summed in a fixed order by one thread).
 * @param[in]  ctx  the context.
 * @param[in]  q    F32 [B, Hq, Lq, D], as given to attn_sdpa().
 * @param[in]  k    F32 [B, Hkv, Lk, D].
 * @param[in]  v    F32 [B, Hkv, Lk, Dv].
 * @param[in]  out  F32 [B, Hq, Lq, Dv]: attn_sdpa()'s output.
 * @param[in]  lse  F32 [B, Hq, Lq]: the forward's log-sum-exp (params.lse).
 * @param[in]  dout F32 [B, Hq, Lq, Dv]: the gradient w.r.t. out.
 * @param[out] dq   F32 q's shape. Outputs have no zero strides and overlap
 *                  no operand (ATTN_ERR_ALIASING).
 * @param[out] dk   F32 k's shape.
 * @param[out] dv   F32 v's shape.
 * @param[in]  p    the forward's parameters, exactly as given to attn_sdpa()
 *                  (NULL for defaults); its lse, weights and logits fields
 *                  are not read, so the forward's struct can be passed as it is.
 * @param[in]  bp   optional outputs (NULL = none).
 * @return as attn_sdpa(), plus ATTN_ERR_INVALID_ARG for dsinks without
 *  sinks, and ATTN_ERR_UNSUPPORTED for a head count or head dim of 0 (Hq,
 *  Hkv, D or Dv; empty batches and sequences, B, Lq or Lk = 0, are taken).
 *  Nothing is written on failure.
 * Thread safety: uses up to the context's threads.
 * @since 0.2.0 */
ATTN_API attn_status attn_sdpa_backward(attn_ctx *ctx, const attn_tensor *q,
                                        const attn_tensor *k, const attn_tensor *v,
                                        const attn_tensor *out, const attn_tensor *lse,
                                        const attn_tensor *dout, attn_tensor *dq,
                                        attn_tensor *dk, attn_tensor *dv,
                                        const attn_sdpa_params *p,
                                        const attn_sdpa_backward_params *bp);

/** Gradients of attn_sdpa_varlen(), for packed variable-length sequences:
 * as attn_sdpa_backward() over each sequence, with the forward's
 * cu_seqlens offsets.
 * @param[in]  ctx  the context.
 * @param[in]  q    F32 [Tq, Hq, D]
 * @param[in]  k    F32 [Tk, Hkv, D]
 * @param[in]  v    F32 [Tk, Hkv, Dv]
 * @param[in]  out  F32 [Tq, Hq, Dv]: attn_sdpa_varlen()'s output.
 * @param[in]  lse  F32 [Hq, Tq]: its log-sum-exp.
 * @param[in]  dout F32 [Tq, Hq, Dv].
 * @param[out] dq   F32 q's shape.
 * @param[out] dk   F32 k's shape (a key of a sequence without queries: 0).
 * @param[out] dv   F32 v's shape.
 * @param[in]  batch, cu_seqlens_q, cu_seqlens_k as attn_sdpa_varlen().
 * @param[in]  p    the forward's parameters (mask, bool_mask and kv_lens
 *                  must be NULL, as there).
 * @param[in]  bp   optional outputs: dsinks (summed over the sequences);
 *                  dmask must be NULL.
 * @return as attn_sdpa_backward(). @since 0.2.0 */
ATTN_API attn_status attn_sdpa_varlen_backward(
    attn_ctx *ctx, const attn_tensor *q, const attn_tensor *k, const attn_tensor *v,
    const attn_tensor *out, const attn_tensor *lse, const attn_tensor *dout, attn_tensor *dq,
    attn_tensor *dk, attn_tensor *dv, int32_t batch, const int64_t *cu_seqlens_q,
    const int64_t *cu_seqlens_k, const attn_sdpa_params *p,
    const attn_sdpa_backward_params *bp);
/** @} */

/** @name Pooling over the sequence axis
 * The aggregation step that ends an attention pipeline: y = aggregate(x)
 * over the tokens of each sequence.
 * @{ */

/** How attn_pool() aggregates the kept tokens of a sequence. */
typedef enum attn_pool_mode {
  ATTN_POOL_SUM = 0,      /**< sum of the kept tokens */
  ATTN_POOL_MEAN = 1,     /**< sum divided by the number of kept tokens */
  ATTN_POOL_MAX = 2,      /**< elementwise maximum of the kept tokens */
  /** softmax-weighted average: y = sum_l w_l x_l with w = softmax of the
   * kept tokens' scores (params.scores) */
  ATTN_POOL_WEIGHTED = 3,
  ATTN_POOL_MODE_MAX_ = 0x7fffffff
} attn_pool_mode;

/** Parameters of attn_pool(). With x [B, L, D] the per-token tensors are
 * [B, L]; with x [B, H, L, D] they are [B, H, L] or [B, L] (shared by the
 * heads). Any of their dims may be 1 (broadcast). */
typedef struct attn_pool_params {
  size_t struct_size;          /**< sizeof(attn_pool_params) */
  int32_t mode;                /**< attn_pool_mode; 0 = sum */
  int32_t reserved_;           /**< must be 0 */
  const int64_t *lengths;      /**< optional [B]: tokens l >= lengths[b] are
                                    dropped (0 <= lengths[b] <= L) */
  const attn_tensor *keep;     /**< optional U8 per-token mask, nonzero = keep
                                    (combined with lengths) */
  const attn_tensor *scores;   /**< F32, F16 or BF16 per-token scores;
                                    required by ATTN_POOL_WEIGHTED, NULL
                                    otherwise */
} attn_pool_params;

/** Fill `p` with the defaults (and its struct_size).
 * @param[out] p the parameters to fill; NULL is ignored.
 * @since 0.2.0 */
ATTN_API void attn_pool_params_init(attn_pool_params *p);

/** Pool x over its sequence axis L.
 * A sequence with no kept token gives zeros in every mode (max and weighted
 * too); so does a weighted sequence whose kept scores are all -inf. A NaN in
 * x reaches only the output elements that read it (a dropped token is never
 * read; max propagates NaN; in the weighted mode a kept token whose score
 * is -inf is still read, so a NaN in its x makes the output NaN, 0 x NaN,
 * as torch gives); a NaN or +inf among a sequence's kept scores
 * makes its weighted output NaN (as attn_softmax). Sums and the softmax are
 * accumulated in double.
 *
 * x, out and params.scores are each F32, F16 or BF16, in any combination:
 * half values are widened exactly, the computation is the F32 one, and
 * each output element is the double result rounded once to out's type,
 * to nearest even (an F16 out overflows to Inf past 65504; max copies an
 * input value, exact in any type at least as wide).
 * @param[in]  ctx the context.
 * @param[in]  x   F32, F16 or BF16 [B, L, D] or [B, H, L, D], any strides.
 * @param[out] out F32, F16 or BF16 [B, D] or [B, H, D], no zero strides,
 *                 not overlapping x or the per-token tensors.
 * @param[in]  p   NULL for defaults (sum over every token).
 * @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_BAD_HANDLE, ATTN_ERR_UNSUPPORTED
 *  (dtype, newer params), ATTN_ERR_SHAPE, ATTN_ERR_INVALID_ARG (mode, scores
 *  missing or unexpected, lengths, strides), ATTN_ERR_ALIASING,
 *  ATTN_ERR_NO_MEMORY.
 * Thread safety: uses up to the context's threads.
 * @since 0.2.0 */
ATTN_API attn_status attn_pool(attn_ctx *ctx, const attn_tensor *x, attn_tensor *out,
                               const attn_pool_params *p);

/** Gradients of attn_pool(): from its input x and the incoming gradient
 * dout, the gradient dx and, in the weighted mode, the gradient of the
 * scores. Per sequence, over its kept tokens l (count n, weights w):
 * - sum: dx_l = dout; mean: dx_l = dout / n;
 * - max: for each feature d, dout[d] goes to the one token the forward's
 *   output came from: the earliest kept token holding the maximum (ties go
 *   to the first), the first kept NaN if there is one, the first kept token
 *   if every value is -inf; the other tokens get 0;
 * - weighted: dx_l = w_l dout and dscores_l = w_l (dout . x_l - dout . y),
 *   y = sum_k w_k x_k recomputed in double from x over the tokens of
 *   nonzero weight; a token of weight 0 (its score -inf, or underflowed)
 *   gets 0 in both and its x is not read (a NaN there, which makes the
 *   forward's output NaN, reaches no gradient).
 * Dropped tokens (lengths, keep) get 0 in dx and dscores whatever x and
 * the scores hold there; a sequence whose forward gives zeros (nothing
 * kept, or every kept score -inf) gets zeros; a weighted sequence whose
 * forward is NaN (a NaN or +inf kept score) gets NaN in the dx rows and
 * dscores of its kept tokens. Sums are in double; the result does not
 * depend on the thread count. Types as attn_pool(): each of x, dout,
 * params.scores, dx and dscores is F32, F16 or BF16 on its own, and each
 * output element is rounded once from double.
 * @param[in]  ctx     the context.
 * @param[in]  x       F32, F16 or BF16, the forward's x.
 * @param[in]  dout    F32, F16 or BF16, the gradient w.r.t. the forward's
 *                     out (its shape).
 * @param[out] dx      F32, F16 or BF16, x's shape, no zero strides; every
 *                     element is written. Outputs overlap no operand.
 * @param[out] dscores optional F32, F16 or BF16 with params.scores' shape
 *                     (weighted mode only): the gradient summed over the
 *                     axes along which scores is broadcast (its dims of 1);
 *                     NULL = not computed.
 * @param[in]  p       the forward's parameters, as given to attn_pool().
 * @return as attn_pool(), plus ATTN_ERR_INVALID_ARG for dscores without
 *  scores. Nothing is written on failure.
 * Thread safety: uses up to the context's threads.
 * @since 0.2.0 */
ATTN_API attn_status attn_pool_backward(attn_ctx *ctx, const attn_tensor *x,
                                        const attn_tensor *dout, attn_tensor *dx,
                                        attn_tensor *dscores, const attn_pool_params *p);

/** Parameters of attn_pool_attention(). */
typedef struct attn_pool_attention_params {
  size_t struct_size;          /**< sizeof(attn_pool_attention_params) */
  float scale;                 /**< 0 = 1/sqrt(D); finite */
  int32_t reserved_;           /**< must be 0 */
  const int64_t *lengths;      /**< optional [B]: keys l >= lengths[b] ignored */
  const attn_tensor *keep;     /**< optional U8 [B, L], nonzero = attend */
  attn_tensor *weights;        /**< optional out [B, Hq, M, L]: the weights */
  attn_tensor *lse;            /**< optional out F32 [B, Hq, M]: the log-sum-exp
                                    of each query's logits, for
                                    attn_pool_attention_backward() (as
                                    attn_sdpa_params.lse). @since 0.2.0 */
} attn_pool_attention_params;

/** Fill `p` with the defaults (and its struct_size).
 * @param[out] p the parameters to fill; NULL is ignored.
 * @since 0.2.0 */
ATTN_API void attn_pool_attention_params_init(attn_pool_attention_params *p);

/** Learned-query attention pooling (CLIP's attention pool, Set Transformer's
 * PMA): M query vectors per head, shared by every sequence, attend over the
 * sequence's keys and values through the SDPA kernel:
 * out[b, h] = softmax(scale * queries[h] k[b, h']^T) v[b, h'], h' = h / (Hq / Hkv).
 * For the plain aggregation of x [B, L, D] pass k = v = x viewed as
 * [B, 1, L, D]. A sequence with no kept key gives zeros.
 * @param[in]  ctx     the context.
 * @param[in]  queries F32, F16 or BF16 [Hq, M, D], any strides.
 * @param[in]  k       F32, F16 or BF16 [B, Hkv, L, D]; Hq a multiple of Hkv.
 * @param[in]  v       F32, F16 or BF16 [B, Hkv, L, Dv].
 * @param[out] out     F32, F16 or BF16 [B, Hq, M, Dv], not overlapping any input
 *                     (each type on its own, as attn_sdpa()).
 * @param[in]  p       NULL for defaults.
 * @return as attn_sdpa(). @since 0.2.0 */
ATTN_API attn_status attn_pool_attention(attn_ctx *ctx, const attn_tensor *queries,
                                         const attn_tensor *k, const attn_tensor *v,
                                         attn_tensor *out,
                                         const attn_pool_attention_params *p);

/** Gradients of attn_pool_attention(): attn_sdpa_backward() on the same
 * problem (queries as [B, Hq, M, D] shared by the batch, keep as the
 * boolean mask, lengths as kv_lens), with the queries' gradient summed
 * over the batch (in batch order). Rows with no kept key give nothing; a
 * dropped key gets dk = dv = 0 and its NaN never leaks. Takes B * Hq * M * D
 * floats of workspace (the per-batch query gradients) besides the
 * backward's tiles. Deterministic (the same bits for any thread count).
 * F32 operands only (the SDPA backward's type): half ones are refused
 * with ATTN_ERR_UNSUPPORTED.
 * @param[in]  ctx      the context.
 * @param[in]  queries  F32 [Hq, M, D], as given to the forward.
 * @param[in]  k        F32 [B, Hkv, L, D].
 * @param[in]  v        F32 [B, Hkv, L, Dv].
 * @param[in]  out      F32 [B, Hq, M, Dv]: the forward's output.
 * @param[in]  lse      F32 [B, Hq, M]: the forward's params.lse.
 * @param[in]  dout     F32 [B, Hq, M, Dv]: the gradient w.r.t. out.
 * @param[out] dqueries F32 queries' shape; no zero strides, overlapping no
 *                      operand (as dk and dv).
 * @param[out] dk       F32 k's shape.
 * @param[out] dv       F32 v's shape.
 * @param[in]  p        the forward's parameters (NULL for defaults); its
 *                      weights and lse fields are not read.
 * @return as attn_sdpa_backward(). Nothing is written on failure.
 * Thread safety: uses up to the context's threads.
 * @since 0.2.0 */
ATTN_API attn_status attn_pool_attention_backward(
    attn_ctx *ctx, const attn_tensor *queries, const attn_tensor *k, const attn_tensor *v,
    const attn_tensor *out, const attn_tensor *lse, const attn_tensor *dout,
    attn_tensor *dqueries, attn_tensor *dk, attn_tensor *dv,
    const attn_pool_attention_params *p);
/** @} */

/** @name KV cache
 * Keys and values of past tokens for incremental decoding, per sequence.
 *
 * A cache holds B sequences of Hkv heads, keys of dim D and values of dim
 * Dv, and a length per sequence. Keys and values are stored as F32, F16 or
 * BF16 (attn_kv_cache_params.dtype; a half cache takes half the memory and
 * a decode step reads half the bytes). Appends take F32 or half rows of any
 * of the three types and round them once, to nearest even, into the cache's
 * type (as attn_tensor_copy()); attn_kv_read() converts back likewise;
 * attn_kv_attend() reads half rows in place, widening each key/value tile
 * to float inside the kernel, and accumulates in float. Attention over a
 * half cache is therefore within the F32 bound of the float64 attention
 * over the cache's (rounded) contents. Two layouts:
 * - ATTN_KV_CONTIGUOUS: keys [B, Hkv, capacity, D] and values
 *   [B, Hkv, capacity, Dv], owned (attn_kv_cache_create()) or wrapped
 *   caller memory with any strides (attn_kv_cache_wrap()).
 * - ATTN_KV_PAGED (vLLM's PagedAttention): a pool of num_blocks blocks of
 *   block_size tokens, keys [num_blocks, Hkv, block_size, D] and values
 *   likewise, and a block table per sequence. A sequence takes blocks from
 *   the pool as it grows and returns them when truncated or reset; a copy
 *   (attn_kv_copy()) shares the source's blocks (reference counts) and the
 *   first append into a shared, partly filled block copies that block first.
 *
 * Every function checks all its arguments before it changes anything: on
 * failure the cache (contents, lengths, blocks) is exactly as before.
 * A cache belongs to the context it was created from and is used with it;
 * it is freed by attn_kv_cache_free() or attn_ctx_destroy().
 * @{ */

/** Opaque KV cache; made by attn_kv_cache_create() or attn_kv_cache_wrap(). */
typedef struct attn_kv_cache attn_kv_cache;

/** Storage layouts of a KV cache. */
typedef enum attn_kv_layout {
  ATTN_KV_CONTIGUOUS = 0, /**< [B, Hkv, capacity, D]: a fixed capacity per sequence */
  ATTN_KV_PAGED = 1,      /**< blocks of block_size tokens from a shared pool */
  ATTN_KV_LAYOUT_MAX_ = 0x7fffffff
} attn_kv_layout;

/** Parameters of attn_kv_cache_create(). batch, kv_heads, head_dim and
 * capacity (contiguous) or num_blocks (paged) have no default. */
typedef struct attn_kv_cache_params {
  size_t struct_size;  /**< sizeof(attn_kv_cache_params) */
  int32_t layout;      /**< attn_kv_layout; 0 = contiguous */
  int32_t dtype;       /**< keys' and values' attn_dtype: 0 = ATTN_DTYPE_F32,
                            ATTN_DTYPE_F16 or ATTN_DTYPE_BF16 (@since 0.2.0) */
  int64_t batch;       /**< B: sequences, >= 1 */
  int64_t kv_heads;    /**< Hkv: key/value heads, >= 1 */
  int64_t head_dim;    /**< D: key dim, >= 1 */
  int64_t value_dim;   /**< Dv: value dim; 0 = head_dim */
  int64_t capacity;    /**< most tokens one sequence holds: contiguous >= 1;
                            paged 0 = num_blocks * block_size */
  int64_t block_size;  /**< paged: tokens per block; 0 = 16 */
  int64_t num_blocks;  /**< paged: blocks in the pool, >= 1 */
} attn_kv_cache_params;

/** Fill `p` with the defaults (and its struct_size).
 * @param[out] p the parameters to fill; NULL is ignored.
 * @since 0.2.0 */
ATTN_API void attn_kv_cache_params_init(attn_kv_cache_params *p);

/** Create an empty cache (every length 0) owning its memory. The memory is
 * allocated once here (B * Hkv * capacity * (D + Dv) elements contiguous,
 * num_blocks * Hkv * block_size * (D + Dv) paged, 4 or 2 bytes each) and
 * written once in address order (so that its pages are mapped before
 * decoding, in the order attention reads them); its values do not matter:
 * nothing ever reads a row past a sequence's length. On Linux, with the
 * context's default allocator (no attn_ctx_options::alloc), memory of 2 MiB
 * or more is aligned to 2 MiB and advised for transparent huge pages
 * (madvise(MADV_HUGEPAGE)) before that first write, so a decode step takes
 * far fewer TLB misses; the advice may be declined (THP off, no free huge
 * pages) without any effect on results. A caller's allocator's memory is
 * left as it comes.
 * @param[in]  ctx owner.
 * @param[in]  p   the sizes (required, see attn_kv_cache_params).
 * @param[out] out receives the cache; written only on success.
 * @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_BAD_HANDLE, ATTN_ERR_INVALID_ARG
 *  (layout, a size < 1, paged capacity > num_blocks * block_size),
 *  ATTN_ERR_UNSUPPORTED (dtype, newer params), ATTN_ERR_OVERFLOW (sizes),
 *  ATTN_ERR_NO_MEMORY.
 * @since 0.2.0 */
ATTN_API attn_status attn_kv_cache_create(attn_ctx *ctx, const attn_kv_cache_params *p,
                                          attn_kv_cache **out);

/** Wrap caller memory as a contiguous cache, without copying: keys k
 * [B, Hkv, capacity, D] and values v [B, Hkv, capacity, Dv] (Hkv, D and Dv
 * >= 1, as attn_kv_cache_create()), tensors of ctx
 * (F32, F16 or BF16, both of one dtype, which becomes the cache's; any
 * strides with no two indices sharing an element, k and v not
 * overlapping). The cache reads and writes the memory they view, which must
 * outlive the cache; freeing the tensors afterwards does not affect it.
 * @param[in]  ctx  owner.
 * @param[in]  k    keys; capacity = k.shape[2].
 * @param[in]  v    values; shape [B, Hkv, capacity, Dv].
 * @param[in]  lens B initial lengths (0..capacity): tokens already in the
 *                  memory (a restored cache); NULL = all 0.
 * @param[out] out  receives the cache; written only on success.
 * @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_BAD_HANDLE, ATTN_ERR_UNSUPPORTED
 *  (dtype, k and v of different dtypes), ATTN_ERR_SHAPE, ATTN_ERR_INVALID_ARG (strides, lens),
 *  ATTN_ERR_ALIASING, ATTN_ERR_NO_MEMORY.
 * @since 0.2.0 */
ATTN_API attn_status attn_kv_cache_wrap(attn_ctx *ctx, const attn_tensor *k,
                                        const attn_tensor *v, const int64_t *lens,
                                        attn_kv_cache **out);

/** Free a cache before its context is destroyed (owned memory too; wrapped
 * memory is left alone).
 * @param[in] ctx   the context the cache was created from.
 * @param[in] cache the cache; NULL is a no-op returning ATTN_OK.
 * @return ATTN_OK, ATTN_ERR_NULL_ARG (ctx), ATTN_ERR_BAD_HANDLE (freed, or
 *  from another context).
 * @since 0.2.0 */
ATTN_API attn_status attn_kv_cache_free(attn_ctx *ctx, attn_kv_cache *cache);

/** What a cache is and holds, from attn_kv_cache_info(). */
typedef struct attn_kv_cache_info {
  size_t struct_size;  /**< sizeof(attn_kv_cache_info), set by the caller */
  int32_t layout;      /**< attn_kv_layout */
  int32_t dtype;       /**< attn_dtype of keys and values */
  int64_t batch;       /**< B */
  int64_t kv_heads;    /**< Hkv */
  int64_t head_dim;    /**< D */
  int64_t value_dim;   /**< Dv */
  int64_t capacity;    /**< most tokens one sequence may hold */
  int64_t block_size;  /**< paged: tokens per block; contiguous: 0 */
  int64_t num_blocks;  /**< paged: blocks in the pool; contiguous: 0 */
  int64_t free_blocks; /**< paged: blocks no sequence holds; contiguous: 0 */
} attn_kv_cache_info;

/** Describe a cache.
 * @param[in]  ctx   the cache's context.
 * @param[in]  cache the cache.
 * @param[out] info  filled up to info->struct_size (which the caller sets;
 *                   at least sizeof(size_t)).
 * @param[out] lens  optional: B current lengths.
 * @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_BAD_HANDLE, ATTN_ERR_INVALID_ARG
 *  (info->struct_size).
 * @since 0.2.0 */
ATTN_API attn_status attn_kv_cache_info_get(attn_ctx *ctx, const attn_kv_cache *cache,
                                            attn_kv_cache_info *info, int64_t *lens);

/** Parameters of attn_kv_append(). */
typedef struct attn_kv_append_params {
  size_t struct_size;            /**< sizeof(attn_kv_append_params) */
  /** NULL = keys stored as given. Otherwise rotary embedding applied to the
   * new keys before they are stored, as attn_rope() with this style,
   * rotary_dim and theta, token i of sequence b at its absolute position
   * len_b + i (len_b: the length before the append); offset must be 0 and
   * positions NULL. The rotation is computed in float and rounded once into
   * a half cache. */
  const attn_rope_params *rope;
} attn_kv_append_params;

/** Fill `p` with the defaults (and its struct_size).
 * @param[out] p the parameters to fill; NULL is ignored.
 * @since 0.2.0 */
ATTN_API void attn_kv_append_params_init(attn_kv_append_params *p);

/** Append a step's new keys and values: rows 0..n_new[b]-1 of sequence b
 * are stored at positions len_b .. len_b + n_new[b] - 1, and the length
 * grows by n_new[b] (0 is allowed: the sequence is left alone). Rows
 * i >= n_new[b] of k_new and v_new are not read.
 * @param[in] ctx   the cache's context.
 * @param[in] cache the cache.
 * @param[in] k_new F32, F16 or BF16 [B, Hkv, L, D], any strides (converted
 *                  to the cache's dtype, one rounding).
 * @param[in] v_new F32, F16 or BF16 [B, Hkv, L, Dv], any strides.
 * @param[in] n_new B counts in 0..L; NULL = L for every sequence.
 * @param[in] p     NULL for defaults (no RoPE).
 * @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_BAD_HANDLE, ATTN_ERR_UNSUPPORTED
 *  (dtype, newer params), ATTN_ERR_SHAPE (B, heads or dims differ from the
 *  cache's), ATTN_ERR_INVALID_ARG (an n_new out of range, a sequence past
 *  its capacity, rope), ATTN_ERR_NO_MEMORY (paged: the pool has too few free
 *  blocks for the whole step; nothing is appended). k_new and v_new may not
 *  overlap the cache's memory (ATTN_ERR_ALIASING).
 * @since 0.2.0 */
ATTN_API attn_status attn_kv_append(attn_ctx *ctx, attn_kv_cache *cache,
                                    const attn_tensor *k_new, const attn_tensor *v_new,
                                    const int64_t *n_new, const attn_kv_append_params *p);

/** Shorten sequence `seq` to `len` tokens (beam search, speculative-decoding
 * rollback); paged: blocks past the new end return to the pool. Appending
 * after a truncate gives the same cache as never having appended the
 * removed tokens.
 * @param[in] ctx   the cache's context.
 * @param[in] cache the cache.
 * @param[in] seq   0..B-1.
 * @param[in] len   0..the current length.
 * @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_BAD_HANDLE, ATTN_ERR_INVALID_ARG.
 * @since 0.2.0 */
ATTN_API attn_status attn_kv_truncate(attn_ctx *ctx, attn_kv_cache *cache, int64_t seq,
                                      int64_t len);

/** Empty sequence `seq`, or every sequence when seq = -1 (same as
 * attn_kv_truncate() to 0).
 * @param[in] ctx   the cache's context.
 * @param[in] cache the cache.
 * @param[in] seq   0..B-1, or -1 for all.
 * @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_BAD_HANDLE, ATTN_ERR_INVALID_ARG.
 * @since 0.2.0 */
ATTN_API attn_status attn_kv_reset(attn_ctx *ctx, attn_kv_cache *cache, int64_t seq);

/** Make sequence `dst` a copy of sequence `src` (its keys, values and
 * length); what dst held is dropped. Contiguous: the rows are copied
 * (dst's capacity is the same). Paged: dst shares src's blocks, no data is
 * copied; the first append to either into a shared, partly filled block
 * copies that block (copy on write), so both diverge from there.
 * @param[in] ctx   the cache's context.
 * @param[in] cache the cache.
 * @param[in] dst   0..B-1.
 * @param[in] src   0..B-1 (dst == src is a no-op).
 * @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_BAD_HANDLE, ATTN_ERR_INVALID_ARG.
 * @since 0.2.0 */
ATTN_API attn_status attn_kv_copy(attn_ctx *ctx, attn_kv_cache *cache, int64_t dst,
                                  int64_t src);

/** Read back the keys and values of sequence `seq` at positions `start` to
 * `start + n - 1` (checkpointing, migration, tests).
 * @param[in]  ctx   the cache's context.
 * @param[in]  cache the cache.
 * @param[in]  seq   0..B-1.
 * @param[in]  start first position, >= 0; start + n <= the sequence's length.
 * @param[out] k     F32, F16 or BF16 [Hkv, n, D], writable, or NULL to skip
 *                   the keys (the cache's values converted: exact to F32 or
 *                   to the cache's own type, else rounded once).
 * @param[out] v     F32, F16 or BF16 [Hkv, n, Dv], writable (same n), or NULL.
 * @return ATTN_OK, ATTN_ERR_NULL_ARG (k and v both NULL), ATTN_ERR_BAD_HANDLE,
 *  ATTN_ERR_UNSUPPORTED (dtype), ATTN_ERR_SHAPE, ATTN_ERR_INVALID_ARG (seq,
 *  range, strides), ATTN_ERR_ALIASING (k or v overlaps the cache, or each
 *  other).
 * @since 0.2.0 */
ATTN_API attn_status attn_kv_read(attn_ctx *ctx, const attn_kv_cache *cache, int64_t seq,
                                  int64_t start, attn_tensor *k, attn_tensor *v);

/** Attention of new queries against the cache, read in place (paged: tile
 * by tile through the block table, tiles never crossing a block; no copy of
 * the cache is made). Query row i < n_new[b] of sequence b sits at position
 * i' = len_b - n_new[b] + i (len_b: the current length, so the rows are the
 * last n_new[b] tokens appended), and sees the keys j < len_b, with the
 * logit, causal mask (j <= i'), window, ALiBi, soft-cap, sinks and
 * grouped-query heads of attn_sdpa_params. Rows i >= n_new[b] are written
 * with zeros (lse -inf). Long caches are split over keys across threads and
 * merged through their log-sum-exp, in a fixed order.
 * @param[in]  ctx   the cache's context.
 * @param[in]  cache the cache.
 * @param[in]  q     F32, F16 or BF16 [B, Hq, Lq, D], Hq a multiple of the
 *                   cache's Hkv (any dtype with any cache dtype).
 * @param[out] out   F32, F16 or BF16 [B, Hq, Lq, Dv], no overlap with q or
 *                   the cache (a half output is the float result rounded once).
 * @param[in]  n_new B counts in 0..min(Lq, len_b); NULL = Lq for every
 *                   sequence (then Lq <= every length).
 * @param[in]  p     as attn_sdpa() (scale, softcap, causal, window, ALiBi,
 *                   sinks, lse [B, Hq, Lq]); mask, bool_mask, kv_lens,
 *                   q_offsets, weights and logits must be NULL; align is ignored
 *                   (positions come from the cache).
 * @return as attn_sdpa(), and ATTN_ERR_INVALID_ARG for an n_new out of range.
 * @since 0.2.0 */
ATTN_API attn_status attn_kv_attend(attn_ctx *ctx, const attn_kv_cache *cache,
                                    const attn_tensor *q, attn_tensor *out,
                                    const int64_t *n_new, const attn_sdpa_params *p);
/** @} */

/** @name Decoder attention layer
 * The attention block of current decoder language models, owning its
 * weights: q/k/v projections of x [B, L, E], rotary embedding, attention
 * through a KV cache, output projection.
 *
 * For each new token t of sequence b (position p = len_b + i, len_b the
 * cache length before the call):
 *   q = x_t Wq^T + bq  [Hq, D],  k = x_t Wk^T + bk  [Hkv, D],
 *   v = x_t Wv^T + bv  [Hkv, D];
 *   q and k rotated at position p (if rope is set); k, v appended to the
 *   cache; a = attention of q over the cache (causal, grouped-query, the
 *   window and soft-cap below), heads concatenated [Hq * D];
 *   y_t = a Wo^T + bo  [E].
 * Weights use PyTorch nn.Linear layouts (row-major [out_features,
 * in_features]), so a checkpoint's q_proj/k_proj/v_proj/o_proj load as
 * they are: Wq [Hq*D, E], Wk and Wv [Hkv*D, E], Wo [E, Hq*D], biases
 * [Hq*D], [Hkv*D], [Hkv*D], [E]. The projections of a call's tokens (those
 * counted by n_new) are one product for q, k and v and one for the output (libattn's
 * own kernels; cblas_sgemm without AVX2). A layer created from a context is used
 * with it and freed with it (or by attn_mha_free()).
 *
 * Weights, both layer forms: a weight copied in by attn_mha_set_weight() is
 * owned by the layer and held once, as F32. With libattn's own product
 * kernels (every kernel set of attn_cpu_info() but sse2) it is held in the
 * packed form the products read: a projection's weight [n, k] and its bias
 * take (n rounded up to a multiple of 32) x (k + 1) floats (bias zeros if
 * it has none), so the four projections of an E = 1024 layer take 16 MiB +
 * 16 KiB; with sse2, row-major. A weight used in place by
 * attn_mha_wrap_weight() is read on every forward and packed per call into
 * the context's workspace, as is every owned weight of its group (q/k/v,
 * or the output projection): those are held row-major meanwhile and go
 * back to the packed form when the group's last wrapped weight is set
 * again. The caller may change wrapped memory between calls, and the next
 * call uses the new values.
 * @{ */

/** Opaque attention layer; made by attn_mha_create_decoder() or
 * attn_mha_create_torch(). */
typedef struct attn_mha attn_mha;

/** Parameters of attn_mha_create_decoder(). embed_dim and num_heads have no
 * default. */
typedef struct attn_mha_decoder_params {
  size_t struct_size;     /**< sizeof(attn_mha_decoder_params) */
  int64_t embed_dim;      /**< E: model width, >= 1 */
  int64_t num_heads;      /**< Hq: query heads, >= 1 */
  int64_t num_kv_heads;   /**< Hkv: key/value heads (divides Hq); 0 = Hq */
  int64_t head_dim;       /**< D; 0 = E / Hq (E must then be a multiple of Hq) */
  int32_t qkv_bias;       /**< nonzero: q, k, v projections have biases */
  int32_t out_bias;       /**< nonzero: the output projection has a bias */
  /** NULL = no rotary embedding; else style, rotary_dim and theta as
   * attn_rope() (offset 0, positions NULL: positions come from the cache).
   * The struct is copied at creation. */
  const attn_rope_params *rope;
  float scale;            /**< 0 = 1/sqrt(D) */
  float softcap;          /**< 0 = off; > 0 soft-caps the logits */
  int32_t window;         /**< nonzero: keys j >= p - window_left only */
  int32_t reserved_;      /**< must be 0 */
  int64_t window_left;    /**< sliding window extent (>= 0) */
  /** NULL = the plain frequencies of `rope`. Otherwise a long-context
   * scaling (linear, NTK, dynamic NTK, YaRN, Llama-3, LongRoPE; needs
   * `rope`): q and k are rotated exactly as attn_rope_cached() with the
   * tables attn_rope_cache_fill() fills from these params for seq_len rows,
   * with rope's style and rotary dim, except that positions are not
   * limited to seq_len rows (the angles are computed per position, in
   * double). theta must be 0 or rope's theta (the base is rope's). Set
   * apply_attention_factor to multiply the rotated dims of q and k by the
   * attention factor (YaRN's mscale, LongRoPE's), as transformers does: the
   * logits then scale by its square. seq_len takes the table length's role:
   * dynamic NTK and LongRoPE need it (non-zero), and it picks their
   * frequencies once for the layer's lifetime (transformers' dynamic NTK
   * recomputes the base as a sequence grows, which changes keys already in a
   * cache; a cached layer keeps one base); LongRoPE's factor 0 means
   * seq_len / original_max_position. Frequencies whose angle is not finite
   * at some int64 position, and an applied attention factor outside float's
   * range, are refused. The struct and its factor arrays are read at
   * creation only. @since 0.2.0 */
  const attn_rope_cache_params *rope_scaling;
} attn_mha_decoder_params;

/** Fill `p` with the defaults (and its struct_size).
 * @param[out] p the parameters to fill; NULL is ignored.
 * @since 0.2.0 */
ATTN_API void attn_mha_decoder_params_init(attn_mha_decoder_params *p);

/** The weights of a layer, as attn_mha_set_weight() names them. */
typedef enum attn_mha_weight {
  ATTN_MHA_Q_WEIGHT = 0, /**< Wq [Hq*D, E] */
  ATTN_MHA_K_WEIGHT = 1, /**< Wk [Hkv*D, E] */
  ATTN_MHA_V_WEIGHT = 2, /**< Wv [Hkv*D, E] */
  ATTN_MHA_O_WEIGHT = 3, /**< Wo [E, Hq*D] */
  ATTN_MHA_Q_BIAS = 4,   /**< bq [Hq*D] (qkv_bias) */
  ATTN_MHA_K_BIAS = 5,   /**< bk [Hkv*D] (qkv_bias) */
  ATTN_MHA_V_BIAS = 6,   /**< bv [Hkv*D] (qkv_bias) */
  ATTN_MHA_O_BIAS = 7,   /**< bo [E] (out_bias) */
  /** PyTorch form, kdim = vdim = E: in_proj_weight [3E, E], rows Wq; Wk; Wv.
   * @since 0.2.0 */
  ATTN_MHA_IN_PROJ_WEIGHT = 8,
  /** PyTorch form with bias: in_proj_bias [3E], bq; bk; bv. @since 0.2.0 */
  ATTN_MHA_IN_PROJ_BIAS = 9,
  ATTN_MHA_WEIGHT_MAX_ = 0x7fffffff
} attn_mha_weight;

/** Create a decoder layer. Its weights are owned, zero-filled, until set.
 * @param[in]  ctx owner.
 * @param[in]  p   the sizes and options.
 * @param[out] out receives the layer; written only on success.
 * @return ATTN_OK, ATTN_ERR_NULL_ARG (also LongRoPE's factor arrays),
 *  ATTN_ERR_BAD_HANDLE, ATTN_ERR_INVALID_ARG (a size, heads not dividing,
 *  rope, rope_scaling as attn_rope_cache_fill() checks it, scale, softcap,
 *  window), ATTN_ERR_SHAPE (NTK scalings with a rotary dim of 2),
 *  ATTN_ERR_UNSUPPORTED (newer params), ATTN_ERR_OVERFLOW, ATTN_ERR_NO_MEMORY.
 * @since 0.2.0 */
ATTN_API attn_status attn_mha_create_decoder(attn_ctx *ctx, const attn_mha_decoder_params *p,
                                             attn_mha **out);

/** Free a layer (its owned weights and buffers; wrapped weights are left
 * alone).
 * @param[in] ctx   the layer's context.
 * @param[in] layer the layer; NULL is a no-op returning ATTN_OK.
 * @return ATTN_OK, ATTN_ERR_NULL_ARG (ctx), ATTN_ERR_BAD_HANDLE.
 * @since 0.2.0 */
ATTN_API attn_status attn_mha_free(attn_ctx *ctx, attn_mha *layer);

/** Copy a weight from `w` (F32, F16 or BF16, the shape attn_mha_weight
 * lists, any strides) into the layer's own storage, which is F32 (half
 * values widened exactly); a wrapped weight becomes owned again (the
 * layer then allocates its storage: for the last wrapped weight of its
 * group, the group's packed form, into which its other weights move).
 * The next forward uses the new values.
 * @param[in] ctx   the layer's context.
 * @param[in] layer the layer.
 * @param[in] which an attn_mha_weight (a bias the layer was created
 *                  without is ATTN_ERR_INVALID_ARG).
 * @param[in] w     the values.
 * @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_BAD_HANDLE, ATTN_ERR_INVALID_ARG,
 *  ATTN_ERR_SHAPE, ATTN_ERR_UNSUPPORTED (dtype), ATTN_ERR_NO_MEMORY (a
 *  wrapped weight made owned; nothing changed then).
 * @since 0.2.0 */
ATTN_API attn_status attn_mha_set_weight(attn_ctx *ctx, attn_mha *layer, int32_t which,
                                         const attn_tensor *w);

/** Use the memory `w` views as a weight, without copying: F32 only (the
 * products read it in place; a half weight goes through
 * attn_mha_set_weight()), the shape
 * attn_mha_weight lists, innermost stride 1 and a row stride >= the row
 * length (what BLAS takes). The memory must stay valid while the layer
 * uses it and unchanged during a call; between calls it may change, and
 * the next forward reads the new values (the products pack it per call).
 * The other owned weights of its group (q/k/v, or the output projection)
 * move from the packed form to row-major storage, which the layer
 * allocates (see the section's introduction). Freeing the tensor handle
 * afterwards does not matter.
 * @param[in] ctx   the layer's context.
 * @param[in] layer the layer.
 * @param[in] which an attn_mha_weight.
 * @param[in] w     the values.
 * @return as attn_mha_set_weight() (ATTN_ERR_NO_MEMORY: the group's weights
 *  could not move; nothing changed), and ATTN_ERR_INVALID_ARG for strides.
 * @since 0.2.0 */
ATTN_API attn_status attn_mha_wrap_weight(attn_ctx *ctx, attn_mha *layer, int32_t which,
                                          const attn_tensor *w);

/** Read a weight back into `w` (F32, F16 or BF16, its shape, writable;
 * each value rounded once to w's type).
 * @param[in]  ctx   the layer's context.
 * @param[in]  layer the layer.
 * @param[in]  which an attn_mha_weight.
 * @param[out] w     receives the values.
 * @return as attn_mha_set_weight().
 * @since 0.2.0 */
ATTN_API attn_status attn_mha_get_weight(attn_ctx *ctx, const attn_mha *layer, int32_t which,
                                         attn_tensor *w);

/** Run the layer over new tokens: a prompt (L tokens per sequence) that
 * fills the cache, or a decode step (L = 1), or any chunk. Sequence b
 * takes its first n_new[b] tokens of x (the other rows of x are not read:
 * the products run on the counted rows alone); the other rows of y are
 * written with zeros. Every count is checked against the cache before anything is
 * computed or appended. Buffers grow to the largest call and are reused: a
 * warm context and layer allocate nothing.
 * @param[in]     ctx   the layer's context.
 * @param[in]     layer the layer.
 * @param[in,out] cache a KV cache of ctx with B sequences, Hkv heads and
 *                      head dim D = value dim; the new keys and values are
 *                      appended to it. A wrapped cache's memory may not
 *                      overlap a weight used in place (ATTN_ERR_ALIASING).
 * @param[in]     x     F32, F16 or BF16 [B, L, E], any strides (half rows
 *                      widened exactly into the layer's buffer).
 * @param[out]    y     F32, F16 or BF16 [B, L, E], writable, not overlapping
 *                      x, the cache or a weight used in place
 *                      (attn_mha_wrap_weight()); a half y is the float result
 *                      rounded once.
 * @param[in]     n_new B counts in 0..L; NULL = L for every sequence.
 * @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_BAD_HANDLE, ATTN_ERR_SHAPE (x,
 *  y or the cache do not fit the layer), ATTN_ERR_INVALID_ARG (counts, past
 *  the cache's capacity, a PyTorch-form layer), ATTN_ERR_ALIASING, ATTN_ERR_OVERFLOW,
 *  ATTN_ERR_NO_MEMORY (the pool of a paged cache, or the allocator). On
 *  failure the cache is exactly as before (contents, lengths, blocks) and y
 *  is not written.
 * @since 0.2.0 */
ATTN_API attn_status attn_mha_forward(attn_ctx *ctx, attn_mha *layer, attn_kv_cache *cache,
                                      const attn_tensor *x, attn_tensor *y,
                                      const int64_t *n_new);
/** @} */

/** @name PyTorch nn.MultiheadAttention layer
 * The layer of torch.nn.MultiheadAttention (torch 1.13 semantics, eval
 * mode: no dropout), owning its weights, so a module's state_dict loads as
 * it is. With E = embed_dim, H = num_heads, D = E / H, for query
 * [L, B, E], key [S, B, kdim] and value [S, B, vdim] (or [B, L, E],
 * [B, S, kdim], [B, S, vdim] with batch_first):
 *   q = query Wq^T + bq,  k = key Wk^T + bk,  v = value Wv^T + bv  (each [., E]);
 *   per head h: w_h = softmax(q_h k_h^T / sqrt(D) + mask),  a_h = w_h v_h;
 *   out = concat_h(a_h) Wo^T + bo.
 * Weights, as attn_mha_weight names them, in the state_dict's row-major
 * layouts:
 *   - in_proj_weight [3E, E] (ATTN_MHA_IN_PROJ_WEIGHT) when kdim = vdim = E,
 *     else q_proj_weight [E, E], k_proj_weight [E, kdim], v_proj_weight
 *     [E, vdim] (ATTN_MHA_Q_WEIGHT, ATTN_MHA_K_WEIGHT, ATTN_MHA_V_WEIGHT);
 *   - in_proj_bias [3E] (ATTN_MHA_IN_PROJ_BIAS), with bias;
 *   - out_proj.weight [E, E] (ATTN_MHA_O_WEIGHT), out_proj.bias [E]
 *     (ATTN_MHA_O_BIAS, with bias).
 * Set, wrapped and read with attn_mha_set_weight(), attn_mha_wrap_weight()
 * and attn_mha_get_weight(); any other attn_mha_weight is
 * ATTN_ERR_INVALID_ARG. The layer is freed by attn_mha_free() or with its
 * context. add_bias_kv and add_zero_attn are not supported (refused with
 * ATTN_ERR_UNSUPPORTED): they are rarely used, and torch's own fast path
 * leaves them out too.
 * @{ */

/** Parameters of attn_mha_create_torch(), named as nn.MultiheadAttention's
 * constructor arguments (bias as no_bias, so that 0 is the default for
 * every field). embed_dim and num_heads have no default. */
typedef struct attn_mha_torch_params {
  size_t struct_size;     /**< sizeof(attn_mha_torch_params) */
  int64_t embed_dim;      /**< E >= 1 */
  int64_t num_heads;      /**< H >= 1, dividing E */
  int64_t kdim;           /**< key features; 0 = E */
  int64_t vdim;           /**< value features; 0 = E */
  int32_t no_bias;        /**< nonzero: no biases (torch's bias=False); 0:
                               in_proj_bias and out_proj.bias, torch's default */
  int32_t batch_first;    /**< nonzero: [B, L, E] tensors; 0 (default): [L, B, E] */
  int32_t add_bias_kv;    /**< must be 0 (ATTN_ERR_UNSUPPORTED) */
  int32_t add_zero_attn;  /**< must be 0 (ATTN_ERR_UNSUPPORTED) */
} attn_mha_torch_params;

/** Fill `p` with the defaults (biases, sequence first: every field 0) and
 * its struct_size.
 * @param[out] p the parameters to fill; NULL is ignored.
 * @since 0.2.0 */
ATTN_API void attn_mha_torch_params_init(attn_mha_torch_params *p);

/** Create a PyTorch-form layer. Its weights are owned, zero-filled, until set.
 * @param[in]  ctx owner.
 * @param[in]  p   the sizes and options.
 * @param[out] out receives the layer; written only on success.
 * @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_BAD_HANDLE, ATTN_ERR_INVALID_ARG
 *  (a size, num_heads not dividing embed_dim), ATTN_ERR_UNSUPPORTED
 *  (add_bias_kv, add_zero_attn, newer params), ATTN_ERR_OVERFLOW,
 *  ATTN_ERR_NO_MEMORY.
 * @since 0.2.0 */
ATTN_API attn_status attn_mha_create_torch(attn_ctx *ctx, const attn_mha_torch_params *p,
                                           attn_mha **out);

/** Options of attn_mha_torch_forward(), as MultiheadAttention.forward's. */
typedef struct attn_mha_torch_forward_params {
  size_t struct_size;           /**< sizeof(attn_mha_torch_forward_params) */
  /** nonzero: write the attention weights to out_weights, which must then
   * be given (and must be NULL otherwise). Default 0. */
  int32_t need_weights;
  /** nonzero: out_weights per head [B, H, L, S] (torch's
   * average_attn_weights=False); 0: their mean over heads [B, L, S], torch's
   * default. */
  int32_t per_head_weights;
  /** nonzero: key j is hidden from query i when j > i (top-left
   * alignment), on top of the masks. torch >= 2.0 takes is_causal as a
   * hint and wants the causal mask in attn_mask too; passing that mask
   * here as well gives the same result. */
  int32_t is_causal;
  int32_t reserved_;            /**< must be 0 */
} attn_mha_torch_forward_params;

/** Fill `p` with the defaults (every field 0: no weights, averaged when
 * asked, not causal) and its struct_size.
 * @param[out] p the parameters to fill; NULL is ignored.
 * @since 0.2.0 */
ATTN_API void attn_mha_torch_forward_params_init(attn_mha_torch_forward_params *p);

/** nn.MultiheadAttention's forward. query, key, value and out are each
 * F32, F16 or BF16 (half inputs widened exactly, a half out rounded once
 * from the float result); the masks and out_weights are as said below.
 * Any strides; 2-D (unbatched) inputs are not taken: give B = 1.
 * @param[in]  ctx   the layer's context.
 * @param[in]  layer a layer made by attn_mha_create_torch().
 * @param[in]  query [L, B, E] ([B, L, E] with batch_first)
 * @param[in]  key   [S, B, kdim] ([B, S, kdim])
 * @param[in]  value [S, B, vdim] ([B, S, vdim])
 * @param[in]  key_padding_mask NULL, or [B, S]: U8 (nonzero = padding, the
 *             key is ignored: torch's bool True) or F32 (added to the
 *             logits; torch 1.13 takes a float one only without attn_mask,
 *             torch >= 2.0 adds it as here).
 * @param[in]  attn_mask NULL, or [L, S] (every batch and head) or [B*H, L,
 *             S] (index b * H + h): U8 (nonzero = NOT allowed to attend,
 *             torch's bool True) or F32 (added to the logits).
 * @param[in]  p     NULL for defaults.
 * @param[out] out   [L, B, E] ([B, L, E] with batch_first), writable, not
 *             overlapping any input or a weight used in place
 *             (attn_mha_wrap_weight()).
 * @param[out] out_weights NULL, or (need_weights) F32 [B, L, S] averaged over
 *             heads or [B, H, L, S] (per_head_weights), whatever
 *             batch_first; writable, overlapping nothing else (a weight
 *             used in place included).
 * A query row that sees no key (every key masked) gives zeros in out's
 * attention part and in its weights, where torch gives NaN.
 * Self-attention (query, key and value the same view, in_proj_weight):
 * one product for q, k and v. Uses the context's workspace (q, k, v, the
 * merged mask, the per-head weights when asked): a warm context allocates
 * nothing. On failure nothing is written.
 * @return ATTN_OK, ATTN_ERR_NULL_ARG, ATTN_ERR_BAD_HANDLE, ATTN_ERR_UNSUPPORTED
 *  (dtype, newer params), ATTN_ERR_SHAPE, ATTN_ERR_INVALID_ARG (not a
 *  PyTorch-form layer, need_weights and out_weights disagree, params),
 *  ATTN_ERR_ALIASING, ATTN_ERR_OVERFLOW, ATTN_ERR_NO_MEMORY.
 * @since 0.2.0 */
ATTN_API attn_status attn_mha_torch_forward(attn_ctx *ctx, attn_mha *layer,
                                            const attn_tensor *query, const attn_tensor *key,
                                            const attn_tensor *value,
                                            const attn_tensor *key_padding_mask,
                                            const attn_tensor *attn_mask,
                                            const attn_mha_torch_forward_params *p,
                                            attn_tensor *out, attn_tensor *out_weights);
/** @} */

/** @name Build and machine information
 * @{ */

/** The CPU features found and the kernel set chosen at run time.
 * @return e.g. "cpu: sse2 avx2 fma avx512f; kernels: avx512" (static storage).
 * @since 0.1.0
 *
 * Kernel sets: "sse2" (any x86-64), "avx2" (AVX2 + FMA + F16C), "avx512"
 * (AVX-512F), "avx512bf16" (the same, narrowing to bf16 with AVX-512 BF16;
 * @since 0.2.0), or "scalar" off x86. A feature counts only if the OS also enables its
 * registers (XGETBV). The probe runs once per process, on the first call of
 * this function or of an op, and is thread-safe. The environment variable
 * ATTN_KERNELS=sse2|avx2|avx512|avx512bf16, read by that probe, forces a set (for tests
 * and benchmarks); a set this CPU cannot run, or an unknown name, is refused:
 * the best set is used and the string ends with
 * " (ATTN_KERNELS=... refused: ...)". Every set computes exp within 1.02 ULP
 * (measured over every float in [-104, 89]), so results differ between sets
 * only in the last bits; dtype conversions give the same bits in every set. */
ATTN_API const char *attn_cpu_info(void);

/** Write a line describing the linked BLAS (name, version, core, threads).
 * @param[out] buf  receives the line, always NUL-terminated.
 * @param[in]  size bytes at buf; a longer line is truncated.
 * @return ATTN_OK, ATTN_ERR_NULL_ARG (buf NULL or size 0). @since 0.1.0 */
ATTN_API attn_status attn_blas_info(char *buf, size_t size);
/** @} */

#ifdef __cplusplus
}
#endif

#endif /* ATTN_H */
