/* The backward of scaled dot-product attention between its entry points and
 * checks (sdpa_bwd.c) and its kernel, plan and run (sdpa_bwd_tile.c). */
#ifndef ATTN_SDPA_BWD_H
#define ATTN_SDPA_BWD_H

#include "sdpa.h"

/* The forward's problem (q, k, v, its out and lse as inputs, the logit and
 * visibility fields) and the backward's own operands. */
typedef struct {
  attn_sdpa_problem f;
  const float *dout;
  float *dq, *dk, *dv, *dmask, *dsinks;
  int64_t gs[4], dqs[4], dks[4], dvs[4], dms[4];
  /* plan */
  int32_t threads;
  size_t per_thread, ws_bytes;
  /* run */
  char *work;         /* threads * per_thread bytes */
  double *sink_parts; /* [B, Hq]: each item's share of dsinks */
} attn_sdpa_bwd_problem;

/* Threads and the exact workspace (p->ws_bytes): per-thread tiles, then the
 * sink shares. Never fails. */
void attn__sdpa_bwd_plan(const attn_ctx *ctx, attn_sdpa_bwd_problem *p);
/* Run a planned problem within a reservation of p->ws_bytes; the sink
 * gradient is added to sink_acc[Hq] (batches in order), so packed sequences
 * can sum theirs. */
void attn__sdpa_bwd_run(attn_ctx *ctx, attn_sdpa_bwd_problem *p, double *sink_acc);

#endif
