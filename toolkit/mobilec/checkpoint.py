"""Per-pass checkpoints in the run folder, so ``mobilec export --resume`` continues an interrupted run.

After pass *i* completes, ``<out>/checkpoints/pass-NN-NAME.pt`` holds the model after that pass,
what the pass left in the context (quant plan, lowering, extras), its report records and the RNG
states: resuming restores the last checkpoint of a contiguous prefix and runs the remaining passes
exactly as an uninterrupted run would. A run *fingerprint* (recipe, model spec, weights hash, data,
seed) is stored in each checkpoint; checkpoints of a different run are refused.

Loading never runs pickled code: ``torch.load(weights_only=True)`` with only the classes a model
is made of (``nn.Module`` subclasses and dataclasses from torch, mobilec or the user's model file)
allowed; anything else in the file is refused with a MobilecError naming it. A torch.fx
GraphModule (what the duq/profit passes return), which torch would pickle as code to execute, is
stored as data instead (``fx_checkpoint``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import pickle
import random
import shutil
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mobilec import fx_checkpoint
from mobilec.errors import MobilecError
from mobilec.io import atomic_path
from mobilec.models.loader import USER_MODULE_PREFIX

CHECKPOINT_DIR = "checkpoints"
# numpy scalars/arrays in pass summaries and extras (what torch's docs allow for them)
_NUMPY_GLOBALS = {f"numpy.{m}multiarray.{n}" for m in ("core.", "_core.") for n in ("_reconstruct", "scalar")} | {
    "numpy.ndarray", "numpy.dtype"}


@dataclass
class PassCheckpoint:
    """What a run looked like right after pass ``index`` (0-based) named ``name``."""

    index: int
    name: str
    model: nn.Module
    quant_plan: Any
    lowering: Any
    extras: dict[str, Any]
    passes: list[Any]  # report PassRecords so far
    notes: list[str]
    rng: dict[str, Any]


def fingerprint(recipe: dict[str, Any], model: str, weights: Path | None, data: str, seed: int) -> str:
    """A digest of everything that determines the passes' outputs."""
    digest = hashlib.sha256()
    weights_hash = _file_sha256(weights) if weights is not None and Path(weights).is_file() else None
    doc = {"recipe": recipe, "model": model, "weights": weights_hash, "data": data, "seed": seed}
    digest.update(json.dumps(doc, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:32]


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_path(out_dir: Path, index: int, name: str) -> Path:
    return Path(out_dir) / CHECKPOINT_DIR / f"pass-{index + 1:02d}-{name}.pt"


def clear_checkpoints(out_dir: Path) -> None:
    """Remove the checkpoints of an earlier run (a fresh, non-resumed run starts clean)."""
    shutil.rmtree(Path(out_dir) / CHECKPOINT_DIR, ignore_errors=True)


def require_free_space(out_dir: Path, need_bytes: int) -> None:
    """Fail before any long work when the run folder's disk cannot hold the run's files."""
    existing = Path(out_dir)
    while not existing.exists() and existing != existing.parent:  # the folder may not exist yet
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < need_bytes:
        raise MobilecError(
            f"output folder {out_dir} has {free / 2**20:.1f} MiB free, the run needs about {need_bytes / 2**20:.1f} MiB",
            hint="free disk space or choose another --out",
        )


def estimated_run_bytes(model: nn.Module, n_targets: int, n_passes: int) -> int:
    """An upper estimate of what a run writes: fp32 weights per artifact, compressed.pt and each pass checkpoint."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return weights * (n_targets + 1 + n_passes) + (1 << 20)


def remove_stale_parts(out_dir: Path) -> list[Path]:
    """Delete ``.NAME.XXXX.part`` temporaries a killed run (SIGKILL, power loss) left behind."""
    removed = []
    for folder in (Path(out_dir), Path(out_dir) / CHECKPOINT_DIR):
        if folder.is_dir():
            for p in folder.glob(".*.part"):
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


# -- saving ----------------------------------------------------------------------------------
def save(out_dir: Path, ctx: Any, index: int, name: str, model: nn.Module, run_fingerprint: str) -> str | None:
    """Write the checkpoint after pass ``index``; returns why it could not be written (or None)."""
    lowering = ctx.lowering
    if isinstance(lowering, types.FunctionType):  # a module-level function is stored by name
        lowering = {"function": f"{lowering.__module__}:{lowering.__qualname__}"}
    try:  # torch pickles a GraphModule as code to execute, which a safe load refuses: store it as data
        stored = fx_checkpoint.encode(model) if isinstance(model, torch.fx.GraphModule) else model
    except fx_checkpoint.FxCheckpointError as exc:
        return f"its torch.fx graph cannot be stored safely: {exc}"
    payload = {
        "fingerprint": run_fingerprint,
        "index": index,
        "name": name,
        "model": stored,
        "quant_plan": ctx.quant_plan,
        "lowering": lowering,
        "extras": ctx.extras,
        "passes": list(ctx.report.passes),
        "notes": list(ctx.report.notes),
        "rng": _rng_state(),
    }
    path = checkpoint_path(out_dir, index, name)
    try:
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
    except (TypeError, AttributeError, RuntimeError, pickle.PicklingError) as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    return None


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)), *map(_plain, np_state[2:])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


# -- loading ---------------------------------------------------------------------------------
def load_completed(out_dir: Path, pass_names: list[str], run_fingerprint: str) -> PassCheckpoint | None:
    """The checkpoint of the last pass of the longest completed prefix of ``pass_names``, or None.

    A checkpoint written by a different run (other recipe, model, weights, data or seed) is an error.
    """
    latest = None
    for index, name in enumerate(pass_names):
        path = checkpoint_path(out_dir, index, name)
        if not path.is_file():
            break
        latest = path
    if latest is None:
        return None
    obj = load_checkpoint(latest)
    if obj.get("fingerprint") != run_fingerprint:
        raise MobilecError(
            f"checkpoint {latest} belongs to a run with another recipe, model, weights, data or seed",
            hint="resume with the exact arguments of the interrupted run, or start over with --force",
        )
    return _as_checkpoint(obj, latest)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` allowing only model classes; anything else is refused."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(f)
    except Exception as exc:
        raise MobilecError(f"pass checkpoint {path} cannot be read: {type(exc).__name__}: {str(exc)[:160]}",
                           hint="it is truncated or not a mobilec checkpoint; start over with --force") from None
    allowed = [_trusted_global(n, path) for n in names]
    if any(n.startswith("numpy.") for n in names):  # numpy dtype instances are rebuilt from these classes
        allowed += [t for t in vars(np.dtypes).values() if isinstance(t, type)]
    try:
        with torch.serialization.safe_globals(allowed):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MobilecError(f"pass checkpoint {path} cannot be read: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}",
                           hint="it is truncated or corrupted; start over with --force") from None
    if not isinstance(obj, dict) or not (isinstance(obj.get("model"), nn.Module) or fx_checkpoint.is_encoded(obj.get("model"))):
        raise MobilecError(f"pass checkpoint {path} is not a mobilec pass checkpoint", hint="start over with --force")
    return obj


def _trusted_global(qualified: str, path: Path) -> Any:
    """Resolve a global named in a checkpoint if it is a class a model or context is made of."""
    module_name, _, attr = qualified.rpartition(".")
    top = module_name.split(".")[0]
    refuse = MobilecError(f"pass checkpoint {path} references {qualified}, refused for safety",
                          hint="only model classes may appear in a checkpoint; start over with --force")
    if qualified in _NUMPY_GLOBALS:
        obj = np
        for part in qualified.split(".")[1:]:
            obj = getattr(obj, part, None)
        if obj is None:
            raise refuse
        return obj
    if module_name == "numpy.dtypes" and isinstance(getattr(np.dtypes, attr, None), type):
        return getattr(np.dtypes, attr)
    if top in ("torch", "mobilec"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise refuse from None
    elif module_name.startswith(USER_MODULE_PREFIX) and module_name in sys.modules:
        module = sys.modules[module_name]  # the user's --model file, imported by this run already
    else:
        raise refuse
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
    if not isinstance(obj, type):
        raise refuse
    if issubclass(obj, nn.Module) or dataclasses.is_dataclass(obj):
        return obj
    raise refuse


def _as_checkpoint(obj: dict[str, Any], path: Path) -> PassCheckpoint:
    lowering = obj.get("lowering")
    if isinstance(lowering, dict) and "function" in lowering:
        lowering = _resolve_lowering(lowering["function"], path)
    model = obj["model"]
    if fx_checkpoint.is_encoded(model):
        try:
            model = fx_checkpoint.decode(model)
        except (fx_checkpoint.FxCheckpointError, KeyError, AttributeError) as exc:
            raise MobilecError(f"pass checkpoint {path}: its torch.fx model is refused: {exc}",
                               hint="start over with --force") from None
    return PassCheckpoint(
        index=int(obj["index"]),
        name=str(obj["name"]),
        model=model,
        quant_plan=obj.get("quant_plan"),
        lowering=lowering,
        extras=dict(obj.get("extras") or {}),
        passes=list(obj.get("passes") or []),
        notes=list(obj.get("notes") or []),
        rng=obj["rng"],
    )


def _resolve_lowering(spec: str, path: Path) -> Any:
    """A lowering stored by name must be a function of a mobilec pass module."""
    module_name, _, qualname = spec.partition(":")
    if not module_name.startswith("mobilec.passes."):
        raise MobilecError(f"pass checkpoint {path} names lowering {spec}, refused (not a mobilec pass function)",
                           hint="start over with --force")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if not isinstance(obj, types.FunctionType):
        raise MobilecError(f"pass checkpoint {path} names lowering {spec}, which does not exist", hint="start over with --force")
    return obj
