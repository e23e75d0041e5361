// Fused loss of K linear heads (see kernels/heads.h): per-task softmax cross-entropy or squared error and
// its gradient with respect to the logits, for every task in one launch.
//
// One block per task owns all of that task's rows: it first counts the targets a mean divides by, then
// walks the rows with one group of lanes per row (as many lanes as the task has columns, rounded up to a
// power of two, at most a warp), so the gradient is written once, already scaled, and the task's loss is
// reduced in registers and shared memory in a fixed order: no atomics, no second launch, same bits every run.
#include <cmath>

#include "kernels/heads.h"
#include "kernels/launch_kernel.cuh"
#include "kernels/multi_tensor.cuh"

namespace mtl_fast {
namespace cuda {
namespace {

constexpr int kHeadsThreads = 256;
constexpr int kWarps = kHeadsThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;
// Tasks per launch: the table is a by-value kernel argument, kept under the 4 KiB every CUDA version takes.
constexpr int kMaxHeadsTasks = 64;

struct TaskTable {
  HeadsTask task[kMaxHeadsTasks];
  int32_t count;
};
static_assert(sizeof(TaskTable) <= 3200, "TaskTable plus the other kernel arguments must fit in 4 KiB");

// The accumulation type: float for float and the 16-bit types, double for double.
template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_acc(typename Acc<T>::type x) {
  return static_cast<T>(x);
}
template <>
__device__ __forceinline__ __half from_acc<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

__device__ __forceinline__ float exp_acc(float x) { return expf(x); }
__device__ __forceinline__ double exp_acc(double x) { return exp(x); }
__device__ __forceinline__ float log_acc(float x) { return logf(x); }
__device__ __forceinline__ double log_acc(double x) { return log(x); }

// Reductions over the `lanes` (a power of two) aligned lanes of a group; every lane of the warp must call.
template <typename A>
__device__ __forceinline__ A group_max(A v, int lanes) {
  for (int o = lanes / 2; o > 0; o /= 2) {
    const A other = __shfl_xor_sync(kFullMask, v, o);
    v = other > v ? other : v;
  }
  return v;
}

template <typename A>
__device__ __forceinline__ A group_sum(A v, int lanes) {
  for (int o = lanes / 2; o > 0; o /= 2) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

// The block's sum of v, in the same order every run, returned to every thread.
__device__ double block_sum(double v, double* shared) {
  v = group_sum(v, 32);
  if (threadIdx.x % 32 == 0) shared[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0;
    for (int w = 0; w < kWarps; ++w) total += shared[w];
    shared[kWarps] = total;
  }
  __syncthreads();
  const double total = shared[kWarps];
  __syncthreads();  // shared is reused by the next call
  return total;
}

template <typename T>
__global__ void __launch_bounds__(kHeadsThreads)
    heads_loss_kernel(const __grid_constant__ TaskTable table, const T* __restrict__ logits, int64_t batch,
                      int64_t width, const int64_t* __restrict__ class_targets,
                      const typename Acc<T>::type* __restrict__ value_targets, int64_t value_width,
                      int64_t ignore_index, HeadsReduction reduction, typename Acc<T>::type* __restrict__ losses,
                      T* __restrict__ grad) {
  using A = typename Acc<T>::type;
  __shared__ double shared[kWarps + 1];
  const HeadsTask task = table.task[blockIdx.x];
  const int64_t* targets = class_targets + task.target * batch;

  double count = static_cast<double>(batch * task.size);
  if (!task.regression) {
    double valid = 0;
    for (int64_t b = threadIdx.x; b < batch; b += kHeadsThreads) valid += targets[b] != ignore_index ? 1 : 0;
    count = block_sum(valid, shared);
  }
  const A scale = reduction == HeadsReduction::kMean ? static_cast<A>(1.0 / count) : A(1);

  int lanes = 1;
  while (lanes < task.size && lanes < 32) lanes *= 2;
  const int lane = threadIdx.x % lanes;
  const int group = threadIdx.x / lanes;
  const int groups = kHeadsThreads / lanes;
  double task_loss = 0;
  // Uniform trip count for the whole block: every lane reaches the group shuffles, active or not.
  for (int64_t first = 0; first < batch; first += groups) {
    const int64_t b = first + group;
    const bool active = b < batch;
    const T* z = logits + (active ? b * width + task.offset : 0);
    T* g = grad + (active ? b * width + task.offset : 0);
    A row_loss = 0;
    if (task.regression) {
      const A* t = value_targets + (active ? b * value_width + task.target : 0);
      A sum = 0;
      for (int64_t c = lane; active && c < task.size; c += lanes) {
        const A d = to_acc(z[c]) - t[c];
        sum += d * d;
        g[c] = from_acc<T>(2 * d * scale);
      }
      row_loss = group_sum(sum, lanes);
    } else {
      const int64_t target = active ? targets[b] : ignore_index;
      const bool ignored = target == ignore_index;
      const bool in_range = target >= 0 && target < task.size;
      A m = -INFINITY;
      for (int64_t c = lane; active && !ignored && c < task.size; c += lanes) {
        const A v = to_acc(z[c]);
        m = v > m ? v : m;
      }
      m = group_max(m, lanes);
      A s = 0;
      for (int64_t c = lane; active && !ignored && c < task.size; c += lanes) s += exp_acc(to_acc(z[c]) - m);
      s = group_sum(s, lanes);
      // A class outside [0, size) cannot stop the kernel without a host sync: it makes the row NaN instead.
      const A nan = static_cast<A>(NAN);
      for (int64_t c = lane; active && c < task.size; c += lanes) {
        A d = 0;
        if (!ignored) d = in_range ? (exp_acc(to_acc(z[c]) - m) / s - (c == target ? A(1) : A(0))) * scale : nan;
        g[c] = from_acc<T>(d);
      }
      if (!ignored) row_loss = in_range ? log_acc(s) + m - to_acc(z[target]) : nan;
    }
    if (active && lane == 0) {
      if (reduction == HeadsReduction::kNone) {
        losses[task.index * batch + b] = row_loss;
      } else {
        task_loss += row_loss;
      }
    }
  }
  if (reduction == HeadsReduction::kNone) return;
  const double total = block_sum(task_loss, shared);
  if (threadIdx.x == 0)
    losses[task.index] = static_cast<A>(reduction == HeadsReduction::kMean ? total / count : total);
}

template <typename T>
__global__ void __launch_bounds__(kHeadsThreads)
    heads_loss_backward_kernel(const __grid_constant__ TaskTable table,
                               const typename Acc<T>::type* __restrict__ scales, bool per_sample,
                               const T* __restrict__ grad, int64_t batch, int64_t width, T* __restrict__ out) {
  const HeadsTask task = table.task[blockIdx.y];
  const int64_t n = batch * task.size;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kHeadsThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kHeadsThreads + threadIdx.x; i < n; i += stride) {
    const int64_t b = i / task.size;
    const int64_t at = b * width + task.offset + (i - b * task.size);
    const auto factor = per_sample ? scales[task.index * batch + b] : scales[task.index];
    out[at] = from_acc<T>(to_acc(grad[at]) * factor);
  }
}

// Calls launch(table) for each run of at most kMaxHeadsTasks tasks.
template <typename F>
void for_each_table(const HeadsTask* tasks, int64_t num_tasks, F&& launch) {
  for (int64_t first = 0; first < num_tasks; first += kMaxHeadsTasks) {
    TaskTable table{};
    table.count = static_cast<int32_t>(std::min<int64_t>(kMaxHeadsTasks, num_tasks - first));
    std::copy(tasks + first, tasks + first + table.count, table.task);
    launch(table);
  }
}

}  // namespace

void heads_loss_launch(Dtype dtype, const void* logits, int64_t batch, int64_t width, const HeadsTask* tasks,
                       int64_t num_tasks, const int64_t* class_targets, const void* value_targets,
                       int64_t value_width, int64_t ignore_index, HeadsReduction reduction, void* losses,
                       void* grad, cudaStream_t stream) {
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    for_each_table(tasks, num_tasks, [&](const TaskTable& table) {
      launch_kernel(heads_loss_kernel<T>, static_cast<unsigned>(table.count), kHeadsThreads, stream, table,
                    static_cast<const T*>(logits), batch, width, class_targets, static_cast<const A*>(value_targets),
                    value_width, ignore_index, reduction, static_cast<A*>(losses), static_cast<T*>(grad));
    });
  });
}

void heads_loss_backward_launch(Dtype dtype, const void* grad_losses, bool per_sample, const void* grad,
                                int64_t batch, int64_t width, const HeadsTask* tasks, int64_t num_tasks,
                                void* out, cudaStream_t stream) {
  if (batch == 0) return;
  int64_t widest = 0;
  for (int64_t k = 0; k < num_tasks; ++k) widest = std::max(widest, tasks[k].size);
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(ceil_div(batch * widest, kHeadsThreads), 1024));
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    for_each_table(tasks, num_tasks, [&](const TaskTable& table) {
      const dim3 grid(blocks, static_cast<unsigned>(table.count));
      launch_kernel(heads_loss_backward_kernel<T>, grid, kHeadsThreads, stream, table,
                    static_cast<const A*>(grad_losses), per_sample, static_cast<const T*>(grad), batch, width,
                    static_cast<T*>(out));
    });
  });
}

}  // namespace cuda
}  // namespace mtl_fast
