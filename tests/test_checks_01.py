"""The 01_recap checkers: the notebook's own solutions pass; plausible mistakes are rejected with a
message that names them."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import course_lib.probing
import course_lib.shapley
from course_lib.checks import load_checks

from conftest import solution_functions

EXERCISES = ["leave_one_out", "exact_shapley", "permutation_shapley", "masked_prompts", "selectivity", "expected_layer"]

S = solution_functions("01_recap.ipynb", extra={"probing": course_lib.probing})


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


# ----------------------------------------------------------------- leave_one_out


def _loo(model, tokens, players, positive_id, negative_id, baseline_id, *, mode="ok"):
    rows = tokens.repeat(len(players) + 1, 1)
    for i, positions in enumerate(players):
        if mode == "cumulative":
            rows[1 + i :, positions] = baseline_id
        elif mode == "first token only":
            rows[1 + i, positions[0]] = baseline_id
        else:
            rows[1 + i, positions] = baseline_id
    last = model(rows)[:, -1]
    if mode == "probabilities":
        last = last.softmax(-1)
    scores = last[:, positive_id] - last[:, negative_id]
    if mode == "flipped":
        return scores[1:] - scores[0]
    if mode == "removed value":
        return scores[1:]
    return scores[0] - scores[1:]


def loo_flipped(*args):
    return _loo(*args, mode="flipped")


def loo_removed_value(*args):
    return _loo(*args, mode="removed value")


def loo_cumulative(*args):
    return _loo(*args, mode="cumulative")


def loo_first_token_only(*args):
    return _loo(*args, mode="first token only")


def loo_probabilities(*args):
    return _loo(*args, mode="probabilities")


def loo_by_reference(*args):
    return course_lib.shapley.leave_one_out(*args)


# ----------------------------------------------------------------- Shapley values


def one_order_only(value, n_players):
    return [value(frozenset(range(i + 1))) - value(frozenset(range(i))) for i in range(n_players)]


def unweighted(value, n_players):
    phi = [0.0] * n_players
    for i in range(n_players):
        others = [j for j in range(n_players) if j != i]
        subsets = [frozenset(s) for k in range(n_players) for s in itertools.combinations(others, k)]
        phi[i] = sum(value(s | {i}) - value(s) for s in subsets) / len(subsets)
    return phi


def shapley_by_reference(value, n_players):
    return course_lib.shapley.exact_shapley(value, n_players)


def biased_permutations(value, n_players, n_permutations, seed):
    return one_order_only(value, n_players)  # always the same order: efficient but wrong


def unseeded(value, n_players, n_permutations, seed):
    return S.permutation_shapley(value, n_players, n_permutations, np.random.randint(1 << 30))


def divided_by_players(value, n_players, n_permutations, seed):
    return S.permutation_shapley(value, n_players, n_permutations, seed) * n_permutations / (n_permutations * n_players)


def mask_present_players(tokens, players, masks, baseline_id):
    return S.masked_prompts(tokens, players, ~masks, baseline_id)


def mask_first_position_only(tokens, players, masks, baseline_id):
    return S.masked_prompts(tokens, [p[:1] for p in players], masks, baseline_id)


# ----------------------------------------------------------------- selectivity and expected layer


def _control(word_types, seed, *, order="sorted", per_example=False):
    rng = np.random.default_rng(seed)
    if per_example:
        return rng.integers(0, 2, size=len(word_types))
    types = sorted(set(word_types)) if order == "sorted" else list(dict.fromkeys(word_types))
    label_of = dict(zip(types, rng.integers(0, 2, size=len(types))))
    return np.array([label_of[w] for w in word_types])


def selectivity_reversed(features, labels, word_types, train, test, seed):
    return -S.selectivity(features, labels, word_types, train, test, seed)


def selectivity_task_only(features, labels, word_types, train, test, seed):
    return course_lib.probing.probe_accuracy(features, labels, train, test)


def selectivity_per_example_labels(features, labels, word_types, train, test, seed):
    task = course_lib.probing.probe_accuracy(features, labels, train, test)
    return task - course_lib.probing.probe_accuracy(features, _control(word_types, seed, per_example=True), train, test)


def selectivity_unsorted_types(features, labels, word_types, train, test, seed):
    task = course_lib.probing.probe_accuracy(features, labels, train, test)
    return task - course_lib.probing.probe_accuracy(features, _control(word_types, seed, order="first seen"), train, test)


def selectivity_control_scored_on_train(features, labels, word_types, train, test, seed):
    task = course_lib.probing.probe_accuracy(features, labels, train, test)
    return task - course_lib.probing.probe_accuracy(features, _control(word_types, seed), train, train)


def expected_layer_plain_deltas(scores):
    d = np.diff(np.asarray(scores, dtype=float))
    return float((np.arange(1, len(scores)) * d).sum() / d.sum())


def expected_layer_off_by_one(scores):
    d = np.diff(np.maximum.accumulate(np.asarray(scores, dtype=float)))
    return float((np.arange(0, len(scores) - 1) * d).sum() / d.sum()) if d.sum() > 0 else float("nan")


def expected_layer_score_weighted(scores):
    s = np.asarray(scores, dtype=float)
    return float((np.arange(len(s)) * s).sum() / s.sum())


def expected_layer_zero_when_flat(scores):
    d = np.diff(np.maximum.accumulate(np.asarray(scores, dtype=float)))
    return float((np.arange(1, len(scores)) * d).sum() / d.sum()) if d.sum() > 0 else 0.0


WRONG_ANSWERS = [
    ("leave_one_out", loo_flipped, "the sign flipped"),
    ("leave_one_out", loo_removed_value, "v\\(all but i\\) itself"),
    ("leave_one_out", loo_cumulative, "did you edit `tokens` in place"),
    ("leave_one_out", loo_first_token_only, "replace every position of player i"),
    ("leave_one_out", loo_probabilities, "a difference of probabilities"),
    ("leave_one_out", loo_by_reference, "reference implementation"),
    ("exact_shapley", one_order_only, "marginal contributions of one joining order"),
    ("exact_shapley", unweighted, "expected"),
    ("exact_shapley", shapley_by_reference, "reference implementation"),
    ("permutation_shapley", biased_permutations, "too far from the exact values"),
    ("permutation_shapley", unseeded, "different results for the same seed"),
    ("permutation_shapley", divided_by_players, "any average of them must too"),
    ("masked_prompts", mask_present_players, "replaced the players who are \\*in\\* the coalition"),
    ("masked_prompts", mask_first_position_only, "every position a player owns"),
    ("selectivity", selectivity_reversed, "the sign is the other way round"),
    ("selectivity", selectivity_task_only, "the task accuracy alone"),
    ("selectivity", selectivity_per_example_labels, "a fresh random label for every \\*example\\*"),
    ("selectivity", selectivity_unsorted_types, "sort them"),
    ("selectivity", selectivity_control_scored_on_train, "scored on its training examples"),
    ("expected_layer", expected_layer_plain_deltas, "take the running maximum first"),
    ("expected_layer", expected_layer_off_by_one, "off by one"),
    ("expected_layer", expected_layer_score_weighted, "weighted by the scores themselves"),
]


@pytest.mark.parametrize("exercise, fn, message", WRONG_ANSWERS, ids=[f"{e}-{f.__name__}" for e, f, _ in WRONG_ANSWERS])
def test_plausible_mistakes_are_rejected_and_named(checks, exercise, fn, message):
    with pytest.raises(AssertionError, match=message):
        getattr(checks, f"check_{exercise}")(fn)


def test_returning_zero_for_an_undefined_expected_layer_is_rejected(checks):
    """Hidden cases include a curve with no gain, where the answer is NaN, not 0."""
    with pytest.raises(AssertionError, match="return float\\('nan'\\)"):
        checks.check_expected_layer(expected_layer_zero_when_flat, hidden=True)


def test_every_exercise_has_named_mistakes():
    assert {exercise for exercise, _, _ in WRONG_ANSWERS} == set(EXERCISES)
