"""Checkers for notebook 01_recap: Shapley values (exact and sampled), masked prompts for token SHAP,
a what-if table, a probe's held-out accuracy and the centre of gravity.

Games are random but seeded, so memorised numbers fail on the hidden cases; properties that must
hold exactly (efficiency of a permutation estimate, determinism under a seed) are checked too.
"""

from __future__ import annotations

import itertools
from typing import Callable

import numpy as np
import torch

from course_lib.checks import _trust as T

_shapley = T.private_module("shapley")
_probing = T.private_module("probing")
_whatif = T.private_module("whatif")
_tokens = T.private_module("tokens")


def _random_game(n: int, seed: int) -> Callable[[frozenset], float]:
    """A seeded game with v(empty) = 0 and integer-ish values on every coalition."""
    rng = np.random.default_rng(seed)
    table = {frozenset(s): float(rng.integers(0, 100)) for k in range(1, n + 1) for s in itertools.combinations(range(n), k)}
    table[frozenset()] = 0.0
    return lambda coalition: table[frozenset(coalition)]


def _dummy_game(n: int, dummy: int) -> Callable[[frozenset], float]:
    """Additive in the squares of the players, except `dummy`, who adds nothing."""
    return lambda coalition: float(sum((i + 1) ** 2 for i in coalition if i != dummy))


def _as_vector(actual, n: int, name: str, where: str) -> torch.Tensor:
    if T._is_tensor(actual):
        actual = actual.detach().flatten().tolist()
    if isinstance(actual, np.ndarray):
        actual = actual.flatten().tolist()
    if not isinstance(actual, (list, tuple)) or len(actual) != n:
        raise AssertionError(f"{name} should return {n} numbers, one per player ({where}); got {actual!r:.80}.")
    try:
        return T._as_tensor([float(x) for x in actual], dtype=T._float64)
    except (TypeError, ValueError):
        raise AssertionError(f"{name} should return numbers ({where}); got {actual!r:.80}.") from None


def _marginal_std(game: Callable[[frozenset], float], n: int) -> torch.Tensor:
    """Standard deviation of each player's marginal contribution over all n! orders."""
    contributions = [[] for _ in range(n)]
    for order in itertools.permutations(range(n)):
        coalition: frozenset = frozenset()
        for player in order:
            contributions[player].append(game(coalition | {player}) - game(coalition))
            coalition = coalition | {player}
    return T._as_tensor([float(np.std(c)) for c in contributions], dtype=T._float64)


def _forbidden_shapley() -> set[tuple[str, str]]:
    return T.reference_code_ids([_shapley.exact_shapley, _shapley.shapley_from_table, _shapley.permutation_shapley])


def check_exact_shapley(student_fn: Callable, *, hidden: bool = False) -> None:
    """exact_shapley(value, n_players) -> one value per player; Alice/Bob gives (30, 20)."""
    name = "exact_shapley"
    if not hidden:
        cases = [("the Alice/Bob game", _shapley.alice_bob_game, 2), ("a random 3-player game", _random_game(3, 1), 3),
                 ("a random 4-player game", _random_game(4, 2), 4)]
    else:
        cases = [("a random 5-player game", _random_game(5, 11), 5), ("a game where player 2 is a dummy", _dummy_game(4, 2), 4),
                 ("a 1-player game", lambda c: 7.0 if c else 0.0, 1)]
    for label, game, n in cases:
        expected = _shapley.exact_shapley(game, n)
        actual = _as_vector(T.call_student(student_fn, (game, n), _forbidden_shapley(), name), n, name, label)
        where = label
        if not bool(T._isclose(actual, expected, atol=1e-6, rtol=1e-6).all()):
            total = game(frozenset(range(n))) - game(frozenset())
            hint = ""
            if abs(float(actual.sum()) - total) > 1e-6:
                hint = f" Hint: your values sum to {float(actual.sum()):.4g}, but Shapley values always sum to v(all) - v(empty) = {total:.4g}."
            else:
                in_order = [game(frozenset(range(i + 1))) - game(frozenset(range(i))) for i in range(n)]
                if bool(T._isclose(actual, T._as_tensor(in_order, dtype=T._float64), atol=1e-6).all()):
                    hint = " Hint: those are the marginal contributions of one joining order (0, 1, 2, ...); average over all orders."
            raise AssertionError(f"{name} returned {[round(float(x), 4) for x in actual]}, expected {[round(float(x), 4) for x in expected]} ({where}).{hint}")
    T.passed(name, len(cases), hidden)


def check_permutation_shapley(student_fn: Callable, *, hidden: bool = False) -> None:
    """permutation_shapley(value, n_players, n_permutations, seed): efficient, seeded, converging to exact."""
    name = "permutation_shapley"
    n, seed = (4, 3) if not hidden else (5, 21)
    game = _random_game(n, seed)
    exact = _shapley.exact_shapley(game, n)
    total = game(frozenset(range(n))) - game(frozenset())
    forbidden = _forbidden_shapley()
    few = _as_vector(T.call_student(student_fn, (game, n, 3, 0), forbidden, name), n, name, "3 permutations")
    if abs(float(few.sum()) - total) > 1e-6:
        raise AssertionError(
            f"{name} with 3 permutations sums to {float(few.sum()):.4g}, but every single permutation's marginal "
            f"contributions add up to v(all) - v(empty) = {total:.4g}, so any average of them must too."
        )
    again = _as_vector(T.call_student(student_fn, (game, n, 3, 0), forbidden, name), n, name, "3 permutations, same seed")
    if not bool(T._isclose(few, again, atol=1e-9).all()):
        raise AssertionError(f"{name} gave different results for the same seed: use torch.Generator().manual_seed(seed) (or numpy's default_rng(seed)).")
    n_permutations = 2000
    many = _as_vector(T.call_student(student_fn, (game, n, n_permutations, 1), forbidden, name), n, name, f"{n_permutations} permutations")
    # Five standard errors of a mean of n_permutations marginal contributions: a correct estimator
    # fails this about once in a million runs; a biased one fails it every time.
    tolerance = 5 * _marginal_std(game, n) / n_permutations**0.5 + 1e-9
    if bool(((many - exact).abs() > tolerance).any()):
        raise AssertionError(
            f"{name} with {n_permutations} permutations gave {[round(float(x), 2) for x in many]}, too far from the exact values "
            f"{[round(float(x), 2) for x in exact]} (allowed: {[round(float(x), 2) for x in tolerance]}). Each permutation should "
            "credit player i with v(S + i) - v(S), where S holds the players before i in that order."
        )
    T.passed(name, 3, hidden)


def check_masked_prompts(student_fn: Callable, *, hidden: bool = False) -> None:
    """masked_prompts(tokens, players, masks, baseline_id) -> [n_coalitions, pos] token ids."""
    name = "masked_prompts"
    if not hidden:
        tokens = torch.tensor([1, 50, 51, 52, 53, 9])
        players, baseline = [[1], [2], [3, 4]], 0
    else:
        tokens = torch.tensor([7, 70, 71, 72, 73, 74, 75, 8])
        players, baseline = [[1, 2], [3], [5], [6]], 99
    masks = _shapley.coalition_masks(len(players))
    expected = _shapley.masked_prompts(tokens, players, masks, baseline)
    actual = T.call_student(student_fn, (tokens.clone(), players, masks.clone(), baseline), T.reference_code_ids([_shapley.masked_prompts]), name)
    where = f"tokens {tokens.tolist()}, players {players}, baseline {baseline}"
    try:
        T.assert_tensor_close(actual, expected, name, atol=0, rtol=0, where=where)
    except AssertionError as err:
        hint = ""
        if T._is_tensor(actual) and tuple(actual.shape) == tuple(expected.shape):
            inverted = _shapley.masked_prompts(tokens, players, ~masks, baseline)
            if bool((actual == inverted).all()):
                hint = " Hint: you replaced the players who are *in* the coalition; replace the absent ones."
        raise AssertionError(str(err) + hint) from None
    T.passed(name, 1, hidden)


def check_logit_diff_table(student_fn: Callable, *, hidden: bool = False) -> None:
    """logit_diff_table(model, variants, target_a, target_b, prepend_bos) -> {label: logit(a) - logit(b)}."""
    name = "logit_diff_table"
    smol = T.private_pretrained()
    if not hidden:
        variants = {"original": "The nurse entered the room. Then", "doctor": "The doctor entered the room. Then"}
        targets, prepend_bos = (" she", " he"), True
    else:
        variants = {"original": "The Colosseum is in downtown", "Eiffel": "The Eiffel Tower is in downtown", "no space": "The Colosseum is indowntown"}
        targets, prepend_bos = (" Rome", " Paris"), False
    report = _whatif.next_token_report(smol, variants, list(targets), prepend_bos=prepend_bos)
    expected = dict(zip(report.index, report[f"logit diff {targets[0]!r}-{targets[1]!r}"]))
    forbidden = T.reference_code_ids([_whatif.next_token_report, _whatif.answer_stability])
    actual = T.call_student(student_fn, (smol, dict(variants), targets[0], targets[1], prepend_bos), forbidden, name)
    smol.reset_hooks(including_permanent=True)
    if not isinstance(actual, dict) or set(actual) != set(expected):
        raise AssertionError(f"{name} should return a dict with one entry per variant {sorted(expected)}; got {actual!r:.120}.")
    for label, value in expected.items():
        T.assert_float_close(actual[label], value, name, atol=1e-3, rtol=1e-3, where=f"variant {label!r}, prepend_bos={prepend_bos}")
    T.passed(name, len(expected), hidden)


def _probe_data(seed: int, separation: float, n: int = 120, d: int = 20) -> tuple:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    direction = rng.normal(size=d)
    features = rng.normal(size=(n, d)) + separation * np.outer(labels - 0.5, direction / np.linalg.norm(direction)) * 2
    train, test = _probing.split_indices(n, seed=seed)
    return features, labels, train, test


def check_probe_accuracy(student_fn: Callable, *, hidden: bool = False) -> None:
    """probe_accuracy(features, labels, train, test) -> held-out accuracy of the prescribed probe."""
    name = "probe_accuracy"
    cases = [(1, 4.0), (2, 0.0)] if not hidden else [(10, 1.5), (11, 3.0), (12, 0.5)]
    forbidden = T.reference_code_ids([_probing.probe_accuracy, _probing.probe_every_layer])
    for seed, separation in cases:
        features, labels, train, test = _probe_data(seed, separation)
        expected = _probing.probe_accuracy(features, labels, train, test)
        where = f"{len(labels)} examples, separation {separation}, test size {len(test)}"
        actual = T.call_student(student_fn, (features.copy(), labels.copy(), train.copy(), test.copy()), forbidden, name)
        # A small tolerance: another solver or regularisation strength changes a test example or two.
        try:
            T.assert_float_close(actual, expected, name, atol=0.035, rtol=0, where=where)
        except AssertionError as err:
            on_train = _probing.probe_accuracy(features, labels, train, train)
            hint = ""
            if abs(T.safe_float(actual) - on_train) < 1e-6 and abs(on_train - expected) > 1e-6:
                hint = " Hint: that is the accuracy on the training examples; score the probe on the test indices."
            raise AssertionError(str(err) + hint) from None
    T.passed(name, len(cases), hidden)


def check_center_of_gravity(student_fn: Callable, *, hidden: bool = False) -> None:
    """center_of_gravity(scores) -> expected layer from the gains of the best score so far."""
    name = "center_of_gravity"
    cases = [[0.5, 0.5, 1.0, 1.0], [0.5, 0.7, 0.9, 0.8, 1.0], [0.6, 0.9, 0.9]]
    if hidden:
        cases = [[0.5, 0.6, 0.55, 0.9, 0.95, 0.92, 1.0], [0.8, 0.8, 0.8], [0.4, 1.0, 0.7, 0.7]]
    for scores in cases:
        expected = _probing.center_of_gravity(scores)
        actual = T.call_student(student_fn, (list(scores),), T.reference_code_ids([_probing.center_of_gravity]), name)
        try:
            T.assert_float_close(actual, expected, name, atol=1e-6, rtol=1e-6, where=f"scores {scores}")
        except AssertionError as err:
            plain = np.diff(np.asarray(scores, dtype=float))
            hint = ""
            if plain.sum() > 0 and abs(T.safe_float(actual) - float((np.arange(1, len(scores)) * plain).sum() / plain.sum())) < 1e-6:
                hint = " Hint: use the gain of the *best score so far* (np.maximum.accumulate), so a dip never counts as negative progress."
            raise AssertionError(str(err) + hint) from None
    T.passed(name, len(cases), hidden)
