"""Ablating attention heads with hooks: zero-ablation and mean-ablation of a head's output.

A head's contribution to the residual stream is its `z` (the pattern-weighted values,
`blocks.{l}.attn.hook_z`, [batch, pos, head, d_head]) times its `W_O`. Overwriting one head's
slice of `z` removes that head and nothing else, on the toy models and on a `TransformerBridge`
alike (the bridge's `hook_result` sums the heads, so per-head work goes through `hook_z`).

* zero-ablation sets the head's z to 0: simple, but 0 may be far from anything the head ever
  outputs, so downstream components see an input they never saw in training;
* mean-ablation sets it to its mean over a reference batch, position by position: the head's
  typical output stays, only what depends on this particular input is removed;
* resample-ablation sets it to its value on another input (prompt i takes the head's z from
  reference prompt i): an output the head really produces, with the information of this input
  gone. Causal scrubbing (Chan et al. 2022) is built from it.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from jaxtyping import Float, Int
from torch import Tensor


def mean_z(model, tokens: Int[Tensor, "batch pos"], layer: int) -> Float[Tensor, "pos head d_head"]:
    """Every head's z in `layer` averaged over the batch, position by position."""
    name = f"blocks.{layer}.attn.hook_z"
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=name)
    return cache[name].mean(dim=0)


def _z(model, tokens: Int[Tensor, "batch pos"], layer: int) -> Float[Tensor, "batch pos head d_head"]:
    name = f"blocks.{layer}.attn.hook_z"
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=name)
    return cache[name]


def head_ablation_hooks(
    model, heads: Iterable[tuple[int, int]], how: str, reference: Int[Tensor, "batch pos"] | None = None
) -> list[tuple[str, Callable]]:
    """Forward hooks that ablate every (layer, head) in `heads`: how="zero", how="mean" (the
    mean of each head's z over the batch of `reference`, position by position) or how="resample"
    (each prompt takes the head's z from the same row of `reference`, which must have the shape
    of the tokens run). Use them with `model.run_with_hooks(tokens, fwd_hooks=...)`."""
    if how not in ("zero", "mean", "resample"):
        raise ValueError(f"how must be 'zero', 'mean' or 'resample', got {how!r}.")
    if how in ("mean", "resample") and reference is None:
        raise ValueError(f"{how}-ablation needs `reference` tokens to take the head's output from.")
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(int(layer), []).append(int(head))
    hooks = []
    for layer, layer_heads in by_layer.items():
        means = mean_z(model, reference, layer) if how == "mean" else None
        resampled = _z(model, reference, layer) if how == "resample" else None

        def hook(z: Tensor, hook, layer_heads=layer_heads, means=means, resampled=resampled) -> Tensor:
            for head in layer_heads:
                if resampled is not None:
                    if resampled.shape[:2] != z.shape[:2]:
                        raise ValueError(f"resample-ablation pairs prompts row by row: reference tokens {tuple(resampled.shape[:2])}, tokens {tuple(z.shape[:2])}.")
                    z[:, :, head] = resampled[:, :, head]
                elif means is None:
                    z[:, :, head] = 0.0
                elif z.shape[1] > means.shape[0]:
                    raise ValueError(f"the reference batch has {means.shape[0]} positions; these tokens have {z.shape[1]}.")
                else:
                    z[:, :, head] = means[: z.shape[1], head]
            return z

        hooks.append((f"blocks.{layer}.attn.hook_z", hook))
    return hooks


def ablated_logits(
    model,
    tokens: Int[Tensor, "batch pos"],
    heads: Iterable[tuple[int, int]],
    how: str = "mean",
    reference: Int[Tensor, "batch pos"] | None = None,
) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits with every (layer, head) in `heads` ablated: how="zero", "mean" (mean over
    `reference`, default `tokens`, at each position) or "resample" (from the same row of
    `reference`). The hooks are removed afterwards."""
    hooks = head_ablation_hooks(model, heads, how, tokens if reference is None else reference)
    with torch.no_grad():
        return model.run_with_hooks(tokens, fwd_hooks=hooks)
