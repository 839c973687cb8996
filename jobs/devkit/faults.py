"""An injectable crash for tests of exactly-once: kill the job right after its N-th durable write.

``PIPELINE_FAULT_CRASH_AFTER_WRITES=N`` makes the process exit at once (``os._exit``, no cleanup,
no ``finally``: what a SIGKILL or a lost node does) right after the N-th write to the lake: an
object PUT, a create-only claim, a folder publish or a Delta commit. Tests run a job with N = 1,
2, ... until it no longer crashes, retry each crashed run, and compare the lake with a clean
run's. Unset (always, outside tests), it costs one counter increment per write.
"""

from __future__ import annotations

import os
import sys

CRASH_ENV = "PIPELINE_FAULT_CRASH_AFTER_WRITES"
CRASH_EXIT_CODE = 137  # what a SIGKILL'd process reports
_writes = 0


def wrote(what: str) -> None:
    """Count one durable write; crash here if this is the write the fault hook names."""
    global _writes
    _writes += 1
    target = os.environ.get(CRASH_ENV)
    if target and _writes == int(target):
        sys.stderr.write(f"FAULT: crashing right after write {_writes} ({what})\n")
        sys.stderr.flush()
        os._exit(CRASH_EXIT_CODE)


def writes() -> int:
    """Durable writes this process has made so far."""
    return _writes
