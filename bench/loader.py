"""Benchmark: tokens/s of our training loader against datasets' interleave + transformers' MLM collator.

Both contenders turn the same Arrow shards into masked MLM batches (torch tensors) on one
process, at the phase's mask rate and seq_len:

* ours: ``trainer.data.MixtureLoader.next_step()``, single rank: the manifest's streams
  blended, documents cut into chunks of at most seq_len, best-fit packed into micro-batches
  of max(8192, 2 * seq_len) tokens (16 sequences of seq_len per step), masked at the phase's
  exact rate (80/10/10), each micro-batch one packed row with ``cu_seqlens``;
* peer: ``datasets.interleave_datasets`` over one ``Dataset.from_file`` per shard,
  concatenated per stream (``concatenate_datasets``), probabilities = the manifest's stream
  weights, ``stopping_strategy="all_exhausted"``, the same seed; its documents cut into
  pieces of at most seq_len as ours are, 16 pieces per batch, and transformers'
  ``DataCollatorForLanguageModeling(mlm=True, mlm_probability=<mask rate>)`` pads each batch
  to its longest piece and masks it. A pass over the interleaved dataset that ends before
  the token count is reached starts again from its beginning.

The data is the bundled sample, built into a temporary directory (MMBERT_DATA_CACHE and
HF_DATASETS_CACHE point there too, so nothing is written to the user's caches) and compiled
to a 150k-token manifest, as the test fixtures do. The peer's collator gets a
``PreTrainedTokenizerFast`` over the same tokenizer.json. Each contender counts real
(non-padding) tokens delivered per second over at least --tokens tokens. Only the calls that
produce a batch are timed (not the setup, nor the counting between calls; a few batches of
warm-up first), each contender once per round, the best round counts. Goal: ours >= 10x the
peer (floor 5x).

Run: `.venv/bin/python bench/loader.py [--phase pretrain] [--tokens 5M] [--rounds 1]`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.sample import SAMPLE, quiet, sample_manifest  # noqa: E402
from mixtures.manifest import Manifest, load_manifest  # noqa: E402
from mixtures.recipe import parse_tokens  # noqa: E402
from pipeline.tokenizer import sample_tokenizer_path  # noqa: E402
from trainer.data import MixtureData, MixtureLoader  # noqa: E402
from trainer.masking import Masking  # noqa: E402

MANIFEST_TOKENS = 150_000  # the mixture size `make demo` and the test fixtures compile
SEQUENCES = 16  # sequences per step (ours) and per batch (the peer)
WARMUP = 3  # untimed steps / batches before each timed run
SEED = 0
GOAL, FLOOR = 10.0, 5.0


def prepare(tmp: Path, phase: str) -> tuple[Manifest, Path]:
    """Build the bundled sample's ``phase`` and compile its manifest; return it and the tokenizer.json."""
    with quiet(tmp / "build.log"):
        path = sample_manifest(tmp, phase, MANIFEST_TOKENS)
    return load_manifest(path), sample_tokenizer_path(SAMPLE / "hub")


def our_loader(manifest: Manifest) -> MixtureLoader:
    """Our loader on one rank, set up as the trainer does (as tests/trainer/test_data.py's make_loader)."""
    training, tokenizer = manifest.training, manifest.tokenizer
    special = tokenizer.special_ids
    masking = Masking(training.mask_rate, special["mask"], tuple(special.values()), tokenizer.vocab_size)
    return MixtureLoader(
        MixtureData(manifest, seed=SEED),
        seq_len=training.seq_len,
        micro_batch_tokens=max(8192, 2 * training.seq_len),
        batch_size_at=lambda tokens: SEQUENCES,
        masking=masking,
        seed=SEED,
        pad_id=special["pad"],
    )


def run_ours(manifest: Manifest, tokens: int) -> dict[str, float]:
    loader = our_loader(manifest)
    for _ in range(WARMUP):
        loader.next_step()
    real = capacity = labelled = steps = 0
    seconds = 0.0
    while real < tokens:
        start = time.perf_counter()
        step = loader.next_step()
        seconds += time.perf_counter() - start
        real += step.tokens
        capacity += step.capacity
        labelled += sum(micro.predictions for micro in step.micro_batches)
        steps += 1
    return {
        "seconds": seconds,
        "tokens": real,
        "batches": steps,
        "fill": real / capacity,
        "masked": labelled / real,
    }


def peer_parts(manifest: Manifest, tokenizer_json: Path) -> tuple[Any, Any, dict[str, int]]:
    """The peer's interleaved dataset and collator, built from the manifest's shards.

    Imported here, once HF_DATASETS_CACHE points into the temporary directory (datasets reads it on import).
    """
    from datasets import Dataset, concatenate_datasets, interleave_datasets
    from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerFast

    root = manifest.data_root
    streams = [entry for entry in manifest.streams if entry.target_tokens > 0 and entry.shards]
    per_stream = [
        concatenate_datasets(
            [Dataset.from_file(str(root / s.path)).select_columns(["input_ids"]) for s in entry.shards]
        )
        for entry in streams
    ]
    weights = [entry.weight for entry in streams]
    interleaved = interleave_datasets(
        per_stream,
        probabilities=[w / sum(weights) for w in weights],
        seed=SEED,
        stopping_strategy="all_exhausted",
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_json),
        pad_token="<pad>",
        mask_token="<mask>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
    )
    rate = manifest.training.mask_rate
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=rate, seed=SEED)
    lengths = [len(ids) for ids in interleaved["input_ids"]]
    return interleaved, collator, {"documents": len(lengths), "tokens": sum(lengths), "streams": len(streams)}


def peer_batches(dataset, collator, seq_len: int) -> Iterator[dict]:
    """Padded, masked batches of ``SEQUENCES`` pieces of at most ``seq_len`` tokens, pass after pass."""
    pending: list[dict[str, list[int]]] = []
    while True:
        for rows in dataset.iter(batch_size=SEQUENCES):
            for ids in rows["input_ids"]:
                for start in range(0, len(ids), seq_len):
                    pending.append({"input_ids": ids[start : start + seq_len]})
                    if len(pending) == SEQUENCES:
                        yield collator(pending)
                        pending = []


def run_peer(dataset, collator, seq_len: int, tokens: int) -> dict[str, float]:
    batches = peer_batches(dataset, collator, seq_len)
    for _ in range(WARMUP):
        next(batches)
    real = slots = labelled = count = 0
    seconds = 0.0
    while real < tokens:
        start = time.perf_counter()
        batch = next(batches)
        seconds += time.perf_counter() - start
        real += int(batch["attention_mask"].sum())
        slots += batch["input_ids"].numel()
        labelled += int((batch["labels"] != -100).sum())
        count += 1
    return {
        "seconds": seconds,
        "tokens": real,
        "batches": count,
        "fill": real / slots,
        "masked": labelled / real,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--phase", choices=("pretrain", "midtrain", "decay"), default="pretrain")
    parser.add_argument(
        "--tokens", type=parse_tokens, default=5_000_000, help="real tokens per contender (k/M suffixes)"
    )
    parser.add_argument("--rounds", type=int, default=1, help="timed runs per contender; the best counts")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mmbert-loader-bench-") as tmp:
        os.environ["HF_DATASETS_CACHE"] = str(Path(tmp) / "hf-datasets")
        start = time.perf_counter()
        manifest, tokenizer_json = prepare(Path(tmp), args.phase)
        seq_len, rate = manifest.training.seq_len, manifest.training.mask_rate
        dataset, collator, peer_info = peer_parts(manifest, tokenizer_json)
        micro = max(8192, 2 * seq_len)
        print(
            f"{args.phase}: sample built and compiled to {manifest.sampling.tokens:,} tokens in "
            f"{time.perf_counter() - start:.1f} s; {peer_info['streams']} streams, seq_len {seq_len}, "
            f"mask {rate:.0%}"
        )
        print(
            f"ours: {SEQUENCES} x {seq_len} tokens per step in micro-batches of {micro}; peer: "
            f"{SEQUENCES} pieces per padded batch, interleave pass of {peer_info['documents']:,} documents "
            f"({peer_info['tokens']:,} tokens)"
        )
        print(
            f">= {args.tokens:,} real tokens each, {WARMUP} warm-up batches, one process, "
            f"best of {args.rounds} round(s); load average before: {os.getloadavg()[0]:.2f}"
        )
        results: dict[str, list[dict[str, float]]] = {"ours": [], "peer": []}
        for _ in range(args.rounds):
            results["ours"].append(run_ours(manifest, args.tokens))
            results["peer"].append(run_peer(dataset, collator, seq_len, args.tokens))

    names = {"ours": "ours (MixtureLoader)", "peer": "interleave + MLM collator"}
    fill_label = {"ours": "packing efficiency", "peer": "padding share"}
    best = {}
    for key, runs in results.items():
        best[key] = r = max(runs, key=lambda run: run["tokens"] / run["seconds"])
        rounds = ", ".join(f"{run['seconds']:.2f}" for run in runs)
        fill = r["fill"] if key == "ours" else 1.0 - r["fill"]
        print(
            f"{names[key]:>26}: {r['tokens'] / r['seconds'] / 1e6:7.2f} M tokens/s  "
            f"({r['tokens']:,} tokens in {r['batches']:,} batches; rounds {rounds} s)  "
            f"{fill_label[key]} {fill:.1%}, labelled {r['masked']:.1%}"
        )
    ratio = (best["ours"]["tokens"] / best["ours"]["seconds"]) / (
        best["peer"]["tokens"] / best["peer"]["seconds"]
    )
    verdict = "met" if ratio >= GOAL else ("above the floor, goal missed" if ratio >= FLOOR else "MISSED")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(
        f"ratio ours / interleave + MLM collator: {ratio:.2f}x "
        f"(goal >= {GOAL:.0f}x, floor {FLOOR:.0f}x: {verdict})"
    )


if __name__ == "__main__":
    main()
