"""Activation-patching sweeps: patch one location at a time, everywhere, and read a metric.

`sweep(model, base_tokens, source_cache, kind, metric)` runs the *base* tokens and, for every
location of `kind`, replaces that one activation with the source cache's and evaluates
`metric(logits)`. Which run is which sets the direction:

* denoising: base = corrupted tokens, source = the clean cache. A location that restores the
  clean behaviour is *sufficient* (with everything else corrupted) to carry it;
* noising: base = clean tokens, source = the corrupted cache. A location that destroys the
  behaviour is *necessary* for it.

Kinds and result shapes (the same as TransformerLens's `get_act_patch_*`):

| kind               | what is patched                          | shape                   |
|--------------------|------------------------------------------|-------------------------|
| `resid_pre`        | the residual stream entering layer l, at p | [n_layers, pos]       |
| `attn_out`         | the attention output of layer l, at p    | [n_layers, pos]         |
| `mlp_out`          | the MLP output of layer l, at p          | [n_layers, pos]         |
| `head_out_all_pos` | head h's output (its z), every position  | [n_layers, n_heads]     |
| `head_out_by_pos`  | head h's output (its z), at p            | [n_layers, pos, n_heads]|

On a Llama-family `TransformerBridge` (SmolLM2) the sweep reruns only what a patch can change
(`engine.LlamaStack`); any other model (the toy models, GPT-2, a bridge in compatibility mode) goes
through hooks, many locations per forward pass. Both give TransformerLens's numbers (tests).
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from course_lib.patching.engine import BaseRun, Entry, LlamaStack

KINDS = ("resid_pre", "attn_out", "mlp_out", "head_out_all_pos", "head_out_by_pos")
HOOK_NAMES = {
    "resid_pre": "blocks.{}.hook_resid_pre",
    "attn_out": "blocks.{}.hook_attn_out",
    "mlp_out": "blocks.{}.hook_mlp_out",
    "head_out_all_pos": "blocks.{}.attn.hook_z",
    "head_out_by_pos": "blocks.{}.attn.hook_z",
}
# How many activations (rows x d_model floats) one batch of patched runs may hold at once.
MAX_BATCH_FLOATS = 2**25


def _n_heads(model) -> int:
    return int(model.cfg.n_heads)


def locations(model, kind: str, n_pos: int) -> list[tuple[int, ...]]:
    """Every location of `kind`, in the order the result tensor lists them."""
    if kind not in KINDS:
        raise ValueError(f"unknown patching kind {kind!r}; choose one of {KINDS}.")
    layers = range(model.cfg.n_layers)
    if kind in ("resid_pre", "attn_out", "mlp_out"):
        return [(l, p) for l in layers for p in range(n_pos)]
    if kind == "head_out_all_pos":
        return [(l, h) for l in layers for h in range(_n_heads(model))]
    return [(l, p, h) for l in layers for p in range(n_pos) for h in range(_n_heads(model))]


def result_shape(model, kind: str, n_pos: int) -> tuple[int, ...]:
    """The shape of a sweep's result: [n_layers, pos], [n_layers, n_heads] or [n_layers, pos, n_heads]."""
    if kind in ("resid_pre", "attn_out", "mlp_out"):
        return (model.cfg.n_layers, n_pos)
    if kind == "head_out_all_pos":
        return (model.cfg.n_layers, _n_heads(model))
    return (model.cfg.n_layers, n_pos, _n_heads(model))


def reads_only_last_position(metric: Callable, logits: Tensor) -> bool:
    """True when `metric(logits)` ignores every position but the last (probed twice: NaN and noise).

    The engine then unembeds only the last position; otherwise every recomputed position.
    """
    reference = torch.as_tensor(metric(logits))
    generator = torch.Generator().manual_seed(0)
    for fill in (float("nan"), None):
        probe = logits.clone()
        if fill is None:
            probe[:, :-1] = torch.randn(probe[:, :-1].shape, generator=generator) * 10
        else:
            probe[:, :-1] = fill
        if not torch.equal(torch.as_tensor(metric(probe)), reference):
            return False
    return True


def _scalar(value, reduce: str, batch: int) -> Tensor:
    """The metric's value as a 0-d tensor; reduce='mean' averages a [batch] metric."""
    value = torch.as_tensor(value).detach()
    if reduce == "mean":
        if value.shape != (batch,):
            raise ValueError(f"with reduce='mean' the metric must return a [batch] tensor of length {batch}, got shape {tuple(value.shape)}.")
        return value.float().mean()
    if value.ndim != 0:
        raise ValueError(
            f"the metric must return a single number (a 0-d tensor), got shape {tuple(value.shape)}; "
            "average over the batch inside the metric, or pass reduce='mean' for a [batch] metric."
        )
    return value.float()


def _check_inputs(model, tokens: Tensor, source_cache, kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown patching kind {kind!r}; choose one of {KINDS}.")
    if not isinstance(tokens, Tensor) or tokens.ndim != 2:
        raise ValueError(f"tokens must be a [batch, pos] tensor of token ids, got {type(tokens).__name__} {getattr(tokens, 'shape', '')}.")
    name = HOOK_NAMES[kind].format(0)
    try:
        source = source_cache[name]
    except KeyError:
        if kind == "mlp_out" and not hasattr(model.blocks[0], "mlp"):
            raise ValueError("this model has no MLPs (attention-only), so there is no mlp_out to patch.") from None
        raise ValueError(f"the source cache has no {name!r}; run the source prompt with run_with_cache (no names_filter that drops it).") from None
    if source.shape[:2] != tokens.shape:
        raise ValueError(
            f"the source cache was made from tokens of shape {tuple(source.shape[:2])}, but the base "
            f"tokens have shape {tuple(tokens.shape)}: patching needs prompts of the same length."
        )


def sweep(
    model,
    base_tokens: Int[Tensor, "batch pos"],
    source_cache,
    kind: str,
    metric: Callable[[Tensor], Tensor] | Mapping[str, Callable[[Tensor], Tensor]],
    *,
    reduce: str = "scalar",
    last_position_only: bool | None = None,
    progress: bool = True,
) -> Tensor | dict[str, Tensor]:
    """Patch every location of `kind` from `source_cache` into a run of `base_tokens`; metric per location.

    `metric` may be a dict of metrics: every one is read from the same patched runs and a dict of
    results comes back. `last_position_only=None` probes the metric (see `reads_only_last_position`).
    """
    if reduce not in ("scalar", "mean"):
        raise ValueError(f"reduce must be 'scalar' or 'mean', got {reduce!r}.")
    _check_inputs(model, base_tokens, source_cache, kind)
    batch, n_pos = base_tokens.shape
    metrics = dict(metric) if isinstance(metric, Mapping) else {"metric": metric}

    def evaluate(logits: Tensor) -> Tensor:
        return torch.stack([_scalar(fn(logits), reduce, batch) for fn in metrics.values()])

    if LlamaStack.supports(model):
        values = _sweep_llama(model, base_tokens, source_cache, kind, evaluate, last_position_only, progress)
    else:
        values = _sweep_hooks(model, base_tokens, source_cache, kind, evaluate, progress)
    shape = result_shape(model, kind, n_pos)
    if not isinstance(metric, Mapping):
        return values[:, 0].reshape(shape)
    return {name: values[:, i].reshape(shape) for i, name in enumerate(metrics)}


# ----- the fast path: rerun only what changes ---------------------------------------------------
def _stack(model) -> LlamaStack:
    """The model's LlamaStack, built once and kept on the model."""
    stack = getattr(model, "_course_llama_stack", None)
    if stack is None:
        stack = LlamaStack(model.original_model)
        model._course_llama_stack = stack
    return stack


def _entry(stack: LlamaStack, run: BaseRun, cache, kind: str, loc: tuple[int, ...]) -> Entry:
    """Where the patched run for one location starts, and its residual stream there."""
    layer = loc[0]
    name = HOOK_NAMES[kind].format(layer)
    if kind == "resid_pre":
        pos = loc[1]
        resid = run.resid_pre[layer][:, pos:].clone()
        resid[:, 0] = cache[name][:, pos]
        return Entry(2 * layer, pos, resid)
    if kind == "attn_out":
        pos = loc[1]
        resid = run.resid_mid[layer][:, pos:].clone()
        resid[:, 0] = run.resid_pre[layer][:, pos] + cache[name][:, pos]
        return Entry(2 * layer + 1, pos, resid)
    if kind == "mlp_out":
        pos = loc[1]
        resid = run.resid_pre[layer + 1][:, pos:].clone()
        resid[:, 0] = run.resid_mid[layer][:, pos] + cache[name][:, pos]
        return Entry(2 * layer + 2, pos, resid)
    if kind == "head_out_all_pos":
        head = loc[1]
        z = run.z[layer].clone()
        z[:, :, head] = cache[name][:, :, head]
        return Entry(2 * layer + 1, 0, run.resid_pre[layer] + stack.attn_out(layer, z))
    pos, head = loc[1], loc[2]
    z = run.z[layer][:, pos : pos + 1].clone()
    z[:, 0, head] = cache[name][:, pos, head]
    resid = run.resid_mid[layer][:, pos:].clone()
    resid[:, :1] = run.resid_pre[layer][:, pos : pos + 1] + stack.attn_out(layer, z)
    return Entry(2 * layer + 1, pos, resid)


def _sweep_llama(model, tokens, cache, kind, evaluate, last_position_only, progress) -> Tensor:
    stack = _stack(model)
    run = stack.base_run(tokens)
    if last_position_only is None:
        last_position_only = reads_only_last_position(evaluate, run.logits)
    locs = locations(model, kind, tokens.shape[1])
    by_start: dict[int, list[int]] = {}
    for i, loc in enumerate(locs):
        start = 0 if kind == "head_out_all_pos" else loc[1]
        by_start.setdefault(start, []).append(i)
    values = torch.empty(len(locs), len(evaluate(run.logits)))
    batch, n_pos = tokens.shape
    d_wide = max(stack.layers[0]["W_gate"].shape[0] * 2, stack.W_U.shape[0] if not last_position_only else 0)
    bar = tqdm(total=len(locs), desc=f"patching {kind}", disable=not progress, leave=False)
    for start, indices in by_start.items():
        per_chunk = max(1, MAX_BATCH_FLOATS // (batch * (n_pos - start) * d_wide))
        for c in range(0, len(indices), per_chunk):
            chunk = indices[c : c + per_chunk]
            entries = [_entry(stack, run, cache, kind, locs[i]) for i in chunk]
            logits = stack.rerun(run, entries, last_position_only)
            for i, piece in zip(chunk, logits):
                full = run.logits.clone()
                if last_position_only:
                    full[:, -1:] = piece
                else:
                    full[:, start:] = piece
                values[i] = evaluate(full)
            bar.update(len(chunk))
    bar.close()
    return values


# ----- the general path: hooks, many locations per forward pass ---------------------------------
def _sweep_hooks(model, tokens, cache, kind, evaluate, progress) -> Tensor:
    locs = locations(model, kind, tokens.shape[1])
    batch, n_pos = tokens.shape
    per_forward = max(1, MAX_BATCH_FLOATS // (batch * n_pos * max(model.cfg.d_model * 4, model.cfg.d_vocab)))
    values = None
    by_layer: dict[int, list[int]] = {}
    for i, loc in enumerate(locs):
        by_layer.setdefault(loc[0], []).append(i)
    bar = tqdm(total=len(locs), desc=f"patching {kind}", disable=not progress, leave=False)
    for layer, indices in by_layer.items():
        name = HOOK_NAMES[kind].format(layer)
        source = cache[name]
        for c in range(0, len(indices), per_forward):
            chunk = indices[c : c + per_forward]

            def patch(act: Tensor, hook, chunk=chunk) -> Tensor:
                act = act.clone()
                for k, i in enumerate(chunk):
                    rows = slice(k * batch, (k + 1) * batch)
                    loc = locs[i]
                    if kind in ("resid_pre", "attn_out", "mlp_out"):
                        act[rows, loc[1]] = source[:, loc[1]]
                    elif kind == "head_out_all_pos":
                        act[rows, :, loc[1]] = source[:, :, loc[1]]
                    else:
                        act[rows, loc[1], loc[2]] = source[:, loc[1], loc[2]]
                return act

            with torch.no_grad():
                logits = model.run_with_hooks(tokens.repeat(len(chunk), 1), fwd_hooks=[(name, patch)])
            for k, i in enumerate(chunk):
                value = evaluate(logits[k * batch : (k + 1) * batch])
                if values is None:
                    values = torch.empty(len(locs), len(value))
                values[i] = value
            bar.update(len(chunk))
    bar.close()
    return values


def sweep_block_every(model, base_tokens, source_cache, metric, **kwargs) -> Float[Tensor, "3 n_layers pos"]:
    """resid_pre, attn_out and mlp_out sweeps stacked: [3, n_layers, pos]."""
    return torch.stack([sweep(model, base_tokens, source_cache, k, metric, **kwargs) for k in ("resid_pre", "attn_out", "mlp_out")])


def one_location(model, base_tokens, source_cache, kind: str, location: tuple[int, ...], metric) -> float:
    """The metric with a single location patched, by one plain hooked forward pass (for checking)."""
    _check_inputs(model, base_tokens, source_cache, kind)
    layer = location[0]
    name = HOOK_NAMES[kind].format(layer)
    source = source_cache[name]

    def patch(act: Tensor, hook) -> Tensor:
        act = act.clone()
        if kind in ("resid_pre", "attn_out", "mlp_out"):
            act[:, location[1]] = source[:, location[1]]
        elif kind == "head_out_all_pos":
            act[:, :, location[1]] = source[:, :, location[1]]
        else:
            act[:, location[1], location[2]] = source[:, location[1], location[2]]
        return act

    with torch.no_grad():
        logits = model.run_with_hooks(base_tokens, fwd_hooks=[(name, patch)])
    return float(metric(logits))


def window_layers(layer: int, window: int, n_layers: int) -> range:
    """The layers of a window of `window` layers centred on `layer`, clipped at the ends (as in ROME)."""
    low = max(0, layer - window // 2)
    return range(low, min(n_layers, layer - window // 2 + window))


def window_sweep(model, base_tokens: Int[Tensor, "batch pos"], source_cache, kind: str, pos: int, window: int, metric) -> Float[Tensor, "n_layers"]:
    """For each layer l, patch `kind` (attn_out or mlp_out) at `pos` in every layer of a window
    centred on l at once, and read the metric: Meng et al. (2022)'s causal tracing of attention and
    MLP states, which restores 10 layers at a time because one layer's share is small. One batched
    forward pass for all windows."""
    if kind not in ("attn_out", "mlp_out"):
        raise ValueError(f"window_sweep patches attn_out or mlp_out, got {kind!r}.")
    _check_inputs(model, base_tokens, source_cache, kind)
    n_layers = model.cfg.n_layers
    batch = base_tokens.shape[0]
    if not -base_tokens.shape[1] <= pos < base_tokens.shape[1]:
        raise ValueError(f"pos {pos} is outside the prompt's {base_tokens.shape[1]} positions.")
    hooks = []
    for layer in range(n_layers):
        rows = [centre for centre in range(n_layers) if layer in window_layers(centre, window, n_layers)]
        source = source_cache[HOOK_NAMES[kind].format(layer)][:, pos]

        def patch(act: Tensor, hook, rows=rows, source=source) -> Tensor:
            act = act.clone()
            for centre in rows:
                act[centre * batch : (centre + 1) * batch, pos] = source
            return act

        hooks.append((HOOK_NAMES[kind].format(layer), patch))
    with torch.no_grad():
        logits = model.run_with_hooks(base_tokens.repeat(n_layers, 1), fwd_hooks=hooks)
    return torch.stack([_scalar(metric(logits[c * batch : (c + 1) * batch]), "scalar", batch) for c in range(n_layers)])
