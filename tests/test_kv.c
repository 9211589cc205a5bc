/* KV cache: contiguous and paged caches against a plain model of what each
 * sequence holds, and attention through the cache against the float64
 * reference (tests/reference) and against one full causal attn_sdpa.
 *
 * The model keeps every sequence's raw (un-rotated) keys and values as
 * generated; the reference rotates them itself (ref_rope), so nothing the
 * expected values come from runs the library's code. */
#define _DEFAULT_SOURCE /* mmap, MAP_ANONYMOUS, mprotect */
#include "test_util.h"

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "ref_posenc.h"
#include "ref_sdpa.h"

enum { MAXB = 4, MAXP = 160 };

/* One configuration of a decode run. */
typedef struct {
  const char *name;
  int64_t B, Hq, Hkv, D, Dv;
  int paged;
  int64_t block_size; /* paged */
  int64_t prompt[MAXB];
  int max_chunk; /* 1 = token by token; else chunks of 0..max_chunk tokens */
  int rope;      /* 0 none, 1 half-split, 2 interleaved (partial) */
  int causal, window, alibi, sinks;
  float softcap;
  int32_t threads;
} kv_case;

/* Inputs of a case: per sequence b, Q [Hq, P, D], K [Hkv, P, D], V [Hkv, P, Dv]. */
typedef struct {
  float *q[MAXB], *k[MAXB], *v[MAXB];
  float alibi[16], sinks[16];
} kv_data;

static void data_make(const kv_case *c, kv_data *d, uint64_t seed) {
  tu_rng r = {seed};
  for (int64_t b = 0; b < c->B; b++) {
    int64_t P = c->prompt[b];
    d->q[b] = malloc((size_t)(c->Hq * P * c->D + 1) * sizeof(float));
    d->k[b] = malloc((size_t)(c->Hkv * P * c->D + 1) * sizeof(float));
    d->v[b] = malloc((size_t)(c->Hkv * P * c->Dv + 1) * sizeof(float));
    tu_fill(&r, d->q[b], (size_t)(c->Hq * P * c->D), -1, 1);
    tu_fill(&r, d->k[b], (size_t)(c->Hkv * P * c->D), -1, 1);
    tu_fill(&r, d->v[b], (size_t)(c->Hkv * P * c->Dv), -1, 1);
  }
  for (int h = 0; h < 16; h++) {
    d->alibi[h] = 0.05f * (float)(h + 1);
    d->sinks[h] = tu_uniform(&r, -1, 1);
  }
}

static void data_free(const kv_case *c, kv_data *d) {
  for (int64_t b = 0; b < c->B; b++) {
    free(d->q[b]);
    free(d->k[b]);
    free(d->v[b]);
  }
}

static void rope_params(const kv_case *c, attn_rope_params *rp) {
  attn_rope_params_init(rp);
  rp->style = c->rope == 2 ? ATTN_ROPE_INTERLEAVED : ATTN_ROPE_HALF_SPLIT;
  rp->rotary_dim = c->rope == 2 ? (int32_t)(c->D / 2 & ~1) : 0;
  rp->theta = 5000;
}

static void sdpa_params(const kv_case *c, const kv_data *d, attn_sdpa_params *p) {
  attn_sdpa_params_init(p);
  p->causal = c->causal;
  p->window = c->window;
  p->window_left = 9;
  p->window_right = 2;
  p->softcap = c->softcap;
  p->alibi_slopes = c->alibi ? d->alibi : NULL;
  p->sinks = c->sinks ? d->sinks : NULL;
}

/* The float64 reference of sequence b's full forward: ref [Hq, P, Dv]. */
static void reference(const kv_case *c, const kv_data *d, int64_t b, double *ref) {
  int64_t P = c->prompt[b];
  float *k = d->k[b];
  float *rot = NULL;
  if (c->rope) {
    attn_rope_params rp;
    rope_params(c, &rp);
    size_t n = (size_t)(c->Hkv * P * c->D);
    double *x = malloc((n + 1) * sizeof *x);
    int64_t *pos = malloc((size_t)(P + 1) * sizeof *pos);
    for (size_t i = 0; i < n; i++)
      x[i] = d->k[b][i];
    for (int64_t l = 0; l < P; l++)
      pos[l] = l;
    ref_rope(c->rope == 2, 1, c->Hkv, P, c->D, rp.rotary_dim ? rp.rotary_dim : c->D, rp.theta,
             pos, x);
    rot = malloc((n + 1) * sizeof *rot);
    for (size_t i = 0; i < n; i++)
      rot[i] = (float)x[i];
    k = rot;
    free(x);
    free(pos);
  }
  ref_sdpa_args a;
  memset(&a, 0, sizeof a);
  a.B = 1, a.Hq = c->Hq, a.Hkv = c->Hkv, a.Lq = P, a.Lk = P, a.D = c->D, a.Dv = c->Dv;
  a.q = d->q[b], a.k = k, a.v = d->v[b];
  int64_t qs[4] = {0, P * c->D, c->D, 1}, ks[4] = {0, P * c->D, c->D, 1},
          vs[4] = {0, P * c->Dv, c->Dv, 1};
  memcpy(a.qs, qs, sizeof qs), memcpy(a.ks, ks, sizeof ks), memcpy(a.vs, vs, sizeof vs);
  a.softcap = c->softcap;
  a.causal = c->causal;
  a.bottom_right = 1;
  a.window = c->window, a.window_left = 9, a.window_right = 2;
  a.alibi_slopes = c->alibi ? d->alibi : NULL;
  a.sinks = c->sinks ? d->sinks : NULL;
  ref_sdpa(&a, ref, NULL, NULL, NULL);
  free(rot);
}

static attn_kv_cache *make_cache(attn_ctx *ctx, const kv_case *c, int64_t capacity,
                                 int64_t num_blocks) {
  attn_kv_cache_params p;
  attn_kv_cache_params_init(&p);
  p.layout = c->paged ? ATTN_KV_PAGED : ATTN_KV_CONTIGUOUS;
  p.batch = c->B, p.kv_heads = c->Hkv, p.head_dim = c->D, p.value_dim = c->Dv;
  p.capacity = capacity;
  p.block_size = c->block_size;
  p.num_blocks = num_blocks;
  attn_kv_cache *kv = NULL;
  attn_status st = attn_kv_cache_create(ctx, &p, &kv);
  if (st != ATTN_OK)
    fail_msg("attn_kv_cache_create: %s", attn_ctx_last_error(ctx));
  return kv;
}

/* Decode every sequence's prompt through the cache in chunks, writing the
 * output of position l of head h of sequence b at got[b][(h * P + l) * Dv]. */
static void decode(const kv_case *c, const kv_data *d, uint64_t seed, float **got) {
  attn_ctx *ctx = tu_ctx(c->threads);
  int64_t maxP = 0, total_blocks = 0;
  for (int64_t b = 0; b < c->B; b++) {
    maxP = c->prompt[b] > maxP ? c->prompt[b] : maxP;
    if (c->paged)
      total_blocks += (c->prompt[b] + c->block_size - 1) / c->block_size;
  }
  attn_kv_cache *kv = make_cache(ctx, c, c->paged ? 0 : maxP + 3, total_blocks + 1);
  int64_t Lmax = c->max_chunk;
  float *kn = calloc((size_t)(c->B * c->Hkv * Lmax * c->D), sizeof(float));
  float *vn = calloc((size_t)(c->B * c->Hkv * Lmax * c->Dv), sizeof(float));
  float *qn = calloc((size_t)(c->B * c->Hq * Lmax * c->D), sizeof(float));
  float *on = calloc((size_t)(c->B * c->Hq * Lmax * c->Dv), sizeof(float));
  int64_t kd[4] = {c->B, c->Hkv, Lmax, c->D}, vd[4] = {c->B, c->Hkv, Lmax, c->Dv};
  int64_t qd[4] = {c->B, c->Hq, Lmax, c->D}, od[4] = {c->B, c->Hq, Lmax, c->Dv};
  attn_tensor *tk = tu_wrap(ctx, kn, (size_t)(c->B * c->Hkv * Lmax * c->D), 4, kd, NULL);
  attn_tensor *tv = tu_wrap(ctx, vn, (size_t)(c->B * c->Hkv * Lmax * c->Dv), 4, vd, NULL);
  attn_tensor *tq = tu_wrap(ctx, qn, (size_t)(c->B * c->Hq * Lmax * c->D), 4, qd, NULL);
  attn_tensor *to = tu_wrap(ctx, on, (size_t)(c->B * c->Hq * Lmax * c->Dv), 4, od, NULL);
  attn_kv_append_params ap;
  attn_kv_append_params_init(&ap);
  attn_rope_params rp;
  rope_params(c, &rp);
  ap.rope = c->rope ? &rp : NULL;
  attn_sdpa_params sp;
  sdpa_params(c, d, &sp);
  tu_rng r = {seed};
  int64_t done[MAXB] = {0};
  for (int step = 0;; step++) {
    int64_t n[MAXB], left = 0;
    for (int64_t b = 0; b < c->B; b++) {
      int64_t want = c->max_chunk == 1 ? 1 : (int64_t)(tu_next(&r) % (uint64_t)(Lmax + 1));
      int64_t rest = c->prompt[b] - done[b];
      n[b] = want < rest ? want : rest;
      left += rest;
      for (int64_t h = 0; h < c->Hkv; h++)
        for (int64_t i = 0; i < n[b]; i++) {
          memcpy(kn + ((b * c->Hkv + h) * Lmax + i) * c->D,
                 d->k[b] + (h * c->prompt[b] + done[b] + i) * c->D,
                 (size_t)c->D * sizeof(float));
          memcpy(vn + ((b * c->Hkv + h) * Lmax + i) * c->Dv,
                 d->v[b] + (h * c->prompt[b] + done[b] + i) * c->Dv,
                 (size_t)c->Dv * sizeof(float));
        }
      for (int64_t h = 0; h < c->Hq; h++)
        for (int64_t i = 0; i < n[b]; i++)
          memcpy(qn + ((b * c->Hq + h) * Lmax + i) * c->D,
                 d->q[b] + (h * c->prompt[b] + done[b] + i) * c->D,
                 (size_t)c->D * sizeof(float));
    }
    if (!left)
      break;
    assert_true(step < 10000);
    assert_ok(attn_kv_append(ctx, kv, tk, tv, n, &ap));
    for (size_t i = 0; i < (size_t)(c->B * c->Hq * Lmax * c->Dv); i++)
      on[i] = NAN;
    attn_status st = attn_kv_attend(ctx, kv, tq, to, n, &sp);
    if (st != ATTN_OK)
      fail_msg("attn_kv_attend: %s", attn_ctx_last_error(ctx));
    for (int64_t b = 0; b < c->B; b++)
      for (int64_t h = 0; h < c->Hq; h++)
        for (int64_t i = 0; i < Lmax; i++) {
          const float *o = on + ((b * c->Hq + h) * Lmax + i) * c->Dv;
          if (i < n[b])
            memcpy(got[b] + (h * c->prompt[b] + done[b] + i) * c->Dv, o,
                   (size_t)c->Dv * sizeof(float));
          else
            for (int64_t e = 0; e < c->Dv; e++)
              if (o[e] != 0)
                fail_msg("%s: padding row %lld of sequence %lld is %g, not 0", c->name,
                         (long long)i, (long long)b, (double)o[e]);
        }
    for (int64_t b = 0; b < c->B; b++)
      done[b] += n[b];
  }
  int64_t lens[MAXB];
  attn_kv_cache_info info = {.struct_size = sizeof info};
  assert_ok(attn_kv_cache_info_get(ctx, kv, &info, lens));
  for (int64_t b = 0; b < c->B; b++)
    assert_int_equal(lens[b], c->prompt[b]);
  if (c->paged)
    assert_int_equal(info.free_blocks, 1);
  free(kn), free(vn), free(qn), free(on);
  attn_ctx_destroy(ctx); /* frees the cache and the tensors */
}

/* One full causal attn_sdpa of sequence b (keys rotated by attn_rope). */
static void full_forward(const kv_case *c, const kv_data *d, int64_t b, float *out) {
  attn_ctx *ctx = tu_ctx(1);
  int64_t P = c->prompt[b];
  size_t nk = (size_t)(c->Hkv * P * c->D);
  float *k = malloc(nk * sizeof *k);
  memcpy(k, d->k[b], nk * sizeof *k);
  int64_t qd[4] = {1, c->Hq, P, c->D}, kd[4] = {1, c->Hkv, P, c->D},
          vd[4] = {1, c->Hkv, P, c->Dv}, od[4] = {1, c->Hq, P, c->Dv};
  attn_tensor *tk = tu_wrap(ctx, k, nk, 4, kd, NULL);
  if (c->rope) {
    attn_rope_params rp;
    rope_params(c, &rp);
    assert_ok(attn_rope(ctx, tk, &rp));
  }
  attn_sdpa_params sp;
  sdpa_params(c, d, &sp);
  assert_ok(attn_sdpa(ctx, tu_wrap(ctx, d->q[b], (size_t)(c->Hq * P * c->D), 4, qd, NULL), tk,
                      tu_wrap(ctx, d->v[b], (size_t)(c->Hkv * P * c->Dv), 4, vd, NULL),
                      tu_wrap(ctx, out, (size_t)(c->Hq * P * c->Dv), 4, od, NULL), &sp));
  free(k);
  attn_ctx_destroy(ctx);
}

static void run_decode_case(const kv_case *c) {
  kv_data d;
  uint64_t seed = 0x9e3779b97f4a7c15ull ^ (uint64_t)c->prompt[0] * 7919u ^ (uint64_t)c->D;
  data_make(c, &d, seed);
  float *got[MAXB];
  for (int64_t b = 0; b < c->B; b++)
    got[b] = calloc((size_t)(c->Hq * c->prompt[b] * c->Dv), sizeof(float));
  decode(c, &d, seed + 1, got);
  for (int64_t b = 0; b < c->B; b++) {
    int64_t P = c->prompt[b];
    size_t n = (size_t)(c->Hq * P * c->Dv);
    double *ref = malloc(n * sizeof *ref);
    float *full = malloc(n * sizeof *full);
    reference(c, &d, b, ref);
    full_forward(c, &d, b, full);
    for (size_t i = 0; i < n; i++) {
      if (!(fabs(got[b][i] - ref[i]) <= 2e-6 + 2e-6 * fabs(ref[i])))
        fail_msg("%s: sequence %lld element %zu (head %lld, position %lld): %.9g but the "
                 "float64 reference gives %.9g",
                 c->name, (long long)b, i, (long long)(i / (size_t)c->Dv / (size_t)P),
                 (long long)(i / (size_t)c->Dv % (size_t)P), (double)got[b][i], ref[i]);
      if (!(fabs(got[b][i] - full[i]) <= 1e-5))
        fail_msg("%s: sequence %lld element %zu: decode %.9g, full forward %.9g", c->name,
                 (long long)b, i, (double)got[b][i], (double)full[i]);
    }
    free(ref);
    free(full);
    free(got[b]);
  }
  data_free(c, &d);
}

static void decode_equals_full_forward(void **state) {
  (void)state;
  static const kv_case cases[] = {
      {"contig token by token", 3, 4, 2, 16, 8, 0, 0, {37, 1, 70}, 1, 0, 1, 0, 0, 0, 0, 1},
      {"contig chunks", 3, 4, 2, 16, 8, 0, 0, {37, 1, 70}, 7, 0, 1, 0, 0, 0, 0, 1},
      {"paged bs16 token by token", 3, 4, 2, 16, 8, 1, 16, {37, 1, 70}, 1, 0, 1, 0, 0, 0, 0, 1},
      {"paged bs5 chunks", 3, 4, 2, 16, 8, 1, 5, {37, 1, 70}, 9, 0, 1, 0, 0, 0, 0, 1},
      {"paged bs1 chunks", 2, 2, 1, 8, 8, 1, 1, {23, 40}, 6, 0, 1, 0, 0, 0, 0, 2},
      {"paged rope half-split", 2, 4, 4, 16, 16, 1, 8, {50, 33}, 5, 1, 1, 0, 0, 0, 0, 1},
      {"contig rope interleaved partial", 2, 6, 3, 20, 12, 0, 0, {41, 64}, 4, 2, 1, 0, 0, 0, 0,
       2},
      {"paged window alibi softcap sinks", 3, 4, 1, 16, 8, 1, 7, {60, 3, 29}, 8, 0, 1, 1, 1, 1,
       4.0f, 1},
      {"contig window sinks", 2, 2, 2, 12, 12, 0, 0, {31, 17}, 3, 0, 1, 1, 0, 1, 0, 3},
      {"paged mqa threads", 4, 8, 1, 32, 32, 1, 32, {150, 97, 1, 64}, 16, 1, 1, 0, 1, 0, 0, 4},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    run_decode_case(&cases[i]);
}

/* ---- a long cache: the split over keys, one sequence, one decode row ---- */

static void long_cache_split(void **state) {
  (void)state;
  for (int pg = 0; pg < 2; pg++) {
    kv_case c = {pg ? "long paged" : "long contig", 1, 4, 1, 16, 16, pg, 64, {5000}, 1,
                 0, 1, 0, 0, 0, 0, 4};
    kv_data d;
    data_make(&c, &d, 42);
    attn_ctx *ctx = tu_ctx(4);
    /* Room for 40000 tokens (5 MiB): with the default allocator a cache
     * of 2 MiB or more takes the huge-page path (2 MiB-aligned, advised). */
    attn_kv_cache *kv = make_cache(ctx, &c, pg ? 0 : 40000, pg ? 40000 / 64 + 1 : 0);
    /* Store every key at once, then attend with the last token's queries. */
    int64_t P = 5000;
    int64_t kd[4] = {1, 1, P, 16}, qd[4] = {1, 4, 1, 16};
    float *q1 = malloc(4 * 16 * sizeof(float)), out[4 * 16];
    for (int h = 0; h < 4; h++)
      memcpy(q1 + h * 16, d.q[0] + (h * P + P - 1) * 16, 16 * sizeof(float));
    assert_ok(attn_kv_append(ctx, kv, tu_wrap(ctx, d.k[0], (size_t)(P * 16), 4, kd, NULL),
                             tu_wrap(ctx, d.v[0], (size_t)(P * 16), 4, kd, NULL), NULL, NULL));
    assert_ok(attn_kv_attend(ctx, kv, tu_wrap(ctx, q1, 64, 4, qd, NULL),
                             tu_wrap(ctx, out, 64, 4, qd, NULL), NULL, NULL));
    ref_sdpa_args a;
    memset(&a, 0, sizeof a);
    a.B = 1, a.Hq = 4, a.Hkv = 1, a.Lq = 1, a.Lk = P, a.D = 16, a.Dv = 16;
    a.q = q1, a.k = d.k[0], a.v = d.v[0];
    int64_t qs[4] = {0, 16, 16, 1}, ks[4] = {0, P * 16, 16, 1};
    memcpy(a.qs, qs, sizeof qs), memcpy(a.ks, ks, sizeof ks), memcpy(a.vs, ks, sizeof ks);
    double ref[64];
    ref_sdpa(&a, ref, NULL, NULL, NULL);
    for (int i = 0; i < 64; i++)
      assert_close(out[i], ref[i], 1e-5, 1e-6);
    free(q1);
    attn_ctx_destroy(ctx);
    data_free(&c, &d);
  }
}

/* ---- rows past n_new[b] with a long sequence ---- */

/* A step where some sequences bring fewer than Lq rows, over a sequence
 * longer than one key tile: a padding row's visible range starts at its
 * sequence's end, hundreds of keys past the first tile. (The tile kernel
 * once zeroed that many logits from the row's start: past the S buffer
 * into the workspace's running sums, a wrong result and a heap overflow.)
 * Both the decode products (G * Lq <= 8 rows) and the generic ones, a
 * sequence long enough for the split over keys, and sinks: a padding row
 * gets lse -inf (it once got the sink). */
/* One decode step over a cache filled with k, v [B, Hkv, L, D] (lens[b] keys
 * each): q [B, Hq, 1, D] -> out. */
static void fill_and_decode(attn_ctx *ctx, attn_kv_cache *kv, int64_t B, int64_t Hq,
                            int64_t Hkv, int64_t L, int64_t D, float *k, float *v,
                            const int64_t *lens, float *q, float *out) {
  size_t nkv = (size_t)(B * Hkv * L * D), nq = (size_t)(B * Hq * D);
  int64_t kd[4] = {B, Hkv, L, D}, qd[4] = {B, Hq, 1, D}, one[8] = {1, 1, 1, 1, 1, 1, 1, 1};
  assert_true(B <= 8);
  assert_ok(attn_kv_append(ctx, kv, tu_wrap(ctx, k, nkv, 4, kd, NULL),
                           tu_wrap(ctx, v, nkv, 4, kd, NULL), lens, NULL));
  assert_ok(attn_kv_attend(ctx, kv, tu_wrap(ctx, q, nq, 4, qd, NULL),
                           tu_wrap(ctx, out, nq, 4, qd, NULL), one, NULL));
}

/* out of fill_and_decode against the float64 reference, sequence by sequence. */
static void decode_matches_reference(int64_t B, int64_t Hq, int64_t Hkv, int64_t L, int64_t D,
                                     const float *k, const float *v, const int64_t *lens,
                                     const float *q, const float *out) {
  double *ref = malloc((size_t)(Hq * D) * sizeof *ref);
  for (int64_t b = 0; b < B; b++) {
    ref_sdpa_args a;
    memset(&a, 0, sizeof a);
    a.B = 1, a.Hq = Hq, a.Hkv = Hkv, a.Lq = 1, a.Lk = lens[b], a.D = D, a.Dv = D;
    a.q = q + b * Hq * D, a.k = k + b * Hkv * L * D, a.v = v + b * Hkv * L * D;
    int64_t qs[4] = {0, D, D, 1}, ks[4] = {0, L * D, D, 1};
    memcpy(a.qs, qs, sizeof qs), memcpy(a.ks, ks, sizeof ks), memcpy(a.vs, ks, sizeof ks);
    ref_sdpa(&a, ref, NULL, NULL, NULL);
    for (int64_t i = 0; i < Hq * D; i++)
      assert_close(out[b * Hq * D + i], ref[i], 1e-5, 1e-6);
  }
  free(ref);
}

/* A paged cache with a capacity (so each block-table row holds just the
 * sequence's blocks) and blocks that do not divide the 256-key tile: a tile
 * ending inside the last block prefetched the block after it, reading the
 * table one entry past its end (ASan / valgrind catch that read; results
 * were right). Decode steps over 300 keys against the float64 reference. */
static void paged_tile_ends_inside_block(void **state) {
  (void)state;
  enum { B = 2, Hq = 4, Hkv = 2, L = 300, D = 8 };
  static const int64_t block_sizes[] = {63, 100, 299};
  for (size_t t = 0; t < sizeof block_sizes / sizeof block_sizes[0]; t++)
    for (int32_t threads = 1; threads <= 2; threads++) {
      int64_t bs = block_sizes[t], per_seq = (L + bs - 1) / bs;
      kv_case c = {"tile inside block", B, Hq, Hkv, D, D, 1, bs, {0}, 0, 0, 1, 0, 0, 0, 0, 1};
      attn_ctx *ctx = tu_ctx(threads);
      attn_kv_cache *kv = make_cache(ctx, &c, L, B * per_seq);
      size_t nkv = (size_t)(B * Hkv * L * D), nq = (size_t)(B * Hq * D);
      float *k = malloc(nkv * sizeof *k), *v = malloc(nkv * sizeof *v);
      float q[B * Hq * D], out[B * Hq * D];
      tu_rng r = {7 + (uint64_t)(t * 2) + (uint64_t)threads};
      tu_fill(&r, k, nkv, -2, 2);
      tu_fill(&r, v, nkv, -2, 2);
      tu_fill(&r, q, nq, -2, 2);
      int64_t lens[B] = {L, L};
      fill_and_decode(ctx, kv, B, Hq, Hkv, L, D, k, v, lens, q, out);
      decode_matches_reference(B, Hq, Hkv, L, D, k, v, lens, q, out);
      free(k), free(v);
      attn_ctx_destroy(ctx);
    }
}

/* A decode step over a paged cache whose items hold several kv heads and
 * take a tile's blocks in groups (block sizes whose groups do not divide a
 * tile's blocks, blocks that start before a tile, several of the decode
 * products' 1024-key tiles and split chunks): the same
 * bits as the contiguous cache (whose items read one head's whole tile per
 * product), and close to the float64 reference. */
static void paged_decode_block_groups(void **state) {
  (void)state;
  enum { B = 2, Hq = 8, Hkv = 4, L = 2500, D = 16 };
  static const int64_t block_sizes[] = {3, 16, 40, 129};
  size_t nkv = (size_t)(B * Hkv * L * D), nq = (size_t)(B * Hq * D);
  float *k = malloc(nkv * sizeof *k), *v = malloc(nkv * sizeof *v);
  float q[B * Hq * D], want[B * Hq * D], got[B * Hq * D];
  int64_t lens[B] = {L, L - 77};
  tu_rng r = {41};
  tu_fill(&r, k, nkv, -2, 2);
  tu_fill(&r, v, nkv, -2, 2);
  tu_fill(&r, q, nq, -2, 2);
  for (int32_t threads = 1; threads <= 2; threads++) {
    attn_ctx *ctx = tu_ctx(threads);
    kv_case c = {"block groups", B, Hq, Hkv, D, D, 0, 0, {0}, 0, 0, 1, 0, 0, 0, 0, threads};
    attn_kv_cache *con = make_cache(ctx, &c, L, 0);
    fill_and_decode(ctx, con, B, Hq, Hkv, L, D, k, v, lens, q, want);
    decode_matches_reference(B, Hq, Hkv, L, D, k, v, lens, q, want);
    for (size_t t = 0; t < sizeof block_sizes / sizeof block_sizes[0]; t++) {
      c.paged = 1, c.block_size = block_sizes[t];
      attn_kv_cache *pag = make_cache(ctx, &c, 0, B * ((L + c.block_size - 1) / c.block_size));
      fill_and_decode(ctx, pag, B, Hq, Hkv, L, D, k, v, lens, q, got);
      for (size_t i = 0; i < nq; i++)
        if (memcmp(&got[i], &want[i], sizeof got[i]) != 0)
          fail_msg("block size %lld, %d threads, element %zu: contiguous %.9g, paged %.9g",
                   (long long)c.block_size, (int)threads, i, (double)want[i], (double)got[i]);
    }
    attn_ctx_destroy(ctx);
  }
  free(k), free(v);
}

static void padding_rows_long_cache(void **state) {
  (void)state;
  enum { B = 2, L = 2600, Lq = 3, D = 8 };
  static const int64_t lens[B] = {2600, 300}, n_new[B] = {1, 2};
  static const float sinks[8] = {0.5f, -1, 2, 0, 1, -0.5f, 3, -2};
  static const int64_t heads[2][2] = {{4, 2}, {8, 1}}; /* Hq, Hkv */
  for (int pg = 0; pg < 2; pg++)
    for (int hc = 0; hc < 2; hc++)
      for (int32_t threads = 1; threads <= 2; threads++) {
        int64_t Hq = heads[hc][0], Hkv = heads[hc][1];
        kv_case c = {"padding rows", B, Hq, Hkv, D, D, pg, 16, {0}, 0, 0, 1, 0, 0, 0, 0, 1};
        attn_ctx *ctx = tu_ctx(threads);
        attn_kv_cache *kv = make_cache(ctx, &c, pg ? 0 : L, pg ? 2 * L / 16 : 0);
        size_t nkv = (size_t)(B * Hkv * L * D), nq = (size_t)(B * Hq * Lq * D);
        float *k = malloc(nkv * sizeof *k), *v = malloc(nkv * sizeof *v);
        float *q = malloc(nq * sizeof *q), *out = malloc(nq * sizeof *out);
        float lse[B * 8 * Lq];
        tu_rng r = {99 + (uint64_t)(pg * 4 + hc * 2 + threads)};
        tu_fill(&r, k, nkv, -2, 2);
        tu_fill(&r, v, nkv, -2, 2);
        tu_fill(&r, q, nq, -2, 2);
        for (size_t i = 0; i < nq; i++)
          out[i] = NAN;
        int64_t kd[4] = {B, Hkv, L, D}, qd[4] = {B, Hq, Lq, D};
        assert_ok(attn_kv_append(ctx, kv, tu_wrap(ctx, k, nkv, 4, kd, NULL),
                                 tu_wrap(ctx, v, nkv, 4, kd, NULL), lens, NULL));
        attn_sdpa_params sp;
        attn_sdpa_params_init(&sp);
        sp.causal = 1;
        sp.sinks = sinks;
        int64_t ld[3] = {B, Hq, Lq};
        sp.lse = tu_wrap(ctx, lse, (size_t)(B * Hq * Lq), 3, ld, NULL);
        assert_ok(attn_kv_attend(ctx, kv, tu_wrap(ctx, q, nq, 4, qd, NULL),
                                 tu_wrap(ctx, out, nq, 4, qd, NULL), n_new, &sp));
        for (int64_t b = 0; b < B; b++) {
          /* Rows 0..n_new[b]-1 are the last tokens of the sequence. */
          ref_sdpa_args a;
          memset(&a, 0, sizeof a);
          a.B = 1, a.Hq = Hq, a.Hkv = Hkv, a.Lq = n_new[b], a.Lk = lens[b], a.D = D, a.Dv = D;
          a.q = q + b * Hq * Lq * D, a.k = k + b * Hkv * L * D, a.v = v + b * Hkv * L * D;
          int64_t qs[4] = {0, Lq * D, D, 1}, ks[4] = {0, L * D, D, 1};
          memcpy(a.qs, qs, sizeof qs), memcpy(a.ks, ks, sizeof ks), memcpy(a.vs, ks, sizeof ks);
          a.causal = 1, a.bottom_right = 1, a.sinks = sinks;
          double ref[8 * Lq * D], ref_lse[8 * Lq];
          ref_sdpa(&a, ref, NULL, ref_lse, NULL);
          for (int64_t h = 0; h < Hq; h++)
            for (int64_t i = 0; i < Lq; i++) {
              float got_lse = lse[(b * Hq + h) * Lq + i];
              if (i < n_new[b])
                assert_close(got_lse, ref_lse[h * n_new[b] + i], 1e-5, 1e-6);
              else
                assert_true(got_lse == -INFINITY);
              for (int64_t d = 0; d < D; d++) {
                float got = out[((b * Hq + h) * Lq + i) * D + d];
                if (i < n_new[b])
                  assert_close(got, ref[(h * n_new[b] + i) * D + d], 1e-5, 1e-6);
                else
                  assert_true(got == 0.0f);
              }
            }
        }
        free(k), free(v), free(q), free(out);
        attn_ctx_destroy(ctx);
      }
}

/* ---- paged and contiguous agree ---- */

/* Append the same random steps to a contiguous and a paged cache and attend:
 * with blocks of 256 keys (the kernel's tile) the two run the same tiles, so
 * the results are equal bit for bit; with small blocks within rounding. */
static void paged_equals_contiguous(void **state) {
  (void)state;
  const int64_t bss[2] = {256, 3};
  for (int t = 0; t < 2; t++) {
    attn_ctx *ctx = tu_ctx(1);
    kv_case c = {"agree", 2, 4, 2, 8, 8, 0, bss[t], {0}, 0, 0, 1, 0, 0, 0, 0, 1};
    attn_kv_cache *con = make_cache(ctx, &c, 300, 0);
    c.paged = 1;
    attn_kv_cache *pag = make_cache(ctx, &c, 0, 600 / bss[t] + 4);
    tu_rng r = {7 + (uint64_t)t};
    enum { L = 24 };
    static float k[2 * 2 * L * 8], v[2 * 2 * L * 8], q[2 * 4 * L * 8], o1[2 * 4 * L * 8],
        o2[2 * 4 * L * 8];
    int64_t kd[4] = {2, 2, L, 8}, qd[4] = {2, 4, L, 8};
    attn_tensor *tk = tu_wrap(ctx, k, sizeof k / 4, 4, kd, NULL);
    attn_tensor *tv = tu_wrap(ctx, v, sizeof v / 4, 4, kd, NULL);
    attn_tensor *tq = tu_wrap(ctx, q, sizeof q / 4, 4, qd, NULL);
    attn_tensor *t1 = tu_wrap(ctx, o1, sizeof o1 / 4, 4, qd, NULL);
    attn_tensor *t2 = tu_wrap(ctx, o2, sizeof o2 / 4, 4, qd, NULL);
    int64_t lens[2] = {0, 0};
    for (int step = 0; step < 20; step++) {
      int64_t n[2];
      for (int b = 0; b < 2; b++) {
        n[b] = (int64_t)(tu_next(&r) % (L + 1));
        if (lens[b] + n[b] > 300)
          n[b] = 0;
        lens[b] += n[b];
      }
      tu_fill(&r, k, sizeof k / 4, -2, 2);
      tu_fill(&r, v, sizeof v / 4, -2, 2);
      tu_fill(&r, q, sizeof q / 4, -2, 2);
      assert_ok(attn_kv_append(ctx, con, tk, tv, n, NULL));
      assert_ok(attn_kv_append(ctx, pag, tk, tv, n, NULL));
      attn_sdpa_params sp;
      attn_sdpa_params_init(&sp);
      sp.causal = 1;
      assert_ok(attn_kv_attend(ctx, con, tq, t1, n, &sp));
      assert_ok(attn_kv_attend(ctx, pag, tq, t2, n, &sp));
      for (size_t i = 0; i < sizeof o1 / 4; i++)
        if (t == 0 ? memcmp(&o1[i], &o2[i], 4) != 0 : !(fabsf(o1[i] - o2[i]) <= 1e-6f))
          fail_msg("block size %lld, step %d, element %zu: contiguous %.9g, paged %.9g",
                   (long long)bss[t], step, i, (double)o1[i], (double)o2[i]);
    }
    attn_ctx_destroy(ctx);
  }
}

/* ---- cache operations against a model ---- */

/* Read back sequence b entirely: k [Hkv, len, D] and v. */
static void read_all(attn_ctx *ctx, attn_kv_cache *kv, int64_t b, int64_t H, int64_t D,
                     int64_t Dv, float **k, float **v, int64_t *len) {
  int64_t lens[MAXB];
  attn_kv_cache_info info = {.struct_size = sizeof info};
  assert_ok(attn_kv_cache_info_get(ctx, kv, &info, lens));
  *len = lens[b];
  *k = calloc((size_t)(H * lens[b] * D + 1), sizeof(float));
  *v = calloc((size_t)(H * lens[b] * Dv + 1), sizeof(float));
  if (!lens[b])
    return;
  int64_t kd[3] = {H, lens[b], D}, vd[3] = {H, lens[b], Dv};
  assert_ok(attn_kv_read(ctx, kv, b, 0, tu_wrap(ctx, *k, (size_t)(H * lens[b] * D), 3, kd, NULL),
                         tu_wrap(ctx, *v, (size_t)(H * lens[b] * Dv), 3, vd, NULL)));
}

static void assert_same_sequence(attn_ctx *ctx, attn_kv_cache *a, int64_t ba,
                                 attn_kv_cache *b, int64_t bb, int64_t H, int64_t D,
                                 int64_t Dv) {
  float *ka, *va, *kb, *vb;
  int64_t la, lb;
  read_all(ctx, a, ba, H, D, Dv, &ka, &va, &la);
  read_all(ctx, b, bb, H, D, Dv, &kb, &vb, &lb);
  assert_int_equal(la, lb);
  assert_memory_equal(ka, kb, (size_t)(H * la * D) * sizeof(float) + 1);
  assert_memory_equal(va, vb, (size_t)(H * la * Dv) * sizeof(float) + 1);
  free(ka), free(va), free(kb), free(vb);
}

/* Append n tokens of seeded values to sequence b only. */
static void append_one(attn_ctx *ctx, attn_kv_cache *kv, int64_t B, int64_t b, int64_t n,
                       uint64_t seed, const attn_kv_append_params *ap) {
  int64_t H = 2, D = 6, Dv = 4, L = n ? n : 1;
  float *k = malloc((size_t)(B * H * L * D) * sizeof(float));
  float *v = malloc((size_t)(B * H * L * Dv) * sizeof(float));
  tu_rng r = {seed};
  tu_fill(&r, k, (size_t)(B * H * L * D), -1, 1);
  tu_fill(&r, v, (size_t)(B * H * L * Dv), -1, 1);
  int64_t kd[4] = {B, H, L, D}, vd[4] = {B, H, L, Dv}, counts[MAXB] = {0};
  counts[b] = n;
  attn_status st =
      attn_kv_append(ctx, kv, tu_wrap(ctx, k, (size_t)(B * H * L * D), 4, kd, NULL),
                     tu_wrap(ctx, v, (size_t)(B * H * L * Dv), 4, vd, NULL), counts, ap);
  if (st != ATTN_OK)
    fail_msg("append: %s", attn_ctx_last_error(ctx));
  free(k), free(v);
}

static attn_kv_cache *small_cache(attn_ctx *ctx, int paged, int64_t bs, int64_t blocks) {
  kv_case c = {"small", 3, 2, 2, 6, 4, paged, bs, {0}, 0, 0, 0, 0, 0, 0, 0, 1};
  return make_cache(ctx, &c, paged ? 0 : 64, blocks);
}

static int64_t free_blocks(attn_ctx *ctx, attn_kv_cache *kv) {
  attn_kv_cache_info info = {.struct_size = sizeof info};
  assert_ok(attn_kv_cache_info_get(ctx, kv, &info, NULL));
  return info.free_blocks;
}

static void truncate_then_append(void **state) {
  (void)state;
  for (int pg = 0; pg < 2; pg++) {
    attn_ctx *ctx = tu_ctx(1);
    attn_kv_cache *a = small_cache(ctx, pg, 4, 30), *b = small_cache(ctx, pg, 4, 30);
    append_one(ctx, a, 3, 1, 10, 1, NULL);
    append_one(ctx, b, 3, 1, 10, 1, NULL);
    append_one(ctx, a, 3, 1, 7, 2, NULL); /* rolled back below */
    assert_ok(attn_kv_truncate(ctx, a, 1, 10));
    append_one(ctx, a, 3, 1, 5, 3, NULL);
    append_one(ctx, b, 3, 1, 5, 3, NULL);
    assert_same_sequence(ctx, a, 1, b, 1, 2, 6, 4);
    if (pg)
      assert_int_equal(free_blocks(ctx, a), free_blocks(ctx, b));
    /* Into the middle of a block, then the rest. */
    assert_ok(attn_kv_truncate(ctx, a, 1, 6));
    assert_ok(attn_kv_truncate(ctx, b, 1, 6));
    append_one(ctx, a, 3, 1, 3, 4, NULL);
    append_one(ctx, b, 3, 1, 3, 4, NULL);
    assert_same_sequence(ctx, a, 1, b, 1, 2, 6, 4);
    assert_ok(attn_kv_reset(ctx, a, -1));
    if (pg)
      assert_int_equal(free_blocks(ctx, a), 30);
    attn_ctx_destroy(ctx);
  }
}

static void copy_diverges(void **state) {
  (void)state;
  for (int pg = 0; pg < 2; pg++) {
    attn_ctx *ctx = tu_ctx(1);
    attn_kv_cache *kv = small_cache(ctx, pg, 8, 12), *model = small_cache(ctx, 0, 0, 0);
    append_one(ctx, kv, 3, 0, 21, 11, NULL); /* blocks: 8 + 8 + 5 of 8 */
    append_one(ctx, model, 3, 0, 21, 11, NULL);
    append_one(ctx, kv, 3, 2, 3, 12, NULL); /* dst held something */
    assert_ok(attn_kv_copy(ctx, kv, 2, 0));
    if (pg)
      assert_int_equal(free_blocks(ctx, kv), 12 - 3); /* shared, not copied */
    assert_ok(attn_kv_copy(ctx, model, 2, 0));
    /* Diverge: both ends of the copy append different tokens. */
    append_one(ctx, kv, 3, 2, 6, 13, NULL);
    append_one(ctx, model, 3, 2, 6, 13, NULL);
    if (pg) /* copy on write of the shared last block, plus one new block */
      assert_int_equal(free_blocks(ctx, kv), 12 - 3 - 2);
    append_one(ctx, kv, 3, 0, 2, 14, NULL);
    append_one(ctx, model, 3, 0, 2, 14, NULL);
    for (int64_t b = 0; b < 3; b += 2)
      assert_same_sequence(ctx, kv, b, model, b, 2, 6, 4);
    /* Truncating the copy into a shared block, then appending, copies it. */
    assert_ok(attn_kv_truncate(ctx, kv, 2, 12));
    assert_ok(attn_kv_truncate(ctx, model, 2, 12));
    append_one(ctx, kv, 3, 2, 1, 15, NULL);
    append_one(ctx, model, 3, 2, 1, 15, NULL);
    for (int64_t b = 0; b < 3; b += 2)
      assert_same_sequence(ctx, kv, b, model, b, 2, 6, 4);
    /* Copy onto a sequence that shares blocks with the source, and back. */
    assert_ok(attn_kv_copy(ctx, kv, 0, 2));
    assert_ok(attn_kv_copy(ctx, model, 0, 2));
    assert_ok(attn_kv_copy(ctx, kv, 0, 0));
    assert_same_sequence(ctx, kv, 0, model, 0, 2, 6, 4);
    assert_ok(attn_kv_reset(ctx, kv, 0));
    assert_ok(attn_kv_reset(ctx, kv, 2));
    if (pg)
      assert_int_equal(free_blocks(ctx, kv), 12);
    attn_ctx_destroy(ctx);
  }
}

/* A step in which every holder of a shared, partly filled block appends:
 * all but the last copy it (the last finds it unshared), so the step needs
 * one block fewer than the holders. A pool with exactly that many free
 * blocks takes it; one block fewer is refused, changing nothing. */
static void shared_block_every_holder_appends(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  enum { B = 3, H = 2, D = 6, Dv = 4 };
  attn_kv_cache *tight = small_cache(ctx, 1, 8, 2), *kv = small_cache(ctx, 1, 8, 3),
                *model = small_cache(ctx, 0, 0, 0);
  attn_kv_cache *all[3] = {tight, kv, model};
  for (int c = 0; c < 3; c++) {
    append_one(ctx, all[c], B, 0, 5, 31, NULL);
    assert_ok(attn_kv_copy(ctx, all[c], 1, 0));
    assert_ok(attn_kv_copy(ctx, all[c], 2, 0));
  }
  assert_int_equal(free_blocks(ctx, tight), 1);
  assert_int_equal(free_blocks(ctx, kv), 2);
  static float k[B * H * D], v[B * H * Dv];
  tu_rng r = {32};
  tu_fill(&r, k, sizeof k / 4, -1, 1);
  tu_fill(&r, v, sizeof v / 4, -1, 1);
  int64_t kd[4] = {B, H, 1, D}, vd[4] = {B, H, 1, Dv};
  attn_tensor *tk = tu_wrap(ctx, k, sizeof k / 4, 4, kd, NULL);
  attn_tensor *tv = tu_wrap(ctx, v, sizeof v / 4, 4, vd, NULL);
  /* Two copies needed, one block free. */
  assert_int_equal(attn_kv_append(ctx, tight, tk, tv, NULL, NULL), ATTN_ERR_NO_MEMORY);
  assert_int_equal(free_blocks(ctx, tight), 1);
  for (int64_t b = 0; b < B; b++)
    assert_same_sequence(ctx, tight, b, model, b, H, D, Dv);
  /* Two free: the first two holders copy, the third writes in place. */
  assert_ok(attn_kv_append(ctx, kv, tk, tv, NULL, NULL));
  assert_ok(attn_kv_append(ctx, model, tk, tv, NULL, NULL));
  assert_int_equal(free_blocks(ctx, kv), 0);
  for (int64_t b = 0; b < B; b++)
    assert_same_sequence(ctx, kv, b, model, b, H, D, Dv);
  /* With two holders left, a step of both takes the tight pool's block. */
  assert_ok(attn_kv_reset(ctx, tight, 2));
  int64_t both[B] = {1, 1, 0};
  assert_ok(attn_kv_append(ctx, tight, tk, tv, both, NULL));
  assert_int_equal(free_blocks(ctx, tight), 0);
  for (int64_t b = 0; b < 2; b++)
    assert_same_sequence(ctx, tight, b, model, b, H, D, Dv);
  attn_ctx_destroy(ctx);
}

/* RoPE on append equals attn_rope on the keys at their absolute positions. */
static void rope_on_append(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  attn_kv_cache *kv = small_cache(ctx, 1, 4, 20);
  attn_rope_params rp;
  attn_rope_params_init(&rp);
  rp.style = ATTN_ROPE_INTERLEAVED;
  rp.rotary_dim = 4;
  rp.theta = 500;
  attn_kv_append_params ap;
  attn_kv_append_params_init(&ap);
  ap.rope = &rp;
  append_one(ctx, kv, 3, 1, 5, 21, &ap);
  append_one(ctx, kv, 3, 1, 3, 22, &ap);
  float *k, *v;
  int64_t len;
  read_all(ctx, kv, 1, 2, 6, 4, &k, &v, &len);
  assert_int_equal(len, 8);
  /* The same raw keys, rotated by the reference at positions 0..7. */
  double want[2 * 8 * 6];
  const int64_t parts[2][2] = {{0, 5}, {5, 3}};
  for (int s = 0; s < 2; s++) {
    int64_t n = parts[s][1];
    float *raw = malloc((size_t)(3 * 2 * n * 6) * sizeof(float));
    tu_rng r = {(uint64_t)(21 + s)};
    tu_fill(&r, raw, (size_t)(3 * 2 * n * 6), -1, 1);
    for (int64_t h = 0; h < 2; h++)
      for (int64_t i = 0; i < n; i++)
        for (int64_t e = 0; e < 6; e++)
          want[(h * 8 + parts[s][0] + i) * 6 + e] = raw[((1 * 2 + h) * n + i) * 6 + e];
    free(raw);
  }
  int64_t pos[8] = {0, 1, 2, 3, 4, 5, 6, 7};
  ref_rope(1, 1, 2, 8, 6, 4, 500, pos, want);
  for (int i = 0; i < 2 * 8 * 6; i++)
    assert_close(k[i], want[i], 1e-6, 1e-7);
  free(k), free(v);
  attn_ctx_destroy(ctx);
}

#if defined(__linux__)
/* A token-major [L][B][H][w] float buffer whose rows i >= open lie on pages
 * that cannot be read or written: *map and *map_bytes for munmap. */
static float *guarded_rows(int64_t B, int64_t H, int64_t w, int64_t L, int64_t open, tu_rng *r,
                           char **map, size_t *map_bytes) {
  size_t ps = (size_t)sysconf(_SC_PAGESIZE), row = (size_t)(B * H * w) * sizeof(float);
  size_t open_bytes = (size_t)open * row, all = (size_t)L * row;
  assert_true(open_bytes <= ps);
  *map_bytes = ps + (all + ps - 1) / ps * ps;
  *map = mmap(NULL, *map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  assert_true(*map != MAP_FAILED);
  float *x = (float *)(void *)(*map + ps - open_bytes);
  tu_fill(r, x, open_bytes / sizeof(float), -1, 1);
  assert_int_equal(mprotect(*map + ps, *map_bytes - ps, PROT_NONE), 0);
  return x;
}

/* attn_kv_append reads (and, with RoPE, rotates) only rows 0..n_new[b]-1 of
 * each sequence: the rows of k_new and v_new past every count lie on pages
 * that cannot be read (with RoPE all B * L key rows were widened and rotated,
 * whatever the counts: a fault here), and the readable rows past a count
 * hold NaN, which must not reach the cache. The keys stored are the raw rows,
 * or the reference's rotation at len_b + i; the values the raw rows. */
static void append_reads_only_counted_rows(void **state) {
  (void)state;
  enum { B = 3, H = 2, D = 6, DV = 4, L = 64, R = 4, OPEN = 3 };
  const int64_t n_new[B] = {1, 3, 0}, before[B] = {5, 2, 0};
  tu_rng r = {77};
  char *kmap, *vmap;
  size_t kmap_bytes, vmap_bytes;
  float *k = guarded_rows(B, H, D, L, OPEN, &r, &kmap, &kmap_bytes);
  float *v = guarded_rows(B, H, DV, L, OPEN, &r, &vmap, &vmap_bytes);
  for (int64_t i = 0; i < OPEN; i++) /* readable rows past a count */
    for (int64_t b = 0; b < B; b++)
      if (i >= n_new[b]) {
        for (int64_t e = 0; e < H * D; e++)
          k[(i * B + b) * H * D + e] = NAN;
        for (int64_t e = 0; e < H * DV; e++)
          v[(i * B + b) * H * DV + e] = NAN;
      }
  attn_rope_params rp;
  attn_rope_params_init(&rp);
  rp.style = ATTN_ROPE_INTERLEAVED, rp.rotary_dim = R, rp.theta = 500;
  for (int cfg = 0; cfg < 4; cfg++) {
    int pg = cfg & 1, rot = cfg >> 1;
    attn_kv_append_params ap;
    attn_kv_append_params_init(&ap);
    ap.rope = rot ? &rp : NULL;
    attn_ctx *ctx = tu_ctx(2);
    attn_kv_cache *kv = small_cache(ctx, pg, 4, 30);
    for (int64_t b = 0; b < B; b++)
      if (before[b])
        append_one(ctx, kv, B, b, before[b], (uint64_t)(10 + b), &ap);
    int64_t kd[4] = {B, H, L, D}, ks[4] = {H * D, D, B * H * D, 1};
    int64_t vd[4] = {B, H, L, DV}, vs[4] = {H * DV, DV, B * H * DV, 1};
    attn_tensor *tk = tu_wrap(ctx, k, (size_t)(L * B * H * D), 4, kd, ks);
    attn_tensor *tv = tu_wrap(ctx, v, (size_t)(L * B * H * DV), 4, vd, vs);
    assert_ok(attn_kv_append(ctx, kv, tk, tv, n_new, &ap));
    int64_t lens[MAXB];
    attn_kv_cache_info info = {.struct_size = sizeof info};
    assert_ok(attn_kv_cache_info_get(ctx, kv, &info, lens));
    for (int64_t b = 0; b < B; b++) {
      assert_int_equal(lens[b], before[b] + n_new[b]);
      int64_t n = n_new[b];
      if (!n)
        continue;
      float gk[H * OPEN * D], gv[H * OPEN * DV];
      double want[H * OPEN * D];
      int64_t pos[OPEN], gkd[3] = {H, n, D}, gvd[3] = {H, n, DV};
      for (int64_t i = 0; i < n; i++) {
        pos[i] = before[b] + i;
        for (int64_t h = 0; h < H; h++)
          for (int64_t e = 0; e < D; e++)
            want[(h * n + i) * D + e] = k[((i * B + b) * H + h) * D + e];
      }
      if (rot)
        ref_rope(1, 1, H, n, D, R, 500, pos, want);
      assert_ok(attn_kv_read(ctx, kv, b, before[b],
                             tu_wrap(ctx, gk, (size_t)(H * n * D), 3, gkd, NULL),
                             tu_wrap(ctx, gv, (size_t)(H * n * DV), 3, gvd, NULL)));
      for (int64_t j = 0; j < H * n * D; j++)
        assert_close(gk[j], want[j], 1e-6, 1e-7);
      for (int64_t h = 0; h < H; h++)
        for (int64_t i = 0; i < n; i++)
          for (int64_t e = 0; e < DV; e++)
            assert_true(gv[(h * n + i) * DV + e] == v[((i * B + b) * H + h) * DV + e]);
    }
    attn_ctx_destroy(ctx);
  }
  munmap(kmap, kmap_bytes);
  munmap(vmap, vmap_bytes);
}
#endif

/* A wrapped [B, cap, H, D] buffer (strides): appends land in caller memory. */
static void wrap_caller_memory(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  enum { B = 2, CAP = 10, H = 2, D = 6, DV = 4 };
  static float kmem[B * CAP * H * D], vmem[B * CAP * H * DV];
  for (size_t i = 0; i < sizeof kmem / 4; i++)
    kmem[i] = (float)i;
  int64_t kd[4] = {B, H, CAP, D}, vd[4] = {B, H, CAP, DV};
  int64_t ks[4] = {CAP * H * D, D, H * D, 1}, vs[4] = {CAP * H * DV, DV, H * DV, 1};
  attn_tensor *tk = tu_wrap(ctx, kmem, sizeof kmem / 4, 4, kd, ks);
  attn_tensor *tv = tu_wrap(ctx, vmem, sizeof vmem / 4, 4, vd, vs);
  int64_t lens[B] = {3, 0};
  attn_kv_cache *kv = NULL;
  assert_ok(attn_kv_cache_wrap(ctx, tk, tv, lens, &kv));
  float row[H * D];
  int64_t rd[3] = {H, 1, D};
  assert_ok(attn_kv_read(ctx, kv, 0, 2, tu_wrap(ctx, row, H * D, 3, rd, NULL), NULL));
  for (int h = 0; h < H; h++)
    for (int e = 0; e < D; e++)
      assert_true(row[h * D + e] == (float)((2 * H + h) * D + e));
  append_one(ctx, kv, B, 1, 4, 31, NULL);
  tu_rng r = {31};
  float *src = malloc(B * H * 4 * D * sizeof(float));
  tu_fill(&r, src, B * H * 4 * D, -1, 1);
  for (int h = 0; h < H; h++)
    for (int i = 0; i < 4; i++)
      assert_memory_equal(kmem + CAP * H * D + (i * H + h) * D, src + ((H + h) * 4 + i) * D,
                          D * sizeof(float));
  free(src);
  /* Past the capacity: refused, nothing written. */
  float before[sizeof kmem / 4];
  memcpy(before, kmem, sizeof kmem);
  int64_t big[4] = {B, H, 8, D}, bigv[4] = {B, H, 8, DV};
  float *kb = calloc(B * H * 8 * D, 4), *vb = calloc(B * H * 8 * DV, 4);
  assert_status(attn_kv_append(ctx, kv, tu_wrap(ctx, kb, B * H * 8 * D, 4, big, NULL),
                               tu_wrap(ctx, vb, B * H * 8 * DV, 4, bigv, NULL), NULL, NULL),
                ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "capacity");
  assert_memory_equal(before, kmem, sizeof kmem);
  free(kb), free(vb);
  attn_ctx_destroy(ctx);
}

/* Empty and absurd shapes: a RoPE append of no token (its plan divided by
 * L = 0), wrapped caches of no element per head (2^40 heads of D = 0 were
 * walked per token) or of 2^62 sequences (a wrapped size for their
 * lengths), and a read range past int64 (its message overflowed). */
static void empty_and_huge_shapes(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(2);
  attn_kv_cache_params cp;
  attn_kv_cache_params_init(&cp);
  cp.batch = 2, cp.kv_heads = 1, cp.head_dim = 4, cp.capacity = 3;
  attn_kv_cache *kv = NULL;
  assert_ok(attn_kv_cache_create(ctx, &cp, &kv));
  float buf[8] = {0};
  int64_t none[4] = {2, 1, 0, 4};
  attn_rope_params rp;
  attn_rope_params_init(&rp);
  attn_kv_append_params ap;
  attn_kv_append_params_init(&ap);
  ap.rope = &rp;
  attn_tensor *e = tu_wrap(ctx, buf, 8, 4, none, NULL);
  assert_ok(attn_kv_append(ctx, kv, e, e, NULL, &ap));
  int64_t lens[2] = {-1, -1};
  attn_kv_cache_info info = {.struct_size = sizeof info};
  assert_ok(attn_kv_cache_info_get(ctx, kv, &info, lens));
  assert_true(lens[0] == 0 && lens[1] == 0);
  /* start + n past int64: refused. */
  int64_t rd[3] = {1, 1, 4};
  assert_status(attn_kv_read(ctx, kv, 0, INT64_MAX, tu_wrap(ctx, buf, 8, 3, rd, NULL), NULL),
                ATTN_ERR_INVALID_ARG);
  assert_ok(attn_kv_cache_free(ctx, kv));
  /* Wrapped: Hkv, D and Dv of at least 1, as attn_kv_cache_create. */
  const int64_t shapes[][4] = {{1, (int64_t)1 << 40, 5, 0}, {1, 0, 5, 4}, {2, 3, 4, 0}};
  for (int i = 0; i < 3; i++) {
    kv = (attn_kv_cache *)0x1;
    attn_tensor *k = tu_wrap(ctx, buf, 8, 4, shapes[i], NULL);
    assert_status(attn_kv_cache_wrap(ctx, k, k, NULL, &kv), ATTN_ERR_SHAPE);
    assert_error_mentions(ctx, "must be >= 1");
    assert_ptr_equal(kv, (attn_kv_cache *)0x1);
  }
  /* 2^62 (or 2^61 + 1) sequences of capacity 0: their int64 lengths overflow. */
  for (int i = 0; i < 2; i++) {
    int64_t kd[4] = {i ? ((int64_t)1 << 61) + 1 : (int64_t)1 << 62, 1, 0, 1};
    attn_tensor *k = tu_wrap(ctx, buf, 8, 4, kd, NULL), *v = tu_wrap(ctx, buf + 4, 4, 4, kd, NULL);
    assert_status(attn_kv_cache_wrap(ctx, k, v, NULL, &kv), ATTN_ERR_OVERFLOW);
    assert_error_mentions(ctx, "sequences");
  }
  attn_ctx_destroy(ctx);
}

/* ---- bad input: a clear status and nothing changed ---- */

typedef struct {
  float *k[MAXB], *v[MAXB];
  int64_t lens[MAXB], free_blocks;
} snapshot;

static void snap(attn_ctx *ctx, attn_kv_cache *kv, snapshot *s) {
  for (int64_t b = 0; b < 3; b++)
    read_all(ctx, kv, b, 2, 6, 4, &s->k[b], &s->v[b], &s->lens[b]);
  s->free_blocks = free_blocks(ctx, kv);
}

static void assert_unchanged(attn_ctx *ctx, attn_kv_cache *kv, const snapshot *s,
                             const char *what) {
  snapshot now;
  snap(ctx, kv, &now);
  for (int64_t b = 0; b < 3; b++) {
    if (now.lens[b] != s->lens[b] ||
        memcmp(now.k[b], s->k[b], (size_t)(2 * s->lens[b] * 6) * sizeof(float)) ||
        memcmp(now.v[b], s->v[b], (size_t)(2 * s->lens[b] * 4) * sizeof(float)))
      fail_msg("%s changed sequence %lld", what, (long long)b);
    free(now.k[b]), free(now.v[b]);
  }
  if (now.free_blocks != s->free_blocks)
    fail_msg("%s changed the free blocks: %lld -> %lld", what, (long long)s->free_blocks,
             (long long)now.free_blocks);
}

static void bad_input_changes_nothing(void **state) {
  (void)state;
  for (int pg = 0; pg < 2; pg++) {
    attn_ctx *ctx = tu_ctx(1), *other = tu_ctx(1);
    /* contiguous capacity 64; paged 10 blocks of 4 = 40 tokens */
    attn_kv_cache *kv = small_cache(ctx, pg, 4, 10);
    append_one(ctx, kv, 3, 0, 13, 1, NULL);
    append_one(ctx, kv, 3, 1, 2, 2, NULL);
    assert_ok(attn_kv_copy(ctx, kv, 2, 0));
    snapshot s;
    snap(ctx, kv, &s);
    float *k = calloc(3 * 2 * 60 * 8, 4), *v = calloc(3 * 2 * 60 * 8, 4);
    int64_t kd[4] = {3, 2, 60, 6}, vd[4] = {3, 2, 60, 4};
    attn_tensor *tk = tu_wrap(ctx, k, 3 * 2 * 60 * 6, 4, kd, NULL);
    attn_tensor *tv = tu_wrap(ctx, v, 3 * 2 * 60 * 4, 4, vd, NULL);
    struct {
      const char *what;
      int64_t n[3];
      attn_status want;
      const char *mention;
    } counts[] = {
        {"past capacity", {1, 0, 55}, ATTN_ERR_INVALID_ARG, "capacity"},
        {"negative count", {1, -1, 0}, ATTN_ERR_INVALID_ARG, "n_new[1]"},
        {"count past L", {61, 0, 0}, ATTN_ERR_INVALID_ARG, "n_new[0]"},
        /* paged: 4 + 3 + 5 blocks (one copy on write) but 7 free */
        {"past the pool", {15, 10, 17}, pg ? ATTN_ERR_NO_MEMORY : ATTN_OK, "pool"},
    };
    for (size_t i = 0; i < sizeof counts / sizeof counts[0]; i++) {
      if (counts[i].want == ATTN_OK)
        continue;
      assert_status(attn_kv_append(ctx, kv, tk, tv, counts[i].n, NULL), counts[i].want);
      assert_error_mentions(ctx, counts[i].mention);
      assert_unchanged(ctx, kv, &s, counts[i].what);
    }
    int64_t one[3] = {1, 1, 1};
    /* Wrong dims and heads. */
    int64_t bad_dims[][4] = {{2, 2, 60, 6}, {3, 1, 60, 6}, {3, 2, 60, 5}};
    for (int i = 0; i < 3; i++) {
      attn_tensor *t = tu_wrap(ctx, k, 3 * 2 * 60 * 6, 4, bad_dims[i], NULL);
      assert_status(attn_kv_append(ctx, kv, t, tv, one, NULL), ATTN_ERR_SHAPE);
      assert_status(attn_kv_append(ctx, kv, tk, t, one, NULL), ATTN_ERR_SHAPE);
      assert_unchanged(ctx, kv, &s, "wrong dims");
    }
    /* Bad RoPE: odd rotary dim, an offset. */
    attn_rope_params rp;
    attn_rope_params_init(&rp);
    rp.rotary_dim = 3;
    attn_kv_append_params ap;
    attn_kv_append_params_init(&ap);
    ap.rope = &rp;
    assert_status(attn_kv_append(ctx, kv, tk, tv, one, &ap), ATTN_ERR_INVALID_ARG);
    assert_error_mentions(ctx, "params.rope.rotary_dim");
    rp.rotary_dim = 0;
    rp.offset = 5;
    assert_status(attn_kv_append(ctx, kv, tk, tv, one, &ap), ATTN_ERR_INVALID_ARG);
    assert_error_mentions(ctx, "params.rope.offset and positions");
    assert_unchanged(ctx, kv, &s, "bad rope");
    /* Truncate, reset, copy, read out of range. */
    assert_status(attn_kv_truncate(ctx, kv, 0, 14), ATTN_ERR_INVALID_ARG);
    assert_status(attn_kv_truncate(ctx, kv, 0, -1), ATTN_ERR_INVALID_ARG);
    assert_status(attn_kv_truncate(ctx, kv, 3, 0), ATTN_ERR_INVALID_ARG);
    assert_status(attn_kv_reset(ctx, kv, -2), ATTN_ERR_INVALID_ARG);
    assert_status(attn_kv_reset(ctx, kv, 3), ATTN_ERR_INVALID_ARG);
    assert_status(attn_kv_copy(ctx, kv, 0, 3), ATTN_ERR_INVALID_ARG);
    assert_status(attn_kv_copy(ctx, kv, -1, 0), ATTN_ERR_INVALID_ARG);
    float rk[2 * 5 * 6];
    int64_t rd[3] = {2, 5, 6};
    attn_tensor *trk = tu_wrap(ctx, rk, 60, 3, rd, NULL);
    assert_status(attn_kv_read(ctx, kv, 1, 0, trk, NULL), ATTN_ERR_INVALID_ARG);
    assert_status(attn_kv_read(ctx, kv, 0, 9, trk, NULL), ATTN_ERR_INVALID_ARG);
    assert_status(attn_kv_read(ctx, kv, 0, -1, trk, NULL), ATTN_ERR_INVALID_ARG);
    assert_status(attn_kv_read(ctx, kv, 0, 0, NULL, NULL), ATTN_ERR_NULL_ARG);
    assert_status(attn_kv_read(ctx, kv, 0, 0, NULL, trk), ATTN_ERR_SHAPE);
    /* Attend: queries beyond a sequence's length, bad heads, masks. */
    float q[3 * 4 * 3 * 6], o[3 * 4 * 3 * 4];
    int64_t qd[4] = {3, 4, 3, 6}, od[4] = {3, 4, 3, 4};
    attn_tensor *tq = tu_wrap(ctx, q, sizeof q / 4, 4, qd, NULL);
    attn_tensor *to = tu_wrap(ctx, o, sizeof o / 4, 4, od, NULL);
    for (size_t i = 0; i < sizeof o / 4; i++)
      o[i] = 7;
    assert_status(attn_kv_attend(ctx, kv, tq, to, NULL, NULL), ATTN_ERR_INVALID_ARG);
    assert_error_mentions(ctx, "length 2");
    int64_t too_many[3] = {3, 3, 4};
    assert_status(attn_kv_attend(ctx, kv, tq, to, too_many, NULL), ATTN_ERR_INVALID_ARG);
    int64_t q3d[4] = {3, 3, 3, 6};
    assert_status(
        attn_kv_attend(ctx, kv, tu_wrap(ctx, q, sizeof q / 4, 4, q3d, NULL), to, one, NULL),
        ATTN_ERR_SHAPE);
    attn_sdpa_params sp;
    attn_sdpa_params_init(&sp);
    int64_t kvl[3] = {1, 1, 1};
    sp.kv_lens = kvl;
    assert_status(attn_kv_attend(ctx, kv, tq, to, one, &sp), ATTN_ERR_INVALID_ARG);
    /* The logits output has no place here (was ignored: never written). */
    sp.kv_lens = NULL;
    float lg[3 * 4 * 3 * 13];
    int64_t lgd[4] = {3, 4, 3, 13};
    for (size_t i = 0; i < sizeof lg / 4; i++)
      lg[i] = 7;
    sp.logits = tu_wrap(ctx, lg, sizeof lg / 4, 4, lgd, NULL);
    assert_status(attn_kv_attend(ctx, kv, tq, to, one, &sp), ATTN_ERR_INVALID_ARG);
    assert_error_mentions(ctx, "logits");
    for (size_t i = 0; i < sizeof lg / 4; i++)
      assert_true(lg[i] == 7);
    for (size_t i = 0; i < sizeof o / 4; i++)
      assert_true(o[i] == 7);
    /* Handles. */
    assert_status(attn_kv_truncate(other, kv, 0, 0), ATTN_ERR_BAD_HANDLE);
    assert_status(attn_kv_append(ctx, NULL, tk, tv, one, NULL), ATTN_ERR_NULL_ARG);
    assert_status(attn_kv_append(NULL, kv, tk, tv, one, NULL), ATTN_ERR_NULL_ARG);
    assert_status(attn_kv_cache_free(other, kv), ATTN_ERR_BAD_HANDLE);
    assert_unchanged(ctx, kv, &s, "bad calls");
    for (int64_t b = 0; b < 3; b++)
      free(s.k[b]), free(s.v[b]);
    free(k), free(v);
    assert_ok(attn_kv_cache_free(ctx, kv));
    assert_ok(attn_kv_cache_free(ctx, NULL));
    attn_ctx_destroy(other);
    attn_ctx_destroy(ctx);
  }
}

static void create_params(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  attn_kv_cache *kv = NULL;
  attn_kv_cache_params p;
  attn_kv_cache_params_init(&p);
  assert_status(attn_kv_cache_create(ctx, &p, &kv), ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "params.batch");
  p.batch = 2, p.kv_heads = 1, p.head_dim = 4, p.capacity = 8;
  p.dtype = 7;
  assert_status(attn_kv_cache_create(ctx, &p, &kv), ATTN_ERR_UNSUPPORTED);
  p.dtype = 0, p.layout = 2;
  assert_status(attn_kv_cache_create(ctx, &p, &kv), ATTN_ERR_INVALID_ARG);
  p.layout = ATTN_KV_PAGED;
  assert_status(attn_kv_cache_create(ctx, &p, &kv), ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "num_blocks");
  p.num_blocks = 1; /* capacity 8 > 1 block of 16 is fine; 17 is not */
  p.capacity = 17;
  assert_status(attn_kv_cache_create(ctx, &p, &kv), ATTN_ERR_INVALID_ARG);
  p.capacity = 0, p.head_dim = INT64_MAX / 2;
  assert_status(attn_kv_cache_create(ctx, &p, &kv), ATTN_ERR_OVERFLOW);
  assert_null(kv);
  p.head_dim = 4;
  assert_ok(attn_kv_cache_create(ctx, &p, &kv));
  attn_kv_cache_info info = {.struct_size = sizeof info};
  assert_ok(attn_kv_cache_info_get(ctx, kv, &info, NULL));
  assert_int_equal(info.capacity, 16);
  assert_int_equal(info.block_size, 16);
  assert_int_equal(info.value_dim, 4);
  assert_int_equal(info.free_blocks, 1);
  /* An older caller's smaller info struct is filled only that far. */
  unsigned char small[sizeof(size_t) + 8 + 4];
  memset(small, 0xab, sizeof small);
  size_t sz = sizeof(size_t) + 8;
  memcpy(small, &sz, sizeof sz);
  assert_ok(attn_kv_cache_info_get(ctx, kv, (attn_kv_cache_info *)(void *)small, NULL));
  assert_int_equal(small[sizeof small - 1], 0xab);
  assert_ok(attn_kv_cache_free(ctx, kv));
  assert_status(attn_kv_cache_free(ctx, kv), ATTN_ERR_BAD_HANDLE);
  attn_ctx_destroy(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(decode_equals_full_forward),
      cmocka_unit_test(long_cache_split),
      cmocka_unit_test(padding_rows_long_cache),
      cmocka_unit_test(paged_tile_ends_inside_block),
      cmocka_unit_test(paged_equals_contiguous),
      cmocka_unit_test(paged_decode_block_groups),
      cmocka_unit_test(truncate_then_append),
      cmocka_unit_test(copy_diverges),
      cmocka_unit_test(shared_block_every_holder_appends),
      cmocka_unit_test(rope_on_append),
#if defined(__linux__)
      cmocka_unit_test(append_reads_only_counted_rows),
#endif
      cmocka_unit_test(wrap_caller_memory),
      cmocka_unit_test(bad_input_changes_nothing),
      cmocka_unit_test(create_params),
      cmocka_unit_test(empty_and_huge_shapes),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
