"""Learning-rate and batch-size schedules: pure functions of the tokens seen in a phase.

Counted in tokens, not steps, because the recipe states every amount in tokens
and the batch (in tokens) changes during batch-size warmup. Being pure, the
value at any point of a run follows from the tokens seen alone, so a resumed
run needs no scheduler state.

The learning rate of a step is the schedule at the tokens seen once that step
is done: warmup starts above zero and a decay ends exactly at its floor on the
phase's last step. The batch of a step is decided by the tokens seen before it.
"""

from __future__ import annotations

from mixtures.recipe import LRSchedule, TrainingSpec
from mixtures.schedules import DECAYS


def lr_at(tokens: int, spec: LRSchedule, total: int) -> float:
    """The learning rate after ``tokens`` of a phase of ``total`` tokens.

    Linear warmup from 0 to ``peak`` over ``warmup_tokens``; then ``peak`` for the
    constant schedules, or for a decay ``peak * (f + (1 - f) * shape(p))``, with
    ``p`` the fraction of the tokens after warmup seen so far, ``f`` the
    ``final_fraction`` and the decay's shape from ``mixtures.schedules.DECAYS``
    (mmBERT's ``one_minus_sqrt``: ``1 - sqrt(p)``).
    """
    if tokens < spec.warmup_tokens:
        return spec.peak * tokens / spec.warmup_tokens
    if spec.schedule not in DECAYS:
        return spec.peak
    progress = min(1.0, (tokens - spec.warmup_tokens) / max(1, total - spec.warmup_tokens))
    shape = DECAYS[spec.schedule](progress)
    return spec.peak * (spec.final_fraction + (1.0 - spec.final_fraction) * shape)


def batch_size_at(tokens: int, spec: TrainingSpec) -> int:
    """Sequences (of ``seq_len`` tokens) in the step that starts after ``tokens``.

    Batch-size warmup: linear from ``batch_warmup_min`` to ``batch_size`` over the
    first ``batch_warmup_tokens`` tokens (ModernBERT's ramp), rounded down.
    """
    if tokens >= spec.batch_warmup_tokens:
        return spec.batch_size
    grown = (spec.batch_size - spec.batch_warmup_min) * tokens // spec.batch_warmup_tokens
    return spec.batch_warmup_min + grown


def micro_batch_sizes(sequences: int, seq_len: int, micro_batch_tokens: int, batch_size: int) -> list[int]:
    """The token capacities of the packed micro-batches of a step of ``sequences`` sequences.

    At the full ``batch_size`` they add up to exactly ``sequences * seq_len``, so a
    step trains the batch it asks for, however small: as few micro-batches as hold
    it within ``micro_batch_tokens`` each, as even as whole tokens allow (ranks
    wait little for each other), each at least ``seq_len`` (there are at most
    ``sequences``). A batch of whole micro-batches gets exactly those.

    Batch warmup's smaller steps are the nearest whole number of full
    micro-batches (half up, at least one), as long as that stays within the full
    batch: the ramp is approximate anyway and its micro-batches keep one shape.
    Beyond the full batch, the step's own tokens are split as a full batch's are.
    """
    tokens = sequences * seq_len
    whole = max(1, (tokens + micro_batch_tokens // 2) // micro_batch_tokens)
    if sequences < batch_size and whole * micro_batch_tokens <= batch_size * seq_len:
        return [micro_batch_tokens] * whole
    count = -(-tokens // micro_batch_tokens)
    size, larger = divmod(tokens, count)
    return [size + 1] * larger + [size] * (count - larger)


def describe_step(sequences: int, seq_len: int, micro_batch_tokens: int) -> str:
    """The banner's words for a full step: the batch, its tokens, and the micro-batches that hold them."""
    sizes = micro_batch_sizes(sequences, seq_len, micro_batch_tokens, sequences)
    each = f"{sizes[0]:,}" if sizes[0] == sizes[-1] else f"{sizes[-1]:,} to {sizes[0]:,}"
    return (
        f"batch {sequences} x {seq_len} = {sum(sizes):,} tokens per step, in {len(sizes)} "
        f"micro-batch{'es' if len(sizes) > 1 else ''} of {each}"
    )
