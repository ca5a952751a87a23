"""Sidecar: a trainer process writes checkpoints while `python -m bestckpt watch` scores them.

Every scheduled checkpoint is scored exactly once, pruning never removes a pending one, and the
sidecar SIGKILLed mid-evaluation and restarted loses no evaluation and records none twice. The tests
wait for events (a line the trainer prints, a message the sampler sends, the tracker's records),
never for durations: the sampler is held at a gate while the test acts on the process using it.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from pipeline_kit import TESTS_DIR, make_protocol, save_checkpoint
from waiting import Beacon, Gate, LineWaiter, wait_for_state

from bestckpt.tracking.tracker import BestCheckpointTracker

N_CHECKPOINTS = 12
HELD = "0000400.pt"  # the first watcher is killed while sampling this scheduled checkpoint


def _env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]),
                OMP_NUM_THREADS="1", COLUMNS="400", PYTHONWARNINGS="ignore", **extra)


def _watch(ckpt_dir: Path, protocol: Path, log: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "bestckpt", "watch", str(ckpt_dir), "--protocol", str(protocol),
           "--sampler", "pipeline_kit:make_sampler", "--scorer", "pipeline_kit:make_kit_scorer",
           "--poll", "0.2", "--batch-size", "4", "--samples-dir", str(ckpt_dir.parent / "evaluation_samples"), *extra]
    return subprocess.Popen(cmd, env=env or _env(), stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _statuses(ckpt_dir: Path) -> dict[int, str]:
    return {r.step: r.status for r in BestCheckpointTracker(ckpt_dir, is_writer=False).records}


def _stop(*procs: subprocess.Popen | None) -> None:
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sidecar_scores_each_once_and_survives_sigkill(tmp_path: Path) -> None:
    protocol = make_protocol(tmp_path)
    protocol_file = protocol.to_file(tmp_path / "protocol.json")
    ckpt_dir = tmp_path / "run" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    scheduled = [i * 100 for i in range(1, N_CHECKPOINTS + 1) if i % 2 == 0]
    beacon, gate = Beacon(tmp_path / "sampling"), Gate(tmp_path / "gate")
    log_a, log_b = tmp_path / "watch_a.log", tmp_path / "watch_b.log"
    trainer = first = second = None
    try:
        trainer = subprocess.Popen([sys.executable, str(TESTS_DIR / "sidecar_trainer.py"), str(ckpt_dir),
                                    str(N_CHECKPOINTS), "0.5"], env=_env(), stdout=subprocess.PIPE, text=True)
        trainer_out = LineWaiter(trainer.stdout, tmp_path / "trainer.log")
        trainer_out.wait_for("saved 100")  # the trainer's tracker made the directory its own
        first = _watch(ckpt_dir, protocol_file, log_a, env=_env(PIPELINE_KIT_BEACON=str(beacon.path),
                                                                PIPELINE_KIT_GATE=str(gate.path), PIPELINE_KIT_HOLD=HELD))
        while not beacon.wait_line().endswith(f" {HELD}"):  # each line: one sampler call starting
            pass
        first.send_signal(signal.SIGKILL)  # in the middle of evaluating step 400
        first.wait(300)
        second = _watch(ckpt_dir, protocol_file, log_b)
        assert trainer.wait(300) == 0, trainer_out.text_tail()
        wait_for_state(lambda: _statuses(ckpt_dir), lambda st: all(st.get(s) == "evaluated" for s in scheduled),
                       what="every scheduled checkpoint evaluated")
        second.send_signal(signal.SIGTERM)  # it is inside its watch loop (it evaluated step 400)
        assert second.wait(300) == 0, log_b.read_text()[-3000:]
    finally:
        gate.open()
        _stop(trainer, first, second)
        beacon.close()

    text_a, text_b = log_a.read_text(), log_b.read_text()
    recorded = Counter(int(m) for m in re.findall(r"\[Step (\d+)\] evaluated in", text_a + text_b))
    assert recorded == Counter(scheduled), (recorded, text_a[-2000:], text_b[-2000:])  # each exactly once
    started_a = [int(m) for m in re.findall(r"\[Step (\d+)\] Evaluating model performance", text_a)]
    killed_step = started_a[-1]
    assert killed_step == 400, started_a
    assert killed_step not in [int(m) for m in re.findall(r"\[Step (\d+)\] evaluated in", text_a)]
    assert f"[Step {killed_step}] evaluated in" in text_b  # the interrupted one was redone after restart
    unscheduled = set(range(100, N_CHECKPOINTS * 100 + 1, 100)) - set(scheduled)
    assert not unscheduled & set(int(m) for m in re.findall(r"\[Step (\d+)\] Evaluating", text_a + text_b))

    tracker = BestCheckpointTracker(ckpt_dir, is_writer=False)
    recs = {r.step: r for r in tracker.records}
    for step in scheduled:
        assert recs[step].status == "evaluated", (step, recs[step])
        assert recs[step].protocol_hash == protocol.hash
    assert tracker.pending_steps() == []
    assert not (tmp_path / "run" / "violations.txt").exists()
    on_disk = sorted(p.name for p in ckpt_dir.glob("0*.pt"))
    assert len(on_disk) < N_CHECKPOINTS  # pruning did happen while the sidecar worked
    best = tracker.best
    assert best is not None and (ckpt_dir / "best.pt").resolve() == (ckpt_dir / best.path).resolve()
    assert json.loads((ckpt_dir / "best_checkpoint_results.json").read_text())


def test_watch_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """SIGTERM while a checkpoint is being scored: that one is finished and recorded, then the watcher exits 0."""
    protocol_file = make_protocol(tmp_path).to_file(tmp_path / "protocol.json")
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    BestCheckpointTracker(ckpt_dir).checkpoint_saved(100, save_checkpoint(ckpt_dir / "0000100.pt", 100))
    beacon, gate = Beacon(tmp_path / "sampling"), Gate(tmp_path / "gate")
    log = tmp_path / "watch.log"
    proc = _watch(ckpt_dir, protocol_file, log,
                  env=_env(PIPELINE_KIT_BEACON=str(beacon.path), PIPELINE_KIT_GATE=str(gate.path)))
    try:
        assert beacon.wait_line().endswith(" 0000100.pt")  # inside its watch loop, scoring step 100
        proc.send_signal(signal.SIGTERM)
        gate.open()
        assert proc.wait(300) == 0, log.read_text()[-2000:]
    finally:
        gate.open()
        _stop(proc)
        beacon.close()
    assert "stopping after the current checkpoint" in log.read_text()
    assert _statuses(ckpt_dir) == {100: "evaluated"}


def test_cli_evaluate_offline_reranking(tmp_path: Path) -> None:
    from bestckpt.cli import main

    protocol = make_protocol(tmp_path)
    protocol_file = protocol.to_file(tmp_path / "protocol.json")
    ckpt_dir = tmp_path / "run" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    for step in (100, 200, 300):
        save_checkpoint(ckpt_dir / f"{step:07d}.pt", step)
    args = ["evaluate", str(ckpt_dir), "--protocol", str(protocol_file), "--sampler", "pipeline_kit:make_sampler",
            "--scorer", "pipeline_kit:make_kit_scorer", "--save-top-k", "3"]
    assert main(args + ["--steps", "100", "200"]) == 0
    tracker = BestCheckpointTracker(ckpt_dir, is_writer=False)
    statuses = {r.step: r.status for r in tracker.records}
    assert statuses[100] == statuses[200] == "evaluated" and statuses.get(300) != "evaluated"
    first = {r.step: r.time for r in tracker.records}
    assert main(args) == 0  # only 300 is new; 100 and 200 are already scored under this protocol
    recs = {r.step: r for r in tracker.records}
    assert recs[300].status == "evaluated" and recs[100].time == first[100]
    assert (tmp_path / "run" / "evaluation_samples" / "0000300" / "eval_generated_000.jpg").is_file()
    assert json.loads((ckpt_dir / "best_checkpoint_results.json").read_text())
    assert main(args + ["--steps", "999"]) == 2  # a step that does not exist: clear error
    assert main(["evaluate", str(ckpt_dir), "--protocol", str(protocol_file), "--sampler", "nope"]) == 2
