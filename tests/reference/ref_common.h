/* Float64 reference helpers: plain loops, no code shared with src/. */
#ifndef ATTN_REF_COMMON_H
#define ATTN_REF_COMMON_H
#include <stddef.h>

/* max_i |got[i] - want[i]| / max(|want[i]|, floor): the relative error used
 * by the suites, with a floor so values near zero are judged absolutely. */
double ref_max_rel_err(const float *got, const double *want, size_t n, double floor);

#endif
