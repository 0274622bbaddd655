"""Attention over packed, unpadded batches, behind flash-attn's varlen contract.

Every backend takes ``q, k, v`` of shape ``[total_tokens, heads, head_dim]`` holding
several documents back to back, ``cu_seqlens`` (int32, ``[documents + 1]``, the
offsets where documents start, ending with ``total_tokens``), ``max_seqlen`` and
``window``: ``None`` for global attention over the whole document, or ``w`` for a
sliding window in which a token sees the tokens at distance ``<= w`` on each side
(flash-attn's ``window_size=(w, w)``; ModernBERT's ``local_attention=128`` is
``w = 64``). Attention never crosses a document boundary.

Backends:

- ``flash``: ``flash_attn_varlen_func`` (CUDA, fp16/bf16, flash-attn installed).
- ``flex``: torch FlexAttention with a document + sliding-window block mask
  (CUDA; on CPU it has no backward, so it is never chosen there automatically).
- ``sdpa``: exact and fused on any device: one SDPA call per document for global
  layers, and for window layers one batched SDPA call over blocks of ``w``
  queries that each see the three neighbouring key blocks.
- ``dense``: the definition of the semantics, an explicitly masked
  ``[tokens, tokens]`` softmax; quadratic in the batch, used to check the others.

``auto`` picks flash, then flex on CUDA, and sdpa elsewhere.

Everything that depends only on the batch's layout (the backend, FlexAttention's
block masks, the window masks, the document lengths) is built once per batch by
:func:`prepare` and shared by every layer (:class:`PackedAttention`), so no layer
rebuilds it and nothing is cached behind the caller's back.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

BACKENDS = ("auto", "flash", "flex", "sdpa", "dense")


def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def resolve_backend(name: str, device: torch.device, dtype: torch.dtype) -> str:
    """The backend ``name`` means for inputs on ``device`` in ``dtype`` (``auto`` becomes a concrete one)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r} (choose from {', '.join(BACKENDS)})")
    if name != "auto":
        return name
    if device.type == "cuda":
        if flash_attn_available() and dtype in (torch.float16, torch.bfloat16):
            return "flash"
        return "flex"
    return "sdpa"


@dataclass
class PackedAttention:
    """One packed batch as every attention layer sees it: its backend, and what that backend needs.

    ``masks`` holds, per window (``None`` for global), the backend's mask for the batch:
    FlexAttention block masks, the sdpa window's additive mask, or dense boolean masks.
    """

    backend: str
    cu_seqlens: Tensor
    max_seqlen: int
    lengths: list[int] = field(default_factory=list)  # documents' lengths (sdpa's split sizes)
    masks: dict[int | None, Any] = field(default_factory=dict)


def prepare(
    cu_seqlens: Tensor,
    max_seqlen: int,
    windows: Iterable[int | None],
    backend: str,
    device: torch.device,
    dtype: torch.dtype,
) -> PackedAttention:
    """Resolve the backend and build its masks for a batch, once, for every ``window`` its layers use."""
    backend = resolve_backend(backend, device, dtype)
    total = int(cu_seqlens[-1])
    prepared = PackedAttention(backend, cu_seqlens.to(torch.int32), max_seqlen)
    for window in set(windows):
        if window is not None and window < 0:
            raise ValueError(f"window must be None (global) or >= 0, got {window}")
        if backend == "flex":
            prepared.masks[window] = _flex_block_mask(cu_seqlens, total, window)
        elif backend == "sdpa" and window is not None:
            prepared.masks[window] = _window_bias(cu_seqlens, total, window, dtype)
        elif backend == "dense":
            prepared.masks[window] = dense_attention_mask(cu_seqlens, total, window)
    if backend == "sdpa":
        prepared.lengths = cu_seqlens.diff().tolist()
    return prepared


def attend(q: Tensor, k: Tensor, v: Tensor, batch: PackedAttention, window: int | None) -> Tensor:
    """Scaled dot-product attention within each packed document, ``[total_tokens, heads, head_dim]``."""
    return _IMPLEMENTATIONS[batch.backend](q, k, v, batch, window)


def varlen_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens: Tensor,
    max_seqlen: int,
    window: int | None = None,
    backend: str = "auto",
) -> Tensor:
    """One attention call on its own (:func:`prepare` then :func:`attend`), for use outside the model."""
    return attend(q, k, v, prepare(cu_seqlens, max_seqlen, [window], backend, q.device, q.dtype), window)


def document_ids(cu_seqlens: Tensor, total: int) -> Tensor:
    """Index of the document each of the ``total`` packed tokens belongs to."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    documents = torch.arange(lengths.numel(), device=cu_seqlens.device)
    return torch.repeat_interleave(documents, lengths, output_size=total)


def _flash(q: Tensor, k: Tensor, v: Tensor, batch: PackedAttention, window: int | None) -> Tensor:
    if not q.is_cuda or not flash_attn_available():
        raise RuntimeError("the flash attention backend needs a CUDA GPU and the flash-attn package")
    from flash_attn import flash_attn_varlen_func

    if q.dtype not in (torch.float16, torch.bfloat16):
        raise RuntimeError(f"the flash attention backend needs fp16 or bf16 inputs, got {q.dtype}")
    window_size = (-1, -1) if window is None else (window, window)
    cu_seqlens, longest = batch.cu_seqlens, batch.max_seqlen
    return flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, longest, longest, window_size=window_size)


@cache
def _compiled_flex_attention() -> Callable:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)


def _flex_block_mask(cu_seqlens: Tensor, total: int, window: int | None):
    from torch.nn.attention.flex_attention import create_block_mask

    docs = document_ids(cu_seqlens, total)

    def same_document_in_window(batch, head, q_idx, kv_idx):
        allowed = docs[q_idx] == docs[kv_idx]
        if window is not None:
            allowed = allowed & ((q_idx - kv_idx).abs() <= window)
        return allowed

    return create_block_mask(same_document_in_window, None, None, total, total, device=cu_seqlens.device)


def _flex(q: Tensor, k: Tensor, v: Tensor, batch: PackedAttention, window: int | None) -> Tensor:
    from torch.nn.attention.flex_attention import flex_attention

    # Compiled on CUDA; on CPU the eager (forward-only) implementation is all torch offers.
    attend_flex = _compiled_flex_attention() if q.is_cuda else flex_attention
    out = attend_flex(*(x.transpose(0, 1).unsqueeze(0) for x in (q, k, v)), block_mask=batch.masks[window])
    return out.squeeze(0).transpose(0, 1)


def _sdpa(q: Tensor, k: Tensor, v: Tensor, batch: PackedAttention, window: int | None) -> Tensor:
    if window is None:
        return _per_document(q, k, v, batch.lengths)
    return _blocked_window(q, k, v, window, batch.masks[window])


def _per_document(q: Tensor, k: Tensor, v: Tensor, lengths: list[int]) -> Tensor:
    """Global attention: one unmasked SDPA call per document, so no work is spent on padding.

    ``split`` rather than slicing: its backward is one concatenation, where each slice's
    backward would write a zero tensor the size of the whole batch. Empty documents
    (padding entries of ``cu_seqlens``) hold no tokens and are skipped.
    """
    pieces = zip(q.split(lengths), k.split(lengths), v.split(lengths), lengths, strict=True)
    # [1, heads, length, head_dim]: a batch dimension lets SDPA take its fused kernel (3-D inputs do not)
    outs = [
        F.scaled_dot_product_attention(*(x.transpose(0, 1)[None] for x in qkv))[0].transpose(0, 1)
        for *qkv, n in pieces
        if n
    ]
    return torch.cat(outs)


def _neighbour_blocks(x: Tensor) -> Tensor:
    """``[blocks + 2, block, ...]`` (one padding block at each end) -> ``[blocks, 3 * block, ...]``."""
    return torch.cat([x[:-2], x[1:-1], x[2:]], dim=1)


def _window_bias(cu_seqlens: Tensor, total: int, window: int, dtype: torch.dtype) -> Tensor:
    """The additive mask of :func:`_blocked_window`, ``[blocks, 1, window, 3 * window]``: 0 or -inf.

    A key is allowed when it is in the query's document and within ``window`` of it.
    Padding gets document -1: padded queries then see padded keys (never an empty
    row, so no NaN), and real queries never see padding. Additive rather than
    boolean: SDPA's fused CPU kernel takes it, while a boolean mask sends the call
    down the unfused path.
    """
    block = max(window, 1)
    blocks = -(-total // block)
    pad = blocks * block - total
    docs = document_ids(cu_seqlens, total)
    query_docs = F.pad(docs, (0, pad), value=-1).view(blocks, block)
    key_docs = _neighbour_blocks(F.pad(docs, (block, pad + block), value=-1).view(blocks + 2, block))
    query_pos = torch.arange(blocks * block, device=docs.device).view(blocks, block)
    key_pos = _neighbour_blocks(
        torch.arange(-block, (blocks + 1) * block, device=docs.device).view(blocks + 2, block)
    )
    allowed = (query_docs[:, :, None] == key_docs[:, None, :]) & (
        (query_pos[:, :, None] - key_pos[:, None, :]).abs() <= window
    )
    bias = torch.zeros(allowed.shape, dtype=dtype, device=docs.device).masked_fill_(~allowed, float("-inf"))
    return bias[:, None]


def _blocked_window(q: Tensor, k: Tensor, v: Tensor, window: int, bias: Tensor) -> Tensor:
    """Sliding-window attention over the whole packed batch in one SDPA call.

    Queries are cut into blocks of ``window`` tokens; a query in block ``b`` only
    needs keys within ``window`` of it, which all lie in blocks ``b - 1 .. b + 1``.
    Each query block therefore attends to those ``3 * window`` keys under ``bias``
    (:func:`_window_bias`): about 1.5x the necessary work, instead of a
    ``[tokens, tokens]`` score matrix.
    """
    total, heads, head_dim = q.shape
    block = max(window, 1)
    blocks = bias.shape[0]
    pad = blocks * block - total

    def key_blocks(x: Tensor) -> Tensor:
        padded = F.pad(x, (0, 0, 0, 0, block, pad + block)).view(blocks + 2, block, heads, head_dim)
        return _neighbour_blocks(padded).transpose(1, 2)

    query_blocks = F.pad(q, (0, 0, 0, 0, 0, pad)).view(blocks, block, heads, head_dim).transpose(1, 2)
    out = F.scaled_dot_product_attention(
        query_blocks, key_blocks(k), key_blocks(v), attn_mask=bias.to(q.dtype)
    )
    return out.transpose(1, 2).reshape(blocks * block, heads, head_dim)[:total]


def dense_attention_mask(cu_seqlens: Tensor, total: int, window: int | None) -> Tensor:
    """``[total, total]`` booleans: may query ``i`` attend to key ``j``?"""
    docs = document_ids(cu_seqlens, total)
    allowed = docs[:, None] == docs[None, :]
    if window is not None:
        pos = torch.arange(total, device=cu_seqlens.device)
        allowed &= (pos[:, None] - pos[None, :]).abs() <= window
    return allowed


def _dense(q: Tensor, k: Tensor, v: Tensor, batch: PackedAttention, window: int | None) -> Tensor:
    scores = torch.einsum("qhd,khd->hqk", q, k) * q.shape[-1] ** -0.5
    scores = scores.masked_fill(~batch.masks[window], float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(dim=-1), v)


_IMPLEMENTATIONS: dict[str, Callable[..., Tensor]] = {
    "flash": _flash,
    "flex": _flex,
    "sdpa": _sdpa,
    "dense": _dense,
}
