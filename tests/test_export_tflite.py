"""TFLite exporter through the real LiteRT interpreter: fp32 and int8 (PT2E) round trips, int8 I/O, sizes, layer table."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from export_models import artifact, digits, trained_tiny

from mobilec.export.layers import check_layers
from mobilec.export.verify import verify_artifact
from mobilec.recipe import VerifySpec
from mobilec.runtimes import open_artifact

pytestmark = pytest.mark.slow


def test_fp32_roundtrip_matches_eager_model() -> None:
    art = artifact("tflite", False)
    assert art.path.read_bytes()[4:8] == b"TFL3"
    result = verify_artifact(art, digits(), VerifySpec(min_top1_agreement=1.0, max_abs_error=1e-4), show_progress=False)
    assert result.passed, result.failures
    assert result.accuracy > 0.85


def test_int8_roundtrip_matches_the_pt2e_reference() -> None:
    art = artifact("tflite", True)
    assert "PT2E" in art.reference_name
    result = verify_artifact(art, digits(), VerifySpec(min_top1_agreement=0.99, min_snr_db=30), eager_model=trained_tiny(),
                             show_progress=False)
    assert result.passed, result.failures
    assert result.eager_model_agreement >= 0.97
    # the interpreter computes in int8; the reference simulates it in float: they differ by at most a few output steps
    assert result.mean_abs_error < 0.05 * np.abs(_logits_scale()).max()


def test_int8_classifier_input_is_quantized_once() -> None:
    """Eval-mode dropout is dropped before PT2E: no q -> dq -> dropout -> q requantization for the converter to merge."""
    art = artifact("tflite", True)
    graph = art.reference.graph
    assert not any("dropout" in str(n.target) for n in graph.nodes)
    linear = next(n for n in graph.nodes if "linear" in str(n.target))
    dq = linear.args[0]  # dequantize <- quantize <- flatten/pool: one scale from the pool to the classifier
    q = dq.args[0]
    assert "dequantize" in str(dq.target) and "quantize" in str(q.target)
    assert not ("dequantize" in str(q.args[0].target) if q.args[0].op == "call_function" else False)
    session = open_artifact(art.path)
    fc = next(op for op in session.interpreter._get_ops_details() if op["op_name"] == "FULLY_CONNECTED")
    fc_scale = session.interpreter.get_tensor_details()[fc["inputs"][0]]["quantization"][0]
    ref_scale = float(q.args[1]) if not isinstance(q.args[1], torch.fx.Node) else None
    assert ref_scale is not None and fc_scale == pytest.approx(ref_scale, rel=1e-6)


def _logits_scale() -> np.ndarray:
    import torch

    with torch.no_grad():
        return trained_tiny()(digits().x_test[:64]).numpy()


def test_int8_model_has_quantized_io_that_the_session_handles() -> None:
    art = artifact("tflite", True)
    session = open_artifact(art.path)
    details = session.interpreter.get_input_details()[0]
    assert np.dtype(details["dtype"]) == np.int8
    assert any("input tensor is int8" in n for n in art.notes)  # told to the app developer
    out = session.run(digits().x_test[:1].numpy())
    assert out.dtype == np.float32 and out.shape == (1, 10)


def test_int8_is_at_least_3_5x_smaller_and_its_layer_table_is_read_from_the_file() -> None:
    fp32, int8 = artifact("tflite", False), artifact("tflite", True)
    assert fp32.size_bytes / int8.size_bytes >= 3.5
    model = trained_tiny()
    assert check_layers(fp32.layers, model, file_size=fp32.size_bytes) == []
    assert check_layers(int8.layers, model, file_size=int8.size_bytes) == []
    assert [x.name for x in int8.layers] == ["0", "3", "6", "8", "13"]
    assert {(x.stored, x.executed) for x in int8.layers} == {("int8", "int8")}
    assert {x.info_bits for x in fp32.layers} == {32.0}
    assert all(x.info_bits == 8.0 for x in int8.layers)
