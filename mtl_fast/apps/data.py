"""Multi-task image data for the demo: an embedded synthetic dataset, two-digit images made from real
handwriting, and loaders for a user's own data.

The embedded dataset ("shapes") needs no download: 3x28x28 images of one shape each, rendered procedurally from
a seed with vectorised torch ops (10,000 images in about two seconds on two CPU cores), labelled for six tasks:

=============  =======  ====================================================================  ======
task           classes  label                                                                 chance
=============  =======  ====================================================================  ======
shape          4        circle, square, triangle, cross                                       1/4
colour         6        red, green, blue, yellow, magenta, cyan (jittered)                    1/6
size           3        small, medium, large (half-extent 3.4-4.2, 5.0-5.8, 6.6-7.4 px)       1/3
quadrant       4        which quarter of the image holds the shape's centre                   1/4
orientation    4        where a small hole in the shape points: up, right, down, left         1/4
distance       2        near or far: a near shape is drawn 1.18x larger, a far one 0.85x         1/2
=============  =======  ====================================================================  ======

The tasks differ in difficulty (colour and quadrant are read off a few pixels; orientation hangs on a hole of one
or two pixels in the small shapes). Distance is the conflicting task: the image shows only the product of size
and distance (how large the shape looks), so a small near shape looks like a medium far one, and a medium near
one like a large far one. On such an image the two tasks explain the same cue away from each other: the size
task wants it read as larger exactly when the distance task wants it read as farther, so their gradients point
against each other, and no trunk can serve both fully. Backgrounds are random grey levels with pixel noise. Every
label is uniformly distributed and independent of the others, so chance is 1 / classes.

"multidigits" (:func:`make_multidigits`) is a MultiMNIST-style set made from the 1,797 real 8x8 handwritten digits
that scikit-learn ships (no download): each 3x28x28 image holds two digits, scaled to 16x16 and placed at random
offsets, the right one overlapping the left one by up to 9 pixels (pixelwise maximum where they overlap). Two
tasks: the left digit and the right digit (10 classes each). The digits are split before the images are made,
so no handwritten digit of the validation images appears in a training image.

User data comes in as tensors (:func:`from_tensors`) or an ``.npz`` file (:func:`load_npz`, keys documented
there) and is checked for shape and label consistency with errors that say what is wrong.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

__all__ = ["MultiTaskData", "IMAGE_SHAPE", "SHAPES_TASKS", "MULTIDIGITS_TASKS", "make_shapes", "make_multidigits",
           "from_tensors", "load_npz", "save_npz"]

IMAGE_SHAPE = (3, 28, 28)
"""What :class:`mtl_fast.apps.models.MultiTaskNet`'s trunk takes, so what every image here is made into."""

SHAPES_TASKS: Dict[str, int] = {"shape": 4, "colour": 6, "size": 3, "quadrant": 4, "orientation": 4, "distance": 2}
"""The embedded dataset's tasks and their numbers of classes, in label-column order."""

_PALETTE = torch.tensor([[0.90, 0.15, 0.15], [0.15, 0.80, 0.20], [0.20, 0.35, 0.95],
                         [0.92, 0.85, 0.15], [0.85, 0.20, 0.85], [0.15, 0.85, 0.88]])
_SIZE_RANGES = torch.tensor([[3.4, 4.2], [5.0, 5.8], [6.6, 7.4]])  # half-extent in pixels; gaps keep buckets apart
# Far and near scale the half-extent by 1/sqrt(1.4) and sqrt(1.4): about the ratio between neighbouring sizes, so
# that a near shape of one size looks like a far one of the next.
_DISTANCE_SCALES = torch.tensor([1.4 ** 0.5, 1.4 ** -0.5])
_ORIENTATION_JITTER = math.radians(30)  # within +-45 degrees of the bucket's centre, so buckets stay separable
_RENDER_CHUNK = 4096  # images rendered at once: bounds the rendering's memory (about 40 KB per image)


@dataclass
class MultiTaskData:
    """Images with one integer label per task.

    Attributes:
        images: (N, 3, 28, 28), uint8 (0..255) or float32.
        labels: (N, K) int64, ``labels[:, k]`` in ``0 .. num_classes[k] - 1``.
        task_names: K names.
        num_classes: K class counts (at least 2 each).
    """

    images: Tensor
    labels: Tensor
    task_names: List[str]
    num_classes: List[int]

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    def subset(self, index: Tensor) -> "MultiTaskData":
        """The examples at ``index`` (same tasks and class counts)."""
        return MultiTaskData(self.images[index], self.labels[index], list(self.task_names), list(self.num_classes))

    def split(self, val_fraction: float, seed: int = 0) -> Tuple["MultiTaskData", "MultiTaskData"]:
        """(train, validation): a seeded random ``val_fraction`` of the examples is held out."""
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction: expected a number strictly between 0 and 1, got {val_fraction}")
        n_val = int(round(len(self) * val_fraction))
        if n_val < 1 or n_val >= len(self):
            raise ValueError(f"val_fraction: {val_fraction} of {len(self)} examples leaves an empty split")
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        return self.subset(order[n_val:]), self.subset(order[:n_val])

    def majority_rate(self, reference: Optional["MultiTaskData"] = None) -> List[float]:
        """Per task, the accuracy of always answering ``reference``'s most frequent class (default: this data's
        own): chance level, which is 1 / classes for balanced labels."""
        reference = reference if reference is not None else self
        rates = []
        for k, classes in enumerate(self.num_classes):
            majority = torch.bincount(reference.labels[:, k], minlength=classes).argmax()
            rates.append((self.labels[:, k] == majority).double().mean().item())
        return rates


def _shape_distance(kind: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """Signed distance (in units of the half-extent; negative inside) of local coordinates (u, v) to each
    image's shape outline. kind: (N, 1, 1); u, v: (N, H, W)."""
    circle = torch.sqrt(u * u + v * v) - 1.0
    square = torch.maximum(u.abs(), v.abs()) - 0.8  # 0.8: roughly the circle's area
    # Equilateral triangle inscribed in the unit circle, a vertex up: inside all three edges' half-planes.
    edges = [(math.cos(a), math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    triangle = torch.stack([u * cx + v * cy for cx, cy in edges]).amax(0) - 0.5
    bar = 0.32
    cross = torch.minimum(torch.maximum(u.abs() - bar, v.abs() - 1.0), torch.maximum(v.abs() - bar, u.abs() - 1.0))
    distances = torch.stack([circle, square, triangle, cross])  # (4, N, H, W), kinds in SHAPES_TASKS order
    return distances.gather(0, kind.expand_as(u).unsqueeze(0)).squeeze(0)


def _render(attributes: Dict[str, Tensor], generator: torch.Generator) -> Tensor:
    """Float images (N, 3, 28, 28) in [0, 1] for the drawn attributes (each (N,))."""
    n = attributes["kind"].shape[0]
    _, height, width = IMAGE_SHAPE
    ys = torch.arange(height, dtype=torch.float32).view(1, height, 1) + 0.5
    xs = torch.arange(width, dtype=torch.float32).view(1, 1, width) + 0.5
    col = lambda t: t.view(n, 1, 1)  # noqa: E731 - broadcast a per-image value over the pixel grid
    dx, dy = xs - col(attributes["cx"]), ys - col(attributes["cy"])
    cos, sin = col(torch.cos(attributes["angle"])), col(torch.sin(attributes["angle"]))
    half = col(attributes["half_extent"])
    # Local frame rotated with the shape; image y grows downwards, so local "up" (the hole's side) is -v.
    u, v = (cos * dx + sin * dy) / half, (-sin * dx + cos * dy) / half
    inside = -_shape_distance(col(attributes["kind"]), u, v) * half  # pixels; positive inside
    hole = torch.sqrt(u * u + (v + 0.5) ** 2) * half - 0.3 * half  # the orientation mark, half-way up
    coverage = (0.5 + torch.minimum(inside, hole)).clamp(0.0, 1.0)  # one pixel of anti-aliasing
    background = torch.rand(n, 1, 1, 1, generator=generator) * 0.35
    colour = (_PALETTE[attributes["colour"]] + 0.08 * torch.randn(n, 3, generator=generator)).clamp(0.0, 1.0)
    images = background + coverage.unsqueeze(1) * (colour.view(n, 3, 1, 1) - background)
    images += 0.06 * torch.randn(n, *IMAGE_SHAPE, generator=generator)
    return images.clamp(0.0, 1.0)


def make_shapes(n: int, seed: int = 0) -> MultiTaskData:
    """The embedded dataset: ``n`` images and their six tasks' labels (see the module docstring).

    Deterministic: the same ``n`` and ``seed`` give the same bits (the rendering is elementwise float32
    arithmetic, the random draws come from one seeded CPU generator in a fixed order).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive int, got {n!r}")
    generator = torch.Generator().manual_seed(seed)
    labels = torch.stack([torch.randint(c, (n,), generator=generator) for c in SHAPES_TASKS.values()], dim=1)
    shape, colour, size, quadrant, orientation, distance = labels.unbind(1)
    size_range = _SIZE_RANGES[size]
    centre_offset = lambda: 3.0 + 4.0 * torch.rand(n, generator=generator)  # noqa: E731 - 3..7 px off the middle
    right, below = (quadrant % 2).float() * 2 - 1, (quadrant // 2).float() * 2 - 1
    attributes = {
        "kind": shape, "colour": colour,
        "half_extent": (size_range[:, 0] + (size_range[:, 1] - size_range[:, 0]) * torch.rand(n, generator=generator))
        * _DISTANCE_SCALES[distance],
        "cx": IMAGE_SHAPE[2] / 2 + right * centre_offset(), "cy": IMAGE_SHAPE[1] / 2 + below * centre_offset(),
        # Orientation k turns local "up" clockwise by k quarter turns (up, right, down, left on screen).
        "angle": orientation.float() * (math.pi / 2)
        + (2 * torch.rand(n, generator=generator) - 1) * _ORIENTATION_JITTER,
    }
    images = torch.empty(n, *IMAGE_SHAPE, dtype=torch.uint8)
    for start in range(0, n, _RENDER_CHUNK):
        part = {name: value[start: start + _RENDER_CHUNK] for name, value in attributes.items()}
        images[start: start + _RENDER_CHUNK] = (_render(part, generator) * 255).round().to(torch.uint8)
    return MultiTaskData(images, labels, list(SHAPES_TASKS), list(SHAPES_TASKS.values()))


MULTIDIGITS_TASKS: Dict[str, int] = {"left": 10, "right": 10}
"""The two-digit dataset's tasks and their numbers of classes, in label-column order."""

_DIGIT_SIZE = 16  # each 8x8 digit is upscaled to this many pixels a side
_LEFT_X, _RIGHT_X = (0, 6), (7, 12)  # ranges of the digits' left edges: the overlap is 0 to 9 pixels


def _handwritten_digits() -> Tuple[Tensor, Tensor]:
    """scikit-learn's 1,797 8x8 digits as (N, 16, 16) float images in [0, 1] and (N,) labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError("the multidigits dataset needs scikit-learn, which is not installed: "
                          "pip install scikit-learn") from error
    digits = load_digits()
    images = torch.from_numpy(digits.images).float().unsqueeze(1) / 16.0
    images = torch.nn.functional.interpolate(images, size=(_DIGIT_SIZE, _DIGIT_SIZE), mode="bilinear",
                                             align_corners=False).squeeze(1)
    return images.clamp(0.0, 1.0), torch.from_numpy(digits.target).long()


def _compose(images: Tensor, labels: Tensor, n: int, generator: torch.Generator) -> MultiTaskData:
    """``n`` two-digit images drawn from the given digits."""
    _, height, width = IMAGE_SHAPE
    pick = torch.randint(len(images), (n, 2), generator=generator)
    flat = images.reshape(len(images), -1)
    canvas = torch.zeros(n, height, width)
    for side, (low, high) in enumerate((_LEFT_X, _RIGHT_X)):
        xs = torch.randint(low, high + 1, (n, 1, 1), generator=generator)
        ys = torch.randint(0, height - _DIGIT_SIZE + 1, (n, 1, 1), generator=generator)
        # Each canvas pixel reads the digit pixel under it, or nothing outside the digit's square.
        rows = torch.arange(height).view(1, height, 1) - ys
        cols = torch.arange(width).view(1, 1, width) - xs
        inside = (rows >= 0) & (rows < _DIGIT_SIZE) & (cols >= 0) & (cols < _DIGIT_SIZE)
        index = (rows.clamp(0, _DIGIT_SIZE - 1) * _DIGIT_SIZE + cols.clamp(0, _DIGIT_SIZE - 1)).reshape(n, -1)
        placed = flat[pick[:, side]].gather(1, index).view(n, height, width) * inside
        canvas = torch.maximum(canvas, placed)
    pixels = (canvas.unsqueeze(1).expand(-1, IMAGE_SHAPE[0], -1, -1) * 255).round().to(torch.uint8)
    return MultiTaskData(pixels.contiguous(), labels[pick], list(MULTIDIGITS_TASKS),
                         list(MULTIDIGITS_TASKS.values()))


def make_multidigits(train_size: int, val_size: int, seed: int = 0,
                     val_fraction: float = 0.25) -> Tuple[MultiTaskData, MultiTaskData]:
    """(train, validation) two-digit images from scikit-learn's handwritten digits (see the module docstring).

    A seeded ``val_fraction`` of the 1,797 digits is held out first, and the validation images are made from
    those alone. Deterministic for given arguments. Raises ImportError (saying how to install it) without
    scikit-learn.
    """
    for name, value in (("train_size", train_size), ("val_size", val_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    images, labels = _handwritten_digits()
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=generator)
    held_out = int(round(len(images) * val_fraction))
    train_digits, val_digits = order[held_out:], order[:held_out]
    return (_compose(images[train_digits], labels[train_digits], train_size, generator),
            _compose(images[val_digits], labels[val_digits], val_size, generator))


def _as_tensor(value, name: str) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach().cpu()
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":  # bool, ints, unsigned, floats: what can become a tensor
        raise TypeError(f"{name}: expected a tensor or an array of numbers, got {type(value).__name__} of "
                        f"dtype {array.dtype}")
    return torch.from_numpy(array)


def _images_to_nchw(images: Tensor, name: str) -> Tensor:
    """(N, 3, 28, 28) from NCHW or NHWC with 1 or 3 channels, or (N, 28, 28) greyscale; uint8 or float."""
    channels, height, width = IMAGE_SHAPE
    if images.dtype == torch.bool or not (images.dtype == torch.uint8 or images.dtype.is_floating_point):
        raise TypeError(f"{name}: expected uint8 (0..255) or floating pixels, got {images.dtype}")
    shape = tuple(images.shape)
    if images.dim() == 3 and shape[1:] == (height, width):
        images = images.unsqueeze(1)
    elif images.dim() == 4 and shape[1:3] == (height, width) and shape[3] in (1, channels):
        images = images.permute(0, 3, 1, 2)
    elif not (images.dim() == 4 and shape[2:] == (height, width) and shape[1] in (1, channels)):
        raise ValueError(f"{name}: expected (N, 3, 28, 28) images (or N x 28 x 28 x 3, 1-channel or greyscale "
                         f"N x 28 x 28; the classic MTL network takes 3x28x28: resize first, e.g. with "
                         f"torch.nn.functional.interpolate), got shape {shape}")
    if images.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one image, got none")
    if images.dtype.is_floating_point:
        if not torch.isfinite(images).all():
            raise ValueError(f"{name}: contains NaN or infinite pixels")
        images = images.float()
    return images.expand(-1, channels, -1, -1).contiguous()


def _check_labels(labels, n: int, name: str) -> Tensor:
    """(N, K) int64 labels from (N, K) or (N,) non-negative integers, for ``n`` images."""
    labels = _as_tensor(labels, name)
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"{name}: expected integer class indices, got {labels.dtype}")
    if labels.dim() == 1:
        labels = labels.unsqueeze(1)
    if labels.dim() != 2 or labels.shape[1] == 0:
        raise ValueError(f"{name}: expected shape (N, K) with K >= 1 tasks (or (N,) for one), got "
                         f"{tuple(labels.shape)}")
    if labels.shape[0] != n:
        raise ValueError(f"{name}: {labels.shape[0]} rows but there are {n} images")
    labels = labels.long()
    if (labels < 0).any():
        task = int((labels < 0).any(0).nonzero()[0])
        raise ValueError(f"{name}: class indices must be >= 0; column {task} has {int(labels[:, task].min())}")
    return labels


def _task_info(labels: Tensor, task_names: Optional[Sequence[str]],
               num_classes: Optional[Sequence[int]]) -> Tuple[List[str], List[int]]:
    """Checked task names and class counts for (N, K) labels (every split's labels, concatenated)."""
    K = labels.shape[1]
    names = [f"task{k}" for k in range(K)] if task_names is None else [str(t) for t in task_names]
    if len(names) != K:
        raise ValueError(f"task_names: {len(names)} names for {K} label columns")
    if len(set(names)) != K:
        raise ValueError(f"task_names: names must be distinct, got {names}")
    largest = labels.amax(0).tolist()
    if num_classes is None:
        classes = [m + 1 for m in largest]
    else:
        classes = [int(c) for c in num_classes]
        if len(classes) != K:
            raise ValueError(f"num_classes: {len(classes)} counts for {K} label columns")
        for name, m, c in zip(names, largest, classes):
            if m >= c:
                raise ValueError(f"labels: task {name!r} has label {m} but num_classes says {c} classes")
    for name, c in zip(names, classes):
        if c < 2:
            raise ValueError(f"labels: task {name!r} has {c} class; a classification task needs at least 2")
    return names, classes


def from_tensors(images, labels, task_names: Optional[Sequence[str]] = None,
                 num_classes: Optional[Sequence[int]] = None) -> MultiTaskData:
    """Checks and packs a user's data: images with one integer label per task.

    Args:
        images: (N, 3, 28, 28) or (N, 28, 28, 3), also 1-channel or (N, 28, 28) greyscale (repeated to 3
            channels); uint8 0..255 or floating point. A tensor or a numpy array.
        labels: (N, K) non-negative integers (K tasks), or (N,) for one task.
        task_names: K names (default task0, task1, ...).
        num_classes: K class counts (default: each task's largest label + 1); each at least 2.
    Raises:
        TypeError / ValueError naming what is wrong: shapes, dtypes, label counts, out-of-range labels.
    """
    images = _images_to_nchw(_as_tensor(images, "images"), "images")
    labels = _check_labels(labels, images.shape[0], "labels")
    names, classes = _task_info(labels, task_names, num_classes)
    return MultiTaskData(images, labels, names, classes)


def load_npz(path: Union[str, Path]) -> Tuple[MultiTaskData, Optional[MultiTaskData]]:
    """Loads a user's multi-task data from an ``.npz`` file (as ``numpy.savez`` or :func:`save_npz` write it).

    Keys:
        ``images``: the images, in any layout :func:`from_tensors` takes, uint8 0..255 or float.
        ``labels``: (N, K) non-negative integer labels, one column per task, or (N,) for one task.
        ``task_names`` (optional): K strings.
        ``num_classes`` (optional): K ints (default: each task's largest label + 1, over both splits).
        ``val_images`` and ``val_labels`` (optional, together): a validation split with the same K tasks.
    Returns:
        (data, validation split or None).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise ValueError(f"{path}: not a readable .npz file ({error})") from None
    with archive:
        keys = set(archive.files)
        missing = {"images", "labels"} - keys
        if missing:
            raise ValueError(f"{path}: missing key(s) {sorted(missing)}; expected 'images' and 'labels' (and "
                             f"optionally 'task_names', 'num_classes', 'val_images' + 'val_labels'), found "
                             f"{sorted(keys)}")
        if ("val_images" in keys) != ("val_labels" in keys):
            raise ValueError(f"{path}: 'val_images' and 'val_labels' go together; found only one of them")
        splits = [("images", "labels")] + ([("val_images", "val_labels")] if "val_images" in keys else [])
        checked = []
        for image_key, label_key in splits:
            images = _images_to_nchw(_as_tensor(archive[image_key], image_key), image_key)
            checked.append((images, _check_labels(archive[label_key], images.shape[0], label_key)))
        task_names = archive["task_names"].tolist() if "task_names" in keys else None
        num_classes = archive["num_classes"].tolist() if "num_classes" in keys else None
    if len(checked) == 2 and checked[1][1].shape[1] != checked[0][1].shape[1]:
        raise ValueError(f"{path}: 'val_labels' has {checked[1][1].shape[1]} tasks but 'labels' has "
                         f"{checked[0][1].shape[1]}")
    # Class counts cover both splits, so a class seen only in validation still gets a logit.
    names, classes = _task_info(torch.cat([labels for _, labels in checked]), task_names, num_classes)
    train, *val = [MultiTaskData(images, labels, names, list(classes)) for images, labels in checked]
    return train, (val[0] if val else None)


def save_npz(path: Union[str, Path], train: MultiTaskData, val: Optional[MultiTaskData] = None) -> None:
    """Writes data in the format :func:`load_npz` reads (e.g. to start from the embedded dataset's layout)."""
    arrays = {"images": train.images.numpy(), "labels": train.labels.numpy(),
              "task_names": np.array(train.task_names), "num_classes": np.array(train.num_classes)}
    if val is not None:
        arrays.update(val_images=val.images.numpy(), val_labels=val.labels.numpy())
    np.savez_compressed(path, **arrays)
