/* Fuzz target: the decoder attention layer (attn_mha_*) over a KV cache.
 * The input picks layer parameters (sizes, GQA, biases, RoPE with or
 * without a long-context scaling, soft-cap, window; sometimes invalid, and
 * the struct_size of an older or newer caller), weights (copied or wrapped,
 * sometimes of the wrong shape), a cache (contiguous or paged, sometimes not
 * matching the layer), then a program of forward calls with random lengths
 * and counts (some invalid, some past the capacity), truncations, copies
 * and resets, with allocation failures. The harness keeps each sequence's
 * tokens. Checks: creation and every call succeed exactly when the header's
 * rules say so (out of memory aside), a failure leaves a message and
 * changes nothing (the cache read back, its free blocks, y, *out); a
 * forward's rows equal the float64 layer (tests/reference/ref_mha.c) over
 * the sequence's tokens, its padding rows are zero and every output is
 * finite. */
#include "fuzz_common.h"
#include "ref_mha.h"
#include "ref_posenc.h"

#include <stdbool.h>

/* Mostly caches of up to MCAP tokens and forwards of up to ML; now and
 * then a cache of up to BIG_CAP (several 256-key tiles, split keys past
 * 2048, paged blocks of up to 300 tokens: fz_kv_cache) whose forwards take
 * up to BIG_L tokens (several query blocks), or with one sequence all the
 * room left (a long prompt, so that the next steps split their keys). */
enum { MB = 3, ME = 8, MHQ = 4, MD = 6, MCAP = 24, ML = 4, BIG_CAP = 2100, BIG_L = 300 };
/* Floats of one sequence read back from a cache (heads and dims may exceed
 * the layer's by one). */
#define SEQ ((size_t)(MHQ + 1) * BIG_CAP * (MD + 1))

typedef struct {
  int64_t B, E, Hq, Hkv, D, cap;
  int64_t cH, cD, cDv; /* the cache's heads and dims (the layer's unless mismatched) */
  int64_t len[MB];
  float x[MB][BIG_CAP][ME]; /* the tokens each sequence holds */
} model;

/* LongRoPE factors for up to MD/2 pairs. */
static const double short_f[MD / 2] = {1.0, 1.25, 2.0}, long_f[MD / 2] = {1.5, 6.0, 19.0};

/* Scaling parameters: a valid configuration of a random scaling, or (break
 * != 0) one with a single rule broken. *valid says which. */
static void pick_scaling(fz_in *in, attn_rope_cache_params *sp, ref_rope_scaling *rs,
                         int64_t half, double theta, bool *valid) {
  attn_rope_cache_params_init(sp);
  memset(rs, 0, sizeof *rs);
  int32_t sc = (int32_t)fz_range(in, 0, 6);
  static const double factors[] = {0.5, 1.0, 2.0, 4.0, 8.0};
  static const int64_t p0s[] = {2, 4, 8, 16};
  sp->scaling = sc;
  sp->apply_attention_factor = fz_chance(in, 128);
  rs->scaling = sc, rs->theta = theta;
  rs->factor = factors[fz_u8(in) % 5];
  rs->p0 = p0s[fz_u8(in) % 4];
  rs->seq_len = fz_range(in, 1, 40);
  rs->beta_fast = 32, rs->beta_slow = 1, rs->truncate = 1, rs->low_ff = 1, rs->high_ff = 4;
  rs->short_f = short_f, rs->long_f = long_f;
  if (sc != ATTN_ROPE_SCALING_NONE)
    sp->factor = rs->factor;
  if (sc >= ATTN_ROPE_SCALING_DYNAMIC_NTK)
    sp->original_max_position = rs->p0;
  if (sc == ATTN_ROPE_SCALING_DYNAMIC_NTK || sc == ATTN_ROPE_SCALING_LONGROPE)
    sp->seq_len = rs->seq_len;
  if (sc == ATTN_ROPE_SCALING_YARN) {
    if (fz_chance(in, 96))
      sp->beta_fast = rs->beta_fast = 16, sp->beta_slow = rs->beta_slow = 2;
    if (fz_chance(in, 96))
      sp->mscale = rs->mscale = 0.707, sp->mscale_all_dim = rs->mscale_all_dim = 1;
    sp->yarn_no_truncate = fz_chance(in, 96);
    rs->truncate = !sp->yarn_no_truncate;
  }
  if ((sc == ATTN_ROPE_SCALING_YARN || sc == ATTN_ROPE_SCALING_LONGROPE) && fz_chance(in, 64))
    sp->attention_factor = rs->attention_factor = 1.25;
  if (sc == ATTN_ROPE_SCALING_LLAMA3 && fz_chance(in, 128))
    sp->low_freq_factor = rs->low_ff = 2, sp->high_freq_factor = rs->high_ff = 8;
  if (sc == ATTN_ROPE_SCALING_LONGROPE) {
    sp->short_factors = short_f, sp->long_factors = long_f;
    if (fz_chance(in, 64)) /* the default factor: seq_len / p0 */
      sp->factor = 0, rs->factor = (double)rs->seq_len / (double)rs->p0;
  }
  /* LongRoPE's sqrt(1 + ln s / ln p0) needs p0 >= 2; NTK's exponent r > 2. */
  *valid = !((sc == ATTN_ROPE_SCALING_NTK || sc == ATTN_ROPE_SCALING_DYNAMIC_NTK) && half < 2);
  switch (fz_chance(in, 40) ? fz_range(in, 1, 5) : 0) {
  case 1: sp->factor = -1; *valid = false; break;     /* out of range (or set for none) */
  case 2: sp->theta = theta * 2; *valid = false; break; /* not rope's base */
  case 3: /* a field of another scaling */
    if (sc == ATTN_ROPE_SCALING_LLAMA3)
      sp->beta_fast = 3;
    else
      sp->low_freq_factor = 3;
    *valid = false;
    break;
  case 4: /* the layer needs seq_len for these; the others must leave it 0 */
    sp->seq_len = sp->seq_len ? 0 : 5;
    *valid = false;
    break;
  case 5: sp->reserved_ = 1; *valid = false; break;
  default: break;
  }
}

/* The header's rules for attn_mha_create_decoder, on the effective params. */
static bool params_valid(const attn_mha_decoder_params *p, const attn_rope_params *rp,
                         int64_t *D) {
  int64_t Hkv = p->num_kv_heads ? p->num_kv_heads : p->num_heads;
  if (p->embed_dim < 1 || p->num_heads < 1 || p->num_kv_heads < 0 || p->head_dim < 0)
    return false;
  if (p->num_heads % Hkv)
    return false;
  *D = p->head_dim;
  if (!*D) {
    if (p->embed_dim % p->num_heads)
      return false;
    *D = p->embed_dim / p->num_heads;
  }
  if (p->reserved_ || !isfinite(p->scale) || !isfinite(p->softcap) || p->softcap < 0 ||
      (p->window && p->window_left < 0))
    return false;
  if (p->rope) {
    int64_t r = rp->rotary_dim ? rp->rotary_dim : *D;
    double theta = rp->theta ? rp->theta : 10000;
    if ((rp->style != 0 && rp->style != 1) || rp->rotary_dim < 0 || r > *D || (r & 1) ||
        !isfinite(theta) || !(theta > 1) || rp->offset || rp->positions)
      return false;
  }
  return true;
}

/* Blocks no sequence holds (0 for a contiguous cache). */
static int64_t free_blocks(attn_ctx *ctx, attn_kv_cache *kv) {
  attn_kv_cache_info info = {.struct_size = sizeof info};
  FZ_CHECK(attn_kv_cache_info_get(ctx, kv, &info, NULL) == ATTN_OK, "info");
  return info.free_blocks;
}

static void read_cache(attn_ctx *ctx, attn_kv_cache *kv, const model *m, float *k, float *v,
                       int64_t *lens) {
  attn_kv_cache_info info = {.struct_size = sizeof info};
  FZ_CHECK(attn_kv_cache_info_get(ctx, kv, &info, lens) == ATTN_OK, "info");
  for (int64_t b = 0; b < m->B; b++) {
    if (!lens[b])
      continue;
    int64_t dk[3] = {m->cH, lens[b], m->cD}, dv[3] = {m->cH, lens[b], m->cDv};
    attn_tensor *tk = NULL, *tv = NULL;
    FZ_CHECK(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 3, dk, NULL, k + b * SEQ, SEQ * 4, &tk) ==
                     ATTN_OK &&
                 attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 3, dv, NULL, v + b * SEQ, SEQ * 4, &tv) ==
                     ATTN_OK,
             "wrap");
    FZ_CHECK(attn_kv_read(ctx, kv, b, 0, tk, tv) == ATTN_OK, "read: %s",
             attn_ctx_last_error(ctx));
    attn_tensor_free(ctx, tk);
    attn_tensor_free(ctx, tv);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fz_in in = {data, size};
  fz_alloc_state a = {0};
  attn_ctx *ctx = fz_ctx(&a, 1 + fz_chance(&in, 64));
#define ARM(fail) (a.fail_at = (fail) ? a.allocs + 1 : 0)

  /* ---- the layer's parameters, in a buffer with room for a newer caller's tail ---- */
  union {
    attn_mha_decoder_params p;
    unsigned char bytes[sizeof(attn_mha_decoder_params) + 32];
  } buf;
  memset(&buf, 0, sizeof buf);
  attn_mha_decoder_params *p = &buf.p;
  attn_mha_decoder_params_init(p);
  bool wild = fz_chance(&in, 24); /* sizes that may break the rules */
  p->embed_dim = wild ? fz_range(&in, -1, 9) : fz_range(&in, 1, ME);
  p->num_heads = wild ? fz_range(&in, -1, 5) : fz_range(&in, 1, MHQ);
  p->num_kv_heads = wild ? fz_range(&in, -1, 5) : 0;
  if (!wild && fz_chance(&in, 128)) { /* a divisor: GQA or MQA */
    int64_t d = fz_range(&in, 1, p->num_heads);
    while (p->num_heads % d)
      d--;
    p->num_kv_heads = d;
  }
  p->head_dim = wild ? fz_range(&in, -1, 7) : fz_range(&in, 0, MD);
  if (p->head_dim == 0 && p->embed_dim > 0 && p->num_heads > 0 &&
      p->embed_dim / p->num_heads > MD)
    p->head_dim = MD; /* keep D small */
  p->qkv_bias = fz_chance(&in, 128);
  p->out_bias = fz_chance(&in, 128);
  p->softcap = fz_chance(&in, 48) ? (fz_chance(&in, 16) ? -1.0f : 2.5f) : 0;
  p->scale = fz_chance(&in, 24) ? (fz_chance(&in, 32) ? NAN : 0.3f) : 0;
  p->window = fz_chance(&in, 64);
  p->window_left = fz_range(&in, p->window && fz_chance(&in, 16) ? -2 : 0, 6);
  p->reserved_ = fz_chance(&in, 4);
  attn_rope_params rp;
  attn_rope_params_init(&rp);
  int rope = fz_chance(&in, 160);
  rp.style = fz_chance(&in, 8) ? 7 : (int32_t)fz_range(&in, 0, 1);
  rp.rotary_dim = (int32_t)(fz_chance(&in, 128) ? 0 : fz_range(&in, -1, MD));
  rp.theta = fz_chance(&in, 128) ? 0 : fz_chance(&in, 8) ? 0.5 : 100;
  rp.offset = fz_chance(&in, 4);
  p->rope = rope ? &rp : NULL;
  int64_t D = 0;
  bool valid = params_valid(p, &rp, &D);
  attn_rope_cache_params sp;
  ref_rope_scaling rs;
  bool scaled = fz_chance(&in, 112);
  if (scaled) {
    int64_t r = rp.rotary_dim ? rp.rotary_dim : D;
    bool sv;
    pick_scaling(&in, &sp, &rs, r / 2, rp.theta ? rp.theta : 10000, &sv);
    p->rope_scaling = &sp;
    valid = valid && sv && rope;
  }
  /* An older caller (the fields past its size take their defaults: here
   * always rope_scaling, the last field), or a newer one. */
  size_t given = fz_struct_size(&in, buf.bytes, sizeof *p, sizeof buf);
  p->struct_size = given;
  attn_mha_decoder_params eff;
  attn_mha_decoder_params_init(&eff);
  if (!fz_effective_params(&eff, sizeof eff, p, given))
    valid = false;
  else if (!eff.rope_scaling)
    valid = params_valid(&eff, &rp, &D), scaled = false;
  /* Sizes past what the harness's buffers hold (valid, but not run). */
  bool too_big = valid && (eff.embed_dim > ME || D > MD || eff.num_heads > MHQ);
  attn_mha *layer = (attn_mha *)0x1;
  int fail = fz_chance(&in, 8);
  ARM(fail);
  attn_status st = attn_mha_create_decoder(ctx, p, &layer);
  a.fail_at = 0;
  if (st != ATTN_OK) {
    FZ_CHECK(layer == (attn_mha *)0x1, "create wrote *out on failure");
    FZ_CHECK(attn_ctx_last_error(ctx)[0], "create failed without a message");
    FZ_CHECK(!valid || st == ATTN_ERR_NO_MEMORY, "create refused valid params: %s: %s",
             attn_status_string(st), attn_ctx_last_error(ctx));
    fz_ctx_destroy(ctx, &a);
    return 0;
  }
  FZ_CHECK(valid, "create accepted invalid params (E %lld Hq %lld Hkv %lld D %lld)",
           (long long)eff.embed_dim, (long long)eff.num_heads, (long long)eff.num_kv_heads,
           (long long)eff.head_dim);
  if (too_big) {
    FZ_CHECK(attn_mha_free(ctx, layer) == ATTN_OK, "free");
    fz_ctx_destroy(ctx, &a);
    return 0;
  }

  static model m;
  memset(&m, 0, sizeof m);
  m.B = fz_range(&in, 1, MB), m.E = eff.embed_dim, m.Hq = eff.num_heads;
  m.Hkv = eff.num_kv_heads ? eff.num_kv_heads : m.Hq, m.D = D;
  int64_t hq = m.Hq * D, hkv = m.Hkv * D;

  /* ---- weights: copied or wrapped; a wrong shape or a missing bias is refused ---- */
  static float w[8][(ME + 1) * (MHQ * MD + 1)];
  const int64_t rows[8] = {hq, hkv, hkv, m.E, 1, 1, 1, 1};
  const int64_t cols[8] = {m.E, m.E, m.E, hq, hq, hkv, hkv, m.E};
  for (int32_t i = 0; i < 8; i++) {
    size_t n = (size_t)(rows[i] * cols[i]);
    for (size_t j = 0; j < n; j++)
      w[i][j] = (float)(int8_t)fz_u8(&in) / 512.0f;
    bool present = i < 4 || (i < 7 ? eff.qkv_bias : eff.out_bias);
    int bad_shape = fz_chance(&in, 8);
    int64_t d[2] = {rows[i], cols[i] + bad_shape};
    attn_tensor *t = NULL;
    FZ_CHECK(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, i < 4 ? 2 : 1, i < 4 ? d : d + 1, NULL,
                              w[i], sizeof w[i], &t) == ATTN_OK,
             "wrap weight");
    /* Wrapped: used in place (w stays valid and unchanged); copied: w is the
     * reference copy. Nothing allocates (the layer owns every weight yet). */
    int wrap = fz_chance(&in, 64);
    st = wrap ? attn_mha_wrap_weight(ctx, layer, i, t) : attn_mha_set_weight(ctx, layer, i, t);
    FZ_CHECK((st == ATTN_OK) == (present && !bad_shape), "weight %d (present %d, bad shape %d): "
             "%s: %s", (int)i, present, bad_shape, attn_status_string(st),
             attn_ctx_last_error(ctx));
    if (st != ATTN_OK) {
      FZ_CHECK(attn_ctx_last_error(ctx)[0], "no message");
      memset(w[i], 0, sizeof w[i]); /* never set: the layer's zeros */
    }
    attn_tensor_free(ctx, t);
  }

  /* ---- the cache, sometimes not matching the layer ---- */
  int mismatch = fz_chance(&in, 12) ? (int)fz_range(&in, 1, 3) : 0;
  m.cH = m.Hkv + (mismatch == 1), m.cD = m.D + (mismatch == 2), m.cDv = m.D + (mismatch == 3);
  fz_cache fc = fz_kv_cache(&in, ctx, m.B, m.cH, m.cD, m.cDv, MCAP, BIG_CAP);
  attn_kv_cache *kv = fc.kv;
  int paged = fc.paged;
  m.cap = fc.cap;

  static float kb[MB * SEQ], vb[MB * SEQ], kb2[MB * SEQ], vb2[MB * SEQ];
  double freqs[MD / 2];
  ref_mha_args ra;
  memset(&ra, 0, sizeof ra);
  ra.E = m.E, ra.Hq = m.Hq, ra.Hkv = m.Hkv, ra.D = m.D;
  ra.wq = w[0], ra.wk = w[1], ra.wv = w[2], ra.wo = w[3];
  ra.bq = eff.qkv_bias ? w[4] : NULL, ra.bk = eff.qkv_bias ? w[5] : NULL;
  ra.bv = eff.qkv_bias ? w[6] : NULL, ra.bo = eff.out_bias ? w[7] : NULL;
  ra.rope = eff.rope != NULL;
  ra.interleaved = rp.style == 1;
  ra.rotary_dim = rp.rotary_dim ? rp.rotary_dim : m.D;
  ra.theta = rp.theta ? rp.theta : 10000;
  if (scaled) {
    double af = ref_rope_scaled_freqs(&rs, ra.rotary_dim / 2, freqs);
    ra.freqs = freqs;
    ra.amp = sp.apply_attention_factor ? af : 1.0;
  }
  ra.scale = eff.scale;
  ra.softcap = eff.softcap;
  ra.window = eff.window, ra.window_left = eff.window_left;

  for (int op = 0; op < 12 && in.n; op++) {
    int kind = (int)fz_range(&in, 0, 5);
    const char *name = "?";
    int64_t lens0[MB];
    read_cache(ctx, kv, &m, kb, vb, lens0);
    int64_t free0 = free_blocks(ctx, kv);
    int fail_now = fz_chance(&in, 10);
    if (kind <= 2) { /* forward: a prompt, a decode step, any chunk */
      name = "forward";
      int64_t L = fz_range(&in, 0, ML), n[MB];
      if (m.cap > MCAP && L == ML && fz_chance(&in, 128))
        L = m.B == 1 && fz_chance(&in, 64) ? m.cap - m.len[0] : fz_range(&in, ML, BIG_L);
      bool ok = !mismatch, counts = true, fits = true;
      for (int64_t b = 0; b < m.B; b++) {
        n[b] = fz_chance(&in, 8) ? fz_range(&in, -1, L + 1) : fz_range(&in, 0, L);
        if (n[b] < 0 || n[b] > L)
          counts = false;
        else if (m.len[b] + n[b] > m.cap)
          fits = false;
      }
      int use_n = fz_chance(&in, 200);
      if (!use_n) {
        counts = true, fits = true;
        for (int64_t b = 0; b < m.B; b++) {
          n[b] = L;
          fits = fits && m.len[b] + L <= m.cap;
        }
      }
      /* x: contiguous, padded tokens, or batch innermost (gathered); y
       * contiguous or padded (scattered); sometimes y = x or a wrong E. */
      int xmode = (int)fz_range(&in, 0, 2), ymode = (int)fz_range(&in, 0, 1);
      int alias = fz_chance(&in, 6) && L > 0, bad_e = fz_chance(&in, 6);
      static float xs[MB * (BIG_CAP + 1) * (ME + 2)], ys[MB * (BIG_CAP + 1) * (ME + 2)];
      int64_t E = m.E, xst[3], yst[3];
      if (xmode == 0)
        xst[0] = L * E, xst[1] = E, xst[2] = 1;
      else if (xmode == 1)
        xst[0] = L * (E + 2), xst[1] = E + 2, xst[2] = 1;
      else
        xst[0] = E, xst[1] = m.B * E, xst[2] = 1;
      if (ymode == 0)
        yst[0] = L * E, yst[1] = E, yst[2] = 1;
      else
        yst[0] = (L + 1) * (E + 1), yst[1] = E + 1, yst[2] = 1;
      /* A small call's x from the input bytes; a large one's from a
       * generator seeded by them. */
      size_t nx = L <= ML ? (size_t)(MB * (ML + 1) * (ME + 2)) : sizeof xs / 4;
      fz_rng rng = {L <= ML ? 1 : (uint64_t)fz_u32(&in) * 2 + 1};
      for (size_t i = 0; i < nx; i++)
        xs[i] = L <= ML ? (float)(int8_t)fz_u8(&in) / 128.0f : fz_unit(&rng);
      for (size_t i = 0; i < sizeof ys / 4; i++)
        ys[i] = -7.5f;
      int64_t xd[3] = {m.B, L, E + bad_e}, yd[3] = {m.B, L, E};
      attn_tensor *tx = NULL, *ty = NULL;
      FZ_CHECK(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 3, xd, bad_e ? NULL : xst, xs, sizeof xs,
                                &tx) == ATTN_OK,
               "wrap x");
      FZ_CHECK(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 3, yd, alias ? xst : yst, alias ? xs : ys,
                                sizeof ys, &ty) == ATTN_OK,
               "wrap y");
      static float ysnap[sizeof ys / 4];
      memcpy(ysnap, ys, sizeof ys);
      ok = ok && counts && !alias && !bad_e;
      bool must = ok && fits && !paged && !fail_now;
      ARM(fail_now);
      st = attn_mha_forward(ctx, layer, kv, tx, ty, use_n ? n : NULL);
      a.fail_at = 0;
      if (st != ATTN_OK) {
        FZ_CHECK(!must, "forward of valid input failed: %s: %s", attn_status_string(st),
                 attn_ctx_last_error(ctx));
        FZ_CHECK(attn_ctx_last_error(ctx)[0], "no message");
        FZ_CHECK(!ok || !fits || st == ATTN_ERR_NO_MEMORY,
                 "forward within capacity failed other than out of memory: %s",
                 attn_ctx_last_error(ctx));
        FZ_CHECK(!memcmp(ysnap, ys, sizeof ys), "forward wrote y on failure");
      } else {
        FZ_CHECK(ok && fits, "forward accepted invalid input (counts %d, fits %d, alias %d, "
                 "bad E %d, mismatch %d)", counts, fits, alias, bad_e, mismatch);
        for (int64_t b = 0; b < m.B; b++) {
          int64_t t0 = m.len[b];
          for (int64_t i = 0; i < n[b]; i++)
            for (int64_t e = 0; e < E; e++)
              m.x[b][t0 + i][e] = xs[b * xst[0] + i * xst[1] + e];
          m.len[b] += n[b];
          static double want[BIG_CAP * ME];
          static float xt[BIG_CAP * ME]; /* the sequence's tokens, [T, E] */
          for (int64_t t = 0; t < m.len[b]; t++)
            memcpy(xt + t * E, m.x[b][t], (size_t)E * 4);
          /* The new rows only; of a long prompt, every step-th and the last. */
          int64_t step = n[b] > 64 ? n[b] / 32 : 1;
          if (n[b])
            ref_mha_decoder_rows(&ra, m.len[b], t0, step, xt, want);
          for (int64_t i = 0; i < L; i++)
            for (int64_t e = 0; e < E; e++) {
              float got = ys[b * yst[0] + i * yst[1] + e];
              if (i >= n[b]) {
                FZ_CHECK(got == 0.0f, "padding row %lld of sequence %lld is %g", (long long)i,
                         (long long)b, (double)got);
                continue;
              }
              if (i % step && i != n[b] - 1)
                continue;
              double wv = want[(t0 + i) * E + e];
              FZ_CHECK(isfinite(got) && fabs(got - wv) <= 1e-4 * (1 + fabs(wv)),
                       "sequence %lld token %lld col %lld: %.9g, float64 layer %.9g",
                       (long long)b, (long long)(t0 + i), (long long)e, (double)got, wv);
            }
        }
      }
      attn_tensor_free(ctx, tx);
      attn_tensor_free(ctx, ty);
    } else if (kind == 3) { /* rollback: speculative decoding, beam search */
      name = "truncate";
      int64_t b = fz_range(&in, 0, m.B - 1), len = fz_range(&in, 0, m.len[b]);
      FZ_CHECK(attn_kv_truncate(ctx, kv, b, len) == ATTN_OK, "truncate: %s",
               attn_ctx_last_error(ctx));
      m.len[b] = len;
    } else if (kind == 4) {
      name = "copy";
      int64_t s1 = fz_range(&in, 0, m.B - 1), s2 = fz_range(&in, 0, m.B - 1);
      ARM(fail_now);
      st = attn_kv_copy(ctx, kv, s1, s2);
      a.fail_at = 0;
      FZ_CHECK(st == ATTN_OK || st == ATTN_ERR_NO_MEMORY, "copy: %s",
               attn_ctx_last_error(ctx));
      if (st == ATTN_OK && s1 != s2) {
        memcpy(m.x[s1], m.x[s2], sizeof m.x[s1]);
        m.len[s1] = m.len[s2];
      }
    } else {
      name = "reset";
      int64_t b = fz_range(&in, -1, m.B - 1);
      FZ_CHECK(attn_kv_reset(ctx, kv, b) == ATTN_OK, "reset");
      for (int64_t s = 0; s < m.B; s++)
        if (b < 0 || s == b)
          m.len[s] = 0;
    }
    /* The cache holds exactly the model's sequences: unchanged by a failed
     * call (compared with what it held before), grown by a good one. */
    int64_t lens1[MB];
    read_cache(ctx, kv, &m, kb2, vb2, lens1);
    for (int64_t b = 0; b < m.B; b++) {
      FZ_CHECK(lens1[b] == m.len[b], "after %s: sequence %lld has %lld tokens, model %lld",
               name, (long long)b, (long long)lens1[b], (long long)m.len[b]);
      if (lens1[b] == lens0[b] && st != ATTN_OK) {
        size_t nk = (size_t)(m.cH * lens0[b] * m.cD) * 4, nv = (size_t)(m.cH * lens0[b] * m.cDv) * 4;
        FZ_CHECK(!memcmp(kb + b * SEQ, kb2 + b * SEQ, nk) && !memcmp(vb + b * SEQ, vb2 + b * SEQ, nv),
                 "after a failed %s: sequence %lld changed", name, (long long)b);
      }
    }
    /* Its blocks too: a failed step once kept a copy on write. */
    FZ_CHECK(st == ATTN_OK || free_blocks(ctx, kv) == free0,
             "after a failed %s: free blocks %lld -> %lld", name, (long long)free0,
             (long long)free_blocks(ctx, kv));
    st = ATTN_OK;
  }
  if (fz_chance(&in, 128))
    FZ_CHECK(attn_mha_free(ctx, layer) == ATTN_OK, "free");
  fz_ctx_destroy(ctx, &a);
#undef ARM
  return 0;
}
