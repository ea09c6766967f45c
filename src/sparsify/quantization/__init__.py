"""Quantization-aware training (QAT). The module moved here unchanged as ``modules.py``; the next
commit cuts it into modules by role."""

from sparsify.quantization.modules import *  # noqa: F403
from sparsify.quantization.modules import (  # noqa: F401
    __all__,
    _QATModule,
    _quantize_residual_output,
    _tag_of,
)
