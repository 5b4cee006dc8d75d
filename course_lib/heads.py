"""Attention-head detectors: previous-token, induction, duplicate-token and first-token scores,
and a look at tokenizer repair (which heads glue a split word back together).

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
    return patterns_and_logits(model, tokens)[0]


def patterns_and_logits(model, tokens: Int[Tensor, "batch pos"]) -> tuple[Float[Tensor, "layer batch head q k"], Tensor]:
    """Every layer's attention pattern [n_layers, batch, head, query, key] and the logits, from one
    forward pass."""
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    return torch.stack([cache[name] for name in names]), logits


def _offset_score(patterns: Tensor, offset: int, first_query: int) -> Float[Tensor, "layer head"]:
    """Mean over batch and queries q >= first_query of pattern[..., q, q - offset]."""
    diagonal = patterns.diagonal(offset=-offset, dim1=-2, dim2=-1)  # [..., q - offset] entries
    # diagonal[..., i] is the attention from query i + offset to key i.
    return diagonal[..., max(first_query - offset, 0):].mean(dim=(1, -1))


def previous_token_scores(model, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "layer head"]:
    """Mean attention from each position to the position just before it."""
    return _offset_score(attention_patterns(model, tokens), offset=1, first_query=1)


def induction_scores(
    model, tokens: Int[Tensor, "batch 1+2*half"], patterns: Float[Tensor, "layer batch head q k"] | None = None
) -> Float[Tensor, "layer head"]:
    """Mean attention, on the second copy, to the token after the earlier occurrence.

    For tokens = [BOS, x_1..x_n, x_1..x_n], query position n+i (holding x_i) should attend to
    position i+1 (holding x_{i+1}): an offset of n - 1. Pass `patterns` (from
    `attention_patterns`) to score patterns already computed.
    """
    half = (tokens.shape[1] - 1) // 2
    patterns = attention_patterns(model, tokens) if patterns is None else patterns
    return _offset_score(patterns, offset=half - 1, first_query=half + 1)


def duplicate_token_scores(model, tokens: Int[Tensor, "batch 1+2*half"]) -> Float[Tensor, "layer head"]:
    """Mean attention, on the second copy, to the earlier occurrence of the same token (offset n)."""
    half = (tokens.shape[1] - 1) // 2
    return _offset_score(attention_patterns(model, tokens), offset=half, first_query=half + 1)


def first_token_scores(model, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "layer head"]:
    """Mean attention to position 0 (the BOS token), over queries 1..end."""
    patterns = attention_patterns(model, tokens)
    return patterns[..., 1:, 0].mean(dim=(1, -1))


def per_token_loss(model, tokens: Int[Tensor, "batch pos"], logits: Tensor | None = None) -> Float[Tensor, "batch pos_minus_1"]:
    """Cross-entropy of predicting tokens[:, t + 1] at every position t (from `logits` if given)."""
    with torch.no_grad():
        log_probs = (model(tokens) if logits is None else logits).log_softmax(dim=-1)
    return -log_probs[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]


def top_heads(scores: Float[Tensor, "layer head"], k: int = 5) -> list[tuple[str, float]]:
    """The k highest-scoring heads as ("L{layer}H{head}", score), best first."""
    flat = scores.flatten().topk(k)
    n_heads = scores.shape[1]
    return [(f"L{int(i) // n_heads}H{int(i) % n_heads}", float(v)) for v, i in zip(flat.values, flat.indices)]


def tokenizer_repair_row(model, word: str, template: str, control_word: str, *, prepend_bos: bool) -> dict:
    """Tokenizer repair (Elhage et al. 2021): `word` (e.g. " Marisol") is split into fragments; the
    template mentions it once and ends on its first fragment (`{word}` and `{fragment}` fields).
    Which heads look back from that fragment at the earlier continuation fragment, and which of
    them writes the continuation? Returns one row for a table like the lecture's."""
    from course_lib.lens import head_direct_logits, head_logit_attribution

    pieces = model.to_str_tokens(word, prepend_bos=False)
    if len(pieces) < 2:
        raise ValueError(f"{word!r} is a single token; tokenizer repair needs a word split into fragments.")
    fragment, continuation = pieces[0], pieces[1]
    continuation_id = int(model.to_tokens(word, prepend_bos=False)[0, 1])
    prompt = template.format(word=word, fragment=fragment)
    tokens = model.to_tokens(prompt, prepend_bos=prepend_bos)
    ids = tokens[0].tolist()
    sources = [i for i in range(1, len(ids) - 1) if ids[i] == continuation_id and ids[i - 1] == ids[-1]]
    if "{word}" not in template or "{fragment}" not in template or not template.endswith("{fragment}") or not sources:
        raise ValueError(
            f"the template must mention {{word}} first and end with {{fragment}} (e.g. 'I met{{word}} at the "
            f"station. Later that day,{{fragment}}'); got {template!r}."
        )
    source = sources[0]
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
        control = model(model.to_tokens(template.format(word=control_word, fragment=fragment), prepend_bos=prepend_bos))
    attention = torch.stack([cache[f"blocks.{l}.attn.hook_pattern"][0, :, -1, source] for l in range(model.cfg.n_layers)])
    dla = head_logit_attribution(model, cache, continuation_id, None)
    candidates = attention >= 0.5
    if not bool(candidates.any()):
        candidates = attention >= attention.max()
    best = int(torch.where(candidates, dla, torch.tensor(float("-inf"))).flatten().argmax())
    layer, head = divmod(best, model.cfg.n_heads)
    out_ids = head_direct_logits(model, cache, layer, head).topk(5).indices
    n_heads = model.cfg.n_heads
    top_attending = attention.flatten().topk(3)
    return {
        "word": word, "destination (fragment)": fragment, "source (continuation)": continuation,
        "p(continuation)": float(logits[0, -1].softmax(-1)[continuation_id]),
        f"p, {control_word!r} mentioned instead": float(control[0, -1].softmax(-1)[continuation_id]),
        "heads attending to the source (attention, direct logit)": ", ".join(
            f"L{int(i) // n_heads}H{int(i) % n_heads} ({float(v):.2f}, {float(dla.flatten()[i]):+.1f})"
            for v, i in zip(top_attending.values, top_attending.indices)
        ),
        "writing head": f"L{layer}H{head}", "its attention": float(attention[layer, head]), "its direct logit": float(dla[layer, head]),
        "its top out tokens": [model.to_single_str_token(int(i)) for i in out_ids],
    }
