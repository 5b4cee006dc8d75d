"""Checkers for notebook 04_activation_patching: the logit-difference metric, its normalisation,
a single residual-stream patch, the residual and per-head sweeps, both directions, and
attribution patching.

Expected values come from private copies of `course_lib.patching`'s modules, or from patches the
checker makes itself, on the checker's own model instances, computed before the student's
function runs. Each checker also computes the answers a student plausibly writes by mistake and
names the mistake when the student's answer is one of them.
"""

from __future__ import annotations

from typing import Callable

import torch

from course_lib.checks import _trust as T

_metrics = T.private_module("patching.metrics")
_sweeps = T.private_module("patching.sweeps")
_attribution = T.private_module("patching.attribution")


def _hint(err: AssertionError, hint: str) -> AssertionError:
    return AssertionError(str(err) + (f" Hint: {hint}" if hint else ""))


# ----- exercise 1: logit_diff --------------------------------------------------------------------
def _logit_cases(hidden: bool):
    generator = torch.Generator().manual_seed(41 if hidden else 40)
    shapes = [(3, 5, 11), (4, 2, 11)] if not hidden else [(1, 4, 9), (5, 3, 9)]
    cases = []
    for i, shape in enumerate(shapes):
        logits = torch.randn(shape, generator=generator) * 3
        batch = shape[0]
        if i == 0:
            cases.append((logits, 2, 7))
        else:  # one answer per prompt, and never the same two ids in every row
            correct = torch.randint(0, shape[2], (batch,), generator=generator)
            incorrect = (correct + 1 + torch.randint(0, shape[2] - 1, (batch,), generator=generator)) % shape[2]
            cases.append((logits, correct, incorrect))
    return cases


def check_logit_diff(student_fn: Callable, *, hidden: bool = False) -> None:
    """logit_diff(logits, correct_id, incorrect_id) -> 0-d tensor: batch mean at the last position."""
    name = "logit_diff"
    forbidden = T.reference_code_ids([_metrics.logit_diff, _metrics.answer_logit])
    cases = _logit_cases(hidden)
    for logits, correct, incorrect in cases:
        expected = _metrics.logit_diff(logits, correct, incorrect)
        where = f"logits of shape {tuple(logits.shape)}, " + ("one answer pair" if isinstance(correct, int) else "one answer per prompt")
        actual = T.call_student(student_fn, (logits.clone(), correct, incorrect), forbidden, name)
        if T._is_tensor(actual) and actual.ndim != 0:
            hint = ""
            if tuple(actual.shape) == (logits.shape[0],):
                hint = " Average over the batch: the metric is one number."
            raise AssertionError(f"{name} should return a 0-d tensor (one number), got shape {tuple(actual.shape)} ({where}).{hint}")
        try:
            T.assert_float_close(actual, float(expected), name, atol=1e-5, rtol=1e-5, where=where)
        except AssertionError as err:
            value = T.safe_float(actual)
            rows = torch.arange(logits.shape[0])
            c = torch.as_tensor(correct).expand(logits.shape[0])
            i = torch.as_tensor(incorrect).expand(logits.shape[0])
            variants = {
                "you read the first position; the next-token prediction is at the last one, logits[:, -1].":
                    (logits[rows, 0, c] - logits[rows, 0, i]).mean(),
                "the sign is flipped: correct minus incorrect.": -expected,
                "you summed over the batch; take the mean, so the scale does not depend on the batch size.":
                    (logits[rows, -1, c] - logits[rows, -1, i]).sum(),
                "that is a difference of probabilities; the metric uses the logits themselves.":
                    (logits[:, -1].softmax(-1)[rows, c] - logits[:, -1].softmax(-1)[rows, i]).mean(),
                "you indexed every prompt with every id (logits[:, -1, ids] is [batch, batch]); pair prompt k with id k.":
                    (logits[:, -1][:, c] - logits[:, -1][:, i]).mean(),
                "you used prompt 0's logits only; average over the whole batch.": logits[0, -1, c[0]] - logits[0, -1, i[0]],
            }
            hint = next((text for text, v in variants.items() if abs(value - float(v)) < 1e-5 and abs(float(v) - float(expected)) > 1e-5), "")
            raise _hint(err, hint) from None
    T.passed(name, len(cases), hidden)


# ----- exercise 2: normalised_metric -------------------------------------------------------------
def check_normalised_metric(student_fn: Callable, *, hidden: bool = False) -> None:
    """normalised_metric(value, corrupted, clean): 0 at corrupted, 1 at clean; ValueError if equal."""
    name = "normalised_metric"
    forbidden = T.reference_code_ids([_metrics.normalised, _metrics.normalised_metric])
    if not hidden:
        cases = [(2.0, 1.0, 5.0), (torch.tensor([[10.0, 6.0], [2.0, 4.0]]), 10.0, 2.0), (-3.0, -1.0, 3.0)]
    else:
        cases = [(torch.tensor([0.5, -2.0, 7.0]), -2.0, 7.0), (3.0, 12.0, 4.0), (torch.tensor(1.5), 0.0, -3.0)]
    for value, corrupted, clean in cases:
        expected = (torch.as_tensor(value) - corrupted) / (clean - corrupted)
        where = f"value {value.tolist() if T._is_tensor(value) else value}, corrupted {corrupted}, clean {clean}"
        arg = value.clone() if T._is_tensor(value) else value
        actual = T.call_student(student_fn, (arg, corrupted, clean), forbidden, name)
        try:
            if T._is_tensor(value) and value.ndim > 0:
                T.assert_tensor_close(actual, expected, name, atol=1e-6, rtol=1e-6, where=where)
            else:
                T.assert_float_close(actual, float(expected), name, atol=1e-6, rtol=1e-6, where=where)
        except AssertionError as err:
            v = torch.as_tensor(value)
            variants = {
                "clean and corrupted are swapped: the corrupted run must map to 0 and the clean run to 1.": (v - clean) / (corrupted - clean),
                "divide by (clean - corrupted) itself, not its absolute value: when the clean run scores lower "
                "(a rank, a loss) the clean run must still map to 1.": (v - corrupted) / abs(clean - corrupted),
                "subtract the corrupted baseline from the value too: (value - corrupted) / (clean - corrupted).": v / (clean - corrupted),
                "that is value / clean; the scale runs from the corrupted baseline to the clean one.": v / clean,
            }
            try:
                got = actual if T._is_tensor(actual) else T._as_tensor(float(actual))
            except (TypeError, ValueError):
                got = None
            hint = next((text for text, cand in variants.items()
                         if got is not None and got.numel() == cand.numel()
                         and T.tensors_match(got.reshape(cand.shape), cand, atol=1e-6) and not T.tensors_match(cand, expected, atol=1e-6)), "")
            raise _hint(err, hint) from None
    for baseline in ((4.0, 4.0),) if not hidden else ((-1.5, -1.5), (0.0, 0.0)):
        T.call_student(student_fn, (1.0, *baseline), forbidden, name, expect_error=ValueError)
    T.passed(name, len(cases) + 1, hidden)


# ----- exercise 3: patch_resid_pre ---------------------------------------------------------------
def _patched_logits(model, tokens, cache, hook_name: str, index) -> torch.Tensor:
    """The checker's own patch: `hook_name` at `index` (a tuple of slices/ints after the batch) from `cache`."""
    def hook(act, hook):
        act = act.clone()
        act[(slice(None), *index)] = cache[hook_name][(slice(None), *index)]
        return act

    with T._no_grad():
        return model.run_with_hooks(tokens, fwd_hooks=[(hook_name, hook)])


def _fact_tokens(model):
    clean = model.to_tokens("The Colosseum is in downtown", prepend_bos=True)
    corrupted = model.to_tokens("The Space Needle is in downtown", prepend_bos=True)
    return clean, corrupted


def _toy_pair(seed: int, batch: int = 1, half: int = 6):
    """A repeated block (clean) and the same with part of the repeat replaced (corrupted)."""
    generator = torch.Generator().manual_seed(seed)
    block = torch.stack([torch.randperm(63, generator=generator)[:half] + 1 for _ in range(batch)])
    clean = torch.cat([torch.zeros(batch, 1, dtype=torch.long), block, block], dim=1)
    corrupted = clean.clone()
    corrupted[:, half + 1 : half + 4] = torch.randint(1, 64, (batch, 3), generator=generator)
    return clean, corrupted


def _toy_metric(clean: torch.Tensor) -> Callable:
    """Mean log-probability of the token that the repeat predicts at the second-to-last position."""
    answer = clean[:, -1]
    return lambda logits: logits[:, -2].log_softmax(-1).gather(-1, answer[:, None]).mean()


def check_patch_resid_pre(student_fn: Callable, *, hidden: bool = False) -> None:
    """patch_resid_pre(model, corrupted_tokens, clean_cache, layer, pos) -> patched logits."""
    name = "patch_resid_pre"
    smol = T.private_pretrained()
    toy2 = T.private_toy("attn-only-2l")
    clean, corrupted = _fact_tokens(smol)
    toy_clean, toy_corrupted = _toy_pair(3 if not hidden else 13, batch=2)
    cases = [(smol, clean, corrupted, 8, 4), (toy2, toy_clean, toy_corrupted, 1, 8)]
    if hidden:
        cases = [(smol, clean, corrupted, 20, 7), (smol, clean, corrupted, 0, 2), (toy2, toy_clean, toy_corrupted, 0, 9)]
    forbidden = T.reference_code_ids([_sweeps.one_location])
    for model, clean_tokens, corrupted_tokens, layer, pos in cases:
        with T._no_grad():
            _, cache = model.run_with_cache(clean_tokens)
        hook_name = f"blocks.{layer}.hook_resid_pre"
        expected = _patched_logits(model, corrupted_tokens, cache, hook_name, (pos,))
        before = cache[hook_name].clone()
        where = f"{model.cfg.n_layers}-layer model, layer {layer}, position {pos}"
        actual = T.call_student(student_fn, (model, corrupted_tokens.clone(), cache, layer, pos), forbidden, name)
        if not torch.equal(cache[hook_name], before):
            raise AssertionError(f"{name} changed the clean cache ({where}): clone the activation before writing into it; the cache is reused for every patch.")
        try:
            T.assert_tensor_close(actual, expected, name, atol=2e-3, rtol=1e-3, where=where)
        except AssertionError as err:
            n_pos = corrupted_tokens.shape[1]
            variants = {
                f"you patched positions {pos} onwards; patch position {pos} only.": (hook_name, (slice(pos, None),)),
                "you patched every position; patch only `pos`.": (hook_name, (slice(None),)),
            }
            if layer + 1 < model.cfg.n_layers:
                variants["that is the residual stream *after* the layer (resid_post = the next layer's resid_pre); patch blocks.{layer}.hook_resid_pre."] = (f"blocks.{layer + 1}.hook_resid_pre", (pos,))
            hint = ""
            for text, (other, index) in variants.items():
                if (index[0] != slice(pos, None) or pos < n_pos - 1) and T.tensors_match(actual, _patched_logits(model, corrupted_tokens, cache, other, index), atol=2e-3):
                    hint = text
                    break
            with T._no_grad():
                if not hint and T.tensors_match(actual, model(clean_tokens), atol=2e-3):
                    hint = "those are the clean run's logits; run the corrupted tokens with the clean activation patched in."
                elif not hint and T.tensors_match(actual, model(corrupted_tokens), atol=2e-3):
                    hint = "those are the unpatched corrupted logits: did the hook run (name `blocks.{layer}.hook_resid_pre`), and does it return the patched tensor?"
            raise _hint(err, hint) from None
    T.passed(name, len(cases), hidden)


# ----- exercises 4 and 5: sweeps ------------------------------------------------------------------
def _sweep_cases(hidden: bool):
    toy1, toy2 = T.private_toy("attn-only-1l"), T.private_toy("attn-only-2l")
    if not hidden:
        clean, corrupted = _toy_pair(5)
        return [(toy2, clean, corrupted)]
    clean2, corrupted2 = _toy_pair(15, batch=2, half=5)
    clean1, corrupted1 = _toy_pair(16, half=4)
    return [(toy2, clean2, corrupted2), (toy1, clean1, corrupted1)]


def _cumulative_sweep(model, tokens, cache, metric) -> torch.Tensor:
    """The sweep a loop gives when hooks pile up: entry (l, p) with every earlier location patched as well."""
    n_layers, n_pos = model.cfg.n_layers, tokens.shape[1]
    result = torch.zeros(n_layers, n_pos)
    for layer in range(n_layers):
        for pos in range(n_pos):
            hooks = []
            for earlier in range(layer + 1):
                name = f"blocks.{earlier}.hook_resid_pre"
                upto = n_pos if earlier < layer else pos + 1

                def hook(act, hook, name=name, upto=upto):
                    act = act.clone()
                    act[:, :upto] = cache[name][:, :upto]
                    return act

                hooks.append((name, hook))
            with T._no_grad():
                result[layer, pos] = float(metric(model.run_with_hooks(tokens, fwd_hooks=hooks)))
    return result


def _check_sweep(student_fn: Callable, name: str, kind: str, hidden: bool, hint_for: Callable) -> None:
    """Run a sweep exercise on the toy cases against the reference sweep of `kind`;
    `hint_for(actual, expected, model, corrupted, cache, metric)` names the mistake."""
    forbidden = T.reference_code_ids([_sweeps.sweep, _sweeps._sweep_hooks, _sweeps._sweep_llama])
    cases = _sweep_cases(hidden)
    for model, clean, corrupted in cases:
        with T._no_grad():
            _, cache = model.run_with_cache(clean)
        metric = _toy_metric(clean)
        expected = _sweeps.sweep(model, corrupted, cache, kind, metric, progress=False)
        where = f"{model.cfg.n_layers}-layer toy model, tokens of shape {tuple(corrupted.shape)}"
        actual = T.call_student(student_fn, (model, corrupted.clone(), cache, metric), forbidden, name)
        try:
            T.assert_tensor_close(actual, expected, name, atol=1e-4, rtol=1e-4, where=where)
        except AssertionError as err:
            raise _hint(err, hint_for(actual, expected, model, corrupted, cache, metric)) from None
    T.passed(name, len(cases), hidden)


def _residual_sweep_hint(actual, expected, model, corrupted, cache, metric) -> str:
    same_shape = T._is_tensor(actual) and tuple(actual.shape) == tuple(expected.shape)
    if T._is_tensor(actual) and tuple(actual.shape) == tuple(expected.T.shape):
        return "transposed: rows are layers, columns positions, [n_layers, pos]."
    if same_shape and model.cfg.n_layers > 1 and T.tensors_match(actual[:-1], expected[1:], atol=1e-4):
        return "row l holds the patch of layer l + 1's input: patch blocks.{l}.hook_resid_pre (the input of layer l), not resid_post."
    if T.tensors_match(actual, _cumulative_sweep(model, corrupted, cache, metric), atol=1e-4):
        return ("each entry has every earlier location patched too: the hooks of earlier patches are still attached. "
                "run_with_hooks removes its hooks after the run; model.add_hook does not.")
    return ""


def check_residual_sweep(student_fn: Callable, *, hidden: bool = False) -> None:
    """residual_sweep(model, corrupted_tokens, clean_cache, metric) -> [n_layers, pos]."""
    _check_sweep(student_fn, "residual_sweep", "resid_pre", hidden, _residual_sweep_hint)


def _z_variant(model, tokens, cache, layer: int, head: int, positions, hook_kind: str = "z") -> torch.Tensor:
    hook_name = f"blocks.{layer}.attn.hook_{hook_kind}"
    index = (positions, head) if hook_kind in ("z", "q") else (head, positions)
    return _patched_logits(model, tokens, cache, hook_name, index)


def _head_sweep_hint(actual, expected, model, corrupted, cache, metric) -> str:
    shape = (model.cfg.n_layers, model.cfg.n_heads)
    if T._is_tensor(actual) and tuple(actual.shape) == shape[::-1] and shape[0] != shape[1]:
        return "transposed: rows are layers, columns heads, [n_layers, n_heads]."

    def variant(positions, kind):
        return torch.tensor([[float(metric(_z_variant(model, corrupted, cache, l, h, positions, kind)))
                              for h in range(shape[1])] for l in range(shape[0])])

    if T.tensors_match(actual, variant(-1, "z"), atol=1e-4):
        return "you patched the last position only; patch the head's z at every position ([:, :, head])."
    if T.tensors_match(actual, variant(slice(None), "q"), atol=1e-4):
        return "you patched the head's queries (hook_q); its output is hook_z (z is what W_O maps into the stream)."
    if T.tensors_match(actual, variant(slice(None), "pattern"), atol=1e-4):
        return "you patched the attention pattern; the head's output is hook_z, which also carries the values."
    return ""


def check_head_sweep(student_fn: Callable, *, hidden: bool = False) -> None:
    """head_sweep(model, corrupted_tokens, clean_cache, metric) -> [n_layers, n_heads]."""
    _check_sweep(student_fn, "head_sweep", "head_out_all_pos", hidden, _head_sweep_hint)


# ----- exercise 6: both directions ----------------------------------------------------------------
def check_both_directions(student_fn: Callable, *, hidden: bool = False) -> None:
    """both_directions(model, clean_tokens, corrupted_tokens, metric) -> (denoising, noising), normalised."""
    name = "both_directions"
    cases = _sweep_cases(hidden)
    for model, clean, corrupted in cases:
        metric = _toy_metric(clean)
        with T._no_grad():
            clean_logits, clean_cache = model.run_with_cache(clean)
            corrupted_logits, corrupted_cache = model.run_with_cache(corrupted)
        high, low = float(metric(clean_logits)), float(metric(corrupted_logits))
        raw_denoising = _sweeps.sweep(model, corrupted, clean_cache, "resid_pre", metric, progress=False)
        raw_noising = _sweeps.sweep(model, clean, corrupted_cache, "resid_pre", metric, progress=False)
        denoising, noising = (raw_denoising - low) / (high - low), (raw_noising - low) / (high - low)
        where = f"{model.cfg.n_layers}-layer toy model, tokens of shape {tuple(clean.shape)}"
        actual = T.call_student(student_fn, (model, clean.clone(), corrupted.clone(), metric), set(), name)
        if not isinstance(actual, (tuple, list)) or len(actual) != 2:
            raise AssertionError(f"{name} should return a pair (denoising, noising), got {type(actual).__name__} ({where}).")
        student_denoising, student_noising = actual
        for label, got, want, other in (("denoising", student_denoising, denoising, noising), ("noising", student_noising, noising, denoising)):
            try:
                T.assert_tensor_close(got, want, f"{name} ({label})", atol=1e-4, rtol=1e-4, where=where)
            except AssertionError as err:
                raw = raw_denoising if label == "denoising" else raw_noising
                variants = {
                    "the two results are swapped: return (denoising, noising); denoising runs the corrupted tokens with the clean cache.": other,
                    "not normalised: map the corrupted run's metric to 0 and the clean run's to 1, in both directions.": raw,
                    "normalise both directions with the same baselines (0 = corrupted, 1 = clean); do not flip the noising scale.": 1 - want,
                }
                if label == "noising":
                    variants["noising patches the corrupted run's activations into the clean run; you patched clean into clean (everything reads 1)."] = torch.ones_like(want)
                hint = next((text for text, cand in variants.items() if T.tensors_match(got, cand, atol=1e-4)), "")
                raise _hint(err, hint) from None
    T.passed(name, len(cases), hidden)


# ----- exercise 7: attribution patching -----------------------------------------------------------
def _attribution_expected(model, clean, corrupted, metric, at_clean: bool = False):
    """(clean - corrupted) . dmetric/dresid_pre at the corrupted run (or at the clean one), [n_layers, pos]."""
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(model.cfg.n_layers)]
    with T._no_grad():
        _, clean_cache = model.run_with_cache(clean)
    value, acts, grads = _attribution.activations_and_gradients(model, clean if at_clean else corrupted, names, metric)
    if at_clean:
        with T._no_grad():
            _, corrupted_cache = model.run_with_cache(corrupted)
        return value, torch.stack([torch.einsum("bpd,bpd->p", acts[n] - corrupted_cache[n], grads[n]) for n in names]), None
    per_prompt = torch.stack([torch.einsum("bpd,bpd->bp", clean_cache[n] - acts[n], grads[n]) for n in names])
    return value, per_prompt.sum(1), per_prompt


def check_attribution_resid(student_fn: Callable, *, hidden: bool = False) -> None:
    """attribution_resid(model, clean_tokens, corrupted_tokens, metric) -> [n_layers, pos] estimated changes."""
    name = "attribution_resid"
    toy1, toy2 = T.private_toy("attn-only-1l"), T.private_toy("attn-only-2l")
    if not hidden:
        cases = [(toy2, *_toy_pair(7, batch=2))]
    else:
        cases = [(toy2, *_toy_pair(17, batch=3, half=7)), (toy1, *_toy_pair(18, half=5))]
    forbidden = T.reference_code_ids([_attribution.attribution_sweep, _attribution.activations_and_gradients])
    for model, clean, corrupted in cases:
        metric = _toy_metric(clean)
        value, expected, per_prompt = _attribution_expected(model, clean, corrupted, metric)
        where = f"{model.cfg.n_layers}-layer toy model, tokens of shape {tuple(clean.shape)}"
        actual = T.call_student(student_fn, (model, clean.clone(), corrupted.clone(), metric), forbidden, name)
        try:
            T.assert_tensor_close(actual, expected, name, atol=1e-4, rtol=1e-3, where=where)
        except AssertionError as err:
            variants = {
                "the sign is flipped: the change is (clean - corrupted) times the gradient.": -expected,
                "that is the estimated metric *value* (corrupted metric + change); return the change alone.": value + expected,
                "you averaged over the batch; a patch at (layer, pos) changes every prompt, so sum over the batch.": per_prompt.mean(1),
            }
            hint = next((text for text, cand in variants.items() if T.tensors_match(actual, cand, atol=1e-4, rtol=1e-3)), "")
            if not hint:
                _, at_clean, _ = _attribution_expected(model, clean, corrupted, metric, at_clean=True)
                if T.tensors_match(actual, at_clean, atol=1e-4, rtol=1e-3):
                    hint = "you took the gradient at the clean run; the Taylor expansion is around the run being patched, the corrupted one."
            raise _hint(err, hint) from None
    T.passed(name, len(cases), hidden)
