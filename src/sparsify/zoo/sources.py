"""Remote sources of the catalog: where each caches its files, and how to fetch one.

Light at import (the standard library only): ``cached_path`` looks at the caches the way each
library lays them out, without importing the library, so ``sparsify.zoo list`` and
``--dry-run`` can say what is available offline. ``fetch`` imports ``huggingface_hub`` or
downloads when it runs.

Caches (each library's own, so that a later ``from_pretrained`` / torchvision builder / YOLO
finds the same files):

- ``hf``: the Hugging Face hub cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
  ``~/.cache/huggingface/hub``), through ``huggingface_hub.snapshot_download``; with
  ``HF_HUB_OFFLINE=1`` only the cache is read.
- ``torchvision``: torch hub's checkpoint folder (``TORCH_HOME/hub/checkpoints``, else
  ``~/.cache/torch/hub/checkpoints``), under torchvision's file name.
- ``ultralytics``: ``<sparsify cache>/weights/ultralytics/`` (Ultralytics' own weights folder is
  checked too when its settings file names an absolute one).
- ``url``: ``<sparsify cache>/downloads/`` (archives are extracted next to it).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from sparsify.errors import ModelNotFoundError, UsageError
from sparsify.zoo.catalog import Source

logger = logging.getLogger(__name__)

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}$")
_WEIGHT_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
ULTRALYTICS_NAME = re.compile(r"^yolo[A-Za-z0-9_.\-]*\.pt$", re.IGNORECASE)
# Weights in other frameworks' formats: never needed by a PyTorch run, often large.
HF_IGNORE = ["*.h5", "*.msgpack", "*.ot", "tf_model*", "flax_model*", "rust_model*", "*.tflite",
             "coreml/*", "onnx/*"]
HF_CODE = ["*.py"]


def is_hub_id(text: str) -> bool:
    """Whether ``text`` is a well-formed ``org/name`` Hugging Face Hub repo id."""
    return bool(HUB_ID.match(text)) and ".." not in text and not text.endswith((".", "-"))


def check_name(source: Source) -> None:
    """Refuse source names that could become paths outside a cache.

    Raises:
        UsageError: a Hub id that is not ``org/name``, or a file name with a path in it.
    """
    if source.type == "hf":
        if not is_hub_id(source.name):
            raise UsageError(f"'{source.name}' is not a Hugging Face Hub repo id (org/name, "
                             "letters, digits, '_', '.', '-').")
        return
    for name in (source.name, source.file):
        if name and (not _WEIGHT_FILE.match(name) or ".." in name):
            raise UsageError(f"Weight file name '{name}' must be a plain file name (no '/', "
                             "'\\' or '..').")


def sparsify_cache() -> Path:
    """``$XDG_CACHE_HOME/sparsify`` or ``~/.cache/sparsify``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sparsify"


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache folder, read from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "huggingface" / "hub"


def hf_offline() -> bool:
    """``HF_HUB_OFFLINE`` set to a true value."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def torch_checkpoints_dir() -> Path:
    """torch hub's checkpoint folder (what ``torch.hub.get_dir()`` uses by default)."""
    home = os.environ.get("TORCH_HOME")
    if not home:
        home = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "torch")
    return Path(home).expanduser() / "hub" / "checkpoints"


def ultralytics_dirs() -> list[Path]:
    """Folders where a YOLO weight file may already be: ours, then Ultralytics' weights folder
    when its settings file names an absolute one."""
    dirs = [sparsify_cache() / "weights" / "ultralytics"]
    config = os.environ.get("YOLO_CONFIG_DIR") or str(Path.home() / ".config" / "Ultralytics")
    try:
        settings = json.loads((Path(config) / "settings.json").read_text("utf-8"))
        weights = Path(str(settings.get("weights_dir", "")))
        if weights.is_absolute():
            dirs.append(weights)
    except (OSError, ValueError):
        pass
    return dirs


def hf_cached_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The snapshot folder of ``repo_id`` in the hub cache, or ``None`` (no network).

    Hand-written on purpose: ``--dry-run`` and ``sparsify.zoo list`` call it, and importing
    ``huggingface_hub`` for ``try_to_load_from_cache`` (which also needs a file name, where a
    whole snapshot folder is wanted here) would add 0.25 s to commands that take 0.1-0.2 s.
    The layout read is the hub cache's documented one (``refs/<revision>`` -> commit ->
    ``snapshots/<commit>``); downloads go through ``huggingface_hub`` itself."""
    if not is_hub_id(repo_id):
        return None
    repo = hf_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    revision = revision or "main"
    commit = revision
    ref = repo / "refs" / revision
    if ref.is_file():
        commit = ref.read_text("utf-8").strip()
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        return None
    snapshot = repo / "snapshots" / commit
    return snapshot if snapshot.is_dir() and any(snapshot.iterdir()) else None


def _url_target(source: Source) -> Path:
    return sparsify_cache() / "downloads" / (source.file or source.name)


def _extracted_dir(archive: Path) -> Path:
    name = archive.name
    for suffix in (".tar.gz", ".tgz", ".tar", ".zip"):
        if name.lower().endswith(suffix):
            return archive.with_name(name[: -len(suffix)])
    return archive


def cached_path(source: Source) -> Path | None:
    """Where ``source`` already is on this machine, or ``None``. Never touches the network."""
    check_name(source)
    if source.type == "hf":
        return hf_cached_snapshot(source.name, source.revision)
    if source.type == "torchvision":
        if not source.file:
            return None
        path = torch_checkpoints_dir() / source.file
        return path if path.is_file() else None
    if source.type == "ultralytics":
        for folder in ultralytics_dirs():
            if (folder / source.name).is_file():
                return folder / source.name
        return None
    if source.type == "url":
        target = _url_target(source)
        extracted = _extracted_dir(target)
        if extracted != target and extracted.is_dir():
            return extracted
        return target if target.is_file() else None
    return None


def fetch(source: Source, *, progress: bool = True, trust_remote_code: bool = False) -> Path:
    """Get ``source`` into its cache (downloading when needed) and return its local path.

    Args:
        source: a catalog source.
        progress: show progress bars.
        trust_remote_code: also download a Hub repo's ``*.py`` files (custom model code).
            They are never executed here; without this flag they are not even fetched.

    Raises:
        ModelNotFoundError: offline and not cached, unknown repo, failed or unverifiable
            download, or a missing library.
    """
    cached = cached_path(source)
    if cached is not None:
        return cached
    if source.type == "hf":
        return _fetch_hf(source, progress=progress, trust_remote_code=trust_remote_code)
    if source.type in ("torchvision", "ultralytics", "url"):
        from sparsify.zoo.download import download_file, extract_archive, sha256_prefix_from_name

        if not source.url:
            raise ModelNotFoundError(f"{source} has no URL in the catalog.")
        if source.type == "torchvision":
            target = torch_checkpoints_dir() / (source.file or Path(source.url).name)
            sha = source.sha256 or sha256_prefix_from_name(target.name)
        elif source.type == "ultralytics":
            target = ultralytics_dirs()[0] / source.name
            sha = source.sha256
        else:
            target = _url_target(source)
            sha = source.sha256
        download_file(source.url, target, sha256=sha, size=source.size, progress=progress)
        extracted = _extracted_dir(target)
        if source.type == "url" and extracted != target:
            return extract_archive(target, extracted)
        return target
    raise ModelNotFoundError(f"Unknown source type '{source.type}'.")


def _fetch_hf(source: Source, *, progress: bool, trust_remote_code: bool) -> Path:
    # huggingface_hub draws its own progress bars (HF_HUB_DISABLE_PROGRESS_BARS turns them off)
    del progress
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError,
        )
    except ImportError:
        from sparsify.errors import MissingExtraError

        raise MissingExtraError("huggingface_hub", "train", "Downloading from the Hub") from None
    offline = hf_offline()
    ignore = HF_IGNORE + ([] if trust_remote_code else HF_CODE)
    try:
        folder = snapshot_download(
            source.name, revision=source.revision, cache_dir=hf_cache_dir(),
            local_files_only=offline, ignore_patterns=ignore)
    except GatedRepoError:
        raise ModelNotFoundError(f"Hub repo {source.name} is gated: it needs a token.",
                                 hint="Log in with `hf auth login` and accept its terms.") from None
    except RepositoryNotFoundError:
        raise ModelNotFoundError(f"Hub repo {source.name} does not exist (or is private).") \
            from None
    except RevisionNotFoundError:
        raise ModelNotFoundError(f"Hub repo {source.name} has no revision "
                                 f"{source.revision or 'main'}.") from None
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if offline else "the Hub cannot be reached"
        raise ModelNotFoundError(f"{source.name} is not in the Hugging Face cache "
                                 f"({hf_cache_dir()}) and {why}.") from None
    except OSError as exc:  # network errors surface as OSError subclasses
        raise ModelNotFoundError(f"Download of {source.name} from the Hub failed: {exc}") \
            from None
    return Path(folder)
