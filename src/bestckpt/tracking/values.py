"""The values a tracker call accepts, checked once: at the call and again when the state is parsed.

Everything accepted here survives a write of the state and a reload unchanged (the returned value is
the one stored); everything else is refused at the call with :class:`~bestckpt.errors.ConfigError`
naming the value and the fix, so a record can never become unreadable on the next load.

- :func:`check_step`: an int >= 0 (numpy / 0-d tensor ints accepted; ``bool`` is not a step).
- :func:`check_epoch`: ``None`` or an int >= 0 (same rules).
- :func:`metric_value`: ``None``, an int or a float; numpy / torch real scalars through ``float()``;
  ints outside the float range become ±inf (non-finite: a tracked one makes the evaluation failed).
  ``bool``, ``str``, ``bytes`` and containers are refused (``float("1_000")`` and ``float(b"1")``
  would succeed: a string is never parsed as a score).
- :func:`clean_metrics`: a call's metrics mapping through :func:`metric_value`, and why the tracked
  metric makes the evaluation a failure.
- :func:`check_info`: ``info`` as strict JSON (str keys; str, int, finite float, bool, None, lists, dicts).
- :func:`check_text`: ``None`` or a str (``protocol_hash``).
"""
from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Mapping
from typing import Any

from bestckpt.errors import ConfigError

__all__ = ["check_step", "check_epoch", "metric_value", "clean_metrics", "check_info", "check_text"]

_MAX_DEPTH = 64  # info nesting; deeper (or circular) structures are refused


def _bool_like(value: Any) -> bool:
    """``bool``, ``numpy.bool_`` or a boolean tensor: never a number here."""
    if isinstance(value, bool):
        return True
    dtype = getattr(value, "dtype", None)
    return dtype is not None and (getattr(dtype, "kind", None) == "b" or str(dtype) == "torch.bool")


def _index(value: Any) -> int | None:
    """``value`` as an int when it is an integer (not a bool), else None."""
    if _bool_like(value):
        return None
    try:
        return int(operator.index(value))  # ints, numpy ints, 0-d integer tensors
    except TypeError:
        return None


def check_step(step: Any) -> int:
    """``step`` as a non-negative int; ``TypeError``/``ConfigError`` naming the value otherwise."""
    number = _index(step)
    if number is None:
        raise TypeError(f"step must be an int, got {step!r} ({type(step).__name__}); pass the training step "
                        "as an int, e.g. int(step)")
    if number < 0:
        raise ConfigError(f"step must be >= 0, got {number}; pass the training step (0 or more)")
    return number


def check_epoch(epoch: Any) -> int | None:
    """``epoch`` as ``None`` or a non-negative int; ``ConfigError`` naming the value otherwise."""
    if epoch is None:
        return None
    number = _index(epoch)
    if number is None or number < 0:
        raise ConfigError(f"epoch must be None or an int >= 0, got {epoch!r} ({type(epoch).__name__}); pass the "
                          "epoch as an int (or None when there is no epoch)")
    return number


def _refuse_metric(name: str, value: Any) -> ConfigError:
    return ConfigError(
        f"metric {name!r} has value {value!r} ({type(value).__name__}), not a number; pass an int or a float "
        "(None when the metric has no value): convert numbers with float(), never pass text, bools or containers"
    )


def metric_value(name: str, value: Any) -> float | None:
    """One metric value as stored: ``None`` or a float (±inf for ints beyond the float range)."""
    if value is None or type(value) is float:
        return value
    if _bool_like(value) or isinstance(value, (str, bytes, bytearray, Mapping, list, tuple, set, frozenset)):
        raise _refuse_metric(name, value)
    dtype = getattr(value, "dtype", None)
    if dtype is not None:  # numpy / torch scalars: real, one element, no dimensions
        kind = getattr(dtype, "kind", None)
        real = kind in ("f", "i", "u") if kind is not None else not getattr(dtype, "is_complex", False)
        if not real or getattr(value, "ndim", 0) != 0:
            raise _refuse_metric(name, value)
    elif not isinstance(value, numbers.Real) and (not isinstance(value, numbers.Number)
                                                  or isinstance(value, numbers.Complex)):  # Decimal is a Number
        raise _refuse_metric(name, value)
    try:
        return float(value)
    except OverflowError:  # an int (or Fraction) beyond the float range
        return math.inf if value > 0 else -math.inf
    except (TypeError, ValueError):
        raise _refuse_metric(name, value) from None


def clean_metrics(metrics: Any, metric_name: str) -> tuple[dict[str, float | None], str | None]:
    """A call's metrics as stored (each through :func:`metric_value`; a value it refuses raises
    ``ConfigError``), and why the tracked metric ``metric_name`` makes the evaluation a failure
    (``None`` if it is a finite number). A missing mapping is a failure, not a refusal."""
    if metrics is None or not isinstance(metrics, Mapping):
        return {}, f"metrics must be a mapping of metric name to number, got {type(metrics).__name__}"
    clean: dict[str, float | None] = {}
    for key, value in metrics.items():
        if not isinstance(key, str):
            raise ConfigError(f"metric name {key!r} ({type(key).__name__}) is not a str; name metrics with "
                              "strings, e.g. {'composite_score': 0.7}")
        clean[key] = metric_value(key, value)
    if metric_name not in clean:
        return clean, f"tracked metric {metric_name!r} missing (got {sorted(clean)})"
    value = clean[metric_name]
    if value is None:
        return clean, f"tracked metric {metric_name!r} is not a number ({metrics[metric_name]!r})"
    if not math.isfinite(value):
        return clean, f"tracked metric {metric_name!r} is {value}"
    return clean, None


def check_text(name: str, value: Any) -> str | None:
    """``value`` as ``None`` or a plain str; ``ConfigError`` naming ``name`` and the value otherwise."""
    if value is None or isinstance(value, str):
        return None if value is None else str(value)
    raise ConfigError(f"{name} must be a str or None, got {value!r} ({type(value).__name__}); pass it as text, "
                      "e.g. protocol.hash")


def check_info(info: Any) -> dict[str, Any]:
    """``info`` as the strict-JSON dict that is stored (tuples become lists, int/str/float subclasses
    plain values), so that it reads back equal; ``ConfigError`` naming the offending entry otherwise."""
    if info is None:
        return {}
    if not isinstance(info, Mapping):
        raise ConfigError(f"info must be a mapping of str keys to JSON values, got {info!r} ({type(info).__name__})")
    return _json_value(info, "info", 0)


def _json_value(value: Any, where: str, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise ConfigError(f"{where} is nested more than {_MAX_DEPTH} levels deep (circular?); store a flat summary")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return float(value)
        raise ConfigError(f"{where} is {value!r}: strict JSON has no NaN/Infinity; store None or a string instead")
    if isinstance(value, str):
        return str(value)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigError(f"{where} has the key {key!r} ({type(key).__name__}): JSON keys are strings; "
                                  "use str keys")
            out[str(key)] = _json_value(item, f"{where}[{key!r}]", depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [_json_value(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)]
    raise ConfigError(
        f"{where} = {value!r} ({type(value).__name__}) is not JSON: info must be strict-JSON encodable (str, int, "
        "finite float, bool, None, lists, dicts with str keys); convert it, e.g. str(x), float(x) or list(x)"
    )
