"""Checkers for notebook 01_recap: occlusion (leave-one-out), Shapley values (exact and sampled),
masked prompts for token Shapley values, the selectivity of a probe against a control task, and
Tenney et al.'s expected layer.

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
            first_only = _shapley.masked_prompts(tokens, [p[:1] for p in players], masks, baseline)
            if bool((actual == inverted).all()):
                hint = " Hint: you replaced the players who are *in* the coalition; replace the absent ones."
            elif bool((actual == first_only).all()):
                hint = " Hint: only the first position of each absent player was replaced; replace every position a player owns."
        raise AssertionError(str(err) + hint) from None
    T.passed(name, 1, hidden)


def _review_case(model, hidden: bool):
    """(tokens, players, positive, negative, baseline, description) on a sentiment prompt."""
    if not hidden:
        prompt = "Review: what a great movie, if you have no taste. Sentiment (positive or negative):"
        players = [[3, 4], [5], [6, 7], [8, 9, 10], [11], [12, 13]]
        baseline = 0  # <|endoftext|>
    else:
        prompt = "Review: the plot was dull but the actors were wonderful. Sentiment (positive or negative):"
        players = [[3, 4], [5], [6], [7], [8, 9], [10, 11], [12]]
        baseline = _tokens.single_token_id(model, " the")
    tokens = _tokens.to_tokens(model, prompt, prepend_bos=True)[0]
    positive, negative = _tokens.single_token_id(model, " positive"), _tokens.single_token_id(model, " negative")
    return tokens, players, positive, negative, baseline, f"prompt {prompt!r}, players {players}, baseline id {baseline}"


def _scores_of(model, rows, positive: int, negative: int) -> torch.Tensor:
    with T._no_grad():
        last = model(rows)[:, -1]
    return T._to(last[:, positive] - last[:, negative], T._float64)


def check_leave_one_out(student_fn: Callable, *, hidden: bool = False) -> None:
    """leave_one_out(model, tokens, players, positive_id, negative_id, baseline_id) -> [n_players]."""
    name = "leave_one_out"
    smol = T.private_pretrained()
    tokens, players, positive, negative, baseline, where = _review_case(smol, hidden)
    expected = _shapley.leave_one_out(smol, tokens, players, positive, negative, baseline)
    forbidden = T.reference_code_ids([_shapley.leave_one_out, _shapley.token_shapley, _shapley.masked_prompts, _shapley.logit_difference_value])
    actual = T.call_student(student_fn, (smol, tokens.clone(), [list(p) for p in players], positive, negative, baseline), forbidden, name)
    smol.reset_hooks(including_permanent=True)
    try:
        T.assert_tensor_close(actual, expected, name, atol=2e-3, rtol=1e-3, where=where)
    except AssertionError as err:
        raise AssertionError(str(err) + _leave_one_out_hint(smol, tokens, players, positive, negative, baseline, actual, expected)) from None
    T.passed(name, 1, hidden)


def _leave_one_out_hint(model, tokens, players, positive, negative, baseline, actual, expected) -> str:
    """Name the mistake when the student's values match a plausible wrong computation."""
    if not T._is_tensor(actual) or tuple(actual.shape) != tuple(expected.shape):
        return ""
    n = len(players)
    rows = tokens.repeat(n + 1, 1)
    cumulative = tokens.repeat(n + 1, 1)
    first_only = tokens.repeat(n + 1, 1)
    for i, positions in enumerate(players):
        rows[1 + i, positions] = baseline
        cumulative[1 + i :, positions] = baseline  # tokens edited in place: every later row loses it too
        first_only[1 + i, positions[0]] = baseline
    scores = _scores_of(model, rows, positive, negative)
    candidates = {
        "the sign flipped: the exercise asks for v(all) - v(all but i)": scores[1:] - scores[0],
        "v(all but i) itself, not the difference from v(all)": scores[1:],
        "what you get when each row also keeps the earlier players removed (did you edit `tokens` in place? copy it for every row)":
            scores[0] - _scores_of(model, cumulative, positive, negative)[1:],
        "what you get when only the first token of each word is replaced: replace every position of player i":
            scores[0] - _scores_of(model, first_only, positive, negative)[1:],
    }
    with T._no_grad():
        probs = model(rows)[:, -1].softmax(dim=-1)
    p_diff = T._to(probs[:, positive] - probs[:, negative], T._float64)
    candidates["a difference of probabilities: the score is a difference of logits"] = p_diff[0] - p_diff[1:]
    for text, value in candidates.items():
        if T.tensors_match(actual, value, atol=2e-3, rtol=1e-3):
            return f" Hint: your values are {text}."
    return ""


def _memorisable_features(seed: int, n_types: int, per_type: int, d: int = 24):
    """Features = a random vector per word type + noise, labels from a direction of the type
    vectors: a probe can both find the property and memorise word identities."""
    rng = np.random.default_rng(seed)
    type_vectors = rng.normal(size=(n_types, d))
    direction = rng.normal(size=d)
    type_labels = (type_vectors @ direction > 0).astype(int)
    types = [f"w{t:02d}" for t in range(n_types) for _ in range(per_type)]
    index = np.repeat(np.arange(n_types), per_type)
    features = type_vectors[index] * 2.0 + rng.normal(size=(len(index), d))
    labels = type_labels[index]
    order = rng.permutation(len(index))  # types interleaved, so sorted order differs from first appearance
    features, labels, types = features[order], labels[order], [types[i] for i in order]
    train, test = _probing.split_indices(len(labels), seed=seed)
    return features, labels, types, train, test


def check_selectivity(student_fn: Callable, *, hidden: bool = False) -> None:
    """selectivity(features, labels, word_types, train, test, seed) -> task accuracy - control accuracy."""
    name = "selectivity"
    cases = [(1, 12, 8, 0), (2, 20, 5, 3)] if not hidden else [(11, 16, 6, 7), (12, 30, 4, 1), (13, 9, 10, 5)]
    forbidden = T.reference_code_ids([_probing.selectivity, _probing.control_labels])
    for data_seed, n_types, per_type, seed in cases:
        features, labels, types, train, test = _memorisable_features(data_seed, n_types, per_type)
        expected = _probing.selectivity(features, labels, types, train, test, seed)["selectivity"]
        where = f"{len(labels)} examples of {n_types} word types, seed={seed}"
        actual = T.call_student(student_fn, (features.copy(), labels.copy(), list(types), train.copy(), test.copy(), seed), forbidden, name)
        try:
            T.assert_float_close(actual, expected, name, atol=1e-6, rtol=0, where=where)
        except AssertionError as err:
            raise AssertionError(str(err) + _selectivity_hint(features, labels, types, train, test, seed, T.safe_float(actual))) from None
    T.passed(name, len(cases), hidden)


def _selectivity_hint(features, labels, types, train, test, seed: int, actual: float) -> str:
    task = _probing.probe_accuracy(features, labels, train, test)
    control = _probing.probe_accuracy(features, _probing.control_labels(types, seed), train, test)
    per_example = np.random.default_rng(seed).integers(0, 2, size=len(types))
    first_seen = list(dict.fromkeys(types))
    unsorted = dict(zip(first_seen, np.random.default_rng(seed).integers(0, 2, size=len(first_seen))))
    candidates = {
        "the control accuracy minus the task accuracy: the sign is the other way round": control - task,
        "the task accuracy alone: subtract the control task's accuracy": task,
        "what you get with a fresh random label for every *example*: the control task gives each word *type* one label, kept wherever it occurs":
            task - _probing.probe_accuracy(features, per_example, train, test),
        "what you get when the types are labelled in order of first appearance: sort them (types = sorted(set(word_types)))":
            task - _probing.probe_accuracy(features, np.array([unsorted[w] for w in types]), train, test),
        "what you get when the control probe is scored on its training examples: score both probes on `test`":
            task - _probing.probe_accuracy(features, _probing.control_labels(types, seed), train, train),
    }
    for text, value in candidates.items():
        if abs(value - actual) < 1e-6:
            return f" Hint: your number is {text}."
    return ""


def check_expected_layer(student_fn: Callable, *, hidden: bool = False) -> None:
    """expected_layer(cumulative_scores) -> sum_l l * Delta_l / sum_l Delta_l on the running maximum; NaN if nothing is gained."""
    name = "expected_layer"
    cases = [[0.5, 0.5, 1.0, 1.0], [0.5, 0.7, 0.9, 0.8, 1.0], [0.6, 0.9, 0.9]]
    if hidden:
        cases = [[0.5, 0.6, 0.55, 0.9, 0.95, 0.92, 1.0], [0.8, 0.8, 0.8], [0.4, 1.0, 0.7, 0.7], [0.9, 0.7, 0.8, 0.85]]
    for scores in cases:
        expected = _probing.expected_layer(scores)
        actual = T.call_student(student_fn, (list(scores),), T.reference_code_ids([_probing.expected_layer]), name)
        where = f"scores {scores}"
        value = T.safe_float(actual)
        if expected != expected:  # NaN: nothing gained
            if isinstance(actual, bool) or value == value:
                raise AssertionError(
                    f"{name} returned {actual!r} ({where}), but no layer improves on layer 0, so the expected layer "
                    "is undefined: return float('nan') (0 would claim 'solved at the embeddings', outside the range 1..L)."
                )
            continue
        try:
            T.assert_float_close(actual, expected, name, atol=1e-6, rtol=1e-6, where=where)
        except AssertionError as err:
            raise AssertionError(str(err) + _expected_layer_hint(scores, value)) from None
    T.passed(name, len(cases), hidden)


def _expected_layer_hint(scores, actual: float) -> str:
    s = np.asarray(scores, dtype=float)
    best = np.maximum.accumulate(s)
    layers = np.arange(1, len(s))
    candidates = {}
    plain = np.diff(s)
    if plain.sum() > 0:
        candidates["the plain differences of the scores: take the running maximum first (np.maximum.accumulate), so a dip never counts as negative progress"] = (layers * plain).sum() / plain.sum()
    deltas = np.diff(best)
    if deltas.sum() > 0:
        candidates["off by one: Delta_l = b_l - b_{l-1} belongs to layer l (1..L), not l - 1"] = ((layers - 1) * deltas).sum() / deltas.sum()
    candidates["the mean layer weighted by the scores themselves: weight layers by the gains Delta_l"] = (np.arange(len(s)) * s).sum() / s.sum()
    for text, value in candidates.items():
        if abs(value - actual) < 1e-6:
            return f" Hint: your number is {text}."
    return ""
