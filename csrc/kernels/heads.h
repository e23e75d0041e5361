// Host entry points of the fused heads' loss kernels (kernels/heads.cu): raw pointers, sizes and a stream,
// no torch. Like kernels/launch.h, they only enqueue work on `stream`: no allocation, no host sync.
#pragma once

#include "kernels/heads_layout.h"
#include "kernels/launch.h"

namespace mtl_fast {
namespace cuda {

// Per-task softmax cross-entropy (or squared error for regression tasks) of the logits (B x width, row-major,
// `dtype`), and its gradient with respect to the logits, in one pass.
//   class_targets: K_classification x B int64; a target equal to ignore_index contributes nothing, one
//                  outside [0, size) makes its task's loss and that row's gradient NaN (checking it on the
//                  host would need a sync).
//   value_targets: B x value_width of the accumulation type (float, or double for double logits).
//   losses:        accumulation type; K values (kMean, kSum) or K x B (kNone).
//   grad:          B x width of `dtype`: d losses / d logits, the 1/N of kMean included.
// One launch per kMaxHeadsTasks tasks, one block per task: each block owns all the rows of its task, so its
// mean's count and sum need no second launch, no atomics, and come out the same bits every run.
void heads_loss_launch(Dtype dtype, const void* logits, int64_t batch, int64_t width, const HeadsTask* tasks,
                       int64_t num_tasks, const int64_t* class_targets, const void* value_targets,
                       int64_t value_width, int64_t ignore_index, HeadsReduction reduction, void* losses,
                       void* grad, cudaStream_t stream);

// out[b, offset_k + c] = grad[b, offset_k + c] * scale_k (per_sample: scale_{k, b}); grad_losses holds the
// K (or K x B) scales in the accumulation type.
void heads_loss_backward_launch(Dtype dtype, const void* grad_losses, bool per_sample, const void* grad,
                                int64_t batch, int64_t width, const HeadsTask* tasks, int64_t num_tasks,
                                void* out, cudaStream_t stream);

}  // namespace cuda
}  // namespace mtl_fast
