"""Runtime sessions: loading each artifact kind, running it, and refusing bad files before a native runtime sees them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from export_models import artifact, digits, trained_tiny

from mobilec.errors import MobilecError
from mobilec.runtimes import detect_target, open_artifact, run_batched

TARGETS = ["executorch", "tflite", "onnx"]


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_session_runs_the_artifact_like_the_eager_model(target: str) -> None:
    art = artifact(target, False)
    session = open_artifact(art.path, threads=2)
    assert session.target == target == detect_target(art.path)
    assert session.input_shape == (1, 1, 8, 8)
    assert session.load_seconds >= 0
    x = digits().x_test[:5].numpy()
    out = run_batched(session, x)
    with torch.no_grad():
        ref = trained_tiny()(digits().x_test[:5]).numpy()
    assert out.dtype == np.float32 and out.shape == (5, 10)
    np.testing.assert_allclose(out, ref, atol=1e-4)
    seen = []
    run_batched(session, x, progress=seen.append)
    assert sum(seen) == 5
    with pytest.raises(MobilecError, match="takes input of shape"):
        session.run(np.zeros((2, 1, 8, 8), np.float32))
    with pytest.raises(MobilecError, match="samples of shape"):
        run_batched(session, np.zeros((3, 3, 8, 8), np.float32))


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("fraction", [0.0, 0.02, 0.5, 0.999])
def test_truncated_artifact_is_refused_with_the_file_named(tmp_path, target: str, fraction: float) -> None:
    src = artifact(target, False).path
    data = src.read_bytes()
    cut = tmp_path / f"cut{src.suffix}"
    cut.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(MobilecError, match=r"empty|truncated|corrupted") as err:
        open_artifact(cut)
    assert str(cut) in str(err.value) and "fix:" in str(err.value)


@pytest.mark.slow
def test_suffix_that_disagrees_with_the_content_is_refused(tmp_path) -> None:
    wrong = tmp_path / "model.onnx"
    wrong.write_bytes(artifact("tflite", False).path.read_bytes())
    with pytest.raises(MobilecError, match=r"holds a tflite model but is named \.onnx"):
        open_artifact(wrong)


@pytest.mark.parametrize("suffix", [".pte", ".tflite", ".onnx", ".bin"])
@pytest.mark.parametrize("content", [b"\x00" * 7, bytes(range(256)) * 9, b"hello, this is not a model\n" * 40, b"\x08\x07"])
def test_garbage_is_refused_before_the_runtime_sees_it(tmp_path, suffix: str, content: bytes) -> None:
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(content)
    with pytest.raises(MobilecError) as err:
        open_artifact(path)
    assert str(path) in str(err.value)


def test_missing_file_folder_and_bad_threads(tmp_path) -> None:
    with pytest.raises(MobilecError, match="does not exist"):
        open_artifact(tmp_path / "nope.pte")
    with pytest.raises(MobilecError, match="not a file"):
        open_artifact(tmp_path)
    with pytest.raises(MobilecError, match="threads"):
        open_artifact(tmp_path / "nope.pte", threads=0)


@pytest.mark.slow
def test_truncated_pte_segment_is_caught_by_the_header_check(tmp_path) -> None:
    data = artifact("executorch", False).path.read_bytes()
    assert data[8:12] == b"eh00"
    cut = tmp_path / "m.pte"
    cut.write_bytes(data[:-1])  # one byte short: the runtime would read past the end of the weights
    with pytest.raises(MobilecError, match=rf"header says {len(data)} bytes, the file has {len(data) - 1}"):
        open_artifact(cut)


@pytest.mark.slow
def test_executorch_pool_is_not_resized_under_a_loaded_program() -> None:
    from mobilec.runtimes import executorch_threads, set_executorch_threads

    session = open_artifact(artifact("executorch", False).path)
    n = executorch_threads()
    assert session.threads == n >= 1
    assert set_executorch_threads(n) == n  # no change asked: fine
    with pytest.raises(MobilecError, match="cannot be resized safely"):
        set_executorch_threads(n + 1)
