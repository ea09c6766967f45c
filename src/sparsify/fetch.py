"""The one download and archive-extraction layer, used by the model zoo and the named datasets.

A download streams into a temporary name next to its destination, is checked (the byte count the
server announced, the expected size, the SHA-256 or its prefix when the caller knows it), flushed
to disk and only then renamed into place. An interrupted or corrupt download is deleted, so a
file found at the final name is always a complete, verified one.

An extraction goes into a temporary folder next to its destination that is renamed into place
when complete; an archive with an unsafe member leaves nothing behind. Tar archives are
extracted with the standard library's ``filter="data"`` (no absolute or escaping paths, no links
leaving the tree, no device files, sane permissions); member names with ``..`` or an absolute
path are refused outright before that (the filter would silently rewrite them), and links can be
refused altogether. Zip archives get the same name checks.

Callers choose the error class (``error=``): the zoo raises its ``DownloadError`` /
``ModelNotFoundError``, the datasets ``DataError``; the CLI maps both to exit code 1. ``urllib``
is used so that ``file://`` URLs behave like ``https://`` ones (the tests rely on that);
``tqdm`` draws the progress bar when it is installed. Light: no torch.
"""

from __future__ import annotations

import gzip
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
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

from sparsify.errors import SparsifyError

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
ZIP_SUFFIXES = (".zip",)
_DAMAGED_HINT = "Delete the archive and download it again, or extract a trusted copy yourself."
_UNSAFE_HINT = f"The archive is damaged or was tampered with. {_DAMAGED_HINT}"


# --------------------------------------------------------------------------------------------
# Downloads
# --------------------------------------------------------------------------------------------


def _progress_bar(total: int | None, desc: str, progress: bool | None) -> Any:
    if progress is False:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is in the train extra; without it, no bar
        return None
    # progress=None: shown on a terminal only, so that logs in CI stay clean.
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                file=sys.stderr, leave=False, disable=None if progress is None else False)


def _content_length(response: Any) -> int | None:
    headers = getattr(response, "headers", None)
    value = headers.get("Content-Length") if headers is not None else None
    value = str(value).strip() if value is not None else ""
    return int(value) if value.isdigit() else None


def _network_reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    if isinstance(exc, TimeoutError):
        return "the connection timed out"
    return str(exc) or type(exc).__name__


def download_file(url: str, dest: Path | str, *, error: type[SparsifyError], hint: str,
                  what: str | None = None, sha256: str | None = None, size: int | None = None,
                  progress: bool | None = True, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` through a temporary name; verify; rename.

    Args:
        url: ``https://``, ``http://`` or ``file://`` URL.
        dest: final path; its folder is created.
        error: the error class to raise (``DataError``, the zoo's ``DownloadError``...).
        hint: what the user can do instead (offline: where to put the file by hand); attached
            to every error.
        what: what is downloaded, for messages (defaults to ``dest``'s name).
        sha256: expected SHA-256 hex digest, or a prefix of it (torch hub file names carry the
            first 8+ hex digits of their hash).
        size: expected size in bytes.
        progress: True shows a progress bar on stderr, None only on a terminal, False never.
        timeout: socket timeout in seconds.

    Returns:
        ``dest``.

    Raises:
        error: the server cannot be reached or answers with an error; it sends fewer bytes
            than it announced; the size or hash differs; or the file cannot be written. The
            message names the URL and the folder; nothing is left at ``dest`` or beside it.
    """
    dest = Path(dest)
    doing = f"Downloading {what or dest.name} into {dest.parent}"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as exc:
        raise error(f"{doing} failed: the folder cannot be written ({exc.strerror or exc}).",
                    hint=f"Check that the folder is writable. {hint}") from None
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    received = 0
    bar = None
    try:
        with os.fdopen(fd, "wb") as out:
            request = urllib.request.Request(url, headers={"User-Agent": "sparsify-transfer"})
            with urllib.request.urlopen(request, timeout=timeout) as response:
                announced = _content_length(response)
                bar = _progress_bar(announced or size, dest.name, progress)
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        if announced is not None and received != announced:
            raise error(f"{doing} failed: the download from {url} was cut short (incomplete: "
                        f"{received} of {announced} bytes).",
                        hint=f"Try again (the connection may have dropped). {hint}")
        if size is not None and received != size:
            raise error(f"{doing} failed: {url} sent {received} bytes, expected {size}.",
                        hint=f"The remote file changed or is corrupt; nothing was kept. {hint}")
        if sha256 and not digest.hexdigest().startswith(sha256.lower()):
            raise error(f"{doing} failed: the file from {url} does not match its SHA-256 (got "
                        f"{digest.hexdigest()[:16]}..., expected {sha256[:16]}...).",
                        hint=f"The remote file changed or is corrupt; nothing was kept. {hint}")
        os.replace(tmp, dest)
        logger.info("Downloaded %s -> %s (%d bytes, sha256 %s)", url, dest, received,
                    digest.hexdigest()[:12])
        return dest
    except error:
        raise
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        raise error(f"{doing} failed: could not fetch {url} ({_network_reason(exc)}).",
                    hint=f"Check your internet connection. {hint}") from exc
    finally:
        if bar is not None:
            bar.close()
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------


def _name_problem(name: str) -> str | None:
    """Why a member name is refused (absolute, a drive, ``..``), or None."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute():
        return "has an absolute path (it would be written outside the extraction folder)"
    if path.parts and ":" in path.parts[0]:
        return "has a drive letter, an absolute path (outside the extraction folder)"
    if ".." in path.parts:
        return "contains '..' (it could be written outside the extraction folder)"
    return None


def _filter_reason(exc: tarfile.FilterError) -> str:
    """Our wording of what tarfile's ``data`` filter refused."""
    link = f" ('{exc.tarinfo.linkname}')" if exc.tarinfo.linkname else ""
    if isinstance(exc, tarfile.AbsoluteLinkError):
        return f"is a link to an absolute path{link}"
    if isinstance(exc, tarfile.LinkOutsideDestinationError):
        return f"is a link pointing outside the destination folder{link}"
    if isinstance(exc, tarfile.SpecialFileError):
        return "is a special file (a device file or FIFO)"
    if isinstance(exc, tarfile.AbsolutePathError):
        return "has an absolute path"
    if isinstance(exc, tarfile.OutsideDestinationError):
        return "would be written outside the extraction folder"
    return f"is refused by tarfile's data filter ({exc})"


def _refuse(error: type[SparsifyError], archive: Path, name: str, reason: str) -> SparsifyError:
    return error(f"Archive '{archive}' is unsafe: member '{name}' {reason}; refusing the "
                 "archive.", hint=_UNSAFE_HINT)


def _extract_tar(archive: Path, into: Path, error: type[SparsifyError], allow_links: bool) -> None:
    with tarfile.open(archive, "r:*") as tf:
        members = tf.getmembers()
        for member in members:  # refused before anything is written
            reason = _name_problem(member.name)
            if reason is None and not allow_links and not (member.isfile() or member.isdir()):
                reason = "is a link or special file (this archive may hold only files and folders)"
            if reason is not None:
                raise _refuse(error, archive, member.name, reason)
        try:
            tf.extractall(into, members=members, filter="data")
        except tarfile.FilterError as exc:
            raise _refuse(error, archive, exc.tarinfo.name, _filter_reason(exc)) from None


def _extract_zip(archive: Path, into: Path, error: type[SparsifyError]) -> None:
    # Our own loop: zipfile has no refusing filter (extract() silently rewrites '..' and
    # absolute names), and a link stored in a zip would come out as a file holding its target.
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            reason = _name_problem(info.filename)
            mode = (info.external_attr >> 16) & 0o170000
            if reason is None and mode and mode not in (0o100000, 0o040000):
                reason = "is not a plain file or folder (a link or special file)"
            if reason is not None:
                raise _refuse(error, archive, info.filename, reason)
        for info in infos:
            target = into.joinpath(*PurePosixPath(info.filename.replace("\\", "/")).parts)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, _CHUNK)


def extract_archive(archive: Path | str, dest: Path | str, *, error: type[SparsifyError],
                    allow_links: bool = False) -> Path:
    """Extract a tar (``.tar``, ``.tar.gz``/``.tgz``, ``.tar.bz2``, ``.tar.xz``) or ``.zip``
    archive into the new folder ``dest``, safely.

    Members with an absolute path, a drive letter or a ``..`` component are refused, as are
    (tar) links leaving the tree, device files and FIFOs (``filter="data"``). With
    ``allow_links=False`` any link is refused. Extraction goes into a temporary folder beside
    ``dest`` that is renamed to ``dest`` when complete: a refused or broken archive leaves
    nothing.

    Args:
        archive: the archive file; its format is taken from its name.
        dest: the folder to create (it must not exist).
        error: the error class to raise.
        allow_links: accept symbolic and hard links that stay inside the tree.

    Returns:
        ``dest``.

    Raises:
        error: ``dest`` exists; an unknown format; an unsafe member (named, with the reason);
            a damaged archive; or a write failure.
    """
    archive, dest = Path(archive), Path(dest)
    name = archive.name.lower()
    if not name.endswith(TAR_SUFFIXES + ZIP_SUFFIXES):
        raise error(f"Unknown archive format: {archive.name} (known: "
                    f"{', '.join(TAR_SUFFIXES + ZIP_SUFFIXES)}).")
    if dest.exists():
        raise error(f"{dest} already exists; not extracting {archive.name} over it.",
                    hint=f"Delete '{dest}' if it is left from an earlier attempt.")
    tmp: Path | None = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent))
        if name.endswith(ZIP_SUFFIXES):
            _extract_zip(archive, tmp, error)
        else:
            _extract_tar(archive, tmp, error, allow_links)
        os.replace(tmp, dest)
        tmp = None
        return dest
    except error:
        raise
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        kind = "zip" if name.endswith(ZIP_SUFFIXES) else "tar"
        raise error(f"Cannot extract '{archive}': the archive is damaged or not a {kind} file "
                    f"({exc}).", hint=_DAMAGED_HINT) from None
    except OSError as exc:
        raise error(f"Cannot extract '{archive}' into '{dest}': {exc.strerror or exc}.",
                    hint="Check the free disk space and that the folder is writable.") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
