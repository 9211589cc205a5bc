/* Fuzz target: attn_sdpa and attn_sdpa_varlen. The input chooses shapes
 * (small, or huge through broadcast strides), strides and layouts, every
 * parameter (struct size, scale, soft-cap, causal, alignment, window, masks,
 * key lengths, ALiBi slopes, sinks, lse and weights outputs) and the data.
 * Checks: inputs never written; on failure no output byte changes; on
 * success no byte outside an output's elements changes, and every row whose
 * logits are tame matches a float64 reference of the header's formula (a
 * NaN among a row's visible logits must make the row NaN). */
#include "fuzz_common.h"

/* Calls bigger than this much arithmetic are skipped, or not checked. */
#define WORK_CALL 2e6
#define WORK_CHECK 4e5

/* Where the elements of one batch entry (sequence) live. (h, i, d) of q is at
 * q_base + h*qs[0] + i*qs[1] + d*qs[2], and likewise for the others. */
typedef struct {
  int64_t Hq, Hkv, Lq, Lk, D, Dv;
  const fz_tensor *q, *k, *v, *out, *lse, *w, *lg;
  int64_t qb, kb, vb, ob, lb, wb, gb; /* bases in elements */
  int64_t qs[3], ks[3], vs[3], os[3], ls[2], ws[3], gs[3];
  const fz_tensor *mask, *bmask; /* broadcast [B, Hq, Lq, Lk]; batch b below */
  int64_t b;
  int64_t kv_len;
  int64_t diag; /* query row i sits at key position i + diag (attn.h) */
  attn_sdpa_params prm;
} ref_view;

/* The position offset of a sequence's query rows, from the header's rules. */
static int64_t diag_of(const attn_sdpa_params *p, int64_t s, int64_t Lq, int64_t keys) {
  if (p->q_offsets)
    return p->q_offsets[s];
  return p->align == ATTN_ALIGN_BOTTOM_RIGHT ? keys - Lq : 0;
}

static float rd(const fz_tensor *t, int64_t off) { return fz_read(t, off); }

static int close_enough(double got, double want, double tol) {
  if (isnan(want))
    return isnan(got);
  if (isinf(want))
    return got == want;
  return fabs(got - want) <= tol;
}

static void dump_tensor(const char *name, const fz_tensor *t) {
  if (!t || !t->t)
    return;
  fprintf(stderr, "%s: dims", name);
  for (int i = 0; i < t->ndim; i++)
    fprintf(stderr, " %lld", (long long)t->dims[i]);
  fprintf(stderr, " strides");
  for (int i = 0; i < t->ndim; i++)
    fprintf(stderr, " %lld", (long long)t->eff[i]);
  fprintf(stderr, "\n");
  if (t->dtype == ATTN_DTYPE_U8)
    return;
  if (fz_numel(t) > 256) {
    for (int64_t f = 0; f < fz_numel(t); f++)
      if (!isfinite(fz_get(t, f)))
        fprintf(stderr, " [%lld]=%g", (long long)f, (double)fz_get(t, f));
    fprintf(stderr, "\n");
    return;
  }
  for (int64_t f = 0; f < fz_numel(t); f++)
    fprintf(stderr, " %g", (double)fz_get(t, f));
  fprintf(stderr, "\n");
}

/* With FZ_DEBUG set, print the problem before checking it. */
static void dump_view(const ref_view *r) {
  if (!getenv("FZ_DEBUG"))
    return;
  const attn_sdpa_params *p = &r->prm;
  fprintf(stderr, "b %lld Hq %lld Hkv %lld Lq %lld Lk %lld D %lld Dv %lld kv_len %lld\n",
          (long long)r->b, (long long)r->Hq, (long long)r->Hkv, (long long)r->Lq,
          (long long)r->Lk, (long long)r->D, (long long)r->Dv, (long long)r->kv_len);
  fprintf(stderr, "scale %g softcap %g causal %d align %d window %d (%lld, %lld) alibi %d sinks %d\n",
          (double)p->scale, (double)p->softcap, (int)p->causal, (int)p->align, (int)p->window,
          (long long)p->window_left, (long long)p->window_right, p->alibi_slopes != NULL,
          p->sinks != NULL);
  dump_tensor("q", r->q);
  dump_tensor("k", r->k);
  dump_tensor("v", r->v);
  dump_tensor("out", r->out);
  dump_tensor("mask", r->mask);
  dump_tensor("bool_mask", r->bmask);
}

/* Compare one batch entry's rows with the float64 formula. */
static void check_rows(const ref_view *r) {
  dump_view(r);
  if (r->Hq == 0 || r->Lq == 0)
    return; /* no rows (and maybe no kv heads): nothing to check, nothing to allocate */
  int64_t G = r->Hq / r->Hkv;
  /* With D = 0 every dot product is 0, whatever the scale. */
  double scale = r->prm.scale != 0 ? (double)r->prm.scale
                 : r->D > 0        ? (double)(float)(1.0 / sqrt((double)r->D))
                                   : 1.0;
  int64_t diag = r->diag;
  double *s = malloc((size_t)(r->Lk ? r->Lk : 1) * sizeof *s);
  double *acc = malloc((size_t)r->Dv * sizeof *acc);
  unsigned char *vis = malloc((size_t)(r->Lk ? r->Lk : 1));
  FZ_CHECK(s && acc && vis, "malloc");
  for (int64_t h = 0; h < r->Hq; h++) {
    int64_t hk = h / G;
    for (int64_t i = 0; i < r->Lq; i++) {
      int64_t ip = i + diag;
      int tame = 1, has_nan = 0, any = 0;
      double m = -INFINITY, mag = 0;
      for (int64_t j = 0; j < r->Lk; j++) {
        int ok = j < r->kv_len;
        if (r->prm.causal && j > ip)
          ok = 0;
        if (r->prm.window && (ip - j > r->prm.window_left || j - ip > r->prm.window_right))
          ok = 0;
        int64_t idx[4] = {r->b, h, i, j};
        if (ok && r->bmask && !((const uint8_t *)fz_data(r->bmask))[fz_bcast_offset(r->bmask, 4, idx)])
          ok = 0;
        vis[j] = 0;
        if (!ok)
          continue;
        double dot = 0, dmag = 0;
        for (int64_t d = 0; d < r->D; d++) {
          double a = rd(r->q, r->qb + h * r->qs[0] + i * r->qs[1] + d * r->qs[2]);
          double c = rd(r->k, r->kb + hk * r->ks[0] + j * r->ks[1] + d * r->ks[2]);
          dot += a * c;
          dmag += fabs(a * c);
        }
        double x = scale * dot;
        mag = fmax(mag, fabs(scale) * dmag);
        if (!(dmag < 1e30)) /* the float product q.k itself would overflow */
          tame = 0;
        if (r->prm.softcap > 0)
          x = r->prm.softcap * tanh(x / r->prm.softcap);
        if (r->prm.alibi_slopes) {
          double t = (double)r->prm.alibi_slopes[h] * (double)(j - ip);
          x += t;
          mag = fmax(mag, fabs(t));
        }
        if (r->mask) {
          double mv = rd(r->mask, fz_bcast_offset(r->mask, 4, idx));
          if (mv == -INFINITY)
            continue; /* masked */
          x += mv;
          mag = fmax(mag, fabs(mv));
        }
        if (isnan(x))
          has_nan = 1;
        if (!isfinite(x) || !(mag <= 30)) /* NaN too */
          tame = 0;

        vis[j] = 1;
        s[j] = x;
        any = 1;
        if (x > m)
          m = x;
      }
      /* Values whose weighted sum could overflow float are not tame: the
       * accumulator is float, as in any fp32 attention. Only the visible
       * keys' values count: a NaN or Inf at a hidden key must not reach
       * the row. */
      for (int64_t j = 0; j < r->Lk && tame; j++)
        for (int64_t d = 0; vis[j] && d < r->Dv; d++)
          if (!(fabs(rd(r->v, r->vb + hk * r->vs[0] + j * r->vs[1] + d * r->vs[2])) *
                    (double)(r->Lk + 1) <
                1e36))
            tame = 0;
      double sink = r->prm.sinks ? (double)r->prm.sinks[h] : -INFINITY;
      if (r->prm.sinks && !(fabs(sink) <= 30))
        tame = 0;
      const int64_t o_row = r->ob + h * r->os[0] + i * r->os[1];
      if (has_nan) {
        /* A NaN in the row's visible logits makes the row NaN. */
        for (int64_t d = 0; d < r->Dv; d++)
          FZ_CHECK(isnan(rd(r->out, o_row + d * r->os[2])),
                   "b %lld h %lld i %lld: a NaN logit but out[%lld] = %g", (long long)r->b,
                   (long long)h, (long long)i, (long long)d,
                   (double)rd(r->out, o_row + d * r->os[2]));
        continue;
      }
      if (!tame)
        continue;
      if (sink > m)
        m = sink;
      double l = r->prm.sinks ? exp(sink - m) : 0.0, vmax = 0;
      for (int64_t d = 0; d < r->Dv; d++)
        acc[d] = 0;
      for (int64_t j = 0; j < r->Lk; j++) {
        if (!vis[j])
          continue;
        double e = exp(s[j] - m);
        l += e;
        for (int64_t d = 0; d < r->Dv; d++) {
          double vv = rd(r->v, r->vb + hk * r->vs[0] + j * r->vs[1] + d * r->vs[2]);
          acc[d] += e * vv;
          vmax = fmax(vmax, fabs(vv));
        }
      }
      int empty = !any && !r->prm.sinks;
      double tol_v = (2e-5 * (double)(r->D + 8)) * vmax + 1e-30;
      double u = fz_half_ulp(r->out->dtype); /* a half out is rounded once more */
      for (int64_t d = 0; d < r->Dv; d++) {
        double want = empty ? 0.0 : acc[d] / l;
        double got = rd(r->out, o_row + d * r->os[2]);
        /* Beyond a half out's range the rounding gives Inf, as it should. */
        double top = r->out->dtype == ATTN_DTYPE_F16 ? 65504.0 : 3.38e38;
        if (u && fabs(want) >= top && isinf(got) && (got < 0) == (want < 0))
          continue;
        FZ_CHECK(close_enough(got, want, tol_v + u * fabs(want) + (u ? 0x1p-24 : 0)),
                 "b %lld h %lld i %lld d %lld: out %.9g, reference %.9g (tol %g)",
                 (long long)r->b, (long long)h, (long long)i, (long long)d, got, want, tol_v);
      }
      if (r->lse) {
        double want = empty ? -INFINITY : m + log(l);
        double got = rd(r->lse, r->lb + h * r->ls[0] + i * r->ls[1]);
        FZ_CHECK(close_enough(got, want, 2e-5 * (double)(r->D + 8) * (1 + fabs(want))),
                 "b %lld h %lld i %lld: lse %.9g, reference %.9g", (long long)r->b,
                 (long long)h, (long long)i, got, want);
      }
      if (r->w)
        for (int64_t j = 0; j < r->Lk; j++) {
          double want = vis[j] && !empty ? exp(s[j] - m) / l : 0.0;
          double got = rd(r->w, r->wb + h * r->ws[0] + i * r->ws[1] + j * r->ws[2]);
          FZ_CHECK(close_enough(got, want, 2e-5 * (double)(r->D + 8)),
                   "b %lld h %lld i %lld j %lld: weight %.9g, reference %.9g",
                   (long long)r->b, (long long)h, (long long)i, (long long)j, got, want);
        }
    }
  }
  free(s);
  free(acc);
  free(vis);
}

/* The logits output at its stage, for every key: scale * q.k, then the
 * soft-cap, then ALiBi and the masks with -inf at every hidden key. */
static void check_logits(const ref_view *r) {
  double scale = r->prm.scale != 0 ? r->prm.scale : r->D > 0 ? 1.0 / sqrt((double)r->D) : 1.0;
  int64_t G = r->Hq / r->Hkv;
  int stage = r->prm.logits_stage;
  for (int64_t h = 0; h < r->Hq; h++)
    for (int64_t i = 0; i < r->Lq; i++) {
      int64_t ip = i + r->diag;
      for (int64_t j = 0; j < r->Lk; j++) {
        double dot = 0, dmag = 0;
        for (int64_t d = 0; d < r->D; d++) {
          double a = rd(r->q, r->qb + h * r->qs[0] + i * r->qs[1] + d * r->qs[2]);
          double c = rd(r->k, r->kb + h / G * r->ks[0] + j * r->ks[1] + d * r->ks[2]);
          dot += a * c;
          dmag += fabs(a * c);
        }
        double x = scale * dot, tol = 1e-6 * (double)(r->D + 8) * fabs(scale) * dmag + 1e-30;
        int64_t idx[4] = {r->b, h, i, j};
        int hidden = j >= r->kv_len || (r->prm.causal && j > ip) ||
                     (r->prm.window && (ip - j > r->prm.window_left || j - ip > r->prm.window_right)) ||
                     (r->bmask && !((const uint8_t *)fz_data(r->bmask))[fz_bcast_offset(r->bmask, 4, idx)]);
        double mv = r->mask ? rd(r->mask, fz_bcast_offset(r->mask, 4, idx)) : 0;
        /* The float products q_d k_d, or their scaled sum, overflow: as in
         * any fp32 BLAS the logit may be Inf however small the true value
         * (a scale of 1e-30 does not undo it): not judged. */
        if (!(dmag < 1e30) || !(dmag * fabs(scale) < 1e30))
          continue;
        if (stage >= ATTN_LOGITS_SOFTCAPPED && r->prm.softcap > 0)
          x = r->prm.softcap * tanh(x / r->prm.softcap);
        if (stage == ATTN_LOGITS_MASKED) {
          if (hidden || mv == -INFINITY) {
            x = -INFINITY;
          } else {
            double t = r->prm.alibi_slopes ? (double)r->prm.alibi_slopes[h] * (double)(j - ip) : 0;
            if (!(fabs(t) < 1e30 && fabs(mv) < 1e30))
              continue; /* float rounding of large terms: not judged */
            x += t + mv;
            tol += 1e-6 * (fabs(t) + fabs(mv));
          }
        }
        double got = rd(r->lg, r->gb + h * r->gs[0] + i * r->gs[1] + j * r->gs[2]);
        FZ_CHECK(close_enough(got, x, tol),
                 "b %lld h %lld i %lld j %lld: logits (stage %d) %.9g, reference %.9g",
                 (long long)r->b, (long long)h, (long long)i, (long long)j, stage, got, x);
      }
    }
}

/* Shared parameter choices; arrays are allocated by the caller (n entries). */
typedef struct {
  int64_t *kv_lens, *q_offsets;
  float *slopes, *sinks;
} param_arrays;

static void fuzz_params(fz_in *in, attn_sdpa_params *p, int64_t B, int64_t Hq, int64_t Lk,
                        param_arrays *arr) {
  attn_sdpa_params_init(p);
  if (fz_chance(in, 64))
    p->scale = fz_chance(in, 200) ? fz_float_mostly_small(in) : fz_float(in);
  if (fz_chance(in, 48))
    p->softcap = fz_chance(in, 200) ? (float)fz_range(in, 1, 60) / 4.0f : fz_float(in);
  p->causal = fz_chance(in, 96) ? (fz_chance(in, 240) ? 1 : (int32_t)fz_u32(in)) : 0;
  p->align = fz_chance(in, 96) ? fz_enum(in, 2) : 0;
  if (fz_chance(in, 64)) {
    p->window = 1;
    p->window_left = fz_chance(in, 240) ? fz_range(in, 0, 10) : fz_dim(in, 3);
    p->window_right = fz_chance(in, 240) ? fz_range(in, 0, 10) : fz_dim(in, 3);
  }
  if (fz_chance(in, 3))
    p->reserved_ = 1;
  if (arr->kv_lens && fz_chance(in, 64)) {
    for (int64_t b = 0; b < B; b++)
      arr->kv_lens[b] = fz_chance(in, 250) ? fz_range(in, 0, Lk) : fz_dim(in, Lk < 1000000 ? Lk + 1 : 9);
    p->kv_lens = arr->kv_lens;
  }
  if (arr->q_offsets && fz_chance(in, 48)) {
    for (int64_t b = 0; b < B; b++)
      arr->q_offsets[b] = fz_chance(in, 250) ? fz_range(in, -12, (Lk < 1000000 ? Lk : 0) + 12)
                                             : (int64_t)fz_u64(in);
    p->q_offsets = arr->q_offsets;
    if (fz_chance(in, 200))
      p->align = 0; /* required with q_offsets */
  }
  if (arr->slopes && fz_chance(in, 48)) {
    for (int64_t h = 0; h < Hq; h++)
      arr->slopes[h] = fz_chance(in, 250) ? (float)fz_range(in, 0, 64) / 64.0f : fz_float(in);
    p->alibi_slopes = arr->slopes;
  }
  if (arr->sinks && fz_chance(in, 48)) {
    for (int64_t h = 0; h < Hq; h++)
      arr->sinks[h] = fz_chance(in, 250) ? fz_float_mostly_small(in) : fz_float(in);
    p->sinks = arr->sinks;
  }
}

/* Whether the harness believes the parameter values valid (shapes aside). */
static int params_sane(const attn_sdpa_params *p, int64_t B, int64_t Hq, int64_t Lk) {
  int sane = isfinite(p->scale) && isfinite(p->softcap) && p->softcap >= 0 &&
             (p->align == 0 || p->align == 1) && p->reserved_ == 0 && p->reserved2_ == 0 &&
             p->logits_stage >= 0 && p->logits_stage <= 2 &&
             (!p->window || (p->window_left >= 0 && p->window_right >= 0));
  if (p->kv_lens)
    for (int64_t b = 0; b < B; b++)
      if (p->kv_lens[b] < 0 || p->kv_lens[b] > Lk)
        sane = 0;
  if (p->q_offsets) {
    if (p->align != 0)
      sane = 0;
    for (int64_t b = 0; b < B; b++)
      if (p->q_offsets[b] < -((int64_t)1 << 60) || p->q_offsets[b] > ((int64_t)1 << 60))
        sane = 0;
  }
  for (int64_t h = 0; h < Hq; h++)
    if ((p->alibi_slopes && !isfinite(p->alibi_slopes[h])) ||
        (p->sinks && !isfinite(p->sinks[h])))
      sane = 0;
  return sane;
}

/* Pass the params through a size-tagged buffer: own size, older, newer. */
static const attn_sdpa_params *fuzz_struct(fz_in *in, unsigned char *raw, size_t cap,
                                           const attn_sdpa_params *p, attn_sdpa_params *eff,
                                           int *readable) {
  if (fz_chance(in, 16)) {
    attn_sdpa_params_init(eff);
    *readable = 1;
    return NULL;
  }
  memset(raw, 0, cap);
  memcpy(raw, p, sizeof *p);
  size_t ss = fz_struct_size(in, raw, sizeof *p, cap);
  memcpy(raw, &ss, sizeof ss);
  attn_sdpa_params_init(eff);
  *readable = fz_effective_params(eff, sizeof *eff, raw, ss);
  return (const attn_sdpa_params *)raw;
}

static int64_t dim_noise(fz_in *in, int64_t d) {
  return fz_chance(in, 4) ? fz_dim(in, 9) : d;
}

/* After a call: inputs intact always; outputs intact on failure, and
 * nothing but their elements written on success. */
static void check_buffers(attn_status st, fz_tensor *const *ins, int n_in,
                          fz_tensor *const *outs, int n_out) {
  for (int i = 0; i < n_in; i++)
    if (ins[i])
      FZ_CHECK(fz_unchanged(ins[i]), "input %d was written", i);
  for (int i = 0; i < n_out; i++) {
    if (!outs[i])
      continue;
    if (st != ATTN_OK || !outs[i]->t)
      FZ_CHECK(fz_unchanged(outs[i]), "output %d was written by a failed call (%s)", i,
               attn_status_string(st));
    else
      fz_check_gaps(outs[i], "output");
  }
}

/* Now and then a few 256-key tiles below the split (the extra byte read
 * only at the small range's top: the committed seeds keep their shapes). */
static int64_t small_lk(fz_in *in) {
  if (fz_chance(in, 24))
    return fz_range(in, 2048, 4400);
  int64_t lk = fz_dim(in, 12);
  return lk == 12 ? fz_range(in, 12, 600) : lk;
}

static double work_of(int64_t B, int64_t Hq, int64_t Lq, int64_t Lk, int64_t D, int64_t Dv) {
  /* + 1s: with D = Dv = 0 the softmax over the keys is still computed, and
   * with Lk = 0 every row is still written (and checked) once. */
  return (double)B * (double)Hq * (double)Lq * ((double)Lk + 1) * ((double)D + (double)Dv + 1);
}

static void fuzz_sdpa(fz_in *in, attn_ctx *ctx, fz_alloc_state *a) {
  int64_t B = fz_dim(in, 2), Hkv = fz_dim(in, 3), G = fz_range(in, 1, 3);
  int64_t Hq = Hkv > 0 && Hkv < 1000 ? Hkv * G : fz_dim(in, 4);
  int64_t Lq = fz_dim(in, 9), Lk = small_lk(in);
  if (Lq == 9 && fz_chance(in, 96)) /* now and then several query blocks (256 / G rows) */
    Lq = fz_range(in, 9, 300);
  int64_t D = fz_chance(in, 16) ? fz_range(in, 9, 80) : fz_dim(in, 8);
  int64_t Dv = fz_chance(in, 160) ? D : fz_dim(in, 8);
  int noise = fz_chance(in, 12);
  int64_t qd[4] = {B, Hq, Lq, D}, kd[4] = {B, Hkv, Lk, D}, vd[4] = {B, Hkv, Lk, Dv},
          od[4] = {B, Hq, Lq, Dv};
  if (noise) {
    int64_t *all[4] = {qd, kd, vd, od};
    int64_t *t = all[fz_u8(in) % 4];
    int axis = fz_u8(in) % 4;
    t[axis] = dim_noise(in, t[axis]);
  }
  fz_tensor q, k, v, out, mask, bmask, lse, w, lg;
  fz_tensor *pm = NULL, *pb = NULL, *pl = NULL, *pw = NULL, *pg = NULL;
  fz_make_tensor(in, ctx, &q, fz_float_dtype(in), 4, qd, FZ_INPUT);
  fz_make_tensor(in, ctx, &k, fz_float_dtype(in), 4, kd, FZ_INPUT);
  fz_make_tensor(in, ctx, &v, fz_float_dtype(in), 4, vd, FZ_INPUT);
  fz_make_tensor(in, ctx, &out, fz_float_dtype(in), 4, od, FZ_OUTPUT);
  int64_t full[4] = {B, Hq, Lq, Lk};
  int mask_shape_ok = 1;
  for (int which = 0; which < 2; which++) {
    if (!fz_chance(in, 40))
      continue;
    int32_t nd = (int32_t)fz_range(in, 1, 4);
    int64_t md[4];
    for (int i = 0; i < nd; i++) {
      int64_t want = full[4 - nd + i];
      md[i] = i < nd - 2 && fz_chance(in, 128) ? 1 : want;
      if (fz_chance(in, 6)) {
        md[i] = dim_noise(in, md[i]);
        if (md[i] != want && md[i] != 1)
          mask_shape_ok = 0;
      }
    }
    if (which == 0) {
      fz_make_tensor(in, ctx, &mask, ATTN_DTYPE_F32, nd, md, FZ_INPUT);
      pm = &mask;
    } else {
      fz_make_tensor(in, ctx, &bmask, ATTN_DTYPE_U8, nd, md, FZ_INPUT);
      pb = &bmask;
    }
  }
  if (fz_chance(in, 40)) {
    int64_t ld[3] = {B, Hq, Lq};
    if (fz_chance(in, 6))
      ld[fz_u8(in) % 3] = fz_dim(in, 9);
    fz_make_tensor(in, ctx, &lse, ATTN_DTYPE_F32, 3, ld, FZ_OUTPUT);
    pl = &lse;
  }
  if (fz_chance(in, 32)) {
    fz_make_tensor(in, ctx, &w, ATTN_DTYPE_F32, 4, full, FZ_OUTPUT);
    pw = &w;
  }
  if (fz_chance(in, 32)) {
    fz_make_tensor(in, ctx, &lg, ATTN_DTYPE_F32, 4, full, FZ_OUTPUT);
    pg = &lg;
  }
  param_arrays arr = {0};
  int small_bh = B >= 1 && B <= 4096 && Hq >= 1 && Hq <= 4096;
  if (small_bh) {
    arr.kv_lens = malloc((size_t)B * sizeof *arr.kv_lens);
    arr.q_offsets = malloc((size_t)B * sizeof *arr.q_offsets);
    arr.slopes = malloc((size_t)Hq * sizeof *arr.slopes);
    arr.sinks = malloc((size_t)Hq * sizeof *arr.sinks);
  }
  attn_sdpa_params p, eff;
  int sane = 1, readable = 1;
  if (small_bh)
    fuzz_params(in, &p, B, Hq, Lk, &arr);
  else
    attn_sdpa_params_init(&p);
  p.mask = pm ? pm->t : NULL;
  p.bool_mask = pb ? pb->t : NULL;
  p.lse = pl ? pl->t : NULL;
  p.weights = pw ? pw->t : NULL;
  p.logits = pg ? pg->t : NULL;
  if (small_bh && fz_chance(in, 24)) /* params_sane judges these only then */
    p.logits_stage = fz_chance(in, 240) ? (int32_t)fz_range(in, 0, 2) : (int32_t)fz_range(in, -2, 5);
  if (small_bh && fz_chance(in, 3))
    p.reserved2_ = 1;
  unsigned char raw[sizeof(attn_sdpa_params) + 64];
  const attn_sdpa_params *pp = fuzz_struct(in, raw, sizeof raw, &p, &eff, &readable);
  sane = readable && small_bh ? params_sane(&eff, B, Hq, Lk) : 1;

  double work = work_of(B, Hq, Lq, Lk, D, Dv);
  int rejected_for_size = D > INT32_MAX || Lk > INT32_MAX;
  if (work <= WORK_CALL || rejected_for_size) {
    if (fz_chance(in, 10))
      a->fail_at = a->allocs + 1;
    int injected = a->fail_at != 0;
    attn_status st = attn_sdpa(ctx, q.t, k.t, v.t, out.t, pp);
    a->fail_at = 0;
    fz_tensor *ins[5] = {&q, &k, &v, pm, pb}, *outs[4] = {&out, pl, pw, pg};
    check_buffers(st, ins, 5, outs, 4);
    if (st != ATTN_OK) {
      FZ_CHECK(attn_ctx_last_error(ctx)[0], "failure without a message");
      FZ_CHECK(st >= ATTN_ERR_NULL_ARG && st <= ATTN_ERR_ALIASING, "status %d", (int)st);
      /* A call the harness knows to be valid may only run out of memory. */
      int exotic = 0;
      fz_tensor *all[9] = {&q, &k, &v, &out, pm, pb, pl, pw, pg};
      for (int i = 0; i < 9; i++)
        if (all[i] && (!all[i]->t || all[i]->exotic))
          exotic = 1; /* strides may overlap an output: the harness cannot tell */
      if (!exotic && !noise && mask_shape_ok && sane && readable && !rejected_for_size &&
          (Hkv == 0 ? Hq == 0 : Hq % Hkv == 0) &&
          (!pl || (pl->dims[0] == B && pl->dims[1] == Hq && pl->dims[2] == Lq)))
        FZ_CHECK(st == ATTN_ERR_NO_MEMORY && injected, "valid call refused: %s: %s",
                 attn_status_string(st), attn_ctx_last_error(ctx));
    } else {
      FZ_CHECK(readable && sane && !rejected_for_size, "attn_sdpa accepted bad params");
      if (work <= WORK_CHECK && (double)B * (double)Hq * (double)Lq > 0) {
        for (int64_t b = 0; b < B; b++) {
          ref_view r;
          memset(&r, 0, sizeof r);
          r.Hq = Hq, r.Hkv = Hkv, r.Lq = Lq, r.Lk = Lk, r.D = D, r.Dv = Dv;
          r.q = &q, r.k = &k, r.v = &v, r.out = &out, r.lse = pl, r.w = pw;
          r.qb = b * q.eff[0], r.kb = b * k.eff[0], r.vb = b * v.eff[0], r.ob = b * out.eff[0];
          memcpy(r.qs, q.eff + 1, 24);
          memcpy(r.ks, k.eff + 1, 24);
          memcpy(r.vs, v.eff + 1, 24);
          memcpy(r.os, out.eff + 1, 24);
          if (pl) {
            r.lb = b * lse.eff[0];
            memcpy(r.ls, lse.eff + 1, 16);
          }
          if (pw) {
            r.wb = b * w.eff[0];
            memcpy(r.ws, w.eff + 1, 24);
          }
          if (pg) {
            r.gb = b * lg.eff[0];
            memcpy(r.gs, lg.eff + 1, 24);
          }
          r.mask = eff.mask ? pm : NULL, r.bmask = eff.bool_mask ? pb : NULL, r.b = b;
          r.lse = eff.lse ? pl : NULL, r.w = eff.weights ? pw : NULL;
          r.prm = eff;
          r.kv_len = eff.kv_lens ? eff.kv_lens[b] : Lk;
          r.diag = diag_of(&eff, b, Lq, r.kv_len);
          check_rows(&r);
          r.lg = eff.logits ? pg : NULL;
          if (r.lg)
            check_logits(&r);
        }
      }
    }
  }
  fz_tensor *all[9] = {&q, &k, &v, &out, pm, pb, pl, pw, pg};
  for (int i = 0; i < 9; i++)
    if (all[i])
      fz_tensor_release(all[i]);
  free(arr.kv_lens);
  free(arr.q_offsets);
  free(arr.slopes);
  free(arr.sinks);
}

static void fuzz_varlen(fz_in *in, attn_ctx *ctx, fz_alloc_state *a) {
  int32_t batch = fz_chance(in, 248) ? (int32_t)fz_range(in, 1, 5) : (int32_t)fz_range(in, -2, 0);
  /* Now and then (the extra byte read only at the batch range's top) one
   * more sequence of no query and about 2^18 keys over overlapping rows:
   * the batch's tensors then count more than 4 MiB, so its sequences are
   * staged (sdpa_plan.c: STAGE_MIN_BYTES) for a few KiB of buffers and no
   * extra arithmetic. */
  int64_t giant = batch == 5 && fz_chance(in, 64) ? fz_range(in, 0, 5) : -1;
  if (giant >= 0)
    batch = 6;
  int64_t nb = batch > 0 ? batch : 1;
  int64_t cu_q[7] = {0}, cu_k[7] = {0};
  for (int64_t s = 0; s < nb; s++) {
    if (s == giant) {
      cu_q[s + 1] = cu_q[s];
      cu_k[s + 1] = cu_k[s] + fz_range(in, 230000, 240000);
      continue;
    }
    cu_q[s + 1] = cu_q[s] + fz_range(in, 0, 7);
    cu_k[s + 1] = cu_k[s] + (fz_chance(in, 16) ? fz_range(in, 2048, 3000) : fz_range(in, 0, 9));
  }
  int64_t Tq = cu_q[nb], Tk = cu_k[nb]; /* 0 tokens is fine */
  if (fz_chance(in, 8)) { /* corrupt an offset */
    int64_t *cu = fz_chance(in, 128) ? cu_q : cu_k;
    cu[fz_range(in, 0, nb)] = fz_range(in, -3, 20);
  }
  /* The header's rules: start at 0, never decrease, end at the token count
   * (batch 0: just {0}, no tokens). */
  int64_t n_seq = batch > 0 ? batch : 0;
  int bad_offsets = cu_q[0] != 0 || cu_k[0] != 0 || cu_q[n_seq] != Tq || cu_k[n_seq] != Tk;
  for (int64_t s = 0; s < n_seq; s++)
    if (cu_q[s + 1] < cu_q[s] || cu_k[s + 1] < cu_k[s])
      bad_offsets = 1;
  int64_t Hkv = fz_range(in, 1, 3), Hq = Hkv * fz_range(in, 1, 3);
  int64_t D = fz_dim(in, 8), Dv = fz_chance(in, 160) ? D : fz_dim(in, 8);
  fz_tensor q, k, v, out, lse;
  fz_tensor *pl = NULL;
  int64_t qd[3] = {Tq, Hq, D}, kd[3] = {Tk, Hkv, D}, vd[3] = {Tk, Hkv, Dv}, od[3] = {Tq, Hq, Dv};
  int noise = fz_chance(in, 8);
  if (noise) {
    int64_t *all[4] = {qd, kd, vd, od};
    all[fz_u8(in) % 4][fz_u8(in) % 3] = fz_dim(in, 9);
  }
  fz_make_tensor(in, ctx, &q, fz_float_dtype(in), 3, qd, FZ_INPUT);
  if (giant >= 0) { /* token t's row starts t elements on: up to 1 MiB of F32 */
    int64_t ks[3] = {1, fz_range(in, 0, 9), 1}, vs[3] = {1, fz_range(in, 0, 9), 1};
    fz_make_tensor_strided(in, ctx, &k, fz_float_dtype(in), 3, kd, ks, FZ_INPUT);
    fz_make_tensor_strided(in, ctx, &v, fz_float_dtype(in), 3, vd, vs, FZ_INPUT);
  } else {
    fz_make_tensor(in, ctx, &k, fz_float_dtype(in), 3, kd, FZ_INPUT);
    fz_make_tensor(in, ctx, &v, fz_float_dtype(in), 3, vd, FZ_INPUT);
  }
  fz_make_tensor(in, ctx, &out, fz_float_dtype(in), 3, od, FZ_OUTPUT);
  if (fz_chance(in, 64)) {
    int64_t ld[2] = {Hq, Tq};
    fz_make_tensor(in, ctx, &lse, ATTN_DTYPE_F32, 2, ld, FZ_OUTPUT);
    pl = &lse;
  }
  param_arrays arr = {0};
  arr.kv_lens = malloc((size_t)nb * sizeof(int64_t));
  arr.q_offsets = malloc((size_t)nb * sizeof(int64_t)); /* one per sequence */
  arr.slopes = malloc((size_t)Hq * sizeof(float));
  arr.sinks = malloc((size_t)Hq * sizeof(float));
  attn_sdpa_params p, eff;
  int sane = 1, readable = 1;
  fuzz_params(in, &p, nb, Hq, Tk, &arr);
  int forbidden = p.kv_lens != NULL; /* varlen refuses these */
  p.lse = pl ? pl->t : NULL;
  unsigned char raw[sizeof(attn_sdpa_params) + 64];
  const attn_sdpa_params *pp = fuzz_struct(in, raw, sizeof raw, &p, &eff, &readable);
  forbidden = readable && eff.kv_lens != NULL;
  sane = readable ? params_sane(&eff, n_seq, Hq, Tk) : 1;

  double work = 0; /* sequence by sequence (work_of's + 1: every key is looked at) */
  for (int64_t s = 0; s < n_seq && !bad_offsets; s++)
    work += work_of(1, Hq, cu_q[s + 1] - cu_q[s], cu_k[s + 1] - cu_k[s], D, Dv);
  if (bad_offsets)
    work = work_of(1, Hq, Tq, Tk, D, Dv);
  if (work <= WORK_CALL) {
    if (fz_chance(in, 12))
      a->fail_at = a->allocs + fz_range(in, 1, 3);
    int injected = a->fail_at != 0;
    attn_status st = attn_sdpa_varlen(ctx, q.t, k.t, v.t, out.t, batch, cu_q, cu_k, pp);
    a->fail_at = 0;
    fz_tensor *ins[3] = {&q, &k, &v}, *outs[2] = {&out, pl};
    check_buffers(st, ins, 3, outs, 2);
    if (st != ATTN_OK) {
      FZ_CHECK(attn_ctx_last_error(ctx)[0], "failure without a message");
      fz_tensor *all[5] = {&q, &k, &v, &out, pl};
      int exotic = 0;
      for (int i = 0; i < 5; i++)
        if (all[i] && (!all[i]->t || all[i]->exotic))
          exotic = 1;
      /* as the dense path: a head dim or key count past int32 is refused */
      int rejected_for_size = D > INT32_MAX || Tk > INT32_MAX;
      if (!exotic && !noise && !bad_offsets && sane && readable && !forbidden && batch >= 0 &&
          !rejected_for_size)
        FZ_CHECK(st == ATTN_ERR_NO_MEMORY && injected, "valid varlen call refused: %s: %s",
                 attn_status_string(st), attn_ctx_last_error(ctx));
    } else {
      FZ_CHECK(readable && sane && !forbidden && !bad_offsets && batch >= 0,
               "attn_sdpa_varlen accepted bad arguments");
      if (work <= WORK_CHECK)
        for (int64_t s = 0; s < batch; s++) {
          ref_view r;
          memset(&r, 0, sizeof r);
          r.Hq = Hq, r.Hkv = Hkv, r.D = D, r.Dv = Dv;
          r.Lq = cu_q[s + 1] - cu_q[s];
          r.Lk = cu_k[s + 1] - cu_k[s];
          r.q = &q, r.k = &k, r.v = &v, r.out = &out, r.lse = eff.lse ? pl : NULL;
          r.qb = cu_q[s] * q.eff[0], r.kb = cu_k[s] * k.eff[0], r.vb = cu_k[s] * v.eff[0];
          r.ob = cu_q[s] * out.eff[0];
          int64_t *dst[4] = {r.qs, r.ks, r.vs, r.os};
          const fz_tensor *src[4] = {&q, &k, &v, &out};
          for (int t = 0; t < 4; t++) {
            dst[t][0] = src[t]->eff[1];
            dst[t][1] = src[t]->eff[0];
            dst[t][2] = 1;
          }
          if (pl) {
            r.lb = cu_q[s] * lse.eff[1];
            r.ls[0] = lse.eff[0];
            r.ls[1] = lse.eff[1];
          }
          r.prm = eff;
          r.kv_len = r.Lk;
          r.diag = diag_of(&eff, s, r.Lq, r.Lk);
          check_rows(&r);
        }
    }
  }
  fz_tensor *all[5] = {&q, &k, &v, &out, pl};
  for (int i = 0; i < 5; i++)
    if (all[i])
      fz_tensor_release(all[i]);
  free(arr.kv_lens);
  free(arr.q_offsets);
  free(arr.slopes);
  free(arr.sinks);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fz_in in = {data, size};
  fz_alloc_state a = {0, 0, 0};
  attn_ctx *ctx = fz_ctx(&a, fz_chance(&in, 128) ? 2 : 1);
  if (fz_chance(&in, 64))
    fuzz_varlen(&in, ctx, &a);
  else
    fuzz_sdpa(&in, ctx, &a);
  fz_ctx_destroy(ctx, &a);
  return 0;
}
