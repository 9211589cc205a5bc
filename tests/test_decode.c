/* The decode products: items of at most 8 query rows per KV head read K and
 * V rows in place, in their stored type (src/simd/decode_body.h, run by
 * sdpa_tile.c when the plan sets `decode`).
 *
 * What is checked, and against what (expected values from the float64
 * reference tests/reference/ref_sdpa.c, run on K/V rounded to the stored
 * type by tests/reference/ref_half.c; nothing from the library):
 * - attn_sdpa over dense F32 / F16 / BF16 K/V and attn_kv_attend over
 *   contiguous and paged caches (blocks of 16 and of 5 keys), head dims 1,
 *   7, 65, 128, 256 (tails of every vector width), key counts that are no
 *   multiple of a block, a tile (1024 keys for the decode products, 256 for
 *   staged rows) or a split chunk, sequences of
 *   different lengths, split items (>= 2048 keys), 1 to 8 rows per KV head,
 *   runs of 1..17 keys with 5..7 rows (every remainder of the products' key
 *   groups), runs read as spans with keys left after them, items of one
 *   and of several kv heads (a paged cache's, run longest first), and
 *   causal, window, ALiBi, softcap, sinks, an additive mask and lse;
 *   bound as test_kv_half's: |got - want| <= 1e-5 * mag + 1e-6 (mag: sum_j
 *   w_j |v_j|), lse within 1e-5 relative + 1e-5;
 * - the same output bits for num_threads 1, 2, 3 and 4 (the key split and
 *   the merge follow the shape only). */
#include "test_util.h"

#include "ref_half.h"
#include "ref_sdpa.h"

/* x rounded to dt by the reference, as f32 (exact), and its raw pattern. */
static float rounded(int32_t dt, float x, uint16_t *raw) {
  if (dt == ATTN_DTYPE_F32)
    return x;
  *raw = dt == ATTN_DTYPE_F16 ? ref_to_f16(tu_bits(x)) : ref_to_bf16(tu_bits(x));
  return tu_float(dt == ATTN_DTYPE_F16 ? ref_from_f16(*raw) : ref_from_bf16(*raw));
}

enum { DENSE = 0, CONTIG = -1 }; /* where K/V live; > 0: a paged cache's block size */
enum { MAXB = 3 };

typedef struct {
  const char *name;
  int32_t dt; /* of K and V */
  int store;  /* DENSE, CONTIG or a block size */
  int64_t B, Hq, Hkv, Lq, D, Dv;
  int64_t lens[MAXB];
  int causal, window, alibi, sinks, mask, lse;
  float softcap;
} dcase;

/* One case at one thread count: the output (and lse) into out / lse. */
static void run(const dcase *c, int32_t threads, const float *q, const float *kf,
                const float *vf, const void *kraw, const void *vraw, const float *mask,
                float *out, float *lse) {
  int64_t B = c->B, Hq = c->Hq, Hkv = c->Hkv, Lq = c->Lq, D = c->D, Dv = c->Dv, Lk = 0;
  for (int64_t b = 0; b < B; b++)
    Lk = c->lens[b] > Lk ? c->lens[b] : Lk;
  attn_ctx *ctx = tu_ctx(threads);
  int64_t qd[4] = {B, Hq, Lq, D}, od[4] = {B, Hq, Lq, Dv}, kd[4] = {B, Hkv, Lk, D},
          vd[4] = {B, Hkv, Lk, Dv}, ld[3] = {B, Hq, Lq}, md[4] = {B, Hq, Lq, Lk};
  size_t es = c->dt == ATTN_DTYPE_F32 ? 4 : 2;
  attn_tensor *tq = tu_wrap(ctx, (float *)q, (size_t)(B * Hq * Lq * D), 4, qd, NULL);
  attn_tensor *to = tu_wrap(ctx, out, (size_t)(B * Hq * Lq * Dv), 4, od, NULL);
  attn_tensor *tk = NULL, *tv = NULL, *tl = NULL, *tm = NULL;
  const void *kd_ = c->dt == ATTN_DTYPE_F32 ? (const void *)kf : kraw;
  const void *vd_ = c->dt == ATTN_DTYPE_F32 ? (const void *)vf : vraw;
  assert_ok(attn_tensor_wrap(ctx, c->dt, 4, kd, NULL, (void *)kd_,
                             (size_t)(B * Hkv * Lk * D) * es, &tk));
  assert_ok(attn_tensor_wrap(ctx, c->dt, 4, vd, NULL, (void *)vd_,
                             (size_t)(B * Hkv * Lk * Dv) * es, &tv));
  float alibi[64], sinks[64];
  for (int h = 0; h < 64; h++)
    alibi[h] = 0.05f * (float)(h % 7 + 1), sinks[h] = 0.3f * (float)(h % 5) - 0.6f;
  attn_sdpa_params sp;
  attn_sdpa_params_init(&sp);
  sp.causal = c->causal, sp.window = c->window, sp.window_left = 300, sp.window_right = 1;
  sp.softcap = c->softcap;
  sp.alibi_slopes = c->alibi ? alibi : NULL;
  sp.sinks = c->sinks ? sinks : NULL;
  if (c->lse) {
    assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 3, ld, NULL, lse,
                               (size_t)(B * Hq * Lq) * 4, &tl));
    sp.lse = tl;
  }
  attn_status st;
  if (c->store == DENSE) {
    sp.align = ATTN_ALIGN_BOTTOM_RIGHT;
    sp.kv_lens = c->lens;
    if (c->mask) {
      tm = tu_wrap(ctx, (float *)mask, (size_t)(B * Hq * Lq * Lk), 4, md, NULL);
      sp.mask = tm;
    }
    st = attn_sdpa(ctx, tq, tk, tv, to, &sp);
  } else {
    attn_kv_cache_params cp;
    attn_kv_cache_params_init(&cp);
    cp.dtype = c->dt;
    cp.batch = B, cp.kv_heads = Hkv, cp.head_dim = D, cp.value_dim = Dv;
    if (c->store == CONTIG) {
      cp.capacity = Lk;
    } else {
      cp.layout = ATTN_KV_PAGED;
      cp.block_size = c->store;
      cp.num_blocks = B * (Lk / c->store + 1);
    }
    attn_kv_cache *kv = NULL;
    assert_ok(attn_kv_cache_create(ctx, &cp, &kv));
    assert_ok(attn_kv_append(ctx, kv, tk, tv, c->lens, NULL));
    st = attn_kv_attend(ctx, kv, tq, to, NULL, &sp);
  }
  if (st != ATTN_OK)
    fail_msg("%s: %s", c->name, attn_ctx_last_error(ctx));
  attn_ctx_destroy(ctx);
}

static void check_case(const dcase *c) {
  int64_t B = c->B, Hq = c->Hq, Hkv = c->Hkv, Lq = c->Lq, D = c->D, Dv = c->Dv, Lk = 0;
  for (int64_t b = 0; b < B; b++)
    Lk = c->lens[b] > Lk ? c->lens[b] : Lk;
  tu_rng r = {0xdec0de ^ (uint64_t)(D * 131 + Lk * 7 + c->dt)};
  size_t nq = (size_t)(B * Hq * Lq * D), nk = (size_t)(B * Hkv * Lk * D),
         nv = (size_t)(B * Hkv * Lk * Dv), no = (size_t)(B * Hq * Lq * Dv),
         nm = (size_t)(B * Hq * Lq * Lk), nl = (size_t)(B * Hq * Lq);
  float *q = malloc(nq * 4), *kf = malloc(nk * 4), *vf = malloc(nv * 4), *m = malloc(nm * 4);
  uint16_t *kr = malloc(nk * 2 + 2), *vr = malloc(nv * 2 + 2);
  tu_fill(&r, q, nq, -2, 2);
  tu_fill(&r, m, nm, -1, 1);
  for (size_t i = 0; i < nk; i++)
    kf[i] = rounded(c->dt, tu_uniform(&r, -2, 2), &kr[i]);
  for (size_t i = 0; i < nv; i++)
    vf[i] = rounded(c->dt, tu_uniform(&r, -2, 2), &vr[i]);

  ref_sdpa_args a;
  memset(&a, 0, sizeof a);
  a.B = B, a.Hq = Hq, a.Hkv = Hkv, a.Lq = Lq, a.Lk = Lk, a.D = D, a.Dv = Dv;
  a.q = q, a.k = kf, a.v = vf;
  int64_t qs[4] = {Hq * Lq * D, Lq * D, D, 1}, ks[4] = {Hkv * Lk * D, Lk * D, D, 1},
          vs[4] = {Hkv * Lk * Dv, Lk * Dv, Dv, 1}, ms[4] = {Hq * Lq * Lk, Lq * Lk, Lk, 1};
  memcpy(a.qs, qs, sizeof qs), memcpy(a.ks, ks, sizeof ks), memcpy(a.vs, vs, sizeof vs);
  a.softcap = c->softcap, a.causal = c->causal, a.bottom_right = 1;
  a.window = c->window, a.window_left = 300, a.window_right = 1;
  a.kv_lens = c->lens;
  float alibi[64], sinks[64];
  for (int h = 0; h < 64; h++)
    alibi[h] = 0.05f * (float)(h % 7 + 1), sinks[h] = 0.3f * (float)(h % 5) - 0.6f;
  a.alibi_slopes = c->alibi ? alibi : NULL;
  a.sinks = c->sinks ? sinks : NULL;
  if (c->mask)
    a.mask = m, memcpy(a.ms, ms, sizeof ms);
  double *want = malloc((no + 1) * sizeof(double)), *mag = malloc((no + 1) * sizeof(double));
  double *wlse = malloc((nl + 1) * sizeof(double));
  ref_sdpa(&a, want, mag, wlse, NULL);

  float *out1 = malloc(no * 4 + 4), *lse1 = malloc(nl * 4 + 4);
  float *outt = malloc(no * 4 + 4), *lset = malloc(nl * 4 + 4);
  run(c, 1, q, kf, vf, kr, vr, m, out1, lse1);
  double worst = 0;
  for (size_t i = 0; i < no; i++) {
    double bound = 1e-5 * mag[i] + 1e-6, e = fabs(out1[i] - want[i]);
    if (!(e <= bound))
      fail_msg("%s: out[%zu] = %.9g, the float64 reference gives %.9g (bound %.3g)", c->name,
               i, (double)out1[i], want[i], bound);
    worst = e / bound > worst ? e / bound : worst;
  }
  if (c->lse)
    for (size_t i = 0; i < nl; i++)
      if (!tu_close(lse1[i], wlse[i], 1e-5, 1e-5))
        fail_msg("%s: lse[%zu] = %.9g, the float64 reference gives %.9g", c->name, i,
                 (double)lse1[i], wlse[i]);
  for (int32_t t = 2; t <= 4; t++) {
    run(c, t, q, kf, vf, kr, vr, m, outt, lset);
    if (memcmp(out1, outt, no * 4) || (c->lse && memcmp(lse1, lset, nl * 4)))
      fail_msg("%s: %d threads give other bits than 1", c->name, (int)t);
  }
  print_message("%-44s worst error %.3f of the bound\n", c->name, worst);
  free(q), free(kf), free(vf), free(m), free(kr), free(vr), free(want), free(mag), free(wlse);
  free(out1), free(lse1), free(outt), free(lset);
}

/* Every K/V type and head dim over dense K/V, one query row per head of a
 * group of 4. */
static void dims_and_types(void **state) {
  (void)state;
  static const int32_t dts[3] = {ATTN_DTYPE_F32, ATTN_DTYPE_F16, ATTN_DTYPE_BF16};
  static const int64_t Ds[5] = {1, 7, 65, 128, 256};
  char name[64];
  for (int t = 0; t < 3; t++)
    for (int d = 0; d < 5; d++) {
      snprintf(name, sizeof name, "dense dt %d D %lld", (int)dts[t], (long long)Ds[d]);
      dcase c = {name, dts[t], DENSE, 2, 8, 2, 1, Ds[d], Ds[d], {300, 259}, .lse = 1};
      check_case(&c);
    }
}

/* The features the tile kernel applies around the products, on every store. */
static void features(void **state) {
  (void)state;
  enum { F32 = ATTN_DTYPE_F32, F16 = ATTN_DTYPE_F16, BF16 = ATTN_DTYPE_BF16 };
  static const dcase cases[] = {
      {"dense f32 split causal", F32, DENSE, 1, 4, 1, 2, 128, 128, {2500}, .causal = 1,
       .lse = 1},
      {"dense bf16 split, Dv != D", BF16, DENSE, 1, 2, 2, 1, 65, 33, {2049}, .lse = 1},
      {"dense f16 lens causal window alibi sinks softcap", F16, DENSE, 3, 8, 2, 2, 7, 9,
       {1, 257, 1030}, 1, 1, 1, 1, 0, 1, 3.0f},
      {"dense f32 mask", F32, DENSE, 2, 4, 2, 2, 16, 16, {100, 513}, .mask = 1},
      {"dense bf16 mask causal", BF16, DENSE, 1, 8, 1, 1, 65, 65, {700}, .causal = 1,
       .mask = 1},
      {"contiguous f32", F32, CONTIG, 2, 8, 1, 1, 128, 128, {1000, 37}, .causal = 1},
      /* A last tile of 75 keys: four spans of 18, then 3 keys one at a time. */
      {"contiguous f16 spans and a tail", F16, CONTIG, 2, 4, 1, 1, 65, 65, {331, 70},
       .causal = 1, .lse = 1},
      {"contiguous bf16 window sinks", BF16, CONTIG, 2, 4, 4, 2, 128, 128, {1500, 600},
       .causal = 1, .window = 1, .sinks = 1, .lse = 1},
      {"paged 16 f32", F32, 16, 3, 8, 2, 1, 128, 128, {37, 1000, 2100}, .causal = 1,
       .lse = 1},
      {"paged 16 f16 alibi softcap", F16, 16, 2, 16, 2, 1, 128, 128, {2300, 5}, .causal = 1,
       .alibi = 1, .softcap = 2.5f},
      {"paged 5 bf16 two rows", BF16, 5, 3, 4, 1, 2, 7, 7, {2, 333, 2051}, .causal = 1,
       .sinks = 1, .lse = 1},
      {"paged 5 f32 D 256 window", F32, 5, 1, 6, 2, 1, 256, 256, {777}, .causal = 1,
       .window = 1},
      {"paged 16 f16 D 1", F16, 16, 2, 2, 1, 4, 1, 1, {17, 300}, .causal = 1},
      /* Items of several kv heads (one thread: all four; four threads: one):
       * rows of each head's positions, per-head ALiBi slopes and sinks. */
      {"paged 16 bf16 4 kv heads two rows", BF16, 16, 2, 8, 4, 2, 65, 65, {40, 700},
       .causal = 1, .alibi = 1, .sinks = 1, .lse = 1},
      /* Two heads per item on 2 and 3 threads, the batches longest first. */
      {"paged 16 f16 8 kv heads", F16, 16, 3, 16, 8, 1, 64, 64, {300, 20, 700}, .causal = 1,
       .lse = 1},
      {"paged 16 f32 nine rows (generic products)", F32, 16, 1, 9, 1, 1, 64, 64, {500},
       .causal = 1},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    check_case(&cases[i]);
}

/* Short runs of keys: 1..17 keys (a pass of Q K^T takes two K rows, a step
 * of P V eight V rows: every remainder), 5..7 query rows per KV head, head
 * dims with a tail, dense, contiguous and in blocks of 5. */
static void short_runs(void **state) {
  (void)state;
  static const int32_t dts[3] = {ATTN_DTYPE_F32, ATTN_DTYPE_F16, ATTN_DTYPE_BF16};
  static const int stores[3] = {DENSE, CONTIG, 5};
  char name[64];
  for (int64_t n = 1; n <= 17; n++) {
    int32_t dt = dts[n % 3];
    int store = stores[(n / 3) % 3];
    int64_t Hq = 5 + n % 3, D = n % 2 ? 33 : 16;
    snprintf(name, sizeof name, "%lld keys, %lld rows, dt %d, store %d", (long long)n,
             (long long)Hq, (int)dt, store);
    dcase c = {name, dt, store, 1, Hq, 1, 1, D, D, {n}, .lse = 1};
    check_case(&c);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(dims_and_types), cmocka_unit_test(features),
                                     cmocka_unit_test(short_runs)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
