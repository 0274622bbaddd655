"""Masked-language-model corruption of a packed row: exactly the phase's rate, 80/10/10.

As in BERT's data generation (Devlin et al. 2019, ``create_pretraining_data``:
``num_to_predict = round(len * masked_lm_prob)``), the number of positions to
predict is fixed per row rather than drawn token by token, so the realised mask
rate is the phase's rate up to rounding on every row. Of the chosen positions,
80% become ``<mask>``, 10% a random token and 10% stay as they are; special
tokens (pad, bos, eos, unk, mask) are never chosen, and random replacements are
drawn from the tokenizer's non-special vocabulary.

The generator is passed in: the loader seeds it from (seed, step, micro-batch),
so any step's masks can be rebuilt without replaying the ones before.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainer.model import IGNORE_INDEX


@dataclass(frozen=True)
class Masking:
    """What the masking needs to know of the phase and the tokenizer."""

    rate: float
    mask_id: int
    special_ids: tuple[int, ...]  # never masked, never drawn as a replacement
    vocab_size: int  # the tokenizer's: replacements are drawn from [0, vocab_size) minus special_ids

    def __post_init__(self):
        if not 0.0 < self.rate < 1.0:
            raise ValueError(f"mask rate must be in (0, 1), got {self.rate}")
        if self.vocab_size <= len(set(self.special_ids)):
            raise ValueError(f"a vocabulary of {self.vocab_size} leaves no non-special token to draw")


def maskable(input_ids: np.ndarray, masking: Masking) -> np.ndarray:
    """Which positions of ``input_ids`` may be masked: every one but the special tokens."""
    return ~np.isin(input_ids, np.array(masking.special_ids, dtype=input_ids.dtype))


def choose_positions(input_ids: np.ndarray, masking: Masking, rng: np.random.Generator) -> np.ndarray:
    """The positions of ``input_ids`` ``[T]`` to predict, in a random order: ``round(rate * maskable)``
    of the maskable ones, uniformly. Draws nothing from ``rng`` when that count is zero.

    Training masks a packed row with it (:func:`mask_tokens`), evaluation one document at a
    time (``trainer/eval.py``).
    """
    allowed = maskable(input_ids, masking)
    count = round(masking.rate * int(allowed.sum()))
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    keys = rng.random(input_ids.shape[0])
    keys[~allowed] = 2.0  # above every draw in [0, 1): never among the smallest `count`
    chosen = np.argpartition(keys, count - 1)[:count]
    return chosen[np.argsort(keys[chosen], kind="stable")]


def mask_tokens(
    input_ids: np.ndarray, masking: Masking, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``(inputs, labels)`` for one row ``[T]``: labels hold the original id where a prediction is made."""
    chosen = choose_positions(input_ids, masking, rng)  # in a random order, to split 80/10/10
    count = len(chosen)
    inputs = input_ids.astype(np.int64)
    labels = np.full(input_ids.shape, IGNORE_INDEX, dtype=np.int64)
    if count == 0:
        return inputs, labels
    labels[chosen] = inputs[chosen]
    to_mask, to_random = round(0.8 * count), round(0.1 * count)
    inputs[chosen[:to_mask]] = masking.mask_id
    inputs[chosen[to_mask : to_mask + to_random]] = random_tokens(to_random, masking, rng)
    return inputs, labels


def random_tokens(count: int, masking: Masking, rng: np.random.Generator) -> np.ndarray:
    """``count`` ids uniform over the non-special vocabulary."""
    specials = sorted({i for i in masking.special_ids if i < masking.vocab_size})
    ids = rng.integers(0, masking.vocab_size - len(specials), size=count)
    for special in specials:  # shift past each special id in turn: a bijection onto the others
        ids += ids >= special
    return ids
