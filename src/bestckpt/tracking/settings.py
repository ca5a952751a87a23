"""One configuration per checkpoint directory: which settings a tracker uses when its directory stores some.

Every process that opens a directory (the trainer, its other ranks, an evaluation script, ``bestckpt
evaluate``/``watch``, the background worker) must delete by the same rules, so the settings that decide
deletion (:data:`DELETION_SETTINGS`) are stored in the state (``tracker_config``) and:

- a setting not passed is taken from the store (the tracker's defaults are the :data:`NOT_PASSED` sentinel,
  so "not passed" differs from "passed the default value"), else from :class:`TrackerConfig`'s defaults;
- a setting passed explicitly that differs from the stored one is refused (:func:`resolve` raises
  :class:`~bestckpt.errors.ConfigError` listing stored vs given and the fixes), unless ``reconfigure=True``:
  then the tracker uses (and the writer stores) the new values;
- a running tracker whose directory another process reconfigured adopts the stored settings (:func:`adopt`).

``dry_run`` is per process: it may be written with the config but is never taken from the store.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from bestckpt.errors import ConfigError
from bestckpt.tracking import journal
from bestckpt.tracking.config import TrackerConfig

__all__ = ["NOT_PASSED", "DELETION_SETTINGS", "Change", "resolve", "adopt", "differences", "not_stored",
           "stored_settings", "cli_option"]

logger = logging.getLogger(__name__)

#: the settings that decide what is deleted: one value per directory
DELETION_SETTINGS = ("metric_name", "higher_is_better", "save_top_k", "keep_latest", "keep_every_n_steps",
                     "pinned_steps", "min_improvement", "filename_template", "best_beyond_noise")
_PER_PROCESS = ("dry_run",)  # never taken from the store
_FIELDS = tuple(f.name for f in dataclasses.fields(TrackerConfig) if f.name != "checkpoint_dir")


class _NotPassed:
    """The default of the tracker's settings: "not passed" (take the stored value, else the default)."""

    _instance: _NotPassed | None = None

    def __new__(cls) -> _NotPassed:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "<stored, else default>"

    def __reduce__(self) -> str:
        return "NOT_PASSED"


NOT_PASSED: Any = _NotPassed()


class Change(NamedTuple):
    """One setting that differs: ``old`` (stored, or this tracker's) and ``new`` (given, or stored)."""

    name: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.name}: {_show(self.old)} -> {_show(self.new)}"


def _show(value: Any) -> str:
    return repr(list(value)) if isinstance(value, tuple) else repr(value)


def cli_option(name: str) -> str:
    """The ``bestckpt prune`` option that sets ``name`` (for messages)."""
    return {"higher_is_better": "--higher-is-better/--lower-is-better", "pinned_steps": "--pin STEP",
            "filename_template": "filename_template (API only)",
            "best_beyond_noise": "best_beyond_noise (API only)"}.get(name, "--" + name.replace("_", "-") + " VALUE")


def _normalized(name: str, value: Any) -> Any:
    """``value`` as :class:`TrackerConfig` holds it (``[5, 1]`` -> ``(1, 5)``, ``0`` -> ``None``...);
    ``ValueError``/``TypeError`` (the config's message) if it is invalid."""
    return getattr(TrackerConfig(Path("."), **{name: value}), name)


def stored_settings(raw: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The stored settings (``dry_run`` left out): ``(valid ones normalized, {name: why invalid})``."""
    valid: dict[str, Any] = {}
    invalid: dict[str, str] = {}
    for name in _FIELDS:
        if name in _PER_PROCESS or name not in raw:
            continue
        try:
            valid[name] = _normalized(name, raw[name])
        except (ValueError, TypeError) as exc:
            if raw[name] is not None:  # null where None is not a value: not stored (older states)
                invalid[name] = str(exc)
    return valid, invalid


def _fixes(directory: Path, names: list[str]) -> str:
    options = " ".join(cli_option(n) for n in names)
    return (f"change them on purpose with reconfigure=True (CLI: bestckpt prune {directory} --reconfigure "
            f"{options} --yes)")


def differences(raw_stored: Mapping[str, Any], given: Mapping[str, Any]) -> list[Change]:
    """Deletion settings in ``given`` (normalized) that differ from the stored ones: ``Change(name, stored, given)``.
    A stored value that is invalid always differs."""
    valid, invalid = stored_settings(raw_stored)
    out = []
    for name in DELETION_SETTINGS:
        if name not in given:
            continue
        if name in invalid:
            out.append(Change(name, raw_stored[name], given[name]))
        elif name in valid and valid[name] != given[name]:
            out.append(Change(name, valid[name], given[name]))
    return out


def resolve(directory: Path, state_path: Path, raw_stored: Mapping[str, Any], given: Mapping[str, Any], *,
            reconfigure: bool) -> tuple[TrackerConfig, list[Change]]:
    """The config of a tracker opened on ``directory`` with the settings ``given`` explicitly, and the
    changes it makes to the stored ones (non-empty only with ``reconfigure``).

    Raises :class:`ConfigError` when a given deletion setting differs from the stored one and
    ``reconfigure`` is false, and when a stored setting that is not given is invalid.
    """
    wanted = TrackerConfig(directory, **given)  # the given values are valid (the config's own messages)
    given = {name: getattr(wanted, name) for name in given}
    valid, invalid = stored_settings(raw_stored)
    broken = [n for n in invalid if n not in given and n in DELETION_SETTINGS]
    if broken:
        raise ConfigError(
            f"{state_path} stores an invalid tracker_config: " + "; ".join(invalid[n] for n in broken)
            + f". Pass valid values and {_fixes(directory, broken)}, or correct the file")
    for name in invalid:
        if name not in DELETION_SETTINGS and name not in given:
            logger.warning("%s: ignoring the invalid stored %s (%s)", state_path, name, invalid[name])
    changes = differences(raw_stored, given)
    if changes and not reconfigure:
        listed = "; ".join(f"{c.name} stored {_show(c.old)}, given {_show(c.new)}" for c in changes)
        raise ConfigError(
            f"{directory} is tracked with other settings than the ones given ({listed}). The settings that "
            "decide deletion are one per directory: pass the stored values, or omit these arguments (the "
            f"stored ones are then used), or {_fixes(directory, [c.name for c in changes])}")
    values = {n: v for n, v in valid.items() if n not in given}
    values.update(given)
    return TrackerConfig(directory, **values), changes


def adopt(config: TrackerConfig, raw_stored: Mapping[str, Any]) -> TrackerConfig:
    """``config`` with the stored settings another process wrote (one warning naming old and new values).
    Invalid stored values are left out (logged): this tracker keeps its own for them."""
    valid, invalid = stored_settings(raw_stored)
    if invalid:
        logger.error("%s: the stored tracker_config has invalid values (%s); keeping this tracker's",
                     config.checkpoint_dir, "; ".join(invalid.values()))
    changes = [Change(n, getattr(config, n), v) for n, v in valid.items() if getattr(config, n) != v]
    if not changes:
        return config
    logger.warning("the settings of %s were changed by another process (%s); this tracker now uses them",
                   config.checkpoint_dir, "; ".join(str(c) for c in changes))
    return config.replace(**{c.name: c.new for c in changes})


def not_stored(config: TrackerConfig) -> dict[str, Any]:
    """The deletion settings of ``config`` that its directory's state does not store (all of them when
    there is no readable state): what a helper process passes so that the store wins where it speaks."""
    try:
        data = journal.read_state(config.checkpoint_dir)
    except (OSError, ValueError):
        data = None
    raw = data.get("tracker_config") if isinstance(data, dict) else None
    valid, _ = stored_settings(raw if isinstance(raw, dict) else {})
    return {n: getattr(config, n) for n in DELETION_SETTINGS if n not in valid}
