"""Best-fit packing of a step, and the packed row the model takes."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.masking import Masking
from trainer.model import IGNORE_INDEX, ModelConfig, ModernBertMLM
from trainer.packing import assemble, pack

MASKING = Masking(0.3, mask_id=4, special_ids=(0, 1, 2, 3, 4), vocab_size=1024)


def packed(lengths, carried=(), bins=4, capacity=1024, max_documents=64):
    source = itertools.cycle(lengths)  # a stream that does not run dry, like the blend
    return pack(list(carried), lambda: next(source), lambda n: n, [capacity] * bins, max_documents)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(1, 1024), min_size=1, max_size=200),
    st.lists(st.integers(1, 1024), max_size=6),
    st.integers(1, 8),
    st.integers(2, 64),
)
def test_packing_respects_capacity_and_loses_nothing(lengths, carried, bins, max_documents):
    plan, left = packed(lengths, carried, bins, 1024, max_documents)
    assert len(plan) == bins
    assert all(sum(b) <= 1024 and len(b) <= max_documents for b in plan)
    used = sorted([n for b in plan for n in b] + left)
    pulled = len(used) - len(carried)
    assert used == sorted(
        list(carried) + list(itertools.islice(itertools.cycle(lengths), pulled))
    )  # every sequence is placed or carried, once


def test_carried_sequences_go_first_and_bins_are_nearly_full():
    rng = random.Random(0)
    lengths = [rng.randint(20, 600) for _ in range(20_000)]
    source = iter(lengths)
    carried, fill = [], []
    for _ in range(100):
        plan, left = pack(carried, lambda: next(source), lambda n: n, [4096] * 8, 512)
        assert all(item in [n for b in plan for n in b] for item in carried[:4])  # the oldest are placed
        carried = left
        fill.append(sum(map(sum, plan)) / (8 * 4096))
    assert np.mean(fill) > 0.97 and len(carried) < 10


def test_packing_is_deterministic():
    lengths = [random.Random(1).randint(1, 900) for _ in range(300)]
    assert packed(lengths, [500, 30]) == packed(lengths, [500, 30])


def test_assemble_builds_cu_seqlens_and_masks():
    documents = [np.array([2, 10, 11, 12, 1]), np.array([2, 20, 1]), np.array([2, 30, 31, 1])]
    batch = assemble(documents, MASKING, np.random.default_rng(0), pad_id=0)
    assert batch.cu_seqlens.tolist() == [0, 5, 8, 12] and batch.cu_seqlens.dtype == torch.int32
    assert batch.max_seqlen == 5 and batch.tokens == 12 and batch.maskable == 6
    assert batch.predictions == round(0.3 * 6) == (batch.labels != IGNORE_INDEX).sum()


def test_fixed_shapes_do_not_change_the_loss():
    rng = np.random.default_rng(3)
    documents = [np.concatenate([[2], rng.integers(5, 1024, n), [1]]) for n in (40, 7, 120, 300)]
    model = ModernBertMLM(ModelConfig.preset("tiny")).eval()
    plain = assemble(documents, MASKING, np.random.default_rng(5), pad_id=0)
    fixed = assemble(documents, MASKING, np.random.default_rng(5), pad_id=0, pad_to=(1024, 24, 512))
    assert fixed.input_ids.shape == (1024,) and fixed.cu_seqlens.shape == (24,)
    assert fixed.tokens == plain.tokens and fixed.predictions == plain.predictions
    with torch.no_grad():
        a = model(plain.input_ids, plain.cu_seqlens, plain.max_seqlen, plain.labels).loss
        b = model(fixed.input_ids, fixed.cu_seqlens, fixed.max_seqlen, fixed.labels).loss
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="does not fit the padded shape"):
        assemble(documents, MASKING, np.random.default_rng(5), pad_id=0, pad_to=(256, 24, 512))
