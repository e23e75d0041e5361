// C entry points over the kernels' host entry points (kernels/launch.h, nonneg_qp_launch.h, heads.h), built
// with the emulator for the tests in tests/emulation/ (ctypes, host buffers). Each allocates the scratch the CUDA
// bindings would take from the caching allocator, filled with NaN or -1 as uninitialised device memory may be,
// launches, and returns the launch error (0 for none), as C10_CUDA_KERNEL_LAUNCH_CHECK would see it.
#include <cstdint>
#include <limits>
#include <vector>

#include "kernels/heads.h"
#include "kernels/launch.h"
#include "kernels/nonneg_qp_launch.h"

using namespace mtl_fast;
using namespace mtl_fast::cuda;

namespace {

std::vector<Chunk> make_chunks(int64_t num_chunks, const void* const* jac, void* const* out, const int64_t* cols,
                               const int32_t* dtypes, const int32_t* accumulate) {
  std::vector<Chunk> chunks;
  for (int64_t c = 0; c < num_chunks; ++c)
    chunks.push_back(Chunk{jac[c], out == nullptr ? nullptr : out[c], cols[c], static_cast<Dtype>(dtypes[c]),
                           accumulate != nullptr && accumulate[c] != 0});
  return chunks;
}

std::vector<double> garbage_doubles(int64_t n) {
  return std::vector<double>(static_cast<size_t>(n), std::numeric_limits<double>::quiet_NaN());
}

int launch_error() { return static_cast<int>(cudaGetLastError()); }

}  // namespace

extern "C" {

// The emulator's float16 and bfloat16 conversions (the kernels' from_double, from_acc) of n floats, as bits.
int mtl_emulation_round_to_16_bits(const float* x, int64_t n, uint16_t* half, uint16_t* bfloat16) {
  for (int64_t i = 0; i < n; ++i) {
    half[i] = __float2half_rn(x[i]).bits;
    bfloat16[i] = __float2bfloat16_rn(x[i]).bits;
  }
  return 0;
}

// 0 when `name` is a device profile of the emulator (csrc/emulation/cuda_emulation.h), -1 otherwise.
int mtl_emulation_set_device(const char* name) { return cuda_emulation::set_device_profile(name) ? 0 : -1; }

// dtypes: Dtype values of kernels/launch.h.
int mtl_emulation_gram(int64_t num_chunks, const void* const* jac, const int64_t* cols, const int32_t* dtypes,
                       int64_t K, double* out) {
  const std::vector<Chunk> chunks = make_chunks(num_chunks, jac, nullptr, cols, dtypes, nullptr);
  std::vector<double> workspace = garbage_doubles(gram_workspace_size(chunks.data(), num_chunks, K));
  gram_launch(chunks.data(), num_chunks, K, workspace.data(), out, nullptr);
  return launch_error();
}

int mtl_emulation_combine(int64_t num_chunks, const void* const* jac, void* const* out, const int64_t* cols,
                          const int32_t* dtypes, const int32_t* accumulate, int64_t K, const double* weights) {
  const std::vector<Chunk> chunks = make_chunks(num_chunks, jac, out, cols, dtypes, accumulate);
  combine_launch(chunks.data(), num_chunks, K, weights, nullptr);
  return launch_error();
}

int mtl_emulation_pcgrad_weights(const double* gram, const int64_t* orders, int64_t K, double* weights) {
  std::vector<double> coef = garbage_doubles(K * K);
  pcgrad_weights_launch(gram, orders, K, coef.data(), weights, nullptr);
  return launch_error();
}

int mtl_emulation_nonneg_qp(const double* M, const double* Q, int64_t B, int64_t K, int32_t simplex, double tol,
                            int64_t max_iter, int64_t patience, double* Z) {
  std::vector<double> work = garbage_doubles(B * nonneg_qp_workspace(K));
  std::vector<int> iwork(static_cast<size_t>(B * nonneg_qp_index_workspace(K)), -1);
  nonneg_qp_launch(M, Q, B, K, simplex != 0, tol, max_iter, patience, Z, work.data(), iwork.data(), nullptr);
  return launch_error();
}

// method: QpMethod values; pref: K doubles or null.
int mtl_emulation_qp_weights(const double* G, const double* pref, int64_t K, int32_t method, double regularization,
                             double tol, int64_t max_iter, int64_t patience, double* weights) {
  const QpMethod kind = static_cast<QpMethod>(method);
  const int64_t B = qp_problem_count(kind, K);
  std::vector<double> M = garbage_doubles(K * K), Q = garbage_doubles(B * K), Z = garbage_doubles(B * K);
  std::vector<double> work = garbage_doubles(B * nonneg_qp_workspace(K));
  std::vector<int> iwork(static_cast<size_t>(B * nonneg_qp_index_workspace(K)), -1);
  qp_weights_launch(G, pref, K, kind, regularization, tol, max_iter, patience, M.data(), Q.data(), Z.data(),
                    work.data(), iwork.data(), weights, nullptr);
  return launch_error();
}

// tasks: num_tasks HeadsTask records (kernels/heads_layout.h); reduction: HeadsReduction values.
int mtl_emulation_heads_loss(int32_t dtype, const void* logits, int64_t batch, int64_t width, const HeadsTask* tasks,
                             int64_t num_tasks, const int64_t* class_targets, const void* value_targets,
                             int64_t value_width, int64_t ignore_index, int32_t reduction, void* losses,
                             void* grad) {
  heads_loss_launch(static_cast<Dtype>(dtype), logits, batch, width, tasks, num_tasks, class_targets, value_targets,
                    value_width, ignore_index, static_cast<HeadsReduction>(reduction), losses, grad, nullptr);
  return launch_error();
}

int mtl_emulation_heads_loss_backward(int32_t dtype, const void* grad_losses, int32_t per_sample, const void* grad,
                                      int64_t batch, int64_t width, const HeadsTask* tasks, int64_t num_tasks,
                                      void* out) {
  heads_loss_backward_launch(static_cast<Dtype>(dtype), grad_losses, per_sample != 0, grad, batch, width, tasks,
                             num_tasks, out, nullptr);
  return launch_error();
}

}  // extern "C"
