"""Path patching: the effect of a sender head on a receiver through the direct path only.

After Wang et al. 2022 (IOI, Appendix: path patching) and Goldowsky-Dill et al. 2023. Activation
patching a head's output measures its total effect, through every later component. Path patching
asks a narrower question: how much does the sender matter *through one receiver's input*?

1. Run the clean input and the corrupted input, caching every head's output (`hook_z`) and every
   MLP's output.
2. Run the clean input again with every head and MLP frozen to its clean value, except the
   sender, which gets its corrupted value. With everything else frozen, the residual stream
   differs from the clean one only by the sender's own contribution, so the receiver's input
   (its query, key or value) in this run is the clean input plus the direct path from the sender.
3. Run the clean input once more, everything free, with only the receiver's input replaced by
   the one from step 2; measure the metric.

With no receiver, step 2's own logits are the answer: the path sender -> logits (the sender's
direct effect). Freezing MLPs as well as heads follows the definition of a direct path; ARENA's
IOI exercises freeze heads only and let MLPs recompute, which counts paths through MLPs too.

Grouped-query attention (SmolLM2: 9 query heads share 3 key/value heads). Every query head has a
query of its own, but keys and values belong to key/value heads: patching the key or value input
of query head h patches key/value head h // 3, which three query heads read. `kv_group` names
them, and the result is the effect through that shared input.
"""

from __future__ import annotations

from typing import Callable, Literal, Sequence

import torch
from jaxtyping import Int
from torch import Tensor

Head = tuple[int, int]
ReceiverInput = Literal["q", "k", "v"]


def n_kv_heads(model) -> int:
    """Key/value heads per layer: n_heads for ordinary attention, fewer with grouped-query attention."""
    return getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads


def kv_head(model, head: int) -> int:
    """The key/value head that query head `head` reads (itself without grouped-query attention)."""
    return head // (model.cfg.n_heads // n_kv_heads(model))


def kv_group(model, head: int) -> list[int]:
    """The query heads that share `head`'s keys and values (just [head] without GQA)."""
    size = model.cfg.n_heads // n_kv_heads(model)
    first = kv_head(model, head) * size
    return list(range(first, first + size))


def check_same_shape(clean_tokens: Tensor, corrupted_tokens: Tensor) -> None:
    """Patching swaps activations position by position: both batches must have one shape."""
    if clean_tokens.shape != corrupted_tokens.shape:
        raise ValueError(
            f"clean and corrupted tokens must have the same shape, got {tuple(clean_tokens.shape)} "
            f"and {tuple(corrupted_tokens.shape)}."
        )


def _check_heads(model, heads: Sequence[Head], what: str) -> list[Head]:
    heads = [tuple(map(int, h)) for h in heads]
    for layer, head in heads:
        if not (0 <= layer < model.cfg.n_layers and 0 <= head < model.cfg.n_heads):
            raise ValueError(
                f"{what} ({layer}, {head}) is not a head of this model "
                f"({model.cfg.n_layers} layers x {model.cfg.n_heads} heads); heads are (layer, head) pairs."
            )
    return heads


def _mlp_hooks(model) -> list[str]:
    names = {f"blocks.{layer}.hook_mlp_out" for layer in range(model.cfg.n_layers)}
    return sorted(names & set(model.hook_dict))


def _frozen_run_hooks(model, clean_cache, corrupted_cache, senders: list[Head]):
    """Hooks for step 2: every head and MLP at its clean value, the senders at their corrupted one."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in senders:
        by_layer.setdefault(layer, []).append(head)

    def z_hook(layer: int):
        def hook(z, hook):
            frozen = clean_cache[f"blocks.{layer}.attn.hook_z"].clone()
            for head in by_layer.get(layer, []):
                frozen[:, :, head] = corrupted_cache[f"blocks.{layer}.attn.hook_z"][:, :, head]
            return frozen
        return hook

    def mlp_hook(name: str):
        return lambda out, hook: clean_cache[name]

    hooks = [(f"blocks.{layer}.attn.hook_z", z_hook(layer)) for layer in range(model.cfg.n_layers)]
    return hooks + [(name, mlp_hook(name)) for name in _mlp_hooks(model)]


def path_patching_caches(model, clean_tokens: Int[Tensor, "batch pos"], corrupted_tokens: Int[Tensor, "batch pos"]) -> tuple:
    """Step 1 of path patching: (clean cache, corrupted cache) of every head's z and MLP's output."""
    check_same_shape(clean_tokens, corrupted_tokens)
    keep = {f"blocks.{l}.attn.hook_z" for l in range(model.cfg.n_layers)} | set(_mlp_hooks(model))
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean_tokens, names_filter=lambda name: name in keep)
        _, corrupted_cache = model.run_with_cache(corrupted_tokens, names_filter=lambda name: name in keep)
    return clean_cache, corrupted_cache


def path_patch(
    model,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    senders: Sequence[Head],
    metric: Callable[[Tensor], Tensor],
    receivers: Sequence[Head] | None = None,
    receiver_input: ReceiverInput = "q",
    receiver_pos: int | Sequence[int] | Tensor | None = None,
    caches: tuple | None = None,
) -> float:
    """The metric on the clean input when only the paths senders -> receivers' input are corrupted.

    senders, receivers: (layer, head) pairs; every receiver must sit in a later layer than every
    sender. receivers=None measures the path to the logits. receiver_input: "q", "k" or "v".
    receiver_pos: the position(s) where the receiver's input is patched (one int for all prompts,
    or one per prompt); None patches every position. The senders are patched at every position.
    caches: `path_patching_caches(model, clean, corrupted)`, to reuse step 1 across many calls
    on the same prompts.
    """
    check_same_shape(clean_tokens, corrupted_tokens)
    if receiver_input not in ("q", "k", "v"):
        raise ValueError(f"receiver_input must be 'q', 'k' or 'v', got {receiver_input!r}.")
    senders = _check_heads(model, senders, "sender")
    if not senders:
        raise ValueError("give at least one sender head, e.g. senders=[(0, 1)].")
    with torch.no_grad():
        clean_cache, corrupted_cache = caches if caches is not None else path_patching_caches(model, clean_tokens, corrupted_tokens)
        frozen = _frozen_run_hooks(model, clean_cache, corrupted_cache, senders)

        if receivers is None:  # the path to the logits: step 2 is the answer
            return float(metric(model.run_with_hooks(clean_tokens, fwd_hooks=frozen)))

        receivers = _check_heads(model, receivers, "receiver")
        first_receiver_layer = min(layer for layer, _ in receivers)
        if first_receiver_layer <= max(layer for layer, _ in senders):
            raise ValueError(
                f"every receiver must be in a later layer than every sender (senders {senders}, receivers "
                f"{receivers}): a head reads only what earlier layers wrote."
            )
        input_names = {f"blocks.{layer}.attn.hook_{receiver_input}" for layer, _ in receivers}
        captured: dict[str, Tensor] = {}

        # Hooks are made per name: TransformerBridge calls a hook with its canonical name
        # (blocks.L.attn.k.hook_out), not the alias it was registered under (blocks.L.attn.hook_k).
        def capture(name: str):
            def hook(value, hook):
                captured[name] = value.clone()
            return hook

        model.run_with_hooks(clean_tokens, fwd_hooks=frozen + [(name, capture(name)) for name in input_names])

        # Step 3: the clean run with only the receivers' input replaced. Query inputs belong to
        # query heads; key and value inputs to key/value heads (grouped-query attention).
        index = {}
        for layer, head in receivers:
            slot = head if receiver_input == "q" else kv_head(model, head)
            index.setdefault(f"blocks.{layer}.attn.hook_{receiver_input}", set()).add(slot)
        batch = torch.arange(clean_tokens.shape[0])
        if receiver_pos is None:
            pos = slice(None)
        else:
            pos = torch.as_tensor(receiver_pos)
            pos = pos.expand(clean_tokens.shape[0]) if pos.ndim == 0 else pos

        def patch(name: str):
            def hook(value, hook):
                for slot in sorted(index[name]):
                    if isinstance(pos, slice):
                        value[:, :, slot] = captured[name][:, :, slot]
                    else:
                        value[batch, pos, slot] = captured[name][batch, pos, slot]
                return value
            return hook

        logits = model.run_with_hooks(clean_tokens, fwd_hooks=[(name, patch(name)) for name in index])
        return float(metric(logits))


def path_patch_heads_to_logits(
    model,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Callable[[Tensor], Tensor],
    chunk: int = 16,
) -> Tensor:
    """`path_patch(model, clean, corrupted, [(l, h)], metric)` for every head at once: [n_layers, n_heads].

    With every other head and MLP frozen, the final residual stream is the clean one plus the
    sender's change, (z_corrupted - z_clean) @ W_O, so step 2 needs no forward pass per head: one
    clean and one corrupted run, then the final norm and unembedding on the changed residual.
    Only the last position is unembedded, so `metric` must read only the last position (the
    course's logit-difference metrics do); anything else is refused.
    """
    from course_lib.lens import final_norm_and_unembed
    from course_lib.patching.sweeps import reads_only_last_position

    check_same_shape(clean_tokens, corrupted_tokens)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    last = f"blocks.{n_layers - 1}.hook_resid_post"
    keep = {f"blocks.{l}.attn.hook_z" for l in range(n_layers)} | {last}
    with torch.no_grad():
        clean_logits, clean_cache = model.run_with_cache(clean_tokens, names_filter=lambda name: name in keep)
        _, corrupted_cache = model.run_with_cache(corrupted_tokens, names_filter=lambda name: name in keep)
        if not reads_only_last_position(metric, clean_logits):
            raise ValueError("the metric must read only the last position's logits (e.g. a logit difference).")
        # Each head's change to the final residual stream at the last position: [layer, head, batch, d_model].
        deltas = torch.stack([
            torch.einsum(
                "bhd,hdm->hbm",
                corrupted_cache[f"blocks.{l}.attn.hook_z"][:, -1] - clean_cache[f"blocks.{l}.attn.hook_z"][:, -1],
                model.W_O[l],
            )
            for l in range(n_layers)
        ])
        resid = clean_cache[last][:, -1]  # [batch, d_model]
        flat = deltas.reshape(n_layers * n_heads, *resid.shape)
        values = []
        for start in range(0, flat.shape[0], chunk):
            logits = final_norm_and_unembed(model, resid + flat[start : start + chunk])  # [chunk, batch, vocab]
            values += [float(metric(head_logits[:, None, :])) for head_logits in logits]
    return torch.tensor(values).reshape(n_layers, n_heads)
