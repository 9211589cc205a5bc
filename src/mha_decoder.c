/* The decoder form of the attention layer: creation (sizes, RoPE and its
 * scalings, the attention's options) and the forward: q/k/v projections
 * (one product over the counted tokens of a call, the three weights side by
 * side: gemm.h), rotary embedding at the cache positions, append to a KV
 * cache, attention through the cache (kv_attend.c -> sdpa.c), output
 * projection. When one sequence appends every row to an unpaged F32 cache,
 * the product writes k and v into the cache's rows directly (rotated
 * there) instead of a copy. The layer's handle and weights are mha.c's.
 *
 * The layer owns a buffer that grows to the largest call and is reused, so
 * a warm layer allocates nothing (the attention's workspace is the
 * context's scratch, likewise reused). Everything that can fail is checked,
 * and every workspace reserved (the attention's planned over the lengths
 * the append will give), before the cache changes. */
#include "check.h"
#include "convert.h"
#include "gemm.h"
#include "kv_cache.h"
#include "mha.h"
#include "rope.h"

#include <math.h>
#include <string.h>


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
  if ((st = attn__rope_config_cached(ctx, p.rope, p.head_dim, &rope)))
    return st;
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

/* t: a live F32, F16 or BF16 tensor of ctx with nd dims. */
static attn_status check_float(attn_ctx *ctx, const char *name, const attn_tensor *t, int nd) {
  const attn_operand op[] = {{ATTN_OPERAND(name, t, ATTN_DT_FLOAT, nd, nd)}};
  return attn__check_operands(ctx, op, 1, NULL);
}

/* ---- forward ---- */

static size_t round_up(size_t n) { return (n + ATTN_ALIGN - 1) & ~(size_t)(ATTN_ALIGN - 1); }

/* The counted rows of x ([B, L, E], any strides and dtype), packed into
 * rows: sequence b's first n_new[b] (NULL: all L) rows after the earlier
 * sequences'. */
static void gather_counted(const attn_tensor *x, const int64_t *n_new, float *rows) {
  int64_t E = x->dims[2];
  for (int64_t b = 0; b < x->dims[0]; b++)
    for (int64_t l = 0; l < (n_new ? n_new[b] : x->dims[1]); l++, rows += E) {
      int64_t e = b * x->strides[0] + l * x->strides[1];
      if (x->dtype == ATTN_DTYPE_F32 && x->strides[2] == 1)
        memcpy(rows, (const float *)x->data + e, (size_t)E * sizeof(float));
      else
        for (int64_t f = 0; f < E; f++)
          rows[f] = attn__elem_value(x->data, x->dtype, e + f * x->strides[2]);
    }
}

/* Packed rows of ld floats to (unpack) or from their places in [B, L, ld]
 * within one buffer. Sequence b's row l is packed row off_b + l, at or
 * before its place b * L + l: unpacking goes from the last row back so that
 * no row is overwritten before it moves, packing goes forward. */
static void move_counted(float *buf, int64_t B, int64_t L, int64_t ld, const int64_t *n_new,
                         bool unpack) {
  int64_t off = 0;
  for (int64_t b = 0; unpack && b < B; b++)
    off += n_new[b];
  for (int64_t i = 0; i < B; i++) {
    int64_t b = unpack ? B - 1 - i : i, n = n_new[b];
    if (unpack)
      off -= n;
    for (int64_t j = 0; j < n; j++) {
      int64_t l = unpack ? n - 1 - j : j;
      float *packed_row = buf + (off + l) * ld, *placed_row = buf + (b * L + l) * ld;
      if (packed_row != placed_row)
        memmove(unpack ? placed_row : packed_row, unpack ? packed_row : placed_row,
                (size_t)ld * sizeof(float));
    }
    if (!unpack)
      off += n;
  }
}

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
  const char *wrapped = attn__mha_wrapped_overlap(m, y);
  if (wrapped)
    return attn__fail(ctx, ATTN_ERR_ALIASING,
                      "y overlaps the memory of %s, a weight used in place", wrapped);
  /* A wrapped cache over a weight: the new k and v rows would be written
   * there while a projection reads it. */
  for (int i = 0; i < 2; i++) {
    const void *mem;
    size_t bytes;
    attn__kv_memory(cache, i, &mem, &bytes);
    if ((wrapped = attn__mha_wrapped_overlap_bytes(m, mem, bytes)))
      return attn__fail(ctx, ATTN_ERR_ALIASING,
                        "the cache's %s overlap the memory of %s, a weight used in place",
                        i ? "values" : "keys", wrapped);
  }
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
  /* Tc counted rows: the products run on those alone, packed (a ragged
   * batch's padding rows would otherwise cost as much as real ones). */
  int64_t Tc = 0;
  for (int64_t b = 0; b < B; b++)
    Tc += n_new ? n_new[b] : L;
  bool packed = Tc < T;
  if (hq + 2 * hkv > INT32_MAX) /* the row stride of the q, k, v product */
    return attn__fail(ctx, ATTN_ERR_OVERFLOW, "(Hq + 2 Hkv) * D exceeds what BLAS takes");
  bool x_direct = !packed && x->dtype == ATTN_DTYPE_F32 && x->strides[2] == 1 &&
                  x->strides[1] >= E && x->strides[1] <= INT32_MAX &&
                  (B == 1 || x->strides[0] == L * x->strides[1]);
  bool y_direct = y->dtype == ATTN_DTYPE_F32 && y->strides[2] == 1 && y->strides[1] == E &&
                  (B == 1 || y->strides[0] == L * E);
  /* One sequence whose every row is appended to unpaged F32 storage: the
   * product writes k and v there (a copy less: the forward over a prompt
   * of 2048 tokens ran it on one thread, 1-3 % of the layer's time). */
  float *kc = NULL, *vc = NULL;
  int64_t kcs[3], vcs[3];
  /* The rows' stride is the product's ldc: from D (a wrapped cache of
   * capacity 1 may have any, 0 included) to what BLAS takes. */
  bool in_place = B == 1 && (!n_new || n_new[0] == L) &&
                  attn__kv_rows(cache, &kc, kcs, &vc, vcs) && kcs[2] >= m->D &&
                  kcs[2] <= INT32_MAX && vcs[2] >= m->D && vcs[2] <= INT32_MAX &&
                  !attn__kv_overlaps(cache, x);
  if ((st = attn__kv_check_rows(ctx, cache, n_new, L)))
    return st;

  /* Buffers: x gathered (when its rows are not evenly strided), q (and k,
   * v unless in place), the attention output, y before scattering, RoPE
   * positions and the lengths after the append (int64, counted as two
   * floats each). */
  int64_t ldp = in_place ? hq : hq + 2 * hkv; /* q (k and v) side by side: one product */
  size_t sizes[8] = {x_direct ? 0 : (size_t)(T * E), (size_t)(T * ldp), 0, 0, (size_t)(T * hq),
                     y_direct ? 0 : (size_t)(T * E),
                     m->has_rope ? (size_t)T * 2 : 0, (size_t)B * 2};
  size_t offs[8], total = 0;
  for (int i = 0; i < 8; i++) {
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
  int64_t *lens_after = (int64_t *)(void *)(base + offs[7]);
  /* k and v as [B, H, L, D]: views of their [B, L, H, D] rows beside q, or
   * the cache's rows after the sequence's end. */
  float *k = q + hq, *v = k + hkv;
  int64_t ks[3] = {L * ldp, m->D, ldp}, vs[3] = {L * ldp, m->D, ldp};
  if (in_place) {
    k = kc + lens[0] * kcs[2], v = vc + lens[0] * vcs[2];
    memcpy(ks, kcs, sizeof ks);
    memcpy(vs, vcs, sizeof vs);
  }

  /* Projections of the counted rows (packed when a sequence has padding
   * rows; unpacked after RoPE). */
  const float *xa = x->data;
  int64_t ldx = x->strides[1];
  if (!x_direct) { /* packed, other strides, or half x */
    gather_counted(x, n_new, xg);
    xa = xg;
    ldx = E;
  }
  attn_gemm_problem pqkv;
  memset(&pqkv, 0, sizeof pqkv);
  pqkv.m = Tc, pqkv.k = E, pqkv.a = xa, pqkv.lda = ldx, pqkv.c = q, pqkv.ldc = ldp;
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
  po.m = Tc, po.k = hq, po.a = a, po.lda = hq, po.c = yo, po.ldc = E, po.n_parts = 1;
  po.part[0] = attn__mha_part(m, 3);
  attn__gemm_plan(ctx, &po);
  /* q and k rotated at positions len_b + i by attn_rope's plan and run, on
   * their [B, H, L, D] views (packed: [1, H, Tc, D]). */
  attn_rope_problem rq = m->rope, rk = m->rope;
  bool rope = m->has_rope && Tc > 0; /* (its plan takes no empty problem) */
  if (rope) {
    int64_t rB = packed ? 1 : B, rL = packed ? Tc : L, *pos = positions;
    for (int64_t b = 0; b < B; b++)
      for (int64_t l = 0; l < (packed ? n_new[b] : L); l++)
        *pos++ = lens[b] + l;
    rq.x = q, rq.B = rB, rq.H = m->Hq, rq.L = rL, rq.D = m->D, rq.positions = positions;
    rk.x = k, rk.B = rB, rk.H = m->Hkv, rk.L = rL, rk.D = m->D, rk.positions = positions;
    const int64_t xq[4] = {rL * ldp, m->D, ldp, 1};
    const int64_t xk[4] = {packed ? xq[0] : ks[0], ks[1], ks[2], 1};
    memcpy(rq.xs, xq, sizeof xq);
    memcpy(rk.xs, xk, sizeof xk);
    attn__rope_plan(ctx, &rq);
    attn__rope_plan(ctx, &rk);
  }
  /* q, a as [B, H, L, D] views of [B, L, H, D] rows. */
  const int64_t qs[4] = {L * ldp, m->D, ldp, 1};
  const int64_t as[4] = {L * hq, m->D, hq, 1};
  /* Every step's workspace, reserved before anything is written: the
   * attention's too, planned over the lengths after the append (once rows
   * are appended nothing may fail: a paged cache's copy on write would stay). */
  for (int64_t b = 0; b < B; b++)
    lens_after[b] = lens[b] + (n_new ? n_new[b] : L);
  size_t ws = pqkv.ws_bytes > po.ws_bytes ? pqkv.ws_bytes : po.ws_bytes, aws;
  if ((st = attn__kv_attend_ws(ctx, cache, lens_after, qs, m->Hq, L, as, n_new, &m->sp, &aws)))
    return st;
  if (aws > ws)
    ws = aws;
  if (rope && rq.ws_bytes > ws)
    ws = rq.ws_bytes;
  if (rope && rk.ws_bytes > ws)
    ws = rk.ws_bytes;
  if ((st = attn__ws_reserve(ctx, ws)))
    return st;
  attn__gemm_run(ctx, &pqkv);
  if (rope) {
    attn__rope_apply(ctx, &rq);
    attn__rope_apply(ctx, &rk);
  }
  if (packed)
    move_counted(q, B, L, ldp, n_new, true);
  if (in_place)
    attn__kv_commit_rows(cache, n_new, L);
  else if ((st = attn__kv_append_rows(ctx, cache, k, ks, v, vs, n_new, L)) != ATTN_OK)
    return st;
  if ((st = attn__kv_attend_rows(ctx, cache, q, qs, m->Hq, L, a, as, n_new, &m->sp))) {
    /* Not reached (checked and reserved above); were it, take the rows back. */
    for (int64_t b = 0; b < B; b++)
      attn__kv_truncate_to(cache, b, lens[b] - (n_new ? n_new[b] : L));
    return st;
  }
  if (packed)
    move_counted(a, B, L, hq, n_new, false);
  attn__gemm_run(ctx, &po); /* its workspace reserved above (the block only grows) */
  if (packed)
    move_counted(yo, B, L, E, n_new, true);
  for (int64_t b = 0; b < B; b++)
    for (int64_t l = n_new ? n_new[b] : L; l < L; l++)
      memset(yo + (b * L + l) * E, 0, (size_t)E * sizeof(float));
  if (!y_direct)
    attn__mha_copy_rows(y, yb, true);
  return ATTN_OK;
}

/* ---- public entry points: the prologue, then the work above ---- */

attn_status attn_mha_create_decoder(attn_ctx *ctx, const attn_mha_decoder_params *params,
                                    attn_mha **out) {
  attn_status st = attn__op_begin(ctx, "attn_mha_create_decoder");
  if (st != ATTN_OK)
    return st;
  return attn__op_end(ctx, mha_create_decoder_impl(ctx, params, out));
}

attn_status attn_mha_forward(attn_ctx *ctx, attn_mha *layer, attn_kv_cache *cache,
                             const attn_tensor *x, attn_tensor *y, const int64_t *n_new) {
  attn_status st = attn__op_begin(ctx, "attn_mha_forward");
  if (st != ATTN_OK)
    return st;
  return attn__op_end(ctx, mha_forward_impl(ctx, layer, cache, x, y, n_new));
}
