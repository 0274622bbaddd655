"""Readers for the five recipe sources, in their exact hub layouts.

One reader class serves every source: a source's *format* decides which files
belong to which language (its layout) and how a raw record becomes a
:class:`~datatrove.data.Document` (its adapter). Files are reached through fsspec,
so ``hf://datasets/...``, ``s3://...`` and local paths share one code path;
``input_root`` maps hub URIs onto a local mirror with the hub's layout.

Every document carries ``metadata["source"]``, ``metadata["language"]``
(``xxx_Script``), ``metadata["language_score"]`` (None where the source publishes
none) and an id that is stable across runs (``{source}/{id in the source}``, or
``{source}/{file}:{line}`` when the source has no ids).

Fields are checked, never guessed: a record whose text is null, not a string, empty
(only whitespace or invisible characters) or not valid Unicode (invalid UTF-8, or a
lone UTF-16 surrogate that JSON can escape), or whose language, script or score is
null or malformed, is bad input (see `pipeline.errors`). Two things are repaired
because they carry no data: a UTF-8 byte-order mark before a JSON line is dropped,
and blank lines are skipped. A Wikipedia article without letters gets no language
label, and language ID drops it with reason ``no_script``.
"""

from __future__ import annotations

import codecs
import gzip
import io
import json
import posixpath
import re
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import regex
import zstandard
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.readers.base import BaseDiskReader

from mixtures.recipe import SourceSpec
from pipeline.errors import ErrorLog
from pipeline.languages import (
    LanguageSelection,
    NoScriptError,
    is_language_label,
    language_code,
    normalize_label,
    parse_label,
)

ENGLISH = "eng_Latn"
# Dolma-format files come as JSON lines compressed with zstd or gzip, named .json.* or .jsonl.*
DOLMA_FILES = ("*.json.zst", "*.json.gz", "*.jsonl.zst", "*.jsonl.gz")
PARQUET_BATCH_ROWS = 256
FINEWEB2_COLUMNS = ["text", "id", "language", "language_script", "language_score", "minhash_cluster_size"]
WIKIPEDIA_COLUMNS = ["id", "text"]
# fastText reports each probability as exp(log(p + 1e-5)) (`std_log` in fastText's loss.cc), so
# DCLM's English scores reach 1.00001; anything up to this bound is a score of 1.
MAX_SCORE = 1.0 + 2e-5
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# A text holds something once it has a character that is not whitespace, a control or a format
# character (zero-width space, byte-order mark, ...).
_VISIBLE = regex.compile(r"[^\s\p{Cc}\p{Cf}]")


class BadRecord(ValueError):
    """A record with a field that cannot be used as it is; the message names the field and why."""


def lone_surrogate(value: str) -> int | None:
    """Where ``value`` holds a lone UTF-16 surrogate, which JSON can escape (``\\ud83d``) but no
    UTF-8 text can hold; None when it holds none."""
    bad = _LONE_SURROGATE.search(value)
    return None if bad is None else bad.start()


def _check_unicode(value: str, field: str) -> None:
    if (at := lone_surrogate(value)) is not None:
        surrogate = f"U+{ord(value[at]):04X}"
        raise BadRecord(f"invalid Unicode in {field}: lone surrogate {surrogate} at character {at}")


def _text(record: dict) -> str:
    text = record.get("text")
    if not isinstance(text, str):
        if text is None:
            raise BadRecord("text is null" if "text" in record else "no text field")
        raise BadRecord(f"text is {type(text).__name__}, not a string")
    _check_unicode(text, "text")
    if _VISIBLE.search(text) is None:
        raise BadRecord("empty text (nothing but whitespace or invisible characters)")
    return text


def _score(value: object, field: str) -> float:
    """A language score as the source publishes it, in [0, 1]; a null or malformed one is a bad record."""
    if value is None:
        raise BadRecord(f"{field} is null")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_SCORE:
        raise BadRecord(f"{field} is {value!r}, not a score between 0 and 1")
    return min(float(value), 1.0)


def _fineweb2_label(record: dict) -> str:
    """FineWeb2's ``language`` + ``language_script`` columns as one label; nulls are bad records."""
    for field in ("language", "language_script"):
        if not isinstance(record[field], str):
            raise BadRecord(f"{field} is {'null' if record[field] is None else repr(record[field])}")
    label = f"{record['language']}_{record['language_script']}"
    if not is_language_label(label):
        raise BadRecord(f"invalid language label {label!r}")
    return label


def _wikipedia_label(path: str, text: str) -> str | None:
    """The label of a Wikipedia article: its wiki's language, in the script of its text.

    An article without letters has no label; language ID drops it (reason ``no_script``).
    """
    code = path.split("/")[0].split(".", 1)[1]
    try:
        return normalize_label(code, text)
    except NoScriptError:
        return None
    except ValueError as err:
        raise BadRecord(f"cannot map wiki code {code!r}: {err}") from None


def _dclm_score(record: dict) -> float | None:
    """DCLM's fastText English score; a page without one has none (DCLM kept only English pages)."""
    if "language_id_whole_page_fasttext" not in record:
        return None
    scores = record["language_id_whole_page_fasttext"]
    if not isinstance(scores, dict) or "en" not in scores:
        raise BadRecord(f"language_id_whole_page_fasttext is {scores!r}, not an object with an 'en' score")
    return _score(scores["en"], "language_id_whole_page_fasttext.en")


def _batch_records(batch: pa.RecordBatch) -> list[dict | UnicodeDecodeError]:
    """A parquet batch as records; a row whose strings are not valid UTF-8 comes back as its error."""
    try:
        return batch.to_pylist()
    except UnicodeDecodeError:
        records: list[dict | UnicodeDecodeError] = []
        for row in range(batch.num_rows):
            try:
                records.append(batch.slice(row, 1).to_pylist()[0])
            except UnicodeDecodeError as err:
                records.append(err)
        return records


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
    def patterns(self) -> list[str]:
        """The glob patterns of the source's files, relative to its root (its hub layout)."""
        fmt = self.source.format
        if fmt == "fineweb2":
            return ["data/*/train/*.parquet"]
        if fmt == "wikipedia":
            return [f"{self.source.date or '*'}.*/train-*.parquet"]
        if fmt == "dclm":
            return ["global-shard_*/local-shard_*/*.jsonl.zst*"]
        if fmt == "dolma":
            return [
                f"data/{subset}/**/{pattern}"
                for subset in self.source.subsets or ("*",)
                for pattern in DOLMA_FILES
            ]
        if fmt == "arxiv":
            return [f"data/arxiv/**/{pattern}" for pattern in DOLMA_FILES]
        raise ValueError(f"unknown source format {fmt!r}")

    def serves_selection(self) -> bool:
        """Whether the selection asks for a language this source publishes: the English-only sources
        serve English, FineWeb2 every language but English, Wikipedia every language."""
        fmt, selection = self.source.format, self.selection
        if fmt == "wikipedia":
            return True
        if fmt == "fineweb2":
            named = {*selection.codes, *(language_code(label) for label in selection.labels)}
            return selection.everything or named != {"eng"}
        return selection.matches(ENGLISH)

    def catalog(self) -> list[tuple[str | None, str]]:
        """Every file of the source, whatever the selection, with the language it holds, in a stable
        order: FineWeb2's directory label, a wiki's ISO 639-3 code (None if it maps to none; its
        script is known per article), ``eng_Latn`` for the English-only sources."""
        fmt, folder = self.source.format, self.data_folder
        entries = []
        for path in sorted({p for pattern in self.patterns() for p in folder.glob(pattern)}):
            if fmt == "fineweb2":
                language = path.split("/")[1]
                if language.endswith("_removed"):
                    continue
                if not is_language_label(language):
                    self._report(path, None, f"invalid language directory {language!r}")
                    continue
            elif fmt == "wikipedia":
                try:
                    language = parse_label(path.split("/")[0].split(".", 1)[1])[0]
                except ValueError:
                    language = None
            else:
                language = ENGLISH
            entries.append((language, path))
        return entries

    def list_files(self) -> list[str]:
        """Files of the selected languages, relative to the source root, in a stable order."""
        if not self.serves_selection():
            return []
        return [path for language, path in self.catalog() if self.selection.selects(language)]

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
                    for record in _batch_records(batch):
                        if isinstance(record, UnicodeDecodeError):
                            self._report(path, row, f"invalid UTF-8: {record}")
                        else:
                            yield row, record
                        row += 1
        except (pa.ArrowException, OSError) as err:
            self._report(path, None, f"unreadable parquet: {err}")

    def _json_lines(self, path: str) -> Iterator[tuple[int, dict]]:
        line_no = 0
        try:
            with self.data_folder.open(path, "rb") as raw, _decompressed(raw, path) as stream:
                for line_no, line in enumerate(stream, start=1):
                    # A byte-order mark carries no text and a blank line no record: both are skipped.
                    line = line.removeprefix(codecs.BOM_UTF8)
                    if not line.strip():
                        continue
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

    def _records(self, path: str) -> Iterator[tuple[int, dict]]:
        """(line or row, raw record) for each record of a file that could be parsed at all."""
        if self.source.format == "fineweb2":
            yield from self._parquet_rows(path, FINEWEB2_COLUMNS)
        elif self.source.format == "wikipedia":
            yield from self._parquet_rows(path, WIKIPEDIA_COLUMNS)
        else:
            yield from self._json_lines(path)

    def _document(self, path: str, line: int, record: dict) -> Document:
        """The document a raw record stands for; raises BadRecord naming the field at fault."""
        text = _text(record)
        fmt = self.source.format
        if fmt == "fineweb2":
            label, score = _fineweb2_label(record), _score(record["language_score"], "language_score")
        elif fmt == "wikipedia":
            label, score = _wikipedia_label(path, text), None
        elif fmt == "dclm":
            label, score = ENGLISH, _dclm_score(record)
        else:  # Dolma-format sources publish no language score
            label, score = ENGLISH, None
        # DCLM has no ids: its pages are named by their WARC record, else by file and line.
        warc = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
        raw_id = record.get("id") or warc.get("WARC-Record-ID") or f"{path}:{line}"
        if isinstance(raw_id, int) and not isinstance(raw_id, bool):
            raw_id = str(raw_id)
        if not isinstance(raw_id, str):
            raise BadRecord(f"id is {type(raw_id).__name__}, not a string")
        _check_unicode(raw_id, "id")
        metadata = {"source": self.source.name, "language": label, "language_score": score}
        if (size := record.get("minhash_cluster_size")) is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise BadRecord(f"minhash_cluster_size is {size!r}, not a positive integer")
            metadata["minhash_cluster_size"] = size
        return Document(text=text, id=f"{self.source.name}/{raw_id}", metadata=metadata)

    def read_file(self, filepath: str) -> DocumentsPipeline:
        for line, record in self._records(filepath):
            try:
                yield self._document(filepath, line, record)
            except BadRecord as err:
                self._report(filepath, line, str(err))

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if data:
            yield from data
        self.errors = ErrorLog(self.on_error)
        files = self.list_files()[rank::world_size]
        yield from self.read_files_shard(files)
        self.stat_update("input_errors", value=len(self.errors.problems))
        if self.errors_dir is not None:
            self.errors.write(Path(self.errors_dir) / f"{self.source.name}-{rank:05d}.jsonl")
