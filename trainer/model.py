"""The ModernBERT encoder with its masked-language-model head, for packed (unpadded) batches.

The architecture is transformers' ``ModernBertForMaskedLM`` and the module names map one to one
onto its state-dict keys, so a checkpoint is a transformers checkpoint up to ``config.json``
(see ``trainer/hf.py``). What differs is the batch layout: documents are concatenated into one
``[T]`` token tensor with ``cu_seqlens`` marking their starts, as flash-attn's varlen kernels
expect, so no compute is spent on padding, and the 256k-vocabulary decoder runs only where a
label exists ("sparse prediction").

A model directory holds ``config.json`` (``ModelConfig`` as JSON) and ``model.safetensors``
(keys as in transformers, the tied ``decoder.weight`` omitted).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from mixtures.files import atomic_output, write_atomic, writing
from trainer.attention import PackedAttention, attend, document_ids, prepare

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TIED_KEY = "decoder.weight"
IGNORE_INDEX = -100


class ModelFormatError(ValueError):
    """A model directory or config that cannot be used; the message names the file and field."""


@dataclass(frozen=True)
class ModelConfig:
    """Shape and hyper-parameters of a ModernBERT encoder (token ids are Gemma 2's)."""

    vocab_size: int = 256_000
    hidden_size: int = 768
    intermediate_size: int = 1152
    num_layers: int = 22
    num_heads: int = 12
    local_attention: int = 128  # total sliding window: each token sees +-local_attention // 2
    global_every: int = 3  # layers 0, n, 2n, ... attend globally
    rope_theta_global: float = 10_000.0
    rope_theta_local: float = 10_000.0
    max_position_embeddings: int = 8192
    norm_eps: float = 1e-5
    init_std: float = 0.02
    init_cutoff: float = 2.0  # truncate the normal init at +-cutoff * std
    attention_dropout: float = 0.1  # on the attention output, in training only
    pad_token_id: int = 0
    eos_token_id: int = 1
    bos_token_id: int = 2
    unk_token_id: int = 3
    mask_token_id: int = 4

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ModelFormatError(
                f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}"
            )
        if (self.hidden_size // self.num_heads) % 2:
            raise ModelFormatError("the head dimension must be even for rotary embeddings")
        if self.local_attention < 2 or self.local_attention % 2:
            raise ModelFormatError(f"local_attention must be an even number >= 2, got {self.local_attention}")
        for name in ("vocab_size", "num_layers", "intermediate_size", "global_every"):
            if getattr(self, name) < 1:
                raise ModelFormatError(f"{name} must be >= 1, got {getattr(self, name)}")
        special = [
            self.pad_token_id,
            self.eos_token_id,
            self.bos_token_id,
            self.unk_token_id,
            self.mask_token_id,
        ]
        if max(special) >= self.vocab_size:
            raise ModelFormatError(f"special token ids {special} do not fit vocab_size {self.vocab_size}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def window(self) -> int:
        """Half window: local layers see tokens at distance <= window (inclusive)."""
        return self.local_attention // 2

    def is_global(self, layer: int) -> bool:
        return layer % self.global_every == 0

    @classmethod
    def preset(cls, name: str, **overrides) -> ModelConfig:
        """``tiny`` (tests, demo), ``small`` (140.9M parameters) or ``base`` (307.8M)."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r} (choose {', '.join(PRESETS)})")
        return replace(PRESETS[name], **overrides)

    @classmethod
    def from_dict(cls, raw: dict, where: str = "config") -> ModelConfig:
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ModelFormatError(f"{where}: unknown fields {unknown}")
        values = {}
        for name, value in raw.items():
            kind = float if known[name] == "float" else int
            if isinstance(value, bool) or not isinstance(value, (int, float)) or kind(value) != value:
                raise ModelFormatError(f"{where}: field {name!r} must be {known[name]}, got {value!r}")
            values[name] = kind(value)
        try:
            return cls(**values)
        except ModelFormatError as err:
            raise ModelFormatError(f"{where}: {err}") from err


PRESETS = {
    "tiny": ModelConfig(
        vocab_size=1024,
        hidden_size=64,
        intermediate_size=96,
        num_layers=4,
        num_heads=4,
        attention_dropout=0.0,
    ),
    "small": ModelConfig(hidden_size=384, num_heads=6),
    "base": ModelConfig(hidden_size=768, num_heads=12),
}


def rotary_cos_sin(positions: torch.Tensor, theta: float, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE tables for the given per-token positions, ``[T, head_dim]`` each, in fp32."""
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, dtype=torch.float, device=positions.device) / head_dim)
    )
    freqs = positions[:, None].float() * inv_freq
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``[T, heads, head_dim]`` (half-split layout, as transformers ModernBERT)."""
    x32 = x.float()
    first, second = x32.chunk(2, dim=-1)
    rotated = torch.cat((-second, first), dim=-1)
    return (x32 * cos[:, None] + rotated * sin[:, None]).to(x.dtype)


def layer_norm(config: ModelConfig) -> nn.LayerNorm:
    return nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=False)


class Embeddings(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.tok_embeddings = nn.Embedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.norm = layer_norm(config)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.norm(self.tok_embeddings(input_ids))


class Attention(nn.Module):
    """Fused QKV projection, RoPE, varlen attention (global or windowed), output projection."""

    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.window = None if config.is_global(layer) else config.window
        self.Wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.Wo = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.out_drop = nn.Dropout(config.attention_dropout)

    def forward(self, x: torch.Tensor, rope, attention: PackedAttention) -> torch.Tensor:
        q, k, v = self.Wqkv(x).view(-1, 3, self.num_heads, self.head_dim).unbind(dim=1)
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        out = attend(q, k, v, attention, self.window)
        return self.out_drop(self.Wo(out.reshape(x.shape)))


class MLP(nn.Module):
    """GeGLU: ``Wo(gelu(input) * gate)`` with ``Wi`` producing input and gate."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.Wi = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.Wo = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs, gate = self.Wi(x).chunk(2, dim=-1)
        return self.Wo(F.gelu(inputs) * gate)


class EncoderLayer(nn.Module):
    """Pre-norm block; layer 0 skips the attention norm since the embeddings are already normed."""

    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.is_global = config.is_global(layer)
        self.attn_norm = nn.Identity() if layer == 0 else layer_norm(config)
        self.attn = Attention(config, layer)
        self.mlp_norm = layer_norm(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, rope, attention: PackedAttention) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), rope, attention)
        return x + self.mlp(self.mlp_norm(x))


class Encoder(nn.Module):
    """Embeddings, the layer stack and the final norm (transformers' ``ModernBertModel``)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(EncoderLayer(config, i) for i in range(config.num_layers))
        self.final_norm = layer_norm(config)

    def forward(self, input_ids, cu_seqlens, max_seqlen, attn_backend: str = "auto") -> torch.Tensor:
        # The batch's layout, the same for every layer: attention masks once, RoPE restarting per document.
        device = input_ids.device
        dtype = (
            torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else torch.float32
        )
        windows = [layer.attn.window for layer in self.layers]
        attention = prepare(cu_seqlens, max_seqlen, windows, attn_backend, device, dtype)
        docs = document_ids(cu_seqlens, input_ids.shape[0])
        positions = (
            torch.arange(input_ids.shape[0], device=input_ids.device) - cu_seqlens.to(torch.long)[docs]
        )
        ropes = {
            True: rotary_cos_sin(positions, self.config.rope_theta_global, self.config.head_dim),
            False: rotary_cos_sin(positions, self.config.rope_theta_local, self.config.head_dim),
        }
        x = self.embeddings(input_ids)
        for layer in self.layers:
            x = layer(x, ropes[layer.is_global], attention)
        return self.final_norm(x)


class PredictionHead(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.norm = layer_norm(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(F.gelu(self.dense(x)))


@dataclass
class MaskedLMOutput:
    loss: torch.Tensor | None
    logits: torch.Tensor  # [n_labelled, vocab] with labels, else [T, vocab]


class ModernBertMLM(nn.Module):
    """ModernBERT with the MLM head; the decoder weight is tied to the token embeddings."""

    def __init__(self, config: ModelConfig, attn_backend: str = "auto"):
        super().__init__()
        self.config = config
        self.attn_backend = attn_backend  # see trainer/attention.py; not part of the weights
        self.model = Encoder(config)
        self.head = PredictionHead(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=True)
        self.decoder.weight = self.model.embeddings.tok_embeddings.weight
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Truncated normal init: std ``init_std``, residual output projections ``init_std / sqrt(2 L)``."""
        std = self.config.init_std
        out_std = std / math.sqrt(2.0 * self.config.num_layers)
        cutoff = self.config.init_cutoff

        def normal(weight: torch.Tensor, sigma: float) -> None:
            nn.init.trunc_normal_(weight, mean=0.0, std=sigma, a=-cutoff * sigma, b=cutoff * sigma)

        normal(self.model.embeddings.tok_embeddings.weight, std)
        for layer in self.model.layers:
            normal(layer.attn.Wqkv.weight, std)
            normal(layer.attn.Wo.weight, out_std)
            normal(layer.mlp.Wi.weight, std)
            normal(layer.mlp.Wo.weight, out_std)
        normal(self.head.dense.weight, std)
        nn.init.zeros_(self.decoder.bias)
        for module in self.modules():
            if isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)

    def forward(
        self,
        input_ids: torch.Tensor,
        cu_seqlens: torch.Tensor,
        max_seqlen: int,
        labels: torch.Tensor | None = None,
    ) -> MaskedLMOutput:
        """Packed forward pass.

        With ``labels`` (``[T]``, ``-100`` where no prediction is wanted) the head and decoder run
        only at labelled positions and ``loss`` is the mean cross-entropy over them (zero, with
        zero gradients, if there are none). Without labels, logits cover every token.
        """
        check_packed_batch(input_ids, cu_seqlens, max_seqlen, labels)
        hidden = self.model(input_ids, cu_seqlens, max_seqlen, self.attn_backend)
        if labels is None:
            return MaskedLMOutput(loss=None, logits=self.decoder(self.head(hidden)))
        selected = (labels != IGNORE_INDEX).nonzero().squeeze(1)
        logits = self.decoder(self.head(hidden.index_select(0, selected)))
        targets = labels.index_select(0, selected)
        loss = F.cross_entropy(logits.float(), targets) if selected.numel() else logits.sum() * 0.0
        return MaskedLMOutput(loss=loss, logits=logits)

    def encode(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> torch.Tensor:
        """Final hidden states ``[T, hidden]`` of every token (after the final norm)."""
        check_packed_batch(input_ids, cu_seqlens, max_seqlen, None)
        return self.model(input_ids, cu_seqlens, max_seqlen, self.attn_backend)

    def num_parameters(self) -> int:
        """Distinct parameters (the tied decoder weight counted once), as transformers counts."""
        return sum(p.numel() for p in self.parameters())

    def save(self, directory: str | Path, weights: dict[str, torch.Tensor] | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors``, each through a temporary name.

        ``weights``, if given, are written instead of ``state_dict()``: a checkpoint
        gathers a sharded model's weights whole first (``trainer/parallel.py``).
        """
        directory = Path(directory)
        with writing(directory):
            directory.mkdir(parents=True, exist_ok=True)
        save_weights(self, directory / WEIGHTS_NAME, weights)
        write_json_atomic(directory / CONFIG_NAME, asdict(self.config))
        return directory

    @classmethod
    def load(
        cls, directory: str | Path, attn_backend: str = "auto", device: str | torch.device = "cpu"
    ) -> ModernBertMLM:
        """Rebuild a model saved by ``save`` (never unpickles anything)."""
        directory = Path(directory)
        config_path = directory / CONFIG_NAME
        config = ModelConfig.from_dict(read_json_object(config_path), where=str(config_path))
        model = cls(config, attn_backend=attn_backend)
        model.load_weights(read_safetensors(directory / WEIGHTS_NAME), where=str(directory / WEIGHTS_NAME))
        return model.to(device)

    def load_weights(self, state: dict[str, torch.Tensor], where: str) -> None:
        """Load transformers-named weights; all keys and shapes must match exactly."""
        state = dict(state)
        if TIED_KEY in state:
            tied = state.pop(TIED_KEY)
            embeddings = state.get("model.embeddings.tok_embeddings.weight")
            if embeddings is None or not torch.equal(tied, embeddings):
                raise ModelFormatError(
                    f"{where}: {TIED_KEY} differs from the token embeddings (must be tied)"
                )
        expected = {key: value for key, value in self.state_dict().items() if key != TIED_KEY}
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ModelFormatError(
                f"{where}: missing weights {missing[:5]}, unexpected weights {unexpected[:5]}"
            )
        for key, value in state.items():
            needed = tuple(expected[key].shape)
            if tuple(value.shape) != needed:
                raise ModelFormatError(f"{where}: {key} has shape {tuple(value.shape)}, expected {needed}")
        self.load_state_dict(state, strict=False)


def save_weights(model: ModernBertMLM, path: Path, weights: dict[str, torch.Tensor] | None = None) -> None:
    """Safetensors with transformers' key names; the tied decoder weight is left out as transformers does.

    ``weights``: what to write in place of ``model.state_dict()`` (see :meth:`ModernBertMLM.save`).
    """
    weights = model.state_dict() if weights is None else weights
    state = {key: value.detach().contiguous() for key, value in weights.items() if key != TIED_KEY}
    with atomic_output(path) as temporary:
        save_file(state, str(temporary), metadata={"format": "pt"})


def write_json_atomic(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=2) + "\n")


def read_json_object(path: Path) -> dict:
    try:
        raw = json.loads(path.read_text())
    except OSError as err:
        raise ModelFormatError(f"{path}: cannot read: {err}") from err
    except json.JSONDecodeError as err:
        raise ModelFormatError(f"{path}: invalid JSON: {err}") from err
    if not isinstance(raw, dict):
        raise ModelFormatError(f"{path}: expected a JSON object")
    return raw


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as err:
        raise ModelFormatError(f"{path}: cannot read weights: {err}") from err


def check_packed_batch(
    input_ids: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, labels: torch.Tensor | None
) -> None:
    """Reject malformed packed batches up front instead of attending across documents."""
    if input_ids.dim() != 1 or input_ids.numel() == 0:
        raise ValueError(
            f"input_ids must be a non-empty 1-D packed tensor, got shape {tuple(input_ids.shape)}"
        )
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise ValueError("cu_seqlens must be a 1-D int32/int64 tensor [0, end_1, ..., T]")
    lengths = cu_seqlens.diff()
    if cu_seqlens[0] != 0 or cu_seqlens[-1] != input_ids.numel() or bool((lengths < 0).any()):
        raise ValueError(
            f"cu_seqlens must rise from 0 to {input_ids.numel()}, got {cu_seqlens.tolist()[:8]}..."
        )
    if int(lengths.max()) > max_seqlen:
        raise ValueError(f"max_seqlen {max_seqlen} is below the longest document ({int(lengths.max())})")
    if labels is not None and labels.shape != input_ids.shape:
        raise ValueError(
            f"labels shape {tuple(labels.shape)} differs from input_ids {tuple(input_ids.shape)}"
        )
