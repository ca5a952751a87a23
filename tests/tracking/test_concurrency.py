"""Several processes sharing one checkpoint directory through the file lock: no lost record.

Processes coordinate through events and queues (never sleeps or deadlines); every wait is bounded
(300 s) only to turn a hang into a failure."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path

from bestckpt.tracking.tracker import BestCheckpointTracker

N_PER_WRITER = 30
BOUND = 300  # seconds: fails the test only if something never happens


def score_of(step: int) -> float:
    return ((step * 7919) % 101) / 100.0


def _writer(ckdir: str, parity: int, start, errors) -> None:
    try:
        tracker = BestCheckpointTracker(ckdir, save_top_k=3, keep_every_n_steps=None)
        assert start.wait(BOUND)
        for i in range(N_PER_WRITER):
            step = 2 * i + parity + 1
            path = Path(ckdir) / f"{step:07d}.pt"
            path.write_bytes(b"%d" % step)
            tracker.checkpoint_saved(step, path)
            tracker.update_checkpoint(step, 0, path, {"composite_score": score_of(step)})
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        errors.put(f"writer {parity}: {exc!r}")


def test_two_writers_lose_no_record(tmp_path: Path):
    ctx = mp.get_context("fork")
    start, errors = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), p, start, errors)) for p in (0, 1)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(BOUND)
    assert errors.empty(), errors.get()
    assert all(p.exitcode == 0 for p in procs)
    state = json.loads((tmp_path / "best_checkpoints.json").read_text())
    steps = sorted(r["step"] for r in state["checkpoints"])
    assert steps == list(range(1, 2 * N_PER_WRITER + 1))  # every record from both processes
    assert all(r["status"] == "evaluated" and r["metrics"]["composite_score"] == score_of(r["step"])
               for r in state["checkpoints"])
    tracker = BestCheckpointTracker(tmp_path, save_top_k=3, keep_every_n_steps=None)
    top = sorted(steps, key=lambda s: (-score_of(s), s))[:3]
    assert tracker.best.step == top[0] and os.readlink(tmp_path / "best.pt") == f"{top[0]:07d}.pt"
    on_disk = {int(n[:7]) for n in os.listdir(tmp_path) if n[:7].isdigit()}
    # the resume point is the most recently saved checkpoint (save order, not the highest step)
    newest = max(state["checkpoints"], key=lambda r: (r["seq"], r["step"]))["step"]
    assert newest in {2 * N_PER_WRITER - 1, 2 * N_PER_WRITER}  # one writer's last save
    assert set(top) <= on_disk and newest in on_disk
    assert on_disk <= set(top) | {2 * N_PER_WRITER - 1, 2 * N_PER_WRITER}  # at most the other's last


def _trainer(ckdir: str, n: int, saved) -> None:
    tracker = BestCheckpointTracker(ckdir, save_top_k=2, keep_every_n_steps=None)
    for step in range(1, n + 1):
        path = Path(ckdir) / f"{step:07d}.pt"
        path.write_bytes(b"%d" % step)
        tracker.checkpoint_saved(step, path, evaluate=True)  # protected until the evaluator scores it
        saved.put(step)  # tells the evaluator there is something new to score


def _evaluator(ckdir: str, n: int, saved, errors) -> None:
    try:
        tracker = BestCheckpointTracker(ckdir, save_top_k=2, keep_every_n_steps=None)
        done: set[int] = set()
        while len(done) < n:
            saved.get(timeout=BOUND)  # the trainer registered one more checkpoint
            for step in tracker.pending_steps():
                path = Path(ckdir) / f"{step:07d}.pt"
                assert os.path.lexists(path), f"pending checkpoint {path} was deleted before its evaluation"
                tracker.update_checkpoint(step, 0, path, {"composite_score": score_of(step)})
                done.add(step)
    except BaseException as exc:  # noqa: BLE001
        errors.put(repr(exc))


def test_trainer_and_separate_evaluator_share_a_directory(tmp_path: Path):
    n = 25
    BestCheckpointTracker(tmp_path, save_top_k=2, keep_every_n_steps=None)
    ctx = mp.get_context("fork")
    errors, saved = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=_trainer, args=(str(tmp_path), n, saved)),
             ctx.Process(target=_evaluator, args=(str(tmp_path), n, saved, errors))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(BOUND)
    assert errors.empty(), errors.get()
    assert all(p.exitcode == 0 for p in procs)
    tracker = BestCheckpointTracker(tmp_path, save_top_k=2, keep_every_n_steps=None)
    assert tracker.pending_steps() == []
    assert sorted(r.step for r in tracker.records if r.status == "evaluated") == list(range(1, n + 1))
    top = sorted(range(1, n + 1), key=lambda s: (-score_of(s), s))[:2]
    on_disk = {int(x[:7]) for x in os.listdir(tmp_path) if x[:7].isdigit()}
    assert on_disk == set(top) | {n}


def test_threads_sharing_one_tracker_object(tmp_path: Path):
    """A background runner thread and the training thread may share one tracker object."""
    import threading

    tracker = BestCheckpointTracker(tmp_path, save_top_k=2, keep_every_n_steps=None)
    errors: list[BaseException] = []

    def work(parity: int) -> None:
        try:
            for i in range(15):
                step = 2 * i + parity + 1
                path = tmp_path / f"{step:07d}.pt"
                path.write_bytes(b"x")
                tracker.checkpoint_saved(step, path)
                tracker.update_checkpoint(step, 0, path, {"composite_score": score_of(step)})
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(p,)) for p in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(BOUND)
    assert not errors, errors
    assert sorted(r.step for r in tracker.records) == list(range(1, 31))
    assert tracker.best.step == min(range(1, 31), key=lambda s: (-score_of(s), s))
