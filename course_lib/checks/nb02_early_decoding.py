"""Checkers for notebook 02_early_decoding: the logit lens from a cache, the logit-difference lens
with the final norm's scale frozen, each head's direct logit attribution, and KL to the final layer.

Expected values come from a private copy of `course_lib.lens`, computed before the student's
function runs, on SmolLM2 and on the toy models (which have no final norm).
"""

from __future__ import annotations

from typing import Callable

import torch

from course_lib.checks import _trust as T

_lens = T.private_module("lens")
_activations = T.private_module("activations")
_heads = T.private_module("heads")
_tokens = T.private_module("tokens")


def _forbidden() -> set[tuple[str, str]]:
    return T.reference_code_ids(
        [_lens.logit_lens, _lens.final_norm_and_unembed, _lens.first_top1_layer, _lens.answer_trajectory,
         _lens.kl_to_final, _lens.entropy_per_layer, _lens.top_token_table, _lens.logit_diff_lens,
         _lens.logit_diff_attribution, _lens.head_logit_attribution, _lens.component_outputs,
         _lens.logit_diff_direction, _lens.final_norm_scale]
    )


def _lens_hint(model, cache, actual) -> str:
    """Name the mistake when the student's tensor equals a plausible wrong lens."""
    if not T._is_tensor(actual):
        return ""
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.hook_resid_post" for l in range(model.cfg.n_layers)]
    stack = torch.stack([cache[n][0] for n in names])
    candidates = {"the stack without the final norm: apply model.ln_final before W_U": stack @ model.W_U}
    for text, value in candidates.items():
        if T.tensors_match(actual, value):
            return f" Hint: you returned {text}."
    return ""


def check_lens_from_cache(student_fn: Callable, *, hidden: bool = False) -> None:
    """lens_from_cache(model, cache) -> [n_layers + 1, pos, d_vocab] for the first prompt of the cache."""
    name = "lens_from_cache"
    toy = T.private_toy("attn-only-2l")
    smol = T.private_pretrained()
    if not hidden:
        cases = [(toy, _heads.repeated_random_tokens(1, 6, 64, 0, seed=4)), (smol, smol.to_tokens("The capital of Poland is", prepend_bos=True))]
    else:
        cases = [
            (T.private_toy("attn-only-1l"), _heads.repeated_random_tokens(2, 5, 64, 0, seed=40)),
            (smol, smol.to_tokens(["Monday, Tuesday, Wednesday, Thursday,", "The Colosseum is"], prepend_bos=False)),
        ]
    forbidden = _forbidden()
    for model, tokens in cases:
        with T._no_grad():
            _, cache = model.run_with_cache(tokens)
            expected = _lens.final_norm_and_unembed(model, _activations.resid_stack(model, tokens[:1])[:, 0])
        where = f"{model.cfg.n_layers}-layer model, tokens of shape {tuple(tokens.shape)}"
        actual = T.call_student(student_fn, (model, cache), forbidden, name)
        model.reset_hooks(including_permanent=True)
        try:
            T.assert_tensor_close(actual, expected, name, atol=2e-3, rtol=1e-3, where=where)
        except AssertionError as err:
            raise AssertionError(str(err) + _lens_hint(model, cache, actual)) from None
    T.passed(name, len(cases), hidden)


def _synthetic_lens(seed: int, n_layers: int = 8, n_pos: int = 5, d_vocab: int = 50) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n_layers + 1, n_pos, d_vocab, generator=generator) * 3


def _stack_last(model, cache) -> torch.Tensor:
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.hook_resid_post" for l in range(model.cfg.n_layers)]
    return torch.stack([cache[n][0, -1] for n in names])


def _direction_cases(hidden: bool):
    """(model, tokens, correct, incorrect, description) on SmolLM2 and a toy model."""
    smol = T.private_pretrained()
    ids = lambda a, b: (_tokens.single_token_id(smol, a), _tokens.single_token_id(smol, b))
    if not hidden:
        prompts = [("The Colosseum is in downtown", " Rome", " Paris")]
        toy, toy_tokens, toy_ids = T.private_toy("attn-only-2l"), _heads.repeated_random_tokens(1, 6, 64, 0, seed=4), (9, 30)
    else:
        prompts = [("When Mary and John went to the store, John gave a drink to", " Mary", " John"),
                   ("The capital of Poland is", " Warsaw", " Berlin")]
        toy, toy_tokens, toy_ids = T.private_toy("attn-only-1l"), _heads.repeated_random_tokens(1, 8, 64, 0, seed=41), (17, 3)
    cases = [(smol, _tokens.to_tokens(smol, p, prepend_bos=True), *ids(a, b), f"prompt {p!r}, {a!r} vs {b!r}") for p, a, b in prompts]
    cases.append((toy, toy_tokens, *toy_ids, f"{toy.cfg.n_layers}-layer toy model, tokens {tuple(toy_tokens.shape)}, ids {toy_ids}"))
    return cases


def _norm_weight(model):
    return model.ln_final.weight if hasattr(model, "ln_final") else None


def _check_read_out(name: str, reference: Callable, hint: Callable, student_fn: Callable, hidden: bool) -> None:
    """Shared loop of the two frozen-scale exercises: expected values first, then the student's."""
    forbidden = _forbidden()
    cases = _direction_cases(hidden)
    for model, tokens, correct, incorrect, where in cases:
        with T._no_grad():
            _, cache = model.run_with_cache(tokens)
            expected = reference(model, cache, correct, incorrect)
        actual = T.call_student(student_fn, (model, cache, correct, incorrect), forbidden, name)
        model.reset_hooks(including_permanent=True)
        try:
            T.assert_tensor_close(actual, expected, name, atol=2e-3, rtol=2e-3, where=where)
        except AssertionError as err:
            with T._no_grad():
                text = hint(model, cache, correct, incorrect, actual, expected)
            raise AssertionError(str(err) + text) from None
    T.passed(name, len(cases), hidden)


def check_logit_diff_lens(student_fn: Callable, *, hidden: bool = False) -> None:
    """logit_diff_lens(model, cache, correct_id, incorrect_id) -> [n_layers + 1]: accumulated residual, frozen final scale."""

    def hint(model, cache, correct, incorrect, actual, expected) -> str:
        return _direction_hint(model, cache, correct, incorrect, actual, _stack_last(model, cache))

    _check_read_out("logit_diff_lens", _lens.logit_diff_lens, hint, student_fn, hidden)


def _direction_hint(model, cache, correct: int, incorrect: int, actual, vectors: torch.Tensor) -> str:
    """Name the mistake when the student's numbers match a plausible wrong read-out of `vectors`."""
    if not T._is_tensor(actual) or not hasattr(model, "ln_final"):
        return ""
    direction = model.W_U[:, correct] - model.W_U[:, incorrect]
    weight = _norm_weight(model)
    scale = float(cache["ln_final.hook_scale"][0, -1])
    with T._no_grad():
        candidates = {
            "each vector normalised by its own scale (model.ln_final applied to it): freeze the final residual's scale, "
            "cache['ln_final.hook_scale'][0, -1], for every component": model.ln_final(vectors) @ direction,
            "missing the final norm's weight: multiply by model.ln_final.weight": (vectors / scale) @ direction,
            "missing the final norm altogether: divide by the frozen scale and multiply by the norm's weight": vectors @ direction,
            "the logit difference the wrong way round: correct minus incorrect": -((vectors / scale * weight) @ direction),
        }
    for text, value in candidates.items():
        if T.tensors_match(actual, value, atol=2e-3, rtol=2e-3):
            return f" Hint: your numbers are {text}."
    return ""


def check_head_logit_attribution(student_fn: Callable, *, hidden: bool = False) -> None:
    """head_logit_attribution(model, cache, correct_id, incorrect_id) -> [n_layers, n_heads] at the last position."""

    def hint(model, cache, correct, incorrect, actual, expected) -> str:
        if not T._is_tensor(actual) or tuple(actual.shape) != tuple(expected.shape):
            return ""
        z = torch.stack([cache[f"blocks.{l}.attn.hook_z"][0, -1] for l in range(model.cfg.n_layers)])
        outputs = torch.einsum("lhd,lhdm->lhm", z, model.W_O)
        text = _direction_hint(model, cache, correct, incorrect, actual.reshape(-1), outputs.reshape(-1, outputs.shape[-1]))
        if not text and T.tensors_match(actual, _lens.head_logit_attribution(model, cache, correct, incorrect, pos=0), atol=2e-3, rtol=2e-3):
            text = " Hint: that is the attribution at the first position; the prediction is read at the last one (index -1)."
        return text

    _check_read_out("head_logit_attribution", _lens.head_logit_attribution, hint, student_fn, hidden)


def check_kl_to_final(student_fn: Callable, *, hidden: bool = False) -> None:
    """kl_to_final(lens_logits) -> [n_layers + 1, pos]: KL(final || layer) in nats."""
    name = "kl_to_final"
    forbidden = _forbidden()
    seeds = [7, 8] if not hidden else [70, 71, 72]
    cases = [_synthetic_lens(s, n_layers=4 + s % 3) for s in seeds]
    for logits in cases:
        expected = _lens.kl_to_final(logits)
        actual = T.call_student(student_fn, (logits.clone(),), forbidden, name)
        where = f"lens logits of shape {tuple(logits.shape)}"
        try:
            T.assert_tensor_close(actual, expected, name, atol=1e-4, rtol=1e-4, where=where)
        except AssertionError as err:
            log_p = logits.log_softmax(-1)
            reverse = (log_p.exp() * (log_p - log_p[-1:])).sum(-1)
            hint = ""
            if T._is_tensor(actual) and tuple(actual.shape) == tuple(expected.shape):
                raw = (logits[-1:].softmax(-1) * (logits[-1:] - logits)).sum(-1)
                to_first = (log_p[:1].exp() * (log_p[:1] - log_p)).sum(-1)
                if T.tensors_match(actual, reverse, atol=1e-4, rtol=0):
                    hint = " Hint: that is KL(layer || final); the exercise asks for KL(final || layer), weighted by the final probabilities."
                elif T.tensors_match(actual, raw, atol=1e-4, rtol=0):
                    hint = " Hint: you used raw logits where log-probabilities belong: take log_softmax of each layer's logits first."
                elif T.tensors_match(actual, to_first, atol=1e-4, rtol=0):
                    hint = " Hint: that is the KL to the *first* layer (index 0); the final layer is the last one (index -1)."
                elif bool((actual.double() < -1e-6).any()):
                    hint = " Hint: a KL divergence is never negative: use log_softmax, not raw logits, for the log-probabilities."
            raise AssertionError(str(err) + hint) from None
    T.passed(name, len(cases), hidden)
