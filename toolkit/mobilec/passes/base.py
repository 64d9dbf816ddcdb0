"""The Pass interface: a frozen dataclass whose fields are its recipe parameters."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args, get_origin

from torch import nn

from mobilec.errors import MobilecError

if TYPE_CHECKING:
    from mobilec.context import Context


@dataclass(frozen=True, kw_only=True)
class Pass:
    """Base of every compression pass.

    Subclasses are frozen dataclasses; each field is a recipe parameter with a default.
    ``targets``/``ignore`` select modules by name: exact names, or ``re:`` regexes.

    >>> @register_pass
    ... @dataclass(frozen=True, kw_only=True)
    ... class Noop(Pass):
    ...     name: ClassVar[str] = "noop"
    ...     summary: ClassVar[str] = "returns the model unchanged"
    ...     def apply(self, model, ctx): return model
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    targets: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:  # pragma: no cover - interface
        raise NotImplementedError

    # -- module selection -------------------------------------------------------------
    def selected(self, model: nn.Module, kinds: tuple[type[nn.Module], ...]) -> Iterator[tuple[str, nn.Module]]:
        """Yield (name, module) of the given kinds that ``targets``/``ignore`` select."""
        for mod_name, module in model.named_modules():
            if not isinstance(module, kinds):
                continue
            if self.targets and not any(_matches(p, mod_name) for p in self.targets):
                continue
            if any(_matches(p, mod_name) for p in self.ignore):
                continue
            yield mod_name, module

    def check_targets_exist(self, model: nn.Module) -> None:
        """Every exact (non-regex) target must name a module of the model."""
        names = {n for n, _ in model.named_modules()}
        for pattern in self.targets:
            if not pattern.startswith("re:") and pattern not in names:
                raise MobilecError(
                    f"pass {self.name!r}: target {pattern!r} is not a module of the model",
                    hint=f"use one of the module names, e.g. {', '.join(sorted(n for n in names if n)[:5])}",
                )

    # -- recipe parameters ------------------------------------------------------------
    @classmethod
    def params(cls) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(cls)}

    @classmethod
    def from_params(cls, params: dict[str, Any], *, where: str) -> Pass:
        """Build the pass from a recipe table; unknown or ill-typed keys raise MobilecError."""
        fields = cls.params()
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for key, value in params.items():
            if key not in fields:
                raise MobilecError(
                    f"{where}: unknown key {key!r} for pass {cls.name!r}",
                    hint=f"valid keys: {', '.join(sorted(fields))}",
                )
            values[key] = coerce(value, hints[key], f"{where}: pass {cls.name!r} key {key!r}")
        try:
            obj = cls(**values)
        except (ValueError, TypeError) as exc:
            raise MobilecError(f"{where}: pass {cls.name!r}: {exc}") from None
        return obj

    def to_params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.name}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


def _matches(pattern: str, name: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return pattern == name


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Check a TOML value against a field's type hint; ints widen to float, lists become tuples."""
    origin = get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in get_args(hint):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return coerce(value, option, where)
            except MobilecError as exc:
                errors.append(exc)
        raise errors[0] if errors else MobilecError(f"{where}: invalid value {value!r}")
    if origin is Literal:
        allowed = get_args(hint)
        if value not in allowed:
            raise MobilecError(f"{where} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value
    if origin is tuple:
        args = get_args(hint)
        if not isinstance(value, list | tuple):
            raise MobilecError(f"{where} must be a list, got {type(value).__name__} {value!r}")
        item_hint = args[0] if len(args) == 2 and args[1] is Ellipsis else None
        if item_hint is None:
            if len(value) != len(args):
                raise MobilecError(f"{where} must have {len(args)} items, got {len(value)}")
            return tuple(coerce(v, a, where) for v, a in zip(value, args, strict=True))
        return tuple(coerce(v, item_hint, where) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise MobilecError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise MobilecError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise MobilecError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise MobilecError(f"{where} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported parameter type {hint!r} at {where}")  # a bug in a pass definition
