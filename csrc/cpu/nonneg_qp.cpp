// CPU kernels of nonneg_qp and qp_weights: the solver of kernels/nonneg_qp.h, run on each problem in turn.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <vector>

#include "kernels/nonneg_qp.h"
#include "qp_checks.h"

namespace mtl_fast {
namespace {

// Solves the B problems (rows of Q) on the shared M into the rows of Z. A pivoting step costs ~K^3/6 flops:
// threads get enough problems to outweigh waking them (UPGrad's K problems at large K).
void solve_batch(const double* M, const double* Q, int64_t B, int64_t K, bool simplex, double tol,
                 int64_t max_iter, int64_t patience, double* Z) {
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 17) / (K * K * K / 6 + 1));
  at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
    std::vector<double> work(nonneg_qp_workspace(K));
    std::vector<int> iwork(nonneg_qp_index_workspace(K));
    for (int64_t b = begin; b < end; ++b)
      nonneg_qp_solve(M, Q + b * K, K, simplex, tol, max_iter, patience, Z + b * K, work.data(), iwork.data());
  });
}

at::Tensor nonneg_qp_cpu(const at::Tensor& M, const at::Tensor& q, bool simplex, double tol, int64_t max_iter,
                         int64_t patience) {
  const int64_t K = check_nonneg_qp_inputs(M, q, max_iter, patience);
  const int64_t B = q.size(0);
  const at::Tensor Md = M.contiguous().to(at::kDouble);
  const at::Tensor qd = q.contiguous().to(at::kDouble);
  at::Tensor z = at::empty({B, K}, Md.options());
  solve_batch(Md.const_data_ptr<double>(), qd.const_data_ptr<double>(), B, K, simplex, tol, max_iter, patience,
              z.data_ptr<double>());
  return z.to(q.scalar_type());
}

at::Tensor qp_weights_cpu(const at::Tensor& gram, const std::optional<at::Tensor>& pref, c10::string_view method,
                          double regularization, double tol, int64_t max_iter, int64_t patience) {
  const int64_t K = check_qp_weights_inputs(gram, pref, max_iter, patience);
  const QpMethod kind = parse_qp_method(method);
  const at::Tensor G = gram.contiguous().to(at::kDouble);
  at::Tensor u;
  if (pref.has_value()) u = pref->contiguous().to(at::kDouble);
  const double* g = G.const_data_ptr<double>();
  const double* u_data = pref.has_value() ? u.const_data_ptr<double>() : nullptr;
  at::Tensor weights = at::empty({K}, G.options());
  double* w = weights.data_ptr<double>();
  if (!gram_is_finite(g, K)) return weights.fill_(std::numeric_limits<double>::quiet_NaN());
  if (qp_has_closed_form(kind, K)) {
    for (int64_t j = 0; j < K; ++j) w[j] = qp_closed_form_weight(g, j);
    return weights;
  }
  const int64_t B = qp_problem_count(kind, K);
  std::vector<double> M(K * K), Q(B * K), Z(B * K);
  normalized_gram(g, K, regularization, M.data());
  for (int64_t b = 0; b < B; ++b) qp_linear_term(kind, M.data(), u_data, K, b, Q.data() + b * K);
  solve_batch(M.data(), Q.data(), B, K, /*simplex=*/false, tol, max_iter, patience, Z.data());
  const double normalizer = qp_weight_normalizer(kind, Z.data(), K);
  for (int64_t j = 0; j < K; ++j) w[j] = qp_weight(kind, Z.data(), u_data, K, j, normalizer);
  return weights;
}

}  // namespace

TORCH_LIBRARY_IMPL(mtl_fast, CPU, m) {
  m.impl("nonneg_qp", &nonneg_qp_cpu);
  m.impl("qp_weights", &qp_weights_cpu);
}

}  // namespace mtl_fast
