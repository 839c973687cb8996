"""The pod's view (tests/podview.py) is what it claims: read-only but for /tmp and the state folder.

The whole job chain runs in it, as the jobs' storage identity, in tests/e2e/test_lake_identities.py:
every job on a read-only root, as the Kubernetes runner's pods run them.
"""

from __future__ import annotations

import os
from pathlib import Path

import podview


def test_the_view_is_read_only_but_for_tmp_and_the_state_folder(tmp_path):
    podview.require()
    state = tmp_path / "state"
    state.mkdir()
    outside = Path(__file__).parent / f"written-from-a-pod-view-{os.getpid()}"  # beside this test, in the checkout
    out = podview.run(state, "bash", "-c", f"touch {outside}; touch /usr/x; touch /mnt/x; "
                                           "touch /tmp/ok /mnt/state/ok && echo wrote")
    assert out.stderr.count("Read-only file system") == 3, out.stderr
    assert out.stdout.strip() == "wrote" and (state / "ok").exists() and not outside.exists()
