"""S3 fault semantics over real HTTP: only 404 means absent; every other error fails the job.

A fault-injecting proxy (tests/faultproxy.py) sits between the jobs (boto3 and delta-rs) and a
local S3 server. Each test injects a fault where the real one would hit, checks that the job
fails with a message naming what it could not read or write (never "no rows", never a silent
success), then lifts the fault, retries as Airflow would, and checks that nothing was lost or
duplicated: silver, quarantine and the ledger equal those of a run that never saw a fault.
"""

import pytest

from jobs.devkit.generate import generate_day
from jobs.settings import get_settings
from jobs.shared import layout
from jobs.shared.result import DataRejected
from jobs.steps.ingest import ingest
from jobs.steps.validate import validate_batch
from jobs.storage import tables
from jobs.storage.lake import StorageUnavailable
from jobs.storage.ledger import read_ledger

DATE = "2026-07-01"
SILVER_OBJECTS = r"/silver/transactions/"  # object GETs/PUTs of the silver table (log and data files)


def deliver(lake, rows, name, seed_name=""):
    lake.write_bytes(layout.raw_object(DATE, name), generate_day(DATE, rows, delivery=seed_name or name)
                     .to_csv(index=False).encode())


def validate(lake, run_id):
    return validate_batch(lake, run_id, get_settings().expectations_dir, 0.05)


def second_delivery_staged(lake, rows):
    """A first delivery of the day fully ingested, a second one staged by run r2 (not validated yet)."""
    deliver(lake, rows, "first.csv")
    ingest(lake, DATE, "r1")
    validate(lake, "r1")
    deliver(lake, rows, "second.csv")
    ingest(lake, DATE, "r2")


def assert_two_clean_deliveries(lake, rows):
    silver = tables.read(lake, layout.SILVER_TRANSACTIONS)
    assert len(silver) == 2 * rows and silver["transaction_id"].is_unique
    ledger = read_ledger(lake)
    counts = sorted((e["rows_delivered"], e["rows_silver"], e["rows_quarantined"]) for e in ledger)
    assert counts == [(rows, rows, 0)] * 2
    assert tables.read(lake, layout.QUARANTINE_ROWS).empty
    assert set(silver.groupby("_source_key").size()) == {rows}


@pytest.mark.parametrize("fault", [503, 500, 403, "reset"])
def test_a_failed_read_of_silver_fails_validate_and_the_retry_loses_nothing(faulty_s3, fault):
    """The review's case: two deliveries for one day; while silver's GETs fail, the second validate
    must not see an empty silver and succeed. It fails, naming the table; the retry completes."""
    lake, proxy = faulty_s3
    second_delivery_staged(lake, 300)
    rule = proxy.fail("GET", SILVER_OBJECTS, fault)
    with pytest.raises(StorageUnavailable, match="silver/transactions") as err:
        validate(lake, "r2")
    assert rule.hits >= 1
    if fault == 403:  # the store's answer is in the message, and a blind retry is not the advice
        assert "HTTP 403 AccessDenied" in str(err.value) and "retry the task" not in str(err.value), err.value
        assert "access denied" in str(err.value)
    else:
        assert "retry the task" in str(err.value)
        if fault != "reset":
            assert f"HTTP {fault}" in str(err.value), err.value
    assert len(read_ledger(lake)) == 1  # the failed run recorded nothing about the second object
    proxy.clear()
    validate(lake, "r2")  # Airflow's retry of the same run
    assert_two_clean_deliveries(lake, 300)


def test_an_upload_cut_mid_body_fails_the_merge_and_the_retry_lands_every_row_once(faulty_s3):
    lake, proxy = faulty_s3
    second_delivery_staged(lake, 200)
    rule = proxy.fail("PUT", SILVER_OBJECTS + r".*\.parquet", "reset")
    with pytest.raises(StorageUnavailable, match="silver/transactions"):
        validate(lake, "r2")
    assert rule.hits >= 1
    proxy.clear()
    validate(lake, "r2")
    assert_two_clean_deliveries(lake, 200)


@pytest.mark.parametrize("fault", [503, 403])
def test_an_unreadable_ledger_stops_ingestion_instead_of_reingesting_history(faulty_s3, fault):
    lake, proxy = faulty_s3
    deliver(lake, 100, "a.csv")
    ingest(lake, DATE, "r1")
    validate(lake, "r1")
    proxy.fail("GET", r"/_ledger/objects/", fault)
    with pytest.raises(StorageUnavailable, match="_ledger/objects"):
        ingest(lake, DATE, "r2")
    proxy.clear()
    assert ingest(lake, DATE, "r2")["objects"] == 0  # the object was ingested once, by r1


@pytest.mark.parametrize("fault", [503, 403])
def test_a_failed_claim_write_is_an_error_not_someone_elses_claim(faulty_s3, fault):
    lake, proxy = faulty_s3
    deliver(lake, 50, "a.csv")
    proxy.fail("PUT", r"/_ledger/claims/", fault)
    with pytest.raises(StorageUnavailable, match="_ledger/claims"):
        ingest(lake, DATE, "r1")
    proxy.clear()
    assert ingest(lake, DATE, "r1")["objects"] == 1


def test_only_not_found_means_absent(faulty_s3):
    lake, proxy = faulty_s3
    lake.write_bytes("zone/a.txt", b"x")
    assert lake.exists("zone/a.txt") and not lake.exists("zone/missing.txt")
    proxy.fail("HEAD,GET", r"/zone/", 503)
    with pytest.raises(StorageUnavailable, match="zone/a.txt"):
        lake.exists("zone/a.txt")
    with pytest.raises(StorageUnavailable, match="zone/a.txt"):
        lake.read_bytes("zone/a.txt")
    proxy.clear()
    proxy.fail("GET", r"list-type=2", 500)  # a failed listing is not an empty folder
    with pytest.raises(StorageUnavailable):
        lake.list("zone")
    proxy.clear()
    proxy.fail("GET", r"_delta_log", 503)
    with pytest.raises(StorageUnavailable, match="silver/transactions"):
        tables.read(lake, layout.SILVER_TRANSACTIONS)  # no table yet, but the listing failed: not "empty"


@pytest.mark.parametrize("fault", [403, 503])
def test_one_unreadable_object_never_blocks_the_others(faulty_s3, fault):
    """A key policy denies one raw object (or the store keeps failing on it): every run ingests the
    others; after max_read_attempts runs the object is rejected with the store's answer, and the
    next runs skip it. A failed listing still fails the run."""
    lake, proxy = faulty_s3
    deliver(lake, 50, "good-1.csv")
    deliver(lake, 40, "denied.csv")
    proxy.fail("GET", r"/raw/transactions/.*/denied\.csv", fault)
    first = ingest(lake, DATE, "r1", max_read_attempts=3)
    assert [d["key"].rsplit("/", 1)[-1] for d in first["unreadable_deferred"]] == ["denied.csv"]
    assert str(fault) in first["unreadable_deferred"][0]["error"]
    validate(lake, "r1")  # the good object lands; nothing is rejected yet
    assert len(tables.read(lake, layout.SILVER_TRANSACTIONS)) == 50
    assert ingest(lake, DATE, "r1", max_read_attempts=3)["objects"] == 0  # a task retry is the same attempt
    deliver(lake, 30, "good-2.csv")
    assert ingest(lake, DATE, "r2", max_read_attempts=3)["objects"] == 1
    validate(lake, "r2")
    third = ingest(lake, DATE, "r3", max_read_attempts=3)
    assert third["files_rejected"] == [layout.raw_object(DATE, "denied.csv")]
    with pytest.raises(DataRejected, match="unreadable") as err:
        validate(lake, "r3")
    assert f"HTTP {fault}" in str(err.value) and "in 3 runs" in str(err.value)
    entries = {e["key"].rsplit("/", 1)[-1]: e for e in read_ledger(lake)}
    assert entries["denied.csv"]["status"] == "rejected_file" and entries["denied.csv"]["broken_rules"] == \
        {"unreadable": 0}
    assert {k: e["rows_silver"] for k, e in entries.items()} == {"good-1.csv": 50, "good-2.csv": 30,
                                                                 "denied.csv": 0}
    assert ingest(lake, DATE, "r4")["objects"] == 0  # rejected once: never tried again
    proxy.fail("GET", r"list-type=2", 500)
    with pytest.raises(StorageUnavailable):  # listing errors still fail the run
        ingest(lake, DATE, "r5")
