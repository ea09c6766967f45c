"""Resolve a model spec (path, ``zoo:`` stub, Hub id, torchvision / Ultralytics weight name) to
local files, trying the sources in a fixed order and reporting each attempt.

Order (OPTIM_LEVELS.md, "Sources, in the order tried"):

1. a local path: used as is;
2. local zoo folders (``SPARSIFY_ZOO_PATH``): ``<root>/<stub path>/``;
3. an existing SparseZoo cache (``SPARSEZOO_MODELS_PATH``), matched by the stub its files record;
4. the catalog's remote sources for the stub, each first from its own cache, then (when
   ``download`` is allowed and the source is online) downloaded into that cache.

Light at import: ``huggingface_hub`` and the downloader are imported only when a remote source
is actually fetched.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from sparsify.errors import ModelNotFoundError
from sparsify.zoo.catalog import CatalogEntry, Source, find_entries_by_source, find_entries_by_stub
from sparsify.zoo.local import (
    find_in_local_zoo, find_in_sparsezoo_cache, recipe_files, sparsezoo_root, zoo_roots,
)
from sparsify.zoo.sources import (
    ULTRALYTICS_NAME, cached_path, fetch, hf_cache_dir, hf_offline, is_hub_id,
)
from sparsify.zoo.stub import is_stub, parse_stub

logger = logging.getLogger(__name__)

_FILE_SUFFIXES = (".pth", ".pt", ".tar", ".bin", ".safetensors", ".onnx", ".ckpt", ".yaml")
#: Origins whose path a loader can open directly (a torchvision cache file is a bare state dict
#: that only torchvision's own builder should read).
LOADABLE_ORIGINS = ("path", "local zoo", "SparseZoo cache", "hf", "ultralytics", "url")


#: an Ultralytics model config by name (``yolov8n.yaml``, ``yolo11s-seg.yaml``): built by
#: Ultralytics from its own copy, not a local file
ULTRALYTICS_CONFIG = re.compile(r"^yolo[A-Za-z0-9_.\-]*\.ya?ml$", re.IGNORECASE)


def looks_like_path(spec: str) -> bool:
    """Whether ``spec`` is meant as a local path rather than a model name or a Hub id
    (``org/name`` has exactly one ``/`` and no leading ``.``, ``/`` or ``~``)."""
    if ULTRALYTICS_NAME.match(spec) or ULTRALYTICS_CONFIG.match(spec):
        return False
    return (spec.startswith((".", "/", "~", "\\")) or spec.count("/") > 1
            or spec.lower().endswith(_FILE_SUFFIXES))


@dataclass
class Attempt:
    """One source tried: what it was, whether it had the model, and why not."""

    source: str
    found: bool
    detail: str

    def __str__(self) -> str:
        return f"{self.source}: {self.detail}"


@dataclass
class ResolvedModel:
    """Where a model spec was found.

    Attributes:
        spec: what was asked for.
        path: the local file or folder (``None`` when a framework resolves the name itself).
        origin: ``path``, ``local zoo``, ``SparseZoo cache``, ``hf``, ``torchvision``,
            ``ultralytics``, ``url`` or ``framework``.
        entry: the catalog entry of the spec, when it has one.
        source: the remote source used, when one was.
        attempts: every source tried, in order.
    """

    spec: str
    path: Path | None
    origin: str
    entry: CatalogEntry | None = None
    source: Source | None = None
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def recipes(self) -> list[Path]:
        """Recipe files that come with the model (``recipe/`` of a zoo folder)."""
        if self.path is None or not self.path.is_dir():
            return []
        return recipe_files(self.path)

    def describe(self) -> str:
        """``local zoo /path``, ``hf:org/name at /path``, ..."""
        if self.origin in ("path", "local zoo", "SparseZoo cache"):
            return f"{self.origin} {self.path}"
        if self.source is not None and self.path is not None:
            return f"{self.source} at {self.path}"
        return str(self.source) if self.source else f"{self.spec} (resolved by its framework)"


def add_command(stub: str) -> str:
    """The exact command that registers a local copy of ``stub``."""
    return f"sparsify.zoo add {stub} /path/to/model-folder-or-checkpoint"


def _not_found(spec: str, attempts: list[Attempt], hint: str) -> ModelNotFoundError:
    listing = "\n  - ".join(str(a) for a in attempts)
    error = ModelNotFoundError(f"Model {spec} was not found. Sources tried, in order:\n  - "
                               f"{listing}", hint=hint)
    error.attempts = attempts  # for callers that show the attempts their own way
    return error


def _try_source(source: Source, attempts: list[Attempt], *, download: bool, progress: bool,
                trust_remote_code: bool) -> Path | None:
    label = str(source)
    path = cached_path(source)
    if path is not None:
        attempts.append(Attempt(label, True, f"cached at {path}"))
        logger.info("Model source %s: cached at %s", label, path)
        return path
    if not download:
        attempts.append(Attempt(label, False, "not cached (not downloading)"))
        logger.info("Model source %s: not cached", label)
        return None
    try:
        path = fetch(source, progress=progress, trust_remote_code=trust_remote_code)
    except ModelNotFoundError as exc:
        attempts.append(Attempt(label, False, exc.message))
        logger.info("Model source %s: %s", label, exc.message)
        return None
    attempts.append(Attempt(label, True, f"downloaded to {path}"))
    logger.info("Model source %s: downloaded to %s", label, path)
    return path


def _try_sources(spec: str, entries: list[CatalogEntry], attempts: list[Attempt], *,
                 download: bool, progress: bool, trust_remote_code: bool) -> ResolvedModel | None:
    for entry in entries:
        for source in entry.sources:
            path = _try_source(source, attempts, download=download, progress=progress,
                               trust_remote_code=trust_remote_code)
            if path is not None:
                return ResolvedModel(spec, path, source.type, entry, source, attempts)
    return None


def resolve_model(spec: str, *, download: bool = True, progress: bool = True,
                  trust_remote_code: bool = False) -> ResolvedModel:
    """Find ``spec`` locally or (``download=True``) fetch it from the catalog's remote sources.

    Args:
        spec: a local path, a ``zoo:`` stub, a Hugging Face Hub id, or a torchvision /
            Ultralytics weight name.
        download: allow downloads (a Hub source still only reads its cache when
            ``HF_HUB_OFFLINE`` is set).
        progress: show download progress bars.
        trust_remote_code: also fetch a Hub repo's ``*.py`` files (never executed here).

    Returns:
        The resolved model; ``origin == "framework"`` (and ``path is None``) for a model name
        the catalog does not know, which its framework resolves itself.

    Raises:
        StubError: a malformed or unsafe stub.
        ModelNotFoundError: nothing provided the model; the message lists every source tried
            and why it failed, the hint the command that registers a local copy.
    """
    spec = spec.strip()
    path = Path(spec).expanduser()
    if not is_stub(spec) and path.exists():
        logger.info("Model %s: local path", spec)
        return ResolvedModel(spec, path, "path", attempts=[Attempt("local path", True, str(path))])
    if is_stub(spec):
        return _resolve_stub(spec, download=download, progress=progress,
                             trust_remote_code=trust_remote_code)
    if looks_like_path(spec):
        raise ModelNotFoundError(
            f"Model path '{spec}' does not exist.",
            hint="Give an existing checkpoint file or model folder, a zoo: stub, or a "
                 "model name (resnet50, org/model on the Hugging Face Hub).")
    attempts = [Attempt("local path", False, f"no file or folder '{spec}'")]
    if is_hub_id(spec):
        entries = find_entries_by_source("hf", spec)
        source = next((s for e in entries for s in e.sources if s.name.lower() == spec.lower()),
                      Source("hf", spec))
        found = _try_source(source, attempts, download=download, progress=progress,
                            trust_remote_code=trust_remote_code)
        if found is not None:
            return ResolvedModel(spec, found, "hf", entries[0] if entries else None, source,
                                 attempts)
        raise _not_found(spec, attempts, hint=(
            f"Online, check the repo id; offline, put the model in the Hugging Face cache "
            f"({hf_cache_dir()}) or pass a local folder with --model."))
    kind = "ultralytics" if ULTRALYTICS_NAME.match(spec) else "torchvision"
    entries = find_entries_by_source(kind, spec)
    if not entries:  # a name the catalog does not know: its framework resolves it
        attempts.append(Attempt("catalog", False, f"'{spec}' is not a catalog source; left to "
                                "its framework"))
        return ResolvedModel(spec, None, "framework", attempts=attempts)
    resolved = _try_sources(spec, entries, attempts, download=download, progress=progress,
                            trust_remote_code=trust_remote_code)
    if resolved is not None:
        return resolved
    if not download:
        return ResolvedModel(spec, None, "framework", entries[0], entries[0].sources[0], attempts)
    raise _not_found(spec, attempts, hint=(
        "Online, run again; offline, pass a local checkpoint with --model or register one "
        "with `sparsify.zoo add STUB PATH`."))


def check_available(spec: str) -> None:
    """Fail fast, before any data is read: ``spec`` (a ``--model`` or ``--teacher``) is a path
    that exists, a stub this machine has or a remote source can provide, or a name a download
    may provide (Hub ids, framework names: left to the load). No network.

    Raises:
        StubError: a malformed or unsafe stub.
        ModelNotFoundError: a missing path, or a stub nothing can provide (every source tried
            listed, as :func:`resolve_model` says it).
    """
    try:
        resolve_model(spec, download=False, progress=False)
    except ModelNotFoundError:
        if not is_stub(spec):
            if looks_like_path(spec.strip()):
                raise
            return  # a Hub id not in the cache: the load downloads it when online
        entries = find_entries_by_stub(parse_stub(spec).without_query)
        if not any(e.sources for e in entries):
            raise


def _resolve_stub(spec: str, *, download: bool, progress: bool,
                  trust_remote_code: bool) -> ResolvedModel:
    stub = parse_stub(spec)
    entries = find_entries_by_stub(stub.without_query)
    entry = entries[0] if entries else None
    attempts: list[Attempt] = []

    local = find_in_local_zoo(stub)
    roots = ", ".join(str(r) for r in zoo_roots())
    if local:
        attempts.append(Attempt("local zoo", True, str(local)))
        logger.info("Model %s: local zoo %s", stub.without_query, local)
        return ResolvedModel(spec, local, "local zoo", entry, attempts=attempts)
    attempts.append(Attempt(f"local zoo ({roots})", False,
                            f"no model folder {stub.folder_name} (training/, deployment/ "
                            "or model.onnx)"))
    logger.info("Model %s: not in the local zoo (%s)", stub.without_query, roots)

    cache = sparsezoo_root()
    found = find_in_sparsezoo_cache(stub) if cache.is_dir() else None
    if found:
        attempts.append(Attempt("SparseZoo cache", True, str(found)))
        logger.info("Model %s: SparseZoo cache %s", stub.without_query, found)
        return ResolvedModel(spec, found, "SparseZoo cache", entry, attempts=attempts)
    attempts.append(Attempt(f"SparseZoo cache ({cache})", False,
                            "no model folder records this stub" if cache.is_dir()
                            else "folder does not exist"))
    logger.info("Model %s: not in the SparseZoo cache (%s)", stub.without_query, cache)

    if not entries:
        attempts.append(Attempt("catalog", False, "stub not in the catalog, so no remote source "
                                "(`sparsify.zoo list` shows the catalog)"))
    elif not any(e.sources for e in entries):
        attempts.append(Attempt("catalog", False, "no remote source: the checkpoint was only on "
                                "SparseZoo's servers, which are gone"))
    resolved = _try_sources(spec, entries, attempts, download=download, progress=progress,
                            trust_remote_code=trust_remote_code)
    if resolved is not None:
        return resolved
    folder = zoo_roots()[0] / stub.folder_name
    raise _not_found(stub.without_query, attempts, hint=(
        f"If you have this model, register it: {add_command(stub.without_query)} "
        f"(it is copied to {folder}/ in the SparseZoo layout), or pass the checkpoint with "
        "--model."))


def local_status(entry: CatalogEntry, sparsezoo_index: dict[str, Path] | None = None
                 ) -> tuple[str | None, Path | None]:
    """Whether ``entry`` is on this machine now: (``zoo`` | ``sparsezoo`` | ``cached`` | ``None``,
    its path). ``sparsezoo_index`` lets a caller scan the SparseZoo cache once for many entries."""
    stub = parse_stub(entry.stub)
    local = find_in_local_zoo(stub)
    if local:
        return "zoo", local
    found = find_in_sparsezoo_cache(stub, sparsezoo_index)
    if found:
        return "sparsezoo", found
    for source in entry.sources:
        path = cached_path(source)
        if path is not None:
            return "cached", path
    return None, None


def locate_local(spec: str) -> ResolvedModel | None:
    """Where ``spec`` is on this machine right now (no network, never raises for a missing
    model); ``None`` when it is not here. A malformed stub still raises ``StubError``."""
    try:
        resolved = resolve_model(spec, download=False, progress=False)
    except ModelNotFoundError:
        return None
    return resolved if resolved.path is not None else None


def resolve_model_path(spec: str, *, trust_remote_code: bool = False) -> Path | None:
    """A local file/folder for ``spec``; ``None`` when ``spec`` is a model name (not a path or
    stub) that a framework resolves itself.

    - a path: the path;
    - a stub: its local zoo / SparseZoo cache folder, a Hub snapshot folder, or an Ultralytics
      weight file (downloaded when needed); ``None`` when its source is a torchvision weight
      (placed in torch hub's cache, where torchvision's builder finds it);
    - a Hub id: the snapshot folder in the Hugging Face cache (downloaded when online);
      ``None`` when offline and not cached, so that the framework reports it its own way;
    - a torchvision / Ultralytics name: ``None`` (an Ultralytics file already cached: its path).

    ``trust_remote_code`` also fetches a Hub repo's ``*.py`` files (for a loader that will run
    them because the user asked it to).

    Raises:
        StubError: a malformed or unsafe stub.
        ModelNotFoundError: a missing local path, or a stub / Hub id found nowhere (every source
            tried is listed).
    """
    spec = spec.strip()
    if not is_stub(spec) and not looks_like_path(spec) and not Path(spec).expanduser().exists():
        if is_hub_id(spec):
            if hf_offline() and locate_local(spec) is None:
                logger.info("Model %s: offline and not in the Hugging Face cache; left to the "
                            "framework", spec)
                return None
            return resolve_model(spec, trust_remote_code=trust_remote_code).path
        local = locate_local(spec)
        return local.path if local is not None and local.origin == "ultralytics" else None
    resolved = resolve_model(spec, trust_remote_code=trust_remote_code)
    if resolved.origin not in LOADABLE_ORIGINS:
        return None
    return resolved.path
