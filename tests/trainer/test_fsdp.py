"""FSDP2 (``--parallel fsdp``) on two CPU processes (gloo): StableAdamW on shards, DDP's loss
trajectory, exact resume, checkpoints that DDP resumes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from tests.trainer.runs import assert_bitwise_equal, fails, metrics, run, tiny, train, weights
from trainer.checkpoint import checkpoint_dirs, read_state, snapshot
from trainer.distributed import Dist
from trainer.model import ModelConfig, ModernBertMLM
from trainer.optim import StableAdamW, param_groups
from trainer.parallel import parallelize, shard_like

SETTINGS = {"lr": 1e-2, "betas": (0.9, 0.95), "eps": 1e-8, "max_lr": 2e-2}
STEPS = 2


def _model() -> ModernBertMLM:
    torch.manual_seed(0)
    return ModernBertMLM(ModelConfig.preset("tiny", vocab_size=1024), attn_backend="sdpa")


def _gradients(model: ModernBertMLM) -> dict[str, torch.Tensor]:
    """Two steps' gradients per parameter; the second is ten times the first on the first half of dim 0
    only, so the RMS that clips it differs between the two shards (rank 0's rows are the spiked ones)."""
    generator = torch.Generator().manual_seed(1)
    gradients = {}
    for name, parameter in model.named_parameters():
        first = torch.randn(parameter.shape, generator=generator) * 1e-3
        second = first.clone()
        second[: -(-parameter.shape[0] // 2)] *= 10
        gradients[f"0.{name}"], gradients[f"1.{name}"] = first, second
    return gradients


def _steps(model: ModernBertMLM, gradients: dict[str, torch.Tensor]) -> StableAdamW:
    optimizer = StableAdamW(param_groups(model, 0.1), **SETTINGS)
    for step in range(STEPS):
        for name, parameter in model.named_parameters():
            parameter.grad = shard_like(gradients[f"{step}.{name}"], parameter)
        optimizer.step()
    return optimizer


def _sharded_steps(rank: int, root: str) -> None:
    """One of two ranks: the steps of :func:`_steps` on the FSDP2-sharded model; rank 0 saves the result."""
    torch_dist.init_process_group("gloo", init_method=f"file://{root}/rendezvous", rank=rank, world_size=2)
    try:
        model = _model()
        parallelize(model, Dist(rank, 2, rank, torch.device("cpu")), "fsdp")
        optimizer = _steps(model, load_file(f"{root}/gradients.safetensors"))
        whole = snapshot(model, optimizer).weights  # a collective: both ranks
        if rank == 0:
            save_file(whole, f"{root}/sharded.safetensors")
    finally:
        torch_dist.destroy_process_group()


def test_stable_adamw_clips_a_sharded_tensor_by_its_whole_rms(tmp_path):
    model = _model()
    gradients = _gradients(model)
    save_file(gradients, str(tmp_path / "gradients.safetensors"))
    mp.spawn(_sharded_steps, args=(str(tmp_path),), nprocs=2)
    sharded = load_file(str(tmp_path / "sharded.safetensors"))

    optimizer = _steps(model, gradients)  # one process, whole tensors
    whole = snapshot(model, optimizer).weights
    assert sharded.keys() == whole.keys()
    for name in whole:
        torch.testing.assert_close(sharded[name], whole[name], rtol=1e-6, atol=0)

    # The test can tell: clipping each half by its own RMS (a per-shard statistic) moves the weights.
    weight = dict(_model().named_parameters())["model.layers.0.attn.Wqkv.weight"].detach()
    rows = weight.shape[0] // 2
    halves = []
    for part in (slice(0, rows), slice(rows, None)):
        half = torch.nn.Parameter(weight[part].clone())
        optimizer = StableAdamW([half], weight_decay=0.1, **SETTINGS)
        for step in range(STEPS):
            half.grad = gradients[f"{step}.model.layers.0.attn.Wqkv.weight"][part]
            optimizer.step()
        halves.append(half.detach())
    per_shard = torch.cat(halves)
    assert not torch.allclose(per_shard, whole["model.layers.0.attn.Wqkv.weight"], rtol=1e-4, atol=0)


FSDP = ("--parallel", "fsdp")


def tiny_fsdp(manifest: Path, out: Path, *extra: str) -> list[str]:
    """A short two-process run (40k tokens, a checkpoint every 10k)."""
    return tiny(manifest, out, "--save-every", "10k", *extra, tokens="40k")


@pytest.fixture(scope="module")
def fsdp_run(sample_manifests, tmp_path_factory) -> Path:
    """An uninterrupted FSDP2 run on two processes, which the other runs are measured against."""
    out = tmp_path_factory.mktemp("fsdp") / "run"
    result = run(tiny_fsdp(sample_manifests["pretrain"], out, *FSDP), processes=2)
    assert result.returncode == 0, result.stdout
    assert "2 process(es) (fsdp)" in result.stdout
    return out


def test_fsdp_follows_the_ddp_loss_trajectory(fsdp_run, sample_manifests, tmp_path):
    ddp = run(tiny_fsdp(sample_manifests["pretrain"], tmp_path / "ddp"), processes=2)
    assert ddp.returncode == 0, ddp.stdout
    ours, theirs = metrics(fsdp_run), metrics(tmp_path / "ddp")
    assert [r["tokens"] for r in ours] == [r["tokens"] for r in theirs] and len(ours) >= 4
    for a, b in zip(ours, theirs, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    # the same checkpoints: whole tensors under the same names, the same state.json
    mine, other = checkpoint_dirs(fsdp_run)[-1], checkpoint_dirs(tmp_path / "ddp")[-1]
    assert {p.name for p in mine.iterdir()} == {p.name for p in other.iterdir()}
    assert read_state(mine).keys() == read_state(other).keys()
    for name in ("model.safetensors", "optimizer.safetensors"):
        shapes = [{k: v.shape for k, v in load_file(str(c / name)).items()} for c in (mine, other)]
        assert shapes[0] == shapes[1]


def test_fsdp_killed_and_resumed_ends_bit_for_bit_the_same_and_resumes_under_ddp(
    fsdp_run, sample_manifests, tmp_path
):
    args = tiny_fsdp(sample_manifests["pretrain"], tmp_path / "run", *FSDP)
    crashed = run(args, processes=2, crash_at="2:1")  # after a checkpoint written under FSDP
    assert crashed.returncode != 0 and "SIGKILL" in crashed.stdout, crashed.stdout
    assert checkpoint_dirs(tmp_path / "run")
    shutil.copytree(tmp_path / "run", tmp_path / "under-ddp")
    resumed = run([*args, "--resume"], processes=2)
    assert resumed.returncode == 0 and "resuming" in resumed.stdout, resumed.stdout
    assert_bitwise_equal(fsdp_run, tmp_path / "run")
    assert [r["step"] for r in metrics(tmp_path / "run")] == [r["step"] for r in metrics(fsdp_run)]

    # The checkpoint is DDP's format too: the run continues under DDP, within DDP's agreement with FSDP.
    resumed = run([*tiny_fsdp(sample_manifests["pretrain"], tmp_path / "under-ddp"), "--resume"], processes=2)
    assert resumed.returncode == 0 and "resuming" in resumed.stdout, resumed.stdout
    for a, b in zip(metrics(tmp_path / "under-ddp"), metrics(fsdp_run), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    for name, tensor in weights(fsdp_run).items():
        torch.testing.assert_close(weights(tmp_path / "under-ddp")[name], tensor, rtol=1e-5, atol=1e-7)


def test_fsdp_on_one_process_is_the_model_itself_and_a_wrong_choice_is_one_line(
    fsdp_run, sample_manifests, tmp_path
):
    """Without torchrun there is nothing to shard: ``--parallel fsdp`` trains the whole model, as DDP does."""
    output = train(*tiny_fsdp(sample_manifests["pretrain"], tmp_path / "one", *FSDP))
    assert "1 process(es) on cpu" in output
    for a, b in zip(metrics(tmp_path / "one"), metrics(fsdp_run), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    output = fails(*tiny_fsdp(sample_manifests["pretrain"], tmp_path / "wrong", "--parallel", "zero3"))
    assert output.strip() == "error: --parallel 'zero3': choose ddp, fsdp"


def test_a_ddp_checkpoint_resumes_under_fsdp(fsdp_run, sample_manifests, tmp_path):
    args = tiny_fsdp(sample_manifests["pretrain"], tmp_path / "run")
    assert run(args, processes=2, crash_at="2:1").returncode != 0  # DDP, killed after a checkpoint
    resumed = run([*args, "--resume", *FSDP], processes=2)  # --parallel may change: no --force
    assert resumed.returncode == 0 and "resuming" in resumed.stdout, resumed.stdout
    for a, b in zip(metrics(tmp_path / "run"), metrics(fsdp_run), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
