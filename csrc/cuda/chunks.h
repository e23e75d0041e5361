// Tensors to kernel arguments (kernels/launch.h), shared by the CUDA bindings.
#pragma once

#include <ATen/ATen.h>

#include "kernels/launch.h"

namespace mtl_fast {

// A contiguous chunk of shape (K, ...) as the kernels see it; out is where combine writes.
inline cuda::Chunk kernel_chunk(const at::Tensor& chunk, size_t index, void* out = nullptr,
                                bool accumulate = false) {
  cuda::Dtype dtype;
  switch (chunk.scalar_type()) {
    case at::kFloat: dtype = cuda::Dtype::kFloat; break;
    case at::kDouble: dtype = cuda::Dtype::kDouble; break;
    case at::kHalf: dtype = cuda::Dtype::kHalf; break;
    case at::kBFloat16: dtype = cuda::Dtype::kBFloat16; break;
    default:
      TORCH_CHECK(false, "jac[", index, "]: the CUDA kernels take float32, float64, float16 or bfloat16, got ",
                  chunk.scalar_type(), " (shape ", chunk.sizes(), ")");
  }
  return cuda::Chunk{chunk.const_data_ptr(), out, chunk.numel() / chunk.size(0), dtype, accumulate};
}

}  // namespace mtl_fast
