/* The attention layer's internal interface, shared by mha.c (handles and
 * weights), mha_decoder.c (the decoder form) and mha_torch.c (the PyTorch
 * form). */
#ifndef ATTN_MHA_H
#define ATTN_MHA_H

#include "gemm.h"
#include "internal.h"
#include "rope.h"

/* attn_mha_weight values: the decoder's eight, then the PyTorch form's
 * stacked in_proj weight and bias. */
#define ATTN__MHA_N_WEIGHTS 10

/* The projections: q, k, v, out. A layer's owned weights are stored once:
 * when the products take packed weights (attn__gemm_packs), inside the
 * packed projections they feed (pack[s], attn__gemm_packed_at's layout: weight
 * panels then biases) as long as every weight of that projection's group
 * (q/k/v, or out) is owned; else row-major (owned[]). Wrapping a weight
 * moves the other owned weights of its group to row-major; owning the
 * last wrapped one moves them back into the packs (mha.c). */
#define ATTN__MHA_N_PACKS 4

struct attn_mha {
  attn_ctx *ctx;
  attn_mha *prev, *next;
  int64_t E, Hq, Hkv, D;
  bool qkv_bias, out_bias, has_rope;
  attn_rope_problem rope; /* half, interleaved, theta; freqs and amplitude if scaled */
  double *freqs;          /* owned: a scaling's frequencies (rope.freqs), or NULL */
  attn_sdpa_params sp; /* the attention's options: causal, scale, softcap, window */
  /* Row-major values (owned[] or caller memory), ld apart; NULL for a
   * weight stored in pack[] (or absent). */
  float *w[ATTN__MHA_N_WEIGHTS];
  void *owned[ATTN__MHA_N_WEIGHTS];
  int64_t ld[ATTN__MHA_N_WEIGHTS];
  float *pack[ATTN__MHA_N_PACKS]; /* NULL: that projection's weights are row-major */
  char *buf;             /* grows to the largest call */
  size_t buf_bytes;
  /* The PyTorch form (mha_torch.c): Hq = Hkv = H, D = E / H. */
  bool torch, batch_first;
  bool in_proj; /* one in_proj_weight [3E, E] (kdim = vdim = E), not three weights */
  int64_t kdim, vdim;
};

/* Free every layer of a dying context. */
void attn__mha_destroy_all(attn_ctx *ctx);
/* layer is a live layer of ctx (ATTN_ERR_NULL_ARG / BAD_HANDLE otherwise). */
attn_status attn__mha_check_layer(attn_ctx *ctx, const attn_mha *m);
/* Allocate m's present weights zero-filled and link m into ctx's list; on
 * failure m is freed and the status set. m's sizes and form are set. */
attn_status attn__mha_add(attn_ctx *ctx, attn_mha *m);
/* rows[(i0 * A1 + i1) * F + f] = t[i0, i1, f] for a 3-D float tensor t of
 * dims [A0, A1, F] (F32, F16 or BF16: widened exactly), or with scatter
 * the reverse (each element rounded once to t's type). */
void attn__mha_copy_rows(const attn_tensor *t, float *rows, bool scatter);
/* Projection s of m (0 q, 1 k, 2 v, 3 out) as a product's part: its
 * packed form, or its row-major weight and bias. */
attn_gemm_part attn__mha_part(const attn_mha *m, int s);
/* The name of a weight of m used in place (attn_mha_wrap_weight) whose
 * memory t's bytes intersect, or NULL: an output there would change the
 * weight while the call reads it. */
const char *attn__mha_wrapped_overlap(const attn_mha *m, const attn_tensor *t);
/* The same for the bytes p .. p + bytes - 1. */
const char *attn__mha_wrapped_overlap_bytes(const attn_mha *m, const void *p, size_t bytes);
/* Whether weight `which` belongs to PyTorch-form layer m, and its rows and
 * columns (either pointer may be NULL). */
bool attn__mha_torch_shape(const attn_mha *m, int32_t which, int64_t *rows, int64_t *cols);

#endif
