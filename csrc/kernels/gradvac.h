// GradVac (Wang et al. 2021, "Gradient Vaccine", Algorithm 1) on coefficients, as PCGrad in kernels/pcgrad.h:
// every adjusted gradient stays a combination g_i^GV = sum_a c_ia g_a of the original task gradients, and all the
// algorithm reads are dot products with an original g_j, so it runs on the Gram matrix G = J J^T alone. Each task's
// row evolves on its own (its own visiting order and its own row of EMA targets), so rows can run in parallel.
// The step is mtl_fast.aggregators.GradVac's torch path, entry for entry.
#pragma once

#include <cmath>

#include "kernels/common.h"

namespace mtl_fast {

MTL_HD inline double clamp_unit(double x) { return x < -1.0 ? -1.0 : (x > 1.0 ? 1.0 : x); }  // NaN stays NaN

MTL_HD inline double sqrt_nonneg(double x) { return std::sqrt(x > 0.0 ? x : 0.0); }

// Task i's coefficients and its row of updated EMA targets.
//   gram:        K x K row-major float64
//   order:       the K-1 other tasks in the order task i visits them (entries equal to i or outside [0, K) are
//                skipped, so a malformed order never reads out of bounds)
//   phi_hat_row: task i's EMA targets phi_hat[i, :] before this step; phi_hat_out: after it (K values each)
//   coef:        out, K values
// |g_i^GV|^2 = c G c^T is kept up to date as c changes (one coefficient per step), so a step costs O(K).
template <typename index_t>
MTL_HD void gradvac_row(const double* gram, const index_t* order, int64_t K, int64_t i, double beta,
                        const double* phi_hat_row, double* phi_hat_out, double* coef) {
  for (int64_t a = 0; a < K; ++a) {
    coef[a] = 0.0;
    phi_hat_out[a] = phi_hat_row[a];
  }
  coef[i] = 1.0;
  double norm_sq = gram[i * K + i];
  for (int64_t step = 0; step + 1 < K; ++step) {
    const int64_t j = static_cast<int64_t>(order[step]);
    if (j < 0 || j >= K || j == i) continue;
    double dot = 0.0;  // g_i^GV . g_j for the ORIGINAL g_j
    for (int64_t a = 0; a < K; ++a) dot += coef[a] * gram[a * K + j];
    const double norm_i = sqrt_nonneg(norm_sq), norm_j = sqrt_nonneg(gram[j * K + j]);
    const double denom = norm_i * norm_j;
    const bool valid = denom > 0.0;  // a zero (or underflowed) gradient has no angle to adjust
    const double phi = valid ? clamp_unit(dot / denom) : 0.0;
    const double target = phi_hat_row[j];
    const double target_sine = sqrt_nonneg(1.0 - target * target);
    const double step_denom = norm_j * target_sine;
    if (valid && phi < target && step_denom > 0.0) {
      // Raise the cosine to the target: g_i += |g_i| (target sqrt(1 - phi^2) - phi sqrt(1 - target^2))
      //                                          / (|g_j| sqrt(1 - target^2)) g_j
      const double add = norm_i * (target * sqrt_nonneg(1.0 - phi * phi) - phi * target_sine) / step_denom;
      coef[j] += add;
      norm_sq += 2.0 * add * dot + add * add * gram[j * K + j];
    }
    phi_hat_out[j] = valid ? (1.0 - beta) * target + beta * phi : target;
  }
}

}  // namespace mtl_fast
