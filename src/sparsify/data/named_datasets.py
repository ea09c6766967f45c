"""Named image datasets (``imagenette``, ``imagenette-160``, ``imagenette-320``): downloaded once
into a cache folder and reused afterwards.

The download and the extraction go through :mod:`sparsify.fetch` (temporary name, length check,
rename; safe extraction with tarfile's ``data`` filter). ``torchvision.datasets.Imagenette``
fetches the same archives but does not fit, so it is not used: it writes the download straight to
its final name (an interrupted download leaves a half archive), retries a failed ``https`` URL
over plain ``http``, extracts without a filter, downloads over an archive put in the cache by
hand unless its MD5 is the one it pins, and fails offline with urllib's bare error instead of
saying where to put the files.

Light: no torch.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from sparsify.errors import DataError
from sparsify.fetch import download_file, extract_archive

logger = logging.getLogger(__name__)

DATA_CACHE_ENV = "SPARSIFY_DATA_CACHE"
_FASTAI_IMAGECLAS_URL = "https://s3.amazonaws.com/fast-ai-imageclas/"
# Dataset name -> archive stem on fastai's bucket (the archive holds a folder of the same name).
NAMED_IMAGE_DATASETS: dict[str, str] = {
    "imagenette": "imagenette2",
    "imagenette-160": "imagenette2-160",
    "imagenette-320": "imagenette2-320",
}
_TRAIN_DIR_NAME = "train"


def default_data_cache_dir(cache_dir: Path | str | None = None) -> Path:
    """``cache_dir``, else ``$SPARSIFY_DATA_CACHE``, else ``~/.cache/sparsify/datasets``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(DATA_CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "sparsify" / "datasets"


def _named_dataset_key(name: str) -> str | None:
    key = re.sub(r"[\s_]+", "-", name.strip().lower())
    key = re.sub(r"^imagenette2\b", "imagenette", key)
    return key if key in NAMED_IMAGE_DATASETS else None


def resolve_named_image_dataset(name: str, cache_dir: Path | str | None = None) -> Path | None:
    """The local folder of a named dataset, downloading and extracting it on first use.

    Known names (case-insensitive): ``imagenette``, ``imagenette-160``, ``imagenette-320``
    (fastai's Imagenette: 10 ImageNet classes named by WordNet id, in ``train/`` and ``val/``).
    An archive already in the cache (e.g. downloaded by hand) is extracted without downloading.

    Args:
        name: the dataset name.
        cache_dir: where datasets are kept; defaults to :func:`default_data_cache_dir`.

    Returns:
        The extracted folder (holding ``train/`` and ``val/``), or None when ``name`` is not a
        known dataset name (the caller then treats it as a path).

    Raises:
        DataError: the download or the extraction failed; the message says how to provide the
            data by hand.
    """
    key = _named_dataset_key(name)
    if key is None:
        return None
    stem = NAMED_IMAGE_DATASETS[key]
    cache = default_data_cache_dir(cache_dir)
    target = cache / stem
    if _looks_extracted(target):
        logger.info("Using the cached '%s' dataset at %s", key, target)
        return target

    url = f"{_FASTAI_IMAGECLAS_URL}{stem}.tgz"
    archive = cache / f"{stem}.tgz"
    manual = (
        f"Download {url} yourself and extract it into {cache} (so that {target}/train/ and "
        f"{target}/val/ exist), or put the .tgz file itself at {archive}; or pass a local "
        f"folder instead. Set {DATA_CACHE_ENV} to use another cache folder."
    )
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"Cannot create the dataset cache folder '{cache}': {exc.strerror or exc}.",
            hint=f"Set {DATA_CACHE_ENV} to a writable folder.",
        ) from exc

    downloaded = False
    if not archive.is_file():
        logger.info("Downloading the '%s' dataset from %s into %s", key, url, cache)
        download_file(url, archive, error=DataError, hint=manual,
                      what=f"the '{key}' dataset", progress=None)
        downloaded = True
    logger.info("Extracting %s into %s", archive, target)
    try:
        _extract_into_place(archive, target, hint=manual)
    except DataError:
        if downloaded:
            archive.unlink(missing_ok=True)
        raise
    if downloaded:
        # Keep an archive the user put there; ours is no longer needed once extracted.
        archive.unlink(missing_ok=True)
    return target


def _looks_extracted(folder: Path) -> bool:
    return (folder / _TRAIN_DIR_NAME).is_dir()


def _extract_into_place(archive: Path, target: Path, hint: str) -> None:
    """Extract into a temporary folder beside ``target``, then rename its dataset into place."""
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".extracting",
                                 dir=target.parent))
    try:
        # Links inside the tree are accepted (the data filter still refuses escaping ones).
        tree = extract_archive(archive, work / "tree", error=DataError, allow_links=True)
        entries = [p for p in tree.iterdir() if not p.name.startswith(".")]
        # The archive normally holds one top folder (imagenette2-160/); use it when it does.
        source = entries[0] if len(entries) == 1 and entries[0].is_dir() else tree
        if not _looks_extracted(source):
            raise DataError(
                f"The archive '{archive}' does not hold a train/ folder.",
                hint=f"It is not the expected dataset; delete it. {hint}",
            )
        try:
            os.rename(source, target)
        except OSError:
            if not _looks_extracted(target):  # not a concurrent run that finished first
                raise
    except OSError as exc:
        raise DataError(
            f"Cannot move the extracted dataset into '{target}': {exc.strerror or exc}.",
            hint=f"If '{target}' is left from an earlier attempt, delete it and try again. {hint}",
        ) from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
