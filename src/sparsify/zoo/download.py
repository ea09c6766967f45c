"""Downloads that never leave a half file behind, and archive extraction that stays inside its
folder.

A download streams into a temporary name next to its destination, is checked (the byte count the
server announced, the expected size, the SHA-256 or its prefix when the source gives one) and only
then renamed into place. An interrupted or corrupt download is deleted, so a file found at the
final name is always a complete, verified one. ``urllib`` is used so that ``file://`` URLs work
the same way (the tests rely on that); ``tqdm`` draws the progress bar when it is installed.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from sparsify.errors import ModelNotFoundError

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


class DownloadError(ModelNotFoundError):
    """A download failed or did not verify (the partial file is already removed)."""


def _progress(total: int | None, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is in the train extra; without it, no bar
        return None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                file=sys.stderr, leave=False)


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
        DownloadError: network or file error, a short read, or a size / hash mismatch.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    received = 0
    bar = None
    try:
        with os.fdopen(fd, "wb") as out:
            request = urllib.request.Request(url, headers={"User-Agent": "sparsify-transfer"})
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                announced = response.headers.get("Content-Length")
                announced = int(announced) if announced and announced.isdigit() else None
                bar = _progress(announced or size, dest.name, progress)
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        if announced is not None and received != announced:
            raise DownloadError(f"Download of {url} was cut short: {received} of {announced} "
                                "bytes received.", hint="Run the command again.")
        if size is not None and received != size:
            raise DownloadError(f"Download of {url} has {received} bytes, expected {size}.",
                                hint="The remote file changed or is corrupt; nothing was kept.")
        if sha256 and not digest.hexdigest().startswith(sha256.lower()):
            raise DownloadError(
                f"Download of {url} does not match its SHA-256: got {digest.hexdigest()[:16]}..., "
                f"expected {sha256[:16]}...",
                hint="The remote file changed or is corrupt; nothing was kept.")
        os.replace(tmp, dest)
        logger.info("Downloaded %s -> %s (%d bytes, sha256 %s)", url, dest, received,
                    digest.hexdigest()[:12])
        return dest
    except DownloadError:
        raise
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DownloadError(f"Download of {url} failed: {reason}",
                            hint="Check the network (or go offline and register the model "
                                 "with sparsify.zoo add).") from None
    finally:
        if bar is not None:
            bar.close()
        tmp.unlink(missing_ok=True)


def sha256_prefix_from_name(name: str) -> str | None:
    """The hash prefix in a torch hub file name (``resnet50-11ad3fa6.pth`` -> ``11ad3fa6``)."""
    stem = name.split(".", 1)[0]
    _, sep, tail = stem.rpartition("-")
    if sep and len(tail) >= 8 and all(c in "0123456789abcdef" for c in tail):
        return tail
    return None


def _safe_member_name(name: str) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise ModelNotFoundError(f"Archive member '{name}' would be written outside the "
                                 "extraction folder; refusing the archive.")
    return path


def extract_archive(archive: Path, dest: Path) -> Path:
    """Extract a ``.tar[.gz]`` / ``.tgz`` / ``.zip`` into ``dest`` safely.

    Every member must be a plain file or folder with a relative name inside ``dest`` (no
    absolute paths, no ``..``, no links, no devices). Extraction goes into a temporary folder
    that is renamed to ``dest`` when complete.

    Raises:
        ModelNotFoundError: an unsafe member, an unknown format or a corrupt archive.
    """
    archive, dest = Path(archive), Path(dest)
    if dest.exists():
        raise ModelNotFoundError(f"{dest} already exists; not extracting {archive.name} over it.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent))
    try:
        name = archive.name.lower()
        if name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    rel = _safe_member_name(info.filename)
                    mode = (info.external_attr >> 16) & 0o170000
                    if mode and mode not in (0o100000, 0o040000):
                        raise ModelNotFoundError(f"Archive member '{info.filename}' is not a "
                                                 "plain file; refusing the archive.")
                    target = tmp.joinpath(*rel.parts)
                    if info.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out, _CHUNK)
        elif name.endswith((".tar", ".tar.gz", ".tgz")):
            with tarfile.open(archive) as tf:
                for member in tf.getmembers():
                    rel = _safe_member_name(member.name)
                    if not (member.isfile() or member.isdir()):
                        raise ModelNotFoundError(f"Archive member '{member.name}' is a link or "
                                                 "special file; refusing the archive.")
                    target = tmp.joinpath(*rel.parts)
                    if member.isdir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    src = tf.extractfile(member)
                    assert src is not None  # a regular file always has a stream
                    with src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out, _CHUNK)
        else:
            raise ModelNotFoundError(f"Unknown archive format: {archive.name} "
                                     f"(known: {', '.join(ARCHIVE_SUFFIXES)}).")
        os.replace(tmp, dest)
        return dest
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
        raise ModelNotFoundError(f"Corrupt archive {archive}: {exc}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
