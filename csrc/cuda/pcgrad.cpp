// CUDA binding of pcgrad_weights. Unlike the CPU op it cannot check that every row of orders is a
// permutation without copying orders to the host (a sync, and no CUDA-graph capture); the kernel skips
// out-of-range entries instead, so a malformed order never reads out of bounds.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "checks.h"
#include "kernels/launch.h"

namespace mtl_fast {
namespace {

at::Tensor pcgrad_weights_cuda(const at::Tensor& gram, const at::Tensor& orders) {
  const int64_t K = check_pcgrad_inputs(gram, orders);
  const c10::cuda::CUDAGuard guard(gram.device());
  const at::Tensor G = gram.to(at::kDouble).contiguous();
  const at::Tensor ord = orders.contiguous();
  at::Tensor coef = at::empty({K, K}, G.options());
  at::Tensor weights = at::empty({K}, G.options());
  cuda::pcgrad_weights_launch(G.const_data_ptr<double>(), ord.const_data_ptr<int64_t>(), K,
                              coef.data_ptr<double>(), weights.data_ptr<double>(),
                              c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return weights;
}

}  // namespace

TORCH_LIBRARY_IMPL(mtl_fast, CUDA, m) { m.impl("pcgrad_weights", &pcgrad_weights_cuda); }

}  // namespace mtl_fast
