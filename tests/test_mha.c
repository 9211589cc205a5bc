/* The decoder attention layer (attn_mha_*) against the float64 reference
 * (tests/reference/ref_mha.c): a prompt forward that fills a KV cache,
 * then decode steps of varying sizes, must give every token the output of
 * the reference's one causal pass over the whole sequence. Plus weights
 * copied, wrapped and read back; no allocation on a warm layer; bad input
 * changing nothing. */
#include "test_util.h"

#include "ref_mha.h"

enum { MAXB = 3 };

typedef struct {
  const char *name;
  int64_t B, E, Hq, Hkv, D;
  int bias, paged, rope; /* rope: 0 none, 1 half-split full, 2 interleaved partial */
  int window;
  float softcap;
  int64_t prompt[MAXB], total[MAXB];
  int max_chunk; /* decode chunks of 0..max_chunk tokens (1: token by token) */
  int wrap;      /* weights wrapped instead of copied */
  int32_t threads;
} mha_case;

typedef struct {
  float *w[8];
  size_t n[8];
} weights;

static void weights_make(const mha_case *c, weights *w, tu_rng *r) {
  int64_t hq = c->Hq * c->D, hkv = c->Hkv * c->D;
  const size_t n[8] = {(size_t)(hq * c->E), (size_t)(hkv * c->E), (size_t)(hkv * c->E),
                       (size_t)(c->E * hq), (size_t)hq, (size_t)hkv, (size_t)hkv,
                       (size_t)c->E};
  for (int i = 0; i < 8; i++) {
    w->n[i] = n[i];
    w->w[i] = malloc(n[i] * sizeof(float));
    float a = i < 4 ? 1.0f / sqrtf((float)(i == 3 ? hq : c->E)) : 0.5f;
    tu_fill(r, w->w[i], n[i], -a, a);
  }
}

static void weights_free(weights *w) {
  for (int i = 0; i < 8; i++)
    free(w->w[i]);
}

static attn_mha *make_layer(attn_ctx *ctx, const mha_case *c, weights *w) {
  attn_mha_decoder_params p;
  attn_mha_decoder_params_init(&p);
  p.embed_dim = c->E, p.num_heads = c->Hq, p.num_kv_heads = c->Hkv, p.head_dim = c->D;
  p.qkv_bias = p.out_bias = c->bias;
  attn_rope_params rp;
  attn_rope_params_init(&rp);
  rp.style = c->rope == 2 ? ATTN_ROPE_INTERLEAVED : ATTN_ROPE_HALF_SPLIT;
  rp.rotary_dim = c->rope == 2 ? (int32_t)(c->D / 2 & ~1) : 0;
  rp.theta = 1000;
  p.rope = c->rope ? &rp : NULL;
  p.softcap = c->softcap;
  p.window = c->window;
  p.window_left = 5;
  attn_mha *m = NULL;
  attn_status st = attn_mha_create_decoder(ctx, &p, &m);
  if (st != ATTN_OK)
    fail_msg("create: %s", attn_ctx_last_error(ctx));
  int64_t hq = c->Hq * c->D, hkv = c->Hkv * c->D;
  const int64_t rows[8] = {hq, hkv, hkv, c->E, 1, 1, 1, 1};
  for (int32_t i = 0; i < (c->bias ? 8 : 4); i++) {
    int64_t dims[2] = {rows[i], (int64_t)w->n[i] / rows[i]};
    attn_tensor *t = i < 4 ? tu_wrap(ctx, w->w[i], w->n[i], 2, dims, NULL)
                           : tu_wrap(ctx, w->w[i], w->n[i], 1, dims + 1, NULL);
    st = c->wrap ? attn_mha_wrap_weight(ctx, m, i, t) : attn_mha_set_weight(ctx, m, i, t);
    if (st != ATTN_OK)
      fail_msg("weight %d: %s", (int)i, attn_ctx_last_error(ctx));
  }
  return m;
}

static ref_mha_args ref_args(const mha_case *c, const weights *w) {
  ref_mha_args a;
  memset(&a, 0, sizeof a);
  a.E = c->E, a.Hq = c->Hq, a.Hkv = c->Hkv, a.D = c->D;
  a.wq = w->w[0], a.wk = w->w[1], a.wv = w->w[2], a.wo = w->w[3];
  if (c->bias)
    a.bq = w->w[4], a.bk = w->w[5], a.bv = w->w[6], a.bo = w->w[7];
  a.rope = c->rope != 0;
  a.interleaved = c->rope == 2;
  a.rotary_dim = c->rope == 2 ? (c->D / 2 & ~1) : c->D;
  a.theta = 1000;
  a.softcap = c->softcap;
  a.window = c->window;
  a.window_left = 5;
  return a;
}

static attn_kv_cache *make_cache(attn_ctx *ctx, const mha_case *c, int64_t cap) {
  attn_kv_cache_params p;
  attn_kv_cache_params_init(&p);
  p.layout = c->paged ? ATTN_KV_PAGED : ATTN_KV_CONTIGUOUS;
  p.batch = c->B, p.kv_heads = c->Hkv, p.head_dim = c->D;
  p.capacity = c->paged ? 0 : cap;
  p.block_size = 4;
  p.num_blocks = c->B * (cap / 4 + 1);
  attn_kv_cache *kv = NULL;
  if (attn_kv_cache_create(ctx, &p, &kv) != ATTN_OK)
    fail_msg("cache: %s", attn_ctx_last_error(ctx));
  return kv;
}

static void run_case(const mha_case *c) {
  tu_rng r = {0x5eed ^ (uint64_t)c->E * 31u ^ (uint64_t)c->total[0]};
  weights w;
  weights_make(c, &w, &r);
  float *x[MAXB], *got[MAXB];
  int64_t maxT = 0;
  for (int64_t b = 0; b < c->B; b++) {
    x[b] = malloc((size_t)(c->total[b] * c->E) * sizeof(float));
    got[b] = malloc((size_t)(c->total[b] * c->E) * sizeof(float));
    tu_fill(&r, x[b], (size_t)(c->total[b] * c->E), -1, 1);
    maxT = c->total[b] > maxT ? c->total[b] : maxT;
  }
  attn_ctx *ctx = tu_ctx(c->threads);
  attn_mha *m = make_layer(ctx, c, &w);
  attn_kv_cache *kv = make_cache(ctx, c, maxT);
  int64_t done[MAXB] = {0};
  int64_t Lmax = maxT;
  float *xb = malloc((size_t)(c->B * Lmax * c->E) * sizeof(float));
  float *yb = malloc((size_t)(c->B * Lmax * c->E) * sizeof(float));
  for (int step = 0;; step++) {
    int64_t n[MAXB], L = 0, left = 0;
    for (int64_t b = 0; b < c->B; b++) {
      int64_t want = step == 0 ? c->prompt[b]
                     : c->max_chunk == 1
                         ? 1
                         : (int64_t)(tu_next(&r) % (uint64_t)(c->max_chunk + 1));
      int64_t rest = c->total[b] - done[b];
      n[b] = want < rest ? want : rest;
      L = n[b] > L ? n[b] : L;
      left += rest;
    }
    if (!left)
      break;
    assert_true(step < 1000);
    if (L == 0)
      continue;
    for (int64_t b = 0; b < c->B; b++)
      for (int64_t i = 0; i < L; i++)
        for (int64_t e = 0; e < c->E; e++)
          xb[(b * L + i) * c->E + e] = i < n[b] ? x[b][(done[b] + i) * c->E + e] : 99.0f;
    int64_t d3[3] = {c->B, L, c->E};
    attn_status st = attn_mha_forward(ctx, m, kv, tu_wrap(ctx, xb, (size_t)(c->B * L * c->E), 3, d3, NULL),
                                      tu_wrap(ctx, yb, (size_t)(c->B * L * c->E), 3, d3, NULL), n);
    if (st != ATTN_OK)
      fail_msg("%s: forward: %s", c->name, attn_ctx_last_error(ctx));
    for (int64_t b = 0; b < c->B; b++) {
      for (int64_t i = 0; i < L; i++)
        for (int64_t e = 0; e < c->E; e++) {
          float o = yb[(b * L + i) * c->E + e];
          if (i < n[b])
            got[b][(done[b] + i) * c->E + e] = o;
          else if (o != 0)
            fail_msg("%s: padding row %lld of sequence %lld is %g", c->name, (long long)i,
                     (long long)b, (double)o);
        }
      done[b] += n[b];
    }
  }
  ref_mha_args a = ref_args(c, &w);
  for (int64_t b = 0; b < c->B; b++) {
    double *want = malloc((size_t)(c->total[b] * c->E) * sizeof(double));
    ref_mha_decoder(&a, c->total[b], x[b], want);
    for (int64_t i = 0; i < c->total[b] * c->E; i++)
      if (!(fabs(got[b][i] - want[i]) <= 1e-5 + 1e-5 * fabs(want[i])))
        fail_msg("%s: sequence %lld token %lld col %lld: %.9g but the float64 reference gives "
                 "%.9g",
                 c->name, (long long)b, (long long)(i / c->E), (long long)(i % c->E),
                 (double)got[b][i], want[i]);
    free(want);
  }
  for (int64_t b = 0; b < c->B; b++)
    free(x[b]), free(got[b]);
  free(xb), free(yb);
  attn_ctx_destroy(ctx);
  weights_free(&w);
}

static void prompt_then_decode(void **state) {
  (void)state;
  static const mha_case cases[] = {
      {"mha token by token", 2, 32, 4, 4, 8, 0, 0, 0, 0, 0, {9, 3}, {20, 14}, 1, 0, 1},
      {"gqa bias rope chunks paged", 3, 24, 4, 2, 8, 1, 1, 1, 0, 0, {7, 1, 12}, {25, 9, 30}, 5,
       0, 1},
      {"mqa partial interleaved rope window softcap", 2, 20, 3, 1, 10, 1, 0, 2, 1, 3.0f,
       {6, 15}, {22, 31}, 3, 0, 2},
      {"wrapped weights, E != Hq*D", 2, 40, 6, 3, 4, 1, 1, 1, 0, 0, {11, 2}, {18, 20}, 4, 1,
       3},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    run_case(&cases[i]);
}

/* Weights read back equal what was set; a wrapped weight is read in place. */
static void weights_roundtrip(void **state) {
  (void)state;
  mha_case c = {"w", 1, 12, 2, 1, 4, 1, 0, 0, 0, 0, {1}, {1}, 1, 0, 1};
  tu_rng r = {3};
  weights w;
  weights_make(&c, &w, &r);
  attn_ctx *ctx = tu_ctx(1);
  attn_mha *m = make_layer(ctx, &c, &w);
  float back[12 * 8];
  int64_t d[2] = {8, 12};
  attn_tensor *tb = tu_wrap(ctx, back, 96, 2, d, NULL);
  assert_ok(attn_mha_get_weight(ctx, m, ATTN_MHA_Q_WEIGHT, tb));
  assert_memory_equal(back, w.w[0], 96 * sizeof(float));
  /* Wrap Wq, change the caller's memory: the layer sees it. */
  assert_ok(attn_mha_wrap_weight(ctx, m, ATTN_MHA_Q_WEIGHT, tu_wrap(ctx, w.w[0], 96, 2, d, NULL)));
  w.w[0][5] = 42.0f;
  assert_ok(attn_mha_get_weight(ctx, m, ATTN_MHA_Q_WEIGHT, tb));
  assert_true(back[5] == 42.0f);
  /* Set it again: owned, the caller's later changes do not reach it. */
  assert_ok(attn_mha_set_weight(ctx, m, ATTN_MHA_Q_WEIGHT, tu_wrap(ctx, w.w[0], 96, 2, d, NULL)));
  w.w[0][5] = 7.0f;
  assert_ok(attn_mha_get_weight(ctx, m, ATTN_MHA_Q_WEIGHT, tb));
  assert_true(back[5] == 42.0f);
  /* Wrong shapes, a bias the layer lacks, strided wrap. */
  int64_t bad[2] = {12, 8};
  assert_status(attn_mha_set_weight(ctx, m, ATTN_MHA_Q_WEIGHT, tu_wrap(ctx, back, 96, 2, bad, NULL)),
                ATTN_ERR_SHAPE);
  assert_error_mentions(ctx, "Wq");
  assert_status(attn_mha_set_weight(ctx, m, 8, tb), ATTN_ERR_INVALID_ARG);
  int64_t st2[2] = {6, 1}; /* rows overlap: not a BLAS matrix */
  assert_status(attn_mha_wrap_weight(ctx, m, ATTN_MHA_Q_WEIGHT,
                                     tu_wrap(ctx, back, 96, 2, (int64_t[]){8, 12}, st2)),
                ATTN_ERR_INVALID_ARG);
  attn_mha_decoder_params p;
  attn_mha_decoder_params_init(&p);
  p.embed_dim = 12, p.num_heads = 2;
  attn_mha *nb = NULL;
  assert_ok(attn_mha_create_decoder(ctx, &p, &nb));
  float bias[12];
  assert_status(attn_mha_get_weight(ctx, nb, ATTN_MHA_Q_BIAS,
                                    tu_wrap(ctx, bias, 12, 1, (int64_t[]){12}, NULL)),
                ATTN_ERR_INVALID_ARG);
  assert_ok(attn_mha_free(ctx, nb));
  assert_status(attn_mha_free(ctx, nb), ATTN_ERR_BAD_HANDLE);
  attn_ctx_destroy(ctx);
  weights_free(&w);
}

/* A warm layer and context allocate nothing; bad calls change nothing. */
static void warm_and_bad_input(void **state) {
  (void)state;
  mha_case c = {"warm", 2, 16, 4, 2, 4, 1, 0, 1, 0, 0, {4, 4}, {4, 4}, 1, 0, 2};
  tu_rng r = {9};
  weights w;
  weights_make(&c, &w, &r);
  tu_counter cnt = {0};
  attn_ctx_options o;
  attn_ctx_options_init(&o);
  o.num_threads = 2, o.alloc = tu_alloc, o.free = tu_free, o.alloc_user = &cnt;
  attn_ctx *ctx = NULL;
  assert_ok(attn_ctx_create(&ctx, &o));
  attn_mha *m = make_layer(ctx, &c, &w);
  attn_kv_cache *kv = make_cache(ctx, &c, 16);
  float x[2 * 4 * 16], y[2 * 4 * 16];
  tu_fill(&r, x, sizeof x / 4, -1, 1);
  int64_t d3[3] = {2, 4, 16};
  attn_tensor *tx = tu_wrap(ctx, x, 128, 3, d3, NULL), *ty = tu_wrap(ctx, y, 128, 3, d3, NULL);
  assert_ok(attn_mha_forward(ctx, m, kv, tx, ty, NULL));
  assert_ok(attn_kv_reset(ctx, kv, -1));
  long before = cnt.allocs;
  assert_ok(attn_mha_forward(ctx, m, kv, tx, ty, NULL));
  assert_int_equal(cnt.allocs, before);
  /* Bad: counts, past capacity, shapes, aliasing. Nothing changes. */
  float ysave[128];
  memcpy(ysave, y, sizeof y);
  int64_t lens0[2], lens1[2];
  attn_kv_cache_info info = {.struct_size = sizeof info};
  assert_ok(attn_kv_cache_info_get(ctx, kv, &info, lens0));
  int64_t n_bad[2] = {5, 1}, n_neg[2] = {-1, 0};
  assert_status(attn_mha_forward(ctx, m, kv, tx, ty, n_bad), ATTN_ERR_INVALID_ARG);
  assert_status(attn_mha_forward(ctx, m, kv, tx, ty, n_neg), ATTN_ERR_INVALID_ARG);
  for (int i = 0; i < 3; i++) /* 4 + 4 * 3 = 16 fits; the fourth would not */
    assert_ok(attn_mha_forward(ctx, m, kv, tx, ty, NULL));
  assert_ok(attn_kv_cache_info_get(ctx, kv, &info, lens0));
  memcpy(ysave, y, sizeof y);
  assert_status(attn_mha_forward(ctx, m, kv, tx, ty, NULL), ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "capacity");
  int64_t bad3[3] = {2, 4, 15};
  assert_status(attn_mha_forward(ctx, m, kv, tu_wrap(ctx, x, 128, 3, bad3, NULL), ty, NULL),
                ATTN_ERR_SHAPE);
  assert_status(attn_mha_forward(ctx, m, kv, tx, tx, NULL), ATTN_ERR_ALIASING);
  assert_ok(attn_kv_cache_info_get(ctx, kv, &info, lens1));
  assert_memory_equal(lens0, lens1, sizeof lens0);
  assert_memory_equal(ysave, y, sizeof y);
  attn_ctx_destroy(ctx);
  assert_int_equal(cnt.allocs, cnt.frees);
  weights_free(&w);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(prompt_then_decode),
      cmocka_unit_test(weights_roundtrip),
      cmocka_unit_test(warm_and_bad_input),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
