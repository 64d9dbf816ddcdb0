"""verify_artifact: real runtime vs reference on the real test split, and clear failures past the tolerances."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from export_models import artifact, digits, tiny_cnn, trained_tiny
from torch import nn

from mobilec.errors import MobilecError
from mobilec.export.verify import verify_artifact
from mobilec.recipe import VerifySpec

pytestmark = pytest.mark.slow


class _Perturbed(nn.Module):
    """The reference's logits plus noise: what a wrong lowering would look like."""

    def __init__(self, model: nn.Module, scale: float) -> None:
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        g = torch.Generator().manual_seed(len(x))
        return out + self.scale * out.abs().max() * torch.randn(out.shape, generator=g)


class _SameRuntime(nn.Module):
    """The artifact's own runtime session as the reference: outputs identical by construction."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        from mobilec.runtimes import open_artifact

        self.session = open_artifact(path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.concatenate([self.session.run(x[i:i + 1].numpy()) for i in range(len(x))]))


def test_identical_outputs_pass_and_serialise() -> None:
    # int8 ORT vs itself (its QDQ float simulation is one output step off on some CPUs: measured on an
    # Intel Xeon, bit-identical on an AMD EPYC), so a zero tolerance is met exactly
    art = artifact("onnx", True)
    art = dataclasses.replace(art, reference=_SameRuntime(art.path), reference_name="the same .onnx in onnxruntime")
    result = verify_artifact(art, digits(), VerifySpec(min_top1_agreement=1.0, max_abs_error=0.0), show_progress=True)
    assert result.passed and result.failures == []
    assert result.max_abs_error == 0.0 and result.snr_db == float("inf")
    doc = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert doc["snr_db"] == "inf" and doc["runtime"] == "onnx"


def test_perturbed_reference_fails_naming_each_tolerance() -> None:
    art = dataclasses.replace(artifact("onnx", False), reference=_Perturbed(trained_tiny(), 0.5), reference_name="perturbed")
    spec = VerifySpec(min_top1_agreement=0.99, max_abs_error=1e-3, min_snr_db=40)
    result = verify_artifact(art, digits(), spec, show_progress=False)
    assert not result.passed
    text = " | ".join(result.failures)
    assert "min_top1_agreement 0.99" in text and "max_abs_error 0.001" in text and "min_snr_db 40" in text
    assert all(f.startswith("onnx vs perturbed:") for f in result.failures)
    assert result.top1_agreement < 0.99 and result.snr_db < 40


def test_wrong_model_as_reference_fails_on_agreement() -> None:
    other = tiny_cnn().eval()  # untrained: a different model entirely
    art = dataclasses.replace(artifact("onnx", False), reference=None)
    result = verify_artifact(art, digits(), VerifySpec(), eager_model=other, show_progress=False)
    assert not result.passed
    assert any("top-1 agreement" in f for f in result.failures)
    assert result.accuracy > 0.85 > result.eager_accuracy


def test_max_samples_and_eager_model_comparison() -> None:
    art = artifact("onnx", True)
    result = verify_artifact(art, digits(), VerifySpec(max_samples=40), eager_model=trained_tiny(), show_progress=False)
    assert result.n_samples == 40
    assert result.eager_model_accuracy is not None and result.eager_model_agreement is not None


def test_nothing_to_compare_with_is_an_error() -> None:
    art = dataclasses.replace(artifact("onnx", False), reference=None)
    with pytest.raises(MobilecError, match="nothing to verify"):
        verify_artifact(art, digits(), VerifySpec(), show_progress=False)
