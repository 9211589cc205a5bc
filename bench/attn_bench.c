/* attn-bench: speed and memory of libattn's attention next to the machine's
 * own ceilings measured in the same run (a large sgemm, a memory copy) and
 * next to the naive way that materialises the score matrix.
 *
 *   attn-bench [--json] [--quick | --smoke] [--help]
 *
 * Default: the full run, as a table. --json: one JSON object per line per
 * case. --quick: the cases behind issue 3's targets, well under a minute on
 * 2 cores. --smoke: one tiny case, a few milliseconds, checked against the
 * naive result (ctest runs it so the benchmark cannot rot).
 *
 * Threads: each case runs on a context with num_threads = the case's
 * threads. With AVX2 or AVX-512, SDPA's products are libattn's own kernels
 * and no BLAS setting matters; when they go to BLAS (ATTN_KERNELS=sse2, or
 * an older CPU) a multi-threaded OpenBLAS makes the library fall back to one
 * worker (bench/BLAS-THREADING.md) and this program warns. The naive method
 * and the sgemm ceiling always call BLAS. It never changes BLAS settings. */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE /* madvise, MADV_HUGEPAGE */

#include "attn.h"

#include <cblas.h>
#ifdef ATTN_HAVE_X86_KERNELS
#include "kernel_set.h" /* the tile kernels, linked from attn_simd's objects */
#endif
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif
#include <time.h>
#include <unistd.h>

/* ---- timing and statistics ---- */

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

#define MAX_REPS 7
#define MIN_SAMPLE 0.02 /* seconds: shorter calls are timed in batches */

/* Seconds of one call of fn(arg), the median of repeats. With `warm`, a
 * first untimed call absorbs first-touch costs (page faults, scratch growth,
 * thread start); without, the caller has made that call already. Repeats
 * fill about `budget` seconds, at least 1 and at most MAX_REPS. A call
 * shorter than MIN_SAMPLE is timed as a batch of back-to-back calls that
 * lasts about MIN_SAMPLE (the clock's resolution and one late wake-up of a
 * worker would otherwise weigh on a median of a few 0.1 ms calls). fn
 * returns nonzero on failure, which ends the measurement with NAN. best_out
 * (if not NULL) gets the fastest repeat. */
typedef int (*timed_fn)(void *arg);

static void blas_settle(void);

static double time_median(timed_fn fn, void *arg, double budget, int warm, int *reps_out,
                          double *best_out) {
  double t[MAX_REPS];
  int reps = 0;
  blas_settle();
  double s = now();
  if (fn(arg))
    return NAN;
  double first = now() - s;
  int batch = first > 0 && first < MIN_SAMPLE ? (int)(MIN_SAMPLE / first) : 1;
  if (!warm && batch == 1)
    t[reps++] = first;
  int want = first > 0 ? (int)(budget / (first * batch)) : MAX_REPS;
  if (want < 1)
    want = 1;
  if (want > MAX_REPS)
    want = MAX_REPS;
  while (reps < want) {
    s = now();
    for (int i = 0; i < batch; i++)
      if (fn(arg))
        return NAN;
    t[reps++] = (now() - s) / batch;
  }
  if (reps_out)
    *reps_out = reps * batch;
  double m = median(t, reps); /* sorts t */
  if (best_out)
    *best_out = t[0];
  return m;
}

/* ---- other jobs on the machine (Linux /proc/stat) ---- */

/* Busy CPU seconds of the whole machine so far, NAN without /proc/stat. */
static double machine_busy_seconds(void) {
  FILE *f = fopen("/proc/stat", "r");
  if (!f)
    return NAN;
  unsigned long long v[8] = {0};
  int got = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                   &v[4], &v[5], &v[6], &v[7]);
  fclose(f);
  if (got < 5)
    return NAN;
  unsigned long long busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]; /* not idle, iowait */
  return (double)busy / (double)sysconf(_SC_CLK_TCK);
}

static double self_cpu_seconds(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + 1e-6 * (double)ru.ru_utime.tv_usec +
         (double)ru.ru_stime.tv_sec + 1e-6 * (double)ru.ru_stime.tv_usec;
}

typedef struct {
  double wall, busy, self;
} load_mark;

static load_mark g_settled; /* spent in blas_settle, below: left out of load figures */

static load_mark load_now(void) {
  load_mark m = {now() - g_settled.wall, machine_busy_seconds() - g_settled.busy,
                 self_cpu_seconds() - g_settled.self};
  return m;
}

/* Cores' worth of CPU that other processes used since `m` (0 = we had the
 * machine to ourselves; 1 = another job held a whole core). */
static double other_load_since(load_mark m) {
  load_mark e = load_now();
  double wall = e.wall - m.wall;
  if (!(wall > 0) || !isfinite(e.busy) || !isfinite(m.busy))
    return NAN;
  double other = (e.busy - m.busy) - (e.self - m.self);
  return other > 0 ? other / wall : 0.0;
}

/* A threaded OpenBLAS's idle threads spin (sched_yield) for 2^28 TSC
 * cycles (its THREAD_TIMEOUT, 0.12 s on the 2.3 GHz Xeon) after the library
 * loads and after each BLAS call, before they sleep. A 2-thread row timed
 * meanwhile shares a core with them: `--only rope` ran its first row, 30 ms
 * after the start, at 19-21 GB/s (the 1-thread rate), against 32-36 GB/s
 * with OPENBLAS_NUM_THREADS=1, under chrt -f 10). So every measurement
 * first waits until BLAS_SETTLE seconds have passed since the bench last
 * called BLAS (g_blas_at: the start, then the BLAS ceilings' calls). The
 * wait is left out of the load figures (g_settled), so that other jobs
 * running meanwhile do not count as disturbing the case. */
#define BLAS_SETTLE 0.3
static double g_blas_at;
static int blas_threads(void);

static void blas_settle(void) {
  double wait = g_blas_at + BLAS_SETTLE - now();
  if (!(wait > 0) || blas_threads() <= 1)
    return;
  load_mark a = load_now();
  struct timespec ts = {0, (long)(wait * 1e9)};
  nanosleep(&ts, NULL);
  load_mark b = load_now();
  g_settled.wall += b.wall - a.wall;
  g_settled.busy += b.busy - a.busy;
  g_settled.self += b.self - a.self;
}

/* Wait (up to max_wait seconds) until other processes use less than a
 * tenth of a core over a one-second window. */
static void wait_quiet(double max_wait) {
  double t0 = now();
  while (now() - t0 < max_wait) {
    load_mark m = load_now();
    struct timespec ts = {1, 0};
    nanosleep(&ts, NULL);
    double o = other_load_since(m);
    if (!isfinite(o) || o < 0.1)
      return;
  }
}

/* ---- memory ---- */

/* Every buffer of 2 MiB or more is 2 MiB-aligned and advised for
 * transparent huge pages, as libattn's default allocator does for an owned
 * KV cache: the inputs of the sdpa rows, the caches (through the counting
 * allocator below) and the memcpy and read-only ceilings then read through
 * the same pages, and the ratios compare like with like. Released by free(). */
#define HUGE_PAGE ((size_t)2 << 20)

static void *big_alloc(size_t bytes) {
  void *p = NULL;
  if (posix_memalign(&p, bytes >= HUGE_PAGE ? HUGE_PAGE : 64, bytes ? bytes : 64))
    return NULL;
#ifdef MADV_HUGEPAGE
  if (bytes >= HUGE_PAGE)
    (void)madvise(p, bytes, MADV_HUGEPAGE); /* advice: may fail harmlessly */
#endif
  return p;
}

static float *new_floats(size_t n, uint64_t seed) {
  size_t bytes = (n * sizeof(float) + 63) & ~(size_t)63;
  float *p = big_alloc(bytes);
  if (!p) {
    fprintf(stderr, "attn-bench: out of memory (%zu bytes)\n", bytes);
    exit(2);
  }
  uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
  for (size_t i = 0; i < n; i++) {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    p[i] = (float)((s * 0x2545f4914f6cdd1dull) >> 40) / (float)(1 << 24) * 2.0f - 1.0f;
  }
  return p;
}

/* The context's allocator counts live bytes and their high-water mark, so
 * "extra memory" is exactly what libattn itself allocated (inputs and
 * outputs are caller memory, wrapped). */
typedef struct {
  atomic_size_t live, peak;
} counter;

#define HDR 16 /* keeps malloc's 16-byte alignment */

/* A block of 2 MiB or more gets a whole huge page of header, so that it
 * starts on a 2 MiB boundary. */
static size_t hdr_of(size_t size) { return size >= HUGE_PAGE ? HUGE_PAGE : HDR; }

static void *count_alloc(void *user, size_t size) {
  counter *c = user;
  size_t h = hdr_of(size);
  char *p = size > SIZE_MAX - h ? NULL : big_alloc(size + h);
  if (!p)
    return NULL;
  p += h - HDR;
  memcpy(p, &size, sizeof size);
  size_t live = atomic_fetch_add(&c->live, size) + size;
  size_t peak = atomic_load(&c->peak);
  while (live > peak && !atomic_compare_exchange_weak(&c->peak, &peak, live))
    ;
  return p + HDR;
}

static void count_free(void *user, void *ptr) {
  counter *c = user;
  char *p = (char *)ptr - HDR;
  size_t size;
  memcpy(&size, p, sizeof size);
  atomic_fetch_sub(&c->live, size);
  free(p - (hdr_of(size) - HDR));
}

static attn_ctx *new_ctx(int threads, counter *c) {
  attn_ctx_options o;
  attn_ctx_options_init(&o);
  o.num_threads = threads;
  o.alloc = count_alloc;
  o.free = count_free;
  o.alloc_user = c;
  attn_ctx *ctx = NULL;
  if (attn_ctx_create(&ctx, &o) != ATTN_OK) {
    fprintf(stderr, "attn-bench: cannot create a context with %d threads\n", threads);
    exit(2);
  }
  return ctx;
}

static attn_tensor *wrap4(attn_ctx *ctx, float *data, int64_t a, int64_t b, int64_t c,
                          int64_t d) {
  int64_t dims[4] = {a, b, c, d};
  attn_tensor *t = NULL;
  size_t bytes = (size_t)(a * b * c * d) * sizeof(float);
  if (attn_tensor_wrap(ctx, ATTN_DTYPE_F32, 4, dims, NULL, data, bytes, &t) != ATTN_OK) {
    fprintf(stderr, "attn-bench: attn_tensor_wrap: %s\n", attn_ctx_last_error(ctx));
    exit(2);
  }
  return t;
}

/* ---- threads for the reference computations ---- */

typedef void (*par_fn)(void *arg, int index, int nthreads);
typedef struct {
  par_fn fn;
  void *arg;
  int index, n;
} par_job;

static void *par_main(void *a) {
  par_job *j = a;
  j->fn(j->arg, j->index, j->n);
  return NULL;
}

/* fn(arg, t, n) for t < n, each on its own thread (t = 0 on the caller). */
static void run_parallel(par_fn fn, void *arg, int n) {
  pthread_t th[64];
  par_job jobs[64];
  if (n > 64)
    n = 64;
  for (int t = 1; t < n; t++) {
    jobs[t] = (par_job){fn, arg, t, n};
    if (pthread_create(&th[t], NULL, par_main, &jobs[t])) {
      fprintf(stderr, "attn-bench: pthread_create failed\n");
      exit(2);
    }
  }
  fn(arg, 0, n);
  for (int t = 1; t < n; t++)
    pthread_join(th[t], NULL);
}

/* Threads inside one BLAS call; > 1 means our own threads must not call it
 * concurrently (OpenBLAS serialises them, bench/BLAS-THREADING.md). */
static int blas_threads(void) {
#ifdef ATTN_BLAS_GENERIC
  return 1; /* another CBLAS: its threads are its own business (as in blas.c) */
#else
  return openblas_get_parallel() == 0 ? 1 : openblas_get_num_threads();
#endif
}

/* Threads to use for our own parallel BLAS work at `threads` requested. */
static int ref_threads(int threads) { return blas_threads() > 1 ? 1 : threads; }

/* ---- the sgemm ceiling: an n^3 product on `threads` threads ---- */

typedef struct {
  int n;
  const float *a, *b;
  float *c;
} gemm_job;

static void gemm_part(void *arg, int t, int nt) {
  gemm_job *g = arg;
  int m0 = (int)((int64_t)g->n * t / nt), m1 = (int)((int64_t)g->n * (t + 1) / nt);
  if (m1 > m0)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m1 - m0, g->n, g->n, 1.0f,
                g->a + (size_t)m0 * g->n, g->n, g->b, g->n, 0.0f, g->c + (size_t)m0 * g->n,
                g->n);
}

typedef struct {
  gemm_job job;
  int threads;
} gemm_run;

static int gemm_once(void *arg) {
  gemm_run *r = arg;
  run_parallel(gemm_part, &r->job, ref_threads(r->threads));
  g_blas_at = now();
  return 0;
}

/* A threaded OpenBLAS would run a 1-thread row's ceiling on all its threads:
 * cap it at the row's thread count for the measurement (the bench owns the
 * process; the library itself never changes BLAS settings). */
static int cap_blas_threads(int threads) {
#ifdef ATTN_BLAS_GENERIC
  (void)threads;
  return 0;
#else
  int had = blas_threads();
  if (had > threads)
    openblas_set_num_threads(threads);
  return had;
#endif
}

static void restore_blas_threads(int had, int threads) {
#ifdef ATTN_BLAS_GENERIC
  (void)had, (void)threads;
#else
  if (had > threads)
    openblas_set_num_threads(had);
#endif
}

/* GFLOP/s of C = A B at n^3, rows split over the threads (or one call when
 * the BLAS threads itself). Measured next to every case rather than once,
 * so that a ratio compares two numbers taken under the same conditions on a
 * shared machine. */
static double sgemm_gflops(int threads, int n) {
  if (threads < 1 || threads > 64)
    return NAN;
  gemm_run r = {{n, new_floats((size_t)n * n, 1), new_floats((size_t)n * n, 2),
                 new_floats((size_t)n * n, 3)},
                threads};
  int had = cap_blas_threads(threads);
  double t = time_median(gemm_once, &r, 0.5, 1, NULL, NULL);
  restore_blas_threads(had, threads);
  free((void *)r.job.a);
  free((void *)r.job.b);
  free(r.job.c);
  return 2.0 * n * (double)n * n / t * 1e-9;
}

/* ---- the same products through BLAS: the serving rows' ceiling ----
 * One 2048^3 product is the rate of a large sgemm. A short sequence's
 * attention is small products instead: per head S = Q K^T (L x L x D) and
 * O = S V (L x Dv x L). This ceiling runs exactly those through cblas_sgemm
 * (no softmax between them), one (sequence, head) pair per call on each
 * thread (the BLAS held to one thread per call meanwhile), pairs taken in turn from a shared counter, operands head-major
 * and as large in all as the case's tensors: what SDPA through BLAS would
 * pay for its products alone on these shapes. */

typedef struct {
  int64_t n, H, D, Dv;
  const int64_t *cu; /* sequence s: tokens cu[s] .. cu[s + 1] */
  const float *q, *k, *v;
  float *o;
  float **s; /* per thread: L_max x L_max */
  atomic_long next;
  int threads;
} prod_run;

static void prod_part(void *arg, int t, int nt) {
  prod_run *r = arg;
  (void)nt;
  for (long i; (i = atomic_fetch_add(&r->next, 1)) < r->n * r->H;) {
    int64_t s = i / r->H, h = i % r->H, L = r->cu[s + 1] - r->cu[s];
    size_t row = (size_t)(r->cu[s] * r->H + h * L); /* head h of sequence s */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)L, (int)L, (int)r->D, 1.0f,
                r->q + row * (size_t)r->D, (int)r->D, r->k + row * (size_t)r->D, (int)r->D, 0.0f,
                r->s[t], (int)L);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)L, (int)r->Dv, (int)L, 1.0f,
                r->s[t], (int)L, r->v + row * (size_t)r->Dv, (int)r->Dv, 0.0f,
                r->o + row * (size_t)r->Dv, (int)r->Dv);
  }
}

static int prod_once(void *arg) {
  prod_run *r = arg;
  atomic_store(&r->next, 0);
  run_parallel(prod_part, r, r->threads);
  g_blas_at = now();
  return 0;
}

/* GFLOP/s of the products of n sequences (offsets cu) of H heads, D / Dv,
 * counted as SDPA's rows count them: 2 L^2 (D + Dv) per head. */
static double products_gflops(int threads, int64_t n, const int64_t *cu, int64_t H, int64_t D,
                              int64_t Dv) {
  if (threads < 1 || threads > 64)
    return NAN;
  int64_t T = cu[n], Lmax = 0;
  double flops = 0;
  for (int64_t s = 0; s < n; s++) {
    int64_t L = cu[s + 1] - cu[s];
    Lmax = L > Lmax ? L : Lmax;
    flops += 2.0 * (double)L * (double)L * (double)H * (double)(D + Dv);
  }
  int nt = threads;
  prod_run r = {n, H, D, Dv, cu, new_floats((size_t)(T * H * D), 51),
                new_floats((size_t)(T * H * D), 52), new_floats((size_t)(T * H * Dv), 53),
                new_floats((size_t)(T * H * Dv), 54), calloc((size_t)nt, sizeof(float *)), 0, nt};
  for (int t = 0; t < nt; t++)
    r.s[t] = new_floats((size_t)(Lmax * Lmax), 55);
  int had = cap_blas_threads(1);
  double t = time_median(prod_once, &r, 0.5, 1, NULL, NULL);
  restore_blas_threads(had, 1);
  for (int i = 0; i < nt; i++)
    free(r.s[i]);
  free(r.s);
  free((void *)r.q);
  free((void *)r.k);
  free((void *)r.v);
  free(r.o);
  return flops / t * 1e-9;
}

/* ---- libattn's own tile kernel: the ceiling of its products ----
 * The sgemm ceiling is the linked BLAS's, which may be far from the CPU's
 * (OpenBLAS 0.3.21 runs Prescott kernels on CPUs newer than it); a layer's
 * products run on libattn's own kernels, so its rate is also reported
 * next to theirs: gemm_nt on SDPA's 128 x 256 x 64 tiles, one stream of
 * tiles per thread, from the kernel set the library uses. */

enum { TILE_M = 128, TILE_N = 256, TILE_K = 64 };
/* Tiles per thread per timed call: 64, or 1 in the smoke run (under
 * valgrind 64 made bench_smoke's layer row alone take 35 s). */
static int g_tile_reps = 64;

typedef struct {
  const void *kern;
  float *a, *b, *c; /* per thread: TILE_M x TILE_K, TILE_N x TILE_K, TILE_M x TILE_N */
} tile_job;

typedef struct {
  tile_job job;
  int threads;
} tile_run;

static void tile_part(void *arg, int t, int nt) {
  (void)nt;
#ifdef ATTN_HAVE_X86_KERNELS
  tile_job *j = arg;
  const attn_kernels *k = j->kern;
  float *a = j->a + (size_t)t * TILE_M * TILE_K, *b = j->b + (size_t)t * TILE_N * TILE_K;
  float *c = j->c + (size_t)t * TILE_M * TILE_N;
  for (int r = 0; r < g_tile_reps; r++)
    k->gemm_nt(TILE_M, TILE_N, TILE_K, 1.0f, a, TILE_K, b, TILE_K, c, TILE_N);
#else
  (void)arg, (void)t;
#endif
}

static int tile_once(void *arg) {
  tile_run *r = arg;
  run_parallel(tile_part, &r->job, r->threads);
  return 0;
}

/* The tile kernels libattn runs, or NULL (products through BLAS, or no x86
 * kernels in this build). */
static const void *tile_kernels(void) {
  const attn_kernels *k = bench_kernel_set();
  return k && k->gemm_nt ? k : NULL;
}

/* GFLOP/s of the tile kernel on `threads` threads; NAN without one. */
static double tile_gflops(int threads) {
  const void *kern = tile_kernels();
  if (!kern || threads < 1 || threads > 64)
    return NAN;
  size_t nt = (size_t)threads;
  tile_run r = {{kern, new_floats(nt * TILE_M * TILE_K, 4), new_floats(nt * TILE_N * TILE_K, 5),
                 new_floats(nt * TILE_M * TILE_N, 6)},
                threads};
  double t = time_median(tile_once, &r, 0.3, 1, NULL, NULL);
  free(r.job.a);
  free(r.job.b);
  free(r.job.c);
  return 2.0 * TILE_M * TILE_N * TILE_K * g_tile_reps * threads / t * 1e-9;
}

/* ---- memory copy bandwidth (buffers larger than the L3) ---- */

typedef struct {
  char *src, *dst;
  size_t bytes;
  int threads;
} copy_run;

static void copy_part(void *arg, int t, int nt) {
  copy_run *c = arg;
  size_t b0 = c->bytes * (size_t)t / (size_t)nt, b1 = c->bytes * (size_t)(t + 1) / (size_t)nt;
  memcpy(c->dst + b0, c->src + b0, b1 - b0);
}

static int copy_once(void *arg) {
  copy_run *c = arg;
  run_parallel(copy_part, c, c->threads);
  return 0;
}

/* GB/s of memcpy counting bytes read plus bytes written (as STREAM's Copy),
 * split over `threads` threads: the median repeat, and the fastest in
 * best_gbps (if not NULL). */
static double memcpy_gbps(int threads, size_t bytes, double *best_gbps) {
  copy_run c = {big_alloc(bytes), big_alloc(bytes), bytes, threads};
  if (!c.src || !c.dst) {
    free(c.src);
    free(c.dst);
    return NAN;
  }
  memset(c.src, 1, bytes);
  memset(c.dst, 2, bytes);
  double best = NAN, t = time_median(copy_once, &c, 1.0, 1, NULL, &best);
  free(c.src);
  free(c.dst);
  if (best_gbps)
    *best_gbps = 2.0 * (double)bytes / best * 1e-9;
  return 2.0 * (double)bytes / t * 1e-9;
}

/* ---- read-only bandwidth: the ceiling of a decode step, which reads K/V
 * and writes almost nothing (memcpy also writes, and its stores and reads
 * share the memory differently) ---- */

static void read_part(void *arg, int t, int nt) {
  copy_run *c = arg;
  size_t words = c->bytes / sizeof(uint64_t);
  size_t w0 = words * (size_t)t / (size_t)nt, w1 = words * (size_t)(t + 1) / (size_t)nt;
  const uint64_t *p = (const uint64_t *)(const void *)c->src;
  uint64_t acc[8] = {0}; /* independent chains: the loads, not the XORs, set the pace */
  size_t i = w0;
  for (; i + 8 <= w1; i += 8) {
    /* a page ahead, as libattn's streaming kernels do: the hardware
     * prefetchers stop at page boundaries */
    __builtin_prefetch(p + i + 512);
    for (int j = 0; j < 8; j++)
      acc[j] ^= p[i + j];
  }
  for (; i < w1; i++)
    acc[0] ^= p[i];
  uint64_t x = 0;
  for (int j = 0; j < 8; j++)
    x ^= acc[j];
  ((uint64_t *)(void *)c->dst)[t] = x; /* keeps the loads */
}

static int read_once(void *arg) {
  copy_run *c = arg;
  run_parallel(read_part, c, c->threads);
  return 0;
}

/* GB/s read by `threads` threads streaming disjoint slices of a buffer
 * larger than the L3. */
static double read_gbps(int threads, size_t bytes) {
  copy_run c = {big_alloc(bytes), malloc(64 * sizeof(uint64_t)), bytes, threads};
  if (!c.src || !c.dst) {
    free(c.src);
    free(c.dst);
    return NAN;
  }
  memset(c.src, 1, bytes);
  double t = time_median(read_once, &c, 1.0, 1, NULL, NULL);
  free(c.src);
  free(c.dst);
  return (double)bytes / t * 1e-9;
}

/* GB/s read by the same stream over given memory: a decode row's own K and
 * V. Memory speed on a VM depends on where the host placed the pages (one
 * buffer can read 1.6x slower than the next, see bench/RESULTS.md), so a
 * kernel's ratio to this figure does not depend on that placement. */
typedef struct {
  copy_run k, v;
} pages_run;

static int read_pages_once(void *arg) {
  pages_run *p = arg;
  read_once(&p->k);
  read_once(&p->v);
  return 0;
}

static double read_pages_gbps(int threads, const void *k, size_t kb, const void *v, size_t vb) {
  uint64_t sink[64];
  pages_run p = {{(char *)(uintptr_t)k, (char *)sink, kb, threads},
                 {(char *)(uintptr_t)v, (char *)sink, vb, threads}};
  if (threads < 1 || threads > 64)
    return NAN;
  double t = time_median(read_pages_once, &p, 1.0, 1, NULL, NULL);
  return (double)(kb + vb) / t * 1e-9;
}

/* ---- the naive way: full scores, row softmax, one product with V ---- */

typedef struct {
  int64_t B, Hq, Hkv, Lq, Lk, D, Dv;
  int causal;
  const float *q, *k, *v;
  float *out;
  float **s; /* per thread: Lq x Lk scores */
  int threads;
} naive_run;

static void naive_part(void *arg, int t, int nt) {
  naive_run *n = arg;
  float *s = n->s[t];
  int64_t G = n->Hq / n->Hkv;
  float scale = 1.0f / sqrtf((float)n->D);
  for (int64_t bh = t; bh < n->B * n->Hq; bh += nt) {
    int64_t b = bh / n->Hq, h = bh % n->Hq, kh = h / G;
    const float *q = n->q + (size_t)bh * (size_t)(n->Lq * n->D);
    const float *k = n->k + (size_t)(b * n->Hkv + kh) * (size_t)(n->Lk * n->D);
    const float *v = n->v + (size_t)(b * n->Hkv + kh) * (size_t)(n->Lk * n->Dv);
    float *o = n->out + (size_t)bh * (size_t)(n->Lq * n->Dv);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n->Lq, (int)n->Lk, (int)n->D,
                scale, q, (int)n->D, k, (int)n->D, 0.0f, s, (int)n->Lk);
    for (int64_t i = 0; i < n->Lq; i++) {
      float *row = s + (size_t)i * (size_t)n->Lk;
      int64_t vis = n->causal ? (i + 1 < n->Lk ? i + 1 : n->Lk) : n->Lk; /* top-left */
      float m = row[0];
      for (int64_t j = 1; j < vis; j++)
        m = row[j] > m ? row[j] : m;
      float sum = 0;
      for (int64_t j = 0; j < vis; j++) {
        row[j] = expf(row[j] - m);
        sum += row[j];
      }
      float inv = 1.0f / sum;
      for (int64_t j = 0; j < vis; j++)
        row[j] *= inv;
      for (int64_t j = vis; j < n->Lk; j++)
        row[j] = 0;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n->Lq, (int)n->Dv,
                (int)n->Lk, 1.0f, s, (int)n->Lk, v, (int)n->Dv, 0.0f, o, (int)n->Dv);
  }
}

static int naive_once(void *arg) {
  naive_run *n = arg;
  run_parallel(naive_part, n, n->threads);
  g_blas_at = now();
  return 0;
}

/* ---- cases ---- */

/* K_VARLEN: attn_sdpa_varlen over B sequences of Lq..Lk tokens (lengths
 * spread by varlen_len); K_ROPE: attn_rope in place on [B, Hq, Lq, D];
 * K_SINUS: attn_sinusoidal_add in place on [B, Lq, D]; K_BWD: attn_sdpa_backward;
 * K_MHA: the decoder layer's forward over a prompt of Lq tokens (E = Hq * D);
 * K_KV_STEP: a decode step in a paged cache of B sequences of up to Lk tokens
 * (lengths spread by varlen_len). */
typedef enum {
  K_SDPA,
  K_DECODE,
  K_LONG,
  K_SOFTMAX,
  K_VARLEN,
  K_ROPE,
  K_SINUS,
  K_BWD,
  K_KV, /* decode through attn_kv_attend over a KV cache of dtype dt (Lk tokens) */
  K_MHA,
  K_KV_STEP
} kind;

typedef struct {
  kind kind;
  int64_t B, Hq, Hkv, Lq, Lk, D, Dv;
  int causal, threads;
  /* Element type: of K and V for decode rows (Q and O stay F32, as a
   * half-precision KV cache is used), of Q, K, V and O for the others. */
  int32_t dt;
  int mask; /* K_SOFTMAX: 0 none, MASK_ADD or MASK_BOOL */
  /* A serving row (add_serving_cases): also measured against the same
   * products through BLAS (products_gflops) and the tile kernel. */
  int serving;
} bcase;

/* Softmax masks: one row of Lk values broadcast over the rows (a key
 * padding mask), every 7th entry hidden: an F32 additive mask (0.5, or -inf
 * to hide) or a U8 keep-mask. */
enum { MASK_ADD = 1, MASK_BOOL = 2 };

typedef struct {
  double seconds, gflops, sgemm, naive_seconds, max_diff, kv_gbps, copy_gbps, gbps;
  double naive_bytes;
  size_t peak_extra;
  int reps;
  const char *error;
  double other_load; /* cores used by other processes during the case */
  double speedup_f32; /* K_KV half rows: the f32 cache row's time over this one's */
  double tile;        /* K_MHA: tile_gflops on the same threads */
  double read_gbps;   /* rows reading K/V: the same run's read-only stream */
  double products;    /* serving rows: products_gflops on the same shapes and threads */
  double pages_gbps;  /* K_DECODE, K_KV: the read-only stream over the row's own K/V */
  /* Streaming rows: the fastest repeat's GB/s, and memcpy's. Their ratio moves
   * less than the medians' when another job takes a core for part of a case. */
  double gbps_best, copy_best_gbps;
} result;

/* A result with every figure unmeasured (NAN) and no error. */
static result no_result(void) {
  result r = {NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN, 0, 0, NULL,
              NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN};
  return r;
}

static const char *kind_name(kind k) {
  static const char *const names[] = {"sdpa", "sdpa_decode", "sdpa_long", "softmax",
                                      "sdpa_varlen", "rope", "sinusoidal",
                                      "sdpa_backward", "kv_decode", "mha_forward",
                                      "paged_decode"};
  return names[k];
}

/* Ops measured in GB/s against the memcpy ceiling rather than in GFLOP/s. */
static int is_stream(kind k) { return k == K_SOFTMAX || k == K_ROPE || k == K_SINUS; }

/* Decode rows: the K/V bytes read per second next to memcpy. */
static int reads_kv(kind k) { return k == K_DECODE || k == K_KV || k == K_KV_STEP; }

typedef struct {
  attn_ctx *ctx;
  attn_tensor *q, *k, *v, *o, *x, *y;
  attn_tensor *lse, *dout, *dq, *dk, *dv; /* the backward's */
  attn_kv_cache *cache;                   /* K_KV */
  attn_sdpa_params p;
  int32_t batch;               /* attn_sdpa_varlen */
  const int64_t *cu;           /* its cu_seqlens (q and k alike) */
  attn_rope_params rope;
  attn_sinusoidal_params sinus;
  attn_softmax_params sm;
  char err[600];
} op_run;

static int sdpa_backward_once(void *arg) {
  op_run *r = arg;
  if (attn_sdpa_backward(r->ctx, r->q, r->k, r->v, r->o, r->lse, r->dout, r->dq, r->dk, r->dv,
                         &r->p, NULL) != ATTN_OK) {
    snprintf(r->err, sizeof r->err, "%s", attn_ctx_last_error(r->ctx));
    return 1;
  }
  return 0;
}

static int sdpa_once(void *arg) {
  op_run *r = arg;
  if (attn_sdpa(r->ctx, r->q, r->k, r->v, r->o, &r->p) != ATTN_OK) {
    snprintf(r->err, sizeof r->err, "%s", attn_ctx_last_error(r->ctx));
    return 1;
  }
  return 0;
}

static int kv_once(void *arg) {
  op_run *r = arg;
  if (attn_kv_attend(r->ctx, r->cache, r->q, r->o, NULL, &r->p) != ATTN_OK) {
    snprintf(r->err, sizeof r->err, "%s", attn_ctx_last_error(r->ctx));
    return 1;
  }
  return 0;
}

static int varlen_once(void *arg) {
  op_run *r = arg;
  if (attn_sdpa_varlen(r->ctx, r->q, r->k, r->v, r->o, r->batch, r->cu, r->cu, &r->p) !=
      ATTN_OK) {
    snprintf(r->err, sizeof r->err, "%s", attn_ctx_last_error(r->ctx));
    return 1;
  }
  return 0;
}

static int rope_once(void *arg) {
  op_run *r = arg;
  if (attn_rope(r->ctx, r->x, &r->rope) != ATTN_OK) {
    snprintf(r->err, sizeof r->err, "%s", attn_ctx_last_error(r->ctx));
    return 1;
  }
  return 0;
}

static int sinus_once(void *arg) {
  op_run *r = arg;
  if (attn_sinusoidal_add(r->ctx, r->x, &r->sinus) != ATTN_OK) {
    snprintf(r->err, sizeof r->err, "%s", attn_ctx_last_error(r->ctx));
    return 1;
  }
  return 0;
}

static int softmax_once(void *arg) {
  op_run *r = arg;
  if (attn_softmax(r->ctx, r->x, r->y, &r->sm) != ATTN_OK) {
    snprintf(r->err, sizeof r->err, "%s", attn_ctx_last_error(r->ctx));
    return 1;
  }
  return 0;
}

static double g_budget = 1.5;       /* seconds of repeats per measurement */
static double g_naive_limit = 2.0;  /* GiB of score matrices the naive way may use */
static int g_sgemm_n = 2048;
static size_t g_copy_bytes = (size_t)256 << 20;
static char g_err[600];
static double g_f32_kv_seconds = NAN; /* the last f32 K_KV row's time */

/* Query-key pairs the shape requires (exact count under a top-left causal
 * mask: about half of Lq * Lk for a square one). */
static double visible_pairs(const bcase *c) {
  if (!c->causal)
    return (double)c->Lq * (double)c->Lk;
  double pairs = 0;
  for (int64_t i = 0; i < c->Lq; i++)
    pairs += (double)(i + 1 < c->Lk ? i + 1 : c->Lk);
  return pairs;
}

/* A tensor of type dt holding f's values (rounded once by attn_tensor_copy),
 * and f's data replaced by the rounded values, so the naive run sees the
 * same inputs. For F32, f itself. */
static attn_tensor *as_dtype(attn_ctx *ctx, attn_tensor *f, int32_t dt) {
  if (dt == ATTN_DTYPE_F32)
    return f;
  attn_tensor *t = NULL;
  if (attn_tensor_new(ctx, dt, attn_tensor_ndim(f), attn_tensor_dims(f), &t) ||
      attn_tensor_copy(ctx, f, t) || attn_tensor_copy(ctx, t, f)) {
    fprintf(stderr, "attn-bench: converting to dtype %d: %s\n", (int)dt,
            attn_ctx_last_error(ctx));
    exit(2);
  }
  return t;
}

static const char *dt_name(int32_t dt) {
  return dt == ATTN_DTYPE_F16 ? "f16" : dt == ATTN_DTYPE_BF16 ? "bf16" : "f32";
}

static size_t dt_size(int32_t dt) { return dt == ATTN_DTYPE_F32 ? 4 : 2; }

/* The cold call (the extra memory libattn allocates in it, beyond its
 * tensors' handles; later calls reuse that scratch), then the timed
 * repeats. err: where `once` leaves its message. Returns 0 on success. */
static int measure(timed_fn once, void *arg, const char *err, counter *cnt, result *res) {
  size_t base = atomic_load(&cnt->live);
  atomic_store(&cnt->peak, base);
  if (once(arg)) {
    snprintf(g_err, sizeof g_err, "%s", err);
    res->error = g_err;
    return 1;
  }
  res->peak_extra = atomic_load(&cnt->peak) - base;
  res->seconds = time_median(once, arg, g_budget, 0, &res->reps, NULL);
  return 0;
}

static result run_sdpa_case(const bcase *c) {
  result res = no_result();
  size_t nq = (size_t)(c->B * c->Hq * c->Lq * c->D), nk = (size_t)(c->B * c->Hkv * c->Lk * c->D),
         nv = (size_t)(c->B * c->Hkv * c->Lk * c->Dv), no = (size_t)(c->B * c->Hq * c->Lq * c->Dv);
  float *q = new_floats(nq, 11), *k = new_floats(nk, 12), *v = new_floats(nv, 13);
  float *o = new_floats(no, 14);
  counter cnt = {0, 0};
  op_run r = {0};
  r.ctx = new_ctx(c->threads, &cnt);
  int32_t qdt = c->kind == K_DECODE || c->kind == K_KV ? ATTN_DTYPE_F32 : c->dt;
  attn_tensor *of = wrap4(r.ctx, o, c->B, c->Hq, c->Lq, c->Dv);
  r.q = as_dtype(r.ctx, wrap4(r.ctx, q, c->B, c->Hq, c->Lq, c->D), qdt);
  r.k = as_dtype(r.ctx, wrap4(r.ctx, k, c->B, c->Hkv, c->Lk, c->D), c->dt);
  r.v = as_dtype(r.ctx, wrap4(r.ctx, v, c->B, c->Hkv, c->Lk, c->Dv), c->dt);
  r.o = as_dtype(r.ctx, of, qdt);
  attn_sdpa_params_init(&r.p);
  r.p.causal = c->causal;
  int (*once)(void *) = sdpa_once;
  float *bufs[5] = {0};
  if (c->kind == K_BWD) {
    /* The forward (on its own context) gives out and lse; the timed call is
     * the backward, whose cold call alone is measured for extra memory. */
    size_t nl = (size_t)(c->B * c->Hq * c->Lq);
    bufs[0] = new_floats(nl, 17), bufs[1] = new_floats(no, 18), bufs[2] = new_floats(nq, 0);
    bufs[3] = new_floats(nk, 0), bufs[4] = new_floats(nv, 0);
    int64_t ld[3] = {c->B, c->Hq, c->Lq};
    attn_tensor_wrap(r.ctx, ATTN_DTYPE_F32, 3, ld, NULL, bufs[0], nl * sizeof(float), &r.lse);
    r.dout = wrap4(r.ctx, bufs[1], c->B, c->Hq, c->Lq, c->Dv);
    r.dq = wrap4(r.ctx, bufs[2], c->B, c->Hq, c->Lq, c->D);
    r.dk = wrap4(r.ctx, bufs[3], c->B, c->Hkv, c->Lk, c->D);
    r.dv = wrap4(r.ctx, bufs[4], c->B, c->Hkv, c->Lk, c->Dv);
    op_run f = r;
    counter fcnt = {0, 0};
    f.ctx = new_ctx(c->threads, &fcnt);
    f.q = wrap4(f.ctx, q, c->B, c->Hq, c->Lq, c->D);
    f.k = wrap4(f.ctx, k, c->B, c->Hkv, c->Lk, c->D);
    f.v = wrap4(f.ctx, v, c->B, c->Hkv, c->Lk, c->Dv);
    f.o = wrap4(f.ctx, o, c->B, c->Hq, c->Lq, c->Dv);
    attn_tensor_wrap(f.ctx, ATTN_DTYPE_F32, 3, ld, NULL, bufs[0], nl * sizeof(float),
                     (attn_tensor **)&f.p.lse);
    int bad = sdpa_once(&f);
    attn_ctx_destroy(f.ctx);
    if (bad) {
      snprintf(g_err, sizeof g_err, "%s", f.err);
      res.error = g_err;
      goto done;
    }
    once = sdpa_backward_once;
  }
  if (c->kind == K_KV) {
    /* A contiguous cache of dtype dt wrapping the Lk keys and values (k and
     * v were rounded to dt above), attended by one query row: the read-only
     * stream over the same pages (pages_gbps) is then the step's own
     * ceiling. */
    if (c->B > 64) {
      fprintf(stderr, "attn-bench: at most 64 sequences in a kv_decode row\n");
      exit(2);
    }
    int64_t lens[64];
    for (int64_t b = 0; b < c->B; b++)
      lens[b] = c->Lk;
    if (attn_kv_cache_wrap(r.ctx, r.k, r.v, lens, &r.cache)) {
      snprintf(g_err, sizeof g_err, "%s", attn_ctx_last_error(r.ctx));
      res.error = g_err;
      goto done;
    }
    once = kv_once;
  }

  if (measure(once, &r, r.err, &cnt, &res))
    goto done;
  double pairs = visible_pairs(c) * (double)c->B * (double)c->Hq;
  /* Forward: S = QK^T and PV. Backward: S, dP = dO V^T, dV, dQ, dK. */
  double per_pair = c->kind == K_BWD ? 2.0 * (3 * c->D + 2 * c->Dv) : 2.0 * (c->D + c->Dv);
  res.gflops = pairs * per_pair / res.seconds * 1e-9;
  res.sgemm = sgemm_gflops(c->threads, g_sgemm_n);
  if (c->serving) {
    int64_t cu1[2] = {0, c->Lq};
    res.products = products_gflops(c->threads, 1, cu1, c->Hq, c->D, c->Dv);
    res.tile = tile_gflops(c->threads);
  }
  if (r.o != of && attn_tensor_copy(r.ctx, r.o, of)) { /* the result as float */
    fprintf(stderr, "attn-bench: %s\n", attn_ctx_last_error(r.ctx));
    exit(2);
  }
  if (c->kind == K_BWD)
    goto done; /* no naive backward to compare with here: bench/torch_backward.py */
  if (c->kind == K_DECODE || c->kind == K_KV) {
    res.kv_gbps = (double)(nk + nv) * (double)dt_size(c->dt) / res.seconds * 1e-9;
    res.copy_gbps = memcpy_gbps(c->threads, g_copy_bytes, NULL);
    res.read_gbps = read_gbps(c->threads, g_copy_bytes);
    res.pages_gbps = read_pages_gbps(c->threads, attn_tensor_data(r.k), nk * dt_size(c->dt),
                                     attn_tensor_data(r.v), nv * dt_size(c->dt));
  }
  if (c->kind == K_KV && c->dt == ATTN_DTYPE_F32)
    g_f32_kv_seconds = res.seconds;
  else if (c->kind == K_KV)
    res.speedup_f32 = g_f32_kv_seconds / res.seconds;

  int nt = ref_threads(c->threads);
  if (nt > c->B * c->Hq)
    nt = (int)(c->B * c->Hq);
  res.naive_bytes = (double)nt * (double)c->Lq * (double)c->Lk * sizeof(float);
  if (res.naive_bytes <= g_naive_limit * 1073741824.0) {
    naive_run n = {c->B, c->Hq, c->Hkv, c->Lq, c->Lk, c->D, c->Dv, c->causal, q, k, v,
                   new_floats(no, 15), calloc((size_t)nt, sizeof(float *)), nt};
    for (int t = 0; t < nt; t++)
      n.s[t] = new_floats((size_t)(c->Lq * c->Lk), 16);
    res.naive_seconds = time_median(naive_once, &n, g_budget, 1, NULL, NULL);
    double d = 0;
    for (size_t i = 0; i < no; i++)
      d = fmax(d, fabs((double)o[i] - (double)n.out[i]));
    res.max_diff = d;
    for (int t = 0; t < nt; t++)
      free(n.s[t]);
    free(n.s);
    free(n.out);
  }
done:
  attn_ctx_destroy(r.ctx);
  for (int i = 0; i < 5; i++)
    free(bufs[i]);
  free(q);
  free(k);
  free(v);
  free(o);
  return res;
}

static result run_softmax_case(const bcase *c) {
  result res = no_result();
  int64_t rows = c->Lq, cols = c->Lk;
  size_t n = (size_t)(rows * cols);
  float *x = new_floats(n, 21), *y = new_floats(n, 22), *m = new_floats((size_t)cols, 23);
  uint8_t *keep = malloc((size_t)cols);
  if (!keep) {
    fprintf(stderr, "attn-bench: out of memory\n");
    exit(2);
  }
  for (int64_t j = 0; j < cols; j++) {
    m[j] = j % 7 == 0 ? -INFINITY : 0.5f;
    keep[j] = j % 7 != 0;
  }
  counter cnt = {0, 0};
  op_run r = {0};
  r.ctx = new_ctx(c->threads, &cnt);
  int64_t dims[2] = {rows, cols};
  attn_tensor *mt = NULL, *kt = NULL;
  attn_softmax_params_init(&r.sm);
  if (attn_tensor_wrap(r.ctx, ATTN_DTYPE_F32, 2, dims, NULL, x, n * sizeof(float), &r.x) ||
      attn_tensor_wrap(r.ctx, ATTN_DTYPE_F32, 2, dims, NULL, y, n * sizeof(float), &r.y) ||
      attn_tensor_wrap(r.ctx, ATTN_DTYPE_F32, 1, &cols, NULL, m, (size_t)cols * sizeof(float),
                       &mt) ||
      attn_tensor_wrap(r.ctx, ATTN_DTYPE_U8, 1, &cols, NULL, keep, (size_t)cols, &kt)) {
    fprintf(stderr, "attn-bench: attn_tensor_wrap: %s\n", attn_ctx_last_error(r.ctx));
    exit(2);
  }
  r.sm.mask = c->mask == MASK_ADD ? mt : NULL;
  r.sm.bool_mask = c->mask == MASK_BOOL ? kt : NULL;
  size_t base = atomic_load(&cnt.live);
  atomic_store(&cnt.peak, base);
  if (softmax_once(&r)) {
    snprintf(g_err, sizeof g_err, "%s", r.err);
    res.error = g_err;
  } else {
    res.peak_extra = atomic_load(&cnt.peak) - base;
    double best = NAN;
    res.seconds = time_median(softmax_once, &r, g_budget, 0, &res.reps, &best);
    res.gbps = 2.0 * (double)n * sizeof(float) / res.seconds * 1e-9; /* read x, write y */
    res.gbps_best = 2.0 * (double)n * sizeof(float) / best * 1e-9;
    res.copy_gbps = memcpy_gbps(c->threads, g_copy_bytes, &res.copy_best_gbps);
  }
  attn_ctx_destroy(r.ctx);
  free(x);
  free(y);
  free(m);
  free(keep);
  return res;
}

/* Length of sequence i of n in a varlen case: spread over [lo, hi] by a
 * fixed permutation, so short and long sequences alternate. */
static int64_t varlen_len(int64_t i, int64_t n, int64_t lo, int64_t hi) {
  return n < 2 ? hi : lo + (i * 37 % n) * (hi - lo) / (n - 1);
}

/* BERT-style serving: B sequences packed [T, H, D], non-causal. */
static result run_varlen_case(const bcase *c) {
  result res = no_result();
  int64_t *cu = malloc((size_t)(c->B + 1) * sizeof *cu);
  if (!cu) {
    fprintf(stderr, "attn-bench: out of memory\n");
    exit(2);
  }
  double pairs = 0;
  cu[0] = 0;
  for (int64_t i = 0; i < c->B; i++) {
    int64_t len = varlen_len(i, c->B, c->Lq, c->Lk);
    cu[i + 1] = cu[i] + len;
    pairs += (double)len * (double)len;
  }
  int64_t T = cu[c->B];
  size_t nq = (size_t)(T * c->Hq * c->D), nk = (size_t)(T * c->Hkv * c->D);
  size_t nv = (size_t)(T * c->Hkv * c->Dv), no = (size_t)(T * c->Hq * c->Dv);
  float *q = new_floats(nq, 31), *k = new_floats(nk, 32), *v = new_floats(nv, 33);
  float *o = new_floats(no, 34);
  counter cnt = {0, 0};
  op_run r = {0};
  r.ctx = new_ctx(c->threads, &cnt);
  int64_t dq[3] = {T, c->Hq, c->D}, dk[3] = {T, c->Hkv, c->D}, dv[3] = {T, c->Hkv, c->Dv},
          dout[3] = {T, c->Hq, c->Dv};
  if (attn_tensor_wrap(r.ctx, ATTN_DTYPE_F32, 3, dq, NULL, q, nq * sizeof(float), &r.q) ||
      attn_tensor_wrap(r.ctx, ATTN_DTYPE_F32, 3, dk, NULL, k, nk * sizeof(float), &r.k) ||
      attn_tensor_wrap(r.ctx, ATTN_DTYPE_F32, 3, dv, NULL, v, nv * sizeof(float), &r.v) ||
      attn_tensor_wrap(r.ctx, ATTN_DTYPE_F32, 3, dout, NULL, o, no * sizeof(float), &r.o)) {
    fprintf(stderr, "attn-bench: attn_tensor_wrap: %s\n", attn_ctx_last_error(r.ctx));
    exit(2);
  }
  attn_sdpa_params_init(&r.p);
  r.batch = (int32_t)c->B;
  r.cu = cu;
  size_t base = atomic_load(&cnt.live);
  atomic_store(&cnt.peak, base);
  if (varlen_once(&r)) {
    snprintf(g_err, sizeof g_err, "%s", r.err);
    res.error = g_err;
  } else {
    res.peak_extra = atomic_load(&cnt.peak) - base;
    res.seconds = time_median(varlen_once, &r, g_budget, 0, &res.reps, NULL);
    res.gflops = 2.0 * pairs * (double)c->Hq * (double)(c->D + c->Dv) / res.seconds * 1e-9;
    res.sgemm = sgemm_gflops(c->threads, g_sgemm_n);
    if (c->serving) {
      res.products = products_gflops(c->threads, c->B, cu, c->Hq, c->D, c->Dv);
      res.tile = tile_gflops(c->threads);
    }
  }
  attn_ctx_destroy(r.ctx);
  free(q);
  free(k);
  free(v);
  free(o);
  free(cu);
  return res;
}

/* RoPE and the sinusoidal table, in place: bytes read + written against
 * the same run's memcpy. */
static result run_posenc_case(const bcase *c) {
  result res = no_result();
  int64_t heads = c->kind == K_ROPE ? c->Hq : 1;
  size_t n = (size_t)(c->B * heads * c->Lq * c->D);
  float *x = new_floats(n, 41);
  counter cnt = {0, 0};
  op_run r = {0};
  r.ctx = new_ctx(c->threads, &cnt);
  int64_t d4[4] = {c->B, heads, c->Lq, c->D}, d3[3] = {c->B, c->Lq, c->D};
  int ndim = c->kind == K_ROPE ? 4 : 3;
  if (attn_tensor_wrap(r.ctx, ATTN_DTYPE_F32, ndim, ndim == 4 ? d4 : d3, NULL, x,
                       n * sizeof(float), &r.x)) {
    fprintf(stderr, "attn-bench: attn_tensor_wrap: %s\n", attn_ctx_last_error(r.ctx));
    exit(2);
  }
  attn_rope_params_init(&r.rope);
  attn_sinusoidal_params_init(&r.sinus);
  timed_fn fn = c->kind == K_ROPE ? rope_once : sinus_once;
  size_t base = atomic_load(&cnt.live);
  atomic_store(&cnt.peak, base);
  if (fn(&r)) {
    snprintf(g_err, sizeof g_err, "%s", r.err);
    res.error = g_err;
  } else {
    res.peak_extra = atomic_load(&cnt.peak) - base;
    double best = NAN;
    res.seconds = time_median(fn, &r, g_budget, 0, &res.reps, &best);
    res.gbps = 2.0 * (double)n * sizeof(float) / res.seconds * 1e-9;
    res.gbps_best = 2.0 * (double)n * sizeof(float) / best * 1e-9;
    res.copy_gbps = memcpy_gbps(c->threads, g_copy_bytes, &res.copy_best_gbps);
  }
  attn_ctx_destroy(r.ctx);
  free(x);
  return res;
}

/* K_MHA and K_KV_STEP: a decoder layer and a KV cache. */
typedef struct {
  attn_ctx *ctx;
  attn_mha *layer;
  attn_kv_cache *kv;
  attn_tensor *x, *y;       /* K_MHA: [B, L, E] */
  attn_tensor *q, *o, *k, *v; /* K_KV_STEP: one new token per sequence */
  const int64_t *lens;      /* K_KV_STEP: each sequence's length before the step */
  int64_t B;
  attn_sdpa_params p;
  char err[600];
} layer_run;

static int layer_fail(layer_run *r) {
  snprintf(r->err, sizeof r->err, "%s", attn_ctx_last_error(r->ctx));
  return 1;
}

/* A prompt through the layer into an emptied cache. */
static int mha_once(void *arg) {
  layer_run *r = arg;
  if (attn_kv_reset(r->ctx, r->kv, -1) ||
      attn_mha_forward(r->ctx, r->layer, r->kv, r->x, r->y, NULL))
    return layer_fail(r);
  return 0;
}

/* One decode step of the cache: append each sequence's new key and value,
 * attend its query over the whole sequence, then truncate back. */
static int kv_step_once(void *arg) {
  layer_run *r = arg;
  if (attn_kv_append(r->ctx, r->kv, r->k, r->v, NULL, NULL) ||
      attn_kv_attend(r->ctx, r->kv, r->q, r->o, NULL, &r->p))
    return layer_fail(r);
  for (int64_t b = 0; b < r->B; b++)
    if (attn_kv_truncate(r->ctx, r->kv, b, r->lens[b]))
      return layer_fail(r);
  return 0;
}

static attn_tensor *wrap_n(attn_ctx *ctx, float *data, int32_t nd, const int64_t *dims) {
  size_t n = 1;
  for (int32_t i = 0; i < nd; i++)
    n *= (size_t)dims[i];
  attn_tensor *t = NULL;
  if (attn_tensor_wrap(ctx, ATTN_DTYPE_F32, nd, dims, NULL, data, n * sizeof(float), &t)) {
    fprintf(stderr, "attn-bench: attn_tensor_wrap: %s\n", attn_ctx_last_error(ctx));
    exit(2);
  }
  return t;
}

/* K_MHA: GFLOP/s of the four projections and the causal attention against
 * the sgemm ceiling. K_KV_STEP: K/V bytes read per second against memcpy
 * (the paged blocks hold 16 tokens, vLLM's default). */
static result run_layer_case(const bcase *c) {
  result res = no_result();
  counter cnt = {0, 0};
  layer_run r = {0};
  r.ctx = new_ctx(c->threads, &cnt);
  r.B = c->B;
  int64_t E = c->Hq * c->D, hkv = c->Hkv * c->D, D = c->D;
  float *bufs[8] = {0};
  int64_t *lens = calloc((size_t)c->B, sizeof *lens);
  timed_fn once;
  attn_kv_cache_params cp;
  attn_kv_cache_params_init(&cp);
  cp.batch = c->B, cp.kv_heads = c->Hkv, cp.head_dim = D;
  if (c->kind == K_MHA) {
    attn_mha_decoder_params lp;
    attn_mha_decoder_params_init(&lp);
    lp.embed_dim = E, lp.num_heads = c->Hq, lp.num_kv_heads = c->Hkv;
    if (attn_mha_create_decoder(r.ctx, &lp, &r.layer)) {
      fprintf(stderr, "attn-bench: %s\n", attn_ctx_last_error(r.ctx));
      exit(2);
    }
    const int64_t wd[4][2] = {{E, E}, {hkv, E}, {hkv, E}, {E, E}};
    for (int32_t i = 0; i < 4; i++) { /* copied: owned weights, as a loaded checkpoint */
      bufs[i] = new_floats((size_t)(wd[i][0] * wd[i][1]), 51 + (uint64_t)i);
      for (int64_t j = 0; j < wd[i][0] * wd[i][1]; j++)
        bufs[i][j] *= 0.03f; /* about 1/sqrt(E): activations stay O(1) */
      if (attn_mha_set_weight(r.ctx, r.layer, i, wrap_n(r.ctx, bufs[i], 2, wd[i]))) {
        fprintf(stderr, "attn-bench: %s\n", attn_ctx_last_error(r.ctx));
        exit(2);
      }
    }
    int64_t xd[3] = {c->B, c->Lq, E};
    bufs[4] = new_floats((size_t)(c->B * c->Lq * E), 55);
    bufs[5] = new_floats((size_t)(c->B * c->Lq * E), 56);
    r.x = wrap_n(r.ctx, bufs[4], 3, xd);
    r.y = wrap_n(r.ctx, bufs[5], 3, xd);
    cp.capacity = c->Lq;
    once = mha_once;
  } else {
    int64_t blocks = 0;
    for (int64_t b = 0; b < c->B; b++) {
      lens[b] = varlen_len(b, c->B, 1024 < c->Lk ? 1024 : 1, c->Lk);
      blocks += lens[b] / 16 + 2;
    }
    cp.layout = ATTN_KV_PAGED, cp.block_size = 16, cp.num_blocks = blocks;
    int64_t one[4] = {c->B, c->Hkv, 1, D}, qd[4] = {c->B, c->Hq, 1, D};
    bufs[0] = new_floats((size_t)(c->B * hkv), 61), bufs[1] = new_floats((size_t)(c->B * hkv), 62);
    bufs[2] = new_floats((size_t)(c->B * c->Hq * D), 63);
    bufs[3] = new_floats((size_t)(c->B * c->Hq * D), 64);
    r.k = wrap_n(r.ctx, bufs[0], 4, one), r.v = wrap_n(r.ctx, bufs[1], 4, one);
    r.q = wrap_n(r.ctx, bufs[2], 4, qd), r.o = wrap_n(r.ctx, bufs[3], 4, qd);
    attn_sdpa_params_init(&r.p);
    r.p.causal = 1;
    r.lens = lens;
    once = kv_step_once;
  }
  if (attn_kv_cache_create(r.ctx, &cp, &r.kv)) {
    fprintf(stderr, "attn-bench: %s\n", attn_ctx_last_error(r.ctx));
    exit(2);
  }
  if (c->kind == K_KV_STEP) { /* fill the sequences, 1024 tokens per append */
    enum { CHUNK = 1024 };
    int64_t cd[4] = {c->B, c->Hkv, CHUNK, D};
    int64_t *n = calloc((size_t)c->B, sizeof *n);
    float *kc = new_floats((size_t)(c->B * hkv * CHUNK), 65);
    float *vc = new_floats((size_t)(c->B * hkv * CHUNK), 66);
    attn_tensor *tk = wrap_n(r.ctx, kc, 4, cd), *tv = wrap_n(r.ctx, vc, 4, cd);
    for (int64_t at = 0; at < c->Lk; at += CHUNK) {
      for (int64_t b = 0; b < c->B; b++)
        n[b] = lens[b] - at < 0 ? 0 : lens[b] - at > CHUNK ? CHUNK : lens[b] - at;
      if (attn_kv_append(r.ctx, r.kv, tk, tv, n, NULL)) {
        fprintf(stderr, "attn-bench: %s\n", attn_ctx_last_error(r.ctx));
        exit(2);
      }
    }
    free(kc);
    free(vc);
    free(n);
  }
  if (measure(once, &r, r.err, &cnt, &res))
    goto done;
  if (c->kind == K_MHA) {
    /* q, k, v, o projections of every token, then S = QK^T and PV. */
    double T = (double)(c->B * c->Lq);
    double proj = 2.0 * T * (double)E * (double)(2 * E + 2 * hkv);
    double att = visible_pairs(c) * (double)c->B * (double)c->Hq * 4.0 * (double)D;
    res.gflops = (proj + att) / res.seconds * 1e-9;
    res.sgemm = sgemm_gflops(c->threads, g_sgemm_n);
    res.tile = tile_gflops(c->threads);
  } else {
    double tokens = 0;
    for (int64_t b = 0; b < c->B; b++)
      tokens += (double)(lens[b] + 1);
    res.kv_gbps = tokens * 2.0 * (double)hkv * sizeof(float) / res.seconds * 1e-9;
    res.copy_gbps = memcpy_gbps(c->threads, g_copy_bytes, NULL);
    res.read_gbps = read_gbps(c->threads, g_copy_bytes);
  }
done:
  attn_ctx_destroy(r.ctx);
  for (int i = 0; i < 8; i++)
    free(bufs[i]);
  free(lens);
  return res;
}

/* ---- output ---- */

static void json_num(const char *key, double v, const char *fmt) {
  printf(", \"%s\": ", key);
  if (isfinite(v))
    printf(fmt, v);
  else
    printf("null");
}

static void json_string(const char *s) {
  putchar('"');
  for (; *s; s++) {
    if (*s == '"' || *s == '\\')
      printf("\\%c", *s);
    else if ((unsigned char)*s < 0x20)
      printf("\\u%04x", (unsigned)(unsigned char)*s);
    else
      putchar(*s);
  }
  putchar('"');
}

static const char *softmax_mask_name(int mask) {
  return mask == MASK_ADD ? "additive" : mask == MASK_BOOL ? "bool" : "none";
}

static void print_json(const bcase *c, const result *r) {
  printf("{\"op\": \"%s\"", kind_name(c->kind));
  if (c->kind == K_SOFTMAX) {
    printf(", \"rows\": %lld, \"cols\": %lld, \"mask\": \"%s\"", (long long)c->Lq,
           (long long)c->Lk, softmax_mask_name(c->mask));
  } else if (c->kind == K_ROPE || c->kind == K_SINUS) {
    printf(", \"B\": %lld, \"H\": %lld, \"L\": %lld, \"D\": %lld", (long long)c->B,
           (long long)(c->kind == K_ROPE ? c->Hq : 1), (long long)c->Lq, (long long)c->D);
  } else if (c->kind == K_VARLEN) {
    printf(", \"sequences\": %lld, \"L_min\": %lld, \"L_max\": %lld, \"H\": %lld, "
           "\"D\": %lld",
           (long long)c->B, (long long)c->Lq, (long long)c->Lk, (long long)c->Hq,
           (long long)c->D);
  } else {
    printf(", \"B\": %lld, \"Hq\": %lld, \"Hkv\": %lld, \"Lq\": %lld, \"Lk\": %lld, \"D\": %lld, "
           "\"Dv\": %lld, \"causal\": %s",
           (long long)c->B, (long long)c->Hq, (long long)c->Hkv, (long long)c->Lq,
           (long long)c->Lk, (long long)c->D, (long long)c->Dv, c->causal ? "true" : "false");
  }
  printf(", \"dtype\": \"%s\"", dt_name(c->dt));
  printf(", \"threads\": %d, \"blas_threads\": %d", c->threads, blas_threads());
  json_num("seconds", r->seconds, "%.6g");
  printf(", \"repeats\": %d", r->reps);
  if (is_stream(c->kind)) {
    json_num("gbps", r->gbps, "%.4g");
    json_num("memcpy_gbps", r->copy_gbps, "%.4g");
    json_num("ratio_memcpy", r->gbps / r->copy_gbps, "%.3f");
    json_num("gbps_best", r->gbps_best, "%.4g");
    json_num("memcpy_best_gbps", r->copy_best_gbps, "%.4g");
    json_num("ratio_best", r->gbps_best / r->copy_best_gbps, "%.3f");
  } else {
    json_num("gflops", r->gflops, "%.4g");
    json_num("sgemm_gflops", r->sgemm, "%.4g");
    json_num("ratio_sgemm", r->gflops / r->sgemm, "%.3f");
    json_num("naive_seconds", r->naive_seconds, "%.6g");
    json_num("speedup_naive", r->naive_seconds / r->seconds, "%.3f");
    json_num("naive_extra_bytes", r->naive_bytes, "%.0f");
    json_num("max_abs_diff_naive", r->max_diff, "%.3g");
  }
  if (c->serving) {
    json_num("products_gflops", r->products, "%.4g");
    json_num("ratio_products", r->gflops / r->products, "%.3f");
    json_num("tile_gflops", r->tile, "%.4g");
    json_num("ratio_tile", r->gflops / r->tile, "%.3f");
  }
  if (r->error)
    printf(", \"peak_extra_bytes\": null");
  else
    printf(", \"peak_extra_bytes\": %zu", r->peak_extra);
  if (reads_kv(c->kind)) {
    json_num("kv_gbps", r->kv_gbps, "%.4g");
    json_num("memcpy_gbps", r->copy_gbps, "%.4g");
    json_num("ratio_memcpy", r->kv_gbps / r->copy_gbps, "%.3f");
    json_num("read_gbps", r->read_gbps, "%.4g");
    json_num("ratio_read", r->kv_gbps / r->read_gbps, "%.3f");
    if (c->kind != K_KV_STEP) {
      json_num("read_pages_gbps", r->pages_gbps, "%.4g");
      json_num("ratio_read_pages", r->kv_gbps / r->pages_gbps, "%.3f");
    }
  }
  if (c->kind == K_KV && c->dt != ATTN_DTYPE_F32)
    json_num("speedup_f32", r->speedup_f32, "%.3f");
  if (c->kind == K_MHA) {
    json_num("tile_gflops", r->tile, "%.4g");
    json_num("ratio_tile", r->gflops / r->tile, "%.3f");
  }
  json_num("other_load", r->other_load, "%.2f");
  if (r->error) {
    printf(", \"error\": ");
    json_string(r->error);
  }
  printf("}\n");
}

static void print_table_header(void) {
  printf("%-13s %4s %2s %3s %3s %6s %6s %4s %4s %3s %3s | %9s %8s %7s %6s | %9s %7s | %9s %5s "
         "%s\n",
         "op", "dt", "B", "Hq", "Hkv", "Lq", "Lk", "D", "Dv", "cau", "thr", "ms", "GFLOP/s", "sgemm",
         "ratio", "naive ms", "speedup", "extra MiB", "other", "notes");
}

static void fmt_or_dash(char *buf, size_t n, const char *fmt, double v) {
  if (isfinite(v))
    snprintf(buf, n, fmt, v);
  else
    snprintf(buf, n, "-");
}

static void print_row(const bcase *c, const result *r) {
  char ms[32], gf[32], sg[32], ra[32], nms[32], sp[32], ol[32], notes[700] = "";
  fmt_or_dash(ol, sizeof ol, "%.2f", r->other_load);
  fmt_or_dash(ms, sizeof ms, "%.2f", r->seconds * 1e3);
  fmt_or_dash(gf, sizeof gf, "%.1f", r->gflops);
  fmt_or_dash(sg, sizeof sg, "%.1f", r->sgemm);
  fmt_or_dash(ra, sizeof ra, "%.3f", r->gflops / r->sgemm);
  fmt_or_dash(nms, sizeof nms, "%.2f", r->naive_seconds * 1e3);
  fmt_or_dash(sp, sizeof sp, "%.2f", r->naive_seconds / r->seconds);
  if (c->kind == K_KV && c->dt != ATTN_DTYPE_F32)
    snprintf(notes, sizeof notes,
             "K/V read %.1f GB/s, memcpy %.1f GB/s (%.0f%%), read-only %.1f GB/s (%.0f%%), "
             "on its pages %.1f GB/s (%.0f%%), %.2fx the f32 cache",
             r->kv_gbps, r->copy_gbps, 100 * r->kv_gbps / r->copy_gbps, r->read_gbps,
             100 * r->kv_gbps / r->read_gbps, r->pages_gbps, 100 * r->kv_gbps / r->pages_gbps,
             r->speedup_f32);
  else if (c->kind == K_KV_STEP)
    snprintf(notes, sizeof notes,
             "lengths spread up to Lk, K/V read %.1f GB/s, memcpy %.1f GB/s (%.0f%%), "
             "read-only %.1f GB/s (%.0f%%)",
             r->kv_gbps, r->copy_gbps, 100 * r->kv_gbps / r->copy_gbps, r->read_gbps,
             100 * r->kv_gbps / r->read_gbps);
  else if (reads_kv(c->kind))
    snprintf(notes, sizeof notes,
             "K/V read %.1f GB/s, memcpy %.1f GB/s (%.0f%%), read-only %.1f GB/s (%.0f%%), "
             "on its pages %.1f GB/s (%.0f%%)",
             r->kv_gbps, r->copy_gbps, 100 * r->kv_gbps / r->copy_gbps, r->read_gbps,
             100 * r->kv_gbps / r->read_gbps, r->pages_gbps, 100 * r->kv_gbps / r->pages_gbps);
  else if (c->kind == K_MHA && isfinite(r->tile))
    snprintf(notes, sizeof notes,
             "E = %lld: 4 projections + attention; tile kernel %.1f GFLOP/s (%.2f of it)",
             (long long)(c->Hq * c->D), r->tile, r->gflops / r->tile);
  else if (c->kind == K_MHA)
    snprintf(notes, sizeof notes, "E = %lld: 4 projections + attention",
             (long long)(c->Hq * c->D));
  else if (is_stream(c->kind))
    snprintf(notes, sizeof notes,
             "%s%.1f GB/s (read + write), memcpy %.1f GB/s (%.0f%%); fastest repeats %.1f / "
             "%.1f GB/s (%.0f%%)",
             c->mask == MASK_ADD    ? "additive mask [Lk], "
             : c->mask == MASK_BOOL ? "bool mask [Lk], "
                                    : "",
             r->gbps, r->copy_gbps, 100 * r->gbps / r->copy_gbps, r->gbps_best,
             r->copy_best_gbps, 100 * r->gbps_best / r->copy_best_gbps);
  else if (c->serving) {
    int at = 0;
    if (c->kind == K_VARLEN)
      at = snprintf(notes, sizeof notes, "%lld sequences of %lld..%lld tokens; ", (long long)c->B,
                    (long long)c->Lq, (long long)c->Lk);
    snprintf(notes + at, sizeof notes - (size_t)at,
             "same products via BLAS %.1f GFLOP/s (%.2f of it), tile kernel %.1f (%.2f)",
             r->products, r->gflops / r->products, r->tile, r->gflops / r->tile);
  }
  else if (c->kind != K_BWD && c->kind != K_KV_STEP && !isfinite(r->naive_seconds))
    snprintf(notes, sizeof notes, "naive skipped: needs %.0f MiB", r->naive_bytes / 1048576.0);
  if (r->error)
    snprintf(notes, sizeof notes, "error: %s", r->error);
  printf("%-13s %4s %2lld %3lld %3lld %6lld %6lld %4lld %4lld %3s %3d | %9s %8s %7s %6s | %9s "
         "%7s | %9.2f %5s %s\n",
         kind_name(c->kind), dt_name(c->dt), (long long)c->B, (long long)c->Hq, (long long)c->Hkv,
         (long long)c->Lq, (long long)c->Lk, (long long)c->D, (long long)c->Dv,
         c->causal ? "yes" : "no", c->threads, ms, gf, sg, ra, nms, sp,
         (double)r->peak_extra / 1048576.0, ol, notes);
}

/* ---- case lists ---- */

#define MAX_CASES 128

static int add_dt(bcase *cs, int n, kind k, int64_t B, int64_t Hq, int64_t Hkv, int64_t Lq,
                  int64_t Lk, int64_t D, int causal, int threads, int32_t dt) {
  if (n < MAX_CASES)
    cs[n++] = (bcase){k, B, Hq, Hkv, Lq, Lk, D, D, causal, threads, dt, 0, 0};
  return n;
}

static int add(bcase *cs, int n, kind k, int64_t B, int64_t Hq, int64_t Hkv, int64_t Lq,
               int64_t Lk, int64_t D, int causal, int threads) {
  return add_dt(cs, n, k, B, Hq, Hkv, Lq, Lk, D, causal, threads, ATTN_DTYPE_F32);
}

/* The half-precision rows: decode over bf16 and f16 K/V tensors (attn_sdpa)
 * and over KV caches of f32, bf16 and f16 (attn_kv_attend; the half rows
 * report their speedup over the f32 cache's), and bf16 prefill at L = 4096,
 * D = 128. */
static int add_half(bcase *cs, int n, int threads) {
  n = add_dt(cs, n, K_DECODE, 1, 32, 8, 1, 32768, 128, 0, threads, ATTN_DTYPE_BF16);
  n = add_dt(cs, n, K_DECODE, 1, 32, 8, 1, 32768, 128, 0, threads, ATTN_DTYPE_F16);
  n = add_dt(cs, n, K_KV, 1, 32, 8, 1, 32768, 128, 0, threads, ATTN_DTYPE_F32);
  n = add_dt(cs, n, K_KV, 1, 32, 8, 1, 32768, 128, 0, threads, ATTN_DTYPE_BF16);
  n = add_dt(cs, n, K_KV, 1, 32, 8, 1, 32768, 128, 0, threads, ATTN_DTYPE_F16);
  for (int causal = 0; causal < 2; causal++)
    n = add_dt(cs, n, K_SDPA, 1, 8, 8, 4096, 4096, 128, causal, threads, ATTN_DTYPE_BF16);
  return n;
}

/* Softmax at square, long-row and short-row shapes, unmasked, then with an
 * additive and a boolean key mask; RoPE on [1, 8, 4096, 128]; the
 * sinusoidal table added to [8, 4096, 128]. */
static int add_stream_cases(bcase *cs, int n, int threads) {
  static const int64_t shapes[3][2] = {{4096, 4096}, {64, 65536}, {65536, 64}};
  for (int mask = 0; mask <= MASK_BOOL; mask++)
    for (int i = 0; i < 3; i++)
      if (n < MAX_CASES)
        cs[n++] = (bcase){K_SOFTMAX, 1, 1, 1, shapes[i][0], shapes[i][1], 1, 1, 0, threads,
                          ATTN_DTYPE_F32, mask, 0};
  n = add(cs, n, K_ROPE, 1, 8, 8, 4096, 4096, 128, 0, threads);
  n = add(cs, n, K_SINUS, 8, 1, 1, 4096, 4096, 128, 0, threads);
  return n;
}

/* BERT-style serving: 64 sequences of 64..512 tokens, H = 12, D = 64, and
 * one short sequence (L = 128, 512) at the same H and D. */
static int add_serving_cases(bcase *cs, int n, int threads) {
  int first = n;
  n = add(cs, n, K_VARLEN, 64, 12, 12, 64, 512, 64, 0, threads);
  n = add(cs, n, K_SDPA, 1, 12, 12, 128, 128, 64, 0, threads);
  n = add(cs, n, K_SDPA, 1, 12, 12, 512, 512, 64, 0, threads);
  for (int i = first; i < n; i++)
    cs[i].serving = 1;
  return n;
}

/* The decoder layer's prompt forward (B = 1, L = 2048, E = 1024, 16 heads of
 * 64, causal) and a decode step of 8 sequences of 1024..32768 tokens in a
 * paged cache (32 query / 8 key-value heads, D = 128). */
static int add_layer_cases(bcase *cs, int n, int threads) {
  n = add(cs, n, K_MHA, 1, 16, 16, 2048, 2048, 64, 1, threads);
  return add(cs, n, K_KV_STEP, 8, 32, 8, 1, 32768, 128, 1, threads);
}

static int quick_cases(bcase *cs) {
  int n = 0;
  static const int64_t Ls[] = {2048, 4096}, Ds[] = {128, 64};
  for (int li = 0; li < 2; li++)
    for (int di = 0; di < 2; di++)
      for (int causal = 0; causal < 2; causal++)
        n = add(cs, n, K_SDPA, 1, 8, 8, Ls[li], Ls[li], Ds[di], causal, 2);
  n = add(cs, n, K_DECODE, 1, 32, 8, 1, 32768, 128, 0, 2);
  n = add_half(cs, n, 2);
  n = add(cs, n, K_LONG, 1, 1, 1, 32768, 32768, 128, 1, 2);
  n = add_stream_cases(cs, n, 2);
  n = add_serving_cases(cs, n, 2);
  return add_layer_cases(cs, n, 2);
}

/* The backward's rows (issue 14): B=1, H=8, L=2048/4096, D=64/128, causal or
 * not, and the long sequence for the extra memory. */
static int backward_cases(bcase *cs, int n, int threads) {
  static const int64_t Ls[] = {2048, 4096}, Ds[] = {64, 128};
  for (int li = 0; li < 2; li++)
    for (int di = 0; di < 2; di++)
      for (int causal = 0; causal < 2; causal++)
        n = add(cs, n, K_BWD, 1, 8, 8, Ls[li], Ls[li], Ds[di], causal, threads);
  return add(cs, n, K_BWD, 1, 1, 1, 32768, 32768, 128, 1, threads);
}

static int full_cases(bcase *cs) {
  int n = 0;
  static const int64_t Ls[] = {512, 2048, 4096, 8192}, Ds[] = {64, 128};
  for (int threads = 2; threads >= 1; threads--)
    for (int li = 0; li < 4; li++)
      for (int di = 0; di < 2; di++)
        for (int causal = 0; causal < 2; causal++)
          n = add(cs, n, K_SDPA, 1, 8, 8, Ls[li], Ls[li], Ds[di], causal, threads);
  for (int threads = 2; threads >= 1; threads--) {
    n = add(cs, n, K_DECODE, 1, 32, 8, 1, 32768, 128, 0, threads);
    n = add_half(cs, n, threads);
  }
  n = add(cs, n, K_LONG, 1, 1, 1, 32768, 32768, 128, 0, 2);
  n = add(cs, n, K_LONG, 1, 1, 1, 32768, 32768, 128, 1, 2);
  for (int threads = 2; threads >= 1; threads--) {
    n = add_stream_cases(cs, n, threads);
    n = add_serving_cases(cs, n, threads);
    n = add_layer_cases(cs, n, threads);
  }
  return backward_cases(cs, n, 2);
}

/* The half-precision rows next to their F32 counterparts (--half). */
static int half_cases(bcase *cs) {
  int n = 0;
  n = add(cs, n, K_DECODE, 1, 32, 8, 1, 32768, 128, 0, 2);
  for (int causal = 0; causal < 2; causal++)
    n = add(cs, n, K_SDPA, 1, 8, 8, 4096, 4096, 128, causal, 2);
  return add_half(cs, n, 2);
}

static int smoke_cases(bcase *cs) {
  int n = 0;
  n = add(cs, n, K_SDPA, 1, 4, 2, 64, 64, 16, 1, 2);
  n = add(cs, n, K_DECODE, 1, 4, 2, 1, 300, 16, 0, 2);
  n = add_dt(cs, n, K_DECODE, 1, 4, 2, 1, 300, 16, 0, 2, ATTN_DTYPE_BF16);
  n = add_dt(cs, n, K_KV, 1, 4, 2, 1, 300, 16, 0, 2, ATTN_DTYPE_F32);
  n = add_dt(cs, n, K_KV, 1, 4, 2, 1, 300, 16, 0, 2, ATTN_DTYPE_F16);
  n = add_dt(cs, n, K_SDPA, 1, 4, 2, 64, 64, 16, 1, 2, ATTN_DTYPE_F16);
  n = add(cs, n, K_SOFTMAX, 1, 1, 1, 8, 33, 1, 0, 2);
  n = add(cs, n, K_VARLEN, 3, 2, 1, 5, 40, 16, 0, 2);
  n = add(cs, n, K_ROPE, 1, 2, 2, 33, 33, 16, 0, 2);
  n = add(cs, n, K_SINUS, 2, 1, 1, 33, 33, 16, 0, 2);
  n = add(cs, n, K_BWD, 1, 4, 2, 64, 64, 16, 1, 2);
  n = add(cs, n, K_MHA, 1, 4, 2, 64, 64, 16, 1, 2);
  n = add(cs, n, K_KV_STEP, 3, 4, 2, 1, 300, 16, 1, 2);
  return n;
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: attn-bench [--json] [--quick | --half | --smoke | --backward] [--wait-quiet]\n"
          "                  [--only OP]\n"
          "  (default)  the full run (several minutes on 2 cores), as a table\n"
          "  --json     one JSON object per line per case\n"
          "  --quick    the cases behind the performance targets, under a minute\n"
          "  --half     the f16/bf16 rows (decode over half K/V and half KV caches, bf16\n"
          "             prefill) next to their f32 counterparts\n"
          "  --smoke    one tiny case per op, checked against the naive result\n"
          "  --backward only attn_sdpa_backward's rows (also part of the full run)\n"
          "  --only OP  only the chosen list's rows of op OP (the op column: sdpa_decode,\n"
          "             mha_forward, paged_decode, ...)\n"
          "  --wait-quiet  before each case, wait (up to a minute) until other processes\n"
          "             use < 0.1 core, and run a case again (twice at most) when they\n"
          "             took > 0.15 core during it; every case reports other_load\n"
          "OPENBLAS_NUM_THREADS=1 helps the ceilings and the naive method (and SDPA only\n"
          "when its products go to BLAS: see the warning).\n"
          "A threaded OpenBLAS's idle threads spin for ~0.1 s after it loads and after\n"
          "each BLAS call: every measurement starts 0.3 s after the bench last used BLAS\n"
          "(that wait is not counted in other_load).\n"
          "Streaming rows (softmax, rope, sinusoidal) also give the fastest repeat's GB/s\n"
          "and memcpy's (JSON gbps_best, memcpy_best_gbps, ratio_best): a job that takes\n"
          "a core for part of a case moves their ratio less than the medians'.\n");
}

int main(int argc, char **argv) {
  int json = 0, quick = 0, smoke = 0, quiet = 0, half = 0, backward = 0;
  const char *only = NULL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--json"))
      json = 1;
    else if (!strcmp(argv[i], "--quick"))
      quick = 1;
    else if (!strcmp(argv[i], "--smoke"))
      smoke = 1;
    else if (!strcmp(argv[i], "--half"))
      half = 1;
    else if (!strcmp(argv[i], "--backward"))
      backward = 1;
    else if (!strcmp(argv[i], "--wait-quiet"))
      quiet = 1;
    else if (!strcmp(argv[i], "--only") && i + 1 < argc)
      only = argv[++i];
    else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      usage(stdout);
      return 0;
    } else {
      fprintf(stderr, "attn-bench: unknown option '%s'\n", argv[i]);
      usage(stderr);
      return 2;
    }
  }
  setvbuf(stdout, NULL, _IOLBF, 0); /* each result as soon as it exists */
  g_blas_at = now(); /* OpenBLAS started its threads when it loaded */

  bcase cs[MAX_CASES];
  int n;
  if (smoke) {
    n = smoke_cases(cs);
    g_budget = 0.001;
    g_sgemm_n = 128;
    g_copy_bytes = (size_t)1 << 20;
    g_tile_reps = 1;
  } else if (backward) {
    n = backward_cases(cs, 0, 2);
    g_budget = 0.6;
  } else if (quick || half) {
    n = half ? half_cases(cs) : quick_cases(cs);
    g_budget = 0.6;
  } else {
    n = full_cases(cs);
  }

  if (only) {
    int kept = 0;
    for (int i = 0; i < n; i++)
      if (!strcmp(kind_name(cs[i].kind), only))
        cs[kept++] = cs[i];
    n = kept;
  }

  char blas[256];
  attn_blas_info(blas, sizeof blas);
  /* Only when SDPA's products go to BLAS (a CPU without AVX2, or
   * ATTN_KERNELS=sse2); libattn's own tile kernels call no BLAS. */
  if (blas_threads() > 1 && strstr(blas, "SDPA products: cblas_sgemm"))
    fprintf(stderr,
            "attn-bench: warning: OpenBLAS runs %d threads per call; libattn then runs SDPA on "
            "one worker (concurrent calls would queue). For the fast configuration set "
            "OPENBLAS_NUM_THREADS=1 (bench/BLAS-THREADING.md).\n",
            blas_threads());
  /* OpenBLAS 0.3.21 falls back to SSE3 kernels on a CPU it does not know:
   * the sgemm ceiling is then not this machine's (libattn's kernels are
   * unaffected). */
  if (strstr(blas, "core Prescott") && strstr(attn_cpu_info(), "avx2"))
    fprintf(stderr, "attn-bench: note: OpenBLAS does not know this CPU and runs its Prescott "
                    "(SSE3) kernels, so the sgemm ceiling is low; OPENBLAS_CORETYPE=Haswell or "
                    "SkylakeX gives the CPU's rate (libattn's own tile kernels are unaffected).\n");
  if (json) {
    printf("{\"op\": \"info\", \"libattn\": \"%s\", \"cpu\": ", attn_version_string());
    json_string(attn_cpu_info());
    printf(", \"blas\": ");
    json_string(blas);
    printf("}\n");
  } else {
    printf("libattn %s | %s | %s\n", attn_version_string(), attn_cpu_info(), blas);
    printf("ms: median of repeats (calls under 20 ms timed in batches of about 20 ms); "
           "GFLOP/s counts 2*(D+Dv) per visible query-key pair "
           "(sdpa_backward: 2*(3D+2Dv), five products); sgemm: "
           "%d^3 cblas_sgemm on the same threads; extra: peak bytes libattn allocated; other: "
           "cores used by other processes meanwhile (noise)\n",
           g_sgemm_n);
    print_table_header();
  }

  int failed = 0;
  for (int i = 0; i < n; i++) {
    result r = {0};
    /* On a shared machine, a case that other jobs disturbed (more than 0.15
     * core on average) is run again, up to twice; the quietest run counts. */
    for (int attempt = 0; attempt < (quiet ? 3 : 1); attempt++) {
      if (quiet)
        wait_quiet(60);
      load_mark m = load_now();
      result a = cs[i].kind == K_SOFTMAX                         ? run_softmax_case(&cs[i])
                 : cs[i].kind == K_VARLEN                        ? run_varlen_case(&cs[i])
                 : cs[i].kind == K_MHA || cs[i].kind == K_KV_STEP ? run_layer_case(&cs[i])
                 : is_stream(cs[i].kind)   ? run_posenc_case(&cs[i])
                                           : run_sdpa_case(&cs[i]);
      a.other_load = other_load_since(m);
      if (attempt == 0 || a.other_load < r.other_load)
        r = a;
      if (!(r.other_load > 0.15))
        break;
    }
    if (json)
      print_json(&cs[i], &r);
    else
      print_row(&cs[i], &r);
    /* The smoke run checks that the op works, not how fast. */
    /* Outputs in f16/bf16 carry their rounding (|o| <= 1: half an ULP is
     * 2^-11 / 2^-8 at most). */
    double tol = 1e-4 + (cs[i].kind == K_DECODE || cs[i].kind == K_KV ? 0
                         : cs[i].dt == ATTN_DTYPE_F16 ? 1e-3
                         : cs[i].dt == ATTN_DTYPE_BF16 ? 8e-3 : 0);
    if (smoke && (r.error || (cs[i].kind != K_VARLEN && cs[i].kind != K_BWD &&
                              cs[i].kind != K_MHA && cs[i].kind != K_KV_STEP &&
                              !is_stream(cs[i].kind) &&
                              !(r.max_diff <= tol))))
      failed = 1;
  }
  return failed;
}
