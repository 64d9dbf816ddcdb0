"""Generic fine-tuning pass: recover accuracy after a structural change, optionally by distillation."""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import nn

from mobilec.errors import MobilecError
from mobilec.passes.base import Pass
from mobilec.registry import register_pass

if TYPE_CHECKING:
    from mobilec.context import Context


@register_pass
@dataclass(frozen=True, kw_only=True)
class FineTune(Pass):
    """Train the whole model on the context's train split with :func:`mobilec.train.fit`.

    ``kd_weight > 0`` distils from ``ctx.teacher`` (the model as it entered the recipe):
    loss = (1 − kd_weight)·CE + kd_weight·T²·softCE at temperature ``kd_temperature``.
    ``max_train_samples`` caps the train split (a seeded random subset; None = all of it).
    ``seed`` None uses the run's seed. The model is deep-copied, never trained in place.
    Accuracy on the test split before and after goes to the report when ``evaluate``.

    >>> FineTune(epochs=1, lr=0.01, kd_weight=0.5).to_params()["kd_weight"]
    0.5
    """

    name: ClassVar[str] = "finetune"
    summary: ClassVar[str] = "fine-tune all weights on the train split (optional distillation from the original model)"
    epochs: int = 1
    lr: float = 0.01
    batch_size: int = 128
    optimizer: Literal["sgd", "adam"] = "sgd"
    weight_decay: float = 5e-5
    kd_weight: float = 0.0
    kd_temperature: float = 4.0
    warmup_epochs: float = 0.1
    augment: bool = True
    seed: int | None = None
    max_train_samples: int | None = None
    evaluate: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0.0 <= self.kd_weight <= 1.0:
            raise ValueError(f"kd_weight must lie in [0, 1] (0: labels only, 1: teacher only), got {self.kd_weight}")
        if not self.kd_temperature > 0:
            raise ValueError(f"kd_temperature must be positive, got {self.kd_temperature}")
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ValueError(f"max_train_samples must be at least 1 (or omitted for all), got {self.max_train_samples}")

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        from mobilec.train import fit

        t0 = time.perf_counter()
        data = ctx.require_image_data(self.name)
        teacher = None
        if self.kd_weight > 0:
            if ctx.teacher is None:
                raise MobilecError(
                    "pass 'finetune': kd_weight > 0 needs a teacher model, and the context has none",
                    hint="set kd_weight = 0, or run through mobilec.export, which keeps the original model as teacher",
                )
            teacher = ctx.teacher
        seed = ctx.seed if self.seed is None else self.seed
        train_data = self._train_split(data, seed)
        model = copy.deepcopy(model)
        summary: dict[str, Any] = {"n_train": len(train_data.y_train)}
        if self.evaluate:
            summary["accuracy_before"] = ctx.evaluate(model)
        result = fit(
            model, train_data, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, optimizer=self.optimizer,
            weight_decay=self.weight_decay, teacher=teacher, kd_weight=self.kd_weight, kd_temperature=self.kd_temperature,
            warmup_epochs=self.warmup_epochs, augment=self.augment, seed=seed, progress=ctx.show_progress,
        )
        model.eval()
        if self.evaluate:
            summary["accuracy_after"] = ctx.evaluate(model)
        summary.update(train_seconds=result.seconds, final_loss=result.final_loss, history=result.history)
        ctx.report.add_pass(self.name, self.to_params(), time.perf_counter() - t0, **summary)
        return model

    def _train_split(self, data: Any, seed: int) -> Any:
        """The data set with its train split capped at ``max_train_samples`` (test split untouched)."""
        n = len(data.y_train)
        if self.max_train_samples is None or self.max_train_samples >= n:
            return data
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(n, generator=g)[: self.max_train_samples]
        return dataclasses.replace(data, x_train=data.x_train[idx], y_train=data.y_train[idx])
