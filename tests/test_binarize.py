"""TAC binarization and FC pruning: exact properties (hypothesis) and the passes on a tiny model."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from mobilec.errors import MobilecError
from mobilec.passes.binarize import (
    SIGN_OF_ZERO,
    BinarizeAllPass,
    BinaryActivation,
    BinaryConv2d,
    BinaryLinear,
    TACPass,
    binary_sign,
    restructure_like,
    sign_pm1,
)
from mobilec.passes.binary_export import SIGN_SCALE, LoweredSign
from mobilec.passes.prune import (
    PrunedQuantLinear,
    cubic_sparsity_schedule,
    has_output_rounding,
    magnitude_mask,
    quantize_symmetric,
    sparse_storage_bytes,
)

FLOATS = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False, width=32)
SEEDS = st.integers(0, 2**31 - 1)


def _weights(shape: tuple[int, ...], seed: int, zeros: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * 0.1
    if zeros:  # some exact zeros (and a -0.0) to exercise sign(0)
        w.view(-1)[:: max(1, w.numel() // 3)] = 0.0
        w.view(-1)[-1] = -0.0
    return w


# --------------------------------------------------------------------------- binary weights / activations


@settings(max_examples=40, deadline=None)
@given(out=st.integers(1, 8), cin=st.integers(1, 6), k=st.sampled_from([1, 3]), depthwise=st.booleans(), seed=SEEDS)
def test_binary_conv_weights_are_exactly_plus_minus_alpha(out: int, cin: int, k: int, depthwise: bool, seed: int) -> None:
    groups = cin if depthwise else 1
    out = cin * max(1, out // cin) if depthwise else out
    conv = nn.Conv2d(cin, out, k, groups=groups, bias=False)
    with torch.no_grad():
        conv.weight.copy_(_weights(tuple(conv.weight.shape), seed))
    bc = BinaryConv2d.from_conv(conv)
    w = bc.binary_weight().detach()
    alpha = conv.weight.abs().mean(dim=(1, 2, 3), keepdim=True)
    assert torch.equal(w.abs(), alpha.expand_as(w))  # exactly alpha per output channel
    nonzero = alpha.flatten() > 0
    assert torch.equal((w / alpha)[nonzero], sign_pm1(conv.weight)[nonzero])  # the sign pattern, sign(0) = +1


@settings(max_examples=30, deadline=None)
@given(out=st.integers(1, 6), cin=st.integers(1, 12), seed=SEEDS)
def test_binary_linear_weights_are_exactly_plus_minus_alpha(out: int, cin: int, seed: int) -> None:
    fc = nn.Linear(cin, out)
    with torch.no_grad():
        fc.weight.copy_(_weights((out, cin), seed))
    w = BinaryLinear.from_linear(fc).binary_weight().detach()
    alpha = fc.weight.abs().mean(dim=1, keepdim=True)
    assert torch.equal(w.abs(), alpha.expand_as(w))


@settings(max_examples=60, deadline=None)
@given(values=st.lists(FLOATS, min_size=1, max_size=24), thresholds=st.lists(FLOATS, min_size=1, max_size=4))
def test_binary_activation_is_exactly_plus_minus_one(values: list[float], thresholds: list[float]) -> None:
    c = len(thresholds)
    x = torch.tensor(values, dtype=torch.float32).view(-1, 1).repeat(1, c)
    act = BinaryActivation(c)
    with torch.no_grad():
        act.threshold.copy_(torch.tensor(thresholds))
    y = act(x)
    assert set(y.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(y, torch.where(x - act.threshold >= 0, 1.0, -1.0))


def test_sign_of_zero_is_plus_one_as_documented() -> None:
    assert SIGN_OF_ZERO == 1.0
    assert sign_pm1(torch.tensor([0.0, -0.0, 1e-30, -1e-30])).tolist() == [1.0, 1.0, 1.0, -1.0]
    act = BinaryActivation(2)
    with torch.no_grad():
        act.threshold.copy_(torch.tensor([0.5, -2.0]))
    assert act(torch.tensor([[0.5, -2.0]])).tolist() == [[1.0, 1.0]]  # x == threshold -> +1
    conv = BinaryConv2d.from_conv(nn.Conv2d(1, 1, 1, bias=False))
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[0.0]]]]))
    assert conv.binary_weight().item() == 0.0  # all-zero channel: alpha = 0
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[-0.0]]]]))
    assert sign_pm1(conv.weight).item() == 1.0


@settings(max_examples=50, deadline=None)
@given(values=st.lists(st.floats(-4, 4, allow_nan=False, width=32), min_size=1, max_size=32), seed=SEEDS)
def test_ste_gradient_is_clipped_to_unit_interval(values: list[float], seed: int) -> None:
    x = torch.tensor(values, requires_grad=True)
    g = torch.randn(len(values), generator=torch.Generator().manual_seed(seed))
    (binary_sign(x) * g).sum().backward()
    assert torch.equal(x.grad, g * (x.detach().abs() <= 1).float())
    # through a threshold: d/dx = 1{|x - t| <= 1}, d/dt = -sum of the same
    act = BinaryActivation(1)
    with torch.no_grad():
        act.threshold.fill_(0.5)
    x2 = x.detach().view(-1, 1).clone().requires_grad_(True)
    (act(x2).view(-1) * g).sum().backward()
    inside = ((x2.detach().view(-1) - 0.5).abs() <= 1).float()
    assert torch.equal(x2.grad.view(-1), g * inside)
    assert torch.allclose(act.threshold.grad, -(g * inside).sum().view(1))


@settings(max_examples=60, deadline=None)
@given(x=FLOATS, t=FLOATS)
def test_lowered_sign_quantizes_to_the_eager_sign(x: float, t: float) -> None:
    xs, ts = torch.tensor([[x]]), torch.tensor([t])
    d = float(xs - ts)
    assume(not -(2.0**-99) < d < 0)  # the documented (sub-1e-30) exception
    low = LoweredSign(ts, 2)(xs)
    q = torch.clamp(torch.round(low / SIGN_SCALE), -128, 127) * SIGN_SCALE  # the fixed int8 quantize/dequantize
    assert torch.equal(q, sign_pm1(xs - ts))
    assert float(torch.round(low / SIGN_SCALE)) in (-127.0, 127.0)


# --------------------------------------------------------------------------- pruning and FC quantization


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 20), cols=st.integers(1, 40), sparsity=st.floats(0, 0.99), seed=SEEDS)
def test_pruning_reaches_the_requested_sparsity_exactly(rows: int, cols: int, sparsity: float, seed: int) -> None:
    w = _weights((rows, cols), seed, zeros=False)
    mask = magnitude_mask(w, sparsity)
    n = w.numel()
    assert int((mask == 0).sum()) == round(sparsity * n)
    if 0 < int((mask == 0).sum()) < n:
        assert w[mask == 0].abs().max() <= w[mask == 1].abs().min()  # the smallest magnitudes went
    higher = min(0.99, sparsity + 0.3)
    nested = magnitude_mask(w, higher, previous=mask)
    assert int((nested == 0).sum()) == round(higher * n)
    assert bool((nested[mask == 0] == 0).all())  # earlier zeros stay pruned


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 12), cols=st.integers(2, 30), sparsity=st.floats(0, 0.95), bits=st.integers(2, 8), seed=SEEDS)
def test_pruned_quantized_linear_keeps_mask_and_grid(rows: int, cols: int, sparsity: float, bits: int, seed: int) -> None:
    fc = nn.Linear(cols, rows)
    with torch.no_grad():
        fc.weight.copy_(_weights((rows, cols), seed, zeros=False))
    pq = PrunedQuantLinear.from_linear(fc)
    pq.set_sparsity(sparsity)
    pq.bits = bits
    w = pq.effective_weight()
    assert pq.sparsity() == round(sparsity * rows * cols) / (rows * cols)
    assert bool((w[pq.mask == 0] == 0).all())
    q, scale = quantize_symmetric(pq.weight * pq.mask, bits)
    qmax = 2 ** (bits - 1) - 1
    assert torch.equal(q, q.round()) and int(q.abs().max()) <= qmax
    assert torch.equal(w.detach(), q * scale)
    # training cannot revive a pruned weight: its gradient is zero
    pq(torch.randn(3, cols)).sum().backward()
    assert bool((pq.weight.grad[pq.mask == 0] == 0).all())


def test_cubic_schedule_and_storage_sizes() -> None:
    sched = cubic_sparsity_schedule(0.9, 4)
    assert sched[-1] == pytest.approx(0.9) and sched == sorted(sched)
    w = torch.zeros(4, 8)
    w[0, :2] = 1.0
    s = sparse_storage_bytes(w, 4)
    assert s["nnz"] == 2 and s["csr"] == 1 + 2 * 2 + 4 * 5 + 16 and s["bitmask"] == 4 + 1 + 16
    with pytest.raises(ValueError):
        cubic_sparsity_schedule(1.0, 3)


# --------------------------------------------------------------------------- the passes on a tiny model


class TinyNet(nn.Module):
    """conv-bn-relu ×3 (one max-pool) and two FC layers, for 8×8 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        )
        self.classifier = nn.Sequential(nn.Flatten(1), nn.Linear(256, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@pytest.fixture(scope="module")
def digits_and_model() -> tuple:
    from mobilec.data import load_dataset
    from mobilec.train import fit

    torch.manual_seed(0)
    ds = load_dataset("digits").subset(480, 240, seed=0)
    model = TinyNet()
    fit(model, ds, epochs=4, lr=0.05, progress=False, augment=False)
    return ds, model.eval()


def _ctx(ds, model, tmp_path: Path):
    from mobilec.context import Context
    from mobilec.report import RunReport

    teacher = copy.deepcopy(model).eval()
    return Context(data=ds, workdir=tmp_path, report=RunReport(recipe="t", model={}, data={}),
                   example_inputs=(ds.x_test[:1],), teacher=teacher, show_progress=False)


def test_tac_pass_binarizes_convs_and_prunes_fc_exactly(digits_and_model, tmp_path: Path) -> None:
    ds, fp = digits_and_model
    ctx = _ctx(ds, fp, tmp_path)
    p = TACPass(fc_sparsity=0.8, fc_bits=3, prune_steps=1, epochs_binary=1, epochs_per_prune_step=1, epochs_quant=1,
                calibration_batches=4)
    model = p.apply(copy.deepcopy(fp), ctx)
    f = model.features
    assert type(f[0]) is nn.Conv2d  # keep_first_conv
    assert isinstance(f[3], BinaryConv2d) and isinstance(f[7], BinaryConv2d)
    for fc in (model.classifier[1], model.classifier[3]):
        assert isinstance(fc, PrunedQuantLinear) and fc.bits == 3
        assert int((fc.mask == 0).sum()) == round(0.8 * fc.weight.numel())
    rec = ctx.report.passes[-1]
    assert rec.name == "tac" and rec.summary["binary_layers"] == 2 and rec.summary["pruned_fc_layers"] == 2
    assert rec.summary["fc_sparsity"] == pytest.approx(0.8, abs=1e-3)  # exact per layer (asserted above)
    assert "first conv" in rec.summary["kept"]
    assert rec.summary["aligned_inputs"] == 1  # features.7 is fed by features.3 through relu + max-pool
    assert callable(ctx.lowering)
    # the FC layers follow the artifact's int8 grids in the eager model: input of the first on the last
    # conv's output grid, the logits layer rounds its own output
    fc1, fc2 = model.classifier[1], model.classifier[3]
    assert torch.equal(fc1.in_qparams[:2], f[7].out_qparams[:2]) and float(fc1.in_qparams[2]) == 1.0
    assert float(fc2.out_qparams[2]) == 1.0 and float(fc1.out_qparams[2]) == 0.0  # fc1's ReLU is fused: fc2's input grid
    # aligned thresholds sit on half-steps of the producer's int8 grid
    scale = float(f[3].out_qparams[0])
    t = f[7].act.threshold.detach().double() / scale - 0.5
    assert torch.allclose(t, t.round(), atol=1e-4)
    # the eager model rounds each int8 output where the artifact does: on the ReLU after each binary conv
    # and fc1, in fc2 itself (the logits); the last epoch trained with those roundings
    assert rec.summary["rounded_outputs"] == 4 and rec.summary["unrounded_outputs"] == 0
    hooked = [n for n, m in model.named_modules() if has_output_rounding(m)]
    assert hooked == ["features.5", "features.9", "classifier.2"]
    last = rec.summary["phases"][-1]
    assert last["phase"].endswith("int8 output roundings on") and last["epochs"] == 1
    relu = f[5]
    y = relu(torch.randn(2, 16, 4, 4))
    s, zp = float(relu.out_qparams[0]), int(relu.out_qparams[1])
    assert torch.allclose(y / s - zp, (y / s - zp).round(), atol=1e-3)  # on the grid
    # restructure + load round-trips (thresholds, grids and roundings)
    again = restructure_like(TinyNet(), model.state_dict())
    again.load_state_dict(model.state_dict())
    again.eval()
    x = ds.x_test[:16]
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    assert [n for n, m in again.named_modules() if has_output_rounding(m)] == hooked
    assert 0.0 <= ctx.evaluate(model) <= 1.0


def test_two_step_schedule_trains_float_weights_on_binary_inputs_first(digits_and_model, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """``epochs_act_only``: a first phase computes with the latent float weights (binary inputs); then ``α·sign(W)``."""
    import mobilec.passes.binarize as binarize

    ds, fp = digits_and_model
    ctx = _ctx(ds, fp, tmp_path)
    seen: list[bool] = []
    fit = TACPass.train_phase

    def spy(self: TACPass, model: nn.Module, ctx_: object, epochs: int, phase: int) -> dict:
        layers = [m for m in model.modules() if isinstance(m, binarize.BINARY_TYPES)]
        x = torch.randn(2, 8, 4, 4)
        conv = model.features[3]
        flag = all(m.float_weights for m in layers)
        assert flag or not any(m.float_weights for m in layers)
        with torch.no_grad():  # the forward really uses the float weights while the flag is set
            expect = conv._conv_forward(conv.binary_input(x), conv.weight if flag else conv.binary_weight(), conv.bias)
            assert torch.equal(conv(x), expect)
        seen.append(flag)
        return fit(self, model, ctx_, epochs, phase)

    monkeypatch.setattr(TACPass, "train_phase", spy)
    p = TACPass(fc_sparsity=0.5, prune_steps=1, epochs_act_only=1, epochs_binary=1, epochs_per_prune_step=1,
                epochs_quant=1, epochs_grid=0, calibration_batches=2)
    model = p.apply(copy.deepcopy(fp), ctx)
    assert seen == [True, False, False, False]  # act-only, binary, prune, quantize
    assert not any(m.float_weights for m in model.modules() if isinstance(m, binarize.BINARY_TYPES))
    phases = ctx.report.passes[-1].summary["phases"]
    assert phases[0]["phase"] == "binary inputs, float weights" and phases[0]["epochs"] == 1
    with pytest.raises(MobilecError, match="epochs_act_only"):
        TACPass.from_params({"epochs_act_only": -1}, where="r.toml")


class _FunctionalReluBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = BinaryConv2d.from_conv(nn.Conv2d(4, 4, 3, padding=1, bias=False))
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


def test_an_output_the_eager_model_cannot_round_is_reported() -> None:
    """A ReLU applied inside a block's forward (no module of its own) cannot carry the rounding: listed, not hidden."""
    from mobilec.passes.binary_export import align_thresholds

    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), _FunctionalReluBlock(), nn.Flatten(1),
                          nn.Linear(4 * 8 * 8, 10)).eval()
    batches = [torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    res = align_thresholds(model, (batches[0][:1],), batches)
    assert res["unrounded"] == ["2.conv -> 2"] and res["rounded"] == []
    assert float(model[2].conv.out_qparams[2]) == 0.0  # the grid is recorded, but not applied by the conv


def test_binarize_all_and_keep_options(digits_and_model, tmp_path: Path) -> None:
    ds, fp = digits_and_model
    ctx = _ctx(ds, fp, tmp_path)
    model = BinarizeAllPass(epochs=1, calibration_batches=2, keep_last=True).apply(copy.deepcopy(fp), ctx)
    assert isinstance(model.features[0], BinaryConv2d)  # binary-all: the first conv too by default
    assert isinstance(model.classifier[1], BinaryLinear)
    assert type(model.classifier[3]) is nn.Linear  # keep_last
    assert "last layer" in ctx.report.passes[-1].summary["kept"]
    with pytest.raises(MobilecError, match="already binarized"):
        TACPass(epochs_binary=0).plan(model, ctx.example_inputs)
    with pytest.raises(MobilecError, match="not a module"):
        TACPass(targets=("nope",)).plan(copy.deepcopy(fp), ctx.example_inputs)


def test_recipe_parameters_are_validated() -> None:
    with pytest.raises(MobilecError, match="fc_bits"):
        TACPass.from_params({"fc_bits": 9}, where="r.toml")
    with pytest.raises(MobilecError, match="fc_sparsity"):
        TACPass.from_params({"fc_sparsity": 1.0}, where="r.toml")
    with pytest.raises(MobilecError, match="act_threshold"):
        BinarizeAllPass.from_params({"act_threshold": "median"}, where="r.toml")
    with pytest.raises(MobilecError, match="epochs_grid"):
        BinarizeAllPass.from_params({"epochs_grid": -1}, where="r.toml")


@settings(max_examples=20, deadline=None)
@given(seed=SEEDS)
def test_int32_bias_delta_is_within_half_an_accumulator_step(seed: int) -> None:
    from mobilec.passes.binary_export import SIGN_SCALE, int32_bias_delta

    g = torch.Generator().manual_seed(seed)
    conv = BinaryConv2d.from_conv(nn.Conv2d(3, 5, 3, bias=False))
    bn = nn.BatchNorm2d(5).eval()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(5, 3, 3, 3, generator=g))
        for t in (bn.weight, bn.bias, bn.running_mean):
            t.copy_(torch.randn(5, generator=g))
        bn.running_var.copy_(torch.rand(5, generator=g) + 0.1)
    delta = int32_bias_delta(conv, bn, SIGN_SCALE, 127)
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    b = bn.bias.detach() - bn.running_mean * scale
    step = SIGN_SCALE * (conv.alpha().flatten() * scale).abs() / 127
    assert bool((delta.abs() <= step / 2 + 1e-7).all())
    units = (b + delta) / step
    assert torch.allclose(units, units.round(), atol=1e-3)  # the corrected bias is on the accumulator grid
