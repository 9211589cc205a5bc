/* Tensor handles: new, wrap, accessors, free, and their bad inputs. */
#include "test_util.h"

static void new_is_zeroed_and_contiguous(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  int64_t dims[4] = {2, 3, 5, 7};
  attn_tensor *t = NULL;
  assert_ok(attn_tensor_new(ctx, ATTN_DTYPE_F32, 4, dims, &t));
  assert_int_equal(attn_tensor_ndim(t), 4);
  assert_int_equal(attn_tensor_dtype(t), ATTN_DTYPE_F32);
  const int64_t *d = attn_tensor_dims(t), *s = attn_tensor_strides(t);
  int64_t want_strides[4] = {105, 35, 7, 1};
  for (int i = 0; i < 4; i++) {
    assert_int_equal(d[i], dims[i]);
    assert_int_equal(s[i], want_strides[i]);
  }
  float *p = attn_tensor_data(t);
  assert_true(((uintptr_t)p % 64) == 0);
  for (int i = 0; i < 210; i++)
    assert_true(p[i] == 0.0f);
  attn_tensor *m = NULL;
  assert_ok(attn_tensor_new(ctx, ATTN_DTYPE_U8, 1, dims, &m));
  assert_int_equal(attn_tensor_dtype(m), ATTN_DTYPE_U8);
  assert_ok(attn_tensor_free(ctx, t));
  assert_ok(attn_tensor_free(ctx, m));
  assert_ok(attn_tensor_free(ctx, NULL));
  attn_ctx_destroy(ctx);
}

static void accessors_on_null(void **state) {
  (void)state;
  assert_null(attn_tensor_data(NULL));
  assert_int_equal(attn_tensor_ndim(NULL), 0);
  assert_int_equal(attn_tensor_dtype(NULL), -1);
  assert_null(attn_tensor_dims(NULL));
  assert_null(attn_tensor_strides(NULL));
}

static void new_bad_input(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  attn_tensor *t = (attn_tensor *)0x1;
  int64_t dims[5] = {2, 3, 4, 5, 6};
  assert_status(attn_tensor_new(NULL, ATTN_DTYPE_F32, 2, dims, &t), ATTN_ERR_NULL_ARG);
  assert_status(attn_tensor_new(ctx, ATTN_DTYPE_F32, 2, NULL, &t), ATTN_ERR_NULL_ARG);
  assert_error_mentions(ctx, "dims");
  assert_status(attn_tensor_new(ctx, ATTN_DTYPE_F32, 2, dims, NULL), ATTN_ERR_NULL_ARG);
  assert_status(attn_tensor_new(ctx, ATTN_DTYPE_F32, 0, dims, &t), ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "ndim = 0");
  assert_status(attn_tensor_new(ctx, ATTN_DTYPE_F32, 5, dims, &t), ATTN_ERR_INVALID_ARG);
  assert_status(attn_tensor_new(ctx, 7, 2, dims, &t), ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "dtype = 7");
  int64_t neg[2] = {3, -1}; /* a dim of 0 is fine: test_empty.c */
  assert_status(attn_tensor_new(ctx, ATTN_DTYPE_F32, 2, neg, &t), ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "dims[1] = -1");
  int64_t huge[3] = {INT64_MAX / 2, 4, 4};
  assert_status(attn_tensor_new(ctx, ATTN_DTYPE_F32, 3, huge, &t), ATTN_ERR_OVERFLOW);
  int64_t big[2] = {1ll << 31, 1ll << 31}; /* 2^62 floats: bytes overflow */
  assert_status(attn_tensor_new(ctx, ATTN_DTYPE_F32, 2, big, &t), ATTN_ERR_OVERFLOW);
  assert_ptr_equal(t, (attn_tensor *)0x1); /* out never written on failure */
  attn_ctx_destroy(ctx);
}

static void wrap_views(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  float buf[4 * 6];
  for (int i = 0; i < 24; i++)
    buf[i] = (float)i;
  /* A [4, 3] column slice of a [4, 6] array. */
  int64_t dims[2] = {4, 3}, strides[2] = {6, 1};
  attn_tensor *t = NULL;
  assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 2, dims, strides, buf + 3,
                             sizeof buf - 3 * sizeof(float), &t));
  assert_ptr_equal(attn_tensor_data(t), buf + 3);
  assert_int_equal(attn_tensor_strides(t)[0], 6);
  /* Exactly the extent fits: 3*6 + 2 + 1 = 21 floats. */
  attn_tensor *u = NULL;
  assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 2, dims, strides, buf, 21 * sizeof(float), &u));
  assert_status(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 2, dims, strides, buf,
                                 21 * sizeof(float) - 1, &u),
                ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "size_bytes");
  /* Broadcast stride 0 is allowed for inputs. */
  int64_t bstrides[2] = {0, 1};
  assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 2, dims, bstrides, buf, 3 * sizeof(float), &u));
  attn_ctx_destroy(ctx);
}

static void wrap_bad_input(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  float buf[64];
  attn_tensor *t = (attn_tensor *)0x1;
  int64_t dims[2] = {4, 4};
  int64_t inner2[2] = {8, 2}, negative[2] = {-4, 1};
  assert_status(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 2, dims, NULL, NULL, sizeof buf, &t),
                ATTN_ERR_NULL_ARG);
  assert_error_mentions(ctx, "data");
  assert_status(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 2, dims, inner2, buf, sizeof buf, &t),
                ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "innermost");
  assert_status(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 2, dims, negative, buf, sizeof buf, &t),
                ATTN_ERR_INVALID_ARG);
  assert_status(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 2, dims, NULL, (char *)buf + 1,
                                 sizeof buf - 4, &t),
                ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "aligned");
  int64_t huge_strides[2] = {INT64_MAX / 2, 1};
  assert_status(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 2, dims, huge_strides, buf, sizeof buf, &t),
                ATTN_ERR_OVERFLOW);
  int64_t huge_dims[2] = {INT64_MAX, INT64_MAX};
  assert_status(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 2, huge_dims, NULL, buf, sizeof buf, &t),
                ATTN_ERR_OVERFLOW);
  /* Empty, or all broadcast: no byte, but the dims still multiply past
   * INT64_MAX, which the ops' work counts could not hold (fuzz_sdpa). */
  int64_t empty_huge[4] = {1ll << 40, 1ll << 40, 1, 0}, zeros[4] = {0, 0, 0, 1};
  assert_status(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, empty_huge, NULL, buf, sizeof buf, &t),
                ATTN_ERR_OVERFLOW);
  assert_error_mentions(ctx, "INT64_MAX");
  assert_status(attn_tensor_new(ctx, ATTN_DTYPE_F32, 4, empty_huge, &t), ATTN_ERR_OVERFLOW);
  int64_t bcast_huge[4] = {1ll << 40, 1ll << 40, 1, 1};
  assert_status(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, bcast_huge, zeros, buf, sizeof buf, &t),
                ATTN_ERR_OVERFLOW);
  int64_t empty_ok[4] = {1ll << 30, 1ll << 31, 0, 3}; /* 3 * 2^61 < 2^63 */
  assert_status(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, empty_ok, NULL, buf, sizeof buf, &t),
                ATTN_OK);
  attn_tensor_free(ctx, t);
  t = (attn_tensor *)0x1;
  assert_ptr_equal(t, (attn_tensor *)0x1);
  attn_ctx_destroy(ctx);
}

static void free_detects_misuse(void **state) {
  (void)state;
  attn_ctx *a = tu_ctx(1), *b = tu_ctx(1);
  int64_t dims[1] = {8};
  attn_tensor *t;
  assert_ok(attn_tensor_new(a, ATTN_DTYPE_F32, 1, dims, &t));
  assert_status(attn_tensor_free(b, t), ATTN_ERR_BAD_HANDLE);
  assert_error_mentions(b, "another context");
  assert_status(attn_tensor_free(NULL, t), ATTN_ERR_NULL_ARG);
  assert_ok(attn_tensor_free(a, t));
  assert_status(attn_tensor_free(a, t), ATTN_ERR_BAD_HANDLE); /* double free */
  /* Many tensors, freed out of order, then the rest by the context. */
  attn_tensor *ts[10];
  for (int i = 0; i < 10; i++)
    assert_ok(attn_tensor_new(a, ATTN_DTYPE_F32, 1, dims, &ts[i]));
  assert_ok(attn_tensor_free(a, ts[5]));
  assert_ok(attn_tensor_free(a, ts[9]));
  assert_ok(attn_tensor_free(a, ts[0]));
  assert_status(attn_tensor_free(a, ts[5]), ATTN_ERR_BAD_HANDLE);
  assert_error_mentions(a, "freed twice");
  assert_status(attn_tensor_free(b, ts[5]), ATTN_ERR_BAD_HANDLE); /* freed, other ctx */
  attn_ctx_destroy(a);
  attn_ctx_destroy(b);
}

/* 40 000 live handles freed in an order that is slowest for a list search
 * (each free used to walk the live list: 1.5 s for 40 k), then reused: every
 * free succeeds once, and a handle's memory is recycled, not leaked (the
 * counting allocator sees no more blocks after a second round). */
static void many_handles(void **state) {
  (void)state;
  enum { N = 40000 };
  tu_counter counts = {0, 0, 0};
  attn_ctx_options o;
  attn_ctx_options_init(&o);
  o.num_threads = 1;
  o.alloc = tu_alloc;
  o.free = tu_free;
  o.alloc_user = &counts;
  attn_ctx *ctx = NULL;
  assert_ok(attn_ctx_create(&ctx, &o));
  attn_tensor **ts = malloc(N * sizeof *ts);
  assert_non_null(ts);
  float x[4];
  int64_t dims[1] = {4};
  long allocs_first_round = 0;
  for (int round = 0; round < 2; round++) {
    for (int i = 0; i < N; i++)
      assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 1, dims, NULL, x, sizeof x, &ts[i]));
    if (round == 0)
      allocs_first_round = counts.allocs;
    else
      assert_int_equal(counts.allocs, allocs_first_round); /* all reused */
    for (int i = 0; i < N; i += 2) /* the oldest first: last in the live list */
      assert_ok(attn_tensor_free(ctx, ts[i]));
    for (int i = N - 1; i >= 1; i -= 2)
      assert_ok(attn_tensor_free(ctx, ts[i]));
    for (int i = 0; i < N; i += 997)
      assert_status(attn_tensor_free(ctx, ts[i]), ATTN_ERR_BAD_HANDLE);
  }
  attn_ctx_destroy(ctx);
  assert_int_equal(counts.frees, counts.allocs);
  free(ts);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(new_is_zeroed_and_contiguous),
      cmocka_unit_test(accessors_on_null),
      cmocka_unit_test(new_bad_input),
      cmocka_unit_test(wrap_views),
      cmocka_unit_test(wrap_bad_input),
      cmocka_unit_test(free_detects_misuse),
      cmocka_unit_test(many_handles),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
