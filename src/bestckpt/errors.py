"""Every exception bestckpt raises on purpose, under one root: ``except BestckptError`` catches
"bestckpt refused this" without catching unrelated bugs.

Each class also keeps the standard base it always had (``ValueError``, ``FileNotFoundError``...),
so ``except ValueError`` clauses written against earlier versions keep working. Messages name the
value received and the fix.

::

    BestckptError
    ├── ConfigError                    (ValueError)        a setting or argument is invalid
    ├── StateError                     (RuntimeError)      the tracker state cannot be used as is
    ├── UnsafePathError                (ValueError)        a path would leave the checkpoint directory
    ├── UnsafeFileError                (OSError)           not a regular file (FIFO, device, link...) or too large
    ├── StateLockTimeout               (TimeoutError)      another process holds the directory's lock
    ├── MetricError                    (RuntimeError)      a metric cannot be computed honestly
    │   ├── NumericalError                                 non-finite or ill-conditioned statistics
    │   └── CompositeUnavailableError                      a composite component is missing
    ├── BackboneError                  (KeyError)          unknown backbone kind or name
    ├── WeightsError                   (FileNotFoundError) a weight file is missing or fails its checksum
    │   └── DemoWeightsError                               ... one of the shipped demo evaluators
    ├── ProtocolError                  (ValueError)        an evaluation protocol is invalid
    ├── ProtocolChangedError           (RuntimeError)      the run was scored under another protocol
    ├── SamplerError                   (ValueError)        a sampler spec or factory is unusable
    ├── SamplerOutputError             (ValueError)        a sampler returned malformed images
    └── ReportError                    (ValueError)        a run directory cannot be reported on

    BestckptWarning (UserWarning)
    └── SmallSampleWarning                                 too few samples for a metric to mean much
"""
from __future__ import annotations

__all__ = [
    "BestckptError",
    "BestckptWarning",
    "BackboneError",
    "CompositeUnavailableError",
    "ConfigError",
    "DemoWeightsError",
    "MetricError",
    "NumericalError",
    "ProtocolChangedError",
    "ProtocolError",
    "ReportError",
    "SamplerError",
    "SamplerOutputError",
    "SmallSampleWarning",
    "StateError",
    "StateLockTimeout",
    "UnsafeFileError",
    "UnsafePathError",
    "WeightsError",
]


class BestckptError(Exception):
    """Root of every exception bestckpt raises on purpose."""


class BestckptWarning(UserWarning):
    """Root of bestckpt's warnings."""


class ConfigError(BestckptError, ValueError):
    """A setting or argument is invalid (the message names the value and the fix)."""


class StateError(BestckptError, RuntimeError):
    """The state cannot be used as is (written by a newer bestckpt, or a metric change without data)."""


class UnsafePathError(BestckptError, ValueError):
    """A path that would escape the checkpoint directory (``..``, absolute, through a symlink)."""


class UnsafeFileError(BestckptError, OSError):
    """A file bestckpt reads or replaces in the checkpoint directory is not a regular file (a FIFO,
    socket, device, directory or symlink: reading it could block, never end, or lead outside the
    directory) or is larger than bestckpt ever writes there."""


class StateLockTimeout(BestckptError, TimeoutError):
    """The state lock could not be taken in time (another process holds it)."""


class MetricError(BestckptError, RuntimeError):
    """A metric cannot be computed from the given inputs (never answered with a made-up number)."""


class NumericalError(MetricError):
    """Non-finite values or statistics too ill-conditioned for a trustworthy result."""


class CompositeUnavailableError(MetricError):
    """A component of the composite score is missing or failed: no partial composite is made."""

    def __init__(self, message: str, missing: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.missing = missing


class BackboneError(BestckptError, KeyError):
    """Unknown backbone kind or name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class WeightsError(BestckptError, FileNotFoundError):
    """A backbone weight file is missing, of the wrong size, or fails its checksum."""


class DemoWeightsError(WeightsError):
    """A demo evaluator weight file is missing, unlisted in the manifest, or fails its sha256 check."""


class ProtocolError(BestckptError, ValueError):
    """An evaluation protocol is invalid (the message names the field and the fix)."""


class ProtocolChangedError(BestckptError, RuntimeError):
    """Checkpoints of this run were scored under a different protocol and the runner was told to refuse."""


class SamplerError(BestckptError, ValueError):
    """A sampler spec or factory cannot be loaded or called."""


class SamplerOutputError(BestckptError, ValueError):
    """A sampler returned something other than the promised uint8 images."""


class ReportError(BestckptError, ValueError):
    """The HTML report cannot be written for this run directory."""


class SmallSampleWarning(BestckptWarning):
    """Too few samples for a metric to mean much (the message says what the number is worth)."""
