"""Feedback tokens and the memory of served interactions: pure, no Kafka, no models."""

from __future__ import annotations

import threading

import pytest

from assistant.recent import ExpiredInteraction, RecentInteractions, ServedInteraction, UnknownInteraction
from assistant.tokens import FeedbackTokens, TokenError

TOKENS = FeedbackTokens(b"k" * 32, ttl_s=60)


def test_a_token_carries_its_interaction_and_user_until_it_expires():
    token = TOKENS.issue("i-1", "u-1", now=1000)
    claims = TOKENS.verify(token, now=1059)
    assert (claims.interaction_id, claims.user_id, claims.expires_at) == ("i-1", "u-1", 1060)
    with pytest.raises(TokenError, match="i-1 has expired"):
        TOKENS.verify(token, now=1060)


@pytest.mark.parametrize(
    "mangle", [lambda t: "x" + t, lambda t: t[:-2] + "AA", lambda t: t.split(".")[0], lambda t: "", lambda t: "a.b"]
)
def test_an_altered_or_malformed_token_is_refused(mangle):
    with pytest.raises(TokenError):
        TOKENS.verify(mangle(TOKENS.issue("i-1", "u-1")))


def test_another_servers_secret_does_not_verify():
    with pytest.raises(TokenError, match="signature"):
        FeedbackTokens(b"other", 60).verify(TOKENS.issue("i-1", "u-1"))


def served(n: int, at: float = 0.0) -> ServedInteraction:
    return ServedInteraction(f"i-{n}", "u", "q?", "a.", "v1", None, None, served_at=at)


def test_recent_interactions_forget_the_oldest_for_room_and_expire_after_the_ttl():
    recent = RecentInteractions(capacity=2, ttl_s=10)
    for n in range(3):
        recent.add(served(n, at=100))
    assert len(recent) == 2 and recent.get("i-2", now=105).interaction_id == "i-2"
    with pytest.raises(UnknownInteraction, match="i-0"):
        recent.get("i-0", now=105)
    with pytest.raises(ExpiredInteraction, match="i-1"):
        recent.get("i-1", now=111)


@pytest.mark.parametrize("token", ["é.é", TOKENS.issue("i-1", "u-1") + "ñ", "\ud800.\ud800", "a" * 2000 + ".b"])
def test_a_token_that_is_not_base64url_text_is_malformed_not_an_error(token):
    """Issue 33, finding 3: hmac.compare_digest refuses non-ASCII str with a TypeError (a 500 before)."""
    with pytest.raises(TokenError, match="malformed"):
        TOKENS.verify(token)


def test_another_replicas_interactions_and_verdicts_continue_here():
    recent = RecentInteractions(capacity=10, ttl_s=10)
    threading.Timer(0.05, lambda: recent.add(served(7, at=100), replace=False)).start()
    assert recent.wait_for("i-7", timeout_s=5) and not recent.wait_for("i-8", timeout_s=0.01)
    recent.add(served(7, at=200), replace=False)  # read back from the topic: what this replica holds stays
    assert recent.get("i-7", now=105).served_at == 100
    recent.observe_verdict(("i-7", "verdict"), ("thumbs_up", None), 0)
    recent.observe_verdict(("i-7", "verdict"), ("thumbs_down", None), 1)
    recent.observe_verdict(("i-7", "verdict"), ("thumbs_up", None), 0)  # late and older: no effect
    assert recent.verdict_number(("i-7", "verdict"), ("thumbs_down", None)) == 1  # a double click of the peer's verdict
    assert recent.verdict_number(("i-7", "verdict"), ("thumbs_up", None)) == 2  # a change of mind after it
