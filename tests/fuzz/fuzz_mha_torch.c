/* Fuzz target: the PyTorch nn.MultiheadAttention layer
 * (attn_mha_create_torch, attn_mha_set_weight, attn_mha_torch_forward).
 * The input chooses the layer (sizes, kdim/vdim, bias, batch_first, the
 * refused options), the tensors (shapes right or wrong, strides, dtypes,
 * masks bool or float, 2-D or 3-D), the forward params (need_weights
 * against out_weights, per head or averaged, is_causal, struct sizes),
 * the data and a failing allocation. Checks: a refused call writes
 * nothing and leaves a message; an accepted one was valid, writes only
 * the outputs' elements, and, when the data is moderate and finite,
 * matches torch's formulas computed here in float64. */
#include "fuzz_common.h"

/* Calls with a tensor of more elements are not made (a small call's
 * limit; now and then shapes past the library's tiles take the larger). */
#define MAX_ELEMS 4096
#define MAX_ELEMS_BIG ((int64_t)1 << 18)
/* Multiply-adds the float64 reference may spend on a call (B L S E (E + 2)):
 * larger shapes are cut down to this. */
#define REF_WORK 3e7

/* The layer's weights as the harness holds them (row-major, float). */
typedef struct {
  int64_t E, H, kdim, vdim;
  int bias, bf, packed;
  float *wq, *wk, *wv, *wo, *bin, *bo; /* bin: [3E] */
} layer_ref;

static float *fresh(fz_in *in, size_t n, int *moderate) {
  float *x = malloc((n ? n : 1) * sizeof *x);
  FZ_CHECK(x, "malloc");
  fz_fill(in, x, n);
  for (size_t i = 0; i < n; i++)
    if (!(fabsf(x[i]) <= 4))
      *moderate = 0;
  return x;
}

static attn_tensor *wrap_plain(attn_ctx *ctx, float *x, int32_t nd, const int64_t *dims) {
  attn_tensor *t = NULL;
  size_t n = 1;
  for (int i = 0; i < nd; i++)
    n *= (size_t)dims[i];
  attn_status st = attn_tensor_wrap(ctx, ATTN_DTYPE_F32, nd, dims, NULL, x, n * 4, &t);
  FZ_CHECK(st == ATTN_OK, "wrap: %s", attn_ctx_last_error(ctx));
  return t;
}

/* Create the layer and set its weights; NULL if creation was refused
 * (checked to be right). */
static attn_mha *make_layer(fz_in *in, attn_ctx *ctx, fz_alloc_state *a, layer_ref *r,
                            int *moderate) {
  memset(r, 0, sizeof *r);
  r->H = fz_range(in, 1, 3);
  r->E = r->H * fz_range(in, 1, 3);
  if (fz_chance(in, 8)) {
    r->E = fz_dim(in, 6); /* maybe not a multiple of H, or absurd */
    if (r->E == 6 && fz_chance(in, 128)) /* past a product panel (32 columns) */
      r->E = r->H * fz_range(in, 2, 64 / r->H);
  }
  int64_t kdim = fz_chance(in, 128) ? 0 : fz_range(in, 1, 6);
  int64_t vdim = fz_chance(in, 128) ? 0 : fz_range(in, 1, 6);
  if (fz_chance(in, 4))
    kdim = -1;
  attn_mha_torch_params p;
  attn_mha_torch_params_init(&p);
  p.embed_dim = r->E, p.num_heads = r->H, p.kdim = kdim, p.vdim = vdim;
  p.no_bias = fz_chance(in, 86);
  p.batch_first = fz_chance(in, 128);
  p.add_bias_kv = fz_chance(in, 6);
  p.add_zero_attn = fz_chance(in, 6);
  if (fz_chance(in, 10))
    a->fail_at = a->allocs + (long)fz_range(in, 1, 6);
  attn_mha *m = (attn_mha *)0x1;
  attn_status st = attn_mha_create_torch(ctx, &p, &m);
  a->fail_at = 0;
  int valid = r->E >= 1 && r->E <= 64 && r->E % r->H == 0 && kdim >= 0 && !p.add_bias_kv &&
              !p.add_zero_attn;
  if (st != ATTN_OK) {
    FZ_CHECK(m == (attn_mha *)0x1, "layer written on failure");
    FZ_CHECK(!valid || st == ATTN_ERR_NO_MEMORY, "valid layer refused: %s",
             attn_ctx_last_error(ctx));
    return NULL;
  }
  FZ_CHECK(valid, "invalid layer accepted (E %lld, H %lld, kdim %lld)", (long long)r->E,
           (long long)r->H, (long long)kdim);
  r->kdim = kdim ? kdim : r->E, r->vdim = vdim ? vdim : r->E;
  r->bias = !p.no_bias, r->bf = p.batch_first;
  r->packed = r->kdim == r->E && r->vdim == r->E;
  int64_t E = r->E;
  r->wq = fresh(in, (size_t)(E * E), moderate);
  r->wk = fresh(in, (size_t)(E * r->kdim), moderate);
  r->wv = fresh(in, (size_t)(E * r->vdim), moderate);
  r->wo = fresh(in, (size_t)(E * E), moderate);
  r->bin = fresh(in, (size_t)(3 * E), moderate);
  r->bo = fresh(in, (size_t)E, moderate);
  if (!r->bias) {
    memset(r->bin, 0, (size_t)(3 * E) * 4);
    memset(r->bo, 0, (size_t)E * 4);
  }
  if (r->packed) {
    float *w = malloc((size_t)(3 * E * E) * 4);
    FZ_CHECK(w, "malloc");
    memcpy(w, r->wq, (size_t)(E * E) * 4);
    memcpy(w + E * E, r->wk, (size_t)(E * E) * 4);
    memcpy(w + 2 * E * E, r->wv, (size_t)(E * E) * 4);
    int64_t d[2] = {3 * E, E};
    FZ_CHECK(attn_mha_set_weight(ctx, m, ATTN_MHA_IN_PROJ_WEIGHT, wrap_plain(ctx, w, 2, d)) ==
                 ATTN_OK, "set in_proj_weight: %s", attn_ctx_last_error(ctx));
    free(w);
  } else {
    int64_t dq[2] = {E, E}, dk[2] = {E, r->kdim}, dv[2] = {E, r->vdim};
    FZ_CHECK(attn_mha_set_weight(ctx, m, ATTN_MHA_Q_WEIGHT, wrap_plain(ctx, r->wq, 2, dq)) ==
                     ATTN_OK &&
                 attn_mha_set_weight(ctx, m, ATTN_MHA_K_WEIGHT, wrap_plain(ctx, r->wk, 2, dk)) ==
                     ATTN_OK &&
                 attn_mha_set_weight(ctx, m, ATTN_MHA_V_WEIGHT, wrap_plain(ctx, r->wv, 2, dv)) ==
                     ATTN_OK,
             "set q/k/v weights: %s", attn_ctx_last_error(ctx));
  }
  int64_t dout[2] = {E, E}, d3[1] = {3 * E}, d1[1] = {E};
  FZ_CHECK(attn_mha_set_weight(ctx, m, ATTN_MHA_O_WEIGHT, wrap_plain(ctx, r->wo, 2, dout)) ==
               ATTN_OK, "set out_proj.weight");
  if (r->bias)
    FZ_CHECK(attn_mha_set_weight(ctx, m, ATTN_MHA_IN_PROJ_BIAS, wrap_plain(ctx, r->bin, 1, d3)) ==
                     ATTN_OK &&
                 attn_mha_set_weight(ctx, m, ATTN_MHA_O_BIAS, wrap_plain(ctx, r->bo, 1, d1)) ==
                     ATTN_OK,
             "set biases");
  return m;
}

static void free_layer(layer_ref *r) {
  free(r->wq), free(r->wk), free(r->wv), free(r->wo), free(r->bin), free(r->bo);
}

/* A [A0, A1, F] sequence tensor's element (i0, i1, f) as double. */
static double el3(const fz_tensor *t, int64_t i0, int64_t i1, int64_t f) {
  return fz_read(t, i0 * t->eff[0] + i1 * t->eff[1] + f * t->eff[2]);
}

/* Every element of an input moderate (|x| <= 4, masks: or -inf). */
static int tensor_moderate(const fz_tensor *t, int mask) {
  if (t->dtype == ATTN_DTYPE_U8)
    return 1;
  int64_t n = fz_numel(t);
  for (int64_t f = 0; f < n; f++) {
    float v = fz_get(t, f);
    if (!(fabsf(v) <= 4) && !(mask && v == -INFINITY))
      return 0;
  }
  return 1;
}

#define SEQ(t, pos, f) (r->bf ? el3(t, b, pos, f) : el3(t, pos, b, f))

/* Batch entry b's keys and values projected, kp and vp [S, E]. */
static void project_kv(const layer_ref *r, const fz_tensor *k, const fz_tensor *v, int64_t S,
                       int64_t b, double *kp, double *vp) {
  int64_t E = r->E;
  for (int64_t j = 0; j < S; j++)
    for (int64_t e = 0; e < E; e++) {
      double ak = r->bin[E + e], av = r->bin[2 * E + e];
      for (int64_t f = 0; f < r->kdim; f++)
        ak += (double)r->wk[e * r->kdim + f] * SEQ(k, j, f);
      for (int64_t f = 0; f < r->vdim; f++)
        av += (double)r->wv[e * r->vdim + f] * SEQ(v, j, f);
      kp[j * E + e] = ak, vp[j * E + e] = av;
    }
}

/* torch's forward in float64 for token (b, i) over b's projected keys and
 * values: out row [E] and, when w is set, the weights [H, S] of that row. */
static void reference(const layer_ref *r, const fz_tensor *q, const double *kp, const double *vp,
                      const fz_tensor *kpm, const fz_tensor *am, int causal, int64_t B,
                      int64_t S, int64_t b, int64_t i, double *out, double *w) {
  int64_t E = r->E, H = r->H, D = E / H;
  double *qp = calloc((size_t)E, sizeof *qp), *a = calloc((size_t)E, sizeof *a);
  FZ_CHECK(qp && a, "calloc");
  for (int64_t e = 0; e < E; e++) {
    double acc = r->bin[e];
    for (int64_t f = 0; f < E; f++)
      acc += (double)r->wq[e * E + f] * SEQ(q, i, f);
    qp[e] = acc;
  }
  double *s = calloc((size_t)(S + 1), sizeof *s);
  FZ_CHECK(s, "calloc");
  for (int64_t h = 0; h < H; h++) {
    double mx = -INFINITY;
    for (int64_t j = 0; j < S; j++) {
      int hide = causal && j > i;
      double add = 0;
      if (am) {
        int64_t off = am->ndim == 3 ? (b * H + h) * am->eff[0] + i * am->eff[1] + j * am->eff[2]
                                    : i * am->eff[0] + j * am->eff[1];
        if (am->dtype == ATTN_DTYPE_U8)
          hide |= ((const uint8_t *)fz_data(am))[off] != 0;
        else
          add += fz_read(am, off);
      }
      if (kpm) {
        int64_t off = b * kpm->eff[0] + j * kpm->eff[1];
        if (kpm->dtype == ATTN_DTYPE_U8)
          hide |= ((const uint8_t *)fz_data(kpm))[off] != 0;
        else
          add += fz_read(kpm, off);
      }
      double dot = 0;
      for (int64_t d = 0; d < D; d++)
        dot += qp[h * D + d] * kp[j * E + h * D + d];
      s[j] = hide || add == -INFINITY ? -INFINITY : dot / sqrt((double)D) + add;
      if (s[j] > mx)
        mx = s[j];
    }
    double sum = 0;
    for (int64_t j = 0; j < S; j++)
      sum += s[j] == -INFINITY ? 0 : exp(s[j] - mx);
    for (int64_t j = 0; j < S; j++) {
      double p = sum == 0 || s[j] == -INFINITY ? 0 : exp(s[j] - mx) / sum;
      if (w)
        w[h * S + j] = p;
      for (int64_t d = 0; d < D; d++)
        a[h * D + d] += p * vp[j * E + h * D + d];
    }
  }
  for (int64_t e = 0; e < E; e++) {
    double acc = r->bo[e];
    for (int64_t f = 0; f < E; f++)
      acc += (double)r->wo[e * E + f] * a[f];
    out[e] = acc;
  }
  (void)B;
  free(qp), free(a), free(s);
}
#undef SEQ

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fz_in in = {data, size};
  fz_alloc_state a = {0, 0, 0};
  attn_ctx *ctx = fz_ctx(&a, fz_chance(&in, 128) ? 2 : 1);
  layer_ref r;
  int moderate = 1;
  attn_mha *m = make_layer(&in, ctx, &a, &r, &moderate);
  if (!m) {
    fz_ctx_destroy(ctx, &a);
    return 0;
  }
  int64_t B = fz_dim(&in, 3), L = fz_dim(&in, 5), S = fz_dim(&in, 5), E = r.E, H = r.H;
  /* Now and then (an extra byte read only at the ranges' tops) several
   * query blocks and rows of products (L up to 300), keys past 256-key
   * tiles and split key chunks (S up to 2100); cut down to REF_WORK. */
  int big = 0;
  if (L == 5 && fz_chance(&in, 32))
    L = fz_range(&in, 5, 300), big = 1;
  if (S == 5 && fz_chance(&in, 32))
    S = fz_chance(&in, 64) ? fz_range(&in, 2048, 2100) : fz_range(&in, 5, 600), big = 1;
  while (big && L > 5 && (double)B * (double)L * (double)S * (double)E * (double)(E + 2) > REF_WORK)
    L /= 2;
  while (big && S > 5 && (double)B * (double)L * (double)S * (double)E * (double)(E + 2) > REF_WORK)
    S /= 2;
  int64_t max_elems = big || E > 9 ? MAX_ELEMS_BIG : MAX_ELEMS;
  int64_t kf = r.kdim, vf = r.vdim, of = E;
  int noise = fz_chance(&in, 10); /* a shape the call must refuse */
  if (noise) { /* one feature count wrong */
    int64_t *f[3] = {&kf, &vf, &of};
    *f[fz_u8(&in) % 3] += 1;
  }
  /* Self-attention: the same handle three times (torch's common call). */
  int self = fz_chance(&in, 64) && kf == E && vf == E;
  if (self)
    S = L;
  int64_t dq[3] = {L, B, E}, dk[3] = {S, B, kf}, dv[3] = {S, B, vf}, dout[3] = {L, B, of};
  if (r.bf)
    dq[0] = B, dq[1] = L, dk[0] = dv[0] = B, dk[1] = dv[1] = S, dout[0] = B, dout[1] = L;
  fz_tensor q, k, v, out, kpm, am, w;
  fz_make_tensor(&in, ctx, &q, fz_float_dtype(&in), 3, dq, FZ_INPUT);
  if (self) {
    k = q, v = q;
  } else {
    fz_make_tensor(&in, ctx, &k, fz_float_dtype(&in), 3, dk, FZ_INPUT);
    fz_make_tensor(&in, ctx, &v, fz_float_dtype(&in), 3, dv, FZ_INPUT);
  }
  fz_make_tensor(&in, ctx, &out, fz_float_dtype(&in), 3, dout, FZ_OUTPUT);
  memset(&kpm, 0, sizeof kpm);
  memset(&am, 0, sizeof am);
  memset(&w, 0, sizeof w);
  int has_kpm = fz_chance(&in, 100), has_am = fz_chance(&in, 120);
  if (has_kpm) {
    int64_t d[2] = {B, S};
    if (fz_chance(&in, 6))
      d[1] = d[1] >= 0 && d[1] < 1000 ? d[1] + 1 : 1, noise = d[1] != S;
    fz_make_tensor(&in, ctx, &kpm, fz_chance(&in, 160) ? ATTN_DTYPE_U8 : ATTN_DTYPE_F32, 2, d,
                   FZ_INPUT);
  }
  if (has_am) {
    int32_t nd = fz_chance(&in, 170) ? 2 : 3;
    int64_t d[3] = {fz_mul_sat(B, H), L, S};
    if (nd == 3 && fz_chance(&in, 6))
      d[0] = d[0] >= 0 && d[0] < 1000 ? d[0] + 1 : 1, noise = 1;
    fz_make_tensor(&in, ctx, &am, fz_chance(&in, 128) ? ATTN_DTYPE_U8 : ATTN_DTYPE_F32, nd,
                   nd == 3 ? d : d + 1, FZ_INPUT);
  }
  attn_mha_torch_forward_params p, eff;
  attn_mha_torch_forward_params_init(&p);
  p.need_weights = fz_chance(&in, 150);
  p.per_head_weights = fz_chance(&in, 128);
  p.is_causal = fz_chance(&in, 80);
  p.reserved_ = fz_chance(&in, 4);
  int has_w = fz_chance(&in, 6) ? !p.need_weights : p.need_weights;
  if (has_w) {
    int64_t d4[4] = {B, H, L, S}, d3[3] = {B, L, S};
    int32_t nd = p.per_head_weights ? 4 : 3;
    if (fz_chance(&in, 6))
      nd = 7 - nd, noise = 1;
    fz_make_tensor(&in, ctx, &w, ATTN_DTYPE_F32, nd, nd == 4 ? d4 : d3, FZ_OUTPUT);
  }
  unsigned char raw[sizeof p + 32];
  memset(raw, 0, sizeof raw);
  memcpy(raw, &p, sizeof p);
  size_t ss = fz_struct_size(&in, raw, sizeof p, sizeof raw);
  memcpy(raw, &ss, sizeof ss);
  attn_mha_torch_forward_params_init(&eff);
  int readable = fz_effective_params(&eff, sizeof eff, raw, ss);
  int tensors_ok = q.t && (self || (k.t && v.t)) && out.t && (!has_kpm || kpm.t) &&
                   (!has_am || am.t) && (!has_w || w.t);
  if (tensors_ok && fz_numel(&out) <= max_elems && (!has_w || fz_numel(&w) <= max_elems) &&
      fz_numel(&q) <= max_elems && fz_numel(&k) <= max_elems && fz_numel(&v) <= max_elems &&
      (!has_am || fz_numel(&am) <= max_elems) && (!has_kpm || fz_numel(&kpm) <= max_elems)) {
    if (fz_chance(&in, 10))
      a.fail_at = a.allocs + 1;
    attn_status st = attn_mha_torch_forward(ctx, m, q.t, k.t, v.t, has_kpm ? kpm.t : NULL,
                                            has_am ? am.t : NULL, (const void *)raw, out.t,
                                            has_w ? w.t : NULL);
    a.fail_at = 0;
    if (st != ATTN_OK) {
      FZ_CHECK(fz_unchanged(&out) && (!has_w || fz_unchanged(&w)),
               "output written by a failed call (%s)", attn_status_string(st));
      FZ_CHECK(attn_ctx_last_error(ctx)[0], "no message");
    } else {
      FZ_CHECK(readable && !eff.reserved_ && (eff.need_weights != 0) == has_w && !noise &&
                   !fz_broadcasts(&out) &&
                   (!has_w || !fz_broadcasts(&w)),
               "bad arguments accepted");
      fz_check_gaps(&out, "out");
      if (has_w)
        fz_check_gaps(&w, "out_weights");
      int judge = moderate && tensor_moderate(&q, 0) && tensor_moderate(&k, 0) &&
                  tensor_moderate(&v, 0) && (!has_kpm || tensor_moderate(&kpm, 1)) &&
                  (!has_am || tensor_moderate(&am, 1));
      judge = judge && fz_numel(&out) > 0 && S <= max_elems; /* else S may be absurd */
      double *ro = malloc((size_t)(E + 1) * sizeof *ro);
      double *rw = malloc((size_t)(judge ? H * S + 1 : 1) * sizeof *rw);
      double *kp = malloc((size_t)(judge ? S * E + 1 : 1) * sizeof *kp);
      double *vp = malloc((size_t)(judge ? S * E + 1 : 1) * sizeof *vp);
      FZ_CHECK(ro && rw && kp && vp, "malloc");
      for (int64_t b = 0; judge && b < B; b++) {
        project_kv(&r, &k, &v, S, b, kp, vp);
        for (int64_t i = 0; i < L; i++) {
          reference(&r, &q, kp, vp, has_kpm ? &kpm : NULL, has_am ? &am : NULL,
                    eff.is_causal != 0, B, S, b, i, ro, rw);
          for (int64_t e = 0; e < E; e++) {
            double got = r.bf ? el3(&out, b, i, e) : el3(&out, i, b, e);
            if (out.dtype == ATTN_DTYPE_F16 && fabs(ro[e]) > 65504)
              continue; /* past f16's range: may be Inf */
            FZ_CHECK(fabs(got - ro[e]) <= 1e-3 * (1 + fabs(ro[e])) +
                                             fz_half_ulp(out.dtype) * fabs(ro[e]),
                     "out[b %lld, i %lld, e %lld] = %.9g but torch's formula gives %.9g",
                     (long long)b, (long long)i, (long long)e, got, ro[e]);
          }
          for (int64_t j = 0; has_w && j < S; j++) {
            double want = 0;
            for (int64_t h = 0; h < H; h++)
              want += rw[h * S + j];
            for (int64_t h = 0; h < H; h++) {
              double got = !eff.per_head_weights
                               ? fz_read(&w, b * w.eff[0] + i * w.eff[1] + j * w.eff[2])
                               : fz_read(&w, b * w.eff[0] + h * w.eff[1] + i * w.eff[2] +
                                                 j * w.eff[3]);
              double ref = !eff.per_head_weights ? want / (double)H : rw[h * S + j];
              FZ_CHECK(fabs(got - ref) <= 1e-4, "weights[b %lld, h %lld, i %lld, j %lld] = "
                                                "%.9g but %.9g",
                       (long long)b, (long long)h, (long long)i, (long long)j, got, ref);
            }
          }
        }
      }
      free(ro);
      free(rw);
      free(kp);
      free(vp);
    }
  }
  fz_tensor_release(&q);
  if (!self) {
    fz_tensor_release(&k);
    fz_tensor_release(&v);
  }
  fz_tensor_release(&out);
  if (has_kpm)
    fz_tensor_release(&kpm);
  if (has_am)
    fz_tensor_release(&am);
  if (has_w)
    fz_tensor_release(&w);
  free_layer(&r);
  fz_ctx_destroy(ctx, &a);
  return 0;
}
