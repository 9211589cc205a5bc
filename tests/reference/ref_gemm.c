#include "ref_gemm.h"

#include <math.h>

void ref_gemm(int64_t m, int64_t n, int64_t k, double alpha, const float *a, int64_t lda,
              const float *b, int64_t ldb, int trans_b, double *want, double *mag) {
  for (int64_t i = 0; i < m; i++)
    for (int64_t j = 0; j < n; j++) {
      double s = 0, t = 0;
      for (int64_t kk = 0; kk < k; kk++) {
        double x = a[i * lda + kk];
        double y = trans_b ? b[j * ldb + kk] : b[kk * ldb + j];
        s += x * y;
        t += fabs(x * y);
      }
      want[i * n + j] = alpha * s;
      mag[i * n + j] = fabs(alpha) * t;
    }
}
