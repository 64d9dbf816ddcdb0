"""mobilec.data: IDX parsing, the four dataset specs, and their error messages."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from mobilec.data import FASHION_MNIST_MEAN, ImageDataset, load_dataset, parse_idx, read_idx
from mobilec.data.datasets import FASHION_MNIST_DIR
from mobilec.errors import MobilecError


def idx_bytes(arr: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}[arr.dtype]
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


# --------------------------------------------------------------------------- IDX


def test_idx_roundtrip_plain_and_gzip(tmp_path: Path) -> None:
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    assert np.array_equal(parse_idx(idx_bytes(images)), images)
    ints = np.array([[1, -2], [300000, 4]], dtype=np.int32)
    assert np.array_equal(parse_idx(idx_bytes(ints)), ints)
    (tmp_path / "x.gz").write_bytes(gzip.compress(idx_bytes(images)))
    assert np.array_equal(read_idx(tmp_path / "x.gz"), images)


@pytest.mark.parametrize(
    ("blob", "needle"),
    [(b"\x01\x02\x08\x01", "bad magic"), (bytes([0, 0, 0x42, 1, 0, 0, 0, 1, 7]), "type byte"),
     (bytes([0, 0, 8, 2, 0, 0, 0, 2]), "truncated"), (bytes([0, 0, 8, 1, 0, 0, 0, 3, 1, 2]), "needs 3")],
)
def test_idx_corrupt_is_named(blob: bytes, needle: str) -> None:
    with pytest.raises(MobilecError, match=needle):
        parse_idx(blob, source="f.idx")


def _fake_fashion(root: Path, n_train: int = 20, n_test: int = 10) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        img = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        lab = (np.arange(n) % 10).astype(np.uint8)
        (root / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(img)))
        (root / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(lab)))


def test_fashion_mnist_from_idx_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_fashion(tmp_path)
    monkeypatch.setenv("MOBILEC_FASHION_MNIST_DIR", str(tmp_path))
    ds = load_dataset("fashion-mnist")
    assert ds.x_train.shape == (20, 1, 28, 28) and ds.x_test.shape == (10, 1, 28, 28)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.mean == (FASHION_MNIST_MEAN,) and ds.num_classes == 10 and ds.hflip
    # a zero pixel maps to -mean/std
    raw0 = read_idx(tmp_path / "train-images-idx3-ubyte.gz")[0, 0, 0] / 255.0
    assert ds.x_train[0, 0, 0, 0].item() == pytest.approx((raw0 - 0.2860) / 0.3530, abs=1e-5)
    ds.x_train.zero_()  # callers get their own copy: the in-process cache stays intact
    assert load_dataset("fashion-mnist").x_train.abs().sum() > 0


def test_fashion_mnist_missing_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOBILEC_FASHION_MNIST_DIR", str(tmp_path / "nope"))
    with pytest.raises(MobilecError, match=r"apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist")


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist() -> None:
    ds = load_dataset("fashion-mnist")
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.x_train.mean().item() == pytest.approx(0.0, abs=0.01)
    assert ds.x_train.std().item() == pytest.approx(1.0, abs=0.01)
    assert torch.bincount(ds.y_test).tolist() == [1000] * 10


# --------------------------------------------------------------------------- digits


def test_digits_split_is_stratified_and_deterministic() -> None:
    a, b = load_dataset("digits"), load_dataset("digits")
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    assert len(a.x_train) == 1437 and len(a.x_test) == 360
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_train, b.y_train)
    counts = torch.bincount(a.y_test)
    assert counts.min() >= 35 and counts.max() <= 37
    assert not a.hflip  # flipping digits changes their meaning


def test_input_shape_converts_channels_and_size() -> None:
    ds = load_dataset("digits", input_shape=(3, 16, 16))
    assert ds.input_shape == (3, 16, 16) and len(ds.mean) == 3
    assert torch.allclose(ds.x_train[:, 0], ds.x_train[:, 1])


def test_helpers_are_deterministic() -> None:
    ds = load_dataset("digits")
    b1, b2 = ds.calibration_batches(3, 50, seed=1), ds.calibration_batches(3, 50, seed=1)
    assert len(b1) == 3 and all(torch.equal(x, y) for x, y in zip(b1, b2, strict=True))
    assert not torch.equal(b1[0], ds.calibration_batches(1, 50, seed=2)[0])
    big = ds.calibration_batches(2, 1000, seed=0)  # more than the split: wraps around
    assert big[1].shape == (1000, 1, 8, 8)
    x, y = next(iter(ds.loader("train", batch_size=7, shuffle=True, seed=3)))
    x2, _ = next(iter(ds.loader("train", batch_size=7, shuffle=True, seed=3)))
    assert x.shape == (7, 1, 8, 8) and y.dtype == torch.int64 and torch.equal(x, x2)
    sub = ds.subset(100, 30, seed=0)
    assert len(sub.x_train) == 100 and len(sub.y_test) == 30 and sub.classes == ds.classes
    with pytest.raises(MobilecError, match=r"split"):
        ds.loader("val")


def test_unknown_spec() -> None:
    with pytest.raises(MobilecError, match=r"unknown dataset spec 'mnist'.*fashion-mnist, digits"):
        load_dataset("mnist")


# --------------------------------------------------------------------------- npz


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW"])
def test_npz_roundtrip(tmp_path: Path, layout: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (12, 10, 9, 3 if layout != "NHW" else 1), dtype=np.uint8)
    if layout == "NHW":
        x = x[..., 0]
    elif layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    y = np.arange(12) % 3
    p = _npz(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x[:4], y_test=y[:4], classes=np.array(["a", "b", "c"]))
    ds = load_dataset(f"npz:{p}")
    c = 1 if layout == "NHW" else 3
    assert ds.input_shape == (c, 10, 9) and ds.classes == ["a", "b", "c"] and ds.name == "d"
    assert ds.x_train.mean((0, 2, 3)).abs().max() < 1e-3  # normalized with train statistics
    # the stored mean/std reproduce the tensor from raw pixels
    nchw = x if layout == "NCHW" else (x[:, None] if layout == "NHW" else x.transpose(0, 3, 1, 2))
    m = torch.tensor(ds.mean).view(1, -1, 1, 1)
    s = torch.tensor(ds.std).view(1, -1, 1, 1)
    assert torch.allclose((torch.from_numpy(nchw).float() / 255 - m) / s, ds.x_train, atol=1e-5)


def test_npz_float_and_default_classes(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((6, 1, 8, 8)).astype(np.float32)
    p = _npz(tmp_path / "f.npz", x_train=x, y_train=np.array([0, 1, 2, 3, 4, 0]), x_test=x[:2], y_test=np.array([1, 0]))
    ds = load_dataset(f"npz:{p}", input_shape=(1, 16, 16))
    assert ds.classes == ["0", "1", "2", "3", "4"] and ds.input_shape == (1, 16, 16)


@pytest.mark.parametrize(
    ("arrays", "needle"),
    [
        ({"x_train": np.zeros((2, 8, 8), np.uint8), "y_train": np.zeros(2, int)}, r"lacks key\(s\) x_test, y_test"),
        ({"x_train": np.zeros((2, 5, 8, 8, 1), np.uint8)}, r"x_train\] has shape \(2, 5, 8, 8, 1\)"),
        ({"y_train": np.zeros(3, int)}, r"y_train\] has 3 labels for 2 images"),
        ({"y_train": np.array([0, -1])}, "negative label"),
        ({"y_train": np.array([0.0, 1.0])}, "1-D integer"),
        ({"y_test": np.array([0, 7]), "classes": np.array(["a", "b"])}, "label 7 is out of range for 2 classes"),
        ({"x_train": np.full((2, 8, 8), 3.0, np.float32)}, r"outside \[0, 1\]"),
        ({"x_test": np.zeros((2, 9, 9), np.uint8)}, "x_test are"),
    ],
)
def test_npz_bad_inputs(tmp_path: Path, arrays: dict[str, np.ndarray], needle: str) -> None:
    good = {"x_train": np.zeros((2, 8, 8), np.uint8), "y_train": np.array([0, 1]),
            "x_test": np.zeros((2, 8, 8), np.uint8), "y_test": np.array([1, 0])}
    if "lacks" in needle:
        good = {}
    p = _npz(tmp_path / "bad.npz", **{**good, **arrays})
    with pytest.raises(MobilecError, match=needle) as err:
        load_dataset(f"npz:{p}")
    assert "bad.npz" in str(err.value) and "fix:" in str(err.value)


def test_npz_missing_or_garbage_file(tmp_path: Path) -> None:
    with pytest.raises(MobilecError, match=r"does not exist"):
        load_dataset(f"npz:{tmp_path / 'none.npz'}")
    (tmp_path / "g.npz").write_bytes(b"not a zip")
    with pytest.raises(MobilecError, match=r"not a readable .npz"):
        load_dataset(f"npz:{tmp_path / 'g.npz'}")


# --------------------------------------------------------------------------- imagefolder


def _write_images(root: Path, mode: str, sizes: dict[str, tuple[int, int]] | None = None) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("cat", "dog"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                w, h = (sizes or {}).get(f"{split}/{cls}", (12, 10))
                shape = (h, w) if mode == "L" else (h, w, 3)
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(d / f"{i}.png")


def test_imagefolder_grayscale_and_rgb(tmp_path: Path) -> None:
    _write_images(tmp_path / "g", "L")
    ds = load_dataset(f"imagefolder:{tmp_path / 'g'}")
    assert ds.input_shape == (1, 10, 12) and ds.classes == ["cat", "dog"]
    assert len(ds.x_train) == 6 and ds.y_test.tolist() == [0, 0, 1, 1]
    _write_images(tmp_path / "c", "RGB")
    ds = load_dataset(f"imagefolder:{tmp_path / 'c'}", input_shape=(3, 8, 8))
    assert ds.input_shape == (3, 8, 8) and len(ds.std) == 3


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(MobilecError, match=r"train does not exist"):
        load_dataset(f"imagefolder:{tmp_path}")
    _write_images(tmp_path / "m", "L", sizes={"test/dog": (9, 9)})
    with pytest.raises(MobilecError, match=r"different sizes.*input_shape"):
        load_dataset(f"imagefolder:{tmp_path / 'm'}")
    assert load_dataset(f"imagefolder:{tmp_path / 'm'}", input_shape=(1, 9, 9)).input_shape == (1, 9, 9)
    (tmp_path / "m" / "test" / "bird").mkdir()
    with pytest.raises(MobilecError, match=r"bird missing from train"):
        load_dataset(f"imagefolder:{tmp_path / 'm'}", input_shape=(1, 9, 9))
    (tmp_path / "m" / "test" / "bird").rmdir()
    (tmp_path / "m" / "train" / "cat" / "broken.png").write_bytes(b"garbage")
    with pytest.raises(MobilecError, match=r"cannot read image .*broken.png"):
        load_dataset(f"imagefolder:{tmp_path / 'm'}", input_shape=(1, 9, 9))


def test_dataset_is_a_plain_dataclass() -> None:
    ds = ImageDataset("t", torch.zeros(2, 1, 8, 8), torch.tensor([0, 1]), torch.zeros(1, 1, 8, 8), torch.tensor([1]),
                      ["a", "b"], (0.5,), (0.25,))
    assert ds.input_shape == (1, 8, 8) and ds.num_classes == 2
