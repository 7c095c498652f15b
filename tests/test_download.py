"""datamodules.download against a local HTTP server (never the real network)."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from datamodules import download
from datamodules.download import DownloadError, cache_dir, extract, fetch
from launch.errors import UserError
from tests.conftest import QuietHandler, serve_directory

PAYLOAD = b"paperzoo test payload\n" * 1000


class _Handler(QuietHandler):
    def do_GET(self):
        self.server.hits.append(self.path)
        if self.path == "/slow/data.bin":  # a download long enough for a second process to ask meanwhile
            import time

            time.sleep(0.5)
        if self.path == "/truncated.bin":
            body = b"x" * 100
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body) + 1000))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def served(tmp_path):
    """(base_url, root_dir, server): a ThreadingHTTPServer on 127.0.0.1 serving root_dir."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "data.bin").write_bytes(PAYLOAD)
    with serve_directory(root, _Handler) as server:
        server.hits = []
        yield f"http://127.0.0.1:{server.server_address[1]}", root, server


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    c = tmp_path / "cache"
    monkeypatch.setenv("PAPERZOO_DATA", str(c))
    return c


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _leftovers(folder: Path) -> list[str]:
    """Files left in the cache, less the empty download locks (`.<name>.lock`, kept as lock files are)."""
    if not folder.exists():
        return []
    names = sorted(p.name for p in folder.rglob("*"))
    for name in names:
        if name.endswith(".lock"):
            assert (folder / name).stat().st_size == 0, name
    return [name for name in names if not name.endswith(".lock")]


# ------------------------------------------------------------------------------------------ fetch


def test_cache_dir_env_and_default(monkeypatch, tmp_path):
    monkeypatch.setenv("PAPERZOO_DATA", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x"
    monkeypatch.delenv("PAPERZOO_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "paperzoo"


def test_download_error_is_user_error():
    assert issubclass(DownloadError, UserError)


def test_fetch_sha256_then_cached_without_network(served, cache):
    base, _, server = served
    path = fetch(f"{base}/data.bin", sha256=_sha(PAYLOAD), subdir="ds")
    assert path == cache / "ds" / "data.bin"
    assert path.read_bytes() == PAYLOAD
    assert _leftovers(cache / "ds") == ["data.bin"]  # no temp file, no sidecar when a sum is given
    server.shutdown()
    server.server_close()
    # the server is gone: a second fetch must not touch the network
    assert fetch(f"{base}/data.bin", sha256=_sha(PAYLOAD).upper(), subdir="ds") == path
    assert server.hits == ["/data.bin"]


def test_fetch_md5_and_filename(served, cache):
    base, _, _ = served
    md5 = hashlib.md5(PAYLOAD).hexdigest()
    path = fetch(f"{base}/data.bin", md5=md5, filename="renamed.bin")
    assert path == cache / "renamed.bin" and path.read_bytes() == PAYLOAD
    path = fetch(f"{base}/data.bin", md5=md5, sha256=_sha(PAYLOAD), filename="renamed.bin")
    assert path.read_bytes() == PAYLOAD
    nested = fetch(f"{base}/data.bin", md5=md5, filename="a/b.bin", subdir="s/t")
    assert nested == cache / "s" / "t" / "a" / "b.bin" and nested.read_bytes() == PAYLOAD


def test_checksum_mismatch_leaves_nothing(served, cache):
    base, _, _ = served
    with pytest.raises(DownloadError, match="checksum mismatch") as ei:
        fetch(f"{base}/data.bin", sha256="0" * 64, subdir="ds")
    assert "\n" not in str(ei.value)
    assert _leftovers(cache / "ds") == []
    with pytest.raises(DownloadError, match="md5"):
        fetch(f"{base}/data.bin", md5="0" * 32, subdir="ds")
    assert _leftovers(cache / "ds") == []


def test_wrong_cached_file_is_redownloaded(served, cache):
    base, _, server = served
    target = cache / "data.bin"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"corrupt")
    assert fetch(f"{base}/data.bin", sha256=_sha(PAYLOAD)).read_bytes() == PAYLOAD
    assert server.hits == ["/data.bin"]


def test_truncated_body_leaves_nothing(served, cache):
    base, _, _ = served
    with pytest.raises(DownloadError, match="truncated") as ei:
        fetch(f"{base}/truncated.bin", subdir="t")
    assert "\n" not in str(ei.value)
    assert _leftovers(cache / "t") == []


def test_404_is_download_error(served, cache):
    base, _, _ = served
    with pytest.raises(DownloadError, match="HTTP 404") as ei:
        fetch(f"{base}/missing.bin", sha256="0" * 64, subdir="m")
    assert "\n" not in str(ei.value)
    assert _leftovers(cache / "m") == []


def test_unreachable_host_is_download_error(served, cache):
    base, _, server = served
    server.shutdown()
    server.server_close()
    with pytest.raises(DownloadError, match="failed"):
        fetch(f"{base}/data.bin", subdir="u", timeout=5)
    assert _leftovers(cache / "u") == []


def test_file_url(tmp_path, cache):
    src = tmp_path / "local.bin"
    src.write_bytes(PAYLOAD)
    path = fetch(src.as_uri(), sha256=_sha(PAYLOAD))
    assert path == cache / "local.bin" and path.read_bytes() == PAYLOAD
    with pytest.raises(DownloadError):
        fetch((tmp_path / "nope.bin").as_uri())


def test_trust_on_first_use_sidecar(served, cache):
    base, root, server = served
    path = fetch(f"{base}/data.bin")
    sidecar = cache / "data.bin.sha256"
    assert sidecar.read_text().split()[0] == _sha(PAYLOAD)
    assert _leftovers(cache) == ["data.bin", "data.bin.sha256"]
    # verified against the sidecar, no network
    assert fetch(f"{base}/data.bin") == path and server.hits == ["/data.bin"]
    # a corrupted copy is fetched again and still matches the recorded sum
    path.write_bytes(b"corrupt")
    assert fetch(f"{base}/data.bin").read_bytes() == PAYLOAD
    assert len(server.hits) == 2
    # upstream changes: the re-download no longer matches the recorded sha256 -> error, nothing left
    (root / "data.bin").write_bytes(b"changed upstream")
    path.write_bytes(b"corrupt again")
    with pytest.raises(DownloadError, match="checksum mismatch"):
        fetch(f"{base}/data.bin")
    assert not path.exists()
    assert _leftovers(cache) == ["data.bin.sha256"]


def test_unsafe_filename_rejected(served):
    base, _, _ = served
    with pytest.raises(DownloadError):
        fetch(f"{base}/data.bin", filename="../escape.bin")
    with pytest.raises(DownloadError):
        fetch(f"{base}/data.bin", subdir="/abs")


def test_progress_is_silent_without_tty(served, capsys):
    base, _, _ = served
    fetch(f"{base}/data.bin")
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


# ---------------------------------------------------------------------------------------- extract


def _tar(path: Path, entries: list[tarfile.TarInfo | tuple[str, bytes]], mode="w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for e in entries:
            if isinstance(e, tarfile.TarInfo):
                tf.addfile(e)
            else:
                name, data = e
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def _link(name: str, target: str, kind=tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def _zip(path: Path, entries: list[tuple[str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries:
            zf.writestr(zipfile.ZipInfo(name), data)
    return path


def test_extract_good_tar_and_idempotent(tmp_path):
    arc = _tar(tmp_path / "good.tar.gz", [("d/a.txt", b"A"), ("d/sub/b.txt", b"B"),
                                          _link("d/link", "a.txt"), _link("d/hard", "d/a.txt",
                                                                          tarfile.LNKTYPE)])
    dest = extract(arc, tmp_path / "out")
    assert (dest / "d" / "a.txt").read_bytes() == b"A"
    assert (dest / "d" / "sub" / "b.txt").read_bytes() == b"B"
    assert (dest / "d" / "link").is_symlink() and (dest / "d" / "link").read_bytes() == b"A"
    assert (dest / "d" / "hard").read_bytes() == b"A"
    assert (dest / download.EXTRACTED_MARKER).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.tar.gz", "out"]
    # idempotent: a second call does nothing, even when the archive is gone
    (dest / "d" / "a.txt").write_bytes(b"edited")
    arc.unlink()
    assert extract(arc, tmp_path / "out") == dest
    assert (dest / "d" / "a.txt").read_bytes() == b"edited"


@pytest.mark.parametrize("suffix,mode", [(".tar", "w"), (".tgz", "w:gz")])
def test_extract_plain_tar_and_tgz(tmp_path, suffix, mode):
    arc = _tar(tmp_path / f"x{suffix}", [("f.txt", b"F")], mode=mode)
    assert (extract(arc, tmp_path / "o") / "f.txt").read_bytes() == b"F"


def test_extract_replaces_incomplete_dest(tmp_path):
    arc = _tar(tmp_path / "g.tar.gz", [("f.txt", b"F")])
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "stale").write_text("half")
    dest = extract(arc, tmp_path / "o")
    assert sorted(p.name for p in dest.iterdir()) == [download.EXTRACTED_MARKER, "f.txt"]


@pytest.mark.parametrize("entries,match", [
    ([("ok.txt", b"1"), ("../evil.txt", b"x")], r"'\.\.'"),
    ([("ok.txt", b"1"), ("a/../../evil.txt", b"x")], r"'\.\.'"),
    ([("ok.txt", b"1"), ("/tmp/evil.txt", b"x")], "absolute"),
    ([("ok.txt", b"1"), _link("ln", "/etc/passwd")], "outside"),
    ([("ok.txt", b"1"), _link("d/ln", "../../outside")], "outside"),
    ([("ok.txt", b"1"), _link("hl", "../outside", tarfile.LNKTYPE)], "outside"),
    ([_link("d", "."), ("d/ok.txt", b"1")], "under symlink"),
])
def test_extract_rejects_unsafe_tar_before_writing(tmp_path, entries, match):
    arc = _tar(tmp_path / "bad.tar.gz", entries)
    with pytest.raises(DownloadError, match=match) as ei:
        extract(arc, tmp_path / "sub" / "out")
    assert "\n" not in str(ei.value)
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "sub" / "out").exists()
    assert _leftovers(tmp_path / "sub") == []


def test_extract_good_zip(tmp_path):
    arc = _zip(tmp_path / "good.zip", [("z/a.txt", b"A"), ("z/b/c.txt", b"C")])
    dest = extract(arc, tmp_path / "out")
    assert (dest / "z" / "a.txt").read_bytes() == b"A"
    assert (dest / "z" / "b" / "c.txt").read_bytes() == b"C"
    assert extract(arc, tmp_path / "out") == dest


@pytest.mark.parametrize("name,match", [("../evil.txt", r"'\.\.'"), ("/abs.txt", "absolute"),
                                        ("ok/../../evil.txt", r"'\.\.'")])
def test_extract_rejects_unsafe_zip(tmp_path, name, match):
    arc = _zip(tmp_path / "bad.zip", [("ok.txt", b"1"), (name, b"x")])
    with pytest.raises(DownloadError, match=match):
        extract(arc, tmp_path / "sub" / "out")
    assert _leftovers(tmp_path / "sub") == []
    assert not (tmp_path / "evil.txt").exists()


def test_extract_corrupt_archive(tmp_path):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not an archive at all")
    with pytest.raises(DownloadError):
        extract(bad, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_fetch_then_extract(served, cache):
    base, root, _ = served
    _tar(root / "bundle.tar.gz", [("bundle/x.txt", b"X")])
    arc = fetch(f"{base}/bundle.tar.gz", sha256=_sha((root / "bundle.tar.gz").read_bytes()))
    dest = extract(arc, cache / "bundle")
    assert (dest / "bundle" / "x.txt").read_bytes() == b"X"
    assert [name for name in sorted(os.listdir(cache)) if not name.endswith(".lock")] == ["bundle", "bundle.tar.gz"]


# ------------------------------------------------------------------- found by the real-data audit (stop 34)
def test_another_url_replaces_the_file_cached_from_the_first(served, cache):
    """`data.url=` changed to another source under the same cached name: the first URL's file was used silently (the
    second URL was never fetched)."""
    base, root, server = served
    (root / "other.bin").write_bytes(b"another source")
    first = fetch(f"{base}/data.bin", filename="x.bin")
    assert fetch(f"{base}/data.bin", filename="x.bin") == first and server.hits == ["/data.bin"]
    assert fetch(f"{base}/other.bin", filename="x.bin").read_bytes() == b"another source"
    assert server.hits == ["/data.bin", "/other.bin"]
    assert fetch(f"{base}/other.bin", filename="x.bin").read_bytes() == b"another source"  # recorded: no network
    assert len(server.hits) == 2 and (cache / "x.bin.sha256").read_text().split()[0] == _sha(b"another source")


def test_offline_error_says_where_to_put_the_file(served, cache):
    base, _, server = served
    server.shutdown()
    server.server_close()
    with pytest.raises(DownloadError) as ei:
        fetch(f"{base}/data.bin", sha256=_sha(PAYLOAD), subdir="o", timeout=5)
    message = str(ei.value)
    assert "\n" not in message and f"put the file at {cache / 'o' / 'data.bin'}" in message
    assert f"sha256 {_sha(PAYLOAD)}" in message and "PAPERZOO_DATA" in message
    (cache / "o" / "data.bin").write_bytes(b"placed by hand, wrong")
    with pytest.raises(DownloadError, match="failed its checksum"):
        fetch(f"{base}/data.bin", sha256=_sha(PAYLOAD), subdir="o", timeout=5)
    (cache / "o" / "data.bin").write_bytes(PAYLOAD)
    assert fetch(f"{base}/data.bin", sha256=_sha(PAYLOAD), subdir="o", timeout=5).read_bytes() == PAYLOAD


def test_cached_files_are_readable_by_the_group_as_a_plain_write(served, cache, tmp_path):
    """mkstemp's 0600 made a shared cache unreadable for the other users of a cluster."""
    base, _, _ = served
    old = os.umask(0o022)
    try:
        path = fetch(f"{base}/data.bin", subdir="p")
        archive = tmp_path / "a.tar"
        with tarfile.open(archive, "w") as tar:
            info = tarfile.TarInfo("f.txt")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
        extracted = extract(archive, cache / "p" / "a")
        npz = download.cached_npz(cache / "p", "arrays", {"k": 1}, lambda: {"a": __import__("numpy").zeros(2)})
    finally:
        os.umask(old)
    assert npz["a"].shape == (2,)
    assert (path.stat().st_mode & 0o777) == 0o644
    assert (path.with_name("data.bin.sha256").stat().st_mode & 0o777) == 0o644
    assert (extracted.stat().st_mode & 0o777) == 0o755
    assert [p.stat().st_mode & 0o777 for p in (cache / "p").glob("arrays_*.npz")] == [0o644]
    assert not list((cache / "p").glob(".*part*"))


def test_parts_of_downloads_killed_long_ago_are_removed(served, cache):
    """A download killed by SIGKILL (a preempted job) left its .part file behind, one more per kill (real-data audit)."""
    import time

    base, _, _ = served
    folder = cache / "k"
    folder.mkdir(parents=True)
    old, fresh = folder / ".data.bin.abc123.part", folder / ".data.bin.def456.part"
    for part in (old, fresh):
        part.write_bytes(b"half")
    day_ago = time.time() - download.STALE_PART_S - 60
    os.utime(old, (day_ago, day_ago))
    assert fetch(f"{base}/data.bin", subdir="k").read_bytes() == PAYLOAD
    assert not old.exists() and fresh.exists()  # a younger one may be another process's download in progress


def test_concurrent_fetches_download_once(served, cache, caplog):
    """The tasks of a job array sharing one cache each downloaded the same file (every download was atomic, so only
    time and bandwidth were lost). One download now holds a lock beside the file; the others wait, say so, and
    then return the verified file without a second request."""
    import logging
    import threading

    base, root, server = served
    (root / "slow").mkdir()
    (root / "slow" / "data.bin").write_bytes(PAYLOAD)
    paths, errors = [], []

    def task() -> None:
        try:
            paths.append(fetch(f"{base}/slow/data.bin", subdir="arr"))
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    with caplog.at_level(logging.WARNING, logger="datamodules.download"):
        threads = [threading.Thread(target=task) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert not errors, errors
    assert paths == [cache / "arr" / "data.bin"] * 3 and paths[0].read_bytes() == PAYLOAD
    assert server.hits == ["/slow/data.bin"]
    assert "waiting for another process's download" in caplog.text
    assert _leftovers(cache / "arr") == ["data.bin", "data.bin.sha256"]


def test_cached_arrays_changed_after_writing_are_regenerated(tmp_path, caplog):
    """A cache file that still opens but whose arrays were changed (a key removed, rows cut, NaN written into it: the
    real-data audit of stop 44 overwrote a QG cache) was read as it was: a KeyError, a reshape error or a NaN run
    followed. Each file carries the sha256 of its arrays; a file that does not match (or has none: written by hand or
    before the digest) is regenerated and replaced."""
    import numpy as np

    calls = []

    def make():
        calls.append(1)
        return {"psi": np.arange(12.0).reshape(3, 4), "psi_next": np.ones((3, 4))}

    first = download.cached_npz(tmp_path, "qg", {"n": 3}, make)
    (path,) = tmp_path.glob("qg_*.npz")
    again = download.cached_npz(tmp_path, "qg", {"n": 3}, make)
    assert len(calls) == 1 and set(again) == {"psi", "psi_next"} and np.array_equal(again["psi"], first["psi"])
    damaged = [{"psi": first["psi"]},  # a key removed (and no digest: as a hand-written file)
               {"psi": first["psi"][:2], "psi_next": first["psi_next"],
                download.CACHE_DIGEST: np.array(download._arrays_digest(first))},  # rows cut, the old digest kept
               {"psi": np.full((3, 4), np.nan), "psi_next": first["psi_next"],
                download.CACHE_DIGEST: np.array(download._arrays_digest(first))}]  # NaN written in
    for n, arrays in enumerate(damaged, start=2):
        with open(path, "wb") as file:
            np.savez(file, **arrays)
        with caplog.at_level("WARNING"):
            out = download.cached_npz(tmp_path, "qg", {"n": 3}, make)
        assert len(calls) == n and np.array_equal(out["psi"], first["psi"]), n
        assert "does not match its digest" in caplog.text
        assert download.cached_npz(tmp_path, "qg", {"n": 3}, make)["psi_next"].shape == (3, 4) and len(calls) == n
