"""The classic MTL network: a shared conv trunk on 3x28x28 images and K linear heads.

Used by the demo, the benchmarks and the end-to-end tests; also a template for wiring mtl_fast into a model.
"""
from __future__ import annotations

from typing import List, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ConvTrunk", "SharedTrunk", "MultiTaskNet", "LargeTrunk"]


class ConvTrunk(nn.Sequential):
    """Conv 3->c1, ReLU, MaxPool, Conv c1->c2, ReLU, MaxPool, Linear c2*7*7->out_features, ReLU on 3x28x28."""

    def __init__(self, c1: int, c2: int, out_features: int) -> None:
        super().__init__(
            nn.Conv2d(3, c1, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(c2 * 7 * 7, out_features), nn.ReLU())
        self.out_features = out_features


class SharedTrunk(ConvTrunk):
    """The classic MTL network's trunk: Conv 3->32, ReLU, MaxPool, Conv 32->64, ReLU, MaxPool, Linear 3136->128,
    ReLU (3x28x28 in, 128 out)."""

    def __init__(self) -> None:
        super().__init__(32, 64, 128)


class LargeTrunk(ConvTrunk):
    """A wider trunk of the same shape (3x28x28 in, 512 out), for benchmarks that need more shared parameters."""

    def __init__(self) -> None:
        super().__init__(64, 128, 512)


class MultiTaskNet(nn.Module):
    """A shared trunk with one linear classification head per task.

    Args:
        classes_per_task: the number of classes of each task's head (K = its length).
        trunk: the shared feature extractor (default: the classic network's ``SharedTrunk``).
    """

    def __init__(self, classes_per_task: Sequence[int], trunk: nn.Module = None) -> None:
        super().__init__()
        self.trunk = trunk if trunk is not None else SharedTrunk()
        self.task_heads = nn.ModuleList(nn.Linear(self.trunk.out_features, c) for c in classes_per_task)

    @property
    def num_tasks(self) -> int:
        return len(self.task_heads)

    def forward(self, x: Tensor) -> List[Tensor]:
        """The K tasks' logits."""
        features = self.trunk(x)
        return [head(features) for head in self.task_heads]

    def losses(self, logits: Sequence[Tensor], targets: Sequence[Tensor]) -> List[Tensor]:
        """Per-task cross-entropy losses (the classic network trains on their sum)."""
        return [F.cross_entropy(out, y) for out, y in zip(logits, targets)]
