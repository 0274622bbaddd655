"""Running ``mmbert-train`` in the trainer's tests: short CPU runs in this process or as processes
(alone, under torchrun, as srun's tasks), and reading the checkpoints and metrics they leave."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from cli.train import app
from trainer.checkpoint import checkpoint_dirs

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def tiny(manifest: Path | str, out: Path, *extra: str, tokens: str = "60k") -> list[str]:
    """A short CPU run: 16 sequences of 1024 per step, in micro-batches of 4096 tokens (four per step)."""
    return [
        "--manifest",
        str(manifest),
        "-o",
        str(out),
        "--model",
        "tiny",
        "--tokens",
        tokens,
        "--batch-size",
        "16",
        "--micro-batch-tokens",
        "4096",
        "--lr",
        "3e-3",
        "--save-every",
        "20k",
        *extra,
    ]


def train(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def fails(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 1, result.output
    return result.output


def launch(args: list[str], processes: int = 1, crash_at: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if crash_at:
        env["MMBERT_TRAIN_CRASH_AT"] = crash_at
    if processes == 1:
        command = [sys.executable, "-m", "cli.train", *args]
    else:  # the README's form: torchrun runs the console script
        script = str(Path(sys.executable).parent / "mmbert-train")
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={processes}",
        ]
        command += ["--no-python", script, *args]
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def launch_as_srun_task(args: list[str], task: int, tasks: int) -> subprocess.Popen:
    """One task of a job step, with the variables ``srun`` sets (and none of torchrun's)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("SLURM_", "TORCHELASTIC"))}
    env.update(
        SLURM_JOB_ID=str(os.getpid()),  # the rendezvous port follows the job id
        SLURM_STEP_NUM_TASKS=str(tasks),
        SLURM_NTASKS=str(tasks),
        SLURM_PROCID=str(task),
        SLURM_LOCALID=str(task),
        SLURM_STEP_NODELIST="localhost",
        OMP_NUM_THREADS="1",  # as torchrun sets it for several workers: the same threads, the same sums
        PYTHONUNBUFFERED="1",
    )
    command = [sys.executable, "-m", "cli.train", *args]
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def run(args: list[str], processes: int = 1, crash_at: str | None = None) -> subprocess.CompletedProcess:
    process = launch(args, processes, crash_at)
    output, _ = process.communicate(timeout=600)
    return subprocess.CompletedProcess(process.args, process.returncode, output)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint_dirs(run_dir)[-1] / "model.safetensors"))


def assert_bitwise_equal(a: Path, b: Path) -> None:
    first, second = weights(a), weights(b)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first), "weights differ"


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def wait_for_steps(process: subprocess.Popen, run_dir: Path, steps: int, timeout_s: float = 300) -> None:
    """Wait until a running ``mmbert-train`` has logged ``steps`` steps (it must not exit first)."""
    deadline = time.monotonic() + timeout_s
    while not (run_dir / "metrics.jsonl").exists() or len(metrics(run_dir)) < steps:
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
