// The one way the kernels are launched: CUDA's <<<>>> under nvcc, the emulator's launch with the host compiler
// (csrc/emulation/), so the kernel sources are the same for both.
#pragma once

#include <cuda_runtime.h>

#include <utility>

namespace mtl_fast {
namespace cuda {

#if defined(__CUDACC__)
template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream, Args&&... args) {
  kernel<<<grid, block, 0, stream>>>(std::forward<Args>(args)...);
}
#else
using cuda_emulation::launch_kernel;
#endif

}  // namespace cuda
}  // namespace mtl_fast
