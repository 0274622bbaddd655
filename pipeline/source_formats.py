"""Source formats: how a kind of source lays out its files and writes its records.

A format is one small object: it lists a source's files with the language each
holds (:meth:`SourceFormat.catalog`), yields the raw records of one file
(:meth:`SourceFormat.records`) and reads a record's language label and score.
Formats are registered by name in :data:`FORMATS`; a recipe source names its
format (``format: dclm``) and :class:`pipeline.sources.SourceReader` holds that
object. Facts about the data stay in the recipe: the language of a
single-language source (``language: eng_Latn``) and which source is the
multilingual pool (``pool: true``).

Adding a source in a new format is one :class:`SourceFormat` subclass, an entry
in :data:`FORMATS` and a few recipe lines.
"""

from __future__ import annotations

import codecs
import gzip
import io
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard
from datatrove.io import DataFolder

from mixtures.languages import CODE, language_code
from mixtures.recipe import SourceSpec
from pipeline.labels import (
    LanguageSelection,
    NoScriptError,
    is_language_label,
    normalize_label,
    parse_label,
)

# Dolma-format files come as JSON lines compressed with zstd or gzip, named .json.* or .jsonl.*
DOLMA_FILES = ("*.json.zst", "*.json.gz", "*.jsonl.zst", "*.jsonl.gz")
PARQUET_BATCH_ROWS = 256
FINEWEB2_COLUMNS = ["text", "id", "language", "language_script", "language_score", "minhash_cluster_size"]
WIKIPEDIA_COLUMNS = ["id", "text"]
STARCODER_COLUMNS = ["id", "content"]
# StarCoderData's directories that hold other kinds of data, in other columns (its dataset card):
# GitHub issues, Jupyter notebooks and commits. Every other directory is a programming language.
STARCODER_OTHER_KINDS = (
    "git-commits-cleaned",
    "github-issues-filtered-structured",
    "jupyter-scripts-dedup-filtered",
    "jupyter-structured-clean-dedup",
)
# fastText reports each probability as exp(log(p + 1e-5)) (`std_log` in fastText's loss.cc), so
# DCLM's English scores reach 1.00001; anything up to this bound is a score of 1.
MAX_SCORE = 1.0 + 2e-5

Report = Callable[[str, int | None, str], None]
"""Files a problem: (path relative to the source root, line or row or None, what is wrong)."""


class BadRecord(ValueError):
    """A record with a field that cannot be used as it is; the message names the field and why."""


def score(value: object, field: str) -> float:
    """A language score as the source publishes it, in [0, 1]; a null or malformed one is a bad record."""
    if value is None:
        raise BadRecord(f"{field} is null")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_SCORE:
        raise BadRecord(f"{field} is {value!r}, not a score between 0 and 1")
    return min(float(value), 1.0)


# ---- reading files -------------------------------------------------------------------------------------
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


def parquet_rows(
    folder: DataFolder, path: str, columns: list[str], report: Report
) -> Iterator[tuple[int, dict]]:
    """(row, record) for each row of a parquet file; a missing column, bad UTF-8 or an unreadable file
    is reported."""
    try:
        with folder.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            missing = [c for c in columns if c not in parquet.schema_arrow.names]
            if missing:
                report(path, None, f"missing column(s) {missing}")
                return
            row = 0
            for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
                for record in _batch_records(batch):
                    if isinstance(record, UnicodeDecodeError):
                        report(path, row, f"invalid UTF-8: {record}")
                    else:
                        yield row, record
                    row += 1
    except (pa.ArrowException, OSError) as err:
        report(path, None, f"unreadable parquet: {err}")


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


def json_lines(folder: DataFolder, path: str, report: Report) -> Iterator[tuple[int, dict]]:
    """(line, record) for each JSON object of a JSON-lines file, plain or zstd/gzip compressed.

    A byte-order mark carries no text and a blank line no record: both are skipped. Bad UTF-8,
    bad JSON, a line that is not an object and a corrupt or truncated file are reported.
    """
    line_no = 0
    try:
        with folder.open(path, "rb") as raw, _decompressed(raw, path) as stream:
            for line_no, line in enumerate(stream, start=1):
                line = line.removeprefix(codecs.BOM_UTF8)
                if not line.strip():
                    continue
                try:
                    record = json.loads(line.decode("utf-8"))
                except UnicodeDecodeError as err:
                    report(path, line_no, f"invalid UTF-8: {err}")
                    continue
                except json.JSONDecodeError as err:
                    report(path, line_no, f"invalid JSON: {err}")
                    continue
                if not isinstance(record, dict):
                    report(path, line_no, "record is not a JSON object")
                    continue
                yield line_no, record
    except (zstandard.ZstdError, EOFError, OSError) as err:
        report(path, line_no + 1, f"corrupt or truncated {Path(path).suffix} file: {err}")


# ---- formats -------------------------------------------------------------------------------------------
class SourceFormat(ABC):
    """One kind of source: where its files are, which language each holds, and its records.

    The defaults serve a single-language source: every file and record is in the one
    language the recipe names for it (``language:``), without a score. A format whose data
    carries its own labels sets ``single_language = False`` and overrides the label methods.
    """

    name: str = ""
    single_language: bool = True
    text_field: str = "text"  # the record's field that holds the document's text

    @abstractmethod
    def patterns(self, source: SourceSpec) -> list[str]:
        """The glob patterns of the source's files, relative to its root."""

    @abstractmethod
    def records(self, folder: DataFolder, path: str, report: Report) -> Iterator[tuple[int, dict]]:
        """(line or row, raw record) for each record of a file that could be parsed at all."""

    def serves(self, source: SourceSpec, selection: LanguageSelection) -> bool:
        """Whether the selection asks for a language the source may hold (without listing its files)."""
        return selection.matches(source.language)

    def files(self, source: SourceSpec, folder: DataFolder) -> list[str]:
        """Every file matching the patterns, in a stable order."""
        return sorted({path for pattern in self.patterns(source) for path in folder.glob(pattern)})

    def catalog(self, source: SourceSpec, folder: DataFolder, report: Report) -> list[tuple[str | None, str]]:
        """Every file of the source, whatever the selection, with the language it holds."""
        return [(source.language, path) for path in self.files(source, folder)]

    def label(self, source: SourceSpec, path: str, text: str, record: dict) -> str | None:
        """The document's ``xxx_Script`` label (None: no script to label it with); BadRecord if malformed."""
        return source.language

    def score(self, record: dict) -> float | None:
        """The language score the source publishes for the record, or None."""
        return None

    def record_id(self, record: dict, path: str, line: int) -> str:
        """The record's own id (a non-empty string or an integer); BadRecord if it has none."""
        raw_id = record.get("id")
        if isinstance(raw_id, int) and not isinstance(raw_id, bool):
            return str(raw_id)
        if raw_id is None or raw_id == "":
            raise BadRecord("id is missing" if raw_id is None else "id is empty")
        if not isinstance(raw_id, str):
            raise BadRecord(f"id is {type(raw_id).__name__}, not a string")
        return raw_id


class FineWeb2(SourceFormat):
    """FineWeb2: parquet under ``data/{lang}_{Script}/train/``, labelled and scored by GlotLID."""

    name = "fineweb2"
    single_language = False

    def patterns(self, source: SourceSpec) -> list[str]:
        return ["data/*/train/*.parquet"]

    def records(self, folder: DataFolder, path: str, report: Report) -> Iterator[tuple[int, dict]]:
        return parquet_rows(folder, path, FINEWEB2_COLUMNS, report)

    def serves(self, source: SourceSpec, selection: LanguageSelection) -> bool:
        """Every language but English, and no code (FineWeb2 holds neither: they come from the other
        sources)."""
        named = {*selection.codes, *(language_code(label) for label in selection.labels)}
        return selection.everything or bool(named - {"eng", language_code(CODE)})

    def catalog(self, source: SourceSpec, folder: DataFolder, report: Report) -> list[tuple[str | None, str]]:
        """Files by their directory's label; ``*_removed`` (what FineWeb2 filtered out) is not read."""
        entries: list[tuple[str | None, str]] = []
        for path in self.files(source, folder):
            language = path.split("/")[1]
            if language.endswith("_removed"):
                continue
            if not is_language_label(language):
                report(path, None, f"invalid language directory {language!r}")
                continue
            entries.append((language, path))
        return entries

    def label(self, source: SourceSpec, path: str, text: str, record: dict) -> str:
        """The ``language`` + ``language_script`` columns as one label; nulls are bad records."""
        for field in ("language", "language_script"):
            if not isinstance(record[field], str):
                raise BadRecord(f"{field} is {'null' if record[field] is None else repr(record[field])}")
        label = f"{record['language']}_{record['language_script']}"
        if not is_language_label(label):
            raise BadRecord(f"invalid language label {label!r}")
        return label

    def score(self, record: dict) -> float:
        return score(record["language_score"], "language_score")


class Wikipedia(SourceFormat):
    """wikimedia/wikipedia: parquet under ``{date}.{wiki code}/``; the script is read per article."""

    name = "wikipedia"
    single_language = False

    def patterns(self, source: SourceSpec) -> list[str]:
        return [f"{source.date or '*'}.*/train-*.parquet"]

    def records(self, folder: DataFolder, path: str, report: Report) -> Iterator[tuple[int, dict]]:
        return parquet_rows(folder, path, WIKIPEDIA_COLUMNS, report)

    def serves(self, source: SourceSpec, selection: LanguageSelection) -> bool:
        return True

    def catalog(self, source: SourceSpec, folder: DataFolder, report: Report) -> list[tuple[str | None, str]]:
        """Files by their wiki's ISO 639-3 code (None if it maps to none); the script is known per article."""
        entries: list[tuple[str | None, str]] = []
        for path in self.files(source, folder):
            try:
                language = parse_label(path.split("/")[0].split(".", 1)[1])[0]
            except ValueError:
                language = None
            entries.append((language, path))
        return entries

    def label(self, source: SourceSpec, path: str, text: str, record: dict) -> str | None:
        """The wiki's language in the script of the text; an article without letters has no label
        (language ID drops it, reason ``no_script``)."""
        code = path.split("/")[0].split(".", 1)[1]
        try:
            return normalize_label(code, text)
        except NoScriptError:
            return None
        except ValueError as err:
            raise BadRecord(f"cannot map wiki code {code!r}: {err}") from None


class DCLM(SourceFormat):
    """DCLM-baseline: zstd JSON lines under ``global-shard_*/local-shard_*/``, scored by fastText."""

    name = "dclm"

    def patterns(self, source: SourceSpec) -> list[str]:
        return ["global-shard_*/local-shard_*/*.jsonl.zst*"]

    def records(self, folder: DataFolder, path: str, report: Report) -> Iterator[tuple[int, dict]]:
        return json_lines(folder, path, report)

    def score(self, record: dict) -> float | None:
        """DCLM's fastText English score; a page without one has none (DCLM kept only English pages)."""
        if "language_id_whole_page_fasttext" not in record:
            return None
        scores = record["language_id_whole_page_fasttext"]
        if not isinstance(scores, dict) or "en" not in scores:
            raise BadRecord(
                f"language_id_whole_page_fasttext is {scores!r}, not an object with an 'en' score"
            )
        return score(scores["en"], "language_id_whole_page_fasttext.en")

    def record_id(self, record: dict, path: str, line: int) -> str:
        """DCLM publishes no ids: a page is named by its WARC record, else by its file and line."""
        warc = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
        raw_id = warc.get("WARC-Record-ID") or f"{path}:{line}"
        if not isinstance(raw_id, str):
            raise BadRecord(f"metadata.WARC-Record-ID is {type(raw_id).__name__}, not a string")
        return raw_id


class Dolma(SourceFormat):
    """Dolma JSON lines (Dolmino) under ``data/{subset}/``; the recipe's ``subsets`` limit them."""

    name = "dolma"

    def patterns(self, source: SourceSpec) -> list[str]:
        return [
            f"data/{subset}/**/{pattern}" for subset in source.subsets or ("*",) for pattern in DOLMA_FILES
        ]

    def records(self, folder: DataFolder, path: str, report: Report) -> Iterator[tuple[int, dict]]:
        return json_lines(folder, path, report)


class ArXiv(Dolma):
    """The arXiv part of OLMoE-mix: Dolma JSON lines under ``data/arxiv/``."""

    name = "arxiv"

    def patterns(self, source: SourceSpec) -> list[str]:
        return [f"data/arxiv/**/{pattern}" for pattern in DOLMA_FILES]


class StarCoder(SourceFormat):
    """bigcode/starcoderdata: parquet under ``{programming language}/``, one source file per row.

    The recipe's ``subsets`` name the programming-language directories to read (``python``); without
    them every one is read, and none of the other kinds of data (:data:`STARCODER_OTHER_KINDS`).
    """

    name = "starcoder"
    text_field = "content"

    def patterns(self, source: SourceSpec) -> list[str]:
        return [f"{subset}/train-*.parquet" for subset in source.subsets or ("*",)]

    def files(self, source: SourceSpec, folder: DataFolder) -> list[str]:
        files = super().files(source, folder)
        if source.subsets:
            return files
        return [path for path in files if path.split("/")[0] not in STARCODER_OTHER_KINDS]

    def records(self, folder: DataFolder, path: str, report: Report) -> Iterator[tuple[int, dict]]:
        return parquet_rows(folder, path, STARCODER_COLUMNS, report)

    def record_id(self, record: dict, path: str, line: int) -> str:
        """``{programming language}/{id}``: the id need only be unique within its directory."""
        return f"{path.split('/')[0]}/{super().record_id(record, path, line)}"


FORMATS: dict[str, SourceFormat] = {
    fmt.name: fmt for fmt in (FineWeb2(), DCLM(), Dolma(), Wikipedia(), ArXiv(), StarCoder())
}


def source_format(source: SourceSpec) -> SourceFormat:
    """The format a recipe source names, checked against what the recipe says the source holds."""
    where = f"recipe sources.{source.name}"
    fmt = FORMATS.get(source.format)
    if fmt is None:
        raise ValueError(
            f"{where}.format: unknown format {source.format!r} (known formats: {', '.join(sorted(FORMATS))})"
        )
    if fmt.single_language and source.language is None:
        raise ValueError(
            f"{where}: format {fmt.name!r} holds one language; name it with `language:` (e.g. eng_Latn)"
        )
    if not fmt.single_language and source.language is not None:
        raise ValueError(f"{where}.language: format {fmt.name!r} labels each file itself; remove the key")
    if source.language is not None and not is_language_label(source.language):
        raise ValueError(f"{where}.language: {source.language!r} is not an xxx_Script label such as eng_Latn")
    return fmt
