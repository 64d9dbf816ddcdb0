"""Model zoo: small mobile CNNs for 28×28 inputs (any size ≥ 8×8 works), all ``torch.export``-able.

Every factory takes ``num_classes=10, in_channels=1`` plus a width multiplier. Shapes are
static and there is no data-dependent control flow, so ``torch.export.export`` succeeds.

>>> model = mobilenet_v2().eval()
>>> model(torch.zeros(1, 1, 28, 28)).shape
torch.Size([1, 10])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: Minimum of h-swish(x) = x·relu6(x+3)/6, reached at x = -3/2: the "negative padding" value (PROFIT).
HSWISH_MIN = -3.0 / 8.0


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor`` without dropping more than 10 %."""
    min_value = min_value or divisor
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


class PaddedConv2d(nn.Module):
    """A convolution whose border is padded with ``pad_value`` instead of zeros.

    Implemented as ``F.pad(x, ..., value=pad_value)`` followed by ``self.conv`` (a plain
    ``nn.Conv2d`` with ``padding=0``), so passes that rewrite the inner conv keep the padding.
    Used with ``pad_value = HSWISH_MIN`` for depthwise convs that follow h-swish: padding with
    the activation's minimum rather than 0 (which h-swish outputs for x=0 anyway, but which is
    not the range's lower end) keeps the quantization range tight ("negative padding", PROFIT).

    >>> conv = PaddedConv2d(8, 8, 3, stride=1, groups=8, pad_value=HSWISH_MIN)
    >>> conv(torch.zeros(1, 8, 7, 7)).shape
    torch.Size([1, 8, 7, 7])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        groups: int = 1,
        bias: bool = False,
        pad_value: float = 0.0,
    ) -> None:
        super().__init__()
        self.padding = (kernel_size - 1) // 2
        self.pad_value = float(pad_value)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, 0, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.padding
        return self.conv(F.pad(x, (p, p, p, p), value=self.pad_value))

    def extra_repr(self) -> str:
        return f"padding={self.padding}, pad_value={self.pad_value}"


def conv_bn_act(
    cin: int,
    cout: int,
    kernel: int = 3,
    stride: int = 1,
    groups: int = 1,
    act: type[nn.Module] | None = nn.ReLU6,
    pad_value: float = 0.0,
) -> nn.Sequential:
    """Conv (no bias) → BatchNorm → activation; a non-zero ``pad_value`` uses :class:`PaddedConv2d`."""
    conv: nn.Module
    if pad_value != 0.0:
        conv = PaddedConv2d(cin, cout, kernel, stride=stride, groups=groups, pad_value=pad_value)
    else:
        conv = nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False)
    layers: list[nn.Module] = [conv, nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act(inplace=True) if act in (nn.ReLU, nn.ReLU6, nn.Hardswish) else act())
    return nn.Sequential(*layers)


def _classifier_head(cin: int, hidden: int | None, num_classes: int, dropout: float,
                     act: type[nn.Module] = nn.ReLU6) -> nn.Sequential:
    layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
    if hidden:
        layers += [nn.Linear(cin, hidden), act(inplace=True)]
        cin = hidden
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(cin, num_classes))
    return nn.Sequential(*layers)


def _init_weights(model: nn.Module) -> None:
    # squeeze-excite FC layers stand for 1x1 convs: initialised as those (kaiming, fan-out)
    conv_like = {id(fc) for se in model.modules() if isinstance(se, SqueezeExcite) for fc in (se.fc1, se.fc2)}
    for m in model.modules():
        if isinstance(m, nn.Conv2d) or id(m) in conv_like:
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------- MobileNet v1


class MobileNetV1(nn.Module):
    """Depthwise-separable MobileNet (v1): 3×3 depthwise + 1×1 pointwise, BN, ReLU6."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width_mult: float = 1.0,
                 dropout: float = 0.1) -> None:
        super().__init__()
        # (out_channels, stride): 28 → 14 → 7 → 4
        cfg = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (1024, 1)]
        c = make_divisible(32 * width_mult)
        layers: list[nn.Module] = [conv_bn_act(in_channels, c, 3, 1)]
        for out, stride in cfg:
            o = make_divisible(out * width_mult)
            layers += [conv_bn_act(c, c, 3, stride, groups=c), conv_bn_act(c, o, 1)]
            c = o
        self.features = nn.Sequential(*layers)
        self.classifier = _classifier_head(c, None, num_classes, dropout)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def mobilenet_v1(num_classes: int = 10, in_channels: int = 1, width_mult: float = 0.5) -> MobileNetV1:
    """MobileNet v1 (depthwise separable); width 0.5: ≈0.35M params, ≈8M MACs for 28×28 inputs."""
    return MobileNetV1(num_classes, in_channels, width_mult)


# --------------------------------------------------------------------------- MobileNet v2


class InvertedResidual(nn.Module):
    """MobileNet v2 block: 1×1 expand → 3×3 depthwise → 1×1 linear project, residual add when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = round(cin * expand_ratio)
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(conv_bn_act(cin, hidden, 1))
        layers += [
            conv_bn_act(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_residual:
            return x + self.conv(x)
        return self.conv(x)


#: (expand ratio t, channels c, repeats n, first stride s) after a stride-2 stem, for 28×28 inputs:
#: 28 → 14 → 7 → 4 → 2. Fewer repeats and earlier downsampling than the ImageNet table: training
#: on 2 CPU cores is dominated by per-layer overhead at high resolution, so the weights sit in
#: 1×1 convs at 4×4 and 2×2 instead (≈1.55M params, ≈11M MACs).
MOBILENET_V2_SETTINGS: list[tuple[int, int, int, int]] = [
    (1, 16, 1, 1),
    (6, 24, 1, 1),
    (6, 32, 2, 2),
    (6, 64, 2, 2),
    (6, 96, 1, 1),
    (6, 160, 2, 2),
    (6, 320, 1, 1),
]


class MobileNetV2(nn.Module):
    """MobileNet v2: inverted residuals with linear bottlenecks, ReLU6, residual adds."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        width_mult: float = 1.0,
        settings: Sequence[tuple[int, int, int, int]] | None = None,
        stem_channels: int = 32,
        stem_stride: int = 2,
        last_channels: int = 1280,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        settings = list(settings or MOBILENET_V2_SETTINGS)
        c = make_divisible(stem_channels * width_mult)
        last = make_divisible(last_channels * max(1.0, width_mult))
        layers: list[nn.Module] = [conv_bn_act(in_channels, c, 3, stem_stride)]
        for t, ch, n, s in settings:
            out = make_divisible(ch * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(c, out, s if i == 0 else 1, t))
                c = out
        layers.append(conv_bn_act(c, last, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = _classifier_head(last, None, num_classes, dropout)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def mobilenet_v2(num_classes: int = 10, in_channels: int = 1, width_mult: float = 1.0) -> MobileNetV2:
    """MobileNet v2 for 28×28 (the default model): ≈1.55M params, ≈11M MACs, 28 → 14 → 7 → 4 → 2."""
    return MobileNetV2(num_classes, in_channels, width_mult)


# --------------------------------------------------------------------------- MobileNet v3 small


class SqueezeExcite(nn.Module):
    """Squeeze-excite with hard-sigmoid gate (MobileNet v3).

    The paper's two 1×1 convs act on the pooled 1×1 map, so they are Linear layers on the pooled
    vector here: the same function, which integer runtimes then execute as fully-connected layers,
    and those take 4-bit weights (XNNPACK qc4w, LiteRT INT4) where convolutions do not.
    Checkpoints with the 1×1-conv layout load through :meth:`MobileNetV3Small.upgrade_state_dict`.
    Both layers carry ``conv1x1 = True``, so PROFIT's AIWQ (measured on convs, not on classifier FC
    layers) still ranks and freezes them as the convs they stand for.
    """

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(channels, squeeze)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(squeeze, channels)
        self.gate = nn.Hardsigmoid()
        for fc in (self.fc1, self.fc2):  # PROFIT's AIWQ ranks convs: these are 1×1 convs (on a 1×1 map)
            fc.conv1x1 = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.gate(self.fc2(self.act(self.fc1(torch.flatten(self.pool(x), 1)))))
        return x * s.view(s.shape[0], s.shape[1], 1, 1)


class V3Block(nn.Module):
    """MobileNet v3 bottleneck: expand → depthwise (+SE) → project, residual add when shapes match.

    ``input_is_hswish`` says whether the block input is an h-swish output (the stem); the
    depthwise conv then pads with ``pad_value`` when it follows h-swish.
    """

    def __init__(self, cin: int, kernel: int, hidden: int, cout: int, use_se: bool, act: str,
                 stride: int, *, input_is_hswish: bool, pad_value: float) -> None:
        super().__init__()
        act_cls: type[nn.Module] = nn.Hardswish if act == "HS" else nn.ReLU
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        dw_input_is_hswish = input_is_hswish
        if hidden != cin:
            layers.append(conv_bn_act(cin, hidden, 1, act=act_cls))
            dw_input_is_hswish = act == "HS"
        dw_pad = pad_value if dw_input_is_hswish else 0.0
        layers.append(conv_bn_act(hidden, hidden, kernel, stride, groups=hidden, act=act_cls, pad_value=dw_pad))
        if use_se:
            layers.append(SqueezeExcite(hidden, make_divisible(hidden // 4)))
        layers += [nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_residual:
            return x + self.block(x)
        return self.block(x)


#: (kernel, expansion channels, out channels, SE, nonlinearity, stride) — the paper's table,
#: with the stem and the 9th block at stride 1 for 28×28 inputs: 28 → 14 → 7 → 4.
MOBILENET_V3_SMALL_SETTINGS: list[tuple[int, int, int, bool, str, int]] = [
    (3, 16, 16, True, "RE", 2),
    (3, 72, 24, False, "RE", 2),
    (3, 88, 24, False, "RE", 1),
    (5, 96, 40, True, "HS", 2),
    (5, 240, 40, True, "HS", 1),
    (5, 240, 40, True, "HS", 1),
    (5, 120, 48, True, "HS", 1),
    (5, 144, 48, True, "HS", 1),
    (5, 288, 96, True, "HS", 1),
    (5, 576, 96, True, "HS", 1),
    (5, 576, 96, True, "HS", 1),
]


class MobileNetV3Small(nn.Module):
    """MobileNet v3 small: h-swish, hard-sigmoid SE, ReLU in early blocks, negative padding."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width_mult: float = 1.0,
                 pad_value: float = HSWISH_MIN, last_channels: int = 1024, dropout: float = 0.2) -> None:
        super().__init__()
        c = make_divisible(16 * width_mult)
        layers: list[nn.Module] = [conv_bn_act(in_channels, c, 3, 1, act=nn.Hardswish)]
        prev_hswish = True
        for k, exp, out, se, act, s in MOBILENET_V3_SMALL_SETTINGS:
            hidden, o = make_divisible(exp * width_mult), make_divisible(out * width_mult)
            layers.append(V3Block(c, k, hidden, o, se, act, s, input_is_hswish=prev_hswish, pad_value=pad_value))
            c, prev_hswish = o, False  # block outputs are linear bottlenecks
        last = make_divisible(576 * width_mult)
        layers.append(conv_bn_act(c, last, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.classifier = _classifier_head(last, last_channels, num_classes, dropout, act=nn.Hardswish)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    @staticmethod
    def upgrade_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Checkpoints whose squeeze-excite layers are 1×1 convs (``[out, in, 1, 1]`` weights, mobilec
        before 2026-12-06, e.g. the shipped one) in this model's Linear layout: the same numbers."""
        out = dict(state)
        for key, t in state.items():
            if key.endswith((".fc1.weight", ".fc2.weight")) and t.dim() == 4 and t.shape[2:] == (1, 1):
                out[key] = t.reshape(t.shape[0], t.shape[1])
        return out


def mobilenet_v3_small(num_classes: int = 10, in_channels: int = 1, width_mult: float = 1.0,
                       pad_value: float = HSWISH_MIN) -> MobileNetV3Small:
    """MobileNet v3 small with negative padding (``pad_value=-3/8``) after h-swish; ≈1.5M params, ≈9M MACs."""
    return MobileNetV3Small(num_classes, in_channels, width_mult, pad_value)


# --------------------------------------------------------------------------- VGG small


class VGGSmall(nn.Module):
    """VGG-style: full 3×3 convs + BN + ReLU, max-pools 28 → 14 → 7 → 4, two hidden FC layers."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width_mult: float = 1.0,
                 hidden: tuple[int, int] = (512, 256), dropout: float = 0.3) -> None:
        super().__init__()
        cfg: list[int | str] = [32, 32, "M", 64, 64, "M", 128, 128, "M"]
        layers: list[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            else:
                o = make_divisible(int(v) * width_mult)
                layers.append(conv_bn_act(c, o, 3, act=nn.ReLU))
                c = o
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d((4, 4))  # identity for 28×28; fixes the FC size for other inputs
        self.classifier = nn.Sequential(
            nn.Flatten(1),
            nn.Linear(c * 16, hidden[0]), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden[0], hidden[1]), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden[1], num_classes),
        )
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


def vgg_small(num_classes: int = 10, in_channels: int = 1, width_mult: float = 1.0) -> VGGSmall:
    """VGG-style net, ≈1.47M params, ≈30M MACs: conv-heavy (Tucker target) and FC-heavy (512-256; binarization)."""
    return VGGSmall(num_classes, in_channels, width_mult)


# --------------------------------------------------------------------------- ResNet small


class BasicBlock(nn.Module):
    """ResNet basic block: two full 3×3 convs with BN, identity or 1×1 projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class ResNetSmall(nn.Module):
    """CIFAR-style ResNet: stride-2 stem + three stages of basic blocks (28 → 14 → 7 → 4)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width_mult: float = 1.0,
                 blocks: Sequence[int] = (2, 2, 2)) -> None:
        super().__init__()
        widths = [make_divisible(w * width_mult) for w in (32, 64, 128)]
        self.stem = conv_bn_act(in_channels, widths[0], 3, stride=2, act=nn.ReLU)
        layers: list[nn.Module] = []
        c = widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks, strict=True)):
            for j in range(n):
                layers.append(BasicBlock(c, w, 2 if (j == 0 and i > 0) else 1))
                c = w
        self.layers = nn.Sequential(*layers)
        self.head = _classifier_head(c, None, num_classes, 0.0)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.stem(x)))


def resnet_small(num_classes: int = 10, in_channels: int = 1, width_mult: float = 1.0) -> ResNetSmall:
    """Small ResNet with basic blocks (32-64-128 channels, 2 blocks per stage): ≈0.7M params, ≈20M MACs."""
    return ResNetSmall(num_classes, in_channels, width_mult)


FACTORIES: dict[str, Callable[..., nn.Module]] = {
    "mobilenet_v1": mobilenet_v1,
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v3_small": mobilenet_v3_small,
    "vgg_small": vgg_small,
    "resnet_small": resnet_small,
}
