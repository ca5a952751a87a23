#!/usr/bin/env python
"""Bookkeeping cost of the tracker with 10,000 records in the state (target: <= 10 ms per recorded
checkpoint) and the state file size.

Scenarios (each on a fresh temporary directory, on the disk that holds ``--dir``):
- ``history``: 10,000 records of which all but the retained few were pruned (a long run's history);
- ``all-live``: 10,000 checkpoints all kept (``save_top_k=-1``), every record live.
For each: time of ``update_checkpoint`` on an already-saved checkpoint (one transaction), of the
``checkpoint_saved`` + ``update_checkpoint`` pair, and of a full reload after another process wrote
the state. The state with 10,000 records is seeded directly (recording 10,000 checkpoints one
by one would only take longer, not measure anything else). The fsync floor of the same disk
(write + fsync of 100 bytes) is measured in the same run: every durable update needs at least one.

    python bench/bench_tracker.py [--records 10000] [--updates 40] [--dir /tmp] [--state-compact-bytes N]

``--state-compact-bytes 10000000000`` keeps every write a full snapshot (no journal): what the
journal saves. Results and their reading: docs/tracker-performance.md.
"""
from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from bestckpt.tracking import commit
from bestckpt.tracking.tracker import BestCheckpointTracker, Record

METRICS = ("clip_score", "lpips", "inception_score", "fid", "kid", "composite_score")


def _metrics(rng: random.Random) -> dict[str, float]:
    return {m: round(rng.random(), 6) for m in METRICS}


def fsync_floor(directory: Path, n: int = 20) -> float:
    path = directory / "fsync-probe"
    t0 = time.perf_counter()
    for _ in range(n):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.write(fd, b"x" * 100)
        os.fsync(fd)
        os.close(fd)
    os.unlink(path)
    return (time.perf_counter() - t0) / n


def seed_state(ckdir: Path, n: int, all_live: bool, rng: random.Random,
               compact_bytes: int = 256 * 1024) -> BestCheckpointTracker:
    """A directory whose state holds ``n`` records (as the tracker itself writes them)."""
    top_k = -1 if all_live else 3
    tracker = BestCheckpointTracker(ckdir, save_top_k=top_k, keep_every_n_steps=None, state_compact_bytes=compact_bytes)
    step_of = lambda i: (i + 1) * 10  # noqa: E731
    live = set(range(n)) if all_live else set(range(n - 5, n))
    for i in range(n):
        step = step_of(i)
        name = f"{step:07d}.pt"
        if i in live:
            (ckdir / name).write_bytes(b"c")
        tracker._st.put(Record(step=step, epoch=step // 100, path=name, metrics=_metrics(rng),
                               status="evaluated", time=time.time(), protocol_hash="3f2a9c0d1e4b5a67",
                               pruned=i not in live))
    # Make the kept ones really the top-k so updates below exercise pruning.
    commit.write_state(tracker._st, tracker._rank, tracker.config, tracker._rank.best_step(), None)
    return BestCheckpointTracker(ckdir, save_top_k=top_k, keep_every_n_steps=None, state_compact_bytes=compact_bytes)


def bench(ckdir: Path, n: int, updates: int, all_live: bool, rng: random.Random,
          compact_bytes: int = 256 * 1024) -> dict[str, float]:
    tracker = seed_state(ckdir, n, all_live, rng, compact_bytes)
    step = max(r.step for r in tracker.records)
    single, pair = [], []
    for i in range(updates):
        step += 10
        path = ckdir / f"{step:07d}.pt"
        path.write_bytes(b"c")
        if i % 2 == 0:
            tracker.checkpoint_saved(step, path)  # not timed: measure update_checkpoint alone
            t0 = time.perf_counter()
            tracker.update_checkpoint(step, step // 100, path, _metrics(rng))
            single.append(time.perf_counter() - t0)
        else:
            t0 = time.perf_counter()
            tracker.checkpoint_saved(step, path)
            tracker.update_checkpoint(step, step // 100, path, _metrics(rng))
            pair.append(time.perf_counter() - t0)
    # Full reload: another process (a second tracker object) wrote the state.
    other = BestCheckpointTracker(ckdir, save_top_k=tracker.save_top_k, keep_every_n_steps=None,
                                  state_compact_bytes=compact_bytes)
    reload = []
    for _ in range(5):
        step += 10
        path = ckdir / f"{step:07d}.pt"
        path.write_bytes(b"c")
        other.update_checkpoint(step, 0, path, _metrics(rng))
        t0 = time.perf_counter()
        tracker.pending_steps()  # reloads: the file's (mtime, size, inode) changed
        reload.append(time.perf_counter() - t0)
    size = (ckdir / "best_checkpoints.json").stat().st_size
    return {
        "update_ms": statistics.median(single) * 1e3,
        "update_p90_ms": sorted(single)[int(0.9 * (len(single) - 1))] * 1e3,
        "pair_ms": statistics.median(pair) * 1e3,
        "reload_ms": statistics.median(reload) * 1e3,
        "state_bytes": size,
        "records": len(tracker.records),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--updates", type=int, default=40)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--no-fsync", action="store_true",
                        help="measure the CPU part only: os.fsync becomes a no-op (never do this in real use)")
    parser.add_argument("--scenario", choices=("history", "all-live", "both"), default="both")
    parser.add_argument("--state-compact-bytes", type=int, default=256 * 1024,
                        help="the trackers' state_compact_bytes (journal once the snapshot is larger)")
    args = parser.parse_args(argv)
    if args.no_fsync:
        os.fsync = lambda fd: None  # type: ignore[assignment]
    logging.disable(logging.WARNING)
    rng = random.Random(0)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bestckpt-bench-") as tmp:
        floor = fsync_floor(Path(tmp))
        print(f"fsync floor (write+fsync 100 B) on this disk: {floor * 1e3:.2f} ms"
              + ("  [--no-fsync: CPU cost only]" if args.no_fsync else ""))
        scenarios = [s for s in (("history", False), ("all-live", True)) if args.scenario in (s[0], "both")]
        for name, all_live in scenarios:
            r = bench(Path(tmp) / name, args.records, args.updates, all_live, rng, args.state_compact_bytes)
            verdict = "PASS" if r["update_ms"] <= 10.0 else "FAIL"
            floor_ms = max(floor * 1e3, 1e-3)
            print(f"[{name}] records={r['records']} state={r['state_bytes'] / 1e6:.2f} MB  "
                  f"update_checkpoint median={r['update_ms']:.2f} ms (p90 {r['update_p90_ms']:.2f}) "
                  f"[target <= 10 ms: {verdict}; {r['update_ms'] / floor_ms:.1f}x fsync floor]  "
                  f"saved+update pair={r['pair_ms']:.2f} ms  reload after another writer={r['reload_ms']:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
