/* Reference for the 2-byte float formats, in double arithmetic from the
 * IEEE-754 definitions (decode by ldexp, round by rint on the scaled value,
 * encode by frexp); no code shared with src/simd/half.h, which works on the
 * bits. Values are passed as bit patterns: uint16_t for f16/bf16, uint32_t
 * for f32. NaN rules as attn.h documents them (quiet, sign and the leading
 * payload bits kept). */
#ifndef ATTN_REF_HALF_H
#define ATTN_REF_HALF_H
#include <stdint.h>

/* The value of an f16 / bf16 (NaN for a NaN pattern). */
double ref_f16_value(uint16_t h);
double ref_bf16_value(uint16_t h);
/* f32 (bits) -> nearest f16 / bf16, ties to even, overflow to Inf. */
uint16_t ref_to_f16(uint32_t x);
uint16_t ref_to_bf16(uint32_t x);
/* A double (not NaN) -> nearest f16 / bf16, ties to even: one rounding,
 * for results the library computes in double. */
uint16_t ref_round_f16(double v);
uint16_t ref_round_bf16(double v);
/* f16 / bf16 -> f32 bits (exact; NaN made quiet). */
uint32_t ref_from_f16(uint16_t h);
uint32_t ref_from_bf16(uint16_t h);

#endif
