/* A transformer attention block with rotary embeddings and a KV cache.
 *
 * The block projects its input to queries, keys and values (grouped-query:
 * 4 query heads share 2 kv heads), rotates queries and keys with RoPE at
 * their absolute positions, keeps keys and values in a cache, and attends
 * with bottom-right causal attention, so new tokens see every cached token
 * and each other causally. A prompt is processed in one call (prefill),
 * then tokens one at a time (decoding); the program checks that decoding
 * gives what processing the whole sequence at once gives.
 *
 * Nothing is copied into libattn's layout: the projections are written as
 * [L, H, D] rows and the cache as [Hkv, max_len, D], and each is handed to
 * libattn as a strided [B, H, L, D] view. */
#include <attn.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { D_MODEL = 64, HQ = 4, HKV = 2, HD = 16, MAX_LEN = 32, PROMPT = 6, DECODE = 4 };

typedef struct {
  float wq[D_MODEL][HQ * HD], wk[D_MODEL][HKV * HD], wv[D_MODEL][HKV * HD];
  float wo[HQ * HD][D_MODEL];
  float k_cache[HKV][MAX_LEN][HD], v_cache[HKV][MAX_LEN][HD];
  int64_t len; /* tokens in the cache */
} block;

static float frand(unsigned *s) {
  *s = *s * 1664525u + 1013904223u;
  return (float)(*s >> 8) / 16777216.0f - 0.5f;
}

static void init(block *b, unsigned seed) {
  memset(b, 0, sizeof *b);
  for (int i = 0; i < D_MODEL; i++) {
    for (int j = 0; j < HQ * HD; j++)
      b->wq[i][j] = frand(&seed) * 0.3f;
    for (int j = 0; j < HKV * HD; j++) {
      b->wk[i][j] = frand(&seed) * 0.3f;
      b->wv[i][j] = frand(&seed) * 0.3f;
    }
  }
  for (int i = 0; i < HQ * HD; i++)
    for (int j = 0; j < D_MODEL; j++)
      b->wo[i][j] = frand(&seed) * 0.3f;
}

/* y[n][cols] = x[n][D_MODEL] * w[D_MODEL][cols], each y row written at stride ys. */
static void project(const float *x, int n, const float *w, int cols, float *y, int64_t ys) {
  for (int t = 0; t < n; t++)
    for (int c = 0; c < cols; c++) {
      float acc = 0;
      for (int i = 0; i < D_MODEL; i++)
        acc += x[t * D_MODEL + i] * w[i * cols + c];
      y[t * ys + c] = acc;
    }
}

#define CHECK(call)                                                                   \
  do {                                                                                \
    attn_status st_ = (call);                                                         \
    if (st_ != ATTN_OK) {                                                             \
      fprintf(stderr, "%s: %s\n", attn_status_string(st_), attn_ctx_last_error(ctx)); \
      exit(1);                                                                        \
    }                                                                                 \
  } while (0)

/* Run n new tokens x [n, D_MODEL] through the block; y [n, D_MODEL]. */
static void step(attn_ctx *ctx, block *b, const float *x, int n, float *y) {
  static float q[MAX_LEN][HQ][HD], o[MAX_LEN][HQ][HD];
  const int64_t pos = b->len, total = b->len + n;
  /* Projections: q as [n, HQ, HD] rows; k and v straight into the cache. */
  project(x, n, &b->wq[0][0], HQ * HD, &q[0][0][0], HQ * HD);
  for (int h = 0; h < HKV; h++) {
    float wk[D_MODEL][HD], wv[D_MODEL][HD];
    for (int i = 0; i < D_MODEL; i++)
      for (int d = 0; d < HD; d++) {
        wk[i][d] = b->wk[i][h * HD + d];
        wv[i][d] = b->wv[i][h * HD + d];
      }
    project(x, n, &wk[0][0], HD, &b->k_cache[h][pos][0], HD);
    project(x, n, &wv[0][0], HD, &b->v_cache[h][pos][0], HD);
  }
  /* [B, H, L, D] views: q rows are [L, H, D]; the cache is [H, MAX_LEN, D]. */
  const int64_t q_dims[4] = {1, HQ, n, HD}, q_str[4] = {0, HD, HQ * HD, 1};
  const int64_t new_dims[4] = {1, HKV, n, HD}, c_str[4] = {0, MAX_LEN * HD, HD, 1};
  const int64_t kv_dims[4] = {1, HKV, total, HD};
  attn_tensor *tq, *tk_new, *tk, *tv, *to;
  CHECK(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, q_dims, q_str, q, sizeof q, &tq));
  CHECK(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, new_dims, c_str, &b->k_cache[0][pos][0],
                         sizeof b->k_cache - (size_t)pos * HD * sizeof(float), &tk_new));
  CHECK(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, kv_dims, c_str, b->k_cache,
                         sizeof b->k_cache, &tk));
  CHECK(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, kv_dims, c_str, b->v_cache,
                         sizeof b->v_cache, &tv));
  CHECK(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, q_dims, q_str, o, sizeof o, &to));

  /* Rotary at absolute positions pos .. pos+n-1, for q and the new keys. */
  attn_rope_params rp;
  attn_rope_params_init(&rp);
  rp.offset = pos;
  CHECK(attn_rope(ctx, tq, &rp));
  CHECK(attn_rope(ctx, tk_new, &rp));

  /* Bottom-right causal: new token i sees cached keys and new keys <= i. */
  attn_sdpa_params sp;
  attn_sdpa_params_init(&sp);
  sp.causal = 1;
  sp.align = ATTN_ALIGN_BOTTOM_RIGHT;
  CHECK(attn_sdpa(ctx, tq, tk, tv, to, &sp));

  /* The heads of o are already concatenated: o is [n, HQ * HD]. */
  for (int t = 0; t < n; t++)
    for (int c = 0; c < D_MODEL; c++) {
      float acc = 0;
      for (int i = 0; i < HQ * HD; i++)
        acc += (&o[t][0][0])[i] * b->wo[i][c];
      y[t * D_MODEL + c] = acc;
    }
  attn_tensor *all[5] = {tq, tk_new, tk, tv, to};
  for (int i = 0; i < 5; i++)
    CHECK(attn_tensor_free(ctx, all[i]));
  b->len = total;
}

int main(void) {
  enum { N = PROMPT + DECODE };
  static float x[N][D_MODEL], y_dec[N][D_MODEL], y_all[N][D_MODEL];
  static block cached, whole;
  unsigned seed = 42;
  for (int t = 0; t < N; t++)
    for (int i = 0; i < D_MODEL; i++)
      x[t][i] = frand(&seed);
  init(&cached, 7);
  init(&whole, 7);

  attn_ctx *ctx;
  if (attn_ctx_create(&ctx, NULL) != ATTN_OK)
    return 1;
  /* Prefill the prompt, then decode one token at a time. */
  step(ctx, &cached, &x[0][0], PROMPT, &y_dec[0][0]);
  for (int t = PROMPT; t < N; t++)
    step(ctx, &cached, &x[t][0], 1, &y_dec[t][0]);
  /* The same sequence in one call. */
  step(ctx, &whole, &x[0][0], N, &y_all[0][0]);
  attn_ctx_destroy(ctx);

  double worst = 0;
  for (int t = 0; t < N; t++)
    for (int i = 0; i < D_MODEL; i++)
      worst = fmax(worst, fabs((double)y_dec[t][i] - y_all[t][i]));
  printf("libattn %s: prefill %d tokens, decode %d; token %d output[0..3] = %.5f %.5f %.5f "
         "%.5f\n",
         attn_version_string(), PROMPT, DECODE, N - 1, y_dec[N - 1][0], y_dec[N - 1][1],
         y_dec[N - 1][2], y_dec[N - 1][3]);
  printf("largest difference between decoding and the whole sequence: %.3g\n", worst);
  return worst < 1e-4 ? 0 : 1;
}
