/* dec-kernels: SDPA's decode products (simd/decode_body.h) alone, on one
 * thread, for tuning them: a decode step's 4 query rows of one kv head
 * against K and V rows of D = 128 in f32, f16 and bf16, in ns per key,
 *   - in L2: 256 keys, again and again (the compute's cost);
 *   - from memory: Q.K^T alone, P.V alone and the two per tile as
 *     attn__sdpa_attend takes them, over 2^18 keys (128 MiB of f32 rows),
 *     next to a plain read of the same bytes by the same thread.
 * The ratios to the plain read, taken per round, are what to compare between
 * builds: this machine's memory speed moves by up to 2x within minutes.
 *
 *   dec-kernels [rounds]        (default 5; the median round is printed)
 *
 * The kernel set is the one libattn picked (attn_blas_info). Not a test:
 * nothing here is checked. */
#define _POSIX_C_SOURCE 200809L
#include "kernel_set.h" /* the kernels, linked from attn_simd's objects */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* TILE: keys per tile as DECODE_TILE_KEYS in src/sdpa.h. */
enum { ROWS = 4, D = 128, L2_KEYS = 256, TILE = 1024, L2_REPS = 2000 };
#define KEYS ((int64_t)1 << 18)

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* A plain read of `bytes` from p; the sum keeps it from being dropped. */
static double read_all(const float *p, size_t bytes) {
  float s[16] = {0};
  for (size_t i = 0; i < bytes / sizeof(float); i += 16)
    for (int l = 0; l < 16; l++)
      s[l] += p[i + (size_t)l];
  double t = 0;
  for (int l = 0; l < 16; l++)
    t += s[l];
  return t;
}

int main(int argc, char **argv) {
  int rounds = argc > 1 ? atoi(argv[1]) : 5;
  const attn_kernels *kn = bench_kernel_set();
  if (!kn || !kn->dec_qk) {
    fprintf(stderr, "dec-kernels: libattn has no decode products on this CPU or build\n");
    return 2;
  }
  if (rounds < 1 || rounds > 99)
    rounds = 5;
  size_t big = (size_t)KEYS * D * sizeof(float);
  /* Aligned as libattn's workspace is (a 64-byte vector split across two
   * lines costs two loads); the rows on 2 MiB, for transparent huge pages. */
  float *q = aligned_alloc(64, ROWS * D * sizeof(float));
  float *s = aligned_alloc(64, ROWS * TILE * sizeof(float));
  float *o = aligned_alloc(64, ROWS * D * sizeof(float));
  unsigned char *kv = aligned_alloc((size_t)2 << 20, big);
  if (!q || !s || !o || !kv) {
    fprintf(stderr, "dec-kernels: out of memory\n");
    return 2;
  }
  for (int i = 0; i < ROWS * D; i++)
    q[i] = (float)(i % 13) * 0.01f, o[i] = 0;
  for (int i = 0; i < ROWS * TILE; i++)
    s[i] = 1.0f / TILE;
  for (size_t i = 0; i < big / 2; i++) /* 1.0 .. 1.75 as f16; small normal numbers as bf16 */
    ((uint16_t *)kv)[i] = (uint16_t)(0x3c00 + i % 7);
  printf("dec-kernels: %s set, 1 thread, %d query rows, D = %d, median of %d rounds\n", kn->name,
         ROWS, D, rounds);
  printf("type   L2: qk  pv  (ns/key) | memory: qk  pv  qk+pv tiles  read (ns/key)  "
         "qk/read pv/read tiles/(2 read)\n");
  static const char *names[] = {"f32", "f16", "bf16"};
  double sink = 0;
  for (int e = ATTN_ELEM_F32; e <= ATTN_ELEM_BF16; e++) {
    size_t row = D * (e == ATTN_ELEM_F32 ? 4 : 2), half = (size_t)KEYS / 2 * row;
    double m[7][99];
    for (int r = 0; r < rounds; r++) {
      double t = now();
      for (int i = 0; i < L2_REPS; i++)
        kn->dec_qk(ROWS, L2_KEYS, D, 0.088f, q, D, kv, e, D, NULL, s, TILE);
      m[0][r] = (now() - t) / (L2_REPS * (double)L2_KEYS) * 1e9;
      t = now();
      for (int i = 0; i < L2_REPS; i++)
        kn->dec_pv(ROWS, L2_KEYS, D, s, TILE, kv, e, D, NULL, o, D, false);
      m[1][r] = (now() - t) / (L2_REPS * (double)L2_KEYS) * 1e9;
      /* From memory: K in the first half of the buffer, V in the second. */
      const unsigned char *k = kv, *v = kv + half;
      t = now();
      for (int64_t j = 0; j < KEYS / 2; j += TILE)
        kn->dec_qk(ROWS, TILE, D, 0.088f, q, D, k + (size_t)j * row, e, D,
                   j + TILE < KEYS / 2 ? k + (size_t)(j + TILE) * row : NULL, s, TILE);
      m[2][r] = (now() - t) / (KEYS / 2) * 1e9;
      t = now();
      for (int64_t j = 0; j < KEYS / 2; j += TILE)
        kn->dec_pv(ROWS, TILE, D, s, TILE, v + (size_t)j * row, e, D,
                   j + TILE < KEYS / 2 ? v + (size_t)(j + TILE) * row : NULL, o, D, false);
      m[3][r] = (now() - t) / (KEYS / 2) * 1e9;
      t = now();
      for (int64_t j = 0; j < KEYS / 2; j += TILE) { /* K's tile, then V's, as in a decode */
        kn->dec_qk(ROWS, TILE, D, 0.088f, q, D, k + (size_t)j * row, e, D, v + (size_t)j * row,
                   s, TILE);
        kn->dec_pv(ROWS, TILE, D, s, TILE, v + (size_t)j * row, e, D,
                   j + TILE < KEYS / 2 ? k + (size_t)(j + TILE) * row : NULL, o, D, false);
      }
      m[4][r] = (now() - t) / (KEYS / 2) * 1e9;
      t = now();
      sink += read_all((const float *)k, half);
      m[5][r] = (now() - t) / (KEYS / 2) * 1e9;
      m[6][r] = m[4][r] / (2 * m[5][r]); /* per round: the memory's speed cancels */
    }
    double med[7], q_read[99], p_read[99];
    for (int r = 0; r < rounds; r++)
      q_read[r] = m[2][r] / m[5][r], p_read[r] = m[3][r] / m[5][r];
    qsort(q_read, (size_t)rounds, sizeof(double), by_value);
    qsort(p_read, (size_t)rounds, sizeof(double), by_value);
    for (int i = 0; i < 7; i++) {
      qsort(m[i], (size_t)rounds, sizeof(double), by_value);
      med[i] = m[i][rounds / 2];
    }
    printf("%-5s  %6.2f %6.2f          | %6.2f %6.2f %6.2f       %6.2f         %.2f    %.2f    %.2f\n",
           names[e], med[0], med[1], med[2], med[3], med[4], med[5], q_read[rounds / 2],
           p_read[rounds / 2], med[6]);
  }
  free(q);
  free(s);
  free(o);
  free(kv);
  return sink == 12345.0; /* never: keeps the reads */
}
