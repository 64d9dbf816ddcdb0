"""The Python surface: ``export`` runs a recipe end to end; ``profile`` measures an artifact.

>>> import mobilec
>>> run = mobilec.export("int8", out="runs/int8")          # doctest: +SKIP
>>> run.report.artifacts[0]["verification"]["accuracy"]     # doctest: +SKIP
"""

from __future__ import annotations

import copy
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mobilec.errors import DiskWriteError, MobilecError
from mobilec.recipe import TARGETS, Recipe

DEFAULT_MODEL = "mobilenet_v2"
DEFAULT_DATA = "fashion-mnist"
ARTIFACT_NAMES = {"executorch": "model.pte", "tflite": "model.tflite", "onnx": "model.onnx"}
RUN_FILES = (*ARTIFACT_NAMES.values(), "compressed.pt", "report.json", "report.md")


@dataclass
class RunResult:
    """What ``export`` produced: the run folder, its report, and whether every target passed."""

    out_dir: Path
    report: Any  # RunReport
    ok: bool
    artifacts: list[Any] = field(default_factory=list)
    worker_rank: int = 0  # > 0: a torchrun worker that trained alongside rank 0 and exported nothing


def parse_targets(targets: str | list[str] | tuple[str, ...] | None, recipe: Recipe) -> tuple[str, ...]:
    if targets is None:
        return recipe.export.targets
    items = targets.split(",") if isinstance(targets, str) else list(targets)
    items = [t.strip() for t in items if t.strip()]
    bad = [t for t in items if t not in TARGETS]
    if bad or not items:
        raise MobilecError(f"unknown target(s) {', '.join(bad) or '(none given)'}", hint=f"choose from {', '.join(TARGETS)}")
    return tuple(dict.fromkeys(items))


def prepare_out_dir(out: Path, *, force: bool) -> Path:
    """Refuse to overwrite an earlier run's files without ``force``; check the folder is writable."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MobilecError(f"output path {out} exists and is not a folder", hint="choose another --out")
    existing = [name for name in RUN_FILES if (out / name).exists()]
    interrupted = (out / "checkpoints").is_dir() and any((out / "checkpoints").glob("pass-*.pt"))
    if interrupted:
        existing.append("pass checkpoints of an earlier (maybe interrupted) run")
    if existing and not force:
        raise MobilecError(
            f"output folder {out} already holds {', '.join(existing)}",
            hint="choose another --out, pass --resume to continue that run, or --force to replace it" if interrupted
            else "choose another --out, or pass --force to replace them",
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".mobilec-write-test"
        probe.write_bytes(b"x" * 4096)
        probe.unlink()
    except OSError as exc:
        raise MobilecError(f"output folder {out} is not writable: {exc.strerror or exc}", hint="choose another --out") from None
    return out


def export(
    recipe: str | Path = "int8",
    *,
    model: str | None = None,
    weights: str | Path | None = None,
    data: str | None = None,
    targets: str | list[str] | None = None,
    out: str | Path | None = None,
    force: bool = False,
    allow_mismatch: bool = False,
    seed: int = 0,
    show_progress: bool = True,
    profile: bool = True,
    command: str | None = None,
    resume: bool = False,
) -> RunResult:
    """Compress ``model`` with ``recipe``, export every target, verify each artifact on real data.

    Artifacts whose verification fails are removed (kept with ``allow_mismatch=True``, flagged
    in the report); a target that cannot export is recorded and the other targets go on.
    Each pass's output is checkpointed in ``out/checkpoints/``; ``resume=True`` continues an
    interrupted run from its last completed pass (same arguments required).
    """
    rec = Recipe.load(recipe)
    chosen_targets = parse_targets(targets, rec)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise MobilecError(f"seed must be an integer in [0, 2**32), got {seed!r}", hint="e.g. seed=0")
    model_spec = model or DEFAULT_MODEL
    if weights is not None and model is None:
        raise MobilecError("--weights needs --model", hint="name the model the weights belong to: --model file.py:factory")

    from mobilec.recsys.run import is_recsys_request

    if is_recsys_request(rec, model, data):  # LightGCN on interaction data: see mobilec.recsys.run
        from mobilec.recsys.run import export_recommender_run

        rec_out = prepare_out_dir(Path(out) if out is not None else Path("mobilec-out") / f"lightgcn-{rec.name}", force=force)
        return export_recommender_run(rec, model=model, weights=Path(weights) if weights else None, data=data,
                                      targets=chosen_targets, out_dir=rec_out, seed=seed, show_progress=show_progress,
                                      command=command or "mobilec.export(" + ", ".join(
                                          f"{k}={v!r}" for k, v in _given(recipe, model, data, targets).items()) + ")")
    from mobilec.data import load_dataset
    from mobilec.models.loader import load_model
    from mobilec.report import RunReport

    out_dir = Path(out) if out is not None else Path("mobilec-out") / f"{_slug(model_spec)}-{rec.name}"
    dataset = load_dataset(data or DEFAULT_DATA)
    torch_model, info = load_model(model_spec, weights=Path(weights) if weights else None, data=dataset)
    from mobilec import checkpoint

    worker = torchrun_worker_rank()
    if worker:  # torchrun rank > 0: trains with the others in a private folder; rank 0 writes the run
        import tempfile

        out_dir = Path(tempfile.mkdtemp(prefix=f"mobilec-rank{worker}-"))
    else:
        checkpoint.require_free_space(out_dir, checkpoint.estimated_run_bytes(torch_model, len(chosen_targets), len(rec.passes)))
        out_dir = prepare_out_dir(out_dir, force=force or resume)
        checkpoint.remove_stale_parts(out_dir)  # temporaries of a killed run
        if not resume:
            checkpoint.clear_checkpoints(out_dir)
    run_fp = checkpoint.fingerprint(rec.to_dict(), model_spec, Path(weights) if weights else None, data or DEFAULT_DATA, seed)

    torch.manual_seed(seed)
    torch_model.eval()
    report = RunReport(
        recipe=rec.name,
        model=info.to_dict() if hasattr(info, "to_dict") else dict(info.__dict__),
        data={"name": dataset.name, "spec": data or DEFAULT_DATA, "n_train": len(dataset.y_train), "n_test": len(dataset.y_test)},
        command=command
        or "mobilec.export(" + ", ".join(f"{k}={v!r}" for k, v in _given(recipe, model, data, targets).items()) + ")",
        seed=seed,
    )
    report.recipe_dict = rec.to_dict()  # type: ignore[attr-defined]
    ctx = _make_context(dataset, out_dir, report, torch_model, seed, show_progress)
    report.accuracy["original"] = ctx.evaluate(torch_model)
    _count_macs_into(report, torch_model, dataset.input_shape)

    compressed = run_passes(rec, torch_model, ctx, checkpoint_fingerprint=None if worker else run_fp, resume=resume and not worker)
    if worker:
        import shutil

        shutil.rmtree(out_dir, ignore_errors=True)
        return RunResult(out_dir=out_dir, report=report, ok=True, worker_rank=worker)
    compressed.eval()
    from mobilec.io import save_state_dict_atomic

    save_state_dict_atomic(compressed.state_dict(), out_dir / "compressed.pt")
    report.accuracy["compressed_eager"] = ctx.evaluate(compressed)

    artifacts = []
    ok = True
    for target in chosen_targets:
        art, passed = _export_one(target, compressed, ctx, rec, out_dir, allow_mismatch)
        ok = ok and passed
        if art is not None:
            artifacts.append(art)
            if profile and (out_dir / ARTIFACT_NAMES[target]).exists():
                _profile_into_report(art, compressed, ctx, rec)
    report.write(out_dir)
    return RunResult(out_dir=out_dir, report=report, ok=ok, artifacts=artifacts)


def torchrun_worker_rank() -> int:
    """This process's rank when launched by ``torchrun`` with several processes (0 otherwise: rank 0 or no torchrun)."""
    import os

    return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0


def _given(recipe: Any, model: Any, data: Any, targets: Any) -> dict[str, Any]:
    return {k: v for k, v in {"recipe": recipe, "model": model, "data": data, "targets": targets}.items() if v is not None}


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(text.split(":")[0]).stem)


def _make_context(dataset: Any, out_dir: Path, report: Any, model: torch.nn.Module, seed: int, show_progress: bool) -> Any:
    from mobilec.context import Context

    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    example = (dataset.x_test[:1].clone(),)
    return Context(
        data=dataset,
        workdir=out_dir,
        report=report,
        example_inputs=example,
        teacher=teacher,
        seed=seed,
        show_progress=show_progress,
    )


def run_passes(
    rec: Recipe, model: torch.nn.Module, ctx: Any, *, checkpoint_fingerprint: str | None = None, resume: bool = False
) -> torch.nn.Module:
    """Apply the recipe's passes in order, on a copy: the caller's model is never modified.

    With ``checkpoint_fingerprint``, each pass's output is checkpointed in ``ctx.workdir``; with
    ``resume`` too, the passes a matching checkpoint already covers are skipped.
    """
    from mobilec import checkpoint

    current = copy.deepcopy(model)
    start = 0
    if checkpoint_fingerprint is not None and resume:
        done = checkpoint.load_completed(ctx.workdir, [p.name for p in rec.passes], checkpoint_fingerprint)
        if done is not None:
            current, start = done.model, done.index + 1
            ctx.quant_plan, ctx.lowering = done.quant_plan, done.lowering
            ctx.extras.update(done.extras)
            ctx.report.passes[:] = done.passes
            ctx.report.notes[:] = [*done.notes, f"resumed after pass {start} ({done.name}) from its checkpoint"]
            checkpoint.restore_rng(done.rng)
    for index, p in enumerate(rec.passes[start:], start):
        n_before = len(ctx.report.passes)
        t0 = time.perf_counter()
        current = p.apply(current, ctx)
        seconds = time.perf_counter() - t0
        if len(ctx.report.passes) > n_before:  # the pass wrote its own record: stamp the time
            ctx.report.passes[-1].seconds = ctx.report.passes[-1].seconds or seconds
        else:
            ctx.report.add_pass(p.name, p.to_params(), seconds)
        if checkpoint_fingerprint is not None:
            why = checkpoint.save(ctx.workdir, ctx, index, p.name, current, checkpoint_fingerprint)
            if why:
                ctx.report.notes.append(f"no resume checkpoint after pass {index + 1} ({p.name}): {why}")
    return current


def _export_one(
    target: str, model: torch.nn.Module, ctx: Any, rec: Recipe, out_dir: Path, allow_mismatch: bool
) -> tuple[Any, bool]:
    from mobilec.export import get_exporter
    from mobilec.export.verify import verify_artifact

    path = out_dir / ARTIFACT_NAMES[target]
    try:
        if ctx.lowering is not None:
            artifact = ctx.lowering(model, target, ctx.example_inputs, path)
        else:
            calibration = []
            if ctx.quant_plan is not None:
                plan = ctx.quant_plan
                calibration = ctx.data.calibration_batches(plan.calibration_batches, plan.batch_size, plan.seed)
            artifact = get_exporter(target).export(model, ctx.example_inputs, path, quant=ctx.quant_plan, calibration=calibration)
    except DiskWriteError:
        raise  # a full or read-only disk stops the run; it is not this target's failure
    except MobilecError as exc:
        ctx.report.failures.append({"target": target, "error": str(exc)})
        return None, False
    record = artifact.to_dict()
    result = verify_artifact(artifact, ctx.data, rec.verify, eager_model=model, show_progress=ctx.show_progress)
    record["verification"] = result.to_dict()
    if result.passed:
        record["status"] = "verified"
    elif allow_mismatch:
        record["status"] = "MISMATCH (kept with --allow-mismatch)"
    else:
        path.unlink(missing_ok=True)
        record["status"] = "rejected: " + "; ".join(result.failures)
        ctx.report.failures.append(
            {
                "target": target,
                "error": f"verification failed: {'; '.join(result.failures)} (artifact removed; --allow-mismatch keeps it)",
            }
        )
    ctx.report.artifacts.append(record)
    return artifact, result.passed or allow_mismatch


def _profile_into_report(artifact: Any, model: torch.nn.Module, ctx: Any, rec: Recipe) -> None:
    """Host latency/memory (and the labelled energy estimate) of a verified artifact, in its runtime."""
    from mobilec.profile import profile_artifact
    from mobilec.profile.energy import layer_work_from_model

    executed = {layer.executed for layer in artifact.layers}
    bits = 8 if executed and executed <= {"int8"} else 32
    try:
        work = layer_work_from_model(model, ctx.example_inputs[0], weight_bits=bits, activation_bits=bits)
    except Exception as exc:  # the estimate is optional; say why it is missing
        work = None
        ctx.report.notes.append(f"no energy estimate for {artifact.target}: {type(exc).__name__}: {exc}")
    m = profile_artifact(
        artifact.path,
        device="host",
        runs=rec.profile.runs,
        warmup=rec.profile.warmup,
        threads=rec.profile.threads,
        inputs=ctx.data.x_test[:32].numpy(),
        show_progress=ctx.show_progress,
        energy_layers=work if artifact.target == "executorch" else None,
    )
    entry = m.to_dict()
    entry["latency_ms"].pop("samples", None)  # the report keeps the summary; repetitions keep the samples
    ctx.report.profiles.append(entry)


def profile(artifact: str | Path, *, device: str = "host", **kwargs: Any) -> Any:
    """Measure an artifact in its own runtime on ``device`` (see ``mobilec.profile.profile_artifact``)."""
    from mobilec.profile import profile_artifact

    return profile_artifact(Path(artifact), device=device, **kwargs)


def current_command() -> str:
    return "mobilec " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _count_macs_into(report: Any, model: torch.nn.Module, input_shape: tuple[int, ...]) -> None:
    """The original model's MACs per image (conv/linear); passes that change them report ``macs_after``."""
    from mobilec.models import count_macs

    try:
        report.model["macs"] = int(count_macs(model, torch.zeros(1, *input_shape)))
    except Exception as exc:  # a user model count_macs cannot trace: say so instead of a blank
        report.notes.append(f"MACs not counted: {type(exc).__name__}: {exc}")
