"""The storage layer on moto's S3 server: publishing a directory, fetching into a cache, errors."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from mixtures import storage
from tests.s3 import S3


@pytest.fixture(scope="module")
def s3():
    with S3() as server, pytest.MonkeyPatch.context() as patch:
        for name, value in server.env.items():
            patch.setenv(name, value)
        server.create_bucket("bucket")
        yield server


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_publish_uploads_what_changed_keeps_the_rest_and_removes_strays(s3, tmp_path):
    directory = _tree(
        tmp_path / "phase",
        {"a/0.arrow": b"zero", "a/1.arrow": b"one", "stats.json": b"{}", "_work/x": b"w", ".a.tmp": b"t"},
    )
    skip = lambda path: path.startswith("_work/")  # noqa: E731
    first = storage.publish(directory, "s3://bucket/run/phase", skip=skip)
    assert (first.uploaded, first.kept, first.removed) == (3, 0, 0)
    assert s3.objects("bucket", "run/phase") == {
        "a/0.arrow": b"zero",
        "a/1.arrow": b"one",
        "stats.json": b"{}",
    }
    s3.client().put_object(Bucket="bucket", Key="run/phase/old.arrow", Body=b"stray")
    (directory / "a" / "1.arrow").write_bytes(b"ONE")
    second = storage.publish(directory, "s3://bucket/run/phase", skip=skip)
    assert (second.uploaded, second.kept, second.removed) == (1, 2, 1)
    assert s3.objects("bucket", "run/phase") == {
        "a/0.arrow": b"zero",
        "a/1.arrow": b"ONE",
        "stats.json": b"{}",
    }
    head = s3.client().head_object(Bucket="bucket", Key="run/phase/a/1.arrow")
    assert head["Metadata"][storage.SHA256_KEY] == hashlib.sha256(b"ONE").hexdigest()


def test_publish_puts_the_completion_file_last_and_takes_a_stale_one_down_first(s3, tmp_path, monkeypatch):
    directory = _tree(tmp_path / "phase", {"a.arrow": b"a", "stats.json": b"old"})
    storage.publish(directory, "s3://bucket/order")
    (directory / "a.arrow").write_bytes(b"new a")
    (directory / "stats.json").write_bytes(b"new")
    fs, _ = storage.filesystem("s3://bucket")
    calls: list[str] = []
    put, remove = fs.put_file, fs.rm_file
    monkeypatch.setattr(
        fs, "put_file", lambda local, key, **kw: (calls.append(f"put {key}"), put(local, key, **kw))
    )
    monkeypatch.setattr(fs, "rm_file", lambda key: (calls.append(f"rm {key}"), remove(key)))
    storage.publish(directory, "s3://bucket/order")
    assert calls == ["rm bucket/order/stats.json", "put bucket/order/a.arrow", "put bucket/order/stats.json"]


def test_fetch_downloads_once_when_ranks_ask_at_the_same_time_and_checks_the_hash(s3, tmp_path):
    data = bytes(range(256)) * 4096
    s3.client().put_object(Bucket="bucket", Key="data/shard.arrow", Body=data)
    digest = hashlib.sha256(data).hexdigest()
    results: list[tuple[Path, bool]] = []
    ranks = [
        threading.Thread(
            target=lambda: results.append(
                storage.fetch("s3://bucket/data/shard.arrow", tmp_path, len(data), digest)
            )
        )
        for _ in range(4)
    ]
    for rank in ranks:
        rank.start()
    for rank in ranks:
        rank.join()
    assert sorted(downloaded for _, downloaded in results) == [False, False, False, True]
    assert {path for path, _ in results} == {tmp_path / "bucket" / "data" / "shard.arrow"}
    assert (tmp_path / "bucket" / "data" / "shard.arrow").read_bytes() == data
    with pytest.raises(storage.StorageError, match=r"s3://bucket/data/shard.arrow: fetched 1,048,576 bytes"):
        storage.fetch("s3://bucket/data/shard.arrow", tmp_path / "other", len(data), "0" * 64)
    assert not any(p.is_file() and not p.name.endswith(".lock") for p in (tmp_path / "other").rglob("*"))


def test_a_remote_path_cannot_climb_out_of_the_cache(tmp_path):
    with pytest.raises(storage.StorageError, match=r"'\.\.'"):
        storage.cached_path("s3://bucket/../../etc/passwd", tmp_path)


def test_a_missing_bucket_or_credential_is_one_line_naming_the_url(s3, monkeypatch):
    with pytest.raises(storage.StorageError, match=r"^s3://nobucket/x: bucket nobucket does not exist"):
        storage.check_access("s3://nobucket/x")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    try:
        with pytest.raises(
            storage.StorageError, match=r"^s3://bucket/x: no S3 credentials found .*AWS_ACCESS_KEY_ID"
        ):
            storage.check_access("s3://bucket/x")
    finally:
        s3fs.S3FileSystem.clear_instance_cache()


def test_publish_puts_again_an_object_changed_since_even_with_its_metadata(s3, tmp_path):
    directory = _tree(tmp_path / "phase", {"a.arrow": b"right", "stats.json": b"{}"})
    storage.publish(directory, "s3://bucket/tampered")
    client = s3.client()
    meta = client.head_object(Bucket="bucket", Key="tampered/a.arrow")["Metadata"]
    client.put_object(Bucket="bucket", Key="tampered/a.arrow", Body=b"wrong", Metadata=meta)  # same size
    again = storage.publish(directory, "s3://bucket/tampered")
    assert (again.uploaded, again.kept) == (1, 1)
    assert s3.objects("bucket", "tampered") == {"a.arrow": b"right", "stats.json": b"{}"}
