"""A build killed with SIGKILL and rerun ends equal to an uninterrupted one, never showing partial shards."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest

from tests.corpus import build_args, prose, write_fineweb2
from tests.fixtures import shard_rows

LANGUAGES = ("fra_Latn", "deu_Latn", "rus_Cyrl", "eng_Latn")


def _command(hub: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "cli.data", *build_args(hub, out, "--sources", "fineweb2", "--tasks", "8")]


def _watch_final_shards(root: Path, stop: threading.Event, problems: list[str]) -> None:
    """Open every .arrow under its final name while the build runs; each must be complete."""
    while not stop.is_set():
        for path in root.rglob("*.arrow"):
            try:
                with pa.ipc.open_stream(pa.memory_map(str(path))) as reader:
                    reader.read_all()
            except FileNotFoundError:
                continue  # removed by a restarted task between listing and opening
            except pa.ArrowInvalid as err:
                problems.append(f"{path}: {err}")
        time.sleep(0.005)


@pytest.mark.slow
def test_sigkill_then_rerun_equals_uninterrupted_build(tmp_path):
    hub = tmp_path / "hub"
    rng = random.Random(11)
    for i, label in enumerate(LANGUAGES * 2):
        write_fineweb2(hub, label, [prose(rng, label, sentences=20) for _ in range(250)], name=f"000_{i:05d}")
    env = {**os.environ, "MMBERT_DATA_CACHE": str(tmp_path / "cache")}
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    subprocess.run(_command(hub, clean), env=env, check=True, capture_output=True)

    stop, problems = threading.Event(), []
    watcher = threading.Thread(target=_watch_final_shards, args=(killed, stop, problems))
    watcher.start()
    process = subprocess.Popen(
        _command(hub, killed),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    write_done = killed / "pretrain" / "_logs" / "write" / "completions"
    deadline = time.monotonic() + 300
    while not (write_done.exists() and any(write_done.iterdir())) and process.poll() is None:
        assert time.monotonic() < deadline, "build never reached its write stage"
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert len(list(write_done.iterdir())) < 8, "the build finished before it could be killed"
    assert not (killed / "pretrain" / "stats.json").exists()

    rerun = subprocess.Popen(
        _command(hub, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, stderr = rerun.communicate(timeout=300)
    stop.set()
    watcher.join()
    assert rerun.returncode == 0, stderr.decode()[-2000:]
    assert problems == []
    assert shard_rows(killed / "pretrain") == shard_rows(clean / "pretrain")
    assert shard_rows(killed / "pretrain", heldout=True) == shard_rows(clean / "pretrain", heldout=True)
    assert (
        set(shard_rows(clean / "pretrain"))
        == set(shard_rows(clean / "pretrain", heldout=True))
        == set(LANGUAGES)
    )
    leftovers = [p for p in killed.rglob("*") if p.name.endswith((".tmp", ".part"))]
    assert leftovers == []
