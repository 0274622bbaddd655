"""Builds that read from and write to S3 through the real clients (s3fs, botocore), against moto's
server on the loopback interface (`tests.s3.S3`).

The bundled sample's hub layout is uploaded to ``s3://corpus/hub``, as a user mirrors a phase
with `mmbert-data download` and ``aws s3 sync``; builds read it with ``--input-root`` and write
``--output s3://runs/...``, each in a fresh process with the server's endpoint and a test
credential in its environment.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.conftest import DECAY_TOKENS, SAMPLE
from tests.s3 import S3

MMBERT_DATA = str(Path(sys.executable).with_name("mmbert-data"))
PHASE = "decay"


@pytest.fixture(scope="module")
def s3() -> S3:
    with S3() as server:
        server.create_bucket("corpus")
        server.create_bucket("runs")
        server.upload(SAMPLE / "hub", "corpus", "hub")
        yield server


def s3_env(s3: S3, sample_root: Path, *without: str) -> dict[str, str]:
    """A command's environment: the server's endpoint and credential (less the ``without`` variables),
    and the session's asset cache, which holds the sample tokenizer."""
    env = {**os.environ, **s3.env, "MMBERT_DATA_CACHE": str(sample_root / "cache")}
    return {name: value for name, value in env.items() if name not in without}


def build_command(output: str, staging: Path) -> list[str]:
    """The sample build of ``PHASE`` as `sample_builds` makes it, from S3 and to ``output``."""
    return [
        MMBERT_DATA, "build", "--phase", PHASE, "--on-error", "skip",
        "--input-root", "s3://corpus/hub", "--tokenizer", f"sample:{SAMPLE / 'hub'}",
        "--output", output, "--staging", str(staging),
    ]  # fmt: skip


def local_files(phase_dir: Path) -> dict[str, bytes]:
    """The files of a phase directory that a build publishes, by path, with their bytes."""
    return {
        p.relative_to(phase_dir).as_posix(): p.read_bytes()
        for p in sorted(phase_dir.rglob("*"))
        if p.is_file()
        and p.relative_to(phase_dir).parts[0] not in ("_work", "_logs")
        and p.name != "build.lock"
    }


@pytest.fixture(scope="module")
def published(s3, sample_root, tmp_path_factory) -> Published:
    """The sample's ``PHASE`` built from ``s3://corpus/hub`` to ``s3://runs/whole``, uninterrupted."""
    staging = tmp_path_factory.mktemp("staging")
    started = time.monotonic()
    done = subprocess.run(
        build_command("s3://runs/whole", staging), env=s3_env(s3, sample_root), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    *_, uploaded, wrote = done.stdout.strip().splitlines()
    assert wrote == f"wrote s3://runs/whole/{PHASE}/stats.json"
    objects = len(s3.objects("runs", f"whole/{PHASE}"))
    assert uploaded.endswith(f"{objects} file(s) uploaded, 0 already there, 0 stray object(s) removed")
    return Published(staging, time.monotonic() - started)


class Published(NamedTuple):
    staging: Path  # the build's local staging directory
    seconds: float  # how long the build took


def test_an_s3_build_equals_the_local_build_and_publishes_only_its_outputs(s3, published, sample_builds):
    objects = s3.objects("runs", f"whole/{PHASE}")
    local_dir, _ = sample_builds[PHASE]
    shards = {k: v for k, v in local_files(local_dir).items() if k.endswith(".arrow")}
    assert len(shards) >= 20
    assert {k: v for k, v in objects.items() if k.endswith(".arrow")} == shards
    assert objects == local_files(published.staging / PHASE), "every output, and nothing staged only"
    assert "stats.json" in objects and not any(k.startswith(("_work/", "_logs/")) for k in objects)


def mmbert(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([MMBERT_DATA, *args], env=env, capture_output=True, text=True, timeout=600)


def test_stats_mixture_and_validate_read_a_build_on_s3(
    s3, published, sample_manifests, sample_root, tmp_path
):
    env = s3_env(s3, sample_root)
    shown = mmbert(env, "stats", f"s3://runs/whole/{PHASE}", "--json")
    assert shown.returncode == 0, shown.stderr
    local = mmbert(env, "stats", str(published.staging / PHASE), "--json")
    assert json.loads(shown.stdout) == json.loads(local.stdout)
    manifest = tmp_path / "manifest.json"
    compiled = mmbert(
        env, "mixture", "--phase", PHASE, "--stats", "s3://runs/whole", "--tokens", str(DECAY_TOKENS),
        "--output", str(manifest),
    )  # fmt: skip
    assert compiled.returncode == 0, compiled.stderr
    nowhere = mmbert(
        env, "mixture", "--phase", PHASE, "--stats", "s3://runs/whole", "--tokens", str(DECAY_TOKENS),
        "-o", "s3://nobucket/decay.json",
    )  # fmt: skip
    assert nowhere.returncode == 1 and nowhere.stdout == "", nowhere.stdout  # refused before compiling
    assert (
        nowhere.stderr.strip()
        == "error: s3://nobucket/decay.json: bucket nobucket does not exist; create it or fix the URL"
    )
    ours, theirs = json.loads(manifest.read_text()), json.loads(sample_manifests[PHASE].read_text())
    assert ours["data_root"] == f"s3://runs/whole/{PHASE}"
    assert ours["streams"] == theirs["streams"]
    # without --output, the manifest goes beside the build's stats.json, in the store; a rerun of
    # the build (which removes what it did not write) keeps it, and it validates from there
    beside = f"s3://runs/whole/{PHASE}/manifest.json"
    try:
        there = mmbert(
            env, "mixture", "--phase", PHASE, "--stats", "s3://runs/whole", "--tokens", str(DECAY_TOKENS)
        )
        assert there.returncode == 0 and f"wrote manifest {beside}" in there.stdout, there.stderr
        assert s3.objects("runs", f"whole/{PHASE}")["manifest.json"] == manifest.read_bytes()
        rebuilt = subprocess.run(
            build_command("s3://runs/whole", published.staging), env=env, capture_output=True, text=True
        )
        assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
        assert "manifest.json" in s3.objects("runs", f"whole/{PHASE}")
        for flags in ([], ["--no-hash"]):
            valid = mmbert(env, "validate", beside, *flags)
            assert valid.returncode == 0 and f"{beside}: valid" in valid.stdout, valid.stderr
    finally:
        s3.client().delete_object(Bucket="runs", Key=f"whole/{PHASE}/manifest.json")
    for flags in ([], ["--no-hash"]):
        valid = mmbert(env, "validate", str(manifest), *flags)
        assert valid.returncode == 0 and "valid" in valid.stdout, valid.stderr
    shard = next(s["path"] for stream in ours["streams"] for s in stream["shards"])
    key = f"whole/{PHASE}/{shard}"
    original = s3.client().get_object(Bucket="runs", Key=key)["Body"].read()
    try:
        s3.client().put_object(Bucket="runs", Key=key, Body=bytes(len(original)))  # same size, zeros
        damaged = mmbert(env, "validate", str(manifest))
        assert damaged.returncode == 1 and f"changed shard: {shard} content sha256" in damaged.stderr
        s3.client().delete_object(Bucket="runs", Key=key)
        missing = mmbert(env, "validate", str(manifest), "--no-hash")
        assert missing.returncode == 1
        assert f"missing shard: {shard} (no object s3://runs/{key})" in missing.stderr
    finally:
        s3.client().put_object(Bucket="runs", Key=key, Body=original)


def test_two_ranks_train_from_an_s3_manifest_fetching_each_shard_once_and_resume_as_on_local_files(
    s3, published, sample_manifests, sample_root, tmp_path, monkeypatch
):
    from tests.trainer.runs import assert_bitwise_equal, run, tiny
    from trainer.checkpoint import checkpoint_dirs

    for name, value in s3_env(s3, sample_root).items():
        monkeypatch.setenv(name, value)
    url = f"s3://runs/manifests/{PHASE}.json"  # the manifest in the store too
    compiled = mmbert(
        dict(os.environ), "mixture", "--phase", PHASE, "--stats", f"s3://runs/whole/{PHASE}",
        "--tokens", str(DECAY_TOKENS), "--output", url,
    )  # fmt: skip
    assert compiled.returncode == 0, compiled.stderr
    script = subprocess.run(
        [str(Path(sys.executable).with_name("mmbert-train")), "submit", "-m", url, "--dry-run",
         "-o", str(tmp_path / "job"), "--batch-size", "1"],
        env=dict(os.environ), capture_output=True, text=True,
    )  # fmt: skip
    assert script.returncode == 0 and f"mmbert-train --manifest {url} --batch-size 1" in script.stdout, script
    manifest = tmp_path / "manifest.json"  # and a local copy, for a resume with the store out of reach
    manifest.write_bytes(s3.objects("runs", "manifests")[f"{PHASE}.json"])
    cache, short = tmp_path / "shards", ("--micro-batch-tokens", "16384", "--batch-size", "2")  # 2 x 8192
    remote = run(tiny(url, tmp_path / "remote", *short, "--cache-dir", str(cache)), processes=2)
    assert remote.returncode == 0, remote.stdout[-3000:]
    fetched = [
        line.split("fetched ", 1)[1].split()[0]
        for line in remote.stdout.splitlines()
        if "fetched s3://" in line
    ]
    assert fetched and len(fetched) == len(set(fetched)), "a shard was fetched twice on one node"
    for url in fetched:
        assert (cache / url.removeprefix("s3://")).is_file()
    local = run(tiny(sample_manifests[PHASE], tmp_path / "local", *short), processes=2)
    assert local.returncode == 0, local.stdout[-3000:]
    assert_bitwise_equal(tmp_path / "remote", tmp_path / "local")
    # the end-of-phase evaluation reads the build's held-out shards through the cache too
    remote_eval, local_eval = (
        json.loads((tmp_path / run / "eval.json").read_text()) for run in ("remote", "local")
    )
    assert remote_eval["build"] == f"s3://runs/whole/{PHASE}"
    assert any("/heldout/" in url for url in fetched)
    for key in ("overall", "groups", "languages"):
        assert remote_eval["models"][0][key] == local_eval["models"][0][key], key
    train = str(Path(sys.executable).with_name("mmbert-train"))
    by_url, by_path = (
        subprocess.run(
            [
                train,
                "eval",
                str(tmp_path / "remote"),
                "--data",
                data,
                "--cache-dir",
                str(cache),
                "--json",
                "-",
            ],
            env=dict(os.environ),
            capture_output=True,
            text=True,
            timeout=600,
        )  # fmt: skip
        for data in (f"s3://runs/whole/{PHASE}", str(published.staging / PHASE))
    )
    assert by_url.returncode == 0 and by_path.returncode == 0, by_url.stderr + by_path.stderr
    assert json.loads(by_url.stdout)["models"] == json.loads(by_path.stdout)["models"]
    # killed after a checkpoint and resumed, from the cache: the same run again
    again = tiny(manifest, tmp_path / "again", *short, "--cache-dir", str(cache))
    assert run(again, processes=2, crash_at="2:0").returncode != 0
    assert checkpoint_dirs(tmp_path / "again")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # no store: the cache serves
    resumed = run([*again, "--resume"], processes=2)
    assert resumed.returncode == 0 and "resuming" in resumed.stdout, resumed.stdout[-3000:]
    assert "fetched s3://" not in resumed.stdout, "the cache was not used"
    assert_bitwise_equal(tmp_path / "again", tmp_path / "local")
    # --verify fetches every shard and hashes the cached copies: one changed byte stops it, naming the shard
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.url)
    damaged = sorted(cache.rglob("*.arrow"))[0]
    inspected = mmbert(dict(os.environ), "inspect", str(damaged), "--verify", "--manifest", str(manifest))
    assert inspected.returncode == 0, inspected.stderr  # a cached copy is matched to its entry by path
    data = bytearray(damaged.read_bytes())
    data[-16] ^= 0xFF
    damaged.write_bytes(bytes(data))
    verified = run([*tiny(manifest, tmp_path / "verified", *short, "--cache-dir", str(cache)), "--verify"])
    assert verified.returncode == 1 and "changed shard: " in verified.stdout, verified.stdout[-3000:]
    assert damaged.name in verified.stdout


def test_an_s3_build_killed_at_a_random_moment_and_rerun_ends_equal_with_no_partial_or_stray_object(
    s3, published, sample_root, tmp_path
):
    """A build SIGKILLed (its whole process group) at a random moment, and run again, ends with the
    uninterrupted build's objects. The moment is either a random time within the first 70% of the
    uninterrupted build's duration (its tasks), or once a random number of its objects has
    appeared (its upload). Meanwhile every shard that shows under its final key is read back: it
    must already be the complete file."""
    env = s3_env(s3, sample_root)
    reference = s3.objects("runs", f"whole/{PHASE}")
    seed = random.randrange(1 << 30)
    chance = random.Random(seed)
    if chance.random() < 0.5:
        moment, after_objects = chance.uniform(0.05, 0.7) * published.seconds, len(reference) + 1
    else:
        moment, after_objects = float("inf"), chance.randrange(1, len(reference))
    where = f"seed {seed}: killed after {moment:.1f} s or {after_objects} objects"
    seen: dict[str, bytes] = {}  # every key listed so far, with the bytes of the shards
    watching = threading.Event()

    def watch() -> None:
        client = s3.client()
        while not watching.is_set():
            for page in client.get_paginator("list_objects_v2").paginate(Bucket="runs", Prefix="killed/"):
                for item in page.get("Contents", []):
                    if item["Key"] not in seen:
                        is_shard = item["Key"].endswith(".arrow")
                        seen[item["Key"]] = (
                            is_shard and client.get_object(Bucket="runs", Key=item["Key"])["Body"].read()
                        )
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    command = build_command("s3://runs/killed", tmp_path / "killed")
    running = subprocess.Popen(
        command, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    started = time.monotonic()
    while time.monotonic() - started < moment and len(seen) < after_objects and running.poll() is None:
        time.sleep(0.01)
    os.killpg(running.pid, signal.SIGKILL)
    assert running.wait() == -signal.SIGKILL, f"the build ended before it was killed ({where})"
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    watching.set()
    watcher.join()
    assert rerun.returncode == 0, f"{where}: {rerun.stderr[-3000:]}"
    assert s3.objects("runs", f"killed/{PHASE}") == reference, where
    for key, data in seen.items():
        if key.endswith(".arrow"):
            assert data == reference[key.split(f"killed/{PHASE}/", 1)[1]], (
                f"{key} was visible incomplete ({where})"
            )


def test_an_s3_output_without_credentials_is_a_one_line_error_before_anything_runs(s3, sample_root, tmp_path):
    env = s3_env(s3, sample_root, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    done = subprocess.run(
        build_command("s3://runs/nocreds", tmp_path / "staging"), env=env, capture_output=True, text=True
    )
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert (
        line.startswith("error: s3://") and "no S3 credentials found" in line and "AWS_ACCESS_KEY_ID" in line
    )
    assert not (tmp_path / "staging").exists()
    assert s3.objects("runs", "nocreds") == {}


def test_a_build_with_other_settings_from_another_staging_directory_is_refused(
    s3, published, sample_root, tmp_path
):
    """The output's own build.json decides, as in a local phase directory: a fresh staging directory
    (another machine, a cleared cache) cannot replace what is published with other settings unasked."""
    before = s3.objects("runs", f"whole/{PHASE}")
    command = [*build_command("s3://runs/whole", tmp_path / "elsewhere"), "--sources", "wikipedia"]
    done = subprocess.run(command, env=s3_env(s3, sample_root), capture_output=True, text=True, timeout=600)
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert f"s3://runs/whole/{PHASE} holds a build with other settings (sources, in its build.json)" in line
    assert "--overwrite" in line
    assert s3.objects("runs", f"whole/{PHASE}") == before
