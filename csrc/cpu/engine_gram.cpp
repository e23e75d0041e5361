// CPU kernel of ghost_gram, the Gram engine's per-layer product: for a layer whose weight gradient for task k is
// A^T delta_k (Linear with input A, Conv through its unfolded input), <A^T delta_i, A^T delta_j> =
// <delta_i, (A A^T) delta_j>, computed without forming any A^T delta_k. Registered for CPU here and for CUDA in
// csrc/cuda/engine_gram.cpp: the function is device-agnostic ATen (the matmuls go to MKL / cuBLAS).
#include <torch/library.h>

#include "ghost_gram.h"

namespace mtl_fast {

at::Tensor ghost_gram_impl(const at::Tensor& A, const at::Tensor& delta) {
  TORCH_CHECK(A.dim() == 2, "A: expected shape (R, d), got ", A.sizes());
  TORCH_CHECK(delta.dim() == 3, "delta: expected shape (K, R, m), got ", delta.sizes());
  TORCH_CHECK(at::isFloatingType(A.scalar_type()), "A: expected a floating dtype, got ", A.scalar_type());
  TORCH_CHECK(at::isFloatingType(delta.scalar_type()), "delta: expected a floating dtype, got ",
              delta.scalar_type());
  TORCH_CHECK(delta.size(1) == A.size(0), "delta: has ", delta.size(1), " rows in dim 1 (shape ", delta.sizes(),
              ") but A has ", A.size(0), " (shape ", A.sizes(), ")");
  TORCH_CHECK(A.device() == delta.device(), "delta: is on ", delta.device(), " but A is on ", A.device());
  const int64_t K = delta.size(0);
  const at::TensorOptions options = delta.options().dtype(at::kDouble);
  if (A.numel() == 0 || delta.numel() == 0) return at::zeros({K, K}, options);

  // Double throughout: these are sums of products of gradients, whose float32 range the G of the K x P path
  // also leaves (see gram's schema comment).
  const at::Tensor a = A.to(at::kDouble);
  const at::Tensor d = delta.to(at::kDouble);
  const at::Tensor kernel = at::mm(a, a.t());                   // (R, R)
  const at::Tensor mixed = at::matmul(kernel, d);               // (K, R, m): (A A^T) delta_k
  at::Tensor G = at::mm(d.reshape({K, -1}), mixed.reshape({K, -1}).t());
  // Equal in exact arithmetic; averaging the two roundings makes G exactly symmetric.
  return (G + G.t()).mul_(0.5);
}

namespace {
at::Tensor ghost_gram_cpu(const at::Tensor& A, const at::Tensor& delta) { return ghost_gram_impl(A, delta); }
}  // namespace

TORCH_LIBRARY_IMPL(mtl_fast, CPU, m) { m.impl("ghost_gram", &ghost_gram_cpu); }

}  // namespace mtl_fast
