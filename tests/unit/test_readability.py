"""The Flesch–Kincaid grade of prompt texts, counted by hand."""

import math

import pytest

from promptcl.prompts.readability import flesch_kincaid_grade, sentences, syllables, words


@pytest.mark.parametrize(
    ("word", "count"),
    [("cat", 1), ("make", 1), ("table", 2), ("review", 2), ("classify", 3), ("the", 1)],
)
def test_syllables_by_vowel_groups(word, count):
    assert syllables(word) == count


def test_grade_of_hand_counted_texts():
    # 6 words, 1 sentence, 6 syllables: 0.39*6 + 11.8*1 - 15.59
    assert flesch_kincaid_grade("The cat sat on the mat.") == pytest.approx(-1.45)
    text = "Read the review. Then classify it."  # 6 words, 2 sentences, 1+1+2+1+3+1 = 9 syllables
    assert words(text) == ["Read", "the", "review", "Then", "classify", "it"]
    assert sentences(text) == 2
    assert flesch_kincaid_grade(text) == pytest.approx(0.39 * 3 + 11.8 * 9 / 6 - 15.59)


def test_longer_words_and_sentences_grade_higher():
    simple = "Say if the text is good or bad."
    dense = (
        "Determine, considering the entirety of the customer's evaluation, whether the "
        "sentiment expressed throughout the commentary is predominantly favourable."
    )
    assert flesch_kincaid_grade(dense) > flesch_kincaid_grade(simple) + 10


def test_no_words_no_grade():
    assert math.isnan(flesch_kincaid_grade("123 ..."))
