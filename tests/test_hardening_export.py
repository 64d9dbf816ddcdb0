"""Models the exporters cannot take (issue 9): the error names the op, the module path and what to
change; when one target fails, the others still export and the report says which failed and why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hardening_support import record
from torch import nn

from mobilec.cli import main
from mobilec.errors import ExportError
from mobilec.export import get_exporter

# forward bodies of the module at path "1.0" (inside a Sequential in a Sequential) of an 8x8-digits CNN
BODIES = {
    # executorch: the complex abs of an FFT has no edge kernel; onnx translates it (DFT)
    "fft": "return torch.fft.rfft(x, dim=-1).abs().sum(-1, keepdim=True) + x",
    # no ExecuTorch kernel (not core ATen) and no ONNX translation
    "median": "return x - x.median()",
    # Python branching on a tensor value: not traceable by torch.export
    "branch": "return x * 2 if x.sum() > 0 else x",
    # a shape read from the data (.item()): a dynamic, data-dependent shape
    "dynamic": "return x[..., : int(x.abs().sum().item()) % 8 + 1].mean(-1, keepdim=True) + x",
}

MODEL_SRC = """
import torch
from torch import nn

class Odd(nn.Module):
    def forward(self, x):
        {body}

def make():
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Sequential(Odd()), nn.Flatten(), nn.Linear(128, 10))
"""

RECIPE = """
description = "no passes"
[export]
targets = {targets}
[verify]
min_top1_agreement = 0.9
max_samples = 40
"""


def _model(root: Path, kind: str) -> dict[str, Path]:
    src = MODEL_SRC.format(body=BODIES[kind])
    (root / f"{kind}.py").write_text(src)
    ns: dict = {}
    exec(src, ns)
    torch.manual_seed(0)
    torch.save(ns["make"]().state_dict(), root / f"{kind}.pt")
    return {"model": root / f"{kind}.py", "weights": root / f"{kind}.pt"}


def _export(tmp_path: Path, kind: str, targets: list[str]):
    files = _model(tmp_path, kind)
    (tmp_path / "r.toml").write_text(RECIPE.format(targets=json.dumps(targets)))
    out = tmp_path / "run"
    args = ["export", "--recipe", str(tmp_path / "r.toml"), "--model", f"{files['model']}:make", "--weights",
            str(files["weights"]), "--data", "digits", "--out", str(out), "--no-profile"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    record("unexportable-model injections", len(targets))
    return result, out


def test_one_target_fails_the_other_exports_and_the_report_says_why(tmp_path: Path) -> None:
    result, out = _export(tmp_path, "fft", ["executorch", "onnx"])
    assert result.exit_code == 3, result.output  # a target failed: not a success, not a crash
    rep = json.loads((out / "report.json").read_text())
    assert [a["target"] for a in rep["artifacts"]] == ["onnx"] and rep["artifacts"][0]["status"] == "verified"
    assert (out / "model.onnx").is_file() and not (out / "model.pte").exists()
    [failure] = rep["failures"]
    assert failure["target"] == "executorch"
    assert "aten.abs" in failure["error"] and "in module 1.0" in failure["error"] and "fix:" in failure["error"]
    md = (out / "report.md").read_text()
    assert "executorch" in md and "aten.abs" in md
    assert "executorch" in result.output and "aten.abs" in result.output  # the summary printed says so too
    assert not list(out.glob(".*.part"))


@pytest.mark.parametrize("target", ["executorch", "onnx"])
def test_unsupported_op_names_op_module_and_fix(tmp_path: Path, target: str) -> None:
    files = _model(tmp_path, "median")
    ns: dict = {}
    exec(files["model"].read_text(), ns)
    model = ns["make"]().eval()
    path = tmp_path / f"m{get_exporter(target).suffix}"
    with pytest.raises(ExportError) as err:
        get_exporter(target).export(model, (torch.randn(1, 1, 8, 8),), path)
    record("unexportable-model injections")
    msg = str(err.value)
    assert f"{target}:" in msg and "aten.median" in msg and "in module 1.0" in msg and "(fix: " in msg, msg
    assert "\n" not in msg and "\x1b[" not in msg
    assert not path.exists() and not list(tmp_path.glob(".*.part"))


@pytest.mark.parametrize("kind", ["branch", "dynamic"])
def test_untraceable_model_fails_every_target_with_the_module_named(tmp_path: Path, kind: str) -> None:
    result, out = _export(tmp_path, kind, ["executorch", "onnx"])
    assert result.exit_code == 3, result.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["artifacts"] == [] and [f["target"] for f in rep["failures"]] == ["executorch", "onnx"]
    for f in rep["failures"]:
        assert "torch.export failed in module 1.0" in f["error"], f["error"]
        assert "fix: make forward traceable" in f["error"]
    assert not [p for p in out.iterdir() if p.suffix in (".pte", ".onnx", ".tflite") or p.name.endswith(".part")]


class _Odd(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - x.median()


@pytest.mark.slow
def test_tflite_unsupported_op_is_a_clear_error(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Sequential(_Odd()), nn.Flatten(), nn.Linear(128, 10)).eval()
    path = tmp_path / "m.tflite"
    with pytest.raises(ExportError) as err:  # LiteRT has no lowering for aten.median
        get_exporter("tflite").export(model, (torch.randn(1, 1, 8, 8),), path)
    msg = str(err.value)
    assert msg.startswith("tflite:") and "(fix: " in msg and "\n" not in msg, msg
    assert "aten.median" in msg and "in module 1.0" in msg, msg
    assert not path.exists() and not list(tmp_path.glob(".*.part"))
    record("unexportable-model injections")
