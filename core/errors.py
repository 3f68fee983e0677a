"""The project's one exception root. Every error we raise on purpose derives from `RlhfError`,
so callers (the CLI, consumers routing to a DLQ) can tell our errors from bugs."""


class RlhfError(Exception):
    """Root of every error rlhf-stream raises on purpose."""


class ConfigError(RlhfError):
    """The configuration file or environment is invalid; the message names the key and the reason."""


class EventValidationError(RlhfError, ValueError):
    """An event failed its schema; the message names each field and why."""


class DeliveryError(RlhfError):
    """Kafka did not acknowledge an event the caller produced."""


class BrokerError(RlhfError):
    """The local Kafka broker could not be prepared, started or reached."""


class ModelLoadError(RlhfError):
    """A model directory is missing or corrupt; the message names the path."""


class TrainingError(RlhfError):
    """A training job failed in a way that retrying will not fix (bad data range, nothing to learn from)."""


class GuardrailRejection(RlhfError):
    """Training ran, but a guardrail rejected the trained policy (KL past its bound, collapsed or
    repetitive answers, a non-finite loss). An outcome to record, not a failure: deliberately not a
    TrainingError, so whoever catches one cannot mistake it for the other."""


class ServiceError(RlhfError):
    """A supervised service kept dying; the message names its log file."""


class EngineError(RlhfError):
    """An inference engine (vLLM) could not be installed, started or reached, or refused a deployment;
    the message names its URL or log and the engine's reason."""


class EngineUnavailable(EngineError):
    """An engine cannot answer now (down, overloaded, timed out): the assistant answers 503 with Retry-After."""
