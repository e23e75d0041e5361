// CPU Gram matrix of a chunked Jacobian: one pass over J, all K(K+1)/2 products, float64 accumulation.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "checks.h"
#include "cpu/column_ranges.h"
#include "kernels/common.h"

namespace mtl_fast {
namespace {

// Columns per parallel work item: coarse enough to amortise the per-item partial Gram.
constexpr int64_t kRangeCols = int64_t(1) << 15;

// Columns per tile: the K rows of a tile are converted once into a float64 buffer of about 128 KiB
// (resident in L2) and every pair product then streams from it.
inline int64_t tile_cols(int64_t K) { return std::max<int64_t>(64, ((int64_t(1) << 14) / K) / 8 * 8); }

template <typename scalar_t>
void gram_range(const scalar_t* data, int64_t n, int64_t K, int64_t begin, int64_t end, double* buf,
                double* acc) {
  const int64_t T = tile_cols(K);
  for (int64_t t0 = begin; t0 < end; t0 += T) {
    const int64_t len = std::min(T, end - t0);
    for (int64_t k = 0; k < K; ++k) {
      const scalar_t* row = data + k * n + t0;
      double* dst = buf + k * T;
#pragma omp simd
      for (int64_t t = 0; t < len; ++t) dst[t] = static_cast<double>(row[t]);
    }
    for (int64_t i = 0; i < K; ++i) {
      const double* a = buf + i * T;
      int64_t j = i;
      // Four pairs at a time: row i is loaded once per four products.
      for (; j + 4 <= K; j += 4) {
        const double* b0 = buf + j * T;
        const double* b1 = b0 + T;
        const double* b2 = b1 + T;
        const double* b3 = b2 + T;
        double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
        for (int64_t t = 0; t < len; ++t) {
          s0 += a[t] * b0[t];
          s1 += a[t] * b1[t];
          s2 += a[t] * b2[t];
          s3 += a[t] * b3[t];
        }
        const int64_t p = pair_index(i, j, K);
        acc[p] += s0;
        acc[p + 1] += s1;
        acc[p + 2] += s2;
        acc[p + 3] += s3;
      }
      for (; j < K; ++j) {
        const double* b = buf + j * T;
        double s = 0;
#pragma omp simd reduction(+ : s)
        for (int64_t t = 0; t < len; ++t) s += a[t] * b[t];
        acc[pair_index(i, j, K)] += s;
      }
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
    std::vector<double> buf(K * tile_cols(K));
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
