"""Loading the tokenizer a build encodes with, encoding documents with it, and training the demo's small one.

A tokenizer is named by a ``tokenizer.json`` path, a directory holding one, a hub
repository (``jhu-clsp/mmBERT-base``: resolved through huggingface_hub, so the
standard HF cache and ``HF_HUB_OFFLINE=1`` apply), or ``sample:DIR``, which trains
a small byte-level BPE on the text under DIR and caches it by content hash. Every
shard records the tokenizer's name and the SHA-256 of its ``tokenizer.json`` so
that mixtures and training can refuse to mix tokenizers.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.batching import batched
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from mixtures.cache import cache_dir
from mixtures.files import atomic_output
from mixtures.formats import SPECIAL_ROLES
from mixtures.hub import hub_unavailable, unreachable_reason
from pipeline.sources import lone_surrogate

# Gemma 2's special tokens, in its id order, so that ids 0..4 mean the same in every tokenizer we make.
SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")
# How each special role is spelled in the tokenizers users bring (Gemma, RoBERTa/XLM-R, BERT).
ROLE_SPELLINGS = {
    "pad": ("<pad>", "[PAD]"),
    "eos": ("<eos>", "</s>", "[SEP]"),
    "bos": ("<bos>", "<s>", "[CLS]"),
    "unk": ("<unk>", "[UNK]"),
    "mask": ("<mask>", "[MASK]"),
}
SAMPLE_PREFIX = "sample:"
SAMPLE_VOCAB = 8192
SAMPLE_CHARS_PER_DOC = 20_000  # enough to learn merges; keeps training memory small on huge documents


@dataclass(frozen=True)
class LoadedTokenizer:
    """A tokenizer with the identity that shards record and the ids wrapped around each document."""

    tokenizer: Tokenizer
    name: str
    sha256: str
    bos_id: int
    eos_id: int
    special_ids: dict[str, int | None]

    def record(self) -> dict:
        """What shards' stats and manifests say of the tokenizer (see ``mixtures.formats``)."""
        return {
            "name": self.name,
            "sha256": self.sha256,
            "vocab_size": self.tokenizer.get_vocab_size(with_added_tokens=True),
            "special_ids": self.special_ids,
        }


def _special_id(tokenizer: Tokenizer, candidates: tuple[str, ...], what: str, name: str) -> int:
    for token in candidates:
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return token_id
    raise ValueError(f"tokenizer {name} has no {what} token (looked for {', '.join(candidates)})")


def _from_json_bytes(raw: bytes, name: str) -> LoadedTokenizer:
    tokenizer = Tokenizer.from_str(raw.decode("utf-8"))
    special_ids = {
        role: next((i for t in ROLE_SPELLINGS[role] if (i := tokenizer.token_to_id(t)) is not None), None)
        for role in SPECIAL_ROLES
    }
    return LoadedTokenizer(
        tokenizer=tokenizer,
        name=name,
        sha256=hashlib.sha256(raw).hexdigest(),
        bos_id=_special_id(tokenizer, ROLE_SPELLINGS["bos"], "beginning-of-sequence", name),
        eos_id=_special_id(tokenizer, ROLE_SPELLINGS["eos"], "end-of-sequence", name),
        special_ids=special_ids,
    )


def load_tokenizer(spec: str) -> LoadedTokenizer:
    """Load a tokenizer by path, hub name or ``sample:DIR`` (see the module docstring)."""
    if spec.startswith(SAMPLE_PREFIX):
        path = sample_tokenizer_path(Path(spec[len(SAMPLE_PREFIX) :]))
        return _from_json_bytes(path.read_bytes(), spec)
    path = Path(spec)
    if path.is_dir():
        path = path / "tokenizer.json"
    if path.is_file():
        return _from_json_bytes(path.read_bytes(), spec)
    if path.suffix == ".json" or spec.startswith((".", "/")):
        raise FileNotFoundError(f"tokenizer file {path} does not exist")
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    # The hub is asked once first: unreachable, only the cache is looked at, since huggingface_hub
    # would retry for ~25 s ("Retrying in Ns") before falling back to it or failing.
    reason = unreachable_reason()
    try:
        path = Path(hf_hub_download(spec, "tokenizer.json", local_files_only=reason is not None))
    except LocalEntryNotFoundError:  # not in the local cache, and the hub did not answer
        raise hub_unavailable(
            f"loading tokenizer {spec} (not in the local Hugging Face cache)",
            reason or "the hub did not answer",
            "pass --tokenizer PATH to a tokenizer.json (or a directory holding one)",
        ) from None
    except RepositoryNotFoundError:  # also a gated or private repo without a token
        raise FileNotFoundError(
            f"tokenizer {spec}: no such model repository on {constants.ENDPOINT} (or it needs a token: "
            "HF_TOKEN); pass a hub name such as jhu-clsp/mmBERT-base or --tokenizer PATH"
        ) from None
    except RevisionNotFoundError:
        raise FileNotFoundError(f"tokenizer {spec}: the hub repository has no revision main") from None
    except RemoteEntryNotFoundError:
        raise FileNotFoundError(
            f"tokenizer {spec}: the hub repository holds no tokenizer.json; pass --tokenizer PATH"
        ) from None
    return _from_json_bytes(path.read_bytes(), spec)


def find_tokenizer(spec: str, sha256: str | None) -> str:
    """The tokenizer data was made with, as ``load_tokenizer`` opens it from here.

    ``sample:DIR`` becomes the trained sample tokenizer's file; where DIR is not found (a
    path relative to another directory), the cached tokenizer whose ``tokenizer.json`` has
    the data's ``sha256`` is used. Other names are returned as they are.
    """
    if not spec.startswith(SAMPLE_PREFIX):
        return spec
    directory = Path(spec[len(SAMPLE_PREFIX) :])
    if directory.is_dir():
        return str(sample_tokenizer_path(directory))
    for candidate in sorted((cache_dir() / "tokenizers").glob("*.json")) if sha256 else ():
        if hashlib.sha256(candidate.read_bytes()).hexdigest() == sha256:
            return str(candidate)
    raise ValueError(
        f"tokenizer {spec}: {directory} is not found from {Path.cwd()} and no cached tokenizer has the "
        "data's sha256; run from the directory the data was built in, or pass --tokenizer PATH"
    )


def _sample_texts(root: Path) -> Iterator[str]:
    """Document texts under a sample directory (parquet and JSON lines; StarCoderData's parquet holds
    its files in ``content``); unreadable files and texts that are not valid Unicode strings are skipped."""
    for path in sorted(root.rglob("*")):
        try:
            if path.suffix == ".parquet":
                column = "text" if "text" in pq.read_schema(path).names else "content"
                yield from _usable(pq.read_table(path, columns=[column]).column(column).to_pylist())
            elif path.name.endswith((".json.gz", ".json.zst", ".jsonl.zstd", ".jsonl.zst")):
                opener = gzip.open if path.suffix == ".gz" else zstandard.open
                with opener(path, "rt", encoding="utf-8") as lines:
                    records = (json.loads(line.lstrip("\ufeff")) for line in lines if line.strip())
                    yield from _usable(r.get("text") for r in records if isinstance(r, dict))
        except (pa.ArrowException, OSError, EOFError, UnicodeDecodeError, ValueError, zstandard.ZstdError):
            continue  # a demo tokenizer does not need every file; the build reports bad input itself


def _usable(texts: Iterable[object]) -> Iterator[str]:
    for text in texts:
        if isinstance(text, str) and text and lone_surrogate(text) is None:
            yield text[:SAMPLE_CHARS_PER_DOC]


def directory_sha256(root: Path) -> str:
    """One sha256 over every file under ``root``: relative names and contents.

    It names a sample tokenizer in the cache, and it is how a build records filter configs.
    """
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def sample_tokenizer_path(root: Path) -> Path:
    """Train (once) a byte-level BPE on a sample directory's text and return its cached tokenizer.json.

    Byte-level BPE without normalization or an added prefix space is lossless: decoding a
    document's ids gives back its text exactly, which the build's round-trip checks rely on.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"sample directory {root} does not exist")
    path = cache_dir() / "tokenizers" / f"sample-{directory_sha256(root)[:16]}-{SAMPLE_VOCAB}.json"
    if path.exists():
        return path
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=SAMPLE_VOCAB,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_sample_texts(root), trainer=trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as temporary:
        tokenizer.save(str(temporary))
    return path


class BatchTokenizer(PipelineStep):
    """Encodes documents in batches (Rust, multi-threaded) into ``metadata["input_ids"]``."""

    name = "🔢 tokenize"
    type = "🔢 - TOKENIZER"

    def __init__(self, tokenizer: str, batch_size: int = 1000):
        super().__init__()
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        loaded = load_tokenizer(self.tokenizer)
        for batch in batched(data, self.batch_size):
            with self.track_time("batch"):
                encodings = loaded.tokenizer.encode_batch_fast(
                    [doc.text for doc in batch], add_special_tokens=False
                )
            for doc, encoding in zip(batch, encodings, strict=True):
                ids = np.empty(len(encoding.ids) + 2, dtype=np.uint32)
                ids[0], ids[-1] = loaded.bos_id, loaded.eos_id
                ids[1:-1] = encoding.ids
                doc.metadata["input_ids"] = ids
                yield doc
