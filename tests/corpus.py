"""Small corpora in the hub layouts of the six sources, generated for tests and benchmarks."""

from __future__ import annotations

import gzip
import json
import random
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
import zstandard

from mixtures.recipe import DEFAULT_RECIPE

FINEWEB2 = "datasets/HuggingFaceFW/fineweb-2"
DCLM = "datasets/mlfoundations/dclm-baseline-1.0"
DOLMINO = "datasets/allenai/dolmino-mix-1124"
WIKIPEDIA = "datasets/wikimedia/wikipedia"
ARXIV = "datasets/allenai/OLMoE-mix-0924"
STARCODER = "datasets/bigcode/starcoderdata"

# Word lists that make Gopher-passing prose: function words (the stop words) plus content words.
VOCABULARY = {
    "eng_Latn": (
        "the of and to in is that for it with as was on are by this be from or have an they which "
        "river market village teacher morning window history garden kitchen letter station winter "
        "mountain harbour library painter journey question machine evening bridge forest student "
        "carries builds remembers follows opens describes watches repairs collects writes visits"
    ).split(),
    "fra_Latn": (
        "le la les et des du un une est dans pour que qui sur avec par pas plus ce il elle nous "
        "rivière marché village professeur matin fenêtre histoire jardin cuisine lettre gare hiver "
        "montagne port bibliothèque peintre voyage question machine soirée pont forêt étudiant porte "
        "construit rappelle suit ouvre décrit regarde répare rassemble écrit visite"
    ).split(),
    "deu_Latn": (
        "der die das und ist in zu den mit von nicht sich auf für dem ein eine auch als wir sie Fluss "
        "Markt Dorf Lehrer Morgen Fenster Geschichte Garten Küche Brief Bahnhof Winter Berg Hafen "
        "Bibliothek Maler Reise Frage Maschine Abend Brücke Wald Student trägt baut erinnert folgt "
        "öffnet beschreibt beobachtet repariert sammelt schreibt besucht"
    ).split(),
    "rus_Cyrl": (
        "и в не на что с по это как он она они мы из для от до так но же река рынок деревня учитель "
        "утро окно история сад кухня письмо вокзал зима гора гавань библиотека художник путешествие "
        "вопрос машина вечер мост лес студент несёт строит помнит следует открывает описывает смотрит "
        "чинит собирает пишет посещает"
    ).split(),
}
STOPWORDS = {label: words[:20] for label, words in VOCABULARY.items()}


def prose(rng: random.Random, language: str, sentences: int = 12) -> str:
    """Plausible text: sentences of 8-16 words with punctuation, in paragraphs of 3 sentences."""
    words = VOCABULARY[language]
    out, paragraph = [], []
    for i in range(sentences):
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(8, 16)))
        paragraph.append(sentence[0].upper() + sentence[1:] + rng.choice(".!?.."))
        if i % 3 == 2:
            out.append(" ".join(paragraph))
            paragraph = []
    if paragraph:
        out.append(" ".join(paragraph))
    return "\n\n".join(out)


def program(rng: random.Random, functions: int = 6) -> str:
    """A Python module of small functions over random names and numbers: code, different every call."""
    words = VOCABULARY["eng_Latn"][20:]  # the words after the stop words, as identifiers
    lines = [f'"""Helpers for the {rng.choice(words)} {rng.choice(words)}."""', ""]
    for _ in range(functions):
        name, first, second = rng.sample(words, 3)
        lines += [
            "",
            f"def {name}_{rng.randrange(1000)}({first}: int, {second}: int = {rng.randrange(10)}) -> int:",
            f"    if {first} > {rng.randrange(100)}:",
            f"        return {first} * {rng.randrange(2, 50)} - {second}",
            f"    return {second} + {rng.randrange(1000)}",
            "",
        ]
    return "\n".join(lines)


def _doc_id(*parts: object) -> str:
    return f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, '/'.join(map(str, parts)))}>"


def write_fineweb2(
    root: Path, label: str, texts: list[str], score: float = 0.95, name: str = "000_00000"
) -> Path:
    code, script = label.split("_")
    path = root / FINEWEB2 / "data" / label / "train" / f"{name}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(texts)
    table = pa.table(
        {
            "text": texts,
            "id": [_doc_id(label, name, i) for i in range(n)],
            "dump": ["CC-MAIN-2024-10"] * n,
            "url": [f"https://example.org/{label}/{i}" for i in range(n)],
            "date": ["2024-02-21T12:00:00Z"] * n,
            "file_path": ["s3://commoncrawl/crawl-data/CC-MAIN-2024-10/segments/x.warc.gz"] * n,
            "language": [code] * n,
            "language_score": [score] * n,
            "language_script": [script] * n,
            "minhash_cluster_size": pa.array([1] * n, pa.int64()),
            "top_langs": [json.dumps({f"{label}_score": score})] * n,
        }
    )
    pq.write_table(table, path)
    return path


def write_wikipedia(root: Path, code: str, texts: list[str], date: str = "20231101") -> Path:
    path = root / WIKIPEDIA / f"{date}.{code}" / "train-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(texts)
    pq.write_table(
        pa.table(
            {
                "id": [str(1000 + i) for i in range(n)],
                "url": [f"https://{code}.wikipedia.org/wiki?curid={1000 + i}" for i in range(n)],
                "title": [f"Article {i}" for i in range(n)],
                "text": texts,
            }
        ),
        path,
    )
    return path


def _json_lines(records: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def write_dclm(root: Path, texts: list[str], shard: int = 0) -> Path:
    path = (
        root
        / DCLM
        / "global-shard_01_of_10"
        / "local-shard_0_of_10"
        / f"shard_{shard:08d}_processed.jsonl.zstd"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    records = [
        {
            "text": t,
            "url": f"https://example.com/{shard}/{i}",
            "language_id_whole_page_fasttext": {"en": 0.97},
        }
        for i, t in enumerate(texts)
    ]
    path.write_bytes(zstandard.ZstdCompressor().compress(_json_lines(records)))
    return path


def _dolma(texts: list[str], prefix: str) -> list[dict]:
    return [
        {"id": f"{prefix}-{i}", "text": t, "added": "2024-11-24", "created": "2024-01-01", "metadata": {}}
        for i, t in enumerate(texts)
    ]


def write_dolmino(root: Path, subset: str, texts: list[str]) -> Path:
    path = root / DOLMINO / "data" / subset / "part-0000.json.zst"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(zstandard.ZstdCompressor().compress(_json_lines(_dolma(texts, subset))))
    return path


def write_arxiv(root: Path, texts: list[str]) -> Path:
    path = root / ARXIV / "data" / "arxiv" / "arxiv-0000.json.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(_json_lines(_dolma(texts, "arxiv")), mtime=0))
    return path


def write_starcoder(root: Path, language: str, texts: list[str]) -> Path:
    """One parquet of StarCoderData's layout: source files of one programming language."""
    path = root / STARCODER / language / "train-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(texts)
    table = pa.table(
        {
            "max_stars_repo_path": [f"src/module_{i}.py" for i in range(n)],
            "max_stars_repo_name": [f"example/{language}-tools" for _ in range(n)],
            "max_stars_count": pa.array([i + 1 for i in range(n)], pa.int64()),
            "id": [str(i) for i in range(n)],
            "content": texts,
        }
    )
    pq.write_table(table, path)
    return path


def small_hub(root: Path, docs_per_language: int = 6, seed: int = 0) -> dict[str, list[str]]:
    """All six sources with clean documents; returns the texts written per language (code's as
    ``zxx_Zyyy``)."""
    rng = random.Random(seed)
    written: dict[str, list[str]] = {}
    for label in ("fra_Latn", "deu_Latn", "rus_Cyrl"):
        texts = [prose(rng, label) for _ in range(docs_per_language)]
        write_fineweb2(root, label, texts)
        written[label] = texts
    english = [prose(rng, "eng_Latn") for _ in range(4 * docs_per_language)]
    q = docs_per_language
    write_dclm(root, english[:q])
    write_dolmino(root, "flan", english[q : 2 * q])
    write_arxiv(root, english[2 * q : 3 * q])
    write_wikipedia(root, "fr", written["fra_Latn"][:2])
    written["eng_Latn"] = english[: 3 * q]
    written["zxx_Zyyy"] = [program(rng) for _ in range(q)]
    write_starcoder(root, "python", written["zxx_Zyyy"])
    return written


def build_args(hub: Path, out: Path, *extra: str, phase: str = "pretrain") -> list[str]:
    """`mmbert-data build` arguments reading a generated hub with its own sample tokenizer."""
    return [
        "build",
        "--phase",
        phase,
        "--input-root",
        str(hub),
        "--output",
        str(out),
        "--tokenizer",
        f"sample:{hub}",
        *extra,
    ]


def file_recipe(path: Path, hub: Path) -> Path:
    """Write to ``path`` the bundled recipe with its ``hf://`` URIs replaced by ``file://`` URIs of a
    local copy of the hub (``hub/datasets/...``): a remote source, read without the network."""
    raw = yaml.safe_load(Path(DEFAULT_RECIPE).read_text())
    for spec in raw["sources"].values():
        spec["uri"] = spec["uri"].replace("hf://", f"file://{hub}/")
    path.write_text(yaml.safe_dump(raw))
    return path
