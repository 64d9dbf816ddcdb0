"""Per-run plots, drawn from report.json alone: per-layer bits, AIWQ, Tucker ranks/MACs, latency.

Each ``*_series`` function turns report data into the numbers a plot shows (tested against the
report); each ``*_figure`` function draws them (matplotlib, Agg backend) and returns the figure.
:func:`render_run_plots` writes every applicable plot into the run folder and returns one record
per plot: its file, or the error that stopped it — a failed plot never fails a run, and the
report says so.

>>> dtype_bits("int8"), dtype_bits("fp32"), dtype_bits("unknown")
(8, 32, None)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mobilec.io import atomic_path


@dataclass
class PlotRecord:
    """One plot of a run: ``section`` says where report.md shows it (``artifact:<target>``,
    ``pass:<index>`` or ``profiling``); ``file`` is its name in the run folder, or None with
    ``error`` when it could not be drawn."""

    section: str
    title: str
    file: str | None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def dtype_bits(dtype: str | None) -> int | None:
    """Bits of a container / arithmetic name (``int8`` -> 8, ``fp32`` -> 32); None if it names none."""
    if not dtype:
        return None
    found = re.findall(r"(\d+)", str(dtype))
    return int(found[-1]) if found else None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "x"


# ---------------------------------------------------------------------------- data preparation


def bits_series(layers: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Per-layer information / stored / executed bits of an artifact's ``layers`` table (graph order)."""
    return {
        "names": [str(layer["name"]) for layer in layers],
        "information": [float(layer["info_bits"]) for layer in layers],
        "stored": [dtype_bits(layer.get("stored")) for layer in layers],
        "executed": [dtype_bits(layer.get("executed")) for layer in layers],
    }


def aiwq_series(summary: dict[str, Any]) -> dict[str, Any]:
    """AIWQ per layer (graph order) of a PROFIT pass summary, with its freezing groups."""
    values = {str(k): float(v) for k, v in summary["aiwq"].items()}
    phase2 = [str(n) for n in summary.get("frozen_phase2") or []]
    phase3 = [str(n) for n in summary.get("frozen_phase3") or []]
    return {"values": values, "frozen_phases_2_3": phase2, "frozen_phase_3": [n for n in phase3 if n not in phase2]}


def tucker_series(layers: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Per-layer ranks (kept and full) and MACs before/after of a Tucker pass's ``layers`` records."""
    return {
        "names": [str(r["name"]) for r in layers],
        "decomposed": [bool(r.get("decomposed")) for r in layers],
        "ranks": [list(r["ranks"]) if r.get("decomposed") and r.get("ranks") else None for r in layers],
        "full_ranks": [list(r["full_ranks"]) if r.get("full_ranks") else None for r in layers],
        "macs_before": [r.get("macs_before") for r in layers],
        "macs_after": [r.get("macs_after") for r in layers],
    }


def latency_series(profile: dict[str, Any]) -> dict[str, Any]:
    """Raw latency samples of one profile entry, per repetition, and the report's percentiles."""
    reps = [list(map(float, r.get("latencies_ms") or [])) for r in profile.get("repetitions") or []]
    reps = [r for r in reps if r]
    if not reps and profile.get("latency_ms", {}).get("samples"):
        reps = [list(map(float, profile["latency_ms"]["samples"]))]
    lat = profile.get("latency_ms", {})
    return {
        "repetitions": reps,
        "p10": lat.get("p10"),
        "p50": lat.get("p50"),
        "p90": lat.get("p90"),
        "samples_kind": lat.get("samples_kind", "per_run"),
    }


# ---------------------------------------------------------------------------- figures


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _layer_axis(ax: Any, names: list[str]) -> None:
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=6 if len(names) > 20 else 8)
    ax.set_xlim(-0.6, len(names) - 0.4)


def bits_figure(series: dict[str, list[Any]], title: str) -> Any:
    """Grouped bars per layer: bits of information, of the stored container, of the executed arithmetic."""
    plt = _plt()
    names = series["names"]
    fig, ax = plt.subplots(figsize=(max(6.4, 0.3 * len(names) + 2), 4.2), dpi=110)
    width = 0.27
    for j, (key, color) in enumerate((("information", "tab:green"), ("stored", "tab:blue"), ("executed", "tab:orange"))):
        xs = [i + (j - 1) * width for i, v in enumerate(series[key]) if v is not None]
        ys = [v for v in series[key] if v is not None]
        ax.bar(xs, ys, width, color=color, label=f"{key} bits", gid=key)
    _layer_axis(ax, names)
    ax.set_yticks([1, 2, 4, 8, 16, 32])
    ax.set_ylabel("bits per weight")
    ax.set_ylim(0, 40)  # headroom: the legend sits above the tallest (32-bit) bars
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=3, loc="upper center")
    fig.tight_layout()
    return fig


def tucker_figure(series: dict[str, list[Any]], title: str) -> Any:
    """Top: MACs per layer before/after (log scale). Bottom: kept ranks against the full ranks."""
    plt = _plt()
    names = series["names"]
    n = len(names)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6.4, 0.35 * n + 2), 6.4), dpi=110, sharex=True)
    width = 0.4
    idx = [i for i in range(n) if series["macs_before"][i] is not None]
    top.bar([i - width / 2 for i in idx], [series["macs_before"][i] for i in idx], width, color="tab:gray", label="MACs before",
            gid="macs_before")
    top.bar([i + width / 2 for i in idx], [series["macs_after"][i] for i in idx], width, color="tab:blue", label="MACs after",
            gid="macs_after")
    top.set_yscale("log")
    top.set_ylabel("MACs per inference")
    top.set_title(title, fontsize=9)
    top.legend(fontsize=7)
    top.grid(axis="y", alpha=0.3)
    labels = ("input rank", "output rank")
    full_labelled = False
    for i in range(n):
        ranks, full = series["ranks"][i], series["full_ranks"][i]
        if ranks is None:
            bottom.text(i, 0.5, "kept", rotation=90, ha="center", va="bottom", fontsize=6, color="gray",
                        transform=bottom.get_xaxis_transform())
            continue
        k = len(ranks)
        for j, r in enumerate(ranks):
            x = i + (j - (k - 1) / 2) * width
            if full is not None and j < len(full):
                bottom.bar(x, full[j], width, fill=False, edgecolor="gray", lw=0.8, gid="full_rank",
                           label=None if full_labelled else "full rank")
                full_labelled = True
            color = "tab:purple" if k == 1 else ("tab:green", "tab:red")[j]
            label = ("rank (linear)" if k == 1 else labels[j]) if j < 2 else None
            bottom.bar(x, r, width, color=color, gid="rank", label=label)
    handles, lbls = bottom.get_legend_handles_labels()
    if handles:
        uniq = dict(zip(lbls, handles, strict=True))
        bottom.legend(uniq.values(), uniq.keys(), fontsize=7)
    bottom.set_ylabel("rank")
    bottom.grid(axis="y", alpha=0.3)
    _layer_axis(bottom, names)
    fig.tight_layout()
    return fig


def hist_range(reps: list[list[float]], q: float = 98.0) -> tuple[float, float, int]:
    """(low, high, samples above high): the histogram spans min..``q``-th percentile so that a few
    stalls on a shared machine do not squeeze the distribution into one bin; the rest are counted."""
    import numpy as np

    flat = np.concatenate([np.asarray(r, dtype=float) for r in reps])
    lo, hi = float(flat.min()), float(np.percentile(flat, q))
    if hi <= lo:
        hi = float(flat.max()) if flat.max() > lo else lo + 1e-3
    return lo, hi, int((flat > hi).sum())


def latency_figure(entries: list[tuple[str, dict[str, Any]]]) -> Any:
    """One histogram per profiled artifact (repetitions stacked), the report's p10/p50/p90 marked."""
    plt = _plt()
    fig, axes = plt.subplots(len(entries), 1, figsize=(6.4, 2.6 * len(entries) + 0.4), dpi=110, squeeze=False)
    for ax, (label, s) in zip(axes[:, 0], entries, strict=True):
        reps = s["repetitions"]
        lo, hi, beyond = hist_range(reps)
        ax.hist(reps, bins=30, range=(lo, hi), stacked=True, label=[f"repetition {i + 1}" for i in range(len(reps))])
        for key, style, color in (("p10", ":", "black"), ("p50", "-", "black"), ("p90", "--", "dimgray")):
            if s[key] is not None:
                ax.axvline(s[key], color=color, ls=style, lw=1.2, gid=key, label=f"{key} {s[key]:.3g} ms")
        n = sum(map(len, reps))
        kind = "runs" if s["samples_kind"] == "per_run" else "per-repetition means"
        tail = f"; {beyond} slower beyond {hi:.3g} ms not shown (max {max(map(max, reps)):.3g})" if beyond else ""
        ax.set_title(f"{label}: {n} {kind}{tail}", fontsize=9)
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("count")
        ax.legend(fontsize=6, loc="upper right", ncol=2)
    fig.tight_layout()
    return fig


def save_figure(fig: Any, path: Path) -> Path:
    plt = _plt()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return path


# ---------------------------------------------------------------------------- the run's plots


def _attempt(records: list[PlotRecord], section: str, title: str, path: Path, draw: Callable[[], Any]) -> None:
    try:
        out = draw()
        if out is not None and not isinstance(out, Path):
            save_figure(out, path)
        records.append(PlotRecord(section, title, path.name))
    except Exception as exc:  # reported in report.md: a plot must never fail the run
        records.append(PlotRecord(section, title, None, f"{type(exc).__name__}: {exc}"))


def render_run_plots(rep: dict[str, Any], folder: Path) -> list[dict[str, Any]]:
    """Write every plot ``rep`` (a report.json dict) has data for into ``folder``; one record each."""
    folder = Path(folder)
    records: list[PlotRecord] = []
    for a in rep.get("artifacts", []):
        if a.get("layers"):
            name = Path(a["path"]).name
            _attempt(records, f"artifact:{a['target']}", f"per-layer bits in {name}", folder / f"bits_{_slug(a['target'])}.png",
                     lambda a=a, name=name: bits_figure(bits_series(a["layers"]), f"{name} ({a['target']}): bits per weight, per layer"))
    for i, p in enumerate(rep.get("passes", [])):
        summ = p.get("summary") or {}
        if isinstance(summ.get("aiwq"), dict) and summ["aiwq"]:
            _attempt(records, f"pass:{i}", f"AIWQ per layer ({p['name']})", folder / f"{_slug(p['name'])}_aiwq.png",
                     lambda p=p, summ=summ: _aiwq_plot(p["name"], summ, folder))
        if _is_tucker(summ):
            _attempt(records, f"pass:{i}", f"Tucker ranks and MACs per layer ({p['name']})",
                     folder / f"{_slug(p['name'])}{_nth(rep, i)}_ranks_macs.png",
                     lambda p=p, summ=summ: tucker_figure(tucker_series(summ["layers"]),
                                                          f"{p['name']}: MACs (top) and ranks (bottom) per layer"))
    profiles = [p for p in rep.get("profiles", []) if p.get("repetitions") or p.get("latency_ms", {}).get("samples")]
    if profiles:
        _attempt(records, "profiling", "latency histograms", folder / "latency_hist.png",
                 lambda: latency_figure([(f"{Path(p['artifact']).name} ({p.get('runtime', '?')} on {p.get('device', '?')})",
                                          latency_series(p)) for p in profiles]))
    _remove_stale(folder, {r.file for r in records if r.file})
    return [r.to_dict() for r in records]


def _remove_stale(folder: Path, kept: set[str]) -> None:
    """Plots an earlier run in this folder (``--force``) drew and this one did not: they would mislead."""
    import json

    try:
        old = json.loads((folder / "report.json").read_text()).get("plots") or []
    except (OSError, ValueError, AttributeError):
        return
    for rec in old:
        name = rec.get("file") if isinstance(rec, dict) else None
        if name and name not in kept and Path(name).name == name and name.endswith(".png"):
            (folder / name).unlink(missing_ok=True)


def _nth(rep: dict[str, Any], i: int) -> str:
    """'' for a pass whose name is unique in the run, else '_<index>' so that plots do not overwrite each other."""
    names = [p.get("name") for p in rep.get("passes", [])]
    return "" if names.count(names[i]) == 1 else f"_{i}"


def _is_tucker(summ: dict[str, Any]) -> bool:
    layers = summ.get("layers")
    return isinstance(layers, list) and bool(layers) and all(
        isinstance(r, dict) and {"ranks", "full_ranks", "macs_before", "macs_after"} <= r.keys() for r in layers)


def _aiwq_plot(name: str, summ: dict[str, Any], folder: Path) -> Path:
    """The PROFIT pass draws its own AIWQ plot into the run folder; draw it from the summary if it is missing."""
    existing = summ.get("aiwq_plot")
    target = folder / f"{_slug(name)}_aiwq.png"
    if existing and Path(existing).name == target.name and target.is_file():
        return target
    from mobilec.passes.quant.aiwq import plot_aiwq

    s = aiwq_series(summ)
    return plot_aiwq(s["values"], target, title=f"{name}: AIWQ per layer (red/orange = frozen in phases 2-3/3)",
                     frozen=(s["frozen_phases_2_3"], s["frozen_phase_3"]))
