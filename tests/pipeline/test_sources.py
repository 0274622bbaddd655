"""Readers per source through hub URIs mapped onto a local mirror; source formats; download; tokenizers."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from datatrove.io import DataFolder
from typer.testing import CliRunner

from cli.data import app
from mixtures.compiler import compile_phase
from mixtures.counts import read_stats
from mixtures.recipe import RecipeError, SourceSpec, load_recipe
from pipeline.build import Build
from pipeline.build_options import BuildOptions
from pipeline.download import download_phase
from pipeline.source_formats import FORMATS, Report, SourceFormat
from pipeline.sources import SourceReader, resolve_uri
from pipeline.tokenizer import SPECIAL_TOKENS, load_tokenizer, sample_tokenizer_path
from tests.corpus import STARCODER, build_args, file_recipe, prose, small_hub, write_starcoder

RECIPE = load_recipe()
runner = CliRunner()


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MMBERT_DATA_CACHE", str(tmp_path / "cache"))


def test_hub_uris_map_onto_a_mirror():
    assert (
        resolve_uri("hf://datasets/HuggingFaceFW/fineweb-2", "/mirror")
        == "/mirror/datasets/HuggingFaceFW/fineweb-2"
    )
    assert (
        resolve_uri("hf://datasets/HuggingFaceFW/fineweb-2", None) == "hf://datasets/HuggingFaceFW/fineweb-2"
    )
    assert resolve_uri("/data/local", "/mirror") == "/data/local"


@pytest.mark.parametrize(
    ("source", "languages", "count"),
    [
        ("fineweb2", {"fra_Latn", "deu_Latn", "rus_Cyrl"}, 18),
        ("dclm", {"eng_Latn"}, 6),
        ("dolmino", {"eng_Latn"}, 6),
        ("wikipedia", {"fra_Latn"}, 2),
        ("arxiv", {"eng_Latn"}, 6),
        ("code", {"zxx_Zyyy"}, 6),
    ],
)
def test_each_source_reads_its_hub_layout(tmp_path, source, languages, count):
    written = small_hub(tmp_path / "hub")
    spec = RECIPE.sources[source]
    assert spec.uri.startswith("hf://datasets/")

    def read() -> list:
        reader = SourceReader(spec, languages=None, input_root=str(tmp_path / "hub"))
        return list(reader.run())

    docs = read()
    assert len(docs) == count
    assert {d.metadata["language"] for d in docs} == languages
    assert {d.metadata["source"] for d in docs} == {source}
    assert all(d.id.startswith(f"{source}/") for d in docs)
    assert len({d.id for d in docs}) == count
    assert [d.id for d in read()] == [d.id for d in docs]  # stable across runs
    texts = {d.text for d in docs}
    if source == "fineweb2":
        assert texts == set(written["fra_Latn"]) | set(written["deu_Latn"]) | set(written["rus_Cyrl"])
        assert all(0 < d.metadata["language_score"] <= 1 for d in docs)
    elif source == "code":
        assert texts == set(written["zxx_Zyyy"])
    else:
        assert texts <= set(written["eng_Latn"]) | set(written["fra_Latn"])


def test_starcoder_reads_a_directory_per_programming_language(tmp_path):
    """A file's text is its `content`, its id `{directory}/{id}` (ids restart in each directory); the
    directories of other kinds of data, in other columns, are read only where `subsets` names them."""
    hub = tmp_path / "hub"
    write_starcoder(hub, "python", ["print(1)\n", "print(2)\n"])
    write_starcoder(hub, "go", ["package main\n"])
    commits = hub / STARCODER / "git-commits-cleaned" / "train-00000-of-00001.parquet"
    commits.parent.mkdir(parents=True)
    pq.write_table(pa.table({"commit": ["0f3a"], "message": ["Fix the build"]}), commits)
    spec = RECIPE.sources["code"]
    docs = list(SourceReader(spec, input_root=str(hub)).run())
    assert [(d.id, d.text) for d in docs] == [
        ("code/go/0", "package main\n"),
        ("code/python/0", "print(1)\n"),
        ("code/python/1", "print(2)\n"),
    ]
    assert {(d.metadata["language"], d.metadata["language_score"]) for d in docs} == {("zxx_Zyyy", None)}
    python = SourceReader(replace(spec, subsets=("python",)), input_root=str(hub))
    assert python.list_files() == ["python/train-00000-of-00001.parquet"]
    named = SourceReader(
        replace(spec, subsets=("git-commits-cleaned",)), input_root=str(hub), on_error="skip"
    )
    assert list(named.run()) == []
    assert [problem.error for problem in named.errors.problems] == ["missing column(s) ['id', 'content']"]


def test_language_selection_limits_the_files_read(tmp_path):
    small_hub(tmp_path / "hub")
    reader = SourceReader(RECIPE.sources["fineweb2"], languages=("rus",), input_root=str(tmp_path / "hub"))
    assert reader.list_files() == ["data/rus_Cyrl/train/000_00000.parquet"]
    english_only = SourceReader(RECIPE.sources["dclm"], languages=("fra",), input_root=str(tmp_path / "hub"))
    assert english_only.list_files() == []


def test_tasks_split_files_without_overlap(tmp_path):
    small_hub(tmp_path / "hub")
    reader = SourceReader(RECIPE.sources["fineweb2"], input_root=str(tmp_path / "hub"))
    ids = [[d.id for d in reader.run(rank=r, world_size=2)] for r in range(2)]
    assert ids[0] and ids[1] and not set(ids[0]) & set(ids[1])
    assert len(ids[0]) + len(ids[1]) == 18


class PlainTextFiles(SourceFormat):
    """A toy new format: one document per ``.txt`` file under ``notes/``, named by its path."""

    name = "plain-text"

    def patterns(self, source: SourceSpec) -> list[str]:
        return ["notes/*.txt"]

    def records(self, folder: DataFolder, path: str, report: Report) -> Iterator[tuple[int, dict]]:
        with folder.open(path, "rt", encoding="utf-8") as f:
            yield 1, {"text": f.read(), "id": path}


def _recipe_with(tmp_path: Path, edit) -> Path:
    raw = yaml.safe_load(RECIPE.path.read_text())
    edit(raw)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _add_notes(raw: dict, fmt: str = "plain-text") -> None:
    """A new source in the recipe: where it lives, its format and language, and a budget."""
    raw["sources"]["notes"] = {"format": fmt, "uri": "hf://datasets/example/notes", "language": "eng_Latn"}
    raw["phases"]["pretrain"]["budgets"]["notes"] = "10B"


def test_a_new_source_format_builds_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setitem(FORMATS, PlainTextFiles.name, PlainTextFiles())
    hub = tmp_path / "hub"
    small_hub(hub)
    rng = random.Random(1)
    notes = [prose(rng, "eng_Latn") for _ in range(5)]
    folder = hub / "datasets" / "example" / "notes" / "notes"
    folder.mkdir(parents=True)
    for i, text in enumerate(notes):
        (folder / f"{i:03d}.txt").write_text(text, encoding="utf-8")
    recipe = _recipe_with(tmp_path, _add_notes)

    out = tmp_path / "out"
    args = ["--recipe", str(recipe), "--tasks", "1", "--no-dedup", "--languages", "fra,eng,zxx_Zyyy"]
    result = runner.invoke(app, build_args(hub, out, *args))
    assert result.exit_code == 0, result.output
    stats = json.loads((out / "pretrain" / "stats.json").read_text())
    streams = {(s["source"], s["language"]): s for s in stats["streams"]}
    assert {"fineweb2", "dclm", "dolmino", "arxiv", "wikipedia", "code", "notes"} == {s for s, _ in streams}
    stream = streams["notes", "eng_Latn"]
    assert stream["documents_read"] == len(notes) and stream["documents_kept"] >= 1
    trained = stream["documents_kept"] - stream["documents_heldout"]
    assert trained == sum(shard["documents"] for shard in stream["shards"]) > 0
    assert all((out / "pretrain" / shard["path"]).is_file() for shard in stream["shards"])
    # the mixture compiler takes the new source's budget from the recipe as for any fixed source
    mixture = compile_phase(load_recipe(recipe), "pretrain", read_stats(out / "pretrain"), tokens=100_000)
    target = next(t for t in mixture.targets if t.source == "notes")
    assert (target.language, target.available_tokens) == ("eng_Latn", stream["tokens"])
    assert target.target_tokens == round(10e9 * 100_000 / 2.3e12)


def test_an_unknown_format_is_one_line_naming_the_key_and_the_formats(tmp_path):
    hub = tmp_path / "hub"
    small_hub(hub)
    recipe = _recipe_with(tmp_path, lambda raw: _add_notes(raw, fmt="the-stack"))
    result = runner.invoke(app, build_args(hub, tmp_path / "out", "--recipe", str(recipe), "--dry-run"))
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert lines == [
        "error: recipe sources.notes.format: unknown format 'the-stack' "
        "(known formats: arxiv, dclm, dolma, fineweb2, starcoder, wikipedia)"
    ]


@pytest.mark.parametrize(
    ("source", "edit", "message"),
    [
        ("dclm", lambda s: s.pop("language"), "format 'dclm' holds one language; name it with `language:`"),
        (
            "dclm",
            lambda s: s.update(language="english"),
            "dclm.language: 'english' is not an xxx_Script label",
        ),
        (
            "fineweb2",
            lambda s: s.update(language="fra_Latn"),
            "'fineweb2' labels each file itself; remove the key",
        ),
    ],
)
def test_the_recipe_says_what_language_a_source_holds_as_its_format_needs(tmp_path, source, edit, message):
    recipe = load_recipe(_recipe_with(tmp_path, lambda raw: edit(raw["sources"][source])))
    with pytest.raises(ValueError, match=message):
        SourceReader(recipe.sources[source])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.update(pool="yes"), "sources.dclm.pool: expected true or false, got 'yes'"),
        (
            lambda s: s.update(language=["eng_Latn"]),
            "sources.dclm.language: expected a label such as eng_Latn",
        ),
        (lambda s: s.update(format=None), "sources.dclm.format: expected the name of a reader format"),
    ],
)
def test_source_facts_are_checked_when_the_recipe_loads(tmp_path, edit, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(_recipe_with(tmp_path, lambda raw: edit(raw["sources"]["dclm"])))


def test_download_mirrors_a_phase_resumably(tmp_path):
    hub = tmp_path / "remote"
    small_hub(hub)
    recipe = load_recipe(file_recipe(tmp_path / "recipe.yaml", hub))
    plan = Build(
        BuildOptions(recipe=recipe, phase="pretrain", output=tmp_path / "out", languages=("fra", "eng"))
    )
    mirror = tmp_path / "mirror"
    first = download_phase(plan.input_files(), mirror)
    assert first.copied == 5 and first.skipped == 0  # fra parquet, wikipedia fr, dclm, dolmino, arxiv
    copied = sorted(p for p in mirror.rglob("*") if p.is_file())
    assert not any("rus_Cyrl" in str(p) for p in copied)
    for path in copied:
        original = Path("/") / path.relative_to(mirror)
        assert path.read_bytes() == original.read_bytes()
    # an interrupted copy (a truncated file and a leftover .part) is redone; complete files are kept
    copied[0].write_bytes(copied[0].read_bytes()[:10])
    copied[0].with_name(copied[0].name + ".part").write_bytes(b"partial")
    second = download_phase(plan.input_files(), mirror)
    assert (second.copied, second.skipped) == (1, 4)
    assert copied[0].read_bytes() == (Path("/") / copied[0].relative_to(mirror)).read_bytes()
    # the mirror is read back with --input-root
    mirrored = Build(
        BuildOptions(recipe=recipe, phase="pretrain", output=tmp_path / "out", input_root=str(mirror))
    ).readers()[0]
    assert mirrored.list_files() == ["data/fra_Latn/train/000_00000.parquet"]


def test_sample_tokenizer_is_lossless_and_cached(tmp_path):
    written = small_hub(tmp_path / "hub")
    path = sample_tokenizer_path(tmp_path / "hub")
    assert sample_tokenizer_path(tmp_path / "hub") == path  # trained once, then cached
    loaded = load_tokenizer(f"sample:{tmp_path / 'hub'}")
    assert [loaded.tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    for text in written["rus_Cyrl"][:2] + ["Ünïcödé, 中文 and emoji 🎉 survive."]:
        assert loaded.tokenizer.decode(loaded.tokenizer.encode(text, add_special_tokens=False).ids) == text


def test_hub_tokenizer_name_resolves_through_the_hf_cache(tmp_path, monkeypatch):
    """`--tokenizer org/name` uses huggingface_hub; offline it reads the standard cache layout."""
    small_hub(tmp_path / "hub")
    tokenizer_json = sample_tokenizer_path(tmp_path / "hub").read_bytes()
    hub_cache = tmp_path / "hf"
    repo = hub_cache / "models--jhu-clsp--mmBERT-base"
    revision = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "snapshots" / revision).mkdir(parents=True)
    (repo / "snapshots" / revision / "tokenizer.json").write_bytes(tokenizer_json)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    loaded = load_tokenizer("jhu-clsp/mmBERT-base")
    assert loaded.name == "jhu-clsp/mmBERT-base"
    assert json.loads(tokenizer_json)["model"]["type"] == "BPE"
    assert loaded.bos_id == 2 and loaded.eos_id == 1


def test_missing_tokenizer_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(str(tmp_path / "nope" / "tokenizer.json"))
