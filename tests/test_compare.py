"""compare: the Pareto front is right on hand-checked cases; groups are never mixed; plots have content."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from mobilec.cli import main
from mobilec.compare import Point, compare, pareto_front
from mobilec.errors import MobilecError


def test_pareto_front_hand_checked() -> None:
    pts = [
        Point("fp32", "executorch", 0.93, 4000),
        Point("int8", "executorch", 0.929, 1000),
        Point("int4", "executorch", 0.90, 600),
        Point("bad", "executorch", 0.85, 1200),  # worse and bigger than int8: dominated
        Point("tie", "tflite", 0.90, 600),  # equal to int4: neither dominates the other
    ]
    front = pareto_front(pts)
    assert [p.recipe for p in front] == ["int4", "tie", "int8", "fp32"]


@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1e6)), min_size=1, max_size=30))
def test_front_points_are_not_dominated_and_others_are(raw: list[tuple[float, float]]) -> None:
    pts = [Point(str(i), "onnx", a, c) for i, (a, c) in enumerate(raw)]
    front = set(pareto_front(pts))
    assert front
    for p in pts:
        dominated = any(q.accuracy >= p.accuracy and q.cost <= p.cost and (q.accuracy, q.cost) != (p.accuracy, p.cost) for q in pts)
        assert (p in front) == (not dominated)


def _run(tmp: Path, name: str, recipe: str, model: str, acc: float, size: int, p50: float) -> Path:
    d = tmp / name
    d.mkdir()
    art = {"target": "executorch", "path": str(d / "model.pte"), "size_bytes": size, "layers": [{"packed_bytes": size // 5}],
           "verification": {"accuracy": acc}, "status": "verified"}
    prof = {"artifact": str(d / "model.pte"), "device": "host", "latency_ms": {"p10": p50 * 0.9, "p50": p50, "p90": p50 * 1.2}}
    rep = {"recipe": recipe, "model": {"name": model, "macs": 1000}, "data": {"name": "fashion-mnist"},
           "artifacts": [art], "profiles": [prof], "failures": [{"target": "onnx", "error": "boom"}]}
    (d / "report.json").write_text(json.dumps(rep))
    return d


def test_compare_writes_table_and_plots(tmp_path: Path) -> None:
    runs = [_run(tmp_path, "a", "fp32", "m", 0.93, 4_000_000, 2.0), _run(tmp_path, "b", "int8", "m", 0.92, 1_000_000, 1.5)]
    files = compare(runs, tmp_path / "cmp")
    md = files[0].read_text()
    assert "| fp32 | executorch | 0.9300 | 3906.2 KB" in md
    assert "| int8 | executorch | 0.9200 |" in md and "1.500 [1.350, 1.800]" in md
    assert "failed: boom" in md
    pngs = [f for f in files if f.suffix == ".png"]
    assert {p.name for p in pngs} == {"accuracy_vs_size.png", "accuracy_vs_latency.png"}
    assert all(p.stat().st_size > 10_000 for p in pngs)  # a real figure, not an empty canvas


def test_different_models_are_grouped_not_mixed(tmp_path: Path) -> None:
    runs = [_run(tmp_path, "a", "fp32", "m1", 0.9, 1000, 1.0), _run(tmp_path, "b", "fp32", "m2", 0.8, 1000, 1.0)]
    md = compare(runs, tmp_path / "cmp")[0].read_text()
    assert "## m1 on fashion-mnist" in md and "## m2 on fashion-mnist" in md
    assert "2 different model/data/device combinations" in md


def test_missing_report_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MobilecError, match=r"holds no report\.json"):
        compare([tmp_path], tmp_path / "cmp")
    result = CliRunner().invoke(main, ["compare", str(tmp_path), "--out", str(tmp_path / "c")])
    assert result.exit_code == 2 and result.output.startswith("error: ")


def test_macs_are_the_compressed_models_and_energy_is_rounded(tmp_path: Path) -> None:
    d = _run(tmp_path, "t", "tucker", "m", 0.9, 1000, 1.0)
    rep = json.loads((d / "report.json").read_text())
    rep["passes"] = [{"name": "tucker", "summary": {"macs_before": 1000, "macs_after": 400}}, {"name": "ptq", "summary": {}}]
    rep["profiles"][0]["energy"] = {"mj_per_inference": 0.2006131972, "method": "estimated: a model"}
    (d / "report.json").write_text(json.dumps(rep))
    md = compare([d], tmp_path / "cmp")[0].read_text()
    assert "| 0.201 mJ (estimated: a model) | 400 | verified |" in md
