"""The zoo's downloads and archive extraction: :mod:`sparsify.fetch` with the zoo's error types.

A download goes through a temporary name, is checked (announced length, size, SHA-256 or its
prefix) and renamed into place; an extraction refuses unsafe members, links included (a model
archive holds only files and folders). See :mod:`sparsify.fetch`.
"""

from __future__ import annotations

from pathlib import Path

from sparsify import fetch
from sparsify.errors import ModelNotFoundError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
_OFFLINE_HINT = ("Offline: download the file on another machine and register it with "
                 "`sparsify.zoo add STUB PATH`.")


class DownloadError(ModelNotFoundError):
    """A download failed or did not verify (the partial file is already removed)."""


def download_file(url: str, dest: Path, *, sha256: str | None = None, size: int | None = None,
                  progress: bool = True, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` through a temporary name; verify; rename.

    Args:
        url: ``https://``, ``http://`` or ``file://`` URL.
        dest: final path; its folder is created.
        sha256: expected SHA-256 hex digest, or a prefix of it (torch hub file names carry the
            first 8+ hex digits of their hash).
        size: expected size in bytes.
        progress: show a progress bar on stderr.
        timeout: socket timeout in seconds.

    Returns:
        ``dest``.

    Raises:
        DownloadError: network or file error, a short read, or a size / hash mismatch; the
            message names the URL, the hint says what to do offline.
    """
    return fetch.download_file(url, dest, error=DownloadError, hint=_OFFLINE_HINT,
                               sha256=sha256, size=size, progress=progress, timeout=timeout)


def sha256_prefix_from_name(name: str) -> str | None:
    """The hash prefix in a torch hub file name (``resnet50-11ad3fa6.pth`` -> ``11ad3fa6``)."""
    stem = name.split(".", 1)[0]
    _, sep, tail = stem.rpartition("-")
    if sep and len(tail) >= 8 and all(c in "0123456789abcdef" for c in tail):
        return tail
    return None


def extract_archive(archive: Path, dest: Path) -> Path:
    """Extract a ``.tar[.gz]`` / ``.tgz`` / ``.zip`` into the new folder ``dest`` safely.

    Every member must be a plain file or folder with a relative name inside ``dest`` (no
    absolute paths, no ``..``, no links, no devices). Extraction goes into a temporary folder
    that is renamed to ``dest`` when complete.

    Raises:
        ModelNotFoundError: an unsafe member, an unknown format or a corrupt archive.
    """
    if not Path(archive).name.lower().endswith(ARCHIVE_SUFFIXES):
        raise ModelNotFoundError(f"Unknown archive format: {Path(archive).name} "
                                 f"(known: {', '.join(ARCHIVE_SUFFIXES)}).")
    return fetch.extract_archive(archive, dest, error=ModelNotFoundError, allow_links=False)
