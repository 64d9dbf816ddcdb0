"""A DuQ/PROFIT model (a torch.fx GraphModule) survives a pass checkpoint, loaded without running pickled code."""

from __future__ import annotations

import copy
import types
from pathlib import Path

import pytest
import torch
from torch import fx, nn

from mobilec import checkpoint, fx_checkpoint
from mobilec.errors import MobilecError
from mobilec.models import build_model
from mobilec.passes.quant.lowering import lower_duq
from mobilec.passes.quant.qmodules import (
    convert_to_duq,
    duq_plan,
    fold_batchnorm,
    init_activation_quantizers,
    init_weight_quantizers,
)


def _ctx() -> types.SimpleNamespace:
    from mobilec.report import RunReport

    return types.SimpleNamespace(quant_plan=None, lowering=lower_duq, extras={}, report=RunReport(recipe="r", model={}, data={}))


def test_folded_duq_mobilenet_v3_round_trips_through_a_pass_checkpoint(tmp_path: Path) -> None:
    """h-swish, -3/8 padding, reshaped squeeze-excite gates, int8 observers: every node kind of the zoo's v3."""
    torch.manual_seed(0)
    x = torch.randn(16, 1, 28, 28)
    qm = convert_to_duq(build_model("mobilenet_v3_small", num_classes=10).eval(), weight_bits=4, act_bits=4)
    init_activation_quantizers(qm, x)
    init_weight_quantizers(qm)
    qm = fold_batchnorm(qm.eval())
    assert checkpoint.save(tmp_path, _ctx(), 0, "profit", qm, "fp") is None
    done = checkpoint.load_completed(tmp_path, ["profit"], "fp")
    assert done is not None and isinstance(done.model, fx.GraphModule)
    assert torch.equal(done.model(x), qm(x))
    assert duq_plan(done.model) == duq_plan(qm) and duq_plan(done.model).folded
    assert done.lowering is lower_duq


def test_a_model_traced_under_string_annotations_is_checkpointed() -> None:
    """`from __future__ import annotations` left string node types whose global torch.save could not pickle."""
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x).relu()

    qm = convert_to_duq(Net(), weight_bits=4, act_bits=4)
    assert all(not isinstance(n.type, str) for n in qm.graph.nodes)
    data = fx_checkpoint.encode(qm)
    assert torch.equal(fx_checkpoint.decode(data)(torch.ones(1, 1, 5, 5)), qm(torch.ones(1, 1, 5, 5)))


def _graph_with(target: object, op: str = "call_function", args: tuple = ()) -> dict:
    gm = fx.symbolic_trace(nn.Sequential(nn.ReLU()))
    data = fx_checkpoint.encode(gm)
    x = data["nodes"][0]["name"]
    bad = {"op": op, "name": "bad", "target": target,
           "args": fx_checkpoint._encode_value((fx.Node(gm.graph, x, "placeholder", x, (), {}), *args)),
           "kwargs": {"dict": {}}}
    data["nodes"].insert(1, bad)
    return data


@pytest.mark.parametrize(("target", "op", "args"), [
    ("builtins:eval", "call_function", ("1",)),
    ("os:system", "call_function", ("true",)),
    ("torch:save", "call_function", ("/tmp/x",)),           # torch.save lives in torch.serialization
    ("torch.serialization:load", "call_function", ()),
    ("builtins:getattr", "call_function", ("__class__",)),
    ("__reduce__", "call_method", ()),
    ('relu"); import os; os.system("true', "call_method", ()),
    ('a"); import os; ("', "call_module", ()),
])
def test_a_crafted_graph_is_refused_without_running_code(target: str, op: str, args: tuple) -> None:
    with pytest.raises(fx_checkpoint.FxCheckpointError):
        fx_checkpoint.decode(_graph_with(target, op, args))


def test_a_graph_the_format_cannot_hold_gives_a_reason_instead_of_a_checkpoint(tmp_path: Path) -> None:
    gm = fx.symbolic_trace(nn.Sequential(nn.ReLU()))
    node = next(iter(gm.graph.nodes))
    with gm.graph.inserting_after(node):
        gm.graph.call_function(lambda t: t + 1, (node,))
    gm.recompile()
    why = checkpoint.save(tmp_path, _ctx(), 0, "duq", gm, "fp")
    assert why and "no importable name" in why
    assert not checkpoint.checkpoint_path(tmp_path, 0, "duq").exists()


def test_a_tampered_fx_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    gm = fx.symbolic_trace(nn.Sequential(nn.ReLU()))
    assert checkpoint.save(tmp_path, _ctx(), 0, "duq", copy.deepcopy(gm), "fp") is None
    path = checkpoint.checkpoint_path(tmp_path, 0, "duq")
    obj = torch.load(path, weights_only=False)
    obj["model"] = _graph_with("builtins:eval", args=("1",))
    torch.save(obj, path)
    with pytest.raises(MobilecError, match=r"torch\.fx model is refused.*builtins:eval"):
        checkpoint.load_completed(tmp_path, ["duq"], "fp")
