/* Private interface of scaled dot-product attention, shared by sdpa.c
 * (entry points and checks), sdpa_plan.c (planning, workspace and thread
 * drivers) and sdpa_tile.c (the tile kernel and masking), and the internal
 * entry points other parts of the library call:
 *
 *   fill an attn_sdpa_problem (plain pointers and element strides, no
 *   handles), attn__sdpa_plan, reserve p.ws_bytes (attn__ws_reserve, or add
 *   it to an outer plan's reservation), attn__sdpa_run. */
#ifndef ATTN_SDPA_H
#define ATTN_SDPA_H

#include "internal.h"

/* Tile sizes: SDPA_TILE_ROWS query rows (all heads of a group included) by
 * SDPA_TILE_KEYS keys: S is 256 KiB, next to the K and V tiles in a core's L2.
 * Each block streams every K and V tile from L3 once, so more rows per
 * block mean fewer passes over K/V. With libattn's tile kernels on an
 * Emerald Rapids KVM guest (2 MiB L2 per core; 1 thread, B=1 H=8 L=4096,
 * SDPA per CPU second as a fraction of a same-process OpenBLAS SkylakeX
 * sgemm on 128x256 tiles): 256 rows 0.90-0.91 non-causal and 0.95-0.98
 * causal, against 0.80-0.84 and 0.92-0.94 with 128 rows. (Earlier, through
 * OpenBLAS Haswell kernels on a Zen 4 with 1 MiB L2, 256x256 gave 0.86-1.08
 * of a 2048^3 sgemm but a worse causal/full time, 0.57-0.63 against
 * 0.53-0.54 at 128x256: larger blocks waste more work on the diagonal.) */
#define SDPA_TILE_ROWS 256
#define SDPA_TILE_KEYS 256
/* Items of at most this many rows (a decode step: the query heads of one KV
 * head, a few positions each) take the decode products (simd/decode_body.h)
 * when the kernel set has them: K and V rows read once, in place and in
 * their stored type. More rows read K/V tiles through the generic products. */
#define DECODE_ROWS 8
/* Keys per tile of the decode products reading K/V from memory: the
 * products stream a tile's K rows, then its V rows, and every switch
 * between the two streams costs the prefetchers their distance ahead
 * (bench/dec_kernels.c, 1 thread: Q.K^T and P.V per 1024-key tile took
 * 1.27-1.32x a plain read of the bytes for f32 rows, against 1.39-1.44x per
 * 256-key tile). */
#define DECODE_TILE_KEYS 1024
/* Bound on |q_offsets[b]|: positions and window ends stay far from overflow. */
#define MAX_Q_OFFSET ((int64_t)1 << 60)

typedef struct attn_sdpa_work attn_sdpa_work;

/* One attention problem: q [B, Hq, Lq, D], k [B, Hkv, Lk, D], v [B, Hkv,
 * Lk, Dv], out [B, Hq, Lq, Dv] as element strides, and what shapes the
 * logits. Fields up to "tiling" are the caller's; the rest the plan's.
 * q, k, v and out are F32, F16 or BF16 (their *dt), each on its own: half
 * queries are widened as they are gathered, half K/V tiles into kbuf/vbuf,
 * and a half output row is rounded once from the float result. */
typedef struct {
  int64_t B, Hq, Hkv, G, Lq, Lk, D, Dv;
  const void *q, *k, *v;
  void *out;
  int32_t qdt, kdt, vdt, odt;
  float *lse, *w;
  int64_t qs[4], ks[4], vs[4], os[4], lses[3], ws[4];
  const float *mask;
  int64_t ms[4];
  const uint8_t *bmask;
  int64_t bs[4];
  const int64_t *kv_lens;   /* [B] or NULL: keys of each sequence */
  const int64_t *q_offsets; /* [B] or NULL: i' = q_offsets[b] + i */
  const float *alibi, *sinks;
  float scale, softcap;
  bool causal, window, bottom_right;
  int64_t wl, wr;
  /* KV cache (kv_attend.c): batch b has n_b = q_lens[b] query rows (Lq when
   * NULL), bottom-right aligned on its kv_lens[b] keys; rows i >= n_b are
   * padding and see no key. Paged keys and values: key j of batch b lives
   * in block blocks[b * blocks_stride + j / block_size], at k + block *
   * ks[0] (and v + block * vs[0]); NULL for one strided view per batch. */
  const int64_t *q_lens;
  const int32_t *blocks;
  int64_t blocks_stride, block_size;
  float *logits;       /* optional out [B, Hq, Lq, Lk] (attn__sdpa_logits) */
  int64_t lgs[4];
  int32_t logits_stage; /* attn_logits_stage */
  /* tiling */
  int64_t nb;         /* query positions per block */
  int64_t n_qblocks;  /* blocks per (batch, kv head) */
  int64_t rows_max;   /* nb * G * heads */
  int64_t heads;      /* kv heads per item: 1, or several in a paged decode (sdpa_plan.c) */
  int64_t n_items;    /* B * (Hkv / heads) * n_qblocks */
  int64_t n_split;    /* key chunks per item */
  int64_t chunk_keys; /* keys per chunk */
  bool decode; /* the decode products: rows_max <= DECODE_ROWS and the kernels exist */
  int64_t tile_keys; /* keys per tile: SDPA_TILE_KEYS, or DECODE_TILE_KEYS (plan_tiles) */
  bool gather_k, gather_v;
  int32_t threads;
  size_t ws_bytes; /* exact workspace (sdpa_layout) */
  /* workspace */
  attn_sdpa_work *works; /* one per thread */
  float *states;         /* n_items * n_split partial results when n_split > 1 */
  int64_t *order;        /* items of several kv heads: the batches, most keys first (sdpa_plan.c) */
  bool stream_out;       /* F32 outputs by non-temporal stores (the caller fences) */
  bool in_cache;         /* K and V rows are a worker's staged copies, in its L2 */
} attn_sdpa_problem;

/* attn_sdpa without the prologue: check the handles and params, plan,
 * reserve, run. For an op inside the library that attends over views of
 * its own tensors (attn_pool_attention); messages carry ctx->op. */
attn_status attn__sdpa(attn_ctx *ctx, const attn_tensor *q, const attn_tensor *k,
                       const attn_tensor *v, attn_tensor *out, const attn_sdpa_params *params);

/* attn_sdpa_backward for queries shared by the batch (q's batch stride is
 * 0: attn_pool_attention): dq of each batch goes to the workspace and their
 * sum over the batch, in batch order, to dq_sum [Hq, Lq, D] (checked by the
 * caller, last stride 1). Runs from inside an op (no prologue); writes
 * nothing on failure. */
attn_status attn__sdpa_backward_shared_q(attn_ctx *ctx, const attn_tensor *q,
                                         const attn_tensor *k, const attn_tensor *v,
                                         const attn_tensor *out, const attn_tensor *lse,
                                         const attn_tensor *dout, attn_tensor *dq_sum,
                                         attn_tensor *dk, attn_tensor *dv,
                                         const attn_sdpa_params *p);
/* Keys and values of a KV cache as the tile kernel reads them (strides of
 * (sequence or block, head, row)); lens[b] keys are valid. */
typedef struct {
  int64_t B, Hkv, D, Dv;
  int32_t dt; /* of k and v: F32, or a half type read in place tile by tile */
  const void *k, *v;
  int64_t ks[3], vs[3];
  const int32_t *blocks;
  int64_t blocks_stride, block_size;
  const int64_t *lens;
} attn_kv_view;

/* Attention of q (dtype qdt, strides qs of [B, Hq, Lq, D]) over a KV cache view into
 * out (odt, strides os of [B, Hq, Lq, Dv]): row i < n_b of sequence b sits at
 * position lens[b] - n_b + i, n_b = q_lens[b] (Lq when q_lens is NULL);
 * rows past n_b get zeros (lse -inf). The caller checked q, out, q_lens and
 * the view (and that prm->lse overlaps nothing); this checks the options
 * in prm (mask, bool_mask, kv_lens, q_offsets and weights must be unset),
 * plans, reserves and runs. */
attn_status attn__sdpa_kv(attn_ctx *ctx, const void *q, int32_t qdt, const int64_t *qs,
                          int64_t Hq, int64_t Lq, void *out, int32_t odt, const int64_t *os,
                          const attn_kv_view *kv, const int64_t *q_lens,
                          const attn_sdpa_params *prm);
/* The workspace attn__sdpa_kv would reserve for such a call (q and out
 * strides qs, os, F32), with the checks it makes on prm: a layer reserves it
 * before it appends the rows the call then reads (kv->lens as they will be). */
attn_status attn__sdpa_kv_ws(attn_ctx *ctx, const int64_t *qs, int64_t Hq, int64_t Lq,
                             const int64_t *os, const attn_kv_view *kv, const int64_t *q_lens,
                             const attn_sdpa_params *prm, size_t *ws_bytes);
/* Plan: blocks, key split, threads and the exact workspace (p->ws_bytes).
 * Needs the caller's fields; never fails (an overflowing size saturates and
 * the reservation refuses it). */
void attn__sdpa_plan(const attn_ctx *ctx, attn_sdpa_problem *p);
/* Run a planned problem: takes p->ws_bytes from the reserved workspace,
 * validates nothing, allocates nothing. */
void attn__sdpa_run(attn_ctx *ctx, attn_sdpa_problem *p);

/* A packed batch (attn_sdpa_varlen): sequence s is tokens [cu_q[s],
 * cu_q[s + 1]) of q and out and [cu_k[s], cu_k[s + 1]) of k and v. `whole`
 * holds the tensors as [1, H, T, D] views (xs[1] the head stride, xs[2] the
 * token stride; lses likewise) with Lq = Lk = 0; the rest of a sequence's
 * problem comes from prm (attn__sdpa_fill_common). Fields up to "plan" are
 * the caller's.
 *
 * In a batch larger than the caches, short sequences run together, one parallel loop over items of (sequence,
 * group of kv heads), longest first: an item copies its heads' rows into
 * head-major buffers of its thread (each token's rows of the group are
 * adjacent, so the copy reads runs the hardware prefetchers follow, where
 * the per-head tiles read rows a token apart: a cache and TLB miss each),
 * and attends over them, writing its outputs to their rows. Longer sequences
 * (whose buffers would not stay in a core's L2) run one after another
 * through attn__sdpa_plan / attn__sdpa_run. */
typedef struct {
  attn_sdpa_problem whole;
  const attn_sdpa_params *prm;
  int32_t batch;
  const int64_t *cu_q, *cu_k;
  /* plan */
  bool stage_all;         /* the batch is large enough to stage its short sequences */
  int32_t n_staged;       /* sequences that run as staged items */
  int64_t group;          /* kv heads per item */
  int64_t n_groups;       /* items per staged sequence */
  attn_sdpa_problem tile; /* the largest staged item's problem: sizes the workers' buffers */
  size_t stage_floats;    /* a worker's head-major buffers */
  int32_t threads;
  size_t staged_bytes; /* the staged run's workspace */
  size_t ws_bytes;     /* the largest of the staged run's and each other sequence's */
  /* workspace */
  float *stage;   /* threads x stage_floats */
  int64_t *order; /* the staged sequences, longest first (sdpa_plan.c: fill_order) */
} attn_sdpa_packed;

/* Sequence s of a packed batch as a problem of its own (not planned). */
void attn__sdpa_sequence(const attn_sdpa_packed *pk, int32_t s, attn_sdpa_problem *p);
/* Plan a packed batch: never fails (sizes saturate). */
void attn__sdpa_plan_packed(const attn_ctx *ctx, attn_sdpa_packed *pk);
/* Run a planned packed batch within a reservation of pk->ws_bytes. */
void attn__sdpa_run_packed(attn_ctx *ctx, attn_sdpa_packed *pk);

/* ---- checks and visibility shared with the backward (sdpa_bwd*.c) ---- */

/* Hq a multiple of Hkv (ATTN_ERR_SHAPE). */
attn_status attn__sdpa_check_heads(attn_ctx *ctx, int64_t Hq, int64_t Hkv);
/* The params' rules that do not depend on the tensors' layout. */
attn_status attn__sdpa_check_params(attn_ctx *ctx, const attn_sdpa_params *p, int64_t B,
                                    int64_t Hq, int64_t Lk, int64_t D);
/* cu[0..batch]: starts at 0, non-decreasing, ends at total. */
attn_status attn__sdpa_check_offsets(attn_ctx *ctx, const char *name, const int64_t *cu,
                                     int32_t batch, int64_t total);
/* Scale, soft-cap, visibility and bias fields from checked params (after
 * D, Lq and Lk are set). */
void attn__sdpa_fill_common(attn_sdpa_problem *p, const attn_sdpa_params *prm);
/* Position i' among the keys of query position i of batch b (attn.h). */
int64_t attn__sdpa_key_position(const attn_sdpa_problem *p, int64_t b, int64_t i);
/* Keys visible to query position i of batch b by position: [*lo, *hi),
 * possibly empty; both ends non-decreasing in i (tile skipping relies on it). */
void attn__sdpa_visible_keys(const attn_sdpa_problem *p, int64_t b, int64_t i, int64_t *lo,
                             int64_t *hi);
/* Every x[r * ld + c] finite (0 * NaN is NaN: a product over hidden keys
 * with non-finite values must skip their zero weights). */
bool attn__sdpa_all_finite(const float *x, int64_t rows, int64_t cols, int64_t ld);
/* Write p->logits at p->logits_stage for every (query, key): a pass of its
 * own over Q K^T, run after attn__sdpa_run when the caller asked for them.
 * No workspace. */
void attn__sdpa_logits(attn_ctx *ctx, const attn_sdpa_problem *p);

/* ---- between the drivers (sdpa_plan.c) and the tile kernel (sdpa_tile.c) */

/* Online-softmax state of a block's rows: acc (rows x Dv), m and l (rows). */
typedef struct {
  float *acc, *m, *l;
} attn_sdpa_state;

/* Per-thread workspace. */
typedef struct attn_sdpa_work {
  float *qbuf;        /* rows x D, the block's queries gathered contiguous (attn__sdpa_queries) */
  float *s;           /* rows x tile_keys: logits, then probabilities */
  float *kbuf;        /* min(SDPA_TILE_KEYS, Lk) x D, when K rows cannot be handed to BLAS as they
                         are (a stride BLAS cannot take, or half elements to widen) */
  float *vbuf;        /* min(SDPA_TILE_KEYS, Lk) x Dv, likewise for V */
  attn_sdpa_state st; /* the unsplit path's state */
} attn_sdpa_work;

/* An item's rows: for each of its p->heads kv heads kvh, kvh + 1, ...,
 * the n_pos positions of each of the G query heads of that kv head
 * (position-major). */
typedef struct {
  int64_t b, kvh, i0, n_pos; /* batch, first kv head, first query position, positions */
} attn_sdpa_item;

/* The rows of an item. */
static inline int64_t attn__sdpa_item_rows(const attn_sdpa_problem *p, const attn_sdpa_item *it) {
  return it->n_pos * p->G * p->heads;
}
/* Work item `index` (of p->n_items): its batch, kv heads and query block. */
attn_sdpa_item attn__sdpa_item(const attn_sdpa_problem *p, int64_t index);
/* The item's query rows as F32, rows x D one after another: in place when
 * q holds them so, else copied (widened) into qbuf. */
const float *attn__sdpa_queries(const attn_sdpa_problem *p, const attn_sdpa_item *it,
                               float *qbuf);
/* Online softmax of the item's rows (q, from attn__sdpa_queries) over keys
 * [kb, ke) into st; with_sink starts the state with the sinks (the first
 * chunk only). */
void attn__sdpa_attend(const attn_sdpa_problem *p, const attn_sdpa_item *it, const float *q,
                       const attn_sdpa_work *wk, attn_sdpa_state st, int64_t kb, int64_t ke,
                       bool with_sink);
/* Write out = acc / l, the log-sum-exp and the normalised weights. */
void attn__sdpa_finish(const attn_sdpa_problem *p, const attn_sdpa_item *it, attn_sdpa_state st);

#endif
