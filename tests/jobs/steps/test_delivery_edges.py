"""The small classes of delivery: markers are not deliveries, rejected files never overwrite each other,
the future is refused, skip records name the code itself, reports cannot carry markup."""

import hashlib
import json
import re
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from test_ingest_validate import deliver, quarantined, run, silver

from jobs.devkit.generate import generate_day
from jobs.settings import Settings, get_settings, source_fingerprint
from jobs.shared import layout
from jobs.shared.result import DataRejected
from jobs.steps.ingest import ingest
from jobs.steps.validate import validate_batch
from jobs.storage import tables
from jobs.storage.ledger import read_ledger

DAY = "2026-05-10"
ROOT = Path(__file__).resolve().parents[3]


def test_markers_checksums_and_folder_placeholders_are_skipped_not_rejected(lake):
    deliver(lake, generate_day(DAY, 30), "part-0000.csv")
    lake.write_bytes(layout.raw_object(DAY, "_SUCCESS"), b"")
    lake.write_bytes(layout.raw_object(DAY, ".part-0000.csv.crc"), b"crc\x00\x00\x02\x00\x12")
    lake.write_bytes(layout.raw_object(DAY, "_committed_1234"), b'{"added": ["part-0000.csv"]}')
    if lake.uri.startswith("s3://"):  # a console's "create folder": a zero-byte key ending in /
        import boto3

        bucket, prefix = lake.uri.removeprefix("s3://").split("/", 1)
        folder = layout.date_partition(layout.RAW_TRANSACTIONS, DAY)
        boto3.client("s3").put_object(Bucket=bucket, Key=f"{prefix}/{folder}/", Body=b"")
    staged, result = run(lake, "run1")  # no DataRejected: nothing was rejected
    assert staged["objects"] == 1 and result["rows_silver"] == 30
    assert [e["key"].rsplit("/", 1)[-1] for e in read_ledger(lake)] == ["part-0000.csv"]


def test_two_rejected_files_of_one_name_are_kept_apart(lake):
    first = deliver(lake, b"\x00\xff binary", "export.csv", date="2026-05-09")
    second = deliver(lake, b"\xfe\xfe other binary", "export.csv", date=DAY)
    with pytest.raises(DataRejected):
        run(lake, "run1")
    for key, data in ((first, b"\x00\xff binary"), (second, b"\xfe\xfe other binary")):
        kept = layout.quarantined_file("run1", key, hashlib.sha256(data).hexdigest())
        assert lake.read_bytes(kept) == data
        assert lake.read_json(kept + ".reason.json")["source"] == lake.uri_of(key)
    assert len([k for k in lake.list(layout.QUARANTINE_FILES) if k.endswith(".reason.json")]) == 2


def test_partitions_and_timestamps_later_than_now_are_refused(lake):
    now = datetime(2026, 5, 10, 12, 0)  # the clock, plus skew, of the run
    day = generate_day(DAY, 200)
    future_rows = (day["timestamp"] > "2026-05-10T12:00:00").sum()
    assert 0 < future_rows < 150
    deliver(lake, day, "today.csv")
    early = deliver(lake, generate_day("2026-05-12", 20), "tomorrow.csv", date="2026-05-12")
    staged = ingest(lake, DAY, "run1", not_after=now)
    assert staged["files_rejected"] == [early]
    with pytest.raises(DataRejected, match="future_partition"):
        validate_batch(lake, "run1", get_settings().expectations_dir, 0.9, not_after=now)
    q = quarantined(lake)
    late = q[q["_source_key"] == layout.raw_object(DAY, "today.csv")]
    assert len(late) == future_rows
    assert set(late["_reason"]) == {"timestamp lies within the delivery window of its date= partition"}
    assert (silver(lake)["timestamp"] <= now).all() and len(silver(lake)) == 200 - future_rows


def test_the_command_line_refuses_a_date_that_has_not_happened(state_dir):
    out = subprocess.run([sys.executable, "-m", "jobs", "ingest", "--date", "2099-01-01", "--run-id", "r"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 4, out.stderr
    assert "--date 2099-01-01 is later than now" in out.stderr


def test_the_code_version_is_derived_from_the_code(tmp_path):
    contracts = tmp_path / "expectations"
    shutil.copytree(get_settings().expectations_dir, contracts)
    before = source_fingerprint(contracts)
    suite = json.loads((contracts / "raw_transactions.json").read_text())
    suite["expectations"].pop()
    (contracts / "raw_transactions.json").write_text(json.dumps(suite))
    source_fingerprint.cache_clear()
    assert source_fingerprint(contracts) != before
    assert Settings(code_version="").resolved_code_version.startswith("src-")
    assert Settings(code_version="1a2b3c").resolved_code_version.startswith("1a2b3c+src-")


@pytest.mark.parametrize("value", ["</script><script>alert(1)</script>", "grocery\"; fetch('//x')", "a\u0000b"])
def test_markup_in_a_category_is_quarantined_before_any_report_shows_it(state_dir, value):
    from jobs.storage.lake import get_lake

    lake = get_lake()  # a rule of the contract: the lake's scheme plays no part
    day = generate_day(DAY, 40).astype(object)
    day.loc[5, "merchant_category"] = value
    deliver(lake, day, "a.csv")
    _, result = run(lake, "run1")
    assert result["rows_silver"] == 39
    assert value not in set(tables.read(lake, layout.SILVER_TRANSACTIONS)["merchant_category"])
    assert "merchant_category is letters, digits, spaces and _ . / - only" in quarantined(lake)["_reason"].iloc[0]


def test_data_docs_show_counts_and_rules_never_a_delivered_value(state_dir):
    from jobs.storage.lake import get_lake

    lake = get_lake()
    day = generate_day(DAY, 40).astype(object)
    day.loc[3, "card_id"] = "4111 1111 1111 1111"  # a card number where an id belongs
    day.loc[7, "amount"] = "-1234.56"
    deliver(lake, day, "a.csv")
    run(lake, "run1")
    pages = [k for k in lake.partition_files(layout.data_docs("run1")) if k.endswith(".html")]
    text = "".join(lake.read_bytes(k).decode(errors="replace") for k in pages)
    shown = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text))
    assert "Unsuccessful Expectations 2" in shown  # what failed, counted
    assert "4111 1111" not in text and "1234.56" not in text
    assert day.loc[3, "transaction_id"] not in text
