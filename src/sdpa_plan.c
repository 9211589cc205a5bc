/* SDPA planning and thread drivers: work items of (batch, kv head, query
 * block), an optional split of the keys into chunks merged in a fixed order
 * through their log-sum-exp (decoding with few items and a long cache; the
 * split follows the shape only, so results do not depend on the threads), the workspace
 * layout, and the parallel loops over the tile kernel (sdpa_tile.c). */
#include "sdpa.h"
#include "simd/kernels.h"

#include <math.h>
#include <string.h>

/* A key chunk of a split item holds at least this many keys. */
#define MIN_CHUNK_KEYS 1024
/* Problems with fewer items than this split their keys into chunks, up to
 * about this many tasks: enough to feed 32 threads, decided from the shape
 * alone so that the thread count cannot change the rounding. */
#define SPLIT_TASKS 32

static size_t state_floats(const attn_sdpa_problem *p) {
  return (size_t)p->rows_max * (size_t)(p->Dv + 2);
}

static attn_sdpa_state state_at(const attn_sdpa_problem *p, float *base) {
  attn_sdpa_state st = {base, base + p->rows_max * p->Dv, base + p->rows_max * (p->Dv + 1)};
  return st;
}

/* The workspace: per-thread buffers, then the split path's states. Sizes
 * it when l->base is NULL, carves it otherwise. */
static void sdpa_layout(void *problem, attn_ws_layout *l) {
  attn_sdpa_problem *p = problem;
  size_t rows = (size_t)p->rows_max;
  /* A tile holds at most BLOCK_KEYS keys and never more than Lk: a short
   * problem with a long head dim gathers no more than it has. */
  size_t tile_keys = (size_t)(p->Lk < BLOCK_KEYS ? (p->Lk > 0 ? p->Lk : 1) : BLOCK_KEYS);
  p->works = attn__ws_take(l, (size_t)p->threads, sizeof(attn_sdpa_work));
  for (int32_t t = 0; t < p->threads; t++) {
    attn_sdpa_work w;
    w.qbuf = attn__ws_take(l, rows * (size_t)p->D, sizeof(float));
    w.s = attn__ws_take(l, rows * BLOCK_KEYS, sizeof(float));
    w.kbuf = p->gather_k ? attn__ws_take(l, tile_keys * (size_t)p->D, sizeof(float)) : NULL;
    w.vbuf = p->gather_v ? attn__ws_take(l, tile_keys * (size_t)p->Dv, sizeof(float)) : NULL;
    float *state = attn__ws_take(l, state_floats(p), sizeof(float));
    if (p->works) {
      w.st = state_at(p, state);
      p->works[t] = w;
    }
  }
  size_t tasks = (size_t)(p->n_items * p->n_split);
  p->states = p->n_split > 1 ? attn__ws_take(l, tasks, state_floats(p) * sizeof(float)) : NULL;
}

static void run_item(void *arg, int64_t index, int32_t worker) {
  const attn_sdpa_problem *p = arg;
  attn_sdpa_item it = attn__sdpa_item(p, index);
  const attn_sdpa_work *wk = &p->works[worker];
  attn__sdpa_gather_queries(p, &it, wk->qbuf);
  attn__sdpa_attend(p, &it, wk, wk->st, 0, p->Lk, true);
  attn__sdpa_finish(p, &it, wk->st);
}

/* Split path, phase 1: one key chunk of one item into its own state. */
static void run_chunk(void *arg, int64_t index, int32_t worker) {
  const attn_sdpa_problem *p = arg;
  int64_t item = index / p->n_split, c = index % p->n_split;
  attn_sdpa_item it = attn__sdpa_item(p, item);
  const attn_sdpa_work *wk = &p->works[worker];
  attn_sdpa_state st = state_at(p, p->states + (size_t)index * state_floats(p));
  int64_t kb = c * p->chunk_keys, ke = kb + p->chunk_keys < p->Lk ? kb + p->chunk_keys : p->Lk;
  attn__sdpa_gather_queries(p, &it, wk->qbuf);
  attn__sdpa_attend(p, &it, wk, st, kb, ke, c == 0);
}

/* Split path, phase 2: merge an item's chunks through their maxima and sums. */
static void merge_chunks(void *arg, int64_t item, int32_t worker) {
  const attn_sdpa_problem *p = arg;
  (void)worker;
  attn_sdpa_item it = attn__sdpa_item(p, item);
  int64_t rows = it.n_pos * p->G;
  attn_sdpa_state first =
      state_at(p, p->states + (size_t)item * (size_t)p->n_split * state_floats(p));
  for (int64_t c = 1; c < p->n_split; c++) {
    attn_sdpa_state other =
        state_at(p, p->states + ((size_t)item * (size_t)p->n_split + (size_t)c) * state_floats(p));
    for (int64_t r = 0; r < rows; r++) {
      float ma = first.m[r], mb = other.m[r];
      if (mb == -INFINITY)
        continue;
      float m = isnan(ma) || isnan(mb) ? NAN : (ma > mb ? ma : mb);
      float ca = ma == -INFINITY ? 0.0f : expf(ma - m), cb = expf(mb - m);
      float *acc = first.acc + r * p->Dv;
      const float *acc_b = other.acc + r * p->Dv;
      for (int64_t d = 0; d < p->Dv; d++)
        acc[d] = acc[d] * ca + acc_b[d] * cb;
      first.l[r] = first.l[r] * ca + other.l[r] * cb;
      first.m[r] = m;
    }
  }
  attn__sdpa_finish(p, &it, first);
}

/* Tiling, split, threads and the exact workspace (p->ws_bytes). */
void attn__sdpa_plan(const attn_ctx *ctx, attn_sdpa_problem *p) {
  p->nb = BLOCK_ROWS / p->G > 0 ? BLOCK_ROWS / p->G : 1;
  if (p->nb > p->Lq)
    p->nb = p->Lq;
  p->n_qblocks = (p->Lq + p->nb - 1) / p->nb;
  p->rows_max = p->nb * p->G;
  p->n_items = p->B * p->Hkv * p->n_qblocks;
  p->decode = p->rows_max <= DECODE_ROWS && attn__kernels()->dec_qk;
  /* Otherwise K and V tiles go to the products in place when their rows
   * are F32 and contiguous. Strided rows (a packed batch [T, H, D], or
   * [B, L, H, D] views: H * D apart) are gathered once per tile when a block
   * has more than DECODE_ROWS rows, whose products read each row again and
   * again: rows 2 KiB or more apart fall into a few cache sets and out of
   * the L1 between passes (attn_sdpa_varlen, 64 sequences of 64..512
   * tokens, 12 heads of 64, 1 thread: 7 % faster). */
  bool many = p->rows_max > DECODE_ROWS;
  p->gather_k = !p->decode && (p->kdt != ATTN_DTYPE_F32 ||
                               (p->Lk > 1 && (p->ks[2] < p->D || p->ks[2] > INT32_MAX ||
                                              (many && p->ks[2] != p->D))));
  p->gather_v = !p->decode && (p->vdt != ATTN_DTYPE_F32 ||
                               (p->Lk > 1 && (p->vs[2] < p->Dv || p->vs[2] > INT32_MAX ||
                                              (many && p->vs[2] != p->Dv))));

  p->n_split = 1;
  p->chunk_keys = p->Lk;
  if (p->n_items < SPLIT_TASKS && p->Lk >= 2 * MIN_CHUNK_KEYS) {
    int64_t want = (SPLIT_TASKS + p->n_items - 1) / p->n_items;
    int64_t most = p->Lk / MIN_CHUNK_KEYS;
    p->n_split = want < most ? want : most;
    /* Chunks are whole tiles so the split changes no tile boundary. */
    int64_t tiles = (p->Lk + BLOCK_KEYS - 1) / BLOCK_KEYS;
    p->chunk_keys = (tiles + p->n_split - 1) / p->n_split * BLOCK_KEYS;
    p->n_split = (p->Lk + p->chunk_keys - 1) / p->chunk_keys;
  }
  double work =
      (double)p->B * (double)p->Hq * (double)p->Lq * (double)p->Lk * (double)(p->D + p->Dv);
  p->threads = attn__threads_plan(ctx, work, 1 << 20, p->n_items * p->n_split);
  /* With a multi-threaded BLAS, our workers' concurrent calls would queue
   * behind one another: let the BLAS use its threads inside each call. */
  if (attn__blas_threads() > 1)
    p->threads = 1;
  p->ws_bytes = attn__ws_size(sdpa_layout, p);
}

/* Run a planned problem inside the workspace reserved for it. */
void attn__sdpa_run(attn_ctx *ctx, attn_sdpa_problem *p) {
  size_t mark = attn__ws_carve(ctx, sdpa_layout, p, p->ws_bytes);
  if (p->n_split == 1) {
    attn__parallel_for(ctx, p->threads, p->n_items, run_item, p);
  } else {
    attn__parallel_for(ctx, p->threads, p->n_items * p->n_split, run_chunk, p);
    attn__parallel_for(ctx, p->threads, p->n_items, merge_chunks, p);
  }
  attn__ws_release(ctx, mark);
}
