/* attn_rope_cached: rotary embedding from caller-given cos/sin tables (ONNX
 * RotaryEmbedding-23); the rotation is computed in double. */
#include "check.h"
#include "convert.h"

#include <string.h>

/* A rotated element costs a few multiply-adds. */
#define MIN_WORK_PER_THREAD 65536.0

typedef struct {
  const void *x;
  void *y;
  int32_t xdt, ydt; /* F32, F16 or BF16 each */
  float *rows;      /* half x or y: D floats per worker, a row widened and rotated */
  int64_t B, H, L, D, half;
  int64_t xs[4], ys[4];
  const float *cos, *sin;
  int64_t cs[3], ss[3]; /* table strides over [B, L, half] (row lookups below) */
  const int64_t *pos;   /* [B, L] row indices into 2-D tables, or NULL */
  bool per_token;       /* 3-D tables */
  bool interleaved, in_place;
} cached_problem;

static void cached_item(void *arg, int64_t item, int32_t worker) {
  const cached_problem *p = arg;
  int64_t b = item / p->L, l = item % p->L, half = p->half;
  const float *c, *s;
  if (p->per_token) {
    c = p->cos + b * p->cs[0] + l * p->cs[1];
    s = p->sin + b * p->ss[0] + l * p->ss[1];
  } else {
    int64_t row = p->pos ? p->pos[b * p->L + l] : l;
    c = p->cos + row * p->cs[1];
    s = p->sin + row * p->ss[1];
  }
  bool f32 = p->xdt == ATTN_DTYPE_F32 && p->ydt == ATTN_DTYPE_F32;
  const attn_kernels *k = attn__kernels();
  for (int64_t h = 0; h < p->H; h++) {
    const void *x = attn__elem(p->x, p->xdt, b * p->xs[0] + h * p->xs[1] + l * p->xs[2]);
    void *y = attn__elem(p->y, p->ydt, b * p->ys[0] + h * p->ys[1] + l * p->ys[2]);
    /* Half rows: widened into the worker's row, rotated there in float,
     * rounded once into y (the unrotated tail passes through unchanged
     * when x and y share a type). */
    float *row = f32 ? NULL : p->rows + worker * p->D;
    const float *xr = f32 ? x : row;
    float *yr = f32 ? y : row;
    if (!f32)
      attn__widen(k, p->xdt, x, row, p->D);
    /* Read a pair before writing it: in place, y's row is x's row. */
    for (int64_t i = 0; i < half; i++) {
      int64_t ja = p->interleaved ? 2 * i : i, jb = p->interleaved ? 2 * i + 1 : i + half;
      double u = xr[ja], v = xr[jb], ci = c[i], si = s[i];
      yr[ja] = (float)(u * ci - v * si);
      yr[jb] = (float)(u * si + v * ci);
    }
    if (!f32)
      attn__narrow(k, p->ydt, row, y, p->D);
    else if (!p->in_place)
      memcpy(yr + 2 * half, xr + 2 * half, (size_t)(p->D - 2 * half) * sizeof(float));
  }
}

void attn_rope_cached_params_init(attn_rope_cached_params *p) {
  if (!p)
    return;
  memset(p, 0, sizeof *p);
  p->struct_size = sizeof *p;
}

/* x or y as the [B, H, L, D] view; a 3-D [B, L, H*D] tensor is split into
 * heads through its strides. */
static void head_view(const attn_tensor *t, int64_t H, int64_t *dims, int64_t *strides) {
  if (t->ndim == 4) {
    memcpy(dims, t->dims, 4 * sizeof *dims);
    memcpy(strides, t->strides, 4 * sizeof *strides);
    return;
  }
  int64_t D = t->dims[2] / H;
  dims[0] = t->dims[0], dims[1] = H, dims[2] = t->dims[1], dims[3] = D;
  strides[0] = t->strides[0], strides[1] = D, strides[2] = t->strides[1], strides[3] = 1;
}

static attn_status rope_cached(attn_ctx *ctx, const attn_tensor *x, attn_tensor *y,
                               const attn_tensor *cos_t, const attn_tensor *sin_t,
                               const attn_rope_cached_params *params) {
  attn_rope_cached_params prm;
  attn_rope_cached_params_init(&prm);
  const attn_operand ops[] = {
      {ATTN_OPERAND("x", x, ATTN_DT_FLOAT, 3, 4)},
      {ATTN_OPERAND("y", y, ATTN_DT_FLOAT, 3, 4), .like = ATTN_LIKE(0),
       .flags = ATTN_OPND_OUTPUT | ATTN_OPND_SAME_SHAPE | ATTN_OPND_INPLACE},
      {ATTN_OPERAND("cos", cos_t, ATTN_DT_F32, 2, 3)},
      {ATTN_OPERAND("sin", sin_t, ATTN_DT_F32, 2, 3), .like = ATTN_LIKE(2),
       .flags = ATTN_OPND_SAME_SHAPE},
  };
  attn_status st;
  if ((st = attn__read_params(ctx, &prm, sizeof prm, params)) != ATTN_OK ||
      (st = attn__check_operands(ctx, ops, 4, NULL)) != ATTN_OK)
    return st;
  if (prm.style != ATTN_ROPE_HALF_SPLIT && prm.style != ATTN_ROPE_INTERLEAVED)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "params.style = %d is not an attn_rope_style (0 = half-split, 1 = "
                      "interleaved)",
                      (int)prm.style);
  int64_t H;
  if (x->ndim == 3) {
    if (prm.num_heads <= 0)
      return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                        "x is 3-D [B, L, H*D] but params.num_heads = %d (must be > 0)",
                        (int)prm.num_heads);
    H = prm.num_heads;
    if (x->dims[2] % H)
      return attn__fail(ctx, ATTN_ERR_SHAPE,
                        "x.shape[2] = %lld is not a multiple of params.num_heads = %lld",
                        (long long)x->dims[2], (long long)H);
  } else {
    if (prm.num_heads != 0)
      return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                        "params.num_heads = %d but must be 0 for 4-D x [B, H, L, D]",
                        (int)prm.num_heads);
    H = x->dims[1];
  }
  cached_problem p;
  memset(&p, 0, sizeof p);
  int64_t xd[4];
  head_view(x, H, xd, p.xs);
  head_view(y, H, xd, p.ys);
  p.B = xd[0], p.H = xd[1], p.L = xd[2], p.D = xd[3];
  int32_t cnd = cos_t->ndim;
  p.half = cos_t->dims[cnd - 1];
  if (2 * p.half > p.D)
    return attn__fail(ctx, ATTN_ERR_SHAPE,
                      "the tables have %lld columns, a rotary dim of %lld, but the head "
                      "dim is only %lld",
                      (long long)p.half, (long long)(2 * p.half), (long long)p.D);
  p.per_token = cnd == 3;
  if (p.per_token) {
    if (prm.position_ids)
      return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                        "params.position_ids is set but the tables are 3-D [B, L, r/2] "
                        "(per token); position ids index 2-D tables [P, r/2]");
    if ((cos_t->dims[0] != p.B && cos_t->dims[0] != 1) || cos_t->dims[1] != p.L)
      return attn__fail(ctx, ATTN_ERR_SHAPE,
                        "cos.shape = [%lld, %lld, %lld] but 3-D tables must be [B|1, L, "
                        "r/2] with B = %lld, L = %lld",
                        (long long)cos_t->dims[0], (long long)cos_t->dims[1], (long long)p.half,
                        (long long)p.B, (long long)p.L);
  } else {
    int64_t P = cos_t->dims[0];
    if (!prm.position_ids && p.L > P)
      return attn__fail(ctx, ATTN_ERR_SHAPE,
                        "x has L = %lld tokens but the tables only %lld rows (token l reads "
                        "row l without position_ids)",
                        (long long)p.L, (long long)P);
    /* An empty x: nothing is rotated, so no position id is read. */
    if (prm.position_ids && !attn__empty(x))
      for (int64_t i = 0; i < p.B * p.L; i++)
        if (prm.position_ids[i] < 0 || prm.position_ids[i] >= P)
          return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                            "params.position_ids[%lld] (batch %lld, token %lld) = %lld but "
                            "must be in 0..%lld (the tables' rows)",
                            (long long)i, (long long)(i / p.L), (long long)(i % p.L),
                            (long long)prm.position_ids[i], (long long)(P - 1));
  }
  p.in_place = attn__same_view(x, y);
  if (attn__empty(y))
    return ATTN_OK;

  p.x = x->data, p.y = y->data;
  p.xdt = x->dtype, p.ydt = y->dtype;
  p.cos = cos_t->data, p.sin = sin_t->data;
  /* Table strides over [B, L]: 3-D [B|1, L, r/2], or 2-D rows (batch unused). */
  if (p.per_token) {
    p.cs[0] = cos_t->dims[0] == 1 ? 0 : cos_t->strides[0];
    p.ss[0] = sin_t->dims[0] == 1 ? 0 : sin_t->strides[0];
    p.cs[1] = cos_t->strides[1], p.ss[1] = sin_t->strides[1];
  } else {
    p.cs[1] = cos_t->strides[0], p.ss[1] = sin_t->strides[0];
  }
  p.pos = prm.position_ids;
  p.interleaved = prm.style == ATTN_ROPE_INTERLEAVED;
  int64_t items = p.B * p.L;
  int32_t threads = attn__threads_plan(ctx, (double)items * (double)p.H * (double)p.D,
                                       MIN_WORK_PER_THREAD, items);
  if (p.xdt != ATTN_DTYPE_F32 || p.ydt != ATTN_DTYPE_F32) {
    size_t bytes;
    if (__builtin_mul_overflow((size_t)p.D * sizeof(float), (size_t)threads, &bytes))
      bytes = SIZE_MAX; /* refused by the reservation */
    if ((st = attn__ws_reserve(ctx, bytes)) != ATTN_OK)
      return st;
    p.rows = attn__ws_alloc(ctx, bytes);
  }
  attn__parallel_for(ctx, threads, items, cached_item, &p);
  return ATTN_OK;
}

attn_status attn_rope_cached(attn_ctx *ctx, const attn_tensor *x, attn_tensor *y,
                             const attn_tensor *cos_t, const attn_tensor *sin_t,
                             const attn_rope_cached_params *params) {
  attn_status st = attn__op_begin(ctx, "attn_rope_cached");
  if (st != ATTN_OK)
    return st;
  return attn__op_end(ctx, rope_cached(ctx, x, y, cos_t, sin_t, params));
}
