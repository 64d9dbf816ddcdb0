"""One exception type for every user-facing failure: a problem and its fix, on one line."""

from __future__ import annotations

#: control characters written as escapes, so that an error naming user input (a device serial with a
#: carriage return, a path with a newline) stays one line
_ESCAPES = {c: repr(chr(c))[1:-1] for c in [*range(0x20), 0x7F]}


def one_line(text: object) -> str:
    """``str(text)`` with its control characters escaped (``\\r``, ``\\n``, ...): one terminal line."""
    return str(text).translate(_ESCAPES)


class MobilecError(Exception):
    """A user-facing error. ``str(err)`` is one line: what is wrong, then how to fix it.

    >>> raise MobilecError("unknown recipe 'int9'", hint="available: fp32, int8")
    Traceback (most recent call last):
    mobilec.errors.MobilecError: unknown recipe 'int9' (fix: available: fp32, int8)
    """

    def __init__(self, problem: str, *, hint: str | None = None) -> None:
        self.problem = problem
        self.hint = hint
        super().__init__(problem if not hint else f"{problem} (fix: {hint})")


class VerificationError(MobilecError):
    """An exported artifact disagrees with the eager model beyond the recipe's tolerance."""


class DiskWriteError(MobilecError):
    """A file could not be written (disk full, read-only or unwritable folder); nothing half-written is left."""


class ExportError(MobilecError):
    """A target runtime could not take the model."""
