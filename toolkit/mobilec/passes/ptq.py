"""int8 post-training static quantization, realised by each target's own quantizer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from mobilec.context import Context
from mobilec.passes.base import Pass
from mobilec.quant import QuantPlan
from mobilec.registry import register_pass


@register_pass
@dataclass(frozen=True, kw_only=True)
class PostTrainingQuantization(Pass):
    """Plan int8 PTQ: per-channel symmetric weights, static per-tensor activations.

    The pass leaves the torch model unchanged and records a :class:`QuantPlan` in the
    context; each exporter quantizes with its runtime's own PT2E/ORT quantizer, calibrated on
    ``calibration_batches`` real training batches, so the int8 graph is the one that runtime
    executes. Sub-8-bit widths are the job of the ``duq``/``profit`` passes.

    >>> PostTrainingQuantization(calibration_batches=8).to_params()["type"]
    'ptq'
    """

    name: ClassVar[str] = "ptq"
    summary: ClassVar[str] = "int8 post-training static quantization (per-channel weights, calibrated activations)"
    bits: int = 8
    calibration_batches: int = 32
    batch_size: int = 32
    per_channel: bool = True

    def __post_init__(self) -> None:
        if self.bits != 8:
            raise ValueError(f"bits = {self.bits}: the ptq pass does int8 only; use the duq/profit recipes for 2..7 bits")
        if self.calibration_batches < 1 or self.batch_size < 1:
            raise ValueError("calibration_batches and batch_size must be at least 1")

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        ctx.quant_plan = QuantPlan(
            per_channel=self.per_channel,
            calibration_batches=self.calibration_batches,
            batch_size=self.batch_size,
            seed=ctx.seed,
        )
        return model
