"""The ``rtn`` pass: plain round-to-nearest k-bit weight PTQ (the QAT baseline), lowered like DuQ."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_duq import TinyNet, randomize_bn

from mobilec.context import Context
from mobilec.data import load_dataset
from mobilec.errors import MobilecError
from mobilec.passes.quant.lowering import build_deploy_module
from mobilec.passes.quant.qmodules import duq_plan, quant_layers
from mobilec.passes.quant.rtn import RoundToNearest
from mobilec.recipe import Recipe
from mobilec.report import RunReport


def _apply(p: RoundToNearest, tmp_path: Path) -> tuple[torch.nn.Module, torch.nn.Module, Context]:
    data = load_dataset("digits")
    torch.manual_seed(0)
    model = randomize_bn(TinyNet()).eval()
    ctx = Context(data=data, workdir=tmp_path, report=RunReport(recipe="t", model={}, data={}),
                  example_inputs=(data.x_test[:1],), seed=0, show_progress=False)
    return model, p.apply(model, ctx).eval(), ctx


def test_recipe_loads() -> None:
    (p,) = Recipe.load("rtn4bit").passes
    assert isinstance(p, RoundToNearest) and p.weight_bits == 4 and p.act_bits == 8 and p.per_channel_weights


@pytest.mark.parametrize("bits", [3, 4])
def test_weights_are_round_to_nearest_on_the_max_abs_grid(bits: int, tmp_path: Path) -> None:
    model, q, ctx = _apply(RoundToNearest(weight_bits=bits, calibration_samples=64), tmp_path)
    plan = duq_plan(q)
    orig = dict(model.named_modules())
    for name, layer in quant_layers(q):
        w = orig[name].weight.detach()
        k = 2 ** ((bits if plan.layers[name].role == "body" else 8) - 1) - 1
        m = w.reshape(w.shape[0], -1).abs().amax(1).view(-1, *[1] * (w.dim() - 1))
        expected = torch.round(w / m * k) * m / k  # plain RTN, per output channel
        got = layer.weight_q(layer.weight).detach()
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert ctx.lowering is not None and ctx.report.passes[-1].summary["weight_bits"] == bits
    assert plan.folded


def test_deploy_graph_equals_the_rtn_model(tmp_path: Path) -> None:
    _, q, ctx = _apply(RoundToNearest(calibration_samples=64), tmp_path)
    x = ctx.data.x_test[:100]
    deploy, infos = build_deploy_module(q)
    with torch.no_grad():
        ref, out = q(x), deploy(x)
    assert torch.equal(ref.argmax(1), out.argmax(1))
    assert float((ref - out).abs().max()) <= 1e-5 * float(ref.abs().max())
    assert any(i.weight_bits == 4 for i in infos)


@pytest.mark.parametrize(("params", "match"), [
    ({"weight_bits": 1}, "outside the supported range"),
    ({"act_bits": 9}, "act_bits"),
    ({"calibration_samples": 0}, "calibration_samples"),
])
def test_bad_parameters_are_named(params: dict, match: str) -> None:
    with pytest.raises(MobilecError, match=match):
        RoundToNearest.from_params(params, where="recipe.toml")
