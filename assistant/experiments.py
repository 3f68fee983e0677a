"""The open experiment of each policy, as the assistant service learns it from the `experiments` topic.

The events are folded by `schemas.experiments.ExperimentBook`; `experiment_follower` feeds one from
the topic's beginning (assistant/following.py), so every start of the service rebuilds the book and
every replica holds the same one.

    book = ExperimentBook()
    follower = experiment_follower(settings, book)
    threading.Thread(target=follower.run, args=(stop,), daemon=True).start()
    follower.caught_up.wait(10)          # the topic was read to its end once
    book.open("assistant")               # ExperimentStarted | None
"""

from __future__ import annotations

import logging

from confluent_kafka import OFFSET_BEGINNING, Message

from assistant.following import TopicFollower
from core.errors import EventValidationError
from core.settings import Settings
from schemas import parse_event
from schemas.experiments import ExperimentBook, ExperimentEvent

log = logging.getLogger("rlhf.serve")


def experiment_follower(settings: Settings, book: ExperimentBook) -> TopicFollower:
    def apply(msg: Message) -> None:
        try:
            step = parse_event(ExperimentEvent, msg.value()).root
        except EventValidationError as exc:
            # The topic has no DLQ: a record no experiment can be read from changes no routing.
            log.error("ignoring invalid experiment record %s[%d]@%d: %s", msg.topic(), msg.partition(), msg.offset(), exc)
            return
        book.apply(step)

    return TopicFollower(settings, ["experiments"], apply, "assistant-experiments", start=OFFSET_BEGINNING)
