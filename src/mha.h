/* The attention layer's internal interface, shared by mha.c (the decoder
 * form, weights, lifecycle) and mha_torch.c (the PyTorch form). */
#ifndef ATTN_MHA_H
#define ATTN_MHA_H

#include "gemm.h"
#include "internal.h"
#include "rope.h"

/* attn_mha_weight values: the decoder's eight, then the PyTorch form's
 * packed in_proj weight and bias. */
#define ATTN__MHA_N_WEIGHTS 10

/* The projections whose weights a layer keeps packed: q, k, v, out. */
#define ATTN__MHA_N_PACKS 4

/* A projection's weight and bias packed for gemm.h's blocked path
 * (attn__gemm_pack), made at the first forward that takes that path and
 * kept while the weights are the layer's own: set_weight marks it stale
 * (repacked at the next forward), wrap_weight frees it (wrapped memory is
 * read on every call). */
typedef struct {
  float *mem; /* NULL until first needed */
  bool valid; /* mem holds the current weights */
} attn_mha_pack;

struct attn_mha {
  attn_ctx *ctx;
  attn_mha *prev, *next;
  int64_t E, Hq, Hkv, D;
  bool qkv_bias, out_bias, has_rope;
  attn_rope_problem rope; /* half, interleaved, theta; freqs and amplitude if scaled */
  double *freqs;          /* owned: a scaling's frequencies (rope.freqs), or NULL */
  attn_sdpa_params sp; /* the attention's options: causal, scale, softcap, window */
  float *w[ATTN__MHA_N_WEIGHTS];  /* current values: owned[] or caller memory */
  void *owned[ATTN__MHA_N_WEIGHTS];
  int64_t ld[ATTN__MHA_N_WEIGHTS]; /* row stride of each weight */
  attn_mha_pack pack[ATTN__MHA_N_PACKS];
  char *buf;             /* grows to the largest call */
  size_t buf_bytes;
  /* The PyTorch form (mha_torch.c): Hq = Hkv = H, D = E / H. */
  bool torch, batch_first, packed;
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
/* Plan product p, whose part i is projection slots[i] of m (0 q, 1 k,
 * 2 v, 3 out). When it takes the blocked path and every part's weights are
 * owned, its parts read the layer's packed copies, allocated and packed
 * here when missing or stale; otherwise the product packs per call. Fails
 * only with ATTN_ERR_NO_MEMORY / OVERFLOW (the status set), before any
 * output changed. */
attn_status attn__mha_plan_projection(attn_ctx *ctx, attn_mha *m, attn_gemm_problem *p,
                                      const int *slots);
/* Whether weight `which` belongs to PyTorch-form layer m, and its rows and
 * columns (either pointer may be NULL). */
bool attn__mha_torch_shape(const attn_mha *m, int32_t which, int64_t *rows, int64_t *cols);

#endif
