"""Lower a ``tac``/``binarize`` model to an int8 ExecuTorch (XNNPACK) or LiteRT artifact.

A binary conv computes ``conv(sign(x − τ), α·sign(W))``. That is exactly an int8 conv:

- **input**: ``sign`` does not lower to XNNPACK or LiteRT kernels, so it is written as
  ``s = clamp((x − τ)·2¹⁰⁰ + 1, −1, 1)`` followed by an int8 quantize with the fixed scale
  1/127 and zero point 0 (a FixedQParams annotation): ±1 become the integers ±127. For
  ``x − τ ≥ 0`` (−0.0 included) the clamp gives exactly +1 (sign(0) = +1 as in the eager
  model); for ``x − τ ≤ −2⁻⁹⁹`` exactly −1. Only differences in (−2⁻⁹⁹, 0), below 2e-30 and
  far under any fp32 difference of activations and thresholds of ordinary size, give
  something else. Every op (sub, mul, add, clamp, quantize) lowers to XNNPACK and to LiteRT.
- **weights**: ``α·sign(W)`` (with the following BatchNorm folded in by PT2E: still one
  magnitude per output channel) is stored as int8 ±127 with per-channel scale magnitude/127
  (a grid observer), so dequantization is exact. Inputs and weights use ±127 rather than ±1
  because the int8 kernels round the (BN-folded) bias to the accumulator grid
  ``s_in·s_w``: at ±1 that grid is the weight magnitude itself and the rounding would shift
  whole channels; at ±127 it is 16129 times finer. The information is one bit either way.
- **output**: int8, per-tensor affine, after the folded BatchNorm and the fused ReLU/ReLU6 when
  there is one. This requantization is the only rounding the artifact adds.
  :func:`align_thresholds` (run by the passes before the last epochs and after training)
  fixes those output grids from real batches and makes the eager model round each output
  to its grid at the same place (:func:`output_sites`: in the layer, or by a hook on the
  BatchNorm / ReLU module after it), so eager and artifact see the same int8 values —
  residual sums of them included. It also moves each threshold of a binary input fed by such
  an output (directly or through max-pool, ReLU, flatten) to the nearest half-step of that
  grid, by at most half a step, so ``sign(q(x) − τ)`` has a margin of half a step.

Pruned low-bit FC layers (``fc_bits``) become int8 linears whose weights are the grid
integers times ``127 // Q`` (per-channel scale Δ·Q/127·…, exact) with calibrated int8
activations. Layers kept in float (the first conv, ``keep_last``) stay fp32 in the artifact.
No runtime here has xnor-popcount kernels: binary layers execute as int8 arithmetic and are
stored one byte per weight.

>>> from mobilec.passes.binary_export import lower_binary   # doctest: +SKIP
>>> art = lower_binary(model, "executorch", (x[:1],), Path("model.pte"), calibration=batches)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import operator
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobilec.errors import ExportError, MobilecError
from mobilec.export.base import Artifact, LayerBits
from mobilec.export.tflite_names import names_note, strip_tensor_names
from mobilec.passes.binarize import BINARY_TYPES, BinaryConv2d, BinaryLinear
from mobilec.passes.prune import (
    PrunedQuantLinear,
    has_output_rounding,
    install_output_rounding,
    remove_output_rounding,
    set_bias_delta,
    set_qparams,
    sparse_storage_bytes,
)

#: 2**100: multiplies any fp32 difference of ordinary size far past ±1 before the clamp.
SIGN_GAIN = 2.0**100
#: Offset that makes sign(0) exactly +1 (see the module docstring).
SIGN_OFFSET = 1.0
#: Fixed int8 scale of binary inputs: ±1 are stored as ±127.
SIGN_SCALE = 1.0 / 127.0
LOWERING_TARGETS = ("executorch", "tflite")
NO_XNOR_NOTE = (
    "binary layers run as int8 kernels (±1 weights and inputs in int8): no runtime used here has "
    "xnor-popcount kernels (Larq Compute Engine has them, for Keras models only), so there is no 1-bit speed-up"
)


# --------------------------------------------------------------------------- lowerable form


class LoweredSign(nn.Module):
    """``clamp((x − τ)·2¹⁰⁰ + 1, −1, 1)``: exactly ±1 (+1 for x = τ) for ordinary inputs."""

    def __init__(self, threshold: torch.Tensor, ndim: int) -> None:
        super().__init__()
        self.register_buffer("threshold", threshold.detach().clone().view(1, -1, *([1] * (ndim - 2))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp((x - self.threshold) * SIGN_GAIN + SIGN_OFFSET, -1.0, 1.0)


class _Lowered(nn.Module):
    """Export form of one binary / grid layer: optional LoweredSign, then a plain conv or linear.

    ``grid_qmax``: the weights are ``k·scale_c`` with integers ``|k| ≤ grid_qmax``;
    ``out_qparams`` / ``in_qparams``: fixed (scale, zero point) of the int8 output / of a non-binary
    input, or None (calibrate).
    """

    def __init__(self, src: nn.Module, layer: nn.Module, weight: torch.Tensor, grid_qmax: int, sign_ndim: int) -> None:
        super().__init__()
        act = getattr(src, "act", None)
        self.sign = LoweredSign(act.threshold, sign_ndim) if act is not None else None
        self.layer = layer
        self.grid_qmax = grid_qmax
        qp = src._buffers.get("out_qparams")
        self.out_qparams = (float(qp[0]), int(qp[1])) if qp is not None else None
        qi = src._buffers.get("in_qparams")
        self.in_qparams = (float(qi[0]), int(qi[1])) if qi is not None else None
        with torch.no_grad():
            layer.weight.copy_(weight)
            if src.bias is not None:
                layer.bias.copy_(src.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(self.sign(x) if self.sign is not None else x)


def _lowered(mod: nn.Module) -> nn.Module | None:
    if isinstance(mod, BinaryConv2d):
        conv = nn.Conv2d(mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding,
                         mod.dilation, mod.groups, bias=mod.bias is not None)
        return _Lowered(mod, conv, mod.binary_weight(), 1, 4)
    if isinstance(mod, BinaryLinear):
        fc = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None)
        return _Lowered(mod, fc, mod.binary_weight(), 1, 2)
    if isinstance(mod, PrunedQuantLinear):
        fc = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None)
        if mod.bits is None:  # pruning only: a float layer with zeros
            with torch.no_grad():
                fc.weight.copy_(mod.effective_weight())
                if mod.bias is not None:
                    fc.bias.copy_(mod.bias)
            return fc
        return _Lowered(mod, fc, mod.effective_weight(), 2 ** (mod.bits - 1) - 1, 2)
    return None


def to_lowerable(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) whose binary / quantized layers use only lowerable ops.

    Its float forward equals the binary model's (``LoweredSign`` gives the same ±1 as
    ``sign_pm1`` for every difference outside (−2⁻⁹⁹, 0)); module names are unchanged, so
    ``<name>.layer`` in the copy is ``<name>`` in the original.
    """
    low = copy.deepcopy(model).eval()
    for name, mod in list(low.named_modules()):
        new = _lowered(mod)
        if new is not None:
            parent, _, child = name.rpartition(".")
            setattr(low.get_submodule(parent) if parent else low, child, new)
    for mod in low.modules():  # the eager output roundings are the artifact's own requantizations
        remove_output_rounding(mod)
    return low.eval()


# --------------------------------------------------------------------------- the quantizer


def _grid_observer_cls() -> type:
    from torchao.quantization.pt2e import PerChannelMinMaxObserver

    class GridObserver(PerChannelMinMaxObserver):
        """Per-channel symmetric: weights ``k·scale_c`` (|k| ≤ grid_qmax) map to the integers ``k·(127 // grid_qmax)``."""

        def __init__(self, *args: Any, grid_qmax: int = 1, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.grid_qmax = grid_qmax

        def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
            amax = torch.maximum(self.min_val.abs(), self.max_val.abs())
            top = self.grid_qmax * (127 // self.grid_qmax)
            scale = torch.where(amax > 0, amax / top, torch.ones_like(amax))
            return scale, torch.zeros_like(scale, dtype=torch.int64)

    return GridObserver


_ACT_FUSE = (
    torch.ops.aten.relu.default,
    torch.ops.aten.relu_.default,
    torch.ops.aten.hardtanh.default,
    torch.ops.aten.hardtanh_.default,
)
_LAYER_OPS = (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default)
_BN_OPS = (torch.ops.aten.batch_norm.default, torch.ops.aten._native_batch_norm_legit_no_training.default)
#: Modules whose whole forward is the one op after which the artifact may requantize a layer's output.
_ROUNDING_SITES = (nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Hardtanh)


def _owner(node: Any, lowered: dict[str, _Lowered]) -> tuple[str, _Lowered] | None:
    """(name, module) of the ``_Lowered`` layer a node belongs to, from its nn_module_stack."""
    stack = node.meta.get("nn_module_stack") or {}
    for path, _type in reversed(list(stack.values())):
        if path in lowered:
            return path, lowered[path]
    return None


def _layer_nodes(gm: torch.fx.GraphModule, lowered: dict[str, _Lowered]) -> Iterator[tuple[Any, str, _Lowered]]:
    """``(node, name, module)`` for every conv/linear node of ``gm`` that belongs to a ``_Lowered`` layer."""
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in _LAYER_OPS and (found := _owner(node, lowered)) is not None:
            yield node, found[0], found[1]


def _module_path(node: Any) -> str | None:
    """Path of the innermost module a graph node was traced in (None: the top-level forward)."""
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else None


def output_sites(gm: torch.fx.GraphModule, lowered: dict[str, _Lowered]) -> dict[str, tuple[str, str, str | None]]:
    """``{layer: (module path, node name after BN folding, folded BatchNorm path or None)}``: where the
    artifact requantizes each layer's output, and which BatchNorm PT2E folds into it.

    Mirrors what PT2E and :func:`make_quantizer` do to the exported (not yet prepared) graph: a
    conv whose only user is a BatchNorm gets it folded in, and a single ReLU/ReLU6 user is fused,
    so the int8 output is that of the BatchNorm or the activation; else the layer's own output.
    The module path is the innermost module of that node (the layer itself, a BatchNorm2d, a
    ReLU...); :func:`align_thresholds` installs the eager rounding there.
    """
    sites: dict[str, tuple[str, str, str | None]] = {}
    for node, name, _mod in _layer_nodes(gm, lowered):
        cur, path, out_name, bn_path = node, name, node.name, None
        users = list(cur.users)
        if node.target == torch.ops.aten.conv2d.default and len(users) == 1 and users[0].target in _BN_OPS:
            bn, path = users[0], _module_path(users[0]) or ""
            cur, bn_path = bn, path
            if bn.target != torch.ops.aten.batch_norm.default:  # the tuple-returning form: its getitem 0
                items = [u for u in bn.users if u.target is operator.getitem and u.args[1] == 0]
                cur = items[0] if len(items) == 1 else bn
            users = list(cur.users)
        if len(users) == 1 and users[0].target in _ACT_FUSE:
            path, out_name = _module_path(users[0]) or "", users[0].name
        sites[name] = (path, out_name, bn_path)  # a folded BatchNorm's output is the conv node's
    return sites


def make_quantizer(lowered_model: nn.Module) -> Any:
    """A PT2E quantizer that annotates exactly the binary and grid layers of ``lowered_model``.

    After ``annotate``, ``quantizer.outputs`` maps each layer name to the graph node whose
    output is quantized (the fused ReLU/ReLU6, or the conv/linear itself).
    """
    from torchao.quantization.pt2e import HistogramObserver
    from torchao.quantization.pt2e.quantizer import (
        FixedQParamsQuantizationSpec,
        QuantizationAnnotation,
        QuantizationSpec,
        Quantizer,
    )
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

    grid_observer = _grid_observer_cls()
    lowered = {n: m for n, m in lowered_model.named_modules() if isinstance(m, _Lowered)}
    act_spec = QuantizationSpec(dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_affine,
                                observer_or_fake_quant_ctr=HistogramObserver.with_args(eps=2**-12))
    sign_spec = FixedQParamsQuantizationSpec(dtype=torch.int8, scale=SIGN_SCALE, zero_point=0, quant_min=-128,
                                             quant_max=127, qscheme=torch.per_tensor_affine)

    def fixed_or_calibrated(qparams: tuple[float, int] | None) -> Any:
        if qparams is None:
            return act_spec
        scale, zp = qparams
        return FixedQParamsQuantizationSpec(dtype=torch.int8, scale=scale, zero_point=zp, quant_min=-128, quant_max=127,
                                            qscheme=torch.per_tensor_affine)

    def weight_spec(qmax: int) -> Any:
        return QuantizationSpec(dtype=torch.int8, quant_min=-127, quant_max=127, qscheme=torch.per_channel_symmetric,
                                ch_axis=0, observer_or_fake_quant_ctr=grid_observer.with_args(grid_qmax=qmax))

    class BinaryQuantizer(Quantizer):
        def __init__(self) -> None:
            super().__init__()
            self.outputs: dict[str, Any] = {}
            self.layers: dict[str, Any] = {}

        def annotate(self, gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
            self.outputs, self.layers = {}, {}
            for node, name, mod in _layer_nodes(gm, lowered):
                in_spec = sign_spec if mod.sign is not None else fixed_or_calibrated(mod.in_qparams)
                qmap = {node.args[0]: in_spec, node.args[1]: weight_spec(mod.grid_qmax)}
                users = list(node.users)
                fused = users[0] if len(users) == 1 and users[0].target in _ACT_FUSE else None
                out_spec = fixed_or_calibrated(mod.out_qparams)
                if fused is None:
                    node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(input_qspec_map=qmap, output_qspec=out_spec,
                                                                         _annotated=True)
                else:
                    node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(input_qspec_map=qmap, _annotated=True)
                    fused.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(output_qspec=out_spec, _annotated=True)
                self.outputs[name] = fused if fused is not None else node
                self.layers[name] = node
            return gm

        def validate(self, gm: torch.fx.GraphModule) -> None:
            missing = sorted(set(lowered) - set(self.outputs))
            if missing:
                raise ExportError(f"binary/quantized layer(s) {', '.join(missing[:4])} not found in the exported graph",
                                  hint="the model's forward must call each of its layers once")

    return BinaryQuantizer()


@dataclass
class _Prepared:
    graph: torch.fx.GraphModule  # with observers
    quantizer: Any
    lowerable: nn.Module
    sites: dict[str, tuple[str, str, str | None]]  # output_sites of the exported graph
    calls: Counter  # op nodes per innermost module path (a module called once has one)


def _prepare(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> _Prepared:
    """Export the lowerable form (dynamic batch) and insert observers."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    low = to_lowerable(model)
    x0 = example_inputs[0]
    traced = torch.cat([x0[:1], x0[:1]])  # batch 2, dynamic: calibration runs in batches
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    try:
        gm = torch.export.export(low, (traced, *example_inputs[1:]), dynamic_shapes=({0: batch},)).module()
    except Exception as exc:
        raise ExportError(f"torch.export failed on the binarized model: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                          hint="the model must be torch.export-able (no data-dependent control flow)") from None
    lowered = {n: m for n, m in low.named_modules() if isinstance(m, _Lowered)}
    sites = output_sites(gm, lowered)
    calls = Counter(_module_path(n) for n in gm.graph.nodes if n.op == "call_function")
    quantizer = make_quantizer(low)
    return _Prepared(prepare_pt2e(gm, quantizer), quantizer, low, sites, calls)


def quantize_binary(model: nn.Module, example_inputs: tuple[torch.Tensor, ...],
                    calibration: Sequence[torch.Tensor], *, fold_quantize: bool = True) -> torch.fx.GraphModule:
    """The converted PT2E graph (q/dq reference) of a binarized model, calibrated on ``calibration``.

    ``fold_quantize=False`` keeps float weights + quantize ops (the form litert-torch's converter reads).
    """
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    if not calibration:
        raise MobilecError("binary lowering needs calibration batches for the int8 activation ranges",
                           hint="pass calibration=ctx.data.calibration_batches(16, 32)")
    prepared = _prepare(model, example_inputs).graph
    with torch.no_grad():
        for b in calibration:
            prepared(b)
    return move_exported_model_to_eval(convert_pt2e(prepared, fold_quantize=fold_quantize))


# --------------------------------------------------------------------------- threshold alignment

#: Ops between an int8 output and a binary input that keep values on the int8 grid (elementwise
#: monotone or pure data movement); adaptive_avg_pool2d counts only when it is an identity.
_GRID_PRESERVING = {
    torch.ops.aten.relu.default, torch.ops.aten.relu_.default, torch.ops.aten.hardtanh.default,
    torch.ops.aten.hardtanh_.default, torch.ops.aten.max_pool2d.default, torch.ops.aten.flatten.using_ints,
    torch.ops.aten.view.default, torch.ops.aten.reshape.default, torch.ops.aten.dropout.default,
    torch.ops.aten.clone.default, torch.ops.aten.contiguous.default,
}


def _grid_source(node: Any, prepared: torch.fx.GraphModule, grids: dict[int, Any]) -> Any:
    """The output observer (one of ``grids``, by id) whose int8 grid ``node``'s values lie on, or None.

    Walks back through grid-preserving ops and through other observers (which only watch).
    """
    while True:
        if node.op == "call_module":
            mod = prepared.get_submodule(node.target)
            if id(mod) in grids:
                return mod
            if not node.args:
                return None
            node = node.args[0]
            continue
        if node.op != "call_function":
            return None
        if node.target in _GRID_PRESERVING:
            node = node.args[0]
            continue
        if node.target == torch.ops.aten.adaptive_avg_pool2d.default:
            src, out = node.args[0].meta.get("val"), node.meta.get("val")
            if src is not None and out is not None and tuple(src.shape[-2:]) == tuple(out.shape[-2:]):
                node = node.args[0]
                continue
        return None


@torch.no_grad()
def int32_bias_delta(layer: nn.Module, bn: nn.BatchNorm2d | None, in_scale: float, top: int) -> torch.Tensor:
    """What the int8 kernel's int32 bias rounding adds to ``layer``'s (BN-folded) output, per channel.

    The artifact's layer computes ``W'x + b'`` with the BatchNorm folded in (``W' = g·W``,
    ``b' = g·(b − μ) + β``, ``g = γ/√(var + ε)``, as PT2E folds it, in fp32), weights on the
    per-channel grid ``s_w = max|W'_c| / top`` (:func:`_grid_observer_cls`) and the bias rounded
    to the accumulator grid ``in_scale·s_w``. Returns ``round(b'/(in_scale·s_w))·in_scale·s_w − b'``.
    """
    w = layer.binary_weight() if isinstance(layer, BINARY_TYPES) else layer.effective_weight()
    w = w.detach().reshape(w.shape[0], -1)
    b = layer.bias.detach() if layer.bias is not None else torch.zeros(w.shape[0])
    if bn is not None:
        g = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        w, b = w * g[:, None], (b - bn.running_mean) * g + bn.bias
    amax = w.abs().amax(dim=1)
    acc = in_scale * torch.where(amax > 0, amax / top, torch.ones_like(amax))
    return torch.round(b / acc) * acc - b


def align_thresholds(model: nn.Module, example_inputs: tuple[torch.Tensor, ...],
                     calibration: Sequence[torch.Tensor]) -> dict[str, Any]:
    """Fix the artifact's int8 grids from real batches and make the eager model compute what the artifact does.

    Modifies ``model`` in place:

    - each binary/grid layer gets an ``out_qparams`` buffer: the (scale, zero point) of its
      int8 output in the artifact, calibrated on ``calibration`` — or kept, when the layer has
      one already (a second call, e.g. after more training, changes no grid);
    - that output is rounded to its grid in the eager model too, where the artifact rounds it
      (:func:`output_sites`): in the layer's forward when the layer's own output is quantized,
      else by an :class:`~mobilec.passes.prune.OutputRounding` hook on the BatchNorm / ReLU /
      ReLU6 module whose output it is (a module called once per forward; otherwise the layer is
      listed as ``unrounded``). Eager and artifact then see the same int8 values everywhere,
      residual sums of such outputs included;
    - the bias rounding of the int8 kernels (:func:`int32_bias_delta`) is added to each layer's
      eval-mode output (a ``bias_delta`` buffer on the layer, or on the BatchNorm folded into it);
      with it the eager model reproduces the artifact's integers, not just its grids;
    - each binary input whose values come from such an output through grid-preserving ops
      (ReLU, max-pool, flatten, ...) gets its thresholds moved to ``scale·(m + ½)`` (nearest,
      inside the int8 range), so the artifact's rounding cannot flip a sign;
    - each pruned low-bit linear gets ``in_qparams`` (its producer's grid when it has one, else
      its own calibrated input grid), and a linear whose output is quantized right at the layer
      (the logits) applies that grid too: these layers fake-quantize in the eager forward exactly
      where the artifact rounds, so eager and artifact compute the same values.

    Returns what was aligned and rounded and how far thresholds moved (in units of the step).
    """
    prep = _prepare(model, example_inputs)
    prepared, quantizer, low = prep.graph, prep.quantizer, prep.lowerable
    with torch.no_grad():
        for b in calibration:
            prepared(b)
    grids: dict[int, tuple[str, float, int]] = {}
    rounded, unrounded = [], []
    for name, out_node in quantizer.outputs.items():
        obs_nodes = [u for u in out_node.users if u.op == "call_module"]
        if not obs_nodes:
            raise ExportError(f"no observer after layer {name!r} in the prepared graph", hint="report this model")
        obs = prepared.get_submodule(obs_nodes[0].target)
        scale, zp = (float(v) for v in obs.calculate_qparams())  # a fixed grid returns itself
        site, node_name, _bn = prep.sites[name]
        if node_name != out_node.name:
            raise ExportError(f"layer {name!r}: the artifact quantizes node {out_node.name}, expected {node_name}",
                              hint="report this model (unexpected PT2E folding)")
        eager_mod = model.get_submodule(name)
        site_mod = model.get_submodule(site) if site != name else eager_mod
        set_qparams(eager_mod, "out", scale, int(zp), eager=site == name)
        if site == name:
            rounded.append(name)
        elif isinstance(site_mod, _ROUNDING_SITES) and prep.calls[site] == 1:
            install_output_rounding(site_mod, scale, int(zp))
            rounded.append(f"{name} -> {site}")
        else:
            unrounded.append(f"{name} -> {site or '(top level)'}")
        grids[id(obs)] = (name, scale, int(zp))
    lowered = {n: m for n, m in low.named_modules() if isinstance(m, _Lowered)}
    aligned, unaligned, shifts, fc_inputs = [], [], [], []
    for name, node in quantizer.layers.items():
        if lowered[name].sign is not None:
            continue
        src = _grid_source(node.args[0], prepared, grids)
        if src is not None:
            producer, scale, zp = grids[id(src)]
            fc_inputs.append(f"{name} <- {producer}")
        else:
            own = node.args[0]
            obs = prepared.get_submodule(own.target) if own.op == "call_module" else None
            if obs is None:
                raise ExportError(f"no input observer before layer {name!r}", hint="report this model")
            scale, zp = (float(v) for v in obs.calculate_qparams())
            fc_inputs.append(f"{name} (own input grid)")
        set_qparams(model.get_submodule(name), "in", scale, int(zp), eager=True)
    for name, low_mod in lowered.items():
        bn_path = prep.sites[name][2]
        eager_mod = model.get_submodule(name)
        in_scale = SIGN_SCALE if low_mod.sign is not None else float(eager_mod.in_qparams[0])
        bn = model.get_submodule(bn_path) if bn_path else None
        delta = int32_bias_delta(eager_mod, bn, in_scale, low_mod.grid_qmax * (127 // low_mod.grid_qmax))
        if bn is None:
            set_bias_delta(eager_mod, delta, hook=False)
        else:
            set_bias_delta(bn, delta, hook=True)
    for node in prepared.graph.nodes:
        if node.op != "call_function" or node.target != torch.ops.aten.sub.Tensor:
            continue
        found = _owner(node, lowered)
        if found is None or found[1].sign is None:
            continue
        name, _ = found
        src = _grid_source(node.args[0], prepared, grids)
        if src is None:
            unaligned.append(name)
            continue
        producer, scale, zp = grids[id(src)]
        act = model.get_submodule(name).act
        with torch.no_grad():
            t = act.threshold.detach().to(torch.float64)
            m = torch.clamp(torch.floor(t / scale), -128 - zp, 126 - zp)
            new = ((m + 0.5) * scale).to(act.threshold.dtype)
            shifts.append(float(((new.double() - t).abs() / scale).max()))
            act.threshold.copy_(new)
        aligned.append(f"{name} <- {producer}")
    return {"aligned": aligned, "unaligned": unaligned, "max_shift_steps": max(shifts, default=0.0),
            "output_grids": len(grids), "fc_input_grids": fc_inputs, "rounded": rounded, "unrounded": unrounded}


# --------------------------------------------------------------------------- per-layer records


def _adjust_layers(model: nn.Module, layers: list[LayerBits]) -> list[LayerBits]:
    """Name the binary / pruned layers in the artifact's (measured) table and give pruned FCs their sparse size.

    ``info_bits``, ``stored`` and ``executed`` stay as measured from the artifact; for a pruned
    FC layer ``packed_bytes`` becomes the smallest compact encoding of its non-zeros (CSR,
    bitmask, or dense at its bit width, see :func:`~mobilec.passes.prune.sparse_storage_bytes`).
    """
    mods = dict(model.named_modules())
    out = []
    for layer in layers:
        mod = mods.get(layer.name)
        if isinstance(mod, BINARY_TYPES):
            layer.kind = "binary_" + layer.kind
        elif isinstance(mod, PrunedQuantLinear) and mod.bits is not None:
            store = sparse_storage_bytes(mod.effective_weight().detach(), mod.bits)
            layer.kind = "pruned_" + layer.kind
            layer.packed_bytes = min(layer.packed_bytes, store["csr"], store["bitmask"], store["dense_packed"])
        out.append(layer)
    return out


def storage_notes(model: nn.Module) -> list[str]:
    """One note per pruned FC layer: sparsity, and bytes dense int8 vs CSR vs bitmask storage."""
    notes = []
    for name, mod in model.named_modules():
        if isinstance(mod, PrunedQuantLinear):
            w = mod.effective_weight().detach()
            bits = mod.bits or 32
            s = sparse_storage_bytes(w, bits)
            notes.append(
                f"{name}: {mod.sparsity():.2%} pruned ({1 - s['nnz'] / w.numel():.2%} zeros after {bits}-bit rounding); "
                f"stored dense ({w.numel()} weights in {'int8' if mod.bits else 'fp32'}), would take CSR {s['csr']} B, "
                f"bitmask {s['bitmask']} B, dense {bits}-bit {s['dense_packed']} B (no runtime used here reads sparse weights)"
            )
    return notes


# --------------------------------------------------------------------------- targets


def _lower_executorch(converted: nn.Module, example: torch.Tensor, out_path: Path) -> tuple[dict[str, Any], list[Any]]:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from mobilec.export import torch_export
    from mobilec.export.executorch import delegation_report
    from mobilec.export.layers import pte_records
    from mobilec.io import atomic_path

    ep = torch_export(converted, example, "executorch")
    edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
    lowered = edge.exported_program()
    delegation = delegation_report(lowered.graph_module)
    records = pte_records(lowered)
    program = edge.to_executorch()
    with atomic_path(out_path) as tmp:
        tmp.write_bytes(program.buffer)
    return delegation, records


def _lower_tflite(converted: nn.Module, example: torch.Tensor, out_path: Path) -> tuple[dict[str, Any], list[Any]]:
    import litert_torch
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.quant_config import QuantConfig

    from mobilec.export.layers import tflite_records
    from mobilec.io import atomic_path

    # The graph already holds its quantize/dequantize ops; the quantizer object only selects the
    # converter's static QDQ -> int8-kernel mode (int8 graph outputs stay int8: the runtime dequantizes).
    cfg = QuantConfig(pt2e_quantizer=pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)))
    edge = litert_torch.convert(converted, (example,), quant_config=cfg)
    with atomic_path(out_path) as tmp:
        edge.export(str(tmp))
    from ai_edge_litert.interpreter import Interpreter

    ops: dict[str, int] = {}
    for op in Interpreter(model_path=str(out_path), num_threads=1)._get_ops_details():
        ops[op["op_name"]] = ops.get(op["op_name"], 0) + 1
    return {"backend": "LiteRT builtin kernels (XNNPACK delegate at run time)", "ops": ops}, tflite_records(out_path)


@dataclass
class BinaryLowering:
    """The ``ctx.lowering`` a binary pass installs: ``lowering(model, target, example_inputs, out_path)``."""

    calibration: tuple[torch.Tensor, ...] = field(default_factory=tuple)

    def __call__(self, model: nn.Module, target: str, example_inputs: tuple[torch.Tensor, ...], out_path: Path) -> Artifact:
        return lower_binary(model, target, example_inputs, out_path, calibration=self.calibration)


def lower_binary(model: nn.Module, target: str, example_inputs: tuple[torch.Tensor, ...], out_path: Path, *,
                 calibration: Sequence[torch.Tensor] = ()) -> Artifact:
    """Export a ``tac``/``binarize`` model as an int8 artifact for ``target`` (executorch | tflite).

    ``calibration``: real input batches for the int8 activation ranges of layers whose output
    grid :func:`align_thresholds` has not fixed (required). The artifact's ``reference`` is the
    eager binary model itself, not a q/dq simulation: verification compares the artifact with
    what was trained.
    """
    from mobilec.export import batch1_example, check_calibration, first_line, smoke_check
    from mobilec.export.layers import check_layers, layer_bits, summarize

    if target not in LOWERING_TARGETS:
        raise ExportError(f"binary lowering supports {', '.join(LOWERING_TARGETS)}, not {target!r}",
                          hint="drop that target from [export] targets for tac/binarize recipes")
    if not any(isinstance(m, (*BINARY_TYPES, PrunedQuantLinear)) for m in model.modules()):
        raise MobilecError("lower_binary got a model without binary or pruned layers",
                           hint="run the tac or binarize pass first, or use the standard exporters")
    out_path = Path(out_path)
    example = batch1_example(example_inputs, target)
    batches = check_calibration(calibration, example, target)
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    try:
        converted = quantize_binary(model, (example,), batches, fold_quantize=target == "executorch")
        lower = _lower_executorch if target == "executorch" else _lower_tflite
        delegation, records = lower(converted, example, out_path)
        names_saved = strip_tensor_names(out_path) if target == "tflite" else 0  # after the records read the names
    except MobilecError:
        raise
    except Exception as exc:
        raise ExportError(f"{target}: lowering the binary model failed: {type(exc).__name__}: {first_line(exc)}",
                          hint="report this with the model; the other target may still work") from exc
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - t0
    diff, session_notes = smoke_check(out_path, target, example, model)
    size = out_path.stat().st_size
    layers, problems = layer_bits(model, records)
    layers = _adjust_layers(model, layers)
    problems += check_layers(layers, model, file_size=size)
    fixed = [m for m in model.modules() if isinstance(m, (*BINARY_TYPES, PrunedQuantLinear))
             and m._buffers.get("out_qparams") is not None]
    rounded = [m for m in model.modules() if isinstance(m, (*BINARY_TYPES, PrunedQuantLinear))
               and m._buffers.get("out_qparams") is not None and float(m.out_qparams[2]) > 0]
    rounded += [m for m in model.modules() if has_output_rounding(m)]
    notes = [NO_XNOR_NOTE, *storage_notes(model), *session_notes]
    if names_saved:
        notes.append(names_note(names_saved))
    notes.append(f"binary inputs: sign(x - t) as clamp((x - t)*2^100 + 1, -1, 1) quantized at scale 1/127 (int8 +-127); "
                 f"{len(fixed)} layer output grid(s) fixed by the pass, {len(rounded)} of them rounded in the eager model too"
                 + ("" if fixed else " (none: activation ranges calibrated here; binary inputs may flip)"))
    if layers:
        notes.append(summarize(layers, size))
    notes += [f"layer table: {p}" for p in problems]
    if delegation.get("not_delegated"):
        notes.append("ops outside the XNNPACK delegate: " + ", ".join(f"{k} x{v}" for k, v in delegation["not_delegated"].items()))
    notes.append(f"exported in {seconds:.1f} s; example input max |artifact - eager binary model| = {diff:.3g}")
    return Artifact(target=target, path=out_path, size_bytes=size, layers=layers, delegation=delegation, notes=notes,
                    reference=model, reference_name="eager binary model")


__all__ = [
    "BinaryLowering",
    "LoweredSign",
    "align_thresholds",
    "lower_binary",
    "make_quantizer",
    "quantize_binary",
    "storage_notes",
    "to_lowerable",
]
