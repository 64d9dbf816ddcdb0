"""The measuring process behind ``HostDevice``: ``python -m mobilec.profile.host_worker CONFIG.json EVENT_FD``.

It runs in a fresh interpreter so that load time and peak memory belong to this artifact
alone. Order: pin cores → import the runtime → reset the peak-RSS mark and take the
baseline RSS (Linux: ``/proc/self/clear_refs`` 5, then VmRSS; elsewhere the
``ru_maxrss`` high-water mark) → load (timed) → per
repetition: warm-up runs (the very first one timed as ``first_run_ms``), timed runs
(``perf_counter_ns`` around ``session.run`` only), cool-down → final peak RSS.

Events are JSON lines on file descriptor EVENT_FD (stdout is left to the runtimes' logs):
``{"event": "loaded", "load_ms", "open_ms", "input_shape", "target", "threads"}`` (``load_ms``: the
runtime's own load time, ``session.load_seconds``; ``open_ms``: all of ``open_artifact``, file checks included),
``{"event": "progress", "done", "total"}``,
``{"event": "repetition", "index", "latencies_ms", "first_run_ms"}``,
``{"event": "done", "peak_rss_delta_bytes", "baseline_rss_bytes", "peak_rss_bytes", "method"}``,
``{"event": "error", "problem", "hint"}``.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

# the runtime packages each artifact type loads: imported before the memory baseline
PRELOAD = {
    ".pte": ("executorch.runtime", "executorch.extension.pybindings.portable_lib"),
    ".tflite": ("ai_edge_litert.interpreter", "ai_edge_litert.schema_py_generated"),
    ".onnx": ("onnxruntime", "onnx"),
}


def _status_bytes(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM) in bytes; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0: clear_refs 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) if sys.platform == "darwin" else int(r) * 1024  # Linux reports KiB, macOS bytes


class _Events:
    def __init__(self, fd: int) -> None:
        self._f = os.fdopen(fd, "w", buffering=1, encoding="utf-8")

    def emit(self, event: str, **payload: Any) -> None:
        self._f.write(json.dumps({"event": event, **payload}) + "\n")
        self._f.flush()


def _resolve(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr or "open_artifact")


def _pin_threads(artifact: Path, threads: int) -> int | None:
    """ExecuTorch's thread pool is process-wide: size it to ``threads``; returns the count in effect (None: not knowable)."""
    if artifact.suffix.lower() != ".pte":
        return threads  # LiteRT num_threads / onnxruntime intra_op_num_threads are set by the opener
    try:
        from executorch.extension.pybindings import portable_lib
    except ImportError:
        return None
    if hasattr(portable_lib, "_unsafe_reset_threadpool"):
        portable_lib._unsafe_reset_threadpool(threads)
    return int(portable_lib._threadpool_get_thread_count()) if hasattr(portable_lib, "_threadpool_get_thread_count") else None


def _light_executorch_import() -> None:
    """Import ExecuTorch's runtime without its compiler stack.

    ``executorch.extension.pybindings.portable_lib`` imports ``executorch.exir._warnings``,
    which runs ``executorch/exir/__init__.py`` and with it the whole exporter (torch.export,
    torchao: tens of seconds on a busy machine). A stand-in package object for
    ``executorch.exir`` (same ``__path__``) lets the one small submodule load alone. If the
    runtime needs more of exir, the stand-in is dropped and the normal import runs.
    """
    import types

    if "executorch.exir" in sys.modules:
        return
    try:
        import executorch

        stub = types.ModuleType("executorch.exir")
        stub.__path__ = [str(Path(next(iter(executorch.__path__))) / "exir")]  # a namespace package: no __file__
        sys.modules["executorch.exir"] = stub
        importlib.import_module("executorch.runtime")
    except Exception:
        for name in [m for m in sys.modules if m == "executorch.exir" or m.startswith(("executorch.exir.", "executorch.runtime",
                                                                                     "executorch.extension.pybindings"))]:
            del sys.modules[name]


def _static_shape(shape: Any) -> tuple[int, ...]:
    """Plain ints; dynamic dimensions (None, -1, symbolic names) become 1."""
    out = []
    for d in shape:
        try:
            v = int(d)
        except (TypeError, ValueError):
            v = 1
        out.append(v if v > 0 else 1)
    return tuple(out)


def _make_inputs(cfg: dict[str, Any], input_shape: tuple[int, ...]) -> list[Any]:
    import numpy as np

    shape = input_shape
    if cfg.get("inputs_npy"):
        arr = np.load(cfg["inputs_npy"], allow_pickle=False)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        if tuple(arr.shape) == shape:
            return [np.ascontiguousarray(arr)]
        if arr.ndim == len(shape) and tuple(arr.shape[1:]) == shape[1:] and shape[0] == 1 and arr.shape[0] >= 1:
            return [np.ascontiguousarray(arr[i : i + 1]) for i in range(arr.shape[0])]
        raise ValueError(f"inputs of shape {tuple(arr.shape)} do not fit the artifact's input shape {shape}: "
                         f"give one sample {shape} or a batch (N, {', '.join(map(str, shape[1:]))})")
    rng = np.random.default_rng(int(cfg.get("seed", 0)))
    return [rng.standard_normal(shape).astype(np.float32)]


def main(config_path: str, event_fd: int) -> int:
    ev = _Events(event_fd)
    cfg = json.loads(Path(config_path).read_text())
    artifact = Path(cfg["artifact"])
    try:
        if cfg.get("cores"):
            os.sched_setaffinity(0, set(cfg["cores"]))
        if artifact.suffix.lower() == ".pte":
            _light_executorch_import()
        for mod in PRELOAD.get(artifact.suffix.lower(), ()):
            with contextlib.suppress(Exception):  # the opener reports a missing runtime in its own words
                importlib.import_module(mod)
        opener = _resolve(cfg.get("opener") or "mobilec.runtimes:open_artifact")
        threads_in_effect = _pin_threads(artifact, int(cfg["threads"]))  # before loading: resizing a used pool aborts
        gc.collect()
        hwm_reset = _reset_peak() and _status_bytes("VmHWM") is not None
        baseline = _status_bytes("VmRSS") if hwm_reset else _maxrss_bytes()
        t0 = time.perf_counter_ns()
        session = opener(artifact, threads=int(cfg["threads"]))
        open_ms = (time.perf_counter_ns() - t0) / 1e6
        runtime_s = getattr(session, "load_seconds", None)
        load_ms = runtime_s * 1000 if isinstance(runtime_s, int | float) else open_ms
        shape = _static_shape(session.input_shape)
        ev.emit("loaded", load_ms=load_ms, input_shape=list(shape), target=getattr(session, "target", None),
                open_ms=open_ms, threads=threads_in_effect)
        samples = _make_inputs(cfg, shape)
    except Exception as exc:
        _report_error(ev, exc, stage="loading")
        return 1

    warmup, runs, reps = int(cfg["warmup"]), int(cfg["runs"]), int(cfg["repetitions"])
    cooldown = float(cfg.get("cooldown_s", 0.0))
    total, done, last_emit = reps * (warmup + runs), 0, time.monotonic()
    counter = 0
    perf = time.perf_counter_ns
    try:
        for rep in range(reps):
            first_ms = None
            for i in range(warmup):
                x = samples[counter % len(samples)]
                counter += 1
                t = perf()
                session.run(x)
                if rep == 0 and i == 0:
                    first_ms = (perf() - t) / 1e6
            done += warmup
            lat: list[float] = []
            for _ in range(runs):
                x = samples[counter % len(samples)]
                counter += 1
                t = perf()
                session.run(x)
                lat.append((perf() - t) / 1e6)
                if time.monotonic() - last_emit > 0.1:
                    ev.emit("progress", done=done + len(lat), total=total)
                    last_emit = time.monotonic()
            done += runs
            if rep == 0 and first_ms is None:
                first_ms = lat[0]
            ev.emit("repetition", index=rep, latencies_ms=lat, first_run_ms=first_ms)
            ev.emit("progress", done=done, total=total)
            if rep + 1 < reps and cooldown > 0:
                time.sleep(cooldown)
    except Exception as exc:
        _report_error(ev, exc, stage="running")
        return 1
    peak = _status_bytes("VmHWM") if hwm_reset else _maxrss_bytes()
    ev.emit("done", peak_rss_delta_bytes=peak - baseline, baseline_rss_bytes=baseline, peak_rss_bytes=peak,
            method="vmhwm" if hwm_reset else "ru_maxrss")
    return 0


def _report_error(ev: _Events, exc: BaseException, *, stage: str) -> None:
    problem = getattr(exc, "problem", None) or f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    ev.emit("error", stage=stage, problem=problem[:500], hint=getattr(exc, "hint", None), mobilec=hasattr(exc, "problem"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
