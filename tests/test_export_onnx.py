"""ONNX exporter through the real onnxruntime: fp32 and int8 (static QDQ) round trips, sizes, layer table."""

from __future__ import annotations

import pytest
import torch
from export_models import artifact, digits, trained_tiny
from torch import nn

from mobilec.errors import ExportError, MobilecError
from mobilec.export import get_exporter
from mobilec.export.layers import check_layers
from mobilec.export.verify import verify_artifact
from mobilec.quant import QuantPlan
from mobilec.recipe import VerifySpec

pytestmark = pytest.mark.slow


def test_fp32_roundtrip_matches_eager_model() -> None:
    art = artifact("onnx", False)
    assert art.path.suffix == ".onnx" and art.size_bytes == art.path.stat().st_size
    result = verify_artifact(art, digits(), VerifySpec(min_top1_agreement=1.0, max_abs_error=1e-4), show_progress=False)
    assert result.passed, result.failures
    assert result.n_samples == len(digits().y_test)
    assert result.accuracy > 0.85


def test_int8_roundtrip_matches_its_qdq_reference_and_the_eager_model() -> None:
    art = artifact("onnx", True)
    assert "QDQ" in art.reference_name
    result = verify_artifact(art, digits(), VerifySpec(min_top1_agreement=0.999, min_snr_db=40), eager_model=trained_tiny(),
                             show_progress=False)
    assert result.passed, result.failures
    assert result.eager_model_agreement is not None and result.eager_model_agreement >= 0.97
    assert abs(result.accuracy - result.eager_model_accuracy) < 0.03


def test_int8_is_at_least_3_5x_smaller_and_its_layer_table_is_read_from_the_file() -> None:
    fp32, int8 = artifact("onnx", False), artifact("onnx", True)
    assert fp32.size_bytes / int8.size_bytes >= 3.5
    model = trained_tiny()
    assert check_layers(fp32.layers, model, file_size=fp32.size_bytes) == []
    assert check_layers(int8.layers, model, file_size=int8.size_bytes) == []
    assert {(x.stored, x.executed, x.info_bits) for x in fp32.layers} == {("fp32", "fp32", 32.0)}
    assert all(x.stored == "int8" and x.executed == "int8" for x in int8.layers)
    # reduce_range: weights on [-64, 64]; the measured grid is 7 bits where the layer is big enough to show it
    big = [x for x in int8.layers if x.params >= 1000]
    assert big and all(x.info_bits == 7.0 for x in big)
    assert all(x.packed_bytes < x.stored_bytes for x in big)


def test_int8_needs_real_calibration(tmp_path) -> None:
    with pytest.raises(MobilecError, match="calibration"):
        get_exporter("onnx").export(trained_tiny(), (digits().x_test[:1],), tmp_path / "m.onnx", quant=QuantPlan())
    assert not (tmp_path / "m.onnx").exists()


class _Gate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.sum() > 0 else x  # data-dependent Python branch: not exportable


def test_untraceable_module_is_named_in_the_export_error(tmp_path) -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Sequential(nn.ReLU(), _Gate()), nn.Flatten(), nn.Linear(256, 10))
    with pytest.raises(ExportError, match=r"module 1\.1") as err:
        get_exporter("onnx").export(model.eval(), (digits().x_test[:1],), tmp_path / "m.onnx")
    assert "fix:" in str(err.value)
    assert not (tmp_path / "m.onnx").exists()
