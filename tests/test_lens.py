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
def test_tuned_lens_beats_the_logit_lens_on_held_out_text(smollm2, tmp_path):
    """Trained on the course corpus, evaluated on text it never saw, over the full vocabulary."""
    from course_lib.data.lens_corpus import HELD_OUT_TEXTS
    from course_lib.tuned_lens import load_or_train_tuned_lens, mean_kl_per_layer

    lens = load_or_train_tuned_lens(smollm2, TRAIN_TEXTS, cache_file=tmp_path / "tl.pt", steps=60, progress=False)
    held_out = list(HELD_OUT_TEXTS) + [p for p, _ in EVAL_PROMPTS]
    kl_logit = mean_kl_per_layer(smollm2, held_out)
    kl_tuned = mean_kl_per_layer(smollm2, held_out, lens)
    assert kl_tuned[-1].abs() < 1e-4 and kl_logit[-1].abs() < 1e-4  # the final layer is untouched
    assert kl_tuned[0] < 0.5 * kl_logit[0]  # the embeddings are read far better
    assert (kl_tuned[:-1] < kl_logit[:-1]).float().mean() > 0.8
    assert 0.5 < lens.subset_mass <= 1.0  # the share of probability the training loss sees
    # Cached: a second call loads the same translators (and their subset mass) instead of training.
    again = load_or_train_tuned_lens(smollm2, TRAIN_TEXTS, cache_file=tmp_path / "tl.pt", steps=60, progress=False)
    torch.testing.assert_close(again.b, lens.b)
    torch.testing.assert_close(again.V, lens.V)
    assert again.subset_mass == pytest.approx(lens.subset_mass)


def test_tuned_lens_translators_start_as_the_identity_and_count_their_parameters():
    from course_lib.tuned_lens import TunedLens

    stack = torch.randn(4, 2, 5, 8)
    for rank, n_params in [(None, 3 * (8 * 8 + 8)), (2, 3 * (2 * 8 * 2 + 8)), (0, 3 * 8)]:
        lens = TunedLens(n_layers=3, d_model=8, rank=rank)
        torch.testing.assert_close(lens(stack), stack)
        assert sum(p.numel() for p in lens.parameters()) == n_params
    lens = TunedLens(n_layers=3, d_model=8, rank=2)
    with torch.no_grad():
        lens.V.fill_(0.1)
        lens.b.fill_(1.0)
    out = lens(stack)
    torch.testing.assert_close(out[-1], stack[-1])  # the final layer is never translated
    expected = stack[1] + stack[1] @ lens.U[1] @ lens.V[1].T + 1.0
    torch.testing.assert_close(out[1], expected)


def test_top_k_tokens_lists_the_final_answer_first(smollm2):
    from course_lib.lens import top_k_tokens

    table = top_k_tokens(smollm2, logit_lens(smollm2, "The Colosseum is in downtown", prepend_bos=True), k=3)
    assert table.shape == (31, 3)
    assert table.iloc[-1, 0].startswith("' Rome'")


# ----------------------------------------------------------------- frozen final norm: DLA


def _tokens_and_ids(model, prompt, correct, incorrect):
    from course_lib.tokens import single_token_id

    return model.to_tokens(prompt, prepend_bos=True), single_token_id(model, correct), single_token_id(model, incorrect)


def test_logit_diff_lens_and_attribution_add_up_to_the_models_logit_difference(smollm2):
    from course_lib.lens import head_logit_attribution, logit_diff_attribution, logit_diff_lens

    tokens, rome, paris = _tokens_and_ids(smollm2, "The Colosseum is in downtown", " Rome", " Paris")
    with torch.no_grad():
        logits, cache = smollm2.run_with_cache(tokens)
    model_diff = float(logits[0, -1, rome] - logits[0, -1, paris])
    lens = logit_diff_lens(smollm2, cache, rome, paris)
    assert lens.shape == (31,) and float(lens[-1]) == pytest.approx(model_diff, abs=2e-3)
    attribution = logit_diff_attribution(smollm2, cache, rome, paris)
    assert len(attribution) == 1 + 30 * 9 + 30 and float(attribution.sum()) == pytest.approx(model_diff, abs=2e-3)
    # The accumulated residual after layer l is the sum of everything written up to l.
    upto_10 = attribution[[i for i in attribution.index if i == "embed" or int(i[1:].split("H")[0].split(" ")[0]) <= 10]]
    assert float(upto_10.sum()) == pytest.approx(float(lens[11]), abs=2e-3)
    heads = head_logit_attribution(smollm2, cache, rome, paris)
    assert heads.shape == (30, 9) and float(heads[29, 2]) == pytest.approx(float(attribution["L29H2"]), abs=1e-4)


def test_head_attribution_agrees_with_transformer_lens(smollm2):
    """TransformerLens's stack_head_results(apply_ln=True) divides by the same frozen scale (it
    leaves the norm's weight out): times the weight, it must give our numbers."""
    from course_lib.lens import head_logit_attribution

    tokens, mary, john = _tokens_and_ids(smollm2, "When Mary and John went to the store, John gave a drink to", " Mary", " John")
    with torch.no_grad():
        _, cache = smollm2.run_with_cache(tokens)
        stacked = cache.stack_head_results(layer=-1, pos_slice=-1, apply_ln=True)[:, 0]  # [layer * head, d_model]
        direction = smollm2.W_U[:, mary] - smollm2.W_U[:, john]
        theirs = (stacked * smollm2.ln_final.weight) @ direction
    ours = head_logit_attribution(smollm2, cache, mary, john)
    torch.testing.assert_close(ours.flatten(), theirs, atol=2e-3, rtol=1e-3)


def test_toy_models_have_no_final_norm_and_still_add_up(toy2):
    from course_lib.lens import logit_diff_attribution, logit_diff_lens

    tokens = torch.tensor([[0, 5, 9, 33, 5, 9]])
    with torch.no_grad():
        logits, cache = toy2.run_with_cache(tokens)
        diff = float(logits[0, -1, 33] - logits[0, -1, 7])
        assert float(logit_diff_lens(toy2, cache, 33, 7)[-1]) == pytest.approx(diff, abs=1e-4)
        attribution = logit_diff_attribution(toy2, cache, 33, 7)
    assert list(attribution.index) == ["embed"] + [f"L{l}H{h}" for l in range(2) for h in range(4)]
    assert float(attribution.sum()) == pytest.approx(diff, abs=1e-4)


def test_layer_norm_models_are_centred_before_the_frozen_scale():
    """A LayerNorm (GPT-2 style) subtracts the mean first: the attribution must centre each
    component, and then adds up to the logit difference minus the bias term."""
    import types

    from course_lib.lens import logit_diff_attribution

    torch.manual_seed(0)
    d_model, d_vocab = 6, 5
    norm = torch.nn.LayerNorm(d_model)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    model = types.SimpleNamespace(cfg=types.SimpleNamespace(n_layers=1, normalization_type="LN"), ln_final=norm,
                                  W_U=torch.randn(d_model, d_vocab), W_O=torch.randn(1, 2, 3, d_model))
    embed, z, mlp = torch.randn(1, 1, d_model), torch.randn(1, 1, 2, 3), torch.randn(1, 1, d_model)
    final = embed + torch.einsum("bphd,hdm->bpm", z, model.W_O[0]) + mlp
    centred = final - final.mean(-1, keepdim=True)
    scale = (centred.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()
    cache = {"blocks.0.hook_resid_pre": embed, "blocks.0.attn.hook_z": z, "blocks.0.hook_mlp_out": mlp, "ln_final.hook_scale": scale}
    with torch.no_grad():
        logits = norm(final) @ model.W_U
        attribution = logit_diff_attribution(model, cache, 1, 3)
        bias_term = float(norm.bias @ (model.W_U[:, 1] - model.W_U[:, 3]))
    assert float(attribution.sum()) + bias_term == pytest.approx(float(logits[0, 0, 1] - logits[0, 0, 3]), abs=1e-4)


def test_logit_lens_on_chosen_layers_equals_the_full_lens(smollm2):
    full = logit_lens(smollm2, "The capital of France is", prepend_bos=True)
    some = logit_lens(smollm2, "The capital of France is", prepend_bos=True, layers=[0, 15, 30])
    torch.testing.assert_close(some, full[[0, 15, 30]])
