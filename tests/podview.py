"""The Kubernetes runner's pod, as a filesystem: run a command on a read-only root, for the tests.

Each command runs in its own mount namespace (``unshare -m``, as root) with the pod's view: the
root filesystem read-only, a fresh tmpfs at ``/tmp`` (the pod's ``/tmp`` emptyDir, also ``HOME`` and
``TMPDIR``), the state folder at one writable path (the pod's ``/data/state`` emptyDir) and ``/`` as
working directory. The checkout and the virtual environment stay visible, read-only, as the image's
files are in a pod. Where mount namespaces are not available the tests using it skip, except where
``PIPELINE_REQUIRE_POD_VIEW=1`` (CI sets it): there they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STATE_IN_POD = "/mnt/state"
# /mnt becomes a small tmpfs holding the state folder's mount point (and, for what lies under /tmp,
# the checkout's and the environment's), then is made read-only itself. "$@" is the command line.
SCRIPT = r"""
set -e
mount -t tmpfs -o size=1m tmpfs /mnt
mkdir /mnt/state
mount --bind "$STATE" /mnt/state
i=0
IFS=:
for keep in $KEEP; do
  case "$keep" in /tmp/*) i=$((i + 1)); mkdir "/mnt/keep$i"; mount --rbind "$keep" "/mnt/keep$i" ;; esac
done
mount -o remount,ro,bind /mnt
mount -o remount,ro,bind /
mount -t tmpfs tmpfs /tmp
i=0
for keep in $KEEP; do
  case "$keep" in /tmp/*)
    i=$((i + 1)); mkdir -p "$keep"; mount --rbind "/mnt/keep$i" "$keep"; mount -o remount,ro,bind "$keep" ;;
  esac
done
unset IFS
cd /
exec env HOME=/tmp TMPDIR=/tmp PIPELINE_STATE_DIR=/mnt/state "$@"
"""
# A clone in a temporary folder lies under /tmp: it is mounted back, read-only, over the fresh /tmp.
KEEP = ":".join(dict.fromkeys([str(ROOT), sys.prefix,
                               os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))]))


def available() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs tmpfs /mnt && mount -o remount,ro,bind /"],
                           capture_output=True, text=True)
    return probe.returncode == 0


def require() -> None:
    """Skip (or, with PIPELINE_REQUIRE_POD_VIEW=1, fail) where the pod's view cannot be made."""
    if not available():
        message = "needs root and mount namespaces (unshare -m) to make / read-only"
        if os.environ.get("PIPELINE_REQUIRE_POD_VIEW") == "1":
            pytest.fail(message)
        pytest.skip(message)


def run(state: Path, *command: str, env: dict[str, str] | None = None, timeout: int = 900
        ) -> subprocess.CompletedProcess:
    """``command`` in the pod's view, ``state`` as its writable state folder (at /mnt/state inside)."""
    environ = {**(env if env is not None else os.environ), "STATE": str(state), "KEEP": KEEP}
    return subprocess.run(["unshare", "-m", "--propagation", "private", "bash", "-c", SCRIPT, "pod-view", *command],
                          capture_output=True, text=True, env=environ, timeout=timeout)
