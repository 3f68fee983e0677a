"""Privacy subcommands: `privacy forget USER_ID`, a user's right to erasure.

    rlhf privacy forget u-42 --reason "support ticket 1234"

What it does, in order, each step idempotent (run it again after any failure):
1. records the erasure on the compacted `erasures` topic and waits for the broker's acknowledgement:
   from then on every replay leaves the user's events out of training (trainers/erasures.py), and
   the ClickHouse sink deletes their rows and stores none again (consumers/sink/consumer.py);
2. marks, in the registry, every model version that learned from their feedback, directly or
   through its parent or reward model, and lists them: an operator retrains those to be rid of it.
Versions trained while this ran are marked by the trainer itself when it publishes them.
"""

from __future__ import annotations

import argparse

from consumers.emitter import EventEmitter
from core.hashing import user_fingerprint
from registry.store import ModelRegistry
from rlhf.arguments import command, group, settings_of
from schemas import ErasureRequest, validate_event


def _forget(args: argparse.Namespace) -> None:
    settings = settings_of(args)
    request = validate_event(ErasureRequest, {"user_id": args.user_id, "reason": args.reason})
    EventEmitter(settings).emit("erasures", request, request.user_id)
    print(f"erasure of {request.user_id} recorded: replays exclude their events from now on; the sink deletes their rows")
    marked = ModelRegistry.of(settings).mark_erased(user_fingerprint(request.user_id))
    if not marked:
        print("no model version learned from their feedback")
    for kind, version in marked:
        print(f"trained on their data: {kind}/{version} (retrain to remove it)")


def register(sub: argparse._SubParsersAction) -> None:
    privacy = group(sub, "privacy", "Honour users' privacy requests.")
    forget = command(
        privacy,
        "forget",
        "Erase a user: no training and no ClickHouse row of theirs from now on; lists the versions that had their data.",
        _forget,
    )
    forget.add_argument("user_id", help="The user id the chat app sends (the events' user_id).")
    forget.add_argument(
        "--reason", default="", help="Why, for the record (e.g. a ticket number); at most 500 characters, no personal data."
    )
