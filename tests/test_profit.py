"""The duq/profit passes: parameters, recipes, freezing semantics, and one tiny end-to-end run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_duq import TinyNet, quantized_tiny

from mobilec.errors import MobilecError
from mobilec.passes.quant.profit import DuQTraining, Profit
from mobilec.passes.quant.qmodules import duq_plan, quant_layers, quantizer_parameters
from mobilec.passes.quant.trainer import DistInfo, Trainer
from mobilec.recipe import Recipe
from mobilec.registry import get_pass

RECIPES = ["duq4bit", "duq3bit", "profit4bit", "profit3bit", "profit4bit-full", "tucker-profit4bit"]


@pytest.mark.parametrize("name", RECIPES)
def test_recipes_load_and_round_trip(name: str, tmp_path: Path) -> None:
    rec = Recipe.load(name)
    quant = [p for p in rec.passes if isinstance(p, DuQTraining)]
    assert len(quant) == 1
    assert set(rec.export.targets) <= {"executorch", "tflite"}
    (tmp_path / "r.toml").write_text(rec.dump())
    again = Recipe.load(str(tmp_path / "r.toml"))
    assert again.to_dict() == rec.to_dict()
    bits = 3 if "3bit" in name else 4
    assert quant[0].weight_bits == bits and quant[0].act_bits == bits
    assert quant[0].name == ("duq" if name.startswith("duq") else "profit")


def test_registered() -> None:
    assert get_pass("profit") is Profit and get_pass("duq") is DuQTraining


@pytest.mark.parametrize(("params", "match"), [
    ({"weight_bits": 9, "weight_schedule": [8, 9]}, "outside the supported range"),
    ({"act_bits": 3}, "must end at the target width 3"),
    ({"act_stage_steps": [1, 2]}, "act_stage_steps needs 1 or 3 entries"),
    ({"lr": 0.0}, "lr > 0"),
    ({"first_last_bits": 1}, "first_last_bits"),
    ({"act_init": "max"}, "act_init .max.: choose one of p95, mse"),
    ({"weight_init": "p95"}, "weight_init .p95.: choose one of max, mse"),
])
def test_bad_parameters_are_named(params: dict, match: str) -> None:
    with pytest.raises(MobilecError, match=match):
        Profit.from_params(params, where="recipe.toml")


def _trainer(model: torch.nn.Module) -> Trainer:
    from mobilec.data import load_dataset

    ds = load_dataset("digits")
    return Trainer(model, ds.x_train[:256], ds.y_train[:256], teacher=None, batch_size=32, weight_decay=1e-4,
                   quant_lr_scale=0.01, augment=False, hflip=False, zero=torch.zeros(1, 1, 1, 1), seed=0,
                   ema_decay=0.9, dist=DistInfo())


def test_frozen_layers_keep_their_weights_while_bn_and_quantizers_learn() -> None:
    qm = quantized_tiny(4).train()
    trainer = _trainer(qm)
    layers = dict(quant_layers(qm))
    before = {n: m.weight.detach().clone() for n, m in layers.items()}
    bn_before = qm.get_submodule("dw.1").weight.detach().clone()
    q_before = [p.detach().clone() for p in quantizer_parameters(qm)]
    trainer.run_phase("phase 2", 3, lr=0.05, frozen={"dw.0", "head"})
    assert torch.equal(layers["dw.0"].weight, before["dw.0"]) and torch.equal(layers["head"].weight, before["head"])
    assert torch.equal(layers["head"].bias, layers["head"].bias)
    assert not torch.equal(layers["pw.0"].weight, before["pw.0"])
    assert not torch.equal(qm.get_submodule("dw.1").weight, bn_before)  # the frozen layer's BN still learns
    assert any(not torch.equal(a, b) for a, b in zip(q_before, quantizer_parameters(qm), strict=True))
    assert all(p.requires_grad for p in qm.parameters())  # restored after the phase
    # BN-stabilize: no conv/linear weight moves
    before = {n: m.weight.detach().clone() for n, m in layers.items()}
    trainer.run_phase("bn", 2, lr=0.05, train_weights=False)
    assert all(torch.equal(m.weight, before[n]) for n, m in layers.items())
    assert trainer.ema is not None and trainer.total_steps == 5


def test_ema_tracks_float_state_and_copies_flags() -> None:
    qm = quantized_tiny(4).train()
    trainer = _trainer(qm)
    trainer.run_phase("p", 2, lr=0.05)
    ema = trainer.ema_model()
    w, w_ema = qm.get_submodule("pw.0").weight, ema.get_submodule("pw.0").weight
    assert not torch.equal(w, w_ema)
    assert ema.get_submodule("pw.0").act_q.bits == 4


def test_ema_equals_the_per_tensor_average_through_a_fold_and_a_bit_change() -> None:
    """update_ema reuses its pairing of EMA and model tensors while the model's tensors stay the same objects:
    a fold (new entries, dropped ones) and a bit change must still give the step-by-step reference."""
    from mobilec.passes.quant.qmodules import enable_quantizers, fold_batchnorm

    qm = quantized_tiny(4, seed=2).train()
    enable_quantizers(qm, acts=True, weights=True)
    trainer = _trainer(qm)
    ref = {k: v.detach().clone() for k, v in qm.state_dict().items()}

    def step_reference() -> None:  # the EMA written out per tensor
        for k, v in qm.state_dict().items():
            e = ref.get(k)
            if v.dtype.is_floating_point and e is not None and e.shape == v.shape:
                e.mul_(0.9).add_(v, alpha=1 - 0.9)
            else:
                ref[k] = v.clone()

    def steps(n: int) -> None:
        for _ in range(n):
            with torch.no_grad():
                for p in qm.parameters():
                    p.add_(torch.randn_like(p), alpha=0.01)
            trainer.update_ema()
            step_reference()

    steps(3)
    fold_batchnorm(qm, trainable=True)  # BN modules replaced: entries appear and disappear
    steps(2)
    qm.get_submodule("pw.0").act_q.bits = 3  # an integer buffer changes in place
    steps(2)
    assert trainer.ema is not None
    for k in qm.state_dict():
        assert torch.equal(trainer.ema[k], ref[k]), k
    assert trainer.ema["pw.0.act_q.bits_buf"].item() == 3


@pytest.mark.slow
def test_profit_pass_end_to_end(tmp_path: Path) -> None:
    from mobilec.context import Context
    from mobilec.data import load_dataset
    from mobilec.report import RunReport
    from mobilec.train import evaluate, fit

    torch.manual_seed(0)
    ds = load_dataset("digits")
    model = TinyNet()
    fit(model, ds, epochs=4, lr=0.05, batch_size=64, progress=False)
    model.eval()
    fp_acc = evaluate(model, ds)
    report = RunReport(recipe="t", model={}, data={})
    ctx = Context(data=ds, workdir=tmp_path, report=report, example_inputs=(ds.x_test[:1],), teacher=model,
                  show_progress=False)
    p = Profit(act_schedule=(8, 4), weight_schedule=(8, 4), act_stage_steps=(4,), weight_stage_steps=(4,), bn_steps=2,
               sample_steps=4, phase_steps=6, batch_size=32, holdout_samples=200, lr=0.02)
    q = p.apply(model, ctx)
    assert duq_plan(q).folded and not q.training
    summary = report.passes[-1].summary
    convs = [n for n, lp in duq_plan(q).layers.items() if lp.op != "linear"]
    assert set(summary["aiwq"]) == set(convs) and summary["aiwq_ranking"][0] in convs
    n = len(convs)
    assert len(summary["frozen_phase2"]) == n // 3 and len(summary["frozen_phase3"]) == (2 * n) // 3
    assert summary["frozen_phase3"][: n // 3] == summary["frozen_phase2"]
    ho = summary["holdout_accuracy"]
    assert ho["selected"] in ("raw", "ema") and ho["n"] == 200
    assert ho["folded"] == ho[ho["selected"]], "the last phases trained the folded model: folding changes nothing"
    assert summary["fold_phases"] == 3 and "BN folded" in summary["phases"][-4]["name"]
    assert Path(summary["aiwq_plot"]).read_bytes()[:4] == b"\x89PNG"
    assert summary["steps"] == 2 * (2 + 4 + 2) + (2 + 4 + 2) + 2 + 4 + 3 * 6 + 2
    assert ctx.lowering is not None and ctx.extras["duq"]["weight_bits"] == 4
    q_acc = evaluate(q, ds)
    assert q_acc > 0.5 * fp_acc, (q_acc, fp_acc)  # a broken quantizer or schedule lands near chance (0.1)
    from mobilec import checkpoint  # the trained model is what `export --resume` continues from

    assert checkpoint.save(tmp_path, ctx, 0, "profit", q, "fp") is None
    resumed = checkpoint.load_completed(tmp_path, ["profit"], "fp")
    assert resumed is not None and torch.equal(resumed.model(ds.x_test[:64]), q(ds.x_test[:64]))
    # the ablation runs the same schedule without freezing
    report2 = RunReport(recipe="t", model={}, data={})
    ctx2 = Context(data=ds, workdir=tmp_path, report=report2, example_inputs=(ds.x_test[:1],), teacher=model,
                   show_progress=False)
    DuQTraining(**{k: v for k, v in p.to_params().items() if k != "type"}).apply(model, ctx2)
    s2 = report2.passes[-1].summary
    assert s2["frozen_phase2"] == [] and s2["steps"] == summary["steps"]
