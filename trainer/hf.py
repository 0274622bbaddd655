"""Export to, and import from, transformers ModernBERT checkpoint directories.

Our weights already carry transformers' key names, so both directions only translate
``config.json`` and move tensors unchanged. The exported config states RoPE both ways:
``global_rope_theta`` / ``local_rope_theta`` (read by transformers 4.x) and
``rope_parameters`` (5.x), so the directory loads with either major version. Import
accepts both spellings too, which is what released checkpoints (e.g. mmBERT's) use.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import torch

from mixtures.files import make_parent, writing
from mixtures.hub import hub_unavailable, unreachable_reason
from trainer.model import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    ModelConfig,
    ModelFormatError,
    ModernBertMLM,
    read_json_object,
    read_safetensors,
    save_weights,
    write_json_atomic,
)

SHARD_INDEX_NAME = "model.safetensors.index.json"
PICKLE_WEIGHTS_NAME = "pytorch_model.bin"
# transformers' ModernBertConfig defaults, which apply to configs that leave these out.
HF_DEFAULTS = {
    "global_rope_theta": 160_000.0,
    "local_rope_theta": 10_000.0,
    "global_attn_every_n_layers": 3,
    "local_attention": 128,
    "max_position_embeddings": 8192,
    "norm_eps": 1e-5,
    "initializer_range": 0.02,
    "initializer_cutoff_factor": 2.0,
    "attention_dropout": 0.0,
}
# Settings our architecture fixes; a checkpoint that differs cannot be imported.
HF_FIXED = {
    "hidden_activation": "gelu",
    "norm_bias": False,
    "mlp_bias": False,
    "attention_bias": False,
    "decoder_bias": True,
    "tie_word_embeddings": True,
    "classifier_activation": "gelu",
    "classifier_bias": False,
}


def layer_types(config: ModelConfig) -> list[str]:
    return [
        "full_attention" if config.is_global(i) else "sliding_attention" for i in range(config.num_layers)
    ]


def hf_config(config: ModelConfig) -> dict:
    """transformers ``config.json`` for ``ModernBertForMaskedLM`` with this shape."""
    rope = {
        "full_attention": {"rope_type": "default", "rope_theta": config.rope_theta_global},
        "sliding_attention": {"rope_type": "default", "rope_theta": config.rope_theta_local},
    }
    return {
        "architectures": ["ModernBertForMaskedLM"],
        "model_type": "modernbert",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "max_position_embeddings": config.max_position_embeddings,
        "norm_eps": config.norm_eps,
        "initializer_range": config.init_std,
        "initializer_cutoff_factor": config.init_cutoff,
        "attention_dropout": config.attention_dropout,
        "embedding_dropout": 0.0,
        "mlp_dropout": 0.0,
        **HF_FIXED,
        "global_attn_every_n_layers": config.global_every,
        "layer_types": layer_types(config),
        "local_attention": config.local_attention,
        "global_rope_theta": config.rope_theta_global,
        "local_rope_theta": config.rope_theta_local,
        "rope_parameters": rope,
        "pad_token_id": config.pad_token_id,
        "eos_token_id": config.eos_token_id,
        "bos_token_id": config.bos_token_id,
        "cls_token_id": config.bos_token_id,
        "sep_token_id": config.eos_token_id,
        "unk_token_id": config.unk_token_id,
        "mask_token_id": config.mask_token_id,
        "dtype": "float32",
    }


def config_from_hf(raw: dict, where: str) -> ModelConfig:
    """Our config from a transformers ModernBERT ``config.json`` (4.x or 5.x spelling)."""
    if raw.get("model_type") != "modernbert":
        raise ModelFormatError(f"{where}: model_type is {raw.get('model_type')!r}, expected 'modernbert'")
    for key, value in HF_FIXED.items():
        if raw.get(key, value) != value:
            raise ModelFormatError(f"{where}: {key} is {raw[key]!r}; only {value!r} is supported")
    values = {**HF_DEFAULTS, **{key: raw[key] for key in HF_DEFAULTS if raw.get(key) is not None}}
    if raw.get("local_rope_theta", 0) is None:  # transformers 4.x: None means "same as global"
        values["local_rope_theta"] = values["global_rope_theta"]
    rope = raw.get("rope_parameters")
    if rope is not None:
        for kind, key in (("full_attention", "global_rope_theta"), ("sliding_attention", "local_rope_theta")):
            params = rope.get(kind) or {}
            if params.get("rope_type", "default") != "default":
                raise ModelFormatError(f"{where}: rope_parameters.{kind}.rope_type must be 'default'")
            values[key] = params.get("rope_theta", values[key])
    every = values["global_attn_every_n_layers"]
    fields = {
        "vocab_size": raw.get("vocab_size"),
        "hidden_size": raw.get("hidden_size"),
        "intermediate_size": raw.get("intermediate_size"),
        "num_layers": raw.get("num_hidden_layers"),
        "num_heads": raw.get("num_attention_heads"),
        "local_attention": values["local_attention"],
        "global_every": every,
        "rope_theta_global": float(values["global_rope_theta"]),
        "rope_theta_local": float(values["local_rope_theta"]),
        "max_position_embeddings": values["max_position_embeddings"],
        "norm_eps": float(values["norm_eps"]),
        "init_std": float(values["initializer_range"]),
        "init_cutoff": float(values["initializer_cutoff_factor"]),
        "attention_dropout": float(values["attention_dropout"]),
    }
    missing = [name for name, value in fields.items() if value is None]
    if missing:
        raise ModelFormatError(f"{where}: missing fields for {missing}")
    for name in ("pad_token_id", "eos_token_id", "bos_token_id", "unk_token_id", "mask_token_id"):
        if isinstance(raw.get(name), int):
            fields[name] = raw[name]
    config = ModelConfig.from_dict(fields, where=where)
    if raw.get("layer_types") not in (None, layer_types(config)):
        raise ModelFormatError(
            f"{where}: layer_types must be global every {every} layers from layer 0, got {raw['layer_types']}"
        )
    return config


def read_config(directory: Path) -> tuple[ModelConfig, bool]:
    """The shape of the model in ``directory`` from its ``config.json``, in our spelling or transformers'
    (a ModernBERT checkpoint: then the flag is True)."""
    path = directory / CONFIG_NAME
    raw = read_json_object(path)
    if raw.get("model_type") == "modernbert":
        return config_from_hf(raw, str(path)), True
    return ModelConfig.from_dict(raw, where=str(path)), False


def weight_files(directory: Path) -> list[Path]:
    """The files holding a checkpoint's weights: ``model.safetensors``, else the shards its index
    names, else ``pytorch_model.bin``; a ModelFormatError when it has none."""
    single, index, pickled = (
        directory / WEIGHTS_NAME,
        directory / SHARD_INDEX_NAME,
        directory / PICKLE_WEIGHTS_NAME,
    )
    if single.exists():
        return [single]
    if index.exists():
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ModelFormatError(f"{index}: missing the 'weight_map' object")
        return [directory / shard for shard in sorted(set(weight_map.values()))]
    if pickled.exists():
        return [pickled]
    raise ModelFormatError(f"{directory}: no {WEIGHTS_NAME}, {SHARD_INDEX_NAME} or {PICKLE_WEIGHTS_NAME}")


def read_hf_weights(directory: Path) -> tuple[dict[str, torch.Tensor], str]:
    """All tensors of a checkpoint: single or sharded safetensors, else ``torch.load(weights_only=True)``."""
    files = weight_files(directory)
    if files[0].name == PICKLE_WEIGHTS_NAME:
        try:
            return torch.load(files[0], map_location="cpu", weights_only=True), str(files[0])
        except Exception as err:  # torch raises many types for a file it refuses to read safely
            raise ModelFormatError(f"{files[0]}: cannot read weights safely: {err}") from err
    state: dict[str, torch.Tensor] = {}
    for shard in files:
        state.update(read_safetensors(shard))
    return state, str(files[0] if files[0].name == WEIGHTS_NAME else directory / SHARD_INDEX_NAME)


# A model repository's files that a model needs: its config and its safetensors (single or sharded);
# never a pickled pytorch_model.bin from the hub.
HUB_MODEL_FILES = [CONFIG_NAME, WEIGHTS_NAME, SHARD_INDEX_NAME, "model-*-of-*.safetensors"]
HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def is_hub_name(name: str) -> bool:
    """Whether ``name`` reads as a hub repository (``org/name``, e.g. ``jhu-clsp/mmBERT-base``)."""
    return HUB_NAME.fullmatch(name) is not None and not name.endswith((".json", ".safetensors"))


def hub_model_dir(name: str) -> Path:
    """The local snapshot of the transformers model repository ``name`` on the hub (``HUB_MODEL_FILES``).

    The hub is asked once first; unreachable (or ``HF_HUB_OFFLINE``), the Hugging Face cache alone is
    read, where a snapshot made before (``huggingface-cli download NAME``) serves. Errors:
    HubUnavailable when the hub cannot be reached and the cache lacks it; ModelFormatError for a
    repository or revision the hub does not hold.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    offline = unreachable_reason()
    try:
        snapshot = snapshot_download(name, allow_patterns=HUB_MODEL_FILES, local_files_only=bool(offline))
    except LocalEntryNotFoundError:
        raise hub_unavailable(
            f"{name} (not in the local Hugging Face cache)",
            offline or "the hub did not answer",
            "pass a local directory holding its config.json and model.safetensors",
        ) from None
    except HfHubHTTPError as err:  # no such repository or revision, gated, or refused
        raise ModelFormatError(f"{name}: the hub refused it ({str(err).splitlines()[0]})") from err
    if not (Path(snapshot) / CONFIG_NAME).is_file():
        raise ModelFormatError(f"{name}: the hub's repository has no {CONFIG_NAME}")
    return Path(snapshot)


def import_hf(hf_dir: str | Path, out_dir: str | Path | None = None) -> ModernBertMLM:
    """Read a transformers ``ModernBertForMaskedLM`` directory as our model (and save it to ``out_dir``)."""
    hf_dir = Path(hf_dir)
    config_path = hf_dir / CONFIG_NAME
    config = config_from_hf(read_json_object(config_path), where=str(config_path))
    state, where = read_hf_weights(hf_dir)
    model = ModernBertMLM(config)
    model.load_weights({key: value.float() for key, value in state.items()}, where=where)
    if out_dir is not None:
        model.save(out_dir)
    return model


def export_hf(model_dir: str | Path, out_dir: str | Path, tokenizer: str | None = None) -> Path:
    """Write a directory ``transformers.AutoModelForMaskedLM.from_pretrained`` loads.

    ``tokenizer`` is a ``tokenizer.json`` file, a tokenizer directory or a hub name; its
    special tokens must have the ids the model was trained with.
    """
    model = ModernBertMLM.load(model_dir)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ModelFormatError(f"--output {out_dir} exists and is not a directory")
    make_parent(out_dir)
    # Everything is written next to out_dir first and moved in once complete: a failure leaves nothing.
    with writing(out_dir):
        staging = tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}-")
    with staging as name:
        staged = Path(name)
        if tokenizer is not None:
            export_tokenizer(tokenizer, staged, model.config)
        save_weights(model, staged / WEIGHTS_NAME)
        write_json_atomic(staged / CONFIG_NAME, hf_config(model.config))
        with writing(out_dir):
            out_dir.mkdir(exist_ok=True)
            for path in staged.iterdir():
                os.replace(path, out_dir / path.name)
    return out_dir


def export_tokenizer(source: str, out_dir: Path, config: ModelConfig) -> None:
    """Save the tokenizer files into ``out_dir`` (a staging directory), checking its ids against the model."""
    from transformers import AutoTokenizer

    if Path(source).is_file():
        tokenizer = tokenizer_from_file(source, config)
    elif not Path(source).is_dir() and (source.endswith(".json") or source.startswith((".", "/", "~"))):
        raise ModelFormatError(f"tokenizer {source}: no such file or directory")  # a path, not a hub name
    else:
        # A directory, or a hub name: the hub is asked once, and unreachable, only the local cache is
        # read, since transformers would retry each file for ~50 s ("Retrying in Ns") before failing.
        reason = None if Path(source).is_dir() else unreachable_reason()
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=reason is not None)
        except (OSError, ValueError) as err:
            if reason is not None:
                raise hub_unavailable(
                    f"exporting tokenizer {source} (not in the local Hugging Face cache)",
                    reason,
                    "pass --tokenizer PATH to a tokenizer.json or a directory holding one",
                ) from None
            raise ModelFormatError(
                f"tokenizer {source}: cannot be loaded ({str(err).splitlines()[0]})"
            ) from err
    expected = {"pad": config.pad_token_id, "mask": config.mask_token_id, "unk": config.unk_token_id}
    for name, token_id in expected.items():
        found = getattr(tokenizer, f"{name}_token_id")
        if found != token_id:
            raise ModelFormatError(f"{source}: the {name} token id is {found}, the model uses {token_id}")
    if len(tokenizer) > config.vocab_size:
        raise ModelFormatError(
            f"{source}: {len(tokenizer)} tokens do not fit the model's vocab of {config.vocab_size}"
        )
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.save_pretrained(out_dir)
    settings_path = out_dir / "tokenizer_config.json"
    settings = read_json_object(settings_path)
    # ModernBERT takes no token_type_ids, and pipelines pass every tokenizer output to the model.
    settings["model_input_names"] = ["input_ids", "attention_mask"]
    # transformers 5 names the generic fast tokenizer TokenizersBackend; 4.x only knows the alias.
    if settings.get("tokenizer_class") == "TokenizersBackend":
        settings["tokenizer_class"] = "PreTrainedTokenizerFast"
    write_json_atomic(settings_path, settings)


def tokenizer_from_file(path: str, config: ModelConfig):
    """A transformers tokenizer around a bare ``tokenizer.json``, with roles given by the model's ids.

    The file does not say which token is the mask or the padding, so each of the model's special
    ids must be a special token of the file, and the pad/unk/mask tokens must be named for their role.
    It behaves as the training data was made: ``<bos> ... <eos>`` around every text (the shards'
    layout), and ``<mask>`` takes the space before it (``lstrip``), since a masked token carried its
    leading space in training (the convention of RoBERTa and ModernBERT's tokenizers).
    """
    from tokenizers import AddedToken, Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    try:
        backend = Tokenizer.from_file(path)
    except Exception as err:  # the tokenizers library raises a bare Exception for a file it cannot parse
        raise ModelFormatError(f"{path}: not a tokenizer.json ({err})") from err
    bos, eos = backend.id_to_token(config.bos_token_id), backend.id_to_token(config.eos_token_id)
    if bos is not None and eos is not None:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A {eos}",
            pair=f"{bos} $A {eos} $B {eos}",
            special_tokens=[(bos, config.bos_token_id), (eos, config.eos_token_id)],
        )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    specials = {i: token.content for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    roles = {
        "pad": config.pad_token_id,
        "eos": config.eos_token_id,
        "bos": config.bos_token_id,
        "unk": config.unk_token_id,
        "mask": config.mask_token_id,
    }
    for role, token_id in roles.items():
        name = specials.get(token_id)
        if name is None or (role in ("pad", "unk", "mask") and role not in name.lower()):
            found = tokenizer.convert_ids_to_tokens(token_id)
            raise ModelFormatError(
                f"{path}: the model's {role} token id {token_id} is {found!r} in this tokenizer"
            )
    tokenizer.add_special_tokens(
        {
            "pad_token": specials[config.pad_token_id],
            "eos_token": specials[config.eos_token_id],
            "sep_token": specials[config.eos_token_id],
            "bos_token": specials[config.bos_token_id],
            "cls_token": specials[config.bos_token_id],
            "unk_token": specials[config.unk_token_id],
            "mask_token": AddedToken(specials[config.mask_token_id], lstrip=True, special=True),
        }
    )
    return tokenizer
