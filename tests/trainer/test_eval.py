"""Held-out evaluation: the loss by hand, the same tokens for every model and run, the command, and
the evaluations a training run makes (end of phase, --eval-every)."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc
import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from typer.testing import CliRunner

from bench.heldout import write_heldout_build
from cli.train import app
from mixtures.recipe import load_recipe
from tests.conftest import write_synthetic_phase
from tests.fixtures import write_build
from tests.trainer.runs import fails, metrics, run, tiny, train
from trainer.checkpoint import checkpoint_dirs
from trainer.distributed import Dist
from trainer.eval import (
    EVAL_NAME,
    EvalOptions,
    Score,
    batch_count,
    batches,
    evaluate,
    language_group,
    mask_document,
    read_heldout,
)
from trainer.masking import Masking
from trainer.model import IGNORE_INDEX, ModelConfig, ModernBertMLM
from trainer.parallel import parallelize
from trainer.plot import plot_runs

runner = CliRunner()
VOCAB = 1024
SPECIAL = {"pad": 0, "eos": 1, "bos": 2, "unk": 3, "mask": 4}
TOKENIZER = {"name": "test", "sha256": "7" * 64, "vocab_size": VOCAB, "special_ids": SPECIAL}
# (source, language) -> document lengths (bos and eos included): a document longer than the pieces,
# documents too short to mask anything, a language of each of the recipe's three phases
STREAMS = {
    ("fineweb2", "fra_Latn"): [40, 150, 12],
    ("wikipedia", "cat_Latn"): [70, 30],
    ("fineweb2", "fao_Latn"): [3, 90],
    ("dolmino", "eng_Latn"): [3],
}
OPTIONS = EvalOptions(mask_rate=0.3, seed=5, seq_len=64, batch_tokens=128, max_tokens_per_language=0)


def heldout_build(root: Path) -> Path:
    """A phase directory of ``STREAMS``' held-out documents: bos, random ids, eos, and an unk second in
    documents of more than 10 tokens."""
    rng = np.random.default_rng(0)
    documents = {}
    for stream, lengths in STREAMS.items():
        rows = [np.concatenate([[2], rng.integers(5, VOCAB, n - 2), [1]]) for n in lengths]
        for row in rows:
            if len(row) > 10:
                row[1] = SPECIAL["unk"]
        documents[stream] = rows
    return write_heldout_build(root, documents, TOKENIZER)


def known_model(seed: int = 0, attn_backend: str = "auto") -> ModernBertMLM:
    torch.manual_seed(seed)
    model = ModernBertMLM(ModelConfig.preset("tiny", vocab_size=VOCAB), attn_backend=attn_backend)
    with torch.no_grad():  # a decoder bias too, so that every part of the head shows in the loss
        model.decoder.bias.normal_(0.0, 0.5)
    return model


def positions_by_hand(ids: np.ndarray, rate: float, seed: int, document_id: str) -> np.ndarray:
    """The module docstring's rule written out: round(rate * non-special) of the positions whose draws
    from the generator seeded by sha256(seed/id) are smallest."""
    digest = hashlib.sha256(f"{seed}/{document_id}".encode()).digest()
    keys = np.random.default_rng(int.from_bytes(digest[:16], "little")).random(len(ids))
    plain = ~np.isin(ids, list(SPECIAL.values()))
    keys[~plain] = np.inf
    return np.sort(np.argsort(keys)[: round(rate * int(plain.sum()))])


def test_the_mask_depends_on_the_seed_and_the_document_alone():
    masking = Masking(0.15, SPECIAL["mask"], tuple(SPECIAL.values()), VOCAB)
    ids = np.concatenate([[2], np.arange(5, 205), [3], [1]]).astype(np.uint32)
    inputs, labels = mask_document(ids, masking, 0, "fra_Latn/1")
    chosen = np.flatnonzero(labels != IGNORE_INDEX)
    assert np.array_equal(chosen, positions_by_hand(ids, 0.15, 0, "fra_Latn/1"))
    assert len(chosen) == 30 and not np.isin(ids[chosen], list(SPECIAL.values())).any()
    assert (inputs[chosen] == SPECIAL["mask"]).all() and (labels[chosen] == ids[chosen]).all()  # all <mask>
    assert np.array_equal(np.delete(inputs, chosen), np.delete(ids, chosen).astype(np.int64))
    again = mask_document(ids, masking, 0, "fra_Latn/1")
    assert all(np.array_equal(x, y) for x, y in zip(again, (inputs, labels), strict=True))
    for seed, document_id in ((1, "fra_Latn/1"), (0, "fra_Latn/2")):
        other = np.flatnonzero(mask_document(ids, masking, seed, document_id)[1] != IGNORE_INDEX)
        assert len(other) == 30 and not np.array_equal(other, chosen)


def test_eval_equals_a_hand_computed_loss_on_a_few_documents(tmp_path):
    heldout = read_heldout(heldout_build(tmp_path), OPTIONS)
    model = known_model()
    scores = evaluate(model, heldout)
    assert model.training  # the mode it was given is given back

    dense = known_model(attn_backend="dense").eval()  # the quadratic reference, one piece at a time
    for stream, score in zip(heldout.streams, scores, strict=True):
        table = pyarrow.ipc.open_stream(pa.memory_map(str(tmp_path / stream.shards[0].path))).read_all()
        losses, correct = [], 0
        for document_id, ids in zip(table["id"].to_pylist(), table["input_ids"].to_pylist(), strict=True):
            ids = np.array(ids, dtype=np.int64)
            chosen = positions_by_hand(ids, OPTIONS.mask_rate, OPTIONS.seed, document_id)
            inputs = ids.copy()
            inputs[chosen] = SPECIAL["mask"]
            for start in range(0, len(ids), OPTIONS.seq_len):  # pieces of seq_len, as training cuts
                piece = torch.from_numpy(inputs[start : start + OPTIONS.seq_len])
                here = chosen[(chosen >= start) & (chosen < start + OPTIONS.seq_len)] - start
                with torch.no_grad():
                    logits = dense(piece, torch.tensor([0, len(piece)], dtype=torch.int32), len(piece)).logits
                targets = torch.from_numpy(ids[start + here])
                losses += F.cross_entropy(logits[here], targets, reduction="none").tolist()
                correct += int((logits[here].argmax(-1) == targets).sum())
        assert score.predictions == len(losses)
        if losses:
            assert score.loss == pytest.approx(sum(losses) / len(losses), abs=1e-5)
            assert score.accuracy == correct / len(losses)
    assert [s.predictions for s in scores] == [
        sum(round(0.3 * (n - 2 - (n > 10))) for n in lengths) for lengths in STREAMS.values()
    ]
    assert scores[-1] == Score(None, None, 0)  # eng_Latn's one document is too short to mask a token


def test_two_runs_give_identical_numbers_and_every_model_the_same_tokens(tmp_path):
    build = heldout_build(tmp_path)
    first = evaluate(known_model(0), read_heldout(build, OPTIONS))
    assert evaluate(known_model(0), read_heldout(build, OPTIONS)) == first  # equal, not close
    other = evaluate(known_model(1), read_heldout(build, OPTIONS))
    assert [s.predictions for s in other] == [s.predictions for s in first]
    assert [s.loss for s in other] != [s.loss for s in first]

    def labels(options: EvalOptions) -> torch.Tensor:
        """Every label of every batch, in order: the documents' own, whatever the pieces and batches."""
        return torch.cat([batch.labels for batch in batches(read_heldout(build, options))])

    assert torch.equal(labels(OPTIONS), labels(replace(OPTIONS, seq_len=1024, batch_tokens=4096)))
    assert not torch.equal(labels(OPTIONS), labels(replace(OPTIONS, seed=6)))


def test_each_language_takes_whole_documents_in_order_up_to_the_bound(tmp_path):
    build = heldout_build(tmp_path)

    def taken(bound: int, streams=None) -> dict[str, tuple[int, ...]]:
        heldout = read_heldout(build, replace(OPTIONS, max_tokens_per_language=bound), streams)
        return {stream.name: stream.lengths for stream in heldout.streams}

    assert taken(100) == {
        "fineweb2/fra_Latn": (40,),
        "wikipedia/cat_Latn": (70, 30),
        "fineweb2/fao_Latn": (3, 90),
        "dolmino/eng_Latn": (3,),
    }
    assert taken(10)["fineweb2/fra_Latn"] == (40,)  # the first document always
    assert taken(0) == {f"{s}/{lang}": tuple(lengths) for (s, lang), lengths in STREAMS.items()}
    wanted = [("wikipedia", "cat_Latn"), ("fineweb2", "deu_Latn")]
    assert taken(0, wanted) == {"wikipedia/cat_Latn": (70, 30)}


def _sharded_eval(rank: int, root: str) -> None:
    """One of two ranks evaluating the FSDP2-sharded model; rank 0 writes the scores."""
    torch_dist.init_process_group("gloo", init_method=f"file://{root}/rendezvous", rank=rank, world_size=2)
    try:
        model = known_model()
        dist = Dist(rank, 2, rank, torch.device("cpu"))
        parallelize(model, dist, "fsdp")
        scores = evaluate(model, read_heldout(Path(root) / "build", replace(OPTIONS, batch_tokens=200)), dist)
        if rank == 0:
            (Path(root) / "scores.json").write_text(json.dumps([asdict(score) for score in scores]))
    finally:
        torch_dist.destroy_process_group()


def test_two_processes_share_the_batches_of_a_sharded_model_and_agree_with_one(tmp_path):
    heldout = read_heldout(heldout_build(tmp_path / "build"), replace(OPTIONS, batch_tokens=200))
    assert batch_count(heldout) == 3  # odd: one rank runs a forward of a pad token alone, as FSDP2 needs
    mp.spawn(_sharded_eval, args=(str(tmp_path),), nprocs=2)
    shared = [Score(**score) for score in json.loads((tmp_path / "scores.json").read_text())]
    for two, one in zip(shared, evaluate(known_model(), heldout), strict=True):
        assert two.predictions == one.predictions and two.accuracy == one.accuracy
        assert two.loss == (None if one.loss is None else pytest.approx(one.loss, rel=1e-6))


def test_languages_are_grouped_by_the_phase_that_added_them():
    recipe = load_recipe()
    names = ("fra_Latn", "eng", "cat_Latn", "srp", "fao_Latn")
    assert {name: recipe.phase_that_added(name) for name in names} == {
        "fra_Latn": "pretrain",
        "eng": "pretrain",
        "cat_Latn": "midtrain",
        "srp": "midtrain",
        "fao_Latn": "decay",
    }
    groups = [language_group(recipe, name) for name in ("fra_Latn", "cat_Latn", "fao_Latn")]
    assert [(g.key, g.label) for g in groups] == [
        ("high", "high (pretrain)"),
        ("mid", "mid (midtrain)"),
        ("low", "low (decay)"),
    ]


@pytest.fixture(scope="module")
def trained(sample_manifests, tmp_path_factory) -> Path:
    """A tiny pretraining run of 4 steps (about 52k tokens) that evaluates every 20k tokens."""
    out = tmp_path_factory.mktemp("evaluated") / "pretrain"
    result = run(tiny(sample_manifests["pretrain"], out, "--eval-every", "20k", tokens="40k"))
    assert result.returncode == 0, result.stdout
    assert "held-out evaluation: loss" in result.stdout
    return out


def evaluations(run_dir: Path) -> list[dict]:
    """The evaluation figures of a run's metrics records (the time they took left out), with their step."""
    return [
        {key: value for key, value in r.items() if key.startswith("eval_") and key != "eval_seconds"}
        | {"step": r["step"]}
        for r in metrics(run_dir)
        if "eval_loss" in r
    ]


def test_a_phase_ends_with_eval_json_and_eval_every_logs_the_group_means(trained, sample_builds, tmp_path):
    records = metrics(trained)
    marks = [
        r["step"]
        for r, before in zip(records, [0] + [r["tokens"] for r in records[:-1]], strict=True)
        if before // 20_000 < r["tokens"] // 20_000
    ]
    assert [e["step"] for e in evaluations(trained)] == marks == [2, 4]
    assert all(r["eval_seconds"] > 0 and r["step_time"] > 0 for r in records if "eval_loss" in r)
    assert set(evaluations(trained)[0]) == {
        "step",
        "eval_loss",
        "eval_accuracy",
        "eval_loss_high",
        "eval_accuracy_high",
    }

    document = json.loads((trained / EVAL_NAME).read_text())
    (model,) = document["models"]
    assert (
        model["where"] == str(checkpoint_dirs(trained)[-1]) and document["max_tokens_per_language"] == 20_000
    )
    assert [g["label"] for g in document["groups"]] == ["high (pretrain)"]  # pretraining's own languages
    last = records[-1]  # a mark, so the model evaluated there is the final one
    assert (model["overall"]["loss"], model["groups"]["high"]["loss"]) == (
        last["eval_loss"],
        last["eval_loss_high"],
    )

    # the same figures as the command gives on the run, over the same bounded sample of the build
    build = sample_builds["pretrain"][0]
    out = tmp_path / "eval.json"
    result = runner.invoke(
        app,
        ["eval", str(trained), "--data", str(build), "--max-tokens-per-language", "20k", "--json", str(out)],
    )
    assert result.exit_code == 0, result.output
    again = json.loads(out.read_text())["models"][0]["languages"]
    for name, figures in model["languages"].items():
        assert again[name]["predictions"] == figures["predictions"]
        assert again[name]["loss"] == pytest.approx(figures["loss"], rel=1e-6)

    plot = plot_runs([trained], tmp_path / "loss.png")  # the held-out means drawn on the loss curve
    assert plot.stat().st_size > 10_000


def test_a_finished_run_run_again_with_resume_trains_and_evaluates_nothing(trained, sample_manifests):
    written = {path: path.read_bytes() for path in trained.rglob("*") if path.is_file()}
    changed = {path: path.stat().st_mtime_ns for path in (trained / EVAL_NAME, trained / "loss.png")}
    args = tiny(sample_manifests["pretrain"], trained, "--eval-every", "20k", "--resume", tokens="40k")
    output = train(*args)
    assert "done before: " in output
    assert "held-out evaluation" not in output
    assert {path: path.read_bytes() for path in trained.rglob("*") if path.is_file()} == written
    assert {path: path.stat().st_mtime_ns for path in changed} == changed


def test_eval_every_evaluates_where_an_uninterrupted_run_does_after_a_resume(
    trained, sample_manifests, tmp_path
):
    args = tiny(sample_manifests["pretrain"], tmp_path / "run", "--eval-every", "20k", tokens="40k")
    crashed = run(args, crash_at="2:0")  # after step 2's evaluation and its checkpoint (20k), in step 3
    assert crashed.returncode == -signal.SIGKILL
    assert run([*args, "--resume"]).returncode == 0
    assert evaluations(tmp_path / "run") == evaluations(trained)
    first, second = (
        json.loads((r / EVAL_NAME).read_text())["models"][0] for r in (trained, tmp_path / "run")
    )
    assert first["languages"] == second["languages"]


def test_the_command_puts_models_side_by_side_with_json_and_plot(
    trained, sample_builds, sample_manifests, tmp_path, monkeypatch
):
    monkeypatch.setenv(
        "MMBERT_DATA_CACHE", str(sample_manifests["pretrain"].parents[1] / "cache")
    )  # its tokenizer
    hf = tmp_path / "hf"
    exported = runner.invoke(app, ["export", str(trained), "-o", str(hf)])
    assert exported.exit_code == 0, exported.output
    build = sample_builds["decay"][0]
    args = [
        "eval",
        str(trained),
        str(hf),
        "--data",
        str(build),
        "--top",
        "1",
        "--plot",
        str(tmp_path / "eval.png"),
    ]
    result = runner.invoke(app, [*args, "--json", str(tmp_path / "eval.json")])
    assert result.exit_code == 0, result.output
    for label in (
        "high (pretrain)",
        "mid (midtrain)",
        "low (decay)",
        "all, per token",
        "best language",
        "worst language",
    ):
        assert label in result.output
    assert f"note: model {hf} records no tokenizer" in result.output
    assert (tmp_path / "eval.png").stat().st_size > 10_000

    document = json.loads((tmp_path / "eval.json").read_text())
    assert (document["mask_rate"], document["seed"], document["build"]) == (0.15, 0, str(build))
    ours, theirs = document["models"]
    assert (ours["name"], theirs["name"]) == ("pretrain", "hf")
    assert ours["languages"].keys() == theirs["languages"].keys() == document["languages"].keys()
    for name, figures in ours["languages"].items():  # the same weights through transformers' files
        assert theirs["languages"][name]["predictions"] == figures["predictions"]
        assert theirs["languages"][name]["loss"] == pytest.approx(figures["loss"], abs=1e-5)
    for key in ("high", "mid", "low"):  # a group's figure is the mean over its languages
        members = [
            n
            for n, lang in document["languages"].items()
            if lang["group"] == key and ours["languages"][n]["loss"] is not None
        ]
        assert ours["groups"][key]["loss"] == pytest.approx(
            sum(ours["languages"][n]["loss"] for n in members) / len(members)
        )
    made = sum(f["predictions"] for f in ours["languages"].values())
    overall = sum(f["loss"] * f["predictions"] for f in ours["languages"].values() if f["predictions"]) / made
    assert ours["overall"]["loss"] == pytest.approx(overall)

    to_stdout = runner.invoke(app, [*args, "--json", "-"])  # a second run: the same numbers
    assert to_stdout.exit_code == 0, to_stdout.output
    assert json.loads(to_stdout.stdout) == document


def test_the_command_refuses_in_one_line(trained, sample_builds, sample_manifests, tmp_path):
    decay_dir = sample_builds["decay"][0]
    decay = str(decay_dir)

    def refused(*args: str) -> str:
        output = fails("eval", *args)
        errors = [line for line in output.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "Traceback" not in output, output
        return errors[0]

    assert refused(str(tmp_path / "none"), "--data", decay).startswith(
        f"error: model {tmp_path / 'none'}: not a directory"
    )
    old = write_build(tmp_path / "old")  # a build made before held-out data
    assert "no held-out documents" in refused(str(trained), "--data", str(old))
    assert "is a build's output, not one of its phases" in refused(
        str(trained), "--data", str(decay_dir.parent)
    )
    assert refused(str(trained), "--data", str(decay_dir / "heldout")).endswith(
        f"is inside the build phase {decay_dir}: pass {decay_dir}"
    )
    assert refused(str(trained), "--data", str(sample_manifests["decay-eng"])).endswith(
        f"is a manifest, not a build's statistics: its build is {decay_dir}"
    )
    assert refused(str(trained), "--data", str(tmp_path / "none")).endswith(
        "pass a build's phase directory (OUTPUT/PHASE, which holds stats.json)"
    )

    other = tmp_path / "other"  # a checkpoint of data made with another tokenizer
    shutil.copytree(checkpoint_dirs(trained)[-1], other)
    state = json.loads((other / "state.json").read_text())
    state["tokenizer"]["sha256"] = "0" * 64
    (other / "state.json").write_text(json.dumps(state))
    assert "was trained on data tokenized with" in refused(str(other), "--data", decay)
    merged = tmp_path / "merged"  # a merge records the tokenizer of its inputs' data
    merged.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(other / name, merged / name)
    (merged / "merge.json").write_text(json.dumps({"tokenizer": state["tokenizer"]}))
    assert "was trained on data tokenized with" in refused(str(merged), "--data", decay)
    ModernBertMLM(ModelConfig.preset("tiny", vocab_size=1024)).save(tmp_path / "small")
    assert "its vocabulary of 1024 does not hold the build's 8192 tokens" in refused(
        str(tmp_path / "small"), "--data", decay
    )

    flags = {
        ("--mask-rate", "1.5"): "error: --mask-rate 1.5: must be between 0 and 1",
        ("--batch-tokens", "100"): "error: --batch-tokens 100: must be at least --seq-len 1024",
        ("--max-tokens-per-language", "lots"): "error: --max-tokens-per-language: ",
    }
    for flag, message in flags.items():
        assert refused(str(trained), "--data", decay, *flag).startswith(message)

    synthetic = write_synthetic_phase(tmp_path / "synthetic", documents=40)  # its data root has no stats.json
    output = fails(*tiny(synthetic, tmp_path / "nothing", "--eval-every", "10k"))
    assert output.strip().splitlines()[-1].startswith("error: --eval-every: nothing to evaluate on: ")
