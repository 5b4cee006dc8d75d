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

Two versions:

* models without normalization layers (the course's toy transformers): nodes are the embeddings
  and heads, and the gradient at a receiver's input is computed by hand from the gradient at its
  query, key or value (`input @ W_Q` etc.);
* TransformerBridge models with norms and MLPs (SmolLM2): nodes also include every MLP (a sender
  through its output, a receiver through its input). A head reads the residual stream through its
  layer's norm, so "the input of v" is the residual stream *before* that norm. TransformerLens's
  split inputs (`set_use_split_qkv_input`, `set_use_hook_mlp_in`) give every query head, every
  key/value head and every MLP its own copy of that residual stream, so one backward pass yields
  each receiver's own gradient, norm Jacobian included. With grouped-query attention, key and
  value receivers are key/value heads: "L{l}KV{g}.k" is read by query heads of group g.

`edge_circuit_metric` runs the model with only a chosen set of edges clean (every other edge
carries its sender's corrupted output), which measures how much of the behaviour the top edges
keep (Hanna et al. 2024's faithfulness for edge circuits).
"""

from __future__ import annotations

from typing import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from course_lib.patching.path import check_same_shape, n_kv_heads

RECEIVER_INPUTS = ("q", "k", "v")


def _has_norms(model) -> bool:
    return any(hasattr(block, name) for block in model.blocks for name in ("ln1", "ln2")) or hasattr(model, "ln_final")


def node_names(model) -> tuple[list[str], list[str]]:
    """(senders, receivers) in the order of the forward pass.

    Toy models: senders 'embed', 'L{l}H{h}'; receivers 'L{l}H{h}.q/k/v', 'logits'. Models with
    norms and MLPs add 'MLP{l}' to both, and name key/value receivers by key/value head:
    'L{l}KV{g}.k', 'L{l}KV{g}.v'.
    """
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    if not _has_norms(model):
        heads = [f"L{l}H{h}" for l in range(n_layers) for h in range(n_heads)]
        return ["embed"] + heads, [f"{head}.{x}" for head in heads for x in RECEIVER_INPUTS] + ["logits"]
    n_kv = n_kv_heads(model)
    senders, receivers = ["embed"], []
    for l in range(n_layers):
        senders += [f"L{l}H{h}" for h in range(n_heads)] + [f"MLP{l}"]
        receivers += [f"L{l}H{h}.q" for h in range(n_heads)]
        receivers += [f"L{l}KV{g}.{x}" for x in ("k", "v") for g in range(n_kv)] + [f"MLP{l}"]
    return senders, receivers + ["logits"]


def _order(name: str, n_layers: int) -> int:
    """Position in the forward pass: embed, then per layer its heads and then its MLP, then the logits."""
    if name == "embed":
        return -1
    if name == "logits":
        return 2 * n_layers
    if name.startswith("MLP"):
        return 2 * int(name[3:]) + 1
    return 2 * int(name[1 : name.index("H" if "H" in name else "K")])


def edge_attribution_scores(
    model,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Callable[[Tensor], Tensor],
) -> dict[tuple[str, str], float]:
    """EAP score of every edge (sender, receiver) whose sender comes before its receiver in the forward pass."""
    check_same_shape(clean_tokens, corrupted_tokens)
    if _has_norms(model):
        return _scores_through_norms(model, clean_tokens, corrupted_tokens, metric)
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
                if _order(sender, n_layers) < _order(receiver, n_layers):
                    scores[(sender, receiver)] = float((delta * grad).sum())
    return scores


# ------------------------------------------------------------------ models with norms and MLPs


class _SplitInputs:
    """Turn on TransformerLens's per-receiver residual inputs for the duration of a `with` block."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        if not hasattr(self.model, "set_use_split_qkv_input"):
            raise ValueError("edge attribution through norms needs a TransformerBridge (set_use_split_qkv_input).")
        self.before = (bool(getattr(self.model.cfg, "use_split_qkv_input", False)), bool(getattr(self.model.cfg, "use_hook_mlp_in", False)))
        self.model.set_use_split_qkv_input(True)
        self.model.set_use_hook_mlp_in(True)
        return self.model

    def __exit__(self, *exc):
        self.model.set_use_split_qkv_input(self.before[0])
        self.model.set_use_hook_mlp_in(self.before[1])


def _input_names(l: int) -> dict[str, str]:
    return {"q": f"blocks.{l}.attn.hook_q_input", "k": f"blocks.{l}.attn.hook_k_input",
            "v": f"blocks.{l}.attn.hook_v_input", "mlp": f"blocks.{l}.hook_mlp_in"}


def _sender_outputs(model, cache) -> Float[Tensor, "sender batch pos d_model"]:
    """Every sender's output in the residual stream, in `node_names` order."""
    outputs = [cache["blocks.0.hook_resid_pre"]]
    for l in range(model.cfg.n_layers):
        z = cache[f"blocks.{l}.attn.hook_z"]
        outputs += list(torch.einsum("bphd,hdm->hbpm", z, model.W_O[l]))
        outputs.append(cache[f"blocks.{l}.hook_mlp_out"])
    return torch.stack(outputs)


def _sender_names(model) -> list[str]:
    names = ["embed"]
    for l in range(model.cfg.n_layers):
        names += [f"blocks.{l}.attn.hook_z", f"blocks.{l}.hook_mlp_out"]
    return ["blocks.0.hook_resid_pre"] + names[1:]


def _scores_through_norms(model, clean_tokens, corrupted_tokens, metric) -> dict[tuple[str, str], float]:
    n_layers = model.cfg.n_layers
    senders, receivers = node_names(model)
    last = f"blocks.{n_layers - 1}.hook_resid_post"
    wanted = [last] + [name for l in range(n_layers) for name in _input_names(l).values()]
    acts: dict[str, Tensor] = {}

    def keep(name: str):
        def hook(value, hook):
            acts[name] = value
            return value
        return hook

    def leaf(embed, hook):  # the graph starts at the embeddings, whether or not the weights require grad
        return embed.detach().requires_grad_(True)

    with _SplitInputs(model), torch.enable_grad():
        logits = model.run_with_hooks(clean_tokens, fwd_hooks=[("hook_embed", leaf)] + [(n, keep(n)) for n in wanted])
        grads = dict(zip(wanted, torch.autograd.grad(metric(logits), [acts[n] for n in wanted])))
    acts.clear()
    with torch.no_grad():
        keep_names = set(_sender_names(model))
        _, clean = model.run_with_cache(clean_tokens, names_filter=lambda n: n in keep_names)
        _, corrupted = model.run_with_cache(corrupted_tokens, names_filter=lambda n: n in keep_names)
        deltas = _sender_outputs(model, corrupted) - _sender_outputs(model, clean)  # [sender, batch, pos, d_model]

        reads = []  # the metric's gradient at each receiver's own residual input, in receiver order
        for l in range(n_layers):
            names = _input_names(l)
            reads += list(grads[names["q"]].permute(2, 0, 1, 3))
            reads += list(grads[names["k"]].permute(2, 0, 1, 3)) + list(grads[names["v"]].permute(2, 0, 1, 3))
            reads.append(grads[names["mlp"]])
        reads.append(grads[last])
        table = torch.einsum("ubpd,rbpd->ur", deltas, torch.stack(reads))
    order_s = [_order(name, n_layers) for name in senders]
    order_r = [_order(name, n_layers) for name in receivers]
    return {
        (s, r): float(table[i, j])
        for i, s in enumerate(senders) for j, r in enumerate(receivers) if order_s[i] < order_r[j]
    }


def edge_circuit_metric(
    model,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    edges: set[tuple[str, str]],
    metric: Callable[[Tensor], Tensor],
) -> float:
    """metric of the clean run in which only `edges` are clean: every other edge (u, v) carries u's corrupted output.

    Each receiver's input becomes its input in this run minus, for every sender whose edge to it is
    not kept, (that sender's output in this run - its output on the corrupted tokens). All edges
    kept gives the clean run; none kept gives the corrupted run (on a model with norms and MLPs).
    """
    if not _has_norms(model):
        raise ValueError("edge_circuit_metric is written for TransformerBridge models with norms and MLPs (SmolLM2).")
    check_same_shape(clean_tokens, corrupted_tokens)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    senders, receivers = node_names(model)
    unknown = [e for e in edges if e[0] not in senders or e[1] not in receivers
               or _order(e[0], n_layers) >= _order(e[1], n_layers)]
    if unknown:
        raise ValueError(f"{unknown[:3]} are not edges of this model (a sender must come before its receiver); see node_names(model).")
    index = {name: i for i, name in enumerate(senders)}
    # dropped[r, u] = 1: the edge u -> r exists (u comes first) and is not kept, so it carries u's corrupted output.
    dropped = torch.tensor([[float(_order(u, n_layers) < _order(r, n_layers)) for u in senders] for r in receivers])
    for u, r in edges:
        dropped[receivers.index(r), index[u]] = 0.0
    row = {name: i for i, name in enumerate(receivers)}
    with torch.no_grad():
        keep_names = set(_sender_names(model))
        _, corrupted = model.run_with_cache(corrupted_tokens, names_filter=lambda n: n in keep_names)
        corrupted_out = _sender_outputs(model, corrupted)
        current = torch.zeros_like(corrupted_out)  # each sender's output in this run, filled as it is computed
        n_kv = n_kv_heads(model)

        def record_embed(value, hook):
            current[0] = value
            return value

        def record_z(l):
            def hook(z, hook):
                current[1 + l * (n_heads + 1) : 1 + l * (n_heads + 1) + n_heads] = torch.einsum("bphd,hdm->hbpm", z, model.W_O[l])
                return z
            return hook

        def record_mlp(l):
            def hook(out, hook):
                current[(l + 1) * (n_heads + 1)] = out
                return out
            return hook

        def correction(receiver: str) -> Tensor:
            return torch.einsum("u,ubpd->bpd", dropped[row[receiver]], current - corrupted_out)

        def patch_heads(l, x):
            def hook(value, hook):
                names = [f"L{l}H{h}.q" for h in range(n_heads)] if x == "q" else [f"L{l}KV{g}.{x}" for g in range(n_kv)]
                for slot, name in enumerate(names):
                    value[:, :, slot] = value[:, :, slot] - correction(name)
                return value
            return hook

        def patch_mlp(l):
            def hook(value, hook):
                return value - correction(f"MLP{l}")
            return hook

        def patch_logits(value, hook):
            return value - correction("logits")

        hooks = [("blocks.0.hook_resid_pre", record_embed)]
        for l in range(n_layers):
            names = _input_names(l)
            hooks += [(names[x], patch_heads(l, x)) for x in ("q", "k", "v")]
            hooks += [(f"blocks.{l}.attn.hook_z", record_z(l)), (names["mlp"], patch_mlp(l)), (f"blocks.{l}.hook_mlp_out", record_mlp(l))]
        hooks.append((f"blocks.{n_layers - 1}.hook_resid_post", patch_logits))
        with _SplitInputs(model):
            return float(metric(model.run_with_hooks(clean_tokens, fwd_hooks=hooks)))
