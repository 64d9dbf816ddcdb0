"""Recipes: TOML files naming an ordered list of passes plus export/verify/profile settings.

A recipe may extend another with ``base = "NAME"``: the base's passes run first, and its
``[export]``/``[verify]``/``[profile]`` keys are the defaults the child overrides.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mobilec.errors import MobilecError
from mobilec.passes.base import Pass, coerce

TARGETS = ("executorch", "tflite", "onnx")
RECIPE_VERSION = 1


def recipes_dir() -> Path:
    """The folder named recipes resolve in: $MOBILEC_RECIPES_DIR or the repo's ``recipes/``."""
    env = os.environ.get("MOBILEC_RECIPES_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "recipes"


@dataclass(frozen=True, kw_only=True)
class ExportSpec:
    targets: tuple[str, ...] = TARGETS

    def __post_init__(self) -> None:
        bad = [t for t in self.targets if t not in TARGETS]
        if bad or not self.targets:
            raise ValueError(f"targets must be a non-empty subset of {', '.join(TARGETS)}, got {list(self.targets)}")


@dataclass(frozen=True, kw_only=True)
class VerifySpec:
    """Tolerances an artifact must meet against the eager compressed model on the test set."""

    min_top1_agreement: float = 0.99
    max_abs_error: float | None = None
    min_snr_db: float | None = None
    max_samples: int | None = None  # None: the whole test split

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_top1_agreement <= 1.0:
            raise ValueError(f"min_top1_agreement must lie in [0, 1], got {self.min_top1_agreement}")
        if self.max_samples is not None and self.max_samples <= 0:
            raise ValueError(f"max_samples must be positive, got {self.max_samples}")


@dataclass(frozen=True, kw_only=True)
class ProfileSpec:
    runs: int = 50
    warmup: int = 5
    threads: int = 1

    def __post_init__(self) -> None:
        if self.runs < 1 or self.warmup < 0 or self.threads < 1:
            raise ValueError(f"need runs >= 1, warmup >= 0, threads >= 1 (got {self.runs}, {self.warmup}, {self.threads})")


@dataclass(frozen=True)
class Recipe:
    """A parsed recipe. ``Recipe.load("int8")`` or ``Recipe.load("path/to/recipe.toml")``.

    >>> r = Recipe.load("int8")
    >>> [p.name for p in r.passes]
    ['ptq']
    """

    name: str
    description: str
    passes: tuple[Pass, ...]
    export: ExportSpec = field(default_factory=ExportSpec)
    verify: VerifySpec = field(default_factory=VerifySpec)
    profile: ProfileSpec = field(default_factory=ProfileSpec)
    source: Path | None = None

    @classmethod
    def load(cls, name_or_path: str | Path) -> Recipe:
        return _load(str(name_or_path), chain=())

    @classmethod
    def from_dict(cls, doc: dict[str, Any], *, name: str, where: str, source: Path | None = None) -> Recipe:
        return _from_dict(doc, name=name, where=where, source=source, chain=())

    def to_dict(self) -> dict[str, Any]:
        """The flattened recipe (base already merged); ``from_dict(to_dict())`` gives it back."""
        return {
            "version": RECIPE_VERSION,
            "description": self.description,
            "passes": [p.to_params() for p in self.passes],
            "export": _spec_dict(self.export),
            "verify": _spec_dict(self.verify),
            "profile": _spec_dict(self.profile),
        }

    def dump(self) -> str:
        return dump_toml(self.to_dict())


def available_recipes() -> dict[str, str]:
    """name -> description of every recipe in ``recipes_dir()``."""
    out = {}
    for path in sorted(recipes_dir().glob("*.toml")):
        try:
            out[path.stem] = _read_toml(path).get("description", "")
        except MobilecError as exc:
            out[path.stem] = f"(broken: {exc})"
    return out


def _resolve(name_or_path: str) -> Path:
    if name_or_path.endswith(".toml") or os.sep in name_or_path:
        path = Path(name_or_path)
        if not path.is_file():
            raise MobilecError(f"recipe file {path} does not exist", hint="give a recipe name or an existing .toml path")
        return path
    path = recipes_dir() / f"{name_or_path}.toml"
    if not path.is_file():
        names = ", ".join(available_recipes()) or "(none found)"
        raise MobilecError(f"unknown recipe {name_or_path!r}", hint=f"available recipes: {names}; or pass a .toml path")
    return path


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MobilecError(f"recipe {path} cannot be read: {exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MobilecError(f"recipe {path} is not valid TOML: {exc}", hint="fix the TOML syntax at that line") from None


def _load(name_or_path: str, chain: tuple[str, ...]) -> Recipe:
    path = _resolve(name_or_path)
    return _from_dict(_read_toml(path), name=path.stem, where=str(path), source=path, chain=chain)


def _from_dict(doc: dict[str, Any], *, name: str, where: str, source: Path | None, chain: tuple[str, ...]) -> Recipe:
    from mobilec.registry import get_pass

    if not isinstance(doc, dict):
        raise MobilecError(f"{where}: a recipe must be a TOML table")
    known = {"version", "description", "base", "passes", "export", "verify", "profile"}
    for key in doc:
        if key not in known:
            raise MobilecError(f"{where}: unknown top-level key {key!r}", hint=f"valid keys: {', '.join(sorted(known))}")
    version = doc.get("version", RECIPE_VERSION)
    if version != RECIPE_VERSION:
        raise MobilecError(f"{where}: recipe version {version!r} is not supported", hint=f"set version = {RECIPE_VERSION}")
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise MobilecError(f"{where}: 'description' must be a string")

    base_passes: tuple[Pass, ...] = ()
    base_tables: dict[str, dict[str, Any]] = {"export": {}, "verify": {}, "profile": {}}
    if "base" in doc:
        base_name = doc["base"]
        if not isinstance(base_name, str):
            raise MobilecError(f"{where}: 'base' must be a recipe name")
        if base_name in chain or base_name == name:
            raise MobilecError(f"{where}: recipe bases form a cycle: {' -> '.join((*chain, name, base_name))}")
        base = _load(base_name, chain=(*chain, name))
        base_passes = base.passes
        base_tables = {k: _spec_dict(getattr(base, k)) for k in base_tables}

    raw_passes = doc.get("passes", [])
    if not isinstance(raw_passes, list) or not all(isinstance(p, dict) for p in raw_passes):
        raise MobilecError(f"{where}: 'passes' must be an array of tables ([[passes]])")
    passes = list(base_passes)
    for i, table in enumerate(raw_passes):
        table = dict(table)
        kind = table.pop("type", None)
        if not isinstance(kind, str):
            raise MobilecError(f"{where}: passes[{i}] needs a string 'type'", hint='e.g. type = "ptq"')
        try:
            pass_cls = get_pass(kind)
        except MobilecError as exc:  # name the file and the table, not just the type
            raise MobilecError(f"{where} passes[{i}]: {exc.problem}", hint=exc.hint) from None
        passes.append(pass_cls.from_params(table, where=f"{where} passes[{i}]"))

    specs = {}
    for key, spec_cls in (("export", ExportSpec), ("verify", VerifySpec), ("profile", ProfileSpec)):
        table = doc.get(key, {})
        if not isinstance(table, dict):
            raise MobilecError(f"{where}: [{key}] must be a table")
        specs[key] = _build_spec(spec_cls, {**base_tables[key], **table}, f"{where} [{key}]")
    return Recipe(name=name, description=description, passes=tuple(passes), source=source, **specs)


def _build_spec(spec_cls: type, table: dict[str, Any], where: str) -> Any:
    fields = {f.name for f in dataclasses.fields(spec_cls)}
    hints = typing.get_type_hints(spec_cls)
    values = {}
    for key, value in table.items():
        if key not in fields:
            raise MobilecError(f"{where}: unknown key {key!r}", hint=f"valid keys: {', '.join(sorted(fields))}")
        values[key] = coerce(value, hints[key], f"{where} key {key!r}")
    try:
        return spec_cls(**values)
    except ValueError as exc:
        raise MobilecError(f"{where}: {exc}") from None


def _spec_dict(spec: Any) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if value is not None:
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


# -- a small TOML writer for the value types recipes use --------------------------------
def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
        escaped = "".join(c if c.isprintable() or c in "\\" else f"\\u{ord(c):04x}" for c in escaped)
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def dump_toml(doc: dict[str, Any]) -> str:
    lines = []
    for key, value in doc.items():
        if value is not None and not isinstance(value, dict) and key != "passes":
            lines.append(f"{key} = {_toml_value(value)}")
    for table in doc.get("passes", []):
        lines.append("\n[[passes]]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None)
    for key, value in doc.items():
        if isinstance(value, dict):
            lines.append(f"\n[{key}]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in value.items() if v is not None)
    return "\n".join(lines) + "\n"
