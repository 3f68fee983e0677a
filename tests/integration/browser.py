"""Headless Chromium for the page tests (the chat page, the dashboard, the demo's report), driven over
the DevTools protocol on a pipe (its fds 3 and 4, NUL-separated JSON), which needs no package beyond
the browser. `LAYOUT` measures what a reader sees of matplotlib's inline SVG plots: text boxes that
overlap, legends over a plot area, the tick labels of each axis."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


def need_chromium() -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"chromium not installed at {CHROMIUM} (scripts/bootstrap.sh installs it: apt-get install -y chromium)")


class DevTools:
    """Chromium with `--remote-debugging-pipe`: commands in on its fd 3, replies out on its fd 4."""

    def __init__(self, profile: Path, window: tuple[int, int] = (1000, 900)):
        to_browser, self._in = os.pipe()
        self._out, from_browser = os.pipe()

        def wire() -> None:
            # By way of fds above 4: a pipe end may itself be fd 3 or 4, and dup2 onto itself would
            # neither move the other end out of the way nor make it inheritable.
            ends = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_browser, from_browser)]
            os.dup2(ends[0], 3)
            os.dup2(ends[1], 4)

        self.process = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
                f"--user-data-dir={profile}",
                f"--window-size={window[0]},{window[1]}",
                "about:blank",
            ],
            # Not pass_fds=(3, 4): Popen would need fds 3 and 4 open in the parent, and close_fds would
            # close the copies `wire` makes. dup2's copies are inheritable; the pipes' own ends are not.
            close_fds=False,
            preexec_fn=wire,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser)
        os.close(from_browser)
        self._buffer, self._next = b"", 0

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self._next += 1
        message = {"id": self._next, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._in, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._out, 1 << 20)
                assert chunk, "chromium closed its DevTools pipe"
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._next:
                assert "error" not in reply, reply["error"]
                return reply["result"]

    def open(self, url: str, ready: str = "document.readyState == 'complete'", timeout: float = 30) -> str:
        """A new tab on `url`, once it is loaded and the JS expression `ready` holds: its session id."""
        # The tab starts on a blank page, already complete: wait for `url`'s document.
        ready = f"location.href != 'about:blank' && ({ready})"
        target = self.call("Target.createTarget", url=url)["targetId"]
        session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Runtime.enable", session)
        deadline = time.monotonic() + timeout
        while not self.evaluate(session, ready):
            assert time.monotonic() < deadline, f"{url} did not load"
            time.sleep(0.2)
        return session

    def evaluate(self, session: str, expression: str, awaits: bool = False) -> Any:
        result = self.call("Runtime.evaluate", session, expression=expression, awaitPromise=awaits, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def screenshot(self, session: str, out: Path, full_page: bool = False) -> None:
        """The viewport, or the whole page however long, as a PNG."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.call("Page.getLayoutMetrics", session)["cssContentSize"]
            clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
            params |= {"captureBeyondViewport": True, "clip": clip}
        out.parent.mkdir(exist_ok=True)
        out.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", session, **params)["data"]))

    def close(self) -> None:
        self.process.kill()
        self.process.wait(10)
        os.close(self._in)
        os.close(self._out)


# Per inline SVG plot (matplotlib's: `<g id="axes_N">` whose first `patch_` is the plot area, `legend_N`,
# `xtick_N`, `text_N` groups; text as <text> since analytics.plots sets svg.fonttype none):
#   where:     the enclosing dashboard panel's name, or the plot's index on the page
#   box:       the SVG's rendered box
#   overlaps:  pairs of visible texts whose boxes overlap by more than a pixel each way
#   covering:  legends whose box overlaps a plot area (they would cover data or labels)
#   xticks:    per axes, the x tick labels, left to right
#   offsets:   per axes, the x axis's other texts (matplotlib's offset, e.g. the date of clock-time ticks)
#   labels:    boxes of the texts with a `bar-label-*` gid (demo/report_page.py's bar labels)
#   legends:   boxes of the legends
LAYOUT = """(() => {
  const box = (e) => {
    const r = e.getBoundingClientRect();
    return {left: r.left, right: r.right, top: r.top, bottom: r.bottom, width: r.width, height: r.height};
  };
  const meet = (a, b) =>
    Math.min(a.right, b.right) - Math.max(a.left, b.left) > 1 && Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top) > 1;
  return [...document.querySelectorAll("svg")].map((svg, i) => {
    const panel = svg.closest("[data-panel]");
    const texts = [...svg.querySelectorAll("text")].filter(t => t.textContent.trim() && box(t).right > box(t).left);
    const overlaps = [];
    texts.forEach((a, j) => texts.slice(j + 1).forEach(b => {
      if (meet(box(a), box(b))) overlaps.push([a.textContent, b.textContent]);
    }));
    const areas = [...svg.querySelectorAll("g[id^=axes_]")].map(ax => ax.querySelector("g[id^=patch_]")).filter(Boolean);
    const legends = [...svg.querySelectorAll("g[id^=legend_]")];
    const covering = legends.filter(l => areas.some(a => meet(box(l), box(a)))).map(l => l.textContent.trim());
    const axes = [...svg.querySelectorAll("g[id^=axes_]")];
    const xaxis = (ax) => ax.querySelector("g[id^='matplotlib.axis_']");
    const xticks = axes.map(ax => [...xaxis(ax).querySelectorAll("g[id^=xtick_] text")]
      .sort((a, b) => box(a).left - box(b).left).map(t => t.textContent));
    const offsets = axes.map(ax => [...xaxis(ax).querySelectorAll(":scope > g[id^=text_] text")].map(t => t.textContent));
    const labels = [...svg.querySelectorAll("[id^=bar-label] text")].map(box);
    return {
      where: panel ? panel.dataset.panel : String(i), box: box(svg), overlaps, covering, xticks, offsets, labels,
      legends: legends.map(box),
    };
  });
})()"""
