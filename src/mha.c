/* The attention layer's handle and weights, shared by its two forms: the
 * decoder (mha_decoder.c) and PyTorch's nn.MultiheadAttention (mha_torch.c).
 * Lifecycle, and where the weights live: owned weights once, in the packed
 * projections the products read (mha.h), or row-major; wrapped caller memory;
 * set, wrap and read back. */
#include "check.h"
#include "convert.h"
#include "gemm.h"
#include "mha.h"

#include <string.h>

#define N_WEIGHTS ATTN__MHA_N_WEIGHTS

static const char *const weight_names[N_WEIGHTS] = {
    "Wq", "Wk", "Wv", "Wo", "bq", "bk", "bv", "bo", "in_proj_weight", "in_proj_bias"};

/* Rows and columns of a weight (a bias is one row). */
static void weight_shape(const attn_mha *m, int32_t which, int64_t *rows, int64_t *cols) {
  if (m->torch) {
    attn__mha_torch_shape(m, which, rows, cols);
    return;
  }
  int64_t hq = m->Hq * m->D, hkv = m->Hkv * m->D;
  const int64_t r[N_WEIGHTS] = {hq, hkv, hkv, m->E, 1, 1, 1, 1};
  const int64_t c[N_WEIGHTS] = {m->E, m->E, m->E, hq, hq, hkv, hkv, m->E};
  *rows = r[which];
  *cols = c[which];
}

static bool weight_present(const attn_mha *m, int32_t which) {
  if (m->torch)
    return attn__mha_torch_shape(m, which, NULL, NULL);
  return which < 4 || (which < 7 ? m->qkv_bias : which == 7 && m->out_bias);
}

/* ---- where the weights live (mha.h) ---- */

/* Projections s0 <= s < s1 form weight `which`'s group: q/k/v or out. */
static void group_of(int32_t which, int *s0, int *s1) {
  bool out = which == ATTN_MHA_O_WEIGHT || which == ATTN_MHA_O_BIAS;
  *s0 = out ? 3 : 0;
  *s1 = out ? 4 : 3;
}

static bool same_group(int32_t a, int32_t b) {
  int a0, a1, b0, b1;
  group_of(a, &a0, &a1);
  group_of(b, &b0, &b1);
  return a0 == b0;
}

static bool is_matrix(int32_t which) { return which < 4 || which == ATTN_MHA_IN_PROJ_WEIGHT; }

/* Projection s's rows n and depth k. */
static void proj_shape(const attn_mha *m, int s, int64_t *n, int64_t *k) {
  if (m->torch) {
    *n = m->E;
    *k = s == 1 ? m->kdim : s == 2 ? m->vdim : m->E;
    return;
  }
  *n = s == 0 ? m->Hq * m->D : s < 3 ? m->Hkv * m->D : m->E;
  *k = s < 3 ? m->E : m->Hq * m->D;
}

/* Element (r, c) of present weight `which` (a bias: r = 0): row-major, or
 * in the packed projection whose output row it feeds (in_proj's rows and
 * bias are q's, then k's, then v's). */
static float *weight_elem(const attn_mha *m, int32_t which, int64_t r, int64_t c) {
  if (m->w[which])
    return m->w[which] + r * m->ld[which] + c;
  bool mat = is_matrix(which);
  int64_t row = mat ? r : c, n, k;
  int s = mat ? which : which - 4;
  if (which >= ATTN_MHA_IN_PROJ_WEIGHT) {
    s = (int)(row / m->E);
    row %= m->E;
  }
  proj_shape(m, s, &n, &k);
  return m->pack[s] + attn__gemm_packed_at(n, k, row, mat ? c : k);
}

/* Whether `which` is the layer's own (row-major or packed), not caller
 * memory. */
static bool is_owned(const attn_mha *m, int32_t which) {
  return m->owned[which] || !m->w[which];
}

/* Pack weight `which`'s group: its projections' packs allocated
 * (zero-filled), the group's owned row-major weights moved in, and a
 * wrapped `which` given its place there (not read: the caller writes it,
 * and may have freed the memory it replaces). Every other present weight of
 * the group is owned. On failure nothing changed. */
static attn_status pack_group(attn_ctx *ctx, attn_mha *m, int32_t which) {
  int s0, s1;
  group_of(which, &s0, &s1);
  float *mem[ATTN__MHA_N_PACKS] = {0};
  for (int s = s0; s < s1; s++) {
    int64_t n, k;
    proj_shape(m, s, &n, &k);
    size_t floats = attn__gemm_packed_floats(n, k), bytes = 0;
    attn_status st = ATTN_OK;
    if (floats == SIZE_MAX || __builtin_mul_overflow(floats, sizeof(float), &bytes))
      st = attn__fail(ctx, ATTN_ERR_OVERFLOW, "the packed weights' size overflows");
    else if (!(mem[s] = attn__alloc(ctx, bytes)))
      st = attn__fail(ctx, ATTN_ERR_NO_MEMORY,
                      "cannot allocate %zu bytes for the packed weights", bytes);
    if (st) {
      for (int i = s0; i < s; i++)
        attn__free(ctx, mem[i]);
      return st;
    }
    memset(mem[s], 0, bytes); /* padding, absent biases */
  }
  for (int s = s0; s < s1; s++)
    m->pack[s] = mem[s];
  for (int32_t i = 0; i < N_WEIGHTS; i++) {
    if (!same_group(i, which) || !weight_present(m, i))
      continue;
    float *src = m->owned[i];
    int64_t rows, cols, ld = m->ld[i];
    weight_shape(m, i, &rows, &cols);
    m->w[i] = NULL, m->owned[i] = NULL; /* weight_elem: in the packs now */
    for (int64_t r = 0; src && r < rows; r++)
      for (int64_t c = 0; c < cols; c++)
        *weight_elem(m, i, r, c) = src[r * ld + c];
    attn__free(ctx, src);
  }
  return ATTN_OK;
}

/* Unpack weight `which`'s group: every weight of it but `which` (which the
 * caller wraps) copied row-major into its own memory, the packs freed. On
 * failure nothing changed. */
static attn_status unpack_group(attn_ctx *ctx, attn_mha *m, int32_t which) {
  int s0, s1;
  group_of(which, &s0, &s1);
  float *mem[N_WEIGHTS] = {0};
  bool move[N_WEIGHTS] = {0};
  for (int32_t i = 0; i < N_WEIGHTS; i++) {
    move[i] = same_group(i, which) && i != which && weight_present(m, i);
    if (!move[i])
      continue;
    int64_t rows, cols;
    weight_shape(m, i, &rows, &cols); /* its size was checked at creation */
    if (!(mem[i] = attn__alloc(ctx, (size_t)(rows * cols) * sizeof(float)))) {
      for (int32_t j = 0; j < i; j++)
        attn__free(ctx, mem[j]);
      return attn__fail(ctx, ATTN_ERR_NO_MEMORY, "cannot allocate %s", weight_names[i]);
    }
    for (int64_t r = 0; r < rows; r++)
      for (int64_t c = 0; c < cols; c++)
        mem[i][r * cols + c] = *weight_elem(m, i, r, c);
  }
  for (int32_t i = 0; i < N_WEIGHTS; i++) {
    if (!move[i])
      continue;
    int64_t rows, cols;
    weight_shape(m, i, &rows, &cols);
    m->w[i] = mem[i], m->owned[i] = mem[i], m->ld[i] = cols;
  }
  for (int s = s0; s < s1; s++) {
    attn__free(ctx, m->pack[s]);
    m->pack[s] = NULL;
  }
  return ATTN_OK;
}

attn_gemm_part attn__mha_part(const attn_mha *m, int s) {
  int64_t n, k;
  proj_shape(m, s, &n, &k);
  if (m->pack[s])
    return (attn_gemm_part){.n = n, .packed = m->pack[s]};
  int32_t wi = s, bi = 4 + s;
  int64_t row0 = 0; /* in_proj weight and bias: the rows of projection s */
  if (m->torch && s < 3) {
    bi = ATTN_MHA_IN_PROJ_BIAS;
    row0 = s * m->E;
    if (m->in_proj)
      wi = ATTN_MHA_IN_PROJ_WEIGHT;
  }
  const float *w = m->w[wi] + (wi == ATTN_MHA_IN_PROJ_WEIGHT ? row0 * m->ld[wi] : 0);
  const float *bias =
      weight_present(m, bi) ? m->w[bi] + (bi == ATTN_MHA_IN_PROJ_BIAS ? row0 : 0) : NULL;
  return (attn_gemm_part){.w = w, .ldw = m->ld[wi], .n = n, .bias = bias};
}

/* ---- lifecycle ---- */

/* Free a layer not (or no longer) in the context's list. */
static void release(attn_ctx *ctx, attn_mha *m) {
  for (int i = 0; i < N_WEIGHTS; i++)
    attn__free(ctx, m->owned[i]);
  for (int i = 0; i < ATTN__MHA_N_PACKS; i++)
    attn__free(ctx, m->pack[i]);
  attn__free(ctx, m->buf);
  attn__free(ctx, m->freqs);
  attn__free(ctx, m);
}

void attn__mha_destroy_all(attn_ctx *ctx) {
  attn_mha *m = ctx->layers;
  while (m) {
    attn_mha *next = m->next;
    release(ctx, m);
    m = next;
  }
  ctx->layers = NULL;
}

/* Search the context's list: a freed or foreign handle is never read. */
attn_status attn__mha_check_layer(attn_ctx *ctx, const attn_mha *m) {
  if (!m)
    return attn__fail(ctx, ATTN_ERR_NULL_ARG, "layer is NULL");
  const attn_mha *it = ctx->layers;
  while (it && it != m)
    it = it->next;
  if (!it)
    return attn__fail(ctx, ATTN_ERR_BAD_HANDLE,
                      "layer %p is not a live layer of this context (freed, or created "
                      "from another context)", (const void *)m);
  return ATTN_OK;
}

static attn_status mha_free_impl(attn_ctx *ctx, attn_mha *layer) {
  attn_status st;
  if (!layer)
    return ATTN_OK;
  if ((st = attn__mha_check_layer(ctx, layer)) != ATTN_OK)
    return st;
  if (layer->prev)
    layer->prev->next = layer->next;
  else
    ctx->layers = layer->next;
  if (layer->next)
    layer->next->prev = layer->prev;
  release(ctx, layer);
  return ATTN_OK;
}

attn_status attn__mha_add(attn_ctx *ctx, attn_mha *m) {
  bool packs = attn__gemm_packs();
  for (int32_t i = 0; i < N_WEIGHTS; i++) {
    if (!weight_present(m, i))
      continue;
    int64_t rows, cols;
    weight_shape(m, i, &rows, &cols);
    size_t bytes;
    if (__builtin_mul_overflow((size_t)rows, (size_t)cols, &bytes) ||
        __builtin_mul_overflow(bytes, sizeof(float), &bytes)) {
      release(ctx, m);
      return attn__fail(ctx, ATTN_ERR_OVERFLOW, "the size of %s overflows", weight_names[i]);
    }
    if (packs)
      continue; /* in the packs below */
    m->ld[i] = cols;
    if (!(m->owned[i] = attn__alloc(ctx, bytes))) {
      release(ctx, m);
      return attn__fail(ctx, ATTN_ERR_NO_MEMORY, "cannot allocate %s", weight_names[i]);
    }
    memset(m->owned[i], 0, bytes);
    m->w[i] = m->owned[i];
  }
  attn_status st;
  if (packs && ((st = pack_group(ctx, m, ATTN_MHA_Q_WEIGHT)) ||
                (st = pack_group(ctx, m, ATTN_MHA_O_WEIGHT)))) {
    release(ctx, m);
    return st;
  }
  m->next = ctx->layers;
  if (ctx->layers)
    ctx->layers->prev = m;
  ctx->layers = m;
  return ATTN_OK;
}

/* ---- weights ---- */

/* `w` is a live tensor of one of `dtypes` holding weight `which` of the
 * layer: a matrix [rows, cols], or a vector [cols] for a bias. */
static attn_status check_weight(attn_ctx *ctx, const attn_mha *m, int32_t which,
                                const attn_tensor *w, uint32_t dtypes) {
  if (which < 0 || which >= N_WEIGHTS || !weight_present(m, which))
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "which = %d is not a weight of this layer (attn_mha_weight; biases "
                      "exist only if created with them)", (int)which);
  int64_t rows, cols;
  weight_shape(m, which, &rows, &cols);
  int32_t nd = which < 4 || which == ATTN_MHA_IN_PROJ_WEIGHT ? 2 : 1;
  const attn_operand op[] = {{ATTN_OPERAND("w", w, dtypes, nd, nd)}};
  attn_status st = attn__check_operands(ctx, op, 1, NULL);
  if (st != ATTN_OK)
    return st;
  if (nd == 2 && (w->dims[0] != rows || w->dims[1] != cols))
    return attn__fail(ctx, ATTN_ERR_SHAPE, "%s must be [%lld, %lld] but w is [%lld, %lld]",
                      weight_names[which], (long long)rows, (long long)cols, (long long)w->dims[0],
                      (long long)w->dims[1]);
  if (nd == 1 && w->dims[0] != cols)
    return attn__fail(ctx, ATTN_ERR_SHAPE, "%s must be [%lld] but w is [%lld]", weight_names[which],
                      (long long)cols, (long long)w->dims[0]);
  return ATTN_OK;
}

static attn_status mha_set_weight_impl(attn_ctx *ctx, attn_mha *layer, int32_t which,
                                       const attn_tensor *w) {
  attn_status st;
  if ((st = attn__mha_check_layer(ctx, layer)) ||
      (st = check_weight(ctx, layer, which, w, ATTN_DT_FLOAT)))
    return st;
  int64_t rows, cols;
  weight_shape(layer, which, &rows, &cols);
  if (!is_owned(layer, which)) { /* wrapped until now: own it again */
    bool whole = attn__gemm_packs(); /* then the group's packs take it? */
    for (int32_t i = 0; i < N_WEIGHTS && whole; i++)
      whole = i == which || !same_group(i, which) || !weight_present(layer, i) ||
              is_owned(layer, i);
    if (whole) {
      if ((st = pack_group(ctx, layer, which)))
        return st;
    } else {
      void *mem = attn__alloc(ctx, (size_t)(rows * cols) * sizeof(float));
      if (!mem)
        return attn__fail(ctx, ATTN_ERR_NO_MEMORY, "cannot allocate %s", weight_names[which]);
      layer->owned[which] = layer->w[which] = mem;
      layer->ld[which] = cols;
    }
  }
  int64_t rs = w->ndim == 2 ? w->strides[0] : 0, cs = w->strides[w->ndim - 1];
  for (int64_t r = 0; r < rows; r++) /* a half weight widened exactly: the layer keeps F32 */
    for (int64_t c = 0; c < cols; c++)
      *weight_elem(layer, which, r, c) = attn__elem_value(w->data, w->dtype, r * rs + c * cs);
  return ATTN_OK;
}

static attn_status mha_wrap_weight_impl(attn_ctx *ctx, attn_mha *layer, int32_t which,
                                        const attn_tensor *w) {
  attn_status st;
  if ((st = attn__mha_check_layer(ctx, layer)) ||
      (st = check_weight(ctx, layer, which, w, ATTN_DT_F32))) /* used in place */
    return st;
  int64_t rows, cols;
  weight_shape(layer, which, &rows, &cols);
  /* One row: its stride is never stepped, and the products (cblas_sgemm's
   * ldb) take only a row stride >= cols. */
  int64_t ld = w->ndim == 2 && rows > 1 ? w->strides[0] : cols;
  if (w->strides[w->ndim - 1] != 1 || ld < cols || ld > INT32_MAX)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "%s must have contiguous rows (innermost stride 1, row stride "
                      ">= %lld and < 2^31) to be used in place; use attn_mha_set_weight",
                      weight_names[which], (long long)cols);
  if (!layer->w[which] && (st = unpack_group(ctx, layer, which)))
    return st; /* the group's other weights go row-major: no packs with caller memory */
  attn__free(ctx, layer->owned[which]);
  layer->owned[which] = NULL;
  layer->w[which] = w->data;
  layer->ld[which] = ld;
  return ATTN_OK;
}

static attn_status mha_get_weight_impl(attn_ctx *ctx, const attn_mha *layer, int32_t which,
                                       attn_tensor *w) {
  attn_status st;
  if ((st = attn__mha_check_layer(ctx, layer)) ||
      (st = check_weight(ctx, layer, which, w, ATTN_DT_FLOAT)) ||
      (st = attn__check_writable(ctx, "w", w)))
    return st;
  int64_t rows, cols;
  weight_shape(layer, which, &rows, &cols);
  int64_t rs = w->ndim == 2 ? w->strides[0] : 0, cs = w->strides[w->ndim - 1];
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < cols; c++)
      attn__elem_store(w->data, w->dtype, r * rs + c * cs, *weight_elem(layer, which, r, c));
  return ATTN_OK;
}

const char *attn__mha_wrapped_overlap(const attn_mha *m, const attn_tensor *t) {
  return attn__mha_wrapped_overlap_bytes(m, t->data, t->extent_bytes);
}

const char *attn__mha_wrapped_overlap_bytes(const attn_mha *m, const void *p, size_t bytes) {
  uintptr_t a = (uintptr_t)p, e = a + bytes;
  for (int32_t i = 0; i < N_WEIGHTS; i++) {
    if (is_owned(m, i))
      continue;
    int64_t rows, cols;
    weight_shape(m, i, &rows, &cols);
    uintptr_t w = (uintptr_t)m->w[i];
    uintptr_t we = w + (size_t)((rows - 1) * m->ld[i] + cols) * sizeof(float);
    if (a < we && w < e)
      return weight_names[i];
  }
  return NULL;
}

/* ---- public entry points: the prologue, then the work above ---- */

attn_status attn_mha_free(attn_ctx *ctx, attn_mha *layer) {
  attn_status st = attn__op_begin(ctx, "attn_mha_free");
  if (st != ATTN_OK)
    return st;
  return attn__op_end(ctx, mha_free_impl(ctx, layer));
}

attn_status attn_mha_set_weight(attn_ctx *ctx, attn_mha *layer, int32_t which,
                                const attn_tensor *w) {
  attn_status st = attn__op_begin(ctx, "attn_mha_set_weight");
  if (st != ATTN_OK)
    return st;
  return attn__op_end(ctx, mha_set_weight_impl(ctx, layer, which, w));
}

attn_status attn_mha_wrap_weight(attn_ctx *ctx, attn_mha *layer, int32_t which,
                                 const attn_tensor *w) {
  attn_status st = attn__op_begin(ctx, "attn_mha_wrap_weight");
  if (st != ATTN_OK)
    return st;
  return attn__op_end(ctx, mha_wrap_weight_impl(ctx, layer, which, w));
}

attn_status attn_mha_get_weight(attn_ctx *ctx, const attn_mha *layer, int32_t which,
                                attn_tensor *w) {
  attn_status st = attn__op_begin(ctx, "attn_mha_get_weight");
  if (st != ATTN_OK)
    return st;
  return attn__op_end(ctx, mha_get_weight_impl(ctx, layer, which, w));
}
