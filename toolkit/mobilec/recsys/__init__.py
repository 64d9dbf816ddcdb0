"""On-device recommendation: interaction data, LightGCN, C2F meta-embeddings, on-device scoring export.

The recipe flow for recommenders (what ``mobilec.api`` calls):

>>> data = load_interactions("ml-100k")                                    # doctest: +SKIP
>>> model, info = train_or_load_lightgcn(data, cache_dir())                # doctest: +SKIP
>>> # ... passes (c2f_coarse, c2f_fine, hash_embed) with ctx.data = data ...
>>> records = export_recommender(compressed, data, out_dir, ("executorch", "tflite"))  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mobilec.recsys.data import InteractionData, cache_dir, from_pairs, load_interactions, synthetic_interactions
from mobilec.recsys.lightgcn import BPRConfig, LightGCN, build_lightgcn, train_lightgcn, train_or_load_lightgcn
from mobilec.recsys.metrics import evaluate_embeddings, rank_metrics

__all__ = [
    "BPRConfig",
    "InteractionData",
    "LightGCN",
    "build_lightgcn",
    "cache_dir",
    "evaluate_embeddings",
    "evaluate_recommender",
    "export_recommender",
    "from_pairs",
    "load_interactions",
    "rank_metrics",
    "serving_form_of",
    "synthetic_interactions",
    "train_lightgcn",
    "train_or_load_lightgcn",
]


def serving_form_of(model: Any, data: Any | None = None) -> Any:
    """The form the device stores: the one a pass fitted (``model.serving``), else the model's own."""
    form = getattr(model, "serving", None)
    return form if form is not None else model.serving_form(data)


def evaluate_recommender(model: Any, data: Any, split: str = "test") -> dict[str, Any]:
    """Recall/NDCG@{10,20,50} of the model's propagated embeddings and of its served form."""
    form = serving_form_of(model, data)
    return {
        "model": evaluate_embeddings(*model.final_embeddings(), data, split),
        "served": evaluate_embeddings(*form.embeddings(), data, split),
        "served_embedding_bytes": form.embedding_bytes(),
    }


def export_recommender(
    model: Any,
    data: Any,
    out_dir: Path | str,
    targets: tuple[str, ...] = ("executorch", "tflite"),
    *,
    k: int = 20,
    stem: str = "model",
    verify_users: Any = None,
    verify: Any = None,
) -> dict[str, Any]:
    """Export the on-device scorer of ``model`` to each target and verify it on every test user.

    Returns ``{"serving": form.describe(), "artifacts": [record...], "failures": [...]}``; each
    record is ``Artifact.to_dict()`` plus ``verification`` (identical top-K ids on every user,
    max abs score error) and ``status``. ``verify`` (a recipe's ``VerifySpec``) sets the bar:
    the fraction of users with identical top-K ids must reach ``min_top1_agreement`` (default
    1.0: every user) and the score error stay within ``max_abs_error`` when set. An artifact
    that fails is removed and listed in ``failures``.
    """
    from mobilec.recsys.scoring import export_scoring, verify_scoring

    out_dir = Path(out_dir)
    form = serving_form_of(model, data)
    module, artifacts, failures = export_scoring(form, out_dir, k=k, targets=targets, stem=stem)
    users = list(data.eval_users("test")) if verify_users is None else list(verify_users)
    records = []
    for art in artifacts:
        rec = art.to_dict()
        v = verify_scoring(art, module, users)
        rec["verification"] = v
        rec["embedding_bytes"] = form.embedding_bytes()
        min_agree = getattr(verify, "min_top1_agreement", 1.0)
        max_err = getattr(verify, "max_abs_error", None)
        problems = []
        if v["users"] and v["identical_topk"] / v["users"] < min_agree:
            problems.append(f"top-K ids differ on {v['users'] - v['identical_topk']} of {v['users']} users "
                            f"(first: {v['mismatched_users'][:5]}; required identical on {min_agree:.0%})")
        if max_err is not None and v["max_abs_score_error"] > max_err:
            problems.append(f"max abs score error {v['max_abs_score_error']:.3g} > {max_err:g}")
        v["passed"] = not problems
        if not problems:
            rec["status"] = "verified"
        else:
            Path(art.path).unlink(missing_ok=True)
            rec["status"] = "rejected: " + "; ".join(problems)
            failures.append({"target": art.target, "error": "verification failed: " + "; ".join(problems)})
        records.append(rec)
    return {"serving": form.describe(), "artifacts": records, "failures": failures, "top_k": k}
