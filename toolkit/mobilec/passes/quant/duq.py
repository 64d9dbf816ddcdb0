"""DuQ: differentiable unified quantization (Park & Yoo, ECCV 2020), and the int8 fake-quant of intermediates.

Each :class:`DuQuantizer` has two learnable scalars (or per-channel vectors), the clip range
``a = softplus(a_raw)`` and the output scale ``c = softplus(c_raw)``; ``R_k(u) = round(k·u)/k``
with a straight-through round, and a hardtanh clip so that both ``a`` and ``c`` get gradients:

- ``signed``   (weights, residual stream, inputs): ``q(x) = c·R_{N/2-1}(clip(x/a, -1, 1))``
- ``unsigned`` (after ReLU/ReLU6):                 ``q(x) = c·R_{N-1}(clip(x/a, 0, 1))``
- ``hswish``   (after h-swish, minimum -3/8):       ``q(x) = c·R_{N-1}(clip((x+3/8)/a, 0, 1)) - 3/8``

with ``N = 2**bits``. In integer terms the grid codes are ``-n..n`` (signed, ``n = N/2-1``) or
``0..N-1``, the clip ``clamp(x, lo·a, a)`` is an affine int8 quantizer with scale ``a/k``, and
``c/a`` is a per-tensor multiplier the next layer's weights absorb (see ``lowering.py``).

:class:`Int8FakeQuant` is a standard per-tensor affine int8 fake-quantizer (EMA min/max in
training, fixed in eval) on the tensors an int8 runtime materialises but DuQ leaves in float
(conv outputs that feed an add, a pooling or an h-swish): keeping it in the trained model
makes the eager model and the integer artifact compute the same numbers.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from mobilec.errors import MobilecError

Kind = Literal["signed", "unsigned", "hswish"]
KINDS: tuple[str, ...] = ("signed", "unsigned", "hswish")
#: h-swish's minimum is -3/8 (at x = -3/2): the offset of the asymmetric quantizer and the negative-padding value.
HSWISH_OFFSET = 3.0 / 8.0
MIN_BITS, MAX_BITS = 2, 8


def check_bits(bits: int, what: str = "bits") -> int:
    """Bit widths DuQ supports: 2..8 (8 fits the int8 containers the runtimes execute)."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise MobilecError(f"{what} = {bits!r} is outside the supported range {MIN_BITS}..{MAX_BITS}",
                           hint=f"choose {what} between {MIN_BITS} and {MAX_BITS}")
    return bits


def grid_levels(kind: str, bits: int) -> int:
    """``k`` in ``R_k``: ``N/2 - 1`` steps per side for signed grids, ``N - 1`` for unsigned/h-swish.

    >>> grid_levels("signed", 4), grid_levels("unsigned", 4)
    (7, 15)
    """
    return 2 ** (bits - 1) - 1 if kind == "signed" else 2**bits - 1


#: activation init rules: DuQ's 95th percentile, or the least-squared-error clip at the current width
ACT_INIT_RULES: tuple[str, ...] = ("p95", "mse")
#: weight init rules: DuQ's 0.9·max|W|, or the least-squared-error clip at the current width
WEIGHT_INIT_RULES: tuple[str, ...] = ("max", "mse")


def _subsample(v: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """At most ``n`` values of ``v``, drawn with a seeded generator (keeps big activations cheap)."""
    if v.numel() <= n:
        return v
    return v[torch.randint(0, v.numel(), (n,), generator=torch.Generator().manual_seed(seed))]


def _mse_clip(u: torch.Tensor, top: float, lower: float, k: int, cap: float | None,
              candidates: int = 100, max_samples: int = 1 << 16) -> float:
    """The clip ``a`` in ``top·(1..candidates)/candidates`` that quantizes ``u`` with the least squared
    error on the grid ``a·round(k·clip(u/a, lower, 1))/k``."""
    u = _subsample(u, max_samples, seed=1)
    top = min(top, cap) if cap is not None else top
    a = torch.linspace(top / candidates, top, candidates).unsqueeze(1)
    q = (u / a).clamp(lower, 1.0).mul(k).round().div(k).mul(a)
    return float(a[(q - u).pow(2).mean(dim=1).argmin(), 0])


def inverse_softplus(v: torch.Tensor) -> torch.Tensor:
    """``softplus⁻¹(v) = log(expm1(v))``, stable for large ``v``."""
    v = v.clamp_min(1e-6)
    return torch.where(v > 20, v, torch.log(torch.expm1(v.clamp_max(20))))


def _sum_to(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over the dimensions ``like`` broadcasts along (``like`` is a scalar or a view such as 1×C×1×1)."""
    if like.dim() == 0:
        return t.sum()
    dims = [i for i, n in enumerate(like.shape) if n == 1 and t.shape[i] != 1]
    return t.sum(dim=dims, keepdim=True)


#: the fused C++ CPU kernels (``cpu_kernels.cpp``) while :func:`enable_fused_kernels` has them on
_FUSED: dict[str, Any] = {"lib": None}


def _is_dense(t: torch.Tensor) -> bool:
    """Whether ``t``'s elements fill ``t.numel()`` consecutive storage slots (any dimension order, no overlap)."""
    if t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)):
        return True  # the common cases, without the Python loop (this runs a few hundred times a step)
    expected = 1
    for d in sorted((d for d in range(t.dim()) if t.shape[d] != 1), key=t.stride):
        if t.stride(d) != expected:
            return False
        expected *= t.shape[d]
    return True


def _same_layout(t: torch.Tensor, like: torch.Tensor) -> bool:
    return all(t.stride(d) == like.stride(d) for d in range(t.dim()) if t.shape[d] != 1)


def _laid_out_like(t: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
    """``t`` (detached) where it is dense and laid out like ``like`` (default: itself), else copied into
    ``like``'s layout (``like`` must be dense), or contiguous when ``like`` is None and ``t`` not dense.

    The fused kernels run over the tensors' memory in whatever dimension order it has. Keeping that
    order matters: channels-last activations flattened with ``t.contiguous()`` came back NCHW, and every
    convolution downstream then ran (and backpropagated) in NCHW, measured ~1.8x slower on CPU."""
    t = t.detach()
    if like is None:
        return t if _is_dense(t) else t.contiguous()
    if _is_dense(t) and _same_layout(t, like):
        return t
    return torch.empty_like(like, memory_format=torch.preserve_format).copy_(t)


def _fused_ok(x: torch.Tensor) -> bool:
    return _FUSED["lib"] is not None and x.device.type == "cpu" and x.dtype == torch.float32


def enable_fused_kernels(enabled: bool = True) -> str | None:
    """Run the per-tensor DuQ quantizers and the int8 fake-quants on CPU through fused C++ kernels
    (``cpu_kernels.cpp``: one memory pass each way, in the tensors' own layout).

    The forward values are the eager ones exactly (same float32 arithmetic); the gradients of ``a``
    and ``c`` are sums in another order. The kernels are built (first use: ~30 s, then cached) and
    checked against the eager quantizer here; if the platform cannot build them (no C++ compiler, ...)
    the eager path stays on and the error text is returned. Returns None on success.
    """
    if not enabled:
        _FUSED["lib"] = None
        return None
    if _FUSED["lib"] is not None:
        return None
    try:
        from mobilec.passes.quant import cpu_kernels

        lib = cpu_kernels.load()
    except Exception as exc:  # no compiler, unsupported platform, ...
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    _FUSED["lib"] = lib
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3 * 4096 + 7, generator=gen) * 2
    for kind in KINDS:
        q = DuQuantizer(kind, 4)
        q.set_range(torch.tensor(1.3), torch.tensor(0.8))
        with torch.no_grad():
            fused = q(x)
            _FUSED["lib"] = None
            eager = q(x)
            _FUSED["lib"] = lib
        if not torch.equal(fused, eager):
            _FUSED["lib"] = None
            return f"the fused DuQ kernel disagrees with the eager one ({kind})"
    return None


def fused_kernels_enabled() -> bool:
    return _FUSED["lib"] is not None


class _DuQFunction(torch.autograd.Function):
    """``c·round(k·clip((x+off)/a, lo, 1))/k − off`` with a straight-through round, in few memory passes.

    Takes the raw parameters (``a = softplus(a_raw)``, ``c = softplus(c_raw)``, viewed to ``shape``
    when per-channel) so that one autograd node does all of it: a training step runs ~100 of these,
    and on a small model the per-op overhead of separate softplus/view nodes was measurable.

    Gradients are those of the hardtanh formulation: ∂/∂x = c/a inside the clip range (0 outside),
    ∂/∂a = −(c/a)·(x+off)/a inside, ∂/∂c = round(...)/k everywhere, then through softplus
    (``aten.softplus_backward``, the same op autograd would use). The codes are kept as 8-bit
    integers for the backward pass.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, a_raw: torch.Tensor, c_raw: torch.Tensor, lo: float, k: float,
                off: float, shape: tuple[int, ...] | None) -> torch.Tensor:
        a, c = F.softplus(a_raw), F.softplus(c_raw)
        if shape is not None:
            a, c = a.view(shape), c.view(shape)
        code_dtype = torch.int8 if lo < 0 else torch.uint8
        fused = shape is None and _fused_ok(x)
        if fused:  # the scalars as float32 tensor ops first, so that the kernel multiplies by the eager path's values
            x = _laid_out_like(x)  # saved below in the layout the backward kernel needs
            out, codes = _FUSED["lib"].duq_forward(x, float(k / a), lo * k, k, float(c / k), off, lo < 0)
        else:
            t = (x + off).mul_(k / a) if off else x * (k / a)
            t.clamp_(lo * k, k).round_()
            codes = t.to(code_dtype)
            out = t.mul_(c / k)
            if off:
                out.sub_(off)
        ctx.save_for_backward(x, a_raw, c_raw, a, c, codes)
        ctx.consts, ctx.lib = (lo, k, off, fused), _FUSED["lib"]
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, a_raw, c_raw, a, c, codes = ctx.saved_tensors
        lo, k, off, fused = ctx.consts
        ca = c / a
        if fused:  # g is flattened in x's layout (copied if it has another), so that it lines up with x and the codes
            grad_x, sum_a, sum_c = ctx.lib.duq_backward(_laid_out_like(g, x), x, codes, off, float(lo * a), float(a),
                                                        float(ca), ctx.needs_input_grad[0])
            grad_a, grad_c = (-ca / a) * sum_a, torch.tensor(sum_c / k)
        else:
            xs = x + off if off else x
            inside = (xs > lo * a).logical_and_(xs < a)
            gm = g * inside
            grad_x = grad_a = grad_c = None
            if ctx.needs_input_grad[0]:
                grad_x = gm * ca
            if ctx.needs_input_grad[1]:  # −(c/a)·Σ g·(x+off)/a over the clip range
                grad_a = _sum_to(gm.mul_(xs), a).mul_(-ca / a)
            if ctx.needs_input_grad[2]:
                grad_c = _sum_to(g * codes, c).div_(k)
        if grad_a is not None and ctx.needs_input_grad[1]:
            grad_a = torch.ops.aten.softplus_backward(grad_a.reshape(a_raw.shape), a_raw, 1.0, 20.0)
        if grad_c is not None and ctx.needs_input_grad[2]:
            grad_c = torch.ops.aten.softplus_backward(grad_c.reshape(c_raw.shape), c_raw, 1.0, 20.0)
        return grad_x, grad_a, grad_c, None, None, None, None


class DuQuantizer(nn.Module):
    """One DuQ quantizer. ``channels`` makes ``a`` and ``c`` per-channel along ``ch_axis`` (weights).

    ``enabled`` (a buffer, so EMA copies and checkpoints carry it) turns it into the identity:
    the progressive schedule quantizes activations before weights.

    >>> q = DuQuantizer("unsigned", 4)
    >>> q.set_range(torch.tensor(2.0))
    >>> q(torch.tensor([-1.0, 0.3, 1.0, 5.0]))
    tensor([0.0000, 0.2667, 1.0667, 2.0000], grad_fn=<SubBackward0>)
    """

    def __init__(self, kind: str, bits: int, *, channels: int | None = None, ch_axis: int = 0) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"DuQ kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind
        self.ch_axis = ch_axis
        shape = (channels,) if channels else ()
        self.a_raw = nn.Parameter(inverse_softplus(torch.ones(shape)))
        self.c_raw = nn.Parameter(inverse_softplus(torch.ones(shape)))
        self.register_buffer("bits_buf", torch.tensor(check_bits(bits), dtype=torch.int64))
        self.register_buffer("enabled", torch.tensor(True))
        self.register_buffer("initialized", torch.tensor(False))

    # -- state ------------------------------------------------------------------------
    @property
    def bits(self) -> int:
        return int(self.bits_buf)

    @bits.setter
    def bits(self, value: int) -> None:
        self.bits_buf.fill_(check_bits(value))

    @property
    def levels(self) -> int:
        return grid_levels(self.kind, self.bits)

    @property
    def lower(self) -> float:
        """Lower end of the clip in units of ``a``: -1 (signed) or 0."""
        return -1.0 if self.kind == "signed" else 0.0

    @property
    def offset(self) -> float:
        return HSWISH_OFFSET if self.kind == "hswish" else 0.0

    @property
    def per_channel(self) -> bool:
        return self.a_raw.dim() == 1

    def a(self) -> torch.Tensor:
        return F.softplus(self.a_raw)

    def c(self) -> torch.Tensor:
        return F.softplus(self.c_raw)

    @torch.no_grad()
    def set_range(self, a: torch.Tensor, c: torch.Tensor | None = None) -> None:
        """Set ``a`` (and ``c``, default ``c = a``) in real units."""
        a = torch.as_tensor(a, dtype=self.a_raw.dtype).expand_as(self.a_raw)
        c = a if c is None else torch.as_tensor(c, dtype=self.c_raw.dtype).expand_as(self.c_raw)
        self.a_raw.copy_(inverse_softplus(a.clamp_min(1e-4)))
        self.c_raw.copy_(inverse_softplus(c.clamp_min(1e-4)))
        self.initialized.fill_(True)

    @torch.no_grad()
    def init_activation(self, x: torch.Tensor, *, cap: float | None = None, percentile: float = 0.95,
                        rule: str = "p95", max_samples: int = 1 << 20) -> float:
        """Activation init from one batch, ``a = c``; returns the value set.

        ``rule="p95"`` is DuQ's: the 95th percentile of the positive values (signed tensors use
        ``|x|``, h-swish ones ``x + 3/8``). ``rule="mse"`` picks the clip with the least mean squared
        quantization error of the batch at the quantizer's current width. ``cap`` (6 for ReLU6) bounds it.
        """
        if rule not in ACT_INIT_RULES:
            raise ValueError(f"activation init rule {rule!r}: choose one of {', '.join(ACT_INIT_RULES)}")
        u = x.detach().float().reshape(-1) + self.offset
        if rule == "mse":  # the error is over all values: subsample them (the p95 rule subsamples the positive ones)
            u = _subsample(u, max_samples)
        v = u.abs() if self.kind == "signed" else u
        v = _subsample(v[v > 0], max_samples)
        if v.numel() == 0:
            value = 1e-3
        elif rule == "mse":
            value = _mse_clip(u, float(v.max()), self.lower, self.levels, cap)
        else:
            value = float(v.kthvalue(max(1, math.ceil(percentile * v.numel()))).values)
        if cap is not None:
            value = min(value, cap)
        # a = an observed value would put other observed values (pooling averages, int8 grids) exactly on
        # rounding ties, which float32 and the runtimes may break differently; 2^-12 larger avoids that
        value = max(value, 1e-3) * (1.0 + 2.0**-12)
        self.set_range(torch.tensor(value))
        return value

    @torch.no_grad()
    def init_weight(self, w: torch.Tensor, factor: float = 0.9, rule: str = "max") -> None:
        """Weight init (per output channel when per-channel): DuQ's ``a = c = 0.9·max|W|`` (``rule="max"``),
        or ``rule="mse"``, the clip with the least squared quantization error at the current width."""
        if rule not in WEIGHT_INIT_RULES:
            raise ValueError(f"weight init rule {rule!r}: choose one of {', '.join(WEIGHT_INIT_RULES)}")
        rows = w.detach().float().transpose(0, self.ch_axis).reshape(w.shape[self.ch_axis], -1) if self.per_channel \
            else w.detach().float().reshape(1, -1)
        m = rows.abs().amax(dim=1).clamp_min(1e-8)
        if rule == "mse":
            value = torch.tensor([_mse_clip(r, float(t), -1.0, self.levels, None) for r, t in zip(rows, m, strict=True)])
        else:
            value = factor * m
        self.set_range(value if self.per_channel else value[0])

    # -- forward ----------------------------------------------------------------------
    def _view(self, p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if p.dim() == 0:
            return p
        shape = [1] * x.dim()
        shape[self.ch_axis] = -1
        return p.view(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.enabled):
            return x
        shape = None
        if self.per_channel:
            dims = [1] * x.dim()
            dims[self.ch_axis] = -1
            shape = tuple(dims)
        return _DuQFunction.apply(x, self.a_raw, self.c_raw, self.lower, float(self.levels), self.offset, shape)

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Integer grid codes ``round(k·clip(...))`` of ``x`` (``-n..n`` or ``0..N-1``) as int64."""
        a = self._view(self.a(), x)
        u = (x + self.offset) / a
        return torch.round(F.hardtanh(u, self.lower, 1.0) * self.levels).to(torch.int64)

    def extra_repr(self) -> str:
        shape = f", channels={self.a_raw.numel()}" if self.per_channel else ""
        return f"kind={self.kind}, bits={self.bits}{shape}, enabled={bool(self.enabled)}"


class _Int8FakeQuantFunction(torch.autograd.Function):
    """``torch.fake_quantize_per_tensor_affine(x, scale, zp, -128, 127)`` through the fused C++ kernels:
    the same values; the backward recomputes the in-range mask from ``x`` instead of storing it."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float, zp: int) -> torch.Tensor:
        x = _laid_out_like(x)
        ctx.save_for_backward(x)
        ctx.lib, ctx.qparams = _FUSED["lib"], (scale, zp)
        return ctx.lib.int8_fq_forward(x, scale, zp)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (x,) = ctx.saved_tensors
        return ctx.lib.int8_fq_backward(_laid_out_like(g, x), x, *ctx.qparams), None, None


class Int8FakeQuant(nn.Module):
    """Per-tensor affine int8 fake quantization with an EMA min/max observer (frozen in eval).

    The range always contains 0. ``qparams()`` gives the ``(scale, zero_point)`` that both the
    eager forward and the integer lowering use, so the two agree exactly.

    >>> fq = Int8FakeQuant()
    >>> _ = fq.train()(torch.linspace(-1, 3, 100))
    >>> scale, zp = fq.qparams()
    >>> round(scale * 255, 4), zp
    (4.0, -64)
    """

    def __init__(self, momentum: float = 0.01) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("min_val", torch.tensor(0.0))
        self.register_buffer("max_val", torch.tensor(0.0))
        self.register_buffer("observed", torch.tensor(False))
        self.register_buffer("enabled", torch.tensor(True))
        self.register_buffer("frozen", torch.tensor(False))

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        # over the tensor's memory where it is dense: aminmax copies a channels-last tensor to NCHW first
        lo, hi = (x.detach().as_strided((x.numel(),), (1,)) if _is_dense(x) else x.detach()).aminmax()
        lo, hi = lo.float(), hi.float()
        if not math.isfinite(float(lo) - float(hi)):  # inf - inf and nan give nan: one check for both ends
            raise MobilecError("non-finite activations reached an int8 observer: training diverged",
                               hint="lower lr (or quant_lr_scale) in the recipe, or start from a trained model")
        if not bool(self.observed):
            self.min_val.copy_(lo)
            self.max_val.copy_(hi)
            self.observed.fill_(True)
        else:
            self.min_val.lerp_(lo, self.momentum)
            self.max_val.lerp_(hi, self.momentum)

    def qparams(self) -> tuple[float, int]:
        lo = min(float(self.min_val), 0.0)
        hi = max(float(self.max_val), 0.0)
        scale = max((hi - lo) / 255.0, 1e-8)
        zp = int(min(127, max(-128, -128 - round(lo / scale))))
        return scale, zp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.enabled):
            return x
        if self.training and not bool(self.frozen):
            self.observe(x)
        if not bool(self.observed):
            return x
        scale, zp = self.qparams()
        if _fused_ok(x):
            return _Int8FakeQuantFunction.apply(x, scale, zp)
        return torch.fake_quantize_per_tensor_affine(x, scale, zp, -128, 127)

    def extra_repr(self) -> str:
        if not bool(self.observed):
            return "unobserved"
        scale, zp = self.qparams()
        return f"scale={scale:.4g}, zero_point={zp}"
