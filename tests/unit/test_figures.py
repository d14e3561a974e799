"""Every figure function writes a readable PNG from small synthetic tables."""

from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from promptcl.figures import runs as run_figures
from promptcl.figures import study as study_figures
from tests.helpers import synthetic


def _is_png(path: Path, min_width: int = 300) -> bool:
    image = mpimg.imread(path)
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image.shape[1] >= min_width


def test_run_figures(tmp_path):
    cells = synthetic.accuracy_matrix()
    paths = [
        run_figures.matrix_heatmaps(cells, ["rougeL", "label_accuracy"], "t", tmp_path / "m.png"),
        run_figures.forgetting_curves(cells, "rougeL", "t", tmp_path / "f.png"),
        run_figures.loss_curves(
            {1: synthetic.train_log(), 2: synthetic.train_log()}, "t", tmp_path / "l.png"
        ),
        run_figures.loss_curves({1: synthetic.train_log(penalty=True)}, "t", tmp_path / "p.png"),
        run_figures.candidate_losses(
            synthetic.prompt_scores(),
            synthetic.candidates(),
            1,
            "mean_batch_loss",
            "t",
            tmp_path / "c.png",
        ),
        run_figures.run_comparison(synthetic.summary(), "rougeL", tmp_path / "r.png"),
    ]
    for path in paths:
        assert _is_png(path), path


def test_configurations_over_seeds_and_against_the_baseline(tmp_path):
    from promptcl.analysis.compare import compare_seeds, seed_table

    summary = synthetic.summary(runs=("a", "b"), seeds=3)
    seeds = seed_table(summary)
    one = run_figures.run_comparison(summary[summary["seed"] == 0], "rougeL", tmp_path / "1.png")
    many = run_figures.run_comparison(summary, "rougeL", tmp_path / "3.png", seeds)
    assert _is_png(one) and _is_png(many)
    comparisons = compare_seeds(summary, {"method": "inclora", "strategy": "original"})
    assert set(comparisons["strategy"]) == {"sapo"} and (comparisons["n"] == 3).all()
    forest = run_figures.baseline_differences(comparisons, "rougeL", tmp_path / "d.png")
    assert _is_png(forest)


def test_a_penalised_loss_figure_has_two_panels(tmp_path):
    one = mpimg.imread(run_figures.loss_curves({1: synthetic.train_log()}, "t", tmp_path / "a.png"))
    two = mpimg.imread(
        run_figures.loss_curves({1: synthetic.train_log(penalty=True)}, "t", tmp_path / "b.png")
    )
    assert two.shape[1] > 1.5 * one.shape[1]


def test_study_figures(tmp_path):
    spread = pd.DataFrame(
        {
            "branch": "b",
            "role": ["T1", "T2", "T2_trained", "unseen"],
            "task": ["taskA", "taskB", "taskB", "taskC"],
            "metric": "rougeL",
            "candidates": 6,
            "sd": [4.0, 1.0, 1.5, 3.0],
            "sd_ci_low": [2.0, 0.5, 0.7, 1.0],
            "sd_ci_high": [6.0, 1.5, 2.5, 5.0],
        }
    )
    names = ["T1:taskA", "T2:taskB", "unseen:taskC"]
    correlations = pd.DataFrame(
        [
            {"branch": "b", "outcome_a": a, "outcome_b": b, "kind": "spearman", "r": 0.5}
            for i, a in enumerate(names)
            for b in names[i + 1 :]
        ]
    )
    predictors = pd.DataFrame(
        [
            {
                "scope": "mean",
                "measurement": m,
                "label": m,
                "kind": k,
                "r": r,
                "ci_low": r - 0.3,
                "ci_high": r + 0.2,
                "rank": rank,
            }
            for rank, (m, r) in enumerate([("loss_batch_mean", 0.6), ("fk_grade", -0.1)], start=1)
            for k in ("pearson", "spearman")
        ]
    )
    rng = np.random.default_rng(0)
    gradients = pd.DataFrame(
        [
            {"group": g, "module": m, "layer": layer, "cosine": float(rng.uniform(-0.2, 0.8))}
            for g in ("lowest_loss", "highest_loss")
            for m in ("q_proj", "v_proj")
            for layer in range(6)
        ]
    )
    for path in (
        study_figures.spread_figure(spread, tmp_path / "a.png"),
        study_figures.correlation_heatmap(correlations, "spearman", tmp_path / "b.png"),
        study_figures.predictor_bars(predictors, tmp_path / "c.png"),
        study_figures.gradient_violins(gradients, tmp_path / "d.png"),
    ):
        assert _is_png(path), path


@pytest.mark.parametrize("metric", ["nonexistent"])
def test_a_missing_metric_is_an_error(tmp_path, metric):
    with pytest.raises(ValueError, match="no cells for metric"):
        run_figures.forgetting_curves(synthetic.accuracy_matrix(), metric, "t", tmp_path / "x.png")
