"""The adb driver against a scripted stand-in `adb` (tests/fake_adb/adb) — and, when asked, a real phone."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mobilec.errors import MobilecError
from mobilec.profile import ProfilingInterrupted, get_device, list_devices, profile_artifact
from mobilec.profile.adb import AdbDevice, find_adb

FAKE = Path(__file__).parent / "fake_adb" / "adb"
SCENARIOS = Path(__file__).parent / "fake_adb" / "scenarios"


class Fake:
    """Points mobilec at the stand-in adb with one scenario; reads back what the 'phone' saw."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp, self.mp = tmp_path, monkeypatch
        self.state = tmp_path / "adb-state"
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        self.exe = self.bin / "adb"
        # -I -S: the stand-in needs only the standard library; skipping site makes each call ~30 ms
        self.exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" -I -S "{FAKE}" "$@"\n')
        self.exe.chmod(0o755)
        monkeypatch.setenv("MOBILEC_ADB", str(self.exe))
        monkeypatch.setenv("FAKE_ADB_STATE", str(self.state))

    def use(self, scenario: str, **device_overrides) -> dict:
        data = json.loads((SCENARIOS / f"{scenario}.json").read_text())
        data["devices"][0].update(device_overrides)
        path = self.tmp / f"{scenario}.json"
        path.write_text(json.dumps(data))
        self.mp.setenv("FAKE_ADB_SCENARIO", str(path))
        shutil.rmtree(self.state, ignore_errors=True)  # a fresh phone
        return data["devices"][0]

    def commands(self) -> list[dict]:
        log = self.state / "commands.log"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def shells(self) -> list[str]:
        return [c["shell"] for c in self.commands() if "shell" in c]

    def state_json(self) -> dict:
        return json.loads((self.state / "state.json").read_text())

    def device_files(self, serial: str) -> list[str]:
        root = self.state / "fs" / serial
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture
def fake(tmp_path, monkeypatch) -> Fake:
    return Fake(tmp_path, monkeypatch)


@pytest.fixture
def model(tmp_path) -> Path:
    p = tmp_path / "model.pte"
    p.write_bytes(b"\x00" * 64)  # the stand-in phone does not parse models
    return p


def _profile(tmp_path: Path, **keys) -> Path:
    """A test profile: no cool-down, fast sampling."""
    body = {"kind": "adb", "description": "test", "cooldown_s": 0.0, "repetitions": 2, "energy_method": "none", **keys}
    path = tmp_path / "test-profile.toml"
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in body.items()))
    return path


# ------------------------------------------------------------------------------------------ finding adb and devices


def test_adb_is_found_on_path_or_named(fake, monkeypatch, tmp_path):
    assert find_adb() == str(fake.exe)
    monkeypatch.delenv("MOBILEC_ADB")
    monkeypatch.setenv("PATH", f"{fake.bin}{os.pathsep}{os.environ['PATH']}")
    assert find_adb() == str(fake.exe)
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("ANDROID_HOME", raising=False)
    monkeypatch.delenv("ANDROID_SDK_ROOT", raising=False)
    with pytest.raises(MobilecError, match=r"apt-get install adb.*MOBILEC_ADB"):
        find_adb()
    monkeypatch.setenv("MOBILEC_ADB", str(tmp_path / "no-such-adb"))
    with pytest.raises(MobilecError, match="not an executable file"):
        find_adb()


def test_list_devices_reads_properties_and_battery(fake):
    fake.use("phone")
    (d,) = list_devices()
    assert (d.serial, d.state, d.kind, d.model, d.abi, d.android_version) == ("FAKE0001", "device", "adb", "Pixel 7a", "arm64-v8a", "14")
    assert d.battery_level == 81 and d.charging is False and d.transport["usb"] == "1-1"


def test_emulator_is_recognised(fake):
    fake.use("emulator")
    (d,) = list_devices()
    assert d.kind == "emulator" and d.abi == "x86_64"
    dev = get_device("emulator-5554")
    assert dev.profile.name == "emulator-x86_64" and dev.kind == "emulator"


@pytest.mark.parametrize(("scenario", "message"), [
    ("unauthorized", "accept the USB debugging prompt on the phone"),
    ("offline", "offline.*adb reconnect"),
])
def test_unusable_devices_give_clear_errors(fake, model, scenario, message):
    dev_conf = fake.use(scenario)
    (d,) = list_devices()
    assert d.state == scenario and d.problem and d.hint and d.model is None
    with pytest.raises(MobilecError, match=message):
        get_device("adb")
    with pytest.raises(MobilecError, match=message):
        AdbDevice(dev_conf["serial"], "android-generic").run(model, runs=5, warmup=1, threads=1)


def test_missing_device_and_onnx(fake, model, tmp_path):
    fake.use("phone")
    with pytest.raises(MobilecError, match="NOPE is not attached"):
        AdbDevice("NOPE", "android-generic").run(model, runs=5, warmup=1, threads=1)
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"x")
    with pytest.raises(MobilecError, match="host only"):
        get_device("adb:FAKE0001", "android-generic").run(onnx, runs=5, warmup=1, threads=1)


# ------------------------------------------------------------------------------------------ the demo app path


def test_app_run_with_battery_energy(fake, model, tmp_path):
    conf = fake.use("phone")
    prof = _profile(tmp_path, energy_method="battery_sysfs", sample_hz=20.0)
    m = get_device("adb:FAKE0001", str(prof), poll_s=0.05).run(model, runs=10, warmup=2, threads=2)
    # latencies are the app's, per run, per repetition
    assert m.device == "FAKE0001" and m.runtime == "executorch" and m.samples_kind == "per_run" and not m.partial
    assert len(m.samples_ms) == 20 and len(m.repetitions) == 2
    assert abs(m.latency["p50"] - conf["app"]["latency_ms"]) < 1.0
    assert m.load_ms == 35.0 and m.first_run_ms == 9.5 and m.peak_memory_bytes == 51200 * 1024
    # the activity got the documented extras; the model was copied into the app's files
    extras = fake.state_json()["extras"]
    assert extras[0]["iters"] == 10 and extras[0]["warmup"] == 2 and extras[0]["threads"] == 2
    assert extras[0]["model"] == "/data/data/dev.mobilec.demo/files/mobilec/model.pte"
    assert any("| run-as dev.mobilec.demo sh -c 'cat > files/mobilec/model.pte'" in s for s in fake.shells())
    # energy: (P_run - P_idle) x timed window / inferences; the stand-in draws 0.6 A more at 4.0 V = 2400 mW,
    # for 0.4 s per repetition: 2400 x 0.8 / 20 = 96 mJ
    e = m.energy
    assert e.kind == "measured" and e.method.startswith("measured: battery current_now x voltage_now")
    assert e.details["delta_power_mw"] == pytest.approx(2400, rel=0.03)
    assert e.mj_per_inference == pytest.approx(e.details["delta_power_mw"] * e.duration_s / e.inferences)
    assert e.mj_per_inference == pytest.approx(96, rel=0.05) and e.uncertainty_mj < 0.05 * e.mj_per_inference
    assert e.details["repetitions_cut_to_timed_window"] == 2 and not e.flags
    # conditions before and after; pushed files cleaned up
    for side in ("before", "after"):
        c = m.conditions[side]
        assert c["charging"] is False and c["screen_on"] is True and c["max_temp_c"] == 43.0 and c["cpu_freq_mhz"]["cpu7"] == 2850
    assert fake.device_files("FAKE0001") == []
    assert any(s.startswith("rm -rf /data/local/tmp/mobilec/") for s in fake.shells())
    json.dumps(m.to_dict())


def test_power_rails_on_a_pixel(fake, model, tmp_path):
    # 20 runs of 100 ms fill the 2 s timed window: long enough for several meter readings on a loaded CI host
    fake.use("pixel8_rails", app={"installed": True, "latency_ms": 100.0, "jitter_ms": 0.1, "run_s": 2.0})
    dev = get_device("adb")
    assert dev.profile.name == "pixel-8"  # chosen from ro.product.model
    prof = _profile(tmp_path, energy_method="power_stats", sample_hz=20.0, repetitions=1)
    m = get_device("adb", str(prof), poll_s=0.05).run(model, runs=20, warmup=2, threads=1)
    # the stand-in's big-core rail draws 600 mW more during the 2 s timed window: 600 x 2 / 20 = 60 mJ
    # (readings ~0.05 s apart; linear interpolation blurs each window edge by at most 600 mW x gap / 4)
    assert m.energy.kind == "measured" and "PowerStats" in m.energy.method
    w = m.energy.details["windows"][0]
    assert w["cut"], m.energy.flags  # the readings covered the timed window, so the energy was cut to it
    assert m.energy.mj_per_inference == pytest.approx(60.0, rel=0.1)
    assert w["idle_mj"] / w["idle_s"] == pytest.approx(75.0, rel=0.05)  # the rails' idle draw


def test_refuses_energy_while_charging(fake, model, tmp_path):
    fake.use("charging")
    prof = str(_profile(tmp_path, energy_method="battery_sysfs", sample_hz=20.0, repetitions=1))
    with pytest.raises(MobilecError, match=r"charging \(USB powered: true\).*adb tcpip 5555.*--allow-charging"):
        get_device("adb", prof, poll_s=0.05).run(model, runs=5, warmup=1, threads=1)
    m = get_device("adb", prof, poll_s=0.05, allow_charging=True).run(model, runs=5, warmup=1, threads=1)
    assert m.energy is not None and any("MEASURED WHILE CHARGING" in f for f in m.energy.flags)
    assert m.conditions["before"]["charging"] is True


def test_emulator_has_no_energy(fake, model):
    fake.use("emulator")
    m = get_device("emulator-5554", repetitions=1, cooldown_s=0.0, poll_s=0.05).run(model, runs=5, warmup=1, threads=1)
    assert m.energy is None and "emulators have no battery/power rails" in " ".join(m.notes)
    assert not any("current_now" in s for s in fake.shells())


def test_missing_app_is_a_clear_error(fake, model, tmp_path):
    fake.use("no_app")
    with pytest.raises(MobilecError, match=r"demo app.*not installed.*gradlew installDebug"):
        get_device("adb", str(_profile(tmp_path))).run(model, runs=5, warmup=1, threads=1)
    # an app that runs but lacks the activity: am start says Error type 3
    fake.use("phone", app={"installed": False})
    dev = get_device("adb", str(_profile(tmp_path)), poll_s=0.05)
    dev._stage = lambda ctx, inputs: setattr(ctx, "model_path", "/data/local/tmp/mobilec/model.pte")  # skip the copy
    with pytest.raises(MobilecError, match=r"BenchmarkActivity is missing.*does not exist"):
        dev.run(model, runs=5, warmup=1, threads=1)


def test_app_error_is_reported(fake, model, tmp_path):
    fake.use("phone", app={"installed": True, "error": "XNNPACK delegate failed to initialise", "run_s": 0.0})
    with pytest.raises(MobilecError, match="demo app failed on FAKE0001: XNNPACK delegate failed") as info:
        get_device("adb", str(_profile(tmp_path)), poll_s=0.05).run(model, runs=5, warmup=1, threads=1)
    assert not isinstance(info.value, ProfilingInterrupted)  # nothing was measured
    # failing in the second repetition keeps the first
    fake.use("phone", app={"installed": True, "error": "out of memory", "error_after_starts": 1, "run_s": 0.0})
    with pytest.raises(ProfilingInterrupted, match=r"out of memory during repetition 2 of 2; the 1 completed") as info:
        get_device("adb", str(_profile(tmp_path)), poll_s=0.05).run(model, runs=5, warmup=1, threads=1)
    assert len(info.value.measurement.samples_ms) == 5 and info.value.saved_to.exists()
    assert fake.device_files("FAKE0001") == []  # cleaned up all the same


def test_disconnect_keeps_completed_repetitions(fake, model, tmp_path):
    fake.use("disconnect")
    prof = str(_profile(tmp_path, repetitions=4))
    with pytest.raises(ProfilingInterrupted, match=r"no longer connected.*during repetition 3 of 4; the 2 completed") as info:
        get_device("adb:FAKEDROP", prof, poll_s=0.05).run(model, runs=8, warmup=1, threads=1)
    err = info.value
    assert err.measurement is not None and err.measurement.partial and len(err.measurement.repetitions) == 2
    assert len(err.measurement.samples_ms) == 16
    saved = json.loads(err.saved_to.read_text())
    assert saved["partial"] is True and len(saved["latency_ms"]["samples"]) == 16
    assert err.saved_to.parent == model.parent and "FAKEDROP" in err.saved_to.name


def test_profile_artifact_over_adb(fake, tmp_path):
    fake.use("phone", app={"installed": True, "latency_ms": 4.0, "run_s": 0.0})
    art = tmp_path / "my model (v2).tflite"
    art.write_bytes(b"\x00" * 32)
    samples = np.arange(2 * 1 * 8 * 8, dtype=np.float32).reshape(2, 1, 8, 8)
    m = profile_artifact(art, device="adb", profile=str(_profile(tmp_path, repetitions=1)), runs=6, warmup=1, inputs=samples)
    assert len(m.samples_ms) == 6 and m.settings["profile"] == "test-profile" and m.runtime == "tflite"
    extras = fake.state_json()["extras"][0]
    assert extras["model"].endswith("/files/mobilec/my_model__v2_.tflite")  # no shell quoting needed on the phone
    assert extras["input"].endswith("/files/mobilec/input.bin")
    pushed = [c["push"] for c in fake.commands() if "push" in c]
    assert any(p.endswith("/input.bin") for p in pushed)
    assert fake.device_files("FAKE0001") == []


# ------------------------------------------------------------------------------------------ the runner path


@pytest.mark.parametrize("runner_name", ["executor_runner", "benchmark_model"])
def test_runner_pinned_to_big_cores(fake, tmp_path, runner_name):
    fake.use("phone")
    runner = tmp_path / runner_name
    runner.write_bytes(b"\x7fELF fake runner")
    art = tmp_path / ("m.pte" if runner_name == "executor_runner" else "m.tflite")
    art.write_bytes(b"\x00" * 16)
    prof = _profile(tmp_path, big_cores=[4, 5, 6, 7], repetitions=2)
    m = get_device("adb", str(prof), runner=runner).run(art, runs=12, warmup=3, threads=2)
    calls = fake.state_json()["runner_calls"]
    assert len(calls) == 2 and all(c["mask"] == "f0" for c in calls)  # taskset f0 = cpus 4-7
    assert m.settings["path"] == f"runner {runner_name}"
    if runner_name == "executor_runner":
        assert calls[0]["args"]["num_executions"] == "15" and calls[0]["args"]["cpu_threads"] == "2"
        assert m.samples_kind == "per_run" and len(m.samples_ms) == 24 and m.load_ms == pytest.approx(18.75)
        assert m.peak_memory_bytes is None
    else:
        assert calls[0]["args"]["num_runs"] == "12" and calls[0]["args"]["warmup_runs"] == "3"
        assert calls[0]["args"]["num_threads"] == "2"
        assert m.samples_kind == "per_repetition_mean" and len(m.samples_ms) == 2
        assert m.load_ms == pytest.approx(21.5) and m.peak_memory_bytes == int(12.25 * 1024 * 1024)
        assert "runner_stats" in m.repetitions[0].extra
    assert abs(m.latency["p50"] - 3.0) < 0.5
    assert fake.device_files("FAKE0001") == []


def test_runner_and_artifact_must_match(fake, tmp_path, model):
    fake.use("phone")
    runner = tmp_path / "benchmark_model"
    runner.write_bytes(b"x")
    with pytest.raises(MobilecError, match=r"runs .tflite files, not this executorch artifact"):
        get_device("adb", str(_profile(tmp_path)), runner=runner).run(model, runs=5, warmup=1, threads=1)


# ------------------------------------------------------------------------------------------ a real phone


def _real_device_attached() -> bool:
    if os.environ.get("MOBILEC_REAL_DEVICE") != "1" or not shutil.which("adb"):
        return False
    out = subprocess.run(["adb", "devices"], capture_output=True, text=True, timeout=30).stdout
    return any(line.strip().endswith("\tdevice") for line in out.splitlines()[1:])


@pytest.mark.device
@pytest.mark.skipif(not _real_device_attached(), reason="needs MOBILEC_REAL_DEVICE=1 and a phone in `adb devices`")
def test_real_device_lists_and_describes():
    found = [d for d in list_devices() if d.state == "device"]
    assert found and found[0].model and found[0].abi
    dev = get_device(f"adb:{found[0].serial}")
    assert dev.describe()["profile"]
