"""Starting from the released model: a transformers directory laid out as ``jhu-clsp/mmBERT-base``
(its config.json's keys and special ids, depth and width reduced, random weights) starts a decay
variant with ``--init``, is evaluated beside the run, and is found by its hub name in the Hugging
Face cache when the hub cannot be reached."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import ModernBertConfig, ModernBertForMaskedLM
from typer.testing import CliRunner

from cli.train import app
from trainer.checkpoint import checkpoint_dirs

runner = CliRunner()
HUB_NAME = "jhu-clsp/mmBERT-base"
VOCAB = 256_000  # Gemma 2's tokenizer; the sample tokenizer's ids fit inside it
# mmBERT-base's config.json (transformers 4.x spelling), with 3 layers of width 64 instead of 22 of 768
RELEASED_CONFIG = {
    "global_attn_every_n_layers": 3,
    "local_attention": 128,
    "global_rope_theta": 160_000.0,
    "local_rope_theta": 160_000.0,
    "max_position_embeddings": 8192,
    "vocab_size": VOCAB,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "bos_token_id": 2,
    "cls_token_id": 1,
    "sep_token_id": 1,
    "mask_token_id": 4,
}


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> Path:
    """The model directory; its ``decoder.bias`` is a ramp from -1 to 1, which a new model (zeros) lacks."""
    directory = tmp_path_factory.mktemp("released") / "mmBERT-base"
    torch.manual_seed(0)
    shape = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3, "num_attention_heads": 1}
    model = ModernBertForMaskedLM(ModernBertConfig(**shape, vocab_size=VOCAB))
    with torch.no_grad():
        model.decoder.bias.copy_(torch.linspace(-1, 1, VOCAB))
    model.save_pretrained(directory)
    config = json.loads((directory / "config.json").read_text())
    for key in ("rope_parameters", "layer_types"):  # written by transformers 5; the release has neither
        config.pop(key, None)
    (directory / "config.json").write_text(json.dumps({**config, **RELEASED_CONFIG}, indent=2))
    return directory


def test_a_decay_variant_starts_from_the_released_model_and_is_evaluated_beside_it(
    released, sample_manifests, sample_builds, tmp_path
):
    out = tmp_path / "decay-eng"
    trained = runner.invoke(
        app,
        [
            "--manifest",
            str(sample_manifests["decay-eng"]),
            "--init",
            str(released),
            "-o",
            str(out),
            "--tokens",
            "32768",
            "--batch-size",
            "2",
            "--lr",
            "1e-3",
        ],
    )
    assert trained.exit_code == 0, trained.output
    checkpoint = checkpoint_dirs(out)[-1]
    shape = json.loads((checkpoint / "config.json").read_text())
    assert (shape["vocab_size"], shape["num_layers"], shape["hidden_size"]) == (VOCAB, 3, 64)
    assert (shape["rope_theta_global"], shape["rope_theta_local"], shape["local_attention"]) == (
        160_000.0,
        160_000.0,
        128,
    )
    bias = load_file(str(checkpoint / "model.safetensors"))["decoder.bias"]
    assert (bias - torch.linspace(-1, 1, VOCAB)).abs().max() < 0.05  # the released weights, trained on
    assert (out / "eval.json").is_file()  # the phase's own held-out evaluation

    table = tmp_path / "eval.json"
    build = sample_builds["decay"][0]
    evaluated = runner.invoke(
        app,
        ["eval", str(released), str(out), "--data", str(build), "--max-tokens-per-language", "2k"]
        + ["--json", str(table)],
    )
    assert evaluated.exit_code == 0, evaluated.output
    before, after = json.loads(table.read_text())["models"]
    assert (before["name"], after["name"]) == ("mmBERT-base", "decay-eng")
    assert before["languages"].keys() == after["languages"].keys()
    for name, figures in before["languages"].items():  # the same masked tokens for both
        assert after["languages"][name]["predictions"] == figures["predictions"]
    assert before["overall"]["loss"] != after["overall"]["loss"]


def test_the_released_model_by_its_hub_name_from_the_cache_or_one_line(
    released, sample_builds, tmp_path, monkeypatch
):
    """With the hub unreachable, the name is found in the Hugging Face cache, laid out as
    huggingface_hub writes it (``models--org--name/snapshots/REVISION``, ``refs/main``)."""
    cache = tmp_path / "hf-cache"
    repo = cache / f"models--{HUB_NAME.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    (snapshot / "config.json").write_bytes((released / "config.json").read_bytes())
    save_file(load_file(str(released / "model.safetensors")), str(snapshot / "model.safetensors"))
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    build = sample_builds["decay"][0]

    def evaluate(*models: str) -> dict:
        table = tmp_path / "eval.json"
        args = ["--data", str(build), "--max-tokens-per-language", "2k", "--json", str(table)]
        result = runner.invoke(app, ["eval", *models, *args])
        assert result.exit_code == 0, result.output
        return json.loads(table.read_text())

    by_name, by_path = evaluate(HUB_NAME, str(released))["models"]
    assert by_name["languages"] == by_path["languages"]

    missing = runner.invoke(app, ["eval", "jhu-clsp/mmBERT-large", "--data", str(build)])
    assert missing.exit_code == 1
    line = missing.output.strip().splitlines()[-1]  # after the line naming the data
    assert line.startswith("error: model jhu-clsp/mmBERT-large (not in the local Hugging Face cache) needs")
    assert "http://127.0.0.1:9 cannot be reached" in line
