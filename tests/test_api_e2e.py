"""End to end through the CLI: compress, export to every runtime, verify on real data, report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import needs_fashion_mnist

from mobilec.cli import main

MODEL_SRC = """
from torch import nn

def make():
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )
"""


@pytest.fixture(scope="module")
def small_run_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 28x28 model file + weights, and a small real Fashion-MNIST slice as an npz data set."""
    import torch

    from mobilec.data import load_dataset

    root = tmp_path_factory.mktemp("e2e")
    (root / "tiny.py").write_text(MODEL_SRC)
    ns: dict = {}
    exec(MODEL_SRC, ns)
    torch.manual_seed(0)
    model = ns["make"]()
    torch.save(model.state_dict(), root / "tiny.pt")
    fm = load_dataset("fashion-mnist")
    raw = lambda x: np.clip(np.round((x.numpy() * fm.std[0] + fm.mean[0]) * 255), 0, 255).astype(np.uint8)  # noqa: E731
    np.savez(root / "fm.npz", x_train=raw(fm.x_train[:512]), y_train=fm.y_train[:512].numpy(),
             x_test=raw(fm.x_test[:300]), y_test=fm.y_test[:300].numpy(), classes=np.array(fm.classes))
    return {"model": root / "tiny.py", "weights": root / "tiny.pt", "data": root / "fm.npz", "root": root}


def _export(inp: dict[str, Path], recipe: str, out: Path, *extra: str):
    args = ["export", "--recipe", recipe, "--model", f"{inp['model']}:make", "--weights", str(inp["weights"]),
            "--data", f"npz:{inp['data']}", "--out", str(out), *extra]
    return CliRunner().invoke(main, args, catch_exceptions=False)


@needs_fashion_mnist
@pytest.mark.slow
def test_int8_export_all_targets_verified(small_run_inputs: dict[str, Path]) -> None:
    out = small_run_inputs["root"] / "int8"
    result = _export(small_run_inputs, "int8", out, "--no-profile")
    assert result.exit_code == 0, result.output
    rep = json.loads((out / "report.json").read_text())
    assert {a["target"] for a in rep["artifacts"]} == {"executorch", "tflite", "onnx"}
    for a in rep["artifacts"]:
        assert a["status"] == "verified"
        assert Path(a["path"]).stat().st_size == a["size_bytes"]
        v = a["verification"]
        assert v["n_samples"] == 300 and v["top1_agreement"] >= 0.99
        assert any(layer["stored"] == "int8" for layer in a["layers"])
    assert (out / "compressed.pt").is_file() and (out / "report.md").is_file()
    assert rep["passes"][0]["name"] == "ptq"
    # per-layer bits plots, one per artifact, drawn and linked from report.md
    assert sorted(p["file"] for p in rep["plots"]) == ["bits_executorch.png", "bits_onnx.png", "bits_tflite.png"]
    assert all(p["error"] is None and f"]({p['file']})" in (out / "report.md").read_text() for p in rep["plots"])
    pte = next(a for a in rep["artifacts"] if a["target"] == "executorch")
    assert pte["delegation"]["not_delegated"] == {}

    # an existing run is never overwritten without --force, and nothing in it changes
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = _export(small_run_inputs, "int8", out, "--no-profile")
    assert again.exit_code == 2 and "--force" in again.output
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


@needs_fashion_mnist
@pytest.mark.slow
def test_fp32_onnx_profiled_and_compared(small_run_inputs: dict[str, Path]) -> None:
    out = small_run_inputs["root"] / "fp32"
    result = _export(small_run_inputs, "fp32", out, "--target", "onnx")
    assert result.exit_code == 0, result.output
    rep = json.loads((out / "report.json").read_text())
    assert [a["target"] for a in rep["artifacts"]] == ["onnx"]
    import torch

    from mobilec.compare import compressed_macs
    from mobilec.models import count_macs

    ns: dict = {}
    exec(MODEL_SRC, ns)
    assert rep["model"]["macs"] == count_macs(ns["make"](), torch.zeros(1, 1, 28, 28)) > 0
    assert compressed_macs(rep) == rep["model"]["macs"]  # what `mobilec compare` shows in its MACs column
    assert rep["artifacts"][0]["verification"]["max_abs_error"] < 1e-3
    prof = rep["profiles"][0]
    assert prof["latency_ms"]["p50"] > 0 and prof["energy"]["method"].startswith("estimated")
    md = (out / "report.md").read_text()
    assert "## Profiling" in md and "model.onnx" in md
    assert "](latency_hist.png)" in md and (out / "latency_hist.png").stat().st_size > 0
    assert sum(len(r["latencies_ms"]) for r in prof["repetitions"]) == prof["latency_ms"]["n"]  # raw samples kept


def test_bad_data_spec_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["export", "--data", f"npz:{tmp_path / 'missing.npz'}", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and result.output.startswith("error: ") and "missing.npz" in result.output
    assert not (tmp_path / "o").exists()
