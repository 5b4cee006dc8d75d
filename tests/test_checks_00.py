"""The 00_setup checkers: pass the right answer, explain wrong ones, resist tampering."""

from __future__ import annotations

import pytest
import torch

import course_lib.activations
import course_lib.tokens
from course_lib.checks import load_checks


def resid_ok(model, tokens, layer):
    _, cache = model.run_with_cache(tokens)
    return cache[f"blocks.{layer % model.cfg.n_layers}.hook_resid_post"]


def resid_pre(model, tokens, layer):
    _, cache = model.run_with_cache(tokens)
    return cache[f"blocks.{layer % model.cfg.n_layers}.hook_resid_pre"]


def resid_no_negative(model, tokens, layer):
    _, cache = model.run_with_cache(tokens)
    return cache[f"blocks.{layer}.hook_resid_post"]


def resid_off_by_one(model, tokens, layer):
    _, cache = model.run_with_cache(tokens)
    return cache[f"blocks.{(layer + 1) % model.cfg.n_layers}.hook_resid_post"]


def resid_attn_out(model, tokens, layer):
    _, cache = model.run_with_cache(tokens)
    return cache[f"blocks.{layer % model.cfg.n_layers}.hook_attn_out"]


def resid_first_sequence_only(model, tokens, layer):
    return resid_ok(model, tokens, layer)[:1]


def resid_calls_reference(model, tokens, layer):
    return course_lib.activations.resid_after_layer(model, tokens, layer)


def resid_stub(model, tokens, layer):
    raise NotImplementedError()


def prob_ok(model, prompt, answer, prepend_bos):
    ids = model.to_tokens(answer, prepend_bos=False)[0]
    if len(ids) != 1:
        raise ValueError("not one token")
    return model(model.to_tokens(prompt, prepend_bos=prepend_bos))[0, -1].softmax(-1)[ids[0]].item()


def prob_ignores_bos(model, prompt, answer, prepend_bos):
    return prob_ok(model, prompt, answer, True)


def prob_logit(model, prompt, answer, prepend_bos):
    ids = model.to_tokens(answer, prepend_bos=False)[0]
    if len(ids) != 1:
        raise ValueError("not one token")
    return model(model.to_tokens(prompt, prepend_bos=prepend_bos))[0, -1, ids[0]].item()


def prob_log(model, prompt, answer, prepend_bos):
    return float(torch.tensor(prob_ok(model, prompt, answer, prepend_bos)).log())


def prob_first_position(model, prompt, answer, prepend_bos):
    ids = model.to_tokens(answer, prepend_bos=False)[0]
    if len(ids) != 1:
        raise ValueError("not one token")
    return model(model.to_tokens(prompt, prepend_bos=prepend_bos))[0, 0].softmax(-1)[ids[0]].item()


def prob_softmax_over_positions(model, prompt, answer, prepend_bos):
    ids = model.to_tokens(answer, prepend_bos=False)[0]
    if len(ids) != 1:
        raise ValueError("not one token")
    return model(model.to_tokens(prompt, prepend_bos=prepend_bos))[0].softmax(0)[-1, ids[0]].item()


def prob_answer_with_bos(model, prompt, answer, prepend_bos):
    ids = model.to_tokens(answer, prepend_bos=True)[0]  # the start token makes every answer two tokens
    if len(ids) != 1:
        raise ValueError("not one token")
    return 0.0


def prob_first_token_only(model, prompt, answer, prepend_bos):
    """Silently uses the first token of a multi-token answer instead of refusing it."""
    ids = model.to_tokens(answer, prepend_bos=False)[0]
    return model(model.to_tokens(prompt, prepend_bos=prepend_bos))[0, -1].softmax(-1)[ids[0]].item()


@pytest.fixture(scope="module")
def checks(smollm2):
    return load_checks("00_setup")


@pytest.mark.parametrize("hidden", [False, True])
def test_correct_solutions_pass(checks, hidden, capsys):
    checks.check_resid_after_layer(resid_ok, hidden=hidden)
    checks.check_answer_probability(prob_ok, hidden=hidden)
    out = capsys.readouterr().out
    assert "resid_after_layer: all" in out and "answer_probability: all" in out


@pytest.mark.parametrize(
    "fn, message",
    [
        (resid_stub, "not implemented yet"),
        (resid_pre, r"returned wrong values .*Hint: you returned the residual stream \*before\* block"),
        (resid_no_negative, r"(?s)raised KeyError: .blocks.-1.hook_resid_post.*tensor\(2, 21\), -1\)"),
        (resid_calls_reference, "calls the course's reference implementation"),
        (resid_off_by_one, "Hint: you returned the residual stream after block 1: off by one"),
        (resid_attn_out, "Hint: you returned the attention output of block 0"),
        (resid_first_sequence_only, r"returned shape \(1, 21, 64\), expected \(2, 21, 64\)"),
    ],
)
def test_wrong_resid_solutions_fail_with_a_precise_message(checks, fn, message):
    with pytest.raises(AssertionError, match=message):
        checks.check_resid_after_layer(fn)


@pytest.mark.parametrize(
    "fn, message",
    [
        (prob_ignores_bos, r"Hint: your number equals the value for prepend_bos=True"),
        (prob_logit, r"Hint: your number equals the raw logit"),
        (prob_first_token_only, r"should raise ValueError on input .*' Colosseum'"),
        (prob_log, "Hint: your number equals the log-probability"),
        (prob_first_position, "Hint: your number equals the probability at the first position"),
        (prob_softmax_over_positions, "Hint: your number equals a softmax over the positions"),
        (prob_answer_with_bos, r"(?s)raised ValueError: not one token.*Hint: ' Rome' is a single token. Tokenize the answer with prepend_bos=False"),
    ],
)
def test_wrong_probability_solutions_fail_with_a_precise_message(checks, fn, message):
    with pytest.raises(AssertionError, match=message):
        checks.check_answer_probability(fn)


def test_wrong_return_type_is_named(checks):
    with pytest.raises(AssertionError, match="should return a torch.Tensor.*got list"):
        checks.check_resid_after_layer(lambda model, tokens, layer: [0.0])
    with pytest.raises(AssertionError, match=r"returned shape \(21, 64\), expected \(2, 21, 64\)"):
        checks.check_resid_after_layer(lambda model, tokens, layer: resid_ok(model, tokens, layer)[0])


def test_monkeypatched_reference_does_not_move_the_expected_values(checks, monkeypatch):
    """A student who rebinds the reference to their own wrong answer still fails."""
    monkeypatch.setattr(course_lib.activations, "resid_after_layer", resid_pre)
    with pytest.raises(AssertionError, match="wrong values"):
        checks.check_resid_after_layer(resid_pre)


def test_monkeypatched_checker_is_restored_by_load_checks(checks, monkeypatch):
    monkeypatch.setattr(checks, "check_resid_after_layer", lambda fn, hidden=False: None)
    with pytest.raises(AssertionError, match="wrong values"):
        load_checks("00_setup").check_resid_after_layer(resid_pre)


def test_monkeypatched_torch_comparisons_do_not_fool_the_checker(checks, monkeypatch):
    monkeypatch.setattr(torch, "isclose", lambda a, b, **kw: torch.ones_like(a, dtype=torch.bool))
    monkeypatch.setattr(torch, "allclose", lambda *a, **k: True)
    monkeypatch.setattr(torch.testing, "assert_close", lambda *a, **k: None)
    with pytest.raises(AssertionError, match="wrong values"):
        load_checks("00_setup").check_resid_after_layer(resid_pre)


def test_calling_the_reference_through_a_helper_is_detected(checks):
    def sneaky(model, prompt, answer, prepend_bos):
        helper = getattr(course_lib.tokens, "answer_" + "probability")
        return helper(model, prompt, answer, prepend_bos=prepend_bos)

    with pytest.raises(AssertionError, match="reference implementation"):
        checks.check_answer_probability(sneaky)


def test_a_function_that_mutates_the_model_cannot_change_later_cases(checks):
    """Expected values are computed before the student's call and hooks are reset after it."""

    def adds_a_permanent_hook(model, tokens, layer):
        model.add_perma_hook("blocks.0.hook_resid_post", lambda act, hook: act * 0)
        return resid_ok(model, tokens, layer)

    with pytest.raises(AssertionError):
        checks.check_resid_after_layer(adds_a_permanent_hook)
    checks.check_resid_after_layer(resid_ok)  # the checker's models are clean again
