"""The quantized weights and folded BatchNorm of every layer, computed once per training step.

A DuQ model runs, per layer and step, a weight quantizer and (BN-folded) the folded scale and the
snapped bias: small tensor ops and autograd nodes whose per-call overhead, on a CPU, weighs more than
their arithmetic (batching them removed ~2,000 of the ~8,800 aten ops of a mobilenet_v3_small step). :func:`precompute_hook`,
installed by the Trainer as a forward pre-hook on the model, does all of it before the forward:

- the per-tensor DuQ weight quantizers of all layers in one autograd node (:class:`_DuQWeightsFunction`),
  through the fused C++ kernels (one kernel call per weight tensor);
- the folded scale ``g`` and the snapped bias ``b`` of all BN-folded layers at once, on the
  concatenated per-channel vectors (``qmodules.folded_scales_biases``, which a layer outside training
  runs on itself alone).

Each layer's forward then uses its entry in ``layer._pre``. The values are those of the per-layer
path bit for bit (the same float32 operations per element; ``softplus`` runs per quantizer because
its vectorized form differs in the last bit), and so are the gradients
(``tests/test_duq_batched.py``). Layers the batch does not cover (per-channel weights, torch-op
kernels) compute their weights per layer as before.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mobilec.passes.quant import duq
from mobilec.passes.quant.qmodules import QConv2d, QLinear, folded_scales_biases, quant_layers

Layer = QConv2d | QLinear


class _DuQWeightsFunction(torch.autograd.Function):
    """Signed per-tensor DuQ quantization of ``n`` weight tensors in one node (fused kernels only).

    ``tensors`` = ``a_raw_1..n, c_raw_1..n, w_1..n``; returns ``W_q 1..n``. Per tensor it is exactly
    :class:`duq._DuQFunction` with ``lo = -1`` and no offset.
    """

    @staticmethod
    def forward(ctx: Any, ks: tuple[float, ...], *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = len(ks)
        a_raws, c_raws, ws = tensors[:n], tensors[n:2 * n], tensors[2 * n:]
        lib = duq._FUSED["lib"]
        a = torch.stack([F.softplus(r) for r in a_raws])  # per quantizer: the scalar softplus path
        c = torch.stack([F.softplus(r) for r in c_raws])
        k = torch.tensor(ks)
        scales, steps = (a.reciprocal() * k).tolist(), (c / k).tolist()  # k / a and c / k, as the per-layer path
        outs, xs, codes = [], [], []
        for w, kk, scale, step in zip(ws, ks, scales, steps, strict=True):
            x = duq._laid_out_like(w)
            out, code = lib.duq_forward(x, scale, -kk, kk, step, 0.0, True)
            outs.append(out)
            xs.append(x)
            codes.append(code)
        ctx.save_for_backward(a, c, *a_raws, *c_raws, *xs, *codes)
        ctx.ks, ctx.lib = ks, lib
        ctx.set_materialize_grads(False)
        return tuple(outs)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        ks = ctx.ks
        n = len(ks)
        a, c, *rest = ctx.saved_tensors
        a_raws, c_raws, xs, codes = rest[:n], rest[n:2 * n], rest[2 * n:3 * n], rest[3 * n:]
        ca = c / a
        lo_a, a_f, ca_f = (-a).tolist(), a.tolist(), ca.tolist()
        need_a, need_c, need_w = ctx.needs_input_grad[1:n + 1], ctx.needs_input_grad[n + 1:2 * n + 1], ctx.needs_input_grad[2 * n + 1:]
        grad_w: list[torch.Tensor | None] = [None] * n
        sum_a, sum_c = [0.0] * n, [0.0] * n
        for i, g in enumerate(grads):
            if g is None:
                continue
            grad_w[i], sum_a[i], sum_c[i] = ctx.lib.duq_backward(duq._laid_out_like(g, xs[i]), xs[i], codes[i], 0.0, lo_a[i],
                                                                 a_f[i], ca_f[i], need_w[i])
        grad_a = (-ca / a) * torch.tensor(sum_a)
        grad_c = torch.tensor([s / k for s, k in zip(sum_c, ks, strict=True)])
        out_a = [torch.ops.aten.softplus_backward(grad_a[i], a_raws[i], 1.0, 20.0) if need_a[i] and grads[i] is not None
                 else None for i in range(n)]
        out_c = [torch.ops.aten.softplus_backward(grad_c[i], c_raws[i], 1.0, 20.0) if need_c[i] and grads[i] is not None
                 else None for i in range(n)]
        return (None, *out_a, *out_c, *grad_w)


def _batchable(layer: Layer) -> bool:
    q = layer.weight_q
    return bool(q.enabled) and not q.per_channel and duq._fused_ok(layer.weight)


def quantized_weights(layers: list[Layer]) -> list[torch.Tensor]:
    """``layer.quantized_weight()`` of every layer; the batchable ones in one :class:`_DuQWeightsFunction` node."""
    out: list[torch.Tensor | None] = [None] * len(layers)
    batch = [i for i, layer in enumerate(layers) if _batchable(layer)]
    if batch:
        qs = [layers[i].weight_q for i in batch]
        res = _DuQWeightsFunction.apply(tuple(float(q.levels) for q in qs), *(q.a_raw for q in qs), *(q.c_raw for q in qs),
                                        *(layers[i].weight for i in batch))
        for i, wq in zip(batch, res, strict=True):
            out[i] = wq
    return [wq if wq is not None else layer.quantized_weight() for wq, layer in zip(out, layers, strict=True)]


def precompute(model: nn.Module) -> None:
    """Fill ``layer._pre = (W_q, g, b)`` (``g``/``b`` None unless ``train_folded``) for every quantized layer."""
    layers = [layer for _, layer in quant_layers(model)]
    if not layers:
        return
    wqs = quantized_weights(layers)
    folded = [i for i, layer in enumerate(layers) if layer.train_folded]
    gb: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    if folded:
        gb = dict(zip(folded, folded_scales_biases([layers[i] for i in folded], [wqs[i] for i in folded]), strict=True))
    for i, layer in enumerate(layers):
        g, b = gb.get(i, (None, None))
        layer._pre = (wqs[i], g, b)


def clear(model: nn.Module) -> None:
    for _, layer in quant_layers(model):
        layer._pre = None


def precompute_hook(module: nn.Module, args: Any) -> None:
    """Forward pre-hook: :func:`precompute` (the matching forward hook, :func:`clear_hook`, drops the values)."""
    precompute(module)


def clear_hook(module: nn.Module, args: Any, output: Any) -> None:
    clear(module)
