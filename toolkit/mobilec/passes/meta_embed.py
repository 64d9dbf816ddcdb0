"""C2F meta-embedding passes (coarse, fine) and the hashing-trick baseline, for LightGCN recommenders.

The input model is a full-table :class:`mobilec.recsys.lightgcn.LightGCN` (its dim and layer
count are kept; it is also the reference the report compares with); ``ctx.data`` is a
:class:`mobilec.recsys.data.InteractionData`. Each pass trains from the interaction data, fits
the on-device serving form (codebook + per-entity index/weight, see
:mod:`mobilec.recsys.scoring`) and records model and served metrics plus the memory in bytes.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from mobilec.context import Context
from mobilec.errors import MobilecError
from mobilec.passes.base import Pass
from mobilec.registry import register_pass


def _require_data(ctx: Context, name: str) -> Any:
    from mobilec.recsys.data import InteractionData

    if not isinstance(ctx.data, InteractionData):
        raise MobilecError(
            f"pass {name!r} needs interaction data, got {type(ctx.data).__name__}",
            hint="use --data ml-100k or --data interactions:PATH.tsv with --model lightgcn",
        )
    return ctx.data


def _full_table_bytes(data: Any, dim: int) -> int:
    return (data.n_users + data.n_items) * dim * 4


def _check_budget(budget: int | None, served_bytes: int, data: Any, dim: int, name: str, knob: str) -> None:
    """The budget (bytes of the served embeddings) must be below the full table and hold the configuration."""
    if budget is None:
        return
    full = _full_table_bytes(data, dim)
    if budget <= 0:
        raise MobilecError(f"pass {name!r}: budget_bytes = {budget} must be positive")
    if budget >= full:
        raise MobilecError(
            f"pass {name!r}: budget_bytes = {budget} is not smaller than the full embedding table ({full} bytes)",
            hint=f"give a budget below {full} bytes, or use the uncompressed model",
        )
    if served_bytes > budget:
        raise MobilecError(
            f"pass {name!r}: the configuration needs {served_bytes} bytes of embeddings, over budget_bytes = {budget}",
            hint=f"lower {knob} or raise budget_bytes",
        )


def composed_bytes(data: Any, rows: int, t: int, dim: int) -> int:
    """Bytes of a served composed form: fp32 codebook + int16/int32 index + fp16 weight per non-zero."""
    from mobilec.recsys.meta import assignment_bytes

    return rows * dim * 4 + assignment_bytes(data.n_users + data.n_items, t, rows)


@dataclass(frozen=True, kw_only=True)
class _TrainParams(Pass):
    lr: float = 1e-3
    batch_size: int = 2048
    reg: float = 1e-4
    eval_every: int = 5
    patience: int = 6
    max_epochs: int = 400
    min_epochs: int = 0
    max_minutes: float | None = None
    threads: int | None = 1
    budget_bytes: int | None = None
    serve_fit_iters: int = 10
    serve_tune_epochs: int = 0
    progress: bool = False

    def _cfg(self, ctx: Context, *, epochs: int | None = None, seed_offset: int = 0, min_epochs: int | None = None,
             eval_initial: bool = True) -> Any:
        from mobilec.recsys.lightgcn import BPRConfig

        return BPRConfig(epochs=epochs or self.max_epochs, lr=self.lr, batch_size=self.batch_size, reg=self.reg,
                         eval_every=self.eval_every, patience=self.patience, seed=ctx.seed + seed_offset, threads=self.threads,
                         max_seconds=None if self.max_minutes is None else self.max_minutes * 60,
                         min_epochs=self.min_epochs if min_epochs is None else min_epochs, eval_initial=eval_initial)

    def _serve(self, model: nn.Module, data: Any, ctx: Context) -> tuple[Any, dict[str, Any]]:
        """Fit (and optionally BPR-tune) the served composed form; attach it to the model."""
        form = model.serving_form(data, iters=self.serve_fit_iters)
        info: dict[str, Any] = {}
        if self.serve_tune_epochs > 0:
            from mobilec.recsys.scoring import tune_composed

            form, info = tune_composed(form, data, self._cfg(ctx, epochs=self.serve_tune_epochs, seed_offset=7, min_epochs=0),
                                       progress=self.progress and ctx.show_progress)
        model.serving = form
        return form, info

    def _summary(self, model: nn.Module, reference: nn.Module, form: Any, data: Any) -> dict[str, Any]:
        from mobilec.recsys.metrics import evaluate_embeddings

        model_m = evaluate_embeddings(*model.final_embeddings(), data, "test")
        served_m = evaluate_embeddings(*form.embeddings(), data, "test")
        ref_m = evaluate_embeddings(*reference.final_embeddings(), data, "test") if hasattr(reference, "final_embeddings") else {}
        full = _full_table_bytes(data, model.dim)
        out: dict[str, Any] = {
            "full_table_bytes": full,
            "trained_embedding_bytes": model.embedding_bytes(),
            "served_embedding_bytes": form.embedding_bytes(),
            "served_fraction_of_full": form.embedding_bytes() / full,
            "budget_bytes": self.budget_bytes,
            "model_test": model_m,
            "served_test": served_m,
            "reference_test": ref_m,
            "recall@20": served_m["recall@20"],
            "ndcg@20": served_m["ndcg@20"],
            "model_recall@20": model_m["recall@20"],
            "reference_recall@20": ref_m.get("recall@20"),
            "serving_form": form.describe(),
        }
        if ref_m:
            out["served_recall_vs_reference"] = served_m["recall@20"] / max(ref_m["recall@20"], 1e-12)
        return out


def _reference_dims(model: nn.Module, name: str) -> tuple[int, int]:
    if not (hasattr(model, "dim") and hasattr(model, "layers") and hasattr(model, "forward_all")):
        raise MobilecError(
            f"pass {name!r} compresses a LightGCN recommender, got {type(model).__name__}",
            hint="use --model lightgcn with --data ml-100k or interactions:PATH.tsv",
        )
    return model.dim, model.layers


@register_pass
@dataclass(frozen=True, kw_only=True)
class C2FCoarse(_TrainParams):
    """Coarse stage of C2F-MetaEmbed: codebook E_c (c1 x d), t-sparse assignment S1 from a graph partition.

    Trains with S1 fixed until validation Recall@20 stops improving, then (``refresh``)
    refreshes S1 every epoch as the per-row top-t of ``H_full pinv(H_c)`` until it stops again;
    the phase with the better validation Recall@20 is kept.

    ``init = "reference"`` (default) starts from the input full-table model: E_c and the S1
    weights are fitted so that tanh(S1 E_c) reproduces its (rescaled) embedding table on the
    partition support; ``init = "scratch"`` is the paper's random start (E_c ~ N(0, init_std^2),
    weights w* / (1 - w*)/(t - 1)). ``learn_weights`` trains the t values of each S1 row with
    BPR (the support still changes only on refresh).

    ``select`` is the rule picking each entity's t codebook rows: ``"pinv"``, the paper's
    per-row top-t of ``H pinv(B)``, or ``"omp"``, orthogonal matching pursuit on the same
    least-squares objective. It applies to the warm start (with ``"omp"`` the graph partition
    gives the starting codebook, its cluster means, and the support is fitted), to the S1
    refresh and to the served form's fit.

    >>> C2FCoarse(c1=300, t=2).to_params()["type"]
    'c2f_coarse'
    """

    name: ClassVar[str] = "c2f_coarse"
    summary: ClassVar[str] = "C2F meta-embeddings, coarse stage: codebook + graph-partition sparse assignment (LightGCN, BPR)"
    c1: int = 200
    t: int = 2
    own_weight: float = 0.55
    partition: Literal["metis", "spectral"] = "metis"
    init_std: float = 0.1
    init: Literal["reference", "scratch"] = "reference"
    learn_weights: bool = True
    refresh: bool = True
    refresh_epochs: int = 200
    select: Literal["pinv", "omp"] = "pinv"  # support rule of S1 (warm start, refresh) and of the served form

    def __post_init__(self) -> None:
        if self.c1 < 1:
            raise ValueError(f"codebook size c1 = {self.c1} must be at least 1")
        if self.t < 1:
            raise ValueError(f"t = {self.t} must be at least 1")
        if self.select not in ("pinv", "omp"):
            raise ValueError(f"select = {self.select!r} must be \"pinv\" or \"omp\"")

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        from mobilec.recsys.lightgcn import train_bpr
        from mobilec.recsys.meta import MetaEmbedLightGCN

        t0 = time.perf_counter()
        data = _require_data(ctx, self.name)
        dim, layers = _reference_dims(model, self.name)
        _check_budget(self.budget_bytes, composed_bytes(data, self.c1, self.t, dim), data, dim, self.name, "c1")
        meta = MetaEmbedLightGCN(data, dim=dim, layers=layers, c1=self.c1, t=self.t, own_weight=self.own_weight,
                                 partition=self.partition, init_std=self.init_std, learn_weights=self.learn_weights, select=self.select,
                                 seed=ctx.seed)
        warm: dict[str, float] = {}
        if self.init == "reference":
            if not isinstance(getattr(model, "embedding", None), torch.Tensor):
                raise MobilecError(f"pass {self.name!r}: init = \"reference\" needs a full-table LightGCN as input",
                                   hint="set init = \"scratch\" or pass --model lightgcn")
            warm = meta.warm_start(model.embedding)
        show = self.progress and ctx.show_progress
        fixed = train_bpr(meta, data, self._cfg(ctx, eval_initial=self.init == "reference"), progress=show,
                          label="c2f coarse (fixed S1)", on_epoch_start=meta.epoch_start)
        phases: dict[str, Any] = {"fixed_assignment": fixed.to_dict(), "kept": "fixed_assignment", "warm_start": warm}
        if self.refresh:
            fixed_state = {k: v.clone() for k, v in meta.state_dict().items()}
            refresh_log: list[dict[str, float]] = []
            refreshed = train_bpr(meta, data, self._cfg(ctx, epochs=self.refresh_epochs, seed_offset=1, min_epochs=0), progress=show,
                                  label="c2f coarse (refresh S1)",
                                  on_epoch_start=lambda e: refresh_log.append(meta.refresh_coarse_assignment()))
            phases["assignment_refresh"] = refreshed.to_dict() | {"refresh_stats_last": refresh_log[-1] if refresh_log else {}}
            if refreshed.best_epoch > 0 and refreshed.best_valid > fixed.best_valid:
                phases["kept"] = "assignment_refresh"
            else:  # the refresh did not beat the fixed-S1 model on validation: keep that one
                meta.restore_state(fixed_state)
        train_seconds = time.perf_counter() - t0
        form, tune = self._serve(meta, data, ctx)
        summary = self._summary(meta, model, form, data)
        summary.update(train_seconds=train_seconds, phases=phases, serve_tune=tune, memory=meta.memory(),
                       seconds_total=time.perf_counter() - t0)
        ctx.extras["c2f_coarse"] = summary
        ctx.report.add_pass(self.name, self.to_params(), time.perf_counter() - t0, **summary)
        return meta


@register_pass
@dataclass(frozen=True, kw_only=True)
class C2FFine(_TrainParams):
    """Fine stage of C2F-MetaEmbed on a coarse model: frozen E_c, sparse fine codebook E_r, links S2, bridging.

    The soft threshold ``tau`` decides whether the fine stage does anything: entries of E_r at or
    below it get no gradient and never come back. ``tau_relative`` gives it as a fraction of the
    median |value| of the SparsePCA init (the codebook's own scale); ``tau_grid`` trains the fine
    stage once per candidate (same unit as ``tau``, each from the same frozen coarse model) and
    keeps the one with the best **validation** Recall@20. A fine codebook that ends with no
    non-zeros is an error, never a silent no-op.

    >>> C2FFine(c2=100, gate=0.2).to_params()["type"]
    'c2f_fine'
    """

    name: ClassVar[str] = "c2f_fine"
    summary: ClassVar[str] = "C2F meta-embeddings, fine stage: sparse fine codebook (SparsePCA init, soft threshold) + weight bridging"
    c2: int = 100
    k2: int = 4
    tau: float = 0.01
    tau_relative: bool = False  # tau (and tau_grid) as a fraction of the fine init's median |non-zero|
    tau_grid: tuple[float, ...] = ()  # candidates for tau, picked on validation Recall@20 (tau is then unused)
    gate: float = 0.2
    n_components: int = 16
    sparse_alpha: float = 1.0  # SparsePCA's L1 weight on RMS-normalised codebook rows
    partition: Literal["metis", "spectral"] = "metis"
    refresh: bool = True
    compensate: bool = True  # divide the frozen E_c by (1 - gate) once, so bridging does not shrink it

    def __post_init__(self) -> None:
        if self.c2 < 1:
            raise ValueError(f"codebook size c2 = {self.c2} must be at least 1")
        if any(not v >= 0 for v in (self.tau, *self.tau_grid)):
            raise ValueError(f"tau = {self.tau} and tau_grid = {list(self.tau_grid)} must be >= 0")

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        from mobilec.recsys.meta import MetaEmbedLightGCN, fine_codebook_bytes
        from mobilec.recsys.metrics import evaluate_embeddings

        t0 = time.perf_counter()
        data = _require_data(ctx, self.name)
        if not isinstance(model, MetaEmbedLightGCN) or model.stage != "coarse":
            raise MobilecError(
                f"pass {self.name!r} needs the coarse meta-embedding model, got {type(model).__name__}",
                hint="run the c2f_coarse pass first (recipe c2f extends c2f-coarse)",
            )
        reference = ctx.teacher if ctx.teacher is not None else model
        served = composed_bytes(data, model.c1, model.t, model.dim)
        _check_budget(self.budget_bytes, served, data, model.dim, self.name, "c1")
        # the trained parametrisation adds the fine codebook (at most c2 x n_components non-zeros) and S2
        worst = model.embedding_bytes() + fine_codebook_bytes(self.c2 * min(self.n_components, model.dim), self.c2, model.dim) \
            + _s2_bytes(model.c1, self.k2, self.c2)
        _check_budget(self.budget_bytes, worst, data, model.dim, self.name, "c2 or n_components")
        coarse_valid = evaluate_embeddings(*model.final_embeddings(), data, "valid")["recall@20"]
        coarse_state = {k: v.clone() for k, v in model.state_dict().items()}
        candidates = list(self.tau_grid) or [self.tau]
        trials: list[dict[str, Any]] = []
        best: tuple[float, dict[str, torch.Tensor], Any] | None = None
        for i, tau in enumerate(candidates):
            if i:  # every candidate starts from the same frozen coarse model
                model.to_coarse(coarse_state)
            trial, result = self._train_fine(model, data, ctx, tau, label=f"c2f fine (tau {tau:g})" if len(candidates) > 1 else "c2f fine")
            trials.append(trial)
            if trial["nonzeros"] > 0 and (best is None or trial["best_valid"] > best[0]):
                best = (trial["best_valid"], {k: v.clone() for k, v in model.state_dict().items()} | {"_tau": trial["tau"]}, result)
        if best is None:
            raise MobilecError(
                f"pass {self.name!r}: the fine codebook ended with no non-zeros for every tau in {candidates}"
                f"{' (relative to the init scale)' if self.tau_relative else ''}: the fine stage would be a no-op",
                hint="lower tau (tau_relative = true with tau = 0.25 keeps most of the SparsePCA init)",
            )
        if len(candidates) > 1:
            state = dict(best[1])
            model.to_coarse(coarse_state)
            model.start_fine(data, **self._fine_kwargs(float(state.pop("_tau")), relative=False))
            model.restore_state(state)
        result = best[2]
        fine_valid = evaluate_embeddings(*model.final_embeddings(), data, "valid")["recall@20"]
        fine_nnz = model.fine_nonzeros()
        notes = []
        if result.best_epoch == 0:
            notes.append("fine training did not improve validation Recall@20 over the bridged start (the start is kept; "
                         "its fine codebook is non-zero)")
        if fine_valid < coarse_valid:
            notes.append(f"the fine stage lowered validation Recall@20 ({coarse_valid:.4f} -> {fine_valid:.4f})")
        train_seconds = time.perf_counter() - t0
        form, tune = self._serve(model, data, ctx)
        summary = self._summary(model, reference, form, data)
        memory = model.memory()
        summary.update(train_seconds=train_seconds, fine=result.to_dict(), serve_tune=tune, memory=memory,
                       tau=model.tau, tau_trials=trials, fine_nonzeros=fine_nnz, fine_density=fine_nnz / (model.c2 * model.dim),
                       fine_codebook_bytes=memory["fine_codebook_sparse"], s2_bytes=memory["s2"],
                       valid_recall_coarse=coarse_valid, valid_recall_fine=fine_valid,
                       fine_bytes_note="the fine codebook and S2 are part of the trained model (trained_embedding_bytes); the "
                                       "served form folds them into the propagated coarse codebook it is fitted to",
                       note="; ".join(notes), seconds_total=time.perf_counter() - t0)
        ctx.extras["c2f_fine"] = summary
        ctx.report.add_pass(self.name, self.to_params(), time.perf_counter() - t0, **summary)
        return model

    def _fine_kwargs(self, tau: float, *, relative: bool) -> dict[str, Any]:
        return {"c2": self.c2, "k2": self.k2, "tau": tau, "gate": self.gate, "n_components": self.n_components,
                "sparse_alpha": self.sparse_alpha, "partition": self.partition, "compensate": self.compensate,
                "tau_relative": relative}

    def _train_fine(self, model: nn.Module, data: Any, ctx: Context, tau: float, *, label: str) -> tuple[dict[str, Any], Any]:
        """Start and train the fine stage with one threshold; the trial's outcome on validation."""
        from mobilec.recsys.lightgcn import train_bpr

        t0 = time.perf_counter()
        init = model.start_fine(data, **self._fine_kwargs(tau, relative=self.tau_relative))
        hook = (lambda e: model.refresh_fine_assignment()) if self.refresh else None
        result = train_bpr(model, data, self._cfg(ctx, seed_offset=2), params=[model.fine], progress=self.progress and ctx.show_progress,
                           label=label, on_epoch_start=hook)
        trial = {"tau_given": tau, "tau": init["tau"], "init_scale": init["init_scale"], "init_nonzeros": init["init_nonzeros"],
                 "nonzeros_after_threshold": init["nonzeros"], "nonzeros": model.fine_nonzeros(), "best_valid": result.best_valid,
                 "best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "seconds": time.perf_counter() - t0}
        return trial, result


def _s2_bytes(c1: int, k2: int, c2: int) -> int:
    from mobilec.recsys.meta import assignment_bytes

    return assignment_bytes(c1, k2, c2)


@register_pass
@dataclass(frozen=True, kw_only=True)
class HashEmbed(_TrainParams):
    """Hashing-trick baseline: each user/item averages t rows of a shared c-row table picked by seeded hashes.

    >>> HashEmbed(c=200).to_params()["type"]
    'hash_embed'
    """

    name: ClassVar[str] = "hash_embed"
    summary: ClassVar[str] = "hashing-trick embeddings (t hashed rows of a shared table) for LightGCN — a memory baseline"
    c: int = 200
    t: int = 2
    init: Literal["reference", "scratch"] = "reference"  # reference: least-squares table fitted to the input model

    def __post_init__(self) -> None:
        if self.c < 1:
            raise ValueError(f"codebook size c = {self.c} must be at least 1")

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        from mobilec.recsys.lightgcn import train_bpr
        from mobilec.recsys.meta import HashLightGCN

        t0 = time.perf_counter()
        data = _require_data(ctx, self.name)
        dim, layers = _reference_dims(model, self.name)
        _check_budget(self.budget_bytes, composed_bytes(data, self.c, self.t, dim), data, dim, self.name, "c")
        hashed = HashLightGCN(data, dim=dim, layers=layers, c=self.c, t=self.t, seed=ctx.seed)
        warm: dict[str, float] = {}
        if self.init == "reference":
            if not isinstance(getattr(model, "embedding", None), torch.Tensor):
                raise MobilecError(f"pass {self.name!r}: init = \"reference\" needs a full-table LightGCN as input",
                                   hint="set init = \"scratch\" or pass --model lightgcn")
            warm = hashed.warm_start(model.embedding)
        result = train_bpr(hashed, data, self._cfg(ctx, eval_initial=self.init == "reference"),
                           progress=self.progress and ctx.show_progress, label="hash")
        train_seconds = time.perf_counter() - t0
        form, tune = self._serve(hashed, data, ctx)
        summary = self._summary(hashed, model, form, data)
        summary.update(train_seconds=train_seconds, train=result.to_dict(), serve_tune=tune, memory=hashed.memory(),
                       warm_start=warm, seconds_total=time.perf_counter() - t0)
        ctx.extras["hash_embed"] = summary
        ctx.report.add_pass(self.name, self.to_params(), time.perf_counter() - t0, **summary)
        return hashed


def pass_defaults(cls: type[Pass]) -> dict[str, Any]:
    """Recipe defaults of a pass class (for docs and the bench)."""
    return {k: v for k, v in asdict(cls()).items() if k not in ("targets", "ignore")}
