"""Shared by the exporter/runtime/verify tests: a ~94k-parameter CNN trained briefly on sklearn digits,
and its artifacts, exported once per test session (exports through the real toolchains take seconds)."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mobilec.data import load_dataset
from mobilec.export import get_exporter
from mobilec.export.base import Artifact
from mobilec.quant import QuantPlan

_OUT = Path(tempfile.mkdtemp(prefix="mobilec-export-tests-"))
atexit.register(shutil.rmtree, _OUT, ignore_errors=True)


def tiny_cnn(width: int = 32, num_classes: int = 10) -> nn.Sequential:
    """conv-BN-ReLU6, depthwise conv-BN-ReLU6, strided conv, conv, pool, dropout, linear: 94k parameters at width 32
    (a dropout node before the classifier, as in MobileNetV2, where exporters must treat it as the identity;
    p = 0 so training draws the same random numbers, hence the same weights, as the model without it)."""
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU6(),
        nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False), nn.BatchNorm2d(width), nn.ReLU6(),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.0), nn.Linear(4 * width, num_classes),
    )


@functools.lru_cache(maxsize=1)
def digits():
    return load_dataset("digits")


@functools.lru_cache(maxsize=1)
def trained_tiny() -> nn.Module:
    """3 epochs of Adam on the digits train split (~95 % test accuracy); eval mode."""
    ds = digits()
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = tiny_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(3):
        perm = torch.randperm(len(ds.x_train), generator=g)
        for i in range(0, len(perm), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            F.cross_entropy(model(ds.x_train[idx]), ds.y_train[idx]).backward()
            opt.step()
    return model.eval()


def calibration() -> list[torch.Tensor]:
    return digits().calibration_batches(4, 32, seed=0)


@functools.cache
def artifact(target: str, int8: bool) -> Artifact:
    """The trained tiny model exported to ``target`` (fp32 or int8), once per session."""
    exporter = get_exporter(target)
    path = _OUT / f"tiny-{'int8' if int8 else 'fp32'}{exporter.suffix}"
    return exporter.export(trained_tiny(), (digits().x_test[:1],), path,
                           quant=QuantPlan() if int8 else None, calibration=calibration() if int8 else ())
