/* Rotary embedding from cos/sin tables (attn_rope_cached, as ONNX
 * RotaryEmbedding-23) and the table filler with the long-context scalings
 * (attn_rope_cache_fill). The tables given to attn_rope_cached are random:
 * the op must treat them as arbitrary tables. Each scaling is checked
 * against its formula, written out below in float64 from Hugging Face
 * transformers' modeling_rope_utils and the papers (YaRN, Llama 3.1,
 * LongRoPE), independently of src/. */
#include "test_util.h"

#include "ref_common.h"
#include "ref_pool.h"
#include "ref_posenc.h"

static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p)
    fail_msg("out of memory");
  return p;
}

/* ================= attn_rope_cached against the ONNX-style reference ================= */

typedef struct {
  int64_t B, H, L, D, half, P;
  int interleaved;
  int x3d;         /* x is [B, L, H*D] with num_heads */
  int tokens_outer; /* 4-D x stored as [B, L, H, D] (strided view) */
  int tables3d;    /* tables [Bt, L, half] per token (Bt = B or 1) */
  int shared_batch; /* with tables3d: Bt = 1 */
  int use_pos;     /* position ids (2-D tables) */
  int in_place;
  int32_t threads;
} cached_case;

static void run_cached_case(const cached_case *c, uint64_t seed) {
  tu_rng rng = {seed};
  int64_t B = c->B, H = c->H, L = c->L, D = c->D, half = c->half;
  int64_t Bt = c->shared_batch ? 1 : B;
  int64_t rows = c->tables3d ? Bt * L : c->P;
  size_t nx = (size_t)(B * H * L * D), nt = (size_t)(rows * half);
  float *x = xmalloc(nx * sizeof *x), *y = xmalloc(nx * sizeof *y);
  float *ct = xmalloc(nt * sizeof *ct), *st = xmalloc(nt * sizeof *st);
  double *want = xmalloc(nx * sizeof *want);
  double *cr = xmalloc((size_t)(B * L * half) * sizeof *cr);
  double *sr = xmalloc((size_t)(B * L * half) * sizeof *sr);
  int64_t *pos = xmalloc((size_t)(B * L) * sizeof *pos);
  tu_fill(&rng, x, nx, -2, 2);
  tu_fill(&rng, ct, nt, -1.5f, 1.5f); /* arbitrary, not cos/sin of anything */
  tu_fill(&rng, st, nt, -1.5f, 1.5f);
  for (int64_t i = 0; i < B * L; i++)
    pos[i] = (int64_t)(tu_next(&rng) % (uint64_t)c->P);

  /* Reference layout: x as [B, H, L, D]; the table row of each token. */
  for (int64_t b = 0; b < B; b++)
    for (int64_t l = 0; l < L; l++) {
      int64_t row = c->tables3d ? (c->shared_batch ? 0 : b) * L + l : c->use_pos ? pos[b * L + l] : l;
      for (int64_t i = 0; i < half; i++) {
        cr[(b * L + l) * half + i] = ct[row * half + i];
        sr[(b * L + l) * half + i] = st[row * half + i];
      }
      for (int64_t h = 0; h < H; h++)
        for (int64_t d = 0; d < D; d++) {
          /* Storage: [B, H, L, D], or [B, L, H, D] (3-D x and tokens_outer). */
          int64_t src = (c->x3d || c->tokens_outer) ? ((b * L + l) * H + h) * D + d
                                                    : ((b * H + h) * L + l) * D + d;
          want[((b * H + h) * L + l) * D + d] = x[src];
        }
    }
  ref_rope_tables(c->interleaved, B, H, L, D, half, cr, sr, want);

  attn_ctx *ctx = tu_ctx(c->threads);
  attn_tensor *tx, *ty;
  float *out = c->in_place ? x : y;
  if (c->x3d) {
    int64_t dims[3] = {B, L, H * D};
    tx = tu_wrap(ctx, x, nx, 3, dims, NULL);
    ty = c->in_place ? tx : tu_wrap(ctx, y, nx, 3, dims, NULL);
  } else {
    int64_t dims[4] = {B, H, L, D}, strides[4] = {L * H * D, D, H * D, 1};
    tx = tu_wrap(ctx, x, nx, 4, dims, c->tokens_outer ? strides : NULL);
    ty = c->in_place ? tx : tu_wrap(ctx, y, nx, 4, dims, c->tokens_outer ? strides : NULL);
  }
  attn_tensor *tc, *ts;
  if (c->tables3d) {
    int64_t td[3] = {Bt, L, half};
    tc = tu_wrap(ctx, ct, nt, 3, td, NULL);
    ts = tu_wrap(ctx, st, nt, 3, td, NULL);
  } else {
    int64_t td[2] = {c->P, half};
    tc = tu_wrap(ctx, ct, nt, 2, td, NULL);
    ts = tu_wrap(ctx, st, nt, 2, td, NULL);
  }
  attn_rope_cached_params p;
  attn_rope_cached_params_init(&p);
  p.style = c->interleaved ? ATTN_ROPE_INTERLEAVED : ATTN_ROPE_HALF_SPLIT;
  p.num_heads = c->x3d ? (int32_t)H : 0;
  p.position_ids = c->use_pos ? pos : NULL;
  attn_status s = attn_rope_cached(ctx, tx, ty, tc, ts, &p);
  if (s != ATTN_OK)
    fail_msg("attn_rope_cached: %s: %s", attn_status_string(s), attn_ctx_last_error(ctx));
  /* Compare in the reference's [B, H, L, D] order. */
  float *got = xmalloc(nx * sizeof *got);
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t l = 0; l < L; l++)
        for (int64_t d = 0; d < D; d++) {
          int64_t src = (c->x3d || c->tokens_outer) ? ((b * L + l) * H + h) * D + d
                                                    : ((b * H + h) * L + l) * D + d;
          got[((b * H + h) * L + l) * D + d] = out[src];
        }
  double err = ref_max_rel_err(got, want, nx, 1.0);
  if (!(err <= 1e-6))
    fail_msg("B %lld H %lld L %lld D %lld half %lld inter %d x3d %d outer %d t3d %d shared %d "
             "pos %d inplace %d threads %d: max error %.3g",
             (long long)B, (long long)H, (long long)L, (long long)D, (long long)half,
             c->interleaved, c->x3d, c->tokens_outer, c->tables3d, c->shared_batch, c->use_pos,
             c->in_place, (int)c->threads, err);
  attn_ctx_destroy(ctx);
  free(x), free(y), free(ct), free(st), free(want), free(cr), free(sr), free(pos), free(got);
}

static void cached_vs_reference(void **state) {
  (void)state;
  /* B, H, L, D, half, P */
  const int64_t shapes[][6] = {{1, 1, 1, 2, 1, 1},   {2, 3, 5, 8, 4, 9},   {2, 2, 7, 10, 3, 16},
                               {3, 4, 6, 64, 16, 50}, {1, 2, 33, 13, 6, 40}, {2, 1, 4, 6, 1, 4}};
  uint64_t seed = 100;
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
    for (int v = 0; v < 16; v++) {
      cached_case c;
      memset(&c, 0, sizeof c);
      c.B = shapes[s][0], c.H = shapes[s][1], c.L = shapes[s][2], c.D = shapes[s][3];
      c.half = shapes[s][4], c.P = shapes[s][5];
      c.interleaved = v & 1;
      c.x3d = (v >> 1) & 1;
      c.tokens_outer = !c.x3d && ((v >> 2) & 1);
      c.in_place = (v >> 3) & 1;
      int table_kind = (v >> 2) % 3; /* 0: 2-D + ids, 1: 2-D by token, 2: 3-D */
      c.tables3d = table_kind == 2;
      c.shared_batch = c.tables3d && (v & 8);
      c.use_pos = table_kind == 0;
      if (table_kind == 1 && c.L > c.P)
        c.use_pos = 1;
      c.threads = v % 5 == 4 ? 3 : 1;
      run_cached_case(&c, seed++);
    }
}

/* Tables from attn_rope_cache_fill (no scaling) and explicit positions give
 * what attn_rope computes from theta: the two paths agree. */
static void cached_matches_rope(void **state) {
  (void)state;
  enum { B = 2, H = 3, L = 11, D = 12, R = 8, P = 64 };
  static float x[B * H * L * D], y[B * H * L * D], c[P * R / 2], s[P * R / 2];
  int64_t pos[B * L];
  tu_rng rng = {5};
  tu_fill(&rng, x, B * H * L * D, -1, 1);
  memcpy(y, x, sizeof x);
  for (int i = 0; i < B * L; i++)
    pos[i] = (int64_t)(tu_next(&rng) % P);
  attn_ctx *ctx = tu_ctx(1);
  int64_t xd[4] = {B, H, L, D}, td[2] = {P, R / 2};
  attn_tensor *tx = tu_wrap(ctx, x, sizeof x / 4, 4, xd, NULL);
  attn_tensor *ty = tu_wrap(ctx, y, sizeof y / 4, 4, xd, NULL);
  attn_tensor *tc = tu_wrap(ctx, c, sizeof c / 4, 2, td, NULL);
  attn_tensor *ts = tu_wrap(ctx, s, sizeof s / 4, 2, td, NULL);
  for (int style = 0; style <= 1; style++) {
    attn_rope_cache_params cp;
    attn_rope_cache_params_init(&cp);
    cp.theta = 500.0;
    double af = 0;
    assert_ok(attn_rope_cache_fill(ctx, tc, ts, &cp, &af));
    assert_true(af == 1.0);
    attn_rope_cached_params rp;
    attn_rope_cached_params_init(&rp);
    rp.style = style;
    rp.position_ids = pos;
    assert_ok(attn_rope_cached(ctx, tx, tx, tc, ts, &rp));
    attn_rope_params op;
    attn_rope_params_init(&op);
    op.style = style;
    op.rotary_dim = R;
    op.theta = 500.0;
    op.positions = pos;
    assert_ok(attn_rope(ctx, ty, &op));
    for (int i = 0; i < B * H * L * D; i++)
      assert_close(x[i], y[i], 1e-6, 1e-6);
  }
  attn_ctx_destroy(ctx);
}

/* ================= the scalings, written from their formulas ================= */

_Static_assert((int)REF_ROPE_LINEAR == (int)ATTN_ROPE_SCALING_LINEAR &&
                   (int)REF_ROPE_YARN == (int)ATTN_ROPE_SCALING_YARN &&
                   (int)REF_ROPE_LONGROPE == (int)ATTN_ROPE_SCALING_LONGROPE,
               "the reference numbers its scalings as attn_rope_scaling");

static void check_scaling(attn_ctx *ctx, const ref_rope_scaling *c, int64_t P, int64_t half,
                          int apply) {
  float *ct = xmalloc((size_t)(P * half) * sizeof *ct), *st = xmalloc((size_t)(P * half) * sizeof *st);
  double *w = xmalloc((size_t)half * sizeof *w);
  int64_t td[2] = {P, half};
  attn_tensor *tc = tu_wrap(ctx, ct, (size_t)(P * half), 2, td, NULL);
  attn_tensor *ts = tu_wrap(ctx, st, (size_t)(P * half), 2, td, NULL);
  attn_rope_cache_params p;
  attn_rope_cache_params_init(&p);
  p.scaling = c->scaling;
  p.apply_attention_factor = apply;
  p.theta = c->theta;
  p.factor = c->scaling ? c->factor : 0;
  if (c->scaling == ATTN_ROPE_SCALING_DYNAMIC_NTK || c->scaling >= ATTN_ROPE_SCALING_YARN)
    p.original_max_position = c->p0;
  if (c->scaling == ATTN_ROPE_SCALING_DYNAMIC_NTK || c->scaling == ATTN_ROPE_SCALING_LONGROPE)
    p.seq_len = c->seq_len == P ? 0 : c->seq_len; /* 0 = P, the default */
  if (c->scaling == ATTN_ROPE_SCALING_YARN) {
    p.beta_fast = c->beta_fast == 32 ? 0 : c->beta_fast;
    p.beta_slow = c->beta_slow == 1 ? 0 : c->beta_slow;
    p.mscale = c->mscale, p.mscale_all_dim = c->mscale_all_dim;
    p.yarn_no_truncate = !c->truncate;
  }
  if (c->scaling == ATTN_ROPE_SCALING_YARN || c->scaling == ATTN_ROPE_SCALING_LONGROPE)
    p.attention_factor = c->attention_factor;
  if (c->scaling == ATTN_ROPE_SCALING_LLAMA3)
    p.low_freq_factor = c->low_ff, p.high_freq_factor = c->high_ff;
  if (c->scaling == ATTN_ROPE_SCALING_LONGROPE)
    p.short_factors = c->short_f, p.long_factors = c->long_f;
  double af = -1;
  attn_status s = attn_rope_cache_fill(ctx, tc, ts, &p, &af);
  if (s != ATTN_OK)
    fail_msg("scaling %d: %s: %s", (int)c->scaling, attn_status_string(s),
             attn_ctx_last_error(ctx));
  double want_af = ref_rope_scaled_freqs(c, half, w);
  if (!(fabs(af - want_af) <= 1e-14 * want_af))
    fail_msg("scaling %d: attention factor %.17g, expected %.17g", (int)c->scaling, af, want_af);
  double a = apply ? want_af : 1.0, worst = 0;
  for (int64_t pos = 0; pos < P; pos++)
    for (int64_t i = 0; i < half; i++) {
      /* float32 rounding of the result, plus the angle's double rounding */
      double ang = (double)pos * w[i];
      double ec = fabs(ct[pos * half + i] - a * cos(ang)), es = fabs(st[pos * half + i] - a * sin(ang));
      double e = ec > es ? ec : es;
      worst = e > worst ? e : worst;
    }
  if (!(worst <= 1.2e-7 * (a > 1 ? a : 1)))
    fail_msg("scaling %d P %lld half %lld: max abs error %.3g", (int)c->scaling, (long long)P,
             (long long)half, worst);
  free(ct), free(st), free(w);
}

static void scalings_vs_formulas(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(2);
  static double sf[64], lf[64];
  tu_rng rng = {9};
  for (int i = 0; i < 64; i++) {
    sf[i] = 1.0 + (double)(tu_next(&rng) % 1000) / 1000.0;
    lf[i] = 1.0 + (double)(tu_next(&rng) % 30000) / 1000.0;
  }
  const int64_t halves[] = {2, 3, 32, 64};
  for (size_t hi = 0; hi < sizeof halves / sizeof halves[0]; hi++) {
    int64_t half = halves[hi], P = 300;
    ref_rope_scaling base = {0};
    base.theta = 10000, base.p0 = 64, base.seq_len = P, base.beta_fast = 32, base.beta_slow = 1;
    base.low_ff = 1, base.high_ff = 4, base.short_f = sf, base.long_f = lf, base.truncate = 1;
    base.factor = 4;
    for (int32_t sc = 0; sc <= ATTN_ROPE_SCALING_LONGROPE; sc++) {
      ref_rope_scaling c = base;
      c.scaling = sc;
      check_scaling(ctx, &c, P, half, 0);
      check_scaling(ctx, &c, P, half, 1);
    }
    /* Published configurations and the branches each formula has. */
    ref_rope_scaling c = base;
    c.scaling = ATTN_ROPE_SCALING_LLAMA3; /* Llama 3.1: theta 5e5, s 8, 1 / 4, p0 8192 */
    c.theta = 500000, c.factor = 8, c.p0 = 8192;
    check_scaling(ctx, &c, 50, half, 0);
    c = base;
    c.scaling = ATTN_ROPE_SCALING_YARN; /* DeepSeek-V3 style: mscale = mscale_all_dim */
    c.theta = 10000, c.factor = 40, c.p0 = 4096, c.mscale = 1, c.mscale_all_dim = 1;
    check_scaling(ctx, &c, 50, half, 1);
    c.mscale = 0.707, c.mscale_all_dim = 1;
    check_scaling(ctx, &c, 50, half, 1);
    c.mscale = c.mscale_all_dim = 0, c.attention_factor = 1.25, c.beta_fast = 16,
    c.beta_slow = 2, c.truncate = 0;
    check_scaling(ctx, &c, 50, half, 1);
    c.factor = 0.5, c.attention_factor = 0; /* s <= 1: attention factor 1 */
    check_scaling(ctx, &c, 50, half, 1);
    c = base;
    c.scaling = ATTN_ROPE_SCALING_DYNAMIC_NTK; /* below p0: the default frequencies */
    c.seq_len = 10;
    check_scaling(ctx, &c, P, half, 0);
    c.seq_len = 1000;
    check_scaling(ctx, &c, P, half, 0);
    c = base;
    c.scaling = ATTN_ROPE_SCALING_LONGROPE; /* short factors below p0, given factor */
    c.seq_len = 32, c.factor = 2.5, c.attention_factor = 0;
    check_scaling(ctx, &c, P, half, 1);
    c.p0 = 1000, c.seq_len = P; /* P <= p0: short factors; factor defaults to P / p0 < 1 */
    c.factor = 300.0 / 1000.0;
    check_scaling(ctx, &c, P, half, 1);
  }
  attn_ctx_destroy(ctx);
}

/* A hand-worked Llama-3 table: r = 4, theta = 100, p0 = 64, s = 2, factors
 * 1 / 4. w = {1, 0.1}; wavelengths 2 pi (< 16: kept) and 20 pi = 62.8 (between
 * 16 and 64: g = (64 / 62.832 - 1) / 3 = 0.0061973, w = 0.1 (1 - g) / 2 + 0.1 g). */
static void llama3_worked_example(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  float c[2 * 2], s[2 * 2];
  int64_t td[2] = {2, 2};
  attn_tensor *tc = tu_wrap(ctx, c, 4, 2, td, NULL), *ts = tu_wrap(ctx, s, 4, 2, td, NULL);
  attn_rope_cache_params p;
  attn_rope_cache_params_init(&p);
  p.scaling = ATTN_ROPE_SCALING_LLAMA3;
  p.theta = 100, p.factor = 2, p.original_max_position = 64;
  assert_ok(attn_rope_cache_fill(ctx, tc, ts, &p, NULL));
  double g = (64.0 / (20.0 * 3.14159265358979323846) - 1.0) / 3.0;
  double w1 = 0.1 * (1 - g) / 2 + 0.1 * g;
  assert_close(c[0], 1.0, 0, 0);
  assert_close(s[1], 0.0, 0, 0);
  assert_close(c[2], cos(1.0), 1e-7, 0);
  assert_close(s[3], sin(w1), 1e-7, 0);
  assert_close(w1, 0.0503099, 1e-6, 0); /* by hand: 0.05 + 0.05 * 0.0061973 */
  attn_ctx_destroy(ctx);
}

/* LongRoPE with P0 = 1: sqrt(1 + ln s / ln P0) has no finite value for s > 1
 * (transformers divides by zero), so the factor is refused where it is used:
 * applied, or returned. Tables that do not use it were refused too. */
static void longrope_p0_one(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  enum { P = 4, HALF = 2 };
  float c[P * HALF], s[P * HALF];
  for (int i = 0; i < P * HALF; i++)
    c[i] = s[i] = 9.0f;
  int64_t td[2] = {P, HALF};
  attn_tensor *tc = tu_wrap(ctx, c, P * HALF, 2, td, NULL), *ts = tu_wrap(ctx, s, P * HALF, 2, td, NULL);
  double sf[HALF] = {1.5, 2}, lf[HALF] = {3, 5}, af = -1;
  attn_rope_cache_params p;
  attn_rope_cache_params_init(&p);
  p.scaling = ATTN_ROPE_SCALING_LONGROPE, p.original_max_position = 1;
  p.short_factors = sf, p.long_factors = lf; /* s = P / P0 = 4 */
  assert_status(attn_rope_cache_fill(ctx, tc, ts, &p, &af), ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "P0 >= 2");
  p.apply_attention_factor = 1;
  assert_status(attn_rope_cache_fill(ctx, tc, ts, &p, NULL), ATTN_ERR_INVALID_ARG);
  assert_true(af == -1);
  for (int i = 0; i < P * HALF; i++)
    assert_true(c[i] == 9.0f && s[i] == 9.0f);
  p.apply_attention_factor = 0; /* plain tables: w_i / long_factors_i (seq_len 4 > P0) */
  assert_ok(attn_rope_cache_fill(ctx, tc, ts, &p, NULL));
  for (int pos = 0; pos < P; pos++)
    for (int i = 0; i < HALF; i++) {
      double w = pow(10000.0, -(double)(2 * i) / (2.0 * HALF)) / lf[i];
      assert_close(c[pos * HALF + i], cos(pos * w), 1e-7, 1e-7);
      assert_close(s[pos * HALF + i], sin(pos * w), 1e-7, 1e-7);
    }
  p.attention_factor = 1.5, p.apply_attention_factor = 1; /* given: used as it is */
  assert_ok(attn_rope_cache_fill(ctx, tc, ts, &p, &af));
  assert_true(af == 1.5);
  /* An empty table: the default s = P / P0 is 0, so the factor is 1 (was
   * refused as "factor = 0"). */
  int64_t none[2] = {0, HALF};
  attn_tensor *ec = tu_wrap(ctx, c, 0, 2, none, NULL), *es = tu_wrap(ctx, s, 0, 2, none, NULL);
  p.attention_factor = 0, p.original_max_position = 16;
  assert_ok(attn_rope_cache_fill(ctx, ec, es, &p, &af));
  assert_true(af == 1.0);
  p.original_max_position = 1;
  /* A layer: only an applied factor is needed. */
  attn_rope_params rope;
  attn_rope_params_init(&rope);
  attn_rope_cache_params sp = p;
  sp.attention_factor = 0, sp.apply_attention_factor = 0, sp.seq_len = 8;
  attn_mha_decoder_params lp;
  attn_mha_decoder_params_init(&lp);
  lp.embed_dim = 8, lp.num_heads = 2, lp.head_dim = 4, lp.rope = &rope, lp.rope_scaling = &sp;
  attn_mha *layer = NULL;
  assert_ok(attn_mha_create_decoder(ctx, &lp, &layer));
  attn_mha_free(ctx, layer);
  sp.apply_attention_factor = 1;
  layer = NULL;
  assert_status(attn_mha_create_decoder(ctx, &lp, &layer), ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "P0 >= 2");
  assert_true(layer == NULL);
  attn_ctx_destroy(ctx);
}

static void cache_fill_bad_input(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  float c[8 * 4], s[8 * 4];
  for (int i = 0; i < 32; i++)
    c[i] = s[i] = 9.0f;
  int64_t td[2] = {8, 4}, td1[2] = {8, 1}, td3[2] = {8, 3};
  attn_tensor *tc = tu_wrap(ctx, c, 32, 2, td, NULL), *ts = tu_wrap(ctx, s, 32, 2, td, NULL);
  attn_tensor *ts3 = tu_wrap(ctx, s, 32, 2, td3, NULL);
  attn_tensor *tc1 = tu_wrap(ctx, c, 32, 2, td1, NULL), *ts1 = tu_wrap(ctx, s, 32, 2, td1, NULL);
  attn_tensor *talias = tu_wrap(ctx, c, 32, 2, td, NULL);
  attn_rope_cache_params p;
  attn_rope_cache_params_init(&p);
  assert_status(attn_rope_cache_fill(NULL, tc, ts, &p, NULL), ATTN_ERR_NULL_ARG);
  assert_status(attn_rope_cache_fill(ctx, tc, NULL, &p, NULL), ATTN_ERR_NULL_ARG);
  assert_status(attn_rope_cache_fill(ctx, tc, ts3, &p, NULL), ATTN_ERR_SHAPE);
  assert_status(attn_rope_cache_fill(ctx, tc, talias, &p, NULL), ATTN_ERR_ALIASING);
  p.scaling = 7;
  assert_status(attn_rope_cache_fill(ctx, tc, ts, &p, NULL), ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "params.scaling = 7");
  p.scaling = ATTN_ROPE_SCALING_LINEAR;
  assert_status(attn_rope_cache_fill(ctx, tc, ts, &p, NULL), ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "params.factor = 0");
  p.factor = 2, p.beta_fast = 8; /* a YaRN field on linear scaling */
  assert_status(attn_rope_cache_fill(ctx, tc, ts, &p, NULL), ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "params.beta_fast is set");
  p.beta_fast = 0;
  p.factor = NAN;
  assert_status(attn_rope_cache_fill(ctx, tc, ts, &p, NULL), ATTN_ERR_INVALID_ARG);
  p.factor = 2;
  p.theta = 1;
  assert_status(attn_rope_cache_fill(ctx, tc, ts, &p, NULL), ATTN_ERR_INVALID_ARG);
  p.theta = 0;
  p.scaling = ATTN_ROPE_SCALING_YARN;
  assert_status(attn_rope_cache_fill(ctx, tc, ts, &p, NULL), ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "original_max_position = 0");
  p.original_max_position = 16, p.beta_slow = -1;
  assert_status(attn_rope_cache_fill(ctx, tc, ts, &p, NULL), ATTN_ERR_INVALID_ARG);
  p.beta_slow = 0, p.attention_factor = -2;
  assert_status(attn_rope_cache_fill(ctx, tc, ts, &p, NULL), ATTN_ERR_INVALID_ARG);
  p.attention_factor = 0;
  p.scaling = ATTN_ROPE_SCALING_LLAMA3;
  p.low_freq_factor = 4, p.high_freq_factor = 4;
  assert_status(attn_rope_cache_fill(ctx, tc, ts, &p, NULL), ATTN_ERR_INVALID_ARG);
  p.low_freq_factor = p.high_freq_factor = 0;
  p.scaling = ATTN_ROPE_SCALING_LONGROPE;
  assert_status(attn_rope_cache_fill(ctx, tc, ts, &p, NULL), ATTN_ERR_NULL_ARG);
  double f[4] = {1, 2, 0, 1};
  p.short_factors = p.long_factors = f;
  assert_status(attn_rope_cache_fill(ctx, tc, ts, &p, NULL), ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "short_factors[2] = 0");
  attn_rope_cache_params_init(&p);
  p.scaling = ATTN_ROPE_SCALING_NTK, p.factor = 2;
  assert_status(attn_rope_cache_fill(ctx, tc1, ts1, &p, NULL), ATTN_ERR_SHAPE);
  /* Finite but extreme parameters whose tables would hold Inf or NaN. */
  attn_rope_cache_params_init(&p);
  p.scaling = ATTN_ROPE_SCALING_LINEAR, p.factor = 1e-310; /* w / 1e-310 = Inf at pair 0 */
  assert_status(attn_rope_cache_fill(ctx, tc, ts, &p, NULL), ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "not finite");
  p.factor = 1e-308; /* frequencies finite, the angle 7 * 1e308 is not */
  assert_status(attn_rope_cache_fill(ctx, tc, ts, &p, NULL), ATTN_ERR_INVALID_ARG);
  attn_rope_cache_params_init(&p);
  p.scaling = ATTN_ROPE_SCALING_YARN, p.original_max_position = 16, p.factor = 4;
  p.beta_fast = 1e-320; /* its ramp bound is +Inf, the ramp NaN */
  assert_status(attn_rope_cache_fill(ctx, tc, ts, &p, NULL), ATTN_ERR_INVALID_ARG);
  p.beta_fast = 0, p.attention_factor = 1e300, p.apply_attention_factor = 1;
  double af = -1;
  assert_status(attn_rope_cache_fill(ctx, tc, ts, &p, &af), ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "attention factor");
  assert_true(af == -1);
  p.attention_factor = 1e-300;
  assert_status(attn_rope_cache_fill(ctx, tc, ts, &p, NULL), ATTN_ERR_INVALID_ARG);
  p.apply_attention_factor = 0; /* only returned: any positive double is fine */
  assert_status(attn_rope_cache_fill(ctx, tc1, ts1, &p, &af), ATTN_OK);
  assert_true(af == 1e-300);
  /* Empty tables claiming huge pair counts give just the attention factor,
   * at once (the pool fuzz target's find: 2^62 pairs wrapped the frequency
   * buffer to 0 bytes, 2^61 + 1 to 8; 2^31 took 16 GiB and 2^31 pow calls). */
  attn_rope_cache_params_init(&p);
  p.scaling = ATTN_ROPE_SCALING_YARN, p.original_max_position = 16, p.factor = 4;
  for (int i = 0; i < 3; i++) {
    static const int64_t pairs[3] = {(int64_t)1 << 62, ((int64_t)1 << 61) + 1, (int64_t)1 << 31};
    int64_t huge[2] = {0, pairs[i]};
    attn_tensor *hc = tu_wrap(ctx, c, 0, 2, huge, NULL), *hs = tu_wrap(ctx, s, 0, 2, huge, NULL);
    af = -1;
    assert_status(attn_rope_cache_fill(ctx, hc, hs, &p, &af), ATTN_OK);
    assert_close(af, 0.1 * log(4.0) + 1.0, 1e-15, 0); /* YaRN's mscale, m(4, 1) */
    attn_tensor_free(ctx, hc);
    attn_tensor_free(ctx, hs);
  }
  for (int i = 0; i < 8; i++)
    c[i] = s[i] = 9.0f; /* tc1 / ts1 were written */
  for (int i = 0; i < 32; i++)
    assert_true(c[i] == 9.0f && s[i] == 9.0f);
  attn_ctx_destroy(ctx);
}

static void cached_bad_input(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  enum { B = 2, H = 2, L = 3, D = 4 };
  float x[B * H * L * D], y[B * H * L * D], c[5 * 2], s[5 * 2];
  for (int i = 0; i < B * H * L * D; i++)
    x[i] = y[i] = 3.0f;
  memset(c, 0, sizeof c), memset(s, 0, sizeof s);
  int64_t xd[4] = {B, H, L, D}, x3[3] = {B, L, H * D}, td[2] = {5, 2}, wide[2] = {1, 3};
  int64_t t3[3] = {B, L + 1, 2};
  attn_tensor *tx = tu_wrap(ctx, x, sizeof x / 4, 4, xd, NULL);
  attn_tensor *ty = tu_wrap(ctx, y, sizeof y / 4, 4, xd, NULL);
  attn_tensor *tx3 = tu_wrap(ctx, x, sizeof x / 4, 3, x3, NULL);
  attn_tensor *ty3 = tu_wrap(ctx, y, sizeof y / 4, 3, x3, NULL);
  attn_tensor *tc = tu_wrap(ctx, c, 10, 2, td, NULL), *ts = tu_wrap(ctx, s, 10, 2, td, NULL);
  attn_tensor *tw = tu_wrap(ctx, c, 10, 2, wide, NULL), *tws = tu_wrap(ctx, s, 10, 2, wide, NULL);
  attn_tensor *tc3 = tu_wrap(ctx, c, 10, 3, (int64_t[]){1, 2, 2}, NULL);
  attn_tensor *tbad3 = NULL;
  float big[B * (L + 1) * 2];
  tbad3 = tu_wrap(ctx, big, sizeof big / 4, 3, t3, NULL);
  attn_rope_cached_params p;
  attn_rope_cached_params_init(&p);
  assert_status(attn_rope_cached(ctx, tx, ty, tc, NULL, &p), ATTN_ERR_NULL_ARG);
  assert_status(attn_rope_cached(ctx, tx, ty, tc, tw, &p), ATTN_ERR_SHAPE);
  assert_status(attn_rope_cached(ctx, tx, ty, tw, tws, &p), ATTN_ERR_SHAPE);
  assert_error_mentions(ctx, "rotary dim of 6");
  p.style = 2;
  assert_status(attn_rope_cached(ctx, tx, ty, tc, ts, &p), ATTN_ERR_INVALID_ARG);
  p.style = 0;
  assert_status(attn_rope_cached(ctx, tx3, ty3, tc, ts, &p), ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "num_heads = 0");
  p.num_heads = 3;
  assert_status(attn_rope_cached(ctx, tx3, ty3, tc, ts, &p), ATTN_ERR_SHAPE);
  p.num_heads = 2;
  assert_status(attn_rope_cached(ctx, tx, ty, tc, ts, &p), ATTN_ERR_INVALID_ARG);
  p.num_heads = 0;
  int64_t pos[B * L] = {0, 1, 2, 3, 4, 5};
  p.position_ids = pos;
  assert_status(attn_rope_cached(ctx, tx, ty, tc, ts, &p), ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "position_ids[5] (batch 1, token 2) = 5");
  pos[5] = -1;
  assert_status(attn_rope_cached(ctx, tx, ty, tc, ts, &p), ATTN_ERR_INVALID_ARG);
  pos[5] = 0;
  assert_status(attn_rope_cached(ctx, tx, ty, tc3, tc3, &p), ATTN_ERR_INVALID_ARG);
  p.position_ids = NULL;
  assert_status(attn_rope_cached(ctx, tx, ty, tbad3, tbad3, &p), ATTN_ERR_SHAPE);
  attn_tensor *tover = tu_wrap(ctx, x + 1, sizeof x / 4 - 1, 4, (int64_t[]){B, H, L, D - 1},
                               (int64_t[]){H * L * D, L * D, D, 1});
  assert_status(attn_rope_cached(ctx, tx, tover, tc, ts, &p), ATTN_ERR_SHAPE);
  attn_tensor *tyc = tu_wrap(ctx, c, 10, 4, (int64_t[]){1, 1, 1, 4}, NULL);
  attn_tensor *txs = tu_wrap(ctx, x, sizeof x / 4, 4, (int64_t[]){1, 1, 1, 4}, NULL);
  assert_status(attn_rope_cached(ctx, txs, tyc, tc, ts, &p), ATTN_ERR_ALIASING);
  for (int i = 0; i < B * H * L * D; i++)
    assert_true(x[i] == 3.0f && y[i] == 3.0f);
  attn_ctx_destroy(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(cached_vs_reference),  cmocka_unit_test(cached_matches_rope),
      cmocka_unit_test(scalings_vs_formulas), cmocka_unit_test(llama3_worked_example),
      cmocka_unit_test(cache_fill_bad_input),
      cmocka_unit_test(longrope_p0_one), cmocka_unit_test(cached_bad_input),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
