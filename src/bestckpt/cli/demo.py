"""`bestckpt demo`: train a tiny text-to-image DiT on CPU and watch best-checkpoint tracking work.

What `make demo` runs. Trains ``bestckpt.demo.train`` with a progress bar (loss, current best),
evaluates every 2nd checkpoint in a background process with the built-in demo evaluators, prints
the guide's log lines and summary, then a table of the evaluated checkpoints and where every
output is. Re-running with the same ``--run-dir`` resumes from the newest checkpoint.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, cast

__all__ = ["add_parser", "run"]

_COLUMNS = (("clip_score", "CLIP"), ("lpips", "LPIPS"), ("inception_score", "IS"), ("fid", "FID"),
            ("kid", "KID"), ("composite_score", "composite"))


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from bestckpt.demo.recipe import (
        add_arguments,  # torch-free: building the CLI stays fast
    )

    p = subparsers.add_parser(
        "demo", help="train a tiny text-to-image DiT on CPU with best-checkpoint tracking (about 5 minutes on 2 cores)",
        description="Train a tiny text-to-image DiT on synthetic captioned shapes (CPU, offline), evaluate "
                    "checkpoints in the background with the built-in demo evaluators, keep the best ones and "
                    "write a report. Re-run with the same --run-dir to resume.",
    )
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.4f}" if abs(v) < 100 else f"{v:.1f}"


class _RichObserver:
    """Draws the progress bar; `current best` comes from the tracker's state on disk."""

    def __init__(self, progress: Any, tracker_dir: Path) -> None:
        self.progress = progress
        self.task = None
        self.tracker_dir = tracker_dir
        self.best = "–"

    def on_start(self, start_step: int, total_steps: int) -> None:
        if start_step > 0:  # resumed: show the best so far until a better one arrives
            from bestckpt.tracking.tracker import BestCheckpointTracker

            best = BestCheckpointTracker.open(self.tracker_dir).best
            if best is not None:
                self.best = f"{_fmt(best.metrics.get('composite_score'))} @ {best.step}"
        self.task = self.progress.add_task("training", total=total_steps, completed=start_step,
                                           loss="–", best=self.best)

    def on_step(self, step: int, loss: float) -> None:
        self.progress.update(self.task, completed=step, loss=f"{loss:.4f}")

    def on_checkpoint(self, step: int, path: Path, evaluate: bool) -> None:
        pass

    def on_evaluated(self, step: int, scores: dict[str, float | None], new_best: bool) -> None:
        if new_best:
            self.best = f"{_fmt(scores.get('composite_score'))} @ {step}"
            self.progress.update(self.task, best=self.best)

    def on_phase(self, text: str) -> None:
        if self.task is not None:
            self.progress.update(self.task, description=text)


def _checkpoints_table(tracker: Any) -> Any:
    """Every evaluated (or failed / still pending) checkpoint with its scores; the best one starred."""
    from rich.table import Table

    best = tracker.best
    table = Table(title="Evaluated checkpoints")
    table.add_column("step", justify="right")
    for _, label in _COLUMNS:
        table.add_column(label, justify="right")
    table.add_column("checkpoint")
    for rec in tracker.records:
        if rec.status not in ("evaluated", "failed", "pending"):
            continue
        mark = " ★" if best is not None and rec.step == best.step else ""
        state = "pruned" if rec.pruned else "kept"
        if rec.status != "evaluated":
            state = f"{rec.status}, {state}"
        table.add_row(f"{rec.step}{mark}", *(_fmt(rec.metrics.get(k)) for k, _ in _COLUMNS), state,
                      style="bold green" if mark else ("dim" if rec.pruned else None))
    return table


def _learned(tracker: Any) -> str | None:
    """The "Learned: CLIP score a (step s) -> b (best, step t); FID ..." line; None before two evaluations."""
    best = tracker.best
    evaluated = [r for r in tracker.records if r.status == "evaluated"]
    if best is None or len(evaluated) < 2:
        return None
    first = evaluated[0]
    lines = []
    for key, label in (("clip_score", "CLIP score"), ("fid", "FID")):
        b, f = best.metrics.get(key), first.metrics.get(key)
        if b is not None and f is not None:
            lines.append(f"{label} {_fmt(f)} (step {first.step}) -> {_fmt(b)} (best, step {best.step})")
    return "Learned: " + "; ".join(lines) if lines else None


def _accuracy_table(accuracy: dict[str, Any] | None) -> Any:
    """What the best checkpoint learned: the fraction of evaluation prompts drawn right, per attribute, by two
    independent readers (``bestckpt.demo.accuracy``); None when there is no best checkpoint."""
    if not accuracy:
        return None
    from rich.table import Table

    from bestckpt.demo.accuracy import ALL
    from bestckpt.demo.data import ATTRIBUTE_NAMES

    table = Table(title=f"What the best checkpoint (step {accuracy.get('step')}) learned: fraction of the "
                        f"{accuracy.get('num_prompts')} held-out prompts drawn right")
    table.add_column("read by")
    for name in (ALL, *ATTRIBUTE_NAMES):
        table.add_column("all five" if name == ALL else name, justify="right")
    for key, label in (("classifier", "demo classifier"), ("nearest_render", "nearest exact render")):
        acc = accuracy.get(key) or {}
        table.add_row(label, *(f"{acc[n]:.2f}" if n in acc else "–" for n in (ALL, *ATTRIBUTE_NAMES)))
    return table


def _outputs_table(result: Any) -> Any:
    """Where every output of the run is."""
    from rich.table import Table
    from rich.text import Text

    ckpt = result.checkpoint_dir
    outputs = Table(title="Outputs", show_header=False)
    outputs.add_column("what")
    outputs.add_column("where", overflow="fold")

    def row(what: str, where: object) -> None:
        outputs.add_row(what, Text(str(where)))  # paths are data, not rich markup (a folder may be "runs [a]")

    best_link = ckpt / "best.pt"
    row("best checkpoint", f"{best_link} -> {best_link.readlink()}" if best_link.is_symlink()
        else best_link if best_link.exists() else "none yet")
    row("tracker state", ckpt / "best_checkpoints.json")
    row("results summary", ckpt / "best_checkpoint_results.json")
    row("evaluation samples", result.run_dir / "evaluation_samples")
    row("TensorBoard logs", f"{result.run_dir / 'tensorboard_logs'}  "
        f"(tensorboard --logdir {result.run_dir / 'tensorboard_logs'})")
    row("evaluation protocol", result.run_dir / "protocol" / "protocol.json")
    row("evaluation worker log", result.run_dir / "logs" / "evaluation_worker.log")
    if result.accuracy is not None:
        row("best checkpoint's attribute accuracy", result.run_dir / "accuracy.json")
    if result.report is not None:
        row("report", result.report)
    return outputs


def _train_with_progress(console: Any, a: argparse.Namespace) -> Any:
    """Run ``train.main`` under a live progress bar (loss, current best); returns its TrainResult."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from bestckpt.demo import train

    progress = Progress(
        TextColumn("[bold blue]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"), TextColumn("best {task.fields[best]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
    )
    observer = _RichObserver(progress, a.run_dir / "checkpoints")
    with progress:
        return train.main(a, cast("train.TrainObserver", observer))  # same hooks; no import of train at CLI build


def run(args: argparse.Namespace) -> int:
    from rich import get_console

    from bestckpt.cli import fail
    from bestckpt.demo.recipe import resolve_defaults
    from bestckpt.sinks.options import sink_spec
    from bestckpt.tracking.tracker import BestCheckpointTracker

    try:
        sink_spec(args)  # a malformed --sink/--sink-option is refused before training starts
    except ValueError as exc:
        return fail(str(exc))
    console = get_console()  # the one the log handler writes to, so log lines print above the live bar
    started = time.time()
    a = resolve_defaults(args)
    console.print(
        "[bold]bestckpt demo[/bold]: a tiny text-to-image DiT learns captioned shapes on CPU.\n"
        "Evaluation uses the [bold]built-in demo evaluators[/bold] (demo-classifier for IS/FID/KID, demo-clip "
        "for CLIP score, demo-lpips for LPIPS), trained on this synthetic data and shipped with the package, "
        "[bold]not the standard backbones[/bold] (Inception / OpenAI CLIP / LPIPS-alex, which need downloaded "
        "weights and mean little on 32x32 shapes). Their numbers are comparable within this demo only.\n"
        f"Run directory: {a.run_dir}  ({a.steps} steps, a checkpoint every {a.ckpt_every}, "
        f"every {_ordinal(a.eval_every_n_checkpoints)} evaluated in the background, "
        f"{'every evaluated one' if a.save_top_k == -1 else f'top-{a.save_top_k}'} kept)"
    )
    result = _train_with_progress(console, a)

    tracker = BestCheckpointTracker.open(result.checkpoint_dir)
    console.print(_checkpoints_table(tracker))
    learned = _learned(tracker)
    if learned:
        console.print(learned)
    accuracy = _accuracy_table(result.accuracy)
    if accuracy is not None:
        console.print(accuracy)
    console.print(_outputs_table(result))
    console.print(f"Done in {time.time() - started:.0f} s (training {result.train_seconds:.0f} s, "
                  f"steps {result.start_step}->{result.final_step}).")
    return 0
