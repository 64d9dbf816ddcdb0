"""``mobilec export`` for recommenders: LightGCN on interaction data, a recipe's passes, the on-device scorer.

``mobilec export --recipe c2f --model lightgcn --data ml-100k`` (or ``--data interactions:PATH.tsv``):

1. loads the interactions (fixed seeded per-user split, every interaction a positive);
2. the full-table LightGCN: ``--weights`` (its state_dict), else the cached model for this split
   and settings, else trained (BPR, early stop on validation; ~30 min on ML-100k, 2 cores);
3. applies the recipe's passes (none for recipe ``lightgcn``);
4. exports the top-K scorer to each target, runs it on every test user in the real runtime and
   keeps it only when its top-K ids match the eager scorer (the recipe's ``[verify]``);
5. writes report.json/.md: Recall/NDCG@{10,20,50}, the embedding memory in bytes (full table,
   served form, budget) and what the artifact stores.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from mobilec.errors import MobilecError

RECSYS_MODELS = ("lightgcn",)
TOP_K = 20


RECSYS_PASSES = ("c2f_coarse", "c2f_fine", "hash_embed")


def is_recsys_request(rec: Any, model: str | None, data: str | None) -> bool:
    """True when the recipe, the model or the data names a recommender run."""
    if rec.name == "lightgcn" or any(p.name in RECSYS_PASSES for p in rec.passes):
        return True
    return (model or "") in RECSYS_MODELS or (bool(data) and (data == "ml-100k" or str(data).startswith("interactions:")))


def export_recommender_run(
    rec: Any,
    *,
    model: str | None,
    weights: Path | None,
    data: str | None,
    targets: tuple[str, ...],
    out_dir: Path,
    seed: int,
    show_progress: bool,
    command: str,
) -> Any:
    """Run ``rec`` on a LightGCN recommender; returns :class:`mobilec.api.RunResult`."""
    from mobilec.api import RunResult, run_passes
    from mobilec.context import Context
    from mobilec.io import load_state_dict, save_state_dict_atomic
    from mobilec.recsys import (
        build_lightgcn,
        cache_dir,
        evaluate_recommender,
        export_recommender,
        load_interactions,
        serving_form_of,
        train_or_load_lightgcn,
    )
    from mobilec.recsys.lightgcn import BPRConfig
    from mobilec.report import RunReport

    data = data or "ml-100k"  # the default data set of recommender recipes
    if (model or "lightgcn") not in RECSYS_MODELS:
        raise MobilecError(f"interaction data needs a recommender model, got --model {model}", hint="use --model lightgcn")
    if not (data == "ml-100k" or data.startswith("interactions:")):
        raise MobilecError(f"--model lightgcn needs interaction data, got --data {data}",
                           hint="use --data ml-100k or --data interactions:PATH.tsv")
    bad = [t for t in targets if t not in ("executorch", "tflite")]
    if bad:
        raise MobilecError(f"the recommender scorer exports to executorch and tflite, not {', '.join(bad)}",
                           hint="use --target executorch,tflite")
    inter = load_interactions(data, seed=seed)
    dim, layers = 64, 3
    if weights is not None:
        reference = build_lightgcn(inter, dim=dim, layers=layers, seed=seed)
        state = load_state_dict(Path(weights))
        if set(state) != {"embedding"} or tuple(state["embedding"].shape) != tuple(reference.embedding.shape):
            shapes = {k: tuple(v.shape) for k, v in state.items()}
            raise MobilecError(f"{weights} is not a LightGCN state_dict for this data: {shapes}",
                               hint=f"expected {{'embedding': {tuple(reference.embedding.shape)}}} (users + items x {dim})")
        reference.load_state_dict(state)
        ref_info: dict[str, Any] = {"source": str(weights), "cached": False}
    else:
        reference, ref_info = train_or_load_lightgcn(inter, cache_dir(), dim=dim, layers=layers,
                                                     cfg=BPRConfig(epochs=600, seed=seed), progress=show_progress)
    reference.eval()
    report = RunReport(
        recipe=rec.name,
        model=reference.config() | {"name": "lightgcn", "params": reference.embedding.numel(),
                                    "source": ref_info.get("source", "cached" if ref_info.get("cached") else "trained")},
        data=inter.describe() | {"spec": data},
        command=command,
    )
    report.recipe_dict = rec.to_dict()  # type: ignore[attr-defined]
    ctx = Context(data=inter, workdir=out_dir, report=report, example_inputs=(torch.tensor([0]),),
                  teacher=copy.deepcopy(reference), seed=seed, show_progress=show_progress)
    before = evaluate_recommender(reference, inter, "test")
    compressed = run_passes(rec, reference, ctx)
    after = evaluate_recommender(compressed, inter, "test")
    form = serving_form_of(compressed, inter)
    save_state_dict_atomic(form.state_dict(), out_dir / "compressed.pt")
    report.accuracy["original"] = before["served"]["recall@20"]  # the keys the run summary prints
    report.accuracy["compressed_eager"] = after["served"]["recall@20"]
    for key in ("recall@20", "ndcg@20"):
        report.accuracy[f"full-table {key}"] = before["served"][key]
        report.accuracy[f"served {key}"] = after["served"][key]
    report.notes.append("recommender: 'original' and 'compressed_eager' accuracy are Recall@20 on the test split (full ranking, "
                        "train and validation items excluded) of the full table and of the served form")
    report.notes += memory_notes(form, inter, dim, rec)
    if "c2f_fine" in ctx.extras:
        report.notes.append(fine_stage_note(ctx.extras["c2f_fine"], rec))
    out = export_recommender(compressed, inter, out_dir, targets, k=TOP_K, verify=rec.verify)
    for record in out["artifacts"]:
        v = record["verification"]  # the columns the report's artifact table shows
        v["top1_agreement"] = v["identical_topk"] / max(v["users"], 1)
        v["max_abs_error"] = v["max_abs_score_error"]
        report.artifacts.append(record)
    report.failures += out["failures"]
    report.notes.append(f"verification: top-{TOP_K} ids of every test user ({len(inter.eval_users('test'))}) in the real runtime "
                        "against the eager scorer; 'top-1 agreement' is the fraction of users with identical top-K ids")
    report.write(out_dir)
    ok = not out["failures"] and len(out["artifacts"]) == len(targets)
    return RunResult(out_dir=out_dir, report=report, ok=ok, artifacts=out["artifacts"])


def fine_stage_note(summary: dict[str, Any], rec: Any) -> str:
    """The report's statement of what the C2F fine stage kept: threshold, non-zeros and their bytes."""
    trials = summary.get("tau_trials", [])
    picked = (f" (picked on validation Recall@20 from {len(trials)} trials: "
              + ", ".join(f"tau {t['tau']:.4g} -> {t['best_valid']:.4f}, {t['nonzeros']} non-zeros" for t in trials) + ")"
              if len(trials) > 1 else "")
    budgets = [getattr(p, "budget_bytes", None) for p in rec.passes]
    budget = next((b for b in budgets if b is not None), None)
    return (f"fine stage: tau {summary['tau']:.4g}{picked}; the fine codebook keeps {summary['fine_nonzeros']} non-zeros "
            f"({summary['fine_codebook_bytes']} bytes as CSR) and S2 takes {summary['s2_bytes']} bytes; the trained model holds "
            f"{summary['trained_embedding_bytes']} bytes of embeddings"
            + (f" (budget {budget} bytes)" if budget is not None else "")
            + f", the served form {summary['served_embedding_bytes']} (it is fitted on the propagated, bridged coarse codebook, "
            f"so the fine codebook reaches the device through it); validation Recall@20 {summary['valid_recall_coarse']:.4f} "
            f"after the coarse stage, {summary['valid_recall_fine']:.4f} after the fine stage")


def memory_notes(form: Any, data: Any, dim: int, rec: Any) -> list[str]:
    """The report's statement of the embedding memory (bytes) and of what the artifact stores."""
    full = data.n_entities * dim * 4
    served = form.embedding_bytes()
    budgets = [getattr(p, "budget_bytes", None) for p in rec.passes]
    budget = next((b for b in budgets if b is not None), None)
    notes = [
        f"embedding memory: full table {full} bytes ({data.n_users} users + {data.n_items} items x {dim} x fp32); "
        f"served {served} bytes ({served / full:.4f} of the table); budget "
        + (f"{budget} bytes" if budget is not None else "not set (budget_bytes in the recipe)"),
    ]
    if form.kind == "table":
        notes.append("the artifact stores the final propagated embeddings of every user and item (serving shortcut: exact, "
                     f"no graph on the device), {served} bytes")
    else:
        mem = form.memory()
        fit = form.fit or {}
        err = f" (relative error {fit['relative_error']:.3f})" if "relative_error" in fit else ""
        notes.append(
            f"the artifact stores no embedding table: a {form.codebook.shape[0]}-row fp32 codebook ({mem['codebook']} bytes) and, "
            f"per user/item, {form.index.shape[1]} codebook indices ({mem['index']} bytes) and fp16 weights ({mem['weight']} bytes); "
            "it composes every embedding from them. The LightGCN propagation is precomputed at export: the composed form is "
            f"fitted to the propagated embeddings{err}; storing the propagated embeddings instead would cost {full} bytes, "
            "the full table")
    return notes
