"""The pure-PyTorch oracle: every operation written straight from its definition, slow and obvious.

It is what the tests compare the kernels against, and the implementation mtl_fast falls back to when its
C++ extension is not available (``mtl_fast.backend() == 'python'``). No Python branch depends on a tensor's
value, so it never synchronises with a GPU and torch.compile can trace it.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import Tensor

__all__ = ["gram", "combine", "pcgrad_weights", "pcgrad"]


def _rows(chunk: Tensor) -> Tensor:
    return chunk.reshape(chunk.shape[0], -1)


def gram(chunks: Sequence[Tensor]) -> Tensor:
    """G = J J^T in float64, J being the chunks' rows laid side by side: G[a, b] = sum_c <J_c[a], J_c[b]>."""
    K = chunks[0].shape[0]
    G = torch.zeros(K, K, dtype=torch.float64, device=chunks[0].device)
    for chunk in chunks:
        rows = _rows(chunk).double()
        G = G + rows @ rows.T
    return G


def combine(chunks: Sequence[Tensor], weights: Tensor) -> List[Tensor]:
    """out_c = sum_k weights[k] * J_c[k], accumulated in float64, returned in each chunk's dtype."""
    w = weights.double()
    return [torch.einsum("k,k...->...", w, chunk.double()).to(chunk.dtype) for chunk in chunks]


def pcgrad_weights(G: Tensor, orders: Tensor) -> Tensor:
    """PCGrad (Yu et al. 2020, Algorithm 1) carried out on coefficients of the task gradients.

    g_i^PC = sum_a C[i, a] g_a. Task i visits the tasks orders[i] in turn; when g_i^PC . g_j < 0 for the
    original g_j, g_i^PC loses its component along g_j: C[i, j] -= (g_i^PC . g_j) / |g_j|^2. Returns w with
    sum_i g_i^PC = sum_j w_j g_j.
    """
    G = G.double()
    K = G.shape[0]
    identity = torch.eye(K, dtype=torch.float64, device=G.device)
    rows = []
    for i in range(K):
        c = identity[i]  # row i of C, updated out of place so that autograd can differentiate through it
        for step in range(K - 1):
            j = orders[i, step]
            dot = c @ G[:, j]
            norm_sq = G[j, j]
            # Only a strictly conflicting, nonzero g_j is projected out; a finite guard keeps extreme
            # ratios from producing inf.
            ratio = dot / torch.where(norm_sq > 0, norm_sq, torch.ones_like(norm_sq))
            project = (dot < 0) & (norm_sq > 0) & torch.isfinite(ratio)
            c = c - torch.where(project, ratio, torch.zeros_like(ratio)) * identity[j]
        rows.append(c)
    return torch.stack(rows).sum(dim=0)


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
# The method zoo (mtl_fast.aggregators), each straight from its paper. Oracles only: nothing falls back on them.
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
    """Nash-MTL (Navon et al. 2022): beta > 0 with G beta = 1 / beta, found by L-BFGS on log(beta) for the
    convex f(beta) = 1/2 beta^T G beta - sum log beta."""
    G = G.double()
    log_beta = torch.zeros(G.shape[0], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_beta], max_iter=iterations, tolerance_grad=1e-14, tolerance_change=1e-16,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        beta = log_beta.exp()
        value = 0.5 * beta @ G @ beta - log_beta.sum()
        value.backward()
        return value

    optimizer.step(closure)
    return log_beta.detach().exp()


def graddrop(J: Tensor, draw: Tensor, leak: Tensor) -> Tensor:
    """GradDrop (Chen et al. 2020), Algorithm 1, task by task, with the uniform draws ``draw`` given."""
    J = J.double()
    purity = 0.5 * (1 + J.sum(0) / J.abs().sum(0))
    out = torch.zeros_like(J[0])
    for k in range(J.shape[0]):
        mask = ((purity > draw) & (J[k] > 0)) | ((purity < draw) & (J[k] < 0))
        out = out + (leak[k] + (1 - leak[k]) * mask.double()) * J[k]
    return out
