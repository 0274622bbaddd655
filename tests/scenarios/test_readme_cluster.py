"""README's "Running at scale" block, run as written on the local Slurm (`.ci/slurm.sh start`).

What is scaled down, and only that: the hub is a small local copy (``file://`` URIs of the
recipe), the recipe's token budgets and batches are a few thousand tokens (and its builds skip
MinHash, whose Slurm build `tests/pipeline/test_slurm.py` runs), and the flags that size the
cluster (tasks, workers, nodes, GPUs, model size) take what one 2-CPU node can run (one rank per
job: two-rank jobs are `tests/trainer/test_submit.py`'s).
Every other word of every command is README's; each substitution must find its text, so a
README that changes its commands changes what this test runs or fails it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mixtures.recipe import parse_tokens
from mixtures.slurm import job_tag, queued_jobs
from tests.corpus import file_recipe, small_hub
from trainer.checkpoint import checkpoint_dirs, read_state

ROOT = Path(__file__).resolve().parents[2]
TOKENS = 16_000  # per phase, instead of the recipe's 2.3T / 600B / 100B
WAIT_S = 900


def readme_cluster_blocks() -> list[str]:
    """The bash blocks of README's "Running at scale" section: the steps, then the merge."""
    text = (ROOT / "README.md").read_text()
    section = text[
        text.index("## Running at scale") : text.index("\n## ", text.index("## Running at scale") + 1)
    ]
    return re.findall(r"```bash\n(.*?)```", section, re.DOTALL)


def small_recipe(path: Path, hub: Path) -> Path:
    """The bundled recipe reading ``hub`` (a local copy laid out as the hub is), with the sample
    tokenizer trained from it, and each phase's tokens and batches scaled to a few steps."""
    file_recipe(path, hub)
    raw = yaml.safe_load(path.read_text())
    raw["tokenizer"] = f"sample:{hub}"
    raw["processing"]["dedup"] = False  # a dedup build on Slurm: tests/pipeline/test_slurm.py
    raw["training"].update(batch_size=8, batch_warmup_min=8, batch_warmup_tokens=0)
    for spec in raw["phases"].values():
        factor = TOKENS / parse_tokens(spec["tokens"])
        spec["tokens"] = TOKENS
        spec["budgets"] = {name: round(parse_tokens(n) * factor) for name, n in spec["budgets"].items()}
        spec.pop("max_epochs", None)  # the small hub's languages hold a few thousand tokens each
        spec["training"].update(seq_len=128, batch_warmup_tokens=0)
        lr = spec["training"]["lr"]
        lr["warmup_tokens"] = min(parse_tokens(lr.get("warmup_tokens", 0)), 2000)
    path.write_text(yaml.safe_dump(raw))
    return path


SUBSTITUTIONS = [  # (README's text, what one 2-CPU node runs), in both blocks
    ("/data/hub", "{work}/hub"),
    ("/data/build", "{work}/build"),
    ("mmbert-data download ", "mmbert-data download --recipe {recipe} "),
    ("mmbert-data build ", "mmbert-data build --recipe {recipe} "),
    ("mmbert-data mixture ", "mmbert-data mixture --recipe {recipe} "),
    ("--wait", "--wait --every 1"),
    ("--tasks 64", "--tasks 2"),
    ("--tasks 20000 --workers 2000", "--tasks 2 --workers 2"),
    ("--nodes 8 --gpus-per-node 8", "--nodes 1 --gpus-per-node 0 --procs-per-node 1 --cpus-per-task 1"),
    ("--model base", "--model tiny"),
]
PHASES = ("pretrain", "midtrain", "decay", "decay-cont", "decay-eng")


def scaled(blocks: list[str], work: Path, recipe: Path) -> list[str]:
    """README's blocks with paths in ``work``, the small recipe, and the cluster's sizes of one node."""
    for old, new in SUBSTITUTIONS:
        assert any(old in block for block in blocks), (
            f"README's cluster section lost {old!r}: update this test"
        )
        blocks = [block.replace(old, new.format(work=work, recipe=recipe)) for block in blocks]
    return blocks


def _wait_for_jobs(runs: list[Path]) -> None:
    deadline = time.monotonic() + WAIT_S
    while queued := [job for run in runs for job in queued_jobs(job_tag(run))]:
        assert time.monotonic() < deadline, f"jobs {', '.join(queued)} still queued after {WAIT_S} s"
        time.sleep(2)


def _bash(block: str, cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.slurm
def test_the_readme_cluster_commands_run_as_written(cluster, tmp_path):
    hub = tmp_path / "remote"
    small_hub(hub, docs_per_language=4)
    recipe = small_recipe(tmp_path / "recipe.yaml", hub)
    steps, merge = scaled(readme_cluster_blocks(), tmp_path, recipe)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env["MMBERT_DATA_CACHE"] = str(tmp_path / "cache")
    out = _bash(steps, tmp_path, env)
    assert len(re.findall(r"stage download: \d+ of \d+ tasks submitted", out)) == 3
    assert sorted(p.name for p in (tmp_path / "manifests").iterdir()) == sorted(f"{p}.json" for p in PHASES)

    runs = {phase: tmp_path / "runs" / phase for phase in PHASES}
    submitted = dict(zip(PHASES, re.findall(r"submitted job (\d+)", out), strict=True))
    assert f"starts when job {submitted['pretrain']} of runs/pretrain has ended well" in out
    assert out.count(f"starts when job {submitted['midtrain']} of runs/midtrain has ended well") == 3
    _wait_for_jobs(list(runs.values()))
    for phase, run in runs.items():
        log = (run / f"slurm-{submitted[phase]}.out").read_text()
        assert "done:" in log, log[-3000:]
        assert read_state(checkpoint_dirs(run)[-1])["tokens"] >= TOKENS, phase
        if phase != "pretrain":
            before = "runs/pretrain" if phase == "midtrain" else "runs/midtrain"
            assert f"model from --init {before} (" in log

    merged = _bash(merge, tmp_path, env)
    assert (tmp_path / "hf-model" / "model.safetensors").is_file() and "wrote" in merged
