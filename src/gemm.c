/* The layers' linear maps (gemm.h): a cache-blocked product over the tile
 * kernels of simd/gemm_body.h, on the context's threads.
 *
 * Blocking (GotoBLAS order): W^T is packed once per call, GEMM_NP columns
 * at a time, into panels of GEMM_NR columns, k-major (one panel row per k,
 * contiguous), so the tile kernel streams a KC x NR slice of it from L1;
 * each work item is
 * a block of GEMM_MC rows by GEMM_NC columns of C, kept in L2 while its
 * rows of A are copied GEMM_KC deep (a contiguous block in L2, instead of
 * rows a page apart that would share L1 sets) and multiplied into it slice
 * by slice. Items and slices come from the shape alone: the threads only
 * choose which items they take, so no sum depends on them. */
#include "gemm.h"
#include "simd/kernels.h"

#include <string.h>

#define GEMM_NR 32   /* panel width: a multiple of every set's micro-kernel width */
#define GEMM_KC 256  /* depth of one slice: NR x KC floats (32 KiB) stay in L1 */
#define GEMM_MC 192  /* rows per item: a multiple of every set's GEMM_MR (12, 6) */
#define GEMM_NC 256  /* columns per item */
#define GEMM_NP 1024 /* columns of W packed at a time: bounds the workspace */
#define GEMM_DOT_ROWS 8 /* up to this many rows: no packing (gemm_nt's dot products) */

enum { PATH_BLAS, PATH_COLS, PATH_PACKED };

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* The weight row of output column j, and its bias (0 without one). */
static const float *w_row(const attn_gemm_problem *p, int64_t j, float *bias) {
  for (int32_t i = 0;; i++) {
    const attn_gemm_part *pt = &p->part[i];
    if (j < pt->n || i == p->n_parts - 1) {
      *bias = pt->bias ? pt->bias[j] : 0.0f;
      return pt->w + j * pt->ldw;
    }
    j -= pt->n;
  }
}

static void layout(void *problem, attn_ws_layout *l) {
  attn_gemm_problem *p = problem;
  if (p->path != PATH_PACKED) {
    p->bp = p->ap = p->bias = NULL;
    return;
  }
  bool any_bias = false;
  for (int32_t i = 0; i < p->n_parts; i++)
    any_bias |= p->part[i].bias != NULL;
  size_t panels = (size_t)cdiv(min64(p->n, GEMM_NP), GEMM_NR);
  p->bp = attn__ws_take(l, panels * GEMM_NR * (size_t)p->k, sizeof(float));
  p->ap = attn__ws_take(l, (size_t)p->threads * GEMM_MC * GEMM_KC, sizeof(float));
  p->bias = attn__ws_take(l, any_bias ? panels * GEMM_NR : 0, sizeof(float));
  if (!any_bias)
    p->bias = NULL;
}

void attn__gemm_plan(const attn_ctx *ctx, attn_gemm_problem *p) {
  p->n = 0;
  for (int32_t i = 0; i < p->n_parts; i++)
    p->n += p->part[i].n;
  const attn_kernels *kern = attn__kernels();
  double work = (double)p->m * (double)p->n * (double)p->k;
  int64_t items;
  if (!kern->gemm_nn || !kern->gemm_nt) {
    p->path = PATH_BLAS;
    items = 1;
  } else if (p->m <= GEMM_DOT_ROWS) {
    p->path = PATH_COLS;
    items = cdiv(p->n, GEMM_NC);
  } else {
    p->path = PATH_PACKED;
    items = cdiv(p->m, GEMM_MC) * cdiv(min64(p->n, GEMM_NP), GEMM_NC);
  }
  /* 2^21 multiply-adds: some 50 us on one core, well above a job's start. */
  p->threads = attn__threads_plan(ctx, work, 2097152.0, items);
  p->ws_bytes = attn__ws_size(layout, p);
}

attn_gemm_problem attn__gemm_linear(const attn_ctx *ctx, int64_t m, int64_t n, int64_t k,
                                    const float *a, int64_t lda, const float *w, int64_t ldw,
                                    const float *bias, float *c, int64_t ldc) {
  attn_gemm_problem p;
  memset(&p, 0, sizeof p);
  p.m = m, p.k = k, p.a = a, p.lda = lda, p.c = c, p.ldc = ldc;
  p.part[0] = (attn_gemm_part){w, ldw, n, bias};
  p.n_parts = 1;
  attn__gemm_plan(ctx, &p);
  return p;
}

/* ---- PATH_PACKED ---- */

/* Panel jp of the columns being packed (from p->j0): W^T k-major, zero
 * past n; and their biases. */
static void pack_panel(void *arg, int64_t jp, int32_t worker) {
  (void)worker;
  const attn_gemm_problem *p = arg;
  float *dst = p->bp + jp * p->k * GEMM_NR;
  for (int64_t jj = 0; jj < GEMM_NR; jj++) {
    int64_t j = p->j0 + jp * GEMM_NR + jj;
    float b = 0.0f;
    if (j < p->n) {
      const float *row = w_row(p, j, &b);
      for (int64_t kk = 0; kk < p->k; kk++)
        dst[kk * GEMM_NR + jj] = row[kk];
    } else {
      for (int64_t kk = 0; kk < p->k; kk++)
        dst[kk * GEMM_NR + jj] = 0.0f;
    }
    if (p->bias)
      p->bias[jp * GEMM_NR + jj] = b;
  }
}

/* C block (ib, jb) of the packed columns = bias, then + A W^T slice by
 * slice. j0: the block's first column among the packed ones. */
static void block(void *arg, int64_t item, int32_t worker) {
  const attn_gemm_problem *p = arg;
  const attn_kernels *kern = attn__kernels();
  int64_t nb = cdiv(p->nj, GEMM_NC);
  int64_t i0 = item / nb * GEMM_MC, j0 = item % nb * GEMM_NC;
  int64_t mc = min64(GEMM_MC, p->m - i0), nc = min64(GEMM_NC, p->nj - j0);
  float *c = p->c + i0 * p->ldc + p->j0 + j0;
  for (int64_t i = 0; i < mc; i++) {
    if (p->bias)
      memcpy(c + i * p->ldc, p->bias + j0, (size_t)nc * sizeof(float));
    else
      memset(c + i * p->ldc, 0, (size_t)nc * sizeof(float));
  }
  float *ap = p->ap + (size_t)worker * GEMM_MC * GEMM_KC;
  for (int64_t k0 = 0; k0 < p->k; k0 += GEMM_KC) {
    int64_t kc = min64(GEMM_KC, p->k - k0);
    for (int64_t i = 0; i < mc; i++)
      memcpy(ap + i * kc, p->a + (i0 + i) * p->lda + k0, (size_t)kc * sizeof(float));
    for (int64_t j = 0; j < nc; j += GEMM_NR) {
      const float *bp = p->bp + (j0 + j) / GEMM_NR * p->k * GEMM_NR + k0 * GEMM_NR;
      kern->gemm_nn(mc, min64(GEMM_NR, nc - j), kc, ap, kc, bp, GEMM_NR, c + j, p->ldc);
    }
  }
}

/* ---- PATH_COLS: a few rows, columns split over the threads ---- */

static void cols(void *arg, int64_t item, int32_t worker) {
  (void)worker;
  const attn_gemm_problem *p = arg;
  const attn_kernels *kern = attn__kernels();
  int64_t j = item * GEMM_NC, end = min64(j + GEMM_NC, p->n);
  while (j < end) {
    /* The run of columns from one weight. */
    int64_t first = 0;
    int32_t i = 0;
    while (j >= first + p->part[i].n)
      first += p->part[i++].n;
    const attn_gemm_part *pt = &p->part[i];
    int64_t n = min64(end, first + pt->n) - j;
    float *c = p->c + j;
    kern->gemm_nt(p->m, n, p->k, 1.0f, p->a, p->lda, pt->w + (j - first) * pt->ldw, pt->ldw, c,
                  p->ldc);
    if (pt->bias)
      for (int64_t r = 0; r < p->m; r++)
        for (int64_t jj = 0; jj < n; jj++)
          c[r * p->ldc + jj] += pt->bias[j - first + jj];
    j += n;
  }
}

void attn__gemm_run(attn_ctx *ctx, attn_gemm_problem *p) {
  if (p->m == 0 || p->n == 0)
    return;
  if (p->path == PATH_BLAS) {
    float *c = p->c;
    for (int32_t i = 0; i < p->n_parts; i++) {
      const attn_gemm_part *pt = &p->part[i];
      attn__sgemm_nt((int)p->m, (int)pt->n, (int)p->k, 1.0f, p->a, (int)p->lda, pt->w,
                     (int)pt->ldw, c, (int)p->ldc);
      if (pt->bias)
        for (int64_t r = 0; r < p->m; r++)
          for (int64_t j = 0; j < pt->n; j++)
            c[r * p->ldc + j] += pt->bias[j];
      c += pt->n;
    }
    return;
  }
  if (p->path == PATH_COLS) {
    attn__parallel_for(ctx, p->threads, cdiv(p->n, GEMM_NC), cols, p);
    return;
  }
  size_t mark = attn__ws_carve(ctx, layout, p, p->ws_bytes);
  for (p->j0 = 0; p->j0 < p->n; p->j0 += GEMM_NP) {
    p->nj = min64(GEMM_NP, p->n - p->j0);
    attn__parallel_for(ctx, p->threads, cdiv(p->nj, GEMM_NR), pack_panel, p);
    attn__parallel_for(ctx, p->threads, cdiv(p->m, GEMM_MC) * cdiv(p->nj, GEMM_NC), block, p);
  }
  attn__ws_release(ctx, mark);
}
