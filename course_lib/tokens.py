"""Tokenization helpers that make the start-token (BOS) choice explicit.

The course convention is `PREPEND_BOS = True`: every prompt starts with the model's start token
(`<|im_start|>` for SmolLM2), as TransformerBridge does by default. Attention heads use that first
position as a resting place ("attention sink"), and predictions change without it, so every helper
here takes `prepend_bos` as a keyword and the notebooks pass it on purpose.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

PREPEND_BOS = True


def to_tokens(model, prompt: str | list[str], *, prepend_bos: bool = PREPEND_BOS) -> Int[Tensor, "batch pos"]:
    """Token ids of `prompt` (a string or a list of strings, padded), shape [batch, pos]."""
    if not isinstance(prompt, (str, list)):
        raise TypeError(f"prompt must be a string or a list of strings, got {type(prompt).__name__}.")
    return model.to_tokens(prompt, prepend_bos=prepend_bos)


def single_token_id(model, text: str) -> int:
    """The id of `text` when it is exactly one token; a clear ValueError otherwise."""
    if not isinstance(text, str):
        raise TypeError(f"expected the answer as a string such as ' Rome', got {type(text).__name__}.")
    ids = model.to_tokens(text, prepend_bos=False)[0].tolist()
    if len(ids) != 1:
        pieces = model.to_str_tokens(text, prepend_bos=False)
        hint = ""
        if not text.startswith(" ") and len(model.to_tokens(" " + text, prepend_bos=False)[0]) == 1:
            hint = f" Did you mean {' ' + text!r}? Words after a space carry the space in their token."
        raise ValueError(
            f"{text!r} is {len(ids)} tokens {pieces}, but a single token is needed here.{hint}"
        )
    return ids[0]


def next_token_probs(model, prompt: str, *, prepend_bos: bool = PREPEND_BOS) -> Float[Tensor, "d_vocab"]:
    """The model's next-token distribution after `prompt`, shape [d_vocab]."""
    tokens = to_tokens(model, prompt, prepend_bos=prepend_bos)
    with torch.no_grad():
        logits = model(tokens)
    return logits[0, -1].softmax(dim=-1)


def top_next_tokens(model, prompt: str, k: int = 5, *, prepend_bos: bool = PREPEND_BOS) -> list[tuple[str, float]]:
    """The `k` most likely next tokens after `prompt`, as (token string, probability) pairs."""
    probs = next_token_probs(model, prompt, prepend_bos=prepend_bos)
    top = probs.topk(k)
    return [(model.to_single_str_token(int(i)), float(p)) for p, i in zip(top.values, top.indices)]


def answer_probability(model, prompt: str, answer: str, *, prepend_bos: bool = PREPEND_BOS) -> float:
    """Probability that the next token after `prompt` is the single token `answer`."""
    answer_id = single_token_id(model, answer)
    return float(next_token_probs(model, prompt, prepend_bos=prepend_bos)[answer_id])
