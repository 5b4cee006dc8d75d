"""Shapley values: exact, by permutation sampling, and for the tokens of a prompt.

A cooperative game gives every coalition S of players a value v(S). Player i's Shapley value is
its marginal contribution v(S + i) - v(S), averaged over all orders in which the players could
join. The values add up to v(all) - v(empty) (efficiency), equal players get equal values
(symmetry), and a player who never changes anything gets 0 (dummy).

For the tokens of a prompt, a coalition's value needs the model's output with some tokens
"absent". Replacing every absent token by one baseline token gives **Baseline Shapley**
(Sundararajan & Najmi 2020, "The many Shapley values for model explanation"): `token_shapley`.
SHAP (Lundberg & Lee 2017) instead takes v(S) as an *expectation* over a background
distribution of reference inputs (interventionally, as the `shap` library does); with a finite background that is the average of the Baseline
Shapley values over the background (`background_token_shapley`). Leave-one-out occlusion
(`leave_one_out`) is the simplest what-if attribution: one marginal contribution per player,
against the full prompt only.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Iterable

import torch
from jaxtyping import Float, Int
from torch import Tensor

Coalition = frozenset


def _validated_value(value: Callable[[frozenset], float], coalition: frozenset) -> float:
    result = value(coalition)
    try:
        return float(result)
    except (TypeError, ValueError) as err:
        raise TypeError(f"value(coalition) must return a number; for {set(coalition)} it returned {result!r}.") from err


def exact_shapley(value: Callable[[frozenset], float], n_players: int) -> Float[Tensor, "n_players"]:
    """Exact Shapley values by the subset formula: sum over S not containing i of
    |S|! (n - |S| - 1)! / n! * (v(S + i) - v(S)). Evaluates v on all 2^n coalitions once."""
    if n_players < 1 or n_players > 20:
        raise ValueError(f"exact Shapley values need 1..20 players (2^n coalitions); got {n_players}.")
    values = {
        frozenset(subset): _validated_value(value, frozenset(subset))
        for size in range(n_players + 1)
        for subset in itertools.combinations(range(n_players), size)
    }
    return shapley_from_table(values, n_players)


def shapley_from_table(values: dict[frozenset, float], n_players: int) -> Float[Tensor, "n_players"]:
    """Exact Shapley values from a table holding v(S) for every coalition S."""
    n_fact = math.factorial(n_players)
    phi = torch.zeros(n_players, dtype=torch.float64)
    for coalition, v_s in values.items():
        size = len(coalition)
        if size == n_players:
            continue
        weight = math.factorial(size) * math.factorial(n_players - size - 1) / n_fact
        for i in range(n_players):
            if i not in coalition:
                phi[i] += weight * (values[coalition | {i}] - v_s)
    return phi


def permutation_shapley(
    value: Callable[[frozenset], float], n_players: int, n_permutations: int, seed: int = 0
) -> Float[Tensor, "n_players"]:
    """Monte-Carlo Shapley values: average marginal contributions over random orders (seeded).
    Each order costs n_players + 1 evaluations; values are cached, so repeated coalitions are free."""
    generator = torch.Generator().manual_seed(seed)
    cache: dict[frozenset, float] = {}

    def v(coalition: frozenset) -> float:
        if coalition not in cache:
            cache[coalition] = _validated_value(value, coalition)
        return cache[coalition]

    phi = torch.zeros(n_players, dtype=torch.float64)
    for _ in range(n_permutations):
        order = torch.randperm(n_players, generator=generator).tolist()
        coalition: frozenset = frozenset()
        previous = v(coalition)
        for player in order:
            coalition = coalition | {player}
            current = v(coalition)
            phi[player] += current - previous
            previous = current
    return phi / n_permutations


# ----------------------------------------------------------------------------- tokens as players


def coalition_masks(n_players: int) -> Int[Tensor, "two_pow_n n_players"]:
    """Every coalition as a 0/1 row, in binary counting order (row k holds player i iff bit i of k)."""
    index = torch.arange(2**n_players)
    return ((index[:, None] >> torch.arange(n_players)) & 1).bool()


def masked_prompts(
    tokens: Int[Tensor, "pos"], players: list[list[int]], masks: Tensor, baseline_id: int
) -> Int[Tensor, "n_coalitions pos"]:
    """Token rows where the positions of every player absent from the coalition hold `baseline_id`.

    `players[i]` lists the token positions player i owns (one token, or a word of several)."""
    rows = tokens.repeat(len(masks), 1)
    for i, positions in enumerate(players):
        absent = ~masks[:, i]
        for position in positions:
            rows[absent, position] = baseline_id
    return rows


def logit_difference_value(
    model, tokens: Int[Tensor, "n pos"], positive_id: int, negative_id: int, batch_size: int = 128
) -> Float[Tensor, "n"]:
    """logit(positive) - logit(negative) at the last position of every row, in batches."""
    out = []
    with torch.no_grad():
        for start in range(0, len(tokens), batch_size):
            logits = model(tokens[start : start + batch_size])[:, -1]
            out.append(logits[:, positive_id] - logits[:, negative_id])
    return torch.cat(out)


def token_shapley(
    model,
    tokens: Int[Tensor, "pos"],
    players: list[list[int]],
    positive_id: int,
    negative_id: int,
    baseline_id: int,
    batch_size: int = 128,
) -> tuple[Float[Tensor, "n_players"], dict[frozenset, float]]:
    """Exact Baseline Shapley values of groups of prompt tokens for logit(positive) - logit(negative)
    at the last position, absent players' tokens replaced by `baseline_id`. All 2^n coalitions run in
    batches of `batch_size`. Returns (values, table of v(S))."""
    n = len(players)
    if n > 14:
        raise ValueError(f"{n} players means {2**n} forward passes; use at most 14 (or permutation sampling).")
    masks = coalition_masks(n)
    rows = masked_prompts(tokens, players, masks, baseline_id)
    scores = logit_difference_value(model, rows, positive_id, negative_id, batch_size)
    table = {frozenset(torch.nonzero(m).flatten().tolist()): float(s) for m, s in zip(masks, scores)}
    return shapley_from_table(table, n), table


def leave_one_out(
    model,
    tokens: Int[Tensor, "pos"],
    players: list[list[int]],
    positive_id: int,
    negative_id: int,
    baseline_id: int,
) -> Float[Tensor, "n_players"]:
    """Occlusion: v(all) - v(all but player i) for each player, where v is logit(positive) -
    logit(negative) at the last position and a removed player's positions hold `baseline_id`.
    All n_players + 1 prompts run as one batch."""
    n = len(players)
    masks = torch.ones(n + 1, n, dtype=torch.bool)
    masks[1:] = ~torch.eye(n, dtype=torch.bool)  # row 0 keeps everyone, row 1 + i drops player i
    scores = logit_difference_value(model, masked_prompts(tokens, players, masks, baseline_id), positive_id, negative_id)
    return (scores[0] - scores[1:]).double()


def background_token_shapley(
    model,
    tokens: Int[Tensor, "pos"],
    players: list[list[int]],
    positive_id: int,
    negative_id: int,
    background_ids: list[int],
    batch_size: int = 128,
) -> Float[Tensor, "n_players"]:
    """SHAP's expectation form (the interventional one the `shap` library computes): v(S) is the
    mean of the value over a background of reference inputs (here: every absent position filled
    with one background token, one reference input per token). Shapley values are linear in v, so this equals the mean of the Baseline Shapley values
    over the background tokens; computed that way."""
    values = [token_shapley(model, tokens, players, positive_id, negative_id, b, batch_size)[0] for b in background_ids]
    return torch.stack(values).mean(dim=0)


def model_value_function(model, tokens: Int[Tensor, "pos"], players: list[list[int]], positive_id: int, negative_id: int, baseline_id: int):
    """v(S) for one coalition at a time (for permutation sampling or other libraries); cached."""
    cache: dict[frozenset, float] = {}

    def value(coalition: frozenset) -> float:
        key = frozenset(coalition)
        if key not in cache:
            mask = torch.tensor([[i in key for i in range(len(players))]])
            row = masked_prompts(tokens, players, mask, baseline_id)
            cache[key] = float(logit_difference_value(model, row, positive_id, negative_id)[0])
        return cache[key]

    return value


def alice_bob_game(coalition: Iterable[int]) -> float:
    """The lecture's bonus game: Alice (0) alone earns 20, Bob (1) alone 10, together 50.
    Shapley values: Alice 30, Bob 20."""
    return {frozenset(): 0.0, frozenset({0}): 20.0, frozenset({1}): 10.0, frozenset({0, 1}): 50.0}[frozenset(coalition)]
