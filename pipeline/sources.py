"""Readers for the five recipe sources, in their exact hub layouts.

One reader class serves every source: a source's *format* decides which files
belong to which language (its layout) and how a raw record becomes a
:class:`~datatrove.data.Document` (its adapter). Files are reached through fsspec,
so ``hf://datasets/...``, ``s3://...`` and local paths share one code path;
``input_root`` maps hub URIs onto a local mirror with the hub's layout.

Every document carries ``metadata["source"]``, ``metadata["language"]``
(``xxx_Script``), ``metadata["language_score"]`` and an id that is stable across
runs (``{source}/{id in the source}``, or ``{source}/{file}:{line}`` when the
source has no ids).
"""

from __future__ import annotations

import gzip
import io
import json
import posixpath
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.readers.base import BaseDiskReader

from mixtures.recipe import SourceSpec
from pipeline.errors import ErrorLog
from pipeline.languages import LanguageSelection, is_language_label, normalize_label, parse_label

ENGLISH = "eng_Latn"
# Dolma-format files come as JSON lines compressed with zstd or gzip, named .json.* or .jsonl.*
DOLMA_FILES = ("*.json.zst", "*.json.gz", "*.jsonl.zst", "*.jsonl.gz")
PARQUET_BATCH_ROWS = 256


def resolve_uri(uri: str, input_root: str | None) -> str:
    """Map a source URI onto a local mirror: ``hf://datasets/<repo>/x`` -> ``input_root/datasets/<repo>/x``.

    Any ``scheme://path`` maps to ``input_root/path``, which is also where `mmbert-data download`
    puts a source's files; plain local paths are used as they are.
    """
    if input_root and "://" in uri:
        return posixpath.join(str(input_root), uri.split("://", 1)[1].lstrip("/"))
    return uri


class _CheckedZstdReader(io.RawIOBase):
    """Decompresses concatenated zstd frames; raises EOFError when the input ends inside a frame.

    (zstandard's own stream reader returns a clean end of file for a truncated frame.)
    """

    def __init__(self, raw: io.BufferedIOBase):
        self._raw = raw
        self._dctx = zstandard.ZstdDecompressor()
        self._frame = None
        self._buffer, self._pos = b"", 0

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        while self._pos == len(self._buffer):
            chunk = self._raw.read(1 << 20)
            if not chunk:
                if self._frame is not None:
                    raise EOFError("input ends inside a zstd frame")
                return 0
            output = []
            while chunk:
                self._frame = self._frame or self._dctx.decompressobj()
                output.append(self._frame.decompress(chunk))
                chunk = self._frame.unused_data if self._frame.eof else b""
                if self._frame.eof:
                    self._frame = None
            self._buffer, self._pos = b"".join(output), 0
        n = min(len(target), len(self._buffer) - self._pos)
        target[:n] = self._buffer[self._pos : self._pos + n]
        self._pos += n
        return n


def _decompressed(raw: io.BufferedIOBase, path: str) -> io.BufferedIOBase:
    if path.endswith((".zst", ".zstd")):
        return io.BufferedReader(_CheckedZstdReader(raw), buffer_size=1 << 20)
    if path.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw)
    return raw


class SourceReader(BaseDiskReader):
    """Reads one recipe source for the selected languages; bad input follows ``on_error``."""

    name = "📚 source reader"

    def __init__(
        self,
        source: SourceSpec,
        languages: tuple[str, ...] | None = None,
        input_root: str | None = None,
        on_error: str = "fail",
        errors_dir: str | None = None,
        limit: int = -1,
        file_progress: bool = False,
    ):
        super().__init__(resolve_uri(source.uri, input_root), limit=limit, file_progress=file_progress)
        self.source = source
        self.selection = LanguageSelection.parse(languages)
        self.on_error = on_error
        self.errors_dir = errors_dir
        self.errors = ErrorLog(on_error)

    # ---- layout: which files, in which language -------------------------------------------------
    def list_files(self) -> list[str]:
        """Files of the selected languages, relative to the source root, in a stable order."""
        fmt, folder = self.source.format, self.data_folder
        if fmt == "fineweb2":
            files = []
            for path in folder.glob("data/*/train/*.parquet"):
                label = path.split("/")[1]
                if label.endswith("_removed"):
                    continue
                if not is_language_label(label):
                    self._report(path, None, f"invalid language directory {label!r}")
                elif self.selection.matches(label):
                    files.append(path)
            return sorted(files)
        if fmt == "wikipedia":
            date = self.source.date or "*"
            files = []
            for path in folder.glob(f"{date}.*/train-*.parquet"):
                code = path.split("/")[0].split(".", 1)[1]
                try:
                    selected = self.selection.may_match_code(parse_label(code)[0])
                except ValueError:
                    selected = self.selection.everything
                if selected:
                    files.append(path)
            return sorted(files)
        if not self.selection.matches(ENGLISH):
            return []
        if fmt == "dclm":
            return sorted(folder.glob("global-shard_*/local-shard_*/*.jsonl.zst*"))
        if fmt == "dolma":
            subsets = self.source.subsets or ("*",)
            return sorted(
                p
                for subset in subsets
                for pattern in DOLMA_FILES
                for p in folder.glob(f"data/{subset}/**/{pattern}")
            )
        if fmt == "arxiv":
            return sorted(p for pattern in DOLMA_FILES for p in folder.glob(f"data/arxiv/**/{pattern}"))
        raise ValueError(f"unknown source format {fmt!r}")

    def _report(self, path: str, line: int | None, error: str) -> None:
        self.errors.report(self.source.name, self.data_folder.resolve_paths(path), line, error)

    # ---- records -----------------------------------------------------------------------------------
    def _parquet_rows(self, path: str, columns: list[str]) -> Iterator[tuple[int, dict]]:
        try:
            with self.data_folder.open(path, "rb") as f:
                parquet = pq.ParquetFile(f)
                missing = [c for c in columns if c not in parquet.schema_arrow.names]
                if missing:
                    self._report(path, None, f"missing column(s) {missing}")
                    return
                row = 0
                for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
                    for record in batch.to_pylist():
                        yield row, record
                        row += 1
        except (pa.ArrowException, OSError) as err:
            self._report(path, None, f"unreadable parquet: {err}")

    def _json_lines(self, path: str) -> Iterator[tuple[int, dict]]:
        line_no = 0
        try:
            with self.data_folder.open(path, "rb") as raw, _decompressed(raw, path) as stream:
                for line_no, line in enumerate(stream, start=1):
                    try:
                        record = json.loads(line.decode("utf-8"))
                    except UnicodeDecodeError as err:
                        self._report(path, line_no, f"invalid UTF-8: {err}")
                        continue
                    except json.JSONDecodeError as err:
                        self._report(path, line_no, f"invalid JSON: {err}")
                        continue
                    if not isinstance(record, dict):
                        self._report(path, line_no, "record is not a JSON object")
                        continue
                    yield line_no, record
        except (zstandard.ZstdError, EOFError, OSError) as err:
            self._report(path, line_no + 1, f"corrupt or truncated {Path(path).suffix} file: {err}")

    def _records(self, path: str) -> Iterator[tuple[int, dict, str, float]]:
        """(line, record, language, language score) for each usable record of a file."""
        fmt = self.source.format
        if fmt == "fineweb2":
            columns = ["text", "id", "language", "language_script", "language_score", "minhash_cluster_size"]
            for row, record in self._parquet_rows(path, columns):
                label = f"{record['language']}_{record['language_script']}"
                if not is_language_label(label):
                    self._report(path, row, f"invalid language label {label!r}")
                    continue
                yield row, record, label, float(record["language_score"] or 0.0)
        elif fmt == "wikipedia":
            code = path.split("/")[0].split(".", 1)[1]
            for row, record in self._parquet_rows(path, ["id", "url", "title", "text"]):
                try:
                    label = normalize_label(code, record["text"])
                except ValueError as err:
                    self._report(path, row, f"cannot map wiki code {code!r}: {err}")
                    continue
                yield row, record, label, 1.0
        else:
            for line, record in self._json_lines(path):
                score = 1.0
                if fmt == "dclm":
                    score = float((record.get("language_id_whole_page_fasttext") or {}).get("en", 1.0))
                yield line, record, ENGLISH, score

    def read_file(self, filepath: str) -> DocumentsPipeline:
        for line, record, label, score in self._records(filepath):
            text = record.get("text")
            if not isinstance(text, str) or not text.strip():
                self._report(filepath, line, "missing or empty text")
                continue
            # DCLM has no ids: its pages are named by their WARC record, else by file and line.
            warc = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
            raw_id = record.get("id") or warc.get("WARC-Record-ID") or f"{filepath}:{line}"
            metadata = {"source": self.source.name, "language": label, "language_score": score}
            if (size := record.get("minhash_cluster_size")) is not None:
                metadata["minhash_cluster_size"] = int(size)
            yield Document(text=text, id=f"{self.source.name}/{raw_id}", metadata=metadata)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if data:
            yield from data
        self.errors = ErrorLog(self.on_error)
        files = self.list_files()[rank::world_size]
        yield from self.read_files_shard(files)
        self.stat_update("input_errors", value=len(self.errors.problems))
        if self.errors_dir is not None:
            self.errors.write(Path(self.errors_dir) / f"{self.source.name}-{rank:05d}.jsonl")
