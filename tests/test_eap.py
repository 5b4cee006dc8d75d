"""Edge attribution patching on the toy 2-layer model, against path patching edge by edge."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from course_lib import heads
from course_lib.patching import eap, path

HALF = 20


@pytest.fixture(scope="module")
def runs(toy2):
    clean = heads.repeated_random_tokens(16, HALF, toy2.cfg.d_vocab, 0, seed=3)
    corrupted = heads.repeated_random_tokens(16, HALF, toy2.cfg.d_vocab, 0, seed=4)
    ids = clean[:, 3]
    targets = clean[:, HALF + 2 :]

    def linear(logits):
        """A metric linear in the logits (one logit at the last position)."""
        return logits[:, -1].gather(-1, ids[:, None]).mean()

    def repeat_log_prob(logits):
        """Mean log-probability of the right token on the second copy (not linear: log-softmax)."""
        return logits[:, HALF + 1 : -1].log_softmax(-1).gather(-1, targets[..., None]).mean()

    return clean, corrupted, linear, repeat_log_prob


def _path_effect(toy2, clean, corrupted, metric, sender, receiver=None, kind="q"):
    with torch.no_grad():
        base = float(metric(toy2(clean)))
    return path.path_patch(toy2, clean, corrupted, [sender], metric, None if receiver is None else [receiver], kind) - base


def test_every_edge_is_scored_once(toy2, runs):
    scores = eap.edge_attribution_scores(toy2, runs[0], runs[1], runs[2])
    senders, receivers = eap.node_names(toy2)
    assert len(senders) == 9 and len(receivers) == 25
    # embed -> all 25 inputs; each layer-0 head -> 12 layer-1 inputs and the logits; layer-1 heads -> logits
    assert len(scores) == 25 + 4 * 13 + 4
    assert ("L1H0", "L0H1.k") not in scores and ("L0H0", "L0H1.q") not in scores


def test_exact_where_the_model_is_linear(toy2, runs):
    """Logits are linear in the residual stream and heads in their values: there EAP equals path patching."""
    clean, corrupted, linear, _ = runs
    scores = eap.edge_attribution_scores(toy2, clean, corrupted, linear)
    for layer in range(2):
        for head in range(4):
            expected = _path_effect(toy2, clean, corrupted, linear, (layer, head))
            assert scores[(f"L{layer}H{head}", "logits")] == pytest.approx(expected, abs=1e-4)
    for sender in range(4):
        for receiver in range(4):
            expected = _path_effect(toy2, clean, corrupted, linear, (0, sender), (1, receiver), "v")
            assert scores[(f"L0H{sender}", f"L1H{receiver}.v")] == pytest.approx(expected, abs=1e-4)


def test_key_edges_track_path_patching_and_point_at_the_previous_token_head(toy2, runs):
    """Through the softmax EAP is an estimate: measured here, correlation 0.95 over the 16 key edges;
    L0H1 sends 2.7 times as much into the keys as the next layer-0 head (L0H3)."""
    clean, corrupted, _, repeat_log_prob = runs
    scores = eap.edge_attribution_scores(toy2, clean, corrupted, repeat_log_prob)
    pairs = [(s, r) for s in range(4) for r in range(4)]
    estimated = np.array([scores[(f"L0H{s}", f"L1H{r}.k")] for s, r in pairs])
    exact = np.array([_path_effect(toy2, clean, corrupted, repeat_log_prob, (0, s), (1, r), "k") for s, r in pairs])
    assert np.corrcoef(estimated, exact)[0, 1] > 0.85
    into_keys = {s: sum(abs(scores[(f"L0H{s}", f"L1H{r}.k")]) for r in range(4)) for s in range(4)}
    assert max(into_keys, key=into_keys.get) == 1 and into_keys[1] > 2 * max(v for s, v in into_keys.items() if s != 1)
    assert all(scores[("L0H1", f"L1H{r}.k")] < 0 for r in range(4)), "corrupting the previous-token head hurts"
    strongest = max(scores, key=lambda edge: abs(scores[edge]))
    assert strongest == ("embed", "L0H1.v"), "the previous-token head carries the token it reads"


def test_models_with_norms_are_refused_with_the_reason(smollm2):
    tokens = smollm2.to_tokens(["When Mary and John went to the store, John gave a drink to"])
    with pytest.raises(ValueError, match="normalization"):
        eap.edge_attribution_scores(smollm2, tokens, tokens, lambda logits: logits[:, -1, 0].mean())
