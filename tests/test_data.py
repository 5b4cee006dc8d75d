"""The course's own data: probing words are single tokens, and lens evaluation text never
overlaps the tuned lens's training text."""

from __future__ import annotations

import re

import pytest

from course_lib.data import probing as probing_data
from course_lib.data.lens_corpus import EVAL_PROMPTS, HELD_OUT_TEXTS, TRAIN_TEXTS


def _word_ngrams(text: str, n: int = 4) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z0-9']+", text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def test_lens_evaluation_text_shares_no_four_words_with_the_training_text():
    training = set().union(*(_word_ngrams(t) for t in TRAIN_TEXTS))
    evaluation = list(HELD_OUT_TEXTS) + [prompt + answer for prompt, answer in EVAL_PROMPTS]
    for text in evaluation:
        shared = _word_ngrams(text) & training
        assert not shared, f"{text!r} shares {sorted(shared)[:3]} with the training texts"
        assert not any(text.lower() in t.lower() or t.lower() in text.lower() for t in TRAIN_TEXTS)


def test_the_ngram_check_would_catch_the_old_leak():
    """The old corpus had the weekday prompt inside a training sentence; the check above sees that."""
    leaked = "Monday, Tuesday, Wednesday, Thursday, Friday, Saturday and Sunday are the days of the week."
    assert _word_ngrams("Monday, Tuesday, Wednesday, Thursday, Friday") & _word_ngrams(leaked)


def _single(model, text: str) -> bool:
    return model.to_tokens(text, prepend_bos=False).shape[1] == 1


def test_every_probed_word_is_a_single_token_in_every_form(smollm2):
    for word in probing_data.WORDS_FOR_CASE:
        assert _single(smollm2, " " + word) and _single(smollm2, " " + word.capitalize()), word
    for pair in probing_data.SINGULAR_PLURAL + probing_data.ATTRACTORS:
        for word in pair:
            assert _single(smollm2, " " + word), word
    for city in probing_data.EUROPEAN_CITIES + probing_data.OTHER_CITIES:
        assert _single(smollm2, " " + city), city


@pytest.mark.parametrize("task", sorted(probing_data.TASKS))
def test_the_probed_token_is_the_last_token_of_each_text(smollm2, task):
    """The probe reads the last position: for the word tasks, that is the varied word itself."""
    for text, _, word in probing_data.TASKS[task]():
        tokens = smollm2.to_str_tokens(text, prepend_bos=True)
        if task == "capitalised":
            assert tokens[-1] == " " + word, (text, tokens)
        elif task == "subject_number":
            assert tokens[-1] in {" " + w for pair in probing_data.ATTRACTORS for w in pair}, (text, tokens)
        else:
            assert tokens[-1] == " in" and " " + word in tokens, (text, tokens)
