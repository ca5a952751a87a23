"""`bestckpt status` and `bestckpt prune` through `python -m bestckpt` on a real directory."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bestckpt.tracking.tracker import BestCheckpointTracker


def in_process(*args: str) -> int:
    """The same subcommands without a new interpreter (cheap checks): our parsers only."""
    import argparse

    from bestckpt.cli import prune, status

    parser = argparse.ArgumentParser(prog="bestckpt")
    sub = parser.add_subparsers(dest="command", required=True)
    status.add_parser(sub)
    prune.add_parser(sub)
    ns = parser.parse_args(list(args))
    return ns.func(ns)


def cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="200", PYTHONIOENCODING="utf-8")
    return subprocess.run([sys.executable, "-m", "bestckpt", *args], capture_output=True, text=True, env=env,
                          timeout=120)


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    tracker = BestCheckpointTracker(tmp_path, save_top_k=3, keep_every_n_steps=None)
    for step, score in [(100, 0.4), (200, 0.9), (300, 0.6), (400, 0.5), (500, 0.7)]:
        (tmp_path / f"{step:07d}.pt").write_bytes(b"x")
        tracker.update_checkpoint(step, step // 100, None, {"composite_score": score, "clip_score": 0.3})
    (tmp_path / "0000600.pt").write_bytes(b"x")
    tracker.checkpoint_saved(600, None, epoch=6, evaluate=True)
    return tmp_path


def test_status_table_and_json(run_dir: Path):
    before = sorted(os.listdir(run_dir))
    table = cli("status", str(run_dir))
    assert table.returncode == 0, table.stderr
    out = table.stdout
    assert "composite_score" in out and "★" in out and "0.90" in out and "pending evaluation" in out
    assert "best: 0000200.pt" in out and "best.pt -> 0000200.pt" in out
    assert "0.40" not in out  # pruned history hidden without --all

    js = cli("status", str(run_dir), "--json")
    assert js.returncode == 0, js.stderr
    data = json.loads(js.stdout)
    assert data["summary"]["best_step"] == 200 and data["best_link"] == "0000200.pt"
    rows = {r["step"]: r for r in data["records"]}
    assert rows[200]["best"] and rows[200]["fate"] == "keep" and "best" in rows[200]["reasons"]
    assert rows[100]["fate"] == "pruned" and rows[600]["status"] == "pending"
    assert sorted(os.listdir(run_dir)) == before  # status is read-only


def test_prune_dry_run_then_apply(run_dir: Path):
    dry = cli("prune", str(run_dir), "--dry-run", "--save-top-k", "1")
    assert dry.returncode == 0, dry.stderr
    lines = {line.split()[1]: line for line in dry.stdout.splitlines() if line.startswith(("KEEP", "DELETE"))}
    assert lines["0000200.pt"].startswith("KEEP") and "best" in lines["0000200.pt"]
    assert lines["0000500.pt"].startswith("DELETE") and "outside the top-k" in lines["0000500.pt"]
    assert lines["0000600.pt"].startswith("KEEP") and "pending evaluation" in lines["0000600.pt"]
    assert "would delete" in dry.stdout
    assert (run_dir / "0000500.pt").exists()  # dry run deleted nothing

    refused = cli("prune", str(run_dir), "--save-top-k", "1")  # changes the run's stored top-3: on purpose only
    assert refused.returncode == 2 and "--reconfigure" in refused.stderr
    assert (run_dir / "0000500.pt").exists()
    applied = cli("prune", str(run_dir), "--save-top-k", "1", "--reconfigure", "--yes")
    assert applied.returncode == 0, applied.stderr
    assert sorted(n for n in os.listdir(run_dir) if n[:7].isdigit()) == ["0000200.pt", "0000600.pt"]
    assert os.readlink(run_dir / "best.pt") == "0000200.pt"


def test_status_all_and_bad_input_messages(tmp_path: Path, run_dir: Path, capsys):
    assert in_process("status", str(run_dir), "--all") == 0
    assert "0.40" in capsys.readouterr().out  # pruned history shown with --all
    assert in_process("status", str(tmp_path / "nope")) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert in_process("prune", str(run_dir), "--keep-latest", "0") == 2
    assert "keep_latest must be an int >= 1" in capsys.readouterr().err
    assert in_process("prune", str(run_dir), "--dry-run", "--metric-name", "fid") == 2
    assert "re-ranking by 'fid' is impossible" in capsys.readouterr().err
    assert (run_dir / "0000500.pt").exists()


def test_status_and_results_show_stored_intervals(run_dir: Path):
    """A record scored with intervals (info["intervals"], as evaluations store them) next to older ones without."""
    tracker = BestCheckpointTracker(run_dir, save_top_k=3, keep_every_n_steps=None)
    (run_dir / "0000700.pt").write_bytes(b"x")
    tracker.update_checkpoint(700, 7, None, {"composite_score": 0.95, "clip_score": 0.31},
                              info={"intervals": {"composite_score": [0.93, 0.97], "clip_score": [0.3, 0.32]}})
    table = cli("status", str(run_dir))
    assert table.returncode == 0, table.stderr
    assert "0.95 [0.93, 0.97]" in table.stdout, table.stdout
    data = json.loads(cli("status", str(run_dir), "--json").stdout)
    rows = {r["step"]: r for r in data["records"]}
    assert rows[700]["interval"] == [0.93, 0.97] and rows[200]["interval"] is None  # older record: none, no error
    results = json.loads((run_dir / "best_checkpoint_results.json").read_text(encoding="utf-8"))
    best = results["best_checkpoints"][0]
    assert best["step"] == 700 and best["info"]["intervals"]["composite_score"] == [0.93, 0.97]


def test_status_prints_error_texts_and_paths_as_data(tmp_path: Path, capsys, monkeypatch):
    """An error text with rich markup characters (gloo's say ``[/opt/...]``) and a folder name in brackets are
    printed as they are, not parsed as markup (which raised ``MarkupError``)."""
    folder = tmp_path / "runs [exp-1]"
    folder.mkdir()
    tracker = BestCheckpointTracker(folder, save_top_k=1)
    (folder / "0000100.pt").write_bytes(b"x")
    tracker.checkpoint_saved(100, None, evaluate=True)
    error = "RuntimeError: [/opt/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:29500"
    tracker.record_failure(100, error)
    monkeypatch.setenv("COLUMNS", "400")  # one line per row: the cell is not folded
    assert in_process("status", str(folder)) == 0
    out = capsys.readouterr().out
    assert f"error: {error}" in out and "runs [exp-1] — tracking" in out


def test_demo_outputs_table_prints_bracketed_paths(tmp_path: Path):
    """The demo's outputs table prints a run folder named like ``runs [exp-1]`` as it is (paths are not markup)."""
    from rich.console import Console

    from bestckpt.cli.demo import _outputs_table
    from bestckpt.demo.train import TrainResult

    run_dir = tmp_path / "runs [exp-1]"
    (run_dir / "checkpoints").mkdir(parents=True)
    result = TrainResult(run_dir, run_dir / "checkpoints", 0, 10, 1.0, [], {}, run_dir / "report [v2].html")
    console = Console(width=400, record=True)
    console.print(_outputs_table(result))
    text = console.export_text()
    assert f"{run_dir / 'evaluation_samples'}" in text and "report [v2].html" in text
