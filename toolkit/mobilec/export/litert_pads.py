"""Constant pads with a non-zero value, written the way LiteRT's XNNPACK delegate takes them.

``F.pad(x, p, value=v)`` (the zoo's negative padding after h-swish: ``v = -3/8``) converts to a
PADV2 op, which the XNNPACK delegate does not take: each one splits the delegated graph and runs on
LiteRT's reference kernels (mobilenet_v3_small fp32: 10 partitions; int8 PTQ, where HARD_SWISH is
left int8 too: 20, and 2.4x the fp32 latency). ``pad(x, p, 0) + B`` with ``B`` a constant that
holds ``v`` on the border and 0 inside is the same tensor (``x + 0`` and ``0 + v`` are exact) and
converts to PAD + ADD, both delegated.

>>> rewritten, n = constant_pads_as_masks(model, x[:1])    # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn

_PADS = {torch.ops.aten.constant_pad_nd.default: 2, torch.ops.aten.pad.default: 3}


def _pad_value(node: fx.Node) -> float | None:
    """The fill value of a constant pad node (None for other nodes and other pad modes)."""
    if node.op != "call_function" or node.target not in _PADS:
        return None
    if node.target is torch.ops.aten.pad.default:
        mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
        if mode != "constant":
            return None
    i = _PADS[node.target]
    value = node.args[i] if len(node.args) > i else node.kwargs.get("value", 0.0)
    return float(value or 0.0)


def _border(shape: torch.Size, pad: list[int], value: float) -> torch.Tensor:
    """``value`` where ``pad`` (F.pad order: last dimension first) added elements of the padded ``shape``,
    0 elsewhere; size 1 in the dimensions the pad leaves alone (it broadcasts)."""
    padded = len(pad) // 2
    lead = len(shape) - padded
    mask = torch.full([1] * lead + list(shape[lead:]), value)
    inside = [slice(None)] * len(shape)
    for j in range(padded):  # dimension -1-j: pad[2j] before, pad[2j+1] after
        d = len(shape) - 1 - j
        inside[d] = slice(pad[2 * j], shape[d] - pad[2 * j + 1])
    mask[tuple(inside)] = 0.0
    return mask


def constant_pads_as_masks(model: nn.Module, example: torch.Tensor, target: str = "tflite") -> tuple[nn.Module, int]:
    """``model`` as an exported graph module whose non-zero constant pads are zero pads plus a border
    constant; ``(model, 0)`` unchanged when it has none. The border constant has batch size 1 and
    broadcasts over the batch."""
    from mobilec.export import torch_export

    try:  # a dynamic batch, as the callers' PT2E export and batched verification expect
        gm: Any = torch_export(model, example, target, dynamic_batch=True).module()
    except Exception:  # the model does not export with a dynamic batch (e.g. a hard-coded view(1, -1))
        gm = torch_export(model, example, target).module()
    changed = 0
    for node in list(gm.graph.nodes):
        value = _pad_value(node)
        if not value:
            continue
        val = node.meta.get("val")
        pad = [int(p) for p in node.args[1]]
        if val is None or any(p < 0 for p in pad):
            continue  # no shape recorded, or a crop: leave it
        name = f"_mobilec_pad_border_{changed}"
        gm.register_buffer(name, _border(val.shape, pad, value))
        with gm.graph.inserting_after(node):
            border = gm.graph.get_attr(name)
        with gm.graph.inserting_after(border):
            add = gm.graph.call_function(torch.ops.aten.add.Tensor, (node, border))
        node.replace_all_uses_with(add, delete_user_cb=lambda user, add=add: user is not add)
        node.target = torch.ops.aten.constant_pad_nd.default
        node.args, node.kwargs = (node.args[0], pad, 0.0), {}
        changed += 1
    if not changed:
        return model, 0
    gm.graph.lint()
    gm.recompile()
    return gm, changed
