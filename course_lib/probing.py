"""Probing classifiers: what can a linear read-out recover from each layer's residual stream?

For each labelled example the residual stream at its last token is collected at every layer
(one batched forward pass per chunk, right-padded: a causal model's real tokens never see the
padding). A logistic-regression probe per layer is trained on one split and scored on another.
Tenney et al. (2019)'s centre of gravity summarises where along the depth a task is solved, and
a control task (Hewitt & Liang 2019) asks whether the probe found the property or memorised.
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from course_lib.tokens import PREPEND_BOS


def last_token_residuals(
    model, texts: list[str], *, prepend_bos: bool = PREPEND_BOS, batch_size: int = 64
) -> Float[Tensor, "layer_plus_1 n d_model"]:
    """Residual stream at each text's last token, before block 0 and after every block."""
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.hook_resid_post" for l in range(model.cfg.n_layers)]
    lengths = [model.to_tokens(t, prepend_bos=prepend_bos).shape[1] for t in texts]
    chunks = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            tokens = model.to_tokens(batch, prepend_bos=prepend_bos, padding_side="right")
            _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
            last = torch.tensor(lengths[start : start + batch_size]) - 1
            rows = torch.arange(len(batch))
            chunks.append(torch.stack([cache[n][rows, last] for n in names]))
    return torch.cat(chunks, dim=1)


def split_indices(n: int, test_fraction: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of range(n) into train and test indices."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(n * test_fraction)))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def split_by_type(word_types: list[str], test_fraction: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split so that no word type (compared case-insensitively) is in both train and test: the
    probe must generalise to unseen words instead of recognising memorised ones."""
    groups = [w.lower() for w in word_types]
    unique = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(unique))
    test_groups = {unique[i] for i in order[: max(1, int(round(len(unique) * test_fraction)))]}
    is_test = np.array([g in test_groups for g in groups])
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def probe_accuracy(features: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray) -> float:
    """Held-out accuracy of a logistic-regression probe (standardised features, L2, lbfgs)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
    probe.fit(features[train], labels[train])
    return float(probe.score(features[test], labels[test]))


def probe_every_layer(
    residuals: Float[Tensor, "layer n d_model"], labels, train: np.ndarray, test: np.ndarray
) -> np.ndarray:
    """Held-out probe accuracy at every layer: [n_layers + 1]."""
    labels = np.asarray(labels)
    return np.array([probe_accuracy(layer.numpy(), labels, train, test) for layer in residuals])


def center_of_gravity(scores) -> float:
    """Tenney et al.'s expected layer: sum_l l * delta_l / sum_l delta_l, where delta_l is the gain
    of the best score up to layer l over the best up to l - 1 (so deltas are never negative)."""
    best_so_far = np.maximum.accumulate(np.asarray(scores, dtype=float))
    deltas = np.diff(best_so_far)  # delta for layers 1..L
    if deltas.sum() <= 0:
        return 0.0
    return float((np.arange(1, len(best_so_far)) * deltas).sum() / deltas.sum())


def control_labels(word_types: list[str], seed: int = 0, n_classes: int = 2) -> np.ndarray:
    """Hewitt & Liang's control task: each word type gets one random label, kept wherever it occurs."""
    rng = np.random.default_rng(seed)
    assignment = {w: int(rng.integers(n_classes)) for w in sorted(set(word_types))}
    return np.array([assignment[w] for w in word_types])
