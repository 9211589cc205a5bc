/* Declarative operand checks: an op describes each tensor operand once (the
 * dtypes it accepts, its rank, a symbol per axis, whether it is written or
 * broadcast) and attn__check_operands checks them all and writes the
 * message. Adding a dtype to an op is one bit in its spec. */
#ifndef ATTN_CHECK_H
#define ATTN_CHECK_H

#include "internal.h"

/* Axis symbols: bound on first sight (operand order, then axis order), then
 * every later axis with the same symbol must match. */
enum {
  ATTN_SYM_ANY = 0, /* unconstrained */
  ATTN_SYM_B,       /* batch */
  ATTN_SYM_HQ,      /* query heads */
  ATTN_SYM_HKV,     /* key/value heads */
  ATTN_SYM_LQ,      /* queries per sequence */
  ATTN_SYM_LK,      /* keys per sequence */
  ATTN_SYM_D,       /* query/key head dim */
  ATTN_SYM_DV,      /* value head dim */
  ATTN_SYM_TQ,      /* packed query tokens */
  ATTN_SYM_TK,      /* packed key tokens */
  ATTN_SYM_COUNT
};

/* Bit set of accepted dtypes. */
#define ATTN_DT(dtype) (1u << (dtype))
#define ATTN_DT_F32 ATTN_DT(ATTN_DTYPE_F32)
#define ATTN_DT_U8 ATTN_DT(ATTN_DTYPE_U8)
#define ATTN_DT_F16 ATTN_DT(ATTN_DTYPE_F16)
#define ATTN_DT_BF16 ATTN_DT(ATTN_DTYPE_BF16)
/* The float types an op that computes in float reads and writes. */
#define ATTN_DT_FLOAT (ATTN_DT_F32 | ATTN_DT_F16 | ATTN_DT_BF16)

/* An operand index for attn_operand.like (0 there means none). */
#define ATTN_LIKE(index) ((uint8_t)((index) + 1))

enum {
  ATTN_OPND_OPTIONAL = 1u << 0,   /* NULL allowed (the operand is skipped) */
  ATTN_OPND_OUTPUT = 1u << 1,     /* written: writable, and overlapping no other operand */
  ATTN_OPND_SAME_SHAPE = 1u << 2, /* same ndim and dims as operand `like` */
  ATTN_OPND_INPLACE = 1u << 3,    /* an output that may be the same view as `like` */
  ATTN_OPND_BROADCAST = 1u << 4,  /* read broadcast (NumPy rules) to `like`'s shape, or to
                                     the symbols bcast[0..bcast_nd) when like is 0 */
};

typedef struct {
  const char *name; /* as the caller knows it: "q", "params.mask" */
  const attn_tensor *t;
  uint32_t dtypes;            /* ATTN_DT bits */
  int8_t min_nd, max_nd;      /* rank range */
  uint8_t sym[ATTN_MAX_DIMS]; /* per axis, when min_nd == max_nd */
  uint8_t flags;              /* ATTN_OPND_* */
  uint8_t like;               /* ATTN_LIKE(index) or 0 */
  int8_t bcast_nd;
  uint8_t bcast[ATTN_MAX_DIMS];
  int64_t *bstrides; /* BROADCAST: element strides over the target shape */
} attn_operand;

/* The fields every spec sets, as designated initializers:
 *   {ATTN_OPERAND("q", q, ATTN_DT_F32, 4, 4), .sym = {...}, .flags = ...} */
#define ATTN_OPERAND(name_, t_, dtypes_, min_nd_, max_nd_)                                         \
  .name = (name_), .t = (t_), .dtypes = (dtypes_), .min_nd = (min_nd_), .max_nd = (max_nd_)

/* Symbol values after a check (0 for a symbol no operand has). */
typedef struct {
  int64_t v[ATTN_SYM_COUNT];
  int8_t op[ATTN_SYM_COUNT], axis[ATTN_SYM_COUNT]; /* where each was bound */
} attn_dims;

/* Check ops[0..n) in three passes, so the first failure reported is the
 * most basic one: handles, dtypes and ranks; then shapes and broadcasts;
 * then writability and aliasing of the outputs (against every other
 * operand, inputs and outputs). dims may be NULL. */
attn_status attn__check_operands(attn_ctx *ctx, const attn_operand *ops, int n, attn_dims *dims);

/* One operand: t is a live tensor of ctx with nd dims, of a dtype in `dtypes`. */
attn_status attn__check_tensor(attn_ctx *ctx, const char *name, const attn_tensor *t, int nd,
                               uint32_t dtypes);

/* The strides of t padded on the left to ATTN_MAX_DIMS axes (leading dims 1,
 * strides 0); dims may be NULL. */
void attn__pad_view(const attn_tensor *t, int64_t *dims, int64_t *strides);

#endif
