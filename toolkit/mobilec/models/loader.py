"""Resolve a ``--model`` spec to a trained ``nn.Module``: zoo name, ``file.py:factory``, or ``.pt2`` export.

>>> from mobilec.data import load_dataset
>>> model, info = load_model("mobilenet_v2", weights=None, data=load_dataset("fashion-mnist"))  # doctest: +SKIP
>>> info.source
'zoo'
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mobilec.data import ImageDataset
from mobilec.errors import MobilecError
from mobilec.io import load_matching_state_dict
from mobilec.models import DEFAULT_MODEL, ZOO, build_model, count_params, list_models

#: the module name prefix of an imported --model FILE.py (checkpoints trust classes and functions from it)
USER_MODULE_PREFIX = "mobilec_user_model_"


@dataclass(frozen=True)
class ModelInfo:
    """Where a model came from: ``source`` is ``zoo``, ``file`` or ``exported``; ``weights`` the checkpoint used."""

    name: str
    source: str
    weights: str | None
    params: int


def load_model(spec: str | None, *, weights: Path | None = None, data: ImageDataset) -> tuple[nn.Module, ModelInfo]:
    """Build the model named by ``spec`` (None: the default zoo model) in eval mode, checked against ``data``.

    * ``mobilenet_v2`` (a zoo name): the shipped checkpoint, or ``weights`` if given.
    * ``path/to/model.py:factory``: ``factory()`` from that file; ``weights`` is required.
    * ``path/to/model.pt2``: a program saved with ``torch.export.save`` (carries its own weights).

    The model must map one ``data`` image to ``data.num_classes`` logits.
    """
    spec = spec or DEFAULT_MODEL
    weights = Path(weights) if weights is not None else None
    if spec in ZOO:
        model, info = _from_zoo(spec, weights, data)
    elif spec.endswith(".pt2"):
        model, info = _from_pt2(Path(spec), weights)
    elif ":" in spec and spec.rpartition(":")[0].endswith(".py"):
        model, info = _from_file(spec, weights)
    elif spec.endswith(".py"):
        raise MobilecError(f"model spec {spec!r} names no factory", hint=f"use {spec}:FACTORY, e.g. {spec}:build")
    else:
        raise MobilecError(f"unknown model {spec!r}",
                           hint=f"use a zoo name ({', '.join(list_models())}), path/to/file.py:factory, or a .pt2 file")
    model.eval()
    _check_output(model, info, data)
    return model, info


def _from_zoo(name: str, weights: Path | None, data: ImageDataset) -> tuple[nn.Module, ModelInfo]:
    c = data.input_shape[0]
    if weights is not None:
        model = build_model(name, num_classes=data.num_classes, in_channels=c, pretrained=False)
        load_matching_state_dict(model, weights)
        return model, ModelInfo(name, "zoo", str(weights), count_params(model))
    entry = ZOO[name]
    if entry.weights_path is not None and data.name != entry.default_data:
        raise MobilecError(f"the shipped {name} checkpoint was trained on {entry.default_data}, not on {data.name}",
                           hint=f"pass --weights trained on {data.name}, or use --data {entry.default_data}")
    model = build_model(name, num_classes=data.num_classes, in_channels=c, pretrained=True)
    return model, ModelInfo(name, "zoo", str(entry.weights_path), count_params(model))


def _from_file(spec: str, weights: Path | None) -> tuple[nn.Module, ModelInfo]:
    file_part, _, factory_name = spec.rpartition(":")
    path = Path(file_part)
    if not path.is_file():
        raise MobilecError(f"model file {path} does not exist", hint="check the path in --model FILE.py:FACTORY")
    if not factory_name.isidentifier():
        raise MobilecError(f"{factory_name!r} in {spec!r} is not a Python name", hint="use --model FILE.py:FACTORY")
    if weights is None:
        raise MobilecError(f"--model {spec} needs trained weights", hint="pass --weights checkpoint.pt (a state_dict)")
    module = _import_file(path)
    factory = getattr(module, factory_name, None)
    if factory is None or not callable(factory):
        names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                       and getattr(v, "__module__", None) == module.__name__)
        raise MobilecError(f"{path} has no callable {factory_name!r}",
                           hint=f"callables defined there: {', '.join(names) or 'none'}")
    try:
        model = factory()
    except Exception as exc:
        raise MobilecError(f"{path}:{factory_name}() raised {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}",
                           hint="make the factory callable with no arguments") from exc
    if not isinstance(model, nn.Module):
        raise MobilecError(f"{path}:{factory_name}() returned {type(model).__name__}, not a torch.nn.Module",
                           hint="return the model instance from the factory")
    load_matching_state_dict(model, weights)
    return model, ModelInfo(f"{path.stem}:{factory_name}", "file", str(weights), count_params(model))


def _import_file(path: Path):
    """Import ``path`` as a fresh module (unique name per resolved path, so two model files never clash)."""
    resolved = path.resolve()
    mod_name = f"{USER_MODULE_PREFIX}{hashlib.sha1(str(resolved).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(mod_name, resolved)
    if spec is None or spec.loader is None:
        raise MobilecError(f"cannot import {path}", hint="pass a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module  # dataclasses and pickling look modules up here
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(mod_name, None)
        raise MobilecError(f"importing {path} failed: {type(exc).__name__}: {str(exc)[:200]}",
                           hint="fix the error in the model file (run it with python to see the traceback)") from exc
    return module


def _from_pt2(path: Path, weights: Path | None) -> tuple[nn.Module, ModelInfo]:
    if not path.is_file():
        raise MobilecError(f"exported program {path} does not exist", hint="check the --model path")
    if weights is not None:
        raise MobilecError(f"{path} carries its own weights; --weights {weights} would be ignored", hint="drop --weights")
    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        raise MobilecError(f"cannot load exported program {path}: {type(exc).__name__}: {str(exc)[:200]}",
                           hint="save it with torch.export.save(torch.export.export(model, (x,)), path)") from None
    model = program.module()
    # .module() makes train()/eval() raise; the graph keeps the mode it was exported in (export in
    # eval mode), so let them just set the flag, as callers routinely call model.eval().
    model.train = types.MethodType(_set_training_flag, model)  # type: ignore[method-assign]
    model.eval = types.MethodType(lambda self: self.train(False), model)  # type: ignore[method-assign]
    return model, ModelInfo(path.stem, "exported", str(path), count_params(model))


def _set_training_flag(self: nn.Module, mode: bool = True) -> nn.Module:
    self.training = mode
    return self


def _check_output(model: nn.Module, info: ModelInfo, data: ImageDataset) -> None:
    x = data.x_test[:1]
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:
        raise MobilecError(
            f"model {info.name} fails on a {tuple(x.shape)} input from {data.name}: {type(exc).__name__}: {str(exc)[:200]}",
            hint="pick --data matching the model's input (or --input-shape C,H,W)",
        ) from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, data.num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise MobilecError(f"model {info.name} outputs {shape} for one image, expected (1, {data.num_classes}) logits",
                           hint=f"the model must return one logit per class of {data.name}")
