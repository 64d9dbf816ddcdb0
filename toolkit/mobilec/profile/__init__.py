"""Profiling: latency, load time, peak memory and energy of an artifact, on the host or a phone.

>>> from mobilec.profile import profile_artifact
>>> m = profile_artifact("runs/int8/model.tflite", device="host", runs=50)     # doctest: +SKIP
>>> m.latency["p50"], m.peak_memory_bytes, m.energy.kind                       # doctest: +SKIP
(0.41, 5242880, 'estimated')
>>> m = profile_artifact("runs/int8/model.pte", device="adb:R5CT123ABC")       # doctest: +SKIP

Devices: ``"host"`` (this machine, the artifact's own Python runtime in a fresh process),
``"adb"`` (the one attached Android device), ``"adb:SERIAL"``, or a serial such as
``"emulator-5554"``. Profiles (``profiles/*.toml``) fix the protocol per kind of device.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import numpy as np

from mobilec.errors import MobilecError
from mobilec.profile.device import (
    Device,
    EnergyEstimate,
    EnergyMeasurement,
    Measurement,
    ProfilingInterrupted,
    Repetition,
    runtime_for,
)
from mobilec.profile.profiles import DeviceProfile, list_profiles, load_profile

__all__ = [
    "Device",
    "DeviceProfile",
    "EnergyEstimate",
    "EnergyMeasurement",
    "Measurement",
    "ProfilingInterrupted",
    "Repetition",
    "get_device",
    "list_devices",
    "list_profiles",
    "load_profile",
    "profile_artifact",
    "runtime_for",
]


def list_devices() -> list[Any]:
    """Android devices and emulators adb sees (``AndroidDeviceInfo``; unauthorized/offline ones carry a ``problem``)."""
    from mobilec.profile.adb import list_devices as _list

    return _list()


def get_device(spec: str = "host", profile: DeviceProfile | str | None = None, **kwargs: Any) -> Device:
    """A Device from ``"host"``, ``"adb"``, ``"adb:SERIAL"`` or a bare serial (``"emulator-5554"``).

    ``kwargs`` go to the device (``repetitions``, ``cooldown_s``, ``show_progress`` for the host;
    ``runner``, ``allow_charging``, ``repetitions``, ``cooldown_s`` for adb).
    """
    spec = (spec or "host").strip()
    if spec == "host":
        from mobilec.profile.host import HostDevice

        host_kwargs = {k: v for k, v in kwargs.items() if k in ("repetitions", "cooldown_s", "show_progress", "opener",
                                                                 "energy_layers", "timeout_s", "seed")}
        _refuse_unused(kwargs, host_kwargs, "host")
        return HostDevice(profile, **host_kwargs)
    from mobilec.profile.adb import AdbDevice
    from mobilec.profile.adb import list_devices as _list

    adb_kwargs = {k: v for k, v in kwargs.items() if k in ("repetitions", "cooldown_s", "runner", "allow_charging", "exe",
                                                            "poll_s", "result_timeout_s", "partial_dir")}
    _refuse_unused(kwargs, adb_kwargs, "adb")
    if spec == "adb":
        found = _list()
        usable = [d for d in found if d.state == "device"]
        if not found:
            raise MobilecError("no Android device is attached (adb devices lists none)",
                               hint="connect a phone with USB debugging on, or start an emulator; then `mobilec devices`")
        if not usable:
            if len(found) == 1:
                raise MobilecError(found[0].problem or f"device {found[0].serial} is {found[0].state}",
                                   hint=found[0].hint or "reconnect it")
            raise MobilecError("no attached device is usable: " + "; ".join(f"{d.serial}: {d.state}" for d in found),
                               hint="accept the USB debugging prompt on the phone, or reconnect it")
        if len(usable) > 1:
            raise MobilecError(f"several devices are attached ({', '.join(d.serial for d in usable)})",
                               hint="choose one with --device adb:SERIAL")
        return AdbDevice(usable[0].serial, profile, info=usable[0], **adb_kwargs)
    serial = spec.split(":", 1)[1] if spec.startswith("adb:") else spec
    if not serial:
        raise MobilecError(f"device {spec!r} names no serial", hint="use adb:SERIAL (see `mobilec devices`)")
    return AdbDevice(serial, profile, **adb_kwargs)


def _refuse_unused(given: dict[str, Any], used: dict[str, Any], kind: str) -> None:
    extra = sorted(k for k, v in given.items() if k not in used and v not in (None, False))
    if extra:
        raise MobilecError(f"option(s) {', '.join(extra)} do not apply to {kind} profiling",
                           hint="--runner and --allow-charging are for adb devices" if kind == "host" else "drop them")


def profile_artifact(
    path: str | Path,
    *,
    device: str = "host",
    profile: DeviceProfile | str | None = None,
    runs: int | None = None,
    warmup: int | None = None,
    threads: int | None = None,
    repetitions: int | None = None,
    inputs: np.ndarray | None = None,
    runner: str | Path | None = None,
    allow_charging: bool = False,
    show_progress: bool | None = None,
    energy_layers: list[Any] | None = None,
) -> Measurement:
    """Measure ``path`` (.pte / .tflite / .onnx) on ``device``; returns a Measurement.

    ``runs``, ``warmup``, ``threads``, ``repetitions`` default to the device profile's (host:
    50, 5, 1, 3). ``inputs``: real samples (one, or a batch cycled one per run); without them
    a fixed seeded random tensor of the artifact's input shape. ``runner``: on adb, an
    ``executor_runner`` / ``benchmark_model`` binary to use instead of the demo app.
    ``allow_charging``: measure energy on a charging phone (flagged loudly in the result).
    ``energy_layers``: per-layer work (``energy.LayerWork``) for the host estimate of a .pte.
    """
    path = Path(path)
    runtime_for(path)
    if not path.is_file():
        raise MobilecError(f"artifact {path} does not exist", hint="give the path of a .pte, .tflite or .onnx file")
    kwargs: dict[str, Any] = {"repetitions": repetitions}
    if (device or "host") == "host":
        kwargs.update(show_progress=show_progress, energy_layers=energy_layers)
        if runner is not None or allow_charging:
            raise MobilecError("--runner and --allow-charging apply to adb devices, not the host",
                               hint="drop them, or use --device adb[:SERIAL]")
    else:
        kwargs.update(runner=Path(runner) if runner is not None else None, allow_charging=allow_charging)
    dev = get_device(device, profile, **kwargs)
    prof: DeviceProfile = dev.profile  # type: ignore[attr-defined]
    return dev.run(
        path,
        runs=runs if runs is not None else prof.runs,
        warmup=warmup if warmup is not None else prof.warmup,
        threads=threads if threads is not None else prof.threads,
        inputs=inputs,
    )


class _CallableModule(types.ModuleType):
    """``mobilec.profile`` is both this package and the API function ``mobilec.profile(artifact, ...)``.

    Importing the package replaces the function attribute on ``mobilec``; making the package
    callable keeps ``mobilec.profile("model.pte", device="host")`` working afterwards.
    """

    def __call__(self, artifact: str | Path, *, device: str = "host", **kwargs: Any) -> Measurement:
        return profile_artifact(artifact, device=device, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
