"""The per-layer bits table: measured information bits, matching artifact weights to modules, cross-checks."""

from __future__ import annotations

import numpy as np
import pytest
from torch import nn

from mobilec.export import get_exporter
from mobilec.export.base import LayerBits
from mobilec.export.layers import WeightRecord, check_layers, layer_bits, measure_info_bits, torch_layer_bits

rng = np.random.default_rng(0)


@pytest.mark.parametrize(("levels", "bits"), [(2, 1), (3, 2), (15, 4), (16, 4), (129, 7), (255, 8)])
def test_integer_grids_measure_their_bits(levels: int, bits: int) -> None:
    codes = np.arange(levels) - levels // 2
    w = rng.choice(codes, size=(16, 300)).astype(np.int8)
    w[0, :levels] = codes  # every level present
    assert measure_info_bits(w, 0, 8, integer=True) == bits


def test_float_weights_on_a_per_channel_grid_read_as_the_grid() -> None:
    grid = rng.integers(-7, 8, size=(16, 144)).astype(np.float32)  # 4-bit symmetric, 15 levels
    scales = rng.uniform(0.01, 0.1, size=(16, 1)).astype(np.float32)
    assert measure_info_bits(grid * scales, 0, 32, integer=False) == 4.0
    assert measure_info_bits(rng.normal(size=(16, 144)).astype(np.float32), 0, 32, integer=False) == 32.0


def test_too_few_weights_to_show_a_grid_read_as_the_container() -> None:
    assert measure_info_bits(rng.integers(-127, 128, size=(4, 9)).astype(np.int8), 0, 8, integer=True) == 8.0


def test_records_match_modules_by_name_then_by_shape() -> None:
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Conv2d(8, 8, 1), nn.Flatten(), nn.Linear(8, 4))
    w = [m.weight.detach().numpy() for m in (model[0], model[1], model[3])]
    records = [
        WeightRecord(w[2], 0, "fp32", "fp32", w[2].nbytes, 16, name_hint=None),
        WeightRecord(w[1], 0, "fp32", "fp32", w[1].nbytes, 32, name_hint="1"),
        WeightRecord(w[0], 0, "fp32", "fp32", w[0].nbytes, 32, name_hint="nonsense"),
    ]
    table, problems = layer_bits(model, records)
    assert problems == []
    assert [(x.name, x.kind, x.params) for x in table] == [("0", "conv2d", 72), ("1", "conv2d", 64), ("3", "linear", 32)]
    assert table[2].stored_bytes == 32 * 4 + 16
    table, problems = layer_bits(model, records[:2])
    assert problems == ["module 0 (conv2d, 72 weights) was not found in the artifact"]


def test_check_layers_catches_inconsistent_tables() -> None:
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Flatten(), nn.Linear(8, 4))
    good = torch_layer_bits(model)
    assert check_layers(good, model, file_size=10_000) == []
    bad = [LayerBits("0", "conv2d", 70, 9.0, "int8", "int8", 10, 20)]
    problems = check_layers(bad, model, file_size=5)
    assert any("70 weights in the artifact, 72 in the model" in p for p in problems)
    assert any("cannot hold" in p for p in problems)
    assert any("info_bits 9.0 outside" in p for p in problems)
    assert any("module 2 is missing" in p for p in problems)
    assert any("file has only 5" in p for p in problems)


def test_get_exporter_names_the_targets() -> None:
    assert [get_exporter(t).suffix for t in ("executorch", "tflite", "onnx")] == [".pte", ".tflite", ".onnx"]
    with pytest.raises(Exception, match="unknown export target"):
        get_exporter("coreml")


def test_eval_mode_dropout_is_removed_from_exported_graphs_and_training_dropout_kept() -> None:
    import torch
    from torch import nn

    from mobilec.export import drop_inference_identities

    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(4, 2)).eval()
    gm = torch.export.export(model, (torch.randn(2, 4),)).module()
    assert drop_inference_identities(gm) == 1
    assert not any("dropout" in str(n.target) for n in gm.graph.nodes)
    x = torch.randn(2, 4)
    assert torch.equal(gm(x), model(x))
    training = torch.export.export(nn.Sequential(nn.Dropout(0.3)).train(), (torch.randn(2, 4),)).module()
    assert drop_inference_identities(training) == 0  # train=True dropout is not the identity: left alone
    assert any("dropout" in str(n.target) for n in training.graph.nodes)
