"""Attention-head detectors: previous-token, induction, duplicate-token and first-token scores.

Each score is the mean attention a head pays to one chosen key position, averaged over the query
positions where that key exists. The inputs are repeated random sequences, on which these
patterns are unambiguous. Works on any model whose cache has `blocks.{l}.attn.hook_pattern`
shaped [batch, head, query, key]: the toy models and `TransformerBridge` models alike.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor


def repeated_random_tokens(
    n_batch: int, half_len: int, d_vocab: int, bos_token_id: int, seed: int = 0, low: int = 1
) -> Int[Tensor, "batch 1+2*half_len"]:
    """BOS followed by a random block of `half_len` distinct tokens from [low, d_vocab), twice.

    The tokens of a block are distinct (drawn without replacement), so every token of the second
    copy has exactly one earlier occurrence and the induction target is unambiguous. (With
    repeats inside a block, a perfect induction head must split its attention between two
    targets, which lowers its score for reasons that have nothing to do with the head.)"""
    if not 0 <= low < d_vocab or half_len > d_vocab - low:
        raise ValueError(f"cannot draw {half_len} distinct tokens from [{low}, {d_vocab}).")
    generator = torch.Generator().manual_seed(seed)
    block = torch.rand(n_batch, d_vocab - low, generator=generator).argsort(dim=1)[:, :half_len] + low
    bos = torch.full((n_batch, 1), bos_token_id, dtype=torch.long)
    return torch.cat([bos, block, block], dim=1)


def attention_patterns(model, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "layer batch head q k"]:
    """Every layer's attention pattern, stacked: [n_layers, batch, head, query, key]."""
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    return torch.stack([cache[name] for name in names])


def _offset_score(patterns: Tensor, offset: int, first_query: int) -> Float[Tensor, "layer head"]:
    """Mean over batch and queries q >= first_query of pattern[..., q, q - offset]."""
    diagonal = patterns.diagonal(offset=-offset, dim1=-2, dim2=-1)  # [..., q - offset] entries
    # diagonal[..., i] is the attention from query i + offset to key i.
    return diagonal[..., max(first_query - offset, 0):].mean(dim=(1, -1))


def previous_token_scores(model, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "layer head"]:
    """Mean attention from each position to the position just before it."""
    return _offset_score(attention_patterns(model, tokens), offset=1, first_query=1)


def induction_scores(model, tokens: Int[Tensor, "batch 1+2*half"]) -> Float[Tensor, "layer head"]:
    """Mean attention, on the second copy, to the token after the earlier occurrence.

    For tokens = [BOS, x_1..x_n, x_1..x_n], query position n+i (holding x_i) should attend to
    position i+1 (holding x_{i+1}): an offset of n - 1.
    """
    half = (tokens.shape[1] - 1) // 2
    return _offset_score(attention_patterns(model, tokens), offset=half - 1, first_query=half + 1)


def duplicate_token_scores(model, tokens: Int[Tensor, "batch 1+2*half"]) -> Float[Tensor, "layer head"]:
    """Mean attention, on the second copy, to the earlier occurrence of the same token (offset n)."""
    half = (tokens.shape[1] - 1) // 2
    return _offset_score(attention_patterns(model, tokens), offset=half, first_query=half + 1)


def first_token_scores(model, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "layer head"]:
    """Mean attention to position 0 (the BOS token), over queries 1..end."""
    patterns = attention_patterns(model, tokens)
    return patterns[..., 1:, 0].mean(dim=(1, -1))


def per_token_loss(model, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos_minus_1"]:
    """Cross-entropy of predicting tokens[:, t + 1] at every position t."""
    with torch.no_grad():
        log_probs = model(tokens).log_softmax(dim=-1)
    return -log_probs[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]


def top_heads(scores: Float[Tensor, "layer head"], k: int = 5) -> list[tuple[str, float]]:
    """The k highest-scoring heads as ("L{layer}H{head}", score), best first."""
    flat = scores.flatten().topk(k)
    n_heads = scores.shape[1]
    return [(f"L{int(i) // n_heads}H{int(i) % n_heads}", float(v)) for v, i in zip(flat.values, flat.indices)]
