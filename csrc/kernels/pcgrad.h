// PCGrad (Yu et al. 2020, Algorithm 1) on coefficients: one source for the CPU op and the CUDA kernel.
//
// Every projected gradient stays in the span of the task gradients, g_i^PC = sum_j c_ij g_j, and every
// quantity the algorithm needs is a dot product with an original g_j, i.e. a column of the Gram matrix
// G = J J^T. So the algorithm runs on the K x K matrix alone and the final update is
// sum_i g_i^PC = sum_j w_j g_j with w_j = sum_i c_ij.
#pragma once

#include "kernels/common.h"

namespace mtl_fast {

// Coefficients of g_i^PC for task i.
//   gram:  K x K row-major, G[a*K + b] = g_a . g_b (float64 so gradients at 1e+-30 neither overflow nor flush)
//   order: the K-1 other tasks in the order task i visits them (entries equal to i or outside [0, K) are
//          skipped, so a malformed order can never read out of bounds)
//   coef:  out, K values
template <typename scalar_t, typename index_t>
MTL_HD void pcgrad_row_coefficients(const scalar_t* gram, const index_t* order, int64_t K, int64_t i,
                                    scalar_t* coef) {
  for (int64_t a = 0; a < K; ++a) coef[a] = scalar_t(0);
  coef[i] = scalar_t(1);
  for (int64_t step = 0; step + 1 < K; ++step) {
    const int64_t j = static_cast<int64_t>(order[step]);
    if (j < 0 || j >= K || j == i) continue;
    // g_i^PC . g_j for the ORIGINAL g_j: sum_a coef_a G[a, j].
    scalar_t dot = scalar_t(0);
    for (int64_t a = 0; a < K; ++a) dot += coef[a] * gram[a * K + j];
    const scalar_t norm_sq = gram[j * K + j];
    // A zero (or underflowed) g_j has nothing to project onto; the finiteness test keeps an extreme
    // ratio from turning into inf instead of being skipped.
    if (dot < scalar_t(0) && norm_sq > scalar_t(0)) {
      const scalar_t step_coef = dot / norm_sq;
      if (step_coef - step_coef == scalar_t(0)) coef[j] -= step_coef;
    }
  }
}

}  // namespace mtl_fast
