/* The layers' linear maps: C[m, n] = A[m, k] W[n, k]^T + bias, where W is
 * up to three weights stacked by rows (a decoder's q, k and v projections
 * in one product over the same input), on the context's threads.
 *
 * Large products are cache-blocked (gemm.c): W packed into column panels
 * (each weight's own, its last panel zero-padded), A copied block by block
 * per thread, the products by the kernel set's tile kernel
 * (simd/gemm_body.h). The panels are either packed per call into the
 * workspace, 1024 columns at a time, or packed once by the caller (a
 * layer's owned weights, written at attn__gemm_packed_at) and given with
 * each part:
 * the same values in the same layout, so the same bits. The sum of
 * every element is bias, then the products in k order, in slices of
 * ATTN_GEMM_KC added in k order: it depends on the shape alone, never on
 * the thread count. Without tile kernels (the sse2 set) the product goes to
 * cblas_sgemm (blas.c) and the bias is added after it. */
#ifndef ATTN_GEMM_H
#define ATTN_GEMM_H

#include "internal.h"

#define ATTN_GEMM_MAX_PARTS 3

/* One weight: rows [n, k], ldw apart; its bias [n] or NULL; packed: NULL,
 * or w and bias in the packed layout for this k (attn__gemm_packed_floats
 * floats, zero where attn__gemm_packed_at puts nothing). When every part
 * of a problem has one (possible only if attn__gemm_packs()), the product
 * reads the packed parts alone, at any row count: w and bias may then be
 * NULL. out: NULL, its columns go to C after those of the earlier parts
 * without one; else column j of row i goes to out + i * ldo +
 * (j / head) * head_stride + j % head (head >= 1): heads of `head` columns,
 * each in rows of its own, as a KV cache's [H, capacity, D] keeps them. */
typedef struct {
  const float *w;
  int64_t ldw, n;
  const float *bias;
  const float *packed;
  float *out;
  int64_t ldo, head, head_stride;
} attn_gemm_part;

typedef struct {
  /* caller */
  int64_t m, k;
  const float *a; /* [m, k], lda apart */
  int64_t lda;
  attn_gemm_part part[ATTN_GEMM_MAX_PARTS];
  int32_t n_parts;
  float *c; /* [m, the parts' n without out], ldc apart; overlaps no input, nor do the outs */
  int64_t ldc;
  /* attn__gemm_plan */
  int64_t n;       /* columns of all parts (C's and the outs') */
  int32_t path;    /* how the product runs (gemm.c) */
  int32_t threads;
  bool prepacked;  /* the blocked path reads the parts' packed panels */
  int64_t pan0[ATTN_GEMM_MAX_PARTS + 1]; /* first panel of each part; pan0[n_parts]: all */
  int64_t col0[ATTN_GEMM_MAX_PARTS];     /* first column in C of each part without out */
  size_t ws_bytes; /* workspace attn__gemm_run takes */
  /* attn__gemm_run: slices of the workspace, the panels being multiplied */
  float *bp, *ap, *bias;
  int64_t *a_row; /* per worker: the row block its ap holds whole (-1: none) */
  int64_t jp0, njp;
} attn_gemm_problem;

/* Fill the plan fields. m, n, k, the leading dimensions and m * ld fit in
 * the int that BLAS takes (checked by the caller). */
void attn__gemm_plan(const attn_ctx *ctx, attn_gemm_problem *p);
/* Run a planned problem: p->ws_bytes must be reserved (allocates nothing). */
void attn__gemm_run(attn_ctx *ctx, attn_gemm_problem *p);
/* Whether the products take packed parts: the kernel set has tile
 * kernels (without them products go to cblas_sgemm and read w). Fixed for
 * the process (the kernel set is chosen once). */
bool attn__gemm_packs(void);
/* Floats of the packed layout of a weight of n rows of k (SIZE_MAX if
 * that overflows size_t). */
size_t attn__gemm_packed_floats(int64_t n, int64_t k);
/* Where w[j, kk] of a weight of n rows of k is in its packed floats; kk = k:
 * where bias[j] is. (Padding columns are zeros.) */
size_t attn__gemm_packed_at(int64_t n, int64_t k, int64_t j, int64_t kk);

#endif
