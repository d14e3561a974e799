"""Instance-level scores and continual-learning metrics.

Generation scores follow the SuperNI evaluation, which the SAPO reference reuses (SQuAD-style
normalisation without article removal, ROUGE-L with stemming, max over references), so numbers
are comparable with published results; they and rank accuracy are on a 0-100 scale, the gold
answer's log-likelihood in nats per token (:data:`REGISTRY`). Continual metrics are
expressed as coefficient matrices over the accuracy matrix so that one linear form gives both the
value and, assuming independent cells, its standard error.
"""

from __future__ import annotations

import functools
import math
import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

#: How an evaluation measures a state: greedy ``generation`` scored against the references, or
#: the ``likelihood`` of the gold answer (and of every label) in one teacher-forced pass.
OUTCOMES = ("generation", "likelihood")


@dataclass(frozen=True)
class Metric:
    """An instance score: which evaluation computes it, and what its numbers mean.

    ``binary`` scores are 0 or 100 per item (binomial standard errors); ``labels_only`` ones
    exist only for tasks with a label set (NaN otherwise); ``bounded`` ones lie in 0-100 (figures
    draw them on that scale), the others (a log-likelihood) on their own; ``chance`` ones are read
    against the majority-class rate; ``compared`` ones are compared with the baseline unless
    ``comparison.metrics`` names others. Registering one in :data:`REGISTRY` is all it takes for
    R, AP/BWT/FWT/F, the comparisons, the figures and ``show`` to carry it (docs/development.md,
    "Adding a metric")."""

    name: str
    outcome: str
    description: str
    binary: bool = False
    labels_only: bool = False
    bounded: bool = True
    chance: bool = True
    compared: bool = True
    unit: str = "points (0-100)"
    decimals: int = 1
    #: a generation metric's item score from (prediction, references, labels); None for those
    #: the likelihood pass computes (:mod:`promptcl.evaluate.likelihood`)
    score: Callable[[str, Sequence[str], Sequence[str]], float] | None = None


CONTINUAL_METRICS = ("AP", "BWT", "FWT", "F", "BWT_avg", "FWT_avg", "plasticity", "ACC")


def metric(name: str) -> Metric:
    """The registered metric ``name``; a ValueError lists the known ones."""
    if name not in REGISTRY:
        raise ValueError(f"unknown metric {name!r}; known: {list(REGISTRY)}")
    return REGISTRY[name]


def metrics_of(outcomes: Iterable[str]) -> tuple[str, ...]:
    """The metrics the given evaluations (``evaluation.outcomes``) compute, in registry order."""
    outcomes = list(outcomes)
    unknown = sorted(set(outcomes) - set(OUTCOMES))
    if unknown:
        raise ValueError(f"evaluation.outcomes: unknown {unknown}; expected among {OUTCOMES}")
    return tuple(m.name for m in REGISTRY.values() if m.outcome in outcomes)


def compared_metrics(outcomes: Iterable[str]) -> tuple[str, ...]:
    """The metrics compared with the baseline by default (``comparison.metrics: null``)."""
    return tuple(m for m in metrics_of(outcomes) if REGISTRY[m].compared)


_PUNCTUATION = frozenset(string.punctuation)


def as_str_list(value: Any) -> list[str]:
    """Coerce a references/labels cell to a list of str (parquet yields numpy arrays, not lists)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, float) and math.isnan(value):
        return []
    return [str(v) for v in value]


def normalize_answer(s: str) -> str:
    """Lower-case, strip punctuation, collapse whitespace: SuperNI's (and the SAPO reference's)
    SQuAD normalisation *without* article removal, so the multiple-choice letter "A" stays "a"
    and an empty prediction can never match it."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(s.split())


def majority_rate(references: Sequence[Sequence[str]], labels: Sequence[str]) -> float:
    """% of instances whose normalised first reference is the commonest one: the score of always
    giving that answer, the chance level a classification score must beat. NaN for generation
    tasks (no labels) and for no instances."""
    if len(as_str_list(labels)) == 0 or len(references) == 0:
        return math.nan
    firsts = []
    for i, refs in enumerate(references):
        refs = as_str_list(refs)
        if not refs:
            raise ValueError(f"instance {i} has no reference")
        firsts.append(normalize_answer(refs[0]))
    return 100.0 * Counter(firsts).most_common(1)[0][1] / len(firsts)


def _require_references(references: Sequence[str]) -> list[str]:
    refs = as_str_list(references)
    if not refs:
        raise ValueError("at least one reference is required to score a prediction")
    return refs


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """100 if the normalised prediction equals any normalised reference, else 0."""
    pred = normalize_answer(prediction)
    refs = _require_references(references)
    return 100.0 if any(pred == normalize_answer(r) for r in refs) else 0.0


@functools.cache
def _rouge_scorer() -> Any:
    """Build the scorer once; construction loads the stemmer and is not free."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, references: Sequence[str]) -> float:
    """ROUGE-L F-measure x 100, max over references (as in the SuperNI evaluation)."""
    scorer = _rouge_scorer()
    refs = _require_references(references)
    # rouge_score's signature is score(target, prediction).
    return max(scorer.score(r, prediction)["rougeL"].fmeasure for r in refs) * 100.0


def _first_label_position(text: str, label: str) -> int | None:
    """Index of the first whole-phrase occurrence of label in space-normalised text."""
    match = re.search(rf"(?<!\S){re.escape(label)}(?!\S)", text)
    return None if match is None else match.start()


def label_accuracy(prediction: str, references: Sequence[str], labels: Sequence[str]) -> float:
    """Score the label the model states first, so verbose or list-style answers still count.

    NaN for generation tasks (no labels). Among the task's labels, pick the one whose first
    whole-phrase occurrence in the normalised prediction is earliest (ties -> longer label);
    100 if it equals the normalised first reference, else 0 (also 0 when no label occurs).
    """
    raw_labels = as_str_list(labels)
    if not raw_labels:
        return math.nan
    norm_labels = sorted({n for n in (normalize_answer(lb) for lb in raw_labels) if n})
    refs = _require_references(references)
    text = normalize_answer(prediction)
    best: tuple[int, int] | None = None  # (position, -length): min picks earliest, then longest
    chosen: str | None = None
    for label in norm_labels:
        pos = _first_label_position(text, label)
        if pos is None:
            continue
        key = (pos, -len(label))
        if best is None or key < best:
            best, chosen = key, label
    return 100.0 if chosen is not None and chosen == normalize_answer(refs[0]) else 0.0


#: Every metric, in the order tables and figures show them (one registry, read everywhere).
REGISTRY: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric(
            "rougeL",
            "generation",
            "ROUGE-L F of the greedy answer, max over references",
            score=lambda prediction, references, labels: rouge_l(prediction, references),
        ),
        Metric(
            "exact_match",
            "generation",
            "the normalised greedy answer equals a normalised reference",
            binary=True,
            compared=False,
            score=lambda prediction, references, labels: exact_match(prediction, references),
        ),
        Metric(
            "label_accuracy",
            "generation",
            "the first label the greedy answer states is the gold label",
            binary=True,
            labels_only=True,
            score=label_accuracy,
        ),
        Metric(
            "gold_logprob",
            "likelihood",
            "mean log-probability per token of the gold answer (with its end-of-turn token)",
            bounded=False,
            chance=False,
            unit="nats per token",
            decimals=3,
        ),
        Metric(
            "rank_accuracy",
            "likelihood",
            "the label with the highest likelihood (rank classification) is the gold label",
            binary=True,
            labels_only=True,
        ),
    )
}


def score_predictions(df: pd.DataFrame) -> pd.DataFrame:
    """Add a float column per generation metric of :data:`REGISTRY` (rougeL, exact_match,
    label_accuracy, …) to a copy of a prediction table."""
    missing = [c for c in ("prediction", "references", "labels") if c not in df.columns]
    if missing:
        raise ValueError(f"prediction table lacks columns {missing}")
    out = df.copy()
    rows = list(zip(out["prediction"], out["references"], out["labels"], strict=True))
    for m in REGISTRY.values():
        if m.score is not None:
            out[m.name] = np.array([m.score(str(p), r, lb) for p, r, lb in rows], dtype=float)
    return out


def mean_stderr(values: Sequence[float], binary: bool) -> tuple[float, float, int]:
    """Mean, standard error and n over non-NaN values, so every reported number has its noise.

    binary=True uses the binomial SE sqrt(p(1-p)/n) (scores are 0/100); otherwise the sample
    standard deviation (ddof=1) over sqrt(n), NaN when n < 2.
    """
    arr = np.asarray(values, dtype=float).ravel()
    arr = arr[~np.isnan(arr)]
    n = int(arr.size)
    if n == 0:
        return math.nan, math.nan, 0
    mean = float(arr.mean())
    if binary:
        p = mean / 100.0
        se = math.sqrt(max(p * (1.0 - p), 0.0) / n) * 100.0
    elif n < 2:
        se = math.nan
    else:
        se = float(arr.std(ddof=1)) / math.sqrt(n)
    return mean, se, n


def _check_accuracy_matrix(R: np.ndarray) -> np.ndarray:
    arr = np.asarray(R, dtype=float)
    if arr.ndim != 2 or arr.shape[1] < 1 or arr.shape[0] != arr.shape[1] + 1:
        raise ValueError(
            "accuracy matrix must have shape (T+1, T) with T >= 1 "
            f"(row 0 = zero-shot base, row i = after stage i); got shape {arr.shape}"
        )
    return arr


def coefficient_matrices(R: np.ndarray) -> dict[str, np.ndarray]:
    """Coefficient matrix C per continual metric, so value = sum(C * R).

    ``plasticity`` is the mean of R[i][i] (how well each stage learns its task), ``ACC`` the
    average accuracy over stages, mean over i of mean_{j<=i} R[i][j]. Undefined metrics (the
    transfer and forgetting ones when T == 1, F when a max candidate is NaN) get an all-NaN
    matrix. F depends on R only through which stage attains the max for each task.

    F (Chaudhry et al. 2018) maxes task j over rows j..T-1, the states after training on it:
    row 0 (zero-shot) and the rows before stage j never trained on j, so a drop from a higher
    score there is not counted as forgetting what training on j taught.
    """
    arr = _check_accuracy_matrix(R)
    T = arr.shape[1]
    shape = arr.shape
    coeffs = {name: np.zeros(shape) for name in CONTINUAL_METRICS}
    coeffs["AP"][T, :] = 1.0 / T
    for i in range(1, T + 1):
        coeffs["plasticity"][i, i - 1] = 1.0 / T  # each task right after its own stage
        coeffs["ACC"][i, :i] = 1.0 / (T * i)  # the mean over stages of the seen tasks' mean
    if T == 1:
        for name in ("BWT", "FWT", "F", "BWT_avg", "FWT_avg"):
            coeffs[name][:] = math.nan
        return coeffs
    # Formulas use 1-based task index j; column j - 1 in numpy. Row index = stage.
    w = 1.0 / (T - 1)
    for j in range(1, T):  # BWT and F over tasks j < T
        coeffs["BWT"][T, j - 1] += w
        coeffs["BWT"][j, j - 1] -= w
        candidates = arr[j:T, j - 1]  # stages j..T-1: trained on task j, before the last
        if np.isnan(candidates).any():
            coeffs["F"][:] = math.nan
        elif not np.isnan(coeffs["F"]).any():
            coeffs["F"][j + int(np.argmax(candidates)), j - 1] += w
            coeffs["F"][T, j - 1] -= w
    for j in range(2, T + 1):  # FWT over tasks j >= 2
        coeffs["FWT"][j - 1, j - 1] += w
        coeffs["FWT"][0, j - 1] -= w
    for i in range(2, T + 1):
        wi = w / (i - 1)
        for j in range(1, i):
            coeffs["BWT_avg"][i, j - 1] += wi
            coeffs["BWT_avg"][j, j - 1] -= wi
    for i in range(1, T):
        wi = w / (T - i)
        for j in range(i + 1, T + 1):
            coeffs["FWT_avg"][i, j - 1] += wi
            coeffs["FWT_avg"][0, j - 1] -= wi
    return coeffs


def _linear_form(C: np.ndarray, X: np.ndarray, squared: bool) -> float:
    """sum(C*X) (or sqrt(sum(C^2 X^2))) over used cells; NaN in a used cell propagates."""
    if np.isnan(C).any():
        return math.nan
    used = C != 0
    if np.isnan(X[used]).any():
        return math.nan
    if squared:
        return float(math.sqrt(np.sum((C[used] * X[used]) ** 2)))
    return float(np.sum(C[used] * X[used]))


def continual_metrics(
    R: np.ndarray, SE: np.ndarray | None = None
) -> dict[str, tuple[float, float]]:
    """AP, BWT, FWT, F, BWT_avg, FWT_avg as (value, se) from a (T+1, T) accuracy matrix.

    SE (same shape) gives standard errors assuming independent cells; without it se is NaN.
    Only NaNs in cells a metric actually uses make it NaN.
    """
    arr = _check_accuracy_matrix(R)
    se_arr: np.ndarray | None = None
    if SE is not None:
        se_arr = np.asarray(SE, dtype=float)
        if se_arr.shape != arr.shape:
            raise ValueError(
                f"SE matrix shape {se_arr.shape} does not match accuracy matrix shape {arr.shape}"
            )
    result: dict[str, tuple[float, float]] = {}
    for name, C in coefficient_matrices(arr).items():
        value = _linear_form(C, arr, squared=False)
        se = math.nan if se_arr is None else _linear_form(C, se_arr, squared=True)
        result[name] = (value, se)
    return result
