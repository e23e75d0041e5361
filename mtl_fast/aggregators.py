"""Aggregators: how the K task gradients of the shared parameters become one update.

Every aggregator here except the ones that act elementwise is Gram-based: its update is sum_k w_k g_k with
weights w = weights(G) computed from the K x K Gram matrix G = J J^T alone. That is what lets one fast path
(gram -> weights -> combine, two passes over J) serve them all.
"""
from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor

from . import _gradvac_op, _ops, _qp
from ._checks import as_float_tensor, check_gram

__all__ = ["Aggregator", "GramAggregator", "Sum", "Mean", "Weighted", "PCGrad", "draw_pcgrad_orders",
           "MGDA", "DualProj", "UPGrad", "CAGrad", "IMTLG", "GradVac", "AlignedMTL", "NashMTL", "GradDrop",
           "solve_nonnegative_qp"]


class Aggregator(ABC):
    """Maps the per-task gradients J (K rows) of the shared parameters to one combined gradient."""

    @abstractmethod
    def aggregate_chunks(self, chunks: List[Tensor]) -> List[Tensor]:
        """Combines validated chunks of shape (K, ...) into one tensor per chunk (shape without the K dim)."""

    def __call__(self, J):
        """Same as :func:`mtl_fast.aggregate` (J, self)."""
        from .functional import aggregate
        return aggregate(J, self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class GramAggregator(Aggregator):
    """An aggregator whose update is sum_k w_k g_k with w = weights(G), G = J J^T."""

    @abstractmethod
    def weights(self, G: Tensor) -> Tensor:
        """The (K,) float64 combination weights for the Gram matrix G (K x K).

        Every method that reads G returns all-NaN weights for a G with a NaN or infinite entry (an overflowed
        gradient) and leaves its state as it was; fixed-weight ones do not read G."""

    def aggregate_chunks(self, chunks: List[Tensor]) -> List[Tensor]:
        return _ops.combine(chunks, self.weights(_ops.gram(chunks)))


class _FixedWeights(GramAggregator):
    """Weights that do not depend on G: the update is a fixed linear combination, so the fast paths skip the
    Gram matrix (and :func:`mtl_fast.backward` skips the Jacobian: one ordinary backward of the weighted sum)."""

    @abstractmethod
    def fixed_weights(self, K: int, device: torch.device) -> Tensor:
        """The (K,) float64 weights for K tasks."""

    def weights(self, G: Tensor) -> Tensor:
        return self.fixed_weights(check_gram(G), G.device)

    def aggregate_chunks(self, chunks: List[Tensor]) -> List[Tensor]:
        return _ops.combine(chunks, self.fixed_weights(chunks[0].shape[0], chunks[0].device))


class Sum(_FixedWeights):
    """The plain sum of the task gradients: what ``sum(losses).backward()`` gives."""

    def fixed_weights(self, K: int, device: torch.device) -> Tensor:
        return torch.ones(K, dtype=torch.float64, device=device)


class Mean(_FixedWeights):
    """The mean of the task gradients: what ``(sum(losses) / K).backward()`` gives."""

    def fixed_weights(self, K: int, device: torch.device) -> Tensor:
        return torch.full((K,), 1.0 / K, dtype=torch.float64, device=device)


class Weighted(_FixedWeights):
    """sum_k weights[k] g_k: what ``sum(w_k * L_k).backward()`` gives.

    Args:
        weights: one finite number per task (a sequence or a 1-D tensor).
    """

    def __init__(self, weights: Sequence[float]) -> None:
        self._weights = as_float_tensor(weights, "weights")
        # One copy per device, made once: a host-to-device copy on every step would be a hidden sync (and
        # cannot be captured in a CUDA graph).
        self._on_device: Dict[torch.device, Tensor] = {}

    def fixed_weights(self, K: int, device: torch.device) -> Tensor:
        if K != self._weights.numel():
            raise ValueError(f"weights: Weighted has {self._weights.numel()} weights but there are {K} tasks")
        device = torch.device(device)
        if device not in self._on_device:
            self._on_device[device] = self._weights.to(device)
        return self._on_device[device]

    def __repr__(self) -> str:
        return f"Weighted({self._weights.tolist()})"


def draw_pcgrad_orders(K: int, device: torch.device, generator: Optional[torch.Generator] = None) -> Tensor:
    """(K, K-1) int64: row i is a uniformly random order of the tasks other than i, drawn on ``device``."""
    keys = torch.rand(K, K, device=device, generator=generator)
    keys.diagonal().fill_(2.0)  # rand is < 1, so task i sorts last and is cut off
    return keys.argsort(dim=1)[:, : K - 1]


def _check_orders(orders: Tensor, K: int) -> None:
    """Visiting orders pinned by the caller: (K, K-1) int64."""
    if not isinstance(orders, Tensor) or orders.dtype != torch.int64 or tuple(orders.shape) != (K, K - 1):
        raise ValueError(f"orders: expected an int64 tensor of shape ({K}, {K - 1}), got "
                         f"{getattr(orders, 'dtype', type(orders).__name__)} {tuple(getattr(orders, 'shape', ()))}")


class PCGrad(GramAggregator):
    """PCGrad, "Gradient Surgery for Multi-Task Learning" (Yu et al., NeurIPS 2020), Algorithm 1.

    For each task i, the other tasks j are visited in a random order drawn independently for every i; when the
    running g_i^PC conflicts with the ORIGINAL g_j (g_i^PC . g_j < 0) it is projected onto g_j's normal plane,
    g_i^PC -= (g_i^PC . g_j) / |g_j|^2 g_j. The update is the SUM of the g_i^PC (as in the paper; use
    ``Weighted``-style scaling on the losses, or divide the learning rate, for a mean). Zero gradients are
    never projected onto, so zero or tiny task gradients give finite results.

    Args:
        seed: seeds this aggregator's own random generator (one per device), making the sequence of visiting
            orders reproducible; ``None`` draws from torch's global generator.
    """

    def __init__(self, seed: Optional[int] = None) -> None:
        if seed is not None and not isinstance(seed, int):
            raise TypeError(f"seed: expected an int or None, got {type(seed).__name__}")
        self.seed = seed
        self._generators: Dict[torch.device, torch.Generator] = {}

    def _generator(self, device: torch.device) -> Optional[torch.Generator]:
        if self.seed is None:
            return None
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]

    def orders(self, K: int, device: torch.device) -> Tensor:
        """Draws the next (K, K-1) visiting orders."""
        return draw_pcgrad_orders(K, device, self._generator(torch.device(device)))

    def weights(self, G: Tensor, orders: Optional[Tensor] = None) -> Tensor:
        """PCGrad weights for G; ``orders`` (K, K-1) int64 pins the visiting orders (drawn when None)."""
        K = check_gram(G)
        if orders is None:
            orders = self.orders(K, G.device)
        else:
            _check_orders(orders, K)
        return _ops.pcgrad_weights(G, orders)

    def __repr__(self) -> str:
        return f"PCGrad(seed={self.seed})"


# ----------------------------------------------------------------------------------------------------------------
# The method zoo. Every solver below works on the K x K Gram matrix in float64 torch ops on G's device. Iterative
# solvers stop early on the CPU, where reading a flag costs nothing; on accelerators they read the flag only every
# few iterations, so that a GPU is not stalled by one host synchronisation per step.
# ----------------------------------------------------------------------------------------------------------------

#: Tikhonov term added to the trace-normalised Gram matrix by the QP-based methods: it makes every principal
#: submatrix invertible (tasks may be identical or zero) and bounds the solution when 0 is in the convex hull.
#: It caps the condition number at 1e6: with 1e-10, block pivoting failed to settle on a singular G at K = 64
#: (rank 40). The price: J d >= -1e-6 trace(G) max(v) instead of J d >= 0, and weights within ~1e-6 relative of the
#: unregularised problem's (TorchJD uses 1e-4).
QP_REGULARIZATION = 1e-6
#: Relative tolerance of the QP solver's KKT checks (primal feasibility and the sign of the multipliers).
QP_TOLERANCE = 1e-9
_SYNC_EVERY = 4  # accelerators: read the convergence flag every this many iterations


def _should_stop(done: Tensor, iteration: int) -> bool:
    """Whether an iterative solver may stop now; reads ``done`` (a bool tensor) only when that is cheap."""
    if done.device.type != "cpu" and (iteration + 1) % _SYNC_EVERY:
        return False
    return bool(done.all())


def _normalized_gram(G: Tensor, regularization: float = QP_REGULARIZATION) -> Tensor:
    """G / trace(G) + regularization * I in float64: the QPs' solutions do not depend on G's scale, so the
    solver sees the same well-scaled problem for 1e-30- and 1e30-sized gradients (an all-zero G stays 0)."""
    G = G.double()
    trace = G.diagonal().sum()
    scaled = torch.where(trace > 0, G / torch.where(trace > 0, trace, torch.ones_like(trace)), torch.zeros_like(G))
    return scaled + regularization * torch.eye(G.shape[0], dtype=G.dtype, device=G.device)


def _masked_solve(M: Tensor, free: Tensor, rhs: Tensor) -> Tensor:
    """Solves M_FF x_F = rhs_F with x = 0 outside F, for a batch of free sets F ((B, K) bool) and right-hand sides
    ((B, K, R)): rows and columns outside F become the identity, so one batched solve serves every F."""
    f = free.to(M.dtype)
    system = M * (f[:, :, None] * f[:, None, :]) + torch.diag_embed(1.0 - f)
    return torch.linalg.solve_ex(system, rhs * f[:, :, None])[0]


_TORCH_PATH_ITERATIONS = 10  # the torch-ops solver's default cap, in multiples of the compiled op's


def _default_max_iter(K: int) -> int:
    """The pivoting's iteration cap, for the compiled op and (times _TORCH_PATH_ITERATIONS) the torch ops."""
    return 3 * K + 10


def _default_patience(K: int) -> int:
    """Steps without fewer KKT violations before block pivoting falls back to Murty's single swaps (Kim & Park use
    3, too few for singular G at K = 64)."""
    return K // 2 + 3


def _compiled_qp_weights(G: Tensor, K: int, method: str, pref: Optional[Tensor] = None) -> Optional[Tensor]:
    """weights(G) of 'mgda', 'dualproj' or 'upgrad' in one compiled op (the same QPs as the torch path below, on
    :func:`_normalized_gram`), or None where G's device has no such kernel or a derivative through G or pref
    will be asked for (the op has none; the torch path is differentiable)."""
    if _ops.needs_derivative(G) or (pref is not None and _ops.needs_derivative(pref)):
        return None
    return _qp.qp_weights(G, pref, method, QP_REGULARIZATION, QP_TOLERANCE, _default_max_iter(K),
                          _default_patience(K))


def solve_nonnegative_qp(M: Tensor, q: Tensor, *, simplex: bool = False, tol: float = QP_TOLERANCE,
                         max_iter: Optional[int] = None) -> Tensor:
    """Batched  min_z 1/2 z^T M z + q_b^T z  s.t. z >= 0 (and sum(z) = 1 when ``simplex``), for M positive definite.

    Block principal pivoting (Judice & Pires 1994; Kim & Park 2011): guess the set F of free coordinates, solve the
    equality-constrained problem on F with one batched linear solve, and move every coordinate that violates a KKT
    condition (z_i < 0 on F, a negative multiplier outside F) to the other set; when the number of violations stops
    decreasing for K/2 + 3 steps (:func:`_default_patience`) it falls back to swapping one index (Murty's rule),
    which guarantees termination.
    The answer is exact up to the linear solves once no KKT condition is violated by more than ``tol`` (relative).
    Where the compiled op exists for M's device (csrc/kernels/nonneg_qp.h: the same steps, with a Cholesky of the
    free block instead of a batched LU) it runs instead of the torch ops below, in float64.

    Args:
        M: (K, K) symmetric positive definite.
        q: (B, K) linear terms, one problem per row.
        simplex: add the constraint sum(z) = 1 (its multiplier enters the KKT check).
        tol: relative tolerance of the KKT checks.
        max_iter: iteration cap. Default 3K + 10 for the compiled op, which then finishes unsettled problems with
            an active-set method; ten times that for the torch ops, which have no such fallback and go on with
            Murty's single swaps instead (they stop as soon as every problem has settled). A problem that still
            has not settled gets a RuntimeWarning and an approximate answer.
    Returns:
        (B, K) solutions, z >= 0 exactly (and summing to 1 for ``simplex``).
    """
    B, K = q.shape
    if _qp.has_kernel(M.device.type) and not _ops.needs_derivative(M, q):
        return _qp.nonneg_qp(M, q, simplex, tol, _default_max_iter(K) if max_iter is None else max_iter,
                             _default_patience(K))
    # Block pivoting leaves a few of the aggregators' problems unsettled after 3K + 10 steps (UPGrad with a
    # rank-deficient G beyond K ~ 20); Murty's rule then settles them within a few times that.
    max_iter = _TORCH_PATH_ITERATIONS * _default_max_iter(K) if max_iter is None else max_iter
    ones = torch.ones(B, K, 1, dtype=M.dtype, device=M.device)
    free = torch.full((B, K), simplex, dtype=torch.bool, device=M.device)
    best = torch.full((B,), K + 1, dtype=torch.int64, device=M.device)
    patience_reset = _default_patience(K)
    patience = torch.full((B,), patience_reset, dtype=torch.int64, device=M.device)
    index = torch.arange(K, device=M.device)
    z = torch.zeros_like(q)
    for iteration in range(max_iter):
        if simplex:
            x = _masked_solve(M, free, torch.cat([-q[:, :, None], ones], dim=2))
            # z_F = x1 + lam * x2 with lam fixed by sum(z) = 1; lam is the multiplier of the equality.
            lam = (1.0 - x[:, :, 0].sum(1)) / x[:, :, 1].sum(1).clamp_min(torch.finfo(M.dtype).tiny)
            z = x[:, :, 0] + lam[:, None] * x[:, :, 1]
            multipliers = z @ M + q - lam[:, None]
        else:
            z = _masked_solve(M, free, -q[:, :, None])[:, :, 0]
            multipliers = z @ M + q
        # z may reach 1 / regularization (0 in the hull) while M z stays O(1): each check gets its own scale, the
        # multipliers' including the rounding error of M z.
        z_scale = z.abs().amax(1, keepdim=True)
        m_scale = q.abs().amax(1, keepdim=True) + (z @ M).abs().amax(1, keepdim=True) + 1e-7 * K * z_scale
        violated = (free & (z < -tol * z_scale)) | (~free & (multipliers < -tol * m_scale))
        count = violated.sum(1)
        if _should_stop(count == 0, iteration):
            break
        improved = count < best
        block = improved | (patience > 0)
        patience = torch.where(improved, torch.full_like(patience, patience_reset), patience - (~improved).long())
        best = torch.minimum(best, count)
        last = torch.where(violated, index, -1).amax(1, keepdim=True)
        swap = torch.where(block[:, None], violated, index == last)
        flipped = free ^ swap
        # The simplex needs at least one free coordinate; an empty guess keeps the previous one instead.
        free = torch.where(flipped.any(1, keepdim=True) | (not simplex), flipped, free)
    else:
        unsettled = int((count > 0).sum()) if max_iter > 0 else 0
        if unsettled:
            warnings.warn(f"solve_nonnegative_qp: {unsettled} of {B} problems did not settle within "
                          f"max_iter={max_iter} steps; their solutions are approximate", RuntimeWarning,
                          stacklevel=2)
    z = z.clamp_min(0.0)
    if simplex:
        z = z / z.sum(1, keepdim=True)
    return z


class _WithPreference(GramAggregator):
    """A Gram aggregator parametrised by a preference vector u over the tasks (default the mean, 1/K each)."""

    def __init__(self, pref_vector: Optional[Sequence[float]] = None) -> None:
        self.pref_vector: Optional[Tensor] = None
        if pref_vector is not None:
            self.pref_vector = as_float_tensor(pref_vector, "pref_vector")
            if (self.pref_vector < 0).any():
                raise ValueError(f"pref_vector: every entry must be >= 0, got {self.pref_vector.tolist()}")

    # Whether preference() is this class's own: the compiled fast path reads pref_vector directly, so a subclass
    # that redefines preference() takes the path that calls it (set by __init_subclass__).
    _reads_pref_vector = True

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls._reads_pref_vector = cls.preference is _WithPreference.preference

    def preference(self, K: int, device: torch.device) -> Tensor:
        """The (K,) float64 preference weights on ``device``."""
        if self.pref_vector is None:
            return torch.full((K,), 1.0 / K, dtype=torch.float64, device=device)
        if self.pref_vector.numel() != K:
            raise ValueError(f"pref_vector: has {self.pref_vector.numel()} entries but there are {K} tasks")
        return self.pref_vector.to(device)

    def _preference_or_mean(self, K: int, device: torch.device) -> Optional[Tensor]:
        """preference(K, device), or None for the default mean (the compiled op fills it in itself)."""
        return None if self.pref_vector is None and self._reads_pref_vector else self.preference(K, device)

    def __repr__(self) -> str:
        pref = None if self.pref_vector is None else self.pref_vector.tolist()
        return f"{type(self).__name__}(pref_vector={pref})"


def _check_number(value, name: str, *, low: float = float("-inf"), high: float = float("inf"),
                  low_open: bool = False, integer: bool = False):
    """A real (or int) argument within [low, high] ((low, high] when ``low_open``); returns it."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise TypeError(f"{name}: expected {'an int' if integer else 'a real number'}, got {type(value).__name__}")
    if value != value or value < low or value > high or (low_open and value == low):
        bound = f"{'(' if low_open else '['}{low}, {high}]"
        raise ValueError(f"{name}: expected a value in {bound}, got {value}")
    return value


class MGDA(GramAggregator):
    """MGDA: "Multiple-gradient descent algorithm (MGDA) for multiobjective optimization" (Desideri 2012), as used
    for MTL in "Multi-Task Learning as Multi-Objective Optimization" (Sener & Koltun, NeurIPS 2018).

    The update is the minimum-norm point of the convex hull of the task gradients:
    w = argmin_{w >= 0, sum(w) = 1} w^T G w,  d = sum_k w_k g_k. The weights sum to 1 (no rescaling: the paper's
    MGDA-UB normalisation of the losses is not applied). d . g_k >= |d|^2 >= 0 for every task.

    Solver: K = 2 in closed form, w_1 = clip((G22 - G12) / (G11 + G22 - 2 G12), 0, 1); K > 2 by block principal
    pivoting (:func:`solve_nonnegative_qp`) of min 1/2 z^T M z - sum(z), z >= 0, w = z / sum(z), with
    M = G / trace(G) + 1e-6 I, exact to KKT tolerance 1e-9 (relative).
    Identical tasks share the weight equally; all-zero gradients give the uniform weights.
    """

    def weights(self, G: Tensor) -> Tensor:
        K = check_gram(G)
        # None where a derivative is asked for: the torch ops below (closed form for K = 2) are differentiable
        compiled = _compiled_qp_weights(G, K, "mgda")
        if compiled is not None:
            return compiled
        G, finite = _ops.finite_or_zero(G.double())
        if K == 2:
            gap = G[0, 0] + G[1, 1] - 2 * G[0, 1]
            # Identical (or both zero) gradients make the gap 0: any convex weight is optimal, take the middle.
            first = torch.where(gap > 0, (G[1, 1] - G[0, 1]) / torch.where(gap > 0, gap, torch.ones_like(gap)),
                                torch.full_like(gap, 0.5)).clamp(0.0, 1.0)
            return _ops.nan_unless(finite, torch.stack([first, 1.0 - first]))
        M = _normalized_gram(G)
        # For positive definite M, the minimiser z of 1/2 z^T M z - sum(z) over z >= 0, normalised, is the simplex
        # minimiser (the KKT conditions map onto each other with lambda = 1 / sum(z)); this form pivots faster.
        z = solve_nonnegative_qp(M, -torch.ones(1, K, dtype=M.dtype, device=M.device))[0]
        return _ops.nan_unless(finite, z / z.sum())


class _DualConeProjection(_WithPreference):
    """DualProj and UPGrad: small QPs on the normalised Gram matrix, in one compiled op where the device has it
    and in torch ops otherwise."""

    _qp_method: str  # the compiled op's name for the method

    def _torch_weights(self, M: Tensor, u: Tensor) -> Tensor:
        """The weights from M = G / trace(G) + regularisation and the preference u, in torch ops."""
        raise NotImplementedError

    def weights(self, G: Tensor) -> Tensor:
        K = check_gram(G)
        compiled = _compiled_qp_weights(G, K, self._qp_method, self._preference_or_mean(K, G.device))
        if compiled is not None:
            return compiled
        G, finite = _ops.finite_or_zero(G)
        M = _normalized_gram(G)
        return _ops.nan_unless(finite, self._torch_weights(M, self.preference(K, M.device)))


class DualProj(_DualConeProjection):
    """DualProj: the preference-weighted mean gradient projected onto the dual cone of the task gradients,
    {d : g_k . d >= 0 for all k} (Equation 11 of "Gradient Episodic Memory for Continual Learning", Lopez-Paz &
    Ranzato 2017; named DualProj in "Jacobian Descent for Multi-Objective Optimization", Quinton & Rey 2024).

    By the dual form (Quinton & Rey, Proposition 1) the projection of J^T u is J^T v with
    v = argmin_{v >= u} v^T G v, so d = sum_k v_k g_k satisfies J d = G v >= 0: it conflicts with no task.
    u is the preference vector (default the mean, 1/K each), so with no conflict d is the mean gradient.

    Solver: block principal pivoting on G / trace(G) + 1e-6 I (the projection does not depend on G's scale),
    KKT tolerance 1e-9 relative. TorchJD's default solver adds 1e-4 I instead: results agree to about 1e-3.

    Args:
        pref_vector: K non-negative weights u; default the mean.
    """

    _qp_method = "dualproj"

    def _torch_weights(self, M: Tensor, u: Tensor) -> Tensor:
        return u + solve_nonnegative_qp(M, (M @ u)[None])[0]


class UPGrad(_DualConeProjection):
    """UPGrad, "Jacobian Descent for Multi-Objective Optimization" (Quinton & Rey, 2024).

    Each task gradient g_i is projected onto the dual cone {d : J d >= 0}, and the projections are combined with
    the preference weights (default the mean): d = sum_i u_i pi(g_i). The projection of g_i = J^T e_i is J^T v_i
    with v_i = argmin_{v >= e_i} v^T G v, so the weights are w = sum_i u_i v_i, and J d = G w >= 0.
    Without conflicts it is the mean gradient; it is invariant to scaling G, and equivariant to permuting tasks.

    Solver: the K projections as one batch of block-principal-pivoting QPs on G / trace(G) + 1e-6 I, KKT
    tolerance 1e-9 relative (TorchJD's default adds 1e-4 I: agreement to about 1e-3).

    Args:
        pref_vector: K non-negative weights u; default the mean.
    """

    _qp_method = "upgrad"

    def _torch_weights(self, M: Tensor, u: Tensor) -> Tensor:
        # Row i solves for e_i; the solution scales with u_i, so the rows are weighted after solving.
        V = torch.eye(M.shape[0], dtype=M.dtype, device=M.device) + solve_nonnegative_qp(M, M)
        return u @ V


class CAGrad(GramAggregator):
    """CAGrad, "Conflict-Averse Gradient Descent for Multi-task Learning" (Liu et al., NeurIPS 2021), Algorithm 1.

    With g0 the mean gradient and phi = c^2 |g0|^2, solve the dual
    w* = argmin_{w >= 0, sum(w) = 1} g_w . g0 + sqrt(phi) |g_w|   (g_w = sum_k w_k g_k)
    and update with d = g0 + sqrt(phi) / |g_w*| g_w*, i.e. weights 1/K + sqrt(phi) / |g_w*| w*. This is the paper's
    d (the official code's default additionally divides it by 1 + c^2: scale the learning rate to match). When
    g_w* = 0 (a Pareto-stationary point) the correction has no direction and d = g0.

    Solver: at the optimum w* also minimises the quadratic rho/2 |g_w|^2 + g_w . g0 on the simplex with
    rho = sqrt(phi) / |g_w*|; on a fixed support that minimiser is affine in 1/rho, so rho solves a quadratic
    equation. Alternate exact simplex QPs (block principal pivoting, on G / trace(G) + 1e-6 I) and that equation
    until rho moves by less than 1e-10 relative (at most 30 rounds). Scale invariant in G.

    Args:
        c: the radius factor, c >= 0 (0 gives the mean).
    """

    def __init__(self, c: float = 0.5) -> None:
        self.c = float(_check_number(c, "c", low=0.0))

    def weights(self, G: Tensor) -> Tensor:
        K = check_gram(G)
        G, finite = _ops.finite_or_zero(G)
        M = _normalized_gram(G)
        mean = torch.full((K,), 1.0 / K, dtype=M.dtype, device=M.device)
        if self.c == 0.0 or K == 1:
            return _ops.nan_unless(finite, mean)
        b = M @ mean
        radius = self.c * (mean @ b).sqrt()
        rho = torch.full((), self.c, dtype=M.dtype, device=M.device)  # exact when the optimum is w* = mean
        ones = torch.ones(1, K, 1, dtype=M.dtype, device=M.device)
        for iteration in range(30):
            w = solve_nonnegative_qp(rho * M, b[None], simplex=True)
            # On the support F: w_F = p + s dir with s = 1 / rho, from the KKT system of the quadratic above.
            x = _masked_solve(M, w > 0, torch.cat([b[None, :, None], ones], dim=2))[0]
            x1, x2 = x[:, 0], x[:, 1]
            p = x2 / x2.sum()
            direction = x2 * x1.sum() / x2.sum() - x1
            alpha, beta, gamma = p @ M @ p, p @ M @ direction, direction @ M @ direction
            # |g_w(s)|^2 = alpha + 2 beta s + gamma s^2 must equal (radius s)^2.
            a = radius ** 2 - gamma
            s = (beta + (beta ** 2 + a * alpha).clamp_min(0.0).sqrt()) / a
            new_rho = torch.where((a > 0) & (s > 0), 1.0 / s, rho / 10).clamp(1e-12, 1e12)
            done = (new_rho - rho).abs() <= 1e-10 * rho
            rho = new_rho
            if _should_stop(done, iteration):
                break
        w = w[0]
        norm = (w @ M @ w).clamp_min(0.0).sqrt()
        stationary = norm <= 1e-12 * radius
        correction = torch.where(stationary, torch.zeros_like(norm), radius / torch.where(stationary, 1.0, norm))
        return _ops.nan_unless(finite, mean + correction * w)

    def __repr__(self) -> str:
        return f"CAGrad(c={self.c})"


class IMTLG(GramAggregator):
    """IMTL-G, "Towards Impartial Multi-task Learning" (Liu et al., ICLR 2021), gradient balancing.

    Finds d = sum_k w_k g_k with sum(w) = 1 whose projections onto every task's unit gradient are equal,
    d . g_k / |g_k| = const. In Gram form: G w is proportional to sqrt(diag G), so w = G^+ sqrt(diag G) /
    sum(G^+ sqrt(diag G)), with the pseudo-inverse (Quinton & Rey 2024's generalisation, defined for linearly
    dependent gradients; equal to the paper's closed form when they are independent). Eigenvalues below
    K * eps * max eigenvalue are treated as zero. Weights are 0 when the normalising sum vanishes (e.g. all-zero
    gradients). Scale invariant in G.
    """

    def weights(self, G: Tensor) -> Tensor:
        check_gram(G)
        G, finite = _ops.finite_or_zero(G.double())  # eigh would raise on a NaN
        eigenvalues, vectors = torch.linalg.eigh(G)
        cutoff = eigenvalues.amax().clamp_min(0.0) * G.shape[0] * torch.finfo(G.dtype).eps
        keep = eigenvalues > cutoff
        inverse = torch.where(keep, 1.0 / torch.where(keep, eigenvalues, 1.0), 0.0)
        v = vectors @ (inverse * (vectors.T @ G.diagonal().clamp_min(0.0).sqrt()))
        total = v.sum()
        degenerate = total.abs() <= 1e-12 * v.abs().sum()
        w = torch.where(degenerate, torch.zeros_like(v), v / torch.where(degenerate, 1.0, total))
        return _ops.nan_unless(finite, w)


class GradVac(GramAggregator):
    """GradVac, "Gradient Vaccine: Investigating and Improving Multi-task Optimization in Massively Multilingual
    Models" (Wang et al., ICLR 2021), Algorithm 1, on coefficients of the task gradients like :class:`PCGrad`.

    For each task i the other tasks j are visited in a random order (drawn per i, as in PCGrad). With
    phi = cos(g_i', g_j) for the running g_i' and the ORIGINAL g_j, and the EMA target phi_hat[i, j]: if
    phi < phi_hat, g_i' += |g_i'| (phi_hat sqrt(1 - phi^2) - phi sqrt(1 - phi_hat^2)) / (|g_j| sqrt(1 - phi_hat^2)) g_j
    (raising the cosine to phi_hat); then phi_hat[i, j] = (1 - beta) phi_hat[i, j] + beta phi. The update is the SUM
    of the g_i'. phi_hat starts at 0 (the paper's initialisation), so the first step acts like PCGrad.
    Cosines come from G: g_i' = sum_a C[i, a] g_a has |g_i'|^2 = C_i G C_i^T and g_i' . g_j = (C G)[i, j].
    A zero gradient, or a target of exactly +-1, skips the correction (TorchJD adds eps = 1e-8 to the
    denominators instead, which makes the step depend on the gradients' scale). Scale invariant in G.
    On the CPU one compiled op runs the K rows' recurrences (csrc/kernels/gradvac.h, O(K^2) per row); elsewhere
    the same steps run as torch ops over all rows at once. The two agree to rounding (the op keeps |g_i'|^2 up
    to date instead of recomputing it).

    Args:
        beta: EMA rate in [0, 1] (paper: 1e-2 for its largest models; default 0.5 as in TorchJD).
        seed: seeds the visiting orders (as PCGrad's ``seed``).
    State: ``phi_hat`` (K, K); ``state_dict()`` / ``load_state_dict()``, ``reset()``.
    """

    def __init__(self, beta: float = 0.5, seed: Optional[int] = None) -> None:
        self.beta = float(_check_number(beta, "beta", low=0.0, high=1.0))
        self._orders = PCGrad(seed=seed)
        self.phi_hat: Optional[Tensor] = None

    def reset(self) -> None:
        """Forgets the EMA targets."""
        self.phi_hat = None

    def state_dict(self) -> Dict[str, object]:
        """The EMA targets (None before the first step) and beta."""
        return {"beta": self.beta, "phi_hat": None if self.phi_hat is None else self.phi_hat.clone()}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        """Restores what :meth:`state_dict` returned."""
        phi_hat = state["phi_hat"]
        if phi_hat is not None and (not isinstance(phi_hat, Tensor) or phi_hat.dim() != 2
                                    or phi_hat.shape[0] != phi_hat.shape[1]):
            raise ValueError("state: 'phi_hat' must be None or a (K, K) tensor")
        self.beta = float(_check_number(state["beta"], "beta", low=0.0, high=1.0))
        self.phi_hat = None if phi_hat is None else phi_hat.detach().clone().double()

    def weights(self, G: Tensor, orders: Optional[Tensor] = None) -> Tensor:
        """GradVac weights for G (updating the EMA state); ``orders`` as in :meth:`PCGrad.weights`."""
        K = check_gram(G)
        G = G.double()
        if orders is None:
            orders = self._orders.orders(K, G.device)
        else:
            _check_orders(orders, K)
        if self.phi_hat is None or self.phi_hat.shape[0] != K:
            self.phi_hat = torch.zeros(K, K, dtype=G.dtype, device=G.device)
        previous = self.phi_hat.to(G.device)
        compiled = _gradvac_op.gradvac_weights(G, orders, previous, self.beta)
        if compiled is not None:  # (it returns NaN weights and the old targets for a non-finite G itself)
            weights, self.phi_hat = compiled
            return weights
        G, finite = _ops.finite_or_zero(G)
        phi_hat = previous
        # The same step in torch ops, every task at once (one row of C per task; kernels/gradvac.h per row).
        rows = torch.arange(K, device=G.device)
        C = torch.eye(K, dtype=G.dtype, device=G.device)
        norm_j_all = G.diagonal().clamp_min(0.0).sqrt()
        for step in range(K - 1):
            j = orders[:, step]
            norm_i = (C @ G * C).sum(1).clamp_min(0.0).sqrt()
            norm_j = norm_j_all[j]
            dot = (C @ G)[rows, j]
            denom = norm_i * norm_j
            valid = denom > 0
            phi = torch.where(valid, dot / torch.where(valid, denom, 1.0), 0.0).clamp(-1.0, 1.0)
            target = phi_hat[rows, j]
            target_sine = (1.0 - target ** 2).clamp_min(0.0).sqrt()
            step_denom = norm_j * target_sine
            act = valid & (phi < target) & (step_denom > 0)
            coeff = norm_i * (target * (1.0 - phi ** 2).clamp_min(0.0).sqrt() - phi * target_sine)
            # out of place: a G that asks for a derivative differentiates through every step
            C = C.index_put((rows, j), C[rows, j] + torch.where(act, coeff / torch.where(act, step_denom, 1.0), 0.0))
            phi_hat = phi_hat.index_put((rows, j), torch.where(valid, (1.0 - self.beta) * target + self.beta * phi,
                                                                target))
        # a non-finite G keeps the targets (a step that AMP's GradScaler skips leaves no trace); the state holds
        # no autograd history of a G that asked for a derivative
        self.phi_hat = torch.where(finite, phi_hat, previous).detach()
        return _ops.nan_unless(finite, C.sum(0))

    def __repr__(self) -> str:
        return f"GradVac(beta={self.beta}, seed={self._orders.seed})"


_SCALE_MODES = ("min", "median", "rmse")


class AlignedMTL(_WithPreference):
    """Aligned-MTL, "Independent Component Alignment for Multi-Task Learning" (Senushkin et al., CVPR 2023),
    Algorithm 1.

    With G = V diag(lambda) V^T (eigenvalues above K * eps * max kept), the balance transformation
    B = sqrt(sigma) V diag(lambda)^-1/2 V^T makes the aligned gradients J_hat = B J orthogonal with equal norms
    sqrt(sigma) (the condition number of the system becomes 1); the update is J_hat^T u, so w = B u with u the
    preference vector (default the mean 1/K, as TorchJD). sigma, the scale: 'min' the smallest kept eigenvalue
    (the paper), 'median' their (lower) median, 'rmse' their mean (as TorchJD names the official code's mode).
    Scale and rotation invariant in G; all-zero gradients give w = u.

    Args:
        pref_vector: K non-negative weights; default the mean.
        scale_mode: 'min', 'median' or 'rmse'.
    """

    def __init__(self, pref_vector: Optional[Sequence[float]] = None, scale_mode: str = "min") -> None:
        if scale_mode not in _SCALE_MODES:
            raise ValueError(f"scale_mode: expected one of {_SCALE_MODES}, got {scale_mode!r}")
        super().__init__(pref_vector)
        self.scale_mode = scale_mode

    def weights(self, G: Tensor) -> Tensor:
        K = check_gram(G)
        G, finite = _ops.finite_or_zero(G.double())  # eigh would raise on a NaN
        u = self.preference(K, G.device)
        eigenvalues, vectors = torch.linalg.eigh(G)
        cutoff = eigenvalues.amax() * K * torch.finfo(G.dtype).eps
        keep = eigenvalues > cutoff.clamp_min(torch.finfo(G.dtype).tiny)
        kept = torch.where(keep, eigenvalues, float("nan"))
        if self.scale_mode == "min":
            sigma = torch.where(keep, eigenvalues, float("inf")).amin()
        elif self.scale_mode == "median":
            sigma = kept.nanmedian()
        else:
            sigma = torch.where(keep, eigenvalues, 0.0).sum() / keep.sum().clamp_min(1)
        scaled = torch.where(keep, (sigma / torch.where(keep, eigenvalues, 1.0)).sqrt(), 0.0)
        w = vectors @ (scaled * (vectors.T @ u))
        return _ops.nan_unless(finite, torch.where(keep.any(), w, u))

    def __repr__(self) -> str:
        pref = None if self.pref_vector is None else self.pref_vector.tolist()
        return f"AlignedMTL(pref_vector={pref}, scale_mode={self.scale_mode!r})"


class NashMTL(GramAggregator):
    """Nash-MTL, "Multi-Task Learning as a Bargaining Game" (Navon et al., ICML 2022), Algorithm 1.

    The Nash bargaining solution: beta > 0 with G beta = 1 / beta (elementwise) for the raw G, so that
    beta_k (g_k . d) = 1 and |d|^2 = K; it is solved on G / |G|_F for conditioning and rescaled by |G|_F^-1/2, as the
    official code does. d = sum_k beta_k g_k, then d is scaled down to norm ``max_norm`` when it is longer
    (the official default 1.0; 0 disables it). ``update_weights_every`` > 1 reuses the last beta in between.
    All-zero gradients give beta = 0.

    Solver: G beta = 1 / beta is the stationarity condition of the strictly convex
    f(beta) = 1/2 beta^T G beta - sum log beta_k, minimised by damped Newton steps (step 1 / (1 + Newton
    decrement) until the decrement is below 1/4, then full steps, which keeps beta > 0), at most ``optim_niter``
    steps (paper's default 20), stopping when the squared Newton decrement is below 1e-20. A 1e-10 I term keeps
    the problem bounded when the gradients are linearly dependent (the paper assumes they are not; e.g.
    opposite gradients have no solution). Instead of the paper's sequence of convex programs (CCP via cvxpy), the
    solution is reached to Newton accuracy: results differ from the official / TorchJD ones by their CCP error.

    Args:
        max_norm: cap on |d| (>= 0; 0: no cap).
        update_weights_every: recompute beta every this many calls (>= 1).
        optim_niter: Newton steps (>= 1).
    State: the last beta and the step count (``state_dict()`` / ``load_state_dict()``, ``reset()``).
    """

    def __init__(self, max_norm: float = 1.0, update_weights_every: int = 1, optim_niter: int = 20) -> None:
        self.max_norm = float(_check_number(max_norm, "max_norm", low=0.0))
        self.update_weights_every = _check_number(update_weights_every, "update_weights_every", low=1, integer=True)
        self.optim_niter = _check_number(optim_niter, "optim_niter", low=1, integer=True)
        self.reset()

    def reset(self) -> None:
        """Forgets the last solution and the step count."""
        self.step = 0
        self.last_beta: Optional[Tensor] = None

    def state_dict(self) -> Dict[str, object]:
        return {"step": self.step, "last_beta": None if self.last_beta is None else self.last_beta.clone()}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        last_beta = state["last_beta"]
        if last_beta is not None and (not isinstance(last_beta, Tensor) or last_beta.dim() != 1):
            raise ValueError("state: 'last_beta' must be None or a (K,) tensor")
        self.step = _check_number(state["step"], "step", low=0, integer=True)
        self.last_beta = None if last_beta is None else last_beta.detach().clone().double()

    def solve(self, G: Tensor) -> Tensor:
        """beta > 0 with G beta = 1 / beta, up to the 1e-10 |G|_F I term (no clipping, no state)."""
        G = G.double()
        K = G.shape[0]
        norm = torch.linalg.matrix_norm(G)
        # The log barrier keeps Newton well conditioned, so a much smaller term than the QPs' suffices here.
        M = torch.where(norm > 0, G / torch.where(norm > 0, norm, 1.0), 0.0) \
            + 1e-10 * torch.eye(K, dtype=G.dtype, device=G.device)
        beta = M.diagonal().rsqrt()  # exact when the gradients are orthogonal
        for iteration in range(self.optim_niter):
            gradient = M @ beta - 1.0 / beta
            hessian = M + torch.diag(beta ** -2)
            step = torch.linalg.solve_ex(hessian, gradient)[0]
            decrement_sq = (step @ gradient).clamp_min(0.0)
            decrement = decrement_sq.sqrt()
            beta = beta - torch.where(decrement < 0.25, 1.0, 1.0 / (1.0 + decrement)) * step
            if _should_stop(decrement_sq < 1e-20, iteration):
                break
        return torch.where(norm > 0, beta / torch.where(norm > 0, norm, 1.0).sqrt(), 0.0)

    def weights(self, G: Tensor) -> Tensor:
        K = check_gram(G)
        G, finite = _ops.finite_or_zero(G.double())
        if self.last_beta is None or self.last_beta.numel() != K:
            self.last_beta = self.solve(G)
        elif self.step % self.update_weights_every == 0:
            # a non-finite G keeps the last solution (a step that AMP's GradScaler skips leaves no trace)
            self.last_beta = torch.where(finite, self.solve(G), self.last_beta.to(G.device))
        self.step += 1
        beta = self.last_beta.to(G.device)
        if self.max_norm > 0:
            norm = (beta @ G @ beta).clamp_min(0.0).sqrt()
            beta = beta * torch.where(norm > self.max_norm, self.max_norm / torch.where(norm > 0, norm, 1.0), 1.0)
        return _ops.nan_unless(finite, beta)

    def __repr__(self) -> str:
        return (f"NashMTL(max_norm={self.max_norm}, update_weights_every={self.update_weights_every}, "
                f"optim_niter={self.optim_niter})")


class GradDrop(Aggregator):
    """GradDrop, "Just Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign Dropout" (Chen et al.,
    NeurIPS 2020), Algorithm 1. Elementwise, so not Gram-based.

    For every coordinate, the positive sign purity P = 1/2 (1 + sum_k g_k / sum_k |g_k|) (1/2 where all g_k are
    0) is compared with U ~ Uniform(0, 1) drawn per coordinate: where P > U only the positive entries g_k > 0 are
    kept, elsewhere only the negative ones; the update is the sum of what is kept, plus a ``leak`` fraction of
    every task's gradient: sum_k (leak_k + (1 - leak_k) mask_k) g_k. Meant for the gradients w.r.t. shared
    activations (use it with :func:`mtl_fast.fork`); at the parameter level it acts on each parameter entry.
    It runs as vectorised torch ops, one pass over each chunk: since the mask only depends on the sign, the sum
    splits into the (leak-weighted) positive and negative parts of the column sums.

    Args:
        leak: K values in [0, 1] (default 0: no leak).
        seed: seeds this aggregator's own generator (per device) for U; None uses torch's global one.
    """

    def __init__(self, leak: Optional[Sequence[float]] = None, seed: Optional[int] = None) -> None:
        self.leak = None if leak is None else as_float_tensor(leak, "leak")
        if self.leak is not None and ((self.leak < 0) | (self.leak > 1)).any():
            raise ValueError(f"leak: every value must be in [0, 1], got {self.leak.tolist()}")
        self._random = PCGrad(seed=seed)  # the same per-device seeded generators

    def aggregate_chunks(self, chunks: List[Tensor]) -> List[Tensor]:
        K, device = chunks[0].shape[0], chunks[0].device
        if self.leak is not None and self.leak.numel() != K:
            raise ValueError(f"leak: has {self.leak.numel()} values but there are {K} tasks")
        generator = self._random._generator(device)
        out = []
        for chunk in chunks:
            dtype = torch.promote_types(chunk.dtype, torch.float32)  # half inputs: sums in fp32
            g = chunk.to(dtype)
            positive, negative = g.clamp_min(0.0), g.clamp_max(0.0)
            purity = 0.5 * (1.0 + (positive.sum(0) + negative.sum(0))
                            / (positive.sum(0) - negative.sum(0)).clamp_min(torch.finfo(dtype).tiny))
            draw = torch.rand(chunk.shape[1:], dtype=dtype, device=device, generator=generator)
            if self.leak is None:
                kept = torch.where(purity > draw, positive.sum(0), negative.sum(0))
            else:
                leak = self.leak.to(device=device, dtype=dtype).reshape((K,) + (1,) * (chunk.dim() - 1))
                kept = torch.where(purity > draw, ((1 - leak) * positive).sum(0), ((1 - leak) * negative).sum(0))
                kept = kept + (leak * g).sum(0)
            out.append(kept.to(chunk.dtype))
        return out

    def __repr__(self) -> str:
        leak = None if self.leak is None else self.leak.tolist()
        return f"GradDrop(leak={leak}, seed={self._random.seed})"
