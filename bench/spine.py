"""Benchmark of the pipeline spine: fp32 vs int8 PTQ of the default model on every target.

Writes bench/results/spine.json and spine.md. Accuracy comes from running each artifact in its
own runtime on the full Fashion-MNIST test split; latency ratios compare int8 with fp32 in the
same runtime, measured in this run, interleaved so machine noise hits both alike.

    .venv/bin/python bench/spine.py [--runs 200]
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import mobilec
from mobilec.io import write_json_atomic, write_text_atomic
from mobilec.report import machine_description

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
RECIPES = ("fp32", "int8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--repetitions", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    command = "python bench/spine.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])

    runs = {r: mobilec.export(r, out=ROOT / "runs" / f"spine-{r}", force=True, command=command) for r in RECIPES}
    rows = []
    for target in ("executorch", "tflite", "onnx"):
        arts = {r: next((a for a in runs[r].report.artifacts if a["target"] == target), None) for r in RECIPES}
        lat = {}
        for r in RECIPES:  # profile fp32 and int8 back to back, same settings
            if arts[r] is not None:
                m = mobilec.profile(
                    arts[r]["path"],
                    device="host",
                    runs=args.runs,
                    warmup=args.warmup,
                    repetitions=args.repetitions,
                    threads=args.threads,
                )
                lat[r] = m.to_dict()
        for r in RECIPES:
            a = arts[r]
            if a is None:
                fail = next((f["error"] for f in runs[r].report.failures if f["target"] == target), "not exported")
                rows.append({"recipe": r, "target": target, "error": fail})
                continue
            v = a["verification"]
            p50 = lat[r]["latency_ms"]["p50"]
            fp32_p50 = lat.get("fp32", {}).get("latency_ms", {}).get("p50")
            fp32_art = arts["fp32"]
            rows.append(
                {
                    "model": runs[r].report.model.get("name"),
                    "recipe": r,
                    "target": target,
                    "accuracy": v["accuracy"],
                    "eager_accuracy": runs[r].report.accuracy.get("compressed_eager"),
                    "top1_agreement": v["top1_agreement"],
                    "max_abs_error": v["max_abs_error"],
                    "size_bytes": a["size_bytes"],
                    "size_ratio_vs_fp32": fp32_art["size_bytes"] / a["size_bytes"] if fp32_art else None,
                    "accuracy_drop_vs_fp32": (fp32_art["verification"]["accuracy"] - v["accuracy"]) if fp32_art else None,
                    "latency_ms_p50": p50,
                    "latency_ms_p10_p90": [lat[r]["latency_ms"]["p10"], lat[r]["latency_ms"]["p90"]],
                    "latency_ratio_vs_fp32": (fp32_p50 / p50) if fp32_p50 else None,
                    "delegation": a.get("delegation"),
                    "status": a.get("status"),
                    "threads": args.threads,
                    "machine": machine_description(),
                    "command": command,
                }
            )
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": "spine", "machine": machine_description(), "command": command, "rows": rows}
    write_json_atomic(RESULTS / "spine.json", doc)
    write_text_atomic(RESULTS / "spine.md", render(rows))
    print(render(rows))


def render(rows: list[dict]) -> str:
    lines = [
        "# Spine benchmark: fp32 vs int8 PTQ of the default model",
        "",
        "Accuracy is measured by running each artifact on the full 10k Fashion-MNIST test split.",
        "latency ratio = fp32 p50 / int8 p50 in the same runtime, same run (higher is faster).",
        "",
        "| recipe | target | accuracy | drop vs fp32 | top-1 agreement | size | size ratio | p50 ms | latency ratio | delegated |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['recipe']} | {r['target']} | failed: {r['error']} | | | | | | | |")
            continue
        d = r.get("delegation") or {}
        deleg = f"{d.get('delegated')}/{d.get('total')}" if d else "-"
        lines.append(
            f"| {r['recipe']} | {r['target']} | {r['accuracy']:.4f} | {r['accuracy_drop_vs_fp32'] * 100:+.2f} pt "
            f"| {r['top1_agreement']:.4f} | {r['size_bytes'] / 1024:.0f} KB | {r['size_ratio_vs_fp32']:.2f}x "
            f"| {r['latency_ms_p50']:.3f} | {r['latency_ratio_vs_fp32']:.2f}x | {deleg} |"
        )
    m = rows[0].get("machine", {}) if rows else {}
    lines += ["", f"Machine: {m.get('cpu')} ({m.get('cores')} cores); command: `{rows[0].get('command') if rows else ''}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
