// Host entry points of the CUDA kernels: raw pointers, sizes and a stream, no torch. The bindings in
// csrc/cuda/ turn tensors into these arguments; the kernels themselves live in csrc/kernels/*.cu.
//
// Every entry point only enqueues work on `stream` (no host synchronisation, no allocation), so a sequence
// of them can be captured in a CUDA graph. Launch errors are left for the caller to collect with
// cudaGetLastError (the bindings use C10_CUDA_KERNEL_LAUNCH_CHECK).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace mtl_fast {
namespace cuda {

enum class Dtype { kFloat, kDouble, kHalf, kBFloat16 };

// One chunk of a Jacobian: a contiguous row-major K x cols matrix of `dtype`. For combine, `out` holds cols
// values of the same dtype, overwritten or (accumulate) added to; gram ignores both fields. Chunks with
// cols == 0 are allowed and skipped.
struct Chunk {
  const void* jac;
  void* out;
  int64_t cols;
  Dtype dtype;
  bool accumulate;
};

// Size, in doubles, of the scratch gram_launch needs for these chunks on the current device.
int64_t gram_workspace_size(const Chunk* chunks, int64_t num_chunks, int64_t K);

// out (K x K, float64, row-major) = J J^T over all chunks, J_c[a] . J_c[b] accumulated in float64. The
// reduction order depends only on the shapes and the device, never on timing: same input, same bits.
void gram_launch(const Chunk* chunks, int64_t num_chunks, int64_t K, double* workspace, double* out,
                 cudaStream_t stream);

// PCGrad weights (K,) from the float64 Gram matrix (K x K) and the visiting orders (K x (K-1), int64),
// through the same source as the CPU op (kernels/pcgrad.h). coef is K x K doubles of scratch.
void pcgrad_weights_launch(const double* gram, const int64_t* orders, int64_t K, double* coef,
                           double* weights, cudaStream_t stream);

// out_c (+)= sum_k weights[k] J_c[k] for every chunk, float64 accumulation; weights: K doubles on the device.
void combine_launch(const Chunk* chunks, int64_t num_chunks, int64_t K, const double* weights,
                    cudaStream_t stream);

}  // namespace cuda
}  // namespace mtl_fast
