/* SDPA planning and thread drivers: work items of (batch, kv head, query
 * block), an optional split of the keys into chunks merged in a fixed order
 * through their log-sum-exp (decoding with few items and a long cache; the
 * split follows the shape only, so results do not depend on the threads), the workspace
 * layout, and the parallel loops over the tile kernel (sdpa_tile.c). */
#include "sdpa.h"
#include "convert.h"
#include "simd/kernels.h"

#include <math.h>
#include <stdlib.h>
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

/* Orders of work, more work first, then by index: each entry one key
 * (the work's complement, then the index in the low ORDER_INDEX_BITS bits),
 * sorted ascending. */
#define ORDER_INDEX_BITS 31
static int cmp_key(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

/* Items of several kv heads (group_heads) are few and as long as their
 * batch's keys, which may differ 32-fold (a paged decode step over
 * sequences of 1k..32k tokens): they run longest first, so the dynamic
 * schedule ends on short ones (8 such items on 2 threads in batch order:
 * the last thread done after 1.07x the even share of keys). */
static bool ordered(const attn_sdpa_problem *p) {
  return p->heads > 1 && p->threads > 1 && p->B > 1 && p->B <= INT32_MAX && p->Lk <= INT32_MAX;
}

/* The workspace: per-thread buffers, then the split path's states. Sizes
 * it when l->base is NULL, carves it otherwise. */
static void sdpa_layout(void *problem, attn_ws_layout *l) {
  attn_sdpa_problem *p = problem;
  size_t rows = (size_t)p->rows_max;
  /* A tile holds at most tile_keys keys and never more than Lk: a short
   * problem with a long head dim gathers no more than it has. */
  size_t tile_keys = (size_t)(p->Lk < p->tile_keys ? (p->Lk > 0 ? p->Lk : 1) : p->tile_keys);
  p->works = attn__ws_take(l, (size_t)p->threads, sizeof(attn_sdpa_work));
  for (int32_t t = 0; t < p->threads; t++) {
    attn_sdpa_work w;
    w.qbuf = attn__ws_take(l, rows * (size_t)p->D, sizeof(float));
    w.s = attn__ws_take(l, rows * (size_t)p->tile_keys, sizeof(float));
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
  p->order = ordered(p) ? attn__ws_take(l, (size_t)p->B, sizeof(int64_t)) : NULL;
}

/* The batches, most keys first, into p->order (then the indices alone). */
static void fill_batch_order(const attn_sdpa_problem *p) {
  for (int64_t b = 0; b < p->B; b++)
    p->order[b] = (p->Lk - (p->kv_lens ? p->kv_lens[b] : p->Lk)) << ORDER_INDEX_BITS | b;
  qsort(p->order, (size_t)p->B, sizeof *p->order, cmp_key);
  for (int64_t b = 0; b < p->B; b++)
    p->order[b] &= ((int64_t)1 << ORDER_INDEX_BITS) - 1;
}

static void run_item(void *arg, int64_t index, int32_t worker) {
  const attn_sdpa_problem *p = arg;
  attn_sdpa_item it = attn__sdpa_item(p, index);
  const attn_sdpa_work *wk = &p->works[worker];
  attn__sdpa_attend(p, &it, attn__sdpa_queries(p, &it, wk->qbuf), wk, wk->st, 0, p->Lk, true);
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
  attn__sdpa_attend(p, &it, attn__sdpa_queries(p, &it, wk->qbuf), wk, st, kb, ke, c == 0);
}

/* Split path, phase 2: merge an item's chunks through their maxima and sums. */
static void merge_chunks(void *arg, int64_t item, int32_t worker) {
  const attn_sdpa_problem *p = arg;
  (void)worker;
  attn_sdpa_item it = attn__sdpa_item(p, item);
  int64_t rows = attn__sdpa_item_rows(p, &it);
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

/* Blocks of at most `rows` query rows, items and how K/V tiles reach the
 * products. */
static void plan_tiles(attn_sdpa_problem *p, int64_t rows) {
  p->nb = rows / p->G > 0 ? rows / p->G : 1;
  if (p->nb > p->Lq)
    p->nb = p->Lq;
  p->n_qblocks = (p->Lq + p->nb - 1) / p->nb;
  p->rows_max = p->nb * p->G;
  p->heads = 1;
  p->n_items = p->B * p->Hkv * p->n_qblocks;
  p->decode = p->rows_max <= DECODE_ROWS && attn__kernels()->dec_qk;
  /* Staged rows (in_cache) are in L2 already, and a staged sequence's
   * logits share buffers laid out for the batch's largest (SDPA_TILE_KEYS
   * wide at least). */
  p->tile_keys = p->decode && !p->in_cache ? DECODE_TILE_KEYS : SDPA_TILE_KEYS;
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
}

/* A paged cache stores a block's heads one after another: a decode item
 * of one kv head reads a run of block_size rows of each block and jumps
 * over the other heads' (16-token blocks of 8 f32 heads of 128: 8 KiB of
 * every 64 KiB), and the hardware prefetchers, which follow a stream
 * within a 4 KiB page, start over at every run. Items of all a block's
 * heads read the blocks whole (a few blocks at a time, every head's runs
 * of them in turn: sdpa_tile.c). Each head's sums are the same (its runs
 * come in the same order whatever the other heads), so the grouping may depend
 * on the threads: as many heads per item as leave ITEMS_PER_THREAD items
 * (key chunks included) per thread. */
#define ITEMS_PER_THREAD 4
static void group_heads(attn_sdpa_problem *p) {
  if (!p->decode || !p->blocks)
    return;
  int64_t tasks = p->n_items * p->n_split, heads = p->Hkv;
  int64_t want = p->threads > 1 ? ITEMS_PER_THREAD * (int64_t)p->threads : 1;
  while (heads > 1 && (p->Hkv % heads || tasks / heads < want))
    heads--;
  p->heads = heads;
  p->n_items /= heads;
  p->rows_max *= heads;
}

/* Tiling, split, threads and the exact workspace (p->ws_bytes). */
void attn__sdpa_plan(const attn_ctx *ctx, attn_sdpa_problem *p) {
  plan_tiles(p, SDPA_TILE_ROWS);
  p->n_split = 1;
  p->chunk_keys = p->Lk;
  if (p->n_items < SPLIT_TASKS && p->Lk >= 2 * MIN_CHUNK_KEYS) {
    int64_t want = (SPLIT_TASKS + p->n_items - 1) / p->n_items;
    int64_t most = p->Lk / MIN_CHUNK_KEYS;
    p->n_split = want < most ? want : most;
    /* Chunks are whole tiles so the split changes no tile boundary. */
    int64_t tiles = (p->Lk + p->tile_keys - 1) / p->tile_keys;
    p->chunk_keys = (tiles + p->n_split - 1) / p->n_split * p->tile_keys;
    p->n_split = (p->Lk + p->chunk_keys - 1) / p->chunk_keys;
  }
  double work =
      (double)p->B * (double)p->Hq * (double)p->Lq * (double)p->Lk * (double)(p->D + p->Dv);
  p->threads = attn__threads_plan(ctx, work, 1 << 20, p->n_items * p->n_split);
  /* With a multi-threaded BLAS, our workers' concurrent calls would queue
   * behind one another: let the BLAS use its threads inside each call. */
  if (attn__blas_threads() > 1)
    p->threads = 1;
  group_heads(p);
  p->ws_bytes = attn__ws_size(sdpa_layout, p);
}

/* Run a planned problem inside the workspace reserved for it. */
void attn__sdpa_run(attn_ctx *ctx, attn_sdpa_problem *p) {
  size_t mark = attn__ws_carve(ctx, sdpa_layout, p, p->ws_bytes);
  if (p->order)
    fill_batch_order(p);
  if (p->n_split == 1) {
    attn__parallel_for(ctx, p->threads, p->n_items, run_item, p);
  } else {
    attn__parallel_for(ctx, p->threads, p->n_items * p->n_split, run_chunk, p);
    attn__parallel_for(ctx, p->threads, p->n_items, merge_chunks, p);
  }
  attn__ws_release(ctx, mark);
}

/* ---- packed batches (attn_sdpa_varlen) ---- */

/* A staged item's head-major buffers stay within this (a core's L2 holds
 * them next to the tiles); a sequence is staged when two of its kv heads
 * fit, and an item takes as many kv heads as fit for the longest staged
 * sequence. (64 sequences of 64..512 tokens, 12 heads of 64, 1 thread: the
 * per-head tiles reading rows 3 KiB apart ran at 0.87 of the same sequences
 * laid out head-major.) */
#define STAGE_BYTES ((size_t)1 << 20)
/* Staged sequences are never split (MIN_CHUNK_KEYS). */
#define STAGE_TOKENS 2048
/* A batch whose tensors take at most this many bytes is read in place:
 * its rows come from the caches, where staging only adds copies (one
 * sequence of 128 tokens, 12 heads of 64, 1 thread: 7 % slower staged). */
#define STAGE_MIN_BYTES ((size_t)4 << 20)

/* Query rows per block of a staged item: a head of a sequence of up to 512
 * tokens is one block, so its K tiles are packed for the products once
 * (64 sequences of 64..512 tokens, 12 heads of 64, 1 thread: 1.3 % less
 * time than blocks of SDPA_TILE_ROWS). Its logits tile (512 rows: 512 KiB)
 * and the stage (up to STAGE_BYTES) still fit a 2 MiB L2. */
#define STAGE_ROWS 512

/* Floats one kv head of a sequence needs: its G query heads' rows, its
 * keys and values (outputs go to the caller's rows: stage_problem). */
static size_t stage_head_floats(const attn_sdpa_problem *w, int64_t Lq, int64_t Lk) {
  return (size_t)(w->G * Lq * w->D) + (size_t)Lk * (size_t)(w->D + w->Dv);
}

static bool staged(const attn_sdpa_packed *pk, int64_t Lq, int64_t Lk) {
  const attn_sdpa_problem *w = &pk->whole;
  return pk->stage_all && Lq > 0 && w->Hq > 0 && Lq <= STAGE_TOKENS && Lk <= STAGE_TOKENS &&
         stage_head_floats(w, Lq, Lk) * sizeof(float) * 2 <= STAGE_BYTES;
}

void attn__sdpa_sequence(const attn_sdpa_packed *pk, int32_t s, attn_sdpa_problem *p) {
  const attn_sdpa_problem *w = &pk->whole;
  *p = *w;
  p->Lq = pk->cu_q[s + 1] - pk->cu_q[s];
  p->Lk = pk->cu_k[s + 1] - pk->cu_k[s];
  /* An empty range may start at the token count, one past the last token,
   * where an axis of size 1 has an arbitrary stride: do not offset by it. */
  int64_t q0 = p->Lq ? pk->cu_q[s] : 0, k0 = p->Lk ? pk->cu_k[s] : 0;
  p->q = attn__elem(w->q, w->qdt, q0 * w->qs[2]);
  p->k = attn__elem(w->k, w->kdt, k0 * w->ks[2]);
  p->v = attn__elem(w->v, w->vdt, k0 * w->vs[2]);
  p->out = attn__elem(w->out, w->odt, q0 * w->os[2]);
  if (w->lse)
    p->lse = w->lse + q0 * w->lses[2];
  p->q_offsets = w->q_offsets ? w->q_offsets + s : NULL; /* one per sequence */
  attn__sdpa_fill_common(p, pk->prm);
}

/* The problem of kv heads [g * group, ...) of sequence `seq` over the
 * head-major F32 buffers at stage: q [Hq', Lq, D], k and v [Hkv', Lk, D or
 * Dv]; planned (one chunk, the workers' buffers of pk->tile). Outputs go
 * from the accumulator to the caller's rows, F32 ones by non-temporal
 * stores (the lines are not first read from memory; run_staged fences):
 * a staged copy would write them twice (64 sequences of 64..512 tokens,
 * 12 heads of 64, 1 thread: 1.3-2.2 % less CPU time than through a
 * staged copy). */
static void stage_problem(const attn_sdpa_packed *pk, const attn_sdpa_problem *seq, int64_t g,
                          float *stage, attn_sdpa_problem *p) {
  int64_t kh0 = g * pk->group, nh = seq->Hkv - kh0 < pk->group ? seq->Hkv - kh0 : pk->group;
  int64_t Lq = seq->Lq, Lk = seq->Lk, D = seq->D, Dv = seq->Dv;
  *p = *seq;
  p->Hkv = nh;
  p->Hq = nh * seq->G;
  float *q = stage, *k = q + p->Hq * Lq * D, *v = k + nh * Lk * D;
  p->q = q, p->k = k, p->v = v;
  p->qdt = p->kdt = p->vdt = ATTN_DTYPE_F32;
  int64_t qs[4] = {0, Lq * D, D, 1}, ks[4] = {0, Lk * D, D, 1}, vs[4] = {0, Lk * Dv, Dv, 1};
  memcpy(p->qs, qs, sizeof qs);
  memcpy(p->ks, ks, sizeof ks);
  memcpy(p->vs, vs, sizeof vs);
  int64_t qh0 = kh0 * seq->G;
  p->out = attn__elem(seq->out, seq->odt, qh0 * seq->os[1]);
  p->stream_out = true;
  p->in_cache = true;
  if (p->lse)
    p->lse += qh0 * p->lses[1];
  if (p->alibi)
    p->alibi += qh0;
  if (p->sinks)
    p->sinks += qh0;
  plan_tiles(p, STAGE_ROWS);
  p->n_split = 1;
  p->chunk_keys = Lk;
  p->works = pk->tile.works;
  p->states = NULL;
  p->order = NULL;
}

/* Rows of heads [h0, h0 + nh) of `rows` tokens (token stride ts, head
 * stride hs, type dt) into the head-major float rows at buf. The token's
 * next rows are requested a few tokens ahead. */
#define STAGE_AHEAD 4
static void stage_rows(const void *x, int32_t dt, int64_t ts, int64_t hs, int64_t h0, int64_t nh,
                       int64_t rows, int64_t cols, float *buf) {
  const attn_kernels *k = attn__kernels();
  int64_t size = (int64_t)attn__dtype_size(dt), bytes = cols * size;
  ts *= size, hs *= size; /* in bytes from here */
  const char *first = (const char *)attn__elem(x, dt, h0 * hs / size);
  for (int64_t i = 0; i < rows; i++) {
    const char *token = first + i * ts;
    if (i + STAGE_AHEAD < rows)
      for (int64_t h = 0; h < nh; h++) {
        const char *row = token + STAGE_AHEAD * ts + h * hs;
        for (int64_t o = 0; o < bytes; o += 64)
          __builtin_prefetch(row + o, 0, 3);
      }
    for (int64_t h = 0; h < nh; h++)
      attn__widen(k, dt, token + h * hs, buf + (h * rows + i) * cols, cols);
  }
}

/* The staged sequences, most work first (work < 2^22 by STAGE_TOKENS). */
static void fill_order(const attn_sdpa_packed *pk) {
  int64_t n = 0, most = (int64_t)STAGE_TOKENS * STAGE_TOKENS;
  for (int32_t s = 0; s < pk->batch; s++) {
    int64_t Lq = pk->cu_q[s + 1] - pk->cu_q[s], Lk = pk->cu_k[s + 1] - pk->cu_k[s];
    if (staged(pk, Lq, Lk))
      pk->order[n++] = (most - Lq * Lk) << ORDER_INDEX_BITS | s;
  }
  qsort(pk->order, (size_t)n, sizeof *pk->order, cmp_key);
}

static void packed_layout(void *problem, attn_ws_layout *l) {
  attn_sdpa_packed *pk = problem;
  sdpa_layout(&pk->tile, l);
  pk->stage = attn__ws_take(l, (size_t)pk->threads, pk->stage_floats * sizeof(float));
  pk->order = attn__ws_take(l, (size_t)pk->n_staged, sizeof(int64_t));
}

static void run_staged(void *arg, int64_t index, int32_t worker) {
  const attn_sdpa_packed *pk = arg;
  attn_sdpa_problem seq, p;
  int32_t s = (int32_t)(pk->order[index / pk->n_groups] & (((int64_t)1 << ORDER_INDEX_BITS) - 1));
  attn__sdpa_sequence(pk, s, &seq);
  float *stage = pk->stage + (size_t)worker * pk->stage_floats;
  stage_problem(pk, &seq, index % pk->n_groups, stage, &p);
  int64_t kh0 = (index % pk->n_groups) * pk->group, qh0 = kh0 * seq.G;
  stage_rows(seq.q, seq.qdt, seq.qs[2], seq.qs[1], qh0, p.Hq, p.Lq, p.D, (float *)p.q);
  stage_rows(seq.k, seq.kdt, seq.ks[2], seq.ks[1], kh0, p.Hkv, p.Lk, p.D, (float *)p.k);
  stage_rows(seq.v, seq.vdt, seq.vs[2], seq.vs[1], kh0, p.Hkv, p.Lk, p.Dv, (float *)p.v);
  for (int64_t i = 0; i < p.n_items; i++)
    run_item(&p, i, worker);
  attn__kernels()->stream_fence(); /* before the rows are handed back */
}

void attn__sdpa_plan_packed(const attn_ctx *ctx, attn_sdpa_packed *pk) {
  const attn_sdpa_problem *w = &pk->whole;
  int64_t Lq_max = 0, Lk_max = 0;
  size_t head_max = 0, ws = 0;
  double work = 0;
  pk->n_staged = 0;
  double bytes = 0; /* of the packed tensors (elements of 2 or 4 bytes) */
  if (pk->batch > 0) {
    double tq = (double)pk->cu_q[pk->batch], tk = (double)pk->cu_k[pk->batch];
    bytes = 4 * (tq * (double)w->Hq * (double)(w->D + w->Dv) +
                 tk * (double)w->Hkv * (double)(w->D + w->Dv));
  }
  pk->stage_all = bytes > (double)STAGE_MIN_BYTES;
  for (int32_t s = 0; s < pk->batch; s++) {
    int64_t Lq = pk->cu_q[s + 1] - pk->cu_q[s], Lk = pk->cu_k[s + 1] - pk->cu_k[s];
    if (staged(pk, Lq, Lk)) {
      pk->n_staged++;
      Lq_max = Lq > Lq_max ? Lq : Lq_max;
      Lk_max = Lk > Lk_max ? Lk : Lk_max;
      size_t f = stage_head_floats(w, Lq, Lk);
      head_max = f > head_max ? f : head_max;
      work += (double)w->Hq * (double)Lq * (double)Lk * (double)(w->D + w->Dv);
    } else if (Lq > 0 && w->Hq > 0) {
      attn_sdpa_problem p;
      attn__sdpa_sequence(pk, s, &p);
      attn__sdpa_plan(ctx, &p);
      ws = p.ws_bytes > ws ? p.ws_bytes : ws;
    }
  }
  pk->group = w->Hkv;
  if (head_max > 0 && STAGE_BYTES / sizeof(float) / head_max < (size_t)pk->group)
    pk->group = (int64_t)(STAGE_BYTES / sizeof(float) / head_max);
  pk->n_groups = pk->group > 0 ? (w->Hkv + pk->group - 1) / pk->group : 0;
  pk->stage_floats = (size_t)pk->group * head_max;
  pk->threads = 1;
  if (pk->n_staged > 0) {
    pk->threads = attn__threads_plan(ctx, work, 1 << 20, (int64_t)pk->n_staged * pk->n_groups);
    if (attn__blas_threads() > 1)
      pk->threads = 1;
    /* Every staged item's problem fits the workers' buffers of the
     * largest: rows_max grows with Lq, tiles with Lk, and none gathers. */
    attn_sdpa_problem *t = &pk->tile;
    *t = *w;
    t->Lq = Lq_max, t->Lk = Lk_max;
    t->Hkv = pk->group, t->Hq = pk->group * w->G;
    t->qdt = t->kdt = t->vdt = t->odt = ATTN_DTYPE_F32;
    t->ks[2] = w->D, t->vs[2] = w->Dv;
    plan_tiles(t, STAGE_ROWS);
    t->n_split = 1;
    t->threads = pk->threads;
    pk->staged_bytes = attn__ws_size(packed_layout, pk);
    ws = pk->staged_bytes > ws ? pk->staged_bytes : ws;
  }
  pk->ws_bytes = ws;
}

void attn__sdpa_run_packed(attn_ctx *ctx, attn_sdpa_packed *pk) {
  if (pk->n_staged > 0) {
    size_t mark = attn__ws_carve(ctx, packed_layout, pk, pk->staged_bytes);
    fill_order(pk);
    attn__parallel_for(ctx, pk->threads, (int64_t)pk->n_staged * pk->n_groups, run_staged, pk);
    attn__ws_release(ctx, mark);
  }
  for (int32_t s = 0; s < pk->batch; s++) {
    int64_t Lq = pk->cu_q[s + 1] - pk->cu_q[s], Lk = pk->cu_k[s + 1] - pk->cu_k[s];
    if (Lq == 0 || pk->whole.Hq == 0 || staged(pk, Lq, Lk))
      continue;
    attn_sdpa_problem p;
    attn__sdpa_sequence(pk, s, &p);
    attn__sdpa_plan(ctx, &p);
    attn__sdpa_run(ctx, &p);
  }
}
