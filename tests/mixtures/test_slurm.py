"""sbatch's answer, as the pipeline and the trainer both read it."""

import os

import pytest

from mixtures.slurm import SlurmError, queued_jobs, submitted_job_id


def test_job_id_of_a_plain_and_a_multi_cluster_answer():
    assert submitted_job_id("Submitted batch job 42\n") == "42"
    assert submitted_job_id("Submitted batch job 42 on cluster c2\n") == "42"  # datatrove#265
    with pytest.raises(SlurmError, match="no 'Submitted batch job N'"):
        submitted_job_id("sbatch: error: Batch job submission failed")


def _fake_squeue(tmp_path, monkeypatch, failures: int) -> None:
    """An squeue on PATH that times out ``failures`` times, then lists two jobs."""
    count = tmp_path / "calls"
    script = tmp_path / "bin" / "squeue"
    script.parent.mkdir(exist_ok=True)
    script.write_text(
        f'#!/bin/sh\necho x >> {count}\nif [ "$(wc -l < {count})" -le {failures} ]; then\n'
        '  echo "squeue: error: Socket timed out on send/recv operation" >&2; exit 1\nfi\n'
        'echo "41 build_ab12cd34"; echo "42 train_ffffffff"\n'
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{script.parent}:{os.environ['PATH']}")


def test_queued_jobs_asks_a_busy_controller_again_and_never_reads_a_failure_as_nothing_queued(
    tmp_path, monkeypatch
):
    _fake_squeue(tmp_path, monkeypatch, failures=2)
    assert queued_jobs("ab12cd34", retry_s=0) == ["41"]
    (tmp_path / "calls").unlink()
    _fake_squeue(tmp_path, monkeypatch, failures=3)
    with pytest.raises(SlurmError, match=r"squeue failed 3 times \(squeue: error: Socket timed out"):
        queued_jobs("ab12cd34", retry_s=0)


def test_queued_jobs_is_empty_where_slurm_is_not_installed(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert queued_jobs("ab12cd34") == []
