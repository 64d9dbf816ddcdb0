"""The exporter interface and the artifact record every target returns."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobilec.quant import QuantPlan


@dataclass
class LayerBits:
    """Per-layer record of what the artifact really stores and executes.

    ``info_bits`` is the number of bits of information in each weight (e.g. 3 for a 3-bit
    grid); ``stored`` is the container in the file (``int8``, ``fp32``, ``int4``);
    ``executed`` is the arithmetic the runtime performs (``int8``, ``fp32``).
    """

    name: str
    kind: str  # conv2d, depthwise_conv2d, linear, ...
    params: int
    info_bits: float
    stored: str
    executed: str
    stored_bytes: int
    packed_bytes: int  # bytes at info_bits per weight, bit-packed: the physical limit

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Artifact:
    """One exported file and what is known about it."""

    target: str  # executorch | tflite | onnx
    path: Path
    size_bytes: int
    layers: list[LayerBits] = field(default_factory=list)
    delegation: dict[str, Any] = field(default_factory=dict)  # e.g. {"delegated": 61, "total": 61, "not_delegated": {}}
    notes: list[str] = field(default_factory=list)
    # The eager torch model the artifact must match (for int8: the converted PT2E reference);
    # not serialised. Takes a float NCHW batch, returns logits.
    reference: Callable[[torch.Tensor], torch.Tensor] | None = None
    reference_name: str = "eager compressed model"

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "path": str(self.path),
            "size_bytes": self.size_bytes,
            "layers": [layer.to_dict() for layer in self.layers],
            "delegation": self.delegation,
            "notes": self.notes,
            "reference": self.reference_name,
        }


class ExporterBase:
    """Every target's exporter: ``export`` writes ``out_path`` atomically and returns its Artifact. The shared
    ``export``: a batch-1 example, the model in eval mode while the
    target's ``_export`` runs (inside ``_quiet()``, for runtimes with chatty logs), the mode restored."""

    target: str
    suffix: str

    def export(
        self,
        model: nn.Module,
        example_inputs: tuple[torch.Tensor, ...],
        out_path: Path,
        *,
        quant: QuantPlan | None = None,
        calibration: Sequence[torch.Tensor] = (),
    ) -> Artifact:
        from mobilec.export import batch1_example

        example = batch1_example(example_inputs, self.target)
        was_training = model.training
        model.eval()
        try:
            with self._quiet():
                return self._export(model, example, Path(out_path), quant, calibration)
        finally:
            model.train(was_training)

    def _quiet(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def _export(self, model: nn.Module, example: torch.Tensor, out_path: Path, quant: QuantPlan | None,
                calibration: Sequence[torch.Tensor]) -> Artifact:
        raise NotImplementedError
