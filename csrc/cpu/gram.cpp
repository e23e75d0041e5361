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

// Columns per tile: the K rows of a tile are converted once into a float64 buffer of about 128 KiB
// (resident in L2) and every pair product then streams from it.
inline int64_t tile_cols(int64_t K) { return std::max<int64_t>(64, ((int64_t(1) << 14) / K) / 8 * 8); }

// Rows are processed in blocks of 4 so that each block pair keeps 16 accumulators in registers and loads
// 8 values per 16 products; K is padded with zero rows to a multiple of 4.
inline int64_t padded_rows(int64_t K) { return (K + 3) / 4 * 4; }

constexpr int kLanes = 8;

// Sums out[a][b] += <A[a], B[b]> over len columns; the lane accumulators are what the vectoriser maps onto
// SIMD registers, and the column order within a lane is fixed, so the result is reproducible.
MTL_CPU_CLONES void dot_block_4x4(const double* const* A, const double* const* B, int64_t len,
                                  double out[4][4]) {
  double s[4][4][kLanes] = {};
  int64_t t = 0;
  for (; t + kLanes <= len; t += kLanes) {
    for (int a = 0; a < 4; ++a)
      for (int b = 0; b < 4; ++b)
#pragma omp simd
        for (int l = 0; l < kLanes; ++l) s[a][b][l] += A[a][t + l] * B[b][t + l];
  }
  for (int a = 0; a < 4; ++a)
    for (int b = 0; b < 4; ++b) {
      double r = 0;
      for (int l = 0; l < kLanes; ++l) r += s[a][b][l];
      for (int64_t u = t; u < len; ++u) r += A[a][u] * B[b][u];
      out[a][b] = r;
    }
}

template <typename scalar_t>
void gram_range(const scalar_t* data, int64_t n, int64_t K, int64_t begin, int64_t end, double* buf,
                double* acc) {
  const int64_t T = tile_cols(K);
  const int64_t Kp = padded_rows(K);
  for (int64_t t0 = begin; t0 < end; t0 += T) {
    const int64_t len = std::min(T, end - t0);
    for (int64_t k = 0; k < Kp; ++k) {
      double* dst = buf + k * T;
      if (k >= K) {
        std::fill(dst, dst + len, 0.0);
        continue;
      }
      const scalar_t* row = data + k * n + t0;
#pragma omp simd
      for (int64_t t = 0; t < len; ++t) dst[t] = static_cast<double>(row[t]);
    }
    for (int64_t I = 0; I < Kp; I += 4)
      for (int64_t J = I; J < Kp; J += 4) {
        const double* A[4] = {buf + I * T, buf + (I + 1) * T, buf + (I + 2) * T, buf + (I + 3) * T};
        const double* B[4] = {buf + J * T, buf + (J + 1) * T, buf + (J + 2) * T, buf + (J + 3) * T};
        double block[4][4];
        dot_block_4x4(A, B, len, block);
        for (int64_t i = I; i < std::min(I + 4, K); ++i)
          for (int64_t j = std::max(i, J); j < std::min(J + 4, K); ++j) acc[pair_index(i, j, K)] += block[i - I][j - J];
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
    std::vector<double> buf(padded_rows(K) * tile_cols(K));
    for (int64_t r = first; r < last; ++r) {
      const ColumnRange& range = ranges[r];
      const at::Tensor& chunk = chunks[range.chunk];
      const int64_t n = chunk.numel() / K;
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, chunk.scalar_type(), "mtl_fast::gram", [&] {
        gram_range<scalar_t>(chunk.const_data_ptr<scalar_t>(), n, K, range.begin, range.end, buf.data(),
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
