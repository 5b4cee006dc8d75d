"""Edge attribution patching (EAP, Syed et al. 2023): a first-order score for every edge of the model.

An edge u -> v joins a component u that writes to the residual stream (the embeddings, a head)
to an input of a later component v that reads it (a head's query, key or value, or the logits).
Path patching measures one edge at a time with forward passes; EAP estimates all of them from one
clean forward and backward pass and one corrupted forward pass:

    score(u -> v) = sum over batch and positions of (a_u(corrupted) - a_u(clean)) . dmetric/d(input of v)

where a_u is u's output in the residual stream and the gradient is taken on the clean run with
respect to the residual-stream vector v reads. It is the first-order Taylor estimate of patching
that single edge (attribution patching, applied to edges instead of nodes).

On a model whose logits are linear in the residual stream (no final norm), the estimate is exact
for edges into the logits, and for edges into a value when the metric is linear in the logits:
attention patterns depend on queries and keys only. Query and key edges pass through a softmax,
so their estimates are approximations (the test suite measures them against path patching).

This version handles models without normalization layers (the course's toy transformers); a
model with layer norms needs the norm's Jacobian on every edge and is refused with that reason.
"""

from __future__ import annotations

from typing import Callable

import torch
from jaxtyping import Int
from torch import Tensor

from course_lib.patching.path import check_same_shape

RECEIVER_INPUTS = ("q", "k", "v")


def node_names(model) -> tuple[list[str], list[str]]:
    """(senders, receivers): 'embed' and 'L{l}H{h}'; 'L{l}H{h}.q/k/v' and 'logits'."""
    heads = [f"L{l}H{h}" for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    receivers = [f"{head}.{x}" for head in heads for x in RECEIVER_INPUTS] + ["logits"]
    return ["embed"] + heads, receivers


def _layer(name: str, n_layers: int) -> int:
    if name == "embed":
        return -1
    if name == "logits":
        return n_layers
    return int(name[1 : name.index("H")])


def edge_attribution_scores(
    model,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Callable[[Tensor], Tensor],
) -> dict[tuple[str, str], float]:
    """EAP score of every edge (sender, receiver) whose sender sits in an earlier layer than its receiver."""
    if any(hasattr(block, name) for block in model.blocks for name in ("ln1", "ln2")) or hasattr(model, "ln_final"):
        raise ValueError(
            "edge_attribution_scores handles models without normalization layers (the toy transformers); "
            "with layer norms every edge needs the norm's Jacobian, which this version does not compute."
        )
    check_same_shape(clean_tokens, corrupted_tokens)
    n_layers = model.cfg.n_layers
    names = ["blocks.0.hook_resid_pre", f"blocks.{n_layers - 1}.hook_resid_post"]
    names += [f"blocks.{l}.attn.hook_{x}" for l in range(n_layers) for x in ("z",) + RECEIVER_INPUTS]

    # Clean run with gradients of the metric at every receiver input.
    acts: dict[str, Tensor] = {}

    def keep(name: str):
        def hook(value, hook):
            acts[name] = value
            return value
        return hook

    def leaf(embed, hook):  # the graph starts here, so no parameter gradient is ever accumulated
        return embed.detach().requires_grad_(True)

    with torch.enable_grad():
        logits = model.run_with_hooks(
            clean_tokens, fwd_hooks=[("hook_embed", leaf)] + [(n, keep(n)) for n in names]
        )
        wanted = [f"blocks.{n_layers - 1}.hook_resid_post"] + [
            f"blocks.{l}.attn.hook_{x}" for l in range(n_layers) for x in RECEIVER_INPUTS
        ]
        grads = dict(zip(wanted, torch.autograd.grad(metric(logits), [acts[n] for n in wanted], allow_unused=True)))
    clean = {n: a.detach() for n, a in acts.items()}
    with torch.no_grad():
        _, corrupted = model.run_with_cache(corrupted_tokens, names_filter=lambda n: n in set(names))

        # What each sender writes differently into the residual stream: [batch, pos, d_model].
        deltas = {"embed": corrupted["blocks.0.hook_resid_pre"] - clean["blocks.0.hook_resid_pre"]}
        for l in range(n_layers):
            dz = corrupted[f"blocks.{l}.attn.hook_z"] - clean[f"blocks.{l}.attn.hook_z"]
            for h in range(model.cfg.n_heads):
                deltas[f"L{l}H{h}"] = torch.einsum("bpd,dm->bpm", dz[:, :, h], model.W_O[l, h])

        # The metric's gradient with respect to the residual-stream vector each receiver reads.
        weights = {"q": model.W_Q, "k": model.W_K, "v": model.W_V}
        reads = {"logits": grads[f"blocks.{n_layers - 1}.hook_resid_post"]}
        for l in range(n_layers):
            for x in RECEIVER_INPUTS:
                g = grads[f"blocks.{l}.attn.hook_{x}"]
                for h in range(model.cfg.n_heads):
                    reads[f"L{l}H{h}.{x}"] = (
                        torch.zeros_like(reads["logits"]) if g is None
                        else torch.einsum("bpd,md->bpm", g[:, :, h], weights[x][l, h])
                    )

        scores = {}
        for sender, delta in deltas.items():
            for receiver, grad in reads.items():
                if _layer(sender, n_layers) < _layer(receiver, n_layers):
                    scores[(sender, receiver)] = float((delta * grad).sum())
    return scores
