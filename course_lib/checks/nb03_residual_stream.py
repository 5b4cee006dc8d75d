"""Checkers for notebook 03_residual_stream: the toy forward pass, the logit decomposition, K-composition,
copying scores, induction scores on both models, and skip-trigrams read off the circuits.

Expected values come from private copies of `course_lib.circuits` and `course_lib.heads` on the
checker's own model instances, computed before the student's function runs.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from course_lib.checks import _trust as T

_circuits = T.private_module("circuits")
_heads = T.private_module("heads")
_toy = T.private_module("models.toy")


def _toy_model_code() -> list:
    return [_toy.AttnOnlyTransformer.forward, _toy.Attention.forward, _toy.AttnOnlyBlock.forward]


def _variant_forward(model, tokens, *, scale: bool = True, mask: bool = True, pos: bool = True) -> torch.Tensor:
    """The forward pass with one ingredient left out: used to name a student's mistake."""
    n = tokens.shape[1]
    resid = model.W_E[tokens] + (model.W_pos[:n] if pos else 0)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    for layer in range(model.cfg.n_layers):
        q = torch.einsum("bpm,hmd->bhpd", resid, model.W_Q[layer])
        k = torch.einsum("bpm,hmd->bhpd", resid, model.W_K[layer])
        v = torch.einsum("bpm,hmd->bhpd", resid, model.W_V[layer])
        scores = q @ k.transpose(-1, -2) / (math.sqrt(model.cfg.d_head) if scale else 1.0)
        if mask:
            scores = scores.masked_fill(~causal, float("-inf"))
        resid = resid + torch.einsum("bhpd,hdm->bpm", scores.softmax(-1) @ v, model.W_O[layer])
    return resid @ model.W_U


def check_toy_forward(student_fn: Callable, *, hidden: bool = False) -> None:
    """toy_forward(model, tokens) -> logits [batch, pos, d_vocab], from the weights, equal to model(tokens)."""
    name = "toy_forward"
    toy1, toy2 = T.private_toy("attn-only-1l"), T.private_toy("attn-only-2l")
    if not hidden:
        cases = [(toy2, _heads.repeated_random_tokens(2, 10, 64, 0, seed=1)), (toy1, _heads.repeated_random_tokens(3, 7, 64, 0, seed=2))]
    else:
        cases = [(toy2, _heads.repeated_random_tokens(1, 23, 64, 0, seed=30)[:, :48]), (toy1, torch.tensor([[0, 5, 9, 2]]))]
    forbidden = T.reference_code_ids([_circuits.attn_only_forward, *_toy_model_code()])
    for model, tokens in cases:
        with T._no_grad():
            expected = model(tokens)
        where = f"{model.cfg.n_layers}-layer model, tokens of shape {tuple(tokens.shape)}"
        actual = T.call_student(student_fn, (model, tokens.clone()), forbidden, name)
        try:
            T.assert_tensor_close(actual, expected, name, atol=1e-3, rtol=1e-3, where=where)
        except AssertionError as err:
            hint = ""
            with T._no_grad():
                for text, kwargs in [("the 1/sqrt(d_head) scaling of the scores", {"scale": False}),
                                     ("the causal mask (queries must not see later keys)", {"mask": False}),
                                     ("the positional embeddings W_pos", {"pos": False})]:
                    if T.tensors_match(actual, _variant_forward(model, tokens, **kwargs)):
                        hint = f" Hint: your logits are what you get without {text}."
            raise AssertionError(str(err) + hint) from None
    T.passed(name, len(cases), hidden)


def check_decompose_1l(student_fn: Callable, *, hidden: bool = False) -> None:
    """decompose_1l(model, tokens) -> [1 + n_heads, pos, d_vocab]: direct path, then each head; sums to the logits."""
    name = "decompose_1l"
    toy1 = T.private_toy("attn-only-1l")
    seeds = [3] if not hidden else [31, 32]
    cases = [_heads.repeated_random_tokens(1, 6 + s % 5, 64, 0, seed=s) for s in seeds]
    forbidden = T.reference_code_ids([_circuits.logit_decomposition])
    for tokens in cases:
        expected, _ = _circuits.logit_decomposition(toy1, tokens)
        where = f"tokens of shape {tuple(tokens.shape)}"
        actual = T.call_student(student_fn, (toy1, tokens.clone()), forbidden, name)
        toy1.reset_hooks(including_permanent=True)
        try:
            T.assert_tensor_close(actual, expected, name, atol=1e-3, rtol=1e-3, where=where)
        except AssertionError as err:
            hint = ""
            if T._is_tensor(actual) and tuple(actual.shape) == tuple(expected.shape):
                if T.tensors_match(actual.sum(0), expected.sum(0)):
                    hint = (" Hint: your terms add up to the logits, but are split differently: term 0 is"
                            " (W_E[tokens] + W_pos) @ W_U, term 1 + h is head h's output times W_U.")
            raise AssertionError(str(err) + hint) from None
    T.passed(name, len(cases), hidden)


def check_k_composition_scores(student_fn: Callable, *, hidden: bool = False) -> None:
    """k_composition_scores(model) -> [n_heads, n_heads]: rows layer-0 writers, columns layer-1 readers."""
    name = "k_composition_scores"
    toy2 = T.private_toy("attn-only-2l")
    if hidden:  # a model whose heads differ from the shipped one, so memorised numbers fail
        with T._no_grad():
            generator = torch.Generator().manual_seed(7)
            for param in toy2.parameters():
                param.mul_(1 + 0.5 * torch.rand(param.shape, generator=generator))
    expected = _circuits.composition_scores(toy2, "k")
    forbidden = T.reference_code_ids([_circuits.composition_scores, _circuits.composition_score])
    actual = T.call_student(student_fn, (toy2,), forbidden, name)
    try:
        T.assert_tensor_close(actual, expected, name, atol=1e-4, rtol=1e-3)
    except AssertionError as err:
        hint = ""
        for kind, text in [("q", "Q-composition (the writer feeds the queries)"), ("v", "V-composition (the writer feeds W_OV)")]:
            if T.tensors_match(actual, _circuits.composition_scores(toy2, kind), atol=1e-4):
                hint = f" Hint: that is {text}; K-composition feeds the keys: ||W_QK^1 (W_OV^0)^T||."
        if T._is_tensor(actual) and T.tensors_match(actual, expected.T, atol=1e-4):
            hint = " Hint: transposed: rows are the layer-0 heads (writers), columns the layer-1 heads (readers)."
        raise AssertionError(str(err) + hint) from None
    T.passed(name, 1, hidden)


def check_copying_score(student_fn: Callable, *, hidden: bool = False) -> None:
    """copying_score(model, layer, head) -> float: sum(Re eig) / sum(|eig|) of W_E W_V W_O W_U."""
    name = "copying_score"
    toy1, toy2 = T.private_toy("attn-only-1l"), T.private_toy("attn-only-2l")
    cases = [(toy1, 0, 1), (toy1, 0, 2)] if not hidden else [(toy1, 0, 0), (toy2, 1, 3), (toy2, 0, 2)]
    forbidden = T.reference_code_ids([_circuits.copying_scores])
    for model, layer, head in cases:
        scores = _circuits.copying_scores(model, layer)
        expected = float(scores["eigenvalue_ratio"][head])
        where = f"{model.cfg.n_layers}-layer model, layer {layer}, head {head}"
        actual = T.call_student(student_fn, (model, layer, head), forbidden, name)
        try:
            T.assert_float_close(actual, expected, name, atol=1e-3, rtol=1e-3, where=where)
        except AssertionError as err:
            hint = ""
            value = T.safe_float(actual)
            # A count of eigenvalues over d_head or d_vocab: the student counted instead of weighing.
            # (The signs of the ~48 near-zero eigenvalues are numerical noise, so no exact match.)
            counts = [value * n for n in (model.cfg.d_head, model.cfg.d_vocab)]
            if 0 <= value <= 1 and any(abs(c - round(c)) < 1e-4 for c in counts):
                hint = " Hint: that is the share of eigenvalues with positive real part; weigh them: sum(Re) / sum(|eig|)."
            raise AssertionError(str(err) + hint) from None
    T.passed(name, len(cases), hidden)


def check_induction_score(student_fn: Callable, *, hidden: bool = False) -> None:
    """induction_score(model, tokens) -> [n_layers, n_heads] on [BOS, x, x] sequences, for both models."""
    name = "induction_score"
    toy2 = T.private_toy("attn-only-2l")
    smol = T.private_pretrained()
    bos = smol.tokenizer.bos_token_id
    if not hidden:
        cases = [(toy2, _heads.repeated_random_tokens(4, 12, 64, 0, seed=5, low=21)),
                 (smol, _heads.repeated_random_tokens(2, 12, smol.cfg.d_vocab, bos, seed=6, low=1000))]
    else:
        cases = [(toy2, _heads.repeated_random_tokens(3, 9, 64, 0, seed=50, low=21)),
                 (smol, _heads.repeated_random_tokens(1, 15, smol.cfg.d_vocab, bos, seed=51, low=1000))]
    forbidden = T.reference_code_ids([_heads.induction_scores, _heads._offset_score])
    for model, tokens in cases:
        expected = _heads.induction_scores(model, tokens)
        where = f"{model.cfg.n_layers}-layer model, tokens of shape {tuple(tokens.shape)} (half length {(tokens.shape[1] - 1) // 2})"
        actual = T.call_student(student_fn, (model, tokens.clone()), forbidden, name)
        model.reset_hooks(including_permanent=True)
        try:
            T.assert_tensor_close(actual, expected, name, atol=1e-3, rtol=1e-3, where=where)
        except AssertionError as err:
            hint = ""
            if T.tensors_match(actual, _heads.duplicate_token_scores(model, tokens)):
                hint = " Hint: that is the duplicate-token score (attending to the earlier copy itself); induction attends to the token *after* it."
            elif T.tensors_match(actual, _heads.previous_token_scores(model, tokens)):
                hint = " Hint: that is the previous-token score; induction looks back half the sequence."
            raise AssertionError(str(err) + hint) from None
    T.passed(name, len(cases), hidden)


def check_skip_trigram(student_fn: Callable, *, hidden: bool = False) -> None:
    """skip_trigram(model, head, b) -> (a, c): the source A head attends to from B (BOS excluded), and A's top OV output C."""
    name = "skip_trigram"
    toy1 = T.private_toy("attn-only-1l")
    # (0, 2): head 0's favourite key from token 2 is the start token, which must be left out.
    cases = [(3, 3), (3, 18), (0, 2)] if not hidden else [(3, 13), (2, 8), (0, 40), (1, 3), (1, 5)]
    forbidden = T.reference_code_ids([_circuits.best_skip_trigram, _circuits.top_skip_trigrams])
    for head, b in cases:
        expected = _circuits.best_skip_trigram(toy1, head, b)
        actual = T.call_student(student_fn, (toy1, head, b), forbidden, name)
        where = f"head {head}, current token B={b}"
        if T._is_tensor(actual):
            actual = tuple(int(x) for x in actual.flatten().tolist())
        if not isinstance(actual, (tuple, list)) or len(actual) != 2:
            raise AssertionError(f"{name} should return a pair (a, c) of token ids ({where}), got {actual!r}.")
        actual = tuple(int(x) for x in actual)
        if actual != expected:
            hint = ""
            qk_row = _circuits.full_qk_circuit(toy1, 0, head).AB[b]
            if actual[0] == int(qk_row.argmax()) and actual[0] != expected[0]:
                hint = " Hint: leave out the start token (id 0) as a source: attending to it carries no information."
            elif actual[0] == expected[0]:
                hint = " Hint: your A is right; C is the argmax of A's row of the full OV circuit W_E W_V W_O W_U."
            elif actual[0] == int(_circuits.full_qk_circuit(toy1, 0, head).AB[:, b].argmax()):
                hint = " Hint: you read a column of the full QK circuit; the query token B indexes the row."
            raise AssertionError(f"{name} returned {actual}, expected {expected} ({where}).{hint}")
    T.passed(name, len(cases), hidden)
