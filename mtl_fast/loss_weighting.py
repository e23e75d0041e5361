"""Loss-level dynamic weighting: per-task loss weights that change during training, usable with any aggregator.

One API for all of them::

    w = weighting.weights(losses)                       # (K,) detached float tensor for this step
    mf.backward(weighting.weighted_losses(losses), shared, aggregator=mf.UPGrad())
    weighting.combine(losses).backward()                # or: the plain weighted sum

``weighted_losses`` returns w_k * L_k (plus, for :class:`UncertaintyWeighting`, its log-variance regulariser) and
``combine`` their sum. Each call to ``weights`` / ``weighted_losses`` / ``combine`` is one training step. State
(loss history, learned parameters, random generator) lives in the object; ``state_dict()`` /
``load_state_dict()`` round-trip it. :class:`GradNorm` also needs the tasks' gradient norms, which it reads from
the Gram matrix (``weights(losses, G)``, or as an aggregator through ``GradNorm.aggregator``).
"""
from __future__ import annotations

import copy
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from ._checks import Losses, as_float_tensor, check_gram, check_number
from ._checks import stack_losses as _stack_losses
from .aggregation import GramAggregator

__all__ = ["LossWeighting", "DWA", "UncertaintyWeighting", "GradNorm", "FAMO", "RLW", "STCH", "GeometricMean", "IMTLL",
           "PBI", "COSMOS"]

class LossWeighting:
    """Base class: a rule giving per-task loss weights, step after step."""

    def weights(self, losses: Losses) -> Tensor:
        """The (K,) weights for this step (detached, on the losses' device, float64). Advances the state."""
        raise NotImplementedError

    def weighted_losses(self, losses: Losses) -> List[Tensor]:
        """[w_k * L_k]: the K task losses to backpropagate (e.g. through :func:`mtl_fast.backward`)."""
        stacked = _stack_losses(losses)
        w = self.weights(stacked).to(stacked.dtype)
        return list((w * stacked).unbind())

    def combine(self, losses: Losses) -> Tensor:
        """sum_k w_k * L_k, the scalar for a plain ``.backward()``."""
        return torch.stack(self.weighted_losses(losses)).sum()

    def state_dict(self) -> Dict[str, object]:
        """The state (a deep copy)."""
        return copy.deepcopy(vars(self))

    def load_state_dict(self, state: Dict[str, object]) -> None:
        """Restores what :meth:`state_dict` returned."""
        unknown = set(state) - set(vars(self))
        if unknown:
            raise ValueError(f"state: unexpected keys {sorted(unknown)} for {type(self).__name__}")
        vars(self).update(copy.deepcopy(state))


class DWA(LossWeighting):
    """Dynamic Weight Average, "End-to-End Multi-Task Learning with Attention" (Liu et al., CVPR 2019), eq. 7.

    w_k = K exp(r_k / T) / sum_i exp(r_i / T) with r_k = L_k(t-1) / L_k(t-2), the ratio of task k's average loss
    in the last two epochs; w = 1 until two epochs are complete. ``weights(losses)`` adds the losses to the
    current epoch's average; call :meth:`end_epoch` at each epoch's end (or after every step for the step-level
    variant). Weights sum to K. A step with a NaN or infinite loss (AMP's skipped steps) is left out of the mean.

    Args:
        T: temperature > 0 (paper: 2).
    """

    def __init__(self, T: float = 2.0) -> None:
        self.T = float(check_number(T, "T", low=0.0, low_open=True))
        self.history: List[Tensor] = []  # the last two epochs' mean losses
        self.epoch_sum: Optional[Tensor] = None
        self.epoch_count = 0

    def weights(self, losses: Losses) -> Tensor:
        stacked = _stack_losses(losses).detach().double()
        # A step with a NaN or infinite loss (an AMP overflow that GradScaler skips) does not count towards the
        # epoch's mean, which would otherwise poison every later weight; torch.where, so no host sync.
        finite = torch.isfinite(stacked).all()
        counted = torch.where(finite, stacked, torch.zeros_like(stacked))
        self.epoch_sum = counted if self.epoch_sum is None else self.epoch_sum + counted
        self.epoch_count = self.epoch_count + finite.double()
        K = stacked.numel()
        if len(self.history) < 2 or self.history[-1].numel() != K:
            return torch.ones(K, dtype=torch.float64, device=stacked.device)
        previous, before = (h.to(stacked.device) for h in self.history[-2:][::-1])
        ratio = previous / torch.where(before != 0, before, torch.ones_like(before))
        return K * torch.softmax(ratio / self.T, dim=0)

    def end_epoch(self) -> None:
        """Closes the epoch: its mean losses become L(t-1). An epoch without a finite step leaves no mean."""
        if float(self.epoch_count) > 0:  # (once an epoch, so the host sync does not matter)
            self.history = (self.history + [self.epoch_sum / self.epoch_count])[-2:]
        self.epoch_sum, self.epoch_count = None, 0


class UncertaintyWeighting(nn.Module, LossWeighting):
    """Homoscedastic uncertainty weighting, "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene
    Geometry and Semantics" (Kendall et al., CVPR 2018), eq. 7 with s_k = log sigma_k^2 learned:

    term_k = 1/2 exp(-s_k) L_k + 1/2 s_k  (the paper's regression form; weights w_k = 1/2 exp(-s_k), 1/2 at init).

    An ``nn.Module``: give its parameters to the optimizer. ``weighted_losses`` returns the term_k (the
    regulariser only reaches s_k, so aggregators see the weighted task gradients); ``state_dict`` is the module's.

    Args:
        num_tasks: K >= 1.
    """

    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        self.num_tasks = check_number(num_tasks, "num_tasks", low=1, integer=True)
        self.log_vars = nn.Parameter(torch.zeros(num_tasks))

    def weights(self, losses: Losses) -> Tensor:
        stacked = _stack_losses(losses, self.num_tasks)
        return (0.5 * torch.exp(-self.log_vars.detach())).double().to(stacked.device)

    def weighted_losses(self, losses: Losses) -> List[Tensor]:
        stacked = _stack_losses(losses, self.num_tasks)
        s = self.log_vars.to(stacked.device)
        return list((0.5 * torch.exp(-s) * stacked + 0.5 * s).unbind())

    def forward(self, losses: Losses) -> Tensor:
        """Same as :meth:`combine`."""
        return self.combine(losses)

    state_dict = nn.Module.state_dict
    load_state_dict = nn.Module.load_state_dict


class GradNorm(LossWeighting):
    """GradNorm, "GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep Multitask Networks"
    (Chen et al., ICML 2018), Algorithm 1.

    Learned weights w (init 1). Each step, with |g_k| = sqrt(G_kk) the norms of the UNWEIGHTED task gradients on
    the shared parameters (the Gram diagonal), G_W^k = w_k |g_k|, r_k = (L_k / L_k(0)) / mean_i(L_i / L_i(0)):
    L_grad = sum_k |G_W^k - mean(G_W) r_k^alpha| (the target is a constant), one gradient step on w with rate
    ``lr``, then w is renormalised to sum to K. ``weights(losses, G)`` returns the weights for THIS step (before
    the update), as the paper trains the network on sum w_k L_k and then updates w.

    Get G from :func:`mtl_fast.gram` of the per-task gradients, or let :func:`mtl_fast.backward` compute it:
    ``mf.backward(losses, shared, aggregator=gradnorm.aggregator(losses))`` applies sum_k w_k g_k to the shared
    parameters (task-specific parameters get their unweighted gradient, as with every aggregator).
    A step with a NaN or infinite loss or G (AMP's skipped steps) leaves the weights as they were, and L(0) is the
    first finite step's.

    Args:
        alpha: the restoring-force strength >= 0 (paper: 0.12 to 3; default 1.5).
        lr: the step size of the weight update > 0.
    """

    def __init__(self, alpha: float = 1.5, lr: float = 0.025) -> None:
        self.alpha = float(check_number(alpha, "alpha", low=0.0))
        self.lr = float(check_number(lr, "lr", low=0.0, low_open=True))
        self.task_weights: Optional[Tensor] = None
        self.initial_losses: Optional[Tensor] = None

    def weights(self, losses: Losses, G: Optional[Tensor] = None) -> Tensor:
        stacked = _stack_losses(losses).detach().double()
        K = stacked.numel()
        if G is None:
            raise TypeError("G: GradNorm.weights needs the Gram matrix of the unweighted task gradients")
        if check_gram(G) != K:
            raise ValueError(f"G: is {G.shape[0]} x {G.shape[0]} but there are {K} losses")
        if self.task_weights is None or self.task_weights.numel() != K:
            self.task_weights = torch.ones(K, dtype=torch.float64, device=stacked.device)
            self.initial_losses = stacked
        w = self.task_weights.to(stacked.device)
        current = w.clone()
        norms = G.double().diagonal().clamp_min(0.0).sqrt().to(stacked.device)
        # A step with a NaN or infinite loss or gradient (an AMP overflow that GradScaler skips) leaves the
        # weights as they were, and L(0) comes from the first finite step; torch.where, so no host sync.
        finite = torch.isfinite(stacked).all() & torch.isfinite(norms).all()
        initial = self.initial_losses.to(stacked.device)
        initial = torch.where(torch.isfinite(initial).all(), initial, torch.where(finite, stacked, initial))
        self.initial_losses = initial
        ratios = stacked / torch.where(initial != 0, initial, torch.ones_like(initial))
        relative = ratios / ratios.mean().clamp_min(torch.finfo(torch.float64).tiny)
        target = (w * norms).mean() * relative ** self.alpha
        # d L_grad / d w_k = sign(w_k |g_k| - target_k) |g_k|, the target being held constant.
        updated = (w - self.lr * torch.sign(w * norms - target) * norms).clamp_min(0.0)
        updated = K * updated / updated.sum().clamp_min(torch.finfo(torch.float64).tiny)
        self.task_weights = torch.where(finite, updated, w)
        return current

    def weighted_losses(self, losses: Losses, G: Optional[Tensor] = None) -> List[Tensor]:
        stacked = _stack_losses(losses)
        return list((self.weights(stacked, G).to(stacked.dtype) * stacked).unbind())

    def combine(self, losses: Losses, G: Optional[Tensor] = None) -> Tensor:
        return torch.stack(self.weighted_losses(losses, G)).sum()

    def aggregator(self, losses: Losses) -> GramAggregator:
        """A one-step aggregator whose weights(G) are this step's GradNorm weights (and update them)."""
        return _GradNormStep(self, _stack_losses(losses).detach())


class _GradNormStep(GramAggregator):
    def __init__(self, gradnorm: GradNorm, losses: Tensor) -> None:
        super().__init__(None)  # the weights are GradNorm's, computed from G in weights()
        self.gradnorm, self.losses = gradnorm, losses

    def weights(self, G: Tensor) -> Tensor:
        return self.gradnorm.weights(self.losses, G).to(G.device)


class FAMO(LossWeighting):
    """FAMO, "FAMO: Fast Adaptive Multitask Optimization" (Liu et al., NeurIPS 2023), Algorithm 1.

    Logits xi (init 0), z = softmax(xi). The step minimises sum_k z_k log(L_k - m_k + eps) (m_k: a lower bound on
    task k's loss, default 0), i.e. loss weights w_k = (z_k / (L_k - m_k + eps)) / sum_i (z_i / (L_i - m_i + eps))
    (they sum to 1 up to the loss scale: the gradient equals the paper's). After the optimiser step call
    :meth:`update` with the new losses: the logits follow the gradient delta^T dz/dxi of the log-loss decrease
    delta = log(L_old) - log(L_new), with Adam (lr ``w_lr``, L2 weight decay ``gamma``), as the official code does.
    The paper re-evaluates the same batch for L_new; the next batch's losses are a common, cheaper stand-in.
    An update whose old or new losses are NaN or infinite (AMP's skipped steps), or below ``min_losses``, takes no
    logit step.

    Args:
        num_tasks: K >= 1.
        w_lr: Adam step size for the logits (official: 0.025).
        gamma: weight decay of the logits (official: 0.001).
        min_losses: the lower bounds m (default 0).
        eps: added to L - m before the log (official: 1e-8).
    """

    def __init__(self, num_tasks: int, w_lr: float = 0.025, gamma: float = 0.001,
                 min_losses: Optional[Sequence[float]] = None, eps: float = 1e-8) -> None:
        self.num_tasks = check_number(num_tasks, "num_tasks", low=1, integer=True)
        self.w_lr = float(check_number(w_lr, "w_lr", low=0.0, low_open=True))
        self.gamma = float(check_number(gamma, "gamma", low=0.0))
        self.eps = float(check_number(eps, "eps", low=0.0))
        self.min_losses = torch.zeros(num_tasks, dtype=torch.float64) if min_losses is None else \
            torch.as_tensor(min_losses, dtype=torch.float64)
        if self.min_losses.shape != (num_tasks,):
            raise ValueError(f"min_losses: expected {num_tasks} values, got shape {tuple(self.min_losses.shape)}")
        self.logits = torch.zeros(num_tasks, dtype=torch.float64)
        self.adam_m = torch.zeros(num_tasks, dtype=torch.float64)
        self.adam_v = torch.zeros(num_tasks, dtype=torch.float64)
        self.adam_step = 0
        self.last_losses: Optional[Tensor] = None

    def _shifted(self, losses: Tensor) -> Tensor:
        return losses - self.min_losses.to(losses.device) + self.eps

    def weights(self, losses: Losses) -> Tensor:
        stacked = _stack_losses(losses, self.num_tasks).detach().double()
        self.last_losses = stacked
        scaled = torch.softmax(self.logits.to(stacked.device), 0) / self._shifted(stacked)
        return scaled / scaled.sum()

    def update(self, new_losses: Losses) -> None:
        """One logit step from the decrease between the losses of the last :meth:`weights` call and these."""
        if self.last_losses is None:
            raise RuntimeError("FAMO.update: call weights() (or weighted_losses/combine) first")
        new = _stack_losses(new_losses, self.num_tasks).detach().double().cpu()
        delta = self._shifted(self.last_losses.cpu()).log() - self._shifted(new).log()
        if not bool(torch.isfinite(delta).all()):
            # a NaN or infinite loss on either side (an AMP overflow that GradScaler skips): no logit step,
            # which would leave NaN logits and Adam moments for good (delta is on the CPU: no device sync)
            self.last_losses = None
            return
        z = torch.softmax(self.logits, 0)
        gradient = z * (delta - (z * delta).sum()) + self.gamma * self.logits  # softmax Jacobian^T delta + L2
        beta1, beta2 = 0.9, 0.999
        self.adam_step += 1
        self.adam_m = beta1 * self.adam_m + (1 - beta1) * gradient
        self.adam_v = beta2 * self.adam_v + (1 - beta2) * gradient ** 2
        m_hat = self.adam_m / (1 - beta1 ** self.adam_step)
        v_hat = self.adam_v / (1 - beta2 ** self.adam_step)
        self.logits = self.logits - self.w_lr * m_hat / (v_hat.sqrt() + 1e-8)
        self.last_losses = None


class RLW(LossWeighting):
    """Random Loss Weighting, "Reasonable Effectiveness of Random Weighting: A Litmus Test for Multi-Task
    Learning" (Lin et al., TMLR 2022): each step w = softmax(z), z ~ N(0, I_K) (the paper's default distribution);
    the weights sum to 1.

    Args:
        seed: seeds this object's generator (its state is part of ``state_dict``); None: torch's global one.
    """

    def __init__(self, seed: Optional[int] = None) -> None:
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed: expected an int or None, got {type(seed).__name__}")
        self.seed = seed
        self.generator_state = None if seed is None else torch.Generator().manual_seed(seed).get_state()

    def weights(self, losses: Losses) -> Tensor:
        stacked = _stack_losses(losses)
        generator = None
        if self.generator_state is not None:
            generator = torch.Generator()
            generator.set_state(self.generator_state)
        z = torch.randn(stacked.numel(), dtype=torch.float64, generator=generator)
        if generator is not None:
            self.generator_state = generator.get_state()
        return torch.softmax(z, 0).to(stacked.device)


class _ScalarisationWeighting(LossWeighting):
    """A fixed scalarisation s(L) of the K losses: the weights are its gradient dS/dL_k at this step's losses, so
    that ``weighted_losses`` / ``combine`` backpropagate exactly what s(L).backward() would. Stateless."""

    def preference(self, K: int, device: torch.device) -> Tensor:
        """The (K,) preference weights (checked against K) on ``device``."""
        if self.pref.numel() != K:
            raise ValueError(f"weights: has {self.pref.numel()} entries but there are {K} losses")
        return self.pref.to(device)

    def shifted(self, losses: Losses) -> Tensor:
        """L - z: the detached float64 losses minus the reference point z (0 when None)."""
        stacked = _stack_losses(losses).detach().double()
        if self.reference is None:
            return stacked
        if self.reference.numel() != stacked.numel():
            raise ValueError(f"reference: has {self.reference.numel()} entries but there are {stacked.numel()} "
                             "losses")
        return stacked - self.reference.to(stacked.device)


def _optional_vector(values: Optional[Sequence[float]], name: str) -> Optional[Tensor]:
    return None if values is None else as_float_tensor(values, name)


class STCH(_ScalarisationWeighting):
    """Smooth Tchebycheff scalarisation, "Smooth Tchebycheff Scalarization for Multi-Objective Optimization"
    (Lin et al., ICML 2024), equation 9:

    S(L) = mu log sum_k exp(lambda_k (L_k - z_k) / mu), a smooth upper bound of max_k lambda_k (L_k - z_k)
    within mu log K. Weights dS/dL_k = lambda_k softmax(lambda (L - z) / mu)_k (they sum to 1 for lambda = 1);
    ``combine`` has S's gradient (its value is sum_k w_k L_k, not S). mu -> 0 tends to the Tchebycheff
    max, mu -> infinity to the lambda-weighted mean. Deviations from LibMTL 1.1.5's STCH: it applies the
    formula to log(L / nadir) with a nadir point averaged over a warm-up epoch (the sum of log-losses before),
    and multiplies S by K; here it is applied to the losses as given (pass ``torch.log(losses / nadir)`` for
    that variant, and scale the learning rate for the K).

    Args:
        mu: the smoothing, > 0.
        weights: the preference lambda, K non-negative numbers (default 1 each).
        reference: the ideal point z, K numbers (default 0: losses are >= 0).
    """

    def __init__(self, mu: float, weights: Optional[Sequence[float]] = None,
                 reference: Optional[Sequence[float]] = None) -> None:
        self.mu = float(check_number(mu, "mu", low=0.0, low_open=True))
        self.pref = _optional_vector(weights, "weights")
        if self.pref is not None and (self.pref < 0).any():
            raise ValueError(f"weights: every entry must be >= 0, got {self.pref.tolist()}")
        self.reference = _optional_vector(reference, "reference")

    def weights(self, losses: Losses) -> Tensor:
        shifted = self.shifted(losses)
        pref = torch.ones_like(shifted) if self.pref is None else self.preference(shifted.numel(), shifted.device)
        return pref * torch.softmax(pref * shifted / self.mu, 0)


class GeometricMean(_ScalarisationWeighting):
    """Geometric loss strategy (GLS), "MultiNet++: Multi-Stream Feature Aggregation and Geometric Loss Strategy for
    Multi-Task Learning" (Chennupati et al., CVPR Workshops 2019), equation 2:

    S(L) = (prod_k L_k)^(1/K), weights dS/dL_k = S / (K L_k): a task's weight falls as its loss grows, and
    the result does not depend on the losses' units. Losses are clamped at the smallest positive float64
    (a zero loss would give an infinite weight). Same definition as LibMTL 1.1.5's GLS.
    """

    reference = None

    def weights(self, losses: Losses) -> Tensor:
        shifted = self.shifted(losses).clamp_min(torch.finfo(torch.float64).tiny)
        return shifted.log().mean().exp() / (shifted.numel() * shifted)


class PBI(_ScalarisationWeighting):
    """Penalty-based boundary intersection, "MOEA/D: A Multiobjective Evolutionary Algorithm Based on
    Decomposition" (Zhang & Li, IEEE TEC 2007), section II-C:

    with u = lambda / |lambda| and r = L - z, S(L) = d1 + theta d2, d1 = r . u (the progress along the
    preference direction), d2 = |r - d1 u| (the distance from it). Weights dS/dL = u + theta (r - d1 u) / d2
    (u alone where d2 = 0); they can be negative (a task is pushed back towards the preference ray).

    Args:
        theta: the penalty on the distance from the ray, >= 0 (MOEA/D uses 5).
        weights: the preference lambda, K non-negative numbers, not all 0.
        reference: the ideal point z, K numbers (default 0).
    """

    def __init__(self, theta: float, weights: Sequence[float], reference: Optional[Sequence[float]] = None) -> None:
        self.theta = float(check_number(theta, "theta", low=0.0))
        self.pref = as_float_tensor(weights, "weights")
        if (self.pref < 0).any() or not (self.pref > 0).any():
            raise ValueError(f"weights: expected non-negative entries, not all 0, got {self.pref.tolist()}")
        self.reference = _optional_vector(reference, "reference")

    def weights(self, losses: Losses) -> Tensor:
        r = self.shifted(losses)
        u = self.preference(r.numel(), r.device)
        u = u / u.norm()
        off_ray = r - (r @ u) * u
        distance = off_ray.norm()
        return u + self.theta * torch.where(distance > 0, off_ray / torch.where(distance > 0, distance, 1.0), 0.0)


class COSMOS(_ScalarisationWeighting):
    """COSMOS's loss, "Scalable Pareto Front Approximations for Deep Multi-Objective Learning" (Ruchte &
    Grabocka, ICDM 2021), equation 5:

    S(L) = r . L - lambda cos(r, L), the preference-weighted sum with a pull of L's direction towards the
    preference ray r. Weights dS/dL = r - lambda (r / (|r| |L|) - (r . L) L / (|r| |L|^3)) (r alone at L = 0).
    Only the loss: COSMOS also feeds r to the network (FiLM conditioning) and samples it per batch from a
    Dirichlet; do that in the model and set ``weighting.pref`` per batch.

    Args:
        lambda_: the cosine penalty, >= 0.
        weights: the preference ray r, K non-negative numbers, not all 0.
    """

    reference = None

    def __init__(self, lambda_: float, weights: Sequence[float]) -> None:
        self.lambda_ = float(check_number(lambda_, "lambda_", low=0.0))
        self.pref = as_float_tensor(weights, "weights")
        if (self.pref < 0).any() or not (self.pref > 0).any():
            raise ValueError(f"weights: expected non-negative entries, not all 0, got {self.pref.tolist()}")

    def weights(self, losses: Losses) -> Tensor:
        L = self.shifted(losses)
        r = self.preference(L.numel(), L.device)
        norm = L.norm()
        safe = torch.where(norm > 0, norm, 1.0)
        cosine_gradient = r / (r.norm() * safe) - (r @ L) * L / (r.norm() * safe ** 3)
        return r - self.lambda_ * torch.where(norm > 0, cosine_gradient, 0.0)


class IMTLL(nn.Module, LossWeighting):
    """IMTL-L, the loss balancing of "Towards Impartial Multi-task Learning" (Liu et al., ICLR 2021), section 3.2:
    learned scales s_k (init 0), term_k = exp(s_k) L_k - s_k, weights w_k = exp(s_k).

    Minimising term_k over s_k drives exp(s_k) L_k to 1: every scaled loss is pushed to the same value, whatever
    its units. An ``nn.Module``: give its parameters to the optimizer. ``weighted_losses`` returns the term_k (the
    -s_k only reaches s_k, so aggregators see the scaled task gradients exp(s_k) g_k). The paper's full IMTL is
    IMTL-L on the losses and IMTL-G on their gradients::

        imtl_l = mf.loss_weighting.IMTLL(K)
        optimizer = torch.optim.SGD([*model.parameters(), *imtl_l.parameters()], lr=0.1)
        mf.backward(imtl_l.weighted_losses(losses), model.trunk.parameters(), aggregator=mf.IMTLG())
        optimizer.step()

    Args:
        num_tasks: K >= 1.
    """

    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        self.num_tasks = check_number(num_tasks, "num_tasks", low=1, integer=True)
        self.scales = nn.Parameter(torch.zeros(num_tasks))

    def weights(self, losses: Losses) -> Tensor:
        stacked = _stack_losses(losses, self.num_tasks)
        return torch.exp(self.scales.detach()).double().to(stacked.device)

    def weighted_losses(self, losses: Losses) -> List[Tensor]:
        stacked = _stack_losses(losses, self.num_tasks)
        s = self.scales.to(stacked.device)
        return list((torch.exp(s) * stacked - s).unbind())

    def forward(self, losses: Losses) -> Tensor:
        """Same as :meth:`combine`."""
        return self.combine(losses)

    state_dict = nn.Module.state_dict
    load_state_dict = nn.Module.load_state_dict
