/* Causal self-attention over 3 tokens with libattn.
 * Build: cc minimal.c $(pkg-config --cflags --libs attn) -o minimal */
#include <attn.h>
#include <stdio.h>

int main(void) {
  /* [batch 1, heads 1, tokens 3, head dim 2], row-major; Q = K = V here. */
  float x[3][2] = {{1, 0}, {0, 1}, {1, 1}}, out[3][2];
  int64_t dims[4] = {1, 1, 3, 2};
  attn_ctx *ctx = NULL;
  attn_tensor *tx, *tout;
  attn_status st = attn_ctx_create(&ctx, NULL); /* NULL: default options */
  if (st == ATTN_OK)
    st = attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, dims, NULL, x, sizeof x, &tx);
  if (st == ATTN_OK)
    st = attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, dims, NULL, out, sizeof out, &tout);
  attn_sdpa_params p;
  attn_sdpa_params_init(&p);
  p.causal = 1; /* token i attends to tokens 0..i */
  if (st == ATTN_OK)
    st = attn_sdpa(ctx, tx, tx, tx, tout, &p);
  if (st != ATTN_OK)
    fprintf(stderr, "%s: %s\n", attn_status_string(st), attn_ctx_last_error(ctx));
  for (int i = 0; st == ATTN_OK && i < 3; i++)
    printf("token %d: %.4f %.4f\n", i, out[i][0], out[i][1]);
  attn_ctx_destroy(ctx); /* frees the tensor handles too */
  return st == ATTN_OK ? 0 : 1;
}
