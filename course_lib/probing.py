"""Probing classifiers: what can a linear read-out recover from each layer's residual stream?

For each labelled example the residual stream at its last token is collected at every layer
(one batched forward pass per chunk, right-padded: a causal model's real tokens never see the
padding). Three questions, three tools:

* How well does each layer alone encode the property? An independent logistic-regression probe
  per layer (`probe_every_layer`).
* Where along the depth is the property *gained*? Tenney et al. (2019, "BERT Rediscovers the
  Classical NLP Pipeline") train **cumulative** probes: probe l reads a learned scalar mix of
  layers 0..l, so its score can only grow with l (it may ignore new layers). The differential
  score Delta_l = s_l - s_{l-1} says what layer l adds, and the **expected layer**
  E[l] = sum_l l Delta_l / sum_l Delta_l summarises where (`cumulative_probe_scores`,
  `expected_layer`).
* Which layers does one probe over all layers *use*? The **centre of gravity** is the mean layer
  under the learned scalar-mix weights s_l of the probe on layers 0..L: sum_l l s_l
  (`center_of_gravity`).
* Did the probe find the property or memorise words? Hewitt & Liang (2019)'s control task gives
  each word type a random label; selectivity = task accuracy - control accuracy (`selectivity`).

Our probes are logistic regressions on per-layer standardised features (Tenney's are small MLPs
on span representations of BERT); the scalar mix is Tenney's softmax-weighted sum of layers.
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


# ----------------------------------------------------------------- one probe per layer


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
    """Held-out accuracy of an independent probe at every layer: [n_layers + 1]."""
    labels = np.asarray(labels)
    return np.array([probe_accuracy(layer.numpy(), labels, train, test) for layer in residuals])


# ----------------------------------------------------------------- Tenney et al.: scalar mixes


def scalar_mix_probes(
    residuals: Float[Tensor, "layer n d_model"],
    labels,
    train: np.ndarray,
    test: np.ndarray,
    layer_masks: Tensor,
    *,
    C: float = 0.1,
    max_iter: int = 100,
) -> tuple[np.ndarray, Float[Tensor, "probe layer"]]:
    """Train one logistic-regression probe per row of `layer_masks` [n_probes, n_layers + 1], each
    on a learned softmax-weighted mix of the layers its row allows (Tenney's scalar mix), all at
    once. Each layer is standardised with training statistics, and so is each mix (standing in for
    Tenney's scale gamma): otherwise the L2 penalty, which matches scikit-learn's C, would favour
    mixes of fewer layers, whose sums are larger. Returns (held-out accuracy per probe, mixing
    weights [n_probes, n_layers + 1])."""
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.float32)
    if set(labels_t.unique().tolist()) - {0.0, 1.0}:
        raise ValueError("scalar_mix_probes takes binary labels 0/1.")
    train_t, test_t = torch.as_tensor(train), torch.as_tensor(test)
    x = residuals.float()
    x = (x - x[:, train_t].mean(dim=1, keepdim=True)) / (x[:, train_t].std(dim=1, keepdim=True) + 1e-6)
    allowed = layer_masks.bool()
    n_probes, d_model = allowed.shape[0], x.shape[-1]
    mix_logits = torch.zeros(n_probes, x.shape[0], requires_grad=True)
    weight = torch.zeros(n_probes, d_model, requires_grad=True)
    bias = torch.zeros(n_probes, requires_grad=True)
    penalty = 1.0 / (2 * C * len(train))  # scikit-learn: C * sum(log loss) + ||w||^2 / 2

    def mix_weights() -> Tensor:
        return mix_logits.masked_fill(~allowed, float("-inf")).softmax(dim=-1)

    # Each layer is centred on the training examples, so every mix is too; its variance in
    # dimension d is s^T Cov_d s, with Cov_d the covariance of dimension d across layers.
    covariance = torch.einsum("lnd,knd->dlk", x[:, train_t], x[:, train_t]) / (len(train) - 1)

    def logits(index: Tensor) -> Tensor:
        s = mix_weights()
        std = torch.einsum("pl,dlk,pk->pd", s, covariance, s).clamp_min(1e-12).sqrt()  # of each mix
        per_layer = torch.einsum("lnd,pd->pln", x[:, index], weight / std)
        return torch.einsum("pl,pln->pn", s, per_layer) + bias[:, None]

    optimizer = torch.optim.LBFGS([mix_logits, weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe")
    target = labels_t[train_t].expand(n_probes, -1)

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits(train_t), target)
        loss = loss * n_probes + penalty * (weight**2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        predicted = logits(test_t) > 0
        accuracy = (predicted == labels_t[test_t].bool()).float().mean(dim=1)
        return accuracy.numpy(), mix_weights().detach()


def cumulative_probe_scores(
    residuals: Float[Tensor, "layer n d_model"], labels, train: np.ndarray, test: np.ndarray, **kwargs
) -> tuple[np.ndarray, Float[Tensor, "probe layer"]]:
    """Tenney's cumulative probes: probe l mixes layers 0..l. Returns (held-out accuracy per l,
    mixing weights [n_layers + 1, n_layers + 1]; the last row is the probe over all layers)."""
    n = residuals.shape[0]
    return scalar_mix_probes(residuals, labels, train, test, torch.ones(n, n).tril(), **kwargs)


def expected_layer(cumulative_scores) -> float:
    """Tenney et al.'s expected layer, sum_l l * Delta_l / sum_l Delta_l over l = 1..L, with
    Delta_l = s_l - s_{l-1} on cumulative scores s_0..s_L.

    A cumulative probe can always ignore its new layer, so in expectation Delta_l >= 0; on small
    data a score can still dip by noise. We take the running maximum first (our choice, to keep
    every Delta_l >= 0), which keeps the result in [1, L]. NaN when no layer adds anything."""
    best = np.maximum.accumulate(np.asarray(cumulative_scores, dtype=float))
    deltas = np.diff(best)  # Delta_1 .. Delta_L
    if deltas.sum() <= 0:
        return float("nan")
    return float((np.arange(1, len(best)) * deltas).sum() / deltas.sum())


def center_of_gravity(mix_weights: Float[Tensor, "layer"]) -> float:
    """Tenney et al.'s centre of gravity: the mean layer sum_l l * s_l under scalar-mix weights s."""
    weights = torch.as_tensor(mix_weights, dtype=torch.float64)
    return float((torch.arange(len(weights), dtype=torch.float64) * weights).sum() / weights.sum())


# ----------------------------------------------------------------- Hewitt & Liang: control tasks


def control_labels(word_types: list[str], seed: int = 0) -> np.ndarray:
    """Hewitt & Liang's control task: each word type gets one random label (0/1), kept wherever it
    occurs. Labels are drawn with numpy's default_rng(seed).integers(0, 2, size=n_types) for the
    types in sorted order."""
    types = sorted(set(word_types))
    drawn = np.random.default_rng(seed).integers(0, 2, size=len(types))
    label_of = dict(zip(types, drawn.tolist()))
    return np.array([label_of[w] for w in word_types])


def selectivity(
    features: np.ndarray, labels, word_types: list[str], train: np.ndarray, test: np.ndarray, seed: int = 0
) -> dict[str, float]:
    """Task accuracy, control-task accuracy and their difference (selectivity) for the same probe
    on the same split."""
    task = probe_accuracy(features, np.asarray(labels), train, test)
    control = probe_accuracy(features, control_labels(word_types, seed), train, test)
    return {"task": task, "control": control, "selectivity": task - control}
