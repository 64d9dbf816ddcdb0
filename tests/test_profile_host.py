"""Host profiling of real tiny artifacts in their own runtimes (ExecuTorch, LiteRT, onnxruntime)."""

import json
import os
import signal
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mobilec.errors import MobilecError
from mobilec.profile import energy, profile_artifact
from mobilec.profile.host import HostDevice

FIXTURE_VERSION = "1"


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10)).eval()


def _versions() -> str:
    from importlib import metadata

    return "-".join(metadata.version(p) for p in ("torch", "executorch", "litert-torch", "onnx"))


def _build(folder: Path, target: str) -> Path:
    model, x = _tiny(), (torch.randn(1, 1, 8, 8),)
    path = folder / {"executorch": "tiny.pte", "tflite": "tiny.tflite", "onnx": "tiny.onnx"}[target]
    if path.exists():
        return path
    tmp = path.with_name("part-" + path.name)
    if target == "executorch":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        prog = to_edge_transform_and_lower(torch.export.export(model, x), partitioner=[XnnpackPartitioner()]).to_executorch()
        tmp.write_bytes(prog.buffer)
    elif target == "tflite":
        import litert_torch

        litert_torch.convert(model, x).export(str(tmp))
    else:
        torch.onnx.export(model, x, str(tmp), dynamo=True, external_data=False)
    os.replace(tmp, path)
    return path


@pytest.fixture(scope="session")
def artifacts_dir(request, tmp_path_factory) -> Path:
    """Built once; kept in pytest's cache (keyed by the library versions) so later runs skip the export."""
    try:
        return Path(request.config.cache.mkdir(f"mobilec-profile-artifacts-{FIXTURE_VERSION}-{_versions()}"))
    except AttributeError:  # -p no:cacheprovider
        return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def tiny_onnx(artifacts_dir):
    return _build(artifacts_dir, "onnx")


@pytest.fixture(scope="session")
def tiny_tflite(artifacts_dir):
    return _build(artifacts_dir, "tflite")


@pytest.fixture(scope="session")
def tiny_pte(artifacts_dir):
    return _build(artifacts_dir, "executorch")


def _check(m, runtime: str, runs: int, reps: int) -> None:
    assert m.runtime == runtime and m.device == "host" and not m.partial
    assert len(m.samples_ms) == runs * reps and m.samples_kind == "per_run"
    assert all(x > 0 for x in m.samples_ms)
    lat = m.latency
    assert 0 < lat["min"] <= lat["p10"] <= lat["p50"] <= lat["p90"] <= lat["max"] < 1000
    assert m.load_ms is not None and m.load_ms > 0 and m.first_run_ms > 0
    assert m.peak_memory_bytes is not None and m.peak_memory_bytes >= 0 and "RSS" in m.peak_memory_method
    assert len(m.repetitions) == reps and len(m.spread["p50_per_repetition"]) == reps
    assert m.settings["threads"] == 1 and m.settings["input_shape"] == [1, 1, 8, 8]
    json.dumps(m.to_dict())  # serialisable as report.json needs it


@pytest.mark.parametrize("fixture", ["tiny_onnx", "tiny_tflite"])
def test_profile_real_artifact(fixture, request):
    path = request.getfixturevalue(fixture)
    m = profile_artifact(path, runs=15, warmup=2, repetitions=2, show_progress=False)
    _check(m, "onnx" if fixture == "tiny_onnx" else "tflite", 15, 2)
    # the artifact tells its per-layer MACs: the estimate is labelled and matches the torch count (conv 2304 + fc 2560)
    assert m.energy is not None and m.energy.kind == "estimated" and "Horowitz" in m.energy.method
    layers = energy.layer_work_from_artifact(path)[0]
    assert sum(w.macs for w in layers) == 4 * 64 * 9 + 10 * 256


@pytest.mark.slow
def test_profile_real_pte(tiny_pte):
    # per-layer MACs cannot be read from a .pte (opaque XNNPACK payload) ...
    layers, why = energy.layer_work_from_artifact(tiny_pte)
    assert layers is None and "energy_layers" in why
    # ... so the caller gives them, from the torch model
    layers = energy.layer_work_from_model(_tiny(), torch.randn(1, 1, 8, 8))
    m = profile_artifact(tiny_pte, runs=15, warmup=2, repetitions=2, show_progress=False, energy_layers=layers)
    _check(m, "executorch", 15, 2)
    assert m.settings["threads_in_effect"] == 1  # ExecuTorch's process-wide pool was sized to --threads
    assert m.energy is not None and m.energy.kind == "estimated"
    assert m.energy.mj_per_inference == pytest.approx(energy.estimate_energy(layers).mj_per_inference)


def test_real_inputs_are_used_and_checked(tiny_onnx):
    samples = np.random.default_rng(1).standard_normal((5, 1, 8, 8)).astype(np.float32)
    m = profile_artifact(tiny_onnx, runs=5, warmup=1, repetitions=1, inputs=samples, show_progress=True)  # rich bar too
    assert "5 given sample(s)" in m.settings["inputs"]
    with pytest.raises(MobilecError, match=r"do not fit the artifact's input shape \(1, 1, 8, 8\)"):
        profile_artifact(tiny_onnx, runs=2, warmup=0, repetitions=1, inputs=np.zeros((3, 2, 8, 8), np.float32),
                         show_progress=False)


def test_garbage_and_missing_artifacts(tmp_path):
    junk = tmp_path / "model.tflite"
    junk.write_bytes(b"this is not a model at all" * 10)
    with pytest.raises(MobilecError, match=r"model.tflite"):
        profile_artifact(junk, runs=2, show_progress=False)
    empty = tmp_path / "model.onnx"
    empty.write_bytes(b"")
    with pytest.raises(MobilecError, match="empty"):
        profile_artifact(empty, runs=2, show_progress=False)
    with pytest.raises(MobilecError, match="does not exist"):
        profile_artifact(tmp_path / "nope.pte", runs=2)
    with pytest.raises(MobilecError, match="unknown artifact type"):
        profile_artifact(tmp_path / "model.bin", runs=2)
    import mobilec
    import mobilec.profile  # the subpackage shadows the API function mobilec.profile: it stays callable

    with pytest.raises(MobilecError, match="unknown artifact type"):
        mobilec.profile(tmp_path / "model.bin", device="host")
    with pytest.raises(MobilecError, match="runs must be an integer >= 1"):
        profile_artifact(junk, runs=0, show_progress=False)
    with pytest.raises(MobilecError, match="adb devices"):
        profile_artifact(junk, runner="x", runs=2)


def _opener_module(tmp_path: Path, monkeypatch, body: str) -> str:
    (tmp_path / "openers").mkdir()
    (tmp_path / "openers" / "fake_opener.py").write_text(textwrap.dedent(body))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "openers"))
    return "fake_opener:open_artifact"


def test_worker_crash_is_a_clear_error(tmp_path, monkeypatch, tiny_onnx):
    opener = _opener_module(tmp_path, monkeypatch, """
        import os, signal
        def open_artifact(path, *, threads=1):
            os.kill(os.getpid(), signal.SIGSEGV)
    """)
    dev = HostDevice(repetitions=1, cooldown_s=0, opener=opener, show_progress=False)
    with pytest.raises(MobilecError, match=f"killed by signal {signal.SIGSEGV.name} while loading"):
        dev.run(tiny_onnx, runs=2, warmup=0, threads=1)


def test_runtime_error_mid_run_is_reported(tmp_path, monkeypatch, tiny_onnx):
    opener = _opener_module(tmp_path, monkeypatch, """
        class S:
            target, input_shape, load_seconds = "onnx", (1, 4), 0.001
            calls = 0
            def run(self, x):
                S.calls += 1
                if S.calls > 3:
                    raise RuntimeError("kernel exploded")
                return x
        def open_artifact(path, *, threads=1):
            return S()
    """)
    dev = HostDevice(repetitions=1, cooldown_s=0, opener=opener, show_progress=False)
    with pytest.raises(MobilecError, match="failed while running in onnx: RuntimeError: kernel exploded"):
        dev.run(tiny_onnx, runs=5, warmup=0, threads=1)


def test_host_profile_checks_its_cores(tmp_path):
    prof = tmp_path / "pinned.toml"
    prof.write_text('kind = "host"\ndescription = "pinned"\nbig_cores = [255]\nenergy_method = "estimate"\n')
    with pytest.raises(MobilecError, match=r"pins CPU\(s\) \[255\]"):
        HostDevice(str(prof))
    with pytest.raises(MobilecError, match="is for adb devices, not the host"):
        HostDevice("pixel-8")
