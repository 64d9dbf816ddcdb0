"""Terminal summaries (rich) of runs and measurements."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from mobilec.report import delegation_cell


def _size(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024:.1f} KB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.2f} MB"


def print_run_summary(result: Any, console: Console | None = None) -> None:
    console = console or Console()
    rep = result.report
    acc = rep.accuracy
    console.print(
        f"[bold]recipe[/] {rep.recipe}  [bold]model[/] {rep.model.get('name')}  [bold]data[/] {rep.data.get('name')}  "
        f"eager accuracy: original {acc.get('original', float('nan')):.4f}, compressed {acc.get('compressed_eager', float('nan')):.4f}"
    )
    table = Table(title=f"artifacts in {result.out_dir}")
    for col in ("target", "file", "size", "accuracy", "top-1 agree", "max |err|", "SNR dB", "delegated", "status"):
        table.add_column(col)
    for a in rep.artifacts:
        v = a.get("verification") or {}
        deleg = delegation_cell(a.get("delegation"))
        table.add_row(
            a["target"],
            Path(a["path"]).name,
            _size(a["size_bytes"]),
            _num(v.get("accuracy")),
            _num(v.get("top1_agreement")),
            _num(v.get("max_abs_error"), ".3g"),
            _num(v.get("snr_db"), ".1f"),
            deleg,
            a.get("status", "-"),
        )
    console.print(table)
    for f in rep.failures:
        console.print(f"[red]failed[/] {f['target']}: {f['error']}")
    console.print(f"report: {result.out_dir / 'report.md'}")


def _num(x: Any, spec: str = ".4f") -> str:
    if x is None:
        return "-"
    return format(x, spec) if isinstance(x, int | float) else str(x)


def print_measurement(m: Any, console: Console | None = None) -> None:
    console = console or Console()
    d = m.to_dict() if hasattr(m, "to_dict") else dict(m)
    lat = d.get("latency_ms", {})
    console.print(f"[bold]{Path(str(d.get('artifact'))).name}[/] on {d.get('device')} ({d.get('runtime')})")
    table = Table()
    for col in ("p10 ms", "p50 ms", "p90 ms", "trimmed mean ms", "first run ms", "load ms", "peak memory"):
        table.add_column(col)
    table.add_row(
        _num(lat.get("p10"), ".3f"),
        _num(lat.get("p50"), ".3f"),
        _num(lat.get("p90"), ".3f"),
        _num(lat.get("trimmed_mean"), ".3f"),
        _num(d.get("first_run_ms"), ".3f"),
        _num(d.get("load_ms"), ".1f"),
        _size(d.get("peak_memory_bytes")),
    )
    console.print(table)
    energy = getattr(m, "energy", None)
    if energy is not None:
        console.print(f"energy: {energy.summary()}")
    for note in d.get("notes", []):
        console.print(f"note: {note}")
