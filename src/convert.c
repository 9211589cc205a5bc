/* attn_tensor_copy: element-wise copy between tensors of the same shape,
 * converting f32 / f16 / bf16 with the dispatched kernels (simd/half.h has
 * the rounding rules). Rows are contiguous (attn_tensor_wrap guarantees a
 * unit innermost stride), so each row is one kernel call. */
#include "check.h"
#include "convert.h"

#include <string.h>

/* f16 <-> bf16 goes through f32 (exact), in chunks of this many elements:
 * one rounding, and the chunk stays in L1. */
#define CHUNK 256

static bool is_float(int32_t dtype) { return (ATTN_DT_FLOAT & ATTN_DT(dtype)) != 0; }

void attn__convert_row(const attn_kernels *k, int32_t st, const void *src, int32_t dt,
                       void *dst, int64_t n) {
  const char *x = src;
  char *y = dst;
  if (st == dt)
    memcpy(y, x, (size_t)n * attn__dtype_size(st));
  else if (st == ATTN_DTYPE_F32)
    attn__narrow(k, dt, (const float *)x, y, n);
  else if (dt == ATTN_DTYPE_F32)
    attn__widen(k, st, x, (float *)y, n);
  else { /* f16 <-> bf16 */
    float buf[CHUNK];
    for (int64_t i = 0; i < n; i += CHUNK) {
      int64_t m = n - i < CHUNK ? n - i : CHUNK;
      attn__widen(k, st, x + i * 2, buf, m);
      attn__narrow(k, dt, buf, y + i * 2, m);
    }
  }
}

static attn_status copy(attn_ctx *ctx, const attn_tensor *src, attn_tensor *dst) {
  const attn_operand ops[] = {
      {ATTN_OPERAND("src", src, ATTN_DT_FLOAT | ATTN_DT_U8, 1, ATTN_MAX_DIMS)},
      {ATTN_OPERAND("dst", dst, ATTN_DT_FLOAT | ATTN_DT_U8, 1, ATTN_MAX_DIMS), .like = ATTN_LIKE(0),
       .flags = ATTN_OPND_OUTPUT | ATTN_OPND_SAME_SHAPE | ATTN_OPND_INPLACE},
  };
  attn_status st = attn__check_operands(ctx, ops, 2, NULL);
  if (st != ATTN_OK)
    return st;
  if (is_float(src->dtype) != is_float(dst->dtype))
    return attn__fail(ctx, ATTN_ERR_UNSUPPORTED,
                      "src has dtype %s but dst has %s (U8 copies only to U8)",
                      attn__dtype_name(src->dtype), attn__dtype_name(dst->dtype));
  if (attn__same_view(src, dst) || attn__empty(dst))
    return ATTN_OK; /* same elements, same type; or no element */
  const attn_kernels *k = attn__kernels();
  /* Pad to 4 axes (leading dims 1); axis 3 is the row. */
  int64_t dims[ATTN_MAX_DIMS], ss[ATTN_MAX_DIMS], ds[ATTN_MAX_DIMS];
  int32_t pad = ATTN_MAX_DIMS - src->ndim;
  for (int32_t i = 0; i < ATTN_MAX_DIMS; i++) {
    bool in = i >= pad;
    dims[i] = in ? src->dims[i - pad] : 1;
    ss[i] = in ? src->strides[i - pad] : 0;
    ds[i] = in ? dst->strides[i - pad] : 0;
  }
  size_t se = attn__dtype_size(src->dtype), de = attn__dtype_size(dst->dtype);
  for (int64_t a = 0; a < dims[0]; a++)
    for (int64_t b = 0; b < dims[1]; b++)
      for (int64_t c = 0; c < dims[2]; c++) {
        int64_t so = a * ss[0] + b * ss[1] + c * ss[2], dof = a * ds[0] + b * ds[1] + c * ds[2];
        attn__convert_row(k, src->dtype, (const char *)src->data + (size_t)so * se, dst->dtype,
                 (char *)dst->data + (size_t)dof * de, dims[3]);
      }
  return ATTN_OK;
}

attn_status attn_tensor_copy(attn_ctx *ctx, const attn_tensor *src, attn_tensor *dst) {
  attn_status st = attn__op_begin(ctx, "attn_tensor_copy");
  if (st != ATTN_OK)
    return st;
  return attn__op_end(ctx, copy(ctx, src, dst));
}
