"""MLM masking: the exact rate, 80/10/10, never a special token, replacements from the plain vocabulary."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.masking import Masking, mask_tokens, random_tokens
from trainer.model import IGNORE_INDEX

SPECIAL = (0, 1, 2, 3, 4)  # pad eos bos unk mask, Gemma 2's ids


def documents(rng: np.random.Generator, count: int = 40) -> np.ndarray:
    """Documents wrapped in bos/eos, with some unk and pad tokens inside, concatenated."""
    parts = []
    for _ in range(count):
        body = rng.integers(5, 1000, size=int(rng.integers(1, 300)))
        body[rng.random(body.shape) < 0.02] = 3
        parts.append(np.concatenate([[2], body, [1]]))
    return np.concatenate(parts).astype(np.uint32)


@pytest.mark.parametrize("rate", [0.30, 0.15, 0.05])
def test_exactly_the_rate_and_never_a_special_token(rate):
    masking = Masking(rate, mask_id=4, special_ids=SPECIAL, vocab_size=1000)
    rng = np.random.default_rng(1)
    row = documents(rng)
    inputs, labels = mask_tokens(row, masking, rng)
    special = np.isin(row, SPECIAL)
    chosen = labels != IGNORE_INDEX
    assert chosen.sum() == round(rate * (~special).sum())  # the realised rate is the rate, up to rounding
    assert not (chosen & special).any()
    np.testing.assert_array_equal(labels[chosen], row[chosen])
    np.testing.assert_array_equal(inputs[~chosen], row[~chosen])  # nothing else changes
    masked = inputs[chosen] == 4
    kept = inputs[chosen] == row[chosen]
    assert masked.sum() == round(0.8 * chosen.sum())
    assert masked.sum() + kept.sum() >= round(0.9 * chosen.sum())  # a random draw may equal the original
    replaced = inputs[chosen][~masked]
    assert not np.isin(replaced, SPECIAL).any() and replaced.max() < 1000


def test_the_same_generator_seed_gives_the_same_masks():
    masking = Masking(0.3, mask_id=4, special_ids=SPECIAL, vocab_size=1000)
    row = documents(np.random.default_rng(0))
    first = mask_tokens(row, masking, np.random.default_rng([7, 1, 3, 0]))
    again = mask_tokens(row, masking, np.random.default_rng([7, 1, 3, 0]))
    other = mask_tokens(row, masking, np.random.default_rng([7, 1, 3, 1]))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[1], other[1])


def test_random_replacements_cover_exactly_the_non_special_vocabulary():
    masking = Masking(0.3, mask_id=4, special_ids=(0, 1, 2, 3, 4, 9), vocab_size=12)
    drawn = random_tokens(20_000, masking, np.random.default_rng(0))
    assert set(drawn.tolist()) == {5, 6, 7, 8, 10, 11}
    counts = np.bincount(drawn, minlength=12)[[5, 6, 7, 8, 10, 11]]
    assert counts.min() > 0.8 * counts.mean()  # uniform


def test_rows_without_maskable_tokens_and_bad_settings():
    masking = Masking(0.3, mask_id=4, special_ids=SPECIAL, vocab_size=1000)
    inputs, labels = mask_tokens(np.array([2, 1, 0, 0], dtype=np.uint32), masking, np.random.default_rng(0))
    assert (labels == IGNORE_INDEX).all() and inputs.tolist() == [2, 1, 0, 0]
    with pytest.raises(ValueError, match="mask rate"):
        Masking(1.0, mask_id=4, special_ids=SPECIAL, vocab_size=1000)
    with pytest.raises(ValueError, match="no non-special token"):
        Masking(0.3, mask_id=4, special_ids=SPECIAL, vocab_size=5)
