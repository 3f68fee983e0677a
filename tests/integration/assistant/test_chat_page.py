"""The chat page in headless Chromium against the real service and broker: ask three questions in
one conversation (streamed answers), thumbs-down the first answer, two stars on the second, a
correction on the third; three FeedbackEvents with those interaction ids reach Kafka, and the
interactions are the turns of one conversation, each with the turns before it. The screenshot is kept as an artifact
(artifacts/chat.png). Chromium is driven over the DevTools protocol (tests/integration/browser.py)."""

from __future__ import annotations

import json
import threading
import time

import pytest
import uvicorn

from assistant.service import create_app
from core.settings import FeedbackSettings
from devtools.kafka_local import free_port
from schemas import FeedbackEvent, InteractionEvent
from tests.integration.assistant.test_openai_api import read
from tests.integration.assistant.test_service import registry  # noqa: F401 (a fixture)
from tests.integration.browser import ARTIFACTS, DevTools, need_chromium

pytestmark = pytest.mark.integration

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
    need_chromium()
    browser = DevTools(tmp_path / "profile")
    try:
        session = browser.open(url, ready="document.readyState == 'complete' && !!document.getElementById('send')")
        page = json.loads(browser.evaluate(session, SCENARIO, awaits=True))
        browser.screenshot(session, ARTIFACTS / "chat.png")
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
