"""Checkers for notebook 02_early_decoding: the logit lens from a cache, first top-1 layer,
the answer's rank per layer, and KL to the final layer.

Expected values come from a private copy of `course_lib.lens`, computed before the student's
function runs. Synthetic logits with planted answers test the edge cases (no layer gets it, ties,
a layer that has the answer on top and then loses it).
"""

from __future__ import annotations

from typing import Callable

import torch

from course_lib.checks import _trust as T

_lens = T.private_module("lens")
_activations = T.private_module("activations")
_heads = T.private_module("heads")


def _forbidden() -> set[tuple[str, str]]:
    return T.reference_code_ids(
        [_lens.logit_lens, _lens.final_norm_and_unembed, _lens.first_top1_layer, _lens.answer_trajectory,
         _lens.kl_to_final, _lens.entropy_per_layer, _lens.top_token_table]
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


def _planted_cases(hidden: bool) -> list[tuple[torch.Tensor, int]]:
    """Lens logits with an answer planted on top at chosen layers of the last position."""
    seed = 100 if hidden else 1
    cases = []
    for top_layers, answer in ([[5, 6, 7, 8], 7], [[2, 8], 11], [[], 3], [[0], 0]) if not hidden else ([[3, 4, 7, 8], 21], [[8], 2], [[], 49], [[1, 2], 13], [[6, 7, 8], 0]):
        logits = _synthetic_lens(seed + answer)
        for layer in top_layers:
            logits[layer, -1, answer] = logits[layer, -1].max() + 1.0
        for layer in set(range(logits.shape[0])) - set(top_layers):  # make sure it is not on top elsewhere
            if logits[layer, -1].argmax() == answer:
                logits[layer, -1, answer] = logits[layer, -1].min() - 1.0
        cases.append((logits, answer))
    return cases


def check_first_top1_layer(student_fn: Callable, *, hidden: bool = False) -> None:
    """first_top1_layer(lens_logits, answer_id) -> first layer with the answer top-1 at the last position, or None."""
    name = "first_top1_layer"
    forbidden = _forbidden()
    cases = _planted_cases(hidden)
    for logits, answer in cases:
        expected = _lens.first_top1_layer(logits, answer)
        actual = T.call_student(student_fn, (logits.clone(), answer), forbidden, name)
        if isinstance(actual, torch.Tensor) and actual.numel() == 1:
            actual = int(actual.item())
        where = f"lens logits of shape {tuple(logits.shape)}, answer_id={answer}"
        if expected is None:
            if actual is not None:
                raise AssertionError(f"{name} returned {actual!r} but no layer has the answer on top ({where}): return None.")
            continue
        if isinstance(actual, bool) or not isinstance(actual, int):
            raise AssertionError(f"{name} should return an int (or None), got {type(actual).__name__} ({where}).")
        if actual != expected:
            top = logits[:, -1].argmax(-1)
            layers = (top == answer).nonzero().flatten().tolist()
            hint = ""
            if layers and actual == layers[-1]:
                hint = " Hint: that is the *last* such layer; the exercise asks for the first."
            elif actual - 1 == expected:
                hint = " Hint: off by one - layer 0 is the embedding slice, index 0 of the lens."
            raise AssertionError(f"{name} returned {actual}, expected {expected} ({where}; the answer is top-1 at layers {layers}).{hint}")
    T.passed(name, len(cases), hidden)


def check_answer_rank(student_fn: Callable, *, hidden: bool = False) -> None:
    """answer_rank(lens_logits, answer_id) -> LongTensor [n_layers + 1]: rank at the last position, 0 = top."""
    name = "answer_rank"
    forbidden = _forbidden()
    cases = _planted_cases(hidden)
    for logits, answer in cases:
        expected = T._as_tensor(_lens.answer_trajectory(logits, answer)["rank"].tolist())
        actual = T.call_student(student_fn, (logits.clone(), answer), forbidden, name)
        where = f"lens logits of shape {tuple(logits.shape)}, answer_id={answer}"
        try:
            T.assert_tensor_close(actual, expected, name, atol=0, rtol=0, where=where)
        except AssertionError as err:
            hint = ""
            if T._is_tensor(actual) and tuple(actual.shape) == tuple(expected.shape):
                a = actual.double()
                if bool((a == expected.double() + 1).all()):
                    hint = " Hint: every rank is one too high: the top token has rank 0."
                elif bool((a == logits.shape[-1] - 1 - expected.double()).all()):
                    hint = " Hint: you counted from the bottom: count tokens with a *higher* logit."
            raise AssertionError(str(err) + hint) from None
    T.passed(name, len(cases), hidden)


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
                if T.tensors_match(actual, reverse, atol=1e-4, rtol=0):
                    hint = " Hint: that is KL(layer || final); the exercise asks for KL(final || layer), weighted by the final probabilities."
                elif bool((actual.double() < -1e-6).any()):
                    hint = " Hint: a KL divergence is never negative: use log_softmax, not raw logits, for the log-probabilities."
            raise AssertionError(str(err) + hint) from None
    T.passed(name, len(cases), hidden)
