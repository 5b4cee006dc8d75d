"""Is a circuit enough? Mean-ablate every head outside it and see how much of the behaviour stays.

After Wang et al. 2022, section 4 (faithfulness): the circuit C is a set of heads; every head not
in C has its output (`hook_z`) replaced by its mean over a reference distribution (the paper
uses p_ABC, prompts with three different names, so the mean carries the template's typical
activity but no information about which name is the indirect object). Means are taken per
template and position, so a head keeps what it does for every sentence of that shape. Then

    faithfulness = metric(C) / metric(full model)

which the paper reports as 87% for its 26-head circuit in GPT-2 small. MLPs are never ablated,
as in the paper. `metric(nothing)`, every head ablated, is reported beside it as the floor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

Head = tuple[int, int]


@dataclass(frozen=True)
class Faithfulness:
    """The metric with the full model, with only the circuit, and with no heads at all."""

    full: float
    circuit: float
    nothing: float

    @property
    def ratio(self) -> float:
        """metric(circuit) / metric(full), as in the IOI paper."""
        return self.circuit / self.full


def all_heads(model) -> list[Head]:
    """Every (layer, head) of the model."""
    return [(layer, head) for layer in range(model.cfg.n_layers) for head in range(model.cfg.n_heads)]


def grouped_mean_z(
    model, reference_tokens: Int[Tensor, "batch pos"], reference_groups: Sequence[int]
) -> dict[int, Float[Tensor, "group pos head d_head"]]:
    """Per layer: each head's z averaged over the reference prompts of each group (e.g. template)."""
    groups = torch.as_tensor(list(reference_groups))
    if groups.shape != (reference_tokens.shape[0],):
        raise ValueError(f"need one group per reference prompt ({reference_tokens.shape[0]}), got {groups.shape[0]}.")
    names = {f"blocks.{l}.attn.hook_z" for l in range(model.cfg.n_layers)}
    with torch.no_grad():
        _, cache = model.run_with_cache(reference_tokens, names_filter=lambda name: name in names)
    n_groups = int(groups.max()) + 1
    means = {}
    for layer in range(model.cfg.n_layers):
        z = cache[f"blocks.{layer}.attn.hook_z"]
        sums = torch.zeros(n_groups, *z.shape[1:]).index_add_(0, groups, z)
        counts = torch.bincount(groups, minlength=n_groups).clamp(min=1)
        means[layer] = sums / counts[:, None, None, None]
    return means


def ablate_all_but_hooks(
    model,
    keep: Iterable[Head],
    means: dict[int, Float[Tensor, "group pos head d_head"]],
    groups: Sequence[int],
) -> list[tuple[str, Callable]]:
    """Hooks replacing every head not in `keep` by its group's mean z (prompt i uses group groups[i])."""
    keep = {tuple(map(int, h)) for h in keep}
    rows = torch.as_tensor(list(groups))
    hooks = []
    for layer in range(model.cfg.n_layers):
        ablated = [h for h in range(model.cfg.n_heads) if (layer, h) not in keep]
        if not ablated:
            continue

        def hook(z: Tensor, hook, layer=layer, ablated=ablated) -> Tensor:
            z[:, :, ablated] = means[layer][rows][:, : z.shape[1], ablated]
            return z

        hooks.append((f"blocks.{layer}.attn.hook_z", hook))
    return hooks


def faithfulness(
    model,
    tokens: Int[Tensor, "batch pos"],
    groups: Sequence[int],
    reference_tokens: Int[Tensor, "ref pos"],
    reference_groups: Sequence[int],
    circuit: Iterable[Head],
    metric: Callable[[Tensor], Tensor],
) -> Faithfulness:
    """metric on `tokens` with the full model, with only `circuit`'s heads, and with no heads.

    Heads outside the circuit take their mean z over the reference prompts of the same group
    (for IOI: the ABC prompts of the same template). tokens and reference_tokens must have the
    same number of positions.
    """
    if tokens.shape[1] != reference_tokens.shape[1]:
        raise ValueError(
            f"tokens have {tokens.shape[1]} positions and the reference {reference_tokens.shape[1]}; "
            "means are taken position by position, so they must match."
        )
    circuit = [tuple(map(int, h)) for h in circuit]
    unknown = [h for h in circuit if h not in set(all_heads(model))]
    if unknown:
        raise ValueError(f"{unknown} are not heads of this model ({model.cfg.n_layers} layers x {model.cfg.n_heads} heads).")
    means = grouped_mean_z(model, reference_tokens, reference_groups)
    with torch.no_grad():
        full = float(metric(model(tokens)))
        kept = float(metric(model.run_with_hooks(tokens, fwd_hooks=ablate_all_but_hooks(model, circuit, means, groups))))
        nothing = float(metric(model.run_with_hooks(tokens, fwd_hooks=ablate_all_but_hooks(model, [], means, groups))))
    return Faithfulness(full=full, circuit=kept, nothing=nothing)
