"""The ``duq`` and ``profit`` passes: progressive DuQ quantization-aware training, with or without PROFIT.

Schedule (every length is a recipe parameter):

1. optional full-precision fine-tune with the teacher (``fp_steps``);
2. activations ``act_schedule`` (e.g. 8 → 5 → 4 bits), each stage BN-stabilize (conv/linear
   weights frozen) → fine-tune → BN-stabilize;
3. weights ``weight_schedule`` (e.g. 8 → 5 → 4), the same for every width but the last;
4. at the last width: BN-stabilize, an AIWQ sampling period of ordinary training, then three
   phases — ``profit``: all layers / top third by AIWQ frozen / top two thirds frozen (frozen =
   conv weight LR 0, BatchNorm and quantizer parameters keep learning); ``duq``: the same three
   phases without freezing (the ablation) — and a last BN-stabilize.

Loss: cross-entropy + soft cross-entropy against ``ctx.teacher`` (T = 1). An EMA of the weights,
quantizer parameters and BN statistics runs alongside; the better of raw and EMA on a held-out
slice of the train split (never the test split) is kept. BatchNorm is then folded in (bias on the
integer grid) and ``ctx.lowering`` is set to :func:`~.lowering.lower_duq`.

>>> Profit(weight_bits=3, act_bits=3, act_schedule=(8, 5, 3), weight_schedule=(8, 5, 3)).to_params()["type"]
'profit'
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from mobilec.errors import MobilecError
from mobilec.passes.base import Pass
from mobilec.passes.quant.duq import ACT_INIT_RULES, WEIGHT_INIT_RULES, check_bits
from mobilec.registry import register_pass

if TYPE_CHECKING:
    from mobilec.context import Context


@register_pass
@dataclass(frozen=True, kw_only=True)
class DuQTraining(Pass):
    """Progressive DuQ QAT with distillation and weight EMA, without PROFIT's freezing (the ablation)."""

    name: ClassVar[str] = "duq"
    summary: ClassVar[str] = "DuQ sub-8-bit QAT (progressive bits, distillation, EMA), exported as int8 kernels"
    progressive_freezing: ClassVar[bool] = False

    weight_bits: int = 4
    act_bits: int = 4
    first_last_bits: int = 8  # precision of the first and last layer; 0 = same as the others
    high_bit_inputs: tuple[str, ...] = ()  # body layers whose input activation keeps first_last_bits (mixed precision)
    per_channel_weights: bool = False
    act_schedule: tuple[int, ...] = (8, 5, 4)
    weight_schedule: tuple[int, ...] = (8, 5, 4)
    fp_steps: int = 0
    act_stage_steps: tuple[int, ...] = (20, 40, 60)  # fine-tune steps per act_schedule entry (one value: all)
    weight_stage_steps: tuple[int, ...] = (20, 40)  # per weight_schedule entry but the last
    bn_steps: int = 10
    sample_steps: int = 30
    phase_steps: int = 60
    fold_phases: int = 3  # the last N of the three final phases train with BN folded as exported; 0 = fold after training
    lr: float = 0.01
    batch_size: int = 64
    weight_decay: float = 2e-5
    quant_lr_scale: float = 0.01
    warmup: float = 0.1
    kd: bool = True
    ema_decay: float = 0.99
    holdout_samples: int = 2000
    max_train_samples: int = 0  # 0: the whole train split (minus the hold-out)
    init_samples: int = 256
    act_init: str = "mse"  # least-squares clip refitted at every act width, or "p95": DuQ's 95th percentile (see docs)
    weight_init: str = "max"  # DuQ's 0.9·max|W|, or "mse": least-squares clip, refitted at every weight width
    augment: bool = True
    seed: int = -1  # -1: the run's seed
    fused_kernels: bool = True  # CPU: fused C++ quantizer kernels (same forward values; built on first use; see docs)

    def __post_init__(self) -> None:
        check_bits(self.weight_bits, "weight_bits")
        check_bits(self.act_bits, "act_bits")
        if self.first_last_bits != 0:
            check_bits(self.first_last_bits, "first_last_bits")
        for what, sched, final in (("act_schedule", self.act_schedule, self.act_bits),
                                   ("weight_schedule", self.weight_schedule, self.weight_bits)):
            if not sched or sched[-1] != final:
                raise MobilecError(f"{what} {list(sched)} must end at the target width {final}",
                                   hint=f"e.g. {what} = [8, 5, {final}]")
            for b in sched:
                check_bits(b, f"{what} entry")
        if len(self.act_stage_steps) not in (1, len(self.act_schedule)):
            raise ValueError(f"act_stage_steps needs 1 or {len(self.act_schedule)} entries (one per act_schedule width)")
        n_w = len(self.weight_schedule) - 1
        if n_w and len(self.weight_stage_steps) not in (1, n_w):
            raise ValueError(f"weight_stage_steps needs 1 or {n_w} entries (one per weight_schedule width but the last)")
        counts = (self.fp_steps, self.bn_steps, self.sample_steps, self.phase_steps, self.max_train_samples,
                  *self.act_stage_steps, *self.weight_stage_steps)
        if any(c < 0 for c in counts):
            raise ValueError("step counts and max_train_samples must be >= 0")
        if self.phase_steps < 1:
            raise ValueError("phase_steps must be at least 1")
        if self.act_init not in ACT_INIT_RULES:
            raise ValueError(f"act_init {self.act_init!r}: choose one of {', '.join(ACT_INIT_RULES)}")
        if self.weight_init not in WEIGHT_INIT_RULES:
            raise ValueError(f"weight_init {self.weight_init!r}: choose one of {', '.join(WEIGHT_INIT_RULES)}")
        if not 0 <= self.fold_phases <= 3:
            raise ValueError("fold_phases must be 0..3 (how many of the three final phases train with BatchNorm folded)")
        if not self.lr > 0 or self.batch_size < 1 or self.weight_decay < 0 or self.quant_lr_scale < 0:
            raise ValueError("need lr > 0, batch_size >= 1, weight_decay >= 0, quant_lr_scale >= 0")
        if not 0 <= self.warmup < 1 or not 0 <= self.ema_decay < 1:
            raise ValueError("warmup and ema_decay must lie in [0, 1)")
        if self.holdout_samples < 0 or self.init_samples < 1:
            raise ValueError("holdout_samples must be >= 0 and init_samples >= 1")

    # ----------------------------------------------------------------------------------
    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        from mobilec.passes.quant import qmodules as qm_
        from mobilec.passes.quant.aiwq import AIWQMeter, freeze_groups, plot_aiwq
        from mobilec.passes.quant.lowering import deploy_info, lower_duq
        from mobilec.passes.quant.trainer import Trainer, accuracy, broadcast_object, broadcast_state, setup_distributed

        t_start = time.perf_counter()
        data = ctx.require_image_data(self.name)
        dist = setup_distributed()
        seed = ctx.seed if self.seed < 0 else self.seed
        self.check_targets_exist(model)
        x_tr, y_tr, x_ho, y_ho = self._split(data, seed)
        chosen = {n for n, _ in self.selected(model, (nn.Conv2d, nn.Linear))}
        qmodel = qm_.convert_to_duq(
            model, weight_bits=self.weight_bits, act_bits=self.act_bits, first_last_bits=self.first_last_bits or None,
            per_channel=self.per_channel_weights, select=lambda name, _m: name in chosen,
            high_bit_inputs=self.high_bit_inputs)
        plan = qm_.duq_plan(qmodel)
        qm_.enable_quantizers(qmodel, acts=False, weights=False)
        device = torch.device(f"cuda:{dist.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
        qmodel.to(device)
        fused = self._fused_kernels(device, plan.notes)
        teacher = self._teacher(model, ctx, device)
        zero = (-torch.tensor(data.mean) / torch.tensor(data.std)).view(1, -1, 1, 1)
        log = _Log(ctx, dist.main)
        trainer = Trainer(qmodel, x_tr, y_tr, teacher=teacher, batch_size=self.batch_size, weight_decay=self.weight_decay,
                          quant_lr_scale=self.quant_lr_scale, augment=self.augment, hflip=bool(getattr(data, "hflip", False)),
                          zero=zero, seed=seed, ema_decay=self.ema_decay, dist=dist, progress=ctx.show_progress, log=log,
                          device=device)
        phases: list[dict[str, Any]] = []

        def run(name: str, steps: int, **kw: Any) -> None:
            phases.append(trainer.run_phase(name, steps, lr=self.lr, warmup=self.warmup, **kw).to_dict())

        def stage(label: str, steps: int) -> None:
            run(f"{label} bn-stabilize", self.bn_steps, train_weights=False)
            run(f"{label} fine-tune", steps)
            run(f"{label} bn-stabilize 2", self.bn_steps, train_weights=False)

        init_batch = x_tr[torch.randperm(len(x_tr), generator=torch.Generator().manual_seed(seed))[: self.init_samples]]
        # 1. full precision (optional)
        run("fp fine-tune", self.fp_steps)
        # 2. activations
        act_init = qm_.init_activation_quantizers(qmodel, init_batch.to(device), rule=self.act_init)
        broadcast_state(qmodel, dist)
        trainer.reset_ema()
        for i, bits in enumerate(self.act_schedule):
            qm_.set_act_bits(qmodel, bits)
            if self.act_init == "mse":  # the least-squares clip depends on the width: refit it
                act_init = qm_.init_activation_quantizers(qmodel, init_batch.to(device), rule="mse")
                broadcast_state(qmodel, dist)
                trainer.reset_ema()
            trainer.sync_ema_flags()
            stage(f"A{bits}", _pick(self.act_stage_steps, i))
        # 3. weights
        qm_.init_weight_quantizers(qmodel, rule=self.weight_init)
        qm_.enable_quantizers(qmodel, weights=True)
        trainer.reset_ema()

        def set_weight_width(bits: int) -> None:
            qm_.set_weight_bits(qmodel, bits)
            if self.weight_init == "mse":  # the least-squares clip depends on the width: refit it
                qm_.init_weight_quantizers(qmodel, rule="mse")
                broadcast_state(qmodel, dist)
                trainer.reset_ema()
            trainer.sync_ema_flags()

        for i, bits in enumerate(self.weight_schedule[:-1]):
            set_weight_width(bits)
            stage(f"W{bits}", _pick(self.weight_stage_steps, i))
        # 4. the last weight width: AIWQ sampling, three phases (progressive freezing for PROFIT)
        bits = self.weight_schedule[-1]
        set_weight_width(bits)
        run(f"W{bits} bn-stabilize", self.bn_steps, train_weights=False)
        meter = AIWQMeter(qmodel)
        run(f"W{bits} AIWQ sampling", self.sample_steps, meter=meter)
        ranking = broadcast_object(meter.ranking(), dist)
        aiwq = broadcast_object(meter.values, dist)
        top, mid = freeze_groups(ranking) if self.progressive_freezing else ([], [])

        def fold_before(phase: int) -> str:
            # the QAT fold: from here on the model that trains is the model that is exported
            if self.fold_phases and phase == 4 - self.fold_phases:
                qm_.fold_batchnorm(qmodel, trainable=True)
                trainer.reset_ema()  # the EMA restarts on the folded parameters
                return ", BN folded"
            return ""

        tag = fold_before(1)
        run(f"W{bits} phase 1 (all layers train{tag})", self.phase_steps)
        tag = fold_before(2)
        run(f"W{bits} phase 2 (" + (f"{len(top)} layers frozen" if self.progressive_freezing else "all layers train")
            + f"{tag})", self.phase_steps, frozen=set(top))
        tag = fold_before(3)
        run(f"W{bits} phase 3 (" + (f"{len(top) + len(mid)} layers frozen" if self.progressive_freezing else "all layers train")
            + f"{tag})", self.phase_steps, frozen=set(top) | set(mid))
        # with BN folded this re-fits gamma/beta and the quantizers (statistics stay frozen)
        run(f"W{bits} bn-stabilize 2", self.bn_steps, train_weights=False)

        # 5. raw or EMA, chosen on the train hold-out
        summary: dict[str, Any] = {}
        candidates = {"raw": qmodel}
        if trainer.ema is not None:
            candidates["ema"] = trainer.ema_model()
        scores = {k: accuracy(m, x_ho, y_ho) for k, m in candidates.items()} if len(y_ho) else {}
        pick = max(scores, key=lambda k: (scores[k], k == "raw")) if scores else "raw"
        pick = broadcast_object(pick, dist)
        qmodel = candidates[pick]
        broadcast_state(qmodel, dist)
        qmodel.cpu().eval()
        qm_.fold_batchnorm(qmodel)  # fixes the trainable fold (same numbers but tie-prone channels) or folds now
        plan = qm_.duq_plan(qmodel)  # the kept model's own plan (the EMA copy has its own): folding records into it
        summary["holdout_accuracy"] = {**{k: round(v, 5) for k, v in scores.items()},
                                       "selected": pick, "n": len(y_ho)}
        if len(y_ho):
            summary["holdout_accuracy"]["folded"] = round(accuracy(qmodel, x_ho, y_ho), 5)

        # 6. report, plot, lowering hook
        step_times = trainer.step_seconds
        act_bits = {n: int(layer.act_q.bits) for n, layer in qm_.quant_layers(qmodel)}
        summary.update(
            weight_bits=self.weight_bits, act_bits=self.act_bits, first_last_bits=self.first_last_bits or None,
            first_last_layers=[n for n, lp in plan.layers.items() if lp.role != "body"],
            high_bit_inputs=[n for n, lp in plan.layers.items() if getattr(lp, "high_bit_input", False)],
            tie_nudged_channels=dict(getattr(plan, "tie_nudged_channels", {})),
            per_channel_weights=self.per_channel_weights, n_train=len(y_tr), steps=trainer.total_steps,
            fused_kernels=fused,
            fold_phases=self.fold_phases, constant_channels=dict(plan.constant_channels),
            train_seconds=round(sum(p["seconds"] for p in phases), 1),
            mean_step_seconds=round(sum(step_times) / max(len(step_times), 1), 4),
            processes=dist.world, phases=phases, aiwq={k: float(v) for k, v in aiwq.items()},
            aiwq_ranking=ranking, frozen_phase2=top, frozen_phase3=top + mid,
            aiwq_top5=", ".join(f"{n} {aiwq[n]:.3g}" for n in ranking[:5]),  # a scalar the Markdown report shows
            layers_frozen=f"{len(top)} in phase 2, {len(top) + len(mid)} in phase 3 of {len(ranking)} convs",
            act_init={k: round(v, 5) for k, v in act_init.items()},
            layers={n: {"op": lp.op, "act_kind": lp.act_kind, "act_source": lp.act_source, "role": lp.role,
                        "act_bits": act_bits[n],
                        "output": f"duq:{lp.fused_into}" if lp.fused_into else "int8"} for n, lp in plan.layers.items()},
            notes=list(plan.notes),
        )
        if dist.main and aiwq:
            title = (f"{self.name}: AIWQ per conv at W{bits} ({self.sample_steps} steps)"
                     + (", red/orange = frozen in phases 2-3/3" if self.progressive_freezing else ""))
            summary["aiwq_plot"] = str(plot_aiwq(aiwq, ctx.workdir / f"{self.name}_aiwq.png", title=title, frozen=(top, mid)))
        ctx.report.add_pass(self.name, self.to_params(), time.perf_counter() - t_start, **summary)
        ctx.lowering = lower_duq
        ctx.extras["duq"] = deploy_info(qmodel)
        return qmodel

    # ----------------------------------------------------------------------------------
    def _fused_kernels(self, device: torch.device, notes: list[str]) -> bool:
        """Switch the fused C++ quantizer kernels on (CPU only); a platform that cannot build them is noted in the report."""
        from mobilec.passes.quant.duq import enable_fused_kernels, fused_kernels_enabled

        if not self.fused_kernels or device.type != "cpu":
            enable_fused_kernels(False)
            return False
        err = enable_fused_kernels(True)
        if err is not None:
            notes.append(f"fused DuQ kernels unavailable ({err}): the eager quantizer kernels were used")
        return fused_kernels_enabled()

    def _split(self, data: Any, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Train part and hold-out slice of the *train* split (seeded); the test split is never touched."""
        n = len(data.y_train)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))
        n_ho = min(self.holdout_samples, n // 5)
        ho, tr = perm[:n_ho], perm[n_ho:]
        if self.max_train_samples:
            tr = tr[: self.max_train_samples]
        if len(tr) == 0:
            raise MobilecError(f"the train split ({n} samples) leaves nothing to train on after the hold-out",
                               hint="lower holdout_samples or use a larger data set")
        return data.x_train[tr], data.y_train[tr], data.x_train[ho], data.y_train[ho]

    def _teacher(self, model: nn.Module, ctx: Context, device: torch.device) -> nn.Module | None:
        if not self.kd:
            return None
        import copy

        teacher = ctx.teacher if ctx.teacher is not None else copy.deepcopy(model)
        if device.type != "cpu":  # a copy: ctx.teacher stays where the other passes expect it
            teacher = copy.deepcopy(teacher).to(device)
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher


@register_pass
@dataclass(frozen=True, kw_only=True)
class Profit(DuQTraining):
    """PROFIT: DuQ QAT whose last stage freezes layers progressively by their AIWQ (highest first).

    >>> Profit().name
    'profit'
    """

    name: ClassVar[str] = "profit"
    summary: ClassVar[str] = "PROFIT sub-8-bit QAT: DuQ + AIWQ-ranked progressive freezing, exported as int8 kernels"
    progressive_freezing: ClassVar[bool] = True


def _pick(values: tuple[int, ...], i: int) -> int:
    return values[0] if len(values) == 1 else values[i]


class _Log:
    def __init__(self, ctx: Any, main: bool) -> None:
        self.enabled = main and getattr(ctx, "show_progress", False)

    def __call__(self, msg: str) -> None:
        if self.enabled:
            print(f"  {msg}", flush=True)
