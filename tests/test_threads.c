/* Concurrency: 8 application threads, each with its own single-threaded
 * context, run every op at the same time on shared read-only inputs, while
 * a 9th runs them on a context with num_threads = 2 (the library's own
 * worker pool) and the main thread computes the single-threaded reference.
 * Nothing has called the library before the threads start, so they also
 * race on the once-only CPU probe. Each thread's results must equal the
 * reference: bit for bit on single-threaded contexts (same code, same
 * order), within rounding on the pooled one (a split over keys sums in
 * another order). Meant for ThreadSanitizer (preset tsan), useful anywhere.
 * Also: a context used, then its process forked; the child uses it. */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdlib.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test_util.h"

#define N_APP_THREADS 8
#define ITERATIONS 2

/* ---- shared read-only inputs ---- */
enum { SM_R = 64, SM_N = 2048 };                            /* softmax */
enum { B = 1, HQ = 4, HKV = 2, LQ = 96, LK = 256, D = 32 }; /* sdpa */
enum { SPLIT_LK = 4096, SPLIT_D = 16 };                     /* sdpa, keys split */
enum { PE_L = 256, PE_D = 64, RP_B = 2, RP_H = 4, RP_L = 64 };
static float g_sm[SM_R * SM_N], g_mask[SM_N];
static uint8_t g_bmask[SM_R * SM_N];
static float g_q[B * HQ * LQ * D], g_k[B * HKV * LK * D], g_v[B * HKV * LK * D];
static float g_sq[SPLIT_D], g_sk[SPLIT_LK * SPLIT_D], g_sv[SPLIT_LK * SPLIT_D];
static float g_pe_x[2 * PE_L * PE_D], g_rope_x[RP_B * RP_H * RP_L * PE_D];
static int64_t g_rope_pos[RP_B * RP_L];
static const int64_t g_cu_q[3] = {0, 40, 96}, g_cu_k[3] = {0, 100, 256};

/* Every op's outputs, one block per op. */
enum {
  O_SOFTMAX,
  O_LOGSOFTMAX,
  O_SIN,
  O_SIN_ADD,
  O_ROPE,
  O_ALIBI,
  O_SDPA,
  O_SDPA_LSE,
  O_SPLIT,
  O_VARLEN,
  O_POOL,
  O_POOL_ATTN,
  O_ROPE_COS,
  O_ROPE_SIN,
  O_ROPE_CACHED,
  O_KV,
  O_KV_READ,
  O_MHA,
  O_SM_BWD,
  O_ROPE_BWD,
  O_DQ,
  O_DK,
  O_DV,
  O_SOFTMAX_AXIS,
  O_SDPA_LOGITS,
  O_POOL_DX,
  O_POOL_DSCORES,
  O_PA_LSE,
  O_PA_DQ,
  O_PA_DK,
  O_PA_DV,
  O_MHA_TORCH,
  O_MHA_TORCH_W,
  O_POOL_HALF,
  O_POOL_HALF_DX,
  O_COUNT
};
static const size_t g_out_n[O_COUNT] = {
    SM_R * SM_N, SM_R * SM_N, PE_L * PE_D, 2 * PE_L * PE_D, RP_B * RP_H * RP_L * PE_D,
    48,          B * HQ * LQ * D, B * HQ * LQ, SPLIT_D, LQ * HQ * D,
    B * HQ * D,  B * HQ * 2 * D,  PE_L * 16,   PE_L * 16, RP_B * RP_H * RP_L * PE_D,
    HQ * LQ * D, HKV * (LK / 2 + 40) * D, LQ * D,
    SM_R * SM_N, RP_B * RP_H * RP_L * PE_D, B * HQ * LQ * D, B * HKV * LK * D,
    B * HKV * LK * D,
    SM_R * SM_N, B * HQ * LQ * LK, B * HQ * LQ * D, B * HQ * LQ,
    B * HQ * 2,  HQ * 2 * D, B * HKV * LK * D, B * HKV * LK * D,
    LQ * 2 * D, 2 * LQ * (LK / 2), B * HQ * D, B * HQ * LQ * D};
static const char *const g_out_name[O_COUNT] = {
    "softmax", "log_softmax", "sinusoidal", "sinusoidal_add", "rope",
    "alibi",   "sdpa",        "sdpa lse",   "sdpa split",     "sdpa_varlen",
    "pool",    "pool_attention", "rope cos", "rope sin",      "rope_cached",
    "kv_attend", "kv_read", "mha_forward",
    "softmax_backward", "rope_backward", "sdpa_backward dq", "sdpa_backward dk",
    "sdpa_backward dv",
    "softmax axis -2", "sdpa logits", "pool_backward dx", "pool_backward dscores",
    "pool_attention lse", "pool_attention_backward dqueries", "pool_attention_backward dk",
    "pool_attention_backward dv", "mha_torch_forward", "mha_torch_forward weights",
    "pool bf16 out (f16 x, bf16 scores)", "pool_backward f16 dx (bf16 dout)"};

typedef struct {
  float *out[O_COUNT];
  int32_t ctx_threads;
  int failures; /* set by the thread: a status other than ATTN_OK */
  char why[256];
  pthread_barrier_t *start;
} worker;

static void fill_inputs(void) {
  tu_rng r = {2024};
  tu_fill(&r, g_sm, SM_R * SM_N, -6, 6);
  tu_fill(&r, g_mask, SM_N, -3, 0);
  for (int i = 0; i < SM_R * SM_N; i++)
    g_bmask[i] = (uint8_t)(tu_next(&r) % 7 != 0);
  tu_fill(&r, g_q, sizeof g_q / 4, -1, 1);
  tu_fill(&r, g_k, sizeof g_k / 4, -1, 1);
  tu_fill(&r, g_v, sizeof g_v / 4, -1, 1);
  tu_fill(&r, g_sq, SPLIT_D, -1, 1);
  tu_fill(&r, g_sk, SPLIT_LK * SPLIT_D, -1, 1);
  tu_fill(&r, g_sv, SPLIT_LK * SPLIT_D, -1, 1);
  tu_fill(&r, g_pe_x, sizeof g_pe_x / 4, -1, 1);
  tu_fill(&r, g_rope_x, sizeof g_rope_x / 4, -1, 1);
  for (int i = 0; i < RP_B * RP_L; i++)
    g_rope_pos[i] = (i * 13) % 1000;
}

#define CHECK(w, expr)                                                                             \
  do {                                                                                             \
    attn_status st_ = (expr);                                                                      \
    if (st_ != ATTN_OK && !(w)->failures++)                                                        \
      snprintf((w)->why, sizeof(w)->why, "%s: %s", #expr, attn_status_string(st_));                \
  } while (0)

static attn_tensor *wrap(attn_ctx *ctx, const void *data, size_t n, int32_t ndim,
                         const int64_t *dims) {
  attn_tensor *t = NULL;
  attn_tensor_wrap(ctx, ATTN_DTYPE_F32, ndim, dims, NULL, (void *)data, n * sizeof(float), &t);
  return t;
}

/* Every public op once, results into w->out. */
static void run_all(attn_ctx *ctx, worker *w) {
  char info[256];
  CHECK(w, attn_blas_info(info, sizeof info));
  if (!attn_cpu_info()[0])
    w->failures++;

  /* Tensors of its own: created, freed, recreated. */
  int64_t td[2] = {7, 9};
  attn_tensor *own = NULL;
  CHECK(w, attn_tensor_new(ctx, ATTN_DTYPE_F32, 2, td, &own));
  CHECK(w, attn_tensor_free(ctx, own));

  int64_t smd[2] = {SM_R, SM_N}, md[1] = {SM_N};
  attn_softmax_params sp;
  attn_softmax_params_init(&sp);
  sp.scale = 0.75f;
  sp.mask = wrap(ctx, g_mask, SM_N, 1, md);
  CHECK(w, attn_tensor_wrap(ctx, ATTN_DTYPE_U8, 2, smd, NULL, g_bmask, sizeof g_bmask,
                            (attn_tensor **)&sp.bool_mask));
  attn_tensor *x = wrap(ctx, g_sm, SM_R * SM_N, 2, smd);
  CHECK(w, attn_softmax(ctx, x, wrap(ctx, w->out[O_SOFTMAX], SM_R * SM_N, 2, smd), &sp));
  CHECK(w, attn_log_softmax(ctx, x, wrap(ctx, w->out[O_LOGSOFTMAX], SM_R * SM_N, 2, smd), &sp));

  int64_t ped[2] = {PE_L, PE_D}, pe3[3] = {2, PE_L, PE_D};
  attn_sinusoidal_params pp;
  attn_sinusoidal_params_init(&pp);
  pp.layout = ATTN_PE_COS_SIN;
  pp.offset = 3.5;
  CHECK(w, attn_sinusoidal(ctx, wrap(ctx, w->out[O_SIN], PE_L * PE_D, 2, ped), &pp));
  memcpy(w->out[O_SIN_ADD], g_pe_x, sizeof g_pe_x); /* in place on its own copy */
  CHECK(w, attn_sinusoidal_add(ctx, wrap(ctx, w->out[O_SIN_ADD], 2 * PE_L * PE_D, 3, pe3), NULL));

  int64_t rd[4] = {RP_B, RP_H, RP_L, PE_D};
  attn_rope_params rp;
  attn_rope_params_init(&rp);
  rp.style = ATTN_ROPE_INTERLEAVED;
  rp.positions = g_rope_pos;
  memcpy(w->out[O_ROPE], g_rope_x, sizeof g_rope_x);
  CHECK(w, attn_rope(ctx, wrap(ctx, w->out[O_ROPE], sizeof g_rope_x / 4, 4, rd), &rp));
  CHECK(w, attn_alibi_slopes(ctx, 48, 0, w->out[O_ALIBI]));

  int64_t qd[4] = {B, HQ, LQ, D}, kd[4] = {B, HKV, LK, D}, ld[3] = {B, HQ, LQ};
  attn_sdpa_params p;
  attn_sdpa_params_init(&p);
  p.causal = 1;
  p.align = ATTN_ALIGN_BOTTOM_RIGHT;
  p.softcap = 30;
  p.lse = wrap(ctx, w->out[O_SDPA_LSE], B * HQ * LQ, 3, ld);
  CHECK(w, attn_sdpa(ctx, wrap(ctx, g_q, sizeof g_q / 4, 4, qd),
                     wrap(ctx, g_k, sizeof g_k / 4, 4, kd), wrap(ctx, g_v, sizeof g_v / 4, 4, kd),
                     wrap(ctx, w->out[O_SDPA], sizeof g_q / 4, 4, qd), &p));
  /* The backward passes, from the forward results above (dout = q). */
  attn_tensor *sq = wrap(ctx, g_q, sizeof g_q / 4, 4, qd);
  attn_status bwd = attn_sdpa_backward(
      ctx, sq, wrap(ctx, g_k, sizeof g_k / 4, 4, kd), wrap(ctx, g_v, sizeof g_v / 4, 4, kd),
      wrap(ctx, w->out[O_SDPA], sizeof g_q / 4, 4, qd), p.lse, sq,
      wrap(ctx, w->out[O_DQ], sizeof g_q / 4, 4, qd),
      wrap(ctx, w->out[O_DK], sizeof g_k / 4, 4, kd),
      wrap(ctx, w->out[O_DV], sizeof g_v / 4, 4, kd), &p, NULL);
  CHECK(w, bwd);
  CHECK(w, attn_softmax_backward(ctx, wrap(ctx, w->out[O_SOFTMAX], SM_R * SM_N, 2, smd), x,
                                 wrap(ctx, w->out[O_SM_BWD], SM_R * SM_N, 2, smd), NULL, &sp));
  memcpy(w->out[O_ROPE_BWD], g_rope_x, sizeof g_rope_x);
  CHECK(w, attn_rope_backward(ctx, wrap(ctx, w->out[O_ROPE_BWD], sizeof g_rope_x / 4, 4, rd),
                              &rp));
  int64_t sqd[4] = {1, 1, 1, SPLIT_D}, skd[4] = {1, 1, SPLIT_LK, SPLIT_D};
  CHECK(w, attn_sdpa(ctx, wrap(ctx, g_sq, SPLIT_D, 4, sqd),
                     wrap(ctx, g_sk, SPLIT_LK * SPLIT_D, 4, skd),
                     wrap(ctx, g_sv, SPLIT_LK * SPLIT_D, 4, skd),
                     wrap(ctx, w->out[O_SPLIT], SPLIT_D, 4, sqd), NULL));
  int64_t vq[3] = {LQ, HQ, D}, vk[3] = {LK, HKV, D};
  attn_sdpa_params vp;
  attn_sdpa_params_init(&vp);
  vp.causal = 1;
  CHECK(w, attn_sdpa_varlen(ctx, wrap(ctx, g_q, LQ * HQ * D, 3, vq), wrap(ctx, g_k, LK * HKV * D, 3, vk),
                            wrap(ctx, g_v, LK * HKV * D, 3, vk),
                            wrap(ctx, w->out[O_VARLEN], LQ * HQ * D, 3, vq), 2, g_cu_q, g_cu_k, &vp));

  /* Pooling: the queries as x [B, HQ, LQ, D], weighted by the lse output. */
  int64_t pod[3] = {B, HQ, D};
  attn_pool_params plp;
  attn_pool_params_init(&plp);
  plp.mode = ATTN_POOL_WEIGHTED;
  plp.scores = wrap(ctx, g_mask, B * HQ * LQ, 3, ld);
  CHECK(w, attn_pool(ctx, wrap(ctx, g_q, sizeof g_q / 4, 4, qd),
                     wrap(ctx, w->out[O_POOL], B * HQ * D, 3, pod), &plp));
  CHECK(w, attn_pool_backward(ctx, wrap(ctx, g_q, sizeof g_q / 4, 4, qd),
                              wrap(ctx, w->out[O_POOL], B * HQ * D, 3, pod),
                              wrap(ctx, w->out[O_POOL_DX], sizeof g_q / 4, 4, qd),
                              wrap(ctx, w->out[O_POOL_DSCORES], B * HQ * LQ, 3, ld), &plp));
  /* The same in half precision: f16 x, bf16 scores, a bf16 out (its bits
   * in the slot's first half), then f16 dx from it as a bf16 dout. */
  attn_tensor *hx = NULL, *hs = NULL, *ho = NULL, *hdx = NULL;
  CHECK(w, attn_tensor_new(ctx, ATTN_DTYPE_F16, 4, qd, &hx));
  CHECK(w, attn_tensor_copy(ctx, wrap(ctx, g_q, sizeof g_q / 4, 4, qd), hx));
  CHECK(w, attn_tensor_new(ctx, ATTN_DTYPE_BF16, 3, ld, &hs));
  CHECK(w, attn_tensor_copy(ctx, plp.scores, hs));
  CHECK(w, attn_tensor_wrap(ctx, ATTN_DTYPE_BF16, 3, pod, NULL, w->out[O_POOL_HALF],
                            B * HQ * D * 2, &ho));
  CHECK(w, attn_tensor_wrap(ctx, ATTN_DTYPE_F16, 4, qd, NULL, w->out[O_POOL_HALF_DX],
                            sizeof g_q / 2, &hdx));
  plp.scores = hs;
  CHECK(w, attn_pool(ctx, hx, ho, &plp));
  CHECK(w, attn_pool_backward(ctx, hx, ho, hdx, NULL, &plp));
  int64_t lqd[3] = {HQ, 2, D}, pao[4] = {B, HQ, 2, D}, pal[3] = {B, HQ, 2};
  attn_pool_attention_params pap;
  attn_pool_attention_params_init(&pap);
  pap.lse = wrap(ctx, w->out[O_PA_LSE], B * HQ * 2, 3, pal);
  attn_tensor *paq = wrap(ctx, g_q, HQ * 2 * D, 3, lqd), *pak = wrap(ctx, g_k, sizeof g_k / 4, 4, kd);
  attn_tensor *pav = wrap(ctx, g_v, sizeof g_v / 4, 4, kd);
  attn_tensor *pa_out = wrap(ctx, w->out[O_POOL_ATTN], B * HQ * 2 * D, 4, pao);
  CHECK(w, attn_pool_attention(ctx, paq, pak, pav, pa_out, &pap));
  /* Its backward, dout = out. */
  CHECK(w, attn_pool_attention_backward(ctx, paq, pak, pav, pa_out, pap.lse, pa_out,
                                        wrap(ctx, w->out[O_PA_DQ], HQ * 2 * D, 3, lqd),
                                        wrap(ctx, w->out[O_PA_DK], sizeof g_k / 4, 4, kd),
                                        wrap(ctx, w->out[O_PA_DV], sizeof g_v / 4, 4, kd), &pap));
  /* Down the columns, and the masked logits of the causal SDPA above. */
  attn_softmax_params axp;
  attn_softmax_params_init(&axp);
  axp.axis = -2;
  CHECK(w, attn_softmax(ctx, x, wrap(ctx, w->out[O_SOFTMAX_AXIS], SM_R * SM_N, 2, smd), &axp));
  int64_t lgd[4] = {B, HQ, LQ, LK};
  p.lse = NULL;
  p.logits = wrap(ctx, w->out[O_SDPA_LOGITS], B * HQ * LQ * LK, 4, lgd);
  p.logits_stage = ATTN_LOGITS_MASKED;
  CHECK(w, attn_sdpa(ctx, wrap(ctx, g_q, sizeof g_q / 4, 4, qd), wrap(ctx, g_k, sizeof g_k / 4, 4, kd),
                     wrap(ctx, g_v, sizeof g_v / 4, 4, kd),
                     wrap(ctx, w->out[O_SDPA], sizeof g_q / 4, 4, qd), &p));
  /* Llama-3 tables [PE_L, 16], then a rotation from random tables. */
  int64_t cd[2] = {PE_L, 16};
  attn_rope_cache_params cp;
  attn_rope_cache_params_init(&cp);
  cp.scaling = ATTN_ROPE_SCALING_LLAMA3;
  cp.factor = 8;
  cp.original_max_position = 64;
  CHECK(w, attn_rope_cache_fill(ctx, wrap(ctx, w->out[O_ROPE_COS], PE_L * 16, 2, cd),
                                wrap(ctx, w->out[O_ROPE_SIN], PE_L * 16, 2, cd), &cp, NULL));
  int64_t rtd[2] = {1000, 16}, r3[3] = {RP_B, RP_L, RP_H * PE_D};
  attn_rope_cached_params rcp;
  attn_rope_cached_params_init(&rcp);
  rcp.num_heads = RP_H;
  rcp.position_ids = g_rope_pos;
  CHECK(w, attn_rope_cached(ctx, wrap(ctx, g_rope_x, sizeof g_rope_x / 4, 3, r3),
                            wrap(ctx, w->out[O_ROPE_CACHED], sizeof g_rope_x / 4, 3, r3),
                            wrap(ctx, g_sm, 1000 * 16, 2, rtd),
                            wrap(ctx, g_sm + 1000 * 16, 1000 * 16, 2, rtd), &rcp));
  /* A paged KV cache of two sequences: append with RoPE, copy (shared
   * blocks), append to the copy, attend, read back. */
  attn_kv_cache_params kp;
  attn_kv_cache_params_init(&kp);
  kp.layout = ATTN_KV_PAGED;
  kp.batch = 2, kp.kv_heads = HKV, kp.head_dim = D, kp.block_size = 24, kp.num_blocks = 40;
  attn_kv_cache *kv = NULL;
  CHECK(w, attn_kv_cache_create(ctx, &kp, &kv));
  int64_t knd[4] = {2, HKV, LK / 2, D}, k40[4] = {2, HKV, 40, D}, n1[2] = {LK / 2, 30},
          n2[2] = {0, 40}, kq[4] = {2, HQ, LQ / 2, D}, rdd[3] = {HKV, LK / 2 + 40, D};
  attn_kv_append_params ap;
  attn_kv_append_params_init(&ap);
  ap.rope = &rp;
  rp.positions = NULL;
  CHECK(w, attn_kv_append(ctx, kv, wrap(ctx, g_k, sizeof g_k / 4, 4, knd),
                          wrap(ctx, g_v, sizeof g_v / 4, 4, knd), n1, &ap));
  CHECK(w, attn_kv_copy(ctx, kv, 1, 0));
  CHECK(w, attn_kv_append(ctx, kv, wrap(ctx, g_v, 2 * HKV * 40 * D, 4, k40),
                          wrap(ctx, g_k, 2 * HKV * 40 * D, 4, k40), n2, &ap));
  int64_t nq[2] = {LQ / 2, 17};
  CHECK(w, attn_kv_attend(ctx, kv, wrap(ctx, g_q, sizeof g_q / 4, 4, kq),
                          wrap(ctx, w->out[O_KV], HQ * LQ * D, 4, kq), nq, NULL));
  CHECK(w, attn_kv_read(ctx, kv, 1, 0, wrap(ctx, w->out[O_KV_READ], HKV * (LK / 2 + 40) * D, 3, rdd),
                        NULL));

  /* The decoder layer over a prompt of LQ tokens in a contiguous bf16 cache
   * (the half cache's append and attention). */
  attn_mha_decoder_params mp;
  attn_mha_decoder_params_init(&mp);
  mp.embed_dim = D, mp.num_heads = 4, mp.num_kv_heads = 2, mp.rope = &rp;
  attn_mha *m = NULL;
  CHECK(w, attn_mha_create_decoder(ctx, &mp, &m));
  const int64_t wdims[4][2] = {{D, D}, {D / 2, D}, {D / 2, D}, {D, D}};
  for (int32_t i = 0; i < 4; i++)
    CHECK(w, attn_mha_set_weight(ctx, m, i, wrap(ctx, g_k + i * D * D, D * D, 2, wdims[i])));
  attn_kv_cache_params mcp;
  attn_kv_cache_params_init(&mcp);
  mcp.batch = 1, mcp.kv_heads = 2, mcp.head_dim = D / 4, mcp.capacity = LQ;
  mcp.dtype = ATTN_DTYPE_BF16;
  attn_kv_cache *mkv = NULL;
  CHECK(w, attn_kv_cache_create(ctx, &mcp, &mkv));
  int64_t xd[3] = {1, LQ, D};
  CHECK(w, attn_mha_forward(ctx, m, mkv, wrap(ctx, g_q, LQ * D, 3, xd),
                            wrap(ctx, w->out[O_MHA], LQ * D, 3, xd), NULL));

  /* The PyTorch-form layer: packed in_proj, B = 2 sequence first, cross
   * attention over LK / 2 keys, causal, a float [L, S] mask, averaged
   * weights. */
  attn_mha_torch_params tp;
  attn_mha_torch_params_init(&tp);
  tp.embed_dim = D, tp.num_heads = 4;
  attn_mha *tm = NULL;
  CHECK(w, attn_mha_create_torch(ctx, &tp, &tm));
  const int64_t inw[2] = {3 * D, D}, ow[2] = {D, D}, bd[1] = {3 * D}, od[1] = {D};
  CHECK(w, attn_mha_set_weight(ctx, tm, ATTN_MHA_IN_PROJ_WEIGHT, wrap(ctx, g_k, 3 * D * D, 2, inw)));
  CHECK(w, attn_mha_set_weight(ctx, tm, ATTN_MHA_O_WEIGHT, wrap(ctx, g_v, D * D, 2, ow)));
  CHECK(w, attn_mha_set_weight(ctx, tm, ATTN_MHA_IN_PROJ_BIAS, wrap(ctx, g_q, 3 * D, 1, bd)));
  CHECK(w, attn_mha_set_weight(ctx, tm, ATTN_MHA_O_BIAS, wrap(ctx, g_sk, D, 1, od)));
  attn_mha_torch_forward_params tf;
  attn_mha_torch_forward_params_init(&tf);
  tf.need_weights = 1, tf.is_causal = 1;
  int64_t tqd[3] = {LQ, 2, D}, tkd[3] = {LK / 2, 2, D}, amd[2] = {LQ, LK / 2};
  int64_t twd[3] = {2, LQ, LK / 2};
  attn_tensor *tq = wrap(ctx, g_q, LQ * 2 * D, 3, tqd), *tk = wrap(ctx, g_k, LK * D, 3, tkd);
  attn_tensor *tv = wrap(ctx, g_v, LK * D, 3, tkd), *tam = wrap(ctx, g_sm, LQ * LK / 2, 2, amd);
  attn_tensor *to = wrap(ctx, w->out[O_MHA_TORCH], LQ * 2 * D, 3, tqd);
  attn_tensor *tw = wrap(ctx, w->out[O_MHA_TORCH_W], 2 * LQ * LK / 2, 3, twd);
  CHECK(w, attn_mha_torch_forward(ctx, tm, tq, tk, tv, NULL, tam, &tf, to, tw));
}

static void *worker_main(void *arg) {
  worker *w = arg;
  pthread_barrier_wait(w->start);
  for (int it = 0; it < ITERATIONS; it++) {
    attn_ctx_options o;
    attn_ctx_options_init(&o);
    o.num_threads = w->ctx_threads;
    attn_ctx *ctx = NULL;
    CHECK(w, attn_ctx_create(&ctx, &o));
    if (!ctx)
      return NULL;
    run_all(ctx, w);
    attn_ctx_destroy(ctx);
  }
  return NULL;
}

static void alloc_outputs(worker *w) {
  for (int o = 0; o < O_COUNT; o++) {
    w->out[o] = calloc(g_out_n[o], sizeof(float));
    assert_non_null(w->out[o]);
  }
}

/* 0 if w's results match ref's (bit for bit when exact, else within
 * rounding); otherwise 1 with the first difference described in w->why. */
static int mismatch(worker *w, const worker *ref, int exact) {
  for (int o = 0; o < O_COUNT; o++)
    for (size_t i = 0; i < g_out_n[o]; i++) {
      float g = w->out[o][i], r = ref->out[o][i];
      int same = exact ? memcmp(&g, &r, sizeof g) == 0
                       : (isnan(r) ? isnan(g) : tu_close(g, r, 1e-5, 1e-6));
      if (!same) {
        snprintf(w->why, sizeof w->why, "%s[%zu] = %.9g but the reference has %.9g",
                 g_out_name[o], i, (double)g, (double)r);
        return 1;
      }
    }
  return 0;
}

static void compare(worker *w, const worker *ref, int exact, int index) {
  if (mismatch(w, ref, exact))
    fail_msg("thread %d (%d-thread context): %s", index, (int)w->ctx_threads, w->why);
}

static void concurrent_contexts(void **state) {
  (void)state;
  enum { N = N_APP_THREADS + 1 };
  worker ws[N], ref;
  pthread_t th[N];
  pthread_barrier_t start;
  pthread_barrier_init(&start, NULL, N + 1);
  memset(ws, 0, sizeof ws);
  memset(&ref, 0, sizeof ref);
  for (int i = 0; i < N; i++) {
    alloc_outputs(&ws[i]);
    ws[i].ctx_threads = i < N_APP_THREADS ? 1 : 2; /* the last: the library's own pool */
    ws[i].start = &start;
    assert_int_equal(pthread_create(&th[i], NULL, worker_main, &ws[i]), 0);
  }
  /* The reference, computed while the others run. */
  alloc_outputs(&ref);
  ref.ctx_threads = 1;
  pthread_barrier_wait(&start);
  attn_ctx *ctx = tu_ctx(1);
  run_all(ctx, &ref);
  attn_ctx_destroy(ctx);
  for (int i = 0; i < N; i++)
    assert_int_equal(pthread_join(th[i], NULL), 0);
  pthread_barrier_destroy(&start);
  if (ref.failures)
    fail_msg("reference: %s", ref.why);
  for (int i = 0; i < N; i++) {
    if (ws[i].failures)
      fail_msg("thread %d: %s", i, ws[i].why);
    compare(&ws[i], &ref, ws[i].ctx_threads == 1, i);
  }
  for (int i = 0; i < N; i++)
    for (int o = 0; o < O_COUNT; o++)
      free(ws[i].out[o]);
  for (int o = 0; o < O_COUNT; o++)
    free(ref.out[o]);
}

/* One context with two workers, used by one thread after another (the
 * documented rule: one thread at a time), and destroyed by a third. */
static attn_ctx *g_shared;
static void *use_shared(void *arg) {
  worker *w = arg;
  run_all(g_shared, w);
  return NULL;
}

static void context_handed_between_threads(void **state) {
  (void)state;
  worker w[2], ref;
  memset(w, 0, sizeof w);
  memset(&ref, 0, sizeof ref);
  alloc_outputs(&ref);
  attn_ctx *ctx = tu_ctx(1);
  run_all(ctx, &ref);
  attn_ctx_destroy(ctx);
  g_shared = tu_ctx(2);
  for (int i = 0; i < 2; i++) {
    pthread_t t;
    alloc_outputs(&w[i]);
    w[i].ctx_threads = 2;
    assert_int_equal(pthread_create(&t, NULL, use_shared, &w[i]), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    if (w[i].failures)
      fail_msg("handed-over context, thread %d: %s", i, w[i].why);
    compare(&w[i], &ref, 0, i);
  }
  attn_ctx_destroy(g_shared);
  for (int i = 0; i < 2; i++)
    for (int o = 0; o < O_COUNT; o++)
      free(w[i].out[o]);
  for (int o = 0; o < O_COUNT; o++)
    free(ref.out[o]);
}

/* ---- one context shared by two threads at once: misuse, detected ----
 * Every call returns ATTN_OK with the right result, or ATTN_ERR_BUSY having
 * written nothing; never a wrong result. */
#define BUSY_ITERS 2000
enum { BS_R = 16, BS_N = 256, BQ = 8, BK = 64 };
typedef struct {
  attn_tensor *x, *y, *q, *k, *v, *o; /* wrapped by the main thread */
  float *y_data, *o_data;
  const float *y_want, *o_want;
  int ok, busy, wrong;
  char why[256];
  pthread_barrier_t *start;
} busy_worker;
static attn_ctx *g_busy_ctx;

static void busy_note(busy_worker *b, attn_status st, const char *what) {
  if (st == ATTN_OK)
    b->ok++;
  else if (st == ATTN_ERR_BUSY)
    b->busy++;
  else if (!b->wrong++)
    snprintf(b->why, sizeof b->why, "%s gave %s", what, attn_status_string(st));
}

static void *busy_main(void *arg) {
  busy_worker *b = arg;
  const float sentinel = -1234.5f;
  pthread_barrier_wait(b->start);
  for (int it = 0; it < BUSY_ITERS; it++) {
    for (int i = 0; i < BS_R * BS_N; i++)
      b->y_data[i] = sentinel;
    attn_status st = attn_softmax(g_busy_ctx, b->x, b->y, NULL);
    busy_note(b, st, "attn_softmax");
    for (int i = 0; i < BS_R * BS_N; i++) {
      float want = st == ATTN_OK ? b->y_want[i] : sentinel;
      if (memcmp(&b->y_data[i], &want, sizeof want) && !b->wrong++)
        snprintf(b->why, sizeof b->why, "softmax (%s) y[%d] = %g, want %g", attn_status_string(st),
                 i, (double)b->y_data[i], (double)want);
    }
    for (int i = 0; i < BQ * 32; i++)
      b->o_data[i] = sentinel;
    st = attn_sdpa(g_busy_ctx, b->q, b->k, b->v, b->o, NULL);
    busy_note(b, st, "attn_sdpa");
    for (int i = 0; i < BQ * 32; i++) {
      float g = b->o_data[i];
      int right = st == ATTN_OK ? tu_close(g, b->o_want[i], 1e-5, 1e-6) : g == sentinel;
      if (!right && !b->wrong++)
        snprintf(b->why, sizeof b->why, "sdpa (%s) out[%d] = %g, want %g", attn_status_string(st),
                 i, (double)g, (double)b->o_want[i]);
    }
    attn_tensor *t = NULL;
    int64_t td[1] = {5};
    st = attn_tensor_new(g_busy_ctx, ATTN_DTYPE_F32, 1, td, &t);
    busy_note(b, st, "attn_tensor_new");
    if ((st == ATTN_OK) != (t != NULL) && !b->wrong++)
      snprintf(b->why, sizeof b->why, "attn_tensor_new: %s but out %s", attn_status_string(st),
               t ? "set" : "not set");
    while (t && (st = attn_tensor_free(g_busy_ctx, t)) == ATTN_ERR_BUSY)
      b->busy++;
    if (t)
      busy_note(b, st, "attn_tensor_free");
  }
  return NULL;
}

static void one_context_two_threads(void **state) {
  (void)state;
  enum { N = 2 };
  static float x[N][BS_R * BS_N], y[N][BS_R * BS_N], y_want[N][BS_R * BS_N];
  static float q[N][BQ * 32], o[N][BQ * 32], o_want[N][BQ * 32];
  int64_t sd[2] = {BS_R, BS_N}, qd[4] = {1, 1, BQ, 32}, kd[4] = {1, 1, BK, 32};
  tu_rng r = {77};
  for (int i = 0; i < N; i++) {
    tu_fill(&r, x[i], BS_R * BS_N, -5, 5);
    tu_fill(&r, q[i], BQ * 32, -1, 1);
  }
  /* The expected results, from a context of their own. */
  attn_ctx *ref = tu_ctx(1);
  for (int i = 0; i < N; i++) {
    assert_ok(attn_softmax(ref, wrap(ref, x[i], BS_R * BS_N, 2, sd),
                           wrap(ref, y_want[i], BS_R * BS_N, 2, sd), NULL));
    assert_ok(attn_sdpa(ref, wrap(ref, q[i], BQ * 32, 4, qd), wrap(ref, g_k, BK * 32, 4, kd),
                        wrap(ref, g_v, BK * 32, 4, kd), wrap(ref, o_want[i], BQ * 32, 4, qd),
                        NULL));
  }
  attn_ctx_destroy(ref);

  g_busy_ctx = tu_ctx(2);
  busy_worker w[N];
  memset(w, 0, sizeof w);
  for (int i = 0; i < N; i++) {
    w[i].x = wrap(g_busy_ctx, x[i], BS_R * BS_N, 2, sd);
    w[i].y = wrap(g_busy_ctx, y[i], BS_R * BS_N, 2, sd);
    w[i].q = wrap(g_busy_ctx, q[i], BQ * 32, 4, qd);
    w[i].k = wrap(g_busy_ctx, g_k, BK * 32, 4, kd);
    w[i].v = wrap(g_busy_ctx, g_v, BK * 32, 4, kd);
    w[i].o = wrap(g_busy_ctx, o[i], BQ * 32, 4, qd);
    w[i].y_data = y[i], w[i].o_data = o[i];
    w[i].y_want = y_want[i], w[i].o_want = o_want[i];
  }
  pthread_t th[N];
  pthread_barrier_t start;
  pthread_barrier_init(&start, NULL, N);
  for (int i = 0; i < N; i++) {
    w[i].start = &start;
    assert_int_equal(pthread_create(&th[i], NULL, busy_main, &w[i]), 0);
  }
  for (int i = 0; i < N; i++)
    assert_int_equal(pthread_join(th[i], NULL), 0);
  pthread_barrier_destroy(&start);
  attn_ctx_destroy(g_busy_ctx);
  for (int i = 0; i < N; i++)
    if (w[i].wrong)
      fail_msg("thread %d: %s", i, w[i].why);
  /* One thread may be refused every time while the other keeps the context
   * busy: only the total must show progress. */
  assert_true(w[0].ok + w[1].ok > 0);
  print_message("shared context: %d calls ATTN_OK, %d ATTN_ERR_BUSY\n", w[0].ok + w[1].ok,
                w[0].busy + w[1].busy);
}

/* ATTN_ERR_BUSY made certain: the allocator, called inside an op, calls
 * back into the same context. The inner call is refused, the outer one
 * completes, and the message is the outer call's, not rewritten. */
typedef struct {
  attn_ctx *ctx;
  attn_tensor *x, *y;
  attn_status inner;
  int calls;
} reentry;

static void *reentry_alloc(void *user, size_t size) {
  reentry *r = user;
  if (r->ctx && r->calls++ == 0) {
    r->inner = attn_softmax(r->ctx, r->x, r->y, NULL);
    int64_t d[1] = {3};
    attn_tensor *t = NULL;
    if (attn_tensor_new(r->ctx, ATTN_DTYPE_F32, 1, d, &t) != ATTN_ERR_BUSY || t)
      r->inner = ATTN_ERR_INVALID_ARG; /* reported below as a failure */
  }
  return malloc(size);
}

static void reentry_free(void *user, void *p) {
  (void)user;
  free(p);
}

static void busy_from_reentry(void **state) {
  (void)state;
  reentry r = {0};
  attn_ctx_options o;
  attn_ctx_options_init(&o);
  o.num_threads = 1;
  o.alloc = reentry_alloc;
  o.free = reentry_free;
  o.alloc_user = &r;
  attn_ctx *ctx = NULL;
  assert_ok(attn_ctx_create(&ctx, &o));
  float x[4] = {1, 2, 3, 4}, y[4] = {0}, out[PE_L * PE_D];
  int64_t d[1] = {4}, ped[2] = {PE_L, PE_D};
  r.x = wrap(ctx, x, 4, 1, d);
  r.y = wrap(ctx, y, 4, 1, d);
  attn_tensor *tout = wrap(ctx, out, PE_L * PE_D, 2, ped);
  /* A failure first, so the context holds a message to keep. */
  assert_int_equal(attn_softmax(ctx, r.x, NULL, NULL), ATTN_ERR_NULL_ARG);
  char before[512];
  snprintf(before, sizeof before, "%s", attn_ctx_last_error(ctx));
  r.ctx = ctx;                                 /* from now on the allocator calls back */
  assert_ok(attn_sinusoidal(ctx, tout, NULL)); /* allocates its workspace */
  assert_int_equal(r.calls, 1);
  assert_int_equal(r.inner, ATTN_ERR_BUSY);
  assert_true(y[0] == 0.0f && y[3] == 0.0f);
  assert_string_equal(attn_ctx_last_error(ctx), before);
  assert_string_equal(attn_status_string(ATTN_ERR_BUSY), "ATTN_ERR_BUSY");
  /* The context is free again once the call has returned. */
  r.ctx = NULL;
  assert_ok(attn_softmax(ctx, r.x, r.y, NULL));
  assert_true(y[3] > y[0]);
  attn_ctx_destroy(ctx);
}

/* The KV cache and layer entry points, frees included, refuse a call made
 * while another call runs on their context (here: from inside the
 * allocator), with ATTN_ERR_BUSY and nothing changed: the cache keeps its
 * rows, the layer stays alive (a free that went ahead would release memory
 * the running call may use). The NULL rules of the frees too. */
typedef struct {
  attn_ctx *ctx;
  attn_kv_cache *kv;
  attn_mha *m;
  attn_tensor *k, *v, *x, *y;
  attn_status st[6];
  int calls;
} obj_reentry;

static void *obj_reentry_alloc(void *user, size_t size) {
  obj_reentry *r = user;
  if (r->ctx && r->calls++ == 0) {
    r->st[0] = attn_kv_cache_free(r->ctx, r->kv);
    r->st[1] = attn_mha_free(r->ctx, r->m);
    r->st[2] = attn_kv_append(r->ctx, r->kv, r->k, r->v, NULL, NULL);
    r->st[3] = attn_kv_reset(r->ctx, r->kv, -1);
    r->st[4] = attn_kv_truncate(r->ctx, r->kv, 0, 0);
    r->st[5] = attn_mha_forward(r->ctx, r->m, r->kv, r->x, r->y, NULL);
  }
  return malloc(size);
}

static void busy_object_calls_from_reentry(void **state) {
  (void)state;
  obj_reentry r = {0};
  attn_ctx_options o;
  attn_ctx_options_init(&o);
  o.num_threads = 1;
  o.alloc = obj_reentry_alloc;
  o.free = reentry_free;
  o.alloc_user = &r;
  attn_ctx *ctx = NULL;
  assert_ok(attn_ctx_create(&ctx, &o));
  enum { OH = 2, OD = 4, OE = 8 };
  attn_kv_cache_params kp;
  attn_kv_cache_params_init(&kp);
  kp.batch = 1, kp.kv_heads = OH, kp.head_dim = OD, kp.capacity = 8;
  assert_ok(attn_kv_cache_create(ctx, &kp, &r.kv));
  attn_mha_decoder_params mp;
  attn_mha_decoder_params_init(&mp);
  mp.embed_dim = OE, mp.num_heads = OH;
  assert_ok(attn_mha_create_decoder(ctx, &mp, &r.m));
  static float k[OH * OD], v[OH * OD], x[OE], y[OE], out[PE_L * PE_D];
  for (int i = 0; i < OH * OD; i++)
    k[i] = (float)i, v[i] = (float)-i;
  int64_t kd[4] = {1, OH, 1, OD}, xd[3] = {1, 1, OE}, ped[2] = {PE_L, PE_D};
  r.k = wrap(ctx, k, OH * OD, 4, kd);
  r.v = wrap(ctx, v, OH * OD, 4, kd);
  r.x = wrap(ctx, x, OE, 3, xd);
  r.y = wrap(ctx, y, OE, 3, xd);
  attn_tensor *tout = wrap(ctx, out, PE_L * PE_D, 2, ped);
  assert_ok(attn_kv_append(ctx, r.kv, r.k, r.v, NULL, NULL));
  y[0] = 42;
  r.ctx = ctx;                                 /* from now on the allocator calls back */
  assert_ok(attn_sinusoidal(ctx, tout, NULL)); /* allocates its workspace */
  r.ctx = NULL;
  assert_int_equal(r.calls, 1);
  for (int i = 0; i < 6; i++)
    assert_int_equal(r.st[i], ATTN_ERR_BUSY);
  assert_true(y[0] == 42);
  /* Both objects alive and unchanged: one token, its rows as appended. */
  int64_t lens[1] = {0};
  attn_kv_cache_info info = {.struct_size = sizeof info};
  assert_ok(attn_kv_cache_info_get(ctx, r.kv, &info, lens));
  assert_int_equal(lens[0], 1);
  float kr[OH * OD], vr[OH * OD];
  int64_t rd[3] = {OH, 1, OD};
  assert_ok(attn_kv_read(ctx, r.kv, 0, 0, wrap(ctx, kr, OH * OD, 3, rd), wrap(ctx, vr, OH * OD, 3, rd)));
  assert_memory_equal(kr, k, sizeof kr);
  assert_memory_equal(vr, v, sizeof vr);
  assert_ok(attn_mha_forward(ctx, r.m, r.kv, r.x, r.y, NULL));
  /* NULL: a NULL object is a no-op, a NULL context an error; a layer or
   * cache of another context is a bad handle there. */
  attn_ctx *other = NULL;
  assert_ok(attn_ctx_create(&other, NULL));
  assert_ok(attn_mha_free(ctx, NULL));
  assert_ok(attn_kv_cache_free(ctx, NULL));
  assert_int_equal(attn_mha_free(NULL, r.m), ATTN_ERR_NULL_ARG);
  assert_int_equal(attn_kv_cache_free(NULL, r.kv), ATTN_ERR_NULL_ARG);
  assert_int_equal(attn_mha_free(other, r.m), ATTN_ERR_BAD_HANDLE);
  assert_int_equal(attn_kv_cache_free(other, r.kv), ATTN_ERR_BAD_HANDLE);
  assert_ok(attn_mha_free(ctx, r.m));
  assert_ok(attn_kv_cache_free(ctx, r.kv));
  attn_ctx_destroy(other);
  attn_ctx_destroy(ctx);
}

/* ---- fork ---- */

/* In a child process (no CMocka there): the exit status says how it went. */
enum { CHILD_OK, CHILD_OP_FAILED, CHILD_WRONG, CHILD_NO_CTX };

static int child_run_all(attn_ctx *ctx, worker *w, const worker *ref) {
  w->failures = 0;
  run_all(ctx, w);
  if (w->failures) {
    fprintf(stderr, "child: %s\n", w->why);
    return CHILD_OP_FAILED;
  }
  if (mismatch(w, ref, 0)) {
    fprintf(stderr, "child: %s\n", w->why);
    return CHILD_WRONG;
  }
  return CHILD_OK;
}

/* Fork while `ctx` (with its worker threads) exists and has been used; in
 * the child run every op on it, on a new context, and destroy both; the
 * child must finish within the alarm. */
static void fork_child_uses(attn_ctx *ctx, worker *w, const worker *ref, int use_first) {
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    alarm(60); /* a hang kills the child with SIGALRM */
    int rc = use_first ? child_run_all(ctx, w, ref) : CHILD_OK;
    attn_ctx_options o;
    attn_ctx_options_init(&o);
    o.num_threads = 3;
    attn_ctx *fresh = NULL;
    if (rc == CHILD_OK)
      rc = attn_ctx_create(&fresh, &o) == ATTN_OK ? child_run_all(fresh, w, ref) : CHILD_NO_CTX;
    attn_ctx_destroy(fresh);
    attn_ctx_destroy(ctx);
    _exit(rc);
  }
  int status = 0;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  if (WIFSIGNALED(status))
    fail_msg("forked child killed by signal %d%s", WTERMSIG(status),
             WTERMSIG(status) == SIGALRM ? " (it hung)" : "");
  if (WEXITSTATUS(status) != CHILD_OK)
    fail_msg("forked child exited with %d (1: an op failed, 2: wrong result, 3: no context)",
             WEXITSTATUS(status));
}

static void fork_after_use(void **state) {
  (void)state;
#if defined(__SANITIZE_THREAD__)
  skip(); /* ThreadSanitizer cannot follow threads started after a multi-threaded fork */
#endif
  worker w, ref;
  memset(&w, 0, sizeof w);
  memset(&ref, 0, sizeof ref);
  alloc_outputs(&w);
  alloc_outputs(&ref);
  attn_ctx *one = tu_ctx(1);
  run_all(one, &ref);
  attn_ctx_destroy(one);
  attn_ctx *ctx = tu_ctx(3); /* two workers */
  run_all(ctx, &w);
  if (w.failures)
    fail_msg("before fork: %s", w.why);
  compare(&w, &ref, 0, 0);
  fork_child_uses(ctx, &w, &ref, 1); /* used in the child */
  fork_child_uses(ctx, &w, &ref, 0); /* only destroyed in the child */
  /* The parent's context and workers are untouched. */
  run_all(ctx, &w);
  if (w.failures)
    fail_msg("after fork, parent: %s", w.why);
  compare(&w, &ref, 0, 0);
  attn_ctx_destroy(ctx);
  for (int o = 0; o < O_COUNT; o++) {
    free(w.out[o]);
    free(ref.out[o]);
  }
}

int main(void) {
  fill_inputs();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(concurrent_contexts),
      cmocka_unit_test(context_handed_between_threads),
      cmocka_unit_test(one_context_two_threads),
      cmocka_unit_test(busy_from_reentry),
      cmocka_unit_test(busy_object_calls_from_reentry),
      cmocka_unit_test(fork_after_use),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
