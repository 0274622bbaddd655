"""The benchmarks' data: the bundled sample built and compiled offline in a scratch directory.

The same steps as `make demo` (the sample's hub layout, its own small tokenizer, FineWeb2's
filter configs, bad input skipped), with the cache inside the scratch directory so that nothing is
written to the user's cache.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from mixtures.compiler import compile_phase
from mixtures.counts import read_stats
from mixtures.manifest import build_manifest, write_manifest
from mixtures.recipe import load_recipe
from pipeline.build import Build
from pipeline.build_options import BuildOptions

SAMPLE = Path(__file__).resolve().parents[1] / "pipeline" / "sample"
MIXTURE_TOKENS = 150_000  # what `make demo` compiles


def sample_manifest(directory: Path, phase: str = "pretrain", tokens: int = MIXTURE_TOKENS) -> Path:
    """Build the sample's ``phase`` under ``directory`` and compile its manifest; return the manifest's path.

    Sets ``MMBERT_DATA_CACHE`` to ``directory / "cache"`` (where the sample tokenizer is trained).
    """
    os.environ["MMBERT_DATA_CACHE"] = str(directory / "cache")
    recipe = load_recipe()
    plan = Build(
        BuildOptions(
            recipe=recipe,
            phase=phase,
            output=directory / "data",
            input_root=str(SAMPLE / "hub"),
            tokenizer=f"sample:{SAMPLE / 'hub'}",
            on_error="skip",
        )
    )
    plan.run()
    counts = read_stats(plan.phase_dir)
    path = directory / "manifests" / f"{phase}.json"
    mixture = compile_phase(recipe, phase, counts, tokens=tokens)
    write_manifest(build_manifest(mixture, recipe, counts, seed=0), path)
    return path


@contextlib.contextmanager
def quiet(log: Path) -> Iterator[None]:
    """Send the build's console output (datatrove's stats, progress bars) to ``log``; show it on error."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "w") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            print(log.read_text()[-4000:], file=sys.stderr)
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
