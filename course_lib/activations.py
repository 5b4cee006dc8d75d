"""Reading activations out of a model: the residual stream at a chosen layer.

Works for the toy models and for `TransformerBridge` models, which share TransformerLens hook
names (`blocks.{layer}.hook_resid_post` is the residual stream after block `layer`).
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor


def resid_after_layer(model, tokens: Int[Tensor, "batch pos"], layer: int) -> Float[Tensor, "batch pos d_model"]:
    """The residual stream after block `layer` (0-based; negative counts from the end)."""
    n_layers = model.cfg.n_layers
    if not -n_layers <= layer < n_layers:
        raise IndexError(f"layer {layer} is out of range for a model with {n_layers} layers.")
    name = f"blocks.{layer % n_layers}.hook_resid_post"
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=name)
    return cache[name]


def resid_stack(model, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "layer_plus_1 batch pos d_model"]:
    """The residual stream before block 0 and after every block: [n_layers + 1, batch, pos, d_model]."""
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.hook_resid_post" for l in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    return torch.stack([cache[n] for n in names])
