"""Per-tensor cost of one DuQ quantizer (forward + backward) against a ReLU's, eager ops and fused C++ kernels.

    python bench/duq_kernels.py      # prints milliseconds per call (median of 20), CPU

An isolated measurement of the quantizer's memory passes, and of the Trainer's per-step EMA update
on the BN-folded W4A4 zoo models; the training-step ratio is
``bench/profit.py --step-time``. Nothing is written to bench/results: the numbers are quoted in
docs/profit.md ("Step time") with the machine they came from.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from mobilec.passes.quant.duq import DuQuantizer, enable_fused_kernels

SHAPES = [(64, 16, 56, 56), (64, 96, 14, 14), (64, 576, 7, 7), (64, 96, 4, 4)]


def median_ms(fn: Callable[[], None], n: int = 20) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[n // 2] * 1e3


def main() -> int:
    torch.manual_seed(0)
    err = enable_fused_kernels(True)
    print(f"threads {torch.get_num_threads()}; fused kernels: {'ok' if err is None else err}")
    for shape in SHAPES:
        x = torch.relu(torch.randn(shape)).requires_grad_()
        g = torch.randn(shape)
        q = DuQuantizer("unsigned", 4)
        q.set_range(torch.tensor(2.0))
        timings = {"relu": median_ms(lambda x=x, g=g: torch.relu(x).backward(g))}
        for label, fused in (("duq eager", False), ("duq fused", True)):
            if fused and err is not None:
                continue
            enable_fused_kernels(fused)
            timings[label] = median_ms(lambda q=q, x=x, g=g: q(x).backward(g))
        print(shape, "  ".join(f"{k} {v:.2f} ms" for k, v in timings.items()))
    enable_fused_kernels(False)
    ema_update_times()
    return 0


def ema_update_times() -> None:
    """``Trainer.update_ema`` per step (ema_decay 0.98, as the recipes) on each BN-folded W4A4 zoo model."""
    import copy

    from mobilec.models import build_model
    from mobilec.passes.quant import qmodules as qm_
    from mobilec.passes.quant.trainer import DistInfo, Trainer

    for name in ("mobilenet_v2", "mobilenet_v3_small"):
        q = qm_.convert_to_duq(build_model(name, num_classes=10, in_channels=1), weight_bits=4, act_bits=4)
        qm_.init_activation_quantizers(q, torch.randn(64, 1, 28, 28))
        qm_.init_weight_quantizers(q)
        folded = qm_.fold_batchnorm(copy.deepcopy(q), trainable=True)
        x, y = torch.randn(8, 1, 28, 28), torch.zeros(8, dtype=torch.long)
        tr = Trainer(folded, x, y, teacher=None, batch_size=8, weight_decay=0.0, quant_lr_scale=0.01, augment=False,
                     hflip=False, zero=torch.zeros(1, 1, 1, 1), seed=0, ema_decay=0.98, dist=DistInfo())
        print(f"{name}: {len(folded.state_dict())} state tensors, update_ema {median_ms(tr.update_ema, 50):.2f} ms")


if __name__ == "__main__":
    raise SystemExit(main())
