"""The generic ``finetune`` pass: recovers accuracy of a perturbed tiny model on digits."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from mobilec.context import Context
from mobilec.data import load_dataset
from mobilec.errors import MobilecError
from mobilec.passes.finetune import FineTune
from mobilec.registry import get_pass
from mobilec.report import RunReport
from mobilec.train import evaluate, fit


def _tiny() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(32, 10),
    )


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, object]:
    data = load_dataset("digits")
    torch.manual_seed(0)
    model = _tiny()
    fit(model, data, epochs=5, lr=0.05, batch_size=64, seed=0, progress=False, augment=False)
    return model.eval(), data


def _perturbed(model: nn.Module) -> nn.Module:
    bad = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in bad.parameters():
            if p.ndim > 1:
                p.add_(0.8 * p.std() * torch.randn(p.shape, generator=g))
    return bad.eval()


def _ctx(data: object, tmp_path: Path, teacher: nn.Module | None = None) -> Context:
    return Context(data=data, workdir=tmp_path, report=RunReport("t", {}, {}), example_inputs=(data.x_test[:1],),
                   teacher=teacher, show_progress=False)


def test_finetune_recovers_accuracy_of_a_perturbed_model(trained, tmp_path: Path) -> None:
    model, data = trained
    base_acc = evaluate(model, data)
    bad = _perturbed(model)
    bad_acc = evaluate(bad, data)
    assert bad_acc < base_acc - 0.1, (base_acc, bad_acc)  # the perturbation must really hurt
    frozen = copy.deepcopy(bad.state_dict())
    ctx = _ctx(data, tmp_path)
    tuned = FineTune(epochs=2, lr=0.02, batch_size=64, augment=False).apply(bad, ctx)
    rec = ctx.report.passes[-1]
    assert rec.name == "finetune" and rec.summary["accuracy_before"] == pytest.approx(bad_acc)
    assert rec.summary["accuracy_after"] == pytest.approx(evaluate(tuned, data))
    assert rec.summary["accuracy_after"] > bad_acc + 0.1, (bad_acc, rec.summary["accuracy_after"])
    assert rec.summary["n_train"] == len(data.y_train) and len(rec.summary["history"]) == 2
    assert all(torch.equal(v, bad.state_dict()[k]) for k, v in frozen.items())  # the input model is untouched


def test_distillation_and_train_subset(trained, tmp_path: Path) -> None:
    model, data = trained
    bad = _perturbed(model)
    ctx = _ctx(data, tmp_path, teacher=model)
    p = get_pass("finetune").from_params({"kd_weight": 0.7, "max_train_samples": 300, "lr": 0.02, "batch_size": 50}, where="t")
    tuned = p.apply(bad, ctx)
    summ = ctx.report.passes[-1].summary
    assert summ["n_train"] == 300 and summ["accuracy_after"] > summ["accuracy_before"]
    assert not tuned.training
    with pytest.raises(MobilecError, match="kd_weight > 0 needs a teacher"):
        p.apply(bad, _ctx(data, tmp_path, teacher=None))


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"lr": -1.0}, "lr must be positive"),
        ({"kd_weight": 2.0}, r"kd_weight must lie in \[0, 1\]"),
        ({"max_train_samples": 0}, "max_train_samples must be at least 1"),
        ({"optimizer": "rmsprop"}, "must be one of 'sgd', 'adam'"),
        ({"epoch": 1}, "unknown key 'epoch'"),
    ],
)
def test_bad_parameters(params: dict, match: str) -> None:
    with pytest.raises(MobilecError, match=match):
        get_pass("finetune").from_params(params, where="recipe.toml")


def test_needs_image_data(tmp_path: Path) -> None:
    ctx = Context(data=object(), workdir=tmp_path, report=RunReport("t", {}, {}), example_inputs=(torch.zeros(1, 1, 8, 8),))
    with pytest.raises(MobilecError, match="needs an image classification data set"):
        FineTune().apply(_tiny(), ctx)
