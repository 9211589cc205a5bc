/* The KV cache's contents: append (with RoPE on the new keys), truncate,
 * reset, copy one sequence into another, read back; and the paged
 * layout's block bookkeeping. The handles are kv_cache.c's.
 *
 * Every operation checks all of its input first and only then writes, so a
 * failed call leaves the cache as it was. The paged layout keeps a block
 * table per sequence (B x max_blocks int32), a reference count per block
 * and a stack of free blocks; a block is written only while its count is 1,
 * so a shared block is copied before its first divergent row lands in it. */
#include "kv_store.h"
#include "check.h"
#include "convert.h"
#include "rope.h"

#include <string.h>


static attn_status check_seq(attn_ctx *ctx, const char *name,
                             const attn_kv_cache *c, int64_t seq) {
  if (seq < 0 || seq >= c->B)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG, "%s = %lld but must be in 0..%lld", name, (long long)seq, (long long)(c->B - 1));
  return ATTN_OK;
}

/* ---- row addressing ---- */

/* Offset (in elements from c->k or c->v) of row j of sequence b, head h. */
static int64_t row_offset(const attn_kv_cache *c, const int64_t *s, int64_t b, int64_t h,
                          int64_t j) {
  if (paged(c))
    return c->table[b * c->max_blocks + j / c->bs] * s[0] + h * s[1] + (j % c->bs) * s[2];
  return b * s[0] + h * s[1] + j * s[2];
}

/* Key row j of sequence b, head h; and the value row. */
static char *key_row(const attn_kv_cache *c, int64_t b, int64_t h, int64_t j) {
  return c->k + row_offset(c, c->ks, b, h, j) * (int64_t)c->esz;
}
static char *value_row(const attn_kv_cache *c, int64_t b, int64_t h, int64_t j) {
  return c->v + row_offset(c, c->vs, b, h, j) * (int64_t)c->esz;
}

/* ---- paged block bookkeeping ---- */

static int32_t take_block(attn_kv_cache *c) {
  int32_t blk = c->free_stack[--c->n_free];
  c->refs[blk] = 1;
  return blk;
}

static void drop_block(attn_kv_cache *c, int32_t blk) {
  if (--c->refs[blk] == 0)
    c->free_stack[c->n_free++] = blk;
}

/* Blocks a step takes from the pool: each sequence's new blocks, plus a
 * copy of its partly filled last block while another sequence holds that
 * block too. grow() runs the sequences in order, so when every holder of a
 * shared block appends, the last one finds it unshared and writes in place;
 * the count follows grow() by dropping a copied block's count for the
 * duration (the copying sequence's table entry marked ~blk), then restoring
 * both: the cache is unchanged on return. */
static int64_t pool_need(attn_kv_cache *c, const int64_t *n_new, int64_t L) {
  int64_t need = 0;
  for (int pass = 0; pass < 2; pass++)
    for (int64_t b = 0; b < c->B; b++) {
      int64_t n = n_new ? n_new[b] : L, len = c->lens[b];
      if (n == 0)
        continue;
      int32_t *last = &c->table[b * c->max_blocks + len / c->bs];
      if (pass == 1) {
        if (len % c->bs && *last < 0)
          *last = ~*last, c->refs[*last]++;
        continue;
      }
      need += ceil_div(len + n, c->bs) - ceil_div(len, c->bs);
      if (len % c->bs && c->refs[*last] > 1)
        need++, c->refs[*last]--, *last = ~*last;
    }
  return need;
}

/* Make room for n more rows of sequence b (pool_need() was checked). */
static void grow(attn_kv_cache *c, int64_t b, int64_t n) {
  int64_t len = c->lens[b];
  int32_t *t = c->table + b * c->max_blocks;
  if (n == 0)
    return;
  if (len % c->bs && c->refs[t[len / c->bs]] > 1) {
    /* Copy on write: the shared block's filled rows move to a private block. */
    int32_t old = t[len / c->bs], fresh = take_block(c);
    int64_t used = len % c->bs;
    int64_t e = (int64_t)c->esz;
    for (int64_t h = 0; h < c->H; h++) {
      memcpy(c->k + (fresh * c->ks[0] + h * c->ks[1]) * e,
             c->k + (old * c->ks[0] + h * c->ks[1]) * e, (size_t)(used * c->D * e));
      memcpy(c->v + (fresh * c->vs[0] + h * c->vs[1]) * e,
             c->v + (old * c->vs[0] + h * c->vs[1]) * e, (size_t)(used * c->Dv * e));
    }
    drop_block(c, old);
    t[len / c->bs] = fresh;
  }
  for (int64_t i = ceil_div(len, c->bs); i < ceil_div(len + n, c->bs); i++)
    t[i] = take_block(c);
}

/* Sequence b keeps its first len rows. */
static void shrink(attn_kv_cache *c, int64_t b, int64_t len) {
  if (paged(c)) {
    int32_t *t = c->table + b * c->max_blocks;
    for (int64_t i = ceil_div(len, c->bs); i < ceil_div(c->lens[b], c->bs); i++)
      drop_block(c, t[i]);
  }
  c->lens[b] = len;
}

/* ---- append ---- */

void attn_kv_append_params_init(attn_kv_append_params *p) {
  if (!p)
    return;
  memset(p, 0, sizeof *p);
  p->struct_size = sizeof *p;
}

/* True if t's bytes intersect the cache's K or V memory. */
static bool overlaps_cache(const attn_kv_cache *c, const attn_tensor *t) {
  uintptr_t a = (uintptr_t)t->data, e = a + t->extent_bytes;
  uintptr_t k = (uintptr_t)c->k, v = (uintptr_t)c->v;
  return (a < k + c->k_bytes && k < e) || (a < v + c->v_bytes && v < e);
}

static attn_status check_kv_operand(attn_ctx *ctx, const char *name,
                                    const attn_tensor *t, const attn_kv_cache *c,
                                    int64_t outer, int64_t dim, const char *dim_name) {
  attn_status st = attn__check_tensor(ctx, name, t, 4, ATTN_DT_FLOAT);
  if (st != ATTN_OK)
    return st;
  if (t->dims[0] != outer || t->dims[1] != c->H || t->dims[3] != dim)
    return attn__fail(ctx, ATTN_ERR_SHAPE,
                      "%s has shape [%lld, %lld, %lld, %lld] but the cache holds "
                      "[B = %lld, Hkv = %lld, L, %s = %lld]", name, (long long)t->dims[0], (long long)t->dims[1],
                      (long long)t->dims[2], (long long)t->dims[3], (long long)outer,
                      (long long)c->H, dim_name, (long long)dim);
  if (overlaps_cache(c, t))
    return attn__fail(ctx, ATTN_ERR_ALIASING, "%s overlaps the cache's memory", name);
  return ATTN_OK;
}

/* Every sequence can take its n_new[b] (or L) more rows: within 0..L, its
 * capacity, and (paged) the whole step within the free blocks. */
static attn_status check_counts(attn_ctx *ctx, attn_kv_cache *c,
                                const int64_t *n_new, int64_t L) {
  for (int64_t b = 0; b < c->B; b++) {
    int64_t n = n_new ? n_new[b] : L;
    if (n < 0 || n > L)
      return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                        "n_new[%lld] = %lld but must be in 0..L = %lld", (long long)b,
                        (long long)n, (long long)L);
    if (n > c->cap - c->lens[b])
      return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                        "sequence %lld holds %lld tokens; %lld more exceed its capacity "
                        "%lld", (long long)b, (long long)c->lens[b], (long long)n,
                        (long long)c->cap);
  }
  int64_t need = paged(c) ? pool_need(c, n_new, L) : 0;
  if (need > c->n_free)
    return attn__fail(ctx, ATTN_ERR_NO_MEMORY,
                      "the step needs %lld blocks but the pool has %lld free (of %lld); "
                      "nothing was appended", (long long)need, (long long)c->n_free, (long long)c->n_blocks);
  return ATTN_OK;
}

/* Store rows 0..n_new[b]-1 of kn/vn (strides of [B, H, L, D]) after each
 * sequence's end. kns NULL: kn holds just those keys, packed token-major
 * ([sum of n_new][H][D], sequence after sequence: the rotated keys). */
static void store_rows(attn_kv_cache *c, const void *kn, int32_t kdt, const int64_t *kns,
                       const void *vn, int32_t vdt, const int64_t *vns, const int64_t *n_new,
                       int64_t L) {
  const attn_kernels *kern = attn__kernels();
  int64_t t0 = 0; /* packed keys: sequence b's first row */
  for (int64_t b = 0; b < c->B; b++) {
    int64_t n = n_new ? n_new[b] : L, len = c->lens[b];
    if (paged(c))
      grow(c, b, n);
    for (int64_t i = 0; i < n; i++) {
      for (int64_t h = 0; h < c->H; h++) {
        int64_t ke = kns ? b * kns[0] + h * kns[1] + i * kns[2] : ((t0 + i) * c->H + h) * c->D;
        attn__convert_row(kern, kdt, attn__elem(kn, kdt, ke), c->dt, key_row(c, b, h, len + i),
                          c->D);
        attn__convert_row(kern, vdt, attn__elem(vn, vdt, b * vns[0] + h * vns[1] + i * vns[2]),
                          c->dt, value_row(c, b, h, len + i), c->Dv);
      }
    }
    c->lens[b] = len + n;
    t0 += n;
  }
}

static attn_status kv_append_impl(attn_ctx *ctx, attn_kv_cache *cache, const attn_tensor *k_new,
                           const attn_tensor *v_new, const int64_t *n_new,
                           const attn_kv_append_params *params) {
  attn_status st;
  if ((st = attn__kv_check(ctx, cache)) != ATTN_OK)
    return st;
  attn_kv_append_params prm;
  attn_kv_append_params_init(&prm);
  attn_kv_cache *c = cache;
  if ((st = attn__read_params(ctx, &prm, sizeof prm, params)) ||
      (st = check_kv_operand(ctx, "k_new", k_new, c, c->B, c->D, "D")) ||
      (st = check_kv_operand(ctx, "v_new", v_new, c, c->B, c->Dv, "Dv")))
    return st;
  int64_t L = k_new->dims[2];
  if (v_new->dims[2] != L)
    return attn__fail(ctx, ATTN_ERR_SHAPE,
                      "v_new.shape[2] = %lld but k_new.shape[2] = %lld", (long long)v_new->dims[2], (long long)L);
  attn_rope_problem rope;
  if ((st = attn__rope_config_cached(ctx, prm.rope, c->D, &rope)))
    return st;
  if ((st = check_counts(ctx, c, n_new, L)) != ATTN_OK)
    return st;
  const void *kn = k_new->data;
  int32_t kdt = k_new->dtype;
  const int64_t *kns = k_new->strides;
  int64_t N = 0; /* rows stored: with RoPE, the only ones read and rotated */
  for (int64_t b = 0; b < c->B; b++)
    N += n_new ? n_new[b] : L;
  if (prm.rope && N > 0) { /* (the plan divides by its L) */
    /* The stored keys, and only those (a sequence appending fewer than L
     * rows leaves the rest unread), are packed token-major into the
     * workspace and rotated there at positions len_b + i, by attn_rope's
     * own plan and run, as one sequence of N tokens with explicit
     * positions (each row's angles depend on its position alone). */
    int64_t H = c->H, D = c->D;
    size_t kbytes, pbytes;
    if (__builtin_mul_overflow((size_t)(N * H), (size_t)D * sizeof(float), &kbytes) ||
        __builtin_mul_overflow((size_t)N, sizeof(int64_t), &pbytes))
      return attn__fail(ctx, ATTN_ERR_OVERFLOW, "the workspace size overflows");
    int64_t rot_strides[4] = {N * H * D, D, H * D, 1};
    rope.B = 1, rope.H = H, rope.L = N, rope.D = D;
    memcpy(rope.xs, rot_strides, sizeof rope.xs);
    attn__rope_plan(ctx, &rope);
    size_t total = attn__ws_round(kbytes) + attn__ws_round(pbytes) + attn__ws_round(rope.ws_bytes);
    if ((st = attn__ws_reserve(ctx, total)) != ATTN_OK)
      return st;
    float *kbuf = attn__ws_alloc(ctx, kbytes);
    int64_t *pos = attn__ws_alloc(ctx, pbytes);
    const attn_kernels *kern = attn__kernels();
    int64_t t0 = 0;
    for (int64_t b = 0; b < c->B; b++) {
      int64_t n = n_new ? n_new[b] : L;
      for (int64_t h = 0; h < H; h++)
        for (int64_t i = 0; i < n; i++)
          attn__widen(kern, kdt, attn__elem(kn, kdt, b * kns[0] + h * kns[1] + i * kns[2]),
                      kbuf + ((t0 + i) * H + h) * D, D);
      for (int64_t i = 0; i < n; i++)
        pos[t0 + i] = c->lens[b] + i;
      t0 += n;
    }
    rope.x = kbuf;
    rope.positions = pos;
    attn__rope_apply(ctx, &rope);
    kn = kbuf, kdt = ATTN_DTYPE_F32; /* rotated in float, rounded once when stored */
    kns = NULL;                      /* packed */
  }
  /* Checked: from here on nothing fails. */
  store_rows(c, kn, kdt, kns, v_new->data, v_new->dtype, v_new->strides, n_new, L);
  return ATTN_OK;
}

attn_status attn__kv_append_rows(attn_ctx *ctx, attn_kv_cache *c,
                                 const float *kn, const int64_t *kns, const float *vn,
                                 const int64_t *vns, const int64_t *n_new, int64_t L) {
  attn_status st = check_counts(ctx, c, n_new, L);
  if (st == ATTN_OK)
    store_rows(c, kn, ATTN_DTYPE_F32, kns, vn, ATTN_DTYPE_F32, vns, n_new, L);
  return st;
}

bool attn__kv_rows(attn_kv_cache *c, float **k, int64_t *ks, float **v, int64_t *vs) {
  if (paged(c) || c->dt != ATTN_DTYPE_F32)
    return false;
  *k = (float *)(void *)c->k;
  *v = (float *)(void *)c->v;
  memcpy(ks, c->ks, sizeof c->ks);
  memcpy(vs, c->vs, sizeof c->vs);
  return true;
}

attn_status attn__kv_check_rows(attn_ctx *ctx, attn_kv_cache *c, const int64_t *n_new,
                                int64_t L) {
  return check_counts(ctx, c, n_new, L);
}

void attn__kv_commit_rows(attn_kv_cache *c, const int64_t *n_new, int64_t L) {
  for (int64_t b = 0; b < c->B; b++)
    c->lens[b] += n_new ? n_new[b] : L;
}

/* ---- truncate, reset, copy ---- */

static attn_status kv_truncate_impl(attn_ctx *ctx, attn_kv_cache *cache, int64_t seq, int64_t len) {
  attn_status st;
  if ((st = attn__kv_check(ctx, cache)) ||
      (st = check_seq(ctx, "seq", cache, seq)))
    return st;
  if (len < 0 || len > cache->lens[seq])
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "len = %lld but sequence %lld holds %lld tokens (0..that allowed)", (long long)len, (long long)seq, (long long)cache->lens[seq]);
  shrink(cache, seq, len);
  return ATTN_OK;
}

static attn_status kv_reset_impl(attn_ctx *ctx, attn_kv_cache *cache, int64_t seq) {
  attn_status st;
  if ((st = attn__kv_check(ctx, cache)))
    return st;
  if (seq != -1 && (st = check_seq(ctx, "seq", cache, seq)))
    return st;
  for (int64_t b = seq == -1 ? 0 : seq; b < (seq == -1 ? cache->B : seq + 1); b++)
    shrink(cache, b, 0);
  return ATTN_OK;
}

static attn_status kv_copy_impl(attn_ctx *ctx, attn_kv_cache *cache, int64_t dst, int64_t src) {
  attn_status st;
  if ((st = attn__kv_check(ctx, cache)) ||
      (st = check_seq(ctx, "dst", cache, dst)) ||
      (st = check_seq(ctx, "src", cache, src)))
    return st;
  attn_kv_cache *c = cache;
  if (dst == src)
    return ATTN_OK;
  int64_t len = c->lens[src];
  if (paged(c)) {
    /* Take the references before dropping dst's own: they may share blocks. */
    const int32_t *ts = c->table + src * c->max_blocks;
    for (int64_t i = 0; i < ceil_div(len, c->bs); i++)
      c->refs[ts[i]]++;
    shrink(c, dst, 0);
    memcpy(c->table + dst * c->max_blocks, ts, (size_t)ceil_div(len, c->bs) * sizeof(int32_t));
  } else {
    for (int64_t h = 0; h < c->H; h++)
      for (int64_t j = 0; j < len; j++) {
        memcpy(key_row(c, dst, h, j), key_row(c, src, h, j), (size_t)c->D * c->esz);
        memcpy(value_row(c, dst, h, j), value_row(c, src, h, j), (size_t)c->Dv * c->esz);
      }
  }
  c->lens[dst] = len;
  return ATTN_OK;
}

/* ---- read back ---- */

static attn_status kv_read_impl(attn_ctx *ctx, const attn_kv_cache *cache, int64_t seq, int64_t start,
                         attn_tensor *k, attn_tensor *v) {
  attn_status st;
  if ((st = attn__kv_check(ctx, cache)) ||
      (st = check_seq(ctx, "seq", cache, seq)))
    return st;
  if (!k && !v)
    return attn__fail(ctx, ATTN_ERR_NULL_ARG, "k and v are both NULL");
  const attn_kv_cache *c = cache;
  attn_tensor *outs[2] = {k, v};
  const char *names[2] = {"k", "v"};
  const int64_t dims[2] = {c->D, c->Dv};
  int64_t n = -1;
  for (int o = 0; o < 2; o++) {
    attn_tensor *t = outs[o];
    if (!t)
      continue;
    if ((st = attn__check_tensor(ctx, names[o], t, 3, ATTN_DT_FLOAT)))
      return st;
    if (t->dims[0] != c->H || t->dims[2] != dims[o] || (n >= 0 && t->dims[1] != n))
      return attn__fail(ctx, ATTN_ERR_SHAPE,
                        "%s has shape [%lld, %lld, %lld] but must be [Hkv = %lld, n, %s = "
                        "%lld] (k and v with the same n)", names[o], (long long)t->dims[0], (long long)t->dims[1],
                        (long long)t->dims[2], (long long)c->H, o ? "Dv" : "D",
                        (long long)dims[o]);
    n = t->dims[1];
    if ((st = attn__check_writable(ctx, names[o], t)))
      return st;
    if (overlaps_cache(c, t))
      return attn__fail(ctx, ATTN_ERR_ALIASING, "%s overlaps the cache's memory", names[o]);
  }
  if (k && v && attn__overlap(k, v))
    return attn__fail(ctx, ATTN_ERR_ALIASING, "k and v overlap in memory");
  if (start < 0 || start > c->lens[seq] - n)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "start = %lld and n = %lld tokens but sequence %lld holds %lld "
                      "(start + n must not exceed that)", (long long)start, (long long)n,
                      (long long)seq, (long long)c->lens[seq]);
  const attn_kernels *kern = attn__kernels();
  for (int64_t h = 0; h < c->H; h++)
    for (int64_t j = 0; j < n; j++) {
      if (k)
        attn__convert_row(kern, c->dt, key_row(c, seq, h, start + j), k->dtype,
                          attn__elem(k->data, k->dtype, h * k->strides[0] + j * k->strides[1]),
                          c->D);
      if (v)
        attn__convert_row(kern, c->dt, value_row(c, seq, h, start + j), v->dtype,
                          attn__elem(v->data, v->dtype, h * v->strides[0] + j * v->strides[1]),
                          c->Dv);
    }
  return ATTN_OK;
}

void attn__kv_truncate_to(attn_kv_cache *c, int64_t b, int64_t len) { shrink(c, b, len); }

bool attn__kv_overlaps(const attn_kv_cache *c, const attn_tensor *t) { return overlaps_cache(c, t); }

/* ---- public entry points: the prologue, then the work above ---- */

attn_status attn_kv_append(attn_ctx *ctx, attn_kv_cache *cache, const attn_tensor *k_new,
                           const attn_tensor *v_new, const int64_t *n_new,
                           const attn_kv_append_params *params) {
  attn_status st = attn__op_begin(ctx, "attn_kv_append");
  if (st != ATTN_OK)
    return st;
  return attn__op_end(ctx, kv_append_impl(ctx, cache, k_new, v_new, n_new, params));
}

attn_status attn_kv_truncate(attn_ctx *ctx, attn_kv_cache *cache, int64_t seq, int64_t len) {
  attn_status st = attn__op_begin(ctx, "attn_kv_truncate");
  if (st != ATTN_OK)
    return st;
  return attn__op_end(ctx, kv_truncate_impl(ctx, cache, seq, len));
}

attn_status attn_kv_reset(attn_ctx *ctx, attn_kv_cache *cache, int64_t seq) {
  attn_status st = attn__op_begin(ctx, "attn_kv_reset");
  if (st != ATTN_OK)
    return st;
  return attn__op_end(ctx, kv_reset_impl(ctx, cache, seq));
}

attn_status attn_kv_copy(attn_ctx *ctx, attn_kv_cache *cache, int64_t dst, int64_t src) {
  attn_status st = attn__op_begin(ctx, "attn_kv_copy");
  if (st != ATTN_OK)
    return st;
  return attn__op_end(ctx, kv_copy_impl(ctx, cache, dst, src));
}

attn_status attn_kv_read(attn_ctx *ctx, const attn_kv_cache *cache, int64_t seq, int64_t start,
                         attn_tensor *k, attn_tensor *v) {
  attn_status st = attn__op_begin(ctx, "attn_kv_read");
  if (st != ATTN_OK)
    return st;
  return attn__op_end(ctx, kv_read_impl(ctx, cache, seq, start, k, v));
}
