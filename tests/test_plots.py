"""Per-run plots: the numbers drawn are the report's numbers; a failing plot is reported, never fatal."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from mobilec.plots import (
    aiwq_series,
    bits_figure,
    bits_series,
    dtype_bits,
    latency_figure,
    latency_series,
    render_run_plots,
    tucker_figure,
    tucker_series,
)
from mobilec.profile.device import Measurement, Repetition
from mobilec.report import RunReport, render_markdown

LAYERS = [
    {"name": "conv1", "kind": "conv2d", "params": 144, "info_bits": 8.0, "stored": "int8", "executed": "int8",
     "stored_bytes": 200, "packed_bytes": 144},
    {"name": "conv2", "kind": "conv2d", "params": 4608, "info_bits": 3.0, "stored": "int8", "executed": "int8",
     "stored_bytes": 4700, "packed_bytes": 1728},
    {"name": "fc", "kind": "linear", "params": 320, "info_bits": 32.0, "stored": "fp32", "executed": "unknown",
     "stored_bytes": 1320, "packed_bytes": 1280},
]
_T = {"raw_ranks": None, "rank_source": "vbmf", "rel_error": 0.5, "reason": None, "compression": 2.0}
TUCKER = [  # records as passes/tucker.py writes them
    {**_T, "name": "c1", "kind": "conv2d", "shape": [16, 1, 3, 3], "decomposed": False, "ranks": None, "full_ranks": None,
     "params_before": 144, "params_after": 144, "macs_before": 1000, "macs_after": 1000, "rel_error": 0.0, "reason": "first conv"},
    {**_T, "name": "c2", "kind": "conv2d", "shape": [32, 16, 3, 3], "decomposed": True, "ranks": [5, 7], "full_ranks": [16, 32],
     "params_before": 4608, "params_after": 619, "macs_before": 90000, "macs_after": 20000},
    {**_T, "name": "fc", "kind": "linear", "shape": [10, 32], "decomposed": True, "ranks": [4], "full_ranks": [10],
     "params_before": 320, "params_after": 168, "macs_before": 320, "macs_after": 168},
]


def _bars(ax: Any, gid: str) -> list[tuple[float, float]]:
    return [(p.get_x() + p.get_width() / 2, p.get_height()) for p in ax.patches if p.get_gid() == gid]


def _profile(reps: list[list[float]]) -> dict[str, Any]:
    m = Measurement.from_repetitions(artifact="/x/model.tflite", device="host", runtime="tflite",
                                     repetitions=[Repetition(i, r) for i, r in enumerate(reps)])
    entry = m.to_dict()
    entry["latency_ms"].pop("samples")  # as api.py stores it: the repetitions keep the raw samples
    return entry


def test_dtype_bits() -> None:
    assert [dtype_bits(s) for s in ("int8", "uint4", "fp32", "fp16", "int64", "unknown", None)] == [8, 4, 32, 16, 64, None, None]


def test_bits_plot_draws_the_layer_table() -> None:
    s = bits_series(LAYERS)
    assert s == {"names": ["conv1", "conv2", "fc"], "information": [8.0, 3.0, 32.0], "stored": [8, 8, 32],
                 "executed": [8, 8, None]}
    ax = bits_figure(s, "t").axes[0]
    assert [h for _, h in _bars(ax, "information")] == [8.0, 3.0, 32.0]
    assert [h for _, h in _bars(ax, "stored")] == [8, 8, 32]
    executed = _bars(ax, "executed")  # "unknown" is left out, not drawn as 0 bits
    assert [h for _, h in executed] == [8, 8] and [round(x) for x, _ in executed] == [0, 1]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["conv1", "conv2", "fc"]


def test_tucker_plot_draws_ranks_and_macs() -> None:
    s = tucker_series(TUCKER)
    assert s["ranks"] == [None, [5, 7], [4]] and s["full_ranks"] == [None, [16, 32], [10]]
    top, bottom = tucker_figure(s, "t").axes
    assert [h for _, h in _bars(top, "macs_before")] == [1000, 90000, 320]
    assert [h for _, h in _bars(top, "macs_after")] == [1000, 20000, 168]
    assert [h for _, h in _bars(bottom, "rank")] == [5, 7, 4]
    assert [h for _, h in _bars(bottom, "full_rank")] == [16, 32, 10]
    assert [t.get_text() for t in bottom.texts] == ["kept"]  # c1 was left alone


def test_aiwq_series_splits_the_freezing_groups() -> None:
    s = aiwq_series({"aiwq": {"a": 0.5, "b": 0.1, "c": 0.9}, "frozen_phase2": ["c"], "frozen_phase3": ["c", "a"]})
    assert s == {"values": {"a": 0.5, "b": 0.1, "c": 0.9}, "frozen_phases_2_3": ["c"], "frozen_phase_3": ["a"]}


def test_latency_histogram_holds_every_sample_and_the_report_percentiles() -> None:
    reps = [[1.0, 1.2, 1.1, 5.0], [0.9, 1.0, 1.3]]
    entry = _profile(reps)
    s = latency_series(entry)
    assert s["repetitions"] == reps
    ax = latency_figure([("model.tflite", s)]).axes[0]
    # stacked histogram up to the 98th percentile: every other raw sample counted once, the stall said in the title
    assert sum(p.get_height() for p in ax.patches) == 6
    assert "7 runs; 1 slower beyond" in ax.get_title() and "(max 5)" in ax.get_title()
    lines = {ln.get_gid(): ln.get_xdata()[0] for ln in ax.lines}
    assert lines == {"p10": entry["latency_ms"]["p10"], "p50": entry["latency_ms"]["p50"], "p90": entry["latency_ms"]["p90"]}
    assert lines["p50"] == pytest.approx(1.1)


def _report(tmp_path: Path, layers: list[dict[str, Any]]) -> RunReport:
    rep = RunReport(recipe="r", model={"name": "m"}, data={"name": "d"})
    rep.add_pass("tucker", {}, 1.0, decomposed=2, layers=TUCKER)
    rep.artifacts.append({"target": "tflite", "path": str(tmp_path / "model.tflite"), "size_bytes": 10, "layers": layers,
                          "verification": {}, "status": "verified"})
    rep.profiles.append(_profile([[1.0, 1.5, 2.0, 1.2]]))
    return rep


def test_run_plots_are_written_and_linked_from_report_md(tmp_path: Path) -> None:
    rep = _report(tmp_path, LAYERS)
    rep.write(tmp_path)
    files = {p["file"] for p in rep.plots}
    assert files == {"bits_tflite.png", "tucker_ranks_macs.png", "latency_hist.png"}
    assert all(p["error"] is None for p in rep.plots)
    for name in files:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "report.md").read_text()
    for name in files:
        assert f"]({name})" in md
    # each plot sits in its section: bits after the layer table, latency after the profiling table
    assert md.index("### Layers in `model.tflite`") < md.index("(bits_tflite.png)") < md.index("## Profiling")
    assert md.index("## Profiling") < md.index("(latency_hist.png)")
    assert md.index("### tucker: per layer") < md.index("(tucker_ranks_macs.png)") < md.index("## Artifacts")
    assert json.loads((tmp_path / "report.json").read_text())["plots"] == rep.plots


def test_a_failing_plot_is_reported_and_the_others_still_drawn(tmp_path: Path) -> None:
    broken = [{**LAYERS[0], "info_bits": "eight"}]  # not a number: the bits plot cannot be drawn
    rep = _report(tmp_path, broken)
    rep.write(tmp_path)
    failed = [p for p in rep.plots if p["error"]]
    assert len(failed) == 1 and failed[0]["section"] == "artifact:tflite" and "ValueError" in failed[0]["error"]
    assert not (tmp_path / "bits_tflite.png").exists()
    md = (tmp_path / "report.md").read_text()
    assert "plot 'per-layer bits in model.tflite' could not be drawn: ValueError" in md
    assert "(latency_hist.png)" in md and "(tucker_ranks_macs.png)" in md


def test_profit_aiwq_plot_is_linked_when_the_pass_drew_it_else_drawn(tmp_path: Path) -> None:
    summ = {"aiwq": {"a": 0.5, "b": 0.1}, "frozen_phase2": ["a"], "frozen_phase3": ["a"]}
    rep = {"passes": [{"name": "profit", "summary": summ}]}
    recs = render_run_plots(rep, tmp_path)
    assert recs == [{"section": "pass:0", "title": "AIWQ per layer (profit)", "file": "profit_aiwq.png", "error": None}]
    png = tmp_path / "profit_aiwq.png"
    assert png.stat().st_size > 5000
    os.utime(png, (1, 1))
    summ["aiwq_plot"] = str(png)  # the pass's own plot: linked, not redrawn
    assert render_run_plots(rep, tmp_path)[0]["file"] == "profit_aiwq.png" and png.stat().st_mtime == 1


def test_report_without_plot_data_has_no_plots(tmp_path: Path) -> None:
    rep = RunReport(recipe="r", model={"name": "m"}, data={"name": "d"})
    rep.write(tmp_path)
    assert rep.plots == [] and not list(tmp_path.glob("*.png"))
    assert "![" not in render_markdown(rep.to_dict())


def test_two_passes_of_one_kind_get_a_plot_each(tmp_path: Path) -> None:
    rep = {"passes": [{"name": "tucker", "summary": {"layers": TUCKER}}, {"name": "tucker", "summary": {"layers": TUCKER[1:]}}]}
    recs = render_run_plots(rep, tmp_path)
    assert [(r["section"], r["file"]) for r in recs] == [("pass:0", "tucker_0_ranks_macs.png"), ("pass:1", "tucker_1_ranks_macs.png")]


def test_plots_of_an_earlier_run_in_the_folder_are_removed(tmp_path: Path) -> None:
    _report(tmp_path, LAYERS).write(tmp_path)
    assert (tmp_path / "tucker_ranks_macs.png").is_file()
    (tmp_path / "mine.png").write_bytes(b"x")  # not a plot mobilec recorded: left alone
    again = RunReport(recipe="r", model={"name": "m"}, data={"name": "d"})  # --force: a run with no Tucker pass
    again.profiles.append(_profile([[1.0, 2.0]]))
    again.write(tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["latency_hist.png", "mine.png"]


def test_report_markdown_lists_each_pass_notes() -> None:
    rep = RunReport(recipe="r", model={"name": "m"}, data={"name": "d"})
    rep.add_pass("profit", {}, 1.0, steps=3, notes=["inputs kept at 8 bits (high_bit_inputs): dw.0"])
    rep.add_pass("tucker", {}, 1.0, notes="a string, not a list")
    md = render_markdown(rep.to_dict())
    assert "- profit: inputs kept at 8 bits (high_bit_inputs): dw.0" in md
    assert "- tucker: a" not in md


def test_report_markdown_states_delegation_per_runtime() -> None:
    """ExecuTorch counts delegated ops; LiteRT's interpreter delegate is counted in partitions (no "None/None")."""
    from mobilec.report import delegation_cell

    rep = RunReport(recipe="r", model={"name": "m"}, data={"name": "d"}).to_dict()
    pte = {"target": "executorch", "path": "m.pte", "size_bytes": 10,
           "delegation": {"backend": "XNNPACK", "delegated": 3, "total": 4, "not_delegated": {"aten.mul": 1}}}
    tfl = {"target": "tflite", "path": "m.tflite", "size_bytes": 10,
           "delegation": {"backend": "LiteRT builtin kernels (XNNPACK delegate at run time)", "ops": {"ADD": 1}, "xnnpack_partitions": 1}}
    rep["artifacts"] = [pte, tfl]
    md = render_markdown(rep)
    assert "- executorch: 3/4 ops delegated to XNNPACK; not delegated: `aten.mul` x1" in md
    assert "- tflite: the XNNPACK delegate takes the graph in 1 partition(s)" in md and "None" not in md
    assert [delegation_cell(a["delegation"]) for a in (pte, tfl)] + [delegation_cell(None)] == ["3/4", "1 partition(s)", "-"]
