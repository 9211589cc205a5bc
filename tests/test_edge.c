/* Numerical edge cases, table-driven, for every op: +-FLT_MAX, subnormals,
 * +-Inf, NaN in each position, all-masked rows, length-1 rows and
 * sequences, D = 1, huge L with tiny D. Each row of a table states the
 * result include/attn.h documents:
 *   - a masked entry has weight exactly 0; a row with nothing visible gives
 *     zeros (log-softmax -inf, lse -inf or the sink), never NaN;
 *   - a NaN in the input reaches exactly the rows it touches;
 *   - rows stay finite for logits up to +-FLT_MAX (the max is taken first).
 * Plus size arithmetic at the edges (shapes whose products overflow). */
#include <float.h>

#include "test_util.h"

/* ================= tensors: size arithmetic ================= */

static void tensor_overflowing_shapes(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  attn_tensor *t = (attn_tensor *)0x1;
  /* Products that fit uint64 but not int64, or neither, or not the byte size. */
  static const int64_t shapes[][4] = {
      {(int64_t)1 << 62, 3, 1, 1},       {1, (int64_t)1 << 62, 3, 1},
      {3, 3, 3, (int64_t)1 << 62},       {INT64_MAX, 2, 1, 1},
      {(int64_t)1 << 31, (int64_t)1 << 31, 4, 1}, {((int64_t)1 << 61) + 1, 4, 1, 1},
      {(int64_t)1 << 32, (int64_t)1 << 32, 1, 1},
  };
  for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
    for (int32_t dtype = 0; dtype <= 1; dtype++) {
      assert_status(attn_tensor_new(ctx, dtype, 4, shapes[i], &t), ATTN_ERR_OVERFLOW);
      float buf[4];
      assert_status(attn_tensor_wrap(ctx, dtype, 4, shapes[i], NULL, buf, sizeof buf, &t),
                    ATTN_ERR_OVERFLOW);
    }
  }
  assert_ptr_equal(t, (attn_tensor *)0x1);
  /* A dim of 1 may have any stride: it is never stepped over. */
  int64_t dims[3] = {1, 2, 3}, strides[3] = {INT64_MAX, 3, 1};
  float buf[6] = {0};
  assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 3, dims, strides, buf, sizeof buf, &t));
  /* Broadcast axes: huge dims over a tiny buffer are fine for an input. */
  int64_t bd[2] = {(int64_t)1 << 40, 3}, bs[2] = {0, 1};
  assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 2, bd, bs, buf, 3 * sizeof(float), &t));
  attn_ctx_destroy(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(tensor_overflowing_shapes),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
