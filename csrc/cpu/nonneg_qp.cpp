// CPU ops of the nonnegative QPs (kernels/nonneg_qp.h): the generic batched solver behind
// mtl_fast.aggregators.solve_nonnegative_qp, and the whole weights(G) of MGDA, DualProj and UPGrad in one call,
// so that a K = 16 problem costs one op dispatch instead of dozens of torch ops.
#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "cpu/nonneg_qp.h"
#include "kernels/nonneg_qp.h"
#include "qp_checks.h"

namespace mtl_fast {
namespace {

// Per-thread buffers, kept between calls: at K = 16 a heap allocation costs a sizeable part of a whole solve.
// `problem` holds qp_weights' M, linear terms and solutions; `work` and `iwork` one solver's workspace.
struct Scratch {
  std::vector<double> problem, work;
  std::vector<int> iwork;
};

template <typename T>
T* at_least(std::vector<T>& buffer, int64_t size) {
  if (static_cast<int64_t>(buffer.size()) < size) buffer.resize(size);
  return buffer.data();
}

Scratch& thread_scratch() {
  thread_local Scratch scratch;
  return scratch;
}

// Solves the B problems (rows of Q) on the shared M into the rows of Z. One problem costs ~K^3/6 flops per
// pivoting step; batches are split across threads only when that outweighs waking them (UPGrad at large K).
void solve_batch(const double* M, const double* Q, int64_t B, int64_t K, bool simplex, double tol,
                 int64_t max_iter, double* Z) {
  const int64_t flops = K * K * K / 6 + 1;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 17) / flops);
  at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
    Scratch& scratch = thread_scratch();
    double* work = at_least(scratch.work, nonneg_qp_workspace(K));
    int* iwork = at_least(scratch.iwork, nonneg_qp_index_workspace(K));
    for (int64_t b = begin; b < end; ++b)
      nonneg_qp_solve(M, Q + b * K, K, simplex, tol, max_iter, Z + b * K, work, iwork);
  });
}

// t as a contiguous float64 tensor; checked here because .to() and .contiguous() cost a dispatch each even when
// there is nothing to do, which shows at K = 16.
at::Tensor contiguous_double(const at::Tensor& t) {
  if (t.scalar_type() == at::kDouble && t.is_contiguous()) return t;
  return t.to(at::kDouble).contiguous();
}

at::Tensor nonneg_qp_cpu(const at::Tensor& M, const at::Tensor& q, bool simplex, double tol, int64_t max_iter) {
  const int64_t K = check_nonneg_qp_inputs(M, q, max_iter);
  const int64_t B = q.size(0);
  const at::Tensor Md = M.to(at::kDouble).contiguous();
  const at::Tensor qd = q.to(at::kDouble).contiguous();
  at::Tensor z = at::empty({B, K}, Md.options());
  solve_batch(Md.const_data_ptr<double>(), qd.const_data_ptr<double>(), B, K, simplex, tol, max_iter,
              z.data_ptr<double>());
  return z.to(q.scalar_type());
}

}  // namespace

at::Tensor qp_weights_cpu(const at::Tensor& gram, const std::optional<at::Tensor>& pref, c10::string_view method,
                          double regularization, double tol, int64_t max_iter) {
  const int64_t K = check_qp_weights_inputs(gram, pref, max_iter);
  const QpMethod kind = parse_qp_method(method);
  const at::Tensor G = contiguous_double(gram);
  at::Tensor u;
  if (pref.has_value()) u = contiguous_double(*pref);
  const double* u_ptr = pref.has_value() ? u.const_data_ptr<double>() : nullptr;
  at::Tensor weights = at::detail::empty_cpu({K}, at::kDouble, std::nullopt, std::nullopt, std::nullopt,
                                             std::nullopt);
  double* w = weights.data_ptr<double>();
  if (qp_has_closed_form(kind, K)) {
    for (int64_t j = 0; j < K; ++j) w[j] = qp_closed_form_weight(G.const_data_ptr<double>(), j);
    return weights;
  }
  const int64_t B = qp_problem_count(kind, K);
  double* M = at_least(thread_scratch().problem, K * K + 2 * B * K);  // M, the linear terms, the solutions
  double* Q = M + K * K;
  double* Z = Q + B * K;
  const double* g = G.const_data_ptr<double>();
  const double trace = gram_scale(g, K);
  const double inverse_trace = 1.0 / trace;
  for (int64_t i = 0; i < K; ++i)
    for (int64_t j = 0; j < K; ++j)
      M[i * K + j] = normalized_gram_entry(g, K, trace, inverse_trace, regularization, i, j);
  for (int64_t b = 0; b < B; ++b) qp_linear_term(kind, M, u_ptr, K, b, Q + b * K);
  solve_batch(M, Q, B, K, /*simplex=*/false, tol, max_iter, Z);
  for (int64_t j = 0; j < K; ++j) w[j] = qp_weight(kind, Z, u_ptr, K, j);
  return weights;
}

TORCH_LIBRARY_FRAGMENT(mtl_fast, m) {
  // Batched min_z 1/2 z^T M z + q_b^T z s.t. z >= 0 (and sum(z) = 1 when simplex) for every row q_b of q (B, K),
  // M (K, K) positive definite; block principal pivoting with relative KKT tolerance tol and at most max_iter
  // steps. Returns (B, K) in q's dtype (computed in float64).
  m.def("nonneg_qp(Tensor M, Tensor q, bool simplex, float tol, int max_iter) -> Tensor");
  // weights(G) (K,) float64 of method 'mgda' | 'dualproj' | 'upgrad' on M = G / trace(G) + regularization * I,
  // pref the preference vector (None: the mean); the QPs as in nonneg_qp.
  m.def("qp_weights(Tensor gram, Tensor? pref, str method, float regularization, float tol, int max_iter) "
        "-> Tensor");
}

TORCH_LIBRARY_IMPL(mtl_fast, CPU, m) {
  m.impl("nonneg_qp", &nonneg_qp_cpu);
  m.impl("qp_weights", &qp_weights_cpu);
}

}  // namespace mtl_fast
