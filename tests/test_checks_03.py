"""The 03_residual_stream checkers: right answers pass, common mistakes are named, the model's own
forward pass and the references cannot stand in for the student's code."""

from __future__ import annotations

import math

import pytest
import torch

import course_lib.circuits
from course_lib.checks import load_checks

from conftest import solution_functions

S = solution_functions("03_residual_stream.ipynb")

EXERCISES = ["toy_forward", "decompose_1l", "k_composition_scores", "copying_score", "induction_score", "skip_trigram"]


@pytest.fixture(scope="module")
def checks(smollm2):
    return load_checks("03_residual_stream")


@pytest.fixture(autouse=True)
def no_grad():
    with torch.no_grad():
        yield


@pytest.mark.parametrize("exercise", EXERCISES)
@pytest.mark.parametrize("hidden", [False, True])
def test_correct_solutions_pass(checks, exercise, hidden):
    getattr(checks, f"check_{exercise}")(getattr(S, exercise), hidden=hidden)


def forward_unscaled(model, tokens):
    n = tokens.shape[1]
    resid = model.W_E[tokens] + model.W_pos[:n]
    for layer in range(model.cfg.n_layers):
        q = torch.einsum("bpm,hmd->bhpd", resid, model.W_Q[layer])
        k = torch.einsum("bpm,hmd->bhpd", resid, model.W_K[layer])
        v = torch.einsum("bpm,hmd->bhpd", resid, model.W_V[layer])
        pattern = (q @ k.transpose(-1, -2)).masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), -math.inf).softmax(-1)
        resid = resid + torch.einsum("bhpd,hdm->bpm", pattern @ v, model.W_O[layer])
    return resid @ model.W_U


def forward_by_calling_the_model(model, tokens):
    return model(tokens)


def decompose_swapped(model, tokens):
    terms = S.decompose_1l(model, tokens)
    return terms[[1, 0, 2, 3, 4]]


def q_composition(model):
    scores = torch.zeros(4, 4)
    for h0 in range(4):
        for h1 in range(4):
            W_OV = model.W_V[0, h0] @ model.W_O[0, h0]
            W_QK = model.W_Q[1, h1] @ model.W_K[1, h1].T
            scores[h0, h1] = (W_OV @ W_QK).norm() / (W_OV.norm() * W_QK.norm())
    return scores


def copying_share(model, layer, head):
    eig = torch.linalg.eigvals(model.W_E @ model.W_V[layer, head] @ model.W_O[layer, head] @ model.W_U)
    return float((eig.real > 0).float().mean())


def duplicate_score(model, tokens):
    half = (tokens.shape[1] - 1) // 2
    _, cache = model.run_with_cache(tokens)
    return torch.stack([cache[f"blocks.{l}.attn.hook_pattern"].diagonal(offset=-half, dim1=-2, dim2=-1)[..., 1:].mean(dim=(0, 2))
                        for l in range(model.cfg.n_layers)])


def skip_trigram_with_bos(model, head, b):
    qk = model.W_E[b] @ model.W_Q[0, head] @ model.W_K[0, head].T @ model.W_E.T
    a = int(qk.argmax())
    return a, int((model.W_E[a] @ model.W_V[0, head] @ model.W_O[0, head] @ model.W_U).argmax())


def skip_trigram_by_reference(model, head, b):
    return course_lib.circuits.best_skip_trigram(model, head, b)


@pytest.mark.parametrize(
    "exercise, fn, message",
    [
        ("toy_forward", forward_unscaled, r"Hint: your logits are what you get without the 1/sqrt\(d_head\) scaling"),
        ("toy_forward", forward_by_calling_the_model, "calls the course's reference implementation"),
        ("decompose_1l", decompose_swapped, "Hint: your terms add up to the logits"),
        ("k_composition_scores", q_composition, "Hint: that is Q-composition"),
        ("copying_score", copying_share, "Hint: that is the share of eigenvalues with positive real part"),
        ("induction_score", duplicate_score, "Hint: that is the duplicate-token score"),
        ("skip_trigram", skip_trigram_by_reference, "reference implementation"),
    ],
)
def test_mistakes_get_precise_feedback(checks, exercise, fn, message):
    with pytest.raises(AssertionError, match=message):
        getattr(checks, f"check_{exercise}")(fn)


def test_skip_trigram_that_keeps_the_start_token_is_explained(checks):
    with pytest.raises(AssertionError, match="leave out the start token"):
        checks.check_skip_trigram(skip_trigram_with_bos)
