// Gram matrix G = J J^T of a chunked Jacobian in one pass over J, float64 products and sums.
//
// Stage 1: the K x K matrix is cut into tiles of R x R entries (R = 2, 4 or 8 so a tile's sums live in
// registers); grid.x runs over the tiles of the upper triangle, grid.y over slabs of columns. Tiles are the
// fastest grid index so the blocks reading the same columns run together and the rows re-read by several
// tiles (K > 8) come from L2. Each block writes its tile's sums, reduced in a fixed order, to a scratch row.
// Stage 2: one warp per entry of G adds up its scratch rows in a fixed order. No atomics anywhere: the
// result depends only on the input, the shapes and the device.
//
// Products are taken in float64 because float32 gradients at 1e+-30 overflow or flush to zero in float32
// products; on float32 input the float64 product is exact.
#include "kernels/common.h"
#include "kernels/launch_kernel.cuh"
#include "kernels/multi_tensor.cuh"

namespace mtl_fast {
namespace cuda {
namespace {

int tile_rows(int64_t K) { return K <= 2 ? 2 : K <= 4 ? 4 : 8; }

// Sums of products of rows (row_a + i) and (row_b + j) of J; a diagonal tile (row_a == row_b) keeps j >= i.
template <int R, bool kDiag>
struct TileSums {
  double s[R][R];

  __device__ __forceinline__ void add(const double (&a)[R], const double (&b)[R]) {
#pragma unroll
    for (int i = 0; i < R; ++i)
#pragma unroll
      for (int j = kDiag ? i : 0; j < R; ++j) s[i][j] = fma(a[i], b[j], s[i][j]);
  }
};

// Rows first_row .. first_row + R - 1 at columns [col, col + N); rows past K are left unread.
template <typename T, int R, int N>
__device__ __forceinline__ void load_rows(const ChunkSpan& span, int64_t first_row, int64_t K, int64_t col,
                                          Pack<T, N> (&rows)[R]) {
  const T* base = static_cast<const T*>(span.jac) + col;
#pragma unroll
  for (int r = 0; r < R; ++r)
    if (first_row + r < K) rows[r] = load_pack<T, N>(base + (first_row + r) * span.cols);
}

// Column n of the loaded rows in float64, zero for rows past K.
template <typename T, int R, int N>
__device__ __forceinline__ void column(const Pack<T, N> (&rows)[R], int n, int64_t first_row, int64_t K,
                                       double (&x)[R]) {
#pragma unroll
  for (int r = 0; r < R; ++r) x[r] = first_row + r < K ? to_double(rows[r].v[n]) : 0.0;
}

// Block-wide sum of every thread's tile: warp shuffles, then the warps in order.
template <int R, bool kDiag>
__device__ __forceinline__ void store_block_sums(const TileSums<R, kDiag>& sums, double* dst) {
  constexpr int kWarps = kThreads / 32;
  __shared__ double warp_sums[kWarps][R * R];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int i = 0; i < R; ++i) {
#pragma unroll
    for (int j = kDiag ? i : 0; j < R; ++j) {
      double v = sums.s[i][j];
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
      if (lane == 0) warp_sums[warp][i * R + j] = v;
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < R * R; e += kThreads) {
    if (kDiag && e % R < e / R) continue;
    double total = 0.0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) total += warp_sums[w][e];
    dst[e] = total;
  }
}

// kBytes: bytes of each row a thread reads at once; off-diagonal tiles read twice the rows, so half as wide.
template <typename T, int R, bool kDiag, int kBytes>
__device__ __forceinline__ void gram_tile(const ChunkTable& table, int64_t K, int64_t row_a, int64_t row_b,
                                          double* dst) {
  TileSums<R, kDiag> sums;
#pragma unroll
  for (int i = 0; i < R; ++i)
#pragma unroll
    for (int j = 0; j < R; ++j) sums.s[i][j] = 0.0;

  const int64_t thread = static_cast<int64_t>(blockIdx.y) * kThreads + threadIdx.x;
  const int64_t threads = static_cast<int64_t>(gridDim.y) * kThreads;
  for_each_item<T, kBytes>(table, thread, threads, [&](const ChunkSpan& span, int64_t col, auto width) {
    constexpr int N = decltype(width)::value;
    Pack<T, N> a[R];
    load_rows(span, row_a, K, col, a);
    if constexpr (kDiag) {
#pragma unroll
      for (int n = 0; n < N; ++n) {
        double x[R];
        column(a, n, row_a, K, x);
        sums.add(x, x);
      }
    } else {
      Pack<T, N> b[R];
      load_rows(span, row_b, K, col, b);
#pragma unroll
      for (int n = 0; n < N; ++n) {
        double x[R], y[R];
        column(a, n, row_a, K, x);
        column(b, n, row_b, K, y);
        sums.add(x, y);
      }
    }
  });
  store_block_sums(sums, dst);
}

// Stage 1. kMixed: K > R, so there are off-diagonal tiles; otherwise the single tile is diagonal.
// partial: [tile][rows][R * R]; this launch owns rows first_row .. first_row + gridDim.y - 1.
template <typename T, int R, bool kMixed>
__global__ void __launch_bounds__(kThreads)
    gram_partial_kernel(const __grid_constant__ ChunkTable table, int64_t K, int64_t row_blocks,
                        int64_t first_row, int64_t rows, double* partial) {
  double* dst = partial + (static_cast<int64_t>(blockIdx.x) * rows + first_row + blockIdx.y) * R * R;
  if constexpr (kMixed) {
    // Tile index -> (bi, bj), bi <= bj, in the packed order of pair_index.
    int64_t t = blockIdx.x, bi = 0;
    while (t >= row_blocks - bi) t -= row_blocks - bi++;
    const int64_t bj = bi + t;
    if (bi == bj)
      gram_tile<T, R, true, kVectorBytes / 2>(table, K, bi * R, bi * R, dst);
    else
      gram_tile<T, R, false, kVectorBytes / 2>(table, K, bi * R, bj * R, dst);
  } else {
    gram_tile<T, R, true, kVectorBytes>(table, K, 0, 0, dst);
  }
}

// Stage 2: one warp per entry (i, j), i <= j, written to both halves of out.
__global__ void __launch_bounds__(kThreads)
    gram_finish_kernel(const double* partial, int64_t K, int R, int64_t row_blocks, int64_t rows, double* out) {
  const int64_t entry = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (entry >= K * K) return;
  const int64_t i = entry / K, j = entry % K;
  if (j < i) return;
  const double* src =
      partial + pair_index(i / R, j / R, row_blocks) * rows * R * R + (i % R) * R + (j % R);
  double total = 0.0;
  for (int64_t r = lane; r < rows; r += 32) total += src[r * R * R];
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) total += __shfl_down_sync(0xffffffffu, total, offset);
  if (lane == 0) {
    out[i * K + j] = total;
    out[j * K + i] = total;
  }
}

using PartialKernel = void (*)(const ChunkTable, int64_t, int64_t, int64_t, int64_t, double*);

template <typename T>
PartialKernel partial_kernel(int64_t K) {
  switch (tile_rows(K)) {
    case 2: return gram_partial_kernel<T, 2, false>;
    case 4: return gram_partial_kernel<T, 4, false>;
    default: return K <= 8 ? gram_partial_kernel<T, 8, false> : gram_partial_kernel<T, 8, true>;
  }
}

// Launch geometry, the same for gram_workspace_size and gram_launch.
struct GramPlan {
  int tile_rows;
  int64_t row_blocks;
  int64_t tiles;
  std::vector<Batch> batches;
  std::vector<int64_t> slabs;  // grid.y of each batch's launch
  int64_t rows = 0;            // scratch rows per tile, all launches together
};

GramPlan plan_gram(const Chunk* chunks, int64_t num_chunks, int64_t K) {
  GramPlan plan;
  plan.tile_rows = tile_rows(K);
  plan.row_blocks = ceil_div(K, plan.tile_rows);
  plan.tiles = num_pairs(plan.row_blocks);
  plan.batches = make_batches(chunks, num_chunks);
  for (const Batch& batch : plan.batches) {
    int64_t blocks = 0;
    dispatch_dtype(batch.dtype, [&](auto tag) {
      blocks = resident_blocks(reinterpret_cast<const void*>(partial_kernel<decltype(tag)>(K)));
    });
    const int64_t slabs = std::max<int64_t>(1, std::min(ceil_div(batch.items, kThreads), blocks / plan.tiles));
    plan.slabs.push_back(slabs);
    plan.rows += slabs;
  }
  return plan;
}

}  // namespace

int64_t gram_workspace_size(const Chunk* chunks, int64_t num_chunks, int64_t K) {
  const GramPlan plan = plan_gram(chunks, num_chunks, K);
  return plan.tiles * plan.rows * plan.tile_rows * plan.tile_rows;
}

void gram_launch(const Chunk* chunks, int64_t num_chunks, int64_t K, double* workspace, double* out,
                 cudaStream_t stream) {
  const GramPlan plan = plan_gram(chunks, num_chunks, K);
  int64_t first_row = 0;
  for (size_t b = 0; b < plan.batches.size(); ++b) {
    const Batch& batch = plan.batches[b];
    const dim3 grid(static_cast<unsigned>(plan.tiles), static_cast<unsigned>(plan.slabs[b]));
    dispatch_dtype(batch.dtype, [&](auto tag) {
      launch_kernel(partial_kernel<decltype(tag)>(K), grid, kThreads, stream, batch.table, K, plan.row_blocks,
                    first_row, plan.rows, workspace);
    });
    first_row += plan.slabs[b];
  }
  const int64_t blocks = ceil_div(K * K * 32, kThreads);
  launch_kernel(gram_finish_kernel, static_cast<unsigned>(blocks), kThreads, stream, workspace, K, plan.tile_rows,
                plan.row_blocks, plan.rows, out);
}

}  // namespace cuda
}  // namespace mtl_fast
