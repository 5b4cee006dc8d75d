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


def test_the_capital_answer_survives_nonsense_question_words(smollm2):
    variants = whatif.replace_words("Question: What is the capital of France?\nAnswer: The capital is",
                                    {"nonsense": ("What is the capital", "How fast speaking are the bricks")})
    table = whatif.answer_stability(smollm2, variants, prepend_bos=True)
    assert table["same answer"].all() and table.loc["original", "top-1"] == " Paris"


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


def test_control_labels_are_constant_per_type():
    types = ["a", "b", "a", "c", "b", "a"]
    labels = probing.control_labels(types, seed=1)
    assert labels[0] == labels[2] == labels[5] and labels[1] == labels[4]
    assert np.array_equal(labels, probing.control_labels(types, seed=1))


def test_center_of_gravity_known_values():
    assert probing.center_of_gravity([0.5, 0.5, 1.0, 1.0]) == pytest.approx(2.0)
    assert probing.center_of_gravity([0.5, 1.0, 0.5, 1.0]) == pytest.approx(1.0)  # a dip is not progress
    assert probing.center_of_gravity([0.5, 0.75, 1.0]) == pytest.approx(1.5)
    assert probing.center_of_gravity([0.9, 0.9]) == 0.0


def test_probe_accuracy_separable_and_noise():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    separable = rng.normal(size=(200, 10)) + 4 * labels[:, None]
    noise = rng.normal(size=(200, 10))
    train, test = probing.split_indices(200, seed=0)
    assert probing.probe_accuracy(separable, labels, train, test) > 0.95
    assert probing.probe_accuracy(noise, labels, train, test) < 0.7


def test_last_token_residuals_batched_equals_one_at_a_time(smollm2):
    texts = ["Oslo is a city in", "The key near the cabinets", "Hi"]
    batched = probing.last_token_residuals(smollm2, texts, prepend_bos=True, batch_size=3)
    assert batched.shape == (31, 3, 576)
    for i, text in enumerate(texts):
        single = probing.last_token_residuals(smollm2, [text], prepend_bos=True)
        torch.testing.assert_close(batched[:, i], single[:, 0], atol=1e-3, rtol=1e-3)


@pytest.mark.slow
def test_surface_task_is_solved_earlier_than_the_deeper_tasks(smollm2):
    cog = {}
    for name, make in TASKS.items():
        data = make()
        residuals = probing.last_token_residuals(smollm2, [t for t, _, _ in data], prepend_bos=True)
        labels = np.array([l for _, l, _ in data])
        types = [w for _, _, w in data]
        runs = [probing.probe_every_layer(residuals, labels, *probing.split_by_type(types, seed=s)) for s in range(3)]
        accuracy = np.mean(runs, axis=0)
        assert accuracy.max() > 0.85, name  # every task is decodable somewhere
        cog[name] = probing.center_of_gravity(accuracy)
    assert cog["capitalised"] < cog["subject_number"] and cog["capitalised"] < cog["in_europe"]
