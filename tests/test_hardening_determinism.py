"""Determinism (issue 9): the same recipe, seed and data give the same artifact bytes, in the same
process and in a fresh one (other PYTHONHASHSEED); another seed gives other weights."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hardening_support import assert_same_result, export_args, record, tiny_inputs, tiny_reference

from mobilec.cli import main
from mobilec.io import load_state_dict

__all__ = ["tiny_inputs", "tiny_reference"]  # session fixtures

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = {"executorch": "model.pte", "tflite": "model.tflite", "onnx": "model.onnx"}


def _digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16]
            for p in sorted(out.iterdir()) if p.suffix in (".pte", ".tflite", ".onnx")}


def test_same_seed_same_bytes_in_one_process(tiny_inputs, tiny_reference, tmp_path: Path) -> None:
    out = tmp_path / "again"
    result = CliRunner().invoke(main, export_args(tiny_inputs, out), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    record("determinism reruns")
    assert_same_result(out, tiny_reference)  # model.onnx bytes, compressed weights, accuracies, verification
    assert _digests(out) == _digests(tiny_reference)


def test_another_seed_gives_other_weights(tiny_inputs, tiny_reference, tmp_path: Path) -> None:
    """The seed really reaches the passes (so the equalities above are not vacuous)."""
    out = tmp_path / "seed1"
    result = CliRunner().invoke(main, export_args(tiny_inputs, out, "--seed", "1"), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    record("determinism reruns")
    a, b = load_state_dict(out / "compressed.pt"), load_state_dict(tiny_reference / "compressed.pt")
    assert not all(torch.equal(a[k], b[k]) for k in a)
    assert (out / "model.onnx").read_bytes() != (tiny_reference / "model.onnx").read_bytes()


@pytest.mark.slow
def test_every_target_same_bytes_across_processes(tiny_inputs, tmp_path: Path) -> None:
    """This process and a fresh one (another hash seed), all three targets, int8 PTQ after a seeded fine-tune."""
    recipe = tmp_path / "all.toml"
    text = tiny_inputs["recipe"].read_text().replace('targets = ["onnx"]', 'targets = ["executorch", "tflite", "onnx"]')
    recipe.write_text(text)
    inputs = {**tiny_inputs, "recipe": recipe}
    digests, reports = [], []
    for i in (1, 2):
        out = tmp_path / f"run{i}"
        if i == 1:  # this process
            result = CliRunner().invoke(main, export_args(inputs, out), catch_exceptions=False)
            assert result.exit_code == 0, result.output
        else:  # a fresh one, with a hash seed this process (almost surely) does not have
            env = {**os.environ, "PYTHONPATH": str(REPO / "toolkit"), "PYTHONHASHSEED": "12345"}
            proc = subprocess.run([sys.executable, "-m", "mobilec.cli", *export_args(inputs, out)], env=env,
                                  capture_output=True, text=True, timeout=900)
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        digests.append(_digests(out))
        reports.append(json.loads((out / "report.json").read_text()))
        record("determinism reruns")
    assert set(digests[0]) == set(ARTIFACTS.values())
    assert digests[0] == digests[1], "artifact bytes differ between two runs with the same seed"
    for a, b in zip(reports[0]["artifacts"], reports[1]["artifacts"], strict=True):
        assert a["verification"] == b["verification"]
    a, b = (load_state_dict(tmp_path / f"run{i}" / "compressed.pt") for i in (1, 2))
    assert all(torch.equal(a[k], b[k]) for k in a)
