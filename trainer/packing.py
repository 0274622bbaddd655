"""Packing a step's sequences into micro-batches, and one micro-batch into the model's packed row.

A step has micro-batches of given token capacities. :func:`pack` fills them
by greedy best fit: sequences carried over from the step before go first, in
order (so none waits more than a step or two), then new sequences are pulled
until they cover the free space, sorted longest first, and each placed into the
fullest bin that still has room (best fit decreasing). What does not fit is
carried to the next step. The result depends only on the carried list and the
sequences pulled, which is what makes a step rebuildable from the loader state.

A bin holds at most ``max_documents`` sequences, so that ``cu_seqlens`` can be
padded to a fixed length for ``torch.compile`` (see :func:`assemble`).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from trainer.masking import Masking, mask_tokens, maskable
from trainer.model import IGNORE_INDEX

T = TypeVar("T")


def pack(
    carried: Sequence[T],
    pull: Callable[[], T],
    length: Callable[[T], int],
    capacities: Sequence[int],
    max_documents: int,
) -> tuple[list[list[T]], list[T]]:
    """``(bins, still carried)``: the step's sequences in one list per capacity, and those left over.

    Every sequence must fit the smallest capacity. Bins are kept in a sorted
    list of ``remaining * bins + index`` keys, so the best fit is one bisection.
    """
    bins = len(capacities)
    packed: list[list[T]] = [[] for _ in range(bins)]
    keys = sorted(capacity * bins + index for index, capacity in enumerate(capacities))  # all empty
    left: list[T] = []

    def place(item: T) -> bool:
        size = length(item)
        position = bisect.bisect_left(keys, size * bins)  # the first bin with remaining >= size
        if position == len(keys):
            return False
        key = keys.pop(position)
        remaining, index = divmod(key, bins)
        packed[index].append(item)
        if len(packed[index]) < max_documents and remaining > size:
            bisect.insort(keys, (remaining - size) * bins + index)
        return True

    left.extend(item for item in carried if not place(item))
    free = sum(key // bins for key in keys)
    pulled, pulled_tokens = [], 0
    while keys and pulled_tokens < free:
        item = pull()
        pulled.append(item)
        pulled_tokens += length(item)
    for _, item in sorted(enumerate(pulled), key=lambda pair: -length(pair[1])):
        if not place(item):
            left.append(item)
    return packed, left


@dataclass
class PackedBatch:
    """One micro-batch: documents back to back in one row, as ``ModernBertMLM.forward`` takes them."""

    input_ids: torch.Tensor  # [T] int64, after masking
    labels: torch.Tensor  # [T] int64, IGNORE_INDEX where nothing is predicted
    cu_seqlens: torch.Tensor  # [documents + 1] int32: where each document starts, then T
    max_seqlen: int
    tokens: int  # real tokens, padding excluded
    predictions: int  # positions with a label
    maskable: int  # positions that could have had one (all but special tokens): predictions / maskable = rate

    def to(self, device: torch.device) -> PackedBatch:
        move = {"device": device, "non_blocking": True}
        return PackedBatch(
            self.input_ids.to(**move),
            self.labels.to(**move),
            self.cu_seqlens.to(**move),
            self.max_seqlen,
            self.tokens,
            self.predictions,
            self.maskable,
        )


def assemble(
    documents: Sequence[np.ndarray],
    masking: Masking,
    rng: np.random.Generator,
    pad_id: int,
    pad_to: tuple[int, int, int] | None = None,
) -> PackedBatch:
    """Concatenate ``documents`` into one masked row with its ``cu_seqlens`` (computed on the CPU).

    ``pad_to = (tokens, cu_seqlens entries, max_seqlen)`` gives every micro-batch
    the same shapes, so a compiled model is not recompiled per batch: the row is
    filled with pad-token documents of at most ``max_seqlen`` (no labels) and
    ``cu_seqlens`` is extended with empty documents.
    """
    lengths = [len(doc) for doc in documents]
    tokens = sum(lengths)
    row = np.concatenate(documents) if documents else np.zeros(0, dtype=np.int64)
    inputs, labels = mask_tokens(row, masking, rng)
    max_seqlen = max(lengths, default=0)
    if pad_to is not None:
        size, entries, max_seqlen = pad_to
        padding = size - tokens
        if padding < 0 or max(lengths, default=0) > max_seqlen:
            raise ValueError(f"a micro-batch of {tokens} tokens does not fit the padded shape {pad_to}")
        lengths += [max_seqlen] * (padding // max_seqlen) + (
            [padding % max_seqlen] if padding % max_seqlen else []
        )
        inputs = np.concatenate([inputs, np.full(padding, pad_id, dtype=np.int64)])
        labels = np.concatenate([labels, np.full(padding, IGNORE_INDEX, dtype=np.int64)])
        if len(lengths) + 1 > entries:
            raise ValueError(f"{len(lengths)} documents do not fit {entries} cu_seqlens entries")
        lengths += [0] * (entries - 1 - len(lengths))
    cu_seqlens = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=cu_seqlens[1:])
    return PackedBatch(
        input_ids=torch.from_numpy(inputs),
        labels=torch.from_numpy(labels),
        cu_seqlens=torch.from_numpy(cu_seqlens),
        max_seqlen=max(max_seqlen, 1),
        tokens=tokens,
        predictions=int((labels != IGNORE_INDEX).sum()),
        maskable=int(maskable(row, masking).sum()),
    )
