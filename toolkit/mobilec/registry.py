"""Pass registry: passes are registered by explicit name, never discovered by scanning."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mobilec.errors import MobilecError

if TYPE_CHECKING:
    from mobilec.passes.base import Pass

_PASSES: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: ``@register_pass`` on a Pass subclass with a ``name`` class attribute."""
    name = cls.name
    if name in _PASSES and _PASSES[name] is not cls:
        raise ValueError(f"pass name {name!r} registered twice ({_PASSES[name].__qualname__} and {cls.__qualname__})")
    _PASSES[name] = cls
    return cls


def _ensure_loaded() -> None:
    import mobilec.passes  # noqa: F401  (imports every pass module, which registers them)


def get_pass(name: str) -> type[Pass]:
    _ensure_loaded()
    if name not in _PASSES:
        raise MobilecError(f"unknown pass type {name!r}", hint=f"available passes: {', '.join(sorted(_PASSES))}")
    return _PASSES[name]


def list_passes() -> dict[str, type[Pass]]:
    _ensure_loaded()
    return dict(sorted(_PASSES.items()))
