"""The 02_early_decoding checkers: right answers pass, common mistakes get a named hint."""

from __future__ import annotations

import pytest
import torch

import course_lib.lens
from course_lib.checks import load_checks


def _stack(model, cache):
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.hook_resid_post" for l in range(model.cfg.n_layers)]
    return torch.stack([cache[n][0] for n in names])


def lens_ok(model, cache):
    stack = _stack(model, cache)
    return (model.ln_final(stack) if hasattr(model, "ln_final") else stack) @ model.W_U


def lens_without_norm(model, cache):
    return _stack(model, cache) @ model.W_U


def lens_without_embeddings(model, cache):
    return lens_ok(model, cache)[1:]


def lens_by_reference(model, cache):
    return course_lib.lens.final_norm_and_unembed(model, _stack(model, cache))


def first_ok(lens, answer_id):
    hits = (lens[:, -1].argmax(-1) == answer_id).nonzero()
    return int(hits[0, 0]) if len(hits) else None


def first_last(lens, answer_id):
    hits = (lens[:, -1].argmax(-1) == answer_id).nonzero()
    return int(hits[-1, 0]) if len(hits) else None


def first_minus_one(lens, answer_id):
    hits = (lens[:, -1].argmax(-1) == answer_id).nonzero()
    return int(hits[0, 0]) if len(hits) else -1


def rank_ok(lens, answer_id):
    return (lens[:, -1] > lens[:, -1, answer_id : answer_id + 1]).sum(-1)


def rank_one_based(lens, answer_id):
    return rank_ok(lens, answer_id) + 1


def rank_from_bottom(lens, answer_id):
    return (lens[:, -1] < lens[:, -1, answer_id : answer_id + 1]).sum(-1)


def kl_ok(lens):
    log_p = lens.log_softmax(-1)
    return (log_p[-1:].exp() * (log_p[-1:] - log_p)).sum(-1)


def kl_reversed(lens):
    log_p = lens.log_softmax(-1)
    return (log_p.exp() * (log_p - log_p[-1:])).sum(-1)


def kl_raw_logits(lens):
    p = lens[-1:].softmax(-1)
    return (p * (lens[-1:] - lens)).sum(-1)


@pytest.fixture(scope="module")
def checks(smollm2):
    return load_checks("02_early_decoding")


@pytest.mark.parametrize("hidden", [False, True])
def test_correct_solutions_pass(checks, hidden):
    torch.set_grad_enabled(False)
    try:
        checks.check_lens_from_cache(lens_ok, hidden=hidden)
    finally:
        torch.set_grad_enabled(True)
    checks.check_first_top1_layer(first_ok, hidden=hidden)
    checks.check_answer_rank(rank_ok, hidden=hidden)
    checks.check_kl_to_final(kl_ok, hidden=hidden)


@pytest.mark.parametrize(
    "check, fn, message",
    [
        ("lens_from_cache", lens_without_norm, "Hint: you returned the stack without the final norm"),
        ("lens_from_cache", lens_without_embeddings, r"returned shape \(2, 13, 64\), expected \(3, 13, 64\)"),
        ("lens_from_cache", lens_by_reference, "reference implementation"),
        ("first_top1_layer", first_last, "Hint: that is the \\*last\\* such layer"),
        ("first_top1_layer", first_minus_one, "no layer has the answer on top.*return None"),
        ("answer_rank", rank_one_based, "Hint: every rank is one too high"),
        ("answer_rank", rank_from_bottom, "Hint: you counted from the bottom"),
        ("kl_to_final", kl_reversed, r"Hint: that is KL\(layer \|\| final\)"),
        ("kl_to_final", kl_raw_logits, "wrong values"),
    ],
)
def test_mistakes_get_precise_feedback(checks, check, fn, message):
    with pytest.raises(AssertionError, match=message):
        getattr(checks, f"check_{check}")(fn)


def test_a_rebound_reference_does_not_help(checks, monkeypatch):
    monkeypatch.setattr(course_lib.lens, "kl_to_final", kl_reversed)
    with pytest.raises(AssertionError, match="KL\\(layer"):
        load_checks("02_early_decoding").check_kl_to_final(kl_reversed)
