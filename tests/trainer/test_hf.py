"""Export to / import from transformers: config fields, logits parity, exact weights, fill-mask."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForMaskedLM,
    AutoTokenizer,
    ModernBertConfig,
    ModernBertForMaskedLM,
    pipeline,
)
from typer.testing import CliRunner

from cli.train import app
from tests.fixtures import CORPUS, train_tokenizer
from trainer.hf import export_hf, import_hf
from trainer.model import ModelConfig, ModelFormatError, ModernBertMLM

runner = CliRunner()


def randomize(model: ModernBertMLM, seed: int = 0) -> ModernBertMLM:
    """Perturb every tensor (norms and the decoder bias too) so any mis-mapped key shows in the logits."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            parameter.copy_(1.0 + 0.1 * noise if parameter.dim() == 1 else 0.05 * noise)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[ModernBertMLM, Path, Path]:
    root = tmp_path_factory.mktemp("export")
    config = ModelConfig.preset("tiny", rope_theta_global=160_000.0, rope_theta_local=10_000.0)
    model = randomize(ModernBertMLM(config)).eval()
    model.save(root / "model")
    tokenizer = train_tokenizer(root / "tokenizer.json")
    result = runner.invoke(
        app, ["export", str(root / "model"), "--out", str(root / "hf"), "--tokenizer", str(tokenizer)]
    )
    assert result.exit_code == 0, result.output
    return model, root / "model", root / "hf"


def test_exported_config_has_both_rope_spellings(exported):
    _, _, hf_dir = exported
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["model_type"] == "modernbert"
    assert config["global_rope_theta"] == 160_000.0 and config["local_rope_theta"] == 10_000.0
    assert config["rope_parameters"]["full_attention"]["rope_theta"] == 160_000.0
    assert config["rope_parameters"]["sliding_attention"]["rope_theta"] == 10_000.0
    assert config["local_attention"] == 128 and config["global_attn_every_n_layers"] == 3
    assert "decoder.weight" not in load_file(hf_dir / "model.safetensors")
    assert not list(hf_dir.glob("*.tmp")) and not list(hf_dir.glob(".tokenizer-*"))


@pytest.mark.parametrize("length", [1, 17, 128, 129, 130, 300])
def test_transformers_logits_equal_ours(exported, length):
    model, _, hf_dir = exported
    theirs = AutoModelForMaskedLM.from_pretrained(hf_dir).eval()
    assert theirs.config.sliding_window == 64
    input_ids = torch.randint(
        5, model.config.vocab_size, (length,), generator=torch.Generator().manual_seed(length)
    )
    with torch.no_grad():
        ours = model(input_ids, torch.tensor([0, length], dtype=torch.int32), length).logits
        reference = theirs(input_ids=input_ids[None]).logits[0]
    assert (ours - reference).abs().max().item() <= 1e-4


def test_4x_style_config_loads_with_the_same_rope(exported, tmp_path):
    """A config with only the transformers 4.x RoPE fields reads back as the same model."""
    model, _, hf_dir = exported
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    config = json.loads((hf_dir / "config.json").read_text())
    del config["rope_parameters"], config["layer_types"]
    (legacy / "config.json").write_text(json.dumps(config))
    (legacy / "model.safetensors").write_bytes((hf_dir / "model.safetensors").read_bytes())
    assert import_hf(legacy).config == model.config
    theirs = AutoModelForMaskedLM.from_pretrained(legacy)
    assert theirs.config.rope_parameters["full_attention"]["rope_theta"] == 160_000.0
    assert theirs.config.rope_parameters["sliding_attention"]["rope_theta"] == 10_000.0


def test_import_gives_back_the_same_weights(exported, tmp_path):
    model, _, hf_dir = exported
    result = runner.invoke(app, ["import", str(hf_dir), "--out", str(tmp_path / "back")])
    assert result.exit_code == 0, result.output
    back = ModernBertMLM.load(tmp_path / "back")
    assert back.config == model.config
    ours, theirs = model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)
    assert back.decoder.weight is back.model.embeddings.tok_embeddings.weight


def test_import_of_a_transformers_checkpoint(tmp_path):
    """A checkpoint saved by transformers itself (sharded, 4.x-style config) imports with equal logits."""
    hf_config = ModernBertConfig(
        vocab_size=512,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=2,
        local_attention=16,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        cls_token_id=2,
        sep_token_id=1,
    )
    reference = ModernBertForMaskedLM(hf_config).eval()
    reference.save_pretrained(tmp_path / "hub", max_shard_size="100KB")
    assert (tmp_path / "hub" / "model.safetensors.index.json").exists()
    config_path = tmp_path / "hub" / "config.json"
    config = json.loads(config_path.read_text())
    rope = config.pop("rope_parameters")
    config.pop("layer_types")
    config.update(
        global_attn_every_n_layers=3,
        global_rope_theta=rope["full_attention"]["rope_theta"],
        local_rope_theta=rope["sliding_attention"]["rope_theta"],
    )
    config_path.write_text(json.dumps(config))

    model = import_hf(tmp_path / "hub").eval()
    assert model.config.rope_theta_global == 160_000.0 and model.config.rope_theta_local == 10_000.0
    input_ids = torch.randint(5, 512, (40,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(input_ids, torch.tensor([0, 40], dtype=torch.int32), 40).logits
        theirs = reference(input_ids=input_ids[None]).logits[0]
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_import_rejects_other_architectures(exported, tmp_path):
    _, _, hf_dir = exported
    for change, message in (
        ({"model_type": "bert"}, "model_type"),
        ({"norm_bias": True}, "norm_bias"),
        ({"layer_types": ["full_attention"] * 4}, "layer_types"),
    ):
        bad = tmp_path / next(iter(change))
        bad.mkdir()
        config = json.loads((hf_dir / "config.json").read_text())
        (bad / "config.json").write_text(json.dumps({**config, **change}))
        (bad / "model.safetensors").write_bytes((hf_dir / "model.safetensors").read_bytes())
        with pytest.raises(ModelFormatError, match=message):
            import_hf(bad)
    result = runner.invoke(app, ["import", str(tmp_path / "missing"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "config.json" in result.output


def test_export_takes_a_tokenizer_directory_laid_out_like_the_hub(exported, tmp_path):
    """A directory (or hub name) goes through AutoTokenizer; its declared special ids are checked."""
    _, model_dir, hf_dir = exported
    export_hf(model_dir, tmp_path / "again", tokenizer=str(hf_dir))
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "again")
    assert (tokenizer.mask_token_id, tokenizer.unk_token_id) == (4, 3)
    settings = json.loads((tmp_path / "again" / "tokenizer_config.json").read_text())
    assert settings["model_input_names"] == ["input_ids", "attention_mask"]


def test_export_of_a_hub_tokenizer_with_the_hub_unreachable_reads_the_cache_or_fails_at_once(
    exported, tmp_path
):
    """transformers retries each file for ~50 s when the hub does not answer; the export asks the hub
    once, then reads the local Hugging Face cache (laid out as huggingface_hub writes it) or stops."""
    _, model_dir, hf_dir = exported
    snapshot = tmp_path / "hf-cache" / "models--acme--tok" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):  # a model repository
        (snapshot / name).write_bytes((hf_dir / name).read_bytes())
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_CACHE": str(tmp_path / "hf-cache")}
    env.pop("HF_HUB_OFFLINE", None)

    def export(name: str, out: str) -> tuple[subprocess.CompletedProcess, float]:
        command = [sys.executable, "-m", "cli.train", "export", str(model_dir), "--tokenizer", name]
        started = time.monotonic()
        done = subprocess.run([*command, "-o", str(tmp_path / out)], env=env, capture_output=True, text=True)
        return done, time.monotonic() - started

    cached, _ = export("acme/tok", "cached")
    assert cached.returncode == 0, cached.stderr
    assert AutoTokenizer.from_pretrained(tmp_path / "cached").mask_token_id == 4
    missing, seconds = export("acme/other", "missing")
    assert missing.returncode == 1 and "Retrying" not in missing.stderr, missing.stderr
    (line,) = missing.stderr.splitlines()
    assert "exporting tokenizer acme/other (not in the local Hugging Face cache)" in line
    assert "http://127.0.0.1:9 cannot be reached" in line and "--tokenizer PATH" in line
    assert seconds < 20 and not (tmp_path / "missing").exists()


def test_export_rejects_a_tokenizer_with_other_special_ids(tmp_path):
    ModernBertMLM(ModelConfig.preset("tiny")).save(tmp_path / "model")
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(
        CORPUS, trainers.WordLevelTrainer(special_tokens=["<unk>", "<mask>", "<pad>"])
    )
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ModelFormatError, match="pad token id 0 is '<unk>'"):
        export_hf(tmp_path / "model", tmp_path / "hf", str(tmp_path / "tokenizer.json"))


def test_fill_mask_pipeline_on_a_trained_tiny_model(tmp_path):
    """Train the tiny model on three sentences, export it, and let transformers fill the mask."""
    tokenizer_path = train_tokenizer(tmp_path / "tokenizer.json")
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    # One packed batch: every sentence once per word, with that word masked.
    inputs, labels, lengths = [], [], []
    for text in CORPUS:
        ids = torch.tensor(tokenizer.encode(text).ids)
        for position in range(1, len(ids) - 1):  # not <bos>/<eos>
            masked, label = ids.clone(), torch.full_like(ids, -100)
            masked[position], label[position] = 4, ids[position]
            inputs.append(masked), labels.append(label), lengths.append(len(ids))
    input_ids, labels = torch.cat(inputs), torch.cat(labels)
    cu_seqlens = torch.tensor([0, *lengths]).cumsum(0).to(torch.int32)
    torch.manual_seed(0)
    model = ModernBertMLM(ModelConfig.preset("tiny", vocab_size=tokenizer.get_vocab_size()))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(60):
        loss = model(input_ids, cu_seqlens, max(lengths), labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1
    model.save(tmp_path / "model")
    export_hf(tmp_path / "model", tmp_path / "hf", str(tokenizer_path))

    loaded = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert (loaded.mask_token_id, loaded.pad_token_id, loaded.bos_token_id) == (4, 0, 2)
    fill_mask = pipeline("fill-mask", model=str(tmp_path / "hf"), tokenizer=str(tmp_path / "hf"))
    predictions = fill_mask("the <mask> sat on the mat", top_k=3)
    assert [p["token_str"] for p in predictions][0] == "cat"
    assert predictions[0]["score"] > 0.5


def test_the_readme_fine_tuning_runs_as_written(exported, tmp_path, monkeypatch):
    """The README's fine-tuning example, verbatim, on an export where it expects the demo's."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Fine-tuning", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    _, _, hf_dir = exported
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    (tmp_path / "runs" / "demo" / "hf").symlink_to(hf_dir)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md (Fine-tuning)", "exec"), {})
    assert (tmp_path / "runs" / "finetune").is_dir()
