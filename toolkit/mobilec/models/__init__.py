"""The model zoo registry, shipped checkpoints, and model statistics.

>>> model = build_model("resnet_small", num_classes=10, in_channels=1, pretrained=False)
>>> count_params(model) > 0
True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from mobilec.errors import MobilecError
from mobilec.models import zoo
from mobilec.models.stats import count_macs, count_params

#: Directory of the shipped checkpoints (``<model>_fashion_mnist.pt``) and their provenance JSONs.
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_MODEL = "mobilenet_v2"


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model: its factory, a one-line description, the data its checkpoint was trained on.

    ``weights_file`` is relative to :data:`WEIGHTS_DIR` (None when no checkpoint is shipped);
    the checkpoint is for ``num_classes=10, in_channels=1`` (Fashion-MNIST, 28×28).
    """

    factory: Callable[..., nn.Module]
    description: str
    default_data: str = "fashion-mnist"
    weights_file: str | None = None

    @property
    def weights_path(self) -> Path | None:
        """Absolute path of the shipped checkpoint, or None if none is shipped/present."""
        if self.weights_file is None:
            return None
        path = WEIGHTS_DIR / self.weights_file
        return path if path.is_file() else None


ZOO: dict[str, ZooEntry] = {
    "mobilenet_v1": ZooEntry(zoo.mobilenet_v1, "MobileNet v1, depthwise-separable convs (width 0.5)"),
    "mobilenet_v2": ZooEntry(zoo.mobilenet_v2, "MobileNet v2, inverted residuals + ReLU6 (default model)",
                             weights_file="mobilenet_v2_fashion_mnist.pt"),
    "mobilenet_v3_small": ZooEntry(zoo.mobilenet_v3_small,
                                   "MobileNet v3 small, h-swish + SE, negative padding (-3/8) after h-swish",
                                   weights_file="mobilenet_v3_small_fashion_mnist.pt"),
    "vgg_small": ZooEntry(zoo.vgg_small, "VGG-style full 3×3 convs + BN, FC 512-256 head",
                          weights_file="vgg_small_fashion_mnist.pt"),
    "resnet_small": ZooEntry(zoo.resnet_small, "ResNet with basic blocks, 32-64-128 channels"),
}
_PRETRAINED_SHAPE = (10, 1)  # (num_classes, in_channels) of every shipped checkpoint


def list_models() -> list[str]:
    """Names of the zoo models, sorted."""
    return sorted(ZOO)


def get_entry(name: str) -> ZooEntry:
    if name not in ZOO:
        raise MobilecError(f"unknown zoo model {name!r}", hint=f"available: {', '.join(list_models())}")
    return ZOO[name]


def build_model(name: str = DEFAULT_MODEL, *, num_classes: int = 10, in_channels: int = 1,
                pretrained: bool = True, **kwargs: object) -> nn.Module:
    """Build a zoo model; with ``pretrained=True`` load its shipped Fashion-MNIST checkpoint.

    Raises MobilecError when no checkpoint is shipped or when ``num_classes``/``in_channels``
    differ from the checkpoint's (10, 1); ``pretrained=False`` gives a random init.
    """
    entry = get_entry(name)
    model = entry.factory(num_classes=num_classes, in_channels=in_channels, **kwargs)
    if not pretrained:
        return model
    if entry.weights_file is None:
        raise MobilecError(f"no shipped checkpoint for zoo model {name!r}",
                           hint="pass your own --weights, or use pretrained=False for a random init")
    if (num_classes, in_channels) != _PRETRAINED_SHAPE:
        raise MobilecError(
            f"the shipped {name} checkpoint is for 10 classes × 1 channel ({entry.default_data}), "
            f"not {num_classes} classes × {in_channels} channel(s)",
            hint="pass --weights trained for your data, or use pretrained=False and train it",
        )
    path = entry.weights_path
    if path is None:
        raise MobilecError(f"shipped checkpoint {WEIGHTS_DIR / entry.weights_file} is missing",
                           hint=f"reinstall mobilec, or train it: python bench/train_zoo.py --model {name}")
    from mobilec.io import load_matching_state_dict

    load_matching_state_dict(model, path)
    model.eval()
    return model


__all__ = [
    "DEFAULT_MODEL",
    "WEIGHTS_DIR",
    "ZOO",
    "ZooEntry",
    "build_model",
    "count_macs",
    "count_params",
    "get_entry",
    "list_models",
]
