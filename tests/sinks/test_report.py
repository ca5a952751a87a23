"""The HTML report: built from a real tracked run directory, checked as HTML and in headless Chromium."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bestckpt.demo.data import eval_prompts, reference_images
from bestckpt.evaluation.samples import write_evaluation_samples
from bestckpt.sinks.report import ReportError, render_report, write_report
from bestckpt.tracking.tracker import BestCheckpointTracker

ROOT = Path(__file__).resolve().parents[2]

from html_checks import check_images  # noqa: E402


def make_run(root: Path) -> Path:
    """A run directory as the demo leaves it: tracked checkpoints (some pruned, one failed),
    per-step evaluation samples with references, a protocol file."""
    run = root / "run"
    ckpt = run / "checkpoints"
    ckpt.mkdir(parents=True)
    prompts = eval_prompts(6, seed=3)
    refs = reference_images([a for _, a in prompts])
    ref_dir = run / "protocol" / "references"
    ref_dir.mkdir(parents=True)
    from PIL import Image

    ref_paths = []
    for i, r in enumerate(refs):
        p = ref_dir / f"ref_{i:03d}.png"
        Image.fromarray(r.permute(1, 2, 0).numpy()).save(p)
        ref_paths.append(str(p))
    (run / "protocol" / "protocol.json").write_text(
        json.dumps({"prompts": [c for c, _ in prompts], "reference_images": ref_paths}), encoding="utf-8")
    tracker = BestCheckpointTracker(ckpt, save_top_k=2, keep_every_n_steps=40)
    g = torch.Generator().manual_seed(0)
    composite = {10: 0.40, 20: 0.55, 30: 0.52, 40: 0.61, 50: None, 60: 0.58}
    for step in range(10, 70, 10):
        path = ckpt / f"{step:07d}.pt"
        torch.save({"step": step}, path)
        tracker.checkpoint_saved(step, path, epoch=step // 20, evaluate=True)
        if composite[step] is None:
            tracker.record_failure(step, "sampler failed: out of memory", checkpoint_path=path)
            continue
        quality = composite[step]
        # generated images: the references with noise that shrinks as quality grows
        noise = torch.randn(refs.shape, generator=g) * (1 - quality) * 120
        gen = (refs.float() + noise).clamp(0, 255).round().to(torch.uint8)
        write_evaluation_samples(run / "evaluation_samples", step, gen, [c for c, _ in prompts],
                                 [r for r in refs])
        tracker.update_checkpoint(step, step // 20, path, {
            "clip_score": 0.2 + 0.5 * quality, "lpips": 0.6 - 0.5 * quality, "inception_score": 1 + 4 * quality,
            "fid": 80 * (1 - quality), "kid": 0.05 * (1 - quality), "composite_score": quality},
            protocol_hash="abc")
    return run


def test_report_contents(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    path = write_report(run)
    assert path == run / "report.html"
    text = path.read_text(encoding="utf-8")
    c = check_images(text, run)
    # one plot per metric, plus the timeline
    assert text.count('class="plot"') == 6
    assert 'class="timeline"' in text
    # the best is step 40 and is marked in the plots, the table and the timeline
    assert text.count("@ 40") == 6 and "40 ★" in text and "★ best" in text
    # pruned and failed checkpoints are shown with their status, kept ones with their reasons
    assert "pruned" in text and "failed (sampler failed: out of memory)" in text
    assert re.search(r"kept: [^<]*top-?\d|kept: [^<]*best", text), "keep reasons missing"
    # progress grid: 6 prompts x 5 evaluated steps; best section: 6 reference + 6 generated
    grid = [i for i in c.imgs if str(i.get("title", "")).startswith("step ")]
    assert len(grid) == 6 * 5
    assert len([i for i in c.imgs if str(i.get("alt", "")).startswith("reference: ")]) == 6
    assert len([i for i in c.imgs if str(i.get("alt", "")).startswith("generated: ")]) == 6
    assert "<script" not in text  # static: nothing to run, nothing to fetch
    assert "different evaluation protocols" not in text  # every score has protocol "abc"


def test_report_warns_when_scores_come_from_different_protocols(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    tracker = BestCheckpointTracker(run / "checkpoints", save_top_k=2, keep_every_n_steps=40)
    tracker.update_checkpoint(60, 3, run / "checkpoints" / "0000060.pt", {"composite_score": 0.3}, protocol_hash="def")
    assert "Warning: scores come from 2 different evaluation protocols" in render_report(run)


def test_report_shows_stored_intervals_as_error_bars(tmp_path: Path) -> None:
    """Step 40 re-scored with intervals (as an evaluation now stores them); older records have none and get no bar."""
    run = make_run(tmp_path)
    assert 'class="ci"' not in render_report(run) and "95% interval" not in render_report(run)
    tracker = BestCheckpointTracker(run / "checkpoints", save_top_k=2, keep_every_n_steps=40)
    metrics = {"clip_score": 0.505, "lpips": 0.295, "inception_score": 3.44, "fid": 31.2, "kid": 0.0195,
               "composite_score": 0.61}
    tracker.update_checkpoint(40, 2, run / "checkpoints" / "0000040.pt", metrics, protocol_hash="abc",
                              info={"intervals": {"composite_score": [0.59, 0.63], "fid": [28.5, 34.0],
                                                  "kid": ["bad"]}})
    text = render_report(run)
    assert text.count('class="ci"/>') == 2  # composite and FID of step 40; the malformed KID entry is ignored
    assert "step 40: 31.2 (95% interval 28.5 to 34)" in text
    assert "<span class='ci'>[0.59, 0.63]</span>" in text and "(95% interval 0.59 to 0.63)" in text
    assert "Error bars: 95% bootstrap intervals" in text


def test_report_without_protocol_uses_comparison_images_and_handles_empty_runs(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    shutil.rmtree(run / "protocol")
    text = render_report(run)
    check_images(text, run)
    assert "reference | generated" in text
    # a run with no evaluation yet still renders, saying so
    empty = tmp_path / "empty"
    t = BestCheckpointTracker(empty / "checkpoints")
    torch.save({}, empty / "checkpoints" / "0000010.pt")
    t.checkpoint_saved(10, empty / "checkpoints" / "0000010.pt", evaluate=False)
    text = render_report(empty)
    assert "No evaluated checkpoint yet" in text and "no checkpoint could be ranked yet" in text
    (tmp_path / "nothing-here").mkdir()
    with pytest.raises(ReportError, match="best_checkpoints.json"):
        write_report(tmp_path / "nothing-here")


def test_report_reads_the_journal_of_a_large_state(tmp_path: Path) -> None:
    """A large run's state lives partly in best_checkpoints.journal: the report shows it, not the stale snapshot."""
    run = tmp_path / "run"
    ckpt = run / "checkpoints"
    ckpt.mkdir(parents=True)
    # state_compact_bytes=0: every transaction after the tracker's first snapshot is appended to the journal
    tracker = BestCheckpointTracker(ckpt, save_top_k=2, keep_every_n_steps=0, state_compact_bytes=0)
    for step, score in ((10, 0.3), (20, 0.5), (30, 0.9)):
        path = ckpt / f"{step:07d}.pt"
        torch.save({"step": step}, path)
        tracker.checkpoint_saved(step, path, epoch=1, evaluate=True)
        tracker.update_checkpoint(step, 1, path, {"composite_score": score}, protocol_hash="abc")
    snapshot = json.loads((ckpt / "best_checkpoints.json").read_text(encoding="utf-8"))
    assert snapshot["checkpoints"] == [] and snapshot["best_step"] is None  # only the journal has the records
    assert (ckpt / "best_checkpoints.journal").is_file()
    text = render_report(run)
    assert "3 checkpoints recorded, 3 evaluated" in text
    assert "best: step 30 (0000030.pt), composite_score = 0.9" in text
    assert "30 ★" in text and "@ 30" in text and 'class="plot"' in text
    assert re.search(r"<tr class='gone'><td>10</td>.*?pruned", text)  # step 10 pruned (top-2 kept), journal only


def test_cli_report(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    out = tmp_path / "r.html"
    proc = subprocess.run([sys.executable, "-m", "bestckpt", "report", str(run), "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and proc.stdout.strip() == str(out)
    proc = subprocess.run([sys.executable, "-m", "bestckpt", "report", str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "does not exist" in proc.stderr


# ------------------------------------------------------------------------------- headless Chromium

def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


_PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).length;
  var svgs = document.querySelectorAll('svg').length;
  var p = document.createElement('pre'); p.id = 'probe';
  p.textContent = 'PROBE images=' + imgs.length + ' broken=' + broken + ' svgs=' + svgs +
                  ' circles=' + document.querySelectorAll('svg circle').length;
  document.body.appendChild(p);
});
</script>"""


def _run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (apt-get install -y chromium; "
                                                   ".ci/run installs it): report rendering not checked")
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    from PIL import Image

    binary = _chromium()
    assert binary is not None
    run = make_run(tmp_path)
    report = write_report(run)
    # 1. the page itself loads with no console errors (the report has no script of its own)
    proc = _run_chromium(binary, tmp_path / "p1", "--enable-logging=stderr", "--v=0",
                         "--virtual-time-budget=5000", "--dump-dom", report.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Best-checkpoint report" in proc.stdout and "<svg" in proc.stdout
    console = [ln for ln in proc.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln
               or "Failed to load resource" in ln or "ERR_" in ln and "net::" in ln]
    assert not console, "\n".join(console)
    # 2. in a copy with a probe script: every image decoded, every plot present
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    proc = _run_chromium(binary, tmp_path / "p2", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    m = re.search(r"PROBE images=(\d+) broken=(\d+) svgs=(\d+) circles=(\d+)", proc.stdout)
    assert m, proc.stdout[-1000:] + proc.stderr[-2000:]
    images, broken, svgs, circles = map(int, m.groups())
    assert images == 6 * 5 + 12 and broken == 0
    assert svgs == 7 and circles >= 6 * 5
    # 3. a screenshot is not blank: the page draws something
    shot = tmp_path / "shot.png"
    proc = _run_chromium(binary, tmp_path / "p3", f"--screenshot={shot}", "--window-size=1200,1600",
                         "--virtual-time-budget=5000", report.as_uri())
    assert shot.is_file(), proc.stderr[-2000:]
    with Image.open(shot) as im:
        colours = im.convert("RGB").resize((120, 160)).getcolors(maxcolors=100_000)
    assert colours is not None and len(colours) > 20
