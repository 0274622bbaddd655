"""CPU throughput of held-out evaluation: ``mmbert-train eval`` against transformers (padded).

Both contenders score the same masked documents with the same weights, the ``small`` shape
(22 layers, hidden 384, vocab 256,000), fp32, in eval mode under ``torch.no_grad``:

- ``ours``: ``trainer.eval.evaluate`` on a held-out build (``bench/heldout.py``) whose documents'
  lengths are log-uniform in 32..1024 over three languages: it reads the shards, masks each document
  (15%, all ``<mask>``), packs the pieces into batches of ``--batch-tokens`` with ``cu_seqlens``,
  and runs the decoder only at the masked positions. Everything it does is timed.
- ``transformers``: ``ModernBertForMaskedLM`` loaded from our export of the same weights
  (``trainer.hf.export_hf``), SDPA attention, as configured by default (logits at every position),
  on the very pieces ours masked (``trainer.eval.pieces``), ``--batch-docs`` consecutive pieces per
  batch padded to the longest; per-position cross-entropy at the masked positions. Only its
  forward passes are timed (the padding is prepared beforehand).
- ``transformers-sparse``: the same with ``sparse_prediction=True`` (decoder at labels only), to
  separate the gain of unpadding from that of sparse prediction.

Each reports real (non-padding) tokens per second, the best of ``--rounds`` (each contender runs
once a round, after a warm-up pass, so a busy spell on a shared machine slows them all), and its
loss over every masked token, which must agree (same tokens, same weights). Goal: ours >= 2x
transformers.

    .venv/bin/python bench/eval.py [--layers 22] [--docs 12] [--batch-docs 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.heldout import write_heldout_build  # noqa: E402
from trainer.eval import EvalOptions, Score, evaluate, pieces, read_heldout  # noqa: E402
from trainer.hf import export_hf  # noqa: E402
from trainer.model import IGNORE_INDEX, ModelConfig, ModernBertMLM  # noqa: E402

THREADS = 2
SPECIAL = {"pad": 0, "eos": 1, "bos": 2, "unk": 3, "mask": 4}
LANGUAGES = ("fra_Latn", "cat_Latn", "fao_Latn")
T = TypeVar("T")


def documents(count: int, vocab_size: int, seed: int = 0) -> dict[tuple[str, str], list[np.ndarray]]:
    """``count`` documents (bos, ids, eos) of log-uniform lengths in 32..1024, dealt over the languages."""
    rng = np.random.default_rng(seed)
    out: dict[tuple[str, str], list[np.ndarray]] = {("fineweb2", lang): [] for lang in LANGUAGES}
    for index in range(count):
        length = round(math.exp(rng.uniform(math.log(32), math.log(1024))))
        row = np.concatenate([[2], rng.integers(5, vocab_size, length - 2), [1]])
        out["fineweb2", LANGUAGES[index % len(LANGUAGES)]].append(row)
    return out


def padded_batches(heldout, batch_docs: int) -> list[dict[str, torch.Tensor]]:
    """Our masked pieces, ``batch_docs`` at a time, padded to the longest, as transformers takes them."""
    found = list(pieces(heldout))
    batches = []
    for start in range(0, len(found), batch_docs):
        group = found[start : start + batch_docs]
        width = max(len(piece.inputs) for piece in group)
        input_ids = torch.full((len(group), width), SPECIAL["pad"])
        attention_mask = torch.zeros((len(group), width), dtype=torch.long)
        labels = torch.full((len(group), width), IGNORE_INDEX)
        for row, piece in enumerate(group):
            n = len(piece.inputs)
            input_ids[row, :n], labels[row, :n] = (
                torch.from_numpy(piece.inputs),
                torch.from_numpy(piece.labels),
            )
            attention_mask[row, :n] = 1
        batches.append({"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels})
    return batches


@torch.no_grad()
def transformers_pass(model, batches: list[dict[str, torch.Tensor]]) -> tuple[float, int]:
    """Summed cross-entropy and predictions over every batch: ``(nats, positions)``."""
    total, made = 0.0, 0
    for batch in batches:
        labels = batch["labels"]
        logits = model(**batch).logits  # with labels, as sparse prediction needs them
        if logits.dim() == 3:  # dense: every position
            logits = logits[labels != IGNORE_INDEX]
        targets = labels[labels != IGNORE_INDEX]
        total += float(F.cross_entropy(logits.float(), targets, reduction="sum"))
        made += len(targets)
    return total, made


def summed(scores: list[Score]) -> tuple[float, int]:
    """Our scores as transformers_pass counts: summed cross-entropy and predictions."""
    made = sum(score.predictions for score in scores)
    return sum(score.loss * score.predictions for score in scores if score.predictions), made


def timed(work: Callable[[], T]) -> tuple[float, T]:
    """Seconds ``work()`` took, and what it returned."""
    start = time.perf_counter()
    result = work()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=22, help="encoder layers (the small shape has 22)")
    parser.add_argument("--docs", type=int, default=12, help="documents, lengths log-uniform in 32..1024")
    parser.add_argument("--batch-docs", type=int, default=2, help="pieces per transformers batch (padded)")
    parser.add_argument("--batch-tokens", type=int, default=8192, help="tokens per packed batch of ours")
    parser.add_argument("--rounds", type=int, default=2, help="timed passes; the best counts")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    from transformers import ModernBertForMaskedLM

    config = ModelConfig.preset("small", num_layers=args.layers, attention_dropout=0.0)
    tokenizer = {"name": "bench", "sha256": "0" * 64, "vocab_size": config.vocab_size, "special_ids": SPECIAL}
    options = EvalOptions(batch_tokens=args.batch_tokens)
    with tempfile.TemporaryDirectory() as scratch:
        build = write_heldout_build(
            Path(scratch) / "build", documents(args.docs, config.vocab_size), tokenizer
        )
        heldout = read_heldout(build, options)
        torch.manual_seed(0)
        ours = ModernBertMLM(config).eval()
        ours.save(Path(scratch) / "model")
        export_hf(Path(scratch) / "model", Path(scratch) / "hf")
        peers = {
            name: ModernBertForMaskedLM.from_pretrained(
                Path(scratch) / "hf", attn_implementation="sdpa", sparse_prediction=sparse
            ).eval()
            for name, sparse in (("transformers", False), ("transformers-sparse", True))
        }
        padded = padded_batches(heldout, args.batch_docs)
        tokens = sum(sum(stream.lengths) for stream in heldout.streams)
        slots = sum(batch["input_ids"].numel() for batch in padded)
        cut = "" if args.layers == 22 else f" (cut from 22 layers to {args.layers} to keep the run short)"
        shape = f"hidden {config.hidden_size}, vocab {config.vocab_size:,}"
        print(f"small shape: {args.layers} layers{cut}, {shape}")
        print(
            f"{args.docs} documents, {tokens} tokens in {sum(1 for _ in pieces(heldout))} pieces of at most "
            f"{options.seq_len}; ours in batches of {args.batch_tokens} tokens, transformers "
            f"{args.batch_docs} pieces per batch ({slots} padded slots, {tokens / slots:.0%} real)"
        )
        print(f"mask rate {options.mask_rate}; {THREADS} threads; best of {args.rounds} round(s)")
        print(f"load average before: {os.getloadavg()[0]:.2f}")

        contenders: dict[str, Callable[[], tuple[float, int]]] = {
            "ours": lambda: summed(evaluate(ours, read_heldout(build, options))),
            **{name: lambda model=model: transformers_pass(model, padded) for name, model in peers.items()},
        }
        evaluate(ours, read_heldout(build, replace(options, max_tokens_per_language=1)))  # warm-ups
        for model in peers.values():
            transformers_pass(model, padded[:1])
        seconds: dict[str, list[float]] = {name: [] for name in contenders}
        losses: dict[str, tuple[float, int]] = {}
        for _ in range(args.rounds):  # each contender once a round, so a busy spell slows them all
            for name, work in contenders.items():
                took, losses[name] = timed(work)
                seconds[name].append(took)
        rates = {name: tokens / min(times) for name, times in seconds.items()}  # the fastest round counts
        ours_loss = losses["ours"][0] / losses["ours"][1]
        for name, (nats, made) in losses.items():
            assert made == losses["ours"][1], (name, made)  # the same masked positions
            rounds = ", ".join(f"{t:.1f}" for t in seconds[name])
            agree = "" if name == "ours" else f" (ours - this: {ours_loss - nats / made:+.1e})"
            print(
                f"{name:>20}: {rates[name]:8.1f} tokens/s  (rounds {rounds} s)  loss {nats / made:.6f}{agree}"
            )
        for name in peers:
            goal = " (goal >= 2.0)" if name == "transformers" else ""
            print(f"ratio ours / {name}: {rates['ours'] / rates[name]:.2f}x{goal}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
