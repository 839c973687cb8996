"""Every job runs on a read-only root filesystem, as the Kubernetes runner's pods do.

Each job runs in its own mount namespace (``unshare``, as root) that reproduces the pod's view: the
root filesystem read-only, a fresh tmpfs at ``/tmp`` (the pod's ``/tmp`` emptyDir, also ``HOME``
and ``TMPDIR``), the state folder at one writable path (the pod's ``/data/state`` emptyDir) and a
read-only working directory. The whole chain runs, generate to drift, so any job that writes
anywhere else fails here rather than in a cluster.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

END = "2026-04-20"

# The pod's view; "$@" is the job's command line. /mnt becomes a small tmpfs that holds the state
# folder's mount point, then is made read-only itself.
POD_VIEW = r"""
set -e
mount -t tmpfs -o size=1m tmpfs /mnt
mkdir /mnt/state
mount --bind "$STATE" /mnt/state
mount -o remount,ro,bind /mnt
mount -o remount,ro,bind /
mount -t tmpfs tmpfs /tmp
cd /
exec env HOME=/tmp TMPDIR=/tmp PIPELINE_STATE_DIR=/mnt/state "$@"
"""


def pod_view_available() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs tmpfs /mnt && mount -o remount,ro,bind /"],
                           capture_output=True, text=True)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(not pod_view_available(),
                                reason="needs root and mount namespaces (unshare -m) to make / read-only")


def in_pod_view(state, *command, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    environ.update(STATE=str(state), MLFLOW_DISABLE_TELEMETRY="true", TQDM_DISABLE="1", PYTHONDONTWRITEBYTECODE="1",
                   PIPELINE_HOLDOUT_DAYS="4", PIPELINE_MAX_EPOCHS="12", PIPELINE_BOOTSTRAP_RESAMPLES="200", **env)
    return subprocess.run(["unshare", "-m", "--propagation", "private", "bash", "-c", POD_VIEW, "pod-view", *command],
                          capture_output=True, text=True, env=environ, timeout=900)


def test_the_view_is_read_only_but_for_tmp_and_the_state_folder(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    outside = Path(__file__).parent / f"written-from-a-pod-view-{os.getpid()}"  # beside this test, in the checkout
    out = in_pod_view(state, "bash", "-c", f"touch {outside}; touch /usr/x; touch /mnt/x; "
                                           "touch /tmp/ok /mnt/state/ok && echo wrote")
    assert out.stderr.count("Read-only file system") == 3, out.stderr
    assert out.stdout.strip() == "wrote" and (state / "ok").exists() and not outside.exists()


def job(state, *args):
    out = in_pod_view(state, sys.executable, "-m", "jobs", *args)
    assert out.returncode == 0, f"{args[0]} on a read-only root:\n{out.stderr[-3000:]}"
    return out


def test_the_whole_chain_writes_only_to_tmp_and_the_state_folder(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    job(state, "generate", "--date", END, "--days", "12", "--rows-per-day", "700")
    job(state, "ingest", "--date", END, "--run-id", "r1")
    job(state, "validate", "--date", END, "--run-id", "r1")
    job(state, "features", "--start", "2026-04-09", "--date", END)
    trained = job(state, "train", "--date", END)
    version = trained.stdout.split('"model_version": "')[1].split('"')[0]
    job(state, "evaluate", "--date", END, "--model-version", version)
    job(state, "promote", "--model-version", version)
    job(state, "score", "--date", END)
    job(state, "drift", "--date", END)
    # What they wrote is where the next pod (and the test) finds it: the lake and the registry.
    assert (state / "lake" / "predictions").is_dir() and (state / "lake" / "reports").is_dir()
