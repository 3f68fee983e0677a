"""Dashboard plots: a time axis spans the plotted buckets and is ticked in clock time, even for the
single bucket of an experiment a minute old (matplotlib alone widens that to four years)."""

import xml.etree.ElementTree as ET
from datetime import datetime, timedelta

import pandas as pd

from analytics import plots

SVG = "{http://www.w3.org/2000/svg}"
START = datetime(2026, 12, 7, 14, 31)


def x_axis(svg: str) -> tuple[list[str], list[str]]:
    """The x tick labels, and the x axis's other texts (its label, matplotlib's offset)."""
    axis = next(g for g in ET.fromstring(svg).iter(f"{SVG}g") if g.get("id", "").startswith("matplotlib.axis_"))
    ticks = [t.text or "" for g in axis if g.get("id", "").startswith("xtick_") for t in g.iter(f"{SVG}text")]
    others = [t.text or "" for g in axis if g.get("id", "").startswith("text_") for t in g.iter(f"{SVG}text")]
    return ticks, others


def clock(labels: list[str]) -> list[datetime]:
    return [
        datetime.combine(START.date(), datetime.strptime(t, "%H:%M:%S" if t.count(":") == 2 else "%H:%M").time()) for t in labels
    ]


def test_one_bucket_of_positive_rate_is_ticked_within_its_minute():
    frame = pd.DataFrame(
        {"bucket": [START, START], "variant": ["control", "variant_a"], "feedback": [20, 17], "positive_rate": [0.6, 0.7]}
    )

    ticks, others = x_axis(plots.positive_rate(frame, 60))

    assert len(ticks) >= 3 and all(START <= t <= START + timedelta(minutes=1) for t in clock(ticks)), ticks
    assert "2026-Dec-07" in others and "time (UTC)" in others


def test_minutes_of_feedback_volume_are_ticked_in_minutes_across_them():
    buckets = [START + timedelta(minutes=m) for m in range(8)]
    frame = pd.DataFrame({"bucket": buckets, "feedback_type": "thumbs_up", "events": range(1, 9)})

    ticks, _ = x_axis(plots.feedback_volume(frame, 60))

    times = clock(ticks)
    assert len(times) >= 3 and times == sorted(times) and START <= times[0] and times[-1] <= START + timedelta(minutes=8), ticks
    assert times[-1] - times[0] >= timedelta(minutes=5)  # across the data, not bunched at one end
