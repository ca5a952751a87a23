"""Inline SVG for the report: a metric's curve over steps (with the 95% interval of each point as an error bar
when the evaluation stored one), and the kept/pruned checkpoint timeline."""
from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Point", "fmt", "svg_plot", "svg_timeline"]

_STATUS_CLASS = {"evaluated": "ev", "pending": "pe", "saved": "sv", "failed": "fa"}


@dataclass(frozen=True)
class Point:
    step: int
    value: float
    lo: float | None = None  # the value's confidence interval, when one was stored
    hi: float | None = None

    @property
    def has_interval(self) -> bool:
        return self.lo is not None and self.hi is not None


def fmt(v: float | None) -> str:
    """A metric value for people: 4 significant digits, one decimal from 1000 up, a dash for none."""
    if v is None or not math.isfinite(v):
        return "–"
    return f"{v:.4g}" if abs(v) < 1000 else f"{v:.1f}"


def svg_plot(title: str, points: Sequence[Point], best_step: int | None, lower_is_better: bool,
             x_range: tuple[int, int], width: int = 340, height: int = 200) -> str:
    """An inline SVG line plot of value over step, the best checkpoint ringed and labelled."""
    left, right, top, bottom = 52, 12, 26, 30
    pw, ph = width - left - right, height - top - bottom
    ys = [p.value for p in points]
    ys += [b for p in points for b in (p.lo, p.hi) if b is not None and p.has_interval]
    lo, hi = min(ys), max(ys)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5 * (abs(lo) or 1.0), hi + 0.5 * (abs(hi) or 1.0)
    pad = 0.08 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    x0, x1 = x_range
    if x1 <= x0:
        x1 = x0 + 1

    def sx(step: float) -> float:
        return left + (step - x0) / (x1 - x0) * pw

    def sy(v: float) -> float:
        return top + (hi - v) / (hi - lo) * ph

    parts = [f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">',
             f'<text x="{left}" y="16" class="ptitle">{html.escape(title)} '
             f'<tspan class="dir">({"lower" if lower_is_better else "higher"} is better)</tspan></text>',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="frame"/>']
    for i in range(5):  # y grid and labels
        v = lo + (hi - lo) * i / 4
        y = sy(v)
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 3:.1f}" class="tick" text-anchor="end">{fmt(v)}</text>')
    for i in range(5):  # x ticks
        s = x0 + (x1 - x0) * i / 4
        parts.append(f'<text x="{sx(s):.1f}" y="{top + ph + 14}" class="tick" text-anchor="middle">{int(round(s))}'
                     "</text>")
    parts.append(f'<text x="{left + pw / 2}" y="{height - 2}" class="tick" text-anchor="middle">step</text>')
    pts = sorted(points, key=lambda p: p.step)
    if len(pts) > 1:
        path = " ".join(f"{sx(p.step):.1f},{sy(p.value):.1f}" for p in pts)
        parts.append(f'<polyline points="{path}" class="line"/>')
    for p in pts:
        ci = ""
        if p.has_interval:
            assert p.lo is not None and p.hi is not None
            x, y_lo, y_hi = sx(p.step), sy(p.lo), sy(p.hi)
            parts.append(f'<path d="M{x:.1f},{y_lo:.1f}V{y_hi:.1f}M{x - 3:.1f},{y_lo:.1f}h6M{x - 3:.1f},{y_hi:.1f}h6" '
                         f'class="ci"/>')
            ci = f" (95% interval {fmt(p.lo)} to {fmt(p.hi)})"
        parts.append(f'<circle cx="{sx(p.step):.1f}" cy="{sy(p.value):.1f}" r="3" class="pt">'
                     f"<title>step {p.step}: {fmt(p.value)}{ci}</title></circle>")
    best = next((p for p in pts if p.step == best_step), None)
    if best is not None:
        bx, by = sx(best.step), sy(best.value)
        anchor = "end" if bx > left + pw * 0.55 else "start"
        dx = -8 if anchor == "end" else 8
        parts.append(f'<circle cx="{bx:.1f}" cy="{by:.1f}" r="7" class="best"><title>best checkpoint, step '
                     f"{best.step}: {fmt(best.value)}</title></circle>")
        parts.append(f'<text x="{bx + dx:.1f}" y="{by - 9:.1f}" class="bestlabel" text-anchor="{anchor}">best '
                     f"{fmt(best.value)} @ {best.step}</text>")
    parts.append("</svg>")
    return "".join(parts)


def svg_timeline(records: list[dict[str, Any]], best_step: int | None, x_range: tuple[int, int],
                 width: int = 720, height: int = 96) -> str:
    """Every checkpoint on a step axis: filled = on disk (kept), hollow = pruned; colour = status."""
    left, right = 20, 20
    pw = width - left - right
    x0, x1 = x_range
    if x1 <= x0:
        x1 = x0 + 1
    parts = [f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="kept and pruned checkpoints">',
             f'<line x1="{left}" x2="{left + pw}" y1="40" y2="40" class="axis"/>']
    for r in records:
        x = left + (r["step"] - x0) / (x1 - x0) * pw
        cls = _STATUS_CLASS.get(r["status"], "sv")
        kept = not r["pruned"]
        why = "; ".join(r["reasons"]) if kept else "pruned"
        tip = html.escape(f"step {r['step']}: {r['status']}, {'kept' if kept else 'pruned'}"
                          + (f" ({why})" if kept and why else ""))
        shape = (f'<rect x="{x - 5:.1f}" y="35" width="10" height="10" class="{cls} {"kept" if kept else "gone"}">'
                 f"<title>{tip}</title></rect>")
        parts.append(shape)
        if r["step"] == best_step:
            parts.append(f'<text x="{x:.1f}" y="27" class="bestlabel" text-anchor="middle">★ best</text>')
    for i in range(5):
        s = x0 + (x1 - x0) * i / 4
        parts.append(f'<text x="{left + pw * i / 4:.1f}" y="62" class="tick" text-anchor="middle">{int(round(s))}'
                     "</text>")
    legend = [("ev kept", "evaluated, kept"), ("sv kept", "saved (not evaluated), kept"), ("pe kept", "pending"),
              ("fa kept", "failed"), ("ev gone", "pruned")]
    lx = left
    for cls, label in legend:
        parts.append(f'<rect x="{lx}" y="76" width="10" height="10" class="{cls}"/>'
                     f'<text x="{lx + 14}" y="85" class="tick">{label}</text>')
        lx += 24 + 6 * len(label)
    parts.append("</svg>")
    return "".join(parts)
