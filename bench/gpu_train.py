"""GPU training throughput: a few hundred steps of `small` and `base` at 1024 tokens, tokens/s and MFU.

Runs the real trainer (``trainer.train.train``, bf16, the GPU attention kernel picked by
``--attn auto``) on synthetic shards written here with the on-disk formats alone, so the
machine needs only torch, transformers, safetensors, pyarrow and numpy. Documents are
log-uniform in 32..2048 tokens, Zipf-distributed over mmBERT's 256k vocabulary, packed into micro-batches of
``--micro-batch-tokens``. Per model it prints tokens/s and MFU averaged over the steps after
the first ``--warmup`` (compilation, allocator growth), against two peaks: the datasheet's
dense bf16 peak (the usual MFU) and an 8192^3 bf16 matmul measured in the same run.

    python3 bench/gpu_train.py [--models small base] [--steps 200] [--batch-size 32] [--compile]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mixtures.formats import MANIFEST_FORMAT, MANIFEST_VERSION, SHARD_SCHEMA, shard_metadata  # noqa: E402
from mixtures.manifest import load_manifest, write_manifest  # noqa: E402
from mixtures.recipe import load_recipe  # noqa: E402
from trainer.config import resolve  # noqa: E402
from trainer.metrics import PEAK_BF16_FLOPS, flops_per_token  # noqa: E402
from trainer.model import ModelConfig  # noqa: E402
from trainer.overrides import Overrides  # noqa: E402
from trainer.train import train  # noqa: E402

VOCAB = 256_000
SPECIAL = {"pad": 0, "eos": 1, "bos": 2, "unk": 3, "mask": 4}


def write_phase(root: Path, tokens: int, seed: int = 0) -> Path:
    """One stream of random documents holding ``tokens`` tokens, and a pretrain manifest over it."""
    rng = np.random.default_rng(seed)
    ids = np.arange(5, VOCAB)
    zipf = 1.0 / np.arange(1, len(ids) + 1) ** 1.1  # word-like frequencies, so the loss has somewhere to go
    zipf /= zipf.sum()
    rows, count = [], 0
    while count < tokens:
        n = int(np.exp(rng.uniform(np.log(32), np.log(2048))))
        rows.append(np.concatenate([[2], rng.choice(ids, n, p=zipf), [1]]).astype(np.uint32))
        count += n + 2
    relative = "fineweb2/fra_Latn/00000-0000.arrow"
    path = root / "data" / relative
    path.parent.mkdir(parents=True)
    schema = SHARD_SCHEMA.with_metadata(
        shard_metadata("synthetic", "5" * 64, "fineweb2", "fra_Latn", "pretrain")
    )
    table = pa.table({"id": [str(i) for i in range(len(rows))], "input_ids": rows}, schema=schema)
    with pa.OSFile(str(path), "wb") as sink, pyarrow.ipc.new_stream(sink, schema) as writer:
        writer.write_table(table)
    shard = {
        "path": relative,
        "documents": len(rows),
        "tokens": count,
        "bytes": path.stat().st_size,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    recipe = load_recipe()
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "phase": "pretrain",
        "recipe": {"name": recipe.name, "path": str(recipe.path), "sha256": recipe.sha256},
        "tokenizer": {"name": "synthetic", "sha256": "5" * 64, "vocab_size": VOCAB, "special_ids": SPECIAL},
        "training": recipe.phase("pretrain")
        .training.scaled(count / recipe.phase("pretrain").tokens)
        .to_dict(),
        "sampling": {"sampler": "temperature", "temperature": 1.0, "tokens": count, "max_epochs": None},
        "seed": seed,
        "counts": {"kind": "synthetic"},
        "data_root": str(root / "data"),
        "streams": [
            {
                "source": "fineweb2",
                "language": "fra_Latn",
                "available_tokens": count,
                "target_tokens": count,
                "weight": 1.0,
                "expected_epochs": 1.0,
                "capped": False,
                "shards": [shard],
            }
        ],
    }
    write_manifest(manifest, root / "pretrain.json")
    return root / "pretrain.json"


def matmul_flops(size: int = 8192, repeats: int = 10) -> float:
    a, b = (torch.randn(size, size, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["small", "base"])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32, help="sequences of 1024 tokens per step")
    parser.add_argument("--micro-batch-tokens", type=int, default=32768)
    parser.add_argument("--attn", default="auto")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU")
    name = torch.cuda.get_device_name()
    datasheet = next((peak for key, peak in PEAK_BF16_FLOPS.items() if key in name.split()), None)
    measured = matmul_flops()
    print(f"{name}, torch {torch.__version__}; bf16 8192^3 matmul {measured / 1e12:.0f} TFLOP/s", end="")
    print(f", datasheet {datasheet / 1e12:.0f} TFLOP/s" if datasheet else "")
    tokens = args.steps * args.batch_size * 1024
    columns = (("model", "<6"), ("steps", ">5"), ("tokens/s", ">10"), ("MFU", ">6"), ("of matmul", ">10"))
    print(" ".join(f"{name:{align}}" for name, align in columns), f"{'data wait':>10} {'loss':>12}")
    with tempfile.TemporaryDirectory() as scratch:
        manifest = write_phase(Path(scratch), tokens)
        for model in args.models:
            out = Path(scratch) / model
            phase = load_manifest(manifest)
            overrides = Overrides(
                tokens=tokens,
                batch_size=args.batch_size,
                micro_batch_tokens=args.micro_batch_tokens,
                model=model,
                attn_backend=args.attn,
                compile=args.compile,
            )
            config = replace(resolve(phase, overrides, out), save_every_minutes=None)  # one save, at the end
            train(config, phase, device="cuda")
            records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            timed = records[args.warmup :]
            seconds = sum(r["step_time"] + r["data_wait"] for r in timed)
            rate = sum(r["tokens_in_step"] for r in timed) / seconds
            flops = rate * flops_per_token(
                ModelConfig.preset(model, vocab_size=VOCAB), 1024, config.training.mask_rate
            )
            mfu = f"{100 * flops / datasheet:>5.1f}%" if datasheet else "    ?"
            print(
                f"{model:<6} {len(records):>5} {rate:>10,.0f} {mfu} {100 * flops / measured:>9.1f}% "
                f"{100 * sum(r['data_wait'] for r in timed) / seconds:>9.1f}% "
                f"{records[0]['loss']:>5.2f}->{records[-1]['loss']:<5.2f}"
            )


if __name__ == "__main__":
    main()
