"""Non-zero constant pads (negative padding after h-swish) as zero pad + border constant for LiteRT."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from export_models import calibration, digits
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mobilec.export.litert_pads import _border, constant_pads_as_masks
from mobilec.models.zoo import HSWISH_MIN, PaddedConv2d


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=3, max_size=4), pads=st.lists(st.integers(0, 3), min_size=2, max_size=4),
       value=st.floats(-4, 4, allow_nan=False).filter(lambda v: v != 0), seed=st.integers(0, 2**16))
def test_zero_pad_plus_border_is_the_constant_pad_bit_for_bit(shape, pads, value, seed) -> None:
    pads = pads[: 2 * (len(pads) // 2)]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 10
    want = F.pad(x, pads, value=value)
    got = F.pad(x, pads) + _border(want.shape, pads, value)
    assert torch.equal(got, want)


class _HswishNet(nn.Module):
    """conv, h-swish, a depthwise conv with -3/8 negative padding (zoo PaddedConv2d), pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.Hardswish())
        self.dw = nn.Sequential(PaddedConv2d(16, 16, 3, groups=16, pad_value=HSWISH_MIN, bias=True), nn.Hardswish())
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dw(self.stem(x)).mean((2, 3)))


def test_the_rewritten_graph_computes_the_same_and_a_model_without_pads_is_left_alone() -> None:
    torch.manual_seed(0)
    model = _HswishNet().eval()
    x = torch.randn(4, 1, 8, 8)
    graph, n = constant_pads_as_masks(model, x[:1])
    assert n == 1
    assert "constant_pad_nd" in graph.code and ", -0.375" not in graph.code  # the pad value is 0 now
    with torch.no_grad():  # a whole batch too: the PT2E reference and the verification run batches through it
        assert torch.equal(graph(x), model(x))
    plain = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()).eval()
    assert constant_pads_as_masks(plain, x[:1]) == (plain, 0)


@pytest.mark.slow
@pytest.mark.parametrize("int8", [False, True])
def test_litert_export_has_no_padv2_and_verifies(int8: bool, tmp_path) -> None:
    from mobilec.export import get_exporter
    from mobilec.export.tflite import tflite_ops_and_partitions
    from mobilec.export.verify import verify_artifact
    from mobilec.quant import QuantPlan
    from mobilec.recipe import VerifySpec

    torch.manual_seed(0)
    model = _HswishNet().eval()
    art = get_exporter("tflite").export(model, (digits().x_test[:1],), tmp_path / "m.tflite",
                                        quant=QuantPlan() if int8 else None, calibration=calibration() if int8 else ())
    ops, partitions = tflite_ops_and_partitions(art.path)
    assert "PADV2" not in ops and ops.get("PAD") == 1
    assert any("1 constant pad(s) with a non-zero value written as a zero PAD" in n for n in art.notes)
    assert art.delegation["xnnpack_partitions"] == partitions  # the report and the run summary show it
    assert any(f"the XNNPACK delegate takes them in {partitions} partition(s)" in n for n in art.notes)
    if not int8:  # fp32: the whole graph in XNNPACK (int8 HARD_SWISH is not in the delegate)
        assert partitions == 1
    spec = VerifySpec(min_top1_agreement=0.99, min_snr_db=30) if int8 else VerifySpec(min_top1_agreement=1.0, max_abs_error=1e-4)
    result = verify_artifact(art, digits(), spec, show_progress=False)
    assert result.passed, result.failures
