"""The report: built by ``snakemake --report`` from report()-flagged figures, labelled so that
researchers can filter, and opened in a real headless browser (Chromium from Debian) that must
render every figure without a script error. A screenshot is kept under test-artifacts/."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from promptcl.analysis.metrics import REGISTRY
from tests.helpers import REPO

METRICS = tuple(REGISTRY)

pytestmark = pytest.mark.browser

RUNS = ["tiny-inclora-original-s0", "tiny-inclora-sapo-s0"]
ARTIFACTS = REPO / "test-artifacts"
# category in the report's sidebar -> the ways into its results: (subcategory, then a label value
# the report offers as a choice (SAPO's stage), and how many figures are listed there
PAGES = {
    "Runs": [(run, None, 3) for run in RUNS],  # matrix, forgetting, loss
    "SAPO choices": [("tiny-inclora-sapo-s0", "1", 1), ("tiny-inclora-sapo-s0", "2", 1)],
    # one per metric (3 of generation, 2 of likelihood), and the paired differences from the
    # baseline (label accuracy, ROUGE-L, gold log-likelihood, rank accuracy)
    "Runs compared": [(None, None, 9)],
    "Prompt-impact study": [(None, None, 4)],  # the four analyses
}


@pytest.fixture(scope="module")
def chromium() -> str:
    if shutil.which("chromium") is None:
        proc = subprocess.run(
            ["bash", str(REPO / "scripts/install_chromium.sh")], capture_output=True, text=True
        )
        assert proc.returncode == 0, f"could not install chromium: {proc.stderr[-2000:]}"
    return shutil.which("chromium")


def test_every_figure_is_in_the_report(studied):
    report = (studied / "report.html").read_text()
    figures = [
        f"results/{run}/figures/{f}.png" for run in RUNS for f in ("matrix", "forgetting", "loss")
    ]
    figures += [f"results/tiny-inclora-sapo-s0/stage_{k}/candidate_losses.png" for k in (1, 2)]
    figures += [f"results/figures/runs_{m}.png" for m in METRICS]
    figures += [
        f"results/figures/baseline_{m}.png"
        for m in ("label_accuracy", "rougeL", "gold_logprob", "rank_accuracy")
    ]
    figures += [
        f"results/study/figures/{a}.png"
        for a in ("spread", "outcome_correlations", "predictors", "gradient_cosines")
    ]
    for figure in figures:
        assert (studied / figure).is_file(), figure
        assert figure in report, f"{figure} is not in the report"
    for label in ("method", "strategy", "seed", "inclora", "sapo"):
        assert label in report


def _open(page, category: str, subcategory: str | None, choice: str | None) -> None:
    page.get_by_text("Results", exact=True).click()
    page.get_by_text(category, exact=True).first.click()
    if subcategory is not None:
        page.get_by_text(subcategory, exact=True).first.click()
    if choice is not None:
        page.get_by_text(choice, exact=True).first.click()
    page.locator("a[iconname='eye']").first.wait_for(timeout=10_000)


def _shown_image(page) -> tuple[int, int]:
    """(natural width, height) of the result image the report shows."""
    image = page.locator("img[src^='data:image/png']").last
    image.wait_for(state="visible", timeout=10_000)
    return image.evaluate("e => [e.naturalWidth, e.naturalHeight]")


def test_the_report_renders_every_figure_in_a_browser(studied, chromium):
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto((studied / "report.html").as_uri())
        assert "continual LoRA fine-tuning" in page.inner_text("body")  # the workflow description
        for category, ways in PAGES.items():
            for subcategory, choice, figures in ways:
                _open(page, category, subcategory, choice)
                assert page.locator("a[iconname='eye']").count() == figures, (category, choice)
                for i in range(figures):
                    _open(page, category, subcategory, choice)
                    page.locator("a[iconname='eye']").nth(i).click()
                    width, height = _shown_image(page)
                    assert width > 300 and height > 200, (category, subcategory, choice, i)
                    if category == "Prompt-impact study" and i == 2:
                        page.screenshot(path=str(ARTIFACTS / "report_study.png"))
        browser.close()
    assert not errors, errors
    assert (ARTIFACTS / "report_study.png").stat().st_size > 20_000
