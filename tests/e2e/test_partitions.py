"""Dates are Airflow partition keys: backfill, asset-driven partitions and clearing one partition,
under a real scheduler (``airflow standalone``) and through the REST API, as a person would.

1. A backfill of ``ingest_transactions`` over two days (``POST /api/v2/backfills``) creates one
   run per day, keyed by the day; each ingests its day's delivery.
2. Ingestion publishes one ``silver_transactions`` partition per day; ``build_features`` (a
   partitioned-asset DAG) gets one run per key and builds exactly that day.
3. ``build_features`` is backfillable too (the stock asset-driven timetable is not), and
   ``clearDagRuns`` with a partition key recomputes exactly that partition.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from standalone import airflow_standalone, poll_db, rest_api, wait_for_api

from jobs.devkit.generate import generate_day

pytestmark = pytest.mark.e2e

DAYS = ["2026-03-02", "2026-03-03"]


def runs(conn, dag_id: str) -> list[tuple]:
    """The DAG's runs for the test's days (the nightly run for yesterday waits for a delivery)."""
    return conn.execute("select partition_key, run_type, state from dag_run where dag_id = ? and partition_key "
                        f"in ({', '.join('?' * len(DAYS))}) order by partition_key, id", (dag_id, *DAYS)).fetchall()


def settled(rows: list[tuple]) -> bool:
    return bool(rows) and not any(state in ("queued", "running") for *_, state in rows)


@pytest.fixture
def inbox():
    from smtpbox import smtp_inbox

    with smtp_inbox() as box:
        yield box


def test_backfill_partitions_and_clear_one_through_the_rest_api(tmp_path, inbox):
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PIPELINE_"))}
    # The nightly run for yesterday (no delivery: its sensor waits) misses a one-minute deadline.
    env.update(PATH=f"{Path(sys.executable).parent}:{env['PATH']}", PIPELINE_STATE_DIR=str(state),
               PIPELINE_PREDICTIONS_DEADLINE_MINUTES="1", **inbox.env())
    raw = state / "lake" / "raw" / "transactions"
    for day in DAYS:
        (raw / f"date={day}").mkdir(parents=True)
        generate_day(day, 150).to_csv(raw / f"date={day}" / "t.csv", index=False)
    db = state / "airflow" / "airflow.db"

    with airflow_standalone(env, tmp_path / "standalone.log") as proc:
        wait_for_api(proc)
        api = rest_api(proc, state / "airflow")
        parsed = poll_db(db, proc, lambda c: {r[0] for r in c.execute("select dag_id from dag")},
                         lambda ids: {"ingest_transactions", "build_features"} <= ids, timeout=180)
        assert {"ingest_transactions", "build_features"} <= (parsed or set())
        dags = {d: api.call("GET", f"/api/v2/dags/{d}") for d in ("ingest_transactions", "build_features")}
        # What the UI asks before it offers Backfill: both DAGs are partitioned and backfillable.
        assert all(d["timetable_partitioned"] and d["is_backfillable"] for d in dags.values()), dags

        backfill = api.call("POST", "/api/v2/backfills", {
            "dag_id": "ingest_transactions", "from_date": f"{DAYS[0]}T00:00:00Z",
            "to_date": f"{DAYS[-1]}T00:00:00Z", "max_active_runs": 2})
        assert backfill["dag_id"] == "ingest_transactions"

        def both(conn):
            return runs(conn, "ingest_transactions"), runs(conn, "build_features")

        ingest_runs, feature_runs = poll_db(
            db, proc, both, lambda r: settled(r[0]) and len(r[1]) == len(DAYS) and settled(r[1]), timeout=600)
        log = (tmp_path / "standalone.log").read_text()[-5000:]
        assert ingest_runs == [(d, "backfill", "success") for d in DAYS], f"{ingest_runs}\n{log}"
        # One features run per day partition that ingestion published, keyed by the day.
        assert feature_runs == [(d, "asset_triggered", "success") for d in DAYS], f"{feature_runs}\n{log}"

        def gold_versions(conn, db=None):
            if conn is None:
                import sqlite3

                with sqlite3.connect(db) as fresh:
                    return gold_versions(fresh)
            return conn.execute(
                "select r.partition_key, x.value from xcom x join dag_run r on r.id = x.dag_run_id "
                "where r.dag_id = 'build_features' and x.task_id = 'features' and x.key = 'return_value' "
                "order by r.partition_key").fetchall()

        first = poll_db(db, proc, gold_versions, lambda rows: len(rows) == len(DAYS), timeout=30, every=1)
        built = {key: json.loads(value) for key, value in first}
        # Each run built its own day (the first day's run also the second when that one was built before
        # the first day's rows landed: its look-back was stale).
        assert [built[d]["dates"][0] for d in DAYS] == DAYS and built[DAYS[-1]]["dates"] == [DAYS[-1]], built

        # Clear one partition: its run is re-queued and runs again, and, its inputs unchanged, the
        # features step does not rebuild the same day (saying so); the work being this run's own,
        # its asset event goes out again (downstream may never have heard of it).
        cleared = api.call("POST", "/api/v2/dags/build_features/clearDagRuns",
                           {"partition_key": DAYS[-1], "dry_run": False})
        assert cleared.get("total_entries", 0) >= 1, cleared

        def retried(conn):
            return conn.execute(
                "select r.partition_key, t.try_number, t.state from task_instance t join dag_run r "
                "on r.run_id = t.run_id and r.dag_id = t.dag_id where t.dag_id = 'build_features' "
                "and t.task_id = 'features' order by r.partition_key").fetchall()

        after = poll_db(db, proc, retried, lambda rows: (DAYS[-1], 2, "success") in rows, timeout=300)
        assert after == [(DAYS[0], 1, "success"), (DAYS[-1], 2, "success")], after
        again = {key: json.loads(value) for key, value in gold_versions(conn=None, db=db)}
        assert "unchanged since run" in again[DAYS[-1]]["skip_reason"]
        events = poll_db(db, proc, lambda c: c.execute(
            "select e.partition_key from asset_event e join asset a on a.id = e.asset_id "
            "where a.name = 'gold_features' and e.partition_key = ?", (DAYS[-1],)).fetchall(),
            lambda rows: len(rows) == 2, timeout=60, every=1)
        assert len(events) == 2, events  # the cleared run told downstream again

        # A backfill of the partitioned-asset DAG itself, forced (its conf): the day is rebuilt.
        api.call("POST", "/api/v2/backfills", {
            "dag_id": "build_features", "from_date": f"{DAYS[0]}T00:00:00Z", "to_date": f"{DAYS[0]}T00:00:00Z",
            "reprocess_behavior": "completed", "dag_run_conf": {"force": True}})
        final = poll_db(db, proc, lambda c: runs(c, "build_features"),
                        lambda r: any(t == "backfill" for _, t, _ in r) and settled(r), timeout=300)
        assert (DAYS[0], "backfill", "success") in final, final
        forced = poll_db(db, proc, retried, lambda rows: len(rows) == 3, timeout=30, every=1)
        assert (DAYS[0], 1, "success") in forced and forced.count((DAYS[0], 1, "success")) == 2, forced

        # Late rows for the first day, for cards that spend on the second: ingesting them rebuilds the first
        # day's features and the second's (its 24 h / 7 d windows hold them), and both days are scored again.
        def seven_day_counts(day):
            from deltalake import DeltaTable

            gold = DeltaTable(str(state / "lake" / "gold" / "features")).to_pandas(filters=[("date", "=", day)])
            return gold["card_txn_count_7d"].sum()

        before = seven_day_counts(DAYS[-1])
        def score_runs_by_day(conn):
            found = runs(conn, "score_transactions")
            return {d: sum(1 for k, _, _ in found if k == d) for d in DAYS}, settled(found)

        scored_before = poll_db(db, proc, score_runs_by_day, lambda r: True, timeout=5)[0]
        second = generate_day(DAYS[-1], 150)  # the same seed: the cards of the second day's delivery
        late = generate_day(DAYS[0], 40, delivery="late")
        late["card_id"] = second["card_id"].iloc[:40].to_numpy()
        late.to_csv(raw / f"date={DAYS[0]}" / "late.csv", index=False)
        api.call("POST", "/api/v2/dags/ingest_transactions/dagRuns",
                 {"dag_run_id": "late_rows", "logical_date": None, "conf": {"date": DAYS[0]}})

        def rebuilt(conn):
            return conn.execute(
                "select x.value from xcom x join dag_run r on r.id = x.dag_run_id where r.dag_id = 'build_features' "
                "and x.task_id = 'features' and x.key = 'return_value' and r.partition_key = ? order by r.id",
                (DAYS[0],)).fetchall()

        after_late = poll_db(db, proc, rebuilt, lambda rows: len(rows) >= 3, timeout=300)
        late_build = json.loads(after_late[-1][0])
        assert late_build["dates"] == DAYS and not late_build.get("skipped"), late_build
        assert seven_day_counts(DAYS[-1]) > before  # the second day's windows now hold the late rows
        scored, _ = poll_db(db, proc, score_runs_by_day,
                            lambda r: r[1] and all(r[0][d] > scored_before[d] for d in DAYS), timeout=300)
        assert all(scored[d] > scored_before[d] for d in DAYS), (scored_before, scored)  # both days scored again

        # The DeadlineAlert of the nightly run: mailed by the triggerer through the SMTP notifier.
        yesterday = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
        late = inbox.wait_for(f"LATE: predictions for {yesterday}", timeout=180)
        assert "ingest_transactions" in late
