"""Downloads (temporary name, verification, rename) and safe archive extraction, all local:
``file://`` URLs and a throw-away HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import io
import re
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from sparsify import fetch
from sparsify.errors import DataError, ModelNotFoundError
from sparsify.zoo.catalog import Source
from sparsify.zoo.download import (
    DownloadError, download_file, extract_archive, sha256_prefix_from_name,
)

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_verifies_and_renames(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    dest = tmp_path / "out" / "model.pth"
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    assert download_file(src.as_uri(), dest, sha256=sha, size=len(PAYLOAD),
                         progress=False) == dest
    assert dest.read_bytes() == PAYLOAD and leftovers(dest.parent) == ["model.pth"]


@pytest.mark.parametrize("kwargs,why", [
    ({"sha256": "0" * 64}, "does not match its SHA-256"),
    ({"sha256": "deadbeef"}, "does not match its SHA-256"),
    ({"size": 10}, "expected 10"),
])
def test_failed_verification_leaves_no_file(tmp_path, kwargs, why):
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    out = tmp_path / "out"
    with pytest.raises(DownloadError, match=why):
        download_file(src.as_uri(), out / "model.pth", progress=False, **kwargs)
    assert leftovers(out) == []


def test_missing_url_is_a_model_not_found_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match="failed"):
        download_file((tmp_path / "nope").as_uri(), tmp_path / "x", progress=False)
    assert leftovers(tmp_path) == []


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's naming
        self.send_response(200)
        if self.path == "/truncated":  # announces more than it sends, then hangs up
            self.send_header("Content-Length", str(len(PAYLOAD) * 2))
            self.end_headers()
            self.wfile.write(PAYLOAD)
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        self.wfile.write(PAYLOAD)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_http_download_and_interrupted_download(server, tmp_path):
    good = download_file(f"{server}/ok", tmp_path / "ok.pt", progress=True)
    assert good.read_bytes() == PAYLOAD
    with pytest.raises(DownloadError, match="cut short|failed"):
        download_file(f"{server}/truncated", tmp_path / "cut" / "model.pt", progress=False)
    assert leftovers(tmp_path / "cut") == []  # no half file that a later run would trust


def test_torchvision_source_goes_to_torch_hub_cache_with_hash_check(tmp_path, monkeypatch):
    from sparsify.zoo.sources import cached_path, fetch

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    prefix = hashlib.sha256(PAYLOAD).hexdigest()[:8]
    (tmp_path / f"resnet50-{prefix}.pth").write_bytes(PAYLOAD)
    good = Source("torchvision", "resnet50", "IMAGENET1K_V2", file=f"resnet50-{prefix}.pth",
                  url=(tmp_path / f"resnet50-{prefix}.pth").as_uri())
    assert cached_path(good) is None
    path = fetch(good, progress=False)
    assert path == tmp_path / "torch" / "hub" / "checkpoints" / f"resnet50-{prefix}.pth"
    assert cached_path(good) == path
    (tmp_path / "resnet18-0badc0de.pth").write_bytes(PAYLOAD)  # name says another hash
    bad = Source("torchvision", "resnet18", "IMAGENET1K_V1", file="resnet18-0badc0de.pth",
                 url=(tmp_path / "resnet18-0badc0de.pth").as_uri())
    with pytest.raises(DownloadError, match="SHA-256"):
        fetch(bad, progress=False)
    assert not (tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-0badc0de.pth").exists()


def test_url_source_archive_is_downloaded_and_extracted(tmp_path, monkeypatch):
    from sparsify.zoo.sources import fetch

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        data = b"weights"
        info = tarfile.TarInfo("training/model.pth")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    source = Source("url", "model.tar.gz", url=archive.as_uri(),
                    sha256=hashlib.sha256(archive.read_bytes()).hexdigest())
    folder = fetch(source, progress=False)
    assert (folder / "training" / "model.pth").read_bytes() == b"weights"


def test_sha256_prefix_from_torch_hub_names():
    assert sha256_prefix_from_name("resnet50-11ad3fa6.pth") == "11ad3fa6"
    assert sha256_prefix_from_name("mobilenet_v2-7ebf99e0.pth") == "7ebf99e0"
    assert sha256_prefix_from_name("yolov8n.pt") is None


def _tar_with(tmp_path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tf:
        ok = tarfile.TarInfo("ok.txt")
        ok.size = 2
        tf.addfile(ok, io.BytesIO(b"ok"))
        tf.addfile(member, io.BytesIO(data) if data else None)
    return archive


@pytest.mark.parametrize("name,kind", [("../escape.txt", "file"), ("/abs.txt", "file"),
                                       ("a/../../escape.txt", "file"), ("link", "symlink"),
                                       ("hard", "hardlink")])
def test_unsafe_tar_members_are_refused(tmp_path, name, kind):
    member = tarfile.TarInfo(name)
    if kind == "symlink":
        member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
    elif kind == "hardlink":
        member.type, member.linkname = tarfile.LNKTYPE, "ok.txt"
    else:
        member.size = 1
    archive = _tar_with(tmp_path, member, b"x" if kind == "file" else b"")
    with pytest.raises(ModelNotFoundError, match="refusing the archive"):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "escape.txt").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_unsafe_zip_member_is_refused_and_safe_zip_extracts(tmp_path):
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("../escape.txt", "x")
    with pytest.raises(ModelNotFoundError, match="outside the extraction folder"):
        extract_archive(bad, tmp_path / "out")
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("training/model.pth", "w")
    assert (extract_archive(good, tmp_path / "out") / "training" / "model.pth").read_text() == "w"


# --- the one I/O module (sparsify.fetch): the same refusals for the zoo and the datasets ------


def _tar_of(path: Path, *members: tuple[str, bytes, str]) -> Path:
    """A tar of (name, data, link target or '' for a file; 'HARD:x' for a hard link)."""
    with tarfile.open(path, "w:gz") as tf:
        for name, data, link in members:
            info = tarfile.TarInfo(name)
            if link.startswith("HARD:"):
                info.type, info.linkname = tarfile.LNKTYPE, link[5:]
                tf.addfile(info)
            elif link:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("error", [DataError, ModelNotFoundError])
@pytest.mark.parametrize("allow_links", [True, False])
@pytest.mark.parametrize("member,reason", [
    (("../up.txt", b"x", ""), "contains '..'"),
    (("d/../../up.txt", b"x", ""), "contains '..'"),
    (("/abs.txt", b"x", ""), "absolute path"),
    (("d/sym", b"", "../../outside"), "outside the destination|link or special file"),
    (("d/abs-sym", b"", "/etc/passwd"), "absolute path|link or special file"),
    (("d/hard", b"", "HARD:../outside"), "outside the destination|link or special file"),
])
def test_fetch_extraction_refuses_escaping_members(tmp_path, error, allow_links, member, reason):
    archive = _tar_of(tmp_path / "a.tgz", ("d/ok.txt", b"ok", ""), member)
    dest = tmp_path / "out"
    with pytest.raises(error) as exc_info:
        fetch.extract_archive(archive, dest, error=error, allow_links=allow_links)
    msg = exc_info.value.message
    assert member[0] in msg and str(archive) in msg and "refusing the archive" in msg
    assert re.search(reason, msg)
    assert not dest.exists() and not (tmp_path / "up.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tgz"]  # no temporary folder left


def test_fetch_extraction_links_inside_the_tree_follow_the_policy(tmp_path):
    archive = _tar_of(tmp_path / "a.tgz", ("d/ok.txt", b"ok", ""), ("d/sym", b"", "ok.txt"),
                      ("d/hard", b"", "HARD:d/ok.txt"))
    out = fetch.extract_archive(archive, tmp_path / "out", error=DataError, allow_links=True)
    assert (out / "d" / "sym").read_bytes() == (out / "d" / "hard").read_bytes() == b"ok"
    with pytest.raises(DataError, match="'d/sym' is a link or special file"):
        fetch.extract_archive(archive, tmp_path / "strict", error=DataError, allow_links=False)
    with pytest.raises(DataError, match="already exists"):
        fetch.extract_archive(archive, out, error=DataError, allow_links=True)


@pytest.mark.parametrize("name", ["../up.txt", "/abs.txt", "C:/win.txt", "a/../../up.txt"])
def test_fetch_zip_refuses_escaping_names(tmp_path, name):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.txt", "ok")
        zf.writestr(name, "x")
    with pytest.raises(DataError, match="refusing the archive"):
        fetch.extract_archive(archive, tmp_path / "out", error=DataError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip"]


def test_fetch_zip_refuses_a_symlink_member(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(DataError, match="'link' is not a plain file"):
        fetch.extract_archive(archive, tmp_path / "out", error=DataError, allow_links=True)


def test_fetch_download_error_names_the_url_and_the_offline_way(tmp_path):
    url = (tmp_path / "missing.tgz").as_uri()
    with pytest.raises(DataError) as exc_info:
        fetch.download_file(url, tmp_path / "dl" / "x.tgz", error=DataError,
                            hint="Put x.tgz in the cache yourself.", progress=False)
    assert url in exc_info.value.message and str(tmp_path / "dl") in exc_info.value.message
    assert "Put x.tgz in the cache yourself." in exc_info.value.hint
    assert leftovers(tmp_path / "dl") == []
    with pytest.raises(DownloadError) as zoo_exc:
        download_file(url, tmp_path / "dl" / "m.pth", progress=False)
    assert url in zoo_exc.value.message and "sparsify.zoo add" in zoo_exc.value.hint
