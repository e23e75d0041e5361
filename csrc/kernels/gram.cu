// Gram matrix G = J J^T of a chunked Jacobian in one pass over J.
//
// Stage 1: the K x K matrix is cut into tiles of R x R entries (R = 2, 4 or 8 so a tile's sums live in
// registers). A launch's blocks cover the (tile, slab) pairs of the upper triangle of tiles and slabs of
// columns, the tile fastest, so the blocks reading the same columns run together and the rows re-read by
// several tiles (K > 8) come from L2. Each block writes its tile's sums, reduced in a fixed order, to a scratch
// row. Stage 2: one warp per entry of G adds up its scratch rows in a fixed order. No atomics anywhere: the
// result depends only on the input, the shapes and the device.
//
// Products: float64 input is multiplied in float64. Narrower input is multiplied and summed in float32, as
// consumer GPUs run float64 at 1/64 of the float32 rate, under the range rule of the CPU kernel
// (kernels/common.h): the grid has slabs enough that no thread takes more than kFloat32Terms columns, each
// thread finds its rows' largest magnitudes as it goes, and a thread whose rows fail the rule (gradients near
// 1e+-30, an inf) makes its block take its columns again with float64 products. Float32 products of 16-bit
// input are exact.
#include "kernels/common.h"
#include "kernels/launch_kernel.cuh"
#include "kernels/multi_tensor.cuh"

namespace mtl_fast {
namespace cuda {
namespace {

template <typename T>
constexpr bool kFloat32Products = !std::is_same<T, double>::value;

int tile_rows(int64_t K) { return K <= 2 ? 2 : K <= 4 ? 4 : 8; }

// More than one tile of 8 rows: the kernel has off-diagonal tiles, which read twice the rows.
bool mixed_tiles(int64_t K) { return K > 8; }

__device__ __forceinline__ float multiply_add(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ double multiply_add(double a, double b, double c) { return fma(a, b, c); }

// Sums of products of rows (row_a + i) and (row_b + j) of J; a diagonal tile (row_a == row_b) keeps j >= i.
template <typename Acc_, int R, bool kDiag>
struct TileSums {
  using Acc = Acc_;
  Acc s[R][R];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < R; ++i)
#pragma unroll
      for (int j = 0; j < R; ++j) s[i][j] = Acc(0);
  }

  __device__ __forceinline__ void add(const Acc (&a)[R], const Acc (&b)[R]) {
#pragma unroll
    for (int i = 0; i < R; ++i)
#pragma unroll
      for (int j = kDiag ? i : 0; j < R; ++j) s[i][j] = multiply_add(a[i], b[j], s[i][j]);
  }
};

// Float32 sums of at most kFloat32Terms products, which also track the largest magnitude of each row (of
// rows row_a + r in largest[0], of rows row_b + r in largest[1]) for the range rule.
template <int R, bool kDiag>
struct Float32Sums {
  using Acc = float;
  TileSums<float, R, kDiag> tile;
  float largest[2][R];

  __device__ __forceinline__ void zero() {
    tile.zero();
#pragma unroll
    for (int r = 0; r < R; ++r) largest[0][r] = largest[1][r] = 0.0f;
  }

  __device__ __forceinline__ void add(const float (&a)[R], const float (&b)[R]) {
    track(a, largest[0]);
    if (!kDiag) track(b, largest[1]);
    tile.add(a, b);
  }

  __device__ __forceinline__ bool fit() const {
    bool fit = true;
#pragma unroll
    for (int r = 0; r < R; ++r) fit &= float32_products_fit(largest[0][r]) && float32_products_fit(largest[1][r]);
    return fit;
  }

 private:
  // A NaN leaves largest as it was: the sums carry the NaN anyway.
  __device__ __forceinline__ static void track(const float (&x)[R], float (&row_largest)[R]) {
#pragma unroll
    for (int r = 0; r < R; ++r) row_largest[r] = fmaxf(row_largest[r], fabsf(x[r]));
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

// Column n of the loaded rows as Acc (float or double), zero for rows past K.
template <typename Acc, typename T, int R, int N>
__device__ __forceinline__ void column(const Pack<T, N> (&rows)[R], int n, int64_t first_row, int64_t K,
                                       Acc (&x)[R]) {
#pragma unroll
  for (int r = 0; r < R; ++r) {
    if constexpr (std::is_same<Acc, float>::value)
      x[r] = first_row + r < K ? to_float(rows[r].v[n]) : 0.0f;
    else
      x[r] = first_row + r < K ? to_double(rows[r].v[n]) : 0.0;
  }
}

// Adds the products of one item (N columns) to sums (TileSums<double> or Float32Sums).
template <typename T, int N, int R, bool kDiag, typename Sums>
__device__ __forceinline__ void add_item(const ChunkSpan& span, int64_t col, int64_t K, int64_t row_a,
                                         int64_t row_b, Sums& sums) {
  using Acc = typename Sums::Acc;
  Pack<T, N> a[R];
  load_rows(span, row_a, K, col, a);
  if constexpr (kDiag) {
#pragma unroll
    for (int n = 0; n < N; ++n) {
      Acc x[R];
      column(a, n, row_a, K, x);
      sums.add(x, x);
    }
  } else {
    Pack<T, N> b[R];
    load_rows(span, row_b, K, col, b);
#pragma unroll
    for (int n = 0; n < N; ++n) {
      Acc x[R], y[R];
      column(a, n, row_a, K, x);
      column(b, n, row_b, K, y);
      sums.add(x, y);
    }
  }
}

// Block-wide sum of every thread's tile, in float64: warp shuffles, then the warps in order.
template <typename Acc, int R, bool kDiag>
__device__ __forceinline__ void store_block_sums(const TileSums<Acc, R, kDiag>& sums, double* dst) {
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

// This thread's share (thread of threads) of one tile. kBytes: bytes of each row a thread reads at once;
// off-diagonal tiles read twice the rows, so half as wide.
template <typename T, int R, bool kDiag, int kBytes>
__device__ __forceinline__ void gram_tile(const ChunkTable& table, int64_t K, int64_t row_a, int64_t row_b,
                                          int64_t thread, int64_t threads, double* dst) {
  if constexpr (kFloat32Products<T>) {
    // The plan gives this thread at most kFloat32Terms columns: one float32 sum per entry.
    Float32Sums<R, kDiag> run;
    run.zero();
    for_each_item<T, kBytes>(table, thread, threads, [&](const ChunkSpan& span, int64_t col, auto width) {
      add_item<T, decltype(width)::value, R, kDiag>(span, col, K, row_a, row_b, run);
    });
    // Decided for the whole block, which then takes one path through the barriers of store_block_sums.
    if (!__syncthreads_or(!run.fit())) return store_block_sums(run.tile, dst);
  }
  TileSums<double, R, kDiag> sums;
  sums.zero();
  for_each_item<T, kBytes>(table, thread, threads, [&](const ChunkSpan& span, int64_t col, auto width) {
    constexpr int N = decltype(width)::value;
    if constexpr (kFloat32Products<T>) {
      // The rare way for narrow input: one column at a time, which holds fewer registers than N converted ones.
#pragma unroll 1
      for (int n = 0; n < N; ++n) add_item<T, 1, R, kDiag>(span, col + n, K, row_a, row_b, sums);
    } else {
      add_item<T, N, R, kDiag>(span, col, K, row_a, row_b, sums);
    }
  });
  store_block_sums(sums, dst);
}

// Stage 1. kMixed: K > R, so there are off-diagonal tiles; otherwise the single tile is diagonal. Block b
// takes tile b % tiles of slab b / tiles. partial: [tile][rows][R * R]; this launch owns rows first_row ..
// first_row + slabs - 1.
template <typename T, int R, bool kMixed>
__global__ void __launch_bounds__(kThreads)
    gram_partial_kernel(const __grid_constant__ ChunkTable table, int64_t K, int64_t row_blocks, int64_t slabs,
                        int64_t first_row, int64_t rows, double* partial) {
  const int64_t tiles = num_pairs(row_blocks);
  const int64_t tile = static_cast<int64_t>(blockIdx.x) % tiles, slab = static_cast<int64_t>(blockIdx.x) / tiles;
  double* dst = partial + (tile * rows + first_row + slab) * R * R;
  const int64_t thread = slab * kThreads + threadIdx.x, threads = slabs * kThreads;
  if constexpr (kMixed) {
    // Tile index -> (bi, bj), bi <= bj, in the packed order of pair_index.
    int64_t t = tile, bi = 0;
    while (t >= row_blocks - bi) t -= row_blocks - bi++;
    const int64_t bj = bi + t;
    if (bi == bj)
      gram_tile<T, R, true, kVectorBytes / 2>(table, K, bi * R, bi * R, thread, threads, dst);
    else
      gram_tile<T, R, false, kVectorBytes / 2>(table, K, bi * R, bj * R, thread, threads, dst);
  } else {
    gram_tile<T, R, true, kVectorBytes>(table, K, 0, 0, thread, threads, dst);
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

using PartialKernel = void (*)(const ChunkTable, int64_t, int64_t, int64_t, int64_t, int64_t, double*);

template <typename T>
PartialKernel partial_kernel(int64_t K) {
  switch (tile_rows(K)) {
    case 2: return gram_partial_kernel<T, 2, false>;
    case 4: return gram_partial_kernel<T, 4, false>;
    default: return mixed_tiles(K) ? gram_partial_kernel<T, 8, true> : gram_partial_kernel<T, 8, false>;
  }
}

// Items of a launch's table when vectorised chunks are cut into items of `width` columns.
int64_t items_of_width(const ChunkTable& table, int width) {
  int64_t items = 0;
  for (int c = 0; c < table.count; ++c)
    items += table.span[c].vectorised ? table.span[c].cols / width : table.span[c].cols;
  return items;
}

// Slabs of one launch. Float32 products: enough that no thread has more than kFloat32Terms columns (each item
// has at most `width` of them). Float64 products: one slab per kThreads items, up to what fills the device once.
template <typename T>
int64_t slabs_of(const Batch& batch, int64_t K, int64_t tiles) {
  if constexpr (kFloat32Products<T>) {
    const int width = mixed_tiles(K) ? vector_width<T, kVectorBytes / 2>() : vector_width<T>();
    return ceil_div(items_of_width(batch.table, width), kThreads * (kFloat32Terms / width));
  } else {
    const int64_t blocks = resident_blocks(reinterpret_cast<const void*>(partial_kernel<T>(K)));
    return std::max<int64_t>(1, std::min(ceil_div(batch.items, kThreads), blocks / tiles));
  }
}

// Launch geometry, the same for gram_workspace_size and gram_launch.
struct GramPlan {
  int tile_rows;
  int64_t row_blocks;
  int64_t tiles;
  std::vector<Batch> batches;
  std::vector<int64_t> slabs;  // of each batch's launch, which has tiles * slabs blocks
  int64_t rows = 0;            // scratch rows per tile, all launches together
};

GramPlan plan_gram(const Chunk* chunks, int64_t num_chunks, int64_t K) {
  GramPlan plan;
  plan.tile_rows = tile_rows(K);
  plan.row_blocks = ceil_div(K, plan.tile_rows);
  plan.tiles = num_pairs(plan.row_blocks);
  plan.batches = make_batches(chunks, num_chunks);
  for (const Batch& batch : plan.batches) {
    int64_t slabs = 0;
    dispatch_dtype(batch.dtype, [&](auto tag) { slabs = slabs_of<decltype(tag)>(batch, K, plan.tiles); });
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
    // Far below the 2^31 - 1 blocks of grid.x: a block of float32 products covers kThreads * kFloat32Terms
    // columns of at least two rows, so memory would run out first.
    const unsigned blocks = static_cast<unsigned>(plan.tiles * plan.slabs[b]);
    dispatch_dtype(batch.dtype, [&](auto tag) {
      launch_kernel(partial_kernel<decltype(tag)>(K), blocks, kThreads, stream, batch.table, K, plan.row_blocks,
                    plan.slabs[b], first_row, plan.rows, workspace);
    });
    first_row += plan.slabs[b];
  }
  const int64_t blocks = ceil_div(K * K * 32, kThreads);
  launch_kernel(gram_finish_kernel, static_cast<unsigned>(blocks), kThreads, stream, workspace, K, plan.tile_rows,
                plan.row_blocks, plan.rows, out);
}

}  // namespace cuda
}  // namespace mtl_fast
