"""The bundled sample corpus: small, multilingual, in the hub layouts, and as the manifest says."""

from __future__ import annotations

import gzip
import json
import random
import re
import tarfile
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
import zstandard

from mixtures.recipe import load_recipe
from pipeline.quality import FINEWEB2_CONFIGS
from pipeline.sample import make_sample
from tests.conftest import sample_documents

SAMPLE = Path(make_sample.__file__).parent
HUB = SAMPLE / "hub"
FINEWEB2 = HUB / make_sample.FINEWEB2
STARCODER = HUB / make_sample.STARCODER
KINDS = {
    "clean",
    "boilerplate",
    "repetition",
    "wrong_language",
    "too_short",
    "near_duplicate",
    "duplicate",
    "empty",
}
DOLMA_FIELDS = {"id", "text", "added", "created", "source", "metadata"}
DCLM_FIELDS = {
    "bff_contained_ngram_count_before_dedupe",
    "language_id_whole_page_fasttext",
    "metadata",
    "previous_word_count",
    "text",
    "url",
    "warcinfo",
    "fasttext_openhermes_reddit_eli5_vs_rw_v2_bigram_200k_train_prob",
}
FILTER_CONFIG_KEYS = {
    "language_score",
    "dup_line_frac",
    "dup_n_grams",
    "top_n_grams",
    "line_punct_thr",
    "min_avg_word_length",
    "max_avg_word_length",
    "max_non_alpha_words_ratio",
    "new_line_ratio",
    "stopwords",
}


def json_lines(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode("utf-8").splitlines()]


def read_zstd(path: Path) -> list[dict]:
    with zstandard.ZstdDecompressor().stream_reader(path.open("rb")) as reader:
        return json_lines(reader.read())


@pytest.fixture(scope="module")
def manifest() -> list[dict]:
    return sample_documents()


@pytest.fixture(scope="module")
def fineweb2() -> dict[str, list[dict]]:
    """FineWeb2 rows by subset, read from every parquet under data/{subset}/train/."""
    return {
        path.parts[-3]: pq.read_table(path).to_pylist() for path in sorted(FINEWEB2.glob("*/train/*.parquet"))
    }


@pytest.fixture(scope="module")
def documents() -> dict[str, list[tuple[str, str]]]:
    """(id, text) of every document of every file, keyed by the file's path under the hub; a code file's
    id is the reader's, ``{programming language}/{id}``."""
    found: dict[str, list[tuple[str, str]]] = {}
    for path in sorted(p for p in HUB.rglob("*") if p.is_file()):
        key = path.relative_to(HUB).as_posix()
        if path.is_relative_to(STARCODER):
            rows = pq.read_table(path).to_pylist()
            found[key] = [(f"{path.parent.name}/{row['id']}", row["content"]) for row in rows]
            continue
        if path.name.endswith(".parquet"):
            rows = pq.read_table(path).to_pylist()
        elif path.name.endswith(".zst") or path.name.endswith(".zstd"):
            rows = read_zstd(path)
        elif path.name.endswith(".json.gz"):
            rows = json_lines(gzip.decompress(path.read_bytes()))
        else:
            raise AssertionError(f"unexpected file in the sample: {key}")
        ids = [row["metadata"]["WARC-Record-ID"] if "warcinfo" in row else row["id"] for row in rows]
        found[key] = list(zip(ids, (row["text"] for row in rows), strict=True))
    return found


def test_sample_is_small():
    total = sum(p.stat().st_size for p in HUB.rglob("*") if p.is_file())
    assert 100_000 < total <= 5_000_000


def test_fineweb2_languages_scripts_and_phases(fineweb2):
    labels = set(fineweb2)
    assert all(re.fullmatch(r"[a-z]{3}_[A-Z][a-z]{3}", label) for label in labels)
    assert len(labels) >= 20
    assert len({label.split("_")[1] for label in labels}) >= 6
    recipe = load_recipe()
    pretrain = set(recipe.phase("pretrain").languages)
    midtrain = set(recipe.phase("midtrain").languages)
    codes = {label.split("_")[0] for label in labels}
    assert len(codes & pretrain) >= 5
    assert len((codes & midtrain) - pretrain) >= 5
    assert len(codes - midtrain) >= 5, "languages only the decay phase takes"


def test_fineweb2_columns_and_values(fineweb2):
    for label, rows in fineweb2.items():
        path = FINEWEB2 / label / "train" / "000_00000.parquet"
        assert pq.read_schema(path).remove_metadata() == make_sample.FINEWEB2_SCHEMA, label
        iso, script = label.split("_")
        for row in rows:
            assert re.fullmatch(r"<urn:uuid:[0-9a-f-]{36}>", row["id"])
            assert re.fullmatch(r"CC-MAIN-20\d\d-\d\d", row["dump"])
            assert row["date"].startswith(row["dump"][8:12])
            assert row["file_path"].startswith(f"s3://commoncrawl/crawl-data/{row['dump']}/")
            assert (row["language"], row["language_script"]) == (iso, script)
            assert 0.0 < row["language_score"] < 1.0
            assert row["minhash_cluster_size"] >= 1
            assert json.loads(row["top_langs"])[f"{label}_score"] == row["language_score"]


def test_other_sources_open_in_their_layouts():
    dclm = read_zstd(HUB / make_sample.DCLM_FILE)
    assert dclm and all(set(row) == DCLM_FIELDS for row in dclm)
    assert all(set(row["language_id_whole_page_fasttext"]) == {"en"} for row in dclm)

    dolmino = HUB / make_sample.DOLMINO
    subsets = {path.relative_to(dolmino).parts[0] for path in dolmino.rglob("*.json.zst")}
    assert subsets == set(load_recipe().sources["dolmino"].subsets)
    for path in dolmino.rglob("*.json.zst"):
        assert all(set(row) == DOLMA_FIELDS for row in read_zstd(path)), path

    arxiv = json_lines(gzip.decompress((HUB / make_sample.ARXIV_FILE).read_bytes()))
    assert arxiv and all(set(row) == DOLMA_FIELDS and row["source"] == "arxiv" for row in arxiv)
    assert all("\\section{" in row["text"] for row in arxiv)

    code = sorted(STARCODER.glob("*/train-00000-of-00001.parquet"))
    assert len(code) >= 2  # programming languages
    for path in code:
        assert pq.read_schema(path).remove_metadata() == make_sample.STARCODER_SCHEMA
        rows = pq.read_table(path).to_pylist()
        assert rows and [row["id"] for row in rows] == [str(n) for n in range(len(rows))]  # per directory
        if path.parent.name == "python":
            for row in rows:
                compile(row["content"], row["max_stars_repo_path"], "exec")  # Python indeed

    wikis = sorted((HUB / make_sample.WIKIPEDIA).glob("20231101.*/train-00000-of-00001.parquet"))
    assert len(wikis) >= 6
    for path in wikis:
        assert pq.read_schema(path).remove_metadata() == make_sample.WIKIPEDIA_SCHEMA
        code = path.parent.name.split(".")[1]
        for row in pq.read_table(path).to_pylist():
            assert row["url"].startswith(f"https://{code}.wikipedia.org/wiki/")
            assert row["title"] and row["text"]


def test_gzip_header_has_no_timestamp_or_name():
    """Regenerating the sample must give identical bytes, so gzip's header carries neither."""
    header = (HUB / make_sample.ARXIV_FILE).read_bytes()[:10]
    assert header[3] == 0, "no FNAME flag"
    assert header[4:8] == b"\0\0\0\0", "mtime 0"


def test_ids_are_unique_and_the_manifest_lists_every_document(manifest, documents):
    all_ids = [doc_id for docs in documents.values() for doc_id, _ in docs]
    assert len(all_ids) == len(set(all_ids))
    listed = {(row["path"], int(row["row"])): row["id"] for row in manifest}
    found = {(path, n): doc_id for path, docs in documents.items() for n, (doc_id, _) in enumerate(docs)}
    assert listed == found


def test_every_kind_of_bad_document_is_present(manifest, documents):
    kinds = Counter(row["kind"] for row in manifest)
    assert set(kinds) == KINDS
    assert kinds["near_duplicate"] >= 5 and kinds["boilerplate"] >= 3 and kinds["wrong_language"] >= 3
    assert kinds["clean"] > 0.8 * len(manifest)
    text = {doc_id: body for docs in documents.values() for doc_id, body in docs}
    for row in manifest:
        body = text[row["id"]]
        if row["kind"] == "empty":
            assert body == ""
        elif row["kind"] == "too_short":
            assert 0 < len(body.split()) < 10
        elif row["kind"] == "boilerplate":
            lines = body.split("\n")
            assert len(lines) >= 10 and not any(line.endswith((".", "!", "?", "。")) for line in lines)
        elif row["kind"] == "repetition":
            words = body.split()
            trigrams = Counter(zip(words, words[1:], words[2:], strict=False))
            assert trigrams.most_common(1)[0][1] >= 4
        elif row["kind"] == "near_duplicate":
            original = text[row["detail"].split(",")[0].removeprefix("copy of ")]
            assert body != original and len(body) >= 0.95 * len(original)
        elif row["kind"] == "duplicate":
            assert body == text[row["detail"].split(",")[0].removeprefix("copy of ")]


def test_wrong_language_documents_have_low_scores(manifest, fineweb2):
    by_id = {row["id"]: row for rows in fineweb2.values() for row in rows}
    wrong = [row for row in manifest if row["kind"] == "wrong_language"]
    for entry in wrong:
        row = by_id[entry["id"]]
        assert row["language_score"] < 0.3
        assert entry["detail"].removeprefix("text in ") + "_score" in json.loads(row["top_langs"])
    clean = [
        by_id[row["id"]]["language_score"]
        for row in manifest
        if row["source"] == "fineweb2" and row["kind"] == "clean"
    ]
    assert min(clean) > 0.85


def test_each_language_keeps_several_clean_documents(manifest, fineweb2):
    rows = [row for row in manifest if row["source"] == "fineweb2" and row["kind"] == "clean"]
    clean = Counter(row["language"] for row in rows)
    assert set(clean) == set(fineweb2)
    assert min(clean.values()) >= 4
    text = {row["id"]: row["text"] for subset in fineweb2.values() for row in subset}
    for row in rows:
        lines = text[row["id"]].split("\n")
        assert make_sample.size(text[row["id"]], row["language"].split("_")[1]) >= 70, row["id"]
        assert len(lines) == len(set(lines)), f"{row['id']}: duplicated lines"


def test_filter_configs_are_fineweb2s_own_for_some_of_the_samples_languages(fineweb2):
    with tarfile.open(FINEWEB2_CONFIGS, "r:xz") as archive:
        shipped = {member.name: archive.extractfile(member).read() for member in archive}
    configs = sorted((SAMPLE / "filter-configs").glob("*.yml"))
    assert len(configs) >= 6
    for path in configs:
        assert path.read_bytes() == shipped[path.name], f"{path.name} differs from FineWeb2's"
        assert set(yaml.safe_load(path.read_text(encoding="utf-8"))) == FILTER_CONFIG_KEYS, path.name
        assert path.stem in fineweb2, f"{path.name}: no such subset in the sample"


HTML = """<!doctype html><html><body><h1>The  Title</h1>
<header><h2>Preamble</h2><p>Whereas one,</p><p>whereas two.</p></header>
{articles}
</body></html>"""


def declaration_html(articles: int) -> str:
    body = "".join(
        f'<article data-number="{n}"><h2>Article {n}</h2>'
        f"<ol><li><p>Text of\n  article {n}.</p></li></ol></article>"
        for n in range(1, articles + 1)
    )
    return HTML.format(articles=body)


def test_parse_declaration_reads_title_preamble_and_articles():
    parsed = make_sample.parse_declaration(declaration_html(30), "test")
    assert parsed.title == "The Title"
    assert parsed.preamble == ["Whereas one,", "whereas two."]
    assert [a.heading for a in parsed.articles][:2] == ["Article 1", "Article 2"]
    assert parsed.articles[4].paragraphs == ["Text of article 5."]
    with pytest.raises(ValueError, match="test: expected a title and 30 articles, found 29"):
        make_sample.parse_declaration(declaration_html(29), "test")


def test_pack_keeps_order_and_merges_a_short_tail():
    paragraphs = [" ".join(["word"] * 40) + f" end{i}." for i in range(23)]
    groups = make_sample.pack(paragraphs, "Latn", random.Random(0), low=100, high=150)
    assert [p for group in groups for p in group] == paragraphs
    sizes = [make_sample.size("\n".join(group), "Latn") for group in groups]
    assert all(size >= 50 for size in sizes) and all(size >= 100 for size in sizes[:-1])


def test_near_duplicate_changes_exactly_the_requested_words():
    text = "\n".join(" ".join(f"word{i}_{j}" for j in range(30)) for i in range(5))
    copy = make_sample.near_duplicate(text, "Latn", changes=4, rng=random.Random(1))
    old, new = text.split(), copy.split()
    assert len(old) == len(new) and sum(a != b for a, b in zip(old, new, strict=True)) == 4
    assert copy.count("\n") == text.count("\n")
    hani = "人人生而自由在尊严和权利上一律平等"
    hani_copy = make_sample.near_duplicate(hani, "Hani", changes=3, rng=random.Random(2))
    assert sum(a != b for a, b in zip(hani, hani_copy, strict=True)) == 3


def test_manifest_groups_near_duplicates_with_their_original(manifest):
    copies: dict[str, list[str]] = defaultdict(list)
    kinds = {row["id"]: row["kind"] for row in manifest}
    for row in manifest:
        if row["kind"] == "near_duplicate":
            original = row["detail"].split(",")[0].removeprefix("copy of ")
            copies[original].append(row["id"])
    assert copies and all(kinds[original] == "clean" for original in copies)
    assert max(len(ids) for ids in copies.values()) >= 2
