"""What the other replicas served, so that any replica takes feedback on any answer.

With `assistant.replicas` above 1, each replica follows the `interactions` topic (every answer whose
feedback is collected is there, acknowledged by Kafka before its reply and token left the replica
that served it) and the `feedback` topic (to continue the numbering of a user's verdicts that another
replica started: a change of mind posted to a second replica is a new event, a double click is not).
Both are read from `feedback_token_ttl_s` ago at start, so a replica started mid-experiment takes
feedback on answers given before it started. Feedback for an answer not yet read waits for it briefly.
"""

from __future__ import annotations

import logging

from confluent_kafka import Message

from assistant.following import TopicFollower
from assistant.recent import RecentInteractions, ServedInteraction
from core.errors import EventValidationError
from core.settings import Settings
from schemas import parse_event
from schemas.events import FeedbackEvent, InteractionEvent
from schemas.topics import topic_name

log = logging.getLogger("rlhf.serve")
PEER_WAIT_S = 5.0  # an interaction is in Kafka before its token exists: peers lag by a poll, not seconds
VERDICT_NUMBER = "verdict_number"  # the feedback event's metadata key that carries its verdict's number


def served_from(event: InteractionEvent) -> ServedInteraction:
    return ServedInteraction(
        event.interaction_id,
        event.user_id,
        event.query,
        event.response,
        event.model_version,
        event.experiment,
        event.variant,
        context=event.context,
        conversation_id=event.conversation_id,
        turn_index=event.turn_index,
        served_at=event.timestamp.timestamp(),
    )


def peer_follower(settings: Settings, recent: RecentInteractions) -> TopicFollower:
    interactions = topic_name(settings.kafka.topic_prefix, "interactions")

    def apply(msg: Message) -> None:
        try:
            if msg.topic() == interactions:
                recent.add(served_from(parse_event(InteractionEvent, msg.value())), replace=False)
                return
            feedback = parse_event(FeedbackEvent, msg.value())
        except EventValidationError:
            return  # the stream app dead-letters it; no replica served it
        number = feedback.metadata.get(VERDICT_NUMBER)
        if isinstance(number, int):
            recent.observe_verdict(feedback.verdict_key, (feedback.feedback_type, feedback.rating, feedback.correction), number)

    return TopicFollower(
        settings, ["interactions", "feedback"], apply, "assistant-peers", since_s=settings.assistant.feedback_token_ttl_s
    )
