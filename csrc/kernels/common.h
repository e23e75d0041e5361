// Shared by the CPU and CUDA builds: no torch, no CUDA runtime headers.
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define MTL_HD __host__ __device__
#else
#define MTL_HD
#endif

namespace mtl_fast {

// Number of distinct entries of a symmetric K x K matrix (the upper triangle with the diagonal).
MTL_HD inline int64_t num_pairs(int64_t K) { return K * (K + 1) / 2; }

// Whether every entry of the K x K Gram matrix G is finite. The weights of a G with a NaN or infinite entry (an
// overflowed or NaN gradient) are all NaN in every op, and GradVac's state is left as it was, rather than
// whatever the method would make of it. x - x is 0 for finite x and NaN otherwise.
template <typename scalar_t>
MTL_HD bool gram_is_finite(const scalar_t* G, int64_t K) {
  int64_t non_finite = 0;
  for (int64_t e = 0; e < K * K; ++e) non_finite |= !(G[e] - G[e] == scalar_t(0));
  return non_finite == 0;
}

// Weight j of the update sum_i g_i' of the methods that adjust each task's gradient on coefficients (PCGrad,
// GradVac): coef is K x K row-major, row i the coefficients of g_i' = sum_a coef[i][a] g_a, so w_j = sum_i
// coef[i][j]. Summed in the order i = 0, 1, ...: the same bits on every device and for any thread count.
template <typename scalar_t>
MTL_HD scalar_t combined_weight(const scalar_t* coef, int64_t K, int64_t j) {
  scalar_t total = scalar_t(0);
  for (int64_t i = 0; i < K; ++i) total += coef[i * K + j];
  return total;
}

// The range rule of the Gram kernels (CPU and CUDA): float32 values may be multiplied and summed in float32, at
// most kFloat32Terms products to a sum that is then added to a float64 total, when each row they come from is
// all zeros or has its largest magnitude m (over the columns in question) in [2^-48, 2^56]. Then no product
// exceeds 2^112 and no such sum 2^119 (< FLT_MAX), and a product lost to underflow (below 2^-126) is under
// 2^-30 of m_a m_b <= |a| |b|, less than the rounding error float32 sums have anyway. Gradients near 1e+-30
// fail the rule and take float64 products, so they stay exact in scale.
constexpr int kFloat32Terms = 128;

MTL_HD inline bool float32_products_fit(float largest_magnitude) {
  return largest_magnitude == 0.0f || (largest_magnitude >= 0x1p-48f && largest_magnitude <= 0x1p56f);
}

}  // namespace mtl_fast

namespace mtl_fast {

// Index of entry (i, j), i <= j, in the row-major packed upper triangle of a K x K symmetric matrix.
MTL_HD inline int64_t pair_index(int64_t i, int64_t j, int64_t K) { return i * K - i * (i - 1) / 2 + (j - i); }

}  // namespace mtl_fast
