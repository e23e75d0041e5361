// CPU kernels of the fused heads' loss ops (schemas: csrc/ops.cpp; fake kernels and autograd:
// mtl_fast/nn/_heads_ops.py).
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu/simd.h"
#include "heads_checks.h"

namespace mtl_fast {
namespace {

MTL_SIMD_INLINE int32_t to_int(float n) { return static_cast<int32_t>(n); }
MTL_SIMD_INLINE Vec16i to_int(Vec16f n) { return __builtin_convertvector(n, Vec16i); }

// exp(x) for the x <= 0 of a shifted softmax, on one float or sixteen lanes, in plain arithmetic (std::exp is a
// scalar libm call): 2^n exp(r) with n = round(x / ln2), |r| <= ln2 / 2, and Cephes' polynomial for exp(r),
// relative error below 2e-7. n is rounded by adding and subtracting 1.5 * 2^23, which vector types can express
// where std::floor cannot. Below -87 it returns ~1e-38 rather than 0, which no softmax denominator (>= 1) can
// tell apart; NaN stays NaN, so NaN logits give a NaN loss, as in F.cross_entropy.
template <typename V>
MTL_SIMD_INLINE V exp_nonpositive(V x) {
  const V clamped = x < -87.0f ? V{} - 87.0f : x;
  const V n = (clamped * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const V r = (clamped - n * 0.693359375f) + n * 2.12194440e-4f;
  V p = V{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const auto bits = (to_int(n) + 127) << 23;
  V scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return x == x ? p * scale : x;
}

MTL_SIMD_INLINE double exp_nonpositive(double x) { return std::exp(x); }

// Loss of one row of one classification task; writes its gradient (softmax - onehot) * scale. `work` holds
// size values of scratch. With a float accumulator the exponentials run sixteen lanes at a time (the
// auto-vectoriser leaves this loop scalar).
template <typename scalar_t, typename acc_t>
MTL_CPU_CLONES acc_t cross_entropy_row(const scalar_t* z, int64_t size, int64_t target, acc_t scale, acc_t* work,
                                       scalar_t* grad) {
  acc_t m = -std::numeric_limits<acc_t>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t c = 0; c < size; ++c) m = std::max(m, static_cast<acc_t>(z[c]));
  acc_t s = 0;
  int64_t c = 0;
  if constexpr (std::is_same_v<acc_t, float>) {
    Vec16f lanes = {};
    for (; c + 16 <= size; c += 16) {
      Vec16f shifted;
      for (int l = 0; l < 16; ++l) shifted[l] = static_cast<float>(z[c + l]) - m;
      const Vec16f e = exp_nonpositive(shifted);
      std::memcpy(work + c, &e, sizeof(e));
      lanes += e;
    }
    s = static_cast<float>(sum_lanes(lanes));
  }
  for (; c < size; ++c) {
    work[c] = exp_nonpositive(static_cast<acc_t>(z[c]) - m);
    s += work[c];
  }
  const acc_t r = scale / s;
#pragma omp simd
  for (int64_t c = 0; c < size; ++c) grad[c] = static_cast<scalar_t>(work[c] * r);
  grad[target] = static_cast<scalar_t>(work[target] * r - scale);
  return std::log(s) + m - static_cast<acc_t>(z[target]);
}

// Squared error of one row of one regression task; writes its gradient 2 (z - t) * scale.
template <typename scalar_t, typename acc_t>
MTL_CPU_CLONES acc_t squared_error_row(const scalar_t* z, const acc_t* t, int64_t size, acc_t scale,
                                       scalar_t* grad) {
  acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t c = 0; c < size; ++c) {
    const acc_t d = static_cast<acc_t>(z[c]) - t[c];
    sum += d * d;
    grad[c] = static_cast<scalar_t>(2 * d * scale);
  }
  return sum;
}

template <typename scalar_t, typename acc_t>
MTL_CPU_CLONES void scale_row(const scalar_t* src, int64_t size, acc_t factor, scalar_t* dst) {
#pragma omp simd
  for (int64_t c = 0; c < size; ++c) dst[c] = static_cast<scalar_t>(static_cast<acc_t>(src[c]) * factor);
}

// Rows per parallel chunk: enough columns that a chunk outweighs the cost of handing it to a thread.
int64_t row_grain(int64_t width) { return std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(width, 1)); }

// For 'mean': how many terms each task's loss averages (non-ignored targets, or batch x outputs); checks the
// class targets on the way, before anything is written.
std::vector<double> count_terms(const std::vector<HeadsTask>& tasks, const at::Tensor& class_targets,
                                int64_t batch, int64_t ignore_index) {
  const int64_t* targets = class_targets.const_data_ptr<int64_t>();
  std::vector<double> counts;
  for (const HeadsTask& task : tasks) {
    if (task.regression) {
      counts.push_back(static_cast<double>(batch * task.size));
      continue;
    }
    int64_t n = 0;
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t t = targets[task.target * batch + b];
      if (t == ignore_index) continue;
      TORCH_CHECK_VALUE(t >= 0 && t < task.size, "targets[", task.index, "][", b, "]: class ", t,
                        " is out of range for task ", task.index, ", which has ", task.size,
                        " classes (class_targets row ", task.target, "; ignore_index is ", ignore_index, ")");
      ++n;
    }
    counts.push_back(static_cast<double>(n));
  }
  return counts;
}

std::tuple<at::Tensor, at::Tensor> heads_loss_cpu(const at::Tensor& logits, const at::Tensor& class_targets,
                                                  const at::Tensor& value_targets, at::IntArrayRef sizes,
                                                  const c10::List<bool>& regression, int64_t ignore_index,
                                                  c10::string_view reduction) {
  const std::vector<HeadsTask> tasks = check_heads_loss_inputs(logits, class_targets, value_targets, sizes,
                                                               regression);
  const HeadsReduction mode = parse_heads_reduction(reduction);
  const at::Tensor z = logits.contiguous(), classes = class_targets.contiguous(),
                   values = value_targets.contiguous();
  const int64_t batch = z.size(0), width = z.size(1), K = static_cast<int64_t>(tasks.size());
  const std::vector<double> counts = count_terms(tasks, classes, batch, ignore_index);
  at::Tensor grad = at::empty_like(z);
  // Per-row losses in double, summed per task afterwards in a fixed order: the result does not depend on
  // how parallel_for cut the rows.
  at::Tensor row_losses = at::empty({K, batch}, z.options().dtype(at::kDouble));
  int64_t widest = 0;
  for (const HeadsTask& task : tasks) widest = std::max(widest, task.size);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "mtl_fast::heads_loss", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    const int64_t* cp = classes.const_data_ptr<int64_t>();
    const acc_t* vp = values.const_data_ptr<acc_t>();
    const int64_t value_width = values.size(1);
    scalar_t* gp = grad.data_ptr<scalar_t>();
    double* lp = row_losses.data_ptr<double>();
    at::parallel_for(0, batch, row_grain(width), [&](int64_t first, int64_t last) {
      std::vector<acc_t> work(widest);
      for (int64_t b = first; b < last; ++b) {
        for (const HeadsTask& task : tasks) {
          const scalar_t* zr = zp + b * width + task.offset;
          scalar_t* gr = gp + b * width + task.offset;
          const acc_t scale = mode == HeadsReduction::kMean ? acc_t(1.0 / counts[task.index]) : acc_t(1);
          double loss = 0;
          if (task.regression) {
            loss = squared_error_row(zr, vp + b * value_width + task.target, task.size, scale, gr);
          } else if (cp[task.target * batch + b] == ignore_index) {
            std::fill(gr, gr + task.size, scalar_t(0));
          } else {
            loss = cross_entropy_row(zr, task.size, cp[task.target * batch + b], scale, work.data(), gr);
          }
          lp[task.index * batch + b] = loss;
        }
      }
    });
  });
  const at::ScalarType acc = at::toOpMathType(z.scalar_type());
  if (mode == HeadsReduction::kNone) return {row_losses.to(acc), grad};
  at::Tensor losses = row_losses.sum(1);
  if (mode == HeadsReduction::kMean) losses.div_(at::tensor(counts, losses.options()));
  return {losses.to(acc), grad};
}

at::Tensor heads_loss_backward_cpu(const at::Tensor& grad_losses, const at::Tensor& grad, at::IntArrayRef sizes) {
  const std::vector<HeadsTask> tasks = check_heads_backward_inputs(grad_losses, grad, sizes);
  const at::Tensor g = grad.contiguous();
  const int64_t batch = g.size(0), width = g.size(1);
  const bool per_sample = grad_losses.dim() == 2;
  at::Tensor out = at::empty_like(g);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "mtl_fast::heads_loss_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor scales = grad_losses.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const acc_t* sp = scales.const_data_ptr<acc_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, batch, row_grain(width), [&](int64_t first, int64_t last) {
      for (int64_t b = first; b < last; ++b) {
        for (const HeadsTask& task : tasks) {
          const acc_t factor = per_sample ? sp[task.index * batch + b] : sp[task.index];
          scale_row(gp + b * width + task.offset, task.size, factor, op + b * width + task.offset);
        }
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mtl_fast, CPU, m) {
  m.impl("heads_loss", &heads_loss_cpu);
  m.impl("heads_loss_backward", &heads_loss_backward_cpu);
}

}  // namespace mtl_fast
