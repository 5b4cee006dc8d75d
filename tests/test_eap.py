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


def test_the_edge_circuit_forward_refuses_the_toy(toy2, runs):
    with pytest.raises(ValueError, match="norms and MLPs"):
        eap.edge_circuit_metric(toy2, runs[0], runs[1], set(), runs[2])


# ----- models with norms and MLPs (SmolLM2) -------------------------------------------------------
@pytest.fixture(scope="module")
def ioi_runs(smollm2):
    from course_lib.data import ioi
    from course_lib.patching.metrics import logit_diff

    dataset = ioi.ioi_dataset(smollm2, 4, seed=0)
    abc = ioi.corrupt(smollm2, dataset, "abc")
    metric = lambda logits: logit_diff(logits, dataset.io_ids, dataset.s_ids)
    with torch.no_grad():
        clean, corrupted = float(metric(smollm2(dataset.tokens))), float(metric(smollm2(abc.tokens)))
    scores = eap.edge_attribution_scores(smollm2, dataset.tokens, abc.tokens, metric)
    return dataset, abc, metric, clean, corrupted, scores


def test_norm_model_edges_and_names(smollm2, ioi_runs):
    scores = ioi_runs[-1]
    senders, receivers = eap.node_names(smollm2)
    assert len(senders) == 1 + 30 * 10 and len(receivers) == 30 * (9 + 3 + 3 + 1) + 1
    assert ("L5H0", "L5H1.q") not in scores and ("MLP5", "L5H1.q") not in scores  # same layer, MLP after attention
    assert ("L5H0", "MLP5") in scores and ("MLP5", "L6KV0.k") in scores and ("embed", "logits") in scores
    assert not getattr(smollm2.cfg, "use_split_qkv_input", False)  # the split inputs are switched off again


def test_norm_model_direct_edges_match_path_patching(smollm2, ioi_runs):
    """head -> logits passes only through the final norm: EAP and path patching agree closely (measured r = 0.9998)."""
    dataset, abc, metric, clean, _, scores = ioi_runs
    direct = path.path_patch_heads_to_logits(smollm2, dataset.tokens, abc.tokens, metric) - clean
    estimate = torch.tensor([[scores[(f"L{l}H{h}", "logits")] for h in range(9)] for l in range(30)])
    assert float(torch.corrcoef(torch.stack([direct.flatten(), estimate.flatten()]))[0, 1]) > 0.99
    assert float(estimate[23, 3]) < -1.0  # the largest direct path, as path patching finds


def test_edge_circuit_metric_interpolates_between_the_runs(smollm2, ioi_runs):
    dataset, abc, metric, clean, corrupted, scores = ioi_runs
    every_edge = eap.edge_circuit_metric(smollm2, dataset.tokens, abc.tokens, set(scores), metric)
    no_edge = eap.edge_circuit_metric(smollm2, dataset.tokens, abc.tokens, set(), metric)
    assert every_edge == pytest.approx(clean, abs=1e-3) and no_edge == pytest.approx(corrupted, abs=1e-3)
    with pytest.raises(ValueError, match="not edges"):
        eap.edge_circuit_metric(smollm2, dataset.tokens, abc.tokens, {("L3H0", "L2H0.q")}, metric)


def test_top_edges_hold_the_hand_found_circuit(ioi_runs):
    """On 4 prompts the top head-to-head edges include the chain notebook 05 finds by path patching."""
    scores = ioi_runs[-1]
    ranked = [e for e, _ in sorted(scores.items(), key=lambda kv: -abs(kv[1])) if not any(n.startswith("MLP") for n in e)]
    top = set(ranked[:60])
    assert ("L23H3", "logits") in top and ("L16H0", "L17KV1.k") in top
    assert any(s == "L20H0" and r.startswith("L23H") and r.endswith(".q") for s, r in top)
