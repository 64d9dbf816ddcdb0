"""Device profiles: ``profiles/*.toml`` — how to measure on a kind of device.

A profile fixes the measurement protocol (runs, warm-up, repetitions, cool-down, which
cores to pin) and how energy can be obtained on it. Loading is strict: an unknown key or
an ill-typed value is a MobilecError naming the key and the file.

Keys (all optional except ``kind`` and ``description``):

- ``kind``: ``"host"`` | ``"adb"`` | ``"emulator"``
- ``description``: one line shown by ``mobilec devices --profiles``
- ``soc``: the system on chip, for the record
- ``match_models``: ``ro.product.model`` values this profile is chosen for automatically
- ``big_cores``: CPU ids to pin the runner to (``taskset``); empty: no pinning
- ``threads``, ``warmup``, ``runs``, ``repetitions``: defaults of the protocol
- ``cooldown_s``: sleep between repetitions (lets clocks and temperature settle)
- ``energy_method``: ``"battery_sysfs"`` (sample ``current_now`` × ``voltage_now``),
  ``"power_stats"`` (energy-meter deltas of the PowerStats HAL, Pixel 6 and later),
  ``"estimate"`` (analytical model; the host), or ``"none"`` (emulators)
- ``sample_hz``: battery sampling rate for ``battery_sysfs``
- ``battery_voltage_nominal_v``: used when ``voltage_now`` cannot be read
- ``current_unit``: unit of ``current_now``: ``"uA"`` (the kernel's documented unit and what
  most phones report) or ``"mA"`` (some vendor kernels, e.g. several Samsung and Xiaomi
  builds); check with ``adb shell cat /sys/class/power_supply/battery/current_now`` while
  idle: a phone draws roughly 100-1000 mA, so a value in the hundreds means mA.

>>> p = load_profile("pixel-8")        # doctest: +SKIP
>>> p.big_cores, p.energy_method       # doctest: +SKIP
((7, 8), 'power_stats')
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from mobilec.errors import MobilecError

KINDS = ("host", "adb", "emulator")
ENERGY_METHODS = ("battery_sysfs", "power_stats", "none", "estimate")
CURRENT_UNITS = ("uA", "mA")


def profiles_dir() -> Path:
    """The folder profile names resolve in: $MOBILEC_PROFILES_DIR or the repo's ``profiles/``."""
    env = os.environ.get("MOBILEC_PROFILES_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "profiles"


@dataclass(frozen=True, kw_only=True)
class DeviceProfile:
    """A measurement protocol for one kind of device (see the module docstring for the keys)."""

    name: str
    kind: str
    description: str
    soc: str = ""
    match_models: tuple[str, ...] = ()
    big_cores: tuple[int, ...] = ()
    threads: int = 1
    warmup: int = 5
    runs: int = 50
    repetitions: int = 3
    cooldown_s: float = 2.0
    energy_method: str = "none"
    sample_hz: float = 10.0
    battery_voltage_nominal_v: float = 3.85
    current_unit: str = "uA"
    path: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    @property
    def cpu_mask(self) -> str | None:
        """Hex affinity mask of ``big_cores`` for ``taskset`` (None: no pinning)."""
        return format(sum(1 << c for c in self.big_cores), "x") if self.big_cores else None


# key -> (python type(s) accepted, check, description of the valid values)
_SPEC: dict[str, tuple[tuple[type, ...], Any, str]] = {
    "kind": ((str,), lambda v: v in KINDS, f"one of {', '.join(KINDS)}"),
    "description": ((str,), lambda v: bool(v.strip()), "a non-empty string"),
    "soc": ((str,), lambda v: True, "a string"),
    "match_models": ((list,), lambda v: all(isinstance(x, str) for x in v), "a list of strings"),
    "big_cores": ((list,), lambda v: all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 256 for x in v),
                  "a list of CPU ids (integers 0..255)"),
    "threads": ((int,), lambda v: v >= 1, "an integer >= 1"),
    "warmup": ((int,), lambda v: v >= 0, "an integer >= 0"),
    "runs": ((int,), lambda v: v >= 1, "an integer >= 1"),
    "repetitions": ((int,), lambda v: v >= 1, "an integer >= 1"),
    "cooldown_s": ((int, float), lambda v: v >= 0, "a number of seconds >= 0"),
    "energy_method": ((str,), lambda v: v in ENERGY_METHODS, f"one of {', '.join(ENERGY_METHODS)}"),
    "sample_hz": ((int, float), lambda v: 0 < v <= 1000, "a rate in Hz in (0, 1000]"),
    "battery_voltage_nominal_v": ((int, float), lambda v: 1.0 <= v <= 10.0, "a voltage in volts (1..10)"),
    "current_unit": ((str,), lambda v: v in CURRENT_UNITS, f"one of {', '.join(CURRENT_UNITS)}"),
}
_REQUIRED = ("kind", "description")


def _parse(data: dict[str, Any], name: str, where: str) -> DeviceProfile:
    unknown = sorted(set(data) - set(_SPEC))
    if unknown:
        raise MobilecError(f"{where}: unknown key {unknown[0]!r}", hint=f"valid keys: {', '.join(sorted(_SPEC))}")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise MobilecError(f"{where}: missing key {missing[0]!r}", hint=f"add {missing[0]} = ... ({_SPEC[missing[0]][2]})")
    values: dict[str, Any] = {}
    for key, value in data.items():
        types, check, valid = _SPEC[key]
        if isinstance(value, bool) or not isinstance(value, types) or not check(value):
            raise MobilecError(f"{where}: key {key!r} has invalid value {value!r}", hint=f"{key} must be {valid}")
        values[key] = tuple(value) if isinstance(value, list) else value
    if values.get("kind") == "emulator" and values.get("energy_method", "none") not in ("none",):
        raise MobilecError(f"{where}: energy_method {values['energy_method']!r} on an emulator",
                           hint='emulators have no battery or power rails: use energy_method = "none"')
    return DeviceProfile(name=name, path=where, **values)


def load_profile(name_or_path: str | Path) -> DeviceProfile:
    """Load ``profiles/<name>.toml`` or a path to a profile file (strict: see the module docstring)."""
    text_name = str(name_or_path)
    is_path = text_name.endswith(".toml") or os.sep in text_name or "/" in text_name
    path = Path(text_name) if is_path else profiles_dir() / f"{text_name}.toml"
    if not path.is_file():
        if is_path:
            raise MobilecError(f"device profile {path} does not exist", hint="give the path of a .toml device profile")
        raise MobilecError(f"unknown device profile {text_name!r}", hint=f"available: {', '.join(list_profiles()) or '(none)'}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise MobilecError(f"{path}: not valid TOML ({exc})", hint="fix the syntax of the profile file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MobilecError(f"{path}: cannot be read ({exc})", hint="check the file's permissions and encoding") from None
    return _parse(data, path.stem, str(path))


def list_profiles() -> dict[str, str]:
    """``{name: description}`` of every profile in ``profiles_dir()`` (files that fail to load are skipped)."""
    folder = profiles_dir()
    out: dict[str, str] = {}
    for p in sorted(folder.glob("*.toml")) if folder.is_dir() else []:
        try:
            out[p.stem] = load_profile(p).description
        except MobilecError:
            continue
    return out


def profile_for(model: str | None, *, emulator: bool, abi: str | None) -> DeviceProfile:
    """The profile to use for an attached device: one whose ``match_models`` lists its model, else a generic one."""
    if emulator:
        return load_profile("emulator-x86_64" if abi and abi.startswith("x86") else "emulator-arm64")
    folder = profiles_dir()
    for p in sorted(folder.glob("*.toml")) if folder.is_dir() else []:
        try:
            prof = load_profile(p)
        except MobilecError:
            continue
        if model and prof.kind == "adb" and model in prof.match_models:
            return prof
    return load_profile("android-generic")
