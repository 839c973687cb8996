"""The cost meter measures the job's own process tree, not whoever started it."""

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, sys, time
from jobs.shared.cost import Meter
meter = Meter().start()
grow = int(sys.argv[1])
block = bytearray(grow * 2**20) if grow else b""
for i in range(0, len(block), 4096):
    block[i] = 1  # touch every page, so it is resident
time.sleep(0.5)
cost = meter.cost()
meter.stop()
print(json.dumps(cost))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="the exec quirk and /proc are Linux's")
def test_a_job_forked_by_a_large_parent_reports_its_own_peak_not_the_parents():
    """Linux carries the pre-exec high-water mark into ``ru_maxrss``: a job forked (not spawned) from a
    parent holding 600 MiB would report 600 MiB. The meter must report the job's own few dozen MiB,
    and still see memory the job itself takes."""
    ballast = bytearray(600 * 2**20)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    env = {**os.environ, "PYTHONPATH": os.getcwd()}

    def probe(grow_mib: int) -> dict:
        # preexec_fn forces fork + exec (no vfork or posix_spawn), as a forking supervisor does.
        out = subprocess.run([sys.executable, "-c", PROBE, str(grow_mib)], env=env, capture_output=True,
                             text=True, check=True, preexec_fn=lambda: None)
        return json.loads(out.stdout.strip().splitlines()[-1])

    small, grown = probe(0), probe(300)
    assert small["peak_rss_mb"] < 300, small  # the interpreter and psutil, not the 600 MiB parent
    assert grown["peak_rss_mb"] >= small["peak_rss_mb"] + 290, (small, grown)
    del ballast
