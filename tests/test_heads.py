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


def test_repeated_blocks_hold_distinct_tokens_and_refuse_impossible_requests():
    import pytest

    tokens = repeated_random_tokens(50, 23, d_vocab=64, bos_token_id=0, seed=2)
    assert all(len(set(row[1:24].tolist())) == 23 for row in tokens)
    assert int(tokens[:, 1:].min()) >= 1 and int(tokens.max()) <= 63
    with pytest.raises(ValueError, match="distinct tokens"):
        repeated_random_tokens(1, 70, d_vocab=64, bos_token_id=0)


# ----------------------------------------------------------------- notebook 03's claims on SmolLM2


def test_smollm2_induction_hangs_on_one_previous_token_head(smollm2):
    """Notebook 03: mean-ablating L16H0 more than doubles the loss on the repeat and collapses the
    induction heads; mean-ablating L11H1 (also a high previous-token score) changes nothing."""
    from course_lib.ablation import head_ablation_hooks
    from course_lib.heads import per_token_loss

    tokens = repeated_random_tokens(4, 40, smollm2.cfg.d_vocab, smollm2.tokenizer.bos_token_id, seed=0, low=1000)
    with torch.no_grad():
        clean = induction_scores(smollm2, tokens)
        clean_loss = float(per_token_loss(smollm2, tokens)[:, 41:].mean())
        assert {(18, 6), (17, 3), (17, 4)} <= {(l, h) for l, h in (clean > 0.6).nonzero().tolist()}
        prev = previous_token_scores(smollm2, tokens)
        assert prev[16, 0] > 0.8 and prev[11, 1] > 0.8
        results = {}
        for head in [(16, 0), (11, 1)]:
            with smollm2.hooks(fwd_hooks=head_ablation_hooks(smollm2, [head], "mean", tokens)):
                results[head] = (induction_scores(smollm2, tokens), float(per_token_loss(smollm2, tokens)[:, 41:].mean()))
    ablated, loss = results[(16, 0)]
    assert loss > 2 * clean_loss and ablated[17, 3] < 0.2 and ablated[17, 4] < 0.2 and ablated[18, 6] < 0.6 * clean[18, 6]
    ablated, loss = results[(11, 1)]
    assert abs(loss - clean_loss) < 0.2 and torch.allclose(ablated[17:19], clean[17:19], atol=0.03)


def test_smollm2_repairs_split_names_with_l23h2(smollm2):
    """Notebook 03's table: once " Marisol" has appeared, " Mar" is continued with "isol"; the
    induction heads attend back to "isol" and L23H2 writes it."""
    from course_lib.heads import tokenizer_repair_row

    row = tokenizer_repair_row(smollm2, " Marisol", "I met{word} at the station. Later that day,{fragment}", " Bob", prepend_bos=True)
    assert (row["destination (fragment)"], row["source (continuation)"]) == (" Mar", "isol")
    assert row["p(continuation)"] > 0.9 and row["p, ' Bob' mentioned instead"] < 0.02
    assert row["writing head"] == "L23H2" and row["its attention"] > 0.9 and row["its direct logit"] > 1.0
    assert "isol" in row["its top out tokens"]
    attending = row["heads attending to the source (attention, direct logit)"]
    assert "L18H6" in attending
    l18h6_direct = float(attending.split("L18H6 (")[1].split(",")[1].rstrip(")").strip())
    assert -1.0 < l18h6_direct < 0.5  # the strongest induction head attends but writes little directly
    import pytest

    with pytest.raises(ValueError, match="single token"):
        tokenizer_repair_row(smollm2, " Rome", "I met{word}.{fragment}", " Bob", prepend_bos=True)
    with pytest.raises(ValueError, match="end with"):
        tokenizer_repair_row(smollm2, " Marisol", "Later that day,{fragment} we met{word}", " Bob", prepend_bos=True)
