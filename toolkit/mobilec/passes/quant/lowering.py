"""DuQ → integer artifacts: the trained fake-quant model becomes int8 kernels with the same numerics.

The re-parameterisation (per quantized layer, after :func:`~.qmodules.fold_batchnorm`):

- input: an unsigned DuQ value is ``(c/a)·FQ(x)`` with ``FQ`` the affine int8 quantizer of
  ``clamp(x, 0, a)`` with scale ``a/(N-1)`` and zero point -128 (codes 0..N-1 → -128..N-129);
  a signed one is ``(c/a)·FQ`` with scale ``a/n``, zero point 0, codes ``-n..n``; an h-swish
  one quantizes ``x + 3/8`` like an unsigned one, so the -3/8 minimum (and the -3/8 negative
  padding) lands on the zero point.
- weights: the grid ``k·c_w/n`` (``k`` in ``-n..n``) times the folded BN scale ``g`` and the
  input's ``c/a`` gives int8 codes ``k`` with one fp32 scale per output channel.
- bias: ``b − (3/8)·g·ΣW`` (h-swish inputs), a multiple of the accumulator step (the fold
  snapped it there), so the runtime's int32 bias is exact.
- output: a layer whose only consumer is a DuQ quantizer of the same kind is written on that
  quantizer's grid, its clip fused as the conv's output clamp; otherwise it has an int8
  fake-quant (:class:`~.duq.Int8FakeQuant`) in the eager model and the same qparams here.

:func:`build_deploy_module` writes this as explicit ``quantized_decomposed`` quantize/dequantize
ops around fp32 convs — the form PT2E's ``convert_pt2e`` produces — which XNNPACK
(``to_edge_transform_and_lower``) and LiteRT (litert-torch, static QDQ mode) turn into int8
kernels. Ops between layers (residual adds, pooling, h-swish, the squeeze-excite product) stay
fp32 in both the eager model and the artifact.

>>> lower_duq(model, "executorch", (x,), Path("out/model.pte"))     # doctest: +SKIP
Artifact(target='executorch', ...)
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import fx, nn

from mobilec.errors import ExportError, MobilecError
from mobilec.export.base import Artifact, LayerBits
from mobilec.export.tflite_names import names_note, strip_tensor_names
from mobilec.passes.quant.duq import HSWISH_OFFSET, DuQuantizer, Int8FakeQuant
from mobilec.passes.quant.qmodules import QConv2d, QLinear, _pad_value, duq_plan, quant_layers

SUPPORTED_TARGETS = ("executorch", "tflite")
#: Weight code ranges of the dequantize ops: int8 conv/linear weights, and the int4 range (``[-8, 7]``)
#: that XNNPACK's serializer stores packed, two codes a byte (``qcint4``), for a linear with <= 4-bit weights.
INT8_WEIGHTS = (-127, 127)
INT4_WEIGHTS = (-8, 7)


def _qd() -> Any:
    """``torch.ops.quantized_decomposed`` (importing the module registers the ops)."""
    import torch.ao.quantization.fx._decomposed

    return torch.ops.quantized_decomposed


@dataclass(frozen=True)
class ActQ:
    """An int8 activation grid: ``clamp(x + offset, lo, hi)`` then affine int8 with ``scale``/``zero_point``."""

    scale: float
    zero_point: int
    lo: float
    hi: float
    offset: float = 0.0
    bits: int = 8


def _duq_grid(q: DuQuantizer) -> ActQ:
    a = float(q.a().detach())
    k = q.levels
    if q.kind == "signed":
        return ActQ(scale=a / k, zero_point=0, lo=-a, hi=a, bits=q.bits)
    return ActQ(scale=a / k, zero_point=-128, lo=0.0, hi=a, offset=q.offset, bits=q.bits)


def _int8_grid(fq: Int8FakeQuant) -> ActQ:
    scale, zp = fq.qparams()
    return ActQ(scale=scale, zero_point=zp, lo=-math.inf, hi=math.inf)


class _DeployLayer(nn.Module):
    """Common forward pieces: input q/dq, int8 weight dequantization, output clamp + q/dq."""

    def __init__(self, *, in_q: ActQ | None, out_q: ActQ, clamp: tuple[float, float] | None, codes: torch.Tensor,
                 scales: torch.Tensor, bias: torch.Tensor, fold_weights: bool, w_range: tuple[int, int] = INT8_WEIGHTS,
                 delegate_friendly: bool = False) -> None:
        super().__init__()
        self.in_q, self.out_q, self.clamp = in_q, out_q, clamp
        self.fold_weights = fold_weights
        self.w_min, self.w_max = w_range
        self.round_in_fp32 = not fold_weights
        #: the input quantized in fp32 clips in codes and is passed on as its codes (scale 1): the weights
        #: take its scale (``build_deploy_module``'s ``delegate_friendly``)
        self.codes_input = delegate_friendly and in_q is not None and self.round_in_fp32
        if self.codes_input:
            scales = scales * cast(ActQ, in_q).scale
        self.register_buffer("w_zero_points", torch.zeros(codes.shape[0], dtype=torch.int64))
        self.register_buffer("w_scales", scales.double().float().contiguous())
        if fold_weights:  # int8 constant + dequantize: what convert_pt2e(fold_quantize=True) emits
            self.register_buffer("w_int8", codes.to(torch.int8).contiguous())
        else:  # fp32 weight + quantize/dequantize (litert-torch folds these itself)
            shape = [-1] + [1] * (codes.dim() - 1)
            self.w_float = nn.Parameter((codes.float() * self.w_scales.view(shape)).contiguous(), requires_grad=False)
        self.bias = nn.Parameter(bias.float().contiguous(), requires_grad=False)

    def _weight(self) -> torch.Tensor:
        qd = _qd()
        if self.fold_weights:
            w = self.w_int8
        else:
            w = qd.quantize_per_channel(self.w_float, self.w_scales, self.w_zero_points, 0, self.w_min, self.w_max, torch.int8)
        return qd.dequantize_per_channel(w, self.w_scales, self.w_zero_points, 0, self.w_min, self.w_max, torch.int8)

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        q = self.in_q
        if q is None:
            return x
        qd = _qd()
        if q.offset:
            x = x + q.offset
        clips = math.isfinite(q.lo) or math.isfinite(q.hi)
        if self.codes_input:
            # the clip after the multiply, in codes (as the eager quantizer does it): before it, litert-torch
            # moves it onto the int8 tensor as MINIMUM/MAXIMUM ops, which XNNPACK does not delegate
            x = x * (1.0 / q.scale)
            if clips:
                x = torch.clamp(x, round(q.lo / q.scale), round(q.hi / q.scale))
            x = torch.round(x)
        else:
            if clips:
                x = torch.clamp(x, q.lo, q.hi)
            if self.round_in_fp32:
                # LiteRT would fuse dq -> clamp -> q into an int8 -> int8 QUANTIZE, which XNNPACK runs with
                # an 8-bit multiplier (off by one code near .5); rounding in fp32 first makes the q exact
                x = torch.round(x * (1.0 / q.scale)) * q.scale
        scale = 1.0 if self.codes_input else q.scale
        x = qd.quantize_per_tensor(x, scale, q.zero_point, -128, 127, torch.int8)
        return qd.dequantize_per_tensor(x, scale, q.zero_point, -128, 127, torch.int8)

    def _output(self, y: torch.Tensor) -> torch.Tensor:
        qd = _qd()
        if self.clamp is not None:
            lo, hi = self.clamp
            y = F.relu(y) if lo == 0.0 and not math.isfinite(hi) else F.hardtanh(y, lo, hi)
        q = self.out_q
        y = qd.quantize_per_tensor(y, q.scale, q.zero_point, -128, 127, torch.int8)
        return qd.dequantize_per_tensor(y, q.scale, q.zero_point, -128, 127, torch.int8)


class DeployConv2d(_DeployLayer):
    """A conv; ``pad`` ((left/right, top/bottom) pixels) is a border that was padded with ``-offset`` before
    the input quantizer, here the conv's own zero padding after it: the offset quantizer's code 0, the same
    values (and litert-torch keeps a conv's padding in its NHWC layout; an ``F.pad`` there got transposes)."""

    def __init__(self, layer: QConv2d, *, pad: tuple[int, int] | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.stride, self.padding, self.dilation, self.groups = layer.stride, layer.padding, layer.dilation, layer.groups
        if pad is not None:
            self.padding = (self.padding[0] + pad[1], self.padding[1] + pad[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(self._input(x), self._weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)
        return self._output(y)


class DeployLinear(_DeployLayer):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._output(F.linear(self._input(x), self._weight(), self.bias))


class DeployPointwise(_DeployLayer):
    """A 1×1, stride-1 conv written as a linear over the channels of the (N·H·W, C) map: the same integers.

    LiteRT runs it as FULLY_CONNECTED, whose INT4 weights it executes exactly (its INT4 conv filters do
    not compute the same integers), and litert-torch's NHWC layout absorbs the permutes.
    """

    def __init__(self, *, codes: torch.Tensor, **kw: Any) -> None:
        super().__init__(codes=codes.reshape(codes.shape[0], -1), **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(n * h * w, c)
        y = self._output(F.linear(self._input(rows), self._weight(), self.bias))
        return y.reshape(n, h, w, -1).permute(0, 3, 1, 2)


def is_pointwise(layer: QConv2d | QLinear) -> bool:
    """A conv that is a per-pixel linear map: 1×1 kernel, stride 1, no padding or dilation, one group."""
    return (isinstance(layer, QConv2d) and tuple(layer.kernel_size) == (1, 1) and tuple(layer.stride) == (1, 1)
            and tuple(layer.padding) == (0, 0) and tuple(layer.dilation) == (1, 1) and layer.groups == 1)


@dataclass
class DeployLayerInfo:
    name: str
    op: str
    params: int
    weight_bits: int
    act_bits: int
    act_kind: str
    out_grid: str  # "duq:<consumer>" or "int8"


def _check_ready(model: nn.Module) -> None:
    plan = duq_plan(model)
    if not plan.folded:
        raise MobilecError("the DuQ model's BatchNorms are not folded yet",
                           hint="call mobilec.passes.quant.qmodules.fold_batchnorm(model) (the duq/profit passes do)")
    for name, layer in quant_layers(model):
        if not (bool(layer.act_q.enabled) and bool(layer.weight_q.enabled)):
            raise MobilecError(f"layer {name!r} has a disabled quantizer", hint="finish the DuQ schedule before exporting")


@torch.no_grad()
def build_deploy_module(model: fx.GraphModule, *, fold_weights: bool = True, int4_linear: bool = False,
                        pointwise_as_linear: bool = False, keep_conv: Collection[str] = (),
                        delegate_friendly: bool = False,
                        offset_pads_in_conv: bool | None = None) -> tuple[fx.GraphModule, list[DeployLayerInfo]]:
    """The integer form of a folded DuQ model: explicit int8 quantize/dequantize around fp32 convs.

    Run eagerly it computes what the runtime computes; ``torch.export`` of it lowers to int8
    kernels. ``fold_weights`` stores int8 weight constants (ExecuTorch) instead of fp32 weights
    with a quantize op (litert-torch). ``int4_linear`` gives linear layers with <= 4-bit weights the
    int4 code range, which XNNPACK stores packed and runs as its int8-activation x int4-weight GEMM
    (the same numbers: the codes are the same integers). XNNPACK has no such convolution.
    ``pointwise_as_linear`` writes 1×1 stride-1 convs with <= 4-bit weights as linear layers over the
    map's pixels (:class:`DeployPointwise`), so that LiteRT can store and run their weights as INT4;
    the layers named in ``keep_conv`` stay convs. ``delegate_friendly`` (LiteRT) writes the graph so that
    XNNPACK's LiteRT delegate takes all of it, the same integers: a clip written on the consumer's grid
    becomes a fused RELU6/RELU_N1_TO_1 (:func:`_clamp_relabels`); an fp32 re-quantization clips after its
    multiply and passes on its codes (scale 1, the weights take the scale); an h-swish input's -3/8
    border becomes the conv's zero padding after its quantizer (:func:`_offset_pad`). Without it, the
    int8 MINIMUM/MAXIMUM ops and fp32 PADV2 ops it avoids split the delegated graph (mobilenet_v2 W4A4:
    28 partitions, 0.077 ms per image against 0.067; mobilenet_v3_small: 28, 0.139 ms against 0.083;
    ``bench/results/latency.md``). ``offset_pads_in_conv`` (default: ``delegate_friendly``) does the last
    of these alone; ExecuTorch uses it (mobilenet_v3_small .pte: 1.20x → 1.00x the int8 PTQ .pte's time, the same outputs).
    """
    _check_ready(model)
    plan = duq_plan(model)
    dm = copy.deepcopy(model)
    graph = dm.graph
    nodes = {n.name: n for n in graph.nodes}
    layers = dict(quant_layers(dm))
    on_grid = _inputs_on_grid(plan, nodes)
    relabels = _clamp_relabels(plan, layers) if delegate_friendly else {}
    pads_in_conv = delegate_friendly if offset_pads_in_conv is None else offset_pads_in_conv
    infos = []
    for name, lp in plan.layers.items():
        layer = layers[name]
        in_grid = _duq_grid(layer.act_q)
        in_r = relabels.get(lp.fused_from) if lp.fused_from is not None else None
        if in_r is not None:
            in_grid = in_r[1]
        if lp.fused_into is not None:
            cons = layers[lp.fused_into].act_q
            out = _duq_grid(cons)
            lo, hi = out.lo, out.hi
            if lp.act_clamp is not None:
                lo, hi = max(lo, lp.act_clamp[0]), min(hi, lp.act_clamp[1])
            clamp: tuple[float, float] | None = (lo, hi)
            out_desc = f"duq:{lp.fused_into}"
        else:
            fq = dm.get_submodule(cast(str, lp.out_fq))
            assert isinstance(fq, Int8FakeQuant)
            if not bool(fq.observed):
                raise MobilecError(f"the int8 output observer of layer {name!r} never saw data",
                                   hint="calibrate the DuQ model (the duq/profit passes do) before exporting")
            out = _int8_grid(fq)
            clamp = lp.act_clamp
            out_desc = "int8"
        # weights: codes k (−n..n) × per-channel scale |c_w/n · g · c_a/a_a|, sign of g moved into the codes
        codes = layer.weight_q.codes(layer.weight)
        c_w = layer.weight_q.c().detach()
        g_fold = g = cast(torch.Tensor, layer.out_scale)
        # a channel with g = 0 (constant; see QConv2d.attach_bn) stores zero codes at scale g = 1: the
        # runtime's int32 bias step is then the accumulator step the fold snapped its bias to
        dead = (g == 0).view([-1] + [1] * (codes.dim() - 1))
        codes = codes.masked_fill(dead, 0)
        g = torch.where(g == 0, torch.ones_like(g), g)
        s = (c_w / layer.weight_q.levels) * g * (layer.act_q.c().detach() / layer.act_q.a().detach())
        s = s.expand(codes.shape[0])
        sign = torch.where(s < 0, -1, 1)
        codes = codes * sign.view([-1] + [1] * (codes.dim() - 1))
        scales = s.abs()
        scales = torch.where(scales > 0, scales, torch.ones_like(scales))  # an all-zero channel: any scale
        wq = layer.quantized_weight().detach()
        bias = cast(torch.Tensor, layer.bias).detach() - layer.act_q.offset * g_fold * wq.reshape(wq.shape[0], -1).sum(1)
        if in_r is not None:  # the input tensor holds r·x: the weights take 1/r
            scales = scales / in_r[0]
        out_r = relabels.get(name)
        if out_r is not None:  # the output tensor holds r·y, its clip is the fused activation's fixed range
            out = out_r[1]
            clamp = (out.lo, out.hi)
            scales, bias = scales * out_r[0], bias * out_r[0]
        int4 = int4_linear and isinstance(layer, QLinear) and layer.weight_q.bits <= 4
        kw = dict(in_q=None if name in on_grid else in_grid, out_q=out, clamp=clamp, codes=codes,
                  scales=scales, bias=bias, fold_weights=fold_weights, w_range=INT4_WEIGHTS if int4 else INT8_WEIGHTS,
                  delegate_friendly=delegate_friendly)
        deploy: _DeployLayer
        if pointwise_as_linear and is_pointwise(layer) and layer.weight_q.bits <= 4 and name not in keep_conv:
            deploy = DeployPointwise(**kw)
        elif isinstance(layer, QConv2d):
            pad_node = _offset_pad(nodes[lp.node], layer, dm) if pads_in_conv and name not in on_grid else None
            pad = None
            if pad_node is not None:  # the layer reads the unpadded tensor and pads after its quantizer
                pads = [int(v) for v in cast(tuple[int, ...], pad_node.args[1])]
                pad = (pads[0], pads[2])
                nodes[lp.node].replace_input_with(pad_node, cast(fx.Node, pad_node.args[0]))
                graph.erase_node(pad_node)
            deploy = DeployConv2d(layer, pad=pad, **kw)
        else:
            deploy = DeployLinear(**kw)
        parent, _, child = name.rpartition(".")
        setattr(dm.get_submodule(parent) if parent else dm, child, deploy)
        # the folded BN (Identity), the fused activation and the int8 fake-quant are inside the layer now
        for extra in (lp.bn_node, lp.act_node, lp.fq_node):
            if extra is not None:
                n = nodes[extra]
                n.replace_all_uses_with(cast(fx.Node, n.args[0]))
                graph.erase_node(n)
        infos.append(DeployLayerInfo(name=name, op=lp.op, params=layer.weight.numel(), weight_bits=layer.weight_q.bits,
                                     act_bits=layer.act_q.bits, act_kind=layer.act_q.kind, out_grid=out_desc))
    graph.lint()
    dm.delete_all_unused_submodules()
    dm.recompile()
    dm.meta.pop("mobilec_duq", None)
    dm.eval()
    return dm, infos


#: the clips TFLite fuses into a conv or fully connected op: RELU6 (unsigned grids) and RELU_N1_TO_1 (signed)
FUSED_CLIP = {"unsigned": (0.0, 6.0), "signed": (-1.0, 1.0)}


def _clamp_relabels(plan: Any, layers: dict[str, QConv2d | QLinear]) -> dict[str, tuple[float, ActQ]]:
    """``{producer: (r, grid)}`` for the layers whose output is written on its consumer's DuQ grid with the
    grid's full clip: the tensor between them can hold ``r·x`` on ``grid``, the same integer codes at ``r``
    times the scale, with the clip at the fixed range of a fused activation (``r = hi / a``).

    The producer's weights and bias take the factor ``r``, the consumer's weights ``1/r``: the integers
    are unchanged. LiteRT then needs no separate MINIMUM/MAXIMUM op for the clip; those int8 ops are not
    in XNNPACK's delegate and split its graph (mobilenet_v2 W4A4: 43 such ops before).
    """
    out = {}
    for name, lp in plan.layers.items():
        if lp.fused_into is None:
            continue
        q = layers[lp.fused_into].act_q
        fixed = FUSED_CLIP.get(q.kind)
        if fixed is None or q.offset:
            continue
        grid = _duq_grid(q)
        if lp.act_clamp is not None and (lp.act_clamp[0] > grid.lo or lp.act_clamp[1] < grid.hi):
            continue  # a ReLU6 below the clip: the top code is not the grid's
        lo, hi = fixed
        out[name] = (hi / grid.hi, ActQ(scale=hi / q.levels, zero_point=grid.zero_point, lo=lo, hi=hi, bits=grid.bits))
    return out


def _offset_pad(node: fx.Node, layer: QConv2d, gm: fx.GraphModule) -> fx.Node | None:
    """The ``F.pad(x, pads, value=-offset)`` node that is ``node``'s only input path, when the layer's input
    quantizer adds ``offset`` (h-swish negative padding: the pad value is the quantizer's code 0)."""
    arg = node.args[0] if node.args else None
    off = layer.act_q.offset
    if not (off and isinstance(arg, fx.Node) and arg.op == "call_function" and arg.target is F.pad and len(arg.users) == 1):
        return None
    pads = arg.args[1] if len(arg.args) > 1 else None
    symmetric = isinstance(pads, tuple | list) and len(pads) == 4 and pads[0] == pads[1] and pads[2] == pads[3]
    return arg if symmetric and _pad_value(arg, gm) == -off else None


def _inputs_on_grid(plan: Any, nodes: dict[str, fx.Node]) -> set[str]:
    """Layers whose input is directly the producer's output written on their own grid (no q/dq needed)."""
    out = set()
    for name, lp in plan.layers.items():
        if lp.fused_from is None:
            continue
        prod = plan.layers[lp.fused_from]
        tail = prod.act_node or prod.bn_node or prod.node
        arg = nodes[lp.node].args[0]
        if isinstance(arg, fx.Node) and arg.name == tail:
            out.add(name)
    return out


# ----------------------------------------------------------------------------- lowering
def lower_duq(model: nn.Module, target: str, example_inputs: tuple[torch.Tensor, ...], out_path: Path, *,
              smoke: bool = True) -> Artifact:
    """Lower a folded DuQ model to ``target`` (``executorch`` or ``tflite``) at ``out_path`` (written atomically).

    The returned Artifact's ``reference`` is the eager DuQ fake-quant model itself; its
    ``layers`` say, per conv/linear, the bits of information, the container and the arithmetic.
    """
    from mobilec.export import batch1_example

    if target not in SUPPORTED_TARGETS:
        raise MobilecError(f"DuQ lowering supports {', '.join(SUPPORTED_TARGETS)}, not {target!r}",
                           hint="export the DuQ/PROFIT recipes to executorch or tflite (drop this --target)")
    fx_model = cast(fx.GraphModule, model)
    example = batch1_example(example_inputs, target)
    out_path = Path(out_path)
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        if target == "executorch":
            # 1×1 convs stay convs: written as linear layers, XNNPACK adds two transposes around each
            # (v2 W4A4: 42 % smaller, but 2.7x the latency; docs/profit.md "Containers"). The -3/8 borders
            # as conv padding: an fp32 pad op per h-swish depthwise conv less for XNNPACK to run
            deploy, infos = build_deploy_module(fx_model, fold_weights=True, int4_linear=True, offset_pads_in_conv=True)
            art = _lower_executorch(deploy, example, out_path)
        else:
            art, infos = _lower_tflite_pointwise(fx_model, example, out_path)
    finally:
        model.train(was_training)
    records = art.pop("records")
    names_saved = strip_tensor_names(out_path) if target == "tflite" else 0  # after the records read the names
    layers, problems = _layer_bits(infos, records)
    size = out_path.stat().st_size
    notes = list(art.pop("notes"))
    if names_saved:
        notes.append(names_note(names_saved))
    plan = duq_plan(model)
    notes.append(_bits_note(infos, layers, plan.first_last_bits))
    notes += [f"layer table: {p}" for p in problems]
    n_int8 = sum(1 for i in infos if i.out_grid == "int8")
    notes.append(f"{len(infos) - n_int8} layer outputs are written on the next layer's DuQ grid (clip fused into the conv); "
                 f"{n_int8} outputs use the int8 observer the model was trained with; adds, pooling, h-swish and "
                 "squeeze-excite products run in fp32 between int8 layers")
    artifact = Artifact(target=target, path=out_path, size_bytes=size, layers=layers, delegation=art.pop("delegation"),
                        notes=notes, reference=model, reference_name="eager DuQ fake-quant model (BN folded)")
    if smoke:
        from mobilec.export import smoke_check

        diff, session_notes = smoke_check(out_path, target, example, model)
        artifact.notes += session_notes
        artifact.notes.append(f"lowered in {time.perf_counter() - t0:.1f} s; example input max |artifact - eager DuQ| = {diff:.3g}")
    return artifact


def _lower_tflite_pointwise(model: fx.GraphModule, example: torch.Tensor, out_path: Path) -> tuple[dict[str, Any], list[DeployLayerInfo]]:
    """LiteRT, choosing between the <= 4-bit 1×1 convs as CONV_2D (int8 filters) and as FULLY_CONNECTED
    (INT4 filters, the same integers; :class:`DeployPointwise`).

    Both forms are converted. The FULLY_CONNECTED form is kept when it is smaller and litert-torch's NHWC
    layout absorbed the permutes: at most one TRANSPOSE op more than the conv form per 10 rewritten layers
    (mobilenet_v2 W4A4: 1 more for 20 layers, 38 % smaller with names, 0.064 against 0.060 ms per image on
    the host in a diagnostic run; mobilenet_v3_small: 33 more for 21, 8 % smaller: its convs stay). The
    layout pass has also failed outright on some graphs (a squeeze-excite product of a conv output into the
    linear form), so on a conversion error the form is tried again with those layers as convs.
    """
    import os

    # hidden ``.NAME.part`` names: what a killed run leaves is removed by checkpoint.remove_stale_parts
    conv_path = out_path.with_name(f".{out_path.name}.conv.part")
    fc_path = out_path.with_name(f".{out_path.name}.fc.part")
    try:
        deploy, infos = build_deploy_module(model, fold_weights=False, delegate_friendly=True)
        conv_art = _lower_tflite(deploy, example, conv_path)
        fc = _convert_pointwise_form(model, example, fc_path)
        chosen, note = conv_art, None
        if fc is not None:
            fc_art, fc_infos, rewritten, note = fc
            # the op counts _lower_tflite read from each file (no second interpreter per file)
            added = fc_art["delegation"]["ops"].get("TRANSPOSE", 0) - conv_art["delegation"]["ops"].get("TRANSPOSE", 0)
            sizes = f"{fc_path.stat().st_size:,} B against {conv_path.stat().st_size:,} B as CONV_2D"
            if fc_path.stat().st_size < conv_path.stat().st_size and added <= max(1, rewritten // 10):
                chosen, infos = fc_art, fc_infos
                fc_art["notes"].append(f"{rewritten} 1x1 stride-1 convs with <= 4-bit weights run as FULLY_CONNECTED over "
                                       f"the map's pixels, with INT4 filters: {sizes} (names included), {added} "
                                       "TRANSPOSE op(s) added")
            else:
                conv_art["notes"].append(f"1x1 convs kept as CONV_2D (int8 filters): as FULLY_CONNECTED with INT4 filters "
                                         f"the file would be {sizes} (names included), but litert-torch added {added} TRANSPOSE ops "
                                         f"for {rewritten} layers (latency)")
        if note:
            chosen["notes"].append(note)
        os.replace(fc_path if chosen is not conv_art else conv_path, out_path)
        return chosen, infos
    finally:
        conv_path.unlink(missing_ok=True)
        fc_path.unlink(missing_ok=True)


def _convert_pointwise_form(model: fx.GraphModule, example: torch.Tensor,
                            path: Path) -> tuple[dict[str, Any], list[DeployLayerInfo], int, str | None] | None:
    """The FULLY_CONNECTED form at ``path``: (artifact dict, layer infos, layers rewritten, note), or None when no
    layer qualifies or litert-torch cannot convert it even with the gated layers kept as convs."""
    deploy, infos = build_deploy_module(model, fold_weights=False, pointwise_as_linear=True, delegate_friendly=True)
    rewritten = [n for n, m in deploy.named_modules() if isinstance(m, DeployPointwise)]
    if not rewritten:
        return None
    try:
        return _lower_tflite(deploy, example, path), infos, len(rewritten), None
    except ExportError as exc:
        error = str(exc).split(" (fix:")[0]
    gated = _gated_pointwise(deploy, rewritten)
    if not gated or len(gated) == len(rewritten):
        return None
    deploy, infos = build_deploy_module(model, fold_weights=False, pointwise_as_linear=True, keep_conv=gated,
                                        delegate_friendly=True)
    try:
        art = _lower_tflite(deploy, example, path)
    except ExportError:
        return None
    note = (f"{len(gated)} of {len(rewritten)} 1x1 convs kept as CONV_2D after litert-torch failed on their "
            f"FULLY_CONNECTED form ({error[:200]}): {', '.join(sorted(gated))}")
    return art, infos, len(rewritten) - len(gated), note


def _gated_pointwise(deploy: fx.GraphModule, rewritten: list[str]) -> set[str]:
    """The rewritten 1×1 convs whose input is a product with another layer's output (a squeeze-excite gate
    applied to a conv output): the pattern litert-torch's layout pass failed on."""
    layers = {n for n, m in deploy.named_modules() if isinstance(m, _DeployLayer)}
    out = set()
    for node in deploy.graph.nodes:
        if node.op != "call_module" or node.target not in rewritten or not node.args:
            continue
        arg = node.args[0]
        if (isinstance(arg, fx.Node) and arg.op == "call_function" and getattr(arg.target, "__name__", "") == "mul"
                and any(isinstance(a, fx.Node) and a.op == "call_module" and a.target in layers for a in arg.args)):
            out.add(str(node.target))
    return out


def _lower_executorch(deploy: nn.Module, example: torch.Tensor, out_path: Path) -> dict[str, Any]:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from mobilec.export import torch_export
    from mobilec.export.executorch import delegation_report
    from mobilec.export.layers import pte_records
    from mobilec.io import atomic_path

    ep = torch_export(deploy, example, "executorch")
    _duplicate_shared_dequants(ep.graph_module)
    try:
        edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
        lowered = edge.exported_program()
        delegation = delegation_report(lowered.graph_module)
        records = pte_records(lowered)
        program = edge.to_executorch()
    except Exception as exc:
        raise ExportError(f"executorch: XNNPACK lowering of the DuQ model failed: {type(exc).__name__}: {str(exc)[:300]}",
                          hint="report this with the model; export to tflite meanwhile") from exc
    with atomic_path(out_path) as tmp:
        tmp.write_bytes(program.buffer)
    notes = []
    if delegation["not_delegated"]:
        ops = ", ".join(f"{k} x{v}" for k, v in delegation["not_delegated"].items())
        notes.append(f"ops left on ExecuTorch portable kernels: {ops}")
    return {"records": records, "delegation": delegation, "notes": notes}


def _duplicate_shared_dequants(gm: fx.GraphModule) -> None:
    """Give every user of a per-tensor dequantize its own copy (what PT2E's DuplicateDQPass does).

    XNNPACK's partitioner marks a dequantize as part of a quantized op's pattern; a shared one
    would then make its other (fp32) users read int8 data.
    """
    dq = _qd().dequantize_per_tensor.default
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is dq and len(node.users) > 1:
            for user in list(node.users)[1:]:
                with graph.inserting_after(node):
                    copy_ = graph.node_copy(node)
                user.replace_input_with(node, copy_)
    gm.recompile()


def _lower_tflite(deploy: nn.Module, example: torch.Tensor, out_path: Path) -> dict[str, Any]:
    import litert_torch
    from litert_torch.quantize import pt2e_quantizer, quant_config

    from mobilec.export.layers import tflite_records
    from mobilec.export.tflite import tflite_ops_and_partitions
    from mobilec.export.tflite_int4 import pack_int4_weights
    from mobilec.io import atomic_path

    # the quantizer object only selects the converter's static QDQ mode; the qparams are already in the graph
    cfg = quant_config.QuantConfig(pt2e_quantizer=pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)))
    try:
        edge = litert_torch.convert(deploy, (example,), quant_config=cfg)
    except Exception as exc:
        raise ExportError(f"tflite: litert-torch conversion of the DuQ model failed: {type(exc).__name__}: {str(exc)[:300]}",
                          hint="report this with the model; export to executorch meanwhile") from exc
    with atomic_path(out_path) as tmp:
        edge.export(str(tmp))
        n_int4 = pack_int4_weights(tmp, tmp)
    records = tflite_records(out_path)
    ops, partitions = tflite_ops_and_partitions(out_path)
    notes = ["LiteRT ops: " + ", ".join(f"{k} x{v}" for k, v in sorted(ops.items()))
             + f"; the XNNPACK delegate takes them in {partitions} partition(s)"]
    if n_int4:
        counts = ", ".join(f"{n} {op}" for op, n in n_int4.items())
        notes.append(f"INT4 weights: {counts} filter(s) with codes in [-8, 7] stored as INT4 (the same integer codes, "
                     "executed with int8 activations); convolution filters stay INT8 (INT4 conv filters "
                     "ran but did not compute the same integers: mobilec/export/tflite_int4.py)")
    delegation = {"backend": "LiteRT builtin kernels (XNNPACK delegate at run time)", "ops": ops,
                  "xnnpack_partitions": partitions}
    return {"records": records, "delegation": delegation, "notes": notes}


def _layer_bits(infos: list[DeployLayerInfo], records: list[Any]) -> tuple[list[LayerBits], list[str]]:
    """Match the artifact's weight records to the quantized layers (by name, else by size in graph order)
    and check that each stored weight really sits on its DuQ grid (integer codes within ±(2**(b-1) - 1))."""
    import numpy as np

    problems: list[str] = []
    taken: dict[str, Any] = {}
    left = []
    for rec in records:
        match = next((i for i in infos if i.name == rec.name_hint and i.name not in taken and i.params == rec.numel), None)
        if match is not None:
            taken[match.name] = rec
        else:
            left.append(rec)
    for rec in left:
        match = next((i for i in infos if i.name not in taken and i.params == rec.numel), None)
        if match is None:
            problems.append(f"artifact weight of shape {tuple(rec.weight.shape)} matches no quantized layer")
        else:
            taken[match.name] = rec
    table = []
    for info in infos:
        rec = taken.get(info.name)
        if rec is None:
            problems.append(f"layer {info.name} was not found in the artifact")
            continue
        w = np.asarray(rec.weight)
        if w.dtype.kind not in "iu":
            problems.append(f"layer {info.name}: the artifact stores {rec.stored} weights, not integer codes")
        elif int(np.abs(w.astype(np.int64)).max(initial=0)) > 2 ** (info.weight_bits - 1) - 1:
            problems.append(f"layer {info.name}: stored codes exceed the {info.weight_bits}-bit grid")
        table.append(LayerBits(
            name=info.name, kind=info.op, params=info.params, info_bits=float(info.weight_bits), stored=rec.stored,
            executed=rec.executed, stored_bytes=rec.weight_bytes + rec.aux_bytes,
            packed_bytes=math.ceil(info.params * info.weight_bits / 8) + rec.aux_bytes,
        ))
        if rec.executed != "int8":
            problems.append(f"layer {info.name} executes {rec.executed}, not int8")
    return table, problems


def _bits_note(infos: list[DeployLayerInfo], layers: list[LayerBits], first_last: int | None) -> str:
    w = sorted({i.weight_bits for i in infos})
    a = sorted({i.act_bits for i in infos})
    packed = sum(math.ceil(i.params * i.weight_bits / 8) for i in infos)
    stored: dict[str, int] = {}
    for layer in layers:
        stored[layer.stored] = stored.get(layer.stored, 0) + 1
    containers = ", ".join(f"{n} layer{'s' * (n > 1)} as {k} codes" for k, n in sorted(stored.items()))
    executed = "/".join(sorted({layer.executed for layer in layers})) or "int8"
    return (f"DuQ grids: weights {'/'.join(map(str, w))} bits, activations {'/'.join(map(str, a))} bits"
            + (f" (first/last layers {first_last} bits)" if first_last else "")
            + f"; stored: {containers}; executed {executed}; weights bit-packed would take {packed} bytes")


def deploy_info(model: nn.Module) -> dict[str, Any]:
    """What the exporters need to know about a DuQ model (for ``ctx.extras['duq']``)."""
    plan = duq_plan(model)
    return {
        "lowering": "mobilec.passes.quant.lowering.lower_duq",
        "targets": list(SUPPORTED_TARGETS),
        "weight_bits": plan.weight_bits,
        "act_bits": plan.act_bits,
        "first_last_bits": plan.first_last_bits,
        "per_channel_weights": plan.per_channel,
        "offset": HSWISH_OFFSET,
        "layers": {name: {"op": lp.op, "act_kind": lp.act_kind, "role": lp.role,
                          "output": f"duq:{lp.fused_into}" if lp.fused_into else "int8"} for name, lp in plan.layers.items()},
    }
