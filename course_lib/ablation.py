"""Ablating attention heads with hooks: zero-ablation and mean-ablation of a head's output.

A head's contribution to the residual stream is its `z` (the pattern-weighted values,
`blocks.{l}.attn.hook_z`, [batch, pos, head, d_head]) times its `W_O`. Overwriting one head's
slice of `z` removes that head and nothing else, on the toy models and on a `TransformerBridge`
alike (the bridge's `hook_result` sums the heads, so per-head work goes through `hook_z`).

* zero-ablation sets the head's z to 0: simple, but 0 may be far from anything the head ever
  outputs, so downstream components see an input they never saw in training;
* mean-ablation sets it to its mean over a reference batch, position by position: the head's
  typical output stays, only what depends on this particular input is removed.
"""

from __future__ import annotations

from typing import Iterable

import torch
from jaxtyping import Float, Int
from torch import Tensor


def mean_z(model, tokens: Int[Tensor, "batch pos"], layer: int) -> Float[Tensor, "pos head d_head"]:
    """Every head's z in `layer` averaged over the batch, position by position."""
    name = f"blocks.{layer}.attn.hook_z"
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=name)
    return cache[name].mean(dim=0)


def ablated_logits(
    model,
    tokens: Int[Tensor, "batch pos"],
    heads: Iterable[tuple[int, int]],
    how: str = "mean",
    reference: Int[Tensor, "batch pos"] | None = None,
) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits with every (layer, head) in `heads` ablated: how="zero" or how="mean" (mean over
    `reference`, default `tokens`, at each position). The hooks are removed afterwards."""
    if how not in ("zero", "mean"):
        raise ValueError(f"how must be 'zero' or 'mean', got {how!r}.")
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(int(layer), []).append(int(head))
    hooks = []
    for layer, layer_heads in by_layer.items():
        means = mean_z(model, tokens if reference is None else reference, layer) if how == "mean" else None

        def hook(z: Tensor, hook, layer_heads=layer_heads, means=means) -> Tensor:
            for head in layer_heads:
                z[:, :, head] = 0.0 if means is None else means[: z.shape[1], head]
            return z

        hooks.append((f"blocks.{layer}.attn.hook_z", hook))
    with torch.no_grad():
        return model.run_with_hooks(tokens, fwd_hooks=hooks)
