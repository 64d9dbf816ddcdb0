"""Benchmark TAC against binary-all and fp32 on Fashion-MNIST: accuracy from the artifact, size, packed size, time.

Each (model, recipe) runs the whole user flow, ``mobilec.export(recipe, model=..., targets=...)``:
the recipe's passes (training included), lowering, and verification of the artifact in its own
runtime on the full test split. Rows go to ``bench/results/tac.json`` and ``tac.md`` as they finish;
the page's table of all rows and its plots are rendered by :mod:`mobilec.bench_render`
(``mobilec compare --bench bench/results/tac.json`` regenerates them, ``--check`` verifies them).

    python bench/tac.py                                   # vgg_small + mobilenet_v2, fp32 / binary-all / tac
    python bench/tac.py --models vgg_small --recipes tac --targets executorch
    python bench/tac.py --weights vgg_small=/tmp/vgg.pt   # a checkpoint other than the shipped one
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "toolkit") not in sys.path:
    sys.path.insert(0, str(ROOT / "toolkit"))

RESULTS = ROOT / "bench" / "results"
TAC_RECIPES = ("tac", "tac-keep-depthwise")
METHOD = """\
## What was chosen where the paper leaves it open

- **Binary conv weights**: `alpha * sign(W)`, alpha = mean|W| per output channel (XNOR-Net); gradients
  through alpha, and through sign by the straight-through estimator clipped to |W| <= 1.
- **Binary activations** on each binarized layer's *input*: `sign(x - t)` with a per-channel threshold t
  (ReActNet's RSign), initialised at the channel mean over 4 real batches and trained; `sign(0) = +1`
  (also for -0.0); STE gradient `1{|x - t| <= 1}`. A threshold is needed because most conv inputs in
  these models are ReLU/ReLU6 outputs, whose plain sign is +1 almost everywhere. No XNOR-Net K scale:
  the BatchNorm after each conv absorbs it. Zero padding is applied after binarization (border taps
  see 0, as in the float conv and in the int8 kernel's zero point).
- **Kept layers**: the first conv stays float in `tac` (`keep_first_conv = true`); `binary-all`
  binarizes every Conv2d and Linear layer, the first conv and the classifier included.
- **FC pruning**: unstructured magnitude pruning per layer to exactly round(s * n) zeros; cubic ramp
  s_i = s (1 - (1 - i/n)^3) over `prune_steps` steps with fine-tuning between; masks are buffers
  multiplied into the weights on every forward (pruned weights stay exactly zero while training).
- **FC quantization**: symmetric uniform per-output-channel grid with 2^(b-1) - 1 levels per side
  (scale = max|w_row| / (2^(b-1) - 1)), straight-through gradient; chosen over Deep Compression's
  k-means codebook because the integers map one-to-one onto an int8 per-channel kernel.
- **Training**: Adam, lr 4e-3 (the best of 5e-4..8e-3 on mobilenet_v2), no weight decay, warm-up
  (half an epoch) + cosine per phase, loss 0.3 CE + 0.7 soft-CE against the original model (T = 1);
  an "epoch" is `train_images` freshly drawn training images; tac and binary-all see 8 x 20,000
  images (tac: 4 binary + 2 x 1 pruning + 2 quantized FC; binary-all: 8), tac-keep-depthwise the
  tac schedule on 8 x 30,000 (its steps are cheaper).
- **Artifact**: binary layers are int8 convs/linears: inputs `clamp((x - t) 2^100 + 1, -1, 1)`
  quantized at the fixed scale 1/127 (int8 +-127), weights int8 +-127 with one scale per output
  channel, int32 bias, int8 outputs. Before the last 2 epochs the int8 output grids are fixed from
  real batches and the eager model rounds each binary/FC layer's output to its grid exactly where the
  artifact requantizes it (after the folded BatchNorm / fused ReLU, a straight-through gradient), so the
  last epochs train with the artifact's numerics and the eager model is the artifact's exact reference,
  residual sums included (`rounded_outputs`, `unrounded_outputs` per row); in eval mode it also adds
  the int8 kernels' int32 bias rounding (`bias_delta`; the vgg_small rows and mobilenet_v2 fp32 were run
  before that was added, see the note). Thresholds fed by an int8
  output through ReLU / max-pool / flatten are then moved onto that grid's half-steps.
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="vgg_small,mobilenet_v2")
    p.add_argument("--recipes", default="fp32,binary-all,tac")
    p.add_argument("--targets", default="executorch,tflite", help="comma-separated: executorch, tflite (both recipes export both)")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--weights", action="append", default=[], help="MODEL=PATH: a checkpoint instead of the shipped one")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "bench-tac")
    p.add_argument("--out", type=Path, default=RESULTS / "tac.json")
    p.add_argument("--merge", type=Path, nargs="+", default=None,
                   help="combine earlier result files (e.g. one per model) into --out and re-render; runs nothing")
    p.add_argument("--note", default="", help="with --merge: a line about how the parts were run, shown under the command")
    return p.parse_args(argv)


def run_one(model: str, recipe: str, targets: str, data: str, weights: str | None, runs_dir: Path) -> list[dict[str, Any]]:
    from mobilec.api import export  # not mobilec.export: importing the mobilec.export package rebinds that name

    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    out = runs_dir / f"{model}-{Path(recipe).stem}"  # a recipe file's stem: an absolute path must not nest folders
    res = export(recipe, model=model, weights=weights, data=data, targets=targets, out=out,
                         force=True, allow_mismatch=True, show_progress=False,
                         command=f"mobilec export --recipe {recipe} --model {model} --data {data} --target {targets}"
                         + (f" --weights {weights}" if weights else ""))
    wall = time.perf_counter() - t0
    rep = res.report
    summary = rep.passes[-1].summary if rep.passes else {}
    rows = []
    for art in rep.artifacts:
        v = art.get("verification") or {}
        rows.append({
            "model": model,
            "recipe": recipe,
            "target": art["target"],
            "accuracy": v.get("accuracy"),
            "eager_accuracy": rep.accuracy.get("compressed_eager"),
            "original_accuracy": rep.accuracy.get("original"),
            "top1_agreement": v.get("top1_agreement"),
            "status": art.get("status"),
            "size_bytes": art["size_bytes"],
            "packed_weight_bytes": sum(layer["packed_bytes"] for layer in art["layers"]) or None,
            "stored_weight_bytes": sum(layer["stored_bytes"] for layer in art["layers"]) or None,
            "fc_sparsity": summary.get("fc_sparsity", 0.0),
            "train_seconds": summary.get("train_seconds", 0.0),
            "train_images_seen": summary.get("train_images_seen", 0),
            "kept": summary.get("kept", ""),
            "aligned_inputs": summary.get("aligned_inputs"),
            "unaligned_inputs": summary.get("unaligned_inputs"),
            "rounded_outputs": summary.get("rounded_outputs"),
            "unrounded_outputs": summary.get("unrounded_outputs"),
            "wall_seconds": wall,
            "load_average_start": load0,
            "load_average_end": os.getloadavg()[0],
            "notes": art.get("notes", []),
            "machine": rep.machine,
            "command": rep.command,
            "run_dir": str(res.out_dir),
        })
    for fail in rep.failures:
        if not any(r["target"] == fail["target"] for r in rows):
            rows.append({"model": model, "recipe": recipe, "target": fail["target"], "status": "failed: " + fail["error"],
                         "machine": rep.machine, "command": rep.command})
    return rows


def _f(x: Any, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _machine(m: dict[str, Any]) -> str:
    return f"{m.get('cpu')} ({m.get('cores')} cores)"


def render(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = ["# TAC vs binary-all vs fp32 (Fashion-MNIST)", "",
             "- machines: " + "; ".join(sorted({_machine(r.get("machine") or meta["machine"]) for r in rows})
                                        or [_machine(meta["machine"])])
             + ", CPU only, shared with other jobs (each row's machine and load averages are in tac.json)",
             f"- command: `{meta['command']}`",
             *([f"- note: {meta['note']}"] if meta.get("note") else []), "",
             "Accuracy is measured from the artifact in its runtime on the 10,000 test images; eager accuracy is the "
             "compressed torch model; agreement is artifact vs eager top-1. Packed bytes = weights at their information "
             "bits (binary: 1 bit + per-channel scale; pruned FC: smallest of CSR / bitmask / dense k-bit).", "",
             "| model | recipe | target | accuracy | eager | agreement | size | packed weights | FC sparsity | train s | images | status |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['recipe']} | {r['target']} | {_f(r.get('accuracy'), '.4f')} | {_f(r.get('eager_accuracy'), '.4f')} "
            f"| {_f(r.get('top1_agreement'), '.4f')} | {_f(r.get('size_bytes'), ',')} | {_f(r.get('packed_weight_bytes'), ',')} "
            f"| {_f(r.get('fc_sparsity'), '.3f')} | {_f(r.get('train_seconds'), '.0f')} | {_f(r.get('train_images_seen'), ',')} "
            f"| {r.get('status', '-')} |")
    lines += ["", "## Goals (accuracy from the artifacts)", ""]
    by = {(r["model"], r["recipe"], r["target"]): r for r in rows if r.get("accuracy") is not None}
    for model, target in dict.fromkeys((r["model"], r["target"]) for r in rows):
        ball, fp = (by.get((model, k, target)) for k in ("binary-all", "fp32"))
        for name in TAC_RECIPES:  # tac, and the recipe option that keeps depthwise convs float
            tac = by.get((model, name, target))
            if tac and ball:
                d = 100 * (tac["accuracy"] - ball["accuracy"])
                lines.append(f"- {model} / {target}: {name} - binary-all = {d:+.2f} points (goal >= +2): "
                             f"{'met' if d >= 2 else 'NOT met'}")
            if tac and fp:
                d = 100 * (fp["accuracy"] - tac["accuracy"])
                lines.append(f"- {model} / {target}: fp32 - {name} = {d:.2f} points (goal <= 4): {'met' if d <= 4 else 'NOT met'}")
        # bench recipe files (probes): measured against the same fp32 goal, but not the recipes
        probes = [r for r in rows if (r["model"], r["target"]) == (model, target) and r["recipe"].endswith(".toml")]
        for r in probes if fp is not None else ():
            d = 100 * (fp["accuracy"] - r["accuracy"])
            lines.append(f"- {model} / {target}: fp32 - {r['recipe']} = {d:.2f} points (a bench probe, "
                         f"{r['train_images_seen']:,} images; under 4: {'yes' if d <= 4 else 'no'})")
    for r in rows:
        if r.get("top1_agreement") is not None and r["top1_agreement"] < 0.995:
            lines.append(f"- {r['model']} / {r['recipe']} / {r['target']}: artifact vs eager agreement "
                         f"{r['top1_agreement']:.4f} < 0.995 (verification failed; kept with --allow-mismatch)")
    lines += ["", METHOD, "## Notes", "",
              "- No runtime used here has xnor-popcount kernels (Larq Compute Engine has them, for Keras models only): "
              "binary layers run as int8 kernels and store one byte per weight, so the artifact shows no 1-bit speed-up "
              "and its size is the int8 size; the packed column is what 1-bit / sparse storage would take.",
              "- Per-layer tables (information / stored / executed bits) are in each run's report.md under the run dir.",
              "- train_seconds is wall-clock on shared CPUs; compare rows only with their load averages in mind."]
    notes = sorted({f"{r['model']} {n}" for r in rows for n in r.get("notes", []) if "pruned (" in n})
    if notes:
        lines += ["", "### Pruned FC storage (from the artifacts)", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from mobilec.io import write_json_atomic
    from mobilec.report import machine_description

    if args.merge:
        parts = [json.loads(p.read_text()) for p in args.merge]
        rows = [r for part in parts for r in part["rows"]]
        meta = {**parts[0]["meta"], "command": " && ".join(part["meta"]["command"] for part in parts),
                "merged_from": [str(p) for p in args.merge], **({"note": args.note} if args.note else {})}
        write_json_atomic(args.out, {"meta": meta, "rows": rows})
        write_page(args.out, rows, meta)
        return 0
    torch.set_num_threads(args.threads)
    weights = dict(w.split("=", 1) for w in args.weights)
    meta = {"machine": machine_description(), "command": "python bench/tac.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
            "threads": args.threads, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    rows: list[dict[str, Any]] = []
    for model in args.models.split(","):
        for recipe in args.recipes.split(","):
            print(f"== {model} / {recipe}", flush=True)
            rows += run_one(model, recipe, args.targets, args.data, weights.get(model), args.runs_dir)
            for r in rows[-len(args.targets.split(",")):]:
                print({k: r.get(k) for k in ("target", "accuracy", "eager_accuracy", "top1_agreement", "size_bytes",
                                             "packed_weight_bytes", "train_seconds", "status")}, flush=True)
            write_json_atomic(args.out, {"meta": meta, "rows": rows})
            write_page(args.out, rows, meta)
    return 0


def write_page(out: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """The prose page, then the all-rows table and plots spliced in by mobilec.bench_render."""
    from mobilec.bench_render import regenerate_command, render_file
    from mobilec.io import write_text_atomic

    write_text_atomic(out.with_suffix(".md"), render(rows, meta))
    shown = out.relative_to(ROOT) if out.is_absolute() and out.is_relative_to(ROOT) else out
    render_file(out, command=regenerate_command(shown, {}, None))


if __name__ == "__main__":
    raise SystemExit(main())
