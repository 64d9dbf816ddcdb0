"""ExecuTorch exporter through the real runtime: fp32 and int8 (XNNPACK PT2E) round trips, delegation report, sizes."""

from __future__ import annotations

import pytest
import torch
from export_models import artifact, digits, trained_tiny
from torch import nn

from mobilec.errors import ExportError
from mobilec.export import get_exporter
from mobilec.export.layers import check_layers
from mobilec.export.verify import verify_artifact
from mobilec.recipe import VerifySpec

pytestmark = pytest.mark.slow


def test_fp32_roundtrip_matches_eager_model_and_is_fully_delegated() -> None:
    art = artifact("executorch", False)
    assert art.path.read_bytes()[4:8] == b"ET12"
    assert art.delegation["backend"] == "XNNPACK"
    assert art.delegation["not_delegated"] == {} and art.delegation["delegated"] == art.delegation["total"] > 0
    result = verify_artifact(art, digits(), VerifySpec(min_top1_agreement=1.0, max_abs_error=1e-4), show_progress=False)
    assert result.passed, result.failures


def test_int8_roundtrip_matches_the_pt2e_reference() -> None:
    art = artifact("executorch", True)
    assert "XNNPACKQuantizer" in art.reference_name
    assert art.delegation["not_delegated"] == {}
    result = verify_artifact(art, digits(), VerifySpec(min_top1_agreement=0.99, min_snr_db=30), eager_model=trained_tiny(),
                             show_progress=False)
    assert result.passed, result.failures
    assert result.eager_model_agreement >= 0.97


def test_int8_is_at_least_3_5x_smaller_and_its_layer_table_comes_from_the_lowered_graph() -> None:
    fp32, int8 = artifact("executorch", False), artifact("executorch", True)
    assert fp32.size_bytes / int8.size_bytes >= 3.5
    model = trained_tiny()
    assert check_layers(int8.layers, model, file_size=int8.size_bytes) == []
    assert [x.name for x in int8.layers] == ["0", "3", "6", "8", "13"]
    assert {(x.stored, x.executed) for x in int8.layers} == {("int8", "int8")}
    assert {(x.stored, x.executed) for x in fp32.layers} == {("fp32", "fp32")}


class _Cumsum(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cumsum(x, dim=3)  # XNNPACK has no cumsum: it stays on a portable kernel


def test_delegation_report_names_the_op_xnnpack_does_not_take(tmp_path) -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), _Cumsum(), nn.Flatten(), nn.Linear(256, 10)).eval()
    art = get_exporter("executorch").export(model, (digits().x_test[:1],), tmp_path / "m.pte")
    d = art.delegation
    assert d["not_delegated"] == {"aten.cumsum.default": 1}
    assert d["not_delegated_in"]["aten.cumsum.default"] == ["2"]  # the module path
    assert 0 < d["delegated"] < d["total"] and d["subgraphs"] == 2
    assert any("aten.cumsum.default" in n for n in art.notes)
    result = verify_artifact(art, digits(), VerifySpec(max_abs_error=1e-4, max_samples=50), show_progress=False)
    assert result.passed, result.failures


class _ToNumpy(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(x.numpy() * 2)


def test_untraceable_module_is_named_in_the_export_error(tmp_path) -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), _ToNumpy(), nn.Flatten(), nn.Linear(256, 10)).eval()
    with pytest.raises(ExportError, match=r"executorch: torch\.export failed in module 1"):
        get_exporter("executorch").export(model, (digits().x_test[:1],), tmp_path / "m.pte")
    assert not list(tmp_path.iterdir())
