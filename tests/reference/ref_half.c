/* See ref_half.h. */
#include "ref_half.h"

#include <math.h>
#include <string.h>

static uint32_t bits_of(float f) {
  uint32_t b;
  memcpy(&b, &f, sizeof b);
  return b;
}

static float float_of(uint32_t b) {
  float f;
  memcpy(&f, &b, sizeof f);
  return f;
}

/* A format with `p` significant bits (hidden one included), an exponent
 * field of `ebits` bits and bias `bias`. */
typedef struct {
  int p, ebits, bias;
} fmt;
static const fmt F16 = {11, 5, 15}, BF16 = {8, 8, 127};

static double decode(fmt f, uint32_t h) {
  int fbits = f.p - 1;
  uint32_t sign = h >> (f.ebits + fbits), e = (h >> fbits) & ((1u << f.ebits) - 1),
           m = h & ((1u << fbits) - 1);
  double v;
  if (e == (1u << f.ebits) - 1)
    v = m ? NAN : INFINITY;
  else if (e == 0)
    v = ldexp((double)m, 1 - f.bias - fbits);
  else
    v = ldexp((double)(m + (1u << fbits)), (int)e - f.bias - fbits);
  return sign ? -v : v;
}

/* Round v (not NaN) to the format, nearest even, and encode it. */
static uint32_t encode(fmt f, double v) {
  int fbits = f.p - 1, emax = (1 << f.ebits) - 2 - f.bias, emin = 1 - f.bias;
  uint32_t sign = signbit(v) ? 1u << (f.ebits + fbits) : 0, inf = ((1u << f.ebits) - 1) << fbits;
  double a = fabs(v);
  if (isinf(a))
    return sign | inf;
  if (a == 0)
    return sign;
  int e;
  frexp(a, &e); /* a in [2^(e-1), 2^e) */
  int exp = e - 1 < emin ? emin : e - 1;
  double q = ldexp(1.0, exp - fbits); /* the spacing of the format at a */
  double r = rint(a / q) * q;         /* exact scaling; rint rounds to nearest even */
  if (r == 0)
    return sign;
  if (r >= ldexp(1.0, emax + 1))
    return sign | inf;
  frexp(r, &e);
  if (e - 1 < emin) /* subnormal */
    return sign | (uint32_t)(r / ldexp(1.0, emin - fbits));
  return sign | ((uint32_t)(e - 1 + f.bias) << fbits) |
         ((uint32_t)(r / ldexp(1.0, e - 1 - fbits)) - (1u << fbits));
}

double ref_f16_value(uint16_t h) { return decode(F16, h); }
double ref_bf16_value(uint16_t h) { return decode(BF16, h); }

uint16_t ref_to_f16(uint32_t x) {
  float f = float_of(x);
  if (isnan(f))
    return (uint16_t)(((x >> 16) & 0x8000u) | 0x7e00u | ((x >> 13) & 0x3ffu));
  return (uint16_t)encode(F16, (double)f);
}

uint16_t ref_to_bf16(uint32_t x) {
  float f = float_of(x);
  if (isnan(f))
    return (uint16_t)((x >> 16) | 0x40u);
  return (uint16_t)encode(BF16, (double)f);
}

uint16_t ref_round_f16(double v) { return (uint16_t)encode(F16, v); }
uint16_t ref_round_bf16(double v) { return (uint16_t)encode(BF16, v); }

uint32_t ref_from_f16(uint16_t h) {
  double v = decode(F16, h);
  if (isnan(v))
    return ((uint32_t)(h & 0x8000u) << 16) | 0x7fc00000u | ((uint32_t)(h & 0x3ffu) << 13);
  return bits_of((float)v);
}

uint32_t ref_from_bf16(uint16_t h) {
  double v = decode(BF16, h);
  if (isnan(v))
    return ((uint32_t)h << 16) | 0x400000u;
  return bits_of((float)v);
}
