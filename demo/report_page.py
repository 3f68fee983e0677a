"""The demo's report.html: its plots, as inline SVG with their legends outside the plot areas (never
over a line or a bar's label), and the terminal summary wrapped to the page."""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from analytics.plots import inline_svg
from demo.round_figures import RoundFigures


def _values(values: Iterable[float | None]) -> list[float]:
    """A series to plot: a missing value is a gap (NaN)."""
    return [math.nan if v is None else v for v in values]


def _svg(fig: Figure) -> str:
    svg = inline_svg(fig)
    plt.close(fig)
    return svg


def _figure(height: float = 3.2) -> tuple[Figure, Any]:
    return plt.subplots(figsize=(6, height), layout="constrained")


def _legend(fig: Figure, ax: Any, fontsize: float = 7) -> None:
    """The legend below the plot, outside it: inside, it would cover lines and bar labels."""
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=fontsize, frameon=False)


def _ab_plot(rounds: list[RoundFigures]) -> str:
    fig, ax = _figure()
    xs = range(1, len(rounds) + 1)
    ax.bar([x - 0.2 for x in xs], [r.control_rate or 0 for r in rounds], 0.4, label="control")
    ax.bar([x + 0.2 for x in xs], [r.treatment_rate or 0 for r in rounds], 0.4, label="treatment (candidate)")
    for x, r in zip(xs, rounds, strict=True):
        lift = "n/a" if r.lift is None else f"{r.lift:+.1%}"
        label = ax.annotate(f"{lift}\n{r.decision}", (x + 0.2, (r.treatment_rate or 0) + 0.02), ha="center", fontsize=8)
        label.set_gid(f"bar-label-{x}")  # the report's page test finds them by it
    # Headroom above a rate of 1 for its two-line label, under the title.
    ax.set(xlabel="round", ylabel="positive-feedback rate", title="A/B test per round", xticks=list(xs), ylim=(0, 1.25))
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    _legend(fig, ax, fontsize=8)
    return _svg(fig)


def _reward_plot(rounds: list[RoundFigures]) -> str:
    fig, ax = _figure()
    xs = list(range(1, len(rounds) + 1))
    ax.plot(xs, _values(r.reward_before for r in rounds), "o--", label="parent policy (reward model)")
    ax.plot(xs, _values(r.reward_after for r in rounds), "o-", label="candidate policy (reward model)")
    ax.plot(xs, _values(r.true_quality_parent for r in rounds), "s--", alpha=0.6, label="parent (hidden preference)")
    ax.plot(xs, _values(r.true_quality_candidate for r in rounds), "s-", alpha=0.6, label="candidate (hidden preference)")
    ax.set(xlabel="round", ylabel="mean reward on held-out queries", title="Policy improvement", xticks=xs)
    _legend(fig, ax)
    return _svg(fig)


def _rounds_plot(rounds: list[RoundFigures]) -> str:
    """The hidden preference of the serving version per round, each round's decision marked, and
    the reward model's accuracy on the parent's own answers."""
    fig, ax = _figure(height=4.2)  # room for its long legend below
    xs = list(range(0, len(rounds) + 1))
    serving = _values([rounds[0].true_quality_parent if rounds else None] + [r.serving_truth for r in rounds])
    ax.plot(xs, serving, "-", color="tab:blue", label="serving version (hidden preference, held out)")
    traffic = _values([rounds[0].traffic_parent if rounds else None] + [r.serving_traffic for r in rounds])
    ax.plot(xs, traffic, ":", color="tab:blue", label="... on traffic")
    if rounds and rounds[0].follow_up_parent is not None:
        follow_ups = _values([rounds[0].follow_up_parent] + [r.serving_follow_up for r in rounds])
        ax.plot(xs, follow_ups, "--", color="tab:cyan", label="... on follow-up turns")
    markers = {
        "promote": ("^", "tab:green"),
        "rollback": ("v", "tab:red"),
        "expired": ("v", "tab:orange"),
        "rejected": ("x", "tab:gray"),
    }
    for x, r in zip(xs[1:], rounds, strict=True):
        marker, colour = markers.get(r.decision, ("o", "black"))
        ax.scatter(
            [x],
            _values([r.true_quality_candidate if r.true_quality_candidate is not None else r.serving_truth]),
            marker=marker,
            color=colour,
            zorder=3,
        )
    for decision, (marker, colour) in markers.items():
        ax.scatter([], [], marker=marker, color=colour, label=f"candidate: {decision}")
    ax.plot(
        xs[1:],
        _values(r.reward_accuracy_on_policy for r in rounds),
        "s--",
        color="tab:purple",
        alpha=0.7,
        label="RM accuracy on the parent's answers",
    )
    ax.set(xlabel="round", ylabel="hidden preference / accuracy", title="Does it keep improving?", xticks=xs, ylim=(0, 1.02))
    _legend(fig, ax)
    return _svg(fig)


def _moving_rate(timeline: list[dict], positive: str, n: str, window: int = 8) -> list[float]:
    """The positive share of the feedback over the last `window` steps, at each step."""
    rates = []
    for i in range(len(timeline)):
        chunk = timeline[max(0, i - window + 1) : i + 1]
        total = sum(c[n] for c in chunk)
        rates.append(sum(c[positive] for c in chunk) / total if total else float("nan"))
    return rates


def _timeline_plot(timeline: list[dict]) -> str:
    fig, ax = _figure()
    if timeline:
        t0 = timeline[0]["t"]
        minutes = [(p["t"] - t0) / 60 for p in timeline]
        ax.plot(minutes, _moving_rate(timeline, "positive", "n"), label="all answers")
        if "follow_up_n" in timeline[0]:
            ax.plot(minutes, _moving_rate(timeline, "follow_up_positive", "follow_up_n"), label="answers to follow-ups")
            _legend(fig, ax)
    ax.set(xlabel="minutes", ylabel="positive-feedback rate (moving avg)", title="What users felt over the run", ylim=(0, 1))
    return _svg(fig)


def write_html(path: Path, rounds: list[RoundFigures], timeline: list[dict], summary: str) -> Path:
    images = (
        [_rounds_plot(rounds), _ab_plot(rounds), _reward_plot(rounds), _timeline_plot(timeline)]
        if rounds
        else [_timeline_plot(timeline)]
    )
    body = "".join(f'<figure class="plot">{svg}</figure>' for svg in images)
    path.write_text(
        "<!doctype html><meta charset=utf-8><meta name=viewport content='width=device-width'>"
        f"<title>rlhf demo report</title><style>{_STYLE}</style>"
        f"<h1>rlhf-stream demo</h1><main>{body}</main>{_summary_html(summary)}"
    )
    return path


_STYLE = """
body { font-family: sans-serif; margin: 2em; }
main { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(460px, 100%), 1fr)); gap: 12px; max-width: 1500px; }
figure.plot { margin: 0; }
figure.plot svg { width: 100%; height: auto; }
.summary { font-family: monospace; font-size: 13px; background: #f6f6f6; padding: 1em; margin-top: 1em; }
.summary div { white-space: pre-wrap; overflow-wrap: anywhere; }
"""


def _summary_html(summary: str) -> str:
    """The terminal summary, each line wrapped to the page with its continuation lines indented
    under its value column (`label   value`), so the aligned columns stay readable."""
    lines = []
    for line in summary.splitlines():
        column = re.match(r"\s*\S.*?\s{2,}(?=\S)", line)
        indent = len(column.group()) if column and len(column.group()) <= 50 else len(line) - len(line.lstrip()) + 2
        lines.append(f'<div style="padding-left:{indent}ch;text-indent:-{indent}ch">{html.escape(line) or " "}</div>')
    return f'<section class="summary">{"".join(lines)}</section>'
