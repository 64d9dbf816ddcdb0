"""Tucker-2 whole-network compression (Kim et al., ICLR 2016, arXiv 1511.06530).

Each full k×k convolution (``groups == 1``) with kernel ``K`` (T × S × kh × kw) becomes

    1×1 conv S→R3 (no bias)  →  kh×kw core conv R3→R4 (original stride/padding/dilation,
    no bias)  →  1×1 conv R4→T (original bias)

with ``K ≈ C ×_S U3 ×_T U4`` fitted by HOSVD initialisation plus a few HOOI iterations
(written here in torch, float64; tensorly is not used). ``nn.Linear`` layers and 1×1 convs
get a truncated SVD (two layers, the singular values split evenly between them). Ranks come
from empirical VBMF on the mode-S and mode-T unfoldings (:mod:`mobilec.passes.vbmf`), from
an energy criterion, from a fixed fraction of the channels, or from explicit overrides.

Per layer the compression ratio is ``M = kh kw S T / (S R3 + kh kw R3 R4 + T R4)``; a layer
whose factorisation would not reduce its MACs is left alone, and the report says so.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from mobilec.errors import MobilecError
from mobilec.passes.base import Pass
from mobilec.passes.vbmf import evbmf, single_threaded_linalg
from mobilec.registry import register_pass

if TYPE_CHECKING:
    from mobilec.context import Context


class LowRankSequential(nn.Sequential):
    """The factorised replacement of one layer (a plain ``nn.Sequential`` with a recognisable type).

    >>> conv = nn.Conv2d(8, 16, 3, padding=1)
    >>> seq, err = decompose_conv(conv, 8, 16)
    >>> [type(m).__name__ for m in seq], err < 1e-6
    (['Conv2d', 'Conv2d', 'Conv2d'], True)
    """


# --------------------------------------------------------------------------- linear algebra


def _leading_left(m: torch.Tensor, r: int) -> torch.Tensor:
    """The ``r`` leading left singular vectors of ``m`` (columns)."""
    u, _, _ = torch.linalg.svd(m, full_matrices=False)
    return u[:, :r]


def _unfold_s(w: torch.Tensor) -> torch.Tensor:
    """Mode-S (input channels) unfolding of a T×S×kh×kw kernel: S × (T·kh·kw)."""
    return w.transpose(0, 1).reshape(w.shape[1], -1)


def _unfold_t(w: torch.Tensor) -> torch.Tensor:
    """Mode-T (output channels) unfolding: T × (S·kh·kw)."""
    return w.reshape(w.shape[0], -1)


def tucker2(weight: torch.Tensor, r3: int, r4: int, *, iters: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tucker-2 of a conv kernel on its channel modes: ``(core R4×R3×kh×kw, U3 S×R3, U4 T×R4)``.

    HOSVD initialisation, then ``iters`` rounds of HOOI (alternating: the best ``U3`` for the
    kernel projected on ``U4``, then the best ``U4`` for it projected on ``U3``). Computed in
    float64; ``weight ≈ einsum('pqkl,tp,sq->tskl', core, U4, U3)``.
    """
    w = weight.detach().to(torch.float64)
    u3 = _leading_left(_unfold_s(w), r3)
    u4 = _leading_left(_unfold_t(w), r4)
    for _ in range(iters):
        u3 = _leading_left(_unfold_s(torch.einsum("tskl,tr->rskl", w, u4)), r3)
        u4 = _leading_left(_unfold_t(torch.einsum("tskl,sr->trkl", w, u3)), r4)
    core = torch.einsum("tskl,tp,sq->pqkl", w, u4, u3)
    return core, u3, u4


def _rel_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    exact = exact.detach().to(torch.float64)
    denom = torch.linalg.vector_norm(exact)
    diff = torch.linalg.vector_norm(approx - exact)
    return float(diff / denom) if denom > 0 else float(diff)


def decompose_conv(conv: nn.Conv2d, r3: int, r4: int, *, iters: int = 5) -> tuple[LowRankSequential, float]:
    """Replace a k×k conv by 1×1 (S→R3) → k×k core (R3→R4) → 1×1 (R4→T); returns (module, relative kernel error)."""
    if conv.groups != 1:
        raise MobilecError(f"cannot Tucker-decompose a grouped conv (groups={conv.groups})", hint="exclude it with ignore")
    t, s, kh, kw = conv.weight.shape
    core, u3, u4 = tucker2(conv.weight, r3, r4, iters=iters)
    dtype, device = conv.weight.dtype, conv.weight.device
    first = nn.Conv2d(s, r3, 1, bias=False)
    mid = nn.Conv2d(
        r3, r4, (kh, kw), stride=conv.stride, padding=conv.padding, dilation=conv.dilation, bias=False,
        padding_mode=conv.padding_mode,
    )
    last = nn.Conv2d(r4, t, 1, bias=conv.bias is not None)
    with torch.no_grad():
        first.weight.copy_(u3.T.reshape(r3, s, 1, 1))
        mid.weight.copy_(core)
        last.weight.copy_(u4.reshape(t, r4, 1, 1))
        if conv.bias is not None:
            last.bias.copy_(conv.bias)
    approx = torch.einsum("pqkl,tp,sq->tskl", core, u4, u3)
    seq = LowRankSequential(first, mid, last).to(device=device, dtype=dtype)
    seq.train(conv.training)
    return seq, _rel_error(approx, conv.weight)


def decompose_matrix(layer: nn.Linear | nn.Conv2d, rank: int) -> tuple[LowRankSequential, float]:
    """Truncated SVD of a Linear or 1×1 conv into two layers (√Σ on each side); returns (module, relative error)."""
    if isinstance(layer, nn.Conv2d):
        if layer.kernel_size != (1, 1) or layer.groups != 1:
            raise MobilecError("SVD applies to 1×1 convs with groups=1 only", hint="use decompose_conv for k×k convs")
        w = layer.weight.detach().to(torch.float64).reshape(layer.out_channels, layer.in_channels)
    else:
        w = layer.weight.detach().to(torch.float64)
    out_f, in_f = w.shape
    u, sv, vh = torch.linalg.svd(w, full_matrices=False)
    root = sv[:rank].sqrt()
    a = root[:, None] * vh[:rank]  # R × S
    b = u[:, :rank] * root[None, :]  # T × R
    first: nn.Module
    second: nn.Module
    if isinstance(layer, nn.Conv2d):
        first = nn.Conv2d(in_f, rank, 1, stride=layer.stride, padding=layer.padding, bias=False, padding_mode=layer.padding_mode)
        second = nn.Conv2d(rank, out_f, 1, bias=layer.bias is not None)
        shape_a, shape_b = (rank, in_f, 1, 1), (out_f, rank, 1, 1)
    else:
        first = nn.Linear(in_f, rank, bias=False)
        second = nn.Linear(rank, out_f, bias=layer.bias is not None)
        shape_a, shape_b = (rank, in_f), (out_f, rank)
    with torch.no_grad():
        first.weight.copy_(a.reshape(shape_a))
        second.weight.copy_(b.reshape(shape_b))
        if layer.bias is not None:
            second.bias.copy_(layer.bias)
    seq = LowRankSequential(first, second).to(device=layer.weight.device, dtype=layer.weight.dtype)
    seq.train(layer.training)
    return seq, _rel_error(b @ a, w)


# --------------------------------------------------------------------------- rank selection


def _energy_rank(matrix: np.ndarray, energy: float) -> int:
    s2 = np.linalg.svd(matrix, compute_uv=False) ** 2
    total = s2.sum()
    if total == 0:
        return 0
    return int(np.searchsorted(np.cumsum(s2) / total, energy - 1e-12) + 1)


def weaken(rank: int, full: int, weakening: float, min_rank: int) -> int:
    """``rank + weakening · (full − rank)``, rounded up, then clamped to ``[min(min_rank, full), full]``.

    ``weakening = 0`` keeps the selected rank, ``1`` gives full rank.

    >>> weaken(4, 32, 0.5, 1)
    18
    """
    r = math.ceil(rank + weakening * (full - rank) - 1e-9)
    return int(min(full, max(r, min_rank)))


def _parse_rank_spec(spec: str) -> tuple[str, tuple[int, ...]]:
    name, sep, value = spec.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name or not value:
        raise ValueError(f"ranks entry {spec!r} must look like 'layer.name=R3:R4' (k×k conv) or 'layer.name=R' (linear, 1×1 conv)")
    try:
        ranks = tuple(int(v) for v in value.split(":"))
    except ValueError:
        raise ValueError(f"ranks entry {spec!r}: ranks must be integers") from None
    if len(ranks) not in (1, 2):
        raise ValueError(f"ranks entry {spec!r}: give one rank (R) or two (R3:R4)")
    if any(r < 1 for r in ranks):
        raise ValueError(f"ranks entry {spec!r}: ranks must be at least 1 (a rank-0 layer would output only its bias)")
    return name, ranks


# --------------------------------------------------------------------------- the pass


def _kind(m: nn.Module) -> str:
    if isinstance(m, nn.Linear):
        return "linear"
    if isinstance(m, nn.Conv2d):
        kh, kw = m.kernel_size
        if m.groups != 1:
            return "depthwise conv2d" if m.groups == m.in_channels == m.out_channels else f"grouped conv2d (groups={m.groups})"
        return f"conv2d {kh}x{kw}"
    return type(m).__name__


def _weight_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@register_pass
@dataclass(frozen=True, kw_only=True)
class TuckerDecomposition(Pass):
    """Tucker-2 decomposition of every full conv, truncated SVD of Linear and 1×1 convs.

    ``rank_method``: ``"vbmf"`` (empirical VBMF on the unfoldings; the paper's choice),
    ``"energy"`` (smallest rank keeping ``energy`` of the squared singular values) or
    ``"fixed"`` (``rank_fraction`` of the channels). ``weakening`` in [0, 1] moves every
    rank toward full rank: ``r' = ceil(r + weakening · (full − r))``. ``ranks`` overrides
    per layer: ``"features.3.0=16:24"`` (k×k conv: R3 input-side, R4 output-side) or
    ``"classifier.1=64"`` (Linear / 1×1 conv); an explicit rank also overrides ``skip_first``.
    ``skip_first`` leaves the network's first conv (in execution order) alone: it has few input
    channels, so there is little to gain.
    The model is deep-copied; the caller's model is never modified.

    >>> p = TuckerDecomposition(rank_method="vbmf", weakening=0.3, ranks=("features.3.0=16:24",))
    >>> p.rank_overrides()["features.3.0"]
    (16, 24)
    """

    name: ClassVar[str] = "tucker"
    summary: ClassVar[str] = "Tucker-2 decomposition of convs (VBMF ranks) + truncated SVD of Linear / 1x1 convs"
    rank_method: Literal["vbmf", "energy", "fixed"] = "vbmf"
    weakening: float = 0.0
    min_rank: int = 1
    energy: float = 0.95
    rank_fraction: float = 0.5
    ranks: tuple[str, ...] = ()
    decompose_linear: bool = True
    decompose_pointwise: bool = True
    skip_first: bool = True
    hooi_iters: int = 5
    evaluate: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.weakening <= 1.0:
            raise ValueError(f"weakening must lie in [0, 1] (0: selected rank, 1: full rank), got {self.weakening}")
        if self.min_rank < 1:
            raise ValueError(f"min_rank must be at least 1, got {self.min_rank}")
        if not 0.0 < self.energy <= 1.0:
            raise ValueError(f"energy must lie in (0, 1], got {self.energy}")
        if not 0.0 < self.rank_fraction <= 1.0:
            raise ValueError(f"rank_fraction must lie in (0, 1], got {self.rank_fraction}")
        if self.hooi_iters < 0:
            raise ValueError(f"hooi_iters must be >= 0, got {self.hooi_iters}")
        self.rank_overrides()  # validates the ranks entries

    def rank_overrides(self) -> dict[str, tuple[int, ...]]:
        out: dict[str, tuple[int, ...]] = {}
        for spec in self.ranks:
            name, r = _parse_rank_spec(spec)
            if name in out:
                raise ValueError(f"ranks names layer {name!r} twice")
            out[name] = r
        return out

    @staticmethod
    def summary_markdown(summary: dict[str, Any]) -> list[str]:
        """Markdown for report.md: the per-layer table of a ``tucker`` pass summary."""
        return layers_markdown(summary.get("layers") or [])

    # -- rank selection -----------------------------------------------------------------
    def _select(self, matrix: np.ndarray, full: int) -> tuple[int, int]:
        """(weakened rank, raw rank) of one unfolding / weight matrix."""
        if self.rank_method == "vbmf":
            raw = evbmf(matrix).rank
        elif self.rank_method == "energy":
            raw = _energy_rank(matrix, self.energy)
        else:
            raw = math.ceil(self.rank_fraction * full)
        raw = min(raw, full)
        return weaken(raw, full, self.weakening, self.min_rank), raw

    # -- apply --------------------------------------------------------------------------
    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        t0 = time.perf_counter()
        model = copy.deepcopy(model)
        self.check_targets_exist(model)
        modules = dict(model.named_modules())
        overrides = self.rank_overrides()
        self._check_explicit(modules, overrides)

        candidates = [(n, m) for n, m in self.selected(model, (nn.Conv2d, nn.Linear))]
        selected_names = {n for n, _ in candidates}
        for name in overrides:
            if name not in selected_names:
                raise MobilecError(
                    f"pass 'tucker': layer {name!r} has explicit ranks but targets/ignore exclude it",
                    hint="drop it from ranks, or from ignore / add it to targets",
                )
        shapes = _trace_shapes(model, ctx.example_inputs, [n for n, m in modules.items() if isinstance(m, nn.Conv2d | nn.Linear)])
        first_conv = next((n for n in shapes if isinstance(modules[n], nn.Conv2d)), None)  # in execution order
        macs_total_before, params_before = _model_macs(model, ctx.example_inputs), _weight_params(model)

        layers: list[dict[str, Any]] = []
        replacements: dict[str, nn.Module] = {}
        with single_threaded_linalg():
            for name, mod in candidates:
                rec, new = self._plan_layer(name, mod, shapes.get(name), overrides.get(name), name == first_conv)
                layers.append(rec)
                if new is not None:
                    replacements[name] = new
        for name, new in replacements.items():
            _set_module(model, name, new)

        macs_total_after, params_after = _model_macs(model, ctx.example_inputs), _weight_params(model)
        summary: dict[str, Any] = {
            "decomposed": len(replacements),
            "left_alone": len(layers) - len(replacements),
            "params_before": params_before,
            "params_after": params_after,
            "macs_before": macs_total_before,
            "macs_after": macs_total_after,
            "mac_reduction": macs_total_before / macs_total_after if macs_total_after else None,
            "param_reduction": params_before / params_after if params_after else None,
        }
        if self.evaluate:
            summary.update(_maybe_evaluate(model, ctx))
        ctx.extras["tucker"] = {"layers": layers, **summary}
        ctx.report.add_pass(self.name, self.to_params(), time.perf_counter() - t0, **summary, layers=layers)
        return model

    def _check_explicit(self, modules: dict[str, nn.Module], overrides: dict[str, tuple[int, ...]]) -> None:
        """Layers named exactly in targets or ranks must be decomposable; ranks must fit their dimensions."""
        named = [(p, "targets") for p in self.targets if not p.startswith("re:")] + [(n, "ranks") for n in overrides]
        for name, where in named:
            if name not in modules:
                raise MobilecError(
                    f"pass 'tucker': {where} names {name!r}, which is not a module of the model",
                    hint="use module names from model.named_modules()",
                )
            mod = modules[name]
            reason = self._cannot(mod)
            if reason:
                raise MobilecError(f"pass 'tucker': {where} names {name!r} ({_kind(mod)}), which {reason}",
                                   hint=f"remove {name!r} from {where}")
        for name, r in overrides.items():
            mod = modules[name]
            if isinstance(mod, nn.Conv2d) and mod.kernel_size != (1, 1):
                t, s, kh, kw = mod.weight.shape
                if len(r) != 2:
                    raise MobilecError(f"pass 'tucker': ranks for conv {name!r} need two values R3:R4, got {r}",
                                       hint=f"e.g. '{name}={max(1, s // 2)}:{max(1, t // 2)}'")
                full3, full4 = min(s, t * kh * kw), min(t, s * kh * kw)
                if r[0] > full3 or r[1] > full4:
                    raise MobilecError(
                        f"pass 'tucker': ranks {r[0]}:{r[1]} for {name!r} exceed its dimensions (R3 <= {full3}, R4 <= {full4})",
                        hint=f"use at most '{name}={full3}:{full4}'",
                    )
            else:
                full = min(mod.weight.shape[0], mod.weight.shape[1])
                if len(r) != 1:
                    raise MobilecError(f"pass 'tucker': ranks for {_kind(mod)} {name!r} need one value R, got {r}",
                                       hint=f"e.g. '{name}={max(1, full // 2)}'")
                if r[0] > full:
                    raise MobilecError(f"pass 'tucker': rank {r[0]} for {name!r} exceeds its dimensions (R <= {full})",
                                       hint=f"use at most '{name}={full}'")

    def _cannot(self, mod: nn.Module) -> str | None:
        """Why this pass cannot decompose ``mod`` as configured (None when it can)."""
        if isinstance(mod, nn.Conv2d):
            if mod.groups != 1:
                return "Tucker-2 on channel modes does not apply to grouped/depthwise convs"
            if mod.kernel_size == (1, 1) and not self.decompose_pointwise:
                return "is a 1x1 conv and decompose_pointwise = false"
            return None
        if isinstance(mod, nn.Linear):
            return None if self.decompose_linear else "is a Linear layer and decompose_linear = false"
        return "is not a Conv2d or Linear layer; only those can be decomposed"

    def _plan_layer(
        self, name: str, mod: nn.Module, shape: dict[str, Any] | None, override: tuple[int, ...] | None, is_first: bool
    ) -> tuple[dict[str, Any], nn.Module | None]:
        w = mod.weight
        rec: dict[str, Any] = {
            "name": name, "kind": _kind(mod), "shape": list(w.shape), "decomposed": False, "reason": None,
            "ranks": None, "full_ranks": None, "rank_source": None, "raw_ranks": None,
            "params_before": _weight_params(mod), "params_after": _weight_params(mod),
            "macs_before": shape["macs"] if shape else None, "macs_after": shape["macs"] if shape else None,
            "compression": 1.0, "rel_error": 0.0,
        }
        reason = self._cannot(mod)
        if reason is None and is_first and self.skip_first and override is None:
            reason = "first conv of the network (skip_first = true)"
        if reason is None and shape is None:
            reason = "not executed on the example input, so its MACs are unknown"
        if reason is not None:
            rec["reason"] = reason
            return rec, None

        calls = shape["calls"]
        wd = w.detach().to(torch.float64)
        if isinstance(mod, nn.Conv2d) and mod.kernel_size != (1, 1):
            t, s, kh, kw = w.shape
            full = (min(s, t * kh * kw), min(t, s * kh * kw))
            if override is not None:
                r3, r4 = override
                raw: tuple[int, ...] | None = None
            else:
                (r3, raw3), (r4, raw4) = self._select(_unfold_s(wd).numpy(), full[0]), self._select(_unfold_t(wd).numpy(), full[1])
                raw = (raw3, raw4)
            in_px, out_px = shape["in_px"], shape["out_px"]
            macs_after = calls * (in_px * s * r3 + out_px * (kh * kw * r3 * r4 + r4 * t))
            new_params = s * r3 + kh * kw * r3 * r4 + t * r4 + (t if mod.bias is not None else 0)
            ranks: tuple[int, ...] = (r3, r4)
            rec["compression"] = kh * kw * s * t / (s * r3 + kh * kw * r3 * r4 + t * r4)
        else:
            mat = wd.reshape(w.shape[0], w.shape[1])
            t, s = mat.shape
            full = (min(s, t),)
            if override is not None:
                ranks, raw = override, None
            else:
                r, raw_r = self._select(mat.numpy(), full[0])
                ranks, raw = (r,), (raw_r,)
            r = ranks[0]
            macs_after = calls * shape["rows"] * r * (s + t)
            new_params = r * (s + t) + (t if mod.bias is not None else 0)
            rec["compression"] = s * t / (r * (s + t))
        rec.update(ranks=list(ranks), full_ranks=list(full), raw_ranks=list(raw) if raw else None,
                   rank_source="explicit" if override is not None else self.rank_method)
        if macs_after >= shape["macs"]:
            rec["reason"] = f"factorising at ranks {list(ranks)} would not reduce MACs ({macs_after} >= {shape['macs']})"
            return rec, None
        if isinstance(mod, nn.Conv2d) and mod.kernel_size != (1, 1):
            new, err = decompose_conv(mod, ranks[0], ranks[1], iters=self.hooi_iters)
        else:
            new, err = decompose_matrix(mod, ranks[0])
        assert _weight_params(new) == new_params, (name, _weight_params(new), new_params)
        rec.update(decomposed=True, params_after=new_params, macs_after=macs_after, rel_error=err)
        return rec, new


def _fmt_int(x: int | None) -> str:
    return "-" if x is None else f"{x:,}"


def layers_markdown(layers: list[dict[str, Any]]) -> list[str]:
    """Per-layer table of a ``tucker`` pass: shape, ranks, params / MACs before and after, error, decision.

    Ranks read ``[R3, R4] of [S', T']`` for k×k convs (full ranks after ``of``) and ``[R] of [min(S, T)]``
    for Linear / 1×1 convs; ``VBMF raw`` is the rank before weakening and ``min_rank``.

    >>> layers_markdown([{"name": "c", "kind": "depthwise conv2d", "shape": [8, 1, 3, 3], "ranks": None,
    ...                   "full_ranks": None, "raw_ranks": None, "params_before": 80, "params_after": 80,
    ...                   "macs_before": 720, "macs_after": 720, "rel_error": 0.0, "decomposed": False,
    ...                   "reason": "grouped"}])[-1]
    '- not decomposable (grouped/depthwise convs, left alone): c'
    """
    if not layers:
        return []
    out = [
        "| layer | kind | shape | ranks (of full) | VBMF raw | params before → after | MACs before → after | rel. kernel error "
        "| decomposed |",
        "|---|---|---|---|---|---:|---:|---:|---|",
    ]
    for r in layers:
        ranks = f"{r['ranks']} of {r['full_ranks']}" if r.get("ranks") else "-"
        out.append(
            f"| {r['name']} | {r['kind']} | {r['shape']} | {ranks} | {r.get('raw_ranks') or '-'} "
            f"| {_fmt_int(r['params_before'])} → {_fmt_int(r['params_after'])} "
            f"| {_fmt_int(r['macs_before'])} → {_fmt_int(r['macs_after'])} | {r['rel_error']:.3f} "
            f"| {'yes' if r['decomposed'] else 'no: ' + str(r['reason'])} |"
        )
    grouped = [r["name"] for r in layers if "depthwise" in r["kind"] or "grouped" in r["kind"]]
    if grouped:
        out += ["", "- not decomposable (grouped/depthwise convs, left alone): " + ", ".join(grouped)]
    return out


def _maybe_evaluate(model: nn.Module, ctx: Context) -> dict[str, Any]:
    from mobilec.data import ImageDataset

    if not isinstance(ctx.data, ImageDataset):
        return {"accuracy_after": None, "accuracy_note": "not evaluated: the context holds no image data set"}
    return {"accuracy_after": ctx.evaluate(model)}


def _first_sample(example_inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return tuple(x[:1] if isinstance(x, torch.Tensor) and x.dim() > 0 else x for x in example_inputs)


def _trace_shapes(model: nn.Module, example_inputs: tuple[torch.Tensor, ...], names: list[str]) -> dict[str, dict[str, Any]]:
    """Per named conv/linear on one sample, in execution order: calls, MACs, input/output pixels (convs), rows (linears)."""
    modules = dict(model.named_modules())
    out: dict[str, dict[str, Any]] = {}
    hooks = []

    def hook(name: str):
        def fn(mod: nn.Module, inp: tuple[torch.Tensor, ...], res: torch.Tensor) -> None:
            rec = out.setdefault(name, {"calls": 0, "macs": 0})
            rec["calls"] += 1
            if isinstance(mod, nn.Conv2d):
                kh, kw = mod.kernel_size
                rec["in_px"] = inp[0].shape[-2] * inp[0].shape[-1]
                rec["out_px"] = res.shape[-2] * res.shape[-1]
                rec["macs"] += res.numel() * (mod.in_channels // mod.groups) * kh * kw
                rec["rows"] = rec["out_px"]
            else:
                rec["rows"] = res.numel() // mod.out_features
                rec["macs"] += res.numel() * mod.in_features
        return fn

    for name in names:
        hooks.append(modules[name].register_forward_hook(hook(name)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(*_first_sample(example_inputs))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return out


def _model_macs(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> int:
    from mobilec.models.stats import count_macs

    return int(count_macs(model, *_first_sample(example_inputs)))


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def restructure_like(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Give ``model`` (deep-copied) the factorised layers a Tucker-compressed ``state_dict`` implies.

    Use it to reload a saved compressed checkpoint into the original architecture:
    ``m = restructure_like(build_model("vgg_small"), sd); m.load_state_dict(sd)``.
    """
    model = copy.deepcopy(model)
    for name, mod in list(model.named_modules()):
        if not isinstance(mod, nn.Conv2d | nn.Linear) or f"{name}.weight" in state_dict:
            continue
        w0, w1 = state_dict.get(f"{name}.0.weight"), state_dict.get(f"{name}.1.weight")
        if w0 is None or w1 is None:
            continue
        if isinstance(mod, nn.Conv2d) and f"{name}.2.weight" in state_dict:
            r3, r4 = int(w0.shape[0]), int(state_dict[f"{name}.2.weight"].shape[1])
            new, _ = decompose_conv(mod, min(r3, mod.in_channels), min(r4, mod.out_channels), iters=0)
        else:
            new, _ = decompose_matrix(mod, int(w0.shape[0]))
        _set_module(model, name, new)
    return model
