"""The training loop on a CUDA GPU: bf16, the GPU attention kernels, torch.compile, MFU in the metrics.

Synthetic shards (``write_synthetic_phase``) stand in for a build, so these tests need only
the trainer's dependencies (torch, pyarrow, numpy, safetensors, pyyaml, typer, matplotlib).
"""

from __future__ import annotations

import json

import pytest
import torch

from mixtures.manifest import load_manifest
from tests.conftest import write_synthetic_phase
from trainer.config import resolve
from trainer.overrides import Overrides
from trainer.train import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def run(tmp_path, name: str, **settings) -> list[dict]:
    manifest = write_synthetic_phase(tmp_path / "data", documents=1500)
    options = {"tokens": 400_000, "batch_size": 16, "micro_batch_tokens": 8192, "model": "tiny", "lr": 3e-3}
    phase = load_manifest(manifest)
    train(resolve(phase, Overrides(**{**options, **settings}), tmp_path / name), phase, device="cuda")
    return [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("attn", ["auto", "flex", "sdpa"])
def test_a_bf16_run_learns_on_the_gpu(tmp_path, attn):
    records = run(tmp_path, attn, attn_backend=attn)
    assert records[-1]["loss"] < records[0]["loss"] - 0.2
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    if "H100" in torch.cuda.get_device_name() or "H200" in torch.cuda.get_device_name():
        assert all(0 < r["mfu"] < 1 for r in records)


def test_compiled_matches_eager(tmp_path):
    eager = run(tmp_path, "eager", attn_backend="flex", tokens=120_000)
    compiled = run(tmp_path, "compiled", attn_backend="flex", tokens=120_000, compile=True)
    assert [r["tokens"] for r in compiled] == [r["tokens"] for r in eager]
    for a, b in zip(compiled, eager, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=2e-2)


def test_fp32_on_the_gpu_matches_the_cpu_start(tmp_path):
    gpu = run(tmp_path, "gpu", precision="fp32", attn_backend="sdpa", tokens=40_000)
    manifest = write_synthetic_phase(tmp_path / "data", documents=1500)
    options = {"tokens": 40_000, "batch_size": 16, "micro_batch_tokens": 8192, "model": "tiny", "lr": 3e-3}
    phase = load_manifest(manifest)
    train(resolve(phase, Overrides(attn_backend="sdpa", **options), tmp_path / "cpu"), phase, device="cpu")
    cpu = [json.loads(line) for line in (tmp_path / "cpu" / "metrics.jsonl").read_text().splitlines()]
    assert gpu[0]["loss"] == pytest.approx(cpu[0]["loss"], rel=1e-3)  # the same data, masks and weights
