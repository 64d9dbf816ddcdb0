"""ExecuTorch exporter: ``torch.export`` → (int8: XNNPACK PT2E quantizer) → XNNPACK-lowered ``.pte``.

>>> art = ExecuTorchExporter().export(model, (x[:1],), Path("out/model.pte"))   # doctest: +SKIP
>>> art.delegation                                                              # doctest: +SKIP
{'backend': 'XNNPACK', 'delegated': 181, 'total': 181, 'subgraphs': 1, 'not_delegated': {}}
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobilec.errors import ExportError
from mobilec.export import (
    check_calibration,
    error_text,
    first_line,
    modules_for_ops,
    modules_using,
    ops_in_message,
    pt2e_quantize,
    smoke_check,
    torch_export,
)
from mobilec.export.base import Artifact, ExporterBase
from mobilec.export.layers import check_layers, layer_bits, op_name, pte_records, summarize
from mobilec.io import atomic_path
from mobilec.quant import QuantPlan

_NOT_OPS = ("getitem", "executorch_call_delegate")


class ExecuTorchExporter(ExporterBase):
    """Writes an XNNPACK-delegated ``.pte``; int8 uses ``XNNPACKQuantizer`` (per-channel symmetric
    weights, static per-tensor activations) calibrated on the given real batches."""

    target = "executorch"
    suffix = ".pte"

    def _export(self, model: nn.Module, example: torch.Tensor, out_path: Path, quant: QuantPlan | None,
                calibration: Sequence[torch.Tensor]) -> Artifact:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        notes: list[str] = []
        t0 = time.perf_counter()
        if quant is not None:
            from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
                XNNPACKQuantizer,
                get_symmetric_quantization_config,
            )

            batches = check_calibration(calibration, example, self.target)
            quantizer = XNNPACKQuantizer().set_global(
                get_symmetric_quantization_config(is_per_channel=quant.per_channel, is_dynamic=False))
            reference: nn.Module = pt2e_quantize(model, example, batches, quantizer, self.target)
            reference_name = "PT2E int8 simulation (XNNPACKQuantizer + convert_pt2e)"
            n_cal = sum(len(b) for b in batches)
            notes.append(f"int8: XNNPACKQuantizer, {'per-channel' if quant.per_channel else 'per-tensor'} symmetric weights, "
                         f"static per-tensor activations (HistogramObserver) calibrated on {n_cal} real samples")
        else:
            reference = model
            reference_name = "eager model (fp32)"
        ep = torch_export(reference, example, self.target)
        try:
            edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
        except Exception as exc:
            raise _lowering_error(exc, ep, "to_edge_transform_and_lower") from exc
        lowered = edge.exported_program()
        delegation = delegation_report(lowered.graph_module)
        records = pte_records(lowered)
        try:
            program = edge.to_executorch()
        except Exception as exc:
            raise _lowering_error(exc, ep, "to_executorch") from exc
        with atomic_path(out_path) as tmp:
            tmp.write_bytes(program.buffer)
        seconds = time.perf_counter() - t0

        diff, session_notes = smoke_check(out_path, self.target, example, reference)
        notes += session_notes
        layers, problems = layer_bits(model, records)
        size = out_path.stat().st_size
        problems += check_layers(layers, model, file_size=size)
        if layers:
            notes.append(summarize(layers, size) + " (per-layer types read from the lowered graph"
                         + ("; XNNPACK stores int8 weights with fp32 per-channel scales and int32 bias)" if quant else ")"))
        notes += [f"layer table: {p}" for p in problems]
        if delegation["not_delegated"]:
            ops = ", ".join(f"{k} x{v}" for k, v in delegation["not_delegated"].items())
            notes.append(f"ops left on ExecuTorch portable kernels (slower, fp32): {ops}")
        notes.append(f"exported in {seconds:.1f} s; example input max |artifact - reference| = {diff:.3g}")
        return Artifact(target=self.target, path=out_path, size_bytes=size, layers=layers, delegation=delegation,
                        notes=notes, reference=reference, reference_name=reference_name)


def delegation_report(graph_module: Any) -> dict[str, Any]:
    """Ops inside XNNPACK delegates vs ops left in the top-level graph (portable kernels), by name.

    ``getitem`` (tuple unpacking) is not an op and is not counted.
    """
    delegated: Counter[str] = Counter()
    outside: Counter[str] = Counter()
    backends: set[str] = set()
    subgraphs = 0
    for node in graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        name = op_name(node.target)
        if "executorch_call_delegate" in name:
            lowered = getattr(graph_module, node.args[0].target)
            backends.add(str(getattr(lowered, "backend_id", "?")).removesuffix("Backend"))
            subgraphs += 1
            for inner in lowered.original_module.graph.nodes:
                if inner.op == "call_function" and not _skip(op_name(inner.target)):
                    delegated[op_name(inner.target)] += 1
        elif not _skip(name):
            outside[name] += 1
    n_in, n_out = sum(delegated.values()), sum(outside.values())
    return {
        "backend": "/".join(sorted(backends)).upper() or "XNNPACK",
        "delegated": n_in,
        "total": n_in + n_out,
        "subgraphs": subgraphs,
        "not_delegated": dict(outside.most_common()),
        "not_delegated_in": {op: modules_using(graph_module, op) for op in outside},  # module paths, to know what to change
    }


def _skip(name: str) -> bool:
    return any(s in name for s in _NOT_OPS)


def _lowering_error(exc: Exception, ep: Any, stage: str) -> ExportError:
    ops = ops_in_message(error_text(exc))
    where = modules_for_ops(ep.graph_module, ops[:3])
    return ExportError(
        f"executorch: {stage} failed"
        + (f" on op {', '.join(ops[:3])}" if ops else "")
        + (f" in module {', '.join(where[:3])}" if where else "")
        + f": {type(exc).__name__}: {first_line(exc)}",
        hint="replace that op with one ExecuTorch supports (see the ExecuTorch op coverage list) or export to tflite/onnx",
    )
