#include "ref_common.h"

#include <math.h>

double ref_max_rel_err(const float *got, const double *want, size_t n, double floor) {
  double worst = 0;
  for (size_t i = 0; i < n; i++) {
    if (isnan(want[i]) || isinf(want[i])) {
      if (!(isnan(want[i]) ? isnan(got[i]) : (double)got[i] == want[i]))
        return INFINITY;
      continue;
    }
    double den = fabs(want[i]) > floor ? fabs(want[i]) : floor;
    double e = fabs((double)got[i] - want[i]) / den;
    if (!(e <= worst)) /* also catches NaN in got */
      worst = isnan(e) ? INFINITY : e;
  }
  return worst;
}
