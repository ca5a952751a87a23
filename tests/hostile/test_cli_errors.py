"""Hostile inputs, class "the command line" (issue 9, R9; prune's reconfiguration is R3).

Every ordinary failure of ``python -m bestckpt ...`` is exit code 2 with one line on stderr,
``bestckpt: error: <the problem and the fix>`` (argparse's usage may precede it), and never a
traceback; Ctrl-C is exit 130. ``prune`` options that change an existing run's ranking, top-k or pins
need ``--reconfigure``, print what would be deleted, and delete only with ``--yes``.
Each test runs the real command in a subprocess under a timeout and checks that nothing needed is
deleted and nothing outside the checkpoint directory changes.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bestckpt.tracking.tracker import BestCheckpointTracker

ERROR_LINE = re.compile(r"^bestckpt( [a-z]+)?: error: ")
KEPT = {"0000100.pt", "0000200.pt", "0000300.pt", "0000500.pt"}


def bestckpt(*args: str, env: dict[str, str] | None = None, prefix: tuple[str, ...] = (),
             code: str | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, COLUMNS="200", PYTHONIOENCODING="utf-8", **(env or {}))
    cmd = [*prefix, sys.executable, *(["-c", code] if code else ["-m", "bestckpt"]), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=120)


def assert_one_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2, no traceback, exactly one ``bestckpt: error:`` line holding every needle; returns it."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if ERROR_LINE.match(line)]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def on_disk(directory: Path) -> set[str]:
    return {n for n in os.listdir(directory) if n[:1].isdigit()}


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in files + dirs:
            st = os.lstat(Path(dirpath) / name)
            out[str(Path(dirpath) / name)] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture()
def run(tmp_path: Path) -> Path:
    """A trainer's directory: top-3, step 100 pinned, 400 pruned, best 300 (composite_score), latest 500."""
    (tmp_path / "neighbour.txt").write_text("not ours")
    d = tmp_path / "ckpt"
    t = BestCheckpointTracker(d, save_top_k=3, pinned_steps=[100], keep_every_n_steps=None)
    for step, score in [(100, 0.1), (200, 0.5), (300, 0.9), (400, 0.3), (500, 0.7)]:
        (d / f"{step:07d}.pt").write_bytes(b"w")
        t.update_checkpoint(step, 1, None, {"composite_score": score})
    assert on_disk(d) == KEPT
    return d


def edit_state(d: Path, **changes) -> None:
    path = d / "best_checkpoints.json"
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if key == "tracker_config":
            data[key].update(value)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


def test_state_of_a_newer_schema(run: Path):
    edit_state(run, schema="bestckpt.state/2")
    before = snapshot(run.parent)
    for args in (("status", str(run)), ("status", "--json", str(run)), ("prune", str(run)),
                 ("prune", "--dry-run", str(run))):
        assert_one_error(bestckpt(*args), "bestckpt.state/2", "upgrade bestckpt")
    assert snapshot(run.parent) == before


def test_stored_config_with_an_invalid_value(run: Path):
    edit_state(run, save_top_k=0, tracker_config={"save_top_k": 0})
    for args in (("status", str(run)), ("prune", str(run))):
        assert_one_error(bestckpt(*args), "save_top_k", "got 0", "best_checkpoints.json", "--reconfigure")
    assert on_disk(run) == KEPT
    fixed = bestckpt("prune", str(run), "--reconfigure", "--save-top-k", "3", "--yes")
    assert fixed.returncode == 0, fixed.stderr
    assert on_disk(run) == KEPT and bestckpt("status", str(run)).returncode == 0


def test_read_only_directory(run: Path):
    if os.geteuid() == 0:  # root ignores permissions: drop the capabilities that let it
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot make a directory read-only")
        prefix: tuple[str, ...] = ("setpriv", "--bounding-set=-dac_override,-dac_read_search")
    else:
        prefix = ()
    os.unlink(run / "best_checkpoints.json.lock")  # a directory never written by a tracker yet
    before = snapshot(run.parent)
    os.chmod(run, 0o555)
    try:
        assert_one_error(bestckpt("prune", str(run), prefix=prefix), str(run), "permissions")
        shown = bestckpt("status", str(run), prefix=prefix)  # reading needs no write access
        assert shown.returncode == 0 and "0000300.pt" in shown.stdout, shown.stderr
    finally:
        os.chmod(run, 0o755)
    assert snapshot(run.parent) == before


def test_regular_file_where_best_pt_should_be(run: Path):
    os.unlink(run / "best.pt")
    (run / "best.pt").write_bytes(b"the user's own file")
    line = assert_one_error(bestckpt("prune", str(run)), "best.pt", "not a symlink", "Move it away")
    assert str(run) in line
    assert (run / "best.pt").read_bytes() == b"the user's own file" and on_disk(run) == KEPT


def test_lock_file_is_a_symlink(tmp_path: Path, run: Path):
    precious = tmp_path / "precious.txt"
    precious.write_text("outside the checkpoint directory")
    lock = run / "best_checkpoints.json.lock"
    os.unlink(lock)
    os.symlink(precious, lock)
    before = snapshot(tmp_path)
    for args in (("prune", str(run)), ("prune", str(run), "--save-top-k", "3")):
        assert_one_error(bestckpt(*args), "best_checkpoints.json.lock", "symlink", "remove")
    assert precious.read_text() == "outside the checkpoint directory"
    assert snapshot(tmp_path) == before and on_disk(run) == KEPT


def test_nonexistent_directory(tmp_path: Path):
    missing = str(tmp_path / "no-such-run")
    for args in (("status", missing), ("prune", missing), ("prune", "--dry-run", missing),
                 ("evaluate", missing, "--protocol", "p.json", "--sampler", "m:f"),
                 ("watch", missing, "--protocol", "p.json", "--sampler", "m:f", "--once"), ("report", missing)):
        assert_one_error(bestckpt(*args), missing)
    assert os.listdir(tmp_path) == []  # nothing created


def test_bad_option_values(run: Path):
    before = snapshot(run.parent)
    cases = [
        (("prune", str(run), "--keep-latest", "0"), ("keep_latest", "got 0")),
        (("prune", str(run), "--min-improvement", "nan"), ("min_improvement", "nan")),
        (("prune", str(run), "--pin", "-3"), ("pinned_steps", "-3")),
        (("prune", str(run), "--save-top-k", "abc"), ("--save-top-k", "abc")),
        (("--log-level", "LOUD", "status", str(run)), ("--log-level", "LOUD", "DEBUG")),
        (("prune", str(run), "--metric-name", ""), ("metric_name",)),
    ]
    for args, needles in cases:
        assert_one_error(bestckpt(*args), *needles)
    assert snapshot(run.parent) == before


@pytest.fixture()
def no_metrics_extra(tmp_path: Path) -> dict[str, str]:
    """PYTHONPATH with a ``torch`` package first that fails to import, as when the extra is missing."""
    stub = tmp_path / "stubs" / "torch"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    return {"PYTHONPATH": os.pathsep.join([str(stub.parent), os.environ.get("PYTHONPATH", "")])}


def test_evaluate_without_the_metrics_extra(run: Path, no_metrics_extra: dict[str, str]):
    proc = bestckpt("evaluate", str(run), "--protocol", "p.json", "--sampler", "m:f", env=no_metrics_extra)
    assert_one_error(proc, "pip install 'bestckpt[metrics]'", "evaluate")
    assert on_disk(run) == KEPT
    assert bestckpt("status", str(run), env=no_metrics_extra).returncode == 0  # the tracker needs no torch


def test_watch_without_the_metrics_extra(run: Path, no_metrics_extra: dict[str, str]):
    before = snapshot(run.parent)
    proc = bestckpt("watch", str(run), "--protocol", "p.json", "--sampler", "m:f", "--once", env=no_metrics_extra)
    assert_one_error(proc, "pip install 'bestckpt[metrics]'", "watch")
    assert snapshot(run.parent) == before


def test_evaluate_with_a_setting_that_contradicts_the_run(run: Path):
    before = snapshot(run.parent)
    proc = bestckpt("evaluate", str(run), "--protocol", "p.json", "--sampler", "m:f", "--save-top-k", "1")
    assert_one_error(proc, "save_top_k", "3", "1", "--reconfigure")
    assert snapshot(run.parent) == before


def test_prune_direction_flip_without_yes_prints_the_plan_and_deletes_nothing(run: Path):
    before = snapshot(run.parent)
    for extra in ((), ("--yes",)):  # --yes alone does not reconfigure
        proc = bestckpt("prune", str(run), "--lower-is-better", *extra)
        assert_one_error(proc, "higher_is_better", "True", "False", "--reconfigure")
        assert re.search(r"^DELETE\s+0000300\.pt", proc.stdout, re.M), proc.stdout  # the current best
    assert snapshot(run.parent) == before


def test_prune_reconfigure_without_yes_prints_the_plan_and_deletes_nothing(run: Path):
    before = snapshot(run.parent)
    proc = bestckpt("prune", str(run), "--reconfigure", "--lower-is-better")
    assert_one_error(proc, "--yes", "1 checkpoint")
    assert re.search(r"^DELETE\s+0000300\.pt", proc.stdout, re.M) and re.search(r"^KEEP\s+0000100\.pt", proc.stdout, re.M)
    assert snapshot(run.parent) == before


def test_prune_reconfigure_with_yes_flips_and_deletes_what_it_printed(run: Path):
    proc = bestckpt("prune", str(run), "--reconfigure", "--lower-is-better", "--yes")
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^deleted\s+0000300\.pt", proc.stdout, re.M), proc.stdout
    assert on_disk(run) == {"0000100.pt", "0000200.pt", "0000500.pt"}
    assert os.readlink(run / "best.pt") == "0000100.pt"
    cfg = json.loads((run / "best_checkpoints.json").read_text())["tracker_config"]
    assert cfg["higher_is_better"] is False and cfg["pinned_steps"] == [100] and cfg["save_top_k"] == 3


def test_prune_that_drops_a_pin_or_cuts_top_k_needs_reconfigure(run: Path):
    before = snapshot(run.parent)
    assert_one_error(bestckpt("prune", str(run), "--pin", "200"), "pinned_steps", "[100]", "[200]", "--reconfigure")
    assert_one_error(bestckpt("prune", str(run), "--save-top-k", "1"), "save_top_k", "3", "1", "--reconfigure")
    assert snapshot(run.parent) == before
    same = bestckpt("prune", str(run), "--save-top-k", "3", "--pin", "100")  # the stored values: no change
    assert same.returncode == 0, same.stderr
    assert on_disk(run) == KEPT


def test_prune_dry_run_previews_a_flip_and_writes_nothing(run: Path):
    before = snapshot(run.parent)
    proc = bestckpt("prune", str(run), "--dry-run", "--lower-is-better")
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^DELETE\s+0000300\.pt", proc.stdout, re.M) and "--reconfigure" in proc.stdout
    assert snapshot(run.parent) == before


def test_ctrl_c_exits_130_without_a_traceback(run: Path):
    code = (
        "import sys\n"
        "import bestckpt.cli.status as status\n"
        "def interrupted(*a, **k):\n"
        "    raise KeyboardInterrupt\n"
        "status.collect = interrupted\n"
        "from bestckpt.cli import main\n"
        "sys.exit(main(['status', sys.argv[1]]))\n"
    )
    proc = bestckpt(str(run), code=code)
    assert proc.returncode == 130 and "Traceback" not in proc.stderr, proc.stderr
    assert on_disk(run) == KEPT


def test_os_error_at_the_top_is_one_line(tmp_path: Path, run: Path):
    (tmp_path / "file.txt").write_text("a file, not a directory")
    before = snapshot(tmp_path)
    proc = bestckpt("report", str(tmp_path), "--checkpoint-dir", str(run), "-o", str(tmp_path / "file.txt" / "r.html"))
    assert_one_error(proc, "file.txt")
    assert snapshot(tmp_path) == before
