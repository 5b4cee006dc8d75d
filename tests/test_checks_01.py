"""The 01_recap checkers: the notebook's own solutions pass; typical mistakes get named."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import course_lib.shapley
from course_lib.checks import load_checks

from conftest import solution_functions

EXERCISES = ["logit_diff_table", "exact_shapley", "permutation_shapley", "masked_prompts", "probe_accuracy", "center_of_gravity"]


S = solution_functions("01_recap.ipynb")


@pytest.fixture(scope="module")
def checks(smollm2):
    return load_checks("01_recap")


@pytest.fixture(autouse=True)
def no_grad():
    with torch.no_grad():
        yield


@pytest.mark.parametrize("exercise", EXERCISES)
@pytest.mark.parametrize("hidden", [False, True])
def test_the_notebook_solutions_pass(checks, exercise, hidden):
    getattr(checks, f"check_{exercise}")(getattr(S, exercise), hidden=hidden)


def one_order_only(value, n_players):
    return [value(frozenset(range(i + 1))) - value(frozenset(range(i))) for i in range(n_players)]


def unweighted(value, n_players):
    phi = [0.0] * n_players
    for i in range(n_players):
        others = [j for j in range(n_players) if j != i]
        subsets = [frozenset(s) for k in range(n_players) for s in __import__("itertools").combinations(others, k)]
        phi[i] = sum(value(s | {i}) - value(s) for s in subsets) / len(subsets)
    return phi


def biased_permutations(value, n_players, n_permutations, seed):
    # Always the same order: efficient but wrong.
    return one_order_only(value, n_players)


def unseeded(value, n_players, n_permutations, seed):
    return S.permutation_shapley(value, n_players, n_permutations, np.random.randint(1 << 30))


def mask_present_players(tokens, players, masks, baseline_id):
    return S.masked_prompts(tokens, players, ~masks, baseline_id)


def train_accuracy(features, labels, train, test):
    return S.probe_accuracy(features, labels, train, train)


def plain_deltas(scores):
    d = np.diff(np.asarray(scores, dtype=float))
    return float((np.arange(1, len(scores)) * d).sum() / d.sum())


def shapley_by_reference(value, n_players):
    return course_lib.shapley.exact_shapley(value, n_players)


@pytest.mark.parametrize(
    "exercise, fn, message",
    [
        ("exact_shapley", one_order_only, "marginal contributions of one joining order"),
        ("exact_shapley", unweighted, "expected"),
        ("exact_shapley", shapley_by_reference, "reference implementation"),
        ("permutation_shapley", biased_permutations, "too far from the exact values"),
        ("permutation_shapley", unseeded, "different results for the same seed"),
        ("masked_prompts", mask_present_players, "replaced the players who are \\*in\\* the coalition"),
        ("probe_accuracy", train_accuracy, "accuracy on the training examples"),
        ("center_of_gravity", plain_deltas, "best score so far"),
    ],
)
def test_mistakes_get_precise_feedback(checks, exercise, fn, message):
    with pytest.raises(AssertionError, match=message):
        getattr(checks, f"check_{exercise}")(fn)
