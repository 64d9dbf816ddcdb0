"""TFLite / LiteRT exporter via ``litert_torch.convert``; int8 via litert-torch's PT2E quantizer.

>>> art = TFLiteExporter().export(model, (x[:1],), Path("out/model.tflite"))   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from mobilec.errors import ExportError
from mobilec.export import (
    check_calibration,
    error_text,
    failing_module,
    first_line,
    modules_for_ops,
    ops_in_message,
    pt2e_quantize,
    smoke_check,
    torch_export,
)
from mobilec.export.base import Artifact, ExporterBase
from mobilec.export.layers import check_layers, layer_bits, summarize, tflite_records
from mobilec.export.litert_pads import constant_pads_as_masks
from mobilec.export.tflite_names import names_note, strip_tensor_names
from mobilec.io import atomic_path
from mobilec.quant import QuantPlan


class TFLiteExporter(ExporterBase):
    """Writes a ``.tflite`` (runs on LiteRT's CPU kernels / XNNPACK delegate). int8 uses litert-torch's
    ``PT2EQuantizer`` (per-channel symmetric weights, static per-tensor activations) calibrated on the
    given real batches; the converted model then has int8 input and output tensors."""

    target = "tflite"
    suffix = ".tflite"

    def _quiet(self) -> contextlib.AbstractContextManager[None]:
        return _quiet_litert()

    def _export(self, model: nn.Module, example: torch.Tensor, out_path: Path, quant: QuantPlan | None,
                calibration: Sequence[torch.Tensor]) -> Artifact:
        import litert_torch

        notes: list[str] = []
        kwargs = {}
        t0 = time.perf_counter()
        # the graph that is converted: non-zero constant pads as zero pad + border constant (PADV2 splits
        # XNNPACK's delegated graph); ``model`` stays the eager reference and names the layers
        graph, n_pads = constant_pads_as_masks(model, example, self.target)
        if n_pads:
            notes.append(f"{n_pads} constant pad(s) with a non-zero value written as a zero PAD plus a border constant "
                         "(the same values; XNNPACK's LiteRT delegate does not take PADV2)")
        if quant is not None:
            from litert_torch.quantize import pt2e_quantizer
            from litert_torch.quantize.quant_config import QuantConfig

            batches = check_calibration(calibration, example, self.target)
            quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
                pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=quant.per_channel, is_dynamic=False))
            # litert-torch lowers the explicit quantize/dequantize ops itself: keep them unfolded
            reference: nn.Module = pt2e_quantize(graph, example, batches, quantizer, self.target, fold_quantize=False)
            reference_name = "PT2E int8 simulation (litert-torch PT2EQuantizer + convert_pt2e)"
            kwargs["quant_config"] = QuantConfig(pt2e_quantizer=quantizer)
            notes.append(f"int8: litert-torch PT2EQuantizer, {'per-channel' if quant.per_channel else 'per-tensor'} symmetric "
                         f"weights, static per-tensor activations (HistogramObserver) calibrated on {sum(len(b) for b in batches)} "
                         "real samples")
        else:
            reference = model
            reference_name = "eager model (fp32)"
        try:
            edge_model = litert_torch.convert(reference if quant is not None else graph, (example,), **kwargs)
        except Exception as exc:
            if quant is None:
                torch_export(model, example, self.target)  # a torch.export problem gets its own, clearer error
            where = failing_module(model, exc)
            ops = ops_in_message(error_text(exc))
            if not where and ops:  # the converter fails on the graph, not in a module's forward: find the op's module
                with contextlib.suppress(Exception):
                    where = ", ".join(modules_for_ops(torch_export(model, example, self.target).graph_module, ops[:3])[:3])
            raise ExportError(
                f"tflite: litert_torch.convert failed{f' in module {where}' if where else ''}"
                + (f" on op {', '.join(ops[:3])}" if ops else "") + f": {type(exc).__name__}: {first_line(exc)}",
                hint="replace that op with one LiteRT supports, or export to executorch/onnx",
            ) from exc
        with atomic_path(out_path) as tmp:
            edge_model.export(str(tmp))
        seconds = time.perf_counter() - t0

        records = tflite_records(out_path)
        names_saved = strip_tensor_names(out_path)  # after the records read the module hints from the names
        diff, session_notes = smoke_check(out_path, self.target, example, reference)
        notes += session_notes
        size = out_path.stat().st_size
        if names_saved:
            notes.append(names_note(names_saved))
        layers, problems = layer_bits(model, records)
        problems += check_layers(layers, model, file_size=size)
        if layers:
            notes.append(summarize(layers, size) + " (per-layer types read from the .tflite tensors)")
        notes += [f"layer table: {p}" for p in problems]
        ops = tflite_op_counts(out_path)
        partitions = xnnpack_partitions(out_path)
        notes.append("TFLite ops: " + ", ".join(f"{k} x{v}" for k, v in ops.items())
                     + f"; the XNNPACK delegate takes them in {partitions} partition(s)")
        notes.append(f"exported in {seconds:.1f} s; example input max |artifact - reference| = {diff:.3g}")
        delegation = {"backend": "LiteRT builtin kernels (XNNPACK delegate at run time)", "ops": ops,
                      "xnnpack_partitions": partitions}
        return Artifact(target=self.target, path=out_path, size_bytes=size, layers=layers, notes=notes, delegation=delegation,
                        reference=reference, reference_name=reference_name)


def tflite_ops_and_partitions(path: Path) -> tuple[dict[str, int], int]:
    """The file's op counts and its XNNPACK partition count."""
    return tflite_op_counts(path), xnnpack_partitions(path)


def xnnpack_partitions(path: Path) -> int:
    """The number of graph partitions the interpreter's XNNPACK delegate takes (1: the whole graph; each op
    it cannot run splits it, with a hand-over either side)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=1)
    interp.allocate_tensors()  # applies the default delegate: each partition becomes one DELEGATE node
    return sum(op["op_name"] == "DELEGATE" for op in interp._get_ops_details())


def tflite_op_counts(path: Path) -> dict[str, int]:
    """Builtin op counts of the model's main subgraph, read from the flatbuffer."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(path.read_bytes(), 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        codes.append(names.get(code, f"op{code}") if code != schema.BuiltinOperator.CUSTOM else
                     "CUSTOM:" + (oc.CustomCode() or b"?").decode())
    sg = model.Subgraphs(0)
    return dict(Counter(codes[sg.Operators(j).OpcodeIndex()] for j in range(sg.OperatorsLength())).most_common())


@contextlib.contextmanager
def _quiet_litert() -> Iterator[None]:
    """litert-torch prints a progress log per conversion stage; mobilec shows its own progress."""
    key = "LITERT_TORCH_SHOW_PROGRESS"
    old = os.environ.get(key)
    os.environ[key] = "n"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old
