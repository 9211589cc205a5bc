/* Float64 reference for positional encodings, written from the formulas in
 * the papers and the projects that use them; no code shared with src/. */
#ifndef ATTN_REF_POSENC_H
#define ATTN_REF_POSENC_H
#include <stdint.h>

/* Column layouts, numbered as the tests pass them. */
enum {
  REF_PE_INTERLEAVED = 0,     /* sin, cos, sin, cos, ...; exponent 2i/D */
  REF_PE_SIN_COS = 1,         /* [sin | cos], exponent i/(D/2) */
  REF_PE_SIN_COS_SHIFTED = 2, /* [sin | cos], exponent i/(D/2 - 1) */
  REF_PE_COS_SIN = 3          /* [cos | sin], exponent i/(D/2) */
};

/* out[l*D + j] = the encoding of position pos[l] at column j. */
void ref_sinusoidal(int layout, int64_t L, int64_t D, double base, const double *pos,
                    double *out);

/* Rotary embedding in place on contiguous x [B, H, L, D]: the first r dims
 * rotated, pairs (j, j + r/2) (interleaved = 0) or (2j, 2j+1) (interleaved =
 * 1), token l of batch b at position pos[b*L + l]. */
void ref_rope(int interleaved, int64_t B, int64_t H, int64_t L, int64_t D, int64_t r,
              double theta, const int64_t *pos, double *x);

/* ALiBi slopes by the procedure of Press et al.'s reference code: for a power
 * of two n, a geometric sequence starting at 2^(-8/n) (max_bias/8 scales the
 * exponent); otherwise the list for the closest power of two below n,
 * followed by every other slope of the list for twice that. */
void ref_alibi_slopes(int64_t n, double max_bias, double *out);

/* Long-context scalings of the rotary frequencies, written from their
 * formulas (transformers' modeling_rope_utils names), numbered as
 * attn_rope_scaling. */
enum {
  REF_ROPE_NONE = 0,
  REF_ROPE_LINEAR = 1,
  REF_ROPE_NTK = 2,
  REF_ROPE_DYNAMIC_NTK = 3,
  REF_ROPE_YARN = 4,
  REF_ROPE_LLAMA3 = 5,
  REF_ROPE_LONGROPE = 6
};

typedef struct {
  int32_t scaling;
  double theta, factor;
  int64_t p0, seq_len; /* every field explicit: no defaults here */
  double beta_fast, beta_slow, mscale, mscale_all_dim, attention_factor;
  double low_ff, high_ff;
  const double *short_f, *long_f;
  int truncate;
} ref_rope_scaling;

/* Frequencies w[half] (rotary dim r = 2 half) of one configuration; returns
 * its attention factor. */
double ref_rope_scaled_freqs(const ref_rope_scaling *c, int64_t half, double *w);

#endif
