"""Fused multi-task heads: K linear heads held as one weight, their logits from one GEMM, and their losses
from one fused op (``mtl_fast::heads_loss``)."""
from __future__ import annotations

import math
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _ops, reference

REDUCTIONS = ("none", "mean", "sum")

__all__ = ["MultiTaskHeads"]

_KINDS = ("cross_entropy", "mse")
Inputs = Union[Tensor, Sequence[Tensor]]


class _ForkedLinear(torch.autograd.Function):
    """All heads' logits from one GEMM over features that ``mtl_fast.fork`` split into K aliases, with each
    alias receiving only its own head's input gradient, so the fork's aggregator sees the K task gradients."""

    @staticmethod
    def forward(weight: Tensor, bias: Optional[Tensor], sizes: Tuple[int, ...], *features: Tensor) -> Tensor:
        return F.linear(features[0], weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        weight, bias, sizes, *features = inputs
        ctx.sizes = sizes
        ctx.save_for_backward(weight, features[0])

    @staticmethod
    def backward(ctx, grad: Tensor):
        weight, features = ctx.saved_tensors
        # Under autocast the forward GEMM ran in a lower precision; the backward GEMMs run in the gradient's
        # dtype as autocast's own linear backward does.
        w = weight.to(grad.dtype)
        g = grad.reshape(-1, grad.shape[-1])
        x = features.to(grad.dtype).reshape(-1, features.shape[-1])
        needs = ctx.needs_input_grad
        grad_weight = (g.mT @ x).to(weight.dtype) if needs[0] else None
        grad_bias = g.sum(0) if needs[1] else None
        sizes, K = ctx.sizes, len(ctx.sizes)
        if not any(needs[3:]):
            return (grad_weight, grad_bias, None) + (None,) * K
        if len(set(sizes)) == 1:  # equal heads: the K input gradients in one batched GEMM
            per_task = torch.bmm(g.view(-1, K, sizes[0]).transpose(0, 1), w.view(K, sizes[0], -1)).unbind(0)
        else:
            per_task = [gk @ wk for gk, wk in zip(g.split(sizes, dim=1), w.split(sizes, dim=0))]
        grad_features = tuple(gx.view(features.shape).to(features.dtype) if need else None
                              for gx, need in zip(per_task, needs[3:]))
        return (grad_weight, grad_bias, None) + grad_features


class MultiTaskHeads(nn.Module):
    """K linear heads as one module: one ``weight`` of shape (sum(out_features), in_features) and one
    ``bias``, head k owning rows ``sum(out_features[:k]) : sum(out_features[:k+1])``.

    ``forward`` returns the K heads' outputs from one GEMM; ``cross_entropy``, ``mse_loss`` and ``losses``
    return the K per-task losses through one fused loss op, whose backward computes every head's weight
    gradient in one GEMM too. The input may be a tensor (its gradient is the sum over the tasks) or the K
    aliases ``mtl_fast.fork`` returns (each alias gets its own task's gradient, for the fork's aggregator).
    Parameters are initialised as ``nn.Linear`` initialises each head.

    Args:
        in_features: D, the size of each input sample.
        out_features: C_k for each head k (K = its length).
        bias: whether the heads have biases.
    """

    def __init__(self, in_features: int, out_features: Sequence[int], bias: bool = True, device=None,
                 dtype=None) -> None:
        super().__init__()
        if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 1:
            raise ValueError(f"in_features: expected a positive int, got {in_features!r}")
        sizes = tuple(out_features) if isinstance(out_features, Iterable) else None
        if not sizes or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in sizes):
            raise ValueError(f"out_features: expected a non-empty sequence of positive ints, got {out_features!r}")
        self.in_features = in_features
        self.out_features = sizes
        self.weight = nn.Parameter(torch.empty(sum(sizes), in_features, device=device, dtype=dtype))
        if bias:
            self.bias = nn.Parameter(torch.empty(sum(sizes), device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Linear's initialisation: its bounds depend on in_features only, so one draw covers all heads."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    @property
    def num_tasks(self) -> int:
        return len(self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={list(self.out_features)}, bias={self.bias is not None}"

    @classmethod
    def from_linears(cls, heads: Iterable[nn.Linear]) -> "MultiTaskHeads":
        """Fused heads holding copies of the weights of ``heads`` (e.g. ``MultiTaskNet.task_heads``)."""
        heads = list(heads)
        if not heads:
            raise ValueError("heads: expected at least one nn.Linear, got none")
        for k, head in enumerate(heads):
            if not isinstance(head, nn.Linear):
                raise TypeError(f"heads[{k}]: expected an nn.Linear, got {type(head).__name__}")
            if head.in_features != heads[0].in_features:
                raise ValueError(f"heads[{k}]: has in_features={head.in_features} but heads[0] has "
                                 f"{heads[0].in_features}")
            if (head.bias is None) != (heads[0].bias is None):
                raise ValueError(f"heads[{k}]: {'has no' if head.bias is None else 'has a'} bias, unlike heads[0]")
            if head.weight.dtype != heads[0].weight.dtype or head.weight.device != heads[0].weight.device:
                raise ValueError(f"heads[{k}]: is {head.weight.dtype} on {head.weight.device}, but heads[0] is "
                                 f"{heads[0].weight.dtype} on {heads[0].weight.device}")
        first = heads[0].weight
        fused = cls(heads[0].in_features, [h.out_features for h in heads], bias=heads[0].bias is not None,
                    device=first.device, dtype=first.dtype)
        with torch.no_grad():
            fused.weight.copy_(torch.cat([h.weight for h in heads]))
            if fused.bias is not None:
                fused.bias.copy_(torch.cat([h.bias for h in heads]))
        return fused

    def to_linears(self) -> nn.ModuleList:
        """K separate nn.Linear heads holding copies of this module's weights."""
        weights = self.weight.detach().split(self.out_features)
        biases = self.bias.detach().split(self.out_features) if self.bias is not None else [None] * self.num_tasks
        heads = nn.ModuleList()
        for w, b in zip(weights, biases):
            head = nn.Linear(self.in_features, w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
            with torch.no_grad():
                head.weight.copy_(w)
                if b is not None:
                    head.bias.copy_(b)
            heads.append(head)
        return heads

    def logits(self, x: Inputs) -> Tensor:
        """All heads' outputs side by side, (..., sum(out_features)), from one GEMM."""
        if isinstance(x, Tensor):
            self._check_input(x, "x")
            return F.linear(x, self.weight, self.bias)
        if not isinstance(x, (list, tuple)):
            raise TypeError(f"x: expected a Tensor or the K tensors mtl_fast.fork returns, got {type(x).__name__}")
        if len(x) != self.num_tasks:
            raise ValueError(f"x: expected {self.num_tasks} tensors (one per head, as mtl_fast.fork returns), "
                             f"got {len(x)}")
        for k, xk in enumerate(x):
            self._check_input(xk, f"x[{k}]")
            if not torch.compiler.is_compiling() and not _same_view(xk, x[0]):
                raise ValueError(f"x[{k}]: is not an alias of x[0]; a sequence input must be the K aliases of "
                                 "one tensor that mtl_fast.fork returns")
        return _ForkedLinear.apply(self.weight, self.bias, self.out_features, *x)

    def forward(self, x: Inputs) -> Tuple[Tensor, ...]:
        """The K heads' outputs, (..., out_features[k]) each."""
        return self.logits(x).split(self.out_features, dim=-1)

    def cross_entropy(self, x: Inputs, targets: Union[Tensor, Sequence[Tensor]], reduction: str = "mean",
                      ignore_index: int = -100) -> Tensor:
        """Per-task softmax cross-entropy, as ``F.cross_entropy(head_k(x), targets[k], ...)`` for every k.

        Args:
            x: (B, in_features) features, or the K aliases of them that ``mtl_fast.fork`` returns.
            targets: K int64 tensors of B class indices, or one (K, B) int64 tensor.
            reduction: 'mean' (over the targets that are not ignore_index), 'sum' or 'none'.
            ignore_index: targets with this value contribute neither loss nor gradient.
        Returns:
            (K,) losses, or (K, B) per-sample losses for 'none'; float32 for 16-bit logits (autocast).
        """
        return self.losses(x, targets, "cross_entropy", reduction=reduction, ignore_index=ignore_index)

    def mse_loss(self, x: Inputs, targets: Sequence[Tensor], reduction: str = "mean") -> Tensor:
        """Per-task mean squared error, as ``F.mse_loss(head_k(x), targets[k], ...)`` for every k; targets[k] of
        shape (B, out_features[k]), or (B,) for a one-output head. For 'none' the (K, B) result holds each
        sample's squared error summed over the head's outputs."""
        return self.losses(x, targets, "mse", reduction=reduction)

    def losses(self, x: Inputs, targets: Union[Tensor, Sequence[Tensor]], kinds: Union[str, Sequence[str]], *,
               reduction: str = "mean", ignore_index: int = -100) -> Tensor:
        """Per-task losses of heads that mix classification and regression.

        Args:
            x: as for ``cross_entropy``.
            targets: one per task: int64 class indices (B,) for a 'cross_entropy' task, values
                (B, out_features[k]) (or (B,) for one output) for an 'mse' task.
            kinds: 'cross_entropy' or 'mse', for all tasks or one per task.
            reduction, ignore_index: as for ``cross_entropy`` and ``mse_loss``.
        Returns:
            (K,) losses, or (K, B) per-sample losses for 'none'.
        """
        K = self.num_tasks
        kinds = [kinds] * K if isinstance(kinds, str) else list(kinds)
        if len(kinds) != K or any(kind not in _KINDS for kind in kinds):
            raise ValueError(f"kinds: expected one of {_KINDS}, or a sequence of {K} of them, got {kinds!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise TypeError(f"ignore_index: expected an int, got {type(ignore_index).__name__}")
        logits = self.logits(x)
        if logits.dim() != 2:
            raise ValueError(f"x: expected shape (batch, {self.in_features}) for a loss, got "
                             f"{tuple(logits.shape[:-1]) + (self.in_features,)}")
        regression = [kind == "mse" for kind in kinds]
        class_targets, value_targets = self._targets(targets, regression, logits)
        return _ops.heads_loss(logits, class_targets, value_targets, self.out_features, regression,
                                     ignore_index, reduction)

    def _check_input(self, x: Tensor, name: str) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"{name}: expected a Tensor, got {type(x).__name__}")
        if not x.dtype.is_floating_point:
            raise TypeError(f"{name}: expected a floating dtype, got {x.dtype}")
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"{name}: expected shape (..., {self.in_features}), got {tuple(x.shape)}")
        if x.device != self.weight.device:
            raise ValueError(f"{name}: is on {x.device} but the heads are on {self.weight.device}")

    def _targets(self, targets: Union[Tensor, Sequence[Tensor]], regression: List[bool],
                 logits: Tensor) -> Tuple[Tensor, Tensor]:
        """Checks the per-task targets and packs them as heads_loss takes them: (K_classification, B) int64
        class indices and (B, regression outputs) values in the losses' dtype."""
        K, B = self.num_tasks, logits.shape[0]
        if isinstance(targets, Tensor) and targets.dim() == 2 and not any(regression):
            targets = targets.unbind(0)
        if isinstance(targets, Tensor) or not isinstance(targets, (list, tuple)):
            raise TypeError(f"targets: expected a sequence of {K} tensors (one per task), got "
                            f"{type(targets).__name__}" + (f" of shape {tuple(targets.shape)}"
                                                           if isinstance(targets, Tensor) else ""))
        if len(targets) != K:
            raise ValueError(f"targets: expected {K} tensors (one per task), got {len(targets)}")
        classes, values = [], []
        for k, (t, size, is_regression) in enumerate(zip(targets, self.out_features, regression)):
            if not isinstance(t, Tensor):
                raise TypeError(f"targets[{k}]: expected a Tensor, got {type(t).__name__}")
            if t.device != logits.device:
                raise ValueError(f"targets[{k}]: is on {t.device} but the logits are on {logits.device}")
            if is_regression:
                if not t.dtype.is_floating_point:
                    raise TypeError(f"targets[{k}]: expected floating values for an 'mse' task, got {t.dtype}")
                if tuple(t.shape) not in ((B, size),) + (((B,),) if size == 1 else ()):
                    raise ValueError(f"targets[{k}]: expected shape ({B}, {size}) for head {k}, got {tuple(t.shape)}")
                values.append(t.reshape(B, size))
            else:
                if t.dtype != torch.int64:
                    raise TypeError(f"targets[{k}]: expected int64 class indices, got {t.dtype}")
                if tuple(t.shape) != (B,):
                    raise ValueError(f"targets[{k}]: expected shape ({B},) (one class per sample), got "
                                     f"{tuple(t.shape)}")
                classes.append(t)
        class_targets = torch.stack(classes) if classes else logits.new_empty((0, B), dtype=torch.int64)
        acc = reference.heads_accumulation_dtype(logits.dtype)
        value_targets = torch.cat(values, dim=1).to(acc) if values else logits.new_empty((B, 0), dtype=acc)
        return class_targets, value_targets


def _same_view(a: Tensor, b: Tensor) -> bool:
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()
