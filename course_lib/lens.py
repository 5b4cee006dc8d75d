"""The logit lens: read every layer's residual stream as if it were the last one.

nostalgebraist (2020): apply the model's final norm and unembedding to the residual stream after
the embedding and after each block. The result for the last block is the model's own output, so
the earlier slices show what the model "would say" if it stopped there. Each layer's residual is
normalised on its own (as in the original logit lens), not with the final layer's scale.
"""

from __future__ import annotations

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from course_lib.activations import resid_stack
from course_lib.tokens import PREPEND_BOS


def final_norm_and_unembed(model, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
    """Logits from residual-stream vectors: the final norm (if the model has one), then W_U (+ b_U)."""
    normed = model.ln_final(resid) if hasattr(model, "ln_final") else resid
    logits = normed @ model.W_U
    b_U = getattr(model, "b_U", None)
    return logits + b_U if b_U is not None else logits


def _single_prompt_tokens(model, prompt_or_tokens, prepend_bos: bool) -> Int[Tensor, "1 pos"]:
    if isinstance(prompt_or_tokens, str):
        return model.to_tokens(prompt_or_tokens, prepend_bos=prepend_bos)
    if not torch.is_tensor(prompt_or_tokens):
        raise TypeError(f"expected a prompt string or a tensor of token ids, got {type(prompt_or_tokens).__name__}.")
    tokens = prompt_or_tokens if prompt_or_tokens.ndim == 2 else prompt_or_tokens.unsqueeze(0)
    if tokens.shape[0] != 1:
        raise ValueError(
            f"the logit lens here reads one prompt at a time; got a batch of {tokens.shape[0]}. "
            "Loop over prompts, or pass tokens[i:i+1]."
        )
    return tokens


def logit_lens(model, prompt_or_tokens: str | Tensor, *, prepend_bos: bool = PREPEND_BOS) -> Float[Tensor, "layer_plus_1 pos d_vocab"]:
    """Logit-lens logits of one prompt: [n_layers + 1, pos, d_vocab]; slice 0 is the embedding."""
    tokens = _single_prompt_tokens(model, prompt_or_tokens, prepend_bos)
    with torch.no_grad():
        stack = resid_stack(model, tokens)[:, 0]  # [layer + 1, pos, d_model]
        return final_norm_and_unembed(model, stack)


def answer_trajectory(
    lens_logits: Float[Tensor, "layer pos d_vocab"], answer_id: int, pos: int = -1
) -> pd.DataFrame:
    """Per layer at position `pos`: the answer's probability, log-probability and rank (0 = top-1)."""
    logits = lens_logits[:, pos]
    log_probs = logits.log_softmax(dim=-1)
    answer_logit = logits[:, answer_id : answer_id + 1]
    rank = (logits > answer_logit).sum(dim=-1)
    return pd.DataFrame(
        {
            "layer": range(len(logits)),
            "prob": log_probs[:, answer_id].exp().tolist(),
            "log_prob": log_probs[:, answer_id].tolist(),
            "rank": rank.tolist(),
        }
    ).set_index("layer")


def first_top1_layer(lens_logits: Float[Tensor, "layer pos d_vocab"], answer_id: int, pos: int = -1) -> int | None:
    """The first layer whose top-1 token at `pos` is the answer (None if no layer has it on top)."""
    top = lens_logits[:, pos].argmax(dim=-1)
    hits = (top == answer_id).nonzero()
    return int(hits[0, 0]) if len(hits) else None


def entropy_per_layer(lens_logits: Float[Tensor, "layer pos d_vocab"]) -> Float[Tensor, "layer pos"]:
    """Entropy (nats) of each layer's next-token distribution at each position."""
    log_probs = lens_logits.log_softmax(dim=-1)
    return -(log_probs.exp() * log_probs).sum(dim=-1)


def kl_to_final(lens_logits: Float[Tensor, "layer pos d_vocab"]) -> Float[Tensor, "layer pos"]:
    """KL(final || layer) in nats: how far each layer's distribution is from the model's output."""
    log_probs = lens_logits.log_softmax(dim=-1)
    final = log_probs[-1:]
    return (final.exp() * (final - log_probs)).sum(dim=-1)


def top_token_table(
    model, lens_logits: Float[Tensor, "layer pos d_vocab"], str_tokens: list[str] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Top-1 token string and its probability for every (layer, position), as two DataFrames."""
    probs = lens_logits.softmax(dim=-1).max(dim=-1)
    to_str = getattr(model, "to_single_str_token", str)  # the toy models have no tokenizer
    tokens = [[to_str(int(i)) for i in row] for row in probs.indices]
    columns = [f"{i}:{t}" for i, t in enumerate(str_tokens)] if str_tokens else list(range(lens_logits.shape[1]))
    index = pd.Index(range(lens_logits.shape[0]), name="layer")
    return (
        pd.DataFrame(tokens, index=index, columns=columns),
        pd.DataFrame(probs.values.tolist(), index=index, columns=columns),
    )


def top_k_tokens(model, lens_logits: Float[Tensor, "layer pos d_vocab"], k: int = 5, pos: int = -1) -> pd.DataFrame:
    """The k most likely tokens (with probabilities) of every layer at position `pos`."""
    probs = lens_logits[:, pos].softmax(dim=-1).topk(k)
    to_str = getattr(model, "to_single_str_token", str)
    rows = [
        [f"{to_str(int(i))!r} {float(p):.2f}" for p, i in zip(ps, ids)]
        for ps, ids in zip(probs.values, probs.indices)
    ]
    return pd.DataFrame(rows, index=pd.Index(range(len(rows)), name="layer"), columns=[f"top {j + 1}" for j in range(k)])
