"""course_lib.patching against TransformerLens's own patching, a one-location loop, and known values."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import transformer_lens.patching as tl_patching

import course_lib.patching as patching
from course_lib.data.patching import BIAS_PAIR, FACT_PAIR
from course_lib.patching import metrics as M
from course_lib.patching.engine import LlamaStack
from course_lib.patching.sweeps import _scalar, locations, reads_only_last_position

KIND_TO_TL = {
    "resid_pre": ("resid_pre", tl_patching.layer_pos_patch_setter),
    "attn_out": ("attn_out", tl_patching.layer_pos_patch_setter),
    "mlp_out": ("mlp_out", tl_patching.layer_pos_patch_setter),
    "head_out_all_pos": ("z", tl_patching.layer_head_vector_patch_setter),
    "head_out_by_pos": ("z", tl_patching.layer_pos_head_vector_patch_setter),
}
COLUMNS = {"resid_pre": ["layer", "pos"], "attn_out": ["layer", "pos"], "mlp_out": ["layer", "pos"],
           "head_out_all_pos": ["layer", "head"], "head_out_by_pos": ["layer", "pos", "head"]}


def tl_at(model, tokens, cache, kind, metric, locs):
    """TransformerLens's generic_activation_patch at the given locations (one forward each)."""
    activation, setter = KIND_TO_TL[kind]
    index_df = pd.DataFrame(locs, columns=COLUMNS[kind])
    with torch.no_grad():
        return tl_patching.generic_activation_patch(model, tokens, cache, metric, setter, activation, index_df=index_df)


# ----- metrics -------------------------------------------------------------------------------------
def test_metrics_on_known_logits():
    logits = torch.zeros(2, 3, 5)
    logits[0, -1] = torch.tensor([0.0, 2.0, 1.0, 0.0, 3.0])
    logits[1, -1] = torch.tensor([1.0, 0.0, 4.0, 0.0, 0.0])
    logits[:, 0] = 100.0  # earlier positions must not matter
    assert M.logit_diff(logits, 1, 2).item() == pytest.approx(((2 - 1) + (0 - 4)) / 2)
    assert M.logit_diff(logits, [1, 2], [2, 1]).item() == pytest.approx(((2 - 1) + (4 - 0)) / 2)
    assert M.answer_logit(logits, 4).tolist() == [3.0, 0.0]
    log_z0 = math.log(math.exp(0) * 2 + math.exp(2) + math.exp(1) + math.exp(3))
    log_z1 = math.log(math.exp(1) + math.exp(4) + 3)
    assert M.answer_log_prob(logits, 1).item() == pytest.approx(((2 - log_z0) + (0 - log_z1)) / 2, abs=1e-6)
    assert M.answer_prob(logits, 1).item() == pytest.approx((math.exp(2 - log_z0) + math.exp(0 - log_z1)) / 2, abs=1e-6)
    assert M.answer_rank(logits, 1).item() == pytest.approx((1 + 2) / 2)  # rank 1 in the first, 2 in the second
    assert M.accuracy(logits, [4, 2]).item() == 1.0 and M.accuracy(logits, 4).item() == 0.5
    assert M.normalised(torch.tensor(2.0), corrupted=1.0, clean=5.0).item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="baselines are equal"):
        M.normalised_metric(M.logit_diff_metric(1, 2), 3.0, 3.0)
    with pytest.raises(ValueError, match="one per prompt"):
        M.logit_diff(logits, [1, 2, 3], 2)


def test_the_last_position_probe():
    logits = torch.randn(2, 4, 7)
    assert reads_only_last_position(M.logit_diff_metric(1, 2), logits)
    assert not reads_only_last_position(lambda l: (l[:, :, 1] - l[:, :, 2]).mean(), logits)
    assert not reads_only_last_position(lambda l: l[:, 1].argmax(-1).float().mean(), logits)


def test_metric_must_return_one_number():
    with pytest.raises(ValueError, match="single number"):
        _scalar(torch.ones(3), "scalar", 3)
    assert _scalar(torch.tensor([1.0, 3.0]), "mean", 2).item() == 2.0


# ----- pairs ---------------------------------------------------------------------------------------
def test_pair_refuses_unequal_lengths_and_multi_token_answers(smollm2):
    pair = patching.make_pair(smollm2, *FACT_PAIR, prepend_bos=True)
    assert pair.clean_tokens.shape == pair.corrupted_tokens.shape == (1, 8)
    assert "Col/Space" in " ".join(pair.position_labels(smollm2)).replace(" ", "")
    with pytest.raises(ValueError, match="same number of tokens") as err:
        patching.make_pair(smollm2, "The Colosseum is in", "The Eiffel Tower in", " Rome", " Paris", prepend_bos=True)
    assert "iffel" in str(err.value) and "osse" in str(err.value)  # both tokenizations are shown
    with pytest.raises(ValueError, match="one token"):
        patching.make_pair(smollm2, FACT_PAIR[0], FACT_PAIR[1], " Romeville", " Seattle", prepend_bos=True)
    for pair_text in (FACT_PAIR, BIAS_PAIR):  # the course's own pairs are valid
        patching.make_pair(smollm2, *pair_text, prepend_bos=True)


# ----- the engine and the sweeps on SmolLM2 ---------------------------------------------------------
@pytest.fixture(scope="module")
def fact(smollm2):
    pair = patching.make_pair(smollm2, *FACT_PAIR, prepend_bos=True)
    with torch.no_grad():
        _, clean_cache = smollm2.run_with_cache(pair.clean_tokens)
        _, corrupted_cache = smollm2.run_with_cache(pair.corrupted_tokens)
    metric = patching.logit_diff_metric(pair.clean_answer_id, pair.corrupted_answer_id)
    return pair, clean_cache, corrupted_cache, metric


def test_engine_base_run_matches_the_bridge(smollm2, fact):
    pair, clean_cache, _, _ = fact
    assert LlamaStack.supports(smollm2)
    run = LlamaStack(smollm2.original_model).base_run(pair.clean_tokens)
    with torch.no_grad():
        logits = smollm2(pair.clean_tokens)
    torch.testing.assert_close(run.logits, logits, atol=1e-3, rtol=1e-4)
    for layer in (0, 15, 29):
        torch.testing.assert_close(run.z[layer], clean_cache[f"blocks.{layer}.attn.hook_z"], atol=1e-4, rtol=1e-4)


def test_hooks_the_user_attached_send_sweeps_down_the_hook_path(smollm2):
    """The engine cannot run a user's hooks, so it steps aside while any are attached."""
    smollm2.add_hook("blocks.3.hook_resid_pre", lambda resid, hook: resid)
    try:
        assert not LlamaStack.supports(smollm2)
    finally:
        smollm2.reset_hooks()
    assert LlamaStack.supports(smollm2)


@pytest.mark.parametrize("kind", patching.KINDS)
def test_every_sweep_kind_agrees_with_transformer_lens_on_smollm2(smollm2, fact, kind):
    """Both directions, at random locations (TransformerLens takes a full forward per location)."""
    pair, clean_cache, corrupted_cache, metric = fact
    generator = torch.Generator().manual_seed(len(kind))
    directions = ((pair.corrupted_tokens, clean_cache), (pair.clean_tokens, corrupted_cache))
    if kind == "head_out_by_pos":
        directions = directions[:1]  # 2160 locations: one direction is enough here
    for tokens, cache in directions:
        ours = patching.sweep(smollm2, tokens, cache, kind, metric, progress=False)
        locs = locations(smollm2, kind, tokens.shape[1])
        picked = [locs[i] for i in torch.randperm(len(locs), generator=generator)[:6].tolist()]
        # The first and last layers and the last position are where off-by-one mistakes show.
        picked += [locs[0], locs[-1]]
        expected = tl_at(smollm2, tokens, cache, kind, metric, picked)
        actual = torch.stack([ours[loc] for loc in picked])
        torch.testing.assert_close(actual, expected, atol=2e-4, rtol=1e-4)
    # Patches move the metric (this test would pass vacuously on an all-baseline result).
    assert ours.max() - ours.min() > 0.5


def test_fast_sweep_handles_a_batch_and_a_metric_that_reads_every_position(smollm2):
    """Two prompts at once and a metric that reads every position: the engine's full-logit path."""
    clean = smollm2.to_tokens(["The Colosseum is in", "The Space Needle is in"], prepend_bos=True)
    corrupted = smollm2.to_tokens(["The Space Needle is in", "The Colosseum is in"], prepend_bos=True)
    with torch.no_grad():
        _, cache = smollm2.run_with_cache(clean)
    every_position = lambda logits: logits[:, :, 100].mean() - logits[0, 1:, 2000].sum()  # noqa: E731
    assert not reads_only_last_position(every_position, torch.randn(2, 7, 49152))
    fast = patching.sweep(smollm2, corrupted, cache, "resid_pre", every_position, progress=False)
    picked = [(0, 2), (5, 3), (17, 6), (29, 0), (29, 6)]
    expected = tl_at(smollm2, corrupted, cache, "resid_pre", every_position, picked)
    torch.testing.assert_close(torch.stack([fast[loc] for loc in picked]), expected, atol=5e-4, rtol=1e-4)
    single = patching.one_location(smollm2, corrupted, cache, "resid_pre", (12, 3), every_position)
    assert fast[12, 3].item() == pytest.approx(single, abs=5e-4)


# ----- the toy models: every kind against TransformerLens's own sweep functions ---------------------
@pytest.fixture(scope="module")
def toy_runs(toy2):
    generator = torch.Generator().manual_seed(0)
    block = torch.randint(1, 64, (2, 6), generator=generator)
    clean = torch.cat([torch.zeros(2, 1, dtype=torch.long), block, block], dim=1)
    corrupted = clean.clone()
    corrupted[:, 8:] = torch.randint(1, 64, (2, 5), generator=generator)  # break the repeat
    with torch.no_grad():
        _, cache = toy2.run_with_cache(clean)
    answer = clean[:, -1]
    metric = lambda logits: logits[:, -2].log_softmax(-1).gather(-1, answer[:, None]).mean()  # noqa: E731
    return clean, corrupted, cache, metric


@pytest.mark.parametrize("name", ["get_act_patch_resid_pre", "get_act_patch_attn_out",
                                  "get_act_patch_attn_head_out_all_pos", "get_act_patch_attn_head_out_by_pos"])
def test_drop_in_functions_equal_transformer_lens_on_the_toy_model(toy2, toy_runs, name):
    clean, corrupted, cache, metric = toy_runs
    ours = getattr(patching, name)(toy2, corrupted, cache, metric)
    with torch.no_grad():
        expected = getattr(tl_patching, name)(toy2, corrupted, cache, metric)
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    assert ours.std() > 0.01


def test_attention_only_models_have_no_mlp_to_patch(toy2, toy_runs):
    clean, corrupted, cache, metric = toy_runs
    with pytest.raises(ValueError, match="no MLPs"):
        patching.get_act_patch_mlp_out(toy2, corrupted, cache, metric)


def test_drop_in_refuses_options_it_does_not_support(toy2, toy_runs):
    clean, corrupted, cache, metric = toy_runs
    with pytest.raises(TypeError, match="transformer_lens.patching.get_act_patch_resid_pre"):
        patching.get_act_patch_resid_pre(toy2, corrupted, cache, metric, baseline=True)
    batch_metric = lambda logits: logits[:, -1, 5]  # noqa: E731
    mean = patching.get_act_patch_resid_pre(toy2, corrupted, cache, batch_metric, reduce="mean")
    with torch.no_grad():
        expected = tl_patching.get_act_patch_resid_pre(toy2, corrupted, cache, batch_metric, reduce="mean")
    torch.testing.assert_close(mean, expected)


def test_sweep_says_what_is_wrong_with_its_input(toy2, toy_runs):
    clean, corrupted, cache, metric = toy_runs
    with pytest.raises(ValueError, match="unknown patching kind"):
        patching.sweep(toy2, corrupted, cache, "resid_post", metric)
    with pytest.raises(ValueError, match="same length"):
        patching.sweep(toy2, corrupted[:, :-1], cache, "resid_pre", metric)


# ----- attribution patching ------------------------------------------------------------------------
def test_attribution_is_exact_where_the_metric_is_linear(toy2, toy_runs):
    """The toy model has no norm, so the logits are linear in the last layer's attention output and
    in its heads' z: there the first-order estimate equals the exact patch."""
    clean, corrupted, cache, metric = toy_runs
    logit = lambda logits: logits[:, -2, 7].mean() - logits[:, -2, 9].mean()  # noqa: E731
    for kind in ("attn_out", "head_out_all_pos", "head_out_by_pos"):
        exact = patching.sweep(toy2, corrupted, cache, kind, logit, progress=False)
        estimate = patching.attribution_sweep(toy2, corrupted, cache, kind, logit)
        torch.testing.assert_close(estimate[-1], exact[-1], atol=1e-4, rtol=1e-4)
        assert (estimate[0] - exact[0]).abs().max() > 1e-3  # layer 0 acts through attention: not linear


def test_attribution_matches_exact_patching_for_small_steps(smollm2, fact):
    """A first-order estimate: for a source 1% of the way from the base run, it is right to ~1%."""
    pair, clean_cache, corrupted_cache, metric = fact
    names = [f"blocks.{l}.hook_attn_out" for l in range(30)]
    small = {n: corrupted_cache[n] + 0.01 * (clean_cache[n] - corrupted_cache[n]) for n in names}
    exact = patching.sweep(smollm2, pair.corrupted_tokens, small, "attn_out", metric, progress=False)
    estimate = patching.attribution_sweep(smollm2, pair.corrupted_tokens, small, "attn_out", metric)
    with torch.no_grad():
        base = metric(smollm2(pair.corrupted_tokens))
    assert (exact - base).abs().max() > 1e-3
    assert (estimate - exact).abs().max() < 0.05 * (exact - base).abs().max()


def test_several_metrics_from_one_sweep_and_windows_of_one_layer(smollm2, fact):
    pair, clean_cache, _, metric = fact
    metrics = {"logit_diff": metric, "prob": patching.prob_metric(pair.clean_answer_id)}
    both = patching.sweep(smollm2, pair.corrupted_tokens, clean_cache, "mlp_out", metrics, progress=False)
    alone = patching.sweep(smollm2, pair.corrupted_tokens, clean_cache, "mlp_out", metrics["prob"], progress=False)
    torch.testing.assert_close(both["prob"], alone)
    # A window of one layer is the single-location sweep at that position.
    window = patching.window_sweep(smollm2, pair.corrupted_tokens, clean_cache, "mlp_out", 4, 1, metric)
    torch.testing.assert_close(window, both["logit_diff"][:, 4], atol=2e-4, rtol=1e-4)
    assert list(patching.sweeps.window_layers(0, 10, 30)) == list(range(0, 5))
    assert list(patching.sweeps.window_layers(15, 10, 30)) == list(range(10, 20))
    assert list(patching.sweeps.window_layers(29, 10, 30)) == list(range(24, 30))
