"""What-if (counterfactual) exploration: edit a prompt, watch the next-token distribution move.

Each variant of a prompt is run once; the report gives, per variant, the probability of chosen
target tokens, the logit difference between the first two targets, the change from the original
prompt, and the top-k next tokens.
"""

from __future__ import annotations

import pandas as pd
import torch

from course_lib.tokens import PREPEND_BOS, next_token_probs, single_token_id


def replace_words(prompt: str, edits: dict[str, tuple[str, str]]) -> dict[str, str]:
    """Variants of `prompt`: {label: prompt with `old` replaced by `new`}, the original first."""
    variants = {"original": prompt}
    for label, (old, new) in edits.items():
        if old not in prompt:
            raise ValueError(f"edit {label!r}: {old!r} does not occur in the prompt {prompt!r}.")
        variants[label] = prompt.replace(old, new)
    return variants


def next_token_report(
    model, variants: dict[str, str], targets: list[str], *, prepend_bos: bool = PREPEND_BOS, k: int = 3
) -> pd.DataFrame:
    """One row per variant: p(target) for each target, logit difference of the first two targets,
    its change from the first variant, and the top-k next tokens."""
    if not variants:
        raise ValueError("variants is empty: pass at least the original prompt.")
    target_ids = [single_token_id(model, t) for t in targets]
    rows = []
    for label, prompt in variants.items():
        tokens = model.to_tokens(prompt, prepend_bos=prepend_bos)
        with torch.no_grad():
            logits = model(tokens)[0, -1]
        probs = logits.softmax(dim=-1)
        row = {"variant": label, "prompt": prompt}
        for text, i in zip(targets, target_ids):
            row[f"p({text!r})"] = float(probs[i])
        if len(target_ids) >= 2:
            row[f"logit diff {targets[0]!r}-{targets[1]!r}"] = float(logits[target_ids[0]] - logits[target_ids[1]])
        top = probs.topk(k)
        row["top tokens"] = ", ".join(f"{model.to_single_str_token(int(i))!r} {float(p):.2f}" for p, i in zip(top.values, top.indices))
        rows.append(row)
    report = pd.DataFrame(rows).set_index("variant")
    if len(target_ids) >= 2:
        column = f"logit diff {targets[0]!r}-{targets[1]!r}"
        report["change"] = report[column] - report[column].iloc[0]
    return report


def answer_stability(model, variants: dict[str, str], *, prepend_bos: bool = PREPEND_BOS) -> pd.DataFrame:
    """Does the top-1 answer survive the edits? Top-1 token and its probability per variant, and
    the probability each variant gives to the original's top-1 token."""
    original = next(iter(variants.values()))
    original_top = int(next_token_probs(model, original, prepend_bos=prepend_bos).argmax())
    rows = []
    for label, prompt in variants.items():
        probs = next_token_probs(model, prompt, prepend_bos=prepend_bos)
        top = int(probs.argmax())
        rows.append({
            "variant": label,
            "prompt": prompt,
            "top-1": model.to_single_str_token(top),
            "p(top-1)": float(probs[top]),
            "p(original answer)": float(probs[original_top]),
            "same answer": top == original_top,
        })
    return pd.DataFrame(rows).set_index("variant")
