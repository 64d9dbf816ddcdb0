"""Benchmark: DuQ / PROFIT sub-4-bit QAT vs fp32, int8 PTQ and round-to-nearest 4-bit PTQ on Fashion-MNIST.

Each row is one ``mobilec.export`` run (the same code path as ``mobilec export --recipe R --model M``):
the recipe's passes, then every target exported and run *in its runtime* on the full 10k test split.
Row fields: ``model, recipe, target, accuracy`` (the artifact), ``eager_accuracy`` (the compressed
torch model), ``fp32_accuracy``, ``top1_agreement``, ``max_abs_error``, ``size_bytes``,
``packed_weight_bytes`` (weights bit-packed at their information bits), ``train_seconds``,
``machine``, ``command``. Rows merge into ``bench/results/profit.json`` by (model, recipe, target),
so the table can be filled in several runs (a CPU now, a GPU later). ``--from-run DIR`` adds the
rows of an existing ``mobilec export`` output folder (its report.json) instead of re-running it.
``--step-time`` measures a DuQ W4A4 QAT training step against an fp32 step (same batch, same loop).

    python bench/profit.py --models mobilenet_v2 --rows fp32,int8,rtn4bit,duq4bit,profit4bit
    python bench/profit.py --from-run mobilec-out/mobilenet_v2-profit4bit      # rows of a CLI run
    python bench/profit.py --device cuda --models mobilenet_v2,mobilenet_v3_small \\
        --rows fp32,int8,rtn4bit,duq4bit,profit4bit,duq3bit,profit3bit,profit4bit-full --step-time
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
    sys.path.insert(0, str(ROOT / "toolkit"))  # run from a checkout without installing

RESULTS = ROOT / "bench" / "results"
DEFAULT_ROWS = "fp32,int8,rtn4bit,duq4bit,profit4bit,duq3bit,profit3bit"
#: accuracy goals of issue 3, in points of top-1 below fp32 (artifact accuracy, same target)
GOALS = {"w4a4_max_drop_points": 0.5, "w3a3_max_drop_points": 1.5, "qat_step_time_max_ratio": 1.5}
W4A4, W3A3 = ("duq4bit", "profit4bit", "profit4bit-full"), ("duq3bit", "profit3bit")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="mobilenet_v2", help="comma-separated zoo models (shipped checkpoints)")
    p.add_argument("--rows", default=DEFAULT_ROWS, help="comma-separated recipes, one row per recipe and target")
    p.add_argument("--targets", default="executorch,tflite", help="comma-separated export targets")
    p.add_argument("--data", default="fashion-mnist", help="data set (the shipped checkpoints are Fashion-MNIST ones)")
    p.add_argument("--weights-dir", type=Path, default=None,
                   help="use DIR/<model>_<data>.pt instead of the shipped checkpoints (smoke runs on other data)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the QAT passes train")
    p.add_argument("--threads", type=int, default=2, help="torch threads on the CPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--from-run", type=Path, action="append", default=[], metavar="DIR",
                   help="add the rows of an existing `mobilec export` output folder (repeatable); runs nothing else")
    p.add_argument("--resume", action="store_true",
                   help="re-export rows from the pass checkpoints of earlier runs in --workdir (training skipped; the "
                        "report keeps the checkpointed training record and notes the resume)")
    p.add_argument("--step-time", action="store_true", help="measure DuQ QAT vs fp32 training step time per model")
    p.add_argument("--step-batches", type=int, default=10, help="timed steps per variant and round (after 5 warm-up steps)")
    p.add_argument("--step-rounds", type=int, default=4, help="rounds in which the step-time variants take turns")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/mobilec-bench-profit"), help="export output folders")
    p.add_argument("--out", type=Path, default=RESULTS / "profit.json")
    return p.parse_args(argv)


def select_device(device: str) -> None:
    """The DuQ passes train on CUDA whenever it is visible: hide it for ``--device cpu``."""
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        return
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")


def pin_executorch_threadpool(threads: int = 1) -> None:
    """Size ExecuTorch's thread pool before any program loads (resizing a used pool crashed the host; bench/tucker.py)."""
    try:
        from executorch.extension.pybindings import portable_lib
    except ImportError:
        return
    if portable_lib._threadpool_get_thread_count() != threads:
        portable_lib._unsafe_reset_threadpool(threads)


# ----------------------------------------------------------------------------- rows
def rows_from_report(rep: dict[str, Any], *, model: str, recipe: str, command: str, machine: str,
                     seed: int = 0) -> list[dict[str, Any]]:
    """One row per target of a run's report (report.json of ``mobilec export``); ``seed`` is the run's seed."""
    passes = rep.get("passes", [])
    qat = next((p for p in passes if p["name"] in ("duq", "profit")), None)
    summ = qat["summary"] if qat else {}
    acc = rep.get("accuracy", {})
    resumed = next((n for n in rep.get("notes", []) if n.startswith("resumed after pass")), None)
    rows = []
    for art in rep.get("artifacts", []):
        v = art.get("verification") or {}
        layers = art.get("layers") or []
        rows.append({
            "model": model, "recipe": recipe, "target": art["target"],
            "accuracy": v.get("accuracy"),
            "eager_accuracy": acc.get("compressed_eager"),
            "fp32_accuracy": acc.get("original"),
            "verified_against": v.get("reference"),
            "top1_agreement": v.get("top1_agreement"), "max_abs_error": v.get("max_abs_error"), "snr_db": v.get("snr_db"),
            "n_test": v.get("n_samples"), "status": art.get("status"),
            "size_bytes": art.get("size_bytes"),
            "stored_weight_bytes": sum(lb["stored_bytes"] for lb in layers) if layers else None,
            "packed_weight_bytes": sum(lb["packed_bytes"] for lb in layers) if layers else None,
            "weight_info_bits": sorted({lb["info_bits"] for lb in layers}) if layers else None,
            "stored": sorted({lb["stored"] for lb in layers}) if layers else None,
            "executed": sorted({lb["executed"] for lb in layers}) if layers else None,
            "train_seconds": summ.get("train_seconds", 0.0),
            "compress_seconds": round(sum(p.get("seconds") or 0.0 for p in passes), 1),
            "qat_steps": summ.get("steps"), "qat_mean_step_seconds": summ.get("mean_step_seconds"),
            "holdout_accuracy": summ.get("holdout_accuracy"),
            "aiwq_top3": (summ.get("aiwq_ranking") or [])[:3] or None,
            "seed": seed, "machine": machine, "command": command,
            "cli_equivalent": f"mobilec export --recipe {recipe} --model {model} --target {art['target']}"
                              + (f" --seed {seed}" if seed else ""),
            **({"exported_from_checkpoint": resumed} if resumed else {}),
        })
    for fail in rep.get("failures", []):
        if not any(r["target"] == fail["target"] for r in rows):
            rows.append({"model": model, "recipe": recipe, "target": fail["target"], "accuracy": None, "seed": seed,
                         "error": str(fail["error"])[:500], "machine": machine, "command": command})
    return rows


def run_row(model: str, recipe: str, targets: list[str], args: argparse.Namespace, command: str,
            machine: str) -> list[dict[str, Any]]:
    from mobilec import api

    out = args.workdir / f"{model}-{Path(recipe).stem}" / f"seed{args.seed}"
    weights = args.weights_dir / f"{model}_{args.data.replace('-', '_')}.pt" if args.weights_dir else None
    t0 = time.perf_counter()
    res = api.export(recipe, model=model, weights=weights, data=args.data, targets=targets, out=out, force=True,
                     resume=args.resume, seed=args.seed, show_progress=False, profile=False, command=command)
    rows = rows_from_report(res.report.to_dict(), model=model, recipe=res.report.recipe, command=command, machine=machine,
                            seed=args.seed)
    for r in rows:
        r["run_seconds"] = round(time.perf_counter() - t0, 1)
        r["run_dir"] = str(out)
    return rows


# ----------------------------------------------------------------------------- step time
def step_time(model_name: str, data_name: str, device: str, batches: int, seed: int, rounds: int) -> dict[str, Any]:
    """Seconds per training step: the float model vs its DuQ W4A4 version (all quantizers on) with the
    eager quantizer ops (``fused_kernels = false``) and with the fused C++ kernels the passes use by
    default on CPU, each also with BatchNorm folded in (as in the last phases).

    All four use the DuQ pass's Trainer (SGD Nesterov, batch 64, augmentation, no distillation) on
    the same device, after 5 untimed warm-up steps each. The variants take turns, ``rounds`` times
    ``batches`` steps each, and each figure is the median over all timed steps, so a slow spell of
    this shared host lands on every variant alike. The shipped checkpoint is used where it exists.
    """
    import copy

    import torch

    from mobilec.data import load_dataset
    from mobilec.models import build_model, get_entry
    from mobilec.passes.quant import qmodules as qm_
    from mobilec.passes.quant.duq import enable_fused_kernels
    from mobilec.passes.quant.trainer import DistInfo, Trainer

    data = load_dataset(data_name)
    dev = torch.device(device)
    x, y = data.x_train[:8192], data.y_train[:8192]
    zero = (-torch.tensor(data.mean) / torch.tensor(data.std)).view(1, -1, 1, 1)
    entry = get_entry(model_name)  # the trained checkpoint where one is shipped for this data (a random net can diverge)
    trained = entry.weights_path is not None and entry.weights_path.is_file() and data.name == entry.default_data
    fp = build_model(model_name, num_classes=data.num_classes, in_channels=data.input_shape[0], pretrained=trained)
    q = qm_.convert_to_duq(fp, weight_bits=4, act_bits=4)
    qm_.init_activation_quantizers(q, x[:256])
    qm_.init_weight_quantizers(q)
    qm_.enable_quantizers(q, acts=True, weights=True)
    folded = qm_.fold_batchnorm(copy.deepcopy(q), trainable=True)
    fused_error = enable_fused_kernels(device == "cpu")  # built before timing; toggled per variant below
    variants = {"fp32": (fp, False), "duq_w4a4": (q, False), "duq_w4a4_folded": (folded, False),
                "duq_w4a4_fused": (copy.deepcopy(q), True), "duq_w4a4_folded_fused": (copy.deepcopy(folded), True)}
    trainers = {}
    for label, (m, _) in variants.items():
        m.to(dev)
        trainers[label] = Trainer(m, x, y, teacher=None, batch_size=64, weight_decay=2e-5, quant_lr_scale=0.01,
                                  augment=True, hflip=False, zero=zero, seed=seed, ema_decay=0.0, dist=DistInfo(), device=dev)
    times: dict[str, list[float]] = {label: [] for label in variants}
    try:
        for r in range(rounds + 1):  # round 0: the untimed warm-up
            for label, (_, fused) in variants.items():
                if fused and fused_error is not None:
                    continue
                enable_fused_kernels(fused)
                tr = trainers[label]
                tr.step_seconds.clear()
                tr.run_phase(label, 5 if r == 0 else batches, lr=1e-4)
                if r:
                    times[label] += tr.step_seconds
    finally:
        enable_fused_kernels(False)
    out: dict[str, Any] = {"model": model_name, "device": device, "batch_size": 64, "rounds": rounds, "steps_per_round": batches,
                           "weights": "shipped checkpoint" if trained else "random init", "threads": torch.get_num_threads(),
                           "fused_kernels_error": fused_error}
    for label, ts in times.items():
        if ts:
            out[f"{label}_step_seconds"] = sorted(ts)[len(ts) // 2]
    base = out["fp32_step_seconds"]
    out["ratio"] = out["duq_w4a4_step_seconds"] / base
    out["ratio_folded"] = out["duq_w4a4_folded_step_seconds"] / base
    if "duq_w4a4_fused_step_seconds" in out:
        out["ratio_fused"] = out["duq_w4a4_fused_step_seconds"] / base
        out["ratio_folded_fused"] = out["duq_w4a4_folded_fused_step_seconds"] / base
    return out


# ----------------------------------------------------------------------------- goals, markdown
def row_key(r: dict[str, Any]) -> tuple[str, str, str, int]:
    """Rows merge by model, recipe, target and training seed (rows written before seeds were recorded: seed 0)."""
    return r["model"], r["recipe"], r["target"], int(r.get("seed") or 0)


def is_rejected(r: dict[str, Any]) -> bool:
    """The artifact failed verification against the eager model (mobilec removed it; it is not what a user gets)."""
    return str(r.get("status") or "").startswith("rejected")


def seed_accuracies(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[int, float]]:
    """``{(model, recipe, target): {seed: artifact accuracy}}`` of the verified rows that have one."""
    out: dict[tuple[str, str, str], dict[int, float]] = {}
    for r in rows:
        if r.get("accuracy") is not None and not is_rejected(r):
            out.setdefault((r["model"], r["recipe"], r["target"]), {})[int(r.get("seed") or 0)] = r["accuracy"]
    return out


def check_goals(rows: list[dict[str, Any]], steps: dict[str, Any]) -> dict[str, Any]:
    """The issue-3 goals, on the mean artifact accuracy over the seeds each recipe was run with."""
    by = seed_accuracies(rows)
    fp32 = {(r["model"], r["recipe"], r["target"]): r.get("fp32_accuracy") for r in rows}
    out: dict[str, Any] = {"targets": GOALS}
    rejected = [f"{r['model']}/{r['recipe']}/{r['target']} seed {int(r.get('seed') or 0)}" for r in rows if is_rejected(r)]
    if rejected:
        out["rejected_artifacts_left_out"] = rejected
    for (model, recipe, target), accs in sorted(by.items()):
        fp = fp32.get((model, recipe, target))
        if fp is None or recipe not in W4A4 + W3A3:
            continue
        mean = sum(accs.values()) / len(accs)
        drop = (fp - mean) * 100
        limit = GOALS["w4a4_max_drop_points"] if recipe in W4A4 else GOALS["w3a3_max_drop_points"]
        out[f"{model}/{recipe}/{target}"] = {"drop_points_vs_fp32": round(drop, 3), "limit": limit, "met": drop <= limit,
                                             "seeds": sorted(accs)}
    for (model, recipe, target), accs in sorted(by.items()):
        duq = by.get((model, "duq3bit", target))
        if recipe == "profit3bit" and duq:
            p_mean, d_mean = sum(accs.values()) / len(accs), sum(duq.values()) / len(duq)
            paired = sorted(set(accs) & set(duq))
            out[f"{model}/profit3bit>duq3bit/{target}"] = {
                "profit3bit": round(p_mean, 5), "duq3bit": round(d_mean, 5), "met": p_mean > d_mean,
                "seeds": paired, "profit_wins": sum(accs[s] > duq[s] for s in paired)}
    for model, s in steps.items():
        # the kernels the passes run by default (fused where they were built, else eager); the slower of
        # the two QAT step kinds (BN separate / BN folded) counts
        kernels = "fused" if "ratio_fused" in s else "eager"
        suffix = "_fused" if kernels == "fused" else ""
        ratio = max(s[f"ratio{suffix}"], s.get(f"ratio_folded{suffix}", 0.0))
        out[f"{model}/qat_step_time_ratio"] = {"ratio": round(ratio, 3), "limit": GOALS["qat_step_time_max_ratio"],
                                                "met": ratio <= GOALS["qat_step_time_max_ratio"], "kernels": kernels}
    return out


def _f(v: Any, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec) if isinstance(v, int | float) else str(v)


#: the models issue 3 asks rows for; a model without rows gets a line saying why
ISSUE_MODELS = ("mobilenet_v2", "mobilenet_v3_small")


def missing_models(rows: list[dict[str, Any]]) -> list[str]:
    """One line per issue-3 model that has no rows, with the reason read from the checkout."""
    from mobilec.models import WEIGHTS_DIR, get_entry

    have = {r["model"] for r in rows}
    lines = []
    for model in ISSUE_MODELS:
        if model in have:
            continue
        if get_entry(model).weights_path is None:  # None: not shipped, or the file is absent
            path = WEIGHTS_DIR / (get_entry(model).weights_file or f"{model}_fashion_mnist.pt")
            rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
            lines.append(f"- **{model}: not run.** Its shipped Fashion-MNIST checkpoint (`{rel}`) does not exist: "
                         f"`python bench/train_zoo.py --model {model}` (about 20 min of the shared 2-core CPU) has not "
                         "been run within this CPU budget, and the QAT rows need it as the fp32 starting point and teacher.")
        else:
            lines.append(f"- **{model}: not run yet** (checkpoint present): `python bench/profit.py --models {model}`.")
    return lines


def render_markdown(result: dict[str, Any]) -> str:
    """The page's prose (goals, step time, what is missing); the row table is spliced in below it by
    :mod:`mobilec.bench_render` (``mobilec compare --bench bench/results/profit.json`` regenerates it)."""
    lines = [f"# DuQ / PROFIT benchmark ({result.get('data', 'fashion-mnist')})", "",
             "- machines (each row's is in its `machine` field; compare times only between rows of one machine): "
             + "; ".join(sorted({r.get("machine") or result["machine"]["description"] for r in result["rows"]})
                         or [result["machine"]["description"]]),
             "- accuracy = the exported artifact run in its runtime on the full test split; eager_accuracy = the compressed "
             "torch model; fp32_accuracy = the shipped checkpoint (eager). Bits: conv weights are stored as int8 codes "
             "(neither runtime executes narrower conv weights); linear weights of 4 or fewer information bits are stored "
             "as int4 (XNNPACK qc4w, LiteRT INT4 FULLY_CONNECTED); all arithmetic is int8 (`stored`/`executed` list the "
             "containers of each row); `packed_weight_bytes` is what the weights would take bit-packed at their "
             "information bits (`weight_info_bits`).",
             "- each row's exact command is in the table and in profit.json (`command`); `cli_equivalent` is the "
             "`mobilec export` command that runs the same code.", ""]
    if result.get("step_time"):
        lines += ["## Training step time: DuQ W4A4 QAT vs fp32 (measured in the same run)", "",
                  "Median seconds per step at batch 64; the variants take turns (rounds x steps each). \"fused\" is "
                  "what the passes run by default on CPU (`fused_kernels = true`, the C++ quantizer kernels); \"eager\" "
                  "is `fused_kernels = false` (torch ops). \"folded\": BatchNorm folded in, as in the last phases.", "",
                  "| model | machine | threads | rounds x steps | fp32 s/step | fused s/step | ratio | fused folded s/step | ratio "
                  "| eager s/step | ratio | eager folded s/step | ratio |",
                  "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for s in result["step_time"].values():
            lines.append(f"| {s['model']} | {s.get('machine', '-')} | {s.get('threads', '-')} "
                         f"| {s.get('rounds', 1)} x {s.get('steps_per_round', s.get('timed_steps', '-'))} "
                         f"| {s['fp32_step_seconds']:.4f} "
                         f"| {_f(s.get('duq_w4a4_fused_step_seconds'))} | {_f(s.get('ratio_fused'), '.2f')} "
                         f"| {_f(s.get('duq_w4a4_folded_fused_step_seconds'))} | {_f(s.get('ratio_folded_fused'), '.2f')} "
                         f"| {s['duq_w4a4_step_seconds']:.4f} | {s['ratio']:.2f} "
                         f"| {_f(s.get('duq_w4a4_folded_step_seconds'))} | {_f(s.get('ratio_folded'), '.2f')} |")
        lines.append("")
    lines += ["## Goals (issue 3)", "", "| goal | value | limit | met |", "|---|---|---|---|"]
    for k, g in result["goals"].items():
        if k in ("targets", "rejected_artifacts_left_out"):
            continue
        val = g.get("drop_points_vs_fp32", g.get("ratio", f"{_f(g.get('profit3bit'))} vs {_f(g.get('duq3bit'))}"))
        seeds = g.get("seeds") or []
        if len(seeds) > 1:
            val = f"{val} (mean of seeds {', '.join(map(str, seeds))}"
            val += f"; profit higher in {g['profit_wins']} of {len(seeds)})" if "profit_wins" in g else ")"
        lines.append(f"| {k} | {val} | {g.get('limit', '>')} | {'yes' if g['met'] else '**no**'} |")
    if result["goals"].get("rejected_artifacts_left_out"):
        lines += ["", "Left out of the goals (the artifact failed verification against the eager model, so mobilec "
                  "removed it): " + "; ".join(result["goals"]["rejected_artifacts_left_out"]) + "."]
    lines.append("")
    missing = missing_models(result["rows"])
    if missing or result.get("notes"):
        lines += ["## Notes", "", *missing, *[f"- {n}" for n in result.get("notes", [])], ""]
    return "\n".join(lines)


def render_page(out: Path, result: dict[str, Any], write_text: Any) -> None:
    """Write the prose, then splice the rows table and plots rendered by mobilec.bench_render."""
    from mobilec.bench_render import regenerate_command, render_file

    write_text(out.with_suffix(".md"), render_markdown(result))
    if not result.get("rows"):
        return  # a step-time-only file: no rows table or plots to splice in
    shown = out.relative_to(ROOT) if out.is_absolute() and out.is_relative_to(ROOT) else out
    render_file(out, command=regenerate_command(shown, {}, None))


def _row_order(r: dict[str, Any]) -> tuple[int, str]:
    order = ["fp32", "int8", "rtn4bit", "duq4bit", "profit4bit", "profit4bit-full", "duq3bit", "profit3bit"]
    return (order.index(r["recipe"]) if r["recipe"] in order else len(order), r["target"])


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    select_device(args.device)
    import torch

    from mobilec.io import write_json_atomic, write_text_atomic
    from mobilec.report import machine_description

    torch.set_num_threads(args.threads)
    pin_executorch_threadpool(1)
    command = shlex.join(["python", "bench/profit.py", *(sys.argv[1:] if argv is None else argv)])
    mach = machine_description()
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else None
    desc = f"{mach['cpu']}, {mach['cores']} cores" + (f", QAT on {gpu}" if gpu else ", CPU only, shared")
    result: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {"benchmark": "profit", "rows": []}
    result.setdefault("step_time", {})
    result["data"] = args.data
    new_rows: list[dict[str, Any]] = []

    for run_dir in args.from_run:
        rep = json.loads((run_dir / "report.json").read_text())
        model = rep["model"].get("name") or rep["model"].get("spec") or "?"
        new_rows += rows_from_report(rep, model=model, recipe=rep["recipe"], command=rep.get("command") or "?", machine=desc,
                                     seed=int(rep.get("seed") or 0))
    if not args.from_run:
        targets = [t.strip() for t in args.targets.split(",") if t.strip()]
        for model in [m.strip() for m in args.models.split(",") if m.strip()]:
            if args.step_time:
                timing = step_time(model, args.data, args.device, args.step_batches, args.seed, args.step_rounds)
                result["step_time"][model] = {**timing, "machine": desc, "command": command}
                print(f"{model}: QAT step / fp32 step = {timing.get('ratio_fused', timing['ratio']):.2f} "
                      f"({'fused kernels' if 'ratio_fused' in timing else 'torch ops'}; torch ops {timing['ratio']:.2f})", flush=True)
            for recipe in [r.strip() for r in args.rows.split(",") if r.strip()]:
                rows = run_row(model, recipe, targets, args, command, desc)
                new_rows += rows
                for r in rows:
                    print(f"{model:20s} {r['recipe']:16s} {r['target']:10s} acc {_f(r.get('accuracy'))} "
                          f"eager {_f(r.get('eager_accuracy'))} agree {_f(r.get('top1_agreement'))} "
                          f"train {_f(r.get('train_seconds'), '.0f')}s {r.get('error', '')}", flush=True)
                _save(result, new_rows, desc, args, write_json_atomic, write_text_atomic)  # keep partial results
    _save(result, new_rows, desc, args, write_json_atomic, write_text_atomic)
    print(f"wrote {args.out} and {args.out.with_suffix('.md').name}", flush=True)
    return 0


def _save(result: dict[str, Any], new_rows: list[dict[str, Any]], desc: str, args: argparse.Namespace, write_json: Any,
          write_text: Any) -> None:
    keys = {row_key(r) for r in new_rows}
    old = {row_key(r): r for r in result["rows"]}
    for r in new_rows:  # a re-export from a pass checkpoint keeps the command that trained it
        if r.get("exported_from_checkpoint") and row_key(r) in old:
            r["train_command"] = old[row_key(r)].get("train_command") or old[row_key(r)].get("command")
    result["rows"] = [r for r in result["rows"] if row_key(r) not in keys] + new_rows
    result["machine"] = {"description": desc}
    result["goals"] = check_goals(result["rows"], result["step_time"])
    write_json(args.out, result)
    render_page(args.out, result, write_text)


if __name__ == "__main__":
    raise SystemExit(main())
