"""The producer SDK. It prints nothing itself: its log goes to the `sdk` logger, which has a
NullHandler, so an application sees it only by configuring logging (librdkafka's own lines, rate
limited while a broker is away, come through `sdk.kafka`)."""

import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())
KAFKA_LOG = logging.getLogger(f"{__name__}.kafka")
