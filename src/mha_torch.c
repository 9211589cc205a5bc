/* The PyTorch nn.MultiheadAttention form of the attention layer (torch
 * 1.13 semantics, eval mode). The layer object, its weights and their
 * set / wrap / get calls are mha.c's; this file has the form's weight
 * table, its creation and its forward:
 *
 *   q, k, v projections over all tokens (gemm.h): one product each, or one
 *   product for all three when query, key and value are the same view and
 *   the layer has the stacked in_proj_weight (self-attention: its rows
 *   [q | k | v] side by side); in the inputs'
 *   own token order (l * B + b sequence first, b * L + l batch first), so
 *   the [B, H, L, D] views SDPA reads are strides of those rows; the two
 *   masks merged into one additive mask (torch's own merge: a boolean
 *   True hides, a float is added); attention through attn__sdpa_run with
 *   its weights output when asked; output projection into out.
 *
 * Every buffer is a slice of the context's workspace, reserved once with
 * the attention's: a warm context allocates nothing. */
#include "check.h"
#include "convert.h"
#include "gemm.h"
#include "mha.h"
#include "sdpa.h"

#include <math.h>
#include <string.h>

bool attn__mha_torch_shape(const attn_mha *m, int32_t which, int64_t *rows, int64_t *cols) {
  int64_t E = m->E, r = 0, c = 0;
  switch (which) {
  case ATTN_MHA_IN_PROJ_WEIGHT:
    r = m->in_proj ? 3 * E : 0, c = E;
    break;
  case ATTN_MHA_Q_WEIGHT:
  case ATTN_MHA_K_WEIGHT:
  case ATTN_MHA_V_WEIGHT:
    r = m->in_proj ? 0 : E;
    c = which == ATTN_MHA_Q_WEIGHT ? E : which == ATTN_MHA_K_WEIGHT ? m->kdim : m->vdim;
    break;
  case ATTN_MHA_O_WEIGHT:
    r = E, c = E;
    break;
  case ATTN_MHA_IN_PROJ_BIAS:
    r = m->out_bias ? 1 : 0, c = 3 * E;
    break;
  case ATTN_MHA_O_BIAS:
    r = m->out_bias ? 1 : 0, c = E;
    break;
  default:
    break;
  }
  if (rows)
    *rows = r;
  if (cols)
    *cols = c;
  return r > 0;
}

void attn_mha_torch_params_init(attn_mha_torch_params *p) {
  if (!p)
    return;
  memset(p, 0, sizeof *p);
  p->struct_size = sizeof *p;
}

void attn_mha_torch_forward_params_init(attn_mha_torch_forward_params *p) {
  if (!p)
    return;
  memset(p, 0, sizeof *p);
  p->struct_size = sizeof *p;
}

static attn_status create_impl(attn_ctx *ctx, const attn_mha_torch_params *params,
                               attn_mha **out) {
  attn_status st;
  if (!params || !out)
    return attn__fail(ctx, ATTN_ERR_NULL_ARG, "%s is NULL", params ? "out" : "params");
  attn_mha_torch_params p;
  attn_mha_torch_params_init(&p);
  if ((st = attn__read_params(ctx, &p, sizeof p, params)) != ATTN_OK)
    return st;
  if (p.add_bias_kv || p.add_zero_attn)
    return attn__fail(ctx, ATTN_ERR_UNSUPPORTED,
                      "params.add_bias_kv and add_zero_attn are not supported (must be 0)");
  int64_t E = p.embed_dim, H = p.num_heads;
  int64_t kdim = p.kdim ? p.kdim : E, vdim = p.vdim ? p.vdim : E;
  if (E < 1 || H < 1 || kdim < 1 || vdim < 1)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "params.embed_dim = %lld, num_heads = %lld must be >= 1 and kdim = "
                      "%lld, vdim = %lld >= 0",
                      (long long)E, (long long)H, (long long)p.kdim, (long long)p.vdim);
  if (E % H)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "params.embed_dim = %lld is not a multiple of num_heads = %lld",
                      (long long)E, (long long)H);
  /* 3E rows of in_proj_weight, and every leading dimension, fit in int. */
  if (E > INT32_MAX / 3 || kdim > INT32_MAX || vdim > INT32_MAX)
    return attn__fail(ctx, ATTN_ERR_OVERFLOW,
                      "embed_dim, kdim or vdim exceeds what BLAS takes");
  attn_mha *m = attn__alloc(ctx, sizeof *m);
  if (!m)
    return attn__fail(ctx, ATTN_ERR_NO_MEMORY, "cannot allocate the layer");
  memset(m, 0, sizeof *m);
  m->ctx = ctx;
  m->E = E, m->Hq = m->Hkv = H, m->D = E / H;
  m->qkv_bias = m->out_bias = p.no_bias == 0;
  m->torch = true;
  m->batch_first = p.batch_first != 0;
  m->kdim = kdim, m->vdim = vdim;
  m->in_proj = kdim == E && vdim == E; /* torch's _qkv_same_embed_dim */
  if ((st = attn__mha_add(ctx, m)) != ATTN_OK)
    return st;
  *out = m;
  return ATTN_OK;
}

/* ---- forward ---- */

/* The rows of a 3-D tensor [A0, A1, F] taken in (i0, i1) order as one
 * matrix [A0 * A1, F] of row stride *ld, when the strides allow; false if
 * they must be gathered first. */
static bool as_rows(const attn_tensor *t, int64_t *ld) {
  if (t->dtype != ATTN_DTYPE_F32)
    return false; /* half: converted rows */
  int64_t a0 = t->dims[0], a1 = t->dims[1], f = t->dims[2];
  if (f > 1 && t->strides[2] != 1)
    return false;
  int64_t s = a1 > 1 ? t->strides[1] : a0 > 1 ? t->strides[0] : f;
  if (a0 > 1 && a1 > 1 && t->strides[0] != a1 * s)
    return false;
  if (s < f || s > INT32_MAX)
    return false;
  *ld = s;
  return true;
}

void attn__mha_copy_rows(const attn_tensor *t, float *rows, bool scatter) {
  for (int64_t i0 = 0; i0 < t->dims[0]; i0++)
    for (int64_t i1 = 0; i1 < t->dims[1]; i1++) {
      float *r = rows + (i0 * t->dims[1] + i1) * t->dims[2];
      int64_t e = i0 * t->strides[0] + i1 * t->strides[1];
      for (int64_t f = 0; f < t->dims[2]; f++) {
        if (scatter)
          attn__elem_store(t->data, t->dtype, e + f * t->strides[2], r[f]);
        else
          r[f] = attn__elem_value(t->data, t->dtype, e + f * t->strides[2]);
      }
    }
}

/* One forward call: the checked operands and the buffers' sizes. */
typedef struct {
  attn_mha *m;
  const attn_tensor *query, *key, *value, *kpm, *am;
  attn_tensor *out, *outw;
  int64_t B, L, S, T, Tk; /* T = B * L query tokens, Tk = B * S key tokens */
  int64_t Bm, Hm, Lm;     /* the merged mask's [Bm, Hm, Lm, S] (0: no mask) */
  size_t n_mask, n_w;     /* its elements, and the per-head weights' [B, H, L, S] */
  bool average, causal;
  int64_t ldq, ldk, ldv, ldo; /* row strides of the inputs and out used in place */
  bool gq, gk, gv, go;        /* gather (scatter for out) through a buffer */
  bool fused;                 /* self-attention: one q, k, v product from query */
  int64_t ldp;                /* row stride of the projected q, k, v: E, or 3E fused */
  /* the products, planned: q, k, v (fused: g[0] all three), out g[3] */
  attn_gemm_problem g[4];
  /* workspace */
  float *xq, *xk, *xv, *q, *k, *v, *a, *y, *mask, *w;
} torch_call;

static void torch_layout(void *call, attn_ws_layout *l) {
  torch_call *c = call;
  const attn_mha *m = c->m;
  size_t T = (size_t)c->T, Tk = (size_t)c->Tk, E = (size_t)m->E;
  c->xq = attn__ws_take(l, c->gq ? T * E : 0, sizeof(float));
  bool sep = !c->fused; /* fused: key and value are query's rows, and q's */
  c->xk = attn__ws_take(l, sep && c->gk ? Tk * (size_t)m->kdim : 0, sizeof(float));
  c->xv = attn__ws_take(l, sep && c->gv ? Tk * (size_t)m->vdim : 0, sizeof(float));
  c->q = attn__ws_take(l, T * (size_t)c->ldp, sizeof(float));
  c->k = attn__ws_take(l, sep ? Tk * E : 0, sizeof(float));
  c->v = attn__ws_take(l, sep ? Tk * E : 0, sizeof(float));
  if (c->fused && c->q) /* (sizing: no buffer, no pointer arithmetic) */
    c->k = c->q + E, c->v = c->q + 2 * E;
  c->a = attn__ws_take(l, T * E, sizeof(float));
  c->y = attn__ws_take(l, c->go ? T * E : 0, sizeof(float));
  c->mask = attn__ws_take(l, c->n_mask, sizeof(float));
  c->w = attn__ws_take(l, c->n_w, sizeof(float));
  /* SDPA reads a mask and writes weights only through non-NULL pointers. */
  if (!c->Bm)
    c->mask = NULL;
  if (!c->outw)
    c->w = NULL;
}

/* Element (b, h, i, j) of the merged mask: torch's merge of attn_mask and
 * key_padding_mask, a boolean True as -inf (hiding whatever else is
 * added), floats added. */
static float merged_mask(const torch_call *c, int64_t b, int64_t h, int64_t i, int64_t j) {
  float v = 0;
  bool hide = false;
  if (c->am) {
    const attn_tensor *t = c->am;
    int64_t off = j * t->strides[t->ndim - 1] + i * t->strides[t->ndim - 2];
    if (t->ndim == 3)
      off += (b * c->m->Hq + h) * t->strides[0];
    if (t->dtype == ATTN_DTYPE_U8)
      hide = ((const uint8_t *)t->data)[off] != 0;
    else
      v = ((const float *)t->data)[off];
  }
  if (c->kpm) {
    int64_t off = b * c->kpm->strides[0] + j * c->kpm->strides[1];
    if (c->kpm->dtype == ATTN_DTYPE_U8)
      hide = hide || ((const uint8_t *)c->kpm->data)[off] != 0;
    else
      v += ((const float *)c->kpm->data)[off];
  }
  return hide ? -INFINITY : v;
}

static attn_status check_call(attn_ctx *ctx, torch_call *c,
                              const attn_mha_torch_forward_params *params) {
  const attn_mha *m = c->m;
  attn_status st;
  attn_mha_torch_forward_params p;
  attn_mha_torch_forward_params_init(&p);
  if ((st = attn__read_params(ctx, &p, sizeof p, params)) != ATTN_OK)
    return st;
  if (p.reserved_)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG, "params.reserved_ must be 0");
  if ((p.need_weights != 0) != (c->outw != NULL))
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "params.need_weights = %d but out_weights is %s: give out_weights "
                      "exactly when need_weights is set",
                      (int)p.need_weights, c->outw ? "set" : "NULL");
  c->average = p.per_head_weights == 0;
  c->causal = p.is_causal != 0;
  /* attn_mask's rank decides its spec: check it alone first. */
  const attn_operand amop[] = {{ATTN_OPERAND("attn_mask", c->am, ATTN_DT_F32 | ATTN_DT_U8, 2, 3),
                                .flags = ATTN_OPND_OPTIONAL}};
  if ((st = attn__check_operands(ctx, amop, 1, NULL)) != ATTN_OK)
    return st;
  enum { B = ATTN_SYM_B, L = ATTN_SYM_LQ, S = ATTN_SYM_LK, H = ATTN_SYM_HQ, X = ATTN_SYM_ANY };
  bool bf = m->batch_first;
  const uint8_t out = ATTN_OPND_OUTPUT, opt = ATTN_OPND_OPTIONAL;
  attn_operand ops[] = {
      {ATTN_OPERAND("query", c->query, ATTN_DT_FLOAT, 3, 3), .sym = {bf ? B : L, bf ? L : B, X}},
      {ATTN_OPERAND("key", c->key, ATTN_DT_FLOAT, 3, 3), .sym = {bf ? B : S, bf ? S : B, X}},
      {ATTN_OPERAND("value", c->value, ATTN_DT_FLOAT, 3, 3), .sym = {bf ? B : S, bf ? S : B, X}},
      {ATTN_OPERAND("key_padding_mask", c->kpm, ATTN_DT_F32 | ATTN_DT_U8, 2, 2), .sym = {B, S},
       .flags = opt},
      {ATTN_OPERAND("attn_mask", c->am, ATTN_DT_F32 | ATTN_DT_U8, 2, 2), .sym = {L, S},
       .flags = opt},
      {ATTN_OPERAND("out", c->out, ATTN_DT_FLOAT, 3, 3), .sym = {bf ? B : L, bf ? L : B, X},
       .flags = out},
      {ATTN_OPERAND("out_weights", c->outw, ATTN_DT_F32, 3, 3), .sym = {B, L, S},
       .flags = out | opt},
  };
  if (c->am && c->am->ndim == 3) {
    ops[4].min_nd = ops[4].max_nd = 3;
    ops[4].sym[0] = X, ops[4].sym[1] = L, ops[4].sym[2] = S;
  }
  if (!c->average) {
    ops[6].min_nd = ops[6].max_nd = 4;
    ops[6].sym[0] = B, ops[6].sym[1] = H, ops[6].sym[2] = L, ops[6].sym[3] = S;
  }
  attn_dims d;
  if ((st = attn__check_operands(ctx, ops, 7, &d)) != ATTN_OK)
    return st;
  const struct {
    const char *name;
    const attn_tensor *t;
    int64_t want;
  } feat[] = {{"query", c->query, m->E}, {"key", c->key, m->kdim}, {"value", c->value, m->vdim},
              {"out", c->out, m->E}};
  for (int i = 0; i < 4; i++)
    if (feat[i].t->dims[2] != feat[i].want)
      return attn__fail(ctx, ATTN_ERR_SHAPE,
                        "%s has %lld features (its last dim) but the layer takes %lld (%s)",
                        feat[i].name, (long long)feat[i].t->dims[2], (long long)feat[i].want,
                        i == 1 ? "kdim" : i == 2 ? "vdim" : "embed_dim");
  for (int i = 0; i < 2; i++) {
    const attn_tensor *t = i ? c->outw : c->out;
    const char *w = t ? attn__mha_wrapped_overlap(m, t) : NULL;
    if (w)
      return attn__fail(ctx, ATTN_ERR_ALIASING,
                        "%s overlaps the memory of %s, a weight used in place",
                        i ? "out_weights" : "out", w);
  }
  c->B = d.v[B], c->L = d.v[L], c->S = d.v[S];
  int64_t bh_want = 0;
  if (c->am && c->am->ndim == 3 &&
      (__builtin_mul_overflow(c->B, m->Hq, &bh_want) || c->am->dims[0] != bh_want))
    return attn__fail(ctx, ATTN_ERR_SHAPE,
                      "a 3-D attn_mask must be [B * num_heads = %lld, L, S] but its first dim "
                      "is %lld",
                      (long long)bh_want, (long long)c->am->dims[0]);
  if (c->outw && !c->average && c->outw->dims[1] != m->Hq)
    return attn__fail(ctx, ATTN_ERR_SHAPE,
                      "out_weights per head must be [B, num_heads = %lld, L, S] but dim 1 is "
                      "%lld",
                      (long long)m->Hq, (long long)c->outw->dims[1]);
  if (__builtin_mul_overflow(c->B, c->L, &c->T) || c->T > INT32_MAX ||
      __builtin_mul_overflow(c->B, c->S, &c->Tk) || c->Tk > INT32_MAX || c->S > INT32_MAX)
    return attn__fail(ctx, ATTN_ERR_OVERFLOW, "B * L or B * S exceeds what BLAS takes");
  bool am3 = c->am && c->am->ndim == 3;
  c->Bm = c->kpm || am3 ? c->B : 1;
  c->Hm = am3 ? m->Hq : 1;
  c->Lm = c->am ? c->L : 1;
  if (!c->am && !c->kpm)
    c->Bm = c->Hm = c->Lm = 0;
  /* The mask and weights buffers: B * H * L * S may exceed size_t. */
  int64_t bh, ls, n_mask, n_w = 0;
  if (__builtin_mul_overflow(c->Bm, c->Hm, &bh) || __builtin_mul_overflow(c->Lm, c->S, &ls) ||
      __builtin_mul_overflow(bh, ls, &n_mask) ||
      (c->outw && __builtin_mul_overflow(c->T * m->Hq, c->S, &n_w)))
    return attn__fail(ctx, ATTN_ERR_OVERFLOW,
                      "the merged mask or the per-head weights (B * H * L * S) overflow");
  c->n_mask = (size_t)n_mask, c->n_w = (size_t)n_w;
  c->gq = !as_rows(c->query, &c->ldq);
  c->gk = !as_rows(c->key, &c->ldk);
  c->gv = !as_rows(c->value, &c->ldv);
  c->go = !as_rows(c->out, &c->ldo);
  c->fused = m->in_proj && attn__same_view(c->query, c->key) &&
             attn__same_view(c->key, c->value);
  c->ldp = c->fused ? 3 * m->E : m->E;
  return ATTN_OK;
}

/* The [B, H, len, D] view of projected rows [B * len, *] ld apart in the
 * layer's token order. */
static void head_view(const attn_mha *m, int64_t B, int64_t len, int64_t ld, int64_t *s) {
  s[0] = m->batch_first ? len * ld : ld;
  s[1] = m->D;
  s[2] = m->batch_first ? ld : B * ld;
  s[3] = 1;
}

/* The call's products, planned (run_call sets their pointers): the q, k
 * and v projections, one each or (fused) all three parts of g[0] over the
 * query rows, and the output projection g[3]. */
static void plan_products(attn_ctx *ctx, torch_call *c) {
  const attn_tensor *in[3] = {c->query, c->key, c->value};
  memset(c->g, 0, sizeof c->g);
  for (int part = 0; part < 3; part++) {
    attn_gemm_problem *g = &c->g[c->fused ? 0 : part];
    g->m = part && !c->fused ? c->Tk : c->T;
    g->k = in[part]->dims[2];
    g->part[g->n_parts++] = attn__mha_part(c->m, part);
  }
  attn_gemm_problem *o = &c->g[3];
  o->m = c->T, o->k = c->m->E, o->n_parts = 1;
  o->part[0] = attn__mha_part(c->m, 3);
  for (int i = 0; i < 4; i++)
    if (c->g[i].n_parts)
      attn__gemm_plan(ctx, &c->g[i]);
}

static void run_call(attn_ctx *ctx, torch_call *c, attn_sdpa_problem *sp) {
  const attn_mha *m = c->m;
  int64_t E = m->E, H = m->Hq;
  const attn_tensor *in[3] = {c->query, c->key, c->value};
  float *gathered[3] = {c->gq ? c->xq : NULL, c->gk ? c->xk : NULL, c->gv ? c->xv : NULL};
  int64_t ld[3] = {c->ldq, c->ldk, c->ldv};
  float *proj[3] = {c->q, c->k, c->v};
  for (int part = 0; part < (c->fused ? 1 : 3); part++) {
    attn_gemm_problem *g = &c->g[part];
    if (g->m == 0)
      continue;
    const float *x = in[part]->data;
    if (gathered[part]) {
      attn__mha_copy_rows(in[part], gathered[part], false);
      x = gathered[part];
      ld[part] = in[part]->dims[2];
    }
    g->a = x, g->lda = ld[part], g->c = proj[part], g->ldc = c->ldp;
    attn__gemm_run(ctx, g);
  }
  if (c->mask)
    for (int64_t b = 0; b < c->Bm; b++)
      for (int64_t h = 0; h < c->Hm; h++)
        for (int64_t i = 0; i < c->Lm; i++)
          for (int64_t j = 0; j < c->S; j++)
            c->mask[((b * c->Hm + h) * c->Lm + i) * c->S + j] = merged_mask(c, b, h, i, j);
  sp->q = c->q, sp->k = c->k, sp->v = c->v, sp->out = c->a;
  sp->mask = c->mask;
  sp->w = c->w;
  attn__sdpa_run(ctx, sp);
  if (c->outw) {
    /* torch: the per-head weights, or their sum over heads / H. */
    attn_tensor *t = c->outw;
    for (int64_t b = 0; b < c->B; b++)
      for (int64_t i = 0; i < c->L; i++)
        for (int64_t j = 0; j < c->S; j++) {
          const float *wr = c->w + (b * H * c->L + i) * c->S + j;
          if (c->average) {
            float sum = 0;
            for (int64_t h = 0; h < H; h++)
              sum += wr[h * c->L * c->S];
            ((float *)t->data)[b * t->strides[0] + i * t->strides[1] + j * t->strides[2]] =
                sum / (float)H;
          } else {
            for (int64_t h = 0; h < H; h++)
              ((float *)t->data)[b * t->strides[0] + h * t->strides[1] + i * t->strides[2] +
                                 j * t->strides[3]] = wr[h * c->L * c->S];
          }
        }
  }
  attn_gemm_problem *g = &c->g[3];
  g->a = c->a, g->lda = E;
  g->c = c->go ? c->y : c->out->data, g->ldc = c->go ? E : c->ldo;
  attn__gemm_run(ctx, g);
  if (c->go)
    attn__mha_copy_rows(c->out, c->y, true);
}

static attn_status forward_impl(attn_ctx *ctx, attn_mha *layer, const attn_tensor *query,
                                const attn_tensor *key, const attn_tensor *value,
                                const attn_tensor *key_padding_mask,
                                const attn_tensor *attn_mask,
                                const attn_mha_torch_forward_params *params, attn_tensor *out,
                                attn_tensor *out_weights) {
  attn_status st;
  if ((st = attn__mha_check_layer(ctx, layer)) != ATTN_OK)
    return st;
  if (!layer->torch)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "the layer has the decoder form: run it with attn_mha_forward");
  torch_call c;
  memset(&c, 0, sizeof c);
  c.m = layer, c.query = query, c.key = key, c.value = value;
  c.kpm = key_padding_mask, c.am = attn_mask, c.out = out, c.outw = out_weights;
  if ((st = check_call(ctx, &c, params)) != ATTN_OK)
    return st;
  if (c.T == 0)
    return ATTN_OK; /* out and out_weights are empty */
  attn_sdpa_problem sp;
  memset(&sp, 0, sizeof sp);
  sp.B = c.B, sp.Hq = sp.Hkv = layer->Hq, sp.G = 1;
  sp.Lq = c.L, sp.Lk = c.S, sp.D = sp.Dv = layer->D;
  sp.qdt = sp.kdt = sp.vdt = sp.odt = ATTN_DTYPE_F32;
  head_view(layer, c.B, c.L, c.ldp, sp.qs);
  head_view(layer, c.B, c.S, c.ldp, sp.ks);
  memcpy(sp.vs, sp.ks, sizeof sp.vs);
  head_view(layer, c.B, c.L, layer->E, sp.os);
  if (c.Bm) {
    int64_t ms[4] = {c.Bm > 1 ? c.Hm * c.Lm * c.S : 0, c.Hm > 1 ? c.Lm * c.S : 0,
                     c.Lm > 1 ? c.S : 0, 1};
    memcpy(sp.ms, ms, sizeof ms);
  }
  if (c.outw) {
    int64_t ws[4] = {layer->Hq * c.L * c.S, c.L * c.S, c.S, 1};
    memcpy(sp.ws, ws, sizeof ws);
  }
  attn_sdpa_params prm;
  attn_sdpa_params_init(&prm);
  prm.causal = c.causal;
  attn__sdpa_fill_common(&sp, &prm);
  attn__sdpa_plan(ctx, &sp);
  plan_products(ctx, &c);
  /* The projections and the attention run one after another above this
   * call's buffers: the largest of their workspaces. */
  size_t inner = sp.ws_bytes;
  for (int i = 0; i < 4; i++)
    inner = c.g[i].ws_bytes > inner ? c.g[i].ws_bytes : inner;
  size_t mine = attn__ws_size(torch_layout, &c), total;
  if (mine == SIZE_MAX || __builtin_add_overflow(mine, inner, &total))
    total = SIZE_MAX; /* refused below */
  if ((st = attn__ws_reserve(ctx, total)) != ATTN_OK)
    return st;
  size_t mark = attn__ws_carve(ctx, torch_layout, &c, mine);
  run_call(ctx, &c, &sp);
  attn__ws_release(ctx, mark);
  return ATTN_OK;
}

/* ---- public entry points ---- */

attn_status attn_mha_create_torch(attn_ctx *ctx, const attn_mha_torch_params *params,
                                  attn_mha **out) {
  attn_status st = attn__op_begin(ctx, "attn_mha_create_torch");
  if (st != ATTN_OK)
    return st;
  return attn__op_end(ctx, create_impl(ctx, params, out));
}

attn_status attn_mha_torch_forward(attn_ctx *ctx, attn_mha *layer, const attn_tensor *query,
                                   const attn_tensor *key, const attn_tensor *value,
                                   const attn_tensor *key_padding_mask,
                                   const attn_tensor *attn_mask,
                                   const attn_mha_torch_forward_params *params, attn_tensor *out,
                                   attn_tensor *out_weights) {
  attn_status st = attn__op_begin(ctx, "attn_mha_torch_forward");
  if (st != ATTN_OK)
    return st;
  return attn__op_end(ctx, forward_impl(ctx, layer, query, key, value, key_padding_mask,
                                        attn_mask, params, out, out_weights));
}
