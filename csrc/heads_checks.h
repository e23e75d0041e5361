// Argument checks of the fused heads' loss ops, shared by the CPU and CUDA bindings. Every message names the
// argument, its shape and dtype; values the caller got wrong raise ValueError/TypeError in Python.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "kernels/heads_layout.h"

namespace mtl_fast {

inline HeadsReduction parse_heads_reduction(c10::string_view reduction) {
  if (reduction == "none") return HeadsReduction::kNone;
  if (reduction == "mean") return HeadsReduction::kMean;
  TORCH_CHECK_VALUE(reduction == "sum", "reduction: expected 'none', 'mean' or 'sum', got '", reduction, "'");
  return HeadsReduction::kSum;
}

// The tasks' column ranges from their sizes; checks sizes and that the logits hold exactly these columns.
inline std::vector<HeadsTask> heads_tasks(at::IntArrayRef sizes, const std::vector<uint8_t>& regression,
                                          int64_t width) {
  TORCH_CHECK_VALUE(!sizes.empty(), "sizes: expected at least one task, got none");
  TORCH_CHECK_VALUE(regression.size() == sizes.size(), "regression: expected one flag per task (", sizes.size(),
                    "), got ", regression.size());
  std::vector<HeadsTask> tasks;
  int64_t offset = 0, classification = 0, value_column = 0;
  for (size_t k = 0; k < sizes.size(); ++k) {
    TORCH_CHECK_VALUE(sizes[k] >= 1, "sizes[", k, "]: expected at least one output, got ", sizes[k]);
    if (regression[k]) {
      tasks.push_back(HeadsTask{offset, sizes[k], value_column, static_cast<int32_t>(k), 1});
      value_column += sizes[k];
    } else {
      tasks.push_back(HeadsTask{offset, sizes[k], classification, static_cast<int32_t>(k), 0});
      ++classification;
    }
    offset += sizes[k];
  }
  TORCH_CHECK_VALUE(offset == width, "logits: expected ", offset, " columns (the sum of sizes ", sizes,
                    "), got ", width);
  return tasks;
}

inline std::vector<HeadsTask> check_heads_loss_inputs(const at::Tensor& logits, const at::Tensor& class_targets,
                                                      const at::Tensor& value_targets, at::IntArrayRef sizes,
                                                      const c10::List<bool>& regression) {
  TORCH_CHECK_VALUE(logits.dim() == 2, "logits: expected shape (batch, sum of sizes), got ", logits.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(logits.scalar_type()), "logits: expected a floating dtype, got ",
                   logits.scalar_type());
  const int64_t batch = logits.size(0);
  const std::vector<uint8_t> flags(regression.begin(), regression.end());
  std::vector<HeadsTask> tasks = heads_tasks(sizes, flags, logits.size(1));
  int64_t num_classification = 0, value_width = 0;
  for (const HeadsTask& t : tasks) {
    if (t.regression) value_width += t.size;
    else ++num_classification;
  }
  TORCH_CHECK_VALUE(class_targets.dim() == 2 && class_targets.size(0) == num_classification &&
                        class_targets.size(1) == batch,
                    "class_targets: expected shape (", num_classification, ", ", batch,
                    ") (classification tasks, batch), got ", class_targets.sizes());
  TORCH_CHECK_TYPE(class_targets.scalar_type() == at::kLong, "class_targets: expected int64, got ",
                   class_targets.scalar_type());
  TORCH_CHECK_VALUE(value_targets.dim() == 2 && value_targets.size(0) == batch &&
                        value_targets.size(1) == value_width,
                    "value_targets: expected shape (", batch, ", ", value_width,
                    ") (batch, regression outputs), got ", value_targets.sizes());
  const at::ScalarType acc = at::toOpMathType(logits.scalar_type());
  TORCH_CHECK_TYPE(value_targets.scalar_type() == acc, "value_targets: expected ", acc, " for ",
                   logits.scalar_type(), " logits, got ", value_targets.scalar_type());
  for (const at::Tensor* t : {&class_targets, &value_targets}) {
    TORCH_CHECK_VALUE(t->device() == logits.device(), "targets: are on ", t->device(), " but logits are on ",
                      logits.device());
  }
  return tasks;
}

// The per-task (K) or per-sample (K, batch) scales of the loss backward, for a (batch, width) gradient.
inline std::vector<HeadsTask> check_heads_backward_inputs(const at::Tensor& grad_losses, const at::Tensor& grad,
                                                          at::IntArrayRef sizes) {
  TORCH_CHECK_VALUE(grad.dim() == 2, "grad: expected shape (batch, sum of sizes), got ", grad.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(grad.scalar_type()), "grad: expected a floating dtype, got ",
                   grad.scalar_type());
  const int64_t K = static_cast<int64_t>(sizes.size());
  // The backward scales every task's columns alike, whatever its loss: the flags only fill the layout.
  std::vector<HeadsTask> tasks = heads_tasks(sizes, std::vector<uint8_t>(sizes.size(), 0), grad.size(1));
  TORCH_CHECK_VALUE((grad_losses.dim() == 1 && grad_losses.size(0) == K) ||
                        (grad_losses.dim() == 2 && grad_losses.size(0) == K && grad_losses.size(1) == grad.size(0)),
                    "grad_losses: expected shape (", K, ") or (", K, ", ", grad.size(0), "), got ",
                    grad_losses.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(grad_losses.scalar_type()), "grad_losses: expected a floating dtype, got ",
                   grad_losses.scalar_type());
  TORCH_CHECK_VALUE(grad_losses.device() == grad.device(), "grad_losses: is on ", grad_losses.device(),
                    " but grad is on ", grad.device());
  return tasks;
}

}  // namespace mtl_fast
