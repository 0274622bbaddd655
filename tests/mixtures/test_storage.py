"""The storage layer on moto's S3 server: publishing a directory, fetching into a cache, errors."""

from __future__ import annotations

import hashlib
import json
import posixpath
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
    assert (first.uploaded, first.kept, first.removed) == (3, 0, ())
    assert s3.objects("bucket", "run/phase") == {
        "a/0.arrow": b"zero",
        "a/1.arrow": b"one",
        "stats.json": b"{}",
    }
    s3.client().put_object(Bucket="bucket", Key="run/phase/old.arrow", Body=b"stray")
    s3.client().put_object(Bucket="bucket", Key="run/phase/manifest.json", Body=b"theirs")
    (directory / "a" / "1.arrow").write_bytes(b"ONE")
    spare = lambda key: key == "manifest.json"  # noqa: E731
    second = storage.publish(directory, "s3://bucket/run/phase", skip=skip, spare=spare)
    assert (second.uploaded, second.kept, second.removed) == (1, 2, ("old.arrow",))
    assert s3.objects("bucket", "run/phase") == {
        "a/0.arrow": b"zero",
        "a/1.arrow": b"ONE",
        "manifest.json": b"theirs",
        "stats.json": b"{}",
    }
    head = s3.client().head_object(Bucket="bucket", Key="run/phase/a/1.arrow")
    assert head["Metadata"][storage.SHA256_KEY] == hashlib.sha256(b"ONE").hexdigest()
    (directory / "stats.json").write_bytes(b'{"new": 1}')  # another build: what was made from it goes
    third = storage.publish(directory, "s3://bucket/run/phase", skip=skip, spare=spare)
    assert third.removed == ("manifest.json",) and "manifest.json" not in s3.objects("bucket", "run/phase")


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


def test_a_manifest_is_written_to_and_read_from_s3_its_relative_data_root_beside_it(
    s3, sample_manifests, tmp_path
):
    from mixtures.errors import MixtureError
    from mixtures.manifest import load_manifest, validate_manifest, write_manifest

    doc = json.loads(sample_manifests["decay"].read_text())
    with pytest.raises(
        MixtureError, match=r"^s3://bucket/m\.json: a manifest in an object store needs its data"
    ):
        write_manifest({**doc, "data_root": str(tmp_path)}, "s3://bucket/m.json")
    with pytest.raises(MixtureError, match=r"^hf://datasets/me/d/m\.json: only local paths and s3:// URLs"):
        write_manifest({**doc, "data_root": "s3://bucket/build/decay"}, "hf://datasets/me/d/m.json")
    fingerprint = write_manifest({**doc, "data_root": "s3://bucket/build/decay"}, "s3://bucket/m.json")
    loaded = load_manifest("s3://bucket/m.json", cache_dir=tmp_path)  # as a trainer reads it: data later
    assert (loaded.path, loaded.location, loaded.fingerprint) == ("s3://bucket/m.json",) * 2 + (fingerprint,)
    assert loaded.data_root == "s3://bucket/build/decay"
    # a locally compiled manifest copied up with its build keeps its relative data root (here
    # ../data/decay, from manifests/): it is read relative to the manifest's key
    relative = doc["data_root"]
    assert not relative.startswith("/") and "://" not in relative
    key = "copied/manifests/decay.json"
    s3.client().put_object(Bucket="bucket", Key=key, Body=sample_manifests["decay"].read_bytes())
    problems = validate_manifest(f"s3://bucket/{key}", check_hashes=False)
    beside = posixpath.normpath(posixpath.join("copied/manifests", relative))
    assert problems[0].startswith("missing shard: ") and f"(no object s3://bucket/{beside}/" in problems[0]
    with pytest.raises(MixtureError, match="cannot read manifest s3://bucket/none.json: not found"):
        load_manifest("s3://bucket/none.json", cache_dir=tmp_path)
    up = {**doc, "data_root": "../../../x"}
    s3.client().put_object(Bucket="bucket", Key="up/m.json", Body=json.dumps(up).encode())
    assert validate_manifest("s3://bucket/up/m.json") == [
        "s3://bucket/up/m.json: data_root: '../../../x' leads out of its bucket or repository"
    ]
