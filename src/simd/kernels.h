/* Row kernels chosen once at run time from the CPU's features (cpu.c).
 * They know nothing of handles: plain pointers and lengths, valid input.
 * Every kernel set computes exp the same way (src/simd/rows_body.h), so the
 * sets differ only in vector width and in the use of FMA. The dtype
 * conversions give the same bits in every set (the rules: src/simd/half.h). */
#ifndef ATTN_KERNELS_H
#define ATTN_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Element types the decode products read K and V rows in. */
enum { ATTN_ELEM_F32, ATTN_ELEM_F16, ATTN_ELEM_BF16 };

/* A block of softmax rows for attn_kernels.softmax_rows: row r reads
 * x + r * ldx (and the mask rows m + r * ldm, b + r * ldb, when not NULL;
 * a stride of 0 gives every row the same mask row; the masks' columns are
 * contiguous) and writes y + r * ldy. */
typedef struct {
  const float *x;
  float *y;
  const float *m;   /* additive mask, or NULL */
  const uint8_t *b; /* keep-mask (0 hides), or NULL */
  int64_t ldx, ldy, ldm, ldb;
  int64_t n;        /* row length, >= 1 */
  float scale;      /* 1 = none */
  int log;          /* log-softmax */
  float *w;         /* 2 rows of n floats of scratch: y is then written by
                       scale_stream (softmax), each row (or batch of rows)
                       during the next one's exponentials, and short rows
                       (both) by non-temporal stores; NULL: computed in y's
                       row */
  const float *x_end; /* rows lie end to end below x_end: each row's x a page
                         further on (within x_end) is fetched meanwhile; or NULL:
                         the row a batch further on is, and after the last row
                         `next` */
  const float *next;  /* the x row after the block, or NULL */
} attn_rows_job;

typedef struct attn_kernels {
  const char *name; /* "sse2", "avx2", "avx512" ("scalar" off x86) */
  /* Largest of x[0..n), n >= 1; NaN if any x is NaN. */
  float (*row_max)(const float *x, int64_t n);
  /* y[i] = exp(x[i] - shift) for i < n (y may be x); returns the sum of the
   * y[i]. x[i] = -inf gives exactly 0; NaN propagates. shift is finite.
   * ahead: NULL, or n floats (the next row) brought into L2 meanwhile. */
  float (*exp_shift_sum)(const float *x, float *y, int64_t n, float shift, const float *ahead);
  /* The sum exp_shift_sum would return, storing nothing (log-softmax keeps
   * its logits). Same shift rules. */
  float (*sum_exp_shift)(const float *x, int64_t n, float shift);
  /* y[i] = x[i] * s (y may be x). */
  void (*scale)(const float *x, float *y, int64_t n, float s);
  /* The same values as scale, with y written by non-temporal stores (past
   * the caches) where it is aligned; x and y do not overlap. For a result
   * too large to be read back from the cache. */
  void (*scale_stream)(const float *x, float *y, int64_t n, float s);
  /* Orders every scale_stream store before later stores: call before the
   * results are handed over (to another thread, or back to the caller). */
  void (*stream_fence)(void);
  /* y[i] = x[i] * s + m[i], rounded after the product and after the sum
   * (never fused, so every set gives the same z). y may be x. */
  void (*scale_add)(const float *x, const float *m, float *y, int64_t n, float s);
  /* y[i] = (x[i] - a) - b, in that order (log-softmax: z - max - log sum).
   * y may be x. */
  void (*sub2)(const float *x, float *y, int64_t n, float a, float b);
  /* n elements between f32 and f16 / bf16 (half.h: nearest even, IEEE
   * overflow and subnormals, NaN made quiet). Source and destination do not
   * overlap. */
  void (*f32_to_f16)(const float *x, uint16_t *y, int64_t n);
  void (*f16_to_f32)(const uint16_t *x, float *y, int64_t n);
  void (*f32_to_bf16)(const float *x, uint16_t *y, int64_t n);
  void (*bf16_to_f32)(const uint16_t *x, float *y, int64_t n);
  /* RoPE: half-split pairs (a[i], b[i]) rotated by (c[i], s[i]) = (cos,
   * sin): a' = a c - b s, b' = a s + b c, each product and sum in double
   * (never fused), rounded once to float; a and b do not overlap. */
  void (*rotate_split)(float *a, float *b, const double *c, const double *s, int64_t n);
  /* Interleaved pairs (x[2i], x[2i+1]), i < n, the same rotation with the
   * tables per float: cc[2i] = cc[2i+1] = cos, ss[2i] = -sin, ss[2i+1] =
   * sin. Same bits as rotate_split on the same pair. */
  void (*rotate_pairs)(float *x, const double *cc, const double *ss, int64_t n);
  /* SDPA's tile products (simd/gemm_body.h), row-major, any leading
   * dimensions; NULL in the sets that leave them to BLAS (blas.c).
   * gemm_nt: c[m, n] = alpha a[m, k] b[n, k]^T (c is not read).
   * gemm_nn: c[m, n] += a[m, k] b[k, n].
   * gemm_tn: c[m, n] += a[k, m]^T b[k, n] (the backward's dK and dV). */
  void (*gemm_nt)(int64_t m, int64_t n, int64_t k, float alpha, const float *a, int64_t lda,
                  const float *b, int64_t ldb, float *c, int64_t ldc);
  void (*gemm_nn)(int64_t m, int64_t n, int64_t k, const float *a, int64_t lda, const float *b,
                  int64_t ldb, float *c, int64_t ldc);
  void (*gemm_tn)(int64_t m, int64_t n, int64_t k, const float *a, int64_t lda, const float *b,
                  int64_t ldb, float *c, int64_t ldc);
  /* SDPA's decode products (simd/decode_body.h): a few query rows against
   * K and V rows of element type be / ve (ATTN_ELEM_*) read in place, each
   * row once; NULL in the sets without them (SDPA then widens tiles and
   * calls the products above). next: the rows read after this run
   * (prefetched ahead, with this run's stride: the next head's or block's,
   * or V's after K), NULL when they follow this run. dec_qk: c[m, n] = alpha a[m, k] b[n, k]^T.
   * dec_pv: c[m, n] += p[m, k] v[k, n]; skip: zero weights add nothing. */
  void (*dec_qk)(int64_t m, int64_t n, int64_t k, float alpha, const float *a, int64_t lda,
                 const void *b, int be, int64_t ldb, const void *next, float *c, int64_t ldc);
  void (*dec_pv)(int64_t m, int64_t n, int64_t k, const float *p, int64_t ldp, const void *v,
                 int ve, int64_t ldv, const void *next, float *c, int64_t ldc, bool skip);
  /* Softmax (or log-softmax) of `rows` rows in one call, the same bits as
   * the row-at-a-time composition in softmax.c (z = scale * x + m, hidden
   * entries from logits.h, row_max, exp_shift_sum, scale / scale_stream;
   * log: sum_exp_shift, sub2; NaN rows give NaN, whatever the payload):
   * the per-row calls and their fixed cost are gone, which is what rows of
   * a few hundred bytes pay for, and short rows go 16 at a time (rows of
   * at most 4 vectors: 4 at a time in registers). NULL in
   * the sets without it. */
  void (*softmax_rows)(const attn_rows_job *j, int64_t rows);
  /* exp_shift_sum (y = exp(x - shift), the sum returned) that meanwhile
   * writes the previous row, py = pw * ps, as scale_stream would (same
   * values; stream_fence before handing over): streamed long rows overlap a
   * row's stores with the next row's exponentials. pw, py: n floats, apart
   * from x and y. */
  float (*exp_sum_flush)(const float *x, float *y, int64_t n, float shift, const float *ahead,
                         const float *pw, float *py, float ps);
  /* exp_shift_sum(x, y, n, shift, NULL) for a shift no x[i] exceeds (the
   * row's maximum, or larger): the same values without the clamp of
   * arguments above EXP_HI (one vector operation of about 13 per 16
   * floats: SDPA's weights). */
  float (*exp_below_sum)(const float *x, float *y, int64_t n, float shift);
} attn_kernels;

/* The kernel set for this CPU, probed once (thread-safe). */
const attn_kernels *attn__kernels(void);

/* The sets compiled into this build; cpu.c picks one. Each is only safe to
 * call on a CPU (and OS) with its instruction set. */
#if defined(ATTN_HAVE_X86_KERNELS)
extern const attn_kernels attn__kernels_sse2;
extern const attn_kernels attn__kernels_avx2;       /* AVX2 + FMA + F16C */
extern const attn_kernels attn__kernels_avx512;     /* AVX-512F */
extern const attn_kernels attn__kernels_avx512bf16; /* the same + AVX-512 BF16 */

/* The conversions of each set (src/simd/half_*.c), for the tables. */
#define ATTN_DECLARE_CONVERSIONS(set)                                                   \
  void attn__f32_to_f16_##set(const float *x, uint16_t *y, int64_t n);                  \
  void attn__f16_to_f32_##set(const uint16_t *x, float *y, int64_t n);                  \
  void attn__f32_to_bf16_##set(const float *x, uint16_t *y, int64_t n);                 \
  void attn__bf16_to_f32_##set(const uint16_t *x, float *y, int64_t n);
ATTN_DECLARE_CONVERSIONS(sse2)
ATTN_DECLARE_CONVERSIONS(avx2)
ATTN_DECLARE_CONVERSIONS(avx512)
void attn__f32_to_bf16_avx512bf16(const float *x, uint16_t *y, int64_t n);
#else
extern const attn_kernels attn__kernels_scalar;
#endif

#endif
