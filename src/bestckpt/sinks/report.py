"""A self-contained static HTML report of a tracked run (``bestckpt report RUN_DIR``).

One file, no network, no JavaScript: plots are inline SVG, images are embedded as ``data:`` URIs,
so the page can be mailed or archived and still shows everything. Sections:

1. metric curves over steps (one small plot per metric, the best checkpoint marked, the metric's
   direction stated);
2. the kept/pruned timeline: every checkpoint the tracker knows, on disk or pruned, with the
   retention reasons of those kept (top-k, best, latest, every-N steps, pending evaluation);
3. the progress grid: the same prompts with the same initial noise at every evaluated step;
4. the best checkpoint's samples next to their reference images.

Inputs are the files the tracker and the evaluation pipeline write (read-only):
``CKPT_DIR/best_checkpoints.json`` (+ ``best.pt``), ``RUN_DIR/evaluation_samples/{step:07d}/``
and, where present, the protocol JSON naming the reference images.
"""
from __future__ import annotations

import base64
import html
import json
import logging
import math
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bestckpt.errors import ReportError

__all__ = ["ReportError", "find_checkpoint_dir", "render_report", "write_report"]

logger = logging.getLogger(__name__)

REPORT_NAME = "report.html"
_METRIC_ORDER = ("composite_score", "clip_score", "fid", "kid", "lpips", "inception_score")
_LOWER_IS_BETTER = {"fid", "kid", "lpips"}
_GEN = re.compile(r"^eval_generated_(\d{3,})\.jpg$")


@dataclass(frozen=True)
class _Point:
    step: int
    value: float


def find_checkpoint_dir(run_dir: Path) -> Path:
    """``RUN_DIR/checkpoints`` if it holds tracker state, else RUN_DIR itself if it does."""
    for cand in (run_dir / "checkpoints", run_dir):
        if (cand / "best_checkpoints.json").is_file():
            return cand
    raise ReportError(
        f"no best_checkpoints.json in {run_dir} or {run_dir / 'checkpoints'}; pass the experiment directory of a "
        "run tracked by bestckpt (or --checkpoint-dir)"
    )


def _data_uri(path: Path) -> str:
    mime = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}.get(path.suffix.lower(), "image/png")
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _img(path: Path, alt: str, size: int = 64, width: int | None = None) -> str:
    return (f'<img src="{_data_uri(path)}" alt="{html.escape(alt)}" title="{html.escape(alt)}" '
            f'width="{width or size}" height="{size}" class="px">')


def _fmt(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "–"
    return f"{v:.4g}" if abs(v) < 1000 else f"{v:.1f}"


# ----------------------------------------------------------------------------------------- plots

def _svg_plot(title: str, points: Sequence[_Point], best_step: int | None, lower_is_better: bool,
              x_range: tuple[int, int], width: int = 340, height: int = 200) -> str:
    """An inline SVG line plot of value over step, the best checkpoint ringed and labelled."""
    left, right, top, bottom = 52, 12, 26, 30
    pw, ph = width - left - right, height - top - bottom
    ys = [p.value for p in points]
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
        parts.append(f'<text x="{left - 4}" y="{y + 3:.1f}" class="tick" text-anchor="end">{_fmt(v)}</text>')
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
        parts.append(f'<circle cx="{sx(p.step):.1f}" cy="{sy(p.value):.1f}" r="3" class="pt">'
                     f"<title>step {p.step}: {_fmt(p.value)}</title></circle>")
    best = next((p for p in pts if p.step == best_step), None)
    if best is not None:
        bx, by = sx(best.step), sy(best.value)
        anchor = "end" if bx > left + pw * 0.55 else "start"
        dx = -8 if anchor == "end" else 8
        parts.append(f'<circle cx="{bx:.1f}" cy="{by:.1f}" r="7" class="best"><title>best checkpoint, step '
                     f"{best.step}: {_fmt(best.value)}</title></circle>")
        parts.append(f'<text x="{bx + dx:.1f}" y="{by - 9:.1f}" class="bestlabel" text-anchor="{anchor}">best '
                     f"{_fmt(best.value)} @ {best.step}</text>")
    parts.append("</svg>")
    return "".join(parts)


_STATUS_CLASS = {"evaluated": "ev", "pending": "pe", "saved": "sv", "failed": "fa"}


def _svg_timeline(records: list[dict[str, Any]], best_step: int | None, x_range: tuple[int, int],
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


# ------------------------------------------------------------------------------------------ data

def _load_state(ckpt_dir: Path) -> dict[str, Any]:
    from bestckpt.fsio import float_from_json

    path = ckpt_dir / "best_checkpoints.json"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReportError(f"cannot read {path}: {exc}; is the run's tracker state intact? "
                          "(`bestckpt status` repairs and explains it)") from exc
    if not isinstance(state, dict) or not isinstance(state.get("checkpoints"), list):
        raise ReportError(f"{path} has no 'checkpoints' list; it was not written by bestckpt")
    records = []
    for raw in state["checkpoints"]:
        if not isinstance(raw, dict) or not isinstance(raw.get("step"), int):
            continue
        metrics = {}
        for k, v in (raw.get("metrics") or {}).items():
            try:
                metrics[str(k)] = float_from_json(v)
            except ValueError:
                metrics[str(k)] = None
        records.append({"step": raw["step"], "epoch": raw.get("epoch"), "path": raw.get("checkpoint_path", ""),
                        "status": raw.get("status", "evaluated"), "pruned": bool(raw.get("pruned", False)),
                        "metrics": metrics, "error": raw.get("error"), "info": raw.get("info") or {},
                        "reasons": []})
    records.sort(key=lambda r: r["step"])
    state["_records"] = records
    return state


def _retention_reasons(ckpt_dir: Path, records: list[dict[str, Any]]) -> None:
    """Fill each on-disk record's keep reasons from the tracker's own (read-only) plan."""
    try:
        from bestckpt.tracking.tracker import BestCheckpointTracker

        plan = BestCheckpointTracker.open(ckpt_dir).plan()
    except Exception as exc:  # the report still renders; reasons are a detail
        logger.warning("could not compute retention reasons for %s: %s", ckpt_dir, exc)
        return
    by_step = {d.step: d for d in plan}
    for r in records:
        d = by_step.get(r["step"])
        if d is not None and not r["pruned"]:
            r["reasons"] = list(d.reasons)


def _load_protocol(run_dir: Path, protocol_file: Path | None) -> tuple[dict[str, Any], Path] | None:
    """The protocol JSON (as written by ``Protocol.to_file``) and its folder, if there is one."""
    cands = [protocol_file] if protocol_file else [run_dir / "protocol" / "protocol.json", run_dir / "protocol.json"]
    for cand in cands:
        if cand is not None and cand.is_file():
            try:
                data = json.loads(cand.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                logger.warning("ignoring unreadable protocol file %s: %s", cand, exc)
                continue
            if isinstance(data, dict):
                return data, cand.parent
    return None


def _reference_paths(protocol: tuple[dict[str, Any], Path] | None) -> list[Path | None]:
    if protocol is None:
        return []
    data, base = protocol
    out: list[Path | None] = []
    for r in data.get("reference_images") or []:
        if r is None:
            out.append(None)
        else:
            p = Path(r)
            out.append(p if p.is_absolute() else base / p)
    return out


def _protocol_line(protocol: tuple[dict[str, Any], Path] | None) -> str:
    """What the scores were measured with: backbones, samples, sampler settings."""
    if protocol is None:
        return ""
    data = protocol[0]
    bits = []
    if isinstance(data.get("backbones"), dict):
        bits.append("backbones " + ", ".join(f"{k}={v}" for k, v in sorted(data["backbones"].items())))
    if data.get("num_samples"):
        bits.append(f"{data['num_samples']} samples of {len(data.get('prompts') or [])} prompts")
    sampler = data.get("sampler")
    if isinstance(sampler, dict):
        bits.append(f"{sampler.get('num_steps')} sampler steps, guidance {sampler.get('guidance_scale')}")
    text = "Evaluation protocol: " + "; ".join(bits) + "."
    if any(str(v).startswith("demo-") for v in (data.get("backbones") or {}).values()):
        text += (" The demo evaluators are trained on the demo's synthetic data: their numbers are comparable "
                 "within the demo only, not with scores from the standard backbones.")
    return text


def _sample_steps(samples_dir: Path) -> dict[int, Path]:
    if not samples_dir.is_dir():
        return {}
    return {int(d.name): d for d in samples_dir.iterdir() if d.is_dir() and d.name.isdigit()}


# ---------------------------------------------------------------------------------------- render

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1180px;
color:#1d2330;background:#fbfbfd;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde;padding-bottom:4px}
.meta{color:#556;margin:0 0 12px}.plots{display:flex;flex-wrap:wrap;gap:12px}
.plot,.timeline{background:#fff;border:1px solid #e3e5ee;border-radius:6px}
.ptitle{font-size:13px;font-weight:600;fill:#1d2330}.dir{font-weight:400;fill:#778}
.frame{fill:none;stroke:#ccd}.grid{stroke:#eef;stroke-width:1}.tick{font-size:10px;fill:#667}
.line{fill:none;stroke:#3b6fd8;stroke-width:2}.pt{fill:#3b6fd8}.best{fill:none;stroke:#e0402a;stroke-width:2.5}
.bestlabel{font-size:11px;fill:#e0402a;font-weight:600}.axis{stroke:#99a;stroke-width:1.5}
.ev{fill:#2e9d58}.sv{fill:#8a94a8}.pe{fill:#e3a21a}.fa{fill:#d0342c}.gone{fill:#fff;stroke:#99a;stroke-width:1.5}
.kept{stroke:#223;stroke-width:.5}
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #e3e5ee;padding:3px 7px;text-align:right}
th{background:#f1f2f7}td.l,th.l{text-align:left}tr.best td{background:#fff3ef;font-weight:600}
tr.gone td{color:#99a}img.px{image-rendering:pixelated;display:block}
.grid-t td{padding:2px}.prompt{max-width:260px;font-size:12px;text-align:left;color:#334}
.pairs{display:flex;flex-wrap:wrap;gap:10px}.pair{background:#fff;border:1px solid #e3e5ee;border-radius:6px;
padding:6px;width:150px}.pair .imgs{display:flex;gap:4px}.pair .cap{font-size:11px;color:#445;margin-top:4px}
.lab{font-size:10px;color:#778}.note{color:#667;font-size:12px}
"""


def render_report(run_dir: str | Path, *, checkpoint_dir: str | Path | None = None,
                  samples_dir: str | Path | None = None, protocol_file: str | Path | None = None,
                  max_prompts: int = 8, max_steps: int = 12, max_pairs: int = 20) -> str:
    """The report as one HTML string (see the module docstring for what it shows)."""
    run = Path(run_dir)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else find_checkpoint_dir(run)
    sdir = Path(samples_dir) if samples_dir else run / "evaluation_samples"
    state = _load_state(ckpt_dir)
    records: list[dict[str, Any]] = state["_records"]
    _retention_reasons(ckpt_dir, records)
    metric_name = state.get("metric_name", "composite_score")
    best_step = state.get("best_step")
    best = next((r for r in records if r["step"] == best_step), None)
    steps = [r["step"] for r in records] or [0]
    x_range = (min(0, min(steps)), max(steps))
    evaluated = [r for r in records if r["status"] == "evaluated"]

    out: list[str] = []
    e = html.escape
    out.append("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
               "<link rel='icon' href='data:,'>"
               f"<title>bestckpt report – {e(run.name or str(run))}</title><style>{_CSS}</style></head><body>")
    out.append(f"<h1>Best-checkpoint report: {e(str(run))}</h1>")
    best_txt = (f"best: step {best['step']} ({e(best['path'])}), {e(metric_name)} = "
                f"{_fmt(best['metrics'].get(metric_name))}" if best else "no checkpoint could be ranked yet")
    info_bits = []
    if best and best["info"].get("weights"):
        info_bits.append(f"sampled with {e(str(best['info']['weights']))} weights")
    out.append(f"<p class='meta'>Tracked metric <b>{e(metric_name)}</b> "
               f"({'higher' if state.get('higher_is_better', True) else 'lower'} is better), top-"
               f"{e(str(state.get('save_top_k')))} kept; {len(records)} checkpoints recorded, {len(evaluated)} "
               f"evaluated; <b>{best_txt}</b>{'; ' + ', '.join(info_bits) if info_bits else ''}. "
               f"Written {e(time.strftime('%Y-%m-%d %H:%M:%S'))}.</p>")
    protocol = _load_protocol(run, Path(protocol_file) if protocol_file else None)
    if protocol is not None:
        out.append(f"<p class='note'>{e(_protocol_line(protocol))}</p>")
    hashes = sorted({r.get("protocol_hash") for r in records if r.get("protocol_hash")} - {None})
    if len(hashes) > 1:
        out.append(f"<p class='note'>Warning: scores come from {len(hashes)} different evaluation protocols and "
                   "are not comparable across them.</p>")

    # 1. metric curves
    out.append("<h2>Metrics over training</h2><div class='plots'>")
    names = [m for m in _METRIC_ORDER if any(r["metrics"].get(m) is not None for r in evaluated)]
    # other metrics too (a user's custom ones), but not the spreads ("kid_std"): they are not scores
    names += sorted({k for r in evaluated for k, v in r["metrics"].items()
                     if v is not None and not k.endswith("_std")} - set(names))
    if not names:
        out.append("<p class='note'>No evaluated checkpoint yet.</p>")
    for m in names:
        pts = [_Point(r["step"], float(r["metrics"][m])) for r in evaluated
               if r["metrics"].get(m) is not None and math.isfinite(r["metrics"][m])]
        if pts:
            out.append(_svg_plot(m, pts, best_step, m in _LOWER_IS_BETTER, x_range))
    out.append("</div>")

    # 2. kept / pruned timeline and table
    out.append("<h2>Checkpoints: kept and pruned</h2>")
    out.append(_svg_timeline(records, best_step, x_range))
    cols = names
    out.append("<table><tr><th>step</th><th>epoch</th><th class='l'>status</th><th class='l'>on disk</th>"
               + "".join(f"<th>{e(c)}</th>" for c in cols) + "</tr>")
    for r in records:
        cls = "best" if r["step"] == best_step else ("gone" if r["pruned"] else "")
        disk = "pruned" if r["pruned"] else ("kept: " + "; ".join(r["reasons"]) if r["reasons"] else "kept")
        status = r["status"] + (f" ({r['error']})" if r["status"] == "failed" and r["error"] else "")
        out.append(f"<tr class='{cls}'><td>{r['step']}{' ★' if r['step'] == best_step else ''}</td>"
                   f"<td>{'' if r['epoch'] is None else r['epoch']}</td><td class='l'>{e(status)}</td>"
                   f"<td class='l'>{e(disk)}</td>"
                   + "".join(f"<td>{_fmt(r['metrics'].get(c))}</td>" for c in cols) + "</tr>")
    out.append("</table>")

    # 3. progress grid
    step_dirs = _sample_steps(sdir)
    shown = sorted(step_dirs)[-max_steps:]
    out.append("<h2>Progress grid</h2><p class='note'>Each row is one held-out prompt with the same initial noise "
               "at every evaluated step, so a row shows what training changed.</p>")
    if not shown:
        out.append("<p class='note'>No evaluation samples found in "
                   f"{e(str(sdir))}.</p>")
    else:
        indices = sorted({int(m.group(1)) for s in shown for f in step_dirs[s].iterdir()
                          if (m := _GEN.match(f.name))})[:max_prompts]
        out.append("<table class='grid-t'><tr><th class='l'>prompt</th>"
                   + "".join(f"<th>{s}{' ★' if s == best_step else ''}</th>" for s in shown) + "</tr>")
        for i in indices:
            prompt = ""
            for s in reversed(shown):
                pf = step_dirs[s] / f"eval_prompt_{i:03d}.txt"
                if pf.is_file():
                    prompt = pf.read_text(encoding="utf-8").strip()
                    break
            cells = []
            for s in shown:
                f = step_dirs[s] / f"eval_generated_{i:03d}.jpg"
                cells.append(f"<td>{_img(f, f'step {s}: {prompt}') if f.is_file() else ''}</td>")
            out.append(f"<tr><td class='prompt'>{e(prompt)}</td>{''.join(cells)}</tr>")
        out.append("</table>")

    # 4. best checkpoint's samples next to the references
    out.append("<h2>Best checkpoint: generated vs reference</h2>")
    if best is None or best["step"] not in step_dirs:
        out.append("<p class='note'>No samples of the best checkpoint were found.</p>")
    else:
        d = step_dirs[best["step"]]
        refs = _reference_paths(protocol)
        gens = sorted((int(m.group(1)), f) for f in d.iterdir() if (m := _GEN.match(f.name)))[:max_pairs]
        out.append(f"<p class='note'>Step {best['step']}: left the reference, right the generated image.</p>"
                   "<div class='pairs'>")
        for i, f in gens:
            pf = d / f"eval_prompt_{i:03d}.txt"
            prompt = pf.read_text(encoding="utf-8").strip() if pf.is_file() else ""
            ref = refs[i] if i < len(refs) else None
            comp = d / f"eval_comparison_{i:03d}.jpg"
            if ref is not None and ref.is_file():
                imgs = (f"<div>{_img(ref, 'reference: ' + prompt)}<div class='lab'>reference</div></div>"
                        f"<div>{_img(f, 'generated: ' + prompt)}<div class='lab'>generated</div></div>")
            elif comp.is_file():
                imgs = f"<div>{_img(comp, 'reference | generated: ' + prompt, 64, width=128)}</div>"
            else:
                imgs = f"<div>{_img(f, 'generated: ' + prompt)}<div class='lab'>generated</div></div>"
            out.append(f"<div class='pair'><div class='imgs'>{imgs}</div><div class='cap'>{e(prompt)}</div></div>")
        out.append("</div>")
    out.append("</body></html>\n")
    return "".join(out)


def write_report(run_dir: str | Path, output: str | Path | None = None, **kwargs: Any) -> Path:
    """Render the report and write it atomically to ``output`` (default ``RUN_DIR/report.html``)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise ReportError(f"run directory {run} does not exist; pass the experiment directory (e.g. runs/demo)")
    path = Path(output) if output else run / REPORT_NAME
    text = render_report(run, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    logger.debug("wrote %s (%d bytes)", path, len(text))
    return path
