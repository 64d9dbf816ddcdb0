"""Binary lowering: the int8 ExecuTorch / LiteRT artifacts of a TAC model equal the eager binary model."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from mobilec.errors import ExportError, MobilecError
from mobilec.passes.binarize import BinaryConv2d, TACPass
from mobilec.passes.binary_export import SIGN_SCALE, lower_binary, quantize_binary

pytestmark = pytest.mark.slow


def _tiny_net() -> torch.nn.Module:
    """MobileNetV2-like, for 8×8 digits: a conv stem, two residual inverted blocks (the second's expand
    conv reads a residual *sum* of int8 outputs), conv-bn-relu, max-pool and two FC layers."""
    from mobilec.models.zoo import InvertedResidual, conv_bn_act

    nn = torch.nn
    return nn.Sequential(
        conv_bn_act(1, 8, 3), InvertedResidual(8, 8, 1, 2), InvertedResidual(8, 8, 1, 2),
        conv_bn_act(8, 16, 1, act=nn.ReLU), nn.MaxPool2d(2),
        nn.Flatten(1), nn.Linear(256, 32), nn.ReLU(), nn.Linear(32, 10),
    )


@pytest.fixture(scope="module")
def tac_model(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    from mobilec.context import Context
    from mobilec.data import load_dataset
    from mobilec.report import RunReport
    from mobilec.train import fit

    torch.manual_seed(0)
    ds = load_dataset("digits").subset(480, 200, seed=1)
    fp = _tiny_net()
    fit(fp, ds, epochs=4, lr=0.05, progress=False, augment=False)
    fp.eval()
    ctx = Context(data=ds, workdir=tmp_path_factory.mktemp("tac"), report=RunReport(recipe="t", model={}, data={}),
                  example_inputs=(ds.x_test[:1],), teacher=copy.deepcopy(fp).eval(), show_progress=False)
    model = TACPass(fc_sparsity=0.75, fc_bits=4, prune_steps=1, epochs_binary=1, epochs_per_prune_step=1, epochs_quant=1,
                    calibration_batches=4).apply(copy.deepcopy(fp), ctx)
    return ds, model.eval(), ctx


def _artifact_logits(path: Path, x: torch.Tensor) -> np.ndarray:
    from mobilec.runtimes import open_artifact

    session = open_artifact(path)
    return np.concatenate([session.run(x[i:i + 1].numpy()) for i in range(len(x))])


def _attr(module: torch.nn.Module, target: str) -> object:
    obj: object = module
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def test_reference_simulation_equals_eager_binary_model(tac_model) -> None:
    ds, model, ctx = tac_model
    x = ds.x_test
    converted = quantize_binary(model, ctx.example_inputs, ctx.lowering.calibration)
    with torch.no_grad():
        eager, sim = model(x), converted(x)
    assert (eager.argmax(1) == sim.argmax(1)).float().mean() >= 0.99
    # the binary convs' int8 weights are ±127 (one bit) with one scale per output channel
    consts = [_attr(converted, str(n.target)) for n in converted.graph.nodes if n.op == "get_attr"]
    binary = [w for w in consts if isinstance(w, torch.Tensor) and w.dtype == torch.int8 and w.dim() > 1
              and set(w.unique().tolist()) <= {-127, 127}]
    assert len(binary) == sum(isinstance(m, BinaryConv2d) for m in model.modules())


@pytest.mark.parametrize("target", ["executorch", "tflite"])
def test_artifact_equals_eager_binary_model(tac_model, tmp_path: Path, target: str) -> None:
    ds, model, ctx = tac_model
    out = tmp_path / ("model.pte" if target == "executorch" else "model.tflite")
    art = lower_binary(model, target, ctx.example_inputs, out, calibration=ctx.lowering.calibration)
    assert out.is_file() and art.size_bytes == out.stat().st_size and art.reference is model
    x = ds.x_test
    got = _artifact_logits(out, x)
    with torch.no_grad():
        ref = model(x).numpy()
    # the eager model rounds every layer output where the artifact does (residual sums included) and
    # adds the int32 bias rounding: the same class on every test image, and not one int8 step apart
    agreement = float((got.argmax(1) == ref.argmax(1)).mean())
    assert agreement == 1.0, agreement
    assert np.abs(got - ref).max() < 1e-3 * np.abs(ref).max()
    kinds = {layer.name: layer for layer in art.layers}
    for name, m in model.named_modules():
        if isinstance(m, BinaryConv2d):
            layer = kinds[name]
            assert layer.kind.startswith("binary_") and layer.info_bits == 1
            assert (layer.stored, layer.executed) == ("int8", "int8")
    pruned = [layer for layer in art.layers if layer.kind.startswith("pruned_")]
    assert len(pruned) == 2 and all(layer.packed_bytes < layer.stored_bytes for layer in pruned)
    assert any("rounded in the eager model" in n for n in art.notes)
    assert any("xnor-popcount" in n for n in art.notes) and any("CSR" in n for n in art.notes)
    if target == "executorch":
        assert not art.delegation["not_delegated"], art.delegation


def test_sign_input_scale_and_bad_targets(tac_model, tmp_path: Path) -> None:
    _ds, model, ctx = tac_model
    assert SIGN_SCALE == 1 / 127
    with pytest.raises(ExportError, match="onnx"):
        lower_binary(model, "onnx", ctx.example_inputs, tmp_path / "m.onnx", calibration=ctx.lowering.calibration)
    with pytest.raises(MobilecError, match="calibration"):
        lower_binary(model, "executorch", ctx.example_inputs, tmp_path / "m.pte", calibration=())
    with pytest.raises(MobilecError, match="without binary"):
        lower_binary(torch.nn.Linear(64, 10), "executorch", ctx.example_inputs, tmp_path / "m.pte",
                     calibration=ctx.lowering.calibration)


def test_checkpoint_keeps_the_output_roundings(tac_model, tmp_path: Path) -> None:
    """compressed.pt (a state dict) restores the roundings; a reloaded model exports to the same artifact numerics."""
    from mobilec.passes.binarize import restructure_like
    from mobilec.passes.prune import has_output_rounding

    ds, model, ctx = tac_model
    summary = ctx.report.passes[-1].summary
    assert summary["unaligned_inputs"] >= 1  # the residual sums: not alignable, rounded instead
    assert summary["unrounded_outputs"] == 0 and summary["rounded_outputs"] == 9  # 7 binary convs + 2 FCs
    hooked = sorted(n for n, m in model.named_modules() if has_output_rounding(m))
    assert "2.conv.3" in hooked and "3.2" in hooked  # a linear bottleneck's BatchNorm, a ReLU
    path = tmp_path / "compressed.pt"
    torch.save(model.state_dict(), path)
    sd = torch.load(path, weights_only=True)
    again = restructure_like(_tiny_net(), sd)
    again.load_state_dict(sd)
    again.eval()
    assert sorted(n for n, m in again.named_modules() if has_output_rounding(m)) == hooked
    deltas = {n: m.bias_delta for n, m in model.named_modules() if "bias_delta" in m._buffers}
    assert len(deltas) == 9 and "2.conv.3" in deltas and "8" in deltas  # BatchNorms folded into convs; the logits layer
    assert any(float(d.abs().max()) > 0 for d in deltas.values())
    assert all(torch.equal(again.get_submodule(n).bias_delta, d) for n, d in deltas.items())
    x = ds.x_test
    with torch.no_grad():
        ref = model(x)
        assert torch.equal(again(x), ref)
    out = tmp_path / "again.pte"
    lower_binary(again, "executorch", ctx.example_inputs, out, calibration=ctx.lowering.calibration)
    got = _artifact_logits(out, x)
    assert float((got.argmax(1) == ref.argmax(1).numpy()).mean()) == 1.0


def test_kept_depthwise_convs_stay_float_and_the_artifact_still_matches(tac_model, tmp_path: Path) -> None:
    """``keep_depthwise``: every depthwise conv stays a float conv (eager and artifact); the rest is binary."""
    from mobilec.context import Context
    from mobilec.report import RunReport

    ds, _model, ctx = tac_model
    ctx2 = Context(data=ds, workdir=tmp_path, report=RunReport(recipe="t", model={}, data={}),
                   example_inputs=ctx.example_inputs, teacher=ctx.teacher, show_progress=False)
    model = TACPass(keep_depthwise=True, fc_sparsity=0.75, fc_bits=4, prune_steps=1, epochs_binary=1,
                    epochs_per_prune_step=1, epochs_quant=1, calibration_batches=4
                    ).apply(copy.deepcopy(ctx.teacher), ctx2).eval()
    depthwise = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 2
    assert not any(isinstance(model.get_submodule(n), BinaryConv2d) for n in depthwise)
    assert sum(isinstance(m, BinaryConv2d) for m in model.modules()) == 5  # expand + project convs, conv 3
    summary = ctx2.report.passes[-1].summary
    assert summary["kept"].count("depthwise conv (keep_depthwise = true)") == 2
    out = tmp_path / "model.pte"
    art = lower_binary(model, "executorch", ctx.example_inputs, out, calibration=ctx2.lowering.calibration)
    got = _artifact_logits(out, ds.x_test)
    with torch.no_grad():
        ref = model(ds.x_test).numpy()
    assert float((got.argmax(1) == ref.argmax(1)).mean()) >= 0.995
    stored = {layer.name: layer.stored for layer in art.layers}
    assert all(stored[n] == "fp32" for n in depthwise), stored
