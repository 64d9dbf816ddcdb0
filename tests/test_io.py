"""Safe I/O: atomic writes leave no partial file; checkpoints never run pickled code."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from mobilec.errors import MobilecError
from mobilec.io import atomic_path, load_matching_state_dict, load_state_dict, save_state_dict_atomic


def test_atomic_path_leaves_nothing_on_failure(tmp_path: Path) -> None:
    final = tmp_path / "a.bin"
    final.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert final.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [final]


def test_state_dict_round_trip(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    save_state_dict_atomic(model.state_dict(), tmp_path / "m.pt")
    other = torch.nn.Linear(3, 2)
    load_matching_state_dict(other, tmp_path / "m.pt")
    assert torch.equal(other.weight, model.weight)


class _Evil:
    def __reduce__(self):  # pragma: no cover - never executed by a safe loader
        return (print, ("pwned",))


def test_pickle_with_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(1), "x": _Evil()}, path)
    with pytest.raises(MobilecError, match="pickled Python objects, refused"):
        load_state_dict(path)


@pytest.mark.parametrize(
    "content, message",
    [(b"", "empty"), (b"garbage" * 10, "cannot be read"), (pickle.dumps([1, 2]), "cannot be read|not a state dict")],
)
def test_bad_checkpoints(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(MobilecError, match=message):
        load_state_dict(path)


def test_truncated_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "t.pt"
    torch.save(torch.nn.Linear(50, 50).state_dict(), path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(MobilecError, match="cannot be read"):
        load_state_dict(path)


def test_mismatched_checkpoint_names_keys(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    torch.save(torch.nn.Sequential(torch.nn.Linear(3, 4)).state_dict(), path)
    with pytest.raises(MobilecError, match=r"shape mismatch 0\.weight: checkpoint \(4, 3\) vs model \(5, 3\)"):
        load_matching_state_dict(torch.nn.Sequential(torch.nn.Linear(3, 5)), path)
    with pytest.raises(MobilecError, match=r"missing keys 1\.bias, 1\.weight"):
        load_matching_state_dict(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1)), path)


@pytest.mark.parametrize(("text", "cpu", "simd"), [
    ("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni\n\n"
     "processor\t: 1\nmodel name\t: other\nflags\t\t: fpu\n", "AMD EPYC", ["avx2", "fma", "avx512f", "avx512_vnni"]),
    ("processor\t: 0\nFeatures\t: fp asimd asimddp i8mm\n", None, ["asimddp", "i8mm"]),  # ARM: no model name line
    ("", None, []),
])
def test_machine_description_names_the_cpu_and_its_simd_features(tmp_path: Path, text: str, cpu: str | None,
                                                                  simd: list[str]) -> None:
    from mobilec.report import machine_description

    (tmp_path / "cpuinfo").write_text(text)
    m = machine_description(tmp_path / "cpuinfo")
    assert m["simd"] == simd and m["cores"] >= 1
    if cpu is not None:
        assert m["cpu"] == cpu
    assert machine_description(tmp_path / "missing")["simd"] == []  # no /proc/cpuinfo (macOS): no features, no error
