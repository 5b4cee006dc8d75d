"""What-if reports and probing: exact numbers against direct computation, splits, controls."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from course_lib import probing, whatif
from course_lib.data.probing import TASKS


def test_replace_words_and_bad_edit():
    variants = whatif.replace_words("The nurse said", {"doctor": ("nurse", "doctor")})
    assert variants == {"original": "The nurse said", "doctor": "The doctor said"}
    with pytest.raises(ValueError, match="'pilot' does not occur"):
        whatif.replace_words("The nurse said", {"x": ("pilot", "doctor")})


def test_next_token_report_matches_direct_computation(smollm2):
    variants = whatif.replace_words("The nurse entered the room. Then", {"doctor": ("nurse", "doctor")})
    report = whatif.next_token_report(smollm2, variants, [" she", " he"], prepend_bos=True)
    she, he = (smollm2.to_tokens(w, prepend_bos=False)[0, 0] for w in (" she", " he"))
    with torch.no_grad():
        logits = smollm2(smollm2.to_tokens("The doctor entered the room. Then", prepend_bos=True))[0, -1]
    assert report.loc["doctor", "logit diff ' she'-' he'"] == pytest.approx(float(logits[she] - logits[he]), abs=1e-4)
    assert report.loc["doctor", "p(' she')"] == pytest.approx(float(logits.softmax(-1)[she]), abs=1e-5)
    assert report.loc["original", "change"] == 0 and report.loc["doctor", "change"] < 0  # the bias of the lecture
    with pytest.raises(ValueError, match="single token"):
        whatif.next_token_report(smollm2, variants, [" Colosseum", " he"], prepend_bos=True)


QA = "Q: What is the currency of Japan?\nA: The yen\nQ: What is the main language of Brazil?\nA: Portuguese\nQ: {}\nA:"


def test_the_model_reads_the_task_word_in_a_valid_perturbation_test(smollm2):
    """Notebook 01's claims: with the task word only in the question, changing it changes the
    answer, and nonsense in its place removes " Paris"."""
    questions = {"original": "What is the capital of France?", "currency": "What is the currency of France?",
                 "language": "What is the language of France?", "asymmetric": "What is the asymmetric of France?",
                 "blicket": "What is the blicket of France?", "deleted": "What is the of France?",
                 "bricks": "How fast speaking are the bricks of France?", "Japan": "What is the capital of Japan?"}
    table = whatif.answer_stability(smollm2, {k: QA.format(q) for k, q in questions.items()}, prepend_bos=True)
    assert table.loc["original", "top-1"] == " Paris" and table.loc["original", "p(top-1)"] > 0.9
    assert table.loc["currency", "top-1"] == " Euro" and table.loc["language", "top-1"] == " French"
    assert table.loc["Japan", "top-1"] == " Tokyo"
    for nonsense in ("asymmetric", "blicket", "deleted", "bricks"):
        assert table.loc[nonsense, "p(original answer)"] < 0.05, nonsense
    assert "capital" not in QA and "capital" not in QA.split("{}")[1]  # the task word occurs only in the question


def test_datasets_are_balanced_and_well_formed():
    for name, make in TASKS.items():
        data = make()
        labels = [label for _, label, _ in data]
        assert set(labels) == {0, 1} and abs(np.mean(labels) - 0.5) < 0.01, name
        assert all(isinstance(text, str) and word for text, _, word in data)


def test_split_by_type_keeps_words_apart():
    types = ["Paris", "paris", "Rome", "Oslo", "Rome", "Lima", "Oslo", "Cairo"]
    train, test = probing.split_by_type(types, test_fraction=0.4, seed=3)
    assert not {types[i].lower() for i in train} & {types[i].lower() for i in test}
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(len(types)))


def test_control_labels_are_constant_per_type_and_follow_the_stated_recipe():
    types = ["b", "a", "b", "c", "a", "b"]
    labels = probing.control_labels(types, seed=1)
    assert labels[0] == labels[2] == labels[5] and labels[1] == labels[4]
    assert np.array_equal(labels, probing.control_labels(types, seed=1))
    drawn = np.random.default_rng(1).integers(0, 2, size=3)  # for the sorted types a, b, c
    assert [labels[1], labels[0], labels[3]] == drawn.tolist()


def test_selectivity_is_task_minus_control_accuracy():
    rng = np.random.default_rng(0)
    types = [f"w{i % 20}" for i in range(200)]
    vectors = rng.normal(size=(20, 8))
    features = np.array([vectors[int(t[1:])] for t in types]) + 0.3 * rng.normal(size=(200, 8))
    labels = (features[:, 0] > 0).astype(int)
    train, test = probing.split_indices(200, seed=0)
    result = probing.selectivity(features, labels, types, train, test, seed=2)
    task = probing.probe_accuracy(features, labels, train, test)
    control = probing.probe_accuracy(features, probing.control_labels(types, 2), train, test)
    assert result == {"task": task, "control": control, "selectivity": task - control}
    assert control > 0.65  # far above chance: word identity is easy to memorise here, the point of the control task


def test_expected_layer_known_values_and_range():
    assert probing.expected_layer([0.5, 0.5, 1.0, 1.0]) == pytest.approx(2.0)
    assert probing.expected_layer([0.5, 1.0, 0.5, 1.0]) == pytest.approx(1.0)  # a dip is not progress
    assert probing.expected_layer([0.5, 0.75, 1.0]) == pytest.approx(1.5)
    assert np.isnan(probing.expected_layer([0.9, 0.9])) and np.isnan(probing.expected_layer([1.0, 0.8, 0.9]))
    rng = np.random.default_rng(3)
    for _ in range(50):  # always inside Tenney's range 1..L when defined
        scores = rng.uniform(size=rng.integers(2, 12))
        value = probing.expected_layer(scores)
        assert np.isnan(value) or 1 <= value <= len(scores) - 1


def test_center_of_gravity_of_mixing_weights():
    assert probing.center_of_gravity(torch.tensor([0.0, 0.0, 1.0, 0.0])) == pytest.approx(2.0)
    assert probing.center_of_gravity(torch.tensor([0.25, 0.25, 0.25, 0.25])) == pytest.approx(1.5)


def _planted_layer_data(n: int = 240, n_layers: int = 6, signal_layer: int = 3, seed: int = 0):
    """Residuals where only `signal_layer` carries the label (and every later layer a noisy copy of it)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    residuals = torch.tensor(rng.normal(size=(n_layers + 1, n, 16)), dtype=torch.float32)
    for layer in range(signal_layer, n_layers + 1):
        residuals[layer, :, 0] += torch.tensor(3.0 * (labels - 0.5), dtype=torch.float32)
    return residuals, labels


def test_cumulative_probes_find_the_layer_that_adds_the_signal():
    residuals, labels = _planted_layer_data()
    train, test = probing.split_indices(len(labels), seed=0)
    scores, weights = probing.cumulative_probe_scores(residuals, labels, train, test)
    assert scores.shape == (7,) and weights.shape == (7, 7)
    assert scores[:3].max() < 0.7 and scores[3:].min() > 0.9
    assert probing.expected_layer(scores) == pytest.approx(3.0, abs=0.3)
    torch.testing.assert_close(weights.sum(-1), torch.ones(7))
    assert torch.all(weights.triu(diagonal=1) == 0)  # probe l mixes layers 0..l only
    assert probing.center_of_gravity(weights[-1]) >= 3.0  # the all-layer probe uses layers with the signal


def test_scalar_mix_on_single_layers_matches_scikit_learn():
    """One-hot masks make independent per-layer probes; same objective as probe_accuracy."""
    residuals, labels = _planted_layer_data(signal_layer=2, seed=1)
    train, test = probing.split_indices(len(labels), seed=1)
    ours, _ = probing.scalar_mix_probes(residuals, labels, train, test, torch.eye(7))
    theirs = probing.probe_every_layer(residuals, labels, train, test)
    assert np.abs(ours - theirs).max() <= 0.03


@pytest.fixture(scope="module")
def probing_data(smollm2):
    out = {}
    for name, make in TASKS.items():
        data = make()
        residuals = probing.last_token_residuals(smollm2, [t for t, _, _ in data], prepend_bos=True)
        out[name] = (residuals, np.array([l for _, l, _ in data]), [w for _, _, w in data])
    return out


@pytest.mark.slow
def test_notebook_01_probing_claims(probing_data):
    """What notebook 01 says of its probes on SmolLM2: every task is decodable; the surface task is
    decodable at the embeddings for most unseen words; its centre of gravity is the lowest of the
    three in both splits; memorisation (the control task) matches the subject_number probe at the
    last layer and scores far above chance elsewhere."""
    cog = {}
    for name, (residuals, labels, types) in probing_data.items():
        runs = [probing.cumulative_probe_scores(residuals, labels, *probing.split_by_type(types, seed=s)) for s in range(2)]
        assert min(scores[-1] for scores, _ in runs) > 0.95, name
        cog[name] = [probing.center_of_gravity(weights[-1]) for _, weights in runs]
        if name == "capitalised":
            assert all(scores[0] >= 0.7 for scores, _ in runs) and all(scores[12] > 0.95 for scores, _ in runs)
    for split in range(2):
        assert cog["capitalised"][split] + 5 < min(cog["subject_number"][split], cog["in_europe"][split]), cog
    residuals, labels, types = probing_data["subject_number"]
    train, test = probing.split_indices(len(labels), seed=0)
    last = probing.selectivity(residuals[30].numpy(), labels, types, train, test, seed=0)
    assert last["task"] > 0.95 and last["selectivity"] < 0.05
    for name, (residuals, labels, types) in probing_data.items():
        train, test = probing.split_indices(len(labels), seed=0)
        assert probing.selectivity(residuals[15].numpy(), labels, types, train, test, seed=0)["control"] > 0.6, name
