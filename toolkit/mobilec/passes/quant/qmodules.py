"""Quantized conv/linear wrappers and the conversion of a float model into a DuQ model.

:func:`convert_to_duq` traces the model with ``torch.fx``, replaces every selected ``Conv2d``
and ``Linear`` by :class:`QConv2d` / :class:`QLinear` (DuQ input and weight quantizers, same
module names), chooses each input quantizer's kind from the activation that feeds the layer,
and inserts an :class:`~mobilec.passes.quant.duq.Int8FakeQuant` on each layer output that an
int8 runtime must store but that no DuQ quantizer defines (see ``lowering.py``). The plan of
the conversion (per layer: kinds, fused BN/activation, where the output's int8 parameters
come from) lives in ``gm.meta["mobilec_duq"]`` and survives ``copy.deepcopy``.

>>> from mobilec.models.zoo import mobilenet_v2
>>> qm = convert_to_duq(mobilenet_v2(), weight_bits=4, act_bits=4)
>>> duq_plan(qm).layers["features.1.conv.0.0"].act_kind
'unsigned'
"""

from __future__ import annotations

import copy
import operator
import warnings
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import fx, nn

from mobilec.errors import MobilecError
from mobilec.passes.quant.duq import HSWISH_OFFSET, DuQuantizer, Int8FakeQuant, check_bits

META_KEY = "mobilec_duq"
INT8_CONTAINER = "duq_int8"


# ----------------------------------------------------------------------------- modules
class _QLayer(nn.Module):
    """Shared parts of :class:`QConv2d` / :class:`QLinear`."""

    weight: nn.Parameter
    bias: nn.Parameter | None
    act_q: DuQuantizer
    weight_q: DuQuantizer
    out_scale: torch.Tensor | None

    def _init_quant(self, act_kind: str, act_bits: int, weight_bits: int, per_channel: bool, act_cap: float | None) -> None:
        out = self.weight.shape[0]
        self.act_q = DuQuantizer(act_kind, act_bits)
        self.weight_q = DuQuantizer("signed", weight_bits, channels=out if per_channel else None, ch_axis=0)
        self.act_cap = act_cap
        self.register_buffer("out_scale", None)  # per-output-channel BN scale once BN is folded in
        # BatchNorm folded in for training (see fold_batchnorm(trainable=True)): gamma/beta learn, statistics frozen
        self.register_parameter("bn_weight", None)
        self.register_parameter("bn_bias", None)
        self.register_buffer("bn_mean", None)
        self.register_buffer("bn_var", None)
        self.register_buffer("bn_const", None)  # channels whose integer accumulator is constant: scale 0
        self.bn_eps = 1e-5
        self.train_folded = False  # forward = folded BN with the bias on the accumulator grid, as exported
        self.keep_qinput = False  # AIWQ asks for the quantized input of the current step
        self._qin: torch.Tensor | None = None
        #: (W_q, g, b) of the current training step, computed for all layers at once (``batched.py``)
        self._pre: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None] | None = None

    @property
    def folded(self) -> bool:
        return self.out_scale is not None

    @torch.no_grad()
    def attach_bn(self, bn: nn.BatchNorm1d | nn.BatchNorm2d) -> int:
        """Take over ``bn`` (its module is then replaced by Identity): gamma/beta stay learnable, the
        running statistics are frozen. Returns the number of constant channels.

        A channel whose conv output has a standard deviation below half a unit of the integer
        accumulator (e.g. its input is a dead ReLU channel) computes a constant in integer
        arithmetic; BatchNorm would scale it by gamma/sqrt(eps), which only coarsens the int32
        bias grid (step input_step·weight_step·scale). Its scale becomes 0 and its output the
        constant beta, which is what BatchNorm gives on the data it saw.
        """
        out = self.weight.shape[0]
        gamma = bn.weight.detach().clone() if bn.weight is not None else torch.ones(out)
        beta = bn.bias.detach().clone() if bn.bias is not None else torch.zeros(out)
        if bn.weight is not None:
            self.bn_weight = nn.Parameter(gamma)
            self.bn_bias = nn.Parameter(beta)
        else:  # affine=False: nothing to learn
            self.bn_weight, self.bn_bias = gamma, beta
        assert bn.running_mean is not None and bn.running_var is not None
        self.bn_mean = bn.running_mean.detach().clone()
        self.bn_var = bn.running_var.detach().clone()
        self.bn_eps = float(bn.eps)
        unit = (self.act_q.c() / self.act_q.levels * self.weight_q.c() / self.weight_q.levels).detach()
        self.bn_const = self.bn_var.clamp_min(0).sqrt() < 0.5 * unit.expand(out)
        self.train_folded = True
        return int(self.bn_const.sum())

    def folded_scale_bias(self, wq: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-channel output scale ``g`` and the bias on the integer accumulator grid (straight-through).

        ``g = gamma/sqrt(var + eps)`` (0 on constant channels), ``b = beta + g·(bias - mean)``, then
        ``b`` snapped to multiples of the accumulator step (input step × weight step × |g|; × 1 where
        g = 0), the h-swish offset's share ``(3/8)·g·ΣW_q`` kept exact. The export uses these values.
        """
        return folded_scales_biases([self], [wq])[0]

    @torch.no_grad()
    def freeze_fold(self) -> None:
        """Fix the folded scale and snapped bias as buffers/constants (what the lowering reads)."""
        g, b = self.folded_scale_bias()
        self.out_scale = g.detach().clone()
        self.bias = nn.Parameter(b.detach().clone(), requires_grad=False)
        self.bn_weight = self.bn_bias = None
        self.bn_mean = self.bn_var = self.bn_const = None
        self.train_folded = False

    def _affine(self, y: torch.Tensor, wq: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        if self.train_folded:
            pre = getattr(self, "_pre", None)
            g, b = (pre[1], pre[2]) if pre is not None and pre[1] is not None else self.folded_scale_bias(wq)
            assert g is not None and b is not None
            return y * g.view(shape) + b.view(shape)
        if self.out_scale is not None:
            y = y * self.out_scale.view(shape)
        if self.bias is not None:
            y = y + self.bias.view(shape)
        return y

    def quantized_weight(self) -> torch.Tensor:
        return self.weight_q(self.weight)

    def _step_weight(self) -> torch.Tensor:
        """The quantized weight of this forward: precomputed for the whole model in training, else computed here."""
        pre = getattr(self, "_pre", None)  # models pickled before the attribute existed lack it
        return pre[0] if pre is not None else self.quantized_weight()

    def _quant_input(self, x: torch.Tensor) -> torch.Tensor:
        xq = self.act_q(x)
        if self.keep_qinput:
            self._qin = xq.detach()
        return xq


class QConv2d(_QLayer):
    """``Conv2d`` with a DuQ quantizer on its input and on its weight.

    After :func:`fold_batchnorm` the layer also applies the folded BatchNorm
    (``out_scale``·conv + bias, the bias on the integer accumulator grid).
    """

    def __init__(self, conv: nn.Conv2d, act_kind: str, act_bits: int, weight_bits: int, *,
                 per_channel: bool = False, act_cap: float | None = None) -> None:
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise MobilecError(f"conv with padding={conv.padding!r}, padding_mode={conv.padding_mode!r} is not supported by DuQ",
                               hint="use numeric zero padding (or an explicit F.pad before the conv)")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride = conv.kernel_size, conv.stride
        self.padding, self.dilation, self.groups = cast(tuple[int, ...], conv.padding), conv.dilation, conv.groups
        self.weight = conv.weight
        self.bias = conv.bias
        self._init_quant(act_kind, act_bits, weight_bits, per_channel, act_cap)

    def conv(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w, None, self.stride, self.padding, self.dilation, self.groups)

    op = conv  #: the layer's product without bias (what AIWQ re-runs with the previous weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wq = self._step_weight()
        return self._affine(self.conv(self._quant_input(x), wq), wq, (1, -1, 1, 1))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}, folded={self.folded}")


class QLinear(_QLayer):
    """``Linear`` with a DuQ quantizer on its input and on its weight."""

    def __init__(self, linear: nn.Linear, act_kind: str, act_bits: int, weight_bits: int, *,
                 per_channel: bool = False, act_cap: float | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        #: a Linear that stands for a 1×1 conv on a 1×1 map (zoo squeeze-excite): AIWQ measures it like a conv
        self.conv1x1 = bool(getattr(linear, "conv1x1", False))
        self._init_quant(act_kind, act_bits, weight_bits, per_channel, act_cap)

    def op(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.linear(x, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wq = self._step_weight()
        return self._affine(self.op(self._quant_input(x), wq), wq, (1, -1))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, folded={self.folded}"


# ----------------------------------------------------------------------------- the plan
@dataclass
class LayerPlan:
    """How one quantized layer sits in the graph (fx node names survive deepcopy)."""

    name: str
    op: str  # conv2d | depthwise_conv2d | linear
    node: str
    act_kind: str
    act_source: str  # what produces the layer input, e.g. "ReLU6 features.0.2", "input", "add"
    act_cap: float | None = None
    bn_node: str | None = None  # BatchNorm folded into this layer
    act_node: str | None = None  # ReLU/ReLU6/hardtanh fused into this layer's output
    act_clamp: tuple[float, float] | None = None
    out_fq: str | None = None  # Int8FakeQuant module path on the output
    fq_node: str | None = None
    fused_into: str | None = None  # the output uses this consumer's input quantizer grid
    fused_from: str | None = None  # this layer's input is already on its grid (producer fused)
    role: str = "body"  # first | last | first+last | body
    high_bit_input: bool = False  # the input keeps first_last_bits (``high_bit_inputs``; the schedule leaves it)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class DuQPlan:
    layers: dict[str, LayerPlan] = field(default_factory=dict)
    weight_bits: int = 4
    act_bits: int = 4
    first_last_bits: int | None = None
    per_channel: bool = False
    folded: bool = False
    constant_channels: dict[str, int] = field(default_factory=dict)  # per layer, see QConv2d.attach_bn
    tie_nudged_channels: dict[str, list[int]] = field(default_factory=dict)  # per layer, see break_rounding_ties
    notes: list[str] = field(default_factory=list)


def duq_plan(model: nn.Module) -> DuQPlan:
    """The conversion plan of a DuQ model; MobilecError for any other model."""
    meta = getattr(model, "meta", None)
    plan = meta.get(META_KEY) if isinstance(meta, dict) else None
    if not isinstance(plan, DuQPlan):
        raise MobilecError(f"{type(model).__name__} is not a DuQ model (no {META_KEY} plan)",
                           hint="run the duq or profit pass first (recipes duq4bit, profit4bit, ...)")
    return plan


def is_duq_model(model: nn.Module) -> bool:
    meta = getattr(model, "meta", None)
    return isinstance(meta, dict) and isinstance(meta.get(META_KEY), DuQPlan)


def quant_layers(model: nn.Module) -> Iterator[tuple[str, QConv2d | QLinear]]:
    for name, mod in model.named_modules():
        if isinstance(mod, QConv2d | QLinear):
            yield name, mod


def int8_quantizers(model: nn.Module) -> Iterator[tuple[str, Int8FakeQuant]]:
    for name, mod in model.named_modules():
        if isinstance(mod, Int8FakeQuant):
            yield name, mod


# ----------------------------------------------------------------------------- graph analysis
_RELU_FNS = {F.relu, torch.relu, torch.relu_, F.relu_}
_UNKNOWN_ACT_NAMES = {
    "gelu", "silu", "sigmoid", "tanh", "leaky_relu", "leaky_relu_", "elu", "elu_", "selu", "celu", "prelu", "mish",
    "softplus", "hardsigmoid", "softmax", "log_softmax", "logsigmoid", "hardshrink", "softshrink", "softsign",
    "tanhshrink", "threshold", "glu", "rrelu", "sigmoid_", "tanh_",
}
_SHAPE_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.Identity, nn.Flatten, nn.Unflatten)
_POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                 nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)
_SHAPE_FNS = {torch.flatten, torch.reshape, F.dropout, torch.squeeze, torch.unsqueeze, torch.permute, torch.transpose,
              operator.getitem, torch.clone}
_POOL_FNS = {F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
             F.adaptive_max_pool2d, torch.mean}
_SHAPE_METHODS = {"view", "reshape", "flatten", "contiguous", "clone", "permute", "transpose", "squeeze", "unsqueeze"}
_POOL_METHODS = {"mean"}
_MUL_FNS = {operator.mul, torch.mul}


def _arg(node: fx.Node, idx: int, name: str, default: Any = None) -> Any:
    if len(node.args) > idx:
        return node.args[idx]
    return node.kwargs.get(name, default)


def _clamp_of(node: fx.Node, gm: fx.GraphModule) -> tuple[float, float] | None:
    """(lo, hi) if ``node`` is a ReLU / ReLU6 / hardtanh / clamp a conv output can fuse."""
    if node.op == "call_module":
        mod = gm.get_submodule(cast(str, node.target))
        if type(mod) is nn.ReLU:
            return (0.0, float("inf"))
        if type(mod) is nn.ReLU6:
            return (0.0, 6.0)
        if type(mod) is nn.Hardtanh:
            return (float(mod.min_val), float(mod.max_val))
        return None
    if node.op == "call_function":
        if node.target in _RELU_FNS:
            return (0.0, float("inf"))
        if node.target is F.relu6:
            return (0.0, 6.0)
        if node.target in (F.hardtanh, F.hardtanh_):
            return (float(_arg(node, 1, "min_val", -1.0)), float(_arg(node, 2, "max_val", 1.0)))
        if node.target in (torch.clamp, torch.clip):
            lo, hi = _arg(node, 1, "min"), _arg(node, 2, "max")
            if isinstance(lo, int | float) and (hi is None or isinstance(hi, int | float)):
                return (float(lo), float("inf") if hi is None else float(hi))
        return None
    if node.op == "call_method":
        if node.target in ("relu", "relu_"):
            return (0.0, float("inf"))
        if node.target in ("clamp", "clip", "clamp_", "clip_"):
            lo, hi = _arg(node, 1, "min"), _arg(node, 2, "max")
            if isinstance(lo, int | float) and (hi is None or isinstance(hi, int | float)):
                return (float(lo), float("inf") if hi is None else float(hi))
    return None


def _is_hswish(node: fx.Node, gm: fx.GraphModule) -> bool:
    if node.op == "call_module":
        return type(gm.get_submodule(cast(str, node.target))) is nn.Hardswish
    return node.op == "call_function" and node.target in (F.hardswish,)


def _is_gate(node: fx.Node, gm: fx.GraphModule) -> bool:
    """A [0, 1] gate (hard-sigmoid / sigmoid), as in squeeze-excite, possibly reshaped (``s.view(N, C, 1, 1)``)."""
    while _passthrough(node, gm) == "shape" and node.args and isinstance(node.args[0], fx.Node):
        node = node.args[0]
    if node.op == "call_module":
        return type(gm.get_submodule(cast(str, node.target))) in (nn.Hardsigmoid, nn.Sigmoid)
    if node.op == "call_function":
        return node.target in (F.hardsigmoid, torch.sigmoid, F.sigmoid)
    return node.op == "call_method" and node.target == "sigmoid"


def _unknown_activation(node: fx.Node, gm: fx.GraphModule) -> str | None:
    if node.op == "call_module":
        mod = gm.get_submodule(cast(str, node.target))
        if type(mod).__module__ == "torch.nn.modules.activation" and type(mod) not in (
                nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Hardswish):
            return type(mod).__name__
        return None
    name = getattr(node.target, "__name__", node.target) if node.op == "call_function" else node.target
    if node.op in ("call_function", "call_method") and isinstance(name, str) and name in _UNKNOWN_ACT_NAMES:
        return name
    return None


def _describe(node: fx.Node, gm: fx.GraphModule) -> str:
    if node.op == "call_module":
        return f"{type(gm.get_submodule(cast(str, node.target))).__name__} {node.target}"
    if node.op == "placeholder":
        return "input"
    return getattr(node.target, "__name__", str(node.target))


def _passthrough(node: fx.Node, gm: fx.GraphModule) -> str | None:
    """'shape' for value-preserving ops, 'pool' for averaging ops, 'pad' for constant pads, else None."""
    if node.op == "call_module":
        mod = gm.get_submodule(cast(str, node.target))
        if isinstance(mod, _SHAPE_MODULES):
            return "shape"
        if isinstance(mod, nn.MaxPool1d | nn.MaxPool2d | nn.AdaptiveMaxPool1d | nn.AdaptiveMaxPool2d):
            return "shape"  # max commutes with a monotone quantizer
        if isinstance(mod, _POOL_MODULES):
            return "pool"
        if isinstance(mod, nn.ConstantPad1d | nn.ConstantPad2d | nn.ZeroPad2d):
            return "pad"
        return None
    if node.op == "call_function":
        if node.target in _SHAPE_FNS or node.target in (F.max_pool1d, F.max_pool2d, F.adaptive_max_pool2d):
            return "shape"
        if node.target in _POOL_FNS:
            return "pool"
        if node.target is F.pad:
            return "pad"
        return None
    if node.op == "call_method":
        if node.target in _SHAPE_METHODS:
            return "shape"
        if node.target in _POOL_METHODS:
            return "pool"
    return None


def _pad_value(node: fx.Node, gm: fx.GraphModule) -> float:
    if node.op == "call_module":
        return float(getattr(gm.get_submodule(cast(str, node.target)), "value", 0.0))
    mode = _arg(node, 2, "mode", "constant")
    if mode != "constant":
        return float("nan")
    return float(_arg(node, 3, "value", 0.0) or 0.0)


def _input_kind(node: fx.Node, gm: fx.GraphModule, layer: str) -> tuple[str, str, float | None]:
    """Walk back from a layer's input to the op producing it: (kind, description, cap)."""
    kind_range = {"unsigned": 0.0, "hswish": -HSWISH_OFFSET}
    cur = node
    pads: list[float] = []
    for _ in range(10_000):
        bad = _unknown_activation(cur, gm)
        if bad is not None:
            raise MobilecError(
                f"DuQ has no quantizer for activation {bad} ({_describe(cur, gm)}) feeding layer {layer!r}",
                hint="DuQ knows ReLU, ReLU6/hardtanh(0, x) and Hardswish; change the activation, "
                     f"or add {layer!r} to the pass's ignore list to keep that layer in float",
            )
        clamp = _clamp_of(cur, gm)
        if clamp is not None and clamp[0] >= 0.0:
            kind, cap = "unsigned", (clamp[1] if clamp[1] != float("inf") else None)
            break
        if _is_hswish(cur, gm):
            kind, cap = "hswish", None
            break
        if cur.op == "call_function" and cur.target in _MUL_FNS and len(cur.args) == 2 and all(
                isinstance(a, fx.Node) for a in cur.args):
            a0, a1 = cast(tuple[fx.Node, fx.Node], cur.args)
            other = a1 if _is_gate(a0, gm) else a0 if _is_gate(a1, gm) else None
            if other is not None:  # x · gate, gate in [0, 1]: the product keeps x's range
                cur = other
                continue
        role = _passthrough(cur, gm)
        if role is not None and cur.args and isinstance(cur.args[0], fx.Node):
            if role == "pad":
                pads.append(_pad_value(cur, gm))
            cur = cur.args[0]
            continue
        return "signed", _describe(cur, gm), None
    else:  # pragma: no cover - cyclic graphs do not exist in fx
        raise MobilecError(f"cannot trace the input of layer {layer!r}")
    lo = kind_range[kind]
    if any(not (v >= lo) for v in pads):  # a pad value outside the activation's range
        return "signed", f"{_describe(cur, gm)} padded with {pads}", None
    return kind, _describe(cur, gm), cap


def _reaches(node: fx.Node, gm: fx.GraphModule, *, pads_ok: bool) -> list[fx.Node]:
    """Terminal users of ``node`` through shape ops (and zero pads if ``pads_ok``)."""
    out: list[fx.Node] = []
    for user in node.users:
        role = _passthrough(user, gm)
        through = role == "shape" or (pads_ok and role == "pad" and _pad_value(user, gm) == 0.0)
        if through and user.args and user.args[0] is node:
            out.extend(_reaches(user, gm, pads_ok=pads_ok))
            continue
        out.append(user)
    return out


def _is_bn(node: fx.Node, gm: fx.GraphModule) -> bool:
    return node.op == "call_module" and isinstance(gm.get_submodule(cast(str, node.target)), nn.BatchNorm1d | nn.BatchNorm2d)


def _set_module(gm: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, child, module)


def _trace(model: nn.Module) -> fx.GraphModule:
    if isinstance(model, fx.GraphModule):
        return model
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:
        msg = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise MobilecError(
            f"DuQ needs a torch.fx-traceable model; tracing {type(model).__name__} failed: {msg}",
            hint="remove data-dependent Python control flow from forward(), or wrap it in a leaf module",
        ) from None
    # A forward() under `from __future__ import annotations` leaves string types on the nodes; the
    # generated code then has a string global that torch.save cannot pickle (no resume checkpoint).
    for node in gm.graph.nodes:
        if isinstance(node.type, str):
            node.type = None
    gm.recompile()
    return gm


# ----------------------------------------------------------------------------- conversion
def convert_to_duq(
    model: nn.Module,
    *,
    weight_bits: int,
    act_bits: int,
    first_last_bits: int | None = 8,
    per_channel: bool = False,
    select: Any = None,
    high_bit_inputs: Collection[str] = (),
) -> fx.GraphModule:
    """A traced copy of ``model`` with DuQ layers and int8 output fake-quants (quantizers uninitialised).

    ``select(name, module) -> bool`` chooses the layers (default: every Conv2d and Linear).
    ``first_last_bits`` is the precision of the first layer(s) (fed by the model input) and the
    last layer(s) (producing the output); None quantizes them like the others.
    ``high_bit_inputs`` names layers whose *input* activation also keeps ``first_last_bits`` (their
    weights keep the body width): mixed precision for sensitive activations, reported per layer.
    """

    check_bits(weight_bits, "weight_bits")
    check_bits(act_bits, "act_bits")
    if first_last_bits is not None:
        check_bits(first_last_bits, "first_last_bits")
    gm = _trace(copy.deepcopy(model))
    graph = gm.graph
    plan = DuQPlan(weight_bits=weight_bits, act_bits=act_bits, first_last_bits=first_last_bits, per_channel=per_channel)

    # 1. choose the layers and their input kinds
    chosen: list[tuple[fx.Node, str, nn.Module]] = []
    for node in graph.nodes:
        if node.op == "call_function" and node.target in (F.conv2d, F.linear, F.conv1d, F.conv_transpose2d):
            raise MobilecError(f"functional {node.target.__name__} in forward() cannot be quantized by DuQ (node {node.name})",
                               hint="use nn.Conv2d / nn.Linear modules")
        if node.op != "call_module":
            continue
        mod = gm.get_submodule(node.target)
        if type(mod) not in (nn.Conv2d, nn.Linear):
            if isinstance(mod, nn.Conv1d | nn.Conv3d | nn.ConvTranspose1d | nn.ConvTranspose2d | nn.ConvTranspose3d) and (
                    select is None or select(node.target, mod)):
                raise MobilecError(f"DuQ quantizes Conv2d and Linear layers; {node.target!r} is a {type(mod).__name__}",
                                   hint=f"add {node.target!r} to the pass's ignore list to keep it in float")
            continue
        if select is not None and not select(node.target, mod):
            continue
        chosen.append((node, node.target, mod))
    if not chosen:
        raise MobilecError("DuQ found no Conv2d or Linear layer to quantize", hint="check the pass's targets/ignore")

    for node, name, mod in chosen:
        kind, source, cap = _input_kind(node.args[0], gm, name)
        note = ""
        if kind == "hswish" and isinstance(mod, nn.Conv2d) and any(p > 0 for p in cast(tuple[int, ...], mod.padding)):
            kind, note = "signed", "zero-padded conv after h-swish: signed input quantizer (use negative padding for the h-swish grid)"
        op = "linear" if isinstance(mod, nn.Linear) else (
            "depthwise_conv2d" if mod.groups > 1 and mod.groups == mod.in_channels else "conv2d")
        plan.layers[name] = LayerPlan(name=name, op=op, node=node.name, act_kind=kind, act_source=source,
                                      act_cap=cap, note=note)
        if note:
            plan.notes.append(f"{name}: {note}")

    # 2. output tails: a BatchNorm and then a clamp-like activation fuse into the layer
    tails: dict[str, fx.Node] = {}
    for node, name, _ in chosen:
        lp = plan.layers[name]
        tail = node
        if len(tail.users) == 1 and _is_bn(next(iter(tail.users)), gm):
            tail = next(iter(tail.users))
            lp.bn_node = tail.name
        if len(tail.users) == 1:
            nxt = next(iter(tail.users))
            clamp = _clamp_of(nxt, gm)
            if clamp is not None:
                lp.act_node, lp.act_clamp, tail = nxt.name, clamp, nxt
        tails[name] = tail

    # 3. first layers (fed by the model input) and last layers (producing the output)
    for node, name, _ in chosen:
        first = _traces_to_input(node.args[0], gm)
        last = any(u.op == "output" for u in _reaches(tails[name], gm, pads_ok=False))
        plan.layers[name].role = "first+last" if first and last else "first" if first else "last" if last else "body"

    # 4. swap in the quantized modules
    _mark_high_bit_inputs(plan, high_bit_inputs, first_last_bits)
    for _node, name, mod in chosen:
        lp = plan.layers[name]
        bits = first_last_bits if (first_last_bits is not None and lp.role != "body") else None
        a_bits, w_bits = (bits or act_bits), (bits or weight_bits)
        if lp.high_bit_input:
            a_bits = cast(int, first_last_bits)
        cls = QLinear if isinstance(mod, nn.Linear) else QConv2d
        _set_module(gm, name, cls(mod, lp.act_kind, a_bits, w_bits, per_channel=per_channel, act_cap=lp.act_cap))

    # 5. each output is stored on its single DuQ consumer's grid when the kinds agree (through
    #    shape ops and zero pads, which commute with the quantizer), else by an int8 fake-quant
    container = nn.Module()
    gm.add_module(INT8_CONTAINER, container)
    layer_of_node = {plan.layers[n].node: n for n in plan.layers}
    for _node, name, _ in chosen:
        lp = plan.layers[name]
        tail = tails[name]
        consumers = _reaches(tail, gm, pads_ok=True)
        if len(consumers) == 1 and consumers[0].name in layer_of_node:
            cons = plan.layers[layer_of_node[consumers[0].name]]
            if (cons.act_kind == "unsigned" and lp.act_clamp is not None and lp.act_clamp[0] == 0.0) or (
                    cons.act_kind == "signed" and lp.act_clamp is None):
                lp.fused_into, cons.fused_from = cons.name, name
                continue
        key = name.replace(".", "_")
        container.add_module(key, Int8FakeQuant())
        with graph.inserting_after(tail):
            fq = graph.call_module(f"{INT8_CONTAINER}.{key}", (tail,))
        tail.replace_all_uses_with(fq, delete_user_cb=lambda user, fq=fq: user is not fq)
        lp.out_fq, lp.fq_node = f"{INT8_CONTAINER}.{key}", fq.name
    graph.lint()
    gm.recompile()
    gm.meta[META_KEY] = plan
    return gm


def _mark_high_bit_inputs(plan: DuQPlan, names: Collection[str], first_last_bits: int | None) -> None:
    if not names:
        return
    if first_last_bits is None:
        raise MobilecError("high_bit_inputs keep first_last_bits, but first_last_bits is 0 (same as the body)",
                           hint="set first_last_bits (e.g. 8) or leave high_bit_inputs empty")
    body = [n for n, lp in plan.layers.items() if lp.role == "body"]
    names = list(dict.fromkeys(names))  # a name listed twice is one layer
    for name in names:
        if name not in plan.layers:
            raise MobilecError(f"high_bit_inputs: {name!r} is not a quantized Conv2d/Linear layer of the model",
                               hint=f"use a layer name, e.g. {', '.join(body[:4])}")
        if plan.layers[name].role != "body":
            raise MobilecError(f"high_bit_inputs: {name!r} is a {plan.layers[name].role} layer, which already "
                               f"runs at first_last_bits", hint="list body layers only")
        plan.layers[name].high_bit_input = True
    plan.notes.append(f"inputs kept at {first_last_bits} bits (high_bit_inputs): {', '.join(names)}")


def _traces_to_input(node: Any, gm: fx.GraphModule) -> bool:
    cur = node
    while isinstance(cur, fx.Node):
        if cur.op == "placeholder":
            return True
        if _passthrough(cur, gm) is None:
            return False
        cur = cur.args[0] if cur.args else None
    return False


# ----------------------------------------------------------------------------- state helpers
def set_act_bits(model: nn.Module, bits: int, *, include_first_last: bool = False) -> None:
    """Set the activation bit width of every body layer (first/last and ``high_bit_inputs`` keep ``first_last_bits``)."""
    plan = duq_plan(model)
    for name, layer in quant_layers(model):
        if getattr(plan.layers[name], "high_bit_input", False) and not include_first_last:  # (older checkpoints: none)
            continue
        if include_first_last or plan.first_last_bits is None or plan.layers[name].role == "body":
            layer.act_q.bits = bits


def set_weight_bits(model: nn.Module, bits: int, *, include_first_last: bool = False) -> None:
    plan = duq_plan(model)
    for name, layer in quant_layers(model):
        if include_first_last or plan.first_last_bits is None or plan.layers[name].role == "body":
            layer.weight_q.bits = bits


def enable_quantizers(model: nn.Module, *, acts: bool | None = None, weights: bool | None = None) -> None:
    """Switch activation quantizers (and the int8 output fake-quants with them) and weight quantizers."""
    for _, layer in quant_layers(model):
        if acts is not None:
            layer.act_q.enabled.fill_(acts)
        if weights is not None:
            layer.weight_q.enabled.fill_(weights)
    if acts is not None:
        for _, fq in int8_quantizers(model):
            fq.enabled.fill_(acts)


@torch.no_grad()
def init_activation_quantizers(model: nn.Module, batch: torch.Tensor, rule: str = "p95") -> dict[str, float]:
    """DuQ activation init from one batch of float activations (``rule``: DuQ's 95th percentile,
    or ``"mse"`` at each quantizer's current width), then seed the int8 output observers on the
    same batch with the activation quantizers on.

    As in the authors' code the forward runs in train mode (BatchNorm on batch statistics);
    BatchNorm running statistics are restored afterwards. Returns ``{layer: a}``.
    """
    layers = dict(quant_layers(model))
    values: dict[str, float] = {}

    def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], name: str) -> None:
        layer = layers[name]
        values[name] = layer.act_q.init_activation(inp[0], cap=layer.act_cap, rule=rule)

    bn_state = {n: copy.deepcopy(m.state_dict()) for n, m in model.named_modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    hooks = [layer.register_forward_pre_hook(lambda m, inp, name=name: hook(m, inp, name)) for name, layer in layers.items()]
    enable_quantizers(model, acts=False)
    fqs = [fq for _, fq in int8_quantizers(model)]
    was_training = model.training
    try:
        model.train()
        for fq in fqs:
            fq.frozen.fill_(True)  # no observation during the float pass
        model(batch)
        for h in hooks:
            h.remove()
        hooks = []
        enable_quantizers(model, acts=True)
        for fq in fqs:  # observe the int8 intermediates with the activation quantizers on
            fq.observed.fill_(False)
            fq.frozen.fill_(False)
        model(batch)
    finally:
        for h in hooks:
            h.remove()
        for n, st in bn_state.items():
            model.get_submodule(n).load_state_dict(st)
        model.train(was_training)
    return values


@torch.no_grad()
def init_weight_quantizers(model: nn.Module, rule: str = "max") -> None:
    """Weight init for every layer: DuQ's ``a = c = 0.9·max|W|``, or ``"mse"`` at the current width."""
    for _, layer in quant_layers(model):
        layer.weight_q.init_weight(layer.weight, rule=rule)


def quantizer_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in model.named_parameters() if n.endswith(".a_raw") or n.endswith(".c_raw")]


# ----------------------------------------------------------------------------- folding
def accumulator_lsb(layer: QConv2d | QLinear, g: torch.Tensor | None = None) -> torch.Tensor:
    """Per-output-channel value of one unit of the integer accumulator (input step × weight step × |g|).

    ``g`` is the folded BN scale (default: the layer's ``out_scale``, else 1); a channel with g = 0
    (a constant channel, its weights exported as zeros) uses 1, as the lowering does.
    """
    out = layer.weight.shape[0]
    if g is None:
        g = layer.out_scale if layer.out_scale is not None else torch.ones(out)
    return _lsb(_input_weight_step(layer), g).expand(out).clone()


def _input_weight_step(layer: QConv2d | QLinear) -> torch.Tensor:
    """``s_in·s_w``: the input step times the (per-tensor or per-channel) weight step."""
    return layer.act_q.c() / layer.act_q.levels * (layer.weight_q.c() / layer.weight_q.levels)


def _lsb(step: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``|step·g|`` per channel, with 1 for g where g = 0 (constant channels: exported as zeros at scale 1)."""
    gd = g.detach().abs()
    return (step * torch.where(gd > 0, gd, torch.ones_like(gd))).abs().detach()


def folded_scales_biases(layers: list[QConv2d | QLinear], wqs: list[torch.Tensor | None]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The folded scale ``g`` and snapped bias ``b`` of each layer (see :meth:`_QLayer.folded_scale_bias`),
    computed on the layers' concatenated channels: one set of ops for a whole model in training
    (``batched.py``). ``wqs[i]`` is layer i's quantized weight of this forward (None: computed here)."""
    counts = [layer.weight.shape[0] for layer in layers]
    ref = layers[0].weight

    def cat(parts: list[torch.Tensor | None], fill: float) -> torch.Tensor:
        return torch.cat([p if p is not None else ref.new_full((n,), fill) for p, n in zip(parts, counts, strict=True)])

    bn = [layer.bn_var is not None for layer in layers]
    gamma = cat([layer.bn_weight if b else None for layer, b in zip(layers, bn, strict=True)], 1.0)
    var_eps = cat([layer.bn_var + layer.bn_eps if b else None for layer, b in zip(layers, bn, strict=True)], 1.0)
    const = torch.cat([layer.bn_const if b else ref.new_zeros(n, dtype=torch.bool)
                       for layer, b, n in zip(layers, bn, counts, strict=True)])
    g = (gamma / torch.sqrt(var_eps)).masked_fill(const, 0.0)
    bias = cat([layer.bias for layer in layers], 0.0)
    beta = cat([layer.bn_bias if b else None for layer, b in zip(layers, bn, strict=True)], 0.0)
    mean = cat([layer.bn_mean if b else None for layer, b in zip(layers, bn, strict=True)], 0.0)
    b = beta + g * (bias - mean)
    with torch.no_grad():
        lsb = _lsb(torch.cat([_input_weight_step(layer).expand(n) for layer, n in zip(layers, counts, strict=True)]), g)
        shift = torch.cat([layer.act_q.offset * g_i * (wq if wq is not None else layer.quantized_weight()).detach()
                           .reshape(n, -1).sum(1) if layer.act_q.offset else g_i.new_zeros(n)
                           for layer, g_i, wq, n in zip(layers, g.detach().split(counts), wqs, counts, strict=True)])
        snapped = torch.round((b.detach() - shift) / lsb) * lsb + shift
    b = b + (snapped - b.detach())
    return list(zip(g.split(counts), b.split(counts), strict=True))


def weight_sum(layer: QConv2d | QLinear) -> torch.Tensor:
    """Σ of the quantized weights per output channel (what the h-swish offset contributes)."""
    wq = layer.quantized_weight().detach()
    return wq.reshape(wq.shape[0], -1).sum(dim=1)


@torch.no_grad()
def fold_batchnorm(model: fx.GraphModule, *, trainable: bool = False) -> fx.GraphModule:
    """Fold each layer's BatchNorm into it with every bias on the integer accumulator grid.

    ``trainable=True`` is the QAT fold used for the last training phases: the BN modules become
    ``Identity``, each layer keeps gamma/beta as parameters and the running statistics frozen,
    and its forward is already the exported arithmetic (folded scale, bias snapped to the
    accumulator grid with a straight-through gradient). The default (final) fold then fixes
    the scale and the bias; after it the eager model computes exactly what the integer artifact
    computes (see ``lowering.py``), and equals the trainable-fold forward in eval mode except in the
    channels ``break_rounding_ties`` scales by 1 + 2^-12.
    Returns the same (modified) model; the number of constant channels per layer is in
    ``duq_plan(model).constant_channels``.
    """
    plan = duq_plan(model)
    if plan.folded:
        return model
    nodes = {n.name: n for n in model.graph.nodes}
    for name, layer in quant_layers(model):
        if not (bool(layer.act_q.enabled) and bool(layer.weight_q.enabled)):
            raise MobilecError(f"layer {name!r} has a disabled quantizer; cannot fold", hint="finish the DuQ schedule first")
        lp = plan.layers[name]
        if not layer.train_folded:
            if lp.bn_node is not None:
                target = cast(str, nodes[lp.bn_node].target)
                bn = model.get_submodule(target)
                assert isinstance(bn, nn.BatchNorm1d | nn.BatchNorm2d)
                n_const = layer.attach_bn(bn)
                if n_const:
                    plan.constant_channels[name] = n_const
                _set_module(model, target, nn.Identity())
            layer.train_folded = True
        if not trainable:
            layer.freeze_fold()
    plan.folded = not trainable
    if not trainable:
        break_rounding_ties(model)
    model.recompile()
    return model


#: relative distance of an output-step / accumulator-step ratio from 2N/q (q odd) that counts as exact
TIE_TOLERANCE = 1e-6
#: the channel's scale and bias are multiplied by this until its ratio is clear of every such fraction
TIE_NUDGE = 1.0 + 2.0**-12
#: nudges per channel before break_rounding_ties gives up on it (with a note and a warning)
TIE_ROUNDS = 8


def _output_step(model: nn.Module, lp: LayerPlan, layers: dict[str, QConv2d | QLinear]) -> tuple[float, int]:
    if lp.fused_into is not None:
        q = layers[lp.fused_into].act_q
        return float(q.a().detach()) / q.levels, q.levels
    fq = model.get_submodule(cast(str, lp.out_fq))
    assert isinstance(fq, Int8FakeQuant)
    return fq.qparams()[0], 255


def _tie_prone(ratio: torch.Tensor, levels: int) -> torch.Tensor:
    """Channels whose output step is ``2N/q`` accumulator steps (q odd, q <= 2·levels + 1, N <= 64).

    Then (q and N coprime) every accumulator total, bias included, that is an odd multiple of N lands
    exactly on half an output step, where the float fake-quant and the integer artifact may round
    differently; with a small N such totals are frequent (a 3-bit mobilenet_v2 had 1552 of them in one
    channel, and 99.37 % agreement). Grids with an offset (h-swish's -3/8) are checked without it.
    """
    q = torch.arange(1, 2 * levels + 2, 2, dtype=torch.float64)
    n = ratio.double()[:, None] * q[None, :] / 2
    return (((n - n.round()).abs() <= TIE_TOLERANCE * n.clamp_min(1.0)) & (n.round() <= 64)).any(1)


@torch.no_grad()
def break_rounding_ties(model: fx.GraphModule) -> dict[str, list[int]]:
    """Move every folded channel whose output grid is a small rational multiple of its accumulator grid off it.

    Such a channel's scale and (accumulator-grid) bias are both multiplied by ``TIE_NUDGE`` (2^-12
    relative), which scales its pre-activation output, keeps the bias on the accumulator grid and
    leaves the eager model and the integer artifact computing the same numbers without exact ties.
    Returns (and records in the plan) ``{layer: [channels]}``.
    """
    plan = duq_plan(model)
    if not hasattr(plan, "tie_nudged_channels"):  # a plan decoded from an older pass checkpoint
        plan.tie_nudged_channels = {}
    layers = dict(quant_layers(model))
    left: dict[str, list[int]] = {}
    for name, lp in plan.layers.items():
        layer = layers[name]
        if layer.out_scale is None or layer.bias is None or (lp.fused_into is None and lp.out_fq is None):
            continue
        step, levels = _output_step(model, lp, layers)
        moved: set[int] = set()
        for round_ in range(TIE_ROUNDS + 1):
            prone = _tie_prone(step / accumulator_lsb(layer), levels) & (layer.out_scale != 0)
            if not bool(prone.any()):
                break
            if round_ == TIE_ROUNDS:  # each nudge landed on another small ratio: say so (verification measures the effect)
                left[name] = [int(i) for i in prone.nonzero().flatten()]
                break
            layer.out_scale[prone] *= TIE_NUDGE
            layer.bias.data[prone] *= TIE_NUDGE
            moved.update(int(i) for i in prone.nonzero().flatten())
        if moved:
            plan.tie_nudged_channels[name] = sorted(moved)
    if left:
        msg = (f"{sum(len(v) for v in left.values())} channel(s) still on a rounding-tie ratio after {TIE_ROUNDS} nudges "
               "(eager and artifact may round some outputs differently; see the verification's agreement): "
               + "; ".join(f"{k} {v}" for k, v in left.items()))
        plan.notes.append(msg)
        warnings.warn(msg, stacklevel=2)
    if plan.tie_nudged_channels:
        n = sum(len(v) for v in plan.tie_nudged_channels.values())
        plan.notes.append(f"{n} channel(s) scaled by 1 + 2^-12 so no output lands exactly on a rounding tie: "
                          + "; ".join(f"{k} {v}" for k, v in plan.tie_nudged_channels.items()))
    return plan.tie_nudged_channels
