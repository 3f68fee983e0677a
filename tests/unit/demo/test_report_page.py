"""The report page's summary: every line kept, and a line too long for the page wraps under its value column."""

import html
import re

from demo.report_page import _summary_html

LABEL = "    decision                                 "  # the terminal summary's label column


def test_a_long_summary_line_wraps_under_its_value_column():
    long = f"{LABEL}the decider: promote (<{'a very long reason ' * 12}>)"
    summary = f"rlhf demo: results per round\n{long}\n\n  report: /runs/demo/report.html"

    lines = re.findall(r'<div style="padding-left:(\d+)ch;text-indent:-(\d+)ch">(.*?)</div>', _summary_html(summary))

    assert [html.unescape(text) for *_, text in lines] == [*summary.splitlines()[:2], " ", summary.splitlines()[3]]
    assert all(pad == indent for pad, indent, _ in lines)  # each line's first row starts at the margin
    assert int(lines[1][0]) == len(LABEL)  # continuation rows under "the decider"
    assert int(lines[0][0]) == 2 and int(lines[3][0]) == 4  # no value column: a small hanging indent
