"""DuQ → integer artifacts: the deploy graph equals the eager fake-quant model, and so do the real runtimes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_duq import quantized_tiny

from mobilec.errors import MobilecError
from mobilec.passes.quant.lowering import DeployPointwise, build_deploy_module, is_pointwise, lower_duq
from mobilec.passes.quant.qmodules import QLinear, fold_batchnorm


def digits_like(n: int = 120, seed: int = 3) -> torch.Tensor:
    from mobilec.data import load_dataset

    return load_dataset("digits").x_test[:n].clone() if seed == 3 else torch.randn(n, 1, 8, 8)


def assert_runs_the_eager_integers(path, qm: torch.nn.Module, x: torch.Tensor) -> None:
    """The artifact in its runtime gives the eager fake-quant model's classes and logits (float ties aside)."""
    from mobilec.runtimes import open_artifact

    session = open_artifact(path)
    out = np.concatenate([session.run(x[i:i + 1].numpy()) for i in range(len(x))])
    with torch.no_grad():
        ref = qm(x).numpy()
    assert (out.argmax(1) == ref.argmax(1)).mean() == 1.0
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()


def expected_containers(qm: torch.nn.Module, by: dict, target: str) -> dict[str, str]:
    """The smallest container each runtime executes with the eager model's integers: int4 for <= 4-bit
    linear weights (and, on LiteRT, <= 4-bit 1x1 stride-1 convs, which it runs as FULLY_CONNECTED), int8
    for every other conv (neither XNNPACK nor LiteRT runs int4 conv filters exactly)."""
    modules = dict(qm.named_modules())

    def int4(module: torch.nn.Module) -> bool:
        return isinstance(module, QLinear) or (target == "tflite" and is_pointwise(module))

    return {name: "int4" if int4(modules[name]) and layer.info_bits <= 4 else "int8" for name, layer in by.items()}


@pytest.mark.parametrize(("bits", "per_channel"), [(4, False), (3, True), (2, False), (8, False)])
def test_deploy_graph_equals_the_eager_model(bits: int, per_channel: bool) -> None:
    qm = fold_batchnorm(quantized_tiny(bits, per_channel=per_channel))
    x = digits_like()
    for fold, pointwise in ((True, False), (False, False), (False, True)):
        deploy, infos = build_deploy_module(qm, fold_weights=fold, pointwise_as_linear=pointwise)
        with torch.no_grad():
            ref, out = qm(x), deploy(x)
        assert torch.equal(ref.argmax(1), out.argmax(1))
        assert float((ref - out).abs().max()) <= 1e-5 * float(ref.abs().max())
        as_linear = {n for n, m in deploy.named_modules() if isinstance(m, DeployPointwise)}
        # the 1x1 stride-1 convs with <= 4-bit weights: pw, expand, project and the squeeze-excite pair
        assert as_linear == ({"pw.0", "expand.0", "se1", "se2", "project.0"} if pointwise and bits <= 4 else set())
    assert {i.name for i in infos} >= {"stem.0", "dw2.0.conv", "head"}
    body = [i for i in infos if i.name not in ("stem.0", "head")]
    assert all(i.weight_bits == bits and i.act_bits == bits for i in body)


def test_lowering_needs_a_folded_duq_model() -> None:
    with pytest.raises(MobilecError, match="not folded"):
        build_deploy_module(quantized_tiny(4))
    with pytest.raises(MobilecError, match="not a DuQ model"):
        build_deploy_module(torch.fx.symbolic_trace(torch.nn.Linear(2, 2)))


@pytest.mark.slow
@pytest.mark.parametrize("target", ["executorch", "tflite"])
def test_artifact_runs_the_same_integers(target: str, tmp_path) -> None:
    qm = fold_batchnorm(quantized_tiny(4))
    x = digits_like()
    path = tmp_path / ("m.pte" if target == "executorch" else "m.tflite")
    art = lower_duq(qm, target, (x[:1],), path)
    assert path.is_file() and art.size_bytes == path.stat().st_size and art.reference is qm
    assert_runs_the_eager_integers(path, qm, x)
    # every conv/linear is stored as integer codes on its DuQ grid and executed int8
    names = {layer.name for layer in art.layers}
    assert names == {"stem.0", "dw.0", "pw.0", "expand.0", "dw2.0.conv", "se1", "se2", "project.0", "head"}
    by = {layer.name: layer for layer in art.layers}
    assert {name: layer.stored for name, layer in by.items()} == expected_containers(qm, by, target)
    assert all(layer.executed == "int8" for layer in art.layers)
    assert by["dw.0"].info_bits == 4 and by["stem.0"].info_bits == 8
    assert by["dw.0"].packed_bytes < by["dw.0"].stored_bytes  # int8 codes of 4-bit information
    # LiteRT stores the 4-bit 1x1 conv packed (int4 is its physical limit at 4 bits); XNNPACK as int8 codes
    assert (by["pw.0"].packed_bytes == by["pw.0"].stored_bytes) == (target == "tflite")
    assert not [n for n in art.notes if n.startswith("layer table")]
    if target == "executorch":  # every conv/linear and every quantize/dequantize runs inside XNNPACK
        left = set(art.delegation["not_delegated"])
        assert not {op for op in left if "conv" in op or "linear" in op or "quantize" in op}


@pytest.mark.slow
@pytest.mark.parametrize(("bits", "target"), [(4, "executorch"), (3, "executorch"), (4, "tflite"), (3, "tflite")])
def test_low_bit_linear_is_stored_as_int4(bits: int, target: str, tmp_path) -> None:
    """A <= 4-bit linear's codes are stored packed (XNNPACK qcint4, LiteRT INT4) and still compute the eager integers."""
    qm = fold_batchnorm(quantized_tiny(bits, first_last_bits=None))
    x = digits_like()
    path = tmp_path / ("m.pte" if target == "executorch" else "m.tflite")
    art = lower_duq(qm, target, (x[:1],), path)
    by = {layer.name: layer for layer in art.layers}
    head = by["head"]
    assert (head.stored, head.executed, head.info_bits) == ("int4", "int8", bits)
    # 16 inputs: exactly half a byte a weight, nothing padded; 3-bit codes would pack tighter still
    assert head.stored_bytes - head.packed_bytes == head.params // 2 - -(-head.params * bits // 8)
    containers = expected_containers(qm, by, target)
    assert {name: layer.stored for name, layer in by.items()} == containers
    assert not [n for n in art.notes if n.startswith("layer table")]
    n4 = sum(c == "int4" for c in containers.values())
    assert any(f"{n4} layer{'s' * (n4 > 1)} as int4 codes" in n for n in art.notes)
    if target == "executorch":  # the same model with int8 containers: the file shrinks by half the head's weights
        from mobilec.passes.quant.lowering import _lower_executorch

        deploy, _ = build_deploy_module(qm, int4_linear=False)
        _lower_executorch(deploy, x[:1], tmp_path / "m8.pte")
        assert (tmp_path / "m8.pte").stat().st_size - art.size_bytes >= head.params // 2
    else:
        assert any(f"INT4 weights: {n4} FULLY_CONNECTED filter(s) with codes in [-8, 7] stored as INT4" in n for n in art.notes)
    assert_runs_the_eager_integers(path, qm, x)


def test_onnx_is_refused_with_a_fix(tmp_path) -> None:
    qm = fold_batchnorm(quantized_tiny(4))
    with pytest.raises(MobilecError, match="executorch, tflite"):
        lower_duq(qm, "onnx", (digits_like()[:1],), tmp_path / "m.onnx")
