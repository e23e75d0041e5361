// CPU weighted combination of a chunked Jacobian: out_c = sum_k w_k J_c[k], one pass, float64 accumulation.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "checks.h"
#include "cpu/column_ranges.h"
#include "cpu/simd.h"

namespace mtl_fast {
namespace {

constexpr int64_t kRangeCols = int64_t(1) << 15;

// Columns per block: the block's float64 accumulators (2 KiB) stay in L1 while the K rows stream through it
// one at a time; reading all K rows side by side instead would need K concurrent streams.
constexpr int64_t kBlockCols = 256;

template <typename scalar_t>
MTL_CPU_CLONES void combine_range(const scalar_t* data, int64_t n, int64_t K, const double* w, int64_t begin,
                                  int64_t end, scalar_t* out, bool accumulate) {
  constexpr int64_t kVecs = kBlockCols / 8;
  int64_t t0 = begin;
  for (; t0 + kBlockCols <= end; t0 += kBlockCols) {
    Vec8d acc[kVecs];
    for (int64_t v = 0; v < kVecs; ++v) acc[v] = accumulate ? load8(out + t0 + 8 * v) : Vec8d{};
    for (int64_t k = 0; k < K; ++k) {
      const scalar_t* row = data + k * n + t0;
      for (int64_t v = 0; v < kVecs; ++v) acc[v] += w[k] * load8(row + 8 * v);
    }
    for (int64_t v = 0; v < kVecs; ++v) store8(out + t0 + 8 * v, acc[v]);
  }
  for (int64_t t = t0; t < end; ++t) {
    double acc = accumulate ? static_cast<double>(out[t]) : 0.0;
    for (int64_t k = 0; k < K; ++k) acc += w[k] * static_cast<double>(data[k * n + t]);
    out[t] = static_cast<scalar_t>(acc);
  }
}

// Writes (or adds) the combination of every chunk into outs, which must be contiguous and of the
// chunk's dtype.
void combine_chunks(const std::vector<at::Tensor>& chunks, const at::Tensor& weights,
                    const std::vector<at::Tensor>& outs, bool accumulate) {
  const int64_t K = chunks[0].size(0);
  const at::Tensor w = weights.to(at::kDouble).contiguous();
  const double* wp = w.const_data_ptr<double>();
  const std::vector<ColumnRange> ranges = split_columns(chunks, kRangeCols);
  at::parallel_for(0, static_cast<int64_t>(ranges.size()), parallel_grain(K, kRangeCols), [&](int64_t first, int64_t last) {
    for (int64_t r = first; r < last; ++r) {
      const ColumnRange& range = ranges[r];
      const at::Tensor& chunk = chunks[range.chunk];
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, chunk.scalar_type(), "mtl_fast::combine", [&] {
        combine_range<scalar_t>(chunk.const_data_ptr<scalar_t>(), chunk.numel() / K, K, wp, range.begin,
                                range.end, outs[range.chunk].data_ptr<scalar_t>(), accumulate);
      });
    }
  });
}

std::vector<at::Tensor> combine_cpu(at::TensorList jac, const at::Tensor& weights) {
  const int64_t K = check_jacobian(jac, "jac");
  check_weights(weights, K, jac[0].device());
  const std::vector<at::Tensor> chunks = contiguous_chunks(jac);
  std::vector<at::Tensor> outs;
  outs.reserve(chunks.size());
  for (const at::Tensor& c : chunks) outs.push_back(at::empty(c.sizes().slice(1), c.options()));
  combine_chunks(chunks, weights, outs, /*accumulate=*/false);
  return outs;
}

void combine_into_cpu(at::TensorList jac, const at::Tensor& weights, at::TensorList out) {
  const int64_t K = check_jacobian(jac, "jac");
  check_weights(weights, K, jac[0].device());
  check_outputs(jac, out);
  // Outputs the kernel cannot write directly (other dtype or strides) get a temporary, added at the end.
  std::vector<at::Tensor> chunks = contiguous_chunks(jac);
  std::vector<at::Tensor> direct_chunks, direct_outs, staged_chunks, staged_outs;
  for (size_t c = 0; c < chunks.size(); ++c) {
    if (out[c].is_contiguous() && out[c].scalar_type() == chunks[c].scalar_type()) {
      direct_chunks.push_back(chunks[c]);
      direct_outs.push_back(out[c]);
    } else {
      staged_chunks.push_back(chunks[c]);
      staged_outs.push_back(at::empty(chunks[c].sizes().slice(1), chunks[c].options()));
    }
  }
  if (!direct_chunks.empty()) combine_chunks(direct_chunks, weights, direct_outs, /*accumulate=*/true);
  if (staged_chunks.empty()) return;
  combine_chunks(staged_chunks, weights, staged_outs, /*accumulate=*/false);
  size_t s = 0;
  for (size_t c = 0; c < chunks.size(); ++c) {
    if (!(out[c].is_contiguous() && out[c].scalar_type() == chunks[c].scalar_type())) out[c].add_(staged_outs[s++]);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(mtl_fast, CPU, m) {
  m.impl("combine", &combine_cpu);
  m.impl("combine_into", &combine_into_cpu);
}

}  // namespace mtl_fast
