"""The one place that fetches files: URL -> verified file in the cache, archive -> safely extracted dir.

Every datamodule that needs real data calls :func:`fetch` (and :func:`extract` for archives); nothing
else in paperzoo opens a network connection.

Guarantees
----------
* Atomic: a download streams into a temporary file in the destination directory and is renamed with
  ``os.replace`` only after it is complete and verified; an extraction happens in a temporary directory
  beside the destination that is renamed into place. Nothing half-written is ever left behind, also
  not when the download fails.
* Verified: ``sha256=`` / ``md5=`` are checked on every call. A cached file whose checksum matches is
  returned without touching the network; one whose checksum does not match is downloaded again.
* Trust on first use: when no checksum is given, the sha256 of the first successful download (or of
  an already present file) is recorded in a ``<file>.sha256`` sidecar next to it, with the URL it came
  from; later calls verify the file against that sidecar, and a re-download that does not match it is
  an error (the source changed). Delete the file and its sidecar to accept a new upstream version. A
  call with another URL than the recorded one downloads that URL's file in place of the cached one.
* Offline: a failed download says where to put the file by hand (with its checksum when one is pinned).
* Shared: cached files get the permissions a plain write would (the umask's), so one cache serves a group.
* Once: a download holds an inter-process lock (an empty ``.<file>.lock`` beside the file, kept), so the
  tasks of a job array sharing one cache fetch a file once; the others wait for it and say so.
* Errors (HTTP/URL errors, truncated bodies, checksum mismatches, unsafe archives) raise
  :class:`DownloadError`, a :class:`~launch.errors.UserError`, with a single-line message.

The cache root is ``$PAPERZOO_DATA`` if set, else ``~/.cache/paperzoo``.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import posixpath
import shutil
import socket
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from contextlib import contextmanager, nullcontext
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from filelock import FileLock, Timeout

from launch.errors import UserError, one_line

log = logging.getLogger(__name__)

__all__ = ["DownloadError", "cache_dir", "fetch", "extract", "file_sha256"]

CHUNK = 1 << 20
SIDECAR_SUFFIX = ".sha256"
SOURCE_PREFIX = "# source: "
EXTRACTED_MARKER = ".paperzoo-extracted"
_USER_AGENT = "paperzoo-download/1"


class DownloadError(UserError):
    """A download or extraction failed (network, HTTP status, truncated body, checksum, unsafe archive)."""


def cache_dir() -> Path:
    """Root of the download cache: ``$PAPERZOO_DATA`` if set (and non-empty), else ``~/.cache/paperzoo``."""
    env = os.environ.get("PAPERZOO_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "paperzoo"


CACHE_DIGEST = "__sha256__"  # the entry of a cached_npz file that holds the digest of its other arrays


def _arrays_digest(arrays: dict) -> str:
    """sha256 over the arrays' names, dtypes, shapes and bytes, in name order."""
    import numpy as np

    digest = hashlib.sha256()
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{value.dtype.str}|{value.shape}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def cached_npz(folder: str | os.PathLike | None, prefix: str, key: dict, make) -> dict:
    """Arrays cached as `<folder>/<prefix>_<first 16 hex digits of sha256(key as sorted JSON)>.npz` (folder None:
    `cache_dir()`): read if the file is there, readable and whole, else `make()` (a dict of arrays) is written there
    (temporary name, then renamed, so a killed run leaves no half-written file). The file carries the sha256 of its
    arrays (names, dtypes, shapes and bytes): an unreadable file, or one whose arrays were changed, cut or removed since
    it was written (or written before the digest), is regenerated and replaced, not trained on."""
    import json

    import numpy as np

    text = json.dumps(key, sort_keys=True, default=str)
    path = (cache_dir() if folder is None else Path(folder).expanduser()) / (
        f"{prefix}_{hashlib.sha256(text.encode()).hexdigest()[:16]}.npz")
    if path.is_file():
        try:
            with np.load(path) as z:
                arrays = {k: np.array(z[k]) for k in z.files}
            stored = str(arrays.pop(CACHE_DIGEST, ""))
            if stored == _arrays_digest(arrays):
                return arrays
            log.warning("cache file %s does not match its digest (changed since written, or older than the "
                        "digest): regenerating it", path)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:  # regenerated and replaced
            log.warning("cache file %s is unreadable (%s): regenerating it", path, one_line(err, 120))
    out = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part.npz")  # never shared by two
    try:  # writers (a pid alone is, across containers)
        with os.fdopen(fd, "wb") as file:
            np.savez(file, **out, **{CACHE_DIGEST: np.array(_arrays_digest(out))})
        _shareable(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        _unlink(Path(tmp))
        raise
    return out


# --------------------------------------------------------------------------------------------------
# checksums


def _digests(path: Path, algos: tuple[str, ...]) -> dict[str, str]:
    hashers = {a: hashlib.new(a) for a in algos}
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            for h in hashers.values():
                h.update(chunk)
    return {a: h.hexdigest() for a, h in hashers.items()}


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file."""
    return _digests(Path(path), ("sha256",))["sha256"]


def _expected(sha256: str | None, md5: str | None) -> dict[str, str]:
    want = {}
    if sha256:
        want["sha256"] = sha256.strip().lower()
    if md5:
        want["md5"] = md5.strip().lower()
    return want


def _mismatch(want: dict[str, str], got: dict[str, str]) -> str | None:
    for algo, value in want.items():
        if got.get(algo) != value:
            return f"expected {algo} {value}, got {got.get(algo)}"
    return None


def _read_sidecar(sidecar: Path) -> tuple[str | None, str | None]:
    """(recorded sha256, the URL it was downloaded from: None for a file placed by hand or an older sidecar)."""
    try:
        lines = sidecar.read_text().splitlines()
    except FileNotFoundError:
        return None, None
    words = lines[0].split() if lines else []
    url = next((line[len(SOURCE_PREFIX):].strip() for line in lines[1:] if line.startswith(SOURCE_PREFIX)), None)
    return (words[0].lower() if words else None), url or None


def _sidecar_text(sha256: str, dest: Path, url: str | None) -> str:
    """`sha256sum` format, then the source URL (a file placed by hand has none)."""
    return f"{sha256}  {dest.name}\n" + (f"{SOURCE_PREFIX}{url}\n" if url else "")


def _shareable(path: Path, directory: bool = False) -> None:
    """The permissions a plain write would give (mkstemp / mkdtemp make 0600 / 0700: a cache shared by a group of
    users, e.g. on a cluster's shared disk, could not be read by the others)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if directory else 0o666) & ~mask)


def _write_atomic_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        _shareable(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        _unlink(Path(tmp))
        raise


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


# --------------------------------------------------------------------------------------------------
# progress


def _progress(total: int | None, label: str):
    """A rich progress bar on stderr when stderr is a TTY, else a silent no-op context."""
    if not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty()):
        return nullcontext(None)
    try:
        from rich.console import Console
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                                   TimeRemainingColumn, TransferSpeedColumn)
    except ImportError:  # pragma: no cover - rich is a dependency
        return nullcontext(None)
    prog = Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), transient=True)

    class _Bar:
        def __enter__(self):
            prog.__enter__()
            self.task = prog.add_task(label, total=total)
            return self

        def advance(self, n: int) -> None:
            prog.update(self.task, advance=n)

        def __exit__(self, *exc):
            return prog.__exit__(*exc)

    return _Bar()


# --------------------------------------------------------------------------------------------------
# fetch


def _default_filename(url: str) -> str:
    path = urllib.parse.urlsplit(url).path
    name = posixpath.basename(urllib.parse.unquote(path.rstrip("/")))
    if not name:
        raise DownloadError(f"cannot derive a file name from URL {url!r}; pass filename=")
    return name


def _check_name(name: str, what: str) -> None:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts:
        raise DownloadError(f"unsafe {what} {name!r}: must be a relative path without '..'")


def _download(url: str, dest: Path, algos: tuple[str, ...], timeout: float
              ) -> tuple[Path, dict[str, str]]:
    """Stream ``url`` into a temp file beside ``dest``; return it and the digests of its content.

    The caller verifies and renames it. On any failure here nothing is left behind.
    """
    hashers = {a: hashlib.new(a) for a in algos}
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        try:
            req = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
            with urllib.request.urlopen(req, timeout=timeout) as resp, os.fdopen(fd, "wb") as out:
                fd = None
                length = resp.headers.get("Content-Length")
                expected_len = int(length) if length and length.strip().isdigit() else None
                received = 0
                with _progress(expected_len, dest.name) as bar:
                    while chunk := resp.read(CHUNK):
                        out.write(chunk)
                        received += len(chunk)
                        for h in hashers.values():
                            h.update(chunk)
                        if bar is not None:
                            bar.advance(len(chunk))
                if expected_len is not None and received < expected_len:
                    raise DownloadError(f"download of {url} truncated: received {received} of "
                                        f"{expected_len} bytes")
                out.flush()
                os.fsync(out.fileno())
            _shareable(tmp)
        except DownloadError:
            raise
        except urllib.error.HTTPError as e:
            e.close()
            raise DownloadError(f"download of {url} failed: HTTP {e.code} {e.reason}") from None
        except urllib.error.URLError as e:
            raise DownloadError(f"download of {url} failed: {_one_line(e.reason)}") from None
        except http.client.IncompleteRead as e:
            raise DownloadError(f"download of {url} truncated: received {len(e.partial)} bytes, "
                                f"{e.expected} more expected") from None
        except (socket.timeout, TimeoutError):
            raise DownloadError(f"download of {url} failed: timed out after {timeout:g} s") from None
        except (http.client.HTTPException, OSError, ValueError) as e:
            raise DownloadError(f"download of {url} failed: {type(e).__name__}: {_one_line(e)}") \
                from None
    except BaseException:
        if fd is not None:
            os.close(fd)
        _unlink(tmp)
        raise
    return tmp, {a: h.hexdigest() for a, h in hashers.items()}


STALE_PART_S = 24 * 3600


def _remove_stale_parts(dest: Path) -> None:
    """Temporary files of downloads of `dest` killed a day or more ago (SIGKILL, a preempted job: nothing could clean
    up); a younger one may be another process's download in progress and stays."""
    import time

    for part in dest.parent.glob(f".{dest.name}.*.part"):
        try:
            if time.time() - part.stat().st_mtime > STALE_PART_S:
                part.unlink()
        except OSError:  # gone meanwhile, or not ours to remove
            pass


def _one_line(x) -> str:
    return " ".join(str(x).split()) or type(x).__name__


def fetch(url: str, *, sha256: str | None = None, md5: str | None = None,
          filename: str | None = None, subdir: str = "", timeout: float = 60) -> Path:
    """Download ``url`` into ``cache_dir()/subdir/filename`` and return the path.

    ``filename`` defaults to the last component of the URL path. ``http(s)://`` and ``file://`` URLs
    are supported (anything ``urllib`` opens).

    * With ``sha256`` and/or ``md5``: a cached file whose checksums match is returned without any
      network access; a cached file that does not match is downloaded again; a download that does not
      match raises :class:`DownloadError` and is deleted.
    * Without a checksum (trust on first use): the first download's sha256 is recorded in a
      ``<file>.sha256`` sidecar (a file already present without a sidecar is trusted as is and its
      sidecar written). Later calls verify the file against the sidecar: a match returns without
      network access, a mismatch (corrupt file) triggers a re-download, and a re-download that still
      differs from the recorded sha256 raises :class:`DownloadError` (upstream changed; delete the file
      and its sidecar to accept the new version, or pass ``sha256=``).

    The body streams into a temporary file in the target directory and is renamed into place only
    when complete and verified; on an HTTP/URL error, a truncated body (fewer bytes than
    ``Content-Length``) or a checksum mismatch nothing is left behind.
    """
    name = filename if filename is not None else _default_filename(url)
    _check_name(name, "filename")
    if subdir:
        _check_name(subdir, "subdir")
    folder = cache_dir() / subdir if subdir else cache_dir()
    dest = folder / name
    want = _expected(sha256, md5)
    cached = _CachedCopy.of(url, dest, want, warn=True)
    if cached.verified:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _one_download_at_a_time(dest):
        # another process may have fetched the file since the check above (while this one waited, or just before)
        cached = _CachedCopy.of(url, dest, want)
        if cached.verified:
            return dest
        return _download_verified(url, dest, cached, timeout)


class _CachedCopy(NamedTuple):
    """What the cache holds for `fetch(url)` at `dest`: the checksums a copy must match (`want`, the pinned ones or
    the sidecar's), whether they were recorded on first use (`tofu`), whether the copy came from another URL, and
    whether it is there and verified (a file placed by hand, never recorded, is trusted and its sidecar written)."""

    want: dict[str, str]
    tofu: bool
    other_source: bool
    verified: bool
    failed_check: str | None

    @classmethod
    def of(cls, url: str, dest: Path, want: dict[str, str], warn: bool = False) -> _CachedCopy:
        sidecar = dest.with_name(dest.name + SIDECAR_SUFFIX)
        tofu, other_source = not want, False
        if tofu:
            recorded, source = _read_sidecar(sidecar)
            # the cached file was downloaded from another URL (e.g. `data.url=` changed): that file is not this one
            other_source = bool(recorded) and source is not None and source != url
            if other_source:
                if warn:
                    log.warning("%s was downloaded from %s: fetching %s in its place", dest, source, url)
            elif recorded:
                want = {"sha256": recorded}
        failed_check = None
        if dest.is_file() and not other_source:
            got = _digests(dest, tuple(want) or ("sha256",))
            if not want:  # present, never recorded (placed by hand): trust it now
                _write_atomic_text(sidecar, _sidecar_text(got["sha256"], dest, None))
                return cls(want, tofu, other_source, True, None)
            failed_check = _mismatch(want, got)
            # a stale or corrupt copy is downloaded again (replaced atomically)
        return cls(want, tofu, other_source, dest.is_file() and not other_source and failed_check is None,
                   failed_check)


@contextmanager
def _one_download_at_a_time(dest: Path):
    """An inter-process lock (`filelock`'s OS lock on an empty `.<name>.lock` beside the file) around the download of
    `dest`: the tasks of a job array or the nodes of a run sharing one cache download a file once, the others wait
    for it (and say so). The OS drops the lock of a process that dies, so a killed download blocks no one; where the
    file system has no such locks, downloads go on unlocked (each is still atomic), never on a marker-file lock that a
    process killed on another node would leave held."""
    lock = FileLock(str(dest.with_name(f".{dest.name}.lock")), fallback_to_soft=False)
    try:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.warning("waiting for another process's download of %s", dest)
            lock.acquire()
    except (OSError, NotImplementedError) as err:  # e.g. no lock support on this file system
        log.warning("no download lock for %s (%s): downloading unlocked", dest, _one_line(err))
        yield
        return
    try:
        yield
    finally:
        lock.release()


def _download_verified(url: str, dest: Path, cached: _CachedCopy, timeout: float) -> Path:
    """Download `url` to `dest` and verify it against what the cache expects (`fetch`'s checks, atomic)."""
    want, tofu, other_source, failed_check = cached.want, cached.tofu, cached.other_source, cached.failed_check
    sidecar = dest.with_name(dest.name + SIDECAR_SUFFIX)
    _remove_stale_parts(dest)
    algos = tuple(dict.fromkeys((*want, "sha256")))
    try:
        tmp, got = _download(url, dest, algos, timeout)
    except DownloadError as err:  # e.g. offline: say how to provide the file by hand
        checksum = next((f"{algo} {value}" for algo, value in want.items()), None)
        found = f"the file at {dest} failed its checksum ({failed_check}) and " if failed_check else ""
        raise DownloadError(f"{found}{err}; offline, put the file at {dest}"
                            + (f" ({checksum})" if checksum and not tofu else "")
                            + " (the cache root is $PAPERZOO_DATA, default ~/.cache/paperzoo)") from None
    problem = _mismatch(want, got)
    if problem is not None:
        _unlink(tmp)
        _unlink(dest)  # a stale copy that failed verification above
        hint = ("the source changed since it was first recorded in "
                f"{sidecar.name}; delete it to accept the new file" if tofu
                else "the file may be corrupt or the source may have changed")
        raise DownloadError(f"checksum mismatch for {url}: {problem} ({hint})")
    try:
        os.replace(tmp, dest)
    except BaseException:
        _unlink(tmp)
        raise
    if tofu and (other_source or not sidecar.is_file()):
        _write_atomic_text(sidecar, _sidecar_text(got["sha256"], dest, url))
    return dest


# --------------------------------------------------------------------------------------------------
# extract


def _archive_kind(archive: Path) -> str:
    name = archive.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")):
        return "tar"
    if zipfile.is_zipfile(archive):
        return "zip"
    if tarfile.is_tarfile(archive):
        return "tar"
    raise DownloadError(f"cannot extract {archive}: not a .zip or .tar(.gz) archive")


def _normalized_member(archive: Path, name: str) -> PurePosixPath:
    raw = name.replace("\\", "/")
    p = PurePosixPath(raw)
    drive = len(raw) > 1 and raw[0].isalpha() and raw[1] == ":" and raw[2:3] in ("", "/")
    if p.is_absolute() or drive:
        raise DownloadError(f"unsafe archive {archive.name}: member {name!r} has an absolute path")
    if ".." in p.parts:
        raise DownloadError(f"unsafe archive {archive.name}: member {name!r} contains '..'")
    return p


def _inside(rel: str) -> bool:
    norm = posixpath.normpath(rel)
    return not (norm == ".." or norm.startswith("../") or norm.startswith("/"))


def _validate_tar(archive: Path, tf: tarfile.TarFile) -> None:
    links: set[PurePosixPath] = set()
    members = tf.getmembers()
    for m in members:
        p = _normalized_member(archive, m.name)
        if m.issym():
            target = m.linkname.replace("\\", "/")
            if target.startswith("/") or not _inside(posixpath.join(str(p.parent), target)):
                raise DownloadError(f"unsafe archive {archive.name}: symlink {m.name!r} -> "
                                    f"{m.linkname!r} points outside the destination")
            links.add(p)
        elif m.islnk():
            target = m.linkname.replace("\\", "/")
            if target.startswith("/") or not _inside(target):
                raise DownloadError(f"unsafe archive {archive.name}: hardlink {m.name!r} -> "
                                    f"{m.linkname!r} points outside the destination")
        elif not (m.isfile() or m.isdir()):
            raise DownloadError(f"unsafe archive {archive.name}: member {m.name!r} is a device "
                                "or fifo")
    # writing through a symlink of the archive could escape even with relative targets
    for m in members:
        p = PurePosixPath(m.name.replace("\\", "/"))
        for parent in p.parents:
            if parent in links:
                raise DownloadError(f"unsafe archive {archive.name}: member {m.name!r} lies "
                                    f"under symlink {str(parent)!r}")


def _validate_zip(archive: Path, zf: zipfile.ZipFile) -> None:
    for info in zf.infolist():
        _normalized_member(archive, info.filename)


def extract(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Safely extract a .zip / .tar / .tar.gz / .tgz (also .tar.bz2/.tar.xz) ``archive`` into ``dest``.

    Every member is checked before anything is written: absolute paths, ``..`` components, symlinks
    or hardlinks pointing outside ``dest``, members under an archived symlink, and device/fifo
    entries raise :class:`DownloadError`. Extraction happens in a temporary directory beside ``dest``
    that is renamed into place, with a ``.paperzoo-extracted`` marker inside; when ``dest`` already
    holds that marker nothing is done (idempotent). An incomplete ``dest`` without the marker is
    replaced.
    """
    archive, dest = Path(archive), Path(dest)
    marker = dest / EXTRACTED_MARKER
    if marker.is_file():
        return dest
    if not archive.is_file():
        raise DownloadError(f"cannot extract {archive}: no such file")
    kind = _archive_kind(archive)
    try:
        if kind == "zip":
            ctx = zipfile.ZipFile(archive)
        else:
            ctx = tarfile.open(archive, "r:*")
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as e:
        raise DownloadError(f"cannot extract {archive.name}: corrupt archive ({_one_line(e)})") \
            from None

    dest.parent.mkdir(parents=True, exist_ok=True)
    with ctx as arc:
        try:
            if kind == "zip":
                _validate_zip(archive, arc)
            else:
                _validate_tar(archive, arc)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
            raise DownloadError(f"cannot extract {archive.name}: corrupt archive "
                                f"({_one_line(e)})") from None
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part"))
        try:
            try:
                if kind == "zip":
                    arc.extractall(tmp)
                elif hasattr(tarfile, "data_filter"):
                    arc.extractall(tmp, filter="data")
                else:  # pragma: no cover - old Python without extraction filters
                    arc.extractall(tmp)
            except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
                raise DownloadError(f"cannot extract {archive.name}: {_one_line(e)}") from None
            (tmp / EXTRACTED_MARKER).write_text(f"{archive.name}\n")
            _shareable(tmp, directory=True)
            if dest.exists() and not marker.is_file():
                # leftover of an interrupted extraction by an older version / by hand
                if dest.is_dir() and not dest.is_symlink():
                    shutil.rmtree(dest)
                else:
                    dest.unlink()
            try:
                os.rename(tmp, dest)
            except OSError:
                if not marker.is_file():  # not a concurrent extraction that finished first
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest
