// What the multi-chunk kernels share: the chunk table passed by value to each launch, the split of a chunk
// list into launches, per-thread work assignment, vector access and float64 conversion of every dtype.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/launch.h"

namespace mtl_fast {
namespace cuda {

// Small blocks: the Gram kernels hold up to ~170 registers a thread, and 128-thread blocks still fill an SM
// with 12 warps there, where 256-thread blocks would leave it at 8.
constexpr int kThreads = 128;
// One 16-byte access per row and thread: the widest global load, and what keeps enough bytes in flight.
constexpr int kVectorBytes = 16;

template <typename T, int kBytes = kVectorBytes>
__host__ __device__ constexpr int vector_width() {
  return kBytes / static_cast<int>(sizeof(T));
}

inline int element_size(Dtype dtype) {
  switch (dtype) {
    case Dtype::kDouble: return 8;
    case Dtype::kFloat: return 4;
    default: return 2;
  }
}

// Calls f(T{}) with T the C++ type of dtype.
template <typename F>
void dispatch_dtype(Dtype dtype, F&& f) {
  switch (dtype) {
    case Dtype::kFloat: f(float{}); break;
    case Dtype::kDouble: f(double{}); break;
    case Dtype::kHalf: f(__half{}); break;
    case Dtype::kBFloat16: f(__nv_bfloat16{}); break;
  }
}

// A chunk as one launch sees it. Its columns are cut into items: groups of vector_width columns when every
// row (and the output) is 16-byte aligned, single columns otherwise.
struct ChunkSpan {
  const void* jac;
  void* out;
  int64_t cols;
  int64_t first_item;  // items of the chunks before this one: where its work starts in the thread rotation
  int32_t vectorised;
  int32_t accumulate;
};

// Chunks per launch: the table is a by-value kernel argument, and kernel arguments are kept under the
// 4 KiB every CUDA version accepts. Longer lists take several launches.
constexpr int kMaxChunksPerLaunch = 96;

struct ChunkTable {
  ChunkSpan span[kMaxChunksPerLaunch];
  int32_t count;
};
static_assert(sizeof(ChunkTable) <= 3900, "ChunkTable plus the other kernel arguments must fit in 4 KiB");

// The chunks of one dtype that go into one launch.
struct Batch {
  Dtype dtype;
  ChunkTable table;
  int64_t items;
};

inline bool aligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % kVectorBytes == 0; }

// Groups the nonempty chunks by dtype, then cuts each group into launches of at most kMaxChunksPerLaunch.
inline std::vector<Batch> make_batches(const Chunk* chunks, int64_t num_chunks) {
  std::vector<Batch> batches;
  for (Dtype dtype : {Dtype::kFloat, Dtype::kDouble, Dtype::kHalf, Dtype::kBFloat16}) {
    const int64_t width = kVectorBytes / element_size(dtype);
    size_t current = batches.size();  // none open yet for this dtype
    for (int64_t c = 0; c < num_chunks; ++c) {
      const Chunk& chunk = chunks[c];
      if (chunk.dtype != dtype || chunk.cols == 0) continue;
      if (current == batches.size() || batches[current].table.count == kMaxChunksPerLaunch) {
        current = batches.size();
        batches.push_back(Batch{dtype, ChunkTable{}, 0});
      }
      Batch& batch = batches[current];
      const bool vectorised =
          chunk.cols % width == 0 && aligned(chunk.jac) && (chunk.out == nullptr || aligned(chunk.out));
      batch.table.span[batch.table.count++] = ChunkSpan{chunk.jac, chunk.out, chunk.cols, batch.items,
                                                        vectorised, chunk.accumulate};
      batch.items += vectorised ? chunk.cols / width : chunk.cols;
    }
  }
  return batches;
}

// Blocks that fill the current device once (one wave) for this kernel, so no block waits for a tail wave.
// Cached per device and kernel: the answer never changes, and small models launch often.
inline int64_t resident_blocks(const void* kernel) {
  static std::mutex mutex;
  static std::map<std::pair<int, const void*>, int64_t> cache;
  int device = 0;
  cudaGetDevice(&device);
  const std::lock_guard<std::mutex> lock(mutex);
  auto found = cache.find({device, kernel});
  if (found != cache.end()) return found->second;
  int sms = 1, per_sm = 1;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, 0);
  const int64_t blocks = static_cast<int64_t>(std::max(sms, 1)) * std::max(per_sm, 1);
  cache.emplace(std::make_pair(device, kernel), blocks);
  return blocks;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// N consecutive values of one row, loaded or stored in one access.
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <typename T, int N>
__device__ __forceinline__ Pack<T, N> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, N>*>(p);
}

__device__ __forceinline__ double to_double(float x) { return x; }
__device__ __forceinline__ double to_double(double x) { return x; }
__device__ __forceinline__ double to_double(__half x) { return __half2float(x); }
__device__ __forceinline__ double to_double(__nv_bfloat16 x) { return __bfloat162float(x); }

// float32 of every narrower dtype is exact (the float32 products of the Gram kernel); double has no such use.
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_double(double x);
template <>
__device__ __forceinline__ float from_double<float>(double x) { return __double2float_rn(x); }
template <>
__device__ __forceinline__ double from_double<double>(double x) { return x; }
template <>
__device__ __forceinline__ __half from_double<__half>(double x) { return __double2half(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_double<__nv_bfloat16>(double x) { return __double2bfloat16(x); }

// Runs f(span, first_column, std::integral_constant<int, N>{}) for every item of the table that falls to
// `thread` out of `threads`: N = vector_width<T, kBytes>() columns for vectorised chunks (kBytes <= 16 for
// kernels that cannot hold 16 bytes of every row they read), 1 otherwise. Each chunk's items start where the
// previous chunk's stopped in the rotation over threads, so a list of many small chunks spreads over the
// whole grid instead of piling onto its first threads.
template <typename T, int kBytes = kVectorBytes, typename F>
__device__ __forceinline__ void for_each_item(const ChunkTable& table, int64_t thread, int64_t threads, F&& f) {
  static_assert(kVectorBytes % kBytes == 0, "a vectorised chunk must be aligned for this width too");
  constexpr int kWidth = vector_width<T, kBytes>();
  for (int c = 0; c < table.count; ++c) {
    const ChunkSpan& span = table.span[c];
    const int64_t start = (thread + threads - span.first_item % threads) % threads;
    if (span.vectorised) {
      const int64_t items = span.cols / kWidth;
      for (int64_t item = start; item < items; item += threads)
        f(span, item * kWidth, std::integral_constant<int, kWidth>{});
    } else {
      for (int64_t col = start; col < span.cols; col += threads) f(span, col, std::integral_constant<int, 1>{});
    }
  }
}

}  // namespace cuda
}  // namespace mtl_fast
