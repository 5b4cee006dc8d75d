"""The logit lens and the tuned lens: exactness at the last layer, known values, honest numbers."""

from __future__ import annotations

import math

import pytest
import torch

from course_lib.data.lens_corpus import EVAL_PROMPTS, TRAIN_TEXTS
from course_lib.lens import (
    answer_trajectory,
    entropy_per_layer,
    first_top1_layer,
    kl_to_final,
    logit_lens,
    top_token_table,
)
from course_lib.tokens import single_token_id


def test_last_slice_equals_the_models_logits_toy(toy2):
    tokens = torch.tensor([[0, 5, 9, 33, 5, 9]])
    lens = logit_lens(toy2, tokens)
    assert lens.shape == (3, 6, 64)
    torch.testing.assert_close(lens[-1], toy2(tokens)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lens[0], (toy2.W_E[tokens[0]] + toy2.W_pos[:6]) @ toy2.W_U, atol=1e-5, rtol=1e-5)


def test_last_slice_equals_the_models_logits_smollm2(smollm2):
    lens = logit_lens(smollm2, "The capital of Poland is", prepend_bos=True)
    assert lens.shape == (31, 6, smollm2.cfg.d_vocab)
    with torch.no_grad():
        logits = smollm2(smollm2.to_tokens("The capital of Poland is", prepend_bos=True))[0]
    torch.testing.assert_close(lens[-1], logits, atol=1e-3, rtol=1e-4)


def test_each_layer_is_normalised_on_its_own(smollm2):
    """The lens of layer l depends on layer l's stream only: scaling that stream changes nothing (RMS norm)."""
    tokens = smollm2.to_tokens("Rome is in Italy", prepend_bos=True)
    _, cache = smollm2.run_with_cache(tokens)
    resid = cache["blocks.10.hook_resid_post"][0]
    from course_lib.lens import final_norm_and_unembed

    torch.testing.assert_close(final_norm_and_unembed(smollm2, resid), final_norm_and_unembed(smollm2, 3.0 * resid), atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(final_norm_and_unembed(smollm2, resid), logit_lens(smollm2, tokens)[11], atol=1e-3, rtol=1e-4)


def test_lecture_example_numbers(smollm2):
    """Warsaw is top-1 only after the last layer; its rank falls from tens of thousands to 0."""
    lens = logit_lens(smollm2, "The capital of Poland is", prepend_bos=True)
    warsaw = single_token_id(smollm2, " Warsaw")
    assert first_top1_layer(lens, warsaw) == 30
    ranks = answer_trajectory(lens, warsaw)["rank"]
    assert ranks[23] > 10_000 and ranks[24] < 10_000 and ranks[29] < 1000 and ranks[30] == 0
    paris = single_token_id(smollm2, " Paris")
    assert first_top1_layer(logit_lens(smollm2, "The capital of France is", prepend_bos=True), paris) == 28


def test_helpers_on_known_distributions():
    # Two layers over a vocabulary of 3 at one position.
    lens = torch.tensor([[[0.0, 1.0, 0.0]], [[10.0, 0.0, 0.0]]])
    q, p = lens[0, 0].softmax(-1), lens[1, 0].softmax(-1)
    torch.testing.assert_close(entropy_per_layer(lens)[:, 0], torch.stack([-(q * q.log()).sum(), -(p * p.log()).sum()]))
    torch.testing.assert_close(entropy_per_layer(torch.zeros(1, 1, 3))[0, 0], torch.tensor(math.log(3)))
    assert kl_to_final(lens)[1, 0] == 0
    torch.testing.assert_close(kl_to_final(lens)[0, 0], (p * (p.log() - q.log())).sum())
    assert first_top1_layer(lens, 0) == 1 and first_top1_layer(lens, 1) == 0 and first_top1_layer(lens, 2) is None
    traj = answer_trajectory(lens, 0)
    assert traj["rank"].tolist() == [1, 0] and traj["prob"].iloc[0] == pytest.approx(float(q[0]))
    assert answer_trajectory(lens, 1)["rank"].tolist() == [0, 1]


def test_kl_is_nonnegative_and_zero_only_at_the_end(smollm2):
    kl = kl_to_final(logit_lens(smollm2, "Monday, Tuesday, Wednesday,", prepend_bos=True))
    assert torch.all(kl >= -1e-4) and torch.all(kl[-1].abs() < 1e-4) and torch.all(kl[:-1] > 0.01)


def test_top_token_table(smollm2):
    prompt = "The capital of France is"
    lens = logit_lens(smollm2, prompt, prepend_bos=True)
    tokens, probs = top_token_table(smollm2, lens, smollm2.to_str_tokens(prompt, prepend_bos=True))
    assert tokens.shape == probs.shape == (31, 6)
    assert tokens.iloc[-1, -1] == " Paris"
    assert ((probs > 0) & (probs <= 1)).all().all()


def test_batch_is_refused_with_a_clear_message(toy2):
    with pytest.raises(ValueError, match="one prompt at a time"):
        logit_lens(toy2, torch.zeros(2, 4, dtype=torch.long))


@pytest.mark.slow
def test_tuned_lens_beats_the_logit_lens_on_held_out_prompts(smollm2, tmp_path):
    from course_lib.tuned_lens import load_or_train_tuned_lens, tuned_lens_logits

    held_out = {p for p, _ in EVAL_PROMPTS}
    assert not held_out & set(TRAIN_TEXTS)
    lens = load_or_train_tuned_lens(smollm2, TRAIN_TEXTS, cache_file=tmp_path / "tl.pt", steps=40, progress=False)
    kl_logit = torch.stack([kl_to_final(logit_lens(smollm2, p, prepend_bos=True))[:, -1] for p in held_out]).mean(0)
    kl_tuned = torch.stack([kl_to_final(tuned_lens_logits(smollm2, lens, p, prepend_bos=True))[:, -1] for p in held_out]).mean(0)
    assert kl_tuned[-1].abs() < 1e-4  # the final layer is untouched
    assert kl_tuned[0] < 0.5 * kl_logit[0]  # the embeddings are read far better
    assert (kl_tuned[:-1] < kl_logit[:-1]).float().mean() > 0.8
    # Cached: a second call loads the same translators instead of training.
    again = load_or_train_tuned_lens(smollm2, TRAIN_TEXTS, cache_file=tmp_path / "tl.pt", steps=40, progress=False)
    torch.testing.assert_close(again.A, lens.A)


def test_top_k_tokens_lists_the_final_answer_first(smollm2):
    from course_lib.lens import top_k_tokens

    table = top_k_tokens(smollm2, logit_lens(smollm2, "The Colosseum is in downtown", prepend_bos=True), k=3)
    assert table.shape == (31, 3)
    assert table.iloc[-1, 0].startswith("' Rome'")
