"""Interrupts (issue 9): a run stopped at any point leaves only complete files, and
``mobilec export --resume`` continues from the last completed pass to the same result as an
uninterrupted run with the same seed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hardening_support import (
    assert_only_complete_files,
    assert_same_result,
    export_args,
    record,
    tiny_inputs,
    tiny_reference,
)

from mobilec import checkpoint
from mobilec.cli import main

__all__ = ["tiny_inputs", "tiny_reference"]  # session fixtures, shared with test_hardening_disk.py

REPO = Path(__file__).resolve().parents[1]


class _Interrupt:
    """Raise KeyboardInterrupt (what SIGINT/SIGTERM become in the CLI) at the n-th file commit or pass."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, commit: int | None = None, finetune_call: int | None = None):
        self.commits = 0
        real_replace = os.replace

        def replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
            self.commits += 1
            if self.commits == commit:
                raise KeyboardInterrupt  # the file's temporary is written, the rename never happens
            real_replace(src, dst)

        monkeypatch.setattr(os, "replace", replace)
        if finetune_call is not None:
            from mobilec.passes.finetune import FineTune

            real_apply = FineTune.apply
            calls = {"n": 0}

            def apply(self_pass, model, ctx):
                calls["n"] += 1
                if calls["n"] == finetune_call:
                    raise KeyboardInterrupt  # in the middle of the pass
                return real_apply(self_pass, model, ctx)

            monkeypatch.setattr(FineTune, "apply", apply)


# kill points: (n-th file commit, n-th finetune call). Commits in order: checkpoint 1..3,
# compressed.pt, model.onnx, report files. The suite runs three; bench/reliability.py runs all.
ALL_POINTS = [("commit", n) for n in range(1, 8)] + [("finetune", 1), ("finetune", 2)]
QUICK_POINTS = [("finetune", 2), ("commit", 3), ("commit", 6)]
POINTS = ALL_POINTS if os.environ.get("MOBILEC_ALL_FAULT_POINTS") else QUICK_POINTS


@pytest.mark.parametrize("kind, n", POINTS, ids=[f"{k}{n}" for k, n in POINTS])
def test_interrupt_then_resume_gives_the_uninterrupted_result(
    tiny_inputs: dict[str, Path], tiny_reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, n: int
) -> None:
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _Interrupt(m, commit=n if kind == "commit" else None, finetune_call=n if kind == "finetune" else None)
        result = CliRunner().invoke(main, export_args(tiny_inputs, out))
    record("signal/interrupt injections")
    assert result.exit_code == 130, result.output
    assert "interrupted" in result.output and "Traceback" not in result.output
    assert_only_complete_files(out)
    done = sorted(p.name for p in (out / checkpoint.CHECKPOINT_DIR).glob("*.pt")) if out.exists() else []

    if done:  # progress is never thrown away by a plain rerun
        again = CliRunner().invoke(main, export_args(tiny_inputs, out))
        assert again.exit_code == 2 and "pass --resume to continue that run" in again.output, again.output
    resumed = CliRunner().invoke(main, export_args(tiny_inputs, out, "--resume"), catch_exceptions=False)
    assert resumed.exit_code == 0, resumed.output
    assert_same_result(out, tiny_reference)
    notes = json.loads((out / "report.json").read_text())["notes"]
    if done:
        assert f"resumed after pass {len(done)} ({done[-1].split('-', 2)[2][:-3]}) from its checkpoint" in notes
    assert_only_complete_files(out)


def test_resume_refuses_checkpoints_of_another_run(tiny_inputs: dict[str, Path], tiny_reference: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "run"
    shutil.copytree(tiny_reference, out)
    result = CliRunner().invoke(main, export_args(tiny_inputs, out, "--resume", "--seed", "1"))
    assert result.exit_code == 2, result.output
    assert "belongs to a run with another recipe, model, weights, data or seed" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_tampered_checkpoint_is_refused_without_running_code(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):  # pragma: no cover - never executed by the safe loader
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    path = checkpoint.checkpoint_path(tmp_path, 0, "ptq")
    path.parent.mkdir(parents=True)
    torch.save({"model": torch.nn.Linear(2, 2), "lowering": Evil()}, path)
    from mobilec.errors import MobilecError

    with pytest.raises(MobilecError, match=r"references (posix|os)\.system, refused for safety"):
        checkpoint.load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(MobilecError, match="cannot be read"):
        checkpoint.load_checkpoint(path)
    record("malicious/truncated checkpoint injections", 2)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_real_signal_then_resume(tiny_inputs: dict[str, Path], tiny_reference: Path, tmp_path: Path, sig: signal.Signals) -> None:
    """A real `mobilec export` process signalled right after its first pass checkpoint."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO / "toolkit")}
    proc = subprocess.Popen([sys.executable, "-m", "mobilec.cli", *export_args(tiny_inputs, out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = checkpoint.checkpoint_path(out, 0, "finetune")
    deadline = time.monotonic() + 240
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(sig)
    output = proc.communicate(timeout=120)[0]
    record("real signals")
    assert proc.returncode == (130 if sig == signal.SIGTERM else -signal.SIGKILL), output
    if sig == signal.SIGTERM:
        assert "interrupted" in output and "Traceback" not in output
    assert_only_complete_files(out, allow_hidden_parts=sig == signal.SIGKILL)  # SIGKILL cannot clean up

    resumed = CliRunner().invoke(main, export_args(tiny_inputs, out, "--resume"), catch_exceptions=False)
    assert resumed.exit_code == 0, resumed.output
    assert_same_result(out, tiny_reference)
    assert_only_complete_files(out)


def test_checkpoint_round_trip_restores_context_and_custom_classes(tmp_path: Path) -> None:
    """What the DuQ/PROFIT (a function) and binary (a dataclass) passes leave in the context survives a checkpoint,
    and a model class from the user's --model file loads back without allowing anything else."""
    import types

    from mobilec.passes.binary_export import BinaryLowering
    from mobilec.passes.quant.lowering import lower_duq
    from mobilec.quant import QuantPlan
    from mobilec.report import RunReport

    user = types.ModuleType("mobilec_user_model_test0001")  # how models.loader names a --model file
    exec("from torch import nn\nclass Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
         "        self.fc = nn.Linear(3, 2)\n    def forward(self, x):\n        return self.fc(x)\n", user.__dict__)
    user.Net.__module__ = user.__name__
    sys.modules[user.__name__] = user
    try:
        model = user.Net()
        report = RunReport(recipe="r", model={}, data={})
        report.add_pass("duq", {"type": "duq"}, 1.0, acc=0.5, mse=np.float32(0.25), bits=np.array([3, 4]))
        calib = (torch.randn(2, 3),)
        for lowering in (lower_duq, BinaryLowering(calibration=calib)):
            ctx = types.SimpleNamespace(quant_plan=QuantPlan(seed=3), lowering=lowering, extras={"duq": {"bits": [3, 4]}},
                                        report=report)
            assert checkpoint.save(tmp_path, ctx, 0, "duq", model, "fp") is None
            done = checkpoint.load_completed(tmp_path, ["duq", "ptq"], "fp")
            assert done is not None and done.index == 0 and type(done.model) is user.Net
            assert torch.equal(done.model.fc.weight, model.fc.weight)
            assert done.quant_plan == QuantPlan(seed=3) and done.extras == {"duq": {"bits": [3, 4]}}
            summary = done.passes[0].summary
            assert summary["acc"] == 0.5 and summary["mse"] == np.float32(0.25) and summary["bits"].tolist() == [3, 4]
            if lowering is lower_duq:
                assert done.lowering is lower_duq
            else:
                assert isinstance(done.lowering, BinaryLowering) and torch.equal(done.lowering.calibration[0], calib[0])
            record("checkpoint round trips")
    finally:
        sys.modules.pop(user.__name__, None)
    from mobilec.errors import MobilecError

    with pytest.raises(MobilecError, match=r"references mobilec_user_model_test0001\.Net, refused"):
        checkpoint.load_checkpoint(checkpoint.checkpoint_path(tmp_path, 0, "duq"))  # its module is not loaded now
