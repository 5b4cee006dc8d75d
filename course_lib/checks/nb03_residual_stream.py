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
_ablation = T.private_module("ablation")


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
                no_pos = expected.clone()
                no_pos[0] = toy1.W_E[tokens[0]] @ toy1.W_U
                if T.tensors_match(actual.sum(0), expected.sum(0)):
                    hint = (" Hint: your terms add up to the logits, but are split differently: term 0 is"
                            " (W_E[tokens] + W_pos) @ W_U, term 1 + h is head h's output times W_U.")
                elif T.tensors_match(actual[0], no_pos[0]):
                    hint = (" Hint: your direct path leaves out the positional embeddings: it is"
                            " (W_E[tokens] + W_pos[:pos]) @ W_U, so the terms add up to the logits.")
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


def _most_negative_copier(model) -> int:
    return int(_circuits.copying_scores(model, 0)["eigenvalue_ratio"].argmin())


def check_copying_score(student_fn: Callable, *, hidden: bool = False) -> None:
    """copying_score(model, layer, head) -> float: sum(Re eig) / sum(|eig|) of W_E W_V W_O W_U."""
    name = "copying_score"
    toy1, toy2 = T.private_toy("attn-only-1l"), T.private_toy("attn-only-2l")
    # Include heads with negative scores: an |Re| or a share of positive eigenvalues differs there.
    cases = [(toy1, 0, 1), (toy1, 0, 3), (toy2, 0, _most_negative_copier(toy2))]
    if hidden:
        cases = [(toy1, 0, 0), (toy2, 1, 3), (toy2, 0, 2), (toy1, 0, 2)]
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
            eig = _circuits.full_ov_circuit(model, layer, head).eigenvalues
            if 0 <= value <= 1 and any(abs(c - round(c)) < 1e-4 for c in counts):
                hint = " Hint: that is the share of eigenvalues with positive real part; weigh them: sum(Re) / sum(|eig|)."
            elif abs(value - float(eig.real.abs().sum() / eig.abs().sum())) < 1e-3:
                hint = (" Hint: you took the absolute value of the real parts, so negative eigenvalues count as copying;"
                        " a head that maps tokens to *other* tokens (or suppresses them) must score below 0.")
            elif abs(value - float(eig.real.sum())) < 1e-3 * max(1.0, abs(float(eig.real.sum()))):
                hint = " Hint: that is sum(Re(eig)) alone; divide by sum(|eig|) so the score lies in [-1, 1]."
            raise AssertionError(str(err) + hint) from None
    T.passed(name, len(cases), hidden)


def check_induction_score(student_fn: Callable, *, hidden: bool = False) -> None:
    """induction_score(model, tokens) -> [n_layers, n_heads] on [BOS, x, x] sequences, for both models."""
    name = "induction_score"
    toy2 = T.private_toy("attn-only-2l")
    smol = T.private_pretrained()
    bos = smol.tokenizer.bos_token_id
    if not hidden:
        cases = [(toy2, _heads.repeated_random_tokens(4, 12, 64, 0, seed=5)),
                 (smol, _heads.repeated_random_tokens(2, 12, smol.cfg.d_vocab, bos, seed=6, low=1000))]
    else:
        cases = [(toy2, _heads.repeated_random_tokens(3, 9, 64, 0, seed=50)),
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
            elif T.tensors_match(actual, _induction_all_queries(model, tokens)):
                hint = (" Hint: you averaged over every query that has a key half a sequence back, first copy"
                        " included; only the second copy's queries (n + 1 ... 2n) have an earlier occurrence.")
            raise AssertionError(str(err) + hint) from None
    T.passed(name, len(cases), hidden)


def _induction_all_queries(model, tokens) -> torch.Tensor:
    half = (tokens.shape[1] - 1) // 2
    patterns = _heads.attention_patterns(model, tokens)
    return patterns.diagonal(offset=-(half - 1), dim1=-2, dim2=-1).mean(dim=(1, -1))


def _bos_favourite_case(model, first_head: int) -> tuple[int, int]:
    """(head, b) for which row b of the head's full QK circuit peaks at the start token."""
    with T._no_grad():
        for offset in range(model.cfg.n_heads):
            head = (first_head + offset) % model.cfg.n_heads
            qk = _circuits.full_qk_circuit(model, 0, head).AB
            for b in range(1, model.cfg.d_vocab):
                if int(qk[b].argmax()) == model.cfg.bos_token_id:
                    return head, b
    raise RuntimeError("no head prefers the start token for any query token: choose another corner case.")


def check_skip_trigram(student_fn: Callable, *, hidden: bool = False) -> None:
    """skip_trigram(model, head, b) -> (a, c): the source A head attends to from B (BOS excluded), and A's top OV output C."""
    name = "skip_trigram"
    toy1 = T.private_toy("attn-only-1l")
    # A case where the head's favourite key is the start token, which must be left out.
    bos_case = _bos_favourite_case(toy1, first_head=0 if not hidden else 1)
    cases = [(2, 7), (2, 10), bos_case] if not hidden else [(0, 9), (2, 12), (3, 11), (2, 30), bos_case]
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


def _ablation_variant(model, tokens, layer: int, head: int, kind: str) -> torch.Tensor:
    """Logits under a plausible wrong ablation, to name the mistake."""
    name = f"blocks.{layer}.attn.hook_z"
    with T._no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=name)
        z_all = cache[name]

        def hook(z, hook):
            if kind == "all heads":
                z[:, :, :, :] = 0.0
            elif kind == "d_head axis":
                z[..., head] = 0.0
            elif kind == "mean over positions":
                z[:, :, head] = z_all[:, :, head].mean(dim=(0, 1))
            elif kind == "mean over d_head":
                z[:, :, head] = z_all[:, :, head].mean(dim=-1, keepdim=True)
            return z

        return model.run_with_hooks(tokens, fwd_hooks=[(name, hook)])


def check_ablate_head(student_fn: Callable, *, hidden: bool = False) -> None:
    """ablate_head(model, tokens, layer, head, how) -> logits with one head zero- or mean-ablated (hooks removed after)."""
    name = "ablate_head"
    toy2 = T.private_toy("attn-only-2l")
    smol = T.private_pretrained()
    if not hidden:
        cases = [(toy2, _heads.repeated_random_tokens(4, 10, 64, 0, seed=7), 0, 1, "zero"),
                 (toy2, _heads.repeated_random_tokens(4, 10, 64, 0, seed=7), 1, 2, "mean"),
                 (smol, smol.to_tokens(["The Colosseum is in downtown", "The Space Needle is in downtown"], prepend_bos=True), 11, 1, "mean")]
    else:
        cases = [(T.private_toy("attn-only-1l"), _heads.repeated_random_tokens(3, 8, 64, 0, seed=70), 0, 3, "mean"),
                 (toy2, _heads.repeated_random_tokens(5, 12, 64, 0, seed=71), 0, 0, "zero"),
                 (smol, _heads.repeated_random_tokens(3, 10, smol.cfg.d_vocab, smol.tokenizer.bos_token_id, seed=72, low=1000), 16, 0, "mean")]
    forbidden = T.reference_code_ids([_ablation.ablated_logits, _ablation.mean_z])
    for model, tokens, layer, head, how in cases:
        with T._no_grad():
            clean = model(tokens)
            expected = _ablation.ablated_logits(model, tokens, [(layer, head)], how=how)
        where = f"{model.cfg.n_layers}-layer model, tokens {tuple(tokens.shape)}, layer {layer}, head {head}, how={how!r}"
        actual = T.call_student(student_fn, (model, tokens.clone(), layer, head, how), forbidden, name)
        with T._no_grad():
            after = model(tokens)
        model.reset_hooks(including_permanent=True)
        if not T.tensors_match(after, clean, atol=1e-4, rtol=1e-4):
            raise AssertionError(
                f"{name} left a hook attached ({where}): the model's own output changed after your function returned. "
                "Use model.run_with_hooks(tokens, fwd_hooks=[(hook_name, hook_fn)]), which removes the hook afterwards."
            )
        try:
            T.assert_tensor_close(actual, expected, name, atol=2e-3, rtol=2e-3, where=where)
        except AssertionError as err:
            hint = ""
            if T.tensors_match(actual, clean, atol=1e-4, rtol=1e-4):
                hint = (" Hint: these are the model's logits without any ablation: did the hook run on "
                        f"'blocks.{layer}.attn.hook_z', and does it change z in place or return the changed tensor?")
            else:
                for kind, text in [("all heads", f"every head of layer {layer} ablated: change only z[:, :, head]"),
                                   ("d_head axis", "an ablation along the last axis (d_head): the head axis of hook_z is dim 2, [batch, pos, head, d_head]"),
                                   ("mean over positions", "the mean over the batch *and the positions*: mean-ablation keeps one mean per position (mean over dim 0 only)"),
                                   ("mean over d_head", "a mean over d_head: average over the batch instead")]:
                    if T.tensors_match(actual, _ablation_variant(model, tokens, layer, head, kind), atol=2e-3, rtol=2e-3):
                        hint = f" Hint: your logits are what you get with {text}."
                        break
                model.reset_hooks(including_permanent=True)
            raise AssertionError(str(err) + hint) from None
    T.passed(name, len(cases), hidden)
