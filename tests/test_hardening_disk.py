"""Disk full / unwritable output (issue 9): a clear error before any long work where it can be
detected; a write that fails mid-run (ENOSPC, simulated) stops the run with one error line and
leaves no half-written file, and `--resume` then finishes the run with the uninterrupted result."""

from __future__ import annotations

import errno
import os
import pathlib
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hardening_support import (
    assert_only_complete_files,
    assert_same_result,
    export_args,
    one_error_line,
    record,
    tiny_inputs,
    tiny_reference,
)

from mobilec.cli import main

__all__ = ["tiny_inputs", "tiny_reference"]  # session fixtures


@pytest.fixture
def no_pass_may_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Detected problems must stop the run before any (long) pass starts."""
    from mobilec import api

    def fail(*args, **kwargs):
        raise AssertionError("a pass ran although the problem was detectable up front")

    monkeypatch.setattr(api, "run_passes", fail)


def test_output_under_a_file_is_refused_up_front(tiny_inputs, tmp_path: Path, no_pass_may_run) -> None:
    (tmp_path / "afile").write_text("x")
    one_error_line(CliRunner().invoke(main, export_args(tiny_inputs, tmp_path / "afile")), "is not a folder")
    one_error_line(CliRunner().invoke(main, export_args(tiny_inputs, tmp_path / "afile" / "run")), "not writable")
    record("unwritable/full-disk injections", 2)


def test_read_only_output_is_refused_up_front(tiny_inputs, tmp_path: Path, monkeypatch, no_pass_may_run) -> None:
    real = pathlib.Path.write_bytes

    def read_only(self: Path, data: bytes) -> int:
        if self.parent.name == "ro":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", read_only)
    one_error_line(CliRunner().invoke(main, export_args(tiny_inputs, tmp_path / "ro")), str(tmp_path / "ro"),
                   "not writable: Read-only file system")
    record("unwritable/full-disk injections")


def test_too_little_free_space_is_refused_before_any_work(tiny_inputs, tmp_path: Path, monkeypatch, no_pass_may_run) -> None:
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=200 * 1024))
    out = tmp_path / "run"
    one_error_line(CliRunner().invoke(main, export_args(tiny_inputs, out)), "has 0.2 MiB free, the run needs about",
                   "free disk space")
    assert not out.exists()  # nothing created
    record("unwritable/full-disk injections")


class _DiskFills:
    """The n-th write of a file through mobilec's atomic writers hits ENOSPC half-way through."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, n: int) -> None:
        self.writes = 0
        self.n = n
        real_write, real_save = pathlib.Path.write_bytes, torch.save

        def write_bytes(path: Path, data: bytes) -> int:
            if self._hit(path):
                real_write(path, bytes(data)[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            return real_write(path, data)

        def save(obj, f, *args, **kwargs):
            if isinstance(f, str | os.PathLike) and self._hit(Path(f)):
                real_write(Path(f), b"PK\x03\x04half")
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")  # what torch says
            return real_save(obj, f, *args, **kwargs)

        monkeypatch.setattr(pathlib.Path, "write_bytes", write_bytes)
        monkeypatch.setattr(torch, "save", save)

    def _hit(self, path: Path) -> bool:
        if not path.name.endswith(".part"):
            return False
        self.writes += 1
        return self.writes == self.n


# writes in order: checkpoint 1..3, compressed.pt, model.onnx, report.json, report.md
ALL_WRITES = list(range(1, 8))
QUICK_WRITES = [2, 5]
WRITES = ALL_WRITES if os.environ.get("MOBILEC_ALL_FAULT_POINTS") else QUICK_WRITES


@pytest.mark.parametrize("n", WRITES)
def test_disk_full_mid_run_leaves_no_half_written_file_and_resumes(tiny_inputs, tiny_reference, tmp_path: Path,
                                                                  monkeypatch, n: int) -> None:
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        fills = _DiskFills(m, n)
        result = CliRunner().invoke(main, export_args(tiny_inputs, out))
    record("ENOSPC injections")
    assert fills.writes >= n, "the run wrote fewer files than expected"
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    line = lines[-1]  # what the passes printed before, then one error line
    assert [ln for ln in lines if "error" in ln.lower()] == [line] and line.startswith("error: cannot write "), result.output
    assert "nothing was left half-written" in line and "--resume" in line and "Traceback" not in result.output
    assert "No space left on device" in line or "disk is probably full" in line
    assert_only_complete_files(out)
    resumed = CliRunner().invoke(main, export_args(tiny_inputs, out, "--resume"), catch_exceptions=False)
    assert resumed.exit_code == 0, resumed.output
    assert_same_result(out, tiny_reference)
