"""Magnitude pruning and low-bit quantization of fully connected layers (Deep Compression style).

Used by the ``tac`` pass for its FC layers (Qian & Wang, arXiv 1907.05271 §3; Han et al.,
Deep Compression, arXiv 1510.00149):

- **Pruning** is unstructured and layer-wise: each layer loses exactly
  ``round(sparsity · numel)`` weights, the smallest in magnitude. Weights pruned at an
  earlier step stay pruned (the mask only ever loses ones). The iterative ramp is the
  cubic schedule of Zhu & Gupta (arXiv 1710.01878), ``s_i = s · (1 − (1 − i/n)³)`` for
  steps ``i = 1..n``, with fine-tuning between steps. The mask is a buffer multiplied into
  the weight on every forward, so pruned weights stay exactly zero while training.
- **Quantization** of the surviving weights is symmetric, uniform and per output channel:
  ``q = clamp(round(w / Δ), −Q, Q)``, ``Q = 2^(bits−1) − 1``, ``Δ = max|w_row| / Q``
  (recomputed from the current weights on every forward; straight-through gradient). Zero is
  a grid point, so pruned weights stay zero. A uniform grid was chosen over Deep
  Compression's k-means codebook because it maps one-to-one onto an int8 per-channel
  kernel (the integers are the artifact's weights, Δ its per-channel scale); a codebook
  would need a gather that no int8 kernel executes.

>>> fc = PrunedQuantLinear.from_linear(nn.Linear(16, 4))
>>> fc.set_sparsity(0.5); fc.bits = 3
>>> int((fc.effective_weight() == 0).sum()) >= 32
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn


def cubic_sparsity_schedule(target: float, steps: int) -> list[float]:
    """Sparsities of ``steps`` pruning steps ramping to ``target`` (Zhu & Gupta's cubic ramp).

    >>> [round(s, 3) for s in cubic_sparsity_schedule(0.9, 3)]
    [0.633, 0.867, 0.9]
    """
    if not 0.0 <= target < 1.0:
        raise ValueError(f"target sparsity must lie in [0, 1), got {target}")
    if steps < 1:
        raise ValueError(f"need at least one pruning step, got {steps}")
    return [target * (1.0 - (1.0 - i / steps) ** 3) for i in range(1, steps + 1)]


def magnitude_mask(weight: torch.Tensor, sparsity: float, previous: torch.Tensor | None = None) -> torch.Tensor:
    """A 0/1 mask (weight's dtype) pruning exactly ``round(sparsity·numel)`` smallest-magnitude weights.

    Entries already pruned in ``previous`` are pruned first, so successive masks are nested.
    Ties are broken by position (stable sort), so the count is exact.

    >>> m = magnitude_mask(torch.tensor([[0.1, -3.0], [2.0, 0.5]]), 0.5)
    >>> m.tolist()
    [[0.0, 1.0], [1.0, 0.0]]
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must lie in [0, 1), got {sparsity}")
    n = weight.numel()
    k = round(sparsity * n)
    scores = weight.detach().abs().flatten().to(torch.float64)
    if previous is not None:
        already = previous.flatten() == 0
        if int(already.sum()) > k:
            raise ValueError(f"the previous mask prunes {int(already.sum())} weights, more than the {k} asked for")
        scores = scores.masked_fill(already, -1.0)
    mask = torch.ones(n, dtype=weight.dtype, device=weight.device)
    if k:
        order = torch.argsort(scores, stable=True)
        mask[order[:k]] = 0
    return mask.view_as(weight)


def quantize_symmetric(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric uniform grid: returns ``(integers, scale)`` with ``weight ≈ integers·scale``.

    ``scale`` has shape (out, 1, ...) and is 1 for an all-zero row (whose integers are 0).
    """
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must lie in 2..8, got {bits}")
    qmax = 2 ** (bits - 1) - 1
    dims = tuple(range(1, weight.ndim))
    amax = weight.detach().abs().amax(dim=dims, keepdim=True)
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
    q = torch.clamp(torch.round(weight.detach() / scale), -qmax, qmax)
    return q, scale


def fake_quantize_symmetric(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """``integers·scale`` of :func:`quantize_symmetric`, with a straight-through gradient to ``weight``."""
    q, scale = quantize_symmetric(weight, bits)
    return weight + (q * scale - weight).detach()


def int8_grid(x: torch.Tensor, qparams: torch.Tensor) -> torch.Tensor:
    """``x`` fake-quantized to the int8 grid ``qparams = (scale, zero point, ...)`` (straight-through gradient)."""
    return torch.fake_quantize_per_tensor_affine(x, float(qparams[0]), int(qparams[1]), -128, 127)


def set_qparams(module: nn.Module, which: str, scale: float, zero_point: int, *, eager: bool) -> None:
    """Store the artifact's int8 grid of ``module``'s input or output (``which`` = "in" | "out") as a buffer.

    ``eager=True`` makes layers that honour it (linear layers: :class:`PrunedQuantLinear`,
    ``BinaryLinear``) apply the same grid in their eager forward, so the eager model computes
    what the int8 artifact computes.
    """
    name = f"{which}_qparams"
    value = torch.tensor([scale, float(zero_point), 1.0 if eager else 0.0], dtype=torch.float64)
    if name in module._buffers:
        setattr(module, name, value)
    else:
        module.register_buffer(name, value)


def apply_grid(module: nn.Module, which: str, x: torch.Tensor) -> torch.Tensor:
    """``x`` on ``module``'s stored ``which`` grid when that grid is marked for the eager model, else ``x``."""
    q = module._buffers.get(f"{which}_qparams")
    return int8_grid(x, q) if q is not None and float(q[2]) > 0 else x


def add_bias_delta(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` plus ``module``'s per-channel ``bias_delta`` buffer in eval mode (else ``x``).

    ``bias_delta`` is what the artifact's int32 bias rounding adds to this output (see
    :func:`~mobilec.passes.binary_export.align_thresholds`); it holds for the eval-mode
    (running-statistics) BatchNorm only, so training never sees it.
    """
    d = module._buffers.get("bias_delta")
    if d is None or module.training:
        return x
    return x + d.view(1, -1, *([1] * (x.ndim - 2)))


@dataclass(frozen=True)
class OutputRounding:
    """Forward hook: the artifact's numerics on a module's output — ``bias_delta`` (eval), then the
    ``out_qparams`` int8 grid when the artifact requantizes there.

    Installed by :func:`install_output_rounding` / :func:`set_bias_delta` on the module (a
    BatchNorm or ReLU/ReLU6 after a binary conv). A dataclass, so a model pickled with it (pass
    checkpoints) loads under ``torch.load(weights_only=True)``.
    """

    def __call__(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        return apply_grid(module, "out", add_bias_delta(module, output))


def _ensure_hook(module: nn.Module) -> None:
    if not any(isinstance(h, OutputRounding) for h in module._forward_hooks.values()):
        module.register_forward_hook(OutputRounding())


def install_output_rounding(module: nn.Module, scale: float, zero_point: int) -> None:
    """Make ``module``'s eager output the int8 grid (scale, zero point) the artifact rounds it to.

    The grid is an ``out_qparams`` buffer (saved with the state dict; :func:`has_output_rounding`
    finds it again), applied by an :class:`OutputRounding` forward hook (straight-through gradient).
    """
    set_qparams(module, "out", scale, zero_point, eager=True)
    _ensure_hook(module)


def set_bias_delta(module: nn.Module, delta: torch.Tensor, *, hook: bool) -> None:
    """Store ``delta`` as ``module``'s ``bias_delta`` buffer; ``hook``: apply it by an :class:`OutputRounding`
    hook (modules whose forward does not call :func:`add_bias_delta` itself, e.g. a BatchNorm)."""
    delta = delta.detach().to(torch.float32).clone()
    if "bias_delta" in module._buffers:
        module.bias_delta = delta
    else:
        module.register_buffer("bias_delta", delta)
    if hook:
        _ensure_hook(module)


def remove_output_rounding(module: nn.Module) -> None:
    """Undo :func:`install_output_rounding` and :func:`set_bias_delta` (the hook and the buffers)."""
    for key, hook in list(module._forward_hooks.items()):
        if isinstance(hook, OutputRounding):
            del module._forward_hooks[key]
    module._buffers.pop("out_qparams", None)
    module._buffers.pop("bias_delta", None)


def has_output_rounding(module: nn.Module) -> bool:
    """Whether ``module``'s output is rounded to an int8 grid by an :class:`OutputRounding` hook."""
    return "out_qparams" in module._buffers and any(isinstance(h, OutputRounding) for h in module._forward_hooks.values())


M = TypeVar("M", bound=nn.Module)


def copy_layer_params(src: nn.Conv2d | nn.Linear, new: M) -> M:
    """Give ``new`` the device, dtype, weight, bias and train/eval mode of ``src``; returns ``new``."""
    new.to(device=src.weight.device, dtype=src.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(src.weight)
        if src.bias is not None:
            new.bias.copy_(src.bias)
    new.train(src.training)
    return new


class PrunedQuantLinear(nn.Linear):
    """``nn.Linear`` whose effective weight is ``Q_bits(weight · mask)`` (mask: fixed 0/1 buffer).

    ``bits = None`` means no quantization (pruning only). The mask is enforced on every
    forward, so gradients of pruned weights are zero and the effective weight keeps exactly
    the mask's zeros whatever the optimiser does.

    >>> fc = PrunedQuantLinear.from_linear(nn.Linear(8, 2), bits=4)
    >>> fc.set_sparsity(0.25)
    >>> fc.sparsity()
    0.25
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, bits: int | None = None) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.register_buffer("mask", torch.ones_like(self.weight))
        self.register_buffer("qbits", torch.tensor(0, dtype=torch.int64))  # 0: not quantized (saved with the mask)
        self.bits = bits

    @property
    def bits(self) -> int | None:
        """Bit width of the surviving weights' grid, or None (pruning only)."""
        b = int(self.qbits)
        return b or None

    @bits.setter
    def bits(self, value: int | None) -> None:
        if value is not None and not 2 <= value <= 8:
            raise ValueError(f"bits must lie in 2..8 or be None, got {value}")
        self.qbits.fill_(value or 0)

    @classmethod
    def from_linear(cls, fc: nn.Linear, *, bits: int | None = None) -> PrunedQuantLinear:
        return copy_layer_params(fc, cls(fc.in_features, fc.out_features, fc.bias is not None, bits=bits))

    def set_sparsity(self, sparsity: float) -> None:
        """Prune (nested with the current mask) to exactly ``round(sparsity·numel)`` zeros."""
        with torch.no_grad():
            self.mask.copy_(magnitude_mask(self.weight, sparsity, previous=self.mask))

    def sparsity(self) -> float:
        """Fraction of weights the mask prunes."""
        return float((self.mask == 0).sum()) / self.mask.numel()

    def effective_weight(self) -> torch.Tensor:
        w = self.weight * self.mask
        return fake_quantize_symmetric(w, self.bits) if self.bits is not None else w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = apply_grid(self, "in", x)  # int8 grids and bias rounding set by align_thresholds (artifact numerics)
        return apply_grid(self, "out", add_bias_delta(self, nn.functional.linear(x, self.effective_weight(), self.bias)))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bits={self.bits}, sparsity={self.sparsity():.3f}"


def sparse_storage_bytes(weight: torch.Tensor, bits: float) -> dict[str, int]:
    """Bytes a pruned, ``bits``-bit weight matrix (out × in) would take in compact formats.

    - ``dense_packed``: every weight at ``bits`` bits;
    - ``csr``: values at ``bits`` bits + 16-bit column indices (32-bit when in > 65536)
      + 32-bit row pointers;
    - ``bitmask``: one bit per position + the non-zeros at ``bits`` bits.

    Per-channel scales (4 bytes per row) are included in each. The zeros counted are those of
    the weight as given (pruned weights plus survivors that round to zero).
    """
    w = weight.detach().reshape(weight.shape[0], -1)
    rows, cols = w.shape
    nnz = int((w != 0).sum())
    scales = 4 * rows
    idx_bytes = 2 if cols <= 65536 else 4
    values = math.ceil(nnz * bits / 8)
    return {
        "dense_packed": math.ceil(w.numel() * bits / 8) + scales,
        "csr": values + nnz * idx_bytes + 4 * (rows + 1) + scales,
        "bitmask": math.ceil(w.numel() / 8) + values + scales,
        "nnz": nnz,
    }


def layer_stats(fc: PrunedQuantLinear) -> dict[str, Any]:
    """Sparsity of the mask and of the effective (quantized) weight, and compact storage sizes."""
    w = fc.effective_weight().detach()
    bits = fc.bits if fc.bits is not None else 32
    store = sparse_storage_bytes(w, bits)
    return {
        "mask_sparsity": fc.sparsity(),
        "weight_sparsity": 1.0 - store["nnz"] / w.numel(),
        "bits": bits,
        "params": w.numel(),
        **{f"{k}_bytes" if k != "nnz" else k: v for k, v in store.items()},
    }
