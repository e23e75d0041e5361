// CUDA registration of ghost_gram: the device guard, then the ATen implementation of csrc/cpu/engine_gram.cpp,
// whose matmuls run on cuBLAS on the current stream (no kernel of our own: the three GEMMs are the whole cost).
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "ghost_gram.h"

namespace mtl_fast {
namespace {

at::Tensor ghost_gram_cuda(const at::Tensor& A, const at::Tensor& delta) {
  const c10::cuda::CUDAGuard guard(A.device());
  return ghost_gram_impl(A, delta);
}

}  // namespace

TORCH_LIBRARY_IMPL(mtl_fast, CUDA, m) { m.impl("ghost_gram", &ghost_gram_cuda); }

}  // namespace mtl_fast
