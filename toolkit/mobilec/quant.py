"""Quantization plans: what a quantization pass asks of the exporters.

Post-training int8 is realised by each target with its own backend's quantizer (XNNPACK's PT2E
quantizer for ExecuTorch, LiteRT's PT2E quantizer for TFLite, onnxruntime's static QDQ
quantization for ONNX), calibrated on the same real batches; the plan carries what they share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class QuantPlan:
    """Static int8: per-channel symmetric weights, per-tensor affine activations, real calibration."""

    scheme: Literal["int8-static"] = "int8-static"
    per_channel: bool = True
    calibration_batches: int = 32
    batch_size: int = 32
    seed: int = 0

    @property
    def weight_bits(self) -> int:
        return 8

    @property
    def activation_bits(self) -> int:
        return 8
