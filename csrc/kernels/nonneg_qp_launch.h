// Host entry points of the nonnegative-QP kernels (kernels/nonneg_qp.cu): raw pointers, sizes and a stream,
// no torch. Like kernels/launch.h, they only enqueue work (no synchronisation, no allocation: the caller passes
// the scratch), so they can be captured in a CUDA graph.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/nonneg_qp.h"

namespace mtl_fast {
namespace cuda {

// Z (B x K) = the solutions of the B problems of kernels/nonneg_qp.h on the shared M (K x K), one per row of Q,
// with nonneg_qp_solve's stopping rules max_iter and patience. work: B * nonneg_qp_workspace(K) doubles, iwork:
// B * nonneg_qp_index_workspace(K) ints.
void nonneg_qp_launch(const double* M, const double* Q, int64_t B, int64_t K, bool simplex, double tol,
                      int64_t max_iter, int64_t patience, double* Z, double* work, int* iwork, cudaStream_t stream);

// weights (K) of `method` from the Gram matrix G (K x K); pref: K doubles or nullptr (the mean). Scratch:
// M (K x K), Q and Z (each qp_problem_count(method, K) x K), work and iwork as for nonneg_qp_launch.
void qp_weights_launch(const double* G, const double* pref, int64_t K, QpMethod method, double regularization,
                       double tol, int64_t max_iter, int64_t patience, double* M, double* Q, double* Z,
                       double* work, int* iwork, double* weights, cudaStream_t stream);

}  // namespace cuda
}  // namespace mtl_fast
