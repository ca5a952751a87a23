"""The sink interface: what every sink (TensorBoard, MLflow, W&B, ...) receives, and how sinks are chosen.

- :class:`EvaluationEvent`: one recorded evaluation (scores, intervals, protocol id, sampled-with weights,
  best flag, the evaluation's image files with captions, or the error of a failed one).
- :class:`Sink`: the protocol a sink implements (``log_evaluation``, ``log_best``, ``finish``, ``close``).
- :class:`SinkSpec`: the one option every place configuring evaluation accepts (``sinks=``): sink names plus
  per-sink settings. Accepted forms (:meth:`SinkSpec.coerce`)::

      sinks=["mlflow"]                                               # names, default settings
      sinks={"mlflow": {"tracking_uri": "sqlite:///mlflow.db"}}      # name -> settings
      sinks=SinkSpec(("mlflow",), {"mlflow": {"run_id": "..."}})      # the typed form
      --sink mlflow --sink-option mlflow.tracking_uri=sqlite:///x.db  # the CLI form (SinkSpec.from_cli)

- :func:`make_sinks` builds the chosen sinks; a sink's library is imported only when that sink is chosen.
- :class:`GuardedSink`: a sink whose calls never raise. A failing sink (service down, misconfigured,
  rate-limited) logs one warning with the cause, retries each call a bounded number of times, and after
  ``max_failures`` failed calls gives up for the rest of the run. Scores are in ``best_checkpoints.json``
  regardless: a sink is a view, never the record.

This module imports nothing heavy (no torch, no sink library).
"""
from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "EXTRAS",
    "REGISTRY",
    "EvaluationEvent",
    "GuardedSink",
    "Sink",
    "SinkSpec",
    "evaluation_images",
    "make_sinks",
]

logger = logging.getLogger(__name__)

#: sink name -> "module:class" (imported only when chosen); the class is called as ``cls(**settings, **context)``
REGISTRY: dict[str, str] = {
    "tensorboard": "bestckpt.sinks.tensorboard:TensorBoardSink",
    "mlflow": "bestckpt.sinks.mlflow:MlflowSink",
    "wandb": "bestckpt.sinks.wandb:WandbSink",
}
#: sink name -> the pip extra that installs its library
EXTRAS: dict[str, str] = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}

# file names written by bestckpt.evaluation.samples (not imported here: it imports torch)
_GRID_NAME = "progress_grid.jpg"
_SAMPLE = re.compile(r"^eval_(generated|comparison)_(\d{3,})\.jpg$")


@dataclass(frozen=True)
class EvaluationEvent:
    """One recorded evaluation, as every sink receives it.

    step: the checkpoint's training step (sinks log at this step, not at their own counter).
    scores: metric name -> value (None for a metric that failed); empty when ``error`` is set.
    intervals: metric name -> (lo, hi) 95% bootstrap interval (records carry them in ``info["intervals"]``).
    protocol_hash: the evaluation protocol's id; weights: ``"ema"``/``"online"`` (None when unknown).
    is_best: whether this checkpoint was the best when it was recorded (None: not known).
    images: ``(image file, caption)`` pairs: per-prompt comparison (or generated) images captioned with
      their prompts, then the progress grid (see :func:`evaluation_images`).
    error: why the evaluation failed, else None. path: the checkpoint's path.
    preview: the in-memory uint8 ``Tensor[K, 3, H, W]`` of the samples when available (TensorBoard's grid).
    """

    step: int
    scores: Mapping[str, float | None] = field(default_factory=dict)
    epoch: int | None = None
    intervals: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    protocol_hash: str | None = None
    weights: str | None = None
    is_best: bool | None = None
    images: Sequence[tuple[Path, str]] = ()
    error: str | None = None
    path: str | None = None
    preview: Any = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def from_record(cls, record: Any, *, is_best: bool | None = None,
                    samples_root: str | Path | None = None) -> EvaluationEvent:
        """The event of a tracker :class:`~bestckpt.tracking.state.Record` (``bestckpt export`` replays these)."""
        info = dict(getattr(record, "info", None) or {})
        raw = info.get("intervals") or {}
        intervals = {k: (float(v[0]), float(v[1])) for k, v in raw.items() if v is not None and len(v) == 2}
        weights = info.get("weights")
        failed = getattr(record, "status", None) == "failed"
        return cls(
            step=int(record.step), scores=dict(record.metrics or {}), epoch=record.epoch, intervals=intervals,
            protocol_hash=getattr(record, "protocol_hash", None),
            weights=None if weights in (None, "unknown") else str(weights), is_best=is_best,
            images=() if samples_root is None else evaluation_images(samples_root, int(record.step)),
            error=(getattr(record, "error", None) or "failed") if failed else None, path=record.path,
        )


@runtime_checkable
class Sink(Protocol):
    """What a sink implements. Calls come from one process, in recording order (steps may arrive late)."""

    def log_evaluation(self, event: EvaluationEvent) -> None:
        """Log one evaluation at ``event.step`` (a failed one: at most a note, never a made-up score)."""

    def log_best(self, step: int, path: str, scores: Mapping[str, float | None]) -> None:
        """Point at the new best checkpoint (step, path, scores): a pointer, no upload unless configured."""

    def finish(self, summary: Mapping[str, Any], results_file: Path | None) -> None:
        """End of the run: the tracker's summary dict and ``best_checkpoint_results.json`` (when it exists)."""

    def close(self) -> None:
        """Flush and release; idempotent."""


@dataclass(frozen=True)
class SinkSpec:
    """Which sinks to use and their settings: ``names`` (order kept) and ``options`` (name -> settings)."""

    names: tuple[str, ...] = ()
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = tuple(dict.fromkeys(str(n).strip().lower() for n in self.names))
        unknown = [n for n in names if n not in REGISTRY]
        if unknown:
            raise ValueError(f"unknown sink(s) {unknown}; choose from {sorted(REGISTRY)}")
        extra = [k for k in self.options if k not in names]
        if extra:
            raise ValueError(f"settings given for sink(s) {extra} that are not chosen (chosen: {list(names)}); "
                             f"add them to the sink names")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "options", {k: dict(v) for k, v in self.options.items()})

    def __bool__(self) -> bool:
        return bool(self.names)

    def settings(self, name: str) -> dict[str, Any]:
        """The settings of sink ``name`` (a copy; empty when none were given)."""
        return dict(self.options.get(name, {}))

    def with_sink(self, name: str, **defaults: Any) -> SinkSpec:
        """This spec plus sink ``name`` (settings given here fill in what the spec does not set)."""
        options = {k: dict(v) for k, v in self.options.items()}
        options[name] = {**defaults, **options.get(name, {})}
        return SinkSpec((*self.names, name), options)

    @classmethod
    def coerce(cls, value: SinkSpec | str | Iterable[str] | Mapping[str, Mapping[str, Any] | None] | None
               ) -> SinkSpec:
        """A SinkSpec from any accepted form: None, a name, names, ``{name: settings}``, or a SinkSpec."""
        if value is None:
            return cls()
        if isinstance(value, SinkSpec):
            return value
        if isinstance(value, str):
            return cls((value,))
        if isinstance(value, Mapping):
            return cls(tuple(value), {k: dict(v or {}) for k, v in value.items()})
        return cls(tuple(value))

    @classmethod
    def from_cli(cls, names: Sequence[str] | None, settings: Sequence[str] | None = None) -> SinkSpec:
        """The CLI form: ``--sink NAME`` (repeatable, or comma-separated) and ``--sink-option NAME.KEY=VALUE``.

        Values stay strings except ``true``/``false`` (booleans) and integers."""
        chosen = [n for item in names or () for n in str(item).split(",") if n.strip()]
        options: dict[str, dict[str, Any]] = {}
        for item in settings or ():
            key, sep, raw = str(item).partition("=")
            sink, dot, setting = key.partition(".")
            if not sep or not dot or not sink.strip() or not setting.strip():
                raise ValueError(f"--sink-option {item!r}: expected NAME.KEY=VALUE, "
                                 f"e.g. mlflow.tracking_uri=sqlite:///mlflow.db")
            options.setdefault(sink.strip().lower(), {})[setting.strip()] = _cli_value(raw)
        return cls(tuple(chosen), options)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (a worker process's spec dict carries this)."""
        return {"names": list(self.names), "options": {k: dict(v) for k, v in self.options.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SinkSpec:
        return cls(tuple(data.get("names") or ()), dict(data.get("options") or {}))


def _cli_value(raw: str) -> Any:
    low = raw.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if re.fullmatch(r"[+-]?\d+", raw.strip()):
        return int(raw)
    return raw


def sink_class(name: str) -> type:
    """The class of sink ``name``, importing its module now; ImportError names the extra to install."""
    module_name, _, attr = REGISTRY[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"the {name!r} sink needs its library: pip install 'bestckpt[{EXTRAS[name]}]' "
                          f"(or drop {name!r} from the sinks). Import error: {exc}") from exc
    cls: type = getattr(module, attr)
    return cls


def make_sinks(spec: SinkSpec | str | Iterable[str] | Mapping[str, Any] | None, *,
               context: Mapping[str, Any] | None = None, guarded: bool = True,
               max_failures: int = 3, retries: int = 1) -> list[Any]:
    """Build the chosen sinks (lazily, inside :class:`GuardedSink` unless ``guarded=False``).

    ``context``: what the caller knows that a sink may use as a default setting, passed as keywords only to
    sinks whose constructor accepts them (e.g. ``experiment_dir``, ``checkpoint_dir``, ``filename_suffix``).
    With ``guarded=False`` the sinks are constructed now and errors (ImportError naming the extra) raise.
    """
    spec = SinkSpec.coerce(spec)
    sinks: list[Any] = []
    for name in spec.names:
        factory = _factory(name, spec.settings(name), dict(context or {}))
        sinks.append(GuardedSink(name, factory, max_failures=max_failures, retries=retries) if guarded
                     else factory())
    return sinks


def _factory(name: str, settings: dict[str, Any], context: dict[str, Any]) -> Callable[[], Any]:
    def build() -> Any:
        import inspect

        cls = sink_class(name)
        params = inspect.signature(cls).parameters
        accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        extra = {k: v for k, v in context.items() if (accepts_any or k in params) and k not in settings}
        return cls(**settings, **extra)

    return build


class GuardedSink:
    """A sink whose calls never raise: built on first use; failures warn once, retry, then give up.

    Each call is tried ``1 + retries`` times (at once, no sleeping: the library's own client already
    retries with backoff where it makes sense). The first failed call logs ONE warning with the cause;
    further failures log at debug level; after ``max_failures`` failed calls the sink is disabled (one
    more warning says so) and later calls are skipped. A sink that cannot even be built counts the same.
    """

    def __init__(self, name: str, factory: Callable[[], Any], *, max_failures: int = 3, retries: int = 1) -> None:
        self.name = name
        self._factory = factory
        self.max_failures = max(1, int(max_failures))
        self.retries = max(0, int(retries))
        self.sink: Any = None
        self.failures = 0
        self.disabled = False
        self.last_error: str | None = None

    def _call(self, what: str, fn: Callable[[Any], Any]) -> bool:
        if self.disabled:
            return False
        for _ in range(1 + self.retries):
            try:
                if self.sink is None:
                    self.sink = self._factory()
                fn(self.sink)
                return True
            except Exception as exc:  # a sink never stops training or evaluation
                self.last_error = f"{type(exc).__name__}: {exc}"
        self.failures += 1
        if self.failures == 1:
            logger.warning("the %s sink failed (%s): %s; training and evaluation go on, the scores are in "
                           "best_checkpoints.json (replay them later with `bestckpt export`)",
                           self.name, what, self.last_error)
        else:
            logger.debug("the %s sink failed again (%s): %s", self.name, what, self.last_error)
        if self.failures >= self.max_failures:
            self.disabled = True
            logger.warning("the %s sink failed %d times; it is off for the rest of this run", self.name,
                           self.failures)
        return False

    def log_evaluation(self, event: EvaluationEvent) -> bool:
        return self._call(f"step {event.step}", lambda s: s.log_evaluation(event))

    def log_best(self, step: int, path: str, scores: Mapping[str, float | None]) -> bool:
        return self._call(f"best step {step}", lambda s: s.log_best(step, path, scores))

    def finish(self, summary: Mapping[str, Any], results_file: Path | None) -> bool:
        return self._call("finish", lambda s: s.finish(summary, results_file))

    def close(self) -> None:
        if self.sink is not None:
            try:
                self.sink.close()
            except Exception as exc:
                logger.warning("the %s sink did not close cleanly: %s: %s", self.name, type(exc).__name__, exc)
            self.sink = None


def evaluation_images(samples_root: str | Path, step: int) -> list[tuple[Path, str]]:
    """The image files of one evaluation with captions, as :mod:`bestckpt.evaluation.samples` wrote them.

    Per prompt: the comparison image (reference left, generated right) when there is one, else the generated
    image, captioned ``"step N, prompt i: <prompt>"``; then the progress grid (all steps so far). Missing
    files are simply absent (an evaluation without samples gives an empty list).
    """
    root = Path(samples_root)
    folder = root / f"{int(step):07d}"
    found: dict[int, dict[str, Path]] = {}
    if folder.is_dir():
        for f in folder.iterdir():
            m = _SAMPLE.match(f.name)
            if m:
                found.setdefault(int(m.group(2)), {})[m.group(1)] = f
    out: list[tuple[Path, str]] = []
    for i in sorted(found):
        kinds = found[i]
        path = kinds.get("comparison") or kinds["generated"]
        prompt_file = folder / f"eval_prompt_{i:03d}.txt"
        prompt = prompt_file.read_text(encoding="utf-8").strip() if prompt_file.is_file() else ""
        label = "reference | generated" if "comparison" in kinds else "generated"
        out.append((path, f"step {int(step)}, prompt {i} ({label}): {prompt}"))
    grid = root / _GRID_NAME
    if out and grid.is_file():
        out.append((grid, f"progress grid up to step {int(step)}: rows = prompts, columns = evaluated steps"))
    return out
