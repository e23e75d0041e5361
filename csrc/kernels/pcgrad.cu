// PCGrad weights on the device: the same coefficient recurrence as the CPU op (kernels/pcgrad.h), one thread
// per task in a single block, so nothing leaves the GPU and the launch can be captured in a CUDA graph.
#include <math_constants.h>

#include "kernels/launch.h"
#include "kernels/launch_kernel.cuh"
#include "kernels/pcgrad.h"

namespace mtl_fast {
namespace cuda {
namespace {

constexpr int kMaxThreads = 256;

// coef: K x K scratch, row i = coefficients of g_i^PC.
__global__ void __launch_bounds__(kMaxThreads)
    pcgrad_weights_kernel(const double* gram, const int64_t* orders, int64_t K, double* coef, double* weights) {
  for (int64_t i = threadIdx.x; i < K; i += blockDim.x)
    pcgrad_row_coefficients(gram, orders + i * (K - 1), K, i, coef + i * K);
  __syncthreads();
  const bool finite = gram_is_finite(gram, K);
  for (int64_t a = threadIdx.x; a < K; a += blockDim.x) weights[a] = finite ? combined_weight(coef, K, a) : CUDART_NAN;
}

}  // namespace

void pcgrad_weights_launch(const double* gram, const int64_t* orders, int64_t K, double* coef,
                           double* weights, cudaStream_t stream) {
  const int64_t warps = (K + 31) / 32;
  const int threads = static_cast<int>(warps * 32 < kMaxThreads ? warps * 32 : kMaxThreads);
  launch_kernel(pcgrad_weights_kernel, 1, threads, stream, gram, orders, K, coef, weights);
}

}  // namespace cuda
}  // namespace mtl_fast
