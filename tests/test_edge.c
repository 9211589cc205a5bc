/* Numerical edge cases, table-driven, for every op: +-FLT_MAX, subnormals,
 * +-Inf, NaN in each position, all-masked rows, length-1 rows and
 * sequences, D = 1, huge L with tiny D. Each row of a table states the
 * result include/attn.h documents:
 *   - a masked entry has weight exactly 0; a row with nothing visible gives
 *     zeros (log-softmax -inf, lse -inf or the sink), never NaN;
 *   - a NaN in the input reaches exactly the rows it touches;
 *   - rows stay finite for logits up to +-FLT_MAX (the max is taken first).
 * Plus size arithmetic at the edges (shapes whose products overflow), and
 * the softmax and SDPA tables again with f16 / bf16 data (see
 * "the same tables with f16 / bf16 data"). */
#include <float.h>

#include "ref_half.h"
#include "test_util.h"

/* Expected values: NaN means "must be NaN". */
static void expect_row(const char *what, const float *got, const double *want, int64_t n,
                       double atol) {
  for (int64_t i = 0; i < n; i++) {
    int ok = isnan(want[i]) ? isnan(got[i])
             : isinf(want[i]) ? (double)got[i] == want[i]
                              : fabs((double)got[i] - want[i]) <= atol + 1e-6 * fabs(want[i]);
    if (!ok)
      fail_msg("%s: element %lld = %.9g, expected %.9g", what, (long long)i, (double)got[i],
               want[i]);
  }
}

/* ---- the same tables with f16 / bf16 data ----
 * A half case's inputs are the table's rounded to the type (FLT_MAX becomes
 * Inf there, so the table's expected values do not carry over). The half
 * path widens exactly, runs the float computation and rounds the result
 * once; so it must give, bit for bit, the F32 op's result on the widened
 * inputs rounded to the type (NaN as NaN). That F32 result is the one the
 * F32 tables check; this is the edge semantics surviving the conversions. */

/* n floats rounded to dt (in place) and a dt tensor holding them. */
static attn_tensor *to_dt(attn_ctx *ctx, float *vals, int64_t n, int32_t nd, const int64_t *dims,
                          int32_t dt) {
  attn_tensor *f = tu_wrap(ctx, vals, (size_t)n, nd, dims, NULL), *h = NULL;
  assert_ok(attn_tensor_new(ctx, dt, nd, dims, &h));
  assert_ok(attn_tensor_copy(ctx, f, h));
  assert_ok(attn_tensor_copy(ctx, h, f));
  return h;
}

/* got (a dt tensor of n elements) equals want (floats) rounded to dt. */
static void expect_rounded(const char *what, attn_ctx *ctx, const attn_tensor *got,
                           const float *want, int64_t n, int32_t nd, const int64_t *dims) {
  float back[64], w[64];
  memcpy(w, want, (size_t)n * sizeof *w);
  attn_tensor *bt = tu_wrap(ctx, back, (size_t)n, nd, dims, NULL);
  (void)to_dt(ctx, w, n, nd, dims, attn_tensor_dtype(got)); /* w: want rounded */
  assert_ok(attn_tensor_copy(ctx, got, bt));
  for (int64_t i = 0; i < n; i++)
    if (!(isnan(w[i]) ? isnan(back[i]) : memcmp(&w[i], &back[i], sizeof w[i]) == 0))
      fail_msg("%s: element %lld = %.9g, expected %.9g", what, (long long)i, (double)back[i],
               (double)w[i]);
}

/* got[0..n) equals want bit for bit (NaN as NaN): an F32 result from half
 * inputs is the F32 op's on the widened values. */
static void expect_same(const char *what, const float *got, const float *want, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    if (!(isnan(want[i]) ? isnan(got[i]) : want[i] == got[i]))
      fail_msg("%s: element %lld = %.9g, expected %.9g", what, (long long)i, (double)got[i],
               (double)want[i]);
}

/* ================= tensors: size arithmetic ================= */

static void tensor_overflowing_shapes(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  attn_tensor *t = (attn_tensor *)0x1;
  /* Products that fit uint64 but not int64, or neither, or not the byte size. */
  static const int64_t shapes[][4] = {
      {(int64_t)1 << 62, 3, 1, 1},       {1, (int64_t)1 << 62, 3, 1},
      {3, 3, 3, (int64_t)1 << 62},       {INT64_MAX, 2, 1, 1},
      {(int64_t)1 << 31, (int64_t)1 << 31, 4, 1}, {((int64_t)1 << 61) + 1, 4, 1, 1},
      {(int64_t)1 << 32, (int64_t)1 << 32, 1, 1},
  };
  for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
    for (int32_t dtype = 0; dtype <= 1; dtype++) {
      assert_status(attn_tensor_new(ctx, dtype, 4, shapes[i], &t), ATTN_ERR_OVERFLOW);
      float buf[4];
      assert_status(attn_tensor_wrap(ctx, dtype, 4, shapes[i], NULL, buf, sizeof buf, &t),
                    ATTN_ERR_OVERFLOW);
    }
  }
  assert_ptr_equal(t, (attn_tensor *)0x1);
  /* A dim of 1 may have any stride: it is never stepped over. */
  int64_t dims[3] = {1, 2, 3}, strides[3] = {INT64_MAX, 3, 1};
  float buf[6] = {0};
  assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 3, dims, strides, buf, sizeof buf, &t));
  /* Broadcast axes: huge dims over a tiny buffer are fine for an input. */
  int64_t bd[2] = {(int64_t)1 << 40, 3}, bs[2] = {0, 1};
  assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 2, bd, bs, buf, 3 * sizeof(float), &t));
  attn_ctx_destroy(ctx);
}

/* ================= attn_sdpa ================= */

/* One head, one batch: q [Lq, D], k [Lk, D], v [Lk, Dv] contiguous. */
typedef struct {
  const char *name;
  int64_t Lq, Lk, D, Dv;
  const float *q, *k, *v;
  const float *mask;    /* [Lq, Lk] additive, or NULL */
  const uint8_t *bmask; /* [Lq, Lk], or NULL */
  int32_t causal, align;
  int64_t kv_len; /* 0 = no kv_lens; else kv_len - 1 is used (so 1 means 0) */
  float scale, softcap;
  const float *sink; /* one value, or NULL */
  attn_status status;
  const double *out; /* [Lq, Dv], NaN = must be NaN; NULL when status != OK */
  const double *lse; /* [Lq], or NULL */
} sdpa_case;

#define F(...) ((const float[]){__VA_ARGS__})
#define U(...) ((const uint8_t[]){__VA_ARGS__})
#define W(...) ((const double[]){__VA_ARGS__})
#define NINF (-INFINITY)
static const float kSub = 1e-40f; /* a subnormal */

static const sdpa_case sdpa_cases[] = {
    /* length-1 sequence, D = 1: weight 1, out = v, lse = the logit */
    {"one key", 1, 1, 1, 1, F(2), F(3), F(5), .scale = 1, .out = W(5), .lse = W(6)},
    {"one key, FLT_MAX value", 1, 1, 1, 1, F(1), F(1), F(FLT_MAX), .scale = 1,
     .out = W(FLT_MAX), .lse = W(1)},
    /* +-FLT_MAX logits: the max is subtracted first, no overflow */
    {"logits +-FLT_MAX", 1, 2, 1, 1, F(FLT_MAX), F(1, -1), F(7, 9), .scale = 1, .out = W(7),
     .lse = W(FLT_MAX)},
    {"logits FLT_MAX twice", 1, 2, 1, 1, F(FLT_MAX), F(1, 1), F(2, 4), .scale = 1,
     .out = W(3)},
    /* subnormal logits are ~0: uniform weights */
    {"subnormal q and k", 1, 3, 1, 1, F(1e-40f), F(1e-40f, -1e-40f, 0), F(3, 6, 9), .scale = 1,
     .out = W(6), .lse = W(1.0986122886681098)},
    {"subnormal values", 1, 2, 1, 1, F(0), F(0, 0), F(2e-40f, 4e-40f), .scale = 1,
     .out = W(3e-40)},
    /* -inf logit: that key has weight 0 */
    {"-inf key", 1, 2, 1, 1, F(1), F(NINF, 0), F(100, 4), .scale = 1, .out = W(4), .lse = W(0)},
    {"all keys -inf", 1, 2, 1, 1, F(1), F(NINF, NINF), F(1, 2), .scale = 1, .out = W(0),
     .lse = W(NINF)},
    /* NaN in each position reaches exactly the rows that touch it */
    {"NaN in q row 1", 2, 2, 1, 1, F(1, NAN), F(1, 2), F(3, 3), .scale = 1, .out = W(3, NAN)},
    {"NaN in k, causal", 3, 3, 1, 1, F(0, 0, 0), F(0, NAN, 0), F(1, 2, 3), .causal = 1,
     .scale = 1, .out = W(1, NAN, NAN)},
    {"NaN in v, causal", 3, 3, 1, 1, F(0, 0, 0), F(0, 0, 0), F(1, NAN, 3), .causal = 1,
     .scale = 1, .out = W(1, NAN, NAN)},
    {"Inf in v, causal", 2, 2, 1, 1, F(0, 0), F(0, 0), F(1, INFINITY), .causal = 1, .scale = 1,
     .out = W(1, INFINITY)},
    {"NaN in v, bool-masked", 1, 2, 1, 1, F(0), F(0, 0), F(1, NAN), .bmask = U(1, 0),
     .scale = 1, .out = W(1)},
    {"NaN in k, -inf mask", 1, 2, 1, 1, F(1), F(NAN, 2), F(8, 4), .mask = F(NINF, 0),
     .scale = 1, .out = W(4), .lse = W(2)},
    {"NaN in k, bool-masked", 1, 2, 1, 1, F(1), F(NAN, 2), F(8, 4), .bmask = U(0, 1),
     .scale = 1, .out = W(4), .lse = W(2)},
    {"NaN in mask", 2, 2, 1, 1, F(0, 0), F(0, 0), F(1, 3), .mask = F(0, NAN, 0, 0), .scale = 1,
     .out = W(NAN, 2)},
    {"NaN in mask, bool-masked", 1, 2, 1, 1, F(0), F(0, 0), F(1, 3), .mask = F(NAN, 0),
     .bmask = U(0, 1), .scale = 1, .out = W(3)},
    /* all-masked rows: zeros, lse -inf, never NaN */
    {"bool mask hides a row", 2, 2, 1, 1, F(1, 1), F(1, 1), F(2, 4), .bmask = U(0, 0, 1, 1),
     .scale = 1, .out = W(0, 3), .lse = W(NINF, 1.6931471805599454)},
    {"-inf mask hides a row", 2, 2, 1, 1, F(1, 1), F(1, 1), F(2, 4),
     .mask = F(NINF, NINF, 0, 0), .scale = 1, .out = W(0, 3)},
    {"kv_len 0", 2, 2, 1, 1, F(1, 1), F(1, 1), F(2, 4), .kv_len = 1, .scale = 1, .out = W(0, 0),
     .lse = W(NINF, NINF)},
    {"bottom-right causal, Lq > Lk", 3, 1, 1, 1, F(1, 1, 1), F(1), F(5), .causal = 1,
     .align = ATTN_ALIGN_BOTTOM_RIGHT, .scale = 1, .out = W(0, 0, 5),
     .lse = W(NINF, NINF, 1)},
    {"all masked with a sink", 1, 1, 1, 1, F(1), F(1), F(5), .bmask = U(0), .scale = 1,
     .sink = F(0.5f), .out = W(0), .lse = W(0.5)},
    {"sink of -FLT_MAX", 1, 1, 1, 1, F(1), F(1), F(5), .scale = 1, .sink = F(-FLT_MAX),
     .out = W(5), .lse = W(1)},
    /* soft-cap at the edges */
    {"subnormal softcap", 1, 2, 1, 1, F(0), F(0, 1), F(2, 4), .scale = 1, .softcap = kSub,
     .out = W(3)},
    {"softcap of FLT_MAX logits", 1, 2, 1, 1, F(FLT_MAX), F(1, -1), F(2, 4), .scale = 1,
     .softcap = 1, .out = W(2.2384058440442351)},
    /* bad values are refused, not computed */
    {"NaN scale", 1, 1, 1, 1, F(1), F(1), F(1), .scale = NAN, .status = ATTN_ERR_INVALID_ARG},
    {"inf scale", 1, 1, 1, 1, F(1), F(1), F(1), .scale = INFINITY,
     .status = ATTN_ERR_INVALID_ARG},
    {"inf softcap", 1, 1, 1, 1, F(1), F(1), F(1), .softcap = INFINITY,
     .status = ATTN_ERR_INVALID_ARG},
    {"NaN softcap", 1, 1, 1, 1, F(1), F(1), F(1), .softcap = NAN,
     .status = ATTN_ERR_INVALID_ARG},
    {"NaN sink", 1, 1, 1, 1, F(1), F(1), F(1), .sink = F(NAN), .status = ATTN_ERR_INVALID_ARG},
    {"inf sink", 1, 1, 1, 1, F(1), F(1), F(1), .sink = F(INFINITY),
     .status = ATTN_ERR_INVALID_ARG},
};

static void run_sdpa_case(const sdpa_case *c, int32_t threads) {
  attn_ctx *ctx = tu_ctx(threads);
  int64_t qd[4] = {1, 1, c->Lq, c->D}, kd[4] = {1, 1, c->Lk, c->D}, vd[4] = {1, 1, c->Lk, c->Dv};
  int64_t od[4] = {1, 1, c->Lq, c->Dv}, md[2] = {c->Lq, c->Lk}, ld[3] = {1, 1, c->Lq};
  float out[64], lse[16];
  for (int i = 0; i < 64; i++)
    out[i] = -777;
  for (int i = 0; i < 16; i++)
    lse[i] = -777;
  attn_sdpa_params p;
  attn_sdpa_params_init(&p);
  p.scale = c->scale;
  p.softcap = c->softcap;
  p.causal = c->causal;
  p.align = c->align;
  int64_t kv_len = c->kv_len - 1;
  if (c->kv_len)
    p.kv_lens = &kv_len;
  p.sinks = c->sink;
  if (c->mask)
    p.mask = tu_wrap(ctx, (float *)c->mask, (size_t)(c->Lq * c->Lk), 2, md, NULL);
  if (c->bmask)
    assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_U8, 2, md, NULL, (void *)c->bmask,
                               (size_t)(c->Lq * c->Lk), (attn_tensor **)&p.bool_mask));
  p.lse = tu_wrap(ctx, lse, 16, 3, ld, NULL);
  attn_status st =
      attn_sdpa(ctx, tu_wrap(ctx, (float *)c->q, (size_t)(c->Lq * c->D), 4, qd, NULL),
                tu_wrap(ctx, (float *)c->k, (size_t)(c->Lk * c->D), 4, kd, NULL),
                tu_wrap(ctx, (float *)c->v, (size_t)(c->Lk * c->Dv), 4, vd, NULL),
                tu_wrap(ctx, out, 64, 4, od, NULL), &p);
  if (st != c->status) {
    fail_msg("sdpa \"%s\": %s, expected %s (%s)", c->name, attn_status_string(st),
               attn_status_string(c->status), attn_ctx_last_error(ctx));
  } else if (st != ATTN_OK) {
    for (int i = 0; i < 64; i++)
      assert_true(out[i] == -777); /* nothing written */
  } else {
    char what[160];
    snprintf(what, sizeof what, "sdpa \"%s\" (%d threads) out", c->name, (int)threads);
    expect_row(what, out, c->out, c->Lq * c->Dv, 1e-6);
    if (c->lse) {
      snprintf(what, sizeof what, "sdpa \"%s\" lse", c->name);
      expect_row(what, lse, c->lse, c->Lq, 1e-6);
    }
  }
  attn_ctx_destroy(ctx);
}

static void sdpa_table(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof sdpa_cases / sizeof sdpa_cases[0]; i++)
    for (int32_t threads = 1; threads <= 2; threads++)
      run_sdpa_case(&sdpa_cases[i], threads);
}

static void run_sdpa_case_half(const sdpa_case *c, int32_t dt) {
  if (c->status != ATTN_OK)
    return;
  attn_ctx *ctx = tu_ctx(1);
  int64_t qd[4] = {1, 1, c->Lq, c->D}, kd[4] = {1, 1, c->Lk, c->D}, vd[4] = {1, 1, c->Lk, c->Dv};
  int64_t od[4] = {1, 1, c->Lq, c->Dv}, md[2] = {c->Lq, c->Lk};
  float q[64], k[64], v[64], o32[64];
  memcpy(q, c->q, (size_t)(c->Lq * c->D) * sizeof *q);
  memcpy(k, c->k, (size_t)(c->Lk * c->D) * sizeof *k);
  memcpy(v, c->v, (size_t)(c->Lk * c->Dv) * sizeof *v);
  attn_sdpa_params p;
  attn_sdpa_params_init(&p);
  p.scale = c->scale;
  p.softcap = c->softcap;
  p.causal = c->causal;
  p.align = c->align;
  int64_t kv_len = c->kv_len - 1;
  if (c->kv_len)
    p.kv_lens = &kv_len;
  p.sinks = c->sink;
  if (c->mask)
    p.mask = tu_wrap(ctx, (float *)c->mask, (size_t)(c->Lq * c->Lk), 2, md, NULL);
  if (c->bmask)
    assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_U8, 2, md, NULL, (void *)c->bmask,
                               (size_t)(c->Lq * c->Lk), (attn_tensor **)&p.bool_mask));
  attn_tensor *hq = to_dt(ctx, q, c->Lq * c->D, 4, qd, dt);
  attn_tensor *hk = to_dt(ctx, k, c->Lk * c->D, 4, kd, dt);
  attn_tensor *hv = to_dt(ctx, v, c->Lk * c->Dv, 4, vd, dt);
  attn_tensor *ho = NULL;
  assert_ok(attn_tensor_new(ctx, dt, 4, od, &ho));
  assert_ok(attn_sdpa(ctx, tu_wrap(ctx, q, 64, 4, qd, NULL), tu_wrap(ctx, k, 64, 4, kd, NULL),
                      tu_wrap(ctx, v, 64, 4, vd, NULL), tu_wrap(ctx, o32, 64, 4, od, NULL), &p));
  assert_ok(attn_sdpa(ctx, hq, hk, hv, ho, &p));
  char what[160];
  snprintf(what, sizeof what, "sdpa \"%s\" in %s", c->name,
           dt == ATTN_DTYPE_F16 ? "f16" : "bf16");
  expect_rounded(what, ctx, ho, o32, c->Lq * c->Dv, 4, od);
  /* f32 queries and output over a half cache: the F32 result itself. */
  float om[64];
  assert_ok(attn_sdpa(ctx, tu_wrap(ctx, q, 64, 4, qd, NULL), hk, hv,
                      tu_wrap(ctx, om, 64, 4, od, NULL), &p));
  snprintf(what + strlen(what), sizeof what - strlen(what), ", f32 q over a half cache");
  expect_same(what, om, o32, c->Lq * c->Dv);
  attn_ctx_destroy(ctx);
}

static void sdpa_table_half(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof sdpa_cases / sizeof sdpa_cases[0]; i++) {
    run_sdpa_case_half(&sdpa_cases[i], ATTN_DTYPE_F16);
    run_sdpa_case_half(&sdpa_cases[i], ATTN_DTYPE_BF16);
  }
}

/* ---- a half KV cache: non-finite keys and values, hidden and visible ----
 * Two keys (D = Dv = 1) appended as F32 into an F16 or a BF16 cache, one
 * decode row (q = 1, scale 1, causal) at position 1; `hide` adds a window of
 * 0 keys to the left, so only key 1 is seen. The expected outputs follow
 * attn.h's rules on the rounded values: 1e5 is Inf in f16 (a +Inf logit
 * makes the row NaN) but 99840 in bf16 (that key then takes all the weight). */
typedef struct {
  const char *name;
  float k[2], v[2];
  int hide;
  double out_f16, out_bf16;
} kv_edge;

static const kv_edge kv_edges[] = {
    {"NaN key hidden", {NAN, 2}, {8, 4}, 1, 4, 4},
    {"Inf value hidden", {0, 2}, {INFINITY, 4}, 1, 4, 4},
    {"NaN value hidden", {0, 2}, {NAN, 4}, 1, 4, 4},
    {"-Inf key", {NINF, 2}, {8, 4}, 0, 4, 4},
    {"NaN key visible", {NAN, 2}, {8, 4}, 0, NAN, NAN},
    {"Inf value visible", {0, 0}, {INFINITY, 4}, 0, INFINITY, INFINITY},
    {"key past f16's range", {1e5f, 2}, {8, 4}, 0, NAN, 8},
    {"value past f16's range", {0, 0}, {1e5f, 0}, 0, INFINITY, 49920},
    {"subnormal values", {0, 0}, {0x1p-24f, 0x1p-23f}, 0, 0x1.8p-24, 0x1.8p-24},
};

static void kv_half_table(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof kv_edges / sizeof kv_edges[0]; i++)
    for (int t = 0; t < 2; t++) {
      const kv_edge *e = &kv_edges[i];
      int32_t dt = t ? ATTN_DTYPE_BF16 : ATTN_DTYPE_F16;
      attn_ctx *ctx = tu_ctx(1);
      attn_kv_cache_params cp;
      attn_kv_cache_params_init(&cp);
      cp.dtype = dt, cp.layout = t ? ATTN_KV_PAGED : ATTN_KV_CONTIGUOUS;
      cp.batch = 1, cp.kv_heads = 1, cp.head_dim = 1, cp.capacity = 2;
      cp.block_size = 1, cp.num_blocks = 2;
      attn_kv_cache *kv = NULL;
      assert_ok(attn_kv_cache_create(ctx, &cp, &kv));
      float k[2], v[2], q[1] = {1}, o[1] = {-777};
      memcpy(k, e->k, sizeof k), memcpy(v, e->v, sizeof v);
      int64_t d2[4] = {1, 1, 2, 1}, d1[4] = {1, 1, 1, 1}, one = 1;
      assert_ok(attn_kv_append(ctx, kv, tu_wrap(ctx, k, 2, 4, d2, NULL),
                               tu_wrap(ctx, v, 2, 4, d2, NULL), NULL, NULL));
      attn_sdpa_params p;
      attn_sdpa_params_init(&p);
      p.scale = 1, p.causal = 1, p.window = e->hide, p.window_left = 0;
      assert_ok(attn_kv_attend(ctx, kv, tu_wrap(ctx, q, 1, 4, d1, NULL),
                               tu_wrap(ctx, o, 1, 4, d1, NULL), &one, &p));
      char what[160];
      snprintf(what, sizeof what, "kv cache \"%s\" in %s", e->name, t ? "bf16" : "f16");
      double want = t ? e->out_bf16 : e->out_f16;
      expect_row(what, o, &want, 1, 0);
      attn_ctx_destroy(ctx);
    }
}

/* ================= sdpa backward ================= */

/* One head, D = Dv = 1: the forward through the library, then the backward;
 * gradients stated by hand from attn.h's formulas. */
typedef struct {
  const char *name;
  int64_t Lq, Lk;
  const float *q, *k, *v, *dout;
  const uint8_t *bmask; /* [Lq, Lk], or NULL */
  int32_t causal, align;
  int64_t kv_len; /* as sdpa_case: 0 = none, else kv_len - 1 */
  const float *sink;
  const double *dq, *dk, *dv; /* NaN = must be NaN */
  double dsink;
} bwd_case;

#define P1 0.7310585786300049 /* e / (e + 1) */
static const bwd_case bwd_cases[] = {
    {"one key", 1, 1, F(2), F(3), F(5), F(1), .dq = W(0), .dk = W(0), .dv = W(1)},
    {"bool mask hides a row", 2, 2, F(1, 1), F(1, 1), F(2, 4), F(1, 1),
     .bmask = U(0, 0, 1, 1), .dq = W(0, 0), .dk = W(-0.5, 0.5), .dv = W(0.5, 0.5)},
    {"NaN in k and v past kv_len", 1, 2, F(1), F(1, NAN), F(3, NAN), F(1), .kv_len = 2,
     .dq = W(0), .dk = W(0, 0), .dv = W(1, 0)},
    {"NaN in bool-masked k and v", 1, 2, F(1), F(NAN, 2), F(NAN, 4), F(1), .bmask = U(0, 1),
     .dq = W(0), .dk = W(0, 0), .dv = W(0, 1)},
    {"NaN dout in a row that sees nothing", 2, 1, F(1, 1), F(1), F(5), F(NAN, 1), .causal = 1,
     .align = ATTN_ALIGN_BOTTOM_RIGHT, .dq = W(0, 0), .dk = W(0), .dv = W(1)},
    {"kv_len 0", 2, 2, F(1, 2), F(1, 1), F(2, 4), F(1, 1), .kv_len = 1, .dq = W(0, 0),
     .dk = W(0, 0), .dv = W(0, 0)},
    {"length 1 with a sink", 1, 1, F(1), F(1), F(5), F(1), .sink = F(0),
     .dq = W(5 * P1 * (1 - P1)), .dk = W(5 * P1 * (1 - P1)), .dv = W(P1),
     .dsink = -5 * P1 * (1 - P1)},
    {"all masked with a sink", 1, 1, F(1), F(1), F(5), F(1), .bmask = U(0), .sink = F(0.5f),
     .dq = W(0), .dk = W(0), .dv = W(0), .dsink = 0},
    {"+inf logit: NaN row", 1, 1, F(INFINITY), F(1), F(1), F(1), .dq = W(NAN), .dk = W(NAN),
     .dv = W(NAN)},
};

static void sdpa_backward_table(void **state) {
  (void)state;
  for (size_t c = 0; c < sizeof bwd_cases / sizeof *bwd_cases; c++)
    for (int32_t threads = 1; threads <= 2; threads++) {
      const bwd_case *e = &bwd_cases[c];
      attn_ctx *ctx = tu_ctx(threads);
      int64_t qd[4] = {1, 1, e->Lq, 1}, kd[4] = {1, 1, e->Lk, 1}, ld[3] = {1, 1, e->Lq},
              md[2] = {e->Lq, e->Lk};
      float o[8], lse[8], dq[8], dk[8], dv[8], dsink = -777;
      attn_tensor *q = tu_wrap(ctx, (float *)e->q, (size_t)e->Lq, 4, qd, NULL);
      attn_tensor *k = tu_wrap(ctx, (float *)e->k, (size_t)e->Lk, 4, kd, NULL);
      attn_tensor *v = tu_wrap(ctx, (float *)e->v, (size_t)e->Lk, 4, kd, NULL);
      attn_tensor *to = tu_wrap(ctx, o, 8, 4, qd, NULL), *tl = tu_wrap(ctx, lse, 8, 3, ld, NULL);
      attn_sdpa_params p;
      attn_sdpa_params_init(&p);
      p.scale = 1;
      p.causal = e->causal;
      p.align = e->align;
      int64_t kv_len = e->kv_len - 1;
      if (e->kv_len)
        p.kv_lens = &kv_len;
      p.sinks = e->sink;
      if (e->bmask)
        assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_U8, 2, md, NULL, (void *)e->bmask,
                                   (size_t)(e->Lq * e->Lk), (attn_tensor **)&p.bool_mask));
      p.lse = tl;
      assert_ok(attn_sdpa(ctx, q, k, v, to, &p));
      attn_sdpa_backward_params bp;
      attn_sdpa_backward_params_init(&bp);
      bp.dsinks = e->sink ? &dsink : NULL;
      assert_ok(attn_sdpa_backward(ctx, q, k, v, to, tl,
                                   tu_wrap(ctx, (float *)e->dout, (size_t)e->Lq, 4, qd, NULL),
                                   tu_wrap(ctx, dq, 8, 4, qd, NULL),
                                   tu_wrap(ctx, dk, 8, 4, kd, NULL),
                                   tu_wrap(ctx, dv, 8, 4, kd, NULL), &p, &bp));
      char what[160];
      snprintf(what, sizeof what, "sdpa_backward \"%s\" (%d threads) dq", e->name, (int)threads);
      expect_row(what, dq, e->dq, e->Lq, 1e-6);
      snprintf(what, sizeof what, "sdpa_backward \"%s\" dk", e->name);
      expect_row(what, dk, e->dk, e->Lk, 1e-6);
      snprintf(what, sizeof what, "sdpa_backward \"%s\" dv", e->name);
      expect_row(what, dv, e->dv, e->Lk, 1e-6);
      if (e->sink)
        expect_row("sdpa_backward dsink", &dsink, &e->dsink, 1, 1e-6);
      attn_ctx_destroy(ctx);
    }
}

/* Huge L with tiny D: 200000 keys of D = 1 and q = 0 (uniform weights), and
 * 20000 queries against one key. */
static void sdpa_huge_l(void **state) {
  (void)state;
  enum { LK = 200000, LQ = 20000 };
  float *k = calloc(LK, sizeof *k), *v = malloc(LK * sizeof *v), *o = malloc(LQ * sizeof *o);
  assert_true(k && v && o);
  double mean = 0;
  for (int j = 0; j < LK; j++) {
    v[j] = (float)(j % 7) - 3.0f;
    mean += v[j];
  }
  mean /= LK;
  for (int32_t threads = 1; threads <= 2; threads++) {
    attn_ctx *ctx = tu_ctx(threads);
    float q = 0, out, lse;
    int64_t qd[4] = {1, 1, 1, 1}, kd[4] = {1, 1, LK, 1}, ld[3] = {1, 1, 1};
    attn_sdpa_params p;
    attn_sdpa_params_init(&p);
    p.lse = tu_wrap(ctx, &lse, 1, 3, ld, NULL);
    assert_ok(attn_sdpa(ctx, tu_wrap(ctx, &q, 1, 4, qd, NULL), tu_wrap(ctx, k, LK, 4, kd, NULL),
                        tu_wrap(ctx, v, LK, 4, kd, NULL), tu_wrap(ctx, &out, 1, 4, qd, NULL), &p));
    assert_close(out, mean, 0, 1e-4);
    assert_close(lse, log((double)LK), 1e-6, 0);
    /* Many queries, one key: every row is v[0]. */
    int64_t qd2[4] = {1, 1, LQ, 1}, kd2[4] = {1, 1, 1, 1};
    float one_v = 2.5f;
    p.lse = NULL;
    p.causal = 1;
    p.align = ATTN_ALIGN_BOTTOM_RIGHT; /* only the last query sees the key */
    assert_ok(attn_sdpa(ctx, tu_wrap(ctx, v, LQ, 4, qd2, NULL), tu_wrap(ctx, k, 1, 4, kd2, NULL),
                        tu_wrap(ctx, &one_v, 1, 4, kd2, NULL), tu_wrap(ctx, o, LQ, 4, qd2, NULL),
                        &p));
    for (int i = 0; i < LQ - 1; i++)
      assert_true(o[i] == 0.0f);
    assert_true(o[LQ - 1] == 2.5f);
    attn_ctx_destroy(ctx);
  }
  free(k);
  free(v);
  free(o);
}

/* Packed sequences at the edges: empty sequences (no queries, or no keys),
 * including a last one that starts one past the end of k, whose first axis
 * has size 1 and therefore any stride. */
static void sdpa_varlen_empty(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  float q[2] = {1, 1}, k[1] = {1}, v[1] = {6}, out[2] = {-7, -7}, lse[2];
  int64_t qd[3] = {2, 1, 1}, kd[3] = {1, 1, 1}, ks[3] = {INT64_MAX / 8, 1, 1}, ld[2] = {1, 2};
  int64_t cu_q[4] = {0, 0, 1, 2}, cu_k[4] = {0, 1, 1, 1};
  attn_sdpa_params p;
  attn_sdpa_params_init(&p);
  p.lse = tu_wrap(ctx, lse, 2, 2, ld, NULL);
  assert_ok(attn_sdpa_varlen(ctx, tu_wrap(ctx, q, 2, 3, qd, NULL), tu_wrap(ctx, k, 1, 3, kd, ks),
                             tu_wrap(ctx, v, 1, 3, kd, ks), tu_wrap(ctx, out, 2, 3, qd, NULL), 3,
                             cu_q, cu_k, &p));
  /* Sequence 0 has a key and no query; 1 and 2 have a query and no key. */
  assert_true(out[0] == 0 && out[1] == 0);
  assert_true(lse[0] == -INFINITY && lse[1] == -INFINITY);
  /* The backward of the same packing: the rows that see no key get dq = 0
   * (a NaN dout included), the key of the sequence without queries dk = dv
   * = 0; a NaN in that key reaches nothing. (k's huge token stride would
   * exceed what BLAS takes: contiguous here.) */
  k[0] = NAN, v[0] = NAN;
  float dout[2] = {NAN, 1}, dq[2] = {-7, -7}, dk[1] = {-7}, dv[1] = {-7};
  assert_ok(attn_sdpa_varlen_backward(
      ctx, tu_wrap(ctx, q, 2, 3, qd, NULL), tu_wrap(ctx, k, 1, 3, kd, NULL),
      tu_wrap(ctx, v, 1, 3, kd, NULL), tu_wrap(ctx, out, 2, 3, qd, NULL),
      tu_wrap(ctx, lse, 2, 2, ld, NULL), tu_wrap(ctx, dout, 2, 3, qd, NULL),
      tu_wrap(ctx, dq, 2, 3, qd, NULL), tu_wrap(ctx, dk, 1, 3, kd, NULL),
      tu_wrap(ctx, dv, 1, 3, kd, NULL), 3, cu_q, cu_k, &p, NULL));
  assert_true(dq[0] == 0 && dq[1] == 0 && dk[0] == 0 && dv[0] == 0);
  attn_ctx_destroy(ctx);
}

/* Packed backward rows by hand (one head, D = Dv = 1, scale 1): sequence 0
 * has one query and two keys, k = (0, 0) (equal weights 1/2), v = (1, 3),
 * dout = 1: out = 2, dv = (1/2, 1/2), dP = v, dS = (1/2)(v - 2) = (-1/2, 1/2),
 * dq = sum dS k = 0, dk = dS q = (-q/2, q/2) with q = 2; sequence 1 has one
 * query and one key (length 1: dq = dk = 0, dv = dout = 3); sequence 2 has
 * a key and no query (zeros); a causal bottom-right row of sequence 3 sees
 * its one key, the other none (its NaN dout reaches nothing). */
static void sdpa_varlen_backward_rows(void **state) {
  (void)state;
  for (int32_t threads = 1; threads <= 2; threads++) {
    attn_ctx *ctx = tu_ctx(threads);
    float q[4] = {2, 5, 1, 1}, k[5] = {0, 0, 1, NAN, 4}, v[5] = {1, 3, 6, NAN, 2};
    float out[4], lse[4], dout[4] = {1, 3, NAN, 2};
    float dq[4], dk[5], dv[5];
    int64_t qd[3] = {4, 1, 1}, kd[3] = {5, 1, 1}, ld[2] = {1, 4};
    int64_t cu_q[5] = {0, 1, 2, 2, 4}, cu_k[5] = {0, 2, 3, 4, 5};
    attn_sdpa_params p;
    attn_sdpa_params_init(&p);
    p.scale = 1;
    p.causal = 1;
    p.align = ATTN_ALIGN_BOTTOM_RIGHT;
    p.lse = tu_wrap(ctx, lse, 4, 2, ld, NULL);
    attn_tensor *tq = tu_wrap(ctx, q, 4, 3, qd, NULL), *tk = tu_wrap(ctx, k, 5, 3, kd, NULL);
    attn_tensor *tv = tu_wrap(ctx, v, 5, 3, kd, NULL), *to = tu_wrap(ctx, out, 4, 3, qd, NULL);
    assert_ok(attn_sdpa_varlen(ctx, tq, tk, tv, to, 4, cu_q, cu_k, &p));
    assert_ok(attn_sdpa_varlen_backward(ctx, tq, tk, tv, to, p.lse,
                                        tu_wrap(ctx, dout, 4, 3, qd, NULL),
                                        tu_wrap(ctx, dq, 4, 3, qd, NULL),
                                        tu_wrap(ctx, dk, 5, 3, kd, NULL),
                                        tu_wrap(ctx, dv, 5, 3, kd, NULL), 4, cu_q, cu_k, &p,
                                        NULL));
    expect_row("varlen backward dq", dq, W(0, 0, 0, 0), 4, 1e-6);
    expect_row("varlen backward dk", dk, W(-1, 1, 0, 0, 0), 5, 1e-6);
    expect_row("varlen backward dv", dv, W(0.5, 0.5, 3, 0, 2), 5, 1e-6);
    attn_ctx_destroy(ctx);
  }
}


/* ================= attn_softmax / attn_log_softmax ================= */

/* One row of n entries (or rows x n with .rows); bmask/mask are per entry. */
typedef struct {
  const char *name;
  int64_t n;
  const float *x;
  const uint8_t *bmask;
  const float *mask;
  float scale;
  attn_status status;
  const double *y;    /* softmax, NaN = must be NaN */
  const double *logy; /* log-softmax */
} sm_case;

#define LN2 0.69314718055994531
#define LN3 1.0986122886681098
static const sm_case sm_cases[] = {
    {"length 1", 1, F(5), .y = W(1), .logy = W(0)},
    {"length 1, -FLT_MAX", 1, F(-FLT_MAX), .y = W(1), .logy = W(0)},
    {"length 1, subnormal", 1, F(1e-40f), .y = W(1), .logy = W(0)},
    {"+-FLT_MAX", 2, F(FLT_MAX, -FLT_MAX), .y = W(1, 0), .logy = W(0, NINF)},
    {"FLT_MAX twice", 2, F(FLT_MAX, FLT_MAX), .y = W(0.5, 0.5), .logy = W(-LN2, -LN2)},
    {"-FLT_MAX twice", 2, F(-FLT_MAX, -FLT_MAX), .y = W(0.5, 0.5), .logy = W(-LN2, -LN2)},
    {"subnormals", 3, F(1e-40f, -1e-40f, 0), .y = W(1. / 3, 1. / 3, 1. / 3),
     .logy = W(-LN3, -LN3, -LN3)},
    {"-inf entry", 2, F(NINF, 1), .y = W(0, 1), .logy = W(NINF, 0)},
    {"all -inf", 2, F(NINF, NINF), .y = W(0, 0), .logy = W(NINF, NINF)},
    {"+inf entry", 2, F(INFINITY, 1), .y = W(NAN, NAN), .logy = W(NAN, NAN)},
    {"NaN first", 3, F(NAN, 1, 2), .y = W(NAN, NAN, NAN), .logy = W(NAN, NAN, NAN)},
    {"NaN middle", 3, F(1, NAN, 2), .y = W(NAN, NAN, NAN), .logy = W(NAN, NAN, NAN)},
    {"NaN last", 3, F(1, 2, NAN), .y = W(NAN, NAN, NAN), .logy = W(NAN, NAN, NAN)},
    {"NaN bool-masked", 3, F(NAN, 0, 0), .bmask = U(0, 1, 1), .y = W(0, 0.5, 0.5),
     .logy = W(NINF, -LN2, -LN2)},
    {"+inf bool-masked", 2, F(INFINITY, 0), .bmask = U(0, 1), .y = W(0, 1), .logy = W(NINF, 0)},
    {"all bool-masked", 2, F(1, 2), .bmask = U(0, 0), .y = W(0, 0), .logy = W(NINF, NINF)},
    {"-inf mask", 2, F(3, 1), .mask = F(NINF, 0), .y = W(0, 1), .logy = W(NINF, 0)},
    {"-inf mask on every entry", 2, F(3, 1), .mask = F(NINF, NINF), .y = W(0, 0),
     .logy = W(NINF, NINF)},
    {"NaN and +inf x under a -inf mask", 3, F(NAN, INFINITY, 1), .mask = F(NINF, NINF, 0),
     .y = W(0, 0, 1), .logy = W(NINF, NINF, 0)},
    {"+inf and NaN x under a -inf mask on every entry", 2, F(INFINITY, NAN),
     .mask = F(NINF, NINF), .y = W(0, 0), .logy = W(NINF, NINF)},
    {"NaN in mask", 2, F(3, 1), .mask = F(0, NAN), .y = W(NAN, NAN), .logy = W(NAN, NAN)},
    {"FLT_MAX mask", 2, F(0, 0), .mask = F(FLT_MAX, 0), .y = W(1, 0), .logy = W(0, -FLT_MAX)},
    /* z is float: scale*x overflows, to +inf (a NaN row) or -inf (masked) */
    {"scale*x overflows to +inf", 2, F(FLT_MAX, 0), .scale = 2, .y = W(NAN, NAN),
     .logy = W(NAN, NAN)},
    {"scale*x overflows to -inf", 2, F(-FLT_MAX, 0), .scale = 2, .y = W(0, 1),
     .logy = W(NINF, 0)},
    {"negative scale", 2, F(1, 2), .scale = -1, .y = W(0.7310585786300049, 0.2689414213699951),
     .logy = W(-0.31326168751822286, -1.3132616875182228)},
    {"subnormal scale", 2, F(FLT_MAX, 0), .scale = 1e-45f, .y = W(0.5000000000000001, 0.5),
     .logy = W(-LN2, -LN2)},
    {"NaN scale", 1, F(1), .scale = NAN, .status = ATTN_ERR_INVALID_ARG},
    {"inf scale", 1, F(1), .scale = INFINITY, .status = ATTN_ERR_INVALID_ARG},
};

static void run_sm_case(const sm_case *c, int log) {
  attn_ctx *ctx = tu_ctx(1);
  int64_t d[1] = {c->n};
  float y[16];
  for (int i = 0; i < 16; i++)
    y[i] = -777;
  attn_softmax_params p;
  attn_softmax_params_init(&p);
  if (c->scale != 0)
    p.scale = c->scale;
  if (c->mask)
    p.mask = tu_wrap(ctx, (float *)c->mask, (size_t)c->n, 1, d, NULL);
  if (c->bmask)
    assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_U8, 1, d, NULL, (void *)c->bmask, (size_t)c->n,
                               (attn_tensor **)&p.bool_mask));
  attn_tensor *x = tu_wrap(ctx, (float *)c->x, (size_t)c->n, 1, d, NULL);
  attn_tensor *yt = tu_wrap(ctx, y, (size_t)c->n, 1, d, NULL);
  attn_status st = log ? attn_log_softmax(ctx, x, yt, &p) : attn_softmax(ctx, x, yt, &p);
  if (st != c->status)
    fail_msg("%s \"%s\": %s, expected %s", log ? "log_softmax" : "softmax", c->name,
             attn_status_string(st), attn_status_string(c->status));
  if (st == ATTN_OK) {
    char what[128];
    snprintf(what, sizeof what, "%s \"%s\"", log ? "log_softmax" : "softmax", c->name);
    expect_row(what, y, log ? c->logy : c->y, c->n, 1e-6);
  } else {
    for (int i = 0; i < 16; i++)
      assert_true(y[i] == -777);
  }
  attn_ctx_destroy(ctx);
}

/* Backward calls whose heads outnumber anything the memory could hold: an
 * empty batch or no query rows may claim 2^40 or 2^62 query heads (the
 * dsinks accumulator of Hq doubles was sized without a check, 8 TiB or a
 * wrapped 0 bytes; the items walked every head without a row). */
static void backward_empty_heads(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(2);
  float buf[16] = {0}, dk[2], dv[2];
  const int64_t big[2] = {(int64_t)1 << 40, (int64_t)1 << 62};
  for (int i = 0; i < 2; i++) {
    int64_t H = big[i];
    /* B = 0: everything is empty. */
    int64_t q0[4] = {0, H, 1, 1}, k0[4] = {0, 1, 1, 1}, l0[3] = {0, H, 1};
    attn_tensor *q = tu_wrap(ctx, buf, 16, 4, q0, NULL), *k = tu_wrap(ctx, buf, 16, 4, k0, NULL),
                *l = tu_wrap(ctx, buf, 16, 3, l0, NULL);
    assert_ok(attn_sdpa_backward(ctx, q, k, k, q, l, q, q, k, k, NULL, NULL));
    /* No query row, two keys: the keys' gradients are zeros. */
    int64_t qd[4] = {1, H, 0, 1}, kd[4] = {1, 1, 2, 1}, ld[3] = {1, H, 0};
    q = tu_wrap(ctx, buf, 16, 4, qd, NULL), l = tu_wrap(ctx, buf, 16, 3, ld, NULL);
    k = tu_wrap(ctx, buf, 16, 4, kd, NULL);
    dk[0] = dk[1] = dv[0] = dv[1] = -7;
    assert_ok(attn_sdpa_backward(ctx, q, k, k, q, l, q, q, tu_wrap(ctx, dk, 2, 4, kd, NULL),
                                 tu_wrap(ctx, dv, 2, 4, kd, NULL), NULL, NULL));
    assert_true(dk[0] == 0 && dk[1] == 0 && dv[0] == 0 && dv[1] == 0);
    /* The same as one packed sequence without queries. */
    int64_t pq[3] = {0, H, 1}, pk[3] = {2, 1, 1}, pl[2] = {H, 0}, cu_q[2] = {0, 0},
            cu_k[2] = {0, 2}, ps[3] = {1, 1, 1}; /* (a token stride BLAS takes) */
    attn_tensor *tq = tu_wrap(ctx, buf, 16, 3, pq, ps), *tk = tu_wrap(ctx, buf, 16, 3, pk, NULL);
    dk[0] = dk[1] = dv[0] = dv[1] = -7;
    assert_ok(attn_sdpa_varlen_backward(ctx, tq, tk, tk, tq, tu_wrap(ctx, buf, 16, 2, pl, NULL),
                                        tq, tq, tu_wrap(ctx, dk, 2, 3, pk, NULL),
                                        tu_wrap(ctx, dv, 2, 3, pk, NULL), 1, cu_q, cu_k, NULL,
                                        NULL));
    assert_true(dk[0] == 0 && dk[1] == 0 && dv[0] == 0 && dv[1] == 0);
    /* attn_pool_attention_backward with M = 0 learned queries of H heads. */
    int64_t qq[3] = {H, 0, 1};
    attn_tensor *qs = tu_wrap(ctx, buf, 16, 3, qq, NULL);
    dk[0] = dk[1] = dv[0] = dv[1] = -7;
    assert_ok(attn_pool_attention_backward(ctx, qs, k, k, q, l, q, qs,
                                           tu_wrap(ctx, dk, 2, 4, kd, NULL),
                                           tu_wrap(ctx, dv, 2, 4, kd, NULL), NULL));
    assert_true(dk[0] == 0 && dk[1] == 0 && dv[0] == 0 && dv[1] == 0);
  }
  attn_ctx_destroy(ctx);
}

/* attn_pool_backward of sequences without a token (L = 0) whose scores are
 * broadcast ([1, 1]): dx is empty and dscores sums nothing, so it is 0, at
 * once for 2^40 sequences (walked one by one, and their [1, 1] sum over
 * every sequence, before: a hang). */
static void pool_backward_no_tokens(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(2);
  float buf[4] = {0}, ds = -7;
  int64_t xd[3] = {(int64_t)1 << 40, 0, 2}, od[2] = {(int64_t)1 << 40, 2}, sd[2] = {1, 1},
          zs[2] = {0, 1};
  attn_tensor *x = tu_wrap(ctx, buf, 4, 3, xd, NULL), *dout = tu_wrap(ctx, buf, 4, 2, od, zs);
  attn_pool_params p;
  attn_pool_params_init(&p);
  p.mode = ATTN_POOL_WEIGHTED;
  p.scores = tu_wrap(ctx, buf, 4, 2, sd, NULL);
  assert_ok(attn_pool_backward(ctx, x, dout, tu_wrap(ctx, buf, 4, 3, xd, NULL),
                               tu_wrap(ctx, &ds, 1, 2, sd, NULL), &p));
  assert_true(ds == 0);
  attn_ctx_destroy(ctx);
}

static void softmax_table(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof sm_cases / sizeof sm_cases[0]; i++) {
    run_sm_case(&sm_cases[i], 0);
    run_sm_case(&sm_cases[i], 1);
  }
}

static void run_sm_case_half(const sm_case *c, int log, int32_t dt) {
  if (c->status != ATTN_OK)
    return;
  attn_ctx *ctx = tu_ctx(1);
  int64_t d[1] = {c->n};
  float x[16], y32[16];
  memcpy(x, c->x, (size_t)c->n * sizeof *x);
  attn_softmax_params p;
  attn_softmax_params_init(&p);
  if (c->scale != 0)
    p.scale = c->scale;
  if (c->mask)
    p.mask = tu_wrap(ctx, (float *)c->mask, (size_t)c->n, 1, d, NULL);
  if (c->bmask)
    assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_U8, 1, d, NULL, (void *)c->bmask, (size_t)c->n,
                               (attn_tensor **)&p.bool_mask));
  attn_tensor *hx = to_dt(ctx, x, c->n, 1, d, dt), *hy = NULL;
  assert_ok(attn_tensor_new(ctx, dt, 1, d, &hy));
  attn_tensor *fx = tu_wrap(ctx, x, (size_t)c->n, 1, d, NULL);
  attn_tensor *fy = tu_wrap(ctx, y32, (size_t)c->n, 1, d, NULL);
  assert_ok(log ? attn_log_softmax(ctx, fx, fy, &p) : attn_softmax(ctx, fx, fy, &p));
  assert_ok(log ? attn_log_softmax(ctx, hx, hy, &p) : attn_softmax(ctx, hx, hy, &p));
  char what[128];
  snprintf(what, sizeof what, "%s \"%s\" in %s", log ? "log_softmax" : "softmax", c->name,
           dt == ATTN_DTYPE_F16 ? "f16" : "bf16");
  expect_rounded(what, ctx, hy, y32, c->n, 1, d);
  /* In place on the half tensor: the same. */
  assert_ok(log ? attn_log_softmax(ctx, hx, hx, &p) : attn_softmax(ctx, hx, hx, &p));
  expect_rounded(what, ctx, hx, y32, c->n, 1, d);
  attn_ctx_destroy(ctx);
}

static void softmax_table_half(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof sm_cases / sizeof sm_cases[0]; i++)
    for (int log = 0; log < 2; log++) {
      run_sm_case_half(&sm_cases[i], log, ATTN_DTYPE_F16);
      run_sm_case_half(&sm_cases[i], log, ATTN_DTYPE_BF16);
    }
}

/* Huge L with tiny D: one row of 2^20 zeros, and 2^20 rows of length 1. */
static void softmax_huge(void **state) {
  (void)state;
  enum { N = 1 << 20 };
  float *x = calloc(N, sizeof *x), *y = malloc(N * sizeof *y);
  assert_true(x && y);
  for (int32_t threads = 1; threads <= 2; threads++) {
    attn_ctx *ctx = tu_ctx(threads);
    int64_t row[1] = {N}, col[2] = {N, 1};
    assert_ok(attn_softmax(ctx, tu_wrap(ctx, x, N, 1, row, NULL), tu_wrap(ctx, y, N, 1, row, NULL),
                           NULL));
    double sum = 0;
    for (int i = 0; i < N; i++) {
      assert_close(y[i], 1.0 / N, 1e-6, 0);
      sum += y[i];
    }
    assert_close(sum, 1.0, 1e-5, 0);
    x[5] = NAN; /* one NaN: only its own length-1 row */
    x[6] = -INFINITY; /* a fully masked length-1 row */
    assert_ok(attn_log_softmax(ctx, tu_wrap(ctx, x, N, 2, col, NULL),
                               tu_wrap(ctx, y, N, 2, col, NULL), NULL));
    for (int i = 0; i < N; i++)
      if (i == 5)
        assert_true(isnan(y[i]));
      else if (i == 6)
        assert_true(y[i] == -INFINITY);
      else
        assert_true(y[i] == 0.0f);
    x[5] = 0;
    x[6] = 0;
    attn_ctx_destroy(ctx);
  }
  free(x);
  free(y);
}

/* ================= positional encodings ================= */

static attn_status sinusoidal_1(int32_t layout, int64_t L, int64_t D, double base,
                                double offset, const double *positions, float *out) {
  attn_ctx *ctx = tu_ctx(1);
  int64_t d[2] = {L, D};
  attn_sinusoidal_params p;
  attn_sinusoidal_params_init(&p);
  p.layout = layout;
  p.base = base;
  p.offset = offset;
  p.positions = positions;
  attn_status st = attn_sinusoidal(ctx, tu_wrap(ctx, out, (size_t)(L * D), 2, d, NULL), &p);
  attn_ctx_destroy(ctx);
  return st;
}

static void sinusoidal_edges(void **state) {
  (void)state;
  float o[8];
  /* D = 1: interleaved has one sin column of frequency 1; the others a 0. */
  assert_ok(sinusoidal_1(ATTN_PE_INTERLEAVED, 1, 1, 0, 2, NULL, o));
  assert_close(o[0], sin(2.0), 1e-6, 1e-7);
  assert_ok(sinusoidal_1(ATTN_PE_SIN_COS, 1, 1, 0, 2, NULL, o));
  assert_true(o[0] == 0.0f);
  assert_ok(sinusoidal_1(ATTN_PE_COS_SIN, 1, 1, 0, 2, NULL, o));
  assert_true(o[0] == 0.0f);
  /* L = 1, D = 2, position 0: sin 0, cos 0 (cos first for COS_SIN). */
  assert_ok(sinusoidal_1(ATTN_PE_INTERLEAVED, 1, 2, 0, 0, NULL, o));
  assert_true(o[0] == 0.0f && o[1] == 1.0f);
  assert_ok(sinusoidal_1(ATTN_PE_COS_SIN, 1, 2, 0, 0, NULL, o));
  assert_true(o[0] == 1.0f && o[1] == 0.0f);
  /* The shifted layout needs D >= 4. */
  assert_status(sinusoidal_1(ATTN_PE_SIN_COS_SHIFTED, 1, 3, 0, 0, NULL, o), ATTN_ERR_INVALID_ARG);
  assert_ok(sinusoidal_1(ATTN_PE_SIN_COS_SHIFTED, 1, 4, 0, 1, NULL, o));
  assert_close(o[1], sin(1.0 / 10000), 1e-6, 1e-9); /* lowest frequency exactly 1/base */
  /* Huge finite positions and bases just above 1 stay finite, in [-1, 1]. */
  static const double far[2] = {1e300, -1e300};
  assert_ok(sinusoidal_1(ATTN_PE_INTERLEAVED, 2, 4, 1.0000001, 0, far, o));
  for (int i = 0; i < 8; i++)
    assert_true(isfinite(o[i]) && fabs(o[i]) <= 1);
  assert_ok(sinusoidal_1(ATTN_PE_SIN_COS, 2, 4, DBL_MAX, -1e308, NULL, o));
  for (int i = 0; i < 8; i++)
    assert_true(isfinite(o[i]) && fabs(o[i]) <= 1);
  /* Negative and fractional positions are positions too. */
  static const double neg[1] = {-0.5};
  assert_ok(sinusoidal_1(ATTN_PE_INTERLEAVED, 1, 2, 0, 0, neg, o));
  assert_close(o[0], sin(-0.5), 1e-6, 1e-7);
  /* Non-finite values are refused, nothing written. */
  static const double bad_pos[2][1] = {{NAN}, {INFINITY}};
  static const double bad_base[] = {1.0, 0.5, -2, INFINITY, NAN};
  static const double bad_off[] = {NAN, INFINITY, -INFINITY};
  for (int i = 0; i < 8; i++)
    o[i] = -777;
  for (int i = 0; i < 2; i++)
    assert_status(sinusoidal_1(0, 1, 2, 0, 0, bad_pos[i], o), ATTN_ERR_INVALID_ARG);
  for (size_t i = 0; i < sizeof bad_base / sizeof *bad_base; i++)
    assert_status(sinusoidal_1(0, 1, 2, bad_base[i], 0, NULL, o), ATTN_ERR_INVALID_ARG);
  for (size_t i = 0; i < sizeof bad_off / sizeof *bad_off; i++)
    assert_status(sinusoidal_1(0, 1, 2, 0, bad_off[i], NULL, o), ATTN_ERR_INVALID_ARG);
  for (int i = 0; i < 8; i++)
    assert_true(o[i] == -777);

  /* attn_sinusoidal_add keeps NaN and +-Inf, and rounds FLT_MAX + 1. */
  attn_ctx *ctx = tu_ctx(1);
  float x[4] = {NAN, INFINITY, -INFINITY, FLT_MAX};
  int64_t d[2] = {2, 2};
  assert_ok(attn_sinusoidal_add(ctx, tu_wrap(ctx, x, 4, 2, d, NULL), NULL));
  assert_true(isnan(x[0]) && x[1] == INFINITY && x[2] == -INFINITY && x[3] == FLT_MAX);
  attn_ctx_destroy(ctx);
}

/* Huge L with tiny D: a million positions, D = 1 and D = 2. */
static void sinusoidal_huge_l(void **state) {
  (void)state;
  enum { L = 1000000 };
  float *o = malloc(2 * L * sizeof *o);
  assert_non_null(o);
  assert_ok(sinusoidal_1(ATTN_PE_INTERLEAVED, L, 1, 0, 0, NULL, o));
  for (int l = 0; l < L; l += 9973)
    assert_close(o[l], sin((double)l), 0, 1e-6);
  assert_close(o[L - 1], sin((double)(L - 1)), 0, 1e-6);
  assert_ok(sinusoidal_1(ATTN_PE_INTERLEAVED, L, 2, 0, 0, NULL, o));
  for (int l = 0; l < L; l += 9973) {
    assert_close(o[2 * l], sin((double)l), 0, 1e-6);
    assert_close(o[2 * l + 1], cos((double)l), 0, 1e-6);
  }
  free(o);
}

static attn_status rope_1(float *x, int64_t L, int64_t D, int32_t rotary_dim, int64_t offset,
                          const int64_t *positions) {
  attn_ctx *ctx = tu_ctx(1);
  int64_t d[4] = {1, 1, L, D};
  attn_rope_params p;
  attn_rope_params_init(&p);
  p.rotary_dim = rotary_dim;
  p.offset = offset;
  p.positions = positions;
  attn_status st = attn_rope(ctx, tu_wrap(ctx, x, (size_t)(L * D), 4, d, NULL), &p);
  attn_ctx_destroy(ctx);
  return st;
}

static void rope_edges(void **state) {
  (void)state;
  /* Position 0 is the identity, exactly, even for FLT_MAX and subnormals. */
  float x[4] = {FLT_MAX, -FLT_MAX, 1e-40f, -1e-45f};
  assert_ok(rope_1(x, 1, 4, 0, 0, NULL));
  assert_true(x[0] == FLT_MAX && x[1] == -FLT_MAX && x[2] == 1e-40f && x[3] == -1e-45f);
  /* A NaN poisons its own pair only (half-split pairs: (0, 2) and (1, 3)). */
  float y[4] = {NAN, 1, 2, 3};
  assert_ok(rope_1(y, 1, 4, 0, 1, NULL));
  assert_true(isnan(y[0]) && isnan(y[2]) && !isnan(y[1]) && !isnan(y[3]));
  /* D = 2, one pair at position 1 (t = 1 rad); FLT_MAX pairs overflow on
   * the store to float, as any float result would. */
  float z[2] = {FLT_MAX, FLT_MAX};
  assert_ok(rope_1(z, 1, 2, 0, 1, NULL));
  assert_close(z[0], (double)FLT_MAX * (cos(1.0) - sin(1.0)), 1e-6, 0);
  assert_true(z[1] == INFINITY);
  float sub[2] = {1e-40f, 0};
  assert_ok(rope_1(sub, 1, 2, 0, 1, NULL));
  assert_close(sub[0], 1e-40 * cos(1.0), 0, 2e-45);
  assert_close(sub[1], 1e-40 * sin(1.0), 0, 2e-45);
  /* Partial rotation: the pass-through dims are untouched, NaN included. */
  float w[3] = {1, 0, NAN};
  assert_ok(rope_1(w, 1, 3, 2, 1, NULL));
  assert_close(w[0], cos(1.0), 1e-6, 0);
  assert_true(isnan(w[2]));
  /* The largest offset a one-token call allows; one more token overflows. */
  float big[4] = {3, 4, 0, 0};
  assert_ok(rope_1(big, 1, 2, 0, INT64_MAX, NULL));
  assert_close(hypot(big[0], big[1]), 5.0, 1e-6, 0);
  assert_status(rope_1(big, 2, 2, 0, INT64_MAX, NULL), ATTN_ERR_INVALID_ARG);
  /* Refused: negative offset or position, odd D with rotary_dim 0, odd or
   * too large rotary_dim. Nothing written. */
  float v[3] = {1, 2, 3};
  static const int64_t negpos[1] = {-1};
  assert_status(rope_1(v, 1, 2, 0, -1, NULL), ATTN_ERR_INVALID_ARG);
  assert_status(rope_1(v, 1, 2, 0, 0, negpos), ATTN_ERR_INVALID_ARG);
  assert_status(rope_1(v, 1, 3, 0, 0, NULL), ATTN_ERR_INVALID_ARG);
  assert_status(rope_1(v, 1, 3, 1, 0, NULL), ATTN_ERR_INVALID_ARG);
  assert_status(rope_1(v, 1, 2, 4, 0, NULL), ATTN_ERR_INVALID_ARG);
  assert_true(v[0] == 1 && v[1] == 2 && v[2] == 3);
}

/* Huge L with tiny D: a million tokens of one pair each. */
static void rope_huge_l(void **state) {
  (void)state;
  enum { L = 1000000 };
  float *x = malloc(2 * L * sizeof *x);
  assert_non_null(x);
  for (int l = 0; l < L; l++) {
    x[2 * l] = 1;
    x[2 * l + 1] = 0;
  }
  assert_ok(rope_1(x, L, 2, 0, 0, NULL));
  for (int l = 0; l < L; l += 9973) {
    assert_close(x[2 * l], cos((double)l), 0, 1e-6);
    assert_close(x[2 * l + 1], sin((double)l), 0, 1e-6);
  }
  free(x);
}

static void alibi_edges(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  float s[16];
  assert_ok(attn_alibi_slopes(ctx, 1, 0, s)); /* one head: 2^-8 */
  assert_true(s[0] == 0x1p-8f);
  assert_ok(attn_alibi_slopes(ctx, 8, 8, s));
  for (int h = 0; h < 8; h++)
    assert_true(s[h] == ldexpf(1.0f, -(h + 1)));
  assert_ok(attn_alibi_slopes(ctx, 3, 1e-300, s)); /* tiny bias: slopes 1 */
  assert_true(s[0] == 1.0f && s[2] == 1.0f);
  assert_ok(attn_alibi_slopes(ctx, 3, 1e300, s)); /* huge bias: 0, not NaN */
  assert_true(s[0] == 0.0f && s[1] == 0.0f && s[2] == 0.0f);
  for (int i = 0; i < 16; i++)
    s[i] = -777;
  static const double bad_bias[] = {-1, NAN, INFINITY, -INFINITY};
  for (size_t i = 0; i < sizeof bad_bias / sizeof *bad_bias; i++)
    assert_status(attn_alibi_slopes(ctx, 4, bad_bias[i], s), ATTN_ERR_INVALID_ARG);
  assert_status(attn_alibi_slopes(ctx, 0, 0, s), ATTN_ERR_INVALID_ARG);
  assert_status(attn_alibi_slopes(ctx, -1, 0, s), ATTN_ERR_INVALID_ARG);
  assert_status(attn_alibi_slopes(ctx, (1 << 20) + 1, 0, s), ATTN_ERR_INVALID_ARG);
  assert_status(attn_alibi_slopes(ctx, 4, 0, NULL), ATTN_ERR_NULL_ARG);
  for (int i = 0; i < 16; i++)
    assert_true(s[i] == -777);
  float *many = malloc((1 << 20) * sizeof *many); /* the most heads allowed */
  assert_non_null(many);
  assert_ok(attn_alibi_slopes(ctx, 1 << 20, 0, many));
  for (int h = 0; h < (1 << 20); h++)
    assert_true(many[h] > 0 && many[h] <= 1);
  free(many);
  attn_ctx_destroy(ctx);
}


/* ================= attn_pool ================= */

/* One sequence batch: x [B = 2, L, D = 2] contiguous; keep [2, L] or NULL;
 * scores [2, L] for weighted. want [2, 2]. */
typedef struct {
  const char *name;
  int32_t mode;
  int64_t L;
  const float *x;
  const uint8_t *keep;
  const float *scores;
  const double *out;
} pool_case;

#define MX FLT_MAX
static const pool_case pool_cases[] = {
    /* A NaN at a dropped token is never read; at a kept one it reaches its column only. */
    {"sum, NaN dropped", ATTN_POOL_SUM, 2, F(1, NAN, 2, 3, NAN, 1, 5, 6), U(1, 0, 0, 1), NULL,
     W(1, NAN, 5, 6)},
    {"mean, NaN dropped", ATTN_POOL_MEAN, 2, F(NAN, NAN, 2, 3, 4, 2, 6, 8), U(0, 1, 1, 1), NULL,
     W(2, 3, 5, 5)},
    {"max, NaN kept sticks", ATTN_POOL_MAX, 2, F(NAN, 1, 2, 3, -1, -2, -3, -4), NULL, NULL,
     W(NAN, 3, -1, -2)},
    {"max, NaN last", ATTN_POOL_MAX, 2, F(5, 1, NAN, 3, -1, -2, -3, -4), NULL, NULL,
     W(NAN, 3, -1, -2)},
    /* Nothing kept: zeros in every mode, max and weighted too. */
    {"sum, nothing kept", ATTN_POOL_SUM, 2, F(1, 2, 3, 4, NAN, 1, 1, 1), U(0, 0, 1, 1), NULL,
     W(0, 0, NAN, 2)},
    {"mean, nothing kept", ATTN_POOL_MEAN, 1, F(7, 8, 1, 2), U(0, 1), NULL, W(0, 0, 1, 2)},
    {"max, nothing kept", ATTN_POOL_MAX, 1, F(7, 8, 1, 2), U(0, 1), NULL, W(0, 0, 1, 2)},
    {"weighted, nothing kept", ATTN_POOL_WEIGHTED, 1, F(7, 8, 1, 2), U(0, 1), F(NAN, 3),
     W(0, 0, 1, 2)},
    /* Scores: all -inf gives zeros; +inf or NaN among kept makes the row NaN;
     * a dropped NaN score is never read. */
    {"weighted, all -inf", ATTN_POOL_WEIGHTED, 2, F(1, 2, 3, 4, 1, 2, 3, 4), NULL,
     F(-INFINITY, -INFINITY, 0, 0), W(0, 0, 2, 3)},
    {"weighted, +inf", ATTN_POOL_WEIGHTED, 2, F(1, 2, 3, 4, 1, 2, 3, 4), NULL,
     F(INFINITY, 0, 0, -INFINITY), W(NAN, NAN, 1, 2)},
    {"weighted, NaN score dropped", ATTN_POOL_WEIGHTED, 2, F(1, 2, 3, 4, 1, 2, 3, 4),
     U(1, 0, 1, 1), F(0, NAN, NAN, 0), W(1, 2, NAN, NAN)},
    /* Extreme scores stay finite (the max is taken first); extreme values
     * accumulate in double, so the mean of two FLT_MAX is FLT_MAX. */
    {"weighted, +-FLT_MAX scores", ATTN_POOL_WEIGHTED, 2, F(1, 2, 3, 4, 1, 2, 3, 4), NULL,
     F(MX, -MX, MX, MX), W(1, 2, 2, 3)},
    {"mean, FLT_MAX", ATTN_POOL_MEAN, 2, F(MX, -MX, MX, -MX, 1, 1, 1, 1), NULL, NULL,
     W(MX, -MX, 1, 1)},
    {"sum, FLT_MAX overflows", ATTN_POOL_SUM, 2, F(MX, -MX, MX, -MX, 1, 1, 1, 1), NULL, NULL,
     W(INFINITY, -INFINITY, 2, 2)},
    {"max, -inf and subnormal", ATTN_POOL_MAX, 2, F(-INFINITY, 1e-45f, -INFINITY, 0, 1, 1, 1, 1),
     NULL, NULL, W(-INFINITY, 1.4012984643e-45, 1, 1)},
};

/* A pooling case's params: mode, keep (U8 [2, L], wrapped) and scores
 * (F32 [2, L], wrapped; NULL for none). */
static attn_pool_params pool_case_params(attn_ctx *ctx, int32_t mode, int64_t L,
                                         const uint8_t *keep, const float *scores) {
  int64_t kd[2] = {2, L};
  attn_pool_params p;
  attn_pool_params_init(&p);
  p.mode = mode;
  if (keep)
    assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_U8, 2, kd, NULL, (void *)keep, (size_t)(2 * L),
                               (attn_tensor **)&p.keep));
  if (scores)
    p.scores = tu_wrap(ctx, (float *)scores, (size_t)(2 * L), 2, kd, NULL);
  return p;
}

static void pool_table(void **state) {
  (void)state;
  for (int32_t threads = 1; threads <= 2; threads++) {
    attn_ctx *ctx = tu_ctx(threads);
    for (size_t i = 0; i < sizeof pool_cases / sizeof pool_cases[0]; i++) {
      const pool_case *c = &pool_cases[i];
      float out[4] = {-7, -7, -7, -7};
      int64_t xd[3] = {2, c->L, 2}, od[2] = {2, 2};
      attn_tensor *tx = tu_wrap(ctx, (float *)c->x, (size_t)(4 * c->L), 3, xd, NULL);
      attn_tensor *to = tu_wrap(ctx, out, 4, 2, od, NULL);
      attn_pool_params p = pool_case_params(ctx, c->mode, c->L, c->keep, c->scores);
      attn_status st = attn_pool(ctx, tx, to, &p);
      if (st != ATTN_OK)
        fail_msg("%s: %s", c->name, attn_ctx_last_error(ctx));
      expect_row(c->name, out, c->out, 4, 0);
    }
    attn_ctx_destroy(ctx);
  }
}

/* The backward on the same layout: dout [2, 2]; dx [2, L, 2] and, for
 * weighted, dscores [2, L], stated by hand from attn.h's formulas. */
typedef struct {
  const char *name;
  int32_t mode;
  int64_t L;
  const float *x;
  const uint8_t *keep;
  const float *scores;
  const float *dout;
  const double *dx, *dscores;
} pool_bwd_case;

static const pool_bwd_case pool_bwd_cases[] = {
    {"sum, NaN dropped", ATTN_POOL_SUM, 2, F(1, NAN, 2, 3, NAN, 1, 5, 6), U(1, 0, 0, 1), NULL,
     F(1, 2, 3, 4), W(1, 2, 0, 0, 0, 0, 3, 4), NULL},
    {"mean, length 1", ATTN_POOL_MEAN, 1, F(7, 8, 1, 2), NULL, NULL, F(2, 4, 6, 8),
     W(2, 4, 6, 8), NULL},
    {"mean, NaN x", ATTN_POOL_MEAN, 2, F(NAN, 1, 2, 3, 4, 5, 6, 7), NULL, NULL, F(2, 4, 6, 8),
     W(1, 2, 1, 2, 3, 4, 3, 4), NULL},
    {"sum, nothing kept", ATTN_POOL_SUM, 2, F(NAN, 2, 3, 4, NAN, 1, 1, 1), U(0, 0, 1, 1), NULL,
     F(1, 2, 3, 4), W(0, 0, 0, 0, 3, 4, 3, 4), NULL},
    /* max: to the earliest maximum; a kept NaN takes it; all -inf: the first kept. */
    {"max, ties to the first", ATTN_POOL_MAX, 2, F(3, 1, 3, 5, -1, -2, -1, -2), NULL, NULL,
     F(1, 2, 3, 4), W(1, 0, 0, 2, 3, 4, 0, 0), NULL},
    {"max, NaN kept", ATTN_POOL_MAX, 2, F(5, 1, NAN, 3, -1, -2, -3, -4), NULL, NULL,
     F(1, 2, 3, 4), W(0, 0, 1, 2, 3, 4, 0, 0), NULL},
    {"max, NaN dropped", ATTN_POOL_MAX, 2, F(NAN, NAN, 1, 2, 3, 4, NAN, NAN), U(0, 1, 1, 0),
     NULL, F(1, 2, 3, 4), W(0, 0, 1, 2, 3, 4, 0, 0), NULL},
    {"max, all -inf", ATTN_POOL_MAX, 2, F(-INFINITY, -INFINITY, -INFINITY, 0, 1, 1, 1, 1),
     U(0, 1, 1, 1), NULL, F(1, 2, 3, 4), W(0, 0, 1, 2, 3, 4, 0, 0), NULL},
    {"max, nothing kept", ATTN_POOL_MAX, 1, F(7, 8, 1, 2), U(0, 1), NULL, F(1, 2, 3, 4),
     W(0, 0, 3, 4), NULL},
    /* weighted: x (1, 2), (3, 4) with equal weights and dout (3, 4): g = 11
     * and 25, dout . out = 18, dscores = 0.5 (g - 18). */
    {"weighted, nothing kept", ATTN_POOL_WEIGHTED, 1, F(7, 8, 1, 2), U(0, 1), F(NAN, 3),
     F(1, 2, 3, 4), W(0, 0, 3, 4), W(0, 0)},
    {"weighted, all -inf", ATTN_POOL_WEIGHTED, 2, F(1, 2, 3, 4, 1, 2, 3, 4), NULL,
     F(-INFINITY, -INFINITY, 0, 0), F(1, 2, 3, 4), W(0, 0, 0, 0, 1.5, 2, 1.5, 2),
     W(0, 0, -3.5, 3.5)},
    {"weighted, +inf: NaN", ATTN_POOL_WEIGHTED, 2, F(1, 2, 3, 4, 1, 2, 3, 4), NULL,
     F(INFINITY, 0, 0, -INFINITY), F(1, 2, 3, 4), W(NAN, NAN, NAN, NAN, 3, 4, 0, 0),
     W(NAN, NAN, 0, 0)},
    {"weighted, NaN x at weight 0", ATTN_POOL_WEIGHTED, 2, F(1, 2, NAN, NAN, 1, 2, 3, 4), NULL,
     F(0, -INFINITY, 0, 0), F(1, 2, 3, 4), W(1, 2, 0, 0, 1.5, 2, 1.5, 2), W(0, 0, -3.5, 3.5)},
    {"weighted, NaN dropped", ATTN_POOL_WEIGHTED, 2, F(1, 2, NAN, NAN, NAN, NAN, 3, 4),
     U(1, 0, 0, 1), F(0, NAN, NAN, 0), F(1, 2, 3, 4), W(1, 2, 0, 0, 0, 0, 3, 4), W(0, 0, 0, 0)},
    {"weighted, +-FLT_MAX scores", ATTN_POOL_WEIGHTED, 2, F(1, 2, 3, 4, 1, 2, 3, 4), NULL,
     F(MX, -MX, MX, MX), F(1, 2, 3, 4), W(1, 2, 0, 0, 1.5, 2, 1.5, 2), W(0, 0, -3.5, 3.5)},
};

static void pool_backward_table(void **state) {
  (void)state;
  for (int32_t threads = 1; threads <= 2; threads++) {
    attn_ctx *ctx = tu_ctx(threads);
    for (size_t i = 0; i < sizeof pool_bwd_cases / sizeof pool_bwd_cases[0]; i++) {
      const pool_bwd_case *c = &pool_bwd_cases[i];
      float dx[8] = {-7, -7, -7, -7, -7, -7, -7, -7}, ds[4] = {-7, -7, -7, -7};
      int64_t xd[3] = {2, c->L, 2}, od[2] = {2, 2}, kd[2] = {2, c->L};
      attn_tensor *tx = tu_wrap(ctx, (float *)c->x, (size_t)(4 * c->L), 3, xd, NULL);
      attn_tensor *tg = tu_wrap(ctx, (float *)c->dout, 4, 2, od, NULL), *tds = NULL;
      attn_pool_params p = pool_case_params(ctx, c->mode, c->L, c->keep, c->scores);
      if (c->scores)
        tds = tu_wrap(ctx, ds, (size_t)(2 * c->L), 2, kd, NULL);
      attn_status st =
          attn_pool_backward(ctx, tx, tg, tu_wrap(ctx, dx, (size_t)(4 * c->L), 3, xd, NULL), tds,
                             &p);
      if (st != ATTN_OK)
        fail_msg("%s: %s", c->name, attn_ctx_last_error(ctx));
      char what[160];
      snprintf(what, sizeof what, "pool_backward \"%s\" (%d threads) dx", c->name, (int)threads);
      expect_row(what, dx, c->dx, 4 * c->L, 0);
      if (c->scores) {
        snprintf(what, sizeof what, "pool_backward \"%s\" dscores", c->name);
        expect_row(what, ds, c->dscores, 2 * c->L, 0);
      }
    }
    attn_ctx_destroy(ctx);
  }
}

/* The pooling tables with f16 / bf16 x, scores and dout (see "the same
 * tables with f16 / bf16 data" above): each half result is the F32 op's on
 * the widened inputs, rounded to the type (exact here: the tables' results
 * are floats no double rounding can reach); an F32 out / dx / dscores from
 * half inputs is that F32 result itself. */
static void run_pool_case_half(const pool_case *c, int32_t dt) {
  attn_ctx *ctx = tu_ctx(2);
  int64_t xd[3] = {2, c->L, 2}, od[2] = {2, 2}, kd[2] = {2, c->L};
  float x[8], sc[4], o32[4], om[4];
  memcpy(x, c->x, (size_t)(4 * c->L) * sizeof *x);
  attn_tensor *hx = to_dt(ctx, x, 4 * c->L, 3, xd, dt), *hs = NULL, *ho = NULL;
  if (c->scores) {
    memcpy(sc, c->scores, (size_t)(2 * c->L) * sizeof *sc);
    hs = to_dt(ctx, sc, 2 * c->L, 2, kd, dt);
  }
  attn_pool_params p = pool_case_params(ctx, c->mode, c->L, c->keep, c->scores ? sc : NULL);
  assert_ok(attn_pool(ctx, tu_wrap(ctx, x, (size_t)(4 * c->L), 3, xd, NULL),
                      tu_wrap(ctx, o32, 4, 2, od, NULL), &p));
  if (hs)
    p.scores = hs;
  assert_ok(attn_tensor_new(ctx, dt, 2, od, &ho));
  assert_ok(attn_pool(ctx, hx, ho, &p));
  char what[160];
  snprintf(what, sizeof what, "pool \"%s\" in %s", c->name, dt == ATTN_DTYPE_F16 ? "f16" : "bf16");
  expect_rounded(what, ctx, ho, o32, 4, 2, od);
  assert_ok(attn_pool(ctx, hx, tu_wrap(ctx, om, 4, 2, od, NULL), &p));
  snprintf(what + strlen(what), sizeof what - strlen(what), ", f32 out");
  expect_same(what, om, o32, 4);
  attn_ctx_destroy(ctx);
}

static void pool_table_half(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof pool_cases / sizeof pool_cases[0]; i++) {
    run_pool_case_half(&pool_cases[i], ATTN_DTYPE_F16);
    run_pool_case_half(&pool_cases[i], ATTN_DTYPE_BF16);
  }
}

static void run_pool_bwd_case_half(const pool_bwd_case *c, int32_t dt) {
  attn_ctx *ctx = tu_ctx(2);
  int64_t xd[3] = {2, c->L, 2}, od[2] = {2, 2}, kd[2] = {2, c->L};
  float x[8], sc[4], g[4], dx32[8], ds32[4], dxm[8], dsm[4];
  memcpy(x, c->x, (size_t)(4 * c->L) * sizeof *x);
  memcpy(g, c->dout, sizeof g);
  attn_tensor *hx = to_dt(ctx, x, 4 * c->L, 3, xd, dt), *hg = to_dt(ctx, g, 4, 2, od, dt);
  attn_tensor *hs = NULL, *hdx = NULL, *hds = NULL, *fds = NULL, *mds = NULL;
  if (c->scores) {
    memcpy(sc, c->scores, (size_t)(2 * c->L) * sizeof *sc);
    hs = to_dt(ctx, sc, 2 * c->L, 2, kd, dt);
    fds = tu_wrap(ctx, ds32, (size_t)(2 * c->L), 2, kd, NULL);
    mds = tu_wrap(ctx, dsm, (size_t)(2 * c->L), 2, kd, NULL);
    assert_ok(attn_tensor_new(ctx, dt, 2, kd, &hds));
  }
  attn_pool_params p = pool_case_params(ctx, c->mode, c->L, c->keep, c->scores ? sc : NULL);
  assert_ok(attn_pool_backward(ctx, tu_wrap(ctx, x, (size_t)(4 * c->L), 3, xd, NULL),
                               tu_wrap(ctx, g, 4, 2, od, NULL),
                               tu_wrap(ctx, dx32, (size_t)(4 * c->L), 3, xd, NULL), fds, &p));
  if (hs)
    p.scores = hs;
  assert_ok(attn_tensor_new(ctx, dt, 3, xd, &hdx));
  assert_ok(attn_pool_backward(ctx, hx, hg, hdx, hds, &p));
  char what[160];
  snprintf(what, sizeof what, "pool_backward \"%s\" in %s", c->name,
           dt == ATTN_DTYPE_F16 ? "f16" : "bf16");
  expect_rounded(what, ctx, hdx, dx32, 4 * c->L, 3, xd);
  if (hds)
    expect_rounded(what, ctx, hds, ds32, 2 * c->L, 2, kd);
  assert_ok(attn_pool_backward(ctx, hx, hg, tu_wrap(ctx, dxm, (size_t)(4 * c->L), 3, xd, NULL),
                               mds, &p));
  snprintf(what + strlen(what), sizeof what - strlen(what), ", f32 dx and dscores");
  expect_same(what, dxm, dx32, 4 * c->L);
  if (mds)
    expect_same(what, dsm, ds32, 2 * c->L);
  attn_ctx_destroy(ctx);
}

static void pool_backward_table_half(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof pool_bwd_cases / sizeof pool_bwd_cases[0]; i++) {
    run_pool_bwd_case_half(&pool_bwd_cases[i], ATTN_DTYPE_F16);
    run_pool_bwd_case_half(&pool_bwd_cases[i], ATTN_DTYPE_BF16);
  }
}

/* Attention pooling's backward: a dropped key's NaN (k, v) and the NaN
 * dout of a sequence with nothing kept reach nothing; one kept key gets
 * dv = dout and no other gradient (its weight is 1 whatever q and k are). */
static void pool_attention_backward_edges(void **state) {
  (void)state;
  for (int32_t threads = 1; threads <= 2; threads++) {
    attn_ctx *ctx = tu_ctx(threads);
    float q[1] = {1}, k[4] = {0.5f, NAN, NAN, NAN}, v[4] = {3, NAN, NAN, NAN};
    float out[2], lse[2], dout[2] = {1, NAN}, dq[1] = {-7}, dk[4], dv[4];
    uint8_t keep[4] = {1, 0, 1, 1};
    int64_t lengths[2] = {2, 0};
    int64_t qd[3] = {1, 1, 1}, kd[4] = {2, 1, 2, 1}, od[4] = {2, 1, 1, 1}, ld[3] = {2, 1, 1},
            md[2] = {2, 2};
    attn_tensor *tq = tu_wrap(ctx, q, 1, 3, qd, NULL), *tk = tu_wrap(ctx, k, 4, 4, kd, NULL);
    attn_tensor *tv = tu_wrap(ctx, v, 4, 4, kd, NULL), *to = tu_wrap(ctx, out, 2, 4, od, NULL);
    attn_tensor *tm = NULL;
    assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_U8, 2, md, NULL, keep, 4, &tm));
    attn_pool_attention_params p;
    attn_pool_attention_params_init(&p);
    p.keep = tm;
    p.lengths = lengths;
    p.lse = tu_wrap(ctx, lse, 2, 3, ld, NULL);
    assert_ok(attn_pool_attention(ctx, tq, tk, tv, to, &p));
    expect_row("pool_attention out", out, W(3, 0), 2, 1e-6);
    assert_ok(attn_pool_attention_backward(ctx, tq, tk, tv, to, p.lse,
                                           tu_wrap(ctx, dout, 2, 4, od, NULL),
                                           tu_wrap(ctx, dq, 1, 3, qd, NULL),
                                           tu_wrap(ctx, dk, 4, 4, kd, NULL),
                                           tu_wrap(ctx, dv, 4, 4, kd, NULL), &p));
    expect_row("pool_attention_backward dqueries", dq, W(0), 1, 1e-6);
    expect_row("pool_attention_backward dk", dk, W(0, 0, 0, 0), 4, 1e-6);
    expect_row("pool_attention_backward dv", dv, W(1, 0, 0, 0), 4, 1e-6);
    attn_ctx_destroy(ctx);
  }
}

/* ================= attn_rope_cached ================= */

/* A NaN in a table row reaches only the pairs of the tokens that read it;
 * the pass-through dims are copied bit for bit (NaN, inf, -0). */
static void rope_cached_edges(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  /* x [1, 1, L = 2, D = 5], r = 2: pair (x0, x1), dims 2..4 pass through. */
  float x[10] = {1, 2, NAN, INFINITY, -0.0f, 3, 4, 1e-45f, -MX, 7};
  float y[10];
  float c[3] = {1, NAN, 0.5f}, s[3] = {0, 0, -INFINITY};
  int64_t xd[4] = {1, 1, 2, 5}, td[2] = {3, 1};
  attn_tensor *tx = tu_wrap(ctx, x, 10, 4, xd, NULL), *ty = tu_wrap(ctx, y, 10, 4, xd, NULL);
  attn_tensor *tc = tu_wrap(ctx, c, 3, 2, td, NULL), *ts = tu_wrap(ctx, s, 3, 2, td, NULL);
  attn_rope_cached_params p;
  attn_rope_cached_params_init(&p);
  int64_t pos[2] = {0, 1};
  p.position_ids = pos;
  assert_ok(attn_rope_cached(ctx, tx, ty, tc, ts, &p));
  expect_row("token 0 (table row 0: identity)", y, W(1, 2, NAN, INFINITY, 0), 5, 0);
  assert_true(signbit(y[4]));
  expect_row("token 1 (NaN cos)", y + 5, W(NAN, NAN, 1.4012984643e-45, -MX, 7), 5, 0);
  pos[0] = 2, pos[1] = 0; /* -inf sin: inf arithmetic, as IEEE gives it */
  assert_ok(attn_rope_cached(ctx, tx, ty, tc, ts, &p));
  expect_row("token 0 (row 2)", y, W(INFINITY, -INFINITY, NAN, INFINITY, 0), 5, 0);
  expect_row("token 1 (row 0)", y + 5, W(3, 4, 1.4012984643e-45, -MX, 7), 5, 0);
  attn_ctx_destroy(ctx);
}

/* ================= half data for the ops without a half table above =================
 * RoPE (forward and backward), attn_rope_cached, the sinusoidal encodings,
 * packed SDPA and attention pooling with f16 / bf16 data, stated by bit
 * pattern and checked against attn.h's rules with the reference
 * conversions (tests/reference/ref_half.c), never the library's: an exact
 * result (identity, pass-through, +-0, +-Inf) bit for bit, a rounded one
 * within half an ULP of the type (plus float's rounding), a NaN as NaN.
 * The ops that take F32 only refuse half operands with
 * ATTN_ERR_UNSUPPORTED and write nothing. */

static const int32_t kHalfTypes[2] = {ATTN_DTYPE_F16, ATTN_DTYPE_BF16};

static const char *half_name(int32_t dt) { return dt == ATTN_DTYPE_F16 ? "f16" : "bf16"; }

/* v (a double) in dt, rounded once; NaN as the quiet NaN. */
static uint16_t hv(int32_t dt, double v) {
  if (isnan(v))
    return dt == ATTN_DTYPE_F16 ? 0x7e00 : 0x7fc0;
  return dt == ATTN_DTYPE_F16 ? ref_round_f16(v) : ref_round_bf16(v);
}

static double half_value(int32_t dt, uint16_t h) {
  return dt == ATTN_DTYPE_F16 ? ref_f16_value(h) : ref_bf16_value(h);
}

/* The largest finite value and the smallest subnormal of dt. */
static uint16_t half_max(int32_t dt) { return dt == ATTN_DTYPE_F16 ? 0x7bff : 0x7f7f; }
static const uint16_t kHalfTiny = 0x0001;

/* n 2-byte elements of type dt as a tensor. */
static attn_tensor *half_wrap(attn_ctx *ctx, int32_t dt, uint16_t *h, size_t n, int32_t nd,
                              const int64_t *dims) {
  attn_tensor *t = NULL;
  attn_status st = attn_tensor_wrap(ctx, dt, nd, dims, NULL, h, n * sizeof *h, &t);
  if (st != ATTN_OK)
    fail_msg("attn_tensor_wrap: %s", attn_ctx_last_error(ctx));
  return t;
}

/* got[i] (dt bits) against want[i]: NaN any NaN, an infinity exactly, else
 * within half an ULP of dt at want plus 1e-6 relative (the float result
 * rounded once more). */
static void expect_half(const char *what, int32_t dt, const uint16_t *got, const double *want,
                        int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    double g = half_value(dt, got[i]), w = want[i];
    int ok;
    if (isnan(w) || isinf(w)) {
      ok = isnan(w) ? isnan(g) : g == w;
    } else {
      int e;
      (void)frexp(w, &e); /* |w| in [2^(e-1), 2^e) */
      int min_e = dt == ATTN_DTYPE_F16 ? -13 : -125, bits = dt == ATTN_DTYPE_F16 ? 11 : 8;
      double half_ulp = ldexp(1.0, (e < min_e ? min_e : e) - 1 - bits);
      ok = fabs(g - w) <= half_ulp + 1e-6 * fabs(w);
    }
    if (!ok)
      fail_msg("%s (%s): element %lld = %.9g (0x%04x), expected %.9g", what, half_name(dt),
               (long long)i, g, got[i], w);
  }
}

/* got[0..n) bit for bit equal to want. */
static void expect_bits(const char *what, int32_t dt, const uint16_t *got, const uint16_t *want,
                        int64_t n) {
  for (int64_t i = 0; i < n; i++)
    if (got[i] != want[i])
      fail_msg("%s (%s): element %lld = 0x%04x, expected 0x%04x", what, half_name(dt),
               (long long)i, got[i], want[i]);
}

/* attn_rope (or its backward) on x [1, 1, L, D] of type dt, in place. */
static attn_status rope_half(int32_t dt, uint16_t *x, int64_t L, int64_t D, int32_t rotary_dim,
                             int64_t offset, int backward) {
  attn_ctx *ctx = tu_ctx(1);
  int64_t d[4] = {1, 1, L, D};
  attn_rope_params p;
  attn_rope_params_init(&p);
  p.rotary_dim = rotary_dim;
  p.offset = offset;
  attn_tensor *t = half_wrap(ctx, dt, x, (size_t)(L * D), 4, d);
  attn_status st = backward ? attn_rope_backward(ctx, t, &p) : attn_rope(ctx, t, &p);
  attn_ctx_destroy(ctx);
  return st;
}

/* rope_edges with f16 / bf16 x, forward and backward (the inverse rotation,
 * angle -t: a cos t + b sin t, -a sin t + b cos t). */
static void rope_edges_half(void **state) {
  (void)state;
  const double c1 = cos(1.0), s1 = sin(1.0), c01 = cos(0.01), s01 = sin(0.01);
  for (int t = 0; t < 2; t++)
    for (int bw = 0; bw < 2; bw++) {
      int32_t dt = kHalfTypes[t];
      double sg = bw ? -1 : 1; /* the sign of sin t */
      uint16_t mx = half_max(dt), nmx = mx | 0x8000;
      /* Position 0 is the identity, bit for bit: the largest finite values,
       * the smallest subnormals. */
      uint16_t x[4] = {mx, nmx, kHalfTiny, kHalfTiny | 0x8000}, x0[4];
      memcpy(x0, x, sizeof x);
      assert_ok(rope_half(dt, x, 1, 4, 0, 0, bw));
      expect_bits("rope position 0", dt, x, x0, 4);
      /* A NaN poisons its own pair only (half-split pairs (0, 2), (1, 3);
       * pair 1 turns by 0.01 rad at position 1). */
      uint16_t y[4] = {hv(dt, NAN), hv(dt, 1), hv(dt, 2), hv(dt, 3)};
      assert_ok(rope_half(dt, y, 1, 4, 0, 1, bw));
      expect_half("rope NaN pair", dt, y,
                  W(NAN, c01 - sg * 3 * s01, NAN, sg * s01 + 3 * c01), 4);
      /* One pair of the largest values at t = 1: the result past the
       * type's range is +Inf, the other rounded. */
      double m = half_value(dt, mx);
      uint16_t z[2] = {mx, mx};
      assert_ok(rope_half(dt, z, 1, 2, 0, 1, bw));
      expect_half("rope overflow", dt, z,
                  bw ? W(INFINITY, m * (c1 - s1)) : W(m * (c1 - s1), INFINITY), 2);
      /* Subnormals rotate and round on the subnormal grid. */
      uint16_t sub[2] = {100, 0};
      double sv = half_value(dt, 100);
      assert_ok(rope_half(dt, sub, 1, 2, 0, 1, bw));
      expect_half("rope subnormal", dt, sub, W(sv * c1, sg * sv * s1), 2);
      /* Partial rotation: the pass-through dim keeps its NaN bits. */
      uint16_t w[3] = {hv(dt, 1), 0, hv(dt, NAN)};
      assert_ok(rope_half(dt, w, 1, 3, 2, 1, bw));
      expect_half("rope partial", dt, w, W(c1, sg * s1, NAN), 3);
      assert_true(w[2] == hv(dt, NAN));
      /* Refused: nothing written. */
      uint16_t v[2] = {hv(dt, 1), hv(dt, 2)}, v0[2];
      memcpy(v0, v, sizeof v);
      assert_status(rope_half(dt, v, 1, 2, 0, -1, bw), ATTN_ERR_INVALID_ARG);
      expect_bits("rope refused", dt, v, v0, 2);
    }
}

/* rope_cached_edges with f16 / bf16 x and y (F32 tables, the type they
 * must have): in place, out of place, and half x into an F32 y (the float
 * result itself). */
static void rope_cached_edges_half(void **state) {
  (void)state;
  for (int t = 0; t < 2; t++) {
    int32_t dt = kHalfTypes[t];
    attn_ctx *ctx = tu_ctx(1);
    uint16_t mx = half_max(dt);
    /* x [1, 1, L = 2, D = 5], r = 2: pair (x0, x1), dims 2..4 pass through. */
    uint16_t x[10] = {hv(dt, 1), hv(dt, 2), hv(dt, NAN), hv(dt, INFINITY), 0x8000,
                      hv(dt, 3), hv(dt, 4), kHalfTiny, mx | 0x8000, hv(dt, 7)};
    float c[3] = {1, NAN, 0.5f}, s[3] = {0, 0, -INFINITY};
    int64_t xd[4] = {1, 1, 2, 5}, td[2] = {3, 1};
    attn_tensor *tc = tu_wrap(ctx, c, 3, 2, td, NULL), *ts = tu_wrap(ctx, s, 3, 2, td, NULL);
    attn_rope_cached_params p;
    attn_rope_cached_params_init(&p);
    int64_t pos[2] = {0, 1};
    p.position_ids = pos;
    for (int in_place = 0; in_place < 2; in_place++) {
      uint16_t xs[10], y[10];
      memcpy(xs, x, sizeof x);
      attn_tensor *tx = half_wrap(ctx, dt, xs, 10, 4, xd);
      attn_tensor *ty = in_place ? tx : half_wrap(ctx, dt, y, 10, 4, xd);
      uint16_t *out = in_place ? xs : y;
      pos[0] = 0, pos[1] = 1;
      assert_ok(attn_rope_cached(ctx, tx, ty, tc, ts, &p));
      /* token 0 reads row 0 (c = 1, s = 0): the identity, bit for bit */
      expect_bits("rope_cached token 0 (identity)", dt, out, x, 5);
      /* token 1 reads the NaN cos: its pair NaN, the rest passed through */
      expect_half("rope_cached token 1 (NaN cos)", dt, out + 5, W(NAN, NAN), 2);
      expect_bits("rope_cached token 1 pass-through", dt, out + 7, x + 7, 3);
      if (in_place)
        continue;
      pos[0] = 2, pos[1] = 0; /* -inf sin: (1 * 0.5 + 2 * inf, -inf + 2 * 0.5) */
      assert_ok(attn_rope_cached(ctx, tx, ty, tc, ts, &p));
      expect_half("rope_cached token 0 (row 2)", dt, y, W(INFINITY, -INFINITY), 2);
      expect_bits("rope_cached token 0 pass-through", dt, y + 2, x + 2, 3);
      expect_bits("rope_cached token 1 (row 0)", dt, y + 5, x + 5, 5);
    }
    /* Half x into an F32 y: the values widened exactly. */
    float yf[10];
    pos[0] = 0, pos[1] = 0;
    assert_ok(attn_rope_cached(ctx, half_wrap(ctx, dt, x, 10, 4, xd),
                               tu_wrap(ctx, yf, 10, 4, xd, NULL), tc, ts, &p));
    for (int i = 0; i < 10; i++) {
      double want = half_value(dt, x[i]);
      if (!(isnan(want) ? isnan(yf[i]) : (double)yf[i] == want && !signbit(yf[i]) == !signbit(want)))
        fail_msg("rope_cached %s x, f32 y: element %d = %.9g, expected %.9g", half_name(dt), i,
                 (double)yf[i], want);
    }
    attn_ctx_destroy(ctx);
  }
}

/* The sinusoidal table into an f16 / bf16 tensor, and the table added to
 * f16 / bf16 x: NaN and +-Inf kept, the largest value plus at most 1 stays
 * the largest (the sum rounds back to it). */
static void sinusoidal_edges_half(void **state) {
  (void)state;
  for (int t = 0; t < 2; t++) {
    int32_t dt = kHalfTypes[t];
    attn_ctx *ctx = tu_ctx(1);
    attn_sinusoidal_params p;
    attn_sinusoidal_params_init(&p);
    /* L = 1, D = 2, position 0: sin 0, cos 0 exactly. */
    uint16_t o[8];
    int64_t d12[2] = {1, 2}, d24[2] = {2, 4};
    assert_ok(attn_sinusoidal(ctx, half_wrap(ctx, dt, o, 2, 2, d12), &p));
    expect_bits("sinusoidal position 0", dt, o, (const uint16_t[]){0, hv(dt, 1)}, 2);
    /* Huge finite positions and a base just above 1: finite, in [-1, 1]. */
    static const double far[2] = {1e300, -1e300};
    p.base = 1.0000001;
    p.positions = far;
    assert_ok(attn_sinusoidal(ctx, half_wrap(ctx, dt, o, 8, 2, d24), &p));
    for (int i = 0; i < 8; i++)
      if (!(fabs(half_value(dt, o[i])) <= 1))
        fail_msg("sinusoidal far position (%s): element %d = %g", half_name(dt), i,
                 half_value(dt, o[i]));
    /* Refused, nothing written. */
    static const double bad[1] = {NAN};
    p.positions = bad;
    uint16_t o0[8];
    memcpy(o0, o, sizeof o);
    int64_t d14[2] = {1, 4};
    assert_status(attn_sinusoidal(ctx, half_wrap(ctx, dt, o, 4, 2, d14), &p),
                  ATTN_ERR_INVALID_ARG);
    expect_bits("sinusoidal refused", dt, o, o0, 4);
    /* attn_sinusoidal_add, interleaved [2, 2]: row 0 adds (0, 1), row 1
     * (sin 1, cos 1). */
    uint16_t mx = half_max(dt);
    uint16_t x[4] = {hv(dt, NAN), hv(dt, INFINITY), hv(dt, -INFINITY), mx};
    int64_t d22[2] = {2, 2};
    assert_ok(attn_sinusoidal_add(ctx, half_wrap(ctx, dt, x, 4, 2, d22), NULL));
    expect_half("sinusoidal_add", dt, x, W(NAN, INFINITY, -INFINITY, half_value(dt, mx)), 4);
    assert_true(x[3] == mx);
    attn_ctx_destroy(ctx);
  }
}

/* sdpa_varlen_backward_rows' forward with f16 / bf16 q, k, v and out: the
 * NaN key of the sequence without queries reaches nothing, a row that sees
 * no key gives 0 and lse -inf; out = (2, 6, 0, 2) and lse = (ln 2, 5,
 * -inf, 4) by hand (equal weights over v = 1, 3; one key each). */
static void sdpa_varlen_half(void **state) {
  (void)state;
  for (int t = 0; t < 2; t++)
    for (int32_t threads = 1; threads <= 2; threads++) {
      int32_t dt = kHalfTypes[t];
      attn_ctx *ctx = tu_ctx(threads);
      uint16_t q[4] = {hv(dt, 2), hv(dt, 5), hv(dt, 1), hv(dt, 1)};
      uint16_t k[5] = {0, 0, hv(dt, 1), hv(dt, NAN), hv(dt, 4)};
      uint16_t v[5] = {hv(dt, 1), hv(dt, 3), hv(dt, 6), hv(dt, NAN), hv(dt, 2)};
      uint16_t out[4] = {0x1111, 0x1111, 0x1111, 0x1111};
      float lse[4];
      int64_t qd[3] = {4, 1, 1}, kd[3] = {5, 1, 1}, ld[2] = {1, 4};
      int64_t cu_q[5] = {0, 1, 2, 2, 4}, cu_k[5] = {0, 2, 3, 4, 5};
      attn_sdpa_params p;
      attn_sdpa_params_init(&p);
      p.scale = 1;
      p.causal = 1;
      p.align = ATTN_ALIGN_BOTTOM_RIGHT;
      p.lse = tu_wrap(ctx, lse, 4, 2, ld, NULL);
      assert_ok(attn_sdpa_varlen(ctx, half_wrap(ctx, dt, q, 4, 3, qd),
                                 half_wrap(ctx, dt, k, 5, 3, kd), half_wrap(ctx, dt, v, 5, 3, kd),
                                 half_wrap(ctx, dt, out, 4, 3, qd), 4, cu_q, cu_k, &p));
      expect_bits("varlen out", dt, out,
                  (const uint16_t[]){hv(dt, 2), hv(dt, 6), 0, hv(dt, 2)}, 4);
      expect_row("varlen lse", lse, W(LN2, 5, -INFINITY, 4), 4, 1e-6);
      attn_ctx_destroy(ctx);
    }
}

/* pool_attention_backward_edges' forward with f16 / bf16 queries, k, v and
 * out: the dropped keys' NaN reaches nothing, the one kept key gives out =
 * v exactly, the sequence with nothing kept zeros. */
static void pool_attention_half(void **state) {
  (void)state;
  for (int t = 0; t < 2; t++) {
    int32_t dt = kHalfTypes[t];
    attn_ctx *ctx = tu_ctx(2);
    uint16_t nan = hv(dt, NAN);
    uint16_t q[1] = {hv(dt, 1)}, k[4] = {hv(dt, 0.5), nan, nan, nan}, v[4] = {hv(dt, 3), nan, nan, nan};
    uint16_t out[2] = {0x1111, 0x1111};
    uint8_t keep[4] = {1, 0, 1, 1};
    int64_t lengths[2] = {2, 0};
    int64_t qd[3] = {1, 1, 1}, kd[4] = {2, 1, 2, 1}, od[4] = {2, 1, 1, 1}, md[2] = {2, 2};
    attn_tensor *tm = NULL;
    assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_U8, 2, md, NULL, keep, 4, &tm));
    attn_pool_attention_params p;
    attn_pool_attention_params_init(&p);
    p.keep = tm;
    p.lengths = lengths;
    assert_ok(attn_pool_attention(ctx, half_wrap(ctx, dt, q, 1, 3, qd),
                                  half_wrap(ctx, dt, k, 4, 4, kd), half_wrap(ctx, dt, v, 4, 4, kd),
                                  half_wrap(ctx, dt, out, 2, 4, od), &p));
    expect_bits("pool_attention out", dt, out, (const uint16_t[]){hv(dt, 3), 0}, 2);
    attn_ctx_destroy(ctx);
  }
}

/* The ops documented as F32 only refuse a half operand with
 * ATTN_ERR_UNSUPPORTED, name it, and write nothing. */
static void half_refused(void **state) {
  (void)state;
  for (int t = 0; t < 2; t++) {
    int32_t dt = kHalfTypes[t];
    attn_ctx *ctx = tu_ctx(1);
    uint16_t h[8] = {0};
    float f[8] = {0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f}, o[8];
    for (int i = 0; i < 8; i++)
      o[i] = -777;
    int64_t d1[1] = {2}, d4[4] = {1, 1, 2, 1}, d3[3] = {1, 1, 2}, d3v[3] = {2, 1, 1},
            d2[2] = {1, 2}, dq[3] = {1, 2, 1};
    attn_tensor *hy = half_wrap(ctx, dt, h, 2, 1, d1), *fy = tu_wrap(ctx, f, 2, 1, d1, NULL);
    attn_tensor *fo = tu_wrap(ctx, o, 2, 1, d1, NULL);
    assert_status(attn_softmax_backward(ctx, hy, fy, fo, NULL, NULL), ATTN_ERR_UNSUPPORTED);
    assert_error_mentions(ctx, "y has dtype");
    assert_status(attn_log_softmax_backward(ctx, fy, fy, half_wrap(ctx, dt, h, 2, 1, d1), NULL,
                                            NULL),
                  ATTN_ERR_UNSUPPORTED);
    /* SDPA backward: a half k (the others F32). */
    attn_tensor *f4 = tu_wrap(ctx, f, 2, 4, d4, NULL), *fl = tu_wrap(ctx, f, 2, 3, d3, NULL);
    attn_tensor *o4 = tu_wrap(ctx, o, 2, 4, d4, NULL);
    float o2[2] = {-777, -777}, o3[2] = {-777, -777};
    attn_tensor *o4b = tu_wrap(ctx, o2, 2, 4, d4, NULL), *o4c = tu_wrap(ctx, o3, 2, 4, d4, NULL);
    assert_status(attn_sdpa_backward(ctx, f4, half_wrap(ctx, dt, h, 2, 4, d4), f4, f4, fl, f4, o4,
                                     o4b, o4c, NULL, NULL),
                  ATTN_ERR_UNSUPPORTED);
    assert_error_mentions(ctx, "k has dtype");
    /* Packed: a half dout. */
    int64_t cu[2] = {0, 2};
    attn_tensor *f3 = tu_wrap(ctx, f, 2, 3, d3v, NULL), *fl2 = tu_wrap(ctx, f, 2, 2, d2, NULL);
    attn_tensor *o3a = tu_wrap(ctx, o, 2, 3, d3v, NULL), *o3b = tu_wrap(ctx, o2, 2, 3, d3v, NULL),
                *o3c = tu_wrap(ctx, o3, 2, 3, d3v, NULL);
    assert_status(attn_sdpa_varlen_backward(ctx, f3, f3, f3, f3, fl2,
                                            half_wrap(ctx, dt, h, 2, 3, d3v), o3a, o3b, o3c, 1, cu,
                                            cu, NULL, NULL),
                  ATTN_ERR_UNSUPPORTED);
    assert_error_mentions(ctx, "dout has dtype");
    /* Attention pooling's backward: half queries [Hq = 1, M = 2, D = 1]. */
    int64_t pk[4] = {1, 1, 2, 1}, po[4] = {1, 1, 2, 1}, pl[3] = {1, 1, 2};
    attn_tensor *fk = tu_wrap(ctx, f, 2, 4, pk, NULL), *fpo = tu_wrap(ctx, f, 2, 4, po, NULL);
    assert_status(attn_pool_attention_backward(ctx, half_wrap(ctx, dt, h, 2, 3, dq), fk, fk, fpo,
                                               tu_wrap(ctx, f, 2, 3, pl, NULL), fpo,
                                               tu_wrap(ctx, o, 2, 3, dq, NULL), o4b, o4c, NULL),
                  ATTN_ERR_UNSUPPORTED);
    /* Rotary tables: attn_rope_cache_fill writes F32 tables, attn_rope_cached reads them. */
    int64_t td[2] = {1, 1};
    assert_status(attn_rope_cache_fill(ctx, tu_wrap(ctx, o, 1, 2, td, NULL),
                                       half_wrap(ctx, dt, h, 1, 2, td), NULL, NULL),
                  ATTN_ERR_UNSUPPORTED);
    assert_error_mentions(ctx, "sin has dtype");
    int64_t xd[4] = {1, 1, 1, 2};
    assert_status(attn_rope_cached(ctx, tu_wrap(ctx, f, 2, 4, xd, NULL),
                                   tu_wrap(ctx, o, 2, 4, xd, NULL), half_wrap(ctx, dt, h, 1, 2, td),
                                   tu_wrap(ctx, f, 1, 2, td, NULL), NULL),
                  ATTN_ERR_UNSUPPORTED);
    assert_error_mentions(ctx, "cos has dtype");
    for (int i = 0; i < 8; i++)
      assert_true(o[i] == -777);
    assert_true(o2[0] == -777 && o2[1] == -777 && o3[0] == -777 && o3[1] == -777);
    for (int i = 0; i < 8; i++)
      assert_true(h[i] == 0);
    attn_ctx_destroy(ctx);
  }
}

/* ================= attn_mha_torch_forward ================= */

/* A PyTorch-form layer with E = 2, one head, every projection the identity
 * and no bias, so q = k = x of the query / key rows and v = the key rows:
 * out = softmax(q . k / sqrt(2) + mask) v, by hand. batch_first, B = 1. */
typedef struct {
  const char *name;
  int64_t L, S;
  const float *q, *kv;      /* [L, 2], [S, 2] */
  const uint8_t *kpm_bool;  /* [S] or NULL */
  const float *kpm_float;   /* [S] or NULL */
  const uint8_t *am_bool;   /* [L, S] or NULL */
  const float *am_float;    /* [L, S] or NULL */
  int causal;
  const double *out, *w;    /* [L, 2], [L, S] */
} mt_case;

/* softmax([0, 1/sqrt(2)])[1] = 1 / (1 + exp(-1/sqrt(2))) */
#define MT_P1 0.6697615493266569

static const mt_case mt_cases[] = {
    {"every key padded: zeros (torch: NaN)", 1, 2, F(1, 0), F(1, 0, 0, 1), U(1, 1), NULL,
     NULL, NULL, 0, W(0, 0), W(0, 0)},
    {"one key left by the padding", 1, 2, F(1, 0), F(1, 0, 0, 1), U(0, 1), NULL, NULL, NULL, 0,
     W(1, 0), W(1, 0)},
    {"NaN behind a padded key does not leak", 1, 2, F(1, 0), F(1, 0, NAN, NAN), U(0, 1), NULL,
     NULL, NULL, 0, W(1, 0), W(1, 0)},
    {"-inf float attn_mask hides", 1, 2, F(1, 0), F(1, 0, 0, 1), NULL, NULL, NULL,
     F(-INFINITY, 0), 0, W(0, 1), W(0, 1)},
    {"bool True hides whatever a float padding adds", 1, 2, F(1, 0), F(1, 0, 0, 1), NULL,
     F(0, 5), U(0, 1), NULL, 0, W(1, 0), W(1, 0)},
    {"FLT_MAX mask on a visible key: finite", 1, 2, F(1, 0), F(1, 0, 0, 1), NULL, NULL, NULL,
     F(0, MX), 0, W(0, 1), W(0, 1)},
    {"is_causal hides later keys", 2, 2, F(1, 0, 0, 1), F(1, 0, 0, 1), NULL, NULL, NULL, NULL,
     1, W(1, 0, 1 - MT_P1, MT_P1), W(1, 0, 1 - MT_P1, MT_P1)},
    {"is_causal with a bool mask: row 0 sees nothing", 2, 2, F(1, 0, 0, 1), F(1, 0, 0, 1), NULL,
     NULL, U(1, 0, 0, 0), NULL, 1, W(0, 0, 1 - MT_P1, MT_P1), W(0, 0, 1 - MT_P1, MT_P1)},
    {"equal logits split evenly", 1, 4, F(0, 0), F(1, 0, 0, 1, 1, 1, -1, 0), NULL, NULL, NULL,
     NULL, 0, W(0.25, 0.5), W(0.25, 0.25, 0.25, 0.25)},
    {"no key (S = 0): zeros", 1, 0, F(1, 2), F(0), NULL, NULL, NULL, NULL, 0, W(0, 0), W(0)},
};

/* The table on a layer of ctx with query, key, value and out of type dt:
 * F32, or f16 / bf16 (the tables' inputs are exact in both; masks and
 * weights stay F32), whose out is within half an ULP of the stated rows. */
static void run_mt_cases(attn_ctx *ctx, int32_t dt) {
  attn_mha_torch_params mp;
  attn_mha_torch_params_init(&mp);
  mp.embed_dim = 2, mp.num_heads = 1, mp.no_bias = 1, mp.batch_first = 1;
  attn_mha *m = NULL;
  assert_ok(attn_mha_create_torch(ctx, &mp, &m));
  float in_w[12] = {1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1};
  const int64_t inwd[2] = {6, 2}, owd[2] = {2, 2};
  assert_ok(attn_mha_set_weight(ctx, m, ATTN_MHA_IN_PROJ_WEIGHT, tu_wrap(ctx, in_w, 12, 2, inwd, NULL)));
  assert_ok(attn_mha_set_weight(ctx, m, ATTN_MHA_O_WEIGHT, tu_wrap(ctx, in_w, 4, 2, owd, NULL)));
  for (size_t i = 0; i < sizeof mt_cases / sizeof mt_cases[0]; i++) {
    const mt_case *c = &mt_cases[i];
    float out[8], w[8];
    uint16_t q16[8], kv16[8], out16[8];
    for (int j = 0; j < 8; j++)
      out[j] = w[j] = -7, out16[j] = 0x1111;
    int f32 = dt == ATTN_DTYPE_F32;
    for (int64_t j = 0; !f32 && j < 2 * c->L; j++)
      q16[j] = hv(dt, c->q[j]);
    for (int64_t j = 0; !f32 && j < 2 * c->S; j++)
      kv16[j] = hv(dt, c->kv[j]);
    int64_t qd[3] = {1, c->L, 2}, kd[3] = {1, c->S, 2}, pd[2] = {1, c->S};
    int64_t ad[2] = {c->L, c->S}, wd[3] = {1, c->L, c->S};
    size_t nkv = (size_t)(c->S ? 2 * c->S : 1);
    attn_tensor *tq = f32 ? tu_wrap(ctx, (float *)c->q, (size_t)(2 * c->L), 3, qd, NULL)
                          : half_wrap(ctx, dt, q16, (size_t)(2 * c->L), 3, qd);
    attn_tensor *tk = f32 ? tu_wrap(ctx, (float *)c->kv, nkv, 3, kd, NULL)
                          : half_wrap(ctx, dt, kv16, nkv, 3, kd);
    attn_tensor *to = f32 ? tu_wrap(ctx, out, 8, 3, qd, NULL) : half_wrap(ctx, dt, out16, 8, 3, qd);
    attn_tensor *tw = tu_wrap(ctx, w, 8, 3, wd, NULL), *kpm = NULL, *am = NULL;
    if (c->kpm_bool)
      assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_U8, 2, pd, NULL, (void *)c->kpm_bool,
                                 (size_t)c->S, &kpm));
    if (c->kpm_float)
      kpm = tu_wrap(ctx, (float *)c->kpm_float, (size_t)c->S, 2, pd, NULL);
    if (c->am_bool)
      assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_U8, 2, ad, NULL, (void *)c->am_bool,
                                 (size_t)(c->L * c->S), &am));
    if (c->am_float)
      am = tu_wrap(ctx, (float *)c->am_float, (size_t)(c->L * c->S), 2, ad, NULL);
    attn_mha_torch_forward_params fp;
    attn_mha_torch_forward_params_init(&fp);
    fp.need_weights = 1, fp.is_causal = c->causal;
    attn_status st = attn_mha_torch_forward(ctx, m, tq, tk, tk, kpm, am, &fp, to, tw);
    if (st != ATTN_OK)
      fail_msg("%s: %s", c->name, attn_ctx_last_error(ctx));
    if (f32)
      expect_row(c->name, out, c->out, 2 * c->L, 1e-6);
    else
      expect_half(c->name, dt, out16, c->out, 2 * c->L);
    expect_row(c->name, w, c->w, c->L * c->S, 1e-6);
  }
}

static void mha_torch_table(void **state) {
  (void)state;
  for (int32_t threads = 1; threads <= 2; threads++) {
    attn_ctx *ctx = tu_ctx(threads);
    run_mt_cases(ctx, ATTN_DTYPE_F32);
    attn_ctx_destroy(ctx);
  }
}

static void mha_torch_table_half(void **state) {
  (void)state;
  for (int t = 0; t < 2; t++) {
    attn_ctx *ctx = tu_ctx(2);
    run_mt_cases(ctx, kHalfTypes[t]);
    attn_ctx_destroy(ctx);
  }
}

/* ================= the decoder layer (attn_mha_forward) ================= */

/* A layer with E = D = 2, one head, every weight the identity and scale 1:
 * q = k = v = x, and y_t = sum_j softmax_j(x_t . x_j) x_j over the visible
 * j. B = 2 sequences in a contiguous cache of 8 tokens. */
static attn_mha *identity_layer(attn_ctx *ctx, int64_t window_left, float softcap,
                                attn_kv_cache **kv) {
  attn_mha_decoder_params p;
  attn_mha_decoder_params_init(&p);
  p.embed_dim = 2, p.num_heads = 1, p.scale = 1, p.softcap = softcap;
  p.window = window_left >= 0, p.window_left = window_left >= 0 ? window_left : 0;
  attn_mha *m = NULL;
  assert_ok(attn_mha_create_decoder(ctx, &p, &m));
  static float eye[4] = {1, 0, 0, 1};
  for (int32_t i = 0; i < 4; i++)
    assert_ok(attn_mha_set_weight(ctx, m, i, tu_wrap(ctx, eye, 4, 2, (int64_t[]){2, 2}, NULL)));
  attn_kv_cache_params cp;
  attn_kv_cache_params_init(&cp);
  cp.batch = 2, cp.kv_heads = 1, cp.head_dim = 2, cp.capacity = 8;
  assert_ok(attn_kv_cache_create(ctx, &cp, kv));
  return m;
}

/* y [2, L, 2] of the layer over x [2, L, 2]. */
static attn_status mha_step(attn_ctx *ctx, attn_mha *m, attn_kv_cache *kv, float *x, float *y,
                            int64_t L, const int64_t *n_new) {
  int64_t d[3] = {2, L, 2};
  return attn_mha_forward(ctx, m, kv, tu_wrap(ctx, x, (size_t)(4 * L), 3, d, NULL),
                          tu_wrap(ctx, y, (size_t)(4 * L), 3, d, NULL), n_new);
}

static void kv_lengths(attn_ctx *ctx, attn_kv_cache *kv, int64_t want0, int64_t want1) {
  int64_t lens[2];
  attn_kv_cache_info info = {.struct_size = sizeof info};
  assert_ok(attn_kv_cache_info_get(ctx, kv, &info, lens));
  assert_int_equal(lens[0], want0);
  assert_int_equal(lens[1], want1);
}

static void mha_edges(void **state) {
  (void)state;
  const double e = exp(1.0);
  attn_ctx *ctx = tu_ctx(2);
  attn_kv_cache *kv = NULL;

  /* A NaN token reaches the rows that see it and no other: with a window of
   * one key back, token 2 no longer sees token 0; nor does the other
   * sequence. A decode step then attends over tokens 2 and 3 only. */
  attn_mha *m = identity_layer(ctx, 1, 0, &kv);
  float x[12] = {NAN, NAN, 1, 0, 0, 1, /* sequence 1: */ 1, 0, 0, 1, 1, 1}, y[12];
  assert_ok(mha_step(ctx, m, kv, x, y, 3, NULL));
  expect_row("NaN token 0 (sees itself)", y, W(NAN, NAN), 2, 0);
  expect_row("token 1 sees the NaN key", y + 2, W(NAN, NAN), 2, 0);
  expect_row("token 2: the NaN key is outside the window", y + 4, W(1 / (1 + e), e / (1 + e)),
             2, 1e-7);
  /* sequence 1: token 1 over (1,0),(0,1): logits 0, 1; token 2 over (0,1),(1,1): 1, 2 */
  expect_row("other sequence, token 0", y + 6, W(1, 0), 2, 0);
  expect_row("other sequence, token 1", y + 8, W(1 / (1 + e), e / (1 + e)), 2, 1e-7);
  expect_row("other sequence, token 2", y + 10, W(e / (1 + e), 1), 2, 1e-7);
  float x1[4] = {1, 1, 1, 1}, y1[4];
  assert_ok(mha_step(ctx, m, kv, x1, y1, 1, NULL));
  expect_row("decode past the NaN key", y1, W(e / (1 + e), 1), 2, 1e-7);
  kv_lengths(ctx, kv, 4, 4);

  /* Length-0 steps: L = 0 (also straight through attn_kv_attend), and
   * counts of 0 over a NaN-filled x. Nothing is appended; every y row is
   * zero. */
  assert_ok(mha_step(ctx, m, kv, x, y, 0, NULL));
  int64_t q0[4] = {2, 1, 0, 2};
  assert_ok(attn_kv_attend(ctx, kv, tu_wrap(ctx, x, 0, 4, q0, NULL), tu_wrap(ctx, y, 0, 4, q0, NULL),
                           NULL, NULL));
  float xn[4] = {NAN, NAN, NAN, NAN}, yn[4] = {5, 5, 5, 5};
  assert_ok(mha_step(ctx, m, kv, xn, yn, 1, (int64_t[]){0, 0}));
  expect_row("count 0: zeros", yn, W(0, 0, 0, 0), 4, 0);
  kv_lengths(ctx, kv, 4, 4);
  assert_ok(attn_mha_free(ctx, m));
  assert_ok(attn_kv_cache_free(ctx, kv));

  /* NaN in a padding row (past n_new) is projected but never appended:
   * later steps stay finite. A single token attends to itself only: y = x
   * exactly. */
  m = identity_layer(ctx, -1, 0, &kv);
  float xp[8] = {1, 0, NAN, NAN, /* sequence 1: */ 0, 1, 1, 0}, yp[8];
  assert_ok(mha_step(ctx, m, kv, xp, yp, 2, (int64_t[]){1, 2}));
  expect_row("one token: y = x", yp, W(1, 0, 0, 0), 4, 0);
  expect_row("other sequence", yp + 4, W(0, 1, e / (1 + e), 1 / (1 + e)), 4, 1e-7);
  float xd[4] = {0, 1, 0, 0}, yd[4];
  assert_ok(mha_step(ctx, m, kv, xd, yd, 1, NULL));
  expect_row("after a NaN padding row", yd, W(1 / (1 + e), e / (1 + e)), 2, 1e-7);
  kv_lengths(ctx, kv, 2, 3);
  assert_ok(attn_mha_free(ctx, m));
  assert_ok(attn_kv_cache_free(ctx, kv));

  /* Soft-cap 1 bounds logits that overflow float (1e20 * 1e20 = inf):
   * token 1 has logits (0, 1) and stays finite. */
  m = identity_layer(ctx, -1, 1.0f, &kv);
  float xc[8] = {1e20f, 0, 0, 1e20f, 1, 0, 0, 1}, yc[8];
  assert_ok(mha_step(ctx, m, kv, xc, yc, 2, NULL));
  expect_row("soft-capped inf logit, token 0", yc, W(1e20f, 0), 2, 0);
  expect_row("soft-capped inf logit, token 1", yc + 2,
             W(1e20f / (1 + e), (double)1e20f * e / (1 + e)), 2, 1e14);
  attn_ctx_destroy(ctx);
}

/* mha_edges' first two blocks with f16 / bf16 x and y: a NaN token reaches
 * the rows that see it and no other; a NaN padding row (past n_new) is never
 * appended. Rows stated as there, within half an ULP of the type. */
static void mha_edges_half(void **state) {
  (void)state;
  const double e = exp(1.0);
  for (int t = 0; t < 2; t++) {
    int32_t dt = kHalfTypes[t];
    attn_ctx *ctx = tu_ctx(2);
    attn_kv_cache *kv = NULL;
    attn_mha *m = identity_layer(ctx, 1, 0, &kv);
    const float xv[12] = {NAN, NAN, 1, 0, 0, 1, 1, 0, 0, 1, 1, 1};
    uint16_t x[12], y[12];
    for (int i = 0; i < 12; i++)
      x[i] = hv(dt, xv[i]);
    int64_t d3[3] = {2, 3, 2};
    assert_ok(attn_mha_forward(ctx, m, kv, half_wrap(ctx, dt, x, 12, 3, d3),
                               half_wrap(ctx, dt, y, 12, 3, d3), NULL));
    expect_half("mha NaN token and the row that sees it", dt, y, W(NAN, NAN, NAN, NAN), 4);
    expect_half("mha row past the window", dt, y + 4, W(1 / (1 + e), e / (1 + e)), 2);
    expect_half("mha other sequence", dt, y + 6,
                W(1, 0, 1 / (1 + e), e / (1 + e), e / (1 + e), 1), 6);
    assert_ok(attn_mha_free(ctx, m));
    assert_ok(attn_kv_cache_free(ctx, kv));

    m = identity_layer(ctx, -1, 0, &kv);
    uint16_t xp[8] = {hv(dt, 1), 0, hv(dt, NAN), hv(dt, NAN), 0, hv(dt, 1), hv(dt, 1), 0};
    uint16_t yp[8], xd[4] = {0, hv(dt, 1), 0, 0}, yd[4];
    int64_t d2[3] = {2, 2, 2}, d1[3] = {2, 1, 2};
    assert_ok(attn_mha_forward(ctx, m, kv, half_wrap(ctx, dt, xp, 8, 3, d2),
                               half_wrap(ctx, dt, yp, 8, 3, d2), (int64_t[]){1, 2}));
    expect_half("mha one token: y = x, padding row zeros", dt, yp, W(1, 0, 0, 0), 4);
    expect_half("mha other sequence", dt, yp + 4, W(0, 1, e / (1 + e), 1 / (1 + e)), 4);
    assert_ok(attn_mha_forward(ctx, m, kv, half_wrap(ctx, dt, xd, 4, 3, d1),
                               half_wrap(ctx, dt, yd, 4, 3, d1), NULL));
    expect_half("mha after a NaN padding row", dt, yd, W(1 / (1 + e), e / (1 + e)), 2);
    kv_lengths(ctx, kv, 2, 3);
    assert_ok(attn_mha_free(ctx, m));
    assert_ok(attn_kv_cache_free(ctx, kv));
    attn_ctx_destroy(ctx);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(tensor_overflowing_shapes),
      cmocka_unit_test(sdpa_table),
      cmocka_unit_test(sdpa_table_half),
      cmocka_unit_test(kv_half_table),
      cmocka_unit_test(sdpa_backward_table),
      cmocka_unit_test(sdpa_huge_l),
      cmocka_unit_test(sdpa_varlen_empty),
      cmocka_unit_test(sdpa_varlen_backward_rows),
      cmocka_unit_test(backward_empty_heads),
      cmocka_unit_test(softmax_table),
      cmocka_unit_test(softmax_table_half),
      cmocka_unit_test(softmax_huge),
      cmocka_unit_test(sinusoidal_edges),
      cmocka_unit_test(sinusoidal_huge_l),
      cmocka_unit_test(rope_edges),
      cmocka_unit_test(rope_huge_l),
      cmocka_unit_test(alibi_edges),
      cmocka_unit_test(pool_table),
      cmocka_unit_test(pool_backward_table),
      cmocka_unit_test(pool_backward_no_tokens),
      cmocka_unit_test(pool_table_half),
      cmocka_unit_test(pool_backward_table_half),
      cmocka_unit_test(pool_attention_backward_edges),
      cmocka_unit_test(rope_cached_edges),
      cmocka_unit_test(rope_edges_half),
      cmocka_unit_test(rope_cached_edges_half),
      cmocka_unit_test(sinusoidal_edges_half),
      cmocka_unit_test(sdpa_varlen_half),
      cmocka_unit_test(pool_attention_half),
      cmocka_unit_test(half_refused),
      cmocka_unit_test(mha_torch_table),
      cmocka_unit_test(mha_edges),
      cmocka_unit_test(mha_torch_table_half),
      cmocka_unit_test(mha_edges_half),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
