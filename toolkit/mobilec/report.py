"""RunReport: the one record of a run — passes, layers, artifacts, verification, profiling."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mobilec.io import write_json_atomic, write_text_atomic

#: CPU features that pick the int8/fp32 kernels of XNNPACK and LiteRT (the same file can run 2x apart on
#: two hosts that both call themselves "AMD EPYC": with and without AVX-512 VNNI)
SIMD_FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm", "sve")


def machine_description(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    import os

    fields: dict[str, str] = {}  # the first processor's entries
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    cpu = fields.get("model name") or platform.processor() or platform.machine()
    flags = set((fields.get("flags") or fields.get("Features") or "").split())  # x86 / ARM
    return {"cpu": cpu, "cores": os.cpu_count(), "simd": [f for f in SIMD_FEATURES if f in flags],
            "system": platform.system(), "python": platform.python_version()}


@dataclass
class PassRecord:
    name: str
    params: dict[str, Any]
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)  # what the pass measured (accuracy, ranks, ...)


@dataclass
class RunReport:
    """Append-only record of a run; ``write(folder)`` emits report.json and report.md."""

    recipe: str
    model: dict[str, Any]
    data: dict[str, Any]
    started: float = field(default_factory=time.time)
    machine: dict[str, Any] = field(default_factory=machine_description)
    passes: list[PassRecord] = field(default_factory=list)
    accuracy: dict[str, float] = field(default_factory=dict)  # eager accuracies: original, compressed
    artifacts: list[dict[str, Any]] = field(default_factory=list)  # Artifact.to_dict + verification + status
    failures: list[dict[str, str]] = field(default_factory=list)  # targets that could not be exported
    profiles: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    plots: list[dict[str, Any]] = field(default_factory=list)  # plots.PlotRecord dicts: file or error
    command: str = ""
    seed: int = 0  # the run's seed (data order, initialisations, hold-out splits)

    def add_pass(self, name: str, params: dict[str, Any], seconds: float, **summary: Any) -> PassRecord:
        rec = PassRecord(name=name, params=params, seconds=seconds, summary=dict(summary))
        self.passes.append(rec)
        return rec

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "command": self.command,
            "seed": self.seed,
            "model": self.model,
            "data": self.data,
            "machine": self.machine,
            "started": self.started,
            "passes": [p.__dict__ for p in self.passes],
            "accuracy": self.accuracy,
            "artifacts": self.artifacts,
            "failures": self.failures,
            "profiles": self.profiles,
            "notes": self.notes,
            "plots": self.plots,
        }

    def write(self, folder: Path, *, plots: bool = True) -> None:
        """report.json, report.md and (``plots``) the run's PNG plots, all in ``folder``."""
        if plots:
            from mobilec.plots import render_run_plots

            self.plots = render_run_plots(self.to_dict(), Path(folder))
        write_json_atomic(folder / "report.json", self.to_dict())
        write_text_atomic(folder / "report.md", render_markdown(self.to_dict()))


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def _fmt(x: Any, spec: str = ".4f") -> str:
    if x is None:
        return "-"
    if isinstance(x, int | float) and not isinstance(x, bool):
        return format(x, spec)
    return str(x)


def _plot_lines(rep: dict[str, Any], section: str) -> list[str]:
    """Markdown for the plots of one report section: the image, or why it could not be drawn."""
    lines = []
    for p in rep.get("plots") or []:
        if p.get("section") != section:
            continue
        if p.get("file"):
            lines += [f"![{p['title']}]({p['file']})", ""]
        else:
            lines += [f"- plot '{p['title']}' could not be drawn: {p.get('error')}", ""]
    return lines


def _pass_detail_lines(p: dict[str, Any]) -> list[str]:
    """A pass's own detail tables (its class's ``summary_markdown(summary)``, e.g. tucker's per-layer table)."""
    from mobilec.errors import MobilecError
    from mobilec.registry import get_pass

    try:
        render = getattr(get_pass(p["name"]), "summary_markdown", None)
    except MobilecError:  # a report written by a pass this install does not know
        return []
    lines = render(p["summary"]) if render else []
    return [f"### {p['name']}: per layer", "", *lines, ""] if lines else []


def render_markdown(rep: dict[str, Any]) -> str:
    """Human-readable report; every figure comes from ``rep`` (report.json)."""
    lines = [f"# mobilec run: recipe `{rep['recipe']}`", ""]
    m = rep["model"]
    lines.append(f"- model: `{m.get('name')}` ({m.get('params', '?')} params, source {m.get('source', '?')})")
    lines.append(f"- data: `{rep['data'].get('name')}` (test split: {rep['data'].get('n_test', '?')} samples)")
    mach = rep["machine"]
    lines.append(f"- machine: {mach.get('cpu')} ({mach.get('cores')} cores)")
    if rep.get("command"):
        lines.append(f"- command: `{rep['command']}`")
    if "seed" in rep:
        lines.append(f"- seed: {rep['seed']}")
    acc = rep.get("accuracy", {})
    if acc:
        lines.append("- eager accuracy: " + ", ".join(f"{k} {v:.4f}" for k, v in acc.items()))
    lines.append("")
    if rep["passes"]:
        lines += ["## Passes", "", "| pass | seconds | summary |", "|---|---:|---|"]
        for p in rep["passes"]:
            summ = ", ".join(f"{k}={_fmt(v)}" for k, v in p["summary"].items() if not isinstance(v, list | dict))
            lines.append(f"| {p['name']} | {p['seconds']:.1f} | {summ} |")
        lines.append("")
        pass_notes = [f"- {p['name']}: {n}" for p in rep["passes"] if isinstance(p["summary"].get("notes"), list)
                      for n in p["summary"]["notes"]]
        lines += [*pass_notes, ""] if pass_notes else []
        for i, p in enumerate(rep["passes"]):  # each pass's detail table, then its plots
            lines += _pass_detail_lines(p) + _plot_lines(rep, f"pass:{i}")
    if rep["artifacts"]:
        lines += [
            "## Artifacts",
            "",
            "| target | file | size | accuracy (artifact) | top-1 agreement | max abs err | SNR dB | status |",
            "|---|---|---:|---:|---:|---:|---:|---|",
        ]
        for a in rep["artifacts"]:
            v = a.get("verification") or {}
            lines.append(
                f"| {a['target']} | `{Path(a['path']).name}` | {_fmt_bytes(a['size_bytes'])} | {_fmt(v.get('accuracy'))} "
                f"| {_fmt(v.get('top1_agreement'))} | {_fmt(v.get('max_abs_error'), '.3g')} | {_fmt(v.get('snr_db'), '.1f')} "
                f"| {a.get('status', '-')} |"
            )
        lines.append("")
        for a in rep["artifacts"]:
            d = a.get("delegation") or {}
            if d.get("total") is not None:
                nd = d.get("not_delegated") or {}
                tail = "; not delegated: " + ", ".join(f"`{k}` x{v}" for k, v in nd.items()) if nd else " (all delegated)"
                lines.append(
                    f"- {a['target']}: {d.get('delegated')}/{d.get('total')} ops delegated to {d.get('backend', 'the delegate')}{tail}"
                )
            elif d.get("xnnpack_partitions") is not None:  # LiteRT: the interpreter's delegate, counted in partitions
                lines.append(f"- {a['target']}: the XNNPACK delegate takes the graph in {d['xnnpack_partitions']} "
                             f"partition(s) ({d.get('backend', 'LiteRT')})")
            for note in a.get("notes", []):
                lines.append(f"- {a['target']}: {note}")
        lines.append("")
        for a in rep["artifacts"]:
            if not a.get("layers"):
                continue
            lines += [
                f"### Layers in `{Path(a['path']).name}` ({a['target']})",
                "",
                "| layer | kind | params | information | stored | executed | stored bytes | bit-packed bytes |",
                "|---|---|---:|---|---|---|---:|---:|",
            ]
            for layer in a["layers"]:
                lines.append(
                    f"| {layer['name']} | {layer['kind']} | {layer['params']} | {_fmt(layer['info_bits'], 'g')} bits "
                    f"| {layer['stored']} | {layer['executed']} | {layer['stored_bytes']} | {layer['packed_bytes']} |"
                )
            lines.append("")
            lines += _plot_lines(rep, f"artifact:{a['target']}")
    if rep["failures"]:
        lines += ["## Failed targets", ""]
        lines += [f"- {f['target']}: {f['error']}" for f in rep["failures"]]
        lines.append("")
    if rep["profiles"]:
        lines += [
            "## Profiling",
            "",
            "| artifact | device | p10 ms | p50 ms | p90 ms | trimmed mean ms | first run ms | load ms | peak memory |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for p in rep["profiles"]:
            lat = p.get("latency_ms", {})
            lines.append(
                f"| `{Path(p['artifact']).name}` | {p.get('device')} | {_fmt(lat.get('p10'), '.3f')} | {_fmt(lat.get('p50'), '.3f')} "
                f"| {_fmt(lat.get('p90'), '.3f')} | {_fmt(lat.get('trimmed_mean'), '.3f')} | {_fmt(p.get('first_run_ms'), '.3f')} "
                f"| {_fmt(p.get('load_ms'), '.1f')} | {_fmt_bytes(p.get('peak_memory_bytes'))} |"
            )
        lines.append("")
        lines += _plot_lines(rep, "profiling")
    if rep["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in rep["notes"]] + [""]
    return "\n".join(lines)


def delegation_cell(d: dict[str, Any] | None) -> str:
    """A short delegation summary: ``delegated/total`` ops (ExecuTorch), ``N partition(s)`` (LiteRT), or ``-``."""
    d = d or {}
    if d.get("total") is not None:
        return f"{d.get('delegated')}/{d['total']}"
    if d.get("xnnpack_partitions") is not None:
        return f"{d['xnnpack_partitions']} partition(s)"
    return "-"
