"""Parameter and MAC counting for reports (and for choosing Tucker ranks)."""

from __future__ import annotations

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
    hooks = []

    def conv_hook(name: str):
        def hook(mod: nn.Conv2d, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            kh, kw = mod.kernel_size
            counts[name] = counts.get(name, 0) + out.numel() * (mod.in_channels // mod.groups) * kh * kw
        return hook

    def linear_hook(name: str):
        def hook(mod: nn.Linear, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            counts[name] = counts.get(name, 0) + out.numel() * mod.in_features
        return hook

    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            hooks.append(mod.register_forward_hook(conv_hook(name)))
        elif isinstance(mod, nn.Linear):
            hooks.append(mod.register_forward_hook(linear_hook(name)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_input)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return dict(counts) if per_layer else sum(counts.values())
