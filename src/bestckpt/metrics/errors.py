"""Exceptions raised by the metric functions.

A metric never returns a made-up number (0.0, inf, a constant) when it cannot be computed: it raises one of
these, so callers can record an explicit failure that can never become the best checkpoint.
"""
from __future__ import annotations

__all__ = ["MetricError", "CompositeUnavailableError", "NumericalError"]


class MetricError(RuntimeError):
    """A metric could not be computed from the given inputs."""


class NumericalError(MetricError):
    """The numerical computation produced a result that cannot be trusted (e.g. a strongly negative eigenvalue)."""


class CompositeUnavailableError(MetricError):
    """The composite score needs a component that is missing, failed or not finite; no partial composite exists."""

    def __init__(self, message: str, missing: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.missing = missing
