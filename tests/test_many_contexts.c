/* 512 application threads, each with its own context, call attn_sdpa at
 * the same time under the BLAS's default threading. The README promises
 * that independent contexts run concurrently; Debian's pthread OpenBLAS
 * has a fixed number of per-caller buffers and crashed at about 200
 * concurrent callers before src/blas.c bounded them (ctest forces the sse2
 * kernel set, whose SDPA products go through cblas_sgemm). Every thread's result
 * must equal the single-threaded reference bit for bit. */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>

#include "test_util.h"

#define N_THREADS 512 /* ATTN_TEST_THREADS may lower it (valgrind runs at most 500) */
#define CALLS 2
enum { B = 1, H = 1, LQ = 128, LK = 192, D = 64 };
enum { NQ = B * H * LQ * D, NK = B * H * LK * D };

static float g_q[NQ], g_k[NK], g_v[NK], g_ref[NQ];
static int g_threads = N_THREADS;
static pthread_barrier_t g_start;

typedef struct {
  float out[NQ];
  attn_status st;
  char why[256];
} job;

static attn_status sdpa(attn_ctx *ctx, float *out) {
  int64_t qd[4] = {B, H, LQ, D}, kd[4] = {B, H, LK, D};
  attn_tensor *q = NULL, *k = NULL, *v = NULL, *o = NULL;
  attn_status st = attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, qd, NULL, g_q, sizeof g_q, &q);
  if (st == ATTN_OK)
    st = attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, kd, NULL, g_k, sizeof g_k, &k);
  if (st == ATTN_OK)
    st = attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, kd, NULL, g_v, sizeof g_v, &v);
  if (st == ATTN_OK)
    st = attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, qd, NULL, out, NQ * sizeof(float), &o);
  attn_sdpa_params p;
  attn_sdpa_params_init(&p);
  p.causal = 1;
  if (st == ATTN_OK)
    st = attn_sdpa(ctx, q, k, v, o, &p);
  return st;
}

static void *run(void *arg) {
  job *j = arg;
  attn_ctx_options opts;
  attn_ctx_options_init(&opts);
  opts.num_threads = 1;
  attn_ctx *ctx = NULL;
  pthread_barrier_wait(&g_start);
  j->st = attn_ctx_create(&ctx, &opts);
  for (int c = 0; c < CALLS && j->st == ATTN_OK; c++) {
    j->st = sdpa(ctx, j->out);
    if (j->st != ATTN_OK)
      snprintf(j->why, sizeof j->why, "%s", attn_ctx_last_error(ctx));
  }
  attn_ctx_destroy(ctx);
  return NULL;
}

static void many_contexts_at_once(void **state) {
  (void)state;
  tu_rng r = {512};
  tu_fill(&r, g_q, NQ, -1, 1);
  tu_fill(&r, g_k, NK, -1, 1);
  tu_fill(&r, g_v, NK, -1, 1);
  attn_ctx *ctx = tu_ctx(1);
  assert_ok(sdpa(ctx, g_ref));
  attn_ctx_destroy(ctx);

  job *jobs = calloc((size_t)g_threads, sizeof *jobs);
  pthread_t *th = calloc((size_t)g_threads, sizeof *th);
  assert_non_null(jobs);
  assert_non_null(th);
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 1 << 20); /* 512 default 8 MiB stacks is a lot of address space */
  assert_int_equal(pthread_barrier_init(&g_start, NULL, (unsigned)g_threads), 0);
  for (int i = 0; i < g_threads; i++)
    assert_int_equal(pthread_create(&th[i], &attr, run, &jobs[i]), 0);
  for (int i = 0; i < g_threads; i++)
    assert_int_equal(pthread_join(th[i], NULL), 0);
  pthread_barrier_destroy(&g_start);
  pthread_attr_destroy(&attr);
  for (int i = 0; i < g_threads; i++) {
    if (jobs[i].st != ATTN_OK)
      fail_msg("thread %d: %s: %s", i, attn_status_string(jobs[i].st), jobs[i].why);
    if (memcmp(jobs[i].out, g_ref, sizeof g_ref))
      fail_msg("thread %d: result differs from the single-threaded reference", i);
  }
  free(jobs);
  free(th);
}

int main(void) {
  const char *n = getenv("ATTN_TEST_THREADS");
  if (n && atoi(n) > 0)
    g_threads = atoi(n);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(many_contexts_at_once),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
