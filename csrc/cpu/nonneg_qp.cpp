// CPU ops of the nonnegative QPs (kernels/nonneg_qp.h): the generic batched solver behind
// mtl_fast.aggregators.solve_nonnegative_qp, and the whole weights(G) of MGDA, DualProj and UPGrad in one call,
// so that a K = 16 problem costs one op dispatch instead of dozens of torch ops.
#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <c10/util/MaybeOwned.h>
#include <torch/library.h>

#include <cstdlib>
#include <limits>
#include <new>
#include <vector>

#include "cpu/nonneg_qp.h"
#include "cpu/simd.h"
#include "kernels/nonneg_qp.h"
#include "qp_checks.h"

namespace mtl_fast {
namespace {

// Per-thread buffers, kept between calls: at K = 16 a heap allocation costs a sizeable part of a whole solve.
// `problem` holds qp_weights' M, linear terms and solutions; `work` and `iwork` one solver's workspace, `tableau`
// the tableau method's.
struct Scratch {
  std::vector<double> problem, work, tableau;
  std::vector<int> iwork;
};

template <typename T>
T* at_least(std::vector<T>& buffer, int64_t size) {
  if (static_cast<int64_t>(buffer.size()) < size) buffer.resize(size);
  return buffer.data();
}

Scratch& thread_scratch() {
  thread_local Scratch scratch;
  return scratch;
}

// Block pivoting on a tableau, for the problems without the simplex constraint: block_pivoting's steps (the same
// KKT checks, flips and anti-cycling rule) on other linear algebra. Instead of factorising M_FF anew at every
// step it keeps T, the principal pivot transform of M over the free set F: w = T x + r, where the nonbasic x are z
// off F and the multipliers w = M z + q on F, so with x = 0 the basic values are r (z_i = r_i on F, w_i = r_i off
// it). Moving index p to the other set is one principal pivot: a rank-1 update of the tableau, K x W
// multiply-adds over rows of a width W fixed at compile time (K rounded up to 8, 16 or 32, the columns beyond K
// zero), which the compiler unrolls into whole vectors; a Cholesky factorisation at these sizes waits instead on
// a chain of dependent square roots and divisions. At K = 16 a solve takes a half to a third of the time with
// AVX2 (benchmarks/bench_zoo.py); from K ~ 48 the Cholesky path is faster again, hence kMaxTableauWidth.
// M is positive definite, so every principal pivot of T is positive in exact arithmetic; one at or below the
// Cholesky floor (a singular or indefinite M, or rounding) gives up. T carries the rounding of the whole pivot
// sequence, so the answer is checked against M itself: the KKT conditions as block_pivoting checks them, and
// M z + q = 0 on F within the multipliers' tolerance. Like the Cholesky path's, its answer is then a KKT point
// to that tolerance; on the aggregators' problems (M regularised by 1e-6 I) the two agree to ~1e-10 relative,
// and for M near singularity (regularisation below ~1e-10) both lose accuracy in z while keeping the KKT
// conditions. T: K x W scalars, the pivot row W, M padded to W columns K x W; r, q and the flags in TableauLanes.
constexpr int64_t kMaxTableauWidth = 32;

enum class TableauOutcome {
  kSolved,      // z passed the checks
  kUnsettled,   // block pivoting did not settle within max_iter steps (nor would block_pivoting, step for step)
  kGaveUp,      // a pivot was not safely positive, or z failed the checks on M
};

template <int W>
MTL_SIMD_INLINE void principal_pivot(double* __restrict T, double* __restrict r, int64_t K, int64_t p,
                                     double* __restrict row) {
  const double inv = 1.0 / T[p * W + p];
  const double rp = r[p];
  for (int j = 0; j < W; ++j) row[j] = T[p * W + j];
  const auto update_row = [&](int64_t i) __attribute__((always_inline)) {
    double* __restrict Ti = T + i * W;
    const double f = Ti[p] * inv;
    for (int j = 0; j < W; ++j) Ti[j] -= f * row[j];
    Ti[p] = f;
    r[i] -= f * rp;
  };
  // every row but p, which is overwritten below (two loops rather than a skip: no branch in the hot loop)
  for (int64_t i = 0; i < p; ++i) update_row(i);
  for (int64_t i = p + 1; i < K; ++i) update_row(i);
  for (int j = 0; j < W; ++j) T[p * W + j] = -row[j] * inv;
  T[p * W + p] = inv;
  r[p] = -rp * inv;
}

// The KKT checks of tableau_pivoting over whole vectors of its width W (K rounded up): the values beyond K are
// padding that never counts (r = q = 0 off F, zero rows and columns of M). At K = 16 these checks took as long
// as the pivots when they ran over K scalars, with M z accumulated through memory.
template <int W>
struct TableauLanes {
  static constexpr int kVecs = W / 8;
  alignas(64) double r[W];
  alignas(64) double q[W];
  alignas(64) int64_t free[W];  // 0 or -1 (all bits), the lanes of a vector select
  alignas(64) int64_t flip[W];
};

typedef int64_t Vec8l __attribute__((vector_size(64)));

MTL_SIMD_INLINE Vec8d abs8(Vec8d v) {
  return reinterpret_cast<Vec8d>(reinterpret_cast<Vec8l>(v) & Vec8l{} + std::numeric_limits<int64_t>::max());
}

MTL_SIMD_INLINE Vec8l load8l(const int64_t* p) {
  Vec8l v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// max_of over the lanes, in max_of's convention (a NaN lane may or may not win, as in a scalar loop)
MTL_SIMD_INLINE double max_lanes(Vec8d v) {
  double m = v[0];
  for (int l = 1; l < 8; ++l) m = max_of(m, v[l]);
  return m;
}

MTL_SIMD_INLINE Vec8d max8(Vec8d a, Vec8d b) { return a > b ? a : b; }

// Marks in L.flip the KKT violations of the basic solution r (on F, z = r and M z = -q; off F, M z = r - q), as
// mark_kkt_violations does; returns their number and sets `last` to the largest such index.
template <int W>
MTL_SIMD_INLINE int64_t mark_tableau_violations(const QpState<double>& s, TableauLanes<W>& L, double tol,
                                                int64_t& last) {
  constexpr int V = TableauLanes<W>::kVecs;
  Vec8d z_max{}, Mz_max{};
  for (int v = 0; v < V; ++v) {
    const Vec8d r = load8(L.r + 8 * v), q = load8(L.q + 8 * v);
    const Vec8l on_free = load8l(L.free + 8 * v);
    z_max = max8(z_max, on_free ? abs8(r) : Vec8d{});
    Mz_max = max8(Mz_max, abs8(on_free ? q : r - q));
  }
  const double z_scale = max_lanes(z_max);
  const Vec8d z_bound = Vec8d{} - tol * z_scale;
  const Vec8d m_bound = Vec8d{} - multiplier_tolerance(s, tol, z_scale, max_lanes(Mz_max));
  Vec8l count{}, largest = Vec8l{} - 1;
  for (int v = 0; v < V; ++v) {
    const Vec8l flip = load8(L.r + 8 * v) < (load8l(L.free + 8 * v) ? z_bound : m_bound);
    std::memcpy(L.flip + 8 * v, &flip, sizeof(flip));
    count -= flip;
    const Vec8l index = Vec8l{0, 1, 2, 3, 4, 5, 6, 7} + 8 * v;
    largest = flip ? index : largest;  // indices grow with v, so the last vector's marks win
  }
  last = -1;
  int64_t total = 0;
  for (int l = 0; l < 8; ++l) {
    total += count[l];
    last = largest[l] > last ? largest[l] : last;
  }
  return total;
}

// Whether z (r on F, 0 off it) passes the checks on M itself: the KKT conditions as mark_kkt_violations checks
// them, and M z + q = 0 on F within the multipliers' tolerance plus the rounding of M z + q itself (so that
// tol = 0 still accepts an exact answer). M_rows: M's rows at stride W, zero beyond K.
template <int W>
MTL_SIMD_INLINE bool tableau_answer_holds(const QpState<double>& s, const TableauLanes<W>& L,
                                          const double* M_rows, double tol) {
  constexpr int V = TableauLanes<W>::kVecs;
  Vec8d z[V], Mz[V];
  for (int v = 0; v < V; ++v) {
    z[v] = load8l(L.free + 8 * v) ? load8(L.r + 8 * v) : Vec8d{};
    Mz[v] = Vec8d{};
  }
  // M z row by row of M (symmetric), in registers; z is 0 off F, so those rows are skipped
  for (int64_t i = 0; i < s.K; ++i) {
    if (!L.free[i]) continue;
    for (int v = 0; v < V; ++v) Mz[v] += L.r[i] * load8(M_rows + i * W + 8 * v);
  }
  Vec8d z_max{}, Mz_max{};
  for (int v = 0; v < V; ++v) {
    z_max = max8(z_max, abs8(z[v]));
    Mz_max = max8(Mz_max, abs8(Mz[v]));
  }
  const double z_scale = max_lanes(z_max), Mz_scale = max_lanes(Mz_max);
  const double multiplier_slack = multiplier_tolerance(s, tol, z_scale, Mz_scale);
  const Vec8d z_bound = Vec8d{} - tol * z_scale, m_bound = Vec8d{} - multiplier_slack;
  const Vec8d stationarity = Vec8d{} + multiplier_slack + double(s.K) * std::numeric_limits<double>::epsilon() *
                                                               (s.q_scale + Mz_scale);
  Vec8l fails{};
  for (int v = 0; v < V; ++v) {
    const Vec8l on_free = load8l(L.free + 8 * v);
    const Vec8d multiplier = Mz[v] + load8(L.q + 8 * v);
    // off F a negative multiplier; on F a negative z, or a multiplier that is not 0 (NaN fails too)
    fails |= on_free ? (z[v] < z_bound) | !(abs8(multiplier) <= stationarity) : multiplier < m_bound;
  }
  for (int l = 0; l < 8; ++l)
    if (fails[l]) return false;
  return true;
}

template <int W>
MTL_SIMD_INLINE TableauOutcome tableau_pivoting_of_width(const QpState<double>& s, double tol, int64_t max_iter,
                                                         double* z, double* T, double* row, double* M_padded) {
  const int64_t K = s.K;
  TableauLanes<W> L;
  for (int j = 0; j < W; ++j) {
    L.r[j] = j < K ? s.q[j] : 0.0;
    L.q[j] = L.r[j];
    L.free[j] = 0;
  }
  bool tableau_filled = false;  // T = M is filled in at the first pivot: a problem with nothing to flip needs none
  const double* M_rows = M_padded;  // M at row stride W for the final checks
  // Pivoting an index off F divides by (M_FF^-1)_pp, which is in the units of 1 / M: its floor is the reciprocal
  // of the Cholesky floor's scale (kPivotFloor / max diag(M)), so that a scaled M takes the same steps.
  const double free_floor = kPivotFloor * kPivotFloor / s.floor;
  const int64_t patience_reset = K / 2 + 3;
  int64_t best = K + 1, patience = patience_reset;
  bool settled = false;
  for (int64_t iteration = 0; iteration < max_iter && !settled; ++iteration) {
    int64_t last;
    const int64_t count = mark_tableau_violations(s, L, tol, last);
    settled = count == 0;
    const bool improved = count < best;
    const bool block = improved || patience > 0;
    patience = improved ? patience_reset : patience - 1;
    best = count < best ? count : best;
    if (!settled && !tableau_filled) {
      if (K == W) {  // whole vectors, and M's own rows serve the final checks
        for (int64_t e = 0; e < K * W; ++e) T[e] = s.M[e];
        M_rows = s.M;
      } else {
        for (int64_t i = 0; i < K; ++i)
          for (int j = 0; j < W; ++j) T[i * W + j] = M_padded[i * W + j] = j < K ? s.M[i * K + j] : 0.0;
      }
      tableau_filled = true;
    }
    for (int64_t i = 0; i < K && !settled; ++i) {
      if (!(block ? L.flip[i] : i == last)) continue;
      if (!(T[i * W + i] > (L.free[i] ? free_floor : s.floor))) return TableauOutcome::kGaveUp;  // NaN too
      principal_pivot<W>(T, L.r, K, i, row);
      L.free[i] = ~L.free[i];
    }
  }
  if (!settled) return TableauOutcome::kUnsettled;
  // with nothing ever flipped, z = 0 and M z = 0: the checks of the first iteration were the whole story
  if (tableau_filled && !tableau_answer_holds(s, L, M_rows, tol)) return TableauOutcome::kGaveUp;
  for (int64_t i = 0; i < K; ++i) z[i] = L.free[i] ? L.r[i] : 0.0;
  return TableauOutcome::kSolved;
}

// The width for s.K (at most kMaxTableauWidth), compiled for each SIMD level.
static_assert(kMaxTableauWidth == 32, "tableau_pivoting has widths up to 32");
// (flatten: the checks it shares with block_pivoting are inlined too, so they run in the clone's vectors)
MTL_CPU_CLONES __attribute__((flatten)) TableauOutcome tableau_pivoting(const QpState<double>& s, double tol,
                                                                        int64_t max_iter, double* z, double* T) {
  // T's buffer ((2 K + 1) x kMaxTableauWidth scalars): the tableau, its pivot row, M padded to the same width
  double* row = T + s.K * kMaxTableauWidth;
  double* M_padded = row + kMaxTableauWidth;
  if (s.K <= 8) return tableau_pivoting_of_width<8>(s, tol, max_iter, z, T, row, M_padded);
  if (s.K <= 16) return tableau_pivoting_of_width<16>(s, tol, max_iter, z, T, row, M_padded);
  return tableau_pivoting_of_width<32>(s, tol, max_iter, z, T, row, M_padded);
}

// One problem: the tableau where it applies, else (or where it gave up) from scratch; where the tableau's block
// pivoting did not settle, block_pivoting would not either, so the active-set method takes over directly.
void solve_one(const QpState<double>& s, double tol, int64_t max_iter, double* z, double* T) {
  if (T == nullptr) return solve_from_scratch(s, tol, max_iter, z);
  switch (tableau_pivoting(s, tol, max_iter, z, T)) {
    case TableauOutcome::kSolved:
      return clamp_solution(s, z);
    case TableauOutcome::kUnsettled:
      return solve_by_active_set(s, tol, max_iter, z);
    case TableauOutcome::kGaveUp:
      return solve_from_scratch(s, tol, max_iter, z);
  }
}

// Solves the B problems (rows of Q) on the shared M into the rows of Z. One problem costs ~K^3/6 flops per
// pivoting step; batches are split across threads only when that outweighs waking them (UPGrad at large K).
void solve_batch(const double* M, const double* Q, int64_t B, int64_t K, bool simplex, double tol,
                 int64_t max_iter, double* Z) {
  const int64_t flops = K * K * K / 6 + 1;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 17) / flops);
  const auto solve_range = [&](int64_t begin, int64_t end) {
    Scratch& scratch = thread_scratch();
    double* work = at_least(scratch.work, nonneg_qp_workspace(K));
    int* iwork = at_least(scratch.iwork, nonneg_qp_index_workspace(K));
    const bool tableau = !simplex && K <= kMaxTableauWidth;
    // none for the problems it does not serve
    double* T = tableau ? at_least(scratch.tableau, (2 * K + 1) * kMaxTableauWidth) : nullptr;
    for (int64_t b = begin; b < end; ++b)
      solve_one(make_qp_state(M, Q + b * K, K, simplex, work, iwork), tol, max_iter, Z + b * K, T);
  };
  // A batch within one grain (MGDA and DualProj: one problem) runs here: parallel_for would run it inline too,
  // after its own bookkeeping, which costs more than a few percent of a K = 16 solve.
  if (B <= grain) return solve_range(0, B);
  at::parallel_for(0, B, grain, solve_range);
}

// t as a contiguous float64 tensor, borrowed when it already is one; checked here because .to() and
// .contiguous() cost a dispatch each even when there is nothing to do, which shows at K = 16 (as would copying
// the tensor handle: two atomic reference-count updates).
c10::MaybeOwned<at::Tensor> contiguous_double(const at::Tensor& t) {
  if (t.scalar_type() == at::kDouble && t.is_contiguous()) return c10::MaybeOwned<at::Tensor>::borrowed(t);
  return c10::MaybeOwned<at::Tensor>::owned(t.to(at::kDouble).contiguous());
}

at::Tensor nonneg_qp_cpu(const at::Tensor& M, const at::Tensor& q, bool simplex, double tol, int64_t max_iter) {
  const int64_t K = check_nonneg_qp_inputs(M, q, max_iter);
  const int64_t B = q.size(0);
  const at::Tensor Md = M.to(at::kDouble).contiguous();
  const at::Tensor qd = q.to(at::kDouble).contiguous();
  at::Tensor z = at::empty({B, K}, Md.options());
  solve_batch(Md.const_data_ptr<double>(), qd.const_data_ptr<double>(), B, K, simplex, tol, max_iter,
              z.data_ptr<double>());
  return z.to(q.scalar_type());
}

// The allocator of qp_weights' (K,) result: plain malloc, whose per-thread cache serves a few dozen bytes without
// a lock, instead of the default CPU allocator's 64-byte aligned posix_memalign, which takes the arena lock and
// splits a chunk on every call (~0.1 us of a 1 us weights(G) at K = 16). The tensor is an ordinary CPU tensor
// with 16-byte aligned data, as one made from a numpy array can be; the profiler's memory view does not see it.
struct SmallResultAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t bytes) override {
    void* data = std::malloc(bytes > 0 ? bytes : 1);
    if (data == nullptr) throw std::bad_alloc();
    return {data, data, &std::free, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &std::free; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

at::Tensor empty_small_double(int64_t size) {
  static SmallResultAllocator allocator;
  return at::detail::empty_generic({size}, &allocator, c10::DispatchKeySet(c10::DispatchKey::CPU), at::kDouble,
                                   std::nullopt);
}

// gram_is_finite compiled per SIMD level: in the baseline build it stays scalar.
MTL_CPU_CLONES __attribute__((flatten)) bool is_finite_gram(const double* G, int64_t K) {
  return gram_is_finite(G, K);
}

// qp_weights' M, linear terms and preference vector u (pref, or the mean when that is null), compiled per SIMD
// level (flattened, so the helpers' K * K loops are too).
MTL_CPU_CLONES __attribute__((flatten)) void prepare_qp_problems(const double* G, const double* pref, int64_t K,
                                                                 QpMethod kind, double regularization, double* M,
                                                                 double* Q, double* u) {
  for (int64_t i = 0; i < K; ++i) u[i] = qp_preference(pref, K, i);
  normalized_gram(G, K, regularization, M);
  for (int64_t b = 0; b < qp_problem_count(kind, K); ++b) qp_linear_term(kind, M, u, K, b, Q + b * K);
}

}  // namespace

at::Tensor qp_weights_cpu(const at::Tensor& gram, const std::optional<at::Tensor>& pref, c10::string_view method,
                          double regularization, double tol, int64_t max_iter) {
  const int64_t K = check_qp_weights_inputs(gram, pref, max_iter);
  const QpMethod kind = parse_qp_method(method);
  const c10::MaybeOwned<at::Tensor> G = contiguous_double(gram);
  c10::MaybeOwned<at::Tensor> pref_double;
  if (pref.has_value()) pref_double = contiguous_double(*pref);
  at::Tensor weights = empty_small_double(K);
  double* w = weights.data_ptr<double>();
  if (!is_finite_gram(G->const_data_ptr<double>(), K)) {
    for (int64_t j = 0; j < K; ++j) w[j] = std::numeric_limits<double>::quiet_NaN();
    return weights;
  }
  if (qp_has_closed_form(kind, K)) {
    for (int64_t j = 0; j < K; ++j) w[j] = qp_closed_form_weight(G->const_data_ptr<double>(), j);
    return weights;
  }
  const int64_t B = qp_problem_count(kind, K);
  // M, the linear terms, the solutions and the preference vector, whose default is filled in once here instead
  // of at each of the K * K places that read it
  double* M = at_least(thread_scratch().problem, K * K + 2 * B * K + K);
  double* Q = M + K * K;
  double* Z = Q + B * K;
  double* u = Z + B * K;
  prepare_qp_problems(G->const_data_ptr<double>(), pref.has_value() ? pref_double->const_data_ptr<double>() : nullptr,
                      K, kind, regularization, M, Q, u);
  solve_batch(M, Q, B, K, /*simplex=*/false, tol, max_iter, Z);
  const double normalizer = qp_weight_normalizer(kind, Z, K);
  for (int64_t j = 0; j < K; ++j) w[j] = qp_weight(kind, Z, u, K, j, normalizer);
  return weights;
}

TORCH_LIBRARY_FRAGMENT(mtl_fast, m) {
  // Batched min_z 1/2 z^T M z + q_b^T z s.t. z >= 0 (and sum(z) = 1 when simplex) for every row q_b of q (B, K),
  // M (K, K) positive definite; block principal pivoting with relative KKT tolerance tol and at most max_iter
  // steps. Returns (B, K) in q's dtype (computed in float64).
  m.def("nonneg_qp(Tensor M, Tensor q, bool simplex, float tol, int max_iter) -> Tensor");
  // weights(G) (K,) float64 of method 'mgda' | 'dualproj' | 'upgrad' on M = G / trace(G) + regularization * I,
  // pref the preference vector (None: the mean); the QPs as in nonneg_qp.
  m.def("qp_weights(Tensor gram, Tensor? pref, str method, float regularization, float tol, int max_iter) "
        "-> Tensor");
}

TORCH_LIBRARY_IMPL(mtl_fast, CPU, m) {
  m.impl("nonneg_qp", &nonneg_qp_cpu);
  m.impl("qp_weights", &qp_weights_cpu);
}

}  // namespace mtl_fast
