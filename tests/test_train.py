"""mobilec.train: fit / evaluate / predict_logits on sklearn digits (seconds on 2 cores)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mobilec.data import load_dataset
from mobilec.errors import MobilecError
from mobilec.train import augment_batch, evaluate, fit, predict_logits


def small_cnn(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes),
    )


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_fit_reduces_loss_and_learns(digits) -> None:
    torch.manual_seed(0)
    model = small_cnn()
    before = evaluate(model, digits)
    result = fit(model, digits, epochs=3, lr=0.1, batch_size=64, seed=0, progress=False, augment=False)
    assert len(result.history) == 3 and result.seconds > 0
    assert result.history[-1]["loss"] < 0.5 * result.history[0]["loss"]
    after = evaluate(model, digits)
    assert after > max(0.85, before + 0.3)
    assert result.history[-1]["lr"] == pytest.approx(0.0, abs=1e-9)  # cosine ends at 0
    assert model.training  # fit leaves the model in train mode as it found it


def test_fit_is_deterministic(digits) -> None:
    small = digits.subset(256, 64)
    outs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = small_cnn()
        fit(model, small, epochs=1, lr=0.05, batch_size=64, seed=3, progress=True)
        outs.append(predict_logits(model, small.x_test))
    assert torch.equal(outs[0], outs[1])


def test_channels_last_training_matches_contiguous_and_restores_layout(digits) -> None:
    """channels_last changes only the float summation order: the same seed gives the same model to
    float tolerance, the parameter objects (which optimizers hold) stay, and they end contiguous."""
    small = digits.subset(256, 64)
    models, logits = [], []
    for cl in (False, True):
        torch.manual_seed(0)
        model, teacher = small_cnn(), small_cnn()
        params = [id(p) for p in model.parameters()]
        start = model[0].weight.detach().clone()
        layouts: list[bool] = []  # the 32x16x3x3 weight: channels-last and contiguous are different layouts
        model[3].register_forward_pre_hook(
            lambda m, _a, seen=layouts: seen.append(m.weight.is_contiguous(memory_format=torch.channels_last)))
        fit(model, small, epochs=1, lr=0.05, batch_size=64, seed=3, teacher=teacher, progress=False, channels_last=cl)
        assert layouts == [cl] * 4  # 256 images, batch 64: the format was really used while training
        assert [id(p) for p in model.parameters()] == params
        for m in (model, teacher):
            assert all(p.is_contiguous() for p in m.parameters())
        assert (model[0].weight - start).abs().max() > 1e-3  # it trained
        models.append(model)
        logits.append(predict_logits(model, small.x_test))
    for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-4)
    assert torch.allclose(logits[0], logits[1], rtol=1e-3, atol=1e-3)


def test_distillation_param_groups_and_hooks(digits) -> None:
    small = digits.subset(256, 64)
    torch.manual_seed(0)
    teacher, student = small_cnn(), small_cnn()
    fit(teacher, small, epochs=1, lr=0.05, progress=False)
    steps: list[int] = []
    head = student[-1]
    rest = [p for n, p in student.named_parameters() if not n.startswith("8.")]
    groups = [{"params": rest}, {"params": list(head.parameters()), "lr": 0.0005, "weight_decay": 0.0}]
    frozen_start = head.weight.detach().clone()
    result = fit(student, small, epochs=2, lr=0.05, batch_size=128, teacher=teacher, kd_temperature=4.0,
                 kd_weight=0.7, optimizer="adam", param_groups=groups, on_step=lambda s, m: steps.append(s),
                 progress=False)
    assert steps == [1, 2, 3, 4] and len(result.history) == 2
    moved_head = (head.weight - frozen_start).abs().max().item()
    moved_conv = (student[0].weight.grad is not None)
    assert moved_conv and 0 < moved_head < 0.05  # the slow group moved, but little


def test_fit_rejects_bad_settings(digits) -> None:
    with pytest.raises(MobilecError, match="unknown optimizer 'lamb'"):
        fit(small_cnn(), digits, epochs=1, lr=0.1, optimizer="lamb", progress=False)
    with pytest.raises(MobilecError, match="lr > 0"):
        fit(small_cnn(), digits, epochs=1, lr=0.0, progress=False)
    with pytest.raises(MobilecError, match="diverged"):
        fit(small_cnn(), digits.subset(256, 8), epochs=1, lr=1e30, batch_size=64, progress=False)


def test_augment_batch() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    zero = torch.full((1, 1, 1, 1), -9.0)
    assert torch.equal(augment_batch(x, pad=0, hflip=False, zero=zero, gen=g), x)
    out = augment_batch(x, pad=1, hflip=False, zero=zero, gen=g)
    assert out.shape == x.shape
    # every crop is x shifted by at most one pixel, the uncovered border filled with the black value
    for b in range(2):
        ok = False
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                ref = torch.full((1, 6, 6), -9.0)
                ref[:, 1:5, 1:5] = x[b]
                ok |= torch.equal(out[b], ref[:, 1 + dy:5 + dy, 1 + dx:5 + dx])
        assert ok
    flipped = [augment_batch(x, pad=0, hflip=True, zero=zero, gen=g) for _ in range(8)]
    assert any(torch.equal(f[0], x[0].flip(2)) for f in flipped) and any(torch.equal(f[0], x[0]) for f in flipped)


def test_predict_logits_restores_mode(digits) -> None:
    model = small_cnn().train()
    logits = predict_logits(model, digits.x_test[:37], batch_size=10)
    assert logits.shape == (37, 10) and model.training
