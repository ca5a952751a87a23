"""An independent model of the tracker's retention rules, and random operation sequences checked against it.

Used by ``tests/tracking/test_retention_model.py`` (a few thousand sequences) and ``scripts/model_soak.py``
(as many as you like). Nothing here imports bestckpt's policies: :class:`Model` restates the rules
from the README and issue 9's decisions in a few lines, and :func:`run_sequence` drives a real
:class:`~bestckpt.tracking.tracker.BestCheckpointTracker` with random operations (saves, scores,
NaN and missing scores, failures, re-scores, restarts, resumes, bogus huge steps, second trackers,
simulated crashes between any two disk operations) and compares the directory with the model after
each one.

The rules that issue 9 changes are switched by flags (environment ``BESTCKPT_MODEL_R1=0`` etc. turns
one off, i.e. checks the behaviour from before issue 9):

- ``R1``: "latest" is the most recently *saved* checkpoint (save order), not the highest step;
- ``R3``: a second tracker opened without settings takes the stored ones; one opened with other
  deletion-relevant settings raises ``ConfigError`` (off: second trackers use the same settings);
- ``R4``: a failed re-evaluation of a checkpoint that has a valid score keeps that score;
- ``R6``: a checkpoint written but never registered (a crash in between) whose step is above every
  recorded step is adopted as pending by the next tracker start (off: left alone, never touched).

The model has ``min_improvement == 0`` (the best is the top of the ranking) and one metric.
"""
from __future__ import annotations

import logging
import math
import os
import random
import shutil
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bestckpt.tracking.journal import read_state
from bestckpt.tracking.layout import COMPLETE_MARKER
from bestckpt.tracking.tracker import BestCheckpointTracker


def _flag(name: str) -> bool:
    return os.environ.get(f"BESTCKPT_MODEL_{name}", "1") != "0"


MODEL_R1 = _flag("R1")  # latest = most recently saved (seq), not highest step
MODEL_R3 = _flag("R3")  # one configuration per directory: stored settings adopted, conflicts refused
MODEL_R4 = _flag("R4")  # a failed re-score keeps the earlier valid score
MODEL_R6 = _flag("R6")  # written-but-unregistered newest checkpoint adopted as pending on start

METRIC = "score"
CHECK_NAMES = ("notes.txt",)  # a file of the user's inside the checkpoint directory: never touched


def flags() -> dict[str, bool]:
    return {"R1": MODEL_R1, "R3": MODEL_R3, "R4": MODEL_R4, "R6": MODEL_R6}


# ---------------------------------------------------------------------------------------------- the model
@dataclass
class MRecord:
    step: int
    seq: int  # save order
    status: str  # pending | saved | evaluated | failed
    score: float | None = None  # the tracked value, when evaluated
    pruned: bool = False


@dataclass
class Model:
    top_k: int
    keep_latest: int
    every_n: int | None
    pinned: tuple[int, ...]
    higher: bool
    records: dict[int, MRecord] = field(default_factory=dict)
    next_seq: int = 0
    #: live steps whose checkpoint was written again but whose registration crashed: the next call about
    #: them sees a changed file, i.e. a new save (the tracker tells re-saves by file identity)
    resaved: set[int] = field(default_factory=set)
    unknown: set[int] = field(default_factory=set)  # step entries on disk that no record knows
    ds_latest: int | None = None  # the step DeepSpeed's `latest` file names

    def live(self) -> list[MRecord]:
        return [r for r in self.records.values() if not r.pruned]

    def ranked(self) -> list[MRecord]:
        rankable = [r for r in self.live() if r.status == "evaluated" and r.score is not None]
        return sorted(rankable, key=lambda r: (-r.score if self.higher else r.score, r.step))

    def best(self) -> int | None:
        ranked = self.ranked()
        return ranked[0].step if ranked else None

    def keep(self) -> dict[int, list[str]]:
        """Every live step that must stay on disk, with the reasons."""
        why: dict[int, list[str]] = {}
        ranked = self.ranked()
        if ranked:
            why.setdefault(ranked[0].step, []).append("best")
        for r in ranked if self.top_k < 0 else ranked[: self.top_k]:
            why.setdefault(r.step, []).append("top-k")
        order = (lambda r: (r.seq, r.step)) if MODEL_R1 else (lambda r: r.step)
        for r in sorted(self.live(), key=order)[-self.keep_latest:]:
            why.setdefault(r.step, []).append("latest (save order)" if MODEL_R1 else "latest (highest step)")
        for r in self.live():
            if self.every_n and r.step % self.every_n == 0:
                why.setdefault(r.step, []).append("every-n")
            if r.step in self.pinned:
                why.setdefault(r.step, []).append("pinned")
            if r.status == "pending":
                why.setdefault(r.step, []).append("pending")
            if r.step == self.ds_latest:
                why.setdefault(r.step, []).append("named by DeepSpeed 'latest'")
        return why

    def retain(self) -> None:
        kept = self.keep()
        for r in self.live():
            if r.step not in kept:
                r.pruned = True

    def on_disk(self) -> set[int]:
        return {r.step for r in self.live()} | self.unknown

    # -- operations (applied once the tracker call returned) --------------------------------------
    def save(self, step: int, evaluate: bool) -> None:
        self.records[step] = MRecord(step, self.next_seq, "pending" if evaluate else "saved")
        self.next_seq += 1
        self.resaved.discard(step)
        self.unknown.discard(step)
        self.retain()

    def score(self, step: int, value: float | None) -> None:
        """A score for ``step`` (``None``/non-finite: unusable, i.e. a failed evaluation)."""
        rec = self.records.get(step)
        if rec is None or rec.pruned:
            rec = self.records[step] = MRecord(step, self.next_seq, "saved")
            self.next_seq += 1
            self.unknown.discard(step)
        elif step in self.resaved and MODEL_R1 and not (
                MODEL_R4 and rec.status == "evaluated" and (value is None or not math.isfinite(value))):
            rec.seq, self.next_seq = self.next_seq, self.next_seq + 1  # (a failed re-score changes nothing, R4)
            self.resaved.discard(step)
        if value is not None and math.isfinite(value):
            rec.status, rec.score = "evaluated", value
        elif not (MODEL_R4 and rec.status == "evaluated"):
            rec.status, rec.score = "failed", None
        self.retain()

    def started(self, complete: Callable[[int], bool]) -> None:
        """A writer opened the directory: live checkpoints written again but never registered are the
        latest saves so far (R1: the re-save came before every later registration, whenever a call about
        them comes); unregistered checkpoints above every recorded step that are ``complete`` are adopted
        as pending, in step order (R6)."""
        if MODEL_R1:
            for rec in sorted((r for r in self.live() if r.step in self.resaved), key=lambda r: (r.seq, r.step)):
                rec.seq, self.next_seq = self.next_seq, self.next_seq + 1
            self.resaved.clear()
        if not MODEL_R6:
            return
        top = max(self.records, default=-1)
        adopted = sorted(s for s in self.unknown if s > top and complete(s))
        for step in adopted:
            self.records[step] = MRecord(step, self.next_seq, "pending")
            self.next_seq += 1
            self.unknown.discard(step)
        # no retention here: a tracker's start deletes nothing; the next call applies it


# ---------------------------------------------------------------------------------------------- crashes
class Crash(BaseException):
    """A simulated crash: the process stops before this disk operation (nothing after it happens)."""


_MUTATING = ("replace", "rename", "unlink", "remove", "rmdir", "symlink", "link", "mkdir", "makedirs", "write",
             "ftruncate", "truncate", "fsync")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


class DiskFaults:
    """Counts the disk operations of bestckpt's tracking modules and crashes before the k-th.

    Installed by replacing the ``os``/``shutil`` globals of ``bestckpt.fsio`` and
    ``bestckpt.tracking.*`` with proxies (and any function they imported by name). ``fsync`` is
    counted but not performed: durability is not what an in-process model can check.
    """

    def __init__(self) -> None:
        self.countdown = 0
        self.crashed = False
        self._undo: list[tuple[Any, str, Any]] = []

    def arm(self, k: int) -> None:
        self.countdown, self.crashed = k, False

    def disarm(self) -> bool:
        crashed, self.countdown, self.crashed = self.crashed, 0, False
        return crashed

    def _tick(self) -> None:
        if self.crashed:
            raise Crash("after the crash")
        if self.countdown > 0:
            self.countdown -= 1
            if self.countdown == 0:
                self.crashed = True
                raise Crash("simulated crash")

    def _wrap(self, name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def op(*args: Any, **kwargs: Any) -> Any:
            if name == "open":
                flags = args[1] if len(args) > 1 else kwargs.get("flags", 0)
                if flags & _WRITE_FLAGS:
                    self._tick()
                elif self.crashed:
                    raise Crash("after the crash")
                return real(*args, **kwargs)
            self._tick()
            return None if name == "fsync" else real(*args, **kwargs)

        return op

    def install(self) -> None:
        os_proxy = types.ModuleType("os")
        os_proxy.__dict__.update(os.__dict__)
        sh_proxy = types.ModuleType("shutil")
        sh_proxy.__dict__.update(shutil.__dict__)
        wrapped: dict[Any, Any] = {}
        for name in _MUTATING + ("open",):
            real = getattr(os, name)
            wrapped[real] = self._wrap(name, real)
            setattr(os_proxy, name, wrapped[real])
        wrapped[shutil.rmtree] = self._wrap("rmtree", shutil.rmtree)
        sh_proxy.rmtree = wrapped[shutil.rmtree]
        for modname, module in list(sys.modules.items()):
            if module is None or not (modname == "bestckpt.fsio" or modname.startswith("bestckpt.tracking")):
                continue
            for attr, value in list(vars(module).items()):
                new = os_proxy if value is os else sh_proxy if value is shutil else _lookup(wrapped, value)
                if new is not None:
                    self._undo.append((module, attr, value))
                    setattr(module, attr, new)

    def uninstall(self) -> None:
        for module, attr, value in reversed(self._undo):
            setattr(module, attr, value)
        self._undo.clear()


def _lookup(table: dict[Any, Any], value: Any) -> Any:
    try:
        return table.get(value)
    except TypeError:  # an unhashable module global
        return None


# ---------------------------------------------------------------------------------------------- the world
class Problem(Exception):
    """An invariant that does not hold: ``kind`` groups them in reports."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"[{kind}] {detail}")
        self.kind = kind


def _name(step: int) -> str:
    return f"{step:07d}.pt"


class World:
    """One checkpoint directory, the trackers open on it, the trainer writing into it, and the model."""

    def __init__(self, root: Path, rng: random.Random, faults: DiskFaults) -> None:
        self.rng, self.faults = rng, faults
        self.dir, self.outside = root / "ck", root / "outside"
        self.dir.mkdir(parents=True)
        self.outside.mkdir()
        (self.outside / "data.bin").write_bytes(b"not yours")
        (self.dir / "notes.txt").write_text("the user's notes\n")
        self.frozen = self._foreign()
        pinned = tuple(sorted(rng.sample(range(10, 210, 10), rng.choice((0, 0, 1, 2)))))
        self.model = Model(top_k=rng.choice((1, 2, 3, 3, -1)), keep_latest=rng.choice((1, 1, 2, 3)),
                           every_n=rng.choice((None, None, 30, 50, 100)), pinned=pinned, higher=rng.random() < 0.7)
        self.compact = rng.choice((256 * 1024, 256 * 1024, 256 * 1024, 0))  # 0: every call appends to the journal
        self.deepspeed = rng.random() < 0.25  # tag directories and a `latest` file, else plain files
        self.cursor = 0  # the trainer's step
        self.version = 0
        self.log: list[str] = []
        self.kinds: dict[int, str] = {}  # how each step's entry was last written: file, dir, marked dir
        self.written: int | None = None  # the step the current operation wrote (before telling the tracker)
        self.effect: Callable[[Model], None] = lambda m: None  # what the current operation does to the model
        self.log.append(f"settings {self.settings()}, state_compact_bytes={self.compact}, "
                        f"{'DeepSpeed tags' if self.deepspeed else 'files'}")
        self.trackers = [self.open_tracker()]  # [0]: the one that acted last
        self.started()

    # -- settings -------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        m = self.model
        return dict(metric_name=METRIC, higher_is_better=m.higher, save_top_k=m.top_k, keep_latest=m.keep_latest,
                    keep_every_n_steps=m.every_n, pinned_steps=m.pinned)

    def open_tracker(self, settings: dict[str, Any] | None = None, *, omit: bool = False) -> BestCheckpointTracker:
        """A writer on the directory: with the run's settings, ``settings``, or none at all (``omit``)."""
        chosen = {} if omit else (self.settings() if settings is None else settings)
        return BestCheckpointTracker(self.dir, **chosen, is_writer=True, lock_timeout=60,
                                     state_compact_bytes=self.compact)

    def started(self) -> None:
        """The model's side of a writer's start."""
        self.model.started(self.complete)

    def complete(self, step: int) -> bool:
        """Whether an unregistered entry counts as completely written (files; DeepSpeed tags when marked,
        named by ``latest``, or followed by a later tag)."""
        return (self.kinds.get(step) != "dir" or step == self.model.ds_latest
                or any(u > step for u in self.model.unknown))

    def tracker(self) -> BestCheckpointTracker:
        return self.trackers[0] if len(self.trackers) == 1 or self.rng.random() < 0.6 else self.rng.choice(self.trackers)

    # -- the trainer's side ------------------------------------------------------------------------
    def write_entry(self, step: int) -> Path:
        """Save step ``step``'s checkpoint atomically (a file, or a DeepSpeed-like directory), replacing any."""
        self.version += 1
        final = self.dir / _name(step)
        tmp = self.dir / ".trainer-tmp"
        if self.deepspeed:
            tmp.mkdir()
            (tmp / "mp_rank_00_model_states.pt").write_bytes(b"%d:%d" % (step, self.version))
            self.kinds[step] = "dir"
            if self.rng.random() < 0.5:  # the completion marker a careful DeepSpeed trainer writes
                (tmp / COMPLETE_MARKER).write_text("complete\n")
                self.kinds[step] = "marked dir"
        else:
            tmp.write_bytes(b"%d:%d" % (step, self.version))
            self.kinds[step] = "file"
        if os.path.lexists(final) and (tmp.is_dir() or final.is_dir()):
            shutil.rmtree(final) if final.is_dir() and not final.is_symlink() else os.unlink(final)
        os.replace(tmp, final)
        if self.deepspeed:  # DeepSpeed names its newest tag in `latest`, written plainly after the save
            (self.dir / "latest").write_text(final.name)
            self.model.ds_latest = step
        return final

    def next_step(self) -> int:
        if self.rng.random() < 0.02:
            return 1_000_000 + 10 * self.rng.randrange(100)  # a bogus huge step (the cursor stays)
        self.cursor += 10 * self.rng.choice((1, 1, 1, 2, 3))
        return self.cursor

    def _foreign(self) -> dict[str, bytes]:
        out = {f"outside/{p.name}": p.read_bytes() for p in self.outside.iterdir()}
        out.update({n: (self.dir / n).read_bytes() for n in CHECK_NAMES if (self.dir / n).is_file()})
        out["<root>"] = ",".join(sorted(os.listdir(self.dir.parent))).encode()
        return out


# ---------------------------------------------------------------------------------------------- operations
def _value(rng: random.Random) -> float | None:
    """A metric value: mostly finite (coarse values make ties), sometimes NaN/inf, sometimes missing."""
    r = rng.random()
    if r < 0.08:
        return math.nan
    if r < 0.12:
        return rng.choice((math.inf, -math.inf))
    if r < 0.16:
        return None  # the tracked metric is missing
    return rng.choice((0.1, 0.2, 0.3, 0.4, 0.5)) if rng.random() < 0.5 else round(rng.uniform(-1, 2), 4)


def _metrics(value: float | None) -> dict[str, float]:
    return {"fid": 12.5} if value is None else {METRIC: value, "fid": 12.5}


def _call(w: World, effect: Callable[[Model], None], call: Callable[[], Any]) -> Callable[[Model], None]:
    """Note the operation's effect on the model (a crash needs it), then make the tracker call."""
    w.effect = effect
    call()
    return effect


def op_save(w: World, t: BestCheckpointTracker) -> Callable[[Model], None]:
    step = w.next_step()
    evaluate = w.rng.random() < 0.7
    path = w.write_entry(step)
    w.written = step
    w.log.append(f"save {step} evaluate={evaluate} ({w.kinds[step]})")
    return _call(w, lambda m: m.save(step, evaluate), lambda: t.checkpoint_saved(
        step, path if w.rng.random() < 0.5 else None, epoch=w.rng.choice((None, step // 100)), evaluate=evaluate))


def op_save_scored(w: World, t: BestCheckpointTracker) -> Callable[[Model], None]:
    """A checkpoint scored without a checkpoint_saved call first (an evaluation script's path)."""
    step = w.next_step()
    if step in w.model.records:
        return op_save(w, t)
    path = w.write_entry(step)
    w.written = step
    value = round(w.rng.uniform(0, 1), 3)
    w.log.append(f"save+score {step} = {value} ({w.kinds[step]})")
    return _call(w, lambda m: m.score(step, value), lambda: t.update_checkpoint(step, None, path, _metrics(value)))


def _live_step(w: World, prefer_pending: bool) -> int | None:
    live = w.model.live()
    pending = [r.step for r in live if r.status == "pending"]
    if prefer_pending and pending and w.rng.random() < 0.7:
        return w.rng.choice(pending)
    return w.rng.choice(live).step if live else None


def op_score(w: World, t: BestCheckpointTracker) -> Callable[[Model], None]:
    step = _live_step(w, prefer_pending=True)
    if step is None:
        return op_save(w, t)
    value = _value(w.rng)
    w.log.append(f"score {step} ({w.model.records[step].status}) = {value}")
    path = w.dir / _name(step) if w.rng.random() < 0.5 else None
    return _call(w, lambda m: m.score(step, value), lambda: t.update_checkpoint(step, None, path, _metrics(value)))


def op_failure(w: World, t: BestCheckpointTracker) -> Callable[[Model], None]:
    step = _live_step(w, prefer_pending=False)
    if step is None:
        return op_save(w, t)
    w.log.append(f"record_failure {step} ({w.model.records[step].status})")
    return _call(w, lambda m: m.score(step, None), lambda: t.record_failure(step, "CUDA out of memory (simulated)"))


def op_prune(w: World, t: BestCheckpointTracker) -> Callable[[Model], None]:
    w.log.append("prune")
    return _call(w, lambda m: m.retain(), t.prune)  # after an adoption, prune applies retention anew


MUTATIONS: list[tuple[float, Callable[[World, BestCheckpointTracker], Callable[[Model], None]]]] = [
    (0.40, op_save), (0.05, op_save_scored), (0.35, op_score), (0.12, op_failure), (0.08, op_prune)]


def _pick(rng: random.Random, table):
    r = rng.random() * sum(wt for wt, _ in table)
    for wt, item in table:
        r -= wt
        if r < 0:
            return item
    return table[-1][1]


def restart(w: World) -> None:
    """Training starts again: from scratch, or from an older kept checkpoint (a resume)."""
    live = sorted(r.step for r in w.model.live() if r.step < 1_000_000)
    if live and w.rng.random() < 0.5:
        w.cursor = w.rng.choice(live)
        w.log.append(f"resume from {w.cursor}")
    else:
        w.cursor = w.rng.choice((-10, 0, 10 * w.rng.randrange(max(1, w.cursor // 10))))
        w.log.append(f"restart, next step after {w.cursor}")


def second_tracker(w: World) -> None:
    """Another process opens the directory: with the same settings, without any (R3), or with others (R3)."""
    from bestckpt.errors import ConfigError

    kind = w.rng.choice(("same", "omitted", "other")) if MODEL_R3 else "same"
    w.log.append(f"open a second tracker ({kind} settings)")
    if kind == "other":
        field_name, value = w.rng.choice([("save_top_k", 5 if w.model.top_k != 5 else 2),
                                          ("higher_is_better", not w.model.higher),
                                          ("pinned_steps", (7,)), ("keep_latest", w.model.keep_latest + 1)])
        settings = dict(w.settings(), **{field_name: value})
        try:
            other = w.open_tracker(settings)
        except ConfigError as exc:
            if field_name not in str(exc):
                raise Problem("R3 config", f"the ConfigError does not name {field_name}: {exc}") from None
            return
        w.trackers.append(other)
        raise Problem("R3 config", f"a tracker opened with {field_name}={value!r} (stored: the run's) did not raise")
    tracker = w.open_tracker(omit=kind == "omitted")
    w.started()
    w.trackers.insert(0, tracker)
    del w.trackers[3:]  # at most three processes at a time: the oldest one ends


def crash_op(w: World) -> None:
    """Run one mutation with a crash before its k-th disk operation; then a fresh tracker takes over."""
    t = w.tracker()
    snapshot = (read_state(w.dir) or {}).get("checkpoints")
    op = _pick(w.rng, MUTATIONS)
    k = w.rng.randint(1, 20)
    w.written, w.effect = None, (lambda m: None)
    w.faults.arm(k)
    try:
        op(w, t)
    except Crash:
        pass
    finally:
        crashed = w.faults.disarm()
    if not crashed:
        w.effect(w.model)
        w.log.append(f"  (no crash: fewer than {k} disk operations)")
        return
    w.trackers.remove(t)
    applied = (read_state(w.dir) or {}).get("checkpoints") != snapshot
    w.log.append(f"  crashed before disk operation {k}; the call {'took' if applied else 'had no'} effect")
    if applied:
        w.effect(w.model)
    elif w.written is not None and (w.written not in w.model.records or w.model.records[w.written].pruned):
        w.model.unknown.add(w.written)  # written, never registered
    elif w.written is not None:
        w.model.resaved.add(w.written)  # written again over a live checkpoint, never registered
    reopen(w)


def reopen(w: World) -> None:
    """A fresh writer opens the directory (and may itself crash while starting: then another one)."""
    if w.rng.random() < 0.3:
        w.faults.arm(w.rng.randint(1, 10))
        try:
            w.trackers.insert(0, w.open_tracker())
        except Crash:
            w.log.append("  the restarted tracker crashed while starting")
        finally:
            w.faults.disarm()
    w.trackers.insert(0, w.open_tracker())
    w.started()
    w.log.append("  reopened")
    leftovers = [n for n in os.listdir(w.dir) if n.startswith(".bestckpt-")]
    if leftovers:
        raise Problem("leftovers", f"temporary entries left after a restart: {leftovers}")
    del w.trackers[3:]


# ---------------------------------------------------------------------------------------------- checks
def _score_of(rec: dict[str, Any]) -> float | None:
    v = (rec.get("metrics") or {}).get(METRIC)
    return float(v) if isinstance(v, (int, float)) and rec.get("status") == "evaluated" else None


def check(w: World, everything: bool = False) -> None:
    """Every invariant, against the model; raises :class:`Problem`. The user's files are compared
    after a quarter of the operations and whenever ``everything``."""
    m = w.model
    try:
        state = read_state(w.dir)
    except Exception as exc:  # noqa: BLE001 - any failure to parse is the finding
        raise Problem("state unreadable", repr(exc)) from None
    if state is None:
        raise Problem("state unreadable", "no best_checkpoints.json")
    kept = m.keep()
    on_disk = {int(n[:-3]) for n in os.listdir(w.dir) if n.endswith(".pt") and n[:-3].isdigit()}
    missing = m.on_disk() - on_disk
    if missing:
        why = {s: kept.get(s, ["never registered: must not be touched"]) for s in sorted(missing)}
        raise Problem("needed checkpoint deleted", f"{why}")
    records = {r["step"]: r for r in state["checkpoints"] if isinstance(r, dict)}
    if set(records) != set(m.records):
        raise Problem("records", f"state has steps {sorted(set(records) - set(m.records))} the model has not, "
                                 f"lacks {sorted(set(m.records) - set(records))}")
    for step, mr in sorted(m.records.items()):
        sr = records[step]
        if bool(sr.get("pruned")) != mr.pruned or sr.get("status") != mr.status or _score_of(sr) != mr.score:
            raise Problem("record differs", f"step {step}: state {sr.get('status')}/{_score_of(sr)}/pruned="
                                            f"{bool(sr.get('pruned'))}, model {mr.status}/{mr.score}/pruned={mr.pruned}"
                                            f" (keep reasons {kept.get(step)})")
    extra = on_disk - m.on_disk()
    if extra:
        raise Problem("prunable checkpoint kept", f"steps {sorted(extra)} are on disk; the rules drop them")
    best = m.best()
    link = w.dir / "best.pt"
    target = os.readlink(link) if link.is_symlink() else None
    if state.get("best_step") != best or target != (None if best is None else _name(best)):
        raise Problem("best", f"model best {best}, state best_step {state.get('best_step')}, best.pt -> {target}")
    if best is not None and not link.exists():
        raise Problem("best", f"best.pt -> {target} does not resolve")
    if everything or w.rng.random() < 0.3:  # through the API (it takes the lock: not after every operation)
        t = w.trackers[0] if w.rng.random() < 0.8 else w.rng.choice(w.trackers)  # another one rereads all
        summary = t.summary()
        pending = sorted(r.step for r in m.live() if r.status == "pending")
        if summary["best_step"] != best or summary["pending"] != pending:
            raise Problem("best" if summary["best_step"] != best else "pending",
                          f"tracker says best {summary['best_step']}, pending {summary['pending']}; "
                          f"model best {best}, pending {pending}")
    if (everything or w.rng.random() < 0.25) and w._foreign() != w.frozen:
        raise Problem("outside changed", "a file outside the checkpoints (or the user's notes) changed")


# ---------------------------------------------------------------------------------------------- sequences
@dataclass
class Outcome:
    seed: str
    ops: int
    problem: Problem | None
    log: list[str]


def run_sequence(root: Path, seed: str, faults: DiskFaults, ops: tuple[int, int] = (5, 30)) -> Outcome:
    """One random sequence (``ops`` operations, bounds included) in a fresh directory under ``root``;
    stops at the first problem."""
    rng = random.Random(seed)
    n_ops = rng.randint(*ops)
    w: World | None = None
    done = 0
    try:
        w = World(root, rng, faults)
        for done in range(1, n_ops + 1):  # noqa: B007 - read after the loop (ops done)
            r = rng.random()
            if r < 0.06:
                restart(w)
            elif r < 0.11:
                second_tracker(w)
            elif r < 0.23:
                crash_op(w)
            else:
                t = w.tracker()
                w.trackers.remove(t)
                w.trackers.insert(0, t)  # trackers[0]: the one that acted last
                _pick(rng, MUTATIONS)(w, t)(w.model)
            check(w)
        check(w, everything=True)
        return Outcome(seed, done, None, w.log)
    except Problem as problem:
        return Outcome(seed, done, problem, w.log if w else [])
    except Exception as exc:  # noqa: BLE001 - an exception from the tracker is a finding too
        kind = f"raised {type(exc).__name__}"
        return Outcome(seed, done, Problem(kind, f"{exc}"), w.log if w else [])
    finally:
        faults.disarm()
        shutil.rmtree(root, ignore_errors=True)


def run_many(base: Path, n: int, seed: int = 0, log: Callable[[str], None] = lambda s: None,
             ops: tuple[int, int] = (5, 30), first: int = 0) -> list[Outcome]:
    """Sequences ``first`` .. ``first + n - 1`` (seeds ``"{seed}:{i}"``); returns the failed ones."""
    faults = DiskFaults()
    faults.install()
    failed = []
    quiet = logging.getLogger("bestckpt")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL + 1)  # thousands of expected warnings (failed scores, unknown entries)
    try:
        for i in range(first, first + n):
            out = run_sequence(base / f"s{i}", f"{seed}:{i}", faults, ops)
            if out.problem is not None:
                failed.append(out)
                log(f"sequence {out.seed}: {out.problem}")
    finally:
        faults.uninstall()
        quiet.setLevel(level)
    return failed


def summarize(failed: list[Outcome], total: int) -> str:
    """Failures grouped by kind, each with its count and first example (seed and the last operations)."""
    groups: dict[str, list[Outcome]] = {}
    for out in failed:
        groups.setdefault(out.problem.kind, []).append(out)  # type: ignore[union-attr]
    lines = [f"{len(failed)} of {total} sequences broke an invariant (flags {flags()}):"]
    for kind, outs in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        first = outs[0]
        lines.append(f"- {kind}: {len(outs)} sequences; e.g. seed {first.seed!r} after {first.ops} ops: {first.problem}")
        lines += [f"      {entry}" for entry in first.log[-8:]]
    return "\n".join(lines)
