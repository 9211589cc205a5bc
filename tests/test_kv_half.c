/* KV caches stored in F16 / BF16.
 *
 * What is checked, and against what (nothing here runs the library's
 * conversion code to make expected values: tests/reference/ref_half.c
 * rounds, ref_sdpa.c attends, ref_posenc.c rotates):
 * - append then read: every stored element is the input rounded once to the
 *   cache's type (bits, NaN/Inf/overflow/subnormals included), for F32 and
 *   half inputs, contiguous, paged and wrapped caches; reads convert back
 *   exactly (to F32 or the cache's type) or with one rounding.
 * - attention over a half cache: decode in chunks against the float64
 *   reference run on the cache's rounded contents. The library widens the
 *   half tiles exactly, so the F32 bound holds:
 *     |got - want| <= 1e-5 * mag + 1e-6   (mag: sum_j w_j |v_j|),
 *   plus half an ULP of the output's type for a half output.
 * - RoPE on append: rotated in float, rounded once: within one ULP of the
 *   cache's type of the float64 rotation.
 * - the decoder layer over a half cache against the float64 layer
 *   reference (which keeps K/V in float64): the rounding of K and V is the
 *   only extra error; bound in mha_half_cache.
 * - NaN/Inf in hidden half keys and values change nothing. */
#include "test_util.h"

#include <stdbool.h>

#include "ref_half.h"
#include "ref_mha.h"
#include "ref_posenc.h"
#include "ref_sdpa.h"

static const int32_t DTS[3] = {ATTN_DTYPE_F32, ATTN_DTYPE_F16, ATTN_DTYPE_BF16};

static size_t esize(int32_t dt) { return dt == ATTN_DTYPE_F32 ? 4 : 2; }

/* Element i of a dt array as f32 bits (exact; the reference's widening). */
static uint32_t get_bits(const void *a, int32_t dt, size_t i) {
  if (dt == ATTN_DTYPE_F32)
    return ((const uint32_t *)a)[i];
  uint16_t h = ((const uint16_t *)a)[i];
  return dt == ATTN_DTYPE_F16 ? ref_from_f16(h) : ref_from_bf16(h);
}

/* Store f32 bits x into element i of a dt array, rounded by the reference. */
static void put_bits(void *a, int32_t dt, size_t i, uint32_t x) {
  if (dt == ATTN_DTYPE_F32)
    ((uint32_t *)a)[i] = x;
  else
    ((uint16_t *)a)[i] = dt == ATTN_DTYPE_F16 ? ref_to_f16(x) : ref_to_bf16(x);
}

/* f32 bits x rounded to dt by the reference: as its own pattern (16 bits
 * for a half type), and back as f32 bits (exact). */
static uint32_t raw_of(int32_t dt, uint32_t x) {
  return dt == ATTN_DTYPE_F32 ? x : dt == ATTN_DTYPE_F16 ? ref_to_f16(x) : ref_to_bf16(x);
}
static uint32_t round_to(int32_t dt, uint32_t x) {
  uint32_t r = raw_of(dt, x);
  return dt == ATTN_DTYPE_F32 ? r : dt == ATTN_DTYPE_F16 ? ref_from_f16((uint16_t)r)
                                                          : ref_from_bf16((uint16_t)r);
}

/* The raw pattern of element i (bits of its own width). */
static uint32_t raw(const void *a, int32_t dt, size_t i) {
  return dt == ATTN_DTYPE_F32 ? ((const uint32_t *)a)[i] : ((const uint16_t *)a)[i];
}

static attn_tensor *wrap_dt(attn_ctx *ctx, int32_t dt, void *data, int32_t nd,
                            const int64_t *dims) {
  size_t n = 1;
  for (int32_t i = 0; i < nd; i++)
    n *= (size_t)dims[i];
  attn_tensor *t = NULL;
  attn_status st = attn_tensor_wrap(ctx, dt, nd, dims, NULL, data, n * esize(dt), &t);
  if (st != ATTN_OK)
    fail_msg("attn_tensor_wrap: %s", attn_ctx_last_error(ctx));
  return t;
}

static attn_kv_cache *new_cache(attn_ctx *ctx, int32_t dt, int paged, int64_t B, int64_t H,
                                int64_t D, int64_t Dv, int64_t cap) {
  attn_kv_cache_params p;
  attn_kv_cache_params_init(&p);
  p.dtype = dt;
  p.layout = paged ? ATTN_KV_PAGED : ATTN_KV_CONTIGUOUS;
  p.batch = B, p.kv_heads = H, p.head_dim = D, p.value_dim = Dv;
  p.capacity = paged ? 0 : cap;
  p.block_size = 5;
  p.num_blocks = paged ? B * (cap / 5 + 1) : 0;
  attn_kv_cache *kv = NULL;
  if (attn_kv_cache_create(ctx, &p, &kv) != ATTN_OK)
    fail_msg("create: %s", attn_ctx_last_error(ctx));
  return kv;
}

/* Random f32 values with the awkward ones mixed in: NaN with payloads,
 * infinities, values past f16's range, subnormals of both half types, ties. */
static float special(tu_rng *r) {
  static const uint32_t pats[] = {
      0x7fc00000u, 0xff812345u, 0x7f800000u, 0xff800000u, 0x477ff000u, /* 65520: Inf in f16 */
      0x477fe000u, 0x33800000u, 0x33000000u, 0x80000001u, 0x387fc000u, 0x3f808000u,
      0x3f818000u, 0x7f7fffffu, 0x00800000u, 0x3effffffu};
  uint64_t x = tu_next(r);
  if (x % 4 == 0)
    return tu_float(pats[(x >> 8) % (sizeof pats / sizeof pats[0])]);
  return tu_uniform(r, -3, 3);
}

/* ---- append and read: bits against the reference rounding ---- */

static void append_read_bits(void **state) {
  (void)state;
  enum { B = 3, H = 2, D = 7, DV = 5, L = 6, CAP = 40 };
  for (int ci = 1; ci < 3; ci++)
    for (int pg = 0; pg < 2; pg++)
      for (int ii = 0; ii < 3; ii++) {
        int32_t cdt = DTS[ci], idt = DTS[ii];
        attn_ctx *ctx = tu_ctx(1);
        attn_kv_cache *kv = new_cache(ctx, cdt, pg, B, H, D, DV, CAP);
        tu_rng r = {(uint64_t)(100 + ci * 10 + pg * 3 + ii)};
        /* model[b]: the expected cache contents as f32 bits, [H, len, D]. */
        static uint32_t mk[B][H * CAP * D], mv[B][H * CAP * DV];
        int64_t len[B] = {0};
        void *k = malloc(B * H * L * D * 4), *v = malloc(B * H * L * DV * 4);
        int64_t kd[4] = {B, H, L, D}, vd[4] = {B, H, L, DV};
        attn_tensor *tk = wrap_dt(ctx, idt, k, 4, kd), *tv = wrap_dt(ctx, idt, v, 4, vd);
        for (int step = 0; step < 8; step++) {
          int64_t n[B];
          for (int b = 0; b < B; b++) {
            n[b] = (int64_t)(tu_next(&r) % (L + 1));
            if (len[b] + n[b] > CAP - 5)
              n[b] = 0;
          }
          for (size_t i = 0; i < (size_t)(B * H * L * D); i++)
            put_bits(k, idt, i, tu_bits(special(&r)));
          for (size_t i = 0; i < (size_t)(B * H * L * DV); i++)
            put_bits(v, idt, i, tu_bits(special(&r)));
          for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++)
              for (int64_t i = 0; i < n[b]; i++) {
                for (int e = 0; e < D; e++)
                  mk[b][(h * CAP + len[b] + i) * D + e] =
                      round_to(cdt, get_bits(k, idt, (size_t)(((b * H + h) * L + i) * D + e)));
                for (int e = 0; e < DV; e++)
                  mv[b][(h * CAP + len[b] + i) * DV + e] =
                      round_to(cdt, get_bits(v, idt, (size_t)(((b * H + h) * L + i) * DV + e)));
              }
          assert_ok(attn_kv_append(ctx, kv, tk, tv, n, NULL));
          for (int b = 0; b < B; b++)
            len[b] += n[b];
        }
        /* Read each sequence back in every dtype. */
        for (int b = 0; b < B; b++) {
          if (!len[b])
            continue;
          for (int oi = 0; oi < 3; oi++) {
            int32_t odt = DTS[oi];
            void *ok = malloc((size_t)(H * len[b] * D) * 4), *ov = malloc((size_t)(H * len[b] * DV) * 4);
            int64_t okd[3] = {H, len[b], D}, ovd[3] = {H, len[b], DV};
            assert_ok(attn_kv_read(ctx, kv, b, 0, wrap_dt(ctx, odt, ok, 3, okd),
                                   wrap_dt(ctx, odt, ov, 3, ovd)));
            for (int h = 0; h < H; h++)
              for (int64_t j = 0; j < len[b]; j++) {
                for (int e = 0; e < D + DV; e++) {
                  bool isk = e < D;
                  int64_t w = isk ? D : DV, c = isk ? e : e - D;
                  uint32_t want_bits = (isk ? mk[b] : mv[b])[(h * CAP + j) * w + c];
                  uint32_t want_raw = raw_of(odt, want_bits);
                  uint32_t got = raw(isk ? ok : ov, odt, (size_t)((h * len[b] + j) * w + c));
                  if (got != want_raw)
                    fail_msg("cache %d paged %d input %d read %d: seq %d head %d row %lld "
                             "%s[%lld]: 0x%x, want 0x%x",
                             (int)cdt, pg, (int)idt, (int)odt, b, h, (long long)j,
                             isk ? "k" : "v", (long long)c, got, want_raw);
                }
              }
            free(ok), free(ov);
          }
        }
        free(k), free(v);
        attn_ctx_destroy(ctx);
      }
}

/* ---- attention over a half cache against the float64 reference ---- */

typedef struct {
  const char *name;
  int32_t cdt, idt, qdt, odt; /* cache, appended K/V, q and out dtypes */
  int paged;
  int64_t B, Hq, Hkv, D, Dv;
  int64_t prompt[3];
  int max_chunk;
  int causal, window, alibi, sinks;
  float softcap;
  int32_t threads;
} att_case;

static void run_attend(const att_case *c) {
  enum { MAXB = 3 };
  tu_rng r = {0xa11ce ^ (uint64_t)c->prompt[0] * 31u ^ (uint64_t)c->cdt};
  int64_t B = c->B, Hq = c->Hq, Hkv = c->Hkv, D = c->D, Dv = c->Dv, maxP = 0;
  /* Per sequence, the values as the cache holds them (f32, rounded by the
   * reference) and the queries as the library sees them. */
  float *q[MAXB], *k[MAXB], *v[MAXB];
  for (int64_t b = 0; b < B; b++) {
    int64_t P = c->prompt[b];
    maxP = P > maxP ? P : maxP;
    q[b] = malloc((size_t)(Hq * P * D + 1) * 4);
    k[b] = malloc((size_t)(Hkv * P * D + 1) * 4);
    v[b] = malloc((size_t)(Hkv * P * Dv + 1) * 4);
    float *arrs[3] = {q[b], k[b], v[b]};
    const int32_t rd[3] = {c->qdt, c->idt, c->idt};
    const size_t ns[3] = {(size_t)(Hq * P * D), (size_t)(Hkv * P * D), (size_t)(Hkv * P * Dv)};
    for (int a = 0; a < 3; a++)
      for (size_t i = 0; i < ns[a]; i++) {
        uint32_t x = round_to(rd[a], tu_bits(tu_uniform(&r, -2, 2))); /* the input's type */
        if (a)
          x = round_to(c->cdt, x); /* then the cache's */
        arrs[a][i] = tu_float(x);
      }
  }
  float alibi[16], sinks[16];
  for (int h = 0; h < 16; h++)
    alibi[h] = 0.07f * (float)(h + 1), sinks[h] = tu_uniform(&r, -1, 1);
  attn_ctx *ctx = tu_ctx(c->threads);
  attn_kv_cache *kv = new_cache(ctx, c->cdt, c->paged, B, Hkv, D, Dv, maxP + 2);
  int64_t Lm = c->max_chunk;
  void *kn = calloc((size_t)(B * Hkv * Lm * D), 4), *vn = calloc((size_t)(B * Hkv * Lm * Dv), 4);
  void *qn = calloc((size_t)(B * Hq * Lm * D), 4), *on = calloc((size_t)(B * Hq * Lm * Dv), 4);
  int64_t kd[4] = {B, Hkv, Lm, D}, vd[4] = {B, Hkv, Lm, Dv}, qd[4] = {B, Hq, Lm, D},
          od[4] = {B, Hq, Lm, Dv};
  attn_tensor *tk = wrap_dt(ctx, c->idt, kn, 4, kd), *tv = wrap_dt(ctx, c->idt, vn, 4, vd);
  attn_tensor *tq = wrap_dt(ctx, c->qdt, qn, 4, qd), *to = wrap_dt(ctx, c->odt, on, 4, od);
  attn_sdpa_params sp;
  attn_sdpa_params_init(&sp);
  sp.causal = c->causal, sp.window = c->window, sp.window_left = 9, sp.window_right = 2;
  sp.softcap = c->softcap;
  sp.alibi_slopes = c->alibi ? alibi : NULL;
  sp.sinks = c->sinks ? sinks : NULL;
  double u = c->odt == ATTN_DTYPE_F16 ? 0x1p-11 : c->odt == ATTN_DTYPE_BF16 ? 0x1p-8 : 0;
  /* The reference's full causal pass per sequence: row l is what the decode
   * step holding token l must give. */
  double *want[MAXB], *mag[MAXB];
  for (int64_t b = 0; b < B; b++) {
    int64_t P = c->prompt[b];
    want[b] = malloc((size_t)(Hq * P * Dv + 1) * sizeof(double));
    mag[b] = malloc((size_t)(Hq * P * Dv + 1) * sizeof(double));
    ref_sdpa_args a;
    memset(&a, 0, sizeof a);
    a.B = 1, a.Hq = Hq, a.Hkv = Hkv, a.Lq = P, a.Lk = P, a.D = D, a.Dv = Dv;
    a.q = q[b], a.k = k[b], a.v = v[b];
    int64_t qs[4] = {0, P * D, D, 1}, ks[4] = {0, P * D, D, 1}, vs[4] = {0, P * Dv, Dv, 1};
    memcpy(a.qs, qs, sizeof qs), memcpy(a.ks, ks, sizeof ks), memcpy(a.vs, vs, sizeof vs);
    /* Token by token, a row sees the keys up to its own: causal either way. */
    a.softcap = c->softcap, a.causal = c->causal || c->max_chunk == 1, a.bottom_right = 1;
    a.window = c->window, a.window_left = 9, a.window_right = 2;
    a.alibi_slopes = sp.alibi_slopes, a.sinks = sp.sinks;
    if (P)
      ref_sdpa(&a, want[b], mag[b], NULL, NULL);
  }
  int64_t done[MAXB] = {0};
  double worst = 0;
  for (int step = 0;; step++) {
    int64_t n[MAXB], left = 0;
    for (int64_t b = 0; b < B; b++) {
      int64_t w = c->max_chunk == 1 ? 1 : (int64_t)(tu_next(&r) % (uint64_t)(Lm + 1));
      int64_t rest = c->prompt[b] - done[b];
      n[b] = w < rest ? w : rest;
      left += rest;
      /* Inputs: the same bits the reference saw, in the input dtypes
       * (exact: they were rounded to those types first). */
      for (int64_t h = 0; h < Hkv; h++)
        for (int64_t i = 0; i < n[b]; i++) {
          for (int64_t e = 0; e < D; e++)
            put_bits(kn, c->idt, (size_t)(((b * Hkv + h) * Lm + i) * D + e),
                     tu_bits(k[b][(h * c->prompt[b] + done[b] + i) * D + e]));
          for (int64_t e = 0; e < Dv; e++)
            put_bits(vn, c->idt, (size_t)(((b * Hkv + h) * Lm + i) * Dv + e),
                     tu_bits(v[b][(h * c->prompt[b] + done[b] + i) * Dv + e]));
        }
      for (int64_t h = 0; h < Hq; h++)
        for (int64_t i = 0; i < n[b]; i++)
          for (int64_t e = 0; e < D; e++)
            put_bits(qn, c->qdt, (size_t)(((b * Hq + h) * Lm + i) * D + e),
                     tu_bits(q[b][(h * c->prompt[b] + done[b] + i) * D + e]));
    }
    if (!left)
      break;
    assert_true(step < 10000);
    assert_ok(attn_kv_append(ctx, kv, tk, tv, n, NULL));
    attn_status st = attn_kv_attend(ctx, kv, tq, to, n, &sp);
    if (st != ATTN_OK)
      fail_msg("%s: attend: %s", c->name, attn_ctx_last_error(ctx));
    for (int64_t b = 0; b < B; b++)
      for (int64_t h = 0; h < Hq; h++)
        for (int64_t i = 0; i < n[b]; i++)
          for (int64_t e = 0; e < Dv; e++) {
            size_t ri = (size_t)((h * c->prompt[b] + done[b] + i) * Dv + e);
            double g = tu_float(get_bits(on, c->odt, (size_t)(((b * Hq + h) * Lm + i) * Dv + e)));
            double wv = want[b][ri];
            double bound = u * fabs(wv) + 1e-5 * mag[b][ri] + 1e-6;
            if (!(fabs(g - wv) <= bound))
              fail_msg("%s: seq %lld head %lld pos %lld col %lld: %.9g, the float64 "
                       "reference gives %.9g (bound %.3g)",
                       c->name, (long long)b, (long long)h, (long long)(done[b] + i),
                       (long long)e, g, wv, bound);
            if (fabs(g - wv) / bound > worst)
              worst = fabs(g - wv) / bound;
          }
    for (int64_t b = 0; b < B; b++)
      done[b] += n[b];
  }
  print_message("%-40s worst error %.3f of the bound\n", c->name, worst);
  for (int64_t b = 0; b < B; b++)
    free(q[b]), free(k[b]), free(v[b]), free(want[b]), free(mag[b]);
  free(kn), free(vn), free(qn), free(on);
  attn_ctx_destroy(ctx);
}

static void attend_half_cache(void **state) {
  (void)state;
  enum { F32 = ATTN_DTYPE_F32, F16 = ATTN_DTYPE_F16, BF16 = ATTN_DTYPE_BF16 };
  static const att_case cases[] = {
      {"f16 contig token by token", F16, F32, F32, F32, 0, 3, 4, 2, 16, 8, {37, 1, 70}, 1,
       .causal = 1, .threads = 1},
      {"bf16 paged chunks", BF16, F32, F32, F32, 1, 3, 4, 2, 16, 8, {37, 1, 70}, 7,
       .causal = 1, .threads = 1},
      {"f16 paged, bf16 inputs", F16, BF16, F32, F32, 1, 2, 4, 4, 16, 16, {50, 33}, 5,
       .causal = 1, .threads = 1},
      {"bf16 contig, f16 inputs, half q/out", BF16, F16, F16, BF16, 0, 2, 6, 3, 20, 12,
       {41, 64}, 4, .causal = 1, .threads = 1},
      {"f16 q bf16 out window alibi softcap sinks", F16, F16, BF16, F16, 1, 3, 4, 1, 16, 8,
       {60, 3, 29}, 8, .causal = 1, .window = 1, .alibi = 1, .sinks = 1, .softcap = 4.0f,
       .threads = 2},
      {"bf16 long split threads", BF16, F32, F32, F32, 1, 1, 8, 2, 32, 32, {2000}, 700,
       .causal = 1, .threads = 4},
      {"f16 contig non-causal decode", F16, F32, F32, F32, 0, 2, 8, 1, 128, 128, {300, 257},
       1, .threads = 2},
  };
  /* Under valgrind (ATTN_TEST_SDPA_PAIRS) the cases past that many
   * query-key pairs are left to the other presets. */
  const char *env = getenv("ATTN_TEST_SDPA_PAIRS");
  double max_pairs = env ? atof(env) : INFINITY;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const att_case *c = &cases[i];
    int64_t P = 0;
    for (int64_t b = 0; b < c->B; b++)
      P = c->prompt[b] > P ? c->prompt[b] : P;
    if ((double)c->B * (double)c->Hq * (double)P * (double)P <= max_pairs)
      run_attend(c);
  }
}

/* ---- RoPE on append into a half cache: rotated in float, rounded once ---- */

static void rope_half(void **state) {
  (void)state;
  enum { H = 2, D = 8, L = 6 };
  for (int ci = 1; ci < 3; ci++)
    for (int pg = 0; pg < 2; pg++) {
      int32_t cdt = DTS[ci];
      attn_ctx *ctx = tu_ctx(1);
      attn_kv_cache *kv = new_cache(ctx, cdt, pg, 1, H, D, D, 3 * L);
      attn_rope_params rp;
      attn_rope_params_init(&rp);
      rp.theta = 700;
      attn_kv_append_params ap;
      attn_kv_append_params_init(&ap);
      ap.rope = &rp;
      tu_rng r = {(uint64_t)(ci * 2 + pg)};
      static float kin[3][H * L * D], vin[H * L * D];
      int64_t d4[4] = {1, H, L, D};
      for (int s = 0; s < 3; s++) {
        tu_fill(&r, kin[s], H * L * D, -4, 4);
        tu_fill(&r, vin, H * L * D, -1, 1);
        assert_ok(attn_kv_append(ctx, kv, tu_wrap(ctx, kin[s], H * L * D, 4, d4, NULL),
                                 tu_wrap(ctx, vin, H * L * D, 4, d4, NULL), NULL, &ap));
      }
      double want[H * 3 * L * D];
      int64_t pos[3 * L];
      for (int s = 0; s < 3; s++)
        for (int h = 0; h < H; h++)
          for (int i = 0; i < L; i++)
            for (int e = 0; e < D; e++)
              want[(h * 3 * L + s * L + i) * D + e] = kin[s][(h * L + i) * D + e];
      for (int i = 0; i < 3 * L; i++)
        pos[i] = i;
      ref_rope(0, 1, H, 3 * L, D, D, 700, pos, want);
      float got[H * 3 * L * D];
      int64_t rd[3] = {H, 3 * L, D};
      assert_ok(attn_kv_read(ctx, kv, 0, 0, tu_wrap(ctx, got, H * 3 * L * D, 3, rd, NULL), NULL));
      double ulp = cdt == ATTN_DTYPE_F16 ? 0x1p-10 : 0x1p-7;
      for (int i = 0; i < H * 3 * L * D; i++)
        if (!(fabs(got[i] - want[i]) <= ulp * fabs(want[i]) + 0x1p-24))
          fail_msg("dtype %d paged %d: key element %d is %.9g, the float64 rotation %.9g",
                   (int)cdt, pg, i, (double)got[i], want[i]);
      attn_ctx_destroy(ctx);
    }
}

/* ---- a wrapped half cache writes the caller's 2-byte elements ---- */

static void wrap_half(void **state) {
  (void)state;
  enum { B = 2, CAP = 6, H = 1, D = 4 };
  attn_ctx *ctx = tu_ctx(1);
  static uint16_t km[B * H * CAP * D], vm[B * H * CAP * D];
  int64_t d4[4] = {B, H, CAP, D};
  attn_kv_cache *kv = NULL;
  /* k and v of different dtypes: refused. */
  static float vf[B * H * CAP * D];
  assert_status(attn_kv_cache_wrap(ctx, wrap_dt(ctx, ATTN_DTYPE_BF16, km, 4, d4),
                                   tu_wrap(ctx, vf, B * H * CAP * D, 4, d4, NULL), NULL, &kv),
                ATTN_ERR_UNSUPPORTED);
  assert_error_mentions(ctx, "one dtype");
  assert_null(kv);
  assert_ok(attn_kv_cache_wrap(ctx, wrap_dt(ctx, ATTN_DTYPE_BF16, km, 4, d4),
                               wrap_dt(ctx, ATTN_DTYPE_BF16, vm, 4, d4), NULL, &kv));
  attn_kv_cache_info info = {.struct_size = sizeof info};
  assert_ok(attn_kv_cache_info_get(ctx, kv, &info, NULL));
  assert_int_equal(info.dtype, ATTN_DTYPE_BF16);
  float kn[B * H * 2 * D], vn[B * H * 2 * D];
  tu_rng r = {5};
  tu_fill(&r, kn, B * H * 2 * D, -9, 9);
  tu_fill(&r, vn, B * H * 2 * D, -9, 9);
  int64_t n[B] = {2, 1}, a4[4] = {B, H, 2, D};
  assert_ok(attn_kv_append(ctx, kv, tu_wrap(ctx, kn, B * H * 2 * D, 4, a4, NULL),
                           tu_wrap(ctx, vn, B * H * 2 * D, 4, a4, NULL), n, NULL));
  for (int b = 0; b < B; b++)
    for (int i = 0; i < n[b]; i++)
      for (int e = 0; e < D; e++) {
        assert_int_equal(km[(b * CAP + i) * D + e], ref_to_bf16(tu_bits(kn[(b * 2 + i) * D + e])));
        assert_int_equal(vm[(b * CAP + i) * D + e], ref_to_bf16(tu_bits(vn[(b * 2 + i) * D + e])));
      }
  /* U8 caches and U8 rows are refused, nothing appended. */
  attn_kv_cache_params p;
  attn_kv_cache_params_init(&p);
  p.batch = 1, p.kv_heads = 1, p.head_dim = 4, p.capacity = 4, p.dtype = ATTN_DTYPE_U8;
  attn_kv_cache *bad = NULL;
  assert_status(attn_kv_cache_create(ctx, &p, &bad), ATTN_ERR_UNSUPPORTED);
  assert_null(bad);
  static uint8_t u8[B * H * 2 * D];
  attn_tensor *tu8 = NULL;
  assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_U8, 4, a4, NULL, u8, sizeof u8, &tu8));
  assert_status(attn_kv_append(ctx, kv, tu8, tu_wrap(ctx, vn, B * H * 2 * D, 4, a4, NULL), n,
                               NULL),
                ATTN_ERR_UNSUPPORTED);
  int64_t lens[B];
  assert_ok(attn_kv_cache_info_get(ctx, kv, &info, lens));
  assert_int_equal(lens[0], 2);
  assert_int_equal(lens[1], 1);
  attn_ctx_destroy(ctx);
}

/* ---- NaN and Inf in hidden half keys and values change nothing ---- */

static void hidden_nonfinite(void **state) {
  (void)state;
  enum { H = 1, D = 8, P = 20 };
  static const uint32_t bad[4] = {0x7fc00000u, 0x7f800000u, 0xff800000u, 0x477ff000u};
  for (int ci = 1; ci < 3; ci++)
    for (int bi = 0; bi < 4; bi++) {
      int32_t cdt = DTS[ci];
      attn_ctx *ctx = tu_ctx(1);
      /* Two sequences with the same finite keys; sequence 1's first three
       * keys and values are bad. A window of 4 hides them from the last
       * query; the output must be sequence 0's (within rounding: the
       * kernel skips the hidden zero weights by hand there). */
      attn_kv_cache *kv = new_cache(ctx, cdt, ci == 2, 2, H, D, D, P);
      static float k[2 * H * P * D], v[2 * H * P * D];
      tu_rng r = {(uint64_t)(ci * 7 + bi)};
      tu_fill(&r, k, H * P * D, -1, 1);
      tu_fill(&r, v, H * P * D, -1, 1);
      memcpy(k + H * P * D, k, H * P * D * 4);
      memcpy(v + H * P * D, v, H * P * D * 4);
      for (int i = 0; i < 3 * D; i++) {
        k[H * P * D + i] = tu_float(bad[bi]);
        v[H * P * D + i] = tu_float(bad[(bi + 1) % 4]);
      }
      int64_t d4[4] = {2, H, P, D}, q4[4] = {2, H, 1, D};
      assert_ok(attn_kv_append(ctx, kv, tu_wrap(ctx, k, 2 * H * P * D, 4, d4, NULL),
                               tu_wrap(ctx, v, 2 * H * P * D, 4, d4, NULL), NULL, NULL));
      float q[2 * D], o[2 * D];
      tu_fill(&r, q, D, -1, 1);
      memcpy(q + D, q, D * 4);
      attn_sdpa_params sp;
      attn_sdpa_params_init(&sp);
      sp.causal = 1, sp.window = 1, sp.window_left = 3;
      int64_t one[2] = {1, 1};
      assert_ok(attn_kv_attend(ctx, kv, tu_wrap(ctx, q, 2 * D, 4, q4, NULL),
                               tu_wrap(ctx, o, 2 * D, 4, q4, NULL), one, &sp));
      for (int e = 0; e < D; e++) {
        assert_true(isfinite(o[D + e]));
        assert_close(o[D + e], o[e], 1e-6, 1e-7);
      }
      attn_ctx_destroy(ctx);
    }
}

/* ---- the decoder layer over a half cache ---- */

/* Bound. The layer reference keeps K and V in float64; the cache rounds
 * them (relative error u = 2^-11 f16, 2^-8 bf16). A key's error moves its
 * logit by at most u * scale * sum_d |q_d k_d| and a value's error its
 * contribution by u |v|; after the output projection the error is at most
 * u * (|Wo| row sums) * (max|v| + 2 * max logit shift * max|v|). With the
 * test's sizes (|x| <= 1, weights <= 1/sqrt(fan-in)) that is below
 * 8 u in every output, which is what is asserted (plus the F32 bound). */
static void mha_half_cache(void **state) {
  (void)state;
  enum { E = 32, HQ = 4, HKV = 2, HD = 8, T = 24 };
  for (int ci = 1; ci < 3; ci++)
    for (int pg = 0; pg < 2; pg++) {
      int32_t cdt = DTS[ci];
      double u = cdt == ATTN_DTYPE_F16 ? 0x1p-11 : 0x1p-8;
      tu_rng r = {(uint64_t)(ci * 11 + pg)};
      static float w[4][HQ * HD * E], x[T * E], y[T * E];
      for (int i = 0; i < 4; i++)
        tu_fill(&r, w[i], HQ * HD * E, -1 / sqrtf(E), 1 / sqrtf(E));
      tu_fill(&r, x, T * E, -1, 1);
      attn_ctx *ctx = tu_ctx(2);
      attn_mha_decoder_params p;
      attn_mha_decoder_params_init(&p);
      p.embed_dim = E, p.num_heads = HQ, p.num_kv_heads = HKV, p.head_dim = HD;
      attn_rope_params rp;
      attn_rope_params_init(&rp);
      p.rope = &rp;
      attn_mha *m = NULL;
      assert_ok(attn_mha_create_decoder(ctx, &p, &m));
      const int64_t rows[4] = {HQ * HD, HKV * HD, HKV * HD, E};
      for (int i = 0; i < 4; i++) {
        int64_t dims[2] = {rows[i], i == 3 ? HQ * HD : E};
        assert_ok(attn_mha_set_weight(ctx, m, i, tu_wrap(ctx, w[i], (size_t)(dims[0] * dims[1]),
                                                         2, dims, NULL)));
      }
      attn_kv_cache *kv = new_cache(ctx, cdt, pg, 1, HKV, HD, HD, T);
      /* A prompt of 9, then chunks of 1, 4, 1, 9. */
      const int64_t chunks[5] = {9, 1, 4, 1, 9};
      int64_t at = 0;
      for (int s = 0; s < 5; s++) {
        int64_t d3[3] = {1, chunks[s], E};
        assert_ok(attn_mha_forward(ctx, m, kv,
                                   tu_wrap(ctx, x + at * E, (size_t)(chunks[s] * E), 3, d3, NULL),
                                   tu_wrap(ctx, y + at * E, (size_t)(chunks[s] * E), 3, d3, NULL),
                                   NULL));
        at += chunks[s];
      }
      ref_mha_args a;
      memset(&a, 0, sizeof a);
      a.E = E, a.Hq = HQ, a.Hkv = HKV, a.D = HD;
      a.wq = w[0], a.wk = w[1], a.wv = w[2], a.wo = w[3];
      a.rope = 1, a.rotary_dim = HD, a.theta = 10000;
      double want[T * E], worst = 0;
      ref_mha_decoder(&a, T, x, want);
      for (int i = 0; i < T * E; i++) {
        double bound = 8 * u + 1e-5 + 1e-5 * fabs(want[i]);
        if (!(fabs(y[i] - want[i]) <= bound))
          fail_msg("dtype %d paged %d token %d col %d: %.9g, the float64 layer %.9g", (int)cdt,
                   pg, i / E, i % E, (double)y[i], want[i]);
        worst = fabs(y[i] - want[i]) / u > worst ? fabs(y[i] - want[i]) / u : worst;
      }
      print_message("mha over a %s cache (paged %d): worst error %.3f u\n",
                    cdt == ATTN_DTYPE_F16 ? "f16" : "bf16", pg, worst);
      attn_ctx_destroy(ctx);
    }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(append_read_bits), cmocka_unit_test(attend_half_cache),
      cmocka_unit_test(rope_half),        cmocka_unit_test(wrap_half),
      cmocka_unit_test(hidden_nonfinite), cmocka_unit_test(mha_half_cache),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
