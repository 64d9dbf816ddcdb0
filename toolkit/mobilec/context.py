"""Context: what a pass may use — data, the original model as teacher, the run folder, the report."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mobilec.errors import MobilecError
from mobilec.quant import QuantPlan

if TYPE_CHECKING:
    from mobilec.report import RunReport


@dataclass
class Context:
    """Shared state of one run, handed to every pass.

    ``data`` is the data set object (``mobilec.data.ImageDataset`` for image models; the
    recommender passes use their own interaction data set). ``teacher`` is a frozen copy of
    the model as it entered the recipe, for distillation. A quantization pass that the
    exporters realise (post-training int8) sets ``quant_plan``.
    """

    data: Any
    workdir: Path
    report: RunReport
    example_inputs: tuple[torch.Tensor, ...]
    teacher: nn.Module | None = None
    seed: int = 0
    quant_plan: QuantPlan | None = None
    # A pass whose model needs its own integer lowering (DuQ, binary) sets this; the exporters
    # then call ``lowering(model, target, example_inputs, out_path) -> Artifact`` per target.
    lowering: Callable[..., Any] | None = None
    show_progress: bool = True
    extras: dict[str, Any] = field(default_factory=dict)  # per-pass results other stages read

    def require_image_data(self, pass_name: str) -> Any:
        from mobilec.data import ImageDataset

        if not isinstance(self.data, ImageDataset):
            raise MobilecError(
                f"pass {pass_name!r} needs an image classification data set, got {type(self.data).__name__}",
                hint="use --data fashion-mnist, digits, imagefolder:PATH or npz:PATH",
            )
        return self.data

    def evaluate(self, model: nn.Module) -> float:
        """Top-1 accuracy of an eager model on the held-out test split."""
        from mobilec.train import evaluate

        return evaluate(model, self.require_image_data("evaluate"))
