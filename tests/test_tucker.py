"""Tucker-2 / SVD decomposition and the ``tucker`` pass."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from mobilec.context import Context
from mobilec.errors import MobilecError
from mobilec.passes.tucker import (
    LowRankSequential,
    TuckerDecomposition,
    decompose_conv,
    decompose_matrix,
    restructure_like,
    tucker2,
)
from mobilec.recipe import Recipe
from mobilec.registry import get_pass
from mobilec.report import RunReport, render_markdown


def _ctx(tmp_path: Path, shape: tuple[int, ...] = (1, 3, 16, 16)) -> Context:
    return Context(data=None, workdir=tmp_path, report=RunReport("test", {}, {}), example_inputs=(torch.randn(*shape),))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(in_channels=8, out_channels=12, kernel_size=3, stride=1, padding=1, bias=True),
        dict(in_channels=8, out_channels=12, kernel_size=3, stride=2, padding=2, dilation=2, bias=True),
        dict(in_channels=6, out_channels=10, kernel_size=(3, 5), stride=(2, 1), padding=(0, 2), bias=False),
        dict(in_channels=6, out_channels=4, kernel_size=3, padding=1, padding_mode="reflect", bias=True),
    ],
)
def test_full_rank_tucker_reproduces_the_conv(kwargs: dict) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(**kwargs)
    s, t = conv.in_channels, conv.out_channels
    kh, kw = conv.kernel_size
    seq, err = decompose_conv(conv, min(s, t * kh * kw), min(t, s * kh * kw))
    assert isinstance(seq, LowRankSequential) and err < 1e-10
    first, core, last = seq
    assert first.kernel_size == (1, 1) and first.bias is None and core.bias is None
    assert (core.stride, core.padding, core.dilation, core.padding_mode) == (conv.stride, conv.padding, conv.dilation, conv.padding_mode)
    assert (last.bias is None) == (conv.bias is None)
    x = torch.randn(2, s, 13, 11)
    with torch.no_grad():
        assert torch.allclose(seq(x), conv(x), atol=1e-5, rtol=0)


def test_exact_low_tucker_rank_kernel_is_recovered_at_its_ranks() -> None:
    g = torch.Generator().manual_seed(1)
    core = torch.randn(5, 3, 3, 3, generator=g, dtype=torch.float64)  # R4=5, R3=3
    u3 = torch.linalg.qr(torch.randn(16, 3, generator=g, dtype=torch.float64))[0]
    u4 = torch.linalg.qr(torch.randn(24, 5, generator=g, dtype=torch.float64))[0]
    w = torch.einsum("pqkl,tp,sq->tskl", core, u4, u3)
    c, a, b = tucker2(w, 3, 5, iters=2)
    assert torch.allclose(torch.einsum("pqkl,tp,sq->tskl", c, b, a), w, atol=1e-10)
    # HOOI never fits worse than the HOSVD start
    noisy = w + 0.3 * torch.randn(w.shape, generator=g, dtype=torch.float64)

    def err(iters: int) -> float:
        c, a, b = tucker2(noisy, 2, 3, iters=iters)
        return float(torch.linalg.vector_norm(torch.einsum("pqkl,tp,sq->tskl", c, b, a) - noisy))

    assert err(5) <= err(0) + 1e-9


def test_svd_of_linear_is_exact_at_full_rank_and_optimal_when_truncated() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(20, 12)
    full, err = decompose_matrix(lin, 12)
    x = torch.randn(4, 20)
    with torch.no_grad():
        assert torch.allclose(full(x), lin(x), atol=1e-5) and err < 1e-10
    part, err5 = decompose_matrix(lin, 5)
    s = torch.linalg.svdvals(lin.weight.detach().double())
    assert err5 == pytest.approx(float(s[5:].norm() / s.norm()), rel=1e-6)  # Eckart–Young optimum
    assert [type(m) for m in part] == [nn.Linear, nn.Linear] and part[0].bias is None


def test_svd_of_strided_padded_pointwise_conv_is_exact() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(10, 6, 1, stride=2, padding=1, bias=True)
    seq, _ = decompose_matrix(conv, 6)
    x = torch.randn(2, 10, 9, 9)
    with torch.no_grad():
        assert torch.allclose(seq(x), conv(x), atol=1e-5)


class Tiny(nn.Module):
    """Stem conv, a full 3×3 conv, a depthwise conv, a 1×1 conv and two Linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.conv = nn.Conv2d(32, 48, 3, padding=1)
        self.dw = nn.Conv2d(48, 48, 3, padding=1, groups=48)
        self.pw = nn.Conv2d(48, 64, 1)
        self.bn = nn.BatchNorm2d(64)
        self.fc1 = nn.Linear(64, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pw(self.dw(torch.relu(self.conv(torch.relu(self.stem(x))))))
        x = self.bn(x).mean((2, 3))
        return self.fc2(torch.relu(self.fc1(x)))


def _plant_low_rank(model: Tiny) -> None:
    """Plant low ranks plus a little noise so that VBMF has a right answer: conv (4, 6), pw 8, fc1 5, fc2 3."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        core = torch.randn(6, 4, 3, 3, generator=g)
        u3, u4 = torch.randn(32, 4, generator=g), torch.randn(48, 6, generator=g)
        w = torch.einsum("pqkl,tp,sq->tskl", core, u4, u3)
        model.conv.weight.copy_(w + 0.01 * torch.randn(w.shape, generator=g))
        for layer, r in ((model.pw, 8), (model.fc1, 5), (model.fc2, 3)):
            t, s = layer.weight.shape[:2]
            m = torch.randn(t, r, generator=g) @ torch.randn(r, s, generator=g) / s**0.5
            layer.weight.copy_((m + 0.01 * torch.randn(m.shape, generator=g)).reshape(layer.weight.shape))


def test_pass_decomposes_reports_and_leaves_the_users_model_alone(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Tiny().eval()
    _plant_low_rank(model)
    before = copy.deepcopy(model.state_dict())
    ctx = _ctx(tmp_path)
    out = TuckerDecomposition(rank_method="vbmf").apply(model, ctx)

    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert type(model.conv) is nn.Conv2d
    layers = {rec["name"]: rec for rec in ctx.report.passes[-1].summary["layers"]}
    assert set(layers) == {"stem", "conv", "dw", "pw", "fc1", "fc2"}
    assert layers["stem"]["decomposed"] is False and "skip_first" in layers["stem"]["reason"]
    assert layers["dw"]["decomposed"] is False and "depthwise" in layers["dw"]["reason"]
    assert type(out.dw) is nn.Conv2d and type(out.stem) is nn.Conv2d

    conv = layers["conv"]
    assert conv["decomposed"] and conv["ranks"] == [4, 6] and conv["raw_ranks"] == [4, 6]
    assert conv["shape"] == [48, 32, 3, 3] and conv["rank_source"] == "vbmf"
    assert conv["macs_after"] < conv["macs_before"] and conv["params_after"] < conv["params_before"]
    assert conv["rel_error"] < 0.05
    assert conv["compression"] == pytest.approx(9 * 32 * 48 / (32 * 4 + 9 * 4 * 6 + 48 * 6))
    assert isinstance(out.conv, LowRankSequential) and out.conv[1].weight.shape == (6, 4, 3, 3)
    assert [layers[n]["ranks"] for n in ("pw", "fc1", "fc2")] == [[8], [5], [3]]
    assert all(layers[n]["decomposed"] for n in ("pw", "fc1", "fc2"))
    assert isinstance(out.pw, LowRankSequential) and out.pw[0].kernel_size == (1, 1)

    summary = ctx.report.passes[-1].summary
    assert summary["macs_after"] < summary["macs_before"] and summary["params_after"] < summary["params_before"]
    # the decomposition keeps the function close (planted structure + small noise)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        rel = (out(x) - model(x)).norm() / model(x).norm()
    assert rel < 0.1
    # a saved compressed state dict reloads into the original architecture
    sd = out.state_dict()
    again = restructure_like(Tiny(), sd)
    again.load_state_dict(sd)
    with torch.no_grad():
        assert torch.allclose(again.eval()(x), out(x), atol=1e-6)


def test_layers_that_would_not_get_cheaper_are_left_alone(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    out = TuckerDecomposition(weakening=1.0).apply(Tiny().eval(), ctx)  # full ranks: never cheaper
    layers = ctx.report.passes[-1].summary["layers"]
    assert not any(rec["decomposed"] for rec in layers)
    assert all("would not reduce MACs" in rec["reason"] for rec in layers if rec["name"] in ("conv", "pw", "fc1", "fc2"))
    assert not any(isinstance(m, LowRankSequential) for m in out.modules())


def test_explicit_ranks_targets_and_methods(tmp_path: Path) -> None:
    model = Tiny().eval()
    ctx = _ctx(tmp_path)
    p = TuckerDecomposition(ranks=("conv=8:12", "fc1=16"), targets=("conv", "fc1"))
    out = p.apply(model, ctx)
    layers = {rec["name"]: rec for rec in ctx.report.passes[-1].summary["layers"]}
    assert set(layers) == {"conv", "fc1"}
    assert layers["conv"]["ranks"] == [8, 12] and layers["conv"]["rank_source"] == "explicit"
    assert out.fc1[0].out_features == 16
    ctx = _ctx(tmp_path)
    TuckerDecomposition(rank_method="fixed", rank_fraction=0.25, decompose_linear=False).apply(model, ctx)
    layers = {rec["name"]: rec for rec in ctx.report.passes[-1].summary["layers"]}
    assert layers["conv"]["ranks"] == [8, 12] and not layers["fc1"]["decomposed"]
    assert "decompose_linear" in layers["fc1"]["reason"]
    ctx = _ctx(tmp_path)
    TuckerDecomposition(rank_method="energy", energy=0.5).apply(model, ctx)
    conv = next(r for r in ctx.report.passes[-1].summary["layers"] if r["name"] == "conv")
    assert 1 <= conv["ranks"][0] < 32


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"ranks": ["conv=64:12"]}, r"ranks 64:12 for 'conv' exceed its dimensions \(R3 <= 32, R4 <= 48\)"),
        ({"ranks": ["fc2=11"]}, r"rank 11 for 'fc2' exceeds its dimensions \(R <= 10\)"),
        ({"ranks": ["conv=12"]}, r"ranks for conv 'conv' need two values R3:R4"),
        ({"ranks": ["dw=4:4"]}, r"ranks names 'dw' \(depthwise conv2d\).*grouped/depthwise"),
        ({"targets": ["dw"]}, r"targets names 'dw' \(depthwise conv2d\), which Tucker-2 .* does not apply"),
        ({"targets": ["bn"]}, r"targets names 'bn' \(BatchNorm2d\), which is not a Conv2d or Linear"),
        ({"targets": ["fc1"], "decompose_linear": False}, r"decompose_linear = false"),
        ({"targets": ["nope"]}, r"target 'nope' is not a module"),
        ({"ranks": ["conv=8:8"], "ignore": ["conv"]}, r"'conv' has explicit ranks but targets/ignore exclude it"),
    ],
)
def test_bad_layer_choices_raise(tmp_path: Path, params: dict, match: str) -> None:
    p = get_pass("tucker").from_params(params, where="test")
    with pytest.raises(MobilecError, match=match):
        p.apply(Tiny().eval(), _ctx(tmp_path))


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"ranks": ["conv=0:4"]}, r"ranks must be at least 1"),
        ({"ranks": ["fc1=0"]}, r"ranks must be at least 1"),
        ({"ranks": ["conv"]}, r"must look like 'layer.name=R3:R4'"),
        ({"ranks": ["conv=a:b"]}, r"must be integers"),
        ({"weakening": 1.5}, r"weakening must lie in \[0, 1\]"),
        ({"min_rank": 0}, r"min_rank must be at least 1"),
        ({"rank_method": "svd"}, r"must be one of 'vbmf', 'energy', 'fixed'"),
    ],
)
def test_bad_parameters_raise_mobilec_error(params: dict, match: str) -> None:
    with pytest.raises(MobilecError, match=match):
        get_pass("tucker").from_params(params, where="recipe.toml")


@pytest.mark.parametrize(("name", "extra"), [("tucker", []), ("tucker-int8", ["ptq"]), ("tucker-profit4bit", ["profit"])])
def test_shipped_tucker_recipes(name: str, extra: list[str]) -> None:
    rec = Recipe.load(name)
    kinds = [p.name for p in rec.passes]
    assert kinds == ["tucker", "finetune", *extra]  # composed recipes build on `tucker`
    assert rec.passes[0].to_params() == Recipe.load("tucker").passes[0].to_params()


def test_skip_first_means_first_executed_conv(tmp_path: Path) -> None:
    class Reordered(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.late = nn.Conv2d(16, 16, 3, padding=1)  # registered first, runs second
            self.early = nn.Conv2d(3, 16, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.late(self.early(x))

    ctx = _ctx(tmp_path)
    TuckerDecomposition(rank_method="fixed", rank_fraction=0.25).apply(Reordered(), ctx)
    layers = {rec["name"]: rec for rec in ctx.report.passes[-1].summary["layers"]}
    assert "skip_first" in layers["early"]["reason"] and layers["late"]["decomposed"]


def test_report_md_has_the_per_layer_table_and_names_grouped_convs(tmp_path: Path) -> None:
    class WithGroups(Tiny):
        def __init__(self) -> None:
            super().__init__()
            self.dw = nn.Conv2d(48, 48, 3, padding=1, groups=4)  # grouped, not depthwise

    ctx = _ctx(tmp_path)
    TuckerDecomposition(rank_method="fixed", rank_fraction=0.25).apply(WithGroups().eval(), ctx)
    md = render_markdown(ctx.report.to_dict())
    assert "### tucker: per layer" in md
    row = next(line for line in md.splitlines() if line.startswith("| conv |"))
    # shape, ranks of full ranks, params and MACs before → after, error, decision
    assert "[48, 32, 3, 3]" in row and "[8, 12] of [32, 48]" in row and "13,872 → " in row and "| yes |" in row
    dw = next(line for line in md.splitlines() if line.startswith("| dw |"))
    assert "grouped conv2d (groups=4)" in dw and "| no: Tucker-2 on channel modes does not apply" in dw
    assert "- not decomposable (grouped/depthwise convs, left alone): dw" in md
    stem = next(line for line in md.splitlines() if line.startswith("| stem |"))
    assert "no: first conv of the network" in stem
