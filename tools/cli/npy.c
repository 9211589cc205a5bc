/* .npy reader and writer. The format: the magic "\x93NUMPY", a major and a
 * minor version byte, the header length (uint16 for 1.0, uint32 for 2.0 and
 * 3.0, little-endian), then a Python dict literal such as
 *   {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
 * padded with spaces and a newline, then the raw data. The parser accepts
 * exactly that dict (keys in any order, either quote style) and checks
 * every length against the bytes present before touching them. */
#define _POSIX_C_SOURCE 200809L /* mkstemp, fdopen, lstat, fchmod */
#include "npy.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Largest dimension accepted: keeps every size product below 2^63. */
#define NPY_DIM_MAX ((int64_t)1 << 40)

static int fail(char *err, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t size, const char *fmt, ...) {
  if (err && size) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, size, fmt, ap);
    va_end(ap);
  }
  return -1;
}

size_t npy_count(const npy_array *a) {
  size_t n = 1;
  for (int i = 0; i < a->ndim; i++)
    n *= (size_t)a->dims[i];
  return n;
}

void npy_free(npy_array *a) {
  if (!a)
    return;
  free(a->data);
  memset(a, 0, sizeof *a);
}

/* ---- header parsing ---- */

typedef struct {
  const char *s;
  size_t n, i;
} lexer;

static void skip_ws(lexer *lx) {
  while (lx->i < lx->n && (lx->s[lx->i] == ' ' || lx->s[lx->i] == '\t' ||
                           lx->s[lx->i] == '\n' || lx->s[lx->i] == '\r'))
    lx->i++;
}

/* The next non-blank character, or 0 at the end. */
static char peek(lexer *lx) {
  skip_ws(lx);
  return lx->i < lx->n ? lx->s[lx->i] : 0;
}

static int expect(lexer *lx, char c, char *err, size_t es) {
  char got = peek(lx);
  if (got != c) {
    if (got)
      return fail(err, es, "bad header: expected '%c' at byte %zu, found '%c'", c, lx->i,
                  (got >= 32 && got < 127) ? got : '?');
    return fail(err, es, "bad header: expected '%c' at byte %zu, found its end", c, lx->i);
  }
  lx->i++;
  return 0;
}

/* A quoted string without escapes, copied into buf (cap bytes). */
static int parse_string(lexer *lx, char *buf, size_t cap, char *err, size_t es) {
  char q = peek(lx);
  if (q != '\'' && q != '"')
    return fail(err, es, "bad header: expected a quoted string at byte %zu", lx->i);
  size_t start = ++lx->i, len = 0;
  while (lx->i < lx->n && lx->s[lx->i] != q) {
    if (lx->s[lx->i] == '\\')
      return fail(err, es, "bad header: escapes in strings are not supported (byte %zu)",
                  lx->i);
    lx->i++;
  }
  if (lx->i >= lx->n)
    return fail(err, es, "bad header: unterminated string at byte %zu", start - 1);
  len = lx->i - start;
  lx->i++;
  if (len >= cap)
    return fail(err, es, "bad header: string at byte %zu is too long (%zu chars)", start - 1,
                len);
  memcpy(buf, lx->s + start, len);
  buf[len] = 0;
  return 0;
}

static int parse_bool(lexer *lx, int *out, char *err, size_t es) {
  peek(lx);
  if (lx->n - lx->i >= 4 && !memcmp(lx->s + lx->i, "True", 4)) {
    lx->i += 4;
    *out = 1;
    return 0;
  }
  if (lx->n - lx->i >= 5 && !memcmp(lx->s + lx->i, "False", 5)) {
    lx->i += 5;
    *out = 0;
    return 0;
  }
  return fail(err, es, "bad header: fortran_order must be True or False (byte %zu)", lx->i);
}

static int parse_dim(lexer *lx, int64_t *out, char *err, size_t es) {
  char c = peek(lx);
  if (c == '-')
    return fail(err, es, "bad header: negative dimension at byte %zu", lx->i);
  if (c < '0' || c > '9')
    return fail(err, es, "bad header: expected a dimension at byte %zu", lx->i);
  int64_t v = 0;
  while (lx->i < lx->n && lx->s[lx->i] >= '0' && lx->s[lx->i] <= '9') {
    v = v * 10 + (lx->s[lx->i] - '0');
    if (v > NPY_DIM_MAX)
      return fail(err, es, "bad header: a dimension exceeds 2^40 (byte %zu)", lx->i);
    lx->i++;
  }
  if (lx->i < lx->n && lx->s[lx->i] == 'L') /* Python 2 long */
    lx->i++;
  *out = v;
  return 0;
}

/* "(" [dim {"," dim} [","]] ")"; up to 32 dims parsed so that too many is
 * reported as such. */
#define NPY_PARSE_DIMS 32
static int parse_shape(lexer *lx, int *ndim, int64_t *dims, char *err, size_t es) {
  if (expect(lx, '(', err, es))
    return -1;
  int n = 0;
  while (peek(lx) != ')') {
    if (n == NPY_PARSE_DIMS)
      return fail(err, es, "bad header: shape has more than %d dims", NPY_PARSE_DIMS);
    if (parse_dim(lx, &dims[n++], err, es))
      return -1;
    char c = peek(lx);
    if (c == ',')
      lx->i++;
    else if (c != ')')
      return fail(err, es, "bad header: expected ',' or ')' in shape at byte %zu", lx->i);
  }
  lx->i++;
  *ndim = n;
  return 0;
}

typedef struct {
  char descr[16];
  int fortran;
  int ndim;
  int64_t dims[NPY_PARSE_DIMS];
} header;

static int parse_header(const char *s, size_t n, header *h, char *err, size_t es) {
  lexer lx = {s, n, 0};
  int seen_descr = 0, seen_fortran = 0, seen_shape = 0;
  if (expect(&lx, '{', err, es))
    return -1;
  while (peek(&lx) != '}') {
    char key[32];
    if (parse_string(&lx, key, sizeof key, err, es) || expect(&lx, ':', err, es))
      return -1;
    if (!strcmp(key, "descr")) {
      if (seen_descr++)
        return fail(err, es, "bad header: key 'descr' appears twice");
      if (peek(&lx) == '[')
        return fail(err, es, "structured dtypes are not supported (float32, float64, bool "
                             "or uint8 arrays are)");
      if (parse_string(&lx, h->descr, sizeof h->descr, err, es))
        return -1;
    } else if (!strcmp(key, "fortran_order")) {
      if (seen_fortran++)
        return fail(err, es, "bad header: key 'fortran_order' appears twice");
      if (parse_bool(&lx, &h->fortran, err, es))
        return -1;
    } else if (!strcmp(key, "shape")) {
      if (seen_shape++)
        return fail(err, es, "bad header: key 'shape' appears twice");
      if (parse_shape(&lx, &h->ndim, h->dims, err, es))
        return -1;
    } else {
      return fail(err, es, "bad header: unknown key '%s'", key);
    }
    char c = peek(&lx);
    if (c == ',')
      lx.i++;
    else if (c != '}')
      return fail(err, es, "bad header: expected ',' or '}' at byte %zu", lx.i);
  }
  lx.i++;
  if (peek(&lx) != 0)
    return fail(err, es, "bad header: unexpected text after the dict at byte %zu", lx.i);
  if (!seen_descr || !seen_fortran || !seen_shape)
    return fail(err, es, "bad header: missing key '%s'",
                !seen_descr ? "descr" : !seen_fortran ? "fortran_order" : "shape");
  return 0;
}

/* ---- element types ---- */

typedef enum { SRC_F32, SRC_F64, SRC_F16, SRC_U8 } src_type;

static int parse_descr(const char *d, int accept, src_type *t, size_t *itemsize, char *err,
                       size_t es) {
  int kinds = accept & (NPY_ACCEPT_FLOAT | NPY_ACCEPT_BOOL);
  const char *want = kinds == NPY_ACCEPT_BOOL    ? "bool or uint8"
                     : kinds == NPY_ACCEPT_FLOAT ? "float16, float32 or float64"
                                                 : "float16, float32, float64, bool or uint8";
  char order = d[0];
  const char *kind = d + 1;
  if (order != '<' && order != '|' && order != '=' && order != '>')
    order = 0, kind = d;
  if (!strcmp(kind, "f2") || !strcmp(kind, "f4") || !strcmp(kind, "f8")) {
    if (order == '>')
      return fail(err, es, "dtype '%s' is big-endian; only little-endian data is read", d);
    if (!(accept & NPY_ACCEPT_FLOAT))
      return fail(err, es, "dtype '%s' (float) but this argument must be %s", d, want);
    *itemsize = (size_t)(kind[1] - '0');
    *t = *itemsize == 2 ? SRC_F16 : *itemsize == 4 ? SRC_F32 : SRC_F64;
    return 0;
  }
  if (!strcmp(kind, "b1") || !strcmp(kind, "u1")) {
    if (!(accept & NPY_ACCEPT_BOOL))
      return fail(err, es, "dtype '%s' (%s) but this argument must be %s", d,
                  kind[0] == 'b' ? "bool" : "uint8", want);
    *t = SRC_U8;
    *itemsize = 1;
    return 0;
  }
  return fail(err, es, "dtype '%s' is not supported; this argument must be %s", d, want);
}

static float load_f32(const uint8_t *p) {
  uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
               (uint32_t)p[3] << 24;
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/* IEEE binary16, widened exactly: every half value is a float. */
static float load_f16(const uint8_t *p) {
  unsigned u = (unsigned)p[0] | (unsigned)p[1] << 8;
  unsigned e = u >> 10 & 31, m = u & 1023;
  float v = e == 31 ? (m ? NAN : INFINITY)
            : e == 0 ? ldexpf((float)m, -24)        /* zero or subnormal */
                     : ldexpf((float)(1024 + m), (int)e - 25);
  return u & 0x8000 ? -v : v;
}

static double load_f64(const uint8_t *p) {
  uint64_t u = 0;
  for (int i = 7; i >= 0; i--)
    u = u << 8 | p[i];
  double d;
  memcpy(&d, &u, sizeof d);
  return d;
}

int npy_parse(const uint8_t *buf, size_t len, int accept, npy_array *out, char *err,
              size_t es) {
  memset(out, 0, sizeof *out);
  if (len < 10)
    return fail(err, es, "too short to be an .npy file (%zu bytes)", len);
  if (memcmp(buf, "\x93NUMPY", 6))
    return fail(err, es, "not an .npy file (no \\x93NUMPY magic at the start)");
  int major = buf[6], minor = buf[7];
  if (major < 1 || major > 3 || minor != 0)
    return fail(err, es, "unsupported .npy format version %d.%d (1.0 to 3.0 are read)", major,
                minor);
  size_t pre = major == 1 ? 10 : 12, hlen;
  if (len < pre)
    return fail(err, es, "truncated: %zu bytes, shorter than the format %d.0 preamble", len,
                major);
  if (major == 1)
    hlen = (size_t)buf[8] | (size_t)buf[9] << 8;
  else
    hlen = (size_t)buf[8] | (size_t)buf[9] << 8 | (size_t)buf[10] << 16 |
           (size_t)buf[11] << 24;
  if (hlen > len - pre)
    return fail(err, es, "truncated: the header is %zu bytes but only %zu follow", hlen,
                len - pre);
  for (size_t i = 0; i < hlen; i++)
    if (buf[pre + i] == 0 || buf[pre + i] >= 128)
      return fail(err, es, "bad header: byte %zu is not printable ASCII", i);

  header h;
  memset(&h, 0, sizeof h);
  if (parse_header((const char *)buf + pre, hlen, &h, err, es))
    return -1;
  src_type t = SRC_F32;
  size_t itemsize = 4;
  if (parse_descr(h.descr, accept, &t, &itemsize, err, es))
    return -1;
  if (h.ndim == 0)
    return fail(err, es, "shape () is a scalar; arrays of 1 to %d dims are needed",
                NPY_MAX_DIMS);
  if (h.ndim > NPY_MAX_DIMS)
    return fail(err, es, "shape has %d dims but at most %d are supported", h.ndim,
                NPY_MAX_DIMS);
  uint64_t count = 1;
  for (int i = 0; i < h.ndim; i++) {
    if (h.dims[i] == 0)
      return fail(err, es, "shape[%d] = 0: empty arrays are not supported", i);
    if (__builtin_mul_overflow(count, (uint64_t)h.dims[i], &count) ||
        count > ((uint64_t)1 << 60))
      return fail(err, es, "the shape's element count is too large");
  }
  uint64_t want = count * itemsize, have = len - pre - hlen;
  if (have < want)
    return fail(err, es,
                "truncated: the header promises %llu bytes of data but only %llu follow",
                (unsigned long long)want, (unsigned long long)have);
  if (have > want)
    return fail(err, es,
                "the header lies: it describes %llu bytes of data but %llu follow",
                (unsigned long long)want, (unsigned long long)have);

  size_t out_size = t == SRC_U8 ? 1 : 4;
  if (count > SIZE_MAX / out_size)
    return fail(err, es, "the array is too large for memory");
  uint8_t *data = malloc(count ? (size_t)count * out_size : 1);
  if (!data)
    return fail(err, es, "out of memory for %llu elements", (unsigned long long)count);
  const uint8_t *src = buf + pre + hlen;
  /* Element e of the file (in its order) goes to C-order index dst. For
   * Fortran order the file's first axis varies fastest: walk the C-order
   * multi-index with the Fortran strides. */
  int64_t fstride[NPY_MAX_DIMS], idx[NPY_MAX_DIMS] = {0};
  int64_t s = 1;
  for (int i = 0; i < h.ndim; i++) {
    fstride[i] = s;
    s *= h.dims[i];
  }
  int64_t foff = 0;
  for (uint64_t dst = 0; dst < count; dst++) {
    size_t e = h.fortran ? (size_t)foff : (size_t)dst;
    const uint8_t *p = src + e * itemsize;
    switch (t) {
    case SRC_F32: ((float *)data)[dst] = load_f32(p); break;
    case SRC_F64: {
      double v = load_f64(p);
      float f = (float)v;
      if (isinf(f) && isfinite(v) && !(v < 0 && (accept & NPY_ADDITIVE_MASK))) {
        free(data);
        return fail(err, es, "element %llu (C order) is %g, past float32's range (float64 "
                             "data is rounded to float32, where it would be %s)",
                    (unsigned long long)dst, v, v < 0 ? "-inf" : "inf");
      }
      ((float *)data)[dst] = f;
      break;
    }
    case SRC_F16: ((float *)data)[dst] = load_f16(p); break;
    case SRC_U8: data[dst] = p[0]; break;
    }
    if (h.fortran)
      for (int a = h.ndim - 1; a >= 0; a--) {
        foff += fstride[a];
        if (++idx[a] < h.dims[a])
          break;
        foff -= fstride[a] * h.dims[a];
        idx[a] = 0;
      }
  }
  out->dtype = t == SRC_U8 ? NPY_U8 : NPY_F32;
  out->ndim = h.ndim;
  memcpy(out->dims, h.dims, (size_t)h.ndim * sizeof h.dims[0]);
  out->data = data;
  return 0;
}

int npy_read(const char *path, int accept, npy_array *out, char *err, size_t es) {
  memset(out, 0, sizeof *out);
  FILE *f = fopen(path, "rb");
  if (!f)
    return fail(err, es, "%s: cannot open: %s", path, strerror(errno));
  size_t cap = 1 << 16, len = 0;
  uint8_t *buf = malloc(cap);
  int rc = -1;
  if (!buf) {
    fail(err, es, "%s: out of memory", path);
    goto done;
  }
  for (;;) {
    if (len == cap) {
      uint8_t *nb = cap > SIZE_MAX / 2 ? NULL : realloc(buf, cap * 2);
      if (!nb) {
        fail(err, es, "%s: out of memory reading the file", path);
        goto done;
      }
      buf = nb;
      cap *= 2;
    }
    size_t got = fread(buf + len, 1, cap - len, f);
    len += got;
    if (got == 0) {
      if (ferror(f)) {
        fail(err, es, "%s: read error: %s", path, strerror(errno));
        goto done;
      }
      break;
    }
  }
  char msg[NPY_ERR_LEN];
  if (npy_parse(buf, len, accept, out, msg, sizeof msg)) {
    fail(err, es, "%s: %s", path, msg);
    goto done;
  }
  rc = 0;
done:
  free(buf);
  fclose(f);
  return rc;
}

int npy_write(const char *path, npy_dtype dtype, int ndim, const int64_t *dims,
              const void *data, char *err, size_t es) {
  if (ndim < 1 || ndim > NPY_MAX_DIMS)
    return fail(err, es, "%s: cannot write %d dims", path, ndim);
  char hdr[256];
  int n = snprintf(hdr, sizeof hdr, "{'descr': '%s', 'fortran_order': False, 'shape': (",
                   dtype == NPY_U8 ? "|u1" : "<f4");
  size_t count = 1;
  for (int i = 0; i < ndim; i++) {
    n += snprintf(hdr + n, sizeof hdr - (size_t)n, "%lld%s", (long long)dims[i],
                  ndim == 1 ? "," : i + 1 < ndim ? ", " : "");
    count *= (size_t)dims[i];
  }
  n += snprintf(hdr + n, sizeof hdr - (size_t)n, "), }");
  /* Pad with spaces so the data starts on a 64-byte boundary, as NumPy does. */
  size_t total = 10 + (size_t)n + 1;
  size_t padded = (total + 63) / 64 * 64;
  uint8_t pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, 0, 0};
  size_t hlen = padded - 10;
  pre[8] = (uint8_t)(hlen & 0xff);
  pre[9] = (uint8_t)(hlen >> 8);
  int to_stdout = !strcmp(path, "-"); /* "-o -": standard output */
  /* An existing plain file (perhaps one of the inputs) is replaced only once
   * the new one is complete: written beside it, then renamed over it, so a
   * failed write leaves it as it was. Anything else (a new name, a device, a
   * symlink, a file with other links) is written in place. */
  struct stat old;
  char *tmp = NULL;
  FILE *f = stdout;
  if (!to_stdout && lstat(path, &old) == 0 && S_ISREG(old.st_mode) && old.st_nlink == 1 &&
      (tmp = malloc(strlen(path) + 8)) != NULL) {
    strcpy(tmp, path);
    strcat(tmp, ".XXXXXX");
    int fd = mkstemp(tmp);
    if (fd < 0 || fchmod(fd, old.st_mode & 07777) != 0 || !(f = fdopen(fd, "wb"))) {
      int saved = errno;
      if (fd >= 0) {
        close(fd);
        remove(tmp);
      }
      free(tmp);
      return fail(err, es, "%s: cannot create a file beside it: %s", path, strerror(saved));
    }
  } else if (!to_stdout && !(f = fopen(path, "wb"))) {
    return fail(err, es, "%s: cannot create: %s", path, strerror(errno));
  }
  int ok = fwrite(pre, 1, sizeof pre, f) == sizeof pre &&
           fwrite(hdr, 1, (size_t)n, f) == (size_t)n;
  for (size_t i = (size_t)n; ok && i + 1 < hlen; i++)
    ok = fputc(' ', f) != EOF;
  ok = ok && fputc('\n', f) != EOF;
  if (dtype == NPY_U8) {
    ok = ok && fwrite(data, 1, count, f) == count;
  } else {
    /* Little-endian bytes whatever the host's order, a block at a time. */
    const float *x = data;
    uint8_t block[4096];
    for (size_t i = 0; ok && i < count;) {
      size_t m = 0;
      for (; i < count && m < sizeof block; i++, m += 4) {
        uint32_t u;
        memcpy(&u, &x[i], sizeof u);
        block[m] = (uint8_t)u;
        block[m + 1] = (uint8_t)(u >> 8);
        block[m + 2] = (uint8_t)(u >> 16);
        block[m + 3] = (uint8_t)(u >> 24);
      }
      ok = fwrite(block, 1, m, f) == m;
    }
  }
  int saved = errno;
  if ((to_stdout ? fflush(f) : fclose(f)) != 0 && ok) {
    ok = 0;
    saved = errno;
  }
  if (ok && tmp && rename(tmp, path) != 0) {
    ok = 0;
    saved = errno;
  }
  if (!ok && !to_stdout)
    remove(tmp ? tmp : path);
  free(tmp);
  if (!ok)
    return fail(err, es, "%s: write error: %s", path, strerror(saved));
  return 0;
}
