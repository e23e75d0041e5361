// CUDA bindings of combine and combine_into: one kernel launch (per dtype) for all chunks.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "checks.h"
#include "cuda/chunks.h"

namespace mtl_fast {
namespace {

void launch_combine(const std::vector<cuda::Chunk>& args, int64_t K, const at::Tensor& weights) {
  const at::Tensor w = weights.to(at::kDouble).contiguous();
  cuda::combine_launch(args.data(), static_cast<int64_t>(args.size()), K, w.const_data_ptr<double>(),
                       c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::vector<at::Tensor> combine_cuda(at::TensorList jac, const at::Tensor& weights) {
  const int64_t K = check_jacobian(jac, "jac");
  check_weights(weights, K, jac[0].device());
  const c10::cuda::CUDAGuard guard(jac[0].device());
  const std::vector<at::Tensor> chunks = contiguous_chunks(jac);
  std::vector<at::Tensor> outs;
  std::vector<cuda::Chunk> args;
  for (size_t c = 0; c < chunks.size(); ++c) {
    outs.push_back(at::empty(chunks[c].sizes().slice(1), chunks[c].options()));
    args.push_back(kernel_chunk(chunks[c], c, outs.back().data_ptr()));
  }
  launch_combine(args, K, weights);
  return outs;
}

void combine_into_cuda(at::TensorList jac, const at::Tensor& weights, at::TensorList out) {
  const int64_t K = check_jacobian(jac, "jac");
  check_weights(weights, K, jac[0].device());
  check_outputs(jac, out);
  const c10::cuda::CUDAGuard guard(jac[0].device());
  const std::vector<at::Tensor> chunks = contiguous_chunks(jac);
  // An output the kernel cannot accumulate onto directly (other dtype or strides) gets a temporary that
  // the same launch fills, added to it afterwards.
  std::vector<at::Tensor> staged(chunks.size());
  std::vector<cuda::Chunk> args;
  for (size_t c = 0; c < chunks.size(); ++c) {
    if (out[c].is_contiguous() && out[c].scalar_type() == chunks[c].scalar_type()) {
      args.push_back(kernel_chunk(chunks[c], c, out[c].data_ptr(), /*accumulate=*/true));
    } else {
      staged[c] = at::empty(chunks[c].sizes().slice(1), chunks[c].options());
      args.push_back(kernel_chunk(chunks[c], c, staged[c].data_ptr()));
    }
  }
  launch_combine(args, K, weights);
  for (size_t c = 0; c < chunks.size(); ++c)
    if (staged[c].defined()) out[c].add_(staged[c]);
}

}  // namespace

TORCH_LIBRARY_IMPL(mtl_fast, CUDA, m) {
  m.impl("combine", &combine_cuda);
  m.impl("combine_into", &combine_into_cuda);
}

}  // namespace mtl_fast
