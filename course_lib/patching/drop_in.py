"""TransformerLens's sweep functions, same names, signatures and output, on the fast engine.

Replace `import transformer_lens.patching as patching` with `import course_lib.patching as patching`
and `patching.get_act_patch_resid_pre(model, corrupted_tokens, clean_cache, metric)` returns the same
tensor. Supported keyword: `reduce` ("scalar" or "mean"). TransformerLens's other options
(`index_df`, `baseline=True`, several metrics at once, reduce="none") are not: the error says so.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from course_lib.patching.sweeps import sweep


def _only_reduce(function: str, kwargs: dict) -> str:
    reduce = kwargs.pop("reduce", "scalar")
    if kwargs:
        raise TypeError(
            f"{function} supports only the keyword `reduce` ('scalar' or 'mean'); got {sorted(kwargs)}. "
            f"For TransformerLens's other options call transformer_lens.patching.{function}."
        )
    return reduce


def get_act_patch_resid_pre(model, corrupted_tokens: Int[Tensor, "batch pos"], clean_cache, patching_metric, **kwargs) -> Float[Tensor, "n_layers pos"]:
    """Patch the clean residual stream entering each layer, at each position: [n_layers, pos]."""
    reduce = _only_reduce("get_act_patch_resid_pre", kwargs)
    return sweep(model, corrupted_tokens, clean_cache, "resid_pre", patching_metric, reduce=reduce)


def get_act_patch_attn_out(model, corrupted_tokens: Int[Tensor, "batch pos"], clean_cache, patching_metric, **kwargs) -> Float[Tensor, "n_layers pos"]:
    """Patch each layer's clean attention output, at each position: [n_layers, pos]."""
    reduce = _only_reduce("get_act_patch_attn_out", kwargs)
    return sweep(model, corrupted_tokens, clean_cache, "attn_out", patching_metric, reduce=reduce)


def get_act_patch_mlp_out(model, corrupted_tokens: Int[Tensor, "batch pos"], clean_cache, patching_metric, **kwargs) -> Float[Tensor, "n_layers pos"]:
    """Patch each layer's clean MLP output, at each position: [n_layers, pos]."""
    reduce = _only_reduce("get_act_patch_mlp_out", kwargs)
    return sweep(model, corrupted_tokens, clean_cache, "mlp_out", patching_metric, reduce=reduce)


def get_act_patch_attn_head_out_all_pos(model, corrupted_tokens: Int[Tensor, "batch pos"], clean_cache, patching_metric, **kwargs) -> Float[Tensor, "n_layers n_heads"]:
    """Patch each head's clean output (its z) at every position at once: [n_layers, n_heads]."""
    reduce = _only_reduce("get_act_patch_attn_head_out_all_pos", kwargs)
    return sweep(model, corrupted_tokens, clean_cache, "head_out_all_pos", patching_metric, reduce=reduce)


def get_act_patch_attn_head_out_by_pos(model, corrupted_tokens: Int[Tensor, "batch pos"], clean_cache, patching_metric, **kwargs) -> Float[Tensor, "n_layers pos n_heads"]:
    """Patch each head's clean output (its z) at one position: [n_layers, pos, n_heads]."""
    reduce = _only_reduce("get_act_patch_attn_head_out_by_pos", kwargs)
    return sweep(model, corrupted_tokens, clean_cache, "head_out_by_pos", patching_metric, reduce=reduce)


def get_act_patch_block_every(model, corrupted_tokens: Int[Tensor, "batch pos"], clean_cache, metric, **kwargs) -> Float[Tensor, "3 n_layers pos"]:
    """resid_pre, attn_out and mlp_out sweeps stacked: [3, n_layers, pos]."""
    reduce = _only_reduce("get_act_patch_block_every", kwargs)
    return torch.stack(
        [sweep(model, corrupted_tokens, clean_cache, kind, metric, reduce=reduce) for kind in ("resid_pre", "attn_out", "mlp_out")]
    )
