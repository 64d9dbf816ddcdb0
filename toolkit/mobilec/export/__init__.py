"""Exporters: one module per target; heavy runtime imports stay inside them.

>>> exporter = get_exporter("onnx")
>>> exporter.suffix
'.onnx'

The helpers below are shared by the three exporters: batch-1 example inputs, ``torch.export``
with errors that name the failing module, PT2E calibration on real batches, and the load-and-run
smoke check every artifact passes before it is returned.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mobilec.errors import ExportError, MobilecError

if TYPE_CHECKING:
    from pathlib import Path

    from mobilec.export.base import ExporterBase

TARGETS = ("executorch", "tflite", "onnx")


def get_exporter(target: str) -> ExporterBase:
    """The exporter for ``target`` (``executorch``, ``tflite`` or ``onnx``)."""
    if target == "executorch":
        from mobilec.export.executorch import ExecuTorchExporter

        return ExecuTorchExporter()
    if target == "tflite":
        from mobilec.export.tflite import TFLiteExporter

        return TFLiteExporter()
    if target == "onnx":
        from mobilec.export.onnx import OnnxExporter

        return OnnxExporter()
    raise MobilecError(f"unknown export target {target!r}", hint=f"choose from {', '.join(TARGETS)}")


# --------------------------------------------------------------------------- shared by the exporters


def batch1_example(example_inputs: tuple[torch.Tensor, ...], target: str) -> torch.Tensor:
    """The single float NCHW example, cut to batch size 1 (artifacts are exported for one image per call)."""
    if len(example_inputs) != 1 or not isinstance(example_inputs[0], torch.Tensor):
        raise MobilecError(f"{target} export takes one example input tensor, got {len(example_inputs)} inputs",
                           hint="pass example_inputs=(x,) with x a float N×C×H×W batch")
    x = example_inputs[0]
    if not x.is_floating_point() or x.dim() < 2 or x.shape[0] < 1:
        raise MobilecError(f"{target} export needs a float example batch, got {x.dtype} of shape {tuple(x.shape)}",
                           hint="pass a real preprocessed input, e.g. dataset.x_test[:1]")
    # a fresh tensor: canonical strides even on size-1 dims (ExecuTorch records the dim order from strides)
    return torch.empty(x[:1].shape, dtype=torch.float32).copy_(x[:1].detach())


def check_calibration(calibration: Sequence[torch.Tensor], example: torch.Tensor, target: str) -> list[torch.Tensor]:
    batches = [b.detach().float() for b in calibration]
    if not batches:
        raise MobilecError(f"int8 {target} export needs real calibration batches, none were given",
                           hint="pass calibration=dataset.calibration_batches(n, batch_size)")
    for b in batches:
        if tuple(b.shape[1:]) != tuple(example.shape[1:]):
            raise MobilecError(f"calibration batch of shape {tuple(b.shape)} does not match the example input {tuple(example.shape)}",
                               hint="calibrate on data preprocessed like the example input")
    return batches


def failing_module(model: nn.Module, exc: BaseException) -> str | None:
    """The innermost module of ``model`` whose ``forward`` is on the traceback of ``exc`` (or its causes)."""
    names = {id(m): name or "<root>" for name, m in model.named_modules()}
    found = None
    for e in _chain(exc):
        tb = e.__traceback__
        while tb is not None:
            owner = tb.tb_frame.f_locals.get("self")
            if isinstance(owner, nn.Module) and id(owner) in names:
                found = names[id(owner)]
            tb = tb.tb_next
        if found:
            return found
    return found


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def ops_in_message(text: str) -> list[str]:
    """Operator names (``aten.foo.default`` / ``aten::foo``) quoted in an error message."""
    found = re.findall(r"\b(?:aten|quantized_decomposed|torchao|prims)(?:\.|::)[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?", text)
    ops = list(dict.fromkeys(f.replace("::", ".") for f in found))
    return [op for op in ops if not any(other.startswith(op + ".") for other in ops)]  # aten.abs with aten.abs.default


def modules_using(graph_module: Any, op: str) -> list[str]:
    """Module paths (from ``nn_module_stack``) of the nodes calling ``op`` in an exported graph."""
    from mobilec.export.layers import op_name

    out = []
    for node in graph_module.graph.nodes:
        if node.op == "call_function" and op_name(node.target).startswith(op.removesuffix(".default")):
            stack = node.meta.get("nn_module_stack") or {}
            if stack:
                out.append(list(stack.values())[-1][0] or "<root>")
    return list(dict.fromkeys(out))


def modules_for_ops(graph_module: Any, ops: Sequence[str]) -> list[str]:
    """Module paths of the nodes calling any of ``ops`` in a graph, matched on the bare op name.

    Namespaces, overloads and underscores are ignored, so ``prims.erf_inv.default`` (what a
    converter reports after decomposition) finds the ``aten.erfinv.default`` node the model called.
    """
    from mobilec.export.layers import op_name

    wanted = {_bare_op(op) for op in ops}
    out = []
    for node in graph_module.graph.nodes:
        if node.op == "call_function" and _bare_op(op_name(node.target)) in wanted:
            stack = node.meta.get("nn_module_stack") or {}
            if stack:
                out.append(list(stack.values())[-1][0] or "<root>")
    return list(dict.fromkeys(out))


def _bare_op(op: str) -> str:
    parts = op.replace("::", ".").split(".")
    if len(parts) > 1 and parts[0] in ("aten", "prims", "quantized_decomposed", "torchao", "edge"):
        parts = parts[1:]
    return parts[0].replace("_", "").lower()


def error_text(exc: BaseException) -> str:
    """The messages of ``exc`` and its causes, ANSI colour codes removed."""
    return re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(str(e) for e in _chain(exc)))


def first_line(exc: BaseException, limit: int = 300) -> str:
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:limit]


def torch_export(model: nn.Module, example: torch.Tensor, target: str, *, dynamic_batch: bool = False) -> Any:
    """``torch.export.export`` with an ExportError naming the module and the problem on failure; eval-mode
    dropout (the identity) is removed from the graph (see ``drop_inference_identities``)."""
    args = (example,)
    dynamic_shapes = None
    if dynamic_batch:
        args = (torch.cat([example, example]),)  # a batch of 2: torch.export specialises batch 1
        dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=65536)},)
    try:
        with torch.no_grad(), _quiet_torch_logs():
            program = torch.export.export(model, args, dynamic_shapes=dynamic_shapes)
        drop_inference_identities(program.graph_module)
        return program
    except Exception as exc:
        if dynamic_batch:
            raise
        where = failing_module(model, exc)
        text = str(exc)
        ops = ops_in_message(text)
        hint = ("make forward traceable: static shapes, no Python branching on tensor values (.item(), if x.sum() > 0), "
                "no numpy / Python-side tensor conversion; move data-dependent logic out of the model")
        raise ExportError(
            f"{target}: torch.export failed in module {where or '(unknown)'}"
            + (f" at op {', '.join(ops[:3])}" if ops else "") + f": {type(exc).__name__}: {first_line(exc)}",
            hint=hint,
        ) from exc


@contextlib.contextmanager
def _quiet_torch_logs() -> Iterator[None]:
    """torch.export logs whole graphs on a failed guard; the ExportError says what matters."""
    loggers = [logging.getLogger(name) for name in ("torch.fx.experimental.symbolic_shapes", "torch._subclasses.fake_tensor")]
    old = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, old, strict=True):
            lg.setLevel(level)


def pt2e_quantize(model: nn.Module, example: torch.Tensor, calibration: list[torch.Tensor], quantizer: Any, target: str,
                  *, fold_quantize: bool = True) -> nn.Module:
    """PT2E static int8: export (dynamic batch where possible), ``prepare_pt2e``, calibrate, ``convert_pt2e``.

    The returned module is the eager int8 simulation (quantize/dequantize around fp32 ops) the
    artifact must match. Calibration feeds the real batches whole when the graph takes a dynamic
    batch, else one sample at a time.
    """
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    def prepare(per_sample: bool) -> Any:
        ep = torch_export(model, example, target, dynamic_batch=not per_sample)
        try:
            prepared = prepare_pt2e(ep.module(), quantizer)
        except Exception as exc:
            raise ExportError(f"{target}: the int8 quantizer cannot annotate the model: {type(exc).__name__}: {first_line(exc)}",
                              hint="export fp32 (drop the ptq pass) or replace the op named above") from exc
        with torch.no_grad():
            for batch in calibration:
                for i in range(len(batch)) if per_sample else (None,):
                    prepared(batch if i is None else batch[i:i + 1])
        return prepared

    try:  # whole batches through a dynamic-batch graph: fast
        prepared = prepare(per_sample=False)
    except ExportError:
        raise
    except Exception:  # the model does not export with a dynamic batch (e.g. a hard-coded view(1, -1))
        prepared = prepare(per_sample=True)
    try:
        converted = convert_pt2e(prepared, fold_quantize=fold_quantize)
    except Exception as exc:
        raise ExportError(f"{target}: convert_pt2e failed: {type(exc).__name__}: {first_line(exc)}") from exc
    converted = move_exported_model_to_eval(converted)
    for m in converted.modules():  # the graph was exported in eval mode; set the flag converters check
        m.training = False
    return converted


_IDENTITY_AT_INFERENCE = ("aten.dropout.default", "aten.alpha_dropout.default", "aten.feature_dropout.default",
                          "aten.feature_alpha_dropout.default")


def drop_inference_identities(graph_module: torch.fx.GraphModule) -> int:
    """Remove eval-mode dropout nodes (the identity) from an exported graph; returns how many.

    Left in place, a quantizer that does not annotate dropout gives the next layer's input its
    own observer: the int8 graph then requantizes between two scales (q -> dq -> dropout -> q).
    LiteRT's converter merges such a chain into the first scale, so its artifact silently
    departs from the PT2E simulation it is verified against (measured on the default
    MobileNetV2: top-1 agreement 0.981 with the chain, 0.9945 without it); onnxruntime's
    optimizer likewise removes Dropout nodes between Q/DQ pairs that its unoptimized QDQ
    simulation keeps.
    """
    removed = 0
    for node in list(graph_module.graph.nodes):
        if node.op != "call_function" or str(node.target) not in _IDENTITY_AT_INFERENCE:
            continue
        train = node.args[2] if len(node.args) > 2 else node.kwargs.get("train", False)
        if train is not False:
            continue
        node.replace_all_uses_with(node.args[0])
        graph_module.graph.erase_node(node)
        removed += 1
    if removed:
        graph_module.graph.lint()
        graph_module.recompile()
    return removed


def smoke_check(
    path: Path, target: str, example: torch.Tensor, reference: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[float, list[str]]:
    """Load the written artifact in its runtime and run the example: a file that cannot run is an ExportError.

    Returns (max abs difference to ``reference`` on the example, the session's notes).
    """
    import numpy as np

    from mobilec.runtimes import open_artifact

    try:
        session = open_artifact(path)
        out = session.run(example.numpy())
    except MobilecError as exc:
        path.unlink(missing_ok=True)
        raise ExportError(f"{target}: the written artifact does not run in its runtime: {exc.problem}",
                          hint="this is an exporter/runtime bug or a missing kernel; report it with the model") from None
    with torch.no_grad():
        ref = reference(example).float().numpy()
    if out.shape != ref.shape:
        path.unlink(missing_ok=True)
        raise ExportError(f"{target}: the artifact returns shape {out.shape}, the model {ref.shape}")
    return float(np.abs(out - ref).max()), list(session.notes)


class _CallableModule(types.ModuleType):
    """``mobilec.export`` is both this package and the API function ``mobilec.export(recipe, ...)``.

    Importing the package replaces the function attribute on ``mobilec``; making the package
    callable keeps ``mobilec.export("int8", model=...)`` working afterwards (as mobilec.profile does).
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from mobilec.api import export as api_export

        return api_export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
