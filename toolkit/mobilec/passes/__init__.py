"""Compression passes. Importing this package registers every pass (explicit imports, no scanning)."""

from mobilec.passes import ptq  # noqa: F401
from mobilec.passes import tucker  # noqa: F401
from mobilec.passes import finetune  # noqa: F401
from mobilec.passes import meta_embed  # noqa: F401
from mobilec.passes.quant import profit  # noqa: F401
from mobilec.passes import binarize  # noqa: F401
