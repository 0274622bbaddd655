"""Stream accounting: the labels steps count under are the labels the stats compiler reads back."""

from __future__ import annotations

from datatrove.data import Document

from pipeline.streams import DROPPED, SKIPPED, StreamFilter, StreamLabel, parse_label, stream_label


def _doc(text: str = "x") -> Document:
    return Document(text, "id", metadata={"source": "fineweb2", "language": "fra_Latn"})


def test_labels_read_back_as_written():
    doc = _doc()
    assert stream_label(doc, "kept") == "stream/fineweb2/fra_Latn/kept"
    assert parse_label(stream_label(doc, "tokens")) == StreamLabel("fineweb2", "fra_Latn", "tokens", None)
    assert parse_label(stream_label(doc, DROPPED, "too_large")) == StreamLabel(
        "fineweb2", "fra_Latn", DROPPED, "too_large"
    )
    assert parse_label(stream_label(doc, SKIPPED, "dup_n_grams")).detail == "dup_n_grams"
    assert parse_label("total") is None and parse_label("doc_len/mean") is None


class _ShortTextFilter(StreamFilter):
    name = "short"

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return len(doc.text) > 3 or (False, "too_short")


def test_a_stream_filter_counts_its_drops_by_stream_and_reason():
    step = _ShortTextFilter()
    kept = list(step.run(iter([_doc("long enough"), _doc("no"), _doc("ok")])))
    assert [doc.text for doc in kept] == ["long enough"]
    dropped = {
        label: stat.total for label, stat in step.stats.stats.items() if parse_label(label) is not None
    }
    assert dropped == {"stream/fineweb2/fra_Latn/dropped/too_short": 2}
