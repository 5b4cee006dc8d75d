"""The IOI circuit's heads (Wang et al. 2022): where they attend, what their OV circuit writes, and a class.

Works on the prompts of `course_lib.data.ioi` (every prompt has the same positions) and any
TransformerLens-style model whose cache has `blocks.{l}.attn.hook_pattern` [batch, head, q, k].
Grouped-query attention (SmolLM2) is handled where weights are read: query head h uses key/value
head h // (n_heads / n_kv_heads).
"""

from __future__ import annotations

from typing import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from course_lib.patching.path import kv_head

Head = tuple[int, int]
Positions = int | Int[Tensor, " batch"]
CLASSES = ("name mover", "negative name mover", "S suppressor", "S mover", "other")


def head_name(head: Head) -> str:
    """'L{layer}H{head}'."""
    return f"L{head[0]}H{head[1]}"


def attention_to(
    model, tokens: Int[Tensor, "batch pos"], query_pos: Positions, key_pos: Positions
) -> Float[Tensor, "layer head"]:
    """Mean attention from query_pos to key_pos (one int for every prompt, or one per prompt)."""
    names = {f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)}
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    rows = torch.arange(tokens.shape[0])
    q = torch.as_tensor(query_pos).expand(tokens.shape[0])
    k = torch.as_tensor(key_pos).expand(tokens.shape[0])
    return torch.stack([
        cache[f"blocks.{l}.attn.hook_pattern"][rows, :, q, k].mean(0) for l in range(model.cfg.n_layers)
    ])


def ov_name_scores(
    model, tokens: Int[Tensor, "batch pos"], name_pos: Positions, name_ids: Int[Tensor, " batch"],
    all_name_ids: Int[Tensor, " names"], heads: Sequence[Head],
) -> dict[Head, tuple[float, float]]:
    """For each head: (copy score, suppression score) of its OV circuit on the names (IOI paper, 3.3).

    The name's residual stream after layer 0 (the paper uses the output of the first MLP, which in
    these models acts as part of the embedding) goes through the head's norm, W_V and W_O, then
    the final norm and the unembedding. Copy score: the share of prompts where the name itself gets
    the highest logit among all candidate names; suppression score: the share where it gets the
    lowest. Chance is 1 / len(all_name_ids) for each.
    """
    from course_lib.lens import final_norm_and_unembed

    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name == "blocks.0.hook_resid_post")
        rows = torch.arange(tokens.shape[0])
        resid = cache["blocks.0.hook_resid_post"][rows, torch.as_tensor(name_pos).expand(tokens.shape[0])]
        own = (all_name_ids[None, :] == name_ids[:, None]).float().argmax(dim=1)  # index of each prompt's name
        scores = {}
        for layer, head in heads:
            block = model.blocks[layer]
            normed = block.ln1(resid) if hasattr(block, "ln1") else resid
            out = normed @ model.W_V[layer, kv_head(model, head)] @ model.W_O[layer, head]
            name_logits = final_norm_and_unembed(model, out)[:, all_name_ids]  # [batch, names]
            scores[(layer, head)] = (
                float((name_logits.argmax(dim=1) == own).float().mean()),
                float((name_logits.argmin(dim=1) == own).float().mean()),
            )
    return scores


def classify_direct_heads(
    direct_effect: Float[Tensor, "layer head"],
    attn_io: Float[Tensor, "layer head"],
    attn_s: Float[Tensor, "layer head"],
    threshold: float = 0.1,
    min_attention: float = 0.2,
) -> dict[str, str]:
    """Class of every head whose direct path moves the logit difference by at least `threshold`.

    direct_effect[l, h]: the change in the IO - S logit difference when only the path from head
    (l, h) to the logits is patched from the ABC prompts (negative: the head was raising IO over S).
    attn_io / attn_s: mean attention from END to the IO and to S2. A head attends to a name when
    its attention to it is at least `min_attention` and larger than to the other name. Classes:
    name mover (attends to IO, raises IO - S), negative name mover (attends to IO, lowers it),
    S suppressor (attends to S, raises IO - S: it writes against S), S mover (attends to S, lowers
    it), other (attends to neither). Returned as {"L{l}H{h}": class}, largest |effect| first.
    """
    if not direct_effect.shape == attn_io.shape == attn_s.shape:
        raise ValueError(f"shapes differ: {tuple(direct_effect.shape)}, {tuple(attn_io.shape)}, {tuple(attn_s.shape)}.")
    classes = {}
    for index in direct_effect.flatten().abs().argsort(descending=True).tolist():
        layer, head = divmod(index, direct_effect.shape[1])
        effect = float(direct_effect[layer, head])
        if abs(effect) < threshold:
            break
        io, s = float(attn_io[layer, head]), float(attn_s[layer, head])
        raises = effect < 0  # patching it away lowers IO - S, so the head raises it
        if io >= min_attention and io > s:
            label = "name mover" if raises else "negative name mover"
        elif s >= min_attention and s > io:
            label = "S suppressor" if raises else "S mover"
        else:
            label = "other"
        classes[head_name((layer, head))] = label
    return classes
