"""Raw -> bronze -> silver/quarantine on a temporary lake: nothing lost, nothing twice."""

import gzip
import hashlib

import pandas as pd
import pytest

from jobs.devkit.generate import generate_day, inject_bad_rows
from jobs.settings import get_settings
from jobs.shared import layout
from jobs.shared.result import DataRejected
from jobs.steps.ingest import ingest
from jobs.steps.validate import validate_batch
from jobs.storage import tables
from jobs.storage.ledger import read_ledger
from jobs.storage.raw import FileRejected, parse_raw

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
    kept = layout.quarantined_file("run1", key, hashlib.sha256(data).hexdigest())
    reason = lake.read_json(kept + ".reason.json")
    assert reason["rule"] == rule and lake.read_bytes(kept) == data
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
    from jobs.quality.contract import row_failures
    from jobs.shared.result import JobError

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


@pytest.mark.parametrize(("timestamp", "why"), [
    ("2099-01-01T00:00:00", "decades in the future"),
    ("1970-01-01T00:00:00", "epoch zero"),
    ("2026-05-11T01:00:00", "after the partition's day, beyond the clock skew"),
    ("2026-04-20T12:00:00", "older than the late-delivery window"),
])
def test_implausible_timestamps_are_quarantined_not_landed(lake, timestamp, why):
    day = generate_day(DATE, 100).astype(object)
    day.loc[4, "timestamp"] = timestamp
    deliver(lake, day, "a.csv")
    _, result = run(lake, "run1")
    q = quarantined(lake)
    assert result["rows_silver"] == 99 and list(q["transaction_id"]) == [day.loc[4, "transaction_id"]], why
    assert q["_reason"].iloc[0] == "timestamp lies within the delivery window of its date= partition"
    assert tables.partitions(lake, layout.SILVER_TRANSACTIONS) == [DATE]  # no date=2099-01-01 partition


def test_late_rows_within_the_window_land_on_their_own_date(lake):
    day = generate_day(DATE, 50).astype(object)
    day.loc[0, "timestamp"] = "2026-05-07T09:00:00"  # three days late: normal
    day.loc[1, "timestamp"] = "2026-05-11T00:10:00"  # ten minutes past midnight: clock skew
    deliver(lake, day, "a.csv")
    _, result = run(lake, "run1")
    assert result["rows_silver"] == 50
    assert tables.partitions(lake, layout.SILVER_TRANSACTIONS) == ["2026-05-07", DATE, "2026-05-11"]


@pytest.mark.parametrize(("data", "rule", "says"), [
    (b"transaction_id,card_id,amount,amount\n1,2,3,4\n", "duplicate_columns", "['amount'] more than once"),
    (b"transaction_id,,amount\n1,2,3\n", "unreadable_header", "have no name"),
    (b'{"transaction_id": "a", "amount": 1, "amount": 2}\n', "duplicate_columns", "['amount']"),
])
def test_header_defects_reject_the_file_with_a_reason_that_says_so(lake, data, rule, says):
    deliver(lake, data, "h.csv" if data[:1] != b"{" else "h.jsonl")
    with pytest.raises(DataRejected, match=rule) as err:
        run(lake, "run1")
    assert says in str(err.value)


def test_json_lines_and_csv_with_a_byte_order_mark_are_read_correctly(lake):
    day = generate_day(DATE, 30)
    bom = b"\xef\xbb\xbf"
    deliver(lake, bom + day.iloc[:15].to_json(orient="records", lines=True).encode(), "a.jsonl")
    deliver(lake, bom + day.iloc[15:].to_csv(index=False).encode(), "b.csv")
    _, result = run(lake, "run1")
    assert result["rows_silver"] == 30 and result["rows_quarantined"] == 0
    assert sorted(tables.read(lake, layout.SILVER_TRANSACTIONS)["transaction_id"]) == sorted(day["transaction_id"])


def test_oversized_text_is_quarantined_and_extra_columns_are_ignored_and_recorded(lake):
    day = generate_day(DATE, 20).astype(object)
    day.loc[2, "merchant_category"] = "x" * 10_000_000  # a 10 MB field
    day["loyalty_tier"] = "gold"  # a column the contract does not know
    deliver(lake, day, "a.csv")
    _, result = run(lake, "run1")
    q = quarantined(lake)
    assert result["rows_silver"] == 19 and q["_reason"].tolist() == ["merchant_category is 1 to 64 characters"]
    assert "loyalty_tier" not in tables.read(lake, layout.SILVER_TRANSACTIONS).columns
    (entry,) = read_ledger(lake)
    assert entry["detail"] == "extra columns ignored: loyalty_tier"


def test_a_stale_claim_is_taken_over_by_exactly_one_run(lake):
    from jobs.steps.ingest import claim

    deliver(lake, generate_day(DATE, 10), "a.csv")
    key = layout.raw_object(DATE, "a.csv")
    ckey = layout.claim(key, "f" * 64)
    assert claim(lake, key, "f" * 64, "crashed", ttl_hours=6) is None
    stale = lake.read_bytes(ckey)  # two runs read the same stale claim...
    assert claim(lake, key, "f" * 64, "next-1", ttl_hours=0) is None  # ...the first replaces it...
    # ...and the second's compare-and-set, still based on the stale claim it read, is refused.
    assert not lake.replace_if_unchanged(ckey, stale, b'{"run_id": "next-2"}')
    assert lake.read_json(ckey)["run_id"] == "next-1"
    assert claim(lake, key, "f" * 64, "next-2", ttl_hours=6) == "next-1"  # fresh: held by next-1


def test_ledger_as_json_lines(lake, monkeypatch):
    import json
    import subprocess
    import sys

    deliver(lake, generate_day(DATE, 25), "a.csv")
    deliver(lake, b"transaction_id,amount\n\x00\xff,1\n\xfe,2\n", "bad.csv")
    with pytest.raises(DataRejected):
        run(lake, "run1")
    out = subprocess.run([sys.executable, "-m", "jobs", "ledger", "--format", "json"], capture_output=True, text=True,
                         env={**__import__("os").environ, "PIPELINE_LAKE_URI": lake.uri})
    lines = [json.loads(x) for x in out.stdout.splitlines() if not x.startswith("::")]
    assert out.returncode == 0 and len(lines) == 2
    by_key = {e["key"].rsplit("/", 1)[-1]: e for e in lines}
    assert set(by_key["a.csv"]) >= {"key", "sha256", "status", "rows_delivered", "rows_silver", "rows_quarantined",
                                    "broken_rules", "detail", "run_id"}
    assert (by_key["a.csv"]["status"], by_key["a.csv"]["rows_silver"], by_key["a.csv"]["run_id"]) == ("ingested", 25,
                                                                                                      "run1")
    assert by_key["bad.csv"]["status"] == "rejected_file" and by_key["bad.csv"]["broken_rules"] == {"not_utf8": 2}
    # A process that read the tables exits with 0, also with many Arrow threads. Arrow threads
    # calling into delta-rs's filesystem (written in Python) during the interpreter's shutdown
    # aborted the process (134) after a successful step: CI met it here, one run in twelve on a
    # loaded machine even with unthreaded scans (apache/arrow#34314). The files are read through
    # the lake's native Arrow filesystem now (test_tables pins that).
    script = ("from jobs.shared import layout; from jobs.storage import tables; "
              "from jobs.storage.lake import get_lake; lake = get_lake(); "
              "[tables.read(lake, t) for t in (layout.SILVER_TRANSACTIONS, layout.QUARANTINE_ROWS, layout.LEDGER)]")
    env = {**__import__("os").environ, "PIPELINE_LAKE_URI": lake.uri, "OMP_NUM_THREADS": "32",
           "ARROW_IO_THREADS": "32"}
    runs = [subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
            for _ in range(12)]
    assert [r.returncode for r in runs] == [0] * 12, next(r.stderr for r in runs if r.returncode)


def test_good_objects_land_when_another_object_of_the_batch_is_rejected(lake):
    deliver(lake, generate_day(DATE, 60), "good.csv")
    deliver(lake, inject_bad_rows(generate_day(DATE, 40, delivery="x"), 20), "bad.csv")
    ingest(lake, DATE, "run1")
    result = validate_batch(lake, "run1", get_settings().expectations_dir, 0.05, fail_on_rejection=False)
    assert result["silver_dates"] == [DATE] and result["rows_silver"] == 60
    assert [r["key"].rsplit("/", 1)[-1] for r in result["rejected"]] == ["bad.csv"]
    assert "bad.csv: rejected_rows, 40 rows delivered, 40 quarantined" in result["rejection_message"]
    assert "1 date(s) of good rows landed in silver and flow on: 2026-05-10" in result["rejection_message"]


def test_an_ingested_object_is_never_downloaded_again(lake, monkeypatch):
    """The listing (key + size + ETag / mtime) decides what is new: a run that finds nothing new
    reads no raw object, and a rewritten object (new content under the same key) is read again."""
    for d in ("2026-05-08", "2026-05-09", DATE):
        deliver(lake, generate_day(d, 30), f"{d}.csv", date=d)
    run(lake, "run1")
    reads = []
    real, real_stream = lake.read_bytes, lake._reading

    def counting(key):
        reads.append(key)
        return real(key)

    def counting_stream(key):  # downloads and streamed hashes
        reads.append(key)
        return real_stream(key)

    monkeypatch.setattr(lake, "read_bytes", counting)
    monkeypatch.setattr(lake, "_reading", counting_stream)
    staged, _ = run(lake, "run2")
    assert staged["objects"] == 0
    assert not [k for k in reads if k.startswith(layout.RAW_TRANSACTIONS)], reads
    deliver(lake, generate_day(DATE, 31, delivery="fix"), f"{DATE}.csv")  # same key, new content
    reads.clear()
    staged, result = run(lake, "run3")
    assert staged["objects"] == 1 and result["rows_silver"] == 31
    assert [k for k in reads if k.startswith(layout.RAW_TRANSACTIONS)] == [layout.raw_object(DATE, f"{DATE}.csv")]


def test_oversized_objects_and_gzip_bombs_are_rejected_whole_without_exhausting_memory(lake):
    day = generate_day(DATE, 3000)
    big = day.to_csv(index=False).encode()  # ~300 KB, above the limit set below; the bomb is ~65 KB
    deliver(lake, big, "big.csv")
    deliver(lake, gzip.compress(b"0" * (64 << 20)), "bomb.csv.gz")  # 64 MB of output from ~64 KB
    deliver(lake, gzip.compress(day.iloc[:10].to_csv(index=False).encode()), "small.csv.gz")
    staged = ingest(lake, DATE, "run1", max_object_bytes=len(big) - 1, max_decompressed_bytes=8 << 20)
    assert staged["files_rejected"] == [layout.raw_object(DATE, "big.csv"), layout.raw_object(DATE, "bomb.csv.gz")]
    with pytest.raises(DataRejected) as err:
        validate_batch(lake, "run1", get_settings().expectations_dir, 0.05)
    message = str(err.value)
    assert f"{len(big):,} bytes > {len(big) - 1:,} (the limit, PIPELINE_MAX_OBJECT_MB)" in message
    assert "decompresses to more than 8,388,608 bytes" in message
    kept = layout.quarantined_file("run1", layout.raw_object(DATE, "big.csv"), hashlib.sha256(big).hexdigest())
    reason = lake.read_json(kept + ".reason.json")
    assert reason["rule"] == "too_large" and reason["kept_at"] == lake.uri_of(layout.raw_object(DATE, "big.csv"))
    assert not lake.exists(kept)  # not copied: raw keeps it
    by_key = {e["key"].rsplit("/", 1)[-1]: e for e in read_ledger(lake)}
    assert by_key["big.csv"]["sha256"] == __import__("hashlib").sha256(big).hexdigest()  # hashed as a stream
    assert by_key["small.csv.gz"]["rows_silver"] == 10
    assert ingest(lake, DATE, "run2")["objects"] == 0  # rejected objects are not looked at again


def _messy_delivery() -> tuple[bytes, str]:
    """300 rows with bad values, ids repeated far apart (other batches), a long and a short line."""
    day = inject_bad_rows(generate_day(DATE, 300, delivery="messy"), 6).astype(object)
    day.loc[250, "transaction_id"] = day.loc[5, "transaction_id"]  # a copy 245 rows later
    day.loc[290, "transaction_id"] = day.loc[5, "transaction_id"]
    day.loc[120, "transaction_id"] = day.loc[119, "transaction_id"]  # a copy in the next row
    lines = day.to_csv(index=False).splitlines()
    lines.insert(40, lines[40] + ",an,extra,field")  # 14 fields: malformed
    lines.insert(80, ",".join(lines[80].split(",")[:5]))  # 5 fields: read as a row with nulls
    return ("\n".join(lines) + "\n").encode(), day.loc[5, "transaction_id"]


def _outcome(lake):
    s, q = silver(lake), quarantined(lake)
    return (sorted(zip(s["transaction_id"], s["_source_row"], strict=True)),
            sorted(zip(q["_source_row"], q["transaction_id"].fillna(""), q["_reason"], strict=True)))


@pytest.mark.parametrize("lake", ["file"], indirect=True)
def test_the_batch_size_never_changes_the_outcome_and_repeats_are_found_across_batches(lake, tmp_path):
    """Parsing and validation stream in batches; the result is the same for any batch size."""
    from jobs.storage.lake import open_lake

    data, repeated = _messy_delivery()
    outcomes = []
    for batch_rows in (1_000_000, 64, 7):
        lk = open_lake((tmp_path / f"lake-{batch_rows}").as_uri())
        deliver(lk, data, "messy.csv")
        ingest(lk, DATE, "run1", batch_rows=batch_rows)
        result = validate_batch(lk, "run1", get_settings().expectations_dir, 0.5, batch_rows=batch_rows)
        outcomes.append(_outcome(lk))
        assert result["rows_delivered"] == 302 == result["rows_silver"] + result["rows_quarantined"]
    assert outcomes[0] == outcomes[1] == outcomes[2]
    landed, quarantine = outcomes[0]
    reasons = {row: reason for row, _, reason in quarantine}
    unique_rule = "a transaction id appears once"
    copies = sorted(row for row, tid, reason in quarantine if tid == repeated)
    assert len(copies) == 2 and all(unique_rule in reasons[r] for r in copies)
    assert [tid for tid, _ in landed].count(repeated) == 1  # the first copy landed
    malformed = quarantined(lk)
    long_line = malformed[malformed["_reason"].str.startswith("malformed_row")]
    assert len(long_line) == 1 and long_line["_raw_line"].iloc[0].endswith(",an,extra,field")
    assert "the line has 14 fields, the header 11" in long_line["_reason"].iloc[0]
    short = malformed[malformed["_raw_line"].notna() & ~malformed["_reason"].str.startswith("malformed_row")]
    assert len(short) == 1 and "must be present" in short["_reason"].iloc[0]


@pytest.mark.parametrize("lake", ["file"], indirect=True)
def test_each_format_streams_in_batches_with_the_same_rows(lake, tmp_path):
    """CSV, JSON lines, Parquet and gzip are parsed batch by batch; rows and numbering match the whole read."""
    from jobs.storage.raw import RawFile

    day = generate_day(DATE, 20_000)  # 2.6 MB of CSV: Arrow parses CSV in blocks of at least 1 MB
    csv = day.to_csv(index=False).encode()
    jsonl = day.to_json(orient="records", lines=True).encode()
    for name, data in [("a.csv", csv), ("a.jsonl", jsonl), ("a.parquet", day.to_parquet(index=False)),
                       ("a.csv.gz", gzip.compress(csv[:50_000]) + gzip.compress(csv[50_000:]))]:
        path = tmp_path / name
        path.write_bytes(data)
        with RawFile(name, path, batch_rows=3000) as raw:
            batches = list(raw.batches())
        assert len(batches) > 1, name
        ids = [t for b in batches for t in b.column("transaction_id").to_pylist()]
        assert ids == day["transaction_id"].tolist(), name
