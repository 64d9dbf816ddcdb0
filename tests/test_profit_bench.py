"""bench/profit.py: rows come from a run's report, goals compare artifact accuracy with fp32, rows merge by key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from bench_support import load_bench


def _bench() -> Any:
    return load_bench("profit")


def _report(recipe: str, acc: float, *, qat: bool = True) -> dict[str, Any]:
    layer = {"name": "c", "kind": "conv2d", "params": 100, "info_bits": 4.0, "stored": "int8", "executed": "int8",
             "stored_bytes": 104, "packed_bytes": 54}
    passes = [{"name": "profit", "params": {}, "seconds": 60.0,
               "summary": {"train_seconds": 55.0, "steps": 300, "mean_step_seconds": 0.18,
                           "aiwq_ranking": ["a", "b", "c", "d"]}}] if qat else []
    return {"recipe": recipe, "command": f"mobilec export --recipe {recipe}", "model": {"name": "mobilenet_v2"},
            "passes": passes, "accuracy": {"original": 0.92, "compressed_eager": acc},
            "artifacts": [{"target": "executorch", "size_bytes": 2000, "layers": [layer], "status": "verified",
                           "verification": {"accuracy": acc, "top1_agreement": 1.0, "max_abs_error": 0.0,
                                            "n_samples": 10000, "reference": "eager"}}],
            "failures": [{"target": "tflite", "error": "boom"}]}


def test_rows_from_report_carry_the_issue_fields() -> None:
    b = _bench()
    rows = b.rows_from_report(_report("profit4bit", 0.918), model="mobilenet_v2", recipe="profit4bit", command="cmd",
                              machine="host")
    ok, failed = rows
    for key in ("model", "recipe", "target", "accuracy", "eager_accuracy", "size_bytes", "packed_weight_bytes",
                "train_seconds", "machine", "command"):
        assert key in ok
    assert ok["packed_weight_bytes"] == 54 and ok["stored_weight_bytes"] == 104 and ok["train_seconds"] == 55.0
    assert ok["aiwq_top3"] == ["a", "b", "c"] and ok["weight_info_bits"] == [4.0]
    assert failed["target"] == "tflite" and failed["accuracy"] is None and "boom" in failed["error"]


def test_goals_use_the_artifact_accuracy_against_fp32() -> None:
    b = _bench()
    rows = []
    for recipe, acc in (("profit4bit", 0.918), ("duq4bit", 0.91), ("profit3bit", 0.90), ("duq3bit", 0.905)):
        rows += b.rows_from_report(_report(recipe, acc), model="m", recipe=recipe, command="c", machine="h")[:1]
    goals = b.check_goals(rows, {"m": {"ratio": 1.6}})
    assert goals["m/profit4bit/executorch"]["met"] and not goals["m/duq4bit/executorch"]["met"]  # 0.2 vs 1.0 pt
    assert not goals["m/profit3bit>duq3bit/executorch"]["met"]
    assert not goals["m/qat_step_time_ratio"]["met"]
    md = b.render_markdown({"rows": rows, "goals": goals, "machine": {"description": "h"}, "step_time": {}})
    assert "| m/profit4bit/executorch | 0.2 | 0.5 | yes |" in md and "| m/duq4bit/executorch | 1.0 | 0.5 | **no** |" in md
    rows_v2 = [{**r, "model": "mobilenet_v2"} for r in rows]  # a model with rows gets no "not run" line
    md2 = b.render_markdown({"rows": rows_v2, "goals": {}, "machine": {"description": "h"}, "step_time": {}})
    assert "mobilenet_v2: not run" in md and "mobilenet_v2: not run" not in md2


def test_goals_leave_out_rejected_artifacts_and_say_so() -> None:
    b = _bench()
    rows = []
    for seed, acc in ((0, 0.918), (1, 0.80)):
        row = b.rows_from_report(_report("profit4bit", acc), model="m", recipe="profit4bit", command="c", machine="h")[0]
        rows.append({**row, "seed": seed})
    rows[1]["status"] = "rejected: executorch vs eager: top-1 agreement 0.9937 < min_top1_agreement 0.995"
    goals = b.check_goals(rows, {})
    assert goals["m/profit4bit/executorch"]["seeds"] == [0] and goals["m/profit4bit/executorch"]["met"]
    assert goals["rejected_artifacts_left_out"] == ["m/profit4bit/executorch seed 1"]
    md = b.render_markdown({"rows": rows, "goals": goals, "machine": {"description": "h"}, "step_time": {}})
    assert "Left out of the goals" in md and "m/profit4bit/executorch seed 1" in md


def _saver(b: Any, out: Path) -> Any:
    """``save(report, command)``: the report's rows merged into ``out`` as bench/profit.py merges them."""
    from mobilec.io import write_json_atomic, write_text_atomic

    args = b.parse_args(["--out", str(out)])
    result: dict[str, Any] = {"rows": [], "step_time": {}}

    def save(rep: dict[str, Any], command: str = "c") -> list[dict[str, Any]]:
        rows = b.rows_from_report(rep, model="m", recipe="profit4bit", command=command, machine="h")
        b._save(result, rows, "h", args, write_json_atomic, write_text_atomic)
        return rows

    return save


def test_rows_merge_by_model_recipe_target(tmp_path: Path) -> None:
    b = _bench()
    out = tmp_path / "profit.json"
    save = _saver(b, out)
    save(_report("profit4bit", 0.90))
    save(_report("profit4bit", 0.91))
    saved = json.loads(out.read_text())
    assert [r["accuracy"] for r in saved["rows"] if r["target"] == "executorch"] == [0.91]
    # the rows table is mobilec.bench_render's block, so `mobilec compare --bench ... --check` holds
    from mobilec.bench_render import BEGIN, render_file

    page = out.with_suffix(".md").read_text()
    assert page.count(BEGIN) == 1 and page.index("## Goals") < page.index(BEGIN)
    assert "| m | profit4bit |" in page or "| profit4bit |" in page
    render_file(out, command=f"mobilec compare --bench {out}", check=True)


def test_a_row_re_exported_from_its_checkpoint_says_so_and_keeps_the_training_command(tmp_path: Path) -> None:
    b = _bench()
    out = tmp_path / "profit.json"
    save = _saver(b, out)
    trained = save(_report("profit4bit", 0.90), "train")
    assert "exported_from_checkpoint" not in trained[0]
    save({**_report("profit4bit", 0.90), "notes": ["resumed after pass 1 (profit) from its checkpoint"]}, "resume")
    row = next(r for r in json.loads(out.read_text())["rows"] if r["target"] == "executorch")
    assert row["exported_from_checkpoint"].startswith("resumed after pass 1")
    assert (row["command"], row["train_command"]) == ("resume", "train")
    assert b.parse_args(["--resume"]).resume


def test_seeds_are_kept_apart_and_goals_use_their_mean() -> None:
    b = _bench()
    rows = []
    for seed, (p3, d3) in enumerate(((0.90, 0.905), (0.92, 0.90), (0.91, 0.90))):
        rows += b.rows_from_report(_report("profit3bit", p3), model="m", recipe="profit3bit", command="c", machine="h",
                                   seed=seed)[:1]
        rows += b.rows_from_report(_report("duq3bit", d3), model="m", recipe="duq3bit", command="c", machine="h",
                                   seed=seed)[:1]
    result: dict[str, Any] = {"rows": rows[:2], "step_time": {}}
    merged = [r for r in result["rows"] if b.row_key(r) not in {b.row_key(n) for n in rows[2:]}] + rows[2:]
    assert len(merged) == 6  # a second seed adds rows instead of replacing the first
    assert rows[2]["cli_equivalent"].endswith("--seed 1") and not rows[0]["cli_equivalent"].endswith("--seed 0")
    g = b.check_goals(merged, {})
    win = g["m/profit3bit>duq3bit/executorch"]
    assert win["met"] and win["seeds"] == [0, 1, 2] and win["profit_wins"] == 2
    assert win["profit3bit"] == pytest.approx(0.91) and win["duq3bit"] == pytest.approx(0.90166, abs=1e-5)
    assert g["m/profit3bit/executorch"]["drop_points_vs_fp32"] == pytest.approx(1.0)  # fp32 0.92 - mean 0.91
    md = b.render_markdown({"rows": merged, "goals": g, "machine": {"description": "h"}, "step_time": {}})
    assert "(mean of seeds 0, 1, 2; profit higher in 2 of 3)" in md
