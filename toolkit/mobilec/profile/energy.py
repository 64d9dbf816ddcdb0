"""Energy: an analytical estimate for the host, and measurement arithmetic for phones.

Estimate (``estimate_energy``): energy per inference from per-layer multiply-accumulates
(MACs) and bytes moved, with the 45 nm figures of M. Horowitz, "Computing's energy
problem (and what we can do about it)", ISSCC 2014, Table/Fig. "Rough energy costs for
various operations in 45nm, 0.9V":

======================  =========
operation               energy
======================  =========
8-bit int add           0.03 pJ
32-bit int add          0.1 pJ
8-bit int mult          0.2 pJ
32-bit int mult         3.1 pJ
16-bit float add        0.4 pJ
16-bit float mult       1.1 pJ
32-bit float add        0.9 pJ
32-bit float mult       3.7 pJ
32-bit SRAM read (8KB)  5 pJ
32-bit DRAM read        640 pJ
======================  =========

Model (every result says ``method="estimated: Horowitz ISSCC 2014 45nm analytical model"``):

- a MAC costs one multiply plus one add at the width the runtime *executes*: integer
  operands of <= 8 bits run as an 8-bit multiply with a 32-bit accumulate (0.2 + 0.1 pJ);
  wider integers as 32-bit (3.1 + 0.1 pJ); floats of <= 16 bits as fp16 (1.1 + 0.4 pJ);
  other floats as fp32 (3.7 + 0.9 pJ). Sub-8-bit grids stored in int8 containers execute
  as int8: no phone CPU runtime has sub-8-bit arithmetic.
- SRAM: every MAC fetches its weight and activation operands from an 8 KB SRAM
  ((w_bits + a_bits) / 32 words at 5 pJ each) — no register reuse, an upper bound.
  ``lower_bound_mj`` leaves this term out (perfect reuse).
- DRAM: the layer's weights (at their stored width) and its input and output
  activations cross DRAM once (640 pJ per 32-bit word): no cache reuse between layers.

The figures are 45 nm; a 4-5 nm phone SoC spends several times less per operation, and
the model ignores control, instruction fetch and static power. Use it to compare models
(int8 vs fp32, fewer MACs), not as the battery drain of a phone. Measure that on the
phone (``AdbDevice`` with a ``battery_sysfs`` or ``power_stats`` profile).

Measurement arithmetic (``energy_from_power_samples``, ``energy_from_rail_deltas``): the
power drawn while the benchmark runs minus the power of an idle window of the same length,
times the mean inference time: ``E = (mean P_run - mean P_idle) x duration / inferences``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mobilec.errors import MobilecError
from mobilec.profile.device import EnergyEstimate, EnergyMeasurement

ESTIMATE_METHOD = "estimated: Horowitz ISSCC 2014 45nm analytical model"
HOROWITZ_SOURCE = "M. Horowitz, 'Computing's energy problem (and what we can do about it)', ISSCC 2014, 45 nm, 0.9 V"

# picojoules per operation / per 32-bit access, 45 nm (Horowitz, ISSCC 2014)
HOROWITZ_45NM_PJ: dict[str, float] = {
    "int8_add": 0.03,
    "int32_add": 0.1,
    "int8_mult": 0.2,
    "int32_mult": 3.1,
    "fp16_add": 0.4,
    "fp16_mult": 1.1,
    "fp32_add": 0.9,
    "fp32_mult": 3.7,
    "sram_read_32bit_8kb": 5.0,
    "dram_access_32bit": 640.0,
}


@dataclass(frozen=True)
class LayerWork:
    """What one layer does per inference: MACs, operand widths, and what it moves.

    ``weight_params`` and ``activation_elems`` (input + output elements) give the DRAM
    traffic unless ``dram_bytes`` is given; ``sram_bytes`` overrides the operand-fetch term.

    >>> LayerWork("fc", macs=1000, weight_bits=8, activation_bits=8, weight_params=100, activation_elems=250)
    ... # doctest: +ELLIPSIS
    LayerWork(name='fc', macs=1000, ...)
    """

    name: str
    macs: int
    weight_bits: int = 32
    activation_bits: int = 32
    weight_params: int = 0
    activation_elems: int = 0
    floating: bool = True
    weight_storage_bits: float | None = None  # bits per stored weight if not weight_bits (e.g. 4-bit packed)
    dram_bytes: float | None = None
    sram_bytes: float | None = None


def mac_energy_pj(weight_bits: int, activation_bits: int, *, floating: bool) -> tuple[float, str]:
    """Energy of one MAC (multiply + accumulate) at the executed width, and that width's name."""
    c = HOROWITZ_45NM_PJ
    bits = max(weight_bits, activation_bits)
    if floating:
        return (c["fp16_mult"] + c["fp16_add"], "fp16") if bits <= 16 else (c["fp32_mult"] + c["fp32_add"], "fp32")
    return (c["int8_mult"] + c["int32_add"], "int8") if bits <= 8 else (c["int32_mult"] + c["int32_add"], "int32")


def estimate_energy(layers: Sequence[LayerWork], *, source: str = "") -> EnergyEstimate:
    """Energy per inference (mJ) of ``layers`` under the model in the module docstring."""
    if not layers:
        raise MobilecError("no layers to estimate energy from", hint="give per-layer MACs (layer_work_from_model / _onnx / _tflite)")
    c = HOROWITZ_45NM_PJ
    compute = sram = dram = 0.0
    per_layer: dict[str, float] = {}
    executed: set[str] = set()
    for layer in layers:
        if layer.macs < 0 or layer.weight_bits <= 0 or layer.activation_bits <= 0:
            raise MobilecError(f"layer {layer.name!r}: negative MACs or non-positive bit width", hint="check the layer table")
        mac_pj, width = mac_energy_pj(layer.weight_bits, layer.activation_bits, floating=layer.floating)
        executed.add(width)
        l_compute = layer.macs * mac_pj
        sram_bytes = layer.sram_bytes if layer.sram_bytes is not None else layer.macs * (layer.weight_bits + layer.activation_bits) / 8
        l_sram = sram_bytes / 4 * c["sram_read_32bit_8kb"]
        if layer.dram_bytes is not None:
            dram_bytes = layer.dram_bytes
        else:
            w_bits = layer.weight_storage_bits if layer.weight_storage_bits is not None else layer.weight_bits
            dram_bytes = layer.weight_params * w_bits / 8 + layer.activation_elems * layer.activation_bits / 8
        l_dram = dram_bytes / 4 * c["dram_access_32bit"]
        compute, sram, dram = compute + l_compute, sram + l_sram, dram + l_dram
        per_layer[layer.name] = (l_compute + l_sram + l_dram) * 1e-9
    total_pj = compute + sram + dram
    assumptions = [
        f"constants: {HOROWITZ_SOURCE}",
        f"MAC = multiply + accumulate at the executed width ({', '.join(sorted(executed))}); int <= 8 bits runs as int8 x int8 -> int32",
        "SRAM: each MAC fetches both operands from an 8 KB SRAM (no register reuse: upper bound; lower_bound_mj omits it)",
        "DRAM: weights and each layer's input + output activations cross DRAM once (no inter-layer cache reuse)",
        "45 nm figures: a modern phone SoC spends several times less per operation; control and static power are ignored",
    ]
    if source:
        assumptions.append(f"per-layer work read from {source}")
    return EnergyEstimate(
        method=ESTIMATE_METHOD,
        mj_per_inference=total_pj * 1e-9,
        lower_bound_mj=(compute + dram) * 1e-9,
        breakdown_mj={"compute": compute * 1e-9, "sram": sram * 1e-9, "dram": dram * 1e-9},
        assumptions=assumptions,
        per_layer_mj=per_layer,
    )


# ---------------------------------------------------------------- per-layer work from models and files


def layer_work_from_model(model: Any, example_input: Any, *, weight_bits: int = 32, activation_bits: int = 32,
                          floating: bool | None = None) -> list[LayerWork]:
    """Per-layer MACs and sizes of a torch model (Conv2d and Linear layers) on ``example_input`` (batch 1)."""
    import torch
    from torch import nn

    from mobilec.models.stats import forward_with_layer_hooks, layer_macs

    floating = (weight_bits > 8 or activation_bits > 8) if floating is None else floating
    works: list[LayerWork] = []

    def hook(name: str):
        def fn(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            macs = layer_macs(mod, out)
            works.append(LayerWork(name, macs=int(macs), weight_bits=weight_bits, activation_bits=activation_bits,
                                   weight_params=int(mod.weight.numel()), activation_elems=int(inp[0].numel() + out.numel()),
                                   floating=floating))
        return fn

    forward_with_layer_hooks(model, example_input, hook)
    return works


_DTYPE_BITS = {"float32": 32, "float16": 16, "bfloat16": 16, "float64": 64, "int8": 8, "uint8": 8, "int16": 16, "int32": 32,
               "int4": 4, "uint4": 4}


def layer_work_from_tflite(path: Path) -> list[LayerWork]:
    """Per-layer work of a .tflite file: CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, from the LiteRT interpreter's op table."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        interp = Interpreter(model_path=str(path))
        tensors = {t["index"]: t for t in interp.get_tensor_details()}
        ops = interp._get_ops_details()
    except Exception as exc:  # LiteRT raises ValueError/RuntimeError on bad flatbuffers
        raise MobilecError(f"{path} cannot be read by LiteRT: {exc}", hint="give a valid .tflite file") from None

    def bits(t: dict[str, Any]) -> int:
        return _DTYPE_BITS.get(np.dtype(t["dtype"]).name, 32)

    works = []
    for op in ops:
        name = op["op_name"]
        if name not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            continue
        ins = [i for i in op["inputs"] if i >= 0]
        x, w, out = tensors[ins[0]], tensors[ins[1]], tensors[op["outputs"][0]]
        out_n = int(np.prod(out["shape"]))
        wshape = list(w["shape"])
        if name == "CONV_2D":  # filter [Cout, kh, kw, Cin]
            macs = out_n * int(np.prod(wshape[1:]))
        elif name == "DEPTHWISE_CONV_2D":  # filter [1, kh, kw, Cout]
            macs = out_n * int(wshape[1] * wshape[2])
        else:  # filter [out, in]
            macs = out_n * int(wshape[-1])
        wb, ab = bits(w), bits(x)
        works.append(LayerWork(f"{op['index']}:{name}", macs=macs, weight_bits=wb, activation_bits=ab,
                               weight_params=int(np.prod(wshape)), activation_elems=int(np.prod(x["shape"])) + out_n,
                               floating=np.issubdtype(np.dtype(x["dtype"]), np.floating)))
    return works


def layer_work_from_onnx(path: Path) -> list[LayerWork]:
    """Per-layer work of an .onnx file: Conv/QLinearConv/ConvInteger, Gemm/MatMul and their quantized forms (QDQ aware)."""
    import onnx
    from onnx import numpy_helper, shape_inference

    try:
        model = shape_inference.infer_shapes(onnx.load(str(path)))
    except Exception as exc:  # onnx raises DecodeError, ValidationError, ...
        raise MobilecError(f"{path} cannot be read as ONNX: {exc}", hint="give a valid .onnx file") from None
    g = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    shapes: dict[str, list[int]] = {}
    elem: dict[str, int] = {}
    for vi in [*g.input, *g.value_info, *g.output]:
        tt = vi.type.tensor_type
        shapes[vi.name] = [d.dim_value if d.dim_value > 0 else 1 for d in tt.shape.dim]
        elem[vi.name] = tt.elem_type
    producer = {o: n for n in g.node for o in n.output}

    def source(name: str) -> tuple[np.ndarray | None, int]:
        """(constant weight if any, bit width) of a tensor, looking through DequantizeLinear."""
        node = producer.get(name)
        if node is not None and node.op_type == "DequantizeLinear":
            arr = inits.get(node.input[0])
            b = _DTYPE_BITS.get(arr.dtype.name, 8) if arr is not None else _onnx_bits(elem.get(node.input[0]))
            return arr, b
        arr = inits.get(name)
        if arr is not None:
            return arr, _DTYPE_BITS.get(arr.dtype.name, 32)
        return None, _onnx_bits(elem.get(name))

    works = []
    for i, node in enumerate(g.node):
        op = node.op_type
        if op in ("Conv", "ConvInteger", "QLinearConv", "Gemm", "MatMul", "MatMulInteger", "QLinearMatMul"):
            xi, wi = (node.input[0], node.input[3]) if op.startswith("QLinear") else (node.input[0], node.input[1])
            w, wb = source(wi)
            _, ab = source(xi)
            if op in ("ConvInteger", "QLinearConv", "MatMulInteger", "QLinearMatMul"):
                wb, ab = min(wb, 8), min(ab, 8)
            out = node.output[0]
            if w is None or out not in shapes:
                continue  # activation x activation products (attention) are not modelled
            out_n = int(np.prod(shapes[out]))
            if "Conv" in op:
                macs = out_n * int(np.prod(w.shape[1:]))
            else:
                trans_b = any(a.name == "transB" and a.i == 1 for a in node.attribute)
                k = w.shape[-1] if (op == "Gemm" and trans_b) else w.shape[0]
                macs = out_n * int(k)
            x_n = int(np.prod(shapes.get(xi, [0])))
            works.append(LayerWork(f"{i}:{node.name or op}", macs=macs, weight_bits=wb, activation_bits=ab,
                                   weight_params=int(w.size), activation_elems=x_n + out_n, floating=max(wb, ab) > 8))
    return works


def _onnx_bits(elem_type: int | None) -> int:
    # onnx.TensorProto: FLOAT=1, UINT8=2, INT8=3, INT16=5, INT32=6, FLOAT16=10, BFLOAT16=16
    return {1: 32, 2: 8, 3: 8, 5: 16, 6: 32, 10: 16, 16: 16}.get(elem_type or 1, 32)


def layer_work_from_artifact(path: Path) -> tuple[list[LayerWork] | None, str]:
    """Per-layer work read from an artifact file, or (None, why not)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        return layer_work_from_onnx(path), ""
    if suffix == ".tflite":
        return layer_work_from_tflite(path), ""
    return None, ("per-layer MACs cannot be read from a .pte (the XNNPACK delegate payload is opaque): pass "
                  "energy_layers=energy.layer_work_from_model(model, example) for an energy estimate")


# ---------------------------------------------------------------- measurement on phones


def current_to_amps(raw: float, unit: str) -> float:
    """``current_now`` reading to amperes (absolute value: the sign convention differs between vendors)."""
    scale = {"uA": 1e-6, "mA": 1e-3}.get(unit)
    if scale is None:
        raise MobilecError(f"unknown current unit {unit!r}", hint="current_unit must be 'uA' or 'mA'")
    return abs(raw) * scale


def voltage_to_volts(raw: float | None, nominal_v: float) -> float:
    """``voltage_now`` reading to volts: µV (kernel ABI, > 1e5) or mV (some vendors, 1e3..1e5); else the nominal voltage."""
    if raw is None or raw <= 0:
        return nominal_v
    if raw > 1e5:
        return raw * 1e-6
    if raw > 1e3:
        return raw * 1e-3
    return nominal_v


def energy_from_power_samples(run_mw: Sequence[float], idle_mw: Sequence[float], *, duration_s: float, inferences: int,
                              method: str, details: dict[str, Any] | None = None,
                              flags: Sequence[str] = ()) -> EnergyMeasurement:
    """E per inference = (mean P_run - mean P_idle) x duration / inferences, ± one propagated standard error.

    ``duration_s`` is the time the ``inferences`` took (sum of their latencies); P in mW, so E in mJ.
    """
    if len(run_mw) < 2 or len(idle_mw) < 2:
        raise MobilecError(
            f"too few power samples ({len(run_mw)} during the run, {len(idle_mw)} idle) to measure energy",
            hint="raise runs so the benchmark lasts several sampling periods, or raise sample_hz in the profile",
        )
    if inferences < 1 or duration_s <= 0:
        raise MobilecError("energy needs at least one timed inference", hint="run with runs >= 1")
    run, idle = np.asarray(run_mw, float), np.asarray(idle_mw, float)
    delta = float(run.mean() - idle.mean())
    se = math.sqrt(run.var(ddof=1) / run.size + idle.var(ddof=1) / idle.size)
    flags = list(flags)
    if delta <= 2 * se:
        flags.append(f"inference power not distinguishable from idle (ΔP = {delta:.1f} ± {se:.1f} mW): "
                     "the run is too short or the model too small for battery sampling; raise runs")
    info = {"mean_power_run_mw": float(run.mean()), "mean_power_idle_mw": float(idle.mean()), "delta_power_mw": delta,
            "delta_power_se_mw": se, "n_samples_run": int(run.size), "n_samples_idle": int(idle.size), **(details or {})}
    return EnergyMeasurement(method=method, mj_per_inference=delta * duration_s / inferences,
                             uncertainty_mj=se * duration_s / inferences, inferences=inferences, duration_s=duration_s,
                             details=info, flags=flags)


def energy_from_rail_deltas(windows: Sequence[dict[str, float]], *, method: str, flags: Sequence[str] = ()) -> EnergyMeasurement:
    """Energy per inference from PowerStats energy-meter deltas, one dict per repetition with keys
    ``run_mj``, ``run_s`` (benchmark window), ``idle_mj``, ``idle_s`` (idle window), ``timed_s``, ``inferences``.

    Per repetition: net power = run_mj / run_s - idle_mj / idle_s; E per inference = net power x timed_s / inferences.
    The figure is the mean over repetitions; the uncertainty their standard error (None with one repetition).
    """
    if not windows:
        raise MobilecError("no power-rail windows were recorded", hint="rerun; check that dumpsys IPowerStats works on the phone")
    per_rep = []
    for w in windows:
        if w["run_s"] <= 0 or w["idle_s"] <= 0 or w["inferences"] < 1:
            raise MobilecError("a power-rail window has no duration or no inferences", hint="rerun with runs >= 1")
        net_mw = w["run_mj"] / w["run_s"] - w["idle_mj"] / w["idle_s"]
        per_rep.append(net_mw * w["timed_s"] / w["inferences"])
    arr = np.asarray(per_rep)
    unc = float(arr.std(ddof=1) / math.sqrt(arr.size)) if arr.size > 1 else None
    flags = list(flags)
    if unc is None:
        flags.append("one repetition: no uncertainty (run repetitions >= 2)")
    return EnergyMeasurement(method=method, mj_per_inference=float(arr.mean()), uncertainty_mj=unc,
                             inferences=int(sum(w["inferences"] for w in windows)),
                             duration_s=float(sum(w["timed_s"] for w in windows)),
                             details={"per_repetition_mj": per_rep, "windows": list(windows)}, flags=flags)


_METER_START = re.compile(r"=+\s*PowerStats HAL 2\.0 energy meter\s*=+")
_METER_END = re.compile(r"=+\s*End of PowerStats HAL 2\.0 energy meter")
_METER_LINE = re.compile(r"^\s*(\S.*?)\s+(-?[\d.]+)\s*mWs\b")


def parse_power_stats(text: str) -> dict[str, float]:
    """Cumulative energy per rail (mWs = mJ) from ``dumpsys android.hardware.power.stats.IPowerStats/default``."""
    out: dict[str, float] = {}
    inside = False
    for line in text.splitlines():
        if _METER_START.search(line):
            inside = True
            continue
        if _METER_END.search(line):
            break
        m = _METER_LINE.match(line) if inside else None
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def parse_dumpsys_battery(text: str) -> dict[str, Any]:
    """Fields of ``dumpsys battery`` (``AC powered``, ``USB powered``, ``status``, ``level``, ...) as Python values."""
    out: dict[str, Any] = {}
    for line in text.splitlines():
        if ":" not in line or line.rstrip().endswith(":"):
            continue
        key, _, value = line.strip().partition(":")
        value = value.strip()
        if value in ("true", "false"):
            out[key] = value == "true"
        else:
            try:
                out[key] = int(value)
            except ValueError:
                out[key] = value
    return out


BATTERY_STATUS = {1: "unknown", 2: "charging", 3: "discharging", 4: "not charging", 5: "full"}


def is_charging(battery: dict[str, Any]) -> bool:
    """True when any supply is plugged in or the battery says it is charging (status 2)."""
    powered = any(battery.get(k) is True for k in ("AC powered", "USB powered", "Wireless powered", "Dock powered"))
    return powered or battery.get("status") == 2
