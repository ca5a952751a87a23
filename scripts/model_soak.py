#!/usr/bin/env python
"""Long runs of the randomized model test (tests/tracking/test_retention_model.py), and replaying one sequence.

    python scripts/model_soak.py --sequences 50000              # many sequences, grouped failures
    python scripts/model_soak.py --sequences 5000 --ops 30 120  # longer sequences
    python scripts/model_soak.py --replay 0:1332                # one sequence, every operation shown
    python scripts/model_soak.py --rules R1,R4 ...              # only these issue-9 rules (others as before)

The model, the operations and the invariants live in ``tests/support/retention_model.py``.
Exit status 1 when a sequence broke an invariant.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RULES = ("R1", "R3", "R4", "R6")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--first", type=int, default=0, help="index of the first sequence (to resume a run)")
    parser.add_argument("--ops", type=int, nargs=2, default=(5, 30), metavar=("MIN", "MAX"),
                        help="operations per sequence (default: 5 30, as the test)")
    parser.add_argument("--rules", default=",".join(RULES),
                        help=f"issue-9 rules the model applies (default: all of {','.join(RULES)}; '' for none)")
    parser.add_argument("--replay", metavar="SEED:INDEX", help="run one sequence and print every operation")
    parser.add_argument("--dir", type=Path, help="where the sequences' directories go (default: /dev/shm or /tmp)")
    args = parser.parse_args(argv)
    chosen = {r.strip() for r in args.rules.split(",") if r.strip()}
    unknown = chosen - set(RULES)
    if unknown:
        parser.error(f"--rules: unknown {sorted(unknown)}; choose among {', '.join(RULES)}")
    for rule in RULES:  # read when the model is imported
        os.environ[f"BESTCKPT_MODEL_{rule}"] = "1" if rule in chosen else "0"
    sys.path.insert(0, str(ROOT / "tests" / "support"))
    import retention_model as rm

    base_dir = args.dir or (Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else None)
    with tempfile.TemporaryDirectory(dir=base_dir, prefix="bestckpt-model-") as tmp:
        if args.replay:
            faults = rm.DiskFaults()
            faults.install()
            try:
                out = rm.run_sequence(Path(tmp) / "replay", args.replay, faults, tuple(args.ops))
            finally:
                faults.uninstall()
            print(f"flags {rm.flags()}; settings and operations of sequence {args.replay}:")
            print("\n".join(out.log))
            print(f"after {out.ops} operations: {out.problem or 'every invariant held'}")
            return 1 if out.problem else 0
        logging.disable(logging.CRITICAL)
        t0 = time.monotonic()
        failed = rm.run_many(Path(tmp), args.sequences, args.seed, log=lambda m: print(m, flush=True),
                             ops=tuple(args.ops), first=args.first)
        print(rm.summarize(failed, args.sequences))
        print(f"time: {time.monotonic() - t0:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
