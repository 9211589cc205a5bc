/* Declarative operand checks (check.h). */
#include "check.h"

#include <stdio.h>
#include <string.h>

static const char *const sym_text[ATTN_SYM_COUNT] = {
    [ATTN_SYM_B] = "the batch size",       [ATTN_SYM_HQ] = "the query head count",
    [ATTN_SYM_HKV] = "the kv head count",  [ATTN_SYM_LQ] = "the query count",
    [ATTN_SYM_LK] = "the key count",       [ATTN_SYM_D] = "the head dim",
    [ATTN_SYM_DV] = "the value dim",       [ATTN_SYM_TQ] = "the query token count",
    [ATTN_SYM_TK] = "the key token count",
};

static attn_status check_handle(attn_ctx *ctx, const attn_operand *o) {
  const attn_tensor *t = o->t;
  if (!t)
    return attn__fail(ctx, ATTN_ERR_NULL_ARG, "%s is NULL", o->name);
  if (t->magic != ATTN_TENSOR_MAGIC)
    return attn__fail(ctx, ATTN_ERR_BAD_HANDLE, "%s is not a live tensor", o->name);
  if (t->ctx != ctx)
    return attn__fail(ctx, ATTN_ERR_BAD_HANDLE, "%s was created from another context", o->name);
  if (t->dtype < 0 || t->dtype > 31 || !(o->dtypes & ATTN_DT(t->dtype))) {
    char want[64] = "";
    for (int32_t d = 0; d < 32; d++)
      if (o->dtypes & ATTN_DT(d)) {
        size_t len = strlen(want);
        snprintf(want + len, sizeof want - len, "%s%s", len ? " or " : "", attn__dtype_name(d));
      }
    /* An op that computes in float only refuses half precision here, before
     * any byte is read as float; the message says how to get there. */
    bool half = t->dtype == ATTN_DTYPE_F16 || t->dtype == ATTN_DTYPE_BF16;
    return attn__fail(ctx, ATTN_ERR_UNSUPPORTED, "%s has dtype %s but must be %s%s", o->name,
                      attn__dtype_name(t->dtype), want,
                      half ? " (convert with attn_tensor_copy)" : "");
  }
  if (t->ndim < o->min_nd || t->ndim > o->max_nd) {
    if (o->min_nd == o->max_nd)
      return attn__fail(ctx, ATTN_ERR_SHAPE, "%s has %d dims but must have %d", o->name,
                        (int)t->ndim, (int)o->min_nd);
    return attn__fail(ctx, ATTN_ERR_SHAPE, "%s has %d dims but must have %d..%d", o->name,
                      (int)t->ndim, (int)o->min_nd, (int)o->max_nd);
  }
  return ATTN_OK;
}

static attn_status check_same_shape(attn_ctx *ctx, const attn_operand *a, const attn_operand *b) {
  if (a->t->ndim != b->t->ndim)
    return attn__fail(ctx, ATTN_ERR_SHAPE, "%s has %d dims but %s has %d", b->name, (int)b->t->ndim,
                      a->name, (int)a->t->ndim);
  for (int32_t i = 0; i < a->t->ndim; i++)
    if (a->t->dims[i] != b->t->dims[i])
      return attn__fail(ctx, ATTN_ERR_SHAPE, "%s.shape[%d] = %lld but %s.shape[%d] = %lld", b->name,
                        (int)i, (long long)b->t->dims[i], a->name, (int)i,
                        (long long)a->t->dims[i]);
  return ATTN_OK;
}

static attn_status check_shape(attn_ctx *ctx, const attn_operand *ops, int idx, attn_dims *d) {
  const attn_operand *o = &ops[idx];
  const attn_tensor *t = o->t;
  const attn_operand *like = o->like ? &ops[o->like - 1] : NULL;
  attn_status st;
  if (o->min_nd == o->max_nd)
    for (int32_t a = 0; a < t->ndim; a++) {
      int s = o->sym[a];
      if (!s)
        continue;
      if (d->op[s] < 0) {
        d->v[s] = t->dims[a];
        d->op[s] = (int8_t)idx;
        d->axis[s] = (int8_t)a;
      } else if (t->dims[a] != d->v[s]) {
        return attn__fail(ctx, ATTN_ERR_SHAPE, "%s.shape[%d] = %lld but %s %s.shape[%d] is %lld",
                          o->name, (int)a, (long long)t->dims[a], sym_text[s], ops[d->op[s]].name,
                          (int)d->axis[s], (long long)d->v[s]);
      }
    }
  if ((o->flags & ATTN_OPND_SAME_SHAPE) && (st = check_same_shape(ctx, like, o)) != ATTN_OK)
    return st;
  if (o->flags & ATTN_OPND_BROADCAST) {
    int64_t target[ATTN_MAX_DIMS];
    int32_t nd = like ? like->t->ndim : o->bcast_nd;
    for (int32_t a = 0; a < nd; a++)
      target[a] = like ? like->t->dims[a] : d->v[o->bcast[a]];
    return attn__broadcast_strides(ctx, o->name, t, nd, target, o->bstrides);
  }
  return ATTN_OK;
}

static attn_status check_output(attn_ctx *ctx, const attn_operand *ops, int n, int idx) {
  const attn_operand *o = &ops[idx];
  attn_status st = attn__check_writable(ctx, o->name, o->t);
  if (st != ATTN_OK)
    return st;
  for (int i = 0; i < n; i++) {
    const attn_operand *other = &ops[i];
    if (i == idx || !other->t || !attn__overlap(o->t, other->t))
      continue;
    if ((o->flags & ATTN_OPND_INPLACE) && o->like == ATTN_LIKE(i)) {
      if (attn__same_view(o->t, other->t))
        continue;
      return attn__fail(ctx, ATTN_ERR_ALIASING,
                        "%s overlaps %s but is not the same view (in place means %s == %s: "
                        "same data, shape and strides)",
                        o->name, other->name, o->name, other->name);
    }
    return attn__fail(ctx, ATTN_ERR_ALIASING, "%s overlaps %s in memory", o->name, other->name);
  }
  return ATTN_OK;
}

attn_status attn__check_operands(attn_ctx *ctx, const attn_operand *ops, int n, attn_dims *dims) {
  attn_dims local;
  attn_dims *d = dims ? dims : &local;
  memset(d, 0, sizeof *d);
  memset(d->op, -1, sizeof d->op);
  attn_status st;
  for (int i = 0; i < n; i++)
    if ((ops[i].t || !(ops[i].flags & ATTN_OPND_OPTIONAL)) &&
        (st = check_handle(ctx, &ops[i])) != ATTN_OK)
      return st;
  for (int i = 0; i < n; i++)
    if (ops[i].t && (st = check_shape(ctx, ops, i, d)) != ATTN_OK)
      return st;
  for (int i = 0; i < n; i++)
    if (ops[i].t && (ops[i].flags & ATTN_OPND_OUTPUT) &&
        (st = check_output(ctx, ops, n, i)) != ATTN_OK)
      return st;
  return ATTN_OK;
}

attn_status attn__check_tensor(attn_ctx *ctx, const char *name, const attn_tensor *t, int nd,
                               uint32_t dtypes) {
  const attn_operand op[] = {{ATTN_OPERAND(name, t, dtypes, nd, nd)}};
  return attn__check_operands(ctx, op, 1, NULL);
}

void attn__pad_view(const attn_tensor *t, int64_t *dims, int64_t *strides) {
  int32_t shift = ATTN_MAX_DIMS - t->ndim;
  for (int32_t i = 0; i < ATTN_MAX_DIMS; i++) {
    if (dims)
      dims[i] = i < shift ? 1 : t->dims[i - shift];
    strides[i] = i < shift ? 0 : t->strides[i - shift];
  }
}
