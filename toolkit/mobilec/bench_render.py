"""Render a benchmark's JSON (bench/results/NAME.json, a ``rows`` list) as a Markdown table and Pareto plots.

The table's columns are the row keys that are present, in a fixed order (identity, quality,
size, latency, the rest); keys with the same value in every row move to one line above the
table, nested values (dicts, lists of dicts) are left to the JSON. Plots: metric vs size and
metric vs latency, one marker per target, the Pareto front drawn, per model/data/device group.

By default the rendering replaces a marked block in NAME.md (appended once if the page has
none), so the prose a benchmark script writes stays and rerunning is idempotent::

    mobilec compare --bench bench/results/tucker.json
    python -m mobilec.bench_render bench/results/tucker.json      # the same

>>> order_columns(["latency_ms_p50", "status", "accuracy", "recipe", "size_bytes", "model"])
['model', 'recipe', 'accuracy', 'size_bytes', 'latency_ms_p50', 'status']
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mobilec.compare import plot_tradeoff
from mobilec.errors import MobilecError, one_line
from mobilec.io import write_text_atomic

BEGIN = "<!-- mobilec-bench-render:begin (generated from the JSON; edits here are overwritten) -->"
END = "<!-- mobilec-bench-render:end -->"
IDENTITY = ("model", "data", "recipe", "stage", "target", "device")
GROUP_DEFAULT = ("model", "data", "device")
_QUALITY = re.compile(r"acc|recall|ndcg|precision|top1|top_1|map@|auc|f1|snr|agreement|error", re.I)
_SIZE = re.compile(r"bytes|params|macs|flops|size|bits|sparsity", re.I)
_LATENCY = re.compile(r"latency|_ms|ms_|seconds|speed|ratio|time", re.I)
_METRIC_DEFAULTS = ("accuracy", "top1_accuracy", "recall@20", "ndcg@20")
_SIZE_DEFAULTS = ("size_bytes", "artifact_size_bytes", "packed_weight_bytes", "embedding_bytes")
_LATENCY_DEFAULTS = ("latency_ms_p50", "p50_ms", "wall_ms_p50")
MAX_CELL = 120


def order_columns(keys: Sequence[str], text_keys: Sequence[str] = ()) -> list[str]:
    """Identity keys, then quality metrics, size, latency/time, then everything else (first-seen order);
    ``text_keys`` (columns holding words, not numbers) go with everything else."""

    def rank(item: tuple[int, str]) -> tuple[int, int]:
        i, k = item
        if k in IDENTITY:
            return (0, IDENTITY.index(k))
        if k in ("status", "error"):
            return (5, i)
        if k in text_keys:
            return (4, i)
        for band, pattern in ((1, _QUALITY), (2, _SIZE), (3, _LATENCY)):
            if pattern.search(k):
                return (band, i)
        return (4, i)

    return [k for _, k in sorted(enumerate(dict.fromkeys(keys)), key=rank)]


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, str | int | float | bool)


def _is_cell(v: Any) -> bool:
    """A value the table can show: a scalar, or a short list of scalars."""
    return _is_scalar(v) or (isinstance(v, list) and all(_is_scalar(x) for x in v))


def float_style(values: list[Any]) -> str:
    """How a column writes its floats: ``fraction`` (all within [-1, 1]: 4 decimals), ``whole`` (all
    integral: no decimals), else ``mixed`` (by magnitude)."""
    flat = [x for v in values for x in (v if isinstance(v, list) else [v])]
    floats = [x for x in flat if isinstance(x, float) and x == x]
    if floats and all(abs(x) <= 1 for x in floats):
        return "fraction"
    if floats and all(x.is_integer() for x in floats):
        return "whole"
    return "mixed"


def fmt_cell(key: str, v: Any, style: str = "mixed", max_len: int = MAX_CELL) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, list):
        return ", ".join(fmt_cell(key, x, style, max_len) for x in v) or "-"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v != v:  # NaN
            return "nan"
        if style == "fraction":
            return f"{v:.4f}"
        if style == "whole" or abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.4f}" if abs(v) < 1 else f"{v:.3f}"
    text = str(v).replace("|", "\\|").replace("\n", " ").strip()
    if not text:
        return "-"
    return text if len(text) <= max_len else text[: max_len - 1] + "…"


@dataclass
class Table:
    """What the renderer shows: the columns, the keys shared by every row, the nested keys left out."""

    columns: list[str]
    constant: dict[str, Any] = field(default_factory=dict)
    nested: list[str] = field(default_factory=list)


def plan_table(rows: list[dict[str, Any]], columns: Sequence[str] | None = None) -> Table:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    nested = [k for k in keys if not all(_is_cell(r.get(k)) for r in rows)]
    shown = [k for k in keys if k not in nested and any(r.get(k) is not None for r in rows)]
    constant: dict[str, Any] = {}
    if columns:
        missing = [c for c in columns if c not in keys]
        if missing:
            raise MobilecError(f"no row has column(s) {', '.join(missing)}", hint=f"the rows have: {', '.join(keys)}")
        return Table(list(columns), {}, nested)
    if len(rows) > 1:
        for k in shown:
            values = [json.dumps(r.get(k), sort_keys=True) for r in rows]
            if len(set(values)) == 1 and all(k in r for r in rows) and k not in ("recipe", "accuracy"):
                constant[k] = rows[0][k]
    text = [k for k in shown if not _numeric(rows, k)]
    return Table(order_columns([k for k in shown if k not in constant], text), constant, nested)


def _numeric(rows: list[dict[str, Any]], key: str) -> bool:
    values = [r.get(key) for r in rows if r.get(key) is not None]
    return bool(values) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def render_table(rows: list[dict[str, Any]], table: Table) -> list[str]:
    align = ["---:" if _numeric(rows, c) else "---" for c in table.columns]  # numbers right-aligned
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "|".join(align) + "|"]
    styles = {c: float_style([r.get(c) for r in rows]) for c in table.columns}  # one number format per column
    for r in rows:
        lines.append("| " + " | ".join(fmt_cell(c, r.get(c), styles[c]) for c in table.columns) + " |")
    return lines


def pick_key(rows: list[dict[str, Any]], given: str | None, defaults: Sequence[str], what: str) -> str | None:
    """``given`` if rows have it (else an error), or the first of ``defaults`` some row has as a number."""
    numeric = {k for r in rows for k, v in r.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    if given:
        if given not in numeric:
            raise MobilecError(f"no row has a number in {given!r} ({what})",
                               hint=f"numeric columns: {', '.join(sorted(numeric)) or '(none)'}")
        return given
    return next((k for k in defaults if k in numeric), None)


def point_labeller(rows: list[dict[str, Any]]) -> Any:
    """Names for plotted rows: the recipe (else the model), with the stage only where one recipe has several."""

    def base(r: dict[str, Any]) -> str:
        return str(r["recipe"] if r.get("recipe") is not None else r.get("model", "?"))

    stages: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in rows:
        stages[(base(r), str(r.get("target")))].add(str(r.get("stage")))

    def label(r: dict[str, Any]) -> str:
        ambiguous = len(stages[(base(r), str(r.get("target")))]) > 1
        return f"{base(r)} ({r['stage']})" if ambiguous and r.get("stage") is not None else base(r)

    return label


@dataclass
class Rendered:
    markdown: list[str]
    files: list[Path]


def render_bench(result: dict[str, Any], name: str, out_dir: Path, *, metric: str | None = None,
                 size_key: str | None = None, latency_key: str | None = None, group_by: Sequence[str] | None = None,
                 columns: Sequence[str] | None = None, command: str = "") -> Rendered:
    """The table(s) and plots of one benchmark result; plots are written into ``out_dir``."""
    rows = result.get("rows")
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise MobilecError(f"{name}: the JSON has no non-empty 'rows' list of objects", hint="give a bench/results/*.json file")
    metric = pick_key(rows, metric, _METRIC_DEFAULTS, "--metric")
    size_key = pick_key(rows, size_key, _SIZE_DEFAULTS, "--size-key")
    latency_key = pick_key(rows, latency_key, _LATENCY_DEFAULTS, "--latency-key")
    gkeys = [k for k in (GROUP_DEFAULT if group_by is None else group_by) if any(k in r for r in rows)]
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[tuple(str(r.get(k, "-")) for k in gkeys)].append(r)

    md = [BEGIN, "", f"## All rows, rendered from `{name}.json`", ""]
    if command:
        md += [f"Regenerate: `{command}`", ""]
    meta = {k: v for k, v in result.items() if k in ("benchmark", "command", "machine") and _is_scalar(v)}
    meta.update({k: v for k, v in (result.get("meta") or {}).items() if k == "command" and _is_scalar(v)})
    md += [f"- {k}: {fmt_cell(k, v, max_len=10_000)}" for k, v in meta.items()]  # the header is never cut
    if len(groups) > 1:
        md += [f"- {len(groups)} groups by {', '.join(gkeys)}; each has its own table and plots (never mixed)"]
    md.append("")
    files: list[Path] = []
    for gi, (key, grows) in enumerate(sorted(groups.items())):
        table = plan_table(grows, columns)
        if len(groups) > 1:
            md += ["### " + ", ".join(f"{k} {v}" for k, v in zip(gkeys, key, strict=True)), ""]
        said = {k: v for k, v in table.constant.items() if meta.get(k) != v}  # not what the header already says
        if said:
            md += ["Every row: " + "; ".join(f"{k} = {fmt_cell(k, v)}" for k, v in said.items()), ""]
        md += [*render_table(grows, table), ""]
        if table.nested:
            md += [f"Nested fields left to the JSON: {', '.join(table.nested)}.", ""]
        lines, pngs = _plots(grows, name, out_dir, gi if len(groups) > 1 else None, key, metric, size_key, latency_key)
        md += lines
        files += pngs
    md.append(END)
    return Rendered(md, files)


def _plots(rows: list[dict[str, Any]], name: str, out_dir: Path, group: int | None, key: tuple[str, ...],
           metric: str | None, size_key: str | None, latency_key: str | None) -> tuple[list[str], list[Path]]:
    if metric is None:
        return [f"No plots: no row has any of {', '.join(_METRIC_DEFAULTS)} (choose one with --metric).", ""], []
    lines: list[str] = []
    files: list[Path] = []
    is_fraction = all(0 <= r[metric] <= 1 for r in rows if isinstance(r.get(metric), int | float))
    metric_label = f"{metric} (%)" if is_fraction else metric
    title = f"{name}: " + (" / ".join(key) if key else "all rows")
    for cost, what in ((size_key, "size"), (latency_key, "latency")):
        if cost is None:
            lines += [f"No {metric}-vs-{what} plot: no numeric {what} column (choose one with --{what}-key).", ""]
            continue
        png = out_dir / f"{name}_{_slug(metric)}_vs_{what}{'' if group is None else f'-{group + 1}'}.png"
        label = f"{cost} (KB)" if cost.endswith("bytes") else cost  # plot_tradeoff shows bytes as KB
        if plot_tradeoff(rows, cost, label, title, png, metric=metric, metric_label=metric_label,
                         metric_scale=100.0 if is_fraction else 1.0, point_label=point_labeller(rows)):
            lines += [f"![{metric} vs {cost}]({png.name})", ""]
            files.append(png)
        else:
            lines += [f"No {metric}-vs-{what} plot for this group: no row has both {metric} and {cost}.", ""]
    return lines, files


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")


def splice(page: str, block: str) -> str:
    """Replace the marked block in ``page`` (or append it once)."""
    if BEGIN in page and END in page:
        head, rest = page.split(BEGIN, 1)
        return head + block + rest.split(END, 1)[1]
    return page.rstrip("\n") + "\n\n" + block + "\n"


def render_file(json_path: Path, *, out: Path | None = None, command: str = "", check: bool = False,
                **options: Any) -> list[Path]:
    """Render ``json_path`` into the marked block of NAME.md beside it (or in ``out``); returns the files written.

    ``check``: write nothing; raise if NAME.md's block differs from what the JSON renders to (plots not compared).
    """
    json_path = Path(json_path)
    if not json_path.is_file():
        raise MobilecError(f"{json_path} does not exist", hint="give a bench/results/*.json file")
    try:
        result = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MobilecError(f"{json_path} is not valid JSON: {exc}", hint="re-run the benchmark that wrote it") from None
    if not isinstance(result, dict):
        raise MobilecError(f"{json_path} holds a {type(result).__name__}, not an object with 'rows'", hint="give a bench JSON")
    name = json_path.stem
    out_dir = Path(out) if out is not None else json_path.parent
    md_path = out_dir / f"{name}.md"
    if check:
        with tempfile.TemporaryDirectory() as tmp:
            block = "\n".join(render_bench(result, name, Path(tmp), command=command, **options).markdown)
        page = md_path.read_text() if md_path.is_file() else ""
        if BEGIN not in page or splice(page, block) != page:
            why = "has no rendered block" if BEGIN not in page else "is out of date with the JSON"
            raise MobilecError(f"{md_path} {why}", hint=f"run: {command or 'mobilec compare --bench ' + str(json_path)}")
        return [md_path]
    out_dir.mkdir(parents=True, exist_ok=True)
    rendered = render_bench(result, name, out_dir, command=command, **options)
    block = "\n".join(rendered.markdown)
    # an existing page keeps its prose: only the marked block is replaced (appended the first time)
    page = splice(md_path.read_text(), block) if md_path.is_file() else f"# Benchmark `{name}`\n\n{block}\n"
    write_text_atomic(md_path, page)
    return [md_path, *rendered.files]


def regenerate_command(json_path: Path, options: dict[str, Any], out: Path | None) -> str:
    parts = ["mobilec", "compare", "--bench", str(json_path)]
    for opt, key in (("--metric", "metric"), ("--size-key", "size_key"), ("--latency-key", "latency_key")):
        if options.get(key):
            parts += [opt, options[key]]
    if options.get("group_by") is not None:
        parts += ["--group-by", ",".join(options["group_by"])]
    if options.get("columns"):
        parts += ["--columns", ",".join(options["columns"])]
    if out is not None:
        parts += ["--out", str(out)]
    return " ".join(shlex.quote(p) for p in parts)


def split_list(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mobilec.bench_render", description=__doc__.split("\n\n")[0])
    ap.add_argument("json", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="write NAME.md and plots here (default: into NAME.md's block)")
    ap.add_argument("--metric", default=None)
    ap.add_argument("--size-key", default=None)
    ap.add_argument("--latency-key", default=None)
    ap.add_argument("--group-by", default=None, help="comma-separated row keys (default model,data,device; '' = one group)")
    ap.add_argument("--columns", default=None, help="comma-separated columns (default: every key present)")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 2 if NAME.md's block is out of date")
    args = ap.parse_args(argv)
    try:
        for path in args.json:
            for f in render_bench_cli(path, out=args.out, metric=args.metric, size_key=args.size_key,
                                      latency_key=args.latency_key, group_by=args.group_by, columns=args.columns,
                                      check=args.check):
                print(f)
    except MobilecError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    return 0


def render_bench_cli(path: Path, *, out: Path | None, metric: str | None, size_key: str | None, latency_key: str | None,
                     group_by: str | None, columns: str | None, check: bool = False) -> list[Path]:
    """The shared entry of ``mobilec compare --bench`` and ``python -m mobilec.bench_render``."""
    options = {"metric": metric, "size_key": size_key, "latency_key": latency_key, "group_by": split_list(group_by),
               "columns": split_list(columns)}
    return render_file(path, out=out, command=regenerate_command(path, options, out), check=check, **options)


if __name__ == "__main__":
    raise SystemExit(main())
