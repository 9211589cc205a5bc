/* The PyTorch nn.MultiheadAttention form (attn_mha_create_torch,
 * attn_mha_torch_forward) against golden cases written by torch 1.13
 * (tests/reference/gen_mha_torch.py -> tests/data/mha_torch): the state_dict
 * loaded as it is, out and the attention weights within 1e-5, with the
 * tensors contiguous and then as strided views; a warm context allocating
 * nothing; bad input refused with nothing written; self-attention's one
 * q/k/v product equal to three; weights changed between calls honoured. */
#include "test_util.h"

#ifndef ATTN_MHA_TORCH_DATA
#error "ATTN_MHA_TORCH_DATA (the golden cases' directory) must be defined"
#endif

enum { MAX_ARRAYS = 24 };

typedef struct {
  char name[33];
  int32_t dtype; /* 0 float32, 1 uint8, 2 int64 */
  int32_t ndim;
  int64_t dims[4];
  size_t n;
  void *data;
} array;

typedef struct {
  int count;
  array a[MAX_ARRAYS];
} golden;

static void read_exact(FILE *f, void *p, size_t n, const char *path) {
  if (fread(p, 1, n, f) != n)
    fail_msg("%s: truncated", path);
}

static void golden_load(const char *name, golden *g) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s.bin", ATTN_MHA_TORCH_DATA, name);
  FILE *f = fopen(path, "rb");
  if (!f)
    fail_msg("cannot open %s (regenerate with the regen-mha-golden target)", path);
  char magic[8];
  read_exact(f, magic, 8, path);
  assert_memory_equal(magic, "ATTNMHA1", 8);
  int32_t count;
  read_exact(f, &count, 4, path);
  assert_true(count > 0 && count <= MAX_ARRAYS);
  g->count = count;
  for (int i = 0; i < count; i++) {
    array *a = &g->a[i];
    memset(a->name, 0, sizeof a->name);
    read_exact(f, a->name, 32, path);
    read_exact(f, &a->dtype, 4, path);
    read_exact(f, &a->ndim, 4, path);
    assert_true(a->ndim >= 1 && a->ndim <= 4 && a->dtype >= 0 && a->dtype <= 2);
    read_exact(f, a->dims, (size_t)a->ndim * 8, path);
    a->n = 1;
    for (int d = 0; d < a->ndim; d++)
      a->n *= (size_t)a->dims[d];
    size_t esize = a->dtype == 2 ? 8 : a->dtype == 0 ? 4 : 1;
    a->data = malloc(a->n * esize + 1);
    read_exact(f, a->data, a->n * esize, path);
  }
  fclose(f);
}

static void golden_free(golden *g) {
  for (int i = 0; i < g->count; i++)
    free(g->a[i].data);
}

static const array *find(const golden *g, const char *name) {
  for (int i = 0; i < g->count; i++)
    if (strcmp(g->a[i].name, name) == 0)
      return &g->a[i];
  return NULL;
}

static attn_tensor *wrap_array(attn_ctx *ctx, const array *a) {
  attn_tensor *t = NULL;
  assert_ok(attn_tensor_wrap(ctx, a->dtype ? ATTN_DTYPE_U8 : ATTN_DTYPE_F32, a->ndim, a->dims,
                             NULL, a->data, a->n * (a->dtype ? 1 : 4), &t));
  return t;
}

/* A 3-D float array stored as [A1, A0, F + 1] and viewed as [A0, A1, F]:
 * rows neither evenly strided nor contiguous, so the layer gathers them. */
static attn_tensor *strided_copy(attn_ctx *ctx, const array *a, float **mem) {
  int64_t A0 = a->dims[0], A1 = a->dims[1], F = a->dims[2];
  size_t n = (size_t)(A0 * A1 * (F + 1));
  *mem = calloc(n + 1, sizeof(float));
  const float *src = a->data;
  for (int64_t i = 0; i < A0; i++)
    for (int64_t j = 0; j < A1; j++)
      for (int64_t f = 0; f < F; f++)
        (*mem)[(j * A0 + i) * (F + 1) + f] = src[(i * A1 + j) * F + f];
  const int64_t strides[3] = {F + 1, A0 * (F + 1), 1};
  return tu_wrap(ctx, *mem, n, 3, a->dims, strides);
}

static const struct {
  const char *name;
  int32_t which;
} state_names[] = {
    {"in_proj_weight", ATTN_MHA_IN_PROJ_WEIGHT}, {"q_proj_weight", ATTN_MHA_Q_WEIGHT},
    {"k_proj_weight", ATTN_MHA_K_WEIGHT},        {"v_proj_weight", ATTN_MHA_V_WEIGHT},
    {"in_proj_bias", ATTN_MHA_IN_PROJ_BIAS},     {"out_proj.weight", ATTN_MHA_O_WEIGHT},
    {"out_proj.bias", ATTN_MHA_O_BIAS},
};

static attn_mha *layer_from(attn_ctx *ctx, const golden *g, int wrap) {
  const int64_t *cfg = find(g, "config")->data;
  attn_mha_torch_params p;
  attn_mha_torch_params_init(&p);
  p.embed_dim = cfg[0], p.num_heads = cfg[1], p.kdim = cfg[2], p.vdim = cfg[3];
  p.no_bias = !cfg[4], p.batch_first = (int32_t)cfg[5];
  attn_mha *m = NULL;
  assert_ok(attn_mha_create_torch(ctx, &p, &m));
  int loaded = 0;
  for (size_t i = 0; i < sizeof state_names / sizeof *state_names; i++) {
    const array *a = find(g, state_names[i].name);
    if (!a)
      continue;
    attn_tensor *t = wrap_array(ctx, a);
    if (wrap)
      assert_ok(attn_mha_wrap_weight(ctx, m, state_names[i].which, t));
    else
      assert_ok(attn_mha_set_weight(ctx, m, state_names[i].which, t));
    /* Read back as it was given. */
    float *back = malloc(a->n * sizeof(float));
    attn_tensor *bt = tu_wrap(ctx, back, a->n, a->ndim, a->dims, NULL);
    assert_ok(attn_mha_get_weight(ctx, m, state_names[i].which, bt));
    assert_memory_equal(back, a->data, a->n * sizeof(float));
    assert_ok(attn_tensor_free(ctx, bt));
    free(back);
    assert_ok(attn_tensor_free(ctx, t));
    loaded++;
  }
  int packed = cfg[2] == cfg[0] && cfg[3] == cfg[0];
  assert_int_equal(loaded, (packed ? 2 : 4) + (cfg[4] ? 2 : 0));
  return m;
}

static void expect_close(const char *what, const char *name, const float *got,
                         const array *want) {
  const float *w = want->data;
  for (size_t i = 0; i < want->n; i++)
    if (!tu_close(got[i], w[i], 1e-5, 1e-5))
      fail_msg("%s: %s[%zu] = %.9g but torch gives %.9g", name, what, i, (double)got[i],
               (double)w[i]);
}

/* Run one golden case; strided: the 3-D tensors as gathered views. */
static void run_case(const char *name, int strided, int32_t threads) {
  golden g;
  golden_load(name, &g);
  const int64_t *cfg = find(&g, "config")->data;
  tu_counter cnt = {0};
  attn_ctx_options o;
  attn_ctx_options_init(&o);
  o.num_threads = threads, o.alloc = tu_alloc, o.free = tu_free, o.alloc_user = &cnt;
  attn_ctx *ctx = NULL;
  assert_ok(attn_ctx_create(&ctx, &o));
  attn_mha *m = layer_from(ctx, &g, strided);
  const array *aq = find(&g, "query"), *ao = find(&g, "out"), *aw = find(&g, "out_weights");
  float *mem[5] = {0};
  attn_tensor *q, *k, *v, *out;
  float *out_data;
  if (strided) {
    q = strided_copy(ctx, aq, &mem[0]);
    k = cfg[9] ? q : strided_copy(ctx, find(&g, "key"), &mem[1]);
    v = cfg[9] ? q : strided_copy(ctx, find(&g, "value"), &mem[2]);
    out = strided_copy(ctx, ao, &mem[3]);
    out_data = mem[4] = malloc(ao->n * sizeof(float));
  } else {
    q = wrap_array(ctx, aq);
    k = cfg[9] ? q : wrap_array(ctx, find(&g, "key"));
    v = cfg[9] ? q : wrap_array(ctx, find(&g, "value"));
    out_data = mem[4] = malloc(ao->n * sizeof(float));
    out = tu_wrap(ctx, out_data, ao->n, 3, ao->dims, NULL);
  }
  const array *akpm = find(&g, "key_padding_mask"), *aam = find(&g, "attn_mask");
  attn_tensor *kpm = akpm ? wrap_array(ctx, akpm) : NULL, *am = aam ? wrap_array(ctx, aam) : NULL;
  float *wdata = aw ? malloc(aw->n * sizeof(float)) : NULL;
  attn_tensor *wt = aw ? tu_wrap(ctx, wdata, aw->n, aw->ndim, aw->dims, NULL) : NULL;
  attn_mha_torch_forward_params fp;
  attn_mha_torch_forward_params_init(&fp);
  fp.need_weights = (int32_t)cfg[6], fp.per_head_weights = !cfg[7];
  fp.is_causal = (int32_t)cfg[8];
  for (int rep = 0; rep < 2; rep++) {
    long before = cnt.allocs;
    attn_status st = attn_mha_torch_forward(ctx, m, q, k, v, kpm, am, &fp, out, wt);
    if (st != ATTN_OK)
      fail_msg("%s: %s: %s", name, attn_status_string(st), attn_ctx_last_error(ctx));
    if (rep == 1) /* warm: the workspace is already large enough */
      assert_int_equal(cnt.allocs, before);
  }
  if (strided) { /* read the view back into C order */
    int64_t A0 = ao->dims[0], A1 = ao->dims[1], F = ao->dims[2];
    for (int64_t i = 0; i < A0; i++)
      for (int64_t j = 0; j < A1; j++)
        for (int64_t f = 0; f < F; f++)
          out_data[(i * A1 + j) * F + f] = mem[3][(j * A0 + i) * (F + 1) + f];
  }
  expect_close("out", name, out_data, ao);
  if (aw)
    expect_close("out_weights", name, wdata, aw);
  assert_ok(attn_mha_free(ctx, m));
  attn_ctx_destroy(ctx);
  assert_int_equal(cnt.allocs, cnt.frees);
  for (int i = 0; i < 5; i++)
    free(mem[i]);
  free(wdata);
  golden_free(&g);
}

static int for_each_case(int strided, int32_t threads) {
  FILE *f = fopen(ATTN_MHA_TORCH_DATA "/index.txt", "r");
  if (!f)
    fail_msg("cannot open %s/index.txt", ATTN_MHA_TORCH_DATA);
  char line[128];
  int n = 0;
  while (fgets(line, sizeof line, f)) {
    line[strcspn(line, "\r\n")] = 0;
    if (!*line)
      continue;
    run_case(line, strided, threads);
    n++;
  }
  fclose(f);
  return n;
}

static void test_golden_contiguous(void **state) {
  (void)state;
  assert_true(for_each_case(0, 1) >= 10);
}

static void test_golden_strided_threads(void **state) {
  (void)state;
  assert_true(for_each_case(1, 2) >= 10);
}

/* ---- the form's rules ---- */

static attn_mha *small_layer(attn_ctx *ctx, int64_t kdim, int batch_first) {
  attn_mha_torch_params p;
  attn_mha_torch_params_init(&p);
  p.embed_dim = 4, p.num_heads = 2, p.kdim = kdim, p.batch_first = batch_first;
  attn_mha *m = NULL;
  assert_ok(attn_mha_create_torch(ctx, &p, &m));
  return m;
}

static void test_create_refusals(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  attn_mha_torch_params p;
  attn_mha_torch_params_init(&p);
  assert_int_equal(p.no_bias, 0);
  attn_mha *m = (attn_mha *)(uintptr_t)1, *keep = m;
  p.embed_dim = 6, p.num_heads = 4;
  assert_status(attn_mha_create_torch(ctx, &p, &m), ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "multiple of num_heads");
  p.num_heads = 2, p.add_bias_kv = 1;
  assert_status(attn_mha_create_torch(ctx, &p, &m), ATTN_ERR_UNSUPPORTED);
  assert_error_mentions(ctx, "add_bias_kv");
  p.add_bias_kv = 0, p.add_zero_attn = 1;
  assert_status(attn_mha_create_torch(ctx, &p, &m), ATTN_ERR_UNSUPPORTED);
  p.add_zero_attn = 0, p.kdim = -1;
  assert_status(attn_mha_create_torch(ctx, &p, &m), ATTN_ERR_INVALID_ARG);
  assert_status(attn_mha_create_torch(ctx, NULL, &m), ATTN_ERR_NULL_ARG);
  assert_ptr_equal(m, keep);
  attn_ctx_destroy(ctx);
}

static void test_weight_names(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  attn_mha *packed = small_layer(ctx, 0, 0), *separate = small_layer(ctx, 3, 0);
  float buf[64] = {0};
  const int64_t d12x4[2] = {12, 4}, d4x4[2] = {4, 4}, d4x3[2] = {4, 3}, d12[1] = {12};
  attn_tensor *in_w = tu_wrap(ctx, buf, 48, 2, d12x4, NULL);
  attn_tensor *w44 = tu_wrap(ctx, buf, 16, 2, d4x4, NULL),
              *w43 = tu_wrap(ctx, buf, 12, 2, d4x3, NULL);
  attn_tensor *b12 = tu_wrap(ctx, buf, 12, 1, d12, NULL);
  assert_ok(attn_mha_set_weight(ctx, packed, ATTN_MHA_IN_PROJ_WEIGHT, in_w));
  assert_ok(attn_mha_set_weight(ctx, packed, ATTN_MHA_IN_PROJ_BIAS, b12));
  assert_status(attn_mha_set_weight(ctx, packed, ATTN_MHA_Q_WEIGHT, w44), ATTN_ERR_INVALID_ARG);
  assert_status(attn_mha_set_weight(ctx, packed, ATTN_MHA_Q_BIAS, b12), ATTN_ERR_INVALID_ARG);
  assert_status(attn_mha_set_weight(ctx, separate, ATTN_MHA_IN_PROJ_WEIGHT, in_w),
                ATTN_ERR_INVALID_ARG);
  assert_ok(attn_mha_set_weight(ctx, separate, ATTN_MHA_K_WEIGHT, w43));
  assert_status(attn_mha_set_weight(ctx, separate, ATTN_MHA_K_WEIGHT, w44), ATTN_ERR_SHAPE);
  /* A decoder layer has no in_proj weights. */
  attn_mha_decoder_params dp;
  attn_mha_decoder_params_init(&dp);
  dp.embed_dim = 4, dp.num_heads = 2, dp.qkv_bias = dp.out_bias = 1;
  attn_mha *dec = NULL;
  assert_ok(attn_mha_create_decoder(ctx, &dp, &dec));
  assert_status(attn_mha_set_weight(ctx, dec, ATTN_MHA_IN_PROJ_WEIGHT, in_w),
                ATTN_ERR_INVALID_ARG);
  assert_status(attn_mha_set_weight(ctx, dec, ATTN_MHA_IN_PROJ_BIAS, b12), ATTN_ERR_INVALID_ARG);
  /* Each form's forward refuses the other's layer. */
  float x[64] = {0}, y[64];
  const int64_t d3[3] = {2, 1, 4};
  attn_tensor *tx = tu_wrap(ctx, x, 8, 3, d3, NULL), *ty = tu_wrap(ctx, y, 8, 3, d3, NULL);
  assert_status(attn_mha_torch_forward(ctx, dec, tx, tx, tx, NULL, NULL, NULL, ty, NULL),
                ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "attn_mha_forward");
  attn_kv_cache_params kp;
  attn_kv_cache_params_init(&kp);
  kp.batch = 1, kp.kv_heads = 2, kp.head_dim = 2, kp.capacity = 4;
  attn_kv_cache *kv = NULL;
  assert_ok(attn_kv_cache_create(ctx, &kp, &kv));
  const int64_t d1[3] = {1, 2, 4};
  attn_tensor *x1 = tu_wrap(ctx, x, 8, 3, d1, NULL), *y1 = tu_wrap(ctx, y, 8, 3, d1, NULL);
  assert_status(attn_mha_forward(ctx, packed, kv, x1, y1, NULL), ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "attn_mha_torch_forward");
  attn_ctx_destroy(ctx);
}

static void test_forward_refusals(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  attn_mha *m = small_layer(ctx, 3, 0);
  float q[64], k[64], y[64], w[64], mask[64] = {0};
  for (int i = 0; i < 64; i++)
    q[i] = k[i] = 0.1f * (float)i, y[i] = w[i] = -7.0f;
  /* L = 2, S = 3, B = 2 */
  const int64_t dq[3] = {2, 2, 4}, dk[3] = {3, 2, 3}, dw[3] = {2, 2, 3}, dm3[3] = {3, 2, 3};
  attn_tensor *tq = tu_wrap(ctx, q, 16, 3, dq, NULL), *tk = tu_wrap(ctx, k, 18, 3, dk, NULL);
  attn_tensor *ty = tu_wrap(ctx, y, 16, 3, dq, NULL), *tw = tu_wrap(ctx, w, 12, 3, dw, NULL);
  attn_tensor *m3 = tu_wrap(ctx, mask, 18, 3, dm3, NULL);
  attn_mha_torch_forward_params fp;
  attn_mha_torch_forward_params_init(&fp);
  /* out_weights without need_weights, and the reverse */
  assert_status(attn_mha_torch_forward(ctx, m, tq, tk, tk, NULL, NULL, &fp, ty, tw),
                ATTN_ERR_INVALID_ARG);
  assert_error_mentions(ctx, "need_weights");
  fp.need_weights = 1;
  assert_status(attn_mha_torch_forward(ctx, m, tq, tk, tk, NULL, NULL, &fp, ty, NULL),
                ATTN_ERR_INVALID_ARG);
  /* key has kdim = 3 features, value must have vdim = E = 4 */
  assert_status(attn_mha_torch_forward(ctx, m, tq, tk, tk, NULL, NULL, &fp, ty, tw),
                ATTN_ERR_SHAPE);
  assert_error_mentions(ctx, "vdim");
  const int64_t dv[3] = {3, 2, 4};
  attn_tensor *tv = tu_wrap(ctx, k, 24, 3, dv, NULL);
  /* 3-D mask's first dim must be B * H = 4 */
  assert_status(attn_mha_torch_forward(ctx, m, tq, tk, tv, NULL, m3, &fp, ty, tw),
                ATTN_ERR_SHAPE);
  assert_error_mentions(ctx, "B * num_heads");
  /* out overlapping query */
  assert_status(attn_mha_torch_forward(ctx, m, tq, tk, tv, NULL, NULL, &fp, tq, tw),
                ATTN_ERR_ALIASING);
  /* per-head weights need [B, H, L, S] */
  fp.per_head_weights = 1;
  assert_status(attn_mha_torch_forward(ctx, m, tq, tk, tv, NULL, NULL, &fp, ty, tw),
                ATTN_ERR_SHAPE);
  fp.reserved_ = 1;
  fp.per_head_weights = 0;
  assert_status(attn_mha_torch_forward(ctx, m, tq, tk, tv, NULL, NULL, &fp, ty, tw),
                ATTN_ERR_INVALID_ARG);
  for (int i = 0; i < 64; i++)
    assert_true(y[i] == -7.0f && w[i] == -7.0f);
  fp.reserved_ = 0;
  assert_ok(attn_mha_torch_forward(ctx, m, tq, tk, tv, NULL, NULL, &fp, ty, tw));
  attn_ctx_destroy(ctx);
}

/* out or out_weights in the memory of a weight used in place: the call
 * would write the weight while it reads it (a silent wrong answer), so it
 * is refused and writes nothing; a weight owned again no longer counts. */
static void test_out_over_wrapped_weight(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  attn_mha *m = small_layer(ctx, 0, 0);
  float q[16], wo[16], wi[48], w[8];
  for (int i = 0; i < 48; i++)
    wi[i] = 0.01f * (float)i;
  for (int i = 0; i < 16; i++)
    q[i] = 0.1f * (float)i, wo[i] = 0.05f * (float)i;
  const int64_t dq[3] = {2, 2, 4}, dwo[2] = {4, 4}, dwi[2] = {12, 4}, dw[3] = {2, 2, 2};
  attn_tensor *tq = tu_wrap(ctx, q, 16, 3, dq, NULL);
  assert_ok(attn_mha_wrap_weight(ctx, m, ATTN_MHA_O_WEIGHT, tu_wrap(ctx, wo, 16, 2, dwo, NULL)));
  assert_ok(attn_mha_wrap_weight(ctx, m, ATTN_MHA_IN_PROJ_WEIGHT,
                                 tu_wrap(ctx, wi, 48, 2, dwi, NULL)));
  float saved_wo[16], saved_wi[48];
  memcpy(saved_wo, wo, sizeof wo);
  memcpy(saved_wi, wi, sizeof wi);
  attn_tensor *over_wo = tu_wrap(ctx, wo, 16, 3, dq, NULL);
  assert_status(attn_mha_torch_forward(ctx, m, tq, tq, tq, NULL, NULL, NULL, over_wo, NULL),
                ATTN_ERR_ALIASING);
  assert_error_mentions(ctx, "used in place");
  attn_mha_torch_forward_params fp;
  attn_mha_torch_forward_params_init(&fp);
  fp.need_weights = 1;
  attn_tensor *tw = tu_wrap(ctx, wi + 40, 8, 3, dw, NULL); /* the last rows of Wv */
  float y[16];
  assert_status(attn_mha_torch_forward(ctx, m, tq, tq, tq, NULL, NULL, &fp,
                                       tu_wrap(ctx, y, 16, 3, dq, NULL), tw),
                ATTN_ERR_ALIASING);
  assert_error_mentions(ctx, "in_proj_weight");
  assert_memory_equal(wo, saved_wo, sizeof wo);
  assert_memory_equal(wi, saved_wi, sizeof wi);
  /* Owned again: that memory is the caller's to write into. */
  assert_ok(attn_mha_set_weight(ctx, m, ATTN_MHA_O_WEIGHT, tu_wrap(ctx, wo, 16, 2, dwo, NULL)));
  assert_ok(attn_mha_torch_forward(ctx, m, tq, tq, tq, NULL, NULL, NULL, over_wo, NULL));
  assert_ok(attn_mha_torch_forward(ctx, m, tq, tq, tq, NULL, NULL, &fp,
                                   tu_wrap(ctx, y, 16, 3, dq, NULL),
                                   tu_wrap(ctx, w, 8, 3, dw, NULL)));
  attn_ctx_destroy(ctx);
}

/* Every key padded: torch gives NaN, libattn a zero attention (so out is
 * out_proj.bias) and zero weights, as documented. */
static void test_all_keys_masked(void **state) {
  (void)state;
  attn_ctx *ctx = tu_ctx(1);
  attn_mha *m = small_layer(ctx, 0, 1);
  float bo[4] = {1, 2, 3, 4}, x[8], y[8], w[2];
  for (int i = 0; i < 8; i++)
    x[i] = (float)i;
  const int64_t d4[1] = {4}, dx[3] = {1, 2, 4}, dw[3] = {1, 1, 2}, dkpm[2] = {1, 2};
  assert_ok(attn_mha_set_weight(ctx, m, ATTN_MHA_O_BIAS, tu_wrap(ctx, bo, 4, 1, d4, NULL)));
  attn_tensor *tx = tu_wrap(ctx, x, 8, 3, dx, NULL), *ty = tu_wrap(ctx, y, 8, 3, dx, NULL);
  const int64_t dq[3] = {1, 1, 4};
  attn_tensor *tq = tu_wrap(ctx, x, 4, 3, dq, NULL), *tyq = tu_wrap(ctx, y, 4, 3, dq, NULL);
  attn_tensor *tw = tu_wrap(ctx, w, 2, 3, dw, NULL);
  uint8_t pad[2] = {1, 1};
  attn_tensor *kpm = NULL;
  assert_ok(attn_tensor_wrap(ctx, ATTN_DTYPE_U8, 2, dkpm, NULL, pad, 2, &kpm));
  attn_mha_torch_forward_params fp;
  attn_mha_torch_forward_params_init(&fp);
  fp.need_weights = 1;
  assert_ok(attn_mha_torch_forward(ctx, m, tq, tx, tx, kpm, NULL, &fp, tyq, tw));
  for (int i = 0; i < 4; i++)
    assert_true(y[i] == bo[i]);
  assert_true(w[0] == 0 && w[1] == 0);
  (void)ty;
  attn_ctx_destroy(ctx);
}

/* ---- self-attention's one product; weights changed between calls ---- */

enum { SF_E = 32, SF_H = 4, SF_L = 12, SF_B = 2, SF_N = SF_L * SF_B * SF_E };

typedef struct {
  float in_w[3 * SF_E * SF_E], in_b[3 * SF_E], out_w[SF_E * SF_E], out_b[SF_E];
} sf_weights;

static attn_tensor *sf_tensor(attn_ctx *ctx, float *p, int32_t which) {
  static const int64_t d_in[2] = {3 * SF_E, SF_E}, d_out[2] = {SF_E, SF_E};
  static const int64_t d_inb[1] = {3 * SF_E}, d_outb[1] = {SF_E};
  switch (which) {
  case ATTN_MHA_IN_PROJ_WEIGHT: return tu_wrap(ctx, p, 3 * SF_E * SF_E, 2, d_in, NULL);
  case ATTN_MHA_IN_PROJ_BIAS: return tu_wrap(ctx, p, 3 * SF_E, 1, d_inb, NULL);
  case ATTN_MHA_O_WEIGHT: return tu_wrap(ctx, p, SF_E * SF_E, 2, d_out, NULL);
  default: return tu_wrap(ctx, p, SF_E, 1, d_outb, NULL);
  }
}

/* A layer with w's values copied in. */
static attn_mha *sf_layer(attn_ctx *ctx, sf_weights *w) {
  attn_mha_torch_params p;
  attn_mha_torch_params_init(&p);
  p.embed_dim = SF_E, p.num_heads = SF_H;
  attn_mha *m = NULL;
  assert_ok(attn_mha_create_torch(ctx, &p, &m));
  float *v[4] = {w->in_w, w->in_b, w->out_w, w->out_b};
  const int32_t which[4] = {ATTN_MHA_IN_PROJ_WEIGHT, ATTN_MHA_IN_PROJ_BIAS, ATTN_MHA_O_WEIGHT,
                            ATTN_MHA_O_BIAS};
  for (int i = 0; i < 4; i++)
    assert_ok(attn_mha_set_weight(ctx, m, which[i], sf_tensor(ctx, v[i], which[i])));
  return m;
}

static void sf_forward(attn_ctx *ctx, attn_mha *m, float *q, float *k, float *v, float *out) {
  static const int64_t d[3] = {SF_L, SF_B, SF_E};
  attn_tensor *tq = tu_wrap(ctx, q, SF_N, 3, d, NULL);
  attn_tensor *tk = k == q ? tq : tu_wrap(ctx, k, SF_N, 3, d, NULL);
  attn_tensor *tv = v == q ? tq : tu_wrap(ctx, v, SF_N, 3, d, NULL);
  attn_mha_torch_forward_params p;
  attn_mha_torch_forward_params_init(&p);
  p.is_causal = 1;
  if (attn_mha_torch_forward(ctx, m, tq, tk, tv, NULL, NULL, &p,
                             tu_wrap(ctx, out, SF_N, 3, d, NULL), NULL) != ATTN_OK)
    fail_msg("%s", attn_ctx_last_error(ctx));
}

/* out of m on x equals, bit for bit, a fresh layer made from w's values. */
static void sf_expect_fresh(attn_ctx *ctx, attn_mha *m, sf_weights *w, float *x,
                            const char *what) {
  static float got[SF_N], want[SF_N];
  sf_forward(ctx, m, x, x, x, got);
  attn_mha *fresh = sf_layer(ctx, w);
  sf_forward(ctx, fresh, x, x, x, want);
  assert_ok(attn_mha_free(ctx, fresh));
  if (memcmp(got, want, sizeof got))
    fail_msg("%s: the layer's output differs from a fresh layer's with the same weights", what);
}

/* query, key and value the same view (one q/k/v product over the query
 * rows, 24 tokens: the blocked path with packed weights) give the bits of
 * key and value as copies elsewhere (three products); weights set, or
 * wrapped and changed, between calls reach the next call. */
static void test_self_one_product_and_weight_changes(void **state) {
  (void)state;
  static sf_weights w;
  static float x[SF_N], xk[SF_N], xv[SF_N], y0[SF_N], y1[SF_N];
  tu_rng r = {0x5e1f};
  tu_fill(&r, (float *)&w, sizeof w / sizeof(float), -0.3f, 0.3f);
  tu_fill(&r, x, SF_N, -1, 1);
  memcpy(xk, x, sizeof x);
  memcpy(xv, x, sizeof x);
  attn_ctx *ctx = tu_ctx(2);
  attn_mha *m = sf_layer(ctx, &w);
  sf_forward(ctx, m, x, x, x, y0);
  sf_forward(ctx, m, x, xk, xv, y1);
  assert_memory_equal(y0, y1, sizeof y0);
  /* set after a forward: in_proj_weight, then the output projection's bias */
  tu_fill(&r, w.in_w, 3 * SF_E * SF_E, -0.3f, 0.3f);
  assert_ok(attn_mha_set_weight(ctx, m, ATTN_MHA_IN_PROJ_WEIGHT,
                                sf_tensor(ctx, w.in_w, ATTN_MHA_IN_PROJ_WEIGHT)));
  sf_expect_fresh(ctx, m, &w, x, "in_proj_weight set");
  sf_forward(ctx, m, x, x, x, y1);
  assert_true(memcmp(y0, y1, sizeof y0) != 0);
  tu_fill(&r, w.out_b, SF_E, -0.3f, 0.3f);
  assert_ok(attn_mha_set_weight(ctx, m, ATTN_MHA_O_BIAS, sf_tensor(ctx, w.out_b, ATTN_MHA_O_BIAS)));
  sf_expect_fresh(ctx, m, &w, x, "out_proj.bias set");
  /* wrapped, then changed in place between calls */
  assert_ok(attn_mha_wrap_weight(ctx, m, ATTN_MHA_IN_PROJ_BIAS,
                                 sf_tensor(ctx, w.in_b, ATTN_MHA_IN_PROJ_BIAS)));
  assert_ok(attn_mha_wrap_weight(ctx, m, ATTN_MHA_O_WEIGHT,
                                 sf_tensor(ctx, w.out_w, ATTN_MHA_O_WEIGHT)));
  sf_expect_fresh(ctx, m, &w, x, "wrapped");
  tu_fill(&r, w.in_b, 3 * SF_E, -0.3f, 0.3f);
  tu_fill(&r, w.out_w, SF_E * SF_E, -0.3f, 0.3f);
  sf_expect_fresh(ctx, m, &w, x, "wrapped memory changed");
  attn_ctx_destroy(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_golden_contiguous),
      cmocka_unit_test(test_golden_strided_threads),
      cmocka_unit_test(test_create_refusals),
      cmocka_unit_test(test_weight_names),
      cmocka_unit_test(test_forward_refusals),
      cmocka_unit_test(test_out_over_wrapped_weight),
      cmocka_unit_test(test_all_keys_masked),
      cmocka_unit_test(test_self_one_product_and_weight_changes),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
