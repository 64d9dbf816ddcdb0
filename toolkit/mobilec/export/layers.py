"""Per-layer bits table: what each Conv/Linear weight looks like *inside the artifact*.

Each reader below collects, for every weighted op in an artifact, the weight values as stored
(int codes or floats), the container dtype, the arithmetic the runtime executes and the bytes
of the weight and of its companions (bias, scales, zero-points). :func:`layer_bits` matches them
to the eager model's modules (by the module path the artifact carries, else by weight size
and output channels in graph order) and measures ``info_bits`` from the stored values;
:func:`check_layers` cross-checks the table against the model and the file.

``info_bits`` is measured, not assumed, from the number of distinct stored values (see
:func:`measure_info_bits`): a 4-bit grid in an int8 container reads 4, an 8-bit PTQ layer 8, a
continuous fp32 layer 32.

>>> import torch
>>> from torch import nn
>>> m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
>>> [layer.name for layer in torch_layer_bits(m)]
['0', '2']
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mobilec.export.base import LayerBits

WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.Linear)
_DTYPE_BITS = {"int4": 4, "uint4": 4, "int8": 8, "uint8": 8, "int16": 16, "int32": 32, "fp16": 16, "bf16": 16, "fp32": 32}


@dataclass
class WeightRecord:
    """One weighted op as an artifact stores it (before matching to a module)."""

    weight: np.ndarray  # stored values, output channels on axis ``out_axis``
    out_axis: int
    stored: str  # container dtype: int8, fp32, ...
    executed: str  # arithmetic the runtime runs: int8, fp32
    weight_bytes: int
    aux_bytes: int  # bias + scales + zero-points, as stored
    name_hint: str | None = None  # module path if the artifact carries it

    @property
    def numel(self) -> int:
        return int(self.weight.size)

    @property
    def out_channels(self) -> int:
        return int(self.weight.shape[self.out_axis])


def weighted_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(module path, module) of every Conv/Linear, in definition order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, WEIGHTED)]


def layer_kind(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.ConvTranspose1d | nn.ConvTranspose2d):
        return "conv_transpose"
    dims = "conv1d" if isinstance(module, nn.Conv1d) else "conv3d" if isinstance(module, nn.Conv3d) else "conv2d"
    if module.groups > 1 and module.groups == module.in_channels:
        return "depthwise_" + dims
    if module.groups > 1:
        return "grouped_" + dims
    return dims


def measure_info_bits(weight: np.ndarray, out_axis: int, container_bits: int, *, integer: bool) -> float:
    """Bits of information per weight, measured from the distinct stored values.

    Integer codes share one grid across channels, so their distinct values are counted over the
    layer; float weights carry a per-channel scale, so they are counted per output channel (the
    largest count wins). A count is trusted only where it is at most half the number of weights
    it was taken over (else the sample is too small to show a grid): then ``L`` levels count as
    ``b`` bits with ``2**b`` levels, or ``2**b + 1`` for symmetric grids that keep both ends
    (±2**(b-1), e.g. onnxruntime's reduce_range); otherwise the container width is returned.
    """
    w = np.asarray(weight)
    if w.size == 0:
        return float(container_bits)
    if integer:
        levels, n = int(np.unique(w).size), int(w.size)
    else:
        rows = np.sort(np.moveaxis(w, out_axis, 0).reshape(w.shape[out_axis], -1), axis=1)
        levels, n = int((1 + (np.diff(rows, axis=1) != 0).sum(axis=1)).max()), int(rows.shape[1])
    if 2 * levels > n:
        return float(container_bits)
    bits = 1 if levels <= 2 else 2 if levels <= 4 else math.ceil(math.log2(levels - 1))
    return float(min(bits, container_bits))


def layer_bits(model: nn.Module, records: list[WeightRecord]) -> tuple[list[LayerBits], list[str]]:
    """Match ``records`` to ``model``'s Conv/Linear modules; return the table and matching problems."""
    modules = weighted_modules(model)
    by_name = {name: (name, m) for name, m in modules}
    taken: dict[str, WeightRecord] = {}
    problems: list[str] = []
    left: list[WeightRecord] = []
    for rec in records:
        if rec.name_hint in by_name and rec.name_hint not in taken and by_name[rec.name_hint][1].weight.numel() == rec.numel:
            taken[rec.name_hint] = rec
        else:
            left.append(rec)
    for rec in left:  # no usable name: first unmatched module with the same size and output channels
        for name, m in modules:
            if name not in taken and m.weight.numel() == rec.numel and _out_channels(m) == rec.out_channels:
                taken[name] = rec
                break
        else:
            problems.append(f"artifact holds a {rec.stored} weight of shape {tuple(rec.weight.shape)} that matches no Conv/Linear module")
    table = []
    for name, m in modules:
        rec = taken.get(name)
        if rec is None:
            problems.append(f"module {name} ({layer_kind(m)}, {m.weight.numel()} weights) was not found in the artifact")
            continue
        bits = _DTYPE_BITS.get(rec.stored, 32)
        info = measure_info_bits(rec.weight, rec.out_axis, bits, integer=rec.weight.dtype.kind in "iu")
        table.append(LayerBits(
            name=name, kind=layer_kind(m), params=rec.numel, info_bits=info, stored=rec.stored, executed=rec.executed,
            stored_bytes=rec.weight_bytes + rec.aux_bytes,
            packed_bytes=math.ceil(rec.numel * info / 8) + rec.aux_bytes,
        ))
    return table, problems


def check_layers(layers: list[LayerBits], model: nn.Module, *, file_size: int | None = None) -> list[str]:
    """Cross-check a layers table against the model (every Conv/Linear once, right sizes) and the file size."""
    problems = []
    expected = {name: m for name, m in weighted_modules(model)}
    seen: dict[str, int] = {}
    for layer in layers:
        seen[layer.name] = seen.get(layer.name, 0) + 1
        m = expected.get(layer.name)
        if m is None:
            problems.append(f"layer {layer.name} is not a Conv/Linear module of the model")
            continue
        if layer.params != m.weight.numel():
            problems.append(f"layer {layer.name}: {layer.params} weights in the artifact, {m.weight.numel()} in the model")
        bits = _DTYPE_BITS.get(layer.stored)
        if bits is not None and layer.stored_bytes < math.ceil(layer.params * bits / 8):
            problems.append(f"layer {layer.name}: {layer.stored_bytes} bytes cannot hold {layer.params} {layer.stored} weights")
        if not 0 < layer.info_bits <= (bits or 32):
            problems.append(f"layer {layer.name}: info_bits {layer.info_bits} outside (0, {bits or 32}]")
        if layer.packed_bytes > layer.stored_bytes:
            problems.append(f"layer {layer.name}: bit-packed size {layer.packed_bytes} exceeds stored size {layer.stored_bytes}")
    problems += [f"layer {name} appears {n} times" for name, n in seen.items() if n > 1]
    problems += [f"module {name} is missing from the layers table" for name in expected if name not in seen]
    if file_size is not None:
        total = sum(layer.stored_bytes for layer in layers)
        if total > file_size:
            problems.append(f"layers claim {total} bytes but the file has only {file_size}")
    return problems


def summarize(layers: Iterable[LayerBits], file_size: int) -> str:
    layers = list(layers)
    total = sum(layer.stored_bytes for layer in layers)
    stored = sorted({layer.stored for layer in layers})
    executed = sorted({layer.executed for layer in layers})
    return (f"{len(layers)} Conv/Linear layers hold {total} of the file's {file_size} bytes ({100 * total / max(file_size, 1):.1f} %); "
            f"stored {'/'.join(stored)}, executed {'/'.join(executed)}")


# --------------------------------------------------------------------------- eager model


def torch_layer_bits(model: nn.Module) -> list[LayerBits]:
    """The table for an eager model's own fp32 parameters (what an fp32 export should reproduce)."""
    records = []
    for name, m in weighted_modules(model):
        w = m.weight.detach().float().cpu().numpy()
        bias = 0 if m.bias is None else m.bias.numel() * 4
        records.append(WeightRecord(w, 1 if isinstance(m, nn.ConvTranspose1d | nn.ConvTranspose2d) else 0,
                                    "fp32", "fp32", w.size * 4, bias, name))
    return layer_bits(model, records)[0]


# --------------------------------------------------------------------------- TFLite


def tflite_records(path: Path) -> list[WeightRecord]:
    """Weights of CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED / TRANSPOSE_CONV ops, read through the interpreter
    (INT4 weights, which it reads back unpacked, are recognised from the flatbuffer's tensor types)."""
    from ai_edge_litert.interpreter import Interpreter

    from mobilec.export.tflite_int4 import int4_tensors

    interp = Interpreter(model_path=str(path), num_threads=1)
    interp.allocate_tensors()
    details = {d["index"]: d for d in interp.get_tensor_details()}
    packed = int4_tensors(path)
    roles = {"CONV_2D": (0, 1, 2, 0), "DEPTHWISE_CONV_2D": (0, 1, 2, 3), "FULLY_CONNECTED": (0, 1, 2, 0),
             "TRANSPOSE_CONV": (2, 1, 3, 0)}  # (activation input, weight, bias, output-channel axis of the weight)
    records = []
    for op in interp._get_ops_details():  # the public API has no op list; this one is stable across releases
        if op["op_name"] not in roles:
            continue
        a_i, w_i, b_i, axis = roles[op["op_name"]]
        ins = list(op["inputs"])
        w_det = details[ins[w_i]]
        weight = interp.get_tensor(ins[w_i])
        act = details[ins[a_i]]
        stored = "int4" if ins[w_i] in packed else _np_name(w_det["dtype"])
        w_bytes = math.ceil(weight.size / 2) if stored == "int4" else weight.nbytes
        executed = _np_name(act["dtype"]) if np.dtype(act["dtype"]).kind in "iu" else "fp32"
        aux = _tfl_qbytes(w_det)
        if b_i < len(ins) and ins[b_i] >= 0:
            b_det = details[ins[b_i]]
            aux += int(np.prod(b_det["shape"])) * np.dtype(b_det["dtype"]).itemsize + _tfl_qbytes(b_det)
        records.append(WeightRecord(weight, axis, stored, executed, w_bytes, aux, _tfl_name(w_det["name"])))
    return records


def _tfl_qbytes(detail: dict[str, Any]) -> int:
    q = detail.get("quantization_parameters") or {}
    n_scales = len(q.get("scales", ()))
    return 4 * n_scales + 8 * len(q.get("zero_points", ())) if n_scales else 0  # schema: scale [float], zero_point [long]


def _tfl_name(name: str) -> str | None:
    """Module path from a litert-torch tensor name ``pkg.Class_attr/.../torch.nn.modules.conv.Conv2d_0;...``."""
    first = name.split(";")[0]
    parts = first.split("/")
    if len(parts) < 2 or "torch.nn.modules" not in parts[-1]:
        return None
    attrs = []
    for p in parts[1:]:
        cls, sep, attr = p.rpartition("_")
        if not sep or not cls:
            return None
        attrs.append(attr)
    return ".".join(attrs)


# --------------------------------------------------------------------------- ONNX


def onnx_records(path: Path, int8_weights: set[str] | None = None) -> list[WeightRecord]:
    """Weights of Conv / Gemm / MatMul nodes from the ONNX initializers (through DequantizeLinear for QDQ models).

    ``int8_weights``: names of weight initializers that onnxruntime's optimized graph feeds to integer
    kernels (QLinearConv, QGemm, ...); those layers execute int8, the rest fp32.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    records = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul", "ConvTranspose"):
            continue
        w_name = node.input[1]
        q_name, aux_names, w_arr = _onnx_const(w_name, inits, producer, numpy_helper)
        if w_arr is None:
            continue  # an activation x activation MatMul
        if node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            axis = 0 if trans_b else 1
        elif node.op_type == "MatMul":
            axis = w_arr.ndim - 1
        elif node.op_type == "ConvTranspose":
            axis = 1
        else:
            axis = 0
        aux = sum(_onnx_nbytes(inits[n], numpy_helper) for n in aux_names)
        bias_idx = 2
        if len(node.input) > bias_idx and node.input[bias_idx]:
            _, b_aux, b_arr = _onnx_const(node.input[bias_idx], inits, producer, numpy_helper)
            if b_arr is not None:
                aux += b_arr.nbytes + sum(_onnx_nbytes(inits[n], numpy_helper) for n in b_aux)
        stored = _np_name(w_arr.dtype)
        if stored == "fp32":
            executed = "fp32"
        elif int8_weights is None:
            executed = "unknown"
        else:
            executed = "int8" if q_name in int8_weights else "fp32"
        hint = q_name.removesuffix("_quantized").removesuffix(".weight")
        records.append(WeightRecord(w_arr, axis, stored, executed, w_arr.nbytes, aux, hint))
    return records


def _onnx_const(name: str, inits: dict, producer: dict, numpy_helper: Any) -> tuple[str, list[str], np.ndarray | None]:
    """(stored initializer name, companion initializers (scale, zero point), stored values) behind ``name``."""
    if name in inits:
        return name, [], numpy_helper.to_array(inits[name])
    node = producer.get(name)
    if node is not None and node.op_type == "DequantizeLinear" and node.input[0] in inits:
        aux = [n for n in node.input[1:] if n in inits]
        return node.input[0], aux, numpy_helper.to_array(inits[node.input[0]])
    return name, [], None


def _onnx_nbytes(init: Any, numpy_helper: Any) -> int:
    return int(numpy_helper.to_array(init).nbytes)


def ort_int8_weights(optimized_model: Path) -> set[str]:
    """Weight initializers consumed by integer kernels in onnxruntime's optimized graph."""
    import onnx

    model = onnx.load(str(optimized_model))
    weight_input = {"QLinearConv": 3, "QGemm": 3, "QLinearMatMul": 3, "ConvInteger": 1, "MatMulInteger": 1,
                    "MatMulIntegerToFloat": 1, "DynamicQuantizeMatMul": 1, "QLinearConvTranspose": 3}
    return {node.input[weight_input[node.op_type]] for node in model.graph.node
            if node.op_type in weight_input and len(node.input) > weight_input[node.op_type]}


# --------------------------------------------------------------------------- ExecuTorch


_MATMUL_OPS = {"aten.convolution.default": (1, 2, 0), "aten.linear.default": (1, 2, 0),
               "aten.addmm.default": (2, 0, 1), "aten.mm.default": (1, None, 1)}  # weight arg, bias arg, out axis
_VIEW_OPS = ("aten.permute_copy.default", "aten.t_copy.default", "aten.view_copy.default", "aten.permute.default",
             "aten.t.default", "aten.view.default", "aten._to_copy.default")


def op_name(target: Any) -> str:
    """``aten.convolution.default`` for an aten/edge op, the function name otherwise."""
    op = getattr(target, "_op", target)  # EdgeOpOverload wraps an OpOverload
    schema = getattr(op, "_schema", None)
    if schema is not None:
        ns, _, name = schema.name.partition("::")
        return f"{ns}.{name}.{op._overloadname}"
    return getattr(target, "__name__", str(target))


def pte_records(edge_program: Any) -> list[WeightRecord]:
    """Weights of convolution/linear ops in a lowered edge program (``EdgeProgramManager.exported_program()``).

    Ops inside an XNNPACK delegate with int8 weights and a statically quantized input execute int8;
    XNNPACK stores their bias as int32 with per-channel fp32 scales (its serializer's rule), weights with
    per-channel fp32 scales and no zero-points (symmetric). Ops left on portable kernels run fp32.
    """
    records: list[WeightRecord] = []
    gm = edge_program.graph_module
    _graph_records(edge_program, delegated=False, out=records)
    for node in gm.graph.nodes:
        if node.op == "call_function" and "executorch_call_delegate" in op_name(node.target):
            lowered = getattr(gm, node.args[0].target)
            _graph_records(lowered.original_module, delegated="Xnnpack" in getattr(lowered, "backend_id", "Xnnpack"),
                           out=records)
    return records


def _graph_records(ep: Any, *, delegated: bool, out: list[WeightRecord]) -> None:
    consts = _ep_constants(ep)
    for node in ep.graph.nodes:
        if node.op != "call_function":
            continue
        name = op_name(node.target)
        if name not in _MATMUL_OPS:
            continue
        w_idx, b_idx, axis = _MATMUL_OPS[name]
        w_node, transposed = _through_views(node.args[w_idx])
        q = _dequant(w_node)
        if q is not None:
            w = consts.get(q.args[0].name)
            scales = q.args[1]
            n_scales = consts[scales.name].numel() if hasattr(scales, "name") and scales.name in consts else 1
        else:
            w = consts.get(w_node.name) if hasattr(w_node, "name") else None
            n_scales = 0
        if w is None:
            continue  # activation x activation
        if name in ("aten.addmm.default", "aten.mm.default"):
            axis = 0 if transposed else w.ndim - 1
        act = node.args[1] if name == "aten.addmm.default" else node.args[0]
        quant_act = _dequant(act) is not None and "per_tensor" in op_name(_dequant(act).target)
        executed = "int8" if delegated and q is not None and quant_act and w.dtype == torch.int8 else "fp32"
        stored = _torch_name(w.dtype)
        w_bytes = w.numel() * w.element_size()
        if delegated and q is not None and _int4_range(q):  # XNNPACK's serializer packs these two codes a byte (qcint4)
            stored = "int4"
            w_bytes = w.shape[0] * math.ceil(w[0].numel() / 2)
        aux = 4 * n_scales  # per-channel fp32 scales
        bias = node.args[b_idx] if b_idx is not None and len(node.args) > b_idx else None
        if bias is not None and hasattr(bias, "name"):
            b_node, _ = _through_views(bias)
            b = consts.get(b_node.name)
            if b is not None:
                if executed == "int8":  # XNNPACK quantizes the fp32 bias to int32 with scale w_scale * in_scale
                    aux += 4 * b.numel() + 4 * max(n_scales, 1)
                else:
                    aux += b.numel() * b.element_size()
        stack = node.meta.get("nn_module_stack") or {}
        hint = list(stack.values())[-1][0] if stack else None
        arr = w.detach().float().numpy() if w.dtype.is_floating_point else w.detach().numpy()
        out.append(WeightRecord(arr, axis, stored, executed, w_bytes, aux, hint))


def _ep_constants(ep: Any) -> dict[str, torch.Tensor]:
    sig = ep.graph_signature
    table = {**sig.inputs_to_parameters, **sig.inputs_to_buffers, **getattr(sig, "inputs_to_lifted_tensor_constants", {})}
    values = {**ep.state_dict, **ep.constants}
    out = {ph: values[key] for ph, key in table.items() if key in values}
    for node in ep.graph.nodes:  # constants kept as attributes
        if node.op == "get_attr":
            val = getattr(ep.graph_module, node.target, None)
            if isinstance(val, torch.Tensor):
                out[node.name] = val
    return out


def _through_views(node: Any) -> tuple[Any, bool]:
    transposed = False
    while hasattr(node, "op") and node.op == "call_function" and op_name(node.target) in _VIEW_OPS:
        transposed = transposed or "permute" in op_name(node.target) or op_name(node.target).startswith("aten.t")
        node = node.args[0]
    return node, transposed


def _dequant(node: Any) -> Any:
    if hasattr(node, "op") and node.op == "call_function" and op_name(node.target).startswith("quantized_decomposed.dequantize_"):
        return node
    return None


def _int4_range(dequant: Any) -> bool:
    """A per-channel int8 dequantize whose code range is int4's ``[-8, 7]``."""
    args = dequant.args
    return "per_channel" in op_name(dequant.target) and len(args) > 5 and (args[4], args[5]) == (-8, 7)


def _np_name(dtype: Any) -> str:
    d = np.dtype(dtype)
    return {"float32": "fp32", "float16": "fp16"}.get(d.name, d.name)


def _torch_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, str(dtype).removeprefix("torch."))


def _out_channels(m: nn.Module) -> int:
    if isinstance(m, nn.Linear):
        return m.out_features
    return m.out_channels
