"""The 04_activation_patching checkers: right answers pass, the mistakes a student plausibly makes
are rejected with a message that names them, and the references cannot stand in for the student."""

from __future__ import annotations

import pytest
import torch

import course_lib.patching as patching
from course_lib.checks import load_checks

from conftest import solution_functions

S = solution_functions("04_activation_patching.ipynb", extra={"patching": patching})

EXERCISES = ["logit_diff", "normalised_metric", "patch_resid_pre", "residual_sweep", "head_sweep", "both_directions", "attribution_resid"]


@pytest.fixture(scope="module")
def checks(smollm2):
    return load_checks("04_activation_patching")


@pytest.fixture(autouse=True)
def no_grad():
    with torch.no_grad():
        yield


@pytest.mark.parametrize("exercise", EXERCISES)
@pytest.mark.parametrize("hidden", [False, True])
def test_correct_solutions_pass(checks, exercise, hidden):
    getattr(checks, f"check_{exercise}")(getattr(S, exercise), hidden=hidden)


# ----- exercise 1 ---------------------------------------------------------------------------------
def _pairs(logits, correct, incorrect):
    rows = torch.arange(logits.shape[0])
    return rows, torch.as_tensor(correct).expand(logits.shape[0]), torch.as_tensor(incorrect).expand(logits.shape[0])


def ld_first_position(logits, correct, incorrect):
    rows, c, i = _pairs(logits, correct, incorrect)
    return (logits[rows, 0, c] - logits[rows, 0, i]).mean()


def ld_flipped(logits, correct, incorrect):
    return -S.logit_diff(logits, correct, incorrect)


def ld_summed(logits, correct, incorrect):
    rows, c, i = _pairs(logits, correct, incorrect)
    return (logits[rows, -1, c] - logits[rows, -1, i]).sum()


def ld_probabilities(logits, correct, incorrect):
    rows, c, i = _pairs(logits, correct, incorrect)
    probs = logits[:, -1].softmax(-1)
    return (probs[rows, c] - probs[rows, i]).mean()


def ld_fancy_indexing(logits, correct, incorrect):
    return (logits[:, -1, correct] - logits[:, -1, incorrect]).mean()


def ld_per_prompt(logits, correct, incorrect):
    rows, c, i = _pairs(logits, correct, incorrect)
    return logits[rows, -1, c] - logits[rows, -1, i]


# ----- exercise 2 ---------------------------------------------------------------------------------
def norm_swapped(value, corrupted, clean):
    return (value - clean) / (corrupted - clean)


def norm_abs(value, corrupted, clean):
    if clean == corrupted:
        raise ValueError("equal")
    return (value - corrupted) / abs(clean - corrupted)


def norm_no_offset(value, corrupted, clean):
    if clean == corrupted:
        raise ValueError("equal")
    return value / (clean - corrupted)


def norm_no_error(value, corrupted, clean):
    return (value - corrupted) / (clean - corrupted + 1e-12)


# ----- exercise 3 ---------------------------------------------------------------------------------
def _patch(model, tokens, cache, name, index):
    def hook(act, hook):
        act = act.clone()
        act[(slice(None), *index)] = cache[name][(slice(None), *index)]
        return act

    return model.run_with_hooks(tokens, fwd_hooks=[(name, hook)])


def patch_from_pos_on(model, corrupted_tokens, clean_cache, layer, pos):
    return _patch(model, corrupted_tokens, clean_cache, f"blocks.{layer}.hook_resid_pre", (slice(pos, None),))


def patch_resid_post(model, corrupted_tokens, clean_cache, layer, pos):
    return _patch(model, corrupted_tokens, clean_cache, f"blocks.{layer + 1}.hook_resid_pre", (pos,))


def patch_in_place(model, corrupted_tokens, clean_cache, layer, pos):
    name = f"blocks.{layer}.hook_resid_pre"

    def hook(resid, hook):
        clean_cache[name][:, :pos] = resid[:, :pos]  # "reuse" the cache as the buffer
        clean_cache[name][:, pos + 1 :] = resid[:, pos + 1 :]
        return clean_cache[name]

    return model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, hook)])


def patch_nothing(model, corrupted_tokens, clean_cache, layer, pos):
    def hook(resid, hook):
        patched = resid.clone()
        patched[:, pos] = clean_cache[f"blocks.{layer}.hook_resid_pre"][:, pos]  # but returns the original

    return model.run_with_hooks(corrupted_tokens, fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", hook)])


def patch_by_reference(model, corrupted_tokens, clean_cache, layer, pos):
    patching.one_location(model, corrupted_tokens, clean_cache, "resid_pre", (layer, pos), lambda logits: logits.sum())
    return S.patch_resid_pre(model, corrupted_tokens, clean_cache, layer, pos)


# ----- exercise 4 ---------------------------------------------------------------------------------
def sweep_transposed(model, corrupted_tokens, clean_cache, metric):
    return S.residual_sweep(model, corrupted_tokens, clean_cache, metric).T


def sweep_resid_post(model, corrupted_tokens, clean_cache, metric):
    result = torch.zeros(model.cfg.n_layers, corrupted_tokens.shape[1])
    for layer in range(model.cfg.n_layers):
        for pos in range(corrupted_tokens.shape[1]):
            name = f"blocks.{layer}.hook_resid_post"

            def hook(resid, hook, pos=pos, name=name):
                resid = resid.clone()
                resid[:, pos] = clean_cache[name][:, pos]
                return resid

            result[layer, pos] = float(metric(model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, hook)])))
    return result


def sweep_hooks_left_attached(model, corrupted_tokens, clean_cache, metric):
    result = torch.zeros(model.cfg.n_layers, corrupted_tokens.shape[1])
    try:
        for layer in range(model.cfg.n_layers):
            for pos in range(corrupted_tokens.shape[1]):
                name = f"blocks.{layer}.hook_resid_pre"

                def hook(resid, hook, pos=pos, name=name):
                    resid = resid.clone()
                    resid[:, pos] = clean_cache[name][:, pos]
                    return resid

                model.add_hook(name, hook)
                result[layer, pos] = float(metric(model(corrupted_tokens)))
    finally:
        model.reset_hooks()
    return result


def sweep_by_reference(model, corrupted_tokens, clean_cache, metric):
    return patching.get_act_patch_resid_pre(model, corrupted_tokens, clean_cache, metric)


# ----- exercise 5 ---------------------------------------------------------------------------------
def _head_sweep(model, corrupted_tokens, clean_cache, metric, hook_kind, positions):
    result = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    for layer in range(model.cfg.n_layers):
        name = f"blocks.{layer}.attn.hook_{hook_kind}"
        for head in range(model.cfg.n_heads):
            index = (positions, head) if hook_kind in ("z", "q") else (head, positions)
            result[layer, head] = float(metric(_patch(model, corrupted_tokens, clean_cache, name, index)))
    return result


def heads_last_position(model, corrupted_tokens, clean_cache, metric):
    return _head_sweep(model, corrupted_tokens, clean_cache, metric, "z", -1)


def heads_queries(model, corrupted_tokens, clean_cache, metric):
    return _head_sweep(model, corrupted_tokens, clean_cache, metric, "q", slice(None))


def heads_pattern(model, corrupted_tokens, clean_cache, metric):
    return _head_sweep(model, corrupted_tokens, clean_cache, metric, "pattern", slice(None))


def heads_transposed(model, corrupted_tokens, clean_cache, metric):
    return S.head_sweep(model, corrupted_tokens, clean_cache, metric).T


# ----- exercise 6 ---------------------------------------------------------------------------------
def directions_swapped(model, clean_tokens, corrupted_tokens, metric):
    denoising, noising = S.both_directions(model, clean_tokens, corrupted_tokens, metric)
    return noising, denoising


def directions_raw(model, clean_tokens, corrupted_tokens, metric):
    _, clean_cache = model.run_with_cache(clean_tokens)
    _, corrupted_cache = model.run_with_cache(corrupted_tokens)
    return (patching.sweep(model, corrupted_tokens, clean_cache, "resid_pre", metric, progress=False),
            patching.sweep(model, clean_tokens, corrupted_cache, "resid_pre", metric, progress=False))


def directions_flipped_noising(model, clean_tokens, corrupted_tokens, metric):
    denoising, noising = S.both_directions(model, clean_tokens, corrupted_tokens, metric)
    return denoising, 1 - noising


def directions_clean_into_clean(model, clean_tokens, corrupted_tokens, metric):
    denoising, _ = S.both_directions(model, clean_tokens, corrupted_tokens, metric)
    clean_logits, clean_cache = model.run_with_cache(clean_tokens)
    high, low = float(metric(clean_logits)), float(metric(model(corrupted_tokens)))
    noising = patching.sweep(model, clean_tokens, clean_cache, "resid_pre", metric, progress=False)
    return denoising, (noising - low) / (high - low)


# ----- exercise 7 ---------------------------------------------------------------------------------
def atp_flipped(model, clean_tokens, corrupted_tokens, metric):
    return -S.attribution_resid(model, clean_tokens, corrupted_tokens, metric)


def atp_value(model, clean_tokens, corrupted_tokens, metric):
    return float(metric(model(corrupted_tokens))) + S.attribution_resid(model, clean_tokens, corrupted_tokens, metric)


def atp_batch_mean(model, clean_tokens, corrupted_tokens, metric):
    return S.attribution_resid(model, clean_tokens, corrupted_tokens, metric) / clean_tokens.shape[0]


def atp_gradient_at_clean(model, clean_tokens, corrupted_tokens, metric):
    # Expand around the clean run: (clean - corrupted) . grad at clean.
    return -S.attribution_resid(model, corrupted_tokens, clean_tokens, metric)


def atp_by_reference(model, clean_tokens, corrupted_tokens, metric):
    _, clean_cache = model.run_with_cache(clean_tokens)
    value = float(metric(model(corrupted_tokens)))
    return patching.attribution_sweep(model, corrupted_tokens, clean_cache, "resid_pre", metric) - value


WRONG_ANSWERS = [
    ("logit_diff", ld_first_position, "Hint: you read the first position"),
    ("logit_diff", ld_flipped, "Hint: the sign is flipped"),
    ("logit_diff", ld_summed, "Hint: you summed over the batch"),
    ("logit_diff", ld_probabilities, "Hint: that is a difference of probabilities"),
    ("logit_diff", ld_fancy_indexing, r"Hint: you indexed every prompt with every id"),
    ("logit_diff", ld_per_prompt, "Average over the batch"),
    ("normalised_metric", norm_swapped, "Hint: clean and corrupted are swapped"),
    ("normalised_metric", norm_abs, r"Hint: divide by \(clean - corrupted\) itself, not its absolute value"),
    ("normalised_metric", norm_no_offset, "Hint: subtract the corrupted baseline"),
    ("normalised_metric", norm_no_error, "should raise ValueError"),
    ("patch_resid_pre", patch_from_pos_on, "Hint: you patched positions"),
    ("patch_resid_pre", patch_resid_post, r"Hint: that is the residual stream \*after\* the layer"),
    ("patch_resid_pre", patch_in_place, "changed the clean cache"),
    ("patch_resid_pre", patch_nothing, "Hint: those are the unpatched corrupted logits"),
    ("patch_resid_pre", patch_by_reference, "reference implementation"),
    ("residual_sweep", sweep_transposed, "Hint: transposed"),
    ("residual_sweep", sweep_resid_post, "Hint: row l holds the patch of layer l \\+ 1's input"),
    ("residual_sweep", sweep_hooks_left_attached, "Hint: each entry has every earlier location patched too"),
    ("residual_sweep", sweep_by_reference, "reference implementation"),
    ("head_sweep", heads_last_position, "Hint: you patched the last position only"),
    ("head_sweep", heads_queries, "Hint: you patched the head's queries"),
    ("head_sweep", heads_pattern, "Hint: you patched the attention pattern"),
    ("head_sweep", heads_transposed, "Hint: transposed"),
    ("both_directions", directions_swapped, "Hint: the two results are swapped"),
    ("both_directions", directions_raw, "Hint: not normalised"),
    ("both_directions", directions_flipped_noising, "Hint: normalise both directions with the same baselines"),
    ("both_directions", directions_clean_into_clean, "Hint: noising patches the corrupted run's activations into the clean run"),
    ("attribution_resid", atp_flipped, "Hint: the sign is flipped"),
    ("attribution_resid", atp_value, r"Hint: that is the estimated metric \*value\*"),
    ("attribution_resid", atp_batch_mean, "Hint: you averaged over the batch"),
    ("attribution_resid", atp_gradient_at_clean, "Hint: you took the gradient at the clean run"),
    ("attribution_resid", atp_by_reference, "reference implementation"),
]


@pytest.mark.parametrize("exercise, fn, message", WRONG_ANSWERS, ids=[f"{e}-{f.__name__}" for e, f, _ in WRONG_ANSWERS])
def test_plausible_mistakes_are_rejected_and_named(checks, exercise, fn, message):
    with pytest.raises(AssertionError, match=message):
        getattr(checks, f"check_{exercise}")(fn)


def test_every_exercise_has_named_mistakes():
    assert {exercise for exercise, _, _ in WRONG_ANSWERS} == set(EXERCISES)


def test_patching_the_head_output_after_w_o_is_accepted(checks):
    """hook_result (z times W_O, per head) carries the same patch as hook_z: a right answer too."""
    def heads_via_result(model, corrupted_tokens, clean_cache, metric):
        result = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
        for layer in range(model.cfg.n_layers):
            name = f"blocks.{layer}.attn.hook_result"
            for head in range(model.cfg.n_heads):
                result[layer, head] = float(metric(_patch(model, corrupted_tokens, clean_cache, name, (slice(None), head))))
        return result

    checks.check_head_sweep(heads_via_result)
