"""Resolve a model spec (path or ``zoo:`` stub) to a local path, reporting each source tried."""

from __future__ import annotations

import logging
from pathlib import Path

from sparsify.errors import ModelNotFoundError
from sparsify.zoo.local import find_in_local_zoo, zoo_roots
from sparsify.zoo.stub import is_stub, parse_stub

logger = logging.getLogger(__name__)


_FILE_SUFFIXES = (".pth", ".pt", ".tar", ".bin", ".safetensors", ".onnx", ".ckpt", ".yaml")


def looks_like_path(spec: str) -> bool:
    """Whether ``spec`` is meant as a local path rather than a model name or a Hub id
    (``org/name`` has exactly one ``/`` and no leading ``.``, ``/`` or ``~``)."""
    return (spec.startswith((".", "/", "~", "\\")) or spec.count("/") > 1
            or spec.lower().endswith(_FILE_SUFFIXES))


def resolve_model_path(spec: str) -> Path | None:
    """A local file/folder for ``spec``; ``None`` when ``spec`` is a model name (not a path or
    stub) that a framework resolves itself.

    Raises:
        ModelNotFoundError: a stub found nowhere, with every source tried and how to register it.
    """
    path = Path(spec).expanduser()
    if path.exists():
        return path
    if not is_stub(spec):
        if looks_like_path(spec):
            raise ModelNotFoundError(
                f"Model path '{spec}' does not exist.",
                hint="Give an existing checkpoint file or model folder, a zoo: stub, or a "
                     "model name (resnet50, org/model on the Hugging Face Hub).")
        return None
    stub = parse_stub(spec)
    tried = []
    local = find_in_local_zoo(stub)
    if local:
        logger.info("Model %s: local zoo %s", stub.without_query, local)
        return local
    tried.append(f"local zoo folders ({', '.join(str(r) for r in zoo_roots())}): "
                 f"no folder {stub.folder_name}")
    raise ModelNotFoundError(
        f"Model {stub.without_query} was not found. Sources tried:\n  - " + "\n  - ".join(tried),
        hint=f"SparseZoo's servers are gone. If you have the model, put it at "
             f"{zoo_roots()[0] / stub.folder_name}/training/model.pth (and its recipe in "
             "recipe/recipe.md), or pass the checkpoint path with --model.")
