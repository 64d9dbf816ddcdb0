"""Real image datasets as normalized tensors: Fashion-MNIST, sklearn digits, image folders, .npz files.

>>> ds = load_dataset("digits")
>>> ds.input_shape, ds.num_classes
((1, 8, 8), 10)
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from mobilec.data.idx import read_idx
from mobilec.errors import MobilecError

#: Where the Debian package ``dataset-fashion-mnist`` installs its files (override: $MOBILEC_FASHION_MNIST_DIR).
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
SPECS_HELP = "fashion-mnist, digits, imagefolder:PATH, npz:PATH"


@dataclass
class ImageDataset:
    """Train/test image tensors, normalized per channel: ``x = (pixel/255 - mean) / std``.

    ``x_*`` are float32 N×C×H×W, ``y_*`` int64. ``mean``/``std`` let an app reproduce the
    preprocessing; ``hflip`` says whether horizontal flips preserve labels (used by training
    augmentation).

    >>> ds = load_dataset("digits").subset(100, 50)
    >>> batches = ds.calibration_batches(2, 16, seed=0)
    >>> [tuple(b.shape) for b in batches]
    [(16, 1, 8, 8), (16, 1, 8, 8)]
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool = False
    source: str = field(default="", compare=False)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of ``"train"`` or ``"test"``."""
        if split == "train":
            return self.x_train, self.y_train
        if split == "test":
            return self.x_test, self.y_test
        raise MobilecError(f"unknown split {split!r}", hint="use 'train' or 'test'")

    def calibration_batches(self, n_batches: int, batch_size: int = 32, seed: int = 0) -> list[torch.Tensor]:
        """``n_batches`` batches drawn without replacement from the train split (deterministic per seed)."""
        if n_batches < 1 or batch_size < 1:
            raise MobilecError(f"calibration needs n_batches ≥ 1 and batch_size ≥ 1, got {n_batches}, {batch_size}")
        n = len(self.x_train)
        g = torch.Generator().manual_seed(seed)
        need = n_batches * batch_size
        idx = torch.cat([torch.randperm(n, generator=g) for _ in range(-(-need // n))])[:need]
        return [self.x_train[idx[i * batch_size:(i + 1) * batch_size]].clone() for i in range(n_batches)]

    def loader(self, split: str = "test", batch_size: int = 128, shuffle: bool = False, seed: int = 0) -> DataLoader:
        """A ``DataLoader`` of ``(x, y)`` batches over one split (shuffle order fixed by ``seed``)."""
        x, y = self.split(split)
        g = torch.Generator().manual_seed(seed)
        return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle, generator=g)

    def subset(self, n_train: int, n_test: int, seed: int = 0) -> ImageDataset:
        """A random subset for quick runs (deterministic per seed; sizes are capped at the split sizes)."""
        g = torch.Generator().manual_seed(seed)
        tr = torch.randperm(len(self.x_train), generator=g)[: max(1, n_train)]
        te = torch.randperm(len(self.x_test), generator=g)[: max(1, n_test)]
        return replace(self, x_train=self.x_train[tr], y_train=self.y_train[tr],
                       x_test=self.x_test[te], y_test=self.y_test[te])


def load_dataset(spec: str, *, input_shape: tuple[int, int, int] | None = None) -> ImageDataset:
    """Load ``fashion-mnist``, ``digits``, ``imagefolder:PATH`` or ``npz:PATH``.

    * ``fashion-mnist``: the IDX files of Debian's ``dataset-fashion-mnist`` (mean 0.2860, std 0.3530).
    * ``digits``: sklearn's 8×8 digits, stratified 80/20 split with seed 0.
    * ``imagefolder:PATH``: ``PATH/{train,test}/<class>/*.png|jpg``; grayscale if every image is.
    * ``npz:PATH``: keys ``x_train, y_train, x_test, y_test`` (+ optional ``classes``); images
      N×H×W, N×H×W×C or N×C×H×W (C = 1 or 3), uint8 (0..255) or float in [0, 1].

    Image folders and npz files are normalized with their train split's per-channel mean/std.
    ``input_shape=(C, H, W)`` converts the images: channels 1 ↔ 3 (repeat / luminance) and
    a bilinear resize (image folders are resized by Pillow while loading).
    """
    if input_shape is not None:
        input_shape = _check_shape(input_shape)
    kind, _, arg = spec.partition(":")
    if kind == "fashion-mnist" and not arg:
        raw = _fashion_mnist_arrays(os.environ.get("MOBILEC_FASHION_MNIST_DIR", str(FASHION_MNIST_DIR)))
        x_tr, y_tr, x_te, y_te = (torch.tensor(a) for a in raw)  # copies: the cache stays pristine
        return _finish("fashion-mnist", x_tr[:, None], y_tr, x_te[:, None], y_te, list(FASHION_MNIST_CLASSES),
                       input_shape, mean=(FASHION_MNIST_MEAN,), std=(FASHION_MNIST_STD,), hflip=True,
                       source="Fashion-MNIST (Debian dataset-fashion-mnist)")
    if kind == "digits" and not arg:
        return _load_digits(input_shape)
    if kind == "imagefolder" and arg:
        return _load_imagefolder(Path(arg), input_shape)
    if kind == "npz" and arg:
        return _load_npz(Path(arg), input_shape)
    raise MobilecError(f"unknown dataset spec {spec!r}", hint=f"use one of: {SPECS_HELP}")


# --------------------------------------------------------------------------- sources


@functools.lru_cache(maxsize=2)
def _fashion_mnist_arrays(root: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Parsed Fashion-MNIST uint8 images / int64 labels, cached in-process (tests load it often)."""
    base = Path(root)
    names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    arrays = []
    for name in names:
        path = next((p for p in (base / f"{name}.gz", base / name) if p.is_file()), None)
        if path is None:
            raise MobilecError(
                f"Fashion-MNIST file {base / name}.gz not found",
                hint="apt-get install dataset-fashion-mnist (or set MOBILEC_FASHION_MNIST_DIR)",
            )
        arrays.append(read_idx(path))
    x_tr, y_tr, x_te, y_te = arrays
    for x, y, split in ((x_tr, y_tr, "train"), (x_te, y_te, "t10k")):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise MobilecError(f"Fashion-MNIST {split} files have shapes {x.shape} / {y.shape}",
                               hint="reinstall dataset-fashion-mnist")
    for a in arrays:
        a.setflags(write=False)
    return x_tr, y_tr.astype(np.int64), x_te, y_te.astype(np.int64)


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]  # pixel values 0..16
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return x_tr, y_tr, x_te, y_te


def _load_digits(input_shape: tuple[int, int, int] | None) -> ImageDataset:
    x_tr, y_tr, x_te, y_te = (torch.tensor(a) for a in _digits_arrays())
    return _finish("digits", x_tr, y_tr, x_te, y_te, [str(i) for i in range(10)], input_shape, scaled=True,
                   source="sklearn.datasets.load_digits, stratified 80/20 split, seed 0")


def _load_npz(path: Path, input_shape: tuple[int, int, int] | None) -> ImageDataset:
    """Keys x_train, y_train, x_test, y_test (+ optional classes).

    Images: N×H×W (grayscale), N×H×W×C (NHWC, C = 1 or 3) or N×C×H×W (NCHW, C = 1 or 3);
    uint8 is scaled by 1/255, float arrays must already be in [0, 1]. Labels: integers in
    ``[0, num_classes)``, where num_classes = len(classes) if given, else max label + 1.
    """
    if not path.is_file():
        raise MobilecError(f"dataset file {path} does not exist", hint="check the npz:PATH spec")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as exc:
        raise MobilecError(f"{path} is not a readable .npz file ({type(exc).__name__}: {exc})",
                           hint="save it with numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)") from None
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
    if missing:
        raise MobilecError(f"{path} lacks key(s) {', '.join(missing)} (has {', '.join(sorted(arrays)) or 'none'})",
                           hint="save x_train, y_train, x_test, y_test (and optionally classes) with numpy.savez")
    xs = [_npz_images(arrays[k], f"{path}[{k}]") for k in ("x_train", "x_test")]
    if xs[0].shape[1:] != xs[1].shape[1:]:
        raise MobilecError(f"{path}: x_train images are {tuple(xs[0].shape[1:])} but x_test are {tuple(xs[1].shape[1:])}",
                           hint="store both splits with the same C×H×W")
    ys = [_npz_labels(arrays[k], len(x), f"{path}[{k}]") for k, x in zip(("y_train", "y_test"), xs, strict=True)]
    n_max = int(max(ys[0].max(), ys[1].max())) + 1
    if "classes" in arrays:
        classes = [str(c) for c in np.asarray(arrays["classes"]).reshape(-1).tolist()]
        if n_max > len(classes):
            raise MobilecError(f"{path}: label {n_max - 1} is out of range for {len(classes)} classes",
                               hint="labels must be 0..len(classes)-1")
    else:
        classes = [str(i) for i in range(n_max)]
    return _finish(path.stem, xs[0], ys[0], xs[1], ys[1], classes, input_shape, scaled=True, source=str(path))


def _npz_images(a: np.ndarray, where: str) -> torch.Tensor:
    if a.dtype == np.uint8:
        x = a.astype(np.float32) / 255.0
    elif np.issubdtype(a.dtype, np.floating):
        x = a.astype(np.float32)
        if x.size and (not np.isfinite(x).all() or x.min() < -1e-3 or x.max() > 1 + 1e-3):
            raise MobilecError(f"{where} float images are outside [0, 1]",
                               hint="store uint8 pixels or floats scaled to [0, 1]")
    else:
        raise MobilecError(f"{where} has dtype {a.dtype}", hint="store images as uint8 or float in [0, 1]")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[3] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    elif not (x.ndim == 4 and x.shape[1] in (1, 3)):
        raise MobilecError(f"{where} has shape {a.shape}; expected N×H×W, N×H×W×C or N×C×H×W with C = 1 or 3",
                           hint="reshape the images")
    if len(x) == 0:
        raise MobilecError(f"{where} holds no images", hint="store at least one image per split")
    return torch.from_numpy(np.ascontiguousarray(x))


def _npz_labels(a: np.ndarray, n: int, where: str) -> torch.Tensor:
    if not np.issubdtype(a.dtype, np.integer) or a.ndim != 1:
        raise MobilecError(f"{where} has shape {a.shape} dtype {a.dtype}", hint="labels must be a 1-D integer array")
    if len(a) != n:
        raise MobilecError(f"{where} has {len(a)} labels for {n} images", hint="store one label per image")
    if a.min() < 0:
        raise MobilecError(f"{where} has negative label {int(a.min())}", hint="labels must be 0..num_classes-1")
    return torch.from_numpy(a.astype(np.int64))


def _load_imagefolder(root: Path, input_shape: tuple[int, int, int] | None) -> ImageDataset:
    """``root/train/<class>/*.png|jpg`` and ``root/test/<class>/...``; classes are the sorted train folders."""
    from PIL import Image

    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise MobilecError(f"image folder {root / split} does not exist",
                               hint="lay images out as PATH/train/<class>/*.png and PATH/test/<class>/*.png")
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if not classes:
        raise MobilecError(f"{root / 'train'} has no class sub-folders", hint="put images in PATH/train/<class>/")
    files: dict[str, list[tuple[Path, int]]] = {}
    for split in ("train", "test"):
        extra = sorted(p.name for p in (root / split).iterdir() if p.is_dir() and p.name not in classes)
        if extra:
            raise MobilecError(f"{root / split} has class folder(s) {', '.join(extra)} missing from train",
                               hint="every test class needs a train folder of the same name")
        files[split] = [(f, i) for i, c in enumerate(classes) if (root / split / c).is_dir()
                        for f in sorted((root / split / c).iterdir()) if f.suffix.lower() in _IMAGE_SUFFIXES]
        if not files[split]:
            raise MobilecError(f"{root / split} contains no .png/.jpg images", hint="add images under PATH/{split}/<class>/")
    images: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    modes = set()
    opened = []
    for split in ("train", "test"):
        for f, _ in files[split]:
            try:
                with Image.open(f) as im:
                    im.load()
                    opened.append((split, im.copy()))
                    modes.add("L" if im.mode in ("L", "1", "I;16", "I", "LA") else "RGB")
            except Exception as exc:
                raise MobilecError(f"cannot read image {f} ({type(exc).__name__}: {exc})",
                                   hint="remove or re-save the file as PNG/JPEG") from None
    mode = ("L" if input_shape[0] == 1 else "RGB") if input_shape else ("L" if modes == {"L"} else "RGB")
    size = (input_shape[2], input_shape[1]) if input_shape else None
    for split, im in opened:
        im = im.convert(mode)
        if size is not None and im.size != size:
            im = im.resize(size, Image.BILINEAR)
        arr = np.asarray(im, dtype=np.uint8)
        images[split].append(arr[:, :, None] if arr.ndim == 2 else arr)
    shapes = {a.shape for a in images["train"] + images["test"]}
    if len(shapes) > 1:
        raise MobilecError(f"images under {root} have different sizes {sorted(shapes)[:3]}",
                           hint="pass input_shape (--input-shape C,H,W) to resize them")
    x = {s: torch.from_numpy(np.stack(images[s]).transpose(0, 3, 1, 2).astype(np.float32) / 255.0) for s in images}
    y = {s: torch.tensor([i for _, i in files[s]], dtype=torch.int64) for s in files}
    return _finish(root.name, x["train"], y["train"], x["test"], y["test"], classes, input_shape,
                   scaled=True, source=str(root))


# --------------------------------------------------------------------------- helpers


def _check_shape(shape: tuple[int, int, int]) -> tuple[int, int, int]:
    dims = tuple(int(v) for v in shape)
    if len(dims) != 3 or dims[0] not in (1, 3) or min(dims[1:]) < 1:
        raise MobilecError(f"input_shape {shape} is not (C, H, W) with C = 1 or 3", hint="e.g. 1,28,28 or 3,32,32")
    return dims[0], dims[1], dims[2]


def _convert(x: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Convert [0, 1] images to ``shape``: channel repeat / luminance, then a bilinear (antialiased) resize."""
    c, h, w = shape
    if x.shape[1] == 1 and c == 3:
        x = x.repeat(1, 3, 1, 1)
    elif x.shape[1] == 3 and c == 1:
        x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    if tuple(x.shape[2:]) != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)
    return x.contiguous()


def _finish(
    name: str,
    x_tr: torch.Tensor,
    y_tr: torch.Tensor,
    x_te: torch.Tensor,
    y_te: torch.Tensor,
    classes: list[str],
    input_shape: tuple[int, int, int] | None,
    *,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    scaled: bool = False,
    hflip: bool = False,
    source: str = "",
) -> ImageDataset:
    """Scale uint8 to [0, 1], convert to ``input_shape``, normalize with ``mean``/``std`` (train stats if None)."""
    x_tr, x_te = (x if scaled else x.float() / 255.0 for x in (x_tr, x_te))
    if input_shape is not None:
        if mean is not None and x_tr.shape[1] != input_shape[0]:
            mean, std = None, None  # fixed statistics were for the original channel count
        x_tr, x_te = _convert(x_tr, input_shape), _convert(x_te, input_shape)
    for y, split in ((y_tr, "train"), (y_te, "test")):
        if len(y) and int(y.max()) >= len(classes):
            raise MobilecError(f"{name} {split} label {int(y.max())} is out of range for {len(classes)} classes",
                               hint="labels must be 0..num_classes-1")
    if mean is None or std is None:
        dims = (0, 2, 3)
        mean = tuple(round(float(v), 4) for v in x_tr.mean(dims))
        std = tuple(round(max(float(v), 1e-3), 4) for v in x_tr.std(dims))
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    x_tr, x_te = ((x - m) / s for x in (x_tr, x_te))
    return ImageDataset(name, x_tr.contiguous(), y_tr.long(), x_te.contiguous(), y_te.long(), classes,
                        tuple(mean), tuple(std), hflip, source)
