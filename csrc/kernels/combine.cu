// Weighted combination of a chunked Jacobian, out_c (+)= sum_k w_k J_c[k], for every chunk in one launch
// (one per dtype and per kMaxChunksPerLaunch chunks). Each thread owns a group of columns of one chunk,
// reads its K rows there and writes the output once: one read of J, one write (plus one read when
// accumulating) of the output. float64 accumulation as on the CPU: PCGrad weights can reach 1e60 where a
// task gradient is tiny, and their products only stay finite in double.
#include "kernels/launch_kernel.cuh"
#include "kernels/multi_tensor.cuh"

namespace mtl_fast {
namespace cuda {
namespace {

template <typename T, int N>
__device__ __forceinline__ void combine_columns(const ChunkSpan& span, int64_t col, int64_t K,
                                                const double* __restrict__ weights) {
  const T* src = static_cast<const T*>(span.jac) + col;
  T* dst = static_cast<T*>(span.out) + col;
  double acc[N];
  if (span.accumulate) {
    const Pack<T, N> prior = load_pack<T, N>(dst);
#pragma unroll
    for (int n = 0; n < N; ++n) acc[n] = to_double(prior.v[n]);
  } else {
#pragma unroll
    for (int n = 0; n < N; ++n) acc[n] = 0.0;
  }
  // Unrolled so that several rows' loads are in flight before the first product needs one.
#pragma unroll 8
  for (int64_t k = 0; k < K; ++k) {
    const Pack<T, N> row = load_pack<T, N>(src + k * span.cols);
    const double w = __ldg(weights + k);
#pragma unroll
    for (int n = 0; n < N; ++n) acc[n] = fma(w, to_double(row.v[n]), acc[n]);
  }
  Pack<T, N> result;
#pragma unroll
  for (int n = 0; n < N; ++n) result.v[n] = from_double<T>(acc[n]);
  *reinterpret_cast<Pack<T, N>*>(dst) = result;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    combine_kernel(const __grid_constant__ ChunkTable table, int64_t K, const double* __restrict__ weights) {
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t threads = static_cast<int64_t>(gridDim.x) * kThreads;
  for_each_item<T>(table, thread, threads, [&](const ChunkSpan& span, int64_t col, auto width) {
    combine_columns<T, decltype(width)::value>(span, col, K, weights);
  });
}

}  // namespace

void combine_launch(const Chunk* chunks, int64_t num_chunks, int64_t K, const double* weights,
                    cudaStream_t stream) {
  for (const Batch& batch : make_batches(chunks, num_chunks)) {
    dispatch_dtype(batch.dtype, [&](auto tag) {
      const auto kernel = combine_kernel<decltype(tag)>;
      const int64_t resident = resident_blocks(reinterpret_cast<const void*>(kernel));
      const int64_t blocks = std::max<int64_t>(1, std::min(ceil_div(batch.items, kThreads), resident));
      launch_kernel(kernel, static_cast<unsigned>(blocks), kThreads, stream, batch.table, K, weights);
    });
  }
}

}  // namespace cuda
}  // namespace mtl_fast
