"""Shared by the hardening tests (issue 9): a tiny digits model + recipe, and reliability counters.

``record(kind, n)`` counts fuzz cases and fault injections per test; ``bench/reliability.py`` sets
MOBILEC_RELIABILITY_LOG and collects the counts into bench/results/reliability.json.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

MODEL_SRC = """
from torch import nn

def make():
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )
"""

# two seeded fine-tunes (RNG-dependent: shuffling, subset choice) then int8 PTQ; ONNX only by default
RECIPE_TOML = """
description = "hardening test recipe"
[[passes]]
type = "finetune"
epochs = 1
lr = 0.01
batch_size = 32
max_train_samples = 128
augment = true
evaluate = false
[[passes]]
type = "finetune"
epochs = 1
lr = 0.005
batch_size = 32
max_train_samples = 128
augment = true
evaluate = false
[[passes]]
type = "ptq"
calibration_batches = 2
batch_size = 16
[export]
targets = ["onnx"]
[verify]
min_top1_agreement = 0.5
max_samples = 40
"""


def one_error_line(result, *must: str) -> str:
    """A CLI result that failed with exit 2 and one ``error: ...`` line containing every ``must``; the line."""
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    for text in must:
        assert text in lines[0], (text, lines[0])
    return lines[0]


def fuzz_examples(default: int) -> int:
    """max_examples for a fuzz test: the suite's default, or MOBILEC_FUZZ_EXAMPLES (bench/reliability.py)."""
    return int(os.environ.get("MOBILEC_FUZZ_EXAMPLES", default))


def record(kind: str, n: int = 1) -> None:
    """Count ``n`` fuzz cases / fault injections of ``kind`` for the running test (no-op outside the bench)."""
    log = os.environ.get("MOBILEC_RELIABILITY_LOG")
    if not log:
        return
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" ", 1)[0]
    with open(log, "a", encoding="utf-8") as f:
        f.write(json.dumps({"test": test, "kind": kind, "n": n}) + "\n")


def write_tiny_inputs(root: Path) -> dict[str, Path]:
    """tiny.py (a 2-conv CNN for 8x8 digits), its briefly trained weights, and the test recipe."""
    from mobilec.data import load_dataset

    root.mkdir(parents=True, exist_ok=True)
    (root / "tiny.py").write_text(MODEL_SRC)
    (root / "recipe.toml").write_text(RECIPE_TOML)
    ns: dict = {}
    exec(MODEL_SRC, ns)
    torch.manual_seed(0)
    model = ns["make"]()
    ds = load_dataset("digits")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(3):
        for i in range(0, len(ds.x_train), 64):
            opt.zero_grad()
            F.cross_entropy(model(ds.x_train[i:i + 64]), ds.y_train[i:i + 64]).backward()
            opt.step()
    torch.save(model.eval().state_dict(), root / "tiny.pt")
    return {"root": root, "model": root / "tiny.py", "weights": root / "tiny.pt", "recipe": root / "recipe.toml"}


def export_args(inp: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["export", "--recipe", str(inp["recipe"]), "--model", f"{inp['model']}:make", "--weights", str(inp["weights"]),
            "--data", "digits", "--out", str(out), "--no-profile", *extra]


# -- shared by test_hardening_resume.py and test_hardening_disk.py ---------------------------------
@pytest.fixture(scope="session")
def tiny_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_tiny_inputs(tmp_path_factory.mktemp("tiny-run"))


@pytest.fixture(scope="session")
def tiny_reference(tiny_inputs: dict[str, Path]) -> Path:
    """The uninterrupted run every interrupted-and-resumed run must reproduce."""
    from click.testing import CliRunner

    from mobilec.cli import main

    out = tiny_inputs["root"] / "reference"
    result = CliRunner().invoke(main, export_args(tiny_inputs, out), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def assert_only_complete_files(out: Path, *, allow_hidden_parts: bool = False) -> None:
    """Every file in the run folder is whole: it parses / loads in full."""
    from mobilec import checkpoint
    from mobilec.io import load_state_dict
    from mobilec.runtimes import open_artifact

    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        if path.name.endswith(".part"):
            assert allow_hidden_parts and path.name.startswith("."), f"partial file left behind: {path}"
            continue
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.parent.name == checkpoint.CHECKPOINT_DIR:
            checkpoint.load_checkpoint(path)
        elif path.suffix == ".pt":
            load_state_dict(path)
        elif path.suffix in (".onnx", ".pte", ".tflite"):
            open_artifact(path)
        elif path.suffix == ".md":
            assert path.read_text().strip()


def _untimed(obj: object) -> object:
    """``obj`` without wall-clock measurements (seconds, images/s), which differ between any two runs."""
    if isinstance(obj, dict):
        return {k: _untimed(v) for k, v in obj.items() if "seconds" not in k and not k.endswith("_per_s")}
    if isinstance(obj, list):
        return [_untimed(v) for v in obj]
    return obj


def assert_same_result(out: Path, ref: Path) -> None:
    from mobilec.io import load_state_dict

    assert (out / "model.onnx").read_bytes() == (ref / "model.onnx").read_bytes()
    a, b = load_state_dict(out / "compressed.pt"), load_state_dict(ref / "compressed.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = (json.loads((p / "report.json").read_text()) for p in (out, ref))
    assert ra["accuracy"] == rb["accuracy"]
    assert [p["name"] for p in ra["passes"]] == [p["name"] for p in rb["passes"]]
    assert [_untimed(p["summary"]) for p in ra["passes"]] == [_untimed(p["summary"]) for p in rb["passes"]]
    assert ra["artifacts"][0]["verification"] == rb["artifacts"][0]["verification"]
