"""Flesch–Kincaid grade level of a prompt text, a model-free measurement of the study.

FK grade = 0.39 · words/sentences + 11.8 · syllables/words − 15.59 (Kincaid et al., 1975).
Syllables are counted with the usual vowel-group rule (a group of vowels is one syllable, a final
silent "e" is not, every word has at least one), the same approximation textstat-like tools use;
it is exact on common words and good enough to rank paraphrases of one instruction.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")
_VOWEL_GROUP = re.compile(r"[aeiouy]+")


def syllables(word: str) -> int:
    """Syllables of one English word by the vowel-group rule."""
    w = word.lower().strip("'")
    if not w:
        return 0
    count = len(_VOWEL_GROUP.findall(w))
    if w.endswith("e") and not w.endswith(("le", "ee", "ye")) and count > 1:
        count -= 1  # silent final e: "make", "phrase"
    return max(count, 1)


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def sentences(text: str) -> int:
    """Sentence count: terminal punctuation marks, at least one for non-empty text."""
    stripped = text.strip()
    if not stripped:
        return 0
    return max(len(_SENTENCE_END.findall(stripped)), 1)


def flesch_kincaid_grade(text: str) -> float:
    """The FK grade of ``text``; NaN for a text without words."""
    found = words(text)
    if not found:
        return float("nan")
    n_syllables = sum(syllables(w) for w in found)
    return 0.39 * len(found) / sentences(text) + 11.8 * n_syllables / len(found) - 15.59
