"""Patching metrics: functions of the logits that say how much of a behaviour a run shows.

Every metric reads the logits at the last position (`logits[:, -1]`, the next-token prediction),
averages over the batch of prompts and returns a 0-d tensor, which is what TransformerLens's
patching functions expect. Build one with `logit_diff_metric(correct_id, incorrect_id)` etc.; the
answer ids may be one id for the whole batch or one per prompt.

Properties (the lecture's table; notebook 04 demonstrates each on SmolLM2):
* logit difference: continuous, linear in the residual stream, blind to how likely names are in
  general (both logits move together), but a broken model gives 0, which reads as "destroyed";
* logit: continuous and linear, but also moves with everything that shifts all logits;
* log-probability: continuous, but flat near p = 1 (saturates) and moved by every other token;
* probability: saturates at both ends and is not linear in anything the model computes;
* accuracy and rank: discrete, so a patch that moves the answer a long way can read as no change.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

Metric = Callable[[Float[Tensor, "batch pos d_vocab"]], Float[Tensor, ""]]


def _ids(ids: int | Sequence[int] | Tensor, batch: int, device) -> Tensor:
    """Answer ids as a [batch] long tensor: one id broadcast, or one per prompt."""
    ids = torch.as_tensor(ids, dtype=torch.long, device=device)
    if ids.ndim == 0:
        return ids.expand(batch)
    if ids.shape != (batch,):
        raise ValueError(f"expected one answer id or one per prompt ({batch}), got shape {tuple(ids.shape)}.")
    return ids


def _last(logits: Tensor) -> Float[Tensor, "batch d_vocab"]:
    if logits.ndim != 3:
        raise ValueError(f"a metric takes logits of shape [batch, pos, d_vocab], got {tuple(logits.shape)}.")
    return logits[:, -1]


def answer_logit(logits: Float[Tensor, "batch pos d_vocab"], ids) -> Float[Tensor, "batch"]:
    """The logit of each prompt's answer at the last position."""
    last = _last(logits)
    return last.gather(-1, _ids(ids, last.shape[0], last.device)[:, None])[:, 0]


def logit_diff(logits, correct_ids, incorrect_ids) -> Float[Tensor, ""]:
    """Mean over prompts of logit(correct) - logit(incorrect) at the last position."""
    return (answer_logit(logits, correct_ids) - answer_logit(logits, incorrect_ids)).mean()


def answer_log_prob_per_prompt(logits, ids) -> Float[Tensor, "batch"]:
    """log p(answer) at the last position, one value per prompt."""
    last = _last(logits).log_softmax(dim=-1)
    return last.gather(-1, _ids(ids, last.shape[0], last.device)[:, None])[:, 0]


def answer_log_prob(logits, ids) -> Float[Tensor, ""]:
    """Mean over prompts of log p(answer) at the last position."""
    return answer_log_prob_per_prompt(logits, ids).mean()


def answer_prob(logits, ids) -> Float[Tensor, ""]:
    """Mean over prompts of p(answer) at the last position."""
    return answer_log_prob_per_prompt(logits, ids).exp().mean()


def answer_rank(logits, ids) -> Float[Tensor, ""]:
    """Mean over prompts of the answer's rank at the last position (0 = the top token)."""
    last = _last(logits)
    answer = answer_logit(logits, ids)
    return (last > answer[:, None]).sum(dim=-1).float().mean()


def accuracy(logits, ids) -> Float[Tensor, ""]:
    """Share of prompts whose top next token is the answer (ties count as correct)."""
    last = _last(logits)
    return (answer_logit(logits, ids) >= last.max(dim=-1).values).float().mean()


def normalised(value: Tensor | float, corrupted: float, clean: float) -> Tensor | float:
    """(value - corrupted) / (clean - corrupted): 0 = the corrupted baseline, 1 = the clean one."""
    if abs(float(clean) - float(corrupted)) < 1e-9:
        raise ValueError(
            f"the clean ({float(clean):.4g}) and corrupted ({float(corrupted):.4g}) baselines are "
            "equal, so a normalised metric is undefined: pick a pair that the metric tells apart."
        )
    return (value - corrupted) / (clean - corrupted)


def _named(fn: Callable, name: str) -> Metric:
    fn.__name__ = fn.__qualname__ = name
    return fn


def logit_diff_metric(correct_ids, incorrect_ids) -> Metric:
    """metric(logits) = mean logit(correct) - logit(incorrect) at the last position."""
    return _named(lambda logits: logit_diff(logits, correct_ids, incorrect_ids), "logit_diff")


def logit_metric(ids) -> Metric:
    """metric(logits) = mean logit of the answer at the last position."""
    return _named(lambda logits: answer_logit(logits, ids).mean(), "logit")


def log_prob_metric(ids) -> Metric:
    """metric(logits) = mean log-probability of the answer at the last position."""
    return _named(lambda logits: answer_log_prob(logits, ids), "log_prob")


def prob_metric(ids) -> Metric:
    """metric(logits) = mean probability of the answer at the last position."""
    return _named(lambda logits: answer_prob(logits, ids), "prob")


def rank_metric(ids) -> Metric:
    """metric(logits) = mean rank of the answer at the last position (0 = top)."""
    return _named(lambda logits: answer_rank(logits, ids), "rank")


def accuracy_metric(ids) -> Metric:
    """metric(logits) = share of prompts whose top token is the answer."""
    return _named(lambda logits: accuracy(logits, ids), "accuracy")


def normalised_metric(metric: Metric, corrupted: float, clean: float) -> Metric:
    """`metric` rescaled so the corrupted run scores 0 and the clean run 1."""
    corrupted, clean = float(corrupted), float(clean)
    normalised(0.0, corrupted, clean)  # refuse equal baselines now, not on the first patch
    return _named(lambda logits: normalised(metric(logits), corrupted, clean), f"normalised_{getattr(metric, '__name__', 'metric')}")
