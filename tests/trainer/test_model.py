"""The ModernBERT encoder: shapes against transformers, packing, sparse prediction, init, save/load."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import ModernBertConfig, ModernBertForMaskedLM

from trainer.model import ModelConfig, ModelFormatError, ModernBertMLM


def transformers_twin(config: ModelConfig) -> ModernBertForMaskedLM:
    """transformers' ModernBertForMaskedLM of the same shape, on the meta device (no memory)."""
    hf_config = ModernBertConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        local_attention=config.local_attention,
        global_attn_every_n_layers=config.global_every,
        pad_token_id=config.pad_token_id,
        eos_token_id=config.eos_token_id,
        bos_token_id=config.bos_token_id,
        cls_token_id=config.bos_token_id,
        sep_token_id=config.eos_token_id,
    )
    with torch.device("meta"):
        return ModernBertForMaskedLM(hf_config)


def pack(*documents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    lengths = [len(d) for d in documents]
    return torch.cat(documents), torch.tensor([0, *lengths]).cumsum(0).to(torch.int32), max(lengths)


def random_documents(lengths, vocab_size, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(5, vocab_size, (n,), generator=generator) for n in lengths]


@pytest.mark.parametrize(("preset", "millions"), [("small", 140.90), ("base", 307.79)])
def test_parameter_counts_equal_transformers(preset, millions):
    config = ModelConfig.preset(preset)
    with torch.device("meta"):
        ours = ModernBertMLM(config).num_parameters()
    theirs = transformers_twin(config).num_parameters()
    assert ours == theirs
    assert round(ours / 1e6, 2) == millions


def test_presets_follow_the_recipe():
    small, base = ModelConfig.preset("small"), ModelConfig.preset("base")
    for config, hidden, heads in ((small, 384, 6), (base, 768, 12)):
        assert (config.num_layers, config.hidden_size, config.intermediate_size) == (22, hidden, 1152)
        assert (config.num_heads, config.head_dim, config.vocab_size) == (heads, 64, 256_000)
        assert config.local_attention == 128 and config.window == 64
        assert [i for i in range(22) if config.is_global(i)] == [0, 3, 6, 9, 12, 15, 18, 21]
    with pytest.raises(ValueError, match="unknown model preset"):
        ModelConfig.preset("large")


def test_state_dict_keys_and_shapes_equal_transformers():
    config = ModelConfig.preset("tiny")
    ours = ModernBertMLM(config).state_dict()
    theirs = transformers_twin(config).state_dict()
    assert {key: tuple(value.shape) for key, value in ours.items()} == {
        key: tuple(value.shape) for key, value in theirs.items()
    }
    assert "model.layers.0.attn_norm.weight" not in ours and "model.layers.1.attn_norm.weight" in ours


def test_initialization():
    torch.manual_seed(0)
    config = ModelConfig.preset("tiny", hidden_size=128, intermediate_size=256, num_heads=2)
    model = ModernBertMLM(config)
    out_std = 0.02 / math.sqrt(2 * config.num_layers)
    for weight, std in (
        (model.model.embeddings.tok_embeddings.weight, 0.02),
        (model.model.layers[1].attn.Wqkv.weight, 0.02),
        (model.model.layers[1].mlp.Wi.weight, 0.02),
        (model.model.layers[1].attn.Wo.weight, out_std),
        (model.model.layers[1].mlp.Wo.weight, out_std),
    ):
        assert weight.abs().max() <= 2 * std + 1e-7  # truncated at +-2 sigma
        assert weight.std().item() == pytest.approx(std * 0.88, rel=0.1)  # std of a 2-sigma truncated normal
    assert torch.equal(model.decoder.bias, torch.zeros(config.vocab_size))
    assert torch.equal(model.head.norm.weight, torch.ones(config.hidden_size))
    assert model.decoder.weight is model.model.embeddings.tok_embeddings.weight


def test_packed_batch_equals_documents_run_alone():
    """Attention never crosses a document and RoPE restarts in each one."""
    model = ModernBertMLM(ModelConfig.preset("tiny")).eval()
    documents = random_documents([3, 140, 1, 129, 300], model.config.vocab_size)
    with torch.no_grad():
        together = model.encode(*pack(*documents))
        alone = torch.cat([model.encode(*pack(document)) for document in documents])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


def test_sparse_prediction_runs_the_decoder_only_at_labels():
    torch.manual_seed(0)
    model = ModernBertMLM(ModelConfig.preset("tiny")).eval()
    input_ids, cu_seqlens, max_seqlen = pack(*random_documents([40, 90], model.config.vocab_size))
    labelled = torch.rand(input_ids.shape) < 0.3
    labels = torch.where(labelled, input_ids, torch.full_like(input_ids, -100))
    decoder_rows = []
    model.decoder.register_forward_hook(lambda module, args, out: decoder_rows.append(args[0].shape[0]))

    sparse = model(input_ids, cu_seqlens, max_seqlen, labels)
    assert decoder_rows == [int(labelled.sum())]
    assert sparse.logits.shape == (int(labelled.sum()), model.config.vocab_size)
    dense = model(input_ids, cu_seqlens, max_seqlen).logits
    torch.testing.assert_close(sparse.logits, dense[labelled], atol=1e-5, rtol=0)
    torch.testing.assert_close(sparse.loss, F.cross_entropy(dense[labelled], input_ids[labelled]))
    sparse.loss.backward()
    assert model.model.layers[0].attn.Wqkv.weight.grad.abs().sum() > 0


def test_no_labelled_token_gives_zero_loss_and_zero_gradients():
    model = ModernBertMLM(ModelConfig.preset("tiny"))
    input_ids, cu_seqlens, max_seqlen = pack(*random_documents([20], model.config.vocab_size))
    output = model(input_ids, cu_seqlens, max_seqlen, torch.full_like(input_ids, -100))
    output.loss.backward()
    assert output.loss.item() == 0.0 and output.logits.shape == (0, model.config.vocab_size)
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_rope_theta_per_layer_type_is_used():
    model = ModernBertMLM(ModelConfig.preset("tiny")).eval()
    batch = pack(*random_documents([200], model.config.vocab_size))
    with torch.no_grad():
        for layer in model.model.layers:  # sharpen attention so positions matter at init scale
            layer.attn.Wqkv.weight.mul_(30.0)
        before = model.encode(*batch)
        for field in ("rope_theta_global", "rope_theta_local"):
            changed = ModernBertMLM(ModelConfig.preset("tiny", **{field: 160_000.0})).eval()
            changed.load_state_dict(model.state_dict())
            assert not torch.allclose(changed.encode(*batch), before, atol=1e-4)


def test_a_few_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = ModernBertMLM(ModelConfig.preset("tiny"))
    input_ids, cu_seqlens, max_seqlen = pack(*random_documents([30, 70, 150], model.config.vocab_size))
    labels = torch.where(torch.rand(input_ids.shape) < 0.3, input_ids, torch.full_like(input_ids, -100))
    masked = torch.where(labels != -100, torch.full_like(input_ids, model.config.mask_token_id), input_ids)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model(masked, cu_seqlens, max_seqlen, labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_attention_dropout_is_active_only_in_training():
    model = ModernBertMLM(ModelConfig.preset("tiny", attention_dropout=0.5))
    batch = pack(*random_documents([30], model.config.vocab_size))
    assert not torch.equal(model.encode(*batch), model.encode(*batch))
    model.eval()
    assert torch.equal(model.encode(*batch), model.encode(*batch))


def test_save_and_load_round_trip(tmp_path):
    config = ModelConfig.preset("tiny", rope_theta_global=160_000.0)
    model = ModernBertMLM(config)
    model.save(tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json", "model.safetensors"]
    assert "decoder.weight" not in load_file(tmp_path / "model" / "model.safetensors")
    loaded = ModernBertMLM.load(tmp_path / "model")
    assert loaded.config == config
    assert loaded.decoder.weight is loaded.model.embeddings.tok_embeddings.weight
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_load_names_the_bad_file_and_field(tmp_path):
    ModernBertMLM(ModelConfig.preset("tiny")).save(tmp_path / "model")
    config_path = tmp_path / "model" / "config.json"
    raw = json.loads(config_path.read_text())

    config_path.write_text(json.dumps({**raw, "num_experts": 8}))
    with pytest.raises(ModelFormatError, match=r"config\.json: unknown fields \['num_experts'\]"):
        ModernBertMLM.load(tmp_path / "model")
    config_path.write_text(json.dumps({**raw, "num_layers": "four"}))
    with pytest.raises(ModelFormatError, match="config.json: field 'num_layers' must be int"):
        ModernBertMLM.load(tmp_path / "model")
    config_path.write_text(json.dumps({**raw, "hidden_size": 128}))
    with pytest.raises(ModelFormatError, match=r"model\.safetensors: .* has shape"):
        ModernBertMLM.load(tmp_path / "model")
    (tmp_path / "model" / "model.safetensors").unlink()
    with pytest.raises(ModelFormatError, match=r"model\.safetensors: cannot read weights"):
        ModernBertMLM.load(tmp_path / "model")


def test_malformed_packed_batches_are_rejected():
    model = ModernBertMLM(ModelConfig.preset("tiny"))
    input_ids = torch.arange(5, 15)
    with pytest.raises(ValueError, match="cu_seqlens must rise from 0 to 10"):
        model(input_ids, torch.tensor([0, 4, 8], dtype=torch.int32), 8)
    with pytest.raises(ValueError, match="max_seqlen 4 is below the longest document"):
        model(input_ids, torch.tensor([0, 4, 10], dtype=torch.int32), 4)
    with pytest.raises(ValueError, match="labels shape"):
        model(input_ids, torch.tensor([0, 10], dtype=torch.int32), 10, torch.zeros(3, dtype=torch.long))


def test_attention_masks_are_built_once_per_batch(monkeypatch):
    import trainer.model as model_module

    calls = []
    original = model_module.prepare

    def counting(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(model_module, "prepare", counting)
    model = ModernBertMLM(ModelConfig.preset("tiny"))  # 4 layers: 2 global, 2 with a window
    input_ids, cu_seqlens, max_seqlen = pack(*random_documents([40, 300, 7], 1024))
    model(input_ids, cu_seqlens, max_seqlen)
    assert len(calls) == 1
    assert sorted(calls[0][2], key=str) == [64, 64, None, None]  # the windows of every layer, given once
