/* Numerical edge cases, table-driven, for every op: +-FLT_MAX, subnormals,
 * +-Inf, NaN in each position, all-masked rows, length-1 rows and
 * sequences, D = 1, huge L with tiny D. Each row of a table states the
 * result include/attn.h documents:
 *   - a masked entry has weight exactly 0; a row with nothing visible gives
 *     zeros (log-softmax -inf, lse -inf or the sink), never NaN;
 *   - a NaN in the input reaches exactly the rows it touches;
 *   - rows stay finite for logits up to +-FLT_MAX (the max is taken first).
 * Plus size arithmetic at the edges (shapes whose products overflow). */
#include <float.h>

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
  attn_ctx_destroy(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(tensor_overflowing_shapes),
      cmocka_unit_test(sdpa_table),
      cmocka_unit_test(sdpa_huge_l),
      cmocka_unit_test(sdpa_varlen_empty),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
