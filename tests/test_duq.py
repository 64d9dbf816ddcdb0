"""DuQ quantizers (grids, gradients, init rules) and the conversion of float models into DuQ models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mobilec.errors import MobilecError
from mobilec.models.zoo import HSWISH_MIN, PaddedConv2d, mobilenet_v2, mobilenet_v3_small
from mobilec.passes.quant.duq import DuQuantizer, Int8FakeQuant, grid_levels
from mobilec.passes.quant.qmodules import (
    QConv2d,
    QLinear,
    accumulator_lsb,
    convert_to_duq,
    duq_plan,
    enable_quantizers,
    fold_batchnorm,
    init_activation_quantizers,
    init_weight_quantizers,
    quant_layers,
    set_act_bits,
    set_weight_bits,
    weight_sum,
)


class TinyNet(nn.Module):
    """Every DuQ case in a few hundred parameters: ReLU6, a residual add, h-swish with negative
    padding, a squeeze-excite gate, average pooling and a linear head (8×8 inputs)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.pw = nn.Sequential(nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.expand = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
        self.dw2 = nn.Sequential(PaddedConv2d(16, 16, 3, stride=2, groups=16, pad_value=HSWISH_MIN), nn.BatchNorm2d(16),
                                 nn.Hardswish())
        self.se1 = nn.Conv2d(16, 8, 1)
        self.se2 = nn.Conv2d(8, 16, 1)
        self.project = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.pw(self.dw(x))
        x = self.dw2(self.expand(x))
        s = F.hardsigmoid(self.se2(F.relu(self.se1(x.mean((2, 3), keepdim=True)))))
        x = self.project(x * s)
        return self.head(x.mean((2, 3)))


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return model.eval()


def quantized_tiny(bits: int = 4, *, per_channel: bool = False, seed: int = 0, first_last_bits: int | None = 8) -> nn.Module:
    torch.manual_seed(seed)
    qm = convert_to_duq(randomize_bn(TinyNet(), seed), weight_bits=bits, act_bits=bits, per_channel=per_channel,
                        first_last_bits=first_last_bits)
    init_activation_quantizers(qm, torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(seed)))
    init_weight_quantizers(qm)
    return qm.eval()


# ----------------------------------------------------------------------------- quantizer grids
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("kind", ["signed", "unsigned", "hswish"])
def test_grid_is_exact(kind: str, bits: int) -> None:
    q = DuQuantizer(kind, bits)
    q.set_range(torch.tensor(1.7), torch.tensor(0.9))
    a, c = float(q.a()), float(q.c())
    k = grid_levels(kind, bits)
    x = torch.linspace(-4, 4, 20001)
    y = q(x).detach().double()
    off = 3 / 8 if kind == "hswish" else 0.0
    codes = (y + off) * k / c
    assert torch.allclose(codes, codes.round(), atol=1e-4), "outputs must lie on c/k·integer (- 3/8)"
    levels = codes.round().unique()
    lo = -k if kind == "signed" else 0
    assert levels.min() == lo and levels.max() == k
    assert len(levels) == (2 * k + 1 if kind == "signed" else k + 1)
    assert len(levels) <= 2**bits
    # the reference formula, written out
    u = ((x.double() + off) / a).clamp(-1.0 if kind == "signed" else 0.0, 1.0)
    ref = c * torch.round(u * k) / k - off
    differ = (y - ref).abs() > 1e-6
    tie = ((u * k) - (u * k).floor() - 0.5).abs() < 1e-4  # float32 vs float64 may round a tie either way
    assert not (differ & ~tie).any()
    assert torch.all(y[1:] >= y[:-1] - 1e-9), "monotone"


def test_signed_4bit_has_15_levels_and_hswish_minimum_is_exact() -> None:
    q = DuQuantizer("signed", 4)
    q.set_range(torch.tensor(1.0))
    assert len(q(torch.linspace(-2, 2, 1001)).detach().unique()) == 15
    h = DuQuantizer("hswish", 4)
    h.set_range(torch.tensor(2.0), torch.tensor(1.3))
    assert float(h(torch.tensor(HSWISH_MIN))) == pytest.approx(HSWISH_MIN, abs=1e-7)  # negative padding is on the grid


@pytest.mark.parametrize("kind", ["signed", "unsigned", "hswish"])
def test_gradients_reach_a_and_c(kind: str) -> None:
    torch.manual_seed(0)
    q = DuQuantizer(kind, 4)
    q.set_range(torch.tensor(1.2), torch.tensor(0.8))
    x = (torch.randn(500) * 1.5).requires_grad_(True)
    g = torch.randn(500)
    (q(x) * g).sum().backward()
    assert q.a_raw.grad is not None and q.c_raw.grad is not None
    assert abs(float(q.a_raw.grad)) > 0 and abs(float(q.c_raw.grad)) > 0
    # closed form with a straight-through round
    a, c = float(q.a()), float(q.c())
    off = 3 / 8 if kind == "hswish" else 0.0
    lo = -1.0 if kind == "signed" else 0.0
    k = q.levels
    u = (x.detach() + off) / a
    inside = (u > lo) & (u < 1)
    r = torch.round(u.clamp(lo, 1) * k) / k
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731  d softplus / d raw
    grad_c = float((g * r).sum()) * sig(float(q.c_raw))
    grad_a = float((g * c * (-u / a) * inside).sum()) * sig(float(q.a_raw))
    assert float(q.c_raw.grad) == pytest.approx(grad_c, rel=1e-4)
    assert float(q.a_raw.grad) == pytest.approx(grad_a, rel=1e-4)
    assert torch.allclose(x.grad, g * (c / a) * inside, atol=1e-6)


def test_activation_init_is_95th_percentile_of_positive_values() -> None:
    x = torch.cat([torch.zeros(1000), torch.arange(1, 101).float()])
    q = DuQuantizer("unsigned", 4)
    v = q.init_activation(x)  # (2^-12 above the observed value, off the data's rounding ties)
    assert v == pytest.approx(95.0, rel=1e-3)
    assert float(q.a()) == pytest.approx(95.0, rel=1e-3) and float(q.c()) == pytest.approx(95.0, rel=1e-3)
    q6 = DuQuantizer("unsigned", 4)
    assert q6.init_activation(x, cap=6.0) == pytest.approx(6.0, rel=1e-3)  # ReLU6 caps at 6
    s = DuQuantizer("signed", 4)
    assert s.init_activation(-x) == pytest.approx(95.0, rel=1e-3)  # |x| for signed tensors
    h = DuQuantizer("hswish", 4)
    assert h.init_activation(x - 3 / 8) == pytest.approx(95.0, rel=1e-3)  # x + 3/8 for h-swish


def test_p95_init_subsamples_the_positive_values_of_a_big_batch() -> None:
    """Recipes pinned to p95 reproduce their rows: above max_samples the percentile is taken over a
    seeded subsample of the positive values (not of all values)."""
    torch.manual_seed(0)
    x = torch.relu(torch.randn(3_000_000))
    v = x[x > 0]
    sub = v[torch.randint(0, v.numel(), (1 << 20,), generator=torch.Generator().manual_seed(0))]
    expected = float(sub.kthvalue(math.ceil(0.95 * sub.numel())).values) * (1.0 + 2.0**-12)
    assert DuQuantizer("unsigned", 4).init_activation(x) == expected


@pytest.mark.parametrize("kind", ["signed", "unsigned", "hswish"])
def test_mse_activation_init_beats_the_percentile_and_widens_with_bits(kind: str) -> None:
    """The least-squares clip quantizes a heavy-tailed batch with less error than DuQ's p95 clip or
    the max, and more bits move it out (fewer steps to spread over the range)."""
    torch.manual_seed(0)
    x = torch.distributions.Laplace(0.0, 1.0).sample((20000,))
    x = x if kind == "signed" else x.abs() - (3 / 8 if kind == "hswish" else 0.0)

    def mse(q: DuQuantizer) -> float:
        return float((q(x) - x).pow(2).mean())

    errors, clips = {}, {}
    for bits in (4, 8):
        for rule in ("p95", "mse"):
            q = DuQuantizer(kind, bits)
            clips[bits, rule] = q.init_activation(x, rule=rule)
            errors[bits, rule] = mse(q)
        top = DuQuantizer(kind, bits)
        top.set_range(torch.tensor(float((x + (3 / 8 if kind == "hswish" else 0)).abs().max())))
        assert errors[bits, "mse"] < min(errors[bits, "p95"], mse(top)), (bits, errors)
    assert clips[8, "mse"] > clips[4, "mse"]
    with pytest.raises(ValueError, match="choose one of p95, mse"):
        DuQuantizer(kind, 4).init_activation(x, rule="max")


def test_weight_init_is_0_9_max_abs() -> None:
    w = torch.tensor([[1.0, -3.0], [0.5, 2.0]])
    q = DuQuantizer("signed", 4)
    q.init_weight(w)
    assert float(q.a()) == pytest.approx(2.7, rel=1e-5) and float(q.c()) == pytest.approx(2.7, rel=1e-5)
    pc = DuQuantizer("signed", 4, channels=2)
    pc.init_weight(w)
    assert torch.allclose(pc.a(), torch.tensor([2.7, 1.8]), rtol=1e-5)


@pytest.mark.parametrize("channels", [None, 8])
def test_mse_weight_init_has_less_error_than_0_9_max(channels: int | None) -> None:
    torch.manual_seed(0)
    w = torch.distributions.Laplace(0.0, 1.0).sample((8, 400)) * torch.linspace(0.2, 2.0, 8).unsqueeze(1)
    errors = {}
    for rule in ("max", "mse"):
        q = DuQuantizer("signed", 4, channels=channels)
        q.init_weight(w, rule=rule)
        errors[rule] = float((q(w) - w).pow(2).mean())
    assert errors["mse"] < 0.9 * errors["max"], errors
    with pytest.raises(ValueError, match="choose one of max, mse"):
        DuQuantizer("signed", 4).init_weight(w, rule="p95")


@pytest.mark.parametrize("bits", [0, 1, 9, 16])
def test_bits_outside_2_to_8_are_rejected(bits: int) -> None:
    with pytest.raises(MobilecError, match=r"outside the supported range 2\.\.8"):
        DuQuantizer("signed", bits)
    with pytest.raises(MobilecError, match="weight_bits"):
        convert_to_duq(TinyNet(), weight_bits=bits, act_bits=4)


def test_int8_fake_quant_contains_zero_and_freezes_in_eval() -> None:
    fq = Int8FakeQuant().train()
    fq(torch.linspace(0.5, 3.0, 100))
    scale, zp = fq.qparams()
    assert zp == -128 and scale == pytest.approx(3.0 / 255, rel=1e-6)
    fq.eval()
    fq(torch.full((10,), 100.0))
    assert fq.qparams() == (scale, zp)
    y = fq(torch.tensor([0.0, 1.0, 10.0]))
    assert float(y[0]) == 0.0 and float(y[2]) == pytest.approx(3.0, rel=1e-6)


# ----------------------------------------------------------------------------- conversion
def test_kinds_follow_the_activation_feeding_each_layer() -> None:
    qm = convert_to_duq(TinyNet(), weight_bits=4, act_bits=4, first_last_bits=8)
    plan = duq_plan(qm)
    kinds = {n: lp.act_kind for n, lp in plan.layers.items()}
    assert kinds == {
        "stem.0": "signed",  # the model input
        "dw.0": "unsigned",  # ReLU6
        "pw.0": "unsigned",
        "expand.0": "signed",  # the residual add
        "dw2.0.conv": "hswish",  # h-swish, padded with -3/8
        "se1": "hswish",  # mean of h-swish
        "se2": "unsigned",  # ReLU
        "project.0": "hswish",  # h-swish · hard-sigmoid gate
        "head": "unsigned",  # mean of ReLU
    }
    assert plan.layers["stem.0"].role == "first" and plan.layers["head"].role == "last"
    layers = dict(quant_layers(qm))
    assert layers["stem.0"].act_q.bits == 8 and layers["head"].weight_q.bits == 8 and layers["dw.0"].act_q.bits == 4
    assert isinstance(layers["head"], QLinear) and isinstance(layers["dw2.0.conv"], QConv2d)
    # outputs: the stem feeds the residual add and dw → int8; dw → pw only (same unsigned grid) → fused
    assert plan.layers["stem.0"].out_fq is not None and plan.layers["dw.0"].fused_into == "pw.0"
    assert plan.layers["se1"].fused_into == "se2" and plan.layers["head"].out_fq is not None


def test_high_bit_inputs_keep_first_last_bits_through_the_schedule() -> None:
    qm = convert_to_duq(TinyNet(), weight_bits=4, act_bits=4, first_last_bits=8, high_bit_inputs=["dw.0"])
    layers = dict(quant_layers(qm))
    assert layers["dw.0"].act_q.bits == 8 and layers["dw.0"].weight_q.bits == 4  # only the input is kept
    set_act_bits(qm, 3)
    set_weight_bits(qm, 3)
    assert layers["dw.0"].act_q.bits == 8 and layers["dw.0"].weight_q.bits == 3
    assert layers["pw.0"].act_q.bits == 3 and layers["stem.0"].act_q.bits == 8
    assert duq_plan(qm).layers["dw.0"].high_bit_input and any("high_bit_inputs" in n for n in duq_plan(qm).notes)


@pytest.mark.parametrize(("names", "first_last", "match"), [
    (["dw"], 8, "'dw' is not a quantized Conv2d/Linear layer"),
    (["head"], 8, "'head' is a last layer"),
    (["dw.0"], None, "first_last_bits is 0"),
])
def test_bad_high_bit_inputs_are_named(names: list[str], first_last: int | None, match: str) -> None:
    with pytest.raises(MobilecError, match=match):
        convert_to_duq(TinyNet(), weight_bits=4, act_bits=4, first_last_bits=first_last, high_bit_inputs=names)


def test_break_rounding_ties_moves_a_channel_off_an_exact_ratio() -> None:
    from mobilec.passes.quant.qmodules import _tie_prone, break_rounding_ties

    qm = fold_batchnorm(quantized_tiny(3))
    plan, layers = duq_plan(qm), dict(quant_layers(qm))
    assert plan.layers["dw.0"].fused_into == "pw.0"
    layer, cons = layers["dw.0"], layers["pw.0"].act_q
    step = float(cons.a()) / cons.levels
    with torch.no_grad():  # channel 0: output step = 14/5 accumulator steps, bias -2 steps (the mobilenet_v2 case)
        layer.out_scale[0] *= step / 2.8 / float(accumulator_lsb(layer)[0])
        layer.bias.data[0] = -2 * float(accumulator_lsb(layer)[0])
    assert bool(_tie_prone(step / accumulator_lsb(layer), cons.levels)[0])
    moved = break_rounding_ties(qm)
    assert 0 in moved["dw.0"] and any("rounding tie" in n for n in plan.notes)
    lsb = accumulator_lsb(layer)
    assert not bool(_tie_prone(step / lsb, cons.levels).any())
    bias_steps = float(layer.bias[0] / lsb[0])
    assert abs(bias_steps - round(bias_steps)) < 1e-4  # still on the accumulator grid


def test_break_rounding_ties_says_when_it_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    from mobilec.passes.quant import qmodules

    qm = fold_batchnorm(quantized_tiny(3))
    layer, cons = dict(quant_layers(qm))["dw.0"], dict(quant_layers(qm))["pw.0"].act_q
    with torch.no_grad():  # channel 0 on 14/5 accumulator steps, as above
        layer.out_scale[0] *= float(cons.a()) / cons.levels / 2.8 / float(accumulator_lsb(layer)[0])
    monkeypatch.setattr(qmodules, "TIE_NUDGE", 1.0)  # a nudge that cannot move it
    with pytest.warns(UserWarning, match="still on a rounding-tie ratio after 8 nudges"):
        qmodules.break_rounding_ties(qm)
    assert any("dw.0 [0]" in n and "still on a rounding-tie" in n for n in duq_plan(qm).notes)


def test_zoo_mobilenets_convert() -> None:
    v2 = duq_plan(convert_to_duq(mobilenet_v2(), weight_bits=4, act_bits=4))
    assert {lp.act_kind for lp in v2.layers.values()} == {"signed", "unsigned"}
    v3 = duq_plan(convert_to_duq(mobilenet_v3_small(), weight_bits=4, act_bits=4))
    padded = [lp for n, lp in v3.layers.items() if n.endswith(".conv")]  # PaddedConv2d depthwise convs
    assert padded and all(lp.act_kind == "hswish" for lp in padded if "Hardswish" in lp.act_source)
    assert not v3.notes  # every h-swish conv with spatial padding pads with -3/8


def test_zero_padded_conv_after_hswish_falls_back_to_signed() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Hardswish(), nn.Conv2d(4, 4, 3, padding=1))
    plan = duq_plan(convert_to_duq(model, weight_bits=4, act_bits=4))
    assert plan.layers["2"].act_kind == "signed" and "negative padding" in plan.layers["2"].note


@pytest.mark.parametrize("act", [nn.GELU(), nn.SiLU(), nn.Sigmoid(), nn.LeakyReLU()])
def test_unknown_activation_is_named(act: nn.Module) -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), act, nn.Conv2d(4, 4, 3))
    with pytest.raises(MobilecError, match=rf"activation {type(act).__name__}.*layer '2'"):
        convert_to_duq(model, weight_bits=4, act_bits=4)
    # ignoring the layer keeps it float
    plan = duq_plan(convert_to_duq(model, weight_bits=4, act_bits=4, select=lambda name, _m: name != "2"))
    assert list(plan.layers) == ["0"]


def test_untraceable_model_is_a_clear_error() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x) if x.sum() > 0 else -self.conv(x)

    with pytest.raises(MobilecError, match=r"torch\.fx-traceable"):
        convert_to_duq(Branchy(), weight_bits=4, act_bits=4)


def test_disabled_quantizers_give_the_float_model() -> None:
    torch.manual_seed(0)
    model = randomize_bn(TinyNet())
    qm = convert_to_duq(model, weight_bits=4, act_bits=4)
    init_activation_quantizers(qm, torch.randn(32, 1, 8, 8))
    init_weight_quantizers(qm)
    enable_quantizers(qm.eval(), acts=False, weights=False)
    x = torch.randn(8, 1, 8, 8)
    assert torch.allclose(qm(x), model(x), atol=1e-5)
    enable_quantizers(qm, acts=True, weights=True)
    assert not torch.allclose(qm(x), model(x), atol=1e-3)


@pytest.mark.parametrize("per_channel", [False, True])
def test_fold_batchnorm_keeps_the_function_and_snaps_bias(per_channel: bool) -> None:
    qm = quantized_tiny(4, per_channel=per_channel)
    x = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = qm(x)
        fold_batchnorm(qm)
        after = qm(x)
    assert (before.argmax(1) == after.argmax(1)).float().mean() >= 0.95
    assert (before - after).abs().max() < 0.25 * before.abs().max()
    for _name, layer in quant_layers(qm):
        shift = layer.act_q.offset * layer.out_scale * weight_sum(layer)
        units = (layer.bias.detach() - shift) / accumulator_lsb(layer)
        assert torch.allclose(units, units.round(), atol=2e-3), "the bias must sit on the integer accumulator grid"
    assert not any(isinstance(m, nn.BatchNorm2d) for m in qm.modules())


def _enable_fused() -> None:
    from mobilec.passes.quant.duq import enable_fused_kernels

    err = enable_fused_kernels(True)
    assert err is None, f"the platform cannot build the fused DuQ kernels: {err}"


def _layouts() -> list[torch.Tensor]:
    """NCHW, channels-last, a transposed (dense, other order) and a non-dense (sliced) tensor, and a weight."""
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(4, 8, 12, 12, generator=gen) * 2
    return [base, base.to(memory_format=torch.channels_last), base.transpose(2, 3), base[:, ::2], torch.randn(300, 20, generator=gen)]


def _run_quantizer(kind: str, x0: torch.Tensor, fused: bool, g: torch.Tensor) -> tuple[torch.Tensor, ...]:
    from mobilec.passes.quant.duq import enable_fused_kernels, fused_kernels_enabled

    enable_fused_kernels(fused)
    assert fused_kernels_enabled() == fused
    q = DuQuantizer(kind, 4)
    q.set_range(torch.tensor(1.3), torch.tensor(0.8))
    x = x0.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
    y = q(x)
    y.backward(g)
    return y.detach(), x.grad, q.a_raw.grad, q.c_raw.grad


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["signed", "unsigned", "hswish"])
def test_fused_kernels_match_the_eager_quantizer(kind: str) -> None:
    """The fused C++ kernels (the passes' fused_kernels option) give the eager values exactly, the same
    input gradients, the a/c gradients up to summation order, and keep each input's memory layout
    (a channels-last activation made NCHW slowed every downstream convolution ~1.8x)."""
    from mobilec.passes.quant.duq import enable_fused_kernels

    _enable_fused()
    try:
        for x0 in _layouts():
            g = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1)).to(memory_format=torch.preserve_format)
            (y1, gx1, ga1, gc1), (y2, gx2, ga2, gc2) = (_run_quantizer(kind, x0, f, g) for f in (True, False))
            assert torch.equal(y1, y2) and torch.equal(gx1, gx2)
            assert torch.allclose(ga1, ga2, rtol=1e-4) and torch.allclose(gc1, gc2, rtol=1e-4)
            assert y1.stride() == y2.stride() and gx1.stride() == gx2.stride(), "the fused path changed the layout"
    finally:
        enable_fused_kernels(False)


def _lane_sum(v: np.ndarray, chunk: int = 1 << 14, lanes: int = 16) -> float:
    """The fused backward's documented sum order: per chunk, element i into float32 lane i % 16 (the last
    n % 16 into lane 0), the lanes added in order; the chunks added in double."""
    total = 0.0
    for c0 in range(0, len(v), chunk):
        part = v[c0:c0 + chunk]
        body = len(part) - len(part) % lanes
        lane = np.cumsum(part[:body].reshape(-1, lanes), axis=0, dtype=np.float32)[-1] if body else np.zeros(lanes, np.float32)
        for e in part[body:]:
            lane[0] = np.float32(lane[0] + e)
        total += float(np.cumsum(lane, dtype=np.float32)[-1])
    return total


@pytest.mark.slow
@pytest.mark.parametrize("signed", [True, False])
def test_fused_backward_sums_in_the_documented_lane_order(signed: bool) -> None:
    """The a/c gradient sums of the fused backward follow one fixed order whatever vector width the CPU
    picks (SSE2, AVX2, AVX-512 builds), so training gives the same bits on every x86 host."""
    from mobilec.passes.quant import duq

    _enable_fused()
    try:
        lib = duq._FUSED["lib"]
        rng = np.random.default_rng(3)
        off, lo_a, a, ca = (0.0, -1.0, 1.0, 0.4) if signed else (0.375, 0.0, 1.0, 0.4)
        for n in (5, 16, 1000, (1 << 14) + 37, 3 * (1 << 14)):
            x = (rng.standard_normal(n) * 2).astype(np.float32)
            g = rng.standard_normal(n).astype(np.float32)
            codes = rng.integers(-7 if signed else 0, 8 if signed else 16, n).astype(np.int8 if signed else np.uint8)
            grad_x, sum_a, sum_c = lib.duq_backward(torch.from_numpy(g), torch.from_numpy(x), torch.from_numpy(codes),
                                                    off, lo_a, a, ca, True)
            xs = x + np.float32(off)
            gm = g * ((xs > np.float32(lo_a)) & (xs < np.float32(a))).astype(np.float32)
            assert np.array_equal(grad_x.numpy(), gm * np.float32(ca))
            assert sum_a == _lane_sum(gm * xs) and sum_c == _lane_sum(g * codes.astype(np.float32)), f"n={n}"
        # where the order shows: lanes 1 and 2 and the tail (element 16) each hold half an ulp of lane 0's 1.0;
        # added one by one in lane order they vanish, a tail in lane 1 or a tree-shaped lane sum keeps 2^-23
        g = np.zeros(17, np.float32)
        g[[0, 1, 2, 16]] = [1.0, 2.0**-24, 2.0**-24, 2.0**-24]
        ones = np.ones(17, np.int8 if signed else np.uint8)
        _, _, sum_c = lib.duq_backward(torch.from_numpy(g), torch.zeros(17), torch.from_numpy(ones), off, lo_a, a, ca, False)
        assert sum_c == _lane_sum(g) == 1.0
    finally:
        duq.enable_fused_kernels(False)


@pytest.mark.slow
def test_fused_int8_fake_quant_equals_torch() -> None:
    """The fused int8 fake-quant equals torch.fake_quantize_per_tensor_affine bit for bit, ties and
    out-of-range values included, in values and straight-through gradients, and keeps the layout."""
    from mobilec.passes.quant.duq import enable_fused_kernels

    _enable_fused()
    try:
        gen = torch.Generator().manual_seed(2)
        for trial, x0 in enumerate(_layouts()):
            fq = Int8FakeQuant().train()
            fq(x0 * 0.8)  # sets the observed range; the tensor below also reaches past it
            fq.frozen.fill_(True)
            scale, zp = fq.qparams()
            ties = (torch.randint(-200, 200, x0.shape, generator=gen) + 0.5) * scale
            x0 = torch.where(torch.rand(x0.shape, generator=gen) < 0.3, ties, x0 * (1 + trial))
            g = torch.randn(x0.shape, generator=gen)
            x = x0.clone(memory_format=torch.preserve_format).requires_grad_(True)
            y = fq(x)
            y.backward(g)
            xr = x0.clone(memory_format=torch.preserve_format).requires_grad_(True)
            ref = torch.fake_quantize_per_tensor_affine(xr, scale, zp, -128, 127)
            ref.backward(g)
            assert torch.equal(y, ref) and torch.equal(x.grad, xr.grad)
            assert y.stride() == ref.stride()
    finally:
        enable_fused_kernels(False)


@pytest.mark.slow
def test_a_fused_training_step_matches_the_eager_one() -> None:
    """One SGD step of a small DuQ model: the fused kernels move every parameter as the eager ops do."""
    from mobilec.passes.quant.duq import enable_fused_kernels

    _enable_fused()
    try:
        results = []
        for fused in (True, False):
            enable_fused_kernels(fused)
            torch.manual_seed(0)
            model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 3),
                                  nn.Flatten(), nn.Linear(8 * 14 * 14, 10))
            qm = convert_to_duq(model, weight_bits=4, act_bits=4)
            x = torch.randn(32, 3, 16, 16).to(memory_format=torch.channels_last)
            init_activation_quantizers(qm, x)
            init_weight_quantizers(qm)
            enable_quantizers(qm, acts=True, weights=True)
            opt = torch.optim.SGD(qm.parameters(), lr=0.1)
            F.cross_entropy(qm(x), torch.arange(32) % 10).backward()
            opt.step()
            results.append({k: v.detach().clone() for k, v in qm.state_dict().items()})
        for k, v in results[0].items():
            assert torch.allclose(v.float(), results[1][k].float(), rtol=1e-4, atol=1e-6), k
    finally:
        enable_fused_kernels(False)


@pytest.mark.parametrize("kind", ["signed", "unsigned", "hswish"])
def test_per_channel_gradients_equal_the_hardtanh_formulation(kind: str) -> None:
    """Per-channel ``a``/``c`` (weights): the one-node quantizer's gradients equal autograd through
    softplus, hardtanh and a straight-through round."""
    torch.manual_seed(0)
    q = DuQuantizer(kind, 3, channels=6, ch_axis=0)
    q.set_range(torch.linspace(0.5, 2.0, 6), torch.linspace(0.4, 1.5, 6))
    x = (torch.randn(6, 4, 3, 3) * 1.5).requires_grad_(True)
    g = torch.randn(x.shape)
    (q(x) * g).sum().backward()
    a_raw = q.a_raw.detach().clone().requires_grad_(True)
    c_raw = q.c_raw.detach().clone().requires_grad_(True)
    xr = x.detach().clone().requires_grad_(True)
    a, c = F.softplus(a_raw).view(-1, 1, 1, 1), F.softplus(c_raw).view(-1, 1, 1, 1)
    off = q.offset
    u = F.hardtanh((xr + off) / a, q.lower, 1.0) * q.levels
    ref = c * (u + (torch.round(u) - u).detach()) / q.levels - off
    (ref * g).sum().backward()
    assert torch.allclose(q(x).detach(), ref.detach(), atol=1e-6)
    assert torch.allclose(x.grad, xr.grad, atol=1e-6)
    assert torch.allclose(q.a_raw.grad, a_raw.grad, rtol=1e-4, atol=1e-6)
    assert torch.allclose(q.c_raw.grad, c_raw.grad, rtol=1e-4, atol=1e-6)


def test_a_reshaped_gate_keeps_the_kind_of_what_it_gates() -> None:
    """``x · gate.view(N, C, 1, 1)`` (squeeze-excite on Linear layers, as the zoo v3) keeps x's h-swish
    grid; before, the view hid the gate and the next layer got a signed grid (one bit less resolution)."""

    class LinearSE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3, padding=1)
            self.act = nn.Hardswish()
            self.fc1, self.fc2 = nn.Linear(8, 4), nn.Linear(4, 8)
            self.project = nn.Conv2d(8, 8, 1)
            self.head = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.act(self.conv(x))
            s = F.hardsigmoid(self.fc2(F.relu(self.fc1(torch.flatten(h.mean((2, 3), keepdim=True), 1)))))
            y = self.project(h * s.view(s.shape[0], s.shape[1], 1, 1))
            return self.head(y.mean((2, 3)))

    kinds = {n: lp.act_kind for n, lp in duq_plan(convert_to_duq(LinearSE(), weight_bits=4, act_bits=4)).layers.items()}
    assert kinds["fc1"] == "hswish" and kinds["fc2"] == "unsigned" and kinds["project"] == "hswish"
    v3 = duq_plan(convert_to_duq(mobilenet_v3_small(), weight_bits=4, act_bits=4))
    assert v3.layers["features.4.block.3"].act_kind == "hswish"  # the projection after an h-swish block's SE
