"""Profiling on Android phones and emulators over the real ``adb`` binary.

The adb binary: ``$MOBILEC_ADB`` if set, else ``adb`` on PATH (Debian: ``apt-get install adb``),
else ``$ANDROID_HOME/platform-tools/adb`` (or ``$ANDROID_SDK_ROOT``).

Two ways to run an artifact on the phone:

(a) the demo app (default). The artifact is pushed to ``/data/local/tmp/mobilec/<run>/`` and
copied into the app's private files (apps may not read /data/local/tmp under SELinux):
``cat SRC | run-as dev.mobilec.demo sh -c 'cat > files/mobilec/NAME'``. Each repetition is::

    adb shell am start -S -W -n dev.mobilec.demo/.BenchmarkActivity \\
        --es model /data/data/dev.mobilec.demo/files/mobilec/NAME \\
        --ei iters N --ei warmup W --ei threads T --es out results-<run>-<rep>.json \\
        [--es input /data/data/dev.mobilec.demo/files/mobilec/input.bin]

then polled with ``adb shell run-as dev.mobilec.demo cat files/<out>``. The activity loads the
model (``.pte`` with the ExecuTorch AAR, ``.tflite`` with LiteRT), runs W untimed warm-up
inferences and N timed ones, and writes ``files/<out>`` atomically (write a temp file, then
rename) as JSON — **the results schema**::

    {
      "runtime": "executorch" | "tflite",
      "latencies_ms": [float, ...],   # N entries, one per timed inference (monotonic clock)
      "load_ms": float,               # file -> ready-to-run session
      "first_run_ms": float,          # the very first inference after loading
      "peak_memory_kb": int,          # the app process's peak RSS (VmHWM of /proc/self/status)
      "timed_window_ms": [t0, t1],    # SystemClock.elapsedRealtime() before the first / after the
                                      # last timed inference (optional; lets energy use only those samples)
      "error": "..."                  # only on failure; the other keys may then be missing
    }

``input`` (optional) is raw little-endian float32 samples of the model's input shape, cycled;
without it the app uses a fixed seeded random tensor. Other keys are kept in the record.

(b) ``runner=PATH``: the user's own runner binary is pushed and run pinned to the profile's
big cores with ``taskset``: ExecuTorch ``executor_runner --model_path X --num_executions N``
(its per-iteration log lines, or its total) or LiteRT ``benchmark_model --graph=X
--num_runs=N --warmup_runs=W --num_threads=T`` ("Inference timings in us: Init: ...,
First inference: ..., Warmup (avg): ..., Inference (avg): ..." and the memory footprint line).

Hygiene: warm-up, a cool-down between repetitions, pinned cores, several repetitions with
their spread, temperature (thermal zones), CPU frequencies, screen and charging state
recorded before and after, pushed files removed afterwards. A phone that disconnects
mid-run raises ``ProfilingInterrupted`` carrying (and saving) the repetitions completed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mobilec.errors import MobilecError
from mobilec.profile import energy as en
from mobilec.profile.adb_parse import (
    SNAPSHOT_SCRIPT,
    first_error,
    hygiene_notes,
    parse_benchmark_model,
    parse_executor_runner,
    parse_snapshot,
)
from mobilec.profile.device import Measurement, ProfilingInterrupted, Repetition, check_counts, runtime_for
from mobilec.profile.profiles import DeviceProfile, load_profile, profile_for

REMOTE_DIR = "/data/local/tmp/mobilec"
APP_PACKAGE = "dev.mobilec.demo"
APP_ACTIVITY = f"{APP_PACKAGE}/.BenchmarkActivity"
APP_FILES = f"/data/data/{APP_PACKAGE}/files"
BATTERY = "/sys/class/power_supply/battery"
POWER_STATS_CMD = "dumpsys android.hardware.power.stats.IPowerStats/default"
INSTALL_HINT = "apt-get install adb (Debian/Ubuntu), or set MOBILEC_ADB=/path/to/platform-tools/adb"
APP_HINT = "install the demo app: cd android_demo && ./gradlew installDebug (or adb install app-debug.apk)"
USB_HINT = ("unplug the cable and connect over Wi-Fi (adb tcpip 5555; adb connect PHONE_IP:5555), "
            "or pass --allow-charging to measure anyway (the energy figure is then flagged as unreliable)")


def find_adb() -> str:
    """Path of the adb binary ($MOBILEC_ADB, PATH, $ANDROID_HOME/platform-tools) or a MobilecError saying how to get it."""
    env = os.environ.get("MOBILEC_ADB")
    if env:
        if not (Path(env).is_file() and os.access(env, os.X_OK)):
            raise MobilecError(f"MOBILEC_ADB={env} is not an executable file", hint=INSTALL_HINT)
        return env
    found = shutil.which("adb")
    if found:
        return found
    for var in ("ANDROID_HOME", "ANDROID_SDK_ROOT"):
        root = os.environ.get(var)
        if root and (cand := Path(root) / "platform-tools" / "adb").is_file():
            return str(cand)
    raise MobilecError("adb (Android Debug Bridge) was not found", hint=INSTALL_HINT)


class DeviceGone(MobilecError):
    """The device disappeared (unplugged, adb server restarted, phone rebooted)."""


def _classify(serial: str | None, text: str) -> MobilecError | None:
    """The MobilecError an adb error message stands for, or None if it is not a device-state error."""
    low = text.lower()
    who = f"device {serial}" if serial else "the device"
    if "unauthorized" in low:
        return MobilecError(f"{who} is unauthorized for USB debugging",
                            hint="accept the USB debugging prompt on the phone ('Allow USB debugging?', tick 'Always allow'), then retry")
    if "device offline" in low or re.search(r"device '[^']*' is offline", low):
        return DeviceGone(f"{who} is offline", hint="reconnect the cable or run `adb reconnect`; if it stays offline: adb kill-server")
    if re.search(r"device '[^']*' not found|error: device not found|no devices/emulators found", low):
        return DeviceGone(f"{who} is no longer connected ({text.strip().splitlines()[-1][:120]})",
                          hint="reconnect the phone (check the cable / Wi-Fi adb) and rerun")
    if "more than one device" in low:
        return MobilecError("several devices are attached", hint="choose one: --device adb:SERIAL (see `mobilec devices`)")
    return None


class Adb:
    """Thin subprocess wrapper around one adb binary and (optionally) one device serial."""

    def __init__(self, serial: str | None = None, *, exe: str | None = None, timeout_s: float = 120.0) -> None:
        self.exe = exe or find_adb()
        self.serial = serial
        self.timeout_s = timeout_s

    def argv(self, *args: str) -> list[str]:
        return [self.exe, *(["-s", self.serial] if self.serial else []), *args]

    def run(self, *args: str, timeout: float | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        try:
            proc = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout or self.timeout_s,
                                  stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise MobilecError(f"adb binary {self.exe} cannot be run", hint=INSTALL_HINT) from None
        except PermissionError:
            raise MobilecError(f"adb binary {self.exe} is not executable", hint=f"chmod +x {self.exe}, or {INSTALL_HINT}") from None
        except subprocess.TimeoutExpired:
            raise DeviceGone(f"`adb {' '.join(args)[:80]}` did not answer within {timeout or self.timeout_s:.0f} s",
                             hint="check the connection (adb devices); unlock the phone; rerun") from None
        if proc.returncode != 0:
            err = _classify(self.serial, proc.stderr + "\n" + proc.stdout)
            if err is not None:
                raise err
            if check:
                msg = (proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}").splitlines()[-1]
                raise MobilecError(f"`adb {' '.join(args)[:100]}` failed: {msg[:200]}", hint="check the device with `adb devices`")
        return proc

    def shell(self, command: str, *, timeout: float | None = None, check: bool = True) -> str:
        return self.run("shell", command, timeout=timeout, check=check).stdout

    def push(self, local: Path, remote: str) -> None:
        self.run("push", str(local), remote, timeout=max(self.timeout_s, 600))


# ---------------------------------------------------------------------------------------------- discovery


@dataclass
class AndroidDeviceInfo:
    """One line of ``adb devices -l``, completed with getprop and dumpsys battery when the device is usable."""

    serial: str
    state: str  # device | unauthorized | offline | ...
    kind: str = "adb"  # adb | emulator
    model: str | None = None
    manufacturer: str | None = None
    abi: str | None = None
    android_version: str | None = None
    soc: str | None = None
    battery_level: int | None = None
    charging: bool | None = None
    usb_powered: bool | None = None
    transport: dict[str, str] = field(default_factory=dict)
    problem: str | None = None  # why the device cannot be used, and
    hint: str | None = None  # what to do about it

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, {}, "")}


_PROPS = ("ro.product.model", "ro.product.manufacturer", "ro.product.cpu.abi", "ro.build.version.release", "ro.soc.model",
          "ro.kernel.qemu", "ro.boot.qemu")


def _device_info(adb: Adb, serial: str, state: str, transport: dict[str, str]) -> AndroidDeviceInfo:
    info = AndroidDeviceInfo(serial=serial, state=state, transport=transport,
                             kind="emulator" if serial.startswith("emulator-") else "adb")
    if state != "device":
        err = _classify(serial, f"error: device {state}") if state in ("unauthorized", "offline") else None
        info.problem = err.problem if err else f"device {serial} is in state {state!r}"
        info.hint = err.hint if err else "check the cable and `adb devices`; on Linux, the udev rules for the phone"
        return info
    dev = Adb(serial, exe=adb.exe, timeout_s=adb.timeout_s)
    lines = dev.shell("; ".join(f"getprop {p}" for p in _PROPS)).splitlines() + [""] * len(_PROPS)
    props = {p: lines[i].strip() for i, p in enumerate(_PROPS)}
    info.model, info.manufacturer = props["ro.product.model"] or None, props["ro.product.manufacturer"] or None
    info.abi, info.android_version = props["ro.product.cpu.abi"] or None, props["ro.build.version.release"] or None
    info.soc = props["ro.soc.model"] or None
    if props["ro.kernel.qemu"] == "1" or props["ro.boot.qemu"] == "1":
        info.kind = "emulator"
    battery = en.parse_dumpsys_battery(dev.shell("dumpsys battery", check=False))
    if battery:
        info.battery_level = battery.get("level") if isinstance(battery.get("level"), int) else None
        info.charging = en.is_charging(battery)
        info.usb_powered = battery.get("USB powered") if isinstance(battery.get("USB powered"), bool) else None
    return info


def list_devices(*, exe: str | None = None) -> list[AndroidDeviceInfo]:
    """Every device adb sees, including unauthorized and offline ones (with ``problem`` saying what to do)."""
    adb = Adb(exe=exe)
    out = adb.run("devices", "-l").stdout
    found = []
    for line in out.splitlines():
        line = line.strip()
        if not line or line.startswith(("List of devices", "*")):
            continue
        parts = line.split()
        if len(parts) < 2:
            continue
        serial, state = parts[0], parts[1]
        transport = dict(p.split(":", 1) for p in parts[2:] if ":" in p)
        if state == "no":  # "no permissions (user in plugdev group; ...)"
            state = "no permissions"
        found.append(_device_info(adb, serial, state, transport))
    return found


class _BatterySampler:
    """Samples uptime, ``current_now`` and ``voltage_now`` on the phone at ``hz`` in one long-lived ``adb shell``.

    Each sample is ``(device uptime s, current raw, voltage raw)``; the uptime (/proc/uptime,
    CLOCK_BOOTTIME like Android's ``SystemClock.elapsedRealtime``) lets the samples be cut
    to the app's timed window.
    """

    def __init__(self, adb: Adb, hz: float) -> None:
        self.adb, self.hz = adb, hz
        self.samples: list[tuple[float, float, float | None]] = []
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    def script(self) -> str:
        return (f"while true; do echo \"$(cat /proc/uptime) $(cat {BATTERY}/current_now) "
                f"$(cat {BATTERY}/voltage_now 2>/dev/null)\"; sleep {1 / self.hz:.3f}; done")

    def start(self) -> None:
        self.samples = []
        self._proc = subprocess.Popen(self.adb.argv("shell", self.script()), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                      stdin=subprocess.DEVNULL, text=True)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 5.0  # the run starts only once sampling has
        while not self.samples and time.monotonic() < deadline and self._proc.poll() is None:
            time.sleep(0.01)

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            parts = line.split()  # uptime idle-time current [voltage]
            try:
                up, cur = float(parts[0]), float(parts[2])
                volt = float(parts[3]) if len(parts) > 3 else None
            except (ValueError, IndexError):
                continue
            self.samples.append((up, cur, volt))

    def wait_past(self, t: float, timeout_s: float) -> None:
        """Keep sampling until a reading stamped at or after device time ``t`` arrived (or ``timeout_s``): the
        results file can appear before the sampler's next reading, which the timed window's end needs."""
        deadline = time.monotonic() + timeout_s
        while (time.monotonic() < deadline and self._proc is not None and self._proc.poll() is None
               and (not self.samples or self.samples[-1][0] < t)):
            time.sleep(0.01)

    def stop(self) -> list[tuple[float, float, float | None]]:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=5)
        return list(self.samples)


class _RailSampler(_BatterySampler):
    """Reads the PowerStats energy meters in a loop; each sample is ``(device uptime s, total mWs, rail count)``."""

    def script(self) -> str:
        return f"while true; do cat /proc/uptime; {POWER_STATS_CMD}; echo @@; sleep {1 / self.hz:.3f}; done"

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        block: list[str] = []
        for line in self._proc.stdout:
            if line.strip() != "@@":
                block.append(line)
                continue
            try:
                up = float(block[0].split()[0])
            except (ValueError, IndexError):
                block = []
                continue
            rails = en.parse_power_stats("".join(block[1:]))
            if rails:
                self.samples.append((up, sum(rails.values()), len(rails)))
            block = []


_Sampler = _BatterySampler
_WINDOW_FLAG = ("in {n} of {of} repetition(s) the power was averaged over the whole benchmark window (app start, load, "
                "warm-up and timed runs): the app gave no timed_window_ms or fewer than 2 readings fell inside it "
                "(raise runs so the timed runs last several sampling periods)")


def _rail_window(w: dict[str, Any]) -> dict[str, Any]:
    """Energy-meter readings of one repetition -> run/idle energy and durations, cut to the timed window when covered."""
    run, idle = w["run"], w["idle"]
    if len(run) < 2 or len(idle) < 2:
        raise MobilecError(f"too few energy-meter readings ({len(run)} during the run, {len(idle)} idle)",
                           hint="raise runs so the benchmark lasts several seconds")
    ts, es = np.array([p[0] for p in run]), np.array([p[1] for p in run])
    tw = w.get("timed_window")
    if tw and ts[0] <= tw[0] and ts[-1] >= tw[1] and int(((ts >= tw[0]) & (ts <= tw[1])).sum()) >= 2:
        run_mj, run_s, timed_s, cut = float(np.interp(tw[1], ts, es) - np.interp(tw[0], ts, es)), tw[1] - tw[0], tw[1] - tw[0], True
    else:
        run_mj, run_s, timed_s, cut = float(es[-1] - es[0]), float(ts[-1] - ts[0]), w["timed_s"], False
    return {"run_mj": run_mj, "run_s": run_s, "idle_mj": float(idle[-1][1] - idle[0][1]), "idle_s": float(idle[-1][0] - idle[0][0]),
            "timed_s": timed_s, "inferences": w["inferences"], "cut": cut}


# ---------------------------------------------------------------------------------------------- the device


def _safe_name(name: str) -> str:
    """A file name that needs no quoting in a device shell command."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "file"


def _runner_kind(runner: Path, runtime: str) -> str:
    name = runner.name.lower()
    kind = "litert" if "benchmark_model" in name else "executorch" if "executor_runner" in name else None
    kind = kind or ("executorch" if runtime == "executorch" else "litert")
    if (kind == "litert") != (runtime == "tflite"):
        raise MobilecError(f"runner {runner.name} runs {'.tflite' if kind == 'litert' else '.pte'} files, not this {runtime} artifact",
                           hint="use executor_runner for .pte and benchmark_model for .tflite")
    return kind


class AdbDevice:
    """An Android phone or emulator reached over adb.

    >>> dev = AdbDevice("R5CT123ABC", "galaxy-s23")                          # doctest: +SKIP
    >>> m = dev.run(Path("model.pte"), runs=50, warmup=10, threads=1)        # doctest: +SKIP
    >>> m.latency["p50"], m.energy.mj_per_inference, m.conditions["after"]   # doctest: +SKIP
    """

    def __init__(self, serial: str, profile: DeviceProfile | str | None = None, *, exe: str | None = None,
                 repetitions: int | None = None, cooldown_s: float | None = None, runner: Path | None = None,
                 allow_charging: bool = False, poll_s: float = 0.5, result_timeout_s: float = 600.0,
                 partial_dir: Path | None = None, info: AndroidDeviceInfo | None = None) -> None:
        self.adb = Adb(serial, exe=exe)
        self.name = serial
        self._info: AndroidDeviceInfo | None = info
        self._profile_arg = profile
        self._profile: DeviceProfile | None = load_profile(profile) if isinstance(profile, str) else profile
        self._repetitions, self._cooldown = repetitions, cooldown_s
        self.runner = Path(runner) if runner is not None else None
        self.allow_charging = allow_charging
        self.poll_s, self.result_timeout_s = poll_s, result_timeout_s
        self.partial_dir = partial_dir

    # -------------------------------------------------------------- identity

    def info(self) -> AndroidDeviceInfo:
        """State and properties of this device; unauthorized/offline/missing raise a MobilecError saying what to do."""
        for d in list_devices(exe=self.adb.exe):
            if d.serial == self.name:
                if d.state != "device":
                    err = _classify(self.name, f"error: device {d.state}")
                    raise err or MobilecError(f"device {self.name} is in state {d.state!r}", hint="fix the connection and retry")
                self._info = d
                return d
        raise DeviceGone(f"device {self.name} is not attached", hint="check `adb devices`; reconnect the phone or start the emulator")

    @property
    def profile(self) -> DeviceProfile:
        if self._profile is None:
            info = self._info or self.info()
            self._profile = profile_for(info.model, emulator=info.kind == "emulator", abi=info.abi)
        return self._profile

    @property
    def kind(self) -> str:  # type: ignore[override]
        info = self._info or self.info()
        return "emulator" if info.kind == "emulator" or self.profile.kind == "emulator" else "adb"

    def describe(self) -> dict[str, Any]:
        info = self._info or self.info()
        return {"name": self.name, "kind": self.kind, "profile": self.profile.name, **info.to_dict()}

    # -------------------------------------------------------------- run

    def run(self, artifact: Path, *, runs: int, warmup: int, threads: int, inputs: np.ndarray | None = None) -> Measurement:
        artifact = Path(artifact)
        runtime = runtime_for(artifact)
        if runtime == "onnx":
            raise MobilecError("ONNX artifacts are profiled on the host only (the demo app and the runners load .pte and .tflite)",
                               hint="profile the .pte or .tflite on the phone, or the .onnx with --device host")
        if not artifact.is_file():
            raise MobilecError(f"artifact {artifact} does not exist", hint="give the path of a .pte or .tflite file")
        if self.runner is not None and not self.runner.is_file():
            raise MobilecError(f"runner {self.runner} does not exist", hint="give the path of an executor_runner or benchmark_model binary")
        self.info()
        prof = self.profile
        reps_n = self._repetitions if self._repetitions is not None else prof.repetitions
        cooldown = self._cooldown if self._cooldown is not None else prof.cooldown_s
        check_counts(runs=runs, warmup=warmup, threads=threads, repetitions=reps_n)
        runner_kind = _runner_kind(self.runner, runtime) if self.runner is not None else None
        notes: list[str] = []
        energy_method = "none" if self.kind == "emulator" else prof.energy_method
        if self.kind == "emulator":
            notes.append("emulators have no battery/power rails: no energy figure")
        before = parse_snapshot(self.adb.shell(SNAPSHOT_SCRIPT, check=False))
        flags = self._check_energy(energy_method, before)

        run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        remote = f"{REMOTE_DIR}/{run_id}"
        ctx = _RunContext(run_id=run_id, remote=remote, artifact=artifact, runtime=runtime, runs=runs, warmup=warmup,
                          threads=threads, runner_kind=runner_kind)
        reps: list[Repetition] = []
        windows: list[dict[str, Any]] = []
        failure: MobilecError | None = None
        try:
            self._stage(ctx, inputs)
            for r in range(reps_n):
                if r > 0 and cooldown > 0:
                    time.sleep(cooldown)
                rep, window = self._repetition(ctx, r, energy_method)
                reps.append(rep)
                if window is not None:
                    windows.append(window)
        except MobilecError as exc:
            failure = exc
        finally:
            if not isinstance(failure, DeviceGone):
                self._cleanup(ctx)
        after: dict[str, Any] = {}
        if failure is None:
            try:
                after = parse_snapshot(self.adb.shell(SNAPSHOT_SCRIPT, check=False))
            except DeviceGone:
                ctx.notes.append("the device disconnected after the last repetition: no conditions after the run")
        if failure is not None and not reps:
            raise failure
        notes += ctx.notes + hygiene_notes(before, after)
        m = self._measurement(ctx, reps, windows, energy_method, flags, notes, before, after, prof, reps_n, cooldown,
                              partial=failure is not None)
        if failure is not None:  # keep what was measured before the failure
            saved = self._save_partial(m, artifact)
            kept = f"the {len(reps)} completed repetition(s) were kept" + (f" in {saved}" if saved else "")
            raise ProfilingInterrupted(f"{failure.problem} during repetition {len(reps) + 1} of {reps_n}; {kept}",
                                       hint=failure.hint, measurement=m, saved_to=saved)
        return m

    # -------------------------------------------------------------- steps

    def _check_energy(self, method: str, before: dict[str, Any]) -> list[str]:
        if method not in ("battery_sysfs", "power_stats"):
            return []
        flags = []
        if before.get("charging"):
            src = "USB powered: true" if before.get("usb_powered") else f"battery status {before.get('battery_status')}"
            if not self.allow_charging:
                raise MobilecError(f"device {self.name} is charging ({src}): battery readings include the charge current",
                                   hint=USB_HINT)
            flags.append(f"MEASURED WHILE CHARGING ({src}): the battery current includes the charge current; "
                         "this energy figure is NOT the inference energy")
        if method == "power_stats":
            if not en.parse_power_stats(self.adb.shell(POWER_STATS_CMD, check=False)):
                raise MobilecError(f"device {self.name} has no PowerStats energy meters (dumpsys IPowerStats shows none)",
                                   hint='use a profile with energy_method = "battery_sysfs" (e.g. --profile android-generic)')
        else:
            probe = self.adb.shell(f"cat {BATTERY}/current_now", check=False).strip()
            if not re.fullmatch(r"-?\d+", probe):
                raise MobilecError(f"device {self.name} does not expose {BATTERY}/current_now ({probe[:80] or 'empty'})",
                                   hint='use a profile with energy_method = "none", or one with "power_stats" on a Pixel')
        return flags

    def _stage(self, ctx: _RunContext, inputs: np.ndarray | None) -> None:
        self.adb.shell(f"mkdir -p {ctx.remote}")
        ctx.model_path = f"{ctx.remote}/{_safe_name(ctx.artifact.name)}"
        self.adb.push(ctx.artifact, ctx.model_path)
        if inputs is not None:
            arr = np.ascontiguousarray(np.asarray(inputs, dtype="<f4"))
            if self.runner is not None and arr.ndim > 1:
                arr = arr[:1]  # executor_runner reads one input file for every execution
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "input.bin").write_bytes(arr.tobytes())
                self.adb.push(Path(tmp) / "input.bin", f"{ctx.remote}/input.bin")
            ctx.input_path = f"{ctx.remote}/input.bin"
        if self.runner is not None:
            ctx.runner_path = f"{ctx.remote}/{_safe_name(self.runner.name)}"
            self.adb.push(self.runner, ctx.runner_path)
            self.adb.shell(f"chmod 755 {ctx.runner_path}")
            if inputs is not None and ctx.runner_kind == "litert":
                ctx.notes.append("benchmark_model fills its inputs itself: the given inputs were not used")
                ctx.input_path = None
            elif inputs is not None:
                ctx.notes.append("executor_runner takes one input file: the first given sample is used for every run")
            return
        # the app cannot read /data/local/tmp (SELinux): copy into its private files through run-as
        proc = self.adb.run("shell", f"run-as {APP_PACKAGE} mkdir -p files/mobilec", check=False)
        out = proc.stdout + proc.stderr
        if proc.returncode != 0 or "unknown" in out.lower() or "not debuggable" in out.lower():
            raise MobilecError(f"the demo app {APP_PACKAGE} is not installed (or not debuggable) on {self.name}: {out.strip()[:120]}",
                               hint=APP_HINT)
        for src_attr in ("model_path", "input_path"):
            src = getattr(ctx, src_attr)
            if src is None:
                continue
            name = Path(src).name
            self.adb.shell(f"cat {src} | run-as {APP_PACKAGE} sh -c 'cat > files/mobilec/{name}'")
            setattr(ctx, src_attr, f"{APP_FILES}/mobilec/{name}")
            ctx.app_files.append(f"files/mobilec/{name}")

    def _repetition(self, ctx: _RunContext, r: int, method: str) -> tuple[Repetition, dict[str, Any] | None]:
        """One repetition; with an energy method, sampled during the run and during an idle window of the same length."""
        sampler: _Sampler | None = None
        if method == "battery_sysfs":
            sampler = _BatterySampler(self.adb, self.profile.sample_hz)
        elif method == "power_stats":
            sampler = _RailSampler(self.adb, self.profile.sample_hz)
        if sampler:
            sampler.start()
        t0 = time.monotonic()
        try:
            rep = self._run_app(ctx, r) if self.runner is None else self._run_runner(ctx, r)
            window = rep.extra.get("timed_window_s")
            if sampler is not None and window:
                sampler.wait_past(window[1], timeout_s=1.0 + 3 / self.profile.sample_hz)
        finally:
            run_samples = sampler.stop() if sampler else []
        if sampler is None:
            return rep, None
        run_s = time.monotonic() - t0
        sampler.start()
        try:
            time.sleep(run_s)
        finally:
            idle_samples = sampler.stop()
        return rep, {"run": run_samples, "idle": idle_samples, "run_s": run_s, "timed_window": rep.extra.get("timed_window_s"),
                     "timed_s": sum(rep.latencies_ms) / 1000, "inferences": len(rep.latencies_ms)}

    def _run_app(self, ctx: _RunContext, r: int) -> Repetition:
        out_name = f"results-{ctx.run_id}-{r}.json"
        ctx.app_files.append(f"files/{out_name}")
        cmd = (f"am start -S -W -n {APP_ACTIVITY} --es model {ctx.model_path} --ei iters {ctx.runs} --ei warmup {ctx.warmup} "
               f"--ei threads {ctx.threads} --es out {out_name}" + (f" --es input {ctx.input_path}" if ctx.input_path else ""))
        out = self.adb.shell(cmd, check=False)
        if "Error type 3" in out or "does not exist" in out or "Error: Activity not started" in out:
            raise MobilecError(f"the demo app's BenchmarkActivity is missing on {self.name}: {first_error(out)}", hint=APP_HINT)
        if re.search(r"^Error", out, re.M):
            raise MobilecError(f"`am start` failed on {self.name}: {first_error(out)}", hint=APP_HINT)
        deadline = time.monotonic() + self.result_timeout_s
        odd = 0  # consecutive answers that are neither the results nor "no such file (yet)"
        while True:
            proc = self.adb.run("shell", f"run-as {APP_PACKAGE} cat files/{out_name}", check=False)
            text = proc.stdout.strip()
            answer = (proc.stdout + proc.stderr).strip()
            if text.startswith("{"):
                try:
                    res = json.loads(text)
                    break
                except json.JSONDecodeError:
                    pass  # being written: poll again
            elif "not debuggable" in answer or "unknown package" in answer.lower():
                raise MobilecError(f"cannot read the app's results on {self.name}: {answer[:120]}", hint=APP_HINT)
            elif "No such file" in answer:
                odd = 0  # not written yet
            else:
                odd += 1
                if odd >= 5:
                    raise MobilecError(f"reading the app's results on {self.name} keeps failing: {first_error(answer)}",
                                       hint="check the device with `adb devices` and `adb logcat -s mobilec`")
            if time.monotonic() > deadline:
                raise MobilecError(f"the demo app wrote no results within {self.result_timeout_s:.0f} s on {self.name}",
                                   hint="unlock the phone and keep the screen on; check `adb logcat -s mobilec`")
            time.sleep(self.poll_s)
        return _repetition_from_app(res, r, ctx, self.name)

    def _run_runner(self, ctx: _RunContext, r: int) -> Repetition:
        mask = self.profile.cpu_mask
        pin = f"taskset {mask} " if mask else ""
        if ctx.runner_kind == "litert":
            cmd = (f"{pin}{ctx.runner_path} --graph={ctx.model_path} --num_runs={ctx.runs} --warmup_runs={ctx.warmup} "
                   f"--num_threads={ctx.threads}")
            proc = self.adb.run("shell", cmd, check=False)
            text = proc.stdout + proc.stderr
            got = parse_benchmark_model(text)
            if "inference_avg_ms" not in got:
                raise MobilecError(f"benchmark_model failed on {self.name}: {first_error(text)}",
                                   hint="check the binary matches the phone's ABI and the model loads (run it by hand)")
            runs = got.get("runs", {})
            ctx.samples_kind = "per_repetition_mean"
            if r == 0:
                ctx.notes.append("benchmark_model reports a mean per invocation: latency samples are per-repetition means; "
                                 "its own per-run statistics are in each repetition's runner_stats")
            if got.get("memory_overall_bytes"):
                ctx.peak_memory.append(got["memory_overall_bytes"])
            return Repetition(index=r, latencies_ms=[got["inference_avg_ms"]], first_run_ms=got.get("first_run_ms"),
                              load_ms=got.get("init_ms"), extra={"runner_stats": runs, "pinned": mask or "no"})
        args = f"--model_path {ctx.model_path} --num_executions {ctx.warmup + ctx.runs}"
        args += f" --inputs {ctx.input_path}" if ctx.input_path else ""
        threads = "" if ctx.no_cpu_threads_flag else f" --cpu_threads {ctx.threads}"
        self.adb.shell("logcat -c", check=False)
        proc = self.adb.run("shell", f"{pin}{ctx.runner_path} {args}{threads}", check=False)
        text = proc.stdout + proc.stderr
        if "cpu_threads" in text and "unknown command line flag" in text.lower():
            ctx.no_cpu_threads_flag = True
            ctx.notes.append("this executor_runner has no --cpu_threads flag: it chose its own thread count")
            proc = self.adb.run("shell", f"{pin}{ctx.runner_path} {args}", check=False)
            text = proc.stdout + proc.stderr
        got = parse_executor_runner(text)
        if "total_ms" not in got and "iterations_ms" not in got:  # Android builds log to logcat
            text = self.adb.shell("logcat -d -v raw -s ExecuTorch:I", check=False)
            got = parse_executor_runner(text)
        if "total_ms" not in got and "iterations_ms" not in got:
            raise MobilecError(f"executor_runner failed on {self.name}: {first_error(proc.stdout + proc.stderr)}",
                               hint="check the binary matches the phone's ABI and was built with the XNNPACK backend")
        its = got.get("iterations_ms")
        if its and len(its) == ctx.warmup + ctx.runs:
            return Repetition(index=r, latencies_ms=its[ctx.warmup:], first_run_ms=its[0], load_ms=got.get("load_ms"),
                              extra={"pinned": mask or "no"})
        if r == 0:
            ctx.notes.append("executor_runner printed only its total time: latency samples are per-repetition means "
                             "and include the warm-up executions")
        ctx.samples_kind = "per_repetition_mean"
        return Repetition(index=r, latencies_ms=[got["total_ms"] / got["executions"]], load_ms=got.get("load_ms"),
                          extra={"pinned": mask or "no"})

    def _cleanup(self, ctx: _RunContext) -> None:
        try:
            self.adb.shell(f"rm -rf {ctx.remote}", check=False)
            if ctx.app_files:
                self.adb.shell(f"run-as {APP_PACKAGE} rm -f {' '.join(shlex.quote(f) for f in ctx.app_files)}", check=False)
        except MobilecError:  # the results are complete: a failed clean-up is a note, not an error
            ctx.notes.append(f"could not remove {ctx.remote} (and the app's copies) from the device")

    def _measurement(self, ctx: _RunContext, reps: list[Repetition], windows: list[dict[str, Any]], method: str,
                     flags: list[str], notes: list[str], before: dict[str, Any], after: dict[str, Any], prof: DeviceProfile,
                     reps_n: int, cooldown: float, *, partial: bool) -> Measurement:
        peak = max(ctx.peak_memory) if ctx.peak_memory else None
        peak_method = None
        if peak is not None:
            peak_method = ("the demo app's peak RSS (VmHWM), largest over repetitions" if self.runner is None
                           else "benchmark_model's memory footprint 'overall' (approximate, per the tool), largest over repetitions")
        elif self.runner is not None:
            notes.append("executor_runner reports no memory figure: peak_memory_bytes is unknown")
        m = Measurement.from_repetitions(
            artifact=str(ctx.artifact), device=self.name, runtime=ctx.runtime, repetitions=reps, samples_kind=ctx.samples_kind,
            peak_memory_bytes=peak, peak_memory_method=peak_method, conditions={"before": before, "after": after},
            device_info=self.describe(), notes=notes, partial=partial,
            settings={"runs": ctx.runs, "warmup": ctx.warmup, "threads": ctx.threads, "repetitions": reps_n, "cooldown_s": cooldown,
                      "cores": list(prof.big_cores) or "not pinned", "profile": prof.name,
                      "path": f"runner {self.runner.name}" if self.runner else f"demo app {APP_ACTIVITY}",
                      "inputs": "given samples" if ctx.input_path else "seeded random tensor (app) / runner default"},
        )
        if windows:
            try:
                m.energy = self._energy(windows, method, flags, prof)
            except MobilecError as exc:
                m.notes.append(f"no energy figure: {exc}")
        return m

    def _energy(self, windows: list[dict[str, Any]], method: str, flags: list[str], prof: DeviceProfile) -> Any:
        if method == "power_stats":
            rails = [_rail_window(w) for w in windows]
            cut = sum(1 for w in rails if w["cut"])
            if cut < len(rails):
                flags = [*flags, _WINDOW_FLAG.format(n=len(rails) - cut, of=len(rails))]
            energy = en.energy_from_rail_deltas(
                rails, flags=flags,
                method=f"measured: PowerStats HAL energy meters (sum of {windows[0]['run'][0][2]} rails, dumpsys IPowerStats "
                       f"read at up to {prof.sample_hz:g} Hz, interpolated to the timed runs), minus an idle window of equal length",
            )
            energy.details["note"] = ("linear interpolation between meter readings blurs each edge of the timed window by up to "
                                      "a quarter of the reading interval: keep the timed runs much longer than 1/sample_hz")
            return energy
        def mw(samples: list[tuple[float, float, float | None]]) -> list[float]:
            return [en.current_to_amps(c, prof.current_unit) * en.voltage_to_volts(v, prof.battery_voltage_nominal_v) * 1000
                    for _, c, v in samples]
        run: list[float] = []
        idle: list[float] = []
        duration, inferences, cut = 0.0, 0, 0
        for w in windows:
            tw = w.get("timed_window")
            inside = [smp for smp in w["run"] if tw and tw[0] <= smp[0] <= tw[1]]
            if tw and len(inside) >= 2:  # samples taken while the timed runs ran
                run += mw(inside)
                duration += tw[1] - tw[0]
                cut += 1
            else:
                run += mw(w["run"])
                duration += w["timed_s"]
            idle += mw(w["idle"])
            inferences += w["inferences"]
        if cut < len(windows):
            flags = [*flags, _WINDOW_FLAG.format(n=len(windows) - cut, of=len(windows))]
        run_s = sum(w["run_s"] for w in windows)
        return en.energy_from_power_samples(
            run, idle, duration_s=duration, inferences=inferences,
            method=f"measured: battery current_now x voltage_now ({prof.current_unit}) sampled at {prof.sample_hz:g} Hz during "
                   "the timed runs, minus an idle window of equal length",
            details={"sample_rate_hz_achieved": sum(len(w["run"]) for w in windows) / run_s if run_s > 0 else None,
                     "benchmark_window_s": run_s, "repetitions_cut_to_timed_window": cut},
            flags=flags,
        )

    def _save_partial(self, m: Measurement, artifact: Path) -> Path | None:
        base = self.partial_dir or artifact.parent
        for folder in (base, Path(tempfile.gettempdir())):
            for i in range(100):
                path = folder / f"{artifact.stem}.{self.name.replace(':', '_')}.partial-profile{'' if i == 0 else f'-{i}'}.json"
                if path.exists():
                    continue
                try:
                    return m.save(path)
                except OSError:
                    break
        return None


@dataclass
class _RunContext:
    run_id: str
    remote: str
    artifact: Path
    runtime: str
    runs: int
    warmup: int
    threads: int
    runner_kind: str | None
    model_path: str = ""
    input_path: str | None = None
    runner_path: str = ""
    app_files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    peak_memory: list[int] = field(default_factory=list)
    samples_kind: str = "per_run"
    no_cpu_threads_flag: bool = False


_APP_KEYS = ("runtime", "latencies_ms", "load_ms", "first_run_ms", "peak_memory_kb", "timed_window_ms")


def _repetition_from_app(res: Any, r: int, ctx: _RunContext, serial: str) -> Repetition:
    if not isinstance(res, dict):
        raise MobilecError(f"the demo app's results on {serial} are not a JSON object", hint="update the demo app (see adb.py schema)")
    if res.get("error"):
        raise MobilecError(f"the demo app failed on {serial}: {str(res['error'])[:200]}",
                           hint=f"check the artifact loads in the app's {ctx.runtime} runtime (adb logcat -s mobilec)")
    lat = res.get("latencies_ms")
    if not isinstance(lat, list) or not lat or not all(isinstance(x, int | float) and x >= 0 for x in lat):
        raise MobilecError(f"the demo app's results on {serial} have no valid latencies_ms list",
                           hint="update the demo app so it writes the schema documented in mobilec/profile/adb.py")
    if len(lat) != ctx.runs:
        ctx.notes.append(f"repetition {r}: the app reported {len(lat)} timed runs, {ctx.runs} were asked for")
    if res.get("runtime") not in (None, ctx.runtime):
        ctx.notes.append(f"the app reports runtime {res.get('runtime')!r} for a {ctx.runtime} artifact")
    if isinstance(res.get("peak_memory_kb"), int | float):
        ctx.peak_memory.append(int(res["peak_memory_kb"] * 1024))
    num = lambda k: float(res[k]) if isinstance(res.get(k), int | float) else None  # noqa: E731
    extra: dict[str, Any] = {"app": {k: v for k, v in res.items() if k not in _APP_KEYS and k != "error"}}
    tw = res.get("timed_window_ms")
    if isinstance(tw, list) and len(tw) == 2 and all(isinstance(x, int | float) for x in tw) and tw[1] > tw[0]:
        extra["timed_window_s"] = [tw[0] / 1000, tw[1] / 1000]
    return Repetition(index=r, latencies_ms=[float(x) for x in lat], first_run_ms=num("first_run_ms"), load_ms=num("load_ms"),
                      extra={k: v for k, v in extra.items() if v})
