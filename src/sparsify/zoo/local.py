"""Local zoo folders: one folder per stub, laid out like a SparseZoo download.

Light (no torch): the CLI uses it for ``--dry-run`` to say where a model would come from.
"""

from __future__ import annotations

import os
from pathlib import Path

from sparsify.zoo.stub import Stub

ENV_ZOO_PATH = "SPARSIFY_ZOO_PATH"


def zoo_roots() -> list[Path]:
    """Local zoo folders, from ``SPARSIFY_ZOO_PATH`` (``os.pathsep``-separated) or the default
    ``~/.cache/sparsify/zoo``."""
    value = os.environ.get(ENV_ZOO_PATH)
    if value:
        return [Path(p).expanduser() for p in value.split(os.pathsep) if p]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return [cache / "sparsify" / "zoo"]


def find_in_local_zoo(stub: Stub) -> Path | None:
    """The first local zoo folder that holds ``stub``, or ``None``.

    A folder counts when it has a ``training/`` folder or a ``model.onnx`` file.
    """
    for root in zoo_roots():
        folder = root / stub.folder_name
        if (folder / "training").is_dir() or (folder / "model.onnx").is_file():
            return folder
    return None
