"""IOI head analysis: attention read-outs, OV copy scores, the head classes, resample ablation, and
the circuit the notebook finds on SmolLM2 (each claim of notebook 05 about it, measured)."""

from __future__ import annotations

import pytest
import torch

from course_lib import ioi_circuit
from course_lib.ablation import ablated_logits
from course_lib.data import ioi
from course_lib.faithfulness import faithfulness
from course_lib.heads import repeated_random_tokens
from course_lib.patching import path
from course_lib.patching.metrics import logit_diff


def test_classes_follow_the_table():
    effect = torch.tensor([[-0.9, 0.5, -0.3, 0.25], [0.6, -0.095, 0.4, -0.2]])
    attn_io = torch.tensor([[0.5, 0.4, 0.1, 0.05], [0.02, 0.6, 0.3, 0.19]])
    attn_s = torch.tensor([[0.1, 0.1, 0.6, 0.5], [0.03, 0.1, 0.25, 0.1]])
    classes = ioi_circuit.classify_direct_heads(effect, attn_io, attn_s, threshold=0.1, min_attention=0.2)
    assert classes == {
        "L0H0": "name mover", "L1H0": "other", "L0H1": "negative name mover", "L1H2": "negative name mover",
        "L0H2": "S suppressor", "L0H3": "S mover", "L1H3": "other",
    }
    assert list(classes) == ["L0H0", "L1H0", "L0H1", "L1H2", "L0H2", "L0H3", "L1H3"]  # by |effect|
    with pytest.raises(ValueError, match="shapes differ"):
        ioi_circuit.classify_direct_heads(effect, attn_io[:1], attn_s)


def test_attention_to_reads_the_pattern(toy2):
    tokens = repeated_random_tokens(4, 10, 64, 0, seed=1)
    _, cache = toy2.run_with_cache(tokens)
    got = ioi_circuit.attention_to(toy2, tokens, 15, torch.tensor([14, 14, 5, 5]))
    pattern = cache["blocks.1.attn.hook_pattern"]
    expected = torch.stack([pattern[0, :, 15, 14], pattern[1, :, 15, 14], pattern[2, :, 15, 5], pattern[3, :, 15, 5]]).mean(0)
    torch.testing.assert_close(got[1], expected)
    # The previous-token head L0H1 attends from 15 to 14 (first two prompts), not to 5 (the others).
    assert 0.45 < float(got[0, 1]) < 0.52


def test_resample_ablation_takes_the_heads_value_from_the_paired_prompt(toy2):
    tokens = repeated_random_tokens(3, 10, 64, 0, seed=2)
    other = repeated_random_tokens(3, 10, 64, 0, seed=3)
    with torch.no_grad():
        same = ablated_logits(toy2, tokens, [(0, 1)], "resample", tokens)
        torch.testing.assert_close(same, toy2(tokens))
        _, cache = toy2.run_with_cache(other)

        def hook(z, hook):
            z[:, :, 1] = cache["blocks.0.attn.hook_z"][:, :, 1]
            return z

        expected = toy2.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", hook)])
        torch.testing.assert_close(ablated_logits(toy2, tokens, [(0, 1)], "resample", other), expected)
    with pytest.raises(ValueError, match="row by row"):
        ablated_logits(toy2, tokens, [(0, 1)], "resample", other[:2])


@pytest.fixture(scope="module")
def ioi_setup(smollm2):
    with torch.no_grad():
        dataset = ioi.ioi_dataset(smollm2, 12, seed=0)
        abc = ioi.corrupt(smollm2, dataset, "abc")
        metric = lambda logits: logit_diff(logits, dataset.io_ids, dataset.s_ids)
        clean = float(metric(smollm2(dataset.tokens)))
    return dataset, abc, metric, clean


def test_name_movers_copy_and_the_s_suppressor_suppresses(smollm2, ioi_setup):
    dataset, *_ = ioi_setup
    names = torch.tensor([smollm2.to_single_token(" " + n) for n in ioi.NAMES])
    with torch.no_grad():
        scores = ioi_circuit.ov_name_scores(smollm2, dataset.tokens, dataset.io_pos, dataset.io_ids, names, [(23, 0), (23, 3), (0, 0)])
        attn_io = ioi_circuit.attention_to(smollm2, dataset.tokens, ioi.POS_END, dataset.io_pos)
        attn_s = ioi_circuit.attention_to(smollm2, dataset.tokens, ioi.POS_END, ioi.POS_S2)
    assert scores[(23, 0)][0] > 0.9 and scores[(23, 3)][1] > 0.9, scores  # measured 1.0 and 1.0
    assert scores[(0, 0)][0] < 0.5 and scores[(0, 0)][1] < 0.5, scores
    assert float(attn_io[23, 0]) > 0.4 > float(attn_s[23, 0]) and float(attn_s[23, 3]) > 0.4 > float(attn_io[23, 3])


def test_the_circuit_notebook_05_finds(smollm2, ioi_setup):
    """S-inhibition, induction and previous-token paths as measured here (12 prompts): L20H0 -> name
    movers' queries -2.0, L17H4 -> S-inhibition values -0.5, L16H0 -> induction keys -1.6."""
    dataset, abc, metric, clean = ioi_setup
    movers = [(23, 0), (23, 1), (23, 2), (23, 7), (23, 3)]
    caches = path.path_patching_caches(smollm2, dataset.tokens, abc.tokens)
    s1 = torch.where(dataset.io_pos == ioi.POS_NAME1, ioi.POS_NAME2, ioi.POS_NAME1)

    def effect(sender, receivers, which, pos):
        return path.path_patch(smollm2, dataset.tokens, abc.tokens, [sender], metric, receivers, which, pos, caches=caches) - clean

    with torch.no_grad():
        assert effect((20, 0), movers, "q", ioi.POS_END) < -1.0
        assert abs(effect((20, 5), movers, "q", ioi.POS_END)) < 0.2  # a head that does not attend to S2 much
        assert effect((17, 4), [(20, 0), (19, 2)], "v", ioi.POS_S2) < -0.25
        assert effect((16, 0), [(17, 4), (18, 6)], "k", s1 + 1) < -0.8
        assert abs(effect((11, 1), [(17, 4), (18, 6)], "k", s1 + 1)) < 0.2  # attends to the previous token, no path

        evaluation = ioi.ioi_dataset(smollm2, 36, seed=5)
        reference = ioi.corrupt(smollm2, evaluation, "abc", seed=6)
        groups = [p.template for p in evaluation.prompts]
        ref_groups = [p.template for p in reference.prompts]
        eval_metric = lambda logits: logit_diff(logits, evaluation.io_ids, evaluation.s_ids)
        circuit = movers + [(20, 0), (19, 2), (17, 4), (18, 6), (8, 1), (9, 2), (16, 0)]
        kept = faithfulness(smollm2, evaluation.tokens, groups, reference.tokens, ref_groups, circuit, eval_metric)
        without = faithfulness(smollm2, evaluation.tokens, groups, reference.tokens, ref_groups, [h for h in circuit if h != (23, 3)], eval_metric)
    assert kept.ratio > 0.6 and without.ratio < 0.45, (kept.ratio, without.ratio)  # measured 0.76 and 0.20
