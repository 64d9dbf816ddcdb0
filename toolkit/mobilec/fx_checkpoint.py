"""A torch.fx GraphModule as plain data that a ``weights_only`` checkpoint can hold.

torch pickles a GraphModule as its generated Python source and re-executes it on load, which a
safe load must refuse. Here the graph is stored as a node list instead: ops, names, targets
(functions by qualified name) and arguments made of nodes and plain values. Loading rebuilds the
graph with ``fx.Graph.create_node`` and resolves functions only from torch's tensor-function
namespaces, ``operator``, ``math``, a few builtins and the user's already imported model file
(judged by where a function lives, so ``torch:save`` is refused); names and targets must be plain identifiers,
so the code fx generates from them cannot carry anything else. The submodules, parameters and
buffers travel as an ordinary ``nn.Module``, which the checkpoint loader already vets.
"""

from __future__ import annotations

import builtins
import importlib
import re
import sys
from typing import Any

import torch
from torch import fx, nn

from mobilec.models.loader import USER_MODULE_PREFIX

FX_MARK = "__mobilec_fx_graph_module__"
_OPS = ("placeholder", "get_attr", "call_function", "call_method", "call_module", "output")
_FUNCTION_MODULES = ("torch", "torch.functional", "torch.nn.functional", "torch._C._nn", "torch._C._VariableFunctions",
                     "_operator", "operator", "math")
_BUILTINS = {"getattr", "len", "int", "float", "bool", "min", "max", "abs", "round", "sum", "range"}
_NAME = re.compile(r"[A-Za-z0-9_]+\Z")


class FxCheckpointError(TypeError):
    """The GraphModule holds something this format does not store (said in the message)."""


# -- encoding --------------------------------------------------------------------------------
def encode(gm: fx.GraphModule) -> dict[str, Any]:
    """The GraphModule as plain data; FxCheckpointError for what the format cannot hold."""
    nested = [n for n, m in gm.named_modules() if n and isinstance(m, fx.GraphModule)]
    if nested:
        raise FxCheckpointError(f"nested GraphModule {nested[0]!r}")
    if type(gm.graph._codegen) is not fx.graph.CodeGen:
        raise FxCheckpointError(f"custom fx code generator {type(gm.graph._codegen).__name__}")
    root = nn.Module()
    for name, child in gm.named_children():
        root.add_module(name, child)
    for name, p in gm.named_parameters(recurse=False):
        root.register_parameter(name, p)
    for name, b in gm.named_buffers(recurse=False):
        root.register_buffer(name, b, persistent=name not in gm._non_persistent_buffers_set)
    nodes, attrs = [], {}
    for node in gm.graph.nodes:
        target = node.target
        if node.op == "call_function":
            target = function_name(target)
            resolve_function(target)  # refuse now what a load would refuse
        elif node.op == "get_attr" and not _is_member(gm, target):
            attrs[target] = _fetch(gm, target)
        _check_target(node.op, target)
        nodes.append({"op": node.op, "name": node.name, "target": target,
                      "args": _encode_value(node.args), "kwargs": _encode_value(node.kwargs)})
    return {FX_MARK: 1, "class_name": type(gm).__name__, "root": root, "nodes": nodes, "attrs": attrs,
            "meta": dict(gm.meta)}


def function_name(fn: Any) -> str:
    module = getattr(fn, "__module__", None) or ("builtins" if fn in vars(builtins).values() else None)
    qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    name = getattr(fn, "__name__", None)
    if module in sys.modules and name and getattr(sys.modules[module], name, None) is fn:
        qualname = name  # torch.flatten's qualname is _VariableFunctionsClass.flatten
    if not module or not qualname or "<" in qualname:
        raise FxCheckpointError(f"call_function target {fn!r} has no importable name")
    return f"{module}:{qualname}"


def _encode_value(v: Any) -> Any:
    if isinstance(v, fx.Node):
        return {"node": v.name}
    if isinstance(v, tuple | list):
        return {"tuple" if isinstance(v, tuple) else "list": [_encode_value(x) for x in v]}
    if isinstance(v, dict):
        if not all(isinstance(k, str) for k in v):
            raise FxCheckpointError("a node argument is a dict with non-string keys")
        return {"dict": {k: _encode_value(x) for k, x in v.items()}}
    if isinstance(v, slice):
        return {"slice": [_encode_value(v.start), _encode_value(v.stop), _encode_value(v.step)]}
    if v is Ellipsis:
        return {"ellipsis": True}
    if isinstance(v, torch.dtype):
        return {"dtype": str(v).removeprefix("torch.")}
    if isinstance(v, torch.device):
        return {"device": str(v)}
    if isinstance(v, torch.memory_format):
        return {"memory_format": str(v).removeprefix("torch.")}
    if v is None or isinstance(v, bool | int | float | str):
        return {"value": v}
    raise FxCheckpointError(f"a node argument of type {type(v).__name__}")


# -- decoding --------------------------------------------------------------------------------
def is_encoded(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get(FX_MARK) == 1


def decode(data: dict[str, Any]) -> fx.GraphModule:
    """Rebuild the GraphModule; FxCheckpointError names what is not allowed."""
    graph = fx.Graph()
    env: dict[str, fx.Node] = {}
    for nd in data["nodes"]:
        op, target, name = nd["op"], nd["target"], nd["name"]
        if op not in _OPS or not isinstance(name, str) or not _NAME.match(name):
            raise FxCheckpointError(f"node {name!r} with op {op!r}")
        _check_target(op, target)
        if op == "call_function":
            target = resolve_function(target)
        args, kwargs = _decode_value(nd["args"], env), _decode_value(nd["kwargs"], env)
        if op == "call_function" and target is builtins.getattr and (len(args) < 2 or _private(args[1])):
            raise FxCheckpointError(f"getattr of {args[1:2]!r}: only public attributes")
        node = graph.create_node(op, target, tuple(args), dict(kwargs), name=name)
        env[name] = node
    root = data["root"]
    if not isinstance(root, nn.Module):
        raise FxCheckpointError("the GraphModule's modules are missing")
    for path, value in data["attrs"].items():
        if not isinstance(value, torch.Tensor):
            raise FxCheckpointError(f"attribute {path!r} is a {type(value).__name__}, not a tensor")
        _check_target("get_attr", path)
        *parents, leaf = path.split(".")
        owner = root
        for p in parents:
            owner = getattr(owner, p)
        setattr(owner, leaf, value)
    class_name = data["class_name"] if _NAME.match(str(data["class_name"])) else "GraphModule"
    gm = fx.GraphModule(root, graph, class_name)
    gm.meta.update(data["meta"])
    return gm


def resolve_function(qualified: str) -> Any:
    """The function ``module:qualname`` names, if a checkpoint may call it."""
    module_name, _, qualname = str(qualified).partition(":")
    parts = qualname.split(".")
    refused = FxCheckpointError(f"call_function target {qualified!r} is not one a checkpoint may name")
    if not _allowed_module(module_name, qualname) or not all(_NAME.match(p) and not p.startswith("_") for p in parts):
        raise refused
    try:
        obj: Any = sys.modules.get(module_name) or importlib.import_module(module_name)
    except ImportError:
        raise FxCheckpointError(f"call_function target {qualified!r}: no module {module_name}") from None
    for p in parts:
        obj = getattr(obj, p, None)
    if not callable(obj) or (isinstance(obj, type) and module_name != "builtins"):
        raise FxCheckpointError(f"call_function target {qualified!r} is not a function")
    home = getattr(obj, "__module__", None)  # torch.save is reachable as torch:save but lives elsewhere
    if home is not None and not _allowed_module(home, qualname):
        raise refused
    return obj


def _allowed_module(module_name: str, qualname: str) -> bool:
    return (module_name in _FUNCTION_MODULES
            or (module_name.startswith(USER_MODULE_PREFIX) and module_name in sys.modules)
            or (module_name == "builtins" and qualname in _BUILTINS))


def _decode_value(v: Any, env: dict[str, fx.Node]) -> Any:
    if not isinstance(v, dict) or len(v) != 1:
        raise FxCheckpointError(f"malformed node argument {v!r:.80}")
    (kind, x), = v.items()
    if kind == "node":
        if x not in env:
            raise FxCheckpointError(f"argument refers to unknown node {x!r}")
        return env[x]
    if kind in ("tuple", "list"):
        items = [_decode_value(i, env) for i in x]
        return tuple(items) if kind == "tuple" else items
    if kind == "dict":
        return {str(k): _decode_value(i, env) for k, i in x.items()}
    if kind == "slice":
        return slice(*(_decode_value(i, env) for i in x))
    if kind == "ellipsis":
        return Ellipsis
    if kind in ("dtype", "memory_format"):
        value = getattr(torch, str(x), None)
        if not isinstance(value, torch.dtype | torch.memory_format):
            raise FxCheckpointError(f"unknown torch {kind} {x!r}")
        return value
    if kind == "device":
        return torch.device(str(x))
    if kind == "value" and (x is None or isinstance(x, bool | int | float | str)):
        return x
    raise FxCheckpointError(f"malformed node argument {v!r:.80}")


# -- shared checks ---------------------------------------------------------------------------
def _check_target(op: str, target: Any) -> None:
    if op == "call_function":
        if not isinstance(target, str):
            raise FxCheckpointError(f"call_function target {target!r}")
        return
    ok = isinstance(target, str) and all(_NAME.match(p) for p in target.split("."))
    if op in ("placeholder", "output", "call_method"):
        ok = ok and "." not in target
    if op == "call_method":
        ok = ok and not target.startswith("_")
    if not ok:
        raise FxCheckpointError(f"{op} target {target!r} is not a plain name")


def _private(v: Any) -> bool:
    return not isinstance(v, str) or v.startswith("_")


def _is_member(gm: fx.GraphModule, path: str) -> bool:
    *parents, leaf = path.split(".")
    owner = gm.get_submodule(".".join(parents)) if parents else gm
    return leaf in owner._parameters or leaf in owner._buffers or leaf in owner._modules


def _fetch(gm: fx.GraphModule, path: str) -> Any:
    obj: Any = gm
    for p in path.split("."):
        obj = getattr(obj, p)
    if not isinstance(obj, torch.Tensor):
        raise FxCheckpointError(f"attribute {path!r} is a {type(obj).__name__}, not a tensor")
    return obj

