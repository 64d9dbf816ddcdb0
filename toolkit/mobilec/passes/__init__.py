"""Compression passes. Importing this package registers every pass (explicit imports, no scanning)."""

from mobilec.passes import ptq  # noqa: F401
