"""Report sections on what a run learned: the best checkpoint's attribute accuracy (demo runs) and each
component's share of the composite's change over the run.

- ``accuracy``: ``RUN_DIR/accuracy.json`` as written by the demo (:func:`bestckpt.demo.train.best_accuracy`): the
  fraction of held-out prompts whose five attributes the best checkpoint drew right, read by the demo classifier
  and by the nearest exact render. Absent file: no section.
- ``composite_shares``: from the first evaluated checkpoint to the best, how much of the composite's change each
  component made, under the run's protocol composite definition (weights and mappings,
  :mod:`bestckpt.evaluation.composite`): a component whose mapping scale does not suit its backbone shows up as a
  metric that moved a lot and the composite hardly.
"""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

from bestckpt.sinks.report.data import RunData
from bestckpt.sinks.report.svg import fmt

__all__ = ["ACCURACY_FILE", "accuracy", "composite_shares"]

logger = logging.getLogger("bestckpt.sinks.report")
ACCURACY_FILE = "accuracy.json"
_ATTRIBUTES = ("size", "color", "shape", "position", "background")  # the demo's, in its order
_READERS = (("classifier", "demo classifier"), ("nearest_render", "nearest exact render (no network)"))


def accuracy(data: RunData) -> str:
    """The best checkpoint's per-attribute accuracy, if the run wrote ``accuracy.json``."""
    path = data.run_dir / ACCURACY_FILE
    if not path.is_file():
        return ""
    try:
        acc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable %s: %s", path, exc)
        return ""
    cols = ("all", *_ATTRIBUTES)
    out = [f"<h2>What the best checkpoint learned</h2><p class='note'>Fraction of the {acc.get('num_prompts')} "
           f"held-out prompts whose image (step {acc.get('step')}, {acc.get('weights')} weights, the evaluation's "
           "own prompts, seeds and sampler) shows each attribute the prompt states; <i>all</i>: all five right "
           "together. Read twice: by the demo classifier (also the FID/IS backbone) and by the nearest exact "
           "render in pixel space, which uses no network.</p><table><tr><th class='l'>read by</th>"
           + "".join(f"<th>{'all five' if c == 'all' else c}</th>" for c in cols) + "</tr>"]
    for key, label in _READERS:
        row = acc.get(key) or {}
        out.append(f"<tr><td class='l'>{label}</td>"
                   + "".join(f"<td>{row[c]:.3f}</td>" if isinstance(row.get(c), (int, float)) else "<td>–</td>"
                             for c in cols) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _definition(data: RunData) -> tuple[dict[str, float], dict[str, Any]] | None:
    """(weights, mappings) of the run's protocol composite, or None without a readable protocol file."""
    if data.protocol is None:
        return None
    from bestckpt.evaluation.composite import composite_definition  # torch: only when a report is drawn
    from bestckpt.evaluation.protocol import Protocol

    _, folder = data.protocol
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sample-size warnings were shown when the protocol was made
            path = Path(folder) / "protocol.json"
            return composite_definition(Protocol.from_file(path)) if path.is_file() else None
    except Exception as exc:  # the report still renders without this section
        logger.warning("no composite breakdown: the protocol in %s cannot be read (%s)", folder, exc)
        return None


def composite_shares(data: RunData) -> str:
    """Each component's share of the composite's change from the first evaluated checkpoint to the best."""
    best, evaluated = data.best, data.evaluated
    if data.metric_name != "composite_score" or best is None or len(evaluated) < 2 or evaluated[0] is best:
        return ""
    definition = _definition(data)
    if definition is None:
        return ""
    from bestckpt.evaluation.composite import composite_shares as shares_of
    from bestckpt.metrics.composite import mapping_to_dict

    weights, mappings = definition
    first = evaluated[0]
    try:
        shares = shares_of(first["metrics"], best["metrics"], weights, mappings)
    except Exception as exc:  # a component missing at one end: nothing to apportion
        logger.info("no composite breakdown: %s", exc)
        return ""
    total = sum(shares.values())
    out = [f"<h2>What moved the composite</h2><p class='note'>From step {first['step']} (first evaluated) to step "
           f"{best['step']} (best) the composite changed by {total:+.4f}. Each component's share is the change of "
           "its weighted, mapped term; a mapping's scale should suit the backbone that produced the metric "
           "(it is part of the protocol).</p><table><tr><th class='l'>component</th><th>weight</th>"
           "<th class='l'>mapping</th><th>first</th><th>best</th><th>term change</th><th>share</th></tr>"]
    for name, change in sorted(shares.items(), key=lambda kv: -abs(kv[1])):
        try:
            text = ", ".join(f"{k}={v}" for k, v in mapping_to_dict(mappings[name]).items())
        except ValueError:  # a user's own mapping class
            text = type(mappings[name]).__name__
        share = f"{100 * change / total:.0f}%" if total else "–"
        out.append(f"<tr><td class='l'>{name}</td><td>{weights[name]:g}</td><td class='l'>{text}</td>"
                   f"<td>{fmt(first['metrics'].get(name))}</td><td>{fmt(best['metrics'].get(name))}</td>"
                   f"<td>{change:+.4f}</td><td>{share}</td></tr>")
    out.append("</table>")
    return "".join(out)
