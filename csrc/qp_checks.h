// Argument checks of the nonnegative-QP ops, shared by the CPU and CUDA bindings: every message names the
// argument, its shape and dtype.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>

#include "kernels/nonneg_qp.h"

namespace mtl_fast {

// The stopping rules of the pivoting (kernels/nonneg_qp.h): counts of steps.
inline void check_pivoting_limits(int64_t max_iter, int64_t patience) {
  TORCH_CHECK(max_iter >= 0, "max_iter: expected a value >= 0, got ", max_iter);
  TORCH_CHECK(patience >= 0, "patience: expected a value >= 0, got ", patience);
}

// M (K, K) and q (B, K), floating, on one device; returns K.
inline int64_t check_nonneg_qp_inputs(const at::Tensor& M, const at::Tensor& q, int64_t max_iter,
                                      int64_t patience) {
  TORCH_CHECK(M.dim() == 2 && M.size(0) == M.size(1) && M.size(0) >= 1,
              "M: expected a square (K, K) matrix with K >= 1, got shape ", M.sizes());
  TORCH_CHECK(at::isFloatingType(M.scalar_type()), "M: expected a floating dtype, got ", M.scalar_type());
  const int64_t K = M.size(0);
  TORCH_CHECK(q.dim() == 2 && q.size(1) == K, "q: expected shape (B, ", K, ") for M of shape ", M.sizes(),
              ", got ", q.sizes());
  TORCH_CHECK(at::isFloatingType(q.scalar_type()), "q: expected a floating dtype, got ", q.scalar_type());
  TORCH_CHECK(q.device() == M.device(), "q: is on ", q.device(), " but M is on ", M.device());
  check_pivoting_limits(max_iter, patience);
  return K;
}

// gram (K, K), pref None or (K,), both floating on one device; returns K.
inline int64_t check_qp_weights_inputs(const at::Tensor& gram, const std::optional<at::Tensor>& pref,
                                       int64_t max_iter, int64_t patience) {
  TORCH_CHECK(gram.dim() == 2 && gram.size(0) == gram.size(1) && gram.size(0) >= 1,
              "gram: expected a square (K, K) matrix with K >= 1, got shape ", gram.sizes());
  TORCH_CHECK(at::isFloatingType(gram.scalar_type()), "gram: expected a floating dtype, got ",
              gram.scalar_type());
  const int64_t K = gram.size(0);
  if (pref.has_value()) {
    TORCH_CHECK(pref->dim() == 1 && pref->size(0) == K, "pref: expected shape (", K, "), got ", pref->sizes());
    TORCH_CHECK(at::isFloatingType(pref->scalar_type()), "pref: expected a floating dtype, got ",
                pref->scalar_type());
    TORCH_CHECK(pref->device() == gram.device(), "pref: is on ", pref->device(), " but gram is on ",
                gram.device());
  }
  check_pivoting_limits(max_iter, patience);
  return K;
}

inline QpMethod parse_qp_method(c10::string_view method) {
  if (method == "mgda") return QpMethod::kMinNorm;
  if (method == "dualproj") return QpMethod::kDualProj;
  if (method == "upgrad") return QpMethod::kUpGrad;
  TORCH_CHECK(false, "method: expected 'mgda', 'dualproj' or 'upgrad', got '", std::string(method), "'");
}

}  // namespace mtl_fast
