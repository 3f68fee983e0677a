"""The chat page in headless Chromium against the real service and broker: ask three questions in
one conversation (streamed answers), thumbs-down the first answer, two stars on the second, a
correction on the third; three FeedbackEvents with those interaction ids reach Kafka, and the
interactions are the turns of one conversation, each with the turns before it. The screenshot is kept as an artifact
(artifacts/chat.png). Chromium is driven over the DevTools protocol on a pipe (its fds 3 and 4,
NUL-separated JSON), which needs no package beyond the browser."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import uvicorn

from assistant.service import create_app
from core.settings import FeedbackSettings
from devtools.kafka_local import free_port
from schemas import FeedbackEvent, InteractionEvent
from tests.integration.assistant.test_openai_api import read
from tests.integration.assistant.test_service import registry  # noqa: F401 (a fixture)

pytestmark = pytest.mark.integration
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[3] / "artifacts"

SCENARIO = """(async () => {
  const wait = async (ready) => {
    for (let i = 0; i < 1200; i++) { if (ready()) return; await new Promise(r => setTimeout(r, 100)); }
    throw new Error("timed out");
  };
  const answers = () => document.querySelectorAll("[data-interaction]");
  const ask = async (q, n) => {
    document.getElementById("question").value = q; document.getElementById("send").click();
    await wait(() => answers().length >= n);
  };
  const thanks = (n) => [...document.querySelectorAll(".status")].filter(s => s.textContent === "thanks").length >= n;
  await ask("How do I reset my password?", 1);
  answers()[0].querySelector("[data-feedback=thumbs_down]").click(); await wait(() => thanks(1));
  await ask("How do I export my data?", 2);
  answers()[1].querySelector("[data-feedback=rating-2]").click(); await wait(() => thanks(2));
  await ask("How do I change my e-mail address?", 3);
  window.prompt = () => "Open Settings > Account > E-mail and enter the new address.";
  answers()[2].querySelector("[data-feedback=correction]").click(); await wait(() => thanks(3));
  const key = document.getElementById("apikey"); key.value = "sk-typed"; key.dispatchEvent(new Event("change"));
  const stored = {local: JSON.stringify(localStorage), session: sessionStorage.getItem("rlhf-api-key")};
  const version = document.getElementById("version").textContent;
  return JSON.stringify({ids: [...answers()].map(a => a.dataset.interaction), version, stored});
})()"""


class DevTools:
    """Chromium with `--remote-debugging-pipe`: commands in on its fd 3, replies out on its fd 4."""

    def __init__(self, profile: Path):
        to_browser, self._in = os.pipe()
        self._out, from_browser = os.pipe()

        def wire() -> None:
            os.dup2(to_browser, 3)
            os.dup2(from_browser, 4)

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
                "--remote-debugging-pipe",
                f"--user-data-dir={profile}",
                "--window-size=1000,900",
                "about:blank",
            ],
            pass_fds=(3, 4),
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

    def close(self) -> None:
        self.process.kill()
        self.process.wait(10)
        os.close(self._in)
        os.close(self._out)


@pytest.fixture
def served(settings, registry):  # noqa: F811
    settings = settings.model_copy(update={"feedback": FeedbackSettings(collection_rate=1.0)})
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, registry), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline, "the service did not start"
        time.sleep(0.1)
    yield settings, f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(30)


def test_the_chat_page_sends_thumbs_a_rating_and_a_correction(served, tmp_path):
    settings, url = served
    if not Path(CHROMIUM).exists():
        pytest.skip(f"chromium not installed at {CHROMIUM} (apt-get install -y chromium)")
    browser = DevTools(tmp_path / "profile")
    try:
        target = browser.call("Target.createTarget", url=url)["targetId"]
        session = browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        browser.call("Runtime.enable", session)
        deadline = time.monotonic() + 30
        while not browser.call(
            "Runtime.evaluate", session, expression="document.readyState == 'complete' && !!document.getElementById('send')"
        )["result"]["value"]:
            assert time.monotonic() < deadline, "the page did not load"
            time.sleep(0.2)
        result = browser.call("Runtime.evaluate", session, expression=SCENARIO, awaitPromise=True, returnByValue=True)
        assert "exceptionDetails" not in result, result
        page = json.loads(result["result"]["value"])
        ARTIFACTS.mkdir(exist_ok=True)
        shot = browser.call("Page.captureScreenshot", session, format="png")["data"]
        (ARTIFACTS / "chat.png").write_bytes(base64.b64decode(shot))
    finally:
        browser.close()

    assert page["version"] == "base" and len(set(page["ids"])) == 3
    # The API key typed in stays in the tab (sessionStorage), never in persistent storage (issue 33, finding 8).
    assert page["stored"]["session"] == "sk-typed" and "sk-typed" not in page["stored"]["local"]
    feedback = sorted(read(settings, "feedback", FeedbackEvent, 3), key=lambda f: page["ids"].index(f.interaction_id))
    assert [(f.interaction_id, f.feedback_type, f.rating) for f in feedback] == [
        (page["ids"][0], "thumbs_down", None),
        (page["ids"][1], "rating", 2),
        (page["ids"][2], "correction", None),
    ]
    assert feedback[2].correction.startswith("Open Settings") and len({f.user_id for f in feedback}) == 1
    interactions = sorted(read(settings, "interactions", InteractionEvent, 3), key=lambda i: i.turn_index)
    assert [i.interaction_id for i in interactions] == page["ids"] and len({i.conversation_id for i in interactions}) == 1
    assert [t.content for t in interactions[2].context if t.role == "user"] == [
        "How do I reset my password?",
        "How do I export my data?",
    ]
    assert [t.content for t in interactions[2].context if t.role == "assistant"] == [i.response for i in interactions[:2]]
    assert (feedback[2].conversation_id, feedback[2].turn_index) == (interactions[2].conversation_id, 2)
