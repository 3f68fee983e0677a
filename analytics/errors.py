"""Errors of the analytics package; all derive from the project root `RlhfError`."""

from core.errors import RlhfError


class AnalyticsError(RlhfError):
    """Root of the analytics errors."""


class ExperimentConfigError(AnalyticsError, ValueError):
    """An experiment's variants or weights cannot define an assignment."""


class ClickHouseError(AnalyticsError):
    """ClickHouse could not be opened, migrated or queried; the message names the cause."""


class UnknownQueryError(AnalyticsError, KeyError):
    """`rlhf sql NAME` named no registered query; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class OwnerUnreachableError(AnalyticsError):
    """The embedded warehouse's owner (the sink, serving the dashboard) did not answer; the message
    names the address and what to start or configure."""
