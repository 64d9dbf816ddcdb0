"""Safe file handling: atomic writes, and checkpoint loading that never runs pickled code."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from mobilec.errors import DiskWriteError, MobilecError


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it over ``final`` only on success.

    An interrupted or failing writer leaves no half-written file at ``final``. A full disk, a
    read-only or unwritable folder raise MobilecError naming ``final``.
    """
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    except OSError as exc:
        raise _write_error(final, exc) from None
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; artifacts get the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    except OSError as exc:
        if exc.errno in _WRITE_ERRNOS:
            raise _write_error(final, exc) from None
        raise
    except RuntimeError as exc:  # torch.save reports a failed write (e.g. ENOSPC) as a RuntimeError
        if _TORCH_WRITE_FAILURE.search(str(exc)):
            raise DiskWriteError(f"cannot write {final}: the write failed ({str(exc).splitlines()[0][:120]}); "
                                 "the disk is probably full (nothing was left half-written)",
                                 hint="free disk space and rerun (--resume continues after the last completed pass)") from None
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


_TORCH_WRITE_FAILURE = re.compile(r"inline_container|PytorchStreamWriter|file write failed|unexpected pos")
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG, errno.ENOTDIR, errno.EISDIR}


def _write_error(final: Path, exc: OSError) -> DiskWriteError:
    reason = exc.strerror or os.strerror(exc.errno or 0) or type(exc).__name__
    hint = "free disk space and rerun (--resume continues after the last completed pass)" \
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else "choose a writable --out"
    return DiskWriteError(f"cannot write {final}: {reason} (nothing was left half-written)", hint=hint)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def save_state_dict_atomic(state: dict[str, Any], path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint with ``weights_only=True``; unsafe pickles and bad files raise MobilecError."""
    path = Path(path)
    if not path.is_file():
        raise MobilecError(f"checkpoint {path} does not exist", hint="check the --weights path")
    if path.stat().st_size == 0:
        raise MobilecError(f"checkpoint {path} is empty (0 bytes)", hint="re-save it with torch.save(model.state_dict(), path)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
        text = str(exc)
        detail = text.split("WeightsUnpickler error:")[-1].strip().splitlines()[0] if "WeightsUnpickler error:" in text else ""
        msg = detail or (text.splitlines()[0] if text else type(exc).__name__)
        code = _pickled_callables(path)
        if code:
            msg = "it names " + ", ".join(code[:3])
        if "Unsupported global" in text or "GLOBAL" in text or code:
            raise MobilecError(
                f"checkpoint {path} contains pickled Python objects, refused for safety ({msg[:160]})",
                hint="save only tensors: torch.save(model.state_dict(), path)",
            ) from None
        raise MobilecError(
            f"checkpoint {path} cannot be read: {type(exc).__name__}: {msg[:160]}",
            hint="the file is truncated or not a torch checkpoint; re-save it with torch.save(model.state_dict(), path)",
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise MobilecError(
            f"checkpoint {path} is not a state dict of tensors (found {type(obj).__name__})",
            hint="save it with torch.save(model.state_dict(), path)",
        )
    return obj


def _pickled_callables(path: Path, limit: int = 1 << 24) -> list[str]:
    """Globals a plain pickle file would import (never executed: the opcodes are only listed)."""
    import pickletools

    try:
        with open(path, "rb") as f:
            data = f.read(limit)
        names: list[str] = []
        strings: list[str] = []
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                strings.append(str(arg))
            elif op.name == "GLOBAL":
                names.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # not a pickle (a zip, garbage, truncated): nothing to report
        return []
    return [n for n in dict.fromkeys(names) if not n.startswith(("torch.", "collections.OrderedDict"))]


def load_matching_state_dict(model: torch.nn.Module, path: Path) -> None:
    """Load ``path`` into ``model``; missing, unexpected or mis-shaped keys are named in the error.

    A model with an ``upgrade_state_dict(state)`` method first maps older layouts of its own
    checkpoints onto the current one (e.g. zoo MobileNet v3's squeeze-excite convs → Linear).
    """
    state = load_state_dict(path)
    upgrade = getattr(model, "upgrade_state_dict", None)
    if callable(upgrade):
        state = upgrade(state)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad_shape = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    bad_dtype = [
        f"{k}: {state[k].dtype} vs {own[k].dtype}"
        for k in own
        if k in state and state[k].shape == own[k].shape and state[k].dtype.is_floating_point != own[k].dtype.is_floating_point
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_few(unexpected)}")
    if bad_shape:
        problems.append(f"shape mismatch {_few(bad_shape)}")
    if bad_dtype:
        problems.append(f"dtype mismatch {_few(bad_dtype)}")
    if problems:
        raise MobilecError(
            f"checkpoint {path} does not match the model: " + "; ".join(problems),
            hint="pass the factory that built this checkpoint, or the checkpoint of this model",
        )
    model.load_state_dict(state)


def _few(items: list[str], n: int = 4) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" (+{len(items) - n} more)" if len(items) > n else "")
