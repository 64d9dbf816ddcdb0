"""DuQ/PROFIT under torchrun: 2 CPU processes (gloo), DistributedDataParallel, one writer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

SCRIPT = textwrap.dedent("""
    import os, sys, json
    from pathlib import Path
    import torch
    import torch.distributed as dist
    sys.path.insert(0, {tests!r})
    from test_duq import TinyNet
    from mobilec.context import Context
    from mobilec.data import load_dataset
    from mobilec.passes.quant.profit import Profit
    from mobilec.report import RunReport

    torch.manual_seed(0)
    torch.set_num_threads(1)
    out = Path({out!r})
    ds = load_dataset("digits")
    model = TinyNet().eval()
    report = RunReport(recipe="t", model={{}}, data={{}})
    ctx = Context(data=ds, workdir=out / "run", report=report, example_inputs=(ds.x_test[:1],), teacher=model,
                  show_progress=False)
    p = Profit(act_schedule=(4,), weight_schedule=(4,), act_stage_steps=(2,), bn_steps=1, sample_steps=2,
               phase_steps=2, batch_size=16, holdout_samples=100, lr=0.02)
    q = p.apply(model, ctx)
    rank = dist.get_rank()
    s = report.passes[-1].summary
    torch.save(q.state_dict(), out / f"state{{rank}}.pt")
    (out / f"summary{{rank}}.json").write_text(json.dumps({{
        "world": dist.get_world_size(), "backend": dist.get_backend(), "processes": s["processes"],
        "frozen": s["frozen_phase3"], "selected": s["holdout_accuracy"]["selected"], "plot": "aiwq_plot" in s}}))
    dist.barrier()
""")


@pytest.mark.slow
def test_profit_under_torchrun_two_cpu_processes(tmp_path: Path) -> None:
    tests = str(Path(__file__).resolve().parent)
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(tests=tests, out=str(tmp_path)))
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    s0 = json.loads((tmp_path / "summary0.json").read_text())
    s1 = json.loads((tmp_path / "summary1.json").read_text())
    assert s0["world"] == 2 and s0["backend"] == "gloo" and s0["processes"] == 2
    assert s0["frozen"] == s1["frozen"] and s0["selected"] == s1["selected"]  # rank 0's ranking and choice
    assert s0["plot"] and not s1["plot"]  # only rank 0 writes
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["profit_aiwq.png"]
    a = torch.load(tmp_path / "state0.pt", weights_only=True)
    b = torch.load(tmp_path / "state1.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # identical models on every rank


TINY_RECIPE = """
version = 1
description = "tiny profit for the torchrun CLI test"
[[passes]]
type = "profit"
act_schedule = [4]
weight_schedule = [4]
act_stage_steps = [2]
bn_steps = 1
sample_steps = 2
phase_steps = 2
batch_size = 16
holdout_samples = 100
lr = 0.02
[export]
targets = ["executorch"]
"""


@pytest.mark.slow
def test_cli_export_under_torchrun_writes_one_run(tmp_path: Path) -> None:
    """`torchrun -m mobilec.cli export ...`: every rank trains, rank 0 alone exports, verifies and writes."""
    from test_duq import TinyNet

    torch.manual_seed(0)
    torch.save(TinyNet().state_dict(), tmp_path / "w.pt")
    (tmp_path / "tiny.toml").write_text(TINY_RECIPE)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    model = f"{Path(__file__).resolve().parent / 'test_duq.py'}:TinyNet"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mobilec.cli",
         "export", "--recipe", str(tmp_path / "tiny.toml"), "--model", model, "--weights", str(tmp_path / "w.pt"),
         "--data", "digits", "--out", str(out), "--no-profile"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    profit = next(p for p in rep["passes"] if p["name"] == "profit")
    assert profit["summary"]["processes"] == 2
    assert [a["status"] for a in rep["artifacts"]] == ["verified"]
    assert proc.stdout.count("report.json") <= 1  # one summary, printed by rank 0
