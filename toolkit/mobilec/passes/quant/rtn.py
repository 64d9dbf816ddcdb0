"""The ``rtn`` pass: plain round-to-nearest k-bit weight PTQ, the baseline DuQ/PROFIT must beat.

No training. Every selected conv/linear gets its weights rounded to the signed k-bit grid
``max|W|·round(n·W/max|W|)/n`` (``n = 2**(k-1) - 1``, per output channel by default) and its
input quantized to ``act_bits`` (8 by default: a weight-only baseline) with the range set from
calibration images (a high percentile of each input in eval mode). It reuses the DuQ modules
with ``a = c`` (so ``c/a = 1``: the fake-quant model *is* plain RTN) and therefore the same
integer lowering (:func:`~.lowering.lower_duq`): the artifact holds the k-bit codes in int8.

>>> RoundToNearest(weight_bits=4).to_params()["type"]
'rtn'
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from mobilec.passes.base import Pass
from mobilec.passes.quant.duq import check_bits
from mobilec.registry import register_pass

if TYPE_CHECKING:
    from mobilec.context import Context


@register_pass
@dataclass(frozen=True, kw_only=True)
class RoundToNearest(Pass):
    """Round-to-nearest k-bit weights (max-abs scale), ``act_bits`` inputs calibrated on real images."""

    name: ClassVar[str] = "rtn"
    summary: ClassVar[str] = "round-to-nearest k-bit weight PTQ (no training; the QAT baseline), exported as int8 kernels"

    weight_bits: int = 4
    act_bits: int = 8
    first_last_bits: int = 8  # 0 = same as the others
    per_channel_weights: bool = True
    calibration_samples: int = 512
    act_percentile: float = 0.9999

    def __post_init__(self) -> None:
        check_bits(self.weight_bits, "weight_bits")
        check_bits(self.act_bits, "act_bits")
        if self.first_last_bits != 0:
            check_bits(self.first_last_bits, "first_last_bits")
        if self.calibration_samples < 1:
            raise ValueError("calibration_samples must be >= 1")
        if not 0.5 <= self.act_percentile <= 1.0:
            raise ValueError("act_percentile must lie in [0.5, 1]")

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        from mobilec.passes.quant import qmodules as qm_
        from mobilec.passes.quant.lowering import deploy_info, lower_duq

        t0 = time.perf_counter()
        data = ctx.require_image_data(self.name)
        self.check_targets_exist(model)
        chosen = {n for n, _ in self.selected(model, (nn.Conv2d, nn.Linear))}
        qmodel = qm_.convert_to_duq(model, weight_bits=self.weight_bits, act_bits=self.act_bits,
                                    first_last_bits=self.first_last_bits or None, per_channel=self.per_channel_weights,
                                    select=lambda name, _m: name in chosen)
        for _, layer in qm_.quant_layers(qmodel):
            layer.weight_q.init_weight(layer.weight, factor=1.0)  # max|W|: plain round-to-nearest
        perm = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(ctx.seed))
        calib = data.x_train[perm[: self.calibration_samples]]
        ranges = calibrate(qmodel, calib, self.act_percentile)
        qm_.fold_batchnorm(qmodel.eval())
        plan = qm_.duq_plan(qmodel)
        ctx.report.add_pass(
            self.name, self.to_params(), time.perf_counter() - t0,
            weight_bits=self.weight_bits, act_bits=self.act_bits, first_last_bits=self.first_last_bits or None,
            first_last_layers=[n for n, lp in plan.layers.items() if lp.role != "body"],
            per_channel_weights=self.per_channel_weights, calibration_samples=len(calib),
            act_ranges={k: round(v, 5) for k, v in ranges.items()}, notes=list(plan.notes))
        ctx.lowering = lower_duq
        ctx.extras["duq"] = deploy_info(qmodel)
        return qmodel


@torch.no_grad()
def calibrate(qmodel: nn.Module, images: torch.Tensor, percentile: float, batch_size: int = 256) -> dict[str, float]:
    """Set each input quantizer's range (``a = c``) from ``images`` in eval mode, then the int8 output observers.

    The range is the ``percentile`` of the positive values of each layer's float input over all
    calibration images (the DuQ activation rule with a PTQ percentile). Returns ``{layer: a}``.
    """
    from mobilec.passes.quant import qmodules as qm_

    layers = dict(qm_.quant_layers(qmodel))
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    hooks = [layer.register_forward_pre_hook(lambda _m, inp, name=name: seen[name].append(inp[0].detach()))
             for name, layer in layers.items()]
    qm_.enable_quantizers(qmodel, acts=False, weights=True)
    qmodel.eval()
    try:
        for i in range(0, len(images), batch_size):
            qmodel(images[i:i + batch_size])
    finally:
        for h in hooks:
            h.remove()
    ranges = {n: layers[n].act_q.init_activation(torch.cat(seen[n]), cap=layers[n].act_cap, percentile=percentile)
              for n in layers}
    seen.clear()
    qm_.enable_quantizers(qmodel, acts=True)
    fqs = [fq for _, fq in qm_.int8_quantizers(qmodel)]
    for fq in fqs:  # observers run in train mode; everything else (BatchNorm) stays in eval
        fq.observed.fill_(False)
        fq.frozen.fill_(False)
        fq.momentum = 1.0 / max(1, -(-len(images) // batch_size))
        fq.train()
    try:
        for i in range(0, len(images), batch_size):
            qmodel(images[i:i + batch_size])
    finally:
        for fq in fqs:
            fq.eval()
    return ranges
