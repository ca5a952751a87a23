"""The evaluation protocol: everything that decides a score, fixed and hashed.

Scores from two checkpoints are only comparable when they were made the same way: same prompts,
same seeds (hence the same initial noise), same sampler settings, same reference images, same
backbones and metrics and composite weights. :class:`Protocol` holds all of that; its
:attr:`Protocol.hash` (sha256 over a canonical JSON form *and the bytes of every reference
file*) is stored with every score, and the tracker never compares scores with different hashes.

Prompts and reference images should be **held out** from the training data: prompts from the
training set reward memorisation (the original guide drew them from the training CSV).

Sample sizes: the guide evaluated 20 images. At that size FID (2048-d covariance, rank <= 19)
and Inception Score (10 splits of 2 images) are noise. The default here is 2,500 samples: more
than the 2,049 a full-rank 2048-d covariance needs, within the 2k-10k used for in-loop checks,
250 images per IS split, and enough for KID subsets of 1,000 (KID is unbiased, so it is the
metric to trust at small N). A protocol with fewer samples is allowed but warns.
"""
from __future__ import annotations

import hashlib
import json
import logging
import types
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any

from bestckpt.backbones import DEFAULT_BACKBONES
from bestckpt.errors import ProtocolError, SmallSampleWarning
from bestckpt.evaluation.prompts import load_prompt_file
from bestckpt.evaluation.sampler import SamplerSettings
from bestckpt.fsio import atomic_write_text, sha256_file
from bestckpt.metrics.composite import check_composite_weights, mapping_from_dict, mapping_to_dict
from bestckpt.metrics.registry import DEFAULT_METRICS

__all__ = [
    "DEFAULT_BACKBONES",
    "DEFAULT_METRICS",
    "DEFAULT_NUM_SAMPLES",
    "IMAGE_SUFFIXES",
    "Protocol",
    "ProtocolError",
    "SmallSampleWarning",
    "derive_seed",
    "load_prompt_file",
]

logger = logging.getLogger(__name__)

DEFAULT_NUM_SAMPLES = 2500
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# below these, FID / IS are dominated by sampling noise (see module docstring)
FID_MIN_SAMPLES = 2049
IS_MIN_SAMPLES = 1000
_HASH_VERSION = 1


def derive_seed(base_seed: int, index: int) -> int:
    """Seed of sample ``index``: a stable 32-bit hash of (base seed, index).

    Hash-derived rather than ``base + index`` so neighbouring base seeds do not share most of their
    noise; 32-bit so it fits every RNG (torch, numpy's legacy RandomState, JAX).
    """
    digest = hashlib.sha256(f"bestckpt-seed:{int(base_seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


@dataclass(frozen=True)
class Protocol:
    """What is compared. Frozen: changing any field makes a new protocol with a new hash.

    prompts: evaluation prompts (held out from training). Sample ``i`` uses prompt
      ``prompts[i % len(prompts)]`` and seed ``derive_seed(seed, i)``, so the first
      ``len(prompts)`` samples show each prompt once and are the ones written as sample files.
    reference_images: one path (or None) per prompt for LPIPS and the comparison images;
      ``None`` for no paired references.
    reference_dir: folder of real images for FID/KID reference statistics (optional).
    num_samples: images generated per evaluation (default 2,500; see module docstring).
    metrics: None (default) means every metric the data supports: CLIP score, IS and the
      composite always, LPIPS when every prompt has a paired reference, FID/KID with a reference set.
    seed: base seed of the per-sample seeds and of the metrics' random subsets.
    metric_options: per-metric keyword options for the scorer (IS splits, KID subsets...), hashed.
    composite_weights, composite_mappings: the composite's definition (hashed when set). Mappings are JSON
      (``{"fid": {"type": "inverse", "scale": 400}}``, see :func:`bestckpt.metrics.composite.mapping_to_dict`);
      their scales must suit the backbone that produced the metric (FID's default 50 suits Inception features).
      Metrics not named keep the default mapping. Changing only these gives a new :attr:`hash` but the same
      :attr:`metrics_hash`: stored metrics then give the new composite without re-sampling
      (:func:`bestckpt.evaluation.composite.recompute_composite`).
    """

    prompts: tuple[str, ...]
    reference_images: tuple[Path | None, ...] | None = None
    reference_dir: Path | None = None
    num_samples: int = DEFAULT_NUM_SAMPLES
    seed: int = 0
    sampler: SamplerSettings = field(default_factory=SamplerSettings)
    backbones: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_BACKBONES))
    metrics: tuple[str, ...] | None = None
    composite_weights: Mapping[str, float] | None = None
    metric_options: Mapping[str, Mapping[str, Any]] | None = None
    name: str = "default"
    composite_mappings: Mapping[str, Mapping[str, Any]] | None = None

    def __post_init__(self) -> None:
        # each helper checks one field (or one rule across fields) and returns the normalised value
        set_ = partial(object.__setattr__, self)
        set_("prompts", _checked_prompts(self.prompts))
        _check_integers(self.num_samples, self.seed)
        set_("sampler", _checked_sampler(self.sampler))
        if self.reference_images is not None:
            set_("reference_images", _checked_reference_images(self.reference_images, len(self.prompts)))
        if self.reference_dir is not None:
            set_("reference_dir", _checked_reference_dir(self.reference_dir))
        metrics = _checked_metrics(self.metrics, self.reference_images, self.reference_dir)
        set_("metrics", metrics)
        if not isinstance(self.backbones, Mapping):
            raise ProtocolError(f"backbones must map kind -> name, got {type(self.backbones).__name__}")
        set_("backbones", types.MappingProxyType(dict(sorted(self.backbones.items()))))
        if self.composite_weights is not None:
            set_("composite_weights", _checked_composite_weights(self.composite_weights))
        if self.metric_options is not None:
            set_("metric_options", _checked_metric_options(self.metric_options))
        if self.composite_mappings is not None:
            set_("composite_mappings", _checked_composite_mappings(self.composite_mappings))
        _check_metric_data(metrics, self.reference_images, self.reference_dir, len(self.prompts))
        _warn_small_samples(metrics, self.num_samples)

    # ----------------------------------------------------------------- sample layout
    @property
    def sample_prompts(self) -> tuple[str, ...]:
        """Prompt of every sample, length ``num_samples`` (prompts repeat cyclically)."""
        return tuple(self.prompts[i % len(self.prompts)] for i in range(self.num_samples))

    @cached_property
    def sample_seeds(self) -> tuple[int, ...]:
        """Seed of every sample, length ``num_samples``; the same at every evaluation."""
        return tuple(derive_seed(self.seed, i) for i in range(self.num_samples))

    def sample_reference(self, index: int) -> Path | None:
        """Paired reference image of sample ``index`` (or None)."""
        if self.reference_images is None:
            return None
        return self.reference_images[index % len(self.prompts)]

    def reference_set_files(self) -> list[Path]:
        """Images of the FID/KID reference set, sorted by name (so order is stable)."""
        if self.reference_dir is None:
            return []
        return _image_files(Path(self.reference_dir))

    # ----------------------------------------------------------------- identity
    def to_dict(self) -> dict[str, Any]:
        """JSON-able form with absolute paths (what ``to_file`` writes)."""
        return {
            "name": self.name,
            "prompts": list(self.prompts),
            "reference_images": None
            if self.reference_images is None
            else [None if r is None else str(Path(r).resolve()) for r in self.reference_images],
            "reference_dir": None if self.reference_dir is None else str(Path(self.reference_dir).resolve()),
            "num_samples": self.num_samples,
            "seed": self.seed,
            "sampler": self.sampler.to_dict(),
            "backbones": dict(self.backbones),
            "metrics": list(self.metrics or ()),  # always set after __post_init__
            "composite_weights": None if self.composite_weights is None else dict(self.composite_weights),
            "metric_options": None if self.metric_options is None else {k: dict(v) for k, v in self.metric_options.items()},
            "composite_mappings": None if self.composite_mappings is None
            else {k: dict(v) for k, v in self.composite_mappings.items()},
        }

    @cached_property
    def hash(self) -> str:
        """sha256 of everything that affects scores: settings plus reference file *contents*.

        Paths are not hashed (moving the reference folder keeps the hash); file bytes are, so
        replacing a reference image changes it. ``name`` is a label and is not hashed.
        """
        return self._identity_hash(composite=True)

    @cached_property
    def metrics_hash(self) -> str:
        """sha256 of what decides the *metric values* (everything but the composite's weights and mappings).

        Two protocols with the same ``metrics_hash`` draw the same samples and compute the same metrics, so a
        composite under one can be recomputed from the metrics stored under the other, without re-sampling."""
        return self._identity_hash(composite=False)

    def _identity_hash(self, *, composite: bool) -> str:
        ident = self.to_dict()
        ident.pop("name")
        if ident["composite_mappings"] is None:  # absent: the hash of every protocol made before mappings existed
            ident.pop("composite_mappings")
        if not composite:
            ident.pop("composite_weights")
            ident.pop("composite_mappings", None)
        ident["hash_version"] = _HASH_VERSION
        ident["reference_images"] = (
            None
            if self.reference_images is None
            else [None if r is None else sha256_file(Path(r)) for r in self.reference_images]
        )
        if self.reference_dir is not None:
            root = Path(self.reference_dir)
            ident["reference_dir"] = [
                [p.relative_to(root).as_posix(), sha256_file(p)] for p in self.reference_set_files()
            ]
        blob = json.dumps(ident, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    @property
    def short_hash(self) -> str:
        return self.hash[:12]

    def __reduce__(self) -> tuple[Any, ...]:
        # MappingProxyType fields do not pickle; a protocol travels (to spawned workers) as its dict
        return (_restore_protocol, (self.to_dict(),))

    # ----------------------------------------------------------------- files
    @classmethod
    def from_file(cls, path: str | Path) -> Protocol:
        """Load a protocol JSON file.

        Keys: ``prompts`` (list) or ``prompts_file`` (.txt/.csv/.json, see :func:`load_prompt_file`),
        optional ``reference_images`` (list, one per prompt), ``reference_dir``, ``num_samples``,
        ``seed``, ``sampler`` ({num_steps, guidance_scale, image_size, extra}), ``backbones``,
        ``metrics``, ``composite_weights``, ``metric_options`` (e.g. ``{"inception_score": {"splits": 10}}``),
        ``name``. Relative paths are relative to the JSON file.
        """
        path = Path(path)
        if not path.is_file():
            raise ProtocolError(f"protocol file {str(path)!r} does not exist")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ProtocolError(f"protocol file {str(path)!r} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ProtocolError(f"protocol file {str(path)!r} must hold a JSON object")
        known = {
            "name", "prompts", "prompts_file", "reference_images", "reference_dir", "num_samples", "seed",
            "sampler", "backbones", "metrics", "composite_weights", "metric_options", "composite_mappings",
        }
        unknown = sorted(set(data) - known)
        if unknown:
            raise ProtocolError(f"protocol file {str(path)!r} has unknown key(s) {unknown}; known: {sorted(known)}")
        base = path.parent

        def resolve(p: Any) -> Path | None:
            if p is None:
                return None
            q = Path(str(p))
            return q if q.is_absolute() else base / q

        kwargs: dict[str, Any] = {}
        if ("prompts" in data) == ("prompts_file" in data):
            raise ProtocolError(f"protocol file {str(path)!r} needs exactly one of 'prompts' or 'prompts_file'")
        if "prompts_file" in data:
            prompts, refs = load_prompt_file(resolve(data["prompts_file"]))  # type: ignore[arg-type]
            kwargs["prompts"] = prompts
            kwargs["reference_images"] = refs
        else:
            kwargs["prompts"] = data["prompts"]
        if data.get("reference_images") is not None:
            kwargs["reference_images"] = [resolve(r) for r in data["reference_images"]]
        if data.get("reference_dir") is not None:
            kwargs["reference_dir"] = resolve(data["reference_dir"])
        for key in ("num_samples", "seed", "backbones", "composite_weights", "metric_options", "name",
                    "composite_mappings"):
            if key in data and data[key] is not None:
                kwargs[key] = data[key]
        if "metrics" in data:
            kwargs["metrics"] = tuple(data["metrics"])
        if "sampler" in data:
            kwargs["sampler"] = SamplerSettings.from_dict(data["sampler"])
        return cls(**kwargs)

    def to_file(self, path: str | Path) -> Path:
        """Write this protocol as JSON (absolute reference paths); ``from_file`` round-trips the hash."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path


def _restore_protocol(data: dict[str, Any]) -> Protocol:
    """Unpickle a protocol (its warnings were already shown where it was made)."""
    kwargs = dict(data)
    kwargs["sampler"] = SamplerSettings.from_dict(kwargs["sampler"])
    kwargs["metrics"] = tuple(kwargs["metrics"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSampleWarning)
        return Protocol(**kwargs)


# --------------------------------------------------------------------- validation (messages name the fix)

def _checked_prompts(prompts: Any) -> tuple[str, ...]:
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise ProtocolError(f"prompts must be a sequence of strings, got {type(prompts).__name__}")
    out = tuple(prompts)
    if not out:
        raise ProtocolError("prompts is empty; give at least one held-out evaluation prompt")
    bad = [p for p in out if not isinstance(p, str) or not p.strip()]
    if bad:
        raise ProtocolError(f"prompts must be non-empty strings; got {bad[:3]!r}")
    return out


def _check_integers(num_samples: Any, seed: Any) -> None:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ProtocolError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ProtocolError(f"seed must be an integer, got {seed!r}")


def _checked_sampler(sampler: Any) -> SamplerSettings:
    if isinstance(sampler, SamplerSettings):
        return sampler
    if isinstance(sampler, Mapping):
        return SamplerSettings.from_dict(sampler)
    raise ProtocolError(f"sampler must be SamplerSettings or a dict, got {type(sampler).__name__}")


def _checked_reference_images(images: Sequence[Any], num_prompts: int) -> tuple[Path | None, ...] | None:
    """One existing path (or None) per prompt; None when no prompt has a reference."""
    refs = tuple(None if r is None else Path(r) for r in images)
    if len(refs) != num_prompts:
        raise ProtocolError(
            f"reference_images has {len(refs)} entries for {num_prompts} prompts; give one per prompt "
            "(None where a prompt has no reference)"
        )
    if all(r is None for r in refs):
        return None
    missing = [str(r) for r in refs if r is not None and not r.is_file()]
    if missing:
        shown = ", ".join(missing[:10]) + (f" ... ({len(missing)} in all)" if len(missing) > 10 else "")
        raise ProtocolError(f"{len(missing)} reference image(s) do not exist: {shown}")
    return refs


def _image_files(root: Path) -> list[Path]:
    """Images under ``root`` (recursively), sorted by path so their order is stable."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def _checked_reference_dir(reference_dir: Any) -> Path:
    ref_dir = Path(reference_dir)
    if not ref_dir.is_dir():
        raise ProtocolError(f"reference_dir {str(ref_dir)!r} is not a directory")
    if not _image_files(ref_dir):
        raise ProtocolError(f"reference_dir {str(ref_dir)!r} contains no images ({', '.join(IMAGE_SUFFIXES)})")
    return ref_dir


def _checked_metrics(metrics: Any, reference_images: tuple[Path | None, ...] | None,
                     reference_dir: Path | None) -> tuple[str, ...]:
    """The given metrics, or (None) every metric the protocol's data supports."""
    if metrics is None:
        no_lpips = reference_images is None or None in reference_images
        out = tuple(m for m in DEFAULT_METRICS
                    if not (m == "lpips" and no_lpips) and not (m in ("fid", "kid") and reference_dir is None))
    else:
        out = tuple(metrics)
    if not out or any(not isinstance(m, str) for m in out):
        raise ProtocolError(f"metrics must be a non-empty list of metric names, got {metrics!r}")
    return out


def _checked_composite_weights(weights: Mapping[str, Any]) -> Mapping[str, float]:
    try:
        clean = {str(k): float(v) for k, v in dict(weights).items()}
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"composite_weights must map metric names to numbers, got {weights!r}") from exc
    # zero drops a component; the rest obey the one rule of bestckpt.metrics (positive, finite)
    check_composite_weights({k: w for k, w in clean.items() if w != 0.0}, allow_empty=True, error=ProtocolError)
    return types.MappingProxyType(dict(sorted(clean.items())))


def _checked_composite_mappings(mappings: Any) -> Mapping[str, Any]:
    """Metric -> mapping JSON, each parsed by ``mapping_from_dict`` and stored in its canonical form (hashed)."""
    if not isinstance(mappings, Mapping):
        raise ProtocolError(f"composite_mappings must map metric -> mapping, e.g. "
                            f"{{'fid': {{'type': 'inverse', 'scale': 400}}}}; got {mappings!r}")
    out = {}
    for name, data in sorted(mappings.items()):
        if not isinstance(data, Mapping):
            raise ProtocolError(f"composite_mappings[{name!r}] must be a mapping like {{'type': 'inverse', "
                                f"'scale': 400}}, got {data!r}")
        try:
            out[str(name)] = types.MappingProxyType(mapping_to_dict(mapping_from_dict(data)))
        except ValueError as exc:
            raise ProtocolError(f"composite_mappings[{name!r}]: {exc}") from exc
    return types.MappingProxyType(out)


def _checked_metric_options(options: Any) -> Mapping[str, Any]:
    """Per-metric options as canonical JSON values (they are hashed)."""
    if not isinstance(options, Mapping):
        raise ProtocolError(f"metric_options must map metric -> options, got {options!r}")
    try:
        opts = json.loads(json.dumps({str(k): dict(v) for k, v in options.items()}, sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"metric_options must be JSON-serialisable (they are hashed): {exc}") from exc
    return types.MappingProxyType(opts)


def _check_metric_data(metrics: tuple[str, ...], reference_images: tuple[Path | None, ...] | None,
                       reference_dir: Path | None, num_prompts: int) -> None:
    """Every metric asked for has the data it needs: LPIPS a reference per prompt, FID/KID a reference set."""
    if "lpips" in metrics and reference_images is None:
        raise ProtocolError(
            "metric 'lpips' needs paired reference images (reference_images / the CSV's image_path column); "
            "give them or remove 'lpips' from metrics"
        )
    if "lpips" in metrics and reference_images is not None and any(r is None for r in reference_images):
        n = sum(r is None for r in reference_images)
        raise ProtocolError(
            f"metric 'lpips' needs a reference for every prompt, but {n} of {num_prompts} prompts have none; "
            "fill them or remove 'lpips' from metrics (LPIPS over a subset would not be comparable)"
        )
    if ("fid" in metrics or "kid" in metrics) and reference_dir is None:
        raise ProtocolError(
            "metrics 'fid'/'kid' need a reference image set: set reference_dir (held-out real images) "
            "or remove them from metrics"
        )


def _warn_small_samples(metrics: tuple[str, ...], num_samples: int) -> None:
    """Warn (at the caller of ``Protocol(...)``) when FID or IS would be noise at this sample count."""
    # stacklevel 4: this function, __post_init__, the dataclass __init__, then the caller
    if "fid" in metrics and num_samples < FID_MIN_SAMPLES:
        warnings.warn(
            f"num_samples={num_samples} is too small for FID: a 2048-d covariance needs >= "
            f"{FID_MIN_SAMPLES} samples and FID is strongly biased below that; rankings can flip. "
            f"Use >= {DEFAULT_NUM_SAMPLES} or rank by KID",
            SmallSampleWarning,
            stacklevel=4,
        )
    if "inception_score" in metrics and num_samples < IS_MIN_SAMPLES:
        warnings.warn(
            f"num_samples={num_samples} is too small for Inception Score (10 splits of "
            f"{num_samples // 10} images); use >= {IS_MIN_SAMPLES}",
            SmallSampleWarning,
            stacklevel=4,
        )
