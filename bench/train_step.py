"""CPU tokens/s of full optimizer steps: our training step vs a plain transformers loop, same documents.

One step is data -> forward -> backward over each micro-batch (gradient accumulation) -> optimizer
step, for two model shapes:

- ``tiny``: ``trainer.model.PRESETS["tiny"]`` with the sample tokenizer's vocabulary (8,192);
- ``small``: ``ModelConfig.preset("small", num_layers=4, attention_dropout=0.0)``, vocabulary
  256,000 (the sample's ids are all < 8,192, which the bigger vocabulary holds), cut from 22
  layers to ``--layers`` to keep the run short.

The data is real: the bundled sample's ``pretrain`` phase is built and compiled (150k tokens)
in a temporary directory, as tests/conftest.py does, and read by the trainer's loader with the
phase's settings (seq_len 1024, 30% masking), batch-size warmup off (a constant batch).

- ``ours``: the trainer's own step, ``trainer.train.TrainStep``, for one process, fed by the
  ``MixtureLoader`` behind a ``Prefetcher`` (background thread) as ``trainer.train`` feeds it:
  per micro-batch the dropout seed, ``model(input_ids, cu_seqlens, max_seqlen, labels)``
  (packed, sparse prediction), the loss scaled by the micro-batch's share of the step's
  predictions and ``backward``; then ``StableAdamW.step()`` on ``param_groups``, ``zero_grad``
  and the loss/accuracy read back. Left out: the metrics file and checkpoint checks (after the
  step, no compute). Data wait is the time the loop blocks on the prefetcher's next step; a
  step's wall time includes it.
- ``transformers``: ``ModernBertForMaskedLM`` of the same shape (SDPA attention, the default
  dense logits), ``torch.optim.AdamW``, same gradient accumulation and loss scaling. Its
  process rebuilds the same loader (deterministic) and splits each of our micro-batches back
  into its documents (same masked inputs and labels), padded to the longest one with an
  attention mask and labels -100 at padding: one of its micro-batches holds the documents of
  one of ours. Its batches are prepared before timing, so it pays nothing for data.

Both start from the same weights (ours, copied into the transformers model), so their first
step's loss must agree: that is checked, proof that they saw the same tokens and labels.
Each contender runs in its own process with ``torch.set_num_threads(2)``; after ``--warmup``
steps (the first allocates the optimizer state), ``--rounds`` rounds of ``--steps`` steps are
timed and the fastest round counts (other load only ever slows one down). Our model FLOP/s
(``trainer.metrics.flops_per_token`` x tokens/s) is compared with a large fp32 matmul's FLOP/s
measured in the same run, the CPU's practical peak. Goals: ours >= 2x transformers, data
wait < 5% of our step time.

Steps (``--batch``, ``--micro-batch-tokens``): ``tiny`` takes the tests' CPU run, 16 x 1024
tokens in micro-batches of 4,096 (four per step). ``small`` takes 4 x 1024 in micro-batches of
1,024 (four per step): the peer's dense 256k logits cost it about 25 s and 8 GB per such step on
two cores, so a bigger one would not fit the run's few minutes. Run on a quiet machine: other
processes on the same cores slow ours (many small ops, each a thread barrier) far more than the
peer, so the load averages printed before and after are part of the result.

    .venv/bin/python bench/train_step.py [--shapes tiny small] [--layers 4] [--steps N]
        [--rounds 1] [--warmup 1] [--batch N] [--micro-batch-tokens N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.model import THREADS, matmul_flops, padded, transformers_model  # noqa: E402
from bench.sample import MIXTURE_TOKENS, sample_manifest  # noqa: E402
from mixtures.formats import TokenizerRecord  # noqa: E402
from mixtures.manifest import load_manifest  # noqa: E402
from trainer.config import TrainConfig, model_config, resolve, tokenizer_record  # noqa: E402
from trainer.data import MixtureData, MixtureLoader, Prefetcher  # noqa: E402
from trainer.distributed import Dist  # noqa: E402
from trainer.masking import Masking  # noqa: E402
from trainer.metrics import flops_per_token  # noqa: E402
from trainer.model import ModelConfig, ModernBertMLM  # noqa: E402
from trainer.optim import make_optimizer  # noqa: E402
from trainer.overrides import Overrides  # noqa: E402
from trainer.packing import PackedBatch  # noqa: E402
from trainer.schedule import lr_at  # noqa: E402
from trainer.train import TrainStep  # noqa: E402

PHASE = "pretrain"
CONTENDERS = ("ours", "transformers")
GOAL_RATIO, GOAL_WAIT = 2.0, 0.05
WIDTHS = (12, 10, 7, 14, 11, 11)  # of the table's columns after the shape
LOSS_TOLERANCE = 1e-3  # relative: fp32 sums in another order


@dataclass(frozen=True)
class Setting:
    batch: int  # sequences of seq_len per step
    micro_batch_tokens: int
    steps: int  # timed steps per round


# tiny: the tests' CPU run (16 x 1024 tokens in 4 micro-batches). small: a 256k-vocabulary step the
# transformers peer can take in seconds: its dense logits cost 2 x 384 x 256,000 FLOPs per padded token.
SETTINGS = {"tiny": Setting(16, 4096, 4), "small": Setting(4, 1024, 2)}


def shape_config(shape: str, layers: int, config: TrainConfig, tokenizer: TokenizerRecord) -> ModelConfig:
    """The model as ``_train`` builds it: a preset (tiny), or an --init model's shape (small)."""
    if shape == "tiny":
        return model_config(config, tokenizer, None)
    base = ModelConfig.preset("small", num_layers=layers, attention_dropout=0.0)
    return model_config(config, tokenizer, base)


def setup(manifest_path: str, shape: str, layers: int, setting: Setting):
    """The run's config, the model's shape and a fresh loader, all as ``trainer.train._train`` makes them."""
    manifest = load_manifest(manifest_path)
    tokenizer = tokenizer_record(manifest)
    overrides = Overrides(
        batch_size=setting.batch,
        micro_batch_tokens=setting.micro_batch_tokens,
        model="tiny" if shape == "tiny" else None,
    )
    config = resolve(manifest, overrides, out=os.devnull)  # nothing is written
    training, special = config.training, tokenizer.special_ids
    loader = MixtureLoader(
        MixtureData(manifest, seed=config.seed),
        seq_len=training.seq_len,
        micro_batch_tokens=config.micro_batch_tokens,
        batch_size_at=lambda tokens: setting.batch,
        masking=Masking(training.mask_rate, special["mask"], tuple(special.values()), tokenizer.vocab_size),
        seed=config.seed,
        pad_id=special["pad"],
    )
    return config, shape_config(shape, layers, config, tokenizer), loader


def run_ours(config: TrainConfig, shape: ModelConfig, loader: MixtureLoader, warmup: int, total: int):
    """``total`` steps of ``trainer.train.TrainStep``: per step (tokens, wall s, data wait s, loss)."""
    training = config.training
    torch.manual_seed(config.seed)
    model = ModernBertMLM(shape, attn_backend=config.attn_backend)
    dist = Dist(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    fp32 = torch.autocast("cpu", enabled=False)  # as the trainer runs on the CPU
    train_step = TrainStep(model, make_optimizer(model, training), dist, fp32, config.seed)
    model.train()
    steps = []
    prefetch = Prefetcher(loader)
    waited = time.perf_counter()
    try:
        for batch in prefetch:
            started = time.perf_counter()
            lr = lr_at(batch.tokens_before + batch.tokens, training.lr, config.tokens)
            result = train_step(batch, lr)
            steps.append((batch.tokens, time.perf_counter() - waited, started - waited, result["loss"]))
            if len(steps) == warmup + total:
                break
            waited = time.perf_counter()
    finally:
        prefetch.close()
    return steps


def documents(micro: PackedBatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A packed micro-batch split back into its documents: (masked input ids, labels) each."""
    bounds = micro.cu_seqlens.tolist()
    return [
        (micro.input_ids[start:end], micro.labels[start:end])
        for start, end in zip(bounds, bounds[1:], strict=False)
        if end > start
    ]


def run_transformers(config: TrainConfig, shape: ModelConfig, loader: MixtureLoader, warmup: int, total: int):
    """A plain transformers loop over the same documents, padded per micro-batch; same per-step figures."""
    training, opt = config.training, config.training.optimizer
    torch.manual_seed(config.seed)
    weights = ModernBertMLM(shape).state_dict()  # ours, so both start alike
    model = transformers_model(shape, sparse=False)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise SystemExit(f"weights do not map onto transformers: missing {missing}, unexpected {unexpected}")
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=training.lr.peak, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay
    )
    work = []
    for _ in range(warmup + total):
        batch = loader.next_step()
        micro_batches = [
            (padded(documents(m), shape.pad_token_id), m.predictions) for m in batch.micro_batches
        ]
        work.append((batch.tokens, micro_batches))
    steps = []
    for tokens, micro_batches in work:
        started = time.perf_counter()
        predictions = sum(count for _, count in micro_batches)
        loss_sum = torch.zeros(())
        for inputs, count in micro_batches:
            out = model(**inputs)
            (out.loss * (count / max(predictions, 1))).backward()
            loss_sum += out.loss.detach() * count
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_sum.item() / max(predictions, 1)
        steps.append((tokens, time.perf_counter() - started, 0.0, loss))
    return steps


def run_contender(args: argparse.Namespace) -> dict:
    torch.set_num_threads(THREADS)
    setting = settings(args, args.shape)
    config, shape, loader = setup(args.manifest, args.shape, args.layers, setting)
    run = run_ours if args.contender == "ours" else run_transformers
    steps = run(config, shape, loader, args.warmup, args.rounds * setting.steps)
    timed = steps[args.warmup :]
    rounds = []
    for r in range(args.rounds):
        window = timed[r * setting.steps : (r + 1) * setting.steps]
        rounds.append(
            {key: sum(step[i] for step in window) for i, key in enumerate(("tokens", "seconds", "wait"))}
        )
    return {
        "rounds": rounds,
        "first_loss": steps[0][3],
        "warmup_seconds": sum(step[1] for step in steps[: args.warmup]),
    }


def settings(args: argparse.Namespace, shape: str) -> Setting:
    default = SETTINGS[shape]
    return Setting(
        args.batch or default.batch,
        args.micro_batch_tokens or default.micro_batch_tokens,
        args.steps or default.steps,
    )


def subprocess_json(command: list[str]) -> dict:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"{' '.join(command[1:4])}... failed with exit status {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", nargs="+", choices=tuple(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--layers", type=int, default=4, help="encoder layers of small (the preset has 22)")
    parser.add_argument(
        "--steps", type=int, help="timed steps per round (default: " + _defaults("steps") + ")"
    )
    parser.add_argument("--rounds", type=int, default=1, help="timed rounds; the fastest counts")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--batch", type=int, help="sequences per step (default: " + _defaults("batch") + ")")
    parser.add_argument(
        "--micro-batch-tokens",
        type=int,
        help="our micro-batch capacity (default: " + _defaults("micro_batch_tokens") + ")",
    )
    parser.add_argument("--contender", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--shape", choices=tuple(SETTINGS), help=argparse.SUPPRESS)
    parser.add_argument("--manifest", help=argparse.SUPPRESS)
    parser.add_argument("--prepare", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        print(json.dumps({"manifest": str(sample_manifest(Path(args.prepare), PHASE, MIXTURE_TOKENS))}))
        return
    if args.contender:
        print(json.dumps(run_contender(args)))
        return

    passed = ["--layers", str(args.layers), "--rounds", str(args.rounds), "--warmup", str(args.warmup)]
    for flag in ("steps", "batch", "micro_batch_tokens"):
        if getattr(args, flag):
            passed += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    print(f"load average before: {os.getloadavg()[0]:.2f}; {THREADS} threads per contender")
    matmul_before = matmul_flops()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-train-step-") as tmp:
        started = time.perf_counter()
        # The build logs through datatrove: in its own process, so only a failure shows it.
        manifest = subprocess_json([sys.executable, __file__, "--prepare", tmp])["manifest"]
        print(
            f"data: the sample's {PHASE} phase built and compiled ({MIXTURE_TOKENS:,} tokens) in "
            f"{time.perf_counter() - started:.1f} s"
        )
        for name in args.shapes:
            setting = settings(args, name)
            config, shape, _ = setup(manifest, name, args.layers, setting)
            training = config.training
            model_flops = flops_per_token(shape, training.seq_len, training.mask_rate)
            print(
                f"{name}: {shape.num_layers} layers, hidden {shape.hidden_size}, vocab {shape.vocab_size:,}; "
                f"{setting.batch} x {training.seq_len} tokens per step in micro-batches of "
                f"{setting.micro_batch_tokens:,}; {training.mask_rate:.0%} masked; {args.warmup} warm-up "
                f"step(s), best of {args.rounds} round(s) of {setting.steps} step(s)"
            )
            results = {}
            for contender in CONTENDERS:
                command = [sys.executable, __file__, "--contender", contender, "--shape", name]
                results[contender] = r = subprocess_json([*command, "--manifest", manifest, *passed])
                rounds = "; ".join(
                    f"{x['tokens'] / x['seconds']:,.0f} tokens/s, {x['seconds'] / setting.steps:.2f} s/step"
                    + (f", data wait {x['wait'] / x['seconds']:.2%}" if contender == "ours" else "")
                    for x in r["rounds"]
                )
                print(
                    f"  {contender:>12}: {rounds}; warm-up {r['warmup_seconds']:.1f} s; "
                    f"first-step loss {r['first_loss']:.5f}"
                )
            ours, peer = (
                max(results[c]["rounds"], key=lambda x: x["tokens"] / x["seconds"]) for c in CONTENDERS
            )
            first = [results[c]["first_loss"] for c in CONTENDERS]
            if abs(first[0] - first[1]) > LOSS_TOLERANCE * abs(first[0]):
                raise SystemExit(
                    f"{name}: the contenders' first-step losses differ: {first}; not the same data"
                )
            rows.append((name, ours, peer, model_flops))
    peak = max(matmul_before, matmul_flops())
    print(f"fp32 4096x4096 matmul: {peak / 1e9:.1f} GFLOP/s (best of before/after)")
    print()
    columns = ("ours tok/s", "hf tok/s", "ratio", "ours GFLOP/s", "of matmul", "data wait")
    header = f"{'shape':<6}" + "".join(
        f"{title:>{width}}" for title, width in zip(columns, WIDTHS, strict=True)
    )
    print(header)
    for name, ours, peer, model_flops in rows:
        rate, peer_rate = ours["tokens"] / ours["seconds"], peer["tokens"] / peer["seconds"]
        achieved, wait = rate * model_flops, ours["wait"] / ours["seconds"]
        cells = (
            f"{rate:,.0f}",
            f"{peer_rate:,.0f}",
            f"{rate / peer_rate:.2f}x",
            f"{achieved / 1e9:.1f}",
            f"{achieved / peak:.0%}",
            f"{wait:.2%}",
        )
        print(f"{name:<6}" + "".join(f"{cell:>{width}}" for cell, width in zip(cells, WIDTHS, strict=True)))
    print()
    for name, ours, peer, _ in rows:
        ratio = (ours["tokens"] / ours["seconds"]) / (peer["tokens"] / peer["seconds"])
        wait = ours["wait"] / ours["seconds"]
        print(f"ratio ours / transformers, {name}: {ratio:.2f}x (goal >= {GOAL_RATIO:.1f})")
        print(f"data wait of our steps, {name}: {wait:.2%} (goal < {GOAL_WAIT:.0%})")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def _defaults(field: str) -> str:
    return ", ".join(f"{name} {getattr(setting, field)}" for name, setting in SETTINGS.items())


if __name__ == "__main__":
    main()
