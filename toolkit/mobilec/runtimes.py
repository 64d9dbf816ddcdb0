"""Run an exported artifact in its own runtime: ExecuTorch (.pte), LiteRT (.tflite), onnxruntime (.onnx).

``open_artifact`` checks the file (exists, non-empty, right magic bytes, not truncated) *before*
handing it to a native runtime, which may crash or answer cryptically on garbage, and picks
the runtime from the file's content; a suffix that disagrees with the content is an error.

>>> session = open_artifact(Path("run/model.tflite"))          # doctest: +SKIP
>>> session.run(np.zeros(session.input_shape, np.float32)).shape  # doctest: +SKIP
(1, 10)
"""

from __future__ import annotations

import re
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mobilec.errors import MobilecError

SUFFIXES = {"executorch": ".pte", "tflite": ".tflite", "onnx": ".onnx"}
_REEXPORT = "re-export it with `mobilec export`"


class RuntimeSession:
    """A loaded artifact. ``run`` takes a float32 batch of exactly ``input_shape`` and returns float32 logits.

    Artifacts are exported with batch size 1 (what apps use); :func:`run_batched` loops over samples.
    """

    target: str = ""

    def __init__(self, path: Path, input_shape: tuple[int, ...], load_seconds: float) -> None:
        self.path = path
        self.input_shape = input_shape
        self.load_seconds = load_seconds
        self.notes: list[str] = []

    def run(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if tuple(x.shape) != self.input_shape:
            raise MobilecError(
                f"{self.path.name} takes input of shape {self.input_shape}, got {tuple(x.shape)}",
                hint="feed one batch of the artifact's batch size (run_batched loops over samples)",
            )
        return np.asarray(self._run(x), dtype=np.float32)

    def _run(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path.name}, input_shape={self.input_shape})"


class ExecuTorchSession(RuntimeSession):
    target = "executorch"

    def __init__(self, path: Path, threads: int) -> None:
        from executorch.runtime import Runtime  # imported before the clock starts: load time is the file's

        t0 = time.perf_counter()

        try:
            program = Runtime.get().load_program(path)
            if "forward" not in program.method_names:
                raise MobilecError(f"{path} has no 'forward' method (methods: {sorted(program.method_names)})", hint=_REEXPORT)
            self._method = program.load_method("forward")
        except MobilecError:
            raise
        except Exception as exc:  # the pybindings raise RuntimeError with an error code
            raise MobilecError(f"ExecuTorch cannot load {path}: {_first_line(exc)}",
                               hint="the file is corrupted or needs kernels this runtime lacks; " + _REEXPORT) from None
        self._program = program
        meta = self._method.metadata
        if meta.num_inputs() != 1:
            raise MobilecError(f"{path} takes {meta.num_inputs()} inputs; mobilec runs single-input image models")
        shape = tuple(int(s) for s in meta.input_tensor_meta(0).sizes())
        super().__init__(path, shape, time.perf_counter() - t0)
        global _ET_SESSIONS_OPENED
        _ET_SESSIONS_OPENED += 1
        self.threads = executorch_threads()
        if self.threads != threads:
            self.notes.append(f"ExecuTorch runs on its process-wide pool of {self.threads} threads (asked for {threads}); "
                              "size it with set_executorch_threads() before loading any .pte, or use a fresh process")

    def _run(self, x: np.ndarray) -> np.ndarray:
        import torch

        # a fresh tensor has canonical strides: numpy and torch call an array with size-1 dims
        # "contiguous" whatever those dims' strides are, and ExecuTorch reads the dim order from them
        t = torch.empty(x.shape, dtype=torch.float32)
        t.numpy()[...] = x
        out = self._method.execute((t,))
        return out[0].detach().numpy()


class TFLiteSession(RuntimeSession):
    """LiteRT interpreter (XNNPACK delegate by default). int8 input/output tensors are quantized and
    dequantized here with the tensor's own scale/zero-point, so float callers work unchanged."""

    target = "tflite"

    def __init__(self, path: Path, threads: int) -> None:
        from ai_edge_litert.interpreter import Interpreter

        t0 = time.perf_counter()

        try:
            self._interp = Interpreter(model_path=str(path), num_threads=threads)
            self._interp.allocate_tensors()
        except Exception as exc:
            raise MobilecError(f"LiteRT cannot load {path}: {_first_line(exc)}", hint="the file is corrupted; " + _REEXPORT) from None
        inputs, outputs = self._interp.get_input_details(), self._interp.get_output_details()
        if len(inputs) != 1 or len(outputs) < 1:
            raise MobilecError(f"{path} has {len(inputs)} inputs and {len(outputs)} outputs; mobilec runs single-input models")
        self._in, self._out = inputs[0], outputs[0]
        super().__init__(path, tuple(int(s) for s in self._in["shape"]), time.perf_counter() - t0)
        self._in_q = _qparams(self._in)
        self._out_q = _qparams(self._out)
        if self._in_q:
            self.notes.append(
                f"input tensor is {np.dtype(self._in['dtype']).name} (scale={self._in_q[0]:.6g}, zero_point={self._in_q[1]}): "
                "an app quantizes q = round(x/scale) + zero_point; this session does it for you"
            )
        if self._out_q:
            self.notes.append(
                f"output tensor is {np.dtype(self._out['dtype']).name} (scale={self._out_q[0]:.6g}, zero_point={self._out_q[1]}): "
                "logits = (q - zero_point) * scale; this session dequantizes for you"
            )

    @property
    def interpreter(self) -> Any:
        return self._interp

    def _run(self, x: np.ndarray) -> np.ndarray:
        dtype = np.dtype(self._in["dtype"])
        if self._in_q:
            scale, zp = self._in_q
            info = np.iinfo(dtype)
            x = np.clip(np.rint(x / scale) + zp, info.min, info.max).astype(dtype)
        elif dtype != np.float32:
            raise MobilecError(f"{self.path} has a {dtype.name} input without quantization parameters",
                               hint="export with float or quantized int8 input")
        self._interp.set_tensor(self._in["index"], x)
        self._interp.invoke()
        out = self._interp.get_tensor(self._out["index"])
        if self._out_q:
            scale, zp = self._out_q
            out = (out.astype(np.float32) - zp) * scale
        return out


class OnnxSession(RuntimeSession):
    target = "onnx"

    def __init__(self, path: Path, threads: int, *, optimized_model_path: Path | None = None) -> None:
        import onnxruntime as ort

        t0 = time.perf_counter()

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        if optimized_model_path is not None:
            opts.optimized_model_filepath = str(optimized_model_path)
        try:
            self._sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise MobilecError(f"onnxruntime cannot load {path}: {_first_line(exc)}", hint="the file is corrupted; " + _REEXPORT) from None
        inputs = self._sess.get_inputs()
        if len(inputs) != 1:
            raise MobilecError(f"{path} has {len(inputs)} inputs; mobilec runs single-input image models")
        shape = inputs[0].shape
        if not all(isinstance(s, int) for s in shape):
            raise MobilecError(f"{path} has a dynamic input shape {shape}", hint="export with a static batch-1 input")
        self._input_name = inputs[0].name
        super().__init__(path, tuple(shape), time.perf_counter() - t0)

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self._sess.run(None, {self._input_name: x})[0]


def detect_target(path: Path) -> str:
    """Which runtime ``path`` is for, from its content; checks size, magic bytes and truncation.

    Raises MobilecError naming the file and what is wrong for a missing, empty, truncated or
    unrecognised file, or for a suffix (.pte/.tflite/.onnx) that disagrees with the content.
    """
    path = Path(path)
    if not path.exists():
        raise MobilecError(f"artifact {path} does not exist", hint="check the path")
    if not path.is_file():
        raise MobilecError(f"artifact {path} is not a file", hint="pass a .pte, .tflite or .onnx file")
    size = path.stat().st_size
    if size == 0:
        raise MobilecError(f"artifact {path} is empty (0 bytes)", hint="the export was interrupted; " + _REEXPORT)
    with path.open("rb") as f:
        head = f.read(64)
    if len(head) >= 8 and re.fullmatch(rb"ET\d\d", head[4:8]):
        target = "executorch"
        _check_pte(path, head, size)
    elif len(head) >= 8 and head[4:8] == b"TFL3":
        target = "tflite"
        _check_tflite(path)
    else:
        target = "onnx"
        _check_onnx(path, head)
    suffix = path.suffix.lower()
    if suffix in SUFFIXES.values() and suffix != SUFFIXES[target]:
        raise MobilecError(f"{path} holds a {target} model but is named {suffix}",
                           hint=f"rename it to {path.with_suffix(SUFFIXES[target]).name}")
    return target


def open_artifact(path: Path, *, threads: int = 1) -> RuntimeSession:
    """Load ``path`` in its runtime (ExecuTorch / LiteRT / onnxruntime on CPU with ``threads`` threads)."""
    path = Path(path)
    if threads < 1:
        raise MobilecError(f"threads must be at least 1, got {threads}")
    target = detect_target(path)
    session_cls: dict[str, Callable[[Path, int], RuntimeSession]] = {
        "executorch": ExecuTorchSession, "tflite": TFLiteSession, "onnx": OnnxSession,
    }
    return session_cls[target](path, threads)


def run_batched(session: RuntimeSession, x: np.ndarray, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Run ``x`` (N samples) through ``session`` in chunks of the artifact's batch size; ``progress(k)`` after each."""
    x = np.asarray(x, dtype=np.float32)
    batch = session.input_shape[0]
    if tuple(x.shape[1:]) != tuple(session.input_shape[1:]):
        raise MobilecError(f"{session.path.name} takes samples of shape {session.input_shape[1:]}, got {tuple(x.shape[1:])}",
                           hint="feed data preprocessed like the training data (same channels and size)")
    outs = []
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch]
        n = len(chunk)
        if n < batch:  # pad the last chunk, keep only the real rows
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
        outs.append(session.run(chunk)[:n])
        if progress is not None:
            progress(n)
    return np.concatenate(outs) if outs else np.zeros((0,), np.float32)


# --------------------------------------------------------------------------- file checks


def _check_pte(path: Path, head: bytes, size: int) -> None:
    root = int.from_bytes(head[0:4], "little")
    if root >= size:
        raise MobilecError(f"{path} is truncated or corrupted: its flatbuffer root offset {root} lies past the end ({size} bytes)",
                           hint=_REEXPORT)
    if head[8:12] == b"eh00":  # the extended header: program size, segment offset and size
        program_size = int.from_bytes(head[16:24], "little")
        seg_offset = int.from_bytes(head[24:32], "little")
        seg_size = int.from_bytes(head[32:40], "little") if int.from_bytes(head[12:16], "little") >= 32 else 0
        need = max(program_size, seg_offset + seg_size if seg_offset else 0)
        if size < need:
            raise MobilecError(f"{path} is truncated: its header says {need} bytes, the file has {size}",
                               hint="the copy or download was cut short; copy the file again or " + _REEXPORT)


def _check_tflite(path: Path) -> None:
    """Walk the flatbuffer (subgraphs, tensors, buffers) and check every offset lies inside the file."""
    from ai_edge_litert import schema_py_generated as schema

    data = path.read_bytes()
    size = len(data)
    try:
        model = schema.Model.GetRootAsModel(data, 0)
        n_buffers = model.BuffersLength()
        for i in range(model.SubgraphsLength()):
            sg = model.Subgraphs(i)
            for t in range(sg.TensorsLength()):
                if sg.Tensors(t).Buffer() >= n_buffers:
                    raise ValueError(f"tensor {t} points at buffer {sg.Tensors(t).Buffer()} of {n_buffers}")
        for b in range(n_buffers):
            buf = model.Buffers(b)
            if buf.Offset() > 1:  # weights stored after the flatbuffer (large models)
                if buf.Offset() + buf.Size() > size:
                    raise ValueError(f"buffer {b} ends at byte {buf.Offset() + buf.Size()}")
            elif buf.DataLength() and buf._tab.Vector(buf._tab.Offset(4)) + buf.DataLength() > size:
                raise ValueError(f"buffer {b} runs past the end")
    except struct.error:
        raise MobilecError(f"{path} is truncated or corrupted: a flatbuffer offset points past its end ({size} bytes)",
                           hint="copy the file again or " + _REEXPORT) from None
    except (IndexError, ValueError, TypeError) as exc:
        raise MobilecError(f"{path} is truncated or corrupted ({size} bytes; {_first_line(exc)})",
                           hint="copy the file again or " + _REEXPORT) from None


def _check_onnx(path: Path, head: bytes) -> None:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        looks_onnx = path.suffix.lower() == ".onnx"
        what = "a truncated or corrupted ONNX file" if looks_onnx else "not an ExecuTorch, TFLite or ONNX file"
        raise MobilecError(f"{path} is {what} ({_first_line(exc)}; first bytes {head[:8].hex(' ')})",
                           hint="pass a .pte, .tflite or .onnx produced by an exporter, or " + _REEXPORT) from None
    # protobuf parses many byte strings: an ONNX model must at least have a graph with nodes and I/O
    if model.ir_version <= 0 or not model.graph.node or not model.graph.input or not model.graph.output:
        raise MobilecError(
            f"{path} is not a usable model: no ExecuTorch ('ET..') or TFLite ('TFL3') identifier at byte 4, "
            f"and as ONNX it has ir_version={model.ir_version}, {len(model.graph.node)} nodes",
            hint="pass a .pte, .tflite or .onnx produced by an exporter, or " + _REEXPORT,
        )


_ET_SESSIONS_OPENED = 0  # ExecuTorch programs loaded in this process (their XNNPACK runtimes hold the pool)


def executorch_threads() -> int:
    """Threads in ExecuTorch's process-wide pool (XNNPACK uses it; portable kernels run on one thread), -1 if unknown."""
    try:
        from executorch.extension.pybindings import portable_lib
    except ImportError:
        return -1
    get = getattr(portable_lib, "_threadpool_get_thread_count", None)
    return int(get()) if get is not None else -1


def set_executorch_threads(threads: int) -> int:
    """Size ExecuTorch's process-wide thread pool; returns the size in effect.

    Call it first thing in a process, before any ExecuTorch program is loaded or lowered: resizing
    a pool an XNNPACK runtime has used crashed (pthread assertion, segfault) or deadlocked in our
    tests even after that runtime was released. Once this process has opened an ExecuTorch
    artifact, a different size is refused with a MobilecError (use a fresh process per thread count).
    """
    current = executorch_threads()
    if current == threads or current == -1:
        return current
    if _ET_SESSIONS_OPENED:
        raise MobilecError(
            f"ExecuTorch's thread pool already runs {current} threads in this process and cannot be resized safely",
            hint=f"measure {threads} thread(s) in a fresh process (size the pool before loading any .pte)",
        )
    from executorch.extension.pybindings import portable_lib

    portable_lib._unsafe_reset_threadpool(threads)
    return executorch_threads()


_set_executorch_threads = set_executorch_threads  # the name bench/tac.py and tests/test_tac_export.py import


def _qparams(detail: dict[str, Any]) -> tuple[float, int] | None:
    """(scale, zero_point) of a quantized (int8/uint8/int16) I/O tensor, None for float tensors."""
    if np.dtype(detail["dtype"]).kind not in "iu":
        return None
    scale, zp = detail.get("quantization", (0.0, 0))
    if not scale:
        return None
    return float(scale), int(zp)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
