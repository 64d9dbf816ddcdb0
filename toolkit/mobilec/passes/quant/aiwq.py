"""AIWQ: activation instability induced by weight quantization (PROFIT, Park & Yoo 2020).

For every quantized ``Conv2d`` (not Linear; but a Linear marked ``conv1x1``, which stands for a
1×1 conv on a 1×1 map, like the zoo's squeeze-excite layers, counts as a conv), on each training step of a sampling period, the
layer is run on the step's (quantized) input with the current quantized weights (Y, the real
forward output) and with the previous step's quantized weights (Y_old). Per output channel a
Gaussian is fitted over N·H·W and

    KL(N(μ, s²) ‖ N(μ_old, s_old²)) = log(s_old/s) + (s² + (μ − μ_old)²) / (2 s_old²) − 1/2

is averaged over the channels (channels with zero std skipped). A step whose value exceeds 1
is dropped; the others update ``m ← 0.999·m + 0.001·KL`` (m starts at 0, as in the authors' code).

>>> meter = AIWQMeter(model)            # doctest: +SKIP
>>> with meter: train_some_steps()      # doctest: +SKIP
>>> meter.ranking()[:3]                  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobilec.passes.quant.qmodules import QConv2d, QLinear, quant_layers


def gaussian_kl(y: torch.Tensor, y_old: torch.Tensor) -> torch.Tensor | None:
    """Channel-mean KL between per-channel Gaussians of two N×C×H×W outputs (None if no channel has std > 0)."""
    c = y.shape[1]
    y = y.detach().transpose(0, 1).reshape(c, -1).double()
    y_old = y_old.detach().transpose(0, 1).reshape(c, -1).double()
    mu, sd = y.mean(1), y.std(1)
    mu_o, sd_o = y_old.mean(1), y_old.std(1)
    ok = (sd > 0) & (sd_o > 0)
    if not bool(ok.any()):
        return None
    mu, sd, mu_o, sd_o = mu[ok], sd[ok], mu_o[ok], sd_o[ok]
    kl = torch.log(sd_o / sd) + (sd**2 + (mu - mu_o) ** 2) / (2 * sd_o**2) - 0.5
    return kl.mean()


class AIWQMeter:
    """Measures AIWQ of every QConv2d (and ``conv1x1`` QLinear) while active (a context manager around training steps)."""

    def __init__(self, model: nn.Module, *, momentum: float = 0.999, threshold: float = 1.0) -> None:
        self.layers: dict[str, QConv2d | QLinear] = {
            n: m for n, m in quant_layers(model) if isinstance(m, QConv2d) or (isinstance(m, QLinear) and m.conv1x1)}
        self.momentum = momentum
        self.threshold = threshold
        self.values: dict[str, float] = dict.fromkeys(self.layers, 0.0)
        self.samples: dict[str, int] = dict.fromkeys(self.layers, 0)
        self.dropped: dict[str, int] = dict.fromkeys(self.layers, 0)
        self._prev: dict[str, torch.Tensor] = {}
        self._hooks: list[Any] = []

    def __enter__(self) -> AIWQMeter:
        for name, layer in self.layers.items():
            layer.keep_qinput = True
            self._hooks.append(layer.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        for layer in self.layers.values():
            layer.keep_qinput = False
            layer._qin = None
        self._prev.clear()

    def _hook(self, name: str) -> Any:
        def hook(layer: QConv2d | QLinear, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if not layer.training:
                return
            with torch.no_grad():
                w_now = layer.quantized_weight().detach()
                prev = self._prev.get(name)
                if prev is not None and layer._qin is not None:
                    y_old = layer.op(layer._qin, prev)
                    if layer.out_scale is None and not layer.train_folded:  # the output is conv(x, W_q) (+ bias)
                        y = output.detach()
                        if layer.bias is not None:
                            y_old = y_old + layer.bias.detach().view([1, -1] + [1] * (y_old.dim() - 2))
                    else:
                        y = layer.op(layer._qin, w_now)
                    kl = gaussian_kl(y, y_old)
                    if kl is not None:
                        v = float(kl)
                        if v > self.threshold or v != v:
                            self.dropped[name] += 1
                        else:
                            self.values[name] = self.momentum * self.values[name] + (1 - self.momentum) * v
                            self.samples[name] += 1
                self._prev[name] = w_now.clone()
                layer._qin = None
        return hook

    def ranking(self) -> list[str]:
        """Layer names, highest AIWQ first (ties keep graph order)."""
        order = list(self.values)
        return sorted(order, key=lambda n: (-self.values[n], order.index(n)))

    def summary(self) -> dict[str, Any]:
        return {"values": dict(self.values), "samples": dict(self.samples), "dropped": dict(self.dropped)}


def freeze_groups(ranking: list[str]) -> tuple[list[str], list[str]]:
    """PROFIT's split: the top third (frozen in phase 2) and the next third (also frozen in phase 3)."""
    n = len(ranking)
    first, second = int(n * 1 / 3), int(n * 2 / 3)
    return ranking[:first], ranking[first:second]


def plot_aiwq(values: dict[str, float], path: Path, *, title: str, frozen: tuple[list[str], list[str]] = ([], [])) -> Path:
    """Bar plot of AIWQ per layer (graph order), coloured by PROFIT freezing phase; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mobilec.io import atomic_path

    names = list(values)
    top, mid = set(frozen[0]), set(frozen[1])
    colors = ["tab:red" if n in top else "tab:orange" if n in mid else "tab:blue" for n in names]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.22 * len(names) + 2), 4.0))
    ax.bar(range(len(names)), [values[n] for n in names], color=colors)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=6)
    ax.set_ylabel("AIWQ (EMA of per-step KL)")
    ax.set_title(title, fontsize=9)
    if top or mid:
        from matplotlib.patches import Patch

        ax.legend(handles=[Patch(color="tab:red", label="frozen in phases 2-3"),
                           Patch(color="tab:orange", label="frozen in phase 3"),
                           Patch(color="tab:blue", label="never frozen")], fontsize=7)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
