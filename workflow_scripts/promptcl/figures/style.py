"""One look for every figure: the non-interactive backend, a colour cycle, figure size and PNG
output at a resolution that stays sharp in the report."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # jobs have no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
DPI = 110


def new_figure(rows: int, cols: int, width: float, height: float):
    """A figure of rows × cols panels, each width × height inches; axes always 2-D."""
    fig, axes = plt.subplots(
        rows, cols, figsize=(width * cols, height * rows), squeeze=False, layout="constrained"
    )
    return fig, axes


def save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
