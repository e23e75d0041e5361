// A CPU emulator of the CUDA execution model, for tests only: the kernels of csrc/kernels/*.cu compile with the
// host compiler against this header (through the stand-in CUDA headers in csrc/emulation/include/) and run
// thread by thread, so sanitizers see what compute-sanitizer would.
//
// Semantics:
//   - blocks run one after another; each CUDA thread of a block is an OS thread;
//   - __shared__ variables are function-local statics: one object per declaration, shared by the threads of the
//     running block. As blocks never overlap, that is one object per block. A block sees what the previous one
//     left there (zeros at first), where a GPU would give garbage: a read of shared memory before the block's
//     first write goes unnoticed (unless it races with that write, which TSan reports);
//   - __syncthreads (and __syncthreads_or) is a barrier of the block's live threads: a thread that returned drops
//     out, as on sm_70+; threads reaching different barriers (call sites) fail the run (divergent barrier);
//   - warp shuffles go through a per-warp exchange and a barrier of the warp's live lanes; the mask must name
//     every lane of the warp, every lane must take part at the same source line, and none may have exited;
//   - device attributes and occupancy answer with the figures of a chosen device profile (set_device_profile).
// Anything the kernels need that is not emulated fails to compile or stops the run with a message, never
// silently answers something plausible.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <source_location>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __grid_constant__

// One object per declaration, shared by every thread that runs it: as blocks never overlap, one per block.
#define __shared__ static

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;
constexpr int warpSize = 32;

enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorInvalidConfiguration = 9 };
using cudaStream_t = struct CUstream_st*;
// The attributes the launch code asks for; asking for another one does not compile.
enum cudaDeviceAttr {
  cudaDevAttrMultiProcessorCount = 16,
};

#define CUDART_NAN __longlong_as_double(0xfff8000000000000ULL)

namespace cuda_emulation {

[[noreturn]] inline void fail(const char* what, int line) {
  std::fprintf(stderr, "cuda emulation: %s (kernel source line %d, block (%u,%u,%u), thread (%u,%u,%u))\n", what,
               line, blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);
  std::abort();
}

// The figures the launch code may ask for. blocks_per_multiprocessor stands in for the occupancy a kernel's
// registers allow, which only the real compiler knows: what matters is that the grid plans of big and small
// devices both run.
struct DeviceProfile {
  const char* name;
  int multiprocessors;
  int blocks_per_multiprocessor;
  int threads_per_multiprocessor;
};
inline constexpr DeviceProfile kDeviceProfiles[] = {
    {"h100", 132, 4, 2048},
    {"consumer", 24, 2, 1536},  // an RTX 4060-class card
    {"one_sm", 1, 1, 1024},     // every thread of the grid walks many items
};
inline constexpr int kNumDeviceProfiles = sizeof(kDeviceProfiles) / sizeof(kDeviceProfiles[0]);

// The current device's index in kDeviceProfiles (what cudaGetDevice reports, so caches keyed by device see a
// change of profile as another device).
inline std::atomic<int> current_device{0};
inline std::atomic<int> last_error{cudaSuccess};

// Sleeps until `word` may have changed from `expected`; wakes up to `count` sleepers. Plain futexes: libstdc++'s
// atomic waits spin first, and with a hundred threads per core spinning starves the thread being waited for.
inline void futex_wait(std::atomic<uint32_t>& word, uint32_t expected) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}
inline void futex_wake(std::atomic<uint32_t>& word, int count) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAKE_PRIVATE, count, nullptr, nullptr, 0);
}

// A barrier of the live members of a group; a member that leaves drops out of the current and later phases.
// Waiters sleep on the phase counter (a futex), so a phase costs one wake-up per member and no lock handoffs.
// (arrived, live) share one atomic word, so exactly one arrival or departure completes each phase.
class Barrier {
 public:
  // Before any member arrives.
  void reset(int members) { state_ = static_cast<uint64_t>(members) << 32; }

  // site: what identifies the barrier (non-zero); line: the kernel source line, for messages.
  void arrive_and_wait(uintptr_t site, int line) {
    uintptr_t expected = 0;
    if (!site_.compare_exchange_strong(expected, site) && expected != site)
      fail("divergent barrier: threads of one group wait at different barriers", line);
    const uint32_t phase = phase_.load(std::memory_order_acquire);
    uint64_t state = state_.load(std::memory_order_relaxed);
    uint64_t next;
    do {
      next = state + 1;
      if (arrived(next) == live(next)) next = pack(live(next), 0);
    } while (!state_.compare_exchange_weak(state, next, std::memory_order_acq_rel));
    if (arrived(next) == 0) return release();
    while (phase_.load(std::memory_order_acquire) == phase) futex_wait(phase_, phase);
  }

  void leave() {
    uint64_t state = state_.load(std::memory_order_relaxed);
    uint64_t next;
    do {
      const uint32_t members = live(state) - 1;
      next = pack(members, arrived(state) == members ? 0 : arrived(state));
    } while (!state_.compare_exchange_weak(state, next, std::memory_order_acq_rel));
    if (arrived(state) > 0 && arrived(next) == 0) release();
  }

 private:
  static uint32_t live(uint64_t state) { return static_cast<uint32_t>(state >> 32); }
  static uint32_t arrived(uint64_t state) { return static_cast<uint32_t>(state); }
  static uint64_t pack(uint32_t members, uint32_t count) { return static_cast<uint64_t>(members) << 32 | count; }

  // Every member has arrived, none can arrive again before the phase changes.
  void release() {
    site_.store(0, std::memory_order_relaxed);
    phase_.fetch_add(1, std::memory_order_release);
    futex_wake(phase_, INT32_MAX);
  }

  std::atomic<uint64_t> state_{0};
  std::atomic<uint32_t> phase_{0};
  std::atomic<uintptr_t> site_{0};
};

// One warp's shuffle exchange. Rounds alternate between two slot rows: a lane writes row r % 2 only after
// every lane passed round r - 1's barrier, hence after every lane read round r - 2 from that row.
struct Warp {
  struct Slot {
    uint64_t bits;
    uint64_t round;
    int line;
  };
  Barrier barrier;
  unsigned mask;  // the lanes this warp has (the last warp of a block may be partial)
  Slot slots[2][32];
};

struct Block {
  explicit Block(unsigned threads) : warps(new Warp[(threads + 31) / 32]) {
    barrier.reset(static_cast<int>(threads));
    for (unsigned w = 0; 32 * w < threads; ++w) {
      const unsigned lanes = std::min(32u, threads - 32 * w);
      warps[w].barrier.reset(static_cast<int>(lanes));
      warps[w].mask = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1;
    }
  }
  Barrier barrier;
  std::unique_ptr<Warp[]> warps;
  // __syncthreads_or: vote v goes to votes[v % 3]. After vote v's barrier every thread has read vote v - 1,
  // so its slot can be cleared for vote v + 2, which no thread reaches before all pass vote v + 1's barrier.
  std::atomic<int> votes[3] = {};
};

// The running block of this OS thread and the number of shuffles this CUDA thread has taken part in.
inline thread_local Block* current_block = nullptr;
inline thread_local uint64_t shuffle_rounds = 0;
inline thread_local uint64_t block_votes = 0;

inline unsigned linear_thread() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }

// Every lane of `mask` deposits its value; returns the value lane source(lane) deposited.
template <typename T, typename Source>
T exchange(unsigned mask, T value, Source source, int line) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable<T>::value, "shuffle of this type");
  const unsigned thread = linear_thread();
  Warp& warp = current_block->warps[thread / 32];
  const unsigned lane = thread % 32;
  if (mask != warp.mask) fail("shuffle mask other than all the lanes of the warp (not emulated)", line);
  const uint64_t round = ++shuffle_rounds;
  Warp::Slot& mine = warp.slots[round % 2][lane];
  mine.bits = 0;
  std::memcpy(&mine.bits, &value, sizeof(T));
  mine.round = round;
  mine.line = line;
  warp.barrier.arrive_and_wait(static_cast<uintptr_t>(line), line);
  for (unsigned other = 0; other < 32; ++other) {
    if (!(mask >> other & 1u)) continue;
    const Warp::Slot& theirs = warp.slots[round % 2][other];
    if (theirs.round != round || theirs.line != line)
      fail("a lane of the shuffle mask has exited or is at another shuffle", line);
  }
  const unsigned from = source(lane);
  T result;
  std::memcpy(&result, &warp.slots[round % 2][from < 32 && (mask >> from & 1u) ? from : lane].bits, sizeof(T));
  return result;
}


// Waits longer than this for a block mean that its threads wait for each other in a cycle (a barrier some
// thread never reaches): the run stops with a message instead of hanging.
constexpr auto kDeadlockTimeout = std::chrono::seconds(300);

// The OS threads that run the CUDA threads of one block after another: thread t of every block runs on worker
// t, so a launch of many blocks does not create threads by the million.
class Workers {
 public:
  ~Workers() {
    stopping_ = true;
    for (auto& worker : workers_) {
      worker->go.fetch_add(1);
      futex_wake(worker->go, 1);
      worker->thread.join();
    }
  }

  // Runs body() as every thread of the block `index`, then returns.
  void run_block(dim3 grid, dim3 block, uint3 index, const std::function<void()>& body) {
    const unsigned threads = block.x * block.y * block.z;
    Block state(threads);
    job_ = Job{grid, block, index, &state, &body};
    unfinished_ = threads;
    while (workers_.size() < threads) workers_.push_back(std::make_unique<Worker>(this, workers_.size()));
    for (unsigned t = 0; t < threads; ++t) {
      workers_[t]->go.fetch_add(1, std::memory_order_release);
      futex_wake(workers_[t]->go, 1);
    }
    std::unique_lock<std::mutex> lock(mutex_);
    if (!finished_.wait_for(lock, kDeadlockTimeout, [&] { return unfinished_ == 0; }))
      fail("deadlock: the threads of this block wait at barriers some of them never reach", 0);
  }

 private:
  struct Job {
    dim3 grid, block;
    uint3 index;
    Block* state;
    const std::function<void()>* body;
  };

  struct Worker {
    Worker(Workers* pool, unsigned t) : thread([pool, t, this] { pool->work(t, *this); }) {}
    std::atomic<uint32_t> go{0};
    std::thread thread;
  };

  void work(unsigned t, Worker& self) {
    uint32_t seen = 0;
    for (;;) {
      while (self.go.load(std::memory_order_acquire) == seen) futex_wait(self.go, seen);
      seen = self.go.load(std::memory_order_acquire);
      if (stopping_) return;
      const Job& job = job_;
      threadIdx = uint3{t % job.block.x, t / job.block.x % job.block.y, t / (job.block.x * job.block.y)};
      blockIdx = job.index;
      blockDim = job.block;
      gridDim = job.grid;
      current_block = job.state;
      shuffle_rounds = 0;
      block_votes = 0;
      (*job.body)();
      job.state->warps[t / 32].barrier.leave();
      job.state->barrier.leave();
      const std::lock_guard<std::mutex> lock(mutex_);
      if (--unfinished_ == 0) finished_.notify_one();
    }
  }

  std::vector<std::unique_ptr<Worker>> workers_;
  Job job_{};
  std::atomic<bool> stopping_{false};
  std::mutex mutex_;
  std::condition_variable finished_;
  unsigned unfinished_ = 0;
};

// One launch at a time, on one set of workers: the __shared__ statics are one object per declaration for the
// whole process.
inline std::mutex launches;
inline Workers workers;

// kernel<<<grid, block, 0, stream>>>(args...), executed before it returns.
template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t, Args&&... args) {
  const unsigned long long threads = 1ull * block.x * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535 || threads == 0 ||
      threads > 1024 || block.z > 64) {
    last_error = cudaErrorInvalidConfiguration;
    return;
  }
  // Converted once, as the kernel's parameter buffer is.
  const std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  const std::lock_guard<std::mutex> lock(launches);
  const std::function<void()> body = [&] { std::apply(kernel, params); };
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) workers.run_block(grid, block, uint3{x, y, z}, body);
}

// Selects the profile named `name`; false when there is none of that name.
inline bool set_device_profile(const char* name) {
  for (int d = 0; d < kNumDeviceProfiles; ++d) {
    if (std::strcmp(kDeviceProfiles[d].name, name) == 0) {
      current_device = d;
      return true;
    }
  }
  return false;
}

}  // namespace cuda_emulation

// ---- the runtime API the launch code calls --------------------------------------------------------------------

inline cudaError_t cudaGetDevice(int* device) {
  *device = cuda_emulation::current_device;
  return cudaSuccess;
}

inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int device) {
  if (device < 0 || device >= cuda_emulation::kNumDeviceProfiles) return cudaErrorInvalidValue;
  const cuda_emulation::DeviceProfile& profile = cuda_emulation::kDeviceProfiles[device];
  switch (attribute) {
    case cudaDevAttrMultiProcessorCount: *value = profile.multiprocessors; break;
  }
  return cudaSuccess;
}

inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, const void*, int threads, size_t) {
  const cuda_emulation::DeviceProfile& profile = cuda_emulation::kDeviceProfiles[cuda_emulation::current_device];
  *blocks = std::max(0, std::min(profile.blocks_per_multiprocessor, profile.threads_per_multiprocessor / threads));
  return cudaSuccess;
}

inline cudaError_t cudaGetLastError() { return static_cast<cudaError_t>(cuda_emulation::last_error.exchange(0)); }

// ---- device functions ----------------------------------------------------------------------------------------

namespace cuda_emulation {
// What tells one __syncthreads from another: the function it is in, with its template arguments (GCC's
// function_name() is the full signature), and the line. The line alone would merge the same line of two
// instantiations of a template, which are two barriers on a GPU.
inline std::pair<uintptr_t, int> barrier_site(const std::source_location& where) {
  return {reinterpret_cast<uintptr_t>(where.function_name()) * 131 + where.line(), static_cast<int>(where.line())};
}
}  // namespace cuda_emulation

inline void __syncthreads(std::source_location where = std::source_location::current()) {
  const auto [site, line] = cuda_emulation::barrier_site(where);
  cuda_emulation::current_block->barrier.arrive_and_wait(site, line);
}

// __syncthreads, returning non-zero when the predicate is non-zero for any live thread of the block.
inline int __syncthreads_or(int predicate, std::source_location where = std::source_location::current()) {
  const auto [site, line] = cuda_emulation::barrier_site(where);
  cuda_emulation::Block& block = *cuda_emulation::current_block;
  const uint64_t vote = cuda_emulation::block_votes++;
  if (predicate) block.votes[vote % 3].fetch_or(1, std::memory_order_relaxed);
  block.barrier.arrive_and_wait(site, line);
  const int result = block.votes[vote % 3].load(std::memory_order_relaxed);
  if (cuda_emulation::linear_thread() == 0) block.votes[(vote + 2) % 3].store(0, std::memory_order_relaxed);
  return result;
}

template <typename T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = warpSize, int line = __builtin_LINE()) {
  if (width != warpSize) cuda_emulation::fail("shuffle width other than 32 (not emulated)", line);
  return cuda_emulation::exchange(mask, value, [&](unsigned lane) { return lane + delta; }, line);
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = warpSize, int line = __builtin_LINE()) {
  if (width != warpSize) cuda_emulation::fail("shuffle width other than 32 (not emulated)", line);
  return cuda_emulation::exchange(mask, value, [&](unsigned lane) { return lane ^ static_cast<unsigned>(lane_mask); },
                                  line);
}

template <typename T>
T __ldg(const T* p) {
  return *p;
}

inline double __longlong_as_double(unsigned long long bits) {
  double x;
  std::memcpy(&x, &bits, sizeof(x));
  return x;
}

inline float __double2float_rn(double x) { return static_cast<float>(x); }

// ---- float16 and bfloat16 --------------------------------------------------------------------------------------

namespace cuda_emulation {

// A binary floating format of `digits` significant bits (the implicit one included) and `exponent_bits`.
template <int digits, int exponent_bits>
struct Format {
  static constexpr int kBias = (1 << (exponent_bits - 1)) - 1;
  static constexpr int kMinExponent = 1 - kBias;
  static constexpr int kFractionBits = digits - 1;
  static constexpr uint16_t kExponentMask = ((1u << exponent_bits) - 1) << kFractionBits;

  // Round to nearest, ties to even, in one step from double (so float and double inputs round alike, as the
  // hardware conversions do): scaling by a power of two is exact, so nearbyint rounds at the format's last bit.
  static uint16_t encode(double x) {
    const uint16_t sign = std::signbit(x) ? uint16_t(1u << 15) : uint16_t(0);
    if (std::isnan(x)) return uint16_t(kExponentMask | (1u << (kFractionBits - 1)));
    const double magnitude = std::fabs(x);
    if (magnitude == 0) return sign;
    int exponent;
    std::frexp(magnitude, &exponent);  // magnitude in [2^(exponent-1), 2^exponent)
    const int quantum = std::max(exponent - 1, kMinExponent) - kFractionBits;
    const double rounded = std::ldexp(std::nearbyint(std::ldexp(magnitude, -quantum)), quantum);
    if (rounded == 0) return sign;
    const double max_finite = std::ldexp(2.0 - std::ldexp(1.0, -kFractionBits), kBias);
    if (rounded > max_finite) return uint16_t(sign | kExponentMask);
    std::frexp(rounded, &exponent);
    if (exponent - 1 < kMinExponent)  // subnormal: the significand counts multiples of the smallest one
      return uint16_t(sign | static_cast<uint16_t>(std::ldexp(rounded, -(kMinExponent - kFractionBits))));
    const uint16_t fraction =
        static_cast<uint16_t>(std::ldexp(rounded, kFractionBits - (exponent - 1)) - std::ldexp(1.0, kFractionBits));
    return uint16_t(sign | (exponent - 1 + kBias) << kFractionBits | fraction);
  }

  static float decode(uint16_t bits) {
    const int field = (bits & kExponentMask) >> kFractionBits;
    const int fraction = bits & ((1u << kFractionBits) - 1);
    const float sign = bits >> 15 ? -1.0f : 1.0f;
    if (field == (kExponentMask >> kFractionBits)) return fraction ? NAN : sign * INFINITY;
    if (field == 0) return sign * std::ldexp(static_cast<float>(fraction), kMinExponent - kFractionBits);
    return sign * std::ldexp(1.0f + std::ldexp(static_cast<float>(fraction), -kFractionBits), field - kBias);
  }
};
using Half = Format<11, 5>;
using BFloat16 = Format<8, 8>;

}  // namespace cuda_emulation

struct __half {
  uint16_t bits;
};
struct __nv_bfloat16 {
  uint16_t bits;
};

inline float __half2float(__half x) { return cuda_emulation::Half::decode(x.bits); }
inline __half __float2half_rn(float x) { return __half{cuda_emulation::Half::encode(x)}; }
inline __half __double2half(double x) { return __half{cuda_emulation::Half::encode(x)}; }
inline float __bfloat162float(__nv_bfloat16 x) { return cuda_emulation::BFloat16::decode(x.bits); }
inline __nv_bfloat16 __float2bfloat16_rn(float x) { return __nv_bfloat16{cuda_emulation::BFloat16::encode(x)}; }
inline __nv_bfloat16 __double2bfloat16(double x) { return __nv_bfloat16{cuda_emulation::BFloat16::encode(x)}; }
