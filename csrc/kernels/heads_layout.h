// How the fused heads' loss ops see the K tasks: shared by the CPU kernels and the CUDA launchers, so it
// needs neither torch nor the CUDA runtime.
#pragma once

#include <cstdint>

namespace mtl_fast {

enum class HeadsReduction : int32_t { kNone, kMean, kSum };

// One task's columns of the (B, sum of sizes) logits and where its targets are. For a classification task,
// `target` is its row of the (K_classification, B) int64 class targets; for a regression task, its first
// column in the (B, sum of regression sizes) value targets.
struct HeadsTask {
  int64_t offset;
  int64_t size;
  int64_t target;
  int32_t index;  // k: the task's entry in the losses
  int32_t regression;
};

}  // namespace mtl_fast
