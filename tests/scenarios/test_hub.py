"""Builds that read the hub through huggingface_hub's real client, with no ``--input-root``.

The hub is `tests.hub.Hub` on the loopback interface, serving the bundled sample under the real
repos' names (FineWeb2, DCLM, Dolmino, Wikipedia, OLMoE's arXiv, StarCoderData) and the recipe's
tokenizer repo. Each build runs `mmbert-data build` in a fresh process, so that ``HF_ENDPOINT``
and a new ``HF_HOME`` are set before huggingface_hub reads them at import.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mixtures.recipe import load_recipe
from tests.conftest import DECAY_TOKENS, SAMPLE
from tests.hub import Hub

MMBERT_DATA = str(Path(sys.executable).with_name("mmbert-data"))


@pytest.fixture(scope="module")
def hub(tmp_path_factory, sample_builds, sample_root) -> Hub:
    """The sample's datasets under their hub names, and the recipe's tokenizer repo holding the
    tokenizer the ``--input-root`` builds used (``sample_builds`` trained it into the cache)."""
    from pipeline.tokenizer import sample_tokenizer_path

    root = tmp_path_factory.mktemp("hub")
    shutil.copytree(SAMPLE / "hub" / "datasets", root / "datasets")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MMBERT_DATA_CACHE", str(sample_root / "cache"))
        tokenizer = sample_tokenizer_path(SAMPLE / "hub")
    repo = root / "models" / load_recipe().tokenizer
    repo.mkdir(parents=True)
    shutil.copy(tokenizer, repo / "tokenizer.json")
    _train_glotlid(root / "models" / "cis-lmu" / "glotlid" / "model_v3.bin")
    (root / "models" / "nobody" / "no-tokenizer").mkdir(parents=True)
    (root / "models" / "nobody" / "no-tokenizer" / "config.json").write_text("{}")
    with Hub(root) as running:
        yield running


def _train_glotlid(path: Path) -> None:
    """A tiny fastText classifier with GlotLID's labels (``__label__fra_Latn``), trained on the
    sample's FineWeb2 documents, under the file name the real repo uses. It trains in a process of
    its own: inside pytest's, after the trainer's imports, fastText's training can end in NaN."""
    import pyarrow.parquet as pq

    lines = []
    for parquet in sorted((SAMPLE / "hub" / "datasets" / "HuggingFaceFW").rglob("*.parquet")):
        label = parquet.parts[-3]  # data/<lang_Script>/train/...
        for text in pq.read_table(parquet, columns=["text"]).column("text").to_pylist():
            if isinstance(text, str) and text.strip():
                lines.append(f"__label__{label} {' '.join(text.split())}")
    path.parent.mkdir(parents=True)
    (corpus := path.with_suffix(".txt")).write_text("\n".join(lines) + "\n", encoding="utf-8")
    train = (
        "import sys, fasttext; fasttext.train_supervised(sys.argv[1], dim=16, loss='softmax', minCount=1, "
        "thread=1, seed=0).save_model(sys.argv[2])"
    )
    subprocess.run([sys.executable, "-c", train, str(corpus), str(path)], check=True, capture_output=True)
    corpus.unlink()


def hub_env(hub: Hub, tmp_path: Path) -> dict[str, str]:
    """The environment of a command against the emulated hub, with an empty Hugging Face cache."""
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"))
    env["MMBERT_DATA_CACHE"] = str(tmp_path / "cache")
    return env


def build(hub: Hub, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`mmbert-data build ARGS` against the emulated hub."""
    command = [MMBERT_DATA, "build", "--on-error", "skip", "--output", str(tmp_path / "data"), *args]
    return subprocess.run(command, env=hub_env(hub, tmp_path), capture_output=True, text=True, timeout=600)


def download(hub: Hub, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`mmbert-data download ARGS` against the emulated hub, into ``tmp_path/mirror``."""
    command = [MMBERT_DATA, "download", "-o", str(tmp_path / "mirror"), *args]
    return subprocess.run(command, env=hub_env(hub, tmp_path), capture_output=True, text=True, timeout=600)


def needed_files(phase: str) -> dict[str, bytes]:
    """The files a phase's build reads, by their path under the hub's root (and a mirror's), with
    their bytes: what `Build.input_files` lists on the bundled sample's local copy."""
    from pipeline.build import Build
    from pipeline.build_options import BuildOptions

    root = SAMPLE / "hub"
    inputs = Build(BuildOptions(recipe=load_recipe(), phase=phase, input_root=str(root))).input_files()
    paths = [Path(reader.data_folder.resolve_paths(path)) for reader, files in inputs for path in files]
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in paths}


def mirrored(mirror: Path) -> dict[str, bytes]:
    return {
        p.relative_to(mirror).as_posix(): p.read_bytes() for p in sorted(mirror.rglob("*")) if p.is_file()
    }


def _shards(phase_dir: Path) -> dict[str, bytes]:
    """Every shard under a phase directory (training and held out), by its path there."""
    return {p.relative_to(phase_dir).as_posix(): p.read_bytes() for p in sorted(phase_dir.rglob("*.arrow"))}


def _streams(stats: dict) -> list[dict]:
    return sorted(stats["streams"], key=lambda s: (s["source"], s["language"]))


@pytest.mark.parametrize("phase", ["pretrain", "midtrain", "decay"])
def test_a_build_from_the_hub_equals_the_build_from_its_local_mirror_shard_for_shard(
    hub, sample_builds, tmp_path, phase
):
    """Every source by its ``hf://`` URI, and the same tokenizer as the ``--input-root`` build."""
    recipe, seen = load_recipe(), len(hub.requests)
    done = build(hub, tmp_path, "--phase", phase, "--tokenizer", f"sample:{SAMPLE / 'hub'}")
    assert done.returncode == 0, done.stderr[-3000:]
    local_dir, local_stats = sample_builds[phase]
    hub_dir = tmp_path / "data" / phase
    local, remote = _shards(local_dir), _shards(hub_dir)
    assert len(local) >= 20 and list(remote) == list(local)
    for path, data in local.items():
        assert remote[path] == data, path
    assert _streams(json.loads((hub_dir / "stats.json").read_text())) == _streams(local_stats)
    # each of the phase's sources was listed through the hub's API
    listed = {r.split("/")[4] for r in hub.requests[seen:] if r.startswith("GET /api/datasets/")}
    assert {recipe.sources[name].uri.split("/")[4] for name in recipe.phases[phase].budgets} <= listed


def test_the_recipes_tokenizer_comes_from_the_hub_by_name_and_is_cached(hub, tmp_path):
    recipe = load_recipe()
    served = (hub.root / "models" / recipe.tokenizer / "tokenizer.json").read_bytes()
    for _ in range(2):  # the second build finds it in HF_HOME's cache
        done = build(hub, tmp_path, "--phase", "decay", "--sources", "wikipedia", "--overwrite")
        assert done.returncode == 0, done.stderr[-3000:]
    stats = json.loads((tmp_path / "data" / "decay" / "stats.json").read_text())
    assert stats["tokenizer"]["name"] == recipe.tokenizer
    assert stats["tokenizer"]["sha256"] == hashlib.sha256(served).hexdigest()
    assert [p.read_bytes() for p in (tmp_path / "hf-home").rglob("tokenizer.json")] == [served]
    fetched = [r for r in hub.requests if r == f"GET /{recipe.tokenizer}/resolve/main/tokenizer.json"]
    assert len(fetched) == 1


@pytest.mark.parametrize(
    "tokenizer, names",
    [
        ("nobody/no-such-tokenizer", "no such model repository"),
        ("nobody/no-tokenizer", "holds no tokenizer.json"),
    ],
)
def test_a_tokenizer_the_hub_does_not_have_is_a_one_line_error_naming_it(hub, tmp_path, tokenizer, names):
    done = build(hub, tmp_path, "--phase", "decay", "--sources", "wikipedia", "--tokenizer", tokenizer)
    assert done.returncode == 1
    message = done.stderr.strip().splitlines()
    assert len(message) == 1 and tokenizer in message[0] and names in message[0], done.stderr[-2000:]
    assert not (tmp_path / "data" / "decay" / "stats.json").exists()


def test_glotlid_comes_from_the_hub_once_into_datatroves_asset_cache(hub, tmp_path):
    served = (hub.root / "models" / "cis-lmu" / "glotlid" / "model_v3.bin").read_bytes()
    seen = len(hub.requests)
    for _ in range(2):  # the second build finds it in the cache
        done = build(
            hub, tmp_path, "--phase", "decay", "--sources", "wikipedia", "--lid", "glotlid", "--overwrite"
        )
        assert done.returncode == 0, done.stderr[-3000:]
    cached = list((tmp_path / "hf-home").rglob("cis-lmu_glotlid_model_v3.bin"))
    assert [p.read_bytes() for p in cached] == [served]
    fetched = [r for r in hub.requests[seen:] if r.startswith("GET /cis-lmu/glotlid/resolve/")]
    assert fetched and all("model_v3.bin" in r for r in fetched)
    stats = json.loads((tmp_path / "data" / "decay" / "stats.json").read_text())
    assert stats["streams"] and all(s["source"] == "wikipedia" for s in stats["streams"])


def test_download_dry_run_lists_the_phases_files_and_total_then_download_mirrors_exactly_those(hub, tmp_path):
    needed = needed_files("decay")
    assert len(needed) >= 20
    planned = download(hub, tmp_path, "--phase", "decay", "--dry-run")
    assert planned.returncode == 0, planned.stderr[-3000:]
    *listed, total = planned.stdout.strip().splitlines()
    mirror = tmp_path / "mirror"
    assert sorted(Path(line.split()[1]).relative_to(mirror).as_posix() for line in listed) == sorted(needed)
    size = sum(len(data) for data in needed.values())
    assert total == f"{len(needed)} file(s), {size:,d} bytes; to copy: {len(needed)} file(s), {size:,d} bytes"
    assert not mirror.exists(), "a dry run copies nothing"
    done = download(hub, tmp_path, "--phase", "decay")
    assert done.returncode == 0, done.stderr[-3000:]
    assert mirrored(mirror) == needed
    assert (
        done.stdout.strip().splitlines()[-1]
        == f"copied {len(needed)} file(s) ({size:,d} bytes), 0 already present"
    )


def test_download_killed_mid_file_resumes_without_refetching_finished_files(hub, tmp_path):
    """SIGKILL while a file is being copied: no file under its final name is partial, and the rerun
    fetches only the files not finished, leaving no temporary behind."""
    needed, mirror = needed_files("decay"), tmp_path / "mirror"
    command = [MMBERT_DATA, "download", "-o", str(mirror), "--phase", "decay"]
    hub.bytes_per_second = 256 << 10
    try:
        running = subprocess.Popen(
            command, env=hub_env(hub, tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and running.poll() is None:
            files = [p for p in mirror.rglob("*") if p.is_file()] if mirror.exists() else []
            partial = [p for p in files if p.name.endswith(".tmp")]  # a file's transfer under way
            if partial and len(files) - len(partial) >= 3:
                break
            time.sleep(0.01)
        assert running.poll() is None, (
            f"the download ended before it could be killed: {running.stderr.read()}"
        )
        running.kill()
        running.wait()
    finally:
        hub.bytes_per_second = None
    finished = {}
    for path in (p for p in mirror.rglob("*") if p.is_file() and not p.name.endswith(".tmp")):
        name = path.relative_to(mirror).as_posix()
        assert path.read_bytes() == needed[name], f"{name} is partial under its final name"
        finished[name] = path.stat().st_mtime_ns
    assert 3 <= len(finished) < len(needed)
    seen = len(hub.requests)
    done = download(hub, tmp_path, "--phase", "decay")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1].endswith(f", {len(finished)} already present")
    assert mirrored(mirror) == needed, "every file complete, and no temporary left"
    assert {name: (mirror / name).stat().st_mtime_ns for name in finished} == finished
    fetched = {r.split("/resolve/main/", 1)[1] for r in hub.requests[seen:] if "/resolve/" in r}
    assert not {name.split("/", 3)[3] for name in finished} & fetched, "a finished file was fetched again"


def test_download_fetches_again_a_mirrored_file_whose_checksum_is_wrong(hub, tmp_path):
    needed, mirror = needed_files("decay"), tmp_path / "mirror"
    assert download(hub, tmp_path, "--phase", "decay").returncode == 0
    damaged = sorted(needed)[0]
    data = bytearray((mirror / damaged).read_bytes())
    data[len(data) // 2] ^= 0xFF  # the same size, other bytes
    (mirror / damaged).write_bytes(bytes(data))
    done = download(hub, tmp_path, "--phase", "decay")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1].startswith("copied 1 file(s)")
    assert mirrored(mirror) == needed


@pytest.mark.parametrize(
    "uri, names",
    [
        ("hf://datasets/nobody/missing", ["datasets/nobody/missing", "repository not found"]),
        (
            "hf://datasets/wikimedia/wikipedia@nope",
            ["datasets/wikimedia/wikipedia@nope", "revision not found"],
        ),
        ("hf://datasets/wikimedia/wikipedia/no-such-folder", ["no input files under", "no-such-folder"]),
    ],
    ids=["repo", "revision", "folder"],
)
def test_a_source_repo_revision_or_folder_the_hub_lacks_is_a_one_line_error_naming_it(
    hub, tmp_path, uri, names
):
    recipe = tmp_path / "recipe.yaml"
    text = load_recipe().path.read_text()
    assert "uri: hf://datasets/wikimedia/wikipedia\n" in text
    recipe.write_text(text.replace("uri: hf://datasets/wikimedia/wikipedia\n", f"uri: {uri}\n"))
    done = build(
        hub, tmp_path, "--phase", "decay", "--recipe", str(recipe), "--sources", "wikipedia",
        "--tokenizer", f"sample:{SAMPLE / 'hub'}",
    )  # fmt: skip
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: ") and all(name in line for name in names), line
    assert not (tmp_path / "data" / "decay" / "stats.json").exists()


def test_a_manifest_whose_data_root_is_on_the_hub_validates_and_trains_as_the_local_one(
    hub, sample_builds, sample_manifests, tmp_path, monkeypatch
):
    """A build published as a dataset repo: `mixture --stats hf://...`, `validate`, then a run that
    fetches its shards into --cache-dir and ends with the local run's weights."""
    from tests.trainer.runs import assert_bitwise_equal, run, tiny

    shutil.copytree(sample_builds["decay"][0], hub.root / "datasets" / "me" / "sample-build" / "decay")
    for name, value in hub_env(hub, tmp_path).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("MMBERT_DATA_CACHE", str(sample_manifests["decay"].parents[1] / "cache"))
    manifest, root = tmp_path / "manifest.json", "hf://datasets/me/sample-build/decay"
    compile_args = [
        "mixture",
        "--phase",
        "decay",
        "--stats",
        root,
        "--tokens",
        str(DECAY_TOKENS),
        "-o",
        str(manifest),
    ]
    for args in (compile_args, ["validate", str(manifest)]):
        done = subprocess.run([MMBERT_DATA, *args], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(manifest.read_text())["data_root"] == root
    shutil.copy(manifest, hub.root / "datasets" / "me" / "sample-build" / "decay" / "manifest.json")
    on_hub = subprocess.run(  # the manifest read from the hub too
        [MMBERT_DATA, "validate", f"{root}/manifest.json", "--no-hash"], capture_output=True, text=True
    )
    assert on_hub.returncode == 0 and f"{root}/manifest.json: valid" in on_hub.stdout, on_hub.stderr
    short = ("--micro-batch-tokens", "16384", "--batch-size", "2", "--cache-dir", str(tmp_path / "shards"))
    remote = run(tiny(manifest, tmp_path / "remote", *short, tokens="40k"))
    assert remote.returncode == 0, remote.stdout[-3000:]
    assert f"fetched {root}/" in remote.stdout
    assert json.loads((tmp_path / "remote" / "eval.json").read_text())["build"] == root  # held out: fetched
    local = run(tiny(sample_manifests["decay"], tmp_path / "local", *short[:4], tokens="40k"))
    assert local.returncode == 0, local.stdout[-3000:]
    assert_bitwise_equal(tmp_path / "remote", tmp_path / "local")
