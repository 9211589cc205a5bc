/* The layers' linear maps (gemm.h): a cache-blocked product over the tile
 * kernels of simd/gemm_body.h, on the context's threads.
 *
 * Blocking (GotoBLAS order): W^T is packed into panels of GEMM_NR columns,
 * k-major (one panel row per k, contiguous), so the tile kernel streams a
 * KC x NR slice of it from L1; each weight (part) has its own panels, the
 * last one zero-padded. The panels are packed per call, GEMM_NPP at a
 * time, into the workspace, or were packed once by the caller (a layer's
 * owned weights, each element written at attn__gemm_packed_at: the same
 * layout; then at any row count). Each work item is
 * a block of GEMM_MC rows by GEMM_NCP panels of C, kept in L2 while its
 * rows of A, copied into a contiguous block (instead of rows a page apart
 * that would share L1 sets), are multiplied into it GEMM_KC deep slice by
 * slice. The panels come from memory (a layer's weights are read once per
 * row block): each panel's product is done GEMM_PF_ROWS rows per kernel
 * call, and between calls a share of the next panel's slice is prefetched
 * into L2, so the next panel's first rows do not wait for memory (the
 * decoder layer's forward 6-8 % faster); the rows per call change no sum.
 * Items and slices come from the shape alone: the threads only choose
 * which items they take, so no sum depends on them. A part may place its
 * columns in heads of rows of their own (a KV cache's layout): the
 * kernels then store each panel's columns a head at a time, the same sums
 * (cblas_sgemm: a call per head). */
#include "gemm.h"
#include "simd/kernels.h"

#include <string.h>

#define GEMM_NR 32   /* panel width: a multiple of every set's micro-kernel width */
#define GEMM_KC 256  /* depth of one slice: NR x KC floats (32 KiB) stay in L1 */
#define GEMM_MC 192  /* rows per item: a multiple of every set's GEMM_MR (12, 6) */
#define GEMM_NCP 8   /* panels per item (256 columns) */
#define GEMM_NPP 32  /* panels packed at a time per call (1024 columns): bounds the workspace */
#define GEMM_PF_ROWS 12 /* rows per kernel call (a multiple of every GEMM_MR) */
/* Fewer rows prefetch nothing: their product is too short to hide the
 * prefetches (a decode step's 1 to 8 tokens: 15 % slower with them). */
#define GEMM_PF_MIN_ROWS 96
/* Up to this many rows: no packing (gemm_nt's dot products), unless the
 * parts come packed (their row-major form may not exist). */
#define GEMM_DOT_ROWS 8
/* Up to this depth a worker copies its block of A whole (MC x k, 3 MiB at
 * most) and keeps it for its next items of the same rows: the items of a
 * row block then copy A once per worker instead of once per item. */
#define GEMM_A_WHOLE 4096

enum { PATH_BLAS, PATH_COLS, PATH_PACKED };

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* A part's packed panels: each GEMM_NR of its rows, W^T k-major (one panel
 * row of NR floats per k), the last one zero past n; then their biases,
 * NR per panel (zeros without a bias). */
size_t attn__gemm_packed_floats(int64_t n, int64_t k) {
  size_t cols = (size_t)cdiv(n, GEMM_NR) * GEMM_NR, floats;
  if (__builtin_mul_overflow(cols, (size_t)k + 1, &floats))
    return SIZE_MAX;
  return floats;
}

size_t attn__gemm_packed_at(int64_t n, int64_t k, int64_t j, int64_t kk) {
  if (kk == k) /* the biases, after every panel */
    return (size_t)(cdiv(n, GEMM_NR) * k * GEMM_NR + j);
  return (size_t)((j / GEMM_NR * k + kk) * GEMM_NR + j % GEMM_NR);
}

bool attn__gemm_packs(void) {
  const attn_kernels *kern = attn__kernels();
  return kern->gemm_nn && kern->gemm_nt;
}

/* Panel lp of part pt into dst (k * NR floats) and its biases into bias. */
static void pack_one(const attn_gemm_part *pt, int64_t k, int64_t lp, float *dst, float *bias) {
  for (int64_t jj = 0; jj < GEMM_NR; jj++) {
    int64_t j = lp * GEMM_NR + jj;
    if (j < pt->n) {
      const float *row = pt->w + j * pt->ldw;
      for (int64_t kk = 0; kk < k; kk++)
        dst[kk * GEMM_NR + jj] = row[kk];
    } else {
      for (int64_t kk = 0; kk < k; kk++)
        dst[kk * GEMM_NR + jj] = 0.0f;
    }
    bias[jj] = j < pt->n && pt->bias ? pt->bias[j] : 0.0f;
  }
}

/* Panel jp of the whole product: its part, and its index there. */
static int32_t panel_part(const attn_gemm_problem *p, int64_t jp, int64_t *lp) {
  int32_t i = 0;
  while (jp >= p->pan0[i + 1])
    i++;
  *lp = jp - p->pan0[i];
  return i;
}

/* Where column j of part i goes (its row 0), the row stride there, and
 * how many columns from j on are stored side by side (to the end of j's
 * head, or of the part). */
static float *out_col(const attn_gemm_problem *p, int32_t i, int64_t j, int64_t *ld,
                      int64_t *run) {
  const attn_gemm_part *pt = &p->part[i];
  if (!pt->out) {
    *ld = p->ldc;
    *run = pt->n - j;
    return p->c + p->col0[i] + j;
  }
  *ld = pt->ldo;
  *run = min64(pt->head - j % pt->head, pt->n - j);
  return pt->out + j / pt->head * pt->head_stride + j % pt->head;
}

/* Floats of a worker's copy of A: a block of rows (fewer for a short A),
 * whole or one slice deep. */
static size_t a_floats(const attn_gemm_problem *p) {
  return (size_t)min64(p->m, GEMM_MC) * (size_t)(p->k <= GEMM_A_WHOLE ? p->k : GEMM_KC);
}

static void layout(void *problem, attn_ws_layout *l) {
  attn_gemm_problem *p = problem;
  if (p->path != PATH_PACKED) {
    p->bp = p->ap = p->bias = NULL;
    p->a_row = NULL;
    return;
  }
  size_t panels = p->prepacked ? 0 : (size_t)min64(p->pan0[p->n_parts], GEMM_NPP);
  p->bp = attn__ws_take(l, panels * GEMM_NR * (size_t)p->k, sizeof(float));
  p->ap = attn__ws_take(l, (size_t)p->threads * a_floats(p), sizeof(float));
  p->bias = attn__ws_take(l, panels * GEMM_NR, sizeof(float));
  p->a_row = attn__ws_take(l, (size_t)p->threads, sizeof(int64_t));
}

void attn__gemm_plan(const attn_ctx *ctx, attn_gemm_problem *p) {
  p->n = 0;
  int64_t panels = 0;
  p->prepacked = true;
  int64_t cols = 0; /* of C */
  for (int32_t i = 0; i < p->n_parts; i++) {
    p->col0[i] = cols;
    cols += p->part[i].out ? 0 : p->part[i].n;
    p->pan0[i] = panels;
    p->n += p->part[i].n;
    panels += cdiv(p->part[i].n, GEMM_NR);
    p->prepacked &= p->part[i].packed != NULL;
  }
  p->pan0[p->n_parts] = panels;
  double work = (double)p->m * (double)p->n * (double)p->k;
  int64_t items;
  if (!attn__gemm_packs()) {
    p->path = PATH_BLAS;
    items = 1;
  } else if (p->m <= GEMM_DOT_ROWS && !p->prepacked) {
    p->path = PATH_COLS;
    items = cdiv(p->n, GEMM_NR * GEMM_NCP);
  } else {
    p->path = PATH_PACKED;
    items = cdiv(p->m, GEMM_MC) * cdiv(p->prepacked ? panels : min64(panels, GEMM_NPP), GEMM_NCP);
  }
  p->prepacked &= p->path == PATH_PACKED;
  /* 2^21 multiply-adds: some 50 us on one core, well above a job's start. */
  p->threads = attn__threads_plan(ctx, work, 2097152.0, items);
  p->ws_bytes = attn__ws_size(layout, p);
}

/* ---- PATH_PACKED ---- */

/* Panel jp (of the whole product; jp0 <= jp < jp0 + njp): its packed
 * values and biases, its columns nr (the first is column *j of part *i). */
static const float *panel(const attn_gemm_problem *p, int64_t jp, const float **bias,
                          int32_t *i_out, int64_t *j, int64_t *nr) {
  int64_t lp;
  int32_t i = panel_part(p, jp, &lp);
  const attn_gemm_part *pt = &p->part[i];
  *nr = min64(GEMM_NR, pt->n - lp * GEMM_NR);
  *i_out = i;
  *j = lp * GEMM_NR;
  if (p->prepacked) {
    int64_t np = p->pan0[i + 1] - p->pan0[i];
    *bias = pt->packed + (np * p->k + lp) * GEMM_NR;
    return pt->packed + lp * p->k * GEMM_NR;
  }
  *bias = p->bias + (jp - p->jp0) * GEMM_NR;
  return p->bp + (jp - p->jp0) * p->k * GEMM_NR;
}

/* Panel jp0 + jp packed into the workspace. */
static void pack_panel(void *arg, int64_t jp, int32_t worker) {
  (void)worker;
  const attn_gemm_problem *p = arg;
  int64_t lp;
  int32_t i = panel_part(p, p->jp0 + jp, &lp);
  pack_one(&p->part[i], p->k, lp, p->bp + jp * p->k * GEMM_NR, p->bias + jp * GEMM_NR);
}

/* A panel's columns as runs stored side by side (one, unless a head ends
 * inside it): run r is columns js[r] .. js[r] + w[r] of the panel, at
 * c[r] (row 0), rows ld[r] apart. */
typedef struct {
  int32_t n;
  int64_t js[GEMM_NR], w[GEMM_NR], ld[GEMM_NR];
  float *c[GEMM_NR];
} panel_runs;

static void runs_of(const attn_gemm_problem *p, int32_t i, int64_t j, int64_t nr, panel_runs *r) {
  r->n = 0;
  for (int64_t js = 0, w; js < nr; js += w, r->n++) {
    r->c[r->n] = out_col(p, i, j + js, &r->ld[r->n], &w);
    w = min64(w, nr - js);
    r->js[r->n] = js;
    r->w[r->n] = w;
  }
}

/* Item: GEMM_MC rows of C by GEMM_NCP panels = bias, then + A W^T slice by
 * slice. */
static void block(void *arg, int64_t item, int32_t worker) {
  const attn_gemm_problem *p = arg;
  const attn_kernels *kern = attn__kernels();
  int64_t nb = cdiv(p->njp, GEMM_NCP);
  int64_t i0 = item / nb * GEMM_MC, mc = min64(GEMM_MC, p->m - i0);
  int64_t jp0 = p->jp0 + item % nb * GEMM_NCP, jp1 = min64(jp0 + GEMM_NCP, p->jp0 + p->njp);
  const float *bias;
  int32_t pi;
  int64_t pj, nr;
  panel_runs runs;
  for (int64_t jp = jp0; jp < jp1; jp++) {
    panel(p, jp, &bias, &pi, &pj, &nr);
    runs_of(p, pi, pj, nr, &runs);
    for (int32_t r = 0; r < runs.n; r++)
      for (int64_t i = 0; i < mc; i++)
        memcpy(runs.c[r] + (i0 + i) * runs.ld[r], bias + runs.js[r],
               (size_t)runs.w[r] * sizeof(float));
  }
  /* A whole: slice k0 at ap + k0 * min(m, MC), copied unless the worker's last
   * item had the same rows; else one slice at a time at ap. */
  bool whole = p->k <= GEMM_A_WHOLE, have = whole && p->a_row[worker] == i0;
  float *ap = p->ap + (size_t)worker * a_floats(p);
  p->a_row[worker] = whole ? i0 : -1;
  for (int64_t k0 = 0; k0 < p->k; k0 += GEMM_KC) {
    int64_t kc = min64(GEMM_KC, p->k - k0);
    float *as = whole ? ap + k0 * min64(p->m, GEMM_MC) : ap;
    for (int64_t i = 0; i < mc && !have; i++)
      memcpy(as + i * kc, p->a + (i0 + i) * p->lda + k0, (size_t)kc * sizeof(float));
    for (int64_t jp = jp0; jp < jp1; jp++) {
      /* The slice multiplied next (this slice's next panel, else the next
       * slice's first), prefetched a share per call, into L2. */
      int64_t kn = jp + 1 < jp1 ? k0 : k0 + GEMM_KC, lines = 0, nr_next, j_next;
      int32_t i_next;
      const char *next = NULL;
      if (kn < p->k && mc >= GEMM_PF_MIN_ROWS) {
        const float *np = panel(p, jp + 1 < jp1 ? jp + 1 : jp0, &bias, &i_next, &j_next, &nr_next);
        next = (const char *)(np + kn * GEMM_NR);
        lines = min64(GEMM_KC, p->k - kn) * GEMM_NR * (int64_t)sizeof(float) / 64;
      }
      const float *bp = panel(p, jp, &bias, &pi, &pj, &nr) + k0 * GEMM_NR;
      runs_of(p, pi, pj, nr, &runs);
      int64_t calls = cdiv(mc, GEMM_PF_ROWS);
      for (int64_t ci = 0; ci < calls; ci++) {
        for (int64_t l = ci * lines / calls; l < (ci + 1) * lines / calls; l++)
          __builtin_prefetch(next + l * 64, 0, 2);
        int64_t i = ci * GEMM_PF_ROWS, rows = min64(GEMM_PF_ROWS, mc - i);
        for (int32_t r = 0; r < runs.n; r++)
          kern->gemm_nn(rows, runs.w[r], kc, as + i * kc, kc, bp + runs.js[r], GEMM_NR,
                        runs.c[r] + (i0 + i) * runs.ld[r], runs.ld[r]);
      }
    }
  }
}

/* ---- PATH_COLS: a few rows, columns split over the threads ---- */

static void cols(void *arg, int64_t item, int32_t worker) {
  (void)worker;
  const attn_gemm_problem *p = arg;
  const attn_kernels *kern = attn__kernels();
  int64_t j = item * GEMM_NR * GEMM_NCP, end = min64(j + GEMM_NR * GEMM_NCP, p->n);
  while (j < end) {
    /* The run of columns from one weight. */
    int64_t first = 0;
    int32_t i = 0;
    while (j >= first + p->part[i].n)
      first += p->part[i++].n;
    const attn_gemm_part *pt = &p->part[i];
    int64_t jl = j - first, ld, n; /* columns of part i, stored side by side */
    float *c = out_col(p, i, jl, &ld, &n);
    n = min64(n, end - j);
    kern->gemm_nt(p->m, n, p->k, 1.0f, p->a, p->lda, pt->w + jl * pt->ldw, pt->ldw, c, ld);
    if (pt->bias)
      for (int64_t r = 0; r < p->m; r++)
        for (int64_t jj = 0; jj < n; jj++)
          c[r * ld + jj] += pt->bias[jl + jj];
    j += n;
  }
}

void attn__gemm_run(attn_ctx *ctx, attn_gemm_problem *p) {
  if (p->m == 0 || p->n == 0)
    return;
  if (p->path == PATH_BLAS) {
    for (int32_t i = 0; i < p->n_parts; i++) {
      const attn_gemm_part *pt = &p->part[i];
      for (int64_t j = 0, n, ld; j < pt->n; j += n) { /* columns stored side by side */
        float *c = out_col(p, i, j, &ld, &n);
        attn__sgemm_nt((int)p->m, (int)n, (int)p->k, 1.0f, p->a, (int)p->lda, pt->w + j * pt->ldw,
                       (int)pt->ldw, c, (int)ld);
        if (pt->bias)
          for (int64_t r = 0; r < p->m; r++)
            for (int64_t jj = 0; jj < n; jj++)
              c[r * ld + jj] += pt->bias[j + jj];
      }
    }
    return;
  }
  if (p->path == PATH_COLS) {
    attn__parallel_for(ctx, p->threads, cdiv(p->n, GEMM_NR * GEMM_NCP), cols, p);
    return;
  }
  size_t mark = attn__ws_carve(ctx, layout, p, p->ws_bytes);
  for (int32_t t = 0; t < p->threads; t++)
    p->a_row[t] = -1;
  int64_t panels = p->pan0[p->n_parts], step = p->prepacked ? panels : GEMM_NPP;
  for (p->jp0 = 0; p->jp0 < panels; p->jp0 += step) {
    p->njp = min64(step, panels - p->jp0);
    if (!p->prepacked)
      attn__parallel_for(ctx, p->threads, p->njp, pack_panel, p);
    attn__parallel_for(ctx, p->threads, cdiv(p->m, GEMM_MC) * cdiv(p->njp, GEMM_NCP), block, p);
  }
  attn__ws_release(ctx, mark);
}
