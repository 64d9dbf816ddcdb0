"""The Device protocol and the Measurement every device returns.

A Device runs an artifact in its own runtime and measures it; ``Measurement.to_dict()``
is what goes into report.json (``RunReport.profiles``) and ``mobilec profile --json``.

>>> m = Measurement.from_repetitions(artifact="m.pte", device="host", runtime="executorch",
...                                  repetitions=[[1.0, 1.1, 0.9], [1.2, 1.0, 1.1]])
>>> round(m.latency["p50"], 2), len(m.repetitions)
(1.05, 2)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from mobilec.errors import MobilecError
from mobilec.profile import stats

DeviceKind = Literal["host", "adb", "emulator"]
RUNTIME_BY_SUFFIX = {".pte": "executorch", ".tflite": "tflite", ".onnx": "onnx"}


def runtime_for(artifact: Path) -> str:
    """The runtime an artifact file runs in, from its suffix; anything else is a MobilecError."""
    runtime = RUNTIME_BY_SUFFIX.get(Path(artifact).suffix.lower())
    if runtime is None:
        raise MobilecError(
            f"cannot profile {artifact}: unknown artifact type {Path(artifact).suffix or '(no suffix)'!r}",
            hint="give a .pte (ExecuTorch), .tflite (LiteRT) or .onnx file",
        )
    return runtime


@dataclass
class EnergyEstimate:
    """Energy per inference from an analytical model: never a measurement.

    ``mj_per_inference`` is the model's figure; ``lower_bound_mj`` drops the on-chip SRAM
    operand traffic (perfect register reuse). ``breakdown_mj`` splits compute / SRAM / DRAM.
    """

    method: str
    mj_per_inference: float
    lower_bound_mj: float
    breakdown_mj: dict[str, float]
    assumptions: list[str]
    per_layer_mj: dict[str, float] = field(default_factory=dict)
    uncertainty_mj: float | None = None  # a model's error is not a sampling error: not given
    kind: Literal["estimated"] = "estimated"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def summary(self) -> str:
        return (f"{self.mj_per_inference:.4g} mJ/inference (lower bound {self.lower_bound_mj:.4g}) — {self.method}; "
                "a model, not a measurement")


@dataclass
class EnergyMeasurement:
    """Energy per inference measured on the device (battery current × voltage, or power rails).

    ``uncertainty_mj`` is one standard error propagated from the power samples (battery) or
    the spread of the per-repetition figures (rails). ``flags`` carry loud caveats
    (e.g. measured while charging).
    """

    method: str
    mj_per_inference: float
    uncertainty_mj: float | None
    inferences: int
    duration_s: float
    details: dict[str, Any] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    kind: Literal["measured"] = "measured"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def summary(self) -> str:
        unc = f" ± {self.uncertainty_mj:.2g}" if self.uncertainty_mj is not None else ""
        flags = "".join(f"; WARNING: {f}" for f in self.flags)
        return f"{self.mj_per_inference:.4g}{unc} mJ/inference over {self.inferences} inferences — {self.method}{flags}"


@dataclass
class Repetition:
    """One repetition: a fresh batch of timed runs after a cool-down."""

    index: int
    latencies_ms: list[float]
    first_run_ms: float | None = None
    load_ms: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def p50(self) -> float:
        return stats.percentile(self.latencies_ms, 50)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "p50_ms": self.p50, "n": len(self.latencies_ms), "first_run_ms": self.first_run_ms,
                "load_ms": self.load_ms, "latencies_ms": list(self.latencies_ms), **self.extra}


@dataclass
class Measurement:
    """What a device measured for one artifact.

    ``latency`` summarises ``samples_ms`` (p10/p50/p90, 10 % trimmed mean, mean, std, min,
    max). ``samples_kind`` is ``"per_run"`` when every timed run was recorded, or
    ``"per_repetition_mean"`` when the runner reports only a mean per invocation.
    ``partial`` is True when the run stopped early (e.g. the phone disconnected) and only the
    repetitions listed were completed.
    """

    artifact: str
    device: str
    runtime: str
    samples_ms: list[float]
    latency: dict[str, float | int]
    repetitions: list[Repetition]
    spread: dict[str, Any]
    samples_kind: Literal["per_run", "per_repetition_mean"] = "per_run"
    first_run_ms: float | None = None
    load_ms: float | None = None
    peak_memory_bytes: int | None = None
    peak_memory_method: str | None = None
    energy: EnergyEstimate | EnergyMeasurement | None = None
    conditions: dict[str, Any] = field(default_factory=dict)  # {"before": {...}, "after": {...}}
    settings: dict[str, Any] = field(default_factory=dict)  # runs, warmup, threads, cores, inputs, cool-down
    device_info: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    partial: bool = False

    @classmethod
    def from_repetitions(
        cls,
        *,
        artifact: str | Path,
        device: str,
        runtime: str,
        repetitions: list[list[float]] | list[Repetition],
        samples_kind: Literal["per_run", "per_repetition_mean"] = "per_run",
        **kwargs: Any,
    ) -> Measurement:
        reps = [r if isinstance(r, Repetition) else Repetition(index=i, latencies_ms=list(map(float, r)))
                for i, r in enumerate(repetitions)]
        reps = [r for r in reps if r.latencies_ms]
        if not reps:
            raise MobilecError(f"no timed runs of {artifact} on {device} completed", hint="check the device and rerun")
        if samples_kind == "per_run":
            samples = [float(x) for r in reps for x in r.latencies_ms]
        else:
            samples = [float(np.mean(r.latencies_ms)) for r in reps]
        firsts = [r.first_run_ms for r in reps if r.first_run_ms is not None]
        loads = [r.load_ms for r in reps if r.load_ms is not None]
        kwargs.setdefault("first_run_ms", firsts[0] if firsts else None)
        kwargs.setdefault("load_ms", float(np.median(loads)) if loads else None)
        return cls(
            artifact=str(artifact), device=device, runtime=runtime, samples_ms=samples, latency=stats.summarize(samples),
            repetitions=reps, spread=stats.repetition_spread([r.latencies_ms for r in reps]), samples_kind=samples_kind,
            **kwargs,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "artifact": self.artifact,
            "device": self.device,
            "runtime": self.runtime,
            "latency_ms": {**self.latency, "samples_kind": self.samples_kind, "samples": list(self.samples_ms)},
            "first_run_ms": self.first_run_ms,
            "load_ms": self.load_ms,
            "peak_memory_bytes": self.peak_memory_bytes,
            "peak_memory_method": self.peak_memory_method,
            "repetitions": [r.to_dict() for r in self.repetitions],
            "spread": self.spread,
            "energy": self.energy.to_dict() if self.energy is not None else None,
            "conditions": self.conditions,
            "settings": self.settings,
            "device_info": self.device_info,
            "notes": list(self.notes),
            "partial": self.partial,
        }

    def save(self, path: Path) -> Path:
        """Write ``to_dict()`` as JSON atomically."""
        from mobilec.io import write_json_atomic

        write_json_atomic(Path(path), self.to_dict())
        return Path(path)


@runtime_checkable
class Device(Protocol):
    """Something that can run an artifact and measure it.

    >>> from mobilec.profile import get_device
    >>> dev = get_device("host")                       # doctest: +SKIP
    >>> dev.run(Path("model.pte"), runs=20, warmup=3, threads=1, inputs=None).latency["p50"]  # doctest: +SKIP
    """

    name: str
    kind: DeviceKind

    def describe(self) -> dict[str, Any]: ...

    def run(
        self, artifact: Path, *, runs: int, warmup: int, threads: int, inputs: np.ndarray | None = None
    ) -> Measurement: ...


class ProfilingInterrupted(MobilecError):
    """A run stopped mid-way (the device went away, the app failed); ``measurement`` holds the
    repetitions completed before that (``partial=True``) and ``saved_to`` where they were written."""

    def __init__(self, problem: str, *, hint: str | None = None, measurement: Measurement | None = None,
                 saved_to: Path | None = None) -> None:
        super().__init__(problem, hint=hint)
        self.measurement = measurement
        self.saved_to = saved_to


def check_counts(*, runs: int, warmup: int, threads: int, repetitions: int = 1) -> None:
    """Validate the run counts a user passed (MobilecError naming the bad one)."""
    for name, value, low in (("runs", runs, 1), ("warmup", warmup, 0), ("threads", threads, 1), ("repetitions", repetitions, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise MobilecError(f"{name} must be an integer >= {low}, got {value!r}", hint=f"pass --{name} {max(low, 1)} or more")
