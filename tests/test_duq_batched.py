"""The per-step batch of all layers' quantized weights and folded BatchNorm (``passes/quant/batched.py``)
gives the per-layer path's values and gradients bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch
from test_duq import _enable_fused, quantized_tiny

from mobilec.passes.quant import batched
from mobilec.passes.quant.duq import enable_fused_kernels
from mobilec.passes.quant.qmodules import enable_quantizers, fold_batchnorm, quant_layers
from mobilec.passes.quant.trainer import DistInfo, Trainer


def _step(model: torch.nn.Module, x: torch.Tensor, use_batch: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    m = copy.deepcopy(model)
    m.train(model.training)
    for name, p in m.named_parameters():  # a frozen layer (PROFIT) and the weights a BN-stabilize phase freezes
        if name.startswith("dw.0.") and name.endswith("weight"):
            p.requires_grad_(False)
    if use_batch:
        batched.precompute(m)
    out = m(x)
    (out * torch.linspace(-1, 1, out.shape[1])).square().sum().backward()
    if use_batch:
        assert all(layer._pre is not None for _, layer in quant_layers(m))
        batched.clear(m)
    return out.detach(), {n: p.grad for n, p in m.named_parameters() if p.grad is not None}


def _models() -> list[tuple[str, torch.nn.Module]]:
    out = []
    for per_channel in (False, True):
        qm = quantized_tiny(4, per_channel=per_channel, seed=3)
        enable_quantizers(qm, acts=True, weights=True)
        out.append((f"separate-pc{per_channel}", qm.train()))
        out.append((f"folded-pc{per_channel}", fold_batchnorm(copy.deepcopy(qm).train(), trainable=True)))
    early = quantized_tiny(3, seed=4)
    enable_quantizers(early, acts=True, weights=False)  # the activation stages: weight quantizers off
    out.append(("weights-off", early.train()))
    return out


def _v3() -> torch.nn.Module:
    """54 layers: more quantizers than one vector register holds (a vectorized softplus differs in the last bit)."""
    from mobilec.models.zoo import mobilenet_v3_small
    from mobilec.passes.quant.qmodules import convert_to_duq, init_activation_quantizers, init_weight_quantizers

    torch.manual_seed(0)
    qm = convert_to_duq(mobilenet_v3_small(num_classes=10, in_channels=1).eval(), weight_bits=4, act_bits=4)
    init_activation_quantizers(qm, torch.randn(8, 1, 28, 28))
    init_weight_quantizers(qm)
    enable_quantizers(qm, acts=True, weights=True)
    return fold_batchnorm(qm.train(), trainable=True).eval()  # eval: no dropout, so both runs see the same forward


@pytest.mark.slow
@pytest.mark.parametrize("fused", [True, False])
def test_batched_weights_and_folds_equal_the_per_layer_path(fused: bool) -> None:
    if fused:
        _enable_fused()
    try:
        x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0)).to(memory_format=torch.channels_last)
        for label, model in _models():
            (y0, g0), (y1, g1) = _step(model, x, False), _step(model, x, True)
            assert torch.equal(y0, y1), label
            assert g0.keys() == g1.keys() and len(g0) > 10, label
            unequal = [n for n in g0 if not torch.equal(g0[n], g1[n])]
            assert not unequal, f"{label}: gradients differ in {unequal}"
        x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
        (y0, g0), (y1, g1) = _step(_v3(), x, False), _step(_v3(), x, True)
        assert torch.equal(y0, y1) and all(torch.equal(g0[n], g1[n]) for n in g0)
    finally:
        enable_fused_kernels(False)


def test_the_trainer_installs_the_batch_and_leaves_nothing_behind() -> None:
    qm = fold_batchnorm(copy.deepcopy(quantized_tiny(4, seed=1)).train(), trainable=True)
    enable_quantizers(qm, acts=True, weights=True)
    seen: list[bool] = []
    layer = next(layer for _, layer in quant_layers(qm))
    layer.register_forward_pre_hook(lambda m, a: seen.append(m._pre is not None))
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 1, 8, 8, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    tr = Trainer(qm, x, y, teacher=None, batch_size=16, weight_decay=0.0, quant_lr_scale=0.01, augment=False,
                 hflip=False, zero=torch.zeros(1, 1, 1, 1), seed=0, ema_decay=0.0, dist=DistInfo())
    tr.run_phase("p", 3, lr=0.01)
    assert seen == [True] * 3
    assert all(layer._pre is None for _, layer in quant_layers(qm))
    qm.eval()
    with torch.no_grad():
        qm(x)  # outside the trainer: the per-layer path
    assert seen[-1] is False
    copy.deepcopy(qm)  # no step's graph left on the layers


@pytest.mark.parametrize("fused", [True, False])
def test_trainer_feeds_channels_last_batches_and_trains_alike(fused: bool) -> None:
    """A 3-channel batch goes to the net channels-last on the CPU (the convs' faster path); the trained
    model matches the contiguous-batch run to float tolerance (only the summation order differs)."""
    from test_duq import TinyNet, randomize_bn

    from mobilec.passes.quant.qmodules import convert_to_duq, init_activation_quantizers, init_weight_quantizers

    torch.manual_seed(0)
    net = TinyNet()
    net.stem[0] = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 3, 8, 8, generator=gen), torch.randint(0, 10, (96,), generator=gen)
    qm = convert_to_duq(randomize_bn(net, 0), weight_bits=4, act_bits=4)
    init_activation_quantizers(qm, x[:32])
    init_weight_quantizers(qm)
    enable_quantizers(qm, acts=True, weights=True)
    if fused:
        _enable_fused()
    try:
        trained, layouts = [], []
        for cl in (False, True):
            m = copy.deepcopy(qm).train()
            tr = Trainer(m, x, y, teacher=None, batch_size=32, weight_decay=0.0, quant_lr_scale=0.01, augment=True,
                         hflip=False, zero=torch.zeros(1, 3, 1, 1), seed=0, ema_decay=0.0, dist=DistInfo(), channels_last=cl)
            m.register_forward_pre_hook(lambda _m, a: layouts.append(a[0].is_contiguous(memory_format=torch.channels_last)))
            res = tr.run_phase("p", 3, lr=0.01)
            assert res.steps == 3
            trained.append(m)
    finally:
        enable_fused_kernels(False)
    assert layouts == [False] * 3 + [True] * 3
    start = dict(qm.named_parameters())
    moved = max((p - start[n]).abs().max().item() for n, p in trained[0].named_parameters())
    assert moved > 1e-3
    diff = max((a - b).abs().max().item() for a, b in zip(trained[0].parameters(), trained[1].parameters(), strict=True))
    assert diff < 0.02 * moved  # (a grid code flipped by the summation order moves a few values a little)
