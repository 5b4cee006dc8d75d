"""Checkers for notebook 05_circuit_analysis: the IOI metric, classifying heads by their direct
effect and attention, path patching on the toy model, resample-ablating one head, the causal
scrubbing score, a scrubbing hypothesis, and one edge's attribution score.

Expected values come from private copies of the reference modules, or from patches the checker
makes itself, on the checker's own model instances, computed before the student's function runs.
Each checker also computes the answers a student plausibly writes by mistake and names the
mistake when the student's answer is one of them.
"""

from __future__ import annotations

from typing import Callable

import torch

from course_lib.checks import _trust as T

_metrics = T.private_module("patching.metrics")
_path = T.private_module("patching.path")
_eap = T.private_module("patching.eap")
_ioi = T.private_module("data.ioi")
_circuit = T.private_module("ioi_circuit")
_scrubbing = T.private_module("scrubbing")
_ablation = T.private_module("ablation")
_attribution = T.private_module("patching.attribution")


def _hint(err: AssertionError, hint: str) -> AssertionError:
    return AssertionError(str(err) + (f" Hint: {hint}" if hint else ""))


def _first_matching(value: float, expected: float, variants: dict[str, float], atol: float) -> str:
    """The text of the first variant the student's value equals (and the right answer does not)."""
    return next((text for text, v in variants.items()
                 if abs(value - float(v)) <= atol and abs(float(v) - expected) > atol), "")


# ----- exercise 1: ioi_metric --------------------------------------------------------------------
def _per_prompt_ld(logits, io_ids, s_ids, pos=-1):
    rows = torch.arange(logits.shape[0])
    return logits[rows, pos, io_ids] - logits[rows, pos, s_ids]


def check_ioi_metric(student_fn: Callable, *, hidden: bool = False) -> None:
    """ioi_metric(logits, io_ids, s_ids, clean_ld, abc_ld) -> 0-d tensor: 1 on clean prompts, 0 on ABC."""
    name = "ioi_metric"
    forbidden = T.reference_code_ids([_metrics.logit_diff, _metrics.normalised, _metrics.answer_logit])
    generator = torch.Generator().manual_seed(51 if hidden else 50)
    cases = []
    for batch, n_pos, vocab, clean_ld, abc_ld in ([(4, 5, 13, 3.5, 0.2), (3, 2, 13, 2.0, -0.5)] if not hidden
                                                  else [(5, 4, 17, 4.0, 0.5), (2, 3, 17, 1.0, -2.0)]):
        logits = torch.randn(batch, n_pos, vocab, generator=generator) * 2
        io = torch.randperm(vocab, generator=generator)[:batch]
        s = (io + 1 + torch.randint(0, vocab - 1, (batch,), generator=generator)) % vocab
        cases.append((logits, io, s, clean_ld, abc_ld))
    for logits, io, s, clean_ld, abc_ld in cases:
        ld = _per_prompt_ld(logits, io, s)
        expected = float((ld.mean() - abc_ld) / (clean_ld - abc_ld))
        where = f"logits {tuple(logits.shape)}, clean_ld {clean_ld}, abc_ld {abc_ld}"
        actual = T.call_student(student_fn, (logits.clone(), io.clone(), s.clone(), clean_ld, abc_ld), forbidden, name)
        if T._is_tensor(actual) and actual.ndim != 0:
            hint = " Average over the prompts first: the metric is one number." if actual.numel() == logits.shape[0] else ""
            raise AssertionError(f"{name} should return a 0-d tensor, got shape {tuple(actual.shape)} ({where}).{hint}")
        try:
            T.assert_float_close(actual, expected, name, atol=1e-5, rtol=1e-5, where=where)
        except AssertionError as err:
            last = logits[:, -1]
            variants = {
                "you returned the raw logit difference; normalise it: (ld - abc_ld) / (clean_ld - abc_ld).": ld.mean(),
                "clean and ABC are swapped: the ABC baseline must map to 0 and the clean one to 1.": (ld.mean() - clean_ld) / (abc_ld - clean_ld),
                "that is S - IO; the metric is logit(IO) - logit(S).": (-ld.mean() - abc_ld) / (clean_ld - abc_ld),
                "you read the first position; the prediction of the name is at the last one.":
                    (_per_prompt_ld(logits, io, s, pos=0).mean() - abc_ld) / (clean_ld - abc_ld),
                "you indexed every prompt with every name (logits[:, -1, io_ids] is [batch, batch]); pair prompt k with its own names.":
                    ((last[:, io] - last[:, s]).mean() - abc_ld) / (clean_ld - abc_ld),
                "subtract the ABC baseline from the value as well: (ld - abc_ld) / (clean_ld - abc_ld).": ld.mean() / (clean_ld - abc_ld),
                "you summed over the prompts; take the mean, so the metric does not depend on the batch size.":
                    (ld.sum() - abc_ld) / (clean_ld - abc_ld),
            }
            raise _hint(err, _first_matching(T.safe_float(actual), expected, variants, 1e-5)) from None
    T.passed(name, len(cases), hidden)


# ----- exercise 2: classify_direct_heads ---------------------------------------------------------
def _classify_cases(hidden: bool):
    generator = torch.Generator().manual_seed(53 if hidden else 52)
    cases = []
    for shape in ([(4, 3), (6, 5)] if not hidden else [(5, 4), (3, 6)]):
        effect = torch.randn(shape, generator=generator) * 0.4
        attn_io = torch.rand(shape, generator=generator) * 0.6
        attn_s = torch.rand(shape, generator=generator) * 0.6
        cases.append((effect, attn_io, attn_s, 0.1, 0.2))
    # Every class present, heads exactly at and just below each threshold (binary fractions, so
    # "at least" and "more than" give different answers), and a head that attends to both names
    # above min_attention but more to S.
    effect = torch.tensor([[-0.875, 0.5, -0.375, 0.25], [0.625, -0.125, 0.4375, -0.25], [-0.5, 0.75, -0.3125, 0.0]])
    attn_io = torch.tensor([[0.5, 0.375, 0.125, 0.0625], [0.0, 0.625, 0.25, 0.1875], [0.375, 0.25, 0.5, 0.0]])
    attn_s = torch.tensor([[0.125, 0.125, 0.625, 0.5], [0.0625, 0.125, 0.125, 0.125], [0.5, 0.0625, 0.5, 0.0]])
    cases.append((effect, attn_io, attn_s, 0.25, 0.25) if not hidden else (effect * 2, attn_io, attn_s, 0.75, 0.375))
    return cases


def check_classify_direct_heads(student_fn: Callable, *, hidden: bool = False) -> None:
    """classify_direct_heads(direct_effect, attn_io, attn_s, threshold, min_attention) -> {"L{l}H{h}": class}."""
    name = "classify_direct_heads"
    forbidden = T.reference_code_ids([_circuit.classify_direct_heads])
    cases = _classify_cases(hidden)
    for effect, attn_io, attn_s, threshold, min_attention in cases:
        expected = _circuit.classify_direct_heads(effect, attn_io, attn_s, threshold, min_attention)
        where = f"effects {tuple(effect.shape)}, threshold {threshold}, min_attention {min_attention}"
        actual = T.call_student(student_fn, (effect.clone(), attn_io.clone(), attn_s.clone(), threshold, min_attention), forbidden, name)
        if not isinstance(actual, dict):
            raise AssertionError(f"{name} should return a dict {{'L0H1': 'name mover', ...}}, got {type(actual).__name__} ({where}).")
        bad = [v for v in actual.values() if v not in _circuit.CLASSES]
        if bad:
            raise AssertionError(f"{name} returned the class {bad[0]!r}; classes are {list(_circuit.CLASSES)} ({where}).")
        missing = [h for h in expected if h not in actual]
        extra = [h for h in actual if h not in expected]
        if missing or extra:
            hint = ""
            below = [h for h in extra if abs(float(effect[int(h[1:h.index('H')]), int(h[h.index('H') + 1:])])) < threshold]
            if below:
                hint = f" Heads whose |direct effect| is below the threshold ({below[0]}) get no class."
            raise AssertionError(
                f"{name} classified the wrong heads ({where}): "
                + (f"missing {missing[:3]}" if missing else "")
                + (", " if missing and extra else "") + (f"not expected {extra[:3]}" if extra else "") + "." + hint
            )
        wrong = [h for h in expected if actual[h] != expected[h]]
        if wrong:
            h = wrong[0]
            layer, head = int(h[1:h.index("H")]), int(h[h.index("H") + 1:])
            e, io, s = float(effect[layer, head]), float(attn_io[layer, head]), float(attn_s[layer, head])
            hint = ""
            swapped = {"name mover": "negative name mover", "negative name mover": "name mover", "S suppressor": "S mover", "S mover": "S suppressor"}
            if swapped.get(expected[h]) == actual[h]:
                hint = (" The sign: the effect is what patching the head's path *away* does, so a negative effect "
                        "means the head was raising logit(IO) - logit(S).")
            else:  # the wrong name, or a name where there is none
                hint = f" A head attends to a name when its attention to it is at least min_attention ({min_attention}) and larger than to the other name."
            raise AssertionError(
                f"{name} called {h} {actual[h]!r}, expected {expected[h]!r} (effect {e:+.3f}, attention to IO {io:.2f}, to S {s:.2f}; {where}).{hint}"
            )
        if list(actual) != list(expected):
            raise AssertionError(f"{name} has the right classes but not in the right order: largest |effect| first ({where}).")
    T.passed(name, len(cases), hidden)


# ----- exercise 3: path_patch_toy ----------------------------------------------------------------
def _repeat_tokens(seed: int, batch: int, half: int = 10):
    generator = torch.Generator().manual_seed(seed)
    block = torch.stack([torch.randperm(63, generator=generator)[:half] + 1 for _ in range(batch)])
    return torch.cat([torch.zeros(batch, 1, dtype=torch.long), block, block], dim=1)


def _repeat_metric(clean: torch.Tensor, half: int = 10) -> Callable:
    """Mean log-probability of the next token on the second copy of the block."""
    targets = clean[:, half + 2:]
    return lambda logits: logits[:, half + 1:-1].log_softmax(-1).gather(-1, targets[..., None]).mean()


def _sender_delta(model, clean, corrupted, sender, sign=1.0):
    layer, head = sender
    with T._no_grad():
        _, c = model.run_with_cache(clean)
        _, k = model.run_with_cache(corrupted)
        dz = k[f"blocks.{layer}.attn.hook_z"][:, :, head] - c[f"blocks.{layer}.attn.hook_z"][:, :, head]
    return sign * dz @ model.W_O[layer, head], c


def _receivers_run(model, tokens, receivers, which, new_input):
    """Run `tokens` with the receivers' `which` replaced by new_input @ W_which (toy: no norm, no biases)."""
    weights = {"q": model.W_Q, "k": model.W_K, "v": model.W_V}[which]

    def hook(value, hook):
        for layer, head in receivers:
            if hook.name == f"blocks.{layer}.attn.hook_{which}":
                value[:, :, head] = new_input[layer] @ weights[layer, head]
        return value

    names = sorted({f"blocks.{layer}.attn.hook_{which}" for layer, _ in receivers})
    with T._no_grad():
        return model.run_with_hooks(tokens, fwd_hooks=[(n, hook) for n in names])


def check_path_patch_toy(student_fn: Callable, *, hidden: bool = False) -> None:
    """path_patch_toy(model, clean, corrupted, sender, receivers, receiver_input, metric) -> float."""
    name = "path_patch_toy"
    toy2 = T.private_toy("attn-only-2l")
    forbidden = T.reference_code_ids([_path.path_patch, _path.path_patch_heads_to_logits, _path._frozen_run_hooks])
    clean, corrupted = _repeat_tokens(61 if hidden else 60, 4), _repeat_tokens(71 if hidden else 70, 4)
    metric = _repeat_metric(clean)
    all_layer1 = [(1, h) for h in range(4)]
    cases = [((0, 1), all_layer1, "k"), ((0, 1), [(1, 2)], "q"), ((0, 0), [(1, 0), (1, 3)], "v")]
    if hidden:
        cases = [((0, 1), [(1, 1)], "k"), ((0, 3), all_layer1, "q"), ((0, 2), [(1, 2)], "k")]
    for sender, receivers, which in cases:
        expected = _path.path_patch(toy2, clean, corrupted, [sender], metric, receivers, which)
        where = f"sender L{sender[0]}H{sender[1]}, receivers {['L%dH%d' % r for r in receivers]}, input {which!r}"
        actual = T.call_student(student_fn, (toy2, clean.clone(), corrupted.clone(), sender, list(receivers), which, metric), forbidden, name)
        try:
            T.assert_float_close(actual, expected, name, atol=2e-3, rtol=1e-3, where=where)
        except AssertionError as err:
            value = T.safe_float(actual)
            delta, clean_cache = _sender_delta(toy2, clean, corrupted, sender)
            resid = {1: clean_cache["blocks.1.hook_resid_pre"]}
            with T._no_grad():
                variants = {
                    "the change is corrupted minus clean (the sender's corrupted output replaces its clean one), not the reverse.":
                        float(metric(_receivers_run(toy2, clean, receivers, which, {1: resid[1] - delta}))),
                    "that is activation patching of the sender (its effect through every path); path patching changes only the receivers' "
                    f"{which!r} input.":
                        float(metric(toy2.run_with_hooks(clean, fwd_hooks=[(f"blocks.{sender[0]}.attn.hook_z", _z_from(toy2, corrupted, sender))]))),
                    "those are the clean run's logits: the receivers' input did not change (did the hook run and return the tensor?).":
                        float(metric(toy2(clean))),
                    f"you patched the sender into every layer-1 head's {which!r}, not only the receivers'.":
                        float(metric(_receivers_run(toy2, clean, all_layer1, which, {1: resid[1] + delta}))),
                }
            raise _hint(err, _first_matching(value, expected, variants, 2e-3)) from None
    T.passed(name, len(cases), hidden)


def _z_from(model, tokens, head_id):
    layer, head = head_id
    with T._no_grad():
        _, cache = model.run_with_cache(tokens)
    z = cache[f"blocks.{layer}.attn.hook_z"]

    def hook(value, hook):
        value[:, :, head] = z[:, :, head]
        return value
    return hook


# ----- exercise 4: resample_ablate_head -----------------------------------------------------------
def _ioi_case(model, n: int, seed: int):
    dataset = _ioi.ioi_dataset(model, n, seed=seed)
    abc = _ioi.corrupt(model, dataset, "abc", seed=seed + 1)
    metric = lambda logits: _metrics.logit_diff(logits, dataset.io_ids, dataset.s_ids)
    return dataset.tokens, abc.tokens, metric


def check_resample_ablate_head(student_fn: Callable, *, hidden: bool = False) -> None:
    """resample_ablate_head(model, tokens, resample_tokens, layer, head, metric) -> float."""
    name = "resample_ablate_head"
    smol = T.private_pretrained()
    toy2 = T.private_toy("attn-only-2l")
    forbidden = T.reference_code_ids([_ablation.head_ablation_hooks, _ablation.ablated_logits])
    tokens, abc, metric = _ioi_case(smol, 4, seed=31 if hidden else 30)
    toy_clean, toy_other = _repeat_tokens(81 if hidden else 80, 3), _repeat_tokens(91 if hidden else 90, 3)
    toy_metric = _repeat_metric(toy_clean)
    cases = [(smol, tokens, abc, metric, 23, 0), (toy2, toy_clean, toy_other, toy_metric, 0, 1)]
    if hidden:
        cases = [(smol, tokens, abc, metric, 20, 0), (smol, tokens, abc, metric, 23, 3), (toy2, toy_clean, toy_other, toy_metric, 1, 2)]
    for model, x, other, m, layer, head in cases:
        with T._no_grad():
            expected = float(m(_ablation.ablated_logits(model, x, [(layer, head)], "resample", other)))
        where = f"{model.cfg.n_layers}-layer model, head L{layer}H{head}"
        actual = T.call_student(student_fn, (model, x.clone(), other.clone(), layer, head, m), forbidden, name)
        try:
            T.assert_float_close(actual, expected, name, atol=2e-3, rtol=1e-3, where=where)
        except AssertionError as err:
            with T._no_grad():
                variants = {
                    "that is mean-ablation (the head's mean over the resample batch); resample-ablation gives prompt i the head's value on resample prompt i.":
                        float(m(_ablation.ablated_logits(model, x, [(layer, head)], "mean", other))),
                    "that is zero-ablation; take the head's z from the run on the resample tokens.":
                        float(m(_ablation.ablated_logits(model, x, [(layer, head)], "zero"))),
                    f"you resampled every head of layer {layer}; replace only head {head}'s slice of hook_z.":
                        float(m(_ablation.ablated_logits(model, x, [(layer, h) for h in range(model.cfg.n_heads)], "resample", other))),
                    "that is the unablated metric: did the hook run on blocks.{layer}.attn.hook_z and return the tensor?":
                        float(m(model(x))),
                }
            raise _hint(err, _first_matching(T.safe_float(actual), expected, variants, 2e-3)) from None
    T.passed(name, len(cases), hidden)


# ----- exercise 5: loss_recovered ------------------------------------------------------------------
def check_loss_recovered(student_fn: Callable, *, hidden: bool = False) -> None:
    """loss_recovered(loss_model, loss_scrubbed, loss_scrambled) -> float; ValueError when undefined."""
    name = "loss_recovered"
    forbidden = T.reference_code_ids([_scrubbing.loss_recovered])
    cases = [(0.2, 1.1, 4.7), (1.0, 1.0, 3.0), (0.5, 5.0, 3.0)] if not hidden else [(0.15, 0.13, 4.73), (2.0, 2.5, 2.2), (0.3, 3.3, 3.3)]
    for model, scrubbed, scrambled in cases:
        expected = (scrambled - scrubbed) / (scrambled - model)
        where = f"loss_model {model}, loss_scrubbed {scrubbed}, loss_scrambled {scrambled}"
        actual = T.call_student(student_fn, (model, scrubbed, scrambled), forbidden, name)
        try:
            T.assert_float_close(actual, expected, name, atol=1e-6, rtol=1e-6, where=where)
        except AssertionError as err:
            variants = {
                "that is the share of the loss *lost*; loss recovered is (scrambled - scrubbed) / (scrambled - model).":
                    (scrubbed - model) / (scrambled - model),
                "that is a ratio of losses; measure on the scale from scrambled (0) to the model (1).": model / scrubbed,
                "the denominator is the gap between the scrambled and the model loss: (scrambled - model).":
                    (scrambled - scrubbed) / scrambled,
            }
            raise _hint(err, _first_matching(T.safe_float(actual), expected, variants, 1e-6)) from None
    for equal in ((1.0, 2.0, 1.0),) if not hidden else ((0.4, 0.1, 0.4),):
        T.call_student(student_fn, equal, forbidden, name, expect_error=ValueError)
    T.passed(name, len(cases) + 1, hidden)


# ----- exercise 6: a refined hypothesis ---------------------------------------------------------------
TARGET_RECOVERED = 0.95


def check_refined_hypothesis(student_fn: Callable, *, hidden: bool = False) -> None:
    """refined_hypothesis() -> a hypothesis about every layer-1 head, single-token claims only, recovering >= 95%."""
    name = "refined_hypothesis"
    toy2 = T.private_toy("attn-only-2l")
    hypothesis = T.call_student(student_fn, (), set(), name)
    if not isinstance(hypothesis, dict):
        raise AssertionError(f"{name} should return a dict {{'L1H0': {{'q': {{...}}, 'k': {{...}}, 'v': {{...}}}}, ...}}, got {type(hypothesis).__name__}.")
    heads = [f"L1H{h}" for h in range(toy2.cfg.n_heads)]
    if sorted(hypothesis) != heads:
        raise AssertionError(f"{name} must make a claim about every layer-1 head {heads}, got {sorted(map(str, hypothesis))}: a head left out runs on the true input, which claims everything about it.")
    terms = _scrubbing.term_names(toy2)
    for head, inputs in hypothesis.items():
        if not isinstance(inputs, dict) or not set(inputs) <= {"q", "k", "v"}:
            raise AssertionError(f"{name}: {head} should map 'q', 'k' and 'v' to dicts of claims, got {inputs!r}.")
        for which, rules in inputs.items():
            if not isinstance(rules, dict):
                raise AssertionError(f"{name}: {head}[{which!r}] should be a dict {{term: (offset,)}}, got {rules!r}.")
            for term, rule in rules.items():
                if term not in terms:
                    raise AssertionError(f"{name}: {head}[{which!r}] names the term {term!r}; terms are {terms}.")
                if not (isinstance(rule, tuple) and len(rule) == 1 and isinstance(rule[0], int) and not isinstance(rule[0], bool)):
                    raise AssertionError(
                        f"{name}: {head}[{which!r}][{term!r}] is {rule!r}; every claim here must name exactly one token, "
                        "as a one-offset tuple like (-1,). (None or several offsets claim more than one token.)"
                    )
    result = _scrubbing.scrub(toy2, hypothesis, n=100, seed=7 if hidden else 0)
    if result.loss_recovered < TARGET_RECOVERED:
        raise AssertionError(
            f"{name} recovers {result.loss_recovered:.0%} of the loss (scrubbed {result.scrubbed:.3f}, model {result.model:.3f}, "
            f"scrambled {result.scrambled:.3f}); it needs {TARGET_RECOVERED:.0%}. Which tokens do the query and the key "
            "need to single out the right earlier position when a token occurs twice in the block?"
        )
    print(f"Your hypothesis recovers {result.loss_recovered:.1%} of the loss.")
    T.passed(name, 1, hidden)


# ----- exercise 7: edge_score -------------------------------------------------------------------------
def check_edge_score(student_fn: Callable, *, hidden: bool = False) -> None:
    """edge_score(model, clean, corrupted, metric, sender, receiver, receiver_input) -> float (EAP)."""
    name = "edge_score"
    toy2 = T.private_toy("attn-only-2l")
    forbidden = T.reference_code_ids([_eap.edge_attribution_scores, _attribution.activations_and_gradients])
    clean, corrupted = _repeat_tokens(101 if hidden else 100, 4), _repeat_tokens(111 if hidden else 110, 4)
    metric = _repeat_metric(clean)
    with torch.enable_grad():
        scores = _eap.edge_attribution_scores(toy2, clean, corrupted, metric)
        swapped = _eap.edge_attribution_scores(toy2, corrupted, clean, metric)
    cases = [((0, 1), (1, 0), "k"), ((0, 1), (1, 2), "q"), ((0, 2), (1, 1), "v")]
    if hidden:
        cases = [((0, 1), (1, 3), "k"), ((0, 3), (1, 0), "v"), ((0, 0), (1, 2), "q")]
    for sender, receiver, which in cases:
        key = (f"L{sender[0]}H{sender[1]}", f"L{receiver[0]}H{receiver[1]}.{which}")
        expected = scores[key]
        where = f"edge {key[0]} -> {key[1]}"
        actual = T.call_student(student_fn, (toy2, clean.clone(), corrupted.clone(), metric, sender, receiver, which), forbidden, name)
        try:
            T.assert_float_close(actual, expected, name, atol=1e-4, rtol=2e-3, where=where)
        except AssertionError as err:
            n_terms = clean.shape[0] * clean.shape[1]
            variants = {
                "the sign: the difference is corrupted minus clean (the change the patch makes).": -expected,
                "sum over batch and positions; a mean divides by the number of prompts x positions.": expected / n_terms,
                "the gradient is taken on the clean run (EAP estimates patching corrupted values into the clean run).":
                    -swapped[key],
            }
            if which in ("q", "k"):
                variants["that is the edge into the value; the receiver's input is its query or key as asked."] = scores[(key[0], key[1][:-1] + "v")]
            raise _hint(err, _first_matching(T.safe_float(actual), expected, variants, 1e-4 + 2e-3 * abs(expected))) from None
    T.passed(name, len(cases), hidden)


__all__ = [
    "check_ioi_metric", "check_classify_direct_heads", "check_path_patch_toy", "check_resample_ablate_head",
    "check_loss_recovered", "check_refined_hypothesis", "check_edge_score",
]
