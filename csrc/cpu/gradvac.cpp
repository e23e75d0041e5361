// GradVac weights on the CPU: the coefficient recurrence of kernels/gradvac.h for every task, in parallel over
// tasks. It is the op's only kernel: on other devices mtl_fast.aggregators.GradVac runs its torch-ops loop, which
// makes no host round trip either.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <vector>

#include "checks.h"
#include "kernels/gradvac.h"

namespace mtl_fast {
namespace {

std::tuple<at::Tensor, at::Tensor> gradvac_weights_cpu(const at::Tensor& gram, const at::Tensor& orders,
                                                       const at::Tensor& phi_hat, double beta) {
  const int64_t K = check_gradvac_inputs(gram, orders, phi_hat, beta);
  const at::Tensor G = gram.to(at::kDouble).contiguous();
  const at::Tensor ord = orders.contiguous();
  const at::Tensor targets = phi_hat.to(at::kDouble).contiguous();
  check_orders_are_permutations(ord.const_data_ptr<int64_t>(), K);
  // A non-finite G: NaN weights, and the targets as they were (a step that AMP's GradScaler skips leaves no trace)
  if (!gram_is_finite(G.const_data_ptr<double>(), K))
    return {at::full({K}, std::numeric_limits<double>::quiet_NaN(), G.options()), targets.clone()};
  at::Tensor coef = at::empty({K, K}, G.options());
  at::Tensor new_targets = at::empty({K, K}, G.options());
  const double* g = G.const_data_ptr<double>();
  const int64_t* o = ord.const_data_ptr<int64_t>();
  const double* t = targets.const_data_ptr<double>();
  double* c = coef.data_ptr<double>();
  double* t_out = new_targets.data_ptr<double>();
  // A row costs ~2 K^2 flops: go parallel only for rows worth waking a thread for.
  at::parallel_for(0, K, std::max<int64_t>(1, (int64_t{1} << 16) / (2 * K * K)), [&](int64_t first, int64_t last) {
    for (int64_t i = first; i < last; ++i)
      gradvac_row(g, o + i * (K - 1), K, i, beta, t + i * K, t_out + i * K, c + i * K);
  });
  at::Tensor weights = at::empty({K}, G.options());
  double* w = weights.data_ptr<double>();
  for (int64_t j = 0; j < K; ++j) w[j] = combined_weight(c, K, j);
  return {weights, new_targets};
}

}  // namespace

TORCH_LIBRARY_IMPL(mtl_fast, CPU, m) { m.impl("gradvac_weights", &gradvac_weights_cpu); }

}  // namespace mtl_fast
