/* Scaled dot-product attention, flash-style: for a block of query rows, loop
 * over key tiles; S = scale Q K^T and O += P V go to BLAS (blas.c), and the
 * softmax is computed online (running max m and sum l per row; the
 * accumulator is rescaled when m grows). Memory is O(tile) per thread.
 *
 * A work item is (batch, kv head, block of query positions). Its rows stack
 * every query head of the kv head's group, ordered (position, head), so a
 * K/V tile read from memory serves the whole group (grouped-query decoding
 * reads K/V once, not once per query head). Keys are further split into
 * chunks merged through their log-sum-exp when there are few items
 * (decoding with one kv head and a long cache). The split depends on the
 * shape only, never on the thread count, and chunks merge in a fixed order:
 * the result is the same bits for any number of threads. */
#include "check.h"
#include "logits.h"
#include "simd/kernels.h"

#include <math.h>
#include <string.h>

/* Tile sizes: BLOCK_ROWS query rows (all heads of a group included) by
 * BLOCK_KEYS keys, so S is 128 KiB and stays in the 1 MiB L2 of a core next
 * to the K and V tiles. Measured on the development machine (AMD EPYC, 1
 * thread, OpenBLAS 0.3.21 Haswell kernels, B=1 H=8 L=2048, two rounds, as a
 * fraction of a same-run 2048^3 sgemm), rows x keys: 32x256 0.73-0.79,
 * 64x256 0.81-0.87, 64x512 0.77-0.90, 128x128 0.71-0.89, 128x256 0.84-0.99,
 * 128x512 0.87-0.92, 256x256 0.86-1.08 but causal/full time 0.57-0.63
 * (128x256: 0.53-0.54), as larger blocks waste more work on the diagonal. */
#define BLOCK_ROWS 128
#define BLOCK_KEYS 256
/* Bound on |q_offsets[b]|: positions and window ends stay far from overflow. */
#define MAX_Q_OFFSET ((int64_t)1 << 60)
/* A key chunk of a split item holds at least this many keys. */
#define MIN_CHUNK_KEYS 1024
/* Problems with fewer items than this split their keys into chunks, up to
 * about this many tasks: enough to feed 32 threads, decided from the shape
 * alone so that the thread count cannot change the rounding. */
#define SPLIT_TASKS 32

typedef struct {
  int64_t B, Hq, Hkv, G, Lq, Lk, D, Dv;
  const float *q, *k, *v;
  float *out, *lse, *w;
  int64_t qs[4], ks[4], vs[4], os[4], lses[3], ws[4];
  const float *mask;
  int64_t ms[4];
  const uint8_t *bmask;
  int64_t bs[4];
  const int64_t *kv_lens;
  const int64_t *q_offsets; /* [B] or NULL: i' = q_offsets[b] + i */
  const float *alibi, *sinks;
  float scale, softcap;
  bool causal, window, bottom_right;
  int64_t wl, wr;
  /* tiling */
  int64_t nb;         /* query positions per block */
  int64_t n_qblocks;  /* blocks per (batch, kv head) */
  int64_t rows_max;   /* nb * G */
  int64_t n_items;    /* B * Hkv * n_qblocks */
  int64_t n_split;    /* key chunks per item */
  int64_t chunk_keys; /* keys per chunk */
  bool gather_k, gather_v;
  int32_t threads;
  size_t ws_bytes; /* exact workspace (sdpa_layout) */
  /* workspace */
  struct sdpa_work *works; /* one per thread */
  float *states;           /* n_items * n_split partial results when n_split > 1 */
} sdpa_problem;

/* Online-softmax state of a block's rows: acc (rows x Dv), m and l (rows). */
typedef struct {
  float *acc, *m, *l;
} sdpa_state;

/* Per-thread workspace. */
typedef struct sdpa_work {
  float *qbuf;   /* rows x D, the block's queries gathered contiguous */
  float *s;      /* rows x BLOCK_KEYS: logits, then probabilities */
  float *kbuf;   /* BLOCK_KEYS x D, when K rows cannot be handed to BLAS as they are */
  float *vbuf;   /* BLOCK_KEYS x Dv, likewise for V */
  sdpa_state st; /* the unsplit path's state */
} sdpa_work;

static size_t state_floats(const sdpa_problem *p) {
  return (size_t)p->rows_max * (size_t)(p->Dv + 2);
}

static sdpa_state state_at(const sdpa_problem *p, float *base) {
  sdpa_state st = {base, base + p->rows_max * p->Dv, base + p->rows_max * (p->Dv + 1)};
  return st;
}

/* The workspace: per-thread buffers, then the split path's states. Sizes
 * it when l->base is NULL, carves it otherwise. */
static void sdpa_layout(sdpa_problem *p, attn_ws_layout *l) {
  size_t rows = (size_t)p->rows_max;
  p->works = attn__ws_take(l, (size_t)p->threads, sizeof(sdpa_work));
  for (int32_t t = 0; t < p->threads; t++) {
    sdpa_work w;
    w.qbuf = attn__ws_take(l, rows * (size_t)p->D, sizeof(float));
    w.s = attn__ws_take(l, rows * BLOCK_KEYS, sizeof(float));
    w.kbuf = p->gather_k ? attn__ws_take(l, BLOCK_KEYS * (size_t)p->D, sizeof(float)) : NULL;
    w.vbuf = p->gather_v ? attn__ws_take(l, BLOCK_KEYS * (size_t)p->Dv, sizeof(float)) : NULL;
    float *state = attn__ws_take(l, state_floats(p), sizeof(float));
    if (p->works) {
      w.st = state_at(p, state);
      p->works[t] = w;
    }
  }
  size_t tasks = (size_t)(p->n_items * p->n_split);
  p->states = p->n_split > 1 ? attn__ws_take(l, tasks, state_floats(p) * sizeof(float)) : NULL;
}

/* Position i' among the keys of query position i of batch b (attn.h): the
 * bottom-right alignment puts the last query at the sequence's last key. */
static int64_t key_position(const sdpa_problem *p, int64_t b, int64_t i) {
  if (p->q_offsets)
    return p->q_offsets[b] + i;
  if (!p->bottom_right)
    return i;
  return i + (p->kv_lens ? p->kv_lens[b] : p->Lk) - p->Lq;
}

/* Keys visible to query position i of batch b: [*lo, *hi), possibly empty.
 * Both ends are non-decreasing in i, which the tile skipping relies on. */
static void visible_keys(const sdpa_problem *p, int64_t b, int64_t i, int64_t *lo, int64_t *hi) {
  int64_t ip = key_position(p, b, i);
  int64_t l = 0, h = p->kv_lens ? p->kv_lens[b] : p->Lk;
  if (p->causal && ip + 1 < h)
    h = ip + 1;
  if (p->window) {
    if (ip - p->wl > l)
      l = ip - p->wl;
    if (ip + p->wr + 1 < h)
      h = ip + p->wr + 1;
  }
  if (h < l)
    h = l;
  *lo = l < 0 ? 0 : l;
  *hi = h < 0 ? 0 : h;
}

typedef struct {
  int64_t b, kvh, i0, n_pos; /* batch, kv head, first query position, positions */
} sdpa_item;

static sdpa_item item_of(const sdpa_problem *p, int64_t index) {
  sdpa_item it;
  /* Last query blocks first: under a causal mask they are the most work, and
   * the dynamic schedule then balances the short ones at the end. */
  int64_t qb = p->n_qblocks - 1 - index % p->n_qblocks;
  int64_t bh = index / p->n_qblocks;
  it.b = bh / p->Hkv;
  it.kvh = bh % p->Hkv;
  it.i0 = qb * p->nb;
  it.n_pos = p->Lq - it.i0 < p->nb ? p->Lq - it.i0 : p->nb;
  return it;
}

/* Row r of an item is query position i0 + r / G of head kvh * G + r % G. */
static int64_t row_pos(const sdpa_problem *p, const sdpa_item *it, int64_t r) {
  return it->i0 + r / p->G;
}
static int64_t row_head(const sdpa_problem *p, const sdpa_item *it, int64_t r) {
  return it->kvh * p->G + r % p->G;
}

static float *weights_row(const sdpa_problem *p, const sdpa_item *it, int64_t r) {
  return p->w + it->b * p->ws[0] + row_head(p, it, r) * p->ws[1] + row_pos(p, it, r) * p->ws[2];
}

/* Rows of a K or V tile for BLAS: in place when the row stride is usable as
 * a leading dimension, else copied into buf. */
static const float *tile_rows(const float *base, int64_t stride, int64_t n, int64_t cols,
                              bool gather, float *buf, int *ld) {
  if (!gather) {
    *ld = (int)(n > 1 ? stride : cols);
    return base;
  }
  for (int64_t j = 0; j < n; j++)
    memcpy(buf + j * cols, base + j * stride, (size_t)cols * sizeof(float));
  *ld = (int)cols;
  return buf;
}

/* Everything that is not a plain dot product, applied to one row's logits on
 * the visible columns [a, e) of the tile starting at key j0. */
static void adjust_logits(const sdpa_problem *p, const sdpa_item *it, int64_t r, float *s,
                          int64_t j0, int64_t a, int64_t e) {
  int64_t i = row_pos(p, it, r), h = row_head(p, it, r);
  int64_t j = j0 + a, n = e - a; /* first key, keys */
  float *z = s + a;
  if (p->softcap > 0)
    attn__logits_cap(z, n, p->softcap);
  if (p->alibi)
    attn__logits_alibi(z, n, p->alibi[h], j - key_position(p, it->b, i));
  const float *m =
      p->mask ? p->mask + it->b * p->ms[0] + h * p->ms[1] + i * p->ms[2] + j * p->ms[3] : NULL;
  const uint8_t *bm =
      p->bmask ? p->bmask + it->b * p->bs[0] + h * p->bs[1] + i * p->bs[2] + j * p->bs[3] : NULL;
  attn__logits_mask(z, n, m, p->ms[3], bm, p->bs[3]);
}

static bool all_finite(const float *x, int64_t rows, int64_t cols, int ld) {
  float acc = 0; /* x - x is 0 for finite x, NaN otherwise */
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < cols; c++)
      acc += x[r * ld + c] - x[r * ld + c];
  return acc == 0;
}

/* acc[rows, dv] += p[rows, n] v[n, dv], skipping zero weights. */
static void accumulate_nonzero(const float *p, int64_t rows, int64_t n, const float *v, int ldv,
                               int64_t dv, float *acc) {
  for (int64_t r = 0; r < rows; r++)
    for (int64_t j = 0; j < n; j++) {
      float w = p[r * BLOCK_KEYS + j];
      if (w == 0)
        continue;
      for (int64_t d = 0; d < dv; d++)
        acc[r * dv + d] += w * v[j * ldv + d];
    }
}

/* Online softmax over keys [kb, ke) for one item, accumulating into st. */
static void attend_chunk(const sdpa_problem *p, const sdpa_item *it, const sdpa_work *wk,
                         sdpa_state st, int64_t kb, int64_t ke, bool with_sink) {
  const attn_kernels *kern = attn__kernels();
  int64_t rows = it->n_pos * p->G, G = p->G;
  int64_t Dv = p->Dv;
  for (int64_t r = 0; r < rows; r++) {
    float sink = with_sink && p->sinks ? p->sinks[row_head(p, it, r)] : -INFINITY;
    /* A sink is a key with logit `sink` and a zero value vector. */
    st.m[r] = sink;
    st.l[r] = with_sink && p->sinks ? 1.0f : 0.0f;
  }
  memset(st.acc, 0, (size_t)rows * (size_t)Dv * sizeof(float));
  if (p->w)
    for (int64_t r = 0; r < rows; r++) {
      float *wr = weights_row(p, it, r);
      for (int64_t j = kb; j < ke; j++)
        wr[j] = -INFINITY;
    }

  int64_t lo_first, hi_first, lo_last, hi_last;
  visible_keys(p, it->b, it->i0, &lo_first, &hi_first);
  visible_keys(p, it->b, it->i0 + it->n_pos - 1, &lo_last, &hi_last);
  int64_t j_begin = lo_first > kb ? lo_first : kb;
  int64_t j_end = hi_last < ke ? hi_last : ke;
  bool plain = !p->softcap && !p->alibi && !p->mask && !p->bmask;

  const float *kbase = p->k + it->b * p->ks[0] + it->kvh * p->ks[1];
  const float *vbase = p->v + it->b * p->vs[0] + it->kvh * p->vs[1];
  for (int64_t j0 = j_begin; j0 < j_end; j0 += BLOCK_KEYS) {
    int64_t n = j_end - j0 < BLOCK_KEYS ? j_end - j0 : BLOCK_KEYS;
    int ldk, ldv;
    const float *kt =
        tile_rows(kbase + j0 * p->ks[2], p->ks[2], n, p->D, p->gather_k, wk->kbuf, &ldk);
    attn__sgemm_nt((int)rows, (int)n, (int)p->D, p->scale, wk->qbuf, (int)p->D, kt, ldk, wk->s,
                   BLOCK_KEYS);
    /* Tiles inside every row's visible range need no per-row bounds. */
    bool inside = j0 >= lo_last && j0 + n <= hi_first;
    for (int64_t r = 0; r < rows; r++) {
      float *s = wk->s + r * BLOCK_KEYS;
      int64_t a = 0, e = n;
      if (!inside) {
        int64_t lo, hi;
        visible_keys(p, it->b, it->i0 + r / G, &lo, &hi);
        a = lo > j0 ? lo - j0 : 0;
        e = hi < j0 + n ? hi - j0 : n;
        if (e < a)
          e = a;
      }
      if (!plain && e > a)
        adjust_logits(p, it, r, s, j0, a, e);
      if (p->w) {
        float *wr = weights_row(p, it, r) + j0;
        for (int64_t j = a; j < e; j++)
          wr[j] = s[j];
      }
      float m_old = st.m[r];
      float m_tile = e > a ? kern->row_max(s + a, e - a) : -INFINITY;
      float m_new = isnan(m_tile) || m_tile > m_old ? m_tile : m_old;
      for (int64_t j = 0; j < a; j++)
        s[j] = 0;
      for (int64_t j = e; j < n; j++)
        s[j] = 0;
      if (m_new == -INFINITY) { /* nothing visible in this row yet */
        for (int64_t j = a; j < e; j++)
          s[j] = 0;
        continue;
      }
      if (!isfinite(m_new)) { /* NaN, or a +inf logit: the row is NaN */
        for (int64_t j = a; j < e; j++)
          s[j] = NAN;
        st.m[r] = NAN;
        st.l[r] = NAN;
        continue;
      }
      float sum = e > a ? kern->exp_shift_sum(s + a, s + a, e - a, m_new) : 0.0f;
      if (m_new != m_old) {
        float corr = expf(m_old - m_new); /* 0 when m_old = -inf */
        st.l[r] *= corr;
        float *acc = st.acc + r * Dv;
        for (int64_t d = 0; d < Dv; d++)
          acc[d] *= corr;
        st.m[r] = m_new;
      }
      st.l[r] += sum;
    }
    const float *vt =
        tile_rows(vbase + j0 * p->vs[2], p->vs[2], n, Dv, p->gather_v, wk->vbuf, &ldv);
    /* A hidden key has weight 0, but 0 * NaN is NaN: where the tile may hide
     * keys and V holds a non-finite value, skip the zero weights by hand. */
    if ((inside && plain) || all_finite(vt, n, Dv, ldv))
      attn__sgemm_nn_acc((int)rows, (int)Dv, (int)n, wk->s, BLOCK_KEYS, vt, ldv, st.acc, (int)Dv);
    else
      accumulate_nonzero(wk->s, rows, n, vt, ldv, Dv, st.acc);
  }
}

/* Write out = acc / l, the log-sum-exp and the normalised weights. */
static void finish_item(const sdpa_problem *p, const sdpa_item *it, sdpa_state st) {
  int64_t rows = it->n_pos * p->G;
  for (int64_t r = 0; r < rows; r++) {
    int64_t i = row_pos(p, it, r), h = row_head(p, it, r);
    float *o = p->out + it->b * p->os[0] + h * p->os[1] + i * p->os[2];
    const float *acc = st.acc + r * p->Dv;
    float m = st.m[r], l = st.l[r];
    bool empty = m == -INFINITY || l == 0;
    float inv = empty ? 0.0f : 1.0f / l;
    for (int64_t d = 0; d < p->Dv; d++)
      o[d] = empty ? 0.0f : acc[d] * inv;
    float lse = empty ? -INFINITY : m + logf(l);
    if (p->lse)
      p->lse[it->b * p->lses[0] + h * p->lses[1] + i * p->lses[2]] = lse;
    if (p->w) { /* exp(s - m) / l: exp(s - lse) would carry lse's rounding */
      float *wr = weights_row(p, it, r);
      for (int64_t j = 0; j < p->Lk; j++)
        wr[j] = wr[j] == -INFINITY || empty ? 0.0f : expf(wr[j] - m) * inv;
    }
  }
}

static void gather_queries(const sdpa_problem *p, const sdpa_item *it, float *qbuf) {
  int64_t rows = it->n_pos * p->G;
  for (int64_t r = 0; r < rows; r++) {
    const float *src =
        p->q + it->b * p->qs[0] + row_head(p, it, r) * p->qs[1] + row_pos(p, it, r) * p->qs[2];
    memcpy(qbuf + r * p->D, src, (size_t)p->D * sizeof(float));
  }
}

static void run_item(void *arg, int64_t index, int32_t worker) {
  const sdpa_problem *p = arg;
  sdpa_item it = item_of(p, index);
  const sdpa_work *wk = &p->works[worker];
  gather_queries(p, &it, wk->qbuf);
  attend_chunk(p, &it, wk, wk->st, 0, p->Lk, true);
  finish_item(p, &it, wk->st);
}

/* Split path, phase 1: one key chunk of one item into its own state. */
static void run_chunk(void *arg, int64_t index, int32_t worker) {
  const sdpa_problem *p = arg;
  int64_t item = index / p->n_split, c = index % p->n_split;
  sdpa_item it = item_of(p, item);
  const sdpa_work *wk = &p->works[worker];
  sdpa_state st = state_at(p, p->states + (size_t)index * state_floats(p));
  int64_t kb = c * p->chunk_keys, ke = kb + p->chunk_keys < p->Lk ? kb + p->chunk_keys : p->Lk;
  gather_queries(p, &it, wk->qbuf);
  attend_chunk(p, &it, wk, st, kb, ke, c == 0);
}

/* Split path, phase 2: merge an item's chunks through their maxima and sums. */
static void merge_chunks(void *arg, int64_t item, int32_t worker) {
  const sdpa_problem *p = arg;
  (void)worker;
  sdpa_item it = item_of(p, item);
  int64_t rows = it.n_pos * p->G;
  sdpa_state first = state_at(p, p->states + (size_t)item * (size_t)p->n_split * state_floats(p));
  for (int64_t c = 1; c < p->n_split; c++) {
    sdpa_state other =
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
  finish_item(p, &it, first);
}

/* Tiling, split, threads and the exact workspace (p->ws_bytes). */
static void plan_problem(const attn_ctx *ctx, sdpa_problem *p) {
  p->nb = BLOCK_ROWS / p->G > 0 ? BLOCK_ROWS / p->G : 1;
  if (p->nb > p->Lq)
    p->nb = p->Lq;
  p->n_qblocks = (p->Lq + p->nb - 1) / p->nb;
  p->rows_max = p->nb * p->G;
  p->n_items = p->B * p->Hkv * p->n_qblocks;
  p->gather_k = p->Lk > 1 && (p->ks[2] < p->D || p->ks[2] > INT32_MAX);
  p->gather_v = p->Lk > 1 && (p->vs[2] < p->Dv || p->vs[2] > INT32_MAX);

  double work =
      (double)p->B * (double)p->Hq * (double)p->Lq * (double)p->Lk * (double)(p->D + p->Dv);
  int32_t threads = attn__threads_plan(ctx, work, 1 << 20, 0);
  /* With a multi-threaded BLAS, our workers' concurrent calls would queue
   * behind one another: let the BLAS use its threads inside each call. */
  if (attn__blas_threads() > 1)
    threads = 1;
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
  int64_t tasks = p->n_items * p->n_split;
  if (threads > tasks)
    threads = (int32_t)tasks;

  p->threads = threads;
  attn_ws_layout l = {0};
  sdpa_layout(p, &l);
  p->ws_bytes = l.used;
}

/* Run a planned problem inside the workspace reserved for it. */
static void run_problem(attn_ctx *ctx, sdpa_problem *p) {
  size_t mark = attn__ws_mark(ctx);
  attn_ws_layout l = {attn__ws_alloc(ctx, p->ws_bytes), 0};
  sdpa_layout(p, &l);
  if (p->n_split == 1) {
    attn__parallel_for(ctx, p->threads, p->n_items, run_item, p);
  } else {
    attn__parallel_for(ctx, p->threads, p->n_items * p->n_split, run_chunk, p);
    attn__parallel_for(ctx, p->threads, p->n_items, merge_chunks, p);
  }
  attn__ws_release(ctx, mark);
}

/* ---- validation ---- */

void attn_sdpa_params_init(attn_sdpa_params *p) {
  if (!p)
    return;
  memset(p, 0, sizeof *p);
  p->struct_size = sizeof *p;
}

static attn_status check_heads(attn_ctx *ctx, int64_t Hq, int64_t Hkv) {
  if (Hq % Hkv)
    return attn__fail(ctx, ATTN_ERR_SHAPE,
                      "q has %lld heads but k has %lld: the query heads must be a "
                      "multiple of the kv heads",
                      (long long)Hq, (long long)Hkv);
  return ATTN_OK;
}

/* Parameter checks that do not depend on the tensors' layout. */
static attn_status check_params(attn_ctx *ctx, const attn_sdpa_params *p, int64_t B, int64_t Hq,
                                int64_t Lk, int64_t D) {
  if (!isfinite(p->scale))
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG, "params.scale = %g but must be finite",
                      (double)p->scale);
  if (!isfinite(p->softcap) || p->softcap < 0)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "params.softcap = %g but must be finite and >= 0 (0 = off)",
                      (double)p->softcap);
  if (p->align != ATTN_ALIGN_TOP_LEFT && p->align != ATTN_ALIGN_BOTTOM_RIGHT)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG, "params.align = %d is not an attn_align",
                      (int)p->align);
  if (p->reserved_)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG, "params.reserved_ must be 0");
  if (p->window && (p->window_left < 0 || p->window_right < 0))
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "params.window_left = %lld, window_right = %lld but both must be "
                      ">= 0",
                      (long long)p->window_left, (long long)p->window_right);
  if (p->q_offsets) {
    if (p->align != ATTN_ALIGN_TOP_LEFT)
      return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                        "params.align = %d but must be ATTN_ALIGN_TOP_LEFT when "
                        "params.q_offsets is set (the offsets replace the alignment)",
                        (int)p->align);
    for (int64_t b = 0; b < B; b++)
      if (p->q_offsets[b] < -MAX_Q_OFFSET || p->q_offsets[b] > MAX_Q_OFFSET)
        return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                          "params.q_offsets[%lld] = %lld but must be in -2^60..2^60", (long long)b,
                          (long long)p->q_offsets[b]);
  }
  if (p->kv_lens)
    for (int64_t b = 0; b < B; b++)
      if (p->kv_lens[b] < 0 || p->kv_lens[b] > Lk)
        return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                          "params.kv_lens[%lld] = %lld but must be in 0..Lk = %lld", (long long)b,
                          (long long)p->kv_lens[b], (long long)Lk);
  const float *arrays[2] = {p->alibi_slopes, p->sinks};
  const char *names[2] = {"alibi_slopes", "sinks"};
  for (int a = 0; a < 2; a++)
    if (arrays[a])
      for (int64_t h = 0; h < Hq; h++)
        if (!isfinite(arrays[a][h]))
          return attn__fail(ctx, ATTN_ERR_INVALID_ARG, "params.%s[%lld] = %g but must be finite",
                            names[a], (long long)h, (double)arrays[a][h]);
  if (D > INT32_MAX || Lk > INT32_MAX)
    return attn__fail(ctx, ATTN_ERR_OVERFLOW,
                      "D = %lld or Lk = %lld exceeds what BLAS takes (2^31 - 1)", (long long)D,
                      (long long)Lk);
  return ATTN_OK;
}

static void fill_common(sdpa_problem *p, const attn_sdpa_params *prm) {
  p->scale = prm->scale != 0 ? prm->scale : (float)(1.0 / sqrt((double)p->D));
  p->softcap = prm->softcap;
  p->causal = prm->causal != 0;
  p->window = prm->window != 0;
  /* Clamp the extents so i' +- extent cannot overflow: |i'| < Lq + Lk +
   * MAX_Q_OFFSET, so a longer extent reaches past every key all the same. */
  int64_t far = p->Lq + p->Lk + MAX_Q_OFFSET;
  p->wl = prm->window_left < far ? prm->window_left : far;
  p->wr = prm->window_right < far ? prm->window_right : far;
  p->bottom_right = prm->align == ATTN_ALIGN_BOTTOM_RIGHT;
  p->alibi = prm->alibi_slopes;
  p->sinks = prm->sinks;
}

/* Check attn_sdpa's operands and params into a problem. */
static attn_status sdpa_check(attn_ctx *ctx, const attn_tensor *q, const attn_tensor *k,
                              const attn_tensor *v, attn_tensor *out,
                              const attn_sdpa_params *params, sdpa_problem *p) {
  attn_sdpa_params prm;
  attn_sdpa_params_init(&prm);
  attn_status st = attn__read_params(ctx, &prm, sizeof prm, params);
  if (st != ATTN_OK)
    return st;
  enum { B = ATTN_SYM_B, HQ = ATTN_SYM_HQ, HKV = ATTN_SYM_HKV, LQ = ATTN_SYM_LQ };
  enum { LK = ATTN_SYM_LK, D = ATTN_SYM_D, DV = ATTN_SYM_DV };
  const uint8_t opt_in = ATTN_OPND_OPTIONAL | ATTN_OPND_BROADCAST;
  const uint8_t opt_out = ATTN_OPND_OPTIONAL | ATTN_OPND_OUTPUT;
  int64_t ms[4] = {0}, bs[4] = {0};
  const attn_operand ops[] = {
      {ATTN_OPERAND("q", q, ATTN_DT_F32, 4, 4), .sym = {B, HQ, LQ, D}},
      {ATTN_OPERAND("k", k, ATTN_DT_F32, 4, 4), .sym = {B, HKV, LK, D}},
      {ATTN_OPERAND("v", v, ATTN_DT_F32, 4, 4), .sym = {B, HKV, LK, DV}},
      {ATTN_OPERAND("params.mask", prm.mask, ATTN_DT_F32, 1, 4), .flags = opt_in, .bcast_nd = 4,
       .bcast = {B, HQ, LQ, LK}, .bstrides = ms},
      {ATTN_OPERAND("params.bool_mask", prm.bool_mask, ATTN_DT_U8, 1, 4), .flags = opt_in,
       .bcast_nd = 4, .bcast = {B, HQ, LQ, LK}, .bstrides = bs},
      {ATTN_OPERAND("out", out, ATTN_DT_F32, 4, 4), .sym = {B, HQ, LQ, DV},
       .flags = ATTN_OPND_OUTPUT},
      {ATTN_OPERAND("params.lse", prm.lse, ATTN_DT_F32, 3, 3), .sym = {B, HQ, LQ},
       .flags = opt_out},
      {ATTN_OPERAND("params.weights", prm.weights, ATTN_DT_F32, 4, 4), .sym = {B, HQ, LQ, LK},
       .flags = opt_out},
  };
  attn_dims d;
  if ((st = attn__check_operands(ctx, ops, 8, &d)) != ATTN_OK ||
      (st = check_heads(ctx, d.v[HQ], d.v[HKV])) != ATTN_OK ||
      (st = check_params(ctx, &prm, d.v[B], d.v[HQ], d.v[LK], d.v[D])) != ATTN_OK)
    return st;
  memset(p, 0, sizeof *p);
  p->B = d.v[B], p->Hq = d.v[HQ], p->Hkv = d.v[HKV], p->G = p->Hq / p->Hkv;
  p->Lq = d.v[LQ], p->Lk = d.v[LK], p->D = d.v[D], p->Dv = d.v[DV];
  p->q = q->data, p->k = k->data, p->v = v->data, p->out = out->data;
  memcpy(p->qs, q->strides, sizeof p->qs);
  memcpy(p->ks, k->strides, sizeof p->ks);
  memcpy(p->vs, v->strides, sizeof p->vs);
  memcpy(p->os, out->strides, sizeof p->os);
  if (prm.mask) {
    p->mask = prm.mask->data;
    memcpy(p->ms, ms, sizeof ms);
  }
  if (prm.bool_mask) {
    p->bmask = prm.bool_mask->data;
    memcpy(p->bs, bs, sizeof bs);
  }
  if (prm.lse) {
    p->lse = prm.lse->data;
    memcpy(p->lses, prm.lse->strides, sizeof p->lses);
  }
  if (prm.weights) {
    p->w = prm.weights->data;
    memcpy(p->ws, prm.weights->strides, sizeof p->ws);
  }
  p->kv_lens = prm.kv_lens;
  p->q_offsets = prm.q_offsets;
  fill_common(p, &prm);
  return ATTN_OK;
}

attn_status attn__sdpa(attn_ctx *ctx, const attn_tensor *q, const attn_tensor *k,
                       const attn_tensor *v, attn_tensor *out, const attn_sdpa_params *params) {
  sdpa_problem p;
  attn_status st = sdpa_check(ctx, q, k, v, out, params, &p);
  if (st == ATTN_OK) {
    plan_problem(ctx, &p);
    if ((st = attn__ws_reserve(ctx, p.ws_bytes)) == ATTN_OK)
      run_problem(ctx, &p);
  }
  return st;
}

attn_status attn_sdpa(attn_ctx *ctx, const attn_tensor *q, const attn_tensor *k,
                      const attn_tensor *v, attn_tensor *out, const attn_sdpa_params *params) {
  attn_status st = attn__op_begin(ctx, "attn_sdpa");
  if (st != ATTN_OK)
    return st;
  return attn__op_end(ctx, attn__sdpa(ctx, q, k, v, out, params));
}

static attn_status check_offsets(attn_ctx *ctx, const char *name, const int64_t *cu, int32_t batch,
                                 int64_t total) {
  if (!cu)
    return attn__fail(ctx, ATTN_ERR_NULL_ARG, "%s is NULL", name);
  if (cu[0] != 0)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG, "%s[0] = %lld but must be 0", name,
                      (long long)cu[0]);
  for (int32_t b = 0; b < batch; b++)
    if (cu[b + 1] < cu[b])
      return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                        "%s[%d] = %lld < %s[%d] = %lld but offsets must not decrease", name,
                        (int)b + 1, (long long)cu[b + 1], name, (int)b, (long long)cu[b]);
  if (cu[batch] != total)
    return attn__fail(ctx, ATTN_ERR_SHAPE, "%s[%d] = %lld but must equal the token count %lld",
                      name, (int)batch, (long long)cu[batch], (long long)total);
  return ATTN_OK;
}

/* Sequence s of a packed batch as a [1, H, L, D] view of the tensors. */
static void varlen_problem(sdpa_problem *p, const attn_sdpa_params *prm, const attn_tensor *q,
                           const attn_tensor *k, const attn_tensor *v, attn_tensor *out, int32_t s,
                           const int64_t *cu_q, const int64_t *cu_k) {
  memset(p, 0, sizeof *p);
  p->B = 1, p->Hq = q->dims[1], p->Hkv = k->dims[1], p->G = p->Hq / p->Hkv;
  p->D = q->dims[2], p->Dv = v->dims[2];
  p->Lq = cu_q[s + 1] - cu_q[s];
  p->Lk = cu_k[s + 1] - cu_k[s];
  /* An empty range may start at the token count, one past the last token,
   * where an axis of size 1 has an arbitrary stride: do not offset by it. */
  int64_t q0 = p->Lq ? cu_q[s] : 0, k0 = p->Lk ? cu_k[s] : 0;
  const attn_tensor *ts[4] = {q, k, v, out};
  int64_t *strides[4] = {p->qs, p->ks, p->vs, p->os};
  for (int t = 0; t < 4; t++) {
    strides[t][0] = 0;
    strides[t][1] = ts[t]->strides[1];
    strides[t][2] = ts[t]->strides[0];
    strides[t][3] = 1;
  }
  p->q = (const float *)q->data + q0 * q->strides[0];
  p->k = (const float *)k->data + k0 * k->strides[0];
  p->v = (const float *)v->data + k0 * v->strides[0];
  p->out = (float *)out->data + q0 * out->strides[0];
  if (prm->lse) {
    p->lse = (float *)prm->lse->data + q0 * prm->lse->strides[1];
    p->lses[0] = 0;
    p->lses[1] = prm->lse->strides[0];
    p->lses[2] = 1;
  }
  p->q_offsets = prm->q_offsets ? prm->q_offsets + s : NULL; /* one per sequence */
  fill_common(p, prm);
}

/* Check attn_sdpa_varlen's operands and params; *prm gets the params. */
static attn_status varlen_check(attn_ctx *ctx, const attn_tensor *q, const attn_tensor *k,
                                const attn_tensor *v, attn_tensor *out, int32_t batch,
                                const int64_t *cu_q, const int64_t *cu_k,
                                const attn_sdpa_params *params, attn_sdpa_params *prm) {
  attn_sdpa_params_init(prm);
  attn_status st = attn__read_params(ctx, prm, sizeof *prm, params);
  if (st != ATTN_OK)
    return st;
  if (prm->mask || prm->bool_mask || prm->kv_lens || prm->weights)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "params.mask, bool_mask, kv_lens and weights must be NULL (packed "
                      "sequences are masked by their offsets)");
  if (batch < 1)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG, "batch = %d but must be >= 1", (int)batch);
  enum { TQ = ATTN_SYM_TQ, TK = ATTN_SYM_TK, HQ = ATTN_SYM_HQ, HKV = ATTN_SYM_HKV };
  enum { D = ATTN_SYM_D, DV = ATTN_SYM_DV };
  const attn_operand ops[] = {
      {ATTN_OPERAND("q", q, ATTN_DT_F32, 3, 3), .sym = {TQ, HQ, D}},
      {ATTN_OPERAND("k", k, ATTN_DT_F32, 3, 3), .sym = {TK, HKV, D}},
      {ATTN_OPERAND("v", v, ATTN_DT_F32, 3, 3), .sym = {TK, HKV, DV}},
      {ATTN_OPERAND("out", out, ATTN_DT_F32, 3, 3), .sym = {TQ, HQ, DV}, .flags = ATTN_OPND_OUTPUT},
      {ATTN_OPERAND("params.lse", prm->lse, ATTN_DT_F32, 2, 2), .sym = {HQ, TQ},
       .flags = ATTN_OPND_OPTIONAL | ATTN_OPND_OUTPUT},
  };
  attn_dims d;
  if ((st = attn__check_operands(ctx, ops, 5, &d)) != ATTN_OK ||
      (st = check_heads(ctx, d.v[HQ], d.v[HKV])) != ATTN_OK ||
      (st = check_offsets(ctx, "cu_seqlens_q", cu_q, batch, d.v[TQ])) != ATTN_OK ||
      (st = check_offsets(ctx, "cu_seqlens_k", cu_k, batch, d.v[TK])) != ATTN_OK)
    return st;
  return check_params(ctx, prm, batch, d.v[HQ], d.v[TK], d.v[D]);
}

attn_status attn_sdpa_varlen(attn_ctx *ctx, const attn_tensor *q, const attn_tensor *k,
                             const attn_tensor *v, attn_tensor *out, int32_t batch,
                             const int64_t *cu_q, const int64_t *cu_k,
                             const attn_sdpa_params *params) {
  attn_status st = attn__op_begin(ctx, "attn_sdpa_varlen");
  if (st != ATTN_OK)
    return st;
  attn_sdpa_params prm;
  if ((st = varlen_check(ctx, q, k, v, out, batch, cu_q, cu_k, params, &prm)) != ATTN_OK)
    return attn__op_end(ctx, st);
  /* Every sequence's plan and the largest workspace come first: failing
   * half-way would leave the earlier sequences' outputs written. */
  size_t most = 0;
  for (int32_t s = 0; s < batch; s++) {
    sdpa_problem p;
    varlen_problem(&p, &prm, q, k, v, out, s, cu_q, cu_k);
    if (p.Lq == 0)
      continue;
    plan_problem(ctx, &p);
    most = p.ws_bytes > most ? p.ws_bytes : most;
  }
  if ((st = attn__ws_reserve(ctx, most)) == ATTN_OK)
    for (int32_t s = 0; s < batch; s++) {
      sdpa_problem p;
      varlen_problem(&p, &prm, q, k, v, out, s, cu_q, cu_k);
      if (p.Lq == 0)
        continue;
      plan_problem(ctx, &p);
      run_problem(ctx, &p);
    }
  return attn__op_end(ctx, st);
}
