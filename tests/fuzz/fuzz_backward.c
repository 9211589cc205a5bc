/* Fuzz target: attn_sdpa_backward, attn_sdpa_varlen_backward, attn_softmax_backward,
 * attn_log_softmax_backward. The input chooses small shapes, every SDPA
 * parameter (scale, soft-cap, causal, alignment, window, masks, key
 * lengths, ALiBi, sinks, dmask and dsinks outputs), the data (NaN, +-Inf,
 * +-FLT_MAX anywhere), the thread count and an allocation to fail.
 * Tensors are contiguous over exactly-sized heap buffers (ASan sees any
 * stray byte). Checks: a refused or failed call writes nothing; on success
 * a key that no row sees (past kv_len) gets dk = dv = 0 exactly, a row whose
 * lse is -inf gets dq = 0 exactly, and the gradients are the same bits on
 * one and on two threads, and (B = 1, no mask or kv_lens) the same bits from
 * attn_sdpa_varlen_backward over the packed view; attn_pool_attention_backward
 * against attn_sdpa_backward on queries shared by the batch. Softmax backward: masked entries (y = 0, or -inf
 * for log) get exactly 0, whatever dy holds. Calls without query rows whose
 * head count may be absurd (2^62): zero key gradients at once, or a refusal. */
#include "fuzz_common.h"

enum { MAXB = 2, MAXH = 4, MAXL = 40, MAXD = 9 };

typedef struct {
  float *buf;
  size_t n;
  attn_tensor *t;
} buf_t;

static void make(attn_ctx *ctx, buf_t *b, int32_t ndim, const int64_t *dims, fz_in *in,
                 int small) {
  b->n = 1;
  for (int32_t i = 0; i < ndim; i++)
    b->n *= (size_t)dims[i];
  b->buf = malloc(b->n * sizeof(float));
  FZ_CHECK(b->buf, "malloc");
  for (size_t i = 0; i < b->n; i++)
    b->buf[i] = small ? fz_float_mostly_small(in) : fz_float(in);
  attn_status st = attn_tensor_wrap(ctx, ATTN_DTYPE_F32, ndim, dims, NULL, b->buf,
                                    b->n * sizeof(float), &b->t);
  FZ_CHECK(st == ATTN_OK, "wrap: %s", attn_status_string(st));
}

/* The gradients of one SDPA problem on a context with `threads` threads;
 * returns the status; outputs into dq/dk/dv/dm/ds (caller buffers). */
typedef struct {
  int64_t B, Hq, Hkv, Lq, Lk, D, Dv;
  const float *q, *k, *v, *dout, *mask;
  const uint8_t *bmask;
  attn_sdpa_params p; /* masks as raw pointers above; tensors made per context */
  int want_dmask, want_dsinks;
  int varlen; /* B = 1 and nothing varlen refuses: check it gives the same bits */
  long fail_at;
} problem;

/* attn_sdpa_varlen_backward on the same buffers seen as packed [T, H, D]
 * (B = 1), between two empty sequences: the dense gradients, bit for bit
 * (the same problem; an empty sequence adds nothing). */
static void varlen_same(attn_ctx *ctx, const problem *pr, float *o, float *lse, const float *dq,
                        const float *dk, const float *dv, const float *ds) {
  int64_t Lq = pr->Lq, Lk = pr->Lk, D = pr->D, Dv = pr->Dv;
  size_t nq = (size_t)(pr->Hq * Lq), nk = (size_t)(pr->Hkv * Lk);
  float *g[3] = {malloc(nq * D * 4), malloc(nk * D * 4), malloc(nk * Dv * 4)}, gs[MAXH];
  FZ_CHECK(g[0] && g[1] && g[2], "malloc");
  int64_t qd[3] = {Lq, pr->Hq, D}, qs[3] = {D, Lq * D, 1}, kd[3] = {Lk, pr->Hkv, D},
          ks[3] = {D, Lk * D, 1}, vd[3] = {Lk, pr->Hkv, Dv}, vs[3] = {Dv, Lk * Dv, 1},
          od[3] = {Lq, pr->Hq, Dv}, os[3] = {Dv, Lq * Dv, 1}, ld[2] = {pr->Hq, Lq};
  attn_tensor *t[9] = {0};
  attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 3, qd, qs, (void *)pr->q, nq * D * 4, &t[0]);
  attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 3, kd, ks, (void *)pr->k, nk * D * 4, &t[1]);
  attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 3, vd, vs, (void *)pr->v, nk * Dv * 4, &t[2]);
  attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 3, od, os, o, nq * Dv * 4, &t[3]);
  attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 2, ld, NULL, lse, nq * 4, &t[4]);
  attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 3, od, os, (void *)pr->dout, nq * Dv * 4, &t[5]);
  attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 3, qd, qs, g[0], nq * D * 4, &t[6]);
  attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 3, kd, ks, g[1], nk * D * 4, &t[7]);
  attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 3, vd, vs, g[2], nk * Dv * 4, &t[8]);
  int64_t cu_q[4] = {0, 0, Lq, Lq}, cu_k[4] = {0, 0, Lk, Lk}, offs[3] = {7, 0, -7};
  attn_sdpa_params p = pr->p;
  if (p.q_offsets) {
    offs[1] = p.q_offsets[0];
    p.q_offsets = offs;
  }
  attn_sdpa_backward_params bp;
  attn_sdpa_backward_params_init(&bp);
  bp.dsinks = pr->want_dsinks ? gs : NULL;
  attn_status st = attn_sdpa_varlen_backward(ctx, t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7],
                                             t[8], 3, cu_q, cu_k, &p, &bp);
  FZ_CHECK(st == ATTN_OK, "attn_sdpa_varlen_backward: %s (%s)", attn_status_string(st),
           attn_ctx_last_error(ctx));
  FZ_CHECK(memcmp(g[0], dq, nq * D * 4) == 0, "varlen dq differs from the dense one");
  FZ_CHECK(memcmp(g[1], dk, nk * D * 4) == 0, "varlen dk differs from the dense one");
  FZ_CHECK(memcmp(g[2], dv, nk * Dv * 4) == 0, "varlen dv differs from the dense one");
  if (pr->want_dsinks)
    FZ_CHECK(memcmp(gs, ds, (size_t)pr->Hq * 4) == 0, "varlen dsinks differ");
  free(g[0]), free(g[1]), free(g[2]);
}

static attn_status grads(const problem *pr, int32_t threads, float *o, float *lse, float *dq,
                         float *dk, float *dv, float *dm, float *ds) {
  fz_alloc_state a = {0, 0, 0};
  attn_ctx *ctx = fz_ctx(&a, threads);
  int64_t qd[4] = {pr->B, pr->Hq, pr->Lq, pr->D}, kd[4] = {pr->B, pr->Hkv, pr->Lk, pr->D},
          vd[4] = {pr->B, pr->Hkv, pr->Lk, pr->Dv}, od[4] = {pr->B, pr->Hq, pr->Lq, pr->Dv},
          ld[3] = {pr->B, pr->Hq, pr->Lq}, md[4] = {pr->B, pr->Hq, pr->Lq, pr->Lk};
  size_t nq = (size_t)(pr->B * pr->Hq * pr->Lq), nm = nq * (size_t)pr->Lk;
  attn_tensor *t[12] = {0};
  attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, qd, NULL, (void *)pr->q, nq * pr->D * 4, &t[0]);
  attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, kd, NULL, (void *)pr->k,
                   (size_t)(pr->B * pr->Hkv * pr->Lk * pr->D) * 4, &t[1]);
  attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, vd, NULL, (void *)pr->v,
                   (size_t)(pr->B * pr->Hkv * pr->Lk * pr->Dv) * 4, &t[2]);
  attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, od, NULL, o, nq * pr->Dv * 4, &t[3]);
  attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 3, ld, NULL, lse, nq * 4, &t[4]);
  attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, od, NULL, (void *)pr->dout, nq * pr->Dv * 4, &t[5]);
  attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, qd, NULL, dq, nq * pr->D * 4, &t[6]);
  attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, kd, NULL, dk,
                   (size_t)(pr->B * pr->Hkv * pr->Lk * pr->D) * 4, &t[7]);
  attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, vd, NULL, dv,
                   (size_t)(pr->B * pr->Hkv * pr->Lk * pr->Dv) * 4, &t[8]);
  attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, md, NULL, dm, nm * 4, &t[9]);
  if (pr->mask)
    attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, md, NULL, (void *)pr->mask, nm * 4, &t[10]);
  if (pr->bmask)
    attn_tensor_wrap(ctx, ATTN_DTYPE_U8, 4, md, NULL, (void *)pr->bmask, nm, &t[11]);
  attn_sdpa_params p = pr->p;
  p.mask = t[10];
  p.bool_mask = t[11];
  p.lse = t[4];
  attn_status st = attn_sdpa(ctx, t[0], t[1], t[2], t[3], &p);
  if (st == ATTN_OK) {
    attn_sdpa_backward_params bp;
    attn_sdpa_backward_params_init(&bp);
    bp.dmask = pr->want_dmask ? t[9] : NULL;
    bp.dsinks = pr->want_dsinks ? ds : NULL;
    a.fail_at = pr->fail_at ? a.allocs + pr->fail_at : 0;
    st = attn_sdpa_backward(ctx, t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8], &p, &bp);
    FZ_CHECK(st == ATTN_OK || st == ATTN_ERR_NO_MEMORY || st == ATTN_ERR_INVALID_ARG,
             "attn_sdpa_backward: %s (%s)", attn_status_string(st), attn_ctx_last_error(ctx));
    a.fail_at = 0;
    if (st == ATTN_OK && pr->varlen)
      varlen_same(ctx, pr, o, lse, dq, dk, dv, ds);
  }
  fz_ctx_destroy(ctx, &a);
  return st;
}

/* attn_pool_attention_backward against attn_sdpa_backward on the same
 * problem (queries = q's batch 0 shared by the batch, the scale, kv_lens as
 * lengths): the same forward bits, the same dk and dv bits, and dqueries the
 * batch sum of the dense dq, in double in batch order (as the library sums
 * it). */
static void pool_attention_same(const problem *pr, int32_t threads) {
  fz_alloc_state a = {0, 0, 0};
  attn_ctx *ctx = fz_ctx(&a, threads);
  int64_t B = pr->B, Hq = pr->Hq, M = pr->Lq, D = pr->D, Dv = pr->Dv;
  size_t nq = (size_t)(Hq * M * D), nq4 = (size_t)B * nq, no = (size_t)(B * Hq * M * Dv);
  size_t nl = (size_t)(B * Hq * M), nk = (size_t)(B * pr->Hkv * pr->Lk * D);
  size_t nv = (size_t)(B * pr->Hkv * pr->Lk * Dv);
  size_t sizes[10] = {no, nl, no, nl, nq, nk, nv, nq4, nk, nv};
  float *f[10];
  for (int i = 0; i < 10; i++) {
    f[i] = malloc((sizes[i] ? sizes[i] : 1) * 4);
    FZ_CHECK(f[i], "malloc");
  }
  int64_t qd[3] = {Hq, M, D}, q4d[4] = {B, Hq, M, D}, q4s[4] = {0, M * D, D, 1};
  int64_t kd[4] = {B, pr->Hkv, pr->Lk, D}, vd[4] = {B, pr->Hkv, pr->Lk, Dv};
  int64_t od[4] = {B, Hq, M, Dv}, ld[3] = {B, Hq, M};
  attn_tensor *tq = NULL, *tq4 = NULL, *tk = NULL, *tv = NULL, *tg = NULL, *t[10] = {0};
  attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 3, qd, NULL, (void *)pr->q, nq * 4, &tq);
  attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, q4d, q4s, (void *)pr->q, nq * 4, &tq4);
  attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, kd, NULL, (void *)pr->k, nk * 4, &tk);
  attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, vd, NULL, (void *)pr->v, nv * 4, &tv);
  attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, od, NULL, (void *)pr->dout, no * 4, &tg);
  const int64_t *dims[10] = {od, ld, od, ld, qd, kd, vd, q4d, kd, vd};
  const int32_t nds[10] = {4, 3, 4, 3, 3, 4, 4, 4, 4, 4};
  for (int i = 0; i < 10; i++)
    attn_tensor_wrap(ctx, ATTN_DTYPE_F32, nds[i], dims[i], NULL, f[i], sizes[i] * 4, &t[i]);
  attn_pool_attention_params pp;
  attn_pool_attention_params_init(&pp);
  pp.scale = pr->p.scale;
  pp.lengths = pr->p.kv_lens;
  pp.lse = t[1];
  attn_status st = attn_pool_attention(ctx, tq, tk, tv, t[0], &pp);
  FZ_CHECK(st == ATTN_OK || st == ATTN_ERR_INVALID_ARG, "attn_pool_attention: %s (%s)",
           attn_status_string(st), attn_ctx_last_error(ctx));
  if (st == ATTN_OK) {
    st = attn_pool_attention_backward(ctx, tq, tk, tv, t[0], t[1], tg, t[4], t[5], t[6], &pp);
    FZ_CHECK(st == ATTN_OK, "attn_pool_attention_backward: %s (%s)", attn_status_string(st),
             attn_ctx_last_error(ctx));
    attn_sdpa_params sp;
    attn_sdpa_params_init(&sp);
    sp.scale = pp.scale;
    sp.kv_lens = pp.lengths;
    sp.lse = t[3];
    FZ_CHECK(attn_sdpa(ctx, tq4, tk, tv, t[2], &sp) == ATTN_OK, "attn_sdpa: %s",
             attn_ctx_last_error(ctx));
    FZ_CHECK(memcmp(f[0], f[2], no * 4) == 0 && memcmp(f[1], f[3], nl * 4) == 0,
             "pool_attention's forward differs from attn_sdpa's");
    FZ_CHECK(attn_sdpa_backward(ctx, tq4, tk, tv, t[2], t[3], tg, t[7], t[8], t[9], &sp, NULL) ==
                 ATTN_OK,
             "attn_sdpa_backward: %s", attn_ctx_last_error(ctx));
    FZ_CHECK(memcmp(f[5], f[8], nk * 4) == 0 && memcmp(f[6], f[9], nv * 4) == 0,
             "pool_attention_backward's dk or dv differs from attn_sdpa_backward's");
    for (size_t i = 0; i < nq; i++) {
      double s = 0;
      for (int64_t b = 0; b < B; b++)
        s += f[7][(size_t)b * nq + i];
      float want = (float)s;
      FZ_CHECK(memcmp(&want, &f[4][i], 4) == 0 || (isnan(want) && isnan(f[4][i])),
               "dqueries[%zu] = %g but the batch sum of dq is %g", i, (double)f[4][i],
               (double)want);
    }
  }
  fz_ctx_destroy(ctx, &a);
  for (int i = 0; i < 10; i++)
    free(f[i]);
}

static void fuzz_sdpa_backward(fz_in *in) {
  problem pr;
  memset(&pr, 0, sizeof pr);
  pr.B = fz_range(in, 1, MAXB);
  pr.Hkv = fz_range(in, 1, 2);
  pr.Hq = pr.Hkv * fz_range(in, 1, MAXH / 2);
  pr.Lq = fz_range(in, 1, MAXL);
  pr.Lk = fz_range(in, 1, MAXL);
  /* Now and then past the kernel's 64-row blocks and 128-key tiles (the
   * extra byte read only then: the committed seeds keep their shapes). */
  if (pr.Lq == MAXL)
    pr.Lq = fz_range(in, MAXL, 140);
  if (pr.Lk == MAXL)
    pr.Lk = fz_range(in, MAXL, 300);
  pr.D = fz_range(in, 1, MAXD);
  pr.Dv = fz_range(in, 1, MAXD);
  attn_sdpa_params_init(&pr.p);
  pr.p.scale = fz_chance(in, 200) ? 0.0f : fz_float(in);
  pr.p.softcap = fz_chance(in, 200) ? 0.0f : fz_float_mostly_small(in);
  pr.p.causal = fz_chance(in, 128);
  pr.p.align = fz_chance(in, 128) ? ATTN_ALIGN_BOTTOM_RIGHT : ATTN_ALIGN_TOP_LEFT;
  pr.p.window = fz_chance(in, 64);
  pr.p.window_left = fz_range(in, 0, MAXL);
  pr.p.window_right = fz_range(in, 0, MAXL);
  int64_t kv_lens[MAXB];
  float alibi[MAXH], sinks[MAXH], ds[MAXH], ds2[MAXH];
  if (fz_chance(in, 64)) {
    for (int64_t b = 0; b < pr.B; b++)
      kv_lens[b] = fz_range(in, 0, pr.Lk);
    pr.p.kv_lens = kv_lens;
  }
  if (fz_chance(in, 64)) {
    for (int64_t h = 0; h < pr.Hq; h++)
      alibi[h] = fz_float_mostly_small(in);
    pr.p.alibi_slopes = alibi;
  }
  if (fz_chance(in, 64)) {
    for (int64_t h = 0; h < pr.Hq; h++)
      sinks[h] = fz_float_mostly_small(in);
    pr.p.sinks = sinks;
    pr.want_dsinks = fz_chance(in, 200);
  }
  pr.want_dmask = fz_chance(in, 64);
  pr.varlen = pr.B == 1 && !pr.p.kv_lens && !pr.want_dmask;
  pr.fail_at = fz_chance(in, 32) ? fz_range(in, 1, 3) : 0;
  int small = fz_chance(in, 192);
  size_t nq = (size_t)(pr.B * pr.Hq * pr.Lq), nk = (size_t)(pr.B * pr.Hkv * pr.Lk),
         nm = nq * (size_t)pr.Lk;
  float *q = malloc(nq * pr.D * 4), *k = malloc(nk * pr.D * 4), *v = malloc(nk * pr.Dv * 4),
        *g = malloc(nq * pr.Dv * 4), *mask = NULL;
  uint8_t *bm = NULL;
  FZ_CHECK(q && k && v && g, "malloc");
  for (size_t i = 0; i < nq * pr.D; i++)
    q[i] = small ? fz_float_mostly_small(in) : fz_float(in);
  for (size_t i = 0; i < nk * pr.D; i++)
    k[i] = small ? fz_float_mostly_small(in) : fz_float(in);
  for (size_t i = 0; i < nk * pr.Dv; i++)
    v[i] = small ? fz_float_mostly_small(in) : fz_float(in);
  for (size_t i = 0; i < nq * pr.Dv; i++)
    g[i] = small ? fz_float_mostly_small(in) : fz_float(in);
  if (fz_chance(in, 64)) {
    mask = malloc(nm * 4);
    FZ_CHECK(mask, "malloc");
    for (size_t i = 0; i < nm; i++)
      mask[i] = fz_chance(in, 40) ? -INFINITY : fz_float_mostly_small(in);
  }
  if (fz_chance(in, 64)) {
    bm = malloc(nm);
    FZ_CHECK(bm, "malloc");
    for (size_t i = 0; i < nm; i++)
      bm[i] = fz_chance(in, 200);
  }
  pr.q = q, pr.k = k, pr.v = v, pr.dout = g, pr.mask = mask, pr.bmask = bm;
  pr.varlen &= !mask && !bm;
  float *o = malloc(nq * pr.Dv * 4), *lse = malloc(nq * 4);
  float *out[2][4];
  size_t sizes[4] = {nq * pr.D, nk * pr.D, nk * pr.Dv, nm};
  for (int r = 0; r < 2; r++)
    for (int i = 0; i < 4; i++) {
      out[r][i] = malloc(sizes[i] * 4);
      FZ_CHECK(out[r][i], "malloc");
      for (size_t e = 0; e < sizes[i]; e++)
        out[r][i][e] = -777.0f; /* sentinel */
    }
  attn_status st1 = grads(&pr, 1, o, lse, out[0][0], out[0][1], out[0][2], out[0][3], ds);
  attn_status st2 = grads(&pr, 2, o, lse, out[1][0], out[1][1], out[1][2], out[1][3], ds2);
  for (int r = 0; r < 2; r++) {
    attn_status st = r ? st2 : st1;
    if (st != ATTN_OK) { /* nothing written */
      for (int i = 0; i < 4; i++)
        for (size_t e = 0; e < sizes[i]; e++)
          FZ_CHECK(out[r][i][e] == -777.0f, "output %d written on failure", i);
    }
  }
  if (st1 == ATTN_OK && st2 == ATTN_OK) {
    for (int i = 0; i < (pr.want_dmask ? 4 : 3); i++)
      FZ_CHECK(memcmp(out[0][i], out[1][i], sizes[i] * 4) == 0,
               "output %d differs between 1 and 2 threads", i);
    if (pr.want_dsinks)
      FZ_CHECK(memcmp(ds, ds2, (size_t)pr.Hq * 4) == 0, "dsinks differ between thread counts");
    /* keys past kv_len: nothing flows to them */
    if (pr.p.kv_lens)
      for (int64_t b = 0; b < pr.B; b++)
        for (int64_t h = 0; h < pr.Hkv; h++)
          for (int64_t j = kv_lens[b]; j < pr.Lk; j++) {
            size_t r = (size_t)((b * pr.Hkv + h) * pr.Lk + j);
            for (int64_t d = 0; d < pr.D; d++)
              FZ_CHECK(out[0][1][r * pr.D + d] == 0, "dk of hidden key %zu", r);
            for (int64_t d = 0; d < pr.Dv; d++)
              FZ_CHECK(out[0][2][r * pr.Dv + d] == 0, "dv of hidden key %zu", r);
          }
    /* the forward's lse read back from grads(): rows with nothing visible */
    for (size_t r = 0; r < nq; r++)
      if (lse[r] == -INFINITY)
        for (int64_t d = 0; d < pr.D; d++)
          FZ_CHECK(out[0][0][r * pr.D + d] == 0, "dq of an empty row %zu", r);
  }
  if (fz_chance(in, 96))
    pool_attention_same(&pr, (int32_t)fz_range(in, 1, 2));
  for (int r = 0; r < 2; r++)
    for (int i = 0; i < 4; i++)
      free(out[r][i]);
  free(q), free(k), free(v), free(g), free(mask), free(bm), free(o), free(lse);
}

static void fuzz_softmax_backward(fz_in *in) {
  int log = fz_chance(in, 128);
  int64_t dims[2] = {fz_range(in, 1, 6), fz_range(in, 1, 80)};
  fz_alloc_state a = {0, 0, 0};
  attn_ctx *ctx = fz_ctx(&a, (int32_t)fz_range(in, 1, 2));
  buf_t y, dy, dx, dz;
  make(ctx, &y, 2, dims, in, fz_chance(in, 128));
  make(ctx, &dy, 2, dims, in, 0);
  make(ctx, &dx, 2, dims, in, 0);
  make(ctx, &dz, 2, dims, in, 0);
  for (size_t i = 0; i < y.n; i++) /* hidden entries */
    if (fz_chance(in, 40))
      y.buf[i] = log ? -INFINITY : 0.0f;
  attn_softmax_params p;
  attn_softmax_params_init(&p);
  p.scale = fz_chance(in, 200) ? 0.0f : fz_float(in);
  if (fz_chance(in, 64)) /* the forward's axis: valid -2..0, else refused */
    p.axis = (int32_t)fz_range(in, -3, 1);
  float *before = malloc(dx.n * 4);
  FZ_CHECK(before, "malloc");
  memcpy(before, dx.buf, dx.n * 4);
  attn_status st = (log ? attn_log_softmax_backward : attn_softmax_backward)(ctx, y.t, dy.t, dx.t,
                                                                           dz.t, &p);
  if (st != ATTN_OK) {
    FZ_CHECK(st == ATTN_ERR_INVALID_ARG, "softmax backward: %s", attn_status_string(st));
    FZ_CHECK(memcmp(before, dx.buf, dx.n * 4) == 0, "dx written on failure");
  } else {
    FZ_CHECK(p.axis <= 0 && p.axis >= -2, "axis %d accepted for 2-D y", (int)p.axis);
    for (size_t i = 0; i < y.n; i++)
      if (y.buf[i] == (log ? -INFINITY : 0.0f))
        FZ_CHECK(dx.buf[i] == 0 && dz.buf[i] == 0, "hidden entry %zu: dx %g dz %g", i,
                 (double)dx.buf[i], (double)dz.buf[i]);
  }
  free(before);
  fz_ctx_destroy(ctx, &a);
  free(y.buf), free(dy.buf), free(dx.buf), free(dz.buf);
}

/* An empty view: no element, so any strides (small ones, which BLAS takes). */
static attn_tensor *empty_view(attn_ctx *ctx, int32_t ndim, const int64_t *dims) {
  static float none;
  const int64_t strides[4] = {1, 1, 1, 1};
  attn_tensor *t = NULL;
  if (attn_tensor_wrap(ctx, ATTN_DTYPE_F32, ndim, dims, strides, &none, 0, &t) != ATTN_OK)
    return NULL; /* dims that overflow, or negative */
  return t;
}

/* Backward calls with no query row (B = 0, Lq = 0, packed Tq = 0, M = 0
 * learned queries) whose head count may be absurd (fz_dim: 2^31 ... 2^62,
 * INT64_MAX): they must return at once, with zero gradients for the keys,
 * or refuse with nothing written. */
/* k, v, dk, dv (n keys of D and Dv floats) wrapped with dims kd / vd. */
static void wrap_kv_grads(attn_ctx *ctx, int32_t nd, const int64_t *kd, const int64_t *vd,
                          float *const bufs[4], size_t n, int64_t D, int64_t Dv,
                          attn_tensor *out[4]) {
  for (int i = 0; i < 4; i++) {
    int is_v = i & 1; /* k, v, dk, dv */
    size_t bytes = n * (size_t)(is_v ? Dv : D) * 4;
    FZ_CHECK(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, nd, is_v ? vd : kd, NULL, bufs[i], bytes,
                              &out[i]) == ATTN_OK,
             "wrap k/v/dk/dv %d", i);
  }
}

static void fuzz_empty_heads(fz_in *in) {
  fz_alloc_state a = {0, 0, 0};
  attn_ctx *ctx = fz_ctx(&a, (int32_t)fz_range(in, 1, 2));
  int64_t Hq = fz_dim(in, 4), B = fz_range(in, 0, MAXB), Lk = fz_range(in, 1, 5),
          D = fz_range(in, 1, 3), Dv = fz_range(in, 1, 3);
  int which = fz_u8(in) % 3;
  int64_t Lq = which == 0 && B > 0 ? 0 : fz_range(in, 0, 2);
  if (which > 0 && B == 0)
    B = 1;
  size_t nk = (size_t)(B * Lk); /* Hkv = 1 */
  float *k = calloc(nk * D + 1, 4), *v = calloc(nk * Dv + 1, 4), *dk = malloc(nk * D * 4 + 4),
        *dv = malloc(nk * Dv * 4 + 4);
  FZ_CHECK(k && v && dk && dv, "malloc");
  for (size_t i = 0; i < nk * D; i++)
    dk[i] = -777.0f;
  for (size_t i = 0; i < nk * Dv; i++)
    dv[i] = -777.0f;
  int64_t kd[4] = {B, 1, Lk, D}, vd[4] = {B, 1, Lk, Dv};
  float *const bufs[4] = {k, v, dk, dv};
  attn_tensor *t4[4];
  wrap_kv_grads(ctx, 4, kd, vd, bufs, nk, D, Dv, t4);
  attn_tensor *tk = t4[0], *tv = t4[1], *tdk = t4[2], *tdv = t4[3];
  attn_status st = ATTN_OK;
  int called = 0;
  if (which == 0) { /* attn_sdpa_backward: B = 0 or Lq = 0 */
    if (B > 0)
      Lq = 0;
    int64_t qd[4] = {B, Hq, Lq, D}, od[4] = {B, Hq, Lq, Dv}, ld[3] = {B, Hq, Lq};
    attn_tensor *q = empty_view(ctx, 4, qd), *o = empty_view(ctx, 4, od), *l = empty_view(ctx, 3, ld);
    if ((called = q && o && l))
      st = attn_sdpa_backward(ctx, q, tk, tv, o, l, o, q, tdk, tdv, NULL, NULL);
  } else if (which == 1) { /* packed: one sequence of Lk keys and no query */
    int64_t qd[3] = {0, Hq, D}, od[3] = {0, Hq, Dv}, ld[2] = {Hq, 0}, cu_q[2] = {0, 0},
            cu_k[2] = {0, B * Lk};
    int64_t pk[3] = {B * Lk, 1, D}, pv[3] = {B * Lk, 1, Dv};
    attn_tensor *q = empty_view(ctx, 3, qd), *o = empty_view(ctx, 3, od), *l = empty_view(ctx, 2, ld);
    attn_tensor *t3[4];
    wrap_kv_grads(ctx, 3, pk, pv, bufs, nk, D, Dv, t3);
    if ((called = q && o && l))
      st = attn_sdpa_varlen_backward(ctx, q, t3[0], t3[1], o, l, o, q, t3[2], t3[3], 1, cu_q,
                                     cu_k, NULL, NULL);
  } else { /* attn_pool_attention_backward: M = 0 learned queries */
    int64_t qd[3] = {Hq, 0, D}, od[4] = {B, Hq, 0, Dv}, ld[3] = {B, Hq, 0};
    attn_tensor *q = empty_view(ctx, 3, qd), *o = empty_view(ctx, 4, od), *l = empty_view(ctx, 3, ld);
    if ((called = q && o && l))
      st = attn_pool_attention_backward(ctx, q, tk, tv, o, l, o, q, tdk, tdv, NULL);
  }
  if (called && st == ATTN_OK) {
    for (size_t i = 0; i < nk * D; i++)
      FZ_CHECK(dk[i] == 0, "dk[%zu] = %g without queries (Hq %lld)", i, (double)dk[i], (long long)Hq);
    for (size_t i = 0; i < nk * Dv; i++)
      FZ_CHECK(dv[i] == 0, "dv[%zu] = %g without queries", i, (double)dv[i]);
  } else if (called) {
    FZ_CHECK(st != ATTN_ERR_NO_MEMORY || a.fail_at, "no query row, yet: %s",
             attn_ctx_last_error(ctx));
    for (size_t i = 0; i < nk * D; i++)
      FZ_CHECK(dk[i] == -777.0f, "dk written on failure");
  }
  fz_ctx_destroy(ctx, &a);
  free(k), free(v), free(dk), free(dv);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fz_in in = {data, size};
  uint8_t sel = fz_u8(&in);
  if (sel < 160)
    fuzz_sdpa_backward(&in);
  else if (sel < 240)
    fuzz_softmax_backward(&in);
  else
    fuzz_empty_heads(&in);
  return 0;
}
