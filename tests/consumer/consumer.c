/* A program built against the installed libattn only (pkg-config or
 * find_package), to prove the installed package works, not the build tree. */
#include <attn.h>

#include <math.h>
#include <stdio.h>

int main(void) {
  if (attn_version() != ATTN_VERSION) {
    fprintf(stderr, "header %s but library %s\n", ATTN_VERSION_STRING, attn_version_string());
    return 1;
  }
  char blas[256];
  if (attn_blas_info(blas, sizeof blas) != ATTN_OK)
    return 1;

  /* A zero query gives equal weights, so the output is the mean of V's rows:
   * this reaches the BLAS and the thread pool, as a real user would. */
  float q[2] = {0, 0}, k[4] = {1, 2, 3, 4}, v[4] = {1, 2, 3, 4}, out[2] = {0, 0};
  int64_t qdims[4] = {1, 1, 1, 2}, kvdims[4] = {1, 1, 2, 2};
  attn_ctx *ctx = NULL;
  attn_tensor *tq, *tk, *tv, *to;
  attn_status st = attn_ctx_create(&ctx, NULL);
  if (st == ATTN_OK)
    st = attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, qdims, NULL, q, sizeof q, &tq);
  if (st == ATTN_OK)
    st = attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, kvdims, NULL, k, sizeof k, &tk);
  if (st == ATTN_OK)
    st = attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, kvdims, NULL, v, sizeof v, &tv);
  if (st == ATTN_OK)
    st = attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, qdims, NULL, out, sizeof out, &to);
  if (st == ATTN_OK)
    st = attn_sdpa(ctx, tq, tk, tv, to, NULL);
  if (st != ATTN_OK) {
    fprintf(stderr, "%s: %s\n", attn_status_string(st), attn_ctx_last_error(ctx));
    attn_ctx_destroy(ctx);
    return 1;
  }
  attn_ctx_destroy(ctx);
  if (fabsf(out[0] - 2.0f) > 1e-6f || fabsf(out[1] - 3.0f) > 1e-6f) {
    fprintf(stderr, "attn_sdpa gave %g %g, expected 2 3\n", out[0], out[1]);
    return 1;
  }
  printf("consumer ok: libattn %s; %s\n", attn_version_string(), blas);
  return 0;
}
