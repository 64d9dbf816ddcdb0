"""AIWQ: the per-channel Gaussian KL, its EMA, the ranking and PROFIT's freezing groups."""

from __future__ import annotations

import math

import pytest
import torch
from test_duq import quantized_tiny

from mobilec.passes.quant.aiwq import AIWQMeter, freeze_groups, gaussian_kl, plot_aiwq
from mobilec.passes.quant.qmodules import QConv2d, quant_layers


def kl_closed_form(mu: float, s: float, mu_o: float, s_o: float) -> float:
    return math.log(s_o / s) + (s**2 + (mu - mu_o) ** 2) / (2 * s_o**2) - 0.5


def test_gaussian_kl_matches_the_closed_form_per_channel() -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 1, 50, 50, generator=g)
    base = (base - base.mean()) / base.std()  # unit mean/std over N·H·W
    y = torch.cat([base * 2.0 + 1.0, base * 0.5 - 1.0], dim=1)
    y_old = torch.cat([base * 1.0 + 0.0, base * 0.5 - 0.5], dim=1)
    expected = (kl_closed_form(1.0, 2.0, 0.0, 1.0) + kl_closed_form(-1.0, 0.5, -0.5, 0.5)) / 2
    assert float(gaussian_kl(y, y_old)) == pytest.approx(expected, rel=1e-6)
    assert float(gaussian_kl(y, y)) == pytest.approx(0.0, abs=1e-12)


def test_zero_std_channels_are_skipped() -> None:
    g = torch.Generator().manual_seed(1)
    live = torch.randn(2, 1, 8, 8, generator=g)
    y = torch.cat([live, torch.zeros(2, 1, 8, 8)], dim=1)
    y_old = torch.cat([live * 1.5, torch.ones(2, 1, 8, 8)], dim=1)
    assert float(gaussian_kl(y, y_old)) == pytest.approx(float(gaussian_kl(live, live * 1.5)), rel=1e-9)
    assert gaussian_kl(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)) is None


def test_meter_updates_ema_drops_large_values_and_ranks() -> None:
    qm = quantized_tiny(4).train()
    convs = {n for n, m in quant_layers(qm) if isinstance(m, QConv2d)}
    meter = AIWQMeter(qm, momentum=0.5)
    assert set(meter.values) == convs  # Conv2d only, not Linear
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    layers = dict(quant_layers(qm))
    with meter, torch.no_grad():
        qm(x)  # first step: nothing to compare with yet
        assert all(v == 0.0 for v in meter.values.values())
        layers["dw.0"].weight.mul_(1.05)  # a small weight change: a small, kept KL
        layers["pw.0"].weight.mul_(-1.0)  # a flipped layer: a big KL, dropped (> 1)
        qm(x)
    assert meter.samples["dw.0"] == 1 and meter.values["dw.0"] > 0
    assert meter.dropped["pw.0"] == 1 and meter.values["pw.0"] == 0.0
    assert meter.values["stem.0"] == 0.0  # unchanged weights: KL 0
    assert meter.ranking()[0] == "dw.0"
    assert all(not m.keep_qinput for m in layers.values())  # hooks removed on exit


def test_freeze_groups_are_thirds_highest_first() -> None:
    ranking = [f"l{i}" for i in range(9)]
    assert freeze_groups(ranking) == (["l0", "l1", "l2"], ["l3", "l4", "l5"])
    assert freeze_groups(["a", "b"]) == ([], ["a"])


def test_plot_is_a_png(tmp_path) -> None:
    path = plot_aiwq({"a": 0.1, "b": 0.3, "c": 0.0}, tmp_path / "aiwq.png", title="t", frozen=(["b"], ["a"]))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.part"))


def test_squeeze_excite_linears_are_measured_as_the_1x1_convs_they_stand_for() -> None:
    """AIWQ covers convs, not classifier FC layers; the zoo v3's squeeze-excite Linear layers (1×1 convs on a
    1×1 map, marked conv1x1) are measured, get values during training, and can be ranked and frozen."""
    from mobilec.models.zoo import mobilenet_v3_small
    from mobilec.passes.quant.qmodules import QLinear, convert_to_duq, enable_quantizers, init_activation_quantizers, init_weight_quantizers

    torch.manual_seed(0)
    qm = convert_to_duq(mobilenet_v3_small(), weight_bits=4, act_bits=4)
    x = torch.randn(16, 1, 28, 28)
    init_activation_quantizers(qm, x)
    init_weight_quantizers(qm)
    enable_quantizers(qm, acts=True, weights=True)
    meter = AIWQMeter(qm)
    linears = {n for n, m in quant_layers(qm) if isinstance(m, QLinear)}
    se = {n for n in linears if ".fc" in n}
    assert len(se) == 18 and se <= set(meter.layers)
    assert not (linears - se) & set(meter.layers)  # the classifier's two Linear layers are not measured
    opt = torch.optim.SGD(qm.parameters(), lr=0.05)
    qm.train()
    with meter:
        for _ in range(3):
            opt.zero_grad()
            qm(x).square().mean().backward()
            opt.step()
    assert all(meter.samples[n] >= 1 for n in se)
    assert se & set(meter.ranking())
