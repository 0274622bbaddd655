"""Plain implementations that the library's faster ones are measured against (bench/) and checked
against (tests/): each is the textbook algorithm, written for clarity, not speed."""

from __future__ import annotations

import math
from typing import Any


def redistribute_until_stable(budget: int, weights: list[float], caps: list[int]) -> list[float]:
    """The epoch cap as the issue words it: cap, share the excess over the uncapped, repeat.

    ``mixtures.sampling.capped_allocation`` reaches the same targets in one pass over the
    streams sorted by cap / weight.
    """
    capped: set[int] = set()
    while True:
        free = [i for i in range(len(weights)) if i not in capped]
        remaining = budget - sum(caps[i] for i in capped)
        weight = math.fsum(weights[i] for i in free)
        targets = {i: remaining * weights[i] / weight for i in free}
        over = {i for i in free if targets[i] > caps[i]}
        if not over:
            return [float(caps[i]) if i in capped else targets[i] for i in range(len(weights))]
        capped |= over


def fineweb2_quality_filters(
    words: Any,
    config: Any,
    removed: str | None = None,
    max_doc_words: int = 100_000,
    skipped: frozenset[str] = frozenset(),
    min_stop_words: int | None = 2,
) -> list:
    """FineWeb2's three quality filters as fineweb-2-pipeline.py sets them up: stock datatrove classes
    with one language's config (a ``pipeline.quality.LanguageThresholds``) and the word tokenizer
    ``words`` (a language label datatrove resolves to its tokenizer, or a tokenizer).

    ``removed``: a folder where each filter writes the documents it drops (``goph_rep``, ``fw_qual``,
    ``goph_qual``), as FineWeb2's pipeline does. ``max_doc_words``, ``skipped`` (config keys
    whose rules are left out) and ``min_stop_words`` are there to replay our departures on stock's
    classes; their defaults are FineWeb2's.
    """
    from datatrove.pipeline.filters import FineWebQualityFilter, GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.writers import JsonlWriter

    def excluded(name: str):
        return JsonlWriter(f"{removed}/{name}") if removed else None

    return [
        GopherRepetitionFilter(
            language=words,
            dup_para_frac=0,
            dup_line_char_frac=0,
            dup_para_char_frac=0,
            dup_line_frac=config.dup_line_frac,
            top_n_grams=() if "top_n_grams" in skipped else config.top_n_grams,
            dup_n_grams=() if "dup_n_grams" in skipped else config.dup_n_grams,
            exclusion_writer=excluded("goph_rep"),
        ),
        FineWebQualityFilter(
            language=words,
            short_line_thr=999,
            char_duplicates_ratio=0.1,
            line_punct_thr=config.line_punct_thr,
            new_line_ratio=config.new_line_ratio,
            exclusion_writer=excluded("fw_qual"),
        ),
        GopherQualityFilter(
            language=words,
            max_doc_words=max_doc_words,
            max_avg_word_length=None if "max_avg_word_length" in skipped else config.max_avg_word_length,
            min_avg_word_length=None if "min_avg_word_length" in skipped else config.min_avg_word_length,
            stop_words=list(config.stopwords),
            max_non_alpha_words_ratio=config.max_non_alpha_words_ratio,
            min_stop_words=min_stop_words,
            exclusion_writer=excluded("goph_qual"),
        ),
    ]


def naive_ties(base: str, models: list[str], density: float, lam: float = 1.0) -> dict:
    """TIES-Merging (Yadav et al. 2023) as it is usually written, on ``model.safetensors`` files: every
    state dict loaded whole (``safetensors.torch.load_file``), each tensor's task vectors stacked,
    trimmed at ``torch.kthvalue``, elected and averaged. ``trainer.merge`` streams the same maths
    block by block; the tests compare the two on tiny models, ``bench/merge.py`` measures them."""
    import torch
    from safetensors.torch import load_file

    theta_base = load_file(base)
    thetas = [load_file(path) for path in models]
    merged = {}
    for key, base_tensor in theta_base.items():
        taus = torch.stack([theta[key].float() - base_tensor for theta in thetas])
        size = base_tensor.numel()
        rank = size - max(1, round(density * size)) + 1  # the k-th largest is the rank-th smallest
        kth = torch.stack([tau.abs().flatten().kthvalue(rank).values for tau in taus])
        trimmed = taus * (taus.abs() >= kth.view(-1, *[1] * base_tensor.dim()))
        elected = trimmed.sum(0).sign()
        agree = (trimmed.sign() == elected) & (trimmed != 0)
        merged[key] = base_tensor + lam * ((trimmed * agree).sum(0) / agree.sum(0).clamp(min=1))
    return merged
