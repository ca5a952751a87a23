"""Run under ``accelerate launch`` (2 CPU processes) by tests/integrations/test_accelerate.py.

``register-missing``: every process calls ``checkpoint_saved`` for a step nobody saved; the main
process's registration fails and the other process must learn of it (and raise), not hang in its
next collective. Each process writes one ``RESULT <process> <exception type> <message>`` line to
``<output_dir>.result-<process>`` (its own file: two processes printing to one pipe can interleave).
"""
from __future__ import annotations

import sys
from pathlib import Path

from accelerate import Accelerator

from bestckpt.integrations.accelerate import AccelerateCheckpoints


def main(output_dir: str) -> None:
    accelerator = Accelerator()
    best = AccelerateCheckpoints(accelerator, output_dir, mode="off")
    try:
        best.checkpoint_saved(5)
    except Exception as exc:  # noqa: BLE001 - reported to the test
        result = f"RESULT {accelerator.process_index} {type(exc).__name__} {exc}"
    else:
        result = f"RESULT {accelerator.process_index} none"
    Path(f"{output_dir}.result-{accelerator.process_index}").write_text(result + "\n")
    accelerator.wait_for_everyone()  # both got here: nobody hung
    accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1])
