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

}  // namespace mtl_fast

namespace mtl_fast {

// Index of entry (i, j), i <= j, in the row-major packed upper triangle of a K x K symmetric matrix.
MTL_HD inline int64_t pair_index(int64_t i, int64_t j, int64_t K) { return i * K - i * (i - 1) / 2 + (j - i); }

}  // namespace mtl_fast
