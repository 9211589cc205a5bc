/* The decoder attention layer (attn_mha_*) against the float64 reference
 * (tests/reference/ref_mha.c): a prompt forward that fills a KV cache,
 * then decode steps of varying sizes, must give every token the output of
 * the reference's one causal pass over the whole sequence. Plus weights
 * copied, wrapped and read back; no allocation on a warm layer; bad input
 * changing nothing. */
#include "test_util.h"

#include "ref_mha.h"
#include "ref_posenc.h"

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
  const ref_rope_scaling *scaling; /* a long-context scaling of the rope (theta 1000) */
  int apply_af;                    /* ... with its attention factor applied */
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

/* The library's parameters for a reference configuration: the fields the
 * scaling uses (explicit values, no defaults), the others left 0. */
static void scaling_params(const ref_rope_scaling *c, int apply, attn_rope_cache_params *p) {
  attn_rope_cache_params_init(p);
  p->scaling = c->scaling;
  p->apply_attention_factor = apply;
  p->factor = c->factor;
  int sc = c->scaling;
  if (sc != REF_ROPE_LINEAR && sc != REF_ROPE_NTK)
    p->original_max_position = c->p0;
  if (sc == REF_ROPE_DYNAMIC_NTK || sc == REF_ROPE_LONGROPE)
    p->seq_len = c->seq_len;
  if (sc == REF_ROPE_YARN) {
    p->beta_fast = c->beta_fast, p->beta_slow = c->beta_slow;
    p->mscale = c->mscale, p->mscale_all_dim = c->mscale_all_dim;
    p->yarn_no_truncate = !c->truncate;
  }
  if (sc == REF_ROPE_YARN || sc == REF_ROPE_LONGROPE)
    p->attention_factor = c->attention_factor;
  if (sc == REF_ROPE_LLAMA3)
    p->low_freq_factor = c->low_ff, p->high_freq_factor = c->high_ff;
  if (sc == REF_ROPE_LONGROPE)
    p->short_factors = c->short_f, p->long_factors = c->long_f;
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
  attn_rope_cache_params sp;
  if (c->scaling)
    scaling_params(c->scaling, c->apply_af, &sp);
  p.rope_scaling = c->scaling ? &sp : NULL;
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

/* freqs: room for D/2 frequencies, used with a scaling. */
static ref_mha_args ref_args(const mha_case *c, const weights *w, double *freqs) {
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
  if (c->scaling) {
    double af = ref_rope_scaled_freqs(c->scaling, a.rotary_dim / 2, freqs);
    a.freqs = freqs;
    a.amp = c->apply_af ? af : 1.0;
  }
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

/* keep: NULL, or receives the B outputs [total_b, E] (the caller frees). */
static void run_case(const mha_case *c, float **keep) {
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
          xb[(b * L + i) * c->E + e] = i < n[b] ? x[b][(done[b] + i) * c->E + e] : NAN;
    int64_t d3[3] = {c->B, L, c->E};
    attn_status st =
        attn_mha_forward(ctx, m, kv, tu_wrap(ctx, xb, (size_t)(c->B * L * c->E), 3, d3, NULL),
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
  double freqs[64];
  assert_true(c->D / 2 <= 64);
  ref_mha_args a = ref_args(c, &w, freqs);
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
  for (int64_t b = 0; b < c->B; b++) {
    free(x[b]);
    if (keep)
      keep[b] = got[b];
    else
      free(got[b]);
  }
  free(xb), free(yb);
  attn_ctx_destroy(ctx);
  weights_free(&w);
}

static void prompt_then_decode(void **state) {
  (void)state;
  static const mha_case cases[] = {
      {"mha token by token", 2, 32, 4, 4, 8, 0, 0, 0, 0, 0, {9, 3}, {20, 14}, 1, 0, 1, NULL, 0},
      {"gqa bias rope chunks paged", 3, 24, 4, 2, 8, 1, 1, 1, 0, 0, {7, 1, 12}, {25, 9, 30}, 5,
       0, 1, NULL, 0},
      {"mqa partial interleaved rope window softcap", 2, 20, 3, 1, 10, 1, 0, 2, 1, 3.0f,
       {6, 15}, {22, 31}, 3, 0, 2, NULL, 0},
      {"wrapped weights, E != Hq*D", 2, 40, 6, 3, 4, 1, 1, 1, 0, 0, {11, 2}, {18, 20}, 4, 1,
       3, NULL, 0},
      /* One sequence in a contiguous cache: k and v projected straight into
       * it (heads of 8, 10 and 4 columns: inside the product's 32-column
       * panels, across them, and without packs). */
      {"one sequence gqa bias rope chunks", 1, 24, 4, 2, 8, 1, 0, 1, 0, 0, {7}, {25}, 5, 0, 2,
       NULL, 0},
      {"one sequence mqa interleaved rope window softcap", 1, 20, 3, 1, 10, 1, 0, 2, 1, 3.0f,
       {6}, {22}, 1, 0, 1, NULL, 0},
      {"one sequence wrapped weights", 1, 40, 6, 3, 4, 1, 0, 1, 0, 0, {11}, {18}, 4, 1, 3, NULL,
       0},
      {"one sequence paged", 1, 24, 4, 2, 8, 0, 1, 1, 0, 0, {9}, {20}, 3, 0, 2, NULL, 0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    run_case(&cases[i], NULL);
}

/* Each long-context scaling (theta 1000, the original context p0 = 16..64
 * well inside the 30 tokens run, so every branch of the formulas is taken)
 * against the reference with the scaled frequencies written from their
 * formulas; and decoding token by token equals one full causal forward. */
static void rope_scalings(void **state) {
  (void)state;
  static const double sf[4] = {1.0, 1.5, 2.25, 3.0}, lf[4] = {1.5, 4.0, 9.5, 20.0};
  ref_rope_scaling base;
  memset(&base, 0, sizeof base);
  base.theta = 1000, base.factor = 4, base.p0 = 16, base.seq_len = 40;
  base.beta_fast = 32, base.beta_slow = 1, base.truncate = 1;
  base.low_ff = 1, base.high_ff = 4, base.short_f = sf, base.long_f = lf;
  ref_rope_scaling cfg[10];
  for (int i = 0; i < 10; i++)
    cfg[i] = base, cfg[i].scaling = i < 7 ? i : 0;
  cfg[REF_ROPE_YARN].p0 = 64;             /* ramp 0, .5, 1, 1 over the four pairs */
  cfg[7] = cfg[REF_ROPE_YARN];             /* DeepSeek style mscale / mscale_all_dim */
  cfg[7].mscale = 0.707, cfg[7].mscale_all_dim = 1, cfg[7].truncate = 0;
  cfg[8] = cfg[REF_ROPE_LONGROPE];          /* seq_len <= p0: the short factors */
  cfg[8].seq_len = 12, cfg[8].attention_factor = 1.3;
  cfg[9] = cfg[REF_ROPE_DYNAMIC_NTK];       /* seq_len <= p0: the plain frequencies */
  cfg[9].seq_len = 10;
  for (int i = 0; i < 10; i++) {
    if (i == REF_ROPE_NONE)
      continue;
    mha_case c = {"scaled rope", 2, 24, 4, 2, 8, i & 1, i & 1, 1 + (i % 3 == 0), 0, 0,
                  {7, 3}, {30, 22}, 4, 0, 2, &cfg[i], i != REF_ROPE_LONGROPE};
    run_case(&c, NULL);
    /* The same tokens in one forward, and one at a time: equal within 1e-5. */
    float *full[2], *steps[2];
    c.prompt[0] = 30, c.prompt[1] = 22;
    run_case(&c, full);
    c.prompt[0] = c.prompt[1] = 1, c.max_chunk = 1;
    run_case(&c, steps);
    for (int b = 0; b < 2; b++) {
      for (int64_t j = 0; j < c.total[b] * c.E; j++)
        if (!(fabsf(full[b][j] - steps[b][j]) <= 1e-5f))
          fail_msg("scaling config %d: sequence %d element %lld: %.9g in one forward but "
                   "%.9g token by token",
                   i, b, (long long)j, (double)full[b][j], (double)steps[b][j]);
      free(full[b]), free(steps[b]);
    }
  }
}

/* Bad scaling parameters are refused at creation, naming the field. */
static void rope_scaling_bad(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  attn_mha_decoder_params p;
  attn_mha_decoder_params_init(&p);
  p.embed_dim = 16, p.num_heads = 2;
  attn_rope_params rp;
  attn_rope_params_init(&rp);
  rp.theta = 500;
  attn_rope_cache_params sp;
  attn_rope_cache_params_init(&sp);
  sp.scaling = ATTN_ROPE_SCALING_YARN, sp.factor = 4, sp.original_max_position = 64;
  p.rope_scaling = &sp;
  attn_mha *m = NULL;
  assert_status(attn_mha_create_decoder(ctx, &p, &m), ATTN_ERR_INVALID_ARG); /* no rope */
  assert_error_mentions(ctx, "params.rope is NULL");
  p.rope = &rp;
  sp.theta = 10000; /* a base other than rope's */
  assert_status(attn_mha_create_decoder(ctx, &p, &m), ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "rope_scaling.theta");
  sp.theta = 500, sp.factor = -1;
  assert_status(attn_mha_create_decoder(ctx, &p, &m), ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "params.rope_scaling.factor");
  sp.factor = 4, sp.low_freq_factor = 2; /* a Llama-3 field with YaRN */
  assert_status(attn_mha_create_decoder(ctx, &p, &m), ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "low_freq_factor");
  attn_rope_cache_params_init(&sp);
  sp.scaling = ATTN_ROPE_SCALING_DYNAMIC_NTK, sp.factor = 2, sp.original_max_position = 8;
  assert_status(attn_mha_create_decoder(ctx, &p, &m), ATTN_ERR_INVALID_ARG); /* no seq_len */
  assert_error_mentions(ctx, "seq_len");
  sp.scaling = ATTN_ROPE_SCALING_LONGROPE, sp.seq_len = 100;
  assert_status(attn_mha_create_decoder(ctx, &p, &m), ATTN_ERR_NULL_ARG); /* no factors */
  assert_error_mentions(ctx, "short_factors");
  assert_null(m);
  sp.scaling = ATTN_ROPE_SCALING_NTK, sp.original_max_position = 0, sp.seq_len = 0;
  rp.rotary_dim = 2; /* NTK's exponent r/(r-2) */
  assert_status(attn_mha_create_decoder(ctx, &p, &m), ATTN_ERR_SHAPE);
  rp.rotary_dim = 4;
  rp.offset = 3; /* positions come from the cache */
  assert_status(attn_mha_create_decoder(ctx, &p, &m), ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "params.rope.offset and positions");
  assert_null(m);
  rp.offset = 0;
  assert_ok(attn_mha_create_decoder(ctx, &p, &m));
  assert_ok(attn_mha_free(ctx, m));
  attn_ctx_destroy(ctx);
}

/* Weights read back equal what was set; a wrapped weight is read in place. */
static void weights_roundtrip(void **state) {
  (void)state;
  mha_case c = {"w", 1, 12, 2, 1, 4, 1, 0, 0, 0, 0, {1}, {1}, 1, 0, 1, NULL, 0};
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
  /* Memory a wrapped weight used may be freed before the weight is set
   * again: set_weight never reads it (ASan). */
  float *gone = malloc(96 * sizeof(float));
  assert_non_null(gone);
  memcpy(gone, back, 96 * sizeof(float));
  assert_ok(attn_mha_wrap_weight(ctx, m, ATTN_MHA_Q_WEIGHT, tu_wrap(ctx, gone, 96, 2, d, NULL)));
  free(gone);
  assert_ok(attn_mha_set_weight(ctx, m, ATTN_MHA_Q_WEIGHT, tu_wrap(ctx, w.w[0], 96, 2, d, NULL)));
  assert_ok(attn_mha_get_weight(ctx, m, ATTN_MHA_Q_WEIGHT, tb));
  assert_memory_equal(back, w.w[0], 96 * sizeof(float));
  /* Wrong shapes, a bias the layer lacks, strided wrap. */
  int64_t bad[2] = {12, 8};
  assert_status(
      attn_mha_set_weight(ctx, m, ATTN_MHA_Q_WEIGHT, tu_wrap(ctx, back, 96, 2, bad, NULL)),
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

/* One prompt of c->total[0] tokens (B = 1) through m into the emptied
 * cache, checked against the float64 reference with the weights in *w as
 * they are now; y receives the outputs. */
static void prompt_vs_reference(attn_ctx *ctx, attn_mha *m, attn_kv_cache *kv,
                                const mha_case *c, const weights *w, const float *x, float *y,
                                const char *what) {
  int64_t L = c->total[0], n = L * c->E, d3[3] = {1, L, c->E};
  assert_ok(attn_kv_reset(ctx, kv, -1));
  attn_status st = attn_mha_forward(ctx, m, kv, tu_wrap(ctx, (float *)x, (size_t)n, 3, d3, NULL),
                                    tu_wrap(ctx, y, (size_t)n, 3, d3, NULL), NULL);
  if (st != ATTN_OK)
    fail_msg("%s: %s", what, attn_ctx_last_error(ctx));
  double freqs[64], *want = malloc((size_t)n * sizeof(double));
  ref_mha_args a = ref_args(c, w, freqs);
  ref_mha_decoder(&a, L, x, want);
  for (int64_t i = 0; i < n; i++)
    if (!(fabs(y[i] - want[i]) <= 1e-5 + 1e-5 * fabs(want[i])))
      fail_msg("%s: token %lld col %lld: %.9g but the float64 reference gives %.9g", what,
               (long long)(i / c->E), (long long)(i % c->E), (double)y[i], want[i]);
  free(want);
}

/* New random values for weight i of *w (in place). */
static void weights_redraw(weights *w, int i, tu_rng *r) {
  tu_fill(r, w->w[i], w->n[i], -0.3f, 0.3f);
}

/* The layer keeps its owned projections packed (24 tokens: the blocked
 * products): a weight set after a forward must reach the next one, whether
 * a matrix, a bias or the output projection. */
static void set_weight_after_forward(void **state) {
  (void)state;
  mha_case c = {"set", 1, 16, 4, 2, 4, 1, 0, 1, 0, 0, {24}, {24}, 24, 0, 2, NULL, 0};
  tu_rng r = {21};
  weights w;
  weights_make(&c, &w, &r);
  float x[24 * 16], y0[24 * 16], y[24 * 16];
  tu_fill(&r, x, 24 * 16, -1, 1);
  attn_ctx *ctx = tu_ctx(2);
  attn_mha *m = make_layer(ctx, &c, &w);
  attn_kv_cache *kv = make_cache(ctx, &c, 24);
  prompt_vs_reference(ctx, m, kv, &c, &w, x, y0, "first");
  static const int32_t order[][3] = {{ATTN_MHA_Q_WEIGHT, -1, -1},
                                     {ATTN_MHA_K_BIAS, ATTN_MHA_O_WEIGHT, -1},
                                     {ATTN_MHA_V_WEIGHT, ATTN_MHA_Q_BIAS, ATTN_MHA_O_BIAS}};
  for (int step = 0; step < 3; step++) {
    for (int j = 0; j < 3 && order[step][j] >= 0; j++) {
      int32_t i = order[step][j];
      weights_redraw(&w, i, &r);
      int64_t hq = c.Hq * c.D, hkv = c.Hkv * c.D;
      const int64_t rows[8] = {hq, hkv, hkv, c.E, 1, 1, 1, 1};
      int64_t dims[2] = {rows[i], (int64_t)w.n[i] / rows[i]};
      attn_tensor *t = i < 4 ? tu_wrap(ctx, w.w[i], w.n[i], 2, dims, NULL)
                             : tu_wrap(ctx, w.w[i], w.n[i], 1, dims + 1, NULL);
      assert_ok(attn_mha_set_weight(ctx, m, i, t));
    }
    prompt_vs_reference(ctx, m, kv, &c, &w, x, y, "after set_weight");
    assert_true(memcmp(y, y0, sizeof y) != 0);
    memcpy(y0, y, sizeof y);
  }
  attn_ctx_destroy(ctx);
  weights_free(&w);
}

/* Wrapped weights are read on every call: the caller's changes between
 * calls reach the next forward, also after the weight was owned (and
 * packed) for a while and then wrapped again. */
static void wrapped_weights_read_each_call(void **state) {
  (void)state;
  mha_case c = {"wrap", 1, 16, 4, 2, 4, 1, 0, 1, 0, 0, {24}, {24}, 24, 1, 2, NULL, 0};
  tu_rng r = {22};
  weights w;
  weights_make(&c, &w, &r);
  float x[24 * 16], y[24 * 16];
  tu_fill(&r, x, 24 * 16, -1, 1);
  attn_ctx *ctx = tu_ctx(2);
  attn_mha *m = make_layer(ctx, &c, &w); /* every weight wrapped */
  attn_kv_cache *kv = make_cache(ctx, &c, 24);
  prompt_vs_reference(ctx, m, kv, &c, &w, x, y, "wrapped");
  weights_redraw(&w, ATTN_MHA_Q_WEIGHT, &r);
  weights_redraw(&w, ATTN_MHA_V_BIAS, &r);
  weights_redraw(&w, ATTN_MHA_O_WEIGHT, &r);
  prompt_vs_reference(ctx, m, kv, &c, &w, x, y, "wrapped memory changed");
  /* Owned: the caller's buffers no longer matter. */
  for (int32_t i = 0; i < 8; i++) {
    int64_t n = (int64_t)w.n[i], rows = i < 4 ? (i == 3 ? c.E : n / c.E) : 1;
    int64_t dims[2] = {rows, n / rows};
    attn_tensor *t = i < 4 ? tu_wrap(ctx, w.w[i], w.n[i], 2, dims, NULL)
                           : tu_wrap(ctx, w.w[i], w.n[i], 1, dims + 1, NULL);
    assert_ok(attn_mha_set_weight(ctx, m, i, t));
  }
  prompt_vs_reference(ctx, m, kv, &c, &w, x, y, "owned");
  weights saved;
  weights_make(&c, &saved, &r);
  for (int i = 0; i < 8; i++)
    memcpy(saved.w[i], w.w[i], w.n[i] * sizeof(float));
  weights_redraw(&w, ATTN_MHA_Q_WEIGHT, &r);
  prompt_vs_reference(ctx, m, kv, &c, &saved, x, y, "owned, caller memory changed");
  /* Wk wrapped again: read in place from the next call on. */
  int64_t dk[2] = {c.Hkv * c.D, c.E};
  assert_ok(attn_mha_wrap_weight(ctx, m, ATTN_MHA_K_WEIGHT,
                                 tu_wrap(ctx, w.w[1], w.n[1], 2, dk, NULL)));
  weights_redraw(&w, ATTN_MHA_K_WEIGHT, &r);
  memcpy(saved.w[1], w.w[1], w.n[1] * sizeof(float));
  prompt_vs_reference(ctx, m, kv, &c, &saved, x, y, "Wk wrapped again");
  weights_redraw(&w, ATTN_MHA_K_WEIGHT, &r);
  memcpy(saved.w[1], w.w[1], w.n[1] * sizeof(float));
  prompt_vs_reference(ctx, m, kv, &c, &saved, x, y, "Wk wrapped, changed");
  attn_ctx_destroy(ctx);
  weights_free(&saved);
  weights_free(&w);
}

/* A one-row weight (Wo of an E = 1 layer) wrapped with any row stride: a
 * stride of 0 or past 2^31 is never stepped, so it must not reach the
 * products as their row stride (cblas_sgemm, with the sse2 set, refused
 * such an ldb, printed, and left y unwritten). */
static void wrapped_one_row_weight(void **state) {
  (void)state;
  mha_case c = {"one row", 1, 1, 1, 1, 2, 1, 0, 0, 0, 0, {5}, {5}, 5, 0, 1, NULL, 0};
  tu_rng r = {23};
  weights w;
  weights_make(&c, &w, &r);
  float x[5], y[5];
  tu_fill(&r, x, 5, -1, 1);
  attn_ctx *ctx = tu_ctx(1);
  attn_mha *m = make_layer(ctx, &c, &w);
  attn_kv_cache *kv = make_cache(ctx, &c, 5);
  const int64_t row_strides[] = {0, 1, (int64_t)1 << 33};
  for (int i = 0; i < 3; i++) {
    int64_t dims[2] = {1, 2}, strides[2] = {row_strides[i], 1};
    attn_tensor *t = NULL;
    assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 2, dims, strides, w.w[3],
                               2 * sizeof(float), &t));
    assert_ok(attn_mha_wrap_weight(ctx, m, ATTN_MHA_O_WEIGHT, t));
    prompt_vs_reference(ctx, m, kv, &c, &w, x, y, "one-row Wo wrapped");
  }
  attn_ctx_destroy(ctx);
  weights_free(&w);
}

/* y in the memory of a weight used in place would change it while the
 * call reads it: refused, nothing written, the cache unchanged. */
static void y_over_wrapped_weight(void **state) {
  (void)state;
  mha_case c = {"y over Wo", 1, 4, 2, 1, 2, 0, 0, 0, 0, 0, {4}, {4}, 4, 1, 1, NULL, 0};
  tu_rng r = {24};
  weights w;
  weights_make(&c, &w, &r);
  float x[16];
  tu_fill(&r, x, 16, -1, 1);
  attn_ctx *ctx = tu_ctx(1);
  attn_mha *m = make_layer(ctx, &c, &w); /* every weight wrapped */
  attn_kv_cache *kv = make_cache(ctx, &c, 4);
  float saved[16];
  memcpy(saved, w.w[3], sizeof saved);
  int64_t d3[3] = {1, 4, 4}, lens[1] = {-1};
  attn_status st = attn_mha_forward(ctx, m, kv, tu_wrap(ctx, x, 16, 3, d3, NULL),
                                    tu_wrap(ctx, w.w[3], 16, 3, d3, NULL), NULL);
  assert_status(st, ATTN_ERR_ALIASING);
  assert_error_mentions(ctx, "Wo");
  assert_memory_equal(w.w[3], saved, sizeof saved);
  attn_kv_cache_info info = {.struct_size = sizeof info};
  assert_ok(attn_kv_cache_info_get(ctx, kv, &info, lens));
  assert_int_equal(lens[0], 0);
  attn_ctx_destroy(ctx);
  weights_free(&w);
}

/* A wrapped cache whose keys or values are the memory of a weight used in
 * place: the forward wrote the new k and v rows there while a projection
 * still read the weight (a wrong y, the caller's weight overwritten). */
static void cache_over_wrapped_weight(void **state) {
  (void)state;
  mha_case c = {"cache over W", 1, 4, 2, 1, 2, 0, 0, 0, 0, 0, {4}, {4}, 4, 1, 1, NULL, 0};
  tu_rng r = {26};
  weights w;
  weights_make(&c, &w, &r);
  float x[16], y[16], other[8];
  tu_fill(&r, x, 16, -1, 1);
  attn_ctx *ctx = tu_ctx(1);
  attn_mha *m = make_layer(ctx, &c, &w); /* every weight wrapped */
  const char *names[4] = {"Wq", "Wk", "Wv", "Wo"};
  for (int i = 0; i < 4; i++)
    for (int values = 0; values < 2; values++) {
      float saved[16];
      memcpy(saved, w.w[i], w.n[i] * sizeof(float));
      int64_t dims[4] = {1, 1, 4, 2}, d3[3] = {1, 4, 4}, lens[1] = {-1};
      attn_tensor *over = tu_wrap(ctx, w.w[i], 8, 4, dims, NULL);
      attn_tensor *apart = tu_wrap(ctx, other, 8, 4, dims, NULL);
      attn_kv_cache *kv = NULL;
      assert_ok(attn_kv_cache_wrap(ctx, values ? apart : over, values ? over : apart, NULL, &kv));
      for (int j = 0; j < 16; j++)
        y[j] = 7;
      attn_status st = attn_mha_forward(ctx, m, kv, tu_wrap(ctx, x, 16, 3, d3, NULL),
                                        tu_wrap(ctx, y, 16, 3, d3, NULL), NULL);
      if (st != ATTN_ERR_ALIASING)
        fail_msg("%s over %s: %s", values ? "values" : "keys", names[i], attn_status_string(st));
      assert_error_mentions(ctx, names[i]);
      assert_memory_equal(w.w[i], saved, w.n[i] * sizeof(float));
      for (int j = 0; j < 16; j++)
        assert_true(y[j] == 7);
      attn_kv_cache_info info = {.struct_size = sizeof info};
      assert_ok(attn_kv_cache_info_get(ctx, kv, &info, lens));
      assert_int_equal(lens[0], 0);
      assert_ok(attn_kv_cache_free(ctx, kv));
    }
  attn_ctx_destroy(ctx);
  weights_free(&w);
}

/* A forward out of memory must leave a paged cache as it was, its blocks
 * too. The attention's workspace was allocated after the append and its
 * failure rolled the rows back, but a copy on write of a shared block
 * stayed: one block fewer free, the sharing undone. Every allocation of
 * the call is made to fail in turn (the last one lets it through). */
static void no_memory_leaves_paged_cache(void **state) {
  (void)state;
  mha_case c = {"paged", 2, 8, 2, 2, 4, 0, 1, 1, 0, 0, {6, 0}, {6, 0}, 1, 0, 1, NULL, 0};
  tu_rng r = {27};
  weights w;
  weights_make(&c, &w, &r);
  static float x[2 * 16 * 8], y[2 * 16 * 8];
  tu_fill(&r, x, sizeof x / 4, -1, 1);
  tu_counter cnt = {0, 0, 0};
  attn_ctx_options o;
  attn_ctx_options_init(&o);
  o.num_threads = 1, o.alloc = tu_alloc, o.free = tu_free, o.alloc_user = &cnt;
  int done = 0;
  for (long k = 1; !done; k++) {
    attn_ctx *ctx = NULL;
    assert_ok(attn_ctx_create(&ctx, &o));
    attn_mha *m = make_layer(ctx, &c, &w);
    attn_kv_cache *kv = make_cache(ctx, &c, 24); /* blocks of 4 */
    int64_t d6[3] = {2, 6, 8}, d16[3] = {2, 16, 8}, prompt[2] = {6, 0}, step[2] = {16, 0};
    assert_ok(attn_mha_forward(ctx, m, kv, tu_wrap(ctx, x, 96, 3, d6, NULL),
                               tu_wrap(ctx, y, 96, 3, d6, NULL), prompt));
    assert_ok(attn_kv_copy(ctx, kv, 1, 0)); /* shares block 1, 2 of its 4 rows used */
    attn_tensor *tx = tu_wrap(ctx, x, sizeof x / 4, 3, d16, NULL);
    attn_tensor *ty = tu_wrap(ctx, y, sizeof y / 4, 3, d16, NULL);
    int64_t lens[2];
    attn_kv_cache_info before = {.struct_size = sizeof before}, after = before;
    assert_ok(attn_kv_cache_info_get(ctx, kv, &before, NULL));
    cnt.fail_at = cnt.allocs + k;
    attn_status st = attn_mha_forward(ctx, m, kv, tx, ty, step);
    done = cnt.fail_at != 0; /* no allocation failed */
    cnt.fail_at = 0;
    assert_ok(attn_kv_cache_info_get(ctx, kv, &after, lens));
    if (!done) {
      assert_status(st, ATTN_ERR_NO_MEMORY);
      assert_int_equal(lens[0], 6);
      if (after.free_blocks != before.free_blocks)
        fail_msg("allocation %ld failed: free blocks %lld -> %lld", k,
                 (long long)before.free_blocks, (long long)after.free_blocks);
    } else {
      assert_ok(st);
      assert_int_equal(lens[0], 22);
    }
    attn_ctx_destroy(ctx);
  }
  weights_free(&w);
}

/* A wrapped cache of capacity 1 may give its row axis any stride (never
 * stepped), 0 included. The layer's projection writes k and v into such a
 * cache's rows directly: a row stride below D reached cblas_sgemm (the sse2
 * set) as ldc, which refused it, printed, and left the cache row and y
 * zero. */
static void cache_of_one_row_any_stride(void **state) {
  (void)state;
  mha_case c = {"cap 1", 1, 4, 2, 1, 4, 1, 0, 1, 0, 0, {1}, {1}, 1, 0, 1, NULL, 0};
  tu_rng r = {25};
  weights w;
  weights_make(&c, &w, &r);
  float x[4], y[4], k[4], v[4];
  tu_fill(&r, x, 4, -1, 1);
  attn_ctx *ctx = tu_ctx(1);
  attn_mha *m = make_layer(ctx, &c, &w);
  const int64_t row_strides[] = {0, 2, 4};
  for (int i = 0; i < 3; i++) {
    int64_t dims[4] = {1, 1, 1, 4}, strides[4] = {4, 4, row_strides[i], 1};
    attn_tensor *tk = NULL, *tv = NULL;
    assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, dims, strides, k, sizeof k, &tk));
    assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, dims, strides, v, sizeof v, &tv));
    attn_kv_cache *kv = NULL;
    assert_ok(attn_kv_cache_wrap(ctx, tk, tv, NULL, &kv));
    prompt_vs_reference(ctx, m, kv, &c, &w, x, y, "capacity 1");
    assert_ok(attn_kv_cache_free(ctx, kv));
  }
  attn_ctx_destroy(ctx);
  weights_free(&w);
}

/* A warm layer: case c's layer (E = 16, B = 2) and a cache of cap tokens on a
 * 2-thread context whose allocations are counted, x [2, L = c->prompt[0],
 * 16] random. warm_layer_start runs the layer on x, resets the cache and
 * runs it again: the second call must allocate nothing. */
typedef struct {
  tu_counter cnt;
  weights w;
  attn_ctx *ctx;
  attn_mha *m;
  attn_kv_cache *kv;
  float x[2 * 12 * 16], y[2 * 12 * 16];
  int64_t n; /* elements of x and y in use */
  attn_tensor *tx, *ty;
} warm_layer;

static void warm_layer_start(warm_layer *f, const mha_case *c, uint64_t seed, int64_t cap) {
  memset(f, 0, sizeof *f);
  tu_rng r = {seed};
  weights_make(c, &f->w, &r);
  attn_ctx_options o;
  attn_ctx_options_init(&o);
  o.num_threads = 2, o.alloc = tu_alloc, o.free = tu_free, o.alloc_user = &f->cnt;
  assert_ok(attn_ctx_create(&f->ctx, &o));
  f->m = make_layer(f->ctx, c, &f->w);
  f->kv = make_cache(f->ctx, c, cap);
  int64_t d3[3] = {2, c->prompt[0], 16};
  f->n = 2 * c->prompt[0] * 16;
  assert_true(f->n <= (int64_t)(sizeof f->x / sizeof *f->x));
  tu_fill(&r, f->x, (size_t)f->n, -1, 1);
  f->tx = tu_wrap(f->ctx, f->x, f->n, 3, d3, NULL);
  f->ty = tu_wrap(f->ctx, f->y, f->n, 3, d3, NULL);
  assert_ok(attn_mha_forward(f->ctx, f->m, f->kv, f->tx, f->ty, NULL));
  assert_ok(attn_kv_reset(f->ctx, f->kv, -1));
  long before = f->cnt.allocs;
  assert_ok(attn_mha_forward(f->ctx, f->m, f->kv, f->tx, f->ty, NULL));
  assert_int_equal(f->cnt.allocs, before);
}

static void warm_layer_end(warm_layer *f) {
  attn_ctx_destroy(f->ctx);
  assert_int_equal(f->cnt.allocs, f->cnt.frees);
  weights_free(&f->w);
}

/* A warm layer allocates nothing with 24 tokens per call too: the
 * projections' blocked path, whose packed weights live in the context's
 * workspace. */
static void warm_blocked_projections(void **state) {
  (void)state;
  mha_case c = {"warm", 2, 16, 4, 2, 4, 1, 0, 1, 0, 0, {12, 12}, {12, 12}, 1, 0, 2, NULL, 0};
  warm_layer f;
  warm_layer_start(&f, &c, 10, 12);
  warm_layer_end(&f);
}

/* A warm layer and context allocate nothing; bad calls change nothing. */
static void warm_and_bad_input(void **state) {
  (void)state;
  mha_case c = {"warm", 2, 16, 4, 2, 4, 1, 0, 1, 0, 0, {4, 4}, {4, 4}, 1, 0, 2, NULL, 0};
  warm_layer f;
  warm_layer_start(&f, &c, 9, 16);
  attn_ctx *ctx = f.ctx;
  attn_mha *m = f.m;
  attn_kv_cache *kv = f.kv;
  attn_tensor *tx = f.tx, *ty = f.ty;
  float ysave[2 * 4 * 16];
  assert_int_equal(f.n, 128);
  /* Bad: counts, past capacity, shapes, aliasing. Nothing changes. */
  int64_t lens0[2], lens1[2];
  attn_kv_cache_info info = {.struct_size = sizeof info};
  assert_ok(attn_kv_cache_info_get(ctx, kv, &info, lens0));
  int64_t n_bad[2] = {5, 1}, n_neg[2] = {-1, 0};
  assert_status(attn_mha_forward(ctx, m, kv, tx, ty, n_bad), ATTN_ERR_INVALID_ARG);
  assert_status(attn_mha_forward(ctx, m, kv, tx, ty, n_neg), ATTN_ERR_INVALID_ARG);
  for (int i = 0; i < 3; i++) /* 4 + 4 * 3 = 16 fits; the fourth would not */
    assert_ok(attn_mha_forward(ctx, m, kv, tx, ty, NULL));
  assert_ok(attn_kv_cache_info_get(ctx, kv, &info, lens0));
  memcpy(ysave, f.y, sizeof ysave);
  assert_status(attn_mha_forward(ctx, m, kv, tx, ty, NULL), ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "capacity");
  int64_t bad3[3] = {2, 4, 15};
  assert_status(attn_mha_forward(ctx, m, kv, tu_wrap(ctx, f.x, 128, 3, bad3, NULL), ty, NULL),
                ATTN_ERR_SHAPE);
  assert_status(attn_mha_forward(ctx, m, kv, tx, tx, NULL), ATTN_ERR_ALIASING);
  assert_ok(attn_kv_cache_info_get(ctx, kv, &info, lens1));
  assert_memory_equal(lens0, lens1, sizeof lens0);
  assert_memory_equal(ysave, f.y, sizeof ysave);
  /* No counted row, even in a full cache: y all zeros, nothing appended. */
  int64_t n_none[2] = {0, 0};
  assert_ok(attn_mha_forward(ctx, m, kv, tx, ty, n_none));
  for (int i = 0; i < 128; i++)
    assert_true(f.y[i] == 0);
  assert_ok(attn_kv_cache_info_get(ctx, kv, &info, lens1));
  assert_memory_equal(lens0, lens1, sizeof lens0);
  warm_layer_end(&f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(prompt_then_decode),
      cmocka_unit_test(rope_scalings),
      cmocka_unit_test(rope_scaling_bad),
      cmocka_unit_test(weights_roundtrip),
      cmocka_unit_test(warm_and_bad_input),
      cmocka_unit_test(warm_blocked_projections),
      cmocka_unit_test(set_weight_after_forward),
      cmocka_unit_test(wrapped_weights_read_each_call),
      cmocka_unit_test(wrapped_one_row_weight),
      cmocka_unit_test(y_over_wrapped_weight),
      cmocka_unit_test(cache_over_wrapped_weight),
      cmocka_unit_test(no_memory_leaves_paged_cache),
      cmocka_unit_test(cache_of_one_row_any_stride),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
