/* The .npy reader of the attn command (tools/cli/npy.c): valid files in every
 * version, order and dtype it accepts, then every truncation and many byte
 * mutations of valid images, which must fail (or succeed consistently)
 * without reading out of bounds (the asan preset checks that). */
#define _POSIX_C_SOURCE 200809L /* mkstemp */
#include "test_util.h"

#include "npy.h"

#include <math.h>
#include <stdio.h>
#include <unistd.h>

typedef struct {
  uint8_t buf[512];
  size_t len;
} image;

/* An .npy image with the given header dict and data bytes. */
static void make(image *im, int version, const char *dict, const void *data, size_t n) {
  size_t pre = version == 1 ? 10 : 12, d = strlen(dict);
  size_t hlen = ((pre + d + 1 + 63) / 64) * 64 - pre;
  assert_true(pre + hlen + n <= sizeof im->buf);
  memcpy(im->buf, "\x93NUMPY", 6);
  im->buf[6] = (uint8_t)version;
  im->buf[7] = 0;
  im->buf[8] = (uint8_t)hlen;
  im->buf[9] = (uint8_t)(hlen >> 8);
  if (version > 1)
    im->buf[10] = im->buf[11] = 0;
  memcpy(im->buf + pre, dict, d);
  memset(im->buf + pre + d, ' ', hlen - d - 1);
  im->buf[pre + hlen - 1] = '\n';
  memcpy(im->buf + pre + hlen, data, n);
  im->len = pre + hlen + n;
}

static void test_valid(void **state) {
  (void)state;
  float f[6] = {0, 1, 2, 3, 4, 5};
  double d[6] = {0, 1, 2, 3, 4, 5};
  uint8_t b[6] = {1, 0, 1, 1, 0, 2};
  image im;
  npy_array a;
  char err[NPY_ERR_LEN];
  for (int version = 1; version <= 3; version++) {
    make(&im, version, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", f,
         sizeof f);
    assert_int_equal(npy_parse(im.buf, im.len, NPY_ACCEPT_FLOAT, &a, err, sizeof err), 0);
    assert_int_equal(a.ndim, 2);
    assert_int_equal(a.dims[0], 2);
    assert_int_equal(a.dims[1], 3);
    assert_int_equal(a.dtype, NPY_F32);
    assert_memory_equal(a.data, f, sizeof f);
    npy_free(&a);
  }
  /* Fortran order: the file holds the transpose's C order. */
  make(&im, 1, "{\"shape\": (2, 3), \"fortran_order\": True, \"descr\": \"<f8\"}", d, sizeof d);
  assert_int_equal(npy_parse(im.buf, im.len, NPY_ACCEPT_FLOAT, &a, err, sizeof err), 0);
  const float want[6] = {0, 2, 4, 1, 3, 5};
  assert_memory_equal(a.data, want, sizeof want);
  npy_free(&a);
  make(&im, 1, "{'descr': '|b1', 'fortran_order': False, 'shape': (6,), }", b, sizeof b);
  assert_int_equal(npy_parse(im.buf, im.len, NPY_ACCEPT_BOOL, &a, err, sizeof err), 0);
  assert_int_equal(a.dtype, NPY_U8);
  assert_memory_equal(a.data, b, sizeof b);
  npy_free(&a);
  assert_int_equal(npy_parse(im.buf, im.len, NPY_ACCEPT_FLOAT, &a, err, sizeof err), -1);
  assert_non_null(strstr(err, "bool"));
  assert_null(a.data);
}

/* float16 files widen exactly: every one of the 65536 patterns against the
 * library's own F16 -> F32 conversion (separate code), NaN as NaN. */
static void test_float16_every_pattern(void **state) {
  (void)state;
  enum { N = 65536 };
  uint16_t *h = malloc(N * sizeof *h);
  float *want = malloc(N * sizeof *want);
  assert_non_null(h);
  assert_non_null(want);
  for (int i = 0; i < N; i++)
    h[i] = (uint16_t)i;
  attn_ctx *ctx = tu_ctx(1);
  int64_t dims[1] = {N};
  attn_tensor *th = NULL, *tw = NULL;
  assert_status(attn_tensor_wrap(ctx, ATTN_DTYPE_F16, 1, dims, NULL, h, N * 2, &th), ATTN_OK);
  assert_status(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 1, dims, NULL, want, N * 4, &tw), ATTN_OK);
  assert_status(attn_tensor_copy(ctx, th, tw), ATTN_OK);
  attn_ctx_destroy(ctx);
  size_t n = 0;
  uint8_t *buf = NULL;
  char dict[80];
  snprintf(dict, sizeof dict, "{'descr': '<f2', 'fortran_order': False, 'shape': (%d,), }", N);
  size_t hlen = 118; /* 10 + 118 = 128: a 64-multiple preamble + header */
  assert_true(strlen(dict) < hlen);
  n = 10 + hlen + N * 2;
  assert_non_null(buf = malloc(n));
  memcpy(buf, "\x93NUMPY\x01\x00", 8);
  buf[8] = (uint8_t)hlen, buf[9] = 0;
  memset(buf + 10, ' ', hlen);
  memcpy(buf + 10, dict, strlen(dict));
  buf[10 + hlen - 1] = '\n';
  for (int i = 0; i < N; i++) /* little-endian, whatever the host */
    buf[128 + 2 * i] = (uint8_t)i, buf[128 + 2 * i + 1] = (uint8_t)(i >> 8);
  npy_array a;
  char err[NPY_ERR_LEN];
  assert_int_equal(npy_parse(buf, n, NPY_ACCEPT_FLOAT, &a, err, sizeof err), 0);
  assert_int_equal(a.dtype, NPY_F32);
  const float *got = a.data;
  for (int i = 0; i < N; i++)
    if (isnan(want[i]) ? !isnan(got[i]) : memcmp(&got[i], &want[i], sizeof(float)))
      fail_msg("float16 pattern 0x%04x read as %a, want %a", (unsigned)i, (double)got[i],
               (double)want[i]);
  npy_free(&a);
  assert_int_equal(npy_parse(buf, n, NPY_ACCEPT_BOOL, &a, err, sizeof err), -1);
  buf[10 + strlen("{'descr': '")] = '>'; /* '<f2' -> '>f2' */
  assert_int_equal(npy_parse(buf, n, NPY_ACCEPT_FLOAT, &a, err, sizeof err), -1);
  assert_non_null(strstr(err, "big-endian"));
  free(buf), free(h), free(want);
}

static void test_roundtrip(void **state) {
  (void)state;
  char path[] = "/tmp/attn_test_npy_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
  float x[24];
  for (int i = 0; i < 24; i++)
    x[i] = (float)i * 0.5f - 3.0f;
  int64_t dims[4] = {2, 1, 3, 4};
  char err[NPY_ERR_LEN + 64];
  assert_int_equal(npy_write(path, NPY_F32, 4, dims, x, err, sizeof err), 0);
  npy_array a;
  assert_int_equal(npy_read(path, NPY_ACCEPT_FLOAT, &a, err, sizeof err), 0);
  assert_int_equal(a.ndim, 4);
  assert_memory_equal(a.dims, dims, sizeof dims);
  assert_memory_equal(a.data, x, sizeof x);
  npy_free(&a);
  remove(path);
  assert_int_equal(npy_read(path, NPY_ACCEPT_FLOAT, &a, err, sizeof err), -1);
  assert_non_null(strstr(err, path));
}

/* Parse, and on success check the result is self-consistent. */
static void parse_any(const uint8_t *buf, size_t len) {
  npy_array a;
  char err[NPY_ERR_LEN];
  err[0] = 0;
  if (npy_parse(buf, len, NPY_ACCEPT_FLOAT | NPY_ACCEPT_BOOL, &a, err, sizeof err) == 0) {
    assert_true(a.ndim >= 1 && a.ndim <= NPY_MAX_DIMS);
    size_t n = npy_count(&a), item = a.dtype == NPY_U8 ? 1 : 4;
    assert_true(n * item <= len * 2); /* float64 halves; nothing comes from nowhere */
    npy_free(&a);
  } else {
    assert_true(err[0] != 0);
    assert_null(a.data);
  }
}

static void test_truncations_and_mutations(void **state) {
  (void)state;
  float f[12] = {0};
  image im;
  make(&im, 1, "{'descr': '<f4', 'fortran_order': True, 'shape': (3, 4), }", f, sizeof f);
  for (size_t len = 0; len < im.len; len++) {
    npy_array a;
    char err[NPY_ERR_LEN];
    assert_int_equal(npy_parse(im.buf, len, NPY_ACCEPT_FLOAT, &a, err, sizeof err), -1);
  }
  static const uint8_t values[] = {0,   ' ', '(', ')', ',', '9', '0', '\'', '"', '{', '}',
                                   ':', 'L', 'T', 'F', '<', '>', 0x80, 0xff, '\n', 1, 2};
  size_t header_end = 10 + (size_t)im.buf[8];
  for (size_t pos = 0; pos < header_end; pos++) {
    uint8_t keep = im.buf[pos];
    for (size_t v = 0; v < sizeof values; v++) {
      im.buf[pos] = values[v];
      parse_any(im.buf, im.len);
      parse_any(im.buf, im.len - 4);
    }
    im.buf[pos] = keep;
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_valid),
      cmocka_unit_test(test_float16_every_pattern),
      cmocka_unit_test(test_roundtrip),
      cmocka_unit_test(test_truncations_and_mutations),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
