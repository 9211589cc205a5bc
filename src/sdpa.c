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
 * the result is the same bits for any number of threads.
 *
 * This file: the public entry points and their checks (operands -> an
 * attn_sdpa_problem); planning and drivers are in sdpa_plan.c, the tile
 * kernel in sdpa_tile.c. */
#include "sdpa.h"
#include "check.h"

#include <math.h>
#include <string.h>

/* ---- validation ---- */

void attn_sdpa_params_init(attn_sdpa_params *p) {
  if (!p)
    return;
  memset(p, 0, sizeof *p);
  p->struct_size = sizeof *p;
}

attn_status attn__sdpa_check_heads(attn_ctx *ctx, int64_t Hq, int64_t Hkv) {
  if (Hkv == 0 ? Hq != 0 : Hq % Hkv != 0)
    return attn__fail(ctx, ATTN_ERR_SHAPE,
                      "q has %lld heads but k has %lld: the query heads must be a "
                      "multiple of the kv heads",
                      (long long)Hq, (long long)Hkv);
  return ATTN_OK;
}

attn_status attn__sdpa_check_params(attn_ctx *ctx, const attn_sdpa_params *p, int64_t B,
                                    int64_t Hq, int64_t Lk, int64_t D) {
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
  if (p->reserved_ || p->reserved2_)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG, "params.reserved_ and reserved2_ must be 0");
  if (p->logits_stage < ATTN_LOGITS_SCALED || p->logits_stage > ATTN_LOGITS_MASKED)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "params.logits_stage = %d is not an attn_logits_stage (0 scaled, 1 "
                      "soft-capped, 2 masked)",
                      (int)p->logits_stage);
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

/* t's first n strides; zeros for an empty tensor, whose strides may be
 * anything: no address is ever formed from them. */
static void strides_of(const attn_tensor *t, int64_t *dst, int n) {
  for (int a = 0; a < n; a++)
    dst[a] = attn__empty(t) ? 0 : t->strides[a];
}

void attn__sdpa_fill_common(attn_sdpa_problem *p, const attn_sdpa_params *prm) {
  /* With D = 0 every dot product is 0 and the scale does not matter. */
  p->scale = prm->scale != 0 ? prm->scale : p->D > 0 ? (float)(1.0 / sqrt((double)p->D)) : 1.0f;
  p->softcap = prm->softcap;
  p->causal = prm->causal != 0;
  p->window = prm->window != 0;
  /* Clamp the extents so i' +- extent cannot overflow: |i'| < Lq + Lk +
   * MAX_Q_OFFSET, so a longer extent reaches past every key all the same.
   * The sum saturates: an empty tensor may have any other dim up to
   * INT64_MAX (no row of such a problem runs). */
  int64_t far = MAX_Q_OFFSET;
  far = p->Lq > INT64_MAX / 4 ? INT64_MAX / 4 : far + p->Lq;
  far = p->Lk > INT64_MAX / 4 ? INT64_MAX / 4 : far + p->Lk;
  p->wl = prm->window_left < far ? prm->window_left : far;
  p->wr = prm->window_right < far ? prm->window_right : far;
  p->bottom_right = prm->align == ATTN_ALIGN_BOTTOM_RIGHT;
  p->alibi = prm->alibi_slopes;
  p->sinks = prm->sinks;
}

/* Check attn_sdpa's operands and params into a problem. */
static attn_status sdpa_check(attn_ctx *ctx, const attn_tensor *q, const attn_tensor *k,
                              const attn_tensor *v, attn_tensor *out,
                              const attn_sdpa_params *params, attn_sdpa_problem *p) {
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
      {ATTN_OPERAND("q", q, ATTN_DT_FLOAT, 4, 4), .sym = {B, HQ, LQ, D}},
      {ATTN_OPERAND("k", k, ATTN_DT_FLOAT, 4, 4), .sym = {B, HKV, LK, D}},
      {ATTN_OPERAND("v", v, ATTN_DT_FLOAT, 4, 4), .sym = {B, HKV, LK, DV}},
      {ATTN_OPERAND("params.mask", prm.mask, ATTN_DT_F32, 1, 4), .flags = opt_in, .bcast_nd = 4,
       .bcast = {B, HQ, LQ, LK}, .bstrides = ms},
      {ATTN_OPERAND("params.bool_mask", prm.bool_mask, ATTN_DT_U8, 1, 4), .flags = opt_in,
       .bcast_nd = 4, .bcast = {B, HQ, LQ, LK}, .bstrides = bs},
      {ATTN_OPERAND("out", out, ATTN_DT_FLOAT, 4, 4), .sym = {B, HQ, LQ, DV},
       .flags = ATTN_OPND_OUTPUT},
      {ATTN_OPERAND("params.lse", prm.lse, ATTN_DT_F32, 3, 3), .sym = {B, HQ, LQ},
       .flags = opt_out},
      {ATTN_OPERAND("params.weights", prm.weights, ATTN_DT_F32, 4, 4), .sym = {B, HQ, LQ, LK},
       .flags = opt_out},
      {ATTN_OPERAND("params.logits", prm.logits, ATTN_DT_F32, 4, 4), .sym = {B, HQ, LQ, LK},
       .flags = opt_out},
  };
  attn_dims d;
  if ((st = attn__check_operands(ctx, ops, 9, &d)) != ATTN_OK ||
      (st = attn__sdpa_check_heads(ctx, d.v[HQ], d.v[HKV])) != ATTN_OK ||
      (st = attn__sdpa_check_params(ctx, &prm, d.v[B], d.v[HQ], d.v[LK], d.v[D])) != ATTN_OK)
    return st;
  memset(p, 0, sizeof *p);
  p->B = d.v[B], p->Hq = d.v[HQ], p->Hkv = d.v[HKV];
  p->G = p->Hkv ? p->Hq / p->Hkv : 0; /* Hkv = 0 only with Hq = 0 */
  p->Lq = d.v[LQ], p->Lk = d.v[LK], p->D = d.v[D], p->Dv = d.v[DV];
  p->q = q->data, p->k = k->data, p->v = v->data, p->out = out->data;
  p->qdt = q->dtype, p->kdt = k->dtype, p->vdt = v->dtype, p->odt = out->dtype;
  strides_of(q, p->qs, 4);
  strides_of(k, p->ks, 4);
  strides_of(v, p->vs, 4);
  strides_of(out, p->os, 4);
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
    strides_of(prm.lse, p->lses, 3);
  }
  if (prm.weights) {
    p->w = prm.weights->data;
    strides_of(prm.weights, p->ws, 4);
  }
  if (prm.logits) {
    p->logits = prm.logits->data;
    strides_of(prm.logits, p->lgs, 4);
    p->logits_stage = prm.logits_stage;
  }
  p->kv_lens = prm.kv_lens;
  p->q_offsets = prm.q_offsets;
  attn__sdpa_fill_common(p, &prm);
  return ATTN_OK;
}

attn_status attn__sdpa(attn_ctx *ctx, const attn_tensor *q, const attn_tensor *k,
                       const attn_tensor *v, attn_tensor *out, const attn_sdpa_params *params) {
  attn_sdpa_problem p;
  attn_status st = sdpa_check(ctx, q, k, v, out, params, &p);
  /* No query row, or Dv = 0 with no other output: nothing to write (and the
   * rows of such an empty problem may number 2^60). */
  if (st == ATTN_OK && p.B > 0 && p.Hq > 0 && p.Lq > 0 &&
      (p.Dv > 0 || p.lse || p.w || p.logits)) {
    attn__sdpa_plan(ctx, &p);
    if ((st = attn__ws_reserve(ctx, p.ws_bytes)) == ATTN_OK) {
      attn__sdpa_run(ctx, &p);
      if (p.logits)
        attn__sdpa_logits(ctx, &p);
    }
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

attn_status attn__sdpa_check_offsets(attn_ctx *ctx, const char *name, const int64_t *cu,
                                     int32_t batch, int64_t total) {
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

/* The packed tensors as [1, H, T, D] views (attn_sdpa_packed.whole). */
static void varlen_whole(attn_sdpa_problem *p, const attn_sdpa_params *prm, const attn_tensor *q,
                         const attn_tensor *k, const attn_tensor *v, attn_tensor *out) {
  memset(p, 0, sizeof *p);
  p->B = 1, p->Hq = q->dims[1], p->Hkv = k->dims[1], p->G = p->Hkv ? p->Hq / p->Hkv : 0;
  p->D = q->dims[2], p->Dv = v->dims[2];
  const attn_tensor *ts[4] = {q, k, v, out};
  int64_t *strides[4] = {p->qs, p->ks, p->vs, p->os};
  for (int t = 0; t < 4; t++) {
    int64_t ts_str[3];
    strides_of(ts[t], ts_str, 3);
    strides[t][0] = 0;
    strides[t][1] = ts_str[1];
    strides[t][2] = ts_str[0];
    strides[t][3] = 1;
  }
  p->qdt = q->dtype, p->kdt = k->dtype, p->vdt = v->dtype, p->odt = out->dtype;
  p->q = q->data, p->k = k->data, p->v = v->data, p->out = out->data;
  if (prm->lse) {
    int64_t ls[2];
    strides_of(prm->lse, ls, 2);
    p->lse = prm->lse->data;
    p->lses[0] = 0;
    p->lses[1] = ls[0];
    p->lses[2] = ls[1];
  }
  p->q_offsets = prm->q_offsets;
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
  if (prm->mask || prm->bool_mask || prm->kv_lens || prm->weights || prm->logits)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "params.mask, bool_mask, kv_lens, weights and logits must be NULL "
                      "(packed sequences are masked by their offsets)");
  if (batch < 0)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG, "batch = %d but must be >= 0", (int)batch);
  enum { TQ = ATTN_SYM_TQ, TK = ATTN_SYM_TK, HQ = ATTN_SYM_HQ, HKV = ATTN_SYM_HKV };
  enum { D = ATTN_SYM_D, DV = ATTN_SYM_DV };
  const attn_operand ops[] = {
      {ATTN_OPERAND("q", q, ATTN_DT_FLOAT, 3, 3), .sym = {TQ, HQ, D}},
      {ATTN_OPERAND("k", k, ATTN_DT_FLOAT, 3, 3), .sym = {TK, HKV, D}},
      {ATTN_OPERAND("v", v, ATTN_DT_FLOAT, 3, 3), .sym = {TK, HKV, DV}},
      {ATTN_OPERAND("out", out, ATTN_DT_FLOAT, 3, 3), .sym = {TQ, HQ, DV},
       .flags = ATTN_OPND_OUTPUT},
      {ATTN_OPERAND("params.lse", prm->lse, ATTN_DT_F32, 2, 2), .sym = {HQ, TQ},
       .flags = ATTN_OPND_OPTIONAL | ATTN_OPND_OUTPUT},
  };
  attn_dims d;
  if ((st = attn__check_operands(ctx, ops, 5, &d)) != ATTN_OK ||
      (st = attn__sdpa_check_heads(ctx, d.v[HQ], d.v[HKV])) != ATTN_OK ||
      (st = attn__sdpa_check_offsets(ctx, "cu_seqlens_q", cu_q, batch, d.v[TQ])) != ATTN_OK ||
      (st = attn__sdpa_check_offsets(ctx, "cu_seqlens_k", cu_k, batch, d.v[TK])) != ATTN_OK)
    return st;
  return attn__sdpa_check_params(ctx, prm, batch, d.v[HQ], d.v[TK], d.v[D]);
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
  /* The whole plan and its workspace come first: failing half-way would
   * leave the earlier sequences' outputs written. */
  attn_sdpa_packed pk;
  memset(&pk, 0, sizeof pk);
  varlen_whole(&pk.whole, &prm, q, k, v, out);
  pk.prm = &prm;
  pk.batch = batch;
  pk.cu_q = cu_q;
  pk.cu_k = cu_k;
  attn__sdpa_plan_packed(ctx, &pk);
  if ((st = attn__ws_reserve(ctx, pk.ws_bytes)) == ATTN_OK)
    attn__sdpa_run_packed(ctx, &pk);
  return attn__op_end(ctx, st);
}

/* attn__sdpa_kv's checks and plan into *pp (p->Lq = 0: no row to compute). */
static attn_status kv_plan(attn_ctx *ctx, const void *q, int32_t qdt, const int64_t *qs,
                           int64_t Hq, int64_t Lq, void *out, int32_t odt, const int64_t *os,
                           const attn_kv_view *kv, const int64_t *q_lens,
                           const attn_sdpa_params *prm, attn_sdpa_problem *pp) {
  if (prm->mask || prm->bool_mask || prm->kv_lens || prm->q_offsets || prm->weights ||
      prm->logits)
    return attn__fail(ctx, ATTN_ERR_INVALID_ARG,
                      "params.mask, bool_mask, kv_lens, q_offsets, weights and logits must be "
                      "NULL (the cache's lengths place and bound the keys)");
  int64_t B = kv->B, Lk = 0;
  for (int64_t b = 0; b < B; b++)
    Lk = kv->lens[b] > Lk ? kv->lens[b] : Lk;
  attn_status st;
  const attn_operand lse[] = {{ATTN_OPERAND("params.lse", prm->lse, ATTN_DT_F32, 3, 3),
                               .flags = ATTN_OPND_OPTIONAL | ATTN_OPND_OUTPUT}};
  if ((st = attn__sdpa_check_params(ctx, prm, B, Hq, Lk, kv->D)) != ATTN_OK ||
      (st = attn__check_operands(ctx, lse, 1, NULL)) != ATTN_OK)
    return st;
  if (prm->lse && (prm->lse->dims[0] != B || prm->lse->dims[1] != Hq || prm->lse->dims[2] != Lq))
    return attn__fail(ctx, ATTN_ERR_SHAPE,
                      "params.lse has shape [%lld, %lld, %lld] but must be [B, Hq, Lq] = "
                      "[%lld, %lld, %lld]",
                      (long long)prm->lse->dims[0], (long long)prm->lse->dims[1],
                      (long long)prm->lse->dims[2], (long long)B, (long long)Hq, (long long)Lq);
  attn_sdpa_problem p;
  memset(&p, 0, sizeof p);
  *pp = p;
  if (Lq == 0 || Hq == 0)
    return ATTN_OK; /* no query row: nothing to compute (the plan divides by Lq) */
  p.B = B, p.Hq = Hq, p.Hkv = kv->Hkv, p.G = Hq / kv->Hkv, p.Lq = Lq, p.Lk = Lk;
  p.D = kv->D, p.Dv = kv->Dv;
  p.q = q, p.k = kv->k, p.v = kv->v, p.out = out;
  p.qdt = qdt, p.kdt = p.vdt = kv->dt, p.odt = odt;
  memcpy(p.qs, qs, sizeof p.qs);
  memcpy(p.os, os, sizeof p.os);
  memcpy(p.ks, kv->ks, sizeof kv->ks);
  memcpy(p.vs, kv->vs, sizeof kv->vs);
  p.ks[3] = p.vs[3] = 1;
  if (prm->lse) {
    p.lse = prm->lse->data;
    memcpy(p.lses, prm->lse->strides, sizeof p.lses);
  }
  p.kv_lens = kv->lens;
  p.q_lens = q_lens;
  p.blocks = kv->blocks;
  p.blocks_stride = kv->blocks_stride;
  p.block_size = kv->block_size;
  attn__sdpa_fill_common(&p, prm);
  p.bottom_right = true; /* whatever prm->align says: the cache places the rows */
  attn__sdpa_plan(ctx, &p);
  *pp = p;
  return ATTN_OK;
}

attn_status attn__sdpa_kv(attn_ctx *ctx, const void *q, int32_t qdt, const int64_t *qs,
                          int64_t Hq, int64_t Lq, void *out, int32_t odt, const int64_t *os,
                          const attn_kv_view *kv, const int64_t *q_lens,
                          const attn_sdpa_params *prm) {
  attn_sdpa_problem p;
  attn_status st = kv_plan(ctx, q, qdt, qs, Hq, Lq, out, odt, os, kv, q_lens, prm, &p);
  if (st != ATTN_OK || p.Lq == 0)
    return st;
  if ((st = attn__ws_reserve(ctx, p.ws_bytes)) == ATTN_OK)
    attn__sdpa_run(ctx, &p);
  return st;
}

attn_status attn__sdpa_kv_ws(attn_ctx *ctx, const int64_t *qs, int64_t Hq, int64_t Lq,
                             const int64_t *os, const attn_kv_view *kv, const int64_t *q_lens,
                             const attn_sdpa_params *prm, size_t *ws_bytes) {
  attn_sdpa_problem p;
  attn_status st = kv_plan(ctx, NULL, ATTN_DTYPE_F32, qs, Hq, Lq, NULL, ATTN_DTYPE_F32, os, kv,
                           q_lens, prm, &p);
  *ws_bytes = st == ATTN_OK && p.Lq ? p.ws_bytes : 0;
  return st;
}
