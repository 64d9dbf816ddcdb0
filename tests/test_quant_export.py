"""DuQ → integer artifacts: the deploy graph equals the eager fake-quant model, and so do the real runtimes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_duq import quantized_tiny, randomize_bn
from torch import nn

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


def expected_containers(qm: torch.nn.Module, by: dict, pointwise_fc: bool = False) -> dict[str, str]:
    """The smallest container each runtime executes with the eager model's integers: int4 for <= 4-bit
    linear weights (and <= 4-bit 1x1 stride-1 convs where LiteRT runs them as FULLY_CONNECTED:
    ``pointwise_fc``), int8 for every other conv (neither XNNPACK nor LiteRT runs int4 conv filters exactly)."""
    modules = dict(qm.named_modules())

    def int4(module: torch.nn.Module) -> bool:
        return isinstance(module, QLinear) or (pointwise_fc and is_pointwise(module))

    return {name: "int4" if int4(modules[name]) and layer.info_bits <= 4 else "int8" for name, layer in by.items()}


def chose_fully_connected(art) -> bool:
    """Whether the LiteRT lowering kept its 1x1 convs as FULLY_CONNECTED (its note says which form and why)."""
    fc = any("run as FULLY_CONNECTED over the map's pixels" in n for n in art.notes)
    kept = any(n.startswith("1x1 convs kept as CONV_2D") for n in art.notes)
    assert fc != kept or art.target == "executorch"
    return fc


@pytest.mark.parametrize(("bits", "per_channel"), [(4, False), (3, True), (2, False), (8, False)])
def test_deploy_graph_equals_the_eager_model(bits: int, per_channel: bool) -> None:
    qm = fold_batchnorm(quantized_tiny(bits, per_channel=per_channel))
    x = digits_like()
    for fold, pointwise, friendly in ((True, False, False), (False, False, False), (False, True, False),
                                      (False, False, True), (False, True, True)):
        deploy, infos = build_deploy_module(qm, fold_weights=fold, pointwise_as_linear=pointwise, delegate_friendly=friendly)
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
    assert {name: layer.stored for name, layer in by.items()} == expected_containers(qm, by, chose_fully_connected(art))
    assert all(layer.executed == "int8" for layer in art.layers)
    assert by["dw.0"].info_bits == 4 and by["stem.0"].info_bits == 8
    assert by["dw.0"].packed_bytes < by["dw.0"].stored_bytes  # int8 codes of 4-bit information
    # as FULLY_CONNECTED, LiteRT stores the 4-bit 1x1 conv packed (int4 is its physical limit at 4 bits)
    assert (by["pw.0"].packed_bytes == by["pw.0"].stored_bytes) == chose_fully_connected(art)
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
    containers = expected_containers(qm, by, chose_fully_connected(art))
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


@pytest.mark.slow
@pytest.mark.parametrize("bits", [4, 3])
def test_litert_runs_1x1_convs_as_int4_fully_connected_with_the_eager_integers(bits: int, tmp_path) -> None:
    """The FULLY_CONNECTED form of the <= 4-bit 1x1 convs (what lower_duq keeps for LiteRT when it is smaller
    and adds no transposes: mobilenet_v2) stores them as INT4 and computes the eager integers."""
    from mobilec.export.layers import tflite_records
    from mobilec.export.tflite import tflite_ops_and_partitions
    from mobilec.passes.quant.lowering import _lower_tflite

    qm = fold_batchnorm(quantized_tiny(bits))
    x = digits_like()
    deploy, _ = build_deploy_module(qm, fold_weights=False, pointwise_as_linear=True)
    path = tmp_path / "fc.tflite"
    art = _lower_tflite(deploy, x[:1], path)
    assert_runs_the_eager_integers(path, qm, x)
    assert tflite_ops_and_partitions(path)[0].get("FULLY_CONNECTED", 0) == 6  # the five 1x1 convs and the head
    assert sorted(r.stored for r in tflite_records(path)).count("int4") == 5  # pw, expand, se1, se2, project
    assert any("INT4 weights: 5 FULLY_CONNECTED" in n for n in art["notes"])
    # lower_duq converts both forms and says which it kept, with both sizes and the TRANSPOSE ops it added
    chosen = lower_duq(qm, "tflite", (x[:1],), tmp_path / "m.tflite")
    note = next(n for n in chosen.notes if "TRANSPOSE" in n and "1x1" in n)
    assert "B against" in note and "B as CONV_2D" in note
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fc.tflite", "m.tflite"]  # no .part files left


class _GatedBlock(nn.Module):
    """mobilenet_v3_small's first block in small: a ReLU conv, a squeeze-excite gate on its output, a 1x1 projection."""

    def __init__(self) -> None:
        super().__init__()
        self.dw = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.se1, self.se2 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.pw = nn.Sequential(nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dw(x)
        s = torch.nn.functional.hardsigmoid(self.se2(torch.relu(self.se1(x.mean((2, 3), keepdim=True)))))
        return self.head(self.pw(x * s).mean((2, 3)))


@pytest.mark.slow
def test_a_gated_1x1_conv_is_found_and_the_litert_export_still_runs_the_eager_integers(tmp_path) -> None:
    """The pattern litert-torch's layout pass failed on (a gate times a conv output into the linear form) is
    detected, and whatever form the LiteRT lowering keeps computes the eager integers."""
    from mobilec.passes.quant.lowering import _gated_pointwise
    from mobilec.passes.quant.qmodules import convert_to_duq, init_activation_quantizers, init_weight_quantizers

    torch.manual_seed(0)
    qm = convert_to_duq(randomize_bn(_GatedBlock()), weight_bits=4, act_bits=4, first_last_bits=8)
    init_activation_quantizers(qm, torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0)))
    init_weight_quantizers(qm)
    qm = fold_batchnorm(qm.eval())
    deploy, _ = build_deploy_module(qm, fold_weights=False, pointwise_as_linear=True)
    rewritten = [n for n, m in deploy.named_modules() if isinstance(m, DeployPointwise)]
    assert set(rewritten) == {"se1", "se2", "pw.0"}
    assert _gated_pointwise(deploy, rewritten) == {"pw.0"}  # se1/se2 see the pooled map, not a product
    x = digits_like()
    art = lower_duq(qm, "tflite", (x[:1],), tmp_path / "g.tflite")
    assert any("TRANSPOSE" in n and "1x1" in n for n in art.notes)
    assert_runs_the_eager_integers(tmp_path / "g.tflite", qm, x)


def test_onnx_is_refused_with_a_fix(tmp_path) -> None:
    qm = fold_batchnorm(quantized_tiny(4))
    with pytest.raises(MobilecError, match="executorch, tflite"):
        lower_duq(qm, "onnx", (digits_like()[:1],), tmp_path / "m.onnx")


@pytest.mark.slow
def test_litert_graph_is_one_xnnpack_partition_and_keeps_the_eager_integers(tmp_path) -> None:
    """The LiteRT form XNNPACK's delegate takes whole: the clips on a consumer's grid are fused activations
    (relabeled tensors), the fp32 re-quantization clips in codes, the h-swish input's -3/8 border is the conv's
    zero padding. Written plainly, the same model splits into several partitions (int8 MINIMUM, fp32 PADV2)."""
    from mobilec.passes.quant.lowering import _lower_tflite

    qm = fold_batchnorm(quantized_tiny(4))
    x = digits_like()
    plain, _ = build_deploy_module(qm, fold_weights=False)
    split = _lower_tflite(plain, x[:1], tmp_path / "plain.tflite")["delegation"]
    assert split["xnnpack_partitions"] > 1 and "PADV2" in split["ops"]
    friendly, _ = build_deploy_module(qm, fold_weights=False, delegate_friendly=True)
    # the h-swish-fed depthwise conv: F.pad(-3/8) then an unpadded conv, now the conv's own zero padding
    assert plain.get_submodule("dw2.0.conv").padding == (0, 0) and "pad" in str(plain.code)
    assert friendly.get_submodule("dw2.0.conv").padding == (1, 1) and "pad" not in str(friendly.code)
    art = lower_duq(qm, "tflite", (x[:1],), tmp_path / "m.tflite")
    assert art.delegation["xnnpack_partitions"] == 1
    assert "PADV2" not in art.delegation["ops"] and art.delegation["ops"]["MINIMUM"] < split["ops"]["MINIMUM"]
    assert any("the XNNPACK delegate takes them in 1 partition(s)" in n for n in art.notes)
    assert_runs_the_eager_integers(tmp_path / "m.tflite", qm, x)


def test_executorch_form_pads_the_hswish_input_in_the_conv_with_the_same_values() -> None:
    """``offset_pads_in_conv`` alone (what the ExecuTorch lowering uses): the -3/8 border becomes conv padding after
    the quantizer, nothing else changes (no relabeled clips: mobilenet_v2's .pte stays byte for byte)."""
    qm = fold_batchnorm(quantized_tiny(4))
    x = digits_like()
    plain, _ = build_deploy_module(qm, fold_weights=True, int4_linear=True)
    padded, _ = build_deploy_module(qm, fold_weights=True, int4_linear=True, offset_pads_in_conv=True)
    assert plain.get_submodule("dw2.0.conv").padding == (0, 0) and padded.get_submodule("dw2.0.conv").padding == (1, 1)
    assert "pad" in str(plain.code) and "pad" not in str(padded.code)
    assert all(plain.get_submodule(n).out_q == padded.get_submodule(n).out_q for n in ("dw.0", "se1", "pw.0"))
    with torch.no_grad():
        assert torch.equal(plain(x), padded(x))
