"""Merging: TIES against a hand-computed example, copies and one-hot weights give the model back, the
EMA's closed form, the streamed merge against the in-memory one, and `mmbert-train merge` end to end
(its output exported and read as --init, refusals in one line, nothing left by a failed merge)."""

from __future__ import annotations

import errno
import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM, AutoTokenizer, ModernBertConfig, ModernBertForMaskedLM
from typer.testing import CliRunner

from bench.peers import naive_ties
from cli.train import app
from tests.fixtures import train_tokenizer
from trainer import merge
from trainer.checkpoint import Snapshot, read_init, save_checkpoint
from trainer.hf import export_hf, import_hf
from trainer.merge import ema, linear, merge_models, ties, trim_threshold
from trainer.model import TIED_KEY, WEIGHTS_NAME, ModelConfig, ModernBertMLM

runner = CliRunner()


def random_model(seed: int, **overrides) -> ModernBertMLM:
    """A tiny model with every tensor perturbed (norms and biases too), so that each merge is visible."""
    model = ModernBertMLM(ModelConfig.preset("tiny", **overrides))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / WEIGHTS_NAME))


def save_run(run: Path, models: dict[int, ModernBertMLM], tokenizer: dict) -> Path:
    """A run directory holding a checkpoint of each model at its step (no optimizer state)."""
    for step, model in models.items():
        state = {key: value for key, value in model.state_dict().items() if key != TIED_KEY}
        save_checkpoint(run, model, Snapshot(state, {}, {}), {"step": step, "tokenizer": tokenizer})
    return run


def merge_command(*args: str) -> str:
    result = runner.invoke(app, ["merge", *args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> dict:
    """Tiny model directories a, b, c, base and wide (hidden 32); runs ra, rb, rc of a, b, c whose data
    had tokenizer x, ry of a with another tokenizer; damaged, a with its weights cut short."""
    root = tmp_path_factory.mktemp("zoo")
    tokenizer = train_tokenizer(root / "tokenizer.json")
    record = {
        "name": str(tokenizer),
        "sha256": hashlib.sha256(tokenizer.read_bytes()).hexdigest(),
        "vocab_size": 24,
        "special_ids": {"pad": 0, "eos": 1, "bos": 2, "unk": 3, "mask": 4},
    }
    other = {**record, "name": "acme/other", "sha256": "0" * 64}
    models = {name: random_model(seed) for seed, name in enumerate(["a", "b", "c", "base"])}
    paths = {name: str(model.save(root / name)) for name, model in models.items()}
    paths["wide"] = str(random_model(9, hidden_size=32).save(root / "wide"))
    for name in "abc":
        paths[f"r{name}"] = str(save_run(root / f"r{name}", {10: models[name]}, record))
    paths["ry"] = str(save_run(root / "ry", {10: models["a"]}, other))
    damaged = models["a"].save(root / "damaged") / WEIGHTS_NAME
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    paths["damaged"] = str(damaged.parent)
    return {"paths": paths, "record": record}


def test_ties_equals_a_hand_computed_example():
    """Six entries, three models, density 0.5 (each keeps its 3 largest), lambda 0.5."""
    base = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    taus = [
        torch.tensor([[4.0, -1.0, 2.0], [-3.0, 0.5, 1.0]]),  # keeps 4, 2, -3 (threshold 2)
        torch.tensor([[-2.0, 5.0, 1.0], [-1.0, 3.0, 0.25]]),  # keeps -2, 5, 3 (threshold 2)
        torch.tensor([[3.0, -6.0, -4.0], [0.5, -1.0, 2.0]]),  # keeps 3, -6, -4 (threshold 3)
    ]
    # trimmed sums [[5, -1, -2], [-3, 3, 0]] elect [[+, -, -], [-, +, 0]]; the disjoint means are
    # (4 + 3) / 2 (the -2 disagrees), -6 (not the 5), -4 (not the 2), -3, 3, and 0 where none is kept.
    merged_tau = torch.tensor([[3.5, -6.0, -4.0], [-3.0, 3.0, 0.0]])
    thetas = [base + tau for tau in taus]
    assert [trim_threshold(tau.abs(), 0.5) for tau in taus] == [2.0, 2.0, 3.0]
    assert torch.equal(ties(base, thetas, density=0.5, lam=0.5), base + 0.5 * merged_tau)
    assert torch.equal(ties(base, thetas, density=0.5, lam=0.5), torch.tensor([[2.75, -1, 1], [2.5, 6.5, 6]]))


@pytest.mark.parametrize("base_kind", ["zeros", "random", "the model"])
def test_ties_of_copies_of_one_model_gives_that_model_whatever_the_base(base_kind):
    generator = torch.Generator().manual_seed(1)
    theta = torch.randn(40, 30, generator=generator)
    base = {
        "zeros": torch.zeros(40, 30),
        "random": torch.randn(40, 30, generator=generator),
        "the model": theta,
    }
    merged = ties(base[base_kind], [theta] * 3, density=1.0)
    assert torch.allclose(merged, theta, rtol=0, atol=1e-6)
    assert base_kind != "the model" or torch.equal(merged, theta)


def test_ties_of_copies_below_full_density_keeps_each_entry_of_the_top_fraction_and_the_base_elsewhere():
    generator = torch.Generator().manual_seed(2)
    theta, base = torch.randn(50, 20, generator=generator), torch.randn(50, 20, generator=generator)
    top = (theta - base).abs().flatten().topk(250).indices  # density 0.25 of 1000 entries
    kept = torch.zeros(1000, dtype=torch.bool)
    kept[top] = True
    kept = kept.view(50, 20)
    merged = ties(base, [theta] * 3, density=0.25)
    assert torch.equal(merged[~kept], base[~kept])
    assert torch.allclose(merged[kept], theta[kept], rtol=0, atol=1e-6)


def test_linear_with_one_weight_of_one_gives_that_model_and_weights_are_proportions():
    generator = torch.Generator().manual_seed(3)
    a, b, c = (torch.randn(7, 5, generator=generator) for _ in range(3))
    assert torch.equal(linear([a, b, c], [0.0, 1.0, 0.0]), b)
    assert torch.equal(linear([a, b, c], [0.0, 0.0, 4.0]), c)
    assert torch.allclose(linear([a, a, a], [1.0, 1.0, 1.0]), a, rtol=1e-6, atol=0)
    assert torch.allclose(linear([a, b], [3.0, 1.0]), 0.75 * a + 0.25 * b, rtol=0, atol=1e-6)


def test_ema_equals_its_closed_form_and_copies_give_the_model():
    generator = torch.Generator().manual_seed(4)
    thetas = [torch.randn(6, 4, generator=generator) for _ in range(5)]
    decay, count = 0.7, len(thetas)
    closed = [decay ** (count - 1)] + [(1 - decay) * decay ** (count - k) for k in range(2, count + 1)]
    assert math.isclose(sum(closed), 1.0)
    expected = sum(weight * theta for weight, theta in zip(closed, thetas, strict=True))
    assert torch.allclose(ema(iter(thetas), decay), expected, rtol=0, atol=1e-6)
    assert not torch.allclose(ema(reversed(thetas), decay), expected, rtol=0, atol=1e-3)  # order matters
    assert torch.allclose(ema([thetas[0]] * 4, decay), thetas[0], rtol=0, atol=1e-6)


def test_the_streamed_merge_reads_small_blocks_and_equals_the_in_memory_ties(zoo, tmp_path, monkeypatch):
    paths = zoo["paths"]
    read_sizes = []
    read = merge.Model.read

    def recorded(self, key, start, stop):
        block = read(self, key, start, stop)
        read_sizes.append(block.numel())
        return block

    monkeypatch.setattr(merge.Model, "read", recorded)
    models = [paths[name] for name in "abc"]
    merge_models(models, tmp_path / "out", "ties", base=paths["base"], density=0.3, block_elements=256)
    assert max(read_sizes) <= 256 and len(read_sizes) > 1000  # the 1024 x 64 embeddings alone: 256 blocks
    expected = naive_ties(f"{paths['base']}/{WEIGHTS_NAME}", [f"{m}/{WEIGHTS_NAME}" for m in models], 0.3)
    merged = weights(tmp_path / "out")
    assert merged.keys() == expected.keys() == weights(Path(paths["a"])).keys()
    assert all(torch.equal(merged[key], expected[key]) for key in merged)
    assert not torch.equal(
        merged["model.final_norm.weight"], weights(Path(paths["a"]))["model.final_norm.weight"]
    )


def test_merging_copies_of_one_model_directory_gives_that_model(zoo, tmp_path):
    a, base = zoo["paths"]["a"], zoo["paths"]["base"]
    merge_command("--method", "ties", a, a, a, "--base", base, "--density", "1", "-o", str(tmp_path / "ties"))
    merge_command("--method", "linear", a, a, a, "-o", str(tmp_path / "linear"))
    original = weights(Path(a))
    for name in ("ties", "linear"):
        merged = weights(tmp_path / name)
        assert all(torch.allclose(merged[key], original[key], rtol=0, atol=1e-6) for key in original)


def test_ties_end_to_end_the_output_is_read_as_init_and_exported_with_the_datas_tokenizer(zoo, tmp_path):
    paths, out = zoo["paths"], tmp_path / "merged"
    printed = merge_command(
        "--method", "ties", paths["ra"], paths["rb"], paths["rc"], "--base", paths["base"],
        "--density", "0.5", "--lambda", "0.8", "-o", str(out),
    )  # fmt: skip
    assert printed.strip() == f"wrote {out} (ties of 3 models)"
    checkpoints = [f"{paths[name]}/checkpoints/step-00000010/{WEIGHTS_NAME}" for name in ("ra", "rb", "rc")]
    expected = naive_ties(f"{paths['base']}/{WEIGHTS_NAME}", checkpoints, 0.5, lam=0.8)
    merged = weights(out)
    assert all(torch.equal(merged[key], expected[key]) for key in expected)
    record = json.loads((out / "merge.json").read_text())
    assert (record["method"], record["density"], record["lambda"]) == ("ties", 0.5, 0.8)
    assert record["tokenizer"] == zoo["record"] and record["base"] == str(Path(paths["base"]).resolve())

    init = read_init(out)
    assert init.config == ModelConfig.preset("tiny") and init.tokenizer == zoo["record"]
    assert init.optimizer is None and all(torch.equal(init.weights[key], merged[key]) for key in merged)

    result = runner.invoke(app, ["export", str(out), "-o", str(tmp_path / "hf")])  # no --tokenizer
    assert result.exit_code == 0, result.output
    assert AutoTokenizer.from_pretrained(tmp_path / "hf").mask_token_id == 4
    theirs = AutoModelForMaskedLM.from_pretrained(tmp_path / "hf")
    embeddings = merged["model.embeddings.tok_embeddings.weight"]
    assert torch.equal(theirs.model.embeddings.tok_embeddings.weight.detach(), embeddings)


def test_a_transformers_directory_merges_as_the_model_it_was_exported_from(zoo, tmp_path):
    paths, hf = zoo["paths"], str(export_hf(zoo["paths"]["a"], tmp_path / "hf-a"))
    merge_command("--method", "linear", hf, paths["b"], "--weights", "3,1", "-o", str(tmp_path / "from-hf"))
    merge_command(
        "--method", "linear", paths["a"], paths["b"], "--weights", "3,1", "-o", str(tmp_path / "from-ours")
    )
    from_hf, from_ours = weights(tmp_path / "from-hf"), weights(tmp_path / "from-ours")
    assert from_hf.keys() == from_ours.keys()
    assert all(torch.equal(from_hf[key], from_ours[key]) for key in from_ours)
    a, b = weights(Path(paths["a"])), weights(Path(paths["b"]))
    assert torch.allclose(
        from_ours["head.dense.weight"], 0.75 * a["head.dense.weight"] + 0.25 * b["head.dense.weight"]
    )


def test_sharded_transformers_checkpoints_merge(tmp_path):
    """Checkpoints as transformers saves them (an index of shards) merge as their imports would."""
    config = ModernBertConfig(
        vocab_size=512, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2,
        local_attention=16, pad_token_id=0, eos_token_id=1, bos_token_id=2, cls_token_id=2, sep_token_id=1,
    )  # fmt: skip
    hubs = [tmp_path / "hub-0", tmp_path / "hub-1"]
    for seed, hub in enumerate(hubs):
        torch.manual_seed(seed)
        ModernBertForMaskedLM(config).save_pretrained(hub, max_shard_size="100KB")
        assert len(json.loads((hub / "model.safetensors.index.json").read_text())["weight_map"]) > 1
    merge_command("--method", "linear", *map(str, hubs), "-o", str(tmp_path / "merged"))
    first, second = (import_hf(hub) for hub in hubs)
    merged = ModernBertMLM.load(tmp_path / "merged")
    assert merged.config == first.config
    for key, value in merged.state_dict().items():
        assert torch.allclose(value, (first.state_dict()[key] + second.state_dict()[key]) / 2), key


def test_ema_of_a_runs_checkpoints_in_step_order_equals_its_closed_form(zoo, tmp_path):
    steps = [40, 3, 100, 12]  # saved out of order: the EMA follows the steps
    models = {step: random_model(20 + i) for i, step in enumerate(steps)}
    run = save_run(tmp_path / "run", models, zoo["record"])
    out = tmp_path / "ema"
    out.mkdir()  # an empty directory is replaced
    assert merge_command("--method", "ema", str(run), "--decay", "0.6", "-o", str(out)).strip() == (
        f"wrote {out} (ema of 4 models)"
    )
    ordered = [models[step] for step in sorted(steps)]
    closed = [0.6**3, 0.4 * 0.6**2, 0.4 * 0.6, 0.4]
    merged = weights(out)
    for key, value in merged.items():
        expected = sum(w * model.state_dict()[key] for w, model in zip(closed, ordered, strict=True))
        assert torch.allclose(value, expected, rtol=0, atol=1e-6), key
    record = json.loads((out / "merge.json").read_text())
    assert [Path(model).name for model in record["models"]] == [f"step-{step:08d}" for step in sorted(steps)]
    assert record["decay"] == 0.6 and record["tokenizer"] == zoo["record"]


REFUSALS = {
    "configs": (
        ["--method", "linear", "{a}", "{wide}"],
        "{a} and {wide} differ in their config (hidden_size 64 vs 32",
    ),
    "tokenizers": (
        ["--method", "linear", "{ra}", "{ry}"],
        "{ra} and {ry} were trained on data of different tokenizers ({tokenizer}, sha256",
    ),
    "base of another config": (
        ["--method", "ties", "{a}", "{b}", "--base", "{wide}"],
        "{wide} and {a} differ",
    ),
    "missing": (["--method", "linear", "{a}", "{a}-missing"], "{a}-missing: not a directory"),
    "damaged": (
        ["--method", "linear", "{a}", "{damaged}"],
        "{damaged}/model.safetensors: cannot read weights",
    ),
    "one model": (["--method", "linear", "{a}"], "--method linear merges two or more models, got 1"),
    "one model and a base": (
        ["--method", "ties", "{a}", "--base", "{b}"],
        "--method ties merges two or more",
    ),
    "ema of two runs": (["--method", "ema", "{ra}", "{rb}"], "--method ema takes one run directory"),
    "ema of a model": (["--method", "ema", "{a}"], "{a}: not a run directory (no checkpoints/)"),
    "ema of one checkpoint": (
        ["--method", "ema", "{ra}"],
        "{ra}: 1 complete checkpoint(s); an EMA needs two",
    ),
    "density 0": (
        ["--method", "ties", "{a}", "{b}", "--base", "{c}", "--density", "0"],
        "--density must be in (0, 1]",
    ),
    "density 1.5": (["--method", "ties", "{a}", "{b}", "--base", "{c}", "--density", "1.5"], "got 1.5"),
    "no base": (["--method", "ties", "{a}", "{b}"], "--method ties needs --base"),
    "negative weight": (["--method", "linear", "{a}", "{b}", "--weights", "1,-1"], "--weights must be >= 0"),
    "zero weights": (["--method", "linear", "{a}", "{b}", "--weights", "0,0"], "not all 0, got 0.0,0.0"),
    "weight count": (["--method", "linear", "{a}", "{b}", "--weights", "1,2,3"], "3 weights for 2 models"),
    "weights not numbers": (
        ["--method", "linear", "{a}", "{b}", "--weights", "1,x"],
        "--weights 1,x: expected",
    ),
    "another method's flag": (
        ["--method", "linear", "{a}", "{b}", "--density", "0.5"],
        "--density is an option of --method ties, not of linear",
    ),
    "unknown method": (
        ["--method", "slerp", "{a}", "{b}"],
        "--method 'slerp': choose one of ties, linear, ema",
    ),
    "decay 1": (["--method", "ema", "{ra}", "--decay", "1"], "--decay must be in (0, 1), got 1.0"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_what_cannot_be_merged_is_refused_in_one_line_and_writes_nothing(zoo, tmp_path, case):
    args, message = REFUSALS[case]
    names = {**zoo["paths"], "tokenizer": zoo["record"]["name"]}
    result = runner.invoke(
        app, ["merge", *(arg.format(**names) for arg in args), "-o", str(tmp_path / "out")]
    )
    assert result.exit_code == 1, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: ") and message.format(**names) in line, line
    assert list(tmp_path.iterdir()) == []


def test_an_existing_output_is_refused(zoo):
    a = zoo["paths"]["a"]
    before = weights(Path(a))
    result = runner.invoke(app, ["merge", "--method", "linear", a, zoo["paths"]["b"], "-o", a])
    assert (
        result.exit_code == 1 and result.output.strip() == f"error: --output {a} exists; pass a new directory"
    )
    assert all(torch.equal(weights(Path(a))[key], value) for key, value in before.items())


def test_a_merge_that_fails_midway_leaves_nothing(zoo, tmp_path, monkeypatch):
    """The disk fills after a few blocks were written: the staged directory goes, no output appears."""
    paths, out = zoo["paths"], tmp_path / "out"
    staged_seen = []
    ties_block = merge.ties_block

    def failing(*args):
        staged_seen.append(bool(list(tmp_path.glob(".out.*.tmp"))))
        if len(staged_seen) == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return ties_block(*args)

    monkeypatch.setattr(merge, "ties_block", failing)
    result = runner.invoke(
        app, ["merge", "--method", "ties", paths["a"], paths["b"], "--base", paths["c"], "-o", str(out)]
    )
    assert result.exit_code == 1
    assert result.output.strip() == f"error: {out}: cannot be written (No space left on device)"
    assert staged_seen == [True] * 5
    assert list(tmp_path.iterdir()) == []
