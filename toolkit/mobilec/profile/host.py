"""HostDevice: profile an artifact on this machine, in its own runtime, in a fresh process.

>>> dev = HostDevice(repetitions=2, cooldown_s=0.0)                       # doctest: +SKIP
>>> m = dev.run(Path("model.tflite"), runs=20, warmup=3, threads=1)       # doctest: +SKIP
>>> m.latency["p50"], m.load_ms, m.peak_memory_bytes                      # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from mobilec.errors import MobilecError
from mobilec.profile.device import Measurement, Repetition, check_counts, runtime_for
from mobilec.profile.profiles import DeviceProfile, load_profile

PEAK_MEMORY_METHODS = {
    "vmhwm": ("peak RSS delta: a fresh worker imports the runtime, resets its peak-RSS mark (/proc/self/clear_refs 5); "
              "peak_memory_bytes = VmHWM after loading and all runs minus VmRSS before loading"),
    "ru_maxrss": ("ru_maxrss delta: peak resident set of a fresh worker after loading and all runs, minus its peak after "
                  "importing the runtime (getrusage RUSAGE_SELF; a lower bound when the import peak was higher)"),
}
DEFAULT_OPENER = "mobilec.runtimes:open_artifact"


class HostDevice:
    """This computer. Each ``run`` starts a fresh ``python -m mobilec.profile.host_worker``.

    ``repetitions`` and ``cooldown_s`` default to the ``host`` profile's; ``opener`` is the
    ``module:function`` that opens an artifact (``mobilec.runtimes:open_artifact``).
    ``energy_layers`` (a list of ``energy.LayerWork``) feeds the energy estimate where the
    artifact itself cannot tell its per-layer MACs (.pte).
    """

    kind = "host"

    def __init__(self, profile: DeviceProfile | str | None = None, *, repetitions: int | None = None,
                 cooldown_s: float | None = None, show_progress: bool | None = None, opener: str = DEFAULT_OPENER,
                 energy_layers: list[Any] | None = None, timeout_s: float | None = None, seed: int = 0) -> None:
        self.profile = load_profile(profile or "host") if not isinstance(profile, DeviceProfile) else profile
        if self.profile.kind != "host":
            raise MobilecError(f"profile {self.profile.name!r} is for {self.profile.kind} devices, not the host",
                               hint="use --profile host (or leave --profile out)")
        self.name = "host"
        self.repetitions = repetitions if repetitions is not None else self.profile.repetitions
        self.cooldown_s = cooldown_s if cooldown_s is not None else self.profile.cooldown_s
        self.show_progress = sys.stderr.isatty() if show_progress is None else show_progress
        allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
        missing = sorted(set(self.profile.big_cores) - allowed) if allowed else []
        if missing:
            raise MobilecError(f"profile {self.profile.name!r} pins CPU(s) {missing}, which this machine does not offer "
                               f"(available: {sorted(allowed)})", hint=f"edit big_cores in {self.profile.path}")
        self.opener = opener
        self.energy_layers = energy_layers
        self.timeout_s = timeout_s
        self.seed = seed

    def describe(self) -> dict[str, Any]:
        from importlib import metadata

        from mobilec.report import machine_description

        versions = {}
        for pkg in ("executorch", "ai-edge-litert", "onnxruntime"):
            try:
                versions[pkg] = metadata.version(pkg)
            except metadata.PackageNotFoundError:
                versions[pkg] = None
        return {"name": self.name, "kind": self.kind, "profile": self.profile.name, **machine_description(),
                "runtimes": versions}

    def run(self, artifact: Path, *, runs: int, warmup: int, threads: int, inputs: np.ndarray | None = None) -> Measurement:
        artifact = Path(artifact)
        runtime = runtime_for(artifact)
        check_counts(runs=runs, warmup=warmup, threads=threads, repetitions=self.repetitions)
        if not artifact.is_file():
            raise MobilecError(f"artifact {artifact} does not exist", hint="give the path of a .pte, .tflite or .onnx file")
        if artifact.stat().st_size == 0:
            raise MobilecError(f"artifact {artifact} is empty (0 bytes)", hint="re-export it (mobilec export ...)")
        if self.opener == DEFAULT_OPENER:
            from mobilec.runtimes import detect_target

            detect_target(artifact)  # garbage, truncated or misnamed files fail here, before a worker starts
        with tempfile.TemporaryDirectory(prefix="mobilec-host-") as tmp:
            cfg: dict[str, Any] = {
                "artifact": str(artifact.resolve()), "opener": self.opener, "threads": threads, "warmup": warmup, "runs": runs,
                "repetitions": self.repetitions, "cooldown_s": self.cooldown_s, "seed": self.seed,
                "cores": list(self.profile.big_cores), "inputs_npy": None,
            }
            inputs_desc = f"seeded random normal tensor (seed {self.seed}) of the artifact's input shape"
            if inputs is not None:
                arr = np.asarray(inputs)
                if arr.dtype == object or arr.size == 0:
                    raise MobilecError("inputs must be a non-empty numeric array", hint="pass e.g. dataset.x_test[:64].numpy()")
                np.save(Path(tmp) / "inputs.npy", arr, allow_pickle=False)
                cfg["inputs_npy"] = str(Path(tmp) / "inputs.npy")
                inputs_desc = f"{arr.shape[0] if arr.ndim > 1 else 1} given sample(s) of shape {tuple(arr.shape)}, cycled"
            (Path(tmp) / "config.json").write_text(json.dumps(cfg))
            events, log = self._spawn(Path(tmp), artifact, runs=runs, warmup=warmup)
        return self._measurement(artifact, runtime, events, log, runs=runs, warmup=warmup, threads=threads,
                                 inputs_desc=inputs_desc)

    # ------------------------------------------------------------------ internals

    def _spawn(self, tmp: Path, artifact: Path, *, runs: int, warmup: int) -> tuple[list[dict[str, Any]], str]:
        import mobilec

        env = dict(os.environ)
        pkg_root = str(Path(mobilec.__file__).resolve().parents[1])
        env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("OMP_NUM_THREADS", "1")  # the runtime's own thread option decides; stop OpenMP oversubscribing
        read_fd, write_fd = os.pipe()
        log_path = tmp / "worker.log"
        events: list[dict[str, Any]] = []
        total = self.repetitions * (runs + warmup)
        with open(log_path, "wb") as log_f:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mobilec.profile.host_worker", str(tmp / "config.json"), str(write_fd)],
                stdin=subprocess.DEVNULL, stdout=log_f, stderr=subprocess.STDOUT, pass_fds=(write_fd,), env=env,
            )
            os.close(write_fd)
            try:
                with os.fdopen(read_fd, "r", encoding="utf-8") as pipe, _progress(self.show_progress, artifact.name, total) as bar:
                    for line in pipe:
                        try:
                            ev = json.loads(line)
                        except json.JSONDecodeError:
                            continue
                        events.append(ev)
                        if ev.get("event") == "progress":
                            bar(int(ev["done"]))
                proc.wait(timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise MobilecError(f"profiling {artifact} took longer than {self.timeout_s:.0f} s",
                                   hint="lower runs/repetitions or raise the timeout") from None
            except BaseException:
                proc.kill()
                proc.wait()
                raise
        log = log_path.read_text(errors="replace")
        events.append({"event": "exit", "returncode": proc.returncode})
        return events, log

    def _measurement(self, artifact: Path, runtime: str, events: list[dict[str, Any]], log: str, *, runs: int, warmup: int,
                     threads: int, inputs_desc: str) -> Measurement:
        by_kind: dict[str, list[dict[str, Any]]] = {}
        for ev in events:
            by_kind.setdefault(ev["event"], []).append(ev)
        rc = by_kind["exit"][0]["returncode"]
        reps = [Repetition(index=e["index"], latencies_ms=e["latencies_ms"], first_run_ms=e.get("first_run_ms"))
                for e in by_kind.get("repetition", [])]
        if "error" in by_kind:
            err = by_kind["error"][0]
            where = "could not be loaded" if err.get("stage") == "loading" else "failed while running"
            hint = err.get("hint") or (f"check that {artifact.name} is a valid {runtime} artifact (re-export it)"
                                       if err.get("stage") == "loading" else "check the inputs' shape and dtype")
            raise MobilecError(f"{artifact} {where} in {runtime}: {err['problem']}", hint=hint)
        if rc != 0 or "done" not in by_kind:
            why = f"was killed by signal {signal.Signals(-rc).name}" if rc < 0 else f"exited with status {rc}"
            tail = " | ".join(log.strip().splitlines()[-3:])[-300:]
            stage = "while loading" if "loaded" not in by_kind else f"after {len(reps)} of {self.repetitions} repetitions"
            raise MobilecError(f"the {runtime} runtime {why} {stage} on {artifact}" + (f" ({tail})" if tail else ""),
                               hint=f"the artifact may be corrupt or unsupported by this {runtime} version: re-export it")
        loaded, done = by_kind["loaded"][0], by_kind["done"][0]
        load_ms = float(loaded["load_ms"])
        if reps:
            reps[0].load_ms = load_ms
        notes = []
        peak = int(done["peak_rss_delta_bytes"])
        if peak <= 0:
            notes.append("peak RSS did not rise above the baseline taken before loading: peak_memory_bytes is 0 (a lower bound)")
            peak = max(peak, 0)
        m = Measurement.from_repetitions(
            artifact=str(artifact), device="host", runtime=runtime, repetitions=reps, load_ms=load_ms,
            peak_memory_bytes=peak, peak_memory_method=PEAK_MEMORY_METHODS[done.get("method", "ru_maxrss")], device_info=self.describe(),
            settings={"runs": runs, "warmup": warmup, "threads": threads, "repetitions": self.repetitions,
                      "cooldown_s": self.cooldown_s, "cores": list(self.profile.big_cores) or "not pinned",
                      "inputs": inputs_desc, "input_shape": loaded.get("input_shape"),
                      "threads_in_effect": loaded.get("threads"),
                      "open_artifact_ms": loaded.get("open_ms"), "timer": "time.perf_counter_ns",
                      "process": "fresh subprocess per profile", "profile": self.profile.name},
            notes=notes,
        )
        m.first_run_ms = reps[0].first_run_ms if reps else None
        self._attach_estimate(m, artifact)
        return m

    def _attach_estimate(self, m: Measurement, artifact: Path) -> None:
        from mobilec.profile import energy

        if self.profile.energy_method != "estimate":
            return
        try:
            layers, why = (self.energy_layers, "") if self.energy_layers else energy.layer_work_from_artifact(artifact)
            if not layers:
                m.notes.append("no energy estimate: " + (why or "no Conv/Linear/MatMul layers found in the artifact"))
                return
            m.energy = energy.estimate_energy(layers, source="the given layers" if self.energy_layers else artifact.name)
        except MobilecError as exc:
            m.notes.append(f"no energy estimate: {exc}")


class _progress:
    """A rich progress bar over the worker's runs (a no-op when disabled)."""

    def __init__(self, enabled: bool, label: str, total: int) -> None:
        self.enabled, self.label, self.total = enabled, label, total
        self._bar: Any = None

    def __enter__(self) -> Any:
        if not self.enabled:
            return lambda done: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(TextColumn("profiling {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                             transient=True)
        self._bar.start()
        task = self._bar.add_task(self.label, total=self.total)
        return lambda done: self._bar.update(task, completed=done)

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()
