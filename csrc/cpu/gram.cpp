// CPU Gram matrix of a chunked Jacobian: one pass over J, all K(K+1)/2 products.
//
// Accumulation: every tile's sums are added up in float64. Within a tile, float32 input is multiplied and
// summed in float32 (twice the SIMD width of float64) whenever the tile's rows pass the range rule of
// kernels/common.h (no product or sum can overflow and no product that matters can underflow); otherwise, and
// for every other dtype, the tile is computed in float64. So gradients at 1e-30 or 1e30 stay exact in scale,
// and ordinary ones take the fast path.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "cpu/column_ranges.h"
#include "cpu/simd.h"
#include "kernels/common.h"

namespace mtl_fast {
namespace {

// Columns per parallel work item: coarse enough to amortise the per-item partial Gram.
constexpr int64_t kRangeCols = int64_t(1) << 15;

// Rows are processed in blocks of 4: each block pair keeps 16 vector accumulators in registers and loads 8
// vectors per 16 products. A partial block repeats row K-1 and ignores its products.
constexpr int64_t kBlockRows = 4;

// Columns per pass over the block pairs: the K rows of a tile stay in L2 while every pair reads them. A float32
// tile's sums are lane sums of Vec16f: kFloat32Terms products to each lane (kernels/common.h).
constexpr int64_t kTileCols = 16 * kFloat32Terms;

// out[x][y] = <A[x], B[y]> over len columns, summed in Vec's lanes (float64: Vec8d, or float32: Vec16f, whose
// lane sums cover at most kTileCols / 16 products) and totalled in float64. The column order within a lane is
// fixed, so the result is reproducible. A diagonal block (A == B) computes only its upper triangle.
template <typename Vec, bool kDiagonal, typename scalar_t>
MTL_CPU_CLONES void dot_block_4x4(const scalar_t* const* A, const scalar_t* const* B, int64_t len,
                                  double out[4][4]) {
  constexpr int kLanes = lanes_of<Vec>();
  Vec s[4][4] = {};
  int64_t t = 0;
  for (; t + kLanes <= len; t += kLanes) {
    Vec a[4], b[4];
    for (int r = 0; r < 4; ++r) {
      a[r] = load_lanes<Vec>(A[r] + t);
      b[r] = kDiagonal ? a[r] : load_lanes<Vec>(B[r] + t);
    }
    for (int x = 0; x < 4; ++x)
      for (int y = kDiagonal ? x : 0; y < 4; ++y) s[x][y] += a[x] * b[y];
  }
  for (int x = 0; x < 4; ++x)
    for (int y = kDiagonal ? x : 0; y < 4; ++y) {
      double r = sum_lanes(s[x][y]);
      for (int64_t u = t; u < len; ++u) r += static_cast<double>(A[x][u]) * static_cast<double>(B[y][u]);
      out[x][y] = r;
    }
}

// Whether float32 arithmetic is safe for these rows by the range rule of kernels/common.h.
MTL_CPU_CLONES bool fits_float32(const float* const* rows, int64_t K, int64_t len) {
  for (int64_t k = 0; k < K; ++k) {
    // NaNs compare false and are skipped here; either path propagates them into the sums alike.
    Vec16f m = {};
    int64_t t = 0;
    for (; t + 16 <= len; t += 16) {
      const Vec16f v = abs16(load16(rows[k] + t));
      m = v > m ? v : m;
    }
    float row_max = 0.0f;
    for (int l = 0; l < 16; ++l) row_max = std::max(row_max, m[l]);
    for (; t < len; ++t) row_max = std::max(row_max, std::fabs(rows[k][t]));
    if (!float32_products_fit(row_max)) return false;
  }
  return true;
}

// Adds a block's products to the packed upper triangle, dropping those of padding rows and below the diagonal.
void accumulate_block(const double block[4][4], int64_t K, int64_t I, int64_t J, double* acc) {
  for (int64_t i = I; i < std::min(I + kBlockRows, K); ++i)
    for (int64_t j = std::max(i, J); j < std::min(J + kBlockRows, K); ++j) acc[pair_index(i, j, K)] += block[i - I][j - J];
}

template <typename scalar_t>
void add_block(const scalar_t* data, int64_t n, int64_t K, int64_t t0, int64_t len, int64_t I, int64_t J,
               bool float32, double* acc) {
  const scalar_t* A[4];
  const scalar_t* B[4];
  for (int r = 0; r < 4; ++r) {
    A[r] = data + std::min(I + r, K - 1) * n + t0;
    B[r] = data + std::min(J + r, K - 1) * n + t0;
  }
  double block[4][4];
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (float32) {
      I == J ? dot_block_4x4<Vec16f, true>(A, B, len, block) : dot_block_4x4<Vec16f, false>(A, B, len, block);
      return accumulate_block(block, K, I, J, acc);
    }
  }
  I == J ? dot_block_4x4<Vec8d, true>(A, B, len, block) : dot_block_4x4<Vec8d, false>(A, B, len, block);
  accumulate_block(block, K, I, J, acc);
}

template <typename scalar_t>
void gram_range(const scalar_t* data, int64_t n, int64_t K, int64_t begin, int64_t end, double* acc) {
  std::vector<const float*> rows;
  for (int64_t t0 = begin; t0 < end; t0 += kTileCols) {
    const int64_t len = std::min(kTileCols, end - t0);
    bool float32 = false;
    if constexpr (std::is_same_v<scalar_t, float>) {
      rows.resize(K);
      for (int64_t k = 0; k < K; ++k) rows[k] = data + k * n + t0;
      float32 = fits_float32(rows.data(), K, len);  // also brings the tile into cache for the products
    }
    for (int64_t I = 0; I < K; I += kBlockRows)
      for (int64_t J = I; J < K; J += kBlockRows) add_block(data, n, K, t0, len, I, J, float32, acc);
  }
}

at::Tensor gram_cpu(at::TensorList jac) {
  const int64_t K = check_jacobian(jac, "jac");
  const std::vector<at::Tensor> chunks = contiguous_chunks(jac);
  const std::vector<ColumnRange> ranges = split_columns(chunks, kRangeCols);
  const int64_t pairs = num_pairs(K);
  std::vector<double> partial(ranges.size() * pairs, 0.0);

  at::parallel_for(0, static_cast<int64_t>(ranges.size()), parallel_grain(K, kRangeCols), [&](int64_t first, int64_t last) {
    for (int64_t r = first; r < last; ++r) {
      const ColumnRange& range = ranges[r];
      const at::Tensor& chunk = chunks[range.chunk];
      const int64_t n = chunk.numel() / K;
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, chunk.scalar_type(), "mtl_fast::gram", [&] {
        gram_range<scalar_t>(chunk.const_data_ptr<scalar_t>(), n, K, range.begin, range.end,
                             partial.data() + r * pairs);
      });
    }
  });

  // Second stage in a fixed order: same input, same bits.
  at::Tensor out = at::zeros({K, K}, jac[0].options().dtype(at::kDouble));
  double* G = out.data_ptr<double>();
  for (size_t r = 0; r < ranges.size(); ++r)
    for (int64_t i = 0; i < K; ++i)
      for (int64_t j = i; j < K; ++j) G[i * K + j] += partial[r * pairs + pair_index(i, j, K)];
  for (int64_t i = 0; i < K; ++i)
    for (int64_t j = i + 1; j < K; ++j) G[j * K + i] = G[i * K + j];
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mtl_fast, CPU, m) { m.impl("gram", &gram_cpu); }

}  // namespace mtl_fast
