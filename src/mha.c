/* The decoder attention layer: q/k/v projections (one product over all
 * B * L tokens of a call, the three weights side by side: gemm.h), rotary
 * embedding at the cache positions, append to a KV cache, attention through
 * the cache (kv_attend.c -> sdpa.c), output projection. When one sequence
 * appends every row to an unpaged F32 cache, the product writes k and v
 * into the cache's rows directly (rotated there) instead of a copy.
 *
 * The layer owns a buffer that grows to the largest call and is reused, so
 * a warm layer allocates nothing (the attention's workspace is the
 * context's scratch, likewise reused). Everything that can fail is checked
 * before the cache changes, except the attention's workspace: if that
 * allocation fails the appended rows are rolled back. */
#include "check.h"
#include "convert.h"
#include "gemm.h"
#include "kv_cache.h"
#include "mha.h"
#include "rope.h"

#include <math.h>
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

void attn_mha_decoder_params_init(attn_mha_decoder_params *p) {
  if (!p)
    return;
  memset(p, 0, sizeof *p);
  p->struct_size = sizeof *p;
}

/* A long-context scaling: its frequencies (owned by the layer from here)
 * and attention factor into `rope`, as attn_rope_cache_fill would compute
 * them for p->rope_scaling->seq_len rows. */
static attn_status scaled_freqs(attn_ctx *ctx, const attn_mha_decoder_params *p,
                                attn_rope_problem *rope, double **freqs) {
  attn_rope_cache_params cp;
  attn_rope_cache_params_init(&cp);
  attn_status st = attn__read_params(ctx, &cp, sizeof cp, p->rope_scaling);
  if (st)
    return st;
  if (!p->rope)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "params.rope_scaling is set but params.rope is NULL (it gives the "
                      "style, rotary dim and theta the scaling applies to)");
  if (cp.theta != 0 && cp.theta != rope->theta)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "params.rope_scaling.theta = %g but params.rope's theta is %g (leave "
                      "it 0: the base is rope's)",
                      cp.theta, rope->theta);
  cp.theta = rope->theta;
  if ((cp.scaling == ATTN_ROPE_SCALING_DYNAMIC_NTK ||
       cp.scaling == ATTN_ROPE_SCALING_LONGROPE) && cp.seq_len == 0)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "params.rope_scaling.seq_len = 0 but scaling %d needs it: it picks the "
                      "frequencies (a layer has no table length to default to)",
                      (int)cp.scaling);
  double *w = attn__alloc(ctx, (size_t)rope->half * sizeof *w);
  if (!w)
    return attn__fail(ctx, ATTN_ERR_NO_MEMORY, "cannot allocate the rotary frequencies");
  double af;
  if ((st = attn__rope_scaled_freqs(ctx, "params.rope_scaling", &cp, rope->half, cp.seq_len, w,
                                    &af))) {
    attn__free(ctx, w);
    return st;
  }
  rope->freqs = w;
  rope->amplitude = cp.apply_attention_factor ? af : 1.0;
  *freqs = w;
  return ATTN_OK;
}

static attn_status mha_create_decoder_impl(attn_ctx *ctx, const attn_mha_decoder_params *params,
                                           attn_mha **out) {
  attn_status st = ATTN_OK;
  if (!params || !out)
    return attn__fail(ctx, ATTN_ERR_NULL_ARG, "%s is NULL", params ? "out" : "params");
  attn_mha_decoder_params p;
  attn_mha_decoder_params_init(&p);
  if ((st = attn__read_params(ctx, &p, sizeof p, params)) != ATTN_OK)
    return st;
  if (p.num_kv_heads == 0)
    p.num_kv_heads = p.num_heads;
  if (p.embed_dim < 1 || p.num_heads < 1 || p.num_kv_heads < 1 || p.head_dim < 0)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "params.embed_dim = %lld, num_heads = %lld, num_kv_heads = %lld must "
                      "be >= 1 and head_dim = %lld >= 0",
                      (long long)p.embed_dim, (long long)p.num_heads, (long long)p.num_kv_heads,
                      (long long)p.head_dim);
  if (p.num_heads % p.num_kv_heads)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "params.num_heads = %lld is not a multiple of num_kv_heads = %lld",
                      (long long)p.num_heads, (long long)p.num_kv_heads);
  if (p.head_dim == 0) {
    if (p.embed_dim % p.num_heads)
      return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                        "params.head_dim = 0 needs embed_dim = %lld to be a multiple of "
                        "num_heads = %lld", (long long)p.embed_dim, (long long)p.num_heads);
    p.head_dim = p.embed_dim / p.num_heads;
  }
  if (p.reserved_ || !isfinite(p.scale) || !isfinite(p.softcap) || p.softcap < 0 ||
      (p.window && p.window_left < 0))
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "params.scale = %g must be finite, softcap = %g finite and >= 0, "
                      "window_left = %lld >= 0 with window, reserved_ 0",
                      (double)p.scale, (double)p.softcap, (long long)p.window_left);
  int64_t hq;
  if (__builtin_mul_overflow(p.num_heads, p.head_dim, &hq) || hq > INT32_MAX ||
      p.embed_dim > INT32_MAX)
    return attn__fail(ctx, ATTN_ERR_OVERFLOW,
                      "num_heads * head_dim or embed_dim exceeds what BLAS takes");
  attn_rope_problem rope;
  memset(&rope, 0, sizeof rope);
  if (p.rope) {
    attn_rope_params rp;
    attn_rope_params_init(&rp);
    if ((st = attn__read_params(ctx, &rp, sizeof rp, p.rope)) ||
        (st = attn__rope_config(ctx, "params.rope", &rp, p.head_dim, &rope)))
      return st;
    if (rp.offset || rp.positions)
      return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                        "params.rope.offset and positions must be 0 and NULL (positions "
                        "come from the cache)");
  }
  double *freqs = NULL;
  if (p.rope_scaling && (st = scaled_freqs(ctx, &p, &rope, &freqs)))
    return st;
  attn_mha *m = attn__alloc(ctx, sizeof *m);
  if (!m) {
    attn__free(ctx, freqs);
    return attn__fail(ctx, ATTN_ERR_NO_MEMORY, "cannot allocate the layer");
  }
  memset(m, 0, sizeof *m);
  m->ctx = ctx;
  m->E = p.embed_dim, m->Hq = p.num_heads, m->Hkv = p.num_kv_heads, m->D = p.head_dim;
  m->qkv_bias = p.qkv_bias != 0, m->out_bias = p.out_bias != 0;
  m->has_rope = p.rope != NULL;
  m->rope = rope;
  m->freqs = freqs;
  attn_sdpa_params_init(&m->sp);
  m->sp.causal = 1;
  m->sp.scale = p.scale;
  m->sp.softcap = p.softcap;
  m->sp.window = p.window;
  m->sp.window_left = p.window_left;
  if ((st = attn__mha_add(ctx, m)) != ATTN_OK)
    return st;
  *out = m;
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

/* t: a live F32, F16 or BF16 tensor of ctx with nd dims. */
static attn_status check_float(attn_ctx *ctx, const char *name, const attn_tensor *t, int nd) {
  const attn_operand op[] = {{ATTN_OPERAND(name, t, ATTN_DT_FLOAT, nd, nd)}};
  return attn__check_operands(ctx, op, 1, NULL);
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
  int64_t ld = w->ndim == 2 ? w->strides[0] : cols;
  if (w->strides[w->ndim - 1] != 1 || (rows > 1 && (ld < cols || ld > INT32_MAX)))
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

/* ---- forward ---- */

static size_t round_up(size_t n) { return (n + ATTN_ALIGN - 1) & ~(size_t)(ATTN_ALIGN - 1); }

static attn_status mha_forward_impl(attn_ctx *ctx, attn_mha *layer, attn_kv_cache *cache,
                                    const attn_tensor *x, attn_tensor *y, const int64_t *n_new) {
  attn_status st;
  if ((st = attn__mha_check_layer(ctx, layer)) ||
      (st = attn__kv_check(ctx, cache)) ||
      (st = check_float(ctx, "x", x, 3)) ||
      (st = check_float(ctx, "y", y, 3)))
    return st;
  attn_mha *m = layer;
  if (m->torch)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "the layer has the PyTorch form: run it with attn_mha_torch_forward");
  int64_t B, H, D, Dv;
  const int64_t *lens;
  attn__kv_shape(cache, &B, &H, &D, &Dv, &lens);
  if (H != m->Hkv || D != m->D || Dv != m->D)
    return attn__fail(ctx, ATTN_ERR_SHAPE,
                      "the cache holds Hkv = %lld heads of D = %lld, Dv = %lld but the "
                      "layer has %lld heads of %lld",
                      (long long)H, (long long)D, (long long)Dv, (long long)m->Hkv,
                      (long long)m->D);
  int64_t L = x->dims[1], E = m->E;
  if (x->dims[0] != B || x->dims[2] != E || y->dims[0] != B || y->dims[1] != L ||
      y->dims[2] != E)
    return attn__fail(ctx, ATTN_ERR_SHAPE,
                      "x is [%lld, %lld, %lld] and y [%lld, %lld, %lld] but both must be "
                      "[B = %lld (the cache's), L, E = %lld]",
                      (long long)x->dims[0], (long long)L, (long long)x->dims[2],
                      (long long)y->dims[0], (long long)y->dims[1], (long long)y->dims[2],
                      (long long)B, (long long)E);
  if ((st = attn__check_writable(ctx, "y", y)))
    return st;
  if (attn__overlap(x, y) || attn__kv_overlaps(cache, y))
    return attn__fail(ctx, ATTN_ERR_ALIASING, "y overlaps %s in memory",
                      attn__overlap(x, y) ? "x" : "the cache");
  for (int64_t b = 0; b < B; b++)
    if (n_new && (n_new[b] < 0 || n_new[b] > L))
      return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                        "n_new[%lld] = %lld but must be in 0..L = %lld", (long long)b,
                        (long long)n_new[b], (long long)L);
  if (L == 0)
    return ATTN_OK; /* no token: nothing to project, append or write */

  int64_t T, hq = m->Hq * m->D, hkv = m->Hkv * m->D;
  if (__builtin_mul_overflow(B, L, &T) || T > INT32_MAX)
    return attn__fail(ctx, ATTN_ERR_OVERFLOW, "B * L exceeds what BLAS takes");
  if (hq + 2 * hkv > INT32_MAX) /* the row stride of the q, k, v product */
    return attn__fail(ctx, ATTN_ERR_OVERFLOW, "(Hq + 2 Hkv) * D exceeds what BLAS takes");
  bool x_direct = x->dtype == ATTN_DTYPE_F32 && x->strides[2] == 1 && x->strides[1] >= E &&
                  x->strides[1] <= INT32_MAX && (B == 1 || x->strides[0] == L * x->strides[1]);
  bool y_direct = y->dtype == ATTN_DTYPE_F32 && y->strides[2] == 1 && y->strides[1] == E &&
                  (B == 1 || y->strides[0] == L * E);
  /* One sequence whose every row is appended to unpaged F32 storage: the
   * product writes k and v there (a copy less: the forward over a prompt
   * of 2048 tokens ran it on one thread, 1-3 % of the layer's time). */
  float *kc = NULL, *vc = NULL;
  int64_t kcs[3], vcs[3];
  bool in_place = B == 1 && (!n_new || n_new[0] == L) &&
                  attn__kv_rows(cache, &kc, kcs, &vc, vcs) && kcs[2] <= INT32_MAX &&
                  vcs[2] <= INT32_MAX && !attn__kv_overlaps(cache, x);
  if (in_place && (st = attn__kv_check_rows(ctx, cache, n_new, L)))
    return st;

  /* Buffers: x gathered (when its rows are not evenly strided), q (and k,
   * v unless in place), the attention output, y before scattering, RoPE
   * positions (int64, counted as two floats each). */
  int64_t ldp = in_place ? hq : hq + 2 * hkv; /* q (k and v) side by side: one product */
  size_t sizes[7] = {x_direct ? 0 : (size_t)(T * E), (size_t)(T * ldp), 0, 0, (size_t)(T * hq),
                     y_direct ? 0 : (size_t)(T * E),
                     m->has_rope ? (size_t)T * 2 : 0};
  size_t offs[7], total = 0;
  for (int i = 0; i < 7; i++) {
    offs[i] = total;
    size_t bytes;
    if (__builtin_mul_overflow(sizes[i], sizeof(float), &bytes) ||
        __builtin_add_overflow(total, round_up(bytes), &total))
      return attn__fail(ctx, ATTN_ERR_OVERFLOW, "the buffers' size overflows");
  }
  if (total > m->buf_bytes) {
    char *nb = attn__alloc(ctx, total + ATTN_ALIGN);
    if (!nb)
      return attn__fail(ctx, ATTN_ERR_NO_MEMORY, "cannot allocate %zu bytes of buffers", total);
    attn__free(ctx, m->buf);
    m->buf = nb;
    m->buf_bytes = total;
  }
  char *base = (char *)(((uintptr_t)m->buf + ATTN_ALIGN - 1) & ~(uintptr_t)(ATTN_ALIGN - 1));
  float *xg = (float *)(base + offs[0]), *q = (float *)(base + offs[1]);
  float *a = (float *)(base + offs[4]), *yb = (float *)(base + offs[5]);
  int64_t *positions = (int64_t *)(void *)(base + offs[6]);
  /* k and v as [B, H, L, D]: views of their [B, L, H, D] rows beside q, or
   * the cache's rows after the sequence's end. */
  float *k = q + hq, *v = k + hkv;
  int64_t ks[3] = {L * ldp, m->D, ldp}, vs[3] = {L * ldp, m->D, ldp};
  if (in_place) {
    k = kc + lens[0] * kcs[2], v = vc + lens[0] * vcs[2];
    memcpy(ks, kcs, sizeof ks);
    memcpy(vs, vcs, sizeof vs);
  }

  /* Projections of every token, padding rows included. */
  const float *xa = x->data;
  int64_t ldx = x->strides[1];
  if (!x_direct) { /* other strides, or half x */
    attn__mha_copy_rows(x, xg, false);
    xa = xg;
    ldx = E;
  }
  attn_gemm_problem pqkv;
  memset(&pqkv, 0, sizeof pqkv);
  pqkv.m = T, pqkv.k = E, pqkv.a = xa, pqkv.lda = ldx, pqkv.c = q, pqkv.ldc = ldp;
  pqkv.n_parts = 3;
  for (int i = 0; i < 3; i++)
    pqkv.part[i] = attn__mha_part(m, i);
  if (in_place) /* heads of D columns, each in its own rows */
    for (int i = 1; i < 3; i++) {
      attn_gemm_part *pt = &pqkv.part[i];
      pt->out = i == 1 ? k : v;
      pt->ldo = i == 1 ? ks[2] : vs[2];
      pt->head = m->D;
      pt->head_stride = i == 1 ? ks[1] : vs[1];
    }
  attn__gemm_plan(ctx, &pqkv);
  float *yo = y_direct ? y->data : yb;
  attn_gemm_problem po;
  memset(&po, 0, sizeof po);
  po.m = T, po.k = hq, po.a = a, po.lda = hq, po.c = yo, po.ldc = E, po.n_parts = 1;
  po.part[0] = attn__mha_part(m, 3);
  attn__gemm_plan(ctx, &po);
  /* q and k rotated at positions len_b + i by attn_rope's plan and run, on
   * their [B, H, L, D] views. */
  attn_rope_problem rq = m->rope, rk = m->rope;
  if (m->has_rope) {
    for (int64_t b = 0; b < B; b++)
      for (int64_t l = 0; l < L; l++)
        positions[b * L + l] = lens[b] + l;
    rq.x = q, rq.B = B, rq.H = m->Hq, rq.L = L, rq.D = m->D, rq.positions = positions;
    rk.x = k, rk.B = B, rk.H = m->Hkv, rk.L = L, rk.D = m->D, rk.positions = positions;
    const int64_t xq[4] = {L * ldp, m->D, ldp, 1}, xk[4] = {ks[0], ks[1], ks[2], 1};
    memcpy(rq.xs, xq, sizeof xq);
    memcpy(rk.xs, xk, sizeof xk);
    attn__rope_plan(ctx, &rq);
    attn__rope_plan(ctx, &rk);
  }
  /* Every step's workspace, reserved before anything is written. */
  size_t ws = pqkv.ws_bytes > po.ws_bytes ? pqkv.ws_bytes : po.ws_bytes;
  if (m->has_rope && rq.ws_bytes > ws)
    ws = rq.ws_bytes;
  if (m->has_rope && rk.ws_bytes > ws)
    ws = rk.ws_bytes;
  if ((st = attn__ws_reserve(ctx, ws)))
    return st;
  attn__gemm_run(ctx, &pqkv);
  if (m->has_rope) {
    attn__rope_apply(ctx, &rq);
    attn__rope_apply(ctx, &rk);
  }
  /* q, a as [B, H, L, D] views of [B, L, H, D] rows. */
  const int64_t qs[4] = {L * ldp, m->D, ldp, 1};
  const int64_t as[4] = {L * hq, m->D, hq, 1};
  if (in_place)
    attn__kv_commit_rows(cache, n_new, L);
  else if ((st = attn__kv_append_rows(ctx, cache, k, ks, v, vs, n_new, L)) != ATTN_OK)
    return st;
  if ((st = attn__kv_attend_rows(ctx, cache, q, qs, m->Hq, L, a, as, n_new, &m->sp))) {
    /* Only the attention's workspace can fail here: take the rows back. */
    for (int64_t b = 0; b < B; b++)
      attn__kv_truncate_to(cache, b, lens[b] - (n_new ? n_new[b] : L));
    return st;
  }
  attn__gemm_run(ctx, &po); /* its workspace reserved above (the block only grows) */
  for (int64_t b = 0; b < B; b++)
    for (int64_t l = n_new ? n_new[b] : L; l < L; l++)
      memset(yo + (b * L + l) * E, 0, (size_t)E * sizeof(float));
  if (!y_direct)
    attn__mha_copy_rows(y, yb, true);
  return ATTN_OK;
}

/* ---- public entry points: the prologue, then the work above ---- */

attn_status attn_mha_free(attn_ctx *ctx, attn_mha *layer) {
  attn_status st = attn__op_begin(ctx, "attn_mha_free");
  if (st != ATTN_OK)
    return st;
  return attn__op_end(ctx, mha_free_impl(ctx, layer));
}

attn_status attn_mha_create_decoder(attn_ctx *ctx, const attn_mha_decoder_params *params,
                                    attn_mha **out) {
  attn_status st = attn__op_begin(ctx, "attn_mha_create_decoder");
  if (st != ATTN_OK)
    return st;
  return attn__op_end(ctx, mha_create_decoder_impl(ctx, params, out));
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

attn_status attn_mha_forward(attn_ctx *ctx, attn_mha *layer, attn_kv_cache *cache,
                             const attn_tensor *x, attn_tensor *y, const int64_t *n_new) {
  attn_status st = attn__op_begin(ctx, "attn_mha_forward");
  if (st != ATTN_OK)
    return st;
  return attn__op_end(ctx, mha_forward_impl(ctx, layer, cache, x, y, n_new));
}
