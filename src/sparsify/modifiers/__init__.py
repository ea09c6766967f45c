"""Modifiers (SparseML-compatible) and the lifecycle that drives them.

Modifier classes are plain dataclasses whose modules do not import torch at module level: the
recipe parser builds them to validate a recipe without paying for torch. Their tensor maths lives
in ``masks.py``, ``kd.py`` and ``sparsify.quantization``, imported when a hook first runs.
"""
