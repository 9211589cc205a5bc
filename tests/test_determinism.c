/* Every op gives the same bits for any thread count (contexts of 1, 2, 3
 * and 4 threads), issue 9. The shapes reach the split-keys decode path, the
 * query-block prefill path and the per-row ops. ctest runs the suite with
 * OPENBLAS_NUM_THREADS unset, =1 and =2. Across BLAS thread settings the
 * bits are not compared: OpenBLAS 0.3.21 itself rounds some products
 * differently with 2 threads than with 1 (README, "Determinism"). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "test_util.h"

#define MAX_THREADS 4

/* One op on fixed inputs: writes its outputs (out, then lse) to `res`. */
typedef struct {
  const char *name;
  size_t n_res;
  void (*run)(attn_ctx *ctx, float *res);
} op_case;

static float *random_floats(uint64_t seed, size_t n, float lo, float hi) {
  float *x = malloc(n * sizeof *x);
  tu_rng r = {seed};
  tu_fill(&r, x, n, lo, hi);
  return x;
}

/* attn_sdpa on q [B, Hq, Lq, D], k and v [B, Hkv, Lk, D]; res = out, lse. */
static void sdpa_into(attn_ctx *ctx, float *res, int64_t B, int64_t Hq, int64_t Hkv, int64_t Lq,
                      int64_t Lk, int64_t D, attn_sdpa_params *p) {
  size_t nq = (size_t)(B * Hq * Lq * D), nk = (size_t)(B * Hkv * Lk * D);
  float *q = random_floats(1, nq, -2, 2), *k = random_floats(2, nk, -2, 2),
        *v = random_floats(3, nk, -1, 1);
  int64_t qd[4] = {B, Hq, Lq, D}, kd[4] = {B, Hkv, Lk, D}, ld[3] = {B, Hq, Lq};
  p->lse = tu_wrap(ctx, res + nq, (size_t)(B * Hq * Lq), 3, ld, NULL);
  assert_ok(attn_sdpa(ctx, tu_wrap(ctx, q, nq, 4, qd, NULL), tu_wrap(ctx, k, nk, 4, kd, NULL),
                      tu_wrap(ctx, v, nk, 4, kd, NULL), tu_wrap(ctx, res, nq, 4, qd, NULL), p));
  free(q), free(k), free(v);
}

/* Decoding: one query against a long cache, grouped heads: few items, so
 * the keys are split into chunks. */
static void decode(attn_ctx *ctx, float *res) {
  attn_sdpa_params p;
  attn_sdpa_params_init(&p);
  p.causal = 1, p.align = ATTN_ALIGN_BOTTOM_RIGHT;
  sdpa_into(ctx, res, 1, 8, 1, 1, 8192, 64, &p);
}

/* Decoding several sequences of a padded cache with a window and ALiBi. */
static void decode_padded(attn_ctx *ctx, float *res) {
  int64_t lens[3] = {5000, 2100, 4321};
  float slopes[8];
  for (int h = 0; h < 8; h++)
    slopes[h] = 1.0f / (float)(2 << h);
  attn_sdpa_params p;
  attn_sdpa_params_init(&p);
  p.causal = 1, p.align = ATTN_ALIGN_BOTTOM_RIGHT, p.kv_lens = lens;
  p.window = 1, p.window_left = 3000, p.alibi_slopes = slopes;
  sdpa_into(ctx, res, 3, 8, 2, 2, 5000, 32, &p);
}

/* Prefill: many query blocks, causal. */
static void prefill(attn_ctx *ctx, float *res) {
  attn_sdpa_params p;
  attn_sdpa_params_init(&p);
  p.causal = 1;
  sdpa_into(ctx, res, 2, 4, 2, 700, 700, 64, &p);
}

/* A chunk of queries against a long context: few items, keys split. */
static void prefill_long(attn_ctx *ctx, float *res) {
  attn_sdpa_params p;
  attn_sdpa_params_init(&p);
  p.causal = 1, p.align = ATTN_ALIGN_BOTTOM_RIGHT;
  sdpa_into(ctx, res, 1, 2, 1, 256, 4096, 64, &p);
}

static void varlen(attn_ctx *ctx, float *res) {
  int64_t cu_q[4] = {0, 1, 300, 302}, cu_k[4] = {0, 6000, 6300, 9000};
  int64_t Tq = 302, Tk = 9000, Hq = 4, Hkv = 2, D = 32;
  size_t nq = (size_t)(Tq * Hq * D), nk = (size_t)(Tk * Hkv * D);
  float *q = random_floats(4, nq, -2, 2), *k = random_floats(5, nk, -2, 2),
        *v = random_floats(6, nk, -1, 1);
  int64_t qd[3] = {Tq, Hq, D}, kd[3] = {Tk, Hkv, D}, ld[2] = {Hq, Tq};
  attn_sdpa_params p;
  attn_sdpa_params_init(&p);
  p.causal = 1, p.align = ATTN_ALIGN_BOTTOM_RIGHT;
  p.lse = tu_wrap(ctx, res + nq, (size_t)(Hq * Tq), 2, ld, NULL);
  assert_ok(attn_sdpa_varlen(ctx, tu_wrap(ctx, q, nq, 3, qd, NULL),
                             tu_wrap(ctx, k, nk, 3, kd, NULL), tu_wrap(ctx, v, nk, 3, kd, NULL),
                             tu_wrap(ctx, res, nq, 3, qd, NULL), 3, cu_q, cu_k, &p));
  free(q), free(k), free(v);
}

static void softmaxes(attn_ctx *ctx, float *res) {
  int64_t d[2] = {300, 1000};
  size_t n = 300 * 1000;
  float *x = random_floats(7, n, -30, 30);
  assert_ok(attn_softmax(ctx, tu_wrap(ctx, x, n, 2, d, NULL), tu_wrap(ctx, res, n, 2, d, NULL),
                         NULL));
  assert_ok(attn_log_softmax(ctx, tu_wrap(ctx, x, n, 2, d, NULL),
                             tu_wrap(ctx, res + n, n, 2, d, NULL), NULL));
  free(x);
}

static void posenc(attn_ctx *ctx, float *res) {
  size_t ns = 4 * 777 * 64, nr = 2 * 8 * 333 * 64;
  int64_t sd[3] = {4, 777, 64}, rd[4] = {2, 8, 333, 64};
  float *x = random_floats(8, ns + nr, -1, 1);
  memcpy(res, x, (ns + nr) * sizeof *x);
  attn_sinusoidal_params sp;
  attn_sinusoidal_params_init(&sp);
  sp.offset = 1000.5;
  assert_ok(attn_sinusoidal_add(ctx, tu_wrap(ctx, res, ns, 3, sd, NULL), &sp));
  attn_rope_params rp;
  attn_rope_params_init(&rp);
  rp.offset = 12345;
  assert_ok(attn_rope(ctx, tu_wrap(ctx, res + ns, nr, 4, rd, NULL), &rp));
  free(x);
}

/* The layer's weights: random, set from wrapped buffers. */
static void set_weights(attn_ctx *ctx, attn_mha *m, const int32_t *which, int n,
                        const int64_t (*shape)[2], uint64_t seed) {
  for (int i = 0; i < n; i++) {
    size_t count = (size_t)(shape[i][0] * shape[i][1]);
    float *w = random_floats(seed + (uint64_t)i, count, -0.1f, 0.1f);
    int nd = shape[i][0] == 1 ? 1 : 2;
    const int64_t *d = nd == 1 ? &shape[i][1] : shape[i];
    assert_ok(attn_mha_set_weight(ctx, m, which[i], tu_wrap(ctx, w, count, nd, d, NULL)));
    free(w);
  }
}

/* Decoder layer (E 256, 8 query / 2 kv heads of 32, biases, RoPE): a
 * prompt of 300 tokens per sequence (the blocked projections), then one
 * decode step (two rows: the few-row path). res = both outputs. */
static void mha_decoder(attn_ctx *ctx, float *res) {
  enum { B = 2, L = 300, E = 256 };
  attn_rope_params rp;
  attn_rope_params_init(&rp);
  attn_mha_decoder_params p;
  attn_mha_decoder_params_init(&p);
  p.embed_dim = E, p.num_heads = 8, p.num_kv_heads = 2, p.qkv_bias = 1, p.out_bias = 1;
  p.rope = &rp;
  attn_mha *m = NULL;
  assert_ok(attn_mha_create_decoder(ctx, &p, &m));
  const int32_t which[8] = {0, 1, 2, 3, 4, 5, 6, 7};
  const int64_t shape[8][2] = {{E, E}, {64, E}, {64, E}, {E, E}, {1, E}, {1, 64}, {1, 64}, {1, E}};
  set_weights(ctx, m, which, 8, shape, 20);
  attn_kv_cache_params cp;
  attn_kv_cache_params_init(&cp);
  cp.batch = B, cp.kv_heads = 2, cp.head_dim = 32, cp.capacity = L + 1;
  attn_kv_cache *kv = NULL;
  assert_ok(attn_kv_cache_create(ctx, &cp, &kv));
  size_t n = (size_t)(B * L * E);
  float *x = random_floats(30, n + B * E, -1, 1);
  int64_t d[3] = {B, L, E}, d1[3] = {B, 1, E};
  assert_ok(attn_mha_forward(ctx, m, kv, tu_wrap(ctx, x, n, 3, d, NULL),
                             tu_wrap(ctx, res, n, 3, d, NULL), NULL));
  assert_ok(attn_mha_forward(ctx, m, kv, tu_wrap(ctx, x + n, B * E, 3, d1, NULL),
                             tu_wrap(ctx, res + n, B * E, 3, d1, NULL), NULL));
  free(x);
}

/* PyTorch-form layer (E 192, 6 heads, packed in_proj with bias), self
 * attention over 2 sequences of 250 tokens. */
static void mha_torch(attn_ctx *ctx, float *res) {
  enum { B = 2, L = 250, E = 192 };
  attn_mha_torch_params p;
  attn_mha_torch_params_init(&p);
  p.embed_dim = E, p.num_heads = 6, p.batch_first = 1;
  attn_mha *m = NULL;
  assert_ok(attn_mha_create_torch(ctx, &p, &m));
  const int32_t which[4] = {ATTN_MHA_IN_PROJ_WEIGHT, ATTN_MHA_IN_PROJ_BIAS, ATTN_MHA_O_WEIGHT,
                            ATTN_MHA_O_BIAS};
  const int64_t shape[4][2] = {{3 * E, E}, {1, 3 * E}, {E, E}, {1, E}};
  set_weights(ctx, m, which, 4, shape, 40);
  size_t n = (size_t)(B * L * E);
  float *x = random_floats(50, n, -1, 1);
  int64_t d[3] = {B, L, E};
  attn_tensor *xt = tu_wrap(ctx, x, n, 3, d, NULL);
  assert_ok(attn_mha_torch_forward(ctx, m, xt, xt, xt, NULL, NULL, NULL,
                                   tu_wrap(ctx, res, n, 3, d, NULL), NULL));
  free(x);
}

static const op_case ops[] = {
    {"sdpa decode (split keys)", 8 * 64 + 8, decode},
    {"sdpa decode padded window alibi", 3 * 8 * 2 * 32 + 3 * 8 * 2, decode_padded},
    {"sdpa prefill", 2 * 4 * 700 * 64 + 2 * 4 * 700, prefill},
    {"sdpa prefill long context (split keys)", 2 * 256 * 64 + 2 * 256, prefill_long},
    {"sdpa_varlen", 302 * 4 * 32 + 4 * 302, varlen},
    {"softmax, log_softmax", 2 * 300 * 1000, softmaxes},
    {"sinusoidal_add, rope", 4 * 777 * 64 + 2 * 8 * 333 * 64, posenc},
    {"mha decoder prompt + decode step", 2 * 300 * 256 + 2 * 256, mha_decoder},
    {"mha torch form", 2 * 250 * 192, mha_torch},
};
#define N_OPS (sizeof ops / sizeof ops[0])

static float *run_op(const op_case *op, int32_t threads) {
  float *res = malloc(op->n_res * sizeof *res);
  for (size_t i = 0; i < op->n_res; i++)
    res[i] = -777;
  attn_ctx *ctx = tu_ctx(threads);
  op->run(ctx, res);
  attn_ctx_destroy(ctx);
  return res;
}

static void same_bits_for_any_thread_count(void **state) {
  (void)state;
  int bad = 0;
  for (size_t o = 0; o < N_OPS; o++) {
    float *one = run_op(&ops[o], 1);
    for (int32_t t = 2; t <= MAX_THREADS; t++) {
      float *other = run_op(&ops[o], t);
      if (memcmp(one, other, ops[o].n_res * sizeof *one) != 0) {
        size_t diff = 0;
        for (size_t i = 0; i < ops[o].n_res; i++)
          diff += memcmp(&one[i], &other[i], sizeof *one) != 0;
        print_error("  %s: %zu of %zu values differ between 1 and %d threads\n", ops[o].name,
                    diff, ops[o].n_res, (int)t);
        bad++;
      }
      free(other);
    }
    free(one);
  }
  if (bad)
    fail_msg("%d (op, thread count) pairs differ from one thread", bad);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(same_bits_for_any_thread_count),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
