"""A three-turn conversation with the app's own system prompt, through the real service serving
SmolLM2 (its chat template) on the real broker, driven by the official `openai` client: the policy
is shown every turn and that system prompt in SmolLM2's template (the prompt it saw, from the DEBUG
log), the streamed last turn reports usage as the tokenizer counts it, the interaction events in
Kafka carry the conversation (version 2: context, conversation id, turn index), and, through the
sink, so do the rows in ClickHouse."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import openai
import pytest
from fastapi.testclient import TestClient
from transformers import AutoTokenizer

from analytics.clickhouse import open_warehouse
from assistant.service import create_app
from core.settings import FeedbackSettings
from registry.store import ModelRegistry
from schemas import InteractionEvent
from tests.integration.analytics.conftest import SinkProcess
from tests.integration.assistant.test_openai_api import read
from trainers.base_models import SMOLLM2, resolve_base_model

pytestmark = pytest.mark.integration
SYSTEM = "You are the help desk of Mail, the e-mail app. Answer in one short sentence."
QUESTIONS = ["How do I reset my password in Mail?", "And how do I undo that?", "And in Calendar?"]


@pytest.fixture
def smollm2_serving(settings) -> ModelRegistry:
    """A registry whose serving base version is SmolLM2 (its files linked, not copied)."""
    source = Path(resolve_base_model(SMOLLM2))
    registry = ModelRegistry.of(settings)

    def link(directory: Path) -> None:
        for file in source.iterdir():
            (directory / file.name).symlink_to(file)

    registry.register_base("assistant", "smollm2", link)
    return registry


def test_a_three_turn_conversation_with_a_system_prompt_is_answered_and_logged_whole(settings, smollm2_serving, caplog):
    settings = settings.model_copy(update={"feedback": FeedbackSettings(collection_rate=1.0)})
    messages: list = [{"role": "system", "content": SYSTEM}]
    with caplog.at_level(logging.DEBUG, logger="rlhf.serve"), TestClient(create_app(settings, smollm2_serving)) as http:
        client = openai.OpenAI(base_url="http://testserver/v1", api_key="open", http_client=http, max_retries=0)
        ids = []
        for question in QUESTIONS[:2]:
            messages.append({"role": "user", "content": question})
            reply = client.chat.completions.create(model="assistant", messages=messages, user="u-3", temperature=0, max_tokens=12)
            assert reply.usage is not None and reply.usage.completion_tokens <= 12
            messages.append({"role": "assistant", "content": reply.choices[0].message.content})
            ids.append(reply.id)
        messages.append({"role": "user", "content": QUESTIONS[2]})
        chunks = list(
            client.chat.completions.create(
                model="assistant",
                messages=messages,
                user="u-3",
                temperature=0,
                max_tokens=12,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    ids.append(chunks[0].id)
    answer = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert answer and chunks[-1].choices == [] and chunks[-1].usage is not None

    # The prompt the policy saw: the whole conversation in SmolLM2's chat template, the app's system prompt first.
    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model(SMOLLM2))
    expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompts = [r.getMessage().removeprefix("prompt of smollm2: ") for r in caplog.records if r.name == "rlhf.serve"]
    assert prompts[-1] == expected and prompts[-1].startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n")
    assert all(f"<|im_start|>user\n{q}<|im_end|>" in prompts[-1] for q in QUESTIONS)
    assert chunks[-1].usage.prompt_tokens == len(tokenizer(expected, add_special_tokens=False)["input_ids"])

    events = sorted(read(settings, "interactions", InteractionEvent, 3), key=lambda e: e.turn_index)
    assert [e.interaction_id for e in events] == ids and [e.turn_index for e in events] == [0, 1, 2]
    assert [e.query for e in events] == QUESTIONS and events[2].response == answer
    assert len({e.conversation_id for e in events}) == 1 and all(e.schema_version == 2 for e in events)
    assert [(t.role, t.content) for t in events[2].context] == [(m["role"], m["content"]) for m in messages[:-1]]
    assert events[2].system == SYSTEM

    # Through the sink: each row holds its turn's conversation (columns of analytics/tables.py).
    sink = SinkProcess(settings)
    try:
        sink.wait_ready()
        sink.wait_counts({"interactions": 3})
    finally:
        assert sink.stop() == 0, sink.output()
    deadline = time.monotonic() + 30
    while True:  # the stopped sink lets go of the embedded database
        try:
            warehouse = open_warehouse(settings)
            break
        except Exception:
            assert time.monotonic() < deadline
            time.sleep(0.5)
    try:
        rows = warehouse.query_df(
            "SELECT interaction_id, context, conversation_id, turn_index, context_turns, context_chars "
            "FROM interactions FINAL ORDER BY turn_index"
        ).to_dict("records")
    finally:
        warehouse.close()
    assert [r["interaction_id"] for r in rows] == ids
    for row, event in zip(rows, events, strict=True):
        context = row["context"] if isinstance(row["context"], list) else json.loads(row["context"])
        assert context == [t.model_dump() for t in event.context]
        assert (row["conversation_id"], row["turn_index"]) == (event.conversation_id, event.turn_index)
        assert (row["context_turns"], row["context_chars"]) == (len(event.context), sum(len(t.content) for t in event.context))
