// Work splitting for the multi-chunk CPU kernels.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <vector>

namespace mtl_fast {

// A slice [begin, end) of the columns of chunk `chunk` (each chunk viewed as K x n).
struct ColumnRange {
  int64_t chunk;
  int64_t begin;
  int64_t end;
};

// Cuts every chunk into ranges of at most max_cols columns. The cut depends on the shapes alone, never on
// the thread count, which is what makes the reductions bitwise reproducible.
inline std::vector<ColumnRange> split_columns(const std::vector<at::Tensor>& chunks, int64_t max_cols) {
  std::vector<ColumnRange> ranges;
  for (size_t c = 0; c < chunks.size(); ++c) {
    const int64_t n = chunks[c].size(0) == 0 ? 0 : chunks[c].numel() / chunks[c].size(0);
    for (int64_t begin = 0; begin < n; begin += max_cols)
      ranges.push_back({static_cast<int64_t>(c), begin, std::min(n, begin + max_cols)});
  }
  return ranges;
}

// Ranges per parallel task so that each thread gets at least ~256K elements: below that a parallel region costs
// more than it saves.
inline int64_t parallel_grain(int64_t K, int64_t max_cols) {
  constexpr int64_t kMinElementsPerThread = int64_t(1) << 18;
  return std::max<int64_t>(1, kMinElementsPerThread / std::max<int64_t>(1, K * max_cols));
}

}  // namespace mtl_fast
