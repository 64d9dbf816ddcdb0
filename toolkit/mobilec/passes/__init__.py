"""Compression passes. Importing this package registers every pass (explicit imports, no scanning)."""

from mobilec.passes import (
    binarize,  # noqa: F401
    finetune,  # noqa: F401
    meta_embed,  # noqa: F401
    ptq,  # noqa: F401
    tucker,  # noqa: F401
)
from mobilec.passes.quant import profit, rtn  # noqa: F401
