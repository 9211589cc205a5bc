/* attn_sdpa and attn_sdpa_varlen against the float64 reference
 * (tests/reference/ref_sdpa.c), properties, and bad input.
 *
 * Error norms, the suite's contract:
 *   out      per query row: max_d |got_d - ref_d| / max(max_d mag_d, 1e-6)
 *            <= 1e-5, where mag_d = sum_j w_j |v_jd| is the size of the terms
 *            the row sums (>= |ref_d|; it keeps the norm sound when the
 *            weighted mean cancels to near zero, as for a mean of many random
 *            values, where float32 rounding of the terms is the floor).
 *            A row with no visible key must be exactly 0; a NaN in the
 *            reference must be NaN.
 *   lse      |got - ref| <= 1e-5 * max(1, |ref|); -inf must be -inf exactly.
 *   weights  |got - ref| <= 1e-6 * max(1, S), S the row's largest |logit|
 *            over visible keys (float32 logits carry an absolute error
 *            proportional to their size, and a weight's error is that
 *            error times the weight; the cases with exact logits, `big`,
 *            take S = 1); an exact 0 in the reference (masked) must be
 *            exactly 0.
 * Outputs are filled with a sentinel before each call, so rows the library
 * forgets to write are caught, and padding around strided outputs must keep
 * it; inputs' padding holds NaN, so a read outside a view shows.
 *
 * Threads: every case runs on contexts with 1 and 2 threads. When SDPA's
 * products go to BLAS (ATTN_KERNELS=sse2) sdpa.c uses one thread if the BLAS
 * is itself multi-threaded, so tests/CMakeLists.txt runs this suite with
 * OPENBLAS_NUM_THREADS=1 to reach its worker threads and its split-keys path
 * (few work items and Lk >= 2048) there too. */
#include "test_util.h"

#include "ref_posenc.h" /* ref_alibi_slopes */
#include "ref_sdpa.h"

#include <stddef.h>

#define SENTINEL 12345.0f
#define OUT_RTOL 1e-5
#define LSE_RTOL 1e-5
#define W_ATOL 1e-6

/* ---------------------------------------------------------------------- */
/* Buffers viewed as [B, H, L, D] in one of three layouts. */

/* LAY_B0 (one batch broadcast through stride 0) and LAY_OVERLAP (row i
 * starts one element after row i-1, so rows overlap: a legal input view
 * whose row stride BLAS cannot take) are for inputs only. */
enum { LAY_BHLD, LAY_BLHD, LAY_PAD, LAY_B0, LAY_OVERLAP };

typedef struct {
  float *data;
  size_t n; /* floats allocated */
  int64_t dims[4], strides[4];
} view4;

static void view_init(view4 *t, int64_t B, int64_t H, int64_t L, int64_t D, int lay) {
  int64_t P = D + 3;
  t->dims[0] = B, t->dims[1] = H, t->dims[2] = L, t->dims[3] = D;
  switch (lay) {
  case LAY_BLHD: /* [B, L, H, D] memory */
    t->strides[0] = L * H * D, t->strides[1] = D, t->strides[2] = H * D, t->strides[3] = 1;
    t->n = (size_t)(B * L * H * D);
    break;
  case LAY_PAD: /* padded rows and batches */
    t->strides[0] = H * L * P + 5, t->strides[1] = L * P, t->strides[2] = P, t->strides[3] = 1;
    t->n = (size_t)(B * (H * L * P + 5));
    break;
  case LAY_B0:
    t->strides[0] = 0, t->strides[1] = L * D, t->strides[2] = D, t->strides[3] = 1;
    t->n = (size_t)(H * L * D);
    break;
  case LAY_OVERLAP:
    t->strides[0] = H * (L + D - 1), t->strides[1] = L + D - 1, t->strides[2] = 1;
    t->strides[3] = 1;
    t->n = (size_t)(B * H * (L + D - 1));
    break;
  default:
    t->strides[0] = H * L * D, t->strides[1] = L * D, t->strides[2] = D, t->strides[3] = 1;
    t->n = (size_t)(B * H * L * D);
  }
  t->data = malloc((t->n ? t->n : 1) * sizeof(float));
}

static size_t view_off(const view4 *t, int64_t b, int64_t h, int64_t l, int64_t d) {
  return (size_t)(b * t->strides[0] + h * t->strides[1] + l * t->strides[2] + d);
}

static void view_fill(view4 *t, float value) {
  for (size_t i = 0; i < t->n; i++)
    t->data[i] = value;
}

/* Every element of the view from rng: uniform in [-mul, mul), or with
 * `ints`, 16 * an integer in [-8, 8] (dot products then exact in float). */
static void view_random(view4 *t, tu_rng *r, float mul, int ints) {
  view_fill(t, NAN);
  for (int64_t b = 0; b < t->dims[0]; b++)
    for (int64_t h = 0; h < t->dims[1]; h++)
      for (int64_t l = 0; l < t->dims[2]; l++)
        for (int64_t d = 0; d < t->dims[3]; d++)
          t->data[view_off(t, b, h, l, d)] =
              ints ? 16.0f * (float)((int)(tu_next(r) % 17) - 8) : mul * tu_uniform(r, -1, 1);
}

/* Elements outside the view must still hold the sentinel. */
static int view_padding_intact(const view4 *t) {
  char *in = calloc(t->n ? t->n : 1, 1);
  for (int64_t b = 0; b < t->dims[0]; b++)
    for (int64_t h = 0; h < t->dims[1]; h++)
      for (int64_t l = 0; l < t->dims[2]; l++)
        for (int64_t d = 0; d < t->dims[3]; d++)
          in[view_off(t, b, h, l, d)] = 1;
  int ok = 1;
  for (size_t i = 0; i < t->n; i++)
    if (!in[i] && !(t->data[i] == SENTINEL))
      ok = 0;
  free(in);
  return ok;
}

static attn_tensor *view_wrap(attn_ctx *ctx, view4 *t) {
  return tu_wrap(ctx, t->data, t->n, 4, t->dims, t->strides);
}

static void view_free(view4 *t) { free(t->data); }

/* ---------------------------------------------------------------------- */
/* Masks in the broadcast shapes the header allows. */

enum {
  MASK_NONE,
  MASK_11,   /* [1, 1, Lq, Lk] */
  MASK_B1,   /* [B, 1, Lq, Lk] */
  MASK_1H,   /* [1, H, Lq, Lk] */
  MASK_2D,   /* [Lq, Lk] */
  MASK_BH,   /* [B, H, Lq, Lk] */
  MASK_ZERO, /* [B, H, Lq, Lk] through zero strides over one [Lq, Lk] */
  MASK_KEYS, /* [B, 1, 1, Lk]: key padding; NumPy broadcasting over Lq too */
};

typedef struct {
  void *data;
  int32_t ndim;
  int64_t dims[4], strides[4];
  size_t bytes;
  int64_t ref_strides[4]; /* for the reference: 0 where broadcast */
} mask_buf;

/* Additive masks: values in [-2, 2], about 15% -inf, and every row i with
 * i % 7 == 3 all -inf. Boolean masks: 75% keep, rows i % 5 == 2 all 0. */
static void mask_make(mask_buf *m, int kind, int is_bool, int64_t B, int64_t H, int64_t Lq,
                      int64_t Lk, tu_rng *r, int quarters) {
  int64_t mb = (kind == MASK_B1 || kind == MASK_BH || kind == MASK_KEYS) ? B : 1;
  int64_t mh = (kind == MASK_1H || kind == MASK_BH) ? H : 1;
  if (kind == MASK_KEYS)
    Lq = 1;
  size_t n = (size_t)(mb * mh * Lq * Lk), es = is_bool ? 1 : sizeof(float);
  m->bytes = n * es;
  m->data = malloc(m->bytes);
  for (size_t e = 0; e < n; e++) {
    int64_t i = (int64_t)(e / (size_t)Lk) % Lq;
    if (is_bool) {
      ((uint8_t *)m->data)[e] =
          (uint8_t)((i % 5 != 2 || Lq == 1) && tu_uniform(r, 0, 1) < 0.75f);
    } else {
      float x = tu_uniform(r, -2, 2);
      if (quarters) /* multiples of 1/4: logit + mask stays exact near 1e4 */
        x = floorf(x * 4) / 4;
      if ((i % 7 == 3 && Lq > 1) || tu_uniform(r, 0, 1) < 0.15f)
        x = -INFINITY;
      ((float *)m->data)[e] = x;
    }
  }
  m->ndim = 4;
  m->dims[0] = mb, m->dims[1] = mh, m->dims[2] = Lq, m->dims[3] = Lk;
  m->strides[0] = mh * Lq * Lk, m->strides[1] = Lq * Lk, m->strides[2] = Lk, m->strides[3] = 1;
  if (kind == MASK_2D) {
    m->ndim = 2;
    m->dims[0] = Lq, m->dims[1] = Lk, m->strides[0] = Lk, m->strides[1] = 1;
  } else if (kind == MASK_ZERO) {
    m->dims[0] = B, m->dims[1] = H, m->strides[0] = 0, m->strides[1] = 0;
  }
  m->ref_strides[0] = mb > 1 ? mh * Lq * Lk : 0;
  m->ref_strides[1] = mh > 1 ? Lq * Lk : 0;
  m->ref_strides[2] = Lq > 1 ? Lk : 0;
  m->ref_strides[3] = 1;
}

static attn_tensor *mask_wrap(attn_ctx *ctx, mask_buf *m, int is_bool) {
  attn_tensor *t = NULL;
  attn_status st = attn_tensor_wrap(ctx, is_bool ? ATTN_DTYPE_U8 : ATTN_DTYPE_F32, m->ndim,
                                    m->dims, m->strides, m->data, m->bytes, &t);
  if (st != ATTN_OK)
    fail_msg("mask wrap: %s", attn_ctx_last_error(ctx));
  return t;
}

/* ---------------------------------------------------------------------- */
/* Comparison with the reference, one row at a time. */

typedef struct {
  const char *name;
  int threads;
  int failures;
  double worst_out, worst_lse, worst_w;
} checker;

static void report(checker *ck, const char *what, int64_t b, int64_t h, int64_t i, int64_t x,
                   double got, double want, double err) {
  if (ck->failures++ < 6)
    print_error("  %s [threads %d]: %s at b=%lld h=%lld i=%lld [%lld]: got %.9g want %.9g "
                "(err %.3g)\n",
                ck->name, ck->threads, what, (long long)b, (long long)h, (long long)i,
                (long long)x, got, want, err);
}

/* Row (b, h, i): out row `got` (Dv floats, stride 1), lse and weights
 * (NULL when not requested) against the reference. */
static void check_row(checker *ck, int64_t b, int64_t h, int64_t i, int64_t Dv, int64_t Lk,
                      const float *got, const double *ref, const double *mag, int64_t n_vis,
                      const float *got_lse, double ref_lse, const float *got_w,
                      const double *ref_w, double logit_size) {
  double scale = 1e-6;
  for (int64_t d = 0; d < Dv; d++)
    if (mag[d] > scale)
      scale = mag[d];
  for (int64_t d = 0; d < Dv; d++) {
    double g = got[d];
    if (n_vis == 0) {
      if (g != 0)
        report(ck, "out of an empty row", b, h, i, d, g, 0, INFINITY);
    } else if (isnan(ref[d])) {
      if (!isnan(g))
        report(ck, "out (want NaN)", b, h, i, d, g, ref[d], INFINITY);
    } else {
      double e = fabs(g - ref[d]) / scale;
      if (!(e <= OUT_RTOL))
        report(ck, "out", b, h, i, d, g, ref[d], e);
      else if (e > ck->worst_out)
        ck->worst_out = e;
    }
  }
  if (got_lse) {
    double g = *got_lse;
    if (!tu_close(g, ref_lse, 0, LSE_RTOL * fmax(1.0, fabs(ref_lse))))
      report(ck, "lse", b, h, i, 0, g, ref_lse, fabs(g - ref_lse));
    else if (isfinite(ref_lse) && fabs(g - ref_lse) / fmax(1.0, fabs(ref_lse)) > ck->worst_lse)
      ck->worst_lse = fabs(g - ref_lse) / fmax(1.0, fabs(ref_lse));
  }
  if (got_w)
    for (int64_t j = 0; j < Lk; j++) {
      double g = got_w[j], want = ref_w[j];
      double tol = W_ATOL * fmax(1.0, logit_size);
      int ok = isnan(want) ? isnan(g) : want == 0 ? g == 0 : fabs(g - want) <= tol;
      if (!ok)
        report(ck, "weights", b, h, i, j, g, want, fabs(g - want));
      else if (!isnan(want) && fabs(g - want) > ck->worst_w)
        ck->worst_w = fabs(g - want);
    }
}

/* ---------------------------------------------------------------------- */
/* Cases against the reference. */

typedef struct {
  const char *name;
  int64_t B, Hq, Hkv, Lq, Lk, D, Dv;
  int lay_in, lay_out;
  float scale, softcap;
  int causal, align, window;
  int64_t wl, wr;
  int mask, bmask; /* MASK_* */
  int kvl;         /* kv_lens cycling over batches: 2Lk/3+1, 0, Lk, 1 */
  int qoff;        /* q_offsets cycling over batches: Lk/3, -Lq/2 - 1, Lk - Lq, Lk + 2 */
  int alibi, sinks, lse, weights;
  int big;       /* q, k = 16 * integers: logits ~1e4, exact in float */
  float qk_mul;  /* q and k uniform in [-qk_mul, qk_mul); 0 = 1 */
  int threads;   /* 1 or 2 only; 0 = both */
  int row_step;  /* check rows i % row_step == 0 and the last 3; 0 = all */
  int64_t nan_q, nan_k, nan_v; /* 1 + the query row / key made NaN (every b, h, d); 0 = none */
  int pad_aux;   /* lse and weights as padded strided views */
} sdpa_case;

static uint64_t name_seed(const char *s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h ? h : 1;
}

static int row_checked(const sdpa_case *c, int64_t i) {
  return c->row_step <= 1 || i % c->row_step == 0 || i >= c->Lq - 3;
}

/* ctxs[t-1] has t threads; the groups reuse them across cases, so scratch
 * left by a larger problem is reused by the next. */
static int run_case(const sdpa_case *c, attn_ctx *const *ctxs, int nctx) {
  tu_rng rng = {name_seed(c->name)};
  int64_t B = c->B, Hq = c->Hq, Hkv = c->Hkv, Lq = c->Lq, Lk = c->Lk, D = c->D, Dv = c->Dv;
  view4 q, k, v, out;
  view_init(&q, B, Hq, Lq, D, c->lay_in);
  view_init(&k, B, Hkv, Lk, D, c->lay_in);
  view_init(&v, B, Hkv, Lk, Dv, c->lay_in);
  view_init(&out, B, Hq, Lq, Dv, c->lay_out);
  float mul = c->qk_mul != 0 ? c->qk_mul : 1.0f;
  view_random(&q, &rng, mul, c->big);
  view_random(&k, &rng, mul, c->big);
  view_random(&v, &rng, 1.0f, 0);
  for (int64_t b = 0; b < B; b++) {
    for (int64_t h = 0; h < Hq && c->nan_q; h++)
      for (int64_t d = 0; d < D; d++)
        q.data[view_off(&q, b, h, c->nan_q - 1, d)] = NAN;
    for (int64_t h = 0; h < Hkv; h++) {
      for (int64_t d = 0; d < D && c->nan_k; d++)
        k.data[view_off(&k, b, h, c->nan_k - 1, d)] = NAN;
      for (int64_t d = 0; d < Dv && c->nan_v; d++)
        v.data[view_off(&v, b, h, c->nan_v - 1, d)] = NAN;
    }
  }
  mask_buf mask = {0}, bmask = {0};
  if (c->mask)
    mask_make(&mask, c->mask, 0, B, Hq, Lq, Lk, &rng, c->big);
  if (c->bmask)
    mask_make(&bmask, c->bmask, 1, B, Hq, Lq, Lk, &rng, 0);
  int64_t *kv_lens = malloc((size_t)B * sizeof *kv_lens);
  for (int64_t b = 0; b < B; b++) {
    int64_t pattern[4] = {2 * Lk / 3 + 1 < Lk ? 2 * Lk / 3 + 1 : Lk, 0, Lk, 1};
    kv_lens[b] = pattern[b % 4];
  }
  int64_t *q_offsets = malloc((size_t)B * sizeof *q_offsets);
  for (int64_t b = 0; b < B; b++) {
    int64_t pattern[4] = {Lk / 3, -Lq / 2 - 1, Lk - Lq, Lk + 2};
    q_offsets[b] = pattern[b % 4];
  }
  float *slopes = malloc((size_t)Hq * sizeof *slopes), *sinks = malloc((size_t)Hq * sizeof *sinks);
  double *dslopes = malloc((size_t)Hq * sizeof *dslopes);
  ref_alibi_slopes(Hq, 8.0, dslopes);
  for (int64_t h = 0; h < Hq; h++) {
    slopes[h] = (float)dslopes[h];
    sinks[h] = h % 3 == 2 ? 6.0f : tu_uniform(&rng, -1, 2); /* some dominate their rows */
  }

  ref_sdpa_args ra = {0};
  ra.B = B, ra.Hq = Hq, ra.Hkv = Hkv, ra.Lq = Lq, ra.Lk = Lk, ra.D = D, ra.Dv = Dv;
  ra.q = q.data, ra.k = k.data, ra.v = v.data;
  memcpy(ra.qs, q.strides, sizeof ra.qs);
  memcpy(ra.ks, k.strides, sizeof ra.ks);
  memcpy(ra.vs, v.strides, sizeof ra.vs);
  ra.scale = c->scale, ra.softcap = c->softcap;
  ra.causal = c->causal, ra.bottom_right = c->align == ATTN_ALIGN_BOTTOM_RIGHT;
  ra.window = c->window, ra.window_left = c->wl, ra.window_right = c->wr;
  if (c->mask) {
    ra.mask = mask.data;
    memcpy(ra.ms, mask.ref_strides, sizeof ra.ms);
  }
  if (c->bmask) {
    ra.bool_mask = bmask.data;
    memcpy(ra.bs, bmask.ref_strides, sizeof ra.bs);
  }
  ra.kv_lens = c->kvl ? kv_lens : NULL;
  ra.q_offsets = c->qoff ? q_offsets : NULL;
  ra.alibi_slopes = c->alibi ? slopes : NULL;
  ra.sinks = c->sinks ? sinks : NULL;

  /* The reference, for the rows checked. */
  size_t rows = (size_t)(B * Hq * Lq);
  double *rout = calloc(rows * (size_t)Dv + 1, sizeof(double));
  double *rmag = calloc(rows * (size_t)Dv + 1, sizeof(double));
  double *rlse = calloc(rows, sizeof(double));
  double *rw = c->weights ? calloc(rows * (size_t)Lk, sizeof(double)) : NULL;
  int64_t *rvis = calloc(rows, sizeof(int64_t));
  double *rsize = calloc(rows, sizeof(double));
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < Hq; h++)
      for (int64_t i = 0; i < Lq; i++)
        if (row_checked(c, i)) {
          size_t r = (size_t)((b * Hq + h) * Lq + i);
          rvis[r] = ref_sdpa_row(&ra, b, h, i, rout + r * (size_t)Dv, rmag + r * (size_t)Dv,
                                 rlse + r, rw ? rw + r * (size_t)Lk : NULL, rsize + r);
        }

  int64_t ls[3] = {Hq * Lq, Lq, 1};
  if (c->pad_aux)
    ls[0] = Hq * (Lq + 3), ls[1] = Lq + 3;
  size_t nl = (size_t)(B * ls[0]);
  float *lse = malloc(nl * sizeof(float));
  view4 wv = {0};
  if (c->weights)
    view_init(&wv, B, Hq, Lq, Lk, c->pad_aux ? LAY_PAD : LAY_BHLD);
  float *w = wv.data;
  float *orow = malloc((size_t)Dv * sizeof(float));
  int failures = 0;
  for (int threads = 1; threads <= nctx; threads++) {
    if (c->threads && c->threads != threads)
      continue;
    checker ck = {c->name, threads, 0, 0, 0, 0};
    attn_ctx *ctx = ctxs[threads - 1];
    attn_sdpa_params p;
    attn_sdpa_params_init(&p);
    p.scale = c->scale, p.softcap = c->softcap;
    p.causal = c->causal, p.align = c->align, p.window = c->window;
    p.window_left = c->wl, p.window_right = c->wr;
    if (c->mask)
      p.mask = mask_wrap(ctx, &mask, 0);
    if (c->bmask)
      p.bool_mask = mask_wrap(ctx, &bmask, 1);
    p.kv_lens = ra.kv_lens, p.alibi_slopes = ra.alibi_slopes, p.sinks = ra.sinks;
    p.q_offsets = ra.q_offsets;
    int64_t ldims[3] = {B, Hq, Lq};
    for (size_t r = 0; r < nl; r++)
      lse[r] = SENTINEL;
    if (c->lse)
      p.lse = tu_wrap(ctx, lse, nl, 3, ldims, ls);
    if (w) {
      view_fill(&wv, SENTINEL);
      p.weights = view_wrap(ctx, &wv);
    }
    view_fill(&out, SENTINEL);
    attn_status st = attn_sdpa(ctx, view_wrap(ctx, &q), view_wrap(ctx, &k), view_wrap(ctx, &v),
                               view_wrap(ctx, &out), &p);
    if (st != ATTN_OK) {
      print_error("  %s [threads %d]: %s: %s\n", c->name, threads, attn_status_string(st),
                  attn_ctx_last_error(ctx));
      ck.failures++;
    } else {
      for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < Hq; h++)
          for (int64_t i = 0; i < Lq; i++) {
            if (!row_checked(c, i))
              continue;
            size_t r = (size_t)((b * Hq + h) * Lq + i);
            for (int64_t d = 0; d < Dv; d++)
              orow[d] = out.data[view_off(&out, b, h, i, d)];
            check_row(&ck, b, h, i, Dv, Lk, orow, rout + r * (size_t)Dv, rmag + r * (size_t)Dv,
                      rvis[r], c->lse ? lse + b * ls[0] + h * ls[1] + i : NULL, rlse[r],
                      w ? w + view_off(&wv, b, h, i, 0) : NULL, rw ? rw + r * (size_t)Lk : NULL,
                      c->big ? 0 : rsize[r]);
          }
      if (!view_padding_intact(&out)) {
        print_error("  %s [threads %d]: out's padding was written\n", c->name, threads);
        ck.failures++;
      }
      int lse_pad_ok = 1;
      for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < Hq; h++)
          for (int64_t i = c->lse ? Lq : 0; i < ls[1]; i++)
            lse_pad_ok &= lse[b * ls[0] + h * ls[1] + i] == SENTINEL;
      if (!lse_pad_ok || (w && !view_padding_intact(&wv))) {
        print_error("  %s [threads %d]: lse or weights written outside their views (or "
                    "though not requested)\n", c->name, threads);
        ck.failures++;
      }
    }
    if (ck.failures)
      print_error("  %s [threads %d]: %d mismatches\n", c->name, threads, ck.failures);
    else if (getenv("ATTN_TEST_VERBOSE"))
      print_message("  %-36s threads %d: worst out %.2e, lse %.2e, weights %.2e\n", c->name,
                    threads, ck.worst_out, ck.worst_lse, ck.worst_w);
    failures += ck.failures;
  }
  free(orow);
  free(w);
  free(lse);
  free(rvis);
  free(rsize);
  free(rw);
  free(rlse);
  free(rmag);
  free(rout);
  free(dslopes);
  free(sinks);
  free(slopes);
  free(kv_lens);
  free(q_offsets);
  free(mask.data);
  free(bmask.data);
  view_free(&out);
  view_free(&v);
  view_free(&k);
  view_free(&q);
  return failures;
}

/* Each case on contexts of 1 .. nctx threads. Under valgrind
 * (ATTN_TEST_SDPA_PAIRS, set by tests/CMakeLists.txt) the cases with more
 * query-key pairs than that are left to the other presets: the three of
 * 4096 x 4096 took 4.5 minutes there, the rest of the suite 2.5. */
static void run_cases_threads(const sdpa_case *cases, size_t n, int nctx) {
  int bad = 0;
  attn_ctx *ctxs[8];
  const char *env = getenv("ATTN_TEST_SDPA_PAIRS");
  double max_pairs = env ? atof(env) : INFINITY;
  for (int t = 0; t < nctx; t++)
    ctxs[t] = tu_ctx(t + 1);
  for (size_t i = 0; i < n; i++)
    if ((double)cases[i].B * (double)cases[i].Hq * (double)cases[i].Lq * (double)cases[i].Lk <=
            max_pairs &&
        run_case(&cases[i], ctxs, nctx))
      bad++;
  for (int t = 0; t < nctx; t++)
    attn_ctx_destroy(ctxs[t]);
  if (bad)
    fail_msg("%d of %d cases differ from the reference", bad, (int)n);
}

#define RUN_CASES(arr) run_cases_threads((arr), sizeof(arr) / sizeof((arr)[0]), 2)

#define TL ATTN_ALIGN_TOP_LEFT
#define BR ATTN_ALIGN_BOTTOM_RIGHT

/* Sizes 1, odd and prime, across the row tiles (128 rows in sdpa.c, GQA
 * heads included) and the 256-key tiles; Lq and Lk both ways round;
 * D != Dv. */
static void shapes(void **state) {
  (void)state;
  static const sdpa_case cases[] = {
      {.name = "1x1", .B = 1, .Hq = 1, .Hkv = 1, .Lq = 1, .Lk = 1, .D = 1, .Dv = 1, .lse = 1, .weights = 1},
      {.name = "Lq1 Lk7", .B = 1, .Hq = 1, .Hkv = 1, .Lq = 1, .Lk = 7, .D = 3, .Dv = 5, .lse = 1, .weights = 1},
      {.name = "Lk1", .B = 3, .Hq = 5, .Hkv = 5, .Lq = 3, .Lk = 1, .D = 7, .Dv = 2, .lse = 1, .weights = 1},
      {.name = "7x13", .B = 2, .Hq = 3, .Hkv = 3, .Lq = 7, .Lk = 13, .D = 5, .Dv = 3, .lse = 1, .weights = 1},
      {.name = "13x67", .B = 1, .Hq = 2, .Hkv = 2, .Lq = 13, .Lk = 67, .D = 8, .Dv = 16, .lse = 1},
      {.name = "67x257", .B = 1, .Hq = 1, .Hkv = 1, .Lq = 67, .Lk = 257, .D = 16, .Dv = 8, .lse = 1, .weights = 1},
      {.name = "257x300", .B = 2, .Hq = 2, .Hkv = 2, .Lq = 257, .Lk = 300, .D = 64, .Dv = 32, .lse = 1},
      {.name = "300x67", .B = 1, .Hq = 1, .Hkv = 1, .Lq = 300, .Lk = 67, .D = 33, .Dv = 65, .lse = 1},
      {.name = "65x513", .B = 1, .Hq = 2, .Hkv = 2, .Lq = 65, .Lk = 513, .D = 32, .Dv = 32, .lse = 1},
      {.name = "129x257 D128", .B = 1, .Hq = 1, .Hkv = 1, .Lq = 129, .Lk = 257, .D = 128, .Dv = 96, .lse = 1},
      {.name = "64x256", .B = 1, .Hq = 1, .Hkv = 1, .Lq = 64, .Lk = 256, .D = 128, .Dv = 128},
      {.name = "128x512 D128", .B = 1, .Hq = 2, .Hkv = 2, .Lq = 128, .Lk = 512, .D = 128, .Dv = 64, .lse = 1},
      {.name = "D1 Dv1 long", .B = 1, .Hq = 1, .Hkv = 1, .Lq = 3, .Lk = 600, .D = 1, .Dv = 1, .lse = 1},
  };
  RUN_CASES(cases);
}

/* [B, L, H, D] through permuted strides, padded rows, for inputs and out. */
static void layouts(void **state) {
  (void)state;
  static const sdpa_case cases[] = {
      {.name = "blhd in+out", .B = 2, .Hq = 8, .Hkv = 2, .Lq = 67, .Lk = 257, .D = 16, .Dv = 24,
       .lay_in = LAY_BLHD, .lay_out = LAY_BLHD, .lse = 1, .causal = 1, .align = BR},
      {.name = "bhld in, blhd out", .B = 2, .Hq = 3, .Hkv = 3, .Lq = 70, .Lk = 300, .D = 8, .Dv = 8,
       .lay_out = LAY_BLHD, .lse = 1},
      {.name = "blhd in, bhld out", .B = 1, .Hq = 4, .Hkv = 1, .Lq = 13, .Lk = 257, .D = 32, .Dv = 7,
       .lay_in = LAY_BLHD, .lse = 1, .weights = 1},
      {.name = "padded in+out", .B = 2, .Hq = 4, .Hkv = 2, .Lq = 65, .Lk = 260, .D = 9, .Dv = 5,
       .lay_in = LAY_PAD, .lay_out = LAY_PAD, .lse = 1, .causal = 1},
      {.name = "padded in, Lk 1", .B = 2, .Hq = 2, .Hkv = 1, .Lq = 5, .Lk = 1, .D = 4, .Dv = 3,
       .lay_in = LAY_PAD, .lay_out = LAY_PAD},
      {.name = "blhd Lq 1", .B = 3, .Hq = 4, .Hkv = 2, .Lq = 1, .Lk = 100, .D = 16, .Dv = 16,
       .lay_in = LAY_BLHD, .lay_out = LAY_BLHD, .lse = 1},
      /* Strided K/V rows go to the products in place up to 8 rows per
       * block and are gathered per tile above (sdpa_plan.c). */
      {.name = "blhd 8 rows per block", .B = 2, .Hq = 2, .Hkv = 1, .Lq = 4, .Lk = 300, .D = 16, .Dv = 8,
       .lay_in = LAY_BLHD, .lse = 1, .weights = 1},
      {.name = "blhd 9 rows per block", .B = 2, .Hq = 3, .Hkv = 1, .Lq = 3, .Lk = 300, .D = 16, .Dv = 8,
       .lay_in = LAY_BLHD, .lay_out = LAY_BLHD, .lse = 1, .weights = 1},
      {.name = "blhd 9 rows causal", .B = 1, .Hq = 9, .Hkv = 9, .Lq = 9, .Lk = 9, .D = 64, .Dv = 64,
       .lay_in = LAY_BLHD, .causal = 1, .lse = 1},
      {.name = "inputs shared over batch", .B = 3, .Hq = 4, .Hkv = 2, .Lq = 20, .Lk = 300, .D = 16, .Dv = 8,
       .lay_in = LAY_B0, .kvl = 1, .causal = 1, .align = BR, .lse = 1, .weights = 1, .pad_aux = 1},
      {.name = "overlapping rows", .B = 2, .Hq = 2, .Hkv = 1, .Lq = 70, .Lk = 300, .D = 8, .Dv = 5,
       .lay_in = LAY_OVERLAP, .lay_out = LAY_PAD, .lse = 1, .weights = 1, .pad_aux = 1},
      {.name = "overlapping rows Lk 2", .B = 1, .Hq = 1, .Hkv = 1, .Lq = 3, .Lk = 2, .D = 4, .Dv = 4,
       .lay_in = LAY_OVERLAP, .lse = 1, .weights = 1},
  };
  RUN_CASES(cases);
}

/* Grouped-query and multi-query, including a group larger than a row tile. */
static void gqa_mqa(void **state) {
  (void)state;
  static const sdpa_case cases[] = {
      {.name = "gqa 8/2 causal br", .B = 2, .Hq = 8, .Hkv = 2, .Lq = 100, .Lk = 300, .D = 16, .Dv = 16,
       .causal = 1, .align = BR, .lse = 1},
      {.name = "mqa 8/1 decode", .B = 2, .Hq = 8, .Hkv = 1, .Lq = 1, .Lk = 300, .D = 32, .Dv = 32, .lse = 1},
      {.name = "mqa 8/1 causal", .B = 1, .Hq = 8, .Hkv = 1, .Lq = 70, .Lk = 70, .D = 16, .Dv = 8,
       .causal = 1, .lse = 1, .weights = 1},
      {.name = "group 160", .B = 1, .Hq = 160, .Hkv = 1, .Lq = 3, .Lk = 100, .D = 8, .Dv = 8,
       .causal = 1, .align = BR, .lse = 1, .alibi = 1, .sinks = 1},
      {.name = "group 3", .B = 1, .Hq = 3, .Hkv = 1, .Lq = 65, .Lk = 65, .D = 8, .Dv = 8,
       .causal = 1, .lse = 1, .alibi = 1},
      {.name = "group 2 of 3", .B = 2, .Hq = 6, .Hkv = 3, .Lq = 65, .Lk = 130, .D = 8, .Dv = 4,
       .window = 1, .wl = 20, .wr = 3, .lse = 1, .mask = MASK_1H},
  };
  RUN_CASES(cases);
}

/* Causal in both alignments, windows, key lengths. */
static void causal_window_kvlens(void **state) {
  (void)state;
  static const sdpa_case cases[] = {
      {.name = "causal tl square", .B = 1, .Hq = 2, .Hkv = 2, .Lq = 130, .Lk = 130, .D = 16, .Dv = 16,
       .causal = 1, .lse = 1, .weights = 1},
      {.name = "causal tl Lq<Lk", .B = 1, .Hq = 2, .Hkv = 1, .Lq = 67, .Lk = 300, .D = 16, .Dv = 8,
       .causal = 1, .lse = 1},
      {.name = "causal tl Lq>Lk", .B = 1, .Hq = 2, .Hkv = 1, .Lq = 300, .Lk = 67, .D = 16, .Dv = 8,
       .causal = 1, .lse = 1},
      {.name = "causal br Lq<Lk", .B = 2, .Hq = 2, .Hkv = 2, .Lq = 67, .Lk = 300, .D = 16, .Dv = 8,
       .causal = 1, .align = BR, .lse = 1, .weights = 1},
      {.name = "causal br Lq>Lk", .B = 1, .Hq = 2, .Hkv = 2, .Lq = 300, .Lk = 67, .D = 16, .Dv = 8,
       .causal = 1, .align = BR, .lse = 1, .weights = 1},
      {.name = "causal br Lq>Lk sinks", .B = 1, .Hq = 3, .Hkv = 1, .Lq = 90, .Lk = 20, .D = 8, .Dv = 8,
       .causal = 1, .align = BR, .lse = 1, .sinks = 1},
      {.name = "window left", .B = 1, .Hq = 2, .Hkv = 2, .Lq = 300, .Lk = 300, .D = 16, .Dv = 16,
       .window = 1, .wl = 5, .wr = 0, .lse = 1},
      {.name = "window left+right", .B = 1, .Hq = 2, .Hkv = 2, .Lq = 100, .Lk = 300, .D = 16, .Dv = 16,
       .window = 1, .wl = 3, .wr = 7, .lse = 1, .weights = 1},
      {.name = "window+causal", .B = 1, .Hq = 2, .Hkv = 1, .Lq = 600, .Lk = 600, .D = 16, .Dv = 16,
       .causal = 1, .window = 1, .wl = 16, .wr = 100, .lse = 1},
      {.name = "window br tiles skipped", .B = 1, .Hq = 2, .Hkv = 2, .Lq = 20, .Lk = 900, .D = 16, .Dv = 8,
       .window = 1, .wl = 100, .wr = 0, .align = BR, .lse = 1, .weights = 1},
      {.name = "window diagonal only", .B = 1, .Hq = 1, .Hkv = 1, .Lq = 70, .Lk = 70, .D = 8, .Dv = 8,
       .window = 1, .lse = 1, .weights = 1},
      {.name = "window br Lq>Lk", .B = 1, .Hq = 1, .Hkv = 1, .Lq = 100, .Lk = 40, .D = 8, .Dv = 8,
       .window = 1, .wl = 4, .wr = 2, .align = BR, .lse = 1},
      {.name = "window huge", .B = 1, .Hq = 1, .Hkv = 1, .Lq = 40, .Lk = 70, .D = 8, .Dv = 8,
       .window = 1, .wl = INT64_MAX, .wr = INT64_MAX, .causal = 1, .lse = 1},
      {.name = "kv_lens", .B = 4, .Hq = 2, .Hkv = 2, .Lq = 70, .Lk = 300, .D = 16, .Dv = 16,
       .kvl = 1, .lse = 1, .weights = 1},
      {.name = "kv_lens causal br", .B = 4, .Hq = 4, .Hkv = 2, .Lq = 50, .Lk = 270, .D = 16, .Dv = 16,
       .kvl = 1, .causal = 1, .align = BR, .lse = 1},
      {.name = "kv_lens sinks", .B = 4, .Hq = 3, .Hkv = 3, .Lq = 9, .Lk = 40, .D = 8, .Dv = 8,
       .kvl = 1, .sinks = 1, .lse = 1, .weights = 1},
  };
  RUN_CASES(cases);
}

/* Query positions per sequence: {causal, window, ALiBi} (every non-empty
 * combination) x {padded kv_lens with bottom-right alignment, q_offsets,
 * both}, then the issue 9 examples: decoding one token with a sliding window
 * in a padded cache, and a causal multi-token step (chunked prefill). */
static void positions(void **state) {
  (void)state;
  enum { N = 7 * 3 };
  static char names[N][48];
  sdpa_case cases[N + 4];
  size_t n = 0;
  static const char *const modes[3] = {"kv_lens br", "q_offsets", "kv_lens+q_offsets"};
  for (int combo = 1; combo < 8; combo++)
    for (int mode = 0; mode < 3; mode++) {
      sdpa_case c = {.B = 4, .Hq = 4, .Hkv = 2, .Lq = 37, .Lk = 300, .D = 16, .Dv = 8,
                     .lse = 1, .weights = 1};
      c.causal = combo & 1;
      c.window = (combo >> 1) & 1, c.wl = 40, c.wr = 3;
      c.alibi = (combo >> 2) & 1;
      c.kvl = mode != 1;
      c.align = mode == 0 ? BR : ATTN_ALIGN_TOP_LEFT;
      c.qoff = mode != 0;
      snprintf(names[n], sizeof names[n], "%s%s%s, %s", c.causal ? "+causal" : "",
               c.window ? "+window" : "", c.alibi ? "+alibi" : "", modes[mode]);
      c.name = names[n];
      cases[n++] = c;
    }
  cases[n++] = (sdpa_case){.name = "decode window padded cache", .B = 4, .Hq = 8, .Hkv = 2,
                           .Lq = 1, .Lk = 300, .D = 16, .Dv = 16, .window = 1, .wl = 32,
                           .wr = 0, .align = BR, .kvl = 1, .lse = 1, .weights = 1};
  cases[n++] = (sdpa_case){.name = "decode causal alibi padded cache", .B = 4, .Hq = 4,
                           .Hkv = 1, .Lq = 1, .Lk = 3000, .D = 16, .Dv = 16, .causal = 1,
                           .alibi = 1, .align = BR, .kvl = 1, .lse = 1};
  cases[n++] = (sdpa_case){.name = "chunked prefill padded cache", .B = 4, .Hq = 4, .Hkv = 2,
                           .Lq = 16, .Lk = 300, .D = 16, .Dv = 16, .causal = 1, .align = BR,
                           .kvl = 1, .lse = 1, .weights = 1};
  cases[n++] = (sdpa_case){.name = "long q_offsets split keys", .B = 1, .Hq = 2, .Hkv = 1,
                           .Lq = 3, .Lk = 5000, .D = 8, .Dv = 8, .causal = 1, .window = 1,
                           .wl = 3000, .wr = 0, .qoff = 1, .lse = 1};
  run_cases_threads(cases, n, 2);
}

/* Additive and boolean masks in every broadcast shape; all-masked rows. */
static void masks(void **state) {
  (void)state;
  static const sdpa_case cases[] = {
      {.name = "mask [1,1,Lq,Lk]", .B = 2, .Hq = 3, .Hkv = 3, .Lq = 37, .Lk = 70, .D = 8, .Dv = 8, .mask = MASK_11, .lse = 1, .weights = 1},
      {.name = "mask [B,1,Lq,Lk]", .B = 2, .Hq = 3, .Hkv = 1, .Lq = 37, .Lk = 70, .D = 8, .Dv = 8, .mask = MASK_B1, .lse = 1, .weights = 1},
      {.name = "mask [1,H,Lq,Lk]", .B = 2, .Hq = 4, .Hkv = 2, .Lq = 37, .Lk = 70, .D = 8, .Dv = 8, .mask = MASK_1H, .lse = 1, .weights = 1},
      {.name = "mask [Lq,Lk]", .B = 2, .Hq = 3, .Hkv = 3, .Lq = 37, .Lk = 70, .D = 8, .Dv = 8, .mask = MASK_2D, .lse = 1, .weights = 1},
      {.name = "mask [B,H,Lq,Lk]", .B = 2, .Hq = 3, .Hkv = 3, .Lq = 37, .Lk = 70, .D = 8, .Dv = 8, .mask = MASK_BH, .lse = 1, .weights = 1},
      {.name = "mask zero strides", .B = 2, .Hq = 3, .Hkv = 3, .Lq = 37, .Lk = 70, .D = 8, .Dv = 8, .mask = MASK_ZERO, .lse = 1},
      {.name = "mask tiles", .B = 1, .Hq = 2, .Hkv = 1, .Lq = 300, .Lk = 300, .D = 16, .Dv = 16, .mask = MASK_BH, .lse = 1},
      {.name = "bool [1,1,Lq,Lk]", .B = 2, .Hq = 3, .Hkv = 3, .Lq = 37, .Lk = 70, .D = 8, .Dv = 8, .bmask = MASK_11, .lse = 1, .weights = 1},
      {.name = "bool [B,1,Lq,Lk]", .B = 2, .Hq = 3, .Hkv = 1, .Lq = 37, .Lk = 70, .D = 8, .Dv = 8, .bmask = MASK_B1, .lse = 1, .weights = 1},
      {.name = "bool [1,H,Lq,Lk]", .B = 2, .Hq = 4, .Hkv = 2, .Lq = 37, .Lk = 70, .D = 8, .Dv = 8, .bmask = MASK_1H, .lse = 1, .weights = 1},
      {.name = "bool [Lq,Lk]", .B = 2, .Hq = 3, .Hkv = 3, .Lq = 37, .Lk = 70, .D = 8, .Dv = 8, .bmask = MASK_2D, .lse = 1, .weights = 1},
      {.name = "bool [B,H,Lq,Lk]", .B = 2, .Hq = 3, .Hkv = 3, .Lq = 37, .Lk = 70, .D = 8, .Dv = 8, .bmask = MASK_BH, .lse = 1, .weights = 1},
      {.name = "bool zero strides", .B = 2, .Hq = 3, .Hkv = 3, .Lq = 37, .Lk = 70, .D = 8, .Dv = 8, .bmask = MASK_ZERO, .lse = 1},
      {.name = "bool tiles", .B = 1, .Hq = 2, .Hkv = 2, .Lq = 260, .Lk = 520, .D = 16, .Dv = 16, .bmask = MASK_B1, .lse = 1},
      {.name = "mask [B,1,1,Lk]", .B = 3, .Hq = 2, .Hkv = 1, .Lq = 37, .Lk = 300, .D = 8, .Dv = 8, .mask = MASK_KEYS, .lse = 1, .weights = 1},
      {.name = "bool [B,1,1,Lk]", .B = 3, .Hq = 2, .Hkv = 1, .Lq = 37, .Lk = 300, .D = 8, .Dv = 8, .bmask = MASK_KEYS, .lse = 1, .weights = 1},
      {.name = "mask+bool", .B = 2, .Hq = 4, .Hkv = 2, .Lq = 70, .Lk = 130, .D = 8, .Dv = 8,
       .mask = MASK_1H, .bmask = MASK_B1, .lse = 1, .weights = 1},
      {.name = "everything", .B = 4, .Hq = 6, .Hkv = 2, .Lq = 70, .Lk = 300, .D = 16, .Dv = 12,
       .mask = MASK_BH, .bmask = MASK_11, .causal = 1, .align = BR, .window = 1, .wl = 90, .wr = 5,
       .kvl = 1, .alibi = 1, .sinks = 1, .softcap = 2.5f, .lse = 1, .weights = 1, .scale = 0.2f,
       .pad_aux = 1},
      {.name = "everything blhd", .B = 3, .Hq = 4, .Hkv = 4, .Lq = 40, .Lk = 280, .D = 8, .Dv = 16,
       .lay_in = LAY_BLHD, .lay_out = LAY_BLHD, .mask = MASK_2D, .bmask = MASK_BH, .causal = 1,
       .window = 1, .wl = 300, .wr = 0, .kvl = 1, .alibi = 1, .sinks = 1, .softcap = 4, .lse = 1,
       .weights = 1},
  };
  RUN_CASES(cases);
}

/* Large logits, soft-cap, ALiBi, sinks, custom scales. */
static void numerics(void **state) {
  (void)state;
  static const sdpa_case cases[] = {
      /* scale 1/8 is exact and q.k sums of 16*ints are exact: logits ~1e4
       * with no float rounding, so the reference is reachable. */
      {.name = "logits 1e4", .B = 1, .Hq = 2, .Hkv = 1, .Lq = 70, .Lk = 300, .D = 64, .Dv = 16,
       .big = 1, .scale = 0.125f, .lse = 1, .weights = 1},
      {.name = "logits 1e4 causal", .B = 1, .Hq = 2, .Hkv = 2, .Lq = 300, .Lk = 300, .D = 64, .Dv = 8,
       .big = 1, .scale = 0.125f, .causal = 1, .lse = 1},
      {.name = "logits 1e4 masks sinks", .B = 2, .Hq = 3, .Hkv = 1, .Lq = 37, .Lk = 270, .D = 64, .Dv = 8,
       .big = 1, .scale = 0.125f, .mask = MASK_B1, .bmask = MASK_1H, .sinks = 1, .lse = 1},
      {.name = "softcap", .B = 1, .Hq = 2, .Hkv = 2, .Lq = 67, .Lk = 300, .D = 16, .Dv = 16,
       .softcap = 30, .qk_mul = 6, .lse = 1, .weights = 1},
      {.name = "softcap small", .B = 1, .Hq = 2, .Hkv = 1, .Lq = 67, .Lk = 130, .D = 16, .Dv = 16,
       .softcap = 0.5f, .qk_mul = 3, .causal = 1, .lse = 1},
      {.name = "softcap logits 1e4", .B = 1, .Hq = 1, .Hkv = 1, .Lq = 20, .Lk = 300, .D = 64, .Dv = 8,
       .big = 1, .scale = 0.125f, .softcap = 50, .lse = 1},
      {.name = "alibi 8 heads", .B = 1, .Hq = 8, .Hkv = 2, .Lq = 50, .Lk = 300, .D = 16, .Dv = 16,
       .alibi = 1, .causal = 1, .align = BR, .lse = 1, .weights = 1},
      {.name = "alibi 6 heads noncausal", .B = 2, .Hq = 6, .Hkv = 6, .Lq = 40, .Lk = 100, .D = 8, .Dv = 8,
       .alibi = 1, .lse = 1},
      {.name = "alibi br Lq>Lk", .B = 2, .Hq = 3, .Hkv = 3, .Lq = 90, .Lk = 40, .D = 8, .Dv = 8,
       .alibi = 1, .align = BR, .lse = 1, .weights = 1},
      {.name = "alibi tl Lq>Lk", .B = 1, .Hq = 5, .Hkv = 1, .Lq = 100, .Lk = 30, .D = 8, .Dv = 8,
       .alibi = 1, .causal = 1, .lse = 1},
      {.name = "sinks", .B = 2, .Hq = 6, .Hkv = 3, .Lq = 67, .Lk = 130, .D = 16, .Dv = 16,
       .sinks = 1, .lse = 1, .weights = 1},
      {.name = "sinks causal br", .B = 1, .Hq = 3, .Hkv = 3, .Lq = 40, .Lk = 300, .D = 16, .Dv = 16,
       .sinks = 1, .causal = 1, .align = BR, .lse = 1},
      {.name = "scale 0.3", .B = 1, .Hq = 2, .Hkv = 2, .Lq = 30, .Lk = 80, .D = 16, .Dv = 16,
       .scale = 0.3f, .lse = 1, .weights = 1},
      {.name = "scale -0.5", .B = 1, .Hq = 2, .Hkv = 2, .Lq = 30, .Lk = 80, .D = 16, .Dv = 16,
       .scale = -0.5f, .lse = 1},
      {.name = "scale 4 large q", .B = 1, .Hq = 1, .Hkv = 1, .Lq = 30, .Lk = 300, .D = 16, .Dv = 16,
       .scale = 4, .qk_mul = 2, .lse = 1},
  };
  RUN_CASES(cases);
}

/* A long sequence (rows sampled for the reference), and the split-keys path:
 * few work items with Lk >= 2048 on 2 threads. sdpa.c splits when the work
 * B*Hq*Lq*Lk*(D+Dv) reaches 2^21 (two threads' worth) and there are fewer
 * than 4 items (B * Hkv * query blocks); the cases below cross it. */
static void long_and_split(void **state) {
  (void)state;
  static const sdpa_case cases[] = {
      {.name = "4096 causal", .B = 1, .Hq = 1, .Hkv = 1, .Lq = 4096, .Lk = 4096, .D = 64, .Dv = 64,
       .causal = 1, .lse = 1, .threads = 2, .row_step = 13},
      {.name = "4096", .B = 1, .Hq = 1, .Hkv = 1, .Lq = 4096, .Lk = 4096, .D = 64, .Dv = 64,
       .lse = 1, .threads = 2, .row_step = 29},
      {.name = "4096 window alibi", .B = 1, .Hq = 2, .Hkv = 1, .Lq = 4096, .Lk = 4096, .D = 64, .Dv = 64,
       .window = 1, .wl = 300, .wr = 300, .alibi = 1, .lse = 1, .threads = 2, .row_step = 31},
      {.name = "split Lq1 (1 thread: below 2^21)", .B = 1, .Hq = 1, .Hkv = 1, .Lq = 1, .Lk = 5000, .D = 64, .Dv = 64, .lse = 1},
      {.name = "split Lq2", .B = 1, .Hq = 1, .Hkv = 1, .Lq = 2, .Lk = 5000, .D = 64, .Dv = 64, .lse = 1},
      {.name = "split Lq3", .B = 1, .Hq = 1, .Hkv = 1, .Lq = 3, .Lk = 5000, .D = 64, .Dv = 64, .lse = 1},
      {.name = "split Lq4", .B = 1, .Hq = 1, .Hkv = 1, .Lq = 4, .Lk = 5000, .D = 64, .Dv = 64, .lse = 1, .weights = 1},
      {.name = "split Lq5", .B = 1, .Hq = 1, .Hkv = 1, .Lq = 5, .Lk = 5000, .D = 64, .Dv = 64, .lse = 1},
      {.name = "split Lq1 D256", .B = 1, .Hq = 1, .Hkv = 1, .Lq = 1, .Lk = 5000, .D = 256, .Dv = 256, .lse = 1, .weights = 1},
      {.name = "split mqa Lq1", .B = 1, .Hq = 4, .Hkv = 1, .Lq = 1, .Lk = 5000, .D = 64, .Dv = 64, .lse = 1},
      {.name = "split B2", .B = 2, .Hq = 2, .Hkv = 1, .Lq = 3, .Lk = 4100, .D = 64, .Dv = 64, .lse = 1},
      {.name = "split causal br sinks", .B = 1, .Hq = 2, .Hkv = 1, .Lq = 5, .Lk = 5000, .D = 64, .Dv = 64,
       .causal = 1, .align = BR, .sinks = 1, .alibi = 1, .lse = 1, .weights = 1},
      {.name = "split kv_len", .B = 1, .Hq = 2, .Hkv = 1, .Lq = 5, .Lk = 5000, .D = 64, .Dv = 64,
       .kvl = 1, .lse = 1, .weights = 1},
      {.name = "split window one chunk", .B = 1, .Hq = 4, .Hkv = 1, .Lq = 3, .Lk = 5000, .D = 64, .Dv = 64,
       .window = 1, .wl = 200, .wr = 0, .align = BR, .sinks = 1, .lse = 1, .weights = 1},
      {.name = "split causal tl mostly empty", .B = 1, .Hq = 4, .Hkv = 1, .Lq = 3, .Lk = 5000, .D = 64, .Dv = 64,
       .causal = 1, .lse = 1},
      {.name = "split masks", .B = 1, .Hq = 2, .Hkv = 1, .Lq = 5, .Lk = 4500, .D = 64, .Dv = 64,
       .mask = MASK_1H, .bmask = MASK_11, .softcap = 3, .lse = 1, .weights = 1, .pad_aux = 1},
      {.name = "split overlapping rows", .B = 1, .Hq = 4, .Hkv = 1, .Lq = 2, .Lk = 5000, .D = 64, .Dv = 64,
       .lay_in = LAY_OVERLAP, .lse = 1},
      {.name = "split blhd", .B = 1, .Hq = 4, .Hkv = 2, .Lq = 2, .Lk = 5000, .D = 64, .Dv = 32,
       .lay_in = LAY_BLHD, .lay_out = LAY_BLHD, .lse = 1},
      {.name = "split logits 1e4", .B = 1, .Hq = 2, .Hkv = 1, .Lq = 4, .Lk = 5000, .D = 64, .Dv = 64,
       .big = 1, .scale = 0.125f, .lse = 1},
  };
  RUN_CASES(cases);
}

/* More threads than cores or items: the split path with 3 and 4 workers
 * (more chunks), and the item loop with idle workers. */
static void more_threads(void **state) {
  (void)state;
  static const sdpa_case cases[] = {
      {.name = "4 threads split", .B = 1, .Hq = 2, .Hkv = 1, .Lq = 5, .Lk = 5000, .D = 64, .Dv = 64,
       .causal = 1, .align = BR, .sinks = 1, .lse = 1, .weights = 1},
      {.name = "4 threads split short chunks", .B = 1, .Hq = 4, .Hkv = 1, .Lq = 2, .Lk = 2100, .D = 64, .Dv = 64,
       .lse = 1},
      {.name = "4 threads items", .B = 3, .Hq = 4, .Hkv = 2, .Lq = 130, .Lk = 300, .D = 16, .Dv = 16,
       .causal = 1, .kvl = 1, .lse = 1, .weights = 1},
  };
  run_cases_threads(cases, sizeof cases / sizeof cases[0], 4);
}

/* The workspace allocation failing: ATTN_ERR_NO_MEMORY, nothing written,
 * and the context still works afterwards. */
static void no_memory(void **state) {
  (void)state;
  tu_counter cnt = {0, 0, 0};
  attn_ctx_options o;
  attn_ctx_options_init(&o);
  o.num_threads = 2, o.alloc = tu_alloc, o.free = tu_free, o.alloc_user = &cnt;
  attn_ctx *ctx = NULL;
  assert_ok(attn_ctx_create(&ctx, &o));
  tu_rng r = {37};
  view4 q, k, v, out;
  view_init(&q, 1, 2, 70, 16, LAY_BHLD);
  view_init(&k, 1, 1, 300, 16, LAY_BHLD);
  view_init(&v, 1, 1, 300, 8, LAY_BHLD);
  view_init(&out, 1, 2, 70, 8, LAY_BHLD);
  view_random(&q, &r, 1, 0);
  view_random(&k, &r, 1, 0);
  view_random(&v, &r, 1, 0);
  attn_tensor *tq = view_wrap(ctx, &q), *tk = view_wrap(ctx, &k), *tv = view_wrap(ctx, &v),
              *to = view_wrap(ctx, &out);
  view_fill(&out, SENTINEL);
  cnt.fail_at = cnt.allocs + 1;
  assert_status(attn_sdpa(ctx, tq, tk, tv, to, NULL), ATTN_ERR_NO_MEMORY);
  assert_error_mentions(ctx, "attn_sdpa");
  for (size_t i = 0; i < out.n; i++)
    if (out.data[i] != SENTINEL)
      fail_msg("out[%zu] written although the workspace allocation failed", i);
  assert_ok(attn_sdpa(ctx, tq, tk, tv, to, NULL));
  assert_true(out.data[0] != SENTINEL);
  view_free(&q), view_free(&k), view_free(&v), view_free(&out);
  attn_ctx_destroy(ctx);
  assert_int_equal(cnt.allocs, cnt.frees);
}

/* ---------------------------------------------------------------------- */
/* Properties. Outputs are weighted means of v in [-1, 1], so mag <= 1 and
 * the absolute bound 1e-5 below is at least as strict as the norm above. */

#define PROP_ATOL 1e-5

/* max |a - b| over two [B, H, L, Dv] views; NaN if either side has one. */
static double view_max_diff(const view4 *a, const view4 *b) {
  double worst = 0;
  for (int64_t i0 = 0; i0 < a->dims[0]; i0++)
    for (int64_t i1 = 0; i1 < a->dims[1]; i1++)
      for (int64_t i2 = 0; i2 < a->dims[2]; i2++)
        for (int64_t i3 = 0; i3 < a->dims[3]; i3++) {
          double x = a->data[view_off(a, i0, i1, i2, i3)];
          double y = b->data[view_off(b, i0, i1, i2, i3)];
          double e = fabs(x - y);
          if (isnan(e) && !(isnan(x) && isnan(y)))
            return NAN;
          if (e > worst)
            worst = e;
        }
  return worst;
}

static void sdpa_ok(attn_ctx *ctx, view4 *q, view4 *k, view4 *v, view4 *out,
                    const attn_sdpa_params *p) {
  view_fill(out, SENTINEL);
  attn_status st =
      attn_sdpa(ctx, view_wrap(ctx, q), view_wrap(ctx, k), view_wrap(ctx, v), view_wrap(ctx, out), p);
  if (st != ATTN_OK)
    fail_msg("attn_sdpa: %s: %s", attn_status_string(st), attn_ctx_last_error(ctx));
}

/* Query head h reads kv head h / (Hq/Hkv): the same as plain multi-head
 * attention over K and V with each kv head repeated Hq/Hkv times. */
static void prop_gqa_equals_repeated_mha(void **state) {
  (void)state;
  const int64_t B = 2, Hq = 8, Hkv = 2, Lq = 70, Lk = 300, D = 16, Dv = 24, G = Hq / Hkv;
  for (int threads = 1; threads <= 2; threads++) {
    tu_rng r = {7};
    attn_ctx *ctx = tu_ctx(threads);
    view4 q, k, v, kr, vr, o1, o2;
    view_init(&q, B, Hq, Lq, D, LAY_BHLD);
    view_init(&k, B, Hkv, Lk, D, LAY_BHLD);
    view_init(&v, B, Hkv, Lk, Dv, LAY_BHLD);
    view_init(&kr, B, Hq, Lk, D, LAY_BHLD);
    view_init(&vr, B, Hq, Lk, Dv, LAY_BHLD);
    view_init(&o1, B, Hq, Lq, Dv, LAY_BHLD);
    view_init(&o2, B, Hq, Lq, Dv, LAY_BHLD);
    view_random(&q, &r, 1, 0);
    view_random(&k, &r, 1, 0);
    view_random(&v, &r, 1, 0);
    for (int64_t b = 0; b < B; b++)
      for (int64_t h = 0; h < Hq; h++) {
        memcpy(kr.data + view_off(&kr, b, h, 0, 0), k.data + view_off(&k, b, h / G, 0, 0),
               (size_t)(Lk * D) * sizeof(float));
        memcpy(vr.data + view_off(&vr, b, h, 0, 0), v.data + view_off(&v, b, h / G, 0, 0),
               (size_t)(Lk * Dv) * sizeof(float));
      }
    float slopes[8], sinks[8];
    for (int h = 0; h < 8; h++)
      slopes[h] = 0.05f * (float)(h + 1), sinks[h] = (float)h * 0.3f - 1;
    attn_sdpa_params p;
    attn_sdpa_params_init(&p);
    p.causal = 1, p.align = ATTN_ALIGN_BOTTOM_RIGHT, p.alibi_slopes = slopes, p.sinks = sinks;
    sdpa_ok(ctx, &q, &k, &v, &o1, &p);
    sdpa_ok(ctx, &q, &kr, &vr, &o2, &p);
    double e = view_max_diff(&o1, &o2);
    if (!(e <= PROP_ATOL))
      fail_msg("threads %d: GQA differs from repeated MHA by %g", threads, e);
    view_free(&q), view_free(&k), view_free(&v), view_free(&kr), view_free(&vr);
    view_free(&o1), view_free(&o2);
    attn_ctx_destroy(ctx);
  }
}

/* Attention over keys [0, s) and [s, Lk) separately, merged through their
 * log-sum-exps in double, equals attention over all keys (lse included).
 * A boolean mask, sliced with the keys, makes rows empty in one half, the
 * other, or both. */
static void prop_lse_merge_of_halves(void **state) {
  (void)state;
  const int64_t B = 1, Hq = 4, Hkv = 2, Lq = 67, Lk = 300, D = 16, Dv = 8, split = 137;
  for (int threads = 1; threads <= 2; threads++) {
    tu_rng r = {11};
    attn_ctx *ctx = tu_ctx(threads);
    view4 q, k, v, o, o1, o2;
    view_init(&q, B, Hq, Lq, D, LAY_BHLD);
    view_init(&k, B, Hkv, Lk, D, LAY_BHLD);
    view_init(&v, B, Hkv, Lk, Dv, LAY_BHLD);
    view_init(&o, B, Hq, Lq, Dv, LAY_BHLD);
    view_init(&o1, B, Hq, Lq, Dv, LAY_BHLD);
    view_init(&o2, B, Hq, Lq, Dv, LAY_BHLD);
    view_random(&q, &r, 2, 0);
    view_random(&k, &r, 2, 0);
    view_random(&v, &r, 1, 0);
    uint8_t *bm = malloc((size_t)(Lq * Lk));
    for (int64_t i = 0; i < Lq; i++)
      for (int64_t j = 0; j < Lk; j++)
        bm[i * Lk + j] = i % 9 == 1   ? j < split  /* only the first half */
                         : i % 9 == 2 ? j >= split /* only the second */
                         : i % 9 == 3 ? 0          /* neither */
                                      : tu_uniform(&r, 0, 1) < 0.8f;
    float lse[4 * 67], lse1[4 * 67], lse2[4 * 67];
    int64_t ldims[3] = {B, Hq, Lq};
    attn_sdpa_params p;
    attn_sdpa_params_init(&p);
    p.softcap = 5;
    /* The whole. */
    int64_t mdims[2] = {Lq, Lk}, mstr[2] = {Lk, 1}, hdims[2] = {Lq, split},
            h2dims[2] = {Lq, Lk - split};
    attn_tensor *m_all, *m_1, *m_2;
    assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_U8, 2, mdims, mstr, bm, (size_t)(Lq * Lk), &m_all));
    assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_U8, 2, hdims, mstr, bm, (size_t)(Lq * Lk), &m_1));
    assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_U8, 2, h2dims, mstr, bm + split,
                               (size_t)(Lq * Lk - split), &m_2));
    p.bool_mask = m_all;
    p.lse = tu_wrap(ctx, lse, (size_t)(Hq * Lq), 3, ldims, NULL);
    sdpa_ok(ctx, &q, &k, &v, &o, &p);
    /* The halves: views of K and V rows [0, split) and [split, Lk). */
    view4 k1 = k, v1 = v, k2 = k, v2 = v;
    k1.dims[2] = v1.dims[2] = split;
    k2.dims[2] = v2.dims[2] = Lk - split;
    k2.data = k.data + split * D, k2.n = k.n - (size_t)(split * D);
    v2.data = v.data + split * Dv, v2.n = v.n - (size_t)(split * Dv);
    p.bool_mask = m_1;
    p.lse = tu_wrap(ctx, lse1, (size_t)(Hq * Lq), 3, ldims, NULL);
    sdpa_ok(ctx, &q, &k1, &v1, &o1, &p);
    p.bool_mask = m_2;
    p.lse = tu_wrap(ctx, lse2, (size_t)(Hq * Lq), 3, ldims, NULL);
    sdpa_ok(ctx, &q, &k2, &v2, &o2, &p);
    for (int64_t h = 0; h < Hq; h++)
      for (int64_t i = 0; i < Lq; i++) {
        double a = lse1[h * Lq + i], b = lse2[h * Lq + i];
        double m = fmax(a, b);
        double lm = m == -INFINITY ? -INFINITY : m + log(exp(a - m) + exp(b - m));
        if (!tu_close(lse[h * Lq + i], lm, 0, LSE_RTOL * fmax(1, fabs(lm))))
          fail_msg("threads %d: h %lld i %lld: lse %g but merged halves give %g", threads,
                   (long long)h, (long long)i, (double)lse[h * Lq + i], lm);
        for (int64_t d = 0; d < Dv; d++) {
          double want = 0;
          if (lm != -INFINITY)
            want = exp(a - lm) * o1.data[view_off(&o1, 0, h, i, d)] +
                   exp(b - lm) * o2.data[view_off(&o2, 0, h, i, d)];
          double got = o.data[view_off(&o, 0, h, i, d)];
          if (!(fabs(got - want) <= PROP_ATOL))
            fail_msg("threads %d: h %lld i %lld d %lld: out %g but merged halves give %g",
                     threads, (long long)h, (long long)i, (long long)d, got, want);
        }
      }
    free(bm);
    view_free(&q), view_free(&k), view_free(&v), view_free(&o), view_free(&o1), view_free(&o2);
    attn_ctx_destroy(ctx);
  }
}

/* Attention is a function of the set of (key, value) pairs: permuting the
 * keys and values together changes nothing. */
static void prop_key_permutation(void **state) {
  (void)state;
  const int64_t B = 2, Hq = 2, Hkv = 1, Lq = 50, Lk = 300, D = 16, Dv = 16;
  for (int threads = 1; threads <= 2; threads++) {
    tu_rng r = {13};
    attn_ctx *ctx = tu_ctx(threads);
    view4 q, k, v, kp, vp, o1, o2;
    view_init(&q, B, Hq, Lq, D, LAY_BHLD);
    view_init(&k, B, Hkv, Lk, D, LAY_BHLD);
    view_init(&v, B, Hkv, Lk, Dv, LAY_BHLD);
    view_init(&kp, B, Hkv, Lk, D, LAY_BHLD);
    view_init(&vp, B, Hkv, Lk, Dv, LAY_BHLD);
    view_init(&o1, B, Hq, Lq, Dv, LAY_BHLD);
    view_init(&o2, B, Hq, Lq, Dv, LAY_BHLD);
    view_random(&q, &r, 2, 0);
    view_random(&k, &r, 2, 0);
    view_random(&v, &r, 1, 0);
    int64_t perm[300];
    for (int64_t j = 0; j < Lk; j++)
      perm[j] = j;
    for (int64_t j = Lk - 1; j > 0; j--) {
      int64_t x = (int64_t)(tu_next(&r) % (uint64_t)(j + 1)), t = perm[j];
      perm[j] = perm[x], perm[x] = t;
    }
    for (int64_t b = 0; b < B; b++)
      for (int64_t j = 0; j < Lk; j++) {
        memcpy(kp.data + view_off(&kp, b, 0, j, 0), k.data + view_off(&k, b, 0, perm[j], 0),
               (size_t)D * sizeof(float));
        memcpy(vp.data + view_off(&vp, b, 0, j, 0), v.data + view_off(&v, b, 0, perm[j], 0),
               (size_t)Dv * sizeof(float));
      }
    float sinks[2] = {0.5f, -1};
    attn_sdpa_params p;
    attn_sdpa_params_init(&p);
    p.softcap = 3, p.sinks = sinks;
    sdpa_ok(ctx, &q, &k, &v, &o1, &p);
    sdpa_ok(ctx, &q, &kp, &vp, &o2, &p);
    double e = view_max_diff(&o1, &o2);
    if (!(e <= PROP_ATOL))
      fail_msg("threads %d: permuting keys and values changed out by %g", threads, e);
    view_free(&q), view_free(&k), view_free(&v), view_free(&kp), view_free(&vp);
    view_free(&o1), view_free(&o2);
    attn_ctx_destroy(ctx);
  }
}

/* Decoding: the last query alone, bottom-right causal against the full key
 * set, equals the last row of the full causal result (ALiBi and a window
 * included, which both follow the aligned diagonal). */
static void prop_decode_equals_last_row(void **state) {
  (void)state;
  const int64_t B = 2, Hq = 4, Hkv = 2, L = 300, D = 32, Dv = 16;
  for (int threads = 1; threads <= 2; threads++) {
    tu_rng r = {17};
    attn_ctx *ctx = tu_ctx(threads);
    view4 q, q1, k, v, o, o1;
    view_init(&q, B, Hq, L, D, LAY_BHLD);
    view_init(&q1, B, Hq, 1, D, LAY_BHLD);
    view_init(&k, B, Hkv, L, D, LAY_BHLD);
    view_init(&v, B, Hkv, L, Dv, LAY_BHLD);
    view_init(&o, B, Hq, L, Dv, LAY_BHLD);
    view_init(&o1, B, Hq, 1, Dv, LAY_BHLD);
    view_random(&q, &r, 2, 0);
    view_random(&k, &r, 2, 0);
    view_random(&v, &r, 1, 0);
    for (int64_t b = 0; b < B; b++)
      for (int64_t h = 0; h < Hq; h++)
        memcpy(q1.data + view_off(&q1, b, h, 0, 0), q.data + view_off(&q, b, h, L - 1, 0),
               (size_t)D * sizeof(float));
    float slopes[4] = {0.25f, 0.0625f, 0.015625f, 0.00390625f};
    float lse[2 * 4 * 300], lse1[2 * 4];
    int64_t ldims[3] = {B, Hq, L}, l1dims[3] = {B, Hq, 1};
    attn_sdpa_params p;
    attn_sdpa_params_init(&p);
    p.causal = 1, p.alibi_slopes = slopes, p.window = 1, p.window_left = 200;
    p.lse = tu_wrap(ctx, lse, (size_t)(B * Hq * L), 3, ldims, NULL);
    sdpa_ok(ctx, &q, &k, &v, &o, &p);
    p.align = ATTN_ALIGN_BOTTOM_RIGHT;
    p.lse = tu_wrap(ctx, lse1, (size_t)(B * Hq), 3, l1dims, NULL);
    sdpa_ok(ctx, &q1, &k, &v, &o1, &p);
    for (int64_t b = 0; b < B; b++)
      for (int64_t h = 0; h < Hq; h++) {
        double la = lse[(b * Hq + h) * L + L - 1], lb = lse1[b * Hq + h];
        if (!(fabs(la - lb) <= LSE_RTOL * fmax(1, fabs(la))))
          fail_msg("threads %d: lse of the last row %g, of the decode step %g", threads, la, lb);
        for (int64_t d = 0; d < Dv; d++) {
          double x = o.data[view_off(&o, b, h, L - 1, d)], y = o1.data[view_off(&o1, b, h, 0, d)];
          if (!(fabs(x - y) <= PROP_ATOL))
            fail_msg("threads %d: b %lld h %lld d %lld: last row %g, decode step %g", threads,
                     (long long)b, (long long)h, (long long)d, x, y);
        }
      }
    view_free(&q), view_free(&q1), view_free(&k), view_free(&v), view_free(&o), view_free(&o1);
    attn_ctx_destroy(ctx);
  }
}

/* Each weights row sums to 1, to 0 when nothing is visible, and with a sink
 * to 1 - exp(sink - lse) (the sink's own share). */
static void prop_weights_rows_sum(void **state) {
  (void)state;
  const int64_t B = 4, Hq = 3, Hkv = 1, Lq = 40, Lk = 280, D = 8, Dv = 8;
  for (int with_sinks = 0; with_sinks <= 1; with_sinks++)
    for (int threads = 1; threads <= 2; threads++) {
      tu_rng r = {19};
      attn_ctx *ctx = tu_ctx(threads);
      view4 q, k, v, o;
      view_init(&q, B, Hq, Lq, D, LAY_BHLD);
      view_init(&k, B, Hkv, Lk, D, LAY_BHLD);
      view_init(&v, B, Hkv, Lk, Dv, LAY_BHLD);
      view_init(&o, B, Hq, Lq, Dv, LAY_BHLD);
      view_random(&q, &r, 2, 0);
      view_random(&k, &r, 2, 0);
      view_random(&v, &r, 1, 0);
      mask_buf bm;
      mask_make(&bm, MASK_B1, 1, B, Hq, Lq, Lk, &r, 0);
      int64_t kv_lens[4] = {280, 0, 1, 100};
      float sinks[3] = {-2, 0.5f, 3};
      size_t rows = (size_t)(B * Hq * Lq);
      float *w = malloc(rows * (size_t)Lk * sizeof(float)), *lse = malloc(rows * sizeof(float));
      int64_t wdims[4] = {B, Hq, Lq, Lk}, ldims[3] = {B, Hq, Lq};
      attn_sdpa_params p;
      attn_sdpa_params_init(&p);
      p.bool_mask = mask_wrap(ctx, &bm, 1);
      p.kv_lens = kv_lens, p.causal = 1, p.align = ATTN_ALIGN_BOTTOM_RIGHT;
      p.sinks = with_sinks ? sinks : NULL;
      p.weights = tu_wrap(ctx, w, rows * (size_t)Lk, 4, wdims, NULL);
      p.lse = tu_wrap(ctx, lse, rows, 3, ldims, NULL);
      sdpa_ok(ctx, &q, &k, &v, &o, &p);
      for (size_t row = 0; row < rows; row++) {
        int64_t h = (int64_t)(row / (size_t)Lq) % Hq;
        double sum = 0;
        int any = 0;
        for (int64_t j = 0; j < Lk; j++) {
          sum += w[row * (size_t)Lk + (size_t)j];
          any |= w[row * (size_t)Lk + (size_t)j] != 0;
        }
        double want = lse[row] == -INFINITY ? 0 : 1;
        if (with_sinks)
          want = 1 - exp((double)sinks[h] - lse[row]);
        if (!(fabs(sum - want) <= 1e-5))
          fail_msg("threads %d sinks %d: row %zu: weights sum to %.9g, want %.9g (lse %g)",
                   threads, with_sinks, row, sum, want, (double)lse[row]);
        if (!with_sinks && lse[row] == -INFINITY && any)
          fail_msg("threads %d: row %zu is empty but has nonzero weights", threads, row);
      }
      free(w), free(lse), free(bm.data);
      view_free(&q), view_free(&k), view_free(&v), view_free(&o);
      attn_ctx_destroy(ctx);
    }
}

/* [B, L, H, D] memory through strides gives the result of the same values
 * in [B, H, L, D] memory. */
static void prop_layouts_agree(void **state) {
  (void)state;
  const int64_t B = 2, Hq = 4, Hkv = 2, Lq = 67, Lk = 257, D = 16, Dv = 8;
  for (int threads = 1; threads <= 2; threads++) {
    tu_rng r = {23};
    attn_ctx *ctx = tu_ctx(threads);
    view4 t[2][4]; /* [layout][q, k, v, out] */
    for (int lay = 0; lay < 2; lay++) {
      view_init(&t[lay][0], B, Hq, Lq, D, lay);
      view_init(&t[lay][1], B, Hkv, Lk, D, lay);
      view_init(&t[lay][2], B, Hkv, Lk, Dv, lay);
      view_init(&t[lay][3], B, Hq, Lq, Dv, lay);
    }
    for (int a = 0; a < 3; a++) {
      view_random(&t[0][a], &r, 1, 0);
      for (int64_t i0 = 0; i0 < t[0][a].dims[0]; i0++)
        for (int64_t i1 = 0; i1 < t[0][a].dims[1]; i1++)
          for (int64_t i2 = 0; i2 < t[0][a].dims[2]; i2++)
            for (int64_t i3 = 0; i3 < t[0][a].dims[3]; i3++)
              t[1][a].data[view_off(&t[1][a], i0, i1, i2, i3)] =
                  t[0][a].data[view_off(&t[0][a], i0, i1, i2, i3)];
    }
    attn_sdpa_params p;
    attn_sdpa_params_init(&p);
    p.causal = 1;
    for (int lay = 0; lay < 2; lay++)
      sdpa_ok(ctx, &t[lay][0], &t[lay][1], &t[lay][2], &t[lay][3], &p);
    double e = view_max_diff(&t[0][3], &t[1][3]);
    if (!(e <= 1e-6))
      fail_msg("threads %d: [B,L,H,D] and [B,H,L,D] differ by %g", threads, e);
    for (int lay = 0; lay < 2; lay++)
      for (int a = 0; a < 4; a++)
        view_free(&t[lay][a]);
    attn_ctx_destroy(ctx);
  }
}

/* A NaN in q, k or v reaches exactly the rows that see it (the reference
 * decides which): a key hidden by causality, a window, kv_lens, the boolean
 * mask or a -inf mask entry must not leak into other rows. */
static void prop_nan_reaches_only_its_rows(void **state) {
  (void)state;
  static const sdpa_case cases[] = {
      {.name = "nan q row", .B = 1, .Hq = 2, .Hkv = 1, .Lq = 100, .Lk = 100, .D = 16, .Dv = 8, .nan_q = 6, .lse = 1, .weights = 1},
      {.name = "nan k causal", .B = 1, .Hq = 2, .Hkv = 1, .Lq = 100, .Lk = 100, .D = 16, .Dv = 8, .causal = 1, .nan_k = 38, .lse = 1, .weights = 1},
      {.name = "nan k past kv_len", .B = 1, .Hq = 2, .Hkv = 1, .Lq = 50, .Lk = 100, .D = 16, .Dv = 8, .kvl = 1, .nan_k = 81, .lse = 1},
      {.name = "nan v past kv_len", .B = 1, .Hq = 2, .Hkv = 1, .Lq = 50, .Lk = 100, .D = 16, .Dv = 8, .kvl = 1, .nan_v = 81, .lse = 1},
      {.name = "nan k window", .B = 1, .Hq = 1, .Hkv = 1, .Lq = 100, .Lk = 100, .D = 16, .Dv = 8, .window = 1, .wl = 3, .wr = 3, .nan_k = 38, .lse = 1},
      {.name = "nan k bool mask", .B = 1, .Hq = 1, .Hkv = 1, .Lq = 50, .Lk = 70, .D = 16, .Dv = 8, .bmask = MASK_11, .nan_k = 38, .lse = 1},
      {.name = "nan k split br", .B = 1, .Hq = 2, .Hkv = 1, .Lq = 4, .Lk = 5000, .D = 64, .Dv = 64, .causal = 1, .align = BR, .nan_k = 4998, .lse = 1},
  };
  RUN_CASES(cases);
}

/* ---------------------------------------------------------------------- */
/* Regressions: bugs of src/sdpa.c this suite found, fixed since. */

/* Was a bug (attend_chunk): a NaN in v reaches rows that do not see its key.
 * Masked and out-of-range columns of the probability tile are 0, and
 * O += P V multiplies them with the whole V tile in sgemm: 0 * NaN = NaN.
 * Smallest case: causal, Lq = Lk = 2, v[1] = NaN: row 0, which sees key 0
 * only, comes out NaN instead of v[0]. Every way a row sees part of a tile
 * leaks: causal, window, boolean mask, -inf mask, the split path. */
static void nan_v_stays_in_rows_that_see_it(void **state) {
  (void)state;
  static const sdpa_case cases[] = {
      {.name = "nan v causal", .B = 1, .Hq = 2, .Hkv = 1, .Lq = 100, .Lk = 100, .D = 16, .Dv = 8, .causal = 1, .nan_v = 38, .lse = 1},
      {.name = "nan v causal 300", .B = 1, .Hq = 1, .Hkv = 1, .Lq = 300, .Lk = 300, .D = 16, .Dv = 8, .causal = 1, .nan_v = 281},
      {.name = "nan v window", .B = 1, .Hq = 1, .Hkv = 1, .Lq = 100, .Lk = 100, .D = 16, .Dv = 8, .window = 1, .wl = 3, .wr = 3, .nan_v = 38, .lse = 1},
      {.name = "nan v bool mask", .B = 1, .Hq = 1, .Hkv = 1, .Lq = 50, .Lk = 70, .D = 16, .Dv = 8, .bmask = MASK_11, .nan_v = 38, .lse = 1},
      {.name = "nan v -inf mask", .B = 1, .Hq = 1, .Hkv = 1, .Lq = 50, .Lk = 70, .D = 16, .Dv = 8, .mask = MASK_11, .nan_v = 38, .lse = 1},
      {.name = "nan v split br", .B = 1, .Hq = 2, .Hkv = 1, .Lq = 4, .Lk = 5000, .D = 64, .Dv = 64, .causal = 1, .align = BR, .nan_v = 4998, .lse = 1},
  };
  RUN_CASES(cases);
}

/* Was a bug (adjust_logits): a key hidden by a -inf entry of the additive mask
 * still poisons the row when its k holds a NaN: the logit is NaN + -inf =
 * NaN, so the row turns NaN, even a row whose keys are all masked (which
 * must give zeros). attn.h: "Key j is visible to row i unless ... mask is
 * -inf" (the boolean mask gets this right). */
static void nan_k_under_inf_mask_is_hidden(void **state) {
  (void)state;
  static const sdpa_case cases[] = {
      {.name = "nan k -inf mask", .B = 1, .Hq = 1, .Hkv = 1, .Lq = 50, .Lk = 70, .D = 16, .Dv = 8, .mask = MASK_11, .nan_k = 38, .lse = 1},
  };
  RUN_CASES(cases);
}

/* Was a bug (finish_item): weights are computed as exp(s - lse) with lse a float,
 * so they carry a relative error of |lse| * 2^-24: near 1e4 a row split
 * between near-tied keys gets weights off by ~1e-4. exp(s - m) / l keeps
 * them to float precision, as out already is. */
static void weights_exact_at_large_logits(void **state) {
  (void)state;
  /* Logits 10000 and 10000.5 (D = 1, scale 1, all exact in float). */
  attn_ctx *ctx = tu_ctx(1);
  float q[1] = {1}, k[2] = {10000.0f, 10000.5f}, v[2] = {0, 1}, out[1], lse[1], w[2];
  int64_t qd[4] = {1, 1, 1, 1}, kd[4] = {1, 1, 2, 1}, ld[3] = {1, 1, 1}, wd[4] = {1, 1, 1, 2};
  attn_sdpa_params p;
  attn_sdpa_params_init(&p);
  p.scale = 1;
  p.lse = tu_wrap(ctx, lse, 1, 3, ld, NULL);
  p.weights = tu_wrap(ctx, w, 2, 4, wd, NULL);
  assert_ok(attn_sdpa(ctx, tu_wrap(ctx, q, 1, 4, qd, NULL), tu_wrap(ctx, k, 2, 4, kd, NULL),
                      tu_wrap(ctx, v, 2, 4, kd, NULL), tu_wrap(ctx, out, 1, 4, qd, NULL), &p));
  attn_ctx_destroy(ctx);
  double w1 = 1 / (1 + exp(-0.5)); /* 0.6224593 */
  assert_close(out[0], w1, 1e-6, 0);
  assert_close(w[0], 1 - w1, 1e-6, 0); /* got 0.377708405 for 0.377540669 */
  assert_close(w[1], w1, 1e-6, 0);     /* got 0.622735858 for 0.622459331 */
  /* A random version: integer logits ~1e4, quarter-step mask, near ties. */
  static const sdpa_case cases[] = {
      {.name = "logits 1e4 masks sinks weights", .B = 2, .Hq = 3, .Hkv = 1, .Lq = 37, .Lk = 270, .D = 64, .Dv = 8,
       .big = 1, .scale = 0.125f, .mask = MASK_B1, .bmask = MASK_1H, .sinks = 1, .lse = 1, .weights = 1},
  };
  RUN_CASES(cases);
}

/* ---------------------------------------------------------------------- */
/* Packed variable-length batches. */

typedef struct {
  const char *name;
  int32_t batch;
  int64_t lq[8], lk[8];
  int64_t Hq, Hkv, D, Dv;
  int causal, align, window;
  int64_t wl, wr;
  int alibi, sinks, lse;
  int pad; /* token rows (and lse rows) padded: strided packed tensors */
  int use_qoff;
  int64_t qoff[8]; /* q_offsets per sequence, when use_qoff */
} varlen_case;

/* Against the reference per sequence, and against attn_sdpa on each
 * sequence's [1, H, L, D] view of the packed buffers. */
static int run_varlen(const varlen_case *c, attn_ctx *const *ctxs) {
  tu_rng rng = {name_seed(c->name)};
  int64_t cq[9] = {0}, ck[9] = {0};
  for (int32_t s = 0; s < c->batch; s++)
    cq[s + 1] = cq[s] + c->lq[s], ck[s + 1] = ck[s] + c->lk[s];
  int64_t Tq = cq[c->batch], Tk = ck[c->batch], Hq = c->Hq, Hkv = c->Hkv, D = c->D, Dv = c->Dv;
  int64_t pad = c->pad ? 3 : 0;
  /* Token strides of q, k, v, out, and the row stride of lse [Hq, Tq]. */
  int64_t sq = Hq * D + pad, sk = Hkv * D + pad, sv = Hkv * Dv + pad, so = Hq * Dv + pad,
          sl = Tq + pad;
  size_t nq = (size_t)(Tq * sq + 1), nk = (size_t)(Tk * sk + 1), nv = (size_t)(Tk * sv + 1),
         no = (size_t)(Tq * so + 1), nl = (size_t)(Hq * sl + 1);
  float *q = malloc(nq * sizeof(float)), *k = malloc(nk * sizeof(float)),
        *v = malloc(nv * sizeof(float)), *out = malloc(no * sizeof(float)),
        *out_seq = malloc(no * sizeof(float)), *lse = malloc(nl * sizeof(float)),
        *lse_seq = malloc(nl * sizeof(float));
  tu_fill(&rng, q, nq, -2, 2);
  tu_fill(&rng, k, nk, -2, 2);
  tu_fill(&rng, v, nv, -1, 1);
  float slopes[16], sinks[16];
  double ds[16];
  ref_alibi_slopes(Hq, 8, ds);
  for (int64_t h = 0; h < Hq; h++)
    slopes[h] = (float)ds[h], sinks[h] = tu_uniform(&rng, -1, 2);
  int failures = 0;
  for (int threads = 1; threads <= 2; threads++) {
    checker ck_ = {c->name, threads, 0, 0, 0, 0};
    attn_ctx *ctx = ctxs[threads - 1];
    attn_sdpa_params p;
    attn_sdpa_params_init(&p);
    p.causal = c->causal, p.align = c->align, p.window = c->window;
    p.window_left = c->wl, p.window_right = c->wr;
    p.alibi_slopes = c->alibi ? slopes : NULL, p.sinks = c->sinks ? sinks : NULL;
    p.q_offsets = c->use_qoff ? c->qoff : NULL;
    int64_t qd[3] = {Tq, Hq, D}, kd[3] = {Tk, Hkv, D}, vd[3] = {Tk, Hkv, Dv},
            od[3] = {Tq, Hq, Dv}, ld[2] = {Hq, Tq};
    int64_t qst[3] = {sq, D, 1}, kst[3] = {sk, D, 1}, vst[3] = {sv, Dv, 1}, ost[3] = {so, Dv, 1},
            lst[2] = {sl, 1};
    for (size_t e = 0; e < no; e++)
      out[e] = out_seq[e] = SENTINEL;
    for (size_t e = 0; e < nl; e++)
      lse[e] = lse_seq[e] = SENTINEL;
    if (c->lse)
      p.lse = tu_wrap(ctx, lse, nl, 2, ld, lst);
    attn_status st = attn_sdpa_varlen(ctx, tu_wrap(ctx, q, nq, 3, qd, qst),
                                      tu_wrap(ctx, k, nk, 3, kd, kst),
                                      tu_wrap(ctx, v, nv, 3, vd, vst),
                                      tu_wrap(ctx, out, no, 3, od, ost), c->batch, cq, ck, &p);
    if (st != ATTN_OK) {
      print_error("  %s [threads %d]: %s: %s\n", c->name, threads, attn_status_string(st),
                  attn_ctx_last_error(ctx));
      failures++;
      continue;
    }
    /* Padding untouched. */
    for (int64_t t = 0; t < Tq; t++)
      for (int64_t x = Hq * Dv; x < so; x++)
        if (out[t * so + x] != SENTINEL)
          report(&ck_, "out padding written", -1, -1, t, x, out[t * so + x], SENTINEL, 0);
    for (int64_t h = 0; h < Hq; h++)
      for (int64_t x = c->lse ? Tq : 0; x < sl; x++)
        if (lse[h * sl + x] != SENTINEL)
          report(&ck_, "lse padding written", -1, h, x, 0, lse[h * sl + x], SENTINEL, 0);
    double *rout = malloc((size_t)Dv * sizeof(double)), *rmag = malloc((size_t)Dv * sizeof(double));
    for (int32_t s = 0; s < c->batch; s++) {
      int64_t Lq = c->lq[s], Lk = c->lk[s];
      int64_t qs[4] = {0, D, sq, 1}, ks[4] = {0, D, sk, 1}, vs[4] = {0, Dv, sv, 1},
              os[4] = {0, Dv, so, 1};
      ref_sdpa_args ra = {0};
      ra.B = 1, ra.Hq = Hq, ra.Hkv = Hkv, ra.Lq = Lq, ra.Lk = Lk, ra.D = D, ra.Dv = Dv;
      ra.q = q + cq[s] * sq, ra.k = k + ck[s] * sk, ra.v = v + ck[s] * sv;
      memcpy(ra.qs, qs, sizeof qs), memcpy(ra.ks, ks, sizeof ks), memcpy(ra.vs, vs, sizeof vs);
      ra.causal = c->causal, ra.bottom_right = c->align == ATTN_ALIGN_BOTTOM_RIGHT;
      ra.window = c->window, ra.window_left = c->wl, ra.window_right = c->wr;
      ra.alibi_slopes = p.alibi_slopes, ra.sinks = p.sinks;
      ra.q_offsets = c->use_qoff ? &c->qoff[s] : NULL;
      for (int64_t h = 0; h < Hq; h++)
        for (int64_t i = 0; i < Lq; i++) {
          double rl;
          int64_t nvis = ref_sdpa_row(&ra, 0, h, i, rout, rmag, &rl, NULL, NULL);
          int64_t t = cq[s] + i;
          check_row(&ck_, s, h, i, Dv, Lk, out + t * so + h * Dv, rout, rmag, nvis,
                    c->lse ? lse + h * sl + t : NULL, rl, NULL, NULL, 0);
        }
      /* The same sequence through attn_sdpa (which needs Lq, Lk >= 1). */
      if (Lq == 0 || Lk == 0)
        continue;
      int64_t q4[4] = {1, Hq, Lq, D}, k4[4] = {1, Hkv, Lk, D}, v4[4] = {1, Hkv, Lk, Dv},
              o4[4] = {1, Hq, Lq, Dv}, l3[3] = {1, Hq, Lq}, ls[3] = {0, sl, 1};
      attn_sdpa_params ps = p;
      ps.q_offsets = ra.q_offsets;
      ps.lse = c->lse ? tu_wrap(ctx, lse_seq + cq[s], nl - (size_t)cq[s], 3, l3, ls) : NULL;
      st = attn_sdpa(ctx, tu_wrap(ctx, q + cq[s] * sq, nq - (size_t)(cq[s] * sq), 4, q4, qs),
                     tu_wrap(ctx, k + ck[s] * sk, nk - (size_t)(ck[s] * sk), 4, k4, ks),
                     tu_wrap(ctx, v + ck[s] * sv, nv - (size_t)(ck[s] * sv), 4, v4, vs),
                     tu_wrap(ctx, out_seq + cq[s] * so, no - (size_t)(cq[s] * so), 4, o4, os),
                     &ps);
      if (st != ATTN_OK)
        fail_msg("attn_sdpa on sequence %d: %s", (int)s, attn_ctx_last_error(ctx));
      for (int64_t t = cq[s]; t < cq[s + 1]; t++)
        for (int64_t h = 0; h < Hq; h++) {
          for (int64_t d = 0; d < Dv; d++) {
            double x = out[t * so + h * Dv + d], y = out_seq[t * so + h * Dv + d];
            if (!(fabs(x - y) <= 1e-6))
              report(&ck_, "varlen vs per-sequence attn_sdpa", s, h, t - cq[s], d, x, y,
                     fabs(x - y));
          }
          if (c->lse && !tu_close(lse[h * sl + t], lse_seq[h * sl + t], 1e-6, 1e-6))
            report(&ck_, "varlen lse vs per-sequence", s, h, t - cq[s], 0, lse[h * sl + t],
                   lse_seq[h * sl + t], 0);
        }
    }
    free(rout), free(rmag);
    if (ck_.failures)
      print_error("  %s [threads %d]: %d mismatches\n", c->name, threads, ck_.failures);
    failures += ck_.failures;
  }
  free(q), free(k), free(v), free(out), free(out_seq), free(lse), free(lse_seq);
  return failures;
}

static void varlen(void **state) {
  (void)state;
  /* Sequences (Lq, Lk) include empty ones: (0, 0), queries without keys
   * (3, 0), keys without queries (0, 6). */
  static const varlen_case cases[] = {
      {.name = "varlen plain", .batch = 6, .lq = {7, 0, 70, 3, 0, 130}, .lk = {13, 0, 40, 0, 6, 300},
       .Hq = 4, .Hkv = 2, .D = 16, .Dv = 8, .lse = 1},
      {.name = "varlen causal tl", .batch = 6, .lq = {7, 0, 70, 3, 0, 130}, .lk = {13, 0, 40, 0, 6, 300},
       .Hq = 4, .Hkv = 2, .D = 16, .Dv = 8, .causal = 1, .lse = 1},
      {.name = "varlen causal br", .batch = 6, .lq = {7, 0, 70, 3, 0, 130}, .lk = {13, 0, 40, 0, 6, 300},
       .Hq = 4, .Hkv = 2, .D = 16, .Dv = 8, .causal = 1, .align = BR, .lse = 1},
      {.name = "varlen window alibi sinks", .batch = 5, .lq = {1, 90, 0, 4, 65}, .lk = {300, 30, 0, 0, 65},
       .Hq = 3, .Hkv = 1, .D = 8, .Dv = 12, .causal = 1, .align = BR, .window = 1, .wl = 10, .wr = 0,
       .alibi = 1, .sinks = 1, .lse = 1},
      {.name = "varlen one sequence", .batch = 1, .lq = {67}, .lk = {257}, .Hq = 2, .Hkv = 2, .D = 5, .Dv = 3},
      {.name = "varlen padded rows", .batch = 4, .lq = {5, 0, 66, 2}, .lk = {9, 4, 70, 0},
       .Hq = 6, .Hkv = 3, .D = 8, .Dv = 4, .causal = 1, .align = BR, .sinks = 1, .lse = 1, .pad = 1},
      /* Long sequences with few queries: the split-keys path per sequence. */
      {.name = "varlen split", .batch = 3, .lq = {2, 1, 0}, .lk = {5000, 3000, 10},
       .Hq = 4, .Hkv = 1, .D = 64, .Dv = 64, .causal = 1, .align = BR, .sinks = 1, .lse = 1},
      {.name = "varlen split padded", .batch = 2, .lq = {3, 1}, .lk = {4500, 2600},
       .Hq = 2, .Hkv = 1, .D = 64, .Dv = 64, .window = 1, .wl = 3000, .wr = 0, .align = BR,
       .alibi = 1, .lse = 1, .pad = 1},
      /* Staged items (attn_sdpa_packed: a batch larger than 4 MiB, each
       * kv head's query rows, keys and values within 512 KiB; outputs go
       * to their rows): up to 400 tokens of two query heads per kv head at
       * D = 64 (400 KiB) fill two kv heads of the 1 MiB staging buffer, so
       * the three kv heads run as groups of 2 and 1 (alibi slopes, sinks
       * and lse rows offset by the group's first head), 256+ positions
       * with a second, shorter query block (512 rows of two heads); the
       * last sequence's 3000 keys are not staged (split keys, after the
       * rest). */
      {.name = "varlen head groups", .batch = 7, .lq = {400, 250, 5, 400, 120, 280, 3},
       .lk = {400, 260, 9, 390, 120, 280, 3000}, .Hq = 6, .Hkv = 3, .D = 64, .Dv = 64, .causal = 1,
       .align = BR, .window = 1, .wl = 200, .wr = 0, .alibi = 1, .sinks = 1, .lse = 1, .pad = 1},
      /* One query position per sequence, negative ones included. */
      {.name = "varlen q_offsets", .batch = 5, .lq = {7, 0, 70, 3, 4}, .lk = {13, 5, 40, 0, 3000},
       .Hq = 4, .Hkv = 2, .D = 16, .Dv = 8, .causal = 1, .window = 1, .wl = 20, .wr = 2,
       .alibi = 1, .lse = 1, .use_qoff = 1, .qoff = {-3, 9, 12, 0, 2990}},
  };
  int bad = 0;
  attn_ctx *ctxs[2] = {tu_ctx(1), tu_ctx(2)};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    if (run_varlen(&cases[i], ctxs))
      bad++;
  attn_ctx_destroy(ctxs[0]);
  attn_ctx_destroy(ctxs[1]);
  if (bad)
    fail_msg("%d varlen cases differ", bad);
}

/* ---------------------------------------------------------------------- */
/* Bad input: the right status, a message naming the argument, and nothing
 * written (out, lse and weights keep their sentinel). */

typedef struct {
  attn_ctx *ctx, *other;
  float q[2 * 4 * 5 * 8], k[2 * 2 * 7 * 8], v[2 * 2 * 7 * 6], out[2 * 4 * 5 * 8 + 8];
  float lse[2 * 4 * 5 + 8], w[2 * 4 * 5 * 7];
  float fmask[5 * 7];
  uint8_t bmask[5 * 7];
  attn_tensor *tq, *tk, *tv, *tout, *tlse, *tw;
} bad_env;

/* B=2, Hq=4, Hkv=2, Lq=5, Lk=7, D=8, Dv=6. */
static void bad_setup(bad_env *e) {
  tu_rng r = {29};
  e->ctx = tu_ctx(1);
  e->other = tu_ctx(1);
  tu_fill(&r, e->q, sizeof e->q / sizeof(float), -1, 1);
  tu_fill(&r, e->k, sizeof e->k / sizeof(float), -1, 1);
  tu_fill(&r, e->v, sizeof e->v / sizeof(float), -1, 1);
  memset(e->bmask, 1, sizeof e->bmask);
  memset(e->fmask, 0, sizeof e->fmask);
  int64_t qd[4] = {2, 4, 5, 8}, kd[4] = {2, 2, 7, 8}, vd[4] = {2, 2, 7, 6}, od[4] = {2, 4, 5, 6},
          ld[3] = {2, 4, 5}, wd[4] = {2, 4, 5, 7};
  e->tq = tu_wrap(e->ctx, e->q, sizeof e->q / sizeof(float), 4, qd, NULL);
  e->tk = tu_wrap(e->ctx, e->k, sizeof e->k / sizeof(float), 4, kd, NULL);
  e->tv = tu_wrap(e->ctx, e->v, sizeof e->v / sizeof(float), 4, vd, NULL);
  e->tout = tu_wrap(e->ctx, e->out, 2 * 4 * 5 * 6, 4, od, NULL);
  e->tlse = tu_wrap(e->ctx, e->lse, 2 * 4 * 5, 3, ld, NULL);
  e->tw = tu_wrap(e->ctx, e->w, sizeof e->w / sizeof(float), 4, wd, NULL);
}

static void bad_sentinels(bad_env *e) {
  for (size_t i = 0; i < sizeof e->out / sizeof(float); i++)
    e->out[i] = SENTINEL;
  for (size_t i = 0; i < sizeof e->lse / sizeof(float); i++)
    e->lse[i] = SENTINEL;
  for (size_t i = 0; i < sizeof e->w / sizeof(float); i++)
    e->w[i] = SENTINEL;
}

static void bad_untouched(bad_env *e, const char *what) {
  for (size_t i = 0; i < sizeof e->out / sizeof(float); i++)
    if (e->out[i] != SENTINEL)
      fail_msg("%s: out[%zu] was written", what, i);
  for (size_t i = 0; i < sizeof e->lse / sizeof(float); i++)
    if (e->lse[i] != SENTINEL)
      fail_msg("%s: lse[%zu] was written", what, i);
  for (size_t i = 0; i < sizeof e->w / sizeof(float); i++)
    if (e->w[i] != SENTINEL)
      fail_msg("%s: weights[%zu] was written", what, i);
}

/* One failing call: status, message, nothing written. */
#define EXPECT_BAD(e, call, status, needle)                                                   \
  do {                                                                                        \
    bad_sentinels(e);                                                                         \
    assert_status((call), (status));                                                          \
    if ((needle)[0])                                                                          \
      assert_error_mentions((e)->ctx, (needle));                                              \
    if ((status) != ATTN_OK)                                                                  \
      bad_untouched((e), #call);                                                              \
  } while (0)

static attn_tensor *wrapf(bad_env *e, float *data, size_t n, int32_t ndim, const int64_t *dims) {
  return tu_wrap(e->ctx, data, n, ndim, dims, NULL);
}

static void bad_tensors(void **state) {
  (void)state;
  bad_env env, *e = &env;
  bad_setup(e);
  attn_ctx *ctx = e->ctx;
  attn_tensor *q = e->tq, *k = e->tk, *v = e->tv, *out = e->tout;
  /* A good call works, so every failure below is the one thing changed. */
  bad_sentinels(e);
  assert_ok(attn_sdpa(ctx, q, k, v, out, NULL));

  EXPECT_BAD(e, attn_sdpa(NULL, q, k, v, out, NULL), ATTN_ERR_NULL_ARG, "");
  EXPECT_BAD(e, attn_sdpa(ctx, NULL, k, v, out, NULL), ATTN_ERR_NULL_ARG, "q");
  EXPECT_BAD(e, attn_sdpa(ctx, q, NULL, v, out, NULL), ATTN_ERR_NULL_ARG, "k");
  EXPECT_BAD(e, attn_sdpa(ctx, q, k, NULL, out, NULL), ATTN_ERR_NULL_ARG, "v");
  EXPECT_BAD(e, attn_sdpa(ctx, q, k, v, NULL, NULL), ATTN_ERR_NULL_ARG, "out");

  /* A tensor of another context. */
  int64_t qd[4] = {2, 4, 5, 8};
  attn_tensor *q_other = tu_wrap(e->other, e->q, sizeof e->q / sizeof(float), 4, qd, NULL);
  EXPECT_BAD(e, attn_sdpa(ctx, q_other, k, v, out, NULL), ATTN_ERR_BAD_HANDLE, "q");

  /* Wrong dtype: q as uint8. */
  attn_tensor *q_u8 = NULL;
  assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_U8, 4, qd, NULL, e->q, sizeof e->q, &q_u8));
  EXPECT_BAD(e, attn_sdpa(ctx, q_u8, k, v, out, NULL), ATTN_ERR_UNSUPPORTED, "q");

  /* Wrong ndim. */
  int64_t q3[3] = {8, 5, 8};
  EXPECT_BAD(e, attn_sdpa(ctx, wrapf(e, e->q, 320, 3, q3), k, v, out, NULL), ATTN_ERR_SHAPE, "q");
  int64_t o3[3] = {8, 5, 6};
  EXPECT_BAD(e, attn_sdpa(ctx, q, k, v, wrapf(e, e->out, 240, 3, o3), NULL), ATTN_ERR_SHAPE, "out");

  /* Mismatched D (k's head dim 4 against q's 8). */
  int64_t kd4[4] = {2, 2, 7, 4};
  EXPECT_BAD(e, attn_sdpa(ctx, q, wrapf(e, e->k, 112, 4, kd4), v, out, NULL), ATTN_ERR_SHAPE, "k.shape[3]");
  /* Mismatched B. */
  int64_t kb1[4] = {1, 2, 7, 8}, vb1[4] = {1, 2, 7, 6};
  EXPECT_BAD(e, attn_sdpa(ctx, q, wrapf(e, e->k, 112, 4, kb1), v, out, NULL), ATTN_ERR_SHAPE, "k.shape[0]");
  EXPECT_BAD(e, attn_sdpa(ctx, q, k, wrapf(e, e->v, 84, 4, vb1), out, NULL), ATTN_ERR_SHAPE, "v.shape[0]");
  /* v's Lk differs from k's. */
  int64_t v6[4] = {2, 2, 6, 6};
  EXPECT_BAD(e, attn_sdpa(ctx, q, k, wrapf(e, e->v, 144, 4, v6), out, NULL), ATTN_ERR_SHAPE, "v.shape[2]");
  /* v's kv heads differ from k's. */
  int64_t v1h[4] = {2, 1, 7, 6};
  EXPECT_BAD(e, attn_sdpa(ctx, q, k, wrapf(e, e->v, 84, 4, v1h), out, NULL), ATTN_ERR_SHAPE, "v.shape[1]");
  /* Heads not divisible: Hq 4, Hkv 3. */
  int64_t k3h[4] = {2, 3, 7, 4}, v3h[4] = {2, 3, 7, 4}, q4[4] = {2, 4, 5, 4}, o4[4] = {2, 4, 5, 4};
  EXPECT_BAD(e, attn_sdpa(ctx, wrapf(e, e->q, 160, 4, q4), wrapf(e, e->k, 168, 4, k3h),
                          wrapf(e, e->v, 168, 4, v3h), wrapf(e, e->out, 160, 4, o4), NULL),
             ATTN_ERR_SHAPE, "heads");
  /* out of the wrong shape, axis by axis. */
  int64_t obad[4][4] = {{1, 4, 5, 6}, {2, 2, 5, 6}, {2, 4, 4, 6}, {2, 4, 5, 8}};
  const char *oname[4] = {"out.shape[0]", "out.shape[1]", "out.shape[2]", "out.shape[3]"};
  for (int a = 0; a < 4; a++)
    EXPECT_BAD(e, attn_sdpa(ctx, q, k, v, wrapf(e, e->out, 320, 4, obad[a]), NULL),
               ATTN_ERR_SHAPE, oname[a]);
  /* out broadcasting (zero stride). */
  int64_t od[4] = {2, 4, 5, 6}, ozero[4] = {0, 30, 6, 1};
  attn_tensor *out_b = tu_wrap(ctx, e->out, 240, 4, od, ozero);
  EXPECT_BAD(e, attn_sdpa(ctx, q, k, v, out_b, NULL), ATTN_ERR_INVALID_ARG, "out");

  /* Aliasing: out on q's buffer, out partly over k, lse over out, weights
   * over lse. */
  int64_t od_as_q[4] = {2, 4, 5, 6};
  EXPECT_BAD(e, attn_sdpa(ctx, q, k, v, wrapf(e, e->q, 320, 4, od_as_q), NULL), ATTN_ERR_ALIASING, "out");
  {
    /* k at joint[0, 224), out at joint[200, 440): a partial overlap. */
    float joint[224 + 240];
    memcpy(joint, e->k, sizeof e->k);
    for (int i = 224; i < 464; i++)
      joint[i] = SENTINEL;
    float before[464];
    memcpy(before, joint, sizeof joint);
    int64_t kd[4] = {2, 2, 7, 8};
    attn_tensor *k_j = wrapf(e, joint, 224, 4, kd), *o_j = wrapf(e, joint + 200, 240, 4, od);
    EXPECT_BAD(e, attn_sdpa(ctx, q, k_j, v, o_j, NULL), ATTN_ERR_ALIASING, "out");
    if (memcmp(before, joint, sizeof joint))
      fail_msg("the overlapping out was written");
  }
  {
    attn_sdpa_params p;
    attn_sdpa_params_init(&p);
    int64_t ld[3] = {2, 4, 5};
    p.lse = wrapf(e, e->out + 8, 40, 3, ld); /* inside out's buffer */
    EXPECT_BAD(e, attn_sdpa(ctx, q, k, v, out, &p), ATTN_ERR_ALIASING, "lse");
    p.lse = wrapf(e, e->q, 40, 3, ld); /* over an input */
    EXPECT_BAD(e, attn_sdpa(ctx, q, k, v, out, &p), ATTN_ERR_ALIASING, "lse");
    p.lse = e->tlse;
    int64_t wd[4] = {2, 4, 5, 7};
    float wl[2 * 4 * 5 * 7 + 40];
    attn_tensor *w_over_lse = wrapf(e, wl, 280, 4, wd), *lse_in_w = wrapf(e, wl + 280, 40, 3, ld);
    p.lse = wrapf(e, wl + 250, 40, 3, ld); /* overlaps the weights' tail */
    p.weights = w_over_lse;
    for (int i = 0; i < 320; i++)
      wl[i] = SENTINEL;
    EXPECT_BAD(e, attn_sdpa(ctx, q, k, v, out, &p), ATTN_ERR_ALIASING, "weights");
    for (int i = 0; i < 320; i++)
      if (wl[i] != SENTINEL)
        fail_msg("weights/lse written on an aliasing failure");
    p.lse = lse_in_w; /* adjacent, not overlapping: fine */
    bad_sentinels(e);
    assert_ok(attn_sdpa(ctx, q, k, v, out, &p));
    p.lse = e->tlse;
    p.weights = wrapf(e, e->q, 280, 4, wd); /* weights over q */
    EXPECT_BAD(e, attn_sdpa(ctx, q, k, v, out, &p), ATTN_ERR_ALIASING, "weights");
  }
  attn_ctx_destroy(e->other);
  attn_ctx_destroy(ctx);
}

static void bad_params(void **state) {
  (void)state;
  bad_env env, *e = &env;
  bad_setup(e);
  attn_ctx *ctx = e->ctx;
  attn_tensor *q = e->tq, *k = e->tk, *v = e->tv, *out = e->tout;
  attn_sdpa_params p;
#define WITH(field_assign, status, needle)                                                    \
  do {                                                                                        \
    attn_sdpa_params_init(&p);                                                                \
    p.lse = e->tlse;                                                                          \
    p.weights = e->tw;                                                                        \
    field_assign;                                                                             \
    EXPECT_BAD(e, attn_sdpa(ctx, q, k, v, out, &p), status, needle);                          \
  } while (0)

  WITH(p.scale = NAN, ATTN_ERR_INVALID_ARG, "scale");
  WITH(p.scale = INFINITY, ATTN_ERR_INVALID_ARG, "scale");
  WITH(p.scale = -INFINITY, ATTN_ERR_INVALID_ARG, "scale");
  WITH(p.softcap = -1, ATTN_ERR_INVALID_ARG, "softcap");
  WITH(p.softcap = NAN, ATTN_ERR_INVALID_ARG, "softcap");
  WITH(p.softcap = INFINITY, ATTN_ERR_INVALID_ARG, "softcap");
  WITH(p.align = 2, ATTN_ERR_INVALID_ARG, "align");
  WITH(p.align = -1, ATTN_ERR_INVALID_ARG, "align");
  WITH((p.window = 1, p.window_left = -1), ATTN_ERR_INVALID_ARG, "window_left");
  WITH((p.window = 1, p.window_right = -3), ATTN_ERR_INVALID_ARG, "window_right");
  WITH(p.reserved_ = 1, ATTN_ERR_INVALID_ARG, "reserved_");
  int64_t lens_neg[2] = {3, -1}, lens_big[2] = {8, 7}, lens_ok[2] = {0, 7};
  WITH(p.kv_lens = lens_neg, ATTN_ERR_INVALID_ARG, "kv_lens[1]");
  WITH(p.kv_lens = lens_big, ATTN_ERR_INVALID_ARG, "kv_lens[0]");
  float bad_f[4] = {0.5f, 0.25f, NAN, 0.1f}, inf_f[4] = {0, 0, 0, INFINITY};
  WITH(p.alibi_slopes = bad_f, ATTN_ERR_INVALID_ARG, "alibi_slopes[2]");
  WITH(p.alibi_slopes = inf_f, ATTN_ERR_INVALID_ARG, "alibi_slopes[3]");
  WITH(p.sinks = bad_f, ATTN_ERR_INVALID_ARG, "sinks[2]");
  WITH(p.sinks = inf_f, ATTN_ERR_INVALID_ARG, "sinks[3]");
  int64_t off_ok[2] = {-5, 3}, off_big[2] = {0, ((int64_t)1 << 60) + 1},
          off_low[2] = {INT64_MIN, 0};
  WITH(p.q_offsets = off_big, ATTN_ERR_INVALID_ARG, "q_offsets[1]");
  WITH(p.q_offsets = off_low, ATTN_ERR_INVALID_ARG, "q_offsets[0]");
  WITH((p.q_offsets = off_ok, p.align = BR), ATTN_ERR_INVALID_ARG, "align");

  /* Masks: wrong shapes, wrong dtypes, too many dims. */
  int64_t m_bad[4] = {1, 1, 5, 6}, m_b3[4] = {3, 1, 5, 7}, m_h3[4] = {1, 3, 5, 7},
          m_q4[2] = {4, 7}, m_ok[2] = {5, 7};
  WITH(p.mask = wrapf(e, e->fmask, 35, 4, m_bad), ATTN_ERR_SHAPE, "mask");
  WITH(p.mask = wrapf(e, e->q, 105, 4, m_b3), ATTN_ERR_SHAPE, "mask");
  WITH(p.mask = wrapf(e, e->q, 105, 4, m_h3), ATTN_ERR_SHAPE, "mask");
  WITH(p.mask = wrapf(e, e->fmask, 35, 2, m_q4), ATTN_ERR_SHAPE, "mask");
  attn_tensor *bm_bad = NULL, *bm_ok = NULL, *fm_as_u8 = NULL;
  assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_U8, 4, m_bad, NULL, e->bmask, 35, &bm_bad));
  assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_U8, 2, m_ok, NULL, e->bmask, 35, &bm_ok));
  assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_U8, 2, m_ok, NULL, e->fmask, 35, &fm_as_u8));
  WITH(p.bool_mask = bm_bad, ATTN_ERR_SHAPE, "bool_mask");
  WITH(p.bool_mask = wrapf(e, e->fmask, 35, 2, m_ok), ATTN_ERR_UNSUPPORTED, "bool_mask");
  WITH(p.mask = fm_as_u8, ATTN_ERR_UNSUPPORTED, "mask");
  /* Masks must not overlap out either. */
  WITH(p.mask = wrapf(e, e->out, 35, 2, m_ok), ATTN_ERR_ALIASING, "mask");

  /* lse and weights of the wrong shape or dtype. */
  int64_t l_bad[3] = {2, 4, 4}, l_2d[2] = {8, 5}, w_bad[4] = {2, 4, 5, 6}, w_3d[3] = {8, 5, 7};
  WITH(p.lse = wrapf(e, e->lse, 40, 3, l_bad), ATTN_ERR_SHAPE, "lse");
  WITH(p.lse = wrapf(e, e->lse, 40, 2, l_2d), ATTN_ERR_SHAPE, "lse");
  WITH(p.weights = wrapf(e, e->w, 280, 4, w_bad), ATTN_ERR_SHAPE, "weights");
  WITH(p.weights = wrapf(e, e->w, 280, 3, w_3d), ATTN_ERR_SHAPE, "weights");
  int64_t ld[3] = {2, 4, 5};
  attn_tensor *lse_u8 = NULL;
  assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_U8, 3, ld, NULL, e->lse, 40, &lse_u8));
  WITH(p.lse = lse_u8, ATTN_ERR_UNSUPPORTED, "lse");
  int64_t lzero[3] = {0, 5, 1};
  WITH(p.lse = tu_wrap(ctx, e->lse, 40, 3, ld, lzero), ATTN_ERR_INVALID_ARG, "lse");

  /* The size-tagged struct. */
  WITH(p.struct_size = 0, ATTN_ERR_INVALID_ARG, "struct_size");
  WITH(p.struct_size = 4, ATTN_ERR_INVALID_ARG, "struct_size");
  struct {
    attn_sdpa_params p;
    uint64_t extra[2];
  } newer;
  memset(&newer, 0, sizeof newer);
  attn_sdpa_params_init(&newer.p);
  newer.p.struct_size = sizeof newer;
  newer.extra[1] = 1; /* a field this library does not know, set */
  EXPECT_BAD(e, attn_sdpa(ctx, q, k, v, out, &newer.p), ATTN_ERR_UNSUPPORTED, "struct_size");
  newer.extra[1] = 0; /* ... and left zero: fine */
  bad_sentinels(e);
  assert_ok(attn_sdpa(ctx, q, k, v, out, &newer.p));
  /* An older caller: fields past its size are not read (lse here). */
  attn_sdpa_params_init(&p);
  p.struct_size = offsetof(attn_sdpa_params, lse);
  p.lse = e->tlse;
  bad_sentinels(e);
  assert_ok(attn_sdpa(ctx, q, k, v, out, &p));
  for (int i = 0; i < 40; i++)
    if (e->lse[i] != SENTINEL)
      fail_msg("lse written though past the caller's struct_size");
  /* Valid edge values pass. */
  WITH(p.kv_lens = lens_ok, ATTN_OK, "");
  WITH((p.window = 1, p.window_left = INT64_MAX, p.window_right = 0), ATTN_OK, "");
  WITH(p.bool_mask = bm_ok, ATTN_OK, "");
#undef WITH
  attn_ctx_destroy(e->other);
  attn_ctx_destroy(ctx);
}

static void bad_varlen(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  /* Tq = 6, Tk = 9, Hq = 2, Hkv = 1, D = 4, Dv = 3. */
  float q[6 * 2 * 4], k[9 * 4], v[9 * 3], out[6 * 2 * 3], lse[2 * 6];
  tu_rng r = {31};
  tu_fill(&r, q, 48, -1, 1);
  tu_fill(&r, k, 36, -1, 1);
  tu_fill(&r, v, 27, -1, 1);
  int64_t qd[3] = {6, 2, 4}, kd[3] = {9, 1, 4}, vd[3] = {9, 1, 3}, od[3] = {6, 2, 3}, ld[2] = {2, 6};
  attn_tensor *tq = tu_wrap(ctx, q, 48, 3, qd, NULL), *tk = tu_wrap(ctx, k, 36, 3, kd, NULL),
              *tv = tu_wrap(ctx, v, 27, 3, vd, NULL), *to = tu_wrap(ctx, out, 36, 3, od, NULL);
  int64_t cq[3] = {0, 2, 6}, ck[3] = {0, 5, 9};
  attn_sdpa_params p;
  attn_sdpa_params_init(&p);
  p.lse = tu_wrap(ctx, lse, 12, 2, ld, NULL);
#define VBAD(call, status, needle)                                                            \
  do {                                                                                        \
    for (int i_ = 0; i_ < 36; i_++)                                                           \
      out[i_] = SENTINEL;                                                                     \
    for (int i_ = 0; i_ < 12; i_++)                                                           \
      lse[i_] = SENTINEL;                                                                     \
    assert_status((call), (status));                                                          \
    if ((needle)[0])                                                                          \
      assert_error_mentions(ctx, (needle));                                                   \
    for (int i_ = 0; i_ < 36 && (status) != ATTN_OK; i_++)                                    \
      if (out[i_] != SENTINEL)                                                                \
        fail_msg("%s: out written", #call);                                                   \
    for (int i_ = 0; i_ < 12 && (status) != ATTN_OK; i_++)                                    \
      if (lse[i_] != SENTINEL)                                                                \
        fail_msg("%s: lse written", #call);                                                   \
  } while (0)
  VBAD(attn_sdpa_varlen(ctx, tq, tk, tv, to, 2, cq, ck, &p), ATTN_OK, "");
  VBAD(attn_sdpa_varlen(NULL, tq, tk, tv, to, 2, cq, ck, &p), ATTN_ERR_NULL_ARG, "");
  VBAD(attn_sdpa_varlen(ctx, NULL, tk, tv, to, 2, cq, ck, &p), ATTN_ERR_NULL_ARG, "q");
  VBAD(attn_sdpa_varlen(ctx, tq, tk, tv, NULL, 2, cq, ck, &p), ATTN_ERR_NULL_ARG, "out");
  VBAD(attn_sdpa_varlen(ctx, tq, tk, tv, to, 2, NULL, ck, &p), ATTN_ERR_NULL_ARG, "cu_seqlens_q");
  VBAD(attn_sdpa_varlen(ctx, tq, tk, tv, to, 2, cq, NULL, &p), ATTN_ERR_NULL_ARG, "cu_seqlens_k");
  /* batch 0 is fine, but then there are no tokens (test_empty.c). */
  VBAD(attn_sdpa_varlen(ctx, tq, tk, tv, to, 0, cq, ck, &p), ATTN_ERR_SHAPE, "cu_seqlens_q[0]");
  VBAD(attn_sdpa_varlen(ctx, tq, tk, tv, to, -1, cq, ck, &p), ATTN_ERR_INVALID_ARG, "batch");
  int64_t c_start[3] = {1, 2, 6}, c_dec[3] = {0, 7, 6}, c_end[3] = {0, 2, 5}, c_over[3] = {0, 2, 7};
  VBAD(attn_sdpa_varlen(ctx, tq, tk, tv, to, 2, c_start, ck, &p), ATTN_ERR_INVALID_ARG, "cu_seqlens_q[0]");
  VBAD(attn_sdpa_varlen(ctx, tq, tk, tv, to, 2, c_dec, ck, &p), ATTN_ERR_INVALID_ARG, "cu_seqlens_q");
  VBAD(attn_sdpa_varlen(ctx, tq, tk, tv, to, 2, c_end, ck, &p), ATTN_ERR_SHAPE, "cu_seqlens_q[2]");
  VBAD(attn_sdpa_varlen(ctx, tq, tk, tv, to, 2, c_over, ck, &p), ATTN_ERR_SHAPE, "cu_seqlens_q[2]");
  int64_t k_dec[3] = {0, 10, 9}, k_end[3] = {0, 5, 8};
  VBAD(attn_sdpa_varlen(ctx, tq, tk, tv, to, 2, cq, k_dec, &p), ATTN_ERR_INVALID_ARG, "cu_seqlens_k");
  VBAD(attn_sdpa_varlen(ctx, tq, tk, tv, to, 2, cq, k_end, &p), ATTN_ERR_SHAPE, "cu_seqlens_k[2]");
  /* 4-D tensors, mismatched dims, aliasing. */
  int64_t q4[4] = {1, 6, 2, 4}, kd2[3] = {9, 1, 2}, o_bad[3] = {6, 2, 4}, l_bad[2] = {6, 2};
  VBAD(attn_sdpa_varlen(ctx, tu_wrap(ctx, q, 48, 4, q4, NULL), tk, tv, to, 2, cq, ck, &p), ATTN_ERR_SHAPE, "q");
  VBAD(attn_sdpa_varlen(ctx, tq, tu_wrap(ctx, k, 36, 3, kd2, NULL), tv, to, 2, cq, ck, &p), ATTN_ERR_SHAPE, "k.shape[2]");
  float out_big[6 * 2 * 4];
  for (int i = 0; i < 48; i++)
    out_big[i] = SENTINEL;
  VBAD(attn_sdpa_varlen(ctx, tq, tk, tv, tu_wrap(ctx, out_big, 48, 3, o_bad, NULL), 2, cq, ck, &p),
       ATTN_ERR_SHAPE, "out.shape[2]");
  for (int i = 0; i < 48; i++)
    if (out_big[i] != SENTINEL)
      fail_msg("out of the wrong shape was written");
  VBAD(attn_sdpa_varlen(ctx, tq, tk, tv, tu_wrap(ctx, q, 36, 3, od, NULL), 2, cq, ck, &p), ATTN_ERR_ALIASING, "out");
  int64_t kh3[3] = {3, 3, 4}, vh3[3] = {3, 3, 3};
  int64_t ck3[3] = {0, 1, 3};
  VBAD(attn_sdpa_varlen(ctx, tq, tu_wrap(ctx, k, 36, 3, kh3, NULL), tu_wrap(ctx, v, 27, 3, vh3, NULL), to, 2, cq, ck3, &p),
       ATTN_ERR_SHAPE, "heads");
  attn_sdpa_params p2 = p;
  p2.lse = tu_wrap(ctx, lse, 12, 2, l_bad, NULL);
  VBAD(attn_sdpa_varlen(ctx, tq, tk, tv, to, 2, cq, ck, &p2), ATTN_ERR_SHAPE, "lse");
  p2.lse = tu_wrap(ctx, out, 12, 2, ld, NULL);
  VBAD(attn_sdpa_varlen(ctx, tq, tk, tv, to, 2, cq, ck, &p2), ATTN_ERR_ALIASING, "lse");
  /* Masks, kv_lens and weights belong to attn_sdpa only. */
  int64_t md[2] = {6, 9}, wd[4] = {1, 2, 6, 9};
  float fm[54] = {0}, wbuf[108];
  uint8_t bm[54];
  memset(bm, 1, sizeof bm);
  attn_tensor *tbm = NULL;
  assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_U8, 2, md, NULL, bm, sizeof bm, &tbm));
  int64_t lens[2] = {5, 4};
  p2 = p, p2.mask = tu_wrap(ctx, fm, 54, 2, md, NULL);
  VBAD(attn_sdpa_varlen(ctx, tq, tk, tv, to, 2, cq, ck, &p2), ATTN_ERR_INVALID_ARG, "mask");
  p2 = p, p2.bool_mask = tbm;
  VBAD(attn_sdpa_varlen(ctx, tq, tk, tv, to, 2, cq, ck, &p2), ATTN_ERR_INVALID_ARG, "bool_mask");
  p2 = p, p2.kv_lens = lens;
  VBAD(attn_sdpa_varlen(ctx, tq, tk, tv, to, 2, cq, ck, &p2), ATTN_ERR_INVALID_ARG, "kv_lens");
  p2 = p, p2.weights = tu_wrap(ctx, wbuf, 108, 4, wd, NULL);
  VBAD(attn_sdpa_varlen(ctx, tq, tk, tv, to, 2, cq, ck, &p2), ATTN_ERR_INVALID_ARG, "weights");
  p2 = p, p2.scale = NAN;
  VBAD(attn_sdpa_varlen(ctx, tq, tk, tv, to, 2, cq, ck, &p2), ATTN_ERR_INVALID_ARG, "scale");
  int64_t offs[2] = {0, INT64_MAX}; /* one per sequence: the second is read */
  p2 = p, p2.q_offsets = offs;
  VBAD(attn_sdpa_varlen(ctx, tq, tk, tv, to, 2, cq, ck, &p2), ATTN_ERR_INVALID_ARG,
       "q_offsets[1]");
  p2 = p, p2.struct_size = 0;
  VBAD(attn_sdpa_varlen(ctx, tq, tk, tv, to, 2, cq, ck, &p2), ATTN_ERR_INVALID_ARG, "struct_size");
#undef VBAD
  attn_ctx_destroy(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(shapes),
      cmocka_unit_test(layouts),
      cmocka_unit_test(gqa_mqa),
      cmocka_unit_test(causal_window_kvlens),
      cmocka_unit_test(positions),
      cmocka_unit_test(masks),
      cmocka_unit_test(numerics),
      cmocka_unit_test(long_and_split),
      cmocka_unit_test(more_threads),
      cmocka_unit_test(no_memory),
      cmocka_unit_test(prop_gqa_equals_repeated_mha),
      cmocka_unit_test(prop_lse_merge_of_halves),
      cmocka_unit_test(prop_key_permutation),
      cmocka_unit_test(prop_decode_equals_last_row),
      cmocka_unit_test(prop_weights_rows_sum),
      cmocka_unit_test(prop_layouts_agree),
      cmocka_unit_test(prop_nan_reaches_only_its_rows),
      cmocka_unit_test(varlen),
      cmocka_unit_test(nan_v_stays_in_rows_that_see_it),
      cmocka_unit_test(nan_k_under_inf_mask_is_hidden),
      cmocka_unit_test(weights_exact_at_large_logits),
      cmocka_unit_test(bad_tensors),
      cmocka_unit_test(bad_params),
      cmocka_unit_test(bad_varlen),
  };
  char blas[256];
  attn_blas_info(blas, sizeof blas);
  if (strstr(blas, "SDPA products: cblas_sgemm") && strstr(blas, "; 1 threads;") == NULL &&
      strstr(blas, "sequential") == NULL)
    print_message("note: %s\n  sdpa.c then runs single-threaded; set OPENBLAS_NUM_THREADS=1 "
                  "to test its worker threads and split-keys path\n", blas);
  return cmocka_run_group_tests(tests, NULL, NULL);
}
