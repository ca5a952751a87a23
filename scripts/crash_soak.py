#!/usr/bin/env python
"""Crash injection for the tracker: SIGKILL a training-like child process at random instants.

The child saves checkpoints (plain files and DeepSpeed-style tag directories, each committed by
a rename, plus DeepSpeed's ``latest`` file), tells the tracker (``checkpoint_saved`` then, for
most, ``update_checkpoint`` with a random score, sometimes NaN, sometimes a late re-score of an
older step). On start it does what an integration does after a crash: registers the checkpoint
DeepSpeed's ``latest`` names if the tracker never heard of it, and redoes pending evaluations. The parent kills it after a random delay and checks, before anything repairs the
directory:

1. ``best_checkpoints.json`` parses as strict JSON with our schema;
2. ``best.pt`` resolves to a present checkpoint that is the best recorded (or, inside the one
   documented window between the state write and the link swap, to the previous best named by
   the state's ``best_link`` marker);
3. the newest recorded checkpoint and every top-k checkpoint exist;
4. no deletion is lost: a checkpoint the state marks pruned is either gone or has a recorded
   deletion intent (entries saved but never recorded because the kill came first are "unknown":
   reported by the tracker, never deleted, and counted separately);

then that a new tracker resumes cleanly (no exception, ``best.pt`` exactly on the best, no
leftover temporaries, no unfinished deletion). Every failed check counts as a violation.

    python scripts/crash_soak.py --kills 1000          # outside CI; prints kills and violations
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

from bestckpt.tracking.journal import read_state
from bestckpt.tracking.tracker import BestCheckpointTracker

SETTINGS = dict(save_top_k=3, keep_latest=2, keep_every_n_steps=200)
TOP_K = SETTINGS["save_top_k"]


def _child(ckdir: Path, seed: int, compact_bytes: int) -> None:
    """The training-like loop that gets killed (runs in a forked process, never returns)."""
    logging.disable(logging.CRITICAL)
    rng = random.Random(seed)
    for name in os.listdir(ckdir):  # our own half-written checkpoints from a previous kill
        if name.startswith(".ckpt-tmp-"):
            full = ckdir / name
            if full.is_dir():
                for inner in os.listdir(full):
                    os.unlink(full / inner)
                os.rmdir(full)
            else:
                os.unlink(full)
    tracker = BestCheckpointTracker(ckdir, **SETTINGS, state_compact_bytes=compact_bytes)
    # What an integration does on resume: the checkpoint DeepSpeed's `latest` names (saved just
    # before the previous process died, maybe before it could tell the tracker) is registered.
    try:
        latest = (ckdir / "latest").read_text().strip()
    except OSError:
        latest = ""
    if latest[:7].isdigit() and (ckdir / latest).exists() and int(latest[:7]) not in {r.step for r in tracker.records}:
        tracker.checkpoint_saved(int(latest[:7]), ckdir / latest, evaluate=True)
    # ... and, like a runner restarting, evaluations that were pending when the process died are redone.
    for pending in tracker.pending_steps():
        rec = {r.step: r for r in tracker.records}[pending]
        tracker.update_checkpoint(pending, rec.epoch, ckdir / rec.path, {"composite_score": round(rng.random(), 3)})
    steps = [int(n[:7]) for n in os.listdir(ckdir) if n.endswith(".pt") and n[:7].isdigit()]
    steps += [r.step for r in tracker.records]
    step = max(steps, default=0)
    while True:
        step += 10
        name = f"{step:07d}.pt"
        tmp = ckdir / f".ckpt-tmp-{name}"
        if rng.random() < 0.5:  # DeepSpeed tag directory
            tmp.mkdir()
            (tmp / "mp_rank_00_model_states.pt").write_bytes(os.urandom(256))
            (tmp / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(os.urandom(256))
        else:
            tmp.write_bytes(os.urandom(512))
        os.rename(tmp, ckdir / name)  # committed
        (ckdir / "latest").write_text(name)  # DeepSpeed writes it plainly (not atomic)
        evaluate = rng.random() < 0.7
        tracker.checkpoint_saved(step, ckdir / name, epoch=step // 100, evaluate=evaluate)
        if evaluate:
            score = math.nan if rng.random() < 0.1 else round(rng.random(), 3)
            tracker.update_checkpoint(step, step // 100, ckdir / name, {"composite_score": score, "fid": rng.random()})
        if rng.random() < 0.2:  # a late evaluation / re-score of an older checkpoint still on disk
            live = [r for r in tracker.records if not r.pruned and r.step != step]
            if live:
                old = rng.choice(live)
                if os.path.lexists(ckdir / old.path):
                    tracker.update_checkpoint(old.step, old.epoch, ckdir / old.path,
                                              {"composite_score": round(rng.random(), 3)})


def _expected_ranking(records: list[dict]) -> list[dict]:
    def score(r):
        v = r.get("metrics", {}).get("composite_score")
        return v if r.get("status") == "evaluated" and isinstance(v, (int, float)) and math.isfinite(v) else None

    live = [r for r in records if not r.get("pruned")]
    ranked = [r for r in live if score(r) is not None]
    ranked.sort(key=lambda r: (-score(r), r["step"]))
    return ranked


def check_after_kill(ckdir: Path) -> list[str]:
    """The invariants that must hold at any instant (no repair has run yet)."""
    problems: list[str] = []
    state_path = ckdir / "best_checkpoints.json"

    def refuse(token):
        raise ValueError(f"bare {token}")

    try:
        json.loads(state_path.read_text(), parse_constant=refuse)  # the snapshot is strict JSON
        state = read_state(ckdir)  # snapshot + journal
        assert state["schema"] == "bestckpt.state/1" and isinstance(state["checkpoints"], list)
    except Exception as exc:  # noqa: BLE001 - any failure to parse is a violation
        return [f"state does not parse: {exc!r}"]
    records = state["checkpoints"]
    ranked = _expected_ranking(records)
    if state.get("best_step") != (ranked[0]["step"] if ranked else None):
        problems.append(f"state best_step {state.get('best_step')} is not the best recorded")
    link = ckdir / "best.pt"
    if ranked:
        best_path = ranked[0]["checkpoint_path"]
        target = os.readlink(link) if link.is_symlink() else None
        marker = state.get("best_link") or {}
        allowed = {best_path} | ({marker.get("from")} if marker.get("to") == best_path else set())
        if target not in allowed:
            problems.append(f"best.pt -> {target}, expected {best_path} (marker {marker})")
        elif target is None:
            pass  # the window of the very first best: no previous best.pt to keep pointing at
        elif not link.exists():
            problems.append(f"best.pt -> {target} does not resolve to a present checkpoint")
    live = [r for r in records if not r.get("pruned")]
    if live:
        newest = max(live, key=lambda r: r["step"])
        if not os.path.lexists(ckdir / newest["checkpoint_path"]):
            problems.append(f"newest recorded checkpoint {newest['checkpoint_path']} is missing")
    for r in ranked[:TOP_K]:
        if not os.path.lexists(ckdir / r["checkpoint_path"]):
            problems.append(f"top-k checkpoint {r['checkpoint_path']} is missing")
    pruned_paths = {r["checkpoint_path"] for r in records if r.get("pruned")}
    intents = {i.get("path") for i in state.get("deleting", [])}
    for name in os.listdir(ckdir):
        if name in pruned_paths and name not in intents:
            problems.append(f"orphaned checkpoint {name}: pruned in the state, on disk, no deletion intent")
    return problems


def check_resume(ckdir: Path, compact_bytes: int = 256 * 1024) -> list[str]:
    """A new tracker resumes cleanly and repairs the one allowed window."""
    problems: list[str] = []
    try:
        tracker = BestCheckpointTracker(ckdir, **SETTINGS, state_compact_bytes=compact_bytes)
        best = tracker.best
    except Exception as exc:  # noqa: BLE001
        return [f"resume raised {exc!r}"]
    link = ckdir / "best.pt"
    if best is not None and (not link.is_symlink() or os.readlink(link) != best.path or not link.exists()):
        problems.append(f"after resume best.pt is not on the best ({best.path})")
    leftovers = [n for n in os.listdir(ckdir) if n.startswith(".bestckpt-")]
    if leftovers:
        problems.append(f"leftover temporaries after resume: {leftovers}")
    for rec in tracker.records:
        if rec.pruned and os.path.lexists(ckdir / rec.path) and rec.step <= max(r.step for r in tracker.records):
            problems.append(f"pruned checkpoint {rec.path} still on disk after resume")
    return problems


def run_soak(ckdir: Path, kills: int, seed: int = 0, max_delay: float = 0.25, compact_bytes: int = 256 * 1024,
             log=lambda msg: None) -> tuple[int, int, list[str]]:
    """Kill ``kills`` children; returns (kills done, violations, violation messages).

    ``compact_bytes=0`` makes every transaction a journal append (the large-state path)."""
    ckdir.mkdir(parents=True, exist_ok=True)
    BestCheckpointTracker(ckdir, **SETTINGS, state_compact_bytes=compact_bytes)
    rng = random.Random(seed)
    violations: list[str] = []
    done = 0
    for i in range(kills):
        pid = os.fork()
        if pid == 0:  # child
            code = 0
            try:
                _child(ckdir, seed * 1_000_003 + i, compact_bytes)
            except BaseException:  # noqa: BLE001 - a crash of the child itself is reported by exit code
                code = 3
            finally:
                os._exit(code)
        time.sleep(rng.uniform(0.0, max_delay))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
            violations.append(f"kill {i}: child ended on its own with status {status} (it raised)")
        done += 1
        found = [f"kill {i}: {p}" for p in check_after_kill(ckdir)]
        found += [f"kill {i} (resume): {p}" for p in check_resume(ckdir, compact_bytes)]
        violations += found
        for p in found:
            log(p)
        if (i + 1) % 100 == 0:
            log(f"{i + 1} kills, {len(violations)} violations")
    return done, len(violations), violations


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-delay", type=float, default=0.25, help="kill within this many seconds of the start")
    parser.add_argument("--compact-bytes", type=int, default=256 * 1024,
                        help="state size above which transactions go to the journal (0: always)")
    parser.add_argument("--dir", type=Path, default=None, help="checkpoint directory (default: a temporary one)")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    ckdir = args.dir or Path(tempfile.mkdtemp(prefix="bestckpt-soak-")) / "checkpoints"
    t0 = time.monotonic()
    kills, n_viol, messages = run_soak(ckdir, args.kills, args.seed, args.max_delay, args.compact_bytes,
                                       log=lambda m: print(m, flush=True))
    state = read_state(ckdir)
    known = {r["checkpoint_path"] for r in state["checkpoints"]}
    unknown = [n for n in os.listdir(ckdir) if n[:7].isdigit() and n not in known]
    print(f"kills: {kills}  violations: {n_viol}  records: {len(state['checkpoints'])}  unrecorded: {len(unknown)}  "
          f"on disk: {sum(1 for n in os.listdir(ckdir) if n[:7].isdigit())}  "
          f"time: {time.monotonic() - t0:.1f} s  dir: {ckdir}")
    return 1 if n_viol else 0


if __name__ == "__main__":
    sys.exit(main())
