"""Data sets of training runs: built-in digits split, fake data, CIFAR-10 and image folders, bad folders."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from nmsparse.errors import InputError
from nmsparse.recipes.classify import TrainConfig, build_data
from nmsparse.recipes.classify.data import ImageFileDataset, collate_images


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
                src = plain[:, max(0, -dy) : 8 - max(0, dy), max(0, -dx) : 8 - max(0, dx)]
                moved[:, max(0, dy) : 8 - max(0, -dy), max(0, dx) : 8 - max(0, -dx)] = src
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
        batch = {
            b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, per_batch)],
        }
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


# ------------------------------------------------------------------------- CIFAR batches cannot run code


class _Exploit:
    """A pickle payload that runs a shell command when unpickled with pickle.load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_crafted_cifar_batch_runs_no_code(tmp_path: Path, protocol: int) -> None:
    """Fault 4: a batch whose pickle calls os.system is refused before anything runs."""
    root = tmp_path / "cifar"
    _write_cifar(root)
    marker = tmp_path / "pwned"
    batch = {b"data": np.zeros((6, 3072), dtype=np.uint8), b"labels": [0] * 6, b"x": _Exploit(marker)}
    (root / "data_batch_3").write_bytes(pickle.dumps(batch, protocol=protocol))
    assert pickle.loads(pickle.dumps(_Exploit(tmp_path / "control"))) == 0 and (tmp_path / "control").exists()
    with pytest.raises(InputError, match=r"data_batch_3: not a CIFAR-10 python batch \(refusing to load posix.system"):
        build_data(TrainConfig(data=str(root)))
    assert not marker.exists()


def test_cifar_batches_in_every_numpy_pickle_form_are_read(tmp_path: Path) -> None:
    root = tmp_path / "cifar"
    _write_cifar(root)
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, (6, 3072), dtype=np.uint8)
    # numpy int64 labels (numpy scalars in the pickle), protocol 2 (bytes via _codecs), protocol 5 (buffers)
    for name, protocol in (("data_batch_1", 2), ("data_batch_2", 5)):
        batch = {b"data": data, b"labels": list(np.arange(6) % 10), b"batch_label": b"training batch"}
        (root / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    bundle = build_data(TrainConfig(data=str(root)))
    assert len(bundle.train) == 30 and bundle.train.labels[:6].tolist() == list(range(6))


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (pickle.dumps([1, 2, 3]), "is a dict, this file holds a list"),
        (pickle.dumps({b"labels": [0] * 6}), "'data' must be a uint8 array [N, 3072]"),
        (pickle.dumps({b"data": np.zeros((6, 100), dtype=np.uint8), b"labels": [0] * 6}), "got uint8 [6, 100]"),
        (pickle.dumps({b"data": np.zeros((6, 3072), dtype=np.uint8), b"labels": [0] * 5}), "'labels' must be 6"),
        (pickle.dumps({b"data": np.zeros((6, 3072), dtype=np.uint8), b"labels": [11] * 6}), "integers in 0..9"),
        (pickle.dumps({b"data": np.zeros((6, 3072), dtype=object), b"labels": [0] * 6}), "object array"),
        (b"\x80\x04garbage", "not a CIFAR-10 python batch"),
        (b"", "not a CIFAR-10 python batch"),
    ],
)
def test_malformed_cifar_batch_is_one_line_exit_2(
    tmp_path: Path, content: bytes, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from nmsparse.cli.main import main

    root = tmp_path / "cifar"
    _write_cifar(root)
    (root / "test_batch").write_bytes(content)
    with pytest.raises(InputError, match=re.escape(needle)):
        build_data(TrainConfig(data=str(root)))
    code = main(["train", "--data", str(root), "--epochs", "1", "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "test_batch" in err[0], err
    assert not (tmp_path / "o").exists()
