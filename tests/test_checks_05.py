"""The 05_circuit_analysis checkers: right answers pass, the mistakes a student plausibly makes are
rejected with a message that names them, and the references cannot stand in for the student."""

from __future__ import annotations

import pytest
import torch

from course_lib import scrubbing
from course_lib.ablation import ablated_logits
from course_lib.checks import load_checks
from course_lib.ioi_circuit import classify_direct_heads as reference_classify
from course_lib.patching.path import path_patch

from conftest import solution_functions

S = solution_functions("05_circuit_analysis.ipynb")

EXERCISES = ["ioi_metric", "classify_direct_heads", "path_patch_toy", "resample_ablate_head", "loss_recovered",
             "refined_hypothesis", "edge_score"]


@pytest.fixture(scope="module")
def checks(smollm2):
    return load_checks("05_circuit_analysis")


@pytest.fixture(autouse=True)
def no_grad():
    with torch.no_grad():
        yield


@pytest.mark.parametrize("exercise", EXERCISES)
@pytest.mark.parametrize("hidden", [False, True])
def test_correct_solutions_pass(checks, exercise, hidden):
    getattr(checks, f"check_{exercise}")(getattr(S, exercise), hidden=hidden)


# ----- exercise 1 ---------------------------------------------------------------------------------
def _ld(logits, io, s, pos=-1):
    rows = torch.arange(logits.shape[0])
    return logits[rows, pos, io] - logits[rows, pos, s]


def metric_raw(logits, io, s, clean, abc):
    return _ld(logits, io, s).mean()


def metric_swapped(logits, io, s, clean, abc):
    return (_ld(logits, io, s).mean() - clean) / (abc - clean)


def metric_s_minus_io(logits, io, s, clean, abc):
    return (-_ld(logits, io, s).mean() - abc) / (clean - abc)


def metric_first_position(logits, io, s, clean, abc):
    return (_ld(logits, io, s, pos=0).mean() - abc) / (clean - abc)


def metric_fancy_indexing(logits, io, s, clean, abc):
    return ((logits[:, -1, io] - logits[:, -1, s]).mean() - abc) / (clean - abc)


def metric_summed(logits, io, s, clean, abc):
    return (_ld(logits, io, s).sum() - abc) / (clean - abc)


def metric_per_prompt(logits, io, s, clean, abc):
    return (_ld(logits, io, s) - abc) / (clean - abc)


# ----- exercise 2 ---------------------------------------------------------------------------------
def classify_sign_flipped(effect, attn_io, attn_s, threshold=0.1, min_attention=0.2):
    return S.classify_direct_heads(-effect, attn_io, attn_s, threshold, min_attention)


def classify_ignoring_min_attention(effect, attn_io, attn_s, threshold=0.1, min_attention=0.2):
    return S.classify_direct_heads(effect, attn_io, attn_s, threshold, 0.0)


def classify_everything(effect, attn_io, attn_s, threshold=0.1, min_attention=0.2):
    return S.classify_direct_heads(effect, attn_io, attn_s, 0.0, min_attention)


def classify_unsorted(effect, attn_io, attn_s, threshold=0.1, min_attention=0.2):
    return dict(sorted(S.classify_direct_heads(effect, attn_io, attn_s, threshold, min_attention).items()))


def classify_io_first(effect, attn_io, attn_s, threshold=0.1, min_attention=0.2):
    """Looks at the IO first and never compares it with the attention to S."""
    classes = {}
    for index in effect.flatten().abs().argsort(descending=True).tolist():
        layer, head = divmod(index, effect.shape[1])
        e = float(effect[layer, head])
        if abs(e) < threshold:
            break
        if float(attn_io[layer, head]) >= min_attention:
            label = "name mover" if e < 0 else "negative name mover"
        elif float(attn_s[layer, head]) >= min_attention:
            label = "S suppressor" if e < 0 else "S mover"
        else:
            label = "other"
        classes[f"L{layer}H{head}"] = label
    return classes


def classify_strict_thresholds(effect, attn_io, attn_s, threshold=0.1, min_attention=0.2):
    """'more than' where the rule says 'at least'."""
    return S.classify_direct_heads(effect, attn_io, attn_s, threshold + 1e-6, min_attention + 1e-6)


def classify_by_reference(effect, attn_io, attn_s, threshold=0.1, min_attention=0.2):
    return reference_classify(effect, attn_io, attn_s, threshold, min_attention)


# ----- exercise 3 ---------------------------------------------------------------------------------
def path_reversed_delta(model, clean, corrupted, sender, receivers, which, metric):
    # (clean - corrupted) instead of (corrupted - clean): the sender's change with the wrong sign
    return _signed(model, clean, corrupted, sender, receivers, which, metric, -1.0)


def _signed(model, clean, corrupted, sender, receivers, which, metric, sign):
    _, c = model.run_with_cache(clean)
    _, k = model.run_with_cache(corrupted)
    name = f"blocks.{sender[0]}.attn.hook_z"
    delta = sign * (k[name][:, :, sender[1]] - c[name][:, :, sender[1]]) @ model.W_O[sender[0], sender[1]]
    weights = {"q": model.W_Q, "k": model.W_K, "v": model.W_V}[which]

    def hook(value, hook):
        for layer, head in receivers:
            value[:, :, head] = (c["blocks.1.hook_resid_pre"] + delta) @ weights[layer, head]
        return value

    return float(metric(model.run_with_hooks(clean, fwd_hooks=[(f"blocks.1.attn.hook_{which}", hook)])))


def path_activation_patch(model, clean, corrupted, sender, receivers, which, metric):
    _, k = model.run_with_cache(corrupted)
    name = f"blocks.{sender[0]}.attn.hook_z"

    def hook(z, hook):
        z[:, :, sender[1]] = k[name][:, :, sender[1]]
        return z

    return float(metric(model.run_with_hooks(clean, fwd_hooks=[(name, hook)])))


def path_all_layer1(model, clean, corrupted, sender, receivers, which, metric):
    return _signed(model, clean, corrupted, sender, [(1, h) for h in range(4)], which, metric, 1.0)


def path_nothing(model, clean, corrupted, sender, receivers, which, metric):
    return float(metric(model(clean)))


def path_by_reference(model, clean, corrupted, sender, receivers, which, metric):
    return path_patch(model, clean, corrupted, [sender], metric, receivers, which)


# ----- exercise 4 ---------------------------------------------------------------------------------
def resample_mean(model, tokens, other, layer, head, metric):
    name = f"blocks.{layer}.attn.hook_z"
    _, cache = model.run_with_cache(other, names_filter=name)

    def hook(z, hook):
        z[:, :, head] = cache[name][:, :, head].mean(0)
        return z

    return float(metric(model.run_with_hooks(tokens, fwd_hooks=[(name, hook)])))


def resample_zero(model, tokens, other, layer, head, metric):
    def hook(z, hook):
        z[:, :, head] = 0
        return z

    return float(metric(model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)])))


def resample_whole_layer(model, tokens, other, layer, head, metric):
    name = f"blocks.{layer}.attn.hook_z"
    _, cache = model.run_with_cache(other, names_filter=name)
    return float(metric(model.run_with_hooks(tokens, fwd_hooks=[(name, lambda z, hook: cache[name])])))


def resample_no_hook(model, tokens, other, layer, head, metric):
    return float(metric(model(tokens)))


def resample_by_reference(model, tokens, other, layer, head, metric):
    return float(metric(ablated_logits(model, tokens, [(layer, head)], "resample", other)))


# ----- exercise 5 ---------------------------------------------------------------------------------
def recovered_lost(model, scrubbed, scrambled):
    if scrambled == model:
        raise ValueError("undefined")
    return (scrubbed - model) / (scrambled - model)


def recovered_ratio(model, scrubbed, scrambled):
    if scrambled == model:
        raise ValueError("undefined")
    return model / scrubbed


def recovered_no_error(model, scrubbed, scrambled):
    return (scrambled - scrubbed) / (scrambled - model) if scrambled != model else 0.0


def recovered_by_reference(model, scrubbed, scrambled):
    return scrubbing.loss_recovered(model, scrubbed, scrambled)


# ----- exercise 6 ---------------------------------------------------------------------------------
def _heads(q, k, v):
    return {f"L1H{h}": {"q": q, "k": k, "v": v} for h in range(4)}


def hypothesis_naive():
    return _heads({"embed": (0,)}, {"L0H1": (-1,)}, {"embed": (0,)})


def hypothesis_claims_everything():
    return _heads(*[{t: None for t in ("embed", "L0H0", "L0H1", "L0H2", "L0H3")}] * 3)


def hypothesis_two_tokens_per_claim():
    return _heads({"embed": (-1, 0)}, {"L0H1": (-2, -1)}, {"embed": (0,)})


def hypothesis_leaves_heads_out():
    return {"L1H0": hypothesis_naive()["L1H0"]}


def hypothesis_not_a_dict():
    return [("L1H0", "q", "embed", (0,))]


# ----- exercise 7 ---------------------------------------------------------------------------------
def edge_flipped(*args):
    return -S.edge_score(*args)


def edge_mean(model, clean, corrupted, metric, sender, receiver, which):
    return S.edge_score(model, clean, corrupted, metric, sender, receiver, which) / (clean.shape[0] * clean.shape[1])


def edge_gradient_on_corrupted(model, clean, corrupted, metric, sender, receiver, which):
    return -S.edge_score(model, corrupted, clean, metric, sender, receiver, which)


def edge_into_value(model, clean, corrupted, metric, sender, receiver, which):
    return S.edge_score(model, clean, corrupted, metric, sender, receiver, "v")


WRONG_ANSWERS = [
    ("ioi_metric", metric_raw, "Hint: you returned the raw logit difference"),
    ("ioi_metric", metric_swapped, "Hint: clean and ABC are swapped"),
    ("ioi_metric", metric_s_minus_io, r"Hint: that is S - IO"),
    ("ioi_metric", metric_first_position, "Hint: you read the first position"),
    ("ioi_metric", metric_fancy_indexing, "Hint: you indexed every prompt with every name"),
    ("ioi_metric", metric_per_prompt, "Average over the prompts first"),
    ("ioi_metric", metric_summed, "Hint: you summed over the prompts"),
    ("classify_direct_heads", classify_sign_flipped, "The sign: the effect is what patching"),
    ("classify_direct_heads", classify_ignoring_min_attention, "at least min_attention"),
    ("classify_direct_heads", classify_everything, "below the threshold"),
    ("classify_direct_heads", classify_unsorted, "largest \\|effect\\| first"),
    ("classify_direct_heads", classify_io_first, "larger than to the other name"),
    ("classify_direct_heads", classify_strict_thresholds, "classified the wrong heads|at least min_attention"),
    ("classify_direct_heads", classify_by_reference, "reference implementation"),
    ("path_patch_toy", path_reversed_delta, "Hint: the change is corrupted minus clean"),
    ("path_patch_toy", path_activation_patch, "Hint: that is activation patching of the sender"),
    ("path_patch_toy", path_all_layer1, "Hint: you patched the sender into every layer-1 head"),
    ("path_patch_toy", path_nothing, "Hint: those are the clean run's logits"),
    ("path_patch_toy", path_by_reference, "reference implementation"),
    ("resample_ablate_head", resample_mean, "Hint: that is mean-ablation"),
    ("resample_ablate_head", resample_zero, "Hint: that is zero-ablation"),
    ("resample_ablate_head", resample_whole_layer, "Hint: you resampled every head of layer"),
    ("resample_ablate_head", resample_no_hook, "Hint: that is the unablated metric"),
    ("resample_ablate_head", resample_by_reference, "reference implementation"),
    ("loss_recovered", recovered_lost, r"Hint: that is the share of the loss \*lost\*"),
    ("loss_recovered", recovered_ratio, "Hint: that is a ratio of losses"),
    ("loss_recovered", recovered_no_error, "should raise ValueError"),
    ("loss_recovered", recovered_by_reference, "reference implementation"),
    ("refined_hypothesis", hypothesis_naive, "needs 95%"),
    ("refined_hypothesis", hypothesis_claims_everything, "must name exactly one token"),
    ("refined_hypothesis", hypothesis_two_tokens_per_claim, "must name exactly one token"),
    ("refined_hypothesis", hypothesis_leaves_heads_out, "claim about every layer-1 head"),
    ("refined_hypothesis", hypothesis_not_a_dict, "should return a dict"),
    ("edge_score", edge_flipped, "Hint: the sign"),
    ("edge_score", edge_mean, "Hint: sum over batch and positions"),
    ("edge_score", edge_gradient_on_corrupted, "Hint: the gradient is taken on the clean run"),
    ("edge_score", edge_into_value, "Hint: that is the edge into the value"),
]


@pytest.mark.parametrize("exercise, fn, message", WRONG_ANSWERS, ids=[f"{e}-{f.__name__}" for e, f, _ in WRONG_ANSWERS])
def test_plausible_mistakes_are_rejected_and_named(checks, exercise, fn, message):
    with pytest.raises(AssertionError, match=message):
        getattr(checks, f"check_{exercise}")(fn)


def test_every_exercise_has_named_mistakes():
    assert {exercise for exercise, _, _ in WRONG_ANSWERS} == set(EXERCISES)


def test_unimplemented_exercises_say_so(checks):
    def not_done(*args):
        raise NotImplementedError()

    for exercise in EXERCISES:
        with pytest.raises(AssertionError, match="not implemented yet"):
            getattr(checks, f"check_{exercise}")(not_done)


# ----- other correct answers must pass too ---------------------------------------------------------
def metric_as_float(logits, io, s, clean, abc):
    return float(S.ioi_metric(logits, io, s, clean, abc))


def path_three_steps_with_hooks(model, clean, corrupted, sender, receivers, which, metric):
    """The general algorithm: freeze every head at its clean z except the sender, capture, patch."""
    _, clean_cache = model.run_with_cache(clean)
    _, corrupted_cache = model.run_with_cache(corrupted)

    def freeze(layer):
        def hook(z, hook):
            z = clean_cache[f"blocks.{layer}.attn.hook_z"].clone()
            if layer == sender[0]:
                z[:, :, sender[1]] = corrupted_cache[f"blocks.{layer}.attn.hook_z"][:, :, sender[1]]
            return z
        return hook

    captured = {}

    def capture(value, hook):
        captured["x"] = value.clone()

    frozen = [(f"blocks.{l}.attn.hook_z", freeze(l)) for l in range(model.cfg.n_layers)]
    model.run_with_hooks(clean, fwd_hooks=frozen + [(f"blocks.1.attn.hook_{which}", capture)])

    def patch(value, hook):
        for _, head in receivers:
            value[:, :, head] = captured["x"][:, :, head]
        return value

    return float(metric(model.run_with_hooks(clean, fwd_hooks=[(f"blocks.1.attn.hook_{which}", patch)])))


def edge_with_autograd_grad(model, clean, corrupted, metric, sender, receiver, which):
    _, clean_cache = model.run_with_cache(clean)
    _, corrupted_cache = model.run_with_cache(corrupted)
    name = f"blocks.{sender[0]}.attn.hook_z"
    delta = (corrupted_cache[name][:, :, sender[1]] - clean_cache[name][:, :, sender[1]]) @ model.W_O[sender[0], sender[1]]
    saved = {}

    def keep(value, hook):
        saved["x"] = value
        return value

    with torch.enable_grad():
        logits = model.run_with_hooks(clean, fwd_hooks=[(f"blocks.{receiver[0]}.attn.hook_{which}", keep)])
        (grad,) = torch.autograd.grad(metric(logits), saved["x"])
    weights = {"q": model.W_Q, "k": model.W_K, "v": model.W_V}[which][receiver[0], receiver[1]].detach()
    return torch.einsum("bpm,bpm->", delta, grad[:, :, receiver[1]] @ weights.T)  # a 0-d tensor, not a float


@pytest.mark.parametrize(
    "exercise, fn",
    [("ioi_metric", metric_as_float), ("path_patch_toy", path_three_steps_with_hooks), ("edge_score", edge_with_autograd_grad)],
)
def test_other_correct_answers_pass(checks, exercise, fn):
    getattr(checks, f"check_{exercise}")(fn)
    getattr(checks, f"check_{exercise}")(fn, hidden=True)
