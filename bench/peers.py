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


def fineweb2_quality_filters(words: str, config: Any) -> list:
    """FineWeb2's three quality filters as fineweb-2-pipeline.py sets them up: stock datatrove classes
    with one language's config (a ``pipeline.quality.LanguageThresholds``) and the word tokenizer
    ``words`` (a language label datatrove resolves to its tokenizer, or a tokenizer)."""
    from datatrove.pipeline.filters import FineWebQualityFilter, GopherQualityFilter, GopherRepetitionFilter

    return [
        GopherRepetitionFilter(
            language=words,
            dup_para_frac=0,
            dup_line_char_frac=0,
            dup_para_char_frac=0,
            dup_line_frac=config.dup_line_frac,
            top_n_grams=config.top_n_grams,
            dup_n_grams=config.dup_n_grams,
        ),
        FineWebQualityFilter(
            language=words,
            short_line_thr=999,
            char_duplicates_ratio=0.1,
            line_punct_thr=config.line_punct_thr,
            new_line_ratio=config.new_line_ratio,
        ),
        GopherQualityFilter(
            language=words,
            max_avg_word_length=config.max_avg_word_length,
            min_avg_word_length=config.min_avg_word_length,
            stop_words=list(config.stopwords),
            max_non_alpha_words_ratio=config.max_non_alpha_words_ratio,
            min_stop_words=2,
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
