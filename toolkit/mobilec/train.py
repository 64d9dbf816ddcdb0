"""The shared supervised training / evaluation loop (used by the zoo, QAT, distillation and fine-tuning).

>>> from mobilec.data import load_dataset
>>> from mobilec.models import build_model
>>> ds = load_dataset("digits")
>>> model = build_model("mobilenet_v1", num_classes=10, in_channels=1, pretrained=False)
>>> result = fit(model, ds, epochs=1, lr=0.05, progress=False)
>>> 0.0 <= evaluate(model, ds) <= 1.0
True
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mobilec.data import ImageDataset
from mobilec.errors import MobilecError


@dataclass
class FitResult:
    """Wall-clock seconds of :func:`fit` and one dict per epoch (epoch, loss, train_acc, lr, seconds, images_per_s)."""

    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def final_loss(self) -> float:
        return self.history[-1]["loss"] if self.history else math.nan


def augment_batch(x: torch.Tensor, *, pad: int, hflip: bool, zero: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random crop after padding by ``pad`` (with the normalized value of a black pixel) and optional h-flip."""
    b, _, h, w = x.shape
    if pad > 0:
        xp = F.pad(x - zero, (pad, pad, pad, pad)) + zero
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
        rows = (dy[:, None] + torch.arange(h))[:, :, None]  # B×H×1
        cols = (dx[:, None] + torch.arange(w))[:, None, :]  # B×1×W
        x = xp[torch.arange(b)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)  # B×H×W×C -> B×C×H×W
    if hflip:
        flip = torch.rand(b, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x.contiguous()


def _default_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv / linear weights only, not on BN parameters and biases."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def fit(
    model: nn.Module,
    dataset: ImageDataset,
    *,
    epochs: int,
    lr: float,
    batch_size: int = 128,
    weight_decay: float = 5e-5,
    optimizer: str = "sgd",
    label_smoothing: float = 0.0,
    teacher: nn.Module | None = None,
    kd_temperature: float = 1.0,
    kd_weight: float = 0.5,
    seed: int = 0,
    progress: bool = True,
    param_groups: Iterable[dict[str, Any]] | None = None,
    on_step: Callable[[int, nn.Module], None] | None = None,
    augment: bool = True,
    warmup_epochs: float = 0.5,
    channels_last: bool = True,
) -> FitResult:
    """Train ``model`` on ``dataset``'s train split in place and return timings and per-epoch history.

    SGD (Nesterov, momentum 0.9) or Adam (AdamW when ``weight_decay`` > 0), a linear warm-up of
    ``warmup_epochs`` then per-step cosine decay to 0. ``augment`` applies a random crop (padding 2,
    or 1 below 16 px) and, when ``dataset.hflip``, horizontal flips.
    With a ``teacher``, the loss is ``(1-kd_weight)·CE + kd_weight·T²·softCE(student/T, teacher/T)``.
    ``param_groups`` replaces the default groups (decay on weights, none on BN/bias); groups
    without ``lr`` / ``weight_decay`` get ``lr`` / ``weight_decay``; the schedule scales every
    group's own ``lr``. ``on_step(step, model)`` runs after each optimizer step. The number of
    threads is whatever the caller set with ``torch.set_num_threads``.
    ``channels_last`` trains in the channels-last memory format (model, teacher and batches): on
    3-channel inputs 1.2-2.0x the images/s for the zoo's convnets (float and tac-binarized) on these
    CPUs, on 1-channel inputs no change (0.95-1.03x), as their augmented batches already have
    channels-last strides (``bench/results/train_speed.md``); only the float summation order
    differs. Parameters are contiguous again when ``fit`` returns.
    """
    if epochs < 0 or lr <= 0 or batch_size < 1:
        raise MobilecError(f"bad training settings epochs={epochs} lr={lr} batch_size={batch_size}",
                           hint="use epochs ≥ 0, lr > 0, batch_size ≥ 1")
    groups = list(param_groups) if param_groups is not None else _default_groups(model, weight_decay)
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    elif optimizer == "adam":
        opt = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay) if weight_decay else torch.optim.Adam(groups, lr=lr)
    else:
        raise MobilecError(f"unknown optimizer {optimizer!r}", hint="use 'sgd' or 'adam'")
    n = len(dataset.x_train)
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    total = max(1, epochs * steps_per_epoch)
    warmup = min(int(warmup_epochs * steps_per_epoch), total // 4)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout masks
    h = dataset.input_shape[1]
    pad = 2 if h >= 16 else 1
    zero = (-torch.tensor(dataset.mean) / torch.tensor(dataset.std)).view(1, -1, 1, 1)
    if teacher is not None:
        teacher.eval()
    result = FitResult(0.0)
    start = time.perf_counter()
    bar = _Bar(progress, epochs, steps_per_epoch)
    step = 0
    was_training = model.training
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    with bar, _memory_format([model, teacher], fmt):
        for epoch in range(epochs):
            model.train()
            t0 = time.perf_counter()
            perm = torch.randperm(n, generator=gen)
            loss_sum, correct, seen = 0.0, 0, 0
            for i in range(steps_per_epoch):
                idx = perm[i * batch_size:(i + 1) * batch_size]
                x, y = dataset.x_train[idx], dataset.y_train[idx]
                if augment:
                    x = augment_batch(x, pad=pad, hflip=dataset.hflip, zero=zero, gen=gen)
                x = x.contiguous(memory_format=fmt)
                logits = model(x)
                loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
                if teacher is not None:
                    with torch.no_grad():
                        t_logits = teacher(x)
                    t = kd_temperature
                    soft = -(F.softmax(t_logits / t, 1) * F.log_softmax(logits / t, 1)).sum(1).mean() * t * t
                    loss = (1 - kd_weight) * loss + kd_weight * soft
                if not torch.isfinite(loss):
                    raise MobilecError(f"training diverged at epoch {epoch + 1} step {i} (loss {loss.item()})",
                                       hint="lower the learning rate")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                if on_step is not None:
                    on_step(step, model)
                loss_sum += loss.item() * len(y)
                correct += int((logits.argmax(1) == y).sum())
                seen += len(y)
                bar.advance(epoch, loss_sum / seen, seen / (time.perf_counter() - t0))
            dt = time.perf_counter() - t0
            stats = {"epoch": epoch + 1, "loss": loss_sum / max(1, seen), "train_acc": correct / max(1, seen),
                     "lr": opt.param_groups[0]["lr"], "seconds": dt, "images_per_s": seen / dt}
            result.history.append(stats)
            bar.epoch_done(stats)
    model.train(was_training)
    result.seconds = time.perf_counter() - start
    return result


@contextmanager
def _memory_format(modules: list[nn.Module | None], fmt: torch.memory_format) -> Iterator[None]:
    """The 4-D parameters and buffers of ``modules`` in ``fmt`` inside the block, contiguous again after it
    (in place: parameter objects, and so optimizer references to them, stay the same)."""
    nets = [m for m in modules if m is not None] if fmt != torch.contiguous_format else []
    for m in nets:
        m.to(memory_format=fmt)
    try:
        yield
    finally:
        for m in nets:
            m.to(memory_format=torch.contiguous_format)


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits of ``model`` (in eval mode) on ``x``, batched; the model's train/eval mode is restored."""
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        outs = [model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    finally:
        if was_training:
            model.train()
    return torch.cat(outs) if outs else torch.empty(0)


def evaluate(model: nn.Module, dataset: ImageDataset, batch_size: int = 512) -> float:
    """Top-1 accuracy on the test split, in [0, 1]."""
    logits = predict_logits(model, dataset.x_test, batch_size)
    return float((logits.argmax(1) == dataset.y_test).float().mean())


class _Bar:
    """A rich progress bar (one task per run), or nothing when ``enabled`` is False."""

    def __init__(self, enabled: bool, epochs: int, steps: int) -> None:
        self.enabled, self.epochs, self.steps = enabled, epochs, steps
        self.progress: Any = None

    def __enter__(self) -> _Bar:
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(), TimeRemainingColumn(), transient=False,
            )
            self.progress.start()
            self.task = self.progress.add_task("train", total=self.epochs * self.steps, info="")
        return self

    def advance(self, epoch: int, loss: float, ips: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=1, description=f"epoch {epoch + 1}/{self.epochs}",
                                 info=f"loss {loss:.4f}  {ips:,.0f} img/s")

    def epoch_done(self, s: dict[str, float]) -> None:
        if self.progress is not None:
            self.progress.console.print(
                f"epoch {int(s['epoch'])}/{self.epochs}  loss {s['loss']:.4f}  train acc {s['train_acc']:.4f}  "
                f"lr {s['lr']:.4g}  {s['images_per_s']:,.0f} img/s  {s['seconds']:.0f}s"
            )

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()
