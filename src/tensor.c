/* Tensor handles and the validation every op shares. */
#include "internal.h"

#include <string.h>

size_t attn__dtype_size(int32_t dtype) {
  switch (dtype) {
  case ATTN_DTYPE_F32: return 4;
  case ATTN_DTYPE_U8: return 1;
  case ATTN_DTYPE_F16: return 2;
  case ATTN_DTYPE_BF16: return 2;
  default: return 0;
  }
}

const char *attn__dtype_name(int32_t dtype) {
  switch (dtype) {
  case ATTN_DTYPE_F32: return "F32";
  case ATTN_DTYPE_U8: return "U8";
  case ATTN_DTYPE_F16: return "F16";
  case ATTN_DTYPE_BF16: return "BF16";
  default: return "unknown";
  }
}

static bool any_zero(int32_t ndim, const int64_t *dims) {
  for (int32_t i = 0; i < ndim; i++)
    if (dims[i] == 0)
      return true;
  return false;
}

/* The element count must fit in int64_t. An empty tensor's count is 0,
 * but the product of its other dims is bounded the same way: ops multiply
 * dims taken from several operands (batch x heads x rows) before they look
 * for an element, and those products must not overflow either. */
static attn_status element_count(attn_ctx *ctx, int32_t ndim, const int64_t *dims) {
  uint64_t count = 1;
  for (int32_t i = 0; i < ndim; i++)
    if (dims[i] != 0 &&
        (__builtin_mul_overflow(count, (uint64_t)dims[i], &count) || count > INT64_MAX))
      return attn__fail(ctx, ATTN_ERR_OVERFLOW,
                        "the product of the dims exceeds INT64_MAX at dims[%d] (empty "
                        "tensors too: the product of their non-zero dims)",
                        (int)i);
  return ATTN_OK;
}

/* Validate ndim, dtype, dims and out. */
static attn_status check_layout(attn_ctx *ctx, int32_t dtype, int32_t ndim, const int64_t *dims,
                                attn_tensor **out) {
  if (!dims)
    return attn__fail(ctx, ATTN_ERR_NULL_ARG, "dims is NULL");
  if (!out)
    return attn__fail(ctx, ATTN_ERR_NULL_ARG, "out is NULL");
  if (ndim < 1 || ndim > ATTN_MAX_DIMS)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG, "ndim = %d but must be 1..%d", (int)ndim,
                      ATTN_MAX_DIMS);
  if (!attn__dtype_size(dtype))
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG, "dtype = %d is not an attn_dtype", (int)dtype);
  for (int32_t i = 0; i < ndim; i++)
    if (dims[i] < 0)
      return attn__fail(ctx, ATTN_ERR_INVALID_ARG, "dims[%d] = %lld but must be >= 0", (int)i,
                        (long long)dims[i]);
  return ATTN_OK;
}

/* Bytes from the first element to one past the last, for dims/strides; 0
 * for a tensor without elements, whatever its strides. */
static attn_status extent_bytes(attn_ctx *ctx, int32_t dtype, int32_t ndim, const int64_t *dims,
                                const int64_t *strides, size_t *out) {
  if (any_zero(ndim, dims)) {
    *out = 0;
    return ATTN_OK;
  }
  uint64_t last = 0; /* offset of the last element, in elements */
  for (int32_t i = 0; i < ndim; i++) {
    uint64_t step;
    if (__builtin_mul_overflow((uint64_t)(dims[i] - 1), (uint64_t)strides[i], &step) ||
        __builtin_add_overflow(last, step, &last))
      goto overflow;
  }
  uint64_t bytes;
  if (__builtin_add_overflow(last, 1, &bytes) ||
      __builtin_mul_overflow(bytes, (uint64_t)attn__dtype_size(dtype), &bytes) ||
      bytes > (uint64_t)PTRDIFF_MAX - ATTN_ALIGN)
    goto overflow;
  *out = (size_t)bytes;
  return ATTN_OK;
overflow:
  return attn__fail(ctx, ATTN_ERR_OVERFLOW,
                    "dims and strides span more bytes than memory can address");
}

static attn_tensor *link_new(attn_ctx *ctx, int32_t dtype, int32_t ndim, const int64_t *dims,
                             const int64_t *strides) {
  /* A freed handle's memory is reused (oldest first, so a stale handle keeps
   * reading as freed for as long as possible) before new memory is taken. */
  attn_tensor *t = ctx->freed;
  if (t) {
    ctx->freed = t->next;
    if (!ctx->freed)
      ctx->freed_last = NULL;
  } else {
    t = attn__alloc(ctx, sizeof *t);
    if (!t)
      return NULL;
  }
  memset(t, 0, sizeof *t);
  t->magic = ATTN_TENSOR_MAGIC;
  t->dtype = dtype;
  t->ndim = ndim;
  t->ctx = ctx;
  memcpy(t->dims, dims, (size_t)ndim * sizeof *dims);
  memcpy(t->strides, strides, (size_t)ndim * sizeof *strides);
  t->next = ctx->tensors;
  if (ctx->tensors)
    ctx->tensors->prev = t;
  ctx->tensors = t;
  return t;
}

/* Row-major strides; element_count() bounds every partial product. */
static void contiguous_strides(int32_t ndim, const int64_t *dims, int64_t *strides) {
  int64_t s = 1;
  for (int32_t i = ndim - 1; i >= 0; i--) {
    strides[i] = s;
    s *= dims[i];
  }
}

static attn_status tensor_new(attn_ctx *ctx, int32_t dtype, int32_t ndim, const int64_t *dims,
                              attn_tensor **out) {
  attn_status st;
  if ((st = check_layout(ctx, dtype, ndim, dims, out)) != ATTN_OK ||
      (st = element_count(ctx, ndim, dims)) != ATTN_OK)
    return st;
  int64_t strides[ATTN_MAX_DIMS];
  contiguous_strides(ndim, dims, strides);
  size_t bytes = 0;
  if ((st = extent_bytes(ctx, dtype, ndim, dims, strides, &bytes)) != ATTN_OK)
    return st;
  void *block = attn__alloc(ctx, bytes + ATTN_ALIGN);
  if (!block)
    return attn__fail(ctx, ATTN_ERR_NO_MEMORY, "cannot allocate %zu bytes", bytes);
  attn_tensor *t = link_new(ctx, dtype, ndim, dims, strides);
  if (!t) {
    attn__free(ctx, block);
    return attn__fail(ctx, ATTN_ERR_NO_MEMORY, "cannot allocate the tensor handle");
  }
  t->owns_data = true;
  t->block = block;
  t->data = attn__align_ptr(block);
  t->extent_bytes = bytes;
  memset(t->data, 0, bytes);
  *out = t;
  return ATTN_OK;
}

static attn_status tensor_wrap(attn_ctx *ctx, int32_t dtype, int32_t ndim, const int64_t *dims,
                               const int64_t *strides, void *data, size_t size_bytes,
                               attn_tensor **out) {
  attn_status st;
  if ((st = check_layout(ctx, dtype, ndim, dims, out)) != ATTN_OK)
    return st;
  if (!data)
    return attn__fail(ctx, ATTN_ERR_NULL_ARG, "data is NULL");
  if ((uintptr_t)data % attn__dtype_size(dtype))
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG, "data %p is not aligned for %s", data,
                      attn__dtype_name(dtype));
  if ((st = element_count(ctx, ndim, dims)) != ATTN_OK)
    return st;
  int64_t s[ATTN_MAX_DIMS] = {0};
  if (strides) {
    for (int32_t i = 0; i < ndim; i++) {
      if (strides[i] < 0)
        return attn__fail(ctx, ATTN_ERR_INVALID_ARG, "strides[%d] = %lld but strides must be >= 0",
                          (int)i, (long long)strides[i]);
      s[i] = strides[i];
    }
    if (s[ndim - 1] != 1 && dims[ndim - 1] > 1)
      return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                        "strides[%d] = %lld but the innermost axis must be contiguous "
                        "(stride 1)",
                        (int)(ndim - 1), (long long)s[ndim - 1]);
    s[ndim - 1] = 1;
  } else {
    contiguous_strides(ndim, dims, s);
  }
  size_t bytes = 0;
  if ((st = extent_bytes(ctx, dtype, ndim, dims, s, &bytes)) != ATTN_OK)
    return st;
  if (bytes > size_bytes)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "dims and strides span %zu bytes but size_bytes = %zu", bytes, size_bytes);
  attn_tensor *t = link_new(ctx, dtype, ndim, dims, s);
  if (!t)
    return attn__fail(ctx, ATTN_ERR_NO_MEMORY, "cannot allocate the tensor handle");
  t->data = data;
  t->extent_bytes = bytes;
  *out = t;
  return ATTN_OK;
}

static attn_status tensor_free(attn_ctx *ctx, attn_tensor *t) {
  if (!t)
    return ATTN_OK;
  /* O(1): a handle's memory stays with its context until the context is
   * destroyed (freed handles wait on ctx->freed for reuse), so reading a
   * freed handle, or one of another live context, is safe. */
  if (t->magic != ATTN_TENSOR_MAGIC || t->ctx != ctx)
    return attn__fail(ctx, ATTN_ERR_BAD_HANDLE,
                      "tensor %p is not a live tensor of this context (%s)", (void *)t,
                      t->magic == ATTN_DEAD_MAGIC && t->ctx == ctx ? "freed twice"
                                                                   : "from another context");
  if (t->prev)
    t->prev->next = t->next;
  else
    ctx->tensors = t->next;
  if (t->next)
    t->next->prev = t->prev;
  t->magic = ATTN_DEAD_MAGIC;
  if (t->owns_data)
    attn__free(ctx, t->block);
  t->owns_data = false;
  t->block = NULL;
  t->next = NULL;
  if (ctx->freed_last)
    ctx->freed_last->next = t;
  else
    ctx->freed = t;
  ctx->freed_last = t;
  return ATTN_OK;
}

/* The public calls: the prologue around the bodies above. */
attn_status attn_tensor_new(attn_ctx *ctx, int32_t dtype, int32_t ndim, const int64_t *dims,
                            attn_tensor **out) {
  attn_status st = attn__op_begin(ctx, "attn_tensor_new");
  if (st != ATTN_OK)
    return st;
  return attn__op_end(ctx, tensor_new(ctx, dtype, ndim, dims, out));
}

attn_status attn_tensor_wrap(attn_ctx *ctx, int32_t dtype, int32_t ndim, const int64_t *dims,
                             const int64_t *strides, void *data, size_t size_bytes,
                             attn_tensor **out) {
  attn_status st = attn__op_begin(ctx, "attn_tensor_wrap");
  if (st != ATTN_OK)
    return st;
  return attn__op_end(ctx, tensor_wrap(ctx, dtype, ndim, dims, strides, data, size_bytes, out));
}

attn_status attn_tensor_free(attn_ctx *ctx, attn_tensor *t) {
  attn_status st = attn__op_begin(ctx, "attn_tensor_free");
  if (st != ATTN_OK)
    return st;
  return attn__op_end(ctx, tensor_free(ctx, t));
}

void *attn_tensor_data(const attn_tensor *t) { return t ? t->data : NULL; }
int32_t attn_tensor_ndim(const attn_tensor *t) { return t ? t->ndim : 0; }
int32_t attn_tensor_dtype(const attn_tensor *t) { return t ? t->dtype : -1; }
const int64_t *attn_tensor_dims(const attn_tensor *t) { return t ? t->dims : NULL; }
const int64_t *attn_tensor_strides(const attn_tensor *t) { return t ? t->strides : NULL; }

/* ---- validation shared by the ops ---- */

attn_status attn__check_writable(attn_ctx *ctx, const char *name, const attn_tensor *t) {
  if (attn__empty(t))
    return ATTN_OK; /* nothing is written */
  /* Sort axes by stride; each must step past everything the inner ones span. */
  int32_t order[ATTN_MAX_DIMS];
  int32_t n = 0;
  for (int32_t i = 0; i < t->ndim; i++) {
    if (t->dims[i] == 1)
      continue;
    if (t->strides[i] == 0)
      return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                        "%s.strides[%d] = 0 but an output cannot broadcast", name, (int)i);
    int32_t j = n++;
    while (j > 0 && t->strides[order[j - 1]] > t->strides[i]) {
      order[j] = order[j - 1];
      j--;
    }
    order[j] = i;
  }
  int64_t span = 1; /* elements covered by the inner axes */
  for (int32_t k = 0; k < n; k++) {
    int32_t a = order[k];
    if (t->strides[a] < span)
      return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                        "%s.strides[%d] = %lld overlaps the inner axes (which span "
                        "%lld elements): an output's elements must be distinct",
                        name, (int)a, (long long)t->strides[a], (long long)span);
    span = t->strides[a] * (t->dims[a] - 1) + span;
  }
  return ATTN_OK;
}

bool attn__empty(const attn_tensor *t) { return any_zero(t->ndim, t->dims); }

bool attn__overlap(const attn_tensor *a, const attn_tensor *b) {
  uintptr_t a0 = (uintptr_t)a->data, a1 = a0 + a->extent_bytes;
  uintptr_t b0 = (uintptr_t)b->data, b1 = b0 + b->extent_bytes;
  return a0 < b1 && b0 < a1;
}

bool attn__same_view(const attn_tensor *a, const attn_tensor *b) {
  if (a->data != b->data || a->ndim != b->ndim || a->dtype != b->dtype)
    return false;
  for (int32_t i = 0; i < a->ndim; i++)
    if (a->dims[i] != b->dims[i] || (a->dims[i] > 1 && a->strides[i] != b->strides[i]))
      return false;
  return true;
}

attn_status attn__broadcast_strides(attn_ctx *ctx, const char *name, const attn_tensor *m,
                                    int32_t ndim, const int64_t *dims, int64_t *strides_out) {
  if (m->ndim > ndim)
    return attn__fail(ctx, ATTN_ERR_SHAPE, "%s has %d dims but the target has only %d", name,
                      (int)m->ndim, (int)ndim);
  int32_t shift = ndim - m->ndim;
  for (int32_t i = 0; i < ndim; i++) {
    if (i < shift) {
      strides_out[i] = 0;
      continue;
    }
    int64_t md = m->dims[i - shift];
    if (md == dims[i])
      strides_out[i] = md == 1 ? 0 : m->strides[i - shift];
    else if (md == 1)
      strides_out[i] = 0;
    else
      return attn__fail(ctx, ATTN_ERR_SHAPE,
                        "%s.shape[%d] = %lld but must be 1 or %lld to broadcast", name,
                        (int)(i - shift), (long long)md, (long long)dims[i]);
  }
  return ATTN_OK;
}
