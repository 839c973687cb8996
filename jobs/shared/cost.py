"""What one job costs: wall time, CPU seconds, peak memory of its process tree, rows, GPU seconds.

The ``step`` wrapper of every command (:mod:`jobs.cli`) starts a :class:`Meter` and adds
:func:`Meter.cost` to the job's result as ``cost``; :mod:`jobs.storage.costs` keeps it in the lake
for the run summary and the MLflow series (docs/performance.md, *What a run costs*).

- ``wall_s``: from the job's start to its result.
- ``cpu_s``: user + system CPU seconds of the job and of every child it started (Spark's JVM, torchrun's
  workers), whether they ended (``os.times``) or still ran at the last sample.
- ``peak_rss_mb``: the largest resident memory of the whole process tree, sampled every
  ``SAMPLE_SECONDS``, and never below the kernel's own peaks: the job's high-water mark (``VmHWM``,
  see :func:`own_peak_bytes`) and the largest ended child's (``ru_maxrss``).
- ``rows``: the rows the job worked on, from its result (delivered, built, scored, read, fitted).
- ``gpu_s``: wall seconds holding CUDA devices (times their number), when the job used CUDA.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import time

SAMPLE_SECONDS = 0.2
# The result keys that say how many rows a step worked on, in order of preference.
ROW_KEYS = ("rows_delivered", "rows", "rows_read", "current_rows", "fit_rows")


class Meter:
    """Measures the current process and its children from ``start()`` on (see the module doc)."""

    def __init__(self):
        self._started = time.monotonic()
        self._times = os.times()
        self._peak = 0
        self._children_cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Meter:
        self._sample()
        self._thread = threading.Thread(target=self._run, name="cost-meter", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self._sample()

    def _sample(self) -> None:
        try:
            import psutil

            me = psutil.Process()
            rss = me.memory_info().rss
            for child in me.children(recursive=True):
                try:
                    rss += child.memory_info().rss
                    t = child.cpu_times()
                    self._children_cpu[child.pid] = t.user + t.system
                except psutil.Error:  # ended between the listing and the look
                    continue
            self._peak = max(self._peak, rss)
        except Exception:  # noqa: BLE001 - measuring must never fail the job
            return

    def cost(self, result: dict | None = None) -> dict:
        """The cost so far, with ``rows`` (and per-million-row figures) from ``result``."""
        self._sample()
        now = os.times()
        own = (now.user - self._times.user) + (now.system - self._times.system)
        ended = (now.children_user - self._times.children_user) + (now.children_system - self._times.children_system)
        children = max(ended, sum(self._children_cpu.values()))
        kernel_peak = max(own_peak_bytes(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
        wall = time.monotonic() - self._started
        out = {"wall_s": round(wall, 3), "cpu_s": round(own + children, 3),
               "peak_rss_mb": round(max(self._peak, kernel_peak) / 2**20, 1), "gpu_s": round(_gpu_seconds(wall), 3)}
        rows = rows_of(result or {})
        if rows is not None:
            out["rows"] = rows
            if rows:
                out["cpu_s_per_million_rows"] = round(out["cpu_s"] / rows * 1e6, 3)
                out["wall_s_per_million_rows"] = round(wall / rows * 1e6, 3)
        return out

    def stop(self) -> None:
        self._stop.set()


def own_peak_bytes() -> int:
    """The peak resident memory of this process since it started its program.

    Not ``getrusage(RUSAGE_SELF).ru_maxrss``: Linux carries the high-water mark of the memory a
    process had before ``exec`` into it, so a job forked by a large parent (a test runner, a bench
    with a lake loaded) would report the parent's size. ``VmHWM`` of ``/proc/self/status`` belongs to
    this program's own address space; ``ru_maxrss`` is the fallback where there is no ``/proc``.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def rows_of(result: dict) -> int | None:
    for key in ROW_KEYS:
        value = result.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _gpu_seconds(wall: float) -> float:
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_initialized():
            return wall * torch.cuda.device_count()
    except Exception:  # noqa: BLE001
        return 0.0
    return 0.0


_current: Meter | None = None


def begin() -> Meter:
    """Start measuring this job (the ``step`` wrapper calls it once per process)."""
    global _current
    _current = Meter().start()
    return _current


def so_far() -> dict | None:
    """The running job's cost so far (for a step record: what a later skip of the same work saves)."""
    return None if _current is None else _current.cost()
