"""Run every benchmark in bench/ one after another and print their figures.

    .venv/bin/python bench/run_all.py            # all, default sizes
    .venv/bin/python bench/run_all.py fid eval   # a subset, by short name

Each benchmark prints the ratios it measured against the reference tool in the same run; targets are
stated in each script's docstring. Benchmarks are separate processes so that one's threads, caches
and imports do not bias another's timings.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = {
    "tracker": ["bench_tracker.py"],
    "fid": ["bench_fid.py"],
    "eval": ["bench_eval.py"],
    "background": ["bench_background.py"],
    "integrations": ["bench_integrations.py"],
    "intervals": ["bench_intervals.py"],
    "demo_ranking": ["bench_demo_ranking.py"],
}


def main(argv: list[str]) -> int:
    names = argv or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {list(BENCHES)}", file=sys.stderr)
        return 2
    failed = []
    for name in names:
        script, *args = BENCHES[name]
        print(f"\n=== {name}: {script} {' '.join(args)}", flush=True)
        start = time.perf_counter()
        rc = subprocess.call([sys.executable, str(HERE / script), *args])
        print(f"=== {name}: exit {rc}, {time.perf_counter() - start:.1f} s wall", flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
