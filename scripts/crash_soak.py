#!/usr/bin/env python
"""Crash injection for the tracker: SIGKILL a training-like child process at random instants.

The child saves checkpoints (plain files and DeepSpeed-style tag directories, each committed by
a rename, plus DeepSpeed's ``latest`` file), tells the tracker (``checkpoint_saved`` then, for
most, ``update_checkpoint`` with a random score, sometimes NaN), re-scores older checkpoints (a late
evaluation, or a failing one: ``record_failure`` or a NaN score, as an out-of-memory re-evaluation
gives), and restarts (its steps go back: training from scratch, or resumed from an older kept
checkpoint, re-saving steps the directory already holds). On start it does what an integration does
after a crash: registers the checkpoint DeepSpeed's ``latest`` names if the tracker never heard of
it, and redoes pending evaluations. It reports each completed call on a pipe; the parent kills it a
random delay after a random number of reports (so kills land all along its life, whatever the
machine's load), then checks, before anything repairs the directory:

1. ``best_checkpoints.json`` parses as strict JSON with our schema;
2. ``best.pt`` resolves to a present checkpoint that is the best recorded (or, inside the one
   documented window between the state write and the link swap, to the previous best named by
   the state's ``best_link`` marker);
3. the newest recorded checkpoint (by save order where records carry ``seq``, else by step) and
   every top-k checkpoint exist;
4. no deletion is lost: a checkpoint the state marks pruned is either gone or has a recorded
   deletion intent (entries saved but never recorded because the kill came first are "unknown":
   reported by the tracker, never deleted, and counted separately);
5. the promises (``--promises``): ``resume``: the last checkpoint whose registration the child
   reported is on disk, unless ``keep_latest`` saves may have followed it unreported (the resume
   point is never deleted, restarts included). A save counts from the child's ``writing`` report,
   before its file is written: a kill between the write and the registration leaves a complete
   checkpoint that the next start adopts as the newest save (pending) when its step is above every
   recorded one, a registration the child never reports; ``scores``: no
   checkpoint whose valid score the child reported (and did not save again since) is recorded as
   failed (a failed re-evaluation never costs a valid score);

then that a new tracker resumes cleanly (no exception, ``best.pt`` exactly on the best or absent
when nothing is ranked, no leftover temporaries, no unfinished deletion). Every failed check counts
as a violation.

    python scripts/crash_soak.py --kills 1000                 # outside CI; prints kills and violations
    python scripts/crash_soak.py --kills 300 --mix classic    # the scenarios from before restarts/re-scores
    python scripts/crash_soak.py --restart-prob 0.5 --fail-rescore-prob 0.8   # tune the mix
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import random
import select
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bestckpt.tracking.journal import read_state
from bestckpt.tracking.tracker import BestCheckpointTracker

SETTINGS = dict(save_top_k=3, keep_latest=2, keep_every_n_steps=200)
TOP_K = SETTINGS["save_top_k"]
PROMISES = ("resume", "scores")
BOUND = 300.0  # seconds: how long the parent waits for a report before giving up on the child


@dataclasses.dataclass(frozen=True)
class Mix:
    """What the child does: probabilities of its scenarios."""

    restart_prob: float = 0.25  # a child starts from a lower step (from scratch or a resume) instead of the highest
    loop_restart_prob: float = 0.03  # ... or goes back in the middle of its loop
    evaluate_prob: float = 0.7  # a save is scheduled for evaluation (and scored right away)
    nan_prob: float = 0.1  # a score is NaN (a failed evaluation)
    rescore_prob: float = 0.2  # after a save, an older live checkpoint is scored again
    fail_rescore_prob: float = 0.4  # ... and that re-evaluation fails (record_failure or NaN)
    dir_prob: float = 0.5  # a checkpoint is a DeepSpeed-like tag directory (else a file)


MIXES = {
    "all": Mix(),
    "classic": Mix(restart_prob=0.0, loop_restart_prob=0.0, fail_rescore_prob=0.0),  # before issue 9
    "restarts": Mix(restart_prob=0.6, loop_restart_prob=0.1, rescore_prob=0.1, fail_rescore_prob=0.0),
    "rescores": Mix(restart_prob=0.0, loop_restart_prob=0.0, rescore_prob=0.6, fail_rescore_prob=0.6),
}


# ---------------------------------------------------------------------------------------------- the child
class _Reporter:
    """One line per completed tracker call (and one before each checkpoint write and each registration),
    on the pipe to the parent."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __call__(self, *words: object) -> None:
        os.write(self.fd, (" ".join(map(str, words)) + "\n").encode())


def _write_checkpoint(ckdir: Path, name: str, as_dir: bool) -> None:
    """Commit a checkpoint under ``name``: a file by rename; a tag directory by rename, or (a tag
    saved again) by rewriting its files in place, as DeepSpeed does."""
    final = ckdir / name
    if final.is_dir() and not final.is_symlink():
        for inner in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"):
            tmp = final / f".{inner}.tmp"
            tmp.write_bytes(os.urandom(256))
            os.replace(tmp, final / inner)
        return
    tmp = ckdir / f".ckpt-tmp-{name}"
    if as_dir and not os.path.lexists(final):
        tmp.mkdir()
        (tmp / "mp_rank_00_model_states.pt").write_bytes(os.urandom(256))
        (tmp / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(os.urandom(256))
    else:
        tmp.write_bytes(os.urandom(512))
    os.rename(tmp, final)  # committed (over an older file of the same step: atomic)


def _clean_own_temporaries(ckdir: Path) -> None:
    """Our own half-written checkpoints from a previous kill (what a trainer cleans on start)."""
    for name in os.listdir(ckdir):
        full = ckdir / name
        if name.startswith(".ckpt-tmp-"):
            if full.is_dir():
                for inner in os.listdir(full):
                    os.unlink(full / inner)
                os.rmdir(full)
            else:
                os.unlink(full)
        elif full.is_dir() and not full.is_symlink():
            for inner in os.listdir(full):
                if inner.endswith(".tmp"):
                    os.unlink(full / inner)


def _start_step(tracker: BestCheckpointTracker, ckdir: Path, rng: random.Random, mix: Mix) -> int:
    steps = [int(n[:7]) for n in os.listdir(ckdir) if n.endswith(".pt") and n[:7].isdigit()]
    steps += [r.step for r in tracker.records]
    if rng.random() < mix.restart_prob:
        live = [r.step for r in tracker.records if not r.pruned]
        if live and rng.random() < 0.5:
            return rng.choice(live)  # resumed from an older kept checkpoint
        return 0  # training from scratch in the same directory
    return max(steps, default=0)


def _child(ckdir: Path, seed: int, compact_bytes: int, mix: Mix, report: _Reporter) -> None:
    """The training-like loop that gets killed (runs in a forked process, never returns)."""
    logging.disable(logging.CRITICAL)
    rng = random.Random(seed)
    _clean_own_temporaries(ckdir)
    tracker = BestCheckpointTracker(ckdir, **SETTINGS, state_compact_bytes=compact_bytes)
    report("opened")
    # What an integration does on resume: the checkpoint DeepSpeed's `latest` names (saved just
    # before the previous process died, maybe before it could tell the tracker) is registered.
    try:
        latest = (ckdir / "latest").read_text().strip()
    except (OSError, UnicodeDecodeError):
        latest = ""
    if latest[:7].isdigit() and (ckdir / latest).exists() and int(latest[:7]) not in {r.step for r in tracker.records}:
        report("saving", int(latest[:7]))
        tracker.checkpoint_saved(int(latest[:7]), ckdir / latest, evaluate=True)
        report("saved", int(latest[:7]))
    # ... and, like a runner restarting, evaluations that were pending when the process died are redone.
    for pending in tracker.pending_steps():
        rec = {r.step: r for r in tracker.records}[pending]
        value = round(rng.random(), 3)
        tracker.update_checkpoint(pending, rec.epoch, ckdir / rec.path, {"composite_score": value})
        report("scored", pending, value)
    step = _start_step(tracker, ckdir, rng, mix)
    while True:
        if rng.random() < mix.loop_restart_prob:
            step = rng.choice([0, step // 2])
        step += 10
        name = f"{step:07d}.pt"
        report("writing", step)  # a save may follow (the next start adopts it if the kill comes first)
        _write_checkpoint(ckdir, name, as_dir=rng.random() < mix.dir_prob)
        (ckdir / "latest").write_text(name)  # DeepSpeed writes it plainly (not atomic)
        evaluate = rng.random() < mix.evaluate_prob
        report("saving", step)
        tracker.checkpoint_saved(step, ckdir / name, epoch=step // 100, evaluate=evaluate)
        report("saved", step)
        if evaluate:
            score = math.nan if rng.random() < mix.nan_prob else round(rng.random(), 3)
            tracker.update_checkpoint(step, step // 100, ckdir / name, {"composite_score": score, "fid": rng.random()})
            report("scored", step, score)
        if rng.random() < mix.rescore_prob:  # a late evaluation / re-score of an older checkpoint still on disk
            _rescore(tracker, ckdir, step, rng, mix, report)


def _rescore(tracker: BestCheckpointTracker, ckdir: Path, step: int, rng: random.Random, mix: Mix,
             report: _Reporter) -> None:
    live = [r for r in tracker.records if not r.pruned and r.step != step and os.path.lexists(ckdir / r.path)]
    if not live:
        return
    old = rng.choice(live)
    if rng.random() < mix.fail_rescore_prob:
        if rng.random() < 0.5:
            tracker.record_failure(old.step, "CUDA out of memory (re-evaluation)", checkpoint_path=ckdir / old.path)
        else:
            tracker.update_checkpoint(old.step, old.epoch, ckdir / old.path, {"composite_score": math.nan})
        report("failed", old.step)
    else:
        value = round(rng.random(), 3)
        tracker.update_checkpoint(old.step, old.epoch, ckdir / old.path, {"composite_score": value})
        report("scored", old.step, value)


# ---------------------------------------------------------------------------------------------- checks
def _expected_ranking(records: list[dict]) -> list[dict]:
    def score(r):
        v = r.get("metrics", {}).get("composite_score")
        return v if r.get("status") == "evaluated" and isinstance(v, (int, float)) and math.isfinite(v) else None

    live = [r for r in records if not r.get("pruned")]
    ranked = [r for r in live if score(r) is not None]
    ranked.sort(key=lambda r: (-score(r), r["step"]))
    return ranked


def _newest(live: list[dict]) -> dict:
    """The resume point: the most recently saved record (``seq``), or the highest step in states without it."""
    return max(live, key=lambda r: (r.get("seq", 0) if isinstance(r.get("seq"), int) else 0, r["step"]))


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
        newest = _newest(live)
        if not os.path.lexists(ckdir / newest["checkpoint_path"]):
            problems.append(f"newest recorded checkpoint {newest['checkpoint_path']} is missing")
    for r in ranked[:TOP_K]:
        if not os.path.lexists(ckdir / r["checkpoint_path"]):
            problems.append(f"top-k checkpoint {r['checkpoint_path']} is missing")
    intents = {i.get("path") for i in state.get("deleting", [])}
    for r in records:
        if r.get("pruned") and r["checkpoint_path"] not in intents and _left_behind(ckdir, r):
            problems.append(f"orphaned checkpoint {r['checkpoint_path']}: pruned in the state, on disk, "
                            "no deletion intent")
    return problems


def _left_behind(ckdir: Path, rec: dict) -> bool:
    """Whether the entry of the pruned record ``rec`` is still the one it described: on disk and not
    written since the record was (a restarted run may write the step again and be killed before it
    registers it: that entry is new, unknown to the tracker, and rightly left alone)."""
    try:
        st = os.lstat(ckdir / rec["checkpoint_path"])
    except FileNotFoundError:
        return False
    stamp = rec.get("timestamp", rec.get("time"))
    return not isinstance(stamp, (int, float)) or st.st_mtime_ns / 1e9 <= stamp


@dataclasses.dataclass
class Reported:
    """What the children reported (completed calls), for the promise checks."""

    last_saved: int | None = None
    later: int = 0  # saves begun after last_saved (each may have happened and been registered, unreported)
    writing: int | None = None  # the step of a ``writing`` report not yet followed by its registration
    valid: set[int] = dataclasses.field(default_factory=set)  # a valid score reported, not saved again since
    events: Counter = dataclasses.field(default_factory=Counter)
    recent: list[str] = dataclasses.field(default_factory=list)  # the last reports, for messages

    def apply(self, line: str) -> None:
        words = line.split()
        if not words:
            return
        self.events[words[0]] += 1
        self.recent = (self.recent + [line])[-6:]
        if words[0] == "writing":  # a save begins: once its file is written, a start may adopt it
            self.later += 1
            self.writing = int(words[1])
            self.valid.discard(int(words[1]))  # saved again (maybe): its earlier score is gone
        elif words[0] == "saving":  # counted at its ``writing`` already, unless it registers an older write
            if self.writing != int(words[1]):
                self.later += 1
            self.writing = None
            self.valid.discard(int(words[1]))
        elif words[0] == "saved":
            self.last_saved, self.later, self.writing = int(words[1]), 0, None
        elif words[0] == "scored" and math.isfinite(float(words[2])):
            self.valid.add(int(words[1]))


def check_promises(ckdir: Path, reported: Reported, promises: tuple[str, ...]) -> list[str]:
    """The resume point is on disk; a failed re-evaluation never replaced a valid score."""
    problems: list[str] = []
    try:
        records = {r["step"]: r for r in read_state(ckdir)["checkpoints"]}
    except Exception as exc:  # noqa: BLE001 - reported by check_after_kill
        return [f"state does not parse: {exc!r}"]
    if "resume" in promises and reported.last_saved is not None and reported.later < SETTINGS["keep_latest"]:
        rec = records.get(reported.last_saved)
        path = rec["checkpoint_path"] if rec else f"{reported.last_saved:07d}.pt"
        if not os.path.lexists(ckdir / path):
            seq = rec.get("seq", 0) if rec else 0
            after = sorted((r.get("seq", 0), r["step"], r.get("info")) for r in records.values() if r.get("seq", 0) > seq)
            problems.append(f"the resume point {path} (the last checkpoint registered) was deleted; its record: "
                            f"{rec}; recorded saves after it (seq, step, info): {after}; "
                            f"the last reports: {reported.recent}")
    if "scores" in promises:
        for step in sorted(reported.valid):
            rec = records.get(step)
            if rec is not None and rec.get("status") == "failed":
                problems.append(f"step {step} had a valid score and is now failed ({rec.get('error')})")
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
    if best is None and os.path.lexists(link):
        problems.append(f"after resume best.pt -> {os.readlink(link) if link.is_symlink() else '?'}, "
                        "but no checkpoint is ranked")
    leftovers = [n for n in os.listdir(ckdir) if n.startswith(".bestckpt-")]
    if leftovers:
        problems.append(f"leftover temporaries after resume: {leftovers}")
    for rec in tracker.records:
        if rec.pruned and _left_behind(ckdir, {"checkpoint_path": rec.path, "timestamp": rec.time}):
            problems.append(f"pruned checkpoint {rec.path} still on disk after resume")
    return problems


# ---------------------------------------------------------------------------------------------- the soak
@dataclasses.dataclass
class SoakResult:
    kills: int
    violations: list[str]
    events: Counter

    def __iter__(self):  # (kills, number of violations, messages), as before
        return iter((self.kills, len(self.violations), self.violations))


def _read_reports(fd: int, want: int, reported: Reported, buf: bytearray) -> bool:
    """Apply the child's reports until ``want`` more arrived; False if its pipe closed first."""
    got = 0
    while got < want:
        ready, _, _ = select.select([fd], [], [], BOUND)
        if not ready:
            raise TimeoutError(f"the child sent no report for {BOUND:.0f} s")
        chunk = os.read(fd, 65536)
        if not chunk:
            return False
        buf += chunk
        while b"\n" in buf:
            line, _, rest = bytes(buf).partition(b"\n")
            buf[:] = rest
            reported.apply(line.decode())
            got += 1
    return True


def _key(problem: str) -> str:
    """A violation without its kill number and context: the same lasting problem has one key."""
    return problem.split(": ", 1)[1].split("; its record", 1)[0]


def run_soak(ckdir: Path, kills: int, seed: int = 0, max_delay: float = 0.05, compact_bytes: int = 256 * 1024,
             log=lambda msg: None, mix: Mix = MIXES["all"], max_reports: int = 12,
             promises: tuple[str, ...] = PROMISES) -> SoakResult:
    """Kill ``kills`` children; returns the kills done, the violations and the reported calls.

    Each child is killed ``uniform(0, max_delay)`` seconds after its ``randint(0, max_reports)``-th
    report. ``compact_bytes=0`` makes every transaction a journal append (the large-state path)."""
    ckdir.mkdir(parents=True, exist_ok=True)
    BestCheckpointTracker(ckdir, **SETTINGS, state_compact_bytes=compact_bytes)
    rng = random.Random(seed)
    violations: list[str] = []
    reported = Reported()
    seen: set[str] = set()
    done = 0
    for i in range(kills):
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            os.close(rfd)
            code = 0
            try:
                _child(ckdir, seed * 1_000_003 + i, compact_bytes, mix, _Reporter(wfd))
            except BaseException:  # noqa: BLE001 - a crash of the child itself is reported by exit code
                code = 3
            finally:
                os._exit(code)
        os.close(wfd)
        buf = bytearray()
        alive = _read_reports(rfd, rng.randint(0, max_reports), reported, buf)
        if alive:
            time.sleep(rng.uniform(0.0, max_delay))  # the kill lands somewhere in the next calls
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        _read_reports(rfd, 1 << 30, reported, buf)  # what it reported before dying (up to end of pipe)
        os.close(rfd)
        if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
            violations.append(f"kill {i}: child ended on its own with status {status} (it raised)")
        done += 1
        found = [f"kill {i}: {p}" for p in check_after_kill(ckdir) + check_promises(ckdir, reported, promises)]
        found += [f"kill {i} (resume): {p}" for p in check_resume(ckdir, compact_bytes)]
        found = [p for p in found if _key(p) not in seen]  # a lasting problem counts once
        seen.update(_key(p) for p in found)
        violations += found
        for p in found:
            log(p)
        if (i + 1) % 100 == 0:
            log(f"{i + 1} kills, {len(violations)} violations")
    return SoakResult(done, violations, reported.events)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-delay", type=float, default=0.05,
                        help="kill within this many seconds after the chosen report (default: 0.05)")
    parser.add_argument("--max-reports", type=int, default=12,
                        help="kill after a random number (0..this) of completed tracker calls (default: 12)")
    parser.add_argument("--compact-bytes", type=int, default=256 * 1024,
                        help="state size above which transactions go to the journal (0: always)")
    parser.add_argument("--mix", choices=sorted(MIXES), default="all",
                        help="scenario preset: all (default), classic (no restarts, no failing re-scores), "
                             "restarts, rescores")
    for f in dataclasses.fields(Mix):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=float, default=None,
                            help=f"override the preset's {f.name} (all: {f.default})")
    parser.add_argument("--promises", default=",".join(PROMISES),
                        help=f"promise checks (default: {','.join(PROMISES)}; '' for the consistency checks only)")
    parser.add_argument("--dir", type=Path, default=None, help="checkpoint directory (default: a temporary one)")
    args = parser.parse_args(argv)
    mix = dataclasses.replace(MIXES[args.mix], **{f.name: getattr(args, f.name) for f in dataclasses.fields(Mix)
                                                  if getattr(args, f.name) is not None})
    promises = tuple(p for p in args.promises.split(",") if p)
    if set(promises) - set(PROMISES):
        parser.error(f"--promises: choose among {', '.join(PROMISES)}")
    logging.disable(logging.WARNING)
    ckdir = args.dir or Path(tempfile.mkdtemp(prefix="bestckpt-soak-")) / "checkpoints"
    t0 = time.monotonic()
    result = run_soak(ckdir, args.kills, args.seed, args.max_delay, args.compact_bytes,
                      log=lambda m: print(m, flush=True), mix=mix, max_reports=args.max_reports, promises=promises)
    state = read_state(ckdir)
    known = {r["checkpoint_path"] for r in state["checkpoints"]}
    unknown = [n for n in os.listdir(ckdir) if n[:7].isdigit() and n not in known]
    print(f"kills: {result.kills}  violations: {len(result.violations)}  records: {len(state['checkpoints'])}  "
          f"unrecorded: {len(unknown)}  on disk: {sum(1 for n in os.listdir(ckdir) if n[:7].isdigit())}  "
          f"reported calls: {dict(result.events)}  time: {time.monotonic() - t0:.1f} s  dir: {ckdir}")
    return 1 if result.violations else 0


if __name__ == "__main__":
    sys.exit(main())
