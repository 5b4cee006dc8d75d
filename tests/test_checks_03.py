"""The 03_residual_stream checkers: right answers pass, common mistakes are named, the model's own
forward pass and the references cannot stand in for the student's code."""

from __future__ import annotations

import math

import pytest
import torch

import course_lib.ablation
import course_lib.circuits
from course_lib.checks import load_checks

from conftest import solution_functions

S = solution_functions("03_residual_stream.ipynb")

EXERCISES = ["toy_forward", "decompose_1l", "k_composition_scores", "copying_score", "induction_score", "skip_trigram", "ablate_head"]


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


def _forward(model, tokens, *, scale=True, mask=True, pos=True):
    n = tokens.shape[1]
    resid = model.W_E[tokens] + (model.W_pos[:n] if pos else 0)
    for layer in range(model.cfg.n_layers):
        q = torch.einsum("bpm,hmd->bhpd", resid, model.W_Q[layer])
        k = torch.einsum("bpm,hmd->bhpd", resid, model.W_K[layer])
        v = torch.einsum("bpm,hmd->bhpd", resid, model.W_V[layer])
        scores = q @ k.transpose(-1, -2) / (math.sqrt(model.cfg.d_head) if scale else 1.0)
        if mask:
            scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), -math.inf)
        resid = resid + torch.einsum("bhpd,hdm->bpm", scores.softmax(-1) @ v, model.W_O[layer])
    return resid @ model.W_U


def forward_unscaled(model, tokens):
    return _forward(model, tokens, scale=False)


def forward_unmasked(model, tokens):
    return _forward(model, tokens, mask=False)


def forward_without_positions(model, tokens):
    return _forward(model, tokens, pos=False)


def forward_by_calling_the_model(model, tokens):
    return model(tokens)


def decompose_swapped(model, tokens):
    terms = S.decompose_1l(model, tokens)
    return terms[[1, 0, 2, 3, 4]]


def decompose_direct_without_positions(model, tokens):
    terms = S.decompose_1l(model, tokens)
    terms[0] = model.W_E[tokens[0]] @ model.W_U
    return terms


def q_composition(model):
    scores = torch.zeros(4, 4)
    for h0 in range(4):
        for h1 in range(4):
            W_OV = model.W_V[0, h0] @ model.W_O[0, h0]
            W_QK = model.W_Q[1, h1] @ model.W_K[1, h1].T
            scores[h0, h1] = (W_OV @ W_QK).norm() / (W_OV.norm() * W_QK.norm())
    return scores


def k_composition_transposed(model):
    return S.k_composition_scores(model).T


def copying_share(model, layer, head):
    eig = torch.linalg.eigvals(model.W_E @ model.W_V[layer, head] @ model.W_O[layer, head] @ model.W_U)
    return float((eig.real > 0).float().mean())


def copying_abs(model, layer, head):
    eig = torch.linalg.eigvals(model.W_E @ model.W_V[layer, head] @ model.W_O[layer, head] @ model.W_U)
    return float(eig.real.abs().sum() / eig.abs().sum())


def copying_unnormalised(model, layer, head):
    eig = torch.linalg.eigvals(model.W_E @ model.W_V[layer, head] @ model.W_O[layer, head] @ model.W_U)
    return float(eig.real.sum())


def duplicate_score(model, tokens):
    half = (tokens.shape[1] - 1) // 2
    _, cache = model.run_with_cache(tokens)
    return torch.stack([cache[f"blocks.{l}.attn.hook_pattern"].diagonal(offset=-half, dim1=-2, dim2=-1)[..., 1:].mean(dim=(0, 2))
                        for l in range(model.cfg.n_layers)])


def previous_score(model, tokens):
    _, cache = model.run_with_cache(tokens)
    return torch.stack([cache[f"blocks.{l}.attn.hook_pattern"].diagonal(offset=-1, dim1=-2, dim2=-1).mean(dim=(0, 2))
                        for l in range(model.cfg.n_layers)])


def induction_all_queries(model, tokens):
    half = (tokens.shape[1] - 1) // 2
    _, cache = model.run_with_cache(tokens)
    return torch.stack([cache[f"blocks.{l}.attn.hook_pattern"].diagonal(offset=-(half - 1), dim1=-2, dim2=-1).mean(dim=(0, 2))
                        for l in range(model.cfg.n_layers)])


def skip_trigram_with_bos(model, head, b):
    qk = model.W_E[b] @ model.W_Q[0, head] @ model.W_K[0, head].T @ model.W_E.T
    a = int(qk.argmax())
    return a, int((model.W_E[a] @ model.W_V[0, head] @ model.W_O[0, head] @ model.W_U).argmax())


def skip_trigram_column(model, head, b):
    qk = (model.W_E @ model.W_Q[0, head] @ model.W_K[0, head].T @ model.W_E[b]).clone()
    qk[0] = -math.inf
    a = int(qk.argmax())
    return a, int((model.W_E[a] @ model.W_V[0, head] @ model.W_O[0, head] @ model.W_U).argmax())


def skip_trigram_ov_column(model, head, b):
    a, _ = S.skip_trigram(model, head, b)
    return a, int((model.W_E @ model.W_V[0, head] @ model.W_O[0, head] @ model.W_U[:, a]).argmax())


def skip_trigram_by_reference(model, head, b):
    return course_lib.circuits.best_skip_trigram(model, head, b)


def _ablate(model, tokens, layer, head, how, *, kind="ok", leave_hook=False):
    name = f"blocks.{layer}.attn.hook_z"
    _, cache = model.run_with_cache(tokens, names_filter=name)
    z_all = cache[name]

    def hook(z, hook):
        if kind == "all heads":
            z[:] = 0.0
        elif kind == "d_head axis":
            z[..., head] = 0.0
        elif how == "zero":
            z[:, :, head] = 0.0
        elif kind == "mean over positions":
            z[:, :, head] = z_all[:, :, head].mean(dim=(0, 1))
        else:
            z[:, :, head] = z_all[:, :, head].mean(dim=0)
        return z

    if leave_hook:
        model.add_hook(name, hook)
        return model(tokens)
    return model.run_with_hooks(tokens, fwd_hooks=[(name, hook)])


def ablate_all_heads(model, tokens, layer, head, how):
    return _ablate(model, tokens, layer, head, how, kind="all heads")


def ablate_d_head_axis(model, tokens, layer, head, how):
    return _ablate(model, tokens, layer, head, how, kind="d_head axis")


def ablate_mean_over_positions(model, tokens, layer, head, how):
    return _ablate(model, tokens, layer, head, how, kind="mean over positions")


def ablate_and_leave_the_hook(model, tokens, layer, head, how):
    return _ablate(model, tokens, layer, head, how, leave_hook=True)


def ablate_nothing(model, tokens, layer, head, how):
    def hook(z, hook):
        z = z.clone()
        z[:, :, head] = 0.0  # modifies a copy and returns nothing: the model never sees it

    return model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)])


def ablate_by_reference(model, tokens, layer, head, how):
    return course_lib.ablation.ablated_logits(model, tokens, [(layer, head)], how=how)


WRONG_ANSWERS = [
    ("toy_forward", forward_unscaled, r"Hint: your logits are what you get without the 1/sqrt\(d_head\) scaling"),
    ("toy_forward", forward_unmasked, "Hint: your logits are what you get without the causal mask"),
    ("toy_forward", forward_without_positions, "Hint: your logits are what you get without the positional embeddings"),
    ("toy_forward", forward_by_calling_the_model, "calls the course's reference implementation"),
    ("decompose_1l", decompose_swapped, "Hint: your terms add up to the logits"),
    ("decompose_1l", decompose_direct_without_positions, "Hint: your direct path leaves out the positional embeddings"),
    ("k_composition_scores", q_composition, "Hint: that is Q-composition"),
    ("k_composition_scores", k_composition_transposed, "Hint: transposed"),
    ("copying_score", copying_share, "Hint: that is the share of eigenvalues with positive real part"),
    ("copying_score", copying_abs, "Hint: you took the absolute value of the real parts"),
    ("copying_score", copying_unnormalised, r"Hint: that is sum\(Re\(eig\)\) alone"),
    ("induction_score", duplicate_score, "Hint: that is the duplicate-token score"),
    ("induction_score", previous_score, "Hint: that is the previous-token score"),
    ("induction_score", induction_all_queries, "Hint: you averaged over every query"),
    ("skip_trigram", skip_trigram_with_bos, "leave out the start token"),
    ("skip_trigram", skip_trigram_column, "Hint: you read a column of the full QK circuit"),
    ("skip_trigram", skip_trigram_ov_column, "Hint: your A is right; C is the argmax of A's row"),
    ("skip_trigram", skip_trigram_by_reference, "reference implementation"),
    ("ablate_head", ablate_all_heads, "every head of layer"),
    ("ablate_head", ablate_d_head_axis, "the head axis of hook_z is dim 2"),
    ("ablate_head", ablate_mean_over_positions, "mean-ablation keeps one mean per position"),
    ("ablate_head", ablate_and_leave_the_hook, "left a hook attached"),
    ("ablate_head", ablate_nothing, "these are the model's logits without any ablation"),
    ("ablate_head", ablate_by_reference, "reference implementation"),
]


@pytest.mark.parametrize("exercise, fn, message", WRONG_ANSWERS, ids=[f"{e}-{f.__name__}" for e, f, _ in WRONG_ANSWERS])
def test_plausible_mistakes_are_rejected_and_named(checks, exercise, fn, message):
    with pytest.raises(AssertionError, match=message):
        getattr(checks, f"check_{exercise}")(fn)


def test_every_exercise_has_named_mistakes():
    assert {exercise for exercise, _, _ in WRONG_ANSWERS} == set(EXERCISES)
