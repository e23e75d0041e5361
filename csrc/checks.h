// Argument checks, and contiguous_chunks, shared by the CPU and CUDA bindings: every message names the argument,
// its shape and dtype.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <vector>

namespace mtl_fast {

// Validates a Jacobian given as chunks of shape (K, ...) and returns K.
inline int64_t check_jacobian(at::TensorList jac, const char* name) {
  TORCH_CHECK(!jac.empty(), name, ": expected at least one chunk, got an empty list");
  const int64_t K = jac[0].dim() > 0 ? jac[0].size(0) : 0;
  for (size_t c = 0; c < jac.size(); ++c) {
    const at::Tensor& t = jac[c];
    TORCH_CHECK(t.dim() >= 1, name, "[", c, "]: expected shape (K, ...), got a 0-d tensor");
    TORCH_CHECK(at::isFloatingType(t.scalar_type()), name, "[", c, "]: expected a floating dtype, got ",
                t.scalar_type());
    TORCH_CHECK(t.size(0) == K, name, "[", c, "]: has ", t.size(0), " tasks in dim 0 (shape ", t.sizes(),
                "), but ", name, "[0] has ", K);
    TORCH_CHECK(t.device() == jac[0].device(), name, "[", c, "]: is on ", t.device(), " but ", name,
                "[0] is on ", jac[0].device());
  }
  TORCH_CHECK(K >= 1, name, ": expected K >= 1 tasks, got K = 0");
  return K;
}

// The chunks that check_jacobian accepted as contiguous tensors (the same ones where they already are), so that
// the kernels can walk raw rows.
inline std::vector<at::Tensor> contiguous_chunks(at::TensorList jac) {
  std::vector<at::Tensor> chunks;
  chunks.reserve(jac.size());
  for (const at::Tensor& t : jac) chunks.push_back(t.contiguous());
  return chunks;
}

inline void check_weights(const at::Tensor& weights, int64_t K, const at::Device& device) {
  TORCH_CHECK(weights.dim() == 1 && weights.size(0) == K, "weights: expected shape (", K, "), got ",
              weights.sizes());
  TORCH_CHECK(at::isFloatingType(weights.scalar_type()), "weights: expected a floating dtype, got ",
              weights.scalar_type());
  TORCH_CHECK(weights.device() == device, "weights: is on ", weights.device(), " but jac is on ", device);
}

inline void check_outputs(at::TensorList jac, at::TensorList out) {
  TORCH_CHECK(out.size() == jac.size(), "out: expected ", jac.size(), " tensors (one per chunk), got ",
              out.size());
  for (size_t c = 0; c < out.size(); ++c) {
    TORCH_CHECK(out[c].sizes() == jac[c].sizes().slice(1), "out[", c, "]: expected shape ",
                jac[c].sizes().slice(1), ", got ", out[c].sizes());
    TORCH_CHECK(at::isFloatingType(out[c].scalar_type()), "out[", c, "]: expected a floating dtype, got ",
                out[c].scalar_type());
    TORCH_CHECK(out[c].device() == jac[c].device(), "out[", c, "]: is on ", out[c].device(),
                " but jac[", c, "] is on ", jac[c].device());
  }
}

inline int64_t check_pcgrad_inputs(const at::Tensor& gram, const at::Tensor& orders) {
  TORCH_CHECK(gram.dim() == 2 && gram.size(0) == gram.size(1) && gram.size(0) >= 1,
              "gram: expected a square (K, K) matrix with K >= 1, got shape ", gram.sizes());
  TORCH_CHECK(at::isFloatingType(gram.scalar_type()), "gram: expected a floating dtype, got ",
              gram.scalar_type());
  const int64_t K = gram.size(0);
  TORCH_CHECK(orders.dim() == 2 && orders.size(0) == K && orders.size(1) == K - 1,
              "orders: expected shape (", K, ", ", K - 1, ") for K = ", K, ", got ", orders.sizes());
  TORCH_CHECK(orders.scalar_type() == at::kLong, "orders: expected int64, got ", orders.scalar_type());
  TORCH_CHECK(orders.device() == gram.device(), "orders: is on ", orders.device(), " but gram is on ",
              gram.device());
  return K;
}

// gram and orders as for check_pcgrad_inputs, phi_hat the (K, K) EMA targets, beta the EMA rate; returns K.
inline int64_t check_gradvac_inputs(const at::Tensor& gram, const at::Tensor& orders, const at::Tensor& phi_hat,
                                    double beta) {
  const int64_t K = check_pcgrad_inputs(gram, orders);
  TORCH_CHECK(phi_hat.dim() == 2 && phi_hat.size(0) == K && phi_hat.size(1) == K,
              "phi_hat: expected shape (", K, ", ", K, "), got ", phi_hat.sizes());
  TORCH_CHECK(at::isFloatingType(phi_hat.scalar_type()), "phi_hat: expected a floating dtype, got ",
              phi_hat.scalar_type());
  TORCH_CHECK(phi_hat.device() == gram.device(), "phi_hat: is on ", phi_hat.device(), " but gram is on ",
              gram.device());
  TORCH_CHECK(beta >= 0.0 && beta <= 1.0, "beta: expected a value in [0, 1], got ", beta);
  return K;
}

// Row i of orders must list every task except i exactly once; anything else is not PCGrad (nor GradVac).
inline void check_orders_are_permutations(const int64_t* orders, int64_t K) {
  std::vector<int64_t> seen(K);
  for (int64_t i = 0; i < K; ++i) {
    std::fill(seen.begin(), seen.end(), 0);
    for (int64_t s = 0; s + 1 < K; ++s) {
      const int64_t j = orders[i * (K - 1) + s];
      TORCH_CHECK(j >= 0 && j < K && j != i && !seen[j], "orders: row ", i,
                  " must be a permutation of the other tasks {0..", K - 1, "} \\ {", i, "}, found ", j,
                  " at position ", s);
      seen[j] = 1;
    }
  }
}

}  // namespace mtl_fast
