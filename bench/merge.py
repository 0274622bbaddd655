"""TIES merge of three base-shape encoders onto a base: wall time and peak memory, ours against a naive merge.

Four models of ``ModelConfig.preset("base")`` (307.79M parameters, 1.23 GB of float32 each) are
written as model directories in a temporary directory: the base with the preset's initialisation,
the three others the base plus independent noise, like three fine-tunes of it. Two contenders merge
them with TIES (``--density``, lambda 1), each in a process of its own, timed from its start to its
exit, with its peak resident memory (file pages it maps included) as the kernel reports it
(``wait4``'s ``ru_maxrss``):

- ``ours``: ``mmbert-train merge --method ties`` (``trainer/merge.py``: a block of rows at a time);
- ``naive``: ``bench.peers.naive_ties``, every state dict loaded whole with
  ``safetensors.torch.load_file``, the maths in torch, the result saved with ``save_file``.

The two outputs must be equal. A process that only imports what ours imports is measured too: its
start-up is part of both times. Goal: ours under 60 s on 2 cores, its peak under 4x one model's bytes.

    .venv/bin/python bench/merge.py [--density 0.2] [--preset base]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from bench.peers import naive_ties  # noqa: E402
from trainer.model import TIED_KEY, WEIGHTS_NAME, ModelConfig, ModernBertMLM  # noqa: E402

MODELS = ("a", "b", "c")
NOISE = 0.002  # the fine-tunes' distance from the base, per entry (the init's std is 0.02)
GOAL_SECONDS, GOAL_MODELS = 60.0, 4.0


def make_models(root: Path, preset: str) -> int:
    """The base and three noisy copies as model directories under ``root``; returns the parameters."""
    torch.manual_seed(0)
    model = ModernBertMLM(ModelConfig.preset(preset))
    model.save(root / "base")
    base = {key: value for key, value in model.state_dict().items() if key != TIED_KEY}
    for name in MODELS:
        model.save(root / name, {key: value + NOISE * torch.randn_like(value) for key, value in base.items()})
    return model.num_parameters()


def measure(command: list[str]) -> tuple[float, int]:
    """Seconds from start to exit and peak resident bytes of a process running ``command``.

    Linux counts in a child's ``ru_maxrss`` the peak of the process it was started from (up to its
    exec), so this process stays small: the models are made by a process of their own.
    """
    with tempfile.TemporaryFile() as errors:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        if process.returncode:
            errors.seek(0)
            sys.exit(f"{' '.join(command)} exited {process.returncode}:\n{errors.read().decode()}")
    return seconds, usage.ru_maxrss * 1024  # kilobytes on Linux


def largest_difference(first: Path, second: Path) -> float:
    """The largest absolute difference between two safetensors files' tensors of the same names."""
    worst = 0.0
    with safe_open(first, "pt") as ours, safe_open(second, "pt") as theirs:
        keys = ours.keys()
        assert set(keys) == set(theirs.keys()), "the outputs hold different tensors"
        for key in keys:
            worst = max(worst, (ours.get_tensor(key) - theirs.get_tensor(key)).abs().max().item())
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--density", type=float, default=0.2, help="TIES's kept fraction per tensor")
    parser.add_argument("--preset", default="base", help="model shape (base: 307.79M parameters)")
    parser.add_argument("--make", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--naive", nargs=5, metavar=("BASE", "A", "B", "C", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make:
        print(make_models(Path(args.make), args.preset))
        return
    if args.naive:
        *files, out = args.naive
        save_file(naive_ties(files[0], files[1:], args.density), out, metadata={"format": "pt"})
        return

    print(f"threads: {torch.get_num_threads()}; load average before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="bench-merge-") as name:
        root = Path(name)
        start = time.perf_counter()
        make = [sys.executable, __file__, "--make", str(root), "--preset", args.preset]
        parameters = int(subprocess.run(make, check=True, capture_output=True, text=True).stdout)
        one_model = (root / "a" / WEIGHTS_NAME).stat().st_size
        print(
            f"{args.preset} shape: {parameters / 1e6:.2f}M parameters; one model {one_model / 1e9:.3f} GB; "
            f"3 models + base written in {time.perf_counter() - start:.1f} s; TIES density {args.density}"
        )
        inputs = [str(root / model) for model in MODELS]
        ours = [sys.executable, "-m", "cli.train", "merge", "--method", "ties", *inputs, "--base"]
        ours += [str(root / "base"), "--density", str(args.density), "-o", str(root / "ours")]
        files = [str(root / model / WEIGHTS_NAME) for model in ("base", *MODELS)]
        naive = [sys.executable, __file__, "--density", str(args.density), "--naive", *files]
        naive.append(str(root / "naive.safetensors"))
        idle = [sys.executable, "-c", "import cli.train, trainer.merge"]
        results = {
            name: measure(command) for name, command in (("idle", idle), ("ours", ours), ("naive", naive))
        }
        for name, (seconds, peak) in results.items():
            print(
                f"{name:>5}: {seconds:6.1f} s, peak RSS {peak / 1e9:5.2f} GB = {peak / one_model:.2f}x "
                "one model's bytes"
            )
        (ours_s, ours_peak), (naive_s, naive_peak) = results["ours"], results["naive"]
        print(
            f"goal: ours < {GOAL_SECONDS:.0f} s and < {GOAL_MODELS:.0f}x one model: "
            f"{'met' if ours_s < GOAL_SECONDS and ours_peak < GOAL_MODELS * one_model else 'NOT met'}"
        )
        print(f"ratio ours / naive: time {ours_s / naive_s:.2f}x, peak RSS {ours_peak / naive_peak:.2f}x")
        difference = largest_difference(root / "ours" / WEIGHTS_NAME, root / "naive.safetensors")
        print(f"largest |ours - naive| over all tensors: {difference:.3g}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
