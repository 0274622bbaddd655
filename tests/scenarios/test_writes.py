"""Every write stays inside the run, the build output or the project's cache: nothing lands under $HOME."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLOTS = {
    "trainer": "from trainer.plot import plot_runs\nplot_runs([sys.argv[1]], sys.argv[1] + '/loss.png')",
    "mixtures": "from mixtures.plot import plot_shares\n"
    "plot_shares([('pretrain', {'eng': 0.5, 'fra': 0.5})], {'eng': 10, 'fra': 5}, sys.argv[1] + '/s.png')",
}


@pytest.mark.parametrize("package", sorted(PLOTS))
def test_plotting_writes_matplotlibs_cache_inside_the_projects_cache(package, tmp_path):
    home, cache, run = tmp_path / "home", tmp_path / "cache", tmp_path / "run"
    home.mkdir()
    run.mkdir()
    (run / "metrics.jsonl").write_text(
        json.dumps({"phase": "pretrain", "tokens": 1, "loss": 9.0, "lr": 1e-3})
    )
    env = {
        k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME")
    }
    env.update(HOME=str(home), MMBERT_DATA_CACHE=str(cache))
    script = f"import sys\n{PLOTS[package]}"
    result = subprocess.run(
        [sys.executable, "-c", script, str(run)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert list(home.rglob("*")) == []
    assert list((cache / "matplotlib").iterdir())  # the font cache, built once per cache
