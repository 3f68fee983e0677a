"""The demo's report.html as a reader sees it, in headless Chromium at a laptop's width: four plots,
no text over another and no legend over a plot or a bar's label, bar labels inside their plot, and
the summary wrapped to the page (its longest lines would run off it). The screenshot is kept as an
artifact (artifacts/report.png)."""

from pathlib import Path

import pytest

from demo.report import terminal_summary
from demo.report_page import write_html
from demo.round_figures import RoundFigures
from tests.integration.browser import ARTIFACTS, LAYOUT, DevTools, need_chromium

pytestmark = pytest.mark.integration

WIDTH = 1100
REASON = (
    "policy-ab:assistant-trg-3fe42ef11b81: promote variant_a (assistant-trg-3fe42ef11b81) vs control: "
    "positive rate rose 0.367 -> 0.601 (per user: sequential p=0.036, z-test p=7.1e-06), lift +63.8% [+25.7%, +101.9%]"
)

SUMMARY = """(() => {
  const summary = document.querySelector(".summary");
  const lines = [...summary.children].map(l => l.getBoundingClientRect().height);
  return {
    scroll: document.scrollingElement.scrollWidth, view: window.innerWidth, right: summary.getBoundingClientRect().right,
    overflow: summary.scrollWidth - summary.clientWidth, line: Math.min(...lines), tallest: Math.max(...lines),
    text: summary.innerText,
  };
})()"""


def a_round(n: int, decision: str, control: float, treatment: float) -> RoundFigures:
    """A round whose treatment bar is near the top, where a legend inside the plot used to sit."""
    return RoundFigures(
        candidate=f"assistant-trg-{n:012x}",
        decision=decision,
        reward_accuracy=0.7,
        reward_before=0.45,
        reward_after=0.7,
        control_rate=control,
        treatment_rate=treatment,
        lift=treatment / control - 1,
        lift_low=0.1,
        lift_high=0.9,
        users_control=228,
        users_treatment=227,
        decision_reason=REASON,
        true_quality_parent=0.32,
        true_quality_candidate=0.7,
        traffic_parent=0.33,
        traffic_candidate=0.75,
        follow_up_parent=0.3,
        follow_up_candidate=0.6,
        reward_accuracy_on_policy=0.9,
    )


def meet(a: dict, b: dict) -> bool:
    return min(a["right"], b["right"]) > max(a["left"], b["left"]) and min(a["bottom"], b["bottom"]) > max(a["top"], b["top"])


def test_the_report_shows_its_plots_without_overlaps_and_its_summary_wrapped(tmp_path: Path):
    need_chromium()
    rounds = [a_round(1, "promote", 0.6, 0.97), a_round(2, "rollback", 0.9, 0.95), a_round(3, "expired", 0.35, 0.99)]
    timeline = [{"t": 60 * k, "positive": k % 5, "n": 5, "follow_up_positive": k % 3, "follow_up_n": 3} for k in range(40)]
    path = tmp_path / "report.html"
    summary = terminal_summary(rounds, "rerun `RLHF_HOME=/runs/demo/state rlhf sink run` to browse the dashboard", path)
    assert max(len(line) for line in summary.splitlines()) > 200  # longer than the page is wide
    write_html(path, rounds, timeline, summary)

    browser = DevTools(tmp_path / "chromium-profile", window=(WIDTH, 900))
    try:
        session = browser.open(path.as_uri())
        plots = browser.evaluate(session, LAYOUT)
        page = browser.evaluate(session, SUMMARY)
        browser.screenshot(session, ARTIFACTS / "report.png", full_page=True)
    finally:
        browser.close()

    assert len(plots) == 4 and all(p["box"]["width"] > 300 and p["box"]["height"] > 150 for p in plots), plots
    for plot in plots:
        assert plot["overlaps"] == [] and plot["covering"] == [], plot
    (ab,) = [p for p in plots if p["labels"]]
    assert len(ab["labels"]) == 2 * len(rounds)  # each label's two lines: lift and decision
    assert not any(meet(label, legend) for label in ab["labels"] for legend in ab["legends"]), ab
    assert all(ab["box"]["top"] <= label["top"] and label["bottom"] <= ab["box"]["bottom"] for label in ab["labels"]), ab
    # Nothing runs off to the right: the summary wraps, its longest lines over more than one line each.
    assert page["scroll"] <= page["view"] and page["right"] <= page["view"] and page["overflow"] <= 0, page
    assert page["tallest"] > 1.5 * page["line"], page
    assert REASON in " ".join(page["text"].split()), "the wrapped summary lost text"
