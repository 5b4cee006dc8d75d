"""Shapley values: known games, the axioms on random games, sampling, token SHAP vs the shap library."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from course_lib.shapley import (
    alice_bob_game,
    coalition_masks,
    exact_shapley,
    masked_prompts,
    model_value_function,
    permutation_shapley,
    token_shapley,
)


def random_game(n: int, seed: int):
    rng = np.random.default_rng(seed)
    table = {frozenset(s): float(rng.normal()) for k in range(n + 1) for s in itertools.combinations(range(n), k)}
    return lambda coalition: table[frozenset(coalition)]


def test_alice_and_bob():
    torch.testing.assert_close(exact_shapley(alice_bob_game, 2), torch.tensor([30.0, 20.0], dtype=torch.float64))


@pytest.mark.parametrize("seed", range(5))
def test_axioms_on_random_games(seed):
    n = 5
    game = random_game(n, seed)
    phi = exact_shapley(game, n)
    assert float(phi.sum()) == pytest.approx(game(frozenset(range(n))) - game(frozenset()))  # efficiency
    dummy = lambda c: game(frozenset(c) - {2})
    assert float(exact_shapley(dummy, n)[2]) == pytest.approx(0.0, abs=1e-12)  # dummy player
    # Symmetry: a game that depends on players 0 and 1 only through their count.
    symmetric = lambda c: game(frozenset(c) - {0, 1}) + 3.0 * len(set(c) & {0, 1}) ** 2
    phi_sym = exact_shapley(symmetric, n)
    assert float(phi_sym[0]) == pytest.approx(float(phi_sym[1]))
    # Linearity: the values of a sum of games are the sums of the values.
    other = random_game(n, seed + 100)
    torch.testing.assert_close(exact_shapley(lambda c: game(c) + other(c), n), phi + exact_shapley(other, n))


def test_additive_game_gives_each_player_its_own_part():
    weights = [1.0, -2.0, 3.5, 0.25]
    torch.testing.assert_close(exact_shapley(lambda c: sum(weights[i] for i in c), 4), torch.tensor(weights, dtype=torch.float64))


def test_permutation_estimate_is_efficient_seeded_and_converges():
    n = 6
    game = random_game(n, 7)
    exact = exact_shapley(game, n)
    few = permutation_shapley(game, n, 3, seed=1)
    assert float(few.sum()) == pytest.approx(game(frozenset(range(n))) - game(frozenset()))
    torch.testing.assert_close(few, permutation_shapley(game, n, 3, seed=1))
    errors = [float((permutation_shapley(game, n, m, seed=2) - exact).abs().max()) for m in (10, 1000)]
    assert errors[1] < errors[0] and errors[1] < 0.15


def test_bad_value_function_and_sizes():
    with pytest.raises(TypeError, match="must return a number"):
        exact_shapley(lambda c: "high", 2)
    with pytest.raises(ValueError, match="1..20 players"):
        exact_shapley(alice_bob_game, 0)


def test_masked_prompts_and_masks():
    masks = coalition_masks(3)
    assert masks.shape == (8, 3) and masks[5].tolist() == [True, False, True]
    tokens = torch.tensor([1, 10, 11, 12, 13, 2])
    rows = masked_prompts(tokens, [[1], [2, 3], [4]], masks, baseline_id=0)
    assert rows[0].tolist() == [1, 0, 0, 0, 0, 2] and rows[-1].tolist() == tokens.tolist()
    assert rows[2].tolist() == [1, 0, 11, 12, 0, 2]


def test_token_shapley_is_efficient_and_matches_single_coalition_runs(smollm2):
    prompt = "Review: a great film. Sentiment (positive or negative):"
    tokens = smollm2.to_tokens(prompt, prepend_bos=True)[0]
    pos, neg = (smollm2.to_tokens(w, prepend_bos=False)[0, 0].item() for w in (" positive", " negative"))
    players = [[3], [4], [5]]
    phi, table = token_shapley(smollm2, tokens, players, pos, neg, baseline_id=0, batch_size=3)
    assert float(phi.sum()) == pytest.approx(table[frozenset({0, 1, 2})] - table[frozenset()], abs=1e-4)
    one_at_a_time = model_value_function(smollm2, tokens, players, pos, neg, baseline_id=0)
    for coalition, value in table.items():
        assert one_at_a_time(coalition) == pytest.approx(value, abs=1e-3)
    with torch.no_grad():
        full = smollm2(tokens[None])[0, -1]
    assert table[frozenset({0, 1, 2})] == pytest.approx(float(full[pos] - full[neg]), abs=1e-3)


@pytest.mark.slow
def test_token_values_agree_with_the_shap_library(smollm2):
    """shap's exact explainer, given the same value function, finds the same token values."""
    shap = pytest.importorskip("shap")
    prompt = "Review: what a great movie, if you have no taste. Sentiment (positive or negative):"
    tokens = smollm2.to_tokens(prompt, prepend_bos=True)[0]
    pos, neg = (smollm2.to_tokens(w, prepend_bos=False)[0, 0].item() for w in (" positive", " negative"))
    players = [[5], [6, 7], [11], [12, 13]]  # great, movie, / no / taste.
    ours, _ = token_shapley(smollm2, tokens, players, pos, neg, baseline_id=0)
    value = model_value_function(smollm2, tokens, players, pos, neg, baseline_id=0)

    def batch_value(masks: np.ndarray) -> np.ndarray:
        return np.array([value(frozenset(np.flatnonzero(row).tolist())) for row in masks])

    background = np.zeros((1, len(players)))  # "absent" = baseline, as in our value function
    explainer = shap.explainers.Exact(batch_value, shap.maskers.Independent(background))
    theirs = explainer(np.ones((1, len(players)))).values[0]
    np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-4)


REVIEW = "Review: what a great movie, if you have no taste. Sentiment (positive or negative):"
REVIEW_PLAYERS = [[3, 4], [5], [6, 7], [8, 9, 10], [11], [12, 13]]


def _review(smollm2):
    from course_lib.tokens import single_token_id

    tokens = smollm2.to_tokens(REVIEW, prepend_bos=True)[0]
    return tokens, single_token_id(smollm2, " positive"), single_token_id(smollm2, " negative")


def test_leave_one_out_equals_one_prompt_at_a_time(smollm2):
    from course_lib.shapley import leave_one_out

    tokens, pos, neg = _review(smollm2)
    value = model_value_function(smollm2, tokens, REVIEW_PLAYERS, pos, neg, 0)
    everyone = frozenset(range(len(REVIEW_PLAYERS)))
    expected = torch.tensor([value(everyone) - value(everyone - {i}) for i in range(len(REVIEW_PLAYERS))], dtype=torch.float64)
    torch.testing.assert_close(leave_one_out(smollm2, tokens, REVIEW_PLAYERS, pos, neg, 0), expected, atol=2e-3, rtol=1e-3)


def test_background_shapley_is_the_shapley_value_of_the_expected_game(smollm2):
    """SHAP's expectation form, computed directly (v(S) averaged over the background, then exact
    Shapley values) equals the mean of the Baseline Shapley values, by linearity."""
    from course_lib.shapley import background_token_shapley

    tokens, pos, neg = _review(smollm2)
    players = REVIEW_PLAYERS[:4]  # 16 coalitions: keeps the direct computation quick
    background = [0, int(smollm2.to_tokens(" the", prepend_bos=False)[0, 0])]
    games = [model_value_function(smollm2, tokens, players, pos, neg, b) for b in background]
    expected = exact_shapley(lambda s: sum(g(s) for g in games) / len(games), len(players))
    torch.testing.assert_close(background_token_shapley(smollm2, tokens, players, pos, neg, background), expected, atol=2e-3, rtol=1e-3)
