// Nonnegative QPs on the device: the same source as the CPU op (kernels/nonneg_qp.h), one thread per problem.
// The problems are K x K with K <= a few dozen and need a data-dependent number of pivoting steps, so a thread
// each (UPGrad's K problems run side by side) keeps the pivoting logic identical to the CPU's; the point is
// that nothing leaves the GPU, not the speed of this small solve.
#include <math_constants.h>

#include "kernels/launch_kernel.cuh"
#include "kernels/nonneg_qp_launch.h"

namespace mtl_fast {
namespace cuda {
namespace {

constexpr int kThreads = 128;

int blocks_for(int64_t n) { return static_cast<int>((n + kThreads - 1) / kThreads); }

__global__ void __launch_bounds__(kThreads)
    nonneg_qp_kernel(const double* M, const double* Q, int64_t B, int64_t K, bool simplex, double tol,
                     int64_t max_iter, int64_t patience, double* Z, double* work, int* iwork) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= B) return;
  nonneg_qp_solve(M, Q + b * K, K, simplex, tol, max_iter, patience, Z + b * K, work + b * nonneg_qp_workspace(K),
                  iwork + b * nonneg_qp_index_workspace(K));
}

// One block: M from G, then every problem's linear term (which reads M).
__global__ void __launch_bounds__(kThreads)
    qp_prepare_kernel(const double* G, const double* pref, int64_t K, QpMethod method, double regularization,
                      double* M, double* Q) {
  const double trace = gram_scale(G, K);
  const double inverse_trace = 1.0 / trace;
  for (int64_t e = threadIdx.x; e < K * K; e += blockDim.x)
    M[e] = normalized_gram_entry(G, K, trace, inverse_trace, regularization, e / K, e % K);
  __syncthreads();
  for (int64_t b = threadIdx.x; b < qp_problem_count(method, K); b += blockDim.x)
    qp_linear_term(method, M, pref, K, b, Q + b * K);
}

// (G is read again only for gram_is_finite: a non-finite G gives NaN weights, whatever the solver returned.)
__global__ void __launch_bounds__(kThreads) qp_finish_kernel(const double* G, const double* Z, const double* pref,
                                                             int64_t K, QpMethod method, double* weights) {
  const bool finite = gram_is_finite(G, K);
  const double normalizer = qp_weight_normalizer(method, Z, K);
  for (int64_t j = threadIdx.x; j < K; j += blockDim.x)
    weights[j] = finite ? qp_weight(method, Z, pref, K, j, normalizer) : CUDART_NAN;
}

__global__ void __launch_bounds__(kThreads) qp_closed_form_kernel(const double* G, int64_t K, double* weights) {
  const bool finite = gram_is_finite(G, K);
  for (int64_t j = threadIdx.x; j < K; j += blockDim.x)
    weights[j] = finite ? qp_closed_form_weight(G, j) : CUDART_NAN;
}

}  // namespace

void nonneg_qp_launch(const double* M, const double* Q, int64_t B, int64_t K, bool simplex, double tol,
                      int64_t max_iter, int64_t patience, double* Z, double* work, int* iwork,
                      cudaStream_t stream) {
  if (B == 0) return;
  launch_kernel(nonneg_qp_kernel, blocks_for(B), kThreads, stream, M, Q, B, K, simplex, tol, max_iter, patience, Z,
                work, iwork);
}

void qp_weights_launch(const double* G, const double* pref, int64_t K, QpMethod method, double regularization,
                       double tol, int64_t max_iter, int64_t patience, double* M, double* Q, double* Z,
                       double* work, int* iwork, double* weights, cudaStream_t stream) {
  if (qp_has_closed_form(method, K)) {
    launch_kernel(qp_closed_form_kernel, 1, kThreads, stream, G, K, weights);
    return;
  }
  launch_kernel(qp_prepare_kernel, 1, kThreads, stream, G, pref, K, method, regularization, M, Q);
  nonneg_qp_launch(M, Q, qp_problem_count(method, K), K, /*simplex=*/false, tol, max_iter, patience, Z, work,
                   iwork, stream);
  launch_kernel(qp_finish_kernel, 1, kThreads, stream, G, Z, pref, K, method, weights);
}

}  // namespace cuda
}  // namespace mtl_fast
