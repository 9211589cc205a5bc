/* The SDPA tile kernel: for one work item, S = scale Q K^T per key tile
 * (BLAS), the logit pipeline (logits.h) on each row's visible keys, the
 * online softmax (running max m and sum l per row; the accumulator is
 * rescaled when m grows), and O += P V (BLAS). Visibility (causal, window,
 * kv_lens, alignment) is decided here, per row, in attn__sdpa_visible_keys. */
#include "convert.h"
#include "logits.h"
#include "sdpa.h"
#include "simd/kernels.h"

#include <math.h>
#include <string.h>

/* Position i' among the keys of query position i of batch b (attn.h): the
 * bottom-right alignment puts the last query at the sequence's last key. */
int64_t attn__sdpa_key_position(const attn_sdpa_problem *p, int64_t b, int64_t i) {
  if (p->q_offsets)
    return p->q_offsets[b] + i;
  if (!p->bottom_right)
    return i;
  return i + (p->kv_lens ? p->kv_lens[b] : p->Lk) - (p->q_lens ? p->q_lens[b] : p->Lq);
}

/* Keys visible to query position i of batch b: [*lo, *hi), possibly empty.
 * Both ends are non-decreasing in i, which the tile skipping relies on. */
void attn__sdpa_visible_keys(const attn_sdpa_problem *p, int64_t b, int64_t i, int64_t *lo,
                             int64_t *hi) {
  int64_t ip = attn__sdpa_key_position(p, b, i);
  int64_t l = 0, h = p->kv_lens ? p->kv_lens[b] : p->Lk;
  if (p->q_lens && i >= p->q_lens[b]) { /* a padding row: empty, at the end */
    *lo = *hi = h;
    return;
  }
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

attn_sdpa_item attn__sdpa_item(const attn_sdpa_problem *p, int64_t index) {
  attn_sdpa_item it;
  /* Last query blocks first: under a causal mask they are the most work, and
   * the dynamic schedule then balances the short ones at the end. */
  int64_t qb = p->n_qblocks - 1 - index % p->n_qblocks;
  int64_t bh = index / p->n_qblocks, groups = p->Hkv / p->heads;
  it.b = p->order ? p->order[bh / groups] : bh / groups;
  it.kvh = bh % groups * p->heads;
  it.i0 = qb * p->nb;
  it.n_pos = p->Lq - it.i0 < p->nb ? p->Lq - it.i0 : p->nb;
  return it;
}

/* Row r of an item is query position i0 + r' / G of head (kvh + h) * G +
 * r' % G, where r = h * n_pos * G + r'. */
static int64_t row_pos(const attn_sdpa_problem *p, const attn_sdpa_item *it, int64_t r) {
  return it->i0 + r % (it->n_pos * p->G) / p->G;
}
static int64_t row_head(const attn_sdpa_problem *p, const attn_sdpa_item *it, int64_t r) {
  int64_t per = it->n_pos * p->G;
  return (it->kvh + r / per) * p->G + r % per % p->G;
}

static float *weights_row(const attn_sdpa_problem *p, const attn_sdpa_item *it, int64_t r) {
  return p->w + it->b * p->ws[0] + row_head(p, it, r) * p->ws[1] + row_pos(p, it, r) * p->ws[2];
}

/* Offsets of key row j0 in k and v; *n shrinks so that a tile of a paged
 * KV cache never crosses a block (its rows are then evenly strided and go
 * to BLAS in place, no gather). */
static void key_offsets(const attn_sdpa_problem *p, const attn_sdpa_item *it, int64_t j0,
                        int64_t *n, int64_t *koff, int64_t *voff) {
  int64_t outer = it->b, row = j0;
  if (p->blocks) {
    outer = p->blocks[it->b * p->blocks_stride + j0 / p->block_size];
    row = j0 % p->block_size;
    if (*n > p->block_size - row)
      *n = p->block_size - row;
  }
  *koff = outer * p->ks[0] + it->kvh * p->ks[1] + row * p->ks[2];
  *voff = outer * p->vs[0] + it->kvh * p->vs[1] + row * p->vs[2];
}

/* Rows of a K or V tile for BLAS: in place when they are F32 and the row
 * stride is usable as a leading dimension, else copied (widened) into buf.
 * A half tile is read once from memory and the float copy stays in cache
 * for BLAS: decoding over a half cache reads half the bytes. */
static const float *tile_rows(const void *base, int32_t dt, int64_t stride, int64_t n,
                              int64_t cols, bool gather, float *buf, int *ld) {
  if (!gather) {
    *ld = (int)(n > 1 ? stride : cols);
    return base;
  }
  const attn_kernels *k = attn__kernels();
  if (stride == cols) /* packed rows (a cache's tile): one kernel call */
    attn__widen(k, dt, base, buf, n * cols);
  else
    for (int64_t j = 0; j < n; j++)
      attn__widen(k, dt, attn__elem(base, dt, j * stride), buf + j * cols, cols);
  *ld = (int)cols;
  return buf;
}

/* The element type of K or V rows for the decode products. */
static int elem_of(int32_t dt) {
  return dt == ATTN_DTYPE_F16    ? ATTN_ELEM_F16
         : dt == ATTN_DTYPE_BF16 ? ATTN_ELEM_BF16
                                 : ATTN_ELEM_F32;
}

/* Key row `row` of kv head kvh in the item's block `blk` (a paged cache's
 * table index; the batch's rows otherwise): its first element in base. */
static const void *decode_row(const attn_sdpa_item *it, const int32_t *table, const void *base,
                              int32_t dt, const int64_t *st, int64_t blk, int64_t row,
                              int64_t kvh) {
  int64_t outer = table ? table[blk] : it->b;
  return attn__elem(base, dt, outer * st[0] + kvh * st[1] + row * st[2]);
}

/* A paged decode item of several kv heads takes a tile's blocks in groups
 * of about this many keys, each head over the whole group in turn: a
 * head's query rows, logits and accumulator (2 KiB each at 4 query rows of
 * D = 128) stay in L1 across the group. Taking every head of a block
 * before the next block cycled all the heads' (8 heads: 16 KiB of queries,
 * 16 KiB of accumulator) through an L1 the block's 64 KiB of K or V rows
 * stream through. */
#define DECODE_GROUP_KEYS 128

/* The decode products over the tile of keys [j0, j0 + n), one run of keys
 * stored together at a time (a paged cache's block; DECODE_GROUP_KEYS of
 * them for each of the item's kv heads in turn, rows query rows each):
 * S = scale Q K^T into s, or (pv) acc += P V, zero weights adding nothing
 * when skip. K and V rows are read in place, in their stored type; the
 * kernels prefetch along the runs, into the next run to be read (the
 * group's next block, the next head's first, the next group's) and at the
 * tile's end into its first V rows (after K) or the next tile's K (after V,
 * up to key `last`). The blocks are walked in order, not looked up per run
 * as key_offsets does (16-token blocks, a cache in L2, 1 thread: f32 37.5
 * -> 34.2 ns per key and KV head). Each head's products see the same runs in the same order
 * whatever the item's heads and the grouping. */
static void decode_products(const attn_sdpa_problem *p, const attn_sdpa_item *it, int64_t rows,
                            const float *qbuf, float *s, float *acc, int64_t j0, int64_t n,
                            int64_t last, bool pv, bool skip) {
  const attn_kernels *kern = attn__kernels();
  const int32_t *table = p->blocks ? p->blocks + it->b * p->blocks_stride : NULL;
  const int64_t *st = pv ? p->vs : p->ks;
  const void *base = pv ? p->v : p->k;
  int32_t dt = pv ? p->vdt : p->kdt;
  int64_t nh = p->heads, kvh = it->kvh;
  /* Run r holds the tile's keys [r bs - lead, (r + 1) bs - lead), clipped
   * to [0, n): block blk0 + r of a paged cache (its first `lead` keys come
   * before the tile); else one run from row j0. */
  int64_t bs = table ? p->block_size : n, blk0 = table ? j0 / bs : 0, lead = table ? j0 % bs : 0;
  int64_t row0 = table ? lead : j0, n_runs = (lead + n + bs - 1) / bs;
  int64_t group = bs < DECODE_GROUP_KEYS ? DECODE_GROUP_KEYS / bs : 1;
  /* Where the stream goes on after the tile, so that no pass starts on rows
   * not yet requested: after its K into its first V rows, after its V into
   * the next tile's K (key j0 + n: in this block or the next). */
  const void *after = NULL;
  if (!pv)
    after = decode_row(it, table, p->v, p->vdt, p->vs, blk0, row0, kvh);
  else if (j0 + n < last)
    after = table ? decode_row(it, table, p->k, p->kdt, p->ks, blk0 + (lead + n) / bs,
                               (lead + n) % bs, kvh)
                  : decode_row(it, NULL, p->k, p->kdt, p->ks, 0, j0 + n, kvh);
  for (int64_t g0 = 0; g0 < n_runs; g0 += group) {
    int64_t g1 = g0 + group < n_runs ? g0 + group : n_runs;
    for (int64_t h = 0; h < nh; h++)
      for (int64_t r = g0; r < g1; r++) {
        int64_t c = r > 0 ? r * bs - lead : 0;
        int64_t len = ((r + 1) * bs - lead < n ? (r + 1) * bs - lead : n) - c;
        const void *run = decode_row(it, table, base, dt, st, blk0 + r, r > 0 ? 0 : row0,
                                     kvh + h);
        const void *next;
        if (r + 1 < g1) /* the group's next block */
          next = decode_row(it, table, base, dt, st, blk0 + r + 1, 0, kvh + h);
        else if (h + 1 < nh) /* the next head's first run of the group */
          next = decode_row(it, table, base, dt, st, blk0 + g0, g0 > 0 ? 0 : row0,
                            kvh + h + 1);
        else if (g1 < n_runs) /* the next group */
          next = decode_row(it, table, base, dt, st, blk0 + g1, 0, kvh);
        else
          next = after;
        if (pv)
          kern->dec_pv(rows, len, p->Dv, s + h * rows * p->tile_keys + c, p->tile_keys, run,
                       elem_of(dt), st[2], next, acc + h * rows * p->Dv, p->Dv, skip);
        else
          kern->dec_qk(rows, len, p->D, p->scale, qbuf + h * rows * p->D, p->D, run, elem_of(dt),
                       st[2], next, s + h * rows * p->tile_keys + c, p->tile_keys);
      }
  }
}

/* Everything that is not a plain dot product, applied to one row's logits on
 * the visible columns [a, e) of the tile starting at key j0. */
static void adjust_logits(const attn_sdpa_problem *p, const attn_sdpa_item *it, int64_t r, float *s,
                          int64_t j0, int64_t a, int64_t e) {
  int64_t i = row_pos(p, it, r), h = row_head(p, it, r);
  int64_t j = j0 + a, n = e - a; /* first key, keys */
  float *z = s + a;
  if (p->softcap > 0)
    attn__logits_cap(z, n, p->softcap);
  if (p->alibi)
    attn__logits_alibi(z, n, p->alibi[h], j - attn__sdpa_key_position(p, it->b, i));
  const float *m =
      p->mask ? p->mask + it->b * p->ms[0] + h * p->ms[1] + i * p->ms[2] + j * p->ms[3] : NULL;
  const uint8_t *bm =
      p->bmask ? p->bmask + it->b * p->bs[0] + h * p->bs[1] + i * p->bs[2] + j * p->bs[3] : NULL;
  attn__logits_mask(z, n, m, p->ms[3], bm, p->bs[3]);
}

bool attn__sdpa_all_finite(const float *x, int64_t rows, int64_t cols, int64_t ld) {
  float acc = 0; /* x - x is 0 for finite x, NaN otherwise */
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < cols; c++)
      acc += x[r * ld + c] - x[r * ld + c];
  return acc == 0;
}

/* acc[rows, dv] += p[rows, n] v[n, dv], skipping zero weights; p rows ldp apart. */
static void accumulate_nonzero(const float *p, int64_t ldp, int64_t rows, int64_t n,
                               const float *v, int ldv, int64_t dv, float *acc) {
  for (int64_t r = 0; r < rows; r++)
    for (int64_t j = 0; j < n; j++) {
      float w = p[r * ldp + j];
      if (w == 0)
        continue;
      for (int64_t d = 0; d < dv; d++)
        acc[r * dv + d] += w * v[j * ldv + d];
    }
}

/* Start the state: no key seen, or only the sink (a key with logit `sink`
 * and a zero value vector); weights of keys [kb, ke) hidden until seen. */
static void start_state(const attn_sdpa_problem *p, const attn_sdpa_item *it, attn_sdpa_state st,
                        int64_t kb, int64_t ke, bool with_sink) {
  int64_t rows = attn__sdpa_item_rows(p, it);
  bool sink = with_sink && p->sinks;
  for (int64_t r = 0; r < rows; r++) {
    /* A padding row of a KV-cache step is no query: no sink, lse -inf. */
    bool s = sink && !(p->q_lens && row_pos(p, it, r) >= p->q_lens[it->b]);
    st.m[r] = s ? p->sinks[row_head(p, it, r)] : -INFINITY;
    st.l[r] = s ? 1.0f : 0.0f;
  }
  memset(st.acc, 0, (size_t)rows * (size_t)p->Dv * sizeof(float));
  if (p->w)
    for (int64_t r = 0; r < rows; r++) {
      float *wr = weights_row(p, it, r);
      for (int64_t j = kb; j < ke; j++)
        wr[j] = -INFINITY;
    }
}

/* Row r of a tile of n logits s starting at key j0, visible on [a, e):
 * turn s into the row's weights (0 where hidden) and fold the tile into
 * the row's running max, sum and accumulator. */
static void online_row(const attn_kernels *kern, const attn_sdpa_problem *p,
                       const attn_sdpa_item *it, attn_sdpa_state st,
                       int64_t r, float *s, int64_t j0, int64_t n, int64_t a, int64_t e,
                       bool plain) {
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
    return;
  }
  if (!isfinite(m_new)) { /* NaN, or a +inf logit: the row is NaN */
    for (int64_t j = a; j < e; j++)
      s[j] = NAN;
    st.m[r] = NAN;
    st.l[r] = NAN;
    return;
  }
  float sum = e > a ? kern->exp_below_sum(s + a, s + a, e - a, m_new) : 0.0f;
  /* A row that saw no key yet has l = 0 and acc = 0: rescaling them by
   * exp(-inf) = 0 changes nothing (a single-tile row skips it). */
  if (m_new != m_old && m_old != -INFINITY) {
    float corr = expf(m_old - m_new);
    st.l[r] *= corr;
    kern->scale(st.acc + r * p->Dv, st.acc + r * p->Dv, p->Dv, corr);
  }
  st.m[r] = m_new;
  st.l[r] += sum;
}

/* Row j of a K or V tile (cols elements of type dt, stride elements
 * apart) requested into the cache: the lines arrive while other work runs
 * instead of at the start of a product (the first pass over a tile of a
 * long sequence reads it from L3 or memory). */
static void prefetch_row(const void *base, int32_t dt, int64_t stride, int64_t j, int64_t bytes) {
  const char *row = attn__elem(base, dt, j * stride);
  for (int64_t o = 0; o < bytes; o += 64)
    __builtin_prefetch(row + o, 0, 3);
}

void attn__sdpa_attend(const attn_sdpa_problem *p, const attn_sdpa_item *it, const float *q,
                       const attn_sdpa_work *wk, attn_sdpa_state st, int64_t kb, int64_t ke,
                       bool with_sink) {
  int64_t rows = attn__sdpa_item_rows(p, it), head_rows = rows / p->heads, Dv = p->Dv;
  start_state(p, it, st, kb, ke, with_sink);
  /* Keys some row of the item sees: the first row's start to the last's end. */
  int64_t lo_first, hi_first, lo_last, hi_last;
  attn__sdpa_visible_keys(p, it->b, it->i0, &lo_first, &hi_first);
  attn__sdpa_visible_keys(p, it->b, it->i0 + it->n_pos - 1, &lo_last, &hi_last);
  int64_t j_begin = lo_first > kb ? lo_first : kb;
  int64_t j_end = hi_last < ke ? hi_last : ke;
  const attn_kernels *kern = attn__kernels();
  bool plain = !p->softcap && !p->alibi && !p->mask && !p->bmask;
  int64_t k_bytes = p->D * (int64_t)attn__dtype_size(p->kdt);
  int64_t v_bytes = Dv * (int64_t)attn__dtype_size(p->vdt);

  for (int64_t j0 = j_begin, n; j0 < j_end; j0 += n) {
    n = j_end - j0 < p->tile_keys ? j_end - j0 : p->tile_keys;
    int64_t koff = 0, voff = 0;
    if (p->decode) {
      decode_products(p, it, head_rows, q, wk->s, NULL, j0, n, j_end, false, false);
    } else {
      key_offsets(p, it, j0, &n, &koff, &voff);
      int ldk;
      const float *kt = tile_rows(attn__elem(p->k, p->kdt, koff), p->kdt, p->ks[2], n, p->D,
                                  p->gather_k, wk->kbuf, &ldk);
      attn__sgemm_nt((int)rows, (int)n, (int)p->D, p->scale, q, (int)p->D, kt, ldk,
                     wk->s, (int)p->tile_keys);
    }
    /* Tiles inside every row's visible range need no per-row bounds. */
    bool inside = j0 >= lo_last && j0 + n <= hi_first;
    /* While the rows are turned into weights: this tile's V rows (for
     * P V below) and the next tile's K rows, one of each per row (B=1 H=8
     * L=4096 D=64 and L=2048 D=128, 1 thread: 1.5-3 % faster). The decode
     * products prefetch their own rows; staged rows are in L2 already. */
    bool fetch = !p->decode && !p->in_cache && rows > DECODE_ROWS;
    int64_t kn_off = 0, vn_off, n_next = fetch ? j_end - (j0 + n) : 0;
    if (n_next > 0) {
      if (n_next > p->tile_keys)
        n_next = p->tile_keys;
      key_offsets(p, it, j0 + n, &n_next, &kn_off, &vn_off);
    }
    int64_t ahead = fetch && n > rows ? n : rows;
    const void *v_tile = attn__elem(p->v, p->vdt, voff), *k_next = attn__elem(p->k, p->kdt, kn_off);
    for (int64_t r = 0; r < ahead; r++) {
      if (fetch && r < n)
        prefetch_row(v_tile, p->vdt, p->vs[2], r, v_bytes);
      if (r < n_next)
        prefetch_row(k_next, p->kdt, p->ks[2], r, k_bytes);
      if (r >= rows)
        continue;
      int64_t a = 0, e = n;
      if (!inside) {
        int64_t lo, hi;
        attn__sdpa_visible_keys(p, it->b, row_pos(p, it, r), &lo, &hi);
        /* [lo, hi) clipped to the tile: a padding row of a KV-cache step
         * (lo = hi = its sequence's length) may start far past it. */
        a = lo > j0 ? (lo - j0 < n ? lo - j0 : n) : 0;
        e = hi < j0 + n ? hi - j0 : n;
        if (e < a)
          e = a;
      }
      online_row(kern, p, it, st, r, wk->s + r * p->tile_keys, j0, n, a, e, plain);
    }
    /* A hidden key has weight 0, but 0 * NaN is NaN: where the tile may hide
     * keys and V holds a non-finite value, skip the zero weights by hand
     * (the decode products skip them in every such tile: with finite V the
     * sums are the same). */
    if (p->decode) {
      decode_products(p, it, head_rows, NULL, wk->s, st.acc, j0, n, j_end, true,
                      !(inside && plain));
      continue;
    }
    int ldv;
    const float *vt = tile_rows(attn__elem(p->v, p->vdt, voff), p->vdt, p->vs[2], n, Dv,
                                p->gather_v, wk->vbuf, &ldv);
    if ((inside && plain) || attn__sdpa_all_finite(vt, n, Dv, ldv))
      attn__sgemm_nn_acc((int)rows, (int)Dv, (int)n, wk->s, (int)p->tile_keys, vt, ldv, st.acc,
                         (int)Dv);
    else
      accumulate_nonzero(wk->s, p->tile_keys, rows, n, vt, ldv, Dv, st.acc);
  }
}

/* Write out = acc / l, the log-sum-exp and the normalised weights. */
void attn__sdpa_finish(const attn_sdpa_problem *p, const attn_sdpa_item *it, attn_sdpa_state st) {
  int64_t rows = attn__sdpa_item_rows(p, it);
  const attn_kernels *k = attn__kernels();
  for (int64_t r = 0; r < rows; r++) {
    int64_t i = row_pos(p, it, r), h = row_head(p, it, r);
    void *o = attn__elem(p->out, p->odt, it->b * p->os[0] + h * p->os[1] + i * p->os[2]);
    float *acc = st.acc + r * p->Dv;
    float m = st.m[r], l = st.l[r];
    bool empty = m == -INFINITY || l == 0;
    float inv = empty ? 0.0f : 1.0f / l;
    /* The float result, to an F32 out directly; else in acc (done with
     * it), then rounded once to out. */
    float *res = p->odt == ATTN_DTYPE_F32 ? o : acc;
    if (empty)
      memset(res, 0, (size_t)p->Dv * sizeof(float));
    else if (p->stream_out && res != acc)
      k->scale_stream(acc, res, p->Dv, inv);
    else
      k->scale(acc, res, p->Dv, inv);
    if (res == acc)
      attn__narrow(k, p->odt, acc, o, p->Dv);
    if (p->lse)
      p->lse[it->b * p->lses[0] + h * p->lses[1] + i * p->lses[2]] =
          empty ? -INFINITY : m + logf(l);
    if (p->w) { /* exp(s - m) / l: exp(s - lse) would carry lse's rounding */
      float *wr = weights_row(p, it, r);
      for (int64_t j = 0; j < p->Lk; j++)
        wr[j] = wr[j] == -INFINITY || empty ? 0.0f : expf(wr[j] - m) * inv;
    }
  }
}

const float *attn__sdpa_queries(const attn_sdpa_problem *p, const attn_sdpa_item *it,
                               float *qbuf) {
  int64_t rows = attn__sdpa_item_rows(p, it);
  /* F32 rows that already follow one another (a head's positions D apart,
   * or a group's heads interleaved per position) go to the products in
   * place: row r is then r * D past the first. */
  if (p->qdt == ATTN_DTYPE_F32 && p->heads == 1 && p->qs[2] == p->G * p->D &&
      (p->G == 1 || p->qs[1] == p->D))
    return (const float *)p->q + it->b * p->qs[0] + row_head(p, it, 0) * p->qs[1] +
           row_pos(p, it, 0) * p->qs[2];
  const attn_kernels *k = attn__kernels();
  for (int64_t r = 0; r < rows; r++) {
    int64_t off =
        it->b * p->qs[0] + row_head(p, it, r) * p->qs[1] + row_pos(p, it, r) * p->qs[2];
    attn__widen(k, p->qdt, attn__elem(p->q, p->qdt, off), qbuf + r * p->D, p->D);
  }
  return qbuf;
}
