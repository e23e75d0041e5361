// CUDA bindings of the fused heads' loss ops (kernels/heads.cu): one launch for all tasks (per 64 tasks).
// Unlike the CPU op, heads_loss cannot reject an out-of-range class without a host sync: the kernel makes
// that task's loss NaN instead.
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "heads_checks.h"
#include "kernels/heads.h"

namespace mtl_fast {
namespace {

cuda::Dtype kernel_dtype(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return cuda::Dtype::kFloat;
    case at::kDouble: return cuda::Dtype::kDouble;
    case at::kHalf: return cuda::Dtype::kHalf;
    case at::kBFloat16: return cuda::Dtype::kBFloat16;
    default:
      TORCH_CHECK_TYPE(false, name, ": the CUDA kernels take float32, float64, float16 or bfloat16, got ",
                       t.scalar_type(), " (shape ", t.sizes(), ")");
  }
}

std::tuple<at::Tensor, at::Tensor> heads_loss_cuda(const at::Tensor& logits, const at::Tensor& class_targets,
                                                   const at::Tensor& value_targets, at::IntArrayRef sizes,
                                                   const c10::List<bool>& regression, int64_t ignore_index,
                                                   c10::string_view reduction) {
  const std::vector<HeadsTask> tasks = check_heads_loss_inputs(logits, class_targets, value_targets, sizes,
                                                               regression);
  const HeadsReduction mode = parse_heads_reduction(reduction);
  const cuda::Dtype dtype = kernel_dtype(logits, "logits");
  const c10::cuda::CUDAGuard guard(logits.device());
  const at::Tensor z = logits.contiguous(), classes = class_targets.contiguous(),
                   values = value_targets.contiguous();
  const int64_t batch = z.size(0), K = static_cast<int64_t>(tasks.size());
  const at::ScalarType acc = at::toOpMathType(z.scalar_type());
  at::Tensor losses = mode == HeadsReduction::kNone ? at::empty({K, batch}, z.options().dtype(acc))
                                                    : at::empty({K}, z.options().dtype(acc));
  at::Tensor grad = at::empty_like(z);
  cuda::heads_loss_launch(dtype, z.const_data_ptr(), batch, z.size(1), tasks.data(), K,
                          classes.const_data_ptr<int64_t>(), values.const_data_ptr(), values.size(1), ignore_index,
                          mode, losses.data_ptr(), grad.data_ptr(), c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {losses, grad};
}

at::Tensor heads_loss_backward_cuda(const at::Tensor& grad_losses, const at::Tensor& grad, at::IntArrayRef sizes) {
  const std::vector<HeadsTask> tasks = check_heads_backward_inputs(grad_losses, grad, sizes);
  const cuda::Dtype dtype = kernel_dtype(grad, "grad");
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::Tensor g = grad.contiguous();
  const at::Tensor scales = grad_losses.to(at::toOpMathType(g.scalar_type())).contiguous();
  at::Tensor out = at::empty_like(g);
  if (out.numel() == 0) return out;
  cuda::heads_loss_backward_launch(dtype, scales.const_data_ptr(), grad_losses.dim() == 2, g.const_data_ptr(),
                                   g.size(0), g.size(1), tasks.data(), static_cast<int64_t>(tasks.size()),
                                   out.data_ptr(), c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mtl_fast, CUDA, m) {
  m.impl("heads_loss", &heads_loss_cuda);
  m.impl("heads_loss_backward", &heads_loss_backward_cuda);
}

}  // namespace mtl_fast
