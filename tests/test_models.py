"""mobilec.models: zoo factories, export-ability, MAC counting, negative padding, the loader, shipped weights."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from mobilec.data import load_dataset
from mobilec.data.datasets import FASHION_MNIST_DIR
from mobilec.errors import MobilecError
from mobilec.models import WEIGHTS_DIR, ZOO, build_model, count_macs, count_params, list_models
from mobilec.models.loader import load_model
from mobilec.models.zoo import HSWISH_MIN, PaddedConv2d, mobilenet_v3_small

# --------------------------------------------------------------------------- zoo


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_runs_and_exports(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, pretrained=False).eval()
    x = torch.randn(1, 1, 28, 28)
    assert model(x).shape == (1, 10)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)  # sklearn digits size
    ep = torch.export.export(model, (x,))
    assert torch.allclose(ep.module()(x), model(x), atol=1e-5)
    if name == "mobilenet_v3_small":  # negative padding survives export as explicit pads with -3/8
        pads = [n for n in ep.graph.nodes if n.op == "call_function" and "pad" in str(n.target)]
        assert len(pads) == 9 and all(-0.375 in n.args or n.kwargs.get("value") == -0.375 for n in pads)
    rgb = build_model(name, num_classes=5, in_channels=3, pretrained=False).eval()
    assert rgb(torch.randn(1, 3, 32, 32)).shape == (1, 5)


def test_registry() -> None:
    assert list_models() == sorted(ZOO) and "mobilenet_v2" in ZOO
    with pytest.raises(MobilecError, match=r"unknown zoo model 'resnet50'.*available: mobilenet_v1"):
        build_model("resnet50")
    with pytest.raises(MobilecError, match=r"no shipped checkpoint for zoo model 'resnet_small'"):
        build_model("resnet_small")
    with pytest.raises(MobilecError, match=r"10 classes × 1 channel.*not 5 classes × 3"):
        build_model("mobilenet_v2", num_classes=5, in_channels=3)


def test_default_model_size_is_a_few_mb() -> None:
    n = count_params(build_model("mobilenet_v2", pretrained=False))
    assert 1_000_000 <= n <= 2_500_000


def test_count_macs_exact() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),             # 4·6·6 outputs × 1·3·3 = 1296
        nn.Conv2d(4, 4, 3, padding=1, groups=4),   # 144 × 1·3·3 = 1296
        nn.Conv2d(4, 8, 1, stride=2),              # 8·3·3 × 4 = 288
        nn.Flatten(),
        nn.Linear(72, 10),                         # 720
    )
    x = torch.zeros(1, 1, 6, 6)
    assert count_macs(model, x) == 1296 + 1296 + 288 + 720
    per = count_macs(model, x, per_layer=True)
    assert per == {"0": 1296, "1": 1296, "2": 288, "4": 720}
    assert count_params(model) == (36 + 4) + (36 + 4) + (32 + 8) + (720 + 10)
    assert model.training  # mode restored


def test_padded_conv_pads_with_pad_value() -> None:
    conv = PaddedConv2d(2, 2, 3, groups=2, pad_value=HSWISH_MIN)
    seen: list[torch.Tensor] = []
    conv.conv.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    x = torch.randn(1, 2, 5, 5)
    assert conv(x).shape == (1, 2, 5, 5)
    padded = seen[0]
    assert padded.shape == (1, 2, 7, 7) and conv.conv.padding == (0, 0)
    border = torch.cat([padded[..., 0, :].flatten(), padded[..., -1, :].flatten(),
                        padded[..., :, 0].flatten(), padded[..., :, -1].flatten()])
    assert torch.all(border == -0.375)
    assert torch.equal(padded[..., 1:-1, 1:-1], x)


def test_mobilenet_v3_negative_padding_after_hswish() -> None:
    model = mobilenet_v3_small().eval()
    padded = [m for m in model.modules() if isinstance(m, PaddedConv2d)]
    # the first block's depthwise follows the h-swish stem; blocks 4-11 expand with h-swish
    assert len(padded) == 1 + 8 and all(m.pad_value == -0.375 for m in padded)
    assert all(m.conv.groups == m.conv.in_channels for m in padded)  # all depthwise
    first_dw = model.features[1].block[0][0]
    assert isinstance(first_dw, PaddedConv2d)
    relu_dw = model.features[2].block[1][0]  # block 2: ReLU expand, so zero padding
    assert isinstance(relu_dw, nn.Conv2d) and relu_dw.padding == (1, 1)
    assert any(isinstance(m, nn.Hardswish) for m in model.modules())
    assert mobilenet_v3_small(pad_value=0.0).features[1].block[0][0].__class__ is nn.Conv2d


def test_mobilenet_v3_squeeze_excite_is_linear_and_1x1_conv_checkpoints_load(tmp_path: Path) -> None:
    """The SE layers are Linear on the pooled vector (what int4 runtimes run as fully-connected), the
    same function as the paper's 1×1 convs; a checkpoint with the conv layout loads with equal outputs."""
    import torch.nn.functional as F

    from mobilec.io import load_matching_state_dict
    from mobilec.models.zoo import SqueezeExcite

    torch.manual_seed(0)
    model = mobilenet_v3_small().eval()
    ses = [m for m in model.modules() if isinstance(m, SqueezeExcite)]
    assert len(ses) == 9 and all(isinstance(se.fc1, nn.Linear) and isinstance(se.fc2, nn.Linear) for se in ses)
    se = ses[0]
    x = torch.randn(2, se.fc1.in_features, 7, 7)
    pooled = x.mean((2, 3), keepdim=True)  # the 1×1-conv formulation
    h = F.relu(F.conv2d(pooled, se.fc1.weight[:, :, None, None], se.fc1.bias))
    ref = x * F.hardsigmoid(F.conv2d(h, se.fc2.weight[:, :, None, None], se.fc2.bias))
    with torch.no_grad():
        assert torch.allclose(se(x), ref, atol=1e-6)
    old = {k: v[:, :, None, None] if k.endswith((".fc1.weight", ".fc2.weight")) else v for k, v in model.state_dict().items()}
    torch.save(old, tmp_path / "v3_conv_se.pt")
    loaded = mobilenet_v3_small()
    load_matching_state_dict(loaded, tmp_path / "v3_conv_se.pt")
    images = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(images), model(images))


# --------------------------------------------------------------------------- loader


MODEL_FILE = """
import torch
from torch import nn

class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))

def build():
    return Tiny()

def wide():
    m = Tiny()
    m.fc = nn.Linear(4, 7)
    return m

def broken():
    raise ValueError("no GPU here")

def not_a_model():
    return 42
"""


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_model.py"
    path.write_text(textwrap.dedent(MODEL_FILE))
    return path


def _save_tiny(model_file: Path, tmp_path: Path) -> tuple[Path, nn.Module]:
    from mobilec.models.loader import _import_file

    torch.manual_seed(1)
    model = _import_file(model_file).build()
    path = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), path)
    return path, model


def test_load_model_from_file(model_file: Path, tmp_path: Path, digits) -> None:
    weights, ref = _save_tiny(model_file, tmp_path)
    model, info = load_model(f"{model_file}:build", weights=weights, data=digits)
    x = digits.x_test[:4]
    assert torch.allclose(model(x), ref(x)) and not model.training
    assert info.source == "file" and info.name == "my_model:build" and info.params == count_params(ref)
    assert info.weights == str(weights)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("{file}:nope", "has no callable 'nope'.*Tiny, broken, build"),
        ("{file}:broken", r"broken\(\) raised ValueError: no GPU here"),
        ("{file}:not_a_model", "returned int, not a torch.nn.Module"),
        ("{dir}/missing.py:build", "missing.py does not exist"),
        ("{file}", "names no factory"),
        ("{file}:wide", r"does not match the model: shape mismatch fc.weight"),
        ("resnet99", "unknown model 'resnet99'"),
    ],
)
def test_load_model_bad_specs(spec: str, needle: str, model_file: Path, tmp_path: Path, digits) -> None:
    weights, _ = _save_tiny(model_file, tmp_path)
    with pytest.raises(MobilecError, match=needle):
        load_model(spec.format(file=model_file, dir=tmp_path), weights=weights, data=digits)


def test_load_model_file_errors(model_file: Path, tmp_path: Path, digits) -> None:
    with pytest.raises(MobilecError, match=r"needs trained weights.*--weights"):
        load_model(f"{model_file}:build", weights=None, data=digits)
    bad_import = tmp_path / "bad.py"
    bad_import.write_text("import not_a_module_xyz\n")
    with pytest.raises(MobilecError, match=r"importing .*bad.py failed: ModuleNotFoundError"):
        load_model(f"{bad_import}:build", weights=tmp_path / "x.pt", data=digits)
    # a checkpoint with renamed keys: the error names them
    weights, ref = _save_tiny(model_file, tmp_path)
    renamed = {k.replace("conv.", "stem."): v for k, v in ref.state_dict().items()}
    torch.save(renamed, tmp_path / "renamed.pt")
    with pytest.raises(MobilecError, match=r"missing keys conv.bias, conv.weight; unexpected keys stem.bias"):
        load_model(f"{model_file}:build", weights=tmp_path / "renamed.pt", data=digits)
    # a pickle that would run code is refused
    torch.save({"w": torch.zeros(1), "act": nn.ReLU()}, tmp_path / "pickled.pt")
    with pytest.raises(MobilecError, match=r"refused for safety"):
        load_model(f"{model_file}:build", weights=tmp_path / "pickled.pt", data=digits)
    # output shape must match the data's classes
    with pytest.raises(MobilecError, match=r"outputs \(1, 10\) for one image, expected \(1, 3\)"):
        load_model(f"{model_file}:build", weights=weights, data=_three_class(digits))


def _three_class(ds):
    from dataclasses import replace

    keep_tr, keep_te = ds.y_train < 3, ds.y_test < 3
    return replace(ds, x_train=ds.x_train[keep_tr], y_train=ds.y_train[keep_tr], x_test=ds.x_test[keep_te],
                   y_test=ds.y_test[keep_te], classes=ds.classes[:3])


def test_load_model_pt2(model_file: Path, tmp_path: Path, digits) -> None:
    _, ref = _save_tiny(model_file, tmp_path)
    x = digits.x_test[:1]
    path = tmp_path / "tiny.pt2"
    torch.export.save(torch.export.export(ref, (x,)), str(path))
    model, info = load_model(str(path), weights=None, data=digits)
    assert info.source == "exported" and torch.allclose(model(x), ref(x))
    with pytest.raises(MobilecError, match=r"carries its own weights"):
        load_model(str(path), weights=tmp_path / "tiny.pt", data=digits)
    with pytest.raises(MobilecError, match=r"does not exist"):
        load_model(str(tmp_path / "none.pt2"), weights=None, data=digits)
    (tmp_path / "junk.pt2").write_bytes(b"junk")
    with pytest.raises(MobilecError, match=r"cannot load exported program"):
        load_model(str(tmp_path / "junk.pt2"), weights=None, data=digits)


def test_load_zoo_with_own_weights(tmp_path: Path, digits) -> None:
    model = build_model("mobilenet_v1", pretrained=False)
    torch.save(model.state_dict(), tmp_path / "v1.pt")
    loaded, info = load_model("mobilenet_v1", weights=tmp_path / "v1.pt", data=digits)
    assert info.source == "zoo" and info.weights == str(tmp_path / "v1.pt")
    x = digits.x_test[:2]
    assert torch.allclose(loaded(x), model.eval()(x))


# --------------------------------------------------------------------------- shipped checkpoints


SHIPPED = [name for name, e in ZOO.items() if e.weights_file]


# The shipped checkpoints are trained by bench/train_zoo.py (command and accuracy in the JSON beside each).


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_provenance(name: str) -> None:
    entry = ZOO[name]
    pt = WEIGHTS_DIR / entry.weights_file
    if not pt.is_file():
        if name == "mobilenet_v2":
            pytest.fail(f"the default model's checkpoint {pt} is missing")
        pytest.skip(f"{pt.name} not trained yet")
    meta = json.loads(pt.with_suffix(".json").read_text())
    for key in ("test_accuracy", "params", "train_seconds", "epochs", "machine", "command"):
        assert key in meta, key
    assert meta["params"] == count_params(build_model(name, pretrained=False))
    assert pt.stat().st_size < 10_000_000
    model = build_model(name)  # loads the shipped weights
    assert not model.training


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_default_model_accuracy() -> None:
    from mobilec.train import evaluate

    data = load_dataset("fashion-mnist")
    model, info = load_model(None, weights=None, data=data)
    assert info.name == "mobilenet_v2" and info.source == "zoo"
    acc = evaluate(model, data)
    assert acc >= 0.92
    meta = json.loads((WEIGHTS_DIR / "mobilenet_v2_fashion_mnist.json").read_text())
    assert acc == pytest.approx(meta["test_accuracy"], abs=0.002)  # the JSON reports what we measure
    with pytest.raises(MobilecError, match=r"trained on fashion-mnist, not on digits"):
        load_model("mobilenet_v2", weights=None, data=load_dataset("digits"))
