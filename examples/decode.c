/* A decoder attention layer over a batch of prompts of different lengths
 * in a paged KV cache, then decoded step by step.
 *
 * Three sequences with prompts of 5, 12 and 1 tokens go through one
 * attn_mha_forward call (each sequence takes its own count of the padded
 * [B, L, E] input), then every sequence decodes 6 more tokens, one per
 * step, the new token's input being the previous output (a stand-in for
 * the rest of a model). Sequence 2 forks from sequence 0 after the prompt
 * (attn_kv_copy shares its blocks) and decodes its own continuation. The
 * program prints the cache lengths and free blocks as it goes, and checks
 * that the fork's first step equals what sequence 0 computes for the same
 * input. */
#include <attn.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { B = 3, E = 32, HQ = 4, HKV = 2, HD = 8, MAXL = 12, STEPS = 6 };

#define CHECK(call)                                                                      \
  do {                                                                                   \
    attn_status st_ = (call);                                                            \
    if (st_ != ATTN_OK) {                                                                \
      fprintf(stderr, "%s: %s\n", #call, attn_ctx_last_error(ctx));                      \
      return 1;                                                                          \
    }                                                                                    \
  } while (0)

static float frand(unsigned *s) {
  *s = *s * 1664525u + 1013904223u;
  return (float)((*s >> 8) & 0xffff) / 65536.0f - 0.5f;
}

static int show(attn_ctx *ctx, attn_kv_cache *kv, const char *when) {
  attn_kv_cache_info info = {.struct_size = sizeof info};
  int64_t lens[B];
  CHECK(attn_kv_cache_info_get(ctx, kv, &info, lens));
  printf("%-22s lengths %2lld %2lld %2lld, free blocks %lld of %lld\n", when,
         (long long)lens[0], (long long)lens[1], (long long)lens[2],
         (long long)info.free_blocks, (long long)info.num_blocks);
  return 0;
}

int main(void) {
  attn_ctx *ctx;
  if (attn_ctx_create(&ctx, NULL) != ATTN_OK)
    return 1;
  /* The layer: 4 query heads, 2 key/value heads of 8, RoPE, biases. */
  attn_rope_params rope;
  attn_rope_params_init(&rope);
  attn_mha_decoder_params lp;
  attn_mha_decoder_params_init(&lp);
  lp.embed_dim = E, lp.num_heads = HQ, lp.num_kv_heads = HKV, lp.qkv_bias = 1;
  lp.rope = &rope;
  attn_mha *layer;
  CHECK(attn_mha_create_decoder(ctx, &lp, &layer));
  static float w[4][HQ * HD * E];
  const int64_t dims[4][2] = {{HQ * HD, E}, {HKV * HD, E}, {HKV * HD, E}, {E, HQ * HD}};
  unsigned seed = 1;
  for (int32_t i = 0; i < 4; i++) {
    for (int64_t j = 0; j < dims[i][0] * dims[i][1]; j++)
      w[i][j] = frand(&seed) * 0.5f;
    attn_tensor *t;
    CHECK(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 2, dims[i], NULL, w[i], sizeof w[i], &t));
    CHECK(attn_mha_set_weight(ctx, layer, i, t)); /* copied: t may go */
    CHECK(attn_tensor_free(ctx, t));
  }
  /* A paged cache: blocks of 4 tokens from a pool of 16. */
  attn_kv_cache_params cp;
  attn_kv_cache_params_init(&cp);
  cp.layout = ATTN_KV_PAGED;
  cp.batch = B, cp.kv_heads = HKV, cp.head_dim = HD, cp.block_size = 4, cp.num_blocks = 16;
  attn_kv_cache *kv;
  CHECK(attn_kv_cache_create(ctx, &cp, &kv));

  static float x[B * MAXL * E], y[B * MAXL * E];
  for (size_t i = 0; i < sizeof x / sizeof *x; i++)
    x[i] = frand(&seed);
  int64_t xd[3] = {B, MAXL, E};
  attn_tensor *tx, *ty;
  CHECK(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 3, xd, NULL, x, sizeof x, &tx));
  CHECK(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 3, xd, NULL, y, sizeof y, &ty));
  int64_t prompt[B] = {5, MAXL, 1};
  CHECK(attn_mha_forward(ctx, layer, kv, tx, ty, prompt));
  if (show(ctx, kv, "after the prompts"))
    return 1;
  /* Sequence 2 becomes a fork of sequence 0: shared blocks, no copy. */
  CHECK(attn_kv_copy(ctx, kv, 2, 0));
  if (show(ctx, kv, "after forking 0 -> 2"))
    return 1;

  /* Decode: one token per sequence per step; the input of a step is the
   * last output of its sequence (sequence 2 starts from sequence 0's). */
  static float xs[B * E], ys[B * E];
  int64_t sd[3] = {B, 1, E};
  attn_tensor *txs, *tys;
  CHECK(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 3, sd, NULL, xs, sizeof xs, &txs));
  CHECK(attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 3, sd, NULL, ys, sizeof ys, &tys));
  int64_t last[B] = {prompt[0] - 1, prompt[1] - 1, prompt[0] - 1};
  for (int b = 0; b < B; b++)
    memcpy(xs + b * E, y + ((b == 2 ? 0 : b) * MAXL + last[b]) * E, E * sizeof(float));
  for (int step = 0; step < STEPS; step++) {
    CHECK(attn_mha_forward(ctx, layer, kv, txs, tys, NULL));
    if (step == 0 && fabsf(ys[0] - ys[2 * E]) > 1e-6f) {
      fprintf(stderr, "the fork's first step differs from its source's\n");
      return 1;
    }
    printf("step %d: y[0][0] = % .5f  y[1][0] = % .5f  y[2][0] = % .5f\n", step, ys[0],
           ys[E], ys[2 * E]);
    memcpy(xs, ys, sizeof xs);
    xs[2 * E] += 0.25f; /* the fork takes its own path from here */
  }
  if (show(ctx, kv, "after decoding"))
    return 1;
  attn_ctx_destroy(ctx); /* frees the layer, the cache and the tensors */
  return 0;
}
