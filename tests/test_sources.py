"""Readers per source through hub URIs mapped onto a local mirror; download; tokenizer loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mixtures.recipe import load_recipe
from pipeline.build import Build, BuildOptions
from pipeline.download import download_phase
from pipeline.sources import SourceReader, resolve_uri
from pipeline.tokenizer import SPECIAL_TOKENS, load_tokenizer, sample_tokenizer_path
from tests.corpus import small_hub

RECIPE = load_recipe()


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
    else:
        assert texts <= set(written["eng_Latn"]) | set(written["fra_Latn"])


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


def _file_recipe(tmp_path: Path, hub: Path) -> Path:
    """The bundled recipe with its hub URIs replaced by file:// URIs of a local hub copy."""
    raw = yaml.safe_load(RECIPE.path.read_text())
    for spec in raw["sources"].values():
        spec["uri"] = spec["uri"].replace("hf://", f"file://{hub}/")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_download_mirrors_a_phase_resumably(tmp_path):
    hub = tmp_path / "remote"
    small_hub(hub)
    recipe = load_recipe(_file_recipe(tmp_path, hub))
    plan = Build(
        BuildOptions(recipe=recipe, phase="pretrain", output=tmp_path / "out", languages=("fra", "eng"))
    )
    mirror = tmp_path / "mirror"
    first = download_phase(plan, mirror)
    assert first.copied == 5 and first.skipped == 0  # fra parquet, wikipedia fr, dclm, dolmino, arxiv
    copied = sorted(p for p in mirror.rglob("*") if p.is_file())
    assert not any("rus_Cyrl" in str(p) for p in copied)
    for path in copied:
        original = Path("/") / path.relative_to(mirror)
        assert path.read_bytes() == original.read_bytes()
    # an interrupted copy (a truncated file and a leftover .part) is redone; complete files are kept
    copied[0].write_bytes(copied[0].read_bytes()[:10])
    copied[0].with_name(copied[0].name + ".part").write_bytes(b"partial")
    second = download_phase(plan, mirror)
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
