"""Checkers for notebook 00_setup: reading the residual stream, the probability of an answer.

Each checker computes the expected values with a private copy of the reference implementation on
its own model instance *before* calling the student's function, then compares and explains the
first difference it finds.
"""

from __future__ import annotations

from typing import Callable

from course_lib.checks import _trust as T

_activations = T.private_module("activations")
_tokens = T.private_module("tokens")
_heads = T.private_module("heads")


def _forbidden_resid() -> set[tuple[str, str]]:
    return T.reference_code_ids([_activations.resid_after_layer, _activations.resid_stack])


def _forbidden_answer() -> set[tuple[str, str]]:
    return T.reference_code_ids([_tokens.answer_probability, _tokens.next_token_probs, _tokens.top_next_tokens])


def _resid_hint(model, tokens, layer: int, actual) -> str:
    """Name a common mistake when the student's tensor matches another activation."""
    if not T._is_tensor(actual):
        return ""
    layer = layer % model.cfg.n_layers
    names = {
        f"blocks.{layer}.hook_resid_pre": f"the residual stream *before* block {layer} (hook_resid_pre)",
        f"blocks.{layer}.hook_attn_out": f"the attention output of block {layer} (hook_attn_out), not the stream",
    }
    if layer + 1 < model.cfg.n_layers:
        names[f"blocks.{layer + 1}.hook_resid_post"] = f"the residual stream after block {layer + 1}: off by one"
    with T._no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    for key, text in names.items():
        other = cache[key]
        if T.tensors_match(actual, other, atol=1e-4, rtol=0):
            return " Hint: you returned " + text + "."
    return ""


def check_resid_after_layer(student_fn: Callable, *, hidden: bool = False) -> None:
    """resid_after_layer(model, tokens, layer) must equal blocks.{layer}.hook_resid_post."""
    name = "resid_after_layer"
    toy2, toy1 = T.private_toy("attn-only-2l"), T.private_toy("attn-only-1l")
    smol = T.private_pretrained()
    if not hidden:
        toy_tokens = _heads.repeated_random_tokens(2, 10, toy2.cfg.d_vocab, 0, seed=11)
        smol_tokens = smol.to_tokens("The Colosseum is in downtown", prepend_bos=True)
        cases = [(toy2, toy_tokens, 0), (toy2, toy_tokens, 1), (toy2, toy_tokens, -1), (smol, smol_tokens, 0), (smol, smol_tokens, 17)]
    else:
        toy_tokens = _heads.repeated_random_tokens(3, 7, toy2.cfg.d_vocab, 0, seed=2024)
        smol_tokens = smol.to_tokens(["When Mary and John went to the store,", "The nurse entered the room."], prepend_bos=False)
        cases = [(toy1, toy_tokens, 0), (toy2, toy_tokens[:1], 1), (smol, smol_tokens, -2), (smol, smol_tokens, 29)]
    forbidden = _forbidden_resid()
    for model, tokens, layer in cases:
        expected = _activations.resid_after_layer(model, tokens, layer)
        where = f"{model.cfg.n_layers}-layer model, tokens of shape {tuple(tokens.shape)}, layer={layer}"
        actual = T.call_student(student_fn, (model, tokens.clone(), layer), forbidden, name)
        model.reset_hooks(including_permanent=True)
        try:
            T.assert_tensor_close(actual, expected, name, atol=1e-4, rtol=1e-4, where=where)
        except AssertionError as err:
            raise AssertionError(str(err) + _resid_hint(model, tokens, layer, actual)) from None
    T.passed(name, len(cases), hidden)


def _probability_hint(model, prompt: str, answer: str, prepend_bos: bool, actual: float) -> str:
    """Name a common mistake when the student's number matches another quantity."""
    answer_id = _tokens.single_token_id(model, answer)
    with T._no_grad():
        other_bos = _tokens.answer_probability(model, prompt, answer, prepend_bos=not prepend_bos)
        logits = model(_tokens.to_tokens(model, prompt, prepend_bos=prepend_bos))[0]
    candidates = {
        "the value for prepend_bos={flip}: pass prepend_bos on to the tokenizer".format(flip=not prepend_bos): other_bos,
        "the raw logit: apply softmax over the vocabulary": float(logits[-1, answer_id]),
        "the log-probability: the exercise asks for the probability": float(logits[-1].log_softmax(-1)[answer_id]),
        "the probability at the first position: use the last position's logits": float(logits[0].softmax(-1)[answer_id]),
        "a softmax over the positions: take the softmax over the vocabulary (the last dimension)": float(logits.softmax(0)[-1, answer_id]),
    }
    for text, value in candidates.items():
        if abs(value - actual) <= 1e-4 + 1e-3 * abs(value):
            return f" Hint: your number equals {text}."
    return ""


def check_answer_probability(student_fn: Callable, *, hidden: bool = False) -> None:
    """answer_probability(model, prompt, answer, prepend_bos) -> float; ValueError for multi-token answers."""
    name = "answer_probability"
    smol = T.private_pretrained()
    if not hidden:
        cases = [
            ("The Colosseum is in downtown", " Rome", True),
            ("The Colosseum is in downtown", " Rome", False),
            ("The Eiffel Tower is located in the city of", " Paris", True),
        ]
        bad_answers = [(" Colosseum", "The most famous arena in Rome is the")]
    else:
        cases = [
            ("When Mary and John went to the store, John gave a drink to", " Mary", False),
            ("When Mary and John went to the store, John gave a drink to", " John", True),
            ("The capital of Poland is", " Warsaw", True),
            ("The nurse entered the room.", " She", False),
        ]
        bad_answers = [(" Warszawa", "The capital of Poland is")]
    forbidden = _forbidden_answer()
    for prompt, answer, prepend_bos in cases:
        expected = _tokens.answer_probability(smol, prompt, answer, prepend_bos=prepend_bos)
        where = f"prompt={prompt!r}, answer={answer!r}, prepend_bos={prepend_bos}"
        try:
            actual = T.call_student(student_fn, (smol, prompt, answer, prepend_bos), forbidden, name)
        except AssertionError as err:
            if "raised ValueError" not in str(err):
                raise
            raise AssertionError(
                f"{err}\nHint: {answer!r} is a single token. Tokenize the answer with prepend_bos=False: with the "
                "start token in front, every answer looks like two tokens."
            ) from None
        smol.reset_hooks(including_permanent=True)
        try:
            T.assert_float_close(actual, expected, name, atol=1e-5, rtol=1e-3, where=where)
        except AssertionError as err:
            hint = _probability_hint(smol, prompt, answer, prepend_bos, T.safe_float(actual))
            raise AssertionError(str(err) + hint) from None
    for answer, prompt in bad_answers:
        T.call_student(student_fn, (smol, prompt, answer, True), forbidden, name, expect_error=ValueError)
    T.passed(name, len(cases) + len(bad_answers), hidden)
