"""The artifact store's two backends behave alike: a local folder, and S3 through a real S3-protocol
server (moto's server mode on loopback, the one obstore's own tests run against)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from core.artifacts import ArtifactStore, LocalArtifacts, open_store


@pytest.fixture(scope="module")
def s3_endpoint(s3_server: str) -> str:
    """The session's moto S3 server (tests/service/conftest.py), with the bucket `lbdn` made."""
    return s3_server


def _s3(endpoint: str, tmp: Path, prefix: str, cache_bytes: int = 1 << 30) -> ArtifactStore:
    return open_store(
        f"s3://lbdn/{prefix}",
        tmp / "unused",
        tmp / "cache",
        cache_bytes,
        endpoint=endpoint,
        region="us-east-1",
        access_key_id="testing",
        secret_access_key="testing",
    )


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return LocalArtifacts(tmp_path / "jobs")
    return _s3(request.getfixturevalue("s3_endpoint"), tmp_path, f"run-{tmp_path.name}")


def _file(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def test_put_list_head_stream_delete(store: ArtifactStore, tmp_path: Path) -> None:
    big = bytes(range(256)) * 40_000  # 10 MB: more than one chunk, a multipart upload on S3
    store.put("job1", "model.safetensors", _file(tmp_path, "m", big))
    store.put("job1", "checkpoints/last.pt", _file(tmp_path, "c", b"ckpt"))
    store.put("job2", "metrics.jsonl", _file(tmp_path, "x", b"{}\n"))
    listed = store.list("job1")
    assert [(a.name, a.size) for a in listed] == [("checkpoints/last.pt", 4), ("model.safetensors", len(big))]
    head = store.head("job1", "model.safetensors")
    assert head is not None and head.size == len(big) and head.etag
    assert store.head("job1", "nope") is None
    assert b"".join(store.stream("job1", "model.safetensors")) == big
    assert store.local_path("job1", "checkpoints/last.pt").read_bytes() == b"ckpt"
    with pytest.raises(FileNotFoundError, match="job1 has no artifact 'nope'"):
        store.local_path("job1", "nope")
    assert store.delete("job1") == 2
    assert store.list("job1") == [] and store.head("job1", "model.safetensors") is None
    assert [a.name for a in store.list("job2")] == ["metrics.jsonl"]  # another job's files stay


def test_replacing_a_file_changes_its_identity_and_its_cached_copy(store: ArtifactStore, tmp_path: Path) -> None:
    store.put("j", "model.safetensors", _file(tmp_path, "a", b"first"))
    first = store.head("j", "model.safetensors")
    assert store.local_path("j", "model.safetensors").read_bytes() == b"first"
    store.put("j", "model.safetensors", _file(tmp_path, "b", b"second, longer"))
    second = store.head("j", "model.safetensors")
    assert first is not None and second is not None and first.etag != second.etag
    assert store.local_path("j", "model.safetensors").read_bytes() == b"second, longer"


def test_names_that_could_escape_the_job_are_refused(store: ArtifactStore, tmp_path: Path) -> None:
    src = _file(tmp_path, "f", b"x")
    for bad in ("../other/model", "/etc/passwd", "a//b", "./m", ""):
        with pytest.raises(ValueError, match="relative path"):
            store.put("j", bad, src)
    with pytest.raises(ValueError, match="relative path"):
        store.list("..")


def test_readers_never_see_half_a_file(store: ArtifactStore, tmp_path: Path) -> None:
    """While one thread replaces a file again and again, readers only ever see a whole version."""
    versions = [bytes([i]) * (2_000_000 + i) for i in range(4)]
    sources = [_file(tmp_path, f"v{i}", v) for i, v in enumerate(versions)]
    store.put("j", "checkpoints/last.pt", sources[0])
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            store.put("j", "checkpoints/last.pt", sources[i % len(sources)])

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(15):
            data = b"".join(store.stream("j", "checkpoints/last.pt"))
            assert data in versions
    finally:
        stop.set()
        thread.join()


def test_the_s3_download_cache_is_bounded_and_downloads_once(s3_endpoint: str, tmp_path: Path) -> None:
    store = _s3(s3_endpoint, tmp_path, "cache-test", cache_bytes=3_000)
    store.cache.grace_s = 0  # type: ignore[attr-defined]  # no other process shares this cache
    for i in range(3):
        store.put("j", f"m{i}", _file(tmp_path, f"m{i}", bytes([i]) * 1_000))
    first = store.local_path("j", "m0")
    assert store.local_path("j", "m0") == first  # the same copy: no second download
    first.write_bytes(b"changed here")  # proves the next call did not download again
    assert store.local_path("j", "m0").read_bytes() == b"changed here"
    for i in range(3):
        store.local_path("j", f"m{i}")
    store.put("j", "m3", _file(tmp_path, "m3", b"\x03" * 1_500))
    store.local_path("j", "m3")
    cached = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in cached) <= 3_000
    assert store.local_path("j", "m3").read_bytes() == b"\x03" * 1_500


def test_a_copy_another_process_just_used_outlives_the_bound(s3_endpoint: str, tmp_path: Path) -> None:
    # Replicas share a host's cache: a path `fill` handed out a moment ago may not be open yet.
    store = _s3(s3_endpoint, tmp_path, "cache-grace", cache_bytes=1_500)
    for i in range(2):
        store.put("j", f"m{i}", _file(tmp_path, f"m{i}", bytes([i]) * 1_000))
    first = store.local_path("j", "m0")
    store.local_path("j", "m1")  # over the bound, but m0 was used within the grace period
    assert first.read_bytes() == b"\x00" * 1_000
    os.utime(first, ns=(0, first.stat().st_mtime_ns))  # as if last used in 1970
    store.put("j", "m2", _file(tmp_path, "m2", b"\x02" * 1_000))
    store.local_path("j", "m2")
    assert not first.exists()  # an old copy still goes first


def test_an_unknown_scheme_names_what_is_expected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"expected s3://bucket\[/prefix\]"):
        open_store("gs://bucket/x", tmp_path, tmp_path, 1)
    assert isinstance(open_store(None, tmp_path, tmp_path, 1), LocalArtifacts)
    assert isinstance(open_store(str(tmp_path / "elsewhere"), tmp_path, tmp_path, 1), LocalArtifacts)
