/* A program built out of tree against an installed libattn, with the flags
 * pkg-config gives (see the Makefile next to it). */
#include <attn.h>

#include <stdio.h>

int main(void) {
  if (attn_version() / 10000 != ATTN_VERSION_MAJOR) {
    fprintf(stderr, "header %s but library %s\n", ATTN_VERSION_STRING, attn_version_string());
    return 1;
  }
  attn_ctx *ctx;
  if (attn_ctx_create(&ctx, NULL) != ATTN_OK)
    return 1;
  int64_t dims[2] = {1, 4};
  float x[4] = {1, 2, 3, 4};
  attn_tensor *t;
  attn_status st = attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 2, dims, NULL, x, sizeof x, &t);
  if (st == ATTN_OK)
    st = attn_softmax(ctx, t, t, NULL);
  if (st != ATTN_OK) {
    fprintf(stderr, "%s: %s\n", attn_status_string(st), attn_ctx_last_error(ctx));
    attn_ctx_destroy(ctx);
    return 1;
  }
  printf("libattn %s: softmax(1, 2, 3, 4) = %.4f %.4f %.4f %.4f\n", attn_version_string(),
         x[0], x[1], x[2], x[3]);
  attn_ctx_destroy(ctx);
  return 0;
}
