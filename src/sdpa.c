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
#include "internal.h"
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
  /* workspace */
  char *work;
  size_t work_per_thread;
  float *states; /* n_items * n_split partial results when n_split > 1 */
} sdpa_problem;

/* Per-thread workspace, carved out of the context's scratch. */
typedef struct {
  float *qbuf; /* rows x D, the block's queries gathered contiguous */
  float *s;    /* rows x BLOCK_KEYS: logits, then probabilities */
  float *kbuf; /* BLOCK_KEYS x D, when K rows cannot be handed to BLAS as they are */
  float *vbuf; /* BLOCK_KEYS x Dv, likewise for V */
} sdpa_work;

/* Online-softmax state of a block's rows: acc (rows x Dv), m and l (rows). */
typedef struct {
  float *acc, *m, *l;
} sdpa_state;

static size_t round_up(size_t n) { return (n + ATTN_ALIGN - 1) & ~(size_t)(ATTN_ALIGN - 1); }

static size_t state_floats(const sdpa_problem *p) {
  return (size_t)p->rows_max * (size_t)(p->Dv + 2);
}

static sdpa_state state_at(const sdpa_problem *p, float *base) {
  sdpa_state st = {base, base + p->rows_max * p->Dv, base + p->rows_max * (p->Dv + 1)};
  return st;
}

static sdpa_work work_of(const sdpa_problem *p, int32_t worker, sdpa_state *st) {
  char *base = p->work + p->work_per_thread * (size_t)worker;
  sdpa_work w;
  size_t off = 0;
  w.qbuf = (float *)(base + off);
  off += round_up((size_t)p->rows_max * (size_t)p->D * sizeof(float));
  w.s = (float *)(base + off);
  off += round_up((size_t)p->rows_max * BLOCK_KEYS * sizeof(float));
  w.kbuf = (float *)(base + off);
  off += p->gather_k ? round_up((size_t)BLOCK_KEYS * (size_t)p->D * sizeof(float)) : 0;
  w.vbuf = (float *)(base + off);
  off += p->gather_v ? round_up((size_t)BLOCK_KEYS * (size_t)p->Dv * sizeof(float)) : 0;
  *st = state_at(p, (float *)(base + off));
  return w;
}

static size_t work_bytes(const sdpa_problem *p) {
  return round_up((size_t)p->rows_max * (size_t)p->D * sizeof(float)) +
         round_up((size_t)p->rows_max * BLOCK_KEYS * sizeof(float)) +
         (p->gather_k ? round_up((size_t)BLOCK_KEYS * (size_t)p->D * sizeof(float)) : 0) +
         (p->gather_v ? round_up((size_t)BLOCK_KEYS * (size_t)p->Dv * sizeof(float)) : 0) +
         round_up(state_floats(p) * sizeof(float));
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
static void visible_keys(const sdpa_problem *p, int64_t b, int64_t i, int64_t *lo,
                         int64_t *hi) {
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
  if (p->softcap > 0) {
    /* Divide rather than multiply by 1/c: for a subnormal c, 1/c is inf and
     * a zero logit would give NaN. tanhf costs far more than the division. */
    float c = p->softcap;
    for (int64_t j = a; j < e; j++)
      s[j] = c * tanhf(s[j] / c);
  }
  if (p->alibi) {
    float slope = p->alibi[h];
    int64_t ip = key_position(p, it->b, i);
    for (int64_t j = a; j < e; j++)
      s[j] += slope * (float)(j0 + j - ip);
  }
  if (p->mask) {
    const float *mrow = p->mask + it->b * p->ms[0] + h * p->ms[1] + i * p->ms[2] + j0 * p->ms[3];
    for (int64_t j = a; j < e; j++) {
      float mv = mrow[j * p->ms[3]];
      s[j] = mv == -INFINITY ? -INFINITY : s[j] + mv; /* hidden, even if s is NaN */
    }
  }
  if (p->bmask) {
    const uint8_t *brow =
        p->bmask + it->b * p->bs[0] + h * p->bs[1] + i * p->bs[2] + j0 * p->bs[3];
    for (int64_t j = a; j < e; j++)
      if (!brow[j * p->bs[3]])
        s[j] = -INFINITY;
  }
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
    const float *kt = tile_rows(kbase + j0 * p->ks[2], p->ks[2], n, p->D, p->gather_k,
                                wk->kbuf, &ldk);
    attn__sgemm_nt((int)rows, (int)n, (int)p->D, p->scale, wk->qbuf, (int)p->D, kt, ldk,
                   wk->s, BLOCK_KEYS);
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
    const float *vt = tile_rows(vbase + j0 * p->vs[2], p->vs[2], n, Dv, p->gather_v,
                                wk->vbuf, &ldv);
    /* A hidden key has weight 0, but 0 * NaN is NaN: where the tile may hide
     * keys and V holds a non-finite value, skip the zero weights by hand. */
    if ((inside && plain) || all_finite(vt, n, Dv, ldv))
      attn__sgemm_nn_acc((int)rows, (int)Dv, (int)n, wk->s, BLOCK_KEYS, vt, ldv, st.acc,
                         (int)Dv);
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
    const float *src = p->q + it->b * p->qs[0] + row_head(p, it, r) * p->qs[1] +
                       row_pos(p, it, r) * p->qs[2];
    memcpy(qbuf + r * p->D, src, (size_t)p->D * sizeof(float));
  }
}

static void run_item(void *arg, int64_t index, int32_t worker) {
  const sdpa_problem *p = arg;
  sdpa_item it = item_of(p, index);
  sdpa_state st;
  sdpa_work wk = work_of(p, worker, &st);
  gather_queries(p, &it, wk.qbuf);
  attend_chunk(p, &it, &wk, st, 0, p->Lk, true);
  finish_item(p, &it, st);
}

/* Split path, phase 1: one key chunk of one item into its own state. */
static void run_chunk(void *arg, int64_t index, int32_t worker) {
  const sdpa_problem *p = arg;
  int64_t item = index / p->n_split, c = index % p->n_split;
  sdpa_item it = item_of(p, item);
  sdpa_state scratch_state;
  sdpa_work wk = work_of(p, worker, &scratch_state);
  sdpa_state st = state_at(p, p->states + (size_t)index * state_floats(p));
  int64_t kb = c * p->chunk_keys, ke = kb + p->chunk_keys < p->Lk ? kb + p->chunk_keys : p->Lk;
  gather_queries(p, &it, wk.qbuf);
  attend_chunk(p, &it, &wk, st, kb, ke, c == 0);
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

/* Tiling and threads; the workspace it needs goes to *total. */
static attn_status plan_problem(attn_ctx *ctx, const char *fn, sdpa_problem *p,
                                int32_t *threads_out, size_t *total_out) {
  p->nb = BLOCK_ROWS / p->G > 0 ? BLOCK_ROWS / p->G : 1;
  if (p->nb > p->Lq)
    p->nb = p->Lq;
  p->n_qblocks = (p->Lq + p->nb - 1) / p->nb;
  p->rows_max = p->nb * p->G;
  p->n_items = p->B * p->Hkv * p->n_qblocks;
  p->gather_k = p->Lk > 1 && (p->ks[2] < p->D || p->ks[2] > INT32_MAX);
  p->gather_v = p->Lk > 1 && (p->vs[2] < p->Dv || p->vs[2] > INT32_MAX);

  double work = (double)p->B * (double)p->Hq * (double)p->Lq * (double)p->Lk *
                (double)(p->D + p->Dv);
  int32_t threads = attn__threads_for(ctx, work, 1 << 20);
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

  p->work_per_thread = work_bytes(p);
  size_t states_bytes =
      p->n_split > 1 ? (size_t)tasks * state_floats(p) * sizeof(float) : 0;
  size_t total = 0;
  if (__builtin_mul_overflow(p->work_per_thread, (size_t)threads, &total) ||
      __builtin_add_overflow(total, states_bytes, &total))
    return attn__fail(ctx, ATTN_ERR_OVERFLOW, "%s: workspace size overflows", fn);
  *threads_out = threads;
  *total_out = total;
  return ATTN_OK;
}

/* Plan, take the workspace, run. */
static attn_status run_problem(attn_ctx *ctx, const char *fn, sdpa_problem *p) {
  int32_t threads = 1;
  size_t total = 0;
  attn_status st = plan_problem(ctx, fn, p, &threads, &total);
  if (st != ATTN_OK)
    return st;
  int64_t tasks = p->n_items * p->n_split;
  char *mem = attn__scratch(ctx, fn, total);
  if (!mem)
    return ATTN_ERR_NO_MEMORY;
  p->work = mem;
  p->states = (float *)(mem + p->work_per_thread * (size_t)threads);

  if (p->n_split == 1) {
    attn__parallel_for(ctx, threads, p->n_items, run_item, p);
  } else {
    attn__parallel_for(ctx, threads, tasks, run_chunk, p);
    attn__parallel_for(ctx, threads, p->n_items, merge_chunks, p);
  }
  return ATTN_OK;
}

/* ---- validation ---- */

void attn_sdpa_params_init(attn_sdpa_params *p) {
  if (!p)
    return;
  memset(p, 0, sizeof *p);
  p->struct_size = sizeof *p;
}

static attn_status check_dim(attn_ctx *ctx, const char *fn, const char *name,
                             const attn_tensor *t, int axis, int64_t want, const char *what) {
  if (t->dims[axis] != want)
    return attn__fail(ctx, ATTN_ERR_SHAPE, "%s: %s.shape[%d] = %lld but %s is %lld", fn, name,
                      axis, (long long)t->dims[axis], what, (long long)want);
  return ATTN_OK;
}

/* Outputs must not overlap inputs or one another. */
static attn_status check_disjoint(attn_ctx *ctx, const char *fn, const char *out_name,
                                  const attn_tensor *out, const char *const *names,
                                  const attn_tensor *const *others, int n) {
  for (int i = 0; i < n; i++)
    if (others[i] && attn__overlap(out, others[i]))
      return attn__fail(ctx, ATTN_ERR_ALIASING, "%s: %s overlaps %s in memory", fn, out_name,
                        names[i]);
  return ATTN_OK;
}

/* An optional output: a live F32 tensor of the wanted shape, writable, and
 * overlapping none of `others` (the inputs and the outputs checked before). */
static attn_status check_output(attn_ctx *ctx, const char *fn, const char *name,
                                const attn_tensor *t, int32_t ndim, const int64_t *want,
                                const char *shape_text, const char *const *names,
                                const attn_tensor *const *others, int n_others) {
  attn_status st = attn__check_tensor(ctx, fn, name, t, ATTN_DTYPE_F32, ndim, ndim);
  if (st != ATTN_OK)
    return st;
  for (int a = 0; a < ndim; a++)
    if (t->dims[a] != want[a])
      return attn__fail(ctx, ATTN_ERR_SHAPE, "%s: %s.shape[%d] = %lld but must be %lld (%s)",
                        fn, name, a, (long long)t->dims[a], (long long)want[a], shape_text);
  if ((st = attn__check_writable(ctx, fn, name, t)) != ATTN_OK)
    return st;
  return check_disjoint(ctx, fn, name, t, names, others, n_others);
}

/* q, k, v and out: live F32 tensors of ndim dims. */
static attn_status check_operands(attn_ctx *ctx, const char *fn, const attn_tensor *q,
                                  const attn_tensor *k, const attn_tensor *v,
                                  const attn_tensor *out, int32_t ndim) {
  attn_status st;
  if ((st = attn__check_tensor(ctx, fn, "q", q, ATTN_DTYPE_F32, ndim, ndim)) ||
      (st = attn__check_tensor(ctx, fn, "k", k, ATTN_DTYPE_F32, ndim, ndim)) ||
      (st = attn__check_tensor(ctx, fn, "v", v, ATTN_DTYPE_F32, ndim, ndim)) ||
      (st = attn__check_tensor(ctx, fn, "out", out, ATTN_DTYPE_F32, ndim, ndim)))
    return st;
  return ATTN_OK;
}

static attn_status check_heads(attn_ctx *ctx, const char *fn, int64_t Hq, int64_t Hkv) {
  if (Hq % Hkv)
    return attn__fail(ctx, ATTN_ERR_SHAPE,
                      "%s: q has %lld heads but k has %lld: the query heads must be a "
                      "multiple of the kv heads",
                      fn, (long long)Hq, (long long)Hkv);
  return ATTN_OK;
}

/* Parameter checks that do not depend on the tensors' layout. */
static attn_status check_params(attn_ctx *ctx, const char *fn, const attn_sdpa_params *p,
                                int64_t B, int64_t Hq, int64_t Lk, int64_t D) {
  if (!isfinite(p->scale))
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG, "%s: params.scale = %g but must be finite",
                      fn, (double)p->scale);
  if (!isfinite(p->softcap) || p->softcap < 0)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "%s: params.softcap = %g but must be finite and >= 0 (0 = off)", fn,
                      (double)p->softcap);
  if (p->align != ATTN_ALIGN_TOP_LEFT && p->align != ATTN_ALIGN_BOTTOM_RIGHT)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG, "%s: params.align = %d is not an attn_align",
                      fn, (int)p->align);
  if (p->reserved_)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG, "%s: params.reserved_ must be 0", fn);
  if (p->window && (p->window_left < 0 || p->window_right < 0))
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "%s: params.window_left = %lld, window_right = %lld but both must be "
                      ">= 0",
                      fn, (long long)p->window_left, (long long)p->window_right);
  if (p->q_offsets) {
    if (p->align != ATTN_ALIGN_TOP_LEFT)
      return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                        "%s: params.align = %d but must be ATTN_ALIGN_TOP_LEFT when "
                        "params.q_offsets is set (the offsets replace the alignment)",
                        fn, (int)p->align);
    for (int64_t b = 0; b < B; b++)
      if (p->q_offsets[b] < -MAX_Q_OFFSET || p->q_offsets[b] > MAX_Q_OFFSET)
        return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                          "%s: params.q_offsets[%lld] = %lld but must be in -2^60..2^60", fn,
                          (long long)b, (long long)p->q_offsets[b]);
  }
  if (p->kv_lens)
    for (int64_t b = 0; b < B; b++)
      if (p->kv_lens[b] < 0 || p->kv_lens[b] > Lk)
        return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                          "%s: params.kv_lens[%lld] = %lld but must be in 0..Lk = %lld", fn,
                          (long long)b, (long long)p->kv_lens[b], (long long)Lk);
  const float *arrays[2] = {p->alibi_slopes, p->sinks};
  const char *names[2] = {"alibi_slopes", "sinks"};
  for (int a = 0; a < 2; a++)
    if (arrays[a])
      for (int64_t h = 0; h < Hq; h++)
        if (!isfinite(arrays[a][h]))
          return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                            "%s: params.%s[%lld] = %g but must be finite", fn, names[a],
                            (long long)h, (double)arrays[a][h]);
  if (D > INT32_MAX || Lk > INT32_MAX)
    return attn__fail(ctx, ATTN_ERR_OVERFLOW,
                      "%s: D = %lld or Lk = %lld exceeds what BLAS takes (2^31 - 1)", fn,
                      (long long)D, (long long)Lk);
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

attn_status attn_sdpa(attn_ctx *ctx, const attn_tensor *q, const attn_tensor *k,
                      const attn_tensor *v, attn_tensor *out, const attn_sdpa_params *params) {
  static const char fn[] = "attn_sdpa";
  attn_status st = attn__check_ctx(ctx);
  if (st != ATTN_OK)
    return st;
  attn_sdpa_params prm;
  attn_sdpa_params_init(&prm);
  if ((st = attn__read_params(ctx, fn, &prm, sizeof prm, params)) != ATTN_OK ||
      (st = check_operands(ctx, fn, q, k, v, out, 4)) != ATTN_OK)
    return st;
  int64_t B = q->dims[0], Hq = q->dims[1], Lq = q->dims[2], D = q->dims[3];
  int64_t Hkv = k->dims[1], Lk = k->dims[2], Dv = v->dims[3];
  if ((st = check_dim(ctx, fn, "k", k, 0, B, "the batch size q.shape[0]")) ||
      (st = check_dim(ctx, fn, "k", k, 3, D, "the head dim q.shape[3]")) ||
      (st = check_dim(ctx, fn, "v", v, 0, B, "the batch size q.shape[0]")) ||
      (st = check_dim(ctx, fn, "v", v, 1, Hkv, "the kv head count k.shape[1]")) ||
      (st = check_dim(ctx, fn, "v", v, 2, Lk, "the key count k.shape[2]")) ||
      (st = check_dim(ctx, fn, "out", out, 0, B, "the batch size q.shape[0]")) ||
      (st = check_dim(ctx, fn, "out", out, 1, Hq, "the query head count q.shape[1]")) ||
      (st = check_dim(ctx, fn, "out", out, 2, Lq, "the query count q.shape[2]")) ||
      (st = check_dim(ctx, fn, "out", out, 3, Dv, "the value dim v.shape[3]")))
    return st;
  if ((st = check_heads(ctx, fn, Hq, Hkv)) != ATTN_OK ||
      (st = attn__check_writable(ctx, fn, "out", out)) != ATTN_OK ||
      (st = check_params(ctx, fn, &prm, B, Hq, Lk, D)) != ATTN_OK)
    return st;

  sdpa_problem p;
  memset(&p, 0, sizeof p);
  const int64_t full[4] = {B, Hq, Lq, Lk};
  if (prm.mask) {
    if ((st = attn__check_tensor(ctx, fn, "params.mask", prm.mask, ATTN_DTYPE_F32, 1, 4)) ||
        (st = attn__broadcast_strides(ctx, fn, "params.mask", prm.mask, 4, full, p.ms)))
      return st;
    p.mask = prm.mask->data;
  }
  if (prm.bool_mask) {
    if ((st = attn__check_tensor(ctx, fn, "params.bool_mask", prm.bool_mask, ATTN_DTYPE_U8, 1,
                                 4)) ||
        (st = attn__broadcast_strides(ctx, fn, "params.bool_mask", prm.bool_mask, 4, full,
                                      p.bs)))
      return st;
    p.bmask = prm.bool_mask->data;
  }
  /* Inputs, then the outputs in the order they are checked. */
  const char *names[7] = {"q", "k", "v", "params.mask", "params.bool_mask", "out", "params.lse"};
  const attn_tensor *ts[7] = {q, k, v, prm.mask, prm.bool_mask, out, prm.lse};
  if ((st = check_disjoint(ctx, fn, "out", out, names, ts, 5)) ||
      (prm.lse && (st = check_output(ctx, fn, "params.lse", prm.lse, 3,
                                     (const int64_t[]){B, Hq, Lq}, "[B, Hq, Lq]", names, ts,
                                     6))) ||
      (prm.weights && (st = check_output(ctx, fn, "params.weights", prm.weights, 4, full,
                                         "[B, Hq, Lq, Lk]", names, ts, 7))))
    return st;

  p.B = B, p.Hq = Hq, p.Hkv = Hkv, p.G = Hq / Hkv, p.Lq = Lq, p.Lk = Lk, p.D = D, p.Dv = Dv;
  p.q = q->data, p.k = k->data, p.v = v->data, p.out = out->data;
  memcpy(p.qs, q->strides, sizeof p.qs);
  memcpy(p.ks, k->strides, sizeof p.ks);
  memcpy(p.vs, v->strides, sizeof p.vs);
  memcpy(p.os, out->strides, sizeof p.os);
  if (prm.lse) {
    p.lse = prm.lse->data;
    memcpy(p.lses, prm.lse->strides, sizeof p.lses);
  }
  if (prm.weights) {
    p.w = prm.weights->data;
    memcpy(p.ws, prm.weights->strides, sizeof p.ws);
  }
  p.kv_lens = prm.kv_lens;
  p.q_offsets = prm.q_offsets;
  fill_common(&p, &prm);
  return run_problem(ctx, fn, &p);
}

static attn_status check_offsets(attn_ctx *ctx, const char *fn, const char *name,
                                 const int64_t *cu, int32_t batch, int64_t total) {
  if (!cu)
    return attn__fail(ctx, ATTN_ERR_NULL_ARG, "%s: %s is NULL", fn, name);
  if (cu[0] != 0)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG, "%s: %s[0] = %lld but must be 0", fn, name,
                      (long long)cu[0]);
  for (int32_t b = 0; b < batch; b++)
    if (cu[b + 1] < cu[b])
      return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                        "%s: %s[%d] = %lld < %s[%d] = %lld but offsets must not decrease", fn,
                        name, (int)b + 1, (long long)cu[b + 1], name, (int)b, (long long)cu[b]);
  if (cu[batch] != total)
    return attn__fail(ctx, ATTN_ERR_SHAPE,
                      "%s: %s[%d] = %lld but must equal the token count %lld", fn, name,
                      (int)batch, (long long)cu[batch], (long long)total);
  return ATTN_OK;
}

/* Sequence s of a packed batch as a [1, H, L, D] view of the tensors. */
static void varlen_problem(sdpa_problem *p, const attn_sdpa_params *prm, const attn_tensor *q,
                           const attn_tensor *k, const attn_tensor *v, attn_tensor *out,
                           int32_t s, const int64_t *cu_q, const int64_t *cu_k) {
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

attn_status attn_sdpa_varlen(attn_ctx *ctx, const attn_tensor *q, const attn_tensor *k,
                             const attn_tensor *v, attn_tensor *out, int32_t batch,
                             const int64_t *cu_q, const int64_t *cu_k,
                             const attn_sdpa_params *params) {
  static const char fn[] = "attn_sdpa_varlen";
  attn_status st = attn__check_ctx(ctx);
  if (st != ATTN_OK)
    return st;
  attn_sdpa_params prm;
  attn_sdpa_params_init(&prm);
  if ((st = attn__read_params(ctx, fn, &prm, sizeof prm, params)) != ATTN_OK ||
      (st = check_operands(ctx, fn, q, k, v, out, 3)) != ATTN_OK)
    return st;
  if (prm.mask || prm.bool_mask || prm.kv_lens || prm.weights)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "%s: params.mask, bool_mask, kv_lens and weights must be NULL (packed "
                      "sequences are masked by their offsets)",
                      fn);
  if (batch < 1)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG, "%s: batch = %d but must be >= 1", fn,
                      (int)batch);
  int64_t Tq = q->dims[0], Hq = q->dims[1], D = q->dims[2];
  int64_t Tk = k->dims[0], Hkv = k->dims[1], Dv = v->dims[2];
  if ((st = check_dim(ctx, fn, "k", k, 2, D, "the head dim q.shape[2]")) ||
      (st = check_dim(ctx, fn, "v", v, 0, Tk, "the key token count k.shape[0]")) ||
      (st = check_dim(ctx, fn, "v", v, 1, Hkv, "the kv head count k.shape[1]")) ||
      (st = check_dim(ctx, fn, "out", out, 0, Tq, "the query token count q.shape[0]")) ||
      (st = check_dim(ctx, fn, "out", out, 1, Hq, "the query head count q.shape[1]")) ||
      (st = check_dim(ctx, fn, "out", out, 2, Dv, "the value dim v.shape[2]")))
    return st;
  if ((st = check_heads(ctx, fn, Hq, Hkv)) ||
      (st = check_offsets(ctx, fn, "cu_seqlens_q", cu_q, batch, Tq)) ||
      (st = check_offsets(ctx, fn, "cu_seqlens_k", cu_k, batch, Tk)) ||
      (st = attn__check_writable(ctx, fn, "out", out)) ||
      (st = check_params(ctx, fn, &prm, batch, Hq, Tk, D)))
    return st;
  const char *names[4] = {"q", "k", "v", "out"};
  const attn_tensor *ts[4] = {q, k, v, out};
  if ((st = check_disjoint(ctx, fn, "out", out, names, ts, 3)) ||
      (prm.lse && (st = check_output(ctx, fn, "params.lse", prm.lse, 2,
                                     (const int64_t[]){Hq, Tq}, "[Hq, Tq]", names, ts, 4))))
    return st;

  /* Every sequence's plan and the largest workspace come first: failing
   * half-way would leave the earlier sequences' outputs written. */
  size_t most = 0;
  for (int32_t s = 0; s < batch; s++) {
    sdpa_problem p;
    varlen_problem(&p, &prm, q, k, v, out, s, cu_q, cu_k);
    if (p.Lq == 0)
      continue;
    int32_t threads = 1;
    size_t total = 0;
    if ((st = plan_problem(ctx, fn, &p, &threads, &total)) != ATTN_OK)
      return st;
    most = total > most ? total : most;
  }
  if (most && !attn__scratch(ctx, fn, most))
    return ATTN_ERR_NO_MEMORY;
  for (int32_t s = 0; s < batch; s++) {
    sdpa_problem p;
    varlen_problem(&p, &prm, q, k, v, out, s, cu_q, cu_k);
    if (p.Lq == 0)
      continue;
    if ((st = run_problem(ctx, fn, &p)) != ATTN_OK)
      return st;
  }
  return ATTN_OK;
}
