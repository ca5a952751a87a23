"""Which saved checkpoints are evaluated: :class:`EvalSchedule` (shared by the inline and background runners)."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EvalSchedule"]


@dataclass(frozen=True)
class EvalSchedule:
    """Which saved checkpoints are evaluated.

    The guide's default: every 2nd checkpoint. With ``checkpoint_every_steps`` the rule is the
    guide's stateless ``step % (checkpoint_every_steps * every_n_checkpoints) == 0`` (the same after
    a resume); without it, the runner counts the checkpoints it was told about (1-based) and
    evaluates every ``every_n_checkpoints``-th. ``enabled=False`` turns evaluation off entirely.
    """

    every_n_checkpoints: int = 2
    enabled: bool = True
    checkpoint_every_steps: int | None = None

    def __post_init__(self) -> None:
        n = self.every_n_checkpoints
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"every_n_checkpoints must be an integer >= 1 (1 = every checkpoint), got {n!r}")
        c = self.checkpoint_every_steps
        if c is not None and (isinstance(c, bool) or not isinstance(c, int) or c < 1):
            raise ValueError(f"checkpoint_every_steps must be None or an integer >= 1, got {c!r}")

    @classmethod
    def off(cls) -> EvalSchedule:
        return cls(enabled=False)

    def should_evaluate(self, step: int, checkpoint_index: int | None = None) -> bool:
        """True when checkpoint ``step`` (the ``checkpoint_index``-th of this run, 1-based) is evaluated."""
        if not self.enabled:
            return False
        if self.checkpoint_every_steps is not None:
            return step % (self.checkpoint_every_steps * self.every_n_checkpoints) == 0
        if checkpoint_index is None:
            raise ValueError("checkpoint_index is needed when checkpoint_every_steps is not set")
        return checkpoint_index % self.every_n_checkpoints == 0
