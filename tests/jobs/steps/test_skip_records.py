"""A skip record says exactly what was read: rows committed while a step ran are built by the next run."""

import os
import subprocess
import sys
from pathlib import Path

from jobs.devkit.generate import generate_day
from jobs.settings import get_settings
from jobs.shared import layout
from jobs.steps import features
from jobs.storage import tables
from jobs.storage.lake import get_lake

ROOT = Path(__file__).resolve().parents[3]
DAY = "2026-05-10"
PREV = "2026-05-09"


def deliver_and_validate(lake, name: str, rows: int, run_id: str, day: str = DAY) -> None:
    """A delivery through the command line, in its own processes, as a concurrent DAG run would."""
    lake.write_bytes(layout.raw_object(day, name), generate_day(day, rows, delivery=name).to_csv(index=False).encode())
    for step in ("ingest", "validate"):
        subprocess.run([sys.executable, "-m", "jobs", step, "--date", DAY, "--run-id", run_id], cwd=ROOT,
                       env=os.environ.copy(), check=True, capture_output=True)


def test_rows_a_validation_commits_during_a_build_are_built_by_the_next_run(state_dir, monkeypatch):
    lake = get_lake()
    s = get_settings()
    deliver_and_validate(lake, "before.csv", 80, "r0", day=PREV)
    deliver_and_validate(lake, "first.csv", 120, "r1")
    real = features.build_features

    def racing(silver):  # while Spark plans over the snapshot it read, a validation lands more rows
        monkeypatch.setattr(features, "build_features", real)
        deliver_and_validate(lake, "late.csv", 30, "r2")
        return real(silver)

    monkeypatch.setattr(features, "build_features", racing)

    def build(start):
        return features.build_gold(lake, start, DAY, "local[2]", "1g", s.expectations_dir, run_id="b",
                                   code_version="test")

    first = build(PREV)  # a range build: it also records each day, for a later run of one day
    assert first["rows_by_date"] == {PREV: 80, DAY: 120}
    assert len(tables.read(lake, layout.SILVER_TRANSACTIONS)) == 230
    second = build(DAY)  # a record of what the build did not read would skip here, 30 rows missing for good
    assert not second.get("skipped") and second["rows"] == 150
    assert len(tables.read(lake, layout.GOLD_FEATURES, dates=[DAY])) == 150
    assert build(DAY)["skipped"]
