"""Benchmark C2F meta-embeddings on MovieLens-100k: accuracy, embedding and artifact bytes, training time.

Rows (all LightGCN, d=64, 3 layers, BPR, Adam, early stop on validation Recall@20):

- ``lightgcn``: the full embedding table (the reference; trained once and cached);
- ``c2f``: recipe c2f (coarse then fine stage; the fine stage's tau is picked on validation from the recipe's grid);
- ``c2f-coarse``: the coarse stage of that same c2f run, exported as it is before the fine stage (recipe c2f-coarse,
  the same seed and the same served bytes): the paired ablation of the fine stage;
- ``c2f-coarse-dense`` (only when asked with ``--rows``): recipe c2f-coarse on its own with c1 = c1 + c2 rows
  (c2f's fine rows counted as dense rows);
- ``hash``: hashing-trick embeddings with c2f's codebook rows and non-zeros (same served bytes);
- ``lightgcn-d<k>``: a full table narrowed to the largest width whose bytes fit c2f's served bytes;
- ``c2f-scratch`` / ``c2f-scratch-coarse`` (only when asked with ``--rows``): c2f trained from a random start, as in the
  paper, and its coarse stage before the fine stage (the paired ablation in the paper's own setting).

Recall/NDCG are of the served form, i.e. what the exported on-device scorer computes; every
artifact is run in its real runtime (ExecuTorch, LiteRT) on every test user and must return
the eager top-20 ids. Results: ``bench/results/metaembed.json`` and ``.md``.

    python bench/metaembed.py                 # the full benchmark (an hour on 2 shared cores)
    python bench/metaembed.py --quick         # a 200-user slice, a few epochs: a smoke run
    python bench/metaembed.py --rows c2f,c2f-coarse --train-seed 1 --append   # a second training seed, same split

Every row has ``model`` = the recommender compressed (lightgcn), ``recipe``, ``name`` (the row's identity: a row of
the same name is replaced by ``--append``) and ``seed`` (the training seed; the data split always uses ``--seed``).
The page OUT.md is the prose written here plus the table block of ``mobilec compare --bench OUT.json``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import shlex
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "toolkit") not in sys.path:
    sys.path.insert(0, str(ROOT / "toolkit"))  # run from a checkout without installing


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="ml-100k", help="interaction data spec (default ml-100k)")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--cache", type=Path, default=None, help="trained full-table models (default: $MOBILEC_CACHE or ~/.cache/mobilec)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "metaembed", help="writes OUT.json and OUT.md")
    p.add_argument("--work", type=Path, default=None, help="artifact folder (default: OUT-artifacts)")
    p.add_argument("--rows", default="lightgcn,c2f-coarse,c2f,hash,lowdim", help="comma-separated subset of rows")
    p.add_argument("--targets", default="executorch,tflite")
    p.add_argument("--k", type=int, default=20, help="top-K of the on-device scorer")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on these small sparse graphs)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data split (and of the cached full-table model)")
    p.add_argument("--train-seed", type=int, default=None, help="seed of the compression passes (default: --seed)")
    p.add_argument("--quick", action="store_true", help="200-user slice, few epochs (smoke run; numbers meaningless)")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--render-only", action="store_true", help="rewrite OUT.md from OUT.json and exit")
    p.add_argument("--append", action="store_true", help="keep the rows already in OUT.json (a row of the same name is replaced)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render_only:
        import json

        write_page(args.out, json.loads(args.out.with_suffix(".json").read_text()))
        return 0
    import torch

    from mobilec.io import write_json_atomic
    from mobilec.passes.meta_embed import HashEmbed
    from mobilec.recipe import Recipe
    from mobilec.recsys import cache_dir, export_recommender, load_interactions, train_or_load_lightgcn
    from mobilec.recsys.lightgcn import BPRConfig
    from mobilec.recsys.metrics import evaluate_embeddings
    from mobilec.report import machine_description

    torch.set_num_threads(args.threads)
    command = "python bench/metaembed.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    data = load_interactions(args.data, seed=args.seed)
    if args.quick:
        data = data.subset(200, seed=args.seed)
    rows_wanted = [r.strip() for r in args.rows.split(",") if r.strip()]
    work = args.work or args.out.parent / f"{args.out.name}-artifacts"
    cache = args.cache or cache_dir()
    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    train_seed = args.seed if args.train_seed is None else args.train_seed
    suffix = "" if train_seed == args.seed else f"-seed{train_seed}"
    ref_cfg = BPRConfig(epochs=30 if args.quick else 600, seed=args.seed, threads=args.threads)
    quick_overrides = {"max_epochs": 10, "refresh_epochs": 5, "eval_every": 2, "patience": 2} if args.quick else {}

    full_bytes = data.n_entities * args.dim * 4
    result: dict[str, Any] = {
        "benchmark": "metaembed",
        "command": command,
        "machine": machine_description(),
        "data": data.describe(),
        "dim": args.dim,
        "layers": args.layers,
        "top_k": args.k,
        "full_table_bytes": full_bytes,
        "metrics": "served form (what the exported scorer computes); test split; full ranking over all items, "
                   "the user's train and validation items excluded",
        "rows": [],
    }
    if args.append and args.out.with_suffix(".json").is_file():
        import json

        previous = json.loads(args.out.with_suffix(".json").read_text())
        result["rows"] = previous.get("rows", [])
        result["commands"] = [*previous.get("commands", [previous.get("command")]), command]

    t0 = time.perf_counter()
    reference, ref_info = train_or_load_lightgcn(data, cache, dim=args.dim, layers=args.layers, cfg=ref_cfg, progress=args.progress)
    ref_seconds = ref_info["train_seconds"] if not ref_info["cached"] else ref_info.get("train_seconds")
    print(f"reference LightGCN: {'cached' if ref_info['cached'] else 'trained'} ({time.perf_counter() - t0:.0f} s)", flush=True)

    def record(name: str, recipe: str, model: Any, summary: dict[str, Any], train_seconds: float | None, notes: str = "",
               config: str = "", seed: int = train_seed) -> None:
        from mobilec.recsys import serving_form_of

        form = serving_form_of(model, data)
        served = evaluate_embeddings(*form.embeddings(), data, "test")
        propagated = evaluate_embeddings(*model.final_embeddings(), data, "test")
        out = export_recommender(model, data, work / name, targets, k=args.k)
        arts = {a["target"]: a for a in out["artifacts"]}
        row = {
            "model": "lightgcn",
            "recipe": recipe,
            "name": name,
            "config": config,
            "seed": seed,
            "recall@20": served["recall@20"],
            "ndcg@20": served["ndcg@20"],
            "recall@10": served["recall@10"],
            "ndcg@10": served["ndcg@10"],
            "recall@50": served["recall@50"],
            "ndcg@50": served["ndcg@50"],
            "model_recall@20": propagated["recall@20"],
            "model_ndcg@20": propagated["ndcg@20"],
            "embedding_bytes": form.embedding_bytes(),
            "embedding_fraction_of_full": form.embedding_bytes() / full_bytes,
            "trained_embedding_bytes": model.embedding_bytes(),
            "serving": out["serving"],
            "artifact_bytes": {t: a["size_bytes"] for t, a in arts.items()},
            "verification": {t: a["verification"] | {"status": a["status"]} for t, a in arts.items()},
            "delegation": {t: a.get("delegation") for t, a in arts.items()},
            "artifact_layers": {t: a.get("layers") for t, a in arts.items()},
            "export_failures": out["failures"],
            "train_seconds": train_seconds,
            "summary": summary,
            "machine": result["machine"],
            "command": command,
            "notes": notes,
        }
        result["rows"] = [r for r in result["rows"] if r["name"] != name] + [row]
        print(f"{name:>16}: recall@20 {row['recall@20']:.4f} ndcg@20 {row['ndcg@20']:.4f} (propagated {row['model_recall@20']:.4f}) "
              f"embedding {row['embedding_bytes']} B ({row['embedding_fraction_of_full']:.3f} of full) artifacts {row['artifact_bytes']}"
              f" train {train_seconds if train_seconds is None else round(train_seconds)} s", flush=True)
        write_json_atomic(args.out.with_suffix(".json"), result)
        write_page(args.out, result)

    if "lightgcn" in rows_wanted:
        record("lightgcn", "lightgcn", reference, {"reference_info": {k: v for k, v in ref_info.items() if k != "train"}}, ref_seconds,
               "full table; the artifact stores the final propagated embeddings (serving shortcut, exact)"
               + (" ; training time from the cached run" if ref_info["cached"] else ""), config=f"d={args.dim}", seed=args.seed)

    c2f = Recipe.load("c2f")
    coarse_pass, fine_pass = c2f.passes
    if quick_overrides:
        coarse_pass = dataclasses.replace(coarse_pass, **quick_overrides)
        fine_pass = dataclasses.replace(fine_pass, **{k: v for k, v in quick_overrides.items() if k != "refresh_epochs"})

    if "c2f" in rows_wanted or "c2f-coarse" in rows_wanted:
        model, ctx, secs = run_passes([coarse_pass], reference, data, args, work / f"c2f{suffix}", train_seed)
        cs = ctx.report.passes[0].summary
        coarse_cfg = f"c1={coarse_pass.c1}, t={coarse_pass.t}, select={coarse_pass.select}"
        if "c2f-coarse" in rows_wanted:  # c2f's own coarse stage: the paired ablation of the fine stage
            record(f"c2f-coarse{suffix}", "c2f-coarse", copy.deepcopy(model), _lean(cs), secs,
                   "the coarse stage of the c2f run below (same seed, same served bytes), before its fine stage", config=coarse_cfg)
        if "c2f" in rows_wanted:
            t1 = time.perf_counter()
            model = run_passes([fine_pass], model, data, args, work / f"c2f{suffix}", train_seed, ctx=ctx)[0]
            s = ctx.report.passes[-1].summary
            grid = ", ".join(f"{t['tau_given']:g}" for t in s["tau_trials"])
            rel = " x the init's median |value|" if fine_pass.tau_relative else ""
            record(f"c2f{suffix}", "c2f", model, _lean(s) | {"coarse": _lean(cs)}, secs + time.perf_counter() - t1,
                   f"coarse stage = row c2f-coarse{suffix}; fine c2={fine_pass.c2}: tau {s['tau']:.4g} (picked on validation from "
                   f"[{grid}]{rel}), {s['fine_nonzeros']} non-zeros ({s['fine_codebook_bytes']} B) + S2 {s['s2_bytes']} B in the "
                   "trained model", config=f"{coarse_cfg}; c2={fine_pass.c2}, k2={fine_pass.k2}, tau={s['tau']:.4g}")
    if "c2f-scratch" in rows_wanted or "c2f-scratch-coarse" in rows_wanted:  # the paper's start: random E_c, no warm start
        scratch = {"init": "scratch", "min_epochs": 40, "max_epochs": 200}
        sc = dataclasses.replace(coarse_pass, **scratch)
        if quick_overrides:
            sc = dataclasses.replace(sc, **quick_overrides, init="scratch", min_epochs=0)
        scratch_cfg = f'c1={sc.c1}, t={sc.t}, select={sc.select}, init="scratch", min_epochs={sc.min_epochs}, max_epochs={sc.max_epochs}'
        model, ctx, secs = run_passes([sc], reference, data, args, work / f"c2f-scratch{suffix}", train_seed)
        cs = ctx.report.passes[0].summary
        if "c2f-scratch-coarse" in rows_wanted:  # the paired ablation of the fine stage, from the paper's start
            record(f"c2f-scratch-coarse{suffix}", "c2f-coarse", copy.deepcopy(model), _lean(cs), secs,
                   "the coarse stage of the c2f-scratch run below (random start, same seed, same served bytes), before its "
                   "fine stage", config=scratch_cfg)
        if "c2f-scratch" in rows_wanted:
            t1 = time.perf_counter()
            model = run_passes([fine_pass], model, data, args, work / f"c2f-scratch{suffix}", train_seed, ctx=ctx)[0]
            s = ctx.report.passes[-1].summary
            record(f"c2f-scratch{suffix}", "c2f", model, _lean(s) | {"coarse": _lean(cs)}, secs + time.perf_counter() - t1,
                   f"as c2f, but the coarse stage starts at random as in the paper (row c2f-scratch-coarse{suffix}); fine "
                   f"c2={fine_pass.c2}: tau {s['tau']:.4g}, {s['fine_nonzeros']} non-zeros",
                   config=f"{scratch_cfg}; c2={fine_pass.c2}, k2={fine_pass.k2}, tau={s['tau']:.4g}")
    if "c2f-coarse-dense" in rows_wanted:
        same_budget = dataclasses.replace(coarse_pass, c1=coarse_pass.c1 + fine_pass.c2)
        model, ctx, secs = run_passes([same_budget], reference, data, args, work / f"c2f-coarse-dense{suffix}", train_seed)
        record(f"c2f-coarse-dense{suffix}", "c2f-coarse", model, _lean(ctx.report.passes[-1].summary), secs,
               f"c1 = {coarse_pass.c1} + {fine_pass.c2}: the coarse and (dense-counted) fine codebook rows of c2f",
               config=f"c1={same_budget.c1}, t={same_budget.t}, select={same_budget.select}")
    if "hash" in rows_wanted:
        train_fields = {f: getattr(coarse_pass, f) for f in _TRAIN_FIELDS}  # quick: already the quick settings
        hp = HashEmbed(c=coarse_pass.c1, t=coarse_pass.t, **train_fields)
        model, ctx, secs = run_passes([hp], reference, data, args, work / f"hash{suffix}", train_seed)
        record(f"hash{suffix}", "hash_embed", model, _lean(ctx.report.passes[-1].summary), secs,
               "hashing trick: t seeded-hash rows of a shared table, weights 1/t while training; served form fitted like c2f's",
               config=f"c={hp.c}, t={hp.t}")
    if "lowdim" in rows_wanted:
        c2f_row = next((r for r in result["rows"] if r["name"] == "c2f"), None)
        budget = c2f_row["embedding_bytes"] if c2f_row else full_bytes // 10
        dim = max(1, budget // (data.n_entities * 4))
        t1 = time.perf_counter()
        low, low_info = train_or_load_lightgcn(data, cache, dim=dim, layers=args.layers, cfg=ref_cfg, progress=args.progress)
        secs = low_info["train_seconds"]
        record(f"lightgcn-d{dim}", "lightgcn", low, {"cached": low_info["cached"], "wall_seconds": time.perf_counter() - t1},
               secs, f"full table of width {dim}: the widest whose bytes fit c2f's served bytes ({budget} B)", config=f"d={dim}",
               seed=args.seed)

    print(f"wrote {args.out.with_suffix('.json')} and .md", flush=True)
    return 0


_TRAIN_FIELDS = ("lr", "batch_size", "reg", "eval_every", "patience", "max_epochs", "max_minutes", "threads",
                 "serve_fit_iters", "serve_tune_epochs", "min_epochs")


def run_passes(passes: list[Any], reference: Any, data: Any, args: argparse.Namespace, workdir: Path, seed: int,
               ctx: Any = None) -> tuple[Any, Any, float]:
    """Apply ``passes`` to a copy of ``reference`` (or, given ``ctx`` of an earlier call, go on with that model)."""
    from mobilec.context import Context
    from mobilec.report import RunReport

    if ctx is None:
        report = RunReport(recipe="bench", model={"name": "lightgcn"}, data=data.describe())
        ctx = Context(data=data, workdir=workdir, report=report, example_inputs=(), teacher=reference, seed=seed,
                      show_progress=args.progress)
        model = copy.deepcopy(reference)
    else:
        model = reference
    t0 = time.perf_counter()
    for p in passes:
        if args.progress:
            p = dataclasses.replace(p, progress=True)
        model = p.apply(model, ctx)
    seconds = time.perf_counter() - t0  # every pass in full: training, refreshes, serving-form fit and tuning
    print(f"  passes {[p.name for p in passes]}: {seconds:.0f} s", flush=True)
    return model, ctx, seconds


def _lean(summary: dict[str, Any]) -> dict[str, Any]:
    drop = {"phases", "fine", "train"}
    out = {k: v for k, v in summary.items() if k not in drop}
    for key in ("phases", "fine", "train"):
        if key in summary:  # keep the outcome of each phase, not its epoch history
            val = summary[key]
            if isinstance(val, dict) and "history" in val:
                out[key] = {k: v for k, v in val.items() if k != "history"}
            elif isinstance(val, dict):
                out[key] = {n: ({k: v for k, v in ph.items() if k != "history"} if isinstance(ph, dict) else ph) for n, ph in val.items()}
    return out


def write_page(out: Path, res: dict[str, Any]) -> None:
    """OUT.md: the prose and tables below, then the block ``mobilec compare --bench OUT.json`` renders (its defaults)."""
    import os

    from mobilec.bench_render import regenerate_command, render_file
    from mobilec.io import write_text_atomic

    write_text_atomic(out.with_suffix(".md"), render(res))
    path = out.with_suffix(".json").resolve()
    shown = Path(os.path.relpath(path, ROOT)) if path.is_relative_to(ROOT) else path  # as `--check` is run from the root
    render_file(path, command=regenerate_command(shown, {}, None))


def _row_name(r: dict[str, Any]) -> str:
    return str(r.get("name", r["model"]))


def render(res: dict[str, Any]) -> str:
    commands = res.get("commands") or [res["command"]]
    lines = [
        "# C2F meta-embeddings on MovieLens-100k",
        "",
        *[f"- command: `{c}`" for c in commands],
        f"- machine: {res['machine'].get('cpu')} ({res['machine'].get('cores')} cores, shared with other jobs)",
        f"- data: {res['data']['name']} ({res['data']['positives']} as positives), {res['data']['n_users']} users, "
        f"{res['data']['n_items']} items, split {res['data']['split']} (seed {res['data']['split_seed']}); `seed` below is "
        "the training seed of the compression passes (the split and the full-table model are the same for every row)",
        f"- LightGCN d={res['dim']}, {res['layers']} layers; full embedding table {res['full_table_bytes']} bytes",
        f"- metrics: {res['metrics']}; top-{res['top_k']} scorer verified in ExecuTorch and LiteRT on every test user",
        "- serving: the LightGCN propagation is precomputed at export for every row. `lightgcn` stores the propagated "
        "table (its full bytes); the other rows store no table, only a codebook plus per-entity indices and fp16 weights "
        "fitted to the propagated embeddings, and the scorer composes every embedding from them. The cost of that fit is "
        "`recall@20 propagated` (the trained model) against `recall@20` (what the device computes). For c2f the fine "
        "codebook and S2 are part of the trained model (`trained bytes`); the served form is fitted on the propagated, "
        "bridged coarse codebook, so it has the coarse stage's served bytes.",
        "",
        "| row | recipe | config | seed | recall@20 | ndcg@20 | recall@20 propagated | embedding bytes | of full | trained bytes "
        "| .pte bytes | .tflite bytes | identical top-20 (pte / tflite) | train s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in res["rows"]:
        ver = r["verification"]
        ident = " / ".join(f"{ver[t]['identical_topk']}/{ver[t]['users']}" if t in ver else "-" for t in ("executorch", "tflite"))
        ab = r["artifact_bytes"]
        secs = "-" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}"
        lines.append(
            f"| {_row_name(r)} | {r['recipe']} | {r.get('config', '')} | {r.get('seed', '-')} | {r['recall@20']:.4f} | {r['ndcg@20']:.4f} "
            f"| {r['model_recall@20']:.4f} | {r['embedding_bytes']} | {r['embedding_fraction_of_full']:.4f} "
            f"| {r.get('trained_embedding_bytes', '-')} | {ab.get('executorch', '-')} | {ab.get('tflite', '-')} | {ident} | {secs} |"
        )
    lines.append("")
    ref = next((r for r in res["rows"] if _row_name(r) == "lightgcn"), None)
    if ref:
        lines.append("Recall@20 relative to the full table: " + ", ".join(
            f"{_row_name(r)} {r['recall@20'] / ref['recall@20']:.3f}" for r in res["rows"] if r is not ref) + ".")
        lines.append("")
    lines += _fine_stage_section(res["rows"])
    for r in res["rows"]:
        errs = ", ".join(f"{t} {v['max_abs_score_error']:.2e}" for t, v in r["verification"].items())
        lines.append(f"- **{_row_name(r)}**: {r['notes']}; max abs score error {errs or '-'}")
    lines.append("")
    return "\n".join(lines)


def _is_scratch(name: str) -> bool:
    """A row of the random-start runs (the paper's start) rather than the recipes' warm start."""
    return name.startswith("c2f-scratch")


def _coarse_name(fine: str) -> str:
    """The row name of a c2f row's own coarse stage: c2f-seed1 -> c2f-coarse-seed1, c2f-scratch -> c2f-scratch-coarse."""
    if _is_scratch(fine):
        return "c2f-scratch-coarse" + fine[len("c2f-scratch"):]
    return fine.replace("c2f", "c2f-coarse", 1)


def _start_of(name: str) -> str:
    return "random (paper)" if _is_scratch(name) else "warm (full table)"


def _fine_stage_section(rows: list[dict[str, Any]]) -> list[str]:
    """c2f against its own coarse stage (same run, same seed), and the tau trials behind it (validation)."""
    by_name = {_row_name(r): r for r in rows}
    pairs = [(r, by_name.get(_coarse_name(_row_name(r)))) for r in rows
             if r["recipe"] == "c2f" and "tau_trials" in r["summary"]]
    pairs = sorted(((f, c) for f, c in pairs if c is not None),
                   key=lambda fc: (_is_scratch(_row_name(fc[0])), int(fc[0].get("seed") or 0)))
    if not pairs:
        return []
    out = ["## The fine stage against its own coarse stage", "",
           "Each c2f row and its coarse-stage row of the same seed come from one run: the coarse row is the model after "
           "the coarse stage, the c2f row the same model after the fine stage. `start` is how the coarse stage began: warm "
           "(fitted to the full-table model, the recipes' default) or random (the paper's start, rows c2f-scratch). "
           "Validation Recall@20 is of the propagated model (what tau is picked on); test Recall@20 of the served form.", "",
           "| start | seed | tau trials (given -> absolute: non-zeros, best validation) | tau kept | fine non-zeros | fine codebook B "
           "| validation coarse -> fine | test coarse -> fine | difference |",
           "|---|---:|---|---:|---:|---:|---|---|---:|"]
    diffs: dict[str, list[float]] = {}
    for f, c in pairs:
        s = f["summary"]
        trials = "; ".join(f"{t['tau_given']:g} -> {t['tau']:.3g}: {t['nonzeros']}, {t['best_valid']:.4f}" for t in s["tau_trials"])
        d = f["recall@20"] - c["recall@20"]
        start = _start_of(_row_name(f))
        diffs.setdefault(start, []).append(d)
        out.append(f"| {start} | {f.get('seed', '-')} | {trials} | {s['tau']:.4g} | {s['fine_nonzeros']} | {s['fine_codebook_bytes']} "
                   f"| {s['valid_recall_coarse']:.4f} -> {s['valid_recall_fine']:.4f} | {c['recall@20']:.4f} -> {f['recall@20']:.4f} "
                   f"| {d:+.4f} |")
    out.append("")
    for start, ds in diffs.items():
        out.append(f"Test Recall@20, c2f minus its coarse stage, {start} start: mean {sum(ds) / len(ds):+.4f} over {len(ds)} "
                   f"seed(s) (range {min(ds):+.4f} .. {max(ds):+.4f}; higher in {sum(d > 0 for d in ds)} of {len(ds)}).")
    out.append("")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
