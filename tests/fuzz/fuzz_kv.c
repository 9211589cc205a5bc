/* Fuzz target: the KV cache. The input picks a layout and sizes (paged:
 * block size and a pool that may be too small), then a program of
 * operations: append (ragged counts, out-of-range ones, optional RoPE),
 * truncate, reset, copy, read, attend, with indices that may be out of
 * range, and allocation failures. A model (plain arrays per sequence, the
 * RoPE angles recomputed here in double) tracks what every sequence must
 * hold. Checks: a call succeeds exactly when the model says it is valid
 * (except for out of memory); a failed call changes nothing (every sequence
 * read back equals the model); a paged append that needs at most the free
 * blocks succeeds; attention rows equal a float64 evaluation over the
 * model's keys and values. The cache's dtype (F32, F16, BF16), the appended
 * rows' dtype and the queries' and outputs' dtypes are picked too; appended
 * values are multiples of 1/16 in [-8, 8), exact in every type, so only
 * RoPE rows are rounded (checked within an ULP of the cache's type).
 * One input in four asks for long sequences (appends of up to 160 rows,
 * values from a seeded generator): attention then spans several 256-key
 * tiles, where a step's padding rows once wrote past the tile buffer.
 * One in eight also wraps a cache of extreme sizes (wrapped_extremes). */
#include "fuzz_common.h"

#include <stdbool.h>

enum { MB = 3, MH = 2, MD = 6, MCAP = 512, SHORT_CAP = 48, LMAX = 160 };

typedef struct {
  int64_t B, H, D, Dv, cap;
  int32_t dt;   /* the cache's */
  double ulp;   /* relative spacing of dt (0 for F32: bits compared) */
  int64_t len[MB];
  float k[MB][MH][MCAP][MD], v[MB][MH][MCAP][MD];
  bool roped[MB][MCAP]; /* keys rotated (rounded into a half cache) */
} model;

static const int32_t DTYPES[3] = {ATTN_DTYPE_F32, ATTN_DTYPE_F16, ATTN_DTYPE_BF16};

/* Keys equal the model's: bit for bit, or within an ULP of a half cache's
 * type for rotated (rounded) rows. */
static bool same_keys(const model *m, const float *got, const float *want, bool roped) {
  if (!roped || m->ulp == 0)
    return !memcmp(got, want, (size_t)m->D * 4);
  for (int64_t d = 0; d < m->D; d++)
    if (!(fabs((double)got[d] - want[d]) <= m->ulp * fabs((double)want[d]) + 1e-6))
      return false;
  return true;
}

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* Half-split RoPE with rotary_dim 4 and theta 100, as the harness asks. */
static void rope_row(float *row, int64_t pos) {
  for (int64_t i = 0; i < 2; i++) {
    double t = (double)pos * pow(100.0, -(double)(2 * i) / 4.0);
    double a = row[i], b = row[i + 2];
    row[i] = (float)(a * cos(t) - b * sin(t));
    row[i + 2] = (float)(a * sin(t) + b * cos(t));
  }
}

static int64_t read_len(attn_ctx *ctx, attn_kv_cache *kv, int64_t b) {
  int64_t lens[MB];
  attn_kv_cache_info info = {.struct_size = sizeof info};
  FZ_CHECK(attn_kv_cache_info_get(ctx, kv, &info, lens) == ATTN_OK, "info");
  return lens[b];
}

/* Every sequence equals the model. */
static void check_model(attn_ctx *ctx, attn_kv_cache *kv, const model *m, const char *after) {
  for (int64_t b = 0; b < m->B; b++) {
    int64_t len = read_len(ctx, kv, b);
    FZ_CHECK(len == m->len[b], "after %s: sequence %lld has %lld tokens, model %lld", after,
             (long long)b, (long long)len, (long long)m->len[b]);
    if (!len)
      continue;
    float *k = malloc((size_t)(m->H * len * m->D) * sizeof(float));
    float *v = malloc((size_t)(m->H * len * m->Dv) * sizeof(float));
    attn_tensor *tk = NULL, *tv = NULL;
    int64_t kd[3] = {m->H, len, m->D}, vd[3] = {m->H, len, m->Dv};
    attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 3, kd, NULL, k, (size_t)(m->H * len * m->D) * 4, &tk);
    attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 3, vd, NULL, v, (size_t)(m->H * len * m->Dv) * 4,
                     &tv);
    attn_status st = attn_kv_read(ctx, kv, b, 0, tk, tv);
    FZ_CHECK(st == ATTN_OK, "read: %s", attn_ctx_last_error(ctx));
    for (int64_t h = 0; h < m->H; h++)
      for (int64_t j = 0; j < len; j++) {
        FZ_CHECK(same_keys(m, k + (h * len + j) * m->D, m->k[b][h][j], m->roped[b][j]),
                 "after %s: key %lld of sequence %lld head %lld differs", after, (long long)j,
                 (long long)b, (long long)h);
        FZ_CHECK(!memcmp(v + (h * len + j) * m->Dv, m->v[b][h][j], (size_t)m->Dv * 4),
                 "after %s: value %lld of sequence %lld differs", after, (long long)j,
                 (long long)b);
      }
    attn_tensor_free(ctx, tk);
    attn_tensor_free(ctx, tv);
    free(k);
    free(v);
  }
}

/* A wrapped cache of fz_dim sizes (0, 2^31 ... 2^62, INT64_MAX): accepted
 * exactly when Hkv, D and Dv are >= 1 and the sizes fit (B lengths, BLAS's
 * int); then an append of no token (with RoPE or not) and attention of no
 * query return at once and leave the lengths alone. */
static void wrapped_extremes(fz_in *in) {
  fz_alloc_state a = {0};
  attn_ctx *ctx = fz_ctx(&a, 1);
  int64_t B = fz_dim(in, 3), H = fz_dim(in, 2), cap = fz_dim(in, 3), D = fz_dim(in, 4),
          Dv = fz_chance(in, 128) ? D : fz_dim(in, 4);
  int64_t kd[4] = {B, H, cap, D}, vd[4] = {B, H, cap, Dv};
  float *buf = calloc(2 * FZ_MAX_BYTES / 4, 4);
  FZ_CHECK(buf, "malloc");
  attn_tensor *k = NULL, *v = NULL;
  if (attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, kd, NULL, buf, FZ_MAX_BYTES, &k) == ATTN_OK &&
      attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, vd, NULL, buf + FZ_MAX_BYTES / 4, FZ_MAX_BYTES,
                       &v) == ATTN_OK) {
    bool ok = H >= 1 && D >= 1 && Dv >= 1 && (uint64_t)B <= SIZE_MAX / 8 && cap <= INT32_MAX &&
              D <= INT32_MAX && Dv <= INT32_MAX;
    attn_kv_cache *kv = NULL;
    attn_status st = attn_kv_cache_wrap(ctx, k, v, NULL, &kv);
    FZ_CHECK(st == ATTN_OK ? ok : !ok || st == ATTN_ERR_NO_MEMORY, "wrap [%lld, %lld, %lld, %lld] "
             "Dv %lld: %s", (long long)B, (long long)H, (long long)cap, (long long)D,
             (long long)Dv, attn_ctx_last_error(ctx));
    if (st == ATTN_OK) {
      int64_t nd[4] = {B, H, 0, D}, nv[4] = {B, H, 0, Dv}, od[4] = {B, H, 0, Dv};
      attn_tensor *kn = NULL, *vn = NULL, *q = NULL, *o = NULL;
      attn_rope_params rp;
      attn_rope_params_init(&rp);
      attn_kv_append_params ap;
      attn_kv_append_params_init(&ap);
      ap.rope = fz_chance(in, 128) ? &rp : NULL; /* an odd D refuses it */
      if (attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, nd, NULL, buf, 0, &kn) == ATTN_OK &&
          attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, nv, NULL, buf, 0, &vn) == ATTN_OK) {
        st = attn_kv_append(ctx, kv, kn, vn, NULL, &ap);
        FZ_CHECK(st == ATTN_OK || st == ATTN_ERR_NO_MEMORY || (ap.rope && st == ATTN_ERR_INVALID_ARG),
                 "append of no token: %s", attn_ctx_last_error(ctx));
      }
      if (attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, nd, NULL, buf, 0, &q) == ATTN_OK &&
          attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, od, NULL, buf, 0, &o) == ATTN_OK) {
        st = attn_kv_attend(ctx, kv, q, o, NULL, NULL);
        FZ_CHECK(st == ATTN_OK || st == ATTN_ERR_NO_MEMORY, "attend of no query: %s",
                 attn_ctx_last_error(ctx));
      }
      attn_kv_cache_info info = {.struct_size = sizeof info};
      int64_t lens[4] = {0};
      FZ_CHECK(attn_kv_cache_info_get(ctx, kv, &info, B <= 4 ? lens : NULL) == ATTN_OK, "info");
      for (int64_t b = 0; b < B && b < 4; b++)
        FZ_CHECK(lens[b] == 0, "sequence %lld holds %lld tokens", (long long)b, (long long)lens[b]);
    }
  }
  free(buf);
  fz_ctx_destroy(ctx, &a);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* The same bytes read again (the program below keeps its decoding). */
  if (size && data[size - 1] < 32) {
    fz_in again = {data, size};
    wrapped_extremes(&again);
  }
  fz_in in = {data, size};
  fz_alloc_state a = {0};
  attn_ctx *ctx = fz_ctx(&a, 1 + fz_chance(&in, 64));
  model m;
  memset(&m, 0, sizeof m);
  m.B = fz_range(&in, 1, MB), m.H = fz_range(&in, 1, MH);
  m.D = fz_range(&in, 4, MD), m.Dv = fz_range(&in, 1, MD);
  int paged = fz_chance(&in, 128);
  m.dt = DTYPES[fz_range(&in, 0, 2)];
  m.ulp = m.dt == ATTN_DTYPE_F16 ? 0x1p-10 : m.dt == ATTN_DTYPE_BF16 ? 0x1p-7 : 0;
  int32_t in_dt = DTYPES[fz_range(&in, 0, 2)];
  int long_seqs = fz_chance(&in, 64);
  uint32_t seed = long_seqs ? fz_u32(&in) | 1 : 0; /* values from the input when 0 */
  int64_t bs = long_seqs ? fz_range(&in, 16, 64) : fz_range(&in, 1, 9);
  int64_t n_blocks = long_seqs ? fz_range(&in, 4, 24) : fz_range(&in, 1, 12);
  attn_kv_cache_params p;
  attn_kv_cache_params_init(&p);
  p.layout = paged;
  p.dtype = m.dt;
  p.batch = m.B, p.kv_heads = m.H, p.head_dim = m.D, p.value_dim = m.Dv;
  if (paged) {
    p.block_size = bs, p.num_blocks = n_blocks;
    p.capacity = n_blocks * bs < MCAP ? 0 : MCAP;
    m.cap = n_blocks * bs < MCAP ? n_blocks * bs : MCAP;
  } else {
    p.capacity = m.cap = long_seqs ? fz_range(&in, 257, MCAP) : fz_range(&in, 1, SHORT_CAP);
  }
  attn_kv_cache *kv = NULL;
  FZ_CHECK(attn_kv_cache_create(ctx, &p, &kv) == ATTN_OK, "create: %s",
           attn_ctx_last_error(ctx));
  const int64_t L = long_seqs ? LMAX : 8;
  float kn[MB * MH * LMAX * MD], vn[MB * MH * LMAX * MD];
  int64_t knd[4] = {m.B, m.H, L, m.D}, vnd[4] = {m.B, m.H, L, m.Dv};
  attn_tensor *tk = NULL, *tv = NULL, *fk = NULL, *fv = NULL;
  attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, knd, NULL, kn, sizeof kn, &fk);
  attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, vnd, NULL, vn, sizeof vn, &fv);
  /* The rows handed to append: kn / vn themselves, or copies in a half type. */
  uint16_t kh[sizeof kn / 4], vh[sizeof vn / 4];
  if (in_dt == ATTN_DTYPE_F32) {
    tk = fk, tv = fv;
  } else {
    attn_tensor_wrap(ctx, in_dt, 4, knd, NULL, kh, sizeof kh, &tk);
    attn_tensor_wrap(ctx, in_dt, 4, vnd, NULL, vh, sizeof vh, &tv);
  }
  FZ_CHECK(fk && fv && tk && tv, "wrap: %s", attn_ctx_last_error(ctx));

  for (int op = 0; op < 24 && in.n; op++) {
    int kind = (int)fz_range(&in, 0, 5);
    int64_t s1 = fz_range(&in, -1, m.B), s2 = fz_range(&in, -1, m.B);
    /* The next allocation fails (armed right before the call). */
    int fail = fz_chance(&in, 8);
#define ARM() (a.fail_at = fail ? a.allocs + 1 : 0)
    attn_status st;
    const char *name = "?";
    if (kind == 0) {
      name = "append";
      int64_t n[MB];
      bool ok = true;
      int64_t need = 0;
      for (int64_t b = 0; b < m.B; b++) {
        n[b] = fz_range(&in, -1, L + 1);
        if (n[b] < 0 || n[b] > L || m.len[b] + n[b] > m.cap)
          ok = false;
      }
      for (size_t i = 0; i < (size_t)(m.B * m.H * L * MD); i++) {
        if (seed) { /* xorshift32: long appends would use up the input */
          seed ^= seed << 13, seed ^= seed >> 17, seed ^= seed << 5;
          kn[i] = (float)(int8_t)seed / 16, vn[i] = (float)(int8_t)(seed >> 8) / 16;
        } else {
          kn[i] = (float)(int8_t)fz_u8(&in) / 16, vn[i] = (float)(int8_t)fz_u8(&in) / 16;
        }
      }
      if (tk != fk) /* exact: multiples of 1/16 below 8 in magnitude */
        FZ_CHECK(attn_tensor_copy(ctx, fk, tk) == ATTN_OK &&
                     attn_tensor_copy(ctx, fv, tv) == ATTN_OK,
                 "copy: %s", attn_ctx_last_error(ctx));
      int rope = fz_chance(&in, 64);
      attn_rope_params rp;
      attn_rope_params_init(&rp);
      rp.rotary_dim = 4, rp.theta = 100;
      attn_kv_append_params ap;
      attn_kv_append_params_init(&ap);
      ap.rope = rope ? &rp : NULL;
      int64_t free_before = 0;
      if (paged) {
        attn_kv_cache_info info = {.struct_size = sizeof info};
        attn_kv_cache_info_get(ctx, kv, &info, NULL);
        free_before = info.free_blocks;
        if (ok)
          for (int64_t b = 0; b < m.B; b++) /* at most: new blocks + one copy */
            need += n[b] ? ceil_div(m.len[b] + n[b], bs) - ceil_div(m.len[b], bs) + 1 : 0;
      }
      ARM();
      st = attn_kv_append(ctx, kv, tk, tv, n, &ap);
      FZ_CHECK(ok || st != ATTN_OK, "append of invalid counts succeeded");
      if (ok && st != ATTN_OK)
        FZ_CHECK(st == ATTN_ERR_NO_MEMORY && (paged || rope),
                 "append of valid counts failed: %s", attn_ctx_last_error(ctx));
      if (ok && paged && need <= free_before && !rope)
        FZ_CHECK(st == ATTN_OK, "append needing at most %lld of %lld free blocks failed: %s",
                 (long long)need, (long long)free_before, attn_ctx_last_error(ctx));
      if (st == ATTN_OK)
        for (int64_t b = 0; b < m.B; b++) {
          for (int64_t h = 0; h < m.H; h++)
            for (int64_t i = 0; i < n[b]; i++) {
              memcpy(m.k[b][h][m.len[b] + i], kn + ((b * m.H + h) * L + i) * m.D,
                     (size_t)m.D * 4);
              if (rope)
                rope_row(m.k[b][h][m.len[b] + i], m.len[b] + i);
              m.roped[b][m.len[b] + i] = rope;
              memcpy(m.v[b][h][m.len[b] + i], vn + ((b * m.H + h) * L + i) * m.Dv,
                     (size_t)m.Dv * 4);
            }
          m.len[b] += n[b];
        }
    } else if (kind == 1) {
      name = "truncate";
      int64_t len = fz_range(&in, -1, MCAP);
      bool ok = s1 >= 0 && s1 < m.B && len >= 0 && len <= m.len[s1];
      ARM();
      st = attn_kv_truncate(ctx, kv, s1, len);
      FZ_CHECK((st == ATTN_OK) == ok, "truncate(%lld, %lld): %s", (long long)s1,
               (long long)len, attn_status_string(st));
      if (ok)
        m.len[s1] = len;
    } else if (kind == 2) {
      name = "reset";
      bool ok = s1 >= -1 && s1 < m.B;
      ARM();
      st = attn_kv_reset(ctx, kv, s1);
      FZ_CHECK((st == ATTN_OK) == ok, "reset(%lld): %s", (long long)s1, attn_status_string(st));
      for (int64_t b = 0; ok && b < m.B; b++)
        if (s1 == -1 || b == s1)
          m.len[b] = 0;
    } else if (kind == 3) {
      name = "copy";
      bool ok = s1 >= 0 && s1 < m.B && s2 >= 0 && s2 < m.B;
      ARM();
      st = attn_kv_copy(ctx, kv, s1, s2);
      FZ_CHECK((st == ATTN_OK) == ok, "copy(%lld, %lld): %s", (long long)s1, (long long)s2,
               attn_status_string(st));
      if (ok && s1 != s2) {
        memcpy(m.k[s1], m.k[s2], sizeof m.k[s1]);
        memcpy(m.v[s1], m.v[s2], sizeof m.v[s1]);
        memcpy(m.roped[s1], m.roped[s2], sizeof m.roped[s1]);
        m.len[s1] = m.len[s2];
      }
    } else {
      name = "attend";
      int64_t Lq = fz_range(&in, 1, 3), G = fz_range(&in, 1, 2), n[MB];
      bool ok = true;
      for (int64_t b = 0; b < m.B; b++) {
        n[b] = fz_range(&in, -1, Lq);
        if (n[b] < 0 || n[b] > m.len[b])
          ok = false;
      }
      int64_t Hq = m.H * G;
      float q[MB * 4 * 3 * MD], out[MB * 4 * 3 * MD];
      uint16_t qh[sizeof q / 4], oh[sizeof out / 4];
      for (size_t i = 0; i < sizeof q / 4; i++)
        q[i] = (float)(int8_t)fz_u8(&in) / 32;
      int32_t qdt = DTYPES[fz_range(&in, 0, 2)], odt = DTYPES[fz_range(&in, 0, 2)];
      double out_ulp = odt == ATTN_DTYPE_F16 ? 0x1p-11 : odt == ATTN_DTYPE_BF16 ? 0x1p-8 : 0;
      int64_t qd[4] = {m.B, Hq, Lq, m.D}, od[4] = {m.B, Hq, Lq, m.Dv};
      attn_tensor *tq = NULL, *to = NULL, *fq = NULL, *fo = NULL;
      attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, qd, NULL, q, sizeof q, &fq);
      attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, od, NULL, out, sizeof out, &fo);
      tq = fq, to = fo;
      if (qdt != ATTN_DTYPE_F32) { /* q exact in either half type */
        attn_tensor_wrap(ctx, qdt, 4, qd, NULL, qh, sizeof qh, &tq);
        FZ_CHECK(tq && attn_tensor_copy(ctx, fq, tq) == ATTN_OK, "q: %s",
                 attn_ctx_last_error(ctx));
      }
      if (odt != ATTN_DTYPE_F32)
        attn_tensor_wrap(ctx, odt, 4, od, NULL, oh, sizeof oh, &to);
      FZ_CHECK(fq && fo && to, "wrap: %s", attn_ctx_last_error(ctx));
      attn_sdpa_params sp;
      attn_sdpa_params_init(&sp);
      sp.causal = fz_chance(&in, 160);
      ARM();
      st = attn_kv_attend(ctx, kv, tq, to, n, &sp);
      FZ_CHECK(ok || st != ATTN_OK, "attend with invalid counts succeeded");
      if (st == ATTN_OK && to != fo) /* widen the half output (exact) to check it */
        FZ_CHECK(attn_tensor_copy(ctx, to, fo) == ATTN_OK, "out: %s", attn_ctx_last_error(ctx));
      if (ok && st != ATTN_OK)
        FZ_CHECK(st == ATTN_ERR_NO_MEMORY, "attend failed: %s", attn_ctx_last_error(ctx));
      if (st == ATTN_OK)
        for (int64_t b = 0; b < m.B; b++)
          for (int64_t h = 0; h < Hq; h++)
            for (int64_t i = 0; i < Lq; i++) {
              const float *o = out + ((b * Hq + h) * Lq + i) * m.Dv;
              const float *qr = q + ((b * Hq + h) * Lq + i) * m.D;
              double acc[MD] = {0}, sum = 0, mx = -INFINITY, s[MCAP];
              int64_t pos = m.len[b] - n[b] + i, hi = sp.causal ? pos + 1 : m.len[b];
              if (i >= n[b])
                hi = 0;
              /* A rotated key in a half cache is the model's within an ULP:
               * its logit within dlt, each weight within a factor e^(2 dlt),
               * the output within 2 max|v| (e^(2 dlt) - 1). */
              double dlt = 0, vmax = 0;
              for (int64_t j = 0; j < hi; j++) {
                double sa = 0;
                s[j] = 0;
                for (int64_t d = 0; d < m.D; d++) {
                  s[j] += (double)qr[d] * m.k[b][h / G][j][d];
                  sa += fabs((double)qr[d] * m.k[b][h / G][j][d]);
                }
                s[j] /= sqrt((double)m.D);
                mx = s[j] > mx ? s[j] : mx;
                if (m.roped[b][j] && m.ulp * sa / sqrt((double)m.D) > dlt)
                  dlt = m.ulp * sa / sqrt((double)m.D);
                for (int64_t d = 0; d < m.Dv; d++)
                  vmax = fabs(m.v[b][h / G][j][d]) > vmax ? fabs(m.v[b][h / G][j][d]) : vmax;
              }
              for (int64_t j = 0; j < hi; j++) {
                double w = exp(s[j] - mx);
                sum += w;
                for (int64_t d = 0; d < m.Dv; d++)
                  acc[d] += w * m.v[b][h / G][j][d];
              }
              for (int64_t d = 0; d < m.Dv; d++) {
                double want = hi ? acc[d] / sum : 0;
                FZ_CHECK(fabs(o[d] - want) <=
                             1e-4 * (1 + fabs(want)) + out_ulp * fabs(want) + 2 * vmax * expm1(2 * dlt),
                         "attend: sequence %lld head %lld row %lld col %lld: %g, want %g",
                         (long long)b, (long long)h, (long long)i, (long long)d,
                         (double)o[d], want);
              }
            }
      attn_tensor_free(ctx, fq);
      attn_tensor_free(ctx, fo);
      if (tq != fq)
        attn_tensor_free(ctx, tq);
      if (to != fo)
        attn_tensor_free(ctx, to);
    }
    a.fail_at = 0;
#undef ARM
    check_model(ctx, kv, &m, name);
  }
  if (fz_chance(&in, 128))
    FZ_CHECK(attn_kv_cache_free(ctx, kv) == ATTN_OK, "free");
  fz_ctx_destroy(ctx, &a);
  return 0;
}
