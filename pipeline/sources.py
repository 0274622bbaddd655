"""Reading a recipe source, in its format, as datatrove documents.

One reader class serves every source: the source's *format* (`pipeline.source_formats`,
named by the recipe's ``format:``) decides which files belong to which language and
how each file's raw records are read. Files are reached through fsspec, so
``hf://datasets/...``, ``s3://...`` and local paths share one code path;
``input_root`` maps hub URIs onto a local mirror with the hub's layout.

Every document carries ``metadata["source"]``, ``metadata["language"]``
(``xxx_Script``), ``metadata["language_score"]`` (None where the source publishes
none) and an id that is stable across runs (``{source}/{id in the source}``, or
``{source}/{file}:{line}`` when the source has no ids).

Fields are checked, never guessed: a record whose text is null, not a string, empty
(only whitespace or invisible characters) or not valid Unicode (invalid UTF-8, or a
lone UTF-16 surrogate that JSON can escape), or whose language, script or score is
null or malformed, is bad input (see `pipeline.bad_input`). Two things are repaired
because they carry no data: a UTF-8 byte-order mark before a JSON line is dropped,
and blank lines are skipped. A Wikipedia article without letters gets no language
label, and language ID drops it with reason ``no_script``.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

import regex
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.readers.base import BaseDiskReader

from mixtures.recipe import SourceSpec
from pipeline.bad_input import ErrorLog
from pipeline.labels import LanguageSelection
from pipeline.source_formats import BadRecord, source_format

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# A text holds something once it has a character that is not whitespace, a control or a format
# character (zero-width space, byte-order mark, ...).
_VISIBLE = regex.compile(r"[^\s\p{Cc}\p{Cf}]")


def lone_surrogate(value: str) -> int | None:
    """Where ``value`` holds a lone UTF-16 surrogate, which JSON can escape (``\\ud83d``) but no
    UTF-8 text can hold; None when it holds none."""
    bad = _LONE_SURROGATE.search(value)
    return None if bad is None else bad.start()


def _check_unicode(value: str, field: str) -> None:
    if (at := lone_surrogate(value)) is not None:
        surrogate = f"U+{ord(value[at]):04X}"
        raise BadRecord(f"invalid Unicode in {field}: lone surrogate {surrogate} at character {at}")


def _text(record: dict, field: str) -> str:
    text = record.get(field)
    if not isinstance(text, str):
        if text is None:
            raise BadRecord(f"{field} is null" if field in record else f"no {field} field")
        raise BadRecord(f"{field} is {type(text).__name__}, not a string")
    _check_unicode(text, field)
    if _VISIBLE.search(text) is None:
        raise BadRecord("empty text (nothing but whitespace or invisible characters)")
    return text


def resolve_uri(uri: str, input_root: str | None) -> str:
    """Map a source URI onto a local mirror: ``hf://datasets/<repo>/x`` -> ``input_root/datasets/<repo>/x``.

    Any ``scheme://path`` maps to ``input_root/path``, which is also where `mmbert-data download`
    puts a source's files; plain local paths are used as they are.
    """
    if input_root and "://" in uri:
        return posixpath.join(str(input_root), uri.split("://", 1)[1].lstrip("/"))
    return uri


class SourceReader(BaseDiskReader):
    """Reads one recipe source, in its format, for the selected languages; bad input follows ``on_error``."""

    name = "📚 source reader"

    def __init__(
        self,
        source: SourceSpec,
        languages: tuple[str, ...] | None = None,
        input_root: str | None = None,
        on_error: str = "fail",
        errors_dir: str | None = None,
        limit: int = -1,
    ):
        super().__init__(resolve_uri(source.uri, input_root), limit=limit)
        self.source = source
        self.format = source_format(source)
        self.selection = LanguageSelection.parse(languages)
        self.on_error = on_error
        self.errors_dir = errors_dir
        self.errors = ErrorLog(on_error)

    # ---- which files, in which language -------------------------------------------------------------
    def patterns(self) -> list[str]:
        """The glob patterns of the source's files, relative to its root (its hub layout)."""
        return self.format.patterns(self.source)

    def serves_selection(self) -> bool:
        """Whether the selection asks for a language this source publishes (a single-language source
        its own, FineWeb2 every language but English, Wikipedia every language)."""
        return self.format.serves(self.source, self.selection)

    def catalog(self) -> list[tuple[str | None, str]]:
        """Every file of the source, whatever the selection, with the language it holds, in a stable
        order: FineWeb2's directory label, a wiki's ISO 639-3 code (None if it maps to none; its
        script is known per article), the recipe's ``language`` for a single-language source."""
        return self.format.catalog(self.source, self.data_folder, self._report)

    def list_files(self) -> list[str]:
        """Files of the selected languages, relative to the source root, in a stable order."""
        if not self.serves_selection():
            return []
        return [path for language, path in self.catalog() if self.selection.selects(language)]

    def _report(self, path: str, line: int | None, error: str) -> None:
        self.errors.report(self.source.name, self.data_folder.resolve_paths(path), line, error)

    # ---- records -----------------------------------------------------------------------------------
    def _document(self, path: str, line: int, record: dict) -> Document:
        """The document a raw record stands for; raises BadRecord naming the field at fault."""
        text = _text(record, self.format.text_field)
        label = self.format.label(self.source, path, text, record)
        score = self.format.score(record)
        raw_id = self.format.record_id(record, path, line)
        _check_unicode(raw_id, "id")
        metadata = {"source": self.source.name, "language": label, "language_score": score}
        if (size := record.get("minhash_cluster_size")) is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise BadRecord(f"minhash_cluster_size is {size!r}, not a positive integer")
            metadata["minhash_cluster_size"] = size
        return Document(text=text, id=f"{self.source.name}/{raw_id}", metadata=metadata)

    def read_file(self, filepath: str) -> DocumentsPipeline:
        for line, record in self.format.records(self.data_folder, filepath, self._report):
            try:
                yield self._document(filepath, line, record)
            except BadRecord as err:
                self._report(filepath, line, str(err))

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if data:
            yield from data
        self.errors = ErrorLog(self.on_error)
        files = self.list_files()[rank::world_size]
        if files:  # a task without files shows no empty progress bar
            yield from self.read_files_shard(files)
        self.stat_update("input_errors", value=len(self.errors.problems))
        if self.errors_dir is not None:
            self.errors.write(Path(self.errors_dir) / f"{self.source.name}-{rank:05d}.jsonl")
