/* ONNX Attention (opset 23/24) run through attn_sdpa the way an ONNX runtime
 * would map it, against a float64 reference written here from the operator
 * specification (onnx/defs/nn, docs/Operators.md "Attention"):
 *
 *   - Q, K, V 4-D [B, H, L, D], or 3-D [B, L, H*D] with q_num_heads and
 *     kv_num_heads (passed to libattn as strided [B, H, L, D] views);
 *   - past_key / past_value [B, Hkv, P, D] are concatenated in front of K, V
 *     (present_key / present_value, which the runtime writes anyway);
 *   - attn_mask, boolean (True = attend) or float (added), broadcast to
 *     [B, Hq, Lq, T]; a mask whose last dim M is shorter than the total key
 *     count T counts as padded with -inf / False, so keys j >= M are hidden;
 *   - is_causal: query i of batch b sees keys j <= i + offset_b, with offset_b
 *     the number of valid keys before the query block: the past length P
 *     with past_key, nonpad_kv_seqlen[b] - Lq with nonpad_kv_seqlen and no
 *     past, else 0;
 *   - nonpad_kv_seqlen [B]: keys j >= nonpad_kv_seqlen[b] are hidden;
 *   - softcap before the mask, so a -inf stays -inf; scale default 1/sqrt(D);
 *   - grouped-query heads: query head h reads kv head h / (Hq / Hkv).
 *
 * Where the ONNX reference implementation (onnx/reference/ops/op_attention.py)
 * disagrees with that text, the text is followed, and the cases say so:
 *   - is_causal with a mask whose query axis is 1 ([.., 1, T]): the reference
 *     adds the [Lq, T - P] causal triangle into the mask in place, which
 *     cannot broadcast the mask's query axis of 1 up to Lq (numpy raises, or
 *     with Lq = 1 only row 0 is handled); the spec applies the causal mask
 *     to every query row whatever the mask's broadcast shape;
 *   - nonpad_kv_seqlen with batch > 1 and no attn_mask: the reference builds
 *     a [1, 1, Lq, T] bias and adds the [B, 1, 1, T] padding mask in place,
 *     which cannot broadcast B > 1; the spec hides keys per batch.
 * A row with no visible key is NaN in the reference (0/0); libattn gives
 * zeros (documented in attn.h); the cases below avoid such rows except where
 * they check exactly that. */
#include "test_util.h"

#include "ref_common.h"

static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p)
    fail_msg("out of memory");
  return p;
}

typedef struct {
  const char *name;
  int rank3;            /* 3-D Q, K, V */
  int64_t B, Hq, Hkv, Lq, Lk, P, D, Dv;
  int causal;
  int mask_kind;        /* 0 none, 1 float, 2 bool */
  int mask_ndim;        /* 2: [Lq|1, M], 3: [Hq|1, Lq|1, M], 4: [B|1, Hq|1, Lq|1, M] */
  int mask_q1;          /* the mask's query axis is 1 */
  int64_t M;            /* mask's last dim (<= T); 0 = T */
  int nonpad;           /* use nonpad_kv_seqlen */
  float scale;          /* 0 = default */
  float softcap;
} onnx_case;

/* The inputs of one case, in ONNX's own layouts. */
typedef struct {
  float *q, *k, *v, *pk, *pv; /* Q, K, V as ONNX has them; past [B, Hkv, P, D] */
  float *mask;                /* float mask, or NULL */
  uint8_t *bmask;             /* bool mask, or NULL */
  int64_t mdims[4];           /* the mask's dims (mask_ndim of them) */
  int64_t *nonpad;            /* [B] or NULL */
} onnx_inputs;

static int64_t T_of(const onnx_case *c) { return c->P + c->Lk; }

/* Q element (b, h, i, d) of the ONNX input, 3-D or 4-D. */
static double q_at(const onnx_case *c, const onnx_inputs *in, int64_t b, int64_t h, int64_t i,
                   int64_t d) {
  if (c->rank3)
    return in->q[(b * c->Lq + i) * c->Hq * c->D + h * c->D + d];
  return in->q[((b * c->Hq + h) * c->Lq + i) * c->D + d];
}

/* Key/value element (b, g, j, d) of present = concat(past, new) on the key axis. */
static double kv_at(const onnx_case *c, const float *past, const float *cur, int64_t dim,
                    int64_t b, int64_t g, int64_t j, int64_t d) {
  if (j < c->P)
    return past[((b * c->Hkv + g) * c->P + j) * dim + d];
  j -= c->P;
  if (c->rank3)
    return cur[(b * c->Lk + j) * c->Hkv * dim + g * dim + d];
  return cur[((b * c->Hkv + g) * c->Lk + j) * dim + d];
}

/* The mask's value at (b, h, i, j < M), broadcast by NumPy rules. */
static int64_t mask_index(const onnx_case *c, const onnx_inputs *in, int64_t b, int64_t h,
                          int64_t i, int64_t j) {
  int64_t idx4[4] = {b, h, i, j}, off = 0, stride = 1;
  for (int a = c->mask_ndim - 1; a >= 0; a--) {
    int64_t full_axis = 4 - c->mask_ndim + a;
    int64_t x = in->mdims[a] == 1 ? 0 : idx4[full_axis];
    off += x * stride;
    stride *= in->mdims[a];
  }
  return off;
}

/* The specification in float64: Y [B, Hq, Lq, Dv], and (when qk is not
 * NULL) qk_matmul_output [B, Hq, Lq, T] in mode qk_mode: 0 the scaled
 * product, 1 after the soft-cap, 2 after soft-cap and bias (mask, causal,
 * padding: -inf where hidden), 3 the softmax. */
static void onnx_reference(const onnx_case *c, const onnx_inputs *in, double *y, int qk_mode,
                           double *qk) {
  int64_t T = T_of(c), M = c->M ? c->M : T, G = c->Hq / c->Hkv;
  double scale = c->scale ? c->scale : 1.0 / sqrt((double)c->D);
  double *s = xmalloc((size_t)T * sizeof *s);
  for (int64_t b = 0; b < c->B; b++)
    for (int64_t h = 0; h < c->Hq; h++)
      for (int64_t i = 0; i < c->Lq; i++) {
        int64_t g = h / G;
        int64_t offset = c->P ? c->P : c->nonpad ? in->nonpad[b] - c->Lq : 0;
        double top = -INFINITY;
        for (int64_t j = 0; j < T; j++) {
          double dot = 0;
          for (int64_t d = 0; d < c->D; d++)
            dot += q_at(c, in, b, h, i, d) * kv_at(c, in->pk, in->k, c->D, b, g, j, d);
          double v = scale * dot;
          double *qk_at = qk ? qk + ((b * c->Hq + h) * c->Lq + i) * T + j : NULL;
          if (qk_at && qk_mode == 0)
            *qk_at = v;
          if (c->softcap > 0)
            v = c->softcap * tanh(v / c->softcap);
          if (qk_at && qk_mode == 1)
            *qk_at = v;
          double bias = 0;
          if (j >= M) {
            bias = -INFINITY; /* the mask padded to T */
          } else if (c->mask_kind == 1) {
            bias = in->mask[mask_index(c, in, b, h, i, j)];
          } else if (c->mask_kind == 2) {
            bias = in->bmask[mask_index(c, in, b, h, i, j)] ? 0 : -INFINITY;
          }
          if (c->causal && j > i + offset)
            bias = -INFINITY;
          if (c->nonpad && j >= in->nonpad[b])
            bias = -INFINITY;
          s[j] = v + bias;
          if (qk && qk_mode == 2)
            qk[((b * c->Hq + h) * c->Lq + i) * T + j] = s[j];
          if (s[j] > top)
            top = s[j];
        }
        double *out = y + ((b * c->Hq + h) * c->Lq + i) * c->Dv;
        for (int64_t d = 0; d < c->Dv; d++)
          out[d] = 0;
        if (top == -INFINITY) {
          if (qk && qk_mode == 3)
            for (int64_t j = 0; j < T; j++)
              qk[((b * c->Hq + h) * c->Lq + i) * T + j] = 0;
          continue; /* nothing visible: libattn's zeros (the reference: NaN) */
        }
        double sum = 0;
        for (int64_t j = 0; j < T; j++)
          sum += s[j] = exp(s[j] - top);
        if (qk && qk_mode == 3)
          for (int64_t j = 0; j < T; j++)
            qk[((b * c->Hq + h) * c->Lq + i) * T + j] = s[j] / sum;
        for (int64_t j = 0; j < T; j++)
          for (int64_t d = 0; d < c->Dv; d++)
            out[d] += s[j] / sum * kv_at(c, in->pv, in->v, c->Dv, b, g, j, d);
      }
  free(s);
}

/* The runtime's side: the ONNX inputs mapped onto attn_sdpa. Y comes back in
 * the [B, Hq, Lq, Dv] order for comparison (for 3-D it is written through a
 * [B, Lq, Hq*Dv] view, as ONNX's 3-D output). */
static void onnx_via_libattn(attn_ctx *ctx, const onnx_case *c, const onnx_inputs *in,
                             float *y_bhld, int qk_mode, float *qk) {
  int64_t B = c->B, Hq = c->Hq, Hkv = c->Hkv, Lq = c->Lq, T = T_of(c), D = c->D, Dv = c->Dv;
  /* present_key / present_value [B, Hkv, T, D]: past then the new keys. */
  float *pk = xmalloc((size_t)(B * Hkv * T * D) * sizeof *pk);
  float *pv = xmalloc((size_t)(B * Hkv * T * Dv) * sizeof *pv);
  for (int64_t b = 0; b < B; b++)
    for (int64_t g = 0; g < Hkv; g++)
      for (int64_t j = 0; j < T; j++) {
        for (int64_t d = 0; d < D; d++)
          pk[((b * Hkv + g) * T + j) * D + d] = (float)kv_at(c, in->pk, in->k, D, b, g, j, d);
        for (int64_t d = 0; d < Dv; d++)
          pv[((b * Hkv + g) * T + j) * Dv + d] = (float)kv_at(c, in->pv, in->v, Dv, b, g, j, d);
      }
  float *y = xmalloc((size_t)(B * Hq * Lq * Dv) * sizeof *y);
  int64_t qd[4] = {B, Hq, Lq, D}, q3s[4] = {Lq * Hq * D, D, Hq * D, 1};
  int64_t yd[4] = {B, Hq, Lq, Dv}, y3s[4] = {Lq * Hq * Dv, Dv, Hq * Dv, 1};
  attn_tensor *tq = tu_wrap(ctx, in->q, (size_t)(B * Hq * Lq * D), 4, qd, c->rank3 ? q3s : NULL);
  attn_tensor *ty = tu_wrap(ctx, y, (size_t)(B * Hq * Lq * Dv), 4, yd, c->rank3 ? y3s : NULL);
  /* A mask shorter than T hides keys M..T-1 of every row: K and V are
   * passed as views of their first M keys (no copy). With qk_matmul_output
   * every key's logit is wanted: the runtime pads the mask to T instead. */
  int64_t M = c->M && !qk ? c->M : T;
  float *padded = NULL;
  uint8_t *bpadded = NULL;
  int64_t pdims[4];
  if (qk && c->M && c->mask_kind) {
    memcpy(pdims, in->mdims, sizeof pdims);
    pdims[c->mask_ndim - 1] = T;
    size_t rows = 1;
    for (int a = 0; a < c->mask_ndim - 1; a++)
      rows *= (size_t)pdims[a];
    padded = xmalloc(rows * (size_t)T * sizeof *padded);
    bpadded = xmalloc(rows * (size_t)T);
    for (size_t r = 0; r < rows; r++)
      for (int64_t j = 0; j < T; j++) {
        int in_mask = j < c->M;
        padded[r * (size_t)T + (size_t)j] =
            !in_mask ? -INFINITY : c->mask_kind == 1 ? in->mask[r * (size_t)c->M + (size_t)j] : 0;
        bpadded[r * (size_t)T + (size_t)j] =
            in_mask && c->mask_kind == 2 ? in->bmask[r * (size_t)c->M + (size_t)j] : 0;
      }
  }
  int64_t kd[4] = {B, Hkv, M, D}, ks[4] = {Hkv * T * D, T * D, D, 1};
  int64_t vd[4] = {B, Hkv, M, Dv}, vs[4] = {Hkv * T * Dv, T * Dv, Dv, 1};
  attn_tensor *tk = tu_wrap(ctx, pk, (size_t)(B * Hkv * T * D), 4, kd, ks);
  attn_tensor *tv = tu_wrap(ctx, pv, (size_t)(B * Hkv * T * Dv), 4, vd, vs);
  attn_sdpa_params p;
  attn_sdpa_params_init(&p);
  p.scale = c->scale;
  p.softcap = c->softcap;
  int64_t *offsets = xmalloc((size_t)B * sizeof *offsets), *lens = NULL;
  if (c->causal) {
    p.causal = 1;
    for (int64_t b = 0; b < B; b++)
      offsets[b] = c->P ? c->P : c->nonpad ? in->nonpad[b] - Lq : 0;
    p.q_offsets = offsets;
  }
  if (c->nonpad) {
    lens = xmalloc((size_t)B * sizeof *lens);
    for (int64_t b = 0; b < B; b++)
      lens[b] = in->nonpad[b] < M ? in->nonpad[b] : M;
    p.kv_lens = lens;
  }
  size_t mn = 1;
  const int64_t *md = padded ? pdims : in->mdims;
  for (int a = 0; a < c->mask_ndim; a++)
    mn *= (size_t)md[a];
  if (c->mask_kind == 1) {
    p.mask = tu_wrap(ctx, padded ? padded : in->mask, mn, c->mask_ndim, md, NULL);
  } else if (c->mask_kind == 2) {
    attn_tensor *tb = NULL;
    assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_U8, c->mask_ndim, md, NULL,
                               bpadded ? bpadded : in->bmask, mn, &tb));
    p.bool_mask = tb;
  }
  int64_t qkd[4] = {B, Hq, Lq, T};
  if (qk && qk_mode == 3) {
    p.weights = tu_wrap(ctx, qk, (size_t)(B * Hq * Lq * T), 4, qkd, NULL);
  } else if (qk) {
    p.logits = tu_wrap(ctx, qk, (size_t)(B * Hq * Lq * T), 4, qkd, NULL);
    p.logits_stage = qk_mode;
  }
  attn_status st = attn_sdpa(ctx, tq, tk, tv, ty, &p);
  if (st != ATTN_OK)
    fail_msg("%s: attn_sdpa: %s", c->name, attn_ctx_last_error(ctx));
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < Hq; h++)
      for (int64_t i = 0; i < Lq; i++)
        for (int64_t d = 0; d < Dv; d++)
          y_bhld[((b * Hq + h) * Lq + i) * Dv + d] =
              y[b * (c->rank3 ? y3s[0] : Hq * Lq * Dv) + h * (c->rank3 ? y3s[1] : Lq * Dv) +
                i * (c->rank3 ? y3s[2] : Dv) + d];
  free(pk), free(pv), free(y), free(offsets), free(lens), free(padded), free(bpadded);
}

static void run_case(const onnx_case *c, uint64_t seed, const int64_t *nonpad) {
  tu_rng rng = {seed};
  int64_t B = c->B, T = T_of(c), M = c->M ? c->M : T;
  onnx_inputs in;
  memset(&in, 0, sizeof in);
  size_t nq = (size_t)(B * c->Hq * c->Lq * c->D), nk = (size_t)(B * c->Hkv * c->Lk * c->D);
  size_t nv = (size_t)(B * c->Hkv * c->Lk * c->Dv);
  size_t npk = (size_t)(B * c->Hkv * c->P * c->D), npv = (size_t)(B * c->Hkv * c->P * c->Dv);
  in.q = xmalloc(nq * 4), in.k = xmalloc(nk * 4), in.v = xmalloc(nv * 4);
  in.pk = xmalloc(npk * 4), in.pv = xmalloc(npv * 4);
  tu_fill(&rng, in.q, nq, -1, 1), tu_fill(&rng, in.k, nk, -1, 1), tu_fill(&rng, in.v, nv, -1, 1);
  tu_fill(&rng, in.pk, npk, -1, 1), tu_fill(&rng, in.pv, npv, -1, 1);
  if (c->mask_kind) {
    int64_t full[4] = {B, c->Hq, c->mask_q1 ? 1 : c->Lq, M};
    for (int a = 0; a < c->mask_ndim; a++)
      in.mdims[a] = full[4 - c->mask_ndim + a];
    size_t mn = 1;
    for (int a = 0; a < c->mask_ndim; a++)
      mn *= (size_t)in.mdims[a];
    if (c->mask_kind == 1) {
      in.mask = xmalloc(mn * 4);
      tu_fill(&rng, in.mask, mn, -2, 1);
      for (size_t i = 0; i < mn; i++)
        if (tu_next(&rng) % 5 == 0 && i % (size_t)M != 0) /* key 0 stays visible */
          in.mask[i] = -INFINITY;
    } else {
      in.bmask = xmalloc(mn);
      for (size_t i = 0; i < mn; i++)
        in.bmask[i] = i % (size_t)M == 0 || tu_next(&rng) % 4 != 0;
    }
  }
  if (c->nonpad)
    in.nonpad = (int64_t *)nonpad;
  size_t ny = (size_t)(B * c->Hq * c->Lq * c->Dv);
  double *want = xmalloc(ny * sizeof *want);
  float *got = xmalloc(ny * sizeof *got);
  onnx_reference(c, &in, want, -1, NULL);
  for (int32_t threads = 1; threads <= 2; threads++) {
    attn_ctx *ctx = tu_ctx(threads);
    onnx_via_libattn(ctx, c, &in, got, -1, NULL);
    double err = ref_max_rel_err(got, want, ny, 1.0);
    if (!(err <= 2e-5))
      fail_msg("%s (%d threads): max error %.3g", c->name, (int)threads, err);
    /* qk_matmul_output, every mode: logits stages 0-2, the weights for 3. */
    size_t nqk = (size_t)(B * c->Hq * c->Lq * T_of(c));
    double *want_qk = xmalloc(nqk * sizeof *want_qk);
    float *got_qk = xmalloc(nqk * sizeof *got_qk);
    for (int mode = 0; mode <= 3; mode++) {
      onnx_reference(c, &in, want, mode, want_qk);
      onnx_via_libattn(ctx, c, &in, got, mode, got_qk);
      double e1 = ref_max_rel_err(got, want, ny, 1.0);
      double e2 = ref_max_rel_err(got_qk, want_qk, nqk, 1.0);
      if (!(e1 <= 2e-5) || !(e2 <= 2e-5))
        fail_msg("%s (%d threads) qk_matmul_output_mode %d: Y error %.3g, qk error %.3g",
                 c->name, (int)threads, mode, e1, e2);
    }
    free(want_qk), free(got_qk);
    attn_ctx_destroy(ctx);
  }
  free(in.q), free(in.k), free(in.v), free(in.pk), free(in.pv), free(in.mask), free(in.bmask);
  free(want), free(got);
}

static void onnx_attention_cases(void **state) {
  (void)state;
  static const int64_t np3[3] = {5, 2, 7}, np2[2] = {4, 1}, np1[1] = {3};
  /* name, rank3, B, Hq, Hkv, Lq, Lk, P, D, Dv, causal, mask kind, mask ndim, q1, M,
   * nonpad, scale, softcap */
  const struct {
    onnx_case c;
    const int64_t *nonpad;
  } cases[] = {
      {{"4-D, no mask", 0, 2, 2, 2, 5, 7, 0, 8, 8, 0, 0, 0, 0, 0, 0, 0, 0}, NULL},
      {{"3-D, grouped heads, value dim differs", 1, 2, 4, 2, 5, 6, 0, 8, 4, 0, 0, 0, 0, 0, 0,
        0, 0},
       NULL},
      {{"4-D causal, Lq < Lk: top-left (offset 0)", 0, 1, 2, 1, 3, 6, 0, 8, 8, 1, 0, 0, 0, 0, 0,
        0, 0},
       NULL},
      {{"past key/value, causal: offset = past length", 0, 2, 4, 2, 3, 3, 5, 8, 8, 1, 0, 0, 0, 0,
        0, 0, 0},
       NULL},
      {{"3-D past key/value, decode step (Lq = 1), causal", 1, 2, 2, 1, 1, 1, 9, 16, 16, 1, 0,
        0, 0, 0, 0, 0, 0},
       NULL},
      {{"float mask [Lq, T] with scale and softcap", 0, 2, 2, 2, 4, 6, 0, 8, 8, 0, 1, 2, 0, 0,
        0, 0.5f, 2.0f},
       NULL},
      {{"bool mask [B, Hq, Lq, T], causal, past", 0, 2, 2, 2, 3, 3, 2, 8, 8, 1, 2, 4, 0, 0, 0,
        0, 0},
       NULL},
      {{"float mask shorter than T (M < T)", 0, 2, 2, 1, 4, 5, 3, 8, 8, 0, 1, 3, 0, 6, 0, 0,
        0},
       NULL},
      {{"bool mask shorter than T, causal, past", 1, 1, 2, 2, 3, 2, 4, 8, 8, 1, 2, 2, 0, 5, 0,
        0, 0},
       NULL},
      /* The reference cannot add the causal triangle into a mask whose
       * query axis is 1; the spec masks every query row. */
      {{"causal with a mask [1, T] (query axis 1)", 0, 2, 2, 2, 4, 4, 3, 8, 8, 1, 1, 2, 1, 0, 0,
        0, 0},
       NULL},
      {{"causal with a bool mask [B, 1, 1, T]", 1, 2, 2, 2, 3, 5, 0, 8, 8, 1, 2, 4, 1, 0, 0, 0,
        0},
       NULL},
      /* The reference cannot broadcast the per-batch padding over B > 1
       * without a mask; the spec hides keys per batch. */
      {{"nonpad_kv_seqlen, batch 3, no mask", 0, 3, 2, 2, 2, 8, 0, 8, 8, 0, 0, 0, 0, 0, 1, 0,
        0},
       np3},
      {{"nonpad_kv_seqlen, batch 3, causal (offset nonpad[b] - Lq)", 0, 3, 2, 1, 2, 8, 0, 8, 8,
        1, 0, 0, 0, 0, 1, 0, 0},
       np3},
      {{"nonpad_kv_seqlen, batch 2, 3-D, float mask", 1, 2, 2, 2, 1, 6, 0, 8, 8, 0, 1, 4, 0, 0,
        1, 0, 0},
       np2},
      {{"nonpad_kv_seqlen and a shorter mask", 0, 1, 1, 1, 2, 6, 0, 8, 8, 0, 2, 2, 0, 4, 1, 0,
        0},
       np1},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    run_case(&cases[i].c, 1000 + i, cases[i].nonpad);
}

/* A row that sees nothing: the reference divides 0 by 0 (NaN); libattn and
 * this test's reference give zeros, as attn.h documents. */
static void onnx_row_with_nothing_visible(void **state) {
  (void)state;
  onnx_case c = {"nonpad 0", 0, 2, 1, 1, 2, 4, 0, 4, 4, 0, 0, 0, 0, 0, 1, 0, 0};
  static const int64_t np[2] = {0, 4};
  run_case(&c, 77, np);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(onnx_attention_cases),
      cmocka_unit_test(onnx_row_with_nothing_visible),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
