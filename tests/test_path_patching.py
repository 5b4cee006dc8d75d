"""Path patching on the toy 2-layer model, where the circuit is known: previous-token head -> induction head's key."""

from __future__ import annotations

import pytest
import torch

from course_lib import heads
from course_lib.patching import path

HALF = 20


@pytest.fixture(scope="module")
def setup(toy2):
    clean = heads.repeated_random_tokens(16, HALF, toy2.cfg.d_vocab, 0, seed=3)
    corrupted = heads.repeated_random_tokens(16, HALF, toy2.cfg.d_vocab, 0, seed=4)  # another random repeat
    scores_prev = heads.previous_token_scores(toy2, clean)
    scores_ind = heads.induction_scores(toy2, clean)
    prev_head = int(scores_prev[0].argmax())
    ind_head = int(scores_ind[1].argmax())
    targets = clean[:, HALF + 2 :]  # the tokens the second copy predicts

    def metric(logits):
        """Mean log-probability of the right next token on the second copy (positions HALF+1..)."""
        log_probs = logits[:, HALF + 1 : -1].log_softmax(-1)
        return log_probs.gather(-1, targets[..., None]).mean()

    with torch.no_grad():
        clean_value = float(metric(toy2(clean)))
    return dict(clean=clean, corrupted=corrupted, prev=prev_head, ind=ind_head, metric=metric, clean_value=clean_value)


def _drop(toy2, s, senders, receivers=None, receiver_input="q"):
    value = path.path_patch(toy2, s["clean"], s["corrupted"], senders, s["metric"], receivers, receiver_input)
    return s["clean_value"] - value


def test_the_toy_has_the_heads_the_test_is_about(toy2, setup):
    assert setup["prev"] == 1  # L0H1, as the course's notebooks find it
    assert setup["clean_value"] > -0.5, "the toy predicts the repeat"


def test_previous_token_head_matters_through_the_induction_heads_keys(toy2, setup):
    """K-composition, measured path by path (all four layer-1 heads of this toy do induction).

    Measured here: L0H1 -> the layer-1 keys costs 3.4 nats of log-probability on the repeat, its
    path through the queries 1.8, through the values and straight to the logits about 0; into
    the keys, the other layer-0 heads cost at most 1.9.
    """
    s = setup
    layer1 = [(1, h) for h in range(toy2.cfg.n_heads)]
    key = _drop(toy2, s, [(0, s["prev"])], layer1, "k")
    query = _drop(toy2, s, [(0, s["prev"])], layer1, "q")
    value = _drop(toy2, s, [(0, s["prev"])], layer1, "v")
    direct = _drop(toy2, s, [(0, s["prev"])])
    others = [_drop(toy2, s, [(0, h)], layer1, "k") for h in range(toy2.cfg.n_heads) if h != s["prev"]]
    assert key > 2.0, f"the induction heads' keys need the previous-token head (drop {key:.2f})"
    assert key > 1.4 * query and key > 1.4 * max(others), (key, query, others)
    assert abs(value) < 0.05 * key and abs(direct) < 0.05 * key, (value, direct)


def test_one_receiver_at_a_time_underestimates_redundant_heads(toy2, setup):
    """Each induction head alone carries little of the effect: the other three still find the repeat."""
    s = setup
    together = _drop(toy2, s, [(0, s["prev"])], [(1, h) for h in range(toy2.cfg.n_heads)], "k")
    alone = [_drop(toy2, s, [(0, s["prev"])], [(1, h)], "k") for h in range(toy2.cfg.n_heads)]
    assert sum(alone) < 0.5 * together, (alone, together)


def test_step_two_matches_the_residual_stream_algebra(toy2, setup):
    """Everything frozen but the sender: the receiver's key = (clean resid + sender's delta) @ W_K."""
    s = setup
    layer0 = s["prev"]
    with torch.no_grad():
        _, clean_cache = toy2.run_with_cache(s["clean"])
        _, corrupted_cache = toy2.run_with_cache(s["corrupted"])
        delta = torch.einsum(
            "bpd,dm->bpm",
            corrupted_cache["blocks.0.attn.hook_z"][:, :, layer0] - clean_cache["blocks.0.attn.hook_z"][:, :, layer0],
            toy2.W_O[0, layer0],
        )
        key = torch.einsum("bpm,md->bpd", clean_cache["blocks.1.hook_resid_pre"] + delta, toy2.W_K[1, s["ind"]])

        def patch(k, hook):
            k[:, :, s["ind"]] = key
            return k

        expected = float(s["metric"](toy2.run_with_hooks(s["clean"], fwd_hooks=[("blocks.1.attn.hook_k", patch)])))
    got = path.path_patch(toy2, s["clean"], s["corrupted"], [(0, layer0)], s["metric"], [(1, s["ind"])], "k")
    assert got == pytest.approx(expected, abs=1e-4)


def test_a_sender_patched_with_its_own_clean_value_changes_nothing(toy2, setup):
    s = setup
    got = path.path_patch(toy2, s["clean"], s["clean"], [(0, s["prev"])], s["metric"], [(1, s["ind"])], "k")
    assert got == pytest.approx(s["clean_value"], abs=1e-4)
    assert path.path_patch(toy2, s["clean"], s["clean"], [(0, 0), (0, 2)], s["metric"]) == pytest.approx(s["clean_value"], abs=1e-4)


def test_receiver_positions_restrict_the_patch(toy2, setup):
    """Patching the key only at positions the induction head never attends to from the repeat changes nothing."""
    s = setup
    at_bos = path.path_patch(toy2, s["clean"], s["corrupted"], [(0, s["prev"])], s["metric"], [(1, s["ind"])], "k", receiver_pos=0)
    everywhere = path.path_patch(toy2, s["clean"], s["corrupted"], [(0, s["prev"])], s["metric"], [(1, s["ind"])], "k")
    assert abs(at_bos - s["clean_value"]) < 0.2 * abs(everywhere - s["clean_value"])


def test_grouped_query_attention_helpers(toy2, smollm2):
    assert path.n_kv_heads(toy2) == toy2.cfg.n_heads and path.kv_group(toy2, 2) == [2]
    assert path.n_kv_heads(smollm2) == 3
    assert [path.kv_head(smollm2, h) for h in range(9)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert path.kv_group(smollm2, 4) == [3, 4, 5]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(senders=[(1, 0)], receivers=[(0, 1)]), "later layer"),
        (dict(senders=[(0, 9)]), "not a head"),
        (dict(senders=[]), "at least one sender"),
        (dict(senders=[(0, 1)], receivers=[(1, 0)], receiver_input="z"), "receiver_input"),
    ],
)
def test_bad_arguments_are_named(toy2, setup, kwargs, message):
    with pytest.raises(ValueError, match=message):
        path.path_patch(toy2, setup["clean"], setup["corrupted"], metric=setup["metric"], **kwargs)


def test_all_heads_to_the_logits_at_once_equals_one_path_patch_per_head(toy2, setup):
    s = setup
    ids = s["clean"][:, 3]
    metric = lambda logits: logits[:, -1].gather(-1, ids[:, None]).mean()  # reads the last position only
    fast = path.path_patch_heads_to_logits(toy2, s["clean"], s["corrupted"], metric)
    slow = torch.tensor([
        [path.path_patch(toy2, s["clean"], s["corrupted"], [(layer, head)], metric) for head in range(toy2.cfg.n_heads)]
        for layer in range(toy2.cfg.n_layers)
    ])
    assert fast.shape == (toy2.cfg.n_layers, toy2.cfg.n_heads)
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-4)
    assert float(fast.std()) > 0.05, "a test that heads differ from one another"
    with pytest.raises(ValueError, match="last position"):
        path.path_patch_heads_to_logits(toy2, s["clean"], s["corrupted"], s["metric"])  # reads the repeat


@pytest.fixture(scope="module")
def ioi_pair(smollm2):
    from course_lib.data import ioi
    from course_lib.patching import metrics

    clean = ioi.ioi_dataset(smollm2, 12, seed=0)
    abc = ioi.corrupt(smollm2, clean, "abc")
    metric = lambda logits: metrics.logit_diff(logits, clean.io_ids, clean.s_ids)
    return clean.tokens, abc.tokens, metric


def test_smollm2_heads_to_logits_at_once_agree_with_single_path_patches(smollm2, ioi_pair):
    clean, abc, metric = ioi_pair
    fast = path.path_patch_heads_to_logits(smollm2, clean, abc, metric)
    assert fast.shape == (30, 9)
    for head in [(23, 3), (29, 1)]:  # the largest direct effects measured here
        assert float(fast[head]) == pytest.approx(path.path_patch(smollm2, clean, abc, [head], metric), abs=2e-3)
    with torch.no_grad():
        clean_value = float(metric(smollm2(clean)))
    assert clean_value - float(fast.min()) > 1.0, "some head's direct path carries the answer"


def test_smollm2_key_paths_are_shared_by_a_key_value_group(smollm2, ioi_pair):
    """Grouped-query attention: query heads 3, 4, 5 read one key head, so their key paths are one path."""
    clean, abc, metric = ioi_pair
    k = [path.path_patch(smollm2, clean, abc, [(10, 0)], metric, [(12, h)], "k") for h in (3, 5)]
    assert k[0] == pytest.approx(k[1], abs=1e-5)


def test_reused_caches_give_the_same_answer(toy2, setup):
    s = setup
    caches = path.path_patching_caches(toy2, s["clean"], s["corrupted"])
    for receivers, which in ([(1, h) for h in range(4)], "k"), (None, "q"):
        fresh = path.path_patch(toy2, s["clean"], s["corrupted"], [(0, 1)], s["metric"], receivers, which)
        reused = path.path_patch(toy2, s["clean"], s["corrupted"], [(0, 1)], s["metric"], receivers, which, caches=caches)
        assert reused == pytest.approx(fresh, abs=1e-6)
        if which == "k":  # a path that matters: the cached run really patched something
            assert reused < s["clean_value"] - 0.5
