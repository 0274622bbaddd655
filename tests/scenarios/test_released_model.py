"""Starting from the released model: README's decay on your own languages, run as written from a
transformers directory laid out as ``jhu-clsp/mmBERT-base`` (its config.json's keys and special
ids, depth and width reduced, random weights), found by its hub name in a local Hugging Face cache
with the hub unreachable; and the one-line error when neither has it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM, AutoTokenizer, ModernBertConfig, ModernBertForMaskedLM
from typer.testing import CliRunner

from cli.train import app
from trainer.checkpoint import checkpoint_dirs

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
HUB = ROOT / "pipeline" / "sample" / "hub"
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


def hub_cache(cache: Path, name: str, model_dir: Path) -> Path:
    """A Hugging Face cache holding ``model_dir`` as repository ``name``, laid out as huggingface_hub
    writes it (``models--org--name/snapshots/REVISION``, ``refs/main``)."""
    repo = cache / f"models--{name.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    for file in ("config.json", "model.safetensors"):
        (snapshot / file).write_bytes((model_dir / file).read_bytes())
    return cache


def readme_block() -> str:
    """README's bash block of "a decay on your own languages" (the one naming --init jhu-clsp/...)."""
    text = (ROOT / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```bash\n(.*?)```", text, re.DOTALL) if f"--init {HUB_NAME}" in b]
    return block


SUBSTITUTIONS = [  # (README's text, what runs on the bundled sample)
    ("mmbert-data build ", f"mmbert-data build --input-root {HUB} --tokenizer sample:{HUB} "),
    ("--tokens 1B", "--tokens 8k --max-epochs 3"),  # the sample holds a few thousand tokens per language
    ("-o runs/my-decay --init", "-o runs/my-decay --tokens 32768 --batch-size 2 --init"),  # two steps
]


def test_the_readme_decay_from_mmbert_base_runs_as_written(released, tmp_path):
    block = readme_block()
    for old, new in SUBSTITUTIONS:
        assert old in block, f"README's block lost {old!r}: update this test"
        block = block.replace(old, new)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HF_HUB_CACHE": str(hub_cache(tmp_path / "hf-cache", HUB_NAME, released)),
        "HF_ENDPOINT": "http://127.0.0.1:9",  # unreachable: the cache serves
    }
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    run = tmp_path / "runs" / "my-decay"
    checkpoint = checkpoint_dirs(run)[-1]
    shape = json.loads((checkpoint / "config.json").read_text())
    assert (shape["vocab_size"], shape["num_layers"], shape["hidden_size"]) == (VOCAB, 3, 64)
    assert (shape["rope_theta_global"], shape["rope_theta_local"], shape["local_attention"]) == (
        160_000.0,
        160_000.0,
        128,
    )
    bias = load_file(str(checkpoint / "model.safetensors"))["decoder.bias"]
    assert (bias - torch.linspace(-1, 1, VOCAB)).abs().max() < 0.05  # the released weights, trained on
    assert f"model from --init {HUB_NAME} (" in done.stdout + done.stderr
    manifest = json.loads((tmp_path / "manifests" / "my-decay.json").read_text())
    assert {s["language"] for s in manifest["streams"] if s["source"] == "fineweb2"} == {
        "isl_Latn",
        "fao_Latn",
        "bre_Latn",
        "cym_Latn",
    }
    table = done.stdout[done.stdout.index("held-out masked-LM loss") :]
    assert "mmBERT-base" in table and "my-decay" in table and "low (decay): 3 languages" in table
    model = AutoModelForMaskedLM.from_pretrained(tmp_path / "hf-model")
    assert model.config.vocab_size == VOCAB and AutoTokenizer.from_pretrained(tmp_path / "hf-model")


def test_a_hub_name_neither_reachable_nor_cached_is_one_line(sample_builds, tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    for args in (
        ["eval", "jhu-clsp/mmBERT-large", "--data", str(sample_builds["decay"][0])],
        ["merge", "--method", "linear", "jhu-clsp/mmBERT-large", "jhu-clsp/mmBERT-small"]
        + ["-o", str(tmp_path / "merged")],
    ):
        missing = runner.invoke(app, args)
        assert missing.exit_code == 1
        line = missing.output.strip().splitlines()[-1]  # after eval's line naming the data
        assert (
            "jhu-clsp/mmBERT-large (not in the local Hugging Face cache) needs the Hugging Face hub" in line
        )
        assert "http://127.0.0.1:9 cannot be reached" in line
    assert not (tmp_path / "merged").exists()


def test_init_and_eval_fetch_mmbert_base_by_its_hub_name_once_from_the_hub(
    released, sample_manifests, sample_builds, tmp_path
):
    """The released model as a repo of the emulated hub (`tests.hub`): `--init` and `eval` name it,
    huggingface_hub's client fetches it into an empty HF_HOME once, and both run from it."""
    from tests.hub import Hub

    repo = tmp_path / "hub" / "models" / HUB_NAME
    repo.mkdir(parents=True)
    for file in ("config.json", "model.safetensors"):
        (repo / file).write_bytes((released / file).read_bytes())
    train_script = str(Path(sys.executable).with_name("mmbert-train"))
    with Hub(tmp_path / "hub") as hub:
        env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_HUB_CACHE")}
        env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"))
        env["MMBERT_DATA_CACHE"] = str(
            sample_manifests["pretrain"].parents[1] / "cache"
        )  # the sample tokenizer
        args = ["--manifest", str(sample_manifests["decay"]), "-o", str(tmp_path / "run"), "--init", HUB_NAME]
        args += ["--tokens", "16384", "--batch-size", "1", "--micro-batch-tokens", "8192"]  # two steps
        trained = subprocess.run([train_script, *args], env=env, capture_output=True, text=True, timeout=600)
        assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
        assert f"model from --init {HUB_NAME} (" in trained.stdout + trained.stderr
        data = str(sample_builds["decay"][0])
        evaluated = subprocess.run(
            [train_script, "eval", HUB_NAME, "--data", data, "--max-tokens-per-language", "1k"],
            env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert evaluated.returncode == 0, evaluated.stdout[-3000:] + evaluated.stderr[-3000:]
        assert "mmBERT-base" in evaluated.stdout
        fetches = [r for r in hub.requests if r.startswith(f"GET /{HUB_NAME}/resolve/")]
        weights = [r for r in fetches if r.endswith("/model.safetensors")]
    assert len(weights) == 1, f"fetched once, then read from HF_HOME's cache: {fetches}"
    bias = load_file(str(checkpoint_dirs(tmp_path / "run")[-1] / "model.safetensors"))["decoder.bias"]
    assert (bias - torch.linspace(-1, 1, VOCAB)).abs().max() < 0.05  # trained on from the hub's weights
