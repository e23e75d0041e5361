// The Gram engine's ghost product, shared by its CPU and CUDA registrations (defined in cpu/engine_gram.cpp).
#pragma once

#include <ATen/ATen.h>

namespace mtl_fast {

// G (K, K) float64 with G_ij = <A^T delta_i, A^T delta_j>, for A (R, d) and delta (K, R, m).
at::Tensor ghost_gram_impl(const at::Tensor& A, const at::Tensor& delta);

}  // namespace mtl_fast
