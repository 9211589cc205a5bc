/* Pooling over the sequence axis (attn_pool) and learned-query attention
 * pooling (attn_pool_attention): against the float64 references, by
 * properties, and with bad input. */
#include "test_util.h"

#include "ref_backward.h"
#include "ref_common.h"
#include "ref_pool.h"
#include "ref_sdpa.h"

static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p)
    fail_msg("out of memory");
  return p;
}

/* One attn_pool case: x [B, H, L, D] stored as [B, L, H, D] when tokens_outer
 * (a strided view), or x [B, L, D] when four_d is 0 (H = 1). */
typedef struct {
  int32_t mode;
  int64_t B, H, L, D;
  int four_d, tokens_outer;
  int use_lengths, use_keep, keep_2d, scores_2d;
  int32_t threads;
} pool_case;

/* The backward of a run_pool_case forward (same tensors and params):
 * dx in x's layout and dscores in scores' shape against ref_pool_backward,
 * whose per-position dscores are summed here over the broadcast H axis. */
static void pool_backward_check(const pool_case *c, attn_ctx *ctx, tu_rng *rng,
                                attn_tensor *tx, attn_tensor *tscores,
                                const attn_pool_params *p, const double *xd,
                                const uint8_t *keep_all, const double *sd) {
  int64_t B = c->B, H = c->H, L = c->L, D = c->D;
  size_t nx = (size_t)(B * H * L * D), nt = (size_t)(B * H * L), no = (size_t)(B * H * D);
  float *g = xmalloc(no * sizeof *g), *dx = xmalloc(nx * sizeof *dx);
  float *ds = xmalloc(nt * sizeof *ds);
  double *gd = xmalloc(no * sizeof *gd), *want_dx = xmalloc(nx * sizeof *want_dx);
  double *want_ds = xmalloc(nt * sizeof *want_ds);
  double *want_ds2 = xmalloc(nt * sizeof *want_ds2);
  float *got_dxf = xmalloc(nx * sizeof *got_dxf);
  tu_fill(rng, g, no, -2, 2);
  for (size_t i = 0; i < no; i++)
    gd[i] = g[i];
  for (size_t i = 0; i < nx; i++)
    dx[i] = 99.0f; /* every element must be written */
  ref_pool_backward(c->mode, B, H, L, D, xd, keep_all, sd, gd, want_dx, want_ds);
  attn_tensor *tg, *tdx, *tds = NULL;
  int64_t dims[4] = {B, H, L, D}, st[4] = {L * H * D, D, H * D, 1};
  if (c->four_d) {
    int64_t od[3] = {B, H, D};
    tg = tu_wrap(ctx, g, no, 3, od, NULL);
    tdx = tu_wrap(ctx, dx, nx, 4, dims, c->tokens_outer ? st : NULL);
  } else {
    int64_t od[2] = {B, D}, xd3[3] = {B, L, D};
    tg = tu_wrap(ctx, g, no, 2, od, NULL);
    tdx = tu_wrap(ctx, dx, nx, 3, xd3, NULL);
  }
  int two = c->scores_2d || !c->four_d;
  if (tscores) {
    int64_t sd3[3] = {B, H, L}, sd2[2] = {B, L};
    tds = tu_wrap(ctx, ds, nt, two ? 2 : 3, two ? sd2 : sd3, NULL);
  }
  attn_status status = attn_pool_backward(ctx, tx, tg, tdx, tds, p);
  if (status != ATTN_OK)
    fail_msg("attn_pool_backward: %s", attn_ctx_last_error(ctx));
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t l = 0; l < L; l++)
        for (int64_t d = 0; d < D; d++) {
          int64_t t = ((b * H + h) * L + l) * D + d;
          got_dxf[t] = dx[c->tokens_outer ? ((b * L + l) * H + h) * D + d : t];
        }
  double err = ref_max_rel_err(got_dxf, want_dx, nx, 1.0), err_s = 0;
  if (tscores) {
    size_t ns = two ? (size_t)(B * L) : nt;
    for (size_t i = 0; i < ns; i++)
      want_ds2[i] = 0;
    for (int64_t b = 0; b < B; b++)
      for (int64_t h = 0; h < H; h++)
        for (int64_t l = 0; l < L; l++)
          want_ds2[two ? b * L + l : (b * H + h) * L + l] += want_ds[(b * H + h) * L + l];
    err_s = ref_max_rel_err(ds, want_ds2, ns, 1.0);
  }
  if (!(err <= 2e-6) || !(err_s <= 1e-5))
    fail_msg("backward: mode %d B %lld H %lld L %lld D %lld 4d %d outer %d len %d keep %d "
             "scores2d %d: dx error %.3g, dscores error %.3g",
             (int)c->mode, (long long)B, (long long)H, (long long)L, (long long)D, c->four_d,
             c->tokens_outer, c->use_lengths, c->use_keep, c->scores_2d, err, err_s);
  free(g), free(dx), free(ds), free(gd), free(want_dx), free(want_ds);
  free(want_ds2), free(got_dxf);
}

static void run_pool_case(const pool_case *c, uint64_t seed) {
  tu_rng rng = {seed};
  int64_t B = c->B, H = c->H, L = c->L, D = c->D;
  size_t nx = (size_t)(B * H * L * D), nt = (size_t)(B * H * L), no = (size_t)(B * H * D);
  float *x = xmalloc(nx * sizeof *x), *scores = xmalloc(nt * sizeof *scores);
  float *out = xmalloc(no * sizeof *out);
  uint8_t *keep = xmalloc(nt), *keep_all = xmalloc(nt);
  double *xd = xmalloc(nx * sizeof *xd), *sd = xmalloc(nt * sizeof *sd);
  double *want = xmalloc(no * sizeof *want);
  int64_t *lengths = xmalloc((size_t)B * sizeof *lengths);
  tu_fill(&rng, x, nx, -3, 3);
  tu_fill(&rng, scores, nt, -4, 4);
  for (size_t i = 0; i < nt; i++)
    keep[i] = (tu_next(&rng) % 4) != 0;
  for (int64_t b = 0; b < B; b++)
    lengths[b] = (int64_t)(tu_next(&rng) % (uint64_t)(L + 1));
  if (B > 1)
    lengths[0] = L;

  /* The reference reads x as [B, H, L, D] and keep/scores as [B, H, L]. */
  int64_t keep_hs = c->keep_2d ? 0 : L, score_hs = c->scores_2d ? 0 : L;
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t l = 0; l < L; l++) {
        size_t t = (size_t)((b * H + h) * L + l);
        int64_t kb = c->keep_2d ? b * L + l : b * H * L + h * keep_hs + l;
        int64_t sb = c->scores_2d ? b * L + l : b * H * L + h * score_hs + l;
        int k = 1;
        if (c->use_keep)
          k = keep[kb];
        if (c->use_lengths && l >= lengths[b])
          k = 0;
        keep_all[t] = (uint8_t)k;
        sd[t] = scores[sb];
        for (int64_t d = 0; d < D; d++) {
          int64_t src = c->tokens_outer ? ((b * L + l) * H + h) * D + d : (int64_t)t * D + d;
          xd[t * (size_t)D + (size_t)d] = x[src];
        }
      }
  ref_pool(c->mode, B, H, L, D, xd, keep_all, sd, want);

  attn_ctx *ctx = tu_ctx(c->threads);
  attn_tensor *tx, *tout, *tkeep = NULL, *tscores = NULL;
  if (c->four_d) {
    int64_t dims[4] = {B, H, L, D};
    int64_t st[4] = {L * H * D, D, H * D, 1};
    tx = tu_wrap(ctx, x, nx, 4, dims, c->tokens_outer ? st : NULL);
    int64_t od[3] = {B, H, D};
    tout = tu_wrap(ctx, out, no, 3, od, NULL);
  } else {
    int64_t dims[3] = {B, L, D};
    tx = tu_wrap(ctx, x, nx, 3, dims, NULL);
    int64_t od[2] = {B, D};
    tout = tu_wrap(ctx, out, no, 2, od, NULL);
  }
  attn_pool_params p;
  attn_pool_params_init(&p);
  p.mode = c->mode;
  if (c->use_lengths)
    p.lengths = lengths;
  if (c->use_keep) {
    int64_t kd3[3] = {B, H, L}, kd2[2] = {B, L};
    int two = c->keep_2d || !c->four_d;
    assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_U8, two ? 2 : 3, two ? kd2 : kd3, NULL, keep, nt,
                               &tkeep));
    p.keep = tkeep;
  }
  if (c->mode == ATTN_POOL_WEIGHTED) {
    int64_t sd3[3] = {B, H, L}, sd2[2] = {B, L};
    int two = c->scores_2d || !c->four_d;
    tscores = tu_wrap(ctx, scores, nt, two ? 2 : 3, two ? sd2 : sd3, NULL);
    p.scores = tscores;
  }
  attn_status st = attn_pool(ctx, tx, tout, &p);
  if (st != ATTN_OK)
    fail_msg("attn_pool: %s: %s", attn_status_string(st), attn_ctx_last_error(ctx));
  double err = ref_max_rel_err(out, want, no, 1.0);
  if (!(err <= 2e-6))
    fail_msg("mode %d B %lld H %lld L %lld D %lld 4d %d outer %d len %d keep %d/%d scores2d %d "
             "threads %d: max error %.3g",
             (int)c->mode, (long long)B, (long long)H, (long long)L, (long long)D, c->four_d,
             c->tokens_outer, c->use_lengths, c->use_keep, c->keep_2d, c->scores_2d,
             (int)c->threads, err);
  pool_backward_check(c, ctx, &rng, tx, tscores, &p, xd, keep_all, sd);
  attn_ctx_destroy(ctx);
  free(x), free(scores), free(out), free(keep), free(keep_all), free(xd), free(sd);
  free(want), free(lengths);
}

static void pool_vs_reference(void **state) {
  (void)state;
  const int64_t shapes[][4] = {{1, 1, 1, 1}, {2, 1, 5, 3},  {3, 2, 7, 13},
                               {2, 3, 1, 8}, {1, 4, 300, 1}, {4, 2, 33, 64}};
  uint64_t seed = 1;
  for (int32_t mode = 0; mode <= 3; mode++)
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
      for (int variant = 0; variant < 6; variant++) {
        pool_case c = {mode, shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3],
                       0, 0, 0, 0, 0, 0, 1};
        c.four_d = c.H > 1 || variant % 2;
        if (!c.four_d)
          c.H = 1;
        c.tokens_outer = c.four_d && variant >= 2;
        c.use_lengths = variant == 1 || variant == 4 || variant == 5;
        c.use_keep = variant >= 3;
        c.keep_2d = variant == 5;
        c.scores_2d = variant == 4;
        c.threads = variant == 5 ? 3 : 1;
        run_pool_case(&c, seed++);
      }
}

/* Properties with exact expectations: mean is sum / count; equal scores give
 * the mean; one dominant score selects its token; the threads change nothing. */
static void pool_properties(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1), *ctx4 = tu_ctx(4);
  enum { B = 3, L = 40, D = 17 };
  static float x[B * L * D], o_sum[B * D], o_mean[B * D], o_w[B * D], o_w4[B * D];
  static float sc[B * L];
  tu_rng rng = {42};
  tu_fill(&rng, x, B * L * D, -1, 1);
  int64_t xd[3] = {B, L, D}, od[2] = {B, D}, sdims[2] = {B, L};
  int64_t lengths[B] = {40, 7, 1};
  attn_tensor *tx = tu_wrap(ctx, x, B * L * D, 3, xd, NULL);
  attn_tensor *ts = tu_wrap(ctx, o_sum, B * D, 2, od, NULL);
  attn_tensor *tm = tu_wrap(ctx, o_mean, B * D, 2, od, NULL);
  attn_tensor *tw = tu_wrap(ctx, o_w, B * D, 2, od, NULL);
  attn_tensor *tsc = tu_wrap(ctx, sc, B * L, 2, sdims, NULL);
  attn_pool_params p;
  attn_pool_params_init(&p);
  p.lengths = lengths;
  assert_ok(attn_pool(ctx, tx, ts, &p));
  p.mode = ATTN_POOL_MEAN;
  assert_ok(attn_pool(ctx, tx, tm, &p));
  p.mode = ATTN_POOL_WEIGHTED;
  p.scores = tsc; /* all equal: weights 1/count */
  for (int i = 0; i < B * L; i++)
    sc[i] = 0.25f;
  assert_ok(attn_pool(ctx, tx, tw, &p));
  for (int b = 0; b < B; b++)
    for (int d = 0; d < D; d++) {
      assert_close(o_mean[b * D + d], (double)o_sum[b * D + d] / (double)lengths[b], 1e-6,
                   1e-7);
      assert_close(o_w[b * D + d], o_mean[b * D + d], 1e-6, 1e-7);
    }
  /* A dominant score: the weighted output is that token (others underflow). */
  for (int i = 0; i < B * L; i++)
    sc[i] = -200.0f;
  sc[0 * L + 5] = sc[1 * L + 3] = sc[2 * L + 0] = 200.0f;
  assert_ok(attn_pool(ctx, tx, tw, &p));
  const int pick[B] = {5, 3, 0};
  for (int b = 0; b < B; b++)
    for (int d = 0; d < D; d++)
      assert_true(o_w[b * D + d] == x[(b * L + pick[b]) * D + d]);
  /* Thread count: bit-identical (each sequence is one item, same order). */
  tu_fill(&rng, sc, B * L, -5, 5);
  assert_ok(attn_pool(ctx, tx, tw, &p));
  attn_tensor *tx4 = tu_wrap(ctx4, x, B * L * D, 3, xd, NULL);
  attn_tensor *tw4 = tu_wrap(ctx4, o_w4, B * D, 2, od, NULL);
  attn_tensor *tsc4 = tu_wrap(ctx4, sc, B * L, 2, sdims, NULL);
  p.scores = tsc4;
  assert_ok(attn_pool(ctx4, tx4, tw4, &p));
  assert_memory_equal(o_w, o_w4, sizeof o_w);
  attn_ctx_destroy(ctx);
  attn_ctx_destroy(ctx4);
}

static void pool_bad_input(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  float x[2 * 3 * 4] = {0}, out[2 * 4], sc[6] = {0};
  int64_t xd[3] = {2, 3, 4}, od[2] = {2, 4}, bad_od[2] = {2, 3}, sd[2] = {2, 3};
  attn_tensor *tx = tu_wrap(ctx, x, 24, 3, xd, NULL), *to = tu_wrap(ctx, out, 8, 2, od, NULL);
  attn_tensor *tbad = tu_wrap(ctx, out, 8, 2, bad_od, NULL);
  attn_tensor *tsc = tu_wrap(ctx, sc, 6, 2, sd, NULL);
  attn_tensor *talias = tu_wrap(ctx, x, 8, 2, od, NULL);
  for (int i = 0; i < 8; i++)
    out[i] = 7.0f;
  attn_pool_params p;
  attn_pool_params_init(&p);
  assert_status(attn_pool(NULL, tx, to, &p), ATTN_ERR_NULL_ARG);
  assert_status(attn_pool(ctx, NULL, to, &p), ATTN_ERR_NULL_ARG);
  assert_status(attn_pool(ctx, tx, tbad, &p), ATTN_ERR_SHAPE);
  assert_error_mentions(ctx, "out.shape[1] = 3");
  assert_status(attn_pool(ctx, tx, talias, &p), ATTN_ERR_ALIASING);
  p.mode = 4;
  assert_status(attn_pool(ctx, tx, to, &p), ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "params.mode = 4");
  p.mode = ATTN_POOL_WEIGHTED;
  assert_status(attn_pool(ctx, tx, to, &p), ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "params.scores is NULL");
  p.mode = ATTN_POOL_SUM;
  p.scores = tsc;
  assert_status(attn_pool(ctx, tx, to, &p), ATTN_ERR_INVALID_ARG);
  p.scores = NULL;
  int64_t lengths[2] = {3, 4};
  p.lengths = lengths;
  assert_status(attn_pool(ctx, tx, to, &p), ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "params.lengths[1] = 4");
  lengths[1] = -1;
  assert_status(attn_pool(ctx, tx, to, &p), ATTN_ERR_INVALID_ARG);
  p.lengths = NULL;
  uint8_t keep[8] = {1};
  attn_tensor *tk = NULL;
  int64_t kd[2] = {2, 4};
  assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_U8, 2, kd, NULL, keep, sizeof keep, &tk));
  p.keep = tk;
  assert_status(attn_pool(ctx, tx, to, &p), ATTN_ERR_SHAPE);
  assert_error_mentions(ctx, "params.keep has L = 4");
  p.keep = tsc; /* F32 where U8 is needed */
  assert_status(attn_pool(ctx, tx, to, &p), ATTN_ERR_UNSUPPORTED);
  p.keep = NULL;
  p.reserved_ = 1;
  assert_status(attn_pool(ctx, tx, to, &p), ATTN_ERR_INVALID_ARG);
  for (int i = 0; i < 8; i++)
    assert_true(out[i] == 7.0f); /* nothing written on failure */
  attn_ctx_destroy(ctx);
}

/* Backward properties: scores broadcast over B ([1, L]) get the sum over
 * the batch of the per-sequence gradients; the thread count changes no bit. */
static void pool_backward_properties(void **state) {
  (void)state;
  enum { B = 3, L = 40, D = 17 };
  static float x[B * L * D], sc[B * L], g[B * D], dx1[B * L * D], dx4[B * L * D];
  static float ds1[B * L], ds4[B * L], dsb[L];
  tu_rng rng = {9};
  tu_fill(&rng, x, B * L * D, -1, 1);
  tu_fill(&rng, sc, L, -3, 3);
  for (int b = 1; b < B; b++)
    memcpy(sc + b * L, sc, L * sizeof *sc); /* the same scores for every sequence */
  tu_fill(&rng, g, B * D, -1, 1);
  int64_t xd[3] = {B, L, D}, od[2] = {B, D}, sd[2] = {B, L}, sd1[2] = {1, L};
  attn_ctx *ctx = tu_ctx(1), *ctx4 = tu_ctx(4);
  attn_pool_params p;
  attn_pool_params_init(&p);
  p.mode = ATTN_POOL_WEIGHTED;
  p.scores = tu_wrap(ctx, sc, B * L, 2, sd, NULL);
  assert_ok(attn_pool_backward(ctx, tu_wrap(ctx, x, B * L * D, 3, xd, NULL),
                               tu_wrap(ctx, g, B * D, 2, od, NULL),
                               tu_wrap(ctx, dx1, B * L * D, 3, xd, NULL),
                               tu_wrap(ctx, ds1, B * L, 2, sd, NULL), &p));
  p.scores = tu_wrap(ctx4, sc, B * L, 2, sd, NULL);
  assert_ok(attn_pool_backward(ctx4, tu_wrap(ctx4, x, B * L * D, 3, xd, NULL),
                               tu_wrap(ctx4, g, B * D, 2, od, NULL),
                               tu_wrap(ctx4, dx4, B * L * D, 3, xd, NULL),
                               tu_wrap(ctx4, ds4, B * L, 2, sd, NULL), &p));
  assert_memory_equal(dx1, dx4, sizeof dx1);
  assert_memory_equal(ds1, ds4, sizeof ds1);
  p.scores = tu_wrap(ctx, sc, L, 2, sd1, NULL);
  assert_ok(attn_pool_backward(ctx, tu_wrap(ctx, x, B * L * D, 3, xd, NULL),
                               tu_wrap(ctx, g, B * D, 2, od, NULL),
                               tu_wrap(ctx, dx4, B * L * D, 3, xd, NULL),
                               tu_wrap(ctx, dsb, L, 2, sd1, NULL), &p));
  assert_memory_equal(dx1, dx4, sizeof dx1);
  for (int l = 0; l < L; l++)
    assert_close(dsb[l], (double)ds1[l] + (double)ds1[L + l] + (double)ds1[2 * L + l], 1e-5,
                 1e-6);
  attn_ctx_destroy(ctx);
  attn_ctx_destroy(ctx4);
}

static void pool_backward_bad_input(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  float x[2 * 3 * 4] = {0}, g[2 * 4] = {0}, dx[2 * 3 * 4], sc[6] = {0}, ds[6];
  int64_t xd[3] = {2, 3, 4}, od[2] = {2, 4}, bad_od[2] = {2, 3}, sd[2] = {2, 3};
  attn_tensor *tx = tu_wrap(ctx, x, 24, 3, xd, NULL), *tg = tu_wrap(ctx, g, 8, 2, od, NULL);
  attn_tensor *tdx = tu_wrap(ctx, dx, 24, 3, xd, NULL), *tsc = tu_wrap(ctx, sc, 6, 2, sd, NULL);
  attn_tensor *tds = tu_wrap(ctx, ds, 6, 2, sd, NULL);
  attn_tensor *tgbad = tu_wrap(ctx, g, 8, 2, bad_od, NULL);
  for (int i = 0; i < 24; i++)
    dx[i] = 7.0f;
  for (int i = 0; i < 6; i++)
    ds[i] = 7.0f;
  attn_pool_params p;
  attn_pool_params_init(&p);
  assert_status(attn_pool_backward(NULL, tx, tg, tdx, NULL, &p), ATTN_ERR_NULL_ARG);
  assert_status(attn_pool_backward(ctx, tx, NULL, tdx, NULL, &p), ATTN_ERR_NULL_ARG);
  assert_status(attn_pool_backward(ctx, tx, tg, NULL, NULL, &p), ATTN_ERR_NULL_ARG);
  assert_status(attn_pool_backward(ctx, tx, tgbad, tdx, NULL, &p), ATTN_ERR_SHAPE);
  assert_error_mentions(ctx, "attn_pool_backward: dout.shape[1] = 3");
  assert_status(attn_pool_backward(ctx, tx, tg, tx, NULL, &p), ATTN_ERR_ALIASING);
  assert_status(attn_pool_backward(ctx, tx, tg, tg, NULL, &p), ATTN_ERR_SHAPE);
  assert_status(attn_pool_backward(ctx, tx, tg, tdx, tds, &p), ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "dscores is set but params.scores is NULL");
  p.mode = ATTN_POOL_WEIGHTED;
  p.scores = tsc;
  int64_t bad_sd[2] = {3, 2};
  assert_status(attn_pool_backward(ctx, tx, tg, tdx, tu_wrap(ctx, ds, 6, 2, bad_sd, NULL), &p),
                ATTN_ERR_SHAPE);
  assert_status(attn_pool_backward(ctx, tx, tg, tdx, tsc, &p), ATTN_ERR_ALIASING);
  int64_t lengths[2] = {3, 4};
  p.lengths = lengths;
  assert_status(attn_pool_backward(ctx, tx, tg, tdx, tds, &p), ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "params.lengths[1] = 4");
  for (int i = 0; i < 24; i++)
    assert_true(dx[i] == 7.0f); /* nothing written on failure */
  for (int i = 0; i < 6; i++)
    assert_true(ds[i] == 7.0f);
  attn_ctx_destroy(ctx);
}

/* ---------------------------------------------------------------- attention pooling */

/* The backward of a pool_attention_vs_reference forward (its params and
 * reference arguments a): against ref_sdpa_backward on the same problem,
 * whose per-batch dq (queries broadcast over B) is summed here. */
static void pool_attention_backward_check(attn_ctx *ctx, attn_pool_attention_params *p,
                                          const ref_sdpa_args *a, attn_tensor *tq,
                                          attn_tensor *tk, attn_tensor *tv, attn_tensor *to,
                                          int32_t threads) {
  int64_t B = a->B, HQ = a->Hq, HKV = a->Hkv, M = a->Lq, L = a->Lk, D = a->D, DV = a->Dv;
  size_t nq = (size_t)(HQ * M * D), nk = (size_t)(B * HKV * L * D), nv = (size_t)(B * HKV * L * DV);
  size_t no = (size_t)(B * HQ * M * DV), nl = (size_t)(B * HQ * M);
  float *lse = xmalloc(nl * 4), *g = xmalloc(no * 4), *dq = xmalloc(nq * 4);
  float *dk = xmalloc(nk * 4), *dv = xmalloc(nv * 4);
  double *gd = xmalloc(no * 8), *wq = xmalloc((size_t)B * nq * 8), *wk = xmalloc(nk * 8);
  double *wv = xmalloc(nv * 8), *wqs = xmalloc(nq * 8);
  tu_rng rng = {(uint64_t)(100 + threads)};
  tu_fill(&rng, g, no, -1, 1);
  for (size_t i = 0; i < no; i++)
    gd[i] = g[i];
  int64_t ld[3] = {B, HQ, M}, od[4] = {B, HQ, M, DV}, qd[3] = {HQ, M, D};
  int64_t kd[4] = {B, HKV, L, D}, vd[4] = {B, HKV, L, DV};
  p->lse = tu_wrap(ctx, lse, nl, 3, ld, NULL);
  assert_ok(attn_pool_attention(ctx, tq, tk, tv, to, p));
  attn_status st = attn_pool_attention_backward(
      ctx, tq, tk, tv, to, p->lse, tu_wrap(ctx, g, no, 4, od, NULL), tu_wrap(ctx, dq, nq, 3, qd, NULL),
      tu_wrap(ctx, dk, nk, 4, kd, NULL), tu_wrap(ctx, dv, nv, 4, vd, NULL), p);
  if (st != ATTN_OK)
    fail_msg("attn_pool_attention_backward: %s", attn_ctx_last_error(ctx));
  ref_sdpa_backward(a, gd, wq, wk, wv, NULL, NULL);
  for (size_t i = 0; i < nq; i++) {
    wqs[i] = 0;
    for (int64_t b = 0; b < B; b++)
      wqs[i] += wq[(size_t)b * nq + i];
  }
  double eq = ref_max_rel_err(dq, wqs, nq, 1.0), ek = ref_max_rel_err(dk, wk, nk, 1.0);
  double ev = ref_max_rel_err(dv, wv, nv, 1.0);
  if (!(eq <= 1e-5) || !(ek <= 1e-5) || !(ev <= 1e-5))
    fail_msg("pool_attention_backward (%d threads): dqueries %.3g, dk %.3g, dv %.3g",
             (int)threads, eq, ek, ev);
  /* A bad dqueries shape names the operand; nothing is written. */
  int64_t bad[3] = {HQ, M, D - 1};
  memset(dk, 0x7f, nk * 4);
  assert_status(attn_pool_attention_backward(ctx, tq, tk, tv, to, p->lse,
                                             tu_wrap(ctx, g, no, 4, od, NULL),
                                             tu_wrap(ctx, dq, nq, 3, bad, NULL),
                                             tu_wrap(ctx, dk, nk, 4, kd, NULL),
                                             tu_wrap(ctx, dv, nv, 4, vd, NULL), p),
                ATTN_ERR_SHAPE);
  assert_error_mentions(ctx, "dqueries");
  for (size_t i = 0; i < nk; i++)
    assert_true(((uint32_t *)(void *)dk)[i] == 0x7f7f7f7fu);
  p->lse = NULL;
  free(lse), free(g), free(dq), free(dk), free(dv), free(gd), free(wq), free(wk), free(wv);
  free(wqs);
}

static void pool_attention_vs_reference(void **state) {
  (void)state;
  enum { B = 3, HQ = 4, HKV = 2, M = 3, L = 37, D = 16, DV = 8 };
  static float q[HQ * M * D], k[B * HKV * L * D], v[B * HKV * L * DV], out[B * HQ * M * DV];
  static float w[B * HQ * M * L];
  static double want[B * HQ * M * DV], want_w[B * HQ * M * L];
  static uint8_t keep[B * L];
  tu_rng rng = {7};
  tu_fill(&rng, q, sizeof q / sizeof q[0], -1, 1);
  tu_fill(&rng, k, sizeof k / sizeof k[0], -1, 1);
  tu_fill(&rng, v, sizeof v / sizeof v[0], -1, 1);
  for (int i = 0; i < B * L; i++)
    keep[i] = tu_next(&rng) % 3 != 0;
  for (int l = 0; l < L; l++)
    keep[2 * L + l] = 0; /* the last sequence keeps nothing: zeros */
  int64_t lengths[B] = {L, 20, L};
  for (int32_t threads = 1; threads <= 2; threads++) {
    attn_ctx *ctx = tu_ctx(threads);
    int64_t qd[3] = {HQ, M, D}, kd[4] = {B, HKV, L, D}, vd[4] = {B, HKV, L, DV};
    int64_t od[4] = {B, HQ, M, DV}, wd[4] = {B, HQ, M, L}, md[2] = {B, L};
    attn_tensor *tq = tu_wrap(ctx, q, sizeof q / 4, 3, qd, NULL);
    attn_tensor *tk = tu_wrap(ctx, k, sizeof k / 4, 4, kd, NULL);
    attn_tensor *tv = tu_wrap(ctx, v, sizeof v / 4, 4, vd, NULL);
    attn_tensor *to = tu_wrap(ctx, out, sizeof out / 4, 4, od, NULL);
    attn_tensor *tw = tu_wrap(ctx, w, sizeof w / 4, 4, wd, NULL), *tm = NULL;
    assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_U8, 2, md, NULL, keep, sizeof keep, &tm));
    attn_pool_attention_params p;
    attn_pool_attention_params_init(&p);
    p.lengths = lengths;
    p.keep = tm;
    p.weights = tw;
    p.scale = 0.3f;
    attn_status st = attn_pool_attention(ctx, tq, tk, tv, to, &p);
    if (st != ATTN_OK)
      fail_msg("attn_pool_attention: %s", attn_ctx_last_error(ctx));
    ref_sdpa_args a;
    memset(&a, 0, sizeof a);
    a.B = B, a.Hq = HQ, a.Hkv = HKV, a.Lq = M, a.Lk = L, a.D = D, a.Dv = DV;
    a.q = q, a.k = k, a.v = v;
    int64_t qs[4] = {0, M * D, D, 1}, ks[4] = {HKV * L * D, L * D, D, 1};
    int64_t vs[4] = {HKV * L * DV, L * DV, DV, 1}, bs[4] = {L, 0, 0, 1};
    memcpy(a.qs, qs, sizeof qs), memcpy(a.ks, ks, sizeof ks), memcpy(a.vs, vs, sizeof vs);
    a.scale = 0.3f;
    a.bool_mask = keep;
    memcpy(a.bs, bs, sizeof bs);
    a.kv_lens = lengths;
    ref_sdpa(&a, want, NULL, NULL, want_w);
    double err = ref_max_rel_err(out, want, sizeof out / 4, 1.0);
    double err_w = ref_max_rel_err(w, want_w, sizeof w / 4, 1.0);
    if (!(err <= 1e-5) || !(err_w <= 1e-5))
      fail_msg("threads %d: out error %.3g, weights error %.3g", (int)threads, err, err_w);
    for (int i = 2 * HQ * M * DV; i < B * HQ * M * DV; i++)
      assert_true(out[i] == 0.0f);
    pool_attention_backward_check(ctx, &p, &a, tq, tk, tv, to, threads);
    /* Errors name this function. */
    int64_t bad[4] = {B, HKV, L, D - 1};
    attn_tensor *tkb = tu_wrap(ctx, k, sizeof k / 4, 4, bad, NULL);
    assert_status(attn_pool_attention(ctx, tq, tkb, tv, to, &p), ATTN_ERR_SHAPE);
    assert_error_mentions(ctx, "attn_pool_attention (via attn_sdpa): ");
    int64_t bad_md[2] = {B, L - 1};
    attn_tensor *tmb = NULL;
    assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_U8, 2, bad_md, NULL, keep, sizeof keep, &tmb));
    p.keep = tmb;
    assert_status(attn_pool_attention(ctx, tq, tk, tv, to, &p), ATTN_ERR_SHAPE);
    assert_error_mentions(ctx, "params.keep.shape[1]");
    attn_ctx_destroy(ctx);
  }
}

/* Outputs cannot broadcast: a zero stride in out (attn_pool), dx or dscores
 * (attn_pool_backward) or dqueries (attn_pool_attention_backward) is
 * refused with ATTN_ERR_INVALID_ARG, naming the operand, and nothing is
 * written. attn_pool_attention_backward does not read params.weights and
 * params.lse: tensors of any shape there change nothing. */
static void pool_outputs_and_unread_params(void **state) {
  (void)state;
  enum { B = 2, HQ = 2, HKV = 1, M = 3, L = 5, D = 4, DV = 4 };
  attn_ctx *ctx = tu_ctx(1);
  static float x[B * L * D], g[B * D], out[B * D], dx[B * L * D], sc[B * L], ds[B * L];
  tu_rng rng = {31};
  tu_fill(&rng, x, B * L * D, -1, 1);
  tu_fill(&rng, g, B * D, -1, 1);
  tu_fill(&rng, sc, B * L, -1, 1);
  int64_t xd[3] = {B, L, D}, od[2] = {B, D}, sd[2] = {B, L};
  int64_t oz[2] = {0, 1}, xz[3] = {0, D, 1}, sz[2] = {0, 1};
  for (int i = 0; i < B * D; i++)
    out[i] = 7.0f;
  for (int i = 0; i < B * L * D; i++)
    dx[i] = 7.0f;
  for (int i = 0; i < B * L; i++)
    ds[i] = 7.0f;
  attn_tensor *tx = tu_wrap(ctx, x, B * L * D, 3, xd, NULL), *tg = tu_wrap(ctx, g, B * D, 2, od, NULL);
  assert_status(attn_pool(ctx, tx, tu_wrap(ctx, out, B * D, 2, od, oz), NULL), ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "out.strides[0] = 0");
  attn_pool_params pp;
  attn_pool_params_init(&pp);
  pp.mode = ATTN_POOL_WEIGHTED;
  pp.scores = tu_wrap(ctx, sc, B * L, 2, sd, NULL);
  assert_status(attn_pool_backward(ctx, tx, tg, tu_wrap(ctx, dx, B * L * D, 3, xd, xz),
                                   tu_wrap(ctx, ds, B * L, 2, sd, NULL), &pp),
                ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "dx.strides[0] = 0");
  assert_status(attn_pool_backward(ctx, tx, tg, tu_wrap(ctx, dx, B * L * D, 3, xd, NULL),
                                   tu_wrap(ctx, ds, B * L, 2, sd, sz), &pp),
                ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "dscores.strides[0] = 0");
  for (int i = 0; i < B * D; i++)
    assert_true(out[i] == 7.0f);
  for (int i = 0; i < B * L * D; i++)
    assert_true(dx[i] == 7.0f);
  for (int i = 0; i < B * L; i++)
    assert_true(ds[i] == 7.0f);

  static float q[HQ * M * D], k[B * HKV * L * D], v[B * HKV * L * DV], po[B * HQ * M * DV];
  static float lse[B * HQ * M], go[B * HQ * M * DV], junk[7];
  static float dq[2][HQ * M * D], dk[2][B * HKV * L * D], dv[2][B * HKV * L * DV];
  tu_fill(&rng, q, HQ * M * D, -1, 1);
  tu_fill(&rng, k, B * HKV * L * D, -1, 1);
  tu_fill(&rng, v, B * HKV * L * DV, -1, 1);
  tu_fill(&rng, go, B * HQ * M * DV, -1, 1);
  int64_t qd[3] = {HQ, M, D}, kd[4] = {B, HKV, L, D}, vd[4] = {B, HKV, L, DV};
  int64_t pod[4] = {B, HQ, M, DV}, ld[3] = {B, HQ, M}, jd[1] = {7}, qz[3] = {0, D, 1};
  attn_tensor *tq = tu_wrap(ctx, q, HQ * M * D, 3, qd, NULL);
  attn_tensor *tk = tu_wrap(ctx, k, B * HKV * L * D, 4, kd, NULL);
  attn_tensor *tv = tu_wrap(ctx, v, B * HKV * L * DV, 4, vd, NULL);
  attn_tensor *tpo = tu_wrap(ctx, po, B * HQ * M * DV, 4, pod, NULL);
  attn_tensor *tl = tu_wrap(ctx, lse, B * HQ * M, 3, ld, NULL);
  attn_tensor *tgo = tu_wrap(ctx, go, B * HQ * M * DV, 4, pod, NULL);
  attn_tensor *tj = tu_wrap(ctx, junk, 7, 1, jd, NULL);
  attn_pool_attention_params p;
  attn_pool_attention_params_init(&p);
  p.lse = tl;
  assert_ok(attn_pool_attention(ctx, tq, tk, tv, tpo, &p));
  for (int run = 0; run < 2; run++) {
    p.lse = p.weights = run ? tj : NULL; /* run 1: tensors of a wrong shape, not read */
    assert_ok(attn_pool_attention_backward(
        ctx, tq, tk, tv, tpo, tl, tgo, tu_wrap(ctx, dq[run], HQ * M * D, 3, qd, NULL),
        tu_wrap(ctx, dk[run], B * HKV * L * D, 4, kd, NULL),
        tu_wrap(ctx, dv[run], B * HKV * L * DV, 4, vd, NULL), &p));
  }
  assert_memory_equal(dq[0], dq[1], sizeof dq[0]);
  assert_memory_equal(dk[0], dk[1], sizeof dk[0]);
  assert_memory_equal(dv[0], dv[1], sizeof dv[0]);
  for (int i = 0; i < B * HKV * L * D; i++)
    dk[1][i] = 7.0f;
  assert_status(attn_pool_attention_backward(
                    ctx, tq, tk, tv, tpo, tl, tgo, tu_wrap(ctx, dq[1], HQ * M * D, 3, qd, qz),
                    tu_wrap(ctx, dk[1], B * HKV * L * D, 4, kd, NULL),
                    tu_wrap(ctx, dv[1], B * HKV * L * DV, 4, vd, NULL), &p),
                ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "dqueries.strides[0] = 0");
  assert_memory_equal(dq[0], dq[1], sizeof dq[0]);
  for (int i = 0; i < B * HKV * L * D; i++)
    assert_true(dk[1][i] == 7.0f);
  attn_ctx_destroy(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(pool_vs_reference),
      cmocka_unit_test(pool_properties),
      cmocka_unit_test(pool_bad_input),
      cmocka_unit_test(pool_backward_properties),
      cmocka_unit_test(pool_backward_bad_input),
      cmocka_unit_test(pool_attention_vs_reference),
      cmocka_unit_test(pool_outputs_and_unread_params),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
