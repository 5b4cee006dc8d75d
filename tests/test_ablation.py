"""Head ablation by hooks: exact effects on the toy model, equivalence with editing the weights,
mean versus zero, and no hook left behind."""

from __future__ import annotations

import pytest
import torch

from course_lib.ablation import ablated_logits, mean_z
from course_lib.heads import repeated_random_tokens


@pytest.fixture(autouse=True)
def no_grad():
    with torch.no_grad():
        yield


def test_zero_ablation_equals_zeroing_the_heads_output_weights(toy2):
    tokens = repeated_random_tokens(3, 9, 64, 0, seed=1)
    edited = type(toy2)(toy2.cfg)
    edited.load_state_dict(toy2.state_dict())
    edited.blocks[0].attn.W_O.data[1] = 0.0  # head L0H1 writes nothing
    torch.testing.assert_close(ablated_logits(toy2, tokens, [(0, 1)], how="zero"), edited(tokens), atol=1e-5, rtol=1e-5)


def test_mean_ablation_uses_the_mean_at_each_position(toy2):
    tokens = repeated_random_tokens(4, 7, 64, 0, seed=2)
    means = mean_z(toy2, tokens, 1)
    _, cache = toy2.run_with_cache(tokens)
    torch.testing.assert_close(means, cache["blocks.1.attn.hook_z"].mean(0))
    # By hand: layer-1 output with head 2 replaced by its per-position mean.
    z = cache["blocks.1.attn.hook_z"].clone()
    z[:, :, 2] = means[:, 2]
    resid = cache["blocks.1.hook_resid_pre"] + torch.einsum("bphd,hdm->bpm", z, toy2.W_O[1])
    torch.testing.assert_close(ablated_logits(toy2, tokens, [(1, 2)], how="mean"), resid @ toy2.W_U, atol=1e-4, rtol=1e-4)


def test_ablating_the_previous_token_head_breaks_induction_and_leaves_no_hook(toy2):
    from course_lib.heads import previous_token_scores

    tokens = repeated_random_tokens(16, 20, 64, 0, seed=3)
    prev_head = int(previous_token_scores(toy2, tokens)[0].argmax())
    clean = toy2(tokens)
    loss = lambda logits: float(-logits[:, 21:-1].log_softmax(-1).gather(-1, tokens[:, 22:, None]).mean())
    assert loss(ablated_logits(toy2, tokens, [(0, prev_head)], how="mean")) > 5 * loss(clean)
    torch.testing.assert_close(toy2(tokens), clean)  # the hooks are gone


def test_bad_kind_is_refused(toy2):
    with pytest.raises(ValueError, match="'zero', 'mean' or 'resample'"):
        ablated_logits(toy2, torch.tensor([[0, 1, 2]]), [(0, 0)], how="shuffle")


def test_hooks_compose_with_run_with_cache(toy2):
    """Inside `model.hooks(...)`, a detector's own run_with_cache sees the ablated model."""
    from course_lib.ablation import head_ablation_hooks
    from course_lib.heads import induction_scores, previous_token_scores

    tokens = repeated_random_tokens(8, 20, 64, 0, seed=4)
    prev_head = int(previous_token_scores(toy2, tokens)[0].argmax())
    clean = induction_scores(toy2, tokens)[1].max()
    with toy2.hooks(fwd_hooks=head_ablation_hooks(toy2, [(0, prev_head)], "mean", tokens)):
        ablated = induction_scores(toy2, tokens)[1].max()
    assert clean > 0.8 and ablated < 0.3
    torch.testing.assert_close(induction_scores(toy2, tokens)[1].max(), clean)  # nothing left behind
    with pytest.raises(ValueError, match="needs `reference` tokens"):
        head_ablation_hooks(toy2, [(0, 0)], "mean")
