/* Shared pieces of the libFuzzer targets: a reader that turns the input bytes
 * into choices (shapes, strides, parameters, data), tensors wrapped over
 * exactly-sized heap buffers (so ASan sees any byte read or written outside
 * them), sentinel checks on outputs, and a counting allocator that can be
 * told to fail.
 *
 * A finding is reported by FZ_CHECK, which prints the reason and aborts so
 * libFuzzer saves the input. Header-only: each target is one file. */
#ifndef ATTN_FUZZ_COMMON_H
#define ATTN_FUZZ_COMMON_H

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn.h"
#include "ref_half.h"

#define FZ_CHECK(cond, ...)                                                            \
  do {                                                                                 \
    if (!(cond)) {                                                                     \
      fprintf(stderr, "FUZZ CHECK FAILED at %s:%d: %s\n  ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                                                    \
      fprintf(stderr, "\n");                                                           \
      abort();                                                                         \
    }                                                                                  \
  } while (0)

/* Buffers larger than this are not allocated: a wrap over such a shape gets
 * a small buffer instead and must be refused. Keeps executions fast. */
#define FZ_MAX_BYTES ((size_t)1 << 20)

/* ---- input reader: past the end every read gives zero ---- */
typedef struct {
  const uint8_t *p;
  size_t n;
} fz_in;

static inline uint8_t fz_u8(fz_in *in) {
  if (!in->n)
    return 0;
  in->n--;
  return *in->p++;
}
static inline uint16_t fz_u16(fz_in *in) {
  uint16_t a = fz_u8(in);
  return (uint16_t)(a | (uint16_t)fz_u8(in) << 8);
}
static inline uint32_t fz_u32(fz_in *in) {
  uint32_t a = fz_u16(in);
  return a | (uint32_t)fz_u16(in) << 16;
}
static inline uint64_t fz_u64(fz_in *in) {
  uint64_t a = fz_u32(in);
  return a | (uint64_t)fz_u32(in) << 32;
}
/* Uniform-ish in [lo, hi]. */
static inline int64_t fz_range(fz_in *in, int64_t lo, int64_t hi) {
  if (hi <= lo)
    return lo;
  uint64_t span = (uint64_t)(hi - lo) + 1;
  uint64_t r = span <= 256 ? fz_u8(in) : fz_u32(in);
  return lo + (int64_t)(r % span);
}
/* True with probability about num/256. */
static inline int fz_chance(fz_in *in, int num) { return fz_u8(in) < num; }

/* Floats that sit on the edges the ops must handle. */
static const float fz_special_floats[] = {
    0.0f,     -0.0f,    1.0f,        -1.0f,        0.5f,     2.0f,        3.0f,
    -3.0f,    100.0f,   -100.0f,     88.7f,        -87.4f,   1e6f,        -1e6f,
    1e30f,    -1e30f,   1e-30f,      FLT_MAX,      -FLT_MAX, FLT_MIN,     -FLT_MIN,
    1e-45f,   -1e-45f,  INFINITY,    -INFINITY,    NAN,      0.125f,      1e-3f,
};
#define FZ_N_SPECIAL (sizeof fz_special_floats / sizeof fz_special_floats[0])

/* A float: an edge value, a small number, or arbitrary bits. */
static inline float fz_float(fz_in *in) {
  uint8_t sel = fz_u8(in);
  if (sel < 96)
    return fz_special_floats[sel % FZ_N_SPECIAL];
  if (sel < 224)
    return (float)(int16_t)fz_u16(in) / 1024.0f;
  uint32_t bits = fz_u32(in);
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}
/* A float that is finite and moderate most of the time. */
static inline float fz_float_mostly_small(fz_in *in) {
  if (fz_chance(in, 224))
    return (float)(int16_t)fz_u16(in) / 4096.0f;
  return fz_float(in);
}
static inline double fz_double(fz_in *in) {
  static const double special[] = {0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 10000.0, 1e6, 1e9, 1e300,
                                   -1e300, DBL_MAX, -DBL_MAX, DBL_MIN, 4.9e-324, INFINITY,
                                   -INFINITY, NAN, 1.0000001, 3.5, 500000.0, -7.0};
  uint8_t sel = fz_u8(in);
  if (sel < 96)
    return special[sel % (sizeof special / sizeof special[0])];
  if (sel < 224)
    return (double)(int32_t)fz_u32(in) / 65536.0;
  uint64_t bits = fz_u64(in);
  double d;
  memcpy(&d, &bits, sizeof d);
  return d;
}
/* An int32 enum value: mostly valid (0..n-1), sometimes anything. */
static inline int32_t fz_enum(fz_in *in, int32_t n) {
  if (fz_chance(in, 232))
    return (int32_t)fz_range(in, 0, n - 1);
  static const int32_t bad[] = {-1, INT32_MIN, INT32_MAX, 0x7fffffff, 2, 3, 4, 100, 256};
  return bad[fz_u8(in) % (sizeof bad / sizeof bad[0])];
}
/* A dimension: small most of the time (up to `small`), else a value meant to
 * break size arithmetic (zero, negative, 2^31, 2^62, ...). */
static inline int64_t fz_dim(fz_in *in, int64_t small) {
  /* One byte decides, as before empty tensors were allowed, so the committed
   * seeds still decode to the shapes they were grown for (mostly). */
  uint8_t sel = fz_u8(in);
  if (sel < 8)
    return 0; /* an empty tensor */
  if (sel < 240)
    return fz_range(in, 1, small);
  static const int64_t huge[] = {0,
                                 -1,
                                 INT64_MIN,
                                 INT64_MAX,
                                 (int64_t)1 << 31,
                                 ((int64_t)1 << 31) - 1,
                                 ((int64_t)1 << 31) + 1,
                                 (int64_t)1 << 32,
                                 (int64_t)1 << 62,
                                 3037000500, /* about sqrt(2^63) */
                                 65537,
                                 (int64_t)1 << 40,
                                 1 << 20};
  return huge[fz_u8(in) % (sizeof huge / sizeof huge[0])];
}

/* ---- deterministic data ---- */
typedef struct {
  uint64_t s;
} fz_rng;
static inline uint64_t fz_next(fz_rng *r) {
  r->s ^= r->s >> 12;
  r->s ^= r->s << 25;
  r->s ^= r->s >> 27;
  return r->s * 2685821657736338717ull;
}
static inline float fz_unit(fz_rng *r) { /* [-1, 1) */
  return (float)((double)(fz_next(r) >> 40) / 8388608.0 - 1.0);
}

/* Fill n floats. The mode picks a distribution; a few explicit pokes put
 * chosen values at chosen places (NaN in position 3, FLT_MAX first, ...). */
static inline void fz_fill(fz_in *in, float *x, size_t n) {
  fz_rng r = {(uint64_t)fz_u32(in) * 2 + 1};
  uint8_t mode = fz_u8(in) % 8;
  float k = fz_float(in);
  for (size_t i = 0; i < n; i++) {
    switch (mode) {
    case 0: case 1: case 2: x[i] = 3.0f * fz_unit(&r); break;
    case 3: x[i] = 1e4f * fz_unit(&r); break;
    case 4: x[i] = k; break;
    case 5: x[i] = fz_next(&r) % 8 ? 2.0f * fz_unit(&r)
                                   : fz_special_floats[fz_next(&r) % FZ_N_SPECIAL];
      break;
    case 6: x[i] = fz_unit(&r) * 1e-38f; break; /* subnormals */
    default: x[i] = fz_special_floats[fz_next(&r) % FZ_N_SPECIAL]; break;
    }
  }
  int pokes = fz_u8(in) % 4;
  for (int i = 0; i < pokes && n; i++) {
    size_t at = fz_u16(in) % n;
    x[at] = fz_float(in);
  }
}

static inline void fz_fill_u8(fz_in *in, uint8_t *x, size_t n) {
  fz_rng r = {(uint64_t)fz_u32(in) * 2 + 1};
  uint8_t mode = fz_u8(in) % 4;
  for (size_t i = 0; i < n; i++)
    x[i] = mode == 0 ? 1 : mode == 1 ? 0 : mode == 2 ? (uint8_t)(fz_next(&r) % 4 != 0)
                                                     : (uint8_t)fz_next(&r);
}

/* ---- the counting allocator: caps sizes, can fail the n-th call ---- */
typedef struct {
  long allocs, frees;
  long fail_at; /* 0 = never; else the fail_at-th allocation returns NULL */
} fz_alloc_state;

static inline void *fz_alloc(void *user, size_t size) {
  fz_alloc_state *a = user;
  if (size > ((size_t)64 << 20)) /* a real allocator could fail as well */
    return NULL;
  if (!a) /* options from an older caller that had no alloc_user: not counted */
    return malloc(size);
  if (a->fail_at && a->allocs + 1 == a->fail_at) {
    a->fail_at = 0;
    return NULL;
  }
  void *p = malloc(size);
  if (p)
    a->allocs++;
  return p;
}
static inline void fz_free(void *user, void *p) {
  fz_alloc_state *a = user;
  if (a)
    a->frees++;
  free(p);
}

/* A context on the counting allocator, 1 or 2 threads. */
static inline attn_ctx *fz_ctx(fz_alloc_state *a, int32_t threads) {
  attn_ctx_options o;
  attn_ctx_options_init(&o);
  o.num_threads = threads;
  o.alloc = fz_alloc;
  o.free = fz_free;
  o.alloc_user = a;
  attn_ctx *ctx = NULL;
  attn_status st = attn_ctx_create(&ctx, &o);
  FZ_CHECK(st == ATTN_OK, "attn_ctx_create: %s", attn_status_string(st));
  return ctx;
}
static inline void fz_ctx_destroy(attn_ctx *ctx, fz_alloc_state *a) {
  attn_ctx_destroy(ctx);
  FZ_CHECK(a->allocs == a->frees, "leak: %ld allocations, %ld frees", a->allocs, a->frees);
}

/* ---- a KV cache ---- */
typedef struct {
  attn_kv_cache *kv;
  int paged;
  int64_t block_size; /* paged */
  int64_t cap;        /* the most tokens one sequence can hold */
} fz_cache;

/* A cache of B sequences of H heads, key dim D and value dim Dv: contiguous
 * with a capacity of 1..max_cap, or paged with blocks of 1..9 tokens in a
 * pool of 1..12 (capped at max_cap per sequence). Now and then, when
 * big_cap > max_cap, a cache past 256-key tiles: a capacity of max_cap..
 * big_cap, or blocks of 1..300 tokens (mostly not dividing 256) and pools of
 * up to B * big_cap tokens, capped at big_cap per sequence (the extra byte
 * read only at the pool range's top: older seeds keep their caches). */
static inline fz_cache fz_kv_cache(fz_in *in, attn_ctx *ctx, int64_t B, int64_t H, int64_t D,
                                   int64_t Dv, int64_t max_cap, int64_t big_cap) {
  fz_cache c = {NULL, fz_chance(in, 128), 0, 0};
  int64_t bs = fz_range(in, 1, 9), n_blocks = fz_range(in, 1, 12), small_cap = 1;
  if (big_cap > max_cap && n_blocks == 12 && fz_chance(in, 128)) {
    bs = fz_range(in, 1, 300);
    n_blocks = fz_range(in, 1, (B * big_cap + bs - 1) / bs);
    small_cap = max_cap, max_cap = big_cap;
  }
  attn_kv_cache_params p;
  attn_kv_cache_params_init(&p);
  p.layout = c.paged;
  p.batch = B, p.kv_heads = H, p.head_dim = D, p.value_dim = Dv;
  if (c.paged) {
    p.block_size = c.block_size = bs, p.num_blocks = n_blocks;
    p.capacity = n_blocks * bs < max_cap ? 0 : max_cap;
    c.cap = n_blocks * bs < max_cap ? n_blocks * bs : max_cap;
  } else {
    p.capacity = c.cap = small_cap > 1 && fz_chance(in, 64) ? max_cap  /* split keys */
                                                            : fz_range(in, small_cap, max_cap);
  }
  FZ_CHECK(attn_kv_cache_create(ctx, &p, &c.kv) == ATTN_OK, "attn_kv_cache_create: %s",
           attn_ctx_last_error(ctx));
  return c;
}

/* ---- tensors over exactly-sized buffers ---- */
enum {
  FZ_INPUT = 0,  /* may broadcast (zero strides) */
  FZ_OUTPUT = 1, /* elements distinct */
};

typedef struct {
  int32_t dtype, ndim;
  int64_t dims[ATTN_MAX_DIMS];
  int64_t strides[ATTN_MAX_DIMS]; /* what was passed (valid when has_strides) */
  int64_t eff[ATTN_MAX_DIMS];     /* the strides the elements live at */
  int has_strides;
  int exotic;         /* strides the harness cannot judge (overlap, refused) */
  int valid;          /* the harness expects wrap to accept the layout */
  unsigned char *buf; /* malloc'd, buf_bytes long */
  size_t buf_bytes;
  size_t offset;      /* data = buf + offset */
  size_t size_bytes;  /* passed to wrap */
  unsigned char *snap; /* copy of buf before the op */
  attn_tensor *t;
} fz_tensor;

static inline size_t fz_dtype_size(int32_t dtype) {
  return dtype == ATTN_DTYPE_U8 ? 1 : dtype == ATTN_DTYPE_F16 || dtype == ATTN_DTYPE_BF16 ? 2 : 4;
}

/* Bytes from the first element to one past the last (0 for an empty
 * tensor); SIZE_MAX on overflow or an invalid layout. Written independently
 * of src/tensor.c. */
static inline size_t fz_extent(int32_t dtype, int32_t ndim, const int64_t *dims,
                               const int64_t *strides) {
  for (int32_t i = 0; i < ndim; i++)
    if (dims[i] < 0 || strides[i] < 0)
      return SIZE_MAX;
  for (int32_t i = 0; i < ndim; i++)
    if (dims[i] == 0)
      return 0; /* no element: nothing addressed, whatever the strides */
  unsigned __int128 last = 0;
  for (int32_t i = 0; i < ndim; i++) {
    last += (unsigned __int128)(uint64_t)(dims[i] - 1) * (uint64_t)strides[i];
    if (last > ((unsigned __int128)1 << 100))
      return SIZE_MAX;
  }
  unsigned __int128 bytes = (last + 1) * fz_dtype_size(dtype);
  if (bytes > (unsigned __int128)PTRDIFF_MAX / 2)
    return SIZE_MAX;
  return (size_t)bytes;
}

/* a * b for positive a, b, saturated at 2^62 (shapes here may be absurd). */
static inline int64_t fz_mul_sat(int64_t a, int64_t b) {
  if (a < 1)
    a = 1;
  if (b < 1)
    b = 1;
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r) || r > ((int64_t)1 << 62))
    return (int64_t)1 << 62;
  return r;
}

static inline void fz_contiguous(int32_t ndim, const int64_t *dims, int64_t *s) {
  uint64_t acc = 1;
  for (int32_t i = ndim - 1; i >= 0; i--) {
    s[i] = (int64_t)acc;
    acc *= (uint64_t)(dims[i] > 0 ? dims[i] : 1);
    if (acc > ((uint64_t)1 << 62))
      acc = (uint64_t)1 << 62;
  }
}

/* Wrap a buffer for tz's dims and strides (tz->strides, used when
 * tz->has_strides), filled from the input, or sentinels for an output. */
static inline void fz_wrap_chosen(fz_in *in, attn_ctx *ctx, fz_tensor *tz, int role);

/* Choose strides for `dims` and wrap a buffer. role decides whether zero
 * strides may be used; `shape_noise` lets a dim change (shape errors).
 * Returns the tensor in tz->t (NULL if wrap failed, which is then checked to
 * be right). */
static inline void fz_make_tensor(fz_in *in, attn_ctx *ctx, fz_tensor *tz, int32_t dtype,
                                  int32_t ndim, const int64_t *dims, int role) {
  memset(tz, 0, sizeof *tz);
  tz->dtype = dtype;
  tz->ndim = ndim;
  memcpy(tz->dims, dims, (size_t)ndim * sizeof *dims);
  uint8_t mode = fz_u8(in) % 16;
  int64_t *s = tz->strides;
  fz_contiguous(ndim, dims, s);
  tz->has_strides = mode != 0;
  tz->exotic = mode >= 13;
  switch (mode) {
  case 0: case 1: case 2: case 3: case 4: case 5: /* contiguous */
    break;
  case 6: case 7: case 8: { /* padded outer axes */
    uint64_t span = 1;
    for (int32_t i = ndim - 1; i >= 0; i--) {
      uint64_t pad = i == ndim - 1 ? 0 : fz_u8(in) % 4;
      s[i] = (int64_t)(i == ndim - 1 ? 1 : span + pad);
      span = (uint64_t)s[i] * (uint64_t)(dims[i] > 0 ? dims[i] - 1 : 0) + span;
      if (span > ((uint64_t)1 << 60))
        span = (uint64_t)1 << 60;
    }
    break;
  }
  case 9: case 10: /* broadcast some outer axes (inputs), else contiguous */
    if (role == FZ_INPUT)
      for (int32_t i = 0; i < ndim - 1; i++)
        if (fz_chance(in, 128))
          s[i] = 0;
    break;
  case 11: case 12: /* swap the two middle axes' strides ([B,L,H,D] as [B,H,L,D]) */
    if (ndim == 4) {
      s[3] = 1;
      s[1] = fz_mul_sat(dims[3], 1);
      s[2] = fz_mul_sat(dims[3], dims[1]);
      s[0] = fz_mul_sat(s[2], dims[2]);
    } else if (ndim >= 2) {
      s[0] = s[0] + (int64_t)(fz_u8(in) % 3);
    }
    break;
  case 13: /* arbitrary small strides: may overlap, fine for inputs only */
    for (int32_t i = 0; i < ndim - 1; i++)
      s[i] = fz_range(in, 0, 9);
    break;
  case 14: /* something wrap must refuse, or huge */
    {
      int32_t axis = (int32_t)fz_range(in, 0, ndim - 1);
      static const int64_t odd[] = {-1, 2, INT64_MIN, INT64_MAX, (int64_t)1 << 40, 0};
      s[axis] = odd[fz_u8(in) % 6];
    }
    break;
  default: /* full-range random */
    for (int32_t i = 0; i < ndim; i++)
      s[i] = fz_chance(in, 200) ? fz_range(in, 0, 40) : (int64_t)fz_u64(in);
    break;
  }
  fz_wrap_chosen(in, ctx, tz, role);
}

/* A tensor over the given strides (overlapping rows allowed: inputs only). */
static inline void fz_make_tensor_strided(fz_in *in, attn_ctx *ctx, fz_tensor *tz, int32_t dtype,
                                          int32_t ndim, const int64_t *dims,
                                          const int64_t *strides, int role) {
  memset(tz, 0, sizeof *tz);
  tz->dtype = dtype;
  tz->ndim = ndim;
  memcpy(tz->dims, dims, (size_t)ndim * sizeof *dims);
  memcpy(tz->strides, strides, (size_t)ndim * sizeof *strides);
  tz->has_strides = 1;
  fz_wrap_chosen(in, ctx, tz, role);
}

static inline void fz_wrap_chosen(fz_in *in, attn_ctx *ctx, fz_tensor *tz, int role) {
  int32_t dtype = tz->dtype, ndim = tz->ndim;
  const int64_t *dims = tz->dims;
  const int64_t *s = tz->strides;
  /* What wrap should decide, per the header's rules. */
  int ok = ndim >= 1 && ndim <= ATTN_MAX_DIMS;
  for (int32_t i = 0; ok && i < ndim; i++)
    if (dims[i] < 0)
      ok = 0;
  /* The non-zero dims must multiply within int64, empty tensors too. */
  unsigned __int128 nonzero = 1;
  for (int32_t i = 0; ok && i < ndim; i++)
    if (dims[i] > 0 && (nonzero *= (uint64_t)dims[i]) > INT64_MAX)
      ok = 0;
  memcpy(tz->eff, s, sizeof tz->eff);
  if (ok && tz->has_strides) {
    for (int32_t i = 0; i < ndim; i++)
      if (s[i] < 0)
        ok = 0;
    if (ok && s[ndim - 1] != 1 && dims[ndim - 1] > 1)
      ok = 0;
    tz->eff[ndim - 1] = 1;
  }
  size_t extent = ok ? fz_extent(dtype, ndim, dims, tz->eff) : SIZE_MAX;
  if (extent == SIZE_MAX) {
    ok = 0; /* overflow: wrap must refuse */
    extent = 0;
  }
  size_t want = ok && extent <= FZ_MAX_BYTES ? extent : 64;
  /* Sometimes one byte short (must be refused), sometimes misaligned. */
  int short_by_one = want > 0 && fz_chance(in, 8);
  tz->offset = fz_chance(in, 6) ? (size_t)fz_range(in, 1, 3) : 0;
  tz->buf_bytes = want + tz->offset;
  tz->buf = malloc(tz->buf_bytes ? tz->buf_bytes : 1);
  FZ_CHECK(tz->buf, "malloc");
  tz->size_bytes = want - (size_t)short_by_one;
  if (extent > tz->size_bytes)
    ok = 0;
  if (tz->offset % fz_dtype_size(dtype))
    ok = 0;
  tz->valid = ok;
  unsigned char *data = tz->buf + tz->offset;
  if (dtype == ATTN_DTYPE_F16 || dtype == ATTN_DTYPE_BF16) {
    /* Floats as for F32, each rounded to the 2-byte type. */
    size_t n = (tz->buf_bytes - tz->offset) / 2;
    float *tmp = malloc((n ? n : 1) * sizeof *tmp);
    FZ_CHECK(tmp, "malloc");
    if (role == FZ_OUTPUT)
      for (size_t i = 0; i < n; i++)
        tmp[i] = -12345.5f; /* sentinel */
    else
      fz_fill(in, tmp, n);
    for (size_t i = 0; i < n; i++) {
      uint32_t b;
      memcpy(&b, &tmp[i], 4);
      uint16_t h = dtype == ATTN_DTYPE_F16 ? ref_to_f16(b) : ref_to_bf16(b);
      memcpy(data + 2 * i, &h, 2);
    }
    free(tmp);
  } else if (dtype == ATTN_DTYPE_F32) {
    size_t n = (tz->buf_bytes - tz->offset) / 4;
    float *tmp = malloc((n ? n : 1) * sizeof *tmp); /* data may be misaligned */
    FZ_CHECK(tmp, "malloc");
    if (role == FZ_OUTPUT)
      for (size_t i = 0; i < n; i++)
        tmp[i] = -12345.5f; /* sentinel */
    else
      fz_fill(in, tmp, n);
    memcpy(data, tmp, n * 4);
    free(tmp);
  } else {
    fz_fill_u8(in, data, tz->buf_bytes - tz->offset);
  }
  attn_tensor *t = (attn_tensor *)0x1;
  attn_status st = attn_tensor_wrap(ctx, dtype, ndim, dims, tz->has_strides ? s : NULL, data,
                                    tz->size_bytes, &t);
  if (st == ATTN_OK) {
    FZ_CHECK(ok, "attn_tensor_wrap accepted a layout it must refuse (ndim %d, extent %zu, "
                 "size_bytes %zu, offset %zu)",
             (int)ndim, extent, tz->size_bytes, tz->offset);
    FZ_CHECK(attn_tensor_ndim(t) == ndim, "ndim");
    FZ_CHECK(memcmp(attn_tensor_dims(t), dims, (size_t)ndim * sizeof *dims) == 0, "dims");
    FZ_CHECK(memcmp(attn_tensor_strides(t), tz->eff, (size_t)ndim * sizeof *dims) == 0 ||
                 !tz->has_strides,
             "strides");
    FZ_CHECK(attn_tensor_data(t) == data, "data");
    tz->t = t;
    for (int32_t i = 0; i < ndim; i++)
      if (dims[i] == 0) /* empty: no element is addressed, so no stride matters */
        memset(tz->eff, 0, sizeof tz->eff);
  } else {
    FZ_CHECK(t == (attn_tensor *)0x1, "out written on failure");
    FZ_CHECK(!ok || st == ATTN_ERR_NO_MEMORY,
             "attn_tensor_wrap refused a valid layout: %s: %s", attn_status_string(st),
             attn_ctx_last_error(ctx));
    FZ_CHECK(attn_ctx_last_error(ctx)[0] != '\0', "no message");
    tz->t = NULL;
  }
  tz->snap = malloc(tz->buf_bytes ? tz->buf_bytes : 1);
  FZ_CHECK(tz->snap, "malloc");
  memcpy(tz->snap, tz->buf, tz->buf_bytes);
}

static inline void fz_tensor_release(fz_tensor *tz) {
  free(tz->buf);
  free(tz->snap);
  tz->buf = tz->snap = NULL;
}

static inline void *fz_data(const fz_tensor *tz) { return tz->buf + tz->offset; }

/* The buffer is exactly as before the op. */
static inline int fz_unchanged(const fz_tensor *tz) {
  return memcmp(tz->buf, tz->snap, tz->buf_bytes) == 0;
}

/* A zero stride on an axis longer than 1: such a tensor cannot be written. */
static inline int fz_broadcasts(const fz_tensor *tz) {
  for (int32_t i = 0; i < tz->ndim; i++)
    if (tz->dims[i] == 0)
      return 0; /* empty: nothing is written */
  for (int32_t i = 0; i < tz->ndim; i++)
    if (tz->dims[i] > 1 && tz->eff[i] == 0)
      return 1;
  return 0;
}

/* Number of elements of a tensor (its dims' product); small for outputs. */
static inline int64_t fz_numel(const fz_tensor *tz) {
  int64_t n = 1;
  for (int32_t i = 0; i < tz->ndim; i++)
    if (tz->dims[i] == 0)
      return 0; /* empty */
  for (int32_t i = 0; i < tz->ndim; i++)
    n = fz_mul_sat(n, tz->dims[i]); /* a broadcast input may be huge */
  return n;
}

/* Offset in elements of the flat (row-major) index `flat`. */
static inline int64_t fz_offset(const fz_tensor *tz, int64_t flat) {
  int64_t off = 0;
  for (int32_t i = tz->ndim - 1; i >= 0; i--) {
    off += (flat % tz->dims[i]) * tz->eff[i];
    flat /= tz->dims[i];
  }
  return off;
}

/* After a successful op: bytes of an output's buffer that are not its
 * elements (gaps of padded strides, the misalignment prefix) are untouched. */
static inline void fz_check_gaps(const fz_tensor *tz, const char *name) {
  size_t es = fz_dtype_size(tz->dtype);
  unsigned char *mark = calloc(tz->buf_bytes ? tz->buf_bytes : 1, 1);
  FZ_CHECK(mark, "calloc");
  int64_t n = fz_numel(tz);
  for (int64_t f = 0; f < n; f++) {
    size_t at = tz->offset + (size_t)fz_offset(tz, f) * es;
    memset(mark + at, 1, es);
  }
  for (size_t b = 0; b < tz->buf_bytes; b++)
    if (!mark[b] && tz->buf[b] != tz->snap[b]) {
      free(mark);
      FZ_CHECK(0, "%s: byte %zu outside the tensor's elements was written", name, b);
    }
  free(mark);
}

/* Element `off` (in elements) of a float tensor (F32, F16 or BF16), exactly. */
static inline float fz_read(const fz_tensor *tz, int64_t off) {
  const unsigned char *p = (const unsigned char *)fz_data(tz);
  uint32_t b;
  if (tz->dtype == ATTN_DTYPE_F32) {
    memcpy(&b, p + off * 4, 4);
  } else {
    uint16_t h;
    memcpy(&h, p + off * 2, 2);
    b = tz->dtype == ATTN_DTYPE_F16 ? ref_from_f16(h) : ref_from_bf16(h);
  }
  float v;
  memcpy(&v, &b, 4);
  return v;
}

/* Half an ULP, relative, of a tensor's type (0 for F32): what rounding a
 * float result into it may add. */
static inline double fz_half_ulp(int32_t dtype) {
  return dtype == ATTN_DTYPE_F16 ? 0x1p-11 : dtype == ATTN_DTYPE_BF16 ? 0x1p-8 : 0.0;
}

/* A data tensor's type: mostly F32, sometimes F16 or BF16. */
static inline int32_t fz_float_dtype(fz_in *in) {
  uint8_t c = fz_u8(in);
  return c < 176 ? ATTN_DTYPE_F32 : c < 216 ? ATTN_DTYPE_F16 : ATTN_DTYPE_BF16;
}

/* Element `flat` (row-major index) of a float tensor. */
static inline float fz_get(const fz_tensor *tz, int64_t flat) {
  return fz_read(tz, fz_offset(tz, flat));
}
static inline uint8_t fz_get_u8(const fz_tensor *tz, int64_t flat) {
  return ((const uint8_t *)fz_data(tz))[fz_offset(tz, flat)];
}
/* Element at a multi-index broadcast from `full` (ndim axes, right-aligned). */
static inline int64_t fz_bcast_offset(const fz_tensor *tz, int32_t ndim, const int64_t *idx) {
  int64_t off = 0;
  int32_t shift = ndim - tz->ndim;
  for (int32_t i = 0; i < tz->ndim; i++) {
    int64_t j = tz->dims[i] == 1 ? 0 : idx[i + shift];
    off += j * tz->eff[i];
  }
  return off;
}

/* ---- parameter structs: the size field and the bytes after the struct ---- */
/* Pick a struct_size for a struct of `size` bytes: mostly its own size,
 * else an older (shorter, 8-aligned) size, too small a size, or a newer
 * (larger) size whose tail is zero or not. The struct is assumed to sit at
 * the start of a zeroed buffer of `cap` bytes; the tail is written here. */
static inline size_t fz_struct_size(fz_in *in, unsigned char *buf, size_t size, size_t cap) {
  uint8_t sel = fz_u8(in);
  if (sel < 176)
    return size;
  if (sel < 208)
    return (size_t)fz_range(in, 1, (int64_t)size / 8) * 8; /* older, 8-aligned */
  if (sel < 216)
    return (size_t)fz_range(in, 0, 7); /* too small to hold struct_size */
  size_t bigger = size + (size_t)fz_range(in, 1, (int64_t)(cap - size) / 8) * 8;
  if (bigger > cap)
    bigger = cap;
  if (fz_chance(in, 96))
    buf[size + (size_t)fz_range(in, 0, (int64_t)(bigger - size - 1))] = (unsigned char)fz_range(in, 1, 255);
  return bigger;
}

/* The parameters the library will use: defaults overwritten by the caller's
 * bytes, as the header describes (only the fields the size covers). Returns
 * 0 when the library must refuse the struct (size too small, or a non-zero
 * byte it does not know). */
static inline int fz_effective_params(void *eff, size_t eff_size, const void *given,
                                      size_t given_size) {
  if (given_size < sizeof(size_t))
    return 0;
  const unsigned char *g = given;
  for (size_t i = eff_size; i < given_size; i++)
    if (g[i])
      return 0;
  memcpy(eff, given, given_size < eff_size ? given_size : eff_size);
  return 1;
}

#endif
