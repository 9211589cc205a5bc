/* blas_threads: how the linked OpenBLAS behaves when cblas_sgemm is called
 * from several threads at once, and how fast it is on attention tiles.
 * Standalone (no libattn): it answers which OpenBLAS variant a
 * multi-threaded libattn context wants. Run it under each variant with
 * bench/blas_threads.sh; findings are in bench/BLAS-THREADING.md.
 *
 *   blas_threads [info] [big] [concurrent] [tiles] [--reps N] [--time S]
 *
 * Threads inside BLAS come from OPENBLAS_NUM_THREADS (this program never
 * calls openblas_set_num_threads, as libattn must not either). */
#define _POSIX_C_SOURCE 200809L

#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static int g_reps = 5;
static double g_time = 0.15; /* seconds per timed sample */

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* CPU seconds of the whole process (every BLAS thread included): compared
 * with wall time it shows how many cores a call really kept busy, spinning
 * included. */
static double cpu_seconds(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + 1e-6 * (double)ru.ru_utime.tv_usec +
         (double)ru.ru_stime.tv_sec + 1e-6 * (double)ru.ru_stime.tv_usec;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static float *new_floats(size_t n, unsigned seed) {
  size_t bytes = (n * sizeof(float) + 63) & ~(size_t)63;
  float *p = aligned_alloc(64, bytes ? bytes : 64);
  if (!p) {
    fprintf(stderr, "blas_threads: out of memory (%zu bytes)\n", bytes);
    exit(1);
  }
  unsigned s = seed * 2654435761u + 1;
  for (size_t i = 0; i < n; i++) {
    s = s * 1664525u + 1013904223u;
    p[i] = (float)((s >> 8) & 0xffff) / 65536.0f - 0.5f;
  }
  return p;
}

/* ---- info ---- */

static void cmd_info(void) {
  const char *env = getenv("OPENBLAS_NUM_THREADS");
  int par = openblas_get_parallel();
  printf("# OpenBLAS %s | core %s | %s | openblas_get_num_threads() = %d | "
         "OPENBLAS_NUM_THREADS=%s\n",
         openblas_get_config(), openblas_get_corename(),
         par == 0 ? "serial build" : par == 1 ? "pthreads build" : "OpenMP build",
         openblas_get_num_threads(), env ? env : "(unset)");
}

/* ---- big: the machine's sgemm ceiling ---- */

static void cmd_big(void) {
  const int n = 2048;
  float *a = new_floats((size_t)n * n, 1), *b = new_floats((size_t)n * n, 2);
  float *c = new_floats((size_t)n * n, 3);
  double flops = 2.0 * n * n * (double)n, t[64], r[64];
  int reps = g_reps < 64 ? g_reps : 64;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c,
              n); /* warm-up: page faults, thread start */
  for (int i = 0; i < reps; i++) {
    double c0 = cpu_seconds(), t0 = now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f,
                c, n);
    t[i] = now() - t0;
    r[i] = (cpu_seconds() - c0) / t[i];
  }
  double tm = median(t, reps), rm = median(r, reps);
  printf("big  sgemm 2048^3: %.1f GFLOP/s (median of %d, %.3f s), cpu/wall %.2f\n",
         flops / tm * 1e-9, reps, tm, rm);
  free(a);
  free(b);
  free(c);
}

/* ---- concurrent: callers x tile shapes ---- */

typedef struct {
  const char *name;
  int m, n, k;
  int trans_b; /* 1: C = A B^T (S = Q K^T); 0: C += A B (O += P V) */
} shape;

static const shape g_shapes[] = {
    {"S   64x64  k64 (QK^T)", 64, 64, 64, 1},
    {"S  128x128 k128 (QK^T)", 128, 128, 128, 1},
    {"S   64x128 k128 (QK^T)", 64, 128, 128, 1},
    {"O  128x128 k128 (PV)", 128, 128, 128, 0},
    {"O  128x64  k128 (PV)", 128, 64, 128, 0},
    {"S  256x256 k128 (QK^T)", 256, 256, 128, 1},
    {"O  256x128 k256 (PV)", 256, 128, 256, 0},
};

static double shape_flops(const shape *s) { return 2.0 * s->m * (double)s->n * s->k; }

static void run_shape(const shape *s, const float *a, const float *b, float *c) {
  if (s->trans_b)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s->m, s->n, s->k, 1.0f, a, s->k, b,
                s->k, 0.0f, c, s->n);
  else
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, s->m, s->n, s->k, 1.0f, a, s->k, b,
                s->n, 1.0f, c, s->n);
}

/* Two persistent caller threads, as a libattn context's workers are: each
 * sample wakes them through a barrier, and `active` of them (1 or 2) make
 * `calls` calls on their own buffers. */
typedef struct race race;
typedef struct {
  race *r;
  int id;
  float *a, *b, *c, *want; /* want: the product computed alone, beforehand */
  double t0, t1;           /* this caller's own start and end */
  double max_err;
} caller;

struct race {
  const shape *s;
  long calls;
  int active, verify, quit;
  pthread_barrier_t bar;
  caller cl[2];
};

static void product_from_zero(const shape *s, const float *a, const float *b, float *c) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, s->trans_b ? CblasTrans : CblasNoTrans, s->m, s->n,
              s->k, 1.0f, a, s->k, b, s->trans_b ? s->k : s->n, 0.0f, c, s->n);
}

static void *caller_main(void *arg) {
  caller *cl = arg;
  race *r = cl->r;
  for (;;) {
    pthread_barrier_wait(&r->bar);
    if (r->quit)
      return NULL;
    const shape *s = r->s;
    if (cl->id < r->active && r->verify) {
      /* Correctness under concurrency: every product from zero made while
       * the other caller runs must equal the one computed alone. */
      size_t n = (size_t)s->m * s->n;
      for (long rep = 0; rep < r->calls; rep++) {
        product_from_zero(s, cl->a, cl->b, cl->c);
        for (size_t i = 0; i < n; i++)
          cl->max_err = fmax(cl->max_err, fabs((double)cl->c[i] - cl->want[i]));
      }
    } else if (cl->id < r->active) {
      cl->t0 = now();
      for (long i = 0; i < r->calls; i++)
        run_shape(s, cl->a, cl->b, cl->c);
      cl->t1 = now();
    }
    pthread_barrier_wait(&r->bar);
  }
}

/* One sample: aggregate GFLOP/s of `active` callers and the process's
 * cpu/wall ratio over it. */
static double race_sample(race *r, int active, long calls, double *cpu_ratio) {
  r->active = active;
  r->calls = calls;
  r->verify = 0;
  double c0 = cpu_seconds();
  pthread_barrier_wait(&r->bar);
  pthread_barrier_wait(&r->bar);
  double cpu = cpu_seconds() - c0, t0 = r->cl[0].t0, t1 = r->cl[0].t1;
  for (int t = 1; t < active; t++) {
    t0 = fmin(t0, r->cl[t].t0);
    t1 = fmax(t1, r->cl[t].t1);
  }
  double wall = t1 - t0; /* first start to last end, whatever main was doing */
  *cpu_ratio = cpu / wall;
  return (double)active * (double)calls * shape_flops(r->s) / wall * 1e-9;
}

static void cmd_concurrent(void) {
  printf("conc %-24s %10s %6s %10s %6s %8s %8s\n", "shape", "1 caller", "cpu/w", "2 callers",
         "cpu/w", "2c/1c", "max err");
  race r;
  memset(&r, 0, sizeof r);
  pthread_barrier_init(&r.bar, NULL, 3);
  pthread_t th[2];
  for (int t = 0; t < 2; t++) {
    r.cl[t].r = &r;
    r.cl[t].id = t;
    pthread_create(&th[t], NULL, caller_main, &r.cl[t]);
  }
  for (size_t i = 0; i < sizeof g_shapes / sizeof g_shapes[0]; i++) {
    const shape *s = &g_shapes[i];
    r.s = s;
    size_t na = (size_t)s->m * s->k, nb = (size_t)s->n * s->k, nc = (size_t)s->m * s->n;
    for (int t = 0; t < 2; t++) {
      caller *cl = &r.cl[t];
      cl->a = new_floats(na, 10 + (unsigned)t);
      cl->b = new_floats(nb, 20 + (unsigned)t);
      cl->c = new_floats(nc, 30);
      memset(cl->c, 0, nc * sizeof(float));
      cl->want = new_floats(nc, 40);
      product_from_zero(s, cl->a, cl->b, cl->want);
      cl->max_err = 0;
    }
    /* Warm both callers up, then size samples to about g_time seconds. */
    double cr;
    race_sample(&r, 2, 20, &cr);
    double g = race_sample(&r, 1, 200, &cr);
    long calls = (long)(g_time * g * 1e9 / shape_flops(s));
    if (calls < 20)
      calls = 20;
    double g1[64], g2[64], r1[64], r2[64];
    int reps = g_reps < 64 ? g_reps : 64;
    for (int k = 0; k < reps; k++) {
      g1[k] = race_sample(&r, 1, calls, &r1[k]);
      g2[k] = race_sample(&r, 2, calls, &r2[k]);
    }
    r.active = 2;
    r.calls = 20;
    r.verify = 1;
    pthread_barrier_wait(&r.bar);
    pthread_barrier_wait(&r.bar);
    double m1 = median(g1, reps), m2 = median(g2, reps);
    printf("conc %-24s %10.1f %6.2f %10.1f %6.2f %8.2f %8.1e\n", s->name, m1, median(r1, reps),
           m2, median(r2, reps), m2 / m1, fmax(r.cl[0].max_err, r.cl[1].max_err));
    for (int t = 0; t < 2; t++) {
      free(r.cl[t].a);
      free(r.cl[t].b);
      free(r.cl[t].c);
      free(r.cl[t].want);
    }
  }
  r.quit = 1;
  pthread_barrier_wait(&r.bar);
  for (int t = 0; t < 2; t++)
    pthread_join(th[t], NULL);
  pthread_barrier_destroy(&r.bar);
}

/* ---- tiles: single-caller GFLOP/s of the two attention products ---- */

/* One pass over a 4096-key K/V (2 MiB at D = 128: out of L2, in L3), tile
 * by tile, as a flash-attention worker streams keys; Q, S, P and O stay hot. */
static void tile_rates(int bq, int bk, int d, double *gs, double *go) {
  const int lk = 4096;
  float *q = new_floats((size_t)bq * d, 21), *k = new_floats((size_t)lk * d, 22);
  float *v = new_floats((size_t)lk * d, 23), *s = new_floats((size_t)bq * bk, 24);
  float *o = new_floats((size_t)bq * d, 25);
  int tiles = lk / bk;
  double fl = 2.0 * bq * (double)bk * d * tiles;
  double ts[64], to[64];
  int reps = g_reps < 64 ? g_reps : 64;
  /* passes per sample so a sample lasts roughly g_time / 4 */
  int passes = (int)(g_time / 4 * 30e9 / fl);
  if (passes < 1)
    passes = 1;
  for (int r = -1; r < reps; r++) { /* r = -1 warms up */
    double t0 = now();
    for (int p = 0; p < passes; p++)
      for (int t = 0; t < tiles; t++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, bq, bk, d, 1.0f, q, d,
                    k + (size_t)t * bk * d, d, 0.0f, s, bk);
    double t1 = now();
    for (int p = 0; p < passes; p++)
      for (int t = 0; t < tiles; t++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, bq, d, bk, 1.0f, s, bk,
                    v + (size_t)t * bk * d, d, 1.0f, o, d);
    double t2 = now();
    if (r >= 0) {
      ts[r] = t1 - t0;
      to[r] = t2 - t1;
    }
  }
  *gs = fl * passes / median(ts, reps) * 1e-9;
  *go = fl * passes / median(to, reps) * 1e-9;
  free(q);
  free(k);
  free(v);
  free(s);
  free(o);
}

static void cmd_tiles(void) {
  static const int bqs[] = {32, 64, 128, 256}, bks[] = {64, 128, 256, 512}, ds[] = {64, 128};
  printf("| D | Bq | Bk | S=QK^T GFLOP/s | O+=PV GFLOP/s | both GFLOP/s | S tile KiB |\n");
  printf("|---:|---:|---:|---:|---:|---:|---:|\n");
  for (int di = 0; di < 2; di++)
    for (int qi = 0; qi < 4; qi++)
      for (int ki = 0; ki < 4; ki++) {
        double gs, go;
        tile_rates(bqs[qi], bks[ki], ds[di], &gs, &go);
        /* both products do the same flops, so the pair's rate is the
         * harmonic mean */
        printf("| %d | %d | %d | %.1f | %.1f | %.1f | %d |\n", ds[di], bqs[qi], bks[ki], gs, go,
               2.0 / (1.0 / gs + 1.0 / go), bqs[qi] * bks[ki] * 4 / 1024);
        fflush(stdout);
      }
}

int main(int argc, char **argv) {
  int did = 0;
  setvbuf(stdout, NULL, _IOLBF, 0); /* progress shows while piped */
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--reps") && i + 1 < argc) {
      g_reps = atoi(argv[++i]);
      if (g_reps < 1)
        g_reps = 1;
    } else if (!strcmp(argv[i], "--time") && i + 1 < argc) {
      g_time = atof(argv[++i]);
    }
  }
  cmd_info();
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--reps") || !strcmp(argv[i], "--time")) {
      i++;
    } else if (!strcmp(argv[i], "info")) {
      did = 1;
    } else if (!strcmp(argv[i], "big")) {
      cmd_big();
      did = 1;
    } else if (!strcmp(argv[i], "concurrent")) {
      cmd_concurrent();
      did = 1;
    } else if (!strcmp(argv[i], "tiles")) {
      cmd_tiles();
      did = 1;
    } else {
      fprintf(stderr, "usage: blas_threads [info] [big] [concurrent] [tiles] [--reps N] "
                      "[--time S]\n");
      return 2;
    }
    fflush(stdout);
  }
  if (!did) {
    cmd_big();
    cmd_concurrent();
  }
  return 0;
}
