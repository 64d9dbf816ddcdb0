"""bench_render: the bench page's table and Pareto plots come from the JSON rows, idempotently."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mobilec.bench_render import (
    BEGIN,
    END,
    float_style,
    fmt_cell,
    main,
    order_columns,
    plan_table,
    point_labeller,
    render_file,
)
from mobilec.cli import main as cli
from mobilec.compare import pareto_front, tradeoff_figure, tradeoff_points
from mobilec.errors import MobilecError

ROWS = [
    {"model": "m", "recipe": "fp32", "target": "executorch", "accuracy": 0.91, "size_bytes": 4096 * 1024,
     "latency_ms_p50": 4.0, "verification": {"passed": True}, "machine": "AMD EPYC", "status": "verified"},
    {"model": "m", "recipe": "int8", "target": "executorch", "accuracy": 0.90, "size_bytes": 1024 * 1024,
     "latency_ms_p50": 1.0, "verification": {"passed": True}, "machine": "AMD EPYC", "status": "verified"},
    {"model": "m", "recipe": "int4", "target": "tflite", "accuracy": 0.80, "size_bytes": 2048 * 1024,
     "latency_ms_p50": 2.0, "verification": {"passed": True}, "machine": "AMD EPYC", "status": "verified"},
    {"model": "m", "recipe": "broken", "target": "tflite", "accuracy": None, "machine": "AMD EPYC",
     "status": "failed: the converter | crashed"},
]


def _write(tmp_path: Path, rows: list[dict[str, Any]], name: str = "demo") -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "command": f"python bench/{name}.py", "rows": rows}))
    return path


def test_columns_follow_the_rows_in_a_sensible_order() -> None:
    assert order_columns(["status", "snr_db", "cpu_ms_p50", "params", "notes", "target", "recipe", "eager_accuracy"]) == [
        "recipe", "target", "snr_db", "eager_accuracy", "params", "cpu_ms_p50", "notes", "status"]
    assert order_columns(["accuracy_source", "accuracy", "size_bytes"], text_keys=["accuracy_source"]) == [
        "accuracy", "size_bytes", "accuracy_source"]
    table = plan_table(ROWS)
    assert table.columns == ["recipe", "target", "accuracy", "size_bytes", "latency_ms_p50", "status"]
    assert table.constant == {"model": "m", "machine": "AMD EPYC"}  # same in every row: said once, above the table
    assert table.nested == ["verification"]


def test_one_number_format_per_column() -> None:
    assert [float_style(v) for v in ([0.91, 1.0, None], [100.0, 32.0], [[1.0, 4.0], [32.0]], [0.5, 2.25], ["a"])] == [
        "fraction", "whole", "whole", "mixed", "mixed"]
    assert fmt_cell("accuracy", 1.0, "fraction") == "1.0000" and fmt_cell("s", 100.0, "whole") == "100"
    assert fmt_cell("bits", [1.0, 4.0], "whole") == "1, 4" and fmt_cell("ms", 2.25) == "2.250"
    assert fmt_cell("n", 1234567) == "1,234,567" and fmt_cell("ok", True) == "yes" and fmt_cell("x", None) == "-"
    assert fmt_cell("kept", "") == "-" and fmt_cell("e", "x" * 200).endswith("…") and len(fmt_cell("e", "x" * 200)) == 120


def test_page_table_holds_every_row_and_keeps_the_prose(tmp_path: Path) -> None:
    path = _write(tmp_path, [{**r, "command": "python bench/demo.py"} for r in ROWS])  # the header says it already
    (tmp_path / "demo.md").write_text("# Demo bench\n\nProse the bench script wrote.\n")
    files = render_file(path, command="mobilec compare --bench demo.json")
    page = (tmp_path / "demo.md").read_text()
    assert page.startswith("# Demo bench\n\nProse the bench script wrote.\n")
    assert "| recipe | target | accuracy | size_bytes | latency_ms_p50 | status |\n|---|---|---:|---:|---:|---|" in page
    assert "| int8 | executorch | 0.9000 | 1,048,576 | 1 | verified |" in page
    assert "| broken | tflite | - | - | - | failed: the converter \\| crashed |" in page  # a | inside a cell is escaped
    assert "Every row: model = m; machine = AMD EPYC\n" in page  # not the command again: the header says it
    assert "- command: python bench/demo.py" in page and "Regenerate: `mobilec compare --bench demo.json`" in page
    assert {f.name for f in files} == {"demo.md", "demo_accuracy_vs_size.png", "demo_accuracy_vs_latency.png"}
    assert "![accuracy vs size_bytes](demo_accuracy_vs_size.png)" in page
    # rerunning replaces the block: same page, one block
    render_file(path, command="mobilec compare --bench demo.json")
    assert (tmp_path / "demo.md").read_text() == page and page.count(BEGIN) == 1 and page.count(END) == 1


def test_plotted_points_and_front_are_the_rows(tmp_path: Path) -> None:
    pts = tradeoff_points(ROWS, "size_bytes", cost_scale=1 / 1024)
    assert [(p.recipe, p.target, p.accuracy, p.cost) for p in pts] == [
        ("fp32", "executorch", 0.91, 4096.0), ("int8", "executorch", 0.90, 1024.0), ("int4", "tflite", 0.80, 2048.0)]
    assert [p.recipe for p in pareto_front(pts)] == ["int8", "fp32"]  # int4 is bigger and worse than int8
    ax = tradeoff_figure(pts, "KB", "t", metric_label="%", metric_scale=100.0).axes[0]
    front = next(line for line in ax.lines if line.get_gid() == "pareto")
    assert list(front.get_xdata()) == [1024.0, 4096.0] and list(front.get_ydata()) == pytest.approx([90.0, 91.0])
    scat = {c.get_gid(): c.get_offsets().tolist() for c in ax.collections}
    assert scat == {"points:executorch": [[4096.0, 91.0], [1024.0, 90.0]], "points:tflite": [[2048.0, 80.0]]}
    assert sorted(t.get_text() for t in ax.texts) == ["fp32", "int4", "int8"]


def test_groups_are_never_mixed_and_labels_name_stages(tmp_path: Path) -> None:
    rows = [*ROWS[:2], {**ROWS[2], "model": "other"}]
    render_file(_write(tmp_path, rows))
    page = (tmp_path / "demo.md").read_text()
    assert "2 groups by model" in page and "### model m" in page and "### model other" in page
    assert (tmp_path / "demo_accuracy_vs_size-1.png").is_file() and (tmp_path / "demo_accuracy_vs_size-2.png").is_file()
    staged = [{"recipe": "tucker", "stage": "before fine-tuning", "target": "tflite"},
              {"recipe": "tucker", "stage": "tucker", "target": "tflite"}, {"recipe": "fp32", "stage": "fp32", "target": "tflite"}]
    label = point_labeller(staged)
    assert [label(r) for r in staged] == ["tucker (before fine-tuning)", "tucker (tucker)", "fp32"]


def test_other_metric_and_missing_columns(tmp_path: Path) -> None:
    rows = [{"model": "lightgcn", "recall@20": 0.38, "embedding_bytes": 672000, "artifact_bytes": {"tflite": 1}},
            {"model": "c2f", "recall@20": 0.35, "embedding_bytes": 55442, "artifact_bytes": {"tflite": 1}}]
    path = _write(tmp_path, rows, "rec")
    files = render_file(path, out=tmp_path / "o", metric="recall@20", size_key="embedding_bytes", group_by=[])
    page = files[0].read_text()
    assert page.startswith("# Benchmark `rec`") and "| lightgcn | 0.3800 | 672,000 |" in page
    assert "No recall@20-vs-latency plot: no numeric latency column" in page
    assert [f.name for f in files[1:]] == ["rec_recall_20_vs_size.png"]
    with pytest.raises(MobilecError, match="no row has a number in 'accuracy'"):
        render_file(path, metric="accuracy")


def test_cli_and_module_entry_points(tmp_path: Path) -> None:
    path = _write(tmp_path, ROWS)
    result = CliRunner().invoke(cli, ["compare", "--bench", str(path), "--columns", "recipe,accuracy"])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "demo.md").read_text()
    assert "| recipe | accuracy |" in page and f"--bench {path} --columns recipe,accuracy" in page
    assert main([str(path)]) == 0 and "| recipe | target | accuracy |" in (tmp_path / "demo.md").read_text()
    bad = CliRunner().invoke(cli, ["compare", "--bench", str(tmp_path / "nope.json")])
    assert bad.exit_code == 2 and "does not exist" in bad.output
    mixed = CliRunner().invoke(cli, ["compare", str(tmp_path), "--metric", "accuracy"])
    assert mixed.exit_code == 2 and "--metric only apply with --bench" in mixed.output
    (tmp_path / "rows.json").write_text(json.dumps({"rows": []}))
    assert main([str(tmp_path / "rows.json")]) == 2


def test_module_entry_error_stays_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file name with a carriage return or newline does not split the module entry's error line."""
    assert main([str(tmp_path / "no\rpe\n.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "no\\rpe\\n.json" in err, err


def test_check_tells_a_stale_page_from_a_current_one(tmp_path: Path) -> None:
    path = _write(tmp_path, ROWS)
    with pytest.raises(MobilecError, match="has no rendered block"):
        render_file(path, check=True)
    render_file(path)
    before = (tmp_path / "demo.md").read_text()
    assert render_file(path, check=True) == [tmp_path / "demo.md"]
    path.write_text(json.dumps({"rows": [{**ROWS[0], "accuracy": 0.5}]}))  # the JSON moved on, the page did not
    with pytest.raises(MobilecError, match="out of date with the JSON"):
        render_file(path, check=True)
    assert (tmp_path / "demo.md").read_text() == before  # --check writes nothing
    result = CliRunner().invoke(cli, ["compare", "--bench", str(path), "--check"])
    assert result.exit_code == 2 and "out of date" in result.output


REPO = Path(__file__).resolve().parents[1]
PAGES = sorted(p for p in (REPO / "bench" / "results").glob("*.md") if BEGIN in p.read_text())


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_committed_bench_pages_agree_with_their_json(page: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A page's rendered block is what its own 'Regenerate:' command makes of the JSON today."""
    cmd = re.search(r"Regenerate: `([^`]+)`", page.read_text().split(BEGIN, 1)[1])
    assert cmd, f"{page.name}: the rendered block names no Regenerate command"
    argv = shlex.split(cmd.group(1))
    assert argv[:3] == ["mobilec", "compare", "--bench"]
    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(cli, [*argv[1:], "--check"])
    assert result.exit_code == 0, result.output
