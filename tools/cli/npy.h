/* Reading and writing NumPy .npy files (format versions 1.0, 2.0, 3.0) for
 * the attn command: little-endian float32 (float64 rounded and float16
 * widened exactly to float32 on reading; float64 values past float32's
 * range refused),
 * bool/uint8 masks, C or Fortran order, 1 to NPY_MAX_DIMS dims.
 * Malformed input of any kind gives an error message, never a crash. */
#ifndef ATTN_TOOLS_NPY_H
#define ATTN_TOOLS_NPY_H

#include <stddef.h>
#include <stdint.h>

#define NPY_MAX_DIMS 4
#define NPY_ERR_LEN 256

typedef enum npy_dtype { NPY_F32 = 0, NPY_U8 = 1 } npy_dtype;

/* Which element types a reader accepts. float16 and float64 count as float.
 * A finite float64 value past float32's range is refused (it would become
 * +-inf, then NaN rows, silently); with NPY_ADDITIVE_MASK one below it is
 * read as -inf (an additive mask's "hide": torch's finfo(float64).min). */
enum { NPY_ACCEPT_FLOAT = 1, NPY_ACCEPT_BOOL = 2, NPY_ADDITIVE_MASK = 4 };

typedef struct npy_array {
  npy_dtype dtype;   /* after conversion: float16 and float64 become NPY_F32 */
  int ndim;          /* 1..NPY_MAX_DIMS */
  int64_t dims[NPY_MAX_DIMS];
  void *data;        /* C order, malloc'd, owned */
} npy_array;

/* Parse an .npy image held in memory. On success fills *out (free with
 * npy_free) and returns 0; on failure returns -1, writes a sentence into
 * err (without a file name) and leaves *out empty. */
int npy_parse(const uint8_t *buf, size_t len, int accept, npy_array *out, char *err,
              size_t err_size);

/* Read a file; the message in err starts with the path. */
int npy_read(const char *path, int accept, npy_array *out, char *err, size_t err_size);

/* Write a C-order array (format 1.0, little-endian). Returns 0, or -1 with
 * a message naming the path. An existing plain file is replaced only when
 * the new one is complete (written beside it, then renamed), so a failed
 * write leaves it as it was; a partly written new file is removed. */
int npy_write(const char *path, npy_dtype dtype, int ndim, const int64_t *dims,
              const void *data, char *err, size_t err_size);

/* Number of elements (dims already validated, so it cannot overflow). */
size_t npy_count(const npy_array *a);

void npy_free(npy_array *a);

#endif
