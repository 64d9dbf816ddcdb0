"""Benchmark: host latency of the PROFIT/DuQ artifacts against fp32 and int8 PTQ, in the same runtime and run.

Each ``--run`` is a ``mobilec export`` run folder (its ``report.json`` names the model and recipe);
every .pte and .tflite in it is timed. For the DuQ/PROFIT runs the bench also lowers the run's own
pass checkpoint to LiteRT once more in the plain form (``build_deploy_module`` without
``delegate_friendly``, the same 1×1-conv form as the shipped file), so the effect of writing the
graph for XNNPACK's delegate is measured on the same trained weights. Latency: the host profiler,
1 thread, all artifacts of a model and target in interleaved rounds (``tucker.profile_interleaved``),
wall-clock and CPU-time p50. Writes ``bench/results/latency.json`` and ``latency.md``.

    python bench/latency.py --run RUN_DIR [--run RUN_DIR ...] [--rounds 5] [--runs 200]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "toolkit") not in sys.path:
    sys.path.insert(0, str(ROOT / "toolkit"))  # run from a checkout without installing

RESULTS = ROOT / "bench" / "results"
SUFFIX_TARGET = {".pte": "executorch", ".tflite": "tflite"}
PLAIN = "plain LiteRT form"
DUQ_PASSES = ("duq", "profit")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, action="append", required=True, help="a mobilec export run folder (repeat)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (median of the rounds' p50)")
    p.add_argument("--runs", type=int, default=200, help="timed inferences per artifact and round")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--no-plain", action="store_true", help="skip the plain LiteRT form of the DuQ runs")
    p.add_argument("--out", type=Path, default=RESULTS / "latency.json")
    return p.parse_args(argv)


def tflite_graph(path: Path) -> dict[str, Any]:
    from mobilec.export.tflite import tflite_ops_and_partitions

    ops, partitions = tflite_ops_and_partitions(path)
    return {"ops": sum(ops.values()), "xnnpack_partitions": partitions}


def plain_litert(run: Path, report: dict[str, Any], out: Path) -> Path | None:
    """The run's DuQ model (its last pass checkpoint) lowered to LiteRT without ``delegate_friendly``."""
    from mobilec.checkpoint import _as_checkpoint, load_checkpoint
    from mobilec.data import load_dataset
    from mobilec.export.tflite_names import strip_tensor_names
    from mobilec.passes.quant import lowering

    ckpts = sorted((run / "checkpoints").glob("pass-*.pt"))
    tfl = next((a for a in report["artifacts"] if a["target"] == "tflite"), None)
    if not ckpts or tfl is None:
        return None
    model = _as_checkpoint(load_checkpoint(ckpts[-1]), ckpts[-1]).model.eval()
    fc = any("run as FULLY_CONNECTED over the map's pixels" in n for n in tfl["notes"])
    deploy, _ = lowering.build_deploy_module(model, fold_weights=False, pointwise_as_linear=fc)
    lowering._lower_tflite(deploy, load_dataset(report["data"]["spec"]).x_test[:1], out)
    strip_tensor_names(out)  # as the shipped file: sizes compare like with like
    return out


def main(argv: list[str] | None = None) -> None:
    from tucker import profile_interleaved

    from mobilec.data import load_dataset
    from mobilec.io import write_json_atomic, write_text_atomic
    from mobilec.report import machine_description

    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="mobilec-latency-"))
    artifacts: dict[tuple[str, str], Path] = {}
    meta: dict[tuple[str, str], dict[str, Any]] = {}
    for run in args.run:
        report = json.loads((run / "report.json").read_text())
        model, recipe = report["model"]["name"], report["recipe"]
        for a in report["artifacts"]:
            path = Path(a["path"]) if Path(a["path"]).is_absolute() else run / Path(a["path"]).name
            if path.suffix not in SUFFIX_TARGET or not path.is_file():
                continue
            key = (f"{model}/{recipe}", str(path))
            artifacts[key] = path
            meta[key] = {"model": model, "recipe": recipe, "target": SUFFIX_TARGET[path.suffix], "form": "shipped",
                         "size_bytes": path.stat().st_size, "run_dir": str(run), "accuracy": (a.get("verification") or {}).get("accuracy")}
        if not args.no_plain and any(p["name"] in DUQ_PASSES for p in report["passes"]):
            plain = plain_litert(run, report, tmp / f"{model}-{recipe}-plain.tflite")
            if plain is not None:
                key = (f"{model}/{recipe}", str(plain))
                artifacts[key] = plain
                meta[key] = {"model": model, "recipe": recipe, "target": "tflite", "form": PLAIN,
                             "size_bytes": plain.stat().st_size, "run_dir": str(run), "accuracy": None}
    x = load_dataset("fashion-mnist").x_test[:64].numpy()
    # one group per model and target: the artifacts that take turns
    groups: dict[tuple[str, str], dict[tuple[str, str], Path]] = {}
    for key, path in artifacts.items():
        groups.setdefault((meta[key]["model"], meta[key]["target"]), {})[key] = path
    rows = []
    for (_model, target), group in sorted(groups.items()):
        timing = profile_interleaved({(k[1], target): p for k, p in group.items()}, [target], args, x)
        for key in group:
            m = dict(meta[key])
            m.update({k: v for k, v in timing[(key[1], target)].items() if k in ("p50_ms", "cpu_p50_ms", "rounds_p50_ms")})
            if target == "tflite":
                m.update(tflite_graph(group[key]))
            rows.append(m)
    for r in rows:  # ratios within the same model, target and run
        for base in ("int8", "fp32"):
            b = next((o for o in rows if o["model"] == r["model"] and o["target"] == r["target"] and o["recipe"] == base
                      and o["form"] == "shipped"), None)
            if b is not None:
                r[f"latency_vs_{base}"] = round(r["p50_ms"] / b["p50_ms"], 3)
                r[f"cpu_vs_{base}"] = round(r["cpu_p50_ms"] / b["cpu_p50_ms"], 3)
    mach = machine_description()
    machine = f"{mach['cpu']}, {mach['cores']} cores, SIMD {' '.join(mach.get('simd', []))}, shared"
    result = {"machine": machine, "command": "python bench/latency.py " + shlex.join(sys.argv[1:]),
              "settings": {"threads": 1, "rounds": args.rounds, "runs": args.runs, "warmup": args.warmup},
              "rows": rows}
    write_json_atomic(args.out, result)
    write_text_atomic(args.out.with_suffix(".md"), render(result))
    print(render(result))


def render(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = ["# Host latency: PROFIT/DuQ artifacts against fp32 and int8 PTQ", "",
             f"One thread; every artifact of a model and target timed in {s['rounds']} interleaved rounds of "
             f"{s['runs']} inferences (median of the rounds' p50). Ratios are against the same model's int8 PTQ "
             "artifact in the same runtime, measured in the same run (below 1: faster). The plain LiteRT form is the "
             "same trained model lowered without `delegate_friendly` (what mobilec wrote before): its int8 "
             "MINIMUM/MAXIMUM and fp32 PADV2 ops split XNNPACK's delegated graph into partitions.", "",
             "| model | recipe | target | form | size B | XNNPACK partitions | ops | p50 ms | CPU p50 ms | vs int8 | vs fp32 |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    order = {"fp32": 0, "int8": 1}
    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        return r["model"], r["target"], order.get(r["recipe"], 2), r["recipe"], r["form"] != "shipped"

    for r in sorted(result["rows"], key=key):
        lines.append(f"| {r['model']} | {r['recipe']} | {r['target']} | {r['form']} | {r['size_bytes']:,} "
                     f"| {r.get('xnnpack_partitions', '-')} | {r.get('ops', '-')} | {r['p50_ms']:.4f} | {r['cpu_p50_ms']:.4f} "
                     f"| {_ratio(r.get('latency_vs_int8'))} | {_ratio(r.get('latency_vs_fp32'))} |")
    lines += ["", f"Machine: {result['machine']}; command: `{result['command']}`", ""]
    return "\n".join(lines)


def _ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


if __name__ == "__main__":
    main()
