"""Corrupt inputs (issue 9): bad checkpoints given to `mobilec export`, bad artifacts given to
`mobilec profile`. Each is answered by one error line that names the file and what is wrong;
pickles that try to run code are refused without running it."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hardening_support import one_error_line, record, write_tiny_inputs

from mobilec.cli import main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_tiny_inputs(tmp_path_factory.mktemp("inputs"))


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _bad_checkpoints(tiny: dict[str, Path], root: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, the words the error must contain)."""
    good = tiny["weights"].read_bytes()
    state = torch.load(tiny["weights"], weights_only=True)
    made: dict[str, tuple[Path, str]] = {}

    def put(name: str, content: bytes, words: str) -> None:
        (root / name).write_bytes(content)
        made[name] = (root / name, words)

    put("empty.pt", b"", "is empty (0 bytes)")
    put("garbage.pt", os.urandom(3000), "cannot be read")
    put("text.pt", b"this is not a checkpoint\n" * 20, "cannot be read")
    for frac in (0.01, 0.3, 0.6, 0.95):
        put(f"truncated{int(frac * 100)}.pt", good[: int(len(good) * frac)], "cannot be read")
    put("list.pt", pickle.dumps([1, 2, 3]), "cannot be read")
    torch.save({"model": [1, 2]}, root / "nested.pt")
    made["nested.pt"] = (root / "nested.pt", "not a state dict of tensors")
    torch.save({k: (v[:1] if v.dim() else v) for k, v in state.items()}, root / "shape.pt")
    made["shape.pt"] = (root / "shape.pt", "shape mismatch 0.weight: checkpoint (1, 1, 3, 3) vs model (8, 1, 3, 3)")
    torch.save({k: (v.to(torch.int64) if v.is_floating_point() else v) for k, v in state.items()}, root / "dtype.pt")
    made["dtype.pt"] = (root / "dtype.pt", "dtype mismatch 0.weight: torch.int64 vs torch.float32")
    torch.save({**state, "extra.weight": torch.zeros(2)}, root / "extra.pt")
    made["extra.pt"] = (root / "extra.pt", "unexpected keys extra.weight")
    torch.save({k: v for k, v in state.items() if k != "7.bias"}, root / "missing_key.pt")
    made["missing_key.pt"] = (root / "missing_key.pt", "missing keys 7.bias")
    torch.save({**state, "evil": _RunsCode(root / "PWNED")}, root / "evil.pt")
    made["evil.pt"] = (root / "evil.pt", "contains pickled Python objects, refused for safety")
    with open(root / "evil_plain.pt", "wb") as f:  # a plain pickle (not a torch zip) that runs code
        pickle.dump(_RunsCode(root / "PWNED"), f)
    made["evil_plain.pt"] = (root / "evil_plain.pt", "refused for safety")
    made["missing.pt"] = (root / "nope.pt", "does not exist")
    return made


def test_bad_checkpoints_are_one_clear_line_naming_the_file(tiny: dict[str, Path], tmp_path: Path) -> None:
    cases = _bad_checkpoints(tiny, tmp_path)
    for name, (path, words) in cases.items():
        out = tmp_path / f"out-{name}"
        args = ["export", "--recipe", str(tiny["recipe"]), "--model", f"{tiny['model']}:make", "--weights", str(path),
                "--data", "digits", "--out", str(out)]
        one_error_line(CliRunner().invoke(main, args), str(path), words)
        assert not out.exists(), name  # no partial output folder
        record("corrupt checkpoints")
    assert not (tmp_path / "PWNED").exists()  # the pickled os.system never ran


def test_evil_pickle_refused_by_the_loader_itself(tmp_path: Path) -> None:
    from mobilec.errors import MobilecError
    from mobilec.io import load_state_dict

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump(_RunsCode(tmp_path / "PWNED"), f)
    with pytest.raises(MobilecError, match="refused for safety"):
        load_state_dict(path)
    assert not (tmp_path / "PWNED").exists()
    record("corrupt checkpoints")


# --- mobilec profile -------------------------------------------------------------------------------
GARBAGE = {
    "zero-byte": b"",
    "text": b"definitely not a model\n" * 30,
    "random": bytes(range(256)) * 8,
    "zip": b"PK\x03\x04" + b"\x00" * 400,
    "png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 300,
}


@pytest.mark.parametrize("suffix", [".pte", ".tflite", ".onnx"])
@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_profile_refuses_garbage_naming_the_file(tmp_path: Path, suffix: str, kind: str) -> None:
    path = tmp_path / f"model{suffix}"
    path.write_bytes(GARBAGE[kind])
    line = one_error_line(CliRunner().invoke(main, ["profile", str(path), "--runs", "2"]), str(path))
    assert any(w in line for w in ("empty", "truncated", "corrupted", "not a", "unknown", "cannot")), line
    record("corrupt artifacts")


def test_profile_refuses_a_folder_and_an_unknown_suffix(tmp_path: Path) -> None:
    (tmp_path / "dir.onnx").mkdir()
    one_error_line(CliRunner().invoke(main, ["profile", str(tmp_path / "dir.onnx")]), "dir.onnx")
    (tmp_path / "model.bin").write_bytes(b"x" * 100)
    one_error_line(CliRunner().invoke(main, ["profile", str(tmp_path / "model.bin")]), "model.bin")
    record("corrupt artifacts", 2)


@pytest.fixture(scope="module")
def real_artifacts() -> dict[str, Path]:
    try:
        from tests.export_models import artifact
    except ModuleNotFoundError:
        from export_models import artifact
    return {t: artifact(t, False).path for t in ("executorch", "tflite", "onnx")}


@pytest.mark.slow
@pytest.mark.parametrize("target", ["executorch", "tflite", "onnx"])
def test_profile_refuses_truncated_and_misnamed_artifacts(real_artifacts: dict[str, Path], tmp_path: Path, target: str) -> None:
    data = real_artifacts[target].read_bytes()
    suffix = real_artifacts[target].suffix
    cuts = sorted({0, 1, 7, 16, 64, len(data) // 10, len(data) // 3, len(data) // 2, 9 * len(data) // 10, len(data) - 1})
    for cut in cuts:
        path = tmp_path / f"cut{cut}{suffix}"
        path.write_bytes(data[:cut])
        line = one_error_line(CliRunner().invoke(main, ["profile", str(path), "--runs", "2"]), str(path))
        assert any(w in line for w in ("empty", "truncated", "corrupted", "not a")), line
        record("corrupt artifacts")
    for other in {".pte", ".tflite", ".onnx"} - {suffix}:
        path = tmp_path / f"model{other}"
        path.write_bytes(data)
        one_error_line(CliRunner().invoke(main, ["profile", str(path), "--runs", "2"]), str(path), f"holds a {target} model")
        record("corrupt artifacts")
