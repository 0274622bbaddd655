"""The phase manifest: determinism, fingerprint, and validation against the shards (acceptance 1 and 4)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

import mixtures.manifest as manifest_module
from mixtures.compiler import compile_phase
from mixtures.counts import read_counts_csv
from mixtures.errors import MixtureError
from mixtures.manifest import (
    ShardEntry,
    build_manifest,
    canonical_json,
    check_manifest,
    load_manifest,
    validate_manifest,
    write_manifest,
)
from mixtures.recipe import load_recipe
from tests.fixtures import (
    DECAY_STREAMS,
    TOKENIZER,
    TOKENIZER_JSON,
    TOKENIZER_SHA256,
    compile_to,
    forge_manifest,
    manifest_document,
    rewrite_ids,
    write_build,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def build(tmp_path):
    return write_build(tmp_path / "data")


@pytest.fixture()
def manifest(build, tmp_path):
    path = tmp_path / "manifests" / "decay.json"
    compile_to(build, path)
    return path


def test_manifest_is_self_describing(manifest, build):
    doc = load_manifest(manifest)
    raw = json.loads(manifest.read_text())
    recipe = load_recipe()
    assert raw["format"] == "mmbert-data/manifest" and raw["version"] == 1
    assert doc.phase == "decay" and doc.seed == 0
    assert doc.recipe == {"name": "mmbert", "path": str(recipe.path.resolve()), "sha256": recipe.sha256}
    assert doc.tokenizer.to_dict() == TOKENIZER  # with the vocabulary size and special ids the trainer checks
    assert doc.training.mask_rate == 0.05 and doc.training.seq_len == 8192
    assert doc.training.lr.schedule == "one_minus_sqrt"
    assert doc.sampling.temperature == 0.3 and doc.sampling.max_epochs == 1.0
    assert doc.data_root == build.resolve()  # the file holds it relative to its own directory
    assert raw["data_root"] == "../data/decay"
    assert doc.counts["kind"] == "stats"
    assert doc.counts["sha256"] == hashlib.sha256((build / "stats.json").read_bytes()).hexdigest()
    stream = next(s for s in doc.streams if s.language == "fao_Latn")
    assert stream.source == "fineweb2" and stream.capped is True
    assert stream.target_tokens == 20 and stream.expected_epochs == 1.0 and stream.weight == 0.002
    fao = next(s for s in raw["streams"] if s["language"] == "fao_Latn")
    assert set(fao["shards"][0]) == {"path", "documents", "tokens", "bytes", "sha256"}
    assert stream.shards[0] == ShardEntry(**fao["shards"][0])
    assert sum(s.target_tokens for s in doc.streams) == doc.sampling.tokens == 10_000
    body = {key: value for key, value in raw.items() if key != "fingerprint"}
    assert doc.fingerprint == hashlib.sha256(canonical_json(body)).hexdigest()


def test_same_inputs_give_byte_identical_manifests(build, manifest, tmp_path):
    again = manifest.with_name("again.json")  # beside it: the data root is written relative to the file
    compile_to(build, again)
    assert again.read_bytes() == manifest.read_bytes()
    # a fresh interpreter with another hash seed writes the same bytes
    third = manifest.with_name("third.json")
    script = (
        "import sys; from pathlib import Path; from tests.fixtures import compile_to; "
        "compile_to(Path(sys.argv[1]), Path(sys.argv[2]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", script, str(build), str(third)], check=True, cwd=REPO, env=env)
    assert third.read_bytes() == manifest.read_bytes()
    other_seed = manifest.with_name("seed.json")
    compile_to(build, other_seed, seed=7)
    assert other_seed.read_bytes() != manifest.read_bytes()


def test_write_is_atomic_and_checked(build, tmp_path):
    path = tmp_path / "out" / "decay.json"
    doc = compile_to(build, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["decay.json"]
    broken = copy.deepcopy(doc)
    broken["streams"][0]["target_tokens"] += 1
    with pytest.raises(MixtureError, match="target tokens sum to 10,001, not the phase's 10,000"):
        write_manifest(broken, tmp_path / "out" / "broken.json")
    assert sorted(p.name for p in path.parent.iterdir()) == ["decay.json"]


def test_structure_and_caps_are_checked_on_read(manifest):
    doc = manifest_document(manifest)
    fao = next(s for s in doc["streams"] if s["language"] == "fao_Latn")
    fao["target_tokens"] += 1
    with pytest.raises(
        MixtureError, match=r"streams\[\d+\] \(fineweb2/fao_Latn\): target_tokens 21 exceeds the epoch cap"
    ):
        check_manifest(doc, "m.json")
    doc = json.loads(manifest.read_text())
    doc["version"] = 2
    manifest.write_text(json.dumps(doc))
    with pytest.raises(MixtureError, match="reads manifest version 1, got 2"):
        load_manifest(manifest)


def test_valid_manifest_has_no_problems(manifest):
    assert validate_manifest(manifest) == []
    assert validate_manifest(manifest, check_hashes=False) == []
    assert validate_manifest(manifest, tokenizer="jhu-clsp/mmBERT-base") == []


def test_reformatted_but_unchanged_manifest_keeps_its_fingerprint(manifest):
    manifest.write_text(json.dumps(json.loads(manifest.read_text()), indent=2))
    assert validate_manifest(manifest) == []


def test_validate_catches_a_missing_shard(manifest, build):
    (build / "fineweb2/fra_Latn/00001.arrow").unlink()
    problems = validate_manifest(manifest, check_hashes=False)
    assert problems == [
        f"missing shard: fineweb2/fra_Latn/00001.arrow (no file {build}/fineweb2/fra_Latn/00001.arrow)"
    ]


def test_a_moved_data_root_is_one_problem_not_one_per_shard(manifest, build):
    build.rename(build.with_name("elsewhere"))
    assert validate_manifest(manifest) == [
        f"missing data root: {build} (No such file or directory); the manifest finds its data at "
        "'../data/decay' from its own directory, so move manifests and data together"
    ]


def test_data_and_manifests_moved_together_stay_valid(manifest, build, tmp_path):
    fingerprint = load_manifest(manifest).fingerprint
    moved = tmp_path / "elsewhere" / "runs"
    moved.mkdir(parents=True)
    (tmp_path / "data").rename(moved / "data")
    (tmp_path / "manifests").rename(moved / "manifests")
    assert validate_manifest(moved / "manifests" / "decay.json") == []
    doc = load_manifest(moved / "manifests" / "decay.json")
    assert doc.data_root == moved / "data" / "decay" and doc.fingerprint == fingerprint
    # a manifest written beside its data (the default of `mmbert-data mixture`) holds the root as "."
    compile_to(moved / "data" / "decay", moved / "data" / "decay" / "manifest.json")
    assert json.loads((moved / "data" / "decay" / "manifest.json").read_text())["data_root"] == "."


def test_validate_catches_a_same_size_content_change_when_hashing(manifest, build):
    shard = build / "fineweb2/deu_Latn/00000.arrow"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    problems = validate_manifest(manifest, check_hashes=True)
    assert len(problems) == 1
    assert problems[0].startswith("changed shard: fineweb2/deu_Latn/00000.arrow content sha256")
    # without hashing only sizes are compared: the documented price of the cheap check
    assert validate_manifest(manifest, check_hashes=False) == []


def test_validate_catches_a_size_change_without_hashing(manifest, build):
    shard = build / "wikipedia/fra_Latn/00000.arrow"
    size = shard.stat().st_size
    with open(shard, "ab") as handle:
        handle.write(b"\0" * 8)
    assert validate_manifest(manifest, check_hashes=False) == [
        f"changed shard: wikipedia/fra_Latn/00000.arrow has {size + 8:,} bytes, the manifest records {size:,}"
    ]


def test_validate_catches_a_hand_edited_manifest(manifest):
    text = manifest.read_text()
    assert '"seed":0' in text
    manifest.write_text(text.replace('"seed":0', '"seed":1'))
    problems = validate_manifest(manifest)
    assert len(problems) == 1 and problems[0].startswith(f"fingerprint mismatch: {manifest} was edited")
    with pytest.raises(MixtureError, match="fingerprint mismatch"):
        load_manifest(manifest)


def test_hand_edited_shard_entries_are_checked_field_by_field(manifest):
    text = manifest.read_text()
    doc = json.loads(text)
    sha = doc["streams"][3]["shards"][0]["sha256"]
    manifest.write_text(text.replace(sha, "not-a-hash", 1))
    problems = validate_manifest(manifest)
    assert len(problems) == 1
    assert problems[0].startswith(f"{manifest}: streams[3] ({doc['streams'][3]['source']}/")
    assert problems[0].endswith("shards[0]: sha256: expected 64 lowercase hex digits, got 'not-a-hash'")


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("tokens", "2340", "tokens: expected an integer >= 0, got '2340'"),
        ("tokens", None, "tokens: expected an integer >= 0, got None"),
        ("bytes", True, "bytes: expected an integer >= 0, got True"),
        ("path", 5, "path: must be relative to the data root, got 5"),
    ],
)
def test_shard_entries_are_checked_whatever_the_fingerprint(manifest, field, value, expected):
    """Anyone can compute a fingerprint: a right one does not excuse an entry from its type checks."""
    doc = manifest_document(manifest)
    doc["streams"][2]["shards"][0][field] = value
    forge_manifest(doc, manifest)
    where = f"{manifest}: streams[2] ({doc['streams'][2]['source']}/{doc['streams'][2]['language']})"
    assert validate_manifest(manifest) == [f"{where}: shards[0]: {expected}"]
    with pytest.raises(MixtureError, match=re.escape(f"shards[0]: {expected}")):
        load_manifest(manifest)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("fixed_budgets", 5, "sampling: fixed_budgets: unexpected value 5"),
        ("fixed_budgets", {"arxiv": "7"}, "sampling.fixed_budgets.arxiv: expected tokens >= 0, got '7'"),
        ("languages_without_data", True, "sampling: languages_without_data: unexpected value True"),
        ("temperature", "hot", "sampling: temperature: unexpected value 'hot'"),
    ],
)
def test_the_sampling_record_is_checked_whatever_the_fingerprint(manifest, field, value, expected):
    doc = manifest_document(manifest)
    doc["sampling"][field] = value
    forge_manifest(doc, manifest)
    with pytest.raises(MixtureError, match=re.escape(f"{manifest}: {expected}")):
        load_manifest(manifest)


def test_validate_catches_shards_of_another_tokenizer(tmp_path):
    build = write_build(tmp_path / "data", shard_tokenizer_sha256="f" * 64)
    manifest = tmp_path / "decay.json"
    compile_to(build, manifest)
    quick = validate_manifest(manifest, check_hashes=False)
    assert len(quick) == 10  # the first shard of each of the ten streams
    assert quick[0] == (
        "tokenizer mismatch: shard arxiv/eng_Latn/00000.arrow has mmbert.tokenizer.sha256='"
        + "f" * 64
        + "', "
        f"the manifest expects '{TOKENIZER_SHA256}'"
    )
    assert len(validate_manifest(manifest, check_hashes=True)) == 11  # every shard


def test_validate_against_a_given_tokenizer(manifest, tmp_path):
    same = tmp_path / "same" / "tokenizer.json"
    same.parent.mkdir()
    same.write_bytes(TOKENIZER_JSON)
    assert validate_manifest(manifest, check_hashes=False, tokenizer=same.parent) == []
    other = tmp_path / "tokenizer.json"
    other.write_bytes(b'{"model": "another"}')
    problems = validate_manifest(manifest, check_hashes=False, tokenizer=other)
    assert len(problems) == 1 and problems[0].startswith(f"tokenizer mismatch: {other} has sha256")
    named = validate_manifest(manifest, check_hashes=False, tokenizer="google/gemma-2-2b")
    assert named == [
        "tokenizer mismatch: expected google/gemma-2-2b, the manifest's shards were tokenized with "
        "jhu-clsp/mmBERT-base"
    ]


def test_planning_manifest_has_no_shards_to_check(tmp_path):
    plain = tmp_path / "plain.csv"
    plain.write_text("language,tokens\nfra_Latn,1B\ndeu_Latn,500M\n")
    recipe = load_recipe()
    counts = read_counts_csv(plain, "fineweb2")
    path = tmp_path / "plan.json"
    write_manifest(
        build_manifest(compile_phase(recipe, "midtrain", counts, tokens=10**9), recipe, counts, 0), path
    )
    doc = load_manifest(path)
    assert doc.data_root is None and doc.tokenizer.to_dict() == {
        "name": "jhu-clsp/mmBERT-base",
        "sha256": None,
        "vocab_size": None,
        "special_ids": None,
    }
    assert validate_manifest(path) == [
        f"{path}: compiled from counts for planning, so it lists no shards to check"
    ]


def test_stream_weights_are_the_shares_of_their_targets(manifest):
    doc = manifest_document(manifest)
    doc["streams"][0]["weight"] = -0.1
    name = f"{doc['streams'][0]['source']}/{doc['streams'][0]['language']}"
    with pytest.raises(MixtureError, match=rf"m.json: streams\[0\] \({name}\): weight: -0.1 is not the"):
        check_manifest(doc, "m.json")
    tripled = manifest_document(manifest)
    for stream in tripled["streams"]:
        stream["weight"] *= 3  # weights summing to 3, in a file whose fingerprint is right
    forge_manifest(tripled, manifest)
    (problem,) = validate_manifest(manifest)
    first = next(s for s in tripled["streams"] if s["weight"])
    assert f"({first['source']}/{first['language']}): weight: {first['weight']!r} is not" in problem
    assert problem.endswith(
        f"share of the phase's tokens, {first['weight'] / 3!r} (target_tokens / sampling.tokens); "
        "compile the manifest again"
    )
    with pytest.raises(MixtureError, match="is not the stream's share"):
        load_manifest(manifest)


def test_the_tokenizer_vocabulary_holds_its_special_ids(manifest):
    doc = manifest_document(manifest)
    doc["tokenizer"]["vocab_size"] = 3
    write_manifest(doc, manifest)
    with pytest.raises(
        MixtureError, match=r"decay.json: tokenizer.vocab_size: 3 ids do not hold special_ids.mask 4; the"
    ):
        load_manifest(manifest)
    doc["tokenizer"]["vocab_size"] = 5
    write_manifest(doc, manifest)
    (problem,) = validate_manifest(manifest)
    assert "decay.json: tokenizer.vocab_size: 5 ids are all special tokens, none left to train on" in problem


def test_shard_paths_stay_inside_the_data_root_whatever_the_fingerprint(manifest, build, tmp_path):
    root = build.resolve()
    doc = manifest_document(manifest)
    shard = doc["streams"][0]["shards"][0]
    outside = tmp_path / "outside.arrow"
    shutil.copy(root / shard["path"], outside)
    shard["path"] = os.path.relpath(outside, root)  # ../../outside.arrow, its size and hash right
    forge_manifest(doc, manifest)
    fix = "a manifest reads only files inside its data root; compile it again from the build"
    assert validate_manifest(manifest) == [
        f"shard outside the data root: {shard['path']} resolves to {outside.resolve()}, outside {root}; {fix}"
    ]
    with pytest.raises(MixtureError, match="shard outside the data root"):
        load_manifest(manifest)
    # the original manifest, over a stream directory and a shard that are links leading out
    compile_to(build, manifest)
    elsewhere = tmp_path / "elsewhere"
    (root / "fineweb2/deu_Latn").rename(elsewhere)
    (root / "fineweb2/deu_Latn").symlink_to(elsewhere)
    shard = root / "arxiv/eng_Latn/00000.arrow"
    shard.rename(tmp_path / "arxiv.arrow")
    shard.symlink_to(tmp_path / "arxiv.arrow")
    inside = root / "wikipedia/deu_Latn/00000.arrow"  # a link to a file inside the data root is a file
    inside.rename(root / "kept.arrow")
    inside.symlink_to(root / "kept.arrow")
    assert validate_manifest(manifest) == [
        f"shard outside the data root: arxiv/eng_Latn/00000.arrow resolves to {tmp_path / 'arxiv.arrow'}, "
        f"outside {root}; {fix}",
        f"shard outside the data root: fineweb2/deu_Latn/00000.arrow resolves to "
        f"{elsewhere / '00000.arrow'}, outside {root}; {fix}",
    ]


def test_shard_counts_are_checked_against_the_shards(manifest, build):
    doc = manifest_document(manifest)
    fra = next(s for s in doc["streams"] if s["source"] == "fineweb2" and s["language"] == "fra_Latn")
    first, second = fra["shards"]
    first["tokens"], first["documents"] = first["tokens"] * 100, first["documents"] + 1
    second["tokens"] *= 100
    write_manifest(doc, manifest)
    fix = "the manifest does not describe this file; compile it again from the build"
    exact = [
        f"count mismatch: shard {first['path']} holds 30 documents, the manifest records 31; {fix}",
        f"count mismatch: shard {first['path']} holds 3,000 tokens, the manifest records 300,000; {fix}",
    ]
    # every shard: a file of B bytes holds at most B / 4 tokens; the first of each stream: exactly
    assert validate_manifest(manifest, check_hashes=False) == [
        *exact,
        f"count mismatch: shard {second['path']} of {second['bytes']:,} bytes cannot hold the 200,000 "
        f"tokens the manifest records (4 bytes each); {fix}",
    ]
    assert validate_manifest(manifest, check_hashes=True) == [
        *exact,
        f"count mismatch: shard {second['path']} holds 2,000 tokens, the manifest records 200,000; {fix}",
    ]
    with pytest.raises(MixtureError, match="3 problem"):
        load_manifest(manifest)


@pytest.mark.parametrize(
    "ids_type, convert",
    [(pa.float32(), float), (pa.uint8(), lambda i: i % 256), (pa.int64(), lambda i: -i), (pa.string(), str)],
)
def test_the_input_ids_type_is_checked(manifest, build, ids_type, convert):
    doc = manifest_document(manifest)
    shard = doc["streams"][0]["shards"][0]
    shard.update(rewrite_ids(build / shard["path"], ids_type, convert))
    write_manifest(doc, manifest)
    expected = [
        f"wrong column type: shard {shard['path']} has input_ids: {pa.list_(ids_type)}, "
        "the format is list<item: uint32>; rebuild it with `mmbert-data build`"
    ]
    assert validate_manifest(manifest, check_hashes=False) == expected
    assert validate_manifest(manifest, check_hashes=True) == expected


def test_a_negative_seed_is_refused_on_write_and_read(build, tmp_path):
    doc = compile_to(build, tmp_path / "good.json")
    with pytest.raises(MixtureError, match=r"seed: expected an integer >= 0, got -1"):
        write_manifest({**doc, "seed": -1}, tmp_path / "bad.json")


def damage(shard: Path) -> None:
    """Flip one byte in the middle of ``shard``: same size, other content."""
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))


def test_hashing_threads_list_the_problems_in_stream_order(manifest, build, monkeypatch):
    for path in (
        "wikipedia/fra_Latn/00000.arrow",
        "fineweb2/fra_Latn/00001.arrow",
        "code/zxx_Zyyy/00000.arrow",
    ):
        damage(build / path)
    (build / "fineweb2/deu_Latn/00000.arrow").unlink()
    monkeypatch.setattr(manifest_module, "hash_workers", lambda: 1)
    serial = validate_manifest(manifest)
    assert [problem.split(" content")[0] for problem in serial] == [
        "changed shard: code/zxx_Zyyy/00000.arrow",
        f"missing shard: fineweb2/deu_Latn/00000.arrow (no file {build}/fineweb2/deu_Latn/00000.arrow)",
        "changed shard: fineweb2/fra_Latn/00001.arrow",
        "changed shard: wikipedia/fra_Latn/00000.arrow",
    ]
    monkeypatch.setattr(manifest_module, "hash_workers", lambda: 4)
    assert validate_manifest(manifest) == serial


def test_a_shard_of_a_mebibyte_or_more_is_hashed_and_counted_too(tmp_path):
    build = write_build(
        tmp_path / "data", streams={**DECAY_STREAMS, ("fineweb2", "fra_Latn"): [3000, 300_000]}
    )
    path = tmp_path / "decay.json"
    doc = compile_to(build, path)
    fra = next(s for s in doc["streams"] if s["source"] == "fineweb2" and s["language"] == "fra_Latn")
    large = fra["shards"][1]
    assert large["bytes"] >= manifest_module._READ_BYTES
    assert validate_manifest(path) == []
    large["tokens"] += 1
    write_manifest(doc, path)
    fix = "the manifest does not describe this file; compile it again from the build"
    assert validate_manifest(path) == [
        f"count mismatch: shard {large['path']} holds 300,000 tokens, the manifest records 300,001; {fix}"
    ]
    damage(build / large["path"])
    assert validate_manifest(path)[0].startswith(f"changed shard: {large['path']} content sha256")
