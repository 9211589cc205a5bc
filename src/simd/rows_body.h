/* The row kernels, written once over a small vector vocabulary that each
 * rows_<isa>.c defines before including this file:
 *   vf, VW                    a vector of VW floats
 *   v_set1 v_load v_store     (unaligned loads and stores)
 *   v_load_part v_store_part  the first k < VW lanes; other lanes read `fill`
 *   v_add v_sub v_mul         one rounding each
 *   v_fma(a, b, c)            a*b + c (fused where the ISA has FMA)
 *   v_min(a, b) v_max(a, b)   b when either is NaN (as MINPS/MAXPS)
 *   vm v_nan vm_or vm_any     a lane mask of NaNs
 *   v_hmax                    largest lane (no NaN present)
 *   v_pow2(p, t)              p * 2^n for the n that t encodes (see v_exp)
 *   vsum vsum_zero vsum_add vsum_total  a float64 accumulator
 * Only static functions live here; the including file builds the table.
 * The ISA files include exp_const.h first (v_pow2 needs EXP_MAGIC_BITS). */

#include <math.h>

/* exp(x): the method and its constants are in exp_const.h. */
static inline vf v_exp(vf x) {
  x = v_min(v_set1(EXP_HI), x);
  x = v_max(v_set1(EXP_LO), x);
  vf t = v_fma(x, v_set1(EXP_LOG2E), v_set1(EXP_MAGIC));
  vf n = v_sub(t, v_set1(EXP_MAGIC));
  vf r = v_fma(n, v_set1(-EXP_LN2_HI), x);
  r = v_fma(n, v_set1(-EXP_LN2_LO), r);
  vf q = v_fma(v_set1(EXP_C6), r, v_set1(EXP_C5));
  q = v_fma(q, r, v_set1(EXP_C4));
  q = v_fma(q, r, v_set1(EXP_C3));
  q = v_fma(q, r, v_set1(EXP_C2));
  vf p = v_add(v_fma(v_mul(r, r), q, r), v_set1(1.0f));
  return v_pow2(p, t);
}

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

static inline __attribute__((always_inline)) float exp_sum(const float *x, float *y, int64_t n,
                                                           float shift, int store) {
  vf sh = v_set1(shift);
  vsum total = vsum_zero();
  int64_t i = 0;
  while (i + VW <= n) {
    vf acc = v_set1(0.0f);
    for (int k = 0; k < SUM_BLOCK && i + VW <= n; k++, i += VW) {
      vf e = v_exp(v_sub(v_load(x + i), sh));
      if (store)
        v_store(y + i, e);
      acc = v_add(acc, e);
    }
    vsum_add(&total, acc);
  }
  if (i < n) {
    /* -inf in the unused lanes: exp gives 0 there, so they add nothing. */
    vf e = v_exp(v_sub(v_load_part(x + i, n - i, -INFINITY), sh));
    if (store)
      v_store_part(y + i, n - i, e);
    vsum_add(&total, e);
  }
  return (float)vsum_total(total);
}

static float exp_shift_sum(const float *x, float *y, int64_t n, float shift) {
  return exp_sum(x, y, n, shift, 1);
}

static float sum_exp_shift(const float *x, int64_t n, float shift) {
  return exp_sum(x, (float *)0, n, shift, 0);
}

static void scale(const float *x, float *y, int64_t n, float s) {
  vf vs = v_set1(s);
  int64_t i = 0;
  for (; i + VW <= n; i += VW)
    v_store(y + i, v_mul(v_load(x + i), vs));
  if (i < n)
    v_store_part(y + i, n - i, v_mul(v_load_part(x + i, n - i, 0.0f), vs));
}

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

/* The set's table: these row kernels, the given conversions, and the tile
 * products of gemm_body.h (gemm_nt, gemm_nn) or NULL. */
#define ROWS_TABLE(set_name, f32_to_f16, f16_to_f32, f32_to_bf16, bf16_to_f32, gemm_nt, gemm_nn, \
                   gemm_tn)                                                                    \
  {                                                                                            \
    set_name, row_max, exp_shift_sum, sum_exp_shift, scale, scale_add, sub2, f32_to_f16,        \
        f16_to_f32, f32_to_bf16, bf16_to_f32, gemm_nt, gemm_nn, gemm_tn                         \
  }
