"""rlhf-stream: continuous RLHF from a chat assistant's own users' feedback, over Kafka."""

__version__ = "0.1.0"
