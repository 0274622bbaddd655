"""`mmbert-train` end to end on the demo's data: learning, exact resume, DDP, phases, export, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc
import pytest
import torch

from bench.processes import alive, children
from cli.train import app
from mixtures.manifest import write_manifest
from tests.conftest import write_synthetic_phase
from tests.fixtures import manifest_document, rewrite_ids
from tests.trainer.runs import (
    assert_bitwise_equal,
    fails,
    launch,
    launch_as_srun_task,
    metrics,
    run,
    runner,
    tiny,
    train,
    wait_for_steps,
)
from trainer.checkpoint import checkpoint_dirs, read_state
from trainer.model import ModelConfig, ModernBertMLM
from trainer.plot import branch_point


@pytest.fixture(scope="module")
def reference(sample_manifests, tmp_path_factory) -> Path:
    """An uninterrupted single-process run that the interrupted and distributed runs must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "run"
    result = run(tiny(sample_manifests["pretrain"], out))
    assert result.returncode == 0, result.stdout
    return out


def test_a_run_learns_and_leaves_checkpoints_metrics_and_a_plot(reference):
    records = metrics(reference)
    assert [r["step"] for r in records] == list(range(1, len(records) + 1))
    assert records[-1]["tokens"] >= 60_000 > records[-2]["tokens"]
    assert records[-1]["loss"] < records[0]["loss"] - 0.3
    assert all(0.25 < r["mask_rate"] < 0.35 and r["lr"] > 0 for r in records)
    assert records[0]["micro_batches"] < records[-1]["micro_batches"] == 4  # batch-size warmup
    newest = checkpoint_dirs(reference)[-1]
    assert {p.name for p in newest.iterdir()} == {
        "config.json",
        "model.safetensors",
        "optimizer.safetensors",
        "state.json",
    }
    state = json.loads((newest / "state.json").read_text())
    assert state["step"] == records[-1]["step"] and state["tokens"] == records[-1]["tokens"]
    assert set(state["loader"]) == {"step", "tokens", "blend", "carried"}
    # format 1, as every release has written it: checkpoints of older runs resume
    assert (state["format"], state["version"]) == ("mmbert-train/checkpoint", 1)
    assert set(state) == {
        *("format", "version", "step", "tokens", "loader", "manifest", "tokenizer", "config"),
        *("optimizer_steps", "files"),
    }
    assert set(state["files"]) == {"config.json", "model.safetensors", "optimizer.safetensors"}
    assert (reference / "loss.png").stat().st_size > 10_000
    assert len(checkpoint_dirs(reference)) >= 3  # every 20k tokens, and at the end


def test_killed_between_micro_steps_and_resumed_it_ends_bit_for_bit_the_same(
    reference, sample_manifests, tmp_path
):
    args = tiny(sample_manifests["pretrain"], tmp_path / "run")
    crashed = run(args, crash_at="2:2")  # step 2 has four micro-steps: killed after the third
    assert crashed.returncode == -signal.SIGKILL
    assert not list(
        (tmp_path / "run" / "checkpoints").glob(".*")
    )  # no half-written checkpoint under a final name
    resumed = run([*args, "--resume"])
    assert resumed.returncode == 0, resumed.stdout
    assert "resuming" in resumed.stdout
    assert_bitwise_equal(reference, tmp_path / "run")
    assert [r["step"] for r in metrics(tmp_path / "run")] == [r["step"] for r in metrics(reference)]


def test_two_processes_follow_one_and_resume_exactly(reference, sample_manifests, tmp_path):
    args = tiny(sample_manifests["pretrain"], tmp_path / "ddp")
    whole = run(args, processes=2)
    assert whole.returncode == 0, whole.stdout
    ours, single = metrics(tmp_path / "ddp"), metrics(reference)
    assert [r["tokens"] for r in ours] == [r["tokens"] for r in single]  # the same global batches
    for a, b in zip(ours, single, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["accuracy"] == pytest.approx(
            b["accuracy"]
        )
    srun = tiny(sample_manifests["pretrain"], tmp_path / "srun")  # as `srun --ntasks=2 mmbert-train`
    tasks = [launch_as_srun_task(srun, task, tasks=2) for task in range(2)]
    outputs = [task.communicate(timeout=600)[0] for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0], outputs
    assert_bitwise_equal(tmp_path / "ddp", tmp_path / "srun")
    interrupted = tiny(sample_manifests["pretrain"], tmp_path / "ddp-killed")
    assert run(interrupted, processes=2, crash_at="2:0").returncode != 0
    resumed = run([*interrupted, "--resume"], processes=2)
    assert resumed.returncode == 0, resumed.stdout
    assert_bitwise_equal(tmp_path / "ddp", tmp_path / "ddp-killed")


@pytest.mark.parametrize(("before", "after"), [(1, 2), (2, 1)])
def test_a_run_resumes_on_another_number_of_processes(reference, sample_manifests, tmp_path, before, after):
    """The loader's state is the global batch's, whatever the number of ranks, so a run saved on
    ``before`` processes continues on ``after`` with the same batches. Only the order in which the
    gradients are summed differs (one process adds its micro-batches in turn, DDP adds the ranks'
    sums), so the losses agree to rel 1e-6 (measured on the demo's manifest: 4.6e-8 for 1 -> 2,
    9.2e-8 for 2 -> 1), not bit for bit."""
    args = tiny(sample_manifests["pretrain"], tmp_path / "run")
    assert run(args, processes=before, crash_at="2:0").returncode != 0
    assert checkpoint_dirs(tmp_path / "run")  # saved on `before` processes
    resumed = run([*args, "--resume"], processes=after)
    assert resumed.returncode == 0, resumed.stdout
    assert "resuming" in resumed.stdout
    ours, single = metrics(tmp_path / "run"), metrics(reference)
    assert [r["tokens"] for r in ours] == [r["tokens"] for r in single]  # the same global batches
    for a, b in zip(ours, single, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6), (a["step"], a["loss"], b["loss"])


def test_sigterm_saves_a_checkpoint_and_exits(sample_manifests, tmp_path):
    args = tiny(sample_manifests["pretrain"], tmp_path / "run", tokens="2M")
    process = launch(args)
    wait_for_steps(process, tmp_path / "run", 2)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, output
    assert "stopped by a signal" in output and "continue with --resume" in output
    last = metrics(tmp_path / "run")[-1]["step"]
    assert checkpoint_dirs(tmp_path / "run")[-1].name == f"step-{last:08d}"


def test_sigterm_to_torchrun_checkpoints_once_every_rank_agrees(sample_manifests, tmp_path):
    args = tiny(sample_manifests["pretrain"], tmp_path / "run", tokens="2M")
    process = launch(args, processes=2)
    wait_for_steps(process, tmp_path / "run", 2)
    process.send_signal(signal.SIGTERM)  # torchrun passes it to both workers
    output, _ = process.communicate(timeout=120)
    assert "stopped by a signal" in output, output
    last = metrics(tmp_path / "run")[-1]["step"]
    assert checkpoint_dirs(tmp_path / "run")[-1].name == f"step-{last:08d}"
    shorter = tiny(sample_manifests["pretrain"], tmp_path / "run", "--resume", "--force", tokens="120k")
    resumed = run(shorter, processes=2)  # --force: a shorter run than the checkpoint's
    assert resumed.returncode == 0 and "resuming" in resumed.stdout, resumed.stdout


def test_three_phases_chain_and_export_to_transformers(sample_manifests, tmp_path):
    runs = {phase: tmp_path / phase for phase in ("pretrain", "midtrain", "decay")}
    train(*tiny(sample_manifests["pretrain"], runs["pretrain"], tokens="40k"))
    for previous, phase in (("pretrain", "midtrain"), ("midtrain", "decay")):
        train(
            *tiny(sample_manifests[phase], runs[phase], "--init", str(runs[previous]), tokens="40k"),
            "--micro-batch-tokens",
            "16384",
            "--batch-size",
            "2",
        )
    decay = checkpoint_dirs(runs["decay"])[-1]
    config = json.loads((decay / "config.json").read_text())
    assert config["rope_theta_global"] == 160_000.0 and config["max_position_embeddings"] == 8192
    optimizer_steps = json.loads((decay / "state.json").read_text())["optimizer_steps"]
    pretrain_steps = json.loads((checkpoint_dirs(runs["pretrain"])[-1] / "state.json").read_text())["step"]
    assert min(optimizer_steps.values()) > pretrain_steps  # the optimizer's moments carried across phases
    result = runner.invoke(app, ["plot", *map(str, runs.values()), "-o", str(tmp_path / "loss.png")])
    assert result.exit_code == 0 and (tmp_path / "loss.png").stat().st_size > 10_000
    # on the plot's token axis, a run --init from a plotted run starts where that run ended, so
    # decays drawn after one another each branch from midtrain; one from elsewhere follows on
    midtrain_tokens = json.loads((checkpoint_dirs(runs["midtrain"])[-1] / "state.json").read_text())["tokens"]
    plotted = {runs["pretrain"].resolve(): 0, runs["midtrain"].resolve(): 100}
    assert branch_point(runs["decay"], plotted, default=7) == 100 + midtrain_tokens
    assert branch_point(runs["decay"], {runs["pretrain"].resolve(): 0}, default=7) == 7

    with pytest.MonkeyPatch.context() as patch:  # the sample tokenizer lives in the session's cache
        patch.setenv("MMBERT_DATA_CACHE", str(sample_manifests["pretrain"].parents[1] / "cache"))
        result = runner.invoke(app, ["export", str(runs["decay"]), "--out", str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    from transformers import pipeline

    fill = pipeline("fill-mask", model=str(tmp_path / "hf"))
    predictions = fill(f"All human beings are born free and equal in {fill.tokenizer.mask_token}.", top_k=3)
    assert len(predictions) == 3 and all(p["sequence"].startswith("All human beings") for p in predictions)
    # a transformers directory (such as a released mmBERT) starts a phase too
    hf_init = ("--init", str(tmp_path / "hf"), "--micro-batch-tokens", "16384", "--batch-size", "2")
    output = train(*tiny(sample_manifests["decay"], tmp_path / "from-hf", *hf_init, tokens="40k"))
    assert "done:" in output


def test_bad_input_stops_before_training_and_names_it(sample_manifests, sample_builds, tmp_path):
    body = manifest_document(sample_manifests["pretrain"])

    def variant(name: str, **changes) -> Path:
        path = tmp_path / f"{name}.json"
        write_manifest({**body, **changes}, path)
        return path

    # a missing and a changed shard, found before the first step
    data = tmp_path / "data"
    shutil.copytree(sample_builds["pretrain"][0], data)
    moved = variant("moved", data_root=str(data))
    first, second = (s["shards"][0]["path"] for s in body["streams"][:2])
    (data / first).unlink()
    with open(data / second, "ab") as handle:
        handle.write(b"\0")
    output = fails(*tiny(moved, tmp_path / "a"))
    assert f"missing shard: {first}" in output and f"changed shard: {second}" in output
    assert not (tmp_path / "a").exists()
    # an unknown schedule in the manifest's training settings
    output = fails(
        *tiny(
            variant("cosine", training={**body["training"], "lr": {"schedule": "cosine", "peak": 1e-3}}),
            tmp_path / "b",
        )
    )
    assert "cosine.json: training.lr.schedule: unknown schedule 'cosine'" in output
    # a tokenizer the build did not describe, and one whose special ids do not fit the model
    output = fails(
        *tiny(variant("old", tokenizer={k: body["tokenizer"][k] for k in ("name", "sha256")}), tmp_path / "c")
    )
    assert (
        "old.json: tokenizer: the build did not record the tokenizer's vocab_size and special ids" in output
    )
    small = tmp_path / "small-model"
    ModernBertMLM(ModelConfig.preset("tiny", vocab_size=1024)).save(small)
    output = fails(*tiny(sample_manifests["pretrain"], tmp_path / "d", "--init", str(small)))
    assert (
        f"--init {small}: the model's vocabulary of 1024 does not hold the tokenizer's 8192 tokens" in output
    )
    swapped = tmp_path / "swapped-model"
    ModernBertMLM(ModelConfig.preset("tiny", vocab_size=8192, bos_token_id=1, eos_token_id=2)).save(swapped)
    output = fails(*tiny(sample_manifests["pretrain"], tmp_path / "e", "--init", str(swapped)))
    assert "special ids differ from the tokenizer's: eos_token_id 2 (tokenizer: 1), bos_token_id 1" in output


def test_bad_shards_and_a_bad_vocabulary_are_named_not_tracebacks(tmp_path):
    doc = manifest_document(write_synthetic_phase(tmp_path, documents=40))
    shard = doc["streams"][0]["shards"][0]
    for ids_type, convert in ((pa.int64(), lambda i: -i), (pa.string(), str)):
        shard.update(rewrite_ids(Path(doc["data_root"]) / shard["path"], ids_type, convert))
        write_manifest(doc, tmp_path / "bad.json")
        output = fails(*tiny(tmp_path / "bad.json", tmp_path / "run"))
        assert f"wrong column type: shard {shard['path']} has input_ids: {pa.list_(ids_type)}" in output
        assert "Traceback" not in output and not (tmp_path / "run").exists()
    write_manifest({**doc, "tokenizer": {**doc["tokenizer"], "vocab_size": 3}}, tmp_path / "vocab.json")
    output = fails(*tiny(tmp_path / "vocab.json", tmp_path / "run"))
    assert "vocab.json: tokenizer.vocab_size: 3 ids do not hold special_ids" in output
    assert len(output.strip().splitlines()) == 1


def test_resume_refuses_another_manifest_and_falls_back_from_a_damaged_checkpoint(sample_manifests, tmp_path):
    out = tmp_path / "run"
    train(*tiny(sample_manifests["pretrain"], out, "--keep", "2", tokens="40k"))
    assert len(checkpoint_dirs(out)) == 2  # --keep: the newest two of four
    output = fails(*tiny(sample_manifests["pretrain"], out))
    assert "already holds checkpoints; pass --resume" in output
    output = fails(
        *tiny(
            sample_manifests["decay"], out, "--resume", "--micro-batch-tokens", "16384", "--batch-size", "2"
        )
    )
    assert "the checkpoint was made for manifest" in output and "pass --force" in output
    output = fails(*tiny(sample_manifests["pretrain"], out, "--resume", "--keep", "2", tokens="80k"))
    assert "the run's settings differ from the checkpoint's" in output and "tokens: 40000 -> 80000;" in output
    assert "training.lr.warmup_tokens: 52 -> 105; training.batch_warmup_tokens: 1043 -> 2087" in output
    output = fails(*tiny(sample_manifests["pretrain"], out, "--resume", "--keep", "2", "--precision", "bf16"))
    assert "precision: 'fp32' -> 'bf16'" in output
    newest, previous = checkpoint_dirs(out)[-1], checkpoint_dirs(out)[-2]
    with open(newest / "model.safetensors", "r+b") as handle:
        handle.seek(-8, os.SEEK_END)
        handle.write(b"\xff" * 8)
    output = train(*tiny(sample_manifests["pretrain"], out, "--resume", "--keep", "2", tokens="40k"))
    assert f"{newest / 'model.safetensors'}: damaged" in output and "using the checkpoint before it" in output
    assert f"resuming {previous}" in output


def test_settings_the_machine_or_the_run_length_cannot_serve_are_one_line_errors(sample_manifests, tmp_path):
    manifest = str(sample_manifests["pretrain"])
    output = fails(
        "--manifest", manifest, "--out", str(tmp_path / "a"), "--model", "tiny", "--tokens", "100k"
    )
    assert (
        "100,000 tokens are 0.021 steps of the phase's batch of 4608 x 1024 tokens; pass --batch-size"
        in output
    )
    assert "(--batch-size 1 gives 98 steps)" in output
    too_short = fails(*tiny(manifest, tmp_path / "b", "--batch-size", "1", tokens="1k"))
    assert too_short.strip().splitlines()[-1] == (
        "error: 1,000 tokens are 0.98 steps of the phase's batch of 1 x 1024 tokens, too few for 2 steps "
        "even at --batch-size 1; pass --tokens 2,048 or more, or shorter sequences "
        "(--set training.seq_len=500)"
    )
    for flags, message in (
        (("--attn", "flash"), "--attn flash needs a CUDA GPU; on the CPU use auto or sdpa"),
        (("--compile",), "--compile needs a CUDA GPU"),
        (("--device", "cuda"), "--device cuda: no CUDA GPU is visible to this process"),
    ):
        if torch.cuda.is_available():
            break
        output = fails(*tiny(sample_manifests["pretrain"], tmp_path / "b", *flags))
        assert message in output and len(output.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()


def test_data_and_manifests_moved_together_still_validate_and_train(sample_builds, tmp_path):
    from cli.data import app as data_app

    runs = tmp_path / "runs"
    shutil.copytree(sample_builds["pretrain"][0], runs / "data" / "pretrain")
    manifest = runs / "manifests" / "pretrain.json"
    stats = ["mixture", "--stats", str(runs / "data" / "pretrain"), "--tokens", "150k", "-o", str(manifest)]
    compiled = runner.invoke(data_app, stats)
    assert compiled.exit_code == 0, compiled.output
    moved = tmp_path / "elsewhere" / "runs"
    moved.parent.mkdir()
    runs.rename(moved)  # `mv runs elsewhere/`: the data directory and its manifests together
    manifest = moved / "manifests" / "pretrain.json"
    validated = runner.invoke(data_app, ["validate", str(manifest)])
    assert validated.exit_code == 0 and validated.output.startswith(f"{manifest}: valid"), validated.output
    output = train(*tiny(manifest, tmp_path / "run", tokens="40k"))
    assert "done:" in output and "streams of sample:" in output


def test_a_shard_with_ids_beyond_the_vocabulary_is_named(sample_manifests, sample_builds, tmp_path):
    manifest = manifest_document(sample_manifests["pretrain"])
    data = tmp_path / "data"
    shutil.copytree(sample_builds["pretrain"][0], data)
    shard = data / manifest["streams"][0]["shards"][0]["path"]
    raw = bytearray(shard.read_bytes())
    ids = next(iter(pyarrow.ipc.open_stream(pa.py_buffer(bytes(raw))))).column("input_ids")[0].values
    at = raw.index(ids.to_numpy()[1:4].tobytes())  # the first document's tokens, in the file's data buffer
    raw[at : at + 4] = (99_999).to_bytes(4, "little")  # one id far outside the sample tokenizer's 8192
    shard.write_bytes(bytes(raw))  # the same size: only --verify's hashes would notice before training
    moved = tmp_path / "moved.json"
    write_manifest({**manifest, "data_root": str(data)}, moved)
    output = fails(*tiny(moved, tmp_path / "run", tokens="200k"))
    assert (
        f"{shard}: document" in output and "holds token id 99999, outside the tokenizer's 8192 ids" in output
    )
    output = fails(*tiny(moved, tmp_path / "verified", "--verify"))
    assert "changed shard: " in output and "content sha256" in output


def test_a_second_ctrl_c_stops_at_once_with_status_130(sample_manifests, tmp_path, monkeypatch):
    """In process, so that the second Ctrl-C surely comes before the step ends (sent to a
    subprocess, it can lose the race with a short step's checkpoint)."""
    import trainer.train
    from trainer.train import StopRequest

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)  # StopRequest takes all three
    previous = {number: signal.getsignal(number) for number in handled}
    try:
        stop = StopRequest()
        signal.raise_signal(signal.SIGINT)
        assert stop.signal == signal.SIGINT  # the first: finish the step, checkpoint, exit
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)  # the second: now
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer.train, "train", interrupted)
    result = runner.invoke(app, tiny(sample_manifests["pretrain"], tmp_path / "run"))
    assert result.exit_code == 128 + signal.SIGINT
    assert result.output.strip() == "error: interrupted; continue from the last checkpoint with --resume"


def test_ctrl_c_saves_a_checkpoint_and_exits(sample_manifests, tmp_path):
    process = launch(tiny(sample_manifests["pretrain"], tmp_path / "run", tokens="2M"))
    wait_for_steps(process, tmp_path / "run", 1)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGINT, output
    assert "stopping after this step" in output and "stopped by a signal" in output
    assert checkpoint_dirs(tmp_path / "run")


def test_export_finds_the_data_tokenizer_from_anywhere_and_leaves_nothing_on_failure(
    sample_manifests, tmp_path, monkeypatch
):
    run_dir = tmp_path / "run"
    train(*tiny(sample_manifests["pretrain"], run_dir, tokens="40k"))
    monkeypatch.setenv("MMBERT_DATA_CACHE", str(sample_manifests["pretrain"].parents[1] / "cache"))
    monkeypatch.chdir(tmp_path)  # the checkpoint names its tokenizer sample:<path relative to the repository>
    result = runner.invoke(app, ["export", str(run_dir), "--out", str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "hf" / "tokenizer.json").exists() and (tmp_path / "hf" / "model.safetensors").exists()
    (tmp_path / "not-a-tokenizer.json").write_text("[]")
    result = runner.invoke(
        app,
        [
            "export",
            str(run_dir),
            "--out",
            str(tmp_path / "bad"),
            "--tokenizer",
            str(tmp_path / "not-a-tokenizer.json"),
        ],
    )
    assert result.exit_code == 1 and "not a tokenizer.json" in result.output
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad-*"))
    result = runner.invoke(app, ["export", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and "nowhere: not a directory" in result.output
    missing = tmp_path / "missing" / "tokenizer.json"
    result = runner.invoke(app, ["export", str(run_dir), "-o", "y", "--tokenizer", str(missing)])
    assert result.output.strip() == f"error: tokenizer {missing}: no such file or directory"
    (newest,) = checkpoint_dirs(run_dir)[-1:]
    (newest / "state.json").unlink()  # damaged: export names it rather than train another's weights
    result = runner.invoke(app, ["export", str(run_dir), "--out", str(tmp_path / "z")])
    assert result.exit_code == 1 and result.output.startswith(f"error: {newest}: state.json is missing")
    assert "`mmbert-train --resume` moves it aside" in result.output and not (tmp_path / "z").exists()
    result = runner.invoke(app, ["plot", str(run_dir), "-o", str(tmp_path / "new" / "dir" / "loss.png")])
    assert result.exit_code == 0 and (tmp_path / "new" / "dir" / "loss.png").exists()


def test_a_manifest_is_read_and_parsed_once_on_the_way_to_training(sample_manifests, tmp_path, monkeypatch):
    import mixtures.manifest

    manifest = sample_manifests["pretrain"]
    parses, reads = [], []
    parse, read_bytes = mixtures.manifest.loads, Path.read_bytes

    def counted_read(path: Path) -> bytes:
        if path.resolve() == manifest.resolve():
            reads.append(path)
        return read_bytes(path)

    monkeypatch.setattr(mixtures.manifest, "loads", lambda raw: parses.append(raw) or parse(raw))
    monkeypatch.setattr(Path, "read_bytes", counted_read)
    train(*tiny(manifest, tmp_path / "run", tokens="40k"))
    assert len(parses) == 1 and len(reads) == 1
    assert len(metrics(tmp_path / "run")) >= 1


def test_set_reaches_any_training_key_and_a_typo_names_the_closest(sample_manifests, tmp_path):
    out = tmp_path / "run"
    train(*tiny(sample_manifests["pretrain"], out, "--set", "training.lr.peak=1e-3", tokens="40k"))
    assert max(r["lr"] for r in metrics(out)) == 1e-3  # --set comes after --lr 3e-3
    output = fails(*tiny(sample_manifests["pretrain"], tmp_path / "b", "--set", "training.lr.peek=1"))
    assert output.strip().splitlines() == [
        "error: --set training.lr: unknown key 'peek' (did you mean 'peak'?)"
    ]
    output = fails(
        *tiny(sample_manifests["pretrain"], out, "--resume", "--set", "training.lr.peak=2e-3", tokens="40k")
    )
    assert "training.lr.peak: 0.001 -> 0.002" in output  # it changes the result, so resuming refuses it
    assert not (tmp_path / "b").exists()


# ---- faults: damaged checkpoints, orphaned ranks, a second trainer, torn metrics, a full disk ----------


def test_a_damaged_checkpoint_is_moved_aside_and_written_anew_and_none_intact_is_an_error(
    sample_manifests, tmp_path
):
    out = tmp_path / "run"
    args = tiny(sample_manifests["pretrain"], out, tokens="40k")
    train(*args)
    newest = checkpoint_dirs(out)[-1]
    with open(newest / "model.safetensors", "r+b") as handle:
        handle.seek(-8, os.SEEK_END)
        handle.write(b"\xff" * 8)
    output = train(*args, "--resume")
    aside = newest.with_name(f"{newest.name}.damaged")
    assert f"{newest / 'model.safetensors'}: damaged" in output and f"moved to {aside}" in output
    assert aside.is_dir() and checkpoint_dirs(out)[-1] == newest
    read_state(newest)  # written anew when the run reached that step again, not kept damaged
    for checkpoint in checkpoint_dirs(out):
        (checkpoint / "state.json").write_text("{")
    output = fails(*args, "--resume")
    assert output.strip().splitlines()[-1] == (
        f"error: {out}: no intact checkpoint to resume (the damaged ones were moved aside); "
        "run without --resume to start the run over"
    )
    assert checkpoint_dirs(out) == []


@pytest.mark.parametrize("when", ["after a step", "as its workers start"])
def test_killing_the_torchrun_agent_alone_stops_its_workers(sample_manifests, tmp_path, when):
    args = tiny(sample_manifests["pretrain"], tmp_path / "run", tokens="2M")
    agent = launch(args, processes=2)
    workers = []
    try:
        if when == "after a step":
            wait_for_steps(agent, tmp_path / "run", 1)
        deadline = time.monotonic() + 60
        while len(workers) < 2 and time.monotonic() < deadline:  # the two ranks
            workers = children(agent.pid)
            time.sleep(0.01)
        assert len(workers) >= 2
        agent.kill()  # SIGKILL to the agent only: its workers are in sessions of their own
        agent.wait()
        deadline = time.monotonic() + 10
        while any(map(alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(map(alive, workers)), "workers outlived their agent"
    finally:
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_second_trainer_on_a_run_is_refused_and_a_dead_holders_lock_is_taken_over(
    sample_manifests, tmp_path
):
    out = tmp_path / "run"
    first = launch(tiny(sample_manifests["pretrain"], out, tokens="2M"))
    try:
        wait_for_steps(first, out, 1)
        output = fails(*tiny(sample_manifests["pretrain"], out, "--resume", tokens="2M"))
        assert output.strip().splitlines() == [
            f"error: {out} is being trained by another process (pid {first.pid} on {socket.gethostname()}, "
            f"started {json.loads((out / 'run.lock').read_text())['started']}); "
            "wait for it to finish or stop it, then run this again"
        ]
        assert first.poll() is None
    finally:
        first.kill()  # it dies holding the lock, and its lock file stays behind
        first.wait()
    steps = [r["step"] for r in metrics(out)]
    assert steps == list(range(1, len(steps) + 1))  # the refused trainer wrote nothing
    output = train(*tiny(sample_manifests["pretrain"], out, "--resume", "--force", tokens="40k"))
    assert f"note: took over {out / 'run.lock'} from pid {first.pid} on " in output
    assert not (out / "run.lock").exists()


def test_a_trainer_that_lost_its_run_lock_stops_without_writing(sample_manifests, tmp_path):
    from mixtures.files import FileLock

    out = tmp_path / "run"
    process = launch(tiny(sample_manifests["pretrain"], out, tokens="2M"))
    try:
        wait_for_steps(process, out, 1)
        with FileLock(tmp_path / "other.lock"):  # another trainer, as after a cleanup removed the lock
            os.replace(tmp_path / "other.lock", out / "run.lock")
            written = len(metrics(out))
            output, _ = process.communicate(timeout=120)
            assert process.returncode == 1, output
            assert f"{out / 'run.lock'}: the run is now held by pid {os.getpid()} on " in output
            assert len(metrics(out)) <= written + 1  # at most the step it was finishing
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_killed_before_its_first_checkpoint_and_resumed_each_step_is_logged_once(
    reference, sample_manifests, tmp_path
):
    args = tiny(sample_manifests["pretrain"], tmp_path / "run")
    crashed = run(args, crash_at="1:0")  # step 0 is logged, no checkpoint yet
    assert crashed.returncode == -signal.SIGKILL and not checkpoint_dirs(tmp_path / "run")
    with open(tmp_path / "run" / "metrics.jsonl", "a") as handle:
        handle.write('{"phase": "pretrain", "st')  # a torn last line, as a kill mid-write leaves
    resumed = run([*args, "--resume"])
    assert resumed.returncode == 0, resumed.stdout
    assert [r["step"] for r in metrics(tmp_path / "run")] == [r["step"] for r in metrics(reference)]
    assert_bitwise_equal(reference, tmp_path / "run")


def test_resuming_cuts_a_torn_last_line_of_the_metrics(tmp_path):
    from trainer.metrics import Meter

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3)) + '{"step": 4, "lo')
    Meter(tmp_path, "pretrain", 100, 1.0, None).resume_at(2)
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'


def test_a_full_disk_while_writing_the_metrics_or_the_loss_plot_is_one_line_and_resumes(
    sample_manifests, tmp_path, monkeypatch
):
    import builtins
    import errno

    import trainer.metrics
    import trainer.train

    out, full = tmp_path / "run", OSError(errno.ENOSPC, "No space left on device")

    class FillingFile:
        """metrics.jsonl on a disk that fills after two records."""

        def __init__(self, *args, **kwargs):
            self.file, self.writes = builtins.open(*args, **kwargs), 0  # noqa: SIM115 (close())

        def write(self, text: str) -> int:
            self.writes += 1
            if self.writes > 2:
                raise full
            return self.file.write(text)

        def flush(self) -> None:
            self.file.flush()

        def close(self) -> None:
            self.file.close()

    monkeypatch.setattr(trainer.metrics, "open", FillingFile, raising=False)
    args = tiny(sample_manifests["pretrain"], out, "--save-every", "10k", tokens="40k")
    error = fails(*args).strip().splitlines()[-1]
    assert error == (
        f"error: {out / 'metrics.jsonl'}: cannot be written (No space left on device); free space on its "
        "filesystem, then continue with --resume (the checkpoints are intact)"
    )
    monkeypatch.undo()

    def no_room_for_the_plot(runs, path):
        raise full

    monkeypatch.setattr(trainer.train, "plot_runs", no_room_for_the_plot)
    error = fails(*args, "--resume").strip().splitlines()[-1]
    assert error == (
        f"error: {out / 'loss.png'}: cannot be written (No space left on device); free space on its "
        f"filesystem, then draw it with `mmbert-train plot {out}`"
    )
    steps = [record["step"] for record in metrics(out)]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) > 2  # each step once, to the end


def test_an_output_that_cannot_be_a_run_directory_is_one_line(sample_manifests, tmp_path):
    (tmp_path / "afile").write_text("a file, not a run")
    for out in (tmp_path / "afile", tmp_path / "afile" / "run"):
        output = fails(*tiny(sample_manifests["pretrain"], out, tokens="40k"))
        assert output.strip().splitlines()[-1] == (
            f"error: --output {out}: cannot be written (a file or directory is in the way); "
            "pass a directory this process can write to"
        )
    assert (tmp_path / "afile").read_text() == "a file, not a run"


def test_a_full_disk_during_a_save_and_a_linked_checkpoint_with_keep_are_one_line_errors(
    sample_manifests, tmp_path, monkeypatch
):
    from safetensors import SafetensorError

    import trainer.checkpoint

    out = tmp_path / "run"
    save_file, calls = trainer.checkpoint.save_file, []

    def full_on_second_save(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise SafetensorError(
                "Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                'message: "No space left on device" })'
            )
        return save_file(*args, **kwargs)

    monkeypatch.setattr(trainer.checkpoint, "save_file", full_on_second_save)
    output = fails(*tiny(sample_manifests["pretrain"], out, tokens="40k"))
    (first,) = checkpoint_dirs(out)  # the checkpoint before survives
    read_state(first)
    error = output.strip().splitlines()[-1]
    assert error.startswith(f"error: {out / 'checkpoints'}/step-") and "No space left on device" in error
    assert "free space on its filesystem, then continue with --resume" in error
    assert not list((out / "checkpoints").glob(".*"))  # no temporary directory left
    monkeypatch.setattr(trainer.checkpoint, "save_file", save_file)

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "keep-me").write_text("not the run's")
    (out / "checkpoints" / "step-00000000").symlink_to(outside, target_is_directory=True)
    output = fails(*tiny(sample_manifests["pretrain"], out, "--resume", "--keep", "1", tokens="40k"))
    assert output.strip().splitlines()[-1] == (
        f"error: {out / 'checkpoints' / 'step-00000000'}: a symbolic link; --keep removes old checkpoints "
        "and never follows links: move the checkpoint it points to into the run, or remove the link"
    )
    assert (outside / "keep-me").exists()
