// CPU Gram matrix of a chunked Jacobian: one pass over J, all K(K+1)/2 products, float64 accumulation.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "checks.h"
#include "cpu/column_ranges.h"
#include "cpu/simd.h"
#include "kernels/common.h"

namespace mtl_fast {
namespace {

// Columns per parallel work item: coarse enough to amortise the per-item partial Gram.
constexpr int64_t kRangeCols = int64_t(1) << 15;

// Rows are processed in blocks of 4: each block pair keeps 16 accumulators of 8 float64 lanes in registers
// and converts 8 loaded values per 16 products. A partial block repeats row K-1 and ignores its products.
constexpr int64_t kBlockRows = 4;

// Columns per pass over the block pairs: the K rows of a tile stay in L2 while every pair reads them.
constexpr int64_t kTileCols = 2048;

// out[a][b] = <A[a], B[b]> over len columns, in float64. The column order within a lane is fixed, so the
// result is reproducible.
template <typename scalar_t>
MTL_CPU_CLONES void dot_block_4x4(const scalar_t* const* A, const scalar_t* const* B, int64_t len,
                                  double out[4][4]) {
  Vec8d s[4][4] = {};
  int64_t t = 0;
  for (; t + 8 <= len; t += 8) {
    Vec8d a[4], b[4];
    for (int r = 0; r < 4; ++r) {
      a[r] = load8(A[r] + t);
      b[r] = load8(B[r] + t);
    }
    for (int x = 0; x < 4; ++x)
      for (int y = 0; y < 4; ++y) s[x][y] += a[x] * b[y];
  }
  for (int x = 0; x < 4; ++x)
    for (int y = 0; y < 4; ++y) {
      double r = sum_lanes(s[x][y]);
      for (int64_t u = t; u < len; ++u) r += static_cast<double>(A[x][u]) * static_cast<double>(B[y][u]);
      out[x][y] = r;
    }
}

template <typename scalar_t>
void gram_range(const scalar_t* data, int64_t n, int64_t K, int64_t begin, int64_t end, double* acc) {
  for (int64_t t0 = begin; t0 < end; t0 += kTileCols) {
    const int64_t len = std::min(kTileCols, end - t0);
    for (int64_t I = 0; I < K; I += kBlockRows)
      for (int64_t J = I; J < K; J += kBlockRows) {
        const scalar_t* A[4];
        const scalar_t* B[4];
        for (int r = 0; r < 4; ++r) {
          A[r] = data + std::min(I + r, K - 1) * n + t0;
          B[r] = data + std::min(J + r, K - 1) * n + t0;
        }
        double block[4][4];
        dot_block_4x4(A, B, len, block);
        for (int64_t i = I; i < std::min(I + kBlockRows, K); ++i)
          for (int64_t j = std::max(i, J); j < std::min(J + kBlockRows, K); ++j)
            acc[pair_index(i, j, K)] += block[i - I][j - J];
      }
  }
}

at::Tensor gram_cpu(at::TensorList jac) {
  const int64_t K = check_jacobian(jac, "jac");
  const std::vector<at::Tensor> chunks = contiguous_chunks(jac);
  const std::vector<ColumnRange> ranges = split_columns(chunks, kRangeCols);
  const int64_t pairs = num_pairs(K);
  std::vector<double> partial(ranges.size() * pairs, 0.0);

  at::parallel_for(0, static_cast<int64_t>(ranges.size()), 1, [&](int64_t first, int64_t last) {
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
