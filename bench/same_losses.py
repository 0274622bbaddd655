"""Benchmark: the demo's three phases trained by this tree and by another commit, loss for loss.

A change that is meant to leave training as it was (a restructuring, a faster kernel on the
CPU path) must leave every logged loss the same, bit for bit. This runs the `make demo`
training chain on the bundled sample, short: pretrain, then midtrain with ``--init`` from it,
then decay with ``--init`` from midtrain (``--model tiny --lr 1e-2``, the demo's flags, fewer
tokens), once with this working tree and once with ``--against REF`` checked out into a
temporary git worktree, on the same manifests (built and compiled once, by this tree). It
prints each phase's steps, whether loss, accuracy, mask rate, tokens and lr agree exactly in
``metrics.jsonl``, and both trees' wall time with their ratio. Exit status 1 if any differ.

Run: `.venv/bin/python bench/same_losses.py --against REF [--tokens 200k]`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.sample import quiet, sample_manifest  # noqa: E402
from mixtures.recipe import parse_tokens  # noqa: E402

PHASES = ("pretrain", "midtrain", "decay")
BATCH = {"pretrain": "16", "midtrain": "2", "decay": "2"}  # as `make demo` trains them
COMPARED = ("step", "tokens", "loss", "accuracy", "mask_rate", "lr")


def train_chain(tree: Path, manifests: dict[str, Path], runs: Path, tokens: int) -> tuple[list, float]:
    """The three phases trained by the code in ``tree``: each phase's metrics records, and the wall time."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    started, records, previous = time.perf_counter(), [], None
    for phase in PHASES:
        out = runs / phase
        command = [sys.executable, "-m", "cli.train", "--manifest", str(manifests[phase]), "-o", str(out)]
        command += ["--model", "tiny", "--lr", "1e-2", "--tokens", str(tokens), "--batch-size", BATCH[phase]]
        command += ["--init", str(previous)] if previous else []
        result = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"{tree}: {phase} failed:\n{result.stderr[-3000:]}")
        lines = (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        records.append([json.loads(line) for line in lines])
        previous = out
    return records, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", required=True, help="the commit to compare with (e.g. main~3)")
    parser.add_argument("--tokens", default="200k", help="tokens per phase (k/M suffixes)")
    args = parser.parse_args()
    tokens = parse_tokens(args.tokens)
    with tempfile.TemporaryDirectory(prefix="mmbert-same-losses-") as scratch:
        scratch = Path(scratch)
        reference = scratch / "reference"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(reference), args.against],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        try:
            with quiet(scratch / "build.log"):
                manifests = {phase: sample_manifest(scratch / "sample", phase) for phase in PHASES}
            ours, ours_s = train_chain(ROOT, manifests, scratch / "ours", tokens)
            theirs, theirs_s = train_chain(reference, manifests, scratch / "theirs", tokens)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(reference)], cwd=ROOT, check=False)
    print(f"this tree vs {args.against}: {tokens:,} tokens per phase, tiny model, CPU")
    same = True
    for phase, mine, other in zip(PHASES, ours, theirs, strict=True):
        equal = [[r[k] for k in COMPARED] for r in mine] == [[r[k] for k in COMPARED] for r in other]
        same &= equal
        verdict = "yes" if equal else "NO"
        print(f"  {phase:<9} {len(mine):>4} steps  last loss {mine[-1]['loss']:.6f}  identical: {verdict}")
    ratio = ours_s / theirs_s
    print(f"  wall time: this tree {ours_s:.1f} s, {args.against} {theirs_s:.1f} s (ratio {ratio:.2f})")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
