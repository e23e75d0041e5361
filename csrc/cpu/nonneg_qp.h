// The CPU weights(G) of the QP-based aggregators, callable without the dispatcher (csrc/python_module.cpp).
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace mtl_fast {

// The mtl_fast::qp_weights CPU kernel: (K,) float64 weights of 'mgda' | 'dualproj' | 'upgrad'.
at::Tensor qp_weights_cpu(const at::Tensor& gram, const std::optional<at::Tensor>& pref, c10::string_view method,
                          double regularization, double tol, int64_t max_iter);

}  // namespace mtl_fast
