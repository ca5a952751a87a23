"""The report page, one function per section; each returns its HTML (escaped, images embedded)."""
from __future__ import annotations

import base64
import html
import re
import time
from importlib import resources
from pathlib import Path
from typing import Any

from bestckpt.sinks.report.data import RunData, interval_of, reference_paths
from bestckpt.sinks.report.svg import Point, fmt, svg_plot, svg_timeline

__all__ = ["best_samples", "checkpoints", "header", "metric_curves", "progress_grid"]

_LOWER_IS_BETTER = {"fid", "kid", "lpips"}
_GEN = re.compile(r"^eval_generated_(\d{3,})\.jpg$")
e = html.escape


def _data_uri(path: Path) -> str:
    mime = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}.get(path.suffix.lower(), "image/png")
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _img(path: Path, alt: str, size: int = 64, width: int | None = None) -> str:
    return (f'<img src="{_data_uri(path)}" alt="{e(alt)}" title="{e(alt)}" '
            f'width="{width or size}" height="{size}" class="px">')


def _css() -> str:
    return resources.files("bestckpt.sinks").joinpath("templates/report.css").read_text(encoding="utf-8")


def _protocol_line(data: RunData) -> str:
    """What the scores were measured with: backbones, samples, sampler settings."""
    if data.protocol is None:
        return ""
    proto = data.protocol[0]
    bits = []
    if isinstance(proto.get("backbones"), dict):
        bits.append("backbones " + ", ".join(f"{k}={v}" for k, v in sorted(proto["backbones"].items())))
    if proto.get("num_samples"):
        bits.append(f"{proto['num_samples']} samples of {len(proto.get('prompts') or [])} prompts")
    sampler = proto.get("sampler")
    if isinstance(sampler, dict):
        bits.append(f"{sampler.get('num_steps')} sampler steps, guidance {sampler.get('guidance_scale')}")
    text = "Evaluation protocol: " + "; ".join(bits) + "."
    if any(str(v).startswith("demo-") for v in (proto.get("backbones") or {}).values()):
        text += (" The demo evaluators are trained on the demo's synthetic data: their numbers are comparable "
                 "within the demo only, not with scores from the standard backbones.")
    return text


def header(data: RunData) -> str:
    """Document head and the run's summary line: tracked metric, counts, the best checkpoint, protocol."""
    run, best, metric = data.run_dir, data.best, data.metric_name
    out = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><link rel='icon' href='data:,'>"
           f"<title>bestckpt report – {e(run.name or str(run))}</title><style>\n{_css()}</style></head><body>",
           f"<h1>Best-checkpoint report: {e(str(run))}</h1>"]
    best_ci = interval_of(best, metric) if best else None
    best_txt = (f"best: step {best['step']} ({e(best['path'])}), {e(metric)} = "
                f"{fmt(best['metrics'].get(metric))}"
                + (f" (95% interval {fmt(best_ci[0])} to {fmt(best_ci[1])})" if best_ci else "")
                if best else "no checkpoint could be ranked yet")
    info_bits = []
    if best and best["info"].get("weights"):
        info_bits.append(f"sampled with {e(str(best['info']['weights']))} weights")
    out.append(f"<p class='meta'>Tracked metric <b>{e(metric)}</b> "
               f"({'higher' if data.higher_is_better else 'lower'} is better), top-"
               f"{e(str(data.save_top_k))} kept; {len(data.records)} checkpoints recorded, {len(data.evaluated)} "
               f"evaluated; <b>{best_txt}</b>{'; ' + ', '.join(info_bits) if info_bits else ''}. "
               f"Written {e(time.strftime('%Y-%m-%d %H:%M:%S'))}.</p>")
    if data.protocol is not None:
        out.append(f"<p class='note'>{e(_protocol_line(data))}</p>")
    hashes = sorted({str(r["protocol_hash"]) for r in data.records if r.get("protocol_hash")})
    if len(hashes) > 1:
        out.append(f"<p class='note'>Warning: scores come from {len(hashes)} different evaluation protocols and "
                   "are not comparable across them.</p>")
    return "".join(out)


def metric_curves(data: RunData, names: list[str]) -> str:
    """Section 1: one plot per metric over steps, the best checkpoint marked."""
    out = ["<h2>Metrics over training</h2><div class='plots'>"]
    if not names:
        out.append("<p class='note'>No evaluated checkpoint yet.</p>")
    for m in names:
        by_step = {r["step"]: r for r in data.evaluated}
        pts = [Point(step, value, *(interval_of(by_step[step], m) or (None, None))) for step, value in data.points(m)]
        if pts:
            out.append(svg_plot(m, pts, data.best_step, m in _LOWER_IS_BETTER, data.x_range))
    out.append("</div>")
    if data.has_intervals:
        out.append("<p class='note'>Error bars: 95% bootstrap intervals over the evaluation's prompts and seeds "
                   "(how far a score would move with another draw of samples at the same N). Checkpoints whose "
                   "intervals overlap are not reliably ranked by this evaluation.</p>")
    return "".join(out)


def checkpoints(data: RunData, names: list[str]) -> str:
    """Section 2: the kept/pruned timeline and the table of every checkpoint with its scores."""
    best_step = data.best_step
    out = ["<h2>Checkpoints: kept and pruned</h2>", svg_timeline(data.records, best_step, data.x_range),
           "<table><tr><th>step</th><th>epoch</th><th class='l'>status</th><th class='l'>on disk</th>"
           + "".join(f"<th>{e(c)}</th>" for c in names) + "</tr>"]
    for r in data.records:
        cls = "best" if r["step"] == best_step else ("gone" if r["pruned"] else "")
        disk = "pruned" if r["pruned"] else ("kept: " + "; ".join(r["reasons"]) if r["reasons"] else "kept")
        status = r["status"] + (f" ({r['error']})" if r["status"] == "failed" and r["error"] else "")
        out.append(f"<tr class='{cls}'><td>{r['step']}{' ★' if r['step'] == best_step else ''}</td>"
                   f"<td>{'' if r['epoch'] is None else r['epoch']}</td><td class='l'>{e(status)}</td>"
                   f"<td class='l'>{e(disk)}</td>"
                   + "".join(f"<td>{_cell(r, c)}</td>" for c in names) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _cell(record: dict[str, Any], metric: str) -> str:
    """A table cell: the value, and its 95% interval underneath when stored."""
    ci = interval_of(record, metric)
    value = fmt(record["metrics"].get(metric))
    return value if ci is None else f"{value}<br><span class='ci'>[{fmt(ci[0])}, {fmt(ci[1])}]</span>"


def progress_grid(data: RunData, max_prompts: int, max_steps: int) -> str:
    """Section 3: each held-out prompt (a row) with the same initial noise at the last evaluated steps."""
    step_dirs = data.step_dirs
    shown = sorted(step_dirs)[-max_steps:]
    out = ["<h2>Progress grid</h2><p class='note'>Each row is one held-out prompt with the same initial noise "
           "at every evaluated step, so a row shows what training changed.</p>"]
    if not shown:
        out.append(f"<p class='note'>No evaluation samples found in {e(str(data.samples_dir))}.</p>")
        return "".join(out)
    indices = sorted({int(m.group(1)) for s in shown for f in step_dirs[s].iterdir()
                      if (m := _GEN.match(f.name))})[:max_prompts]
    out.append("<table class='grid-t'><tr><th class='l'>prompt</th>"
               + "".join(f"<th>{s}{' ★' if s == data.best_step else ''}</th>" for s in shown) + "</tr>")
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
    return "".join(out)


def best_samples(data: RunData, max_pairs: int) -> str:
    """Section 4: the best checkpoint's samples next to their reference images."""
    out = ["<h2>Best checkpoint: generated vs reference</h2>"]
    best = data.best
    if best is None or best["step"] not in data.step_dirs:
        out.append("<p class='note'>No samples of the best checkpoint were found.</p>")
        return "".join(out)
    d = data.step_dirs[best["step"]]
    refs = reference_paths(data.protocol)
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
    return "".join(out)
