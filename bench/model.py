"""CPU training throughput of the encoder: ours (packed, sparse prediction) vs transformers (padded).

Both contenders run forward + backward of the ``small`` shape (22 layers, hidden 384, vocab
256,000) on the same documents, whose lengths are log-uniform in 32..1024, with 30% of the
tokens labelled for MLM:

- ``ours``: ``trainer.model.ModernBertMLM``; each batch is one packed tensor with ``cu_seqlens``,
  exact CPU attention (per-document SDPA / blocked sliding window), decoder only at labels.
- ``transformers``: ``ModernBertForMaskedLM`` as configured by default (dense logits), SDPA
  attention, each batch padded to its longest document.
- ``transformers-sparse``: the same with ``sparse_prediction=True``, to separate the gain of
  unpadding from that of sparse prediction.

Each contender runs in its own process, so its peak memory (RSS sampled above the level after
building the model) is its own. Our model FLOP/s is reported as a fraction of the FLOP/s of a
large fp32 matmul measured in the same run, the CPU's practical limit. Dropout is off in all.

    .venv/bin/python bench/model.py [--layers 22] [--docs 12] [--batch-docs 2] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trainer.model import ModelConfig, ModernBertMLM  # noqa: E402

CONTENDERS = ("ours", "transformers", "transformers-sparse")
THREADS = 2
MASK_RATE = 0.30


def small_config(layers: int) -> ModelConfig:
    return ModelConfig.preset("small", num_layers=layers, attention_dropout=0.0)


def make_batches(docs: int, batch_docs: int, vocab_size: int, seed: int = 0) -> list[list[tuple]]:
    """Documents (token ids, MLM labels) grouped into batches; identical for every contender."""
    generator = torch.Generator().manual_seed(seed)
    documents = []
    for _ in range(docs):
        u = torch.rand((), generator=generator).item()
        length = round(math.exp(math.log(32) + u * (math.log(1024) - math.log(32))))
        ids = torch.randint(5, vocab_size, (length,), generator=generator)
        labelled = torch.rand(length, generator=generator) < MASK_RATE
        documents.append((ids, torch.where(labelled, ids, torch.full_like(ids, -100))))
    return [documents[i : i + batch_docs] for i in range(0, docs, batch_docs)]


def packed(batch: list[tuple]) -> tuple:
    lengths = [len(ids) for ids, _ in batch]
    cu_seqlens = torch.tensor([0, *lengths]).cumsum(0).to(torch.int32)
    input_ids, labels = torch.cat([ids for ids, _ in batch]), torch.cat([lab for _, lab in batch])
    return input_ids, cu_seqlens, max(lengths), labels


def padded(batch: list[tuple], pad_id: int) -> dict:
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100)
    for row, (ids, lab) in enumerate(batch):
        input_ids[row, : len(ids)], attention_mask[row, : len(ids)], labels[row, : len(ids)] = ids, 1, lab
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def transformers_model(config: ModelConfig, sparse: bool):
    """transformers' ModernBertForMaskedLM with the config our export writes, on SDPA attention."""
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    from trainer.hf import hf_config

    hf = ModernBertConfig.from_dict(hf_config(config), sparse_prediction=sparse, attn_implementation="sdpa")
    return ModernBertForMaskedLM(hf)


class PeakRss:
    """Highest resident set size seen while active, sampled every few milliseconds."""

    def __init__(self, interval: float = 0.005):
        self.process, self.interval = psutil.Process(), interval
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_contender(name: str, layers: int, docs: int, batch_docs: int, rounds: int) -> dict:
    """Time forward + backward over every batch, ``rounds`` times after one warm-up step.

    The fastest round counts: other processes on a shared machine only ever slow a round down.
    """
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    config = small_config(layers)
    batches = make_batches(docs, batch_docs, config.vocab_size)
    if name == "ours":
        model = ModernBertMLM(config).train()
        inputs = [packed(batch) for batch in batches]

        def step(batch) -> None:
            model(*batch).loss.backward()
    else:
        model = transformers_model(config, sparse=name == "transformers-sparse").train()
        inputs = [padded(batch, config.pad_token_id) for batch in batches]

        def step(batch) -> None:
            model(**batch).loss.backward()

    baseline = psutil.Process().memory_info().rss
    with PeakRss() as memory:
        step(inputs[0])
        model.zero_grad(set_to_none=True)
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            for batch in inputs:
                step(batch)
                model.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
    tokens = sum(len(ids) for batch in batches for ids, _ in batch)
    return {
        "seconds": min(times),
        "rounds": times,
        "tokens": tokens,
        "peak_mb": (memory.peak - baseline) / 2**20,
    }


def model_flops(config: ModelConfig, batches: list[list[tuple]]) -> float:
    """Useful forward + backward FLOPs of our model: 3x forward (matmuls and attention scores)."""
    hidden, layers = config.hidden_size, config.num_layers
    layer_matmul = hidden * 3 * hidden + hidden * hidden + hidden * 2 * config.intermediate_size
    layer_matmul += config.intermediate_size * hidden
    head_matmul = hidden * hidden + hidden * config.vocab_size
    forward = 0.0
    for batch in batches:
        for ids, labels in batch:
            n = len(ids)
            forward += 2 * n * layers * layer_matmul + 2 * int((labels != -100).sum()) * head_matmul
            local_pairs = sum(min(n - 1, i + config.window) - max(0, i - config.window) + 1 for i in range(n))
            for layer in range(layers):
                pairs = n * n if config.is_global(layer) else local_pairs
                forward += 4 * pairs * hidden  # q.k scores and weights.v, over all heads
    return 3 * forward


def matmul_flops(size: int = 4096, repeats: int = 5) -> float:
    torch.set_num_threads(THREADS)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best


def _timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=22, help="encoder layers (the small shape has 22)")
    parser.add_argument("--docs", type=int, default=12, help="documents, lengths log-uniform in 32..1024")
    parser.add_argument("--batch-docs", type=int, default=2, help="documents per batch (transformers pads)")
    parser.add_argument(
        "--rounds", type=int, default=1, help="timed passes over the batches; the best counts"
    )
    parser.add_argument("--contender", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = ["--layers", str(args.layers), "--docs", str(args.docs), "--batch-docs", str(args.batch_docs)]
    sizes += ["--rounds", str(args.rounds)]
    if args.contender:
        print(json.dumps(run_contender(args.contender, args.layers, args.docs, args.batch_docs, args.rounds)))
        return

    config = small_config(args.layers)
    cut = "" if args.layers == 22 else f" (cut from 22 layers to {args.layers} to keep the run short)"
    print(f"small shape: {args.layers} layers{cut}, hidden {config.hidden_size}, vocab {config.vocab_size:,}")
    batches = make_batches(args.docs, args.batch_docs, config.vocab_size)
    tokens = sum(len(ids) for batch in batches for ids, _ in batch)
    padded_tokens = sum(len(batch) * max(len(ids) for ids, _ in batch) for batch in batches)
    print(f"{args.docs} documents, {tokens} tokens ({padded_tokens} padded), {args.batch_docs} per batch")
    print(f"{MASK_RATE:.0%} of tokens labelled; {THREADS} threads; best of {args.rounds} timed round(s)")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    matmul_before = matmul_flops()
    results = {}
    for name in CONTENDERS:
        command = [sys.executable, __file__, "--contender", name, *sizes]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[name] = r = json.loads(output.strip().splitlines()[-1])
        rounds = ", ".join(f"{t:.1f}" for t in r["rounds"])
        print(
            f"{name:>20}: {r['tokens'] / r['seconds']:8.1f} tokens/s  (rounds {rounds} s)  "
            f"peak memory +{r['peak_mb']:,.0f} MB"
        )
    # The machine's practical limit: the best of two measurements around the contenders.
    peak = max(matmul_before, matmul_flops())
    print(f"fp32 4096x4096 matmul: {peak / 1e9:.1f} GFLOP/s (best of before/after)")
    ours = results["ours"]
    ours_rate = ours["tokens"] / ours["seconds"]
    for name in CONTENDERS[1:]:
        ratio = ours_rate / (results[name]["tokens"] / results[name]["seconds"])
        print(f"ratio ours / {name}: {ratio:.2f}x" + (" (goal >= 2.0)" if name == "transformers" else ""))
    achieved = model_flops(config, batches) / ours["seconds"]
    print(f"ours: {achieved / 1e9:.1f} model GFLOP/s = {achieved / peak:.0%} of the matmul's FLOP/s")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
