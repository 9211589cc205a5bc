/* libFuzzer target: the attn command's .npy reader (tools/cli/npy.c) on
 * arbitrary bytes, with every accept mask. A parse must either fail with a
 * message or give an array whose every element can be read. */
#include "npy.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const int accepts[4] = {NPY_ACCEPT_FLOAT, NPY_ACCEPT_BOOL,
                                 NPY_ACCEPT_FLOAT | NPY_ACCEPT_BOOL,
                                 NPY_ACCEPT_FLOAT | NPY_ACCEPT_BOOL | NPY_ADDITIVE_MASK};
  for (int i = 0; i < 4; i++) {
    npy_array a;
    char err[NPY_ERR_LEN];
    if (npy_parse(data, size, accepts[i], &a, err, sizeof err) != 0) {
      if (!err[0] || a.data)
        __builtin_trap();
      continue;
    }
    size_t n = npy_count(&a), item = a.dtype == NPY_U8 ? 1 : 4;
    volatile uint8_t sink = 0;
    for (size_t j = 0; j < n * item; j++)
      sink ^= ((const uint8_t *)a.data)[j];
    (void)sink;
    npy_free(&a);
  }
  return 0;
}
