"""Per-layer sensitivity to 4-bit activations, without training (where does the W8A4 gap sit?).

    python bench/duq_sensitivity.py [--models mobilenet_v3_small,mobilenet_v2] [--out bench/results/profit_act_sensitivity.json]

For each shipped model: the DuQ model at W8A8 (first/last layers 8-bit, the ``profit4bit`` setting),
least-squares (``mse``) activation clips fitted on the pass's init batch (256 train images, drawn as
the pass draws them for seed 0), the weights on DuQ's ``0.9 max|W|`` init, BatchNorm on the float
model's running statistics. Then, per body layer input:

- ``drop_alone``: accuracy at W8A8 minus accuracy with only this input at 4 bits (its clip refitted
  at 4 bits);
- ``recovery``: accuracy with only this input back at 8 bits minus accuracy with every body input
  at 4 bits (W8A4).

Accuracy is on the pass's hold-out slice of the *train* split (2000 images), never the test split,
so a recipe choice made from this table does not select on test data. No training: these are
post-training sensitivities, a ranking, not the QAT accuracies of bench/results/profit.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from mobilec.data import load_dataset
from mobilec.io import load_matching_state_dict, write_json_atomic, write_text_atomic
from mobilec.models import build_model, get_entry
from mobilec.passes.quant.profit import DuQTraining
from mobilec.passes.quant.qmodules import (
    convert_to_duq,
    duq_plan,
    init_activation_quantizers,
    init_weight_quantizers,
    quant_layers,
)
from mobilec.passes.quant.trainer import accuracy
from mobilec.report import machine_description

ROOT = Path(__file__).resolve().parents[1]
HOLDOUT = 2000
LOW, HIGH = 4, 8


def measure(model_name: str, ds: Any) -> dict[str, Any]:
    model = build_model(model_name, num_classes=10)
    load_matching_state_dict(model, get_entry(model_name).weights_path)
    qm = convert_to_duq(model.eval(), weight_bits=HIGH, act_bits=HIGH, first_last_bits=HIGH)
    x_tr, _, x_ho, y_ho = DuQTraining(holdout_samples=HOLDOUT)._split(ds, seed=0)
    batch = x_tr[torch.randperm(len(x_tr), generator=torch.Generator().manual_seed(0))[:256]]
    init_weight_quantizers(qm)
    plan = duq_plan(qm)
    layers = dict(quant_layers(qm))
    body = [n for n in layers if plan.layers[n].role == "body"]

    def score(low: set[str]) -> tuple[float, dict[str, float]]:
        for n, layer in layers.items():
            layer.act_q.bits = LOW if n in low else HIGH
        clips = init_activation_quantizers(qm, batch, rule="mse")
        qm.eval()
        return accuracy(qm, x_ho, y_ho), clips

    with torch.no_grad():
        fp32 = accuracy(model.eval(), x_ho, y_ho)
        a8, clips8 = score(set())
        a4, clips4 = score(set(body))
        rows = []
        for i, n in enumerate(body):
            alone, _ = score({n})
            back, _ = score(set(body) - {n})
            lp = plan.layers[n]
            rows.append({"layer": n, "op": lp.op, "input_kind": lp.act_kind, "input_from": lp.act_source,
                         "clip_8bit": round(clips8[n], 4), "clip_4bit": round(clips4[n], 4),
                         "drop_alone": round(a8 - alone, 4), "recovery": round(back - a4, 4)})
            print(f"{model_name} {i + 1}/{len(body)} {n:36s} drop {a8 - alone:+.4f} recovery {back - a4:+.4f}", flush=True)
    rows.sort(key=lambda r: -r["recovery"])
    return {"model": model_name, "fp32_holdout_accuracy": fp32, "w8a8_holdout_accuracy": a8,
            "w8a4_holdout_accuracy": a4, "body_layers": len(body), "rows": rows}


def render(result: dict[str, Any]) -> str:
    lines = ["# 4-bit activation sensitivity per layer (post-training, no QAT)", "",
             f"- command: `{result['command']}`", f"- machine: {result['machine']}",
             f"- {result['method']}", ""]
    for m in result["models"]:
        rows = m["rows"]
        total_drop = sum(r["drop_alone"] for r in rows)
        top = rows[:5]
        lines += [f"## {m['model']}", "",
                  f"Hold-out accuracy: fp32 {m['fp32_holdout_accuracy']:.4f}, W8A8 {m['w8a8_holdout_accuracy']:.4f}, "
                  f"W8A4 {m['w8a4_holdout_accuracy']:.4f} ({m['body_layers']} body layer inputs at 4 bits). "
                  f"Sum of the single-layer drops: {total_drop:.4f}; the 5 largest recoveries add up to "
                  f"{sum(r['recovery'] for r in top):.4f}.", "",
                  "| layer | op | input kind | input from | clip at 8 bits | clip at 4 bits | drop alone | recovery |",
                  "|---|---|---|---|---:|---:|---:|---:|"]
        for r in rows:
            lines.append(f"| {r['layer']} | {r['op']} | {r['input_kind']} | {r['input_from']} | {r['clip_8bit']:.3f} "
                         f"| {r['clip_4bit']:.3f} | {r['drop_alone']:+.4f} | {r['recovery']:+.4f} |")
        by_kind: dict[str, list[float]] = {}
        for r in rows:
            by_kind.setdefault(r["input_kind"], []).append(r["recovery"])
        lines += ["", "Recovery by input kind (sum, layers): " + ", ".join(
            f"{k} {sum(v):+.4f} ({len(v)})" for k, v in sorted(by_kind.items())), ""]
    return "\n".join(lines)


def _machine() -> str:
    m = machine_description()
    return f"{m['cpu']}, {m['cores']} cores, CPU only, shared"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="mobilenet_v3_small,mobilenet_v2")
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/profit_act_sensitivity.json")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_dataset("fashion-mnist")
    start = time.perf_counter()
    models = [measure(m, ds) for m in args.models.split(",")]
    result = {"benchmark": "profit_act_sensitivity",
              "command": f"python bench/duq_sensitivity.py --models {args.models}",
              "machine": _machine(), "seconds": round(time.perf_counter() - start, 1),
              "method": (f"DuQ W8A8 (first/last 8-bit), mse activation clips refitted on 256 train images for each "
                         f"configuration, weights at DuQ's max init, float BatchNorm statistics, no training; accuracy "
                         f"on {HOLDOUT} hold-out images of the train split. drop alone = W8A8 minus only this input at "
                         f"4 bits; recovery = only this input back at 8 bits minus W8A4 (every body input at 4 bits)"),
              "models": models}
    write_json_atomic(args.out, result)
    write_text_atomic(args.out.with_suffix(".md"), render(result))
    print(f"wrote {args.out} and {args.out.with_suffix('.md').name}")


if __name__ == "__main__":
    main()
