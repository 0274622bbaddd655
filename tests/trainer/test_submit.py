"""`mmbert-train submit`: the batch script it writes, the checks before it, and sbatch's answers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.train import app
from tests.trainer.runs import ROOT, assert_bitwise_equal, metrics, run
from trainer.submit import SCRIPT_NAME, SubmitError, SubmitOptions, sbatch_script

runner = CliRunner()


@pytest.fixture
def fake_sbatch(tmp_path, monkeypatch) -> Path:
    """An `sbatch` on PATH (and nothing else there) that records its arguments and answers as a
    multi-cluster Slurm does: a real cluster is never asked."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "sbatch"
    script.write_text(
        f'#!/bin/sh\necho "$@" > {tmp_path / "sbatch-args"}\necho "Submitted batch job 42 on cluster c1"\n'
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    return tmp_path / "sbatch-args"


def submit(manifest: Path, out: Path, *extra: str) -> list[str]:
    return [
        "submit",
        "--manifest",
        str(manifest),
        "-o",
        str(out),
        "--batch-size",
        "8",
        "--tokens",
        "150k",
        *extra,
    ]


def test_the_dry_run_prints_a_script_that_starts_torchrun_on_every_node_and_writes_nothing(
    sample_manifests, tmp_path
):
    out = tmp_path / "run"
    flags = ("--nodes", "2", "--gpus-per-node", "8", "--time", "4:00:00", "--sbatch-arg=--exclusive")
    result = runner.invoke(
        app, [*submit(sample_manifests["pretrain"], out, *flags, "--model", "tiny"), "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    script = result.stdout
    for line in (
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --time=4:00:00",
        "#SBATCH --signal=B:USR1@300",
        "#SBATCH --requeue",
        f"#SBATCH --output={out}/slurm-%j.out",
        "#SBATCH --exclusive",
        'scontrol requeue "$SLURM_JOB_ID"',
    ):
        assert line in script.splitlines() or line in script, line
    (launch,) = [line for line in script.splitlines() if line.startswith("srun ")]
    assert '--nnodes="$SLURM_NNODES" --nproc-per-node=8 --rdzv-backend=c10d' in launch
    assert "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 --no-python" in launch
    assert launch.endswith(
        f"mmbert-train --manifest {sample_manifests['pretrain'].resolve()} --batch-size 8 --tokens 150k "
        f"--model tiny --output {out} --resume &"
    )
    (tmp_path / "job.sbatch").write_text(script)
    assert subprocess.run(["bash", "-n", str(tmp_path / "job.sbatch")]).returncode == 0  # valid bash
    assert not out.exists()


def test_training_flags_are_checked_before_anything_is_written_or_submitted(
    sample_manifests, tmp_path, fake_sbatch
):
    out = tmp_path / "run"
    for extra, message in (
        (("--bogus", "3"), "error: a training flag: No such option: --bogus"),
        (("--model", "huge"), "error: --model 'huge': choose tiny, small, base"),
        (("--nodes", "0"), "error: --nodes must be >= 1, got 0"),
    ):
        result = runner.invoke(app, submit(sample_manifests["pretrain"], out, *extra))
        assert result.exit_code == 1 and result.output.strip().splitlines()[-1].startswith(message), (
            result.output
        )
    too_short = runner.invoke(
        app, ["submit", "--manifest", str(sample_manifests["pretrain"]), "-o", str(out)]
    )
    assert too_short.exit_code == 1 and "pass --batch-size" in too_short.output
    assert not out.exists() and not fake_sbatch.exists()


def test_submitting_writes_the_script_into_the_run_and_names_the_job(sample_manifests, tmp_path, fake_sbatch):
    out = tmp_path / "run"
    result = runner.invoke(app, submit(sample_manifests["pretrain"], out, "--resume"))  # --resume: once
    assert result.exit_code == 0, result.output
    assert result.output.strip() == (f"submitted job 42: {out / SCRIPT_NAME}; its log is {out}/slurm-42.out")
    assert fake_sbatch.read_text().strip() == str(out / SCRIPT_NAME)
    assert (out / SCRIPT_NAME).read_text().count("--resume") == 1


def test_sbatch_missing_or_refusing_is_one_line(sample_manifests, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch there
    result = runner.invoke(app, submit(sample_manifests["pretrain"], tmp_path / "run"))
    assert result.output.strip() == (
        f"error: sbatch is not on PATH: run this on a Slurm login node, or `sbatch "
        f"{tmp_path / 'run' / SCRIPT_NAME}` there"
    )
    refusing = tmp_path / "sbatch"
    refusing.write_text('#!/bin/sh\necho "sbatch: error: invalid partition specified: gpu" >&2\nexit 1\n')
    refusing.chmod(0o755)
    result = runner.invoke(app, submit(sample_manifests["pretrain"], tmp_path / "run", "--partition", "gpu"))
    assert result.output.strip().endswith("failed: sbatch: error: invalid partition specified: gpu")


def test_options_are_checked_and_cpu_jobs_run_one_rank_per_node(tmp_path):
    with pytest.raises(SubmitError, match="--warning must be >= 0"):
        SubmitOptions(warning=-1).check()
    script = sbatch_script(SubmitOptions(nodes=3), "decay", tmp_path, ["--manifest", "/m.json"])
    assert "--gpus-per-node" not in script and "--nproc-per-node=1 " in script
    assert os.fspath(tmp_path) in script
    assert "--dependency" not in script and "--kill-on-invalid-dep" not in script
    # after the phase before's job: it waits for it to end well, and ends if that job cannot
    after = sbatch_script(SubmitOptions(), "decay", tmp_path, ["--manifest", "/m.json"], after=["7", "9"])
    assert "#SBATCH --dependency=afterok:7:9\n#SBATCH --kill-on-invalid-dep=yes\n" in after


def _squeue(job: str, fields: str) -> str | None:
    """What squeue lists for a job ("" once it has left the queue), or None when squeue itself
    failed (a busy controller times out): a failed query says nothing about the job."""
    done = subprocess.run(["squeue", "-h", "-j", job, "-o", fields], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def _left_the_queue(job: str) -> bool:
    return _squeue(job, "%T") == ""


def _ended_after_requeue(job: str, log: Path) -> bool:
    """Whether the job has run to its end ("done:" in its log) and left the queue. The requeued job
    waits out its revoked credential first (`AuthInfo=cred_expire`, 10 s on the CI cluster); one
    that leaves the queue without ending fails the test at once, with its log."""
    if _squeue(job, "%T") != "":
        return False
    text = log.read_text() if log.exists() else ""
    assert "done:" in text, f"job {job} left the queue before its end:\n{text[-3000:]}"
    return True


def _wait_until(condition, timeout_s: float = 300, what: str = "the job") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: still waiting after {timeout_s} s"
        time.sleep(0.5)


def _submit(args: list[str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "cli.train", *args], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.split()[2].rstrip(":")  # "submitted job N: ..."


@pytest.mark.slurm
def test_a_submitted_two_rank_job_requeues_at_its_warning_and_resumes_after_scancel_exactly(
    cluster, sample_manifests, tmp_path
):
    """On the local cluster: torchrun with 2 ranks in one job. The time-limit warning (sent by hand,
    as Slurm would) checkpoints and requeues the job, which resumes; a job cancelled mid-run is
    submitted again and resumes. Both end bit for bit where an uninterrupted 2-rank run ends."""
    flags = ["--save-every", "20k", "--model", "tiny", "--lr", "3e-3", "--micro-batch-tokens", "4096"]
    flags += ["--batch-size", "16", "--tokens", "300k"]
    manifest = str(sample_manifests["pretrain"])
    reference = tmp_path / "reference"
    assert run(["--manifest", manifest, "-o", str(reference), *flags], processes=2).returncode == 0
    job_flags = ["--procs-per-node", "2", "--cpus-per-task", "2", "--warning", "60"]

    warned = tmp_path / "warned"
    job = _submit(["submit", "--manifest", manifest, "-o", str(warned), *job_flags, *flags])
    _wait_until(lambda: (warned / "metrics.jsonl").exists() and len(metrics(warned)) >= 2, what=f"job {job}")
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True)  # the warning, early
    log_file = warned / f"slurm-{job}.out"
    _wait_until(lambda: _ended_after_requeue(job, log_file), timeout_s=600, what=f"job {job}")
    log = log_file.read_text()
    assert "requeueing job" in log and "resuming" in log and "done:" in log, log[-3000:]
    assert_bitwise_equal(reference, warned)

    cancelled = tmp_path / "cancelled"
    job = _submit(["submit", "--manifest", manifest, "-o", str(cancelled), *job_flags, *flags])
    _wait_until(lambda: (cancelled / "metrics.jsonl").exists() and len(metrics(cancelled)) >= 2)
    subprocess.run(["scancel", job], check=True)
    _wait_until(lambda: _left_the_queue(job), what=f"job {job}")
    assert "done:" not in (cancelled / f"slurm-{job}.out").read_text()
    again = _submit(["submit", "--manifest", manifest, "-o", str(cancelled), *job_flags, *flags])
    _wait_until(lambda: _left_the_queue(again), timeout_s=600, what=f"job {again}")
    assert "done:" in (cancelled / f"slurm-{again}.out").read_text()
    assert_bitwise_equal(reference, cancelled)
