/* Helpers shared by the CMocka suites: tolerances, seeded random data, and a
 * counting allocator. Header-only so each suite stays one file. */
#ifndef ATTN_TEST_UTIL_H
#define ATTN_TEST_UTIL_H

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "attn.h"

/* Fail with a message when status is not the expected one. */
#define assert_status(expr, expected)                                                 \
  do {                                                                                \
    attn_status st_ = (expr);                                                         \
    if (st_ != (expected))                                                            \
      fail_msg("%s returned %s, expected %s", #expr, attn_status_string(st_),         \
               attn_status_string(expected));                                         \
  } while (0)

#define assert_ok(expr) assert_status((expr), ATTN_OK)

/* |got - want| <= atol + rtol * |want|, with NaN == NaN and inf == inf. */
static inline int tu_close(double got, double want, double rtol, double atol) {
  if (isnan(want))
    return isnan(got);
  if (isinf(want))
    return got == want;
  return fabs(got - want) <= atol + rtol * fabs(want);
}

/* A float's bit pattern and back (through memcpy, as C allows). */
static inline uint32_t tu_bits(float f) {
  uint32_t b;
  memcpy(&b, &f, sizeof b);
  return b;
}

static inline float tu_float(uint32_t b) {
  float f;
  memcpy(&f, &b, sizeof f);
  return f;
}

#define assert_close(got, want, rtol, atol)                                           \
  do {                                                                                \
    double g_ = (got), w_ = (want);                                                   \
    if (!tu_close(g_, w_, (rtol), (atol)))                                            \
      fail_msg("%s = %.9g but expected %.9g (rtol %g, atol %g)", #got, g_, w_,        \
               (double)(rtol), (double)(atol));                                       \
  } while (0)

/* Deterministic xorshift64* so failures reproduce. */
typedef struct { uint64_t s; } tu_rng;
static inline uint64_t tu_next(tu_rng *r) {
  r->s ^= r->s >> 12;
  r->s ^= r->s << 25;
  r->s ^= r->s >> 27;
  return r->s * 2685821657736338717ull;
}
/* Uniform in [lo, hi). */
static inline float tu_uniform(tu_rng *r, float lo, float hi) {
  return lo + (hi - lo) * (float)((tu_next(r) >> 40) * (1.0 / 16777216.0));
}
static inline void tu_fill(tu_rng *r, float *x, size_t n, float lo, float hi) {
  for (size_t i = 0; i < n; i++)
    x[i] = tu_uniform(r, lo, hi);
}

/* An allocator that counts, and can be told to fail the k-th call. */
typedef struct {
  long allocs, frees, fail_at; /* fail_at = 0: never */
} tu_counter;
static inline void *tu_alloc(void *user, size_t size) {
  tu_counter *c = user;
  if (c->fail_at && c->allocs + 1 == c->fail_at) {
    c->fail_at = 0;
    return NULL;
  }
  c->allocs++;
  return malloc(size);
}
static inline void tu_free(void *user, void *p) {
  tu_counter *c = user;
  c->frees++;
  free(p);
}

static inline attn_ctx *tu_ctx(int32_t threads) {
  attn_ctx_options o;
  attn_ctx_options_init(&o);
  o.num_threads = threads;
  attn_ctx *ctx = NULL;
  if (attn_ctx_create(&ctx, &o) != ATTN_OK)
    fail_msg("attn_ctx_create failed");
  return ctx;
}

/* Wrap a float buffer as a tensor (contiguous when strides is NULL). */
static inline attn_tensor *tu_wrap(attn_ctx *ctx, float *data, size_t n_floats, int32_t ndim,
                                   const int64_t *dims, const int64_t *strides) {
  attn_tensor *t = NULL;
  attn_status st = attn_tensor_wrap(ctx, ATTN_DTYPE_F32, ndim, dims, strides, data,
                                    n_floats * sizeof(float), &t);
  if (st != ATTN_OK)
    fail_msg("attn_tensor_wrap: %s: %s", attn_status_string(st), attn_ctx_last_error(ctx));
  return t;
}

/* The last error must mention `needle`. */
#define assert_error_mentions(ctx, needle)                                            \
  do {                                                                                \
    const char *e_ = attn_ctx_last_error(ctx);                                        \
    if (!strstr(e_, (needle)))                                                        \
      fail_msg("last error \"%s\" does not mention \"%s\"", e_, (needle));            \
  } while (0)

#endif
