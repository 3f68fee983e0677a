"""PII redaction cost per message, next to the baseline of the one thing any stage must do with a
message anyway: decoding and validating it (FeedbackEvent.model_validate_json).

    python -m bench.redaction [--messages 20000]

Messages are ~200-character chat texts; a tenth carry one planted PII item (e-mail, phone, card,
IBAN or IP), the rest are clean but end in a number (`Thanks 1234.`), which the IBAN and IP
detectors look at. A clean text with no `@`, two colons or four-digit run (the common case) is
dismissed by the pre-filter alone: its own line. Prints microseconds per message for clean,
PII-bearing and the mix, per text and per whole event.
"""

from __future__ import annotations

import argparse
import time

from core.redaction import Redactor
from schemas.events import FeedbackEvent

CLEAN = (
    "How do I reset my password? I tried three times and the page keeps saying the link expired. "
    "Could you explain step by step what I should do next, and whether my saved drafts are kept? Thanks {i}."
)
PLANTED = ("ann.lee{i}@example.com", "+1 650-253-0000", "4111 1111 1111 1111", "DE89 3704 0044 0532 0130 00", "203.0.113.{o}")
PII = (
    "How do I reset my password? The link expired twice. My account is {pii}, "
    "please check it and tell me step by step what to do next. Thanks {i}."
)


def texts(n: int) -> list[str]:
    return [
        PII.format(pii=PLANTED[i // 10 % 5].format(i=i, o=i % 250 + 1), i=i) if i % 10 == 0 else CLEAN.format(i=i)
        for i in range(n)
    ]


def per_call_us(fn, items, repeats: int = 5) -> float:
    """Best of `repeats` passes: the figure least disturbed by other work on the machine."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - start)
    return best / len(items) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    args = parser.parse_args()
    redactor = Redactor()
    mix = texts(args.messages)
    clean = [t for i, t in enumerate(mix) if i % 10]
    dirty = [t for i, t in enumerate(mix) if not i % 10]
    raw = [
        FeedbackEvent(
            interaction_id="i", user_id="u", query=t, response=CLEAN.format(i=0), model_version="v1", feedback_type="thumbs_up"
        ).to_bytes()
        for t in mix
    ]
    events = [FeedbackEvent.model_validate_json(r) for r in raw]
    redactor.redact(mix[0])  # warm the regex and phone-metadata caches
    print(f"mean message length: {sum(map(len, mix)) / len(mix):.0f} chars")
    baseline = per_call_us(FeedbackEvent.model_validate_json, raw)
    print(f"baseline  validate event JSON:     {baseline:7.1f} us/event")
    no_number = [CLEAN.format(i="")] * len(clean)
    print(f"redact    clean text, no number:   {per_call_us(redactor.redact, no_number):7.1f} us/text")
    print(f"redact    clean text:              {per_call_us(redactor.redact, clean):7.1f} us/text")
    print(f"redact    text with one PII item:  {per_call_us(redactor.redact, dirty):7.1f} us/text")
    print(f"redact    mix (10% with PII):      {per_call_us(redactor.redact, mix):7.1f} us/text")
    whole = per_call_us(redactor.redact_event, events)
    print(
        f"redact_event (query + response):   {whole:7.1f} us/event = {whole / baseline:.1f}x the validation it follows, "
        f"{1e6 / whole:,.0f} events/s on one core"
    )
    for i, kind in enumerate(("email", "phone", "card", "iban", "ip")):
        print(f"          {kind:>5} only:               {per_call_us(redactor.redact, dirty[i::5]):7.1f} us/text")


if __name__ == "__main__":
    main()
