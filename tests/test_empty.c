/* Zero-size tensors (issue 9): a dim of 0 is accepted by attn_tensor_new,
 * attn_tensor_wrap and every op, which then writes nothing (an empty
 * output) or, where an output still has elements, what the definition
 * gives: attention over zero keys is zeros with lse -inf (or the sink),
 * an empty head dim D makes every dot product 0, and Dv = 0 leaves lse and
 * the weights to compute. Checked against the float64 reference. */
#include "test_util.h"

#include "ref_sdpa.h"

#define SENTINEL (-777.0f)
#define CAP 4096 /* floats behind every wrapped tensor */

/* A buffer of CAP sentinels: an empty tensor wrapped on it must leave all
 * of them alone. */
typedef struct {
  float x[CAP];
} buf;

static void buf_reset(buf *b) {
  for (int i = 0; i < CAP; i++)
    b->x[i] = SENTINEL;
}

static int buf_untouched(const buf *b, size_t from) {
  for (size_t i = from; i < CAP; i++)
    if (b->x[i] != SENTINEL)
      return 0;
  return 1;
}

static attn_tensor *wrap(attn_ctx *ctx, buf *b, int32_t ndim, const int64_t *dims) {
  return tu_wrap(ctx, b->x, CAP, ndim, dims, NULL);
}

static void tensors(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  for (int32_t nd = 1; nd <= 4; nd++)
    for (int32_t zero = 0; zero < nd; zero++) {
      int64_t dims[4] = {3, 2, 5, 4};
      dims[zero] = 0;
      attn_tensor *t = NULL;
      assert_ok(attn_tensor_new(ctx, ATTN_DTYPE_F32, nd, dims, &t));
      assert_non_null(attn_tensor_data(t));
      assert_int_equal(attn_tensor_dims(t)[zero], 0);
      assert_ok(attn_tensor_free(ctx, t));
      /* A wrap of no bytes, with any strides (nothing is addressed). */
      float one = 1;
      assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, nd, dims, NULL, &one, 0, &t));
      assert_int_equal(attn_tensor_dims(t)[zero], 0);
      int64_t strides[4] = {1000000, 7, 99, 1};
      assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_U8, nd, dims, strides + 4 - nd, &one, 0, &t));
      /* data is still required. */
      assert_status(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, nd, dims, NULL, NULL, 0, &t),
                    ATTN_ERR_NULL_ARG);
    }
  int64_t neg[2] = {3, -1};
  attn_tensor *t = NULL;
  assert_status(attn_tensor_new(ctx, ATTN_DTYPE_F32, 2, neg, &t), ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "dims[1]");
  attn_ctx_destroy(ctx);
}

static void softmaxes(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(2);
  static const int64_t shapes[][4] = {{0, 5, 1, 1}, {3, 0, 1, 1}, {2, 0, 4, 3}, {2, 3, 4, 0}};
  static const int32_t nds[] = {2, 2, 4, 4};
  static buf x, y;
  for (size_t s = 0; s < 4; s++) {
    for (int log = 0; log < 2; log++) {
      buf_reset(&x), buf_reset(&y);
      attn_tensor *tx = wrap(ctx, &x, nds[s], shapes[s]), *ty = wrap(ctx, &y, nds[s], shapes[s]);
      attn_status st = log ? attn_log_softmax(ctx, tx, ty, NULL) : attn_softmax(ctx, tx, ty, NULL);
      assert_ok(st);
      assert_true(buf_untouched(&y, 0));
      /* In place, and with a (broadcast) mask of the same empty shape. */
      attn_softmax_params p;
      attn_softmax_params_init(&p);
      p.mask = tx;
      assert_ok(attn_softmax(ctx, ty, ty, &p));
      assert_true(buf_untouched(&y, 0));
    }
  }
  /* Empty and non-empty shapes still must agree. */
  int64_t a[2] = {0, 5}, b[2] = {1, 5};
  assert_status(attn_softmax(ctx, wrap(ctx, &x, 2, a), wrap(ctx, &y, 2, b), NULL), ATTN_ERR_SHAPE);
  attn_ctx_destroy(ctx);
}

static void posenc(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(2);
  static buf x;
  int64_t tables[][2] = {{0, 8}, {5, 0}, {0, 0}};
  for (size_t s = 0; s < 3; s++) {
    buf_reset(&x);
    assert_ok(attn_sinusoidal(ctx, wrap(ctx, &x, 2, tables[s]), NULL));
    assert_true(buf_untouched(&x, 0));
  }
  int64_t adds[][3] = {{0, 5, 8}, {2, 0, 8}, {2, 5, 0}};
  for (size_t s = 0; s < 3; s++) {
    buf_reset(&x);
    assert_ok(attn_sinusoidal_add(ctx, wrap(ctx, &x, 3, adds[s]), NULL));
    assert_true(buf_untouched(&x, 0));
  }
  int64_t ropes[][4] = {{0, 2, 3, 8}, {1, 0, 3, 8}, {1, 2, 0, 8}, {1, 2, 3, 0}};
  for (size_t s = 0; s < 4; s++) {
    buf_reset(&x);
    attn_rope_params p;
    attn_rope_params_init(&p);
    assert_ok(attn_rope(ctx, wrap(ctx, &x, 4, ropes[s]), &p));
    assert_true(buf_untouched(&x, 0));
    int64_t positions[1] = {3};
    p.positions = positions; /* [B, L] has no element when B or L is 0 */
    if (ropes[s][0] == 0 || ropes[s][2] == 0)
      assert_ok(attn_rope(ctx, wrap(ctx, &x, 4, ropes[s]), &p));
  }
  /* rotary_dim must still fit D. */
  attn_rope_params p;
  attn_rope_params_init(&p);
  p.rotary_dim = 2;
  assert_status(attn_rope(ctx, wrap(ctx, &x, 4, ropes[3]), &p), ATTN_ERR_INVALID_ARG);
  attn_ctx_destroy(ctx);
}

/* attn_sdpa with q [B, Hq, Lq, D], k [B, Hkv, Lk, D], v [B, Hkv, Lk, Dv],
 * lse and weights requested, against the reference row by row. */
static void sdpa_case(attn_ctx *ctx, int64_t B, int64_t Hq, int64_t Hkv, int64_t Lq, int64_t Lk,
                      int64_t D, int64_t Dv, int sinks, int alibi, int causal) {
  static buf q, k, v, out, lse, w;
  tu_rng rng = {(uint64_t)(B * 1000003 + Hq * 10007 + Lq * 101 + Lk * 7 + D * 3 + Dv + 1)};
  buf *all[6] = {&q, &k, &v, &out, &lse, &w};
  for (int i = 0; i < 6; i++)
    buf_reset(all[i]);
  tu_fill(&rng, q.x, CAP, -2, 2);
  tu_fill(&rng, k.x, CAP, -2, 2);
  tu_fill(&rng, v.x, CAP, -1, 1);
  int64_t qd[4] = {B, Hq, Lq, D}, kd[4] = {B, Hkv, Lk, D}, vd[4] = {B, Hkv, Lk, Dv},
          od[4] = {B, Hq, Lq, Dv}, ld[3] = {B, Hq, Lq}, wd[4] = {B, Hq, Lq, Lk};
  float sink_logits[4] = {0.5f, -1, 2, 0}, slopes[4] = {0.5f, 0.25f, 0.125f, 0.0625f};
  attn_sdpa_params p;
  attn_sdpa_params_init(&p);
  p.sinks = sinks ? sink_logits : NULL;
  p.alibi_slopes = alibi ? slopes : NULL;
  p.causal = causal, p.align = ATTN_ALIGN_BOTTOM_RIGHT;
  p.lse = tu_wrap(ctx, lse.x, CAP, 3, ld, NULL);
  p.weights = tu_wrap(ctx, w.x, CAP, 4, wd, NULL);
  attn_status st = attn_sdpa(ctx, wrap(ctx, &q, 4, qd), wrap(ctx, &k, 4, kd),
                             wrap(ctx, &v, 4, vd), wrap(ctx, &out, 4, od), &p);
  if (st != ATTN_OK)
    fail_msg("B %lld Hq %lld Lq %lld Lk %lld D %lld Dv %lld: %s", (long long)B, (long long)Hq,
             (long long)Lq, (long long)Lk, (long long)D, (long long)Dv,
             attn_ctx_last_error(ctx));
  ref_sdpa_args ra = {0};
  ra.B = B, ra.Hq = Hq, ra.Hkv = Hkv, ra.Lq = Lq, ra.Lk = Lk, ra.D = D, ra.Dv = Dv;
  ra.q = q.x, ra.k = k.x, ra.v = v.x;
  int64_t qs[4] = {Hq * Lq * D, Lq * D, D, 1}, ks[4] = {Hkv * Lk * D, Lk * D, D, 1},
          vs[4] = {Hkv * Lk * Dv, Lk * Dv, Dv, 1};
  memcpy(ra.qs, qs, sizeof qs), memcpy(ra.ks, ks, sizeof ks), memcpy(ra.vs, vs, sizeof vs);
  ra.sinks = p.sinks, ra.alibi_slopes = p.alibi_slopes;
  ra.causal = causal, ra.bottom_right = 1;
  double rout[8], rw[64], rl;
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < Hq; h++)
      for (int64_t i = 0; i < Lq; i++) {
        assert_true(Dv <= 8 && Lk <= 64);
        ref_sdpa_row(&ra, b, h, i, rout, NULL, &rl, rw, NULL);
        int64_t r = (b * Hq + h) * Lq + i;
        for (int64_t d = 0; d < Dv; d++)
          assert_close(out.x[r * Dv + d], rout[d], 1e-5, 1e-6);
        assert_close(lse.x[r], rl, 1e-5, 1e-6);
        for (int64_t j = 0; j < Lk; j++)
          assert_close(w.x[r * Lk + j], rw[j], 1e-5, 1e-6);
      }
  /* Nothing written past the outputs' elements. */
  assert_true(buf_untouched(&out, (size_t)(B * Hq * Lq * Dv)));
  assert_true(buf_untouched(&lse, (size_t)(B * Hq * Lq)));
  assert_true(buf_untouched(&w, (size_t)(B * Hq * Lq * Lk)));
}

static void sdpa(void **state) {
  (void)state;
  for (int32_t threads = 1; threads <= 2; threads++) {
    attn_ctx *ctx = tu_ctx(threads);
    /* No rows: nothing to write. */
    sdpa_case(ctx, 0, 4, 2, 3, 5, 8, 8, 1, 1, 1);
    sdpa_case(ctx, 2, 0, 0, 3, 5, 8, 8, 1, 0, 1);
    sdpa_case(ctx, 2, 0, 2, 3, 5, 8, 8, 0, 0, 0);
    sdpa_case(ctx, 2, 4, 2, 0, 5, 8, 8, 1, 1, 1);
    /* No keys: zeros, lse -inf or the sink's logit. */
    for (int sinks = 0; sinks < 2; sinks++) {
      sdpa_case(ctx, 2, 4, 2, 3, 0, 8, 8, sinks, 1, 1);
      sdpa_case(ctx, 2, 4, 2, 3, 0, 8, 8, sinks, 0, 0);
      sdpa_case(ctx, 1, 2, 1, 3, 0, 0, 0, sinks, 0, 0);
    }
    /* D = 0: every dot product is 0; the weights come from ALiBi alone. */
    for (int alibi = 0; alibi < 2; alibi++)
      for (int causal = 0; causal < 2; causal++)
        sdpa_case(ctx, 2, 4, 2, 3, 6, 0, 5, alibi, alibi, causal);
    /* Dv = 0: out is empty but lse and the weights are not. */
    sdpa_case(ctx, 2, 4, 2, 3, 6, 8, 0, 1, 1, 1);
    sdpa_case(ctx, 2, 4, 2, 3, 6, 8, 0, 0, 0, 0);
    sdpa_case(ctx, 1, 2, 2, 4, 6, 0, 0, 0, 1, 1);

    /* Zero kv heads for some query heads is no grouping. */
    static buf z;
    buf_reset(&z);
    int64_t qd[4] = {1, 2, 3, 4}, kd[4] = {1, 0, 3, 4};
    assert_status(attn_sdpa(ctx, wrap(ctx, &z, 4, qd), wrap(ctx, &z, 4, kd), wrap(ctx, &z, 4, kd),
                            tu_wrap(ctx, z.x + 100, CAP - 100, 4, qd, NULL), NULL),
                  ATTN_ERR_SHAPE);
    assert_error_mentions(ctx, "heads");
    /* kv_lens still within 0..Lk = 0. */
    int64_t kd0[4] = {1, 2, 0, 4}, lens[1] = {1};
    attn_sdpa_params p;
    attn_sdpa_params_init(&p);
    p.kv_lens = lens;
    assert_status(attn_sdpa(ctx, wrap(ctx, &z, 4, qd), wrap(ctx, &z, 4, kd0),
                            wrap(ctx, &z, 4, kd0), tu_wrap(ctx, z.x + 100, CAP - 100, 4, qd, NULL),
                            &p),
                  ATTN_ERR_INVALID_ARG);
    attn_ctx_destroy(ctx);
  }
}

/* Packed sequences: no sequences, no tokens, no heads, empty head dims. */
static void varlen(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(2);
  static buf q, k, v, out, lse;
  int64_t zero[1] = {0};
  int64_t q3[3] = {0, 2, 4}, k3[3] = {0, 1, 4}, l2[2] = {2, 0};
  buf_reset(&out), buf_reset(&lse);
  attn_sdpa_params p;
  attn_sdpa_params_init(&p);
  p.lse = tu_wrap(ctx, lse.x, CAP, 2, l2, NULL);
  /* batch 0: the offsets are just {0}. */
  assert_ok(attn_sdpa_varlen(ctx, wrap(ctx, &q, 3, q3), wrap(ctx, &k, 3, k3),
                             wrap(ctx, &v, 3, k3), wrap(ctx, &out, 3, q3), 0, zero, zero, &p));
  assert_true(buf_untouched(&out, 0) && buf_untouched(&lse, 0));
  /* Three sequences without keys: zeros and -inf. */
  tu_rng rng = {5};
  tu_fill(&rng, q.x, CAP, -1, 1);
  int64_t cq[4] = {0, 2, 2, 5}, ck[4] = {0, 0, 0, 0};
  int64_t qd[3] = {5, 2, 4}, kd[3] = {0, 1, 4}, ld[2] = {2, 5};
  p.lse = tu_wrap(ctx, lse.x, CAP, 2, ld, NULL);
  p.causal = 1;
  assert_ok(attn_sdpa_varlen(ctx, wrap(ctx, &q, 3, qd), wrap(ctx, &k, 3, kd),
                             wrap(ctx, &v, 3, kd), wrap(ctx, &out, 3, qd), 3, cq, ck, &p));
  for (int i = 0; i < 5 * 2 * 4; i++)
    assert_true(out.x[i] == 0);
  for (int i = 0; i < 2 * 5; i++)
    assert_true(lse.x[i] == -INFINITY);
  assert_true(buf_untouched(&out, 40) && buf_untouched(&lse, 10));
  /* D = 0 and Dv = 0 per token: uniform weights; out empty. */
  buf_reset(&out), buf_reset(&lse);
  int64_t cq2[3] = {0, 2, 3}, ck2[3] = {0, 4, 6};
  int64_t qd2[3] = {3, 2, 0}, kd2[3] = {6, 1, 0}, od2[3] = {3, 2, 0}, ld2[2] = {2, 3};
  p.lse = tu_wrap(ctx, lse.x, CAP, 2, ld2, NULL);
  p.causal = 0;
  assert_ok(attn_sdpa_varlen(ctx, wrap(ctx, &q, 3, qd2), wrap(ctx, &k, 3, kd2),
                             wrap(ctx, &v, 3, kd2), wrap(ctx, &out, 3, od2), 2, cq2, ck2, &p));
  for (int h = 0; h < 2; h++)
    for (int t = 0; t < 3; t++)
      assert_close(lse.x[h * 3 + t], t < 2 ? log(4.0) : log(2.0), 1e-6, 0);
  assert_true(buf_untouched(&out, 0) && buf_untouched(&lse, 6));
  /* No heads at all. */
  int64_t qh[3] = {3, 0, 4}, kh[3] = {6, 0, 4}, lh[2] = {0, 3};
  p.lse = tu_wrap(ctx, lse.x, CAP, 2, lh, NULL);
  assert_ok(attn_sdpa_varlen(ctx, wrap(ctx, &q, 3, qh), wrap(ctx, &k, 3, kh),
                             wrap(ctx, &v, 3, kh), wrap(ctx, &out, 3, qh), 2, cq2, ck2, &p));
  attn_ctx_destroy(ctx);
}

/* The 0.2 ops: conversion, rotary tables, pooling. */
static void newer_ops(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(2);
  static buf a, b, c, d;
  buf *all[4] = {&a, &b, &c, &d};
  for (int i = 0; i < 4; i++)
    buf_reset(all[i]);
  int64_t e1[2] = {0, 5}, e2[2] = {3, 0};
  for (int s = 0; s < 2; s++) {
    const int64_t *dims = s ? e2 : e1;
    attn_tensor *f16 = NULL;
    assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_F16, 2, dims, NULL, b.x, 0, &f16));
    assert_ok(attn_tensor_copy(ctx, wrap(ctx, &a, 2, dims), f16));
    assert_ok(attn_tensor_copy(ctx, f16, wrap(ctx, &c, 2, dims)));
  }
  /* Rotary tables with no position (or an empty rotary dim). */
  int64_t t0[2] = {0, 4}, t1[2] = {6, 0};
  assert_ok(attn_rope_cache_fill(ctx, wrap(ctx, &a, 2, t0), wrap(ctx, &b, 2, t0), NULL, NULL));
  assert_ok(attn_rope_cache_fill(ctx, wrap(ctx, &a, 2, t1), wrap(ctx, &b, 2, t1), NULL, NULL));
  int64_t xs[][4] = {{0, 2, 3, 8}, {1, 0, 3, 8}, {1, 2, 0, 8}};
  int64_t cs[2] = {6, 4};
  for (int s = 0; s < 3; s++)
    assert_ok(attn_rope_cached(ctx, wrap(ctx, &c, 4, xs[s]), wrap(ctx, &d, 4, xs[s]),
                               wrap(ctx, &a, 2, cs), wrap(ctx, &b, 2, cs), NULL));
  int64_t xd0[4] = {1, 2, 3, 0};
  assert_ok(attn_rope_cached(ctx, wrap(ctx, &c, 4, xd0), wrap(ctx, &d, 4, xd0),
                             wrap(ctx, &a, 2, t1), wrap(ctx, &b, 2, t1), NULL));
  for (int i = 0; i < 4; i++)
    assert_true(buf_untouched(all[i], 0));
  /* Pooling: no sequence, no feature: empty; no token: zeros (every mode). */
  int64_t x0[3] = {0, 4, 3}, o0[2] = {0, 3}, xl[3] = {2, 0, 3}, ol[2] = {2, 3}, xd[3] = {2, 4, 0},
          od[2] = {2, 0}, sc[2] = {2, 0};
  for (int mode = 0; mode < 4; mode++) {
    attn_pool_params p;
    attn_pool_params_init(&p);
    p.mode = mode;
    int64_t scd0[2] = {0, 4}, scd[2] = {2, 4};
    buf_reset(&d);
    p.scores = mode == ATTN_POOL_WEIGHTED ? wrap(ctx, &b, 2, scd0) : NULL;
    assert_ok(attn_pool(ctx, wrap(ctx, &a, 3, x0), wrap(ctx, &d, 2, o0), &p));
    p.scores = mode == ATTN_POOL_WEIGHTED ? wrap(ctx, &b, 2, scd) : NULL;
    assert_ok(attn_pool(ctx, wrap(ctx, &a, 3, xd), wrap(ctx, &d, 2, od), &p));
    assert_true(buf_untouched(&d, 0));
    p.scores = mode == ATTN_POOL_WEIGHTED ? wrap(ctx, &b, 2, sc) : NULL;
    assert_ok(attn_pool(ctx, wrap(ctx, &a, 3, xl), wrap(ctx, &d, 2, ol), &p));
    for (int i = 0; i < 6; i++)
      assert_true(d.x[i] == 0);
    assert_true(buf_untouched(&d, 6));
  }
  /* Attention pooling: no query, or no key (zeros). */
  int64_t qd[3] = {2, 0, 4}, kd[4] = {3, 1, 5, 4}, od0[4] = {3, 2, 0, 4};
  buf_reset(&d);
  assert_ok(attn_pool_attention(ctx, wrap(ctx, &a, 3, qd), wrap(ctx, &b, 4, kd),
                                wrap(ctx, &c, 4, kd), wrap(ctx, &d, 4, od0), NULL));
  assert_true(buf_untouched(&d, 0));
  int64_t qd1[3] = {2, 1, 4}, kd1[4] = {3, 1, 0, 4}, od1[4] = {3, 2, 1, 4};
  assert_ok(attn_pool_attention(ctx, wrap(ctx, &a, 3, qd1), wrap(ctx, &b, 4, kd1),
                                wrap(ctx, &c, 4, kd1), wrap(ctx, &d, 4, od1), NULL));
  for (int i = 0; i < 24; i++)
    assert_true(d.x[i] == 0);
  assert_true(buf_untouched(&d, 24));
  attn_ctx_destroy(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(tensors), cmocka_unit_test(softmaxes), cmocka_unit_test(posenc),
      cmocka_unit_test(sdpa),    cmocka_unit_test(varlen),  cmocka_unit_test(newer_ops),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
