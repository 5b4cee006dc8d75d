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


def logit_lens(
    model, prompt_or_tokens: str | Tensor, *, prepend_bos: bool = PREPEND_BOS, layers: list[int] | None = None
) -> Float[Tensor, "layer_plus_1 pos d_vocab"]:
    """Logit-lens logits of one prompt: [n_layers + 1, pos, d_vocab]; slice 0 is the embedding.
    With `layers`, only those slices (in that order): the unembedding is most of the cost."""
    tokens = _single_prompt_tokens(model, prompt_or_tokens, prepend_bos)
    with torch.no_grad():
        stack = resid_stack(model, tokens)[:, 0]  # [layer + 1, pos, d_model]
        return final_norm_and_unembed(model, stack if layers is None else stack[list(layers)])


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


# ----------------------------------------------------------------- logit differences, frozen scale
#
# The final norm divides the residual stream by its own scale (RMS for SmolLM2), which is not
# linear. Freezing that scale at the value the model actually used for the final residual makes
# the map from the residual stream to the logits linear, so the logits split exactly into what
# each component wrote (direct logit attribution), and a partial sum of components (the
# accumulated residual after layer l) reads off on the same scale as the final answer.


def final_norm_scale(model, cache, pos: int = -1, batch: int = 0) -> float:
    """The scale the final norm divided by at (batch, pos), read from the cache (1.0 without a norm)."""
    if not hasattr(model, "ln_final"):
        return 1.0
    if "ln_final.hook_scale" not in cache:
        raise KeyError("the cache has no 'ln_final.hook_scale': run model.run_with_cache without a names_filter.")
    return float(cache["ln_final.hook_scale"][batch, pos])


def logit_diff_direction(model, correct_id: int, incorrect_id: int | None) -> Float[Tensor, "d_model"]:
    """The residual direction read by logit(correct) - logit(incorrect) after the final norm:
    (W_U[:, correct] - W_U[:, incorrect]) times the norm's weight (if the model has one). With
    `incorrect_id=None`, the direction of the single logit(correct)."""
    direction = model.W_U[:, correct_id] if incorrect_id is None else model.W_U[:, correct_id] - model.W_U[:, incorrect_id]
    weight = _final_norm_weight(model)
    return direction * weight if weight is not None else direction


def _final_norm_weight(model) -> Tensor | None:
    if not hasattr(model, "ln_final"):
        return None
    for name in ("weight", "w"):
        weight = getattr(model.ln_final, name, None)
        if torch.is_tensor(weight):
            return weight
    raise AttributeError("cannot find the final norm's weight (model.ln_final.weight or .w).")


def _centred(model, vectors: Tensor) -> Tensor:
    """LayerNorm subtracts the mean before scaling (a linear map); RMS norm does not."""
    if getattr(model.cfg, "normalization_type", None) in ("LN", "LNPre") and hasattr(model, "ln_final"):
        return vectors - vectors.mean(dim=-1, keepdim=True)
    return vectors


def logit_diff_lens(
    model, cache, correct_id: int, incorrect_id: int, pos: int = -1, batch: int = 0
) -> Float[Tensor, "layer_plus_1"]:
    """logit(correct) - logit(incorrect) read from the accumulated residual stream before block 0
    and after every block, with the final norm's scale frozen at its value for the final residual.
    The last entry is the model's own logit difference (up to the final norm's bias, if any)."""
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.hook_resid_post" for l in range(model.cfg.n_layers)]
    stack = torch.stack([cache[name][batch, pos] for name in names])  # [layer + 1, d_model]
    scale = final_norm_scale(model, cache, pos, batch)
    return (_centred(model, stack) / scale) @ logit_diff_direction(model, correct_id, incorrect_id)


def component_outputs(model, cache, pos: int = -1, batch: int = 0) -> tuple[Float[Tensor, "component d_model"], list[str]]:
    """What every component wrote into the residual stream at (batch, pos): the embeddings, each
    head (its z times W_O), each attention bias and each MLP. They add up to the final residual."""
    vectors, labels = [cache["blocks.0.hook_resid_pre"][batch, pos]], ["embed"]
    b_O = getattr(model, "b_O", None)  # SmolLM2 has no attention output bias
    for layer in range(model.cfg.n_layers):
        z = cache[f"blocks.{layer}.attn.hook_z"][batch, pos]  # [head, d_head]
        heads = torch.einsum("hd,hdm->hm", z, model.W_O[layer])
        vectors += list(heads)
        labels += [f"L{layer}H{h}" for h in range(heads.shape[0])]
        if b_O is not None and bool(b_O[layer].abs().max() > 0):
            vectors.append(b_O[layer])
            labels.append(f"L{layer} attn bias")
        mlp_name = f"blocks.{layer}.hook_mlp_out"
        if mlp_name in cache:
            vectors.append(cache[mlp_name][batch, pos])
            labels.append(f"L{layer} mlp")
    return torch.stack(vectors), labels


def logit_diff_attribution(
    model, cache, correct_id: int, incorrect_id: int, pos: int = -1, batch: int = 0
) -> pd.Series:
    """Direct logit attribution: each component's contribution to logit(correct) - logit(incorrect)
    through the final norm (scale frozen) and the unembedding, labelled; they sum to the model's
    logit difference (minus any unembedding bias difference)."""
    vectors, labels = component_outputs(model, cache, pos, batch)
    scale = final_norm_scale(model, cache, pos, batch)
    contributions = (_centred(model, vectors) / scale) @ logit_diff_direction(model, correct_id, incorrect_id)
    return pd.Series(contributions.detach().numpy(), index=labels, name="logit diff contribution")


def head_logit_attribution(
    model, cache, correct_id: int, incorrect_id: int, pos: int = -1, batch: int = 0
) -> Float[Tensor, "n_layers n_heads"]:
    """Each head's direct contribution to logit(correct) - logit(incorrect) at (batch, pos): its
    output z_h W_O[l, h], through the final norm with the scale frozen, onto the unembedding."""
    z = torch.stack([cache[f"blocks.{l}.attn.hook_z"][batch, pos] for l in range(model.cfg.n_layers)])  # [layer, head, d_head]
    outputs = torch.einsum("lhd,lhdm->lhm", z, model.W_O)  # [layer, head, d_model]
    scale = final_norm_scale(model, cache, pos, batch)
    return (_centred(model, outputs) / scale) @ logit_diff_direction(model, correct_id, incorrect_id)


def head_direct_logits(model, cache, layer: int, head: int, pos: int = -1, batch: int = 0) -> Float[Tensor, "d_vocab"]:
    """What one head's output at (batch, pos) adds to every logit directly (final scale frozen)."""
    output = cache[f"blocks.{layer}.attn.hook_z"][batch, pos, head] @ model.W_O[layer, head]
    scaled = _centred(model, output) / final_norm_scale(model, cache, pos, batch)
    weight = _final_norm_weight(model)
    return (scaled * weight if weight is not None else scaled) @ model.W_U
