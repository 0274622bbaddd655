"""What a run reports: a progress line on the console and one JSON line per step in ``metrics.jsonl``.

Each record holds the phase, step, tokens seen, loss and masked-token accuracy
(over the whole global batch), learning rate, batch size, packing efficiency
(real tokens / micro-batch capacity), tokens per second, the share of the step
spent waiting for data, and MFU where the device's peak is known. A step after which the run
evaluated on held-out data (``--eval-every``, ``trainer/eval.py``) also holds the evaluation's
figures and ``eval_seconds``, which its ``step_time`` leaves out.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mixtures.files import write_atomic
from mixtures.recipe import format_tokens
from trainer.data import StepBatch
from trainer.model import ModelConfig

METRICS_NAME = "metrics.jsonl"
# Dense bf16 peak FLOP/s by device name (vendor datasheets, without sparsity).
PEAK_BF16_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "GH200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
}


class RunFileError(ValueError):
    """A file of the run's own (``metrics.jsonl``, ``loss.png``) cannot be written, a full disk say."""


def cannot_write(path: Path, err: OSError, then: str) -> RunFileError:
    """The one-line error for ``path``, unwritable for ``err``; ``then`` says how to go on."""
    reason = err.strerror or err
    return RunFileError(f"{path}: cannot be written ({reason}); free space on its filesystem, {then}")


RESUME = "then continue with --resume (the checkpoints are intact)"


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``. A line that is not a JSON record, as the last one is when a
    kill interrupted its write, is left out: it is never read as a step, and a resumed run writes
    that step again."""
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def flops_per_token(config: ModelConfig, seq_len: int, mask_rate: float) -> float:
    """Training FLOPs per token: 3x the forward (forward + backward), 2 FLOPs per multiply-add.

    Forward per token and layer: the projections ``2 * (4 h^2 + 3 h I)`` (fused QKV
    and output, GeGLU in and out) plus attention ``4 h c``, with context ``c`` the
    sequence length in global layers and the window in local ones (the usual
    MFU convention, Chowdhery et al. 2022, appendix B); then the MLM head and
    256k decoder at the masked share of tokens only: ``mask_rate * 2 (h^2 + h V)``.
    """
    h, inner = config.hidden_size, config.intermediate_size
    total = 0.0
    for layer in range(config.num_layers):
        context = seq_len if config.is_global(layer) else min(seq_len, config.local_attention + 1)
        total += 2 * (4 * h * h + 3 * h * inner) + 4 * h * context
    total += mask_rate * 2 * (h * h + h * config.vocab_size)
    return 3 * total


def peak_flops(device: torch.device, precision: str) -> float | None:
    """The device's dense peak FLOP/s at this precision, where known (bf16 on listed GPUs)."""
    if device.type != "cuda" or precision != "bf16":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS.items() if key in name.split()), None)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Meter:
    """Turns finished steps into ``metrics.jsonl`` records and a console line (every ``interval`` seconds).

    ``guard``, if given, is called before each record is written: it raises once the
    run belongs to another process, so that this one never writes into it.
    """

    def __init__(
        self,
        run_dir: Path,
        phase: str,
        total_tokens: int,
        flops: float,
        peak: float | None,
        interval: float = 10.0,
        enabled: bool = True,
        guard: Callable[[], None] | None = None,
    ):
        self.path = run_dir / METRICS_NAME
        self.phase, self.total, self.flops, self.peak = phase, total_tokens, flops, peak
        self.interval, self.enabled, self.guard = interval, enabled, guard
        self.started = time.monotonic()
        self.last_print = 0.0
        self.window = self._empty_window()
        self.file = None

    def resume_at(self, step: int) -> None:
        """Keep the records of steps up to ``step`` (the run's start: its checkpoint's step, 0 for a new
        run) and drop the rest, a torn last line too: the run writes those steps again."""
        if not self.enabled or not self.path.exists():
            return
        kept = [record for record in read_records(self.path) if record.get("step", step + 1) <= step]
        try:
            write_atomic(self.path, "".join(json.dumps(record) + "\n" for record in kept))
        except OSError as err:
            raise cannot_write(self.path, err, RESUME) from err

    def log(self, batch: StepBatch, result: dict[str, float], lr: float) -> dict[str, Any]:
        """The record of a finished step (its batch, ``train_step``'s result with any evaluation's figures,
        its lr); written and printed."""
        step_time = time.perf_counter() - batch.received - result.get("eval_seconds", 0.0)
        record = {
            "phase": self.phase,
            "step": batch.step + 1,
            "tokens": batch.state["tokens"],
            "tokens_in_step": batch.tokens,
            **result,
            "lr": lr,
            "batch_sequences": batch.sequences,
            "micro_batches": batch.global_micro_batches,
            "packing": batch.tokens / batch.capacity,
            "step_time": round(step_time, 6),
            "data_wait": round(batch.waited, 6),
        }
        record["tokens_per_s"] = record["tokens_in_step"] / step_time if step_time > 0 else None
        if self.peak and step_time > 0:
            record["mfu"] = record["tokens_in_step"] * self.flops / step_time / self.peak
        if not self.enabled:
            return record
        if self.guard is not None:
            self.guard()
        try:
            if self.file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        except OSError as err:  # a part of the line may be written: --resume cuts a torn last line
            raise cannot_write(self.path, err, RESUME) from err
        window, weight = self.window, record["tokens_in_step"]
        window["tokens"] += weight
        window["time"] += step_time
        window["wait"] += batch.waited
        window["loss"] += record["loss"] * weight
        window["accuracy"] += record["accuracy"] * weight
        now = time.monotonic() - self.started
        if now - self.last_print >= self.interval or record["tokens"] >= self.total:
            self.last_print = now
            print(self._line(record), file=sys.stderr, flush=True)
            self.window = self._empty_window()
        return record

    @staticmethod
    def _empty_window() -> dict[str, float]:
        return {"tokens": 0, "time": 0.0, "wait": 0.0, "loss": 0.0, "accuracy": 0.0}

    def _line(self, record: dict[str, Any]) -> str:
        """The steps since the last line: their mean loss and accuracy, rate and data wait; then the ETA."""
        window = self.window
        rate = window["tokens"] / window["time"] if window["time"] > 0 else 0.0
        tokens = max(window["tokens"], 1)
        left = max(0, self.total - record["tokens"])
        parts = [
            f"{self.phase} step {record['step']}",
            f"{format_tokens(record['tokens'])}/{format_tokens(self.total)} tok "
            f"({100 * record['tokens'] / self.total:.0f}%)",
            f"loss {window['loss'] / tokens:.4f}",
            f"acc {100 * window['accuracy'] / tokens:.1f}%",
            f"lr {record['lr']:.2e}",
            f"{format_tokens(rate)} tok/s",
            f"data wait {100 * window['wait'] / max(window['time'], 1e-9):.1f}%",
        ]
        if self.peak:
            parts.append(f"mfu {100 * rate * self.flops / self.peak:.1f}%")
        parts.append(f"eta {_duration(left / rate) if rate else '?'}")
        return " | ".join(parts)

    def close(self) -> None:
        if self.file is not None:
            file, self.file = self.file, None
            with contextlib.suppress(OSError):  # a failed write has been reported; its flush fails again
                file.close()
