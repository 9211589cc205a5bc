/* Allocation failure, through the context's allocator callbacks: for every
 * op, count the allocations it makes on a fresh context, then for each k up
 * to that count make the k-th fail. The op must return ATTN_ERR_NO_MEMORY
 * (or succeed with the right result if that allocation was optional), leak
 * nothing, leave its outputs and their owners untouched, and leave the
 * context usable: the same call then succeeds with the same result. An op
 * that allocates nothing must succeed while the allocator fails; a warm
 * context (second call, same shapes) must not allocate at all. */
#include "test_util.h"

#define MAX_T 12
#define MAX_OUT 4

/* One context with a counting allocator, the tensors an op needs, and the
 * op's outputs (as raw buffers, to compare them whole). */
typedef struct fixture {
  tu_counter c;
  attn_ctx *ctx;
  attn_tensor *t[MAX_T];
  float *out[MAX_OUT]; /* caller memory or an owned tensor's buffer */
  size_t out_n[MAX_OUT];
  const float *init[MAX_OUT]; /* in-place outputs: their input, restored before each call */
  attn_tensor *owned; /* an output created by attn_tensor_new, if any */
  int n_out;
} fixture;

typedef struct {
  const char *name; /* the function, as its messages name it */
  int32_t threads;
  void (*setup)(fixture *f);
  attn_status (*run)(fixture *f);
} op_case;

/* ---- shared read-only inputs ---- */
enum { B = 2, HQ = 4, HKV = 2, LQ = 37, LK = 300, D = 16, DV = 12 };
static float g_q[B * HQ * LQ * D], g_k[B * HKV * LK * D], g_v[B * HKV * LK * DV];
static float g_long_k[4096 * 8], g_long_v[4096 * 8], g_long_q[8];
static float g_x[6 * 33];
enum { SM_R = 64, SM_N = 4096 };
static float g_sm[SM_R * SM_N], g_sm_mask[SM_N];
static uint8_t g_sm_bmask[SM_R];
enum { PE_B = 2, PE_L = 300, PE_D = 64, RP_H = 4, RP_L = 100 };
static float g_pe[PE_B * PE_L * PE_D], g_rope[PE_B * RP_H * RP_L * PE_D];
static double g_pe_pos[PE_L];
static int64_t g_rope_pos[PE_B * RP_L];
static float g_o[B * HQ * LQ * DV], g_do[B * HQ * LQ * DV], g_lse[B * HQ * LQ];

static void fill_inputs(void) {
  tu_rng r = {12345};
  tu_fill(&r, g_q, sizeof g_q / sizeof *g_q, -1, 1);
  tu_fill(&r, g_k, sizeof g_k / sizeof *g_k, -1, 1);
  tu_fill(&r, g_v, sizeof g_v / sizeof *g_v, -1, 1);
  tu_fill(&r, g_long_k, sizeof g_long_k / sizeof *g_long_k, -1, 1);
  tu_fill(&r, g_long_v, sizeof g_long_v / sizeof *g_long_v, -1, 1);
  tu_fill(&r, g_long_q, sizeof g_long_q / sizeof *g_long_q, -1, 1);
  tu_fill(&r, g_x, sizeof g_x / sizeof *g_x, -3, 3);
  tu_fill(&r, g_sm, sizeof g_sm / sizeof *g_sm, -8, 8);
  tu_fill(&r, g_sm_mask, SM_N, -2, 0);
  g_sm_mask[7] = -INFINITY;
  for (int i = 0; i < SM_R; i++)
    g_sm_bmask[i] = (uint8_t)(i % 5 != 0);
  tu_fill(&r, g_pe, sizeof g_pe / sizeof *g_pe, -1, 1);
  tu_fill(&r, g_rope, sizeof g_rope / sizeof *g_rope, -1, 1);
  for (int i = 0; i < PE_L; i++)
    g_pe_pos[i] = 0.5 * i + 1000;
  for (int i = 0; i < PE_B * RP_L; i++)
    g_rope_pos[i] = (i * 7) % 500;
  tu_fill(&r, g_o, sizeof g_o / sizeof *g_o, -1, 1);
  tu_fill(&r, g_do, sizeof g_do / sizeof *g_do, -1, 1);
  tu_fill(&r, g_lse, sizeof g_lse / sizeof *g_lse, 2, 4);
}

static attn_tensor *wrap_in(fixture *f, const float *data, size_t n, int32_t ndim,
                            const int64_t *dims) {
  return tu_wrap(f->ctx, (float *)data, n, ndim, dims, NULL);
}

/* A caller-memory output of n floats, wrapped with dims. */
static attn_tensor *wrap_out(fixture *f, size_t n, int32_t ndim, const int64_t *dims) {
  assert_true(f->n_out < MAX_OUT);
  float *buf = malloc(n * sizeof *buf);
  assert_non_null(buf);
  for (size_t i = 0; i < n; i++)
    buf[i] = -777.0f; /* sentinel */
  f->out[f->n_out] = buf;
  f->out_n[f->n_out++] = n;
  return tu_wrap(f->ctx, buf, n, ndim, dims, NULL);
}

/* An in-place operand: a copy of `src`, restored before every call. */
static attn_tensor *wrap_inout(fixture *f, const float *src, size_t n, int32_t ndim,
                               const int64_t *dims) {
  attn_tensor *t = wrap_out(f, n, ndim, dims);
  f->init[f->n_out - 1] = src;
  return t;
}

/* An output owned by the context (zero-filled by attn_tensor_new). */
static attn_tensor *owned_out(fixture *f, size_t n, int32_t ndim, const int64_t *dims) {
  assert_true(f->n_out < MAX_OUT);
  attn_tensor *t = NULL;
  assert_ok(attn_tensor_new(f->ctx, ATTN_DTYPE_F32, ndim, dims, &t));
  f->owned = t;
  f->out[f->n_out] = attn_tensor_data(t);
  f->out_n[f->n_out++] = n;
  return t;
}

/* ---- the ops ---- */

static void setup_sdpa(fixture *f) {
  int64_t qd[4] = {B, HQ, LQ, D}, kd[4] = {B, HKV, LK, D}, vd[4] = {B, HKV, LK, DV};
  int64_t od[4] = {B, HQ, LQ, DV}, ld[3] = {B, HQ, LQ}, wd[4] = {B, HQ, LQ, LK};
  f->t[0] = wrap_in(f, g_q, sizeof g_q / 4, 4, qd);
  f->t[1] = wrap_in(f, g_k, sizeof g_k / 4, 4, kd);
  f->t[2] = wrap_in(f, g_v, sizeof g_v / 4, 4, vd);
  f->t[3] = owned_out(f, (size_t)B * HQ * LQ * DV, 4, od);
  f->t[4] = wrap_out(f, (size_t)B * HQ * LQ, 3, ld);
  f->t[5] = wrap_out(f, (size_t)B * HQ * LQ * LK, 4, wd);
}
static attn_status run_sdpa(fixture *f) {
  attn_sdpa_params p;
  attn_sdpa_params_init(&p);
  p.causal = 1;
  p.align = ATTN_ALIGN_BOTTOM_RIGHT;
  p.lse = f->t[4];
  p.weights = f->t[5];
  return attn_sdpa(f->ctx, f->t[0], f->t[1], f->t[2], f->t[3], &p);
}

/* One query against 4096 keys: with 2 threads (and a sequential BLAS) the
 * keys are split in chunks with their own partial states. */
static void setup_sdpa_split(fixture *f) {
  int64_t qd[4] = {1, 1, 1, 8}, kd[4] = {1, 1, 4096, 8}, od[4] = {1, 1, 1, 8};
  f->t[0] = wrap_in(f, g_long_q, 8, 4, qd);
  f->t[1] = wrap_in(f, g_long_k, 4096 * 8, 4, kd);
  f->t[2] = wrap_in(f, g_long_v, 4096 * 8, 4, kd);
  f->t[3] = wrap_out(f, 8, 4, od);
}
static attn_status run_sdpa_split(fixture *f) {
  return attn_sdpa(f->ctx, f->t[0], f->t[1], f->t[2], f->t[3], NULL);
}

/* Packed sequences that grow: the last needs the largest workspace, so an
 * op that grew its workspace per sequence would fail after writing the
 * first sequences' outputs. */
static const int64_t g_cu_q[4] = {0, 1, 4, 37}, g_cu_k[4] = {0, 2, 40, 300};
static void setup_varlen(fixture *f) {
  int64_t qd[3] = {LQ, HQ, D}, kd[3] = {LK, HKV, D}, vd[3] = {LK, HKV, DV};
  int64_t od[3] = {LQ, HQ, DV}, ld[2] = {HQ, LQ};
  f->t[0] = wrap_in(f, g_q, (size_t)LQ * HQ * D, 3, qd);
  f->t[1] = wrap_in(f, g_k, (size_t)LK * HKV * D, 3, kd);
  f->t[2] = wrap_in(f, g_v, (size_t)LK * HKV * DV, 3, vd);
  f->t[3] = wrap_out(f, (size_t)LQ * HQ * DV, 3, od);
  f->t[4] = wrap_out(f, (size_t)HQ * LQ, 2, ld);
}
static attn_status run_varlen(fixture *f) {
  attn_sdpa_params p;
  attn_sdpa_params_init(&p);
  p.causal = 1;
  p.lse = f->t[4];
  return attn_sdpa_varlen(f->ctx, f->t[0], f->t[1], f->t[2], f->t[3], 3, g_cu_q, g_cu_k, &p);
}

/* Tensor creation is an op too: its output is the handle. */
static void setup_none(fixture *f) { (void)f; }
static attn_status run_tensor_new(fixture *f) {
  int64_t dims[3] = {3, 5, 7};
  attn_tensor *t = (attn_tensor *)0x1;
  attn_status st = attn_tensor_new(f->ctx, ATTN_DTYPE_F32, 3, dims, &t);
  if (st != ATTN_OK)
    assert_ptr_equal(t, (attn_tensor *)0x1);
  return st;
}
static attn_status run_tensor_wrap(fixture *f) {
  int64_t dims[2] = {6, 33}, strides[2] = {33, 1};
  attn_tensor *t = (attn_tensor *)0x1;
  attn_status st =
      attn_tensor_wrap(f->ctx, ATTN_DTYPE_F32, 2, dims, strides, g_x, sizeof g_x, &t);
  if (st != ATTN_OK)
    assert_ptr_equal(t, (attn_tensor *)0x1);
  return st;
}

/* Softmax over [64, 4096] (enough work for two threads), masks broadcast. */
static void setup_softmax(fixture *f) {
  int64_t xd[2] = {SM_R, SM_N}, md[1] = {SM_N}, bd[2] = {SM_R, 1};
  f->t[0] = wrap_in(f, g_sm, SM_R * SM_N, 2, xd);
  f->t[1] = wrap_out(f, SM_R * SM_N, 2, xd);
  f->t[2] = wrap_in(f, g_sm_mask, SM_N, 1, md);
  assert_ok(attn_tensor_wrap(f->ctx, ATTN_DTYPE_U8, 2, bd, NULL, g_sm_bmask, SM_R, &f->t[3]));
}
static attn_status run_softmax_common(fixture *f, int log) {
  attn_softmax_params p;
  attn_softmax_params_init(&p);
  p.scale = 0.5f;
  p.mask = f->t[2];
  p.bool_mask = f->t[3];
  return log ? attn_log_softmax(f->ctx, f->t[0], f->t[1], &p)
             : attn_softmax(f->ctx, f->t[0], f->t[1], &p);
}
static attn_status run_softmax(fixture *f) { return run_softmax_common(f, 0); }
static attn_status run_log_softmax(fixture *f) { return run_softmax_common(f, 1); }
/* In place. */
static void setup_softmax_inplace(fixture *f) {
  int64_t xd[2] = {SM_R, SM_N};
  f->t[0] = wrap_inout(f, g_sm, SM_R * SM_N, 2, xd);
}
static attn_status run_softmax_inplace(fixture *f) {
  return attn_softmax(f->ctx, f->t[0], f->t[0], NULL);
}

/* A half copy of `data` (input), owned by the context. */
static attn_tensor *half_in(fixture *f, const float *data, size_t n, int32_t ndim,
                            const int64_t *dims, int32_t dt) {
  attn_tensor *h = NULL;
  assert_ok(attn_tensor_new(f->ctx, dt, ndim, dims, &h));
  assert_ok(attn_tensor_copy(f->ctx, wrap_in(f, data, n, ndim, dims), h));
  return h;
}

/* F16 x, F32 y: rows widened into the workspace. */
static void setup_softmax_half(fixture *f) {
  int64_t xd[2] = {SM_R, SM_N};
  f->t[0] = half_in(f, g_sm, SM_R * SM_N, 2, xd, ATTN_DTYPE_F16);
  f->t[1] = wrap_out(f, SM_R * SM_N, 2, xd);
}
static attn_status run_softmax_half(fixture *f) {
  return attn_softmax(f->ctx, f->t[0], f->t[1], NULL);
}

/* BF16 K/V under F32 q/out: tiles widened into the workspace. */
static void setup_sdpa_half(fixture *f) {
  int64_t qd[4] = {B, HQ, LQ, D}, kd[4] = {B, HKV, LK, D}, vd[4] = {B, HKV, LK, DV};
  int64_t od[4] = {B, HQ, LQ, DV};
  f->t[0] = wrap_in(f, g_q, sizeof g_q / 4, 4, qd);
  f->t[1] = half_in(f, g_k, sizeof g_k / 4, 4, kd, ATTN_DTYPE_BF16);
  f->t[2] = half_in(f, g_v, sizeof g_v / 4, 4, vd, ATTN_DTYPE_BF16);
  f->t[3] = wrap_out(f, (size_t)B * HQ * LQ * DV, 4, od);
}
static attn_status run_sdpa_half(fixture *f) {
  return attn_sdpa(f->ctx, f->t[0], f->t[1], f->t[2], f->t[3], NULL);
}

static void setup_sinusoidal(fixture *f) {
  int64_t d[2] = {PE_L, PE_D};
  f->t[0] = owned_out(f, PE_L * PE_D, 2, d);
}
static attn_status run_sinusoidal(fixture *f) {
  attn_sinusoidal_params p;
  attn_sinusoidal_params_init(&p);
  p.layout = ATTN_PE_SIN_COS;
  p.positions = g_pe_pos;
  return attn_sinusoidal(f->ctx, f->t[0], &p);
}
static void setup_sinusoidal_add(fixture *f) {
  int64_t d[3] = {PE_B, PE_L, PE_D};
  f->t[0] = wrap_inout(f, g_pe, PE_B * PE_L * PE_D, 3, d);
}
static attn_status run_sinusoidal_add(fixture *f) {
  attn_sinusoidal_params p;
  attn_sinusoidal_params_init(&p);
  p.offset = 17;
  return attn_sinusoidal_add(f->ctx, f->t[0], &p);
}
static void setup_rope(fixture *f) {
  int64_t d[4] = {PE_B, RP_H, RP_L, PE_D};
  f->t[0] = wrap_inout(f, g_rope, PE_B * RP_H * RP_L * PE_D, 4, d);
}
/* The rotation both directions run: partial, at given positions. */
static attn_rope_params rope_params(void) {
  attn_rope_params p;
  attn_rope_params_init(&p);
  p.rotary_dim = 48;
  p.positions = g_rope_pos;
  return p;
}
static attn_status run_rope(fixture *f) {
  attn_rope_params p = rope_params();
  return attn_rope(f->ctx, f->t[0], &p);
}
static attn_status run_rope_backward(fixture *f) {
  attn_rope_params p = rope_params();
  return attn_rope_backward(f->ctx, f->t[0], &p);
}
/* Softmax backward: y and dy read from the same inputs as the forward. */
static void setup_softmax_backward(fixture *f) {
  int64_t xd[2] = {SM_R, SM_N};
  f->t[0] = wrap_in(f, g_sm, SM_R * SM_N, 2, xd);
  f->t[1] = wrap_in(f, g_sm, SM_R * SM_N, 2, xd);
  f->t[2] = wrap_out(f, SM_R * SM_N, 2, xd);
  f->t[3] = wrap_out(f, SM_R * SM_N, 2, xd);
}
static attn_status run_softmax_backward(fixture *f) {
  return attn_softmax_backward(f->ctx, f->t[0], f->t[1], f->t[2], f->t[3], NULL);
}
/* SDPA backward, every output (dq, dk, dv, dmask) requested. */
static void setup_sdpa_backward(fixture *f) {
  int64_t qd[4] = {B, HQ, LQ, D}, kd[4] = {B, HKV, LK, D}, vd[4] = {B, HKV, LK, DV};
  int64_t od[4] = {B, HQ, LQ, DV}, ld[3] = {B, HQ, LQ}, wd[4] = {B, HQ, LQ, LK};
  f->t[0] = wrap_in(f, g_q, sizeof g_q / 4, 4, qd);
  f->t[1] = wrap_in(f, g_k, sizeof g_k / 4, 4, kd);
  f->t[2] = wrap_in(f, g_v, sizeof g_v / 4, 4, vd);
  f->t[3] = wrap_in(f, g_o, sizeof g_o / 4, 4, od);
  f->t[4] = wrap_in(f, g_lse, sizeof g_lse / 4, 3, ld);
  f->t[5] = wrap_in(f, g_do, sizeof g_do / 4, 4, od);
  f->t[6] = wrap_out(f, sizeof g_q / 4, 4, qd);
  f->t[7] = wrap_out(f, sizeof g_k / 4, 4, kd);
  f->t[8] = wrap_out(f, sizeof g_v / 4, 4, vd);
  f->t[9] = wrap_out(f, (size_t)B * HQ * LQ * LK, 4, wd);
}
static attn_status run_sdpa_backward(fixture *f) {
  attn_sdpa_params p;
  attn_sdpa_params_init(&p);
  p.causal = 1;
  p.softcap = 3.0f;
  attn_sdpa_backward_params bp;
  attn_sdpa_backward_params_init(&bp);
  bp.dmask = f->t[9];
  return attn_sdpa_backward(f->ctx, f->t[0], f->t[1], f->t[2], f->t[3], f->t[4], f->t[5],
                            f->t[6], f->t[7], f->t[8], &p, &bp);
}
/* Packed sequences: one backward problem per sequence in one reservation. */
static void setup_varlen_backward(fixture *f) {
  int64_t qd[3] = {LQ, HQ, D}, kd[3] = {LK, HKV, D}, vd[3] = {LK, HKV, DV};
  int64_t od[3] = {LQ, HQ, DV}, ld[2] = {HQ, LQ};
  f->t[0] = wrap_in(f, g_q, (size_t)LQ * HQ * D, 3, qd);
  f->t[1] = wrap_in(f, g_k, (size_t)LK * HKV * D, 3, kd);
  f->t[2] = wrap_in(f, g_v, (size_t)LK * HKV * DV, 3, vd);
  f->t[3] = wrap_in(f, g_o, (size_t)LQ * HQ * DV, 3, od);
  f->t[4] = wrap_in(f, g_lse, (size_t)HQ * LQ, 2, ld);
  f->t[5] = wrap_in(f, g_do, (size_t)LQ * HQ * DV, 3, od);
  f->t[6] = wrap_out(f, (size_t)LQ * HQ * D, 3, qd);
  f->t[7] = wrap_out(f, (size_t)LK * HKV * D, 3, kd);
  f->t[8] = wrap_out(f, (size_t)LK * HKV * DV, 3, vd);
}
static attn_status run_varlen_backward(fixture *f) {
  attn_sdpa_params p;
  attn_sdpa_params_init(&p);
  p.causal = 1;
  return attn_sdpa_varlen_backward(f->ctx, f->t[0], f->t[1], f->t[2], f->t[3], f->t[4], f->t[5],
                                   f->t[6], f->t[7], f->t[8], 3, g_cu_q, g_cu_k, &p, NULL);
}
static void setup_alibi(fixture *f) {
  assert_true(f->n_out < MAX_OUT);
  float *buf = malloc(12 * sizeof *buf);
  assert_non_null(buf);
  for (int i = 0; i < 12; i++)
    buf[i] = -777.0f;
  f->out[f->n_out] = buf;
  f->out_n[f->n_out++] = 12;
}
static attn_status run_alibi(fixture *f) { return attn_alibi_slopes(f->ctx, 12, 0, f->out[0]); }

/* Pooling: x [4, 16, 256, 16] (the softmax input, reused), weighted with a
 * keep mask and lengths, so two threads have work. */
enum { PL_B = 4, PL_H = 16, PL_L = 256, PL_D = 16 };
static const int64_t g_pool_len[PL_B] = {256, 3, 0, 100};
static uint8_t g_pool_keep[PL_B * PL_L];
static void setup_pool(fixture *f) {
  int64_t xd[4] = {PL_B, PL_H, PL_L, PL_D}, od[3] = {PL_B, PL_H, PL_D}, sd[3] = {PL_B, PL_H, PL_L};
  int64_t kd[2] = {PL_B, PL_L};
  for (int i = 0; i < PL_B * PL_L; i++)
    g_pool_keep[i] = (uint8_t)(i % 3 != 0);
  f->t[0] = wrap_in(f, g_sm, (size_t)PL_B * PL_H * PL_L * PL_D, 4, xd);
  f->t[1] = wrap_out(f, (size_t)PL_B * PL_H * PL_D, 3, od);
  f->t[2] = wrap_in(f, g_rope, (size_t)PL_B * PL_H * PL_L, 3, sd);
  assert_ok(attn_tensor_wrap(f->ctx, ATTN_DTYPE_U8, 2, kd, NULL, g_pool_keep,
                             sizeof g_pool_keep, &f->t[3]));
}
/* Weighted pooling with scores t[2], keep t[3] and lengths (both directions). */
static attn_pool_params pool_params(const fixture *f) {
  attn_pool_params p;
  attn_pool_params_init(&p);
  p.mode = ATTN_POOL_WEIGHTED;
  p.scores = f->t[2];
  p.keep = f->t[3];
  p.lengths = g_pool_len;
  return p;
}
static attn_status run_pool(fixture *f) {
  attn_pool_params p = pool_params(f);
  return attn_pool(f->ctx, f->t[0], f->t[1], &p);
}
/* Its backward, dout = the forward's x rows; dx and dscores. */
static void setup_pool_backward(fixture *f) {
  setup_pool(f);
  int64_t xd[4] = {PL_B, PL_H, PL_L, PL_D}, od[3] = {PL_B, PL_H, PL_D}, sd[3] = {PL_B, PL_H, PL_L};
  f->t[1] = wrap_in(f, g_sm, (size_t)PL_B * PL_H * PL_D, 3, od);
  f->t[4] = wrap_out(f, (size_t)PL_B * PL_H * PL_L * PL_D, 4, xd);
  f->t[5] = wrap_out(f, (size_t)PL_B * PL_H * PL_L, 3, sd);
}
static attn_status run_pool_backward(fixture *f) {
  attn_pool_params p = pool_params(f);
  return attn_pool_backward(f->ctx, f->t[0], f->t[1], f->t[4], f->t[5], &p);
}
/* The same with F16 x and BF16 scores (and an F16 dout): half tokens
 * widened into the per-thread scratch. */
static void halve_pool_inputs(fixture *f) {
  int64_t xd[4] = {PL_B, PL_H, PL_L, PL_D}, sd[3] = {PL_B, PL_H, PL_L};
  f->t[0] = half_in(f, g_sm, (size_t)PL_B * PL_H * PL_L * PL_D, 4, xd, ATTN_DTYPE_F16);
  f->t[2] = half_in(f, g_rope, (size_t)PL_B * PL_H * PL_L, 3, sd, ATTN_DTYPE_BF16);
}
static void setup_pool_half(fixture *f) {
  setup_pool(f);
  halve_pool_inputs(f);
}
static void setup_pool_backward_half(fixture *f) {
  setup_pool_backward(f);
  halve_pool_inputs(f);
  int64_t od[3] = {PL_B, PL_H, PL_D};
  f->t[1] = half_in(f, g_sm, (size_t)PL_B * PL_H * PL_D, 3, od, ATTN_DTYPE_F16);
}
/* Learned queries [HQ, 3, D] over the SDPA inputs' keys and values. */
static void setup_pool_attention(fixture *f) {
  int64_t qd[3] = {HQ, 3, D}, kd[4] = {B, HKV, LK, D}, vd[4] = {B, HKV, LK, DV};
  int64_t od[4] = {B, HQ, 3, DV};
  f->t[0] = wrap_in(f, g_q, (size_t)HQ * 3 * D, 3, qd);
  f->t[1] = wrap_in(f, g_k, sizeof g_k / 4, 4, kd);
  f->t[2] = wrap_in(f, g_v, sizeof g_v / 4, 4, vd);
  f->t[3] = wrap_out(f, (size_t)B * HQ * 3 * DV, 4, od);
}
static attn_status run_pool_attention(fixture *f) {
  attn_pool_attention_params p;
  attn_pool_attention_params_init(&p);
  int64_t lengths[B] = {LK, 17};
  p.lengths = lengths;
  return attn_pool_attention(f->ctx, f->t[0], f->t[1], f->t[2], f->t[3], &p);
}
/* Its backward from the SDPA backward's inputs (values do not matter here). */
static void setup_pool_attention_backward(fixture *f) {
  int64_t qd[3] = {HQ, 3, D}, kd[4] = {B, HKV, LK, D}, vd[4] = {B, HKV, LK, DV};
  int64_t od[4] = {B, HQ, 3, DV}, ld[3] = {B, HQ, 3};
  f->t[0] = wrap_in(f, g_q, (size_t)HQ * 3 * D, 3, qd);
  f->t[1] = wrap_in(f, g_k, sizeof g_k / 4, 4, kd);
  f->t[2] = wrap_in(f, g_v, sizeof g_v / 4, 4, vd);
  f->t[3] = wrap_in(f, g_o, (size_t)B * HQ * 3 * DV, 4, od);
  f->t[4] = wrap_in(f, g_lse, (size_t)B * HQ * 3, 3, ld);
  f->t[5] = wrap_in(f, g_do, (size_t)B * HQ * 3 * DV, 4, od);
  f->t[6] = wrap_out(f, (size_t)HQ * 3 * D, 3, qd);
  f->t[7] = wrap_out(f, sizeof g_k / 4, 4, kd);
  f->t[8] = wrap_out(f, sizeof g_v / 4, 4, vd);
}
static attn_status run_pool_attention_backward(fixture *f) {
  attn_pool_attention_params p;
  attn_pool_attention_params_init(&p);
  int64_t lengths[B] = {LK, 17};
  p.lengths = lengths;
  return attn_pool_attention_backward(f->ctx, f->t[0], f->t[1], f->t[2], f->t[3], f->t[4],
                                      f->t[5], f->t[6], f->t[7], f->t[8], &p);
}
/* YaRN tables [300, 32], then the rotation from them out of place. */
static void setup_rope_cache(fixture *f) {
  int64_t d[2] = {PE_L, 32};
  f->t[0] = wrap_out(f, (size_t)PE_L * 32, 2, d);
  f->t[1] = wrap_out(f, (size_t)PE_L * 32, 2, d);
}
static attn_status run_rope_cache(fixture *f) {
  attn_rope_cache_params p;
  attn_rope_cache_params_init(&p);
  p.scaling = ATTN_ROPE_SCALING_YARN;
  p.factor = 4;
  p.original_max_position = 64;
  p.apply_attention_factor = 1;
  return attn_rope_cache_fill(f->ctx, f->t[0], f->t[1], &p, NULL);
}
static void setup_rope_cached(fixture *f) {
  int64_t x3[3] = {PE_B, RP_L, RP_H * PE_D}, td[2] = {500, 24}; /* positions < 500 */
  f->t[0] = wrap_in(f, g_rope, (size_t)PE_B * RP_H * RP_L * PE_D, 3, x3);
  f->t[1] = wrap_out(f, (size_t)PE_B * RP_H * RP_L * PE_D, 3, x3);
  f->t[2] = wrap_in(f, g_pe, (size_t)500 * 24, 2, td);
  f->t[3] = wrap_in(f, g_pe + 500 * 24, (size_t)500 * 24, 2, td);
}
static attn_status run_rope_cached(fixture *f) {
  attn_rope_cached_params p;
  attn_rope_cached_params_init(&p);
  p.style = ATTN_ROPE_INTERLEAVED;
  p.num_heads = RP_H;
  p.position_ids = g_rope_pos;
  return attn_rope_cached(f->ctx, f->t[0], f->t[1], f->t[2], f->t[3], &p);
}

/* KV cache: attention over a paged cache filled in setup (ragged lengths,
 * one query row for one sequence, none for another), and an append with
 * RoPE into a wrapped cache (reset first, so every call does the same).
 * The _half variants: a bf16 paged cache, and an f16 contiguous one. */
static void setup_kv_attend_dt(fixture *f, int32_t dt) {
  attn_kv_cache_params p;
  attn_kv_cache_params_init(&p);
  p.dtype = dt;
  p.layout = ATTN_KV_PAGED;
  p.batch = B, p.kv_heads = HKV, p.head_dim = D, p.value_dim = DV;
  p.block_size = 32, p.num_blocks = 24;
  attn_kv_cache *kv = NULL;
  assert_ok(attn_kv_cache_create(f->ctx, &p, &kv));
  int64_t kd[4] = {B, HKV, LK, D}, vd[4] = {B, HKV, LK, DV}, n[B] = {LK, 150};
  assert_ok(attn_kv_append(f->ctx, kv, wrap_in(f, g_k, sizeof g_k / 4, 4, kd),
                           wrap_in(f, g_v, sizeof g_v / 4, 4, vd), n, NULL));
  int64_t qd[4] = {B, HQ, LQ, D}, od[4] = {B, HQ, LQ, DV}, ld[3] = {B, HQ, LQ};
  f->t[0] = wrap_in(f, g_q, sizeof g_q / 4, 4, qd);
  f->t[1] = wrap_out(f, (size_t)B * HQ * LQ * DV, 4, od);
  f->t[2] = wrap_out(f, (size_t)B * HQ * LQ, 3, ld);
  f->t[3] = (attn_tensor *)(void *)kv;
}
static void setup_kv_attend(fixture *f) { setup_kv_attend_dt(f, ATTN_DTYPE_F32); }
static void setup_kv_attend_half(fixture *f) { setup_kv_attend_dt(f, ATTN_DTYPE_BF16); }
static attn_status run_kv_attend(fixture *f) {
  attn_sdpa_params p;
  attn_sdpa_params_init(&p);
  p.causal = 1;
  p.lse = f->t[2];
  int64_t n[B] = {LQ, 1};
  return attn_kv_attend(f->ctx, (attn_kv_cache *)(void *)f->t[3], f->t[0], f->t[1], n, &p);
}
static void setup_kv_append(fixture *f) {
  int64_t kd[4] = {B, HKV, LK, D}, vd[4] = {B, HKV, LK, DV};
  attn_tensor *k = wrap_out(f, (size_t)B * HKV * LK * D, 4, kd);
  attn_tensor *v = wrap_out(f, (size_t)B * HKV * LK * DV, 4, vd);
  attn_kv_cache *kv = NULL;
  assert_ok(attn_kv_cache_wrap(f->ctx, k, v, NULL, &kv));
  int64_t nd[4] = {B, HKV, LQ, D}, nvd[4] = {B, HKV, LQ, DV};
  f->t[0] = wrap_in(f, g_k, (size_t)B * HKV * LQ * D, 4, nd);
  f->t[1] = wrap_in(f, g_v, (size_t)B * HKV * LQ * DV, 4, nvd);
  f->t[2] = (attn_tensor *)(void *)kv;
}
static void setup_kv_append_half(fixture *f) {
  attn_kv_cache_params p;
  attn_kv_cache_params_init(&p);
  p.dtype = ATTN_DTYPE_F16;
  p.batch = B, p.kv_heads = HKV, p.head_dim = D, p.value_dim = DV, p.capacity = LK;
  attn_kv_cache *kv = NULL;
  assert_ok(attn_kv_cache_create(f->ctx, &p, &kv));
  int64_t nd[4] = {B, HKV, LQ, D}, nvd[4] = {B, HKV, LQ, DV};
  f->t[0] = wrap_in(f, g_k, (size_t)B * HKV * LQ * D, 4, nd);
  f->t[1] = wrap_in(f, g_v, (size_t)B * HKV * LQ * DV, 4, nvd);
  f->t[2] = (attn_tensor *)(void *)kv;
}
static attn_status run_kv_append(fixture *f) {
  attn_kv_cache *kv = (attn_kv_cache *)(void *)f->t[2];
  assert_ok(attn_kv_reset(f->ctx, kv, -1));
  attn_rope_params rp;
  attn_rope_params_init(&rp);
  rp.rotary_dim = 8;
  attn_kv_append_params p;
  attn_kv_append_params_init(&p);
  p.rope = &rp;
  int64_t n[B] = {LQ, 5};
  return attn_kv_append(f->ctx, kv, f->t[0], f->t[1], n, &p);
}

/* The decoder layer over a contiguous cache (reset first, so every call
 * does the same): its buffers, then the attention's workspace. */
static void setup_mha(fixture *f) {
  attn_mha_decoder_params p;
  attn_mha_decoder_params_init(&p);
  p.embed_dim = D, p.num_heads = 4, p.num_kv_heads = 2, p.head_dim = 8, p.qkv_bias = 1;
  attn_rope_params rp;
  attn_rope_params_init(&rp);
  p.rope = &rp;
  attn_mha *m = NULL;
  assert_ok(attn_mha_create_decoder(f->ctx, &p, &m));
  /* Wq [32, 16], Wk and Wv [16, 16], Wo [16, 32]; the biases stay zero. */
  const int64_t dims[4][2] = {{32, D}, {16, D}, {16, D}, {D, 32}};
  for (int32_t i = 0; i < 4; i++)
    assert_ok(attn_mha_set_weight(f->ctx, m, i, wrap_in(f, g_k + 512 * i, 512, 2, dims[i])));
  attn_kv_cache_params cp;
  attn_kv_cache_params_init(&cp);
  cp.batch = B, cp.kv_heads = 2, cp.head_dim = 8, cp.capacity = LQ;
  attn_kv_cache *kv = NULL;
  assert_ok(attn_kv_cache_create(f->ctx, &cp, &kv));
  int64_t xd[3] = {B, LQ, D};
  f->t[0] = wrap_in(f, g_q, (size_t)B * LQ * D, 3, xd);
  f->t[1] = wrap_out(f, (size_t)B * LQ * D, 3, xd);
  f->t[2] = (attn_tensor *)(void *)m;
  f->t[3] = (attn_tensor *)(void *)kv;
}
/* The same layer on an F16 x: its rows widened into the layer's buffer. */
static void setup_mha_half(fixture *f) {
  setup_mha(f);
  int64_t xd[3] = {B, LQ, D};
  f->t[0] = half_in(f, g_q, (size_t)B * LQ * D, 3, xd, ATTN_DTYPE_F16);
}
static attn_status run_mha(fixture *f) {
  attn_kv_cache *kv = (attn_kv_cache *)(void *)f->t[3];
  assert_ok(attn_kv_reset(f->ctx, kv, -1));
  int64_t n[B] = {LQ, 20};
  return attn_mha_forward(f->ctx, (attn_mha *)(void *)f->t[2], kv, f->t[0], f->t[1], n);
}

/* The PyTorch-form layer, cross-attention with kdim = 8 (separate
 * projections), sequence first, a bool key padding mask, a float [L, S]
 * attn_mask and per-head weights: every buffer is a workspace slice. */
enum { MT_E = 16, MT_H = 4, MT_K = 8, MT_S = 40 };
static uint8_t g_mt_kpm[B * MT_S];
static void setup_mha_torch(fixture *f) {
  attn_mha_torch_params p;
  attn_mha_torch_params_init(&p);
  p.embed_dim = MT_E, p.num_heads = MT_H, p.kdim = MT_K;
  attn_mha *m = NULL;
  assert_ok(attn_mha_create_torch(f->ctx, &p, &m));
  const int64_t dq[2] = {MT_E, MT_E}, dk[2] = {MT_E, MT_K}, db[1] = {3 * MT_E};
  const int32_t which[5] = {ATTN_MHA_Q_WEIGHT, ATTN_MHA_K_WEIGHT, ATTN_MHA_V_WEIGHT,
                            ATTN_MHA_O_WEIGHT, ATTN_MHA_IN_PROJ_BIAS};
  for (int i = 0; i < 5; i++)
    assert_ok(attn_mha_set_weight(f->ctx, m, which[i],
                                  wrap_in(f, g_k + 256 * i, 256, i == 4 ? 1 : 2,
                                          i == 4 ? db : i == 1 ? dk : dq)));
  for (int i = 0; i < B * MT_S; i++)
    g_mt_kpm[i] = (uint8_t)(i % 7 == 3);
  int64_t qd[3] = {LQ, B, MT_E}, kd[3] = {MT_S, B, MT_K}, vd[3] = {MT_S, B, MT_E};
  int64_t kpd[2] = {B, MT_S}, amd[2] = {LQ, MT_S}, wd[4] = {B, MT_H, LQ, MT_S};
  f->t[0] = wrap_in(f, g_q, (size_t)LQ * B * MT_E, 3, qd);
  f->t[1] = wrap_in(f, g_k, (size_t)MT_S * B * MT_K, 3, kd);
  f->t[2] = wrap_in(f, g_v, (size_t)MT_S * B * MT_E, 3, vd);
  assert_ok(attn_tensor_wrap(f->ctx, ATTN_DTYPE_U8, 2, kpd, NULL, g_mt_kpm, sizeof g_mt_kpm,
                             &f->t[3]));
  f->t[4] = wrap_in(f, g_sm_mask, (size_t)LQ * MT_S, 2, amd);
  f->t[5] = wrap_out(f, (size_t)LQ * B * MT_E, 3, qd);
  f->t[6] = wrap_out(f, (size_t)B * MT_H * LQ * MT_S, 4, wd);
  f->t[7] = (attn_tensor *)(void *)m;
}
static attn_status run_mha_torch(fixture *f) {
  attn_mha_torch_forward_params p;
  attn_mha_torch_forward_params_init(&p);
  p.need_weights = 1, p.per_head_weights = 1, p.is_causal = 1;
  return attn_mha_torch_forward(f->ctx, (attn_mha *)(void *)f->t[7], f->t[0], f->t[1], f->t[2],
                                f->t[3], f->t[4], &p, f->t[5], f->t[6]);
}

/* The PyTorch form's self-attention: in_proj_weight, query = key = value
 * (one q/k/v product), batch first, causal; the packed weights are the
 * layer's first allocations of its first call. */
static void setup_mha_torch_self(fixture *f) {
  attn_mha_torch_params p;
  attn_mha_torch_params_init(&p);
  p.embed_dim = MT_E, p.num_heads = MT_H, p.batch_first = 1;
  attn_mha *m = NULL;
  assert_ok(attn_mha_create_torch(f->ctx, &p, &m));
  const int64_t din[2] = {3 * MT_E, MT_E}, dbin[1] = {3 * MT_E}, dout[2] = {MT_E, MT_E},
                dbout[1] = {MT_E};
  assert_ok(attn_mha_set_weight(f->ctx, m, ATTN_MHA_IN_PROJ_WEIGHT,
                                wrap_in(f, g_k, 3 * MT_E * MT_E, 2, din)));
  assert_ok(attn_mha_set_weight(f->ctx, m, ATTN_MHA_IN_PROJ_BIAS,
                                wrap_in(f, g_v, 3 * MT_E, 1, dbin)));
  assert_ok(attn_mha_set_weight(f->ctx, m, ATTN_MHA_O_WEIGHT,
                                wrap_in(f, g_k + 3 * MT_E * MT_E, MT_E * MT_E, 2, dout)));
  assert_ok(attn_mha_set_weight(f->ctx, m, ATTN_MHA_O_BIAS,
                                wrap_in(f, g_v + 3 * MT_E, MT_E, 1, dbout)));
  int64_t qd[3] = {B, LQ, MT_E};
  f->t[0] = wrap_in(f, g_q, (size_t)B * LQ * MT_E, 3, qd);
  f->t[5] = wrap_out(f, (size_t)B * LQ * MT_E, 3, qd);
  f->t[7] = (attn_tensor *)(void *)m;
}
static attn_status run_mha_torch_self(fixture *f) {
  attn_mha_torch_forward_params p;
  attn_mha_torch_forward_params_init(&p);
  p.is_causal = 1;
  return attn_mha_torch_forward(f->ctx, (attn_mha *)(void *)f->t[7], f->t[0], f->t[0], f->t[0],
                                NULL, NULL, &p, f->t[5], NULL);
}

/* Softmax down the columns (a strided axis) and SDPA with its logits
 * output: neither allocates beyond the plain op. */
static attn_status run_softmax_axis(fixture *f) {
  attn_softmax_params p;
  attn_softmax_params_init(&p);
  p.axis = -2;
  p.mask = f->t[2];
  return attn_softmax(f->ctx, f->t[0], f->t[1], &p);
}
static void setup_sdpa_logits(fixture *f) {
  int64_t qd[4] = {B, HQ, LQ, D}, kd[4] = {B, HKV, LK, D}, vd[4] = {B, HKV, LK, DV};
  int64_t od[4] = {B, HQ, LQ, DV}, wd[4] = {B, HQ, LQ, LK};
  f->t[0] = wrap_in(f, g_q, sizeof g_q / 4, 4, qd);
  f->t[1] = wrap_in(f, g_k, sizeof g_k / 4, 4, kd);
  f->t[2] = wrap_in(f, g_v, sizeof g_v / 4, 4, vd);
  f->t[3] = wrap_out(f, (size_t)B * HQ * LQ * DV, 4, od);
  f->t[4] = wrap_out(f, (size_t)B * HQ * LQ * LK, 4, wd);
}
static attn_status run_sdpa_logits(fixture *f) {
  attn_sdpa_params p;
  attn_sdpa_params_init(&p);
  p.causal = 1;
  p.softcap = 5;
  p.logits = f->t[4];
  p.logits_stage = ATTN_LOGITS_MASKED;
  return attn_sdpa(f->ctx, f->t[0], f->t[1], f->t[2], f->t[3], &p);
}

static const op_case g_cases[] = {
    {"attn_mha_forward", 1, setup_mha, run_mha},
    {"attn_mha_forward", 2, setup_mha, run_mha},
    {"attn_mha_forward", 2, setup_mha_half, run_mha},
    {"attn_mha_torch_forward", 1, setup_mha_torch, run_mha_torch},
    {"attn_mha_torch_forward", 2, setup_mha_torch, run_mha_torch},
    {"attn_mha_torch_forward", 2, setup_mha_torch_self, run_mha_torch_self},
    {"attn_kv_attend", 1, setup_kv_attend, run_kv_attend},
    {"attn_kv_attend", 2, setup_kv_attend, run_kv_attend},
    {"attn_kv_append", 1, setup_kv_append, run_kv_append},
    {"attn_kv_attend", 2, setup_kv_attend_half, run_kv_attend},
    {"attn_kv_append", 1, setup_kv_append_half, run_kv_append},
    {"attn_softmax", 1, setup_softmax, run_softmax},
    {"attn_softmax", 2, setup_softmax, run_softmax},
    {"attn_log_softmax", 2, setup_softmax, run_log_softmax},
    {"attn_softmax", 2, setup_softmax_inplace, run_softmax_inplace},
    {"attn_sinusoidal", 1, setup_sinusoidal, run_sinusoidal},
    {"attn_sinusoidal", 2, setup_sinusoidal, run_sinusoidal},
    {"attn_sinusoidal_add", 2, setup_sinusoidal_add, run_sinusoidal_add},
    {"attn_rope", 1, setup_rope, run_rope},
    {"attn_rope", 2, setup_rope, run_rope},
    {"attn_rope_backward", 2, setup_rope, run_rope_backward},
    {"attn_softmax_backward", 2, setup_softmax_backward, run_softmax_backward},
    {"attn_sdpa_backward", 1, setup_sdpa_backward, run_sdpa_backward},
    {"attn_sdpa_backward", 2, setup_sdpa_backward, run_sdpa_backward},
    {"attn_sdpa_varlen_backward", 2, setup_varlen_backward, run_varlen_backward},
    {"attn_alibi_slopes", 1, setup_alibi, run_alibi},
    {"attn_tensor_new", 1, setup_none, run_tensor_new},
    {"attn_tensor_wrap", 1, setup_none, run_tensor_wrap},
    {"attn_sdpa", 1, setup_sdpa, run_sdpa},
    {"attn_sdpa", 2, setup_sdpa, run_sdpa},
    {"attn_sdpa", 2, setup_sdpa_split, run_sdpa_split},
    {"attn_sdpa_varlen", 1, setup_varlen, run_varlen},
    {"attn_sdpa_varlen", 2, setup_varlen, run_varlen},
    {"attn_pool", 1, setup_pool, run_pool},
    {"attn_pool", 2, setup_pool, run_pool},
    {"attn_pool_backward", 1, setup_pool_backward, run_pool_backward},
    {"attn_pool_backward", 2, setup_pool_backward, run_pool_backward},
    {"attn_pool", 2, setup_pool_half, run_pool},
    {"attn_pool_backward", 2, setup_pool_backward_half, run_pool_backward},
    {"attn_pool_attention", 2, setup_pool_attention, run_pool_attention},
    {"attn_pool_attention_backward", 1, setup_pool_attention_backward,
     run_pool_attention_backward},
    {"attn_pool_attention_backward", 2, setup_pool_attention_backward,
     run_pool_attention_backward},
    {"attn_rope_cache_fill", 1, setup_rope_cache, run_rope_cache},
    {"attn_rope_cache_fill", 2, setup_rope_cache, run_rope_cache},
    {"attn_rope_cached", 2, setup_rope_cached, run_rope_cached},
    {"attn_softmax", 2, setup_softmax_half, run_softmax_half},
    {"attn_sdpa", 2, setup_sdpa_half, run_sdpa_half},
    {"attn_softmax", 2, setup_softmax, run_softmax_axis},
    {"attn_sdpa", 2, setup_sdpa_logits, run_sdpa_logits},
};

/* ---- the driver ---- */

static void open_fixture(fixture *f, const op_case *oc) {
  memset(f, 0, sizeof *f);
  attn_ctx_options o;
  attn_ctx_options_init(&o);
  o.num_threads = oc->threads;
  o.alloc = tu_alloc;
  o.free = tu_free;
  o.alloc_user = &f->c;
  assert_ok(attn_ctx_create(&f->ctx, &o));
  oc->setup(f);
}

static void close_fixture(fixture *f) {
  void *owned_data = f->owned ? attn_tensor_data(f->owned) : NULL;
  attn_ctx_destroy(f->ctx); /* frees the owned output too */
  if (f->c.allocs != f->c.frees)
    fail_msg("leak: %ld allocations, %ld frees", f->c.allocs, f->c.frees);
  for (int i = 0; i < f->n_out; i++)
    if (f->out[i] != owned_data)
      free(f->out[i]);
}

static float *snapshot(const fixture *f) {
  size_t total = 0;
  for (int i = 0; i < f->n_out; i++)
    total += f->out_n[i];
  float *s = malloc((total ? total : 1) * sizeof *s);
  assert_non_null(s);
  size_t at = 0;
  for (int i = 0; i < f->n_out; i++) {
    memcpy(s + at, f->out[i], f->out_n[i] * sizeof *s);
    at += f->out_n[i];
  }
  return s;
}

static void assert_outputs_equal(const fixture *f, const op_case *oc, const float *want,
                                 const char *what) {
  size_t at = 0;
  for (int i = 0; i < f->n_out; i++) {
    if (memcmp(f->out[i], want + at, f->out_n[i] * sizeof *want) != 0)
      fail_msg("%s (%d threads): %s: output %d differs", oc->name, oc->threads, what, i);
    at += f->out_n[i];
  }
}

/* Restore the in-place operands, then call the op. */
static attn_status call(fixture *f, const op_case *oc) {
  for (int i = 0; i < f->n_out; i++)
    if (f->init[i])
      memcpy(f->out[i], f->init[i], f->out_n[i] * sizeof(float));
  return oc->run(f);
}

static int makes_handles(const op_case *oc) {
  return oc->run == run_tensor_new || oc->run == run_tensor_wrap;
}

static void exercise(const op_case *oc) {
  /* The allocations of one call on a fresh context, and its result. */
  fixture f;
  open_fixture(&f, oc);
  long a0 = f.c.allocs;
  assert_ok(call(&f, oc));
  long count = f.c.allocs - a0;
  float *want = snapshot(&f);
  /* Warm: the same call again allocates nothing and gives the same. */
  long a1 = f.c.allocs;
  assert_ok(call(&f, oc));
  if (!makes_handles(oc) && f.c.allocs != a1)
    fail_msg("%s (%d threads): a warm call allocated %ld times", oc->name, oc->threads,
             f.c.allocs - a1);
  assert_outputs_equal(&f, oc, want, "second call");
  close_fixture(&f);
  print_message("%-20s %d thread(s): %ld allocation(s) on a fresh context\n", oc->name,
                (int)oc->threads, count);

  if (count == 0) {
    /* Nothing to fail: the op must not even try while allocation fails. */
    open_fixture(&f, oc);
    f.c.fail_at = f.c.allocs + 1;
    if (call(&f, oc) != ATTN_OK || f.c.fail_at == 0)
      fail_msg("%s (%d threads) allocated on a fresh context the second time", oc->name,
               oc->threads);
    assert_outputs_equal(&f, oc, want, "with a failing allocator");
    close_fixture(&f);
  }

  for (long k = 1; k <= count; k++) {
    open_fixture(&f, oc);
    for (int i = 0; i < f.n_out; i++)
      if (f.init[i])
        memcpy(f.out[i], f.init[i], f.out_n[i] * sizeof(float));
    float *before = snapshot(&f);
    void *owned_data = f.owned ? attn_tensor_data(f.owned) : NULL;
    f.c.fail_at = f.c.allocs + k;
    attn_status st = oc->run(&f);
    if (st == ATTN_OK) {
      /* An optional allocation: the result must be right all the same. */
      assert_outputs_equal(&f, oc, want, "optional allocation failed");
    } else {
      if (st != ATTN_ERR_NO_MEMORY)
        fail_msg("%s (%d threads), allocation %ld of %ld failing: %s", oc->name, oc->threads,
                 k, count, attn_status_string(st));
      assert_outputs_equal(&f, oc, before, "outputs after a failed call");
      assert_error_mentions(f.ctx, oc->name);
      if (f.owned) { /* the owner of an output is intact */
        assert_ptr_equal(attn_tensor_data(f.owned), owned_data);
        assert_int_equal(attn_tensor_dtype(f.owned), ATTN_DTYPE_F32);
      }
      /* The context is usable: the same call now succeeds, same result. */
      assert_ok(call(&f, oc));
      assert_outputs_equal(&f, oc, want, "retry after a failed call");
    }
    free(before);
    close_fixture(&f);
  }
  free(want);
}

static void all_ops(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof g_cases / sizeof g_cases[0]; i++)
    exercise(&g_cases[i]);
}

/* A constructor under test: makes an object from ctx and `arg` into *out
 * (an attn_kv_cache * or attn_mha *, seen as void *). */
typedef attn_status (*create_fn)(attn_ctx *ctx, const void *arg, void **out);

/* *out passes through a typed pointer, so a write on failure shows. */
static attn_status create_kv(attn_ctx *ctx, const void *arg, void **out) {
  attn_kv_cache *kv = *out;
  attn_status st = attn_kv_cache_create(ctx, arg, &kv);
  *out = kv;
  return st;
}
static attn_status create_mha(attn_ctx *ctx, const void *arg, void **out) {
  attn_mha *m = *out;
  attn_status st = attn_mha_create_decoder(ctx, arg, &m);
  *out = m;
  return st;
}

/* Each allocation of a constructor failing gives ATTN_ERR_NO_MEMORY, no
 * leak, *out untouched, and the context still works. */
static void create_under_failures(create_fn create, const void *arg, long min_allocs) {
  long count = -1;
  for (long k = 0; k <= count || count < 0; k++) {
    tu_counter c = {0};
    attn_ctx_options o;
    attn_ctx_options_init(&o);
    o.num_threads = 1;
    o.alloc = tu_alloc, o.free = tu_free, o.alloc_user = &c;
    attn_ctx *ctx = NULL;
    assert_ok(attn_ctx_create(&ctx, &o));
    long a0 = c.allocs;
    c.fail_at = k ? a0 + k : 0;
    void *obj = (void *)0x1;
    attn_status st = create(ctx, arg, &obj);
    if (k == 0) {
      assert_ok(st);
      count = c.allocs - a0;
    } else {
      assert_status(st, ATTN_ERR_NO_MEMORY);
      assert_ptr_equal(obj, (void *)0x1);
      assert_int_equal(c.allocs, c.frees + 1); /* only the context's own */
      assert_ok(create(ctx, arg, &obj));
    }
    attn_ctx_destroy(ctx);
    assert_int_equal(c.allocs, c.frees);
  }
  assert_true(count >= min_allocs);
}

/* attn_kv_cache_create in both layouts. */
static void kv_cache_create(void **state) {
  (void)state;
  for (int32_t layout = 0; layout < 2; layout++) {
    attn_kv_cache_params p;
    attn_kv_cache_params_init(&p);
    p.layout = layout;
    p.batch = 3, p.kv_heads = 2, p.head_dim = 8, p.capacity = 40, p.num_blocks = 9;
    create_under_failures(create_kv, &p, 2);
  }
}

/* attn_mha_create_decoder with a YaRN-scaled RoPE (its frequencies, the
 * layer, then each packed projection, or each weight with the sse2 set). */
static void mha_create(void **state) {
  (void)state;
  attn_mha_decoder_params p;
  attn_mha_decoder_params_init(&p);
  p.embed_dim = 16, p.num_heads = 4, p.num_kv_heads = 2, p.qkv_bias = 1;
  attn_rope_params rp;
  attn_rope_params_init(&rp);
  attn_rope_cache_params sp;
  attn_rope_cache_params_init(&sp);
  sp.scaling = ATTN_ROPE_SCALING_YARN, sp.factor = 4, sp.original_max_position = 64;
  p.rope = &rp, p.rope_scaling = &sp;
  create_under_failures(create_mha, &p, 6);
}

/* A layer's owned weights live in its packed projections, or row-major
 * while a weight of their group (q/k/v, or out) is caller memory
 * (src/mha.h): wrapping Wq moves Wk, Wv, bq, bk, bv out of the packs,
 * owning Wq again moves them back. Each allocation of either move failing
 * gives ATTN_ERR_NO_MEMORY, leaks nothing and changes no weight (Wq stays
 * owned, then wrapped); afterwards the layer computes what a fresh layer
 * with the same weights does, to the bit. */
enum { MW_E = 16, MW_L = 12 };
static const int64_t mw_dims[8][2] = {{16, 16}, {8, 16}, {8, 16}, {16, 16},
                                      {1, 16},  {1, 8},  {1, 8},  {1, 16}};

static attn_tensor *mw_wrap(attn_ctx *ctx, float *data, int32_t which) {
  const int64_t *d = mw_dims[which];
  return which < 4 ? tu_wrap(ctx, data, (size_t)(d[0] * d[1]), 2, d, NULL)
                   : tu_wrap(ctx, data, (size_t)d[1], 1, d + 1, NULL);
}

/* Every weight of m reads back as want. */
static void mw_check(attn_ctx *ctx, attn_mha *m, attn_tensor *const *back, float *const *got,
                     float want[8][256]) {
  for (int32_t i = 0; i < 8; i++) {
    assert_ok(attn_mha_get_weight(ctx, m, i, back[i]));
    assert_memory_equal(got[i], want[i], (size_t)(mw_dims[i][0] * mw_dims[i][1]) * sizeof(float));
  }
}

static attn_mha *mw_layer(attn_ctx *ctx) {
  attn_mha_decoder_params p;
  attn_mha_decoder_params_init(&p);
  p.embed_dim = MW_E, p.num_heads = 4, p.num_kv_heads = 2, p.qkv_bias = 1, p.out_bias = 1;
  attn_mha *m = NULL;
  assert_ok(attn_mha_create_decoder(ctx, &p, &m));
  return m;
}

/* y = the layer over x (one sequence of MW_L tokens, a fresh cache). */
static void mw_forward(attn_ctx *ctx, attn_mha *m, float *x, float *y) {
  attn_kv_cache_params cp;
  attn_kv_cache_params_init(&cp);
  cp.batch = 1, cp.kv_heads = 2, cp.head_dim = 4, cp.capacity = MW_L;
  attn_kv_cache *kv = NULL;
  assert_ok(attn_kv_cache_create(ctx, &cp, &kv));
  int64_t d3[3] = {1, MW_L, MW_E};
  assert_ok(attn_mha_forward(ctx, m, kv, tu_wrap(ctx, x, MW_L * MW_E, 3, d3, NULL),
                             tu_wrap(ctx, y, MW_L * MW_E, 3, d3, NULL), NULL));
  assert_ok(attn_kv_cache_free(ctx, kv));
}

static void mha_weight_moves(void **state) {
  (void)state;
  static float want[8][256], got[8][256], wq_caller[256], wq_new[256];
  static float x[MW_L * MW_E], y[MW_L * MW_E], y_fresh[MW_L * MW_E];
  tu_rng r = {77};
  for (int i = 0; i < 8; i++)
    tu_fill(&r, want[i], 256, -0.5f, 0.5f);
  tu_fill(&r, wq_caller, 256, -0.5f, 0.5f);
  tu_fill(&r, wq_new, 256, -0.5f, 0.5f);
  tu_fill(&r, x, MW_L * MW_E, -1, 1);
  tu_counter c = {0};
  attn_ctx_options o;
  attn_ctx_options_init(&o);
  o.num_threads = 2, o.alloc = tu_alloc, o.free = tu_free, o.alloc_user = &c;
  attn_ctx *ctx = NULL;
  assert_ok(attn_ctx_create(&ctx, &o));
  attn_mha *m = mw_layer(ctx);
  attn_tensor *back[8];
  float *gp[8];
  for (int32_t i = 0; i < 8; i++) {
    assert_ok(attn_mha_set_weight(ctx, m, i, mw_wrap(ctx, want[i], i)));
    back[i] = mw_wrap(ctx, got[i], i);
    gp[i] = got[i];
  }
  attn_tensor *t_caller = mw_wrap(ctx, wq_caller, 0), *t_new = mw_wrap(ctx, wq_new, 0);
  /* The moves' allocations: row-major Wk, Wv, bq, bk, bv, then the three
   * packs; none and Wq's own with the sse2 set (no packs). */
  int packs = strstr(attn_cpu_info(), "kernels: sse2") == NULL;
  const long expect[2] = {packs ? 5 : 0, packs ? 3 : 1};
  for (int stage = 0; stage < 2; stage++) {
    long k = 1;
    for (;; k++) {
      long live = c.allocs - c.frees;
      c.fail_at = c.allocs + k;
      attn_status st = stage == 0 ? attn_mha_wrap_weight(ctx, m, ATTN_MHA_Q_WEIGHT, t_caller)
                                  : attn_mha_set_weight(ctx, m, ATTN_MHA_Q_WEIGHT, t_new);
      c.fail_at = 0;
      if (st == ATTN_OK)
        break;
      assert_status(st, ATTN_ERR_NO_MEMORY);
      assert_int_equal(c.allocs - c.frees, live);
      mw_check(ctx, m, back, gp, want);
    }
    assert_int_equal(k - 1, expect[stage]);
    memcpy(want[0], stage == 0 ? wq_caller : wq_new, sizeof want[0]);
    mw_check(ctx, m, back, gp, want);
  }
  mw_forward(ctx, m, x, y);
  attn_mha *fresh = mw_layer(ctx);
  for (int32_t i = 0; i < 8; i++)
    assert_ok(attn_mha_set_weight(ctx, fresh, i, mw_wrap(ctx, want[i], i)));
  mw_forward(ctx, fresh, x, y_fresh);
  assert_memory_equal(y, y_fresh, sizeof y);
  attn_ctx_destroy(ctx);
  assert_int_equal(c.allocs, c.frees);
}

/* attn_ctx_create itself, with and without worker threads. */
static void ctx_create(void **state) {
  (void)state;
  for (int32_t threads = 1; threads <= 3; threads++) {
    tu_counter c = {0};
    attn_ctx_options o;
    attn_ctx_options_init(&o);
    o.num_threads = threads;
    o.alloc = tu_alloc;
    o.free = tu_free;
    o.alloc_user = &c;
    attn_ctx *ctx = NULL;
    assert_ok(attn_ctx_create(&ctx, &o));
    long count = c.allocs;
    attn_ctx_destroy(ctx);
    assert_int_equal(c.allocs, c.frees);
    for (long k = 1; k <= count; k++) {
      tu_counter fc = {0, 0, k};
      o.alloc_user = &fc;
      ctx = (attn_ctx *)0x1;
      assert_status(attn_ctx_create(&ctx, &o), ATTN_ERR_NO_MEMORY);
      assert_ptr_equal(ctx, (attn_ctx *)0x1);
      assert_int_equal(fc.allocs, fc.frees);
    }
  }
}

int main(void) {
  fill_inputs();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(ctx_create),
      cmocka_unit_test(all_ops),
      cmocka_unit_test(kv_cache_create),
      cmocka_unit_test(mha_create),
      cmocka_unit_test(mha_weight_moves),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
