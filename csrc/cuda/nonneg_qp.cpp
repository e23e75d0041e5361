// CUDA bindings of nonneg_qp and qp_weights: checks, device guard, scratch from the caching allocator, launch on
// the current stream. No host synchronisation: the pivoting runs to its stopping rule on the device.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "kernels/nonneg_qp_launch.h"
#include "qp_checks.h"

namespace mtl_fast {
namespace {

at::Tensor nonneg_qp_cuda(const at::Tensor& M, const at::Tensor& q, bool simplex, double tol, int64_t max_iter,
                          int64_t patience) {
  const int64_t K = check_nonneg_qp_inputs(M, q, max_iter, patience);
  const int64_t B = q.size(0);
  const c10::cuda::CUDAGuard guard(M.device());
  const at::Tensor Md = M.contiguous().to(at::kDouble);
  const at::Tensor qd = q.contiguous().to(at::kDouble);
  at::Tensor z = at::empty({B, K}, Md.options());
  at::Tensor work = at::empty({B * nonneg_qp_workspace(K)}, Md.options());
  at::Tensor iwork = at::empty({B * nonneg_qp_index_workspace(K)}, Md.options().dtype(at::kInt));
  cuda::nonneg_qp_launch(Md.const_data_ptr<double>(), qd.const_data_ptr<double>(), B, K, simplex, tol, max_iter,
                         patience, z.data_ptr<double>(), work.data_ptr<double>(), iwork.data_ptr<int>(),
                         c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return z.to(q.scalar_type());
}

at::Tensor qp_weights_cuda(const at::Tensor& gram, const std::optional<at::Tensor>& pref, c10::string_view method,
                           double regularization, double tol, int64_t max_iter, int64_t patience) {
  const int64_t K = check_qp_weights_inputs(gram, pref, max_iter, patience);
  const QpMethod kind = parse_qp_method(method);
  const c10::cuda::CUDAGuard guard(gram.device());
  const at::Tensor G = gram.contiguous().to(at::kDouble);
  at::Tensor u;
  if (pref.has_value()) u = pref->contiguous().to(at::kDouble);
  const int64_t B = qp_problem_count(kind, K);
  // M, Q, Z and the solver's workspace in one allocation.
  at::Tensor scratch = at::empty({K * K + 2 * B * K + B * nonneg_qp_workspace(K)}, G.options());
  at::Tensor iwork = at::empty({B * nonneg_qp_index_workspace(K)}, G.options().dtype(at::kInt));
  at::Tensor weights = at::empty({K}, G.options());
  double* M = scratch.data_ptr<double>();
  double* Q = M + K * K;
  double* Z = Q + B * K;
  cuda::qp_weights_launch(G.const_data_ptr<double>(), pref.has_value() ? u.const_data_ptr<double>() : nullptr, K,
                          kind, regularization, tol, max_iter, patience, M, Q, Z, Z + B * K, iwork.data_ptr<int>(),
                          weights.data_ptr<double>(), c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return weights;
}

}  // namespace

TORCH_LIBRARY_IMPL(mtl_fast, CUDA, m) {
  m.impl("nonneg_qp", &nonneg_qp_cuda);
  m.impl("qp_weights", &qp_weights_cuda);
}

}  // namespace mtl_fast
