"""Where a job's files live: a local directory or S3-compatible object storage, behind one interface.

A job's files (checkpoints, model, metrics, summary, log, evaluation results) are named relative to
the job: `model.safetensors`, `checkpoints/last.pt`. `LocalArtifacts` keeps them under
`LBDN_HOME/jobs/<id>/` as the service always has; `S3Artifacts` keeps them as objects
`<prefix>/<id>/<name>` in a bucket, so hosts that share nothing but the store, PostgreSQL and Redis
see the same files.

S3 goes through obstore (the Rust object_store crate's Python binding, also behind Apache Arrow's
and DataFusion's object stores): one self-contained wheel with no botocore (s3fs and boto3 bring
aiobotocore/botocore, ~100 MB and a pinned dependency chain), typed, with streaming and
multipart upload built in, and sync calls (our readers are sync routes and worker processes).

Consistency rules every caller relies on:
- `put` makes a whole file visible at once: a local file is written under a temporary name and
  renamed; an S3 object appears only when its PUT (or multipart upload) completes. A reader never
  sees half a checkpoint.
- `local_path` gives a file on this host's disk: the file itself for the local backend; for S3 a
  copy in a bounded cache keyed by the object's ETag, so a model is downloaded once per host and a
  replaced object is downloaded again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

CHUNK = 1 << 20
EVICT_GRACE_S = 30.0  # see DownloadCache._evict


@dataclass(frozen=True)
class Artifact:
    """One stored file of a job: its name relative to the job, size in bytes, and identity (an ETag,
    or size + mtime for local files: it changes whenever the content is replaced)."""

    name: str
    size: int
    etag: str


class ArtifactStore(Protocol):
    """The files of jobs; names are relative to the job ('checkpoints/last.pt'), '/'-separated.

    `remote` is False when the files are this host's own (LocalArtifacts): a job's run directory is
    then its folder in the store, and nothing needs pushing or pulling."""

    remote: bool

    def put(self, job_id: str, name: str, source: Path) -> Artifact: ...
    def list(self, job_id: str) -> list[Artifact]: ...
    def head(self, job_id: str, name: str) -> Artifact | None: ...
    def stream(self, job_id: str, name: str) -> Iterator[bytes]: ...
    def local_path(self, job_id: str, name: str) -> Path: ...
    def delete(self, job_id: str) -> int: ...


def _check_name(name: str) -> str:
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in name:
        raise ValueError(f"artifact name {name!r} must be a relative path without '.', '..' or empty parts")
    return name


class LocalArtifacts:
    """Files under `root/<job_id>/` (LBDN_HOME/jobs); one host, or a shared file system."""

    remote = False

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, job_id: str, name: str) -> Path:
        return self.root / _check_name(job_id) / _check_name(name)

    @staticmethod
    def _info(name: str, path: Path) -> Artifact:
        st = path.stat()
        return Artifact(name, st.st_size, f"{st.st_size}-{st.st_mtime_ns}")

    def put(self, job_id: str, name: str, source: Path) -> Artifact:
        dest = self._path(job_id, name)
        if Path(source).resolve() != dest.resolve():
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
            os.close(fd)
            try:
                shutil.copyfile(source, tmp)
                os.replace(tmp, dest)  # atomic on one file system: readers see old or new, never half
            finally:
                Path(tmp).unlink(missing_ok=True)
        return self._info(name, dest)

    def list(self, job_id: str) -> list[Artifact]:
        folder = self.root / _check_name(job_id)
        if not folder.is_dir():
            return []
        files = (p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        return sorted((self._info(p.relative_to(folder).as_posix(), p) for p in files), key=lambda a: a.name)

    def head(self, job_id: str, name: str) -> Artifact | None:
        path = self._path(job_id, name)
        return self._info(name, path) if path.is_file() else None

    def stream(self, job_id: str, name: str) -> Iterator[bytes]:
        with self._path(job_id, name).open("rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk

    def local_path(self, job_id: str, name: str) -> Path:
        path = self._path(job_id, name)
        if not path.is_file():
            raise FileNotFoundError(f"job {job_id} has no artifact {name!r}")
        return path

    def delete(self, job_id: str) -> int:
        found = self.list(job_id)
        shutil.rmtree(self.root / _check_name(job_id), ignore_errors=True)
        return len(found)


def _touch(path: Path) -> None:
    """Mark a cached file recently used: its access time only. Its modification time is what
    readers key on (ModelCache, the export next to it), so changing it would look like new content."""
    with suppress(FileNotFoundError):  # another process on this host evicted it meanwhile
        st = path.stat()
        os.utime(path, ns=(time.time_ns(), st.st_mtime_ns))


class DownloadCache:
    """Downloaded objects on this host's disk, keyed by (key, ETag), at most `max_bytes` in all
    (least recently used, by access time, first out; a file larger than the whole cache is still
    kept, alone)."""

    def __init__(self, root: Path, max_bytes: int, grace_s: float = EVICT_GRACE_S) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.grace_s = grace_s
        self._lock = threading.Lock()

    def path_for(self, key: str, etag: str, group: str = "") -> Path:
        """`root/<group>/<digest of key and etag>/<key's file name>`; `group` (a job id) lets a
        job's copies be found by its id (ModelCache.forget) and removed together (drop)."""
        digest = hashlib.sha256(f"{key}\0{etag}".encode()).hexdigest()[:32]
        return self.root / _check_name(group or "_") / digest / Path(key).name

    def fill(self, key: str, etag: str, chunks: Iterator[bytes], group: str = "") -> Path:
        dest = self.path_for(key, etag, group)
        if dest.is_file():
            _touch(dest)
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
            os.replace(tmp, dest)
        finally:
            Path(tmp).unlink(missing_ok=True)
        self._evict(keep=dest)
        return dest

    def drop(self, group: str) -> None:
        """Remove every cached copy of `group` (its job was deleted)."""
        shutil.rmtree(self.root / _check_name(group), ignore_errors=True)

    def _evict(self, keep: Path) -> None:
        # Several processes share one host's cache (API replicas, the API beside a worker), each
        # evicting on its own: a file may vanish under us (skipped), and a file another process
        # used in the last `grace_s` is kept even past max_bytes, since that process may have
        # been handed its path by `fill` and not yet opened it (an open file survives its removal).
        with self._lock:
            recent = time.time_ns() - int(self.grace_s * 1e9)
            files = sorted(_cached_files(self.root), key=lambda f: f[1].st_atime_ns)
            total = sum(st.st_size for _, st in files)
            for p, st in files:
                if total <= self.max_bytes:
                    break
                if p != keep and st.st_atime_ns < recent:
                    total -= st.st_size
                    shutil.rmtree(p.parent, ignore_errors=True)


def _cached_files(root: Path) -> list[tuple[Path, os.stat_result]]:
    """The complete cached files under `root` with their stat, skipping any removed meanwhile."""
    found = []
    for p in root.glob("*/*/*"):
        if p.name.endswith(".part"):
            continue
        with suppress(FileNotFoundError):
            st = p.stat()
            if stat.S_ISREG(st.st_mode):
                found.append((p, st))
    return found


class S3Artifacts:
    """Objects `<prefix>/<job_id>/<name>` in an S3-compatible bucket (AWS, MinIO, moto, ...)."""

    remote = True

    def __init__(self, store: Any, prefix: str, cache: DownloadCache) -> None:
        self.store = store
        self.prefix = prefix.strip("/")
        self.cache = cache

    def _key(self, job_id: str, name: str | None = None) -> str:
        parts = [self.prefix, _check_name(job_id)] + ([] if name is None else [_check_name(name)])
        return "/".join(p for p in parts if p)

    def _info(self, meta: Any, job_prefix: str) -> Artifact:
        name = str(meta["path"])[len(job_prefix) :].lstrip("/")
        return Artifact(name, int(meta["size"]), str(meta.get("e_tag") or ""))

    def put(self, job_id: str, name: str, source: Path) -> Artifact:
        import obstore

        key = self._key(job_id, name)
        # obstore streams a file in parts (multipart past its chunk size): the object appears
        # only when the whole upload completes
        result = obstore.put(self.store, key, Path(source))
        return Artifact(name, Path(source).stat().st_size, str(result.get("e_tag") or ""))

    def list(self, job_id: str) -> list[Artifact]:
        import obstore

        job_prefix = self._key(job_id)
        found = [self._info(m, job_prefix) for batch in obstore.list(self.store, job_prefix + "/") for m in batch]
        return sorted(found, key=lambda a: a.name)

    def head(self, job_id: str, name: str) -> Artifact | None:
        import obstore

        try:
            meta = obstore.head(self.store, self._key(job_id, name))
        except FileNotFoundError:
            return None
        return self._info(meta, self._key(job_id))

    def stream(self, job_id: str, name: str) -> Iterator[bytes]:
        import obstore

        result = obstore.get(self.store, self._key(job_id, name))
        for chunk in result.stream(min_chunk_size=CHUNK):
            yield bytes(chunk)

    def local_path(self, job_id: str, name: str) -> Path:
        info = self.head(job_id, name)
        if info is None:
            raise FileNotFoundError(f"job {job_id} has no artifact {name!r}")
        # fill returns the cached copy when there is one; the stream is a generator, so nothing is
        # downloaded unless it is iterated
        return self.cache.fill(self._key(job_id, name), info.etag, self.stream(job_id, name), job_id)

    def delete(self, job_id: str) -> int:
        import obstore

        keys = [self._key(job_id, a.name) for a in self.list(job_id)]
        if keys:
            obstore.delete(self.store, keys)
        self.cache.drop(job_id)  # this host's copies; other hosts' go as their caches evict
        return len(keys)


def fetch(store: ArtifactStore, job_id: str, name: str, dest: Path) -> bool:
    """Copy a job's file from the store to `dest` on this host, whole or not at all (written under
    a temporary name, then renamed); False when the store has no such file. A local store's own
    file is left where it is."""
    if store.head(job_id, name) is None:
        return False
    dest = Path(dest)
    if not store.remote and store.local_path(job_id, name).resolve() == dest.resolve():
        return True
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in store.stream(job_id, name):
                f.write(chunk)
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return True


def push_folder(store: ArtifactStore, job_id: str, folder: Path) -> list[Artifact]:
    """Put every visible file of `folder` (a job's run directory, not its subfolders or hidden
    temporary files) into the store under the same names; a local store's own folder is left as it is."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return [store.put(job_id, p.name, p) for p in files]


@dataclass(frozen=True)
class S3Config:
    """Where and how to reach the bucket (LBDN_ARTIFACTS=s3://bucket/prefix plus the LBDN_S3_*
    settings; unset credentials fall back to the usual AWS_* environment variables)."""

    url: str
    endpoint: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None


def s3_store(config: S3Config) -> tuple[Any, str]:
    """(obstore S3Store for the bucket, key prefix) from an s3://bucket/prefix URL."""
    from obstore.store import S3Store

    parsed = urlparse(config.url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"LBDN_ARTIFACTS={config.url!r}: expected s3://bucket[/prefix] or a local folder")
    options: dict[str, Any] = {}
    if config.endpoint:
        options["endpoint"] = config.endpoint
        options["allow_http"] = config.endpoint.startswith("http://")
        options["virtual_hosted_style_request"] = False  # MinIO/moto-style path addressing
    for key, value in (
        ("region", config.region),
        ("access_key_id", config.access_key_id),
        ("secret_access_key", config.secret_access_key),
    ):
        if value:
            options[key] = value
    return S3Store(parsed.netloc, **options), parsed.path


def open_store(url: str | None, jobs_dir: Path, cache_dir: Path, cache_bytes: int, **s3: Any) -> ArtifactStore:
    """The store LBDN_ARTIFACTS names: unset or a path = LocalArtifacts(jobs_dir or that path);
    s3://bucket/prefix = S3Artifacts with a download cache under cache_dir of cache_bytes."""
    if not url:
        return LocalArtifacts(jobs_dir)
    if "://" not in url or url.startswith("file://"):
        return LocalArtifacts(Path(url.removeprefix("file://")))
    store, prefix = s3_store(S3Config(url, **s3))
    return S3Artifacts(store, prefix, DownloadCache(cache_dir, cache_bytes))
