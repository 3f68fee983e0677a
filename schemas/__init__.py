"""Event schemas: the contract between producers and consumers of every topic."""

from schemas.events import (
    DeadLetter,
    ErasureRequest,
    Event,
    ExposureEvent,
    FeedbackEvent,
    InteractionEvent,
    ModelPublished,
    OffsetRange,
    TrainingStatus,
    TrainTrigger,
    WindowMetrics,
    describe_errors,
    parse_event,
    validate_event,
)

__all__ = [
    "DeadLetter",
    "ErasureRequest",
    "Event",
    "ExposureEvent",
    "FeedbackEvent",
    "InteractionEvent",
    "ModelPublished",
    "OffsetRange",
    "TrainTrigger",
    "TrainingStatus",
    "WindowMetrics",
    "describe_errors",
    "parse_event",
    "validate_event",
]
