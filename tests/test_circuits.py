"""Circuits of the toy models: exact decompositions, composition, copying, skip-trigrams."""

from __future__ import annotations

import pytest
import torch

from course_lib import circuits
from course_lib.heads import repeated_random_tokens
from course_lib.models.toy import AttnOnlyTransformer, ToyConfig
from course_lib.models.training import SKIP_TRIGRAMS


@pytest.fixture(autouse=True)
def no_grad():
    with torch.no_grad():
        yield


def test_forward_from_weights_matches_the_model(toy1, toy2):
    for model in (toy1, toy2):
        tokens = repeated_random_tokens(3, 11, 64, 0, seed=4)
        torch.testing.assert_close(circuits.attn_only_forward(model, tokens), model(tokens), atol=1e-4, rtol=1e-4)


def test_logit_decomposition_adds_up_and_has_every_path(toy2, toy1):
    tokens = repeated_random_tokens(1, 9, 64, 0, seed=8)
    terms, labels = circuits.logit_decomposition(toy2, tokens)
    assert len(labels) == 1 + 4 + 4 * 5 and labels[0] == "direct" and "L1H2<-L0H3" in labels
    torch.testing.assert_close(terms.sum(0), toy2(tokens)[0], atol=1e-4, rtol=1e-4)
    terms1, labels1 = circuits.logit_decomposition(toy1, tokens)
    assert labels1 == ["direct", "L0H0", "L0H1", "L0H2", "L0H3"]
    torch.testing.assert_close(terms1[0], (toy1.W_E[tokens[0]] + toy1.W_pos[: tokens.shape[1]]) @ toy1.W_U)
    with pytest.raises(ValueError, match="one sequence"):
        circuits.logit_decomposition(toy2, repeated_random_tokens(2, 3, 64, 0))


def test_composition_score_properties():
    a = torch.randn(8, 8)
    assert circuits.composition_score(a, torch.zeros(8, 8)) == 0
    # Orthogonal subspaces do not compose; aligned ones compose fully.
    e1 = torch.zeros(8, 8)
    e1[0, 0] = 1
    e2 = torch.zeros(8, 8)
    e2[1, 1] = 1
    assert circuits.composition_score(e1, e2) == 0 and circuits.composition_score(e1, e1) == pytest.approx(1.0)
    baseline = circuits.random_composition_baseline(64, 16, n_samples=50)
    assert 0.08 < baseline < 0.2  # about 1/sqrt(d_model) for rank-16 random maps


def test_k_composition_matches_the_definition(toy2):
    scores = circuits.composition_scores(toy2, "k")
    W_OV = toy2.W_V[0, 1] @ toy2.W_O[0, 1]
    W_QK = toy2.W_Q[1, 2] @ toy2.W_K[1, 2].T
    assert scores[1, 2] == pytest.approx(float((W_QK @ W_OV.T).norm() / (W_QK.norm() * W_OV.norm())), rel=1e-4)
    with pytest.raises(ValueError, match="'q', 'k' or 'v'"):
        circuits.composition_scores(toy2, "x")


def _previous_token_head(toy2) -> int:
    from course_lib.heads import previous_token_scores

    return int(previous_token_scores(toy2, repeated_random_tokens(8, 20, 64, 0, seed=11))[0].argmax())


def test_previous_token_head_feeds_the_induction_keys(toy2):
    """The shipped model's circuit, as notebook 03 shows it: the token-level virtual K-circuit
    singles out the previous-token head; the Frobenius K-composition score barely does."""
    prev = _previous_token_head(toy2)
    others = [h for h in range(4) if h != prev]
    diag = torch.tensor([[circuits.virtual_k_circuit_diagonal(toy2, h0, h1) for h1 in range(4)] for h0 in range(4)])
    assert diag[prev].min() > 0.9 and diag[others].max() < 0.1
    k_scores = circuits.composition_scores(toy2, "k")
    baseline = circuits.random_composition_baseline(64, 16, n_samples=50)
    assert k_scores.min() > baseline  # every pair composes a little more than random matrices
    assert abs(float(k_scores[prev].mean() - k_scores[others].mean())) < 0.05  # ...and the score cannot tell the heads apart


def test_ablating_the_previous_token_head_breaks_induction(toy2):
    tokens = repeated_random_tokens(16, 20, 64, 0, seed=12)
    clean = circuits.loss_with_head_ablated(toy2, tokens)
    assert clean < 0.3
    assert circuits.loss_with_head_ablated(toy2, tokens, 0, _previous_token_head(toy2)) > 5 * clean


def test_copying_scores_on_known_circuits():
    """A head whose OV maps every token to itself copies (score 1); its negative anti-copies (-1)."""
    cfg = ToyConfig(n_layers=1, n_heads=2, d_model=16, d_head=16, d_vocab=16, n_ctx=4)
    model = AttnOnlyTransformer(cfg)
    eye = torch.eye(16)
    model.W_E.data, model.W_U.data = eye.clone(), eye.clone()
    model.blocks[0].attn.W_V.data = torch.stack([eye, -eye])
    model.blocks[0].attn.W_O.data = torch.stack([eye, eye])
    scores = circuits.copying_scores(model, 0)
    torch.testing.assert_close(scores["eigenvalue_ratio"], torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(scores["self_top1"], torch.tensor([1.0, 0.0]))


def test_full_circuits_are_factored_and_low_rank(toy1):
    ov = circuits.full_ov_circuit(toy1, 0, 2)
    assert ov.shape == (64, 64) and int(torch.linalg.matrix_rank(ov.AB)) <= toy1.cfg.d_head
    torch.testing.assert_close(circuits.full_qk_circuit(toy1, 0, 2).AB, toy1.W_E @ toy1.W_Q[0, 2] @ toy1.W_K[0, 2].T @ toy1.W_E.T)


def _skip_trigram_head(toy1) -> int:
    """The head that attends most from B to A after "A ... B"."""
    attention = torch.zeros(4)
    for a, b, _ in SKIP_TRIGRAMS:
        contexts = circuits.skip_trigram_contexts(toy1, a, b, n=16)
        _, cache = toy1.run_with_cache(contexts)
        attention += (cache["pattern", 0][:, :, -1] * (contexts == a)[:, None]).sum(-1).mean(0)
    return int(attention.argmax())


def test_planted_skip_trigrams_are_found_in_the_weights(toy1):
    """In the blocks of the full circuits that involve planted tokens: B's favourite triggers are
    its two partners, and A's favourite output is one of its two Cs (the ring of training.py)."""
    head = _skip_trigram_head(toy1)
    qk = circuits.full_qk_circuit(toy1, 0, head).AB[7:13, 1:7]
    ov = circuits.full_ov_circuit(toy1, 0, head).AB[1:7, 13:25]
    partners_found = sum(set((qk[i].topk(2).indices + 1).tolist()) == {a for a, b, _ in SKIP_TRIGRAMS if b == 7 + i} for i in range(6))
    outputs_found = sum(int(ov[i].argmax()) + 13 in {c for a, _, c in SKIP_TRIGRAMS if a == 1 + i} for i in range(6))
    assert partners_found >= 4 and outputs_found >= 4, (head, partners_found, outputs_found)
    a, c = circuits.best_skip_trigram(toy1, head, 7)
    assert isinstance(a, int) and isinstance(c, int) and a != toy1.cfg.bos_token_id


def test_positional_qk_is_the_position_part_of_layer_0_scores(toy2):
    """With token embeddings set to zero, layer 0's attention scores are exactly the positional QK."""
    from course_lib.heads import previous_token_scores

    qk = circuits.positional_qk(toy2, 0, 1)
    assert qk.shape == (48, 48) and torch.isinf(qk[3, 4]) and qk[4, 3].isfinite()
    edited = type(toy2)(toy2.cfg)
    edited.load_state_dict(toy2.state_dict())
    edited.W_E.data.zero_()
    _, cache = edited.run_with_cache(torch.zeros(1, 48, dtype=torch.long))
    torch.testing.assert_close(cache["blocks.0.attn.hook_attn_scores"][0, 1], qk, atol=1e-4, rtol=1e-4)
    # The previous-token head prefers offset 1 almost everywhere, from its positions alone.
    tokens = repeated_random_tokens(8, 20, 64, 0, seed=5)
    head = int(previous_token_scores(toy2, tokens)[0].argmax())
    offsets = circuits.favourite_offsets(toy2, 0, head)
    assert (offsets == 1).float().mean() > 0.9


def test_skip_trigram_contexts_place_a_before_b(toy1):
    tokens = circuits.skip_trigram_contexts(toy1, 3, 9, n=50, length=20, max_gap=5, seed=1)
    assert tokens.shape == (50, 20) and (tokens[:, 0] == 0).all() and (tokens[:, -1] == 9).all()
    where = (tokens == 3).nonzero()
    assert len(where) == 50 and ((19 - where[:, 1]) >= 1).all() and ((19 - where[:, 1]) <= 5).all()
    assert ((tokens[:, 1:-1] >= 25) | (tokens[:, 1:-1] == 3)).all()
    assert not (circuits.skip_trigram_contexts(toy1, None, 9, n=50) == 3).any()


def test_the_skip_trigram_heads_divide_the_ring_as_notebook_03_says(toy1):
    """The head that attends most from B to A serves B = 8, 9, 11, 12 (its QK rows peak on their two
    partners) and ignores B = 7 and 10; for A = 2 and 5, whose two triples it both serves, its OV
    row raises both outputs."""
    head = _skip_trigram_head(toy1)
    qk = circuits.full_qk_circuit(toy1, 0, head).AB
    ov = circuits.full_ov_circuit(toy1, 0, head).AB
    for b in (8, 9, 11, 12):
        partners = {a for a, bb, _ in SKIP_TRIGRAMS if bb == b}
        assert set((qk[b, 1:7].topk(2).indices + 1).tolist()) == partners, b
    for b in (7, 10):
        assert qk[b, 1:7].max() < 0.5 * qk[8, 1:7].max(), b
    for a in (2, 5):
        outputs = {c for aa, _, c in SKIP_TRIGRAMS if aa == a}
        assert set((ov[a, 13:25].topk(2).indices + 13).tolist()) == outputs, a
