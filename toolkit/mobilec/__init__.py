"""mobilec: compress a trained PyTorch model, export it for phones, verify it, profile it."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["MobilecError", "export", "profile"]

from mobilec.errors import MobilecError


def export(*args: Any, **kwargs: Any) -> Any:
    """See :func:`mobilec.api.export`."""
    from mobilec.api import export as _export

    return _export(*args, **kwargs)


def profile(*args: Any, **kwargs: Any) -> Any:
    """See :func:`mobilec.api.profile`."""
    from mobilec.api import profile as _profile

    return _profile(*args, **kwargs)
