"""Language ID steps: LID-176 accuracy, GlotLID-format models, trust mode, the score filter."""

import pickle
from collections import Counter
from pathlib import Path

import pytest
from datatrove.data import Document

from mixtures.languages import CODE, language_code
from pipeline import lid
from pipeline.lid import LanguageIdentifier, LanguageScoreFilter, lid176_model_path

HELDOUT = Path(__file__).parent / "data" / "lid_heldout.tsv"
# Held-out language -> the label the tiny GlotLID-style model is trained with. `ara` is a
# macrolanguage on purpose: predictions must come out as FineWeb2's `arb`.
TINY_MODEL_LABELS = {
    "fra_Latn": "fra_Latn",
    "deu_Latn": "deu_Latn",
    "rus_Cyrl": "rus_Cyrl",
    "arb_Arab": "ara_Arab",
}


def read_heldout() -> list[tuple[str, str]]:
    rows = []
    for number, line in enumerate(HELDOUT.read_text(encoding="utf-8").splitlines(), start=1):
        label, sep, text = line.partition("\t")
        assert sep and text, f"{HELDOUT}:{number}: expected label<TAB>text"
        rows.append((label, text))
    return rows


def docs_of(texts, **metadata) -> list[Document]:
    return [Document(text=text, id=str(i), metadata=dict(metadata)) for i, text in enumerate(texts)]


def test_heldout_set_shape():
    rows = read_heldout()
    per_language = Counter(label for label, _ in rows)
    assert len(per_language) >= 18
    assert len({label.split("_")[1] for label in per_language}) >= 6
    assert min(per_language.values()) >= 5


def test_ft176_labels_heldout_set():
    rows = read_heldout()
    step = LanguageIdentifier("ft176")  # fails naming the path when `make setup` has not run
    out = list(step.run(docs_of(text for _, text in rows)))
    predicted = [doc.metadata["language"] for doc in out]
    correct = [gold == got for (gold, _), got in zip(rows, predicted, strict=True)]
    misses = [(gold, got) for (gold, _), got in zip(rows, predicted, strict=True) if gold != got]
    assert sum(correct) / len(rows) >= 0.9, misses
    fully_correct = {gold for gold, _ in rows} - {gold for gold, _ in misses}
    assert len(fully_correct) >= 15, misses
    assert all(0.0 < doc.metadata["language_score"] <= 1.0 for doc in out)


def test_ft176_keeps_source_label_when_prediction_differs():
    rows = dict(read_heldout())
    docs = [
        Document(
            text=rows["fra_Latn"] + "\n" + rows["fra_Latn"],
            id="a",
            metadata={"language": "eng_Latn", "language_score": 0.99},
        ),
        Document(text=rows["deu_Latn"], id="b", metadata={"language": "deu_Latn", "language_score": 0.5}),
        Document(text=rows["rus_Cyrl"], id="c"),
    ]
    out = list(LanguageIdentifier("ft176", batch_size=2).run(docs))
    assert [doc.metadata["language"] for doc in out] == ["fra_Latn", "deu_Latn", "rus_Cyrl"]
    assert out[0].metadata["source_language"] == "eng_Latn"
    assert "\n" in out[0].text  # the document itself is untouched
    assert "source_language" not in out[1].metadata
    assert "source_language" not in out[2].metadata
    assert out[1].metadata["language_score"] != 0.5


def test_missing_ft176_model_is_a_clear_error(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere" / "lid.176.ftz"
    with pytest.raises(FileNotFoundError, match="make setup") as err:
        LanguageIdentifier("ft176", model_path=missing)
    assert str(missing) in str(err.value)
    monkeypatch.setenv("MMBERT_DATA_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError) as err:
        LanguageIdentifier("ft176")
    assert str(lid176_model_path()) in str(err.value)


def test_bad_backend_settings_are_rejected():
    with pytest.raises(ValueError, match="cld3"):
        LanguageIdentifier("cld3")
    with pytest.raises(ValueError, match="model_path"):
        LanguageIdentifier("trust", model_path="model.bin")
    with pytest.raises(ValueError, match="batch_size"):
        LanguageIdentifier("trust", batch_size=0)


@pytest.fixture(scope="module")
def tiny_glotlid(tmp_path_factory) -> Path:
    """A fastText model with GlotLID-style labels, trained on the first four held-out lines per language."""
    import fasttext

    rows = read_heldout()
    lines = []
    for gold, label in TINY_MODEL_LABELS.items():
        texts = [text for row_label, text in rows if row_label == gold][:4]
        lines += [f"__label__{label} {text}" for text in texts]
    folder = tmp_path_factory.mktemp("glotlid")
    train = folder / "train.txt"
    train.write_text("\n".join(lines) + "\n", encoding="utf-8")
    model = fasttext.train_supervised(
        str(train), dim=16, epoch=200, lr=1.0, minn=2, maxn=4, wordNgrams=1, thread=1, seed=0, verbose=0
    )
    path = folder / "model_v3.bin"
    model.save_model(str(path))
    return path


def heldout_fifth_lines() -> tuple[list[str], list[str]]:
    """The tiny model's unseen text: the fifth held-out line of each of its languages, and their labels."""
    rows = read_heldout()
    gold = list(TINY_MODEL_LABELS)
    return [[text for label, text in rows if label == language][4] for language in gold], gold


def test_glotlid_backend_normalizes_labels_and_thresholds_apply(tiny_glotlid):
    texts, gold = heldout_fifth_lines()
    noise = "zq 4821 xk ## vv 77 qq"
    docs = docs_of([*texts, noise], language="fra_Latn", language_score=1.0)
    out = list(LanguageIdentifier("glotlid", model_path=tiny_glotlid).run(docs))
    labels = [doc.metadata["language"] for doc in out]
    assert labels[:4] == gold  # `__label__ara_Arab` came out as arb_Arab
    assert out[0].metadata.get("source_language") is None
    assert [doc.metadata["source_language"] for doc in out[1:4]] == ["fra_Latn"] * 3
    scores = [doc.metadata["language_score"] for doc in out]
    assert min(scores[:4]) > 0.7, scores
    assert scores[4] < 0.6, scores

    thresholds = {"fra_Latn": 0.6, "deu_Latn": 0.6, "rus_Cyrl": 0.6, "arb_Arab": 0.6}
    seen = []

    def threshold(label: str) -> float:
        seen.append(label)
        return thresholds.get(label, 0.6)

    keep = LanguageScoreFilter(None, threshold)
    results = [keep.filter(doc) for doc in out]
    assert results == [True, True, True, True, (False, "language_score")]
    assert seen == labels
    strict = LanguageScoreFilter(None, lambda label: 1.01 if label == "deu_Latn" else 0.0)
    assert [strict.filter(doc) for doc in out[:2]] == [True, (False, "language_score")]


def test_glotlid_default_path_goes_through_datatrove_cache(tiny_glotlid, tmp_path, monkeypatch):
    """Without model_path, GlotLID comes from datatrove's asset cache (hub layout), here pre-filled."""
    monkeypatch.setattr("huggingface_hub.utils._cache_assets.HF_ASSETS_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cached = tmp_path / "datatrove" / "lid" / "glotlid" / "cis-lmu_glotlid_model_v3.bin"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(tiny_glotlid.read_bytes())
    Path(f"{cached}.completed").touch()
    lid._load_hub_glotlid.cache_clear()
    try:
        texts, gold = heldout_fifth_lines()
        out = list(LanguageIdentifier("glotlid").run(docs_of(texts)))
    finally:
        lid._load_hub_glotlid.cache_clear()
    assert [doc.metadata["language"] for doc in out] == gold


def test_step_pickles_without_the_model(tiny_glotlid):
    step = LanguageIdentifier("glotlid", model_path=tiny_glotlid)
    list(step.run(docs_of(["Bonjour à tous les habitants du quartier"])))
    clone = pickle.loads(pickle.dumps(step))
    assert len(pickle.dumps(step)) < 20_000
    out = list(clone.run(docs_of(["Guten Morgen, wie geht es dir heute?"])))
    assert language_code(out[0].metadata["language"]) in {"fra", "deu", "rus", "arb"}


def test_trust_backend_normalizes_and_marks_unknown():
    docs = [
        Document(text="Bonjour à tous", id="wiki", metadata={"language": "fr", "language_score": 1.0}),
        Document(text="我们明天去北京", id="cn", metadata={"language": "zho_Hani", "language_score": 0.93}),
        Document(text="Bonjour", id="fw2", metadata={"language": "fra_Latn", "language_score": 0.88}),
        Document(text="no label at all", id="none", metadata={}),
        Document(text="hostile", id="bad", metadata={"language": "../../etc", "language_score": 1.0}),
    ]
    step = LanguageIdentifier("trust")
    out = {doc.id: doc.metadata for doc in step.run(docs)}
    assert out["wiki"] == {"language": "fra_Latn", "language_score": 1.0, "source_language": "fr"}
    assert out["cn"]["language"] == "cmn_Hani" and out["cn"]["language_score"] == 0.93
    assert out["fw2"] == {"language": "fra_Latn", "language_score": 0.88}
    assert out["none"]["language"] is None
    assert out["bad"]["language"] is None and out["bad"]["source_language"] == "../../etc"
    assert step.stats["fra_Latn"].total == 2
    assert step.stats["language_unknown"].total == 2
    assert step.stats["invalid_source_label"].total == 1


def labelled(label, score=0.9) -> Document:
    return Document(text="text", id=str(label), metadata={"language": label, "language_score": score})


def test_score_filter_selection():
    keep = LanguageScoreFilter(("fra", "srp_Latn", "zh", "zho_Hani"), lambda label: 0.5)
    assert keep.filter(labelled("fra_Latn")) is True
    assert keep.filter(labelled("fra_Arab")) is True
    assert keep.filter(labelled("srp_Latn")) is True
    assert keep.filter(labelled("cmn_Hani")) is True
    assert keep.filter(labelled("srp_Cyrl")) == (False, "language_not_selected")
    assert keep.filter(labelled("deu_Latn")) == (False, "language_not_selected")
    assert keep.filter(labelled(None)) == (False, "language_unknown")
    assert keep.filter(Document(text="t", id="x")) == (False, "language_unknown")
    assert keep.filter(labelled("fra_Latn", score=0.4)) == (False, "language_score")
    assert keep.filter(labelled("fra_Latn", score=None)) is True


def test_score_filter_keeps_everything_selected_when_languages_is_none():
    keep = LanguageScoreFilter(None, lambda label: 0.0)
    assert keep.filter(labelled("xho_Latn", score=0.0)) is True


def test_score_filter_counts_drop_reasons_in_a_pipeline():
    docs = [labelled("fra_Latn"), labelled("deu_Latn"), labelled("fra_Latn", 0.1), labelled(None)]
    step = LanguageScoreFilter(("fra",), lambda label: 0.5)
    kept = list(step.run(iter(docs)))
    assert [doc.metadata["language"] for doc in kept] == ["fra_Latn"]
    for reason in ("language_not_selected", "language_score", "language_unknown"):
        assert step.stats[f"dropped_{reason}"].total == 1


@pytest.mark.parametrize("entry", ["../fra", "fra_Latn/x", "klingon", ""])
def test_score_filter_rejects_bad_selection_entries_by_name(entry):
    with pytest.raises(ValueError) as err:
        LanguageScoreFilter((entry,), lambda label: 0.5)
    assert repr(entry) in str(err.value)


def test_a_text_without_letters_is_dropped_as_no_script_whatever_the_backend():
    texts = ["2024 — 12:30 / 14:45 !!! 1 + 1 = 2", "Bonjour à tous les habitants du quartier"]
    keep = LanguageScoreFilter(None, lambda label: 0.0)
    for backend in ("trust", "ft176"):
        step = LanguageIdentifier(backend)
        out = list(step.run(docs_of(texts, language="fr", language_score=None)))
        assert [doc.metadata["language"] for doc in out] == [None, "fra_Latn"], backend
        assert [keep.filter(doc) for doc in out] == [(False, "no_script"), True]
        assert step.stats["no_script"].total == 1


CODE_TEXT = 'def greet(name):\n    """Say hello."""\n    return f"Bonjour {name}, comment ça va ?"\n'


@pytest.mark.parametrize("backend", ["trust", "ft176", "glotlid"])
def test_code_keeps_its_label_whatever_the_backend(backend, tiny_glotlid):
    """A model would file a program under a natural language (this one's string is French): code keeps
    its reader's label, and is counted under it; the other documents are identified as ever."""
    prose = dict(read_heldout())["fra_Latn"]
    docs = [
        Document(text=CODE_TEXT, id="code", metadata={"language": CODE, "language_score": None}),
        Document(text=prose, id="prose", metadata={"language": "eng_Latn", "language_score": 0.9}),
    ]
    model = tiny_glotlid if backend == "glotlid" else None
    step = LanguageIdentifier(backend, model_path=model, batch_size=2)
    out = {doc.id: doc.metadata for doc in step.run(docs)}
    assert out["code"] == {"language": CODE, "language_score": None}
    assert step.stats[CODE].total == 1
    assert out["prose"]["language"] == ("eng_Latn" if backend == "trust" else "fra_Latn")


def test_the_score_filter_takes_code_where_the_languages_name_it():
    assert LanguageScoreFilter(("fra", CODE), lambda label: 0.5).filter(labelled(CODE, score=None)) is True
    assert LanguageScoreFilter(("fra",), lambda label: 0.5).filter(labelled(CODE)) == (
        False,
        "language_not_selected",
    )
