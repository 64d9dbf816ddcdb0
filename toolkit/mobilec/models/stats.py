"""Parameter and MAC counting for reports (and for choosing Tucker ranks)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def count_params(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (buffers such as BN running stats are not counted).

    >>> count_params(nn.Linear(3, 2))
    8
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_macs(model: nn.Module, example_input: torch.Tensor, *, per_layer: bool = False) -> int | dict[str, int]:
    """Multiply-accumulates of one forward pass on ``example_input`` (use a batch of 1 for per-image MACs).

    Counts ``nn.Conv2d`` (output elements × in_channels/groups × kh × kw) and ``nn.Linear``
    (in × out per output row); activations, BN, pooling and adds are not counted.
    With ``per_layer=True`` returns ``{module_name: macs}`` instead of the total.

    >>> count_macs(nn.Conv2d(1, 2, 3, padding=1), torch.zeros(1, 1, 4, 4))
    288
    """
    counts: dict[str, int] = {}

    def hook(name: str):
        def fn(mod: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            counts[name] = counts.get(name, 0) + layer_macs(mod, out)
        return fn

    forward_with_layer_hooks(model, example_input, hook)
    return dict(counts) if per_layer else sum(counts.values())


def layer_macs(mod: nn.Module, out: torch.Tensor) -> int:
    """MACs of one ``nn.Conv2d`` or ``nn.Linear`` call that produced ``out``."""
    if isinstance(mod, nn.Conv2d):
        kh, kw = mod.kernel_size
        return out.numel() * (mod.in_channels // mod.groups) * kh * kw
    return out.numel() * mod.in_features


def forward_with_layer_hooks(model: nn.Module, example_input: torch.Tensor, hook: Callable[[str], Callable[..., None]]) -> None:
    """One no-grad eval-mode forward pass with ``hook(name)`` on every Conv2d/Linear; mode and hooks restored."""
    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
