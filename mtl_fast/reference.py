"""The pure-PyTorch oracle: every operation written straight from its definition, slow and obvious.

Two kinds of function live here:

- the twins of the compiled ops (``gram``, ``combine``, ``pcgrad_weights``, ``gradvac_weights``, ``nonneg_qp``,
  ``qp_weights``, ``ghost_gram``, ``heads_loss``): the same arguments and contract as ``torch.ops.mtl_fast.<op>``.
  The tests hold the kernels against them, and mtl_fast runs them where no kernel serves (``mtl_fast.backend() == 'python'``,
  other devices, a G that needs a derivative: they are differentiable). No Python branch depends on a tensor's
  value, so they never synchronise with a GPU and torch.compile can trace them, except the QP solver's stopping
  test (see :func:`nonneg_qp`) and the fused heads' check of class targets.
- the methods as their papers state them, on the gradient vectors themselves (``pcgrad``, ``mgda``, ...): oracles
  only, which the tests hold the Gram-based implementations against.
"""
from __future__ import annotations

import warnings
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ._nonfinite import finite_or_zero, nan_unless

__all__ = ["gram", "combine", "pcgrad_weights", "gradvac_weights", "nonneg_qp", "qp_weights", "ghost_gram",
           "heads_loss",
           "heads_accumulation_dtype", "normalized_gram", "masked_solve", "pcgrad"]


def _rows(chunk: Tensor) -> Tensor:
    return chunk.reshape(chunk.shape[0], -1)


def gram(J: Sequence[Tensor]) -> Tensor:
    """G = J J^T in float64, J being the chunks' rows laid side by side: G[a, b] = sum_c <J_c[a], J_c[b]>."""
    K = J[0].shape[0]
    G = torch.zeros(K, K, dtype=torch.float64, device=J[0].device)
    for chunk in J:
        rows = _rows(chunk).double()
        G = G + rows @ rows.T
    # A blocked matrix product need not give G[a, b] and G[b, a] the same rounding; the compiled op's G is
    # symmetric bit for bit, and so is this one.
    return (G + G.T) / 2


def combine(J: Sequence[Tensor], weights: Tensor) -> List[Tensor]:
    """out_c = sum_k weights[k] * J_c[k], accumulated in float64, returned in each chunk's dtype."""
    w = weights.double()
    return [torch.einsum("k,k...->...", w, chunk.double()).to(chunk.dtype) for chunk in J]


def pcgrad_weights(G: Tensor, orders: Tensor) -> Tensor:
    """PCGrad (Yu et al. 2020, Algorithm 1) carried out on coefficients of the task gradients.

    g_i^PC = sum_a C[i, a] g_a. Task i visits the tasks orders[i] in turn; when g_i^PC . g_j < 0 for the
    original g_j, g_i^PC loses its component along g_j: C[i, j] -= (g_i^PC . g_j) / |g_j|^2. Returns w with
    sum_i g_i^PC = sum_j w_j g_j (all NaN for a G with a NaN or infinite entry).
    """
    G, finite = finite_or_zero(G.double())
    K = G.shape[0]
    identity = torch.eye(K, dtype=torch.float64, device=G.device)
    # visits[i, s] is the unit vector of the task i visits at step s: selecting through it rather than indexing
    # with a tensor keeps every step a dense op that torch.compile traces into one graph.
    visits = (orders[:, :, None] == torch.arange(K, device=G.device)).to(G.dtype)
    rows = []
    for i in range(K):
        c = identity[i]  # row i of C, updated out of place so that autograd can differentiate through it
        for step in range(K - 1):
            e_j = visits[i, step]
            G_j = G @ e_j
            dot = c @ G_j
            norm_sq = e_j @ G_j
            # Only a strictly conflicting, nonzero g_j is projected out; a finite guard keeps extreme
            # ratios from producing inf.
            ratio = dot / torch.where(norm_sq > 0, norm_sq, torch.ones_like(norm_sq))
            project = (dot < 0) & (norm_sq > 0) & torch.isfinite(ratio)
            c = c - torch.where(project, ratio, torch.zeros_like(ratio)) * e_j
        rows.append(c)
    return nan_unless(finite, torch.stack(rows).sum(dim=0))


def gradvac_weights(G: Tensor, orders: Tensor, phi_hat: Tensor, beta: float) -> Tuple[Tensor, Tensor]:
    """One GradVac step (Wang et al. 2021, Algorithm 1) on coefficients of the task gradients, every task at once.

    g_i' = sum_a C[i, a] g_a has |g_i'|^2 = C_i G C_i^T and g_i' . g_j = (C G)[i, j]. Task i visits orders[i] in
    turn; with phi = cos(g_i', g_j) against the ORIGINAL g_j and the target phi_hat[i, j], phi < target raises the
    cosine to the target, g_i' += |g_i'| (target sqrt(1 - phi^2) - phi sqrt(1 - target^2)) /
    (|g_j| sqrt(1 - target^2)) g_j, and phi_hat[i, j] becomes (1 - beta) target + beta phi. A zero gradient, or a
    target of exactly +-1, skips the correction. Returns the (K,) weights of sum_i g_i' and the targets after the
    step; for a G with a NaN or infinite entry, NaN weights and the targets as they were.
    """
    G, finite = finite_or_zero(G.double())
    K = G.shape[0]
    previous = phi_hat.double()
    rows = torch.arange(K, device=G.device)
    C = torch.eye(K, dtype=G.dtype, device=G.device)
    norm_j_all = G.diagonal().clamp_min(0.0).sqrt()
    targets = previous
    for step in range(K - 1):
        j = orders[:, step]
        norm_i = (C @ G * C).sum(1).clamp_min(0.0).sqrt()
        norm_j = norm_j_all[j]
        dot = (C @ G)[rows, j]
        denom = norm_i * norm_j
        valid = denom > 0
        phi = torch.where(valid, dot / torch.where(valid, denom, 1.0), 0.0).clamp(-1.0, 1.0)
        target = targets[rows, j]
        target_sine = (1.0 - target ** 2).clamp_min(0.0).sqrt()
        step_denom = norm_j * target_sine
        act = valid & (phi < target) & (step_denom > 0)
        coeff = norm_i * (target * (1.0 - phi ** 2).clamp_min(0.0).sqrt() - phi * target_sine)
        # out of place: a G that asks for a derivative differentiates through every step
        C = C.index_put((rows, j), C[rows, j] + torch.where(act, coeff / torch.where(act, step_denom, 1.0), 0.0))
        targets = targets.index_put((rows, j), torch.where(valid, (1.0 - beta) * target + beta * phi, target))
    return nan_unless(finite, C.sum(0)), torch.where(finite, targets, previous)


# The nonnegative QPs behind MGDA, DualProj and UPGrad: the compiled ops solve them with the same steps
# (csrc/kernels/nonneg_qp.h), with a Cholesky of the free block where this solves a batched LU.

def normalized_gram(G: Tensor, regularization: float) -> Tensor:
    """G / trace(G) + regularization * I in float64: the QPs' solutions do not depend on G's scale, so the
    solver sees the same well-scaled problem for 1e-30- and 1e30-sized gradients (an all-zero G stays 0)."""
    G = G.double()
    trace = G.diagonal().sum()
    scaled = torch.where(trace > 0, G / torch.where(trace > 0, trace, torch.ones_like(trace)), torch.zeros_like(G))
    return scaled + regularization * torch.eye(G.shape[0], dtype=G.dtype, device=G.device)


def masked_solve(M: Tensor, free: Tensor, rhs: Tensor) -> Tensor:
    """Solves M_FF x_F = rhs_F with x = 0 outside F, for a batch of free sets F ((B, K) bool) and right-hand sides
    ((B, K, R)): rows and columns outside F become the identity, so one batched solve serves every F."""
    f = free.to(M.dtype)
    system = M * (f[:, :, None] * f[:, None, :]) + torch.diag_embed(1.0 - f)
    return torch.linalg.solve_ex(system, rhs * f[:, :, None])[0]


#: Where block pivoting has not settled within max_iter steps, the compiled solver finishes with an active-set
#: method; this one has none and goes on with Murty's single swaps, which settle the aggregators' few such problems
#: (UPGrad with a rank-deficient G beyond K ~ 20) within a few times max_iter, up to this many times in all.
MURTY_ITERATIONS_FACTOR = 10


def should_stop(done: Tensor, iteration: int) -> bool:
    """Whether an iterative solver may stop now. Reads ``done`` on the CPU every time; on accelerators only every
    fourth iteration, so that a GPU is not stalled by a host synchronisation per step."""
    if done.device.type != "cpu" and (iteration + 1) % 4:
        return False
    return bool(done.all())


def nonneg_qp(M: Tensor, q: Tensor, simplex: bool, tol: float, max_iter: int, patience: int) -> Tensor:
    """Batched  min_z 1/2 z^T M z + q_b^T z  s.t. z >= 0 (and sum(z) = 1 when ``simplex``), M positive definite.

    Block principal pivoting (Judice & Pires 1994; Kim & Park 2011): guess the set F of free coordinates, solve the
    equality-constrained problem on F with one batched linear solve, and move every coordinate that violates a KKT
    condition (z_i < 0 on F, a negative multiplier outside F) to the other set; when the number of violations has
    not decreased for ``patience`` steps, swap only the last violating index (Murty's rule), which cannot cycle.
    The answer is exact up to the linear solves once no KKT condition is violated by more than ``tol`` (relative).
    At most max_iter * MURTY_ITERATIONS_FACTOR steps; a problem still unsettled then gets a RuntimeWarning and an
    approximate answer. Returns (B, K) in float64, z >= 0 exactly (summing to 1 for ``simplex``).
    """
    M, q = M.double(), q.double()
    B, K = q.shape
    max_iter = MURTY_ITERATIONS_FACTOR * max_iter
    ones = torch.ones(B, K, 1, dtype=M.dtype, device=M.device)
    free = torch.full((B, K), simplex, dtype=torch.bool, device=M.device)
    best = torch.full((B,), K + 1, dtype=torch.int64, device=M.device)
    remaining = torch.full((B,), patience, dtype=torch.int64, device=M.device)
    index = torch.arange(K, device=M.device)
    z = torch.zeros_like(q)
    count = torch.zeros(B, dtype=torch.int64, device=M.device)
    for iteration in range(max_iter):
        if simplex:
            x = masked_solve(M, free, torch.cat([-q[:, :, None], ones], dim=2))
            # z_F = x1 + lam * x2 with lam fixed by sum(z) = 1; lam is the multiplier of the equality.
            lam = (1.0 - x[:, :, 0].sum(1)) / x[:, :, 1].sum(1).clamp_min(torch.finfo(M.dtype).tiny)
            z = x[:, :, 0] + lam[:, None] * x[:, :, 1]
            multipliers = z @ M + q - lam[:, None]
        else:
            z = masked_solve(M, free, -q[:, :, None])[:, :, 0]
            multipliers = z @ M + q
        # z may reach 1 / regularization (0 in the hull) while M z stays O(1): each check gets its own scale, the
        # multipliers' including the rounding error of M z.
        z_scale = z.abs().amax(1, keepdim=True)
        m_scale = q.abs().amax(1, keepdim=True) + (z @ M).abs().amax(1, keepdim=True) + 1e-7 * K * z_scale
        violated = (free & (z < -tol * z_scale)) | (~free & (multipliers < -tol * m_scale))
        count = violated.sum(1)
        if should_stop(count == 0, iteration):
            break
        improved = count < best
        block = improved | (remaining > 0)
        remaining = torch.where(improved, torch.full_like(remaining, patience), remaining - (~improved).long())
        best = torch.minimum(best, count)
        last = torch.where(violated, index, -1).amax(1, keepdim=True)
        swap = torch.where(block[:, None], violated, index == last)
        flipped = free ^ swap
        # The simplex needs at least one free coordinate; an empty guess keeps the previous one instead.
        free = torch.where(flipped.any(1, keepdim=True) | (not simplex), flipped, free)
    else:
        unsettled = int((count > 0).sum()) if max_iter > 0 else 0
        if unsettled:
            warnings.warn(f"nonnegative QP: {unsettled} of {B} problems did not settle within {max_iter} steps; "
                          "their solutions are approximate", RuntimeWarning, stacklevel=3)
    z = z.clamp_min(0.0)
    if simplex:
        z = z / z.sum(1, keepdim=True)
    return z


_QP_METHODS = ("mgda", "dualproj", "upgrad")


def qp_weights(G: Tensor, pref: Optional[Tensor], method: str, regularization: float, tol: float, max_iter: int,
               patience: int) -> Tensor:
    """The (K,) float64 weights(G) of MGDA, DualProj or UPGrad (``method`` 'mgda', 'dualproj', 'upgrad') on
    M = G / trace(G) + regularization * I, the QPs solved by :func:`nonneg_qp`; ``pref`` is the preference vector u
    (None: the mean, 1/K each; MGDA has none).

    - mgda: K = 2 in closed form on G itself (Sener & Koltun 2018, Algorithm 2), w_1 = clip((G22 - G12) /
      (G11 + G22 - 2 G12), 0, 1), the middle for identical or zero gradients; beyond, z minimising
      1/2 z^T M z - sum(z) over z >= 0, w = z / sum(z) (for positive definite M the KKT conditions map onto those
      of the simplex problem with lambda = 1 / sum(z); this form pivots faster).
    - dualproj: w = u + z, z minimising 1/2 z^T M z + (M u)^T z over z >= 0, i.e. v = w minimises v^T G v over
      v >= u.
    - upgrad: w = u + sum_b u_b z_b, z_b minimising 1/2 z^T M z + (M e_b)^T z over z >= 0.

    All NaN for a G with a NaN or infinite entry.
    """
    if method not in _QP_METHODS:
        raise ValueError(f"method: expected one of {_QP_METHODS}, got {method!r}")
    G, finite = finite_or_zero(G.double())
    K = G.shape[0]
    if method == "mgda" and K == 2:
        gap = G[0, 0] + G[1, 1] - 2 * G[0, 1]
        first = torch.where(gap > 0, (G[1, 1] - G[0, 1]) / torch.where(gap > 0, gap, torch.ones_like(gap)),
                            torch.full_like(gap, 0.5)).clamp(0.0, 1.0)
        return nan_unless(finite, torch.stack([first, 1.0 - first]))
    M = normalized_gram(G, regularization)
    u = torch.full((K,), 1.0 / K, dtype=M.dtype, device=M.device) if pref is None else pref.double()
    if method == "mgda":
        z = nonneg_qp(M, -torch.ones(1, K, dtype=M.dtype, device=M.device), False, tol, max_iter, patience)[0]
        return nan_unless(finite, z / z.sum())
    if method == "dualproj":
        return nan_unless(finite, u + nonneg_qp(M, (M @ u)[None], False, tol, max_iter, patience)[0])
    # Row b solves for e_b; its solution scales with u_b, so the rows are weighted after solving.
    V = torch.eye(K, dtype=M.dtype, device=M.device) + nonneg_qp(M, M, False, tol, max_iter, patience)
    return nan_unless(finite, u @ V)


def ghost_gram(A: Tensor, delta: Tensor) -> Tensor:
    """The Gram matrix of the K gradients A^T delta_k of one layer (A (R, d) its input rows, delta (K, R, m) its
    K output gradients), as G_ij = <delta_i, (A A^T) delta_j> in float64: the gradients are never formed.
    Averaged with its transpose, so that G is symmetric bit for bit, as the op's is."""
    K = delta.shape[0]
    a, d = A.double(), delta.double()
    G = d.reshape(K, -1) @ (a @ a.T @ d).reshape(K, -1).T
    return (G + G.T) * 0.5


def heads_accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the fused heads' losses come in: float64 for float64 logits, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def heads_loss(logits: Tensor, class_targets: Tensor, value_targets: Tensor, sizes: Sequence[int],
               regression: Sequence[bool], ignore_index: int, reduction: str) -> Tensor:
    """The losses of ``mtl_fast::heads_loss``: one F.cross_entropy or F.mse_loss per task over the side-by-side
    logits (task k's ``sizes[k]`` columns). For 'none', a regression task's per-sample loss is its squared error
    summed over the task's outputs."""
    acc = heads_accumulation_dtype(logits.dtype)
    regression_sizes = [s for s, r in zip(sizes, regression) if r]
    classes = iter(class_targets.unbind(0))
    values = iter(value_targets.split(regression_sizes, dim=1))
    losses: List[Tensor] = []
    for k, (z, is_regression) in enumerate(zip(logits.split(list(sizes), dim=1), regression)):
        z = z.to(acc)
        if is_regression:
            t = next(values)
            losses.append(torch.nn.functional.mse_loss(z, t, reduction="none").sum(1) if reduction == "none"
                          else torch.nn.functional.mse_loss(z, t, reduction=reduction))
        else:
            t = next(classes)
            _check_classes(t, k, sizes[k], ignore_index)
            losses.append(torch.nn.functional.cross_entropy(z, t, ignore_index=ignore_index, reduction=reduction))
    return torch.stack(losses)


def _check_classes(targets: Tensor, task: int, size: int, ignore_index: int) -> None:
    """The op's check of class targets, with its message (the one read of tensor values in this module: without it
    cross_entropy fails with a bare IndexError, or a device-side assert on a GPU)."""
    bad = ((targets < 0) | (targets >= size)) & (targets != ignore_index)
    if bool(bad.any()):
        b = int(bad.nonzero()[0, 0])
        raise ValueError(f"targets[{task}][{b}]: class {int(targets[b])} is out of range for task {task}, which has "
                         f"{size} classes")


def pcgrad(J: Tensor, orders: Tensor) -> Tensor:
    """PCGrad on the gradient vectors themselves (J: (K, P)), exactly as Algorithm 1 states it.

    Independent of the coefficient trick used everywhere else; the tests hold the two against each other.
    """
    J = J.double()
    K = J.shape[0]
    projected = []
    for i in range(K):
        g = J[i].clone()
        for step in range(K - 1):
            g_j = J[orders[i, step]]
            dot = g @ g_j
            norm_sq = g_j @ g_j
            if dot < 0 and norm_sq > 0:
                g = g - dot / norm_sq * g_j
        projected.append(g)
    return torch.stack(projected).sum(dim=0)


# ----------------------------------------------------------------------------------------------------------------
# The methods (mtl_fast.aggregation), each straight from its paper. Oracles only: nothing falls back on them.
# The QPs are solved by enumerating every active set (exact; fine for the K <= 10 the tests use), the rest by
# formulas on J itself where the paper states them that way.
# ----------------------------------------------------------------------------------------------------------------

__all__ += ["min_norm_weights", "dual_cone_weights", "mgda", "dualproj", "upgrad", "cagrad", "imtlg", "gradvac",
            "aligned_mtl", "nash_mtl", "graddrop"]


def _subsets(K: int, empty: bool):
    for mask in range(0 if empty else 1, 2 ** K):
        yield [k for k in range(K) if mask >> k & 1]


def min_norm_weights(G: Tensor, tol: float = 1e-9) -> Tensor:
    """argmin_{w >= 0, sum(w) = 1} w^T G w by enumeration: on each support F, the minimiser over the affine hull
    (KKT system [[2 G_FF, 1], [1^T, 0]], least squares); the best one that is >= 0 is the optimum."""
    G = G.double()
    K = G.shape[0]
    best, best_value = None, float("inf")
    for F in _subsets(K, empty=False):
        n = len(F)
        system = torch.zeros(n + 1, n + 1, dtype=torch.float64)
        system[:n, :n] = 2 * G[F][:, F]
        system[:n, n] = 1.0
        system[n, :n] = 1.0
        rhs = torch.zeros(n + 1, dtype=torch.float64)
        rhs[n] = 1.0
        solution = torch.linalg.lstsq(system, rhs[:, None], driver="gelsd").solution[:n, 0]
        if solution.min() < -tol or abs(solution.sum() - 1) > 1e-6:
            continue
        w = torch.zeros(K, dtype=torch.float64)
        w[F] = solution.clamp_min(0)
        value = float(w @ G @ w)
        if value < best_value:
            best, best_value = w, value
    return best


def dual_cone_weights(G: Tensor, u: Tensor, tol: float = 1e-9) -> Tensor:
    """argmin_{v >= u} v^T G v by enumeration: with v = u on the active set A, the free part solves
    G_FF v_F = -G_FA u_A; a candidate with v_F >= u_F and (G v)_A >= 0 is a KKT point, hence optimal."""
    G, u = G.double(), u.double()
    K = G.shape[0]
    scale = float(G.diagonal().sum()) or 1.0
    best, best_value = None, float("inf")
    for F in _subsets(K, empty=True):
        A = [k for k in range(K) if k not in F]
        v = u.clone()
        if F:
            rhs = -(G[F][:, A] @ u[A]) if A else torch.zeros(len(F), dtype=torch.float64)
            v[F] = torch.linalg.lstsq(G[F][:, F], rhs[:, None], driver="gelsd").solution[:, 0]
        if (v[F] < u[F] - tol).any() or (G @ v).min() < -tol * scale * (1 + float(v.abs().max())):
            continue
        value = float(v @ G @ v)
        if value < best_value:
            best, best_value = v, value
    return best


def mgda(G: Tensor) -> Tensor:
    """MGDA (Desideri 2012; Sener & Koltun 2018): the min-norm point of the convex hull, as weights."""
    return min_norm_weights(G)


def dualproj(G: Tensor, u: Tensor) -> Tensor:
    """DualProj (Quinton & Rey 2024): J^T u projected onto the dual cone, as the weights v."""
    return dual_cone_weights(G, u)


def upgrad(G: Tensor, u: Tensor) -> Tensor:
    """UPGrad (Quinton & Rey 2024): sum_i u_i (projection of g_i onto the dual cone), as weights."""
    K = G.shape[0]
    return sum(u[i] * dual_cone_weights(G, torch.eye(K, dtype=torch.float64)[i]) for i in range(K))


def _project_simplex(x: Tensor) -> Tensor:
    """Euclidean projection onto the probability simplex (sort-based)."""
    s, _ = torch.sort(x, descending=True)
    cumulative = s.cumsum(0) - 1
    index = torch.arange(1, x.numel() + 1, dtype=x.dtype)
    rho = int((s - cumulative / index > 0).nonzero().max())
    return (x - cumulative[rho] / (rho + 1)).clamp_min(0)


def cagrad(J: Tensor, c: float, iterations: int = 20000) -> Tensor:
    """CAGrad (Liu et al. 2021), Algorithm 1, on J: projected gradient descent on the dual
    min_{w in simplex} g_w . g0 + c |g0| |g_w|, then d = g0 + c |g0| / |g_w| g_w (returned)."""
    J = J.double()
    K = J.shape[0]
    g0 = J.mean(0)
    radius = c * g0.norm()
    w = torch.full((K,), 1.0 / K, dtype=torch.float64)
    step = 1.0 / (J @ J.T).diagonal().sum()
    for _ in range(iterations):
        gw = J.T @ w
        gradient = J @ g0 + radius * (J @ gw) / gw.norm()
        w = _project_simplex(w - step * gradient)
    gw = J.T @ w
    return g0 + radius / gw.norm() * gw


def imtlg(J: Tensor) -> Tensor:
    """IMTL-G (Liu et al. 2021), the paper's closed form on J (linearly independent rows): with
    D = [g_1 - g_i]_i, U = [u_1 - u_i]_i (u unit gradients), alpha_{2:} = g_1 U^T (D U^T)^-1; returns d."""
    J = J.double()
    units = J / J.norm(dim=1, keepdim=True)
    D = J[:1] - J[1:]
    U = units[:1] - units[1:]
    alpha = J[0] @ U.T @ torch.linalg.inv(D @ U.T)
    weights = torch.cat([1 - alpha.sum(0, keepdim=True), alpha])
    return J.T @ weights


def gradvac(J: Tensor, orders: Tensor, phi_hat: Tensor, beta: float) -> Tensor:
    """GradVac (Wang et al. 2021), Algorithm 1, on the gradient vectors; updates ``phi_hat`` in place and
    returns the sum of the corrected gradients."""
    J = J.double()
    K = J.shape[0]
    corrected = []
    for i in range(K):
        g = J[i].clone()
        for step in range(K - 1):
            j = int(orders[i, step])
            phi = float(g @ J[j] / (g.norm() * J[j].norm()))
            target = float(phi_hat[i, j])
            if phi < target:
                g = g + g.norm() * (target * (1 - phi ** 2) ** 0.5 - phi * (1 - target ** 2) ** 0.5) \
                    / (J[j].norm() * (1 - target ** 2) ** 0.5) * J[j]
            phi_hat[i, j] = (1 - beta) * target + beta * phi
        corrected.append(g)
    return torch.stack(corrected).sum(0)


def aligned_mtl(J: Tensor, u: Tensor, scale_mode: str = "min") -> Tensor:
    """Aligned-MTL (Senushkin et al. 2023) on J via its SVD J = U S W^T: the aligned gradients are
    sqrt(sigma) U W^T (orthogonal, equal norms); returns their u-weighted sum."""
    J = J.double()
    left, singular, right_t = torch.linalg.svd(J, full_matrices=False)
    keep = singular ** 2 > (singular[0] ** 2) * J.shape[0] * torch.finfo(torch.float64).eps
    eigenvalues = singular[keep] ** 2
    sigma = {"min": eigenvalues.min(), "median": eigenvalues.median(), "rmse": eigenvalues.mean()}[scale_mode]
    aligned = sigma.sqrt() * left[:, keep] @ right_t[keep]
    return aligned.T @ u.double()


def nash_mtl(G: Tensor, iterations: int = 500) -> Tensor:
    """Nash-MTL (Navon et al. 2022): beta > 0 with G beta = 1 / beta, FairGrad's equation at alpha = 1 (see
    :func:`fairgrad`: L-BFGS on log(beta) for the convex f(beta) = 1/2 beta^T G beta - sum log beta)."""
    return fairgrad(G, 1.0, iterations)


def graddrop(J: Tensor, draw: Tensor, leak: Tensor) -> Tensor:
    """GradDrop (Chen et al. 2020), Algorithm 1, task by task, with the uniform draws ``draw`` given."""
    J = J.double()
    purity = 0.5 * (1 + J.sum(0) / J.abs().sum(0))
    out = torch.zeros_like(J[0])
    for k in range(J.shape[0]):
        mask = ((purity > draw) & (J[k] > 0)) | ((purity < draw) & (J[k] < 0))
        out = out + (leak[k] + (1 - leak[k]) * mask.double()) * J[k]
    return out


# Method zoo II (mtl_fast.aggregation and mtl_fast.loss_weighting): oracles on J, or on the losses, as the papers
# state them. The stateful ones run a whole sequence of steps and return every step's update.

__all__ += ["config", "fairgrad", "sdmgrad", "modo", "crmogm", "krum", "trimmed_mean", "excess_mtl", "moco",
            "dbmtl", "random_weights", "stch", "geometric_mean", "pbi", "cosmos", "imtl_l"]


def config(J: Tensor, pref: Tensor) -> Tensor:
    """ConFIG (Liu et al. 2024), equation 2: v = pinv(U) p for the unit gradients U, d = (sum_k g_k . v^) v^."""
    J = J.double()
    units = torch.nan_to_num(J / J.norm(dim=1, keepdim=True), nan=0.0)
    v = torch.linalg.pinv(units) @ pref.double()
    unit = v / v.norm()
    return (J @ unit).sum() * unit


def fairgrad(G: Tensor, alpha: float, iterations: int = 500) -> Tensor:
    """FairGrad (Ban & Ji 2024): w > 0 with G w = w^(-1/alpha), found by L-BFGS on log(w) for the convex
    f(w) = 1/2 w^T G w - sum_k h(w_k), h' = w^(-1/alpha) (alpha = 1: Nash-MTL, see :func:`nash_mtl`)."""
    G = G.double()
    log_w = torch.zeros(G.shape[0], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_w], max_iter=iterations, tolerance_grad=1e-14, tolerance_change=1e-16,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        w = log_w.exp()
        barrier = log_w.sum() if alpha == 1 else (w ** (1 - 1 / alpha)).sum() / (1 - 1 / alpha)
        value = 0.5 * w @ G @ w - barrier
        value.backward()
        return value

    optimizer.step(closure)
    return log_w.detach().exp()


def sdmgrad(Js: Sequence[Tensor], lambda_: float, lr: float, momentum: float, n_iter: int,
            target: Tensor) -> List[Tensor]:
    """SDMGrad (Xiao et al. 2023), Algorithm 1, one-batch form: per step, n_iter projected SGD steps with
    momentum on w for 1/2 |J^T w + lambda J^T w~|^2 / s (s = mean_k |g_k| squared), started from the last w;
    d = (J^T w + lambda J^T w~) / (1 + lambda). Returns every step's d."""
    K = Js[0].shape[0]
    w = torch.full((K,), 1.0 / K, dtype=torch.float64)
    updates = []
    for J in Js:
        J = J.double()
        scale = J.norm(dim=1).mean() ** 2
        velocity = torch.zeros(K, dtype=torch.float64)
        for _ in range(n_iter):
            gradient = J @ (J.T @ w + lambda_ * J.T @ target) / scale
            velocity = momentum * velocity + gradient
            w = _project_simplex(w - lr * velocity)
        updates.append((J.T @ w + lambda_ * J.T @ target) / (1 + lambda_))
    return updates


def modo(Js: Sequence[Tensor], gamma: float, rho: float) -> List[Tensor]:
    """MoDo (Chen et al. 2023), Algorithm 1, one-batch form: lambda <- Pi(lambda - gamma (J J^T lambda + rho
    lambda)) from 1/K, d = J^T lambda. Returns every step's d."""
    K = Js[0].shape[0]
    lam = torch.full((K,), 1.0 / K, dtype=torch.float64)
    updates = []
    for J in Js:
        J = J.double()
        lam = _project_simplex(lam - gamma * (J @ (J.T @ lam) + rho * lam))
        updates.append(J.T @ lam)
    return updates


def crmogm(weights: Sequence[Tensor], alpha: float) -> List[Tensor]:
    """CR-MOGM (Zhou et al. 2022): lambda_t = alpha lambda_{t-1} + (1 - alpha) lambda^_t, lambda_0 = lambda^_1."""
    smoothed, previous = [], weights[0].double()
    for current in weights:
        previous = alpha * previous + (1 - alpha) * current.double()
        smoothed.append(previous)
    return smoothed


def krum(J: Tensor, n_byzantine: int, n_selected: int) -> Tensor:
    """(Multi-)Krum (Blanchard et al. 2017): score(i) = sum of |g_i - g_j|^2 over the K - f - 2 nearest j != i;
    the mean of the n_selected lowest-scoring gradients (ties to the lower index)."""
    J = J.double()
    K = J.shape[0]
    scores = []
    for i in range(K):
        distances = sorted(float((J[i] - J[j]).norm() ** 2) for j in range(K) if j != i)
        scores.append(sum(distances[: K - n_byzantine - 2]))
    chosen = sorted(range(K), key=lambda i: (scores[i], i))[:n_selected]
    return J[chosen].mean(0)


def trimmed_mean(J: Tensor, trim_number: int) -> Tensor:
    """The coordinate-wise trimmed mean (Yin et al. 2018): per coordinate, drop the trim_number largest and
    smallest values and average the rest."""
    J = J.double()
    out = torch.empty(J.shape[1], dtype=torch.float64)
    for p in range(J.shape[1]):
        values = sorted(J[:, p].tolist())
        out[p] = sum(values[trim_number: len(values) - trim_number]) / (len(values) - 2 * trim_number)
    return out


def excess_mtl(Js: Sequence[Tensor], robust_step_size: float, n_warmup_steps: int) -> List[Tensor]:
    """ExcessMTL (He et al. 2024), Algorithm 1: S += g^2, E_k = sum g_k^2 / sqrt(S_k + 1e-7), uniform weights
    during the warm-up, then alpha_k <- alpha_k exp(eta E_k / E0_k) / normaliser. Returns every step's update."""
    K = Js[0].shape[0]
    S = torch.zeros_like(Js[0], dtype=torch.float64)
    alpha = torch.full((K,), 1.0 / K, dtype=torch.float64)
    warmup, baseline, updates = torch.zeros(K, dtype=torch.float64), None, []
    for step, J in enumerate(Js, start=1):
        J = J.double()
        S = S + J ** 2
        excess = (J ** 2 / (S + 1e-7).sqrt()).sum(1)
        if step <= n_warmup_steps:
            warmup = warmup + excess
        else:
            if baseline is None:
                baseline = warmup / n_warmup_steps if n_warmup_steps else excess
            alpha = alpha * torch.exp(robust_step_size * excess / baseline)
            alpha = alpha / alpha.sum()
        updates.append(J.T @ alpha)
    return updates


def moco(Js: Sequence[Tensor], beta: float, beta_sigma: float, gamma: float, gamma_sigma: float,
         rho: float) -> List[Tensor]:
    """MoCo (Fernando et al. 2023), Algorithm 1: y_k <- y_k - beta_t (y_k - g_k) from 0, lambda <- Pi(lambda -
    gamma_t (Y Y^T + rho I) lambda) from 1/K, d = Y^T lambda. Returns every step's d."""
    K = Js[0].shape[0]
    Y = torch.zeros_like(Js[0], dtype=torch.float64)
    lam = torch.full((K,), 1.0 / K, dtype=torch.float64)
    updates = []
    for t, J in enumerate(Js, start=1):
        Y = Y - beta / t ** beta_sigma * (Y - J.double())
        lam = _project_simplex(lam - gamma / t ** gamma_sigma * (Y @ Y.T + rho * torch.eye(K, dtype=Y.dtype)) @ lam)
        updates.append(Y.T @ lam)
    return updates


def dbmtl(Js: Sequence[Tensor], losses: Sequence[Tensor], beta: float, beta_sigma: float) -> List[Tensor]:
    """DB-MTL (Lin et al. 2023), Algorithm 1, as the paper (and LibMTL) state it, with the gradient VECTORS
    averaged: h_k = g_k / (L_k + 1e-8), buffer <- h + beta_t (buffer - h) from 0,
    d = sum_k (max_i |buffer_i| / |buffer_k|) buffer_k. Returns every step's d. (mtl_fast.DBMTL averages the
    norms instead; the two agree for beta = 0.)"""
    buffer, updates = None, []
    for t, (J, L) in enumerate(zip(Js, losses), start=1):
        h = J.double() / (L.double()[:, None] + 1e-8)
        buffer = h + beta / t ** beta_sigma * ((torch.zeros_like(h) if buffer is None else buffer) - h)
        norms = buffer.norm(dim=1)
        updates.append(((norms.max() / norms)[:, None] * buffer).sum(0))
    return updates


def random_weights(z: Tensor) -> Tensor:
    """RLW / random gradient weighting (Lin et al. 2022), for the standard normal draw z: softmax(z)."""
    return torch.softmax(z.double(), 0)


def stch(losses: Tensor, mu: float, pref: Tensor, reference: Tensor) -> Tensor:
    """Smooth Tchebycheff (Lin et al. 2024), equation 9: mu log sum_k exp(lambda_k (L_k - z_k) / mu)."""
    return mu * torch.logsumexp(pref * (losses - reference) / mu, 0)  # log(sum(exp)), without overflow


def geometric_mean(losses: Tensor) -> Tensor:
    """GLS (Chennupati et al. 2019): (prod_k L_k)^(1/K)."""
    return losses.prod() ** (1.0 / losses.numel())


def pbi(losses: Tensor, theta: float, pref: Tensor, reference: Tensor) -> Tensor:
    """PBI (Zhang & Li 2007): d1 + theta d2, d1 = (L - z) . lambda / |lambda|, d2 = |L - z - d1 lambda / |lambda||."""
    direction = pref / pref.norm()
    d1 = (losses - reference) @ direction
    return d1 + theta * (losses - reference - d1 * direction).norm()


def cosmos(losses: Tensor, lambda_: float, pref: Tensor) -> Tensor:
    """COSMOS (Ruchte & Grabocka 2021), equation 5: r . L - lambda cos(r, L)."""
    return pref @ losses - lambda_ * (pref @ losses) / (pref.norm() * losses.norm())


def imtl_l(losses: Tensor, scales: Tensor) -> Tensor:
    """IMTL-L (Liu et al. 2021): sum_k exp(s_k) L_k - s_k."""
    return (torch.exp(scales) * losses - scales).sum()
