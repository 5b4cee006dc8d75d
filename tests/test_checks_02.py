"""The 02_early_decoding checkers: the notebook's solutions pass, plausible mistakes are rejected
with a message that names them, and a rebound reference does not help."""

from __future__ import annotations

import pytest
import torch

import course_lib.lens
from course_lib.checks import load_checks

from conftest import solution_functions

S = solution_functions("02_early_decoding.ipynb")
EXERCISES = ["lens_from_cache", "logit_diff_lens", "head_logit_attribution", "kl_to_final"]


@pytest.fixture(scope="module")
def checks(smollm2):
    return load_checks("02_early_decoding")


@pytest.fixture(autouse=True)
def no_grad():
    with torch.no_grad():
        yield


@pytest.mark.parametrize("exercise", EXERCISES)
@pytest.mark.parametrize("hidden", [False, True])
def test_the_notebook_solutions_pass(checks, exercise, hidden):
    getattr(checks, f"check_{exercise}")(getattr(S, exercise), hidden=hidden)


def _stack(model, cache, pos=None):
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.hook_resid_post" for l in range(model.cfg.n_layers)]
    return torch.stack([cache[n][0] if pos is None else cache[n][0, pos] for n in names])


def lens_without_norm(model, cache):
    return _stack(model, cache) @ model.W_U


def lens_without_embeddings(model, cache):
    return S.lens_from_cache(model, cache)[1:]


def lens_by_reference(model, cache):
    return course_lib.lens.final_norm_and_unembed(model, _stack(model, cache))


def _read(model, cache, vectors, correct, incorrect, *, how):
    direction = model.W_U[:, correct] - model.W_U[:, incorrect]
    if not hasattr(model, "ln_final") or how == "no norm":
        return vectors @ direction
    scale = cache["ln_final.hook_scale"][0, -1]
    if how == "own scale":
        return model.ln_final(vectors) @ direction
    if how == "no weight":
        return (vectors / scale) @ direction
    if how == "reversed":
        return -((vectors / scale * model.ln_final.weight) @ direction)
    raise ValueError(how)


def ld_lens_own_scale(model, cache, correct, incorrect):
    return _read(model, cache, _stack(model, cache, -1), correct, incorrect, how="own scale")


def ld_lens_without_weight(model, cache, correct, incorrect):
    return _read(model, cache, _stack(model, cache, -1), correct, incorrect, how="no weight")


def ld_lens_without_norm(model, cache, correct, incorrect):
    return _read(model, cache, _stack(model, cache, -1), correct, incorrect, how="no norm")


def ld_lens_reversed(model, cache, correct, incorrect):
    return _read(model, cache, _stack(model, cache, -1), correct, incorrect, how="reversed")


def ld_lens_by_reference(model, cache, correct, incorrect):
    return course_lib.lens.logit_diff_lens(model, cache, correct, incorrect)


def _head_outputs(model, cache, pos=-1):
    z = torch.stack([cache[f"blocks.{l}.attn.hook_z"][0, pos] for l in range(model.cfg.n_layers)])
    return torch.einsum("lhd,lhdm->lhm", z, model.W_O)


def dla_own_scale(model, cache, correct, incorrect):
    outputs = _head_outputs(model, cache)
    return _read(model, cache, outputs.reshape(-1, outputs.shape[-1]), correct, incorrect, how="own scale").reshape(outputs.shape[:2])


def dla_without_weight(model, cache, correct, incorrect):
    outputs = _head_outputs(model, cache)
    return _read(model, cache, outputs.reshape(-1, outputs.shape[-1]), correct, incorrect, how="no weight").reshape(outputs.shape[:2])


def dla_first_position(model, cache, correct, incorrect):
    return _dla_at(model, cache, correct, incorrect, 0)


def _dla_at(model, cache, correct, incorrect, pos):
    outputs = _head_outputs(model, cache, pos)
    direction = model.W_U[:, correct] - model.W_U[:, incorrect]
    if hasattr(model, "ln_final"):
        outputs = outputs / cache["ln_final.hook_scale"][0, pos] * model.ln_final.weight
    return outputs @ direction


def dla_reversed(model, cache, correct, incorrect):
    return -S.head_logit_attribution(model, cache, correct, incorrect)


def kl_reversed(lens):
    log_p = lens.log_softmax(-1)
    return (log_p.exp() * (log_p - log_p[-1:])).sum(-1)


def kl_raw_logits(lens):
    p = lens[-1:].softmax(-1)
    return (p * (lens[-1:] - lens)).sum(-1)


def kl_to_first_layer(lens):
    log_p = lens.log_softmax(-1)
    return (log_p[:1].exp() * (log_p[:1] - log_p)).sum(-1)


WRONG_ANSWERS = [
    ("lens_from_cache", lens_without_norm, "Hint: you returned the stack without the final norm"),
    ("lens_from_cache", lens_without_embeddings, r"returned shape \(2, 13, 64\), expected \(3, 13, 64\)"),
    ("lens_from_cache", lens_by_reference, "reference implementation"),
    ("logit_diff_lens", ld_lens_own_scale, "each vector normalised by its own scale"),
    ("logit_diff_lens", ld_lens_without_weight, "missing the final norm's weight"),
    ("logit_diff_lens", ld_lens_without_norm, "missing the final norm altogether"),
    ("logit_diff_lens", ld_lens_reversed, "the wrong way round"),
    ("logit_diff_lens", ld_lens_by_reference, "reference implementation"),
    ("head_logit_attribution", dla_own_scale, "each vector normalised by its own scale"),
    ("head_logit_attribution", dla_without_weight, "missing the final norm's weight"),
    ("head_logit_attribution", dla_first_position, "attribution at the first position"),
    ("head_logit_attribution", dla_reversed, "the wrong way round"),
    ("kl_to_final", kl_reversed, r"Hint: that is KL\(layer \|\| final\)"),
    ("kl_to_final", kl_raw_logits, "Hint: you used raw logits"),
    ("kl_to_final", kl_to_first_layer, r"Hint: that is the KL to the \*first\* layer"),
]


@pytest.mark.parametrize("exercise, fn, message", WRONG_ANSWERS, ids=[f"{e}-{i}" for i, (e, _, _) in enumerate(WRONG_ANSWERS)])
def test_plausible_mistakes_are_rejected_and_named(checks, exercise, fn, message):
    with pytest.raises(AssertionError, match=message):
        getattr(checks, f"check_{exercise}")(fn)


def test_every_exercise_has_named_mistakes():
    assert {exercise for exercise, _, _ in WRONG_ANSWERS} == set(EXERCISES)


def test_a_rebound_reference_does_not_help(checks, monkeypatch):
    monkeypatch.setattr(course_lib.lens, "kl_to_final", kl_reversed)
    with pytest.raises(AssertionError, match="KL\\(layer"):
        load_checks("02_early_decoding").check_kl_to_final(kl_reversed)
