"""Where data lives: local paths and object stores (``s3://...``, ``hf://...``) behind one small API.

Builds publish to it, and `stats`, `validate` and the trainer's loader read from it, so that a
location is a plain string everywhere: a local path, or a URL that fsspec opens (s3fs for
``s3://``, huggingface_hub's ``HfFileSystem`` for ``hf://``). Credentials come from where those
libraries look: for S3, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE`` and
``~/.aws``, with ``AWS_ENDPOINT_URL`` for a store other than AWS's; for the hub, ``HF_TOKEN`` and
``HF_ENDPOINT``.

Object stores have no rename, so an upload never goes through a temporary key: a PUT (or a
multipart upload's completion) makes an object appear whole under its final key, or not at all.
`publish` uploads a finished local directory that way, ``stats.json`` last, so that a reader who
finds ``stats.json`` finds every shard it lists.
"""

from __future__ import annotations

import fcntl
import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixtures.files import atomic_output, make_parent, write_atomic

CHUNK_BYTES = 8 << 20
SHA256_KEY = "sha256"  # an uploaded object's user metadata (x-amz-meta-sha256): its bytes' digest


class StorageError(Exception):
    """A location that cannot be read or written; the message names it and says what to do. Not an
    OSError, so that a local writer's wrapping of OSErrors (`mixtures.files.writing`) leaves it be."""


def is_remote(location: str | Path) -> bool:
    """Whether ``location`` is a URL of an object store or the hub (``s3://``, ``hf://``, ...)."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def join(location: str | Path, *parts: str) -> str:
    """``location/part/...``: a URL keeps its ``scheme://``, a local path is joined as a path."""
    if not is_remote(location):
        return str(Path(location).joinpath(*parts))
    return "/".join([str(location).rstrip("/"), *(p.strip("/") for p in parts)])


def parent(location: str | Path) -> str:
    """The directory (or prefix) that holds ``location``."""
    if not is_remote(location):
        return str(Path(location).parent)
    return str(location).rstrip("/").rsplit("/", 1)[0]


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem serving ``url`` and the path in it (``bucket/key`` for S3)."""
    import fsspec.core

    with storage_errors(url):
        return fsspec.core.url_to_fs(url)


@contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """Turn what the store's client raises into a one-line `StorageError` naming ``url`` and the fix."""
    try:
        yield
    except StorageError:
        raise
    except FileNotFoundError as err:
        raise StorageError(f"{url}: not found ({_reason(err)})") from err
    except PermissionError as err:
        raise StorageError(
            f"{url}: access denied ({_reason(err)}); check the credentials' rights on it"
        ) from err
    except Exception as err:
        if type(err).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
            raise StorageError(
                f"{url}: no S3 credentials found ({_reason(err)}); set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with ~/.aws/credentials",
            ) from err
        if type(err).__name__ in ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError"):
            raise StorageError(
                f"{url}: the store cannot be reached ({_reason(err)}); check AWS_ENDPOINT_URL"
            ) from err
        raise


def _reason(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def read_bytes(location: str | Path) -> bytes:
    """The bytes of a file at a local path or URL (a `StorageError` naming it when that fails)."""
    if not is_remote(location):
        return Path(location).read_bytes()
    fs, path = filesystem(str(location))
    with storage_errors(str(location)):
        return fs.cat_file(path)


def write_bytes(location: str | Path, data: bytes) -> None:
    """Write ``data`` to a local path (temporary name, then rename) or to an ``s3://`` URL (one PUT:
    the object appears whole or not at all). The hub is read-only here: a `StorageError` says how
    to put a file there instead."""
    if not is_remote(location):
        make_parent(location)
        write_atomic(location, data)
        return
    url = str(location)
    check_writable(url)
    fs, path = filesystem(url)
    with storage_errors(url):
        fs.pipe_file(path, data)


def exists(location: str | Path) -> bool:
    """Whether a file (or object) is at a local path or URL."""
    if not is_remote(location):
        return Path(location).exists()
    fs, path = filesystem(str(location))
    with storage_errors(str(location)):
        return fs.exists(path)


def sizes(url: str) -> dict[str, int]:
    """Every object under ``url`` (a prefix), by its key relative to it, with its size in bytes: one
    listing, where a ``stat`` of each would be a request each. Empty when there is none."""
    fs, root = filesystem(url)
    root = root.rstrip("/")
    with storage_errors(url):
        listed = _listing(fs, root)
    return {
        key[len(root) + 1 :]: int(entry["size"])
        for key, entry in listed.items()
        if key.startswith(root + "/")
    }


def modified(location: str | Path) -> float:
    """When a file was last written, in seconds since the epoch (an object's ``LastModified``)."""
    if not is_remote(location):
        return Path(location).stat().st_mtime
    fs, path = filesystem(str(location))
    with storage_errors(str(location)):
        return fs.modified(path).timestamp()


def check_writable(url: str) -> None:
    """Fail at once, in one line, unless ``url`` is an ``s3://`` URL whose bucket can be reached
    (`check_access`): the hub and other stores are read, not written, here."""
    if not url.startswith("s3://"):
        raise StorageError(
            f"{url}: only local paths and s3:// URLs are written; write it locally and upload it "
            "(`huggingface-cli upload` for the hub)"
        )
    check_access(url)


def check_access(url: str) -> None:
    """Fail at once, in one line, when the bucket of ``url`` (``s3://bucket/...``) cannot be reached:
    no credentials, no such bucket, no rights, or no store at the endpoint. Run before a long job
    writes there. S3's HEAD bucket raises what is wrong, where ``exists`` would only say False."""
    fs, path = filesystem(url)
    bucket = path.split("/", 1)[0]
    with storage_errors(url):
        try:
            fs.call_s3("head_bucket", Bucket=bucket)
            return
        except FileNotFoundError:
            pass
    raise StorageError(f"{url}: bucket {bucket} does not exist; create it or fix the URL")


def cached_path(url: str, cache_dir: Path) -> Path:
    """Where `fetch` keeps ``url``: its path after the scheme under ``cache_dir`` (``s3://b/k`` ->
    ``cache_dir/b/k``), the layout of a `mmbert-data download` mirror."""
    relative = url.split("://", 1)[1].lstrip("/")
    if ".." in relative.split("/"):
        raise StorageError(f"{url}: a '..' in a remote path would leave the cache; refusing it")
    return Path(cache_dir) / relative


def fetch(url: str, cache_dir: Path, size: int, sha256: str) -> tuple[Path, bool]:
    """A local copy of the file at ``url`` of ``size`` bytes and ``sha256``: the one in ``cache_dir``
    when it is there with that size, else downloaded (temporary name, hash checked, renamed).
    Returns the path and whether this call downloaded it.

    Safe when the ranks of a node ask for the same file at once: one downloads it under an
    exclusive lock beside it, and the others wait on that lock and find it done. Raises
    `StorageError` when the copy is not the ``size`` and ``sha256`` asked for (nothing kept).
    """
    target = cached_path(url, cache_dir)
    if target.is_file() and target.stat().st_size == size:
        return target, False
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(f".{target.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file() and target.stat().st_size == size:
            return target, False  # another rank fetched it while this one waited
        fs, path = filesystem(url)
        with atomic_output(target) as temporary, storage_errors(url):
            digest, copied = hashlib.sha256(), 0
            with fs.open(path, "rb") as source, open(temporary, "wb") as copy:
                while chunk := source.read(CHUNK_BYTES):
                    copy.write(chunk)
                    digest.update(chunk)
                    copied += len(chunk)
            if (copied, digest.hexdigest()) != (size, sha256):
                raise StorageError(
                    f"{url}: fetched {copied:,} bytes of sha256 {digest.hexdigest()[:16]}..., expected "
                    f"{size:,} of sha256 {sha256[:16]}...; the object changed after its manifest was made"
                )
    return target, True


@dataclass
class Published:
    uploaded: int = 0  # files put
    kept: int = 0  # files the store already had, by sha256
    removed: tuple[str, ...] = ()  # the keys under the prefix that the directory does not have


def publish(
    directory: Path,
    url: str,
    skip: Callable[[str], bool] = lambda relative: False,
    last: str = "stats.json",
    spare: Callable[[str], bool] = lambda relative: False,
) -> Published:
    """Make the objects under ``url`` (an ``s3://`` prefix) the files of ``directory`` (those
    ``skip`` does not exclude, by path relative to it), and nothing else but the objects ``spare``
    names (by key relative to ``url``: what others made from ``last``, kept while ``last`` is
    the same); return what it took.

    Each file is put under its final key (its sha256 in the object's metadata); one the store
    already holds with that sha256 (and, for a one-part upload, the ETag of its MD5) is kept.
    ``last`` (the file that says the rest is complete) is taken down first when it differs, and
    put after every other file; objects the directory does not have, and multipart uploads left
    unfinished by a killed run, are removed at the end. A run killed at any moment leaves only
    whole objects, and a rerun ends with exactly the directory.
    """
    fs, root = filesystem(url)
    root = root.rstrip("/")
    files = sorted(
        (p.relative_to(directory).as_posix(), p)
        for p in directory.rglob("*")
        if p.is_file() and not p.name.startswith(".") and not skip(p.relative_to(directory).as_posix())
    )
    present = sizes(url)
    with storage_errors(url):
        digests = {relative: _digests(path) for relative, path in files}

        def held(relative: str, path: Path) -> bool:  # the store has these bytes under the key already
            if present.get(relative) != path.stat().st_size:
                return False
            return _published_as(fs, f"{root}/{relative}", *digests[relative])

        result = Published()
        changed = last in digests and not (last in present and held(last, directory / last))
        if changed and last in present:
            fs.rm_file(f"{root}/{last}")
            del present[last]
        for relative, path in sorted(files, key=lambda item: item[0] == last):
            if relative in present and held(relative, path):
                result.kept += 1
                continue
            fs.put_file(str(path), f"{root}/{relative}", Metadata={SHA256_KEY: digests[relative][0]})
            result.uploaded += 1
        strays = sorted(
            relative for relative in present if relative not in digests and (changed or not spare(relative))
        )
        if strays:
            fs.rm([f"{root}/{relative}" for relative in strays])
            result.removed = tuple(strays)
        _abort_unfinished_uploads(fs, root)
        fs.invalidate_cache(root)
    return result


def _listing(fs: Any, root: str) -> dict[str, dict]:
    try:
        return fs.find(root, detail=True, withdirs=False)
    except FileNotFoundError:
        return {}


def etag_md5(etag: object) -> str | None:
    """The MD5 of an object's bytes from its ETag, which holds it for a one-part upload (a multipart
    upload's ETag, ``<md5 of the parts' md5s>-<parts>``, says nothing of the bytes); else None."""
    text = str(etag or "").strip('"')
    return text if len(text) == 32 and "-" not in text else None


def _digests(path: Path) -> tuple[str, str]:
    """A file's sha256 and MD5, in one read."""
    sha256, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            sha256.update(chunk)
            md5.update(chunk)
    return sha256.hexdigest(), md5.hexdigest()


def _published_as(fs: Any, key: str, sha256: str, md5: str) -> bool:
    """Whether the object under ``key`` was published from bytes of this ``sha256`` and still holds
    them: its metadata says so, and its ETag, where it is the MD5 of a one-part upload, agrees (an
    object overwritten since, metadata and all, is put again)."""
    bucket, _, name = key.partition("/")
    try:
        head = fs.call_s3("head_object", Bucket=bucket, Key=name)
    except FileNotFoundError:
        return False
    etag = etag_md5(head.get("ETag"))
    return (head.get("Metadata") or {}).get(SHA256_KEY) == sha256 and etag in (None, md5)


def _abort_unfinished_uploads(fs: Any, root: str) -> None:
    """Abort the multipart uploads under ``root`` that a killed run began and never completed
    (invisible as objects, but kept and billed by the store until aborted)."""
    bucket, _, prefix = root.partition("/")
    answer = fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix + "/")
    for upload in answer.get("Uploads", []):
        fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
