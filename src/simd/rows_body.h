/* The row kernels, written once over a small vector vocabulary that each
 * rows_<isa>.c defines before including this file:
 *   vf, VW                    a vector of VW floats
 *   v_set1 v_load v_store     (unaligned loads and stores)
 *   v_load_part v_store_part  the first k < VW lanes; other lanes read `fill`
 *   v_add v_sub v_mul         one rounding each
 *   v_fma(a, b, c)            a*b + c (fused where the ISA has FMA: then the
 *                             set defines V_FMA_FUSED)
 *   v_min(a, b) v_max(a, b)   b when either is NaN (as MINPS/MAXPS)
 *   vm v_nan vm_or vm_any     a lane mask of NaNs
 *   v_le(a, b) v_eq(a, b)     lanes with a <= b, a == b (false for NaN)
 *   v_clear(m, a)             a with the lanes of m set to +0 (not needed with
 *                             V_POW2_MASKED)
 *   v_set_where(m, a, b)      b in the lanes of m, a elsewhere
 *   v_zero_bytes(b, k)        the lanes i < k with b[i] == 0 (k <= VW)
 *   v_hmax                    largest lane (no NaN present)
 *   v_pow2(p, t, n)           p * 2^n for the n that t encodes (n: the same as a
 *                             float; see v_exp), rounded once
 *   v_pow2_clear(m, p, t, n)  optional, instead of v_pow2 and v_clear:
 *                             v_clear(m, v_pow2(p, t, n)), the lanes of m not
 *                             computed (defines V_POW2_MASKED)
 *   v_stream, VA              a store bypassing the caches (non-temporal) to a
 *                             VA-byte aligned address; v_fence orders such
 *                             stores before later ones
 *   vsum vsum_zero vsum_add vsum_total  a float64 accumulator
 *   vd, VD = VW/2, vd_load    a vector of doubles (RoPE's rotation)
 *   vd_lo vd_hi               lanes [0, VD) / [VD, VW) of a vf widened
 *   v_from_vd(lo, hi)         two vd rounded to floats, lo in the low lanes
 *   vd_add vd_sub vd_mul      one rounding each
 *   v_swap_pairs              lanes (0 1)(2 3)... exchanged
 * Only static functions live here; the including file builds the table.
 * The ISA files include exp_const.h first (v_pow2 needs EXP_MAGIC_BITS). */

#include "rotate_tail.h"

#include <math.h>
#include <stdint.h>

#ifndef V_POW2_MASKED
static inline vf v_pow2_clear(vm m, vf p, vf t, vf n) { return v_clear(m, v_pow2(p, t, n)); }
#endif

/* exp(x) for x <= EXP_HI or NaN (v_exp without its clamp: softmax rows
 * shifted by their maximum); the method and its constants are in
 * exp_const.h. */
static inline vf v_exp_below_hi(vf x) {
  /* x <= EXP_LO (a hidden -inf logit above all) gives +0 without scaling
   * by 2^-150 or less: that underflows, and Intel cores take a microcode
   * assist of over a hundred cycles for each vector whose product is
   * subnormal or underflows (softmax rows with -inf masked entries ran 10x
   * slower). A set whose v_pow2_clear leaves those lanes uncomputed
   * (V_POW2_MASKED) lets them carry whatever x gives (NaN for -inf); the
   * others compute them from 0. */
  vm under = v_le(x, v_set1(EXP_LO));
#ifndef V_POW2_MASKED
  x = v_clear(under, x);
#endif
  vf t = v_fma(x, v_set1(EXP_LOG2E), v_set1(EXP_MAGIC));
  vf n = v_sub(t, v_set1(EXP_MAGIC));
  vf r = v_fma(n, v_set1(-EXP_LN2_HI), x);
  r = v_fma(n, v_set1(-EXP_LN2_LO), r);
  vf q = v_fma(v_set1(EXP_C6), r, v_set1(EXP_C5));
  q = v_fma(q, r, v_set1(EXP_C4));
  q = v_fma(q, r, v_set1(EXP_C3));
  q = v_fma(q, r, v_set1(EXP_C2));
  /* 1 + r + r^2 q, its last rounding at 1 (exp_const.h) */
#ifdef V_FMA_FUSED
  vf p = v_fma(v_fma(q, r, v_set1(1.0f)), r, v_set1(1.0f));
#else
  vf p = v_add(v_fma(v_mul(r, r), q, r), v_set1(1.0f));
#endif
  return v_pow2_clear(under, p, t, n);
}

/* exp(x), any x. */
static inline vf v_exp(vf x) { return v_exp_below_hi(v_min(v_set1(EXP_HI), x)); }

static float row_max(const float *x, int64_t n) {
  /* Four accumulators: MAXPS has a latency of several cycles, and rows are
   * usually in cache. */
  vf m0 = v_set1(-INFINITY), m1 = m0, m2 = m0, m3 = m0;
  vm bad = v_nan(m0);
  int64_t i = 0;
  for (; i + 4 * VW <= n; i += 4 * VW) {
    vf a = v_load(x + i), b = v_load(x + i + VW);
    vf c = v_load(x + i + 2 * VW), d = v_load(x + i + 3 * VW);
    m0 = v_max(m0, a);
    m1 = v_max(m1, b);
    m2 = v_max(m2, c);
    m3 = v_max(m3, d);
    bad = vm_or(bad, vm_or(vm_or(v_nan(a), v_nan(b)), vm_or(v_nan(c), v_nan(d))));
  }
  for (; i + VW <= n; i += VW) {
    vf a = v_load(x + i);
    m0 = v_max(m0, a);
    bad = vm_or(bad, v_nan(a));
  }
  if (i < n) {
    vf a = v_load_part(x + i, n - i, -INFINITY);
    m0 = v_max(m0, a);
    bad = vm_or(bad, v_nan(a));
  }
  if (vm_any(bad))
    return NAN;
  return v_hmax(v_max(v_max(m0, m1), v_max(m2, m3)));
}

/* Lanes sum at most SUM_BLOCK terms in float (each <= 1 here, so a lane's
 * relative error stays under SUM_BLOCK ULPs) before the block moves into
 * the float64 total: long rows keep a sum accurate to about 1e-7 at the
 * cost of one conversion per SUM_BLOCK vectors. */
#define SUM_BLOCK 16
/* How far ahead softmax_rows fetches rows laid end to end: a page, where
 * the hardware prefetchers stop. */
#define AHEAD_FLOATS 1024

static void scale(const float *x, float *y, int64_t n, float s) {
  vf vs = v_set1(s);
  int64_t i = 0;
  for (; i + VW <= n; i += VW)
    v_store(y + i, v_mul(v_load(x + i), vs));
  if (i < n)
    v_store_part(y + i, n - i, v_mul(v_load_part(x + i, n - i, 0.0f), vs));
}

/* scale with y written by non-temporal stores wherever y is aligned (not
 * ordered: stream_fence does that once for many rows): the
 * bytes go to memory without reading y's lines into the cache first (a
 * normal store reads each line before writing it) and without evicting the
 * data being worked on. For outputs that will not be read back from the
 * cache soon. The same values as scale. Inlined where exp_vsum stores the
 * previous rows (a call per short row cost 4-5 % there). */
static inline __attribute__((always_inline)) void scale_stream(const float *x, float *y,
                                                                int64_t n, float s) {
  vf vs = v_set1(s);
  int64_t i = 0;
  /* Up to the first aligned element: plain stores (the address is a
   * multiple of 4, a float's alignment, or nothing here is aligned). */
  int64_t head = (int64_t)((VA - ((uintptr_t)y & (VA - 1))) & (VA - 1));
  if (head % (int64_t)sizeof(float) != 0 || head / (int64_t)sizeof(float) >= n) {
    scale(x, y, n, s);
    return;
  }
  head /= (int64_t)sizeof(float);
  if (head) {
    v_store_part(y, head, v_mul(v_load_part(x, head, 0.0f), vs));
    i = head;
  }
  for (; i + VW <= n; i += VW)
    v_stream(y + i, v_mul(v_load(x + i), vs));
  if (i < n)
    v_store_part(y + i, n - i, v_mul(v_load_part(x + i, n - i, 0.0f), vs));
}

/* ahead: NULL, or n floats (the next row) whose cache lines are requested
 * into L2 while this row is computed, one line per 16 floats: the memory
 * then works during the exponentials instead of waiting for the next row's
 * first pass (the hardware prefetchers only follow the loads being made). */
/* pw: NULL, or the previous row's exponentials, written meanwhile to py
 * as scale_stream(pw, py, n, ps) would, a block behind the exponentials:
 * the memory takes the stores while the exponentials are computed. */
/* below_hi: shift is the row's maximum (or the row is NaN), so no x -
 * shift exceeds EXP_HI. Returns the float64 accumulator (vsum_total). */
static inline __attribute__((always_inline)) vsum exp_vsum(const float *x, float *y, int64_t n,
                                                           float shift, int store,
                                                           const float *ahead, const float *pw,
                                                           float *py, float ps, int below_hi) {
  vf sh = v_set1(shift);
  vsum total = vsum_zero();
  int64_t i = 0;
  while (i + VW <= n) {
    vf acc = v_set1(0.0f);
    int64_t i0 = i;
    for (int k = 0; k < SUM_BLOCK && i + VW <= n; k++, i += VW) {
      if (ahead && (i & 15) == 0)
        __builtin_prefetch(ahead + i, 0, 2);
      vf d = v_sub(v_load(x + i), sh);
      vf e = below_hi ? v_exp_below_hi(d) : v_exp(d);
      if (store)
        v_store(y + i, e);
      acc = v_add(acc, e);
    }
    vsum_add(&total, acc);
    if (pw)
      scale_stream(pw + i0, py + i0, i - i0, ps);
  }
  if (i < n) {
    /* -inf in the unused lanes: exp gives 0 there (from 0, without an
     * underflow: v_exp), so they add nothing. */
    vf d = v_sub(v_load_part(x + i, n - i, -INFINITY), sh);
    vf e = below_hi ? v_exp_below_hi(d) : v_exp(d);
    if (store)
      v_store_part(y + i, n - i, e);
    vsum_add(&total, e);
    if (pw)
      scale_stream(pw + i, py + i, n - i, ps);
  }
  return total;
}

static inline __attribute__((always_inline)) float exp_sum(const float *x, float *y, int64_t n,
                                                           float shift, int store,
                                                           const float *ahead, const float *pw,
                                                           float *py, float ps) {
  return (float)vsum_total(exp_vsum(x, y, n, shift, store, ahead, pw, py, ps, 0));
}

static float exp_shift_sum(const float *x, float *y, int64_t n, float shift,
                           const float *ahead) {
  return exp_sum(x, y, n, shift, 1, ahead, (const float *)0, (float *)0, 0.0f);
}

static float exp_below_sum(const float *x, float *y, int64_t n, float shift) {
  return (float)vsum_total(exp_vsum(x, y, n, shift, 1, (const float *)0, (const float *)0,
                                    (float *)0, 0.0f, 1));
}

static float exp_sum_flush(const float *x, float *y, int64_t n, float shift, const float *ahead,
                           const float *pw, float *py, float ps) {
  return exp_sum(x, y, n, shift, 1, ahead, pw, py, ps);
}

static float sum_exp_shift(const float *x, int64_t n, float shift) {
  return exp_sum(x, (float *)0, n, shift, 0, (const float *)0, (const float *)0, (float *)0, 0.0f);
}

static void stream_fence(void) { v_fence(); }

static void scale_add(const float *x, const float *m, float *y, int64_t n, float s) {
  vf vs = v_set1(s);
  int64_t i = 0;
  for (; i + VW <= n; i += VW)
    v_store(y + i, v_add(v_mul(v_load(x + i), vs), v_load(m + i)));
  if (i < n) {
    vf a = v_load_part(x + i, n - i, 0.0f), b = v_load_part(m + i, n - i, 0.0f);
    v_store_part(y + i, n - i, v_add(v_mul(a, vs), b));
  }
}

static void sub2(const float *x, float *y, int64_t n, float a, float b) {
  vf va = v_set1(a), vb = v_set1(b);
  int64_t i = 0;
  for (; i + VW <= n; i += VW)
    v_store(y + i, v_sub(v_sub(v_load(x + i), va), vb));
  if (i < n)
    v_store_part(y + i, n - i, v_sub(v_sub(v_load_part(x + i, n - i, 0.0f), va), vb));
}

/* Short softmax rows a block at a time (kernels.h), each through the steps
 * of softmax.c's float_row with the same kernels inlined, so the same bits;
 * the non-finite maxima as there: -inf (all hidden) gives zeros (log:
 * -inf), NaN or +inf gives NaN. */
static void fill_row(float *y, int64_t n, float v) {
  vf vv = v_set1(v);
  int64_t i = 0;
  for (; i + VW <= n; i += VW)
    v_store(y + i, vv);
  if (i < n)
    v_store_part(y + i, n - i, vv);
}

/* One vector of z = x * s (+ m), entries hidden as attn__logits_hide does
 * (logits.h: -inf where m is -inf or b is 0, whatever x holds), from the
 * first k lanes (k < VW: a row's tail; 0 in the other lanes). scaled = 0:
 * s is 1, and x * 1 is x, so the product is left out. */
static inline __attribute__((always_inline)) vf z_vec(const float *x, const float *m,
                                                      const uint8_t *b, int64_t k, vf vs,
                                                      int scaled) {
  vf v = k == VW ? v_load(x) : v_load_part(x, k, 0.0f);
  if (scaled)
    v = v_mul(v, vs);
  if (m) {
    vf mv = k == VW ? v_load(m) : v_load_part(m, k, 0.0f);
    v = v_set_where(v_eq(mv, v_set1(-INFINITY)), v_add(v, mv), v_set1(-INFINITY));
  }
  if (b)
    v = v_set_where(v_zero_bytes(b, k), v, v_set1(-INFINITY));
  return v;
}

/* Lane maxima for a batch of rows, found before any row's horizontal
 * maximum (v_hmax_rows): -inf in the lanes past the row; a NaN may leave a
 * lane at any value (v_max returns its second operand then), so a NaN row
 * is found later: by its sum of exponentials (NaN), or, with a maximum of
 * -inf, by has_nan. */
static inline vf row_max_v(const float *x, int64_t n) {
  /* max(-inf, a) is a, NaN or not */
  vf m0 = n >= VW ? v_load(x) : v_set1(-INFINITY), m1 = v_set1(-INFINITY);
  int64_t i = n >= VW ? VW : 0;
  for (; i + 2 * VW <= n; i += 2 * VW) {
    m0 = v_max(m0, v_load(x + i));
    m1 = v_max(m1, v_load(x + i + VW));
  }
  if (i + VW <= n)
    m0 = v_max(m0, v_load(x + i)), i += VW;
  if (i < n)
    m1 = v_max(m1, v_load_part(x + i, n - i, -INFINITY));
  return v_max(m0, m1);
}

/* z of a row into z[0..n) with its lane maxima in the same pass (as
 * row_max_v). */
static inline __attribute__((always_inline)) vf logits_row_k(const float *x, const float *m,
                                                             const uint8_t *b, float *z,
                                                             int64_t n, float s, int scaled) {
  vf vs = v_set1(s), big = v_set1(-INFINITY);
  int64_t i = 0;
  for (; i + VW <= n; i += VW) {
    vf v = z_vec(x + i, m ? m + i : m, b ? b + i : b, VW, vs, scaled);
    v_store(z + i, v);
    big = v_max(big, v);
  }
  if (i < n) {
    vf v = z_vec(x + i, m ? m + i : m, b ? b + i : b, n - i, vs, scaled);
    v_store_part(z + i, n - i, v);
    /* -inf past the row (z's 0 there) */
    big = v_max(big, v_set_where(v_nan(v_load_part(x + i, n - i, NAN)), v, v_set1(-INFINITY)));
  }
  return big;
}

/* logits_row_k with the operands known in each loop (a mask's loads and
 * tests, and the product, only where they are used). */
static inline vf logits_row_v(const float *x, const float *m, const uint8_t *b, float *z,
                              int64_t n, float s) {
  if (s != 1.0f)
    return logits_row_k(x, m, b, z, n, s, 1);
  if (m && b)
    return logits_row_k(x, m, b, z, n, s, 0);
  if (m)
    return logits_row_k(x, m, NULL, z, n, s, 0);
  return logits_row_k(x, NULL, b, z, n, s, 0);
}

static int has_nan(const float *z, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    if (z[i] != z[i])
      return 1;
  return 0;
}

#ifndef V_ROWS_REDUCE
/* out[i] = v_hmax(v[i]) for i < k (any value when v[i] has a NaN lane). */
static inline void v_hmax_rows(const vf *v, int64_t k, float *out) {
  for (int64_t i = 0; i < k; i++)
    out[i] = v_hmax(v[i]);
}
/* out[i] = (float)vsum_total(s[i]) for i < k. */
static inline void vsum_totals(const vsum *s, int64_t k, float *out) {
  for (int64_t i = 0; i < k; i++)
    out[i] = (float)vsum_total(s[i]);
}
#endif

/* Rows go BATCH_ROWS at a time (at most BATCH_FLOATS floats), each step over
 * the whole batch before the next: the lane maxima, the rows' maxima, the
 * exponentials and their float64 sums, the sums, then the outputs. Row
 * after row, each row's chain of dependent operations (horizontal maximum,
 * exponentials, horizontal sum, division) waited on the one before it in
 * the core's window; over a batch the chains are independent, and the
 * horizontal steps of 16 rows share their shuffles (v_hmax_rows,
 * vsum_totals). A NaN row is caught by its NaN sum (row_max_v). */
#define BATCH_ROWS 16
#define BATCH_FLOATS 4096

/* Rows (softmax and log-softmax) of at most SHORT_VECS vectors go
 * SHORT_ROWS at a time through registers: each row's z is loaded (or built,
 * z_vec) once and stays there for its maximum, exponentials and outputs,
 * which are stored straight to y (streamed: non-temporal where the row is
 * aligned); log keeps z and computes the exponentials aside, for the sum
 * only. The batch path below stores each row's z or exponentials and reads
 * them back in two more passes, with its control per row: rows of 64 floats
 * took 0.88x the CPU time here ([65536, 64]; log 0.84x). A batch of 16 rows
 * through L1 with the length fixed per instance, each step over the batch,
 * took 1.11-1.17x the time of this path (softmax). The loops over a group are
 * unrolled so that the compiler keeps z in registers. Same steps, same
 * bits: full vectors summed in float in order, a partial last one added to
 * the float64 total on its own (exp_vsum); the horizontal steps of a group
 * share their shuffles (v_hmax_rows, vsum_totals). */
#define SHORT_VECS 4
#define SHORT_ROWS 4

/* Rows r0 .. r0 + g - 1 (g <= SHORT_ROWS) of nv vectors each; k: the lanes
 * of the last vector within the row, past: the others (-inf in z, so they
 * add nothing to the maximum or the sum). */
static inline __attribute__((always_inline)) void short_group(const attn_rows_job *j, int64_t r0,
                                                              int64_t rows, int g, int nv,
                                                              int build_z, int lg, int64_t k,
                                                              vm past) {
  int64_t n = j->n;
  vf vs = v_set1(j->scale);
  vf z[SHORT_ROWS][SHORT_VECS], lanes[SHORT_ROWS];
  vsum sums[SHORT_ROWS];
  float mx[SHORT_ROWS], val[SHORT_ROWS];
  _Pragma("GCC unroll 4") for (int i = 0; i < g; i++) {
    int64_t r = r0 + i;
    const float *xr = j->x + r * j->ldx;
    const float *mr = j->m ? j->m + r * j->ldm : (const float *)0;
    const uint8_t *br = j->b ? j->b + r * j->ldb : (const uint8_t *)0;
    /* fetched meanwhile, as in the batch path: a page ahead (rows end to
     * end), else a batch of rows on, after the last row `next` */
    const float *a = (const float *)0;
    if (j->x_end)
      a = j->x_end - xr >= AHEAD_FLOATS + n ? xr + AHEAD_FLOATS : a;
    else if (r + BATCH_ROWS < rows)
      a = xr + BATCH_ROWS * j->ldx;
    else if (r + 1 == rows)
      a = j->next;
    for (int64_t c = 0; a && c < n; c += 64 / (int64_t)sizeof(float))
      __builtin_prefetch(a + c, 0, 2);
    _Pragma("GCC unroll 4") for (int v = 0; v < nv; v++) {
      int64_t kv = v == nv - 1 ? k : VW;
      if (build_z) {
        z[i][v] = z_vec(xr + v * VW, mr ? mr + v * VW : mr, br ? br + v * VW : br, kv, vs,
                        j->scale != 1.0f);
        if (v == nv - 1)
          z[i][v] = v_set_where(past, z[i][v], v_set1(-INFINITY));
      } else {
        z[i][v] = kv == VW ? v_load(xr + v * VW) : v_load_part(xr + v * VW, kv, -INFINITY);
      }
    }
    lanes[i] = z[i][0];
    _Pragma("GCC unroll 4") for (int v = 1; v < nv; v++)
      lanes[i] = v_max(lanes[i], z[i][v]);
  }
  v_hmax_rows(lanes, g, mx);
  _Pragma("GCC unroll 4") for (int i = 0; i < g; i++) {
    sums[i] = vsum_zero();
    if (!(mx[i] > -INFINITY && mx[i] < INFINITY))
      continue; /* filled below */
    vf sh = v_set1(mx[i]), acc = v_set1(0.0f), e = acc;
    _Pragma("GCC unroll 4") for (int v = 0; v < nv; v++) {
      e = v_exp_below_hi(v_sub(z[i][v], sh));
      if (!lg) /* log keeps z for its outputs */
        z[i][v] = e;
      /* 0 + e is e (e >= +0 or NaN): the first term needs no add */
      if (v < nv - 1 || k == VW)
        acc = v == 0 ? e : v_add(acc, e);
    }
    vsum_add(&sums[i], acc);
    if (k < VW)
      vsum_add(&sums[i], e);
  }
  vsum_totals(sums, g, val);
  _Pragma("GCC unroll 4") for (int i = 0; i < g; i++) {
    float *yr = j->y + (r0 + i) * j->ldy;
    if (!(mx[i] > -INFINITY && mx[i] < INFINITY)) {
      /* all hidden (zeros), unless a NaN hid from v_max; or NaN */
      vm bad = v_nan(z[i][0]);
      _Pragma("GCC unroll 4") for (int v = 1; v < nv; v++)
        bad = vm_or(bad, v_nan(z[i][v]));
      fill_row(yr, n, mx[i] != -INFINITY || vm_any(bad) ? NAN : lg ? -INFINITY : 0.0f);
      continue;
    }
    /* a finite maximum gives a sum >= 1 (exp(0)), or NaN */
    vf f = v_set1(lg ? (float)log((double)val[i]) : (float)(1.0 / (double)val[i]));
    vf sh = v_set1(mx[i]);
    int nt = j->w && ((uintptr_t)yr & (VA - 1)) == 0;
    _Pragma("GCC unroll 4") for (int v = 0; v < nv; v++) {
      vf o = lg ? v_sub(v_sub(z[i][v], sh), f) : v_mul(z[i][v], f);
      if (v == nv - 1 && k < VW)
        v_store_part(yr + v * VW, k, o);
      else if (nt)
        v_stream(yr + v * VW, o);
      else
        v_store(yr + v * VW, o);
    }
  }
}

static inline __attribute__((always_inline)) void short_rows_k(const attn_rows_job *j,
                                                               int64_t rows, int nv,
                                                               int build_z, int lg) {
  static const float zeros[VW] = {0};
  int64_t k = j->n - (int64_t)(nv - 1) * VW;
  vm past = v_nan(v_load_part(zeros, k == VW ? 0 : k, k == VW ? 0.0f : NAN));
  int64_t r = 0;
  for (; r + SHORT_ROWS <= rows; r += SHORT_ROWS)
    short_group(j, r, rows, SHORT_ROWS, nv, build_z, lg, k, past);
  for (; r < rows; r++)
    short_group(j, r, rows, 1, nv, build_z, lg, k, past);
}

/* nv, whether z is built and log, fixed per instance (the softmax
 * instances then have no test of log per row). */
#define SHORT_ROWS_NV(nv, build_z)                                                             \
  (j->log ? short_rows_k(j, rows, nv, build_z, 1) : short_rows_k(j, rows, nv, build_z, 0))
static void short_rows(const attn_rows_job *j, int64_t rows) {
  int build_z = j->scale != 1.0f || j->m || j->b;
  switch ((j->n + VW - 1) / VW * 2 + build_z) {
  case 2: SHORT_ROWS_NV(1, 0); break;
  case 3: SHORT_ROWS_NV(1, 1); break;
  case 4: SHORT_ROWS_NV(2, 0); break;
  case 5: SHORT_ROWS_NV(2, 1); break;
  case 6: SHORT_ROWS_NV(3, 0); break;
  case 7: SHORT_ROWS_NV(3, 1); break;
  case 8: SHORT_ROWS_NV(4, 0); break;
  default: SHORT_ROWS_NV(4, 1); break;
  }
}
#undef SHORT_ROWS_NV

static void softmax_rows(const attn_rows_job *j, int64_t rows) {
  int64_t n = j->n;
  if (n <= SHORT_VECS * VW) {
    short_rows(j, rows);
    return;
  }
  int build_z = j->scale != 1.0f || j->m || j->b;
  int64_t nb = n >= BATCH_FLOATS / BATCH_ROWS ? BATCH_FLOATS / n : BATCH_ROWS;
  nb = nb < 1 ? 1 : nb;
  /* Streamed: a batch's exponentials wait in one of two buffers (rows
   * longer than BATCH_FLOATS: the job's two scratch rows) and are stored
   * during the next batch's exponentials (exp_vsum's pw). */
  float wb[2 * BATCH_FLOATS];
  float *wbuf = j->w && n <= BATCH_FLOATS ? wb : j->w;
  int64_t wstep = n <= BATCH_FLOATS ? BATCH_FLOATS : n;
  vf lanes[BATCH_ROWS];
  vsum sums[BATCH_ROWS];
  float mx[BATCH_ROWS], val[BATCH_ROWS];
  /* the previous batch's rows waiting for their stores (pend[i]) */
  const float *pw = (const float *)0;
  float *py = (float *)0, pinv[BATCH_ROWS];
  char pend[BATCH_ROWS];
  int64_t plen = 0;
  for (int64_t r0 = 0; r0 < rows; r0 += nb) {
    int64_t len = rows - r0 < nb ? rows - r0 : nb;
    const float *x = j->x + r0 * j->ldx;
    float *y = j->y + r0 * j->ldy;
    float *wb0 = wbuf ? wbuf + (r0 / nb & 1) * wstep : (float *)0;
#define ROW_W(i) (wb0 ? wb0 + (i) * n : y + (i) * j->ldy) /* row i's scratch */
#define ROW_Z(i) (build_z ? ROW_W(i) : x + (i) * j->ldx)  /* row i's logits */
    /* z (in the row's scratch: y's row unless streamed) and the maxima */
    for (int64_t i = 0; i < len; i++)
      lanes[i] = build_z ? logits_row_v(x + i * j->ldx,
                                        j->m ? j->m + (r0 + i) * j->ldm : (const float *)0,
                                        j->b ? j->b + (r0 + i) * j->ldb : (const uint8_t *)0,
                                        ROW_W(i), n, j->scale)
                         : row_max_v(x + i * j->ldx, n);
    v_hmax_rows(lanes, len, mx);
    /* the sums, with the exponentials stored unless log */
    for (int64_t i = 0; i < len; i++) {
      const float *xi = x + i * j->ldx;
      const float *pwi = i < plen && pend[i] ? pw + i * n : (const float *)0;
      float *pyi = pwi ? py + i * j->ldy : (float *)0;
      sums[i] = vsum_zero();
      if (mx[i] == -INFINITY && has_nan(ROW_Z(i), n))
        mx[i] = NAN;
      if (!(mx[i] > -INFINITY && mx[i] < INFINITY) || j->log) {
        if (pwi)
          scale_stream(pwi, pyi, n, pinv[i]);
        /* log: y's row is written below, so its lines are requested now
         * (in a burst there, the writes wait for them) */
        for (int64_t k = 0; j->log && !build_z && k < n; k += 64 / (int64_t)sizeof(float))
          __builtin_prefetch(y + i * j->ldy + k, 1, 3);
        if (mx[i] > -INFINITY && mx[i] < INFINITY)
          sums[i] = exp_vsum(ROW_Z(i), (float *)0, n, mx[i], 0, (const float *)0,
                             (const float *)0, (float *)0, 0.0f, 1);
        continue; /* all hidden, or NaN: filled below */
      }
      /* ahead: a page on, else the same row of the next batch (the last
       * row: the first after the block) */
      const float *ahead = (const float *)0;
      if (j->x_end)
        ahead = j->x_end - xi >= AHEAD_FLOATS + n ? xi + AHEAD_FLOATS : ahead;
      else if (r0 + i + nb < rows)
        ahead = xi + nb * j->ldx;
      else if (r0 + i + 1 == rows)
        ahead = j->next;
      sums[i] = exp_vsum(ROW_Z(i), ROW_W(i), n, mx[i], 1, ahead, pwi, pyi, pwi ? pinv[i] : 0.0f, 1);
    }
    for (int64_t i = len; i < plen; i++) /* the last batch is shorter */
      if (pend[i])
        scale_stream(pw + i * n, py + i * j->ldy, n, pinv[i]);
    vsum_totals(sums, len, val);
    /* the outputs (streamed: left for the next batch); a finite maximum
     * gives s >= 1 (exp(0)), or NaN */
    for (int64_t i = 0; i < len; i++) {
      float *yi = y + i * j->ldy;
      pend[i] = 0;
      if (mx[i] == -INFINITY)
        fill_row(yi, n, j->log ? -INFINITY : 0.0f);
      else if (!(mx[i] < INFINITY))
        fill_row(yi, n, NAN);
      else if (j->log)
        sub2(ROW_Z(i), yi, n, mx[i], (float)log((double)val[i]));
      else if (wb0)
        pend[i] = 1, pinv[i] = (float)(1.0 / (double)val[i]);
      else
        scale(yi, yi, n, (float)(1.0 / (double)val[i]));
    }
#undef ROW_Z
#undef ROW_W
    pw = wb0, py = y, plen = wb0 ? len : 0;
  }
  for (int64_t i = 0; i < plen; i++)
    if (pend[i])
      scale_stream(pw + i * n, py + i * j->ldy, n, pinv[i]);
}

/* RoPE's rotations, vectors of pairs in the roundings of rotate_tail.h, so
 * every set gives the same bits. */
static void rotate_split(float *restrict a, float *restrict b, const double *c, const double *s,
                         int64_t n) {
  int64_t i = 0;
  for (; i + VW <= n; i += VW) {
    vf va = v_load(a + i), vb = v_load(b + i);
    vd a0 = vd_lo(va), a1 = vd_hi(va), b0 = vd_lo(vb), b1 = vd_hi(vb);
    vd c0 = vd_load(c + i), c1 = vd_load(c + i + VD);
    vd s0 = vd_load(s + i), s1 = vd_load(s + i + VD);
    v_store(a + i, v_from_vd(vd_sub(vd_mul(a0, c0), vd_mul(b0, s0)),
                             vd_sub(vd_mul(a1, c1), vd_mul(b1, s1))));
    v_store(b + i, v_from_vd(vd_add(vd_mul(a0, s0), vd_mul(b0, c0)),
                             vd_add(vd_mul(a1, s1), vd_mul(b1, c1))));
  }
  rotate_split_tail(a, b, c, s, i, n);
}

/* Interleaved: y[j] = x[j] cc[j] + x[j^1] ss[j] (tables per float). */
static void rotate_pairs(float *x, const double *cc, const double *ss, int64_t n) {
  int64_t j = 0;
  for (; j + VW <= 2 * n; j += VW) {
    vf vx = v_load(x + j), vp = v_swap_pairs(vx);
    vd x0 = vd_lo(vx), x1 = vd_hi(vx), p0 = vd_lo(vp), p1 = vd_hi(vp);
    vd c0 = vd_load(cc + j), c1 = vd_load(cc + j + VD);
    vd s0 = vd_load(ss + j), s1 = vd_load(ss + j + VD);
    v_store(x + j, v_from_vd(vd_add(vd_mul(x0, c0), vd_mul(p0, s0)),
                             vd_add(vd_mul(x1, c1), vd_mul(p1, s1))));
  }
  rotate_pairs_tail(x, cc, ss, j, n);
}

/* The set's table: these row kernels, the given conversions, and the tile
 * products of gemm_body.h (gemm_nt, gemm_nn) or NULL. */
#define ROWS_TABLE(set_name, f32_to_f16, f16_to_f32, f32_to_bf16, bf16_to_f32, gemm_nt, gemm_nn, \
                   gemm_tn, dec_qk, dec_pv)                                                    \
  {                                                                                            \
    set_name, row_max, exp_shift_sum, sum_exp_shift, scale, scale_stream, stream_fence,         \
        scale_add, sub2, f32_to_f16, f16_to_f32, f32_to_bf16, bf16_to_f32, rotate_split,        \
        rotate_pairs, gemm_nt, gemm_nn, gemm_tn, dec_qk, dec_pv, softmax_rows, exp_sum_flush,   \
        exp_below_sum                                                                          \
  }
