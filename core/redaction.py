"""PII redaction: find e-mail addresses, phone numbers, payment-card numbers, IBANs and IP addresses
in free text and replace each with a typed placeholder (`<EMAIL>`, `<PHONE>`, `<CARD>`, `<IBAN>`,
`<IP>`), counting what was found per type. Pure functions, no I/O: the stream app and the sink call
`Redactor.apply` where events enter, so the original text never reaches ClickHouse or a training set.

    from core.redaction import Redactor, redact
    redact("mail me at ann@example.com").text        # 'mail me at <EMAIL>'
    Redactor.from_settings(settings.privacy).apply(event)   # RedactedEvent, or raises PiiFound in drop mode

What is detected, and by what:
- e-mail: a pattern (an address has no checksum to check; a maintained library adds nothing).
- phone: `phonenumbers` (Google's libphonenumber), `PhoneNumberMatcher`: numbers with `+` and a
  country code from anywhere, national formats of `phone_region`; only numbers in a country's
  assigned ranges (leniency VALID), and a number without `+` only when grouped as its country
  groups it or not at all (STRICT_GROUPING), so `ORD-2024-000123` is not a phone.
- card: 13-19 digits, plain or in groups, starting 2-6 (the card networks' ranges) and passing the
  Luhn check (`stdnum.luhn`); an invalid number is left alone.
- IBAN: a pattern, then `stdnum.iban`: the country's length and format, and the ISO 7064 mod 97
  check digits; not the optional national account checks, so a typo'd account number still hides.
- IP: dotted quads and IPv6 forms, validated by the stdlib `ipaddress`. Loopback and unspecified
  addresses (127.0.0.1, 0.0.0.0, ::1) identify nobody and are kept. A dotted quad is an address even
  where it is a four-part version (`1.2.3.4`), but not after a letter (`v1.2.3.4`) nor inside a
  longer dotted run (`1.2.3.4.5`). An IPv6 form needs three non-empty groups (`2001:db8::1`), so
  Python slices (`x[1::2]`) and times (`12:30:45`) are not addresses.
- names: not detected. The maintained detectors (Presidio's, spaCy's NER) need a spaCy model that
  is not published on PyPI, and a per-message NER pass would cost milliseconds, not microseconds.

Each detector runs only when a cheap pre-filter (an `@`, a run of four digits, two colons ...)
says it could match, so a clean 200-character message costs about a microsecond and one with a
phone number about a hundred (the matcher). An event's texts go through the pre-filter joined, in
one pass, and a clean event (nearly every one) comes back with nothing else done. Redaction never
raises: a validator that fails on a candidate redacts it (fail closed), and if the phone matcher
fails every seven-digit run is treated as a phone.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Generic, TypeVar

import phonenumbers
from phonenumbers import Leniency, PhoneNumberMatcher
from pydantic import BaseModel
from stdnum import iban as stdnum_iban
from stdnum import luhn

from core.errors import ConfigError, RlhfError
from core.settings import PII_TYPES, PiiType, PrivacyMode, PrivacySettings

# The free-text fields of the events that carry user or model text (schemas/events.py); ids, versions
# and timestamps are not free text. Fields an event does not have are skipped.
TEXT_FIELDS: tuple[str, ...] = ("query", "response", "correction", "metadata", "context")

PLACEHOLDERS: Mapping[PiiType, str] = {t: f"<{t.upper()}>" for t in PII_TYPES}

# The counts of a text or event without PII: one shared mapping, so the clean path allocates none,
# read-only, so no caller can add to everybody's.
NO_PII: Mapping[PiiType, int] = MappingProxyType({})

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Redacted:
    """A text with its PII replaced, and how many of each type were replaced (only types found)."""

    text: str
    counts: Mapping[PiiType, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RedactedEvent(Generic[M]):
    """An event with its free-text fields redacted: a new frozen event of the same class, the
    counts per PII type, and the fields that held PII (`query`, `metadata.<key>`); names, never values."""

    event: M
    counts: Mapping[PiiType, int] = field(default_factory=dict)
    fields: tuple[str, ...] = ()


class PiiFound(RlhfError):
    """Drop mode met an event holding PII. The message names the types, counts and fields, never
    the PII; `redacted` is the event with its PII replaced, the only form safe to put on a DLQ."""

    def __init__(self, redacted: RedactedEvent[Any]) -> None:
        self.redacted = redacted
        self.counts = dict(redacted.counts)
        found = ", ".join(f"{t} x{n}" for t, n in sorted(self.counts.items()))
        super().__init__(f"PII found ({found}) in {', '.join(redacted.fields)}; privacy mode 'drop'")


# --- detectors: each takes a text and returns (text with its finds replaced, number replaced) ---

# Each pattern starts with a plain character class, not a lookbehind, so that `re` skips quickly
# over the positions where no match can start; the lookbehinds come after the first character.
_EMAIL = re.compile(r"[\w.+%-](?<![\w.+%-]{2})[\w.+%-]*@(?:[\w-]+\.)+[^\W\d_]{2,}")
_CARD = re.compile(  # plain, 4-4-4-x groups, or Amex's 4-6-5
    r"[0-9](?<![0-9]{2})(?:[0-9]{12,18}|[0-9]{3}(?:[ -][0-9]{4}){2}[ -][0-9]{1,7}|[0-9]{3}[ -][0-9]{6}[ -][0-9]{4,5})(?![0-9])"
)
# Matched from the check digits: the two country letters before them are in the lookbehind.
_IBAN = re.compile(
    r"[0-9](?<=(?<![A-Za-z0-9])[A-Za-z]{2}[0-9])[0-9](?: ?[A-Za-z0-9]{4}){2,7}(?: ?[A-Za-z0-9]{1,4})?(?![A-Za-z0-9])"
)
_IPV4 = re.compile(r"[0-9](?<![\w.][0-9])[0-9]{0,2}\.(?:[0-9]{1,3}\.){2}[0-9]{1,3}(?!\w|\.[0-9])")
_IPV6 = re.compile(r"[0-9A-Fa-f:](?<![\w:.][0-9A-Fa-f:])[0-9A-Fa-f]*:[0-9A-Fa-f]*:[0-9A-Fa-f:.]*(?<!\.)")
# Every card, IBAN and phone number has four digits in a row, give or take separators: a text
# without such a run skips those detectors (\d: the phone matcher reads non-ASCII digits too).
_NUMBER = re.compile(r"\d(?:[\s().:/-]{0,3}\d){3,}")
_MAYBE_PHONE = re.compile(r"\d(?:[\s().\-/]{0,3}\d){6,}")  # seven digits, however separated
_COUNTRY_CODE_BEFORE = re.compile(r"\+\d{1,3}[\s.-]{0,2}$")
_DIGITS_GLUED_ON = re.compile(r"(?:[().\-/]*\d+)*")
_IBAN_MIN, _IBAN_MAX = 15, 34
# Joins an event's texts for one pre-filter pass. In no separator class above, so no digit run
# spans two texts; joining only adds `@`s, colons and runs, so a clean join proves each text clean.
_JOIN = "\0"
_ASCII_DIGITS = b"0123456789"


def _digits(text: str) -> int:
    """At least the number of digits in `text`, as the patterns' `\\d` counts them: exact for ASCII
    text (where that is 0-9), its length otherwise. Deleting bytes costs ~1 ns a character, a
    `re` scan ~5."""
    if not text.isascii():
        return len(text)
    raw = text.encode()
    return len(raw) - len(raw.translate(None, _ASCII_DIGITS))


def _has_number(text: str, digits: int) -> bool:
    """A run of four digits (`_NUMBER`), which every card, IBAN, phone number and dotted quad has;
    the scan is skipped when `digits` (from `_digits`) is too few for one."""
    return digits >= 4 and _NUMBER.search(text) is not None


def _may_hold_pii(text: str) -> bool:
    """False proves that no detector can find anything: every find needs an `@` (e-mail), two
    colons (IPv6) or a run of four digits."""
    return "@" in text or text.count(":") >= 2 or _has_number(text, _digits(text))


def _sub(pattern: re.Pattern[str], text: str, placeholder: str, is_pii: Callable[[str], bool]) -> tuple[str, int]:
    """Replace the candidates that `is_pii` accepts. A rejected candidate can hide a real one that
    overlaps it (`0000 4111 1111 1111 1111`: an invalid card, then a valid one): the search goes
    on from the character after the rejected candidate's start, not from its end."""
    out: list[str] = []
    found = done = pos = 0
    while (m := pattern.search(text, pos)) is not None:
        try:
            hit = is_pii(m.group())
        except Exception:  # a validator that fails on a candidate: redact it (fail closed)
            hit = True
        if hit:
            out += (text[done : m.start()], placeholder)
            done = pos = m.end()
            found += 1
        else:
            pos = m.start() + 1
    return ("".join(out) + text[done:], found) if found else (text, 0)


def _redact_email(text: str, _: str) -> tuple[str, int]:
    if "@" not in text:
        return text, 0
    return _sub(_EMAIL, text, PLACEHOLDERS["email"], lambda _: True)


def _is_card(candidate: str) -> bool:
    digits = candidate.replace(" ", "").replace("-", "")
    return 13 <= len(digits) <= 19 and digits[0] in "23456" and luhn.is_valid(digits)


def _redact_card(text: str, _: str) -> tuple[str, int]:
    return _sub(_CARD, text, PLACEHOLDERS["card"], _is_card)


def _mod97_ok(compact: str) -> bool:
    """ISO 7064 mod 97-10 over the rearranged IBAN: the cheap test run before `stdnum.iban`'s
    full one (country, length, format), which costs tens of microseconds."""
    return int("".join(str(int(c, 36)) for c in compact[4:] + compact[:4])) % 97 == 1


def _iban_in(candidate: str) -> str | None:
    """The IBAN the candidate starts with, if any: a pattern can run on into the next word
    (`... 3000 is mine`), so shorter prefixes are tried too, longest first."""
    compact = candidate.replace(" ", "").upper()
    for n in range(min(len(compact), _IBAN_MAX), _IBAN_MIN - 1, -1):
        if _mod97_ok(compact[:n]) and stdnum_iban.is_valid(compact[:n], check_country=False):
            return compact[:n]
    return None


def _redact_iban(text: str, _: str) -> tuple[str, int]:
    """Like `_sub`, but the IBAN can end inside the match (the pattern ran on into the next word
    or the next IBAN): the search goes on from where the IBAN ends."""
    out: list[str] = []
    found = done = pos = 0
    while (m := _IBAN.search(text, pos)) is not None:
        start = m.start() - 2  # the country letters, matched by the lookbehind
        raw = text[start : m.end()]
        try:
            hit = _iban_in(raw)
        except Exception:  # fail closed
            hit = raw.replace(" ", "")
        if hit is None:
            pos = m.start() + 1
            continue
        end, seen = m.end(), 0
        for i, c in enumerate(raw):
            seen += c != " "
            if seen == len(hit):
                end = start + i + 1
                break
        out += (text[done:start], PLACEHOLDERS["iban"])
        done = pos = end
        found += 1
    return ("".join(out) + text[done:], found) if found else (text, 0)


def _is_public_ip(candidate: str) -> bool:
    addr = ipaddress.ip_address(candidate)
    return not (addr.is_loopback or addr.is_unspecified)


def _ipv6_in(candidate: str) -> bool:
    groups = [g for g in candidate.split(":") if g]  # a dotted IPv4 tail counts as two groups
    if len(candidate) > 45 or len(groups) + any("." in g for g in groups) < 3:
        return False
    for form in (candidate, candidate.rstrip(".:")):
        try:
            return _is_public_ip(form) and ":" in form
        except ValueError:
            continue
    return False


def _redact_ip(text: str, _: str) -> tuple[str, int]:
    found = 0
    if text.count(":") >= 2:
        text, found = _sub(_IPV6, text, PLACEHOLDERS["ip"], _ipv6_in)
    if "." in text:
        text, v4 = _sub(_IPV4, text, PLACEHOLDERS["ip"], _ipv4_in)
        found += v4
    return text, found


def _ipv4_in(candidate: str) -> bool:
    try:
        return _is_public_ip(candidate)
    except ValueError:  # 999.1.1.1, 01.2.3.4: not an address
        return False


def _written_as_phone(raw: str, region: str) -> bool:
    """A valid number written with `+` is a phone; one without must also be grouped the way its
    country groups it (or not at all), so an order number such as 2024-000123 is not a phone."""
    return raw.startswith("+") or any(True for _ in PhoneNumberMatcher(raw, region, leniency=Leniency.STRICT_GROUPING))


def _redact_phone(text: str, region: str) -> tuple[str, int]:
    found = 0
    for _ in range(3):  # numbers side by side can hide one another from the matcher: look again
        if not _MAYBE_PHONE.search(text):
            break
        try:
            matches = PhoneNumberMatcher(text, region, leniency=Leniency.VALID)
            spans = [(m.start, m.end) for m in matches if _written_as_phone(m.raw_string, region)]
        except Exception:  # the matcher failed: treat every seven-digit run as a phone (fail closed)
            text, n = _sub(_MAYBE_PHONE, text, PLACEHOLDERS["phone"], lambda _: True)
            return text, found + n
        if not spans:
            break
        for start, end in reversed(spans):
            # What the matcher left of the number's token goes too: a `+1 ` before it, and the
            # digits glued on after it (`+49 30 90182000 212.555.0199` matches up to `212`).
            lead = _COUNTRY_CODE_BEFORE.search(text, max(0, start - 6), start)
            tail = _DIGITS_GLUED_ON.match(text, end)
            text = text[: lead.start() if lead else start] + PLACEHOLDERS["phone"] + text[tail.end() if tail else end :]
        found += len(spans)
    return text, found


# Order matters: each detector sees the text its predecessors left, so an e-mail's digits are gone
# before the number detectors run, and an IBAN's or card's digits before the phone matcher's.
# The number detectors run only on a text with a four-digit run and at least this many digits: a
# card has 13 (`_CARD`), a phone number 7 (`_MAYBE_PHONE` gates the matcher), an IBAN its run.
_MIN_DIGITS: Mapping[PiiType, int] = {"iban": 4, "card": 13, "phone": 7}
_Detector = Callable[[str, str], tuple[str, int]]  # (text, phone region) -> (redacted text, finds)
_DETECTORS: tuple[tuple[PiiType, _Detector], ...] = (
    ("email", _redact_email),
    ("iban", _redact_iban),
    ("card", _redact_card),
    ("ip", _redact_ip),
    ("phone", _redact_phone),
)


@dataclass(frozen=True)
class Redactor:
    """What to look for and what to do on finding it; build one per service from `settings.privacy`."""

    detectors: Collection[PiiType] = PII_TYPES
    phone_region: str = "US"
    mode: PrivacyMode = "redact"
    _chain: tuple[tuple[PiiType, _Detector], ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        unknown = set(self.detectors) - set(PII_TYPES)
        if unknown:
            raise ConfigError(f"privacy.detectors: unknown PII types {sorted(unknown)}; known: {list(PII_TYPES)}")
        if self.phone_region not in phonenumbers.SUPPORTED_REGIONS:
            raise ConfigError(f"privacy.phone_region: {self.phone_region!r} is not a region libphonenumber knows")
        object.__setattr__(self, "_chain", tuple((t, f) for t, f in _DETECTORS if t in self.detectors))

    @classmethod
    def from_settings(cls, privacy: PrivacySettings) -> Redactor:
        return cls(detectors=privacy.detectors, phone_region=privacy.phone_region, mode=privacy.mode)

    def redact(self, text: str) -> Redacted:
        """`text` with every PII find replaced by its placeholder (whatever the mode); never raises."""
        # Redacting only removes digits: counted and checked once, on the text as it comes.
        digits = _digits(text)
        numbers = _has_number(text, digits)
        if not numbers and "@" not in text and text.count(":") < 2:
            return Redacted(text, NO_PII)  # the common case: `_may_hold_pii` is false
        counts: dict[PiiType, int] = {}
        for pii_type, detector in self._chain:
            if pii_type in _MIN_DIGITS and (not numbers or digits < _MIN_DIGITS[pii_type]):
                continue
            text, n = detector(text, self.phone_region)
            if n:
                counts[pii_type] = n
        return Redacted(text, counts)

    def kept(self, text: str) -> str:
        """`text` as it may be stored under the mode: as it is when `off`, else redacted (a raw record,
        such as a dead letter's value, has no fields to drop by: it is redacted under `drop` too)."""
        return text if self.mode == "off" else self.redact(text).text

    def redact_event(self, event: M) -> RedactedEvent[M]:
        """A copy of `event` with its free-text fields (`TEXT_FIELDS`: strings, and the metadata's
        string keys and values) redacted; the same event object when none held PII."""
        if not _may_hold_pii(_JOIN.join(_texts(event))):
            return RedactedEvent(event, NO_PII)  # nearly every event: one pass over its texts, nothing built
        counts: dict[PiiType, int] = {}
        fields: list[str] = []
        updates: dict[str, Any] = {}

        def scrub(value: str, where: str) -> str:
            done = self.redact(value)
            if done.counts:
                fields.append(where)
                for t, n in done.counts.items():
                    counts[t] = counts.get(t, 0) + n
            return done.text

        for name in TEXT_FIELDS:
            value = getattr(event, name, None)
            if isinstance(value, str):
                new = scrub(value, name)
                if new != value:
                    updates[name] = new
            elif isinstance(value, Mapping):
                new_map = _scrub_mapping(value, name, scrub)
                if new_map != value:
                    updates[name] = new_map
            elif isinstance(value, tuple) and value:  # a conversation's earlier turns (schemas.events.Turn)
                turns = tuple(t.model_copy(update={"content": scrub(t.content, f"{name}.{n}")}) for n, t in enumerate(value))
                if turns != value:
                    updates[name] = turns
        if not updates:
            return RedactedEvent(event)
        return RedactedEvent(event.model_copy(update=updates), counts, tuple(dict.fromkeys(fields)))

    def apply(self, event: M) -> RedactedEvent[M]:
        """The configured mode applied to one event: `off` passes it through unscanned, `redact`
        returns it redacted, `drop` raises `PiiFound` if it holds any PII (and returns it as it is if not)."""
        if self.mode == "off":
            return RedactedEvent(event)
        done = self.redact_event(event)
        if self.mode == "drop" and done.counts:
            raise PiiFound(done)
        return done


def _texts(event: BaseModel) -> list[str]:
    """The strings `redact_event` scrubs, no more and no fewer: the pre-filter's proof covers them all."""
    texts: list[str] = []
    for name in TEXT_FIELDS:
        value = getattr(event, name, None)
        if isinstance(value, str):
            texts.append(value)
        elif value and isinstance(value, Mapping):  # None or empty: no text (and no slow ABC check)
            texts += [s for item in value.items() for s in item if isinstance(s, str)]
        elif value and isinstance(value, tuple):
            texts += [turn.content for turn in value]
    return texts


def _scrub_mapping(value: Mapping[Any, Any], name: str, scrub: Callable[[str, str], str]) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for key, item in value.items():
        new_key = scrub(key, f"{name} key") if isinstance(key, str) else key
        base, n = new_key, 2
        while new_key in out:  # two keys redacted to the same placeholder: keep both
            new_key, n = f"{base}#{n}", n + 1
        out[new_key] = scrub(item, f"{name}.{new_key}") if isinstance(item, str) else item
    return out


@lru_cache(maxsize=16)
def _default(detectors: tuple[PiiType, ...], phone_region: str) -> Redactor:
    return Redactor(detectors=detectors, phone_region=phone_region)


def redact(text: str, detectors: Collection[PiiType] = PII_TYPES, phone_region: str = "US") -> Redacted:
    """`text` with its PII replaced by typed placeholders, and the counts per type."""
    return _default(tuple(sorted(detectors)), phone_region).redact(text)
