"""The fused C++ CPU kernels of the DuQ quantizer and the int8 output fake-quant (``cpu_kernels.cpp``).

Built on first use with ``torch.utils.cpp_extension`` (a C++ compiler is needed, as for
``torch.compile``) into torch's extension cache, under a name that hashes the source and the torch
version, so an edited source or another torch rebuilds instead of loading a stale build.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import ModuleType

import torch

SOURCE = Path(__file__).with_name("cpu_kernels.cpp")
_MODULE: dict[str, ModuleType | None] = {"lib": None}
#: -fopenmp: at::parallel_for runs on torch's OpenMP threads; -fno-trapping-math lets the clamps
#: become vector selects; -ffp-contract=off: no FMA in the AVX2/AVX-512 builds of the loops (no
#: -ffast-math: the arithmetic stays the eager path's)
CFLAGS = ["-O3", "-fopenmp", "-fno-trapping-math", "-ffp-contract=off"]


def extension_name() -> str:
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(CFLAGS).encode() + torch.__version__.encode()).hexdigest()[:12]
    return f"mobilec_quant_cpu_{digest}"


def load() -> ModuleType:
    """The compiled module (built and cached on the first call; raises if the build fails)."""
    if _MODULE["lib"] is None:
        from torch.utils import cpp_extension

        _MODULE["lib"] = cpp_extension.load(name=extension_name(), sources=[str(SOURCE)], extra_cflags=CFLAGS,
                                            extra_ldflags=["-fopenmp"], verbose=False)
    return _MODULE["lib"]
