"""Data sets for training runs: built-in digits, synthetic images, CIFAR-10 and image folders (no download).

* ``"digits"``: scikit-learn's 1,797 handwritten digits (8x8, 10 classes), shipped inside scikit-learn's wheel,
  with a stratified held-out split.
* ``"fake"``: synthetic learnable images (class templates plus noise), for smoke tests of large models.
* a folder: CIFAR-10 in its python format (pickled batches read by an unpickler that builds only numpy arrays
  and plain data: a crafted batch cannot run code), an ImageNet-style layout
  (``train/`` and ``val/`` with one sub-folder per class) or one folder of class sub-folders. Images are decoded
  with Pillow (a matplotlib dependency), so torchvision is not needed.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from nmsparse.errors import InputError

from .config import TrainConfig

__all__ = ["DataBundle", "TensorImageDataset", "ImageFileDataset", "build_data", "collate_images", "IMAGE_EXTENSIONS"]

#: File suffixes read as images in image folders.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_BUILTIN = ("digits", "fake")


@dataclass(frozen=True)
class DataBundle:
    """A training and a held-out test set, with what a model needs to know about them.

    Attributes:
        name: ``"digits"``, ``"fake"``, ``"cifar10"``, ``"imagenet-folder"`` or ``"image-folder"``.
        train: training set; items are ``(image [C, H, W] float32, label int)``.
        test: held-out test set.
        num_classes: number of classes.
        in_channels: image channels.
        image_size: image side in pixels.
        description: one line for summaries (sizes and source).
    """

    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    in_channels: int
    image_size: int
    description: str


class TensorImageDataset(Dataset):
    """In-memory images ``[N, C, H, W]`` (already normalised) with labels, and optional augmentation.

    Augmentation draws from torch's global generator, so a run that restores the RNG state (resume) sees the
    same augmented images.

    Args:
        images: ``[N, C, H, W]`` float32 tensor.
        labels: ``[N]`` int64 tensor.
        pad: random translation by up to ``pad`` pixels (zero-padding then cropping back); 0 disables it.
        flip: random horizontal flips.
        fill: value of the padded border (the normalised background).
    """

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, *, pad: int = 0, flip: bool = False, fill: float = 0.0
    ) -> None:
        if images.dim() != 4 or labels.dim() != 1 or images.shape[0] != labels.shape[0]:
            raise InputError(
                f"TensorImageDataset: expected images [N, C, H, W] and labels [N], got {tuple(images.shape)} and "
                f"{tuple(labels.shape)}"
            )
        self.images = images.float().contiguous()
        self.labels = labels.long().contiguous()
        self.pad = int(pad)
        self.flip = bool(flip)
        self.fill = float(fill)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.pad:
            size_h, size_w = image.shape[-2:]
            padded = F.pad(image, (self.pad,) * 4, value=self.fill)
            top, left = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
            image = padded[:, top : top + size_h, left : left + size_w]
        if self.flip and bool(torch.rand(()) < 0.5):
            image = image.flip(-1)
        return image, int(self.labels[index])

    @property
    def targets(self) -> list[int]:
        return self.labels.tolist()


class ImageFileDataset(Dataset):
    """Images decoded from files with Pillow, resized and cropped to ``image_size``, normalised.

    Training images get a random resized crop (scale 0.08-1, aspect 3/4-4/3) and a random flip; evaluation
    images are resized to ``image_size * 8/7`` on the short side and centre-cropped (the ImageNet convention).

    Args:
        samples: ``(path, label)`` pairs.
        image_size: output side in pixels.
        train: use the training transform.
        mean, std: per-channel normalisation of RGB values in ``[0, 1]``.
    """

    def __init__(
        self,
        samples: Sequence[tuple[Path, int]],
        *,
        image_size: int,
        train: bool,
        mean: Sequence[float] = _IMAGENET_MEAN,
        std: Sequence[float] = _IMAGENET_STD,
    ) -> None:
        self.samples = list(samples)
        self.image_size = int(image_size)
        self.train = bool(train)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def _crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        area = width * height
        for _ in range(10):
            target = area * float(torch.empty(()).uniform_(0.08, 1.0))
            log_ratio = float(torch.empty(()).uniform_(math.log(3 / 4), math.log(4 / 3)))
            ratio = math.exp(log_ratio)
            w = int(round(math.sqrt(target * ratio)))
            h = int(round(math.sqrt(target / ratio)))
            if 0 < w <= width and 0 < h <= height:
                left = int(torch.randint(0, width - w + 1, ()))
                top = int(torch.randint(0, height - h + 1, ()))
                return left, top, left + w, top + h
        side = min(width, height)  # fallback: central square
        left, top = (width - side) // 2, (height - side) // 2
        return left, top, left + side, top + side

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.samples[index]
        try:
            with Image.open(path) as handle:
                image = handle.convert("RGB")
        except OSError as exc:
            raise InputError(f"{path}: cannot be read as an image ({exc}); remove or replace the file") from exc
        size = self.image_size
        if self.train:
            image = image.crop(self._crop_box(*image.size)).resize((size, size), Image.Resampling.BILINEAR)
            if bool(torch.rand(()) < 0.5):
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        else:
            short = max(size, round(size * 8 / 7))
            width, height = image.size
            scale = short / min(width, height)
            image = image.resize(
                (max(size, round(width * scale)), max(size, round(height * scale))), Image.Resampling.BILINEAR
            )
            width, height = image.size
            left, top = (width - size) // 2, (height - size) // 2
            image = image.crop((left, top, left + size, top + size))
        array = np.asarray(image, dtype=np.float32) / 255.0  # (H, W, 3)
        tensor = torch.from_numpy(array.copy()).permute(2, 0, 1)
        return (tensor - self.mean) / self.std, label


# ----------------------------------------------------------------------------------------------------- digits


def _stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, test)``: each class split in the same proportion, shuffled with ``seed``."""
    rng = np.random.default_rng(seed)
    train_idx: list[np.ndarray] = []
    test_idx: list[np.ndarray] = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        rng.shuffle(members)
        n_test = int(round(len(members) * test_fraction))
        n_test = min(max(n_test, 1), len(members) - 1) if len(members) > 1 else 0
        test_idx.append(members[:n_test])
        train_idx.append(members[n_test:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(test_idx))


def _digits(cfg: TrainConfig) -> DataBundle:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - scikit-learn is in the train extra
        raise InputError(
            "data 'digits' needs scikit-learn (it ships the images); install nmsparse[train] or pass --data fake"
        ) from exc
    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0  # (1797, 8, 8), values 0..16 -> 0..1
    labels = digits.target.astype(np.int64)
    train_idx, test_idx = _stratified_split(labels, cfg.test_fraction, cfg.split_seed)
    mean, std = float(images[train_idx].mean()), float(images[train_idx].std())
    tensor = torch.from_numpy((images - mean) / std).unsqueeze(1)
    target = torch.from_numpy(labels)
    fill = -mean / std  # normalised blank background
    train = TensorImageDataset(tensor[train_idx], target[train_idx], pad=1 if cfg.augment else 0, fill=fill)
    test = TensorImageDataset(tensor[test_idx], target[test_idx])
    return DataBundle(
        "digits",
        train,
        test,
        10,
        1,
        8,
        f"scikit-learn digits 8x8: {len(train)} train / {len(test)} held-out test images "
        f"(stratified split, seed {cfg.split_seed})",
    )


# ------------------------------------------------------------------------------------------------------- fake


def _fake(cfg: TrainConfig) -> DataBundle:
    """Class templates plus Gaussian noise: learnable, deterministic in ``split_seed``, any size."""
    size = cfg.image_size or 32
    classes = cfg.num_classes
    generator = torch.Generator().manual_seed(cfg.split_seed)
    # Smooth templates (upsampled low-resolution noise) so that convolutions and pooling keep the signal.
    low = torch.randn(classes, 3, 4, 4, generator=generator)
    templates = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    n_train, n_test = cfg.fake_samples, max(cfg.fake_samples // 4, classes)

    def make(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(count) % classes
        labels = labels[torch.randperm(count, generator=generator)]
        noise = torch.randn(count, 3, size, size, generator=generator)
        return templates[labels] + noise, labels

    train_x, train_y = make(n_train)
    test_x, test_y = make(n_test)
    pad = max(1, size // 8) if cfg.augment else 0
    train = TensorImageDataset(train_x, train_y, pad=pad, flip=cfg.augment)
    test = TensorImageDataset(test_x, test_y)
    return DataBundle(
        "fake",
        train,
        test,
        classes,
        3,
        size,
        f"synthetic {size}x{size} images, {classes} classes: {n_train} train / {n_test} test",
    )


# ---------------------------------------------------------------------------------------------------- folders


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler of CIFAR-10 batches that can build nothing but plain data and numpy arrays.

    ``find_class`` admits only numpy's array and scalar reconstructors and ``numpy.dtype`` (object dtypes
    refused) and
    ``_codecs.encode`` (how protocol-2 pickles spell bytes); every other global, i.e. every way a pickle runs
    code (``os.system``, ``builtins.eval``, ...), raises ``UnpicklingError`` before anything is called.
    """

    def find_class(self, module: str, name: str) -> Any:
        key = (module.replace("numpy._core", "numpy.core"), name)
        if key == ("numpy.core.multiarray", "_reconstruct"):
            return _reconstruct
        if key == ("numpy", "ndarray"):
            return np.ndarray
        if key == ("numpy", "dtype"):
            return _dtype
        if key == ("numpy.core.numeric", "_frombuffer"):
            return _frombuffer
        if key == ("numpy.core.multiarray", "scalar"):
            return _scalar
        if key == ("_codecs", "encode"):
            return _encode
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays and plain data)")


def _dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype[Any]:
    dtype = np.dtype(spec)
    if dtype.hasobject:
        raise pickle.UnpicklingError("refusing an object array (only numeric arrays)")
    return dtype


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError("refusing an array subclass")
    import importlib

    try:
        multiarray: Any = importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy < 2
        multiarray = importlib.import_module("numpy.core.multiarray")
    array: np.ndarray = multiarray._reconstruct(np.ndarray, shape, _dtype(dtype))
    return array


def _scalar(dtype: Any, data: Any = None) -> Any:
    dtype = _dtype(dtype)
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise pickle.UnpicklingError("refusing a malformed numpy scalar")
    return np.frombuffer(data, dtype=dtype)[0]


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    if not isinstance(buffer, (bytes, bytearray, memoryview)):
        raise pickle.UnpicklingError("refusing an array built from a non-buffer")
    return np.frombuffer(buffer, dtype=_dtype(dtype)).reshape(shape, order=order)


def _encode(text: Any, encoding: Any = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("refusing an unusual byte-string encoding")
    return text.encode("latin1")


def _unpickle(path: Path) -> dict[bytes, Any]:
    """Read one CIFAR-10 python batch without executing anything from it (see :class:`_BatchUnpickler`).

    Raises:
        InputError: unreadable, forbidden content, or not the batch layout (``data`` uint8 ``[N, 3072]``,
            ``labels`` N ints in 0..9).
    """
    # CIFAR-10's python release is pickled numpy arrays; encoding="bytes" reads it without its original classes.
    try:
        with path.open("rb") as handle:
            batch = _BatchUnpickler(handle, encoding="bytes").load()
    except OSError as exc:
        raise InputError(f"{path}: not a readable CIFAR-10 python batch ({exc})") from exc
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        OverflowError,
        MemoryError,
    ) as exc:
        raise InputError(f"{path}: not a CIFAR-10 python batch ({' '.join(str(exc).split())[:160]})") from None
    if not isinstance(batch, dict):
        raise InputError(f"{path}: a CIFAR-10 batch is a dict, this file holds a {type(batch).__name__}")
    batch = {key.encode() if isinstance(key, str) else key: value for key, value in batch.items()}
    data, labels = batch.get(b"data"), batch.get(b"labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
        raise InputError(f"{path}: 'data' must be a uint8 array [N, 3072] (32x32 RGB images), got {got}")
    if (
        not isinstance(labels, (list, np.ndarray))
        or len(labels) != data.shape[0]
        or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v < 10 for v in labels)
    ):
        raise InputError(f"{path}: 'labels' must be {data.shape[0]} integers in 0..9 (one per image)")
    return batch


def _cifar_root(root: Path) -> Path | None:
    for candidate in (root, root / "cifar-10-batches-py"):
        if (candidate / "data_batch_1").is_file() and (candidate / "test_batch").is_file():
            return candidate
    return None


def _cifar10(root: Path, cfg: TrainConfig) -> DataBundle:
    def read(names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        arrays, labels = [], []
        for name in names:
            path = root / name
            if not path.is_file():
                raise InputError(f"CIFAR-10 folder {root}: {name} is missing; expected data_batch_1..5 and test_batch")
            batch = _unpickle(path)
            arrays.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
        return np.concatenate(arrays), np.concatenate(labels)

    train_names = sorted(p.name for p in root.glob("data_batch_*"))
    train_x, train_y = read(train_names)
    test_x, test_y = read(["test_batch"])
    train_f = train_x.astype(np.float32) / 255.0
    mean = train_f.mean(axis=(0, 2, 3), keepdims=True)
    std = train_f.std(axis=(0, 2, 3), keepdims=True)

    def norm(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((x.astype(np.float32) / 255.0 - mean) / std)

    train = TensorImageDataset(norm(train_x), torch.from_numpy(train_y), pad=4 if cfg.augment else 0, flip=cfg.augment)
    test = TensorImageDataset(norm(test_x), torch.from_numpy(test_y))
    return DataBundle(
        "cifar10", train, test, 10, 3, 32, f"CIFAR-10 from {root}: {len(train)} train / {len(test)} test images"
    )


def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _scan(root: Path, classes: Sequence[str]) -> list[tuple[Path, int]]:
    samples: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        folder = root / name
        if folder.is_dir():
            samples += [(path, label) for path in _images_in(folder)]
    return samples


def _image_folder(root: Path, cfg: TrainConfig) -> DataBundle:
    size = cfg.image_size or 224
    test_dir = next((root / name for name in ("val", "test", "validation") if (root / name).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        classes = [p.name for p in _class_folders(root / "train")]
        train_samples = _scan(root / "train", classes)
        test_samples = _scan(test_dir, classes)
        unknown = sorted({p.name for p in _class_folders(test_dir)} - set(classes))
        if unknown:
            raise InputError(
                f"{test_dir}: class folder(s) {unknown[:5]} have no counterpart in {root / 'train'}; both splits "
                f"need the same class sub-folders"
            )
        kind = "imagenet-folder"
        source = f"{root} (train/ and {test_dir.name}/)"
    else:
        classes = [p.name for p in _class_folders(root)]
        samples = _scan(root, classes)
        labels = np.array([label for _, label in samples], dtype=np.int64)
        if len(samples):
            train_idx, test_idx = _stratified_split(labels, cfg.test_fraction, cfg.split_seed)
        else:
            train_idx = test_idx = np.zeros(0, dtype=np.int64)
        train_samples = [samples[i] for i in train_idx]
        test_samples = [samples[i] for i in test_idx]
        kind = "image-folder"
        source = f"{root} (split {1 - cfg.test_fraction:.0%}/{cfg.test_fraction:.0%}, seed {cfg.split_seed})"
    if len(classes) < 2 or not train_samples or not test_samples:
        raise InputError(
            f"data folder {root}: found {len(classes)} class folder(s), {len(train_samples)} training and "
            f"{len(test_samples)} test image(s); expected at least two class sub-folders holding images "
            f"({', '.join(IMAGE_EXTENSIONS)}), either directly or under train/ and val/"
        )
    train = ImageFileDataset(train_samples, image_size=size, train=cfg.augment)
    test = ImageFileDataset(test_samples, image_size=size, train=False)
    return DataBundle(
        kind,
        train,
        test,
        len(classes),
        3,
        size,
        f"images from {source}: {len(classes)} classes, {len(train)} train / {len(test)} test, {size}x{size}",
    )


# ------------------------------------------------------------------------------------------------------ entry


def build_data(cfg: TrainConfig) -> DataBundle:
    """The data set named by ``cfg.data`` (see :class:`~nmsparse.recipes.classify.TrainConfig`), with its test split.

    Raises:
        InputError: a folder that does not exist or holds no recognisable data set.
    """
    if cfg.data in _BUILTIN:
        return _digits(cfg) if cfg.data == "digits" else _fake(cfg)
    root = Path(cfg.data).expanduser()
    if not root.exists():
        raise InputError(
            f"data folder {str(root)!r} does not exist; pass 'digits' (built in), 'fake' (synthetic) or a folder "
            f"holding CIFAR-10 (python format), train/ and val/ class folders, or class folders"
        )
    if not root.is_dir():
        raise InputError(f"data {str(root)!r} is a file, expected a folder (or 'digits' / 'fake')")
    cifar = _cifar_root(root)
    if cifar is not None:
        return _cifar10(cifar, cfg)
    return _image_folder(root, cfg)


def collate_images(batch: Sequence[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(image, label)`` items into ``(images [B, C, H, W], labels [B])``."""
    images = torch.stack([item[0] for item in batch])
    labels = torch.tensor([item[1] for item in batch], dtype=torch.int64)
    return images, labels
