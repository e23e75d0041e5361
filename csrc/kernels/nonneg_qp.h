// Batched small nonnegative QPs by block principal pivoting: one source for the CPU op and the CUDA kernel.
//
//   min_z 1/2 z^T M z + q^T z   s.t. z >= 0   (and sum(z) = 1 for the simplex form),  M K x K positive definite.
//
// This is the algorithm of mtl_fast.aggregators.solve_nonnegative_qp (Judice & Pires 1994; Kim & Park 2011) step
// for step, with the same KKT checks, tolerances and anti-cycling rule, so the compiled and the torch paths agree
// to rounding: guess the free set F, solve the equality-constrained problem on F, flip every coordinate that
// violates a KKT condition; when the number of violations has not decreased for `patience` steps, flip only the
// last violating index (Murty's rule), which cannot cycle. The caller (mtl_fast.aggregators) chooses patience and
// the iteration cap. The torch path solves on F with a batched LU; here a dense Cholesky of M_FF in scalar code.
//
// The QP-based aggregators' whole weights(G) also lives here (qp_* below), so the CUDA kernel needs no host
// round trip.
#pragma once

#include <cmath>

#include "kernels/common.h"

namespace mtl_fast {

// Workspace of one problem: K*K for the factor of M_FF plus 5*K for the right-hand sides, M z, the active-set
// method's target and the factor's reciprocal pivots.
MTL_HD inline int64_t nonneg_qp_workspace(int64_t K) { return K * K + 5 * K; }
// Integer workspace of one problem: the free flags, the list of free indices and the violation flags.
MTL_HD inline int64_t nonneg_qp_index_workspace(int64_t K) { return 3 * K; }

// Cholesky factor L (n x n, row-major, lower) of M restricted to the indices F[0..n). Pivots are floored at
// `floor` > 0: for the positive definite M the solver is meant for the floor never binds; a singular M (a caller
// that skipped the regularisation) then still gives finite answers instead of inf/nan.
// Right-looking (each column updates the trailing block) rather than dot-product form: the updates of one step
// are independent and contiguous, so they vectorise without reassociating sums, and each entry still subtracts
// its terms in the order k = 0, 1, ..., as the dot-product form does. The reciprocal pivots go to inv_diag: the
// column scaling and the triangular solves multiply instead of divide (divisions are slow and lie on the
// critical path of problems this small). col: n scalars of scratch.
template <typename scalar_t>
MTL_HD void cholesky_on_subset(const scalar_t* M, int64_t K, const int* F, int64_t n, scalar_t floor,
                               scalar_t* L, scalar_t* inv_diag, scalar_t* col) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k <= i; ++k) L[i * n + k] = M[F[i] * K + F[k]];
  for (int64_t j = 0; j < n; ++j) {
    const scalar_t d = L[j * n + j];
    const scalar_t pivot = std::sqrt(d > floor ? d : floor);  // also catches a NaN d
    const scalar_t inv = scalar_t(1) / pivot;
    L[j * n + j] = pivot;
    inv_diag[j] = inv;
    for (int64_t i = j + 1; i < n; ++i) {
      col[i] = L[i * n + j] * inv;
      L[i * n + j] = col[i];
    }
    for (int64_t i = j + 1; i < n; ++i) {
      scalar_t* Li = L + i * n;
      const scalar_t c = col[i];
      for (int64_t k = j + 1; k <= i; ++k) Li[k] -= c * col[k];
    }
  }
}

// x <- (L L^T)^{-1} x, in place (n values). Both sweeps subtract one solved value from all the remaining ones
// (axpy form): those updates are independent, so the sweep is not one long chain of dependent additions. (The
// backward sweep adds each x[k]'s terms in decreasing index order, which only changes rounding.)
template <typename scalar_t>
MTL_HD void cholesky_solve(const scalar_t* L, const scalar_t* inv_diag, int64_t n, scalar_t* x) {
  for (int64_t k = 0; k < n; ++k) {
    x[k] *= inv_diag[k];
    const scalar_t xk = x[k];
    for (int64_t i = k + 1; i < n; ++i) x[i] -= L[i * n + k] * xk;
  }
  for (int64_t i = n - 1; i >= 0; --i) {
    x[i] *= inv_diag[i];
    const scalar_t xi = x[i];
    for (int64_t k = 0; k < i; ++k) x[k] -= L[i * n + k] * xi;
  }
}

// Smallest positive normal double: guards the simplex multiplier's division like torch.finfo(float64).tiny.
constexpr double kTiny = 2.2250738585072014e-308;
// Pivot floor of the Cholesky, relative to M's largest diagonal entry (1 when that is not positive).
constexpr double kPivotFloor = 1e-14;

template <typename scalar_t>
MTL_HD scalar_t max_of(scalar_t a, scalar_t b) { return a > b ? a : b; }

// The working state of one problem, carved from the caller's workspace.
template <typename scalar_t>
struct QpState {
  const scalar_t* M;
  const scalar_t* q;
  int64_t K;
  bool simplex;
  scalar_t floor;    // Cholesky pivot floor
  scalar_t q_scale;  // max |q|
  scalar_t* L;       // factor of M_FF
  scalar_t* x1;      // M_FF^{-1} (-q_F)
  scalar_t* x2;      // M_FF^{-1} 1_F (simplex only)
  scalar_t* Mz;
  scalar_t* inv_diag;  // reciprocal pivots of L
  scalar_t* target;    // the active-set method's minimiser on the free set
  int* free;
  int* F;     // the free indices, in increasing order
  int* flip;  // the KKT violations, then the coordinates to move to the other set
};

// The minimiser over {z : z_i = 0 outside the free set (, sum(z) = 1)} into y; returns the multiplier of
// sum(z) = 1 (0 without the simplex).
template <typename scalar_t>
MTL_HD scalar_t solve_on_free_set(const QpState<scalar_t>& s, scalar_t* y) {
  int64_t n = 0;
  for (int64_t i = 0; i < s.K; ++i)
    if (s.free[i]) s.F[n++] = static_cast<int>(i);
  cholesky_on_subset(s.M, s.K, s.F, n, s.floor, s.L, s.inv_diag, s.x2);  // x2 is free until after
  for (int64_t a = 0; a < n; ++a) s.x1[a] = -s.q[s.F[a]];
  cholesky_solve(s.L, s.inv_diag, n, s.x1);
  scalar_t lam = scalar_t(0);
  if (s.simplex) {
    scalar_t s1 = scalar_t(0), s2 = scalar_t(0);
    for (int64_t a = 0; a < n; ++a) s.x2[a] = scalar_t(1);
    cholesky_solve(s.L, s.inv_diag, n, s.x2);
    for (int64_t a = 0; a < n; ++a) {
      s1 += s.x1[a];
      s2 += s.x2[a];
    }
    lam = (scalar_t(1) - s1) / max_of(s2, scalar_t(kTiny));
  }
  for (int64_t i = 0; i < s.K; ++i) y[i] = scalar_t(0);
  for (int64_t a = 0; a < n; ++a) y[s.F[a]] = s.simplex ? s.x1[a] + lam * s.x2[a] : s.x1[a];
  return lam;
}

// How far below 0 a multiplier (M z + q)_i may lie before it counts as a KKT violation.
template <typename scalar_t>
MTL_HD scalar_t multiplier_tolerance(const QpState<scalar_t>& s, scalar_t tol, scalar_t z_scale, scalar_t Mz_scale) {
  return tol * (s.q_scale + Mz_scale + scalar_t(1e-7) * scalar_t(s.K) * z_scale);
}

// Marks in s.flip every KKT condition z violates (z_i < 0 on the free set, a negative multiplier outside it);
// returns their number and sets `last` to the largest such index. Each check gets its own scale, as in the torch
// path: z may reach 1 / regularisation while M z stays O(1).
template <typename scalar_t>
MTL_HD int64_t mark_kkt_violations(const QpState<scalar_t>& s, const scalar_t* z, scalar_t lam, scalar_t tol,
                                   int64_t& last) {
  scalar_t z_scale = scalar_t(0), Mz_scale = scalar_t(0);
  for (int64_t i = 0; i < s.K; ++i) z_scale = max_of(z_scale, std::fabs(z[i]));
  // M z row by row of M (M is symmetric): contiguous, and z is 0 off the free set, so those rows are skipped.
  for (int64_t j = 0; j < s.K; ++j) s.Mz[j] = scalar_t(0);
  for (int64_t i = 0; i < s.K; ++i) {
    if (!s.free[i]) continue;
    const scalar_t zi = z[i];
    const scalar_t* Mi = s.M + i * s.K;
    for (int64_t j = 0; j < s.K; ++j) s.Mz[j] += zi * Mi[j];
  }
  for (int64_t j = 0; j < s.K; ++j) Mz_scale = max_of(Mz_scale, std::fabs(s.Mz[j]));
  const scalar_t z_bound = -tol * z_scale;
  const scalar_t m_bound = -multiplier_tolerance(s, tol, z_scale, Mz_scale);
  int64_t count = 0;
  last = -1;
  for (int64_t i = 0; i < s.K; ++i) {
    s.flip[i] = s.free[i] ? z[i] < z_bound : s.Mz[i] + s.q[i] - lam < m_bound;
    if (s.flip[i]) {
      ++count;
      last = i;
    }
  }
  return count;
}

// Block principal pivoting, step for step the torch path's; returns whether it settled (z then satisfies the
// KKT conditions) within max_iter steps. After `patience` steps in a row without fewer violations than the best
// so far, it flips only the last violating index until the count improves again.
template <typename scalar_t>
MTL_HD bool block_pivoting(const QpState<scalar_t>& s, scalar_t tol, int64_t max_iter, int64_t patience,
                           scalar_t* z) {
  for (int64_t i = 0; i < s.K; ++i) s.free[i] = s.simplex;  // the simplex needs a free coordinate
  int64_t best = s.K + 1, patience_left = patience;
  for (int64_t iteration = 0; iteration < max_iter; ++iteration) {
    const scalar_t lam = solve_on_free_set(s, z);
    int64_t last;
    const int64_t count = mark_kkt_violations(s, z, lam, tol, last);
    if (count == 0) return true;
    const bool improved = count < best;
    const bool block = improved || patience_left > 0;
    patience_left = improved ? patience : patience_left - 1;
    best = count < best ? count : best;
    int64_t still_free = 0;
    for (int64_t i = 0; i < s.K; ++i) {
      s.flip[i] = block ? s.flip[i] : i == last;
      still_free += s.free[i] != s.flip[i];
    }
    if (s.simplex && still_free == 0) continue;  // an empty guess keeps the previous one instead
    for (int64_t i = 0; i < s.K; ++i) s.free[i] ^= s.flip[i];
  }
  return false;
}

// The fallback when block pivoting did not settle: a primal active-set method (Nocedal & Wright, Algorithm 16.3,
// for bounds), which keeps z feasible and lowers the objective at every step, so it cannot cycle. From a
// feasible start (0, or the simplex vertex with the lowest objective) it frees the coordinate with the most
// negative multiplier, moves towards the minimiser on the free set and, where a coordinate would turn negative,
// stops on the boundary and fixes it at 0. Slower than block pivoting (one coordinate per step), but it
// finishes.
template <typename scalar_t>
MTL_HD void active_set(const QpState<scalar_t>& s, scalar_t tol, int64_t max_iter, scalar_t* z) {
  scalar_t* y = s.target;
  int64_t start = 0;
  for (int64_t i = 0; i < s.K; ++i) {
    const scalar_t value = scalar_t(0.5) * s.M[i * s.K + i] + s.q[i];
    if (value < scalar_t(0.5) * s.M[start * s.K + start] + s.q[start]) start = i;
  }
  for (int64_t i = 0; i < s.K; ++i) {
    s.free[i] = s.simplex && i == start;
    z[i] = s.free[i] ? scalar_t(1) : scalar_t(0);
  }
  scalar_t lam = s.simplex ? solve_on_free_set(s, y) : scalar_t(0);
  bool at_minimiser = true;  // z minimises over its free set: time to free another coordinate
  for (int64_t step = 0; step < max_iter; ++step) {
    if (at_minimiser) {
      int64_t last;
      if (mark_kkt_violations(s, z, lam, tol, last) == 0) return;
      int64_t enter = -1;
      for (int64_t i = 0; i < s.K; ++i)
        if (s.flip[i] && !s.free[i] && (enter < 0 || s.Mz[i] + s.q[i] < s.Mz[enter] + s.q[enter])) enter = i;
      if (enter < 0) return;  // only rounding-level negatives on the free set: z is already clamped below
      s.free[enter] = 1;
    }
    lam = solve_on_free_set(s, y);
    scalar_t alpha = scalar_t(1);
    int64_t blocking = -1;
    for (int64_t i = 0; i < s.K; ++i)
      if (s.free[i] && y[i] < scalar_t(0) && z[i] - y[i] > scalar_t(0) && z[i] / (z[i] - y[i]) < alpha) {
        alpha = z[i] / (z[i] - y[i]);
        blocking = i;
      }
    for (int64_t i = 0; i < s.K; ++i) z[i] += alpha * (y[i] - z[i]);
    at_minimiser = blocking < 0;
    if (!at_minimiser) {
      s.free[blocking] = 0;
      z[blocking] = scalar_t(0);
    }
  }
}

// The state of one problem on the caller's workspace (nonneg_qp_workspace(K) scalars and
// nonneg_qp_index_workspace(K) ints), with its Cholesky pivot floor and the scale of q.
template <typename scalar_t>
MTL_HD QpState<scalar_t> make_qp_state(const scalar_t* M, const scalar_t* q, int64_t K, bool simplex,
                                       scalar_t* work, int* iwork) {
  QpState<scalar_t> s{M, q, K, simplex, scalar_t(0), scalar_t(0), work, work + K * K, work + K * K + K,
                      work + K * K + 2 * K, work + K * K + 4 * K, work + K * K + 3 * K, iwork, iwork + K,
                      iwork + 2 * K};
  scalar_t diag_max = scalar_t(0);
  for (int64_t i = 0; i < K; ++i) {
    diag_max = max_of(diag_max, M[i * K + i]);
    s.q_scale = max_of(s.q_scale, std::fabs(q[i]));
  }
  s.floor = scalar_t(kPivotFloor) * (diag_max > scalar_t(0) ? diag_max : scalar_t(1));
  return s;
}

// Clears z's rounding-level negatives (and normalises it onto the simplex for that form).
template <typename scalar_t>
MTL_HD void clamp_solution(const QpState<scalar_t>& s, scalar_t* z) {
  scalar_t total = scalar_t(0);
  for (int64_t i = 0; i < s.K; ++i) {
    z[i] = max_of(z[i], scalar_t(0));
    total += z[i];
  }
  if (s.simplex)
    for (int64_t i = 0; i < s.K; ++i) z[i] /= total;
}

// Block pivoting from z = 0 (the torch path's steps, at most max_iter); if it has not settled (seen with random
// q and a nearly singular M beyond K ~ 20, and on a few UPGrad problems with a rank-deficient G), at most
// max_iter active-set steps. z: out (K values, >= 0, summing to 1 for the simplex form).
template <typename scalar_t>
MTL_HD void solve_from_scratch(const QpState<scalar_t>& s, scalar_t tol, int64_t max_iter, int64_t patience,
                               scalar_t* z) {
  for (int64_t i = 0; i < s.K; ++i) z[i] = scalar_t(0);
  if (!block_pivoting(s, tol, max_iter, patience, z)) active_set(s, tol, max_iter, z);
  clamp_solution(s, z);
}

// Solves one problem: M K x K row-major, q K values, work / iwork as for make_qp_state.
template <typename scalar_t>
MTL_HD void nonneg_qp_solve(const scalar_t* M, const scalar_t* q, int64_t K, bool simplex, scalar_t tol,
                            int64_t max_iter, int64_t patience, scalar_t* z, scalar_t* work, int* iwork) {
  solve_from_scratch(make_qp_state(M, q, K, simplex, work, iwork), tol, max_iter, patience, z);
}

// ---------------------------------------------------------------------------------------------------------------
// weights(G) of the QP-based aggregators (mtl_fast.aggregators), on M = G / trace(G) + regularization * I:
//   kMinNorm  (MGDA)      one problem, q = -1, w = z / sum(z)
//   kDualProj (DualProj)  one problem, q = M u, w = u + z
//   kUpGrad   (UPGrad)    K problems, q_b = M e_b, w = u + sum_b u_b z_b
// u is the preference vector (nullptr: the mean, 1/K each).
// ---------------------------------------------------------------------------------------------------------------
enum class QpMethod : int { kMinNorm = 0, kDualProj = 1, kUpGrad = 2 };

MTL_HD inline int64_t qp_problem_count(QpMethod method, int64_t K) { return method == QpMethod::kUpGrad ? K : 1; }

template <typename scalar_t>
MTL_HD scalar_t qp_preference(const scalar_t* pref, int64_t K, int64_t i) {
  return pref != nullptr ? pref[i] : scalar_t(1) / scalar_t(K);
}

// trace(G) when it is positive, else 0, which normalized_gram_entry reads as "drop G": an all-zero G gives
// M = regularization * I.
template <typename scalar_t>
MTL_HD scalar_t gram_scale(const scalar_t* G, int64_t K) {
  scalar_t trace = scalar_t(0);
  for (int64_t i = 0; i < K; ++i) trace += G[i * K + i];
  return trace > scalar_t(0) ? trace : scalar_t(0);
}

// Entry (i, j) of M given gram_scale's value and its reciprocal: the QPs' solutions do not depend on G's scale,
// so 1e-30- and 1e30-sized gradients give the same well-scaled problem. The entries are multiplied by the
// reciprocal, except where that overflows (a trace below ~5.6e-309), whose entries are divided instead.
template <typename scalar_t>
MTL_HD scalar_t normalized_gram_entry(const scalar_t* G, int64_t K, scalar_t trace, scalar_t inverse_trace,
                                      scalar_t regularization, int64_t i, int64_t j) {
  scalar_t scaled = scalar_t(0);
  if (trace > scalar_t(0))
    scaled = inverse_trace - inverse_trace == scalar_t(0) ? G[i * K + j] * inverse_trace : G[i * K + j] / trace;
  return i == j ? scaled + regularization : scaled;
}

// All of M in one thread.
template <typename scalar_t>
MTL_HD void normalized_gram(const scalar_t* G, int64_t K, scalar_t regularization, scalar_t* M) {
  const scalar_t trace = gram_scale(G, K);
  const scalar_t inverse_trace = scalar_t(1) / trace;
  for (int64_t i = 0; i < K; ++i)
    for (int64_t j = 0; j < K; ++j)
      M[i * K + j] = normalized_gram_entry(G, K, trace, inverse_trace, regularization, i, j);
}

// q of problem b (K values).
template <typename scalar_t>
MTL_HD void qp_linear_term(QpMethod method, const scalar_t* M, const scalar_t* pref, int64_t K, int64_t b,
                           scalar_t* q) {
  for (int64_t i = 0; i < K; ++i) {
    if (method == QpMethod::kMinNorm) {
      q[i] = scalar_t(-1);
    } else if (method == QpMethod::kUpGrad) {
      q[i] = M[b * K + i];
    } else {
      scalar_t s = scalar_t(0);
      for (int64_t j = 0; j < K; ++j) s += M[i * K + j] * qp_preference(pref, K, j);
      q[i] = s;
    }
  }
}

// MGDA with two tasks has a closed form (Sener & Koltun 2018, Algorithm 2), taken on G itself:
// w_1 = clip((G22 - G12) / (G11 + G22 - 2 G12), 0, 1), w_2 = 1 - w_1; identical or all-zero gradients (a gap
// that is not positive) take the middle. (A non-finite G never gets here: gram_is_finite.)
MTL_HD inline bool qp_has_closed_form(QpMethod method, int64_t K) { return method == QpMethod::kMinNorm && K == 2; }

template <typename scalar_t>
MTL_HD scalar_t qp_closed_form_weight(const scalar_t* G, int64_t j) {
  const scalar_t gap = G[0] + G[3] - scalar_t(2) * G[1];
  scalar_t first = scalar_t(0.5);
  if (gap > scalar_t(0)) {
    first = (G[3] - G[1]) / gap;
    first = first < scalar_t(0) ? scalar_t(0) : (first > scalar_t(1) ? scalar_t(1) : first);
  }
  return j == 0 ? first : scalar_t(1) - first;
}

// What MGDA divides its solution by: sum(z) (1 for the other methods).
template <typename scalar_t>
MTL_HD scalar_t qp_weight_normalizer(QpMethod method, const scalar_t* Z, int64_t K) {
  scalar_t total = scalar_t(method == QpMethod::kMinNorm ? 0 : 1);
  if (method == QpMethod::kMinNorm)
    for (int64_t i = 0; i < K; ++i) total += Z[i];
  return total;
}

// Weight j from the problems' solutions Z (qp_problem_count x K, row-major) and qp_weight_normalizer's value.
template <typename scalar_t>
MTL_HD scalar_t qp_weight(QpMethod method, const scalar_t* Z, const scalar_t* pref, int64_t K, int64_t j,
                          scalar_t normalizer) {
  if (method == QpMethod::kMinNorm) return Z[j] / normalizer;
  if (method == QpMethod::kDualProj) return qp_preference(pref, K, j) + Z[j];
  scalar_t s = qp_preference(pref, K, j);
  for (int64_t b = 0; b < K; ++b) s += qp_preference(pref, K, b) * Z[b * K + j];
  return s;
}

}  // namespace mtl_fast
