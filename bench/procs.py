"""Shared by the bench scripts: peak memory of a child process together with everything it starts."""

from __future__ import annotations

import subprocess
import time


def wait_for_peak_rss(proc: subprocess.Popen, every: float = 0.1) -> int:
    """Wait for ``proc`` to exit, sampling the RSS summed over its whole process tree (a Spark JVM,
    the job processes of an Airflow task); returns the peak in bytes."""
    import psutil

    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(every)
    return peak
