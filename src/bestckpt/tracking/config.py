"""`TrackerConfig`: the one source of defaults for the tracker, its Python API and its CLI.

A frozen, validated dataclass (in the spirit of nanoGPT's ``GPTConfig`` and Orbax's options):
every value is checked in ``__post_init__`` and a bad value raises :class:`~bestckpt.errors.ConfigError`
(a ``ValueError``) or ``TypeError`` whose message names the value received and how to fix it. The CLI
reads its defaults from :func:`default_of` so the two can never drift apart. Which values a tracker
uses on a directory that already stores a config is :mod:`bestckpt.tracking.settings`'s job.
"""
from __future__ import annotations

import dataclasses
import math
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from bestckpt.errors import ConfigError

__all__ = ["TrackerConfig", "DEFAULT_FILENAME_TEMPLATE", "default_of"]

#: DeepSpeed tag / file name of the checkpoint of step N (zero padded so names sort by step).
DEFAULT_FILENAME_TEMPLATE = "{step:07d}.pt"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class TrackerConfig:
    """Settings of a :class:`~bestckpt.tracking.tracker.BestCheckpointTracker`.

    Attributes:
        checkpoint_dir: directory holding the checkpoints (files or DeepSpeed tag directories),
            ``best.pt``, ``best_checkpoints.json`` and ``best_checkpoint_results.json``.
        metric_name: the metric that ranks checkpoints (the guide's default ``composite_score``).
        higher_is_better: direction of ``metric_name`` (``False`` for ``lpips``, ``fid``, ``kid``).
        save_top_k: how many evaluated checkpoints to keep by score; ``-1`` keeps every evaluated one.
        keep_latest: the newest N checkpoints are always kept (N >= 1: the resume point is never deleted).
        keep_every_n_steps: also keep every checkpoint whose step is a multiple of this
            (the guide's 10,000); ``0`` or ``None`` disables it.
        pinned_steps: steps that are never deleted.
        min_improvement: a checkpoint becomes the new best only if it beats the current best by
            more than this (in the metric's own units); ``0.0`` means strictly better.
        best_beyond_noise: a checkpoint becomes the new best only if it beats the current best by more
            than the noise of both scores (their stored 95% intervals, :func:`~bestckpt.tracking.policies.
            noise_margin`; docs/intervals.md says what it costs and buys). Off by default; scores without
            an interval fall back to ``min_improvement``.
        dry_run: plan deletions and log them, but never delete anything.
        filename_template: ``str.format`` template with one ``{step...}`` field naming a step's
            checkpoint inside ``checkpoint_dir``, and optionally one ``{epoch}`` field (Lightning's
            ``epoch={epoch}-step={step}.ckpt``; see ``docs/layouts.md``).
        pending_stale_after: seconds after which a checkpoint still pending evaluation is shown as
            stale (``bestckpt status``, a warning at start); ``None``: never. Display only: a pending
            checkpoint stays protected until it is scored or released (``bestckpt release``).
    """

    checkpoint_dir: Path
    metric_name: str = "composite_score"
    higher_is_better: bool = True
    save_top_k: int = 3
    keep_latest: int = 1
    keep_every_n_steps: int | None = 10_000
    pinned_steps: tuple[int, ...] = field(default=())
    min_improvement: float = 0.0
    dry_run: bool = False
    filename_template: str = DEFAULT_FILENAME_TEMPLATE
    pending_stale_after: float | None = 86400.0
    best_beyond_noise: bool = False

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        if not isinstance(self.checkpoint_dir, (str, Path)) or str(self.checkpoint_dir) == "":
            raise TypeError(
                f"checkpoint_dir must be a non-empty str or pathlib.Path, got {self.checkpoint_dir!r}; "
                "pass the directory your training loop saves checkpoints into"
            )
        set_("checkpoint_dir", Path(self.checkpoint_dir).expanduser())
        if not isinstance(self.metric_name, str) or not self.metric_name.strip():
            raise ConfigError(
                f"metric_name must be a non-empty string, got {self.metric_name!r}; "
                "use e.g. 'composite_score', 'clip_score', 'fid'"
            )
        if not isinstance(self.higher_is_better, bool):
            raise TypeError(
                f"higher_is_better must be True or False, got {self.higher_is_better!r}; "
                "use False for lpips/fid/kid"
            )
        if not _is_int(self.save_top_k) or (self.save_top_k < 1 and self.save_top_k != -1):
            raise ConfigError(
                f"save_top_k must be an int >= 1, or -1 to keep every evaluated checkpoint; "
                f"got {self.save_top_k!r}"
            )
        if not _is_int(self.keep_latest) or self.keep_latest < 1:
            raise ConfigError(
                f"keep_latest must be an int >= 1 (the newest checkpoint is the resume point and is never "
                f"deleted), got {self.keep_latest!r}"
            )
        every = self.keep_every_n_steps
        if every is not None and (not _is_int(every) or every < 0):
            raise ConfigError(
                f"keep_every_n_steps must be an int >= 1, or 0/None to disable it; got {every!r}"
            )
        set_("keep_every_n_steps", every or None)
        try:
            pinned = tuple(sorted(set(self.pinned_steps)))
        except TypeError:
            raise TypeError(
                f"pinned_steps must be an iterable of ints (steps), got {self.pinned_steps!r}"
            ) from None
        for step in pinned:
            if not _is_int(step) or step < 0:
                raise ConfigError(f"pinned_steps must hold non-negative int steps, got {step!r} in {self.pinned_steps!r}")
        set_("pinned_steps", pinned)
        imp = self.min_improvement
        if isinstance(imp, bool) or not isinstance(imp, (int, float)) or not math.isfinite(imp) or imp < 0:
            raise ConfigError(
                f"min_improvement must be a finite number >= 0 (in the metric's units), got {imp!r}"
            )
        set_("min_improvement", float(imp))
        if not isinstance(self.best_beyond_noise, bool):
            raise TypeError(f"best_beyond_noise must be True or False, got {self.best_beyond_noise!r}")
        if not isinstance(self.dry_run, bool):
            raise TypeError(f"dry_run must be True or False, got {self.dry_run!r}")
        _compile_template(self.filename_template)  # validates
        stale = self.pending_stale_after
        if stale is not None:
            if isinstance(stale, bool) or not isinstance(stale, (int, float)) or not math.isfinite(stale) or stale <= 0:
                raise ConfigError(
                    f"pending_stale_after must be a number of seconds > 0 (e.g. 86400 for a day), or None to never "
                    f"mark pending checkpoints stale; got {stale!r}"
                )
            set_("pending_stale_after", float(stale))

    # -- file names ---------------------------------------------------------------------------
    @property
    def has_epoch_field(self) -> bool:
        """Whether ``filename_template`` names the epoch too (``epoch={epoch}-step={step}.ckpt``)."""
        return "epoch" in _compile_template(self.filename_template).groupindex

    def step_filename(self, step: int, epoch: int | None = None) -> str:
        """Name of step ``step``'s checkpoint inside ``checkpoint_dir`` (e.g. ``0002000.pt``).

        A template with an ``{epoch}`` field needs ``epoch``: without it the name is unknown, and a
        :class:`ConfigError` says to pass the checkpoint's path instead."""
        if epoch is None and self.has_epoch_field:
            raise ConfigError(
                f"filename_template {self.filename_template!r} names the epoch too, so the checkpoint of step "
                f"{step} has no name without it; pass the checkpoint's path (checkpoint_path=...)"
            )
        return self.filename_template.format(step=step, epoch=epoch)

    def step_from_name(self, name: str) -> int | None:
        """The step encoded in a directory entry name, or ``None`` if the name is not a step checkpoint
        (an ``{epoch}`` field must hold digits but is not part of the checkpoint's identity)."""
        match = _compile_template(self.filename_template).fullmatch(name)
        if match is None:
            return None
        step = int(match.group("step"))
        epoch = int(match.group("epoch")) if "epoch" in match.re.groupindex else None
        return step if self.filename_template.format(step=step, epoch=epoch) == name else None

    # -- (de)serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (``checkpoint_dir`` left out: the state file lives inside it)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "checkpoint_dir"}
        out["pinned_steps"] = list(self.pinned_steps)
        return out

    @classmethod
    def from_dict(cls, checkpoint_dir: str | Path, data: Mapping[str, Any], **overrides: Any) -> TrackerConfig:
        """Config from a stored ``tracker_config`` mapping; unknown keys are ignored, ``overrides`` win."""
        names = {f.name for f in dataclasses.fields(cls)} - {"checkpoint_dir"}
        kwargs = {k: v for k, v in data.items() if k in names}
        if "pinned_steps" in kwargs and kwargs["pinned_steps"] is not None:
            kwargs["pinned_steps"] = tuple(kwargs["pinned_steps"])
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        return cls(checkpoint_dir=cast(Path, checkpoint_dir), **kwargs)  # __post_init__ converts and checks it

    def replace(self, **changes: Any) -> TrackerConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)


def default_of(name: str) -> Any:
    """The default of field ``name`` (used by the CLI so API and CLI share one source of defaults)."""
    for f in dataclasses.fields(TrackerConfig):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            break
    raise KeyError(f"TrackerConfig has no defaulted field {name!r}")


_TEMPLATE_CACHE: dict[str, re.Pattern[str]] = {}
#: the steps and epochs a template must round-trip (format, then parse back) to be accepted
_PROBE_STEPS = (0, 7, 1234, 98765432)
_PROBE_EPOCHS = (0, 3, 12345)


def _template_error(template: str, why: str) -> ConfigError:
    return ConfigError(
        f"filename_template {template!r} cannot identify a checkpoint's step: {why}. Use exactly one '{{step}}' "
        f"field (decimal, e.g. '{{step:07d}}'), optionally one '{{epoch}}' field, each separated from the next "
        f"field by a non-digit literal: e.g. '{DEFAULT_FILENAME_TEMPLATE}', 'checkpoint-{{step}}' or "
        f"'epoch={{epoch}}-step={{step}}.ckpt'"
    )


def _compile_template(template: str) -> re.Pattern[str]:
    """Regex matching the names produced by ``template``: exactly one ``{step}`` field, at most one
    ``{epoch}`` field (matched as digits, not part of a checkpoint's identity: Lightning's
    ``epoch={epoch}-step={step}.ckpt``). Refused with a :class:`ConfigError` naming the fix when the
    step cannot be read back from every name the template makes (a field glued to the next one, a
    non-decimal format, a name that is not a plain entry)."""
    cached = _TEMPLATE_CACHE.get(template)
    if cached is not None:
        return cached
    if not isinstance(template, str):
        raise TypeError(f"filename_template must be a str like '{DEFAULT_FILENAME_TEMPLATE}', got {template!r}")
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"filename_template {template!r} is not a valid format string ({exc}); "
                         f"use e.g. '{DEFAULT_FILENAME_TEMPLATE}'") from None
    fields = [p[1] for p in parts if p[1] is not None]
    if fields.count("step") != 1 or fields.count("epoch") > 1 or set(fields) - {"step", "epoch"}:
        hint = ("; an epoch-only name (HunyuanDiT's 'e{epoch:04d}.pt') carries no step: keep a step template and "
                "register epoch tags by their path with their step, see docs/layouts.md") if "step" not in fields else ""
        raise _template_error(template, f"it must have exactly one '{{step}}' field, it has {fields}{hint}")
    if any(conv for _, fld, _, conv in parts if fld is not None):
        raise _template_error(template, "a field has a '!' conversion")
    for i, (_, fld, _, _) in enumerate(parts[:-1]):
        literal = parts[i + 1][0]
        if fld is not None and parts[i + 1][1] is not None and (literal == "" or literal.isdigit()):
            raise _template_error(template, f"the field {{{fld}}} is not delimited from the following field")
    try:
        sample = template.format(step=1234, epoch=5)
    except (ValueError, TypeError) as exc:
        raise _template_error(template, f"formatting an int fails ({exc})") from None
    if "/" in sample or "\\" in sample or sample in (".", "..") or sample.startswith("."):
        raise ConfigError(
            f"filename_template {template!r} must name a plain entry inside checkpoint_dir "
            "(no path separators, not hidden)"
        )
    pattern = "".join(re.escape(lit) + (f"(?P<{fld}>[0-9]+)" if fld else "") for lit, fld, _, _ in parts)
    compiled = re.compile(pattern)
    for step in _PROBE_STEPS:
        for epoch in _PROBE_EPOCHS:
            match = compiled.fullmatch(template.format(step=step, epoch=epoch))
            if match is None or int(match.group("step")) != step:
                raise _template_error(template, f"the name of step {step} does not give the step back "
                                      "(only decimal formats such as '{step}' or '{step:07d}' can)")
    _TEMPLATE_CACHE[template] = compiled
    return compiled
