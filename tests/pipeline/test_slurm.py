"""`mmbert-data build --executor slurm` on a real cluster (`.ci/slurm.sh start`; CI starts one).

The tests marked ``slurm`` skip where no cluster answers ``sinfo``, and fail instead under
``MMBERT_REQUIRE_SLURM=1`` (``.ci/run`` sets it, so a skipped Slurm test cannot pass CI). The
cluster has no accounting (no ``sacct``): the tests poll ``squeue`` for the build's jobs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mixtures.slurm import job_tag, queued_jobs
from pipeline.build_options import SlurmOptions
from pipeline.slurm import cluster_max_array_size, slurm_executor
from tests.corpus import FINEWEB2, build_args, file_recipe, small_hub

VENV_BIN = str(Path(sys.executable).parent)
WAIT_S = 300  # a dedup build of the small hub takes about 40 s on 2 cores


@pytest.fixture
def multi_cluster_sbatch(tmp_path) -> str:
    """A directory whose ``sbatch`` answers as a multi-cluster site does (datatrove#265)."""
    real = shutil.which("sbatch")
    wrapper = tmp_path / "bin" / "sbatch"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nout=$({real} "$@") || exit $?\necho "$out on cluster local"\n')
    wrapper.chmod(0o755)
    return str(wrapper.parent)


def _env(tmp_path: Path, *first_on_path: str) -> dict[str, str]:
    """The build's environment: USER empty (as in a container) and PATH without this venv, so the jobs
    find the project's python only through the line the build gives them."""
    path = [p for p in os.environ["PATH"].split(os.pathsep) if p != VENV_BIN]
    env = {**os.environ, "MMBERT_DATA_CACHE": str(tmp_path / "cache"), "USER": ""}
    env["PATH"] = os.pathsep.join([*first_on_path, *path])
    env.pop("VIRTUAL_ENV", None)
    return env


def _build(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    run = subprocess.run([sys.executable, "-m", "cli.data", *args], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    return run


def _wait(phase_dir: Path) -> None:
    """Until none of the phase's jobs is queued or running."""
    deadline = time.monotonic() + WAIT_S
    while queued := queued_jobs(job_tag(phase_dir)):
        assert time.monotonic() < deadline, f"jobs {', '.join(queued)} still queued after {WAIT_S} s"
        time.sleep(1)


def _shards(phase_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(phase_dir)): p.read_bytes() for p in sorted(phase_dir.rglob("*.arrow"))}


def _status(run_dir: Path, env: dict[str, str]) -> dict[str, tuple[int, ...]]:
    """`mmbert-data status`'s figures per stage (tasks, done, failed, running, pending, unfinished)."""
    run = _build(["status", str(run_dir)], env)
    rows = [line.split() for line in run.stdout.splitlines() if line.startswith("  ")]
    return {row[0]: tuple(map(int, row[1:])) for row in rows if len(row) == 7 and row[1].isdigit()}


def _local_build(hub: Path, out: Path, env: dict[str, str], *extra: str) -> Path:
    _build(build_args(hub, out, *extra), env)
    return out / "pretrain"


@pytest.mark.slurm
def test_slurm_build_with_dedup_equals_the_local_build(cluster, tmp_path, multi_cluster_sbatch):
    """The chained stages (process, buckets, clusters, write, stats) submitted through an sbatch that
    answers `... on cluster C`, run with the project's python though PATH lacks it, end in the shards
    a local build writes. Where the cluster's MaxArraySize is below the 14 MinHash buckets (CI:
    SLURM_MAX_ARRAY_SIZE=8), the buckets stage is split over several arrays and still finishes."""
    hub = tmp_path / "hub"
    small_hub(hub)
    env = _env(tmp_path, multi_cluster_sbatch)
    local = _local_build(hub, tmp_path / "local", env, "--dedup")
    out = tmp_path / "slurm"
    run = _build(build_args(hub, out, "--dedup", "--executor", "slurm"), env)
    phase_dir = out / "pretrain"
    assert "stage process: 4 of 4 tasks submitted as job " in run.stderr
    buckets = re.search(r"stage buckets: 14 of 14 tasks submitted as jobs? ([\d, ]+), then job", run.stderr)
    assert buckets, run.stderr
    if cluster_max_array_size() < 14:
        assert len(buckets.group(1).split(", ")) == -(-14 // cluster_max_array_size())
    _wait(phase_dir)
    assert (phase_dir / "stats.json").is_file(), sorted(p.name for p in phase_dir.iterdir())
    shards = _shards(phase_dir)
    assert shards and shards == _shards(local)


@pytest.mark.slurm
def test_rerun_after_scancel_resubmits_only_unfinished_tasks(cluster, tmp_path):
    """Tasks cancelled before they ran are the only ones a rerun submits; the finished ones are not run
    again (their logs are untouched) and the shards equal the local build's. A rerun while the build's
    jobs are still queued would run their tasks twice: it is refused in one line."""
    hub = tmp_path / "hub"
    small_hub(hub)
    env = _env(tmp_path)
    local = _local_build(hub, tmp_path / "local", env, "--no-dedup")
    out = tmp_path / "slurm"
    args = build_args(hub, out, "--no-dedup", "--executor", "slurm", "--workers", "1")
    first = _build(args, env)
    (job,) = re.findall(r"stage process: 4 of 4 tasks submitted as job (\d+)", first.stderr)
    subprocess.run(["scancel", f"{job}_[2-3]"], check=True)  # `--workers 1`: tasks 2, 3 wait their turn
    subprocess.run(["scontrol", "hold", f"{job}_1"], check=True)  # queued until released
    rerun = [sys.executable, "-m", "cli.data", *args]
    refused = subprocess.run(rerun, env=env, capture_output=True, text=True)
    subprocess.run(["scontrol", "release", f"{job}_1"], check=True)
    assert refused.returncode == 1
    (line,) = refused.stderr.strip().splitlines()
    assert "of this build are still queued" in line and "scancel" in line
    phase_dir = out / "pretrain"
    _wait(phase_dir)  # the stats job, left without its dependency, is cancelled too
    completions = phase_dir / "_logs" / "process" / "completions"
    done = sorted(p.name for p in completions.iterdir())
    assert done == ["00000", "00001"] and not (phase_dir / "stats.json").exists()
    assert _status(out, env) == {
        "process": (4, 2, 0, 0, 0, 2),
        "select": (1, 0, 0, 0, 0, 1),
        "heldout": (4, 0, 0, 0, 0, 4),
        "stats": (1, 0, 0, 0, 0, 1),
    }
    logs = {p: p.stat().st_mtime_ns for p in (phase_dir / "_logs" / "process" / "logs").iterdir()}

    again = _build(args, env)
    assert "stage process: 2 of 4 tasks submitted as job " in again.stderr
    assert "(2 done before)" in again.stderr
    _wait(phase_dir)
    assert (phase_dir / "stats.json").is_file()
    assert sorted(p.name for p in completions.iterdir()) == ["00000", "00001", "00002", "00003"]
    assert _status(phase_dir, env) == {
        "process": (4, 4, 0, 0, 0, 0),
        "select": (1, 1, 0, 0, 0, 0),
        "heldout": (4, 4, 0, 0, 0, 0),
        "stats": (1, 1, 0, 0, 0, 0),
    }
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in logs.items())
    assert _shards(phase_dir) == _shards(local)
    finished = _build(args, env)  # nothing left to submit: the build's statistics, as a local rerun
    assert "submitted" not in finished.stdout + finished.stderr and "stats.json" in finished.stdout


def test_status_of_a_local_build_names_the_failed_task(tmp_path):
    """Without a queue, `status` reads the logging dirs: the failed task, the last line of its log."""
    hub = tmp_path / "hub"
    small_hub(hub)
    corrupt = hub / FINEWEB2 / "data" / "deu_Latn" / "train" / "000_00000.parquet"
    corrupt.write_bytes(b"PAR1" + bytes(range(256)) * 2)
    out = tmp_path / "out"
    env = _env(tmp_path)
    args = build_args(hub, out, "--tasks", "2", "--on-error", "fail", "--sources", "fineweb2")
    failed = subprocess.run(
        [sys.executable, "-m", "cli.data", *args], env=env, capture_output=True, text=True
    )
    assert failed.returncode == 1
    figures = _status(out, env)
    tasks, done, failed_tasks, running, pending, unfinished = figures["process"]
    assert tasks == 2 and failed_tasks >= 1 and (running, pending) == (0, 0)
    assert done + failed_tasks + unfinished == 2
    shown = _build(["status", str(out)], env).stdout
    (line,) = [line for line in shown.splitlines() if "failed:" in line][:1]
    assert "process task " in line and "unreadable parquet" in line and "task_0000" in line
    assert "rerun the same `mmbert-data build` command" in shown
    missing = subprocess.run(
        [sys.executable, "-m", "cli.data", "status", str(hub)], env=env, capture_output=True
    )
    assert missing.returncode == 1 and b"no build here" in missing.stderr


@pytest.mark.slurm
def test_a_refused_submission_is_one_line(cluster, tmp_path):
    hub = tmp_path / "hub"
    small_hub(hub, docs_per_language=2)
    env = _env(tmp_path)
    args = build_args(hub, tmp_path / "out", "--no-dedup", "--executor", "slurm", "--partition", "nowhere")
    run = subprocess.run([sys.executable, "-m", "cli.data", *args], env=env, capture_output=True, text=True)
    assert run.returncode == 1
    (line,) = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert "sbatch failed (exit 1" in line and "--partition" in line
    assert not queued_jobs(job_tag(tmp_path / "out" / "pretrain"))


@pytest.mark.slurm
def test_slurm_download_names_its_failed_task_and_a_rerun_finishes_only_that_one(cluster, tmp_path):
    """`download --executor slurm` shares the files out over an array; a task that cannot write its
    share fails, `status` shows it with its error, and the same command again resubmits just it."""
    hub = tmp_path / "remote"
    small_hub(hub, docs_per_language=2)
    recipe = file_recipe(tmp_path / "recipe.yaml", hub)
    mirror = tmp_path / "mirror"
    fineweb2 = mirror / str(hub).lstrip("/") / FINEWEB2 / "data"
    fineweb2.mkdir(parents=True)
    (fineweb2 / "deu_Latn").write_text("a file where the language's directory must go")
    env = _env(tmp_path)
    args = ["download", "--phase", "pretrain", "--recipe", str(recipe), "-o", str(mirror)]
    args += ["--languages", "fra,deu,eng", "--executor", "slurm", "--tasks", "3"]
    first = _build(args, env)
    assert re.search(
        r"stage download: 3 of 3 tasks submitted as job \d+, then job \d+ merges their stats$",
        first.stdout.strip(),
    )
    logs = mirror / "_logs" / "download-pretrain"
    _wait(logs)
    assert _status(mirror, env) == {"download-pretrain": (3, 2, 1, 0, 0, 0)}
    shown = _build(["status", str(mirror)], env).stdout
    (failed,) = [line for line in shown.splitlines() if "failed:" in line]
    assert (
        "download-pretrain task " in failed
        and "deu_Latn" in failed
        and "log: _logs/download-pretrain" in failed
    )
    assert "rerun the same `mmbert-data download` command" in shown

    (fineweb2 / "deu_Latn").unlink()
    again = _build(args, env)
    assert re.search(
        r"stage download: 1 of 3 tasks submitted as job \d+ \(2 done before\), then job \d+ merges",
        again.stdout.strip(),
    )
    _wait(logs)
    assert _status(mirror, env) == {"download-pretrain": (3, 3, 0, 0, 0, 0)}
    copied = sorted(p for p in (mirror / str(hub).lstrip("/")).rglob("*") if p.is_file())
    assert len(copied) == 6  # fra and deu parquet, wikipedia fr, dclm, dolmino, arxiv
    assert all(p.read_bytes() == (Path("/") / p.relative_to(mirror)).read_bytes() for p in copied)
    done = _build(args, env)
    assert done.stdout.strip() == "stage download: done before (3 tasks)"


def test_sbatch_args_reach_every_job_and_a_short_form_is_refused(tmp_path):
    slurm = SlurmOptions(account="proj", sbatch_args=("--exclusive", "--constraint=cpu&big"))
    executor = slurm_executor(
        [], slurm, tasks=3, workers=2, logging_dir=tmp_path, job_name="job", max_array_size=8
    )
    script = executor.get_launch_file_contents(executor.get_sbatch_args(3), "srun true")
    for line in ("#SBATCH --exclusive\n", "#SBATCH --constraint=cpu&big\n", "#SBATCH --account=proj\n"):
        assert line in script
    assert "#SBATCH --array=0-2%2\n" in script and "#SBATCH --kill-on-invalid-dep=yes\n" in script
    env = _env(tmp_path)
    args = build_args(tmp_path / "hub", tmp_path / "out", "--executor", "slurm", "--sbatch-arg", "exclusive")
    run = subprocess.run([sys.executable, "-m", "cli.data", *args], env=env, capture_output=True, text=True)
    assert run.returncode == 1 and run.stderr.strip() == (
        "error: --sbatch-arg 'exclusive': use the long form, e.g. --exclusive or --constraint=cpu"
    )
    assert not (tmp_path / "out").exists()
