"""Dropping a .tflite's internal tensor names: the same outputs, inputs/outputs keep theirs, smaller files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from export_models import artifact, digits, trained_tiny

from mobilec.export.tflite_names import strip_tensor_names

pytestmark = pytest.mark.slow


def _names(path: Path) -> tuple[list[str], set[str]]:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=1)
    io = {d["name"] for d in interp.get_input_details() + interp.get_output_details()}
    return [d["name"] for d in interp.get_tensor_details()], io


def _outputs(path: Path, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=1)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    res = []
    for row in x:
        interp.set_tensor(inp["index"], row[None])
        interp.invoke()
        res.append(interp.get_tensor(out["index"]).copy())
    return np.concatenate(res)


def test_stripped_file_computes_the_same_outputs(tmp_path: Path) -> None:
    import litert_torch

    x = digits().x_test[:32]
    raw = tmp_path / "raw.tflite"
    litert_torch.convert(trained_tiny().eval(), (x[:1],)).export(str(raw))
    names, io = _names(raw)
    assert sum(1 for n in names if n and n not in io) > 5  # litert-torch names the internal tensors
    stripped = tmp_path / "stripped.tflite"
    shutil.copy(raw, stripped)
    saved = strip_tensor_names(stripped)
    assert saved > 0 and stripped.stat().st_size == raw.stat().st_size - saved
    names_after, io_after = _names(stripped)
    assert io_after == io and all(n == "" or n in io for n in names_after)
    assert np.array_equal(_outputs(raw, x.numpy()), _outputs(stripped, x.numpy()))
    assert strip_tensor_names(stripped) == 0  # nothing left to drop: the file is not rewritten


def test_the_exporter_writes_files_without_internal_names() -> None:
    art = artifact("tflite", True)
    names, io = _names(art.path)
    assert io and all(n == "" or n in io for n in names)
    assert any("internal tensor names dropped" in n for n in art.notes)
    assert art.size_bytes == art.path.stat().st_size
