// CUDA binding of gram: checks, device guard, scratch from the caching allocator, launch on the current stream.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "checks.h"
#include "cuda/chunks.h"

namespace mtl_fast {
namespace {

at::Tensor gram_cuda(at::TensorList jac) {
  const int64_t K = check_jacobian(jac, "jac");
  const c10::cuda::CUDAGuard guard(jac[0].device());
  const std::vector<at::Tensor> chunks = contiguous_chunks(jac);
  std::vector<cuda::Chunk> args;
  int64_t numel = 0;
  for (size_t c = 0; c < chunks.size(); ++c) {
    args.push_back(kernel_chunk(chunks[c], c));
    numel += chunks[c].numel();
  }
  const at::TensorOptions options = jac[0].options().dtype(at::kDouble);
  if (numel == 0) return at::zeros({K, K}, options);

  at::Tensor out = at::empty({K, K}, options);
  at::Tensor workspace = at::empty({cuda::gram_workspace_size(args.data(), args.size(), K)}, options);
  cuda::gram_launch(args.data(), static_cast<int64_t>(args.size()), K, workspace.data_ptr<double>(),
                    out.data_ptr<double>(), c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mtl_fast, CUDA, m) { m.impl("gram", &gram_cuda); }

}  // namespace mtl_fast
