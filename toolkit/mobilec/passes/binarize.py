"""TAC binarization (Qian & Wang, arXiv 1907.05271): binary convolutions, pruned low-bit FC layers.

Two passes:

- ``tac``: every selected ``nn.Conv2d`` becomes a :class:`BinaryConv2d` (binary weights and
  binary inputs); every selected ``nn.Linear`` is pruned iteratively to an exact sparsity and
  its surviving weights quantized to ``fc_bits`` (:mod:`mobilec.passes.prune`), then the
  model is fine-tuned with distillation from ``ctx.teacher``.
- ``binarize`` ("binary-all" baseline): every selected conv *and* linear layer binarized.

The details the paper leaves open, as chosen here:

- **Weights**: ``W_b = α · sign(W)`` with ``α = mean|W|`` per output channel (XNOR-Net);
  gradients flow through ``α`` as well and through ``sign`` with the straight-through
  estimator clipped to ``|W| ≤ 1``.
- **Activations**: the binary activation sits on the layer's *input*:
  ``x_b = sign(x − τ)`` with a per-input-channel threshold ``τ`` (ReActNet's RSign). With
  ``act_threshold = "learned"`` (default) ``τ`` starts at the channel mean over a few real
  batches and is trained; with ``"zero"`` it is fixed at 0 (plain XNOR-Net sign). A learned
  threshold matters in these models because most conv inputs are ReLU/ReLU6 outputs, whose
  plain sign is +1 almost everywhere. Gradient: STE clipped to ``|x − τ| ≤ 1``, i.e.
  ``∂x_b/∂x = 1{|x − τ| ≤ 1}``. No XNOR-Net ``K`` activation scale: the BatchNorm after each
  conv absorbs the scale.
- **sign(0) = +1** (also for −0.0): ``sign(v) = +1 if v ≥ 0 else −1``, so every binarized
  value is exactly ±1 (±α for weights).
- **Padding**: zero padding is applied after binarization, as in the float conv, so border
  taps see 0 (not ±1); the int8 artifact pads with the zero point, which is the same 0.
- **Kept layers**: ``keep_first_conv`` (default true) leaves the first conv in float, as is
  usual for binary networks; ``keep_last`` leaves the last layer (conv or linear) untouched;
  ``keep_depthwise`` (default false) leaves every depthwise conv in float: a 3×3 depthwise conv
  has 9 weights per channel, so binarizing it saves little and, with its input binarized too,
  costs most of a MobileNet's accuracy (measured: docs/tac.md).
  The report lists every layer with what was done to it.
- **Training**: fine-tuning from the float model with distillation from ``ctx.teacher``
  (``(1−kd)·CE + kd·softCE``, T = 1), Adam by default; every schedule length is a parameter
  and ``train_images`` makes an "epoch" a fixed number of freshly drawn images.
- **Eager = artifact** (``align_thresholds = true``): before the last ``epochs_grid`` epochs
  the artifact's int8 output grids are fixed from real batches and the eager model rounds each
  binary / low-bit layer's output to its grid where the artifact requantizes it (in the layer,
  or by an ``OutputRounding`` hook on the BatchNorm / ReLU after it; saved with the state dict,
  restored by :func:`restructure_like`), so those epochs train with the artifact's numerics;
  in eval mode it also adds the int8 kernels' int32 bias rounding (``bias_delta``).
  After training, thresholds of binary inputs fed by an int8 output move (by ≤ half a step)
  onto that grid's half-steps, and linear layers fake-quantize their input on the artifact's
  grid. Residual sums of int8 outputs are then the same in both, too.

Export: :mod:`mobilec.passes.binary_export` (``lower_binary``) lowers a binarized model to an
int8 ExecuTorch/XNNPACK or LiteRT artifact; the pass hands it to the exporters through
``ctx.lowering``.

>>> conv = BinaryConv2d.from_conv(nn.Conv2d(4, 8, 3, padding=1))
>>> w = conv.binary_weight()
>>> bool(((w.abs() - conv.alpha()) == 0).all())
True
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from mobilec.errors import MobilecError
from mobilec.passes.base import Pass
from mobilec.passes.prune import (
    PrunedQuantLinear,
    add_bias_delta,
    apply_grid,
    copy_layer_params,
    cubic_sparsity_schedule,
    install_output_rounding,
    layer_stats,
    set_bias_delta,
    set_qparams,
)
from mobilec.registry import register_pass

if TYPE_CHECKING:
    from mobilec.context import Context

#: The value ``sign`` gives to 0 (and −0.0) everywhere in mobilec's binary layers.
SIGN_OF_ZERO = 1.0


def sign_pm1(x: torch.Tensor) -> torch.Tensor:
    """+1 where ``x ≥ 0`` (0 and −0.0 included), −1 elsewhere; same dtype as ``x``.

    >>> sign_pm1(torch.tensor([-2.0, -0.0, 0.0, 3.0])).tolist()
    [-1.0, 1.0, 1.0, 1.0]
    """
    one = torch.ones((), dtype=x.dtype, device=x.device)
    return torch.where(x >= 0, one, -one)


class SignSTE(torch.autograd.Function):
    """``sign_pm1`` forward; backward passes the gradient where ``|x| ≤ 1`` and zeroes it elsewhere."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return sign_pm1(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


def binary_sign(x: torch.Tensor) -> torch.Tensor:
    """Differentiable sign: exactly ±1 forward, clipped straight-through gradient."""
    return SignSTE.apply(x)


def weight_alpha(weight: torch.Tensor) -> torch.Tensor:
    """XNOR-Net scale: mean |W| per output channel, shaped to broadcast against ``weight``."""
    return weight.abs().mean(dim=tuple(range(1, weight.ndim)), keepdim=True)


def binarize_weight(weight: torch.Tensor) -> torch.Tensor:
    """``α · sign(W)`` per output channel (gradients through α and, clipped, through sign)."""
    return weight_alpha(weight) * binary_sign(weight)


class BinaryActivation(nn.Module):
    """``sign(x − τ)`` over the channel dimension 1, with a learned or fixed-zero threshold ``τ``.

    >>> act = BinaryActivation(3)
    >>> act(torch.tensor([[0.5, -0.5, 0.0]])).tolist()
    [[1.0, -1.0, 1.0]]
    """

    def __init__(self, channels: int, *, learn_threshold: bool = True) -> None:
        super().__init__()
        self.channels = channels
        self.learn_threshold = learn_threshold
        if learn_threshold:
            self.threshold = nn.Parameter(torch.zeros(channels))
        else:
            self.register_buffer("threshold", torch.zeros(channels))

    def shaped_threshold(self, x: torch.Tensor) -> torch.Tensor:
        return self.threshold.view(1, -1, *([1] * (x.ndim - 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 2 or x.shape[1] != self.channels:
            raise MobilecError(f"binary activation for {self.channels} channels got input of shape {tuple(x.shape)}")
        return binary_sign(x - self.shaped_threshold(x))

    def extra_repr(self) -> str:
        return f"{self.channels}, learn_threshold={self.learn_threshold}"


class _BinaryLayer:
    """What BinaryConv2d and BinaryLinear share: the input activation and ``α·sign(W)`` weights."""

    act: BinaryActivation | None
    weight: nn.Parameter
    #: True during a two-step schedule's first phase (``epochs_act_only``): binary inputs, float weights
    float_weights: bool = False

    def _init_act(self, channels: int, binarize_input: bool, learn_threshold: bool) -> None:
        self.act = BinaryActivation(channels, learn_threshold=learn_threshold) if binarize_input else None

    def alpha(self) -> torch.Tensor:
        return weight_alpha(self.weight)

    def binary_weight(self) -> torch.Tensor:
        return binarize_weight(self.weight)

    def binary_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x) if self.act is not None else x

    def step_weight(self) -> torch.Tensor:
        """The weight this forward computes with: ``α·sign(W)``, or ``W`` itself while ``float_weights``."""
        return self.weight if self.float_weights else self.binary_weight()


class BinaryConv2d(_BinaryLayer, nn.Conv2d):
    """Conv2d on binary inputs (``act``; None keeps float inputs) with binary weights ``α·sign(W)``.

    ``weight`` holds the latent float weights the optimiser updates; ``binary_weight()`` is
    what the layer computes with.

    >>> conv = BinaryConv2d.from_conv(nn.Conv2d(2, 4, 3, padding=1, bias=False))
    >>> conv(torch.randn(1, 2, 5, 5)).shape
    torch.Size([1, 4, 5, 5])
    """

    def __init__(self, *args: Any, binarize_input: bool = True, learn_threshold: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_act(self.in_channels, binarize_input, learn_threshold)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, *, binarize_input: bool = True, learn_threshold: bool = True) -> BinaryConv2d:
        if conv.padding_mode != "zeros":
            raise MobilecError(f"cannot binarize a conv with padding_mode={conv.padding_mode!r}",
                               hint="only zero padding is supported; exclude the layer with ignore")
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                  dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                  binarize_input=binarize_input, learn_threshold=learn_threshold)
        return copy_layer_params(conv, new)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._conv_forward(self.binary_input(x), self.step_weight(), self.bias)
        return apply_grid(self, "out", add_bias_delta(self, y))


class BinaryLinear(_BinaryLayer, nn.Linear):
    """Linear layer on binary inputs with binary weights ``α·sign(W)`` (α per output row)."""

    def __init__(self, *args: Any, binarize_input: bool = True, learn_threshold: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_act(self.in_features, binarize_input, learn_threshold)

    @classmethod
    def from_linear(cls, fc: nn.Linear, *, binarize_input: bool = True, learn_threshold: bool = True) -> BinaryLinear:
        new = cls(fc.in_features, fc.out_features, bias=fc.bias is not None,
                  binarize_input=binarize_input, learn_threshold=learn_threshold)
        return copy_layer_params(fc, new)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_grid(self, "out", add_bias_delta(self, F.linear(self.binary_input(x), self.step_weight(), self.bias)))


BINARY_TYPES = (BinaryConv2d, BinaryLinear)


def binary_layer(mod: nn.Conv2d | nn.Linear, *, learn_threshold: bool = True) -> BinaryConv2d | BinaryLinear:
    """The binary counterpart of a Conv2d or Linear layer (binary weights and inputs)."""
    if isinstance(mod, nn.Conv2d):
        return BinaryConv2d.from_conv(mod, learn_threshold=learn_threshold)
    return BinaryLinear.from_linear(mod, learn_threshold=learn_threshold)


def set_output_qparams(module: nn.Module, scale: float, zero_point: int, *, eager: bool = False) -> None:
    """Record the int8 grid (scale, zero point) the artifact uses for ``module``'s output (a buffer)."""
    set_qparams(module, "out", scale, zero_point, eager=eager)


# --------------------------------------------------------------------------- model surgery


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def execution_order(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> list[str]:
    """Names of the Conv2d/Linear modules in the order one forward pass calls them."""
    order: list[str] = []
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d | nn.Linear):
            hooks.append(mod.register_forward_pre_hook(lambda _m, _i, n=name: order.append(n) if n not in order else None))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(*(t[:1] for t in example_inputs))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return order


@torch.no_grad()
def input_channel_means(model: nn.Module, names: list[str], batches: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-input-channel mean of each named layer's input over ``batches`` (model in eval mode)."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []

    def hook(name: str):
        def fn(_m: nn.Module, inp: tuple[torch.Tensor, ...]) -> None:
            x = inp[0].detach().to(torch.float64)
            dims = [d for d in range(x.ndim) if d != 1]
            sums[name] = sums.get(name, 0) + x.sum(dim=dims)
            counts[name] = counts.get(name, 0) + x.numel() // x.shape[1]
        return fn

    for name in names:
        hooks.append(model.get_submodule(name).register_forward_pre_hook(hook(name)))
    was_training = model.training
    try:
        model.eval()
        for b in batches:
            model(b)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return {n: (sums[n] / counts[n]).to(torch.float32) for n in sums}


def restructure_like(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Rebuild the binary/pruned layers a ``tac``/``binarize`` checkpoint has, so it loads into ``model``.

    A layer is binary when the state dict has ``<name>.act.threshold``; pruned/quantized when
    it has ``<name>.mask`` (its bit width comes from ``<name>.qbits``); ``<name>.in_qparams`` /
    ``<name>.out_qparams`` (the artifact's grids, set by :func:`align_thresholds`) are recreated
    too, and any other module with ``<name>.out_qparams`` or ``<name>.bias_delta`` (a BatchNorm or
    ReLU whose output the artifact rounds, a BatchNorm carrying the int32 bias rounding) gets its
    :class:`~mobilec.passes.prune.OutputRounding` hook back. Returns ``model``.
    """
    for name, mod in list(model.named_modules()):
        if isinstance(mod, (*BINARY_TYPES, PrunedQuantLinear)):
            continue
        if f"{name}.act.threshold" in state_dict and isinstance(mod, nn.Conv2d | nn.Linear):
            _set_module(model, name, binary_layer(mod))
        elif f"{name}.mask" in state_dict and isinstance(mod, nn.Linear):
            _set_module(model, name, PrunedQuantLinear.from_linear(mod))
        elif not isinstance(mod, nn.Conv2d | nn.Linear):  # a BatchNorm / ReLU carrying the artifact's numerics
            if f"{name}.out_qparams" in state_dict:
                install_output_rounding(mod, 1.0, 0)  # the values come with load_state_dict
            if f"{name}.bias_delta" in state_dict:
                set_bias_delta(mod, torch.zeros_like(state_dict[f"{name}.bias_delta"]), hook=True)
            continue
        else:
            continue
        if f"{name}.bias_delta" in state_dict:
            set_bias_delta(model.get_submodule(name), torch.zeros_like(state_dict[f"{name}.bias_delta"]), hook=False)
        for which in ("in", "out"):
            if f"{name}.{which}_qparams" in state_dict:  # the values come with load_state_dict
                set_qparams(model.get_submodule(name), which, 1.0, 0, eager=False)
    return model


# --------------------------------------------------------------------------- passes


@dataclass(frozen=True, kw_only=True)
class _BinaryBase(Pass):
    """Shared parameters and machinery of ``tac`` and ``binarize``."""

    keep_first_conv: bool = True
    keep_last: bool = False
    keep_depthwise: bool = False
    act_threshold: Literal["learned", "zero"] = "learned"
    threshold_batches: int = 4  # real batches (of batch_size) to initialise the learned thresholds
    lr: float = 4e-3  # Adam; the best of 5e-4..8e-3 for the tac recipes on mobilenet_v2 (docs/tac.md)
    optimizer: Literal["adam", "sgd"] = "adam"
    weight_decay: float = 0.0
    batch_size: int = 128
    kd_weight: float = 0.7  # weight of the distillation term when ctx.teacher is set (0: labels only)
    train_images: int = 0  # >0: an "epoch" is this many freshly drawn training images (0: the whole split)
    calibration_batches: int = 16  # real batches fixing the int8 artifact's activation grids
    calibration_batch_size: int = 32
    align_thresholds: bool = True  # snap binary-input thresholds to those grids (exact int8 artifact)
    epochs_grid: int = 1  # the schedule's last epochs train with the artifact's int8 output roundings in the model
    warmup_epochs: float = 0.5  # linear LR warm-up at the start of each phase, in epochs (of train_images)
    epochs_act_only: int = 0  # two-step training: first this many epochs with binary inputs and float weights

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.batch_size < 1 or self.threshold_batches < 1:
            raise ValueError("need lr > 0, batch_size >= 1 and threshold_batches >= 1")
        if self.epochs_grid < 0 or self.warmup_epochs < 0 or self.epochs_act_only < 0:
            raise ValueError("epochs_grid, warmup_epochs and epochs_act_only must be >= 0")
        if not 0.0 <= self.kd_weight <= 1.0:
            raise ValueError(f"kd_weight must lie in [0, 1], got {self.kd_weight}")
        if self.train_images < 0 or self.weight_decay < 0:
            raise ValueError("train_images and weight_decay must be >= 0")
        if self.calibration_batches < 1 or self.calibration_batch_size < 1:
            raise ValueError("calibration_batches and calibration_batch_size must be >= 1")

    binarize_fc: ClassVar[bool] = False

    # -- planning ----------------------------------------------------------------------
    def plan(self, model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> dict[str, str]:
        """``{layer name: action}`` for every Conv2d/Linear: binary, prune-quantize, or why it is kept."""
        self.check_targets_exist(model)
        order = execution_order(model, example_inputs)
        chosen = {n for n, _ in self.selected(model, (nn.Conv2d, nn.Linear))}
        convs = [n for n in order if isinstance(model.get_submodule(n), nn.Conv2d)]
        actions: dict[str, str] = {}
        for name, mod in model.named_modules():
            if not isinstance(mod, nn.Conv2d | nn.Linear):
                continue
            if isinstance(mod, (*BINARY_TYPES, PrunedQuantLinear)):
                raise MobilecError(f"pass {self.name!r}: layer {name!r} is already binarized or pruned",
                                   hint="apply tac/binarize once per recipe")
            if name not in order:
                actions[name] = "kept: not executed on the example input"
            elif name not in chosen:
                actions[name] = "kept: not selected (targets/ignore)"
            elif self.keep_first_conv and convs and name == convs[0]:
                actions[name] = "kept: first conv (keep_first_conv = true)"
            elif self.keep_last and name == order[-1]:
                actions[name] = "kept: last layer (keep_last = true)"
            elif self.keep_depthwise and isinstance(mod, nn.Conv2d) and mod.groups > 1 and mod.groups == mod.in_channels:
                actions[name] = "kept: depthwise conv (keep_depthwise = true)"
            elif isinstance(mod, nn.Conv2d):
                if mod.padding_mode != "zeros":
                    actions[name] = f"kept: padding_mode {mod.padding_mode!r} (only zero padding can be binarized)"
                else:
                    actions[name] = "binary"
            else:
                actions[name] = "binary" if self.binarize_fc else "prune-quantize"
        if not any(a in ("binary", "prune-quantize") for a in actions.values()):
            raise MobilecError(f"pass {self.name!r}: no layer left to compress", hint="check targets/ignore/keep_* settings")
        return actions

    def binarize(self, model: nn.Module, actions: dict[str, str], data: Any, seed: int) -> None:
        """Replace the ``binary`` layers in place; learned thresholds start at the input channel means."""
        names = [n for n, a in actions.items() if a == "binary"]
        learned = self.act_threshold == "learned"
        means = {}
        if learned:
            batches = data.calibration_batches(self.threshold_batches, self.batch_size, seed=seed)
            means = input_channel_means(model, names, batches)
        for name in names:
            new = binary_layer(model.get_submodule(name), learn_threshold=learned)
            if learned and new.act is not None:
                with torch.no_grad():
                    new.act.threshold.copy_(means[name])
            _set_module(model, name, new)

    # -- training ----------------------------------------------------------------------
    def train_phase(self, model: nn.Module, ctx: Context, epochs: int, phase: int) -> dict[str, Any]:
        """Fine-tune for ``epochs`` (with distillation from ``ctx.teacher`` when set).

        With ``train_images > 0`` an "epoch" is ``train_images`` images: the phase is one pass
        over ``epochs·train_images`` images drawn afresh from the training split (without
        replacement while the split lasts), under one warm-up + cosine schedule.
        """
        if epochs == 0:
            return {"epochs": 0, "images": 0, "seconds": 0.0}
        from mobilec.train import fit

        data = ctx.data
        fit_epochs, warmup = epochs, min(self.warmup_epochs, epochs)
        if self.train_images:
            data = _draw(data, epochs * self.train_images, seed=ctx.seed + 1000 + phase)
            fit_epochs, warmup = 1, warmup / epochs  # one pass over the drawn images; warm-up as a fraction of it
        teacher = ctx.teacher if self.kd_weight > 0 else None
        res = fit(model, data, epochs=fit_epochs, lr=self.lr, batch_size=self.batch_size, optimizer=self.optimizer,
                  weight_decay=self.weight_decay, teacher=teacher, kd_weight=self.kd_weight if teacher else 0.0,
                  seed=ctx.seed + phase, progress=ctx.show_progress, warmup_epochs=warmup)
        last = res.history[-1] if res.history else {}
        return {"epochs": epochs, "images": fit_epochs * len(data.x_train), "seconds": res.seconds,
                "final_loss": last.get("loss"), "final_train_acc": last.get("train_acc")}

    def act_only_phase(self, model: nn.Module, ctx: Context) -> list[dict[str, Any]]:
        """Step one of two-step training (``epochs_act_only`` > 0): the binary layers train with binary
        inputs and their float weights; afterwards they compute with ``α·sign(W)`` of what was learned."""
        if not self.epochs_act_only:
            return []
        layers = [m for m in model.modules() if isinstance(m, BINARY_TYPES)]
        for m in layers:
            m.float_weights = True
        try:
            res = self.train_phase(model, ctx, self.epochs_act_only, 100)  # its own draw and seed
        finally:
            for m in layers:
                m.float_weights = False
        return [{"phase": "binary inputs, float weights", **res}]

    # -- reporting / export --------------------------------------------------------------
    def layer_records(self, model: nn.Module, actions: dict[str, str]) -> list[dict[str, Any]]:
        out = []
        for name, action in actions.items():
            mod = model.get_submodule(name)
            rec: dict[str, Any] = {"name": name, "type": type(mod).__name__, "params": mod.weight.numel(), "action": action}
            if isinstance(mod, PrunedQuantLinear):
                rec.update(layer_stats(mod))
            elif isinstance(mod, BINARY_TYPES):
                rec["threshold"] = "learned" if mod.act is not None and mod.act.learn_threshold else "zero"
            out.append(rec)
        return out

    def start(self, model: nn.Module, ctx: Context) -> dict[str, str]:
        """Plan the layers and binarize the ``binary`` ones in place; returns the plan."""
        data = ctx.require_image_data(self.name)
        actions = self.plan(model, ctx.example_inputs)
        self.binarize(model, actions, data, ctx.seed)
        return actions

    def record(self, model: nn.Module, ctx: Context, actions: dict[str, str], phases: list[dict[str, Any]],
               t0: float) -> nn.Module:
        """:meth:`finish`, then report the layers, training phases and summary; returns ``model``."""
        align = self.finish(model, ctx)
        layers = self.layer_records(model, actions)
        summary = {**_summary(layers, phases, ctx.teacher is not None and self.kd_weight > 0), **align}
        ctx.extras[self.name] = {"layers": layers, "phases": phases, **summary}
        ctx.report.add_pass(self.name, self.to_params(), time.perf_counter() - t0, **summary, layers=layers, phases=phases)
        return model

    def _calibration(self, ctx: Context) -> tuple[torch.Tensor, ...]:
        return tuple(ctx.data.calibration_batches(self.calibration_batches, self.calibration_batch_size, seed=ctx.seed))

    def fix_grids(self, model: nn.Module, ctx: Context) -> dict[str, Any]:
        """Fix the artifact's int8 grids and make the eager model round where the artifact rounds.

        :func:`~mobilec.passes.binary_export.align_thresholds`: layer output grids calibrated on
        real batches (kept when already fixed), eager output roundings installed, thresholds
        aligned. The model's train/eval mode is kept.
        """
        from mobilec.passes.binary_export import align_thresholds

        was_training = model.training
        try:
            model.eval()
            res = align_thresholds(model, ctx.example_inputs, self._calibration(ctx))
        finally:
            model.train(was_training)
        return {"aligned_inputs": len(res["aligned"]), "unaligned_inputs": len(res["unaligned"]),
                "unaligned": ", ".join(res["unaligned"]), "max_threshold_shift_steps": res["max_shift_steps"],
                "rounded_outputs": len(res["rounded"]), "unrounded_outputs": len(res["unrounded"]),
                "unrounded": ", ".join(res["unrounded"])}

    def last_phase(self, model: nn.Module, ctx: Context, epochs: int, phase: int, label: str) -> list[dict[str, Any]]:
        """The schedule's last phase: ``epochs − epochs_grid`` epochs, then (with ``align_thresholds``)
        the grids are fixed (:meth:`fix_grids`) and ``epochs_grid`` epochs train with the artifact's
        output roundings in the model."""
        if not self.align_thresholds or not self.epochs_grid:  # finish() fixes the grids after training
            return [{"phase": label, **self.train_phase(model, ctx, epochs, phase)}]
        if self.epochs_grid > epochs:
            raise MobilecError(f"pass {self.name!r}: epochs_grid = {self.epochs_grid} exceeds the last phase's "
                               f"{epochs} epoch(s)", hint="epochs_grid counts the last epochs of the schedule")
        phases = []
        if epochs > self.epochs_grid:
            phases.append({"phase": label, **self.train_phase(model, ctx, epochs - self.epochs_grid, phase)})
        self.fix_grids(model, ctx)
        phases.append({"phase": f"{label}, int8 output roundings on",
                       **self.train_phase(model, ctx, self.epochs_grid, phase + 1)})
        return phases

    def finish(self, model: nn.Module, ctx: Context) -> dict[str, Any]:
        """Re-align the thresholds on the (already fixed) int8 grids and install the binary lowering.

        The exporters then call ``ctx.lowering(model, target, example_inputs, out_path)``
        (:class:`~mobilec.passes.binary_export.BinaryLowering`) instead of their own quantizers.
        """
        from mobilec.passes.binary_export import BinaryLowering

        model.eval()
        info = self.fix_grids(model, ctx) if self.align_thresholds else {}
        ctx.lowering = BinaryLowering(calibration=self._calibration(ctx))
        return info


@register_pass
@dataclass(frozen=True, kw_only=True)
class TACPass(_BinaryBase):
    """TAC: binary convs (weights + inputs), iteratively pruned low-bit FC layers, distillation fine-tuning.

    Schedule: ``epochs_binary`` epochs with binary convs; then ``prune_steps`` pruning steps
    (cubic ramp to ``fc_sparsity``) each followed by ``epochs_per_prune_step`` epochs; then
    the surviving FC weights are quantized to ``fc_bits`` and ``epochs_quant`` epochs follow.

    >>> TACPass(fc_sparsity=0.9, fc_bits=4).to_params()["type"]
    'tac'
    """

    name: ClassVar[str] = "tac"
    summary: ClassVar[str] = "TAC: binary convolutions + pruned low-bit fully connected layers, distilled"
    fc_sparsity: float = 0.9
    fc_bits: int = 4
    prune_steps: int = 3
    epochs_binary: int = 2
    epochs_per_prune_step: int = 1
    epochs_quant: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.fc_sparsity < 1.0:
            raise ValueError(f"fc_sparsity must lie in [0, 1), got {self.fc_sparsity}")
        if not 2 <= self.fc_bits <= 8:
            raise ValueError(f"fc_bits must lie in 2..8, got {self.fc_bits}")
        if self.prune_steps < 1:
            raise ValueError("prune_steps must be >= 1")
        if min(self.epochs_binary, self.epochs_per_prune_step, self.epochs_quant) < 0:
            raise ValueError("epoch counts must be >= 0")

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        t0 = time.perf_counter()
        actions = self.start(model, ctx)
        fcs = [n for n, a in actions.items() if a == "prune-quantize"]
        for name in fcs:
            _set_module(model, name, PrunedQuantLinear.from_linear(model.get_submodule(name)))
        phases = self.act_only_phase(model, ctx)
        if not fcs:
            phases += self.last_phase(model, ctx, self.epochs_binary, 0, "binary")
            return self.record(model, ctx, actions, phases, t0)
        phases.append({"phase": "binary", **self.train_phase(model, ctx, self.epochs_binary, 0)})
        for i, s in enumerate(cubic_sparsity_schedule(self.fc_sparsity, self.prune_steps)):
            for name in fcs:
                model.get_submodule(name).set_sparsity(s)
            phases.append({"phase": f"prune to {s:.4f}", **self.train_phase(model, ctx, self.epochs_per_prune_step, 1 + i)})
        for name in fcs:
            model.get_submodule(name).bits = self.fc_bits
        phases += self.last_phase(model, ctx, self.epochs_quant, 1 + self.prune_steps, f"quantize FC to {self.fc_bits} bits")
        return self.record(model, ctx, actions, phases, t0)


@register_pass
@dataclass(frozen=True, kw_only=True)
class BinarizeAllPass(_BinaryBase):
    """Binary-all baseline: every selected conv and linear layer gets binary weights and inputs.

    >>> BinarizeAllPass(epochs=6, keep_first_conv=False).to_params()["keep_first_conv"]
    False
    """

    name: ClassVar[str] = "binarize"
    summary: ClassVar[str] = "binarize every conv and linear layer (weights and inputs), distilled"
    binarize_fc: ClassVar[bool] = True
    keep_first_conv: bool = False
    epochs: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.epochs < 0:
            raise ValueError("epochs must be >= 0")

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        t0 = time.perf_counter()
        actions = self.start(model, ctx)
        phases = self.act_only_phase(model, ctx)
        phases += self.last_phase(model, ctx, self.epochs, 0, "binary")
        return self.record(model, ctx, actions, phases, t0)


def _draw(data: Any, n: int, seed: int) -> Any:
    """``data`` with a training split of ``n`` images drawn in random order (whole permutations first)."""
    import dataclasses

    total = len(data.x_train)
    g = torch.Generator().manual_seed(seed)
    idx = torch.cat([torch.randperm(total, generator=g) for _ in range(-(-n // total))])[:n]
    return dataclasses.replace(data, x_train=data.x_train[idx], y_train=data.y_train[idx])


def _summary(layers: list[dict[str, Any]], phases: list[dict[str, Any]], distilled: bool) -> dict[str, Any]:
    binary = [r for r in layers if r["action"] == "binary"]
    pruned = [r for r in layers if r["action"] == "prune-quantize"]
    kept = [r for r in layers if r["action"].startswith("kept")]
    out: dict[str, Any] = {
        "binary_layers": len(binary),
        "binary_params": sum(r["params"] for r in binary),
        "pruned_fc_layers": len(pruned),
        "kept_layers": len(kept),
        "kept": ", ".join(f"{r['name']} ({r['action'][6:]})" for r in kept),
        "train_seconds": sum(p["seconds"] for p in phases),
        "epochs": sum(p["epochs"] for p in phases),
        "train_images_seen": sum(p["images"] for p in phases),
        "distilled": distilled,
    }
    if pruned:
        total = sum(r["params"] for r in pruned)
        out["fc_sparsity"] = sum(r["mask_sparsity"] * r["params"] for r in pruned) / total
        out["fc_weight_sparsity"] = sum(r["weight_sparsity"] * r["params"] for r in pruned) / total
        out["fc_bits"] = pruned[0]["bits"]
    return out


__all__ = [
    "BINARY_TYPES",
    "SIGN_OF_ZERO",
    "BinarizeAllPass",
    "BinaryActivation",
    "BinaryConv2d",
    "BinaryLinear",
    "SignSTE",
    "TACPass",
    "binarize_weight",
    "binary_layer",
    "binary_sign",
    "restructure_like",
    "set_output_qparams",
    "sign_pm1",
]
