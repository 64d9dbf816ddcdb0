"""Benchmark: Tucker-2 whole-network compression of ``vgg_small`` on Fashion-MNIST.

Rows: fp32 (the trained model), tucker before fine-tuning, tucker (recipe ``tucker``:
decomposition + fine-tuning) and tucker-int8 (recipe ``tucker-int8``), each exported to
ExecuTorch (.pte, XNNPACK) and TFLite. Accuracy is measured by running each exported artifact
in its own runtime on the full 10k test split (``verify_artifact``); latency by the host
profiler, all artifacts of a target measured in interleaved rounds in the same run, so the
ratios vs fp32 compare like with like. Writes ``bench/results/tucker.json`` and ``tucker.md``.

    python bench/tucker.py                       # the full benchmark (~10 min with the CPU lock held, 2 cores)
    python bench/tucker.py --finetune-samples 20000   # fine-tune on a seeded 20k subset instead of 1 epoch
    python bench/tucker.py --quick               # smoke run: 2k train images, 1k test, few timing runs
"""

from __future__ import annotations

import argparse
import copy
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "toolkit") not in sys.path:
    sys.path.insert(0, str(ROOT / "toolkit"))  # run from a checkout without installing

RESULTS = ROOT / "bench" / "results"
FALLBACK_WEIGHTS = ROOT / "bench" / "weights"  # used only when the zoo ships no vgg_small checkpoint
SUFFIX = {"executorch": ".pte", "tflite": ".tflite", "onnx": ".onnx"}
MACHINE = "AMD EPYC, 2 cores, CPU only, shared"
GOALS = {"mac_reduction": 2.5, "latency_speedup": 1.8, "max_accuracy_drop_points": 1.0}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vgg_small")
    p.add_argument("--targets", default="executorch,tflite", help="comma-separated export targets")
    p.add_argument("--recipe", default="tucker", help="the float Tucker recipe (its int8 sibling is RECIPE-int8)")
    p.add_argument("--runs", type=int, default=100, help="timed runs per artifact per round")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (median of the rounds' p50)")
    p.add_argument("--threads", type=int, default=2, help="torch threads for decomposition / fine-tuning")
    p.add_argument("--finetune-samples", type=int, default=None,
                   help="cap the fine-tuning train split (a seeded subset; default: the recipe's, i.e. all 60k)")
    p.add_argument("--kd-weight", type=float, default=None, help="override the recipe's finetune kd_weight")
    p.add_argument("--quick", action="store_true", help="smoke run on a subset (results go to tucker_quick.*)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def load_checkpoint(name: str, data: Any, seed: int) -> tuple[Any, dict[str, Any]]:
    """The zoo's shipped checkpoint, or one trained by bench/train_zoo.py into bench/weights/."""
    import json

    from mobilec.io import load_matching_state_dict
    from mobilec.models import build_model, get_entry

    entry = get_entry(name)
    if entry.weights_path is not None:
        meta_path = entry.weights_path.with_suffix(".json")
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        return build_model(name), {"source": f"shipped {entry.weights_path.name}", "metadata": meta}
    pt = FALLBACK_WEIGHTS / f"{name}_fashion_mnist.pt"
    if not pt.is_file():
        import train_zoo  # bench/train_zoo.py

        print(f"no shipped {name} checkpoint: training one into {FALLBACK_WEIGHTS}", flush=True)
        train_zoo.main(["--model", name, "--epochs", "6", "--lr", "0.05", "--seed", str(seed),
                        "--out-dir", str(FALLBACK_WEIGHTS)])
    model = build_model(name, pretrained=False)
    load_matching_state_dict(model, pt)
    meta_path = pt.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return model.eval(), {"source": f"bench/weights/{pt.name} (trained by bench/train_zoo.py; no shipped checkpoint)",
                          "metadata": meta}


def with_finetune(recipe: Any, args: argparse.Namespace) -> Any:
    """``recipe`` with its finetune pass's train split / distillation weight overridden from the command line."""
    import dataclasses

    changes: dict[str, Any] = {}
    if args.finetune_samples is not None:
        changes["max_train_samples"] = args.finetune_samples
    if args.kd_weight is not None:
        changes["kd_weight"] = args.kd_weight
    if not changes:
        return recipe
    passes = tuple(dataclasses.replace(p, **changes) if p.name == "finetune" else p for p in recipe.passes)
    if not any(p.name == "finetune" for p in passes):
        raise SystemExit(f"recipe {recipe.name!r} has no finetune pass to override")
    return dataclasses.replace(recipe, passes=passes)


def pin_executorch_threadpool(threads: int = 1) -> None:
    """Size ExecuTorch's process-wide thread pool before any program is loaded in this process.

    ``mobilec.runtimes`` resizes the pool after loading a method when the size differs; on this
    host that crashed the process (GPF in libexecutorch_backend_xnnpack.so) after fine-tuning
    in the same process. Resizing first, while nothing uses the pool, avoids it.
    """
    from executorch.extension.pybindings import portable_lib

    if portable_lib._threadpool_get_thread_count() != threads:
        portable_lib._unsafe_reset_threadpool(threads)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from mobilec.context import Context
    from mobilec.data import load_dataset
    from mobilec.io import write_json_atomic, write_text_atomic
    from mobilec.models import count_macs, count_params
    from mobilec.recipe import Recipe
    from mobilec.report import RunReport, machine_description
    from mobilec.train import evaluate

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    command = shlex.join(["python", "bench/tucker.py", *(sys.argv[1:] if argv is None else argv)])
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if "executorch" in targets:
        pin_executorch_threadpool(1)
    data = load_dataset("fashion-mnist")
    model, ckpt = load_checkpoint(args.model, data, args.seed)
    if args.quick:
        data = data.subset(2000, 1000, seed=args.seed)
        args.runs, args.warmup, args.rounds = 20, 3, 2

    rec_float = with_finetune(Recipe.load(args.recipe), args)
    rec_int8 = with_finetune(Recipe.load(f"{args.recipe}-int8"), args)
    report = RunReport(recipe=args.recipe, model={"name": args.model}, data={"name": data.name})
    example = (data.x_test[:1].clone(),)
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    ctx = Context(data=data, workdir=RESULTS, report=report, example_inputs=example, teacher=teacher, seed=args.seed,
                  show_progress=sys.stderr.isatty())

    # -- compress with the shipped recipes' own passes -------------------------------------------
    stages: dict[str, Any] = {"fp32": model}
    timings: dict[str, float] = {}
    cpu_timings: dict[str, float] = {}
    current = model
    for p in rec_float.passes:
        t0, c0 = time.perf_counter(), time.process_time()
        current = p.apply(current, ctx)
        timings[p.name] = time.perf_counter() - t0
        cpu_timings[p.name] = time.process_time() - c0
        print(f"pass {p.name}: {timings[p.name]:.1f}s wall, {cpu_timings[p.name]:.1f}s CPU", flush=True)
        if p.name == "tucker":
            stages["tucker (before fine-tuning)"] = current
    stages["tucker"] = current
    int8_extra = rec_int8.passes[len(rec_float.passes):]
    assert [p.name for p in rec_int8.passes[: len(rec_float.passes)]] == [p.name for p in rec_float.passes]
    for p in int8_extra:
        current = p.apply(current, ctx)
    plan = ctx.quant_plan
    stages["tucker-int8"] = current
    recipes = {"fp32": "fp32", "tucker (before fine-tuning)": f"{args.recipe} (tucker pass only)",
               "tucker": args.recipe, "tucker-int8": f"{args.recipe}-int8"}
    verify_specs = {"fp32": Recipe.load("fp32").verify, "tucker (before fine-tuning)": rec_float.verify,
                    "tucker": rec_float.verify, "tucker-int8": rec_int8.verify}

    # -- export, verify in the runtime, then profile ------------------------------------------------
    workdir = Path(tempfile.mkdtemp(prefix="mobilec-bench-tucker-"))
    rows: list[dict[str, Any]] = []
    artifacts: dict[tuple[str, str], Path] = {}
    for stage, m in stages.items():
        m.eval()
        eager_acc = evaluate(m, data)
        params = count_params(m)
        macs = int(count_macs(m, example[0]))
        quant = plan if stage == "tucker-int8" else None
        for target in targets:
            row: dict[str, Any] = {"model": args.model, "recipe": recipes[stage], "stage": stage, "target": target,
                                   "eager_accuracy": eager_acc, "params": params, "macs": macs}
            try:
                row.update(export_and_verify(m, stage, target, quant, data, example, verify_specs[stage], workdir))
                artifacts[(stage, target)] = Path(row.pop("path"))
            except Exception as exc:  # record the failure, keep benchmarking the other rows
                row.update(accuracy=None, accuracy_source=f"export/verify failed: {type(exc).__name__}: {exc}"[:400])
            rows.append(row)
            print(f"{stage:30s} {target:10s} acc {row.get('accuracy')} eager {eager_acc:.4f} size {row.get('size_bytes')}",
                  flush=True)
    latency = profile_interleaved(artifacts, targets, args, data.x_test[:64].numpy())
    for row in rows:
        lat = latency.get((row["stage"], row["target"]))
        base = latency.get(("fp32", row["target"]))
        row["latency_ms_p50"] = lat["p50_ms"] if lat else None
        row["latency_ratio_vs_fp32"] = (base["p50_ms"] / lat["p50_ms"]) if (lat and base) else None
        row["cpu_ms_p50"] = lat["cpu_p50_ms"] if lat else None
        row["cpu_ratio_vs_fp32"] = (base["cpu_p50_ms"] / lat["cpu_p50_ms"]) if (lat and base) else None
        row["latency_rounds"] = {k: lat[k] for k in ("rounds_p50_ms", "rounds_cpu_p50_ms", "other_threads_cpu_share")} if lat else None

    machine = machine_description()
    machine["note"] = MACHINE
    for row in rows:
        row["machine"] = f"{MACHINE} ({machine['cpu']})"
        row["command"] = command
    tucker_rec = next(r for r in report.passes if r.name == "tucker")
    ft_rec = next((r for r in report.passes if r.name == "finetune"), None)
    result = {
        "benchmark": "tucker",
        "model": args.model,
        "data": {"name": data.name, "n_train": len(data.y_train), "n_test": len(data.y_test), "quick": args.quick},
        "checkpoint": ckpt,
        "recipes": {"float": rec_float.to_dict(), "int8": rec_int8.to_dict()},
        "machine": machine,
        "command": command,
        "timing_settings": {"runs": args.runs, "warmup": args.warmup, "rounds": args.rounds, "threads": 1,
                            "method": "interleaved rounds, one fresh host_worker process per artifact per round; "
                                      "p50 = median of the rounds' p50"},
        "pass_seconds": timings,
        "pass_cpu_seconds": cpu_timings,  # all threads; on a shared host, CPU s / threads estimates an idle-host wall time
        "tucker": {k: v for k, v in tucker_rec.summary.items() if k != "layers"},
        "layers": tucker_rec.summary["layers"],
        "finetune": {k: v for k, v in ft_rec.summary.items()} if ft_rec else None,
        "rows": rows,
    }
    result["goals"] = check_goals(result)
    stem = "tucker_quick" if args.quick else "tucker"
    write_json_atomic(RESULTS / f"{stem}.json", result)
    write_text_atomic(RESULTS / f"{stem}.md", render_markdown(result))
    print(f"wrote {RESULTS / (stem + '.json')} and {stem}.md", flush=True)
    return 0


def export_and_verify(model: Any, stage: str, target: str, quant: Any, data: Any, example: tuple[Any, ...], spec: Any,
                      workdir: Path) -> dict[str, Any]:
    from mobilec.export import get_exporter
    from mobilec.export.verify import verify_artifact

    calibration = data.calibration_batches(quant.calibration_batches, quant.batch_size, quant.seed) if quant else []
    slug = stage.replace(" ", "_").replace("(", "").replace(")", "")
    path = workdir / f"{slug}{SUFFIX[target]}"
    art = get_exporter(target).export(model, example, path, quant=quant, calibration=calibration)
    res = verify_artifact(art, data, spec, eager_model=model, show_progress=False)
    v = res.to_dict()
    return {
        "path": str(art.path),
        "accuracy": v.get("accuracy"),
        "accuracy_source": f"{target} artifact run in its runtime on the {len(data.y_test)}-image test split",
        "size_bytes": art.size_bytes,
        "verification": {k: v.get(k) for k in ("passed", "top1_agreement", "max_abs_error", "snr_db", "failures")},
        "delegation": art.delegation,
    }


#: Per-inference CPU time of the calling thread (runtimes at threads=1 compute on it), measured in a fresh
#: process; ``process_cpu_ms`` over the whole loop checks that no other thread did the work.
_CPU_WORKER = r"""
import json, sys, time
import numpy as np
from mobilec.runtimes import open_artifact
path, runs, warmup, inputs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
if path.endswith(".pte"):  # size ExecuTorch's pool before any method is loaded (resizing a used pool can crash)
    from executorch.extension.pybindings import portable_lib
    portable_lib._unsafe_reset_threadpool(1)
xs = np.load(inputs).astype(np.float32)
s = open_artifact(path, threads=1)
for i in range(warmup):
    s.run(xs[i % len(xs)][None])
cpu, wall = [], []
p0 = time.process_time_ns()
for i in range(runs):
    x = xs[i % len(xs)][None]
    w0, c0 = time.perf_counter_ns(), time.thread_time_ns()
    s.run(x)
    c1, w1 = time.thread_time_ns(), time.perf_counter_ns()
    cpu.append((c1 - c0) / 1e6)
    wall.append((w1 - w0) / 1e6)
print(json.dumps({"cpu_ms": cpu, "wall_ms": wall, "process_cpu_ms": (time.process_time_ns() - p0) / 1e6}))
"""


def cpu_time_run(path: Path, runs: int, warmup: int, inputs_npy: Path) -> dict[str, Any]:
    import json
    import os
    import statistics
    import subprocess

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "toolkit"))
    out = subprocess.run([sys.executable, "-c", _CPU_WORKER, str(path), str(runs), str(warmup), str(inputs_npy)],
                         capture_output=True, text=True, env=env, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    return {"cpu_p50_ms": statistics.median(res["cpu_ms"]), "wall_p50_ms": statistics.median(res["wall_ms"]),
            "other_threads_cpu_share": 1 - sum(res["cpu_ms"]) / max(res["process_cpu_ms"], 1e-9)}


def profile_interleaved(artifacts: dict[tuple[str, str], Path], targets: list[str], args: argparse.Namespace,
                        inputs: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """Latency per artifact over ``rounds`` interleaved rounds (each round times every artifact of a target once).

    Wall-clock p50 comes from the host profiler (``mobilec.profile.profile_artifact``, a fresh
    worker process per call); CPU-time p50 from :func:`cpu_time_run`. Both are the median of
    the rounds' p50s. On a host shared with other jobs the wall clock includes time spent
    descheduled, the CPU time does not.
    """
    import statistics

    import numpy as np

    from mobilec.profile import profile_artifact

    npy = Path(tempfile.mkdtemp(prefix="mobilec-bench-inputs-")) / "inputs.npy"
    np.save(npy, inputs, allow_pickle=False)
    wall: dict[tuple[str, str], list[float]] = {k: [] for k in artifacts}
    cpu: dict[tuple[str, str], list[float]] = {k: [] for k in artifacts}
    other: dict[tuple[str, str], list[float]] = {k: [] for k in artifacts}
    for r in range(args.rounds):
        for target in targets:
            keys = [k for k in artifacts if k[1] == target]
            for key in (keys if r % 2 == 0 else keys[::-1]):  # alternate the order between rounds
                m = profile_artifact(artifacts[key], device="host", runs=args.runs, warmup=args.warmup, threads=1,
                                     repetitions=1, inputs=inputs, show_progress=False)
                wall[key].append(float(m.latency["p50"]))
                c = cpu_time_run(artifacts[key], args.runs, args.warmup, npy)
                cpu[key].append(c["cpu_p50_ms"])
                other[key].append(c["other_threads_cpu_share"])
        print(f"timing round {r + 1}/{args.rounds} done", flush=True)
    return {k: {"p50_ms": statistics.median(wall[k]), "rounds_p50_ms": wall[k], "cpu_p50_ms": statistics.median(cpu[k]),
                "rounds_cpu_p50_ms": cpu[k], "other_threads_cpu_share": max(other[k])}
            for k in artifacts if wall[k]}


def check_goals(result: dict[str, Any]) -> dict[str, Any]:
    rows = {(r["stage"], r["target"]): r for r in result["rows"]}
    out: dict[str, Any] = {"targets": GOALS}
    t = result["tucker"]
    out["mac_reduction"] = t["mac_reduction"]
    out["mac_reduction_met"] = t["mac_reduction"] >= GOALS["mac_reduction"]
    for target in sorted({k[1] for k in rows}):
        fp, tk = rows.get(("fp32", target)), rows.get(("tucker", target))
        if not fp or not tk:
            continue
        speed = tk.get("latency_ratio_vs_fp32")
        cpu_speed = tk.get("cpu_ratio_vs_fp32")
        drop = (fp["accuracy"] - tk["accuracy"]) * 100 if fp.get("accuracy") is not None and tk.get("accuracy") is not None else None
        out[target] = {
            "latency_speedup": speed,
            "latency_met": speed is not None and speed >= GOALS["latency_speedup"],
            "cpu_time_speedup": cpu_speed,
            "cpu_time_met": cpu_speed is not None and cpu_speed >= GOALS["latency_speedup"],
            "accuracy_drop_points": drop,
            "accuracy_met": drop is not None and drop <= GOALS["max_accuracy_drop_points"],
        }
    return out


def _f(x: Any, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def render_markdown(res: dict[str, Any]) -> str:
    from mobilec.passes.tucker import layers_markdown

    lines = [
        f"# Tucker-2 compression of `{res['model']}` on {res['data']['name']}",
        "",
        f"- command: `{res['command']}`",
        f"- machine: {res['machine'].get('note', MACHINE)} ({res['machine']['cpu']}, {res['machine']['cores']} cores visible)",
        f"- checkpoint: {res['checkpoint']['source']}",
        f"- test split: {res['data']['n_test']} images; accuracy = the exported artifact run in its own runtime",
        "- recipe passes, wall (CPU) seconds: " + ", ".join(
            f"{k} {v:.0f} s" + (f" ({res['pass_cpu_seconds'][k]:.0f} s)" if k in res.get("pass_cpu_seconds", {}) else "")
            for k, v in res["pass_seconds"].items()),
        f"- latency: 1 thread, {res['timing_settings']['runs']} runs x {res['timing_settings']['rounds']} interleaved "
        "rounds per artifact; p50 = median of the rounds' p50; ratio = fp32 p50 / row p50, same target, same run. "
        "Wall clock from the host profiler; CPU = CPU time of the inference thread (excludes time descheduled "
        "by other jobs on this shared host)",
        "",
        "| recipe | target | accuracy | eager float acc | params | MACs | size | wall p50 ms | speed-up | CPU p50 ms | CPU speed-up |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['recipe']} | {r['target']} | {_f(r.get('accuracy'), '.4f')} | {r['eager_accuracy']:.4f} | {r['params']:,} "
            f"| {r['macs'] / 1e6:.2f}M | {_f(r.get('size_bytes') and r['size_bytes'] / 1024, ',.0f')} KB "
            f"| {_f(r.get('latency_ms_p50'), '.3f')} | {_f(r.get('latency_ratio_vs_fp32'), '.2f')}x "
            f"| {_f(r.get('cpu_ms_p50'), '.3f')} | {_f(r.get('cpu_ratio_vs_fp32'), '.2f')}x |"
        )
    failed = [r for r in res["rows"] if r.get("accuracy") is None]
    lines += [""] + [f"- {r['recipe']} / {r['target']}: {r['accuracy_source']}" for r in failed]
    g = res["goals"]
    lines += ["", "## Goals", "",
              f"- MACs: {g['mac_reduction']:.2f}x fewer (goal >= {GOALS['mac_reduction']}x): "
              f"{'met' if g['mac_reduction_met'] else 'NOT met'}"]
    for target in ("executorch", "tflite", "onnx"):
        if target in g:
            t = g[target]
            lines.append(
                f"- {target}: latency {_f(t['latency_speedup'], '.2f')}x lower (goal >= {GOALS['latency_speedup']}x): "
                f"{'met' if t['latency_met'] else 'NOT met'} (CPU time {_f(t['cpu_time_speedup'], '.2f')}x: "
                f"{'met' if t['cpu_time_met'] else 'NOT met'}); accuracy drop {_f(t['accuracy_drop_points'], '.2f')} points "
                f"(goal <= {GOALS['max_accuracy_drop_points']}): {'met' if t['accuracy_met'] else 'NOT met'}"
            )
    ft = res.get("finetune") or {}
    lines += ["", "## Layers (tucker pass)", "",
              f"Before fine-tuning: eager accuracy {_f(res['tucker'].get('accuracy_after'), '.4f')}; after "
              f"{ft.get('n_train', '?')} training images x {len(ft.get('history', []))} epoch(s): "
              f"{_f(ft.get('accuracy_after'), '.4f')}.",
              ""]
    lines += layers_markdown(res["layers"])
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    raise SystemExit(main())
