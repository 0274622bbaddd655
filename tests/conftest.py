"""Shared fixtures: the bundled sample built and compiled once per session, as `make demo` does."""

from __future__ import annotations

from pathlib import Path

import pytest

from mixtures.compiler import compile_phase
from mixtures.counts import read_stats
from mixtures.manifest import build_manifest, write_manifest
from mixtures.recipe import load_recipe
from pipeline.build import Build, BuildOptions

SAMPLE = Path(__file__).resolve().parents[1] / "pipeline" / "sample"
PHASES = ("pretrain", "midtrain", "decay")
DEMO_TOKENS = 150_000  # the mixture size `make demo` compiles


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory) -> Path:
    """A session directory whose ``cache`` holds the sample tokenizer (set as MMBERT_DATA_CACHE)."""
    return tmp_path_factory.mktemp("sample")


@pytest.fixture(scope="session")
def sample_builds(sample_root) -> dict[str, tuple[Path, dict]]:
    """Each phase of the recipe built from the bundled sample: phase -> (phase directory, stats)."""
    builds = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MMBERT_DATA_CACHE", str(sample_root / "cache"))
        for phase in PHASES:
            plan = Build(
                BuildOptions(
                    recipe=load_recipe(),
                    phase=phase,
                    output=sample_root / "data",
                    input_root=str(SAMPLE / "hub"),
                    tokenizer=f"sample:{SAMPLE / 'hub'}",
                    filter_configs=str(SAMPLE / "filter-configs"),
                    on_error="skip",
                    progress=False,
                )
            )
            builds[phase] = (plan.phase_dir, plan.run())
    return builds


@pytest.fixture(scope="session")
def sample_manifests(sample_builds, sample_root) -> dict[str, Path]:
    """Each phase's manifest compiled from its sample build at ``DEMO_TOKENS`` tokens."""
    recipe = load_recipe()
    manifests = {}
    for phase, (phase_dir, _) in sample_builds.items():
        counts = read_stats(phase_dir)
        path = sample_root / "manifests" / f"{phase}.json"
        mixture = compile_phase(recipe, phase, counts, tokens=DEMO_TOKENS)
        write_manifest(build_manifest(mixture, recipe, counts, seed=0), path)
        manifests[phase] = path
    return manifests
