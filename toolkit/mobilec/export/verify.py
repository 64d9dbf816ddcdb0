"""Numerics check: run an artifact in its real runtime on the real test split and compare it with
the model it must reproduce (``artifact.reference``: the eager model, or for int8 the PT2E / QDQ
int8 simulation), against the recipe's tolerances.

>>> result = verify_artifact(artifact, dataset, VerifySpec(min_top1_agreement=0.99))   # doctest: +SKIP
>>> result.passed, result.failures                                                       # doctest: +SKIP
(True, [])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from mobilec.errors import MobilecError
from mobilec.export.base import Artifact
from mobilec.recipe import VerifySpec


@dataclass
class VerificationResult:
    """Artifact vs reference on ``n_samples`` test images.

    ``accuracy``: top-1 of the artifact in its runtime; ``eager_accuracy``: top-1 of the reference
    it is compared with (named by ``reference``); ``top1_agreement``: fraction of samples where both
    pick the same class; errors are over all logits; ``snr_db`` = 10·log10(Σref² / Σ(artifact−ref)²)
    (``inf`` when identical). When an ``eager_model`` other than the reference is given (the fp32
    model behind an int8 artifact), ``eager_model_accuracy`` / ``eager_model_agreement`` compare
    with it too (informational: tolerances apply to the reference).
    """

    n_samples: int
    accuracy: float
    eager_accuracy: float
    top1_agreement: float
    max_abs_error: float
    mean_abs_error: float
    snr_db: float
    passed: bool
    failures: list[str] = field(default_factory=list)
    reference: str = ""
    runtime: str = ""
    eager_model_accuracy: float | None = None
    eager_model_agreement: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not math.isfinite(self.snr_db):
            out["snr_db"] = "inf" if self.snr_db > 0 else "-inf"
        return out


def verify_artifact(
    artifact: Artifact,
    dataset: Any,
    spec: VerifySpec,
    *,
    eager_model: nn.Module | Callable[[torch.Tensor], torch.Tensor] | None = None,
    show_progress: bool = True,
    threads: int = 1,
) -> VerificationResult:
    """Run ``artifact`` in its runtime on the test split (all of it unless ``spec.max_samples``) and compare.

    Compared with ``artifact.reference`` when set, else with ``eager_model``. Never raises for a
    numerical mismatch: ``passed`` is False and ``failures`` names each violated tolerance.
    """
    from mobilec.runtimes import open_artifact, run_batched

    reference = artifact.reference if artifact.reference is not None else eager_model
    if reference is None:
        raise MobilecError(f"nothing to verify {artifact.path} against: the artifact has no reference and no eager_model was given",
                           hint="pass eager_model=the compressed torch model")
    ref_name = artifact.reference_name if artifact.reference is not None else "eager model"
    x, y = dataset.x_test, dataset.y_test
    if spec.max_samples is not None:
        x, y = x[: spec.max_samples], y[: spec.max_samples]
    n = len(x)
    if n == 0:
        raise MobilecError("the test split is empty", hint="use a data set with test samples")
    session = open_artifact(artifact.path, threads=threads)
    x_np = _canonical(x)
    with _progress(show_progress, f"verify {artifact.path.name} ({session.target})", n) as advance:
        out = run_batched(session, x_np, progress=advance)
    ref = _logits(reference, x)
    if out.shape != ref.shape:
        return _shape_failure(n, out.shape, ref.shape, ref_name, session.target)
    labels = y.numpy()
    err = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    noise = float((err**2).sum())
    signal = float((ref.astype(np.float64) ** 2).sum())
    snr = math.inf if noise == 0 else (10 * math.log10(signal / noise) if signal > 0 else -math.inf)
    result = VerificationResult(
        n_samples=n,
        accuracy=float((out.argmax(1) == labels).mean()),
        eager_accuracy=float((ref.argmax(1) == labels).mean()),
        top1_agreement=float((out.argmax(1) == ref.argmax(1)).mean()),
        max_abs_error=float(err.max()),
        mean_abs_error=float(err.mean()),
        snr_db=snr,
        passed=True,
        reference=ref_name,
        runtime=session.target,
    )
    if eager_model is not None and artifact.reference is not None and eager_model is not artifact.reference:
        eager = _logits(eager_model, x)
        result.eager_model_accuracy = float((eager.argmax(1) == labels).mean())
        result.eager_model_agreement = float((out.argmax(1) == eager.argmax(1)).mean())
    if not np.isfinite(out).all():
        result.failures.append(f"the artifact produced {int((~np.isfinite(out)).sum())} non-finite logits")
    if result.top1_agreement < spec.min_top1_agreement:
        result.failures.append(f"top-1 agreement {result.top1_agreement:.4f} < min_top1_agreement {spec.min_top1_agreement}")
    if spec.max_abs_error is not None and not result.max_abs_error <= spec.max_abs_error:
        result.failures.append(f"max abs error {result.max_abs_error:.4g} > max_abs_error {spec.max_abs_error}")
    if spec.min_snr_db is not None and not snr >= spec.min_snr_db:
        result.failures.append(f"SNR {snr:.1f} dB < min_snr_db {spec.min_snr_db}")
    result.failures = [f"{session.target} vs {ref_name}: {f}" for f in result.failures]
    result.passed = not result.failures
    return result


def _logits(model: nn.Module | Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch: int = 256) -> np.ndarray:
    """Reference logits in batches; falls back to one sample at a time for graphs exported at batch 1."""
    restore = isinstance(model, nn.Module) and not isinstance(model, torch.fx.GraphModule) and model.training
    if restore:
        model.eval()  # artifacts are exported in eval mode
    outs = []
    try:
        with torch.no_grad():
            try:
                for i in range(0, len(x), batch):
                    outs.append(model(x[i:i + batch]).float().numpy())
            except Exception:  # a graph specialised to batch 1
                outs = [model(x[i:i + 1]).float().numpy() for i in range(len(x))]
    finally:
        if restore:
            model.train()
    return np.concatenate(outs)


def _canonical(x: torch.Tensor) -> np.ndarray:
    out = np.empty(tuple(x.shape), dtype=np.float32)
    out[...] = x.detach().float().numpy()
    return out


def _shape_failure(n: int, got: tuple, want: tuple, ref_name: str, target: str) -> VerificationResult:
    msg = f"{target} vs {ref_name}: the artifact returns logits of shape {got[1:]}, the reference {want[1:]}"
    return VerificationResult(n, math.nan, math.nan, 0.0, math.inf, math.inf, -math.inf, False, [msg], ref_name, target)


class _progress:
    """A rich progress bar (or nothing) yielding ``advance(k)``."""

    def __init__(self, show: bool, label: str, total: int) -> None:
        self.show, self.label, self.total = show, label, total
        self._bar: Any = None

    def __enter__(self) -> Callable[[int], None] | None:
        if not self.show:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                             transient=True)
        self._bar.start()
        task = self._bar.add_task(self.label, total=self.total)
        return lambda k: self._bar.advance(task, k)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
