"""ONNX exporter: ``torch.onnx.export(dynamo=True)``; int8 via onnxruntime's static QDQ quantization.

>>> art = OnnxExporter().export(model, (x[:1],), Path("out/model.onnx"))   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mobilec.errors import ExportError, MobilecError
from mobilec.export import (
    check_calibration,
    error_text,
    first_line,
    modules_for_ops,
    ops_in_message,
    smoke_check,
    torch_export,
)
from mobilec.export.base import Artifact, ExporterBase
from mobilec.export.layers import check_layers, layer_bits, onnx_records, ort_int8_weights, summarize
from mobilec.io import atomic_path
from mobilec.quant import QuantPlan

OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


class OnnxExporter(ExporterBase):
    """Writes a static batch-1 ``.onnx`` (opset 18) checked by ``onnx.checker``.

    int8 runs onnxruntime's ``quantize_static`` (QDQ format, per-channel symmetric int8 weights,
    int8 activations, MinMax calibration over the given real batches), with ORT's ``reduce_range``
    (7-bit weights) so hosts without VNNI do not saturate. ORT's calibrator is not
    PT2E's, so the int8 reference is the QDQ graph of the same file evaluated op by op in float
    (onnxruntime with graph optimizations off): the simulation ORT's fused int8 kernels must match.
    The fp32 graph is first checked against the eager model on the calibration samples.
    """

    target = "onnx"
    suffix = ".onnx"

    def _export(self, model: nn.Module, example: torch.Tensor, out_path: Path, quant: QuantPlan | None,
                calibration: Sequence[torch.Tensor]) -> Artifact:
        import onnx

        notes: list[str] = []
        t0 = time.perf_counter()
        batches = check_calibration(calibration, example, self.target) if quant is not None else []
        with tempfile.TemporaryDirectory(prefix="mobilec-onnx-") as tmpdir:
            fp32_path = Path(tmpdir) / "fp32.onnx"
            _export_fp32(model, example, fp32_path)
            if quant is None:
                final = fp32_path
                reference: Any = model
                reference_name = "eager model (fp32)"
            else:
                max_err = _check_fp32_graph(fp32_path, model, batches)
                notes.append(f"fp32 ONNX graph matches the eager model on the calibration samples (max |diff| {max_err:.3g}) "
                             "before quantization")
                final = Path(tmpdir) / "int8.onnx"
                n_cal = _quantize_static(fp32_path, final, batches, per_channel=quant.per_channel, tmpdir=Path(tmpdir))
                reference = QdqReference(final.read_bytes())
                reference_name = "QDQ float simulation of the same .onnx (onnxruntime, graph optimizations off)"
                notes.append(f"int8: onnxruntime quantize_static, QDQ, {'per-channel' if quant.per_channel else 'per-tensor'} "
                             f"symmetric weights, int8 activations, MinMax calibration on {n_cal} real samples "
                             "(ORT's calibrator differs from the PT2E observers of the .pte/.tflite, so scales differ)")
                notes.append("weights use ORT's reduce_range (7-bit grid [-64, 64] in int8): with the full 8-bit range, x86 CPUs "
                             "without VNNI (AVX2 VPMADDUBSW) saturate int16 sums, so the host would compute something other "
                             "than an ARM phone; with 7-bit weights every CPU computes the QDQ simulation up to rounding")
            stripped = _strip_debug_metadata(final)
            notes.append(f"removed {stripped} bytes of exporter debug metadata (stack traces, module scopes) from the nodes")
            try:
                onnx.checker.check_model(str(final), full_check=True)
            except Exception as exc:
                raise ExportError(f"onnx: the exported model fails onnx.checker: {first_line(exc)}") from exc
            with atomic_path(out_path) as tmp:
                tmp.write_bytes(final.read_bytes())
        seconds = time.perf_counter() - t0

        diff, session_notes = smoke_check(out_path, self.target, example, reference)
        notes += session_notes
        size = out_path.stat().st_size
        int8_weights = _ort_int8_weights(out_path) if quant is not None else None
        layers, problems = layer_bits(model, onnx_records(out_path, int8_weights))
        problems += check_layers(layers, model, file_size=size)
        if layers:
            notes.append(summarize(layers, size) + " (stored types from the ONNX initializers; executed types from "
                         "onnxruntime's optimized graph on this host's CPU, which may differ on ARM)")
        notes += [f"layer table: {p}" for p in problems]
        notes.append(f"exported in {seconds:.1f} s; example input max |artifact - reference| = {diff:.3g}")
        return Artifact(target=self.target, path=out_path, size_bytes=size, layers=layers, notes=notes,
                        reference=reference, reference_name=reference_name)


class QdqReference:
    """A QDQ ``.onnx`` run by onnxruntime with every graph optimization off: Q/DQ and float ops one by one,
    i.e. the int8 simulation. Callable like a torch module on a float NCHW batch (any batch size)."""

    def __init__(self, model_bytes: bytes) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 3
        self._sess = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
        self._name = self._sess.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float().numpy()
        outs = [self._sess.run(None, {self._name: np.ascontiguousarray(x[i:i + 1])})[0] for i in range(len(x))]
        return torch.from_numpy(np.concatenate(outs))


def _export_fp32(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    ep = torch_export(model, example, "onnx")
    try:
        with _quiet():
            program = torch.onnx.export(ep, (example,), dynamo=True, opset_version=OPSET, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME], external_data=False, verbose=False)
        program.save(str(path), external_data=False)
    except Exception as exc:
        text = error_text(exc)
        ops = ops_in_message(text)
        where = modules_for_ops(ep.graph_module, ops[:3])
        missing = re.search(r"No ONNX function found for <OpOverload\(op='([^']+)'", text)
        raise ExportError(
            "onnx: torch.onnx.export failed"
            + (f" on op {', '.join(ops[:3])}" if ops else "")
            + (f" in module {', '.join(where[:3])}" if where else "")
            + (f": no ONNX translation for {missing.group(1)}" if missing else f": {type(exc).__name__}: {first_line(exc)}"),
            hint="replace that op in the named module with a standard one (or compute it outside the model), "
                 "or export to executorch/tflite",
        ) from exc


def _strip_debug_metadata(path: Path) -> int:
    """Drop per-node metadata_props / doc strings (torch.onnx stack traces): runtimes never read them."""
    import onnx

    model = onnx.load(str(path))
    before = model.ByteSize()
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    onnx.save(model, str(path))
    return before - model.ByteSize()


def _check_fp32_graph(path: Path, model: nn.Module, batches: list[torch.Tensor], limit: int = 64) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    samples = torch.cat(batches)[:limit]
    with torch.no_grad():
        ref = model(samples).float().numpy()
    out = np.concatenate([sess.run(None, {INPUT_NAME: samples[i:i + 1].numpy()})[0] for i in range(len(samples))])
    err = float(np.abs(out - ref).max())
    scale = float(np.abs(ref).max()) or 1.0
    if err > 1e-3 * scale + 1e-4:
        raise ExportError(f"onnx: the fp32 ONNX graph disagrees with the eager model (max |diff| {err:.3g} on logits up to {scale:.3g})",
                          hint="an op was translated wrongly; report it with the model, or export to executorch/tflite")
    return err


def _quantize_static(src: Path, dst: Path, batches: list[torch.Tensor], *, per_channel: bool, tmpdir: Path) -> int:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    samples = [b[i:i + 1].numpy() for b in batches for i in range(len(b))]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(samples)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self._it, None)
            return None if x is None else {INPUT_NAME: x}

    pre = tmpdir / "pre.onnx"
    try:
        with _quiet():
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
            quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, reduce_range=True,
                            extra_options={"WeightSymmetric": True})
    except MobilecError:
        raise
    except Exception as exc:
        raise ExportError(f"onnx: onnxruntime quantize_static failed: {type(exc).__name__}: {first_line(exc)}",
                          hint="export fp32 ONNX (drop the ptq pass) or use the executorch/tflite target for int8") from exc
    return len(samples)


def _ort_int8_weights(path: Path) -> set[str]:
    from mobilec.runtimes import OnnxSession

    with tempfile.TemporaryDirectory(prefix="mobilec-ort-") as tmpdir:
        opt = Path(tmpdir) / "optimized.onnx"
        OnnxSession(path, 1, optimized_model_path=opt)
        return ort_int8_weights(opt)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torch.onnx and the ORT quantization tools print progress lines; mobilec shows its own."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield
