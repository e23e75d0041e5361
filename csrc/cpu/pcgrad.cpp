// CPU PCGrad weights: runs the shared coefficient recurrence of kernels/pcgrad.h for every task.
#include <torch/library.h>

#include <limits>
#include <vector>

#include "checks.h"
#include "kernels/pcgrad.h"

namespace mtl_fast {
namespace {

at::Tensor pcgrad_weights_cpu(const at::Tensor& gram, const at::Tensor& orders) {
  const int64_t K = check_pcgrad_inputs(gram, orders);
  const at::Tensor G = gram.to(at::kDouble).contiguous();
  const at::Tensor ord = orders.contiguous();
  check_orders_are_permutations(ord.const_data_ptr<int64_t>(), K);
  if (!gram_is_finite(G.const_data_ptr<double>(), K))  // NaN weights, as every Gram-based op returns for such a G
    return at::full({K}, std::numeric_limits<double>::quiet_NaN(), G.options());
  std::vector<double> coef(K * K);
  for (int64_t i = 0; i < K; ++i)
    pcgrad_row_coefficients(G.const_data_ptr<double>(), ord.const_data_ptr<int64_t>() + i * (K - 1), K, i,
                            coef.data() + i * K);
  at::Tensor weights = at::empty({K}, G.options());
  double* w = weights.data_ptr<double>();
  for (int64_t a = 0; a < K; ++a) w[a] = combined_weight(coef.data(), K, a);
  return weights;
}

}  // namespace

TORCH_LIBRARY_IMPL(mtl_fast, CPU, m) { m.impl("pcgrad_weights", &pcgrad_weights_cpu); }

}  // namespace mtl_fast
