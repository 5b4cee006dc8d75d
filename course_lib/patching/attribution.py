"""Attribution patching: a first-order estimate of every patch at once (Nanda 2023; Kramar et al. 2024).

Patching location a from the source run into the base run changes the metric M by

    M(base with a := a_source) - M(base)  ~  (a_source - a_base) . dM/da   (gradient at the base run)

so one forward and one backward pass of the base run (plus the source cache) estimate every
location of a sweep. The estimate is exact when M is linear in a along the way from a_base to
a_source; it fails where that path crosses a nonlinearity that saturates or switches: a big change
such as the whole residual stream at the subject, MLP0 (whose output on a new token is nothing like
a small step), or an attention softmax that moves from one key to another (AtP*'s point: queries and
keys act through the softmax, so their first-order terms can be badly off).

`attribution_sweep` returns the *estimated patched metric* (M(base) + estimate), in the same shape
as `sweeps.sweep`, so the two can be plotted and compared directly.
"""

from __future__ import annotations

from typing import Callable

import torch
from jaxtyping import Int
from torch import Tensor

from course_lib.patching.sweeps import HOOK_NAMES, _check_inputs, result_shape


def activations_and_gradients(model, tokens: Int[Tensor, "batch pos"], names: list[str], metric: Callable) -> tuple[float, dict[str, Tensor], dict[str, Tensor]]:
    """The metric of a run of `tokens`, and each named activation with dM/d(activation)."""
    saved: dict[str, Tensor] = {}

    def leaf(x: Tensor, hook) -> Tensor:
        # The weights are frozen, so make the embedding a leaf that needs a gradient.
        return x.detach().requires_grad_(True)

    def keeper(name: str):
        # Saved under the name asked for: a bridge's hook.name may be the canonical alias.
        def keep(x: Tensor, hook) -> Tensor:
            x.retain_grad()
            saved[name] = x
            return x

        return keep

    hooks = [("hook_embed", leaf)] + [(name, keeper(name)) for name in names]
    with torch.enable_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
        value = metric(logits)
        if not isinstance(value, Tensor) or value.ndim != 0:
            raise ValueError("attribution patching needs a metric that returns a 0-d tensor (average over the batch).")
        value.backward()
    missing = [n for n in names if n not in saved or saved[n].grad is None]
    if missing:
        raise RuntimeError(f"no gradient reached {missing[:3]}: is the metric computed from the logits?")
    acts = {n: saved[n].detach() for n in names}
    grads = {n: saved[n].grad.detach() for n in names}
    return float(value.detach()), acts, grads


def attribution_sweep(model, base_tokens: Int[Tensor, "batch pos"], source_cache, kind: str, metric: Callable) -> Tensor:
    """Estimated metric after patching each location of `kind` from the source cache; shape as `sweep`."""
    _check_inputs(model, base_tokens, source_cache, kind)
    names = [HOOK_NAMES[kind].format(layer) for layer in range(model.cfg.n_layers)]
    base_value, acts, grads = activations_and_gradients(model, base_tokens, names, metric)
    per_layer = []
    for name in names:
        change = source_cache[name] - acts[name]
        if kind in ("resid_pre", "attn_out", "mlp_out"):
            # [batch, pos, d_model] -> [pos]: a patch at (layer, pos) changes every prompt at once.
            per_layer.append(torch.einsum("bpd,bpd->p", change, grads[name]))
        elif kind == "head_out_all_pos":
            per_layer.append(torch.einsum("bphd,bphd->h", change, grads[name]))
        else:
            per_layer.append(torch.einsum("bphd,bphd->ph", change, grads[name]))
    estimate = torch.stack(per_layer).reshape(result_shape(model, kind, base_tokens.shape[1]))
    return base_value + estimate
