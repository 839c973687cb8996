"""Raw -> bronze -> silver/quarantine on a temporary lake: nothing lost, nothing twice."""

import gzip

import pandas as pd
import pytest

from jobs import layout, tables
from jobs.generate import generate_day, inject_bad_rows
from jobs.ingest import FileRejected, ingest, parse_raw, read_ledger
from jobs.result import DataRejected
from jobs.settings import get_settings
from jobs.validate import validate_batch

DATE = "2026-05-10"


def deliver(lake, frame, name, date=DATE):
    key = layout.raw_object(date, name)
    data = frame.to_csv(index=False).encode() if isinstance(frame, pd.DataFrame) else frame
    lake.write_bytes(key, data)
    return key


def run(lake, run_id, max_bad_share=0.05, date=DATE):
    staged = ingest(lake, date, run_id)
    return staged, validate_batch(lake, run_id, get_settings().expectations_dir, max_bad_share)


def silver(lake):
    return tables.read(lake, layout.SILVER_TRANSACTIONS)


def quarantined(lake):
    return tables.read(lake, layout.QUARANTINE_ROWS)


def test_clean_delivery_lands_in_silver_and_rerun_ingests_nothing(lake):
    deliver(lake, generate_day(DATE, 300), "a.csv")
    staged, result = run(lake, "run1")
    assert staged["objects"] == 1 and result["rows_silver"] == 300 and result["rows_quarantined"] == 0
    assert result["silver_dates"] == [DATE]
    docs = lake.partition_files("reports/data_docs/run1")
    assert any(k.endswith("/index.html") for k in docs)
    assert any("/validations/raw_transactions/a.csv/" in k for k in docs)  # one page per delivered object
    assert b"a.csv" in lake.read_bytes(lake.partition_file("reports/data_docs/run1", "index.html"))
    staged, result = run(lake, "run2")
    assert staged["objects"] == 0 and result["rows_delivered"] == 0
    assert len(silver(lake)) == 300
    assert [e["status"] for e in read_ledger(lake)] == ["ingested"]


def test_few_bad_rows_are_quarantined_with_reasons_and_nothing_is_lost(lake):
    raw = inject_bad_rows(generate_day(DATE, 400), 8)
    deliver(lake, raw, "a.csv")
    _, result = run(lake, "run1")
    q = quarantined(lake)
    assert result["rows_silver"] + result["rows_quarantined"] == 400
    assert len(silver(lake)) == 392 and len(q) == 8
    assert set(q["_reason"]) == {
        "amount is positive and below 1,000,000", "currency is one we settle in",
        "card_id must be present", "channel is pos, online or atm",
    }
    # Quarantine keeps the rows exactly as delivered.
    assert set(q["transaction_id"]) <= set(raw["transaction_id"])


def test_too_many_bad_rows_reject_the_delivery_with_a_clear_message(lake):
    key = deliver(lake, inject_bad_rows(generate_day(DATE, 200), 40), "bad.csv")
    before = lake.read_bytes(key)
    with pytest.raises(DataRejected) as err:
        run(lake, "run1")
    message = str(err.value)
    assert lake.uri_of(key) in message
    assert "200 rows delivered, 200 quarantined" in message
    assert "currency is one we settle in (10 rows)" in message
    assert len(quarantined(lake)) == 200 and silver(lake).empty
    assert lake.read_bytes(key) == before  # raw is never modified


@pytest.mark.parametrize(
    ("name", "data", "rule"),
    [
        ("garbage.csv", b"\x00\xff\xfe binary \x00\x01", "not_utf8"),
        ("empty.csv", b"", "empty_file"),
        ("header_only.csv", b"transaction_id,card_id\n", "empty_file"),
        ("columns.csv", b"a,b,c\n1,2,3\n", "missing_columns"),
        ("broken.csv.gz", b"\x1f\x8b\x08\x00not really gzip", "corrupt_gzip"),
        ("notes.txt", b"hello\n", "unknown_format"),
    ],
)
def test_unusable_files_are_quarantined_whole(lake, name, data, rule):
    key = deliver(lake, data, name)
    with pytest.raises(DataRejected, match=rule):
        run(lake, "run1")
    reason = lake.read_json(layout.quarantined_file("run1", name) + ".reason.json")
    assert reason["rule"] == rule and lake.read_bytes(layout.quarantined_file("run1", name)) == data
    assert lake.exists(key)


def test_repeated_delivery_never_duplicates_silver(lake):
    day = generate_day(DATE, 150)
    deliver(lake, day, "first.csv")
    run(lake, "run1")
    deliver(lake, day.iloc[:50], "again.csv")  # a late re-send of rows already ingested
    _, result = run(lake, "run2")
    assert result["rows_quarantined"] == 50 and result["rows_silver"] == 0
    assert silver(lake)["transaction_id"].is_unique and len(silver(lake)) == 150
    assert set(quarantined(lake)["_reason"]) == {"transaction id already in silver (repeated delivery)"}


def test_formats_are_detected():
    day = generate_day(DATE, 20)
    jsonl = day.to_json(orient="records", lines=True).encode()
    for name, data in [("a.csv", day.to_csv(index=False).encode()), ("a.jsonl", jsonl),
                       ("a.jsonl.gz", gzip.compress(jsonl)), ("a.parquet", day.to_parquet(index=False))]:
        frame = parse_raw(name, data)
        assert len(frame) == 20 and frame["transaction_id"].tolist() == day["transaction_id"].tolist(), name
    with pytest.raises(FileRejected):
        parse_raw("x.csv", b'transaction_id,amount\n"unterminated,1\n')
    # Content wins over the name: compressed without .gz, Parquet or JSON lines under other names.
    csv = day.to_csv(index=False).encode()
    for name, data in [("a.csv", gzip.compress(csv)), ("export.dat", day.to_parquet(index=False)),
                       ("a.csv", jsonl), ("feed", csv), ("a.csv", b"\xef\xbb\xbf" + csv)]:
        assert parse_raw(name, data)["transaction_id"].tolist() == day["transaction_id"].tolist(), name
    with pytest.raises(FileRejected, match="truncated"):
        parse_raw("a.parquet", day.to_parquet(index=False)[:-100])
    with pytest.raises(FileRejected, match="named .gz but the content is not gzip"):
        parse_raw("a.csv.gz", csv)


def test_truncated_delivery_quarantines_the_cut_row(lake):
    data = generate_day(DATE, 100).to_csv(index=False).encode()
    deliver(lake, data[: data.rindex(b",2026-05-10T")], "cut.csv")  # cut inside the last row
    _, result = run(lake, "run1")
    q = quarantined(lake)
    assert result["rows_silver"] == 99 and len(q) == 1
    assert "timestamp must be present and well-formed" in q["_reason"].iloc[0]


def test_garbled_values_are_row_failures_with_the_broken_rule(lake):
    day = generate_day(DATE, 100).astype(object)
    day.loc[3, "amount"] = "12,50 EUR"
    day.loc[7, "timestamp"] = "yesterday"
    day.loc[9, "is_fraud"] = "maybe"
    deliver(lake, day, "garbled.csv")
    _, result = run(lake, "run1")
    reasons = dict(zip(quarantined(lake)["transaction_id"], quarantined(lake)["_reason"], strict=True))
    assert result["rows_silver"] == 97
    assert reasons[day.loc[3, "transaction_id"]] == "amount must be present and well-formed"
    assert reasons[day.loc[7, "transaction_id"]] == "timestamp must be present and well-formed"
    assert reasons[day.loc[9, "transaction_id"]].startswith("is_fraud must be present and well-formed")


def test_same_key_with_new_content_is_a_new_delivery(lake):
    """Policy: a changed object is ingested again; new ids land, ids already in silver are repeats."""
    first = generate_day(DATE, 100)
    deliver(lake, first, "daily.csv")
    run(lake, "run1")
    corrected = pd.concat([first.iloc[:60], generate_day(DATE, 30, delivery="fix")], ignore_index=True)
    deliver(lake, corrected, "daily.csv")
    staged, result = run(lake, "run2")
    assert staged["objects"] == 1
    assert result["rows_silver"] == 30 and result["rows_quarantined"] == 60
    assert len(silver(lake)) == 130 and silver(lake)["transaction_id"].is_unique
    assert [e["status"] for e in read_ledger(lake)] == ["ingested", "ingested"]


def test_a_contract_never_shrinks_silently():
    from jobs.result import JobError
    from jobs.validate import row_failures

    suite = {"name": "typo", "expectations": [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "amount"}},
        {"type": "expect_column_values_to_be_positive_please", "kwargs": {"column": "amount"}},
    ]}
    with pytest.raises(JobError, match="expect_column_values_to_be_positive_please"):
        row_failures(pd.DataFrame({"amount": [1.0]}), suite)


def test_overlapping_runs_never_ingest_the_same_object_twice(lake):
    deliver(lake, generate_day(DATE, 120), "a.csv")
    first = ingest(lake, DATE, "run-a")
    second = ingest(lake, DATE, "run-b")  # a second sensor firing while run-a is still going
    assert first["objects"] == 1 and second["objects"] == 0 and second["skipped_claimed_elsewhere"] == 1
    retry = ingest(lake, DATE, "run-a")  # Airflow retries run-a's task: same run, same object
    assert retry["objects"] == 1
    validate_batch(lake, "run-a", get_settings().expectations_dir, 0.05)
    validate_batch(lake, "run-b", get_settings().expectations_dir, 0.05)
    assert len(silver(lake)) == 120 and quarantined(lake).empty
    assert len(read_ledger(lake)) == 1


def test_a_stale_claim_is_taken_over(lake):
    deliver(lake, generate_day(DATE, 50), "a.csv")
    ingest(lake, DATE, "crashed-run")
    assert ingest(lake, DATE, "next-run", claim_ttl_hours=6)["objects"] == 0
    assert ingest(lake, DATE, "next-run", claim_ttl_hours=0)["objects"] == 1
