"""The embedded dataset and the loaders for a user's own data (mtl_fast.apps.data)."""
import sys

import numpy as np
import pytest
import torch

from mtl_fast.apps.data import (IMAGE_SHAPE, MULTIDIGITS_TASKS, SHAPES_TASKS, MultiTaskData, from_tensors, load_npz,
                                make_multidigits, make_shapes, save_npz)


@pytest.fixture(scope="module")
def shapes() -> MultiTaskData:
    return make_shapes(2000, seed=1)


def test_shapes_layout(shapes):
    assert shapes.images.shape == (2000, *IMAGE_SHAPE) and shapes.images.dtype == torch.uint8
    assert shapes.labels.shape == (2000, len(SHAPES_TASKS)) and shapes.labels.dtype == torch.int64
    assert shapes.task_names == list(SHAPES_TASKS) and shapes.num_classes == list(SHAPES_TASKS.values())


def test_shapes_every_class_of_every_task_present(shapes):
    for k, classes in enumerate(shapes.num_classes):
        counts = torch.bincount(shapes.labels[:, k], minlength=classes)
        assert counts.numel() == classes, f"task {shapes.task_names[k]} has labels beyond {classes - 1}"
        assert (counts > 0).all(), f"task {shapes.task_names[k]} misses a class: {counts.tolist()}"


def test_shapes_distance_scales_the_drawn_size(monkeypatch):
    """A near shape is drawn about as large as a far one of the next size: the image shows only the product."""
    from mtl_fast.apps import data
    drawn = []
    render = data._render
    monkeypatch.setattr(data, "_render", lambda attributes, g: drawn.append(attributes) or render(attributes, g))
    shapes = make_shapes(600, seed=2)
    extent = torch.cat([a["half_extent"] for a in drawn])
    size, distance = shapes.labels[:, 2], shapes.labels[:, 5]
    mean = {(s, d): float(extent[(size == s) & (distance == d)].mean()) for s in range(3) for d in range(2)}
    for s in range(3):
        assert mean[(s, 0)] / mean[(s, 1)] == pytest.approx(1.4, rel=0.02)  # near / far
    for s in range(2):  # near of one size against far of the next
        assert mean[(s, 0)] == pytest.approx(mean[(s + 1, 1)], rel=0.12)


def test_shapes_chance_is_about_one_over_classes(shapes):
    for rate, classes in zip(shapes.majority_rate(), shapes.num_classes):
        assert 1 / classes <= rate < 1 / classes + 0.06


def test_shapes_images_vary(shapes):
    assert shapes.images.float().std() > 20  # not blank: shapes, backgrounds and noise
    assert not torch.equal(shapes.images[0], shapes.images[1])


def test_shapes_deterministic_from_seed():
    a, b, c = make_shapes(300, seed=7), make_shapes(300, seed=7), make_shapes(300, seed=8)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_shapes_rejects_bad_size(n):
    with pytest.raises(ValueError, match="n: expected a positive int"):
        make_shapes(n)


def test_split_is_a_seeded_partition(shapes):
    train, val = shapes.split(0.25, seed=3)
    assert (len(train), len(val)) == (1500, 500)
    again, _ = shapes.split(0.25, seed=3)
    assert torch.equal(train.images, again.images)
    rows = {tuple(r) for r in torch.cat([train.labels, val.labels]).tolist()}
    assert rows == {tuple(r) for r in shapes.labels.tolist()}
    with pytest.raises(ValueError, match="val_fraction"):
        shapes.split(1.0)


@pytest.mark.parametrize("layout", ["nchw", "nhwc", "grey", "grey_nchw", "float"])
def test_from_tensors_layouts(layout):
    n = 5
    rgb = torch.randint(0, 256, (n, 3, 28, 28), dtype=torch.uint8)
    images = {"nchw": rgb, "nhwc": rgb.permute(0, 2, 3, 1).numpy(), "grey": rgb[:, 0],
              "grey_nchw": rgb[:, :1], "float": rgb.float() / 255}[layout]
    data = from_tensors(images, np.arange(n * 2).reshape(n, 2) % 3, task_names=["a", "b"])
    assert data.images.shape == (n, 3, 28, 28)
    expected = rgb[:, :1].expand(-1, 3, -1, -1) if layout.startswith("grey") else rgb
    assert torch.equal(data.images.float() * (255 if layout == "float" else 1), expected.float())
    assert data.num_classes == [3, 3] and data.task_names == ["a", "b"]


def test_from_tensors_single_task_and_defaults():
    data = from_tensors(torch.zeros(4, 3, 28, 28), torch.tensor([0, 1, 2, 1]))
    assert data.labels.shape == (4, 1) and data.task_names == ["task0"] and data.num_classes == [3]
    assert from_tensors(torch.zeros(4, 3, 28, 28), torch.tensor([0, 1, 0, 1]), num_classes=[5]).num_classes == [5]


@pytest.mark.parametrize("images, labels, kwargs, error, match", [
    (torch.zeros(4, 3, 32, 32), torch.zeros(4, 1, dtype=torch.long), {}, ValueError, r"3, 28, 28.*\(4, 3, 32, 32\)"),
    (torch.zeros(4, 2, 28, 28), torch.zeros(4, 1, dtype=torch.long), {}, ValueError, "got shape"),
    (torch.zeros(0, 3, 28, 28), torch.zeros(0, 1, dtype=torch.long), {}, ValueError, "at least one image"),
    (torch.full((2, 3, 28, 28), float("nan")), torch.tensor([0, 1]), {}, ValueError, "NaN"),
    (torch.zeros(2, 3, 28, 28, dtype=torch.int32), torch.tensor([0, 1]), {}, TypeError, "uint8"),
    (torch.zeros(4, 3, 28, 28), torch.tensor([0, 1, 0]), {}, ValueError, "3 rows but there are 4 images"),
    (torch.zeros(2, 3, 28, 28), torch.tensor([0.0, 1.0]), {}, TypeError, "integer class indices"),
    (torch.zeros(2, 3, 28, 28), torch.tensor([[0, -1], [1, 1]]), {}, ValueError, "column 1 has -1"),
    (torch.zeros(2, 3, 28, 28), torch.zeros(2, 1, 1, dtype=torch.long), {}, ValueError, r"\(N, K\)"),
    (torch.zeros(2, 3, 28, 28), torch.tensor([0, 0]), {}, ValueError, "has 1 class"),
    (torch.zeros(2, 3, 28, 28), torch.tensor([0, 3]), {"num_classes": [3]}, ValueError, "label 3 but num_classes"),
    (torch.zeros(2, 3, 28, 28), torch.tensor([0, 1]), {"num_classes": [2, 2]}, ValueError, "2 counts for 1"),
    (torch.zeros(2, 3, 28, 28), torch.tensor([[0, 1], [1, 0]]), {"task_names": ["a"]}, ValueError, "1 names for 2"),
    (torch.zeros(2, 3, 28, 28), torch.tensor([[0, 1], [1, 0]]), {"task_names": ["a", "a"]}, ValueError, "distinct"),
    ("not images", torch.tensor([0, 1]), {}, TypeError, "array of numbers, got str"),
])
def test_from_tensors_rejects_bad_data(images, labels, kwargs, error, match):
    with pytest.raises(error, match=match):
        from_tensors(images, labels, **kwargs)


def test_npz_round_trip(tmp_path):
    data = make_shapes(60, seed=2)
    train, val = data.subset(torch.arange(40)), data.subset(torch.arange(40, 60))
    save_npz(tmp_path / "d.npz", train)
    loaded, no_val = load_npz(tmp_path / "d.npz")
    assert no_val is None
    assert torch.equal(loaded.images, train.images) and torch.equal(loaded.labels, train.labels)
    assert (loaded.task_names, loaded.num_classes) == (train.task_names, train.num_classes)
    save_npz(tmp_path / "dv.npz", train, val)
    loaded, loaded_val = load_npz(tmp_path / "dv.npz")
    assert torch.equal(loaded_val.images, val.images) and torch.equal(loaded_val.labels, val.labels)
    assert loaded_val.task_names == train.task_names


def test_npz_from_plain_numpy(tmp_path):
    """A user's file: NHWC float images, labels only; classes counted over both splits."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "user.npz", images=rng.random((10, 28, 28, 3), dtype=np.float32),
             labels=np.stack([np.arange(10) % 2, np.arange(10) % 3], 1),
             val_images=rng.random((4, 28, 28, 3), dtype=np.float32), val_labels=np.array([[0, 3]] * 4))
    train, val = load_npz(tmp_path / "user.npz")
    assert train.images.shape == (10, 3, 28, 28) and train.images.dtype == torch.float32
    assert train.task_names == ["task0", "task1"]
    assert train.num_classes == val.num_classes == [2, 4]


@pytest.mark.parametrize("arrays, match", [
    ({"images": np.zeros((2, 3, 28, 28))}, r"missing key\(s\) \['labels'\]"),
    ({"images": np.zeros((2, 3, 28, 28)), "labels": np.array([0, 1]), "val_images": np.zeros((1, 3, 28, 28))},
     "go together"),
    ({"images": np.zeros((2, 3, 28, 28)), "labels": np.array([0, 1]), "val_images": np.zeros((2, 3, 28, 28)),
      "val_labels": np.array([[0, 1], [1, 0]])}, "'val_labels' has 2 tasks but 'labels' has 1"),
    ({"images": np.zeros((2, 3, 28, 28)), "labels": np.array([0, 1, 1])}, "labels: 3 rows but there are 2"),
    ({"images": np.zeros((2, 3, 28, 28)), "labels": np.array([0, 1]), "val_images": np.zeros((2, 28, 28)),
      "val_labels": np.array([0])}, "val_labels: 1 rows but there are 2"),
])
def test_npz_rejects_bad_files(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        load_npz(tmp_path / "bad.npz")


def test_npz_missing_or_unreadable(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_npz(tmp_path / "absent.npz")
    (tmp_path / "text.npz").write_text("not numpy")
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_npz(tmp_path / "text.npz")


@pytest.fixture(scope="module")
def multidigits():
    pytest.importorskip("sklearn")
    return make_multidigits(300, 100, seed=3)


def test_multidigits_layout(multidigits):
    train, val = multidigits
    for split, n in ((train, 300), (val, 100)):
        assert split.images.shape == (n, *IMAGE_SHAPE) and split.images.dtype == torch.uint8
        assert split.labels.shape == (n, 2) and split.task_names == list(MULTIDIGITS_TASKS)
        assert split.num_classes == [10, 10] and 0 <= int(split.labels.min()) and int(split.labels.max()) <= 9
        assert torch.equal(split.images[:, 0], split.images[:, 2])  # grey, repeated over the 3 channels
    # Both digits leave ink on their own half: the left one's square starts in columns 0-6, the right one's in 7-12.
    ink = train.images[:, 0].amax(dim=1) > 64  # (N, 28): columns with a bright pixel
    assert ink[:, :14].any(dim=1).all() and ink[:, 14:].any(dim=1).all()
    assert len(set(map(tuple, train.labels.tolist()))) > 50  # many digit pairs


def test_multidigits_is_deterministic_and_holds_digits_out(multidigits):
    train, val = multidigits
    again_train, again_val = make_multidigits(300, 100, seed=3)
    assert torch.equal(train.images, again_train.images) and torch.equal(val.labels, again_val.labels)
    other, _ = make_multidigits(300, 100, seed=4)
    assert not torch.equal(train.images, other.images)


def test_multidigits_validation_images_use_only_held_out_digits(monkeypatch):
    pytest.importorskip("sklearn")
    from mtl_fast.apps import data
    sources = []
    compose = data._compose
    monkeypatch.setattr(data, "_compose", lambda images, labels, n, g: sources.append(images) or
                        compose(images, labels, n, g))
    make_multidigits(20, 20, seed=0)
    train_digits, val_digits = (s.reshape(len(s), -1) for s in sources)
    assert len(train_digits) + len(val_digits) == 1797 and len(val_digits) == round(1797 * 0.25)
    # No held-out digit is one of the training digits (a few of the 8x8 images are exact duplicates).
    shared = (torch.cdist(val_digits, train_digits) == 0).any(dim=1).sum()
    assert shared <= 5


def test_multidigits_without_sklearn_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        make_multidigits(10, 10)


def test_multidigits_bad_sizes():
    with pytest.raises(ValueError, match="train_size"):
        make_multidigits(0, 10)
