"""Faithfulness by mean-ablation, on the toy 2-layer model whose induction circuit is known."""

from __future__ import annotations

import pytest
import torch

from course_lib import heads
from course_lib.faithfulness import all_heads, faithfulness, grouped_mean_z

HALF = 20


@pytest.fixture(scope="module")
def repeat(toy2):
    tokens = heads.repeated_random_tokens(16, HALF, toy2.cfg.d_vocab, 0, seed=3)
    reference = heads.repeated_random_tokens(32, HALF, toy2.cfg.d_vocab, 0, seed=5)  # same shape, other tokens

    def accuracy(logits):
        """Share of the second copy predicted right (top-1): 1 for the toy, about 0 without induction."""
        return (logits[:, HALF + 1 : -1].argmax(-1) == tokens[:, HALF + 2 :]).float().mean()

    return tokens, reference, accuracy


def _run(toy2, repeat, circuit):
    tokens, reference, accuracy = repeat
    return faithfulness(toy2, tokens, [0] * len(tokens), reference, [0] * len(reference), circuit, accuracy)


def test_the_induction_circuit_is_faithful_and_parts_of_it_are_not(toy2, repeat):
    induction = [(0, 1)] + [(1, h) for h in range(4)]  # previous-token head and the layer-1 heads
    result = _run(toy2, repeat, induction)
    assert result.full > 0.95
    assert result.ratio > 0.8, result
    assert result.nothing < 0.1, result
    assert _run(toy2, repeat, [(1, h) for h in range(4)]).ratio < 0.3, "without the previous-token head"
    assert _run(toy2, repeat, [(0, 0), (0, 2), (0, 3)]).ratio < 0.1, "layer 0 alone does not repeat"


def test_the_whole_model_is_perfectly_faithful(toy2, repeat):
    result = _run(toy2, repeat, all_heads(toy2))
    assert result.ratio == pytest.approx(1.0, abs=1e-6)


def test_a_prompt_that_is_its_own_reference_group_is_unchanged_by_any_ablation(toy2, repeat):
    tokens, _, accuracy = repeat
    groups = list(range(len(tokens)))
    result = faithfulness(toy2, tokens, groups, tokens, groups, [(0, 0)], accuracy)
    assert result.circuit == pytest.approx(result.full, abs=1e-6)
    assert result.nothing == pytest.approx(result.full, abs=1e-6)


def test_group_means_average_only_their_group(toy2, repeat):
    tokens = repeat[0]
    means = grouped_mean_z(toy2, tokens, [0] * 8 + [1] * 8)
    _, cache = toy2.run_with_cache(tokens)
    torch.testing.assert_close(means[1][1], cache["blocks.1.attn.hook_z"][8:].mean(0))
    torch.testing.assert_close(means[0][0], cache["blocks.0.attn.hook_z"][:8].mean(0))


def test_bad_input_is_named(toy2, repeat):
    tokens, reference, accuracy = repeat
    with pytest.raises(ValueError, match="positions"):
        faithfulness(toy2, tokens, [0] * 16, reference[:, :10], [0] * 32, [(0, 1)], accuracy)
    with pytest.raises(ValueError, match="not heads"):
        faithfulness(toy2, tokens, [0] * 16, reference, [0] * 32, [(2, 0)], accuracy)
    with pytest.raises(ValueError, match="one group per reference prompt"):
        faithfulness(toy2, tokens, [0] * 16, reference, [0] * 3, [(0, 1)], accuracy)
