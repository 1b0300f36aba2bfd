"""Data sets of training runs: built-in digits split, fake data, CIFAR-10 and image folders, bad folders."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from nmsparse.errors import InputError
from nmsparse.recipes.train import TrainConfig, build_data
from nmsparse.recipes.train.data import ImageFileDataset, collate_images


def test_digits_split_is_stratified_disjoint_and_fixed() -> None:
    data = build_data(TrainConfig(test_fraction=0.4))
    assert (data.name, data.num_classes, data.in_channels, data.image_size) == ("digits", 10, 1, 8)
    assert len(data.train) + len(data.test) == 1797
    assert len(data.test) == pytest.approx(0.4 * 1797, abs=10)
    train_labels = torch.bincount(data.train.labels, minlength=10).float()
    test_labels = torch.bincount(data.test.labels, minlength=10).float()
    assert torch.allclose(test_labels / (train_labels + test_labels), torch.full((10,), 0.4), atol=0.02)
    # No test image is also a training image (digits has a handful of exact duplicates; allow those only).
    train_rows = {tuple(x.flatten().tolist()) for x in data.train.images}
    overlap = sum(tuple(x.flatten().tolist()) in train_rows for x in data.test.images)
    assert overlap <= 5
    again = build_data(TrainConfig(test_fraction=0.4, seed=7))  # training seed does not move the split
    assert torch.equal(again.test.images, data.test.images)
    other = build_data(TrainConfig(test_fraction=0.4, split_seed=1))
    assert not torch.equal(other.test.images, data.test.images)


def test_digits_augmentation_shifts_by_one_pixel_at_most() -> None:
    data = build_data(TrainConfig())
    image, label = data.train[0]
    assert image.shape == (1, 8, 8) and isinstance(label, int)
    plain = data.train.images[0]
    seen = set()
    for _ in range(40):
        shifted, _ = data.train[0]
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                moved = torch.full_like(plain, data.train.fill)
                src = plain[:, max(0, -dy):8 - max(0, dy), max(0, -dx):8 - max(0, dx)]
                moved[:, max(0, dy):8 - max(0, -dy), max(0, dx):8 - max(0, -dx)] = src
                if torch.equal(moved, shifted):
                    seen.add((dy, dx))
    assert (0, 0) in seen and len(seen) >= 4  # several distinct shifts, all within one pixel
    test_image, _ = data.test[0]
    assert torch.equal(test_image, data.test.images[0])  # no augmentation on the test split


def test_fake_data_shapes_and_determinism() -> None:
    cfg = TrainConfig(data="fake", image_size=16, num_classes=4, fake_samples=32)
    data = build_data(cfg)
    assert (data.num_classes, data.in_channels, data.image_size, len(data.train), len(data.test)) == (4, 3, 16, 32, 8)
    images, labels = collate_images([data.test[i] for i in range(len(data.test))])
    assert images.shape == (8, 3, 16, 16) and labels.dtype == torch.int64
    assert torch.equal(build_data(cfg).test.images, data.test.images)


def _write_cifar(root: Path, per_batch: int = 6) -> None:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"labels": list(rng.integers(0, 10, per_batch))}
        with (root / name).open("wb") as handle:
            pickle.dump(batch, handle)


def test_cifar10_python_folder(tmp_path: Path) -> None:
    _write_cifar(tmp_path / "cifar-10-batches-py")
    data = build_data(TrainConfig(data=str(tmp_path)))
    assert (data.name, len(data.train), len(data.test), data.image_size, data.num_classes) == ("cifar10", 30, 6, 32, 10)
    image, _ = data.train[0]
    assert image.shape == (3, 32, 32)
    assert abs(float(data.train.images.mean())) < 1e-4  # normalised with the training statistics


def _write_images(folder: Path, count: int, color: tuple[int, int, int], size: tuple[int, int] = (20, 14)) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", size, color=color).save(folder / f"img{i}.png")


def test_image_folder_split(tmp_path: Path) -> None:
    _write_images(tmp_path / "cat", 5, (255, 0, 0))
    _write_images(tmp_path / "dog", 5, (0, 0, 255))
    (tmp_path / "notes.txt").write_text("ignored")
    data = build_data(TrainConfig(data=str(tmp_path), image_size=12, test_fraction=0.4))
    assert (data.name, data.num_classes, len(data.train), len(data.test)) == ("image-folder", 2, 6, 4)
    image, label = data.test[0]
    assert image.shape == (3, 12, 12) and label in (0, 1)
    train_image, _ = data.train[0]
    assert train_image.shape == (3, 12, 12)
    # a red cat image: red channel above the mean after normalisation, blue below
    reds = [data.test[i][0] for i in range(len(data.test)) if data.test[i][1] == 0]
    assert all(float(img[0].mean()) > 0 > float(img[2].mean()) for img in reds)


def test_imagenet_layout(tmp_path: Path) -> None:
    for split, count in (("train", 3), ("val", 2)):
        _write_images(tmp_path / split / "n01", count, (10, 200, 10))
        _write_images(tmp_path / split / "n02", count, (200, 10, 10))
    data = build_data(TrainConfig(data=str(tmp_path), image_size=8))
    assert (data.name, len(data.train), len(data.test), data.num_classes) == ("imagenet-folder", 6, 4, 2)


def test_missing_and_empty_folders_explain_themselves(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        build_data(TrainConfig(data=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="at least two class sub-folders"):
        build_data(TrainConfig(data=str(tmp_path / "empty")))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        build_data(TrainConfig(data=str(tmp_path / "file.txt")))


def test_unreadable_image_is_named(tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    dataset = ImageFileDataset([(broken, 0)], image_size=8, train=False)
    with pytest.raises(InputError, match="broken.png"):
        dataset[0]
