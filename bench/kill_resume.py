"""Stress: `mmbert-train` killed with SIGKILL at random moments, then resumed, ends as if never killed.

Three ways to die, each ``--iterations`` times on the bundled sample (tiny model, CPU):

- ``single``: one process, SIGKILLed;
- ``torchrun``: torchrun with 2 ranks, its agent and both workers SIGKILLed at once;
- ``agent``: torchrun with 2 ranks, only the agent SIGKILLed (its workers are in sessions of
  their own); no worker may remain 10 s later.

Each iteration kills the run ``--kills`` times at a moment drawn uniformly from the length of an
uninterrupted run, resuming with ``--resume`` after every process of the killed run has exited,
then lets it finish. It checks that the final weights are bitwise equal to an uninterrupted run
of the same kind (one process, or two) and that ``metrics.jsonl`` holds each step once, prints
one line per iteration and a summary, and exits 1 on any failure.

Run: `.venv/bin/python bench/kill_resume.py [--iterations 3] [--kills 2] [--tokens 40k] [--seed 0]`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from bench.processes import alive, children  # noqa: E402
from bench.sample import sample_manifest  # noqa: E402
from trainer.checkpoint import checkpoint_dirs  # noqa: E402

MODES = ("single", "torchrun", "agent")
ORPHAN_LIMIT_S = 10.0


def command(manifest: Path, out: Path, tokens: str, processes: int) -> list[str]:
    """The trainer's command line: the tests' short CPU run, under torchrun for several processes."""
    args = ["--manifest", str(manifest), "-o", str(out), "--model", "tiny", "--tokens", tokens]
    args += ["--batch-size", "16", "--micro-batch-tokens", "4096", "--lr", "3e-3", "--save-every", "20k"]
    if processes == 1:
        return [sys.executable, "-m", "cli.train", *args]
    script = str(Path(sys.executable).parent / "mmbert-train")
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    return [*run, "--no-python", script, *args]


def launch(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def kill(process: subprocess.Popen, mode: str) -> tuple[str, float | None]:
    """SIGKILL the run as ``mode`` says; return what was killed and, for ``agent``, how long its workers
    outlived it (None if they were still there after ORPHAN_LIMIT_S; then they are killed)."""
    workers = children(process.pid) if mode != "single" else []
    if mode == "torchrun":
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    died = time.monotonic()
    while any(map(alive, workers)) and time.monotonic() - died < ORPHAN_LIMIT_S:
        time.sleep(0.05)
    left = [pid for pid in workers if alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    outlived = None if left else time.monotonic() - died
    return f"{len(workers)} worker(s)" if workers else "the process", outlived


def finish(argv: list[str]) -> None:
    process = launch(argv)
    _, stderr = process.communicate(timeout=1800)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{stderr[-3000:]}")


def weights(run: Path) -> dict:
    return load_file(str(checkpoint_dirs(run)[-1] / "model.safetensors"))


def steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def killed_and_resumed(
    argv: list[str], mode: str, kills: int, length: float, rng: random.Random
) -> list[str]:
    """Start the run, SIGKILL it at a random moment up to ``kills`` times (resuming each time), then let a
    last ``--resume`` finish it; return what happened, a line part per kill ("FAIL" where workers
    outlived their agent)."""
    notes = []
    for number in range(kills):
        process = launch(argv + ["--resume"] * (number > 0))
        at = rng.uniform(0, length)
        try:
            process.wait(timeout=at)
            notes.append(f"finished before the kill at {at:.1f} s")
            break
        except subprocess.TimeoutExpired:
            what, outlived = kill(process, mode)
        if outlived is None:
            notes.append(f"at {at:.1f} s: FAIL, workers alive {ORPHAN_LIMIT_S:.0f} s after their agent")
        elif mode == "agent":
            notes.append(f"at {at:.1f} s: agent killed, {what} gone {outlived:.1f} s later")
        else:
            notes.append(f"at {at:.1f} s: killed {what}")
    finish([*argv, "--resume"])
    return notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=3, help="kill-and-resume runs per mode")
    parser.add_argument("--kills", type=int, default=2, help="kills per run before it may finish")
    parser.add_argument("--tokens", default="40k", help="tokens per run (k/M suffixes)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    failures = 0
    with tempfile.TemporaryDirectory(prefix="mmbert-kill-resume-") as scratch:
        scratch = Path(scratch)
        manifest = sample_manifest(scratch / "sample")
        references: dict[int, tuple[Path, float]] = {}
        for mode in args.modes:
            processes = 1 if mode == "single" else 2
            if processes not in references:
                out, started = scratch / f"reference-{processes}", time.monotonic()
                finish(command(manifest, out, args.tokens, processes))
                references[processes] = (out, time.monotonic() - started)
                took = references[processes][1]
                print(f"reference, processes={processes}: {len(steps(out))} steps, {took:.0f} s", flush=True)
            reference, length = references[processes]
            for iteration in range(args.iterations):
                out = scratch / f"{mode}-{iteration}"
                notes = killed_and_resumed(
                    command(manifest, out, args.tokens, processes), mode, args.kills, length, rng
                )
                first, second = weights(reference), weights(out)
                equal = first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
                once = steps(out) == steps(reference)
                failures += sum(1 for note in notes if "FAIL" in note) + (not equal) + (not once)
                verdict = f"weights {'bitwise equal' if equal else 'DIFFER'}; "
                verdict += f"steps {'each once' if once else 'WRONG'}"
                print(f"{mode} #{iteration}: {'; '.join(notes)}; {verdict}", flush=True)
    print("all passed" if failures == 0 else f"{failures} failure(s)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
