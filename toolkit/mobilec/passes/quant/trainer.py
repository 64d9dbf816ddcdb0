"""The step-level training loop of the DuQ/PROFIT passes: phases, distillation, weight EMA, DDP.

A phase is ``steps`` optimizer steps of SGD (Nesterov 0.9) with a linear warm-up then a cosine
decay of its own, and a fresh optimizer (as in the authors' code). Quantizer parameters learn at
``quant_lr_scale``·lr without weight decay; BatchNorm parameters and biases without weight decay;
layers listed in ``frozen`` (and all conv/linear weights in a BN-stabilize phase) get no updates.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in DistributedDataParallel (gloo on
CPU, nccl on CUDA); each rank takes its share of every global batch, so results do not depend on
the number of processes beyond BatchNorm statistics. Only rank 0 writes files.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mobilec.errors import MobilecError
from mobilec.passes.quant import batched
from mobilec.passes.quant.qmodules import quant_layers


# ----------------------------------------------------------------------------- distributed
@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    started_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def setup_distributed() -> DistInfo:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE``/``RANK``/``LOCAL_RANK``); single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    started = False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        try:
            dist.init_process_group(backend=backend)
        except Exception as exc:  # bad MASTER_ADDR/PORT, a missing rank, ...
            raise MobilecError(f"cannot join the torchrun process group ({backend}): {exc}",
                               hint="launch with `torchrun --nproc_per_node=N -m mobilec.cli ...` or unset WORLD_SIZE") from None
        started = True
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return DistInfo(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local, started_here=started)


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    if not info.active:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@torch.no_grad()
def broadcast_state(model: nn.Module, info: DistInfo) -> None:
    """Make every rank hold rank 0's parameters and buffers (BatchNorm statistics differ per rank)."""
    if not info.active:
        return
    import torch.distributed as dist

    for t in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(t.data, src=0)


# ----------------------------------------------------------------------------- trainer
@dataclass
class PhaseResult:
    name: str
    steps: int
    seconds: float
    loss: float
    train_acc: float
    lr: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "steps": self.steps, "seconds": round(self.seconds, 2), "loss": round(self.loss, 5),
                "train_acc": round(self.train_acc, 5), "lr": self.lr, **self.extra}


class Trainer:
    """Runs phases on ``model`` (trained in place) over the tensors ``x``/``y``.

    ``ema_decay`` > 0 keeps an exponential moving average of every float parameter and buffer
    (weights, quantizer parameters, BatchNorm statistics, int8 observer ranges), updated after
    each step; integer/bool buffers (bit widths, flags) are copied.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, teacher: nn.Module | None,
                 batch_size: int, weight_decay: float, quant_lr_scale: float, augment: bool, hflip: bool,
                 zero: torch.Tensor, seed: int, ema_decay: float, dist: DistInfo, progress: bool = False,
                 log: Any = None, device: torch.device | None = None, channels_last: bool = True) -> None:
        if batch_size < dist.world:
            raise MobilecError(f"batch_size {batch_size} is smaller than the {dist.world} processes",
                               hint="raise batch_size to at least the number of torchrun processes")
        self.device = device or torch.device("cpu")
        self.model = model
        self.x, self.y = x, y  # stay on the CPU; each batch moves to ``device``
        self.teacher = teacher.eval() if teacher is not None else None
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.quant_lr_scale = quant_lr_scale
        self.augment, self.hflip, self.zero = augment, hflip, zero
        self.channels_last = channels_last  # CPU batches in channels-last layout (the convs' faster path)
        self.dist = dist
        self.gen = torch.Generator().manual_seed(seed)
        self.ema_decay = ema_decay
        self.ema: dict[str, torch.Tensor] | None = None
        #: (model tensors, (EMA, model) float pairs, (EMA, model) integer/bool pairs) of the last update_ema
        self._ema_pairs: tuple[list[torch.Tensor], tuple[list[torch.Tensor], list[torch.Tensor]],
                               tuple[list[torch.Tensor], list[torch.Tensor]]] | None = None
        self.progress = progress and dist.main
        self.log = log
        self.total_steps = 0
        self.step_seconds: list[float] = []
        self._batches = self._index_batches()
        if ema_decay > 0:
            self.reset_ema()

    # -- data ---------------------------------------------------------------------------
    def _index_batches(self) -> Iterator[torch.Tensor]:
        n = len(self.x)
        while True:  # same permutation on every rank (same seed); each rank takes its slice of each batch
            perm = torch.randperm(n, generator=self.gen)
            for i in range(0, n - self.batch_size + 1 if n >= self.batch_size else 1, self.batch_size):
                idx = perm[i:i + self.batch_size]
                yield idx[self.dist.rank::self.dist.world]

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        from mobilec.train import augment_batch

        idx = next(self._batches)
        x, y = self.x[idx], self.y[idx]
        if self.augment:
            pad = 2 if x.shape[-1] >= 16 else 1
            x = augment_batch(x, pad=pad, hflip=self.hflip, zero=self.zero, gen=self.gen)
        if self.channels_last and self.device.type == "cpu" and x.dim() == 4:
            # the CPU convs (and so the whole net) take their faster NHWC path: DuQ W4A4 steps 1.5-1.9x faster
            # on 3-channel inputs; a 1-channel batch from augment_batch is laid out so already (train_speed.md)
            x = x.contiguous(memory_format=torch.channels_last)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    # -- optimisation -------------------------------------------------------------------
    def _groups(self, lr: float, frozen: set[str], train_weights: bool) -> list[dict[str, Any]]:
        from mobilec.passes.quant.duq import DuQuantizer

        layer_weights = {f"{n}.weight" for n, _ in quant_layers(self.model)}
        frozen_params = {f"{n}.weight" for n in frozen} | {f"{n}.bias" for n in frozen}
        # a disabled quantizer (activations before their stage, weights before theirs) gets no gradient
        idle = {id(p) for m in self.model.modules() if isinstance(m, DuQuantizer) and not bool(m.enabled)
                for p in m.parameters()}
        quant, no_decay, decay = [], [], []
        for name, p in self.model.named_parameters():
            trainable = True
            if id(p) in idle:
                trainable = False
            elif name.endswith(".a_raw") or name.endswith(".c_raw"):
                quant.append(p)
            elif name in frozen_params or (not train_weights and (name in layer_weights or p.ndim > 1)):
                trainable = False
            elif p.ndim <= 1 or name.endswith(".bias"):
                no_decay.append(p)
            else:
                decay.append(p)
            p.requires_grad_(trainable)
        return [g for g in (
            {"params": quant, "lr": lr * self.quant_lr_scale, "weight_decay": 0.0, "base": lr * self.quant_lr_scale},
            {"params": no_decay, "lr": lr, "weight_decay": 0.0, "base": lr},
            {"params": decay, "lr": lr, "weight_decay": self.weight_decay, "base": lr},
        ) if g["params"]]

    def run_phase(self, name: str, steps: int, *, lr: float, warmup: float = 0.1, frozen: set[str] | None = None,
                  train_weights: bool = True, meter: Any = None, eta_min: float = 1e-3) -> PhaseResult:
        """``steps`` steps at peak ``lr`` (warm-up over a ``warmup`` fraction from 0.1·lr, then cosine to ``eta_min``·lr)."""
        frozen = frozen or set()
        if steps <= 0:
            return PhaseResult(name, 0, 0.0, math.nan, math.nan, lr)
        groups = self._groups(lr, frozen, train_weights)
        opt = torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
        net: nn.Module = self.model
        if self.dist.active:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            net = DistributedDataParallel(self.model, device_ids=ids, broadcast_buffers=True)
        n_warm = round(warmup * steps)
        hooks = [self.model.register_forward_pre_hook(batched.precompute_hook),  # all layers' weights and folds at once
                 self.model.register_forward_hook(batched.clear_hook)] if any(True for _ in quant_layers(self.model)) else []
        t0 = time.perf_counter()
        loss_sum, correct, seen = 0.0, 0, 0
        self.model.train()
        bar = self._bar(name, steps)
        ctx = meter if meter is not None else _Null()
        try:
            with ctx:
                for step in range(steps):
                    mult = self._lr_mult(step, steps, n_warm, eta_min)
                    for g in opt.param_groups:
                        g["lr"] = g["base"] * mult
                    ts = time.perf_counter()
                    x, y = self._batch()
                    logits = net(x)
                    loss = F.cross_entropy(logits, y)
                    if self.teacher is not None:
                        with torch.no_grad():
                            t_logits = self.teacher(x)
                        loss = loss - (F.softmax(t_logits, 1) * F.log_softmax(logits, 1)).sum(1).mean()
                    if not torch.isfinite(loss):
                        raise MobilecError(f"DuQ training diverged in phase {name!r} at step {step} (loss {float(loss)})",
                                           hint="lower lr (or quant_lr_scale) in the recipe")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    self.update_ema()
                    self.step_seconds.append(time.perf_counter() - ts)
                    self.total_steps += 1
                    loss_sum += float(loss) * len(y)
                    correct += int((logits.argmax(1) == y).sum())
                    seen += len(y)
                    if bar is not None:
                        bar[0].update(bar[1], advance=1, info=f"loss {loss_sum / seen:.4f}")
        finally:
            for h in hooks:
                h.remove()
            batched.clear(self.model)  # a forward that raised leaves its step's values behind
            if bar is not None:
                bar[0].stop()
            for p in self.model.parameters():
                p.requires_grad_(True)
        res = PhaseResult(name, steps, time.perf_counter() - t0, loss_sum / max(seen, 1), correct / max(seen, 1), lr)
        if self.log is not None:
            self.log(f"{name}: {steps} steps, loss {res.loss:.4f}, train acc {res.train_acc:.4f}, {res.seconds:.0f}s")
        return res

    @staticmethod
    def _lr_mult(step: int, steps: int, n_warm: int, eta_min: float) -> float:
        if step < n_warm:
            return 0.1 + 0.9 * step / max(n_warm, 1)
        t = (step - n_warm) / max(steps - n_warm, 1)
        return eta_min + (1 - eta_min) * 0.5 * (1 + math.cos(math.pi * t))

    def _bar(self, name: str, steps: int) -> Any:
        if not self.progress:
            return None
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        prog = Progress(TextColumn(f"[bold]{name}"), BarColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn())
        prog.start()
        return prog, prog.add_task(name, total=steps, info="")

    # -- EMA ----------------------------------------------------------------------------
    def reset_ema(self) -> None:
        if self.ema_decay > 0:
            self.ema = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self._ema_pairs = None

    @torch.no_grad()
    def update_ema(self) -> None:
        if self.ema is None:
            return
        d = self.ema_decay
        # the model's own tensors (keep_vars): while they are the same objects as at the last step, the
        # pairing of EMA and model tensors is reused (~1,000 state tensors in mobilenet_v3_small)
        state = self.model.state_dict(keep_vars=True)
        values = list(state.values())
        cached = self._ema_pairs
        fresh: set[str] = set()
        if cached is None or len(cached[0]) != len(values) or any(a is not b for a, b in zip(cached[0], values, strict=True)):
            fresh = self._refresh_ema_entries(state)
            cached = self._ema_pairs = (values, *self._pair_ema(state))
        _, avg, same = cached
        # one call each instead of two ops per tensor: on the CPU the foreach ops run the same per-tensor
        # mul_/add_/copy_ in a C++ loop, so the values are those of the ops one by one
        if avg[0]:
            torch._foreach_mul_(avg[0], d)
            torch._foreach_add_(avg[0], avg[1], alpha=1 - d)
        if same[0]:
            torch._foreach_copy_(same[0], same[1])
        for k in fresh:  # a new or reshaped entry is a copy of the model's this step, averaged from the next one on
            self.ema[k].copy_(state[k])

    def _refresh_ema_entries(self, state: dict[str, torch.Tensor]) -> set[str]:
        """Clone every model entry the EMA lacks or holds in another shape or dtype; their keys."""
        assert self.ema is not None
        fresh = set()
        for k, v in state.items():
            e = self.ema.get(k)
            if e is None or e.shape != v.shape or e.dtype != v.dtype:
                self.ema[k] = v.detach().clone()
                fresh.add(k)
        return fresh

    def _pair_ema(self, state: dict[str, torch.Tensor]) -> tuple[tuple[list[torch.Tensor], list[torch.Tensor]], ...]:
        """(EMA, model) float tensors to average and (EMA, model) integer/bool tensors to copy."""
        assert self.ema is not None
        avg: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        same: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        for k, v in state.items():
            pair = avg if v.dtype.is_floating_point else same
            pair[0].append(self.ema[k])
            pair[1].append(v)
        return avg, same

    def ema_model(self) -> nn.Module:
        if self.ema is None:
            raise MobilecError("no EMA kept (ema_decay = 0)")
        m = copy.deepcopy(self.model)
        m.load_state_dict(self.ema)
        return m

    @torch.no_grad()
    def sync_ema_flags(self) -> None:
        """Copy non-float state (bit widths, enabled flags) from the model into the EMA."""
        if self.ema is None:
            return
        for k, v in self.model.state_dict().items():
            if not v.dtype.is_floating_point:
                self.ema[k] = v.detach().clone()
        self._ema_pairs = None  # the pairs hold the replaced tensors


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` in eval mode (mode restored); batches go to the model's device."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    try:
        correct = 0
        for i in range(0, len(x), batch_size):
            logits = model(x[i:i + batch_size].to(dev)).cpu()
            correct += int((logits.argmax(1) == y[i:i + batch_size]).sum())
    finally:
        model.train(was)
    return correct / max(len(x), 1)
