"""PII redaction (core/redaction.py): planted PII of every type is replaced by its placeholder and
counted, and nothing of it is left; look-alikes (invalid checksums, versions, order numbers, times,
slices) are left alone; events come back as new frozen events; the modes; never raising."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from stdnum import luhn

import core.redaction as redaction
from core.errors import ConfigError, RlhfError
from core.redaction import PLACEHOLDERS, PiiFound, Redactor, redact
from core.settings import PII_TYPES, PiiType, load_settings
from schemas.events import FeedbackEvent, InteractionEvent

PLANTED: dict[str, list[str]] = {
    "email": ["ann.lee+tag@mail.example.co.uk", "JOSE.Nunez@correo.es", "josé@ejemplo.es"],
    "phone": [
        "+1 650-253-0000",
        "(212) 555-0199",
        "212.555.0199",
        "2125550199",
        "+44 20 7946 0958",
        "+49 30 90182000",
        "+33 1 42 68 53 00",
        "+91 98765 43210",
        "+81 3-1234-5678",
    ],
    "card": [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "5555555555554444",
        "3782 822463 10005",
        "6011111111111117",
        "2223003122003222",
    ],
    "iban": [
        "DE89 3704 0044 0532 0130 00",
        "GB82WEST12345698765432",
        "NO93 8601 1117 947",
        "fr14 2004 1010 0505 0001 3m02 606",
        "BE68 5390 0754 7034",
    ],
    "ip": [
        "203.0.113.7",
        "8.8.8.8",
        "2001:db8:85a3::8a2e:370:7334",
        "2001:0db8:0000:0000:0000:ff00:0042:8329",
        "::ffff:203.0.113.9",
        "fd00:ab::c1",
    ],  # no four-digit run: only its colons let it past the pre-filter
}
CASES = [(kind, value) for kind, values in PLANTED.items() for value in values]


def digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


@pytest.mark.parametrize(("kind", "value"), CASES, ids=[v for _, v in CASES])
def test_planted_pii_is_replaced_counted_and_gone(kind, value):
    done = redact(f"Hello, here it is: {value} - please check, thanks!")
    assert done.text == f"Hello, here it is: {PLACEHOLDERS[kind]} - please check, thanks!"
    assert done.counts == {kind: 1}
    assert value not in done.text and digits(done.text) == ""


def test_every_type_in_one_text_is_counted_per_type():
    text = (
        "Mail ann@example.com or bob@example.org, call +1 650-253-0000, card 4111 1111 1111 1111, "
        "IBAN DE89 3704 0044 0532 0130 00 is mine, from 203.0.113.7 and [2001:db8::8a2e:370:7334]:443."
    )
    done = redact(text)
    assert done.counts == {"email": 2, "phone": 1, "card": 1, "iban": 1, "ip": 2}
    assert done.text == ("Mail <EMAIL> or <EMAIL>, call <PHONE>, card <CARD>, IBAN <IBAN> is mine, from <IP> and [<IP>]:443.")


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112",  # fails the Luhn check
        "number 1234567812345678",  # fails Luhn
        "IBAN DE88 3704 0044 0532 0130 00",  # wrong check digits
        "order 12345678, ticket #987654321, ORD-2024-000123, invoice 2024-05-01-1234",
        "on 2024-05-01 at 10:30:45, pi is 3.14159, total $1,234,567.89",
        "release v1.2.3.4, version 1.2.3, build 1.2.3.4.5, not an address 999.1.1.1 or 01.2.3.4",
        "localhost 127.0.0.1, bind 0.0.0.0, ::1 and ::",
        "python x[1::2], y[::3], a::b, std::vector, MAC 00:1a:2b:3c:4d:5e",
        "ping me @ann, decorators @lru_cache, user@localhost",
    ],
)
def test_look_alikes_are_left_alone(text):
    done = redact(text)
    assert (done.text, done.counts) == (text, {})


def test_a_four_part_version_is_taken_for_an_address():
    """The documented choice: a bare dotted quad is an address, even when it is a version."""
    assert redact("upgrade to 1.2.3.4 today").text == "upgrade to <IP> today"


def test_iban_followed_by_a_four_letter_word_keeps_the_word():
    assert redact("BE68 5390 0754 7034 work account").text == "<IBAN> work account"


def test_placeholders_do_not_swallow_neighbouring_punctuation():
    assert redact("see 2001:db8::1:2. Or 8.8.8.8.").text == "see <IP>. Or <IP>."


def test_detectors_can_be_chosen():
    text = "ann@example.com, +1 650-253-0000"
    detectors: tuple[PiiType, ...] = ("email",)
    done = Redactor(detectors=detectors).redact(text)
    assert done.text == "<EMAIL>, +1 650-253-0000" and done.counts == {"email": 1}


def test_national_formats_follow_the_phone_region():
    assert redact("ring 030 901820 00").counts == {}  # not a US number
    assert redact("ring 030 90182000", phone_region="DE").counts == {"phone": 1}


def test_unknown_detector_or_region_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown PII types"):
        Redactor(detectors=("email", "name"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="phone_region"):
        Redactor(phone_region="XX")


def test_a_failing_validator_redacts_its_candidate(monkeypatch):
    def broken(_: str) -> bool:
        raise RuntimeError("validator bug")

    monkeypatch.setattr(luhn, "is_valid", broken)  # the module core.redaction calls
    assert redact("card 4111 1111 1111 1112").text == "card <CARD>"


def test_a_failing_phone_matcher_redacts_every_long_digit_run(monkeypatch):
    def broken(*_, **__):
        raise RuntimeError("matcher bug")

    monkeypatch.setattr(redaction, "PhoneNumberMatcher", broken)
    done = redact("call +1 650-253-0000 or 12345678, not 12345")
    assert done.text == "call +<PHONE> or <PHONE>, not 12345" and done.counts == {"phone": 2}


# --- events ---


def feedback(**fields) -> FeedbackEvent:
    base = dict(interaction_id="i-1", user_id="u-1", query="q", response="r", model_version="v1", feedback_type="thumbs_up")
    return FeedbackEvent(**{**base, **fields})


def test_event_free_text_fields_are_redacted_into_a_new_frozen_event():
    event = feedback(
        feedback_type="correction",
        query="I am ann@example.com, call +1 650-253-0000",
        response="Your card 4111 1111 1111 1111 is noted",
        correction="Never repeat 4111 1111 1111 1111; my IBAN is DE89 3704 0044 0532 0130 00",
        metadata={"note": "from 203.0.113.7", "ann@example.com": "key holds PII", "n": 3, "ok": True},
    )
    done = Redactor().redact_event(event)
    out = done.event
    assert type(out) is FeedbackEvent and out is not event
    assert (out.event_id, out.timestamp, out.user_id) == (event.event_id, event.timestamp, event.user_id)
    assert out.query == "I am <EMAIL>, call <PHONE>"
    assert out.response == "Your card <CARD> is noted"
    assert out.correction == "Never repeat <CARD>; my IBAN is <IBAN>"
    assert out.metadata == {"note": "from <IP>", "<EMAIL>": "key holds PII", "n": 3, "ok": True}
    assert done.counts == {"email": 2, "phone": 1, "card": 2, "iban": 1, "ip": 1}
    assert done.fields == ("query", "response", "correction", "metadata.note", "metadata key")
    assert "4111" not in out.to_bytes().decode() and "ann@" not in out.to_bytes().decode()
    assert event.query.startswith("I am ann@")  # the original is untouched
    with pytest.raises(ValidationError):
        out.query = "x"  # type: ignore[misc]
    assert FeedbackEvent.model_validate_json(out.to_bytes()) == out  # still a valid event


def test_interaction_events_are_redacted_too():
    event = InteractionEvent(user_id="u", query="my ip is 8.8.8.8", response="noted: 8.8.8.8", model_version="v1", latency_ms=1.0)
    done = Redactor().redact_event(event)
    assert (done.event.query, done.event.response, done.counts) == ("my ip is <IP>", "noted: <IP>", {"ip": 2})


def test_metadata_keys_redacted_to_the_same_placeholder_are_both_kept():
    done = Redactor().redact_event(feedback(metadata={"a@example.com": 1, "b@example.com": 2}))
    assert done.event.metadata == {"<EMAIL>": 1, "<EMAIL>#2": 2}


def test_a_clean_event_comes_back_as_is():
    event = feedback(query="How do I reset my password?", response="Open Settings, then Reset.")
    done = Redactor().redact_event(event)
    assert done.event is event and done.counts == {} and done.fields == ()


def test_mode_off_passes_pii_through_unscanned():
    event = feedback(query="ann@example.com")
    done = Redactor(mode="off").apply(event)
    assert done.event is event and done.counts == {}


def test_mode_drop_raises_naming_types_and_fields_never_the_pii():
    event = feedback(query="ann@example.com", response="card 4111 1111 1111 1111 and 5555555555554444")
    with pytest.raises(PiiFound) as info:
        Redactor(mode="drop").apply(event)
    exc = info.value
    assert isinstance(exc, RlhfError)
    assert str(exc) == "PII found (card x2, email x1) in query, response; privacy mode 'drop'"
    assert exc.counts == {"email": 1, "card": 2}
    assert exc.redacted.event.query == "<EMAIL>"  # the form safe to put on a DLQ


def test_mode_drop_lets_a_clean_event_through():
    event = feedback(query="How do I reset my password?")
    assert Redactor(mode="drop").apply(event).event is event


def test_privacy_settings_default_and_override(monkeypatch):
    assert load_settings().privacy.mode == "redact"
    assert set(load_settings().privacy.detectors) == set(PII_TYPES)
    monkeypatch.setenv("RLHF_PRIVACY__MODE", "drop")
    monkeypatch.setenv("RLHF_PRIVACY__DETECTORS", '["email", "card"]')
    privacy = load_settings().privacy
    redactor = Redactor.from_settings(privacy)
    assert (redactor.mode, tuple(redactor.detectors), redactor.phone_region) == ("drop", ("email", "card"), "US")
    monkeypatch.setenv("RLHF_PRIVACY__MODE", "hide")
    with pytest.raises(ConfigError, match="privacy.mode"):
        load_settings()


# --- properties ---


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.text(max_size=400))
def test_redaction_never_raises_and_counts_are_consistent(text):
    done = redact(text)
    assert isinstance(done.text, str)
    assert set(done.counts) <= set(PII_TYPES) and all(n > 0 for n in done.counts.values())
    for kind, n in done.counts.items():
        assert done.text.count(PLACEHOLDERS[kind]) >= n


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.text(alphabet=st.characters(categories=["Nd", "P", "Zs"], include_characters="+@:.-abcdefABCDEF"), max_size=300))
def test_number_soup_never_raises(text):
    redact(text)


# Words libphonenumber reads as an extension marker ("+1 650-253-0000 x 1234") join the number
# after them to the one before: one phone with an extension, not a word between two phones.
EXTENSION_MARKER = re.compile(r"e?xt(?:ensi[oó]?n)?n?|x|int|anexo")
WORDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8).filter(lambda w: not EXTENSION_MARKER.fullmatch(w))


def squeeze_phones(tokens: list[str]) -> list[str]:
    """Phone numbers side by side can be read as one longer number (German numbers have no fixed
    length: `+49 30 90182000 212.555.0199`), hidden by one placeholder and counted once."""
    return [t for i, t in enumerate(tokens) if not (t == "<PHONE>" and i and tokens[i - 1] == "<PHONE>")]


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.one_of(st.sampled_from(CASES), WORDS), min_size=1, max_size=12))
def test_planted_pii_among_words_never_survives(parts):
    text = " ".join(p[1] if isinstance(p, tuple) else p for p in parts)
    done = redact(text)
    planted = [p for p in parts if isinstance(p, tuple)]
    for _, value in planted:
        assert value not in done.text
    assert digits(done.text) == ""  # the words carry no digits: any digit left is leaked PII
    expected = squeeze_phones([PLACEHOLDERS[p[0]] if isinstance(p, tuple) else p for p in parts])
    assert squeeze_phones(done.text.split()) == expected  # each find has its placeholder; the words are kept
    counts = {kind: n for kind in PII_TYPES if (n := sum(1 for k, _ in planted if k == kind))}
    assert set(done.counts) == set(counts)
    assert all(done.counts[k] == counts[k] for k in counts if k != "phone")
    assert done.counts.get("phone", 0) >= expected.count("<PHONE>")


# --- pre-filters: they skip work, never a find ---

CLEAN_TEXTS = [
    "How do I reset my password in app 3?",
    "Open Settings, go to Account, then press Reset.",
    "Note: it cost $12 last year and 999 points",  # one colon, digit runs under four
    "Straße 7, café au lait — naïve résumé",  # not ASCII
    "",
]


def ungated(text: str) -> tuple[str, dict[PiiType, int]]:
    """Every detector on the text, in order, with no pre-filter: what redaction finds by definition."""
    counts: dict[PiiType, int] = {}
    for kind, detector in redaction._DETECTORS:
        text, n = detector(text, "US")
        if n:
            counts[kind] = n
    return text, counts


def spy_detectors(monkeypatch) -> list[str]:
    """Record which detectors a Redactor built afterwards runs."""
    called: list[str] = []

    def spy(kind, detector):
        def run(text, region):
            called.append(kind)
            return detector(text, region)

        return run

    monkeypatch.setattr(redaction, "_DETECTORS", tuple((kind, spy(kind, d)) for kind, d in redaction._DETECTORS))
    return called


NUMBER_SOUP = st.text(alphabet=st.characters(categories=["Nd", "P", "Zs"], include_characters="+@:.-abcdefABCDEF"), max_size=120)
PII_WORDS_AND_NUMBERS = st.lists(
    st.one_of(st.sampled_from([v for _, v in CASES]), WORDS, st.from_regex(r"[0-9]{1,14}", fullmatch=True)), max_size=8
).map(" ".join)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.one_of(NUMBER_SOUP, PII_WORDS_AND_NUMBERS))
def test_the_pre_filters_skip_nothing_a_detector_would_find(text):
    done = redact(text)
    assert (done.text, dict(done.counts)) == ungated(text)


@pytest.mark.parametrize(("kind", "value"), CASES, ids=[v for _, v in CASES])
def test_each_pii_type_planted_in_clean_text_passes_the_pre_filter(kind, value):
    for text in CLEAN_TEXTS:
        planted = f"{text} {value} {text}"
        assert redaction._may_hold_pii(planted)
        assert redact(planted).counts == {kind: 1}


@pytest.mark.parametrize("where", ["query", "response", "correction", "metadata value", "metadata key"])
@pytest.mark.parametrize(("kind", "value"), CASES, ids=[v for _, v in CASES])
def test_pii_in_any_one_text_of_an_otherwise_clean_event_is_found(kind, value, where):
    planted = f"it is {value}, thanks"
    fields: dict[str, Any] = dict(
        query=CLEAN_TEXTS[0], response=CLEAN_TEXTS[1], correction=CLEAN_TEXTS[2], metadata={"note": CLEAN_TEXTS[3], "n": 3}
    )
    if where in ("query", "response", "correction"):
        fields[where] = planted
    elif where == "metadata value":
        fields["metadata"] = {**fields["metadata"], "extra": planted}
    else:
        fields["metadata"] = {**fields["metadata"], planted: "x"}
    done = Redactor().redact_event(feedback(feedback_type="correction", **fields))
    assert done.counts == {kind: 1}
    assert value not in done.event.to_bytes().decode()


def test_clean_texts_and_events_reach_no_detector(monkeypatch):
    called = spy_detectors(monkeypatch)
    redactor = Redactor()
    for text in CLEAN_TEXTS:
        done = redactor.redact(text)
        assert (done.text, done.counts) == (text, {})
    event = feedback(
        feedback_type="correction",
        query=CLEAN_TEXTS[0],
        response=CLEAN_TEXTS[2],
        correction=CLEAN_TEXTS[3],
        metadata={"note": CLEAN_TEXTS[1], "n": 3},
    )
    monkeypatch.setattr(Redactor, "redact", lambda *_: pytest.fail("a clean event's texts are not redacted one by one"))
    done_event = redactor.redact_event(event)
    assert done_event.event is event and done_event.counts == {} and called == []


def test_number_detectors_run_only_on_enough_digits(monkeypatch):
    called = spy_detectors(monkeypatch)
    redactor = Redactor()
    redactor.redact("Reset (1003) now")  # a four-digit run: too few digits for a phone (7) or a card (13)
    assert "card" not in called and "phone" not in called and "iban" in called
    called.clear()
    redactor.redact("order 1234567 today")
    assert "phone" in called and "card" not in called
    called.clear()
    redactor.redact("ticket 4111 1111 1111 1112")  # Luhn fails: nothing found, but it was looked at
    assert {"iban", "card", "phone"} <= set(called)


def test_texts_joined_for_the_pre_filter_make_no_digit_run_across_them():
    event = feedback(query="ends in 12", response="34 starts it")
    assert not redaction._may_hold_pii(redaction._JOIN.join(redaction._texts(event)))
    assert Redactor().redact_event(event).event is event
