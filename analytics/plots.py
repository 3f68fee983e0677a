"""Dashboard plots: query frames in, inline SVG text out (matplotlib's object API, no pyplot state,
so the dashboard's worker threads can render concurrently). Imported by the dashboard and the demo's report.

Legends sit outside the axes (`_legend`), so they never cover data or labels; time axes span the
plotted buckets (`_time_axis`)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import matplotlib
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.dates import MINUTELY, AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure

from analytics.decision import Decision

# Text as SVG <text>, not glyph outlines: the page can be searched and is a fraction of the size, and a
# browser test can read the labels and their boxes. Set once here, before any figure is drawn: rc_context
# per call would race with the dashboard's other rendering threads.
matplotlib.rcParams["svg.fonttype"] = "none"

_SIZE = (6.4, 3.0)
_TYPE_COLOURS = {"thumbs_up": "#2e7d32", "rating": "#1565c0", "correction": "#ef6c00", "thumbs_down": "#c62828"}


def inline_svg(fig: Figure) -> str:
    """The figure as SVG markup to put inside an HTML page."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    return text[text.index("<svg") :]  # drop the XML prologue: the SVG is inlined in HTML


def _legend(fig: Figure, ax: Axes, ncols: int = 4, fontsize: float = 8, **kwargs: Any) -> None:
    """The axes' legend above the plot area (constrained layout makes room for it)."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside upper left", ncols=ncols, fontsize=fontsize, frameon=False, **kwargs)


def _time_axis(ax: Axes, buckets: pd.Series, bucket_s: int) -> None:
    """x from the first bucket's start to the last one's end (and a little), ticked in clock time. Left to itself,
    matplotlib widens a single bucket (a zero-width range) by two years either side: 2025-2029 for a
    one-minute experiment."""
    # matplotlib.dates is not annotated.
    locator = AutoDateLocator(minticks=3, maxticks=8)  # type: ignore[no-untyped-call]
    locator.intervald[MINUTELY] = [1, 2, 5, 10, 15, 30]  # 8-13 minutes: every 2 min, not a lone tick every 5
    formatter = ConciseDateFormatter(locator, show_offset=True)  # type: ignore[no-untyped-call]
    # Whole clock times (14:31:30, not a bare "30") and days with their month (Dec-08, not "08").
    formatter.formats = ["%Y", "%b", "%b-%d", "%H:%M", "%H:%M", "%H:%M:%S"]
    formatter.zero_formats = ["", "%Y", "%b", "%b-%d", "%H:%M", "%H:%M:%S"]
    formatter.offset_formats = ["", "%Y", "%Y-%b", "%Y-%b-%d", "%Y-%b-%d", "%Y-%b-%d"]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(formatter)
    start, end = pd.Timestamp(buckets.min()), pd.Timestamp(buckets.max()) + pd.Timedelta(seconds=bucket_s)
    pad = (end - start) * 0.08  # a clock-time tick on the corner (00:43:00) would sit under the y axis's "0.0"
    ax.set_xlim(start - pad, end + pad)
    ax.set_xlabel("time (UTC)")


def _figure(rows: int = 1, height: float | None = None) -> tuple[Figure, Any]:
    fig = Figure(figsize=(_SIZE[0], (height or _SIZE[1]) * rows), layout="constrained")
    axes = fig.subplots(rows, 1, squeeze=False)[:, 0]
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    return fig, axes


def feedback_volume(frame: pd.DataFrame, bucket_s: int) -> str:
    """Stacked bars of feedback events per time bucket, one colour per feedback type."""
    fig, (ax,) = _figure()
    table = frame.pivot_table(index="bucket", columns="feedback_type", values="events", aggfunc="sum", fill_value=0)
    bottom = None
    width = pd.Timedelta(seconds=bucket_s * 0.85)
    for kind in [k for k in _TYPE_COLOURS if k in table.columns]:
        ax.bar(table.index, table[kind], width=width, bottom=bottom, label=kind, color=_TYPE_COLOURS[kind], align="edge")
        bottom = table[kind] if bottom is None else bottom + table[kind]
    ax.set_ylabel("events")
    _time_axis(ax, table.index.to_series(), bucket_s)
    _legend(fig, ax)
    return inline_svg(fig)


def positive_rate(frame: pd.DataFrame, bucket_s: int) -> str:
    """Positive-feedback rate per time bucket, one line per variant, each point mid-bucket (under the
    volume plot's bar for that bucket)."""
    fig, (ax,) = _figure()
    middle = pd.Timedelta(seconds=bucket_s / 2)
    for variant, part in frame.groupby("variant"):
        ax.plot(part["bucket"] + middle, part["positive_rate"], marker="o", markersize=3, label=variant or "(no experiment)")
    ax.set_ylabel("positive rate")
    ax.set_ylim(0, 1)
    _time_axis(ax, frame["bucket"], bucket_s)
    _legend(fig, ax)
    return inline_svg(fig)


def positive_rate_by_turn(frame: pd.DataFrame) -> str:
    """Per model version and variant (the `positive_rate_by_turn` query): positive rate on first turns
    beside that on follow-ups; a side without feedback has no bar. Horizontal bars, so that long
    version names stay readable beside them."""
    fig, (ax,) = _figure(height=1.2 + 0.32 * len(frame))
    ys = range(len(frame))
    sides = (("first_turn", "first turns", "#1565c0"), ("follow_up", "follow-ups", "#ef6c00"))
    for offset, (side, label, colour) in enumerate(sides):
        rate = frame[f"{side}_positive_rate"].fillna(0)
        ax.barh([y + (offset - 0.5) * 0.4 for y in ys], rate, height=0.4, label=label, color=colour)
    labels = [f"{m} · {v}" if v else str(m) for m, v in zip(frame["model_version"], frame["variant"], strict=True)]
    ax.set_yticks(ys, labels, fontsize=7)
    ax.invert_yaxis()  # the query's order, top to bottom
    ax.set_xlabel("positive rate")
    ax.set_xlim(0, 1)
    _legend(fig, ax, ncols=2)
    return inline_svg(fig)


def ab_intervals(decisions: Sequence[Decision], alpha: float) -> str:
    """Per variant: positive and thumbs-down rates with their intervals; per treatment: lift with its interval."""
    fig, (rates, lift) = _figure(2)
    arms = [decisions[0].control] + [d.treatment for d in decisions]
    positive = [decisions[0].primary.control] + [d.primary.treatment for d in decisions]
    thumbs_down = [decisions[0].guardrails[0].control] + [d.guardrails[0].treatment for d in decisions]
    for offset, (label, intervals, colour) in enumerate(
        (("positive rate", positive, "#2e7d32"), ("thumbs-down rate", thumbs_down, "#c62828"))
    ):
        xs = [i + (offset - 0.5) * 0.2 for i in range(len(arms))]
        est = [iv.estimate for iv in intervals]
        err = [[iv.estimate - iv.low for iv in intervals], [iv.high - iv.estimate for iv in intervals]]
        rates.errorbar(xs, est, yerr=err, fmt="o", capsize=4, color=colour, label=label)
    rates.set_xticks(range(len(arms)), arms)
    rates.set_ylabel(f"rate per user ({1 - alpha:.0%} CI)")
    _legend(fig, rates)
    lifts = [d.primary.lift for d in decisions]
    colours = {"promote": "#2e7d32", "rollback": "#c62828", "keep_running": "#757575"}
    for i, (d, iv) in enumerate(zip(decisions, lifts, strict=True)):
        lift.errorbar(
            [i],
            [iv.estimate * 100],
            yerr=[[(iv.estimate - iv.low) * 100], [(iv.high - iv.estimate) * 100]],
            fmt="s",
            capsize=5,
            color=colours[d.action],
        )
    lift.axhline(0, color="black", linewidth=0.8)
    lift.set_xticks(range(len(decisions)), [f"{d.treatment} vs {d.control}: {d.action}" for d in decisions])
    lift.set_ylabel("relative lift of\npositive rate (%)")
    return inline_svg(fig)


def experiment_lifts(lifecycle: pd.DataFrame) -> str:
    """Per decided experiment (the `experiment_lifecycle` query): the lift it was decided on, with its interval."""
    fig, (ax,) = _figure()
    decided = lifecycle[lifecycle["lift"].notna()].iloc[::-1]  # oldest on the left
    colours = {"promote": "#2e7d32", "rollback": "#c62828"}
    for i, row in enumerate(decided.itertuples(index=False)):
        low, high = (row.lift_low, row.lift_high) if pd.notna(row.lift_low) and pd.notna(row.lift_high) else (row.lift, row.lift)
        ax.errorbar(
            [i],
            [row.lift * 100],
            yerr=[[(row.lift - low) * 100], [(high - row.lift) * 100]],
            fmt="s",
            capsize=5,
            color=colours.get(row.state, "#757575"),
        )
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(
        range(len(decided)),
        [f"{str(e).rsplit(':', 1)[-1][:16]}\n{s}" for e, s in zip(decided["experiment_id"], decided["state"], strict=True)],
        fontsize=7,
    )
    ax.set_ylabel("relative lift of\npositive rate (%)")
    return inline_svg(fig)


def training(curve: pd.DataFrame) -> str:
    """Reward and KL of each training job against its progress reports (jobs hours apart stay readable)."""
    fig, (reward, kl) = _figure(2)
    for trigger, part in curve.groupby("trigger_id"):
        label, step = str(trigger)[:12], range(1, len(part) + 1)
        reward.plot(step, part["reward"], marker="o", markersize=3, label=label)
        kl.plot(step, part["kl"], marker="o", markersize=3, label=label)
    reward.set_ylabel("reward")
    kl.set_ylabel("KL to reference")
    kl.set_xlabel("progress report")
    _legend(fig, reward, fontsize=7, title="training job", title_fontsize=7)
    return inline_svg(fig)
