"""The QAT fold: the last phases train the BN-folded model with the exported integer numerics."""

from __future__ import annotations

import copy

import pytest
import torch
from test_duq import quantized_tiny
from torch import nn

from mobilec.errors import MobilecError
from mobilec.passes.quant.lowering import build_deploy_module
from mobilec.passes.quant.profit import Profit
from mobilec.passes.quant.qmodules import (
    accumulator_lsb,
    duq_plan,
    enable_quantizers,
    fold_batchnorm,
    quant_layers,
    weight_sum,
)
from mobilec.passes.quant.trainer import DistInfo, Trainer


def _digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from mobilec.data import load_dataset

    ds = load_dataset("digits")
    return ds.x_train[:256], ds.y_train[:256], ds.x_test[:200]


def _dead_channel_tiny() -> nn.Module:
    """TinyNet at 4 bits whose stem channel 0 is a dead ReLU, so the depthwise channel 0 after it
    is constant and its BatchNorm has (running) variance 0: gamma/sqrt(eps) ≈ 300x."""
    qm = quantized_tiny(4)
    stem_bn, dw_bn = qm.get_submodule("stem.1"), qm.get_submodule("dw.1")
    with torch.no_grad():
        stem_bn.weight[0], stem_bn.bias[0] = 0.0, -1.0  # ReLU6(-1) = 0 for every input
        dw_bn.running_mean[0], dw_bn.running_var[0] = 0.0, 0.0
        dw_bn.weight[0], dw_bn.bias[0] = 1.0, 0.37
    enable_quantizers(qm, acts=True, weights=True)
    return qm


def test_trainable_fold_is_the_exported_model() -> None:
    x_tr, y_tr, x = _digits()
    qm = _dead_channel_tiny().train()
    fold_batchnorm(qm, trainable=True)
    plan = duq_plan(qm)
    assert not plan.folded and plan.constant_channels == {"dw.0": 1}
    assert not any(isinstance(m, nn.BatchNorm2d) for m in qm.modules())
    dw = qm.get_submodule("dw.0")
    gamma0, var0 = dw.bn_weight.detach().clone(), dw.bn_var.clone()
    trainer = Trainer(qm, x_tr, y_tr, teacher=None, batch_size=32, weight_decay=1e-4, quant_lr_scale=0.01,
                      augment=False, hflip=False, zero=torch.zeros(1, 1, 1, 1), seed=0, ema_decay=0.0, dist=DistInfo())
    trainer.run_phase("folded", 4, lr=0.05)
    assert not torch.equal(dw.bn_weight, gamma0), "gamma learns through the folded scale and bias"
    assert torch.equal(dw.bn_var, var0) and bool(dw.bn_const[0]), "statistics frozen, constant channel kept"

    qm.eval()
    with torch.no_grad():
        trained = qm(x)
        frozen = fold_batchnorm(copy.deepcopy(qm))
        exported = frozen(x)
    assert duq_plan(frozen).folded
    assert torch.equal(trained, exported), "the trained forward is the folded forward, bit for bit"
    for _name, layer in quant_layers(frozen):  # every bias sits on the integer accumulator grid
        units = (layer.bias - layer.act_q.offset * layer.out_scale * weight_sum(layer)) / accumulator_lsb(layer)
        assert torch.allclose(units, units.round(), atol=2e-3)
    for fold_weights in (True, False):  # and the integer graph computes the same numbers
        deploy, _ = build_deploy_module(frozen, fold_weights=fold_weights)
        with torch.no_grad():
            out = deploy(x)
        assert torch.equal(out.argmax(1), exported.argmax(1))
        assert float((out - exported).abs().max()) <= 1e-5 * float(exported.abs().max())


def test_constant_channel_keeps_its_value_on_a_fine_bias_grid() -> None:
    qm = _dead_channel_tiny().eval()
    bn = qm.get_submodule("dw.1")
    beta = float(bn.bias[0])
    coarse = float(accumulator_lsb(qm.get_submodule("dw.0"), bn.weight / torch.sqrt(bn.running_var + bn.eps))[0])
    fold_batchnorm(qm)
    dw = qm.get_submodule("dw.0")
    assert float(dw.out_scale[0]) == 0.0
    fine = float(accumulator_lsb(dw)[0])
    assert coarse > 50 * fine and coarse > 2 * beta  # BN's own scale would have snapped 0.37 to 0
    got = {}
    dw.register_forward_hook(lambda m, i, o: got.setdefault("y", o))
    with torch.no_grad():
        qm(_digits()[2][:8])
    y0 = got["y"][:, 0]
    assert float((y0 - beta).abs().max()) <= fine / 2 + 1e-6
    deploy, _ = build_deploy_module(qm)
    assert not deploy.get_submodule("dw.0").w_int8[0].any(), "a constant channel is exported with zero weights"


def test_fold_phases_is_validated() -> None:
    assert Profit().fold_phases == 3
    with pytest.raises(MobilecError, match="fold_phases"):
        Profit.from_params({"fold_phases": 4}, where="recipe.toml")
