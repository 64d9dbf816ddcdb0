"""The decision view across runs: one table and Pareto plots from runs' report.json files.

>>> rows = [Point("a", "executorch", 0.9, 100.0), Point("b", "executorch", 0.8, 50.0), Point("c", "tflite", 0.7, 80.0)]
>>> [p.recipe for p in pareto_front(rows)]
['b', 'a']
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mobilec.errors import MobilecError
from mobilec.io import atomic_path, write_text_atomic

MARKERS = {"executorch": "o", "tflite": "s", "onnx": "^"}


@dataclass(frozen=True)
class Point:
    """One artifact on a trade-off plot: higher accuracy is better, lower cost is better."""

    recipe: str
    target: str
    accuracy: float
    cost: float


def pareto_front(points: Sequence[Point]) -> list[Point]:
    """Points no other point beats on both accuracy (higher) and cost (lower); sorted by cost."""
    front = []
    for p in points:
        dominated = any(
            q.accuracy >= p.accuracy and q.cost <= p.cost and (q.accuracy > p.accuracy or q.cost < p.cost) for q in points
        )
        if not dominated:
            front.append(p)
    return sorted(front, key=lambda p: (p.cost, -p.accuracy))


def load_run(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "report.json" if Path(run_dir).is_dir() else Path(run_dir)
    if not path.is_file():
        raise MobilecError(f"{run_dir} holds no report.json", hint="give run folders written by `mobilec export`")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MobilecError(f"{path} is not valid JSON: {exc}", hint="re-run the export that wrote it") from None


def artifact_rows(rep: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per artifact of a run, with its profile (if any) joined by path."""
    profiles = {Path(p["artifact"]).name: p for p in rep.get("profiles", [])}
    rows = []
    for a in rep.get("artifacts", []):
        v = a.get("verification") or {}
        prof = profiles.get(Path(a["path"]).name, {})
        lat = prof.get("latency_ms", {})
        layers = a.get("layers") or []
        rows.append(
            {
                "recipe": rep["recipe"],
                "target": a["target"],
                "accuracy": v.get("accuracy"),
                "size_bytes": a.get("size_bytes"),
                "packed_weight_bytes": sum(layer["packed_bytes"] for layer in layers) if layers else None,
                "latency_ms_p50": lat.get("p50"),
                "latency_ms_p10": lat.get("p10"),
                "latency_ms_p90": lat.get("p90"),
                "energy": prof.get("energy"),
                "macs": compressed_macs(rep),
                "status": a.get("status", "-"),
                "device": prof.get("device"),
            }
        )
    for f in rep.get("failures", []):
        if not any(r["target"] == f["target"] for r in rows):
            rows.append({"recipe": rep["recipe"], "target": f["target"], "status": f"failed: {f['error']}"})
    return rows


def compressed_macs(rep: dict[str, Any]) -> int | None:
    """MACs of the compressed model: the last pass that measured them (``macs_after``), else the model's."""
    for p in reversed(rep.get("passes", [])):
        macs = (p.get("summary") or {}).get("macs_after")
        if isinstance(macs, int | float):
            return int(macs)
    macs = rep.get("model", {}).get("macs")
    return int(macs) if isinstance(macs, int | float) else None


def group_key(rep: dict[str, Any]) -> tuple[str, str, str]:
    devices = sorted({p.get("device", "?") for p in rep.get("profiles", [])}) or ["(not profiled)"]
    return (str(rep.get("model", {}).get("name")), str(rep.get("data", {}).get("name")), ",".join(devices))


def compare(run_dirs: Sequence[Path], out: Path) -> list[Path]:
    """Write compare.md and Pareto plots for ``run_dirs`` into ``out``; returns the files written.

    Runs of different models, data sets or devices are never mixed: each group gets its own
    table and plots.
    """
    if not run_dirs:
        raise MobilecError("no run folders given", hint="mobilec compare RUN_DIR [RUN_DIR ...]")
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for d in run_dirs:
        rep = load_run(Path(d))
        groups[group_key(rep)].extend(artifact_rows(rep))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    lines = ["# mobilec compare", ""]
    if len(groups) > 1:
        lines += [f"The runs cover {len(groups)} different model/data/device combinations; each is compared on its own.", ""]
    for i, (key, rows) in enumerate(sorted(groups.items())):
        model, data, device = key
        lines += [f"## {model} on {data} (latency on {device})", ""]
        lines += render_table(rows)
        suffix = f"-{i + 1}" if len(groups) > 1 else ""
        for cost, label in (("size_bytes", "artifact size (KB)"), ("latency_ms_p50", "latency p50 (ms)")):
            png = out / f"accuracy_vs_{cost.split('_')[0]}{suffix}.png"
            if plot_tradeoff(rows, cost, label, f"{model} / {data}", png):
                written.append(png)
                lines += [f"![accuracy vs {label}]({png.name})", ""]
    md = out / "compare.md"
    write_text_atomic(md, "\n".join(lines))
    return [md, *written]


def _fmt(x: Any, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _kb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024:.1f} KB"


def render_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| recipe | target | accuracy (artifact) | size | packed weights | p50 ms [p10, p90] | energy | MACs | status |",
        "|---|---|---:|---:|---:|---:|---|---:|---|",
    ]
    for r in rows:
        lat = "-"
        if r.get("latency_ms_p50") is not None:
            lat = f"{r['latency_ms_p50']:.3f} [{_fmt(r.get('latency_ms_p10'), '.3f')}, {_fmt(r.get('latency_ms_p90'), '.3f')}]"
        e = r.get("energy")
        energy = "-"
        if isinstance(e, dict):
            mj = e.get("mj_per_inference", e.get("mJ_per_inference"))
            energy = f"{_fmt(mj, '.3g') if isinstance(mj, int | float) else '?'} mJ ({e.get('method', '?')})"
        size = r.get("size_bytes")
        packed = r.get("packed_weight_bytes")
        lines.append(
            f"| {r['recipe']} | {r['target']} | {_fmt(r.get('accuracy'), '.4f')} | {_kb(size)} "
            f"| {_kb(packed)} | {lat} | {energy} | {_fmt(r.get('macs'), ',')} | {r.get('status')} |"
        )
    return [*lines, ""]


def tradeoff_points(rows: list[dict[str, Any]], cost_key: str, *, metric: str = "accuracy", cost_scale: float = 1.0,
                    label: Any = None) -> list[Point]:
    """Rows with both ``metric`` and ``cost_key`` as Points (``label(row)`` names a point; default: recipe)."""
    name = label or (lambda r: str(r.get("recipe")))
    return [
        Point(name(r), str(r.get("target") or "-"), float(r[metric]), float(r[cost_key]) * cost_scale)
        for r in rows
        if isinstance(r.get(metric), int | float) and isinstance(r.get(cost_key), int | float)
    ]


def plot_tradeoff(rows: list[dict[str, Any]], cost_key: str, label: str, title: str, path: Path, *, metric: str = "accuracy",
                  metric_label: str = "top-1 accuracy of the artifact (%)", metric_scale: float = 100.0,
                  point_label: Any = None) -> bool:
    """Metric vs cost scatter, one marker per target, Pareto front drawn; False if no data."""
    points = tradeoff_points(rows, cost_key, metric=metric, cost_scale=1 / 1024 if cost_key.endswith("bytes") else 1.0,
                             label=point_label)
    if not points:
        return False
    fig = tradeoff_figure(points, label, title, metric_label=metric_label, metric_scale=metric_scale)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return True


def tradeoff_figure(points: list[Point], label: str, title: str, *, metric_label: str, metric_scale: float) -> Any:
    """The scatter (gid ``points:<target>``) and the Pareto front line (gid ``pareto``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 4.8), dpi=110)
    for target in sorted({p.target for p in points}):
        pts = [p for p in points if p.target == target]
        ax.scatter([p.cost for p in pts], [p.accuracy * metric_scale for p in pts], marker=MARKERS.get(target, "x"), s=55,
                   alpha=0.7, label=target, gid=f"points:{target}")
    front = pareto_front(points)
    ax.plot([p.cost for p in front], [p.accuracy * metric_scale for p in front], "--", color="gray", lw=1, label="Pareto front",
            gid="pareto", drawstyle="steps-post")  # the staircase: what is attainable at each cost
    ax.margins(x=0.1, y=0.08)  # room for the labels at the edges
    _annotate(ax, [(p.recipe, p.cost, p.accuracy * metric_scale) for p in points])
    ax.set_xlabel(label)
    ax.set_ylabel(metric_label)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _annotate(ax: Any, labels: list[tuple[str, float, float]]) -> None:
    """Name each point once, next to it: a label equal to one already drawn nearby is skipped; a label
    tries right/left, above/below its point before moving further away (with a leader line), so that
    no two labels and no label and marker overlap."""
    ax.autoscale_view()
    scale = 72.0 / ax.figure.dpi
    pts = [tuple(v * scale for v in ax.transData.transform((x, y))) for _, x, y in labels]
    markers = [(px - 4, py - 4, px + 4, py + 4) for px, py in pts]  # boxes in points
    boxes: list[tuple[float, float, float, float]] = []
    drawn: list[tuple[str, float, float]] = []

    def free(b: tuple[float, float, float, float]) -> bool:
        return not any(b[0] < o[2] and o[0] < b[2] and b[1] < o[3] and o[1] < b[3] for o in boxes + markers)

    order = sorted(range(len(labels)), key=lambda i: (-labels[i][2], labels[i][1]))
    for i in order:
        text, x, y = labels[i]
        px, py = pts[i]
        if any(t == text and abs(px - qx) < 8 and abs(py - qy) < 8 for t, qx, qy in drawn):
            continue  # the same recipe at (almost) the same spot, e.g. two targets of one size
        w, h = 4.8 * len(text), 9.0  # 8 pt text
        own = markers[i]
        markers[i] = (0, 0, 0, 0)  # a label may touch its own marker's box edge
        candidates = [(dx, dy) for k in range(6) for dy in (3 + 10 * k, -12 - 10 * k) for dx in (5, -5 - w)]
        dx, dy = next(((dx, dy) for dx, dy in candidates if free((px + dx, py + dy, px + dx + w, py + dy + h))), (5, 3))
        markers[i] = own
        boxes.append((px + dx, py + dy, px + dx + w, py + dy + h))
        drawn.append((text, px, py))
        far = abs(dy) > 15
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=8,
                    arrowprops={"arrowstyle": "-", "color": "gray", "lw": 0.5} if far else None)
