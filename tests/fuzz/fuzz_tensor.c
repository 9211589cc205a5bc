/* Fuzz target: contexts and tensors. The input is a script of actions
 * (create, wrap, free, free twice, free through the wrong context, accessors,
 * info functions, copies with dtype conversion checked element by element
 * against tests/reference/ref_half.c) on one or two contexts with fuzzed
 * options and a counting
 * allocator that may fail. Checks: every status agrees with the header's
 * rules (an independent oracle for layouts and sizes), out-pointers are
 * written only on success, owned buffers are zero-filled, wrapped buffers
 * are never touched, and destroying the contexts frees every allocation. */
#include "fuzz_common.h"
#include "ref_half.h"

#define MAX_LIVE 16

typedef struct {
  attn_tensor *t;
  int ctx; /* 0 or 1 */
  fz_tensor wrapped; /* buf == NULL for owned tensors */
  int32_t ndim;
  int64_t dims[ATTN_MAX_DIMS];
} live_tensor;

static attn_ctx *make_ctx(fz_in *in, fz_alloc_state *a) {
  unsigned char raw[sizeof(attn_ctx_options) + 64];
  memset(raw, 0, sizeof raw);
  attn_ctx_options o;
  attn_ctx_options_init(&o);
  static const int32_t threads[] = {1, 1, 1, 2, 2, 0, 3, -1, 1025, INT32_MIN, INT32_MAX};
  o.num_threads = threads[fz_u8(in) % (sizeof threads / sizeof threads[0])];
  o.reserved_ = fz_chance(in, 8) ? 7 : 0;
  uint8_t which = fz_u8(in) % 8;
  o.alloc = which != 1 ? fz_alloc : NULL; /* 1: free without alloc */
  o.free = which != 2 ? fz_free : NULL;   /* 2: alloc without free */
  o.alloc_user = a;
  memcpy(raw, &o, sizeof o);
  size_t ss = fz_struct_size(in, raw, sizeof o, sizeof raw);
  memcpy(raw, &ss, sizeof ss);
  attn_ctx_options eff;
  attn_ctx_options_init(&eff);
  int readable = fz_effective_params(&eff, sizeof eff, raw, ss);
  int ok = readable && eff.num_threads >= 0 && eff.num_threads <= 1024 && eff.reserved_ == 0 &&
           !eff.alloc == !eff.free;
  attn_ctx *ctx = (attn_ctx *)0x1;
  long before = a->allocs;
  attn_status st = attn_ctx_create(&ctx, (const attn_ctx_options *)raw);
  if (st != ATTN_OK) {
    FZ_CHECK(ctx == (attn_ctx *)0x1, "ctx written on failure");
    FZ_CHECK(!ok || st == ATTN_ERR_NO_MEMORY, "attn_ctx_create refused valid options: %s",
             attn_status_string(st));
    FZ_CHECK(a->allocs - before == 0 || a->allocs == a->frees, "leak on failed create");
    return NULL;
  }
  FZ_CHECK(ok, "attn_ctx_create accepted bad options (threads %d, reserved %d, size %zu)",
           (int)eff.num_threads, (int)eff.reserved_, ss);
  int32_t n = attn_ctx_num_threads(ctx);
  FZ_CHECK(n >= 1 && n <= 1024 && (eff.num_threads == 0 || n == eff.num_threads),
           "num_threads %d for requested %d", (int)n, (int)eff.num_threads);
  FZ_CHECK(strcmp(attn_ctx_last_error(ctx), "") == 0, "fresh context has a message");
  if (!eff.alloc) {
    /* The default allocator is not ours: swap for a counted context so the
     * leak check below stays meaningful. */
    attn_ctx_destroy(ctx);
    return fz_ctx(a, 1);
  }
  return ctx;
}

static void do_new(fz_in *in, attn_ctx *ctx, fz_alloc_state *a, live_tensor *lv, int *n_live,
                   int ci) {
  int32_t dtype = fz_chance(in, 240) ? (int32_t)fz_range(in, 0, 3) : fz_enum(in, 4);
  int32_t ndim = fz_chance(in, 240) ? (int32_t)fz_range(in, 1, 4) : (int32_t)fz_range(in, -1, 6);
  int64_t dims[8];
  for (int i = 0; i < 8; i++)
    dims[i] = fz_dim(in, 12);
  int layout_ok = ndim >= 1 && ndim <= 4 && dtype >= 0 && dtype <= 3;
  unsigned __int128 bytes = fz_dtype_size(dtype), nonzero = 1; /* saturate: too big anyway */
  for (int32_t i = 0; layout_ok && i < ndim; i++) {
    if (dims[i] < 0) /* 0 is an empty tensor */
      layout_ok = 0;
    else if ((bytes *= (uint64_t)dims[i]) > ((unsigned __int128)1 << 64))
      bytes = (unsigned __int128)1 << 64;
    if (dims[i] > 0 && (nonzero *= (uint64_t)dims[i]) > ((unsigned __int128)1 << 64))
      nonzero = (unsigned __int128)1 << 64;
  }
  /* An empty tensor's non-zero dims must multiply within int64 as well. */
  int fits = layout_ok && bytes <= ((size_t)64 << 20) - 64 /* fz_alloc's cap */ &&
             nonzero <= INT64_MAX;
  int fail_armed = a->fail_at != 0;
  attn_tensor *t = (attn_tensor *)0x1;
  attn_status st = attn_tensor_new(ctx, dtype, ndim, dims, &t);
  if (st != ATTN_OK) {
    FZ_CHECK(t == (attn_tensor *)0x1, "out written on failure");
    FZ_CHECK(!fits || (st == ATTN_ERR_NO_MEMORY && fail_armed),
             "attn_tensor_new refused a valid request: %s: %s", attn_status_string(st),
             attn_ctx_last_error(ctx));
    if (!layout_ok)
      FZ_CHECK(st == ATTN_ERR_INVALID_ARG, "bad layout gave %s", attn_status_string(st));
    else if (!fits)
      FZ_CHECK(st == ATTN_ERR_OVERFLOW || st == ATTN_ERR_NO_MEMORY, "too big gave %s",
               attn_status_string(st));
    FZ_CHECK(attn_ctx_last_error(ctx)[0], "no message");
    return;
  }
  FZ_CHECK(layout_ok, "attn_tensor_new accepted a bad layout");
  FZ_CHECK(attn_tensor_dtype(t) == dtype && attn_tensor_ndim(t) == ndim, "dtype/ndim");
  const int64_t *d = attn_tensor_dims(t), *s = attn_tensor_strides(t);
  /* The product of the inner dims; an empty tensor's may exceed int64 (the
   * stride then reads INT64_MAX: it is never stepped). */
  unsigned __int128 inner = 1;
  for (int32_t i = ndim - 1; i >= 0; i--) {
    FZ_CHECK(d[i] == dims[i], "dims[%d]", (int)i);
    int64_t want_stride = inner > INT64_MAX ? INT64_MAX : (int64_t)inner;
    FZ_CHECK(s[i] == want_stride, "strides[%d] = %lld, want %lld", (int)i, (long long)s[i],
             (long long)want_stride);
    inner *= (uint64_t)dims[i];
    if (inner > ((unsigned __int128)1 << 64))
      inner = (unsigned __int128)1 << 64;
  }
  const unsigned char *p = attn_tensor_data(t);
  FZ_CHECK(p && (uintptr_t)p % 64 == 0, "data not 64-byte aligned");
  size_t nb = (size_t)bytes, step = nb > 4096 ? nb / 1024 : 1;
  for (size_t i = 0; i < nb; i += step)
    FZ_CHECK(p[i] == 0, "not zero-filled at byte %zu", i);
  FZ_CHECK(nb == 0 || p[nb - 1] == 0, "last byte not zero");
  if (*n_live >= MAX_LIVE) {
    /* Every live handle must be tracked: freed handles are reused, and an
     * untracked tensor in a dead handle's slot would make case 6's double
     * free a valid free. */
    FZ_CHECK(attn_tensor_free(ctx, t) == ATTN_OK, "free");
    return;
  }
  {
    live_tensor *l = &lv[(*n_live)++];
    memset(l, 0, sizeof *l);
    l->t = t;
    l->ctx = ci;
    l->ndim = ndim;
    memcpy(l->dims, dims, (size_t)ndim * sizeof *dims);
  }
}

static void do_wrap(fz_in *in, attn_ctx *ctx, live_tensor *lv, int *n_live, int ci) {
  int32_t dtype = (int32_t)fz_range(in, 0, 3);
  int32_t ndim = (int32_t)fz_range(in, 1, 4);
  int64_t dims[ATTN_MAX_DIMS];
  for (int i = 0; i < ATTN_MAX_DIMS; i++)
    dims[i] = fz_dim(in, 9);
  fz_tensor tz;
  fz_make_tensor(in, ctx, &tz, dtype, ndim, dims, FZ_INPUT);
  if (!tz.t || *n_live >= MAX_LIVE) {
    /* Keep the handle (the context frees it), drop the buffer only when no
     * tensor refers to it. */
    if (!tz.t)
      fz_tensor_release(&tz);
    else {
      FZ_CHECK(attn_tensor_free(ctx, tz.t) == ATTN_OK, "free");
      FZ_CHECK(fz_unchanged(&tz), "wrapped buffer modified");
      fz_tensor_release(&tz);
    }
    return;
  }
  live_tensor *l = &lv[(*n_live)++];
  memset(l, 0, sizeof *l);
  l->t = tz.t;
  l->ctx = ci;
  l->wrapped = tz;
  l->ndim = ndim;
  memcpy(l->dims, dims, sizeof dims);
}

/* An element as f32 bits (float types) or its byte (U8). */
static uint32_t elem_bits(int32_t dtype, const unsigned char *p) {
  if (dtype == ATTN_DTYPE_U8)
    return *p;
  if (dtype == ATTN_DTYPE_F32) {
    uint32_t b;
    memcpy(&b, p, 4);
    return b;
  }
  uint16_t h;
  memcpy(&h, p, 2);
  return dtype == ATTN_DTYPE_F16 ? ref_from_f16(h) : ref_from_bf16(h);
}

static int is_float_dtype(int32_t dt) { return dt == 0 || dt == 2 || dt == 3; }

/* attn_tensor_copy from a live tensor into a fresh wrapped one of a fuzzed
 * dtype and layout (sometimes another shape, or a broadcasting output). */
static void do_copy(fz_in *in, attn_ctx *ctx, live_tensor *l) {
  const attn_tensor *src = l->t;
  int32_t st_dt = attn_tensor_dtype(src), dt = (int32_t)fz_range(in, 0, 3);
  int64_t dims[ATTN_MAX_DIMS];
  memcpy(dims, l->dims, sizeof dims);
  int reshaped = fz_chance(in, 16);
  if (reshaped) {
    int32_t axis = fz_u8(in) % l->ndim;
    dims[axis] += dims[axis] < INT64_MAX ? 1 : -1;
  }
  int64_t numel = 1;
  for (int32_t i = 0; i < l->ndim; i++)
    numel = dims[i] == 0 ? 0 : numel == 0 ? 0 : fz_mul_sat(numel, dims[i]);
  if (numel > 4096)
    return; /* keep it quick */
  fz_tensor out;
  fz_make_tensor(in, ctx, &out, dt, l->ndim, dims, FZ_OUTPUT);
  if (!out.t) {
    fz_tensor_release(&out);
    return;
  }
  attn_status st = attn_tensor_copy(ctx, src, out.t);
  int want_ok = !reshaped && is_float_dtype(st_dt) == is_float_dtype(dt) &&
                !fz_broadcasts(&out) && !out.exotic;
  if (st != ATTN_OK) {
    FZ_CHECK(!want_ok, "attn_tensor_copy refused: %s: %s", attn_status_string(st),
             attn_ctx_last_error(ctx));
    FZ_CHECK(fz_unchanged(&out), "dst written on failure");
    if (reshaped)
      FZ_CHECK(st == ATTN_ERR_SHAPE, "reshaped gave %s", attn_status_string(st));
  } else {
    FZ_CHECK(!reshaped && is_float_dtype(st_dt) == is_float_dtype(dt) && !fz_broadcasts(&out),
             "attn_tensor_copy accepted a bad request");
    const unsigned char *sp = attn_tensor_data(src);
    const int64_t *ss = attn_tensor_strides(src);
    size_t se = fz_dtype_size(st_dt), de = fz_dtype_size(dt);
    int64_t n = fz_numel(&out);
    for (int64_t f = 0; f < n; f++) {
      int64_t so = 0, rem = f;
      for (int32_t i = l->ndim - 1; i >= 0; i--) {
        so += (rem % l->dims[i]) * ss[i];
        rem /= l->dims[i];
      }
      const unsigned char *ep = sp + so * (int64_t)se;
      uint32_t x = elem_bits(st_dt, ep);
      const unsigned char *dp = (const unsigned char *)fz_data(&out) + fz_offset(&out, f) * (int64_t)de;
      uint32_t want = 0;
      if (dt == st_dt) /* the same type: the bits, unchanged (NaN included) */
        memcpy(&want, ep, de);
      else
        want = dt == ATTN_DTYPE_F16 ? ref_to_f16(x) : dt == ATTN_DTYPE_BF16 ? ref_to_bf16(x) : x;
      uint32_t got = 0;
      memcpy(&got, dp, de); /* little-endian: the low bytes */
      FZ_CHECK(got == want, "copy %d -> %d: element %lld is %08x, expected %08x", (int)st_dt,
               (int)dt, (long long)f, got, want);
    }
    fz_check_gaps(&out, "dst");
  }
  FZ_CHECK(attn_tensor_free(ctx, out.t) == ATTN_OK, "free");
  fz_tensor_release(&out);
}

static void drop(live_tensor *lv, int *n_live, int i) {
  if (lv[i].wrapped.buf) {
    FZ_CHECK(fz_unchanged(&lv[i].wrapped), "wrapped buffer modified");
    fz_tensor_release(&lv[i].wrapped);
  }
  lv[i] = lv[--*n_live];
}

static int is_live(const live_tensor *lv, int n_live, const attn_tensor *t) {
  for (int i = 0; i < n_live; i++)
    if (lv[i].t == t)
      return 1;
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fz_in in = {data, size};
  fz_alloc_state a = {0, 0, 0};
  attn_ctx *ctx[2];
  for (int i = 0; i < 2; i++) {
    ctx[i] = make_ctx(&in, &a);
    if (!ctx[i])
      ctx[i] = fz_ctx(&a, 1);
  }
  live_tensor lv[MAX_LIVE];
  int n_live = 0;
  attn_tensor *dead[8];
  int n_dead = 0;
  int steps = 0;
  while (in.n && steps++ < 40) {
    int ci = fz_u8(&in) & 1;
    attn_ctx *c = ctx[ci];
    if (fz_chance(&in, 6))
      a.fail_at = a.allocs + fz_range(&in, 1, 3);
    switch (fz_u8(&in) % 11) {
    case 0: case 1:
      do_new(&in, c, &a, lv, &n_live, ci);
      break;
    case 2: case 3:
      do_wrap(&in, c, lv, &n_live, ci);
      break;
    case 4: /* free a live tensor through its own context */
      if (n_live) {
        int i = (int)(fz_u8(&in) % n_live);
        attn_status st = attn_tensor_free(ctx[lv[i].ctx], lv[i].t);
        FZ_CHECK(st == ATTN_OK, "attn_tensor_free: %s", attn_status_string(st));
        if (n_dead < 8)
          dead[n_dead++] = lv[i].t;
        drop(lv, &n_live, i);
      }
      break;
    case 5: /* free through the other context: refused, tensor stays alive */
      if (n_live) {
        int i = (int)(fz_u8(&in) % n_live);
        attn_status st = attn_tensor_free(ctx[!lv[i].ctx], lv[i].t);
        FZ_CHECK(st == ATTN_ERR_BAD_HANDLE, "free via the wrong context gave %s",
                 attn_status_string(st));
        FZ_CHECK(attn_tensor_ndim(lv[i].t) == lv[i].ndim, "tensor damaged");
      }
      break;
    case 6: /* free twice; skip when the address was reused by a new tensor */
      if (n_dead) {
        attn_tensor *t = dead[fz_u8(&in) % n_dead];
        if (!is_live(lv, n_live, t)) {
          attn_status st = attn_tensor_free(c, t);
          FZ_CHECK(st == ATTN_ERR_BAD_HANDLE, "double free gave %s", attn_status_string(st));
          FZ_CHECK(strstr(attn_ctx_last_error(c), "attn_tensor_free"), "message");
        }
      }
      break;
    case 7: { /* NULL arguments */
      int64_t dims[1] = {4};
      float buf[4];
      attn_tensor *t = (attn_tensor *)0x1;
      FZ_CHECK(attn_tensor_new(c, 0, 1, NULL, &t) == ATTN_ERR_NULL_ARG, "new dims NULL");
      FZ_CHECK(attn_tensor_new(c, 0, 1, dims, NULL) == ATTN_ERR_NULL_ARG, "new out NULL");
      FZ_CHECK(attn_tensor_new(NULL, 0, 1, dims, &t) == ATTN_ERR_NULL_ARG, "new ctx NULL");
      FZ_CHECK(attn_tensor_wrap(c, 0, 1, dims, NULL, NULL, 16, &t) == ATTN_ERR_NULL_ARG,
               "wrap data NULL");
      FZ_CHECK(attn_tensor_wrap(NULL, 0, 1, dims, NULL, buf, 16, &t) == ATTN_ERR_NULL_ARG,
               "wrap ctx NULL");
      FZ_CHECK(t == (attn_tensor *)0x1, "out written");
      FZ_CHECK(attn_tensor_free(NULL, NULL) == ATTN_ERR_NULL_ARG, "free ctx NULL");
      FZ_CHECK(attn_tensor_free(c, NULL) == ATTN_OK, "free NULL");
      FZ_CHECK(attn_tensor_data(NULL) == NULL && attn_tensor_ndim(NULL) == 0 &&
                   attn_tensor_dtype(NULL) == -1 && attn_tensor_dims(NULL) == NULL &&
                   attn_tensor_strides(NULL) == NULL,
               "NULL accessors");
      break;
    }
    case 8: { /* info functions with fuzzed sizes */
      size_t n = (size_t)fz_range(&in, 0, 300);
      char *buf = malloc(n ? n : 1);
      attn_status st = attn_blas_info(n ? buf : NULL, n);
      FZ_CHECK(n ? st == ATTN_OK : st == ATTN_ERR_NULL_ARG, "attn_blas_info(%zu)", n);
      if (n)
        FZ_CHECK(memchr(buf, 0, n) != NULL, "attn_blas_info not terminated");
      free(buf);
      FZ_CHECK(attn_cpu_info() && attn_version_string() && attn_version() == ATTN_VERSION,
               "info");
      const char *s = attn_status_string((attn_status)(int32_t)fz_u32(&in));
      FZ_CHECK(s && s[0], "status string");
      FZ_CHECK(attn_ctx_last_error(NULL) != NULL, "last_error(NULL)");
      attn_ctx_options_init(NULL);
      attn_softmax_params_init(NULL);
      attn_sinusoidal_params_init(NULL);
      attn_rope_params_init(NULL);
      attn_sdpa_params_init(NULL);
      attn_ctx_destroy(NULL);
      break;
    }
    case 9: /* copy a live tensor of this context, converting */
      if (n_live) {
        live_tensor *l = &lv[fz_u8(&in) % n_live];
        if (l->ctx == ci)
          do_copy(&in, c, l);
      }
      break;
    default: /* accessors of a live tensor */
      if (n_live) {
        live_tensor *l = &lv[fz_u8(&in) % n_live];
        FZ_CHECK(attn_tensor_ndim(l->t) == l->ndim, "ndim");
        FZ_CHECK(memcmp(attn_tensor_dims(l->t), l->dims, (size_t)l->ndim * 8) == 0, "dims");
      }
      break;
    }
    a.fail_at = 0;
  }
  /* Destroy frees what is still live; the wrapped buffers stay untouched. */
  attn_ctx_destroy(ctx[0]);
  attn_ctx_destroy(ctx[1]);
  while (n_live)
    drop(lv, &n_live, 0);
  FZ_CHECK(a.allocs == a.frees, "leak: %ld allocations, %ld frees", a.allocs, a.frees);
  return 0;
}
