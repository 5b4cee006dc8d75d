"""Head detectors on attention patterns with known answers."""

from __future__ import annotations

import types

import torch

from course_lib.heads import (
    duplicate_token_scores,
    first_token_scores,
    induction_scores,
    previous_token_scores,
    repeated_random_tokens,
)


class FixedPatternModel:
    """A stand-in model whose cache holds the given patterns [layer, batch, head, q, k]."""

    def __init__(self, patterns: torch.Tensor):
        self.patterns = patterns
        self.cfg = types.SimpleNamespace(n_layers=patterns.shape[0])

    def run_with_cache(self, tokens, names_filter=None):
        cache = {f"blocks.{l}.attn.hook_pattern": self.patterns[l] for l in range(self.cfg.n_layers)}
        return None, cache


def one_hot_pattern(n_pos: int, key_of_query) -> torch.Tensor:
    pattern = torch.zeros(n_pos, n_pos)
    for q in range(n_pos):
        pattern[q, key_of_query(q)] = 1.0
    return pattern


def test_repeated_random_tokens_layout():
    tokens = repeated_random_tokens(3, 5, d_vocab=20, bos_token_id=0, seed=1)
    assert tokens.shape == (3, 11)
    assert torch.all(tokens[:, 0] == 0)
    assert torch.equal(tokens[:, 1:6], tokens[:, 6:])
    assert torch.equal(tokens, repeated_random_tokens(3, 5, d_vocab=20, bos_token_id=0, seed=1))


def test_scores_pick_out_the_matching_head():
    half = 6
    n = 1 + 2 * half
    previous = one_hot_pattern(n, lambda q: max(q - 1, 0))
    induction = one_hot_pattern(n, lambda q: q - half + 1 if q > half else 0)
    duplicate = one_hot_pattern(n, lambda q: q - half if q > half else 0)
    bos = one_hot_pattern(n, lambda q: 0)
    heads = torch.stack([previous, induction, duplicate, bos])  # [head, q, k]
    patterns = heads.expand(2, 2, 4, n, n).clone()  # 2 layers, batch 2
    model = FixedPatternModel(patterns)
    tokens = torch.zeros(2, n, dtype=torch.long)
    # Query 1 looks at key 0 in every pattern here, which is also its previous token.
    first = 1 / (n - 1)
    torch.testing.assert_close(previous_token_scores(model, tokens)[0], torch.tensor([1.0, first, first, first]))
    torch.testing.assert_close(induction_scores(model, tokens)[1], torch.tensor([0.0, 1, 0, 0]))
    torch.testing.assert_close(duplicate_token_scores(model, tokens)[0], torch.tensor([0.0, 0, 1, 0]))
    torch.testing.assert_close(first_token_scores(model, tokens)[1], torch.tensor([1 / (n - 1), half / (n - 1), half / (n - 1), 1.0]))


def test_uniform_attention_scores_at_chance(toy2):
    """With every weight of W_Q zeroed, attention is uniform: scores equal 1/#keys on average."""
    import copy

    model = copy.deepcopy(toy2)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.W_Q.zero_()
    tokens = repeated_random_tokens(2, 10, 64, 0, seed=3)
    expected = torch.tensor([1 / (q + 1) for q in range(1, 21)]).mean()
    torch.testing.assert_close(previous_token_scores(model, tokens), expected.expand(2, 4), atol=1e-5, rtol=0)
